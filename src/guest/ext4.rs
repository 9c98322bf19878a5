//! ext2/ext3/ext4 through `ext4-view` (read-only by design, invalid data is an error).
//!
//! Invariants:
//! * Before the crate sees an image, its superblock's geometry must fit the disk and name at
//!   most [`MAX_GROUPS`] block groups (the crate sizes its descriptor table from that claim).
//! * A symlink target is read only when its inode says it is at most [`MAX_LINK`] bytes (the
//!   crate would allocate whatever size the inode claims).
//! * A crate panic while reading a file (ext4-view 1.0 unwraps where a damaged block map
//!   ends) is caught without a message (`quiet.rs`) and is an error for that file; the open
//!   file is dropped, the filesystem stays usable.
//! * Open files are kept per path for sequential reads (at most [`CURSORS`]); a read elsewhere
//!   seeks, which walks the file's block map from its start.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use ext4_view::{Ext4, Ext4Error, FileType, Metadata};

use super::{guest, not_found, Disk, Entry, GuestFs, GuestPath, Kind, Stat, MAX_LINK};
use crate::error::{Error, Result};

/// Most block groups of a filesystem opened (1 Mi groups: 128 TiB at the default geometry).
pub(crate) const MAX_GROUPS: u64 = 1 << 20;
const CURSORS: usize = 4;

/// A read of the image that failed: where, and how long.
type Failed = Rc<Cell<Option<(u64, usize)>>>;

struct Reader {
    disk: Arc<dyn Disk>,
    failed: Failed,
}

impl ext4_view::Ext4Read for Reader {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.disk.read_exact_at(start, dst).map_err(|e| {
            self.failed.set(Some((start, dst.len())));
            Box::new(e) as _
        })
    }
}

pub(crate) struct Ext4Fs {
    fs: Ext4,
    disk: Arc<dyn Disk>,
    /// The last read of the image that failed (the crate may swallow the error, see
    /// [`Ext4Fs::read_at`]).
    failed: Failed,
    cursors: RefCell<Vec<(GuestPath, ext4_view::File)>>,
}

/// The crate's error at `path`: the image's own error if it carries one, else damage.
fn error(e: Ext4Error, path: &GuestPath) -> Error {
    let shown = path.display();
    match e {
        Ext4Error::NotFound => not_found(&shown),
        Ext4Error::Io(inner) => match inner.downcast::<Error>() {
            Ok(err) => *err,
            Err(other) => guest(&shown, format!("read error: {other}")),
        },
        Ext4Error::NotADirectory => guest(&shown, "is not a directory"),
        Ext4Error::IsADirectory => guest(&shown, "is a directory"),
        Ext4Error::IsASpecialFile => guest(&shown, "is not a regular file"),
        Ext4Error::Encrypted => guest(&shown, "is encrypted (fscrypt): wyng cannot read it"),
        e => guest(&shown, e.to_string()),
    }
}

/// Refuses a superblock whose geometry does not fit `disk` (before the crate allocates from
/// it).
fn check_geometry(disk: &Arc<dyn Disk>) -> Result<()> {
    let mut sb = [0u8; 1024];
    disk.read_exact_at(1024, &mut sb)?;
    let le32 = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().expect("4 bytes")) as u64;
    // The crate reads the high half of the block count whatever the 64bit feature says
    // (the kernel ignores it without that feature): check the count the crate will use.
    let blocks = le32(0x04) | le32(0x150) << 32;
    let log = le32(0x18);
    let per_group = le32(0x20);
    let bad = |what: String| guest("the filesystem", what);
    if log > 6 || per_group == 0 {
        return Err(bad(
            "its superblock is damaged (block size or group size)".into()
        ));
    }
    let bs = 1024u64 << log;
    let first = le32(0x14);
    let groups = blocks.saturating_sub(first).div_ceil(per_group);
    if blocks.checked_mul(bs).is_none_or(|b| b > disk.size()) {
        return Err(bad(format!(
            "its superblock claims {} bytes, more than the {} its disk holds (damaged, or a truncated image)",
            blocks.saturating_mul(bs),
            disk.size()
        )));
    }
    if groups > MAX_GROUPS {
        return Err(bad(format!(
            "its superblock claims {groups} block groups, more than wyng reads ({MAX_GROUPS})"
        )));
    }
    Ok(())
}

fn kind(t: FileType) -> Kind {
    match t {
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::CharacterDevice => Kind::CharDev,
        FileType::BlockDevice => Kind::BlockDev,
        FileType::Fifo => Kind::Fifo,
        FileType::Socket => Kind::Socket,
        _ => Kind::File,
    }
}

