//! wyng's local state about an archive, under `--meta-dir` (default `/var/lib/wyng`), laid out
//! like the original's cache (format §14.1): `a_<id>/` with id = hex BLAKE2b-160 of
//! uid ‖ uuid ‖ URL.
//!
//! * `archive.ini`: a copy of the last root seen, for rollback detection.
//! * `<vid>/digests`: the [`DigestMap`] of the volume's newest session.
//!
//! Nothing here is needed to read or restore an archive; losing it only costs speed.

use std::path::{Path, PathBuf};

use blake2::digest::consts::U20;
use blake2::{Blake2b, Digest};

use crate::archive::{Archive, Session};
use crate::error::{Error, Result};
use crate::format::ini;

/// The cache directory of an archive (created if missing).
pub fn dir(meta_dir: &Path, archive: &Archive) -> Result<PathBuf> {
    let key = format!(
        "{}{}{}",
        nix::unistd::getuid(),
        archive.uuid(),
        archive.dest.url()
    );
    let id: String = Blake2b::<U20>::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = meta_dir.join(format!("a_{id}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
    Ok(dir)
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent.display().to_string(), e))?;
    }
    std::fs::write(&tmp, data).map_err(|e| Error::io(tmp.display().to_string(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path.display().to_string(), e))
}

/// Keeps a copy of the archive's current root.
pub fn save_root(meta_dir: &Path, archive: &Archive) -> Result<()> {
    let root = archive
        .dest
        .read(
            "archive.ini",
            (ini::HEADER_LEN + ini::MAX_BODY + 4096) as u64,
        )?
        .ok_or_else(|| Error::ArchiveNotFound {
            url: archive.dest.url().into(),
        })?;
    write_atomic(&dir(meta_dir, archive)?.join("archive.ini"), &root)
}

/// Per-chunk digests of the raw data of a volume's newest session, as the send that made that
/// state read it from the source: a chunk whose raw digest still matches is identical to what
/// the archive holds and need not be compressed again to find out. A map is only used for the
/// exact session (name, sequence, size, mfcs) it names; all-zero entries mean "unknown".
pub struct DigestMap {
    pub digests: Vec<[u8; 16]>,
}

const MAGIC: &[u8; 8] = b"WYNGDM01";

fn header(s: &Session, chunksize: u64) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(s.name.as_str().as_bytes());
    h.extend_from_slice(&s.info.sequence.to_le_bytes());
    h.extend_from_slice(&s.info.volsize.to_le_bytes());
    h.extend_from_slice(&chunksize.to_le_bytes());
    h.extend_from_slice(&s.info.mfcs.unwrap_or(0).to_le_bytes());
    h
}

impl DigestMap {
    pub fn digest(raw: &[u8]) -> [u8; 16] {
        let h = blake3::hash(raw);
        let mut d = [0u8; 16];
        d.copy_from_slice(&h.as_bytes()[..16]);
        d
    }

    fn path(cache_dir: &Path, vid: &str) -> PathBuf {
        cache_dir.join(vid).join("digests")
    }

    /// The map for `last` (the volume's newest session), if one was saved for exactly it.
    pub fn load(cache_dir: &Path, vid: &str, last: &Session, chunksize: u64) -> Option<DigestMap> {
        let data = std::fs::read(Self::path(cache_dir, vid)).ok()?;
        let h = header(last, chunksize);
        let body = data.strip_prefix(&h[..])?;
        let n = last.info.volsize.div_ceil(chunksize) as usize;
        if body.len() != n * 16 {
            return None;
        }
        let digests = body
            .chunks_exact(16)
            .map(|c| c.try_into().expect("16-byte chunks"))
            .collect();
        Some(DigestMap { digests })
    }

    pub fn save(&self, cache_dir: &Path, vid: &str, last: &Session, chunksize: u64) -> Result<()> {
        let mut data = header(last, chunksize);
        data.reserve(self.digests.len() * 16);
        for d in &self.digests {
            data.extend_from_slice(d);
        }
        write_atomic(&Self::path(cache_dir, vid), &data)
    }
}
