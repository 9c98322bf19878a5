//! Copy-on-write change detection on reflink filesystems (Btrfs, XFS with reflink): what
//! changed since the last send comes from the filesystem's extent maps, not from rereading the
//! volume.
//!
//! Invariants:
//! * A send reads from `sn<uuid>_<vid>.wyng2`, a reflink snapshot of the volume taken when the
//!   send starts (a consistent point in time, whatever writes the volume meanwhile). After the
//!   send it becomes `.wyng1`, the baseline of the next one (names as the original's, format
//!   §14.5).
//! * The baseline is trusted only if the local cache records it as paired with the archive's
//!   newest session (name, sequence, inode, mtime); anything else means a full scan.
//! * Extents are compared by logical offset, physical offset and length (and the flags that
//!   describe data); any byte in a differing extent of either snapshot marks its chunks, as does
//!   everything past the old size and the old partial last chunk. Extents the filesystem cannot
//!   place (inline, delalloc, unknown) are always treated as changed.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
const XFS_SUPER_MAGIC: i64 = 0x5846_5342;

/// A directory on a reflink-capable filesystem holding volumes as files (`--local`).
pub struct ReflinkStore {
    pub dir: PathBuf,
}

impl ReflinkStore {
    pub fn open(dir: &Path) -> Result<ReflinkStore> {
        let md = std::fs::metadata(dir).map_err(|e| Error::local(dir, format!("--local: {e}")))?;
        if !md.is_dir() {
            return Err(Error::local(dir, "--local must be a directory"));
        }
        let st = nix::sys::statfs::statfs(dir).map_err(|e| Error::local(dir, e.to_string()))?;
        let magic = st.filesystem_type().0 as i64;
        if magic != BTRFS_SUPER_MAGIC && magic != XFS_SUPER_MAGIC {
            return Err(Error::local(
                dir,
                "is not on a reflink-capable filesystem (Btrfs, or XFS made with reflink=1); use --import-other-from for full-scan sends",
            ));
        }
        Ok(ReflinkStore {
            dir: dir.to_path_buf(),
        })
    }

    pub fn volume_path(&self, name: &str) -> Result<PathBuf> {
        crate::format::ids::check_volume_name(name)?;
        Ok(self.dir.join(name))
    }
}

/// Makes `dst` a read-only reflink snapshot of `src`, with its mtime and mode.
pub fn snapshot(src: &Path, dst: &Path) -> Result<()> {
    let _ = std::fs::remove_file(dst);
    reflink_copy::reflink(src, dst).map_err(|e| {
        Error::local(
            src,
            format!("cannot make a reflink snapshot ({e}); is the filesystem reflink-capable?"),
        )
    })?;
    let md = std::fs::metadata(src).map_err(|e| Error::local(src, e.to_string()))?;
    let f = File::options()
        .write(true)
        .open(dst)
        .map_err(|e| Error::local(dst, e.to_string()))?;
    let mtime =
        std::time::UNIX_EPOCH + std::time::Duration::new(md.mtime() as u64, md.mtime_nsec() as u32);
    f.set_modified(mtime)
        .map_err(|e| Error::local(dst, e.to_string()))?;
    f.sync_all().map_err(|e| Error::local(dst, e.to_string()))?;
    std::fs::set_permissions(
        dst,
        std::os::unix::fs::PermissionsExt::from_mode(md.mode() & 0o7555),
    )
    .map_err(|e| Error::local(dst, e.to_string()))?;
    Ok(())
}

/// The baseline (`.wyng1`) and new (`.wyng2`) snapshot paths of a volume file: beside it,
/// named after the archive's UUID and the volume id (format §14.5).
pub fn snapshot_paths(volume_file: &Path, uuid: &str, vid: &str) -> (PathBuf, PathBuf) {
    let dir = volume_file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    (
        dir.join(format!("sn{uuid}_{vid}.wyng1")),
        dir.join(format!("sn{uuid}_{vid}.wyng2")),
    )
}

/// Where the pairing record of a volume lives in the local cache.
pub fn pairing_file(cache_dir: &Path, vid: &str) -> PathBuf {
    cache_dir.join(vid).join("pairing.json")
}

