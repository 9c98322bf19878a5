//! Files that appear whole or not at all: written under a temporary name beside their target
//! and renamed over it, each site choosing how durable the result must be.
//!
//! Invariants:
//! * A reader of the target sees the old content or the new, never a mix: the temporary file
//!   is in the target's directory (same filesystem, so the rename is atomic).
//! * One naming scheme for temporary files, [`temp_path`]: hidden, unique to the process and
//!   the call, ending in `.tmp` ([`is_temp`] recognises them for clean-up after a crash).
//! * An [`AtomicFile`] dropped without [`commit`](AtomicFile::commit) removes its temporary
//!   file: an error leaves the target as it was and nothing beside it.
//! * The durability is explicit ([`Durability`]); the directory sync is best effort (some
//!   filesystems refuse `fsync` on a directory; the rename itself has happened either way).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How much of a replacement must be on stable storage when it is committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Nothing synced: a cache that can be rebuilt (a crash may leave the old content, or an
    /// empty or partial new one under the final name on some filesystems).
    None,
    /// The content synced before the rename, then the directory entry after it: once
    /// committed, the new content survives a crash (before, the target is the old content).
    /// There is no level between: a synced file whose rename may be lost protects nothing
    /// these sites need.
    FileAndDir,
}

/// The temporary name for a replacement of `target`: hidden, beside it, unique.
pub(crate) fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ))
}

/// Whether a file name is one [`temp_path`] makes.
pub(crate) fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Renames `tmp`, whose content is `file`, over `target`, as durably as `durability` says.
pub(crate) fn commit(
    file: &File,
    tmp: &Path,
    target: &Path,
    durability: Durability,
) -> io::Result<()> {
    if durability != Durability::None {
        file.sync_all()?;
    }
    std::fs::rename(tmp, target)?;
    if durability == Durability::FileAndDir {
        sync_parent(target);
    }
    Ok(())
}

/// Syncs the directory holding `path` (best effort, see the module notes).
pub(crate) fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A replacement of a file being written: [`file`](Self::file), then
/// [`commit`](Self::commit); dropped uncommitted, it leaves nothing behind.
pub(crate) struct AtomicFile {
    file: File,
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Starts a replacement of `target` (its directory is created if missing).
    pub(crate) fn create(target: &Path) -> io::Result<AtomicFile> {
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = temp_path(target);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        Ok(AtomicFile {
            file,
            tmp,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// The temporary file, to write the new content into.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Puts the new content in place of the target.
    pub(crate) fn commit(mut self, durability: Durability) -> io::Result<()> {
        commit(&self.file, &self.tmp, &self.target, durability)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Replaces `target` with `data`.
pub(crate) fn write(target: &Path, data: &[u8], durability: Durability) -> io::Result<()> {
    let f = AtomicFile::create(target)?;
    f.file().write_all(data)?;
    f.commit(durability)
}

/// Starts writeback of `len` bytes at `off` (0: to the end of the file) now, so the disk works
/// while we compute and a later sync has little left to wait for. Advisory: failures show up
/// at that sync.
pub(crate) fn start_writeback(f: &File, off: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (off, len) = (
        i64::try_from(off).unwrap_or(i64::MAX),
        i64::try_from(len).unwrap_or(0),
    );
    // SAFETY: a plain syscall on an open descriptor; no memory is passed (nix has no wrapper).
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_or_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/state.json");
        write(&target, b"one", Durability::FileAndDir).unwrap();
        write(&target, b"two", Durability::None).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        // Dropped before its commit: the target is untouched and no temporary file is left.
        let f = AtomicFile::create(&target).unwrap();
        f.file().write_all(b"three").unwrap();
        drop(f);
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(target.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        assert!(is_temp(
            &temp_path(&target).file_name().unwrap().to_string_lossy()
        ));
    }
}
