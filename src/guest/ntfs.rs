//! NTFS through the `ntfs` crate (a read-only library), on a [`Cursor`].
//!
//! Invariants:
//! * Every operation has a read budget ([`BUDGET`] bytes per entry produced, or per lookup):
//!   an index whose B-tree loops (a subnode naming an ancestor) makes the crate descend without
//!   end inside one step, so the budget is what turns that into an error.
//! * The NTFS metafiles (file records 0-15: `$MFT`, `$Bitmap`, `$Extend`, …) and DOS 8.3 alias
//!   names are not listed; every other name is listed once.
//! * NTFS has no POSIX owners or permissions: files show as 0644 (0444 when read-only),
//!   directories 0755, owned by 0:0; the modification time is `$STANDARD_INFORMATION`'s.
//! * Names are matched exactly (UTF-16 made UTF-8), then without regard to ASCII case.

use std::cell::RefCell;
use std::io::SeekFrom;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{Ntfs, NtfsError, NtfsFile, NtfsReadSeek};

use super::{from_io, guest, not_found, Disk, Entry, GuestFs, GuestPath, Kind, Stat};
use crate::error::{Error, Result};

/// Bytes the crate may read to produce one directory entry or resolve one path.
pub(crate) const BUDGET: u64 = 64 << 20;
/// The first file record that is not a metafile.
const FIRST_USER_RECORD: u64 = 16;
/// Most entries read from one directory.
pub(crate) const MAX_ENTRIES: usize = 1 << 22;

/// A cursor that fails once its budget is spent.
struct Budgeted {
    inner: super::Cursor,
    left: Arc<AtomicU64>,
}

impl std::io::Read for Budgeted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len() as u64;
        if self.left.load(Ordering::Relaxed) < n {
            return Err(std::io::Error::other(OverBudget));
        }
        self.left.fetch_sub(n, Ordering::Relaxed);
        self.inner.read(buf)
    }
}

impl std::io::Seek for Budgeted {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(to)
    }
}

#[derive(Debug)]
struct OverBudget;

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("its index structures loop or are far larger than they should be (damaged)")
    }
}

impl std::error::Error for OverBudget {}

pub(crate) struct NtfsFs {
    ntfs: Ntfs,
    io: RefCell<Budgeted>,
    left: Arc<AtomicU64>,
}

fn error(e: NtfsError, path: &GuestPath) -> Error {
    match e {
        NtfsError::Io(io) => from_io(io, &path.display()),
        e => guest(&path.display(), e.to_string()),
    }
}

/// 100 ns ticks since 1601 to (seconds, nanoseconds) since 1970.
fn unix_time(ticks: u64) -> (i64, u32) {
    const EPOCH_DIFF: i64 = 11_644_473_600;
    let secs = (ticks / 10_000_000) as i64 - EPOCH_DIFF;
    (secs, ((ticks % 10_000_000) * 100) as u32)
}

impl NtfsFs {
    pub fn open(disk: Arc<dyn Disk>) -> Result<NtfsFs> {
        let left = Arc::new(AtomicU64::new(BUDGET));
        let mut io = Budgeted {
            inner: super::Cursor::new(disk),
            left: left.clone(),
        };
        let ntfs = Ntfs::new(&mut io).map_err(|e| error(e, &GuestPath::root()))?;
        Ok(NtfsFs {
            ntfs,
            io: RefCell::new(io),
            left,
        })
    }

    fn refill(&self) {
        self.left.store(BUDGET, Ordering::Relaxed);
    }

    fn stat_of(&self, f: &NtfsFile<'_>, p: &GuestPath) -> Result<Stat> {
        let io = &mut *self.io.borrow_mut();
        let info = f.info().map_err(|e| error(e, p))?;
        let dir = f.is_directory();
        let size = if dir {
            0
        } else {
            match f.data(io, "") {
                Some(item) => {
                    let item = item.map_err(|e| error(e, p))?;
                    item.to_attribute().map_err(|e| error(e, p))?.value_length()
                }
                None => 0,
            }
        };
        let ro = info
            .file_attributes()
            .contains(NtfsFileAttributeFlags::READ_ONLY);
        Ok(Stat {
            kind: if dir { Kind::Dir } else { Kind::File },
            perm: match (dir, ro) {
                (true, _) => 0o755,
                (false, true) => 0o444,
                (false, false) => 0o644,
            },
            uid: 0,
            gid: 0,
            size,
            mtime: unix_time(info.modification_time().nt_timestamp()),
        })
    }

