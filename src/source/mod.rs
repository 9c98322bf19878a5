//! Where volume data comes from. A [`Source`] is a regular file or a block device read by
//! position (so several threads can read it at once). Which chunks a send must read is a
//! [`Scan`]: every chunk for a full scan; copy-on-write change maps plug in here.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub mod deltamap;
pub mod lvm_thin;
pub mod reflink;
pub mod zfs;
pub(crate) mod zstream;

pub(crate) struct Source {
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
        let file =
            File::open(path).map_err(|e| Error::local_io(path, "cannot open the source", e))?;
        let md = file.metadata().map_err(|e| Error::local_io(path, "", e))?;
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
                .map_err(|e| Error::local_io(path, "", e))?
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

    /// Asks the kernel to start reading a range we will read soon (scattered chunk reads
    /// otherwise wait for one disk request at a time). Advisory: errors are ignored.
    pub(crate) fn will_need(&self, offset: u64, len: u64) {
        let _ = nix::fcntl::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&self.file),
            offset as libc::off_t,
            len as libc::off_t,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::local_io(&self.path, format!("read error at offset {offset}"), e))
    }
}

/// The offset of the first data at or after `offset` in an open file (`SEEK_DATA`): `u64::MAX`
/// if there is none, `offset` itself if the filesystem cannot tell.
pub(crate) fn seek_data(f: &File, offset: u64) -> u64 {
    use std::os::fd::AsRawFd;
    match nix::unistd::lseek(
        f.as_raw_fd(),
        offset as libc::off_t,
        nix::unistd::Whence::SeekData,
    ) {
        Ok(r) => r as u64,
        Err(nix::errno::Errno::ENXIO) => u64::MAX,
        Err(_) => offset,
    }
}

/// What a run does with one volume of local storage (reflink or LVM thin).
pub(crate) enum Plan {
    /// NOCOW file: a full scan of the live file, no snapshots.
    Nocow,
    /// No paired baseline (or no session yet): a full scan of `.wyng2`.
    Full,
    /// Read only these chunks of `.wyng2`: the map of the newest session plus this scan's
    /// changes, sized for the new volume.
    Incremental(deltamap::DeltaMap),
    /// monitor only: nothing to do for this volume (the reason is logged).
    Skip,
}

pub(crate) struct Prepared {
    pub snaps: Box<dyn Snapshots>,
    pub plan: Plan,
    /// Chunks this scan found changed between the baseline and `.wyng2`.
    pub found: u64,
}

/// How this run treats local storage: `--remap` and `--vouch`, given when the storage is
/// opened ([`LocalStorage::open`]; the default: neither).
#[derive(Clone, Debug, Default)]
pub struct LocalOptions {
    /// LVM: a `.tick` snapshot of another archive is removed (the volume is then scanned in
    /// full) instead of stopping the send.
    pub remap: bool,
    /// `--vouch=reflink_fs_<type>`: filesystem types (as `/proc/self/mounts` names them)
    /// trusted to do reflinks besides Btrfs and XFS.
    pub reflink_fs: Vec<String>,
}

/// Where `--local` volumes live: a reflink directory, an LVM thin pool (behaviour §5.1) or the
/// zvols under a ZFS dataset.
pub enum LocalStorage {
    Reflink(reflink::ReflinkStore),
    Thin(std::sync::Arc<lvm_thin::ThinPool>),
    Zfs(std::sync::Arc<zfs::ZfsStore>),
}

impl LocalStorage {
    /// `zfs:pool/dataset` is ZFS, `vg/pool` a thin pool; anything else must be a directory on a
    /// reflink filesystem.
    pub fn open(local: &Path, o: &LocalOptions) -> Result<LocalStorage> {
        match local.to_str() {
            Some(s) if zfs::ZfsStore::spec(s).is_some() => {
                Ok(LocalStorage::Zfs(std::sync::Arc::new(zfs::ZfsStore::open(
                    zfs::ZfsStore::spec(s).unwrap_or_default(),
                    Box::new(zfs::System),
                )?)))
            }
            Some(s) if lvm_thin::ThinPool::is_spec(s) => {
                Ok(LocalStorage::Thin(std::sync::Arc::new(
                    lvm_thin::ThinPool::open(s, Box::new(lvm_thin::System))?.with_remap(o.remap),
                )))
            }
            _ => reflink::ReflinkStore::open(local, &o.reflink_fs).map(LocalStorage::Reflink),
        }
    }

    /// The file or device holding a volume.
    pub fn volume_path(&self, name: &str) -> Result<PathBuf> {
        match self {
            LocalStorage::Reflink(r) => r.volume_path(name),
            LocalStorage::Thin(t) => {
                crate::format::ids::check_volume_name(name)?;
                if name.contains('/') {
                    return Err(Error::Usage(format!(
                        "'{name}': LVM volume names cannot contain '/'"
                    )));
                }
                Ok(t.device(name))
            }
            LocalStorage::Zfs(z) => Ok(z.device(&z.zvol(name)?)),
        }
    }

