//! wyng's local state about an archive, under `--meta-dir` (default `/var/lib/wyng`), laid out
//! like the original's cache (format §14.1): `a_<id>/` with id = hex BLAKE2b-160 of
//! uid ‖ uuid ‖ URL.
//!
//! Not all of it is a cache. What *must* survive for safety:
//! * `archive.ini`: the last root seen, for rollback detection (§14.3): losing it only loses
//!   that check for one run.
//! * `archive.salt`: for encrypted archives, a copy of the salt file whose slot counters are the
//!   working counters. Values are reserved here (and synced) before any is used, so losing this
//!   file while the archive's own counters are behind could allow counter reuse; it is
//!   replaced atomically and durably.
//! * `in_process_retry`: that a recovery of an interrupted transaction failed (§13.5).
//!
//! What is only a cache (rebuilt when missing or stale; losing it costs time, not safety):
//! * `<vid>/digests`: raw-chunk digests of the newest session ([`crate::archive::digests`]).
//! * `<vid>/index/`: merged-view indexes of sessions ([`crate::archive::index`]).
//! * `<vid>/S_…deltamap`: the copy-on-write pairing of local storage (`source::deltamap`).

use std::path::{Path, PathBuf};

use blake2::digest::consts::U20;
use blake2::{Blake2b, Digest};

use crate::crypto::{SaltFile, SALT_FILE_LEN};
use crate::error::{Error, Result};
use crate::format::VolumeId;

#[derive(Clone)]
pub struct LocalState {
    dir: PathBuf,
}

/// Replaces a file atomically and durably (what safety rests on: the root's copy, counters).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    crate::atomic_file::write(path, data, crate::atomic_file::Durability::FileAndDir)
}

/// `--meta-reduce` (behaviour §10): removes, under every archive's state directory in
/// `meta_dir`, cache files not modified for `minutes`: merged-view index files, and with
/// `extra` also the raw-chunk digest maps. Never what safety rests on (root copy, counters,
/// retry marker) nor delta maps (they are the pairing with local snapshots). Returns how
/// many files went.
pub fn reduce(meta_dir: &Path, minutes: u64, extra: bool) -> usize {
    let cutoff = std::time::SystemTime::now()
        .checked_sub(std::time::Duration::from_secs(minutes.saturating_mul(60)))
        .unwrap_or(std::time::UNIX_EPOCH);
    let old = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t <= cutoff)
    };
    let dirs = |d: &Path, prefix: &str| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .collect()
    };
    let mut removed = 0;
    for archive in dirs(meta_dir, "a_") {
        for vol in dirs(&archive, "Vol_") {
            let mut candidates = dirs(&vol.join("index"), "");
            if extra {
                candidates.push(vol.join("digests"));
            }
            for f in candidates {
                if f.is_file() && old(&f) && std::fs::remove_file(&f).is_ok() {
                    removed += 1;
                }
            }
        }
    }
    removed
}

impl LocalState {
    /// The state directory of an archive (created if missing).
    pub fn open(meta_dir: &Path, uuid: &str, url: &str) -> Result<LocalState> {
        let key = format!("{}{uuid}{url}", nix::unistd::getuid());
        let id: String = Blake2b::<U20>::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let dir = meta_dir.join(format!("a_{id}"));
        std::fs::create_dir_all(&dir).map_err(|e| Error::local_state(&dir, e))?;
        Ok(LocalState { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A volume's directory (delta maps, digests, indexes).
    pub(crate) fn volume_dir(&self, vid: &VolumeId) -> PathBuf {
        self.dir.join(vid.as_str())
    }

    /// Where temporary spool files of this archive go.
    pub(crate) fn spool_dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// The copy of the last root seen from this machine.
    pub(crate) fn load_root(&self) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join("archive.ini")).ok()
    }

    pub(crate) fn save_root(&self, root: &[u8]) -> Result<()> {
        let p = self.dir.join("archive.ini");
        write_atomic(&p, root).map_err(|e| Error::local_state(&p, e))
    }

    pub(crate) fn load_salt(&self) -> Option<SaltFile> {
        let b = std::fs::read(self.dir.join("archive.salt")).ok()?;
        (b.len() == SALT_FILE_LEN)
            .then(|| SaltFile::parse(&b).ok())
            .flatten()
    }

    pub(crate) fn save_salt(&self, salt: &SaltFile) -> std::io::Result<()> {
        write_atomic(&self.dir.join("archive.salt"), &salt.to_bytes())
    }

    fn retry_marker(&self) -> PathBuf {
        self.dir.join("in_process_retry")
    }

    /// Whether an earlier recovery of an interrupted transaction failed.
    pub(crate) fn retry_failed(&self) -> bool {
        self.retry_marker().exists()
    }

    pub(crate) fn set_retry_failed(&self, failed: bool) {
        let m = self.retry_marker();
        let _ = if failed {
            std::fs::write(&m, b"")
        } else {
            std::fs::remove_file(&m)
        };
    }
}

/// A record of local state is input like anything else read: each carries a checksum keyed by
/// its file's header (so a record is only valid in the file it was written for, and a flipped
/// bit or a spliced record is caught). Eight bytes of keyed BLAKE3: damage, not attack, is the
/// threat (whoever can write the meta dir can do anything wyng can).
pub(crate) fn record_sum(key: &[u8; 32], record: &[u8]) -> [u8; 8] {
    blake3::keyed_hash(key, record).as_bytes()[..8]
        .try_into()
        .expect("8 bytes")
}

/// The key [`record_sum`] uses for the records of a file with this header.
pub(crate) fn record_key(header: &[u8]) -> [u8; 32] {
    *blake3::hash(header).as_bytes()
}