fn stat(m: &Metadata) -> Stat {
    let t = m.modified();
    Stat {
        kind: kind(m.file_type()),
        perm: u32::from(m.mode()) & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size: m.len(),
        mtime: (t.seconds(), t.nanoseconds()),
    }
}

impl Ext4Fs {
    pub fn open(disk: Arc<dyn Disk>) -> Result<Ext4Fs> {
        check_geometry(&disk)?;
        let failed = Failed::default();
        let reader = Reader {
            disk: disk.clone(),
            failed: failed.clone(),
        };
        let fs = Ext4::load(Box::new(reader)).map_err(|e| error(e, &GuestPath::root()))?;
        Ok(Ext4Fs {
            fs,
            disk,
            failed,
            cursors: RefCell::new(Vec::new()),
        })
    }

    /// Why the crate stopped inside a file: the image's own error if a read of it failed
    /// (read again to get it: a damaged chunk fails again), else damage of the block map.
    fn stopped(&self, p: &GuestPath) -> Error {
        if let Some((at, len)) = self.failed.take() {
            let mut again = vec![0u8; len];
            if let Err(e) = self.disk.read_exact_at(at, &mut again) {
                return e;
            }
        }
        guest(
            &p.display(),
            "its block map is damaged or ends before its size (the ext4 reader stopped)",
        )
    }
}