    /// Snapshots the volumes and finds what changed (see the storage's own `prepare`).
    pub(crate) fn prepare(
        &self,
        vols: &[reflink::PrepareVolume],
        uuid: &str,
        cache_dir: Option<&Path>,
        chunksize: u64,
        monitor: bool,
    ) -> Result<Vec<Prepared>> {
        match self {
            LocalStorage::Reflink(r) => {
                reflink::prepare(r, vols, uuid, cache_dir, chunksize, monitor)
            }
            LocalStorage::Thin(t) => t.prepare(vols, uuid, cache_dir, chunksize, monitor),
            LocalStorage::Zfs(z) => z.prepare(vols, uuid, cache_dir, chunksize, monitor),
        }
    }

    /// `receive --local` into a thin pool or ZFS: the device of volume `name`, made (or resized)
    /// to hold `size` bytes; `None` for a reflink directory (which restores files itself).
    pub fn block_volume(&self, name: &str, size: u64) -> Result<Option<PathBuf>> {
        match self {
            LocalStorage::Reflink(_) => Ok(None),
            LocalStorage::Thin(t) => {
                self.volume_path(name)?;
                t.volume_for_receive(name, size).map(Some)
            }
            LocalStorage::Zfs(z) => z.volume_for_receive(name, size).map(Some),
        }
    }

    /// `receive --use-snapshot` into a thin pool: volume `name` becomes a writable copy of its
    /// paired baseline (see [`lvm_thin::ThinPool::restore_from_baseline`]); `Ok(false)` where there
    /// is none (and always for ZFS, whose baseline is a bookmark).
    pub fn restore_from_baseline(
        &self,
        name: &str,
        uuid: &str,
        vol_cache: Option<&Path>,
        last: &crate::format::Session,
    ) -> Result<bool> {
        match self {
            LocalStorage::Thin(t) => t.restore_from_baseline(name, uuid, vol_cache, last),
            _ => Ok(false),
        }
    }

    /// The reflink directory, for commands that only work there.
    pub fn reflink(&self, what: &str) -> Result<&reflink::ReflinkStore> {
        match self {
            LocalStorage::Reflink(r) => Ok(r),
            LocalStorage::Thin(t) => Err(Error::Unsupported(format!(
                "{what} with an LVM thin pool ({}/{}): not supported yet; use --save-to=/dev/{}/<volume>",
                t.vg, t.pool, t.vg
            ))),
            LocalStorage::Zfs(z) => Err(Error::Unsupported(format!(
                "{what} with ZFS (zfs:{}): not supported yet; use --save-to=/dev/zvol/{}/<volume>",
                z.dataset, z.dataset
            ))),
        }
    }
}

/// The snapshot pair of one volume in local storage, whatever makes them (behaviour §5.2):
/// `snap1` is the baseline paired with the newest session through its delta map, `snap2` the
/// snapshot this run reads from. Storages only make, promote and drop snapshots; the order in
/// which the baseline and its map move, which the pairing's crash safety rests on, lives here.
pub(crate) trait Snapshots {
    /// What a send reads.
    fn snap2_path(&self) -> &Path;
    /// The volume's directory in the local cache, where its delta maps live.
    fn cache(&self) -> Option<&Path>;
    /// Makes snap2 the baseline, durably (`last` is the newest session, for storages that tag
    /// it); returns the new baseline's time (ns), the mtime its map must carry.
    fn promote_snap2(&self, last: &crate::format::Session) -> Result<i128>;
    fn drop_snap2(&self);

    /// The delta map of the session `last`.
    fn map_path(&self, last: &crate::format::Session) -> Option<PathBuf> {
        self.cache()
            .map(|c| deltamap::path(c, last.name.as_str(), last.info.sequence))
    }

    /// After `last` was committed from snap2: it becomes the baseline, with a blank map.
    /// Until the new map exists nothing pairs (the old map names an older session), so a crash
    /// in between costs a full scan only.
    fn rotate_after_send(&self, last: &crate::format::Session, chunksize: u64) -> Result<()> {
        let t = self.promote_snap2(last)?;
        if let (Some(map), Some(dir)) = (self.map_path(last), self.cache()) {
            deltamap::DeltaMap::blank(last.info.volsize, chunksize).save(&map, t)?;
            deltamap::remove_others(dir, Some(&map));
        }
        Ok(())
    }

    /// snap2 becomes the baseline while the map of `last` becomes `map` (the changes from `last`
    /// to snap2). The map is first written as the union of the old and new changes, keeping its
    /// mtime so it stays paired with the old baseline, then the baseline moves, then the map
    /// gets its final content and mtime: whenever it crashes, a paired map misses no change.
    fn rotate_with(&self, last: &crate::format::Session, map: &deltamap::DeltaMap) -> Result<()> {
        let Some(path) = self.map_path(last) else {
            return Ok(());
        };
        let old_t = deltamap::mtime_ns(&path).unwrap_or(0);
        deltamap::save_union(&path, map, old_t)?;
        let t = self.promote_snap2(last)?;
        map.save(&path, t)
    }
}

/// Which chunks a send reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scan {
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
