//! Where volume data comes from. A [`Source`] is a regular file or a block device read by
//! position (so several threads can read it at once). Which chunks a send must read is a
//! [`Scan`]: every chunk for a full scan; copy-on-write change maps plug in here.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub mod deltamap;
pub mod reflink;

pub struct Source {
    pub path: PathBuf,
    file: File,
    pub size: u64,
    /// Nanoseconds since the epoch: the file's mtime (recorded as the session's `localtime`).
    pub mtime_ns: i128,
    /// `mode:user:group` as the format records it (§9).
    pub permissions: String,
}

impl Source {
    pub fn open(path: &Path) -> Result<Source> {
        let file = File::open(path)
            .map_err(|e| Error::local(path, format!("cannot open the source: {e}")))?;
        let md = file
            .metadata()
            .map_err(|e| Error::local(path, e.to_string()))?;
        let ft = md.file_type();
        if !(ft.is_file() || ft.is_block_device()) {
            return Err(Error::local(
                path,
                "the source must be a regular file or a block device",
            ));
        }
        let size = if ft.is_block_device() {
            (&file)
                .seek(SeekFrom::End(0))
                .map_err(|e| Error::local(path, e.to_string()))?
        } else {
            md.len()
        };
        Ok(Source {
            path: path.to_path_buf(),
            size,
            mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
            permissions: permissions_of(&md),
            file,
        })
    }

    /// The offset of the first data at or after `offset` (`u64::MAX` if there is none), as the
    /// filesystem reports it (`SEEK_DATA`). Where holes cannot be reported (block devices, some
    /// filesystems) everything counts as data, which is always safe: holes only let a send skip
    /// reading ranges that are zeros by definition.
    pub fn next_data(&self, offset: u64) -> u64 {
        seek_data(&self.file, offset)
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::local(&self.path, format!("read error at offset {offset}: {e}")))
    }
}

/// The offset of the first data at or after `offset` in an open file (`SEEK_DATA`): `u64::MAX`
/// if there is none, `offset` itself if the filesystem cannot tell.
pub fn seek_data(f: &File, offset: u64) -> u64 {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as libc::off_t, libc::SEEK_DATA) };
    if r >= 0 {
        r as u64
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
        u64::MAX
    } else {
        offset
    }
}

/// Which chunks a send reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scan {
    /// Read every chunk; unchanged ones are found by hash comparison with the archive.
    Full,
    /// Read only these chunk indices (sorted): copy-on-write metadata says the others are as
    /// the archive's newest session has them.
    Chunks(Vec<u64>),
}

fn permissions_of(md: &std::fs::Metadata) -> String {
    let name_or_id = |name: Option<String>, id: u32| match name {
        // The original rejects names with non-alphanumerics on read (format §18.4).
        Some(n) if !n.is_empty() && n.chars().all(char::is_alphanumeric) => n,
        _ => id.to_string(),
    };
    let user = nix::unistd::User::from_uid(md.uid().into())
        .ok()
        .flatten()
        .map(|u| u.name);
    let group = nix::unistd::Group::from_gid(md.gid().into())
        .ok()
        .flatten()
        .map(|g| g.name);
    format!(
        "{}:{}:{}",
        md.mode() & 0o7777,
        name_or_id(user, md.uid()),
        name_or_id(group, md.gid())
    )
}