impl GuestFs for Ext4Fs {
    fn kind(&self) -> &'static str {
        "ext4"
    }

    fn stat(&self, p: &GuestPath) -> Result<Stat> {
        let b = p.to_bytes();
        self.fs
            .symlink_metadata(b.as_slice())
            .map(|m| stat(&m))
            .map_err(|e| error(e, p))
    }

    fn list(&self, p: &GuestPath, each: &mut dyn FnMut(Entry) -> Result<bool>) -> Result<()> {
        let b = p.to_bytes();
        let dir = self.fs.read_dir(b.as_slice()).map_err(|e| error(e, p))?;
        for entry in dir {
            let entry = entry.map_err(|e| error(e, p))?;
            let name = entry.file_name().as_ref().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            let st = entry.metadata().map(|m| stat(&m)).map_err(|e| {
                let shown = p.join(&name).unwrap_or_else(|_| p.clone());
                error(e, &shown)
            });
            if !each(Entry { name, stat: st })? {
                break;
            }
        }
        Ok(())
    }

    fn read_link(&self, p: &GuestPath) -> Result<Vec<u8>> {
        let st = self.stat(p)?;
        if st.kind != Kind::Symlink {
            return Err(guest(&p.display(), "is not a symlink"));
        }
        if st.size > MAX_LINK {
            return Err(guest(
                &p.display(),
                format!("a symlink target of {} bytes (damaged)", st.size),
            ));
        }
        let b = p.to_bytes();
        let t = self.fs.read_link(b.as_slice()).map_err(|e| error(e, p))?;
        Ok(t.as_ref().to_vec())
    }

    fn read_at(&self, p: &GuestPath, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut cursors = self.cursors.borrow_mut();
        let found = cursors
            .iter()
            .position(|(q, f)| q == p && f.position() == offset)
            .or_else(|| cursors.iter().position(|(q, _)| q == p));
        let (_, mut file) = match found {
            Some(i) => cursors.remove(i),
            None => {
                let b = p.to_bytes();
                let f = self.fs.open(b.as_slice()).map_err(|e| error(e, p))?;
                (p.clone(), f)
            }
        };
        // ext4-view 1.0 panics (an unwrap in File::read_bytes, file.rs:132) once a file's
        // block iterator has ended before the file's size: when its block map addresses
        // fewer blocks than its size needs, or after an error that File::seek_to swallowed
        // (a damaged chunk in the block map). Which one cannot be told without walking the
        // block map, so the panic is caught, silently (quiet.rs), and the file dropped: the
        // panic happens outside every borrow inside the crate, so the filesystem stays
        // usable. A read that failed meanwhile is the error the user sees.
        self.failed.set(None);
        let read = super::quiet::catch(|| {
            if file.position() != offset {
                file.seek_to(offset).map_err(|e| error(e, p))?;
            }
            let mut done = 0;
            while done < buf.len() {
                let n = file.read_bytes(&mut buf[done..]).map_err(|e| error(e, p))?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            Ok::<usize, Error>(done)
        });
        let done = match read {
            Some(r) => r?,
            None => return Err(self.stopped(p)),
        };
        cursors.insert(0, (p.clone(), file));
        cursors.truncate(CURSORS);
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::Bytes;

    /// An ext2 image (1 KiB blocks) holding `/f`, 40 KiB: 12 direct blocks, then an indirect
    /// block whose number debugfs set past the end of the filesystem.
    fn past_end() -> Vec<u8> {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fuzz/guest_fs/found-ext2-indirect-block-past-end"
        );
        let d = crate::fuzz::SparseDisk::parse(&std::fs::read(p).unwrap());
        let mut v = vec![0u8; d.size() as usize];
        d.read_exact_at(0, &mut v).unwrap();
        v
    }

    fn f() -> GuestPath {
        GuestPath::parse_user(b"/f").unwrap()
    }

    /// ext4-view panics reading on after its `seek_to` swallowed an error: that is an error
    /// for the file (and the filesystem stays usable), whether read from the start or not.
    #[test]
    fn a_block_map_that_ends_early_is_an_error_not_a_panic() {
        let fs = Ext4Fs::open(Arc::new(Bytes(past_end()))).unwrap();
        let mut buf = vec![0u8; 4096];
        for _ in 0..2 {
            let e = fs
                .read_at(&f(), 20 << 10, &mut buf)
                .unwrap_err()
                .to_string();
            assert!(e.contains("/f") && e.contains("block map"), "{e}");
        }
        assert!(fs.read_at(&f(), 0, &mut vec![0u8; 40 << 10]).is_err());
        assert_eq!(fs.read_at(&f(), 0, &mut buf).unwrap(), 4096);
        assert_eq!(fs.stat(&f()).unwrap().size, 40 << 10);
    }

    /// A disk whose bytes in `bad` fail to read, as a chunk that fails its hash does.
    struct Damaged(Bytes, std::ops::Range<u64>);

    impl Disk for Damaged {
        fn size(&self) -> u64 {
            self.0.size()
        }

        fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
            if offset < self.1.end && offset + buf.len() as u64 > self.1.start {
                return Err(Error::corrupt("Vol_1/S_1/x0", "hash mismatch"));
            }
            self.0.read_exact_at(offset, buf)
        }
    }

    /// The same stop, caused by a damaged chunk under the indirect block: the user sees
    /// the chunk's error, not a guess about the block map.
    #[test]
    fn a_damaged_chunk_under_the_block_map_is_that_chunks_error() {
        let mut v = past_end();
        let at: Vec<usize> = (0..v.len() - 4)
            .filter(|&i| v[i..i + 4] == 999_999u32.to_le_bytes())
            .collect();
        assert_eq!(at.len(), 1);
        v[at[0]..at[0] + 4].copy_from_slice(&42u32.to_le_bytes());
        let fs = Ext4Fs::open(Arc::new(Damaged(Bytes(v.clone()), 42 << 10..43 << 10))).unwrap();
        let e = fs.read_at(&f(), 20 << 10, &mut [0u8; 100]).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        // Undamaged, the file reads.
        let fs = Ext4Fs::open(Arc::new(Bytes(v))).unwrap();
        let mut buf = vec![0u8; 40 << 10];
        assert_eq!(fs.read_at(&f(), 0, &mut buf).unwrap(), 40 << 10);
        assert!(buf
            .iter()
            .enumerate()
            .all(|(i, &b)| b as usize == (i * 7 + 1) % 251));
    }

    /// A 1 MiB disk whose superblock says 1 KiB blocks, 1024 of them, 8192 per group.
    fn superblock(f: impl FnOnce(&mut [u8])) -> Arc<dyn Disk> {
        let mut v = vec![0u8; 1 << 20];
        let sb = &mut v[1024..2048];
        sb[0x04..0x08].copy_from_slice(&1024u32.to_le_bytes());
        sb[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        sb[0x20..0x24].copy_from_slice(&8192u32.to_le_bytes());
        sb[0x38..0x3a].copy_from_slice(&0xEF53u16.to_le_bytes());
        f(sb);
        Arc::new(Bytes(v))
    }

    #[test]
    fn a_geometry_that_fits_passes() {
        check_geometry(&superblock(|_| {})).unwrap();
    }

    /// The crate counts `s_blocks_count_hi` even without the 64bit feature (fuzzing found
    /// a 384 MiB descriptor table sized so): the check counts it too.
    #[test]
    fn the_high_block_count_counts_without_the_64bit_feature() {
        let d = superblock(|sb| sb[0x150..0x154].copy_from_slice(&48u32.to_le_bytes()));
        let e = check_geometry(&d).unwrap_err().to_string();
        assert!(e.contains("more than the"), "{e}");
    }

    #[test]
    fn a_block_size_past_64k_or_no_blocks_per_group_is_damage() {
        let d = superblock(|sb| sb[0x18..0x1c].copy_from_slice(&7u32.to_le_bytes()));
        assert!(check_geometry(&d).is_err());
        let d = superblock(|sb| sb[0x20..0x24].copy_from_slice(&0u32.to_le_bytes()));
        assert!(check_geometry(&d).is_err());
    }
}