    /// Every listed entry of directory `dir`: (name, file record), to `each` until false.
    fn each(
        &self,
        dir: &NtfsFile<'_>,
        p: &GuestPath,
        each: &mut dyn FnMut(Vec<u8>, u64) -> Result<bool>,
    ) -> Result<()> {
        let index = {
            let io = &mut *self.io.borrow_mut();
            dir.directory_index(io).map_err(|e| error(e, p))?
        };
        let mut entries = index.entries();
        let mut n = 0usize;
        loop {
            self.refill();
            let next = {
                let io = &mut *self.io.borrow_mut();
                entries.next(io)
            };
            let Some(entry) = next else {
                return Ok(());
            };
            n += 1;
            if n > MAX_ENTRIES {
                return Err(guest(
                    &p.display(),
                    "the directory has too many entries (damaged)",
                ));
            }
            let entry = entry.map_err(|e| error(e, p))?;
            let record = entry.file_reference().file_record_number();
            let Some(key) = entry.key() else {
                continue;
            };
            let key = key.map_err(|e| error(e, p))?;
            if key.namespace() == NtfsFileNamespace::Dos || record < FIRST_USER_RECORD {
                continue;
            }
            let name = key.name().to_string_lossy().into_bytes();
            if name == b"." {
                continue;
            }
            if !each(name, record)? {
                return Ok(());
            }
        }
    }

    /// The file record at `p`.
    fn file(&self, p: &GuestPath) -> Result<NtfsFile<'_>> {
        self.refill();
        let mut f = {
            let io = &mut *self.io.borrow_mut();
            self.ntfs.root_directory(io).map_err(|e| error(e, p))?
        };
        for c in p.components() {
            if !f.is_directory() {
                return Err(guest(&p.display(), "a component is not a directory"));
            }
            let mut exact = None;
            let mut folded = None;
            self.each_lookup(&f, p, c, &mut exact, &mut folded)?;
            let record = exact.or(folded).ok_or_else(|| not_found(&p.display()))?;
            self.refill();
            let io = &mut *self.io.borrow_mut();
            f = self.ntfs.file(io, record).map_err(|e| error(e, p))?;
        }
        Ok(f)
    }

    fn each_lookup(
        &self,
        dir: &NtfsFile<'_>,
        p: &GuestPath,
        want: &[u8],
        exact: &mut Option<u64>,
        folded: &mut Option<u64>,
    ) -> Result<()> {
        self.each(dir, p, &mut |name, record| {
            if name == want {
                *exact = Some(record);
                return Ok(false);
            }
            if folded.is_none() && name.eq_ignore_ascii_case(want) {
                *folded = Some(record);
            }
            Ok(true)
        })
    }
}

impl GuestFs for NtfsFs {
    fn kind(&self) -> &'static str {
        "ntfs"
    }

    fn stat(&self, p: &GuestPath) -> Result<Stat> {
        let f = self.file(p)?;
        self.stat_of(&f, p)
    }

    fn list(&self, p: &GuestPath, each: &mut dyn FnMut(Entry) -> Result<bool>) -> Result<()> {
        let dir = self.file(p)?;
        if !dir.is_directory() {
            return Err(guest(&p.display(), "is not a directory"));
        }
        self.each(&dir, p, &mut |name, record| {
            let here = p.join(&name).unwrap_or_else(|_| p.clone());
            let stat = {
                let f = {
                    let io = &mut *self.io.borrow_mut();
                    self.ntfs.file(io, record).map_err(|e| error(e, &here))
                };
                f.and_then(|f| self.stat_of(&f, &here))
            };
            each(Entry { name, stat })
        })
    }

    fn read_link(&self, p: &GuestPath) -> Result<Vec<u8>> {
        Err(guest(&p.display(), "is not a symlink"))
    }

    fn read_at(&self, p: &GuestPath, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let f = self.file(p)?;
        if f.is_directory() {
            return Err(guest(&p.display(), "is a directory"));
        }
        self.refill();
        let io = &mut *self.io.borrow_mut();
        let Some(item) = f.data(io, "") else {
            return Ok(0);
        };
        let item = item.map_err(|e| error(e, p))?;
        let attr = item.to_attribute().map_err(|e| error(e, p))?;
        let size = attr.value_length();
        if offset >= size {
            return Ok(0);
        }
        let want = ((size - offset) as usize).min(buf.len());
        let mut value = attr.value(io).map_err(|e| error(e, p))?;
        value
            .seek(io, SeekFrom::Start(offset))
            .map_err(|e| error(e, p))?;
        let mut done = 0;
        while done < want {
            // Data reads are the file's own size, not index structures: no budget.
            self.refill();
            let n = value
                .read(io, &mut buf[done..want])
                .map_err(|e| error(e, p))?;
            if n == 0 {
                return Err(guest(
                    &p.display(),
                    format!("its data ends before its size ({size} bytes): damaged"),
                ));
            }
            done += n;
        }
        Ok(done)
    }
}
