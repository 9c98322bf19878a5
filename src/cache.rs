//! wyng's local state about an archive, under `--meta-dir` (default `/var/lib/wyng`), laid out
//! like the original's cache (format §14.1): `a_<id>/` with id = hex BLAKE2b-160 of
//! uid ‖ uuid ‖ URL.
//!
//! * `archive.ini`: a copy of the last root seen, for rollback detection.
//! * `archive.salt`: for encrypted archives, a copy of the salt file whose slot counters are the
//!   working counters: a block of values is reserved here (and synced) before any is used.
//! * `<vid>/digests`: the [`DigestMap`] of the volume's newest session.
//!
//! Nothing here is needed to read or restore an archive; losing it only costs speed.

use std::path::{Path, PathBuf};

use blake2::digest::consts::U20;
use blake2::{Blake2b, Digest};

use crate::archive::{Archive, Session};
use crate::crypto::{SaltFile, SALT_FILE_LEN};
use crate::error::{Error, Result};

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

/// Replaces a file atomically and durably (the counters depend on it).
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::io(path.display().to_string(), e)
}

/// The copy of the last root seen from this machine.
pub fn load_root(dir: &Path) -> Option<Vec<u8>> {
    std::fs::read(dir.join("archive.ini")).ok()
}

pub fn save_root(dir: &Path, root: &[u8]) -> Result<()> {
    let p = dir.join("archive.ini");
    write_atomic(&p, root).map_err(|e| io(&p, e))
}

pub fn load_salt(dir: &Path) -> Option<SaltFile> {
    let b = std::fs::read(dir.join("archive.salt")).ok()?;
    (b.len() == SALT_FILE_LEN)
        .then(|| SaltFile::parse(&b).ok())
        .flatten()
}

pub fn save_salt(dir: &Path, salt: &SaltFile) -> std::io::Result<()> {
    write_atomic(&dir.join("archive.salt"), &salt.to_bytes())
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
        let p = Self::path(cache_dir, vid);
        write_atomic(&p, &data).map_err(|e| io(&p, e))
    }
}
