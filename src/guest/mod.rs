//! What is inside a disk image: its partition table and the files of the filesystems in it,
//! read in userspace from any "read at an offset" source ([`Disk`]). Nothing here knows
//! archives: `wyng files` and `wyng mount --files` give it a session image, the fuzz targets
//! give it bytes.
//!
//! Invariants:
//! * **Every byte is hostile input.** A guest controls its filesystem: parsing returns errors,
//!   never panics; memory is bounded by fixed caps ([`MAX_DEPTH`], the partition and entry caps
//!   of each module), never by a size the image claims; every loop over on-disk structures is
//!   bounded.
//! * **Read-only.** Every crate is given a source whose writes fail; nothing is ever written to
//!   an image.
//! * **Names are bytes, and a path is safe by construction.** A [`GuestPath`] holds only
//!   components that are one plain file name each (non-empty, no `/`, no NUL, not `.` or `..`);
//!   an entry whose name is not is reported as refused, never joined into a path, so no name
//!   in an image can make a path point elsewhere (in the image or on the host).
//! * **Damage is named where it is.** A chunk of the image that fails its checks is that
//!   chunk's error (the archive's), passed through unchanged; damage inside a guest filesystem
//!   is [`Error::Guest`] for the path that met it, and the rest stays readable.

pub mod ext4;
pub mod fat;
pub mod name;
pub mod ntfs;
pub mod partition;
pub mod probe;
mod quiet;

use std::io;
use std::sync::Arc;

use crate::error::{Error, Result};

pub use name::{escape, GuestPath};

/// Deepest directory nesting walked or resolved (a hostile image can nest without end).
pub(crate) const MAX_DEPTH: usize = 1024;

/// Where an image's bytes come from.
pub trait Disk: Send + Sync {
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; a read past the end is an error.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// An image held in memory (tests and fuzz targets).
pub struct Bytes(pub Vec<u8>);

impl Disk for Bytes {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= self.0.len() as u64 => {
                buf.copy_from_slice(&self.0[offset as usize..end as usize]);
                Ok(())
            }
            _ => Err(past_end(offset, buf.len(), self.size())),
        }
    }
}

fn past_end(offset: u64, len: usize, size: u64) -> Error {
    Error::Guest {
        path: "image".into(),
        what: format!("a read of {len} bytes at {offset} goes past the end ({size} bytes)"),
    }
}

/// A part of a disk (a partition).
pub(crate) struct Slice {
    disk: Arc<dyn Disk>,
    start: u64,
    len: u64,
}

impl Slice {
    /// `len` bytes from `start`, clipped to the disk.
    pub fn new(disk: Arc<dyn Disk>, start: u64, len: u64) -> Slice {
        let size = disk.size();
        let start = start.min(size);
        Slice {
            len: len.min(size - start),
            disk,
            start,
        }
    }
}

impl Disk for Slice {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => self.disk.read_exact_at(self.start + offset, buf),
            _ => Err(past_end(offset, buf.len(), self.len)),
        }
    }
}

/// A disk as `Read + Seek` (and a `Write` that always fails), for crates that want a stream.
pub(crate) struct Cursor {
    disk: Arc<dyn Disk>,
    pos: u64,
}

impl Cursor {
    pub(crate) fn new(disk: Arc<dyn Disk>) -> Cursor {
        Cursor { disk, pos: 0 }
    }
}

