//! `diff`: compare a local volume with a session (by default the newest) in the archive.
//! `--quick` compares the hash of each recompressed local chunk with the manifest (nothing is
//! read from the archive); otherwise every data chunk is read, verified, and compared byte for
//! byte. Zero ranges of the session are checked against the local volume's data (holes of a
//! sparse file are skipped), so a sparse volume costs what it holds.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::format::manifest::chunk_len;
use crate::ops::segments::{self, Seg};
use crate::ops::{SessionSel, VolumeRef};
use crate::source::{LocalStorage, Source};

#[derive(Debug, serde::Serialize)]
pub struct DiffReport {
    pub volume: String,
    pub session: String,
    /// Byte offset of the first difference (at chunk granularity with `--quick`), if any.
    pub first_difference: Option<u64>,
}

/// What `diff --local` compares with the newest session (behaviour §7.3): the paired baseline
/// snapshot when there is one (it is what the next incremental send builds on), else the
/// volume itself.
pub fn diff_source(archive: &Archive, v: &VolumeRef, store: &LocalStorage) -> Result<PathBuf> {
    use crate::source::deltamap::Pairing;
    let name = v.archive.as_str();
    let path = store.volume_path(&v.local)?;
    let vol = archive.find(name)?;
    if let (LocalStorage::Reflink(_), Some(local)) = (store, archive.local_dir()) {
        let snaps = crate::source::reflink::VolumeSnaps::new(
            &path,
            archive.uuid(),
            vol.vid.as_str(),
            Some(local),
        );
        match snaps.pairing(vol.last()) {
            Pairing::Paired => {
                tracing::warn!(
                    "{name}: comparing the paired snapshot {}",
                    snaps.snap1.display()
                );
                return Ok(snaps.snap1);
            }
            Pairing::PairedWithChanges => {
                tracing::warn!("{name}: changed since the last send (monitor recorded changes); comparing the volume")
            }
            Pairing::Unpaired => tracing::warn!("{name}: not paired; comparing the volume"),
        }
    }
    Ok(path)
}

pub fn diff(
    archive: &Archive,
    name: &str,
    sel: &SessionSel,
    local: &Path,
    quick: bool,
) -> Result<DiffReport> {
    let vi = archive.find_index(name)?;
    let vol = &archive.volumes()[vi];
    let si = sel.select(vol)?;
    let ix = archive.merged(vi, si)?;
    let src = Source::open(local)?;
    let file = File::open(local).map_err(|e| Error::local_io(local, "", e))?;
    let block = std::os::unix::fs::FileTypeExt::is_block_device(
        &file
            .metadata()
            .map_err(|e| Error::local_io(local, "", e))?
            .file_type(),
    );
    let cs = archive.chunksize();
    let volsize = ix.volsize();
    let first = AtomicU64::new(u64::MAX);
    let note = |off: u64| {
        first.fetch_min(off, Ordering::Relaxed);
    };
    if src.size != volsize {
        note(src.size.min(volsize));
    }
    // Only chunks both sides have are compared: the size difference is noted above.
    let common = src.size.min(volsize);
    let local_chunk = |idx: u64| -> Result<Vec<u8>> {
        let off = idx * cs;
        let len = chunk_len(idx, volsize, cs).min(common.saturating_sub(off)) as usize;
        let mut buf = vec![0u8; len];
        src.read_at(&mut buf, off)?;
        Ok(buf)
    };
    let n_common = common.div_ceil(cs);
    let segs = segments::walk(&ix).filter_map(|seg| match seg {
        Ok(Seg::Data(r)) if r.idx >= n_common => None,
        Ok(Seg::Zeros(a, _)) if a >= n_common => None,
        Ok(Seg::Zeros(a, b)) => Some(Ok(Seg::Zeros(a, b.min(n_common)))),
        other => Some(other),
    });
    segments::compare(
        archive,
        segs,
        |seg, fetch| match seg {
            Seg::Zeros(a, b) => {
                for i in segments::local_data_chunks(&file, block, a, b, cs) {
                    let local = local_chunk(i)?;
                    if let Some(at) = local.iter().position(|&x| x != 0) {
                        note(i * cs + if quick { 0 } else { at as u64 });
                    }
                }
                Ok(())
            }
            Seg::Data(rec) if quick => {
                let local = local_chunk(rec.idx)?;
                let len = chunk_len(rec.idx, volsize, cs) as usize;
                if local.len() != len || archive.hash_chunk(&local).hash() != rec.hash {
                    note(rec.idx * cs);
                }
                Ok(())
            }
            Seg::Data(rec) => fetch(ix.loc(&rec)),
        },
        |loc, d| {
            let local = local_chunk(loc.idx)?;
            if d[..local.len()] != local[..] {
                let at = d.iter().zip(&local).position(|(a, b)| a != b);
                note(loc.idx * cs + at.unwrap_or(0) as u64);
            }
            Ok(())
        },
    )?;
    let f = first.into_inner();
    Ok(DiffReport {
        volume: name.into(),
        session: vol.sessions[si].name.to_string(),
        first_difference: (f != u64::MAX).then_some(f),
    })
}
