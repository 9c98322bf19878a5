//! Deduplication: `send --dedup` and `arch-deduplicate` (format §11.3, behaviour notes §8).
//!
//! A chunk's manifest hash is over its compressed plaintext, and the data hash key is shared by
//! every volume of an archive, so two chunk files with one hash hold the same data and either
//! one validates wherever that hash is named. A duplicate therefore becomes a hard link to the
//! file already in the archive; nothing needs to change for readers. Each session's own
//! manifest lines name files in that session's directory (prune keeps this true by moving
//! files), which is how the index finds a file for every hash.
//!
//! Memory: the index holds ~48 bytes per distinct chunk (hash, volume, session, address), e.g.
//! ~200 MiB for 4 million distinct 256 KiB chunks (1 TiB of unique data).

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::format::{chunk_rel_path, ChunkRef, Hash32};

/// Session index meaning "the session this send is staging".
pub const STAGED: u16 = u16::MAX;

/// Where a chunk with a given hash already is: (volume index, session index or [`STAGED`],
/// chunk index).
pub struct DedupIndex {
    map: Mutex<HashMap<Hash32, (u16, u16, u64)>>,
}

impl DedupIndex {
    /// Indexes every data chunk file of the archive.
    pub fn build(archive: &Archive) -> Result<DedupIndex> {
        let mut map = HashMap::new();
        for (vi, vol) in archive.volumes.iter().enumerate() {
            for si in 0..vol.sessions.len() {
                for (idx, r) in archive.session_lines(vol, si)? {
                    if let ChunkRef::Data(h) = r {
                        map.entry(h).or_insert((vi as u16, si as u16, idx));
                    }
                }
            }
        }
        Ok(DedupIndex {
            map: Mutex::new(map),
        })
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The path of an existing file with this hash. `staging_vol` is the volume being sent and
    /// `session` this run's session name: chunks staged by this run are in `S-tmp` while their
    /// volume is being sent, and under the session name once it has been committed.
    pub fn path(
        &self,
        archive: &Archive,
        h: &Hash32,
        staging_vol: usize,
        session: &str,
    ) -> Option<String> {
        let (vi, si, idx) = *self.map.lock().get(h)?;
        let vol = archive.volumes.get(vi as usize)?;
        let dir = if si == STAGED {
            if vi as usize == staging_vol {
                crate::archive::SESSION_TMP
            } else {
                session
            }
        } else {
            vol.sessions.get(si as usize)?.name.as_str()
        };
        Some(chunk_rel_path(&vol.vid, dir, idx * archive.chunksize()))
    }

    /// Records a chunk this send has just stored.
    pub fn insert_staged(&self, h: Hash32, vol: usize, idx: u64) {
        self.map
            .lock()
            .entry(h)
            .or_insert((vol as u16, STAGED, idx));
    }
}

/// Refuses clearly when the destination cannot make hard links.
pub fn check_hard_links(archive: &Archive) -> Result<()> {
    let probe = "dedup-probe.tmp";
    let _ = archive.dest.remove_all(probe);
    if archive.dest.stat("archive.dat")?.is_none() {
        archive.dest.write("archive.dat", b"")?;
    }
    let r = archive.dest.hard_link("archive.dat", probe);
    let _ = archive.dest.remove_all(probe);
    r.map_err(|e| Error::DestUnavailable {
        url: archive.dest.url().into(),
        detail: format!("this destination does not support hard links, which deduplication needs; send without --dedup ({e})"),
    })
}

#[derive(Debug, Default, serde::Serialize)]
pub struct DedupReport {
    pub chunk_files: u64,
    pub linked: u64,
    pub bytes_saved: u64,
}

/// `arch-deduplicate`: replaces every chunk file whose hash appears earlier in the archive by a
/// hard link to the first one. Each replacement is atomic (link to a temporary name, rename over
/// the duplicate), so an interruption leaves only whole files.
pub fn arch_deduplicate(archive: &mut Archive) -> Result<DedupReport> {
    archive.recover()?;
    check_hard_links(archive)?;
    let cs = archive.chunksize();
    let mut first: HashMap<Hash32, (String, (u64, u64))> = HashMap::new();
    let mut report = DedupReport::default();
    for vol in &archive.volumes {
        let tmp = format!("{}/dedup.tmp", vol.vid);
        for si in 0..vol.sessions.len() {
            let dir = vol.sessions[si].name.as_str();
            for (idx, r) in archive.session_lines(vol, si)? {
                let ChunkRef::Data(h) = r else { continue };
                let path = chunk_rel_path(&vol.vid, dir, idx * cs);
                let Some(st) = archive.dest.stat(&path)? else {
                    return Err(Error::corrupt(
                        &path,
                        "chunk file is missing (run `wyng verify`)",
                    ));
                };
                report.chunk_files += 1;
                match first.get(&h) {
                    None => {
                        first.insert(h, (path, st.id));
                    }
                    Some((_, id)) if *id == st.id => {}
                    Some((orig, _)) => {
                        archive.dest.hard_link(orig, &tmp)?;
                        archive.dest.rename(&tmp, &path)?;
                        report.linked += 1;
                        report.bytes_saved += st.size;
                    }
                }
            }
        }
    }
    archive.dest.sync()?;
    Ok(report)
}
