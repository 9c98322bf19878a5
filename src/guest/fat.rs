//! FAT12/16/32 through `fatfs`, opened on a [`Cursor`] whose writes fail: nothing is ever
//! written (the crate writes only when a file is written or the volume was marked dirty by a
//! write, and accessed dates are not updated).
//!
//! Invariants:
//! * A directory is read for at most [`MAX_ENTRIES`] entries (FAT allows 65,536 slots per
//!   directory): a cluster chain that loops is an error, not an endless listing.
//! * FAT has no owners and no permissions: files show as 0644 (0444 when read-only), directories
//!   0755, owned by 0:0. Times are the stored local time read as UTC, to 2 s.
//! * Names are matched exactly, then without regard to case (as FAT does).

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use fatfs::{DirEntry, FileAttributes, FileSystem, FsOptions};

use super::{from_io, guest, not_found, Cursor, Disk, Entry, GuestFs, GuestPath, Kind, Stat};
use crate::error::Result;

/// Most entries read from one directory (slots for long names included).
pub(crate) const MAX_ENTRIES: usize = 1 << 17;

pub(crate) struct FatFs {
    fs: FileSystem<Cursor>,
}

fn mtime(e: &DirEntry<'_, Cursor>) -> (i64, u32) {
    let m = e.modified();
    let (d, t) = (m.date, m.time);
    let secs = chrono::NaiveDate::from_ymd_opt(d.year.into(), d.month.into(), d.day.into())
        .and_then(|day| {
            day.and_hms_milli_opt(t.hour.into(), t.min.into(), t.sec.into(), t.millis.into())
        })
        .map(|dt| dt.and_utc());
    secs.map_or((0, 0), |dt| (dt.timestamp(), dt.timestamp_subsec_nanos()))
}

fn stat(e: &DirEntry<'_, Cursor>) -> Stat {
    let dir = e.is_dir();
    let ro = e.attributes().contains(FileAttributes::READ_ONLY);
    Stat {
        kind: if dir { Kind::Dir } else { Kind::File },
        perm: match (dir, ro) {
            (true, _) => 0o755,
            (false, true) => 0o444,
            (false, false) => 0o644,
        },
        uid: 0,
        gid: 0,
        size: if dir { 0 } else { e.len() },
        mtime: mtime(e),
    }
}

type Dir<'a> = fatfs::Dir<'a, Cursor>;

impl FatFs {
    pub fn open(disk: Arc<dyn Disk>) -> Result<FatFs> {
        let fs = FileSystem::new(Cursor::new(disk), FsOptions::new())
            .map_err(|e| from_io(e, "the FAT filesystem"))?;
        Ok(FatFs { fs })
    }

    /// Every entry of `dir` (bounded), to `each` until it returns false.
    fn each<'a>(
        &'a self,
        dir: &Dir<'a>,
        p: &GuestPath,
        each: &mut dyn FnMut(DirEntry<'a, Cursor>) -> Result<bool>,
    ) -> Result<()> {
        for (n, e) in dir.iter().enumerate() {
            if n >= MAX_ENTRIES {
                return Err(guest(
                    &p.display(),
                    "the directory has more entries than FAT allows (its cluster chain loops: damaged)",
                ));
            }
            let e = e.map_err(|e| from_io(e, &p.display()))?;
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            if !each(e)? {
                break;
            }
        }
        Ok(())
    }

    /// The entry at `p` (not the root).
    fn entry(&self, p: &GuestPath) -> Result<DirEntry<'_, Cursor>> {
        let mut dir = self.fs.root_dir();
        let comps = p.components();
        for (i, c) in comps.iter().enumerate() {
            let here = GuestPath::root();
            let mut exact = None;
            let mut folded = None;
            self.each(&dir, &here, &mut |e| {
                let name = e.file_name();
                if name.as_bytes() == c.as_slice() {
                    exact = Some(e);
                    return Ok(false);
                }
                if folded.is_none()
                    && std::str::from_utf8(c).is_ok_and(|c| name.eq_ignore_ascii_case(c))
                {
                    folded = Some(e);
                }
                Ok(true)
            })?;
            let Some(e) = exact.or(folded) else {
                return Err(not_found(&p.display()));
            };
            if i + 1 == comps.len() {
                return Ok(e);
            }
            if !e.is_dir() {
                return Err(guest(&p.display(), "a component is not a directory"));
            }
            dir = e.to_dir();
        }
        Err(guest(&p.display(), "the root has no entry of its own"))
    }
}

impl GuestFs for FatFs {
    fn kind(&self) -> &'static str {
        "vfat"
    }

    fn stat(&self, p: &GuestPath) -> Result<Stat> {
        if p.is_root() {
            return Ok(Stat {
                kind: Kind::Dir,
                perm: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: (0, 0),
            });
        }
        Ok(stat(&self.entry(p)?))
    }

    fn list(&self, p: &GuestPath, each: &mut dyn FnMut(Entry) -> Result<bool>) -> Result<()> {
        let dir = if p.is_root() {
            self.fs.root_dir()
        } else {
            let e = self.entry(p)?;
            if !e.is_dir() {
                return Err(guest(&p.display(), "is not a directory"));
            }
            e.to_dir()
        };
        self.each(&dir, p, &mut |e| {
            each(Entry {
                name: e.file_name().into_bytes(),
                stat: Ok(stat(&e)),
            })
        })
    }

    fn read_link(&self, p: &GuestPath) -> Result<Vec<u8>> {
        Err(guest(&p.display(), "is not a symlink"))
    }

    fn read_at(&self, p: &GuestPath, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let e = self.entry(p)?;
        if e.is_dir() {
            return Err(guest(&p.display(), "is a directory"));
        }
        let size = e.len();
        if offset >= size {
            return Ok(0);
        }
        let want = ((size - offset) as usize).min(buf.len());
        let mut f = e.to_file();
        let io = |e| from_io(e, &p.display());
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut done = 0;
        while done < want {
            let n = f.read(&mut buf[done..want]).map_err(io)?;
            if n == 0 {
                return Err(guest(
                    &p.display(),
                    format!("its cluster chain ends before its size ({size} bytes): damaged"),
                ));
            }
            done += n;
        }
        Ok(done)
    }
}