/// The local record that a volume's baseline snapshot holds exactly what its newest session
/// holds: it is trusted only while all of these still match.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq, Debug)]
pub struct Pairing {
    pub session: String,
    pub sequence: u64,
    pub ino: u64,
    pub mtime_ns: i128,
    pub size: u64,
}

impl Pairing {
    /// The record `snap` would have as the baseline of `last`.
    pub fn of(snap: &Path, last: &crate::archive::Session) -> Option<Pairing> {
        let md = std::fs::metadata(snap).ok()?;
        Some(Pairing {
            session: last.name.to_string(),
            sequence: last.info.sequence,
            ino: md.ino(),
            mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
            size: md.len(),
        })
    }

    pub fn load(file: &Path) -> Option<Pairing> {
        serde_json::from_slice(&std::fs::read(file).ok()?).ok()
    }

    /// Whether `snap` is the paired baseline of `last`.
    pub fn holds(file: &Path, snap: &Path, last: &crate::archive::Session) -> bool {
        matches!((Pairing::load(file), Pairing::of(snap, last)), (Some(a), Some(b)) if a == b)
    }
}

/// Records `snap` as the baseline of `last` (best effort: without it the next send is a full
/// scan, which is slower but just as correct).
pub fn pair(snap: &Path, last: &crate::archive::Session, file: &Path) {
    let Some(p) = Pairing::of(snap, last) else {
        return;
    };
    let tmp = file.with_extension("tmp");
    let saved = file
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .and_then(|_| {
            std::fs::write(&tmp, serde_json::to_vec(&p).expect("serializable"))?;
            std::fs::rename(&tmp, file)
        });
    if let Err(e) = saved {
        tracing::warn!("could not record the snapshot pairing (the next send is a full scan): {e}");
    }
}

/// One extent of a file's mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

const BATCH: usize = 256;

#[repr(C)]
struct Fiemap {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
    fm_extents: [FiemapExtent; BATCH],
}

const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;
const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x200;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;

// FS_IOC_FIEMAP = _IOWR('f', 11, struct fiemap), where struct fiemap is the 32-byte header
// (its extent array is a flexible member): the number cannot be derived from our buffer type.
nix::ioctl_readwrite_bad!(fs_ioc_fiemap, 0xC020_660B, Fiemap);

/// The extent map of a file (FIEMAP, after syncing it).
pub fn extents(path: &Path) -> Result<Vec<Extent>> {
    let f = File::open(path).map_err(|e| Error::local(path, e.to_string()))?;
    let mut out = Vec::new();
    let mut start = 0u64;
    let mut fm = Box::new(Fiemap {
        fm_start: 0,
        fm_length: 0,
        fm_flags: 0,
        fm_mapped_extents: 0,
        fm_extent_count: BATCH as u32,
        fm_reserved: 0,
        fm_extents: [FiemapExtent::default(); BATCH],
    });
    loop {
        fm.fm_start = start;
        fm.fm_length = u64::MAX - start;
        fm.fm_flags = FIEMAP_FLAG_SYNC;
        fm.fm_mapped_extents = 0;
        fm.fm_extent_count = BATCH as u32;
        // SAFETY: `fm` is a properly laid out fiemap request with room for BATCH extents.
        unsafe { fs_ioc_fiemap(f.as_raw_fd(), &mut *fm) }.map_err(|e| {
            Error::local(
                path,
                format!("FIEMAP failed ({e}): the filesystem cannot report extents"),
            )
        })?;
        let n = fm.fm_mapped_extents as usize;
        if n == 0 {
            break;
        }
        let mut last = false;
        for e in &fm.fm_extents[..n.min(BATCH)] {
            out.push(Extent {
                logical: e.fe_logical,
                physical: e.fe_physical,
                length: e.fe_length,
                flags: e.fe_flags,
            });
            last |= e.fe_flags & FIEMAP_EXTENT_LAST != 0;
            start = e.fe_logical + e.fe_length;
        }
        if last {
            break;
        }
    }
    Ok(out)
}