impl io::Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.disk.size();
        if self.pos >= size {
            return Ok(0);
        }
        let n = ((size - self.pos) as usize).min(buf.len());
        self.disk
            .read_exact_at(self.pos, &mut buf[..n])
            .map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for Cursor {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let pos = match to {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => self.disk.size().checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

impl io::Write for Cursor {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the image is read-only",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An I/O error from a crate: the image's own error (a damaged chunk) if that is what it
/// carries, else damage of the guest filesystem at `path`.
pub(crate) fn from_io(e: io::Error, path: &str) -> Error {
    if e.get_ref().is_some_and(|i| i.is::<Error>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(err) = inner.downcast::<Error>() {
                return *err;
            }
        }
        unreachable!("checked above");
    }
    guest(path, e.to_string())
}

pub(crate) fn guest(path: &str, what: impl Into<String>) -> Error {
    Error::Guest {
        path: path.to_string(),
        what: what.into(),
    }
}

/// A path that is not there: a selection error (exit 2), like a session that is not there.
pub(crate) fn not_found(path: &str) -> Error {
    Error::Selection(format!("{path}: no such file or directory"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    #[serde(rename = "chardev")]
    CharDev,
    #[serde(rename = "blockdev")]
    BlockDev,
    Fifo,
    Socket,
}

impl Kind {
    /// The `ls -l` type letter.
    pub fn letter(self) -> char {
        match self {
            Kind::File => '-',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            Kind::CharDev => 'c',
            Kind::BlockDev => 'b',
            Kind::Fifo => 'p',
            Kind::Socket => 's',
        }
    }

    /// Device nodes, FIFOs and sockets: listed, never restored or served.
    pub(crate) fn is_special(self) -> bool {
        !matches!(self, Kind::File | Kind::Dir | Kind::Symlink)
    }
}

/// What a guest filesystem says of one of its entries (a symlink is not followed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// Permission bits (`0o7777`, set-id and sticky bits included).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Seconds since the epoch, and nanoseconds.
    pub mtime: (i64, u32),
}

/// One entry of a directory: its name (bytes, as stored) and what it is.
pub struct Entry {
    pub name: Vec<u8>,
    /// An entry whose inode cannot be read is still listed, with why.
    pub stat: Result<Stat>,
}

/// A read-only filesystem inside an image. Paths are [`GuestPath`]s (safe by construction);
/// nothing here follows a symlink at the end of a path.
pub trait GuestFs {
    /// `ext4`, `vfat`, `ntfs`.
    fn kind(&self) -> &'static str;
    fn stat(&self, p: &GuestPath) -> Result<Stat>;
    /// Streams a directory's entries (without `.` and `..`) to `each` until it returns false.
    fn list(&self, p: &GuestPath, each: &mut dyn FnMut(Entry) -> Result<bool>) -> Result<()>;
    fn read_link(&self, p: &GuestPath) -> Result<Vec<u8>>;
    /// Fills `buf` from `offset` of a regular file; short only at its end.
    fn read_at(&self, p: &GuestPath, offset: u64, buf: &mut [u8]) -> Result<usize>;
}

/// Longest symlink target read (PATH_MAX).
pub(crate) const MAX_LINK: u64 = 4096;

/// Opens the filesystem `fs` found on `disk`.
pub(crate) fn open_fs(disk: Arc<dyn Disk>, fs: probe::Fs) -> Result<Box<dyn GuestFs>> {
    Ok(match fs {
        probe::Fs::Ext => Box::new(ext4::Ext4Fs::open(disk)?),
        probe::Fs::Fat => Box::new(fat::FatFs::open(disk)?),
        probe::Fs::Ntfs => Box::new(ntfs::NtfsFs::open(disk)?),
    })
}

/// What a user path names in an image: the list of partitions, or a path inside one
/// filesystem (`part` is the partition's index in [`partition::Layout::parts`], `None` for
/// an image that is one filesystem).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Partitions,
    InFs {
        part: Option<usize>,
        path: GuestPath,
    },
}

/// An image opened: its layout, probed once.
pub struct Image {
    disk: Arc<dyn Disk>,
    layout: partition::Layout,
}

impl Image {
    pub fn open(disk: Arc<dyn Disk>) -> Result<Image> {
        let layout = partition::Layout::read(&disk)?;
        Ok(Image { disk, layout })
    }

    pub fn layout(&self) -> &partition::Layout {
        &self.layout
    }

    pub fn disk(&self) -> &Arc<dyn Disk> {
        &self.disk
    }

    /// Resolves a user path: with a partition table, `/` is the list of partitions and
    /// `/p1/...` is inside the first one; without one, `/` is the filesystem's root.
    pub fn resolve(&self, user: &[u8]) -> Result<Target> {
        let path = GuestPath::parse_user(user)?;
        if !self.layout.is_table() {
            return Ok(Target::InFs { part: None, path });
        }
        let Some(first) = path.components().first() else {
            return Ok(Target::Partitions);
        };
        let part = self
            .layout
            .parts()
            .iter()
            .position(|p| p.label().as_bytes() == first.as_slice())
            .ok_or_else(|| {
                not_found(&format!(
                    "/{} (the image's partitions are {})",
                    escape(first),
                    self.layout
                        .parts()
                        .iter()
                        .map(|p| p.label())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        Ok(Target::InFs {
            part: Some(part),
            path: path.strip_first(),
        })
    }

    /// The bytes of a partition (or of the whole image).
    pub(crate) fn part_disk(&self, part: Option<usize>) -> Arc<dyn Disk> {
        match part.and_then(|i| self.layout.parts().get(i)) {
            Some(p) => Arc::new(Slice::new(self.disk.clone(), p.start, p.len)),
            None => self.disk.clone(),
        }
    }

    /// Opens the filesystem of a partition (or of the whole image), or says in one line what
    /// is there instead and what to do.
    pub fn filesystem(&self, part: Option<usize>) -> Result<Box<dyn GuestFs>> {
        let (content, label) = match part.and_then(|i| self.layout.parts().get(i)) {
            Some(p) => (&p.content, format!("/{}", p.label())),
            None => (self.layout.whole(), "the image".to_string()),
        };
        match content {
            probe::Content::Fs(fs) => open_fs(self.part_disk(part), *fs),
            other => Err(Error::Guest {
                path: label,
                what: other.unreadable(),
            }),
        }
    }

    /// The prefix of user paths inside a partition (`/p1`), empty without a table.
    pub fn prefix(&self, part: Option<usize>) -> String {
        match part.and_then(|i| self.layout.parts().get(i)) {
            Some(p) => format!("/{}", p.label()),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_stays_inside_its_bounds() {
        let d: Arc<dyn Disk> = Arc::new(Bytes((0..100u8).collect()));
        let s = Slice::new(d.clone(), 10, 20);
        let mut b = [0u8; 5];
        s.read_exact_at(15, &mut b).unwrap();
        assert_eq!(b, [25, 26, 27, 28, 29]);
        assert!(s.read_exact_at(16, &mut b).is_err());
        assert!(s.read_exact_at(u64::MAX - 1, &mut b).is_err());
        // Clipped to the disk.
        assert_eq!(Slice::new(d.clone(), 90, 1000).size(), 10);
        assert_eq!(Slice::new(d, 1000, 1000).size(), 0);
    }

    #[test]
    fn the_image_error_passes_through_the_crates_io() {
        let e = Error::corrupt("Vol_1/S_1/x0", "hash mismatch");
        let io = io::Error::other(e);
        assert!(matches!(from_io(io, "/a"), Error::Corrupt { .. }));
        let io = io::Error::other("bad");
        assert!(matches!(from_io(io, "/a"), Error::Guest { .. }));
    }

    #[test]
    fn writes_fail() {
        use std::io::Write;
        let mut c = Cursor::new(Arc::new(Bytes(vec![0; 10])));
        assert!(c.write(b"x").is_err());
    }
}