/// Chunk indices (sorted) that may differ between the baseline and the new snapshot.
///
/// Compares the logical→physical *mapping*, not extent records: filesystems report the same
/// mapping in different pieces (Btrfs merges physically contiguous ranges in one file's map and
/// not in another's). Every segment between consecutive extent boundaries of either map is
/// unchanged only if both map it, placed, to the same physical offset with the same data flags.
pub fn changed_chunks(
    old: &[Extent],
    new: &[Extent],
    old_size: u64,
    new_size: u64,
    chunksize: u64,
) -> Vec<u64> {
    // Flags that only describe sharing or position in the list do not change data.
    let data_flags = |e: &Extent| e.flags & !(FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_SHARED);
    let unplaced = |e: &Extent| {
        e.flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_DATA_INLINE) != 0
    };
    let sorted = |v: &[Extent]| {
        let mut v = v.to_vec();
        v.sort_by_key(|e| e.logical);
        v
    };
    let (old, new) = (sorted(old), sorted(new));
    let covering = |v: &[Extent], at: u64| -> Option<Extent> {
        let i = v.partition_point(|e| e.logical <= at);
        v[..i].last().filter(|e| at < e.logical + e.length).copied()
    };
    let mut bounds: Vec<u64> = old
        .iter()
        .chain(new.iter())
        .flat_map(|e| [e.logical, e.logical + e.length])
        .collect();
    bounds.push(0);
    bounds.sort_unstable();
    bounds.dedup();
    let n = new_size.div_ceil(chunksize);
    let mut marked = vec![false; n as usize];
    let mut mark = |from: u64, to: u64| {
        if to <= from || n == 0 {
            return;
        }
        for i in from / chunksize..=((to - 1) / chunksize).min(n - 1) {
            marked[i as usize] = true;
        }
    };
    for w in bounds.windows(2) {
        let (a, b) = (w[0], w[1]);
        let same = match (covering(&old, a), covering(&new, a)) {
            (None, None) => true, // a hole in both
            (Some(o), Some(x)) => {
                !unplaced(&o)
                    && !unplaced(&x)
                    && o.physical + (a - o.logical) == x.physical + (a - x.logical)
                    && data_flags(&o) == data_flags(&x)
            }
            _ => false,
        };
        if !same {
            mark(a, b);
        }
    }
    // Size changes: the old partial last chunk and everything past the old end.
    if new_size != old_size {
        let from = (old_size / chunksize) * chunksize;
        mark(from, new_size.max(from + 1));
    }
    marked
        .iter()
        .enumerate()
        .filter(|(_, &m)| m)
        .map(|(i, _)| i as u64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(logical: u64, physical: u64, length: u64) -> Extent {
        Extent {
            logical,
            physical,
            length,
            flags: 0,
        }
    }

    #[test]
    fn changed_chunks_from_extent_maps() {
        let cs = 100;
        let old = vec![e(0, 1000, 300), e(300, 5000, 200)];
        // Same layout: nothing changed.
        assert!(changed_chunks(&old, &old, 500, 500, cs).is_empty());
        // A rewrite of [120, 180) splits the first extent: only that range changed.
        let new = vec![
            e(0, 1000, 120),
            e(120, 9000, 60),
            e(180, 1180, 120),
            e(300, 5000, 200),
        ];
        assert_eq!(changed_chunks(&old, &new, 500, 500, cs), vec![1]);
        // The same mapping reported in other pieces (as Btrfs does) is no change.
        let pieces = vec![e(0, 1000, 50), e(50, 1050, 250), e(300, 5000, 200)];
        assert!(changed_chunks(&old, &pieces, 500, 500, cs).is_empty());
        // A punched hole: the extent disappears.
        let new = vec![e(0, 1000, 300)];
        assert_eq!(changed_chunks(&old, &new, 500, 500, cs), vec![3, 4]);
        // Growth: the old partial last chunk and the new area.
        assert_eq!(changed_chunks(&old, &old, 450, 650, cs), vec![4, 5, 6]);
        // Sharing flags alone do not count; unplaced extents always do.
        let mut shared = old.clone();
        shared[0].flags = FIEMAP_EXTENT_SHARED | FIEMAP_EXTENT_LAST;
        assert!(changed_chunks(&old, &shared, 500, 500, cs).is_empty());
        let mut inline = old.clone();
        inline[1].flags = FIEMAP_EXTENT_DATA_INLINE;
        assert_eq!(changed_chunks(&inline, &inline, 500, 500, cs), vec![3, 4]);
    }
}
