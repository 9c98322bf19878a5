//! Copy-on-write change detection on reflink filesystems (Btrfs, XFS with reflink): what
//! changed since the last send comes from the filesystem's extent maps, not from rereading the
//! volume.
//!
//! Invariants:
//! * A send reads from `sn<uuid>_<vid>.wyng2`, a read-only reflink snapshot of the volume taken
//!   when the send starts (a consistent point in time, whatever writes the volume meanwhile).
//!   After the send it becomes `.wyng1`, the baseline of the next one (names as the original's,
//!   format §14.5). `monitor` does the same without sending, accumulating the changes in the
//!   volume's delta map (see [`super::deltamap`]).
//! * The baseline is trusted only while the delta map of the newest session is paired with it
//!   (same mtime, behaviour §5.2); anything else means a full scan, reported.
//! * Extents are compared by logical offset, physical offset and length (and the flags that
//!   describe data); any byte in a differing extent of either snapshot marks its chunks, as does
//!   everything past the old size and the old partial last chunk. Extents the filesystem cannot
//!   place (inline, delalloc, unknown) are always treated as changed.
//! * The two extent maps must describe one moment of the filesystem's block layout: on a Btrfs
//!   subvolume they are read inside a read-only subvolume snapshot whose generation must not
//!   move during the scan (a balance relocating extents would), elsewhere both maps are read
//!   twice and must agree. Otherwise the scan is retried after 3, 6 and 12 s, then fails.
//! * NOCOW files (`chattr +C`) are overwritten in place, so their extent maps say nothing: they
//!   are sent by a full scan of the live file and get no snapshots.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::deltamap::{self, ChunkRanges, DeltaMap, Pairing};
use super::{Plan, Prepared, Snapshots};
use crate::error::{Error, Result};
use crate::format::Session;

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
const XFS_SUPER_MAGIC: i64 = 0x5846_5342;

/// A directory on a reflink-capable filesystem holding volumes as files (`--local`).
pub struct ReflinkStore {
    pub dir: PathBuf,
    btrfs: bool,
}

impl ReflinkStore {
    /// `reflink_fs`: filesystem types vouched for besides Btrfs and XFS (`--vouch`).
    pub fn open(dir: &Path, reflink_fs: &[String]) -> Result<ReflinkStore> {
        let md = std::fs::metadata(dir).map_err(|e| Error::local_io(dir, "--local", e))?;
        if !md.is_dir() {
            return Err(Error::local(dir, "--local must be a directory"));
        }
        let st = nix::sys::statfs::statfs(dir).map_err(|e| Error::local_io(dir, "", e.into()))?;
        let magic = st.filesystem_type().0 as i64;
        let vouched =
            || !reflink_fs.is_empty() && fs_type(dir).is_some_and(|t| reflink_fs.contains(&t));
        if magic != BTRFS_SUPER_MAGIC && magic != XFS_SUPER_MAGIC && !vouched() {
            return Err(Error::local(
                dir,
                "is not on a reflink-capable filesystem (Btrfs, or XFS made with reflink=1); use --import-other-from for full-scan sends",
            ));
        }
        Ok(ReflinkStore {
            dir: dir.to_path_buf(),
            btrfs: magic == BTRFS_SUPER_MAGIC,
        })
    }

    pub fn volume_path(&self, name: &str) -> Result<PathBuf> {
        crate::format::ids::check_volume_name(name)?;
        Ok(self.dir.join(name))
    }
}

/// The type of the filesystem holding `dir` (`/proc/self/mounts`: the longest mountpoint that
/// contains it).
fn fs_type(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_, mp, ty) = (f.next()?, f.next()?, f.next()?);
            let mp = mp.replace("\\040", " ");
            dir.starts_with(&mp).then(|| (mp.len(), ty.to_string()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, t)| t)
}

impl ReflinkStore {
    /// A Btrfs subvolume root (inode 256) can be frozen with a read-only snapshot.
    fn is_btrfs_subvolume(&self) -> bool {
        self.btrfs && std::fs::metadata(&self.dir).is_ok_and(|m| m.ino() == 256)
    }

    /// Removes a freeze snapshot left by an interrupted run (behaviour §5.1).
    pub(crate) fn release_stale_freeze(&self) {
        let p = self.dir.join(FREEZE_NAME);
        if self.btrfs && p.exists() {
            tracing::info!("removing a stale {}", p.display());
            delete_subvolume(&p);
        }
    }

    /// Freezes the subvolume for a consistent scan; `None` where that is not possible (not a
    /// Btrfs subvolume root, no `btrfs` command, a balance running), in which case the caller
    /// checks consistency by reading twice.
    fn freeze(&self) -> Result<Option<Freeze>> {
        if !self.is_btrfs_subvolume() {
            return Ok(None);
        }
        let fs_uuid = fs_uuid(&self.dir);
        if let Some(op) = exclusive_operation(fs_uuid.as_deref()) {
            tracing::info!("btrfs is busy ({op}); reading extent maps twice instead");
            return Ok(None);
        }
        let path = self.dir.join(FREEZE_NAME);
        let made = btrfs(&[
            "subvolume".as_ref(),
            "snapshot".as_ref(),
            "-r".as_ref(),
            self.dir.as_os_str(),
            path.as_os_str(),
        ]);
        if let Err(e) = made {
            tracing::warn!(
                "cannot freeze {} ({e}); reading extent maps twice instead",
                self.dir.display()
            );
            return Ok(None);
        }
        match subvolume_generation(&path) {
            Ok(generation) => Ok(Some(Freeze {
                path,
                generation,
                fs_uuid,
            })),
            Err(e) => {
                tracing::warn!(
                    "cannot read the freeze generation ({e}); reading extent maps twice instead"
                );
                delete_subvolume(&path);
                Ok(None)
            }
        }
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
    let md = std::fs::metadata(src).map_err(|e| Error::local_io(src, "", e))?;
    let f = File::options()
        .write(true)
        .open(dst)
        .map_err(|e| Error::local_io(dst, "", e))?;
    let mtime =
        std::time::UNIX_EPOCH + std::time::Duration::new(md.mtime() as u64, md.mtime_nsec() as u32);
    f.set_modified(mtime)
        .map_err(|e| Error::local_io(dst, "", e))?;
    f.sync_all().map_err(|e| Error::local_io(dst, "", e))?;
    std::fs::set_permissions(
        dst,
        std::os::unix::fs::PermissionsExt::from_mode(md.mode() & 0o7555),
    )
    .map_err(|e| Error::local_io(dst, "", e))?;
    Ok(())
}

/// The baseline (`.wyng1`) and new (`.wyng2`) snapshot paths of a volume file: beside it,
/// named after the archive's UUID and the volume id (format §14.5).
pub(crate) fn snapshot_paths(volume_file: &Path, uuid: &str, vid: &str) -> (PathBuf, PathBuf) {
    let dir = volume_file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    (
        dir.join(format!("sn{uuid}_{vid}.wyng1")),
        dir.join(format!("sn{uuid}_{vid}.wyng2")),
    )
}

/// The snapshots and delta map of one volume file.
pub(crate) struct VolumeSnaps {
    /// The baseline: what the newest session (plus the map's changes) holds.
    pub snap1: PathBuf,
    /// The snapshot this run reads from.
    pub snap2: PathBuf,
    /// The volume's directory in the local cache (where its delta maps live).
    pub cache: Option<PathBuf>,
    /// What `.wyng2` is a snapshot of: the volume file, or (a send to several archives) the
    /// `.wyng2` another archive's pairing took of it a moment ago, so that every archive's
    /// snapshot holds the same instant.
    pub origin: PathBuf,
}

impl VolumeSnaps {
    pub fn new(file: &Path, uuid: &str, vid: &str, cache_dir: Option<&Path>) -> VolumeSnaps {
        let (snap1, snap2) = snapshot_paths(file, uuid, vid);
        VolumeSnaps {
            snap1,
            snap2,
            cache: cache_dir.map(|d| d.join(vid)),
            origin: file.to_path_buf(),
        }
    }

    /// Whether the baseline is paired with the newest session `last` (behaviour §5.2).
    pub fn pairing(&self, last: Option<&Session>) -> Pairing {
        match last.and_then(|l| self.map_path(l)) {
            Some(map) => deltamap::pairing(&map, &self.snap1),
            None => Pairing::Unpaired,
        }
    }

    /// Forgets the baseline: removes `.wyng1` and every delta map, so nothing stale can pair.
    pub(crate) fn unpair(&self) {
        let _ = std::fs::remove_file(&self.snap1);
        if let Some(c) = &self.cache {
            deltamap::remove_others(c, None);
        }
    }

    pub(crate) fn take_snap2(&self) -> Result<()> {
        snapshot(&self.origin, &self.snap2)
    }
}

impl Snapshots for VolumeSnaps {
    fn snap2_path(&self) -> &Path {
        &self.snap2
    }

    fn cache(&self) -> Option<&Path> {
        self.cache.as_deref()
    }

    /// `.wyng2` is renamed over `.wyng1` and the directory synced; the time is the snapshot's
    /// mtime (the volume's when it was taken).
    fn promote_snap2(&self, _last: &Session) -> Result<i128> {
        std::fs::rename(&self.snap2, &self.snap1)
            .map_err(|e| Error::local_io(&self.snap2, "cannot rotate snapshots", e))?;
        if let Some(d) = self.snap1.parent().and_then(|p| File::open(p).ok()) {
            let _ = d.sync_all();
        }
        deltamap::mtime_ns(&self.snap1)
            .ok_or_else(|| Error::local(&self.snap1, "baseline snapshot vanished"))
    }

    fn drop_snap2(&self) {
        let _ = std::fs::remove_file(&self.snap2);
    }
}

/// One volume to prepare: its file, volume id and newest session.
pub(crate) struct PrepareVolume<'a> {
    pub name: &'a str,
    pub file: PathBuf,
    pub vid: String,
    pub last: Option<&'a Session>,
    /// Snapshot this instead of `file` (see [`VolumeSnaps::origin`]).
    pub snapshot_of: Option<PathBuf>,
}

/// Snapshots every volume (`.wyng2`), decides how each is scanned, and reads what changed for
/// the paired ones in one consistent scan (behaviour §5.3, §5.5). `monitor` leaves unpaired
/// volumes alone instead of planning a full scan. On error no `.wyng2` is left behind.
pub(crate) fn prepare(
    store: &ReflinkStore,
    vols: &[PrepareVolume],
    uuid: &str,
    cache_dir: Option<&Path>,
    chunksize: u64,
    monitor: bool,
) -> Result<Vec<Prepared>> {
    store.release_stale_freeze();
    let mut out: Vec<Prepared> = Vec::new();
    // Which of `out` compare their snapshots, and what.
    let mut jobs: Vec<(usize, DeltaJob)> = Vec::new();
    let cleanup = |out: &[Prepared]| out.iter().for_each(|p| p.snaps.drop_snap2());
    for v in vols {
        let mut snaps = VolumeSnaps::new(&v.file, uuid, &v.vid, cache_dir);
        if let Some(o) = &v.snapshot_of {
            snaps.origin = o.clone();
        }
        let plan = match plan(store, v, &mut snaps, monitor) {
            Ok(p) => p,
            Err(e) => {
                cleanup(&out);
                return Err(e);
            }
        };
        // monitor of a quiet volume: no snapshot to make and delete (the costly part on a
        // fragmented file).
        if monitor && matches!(plan, Plan::Incremental(_)) && unchanged_since(&snaps.snap1, &v.file)
        {
            out.push(Prepared {
                snaps: Box::new(snaps),
                plan,
                found: 0,
            });
            continue;
        }
        if matches!(plan, Plan::Full | Plan::Incremental(_)) {
            if let Err(e) = snaps.take_snap2() {
                cleanup(&out);
                return Err(e);
            }
        }
        if matches!(plan, Plan::Incremental(_)) {
            jobs.push((
                out.len(),
                DeltaJob {
                    snap1: snaps.snap1.clone(),
                    snap2: snaps.snap2.clone(),
                },
            ));
        }
        out.push(Prepared {
            snaps: Box::new(snaps),
            plan,
            found: 0,
        });
    }
    let list: Vec<DeltaJob> = jobs.iter().map(|(_, j)| j.clone()).collect();
    let found = match deltas(store, &list, chunksize) {
        Ok(f) => f,
        Err(e) => {
            cleanup(&out);
            return Err(e);
        }
    };
    for ((i, _), (changed, size)) in jobs.iter().zip(found) {
        let p = &mut out[*i];
        if let Plan::Incremental(map) = &mut p.plan {
            map.cover(size, chunksize);
            p.found = changed.count();
            map.mark_ranges(&changed);
        }
    }
    Ok(out)
}

/// How volume `v` is scanned (see [`prepare`]); an unpaired volume's baseline is dropped.
fn plan(
    store: &ReflinkStore,
    v: &PrepareVolume,
    snaps: &mut VolumeSnaps,
    monitor: bool,
) -> Result<Plan> {
    let plan = if !v.file.is_file() && monitor {
        tracing::warn!(
            "{}: no such volume in {}; skipped",
            v.name,
            store.dir.display()
        );
        Plan::Skip
    } else if !v.file.is_file() {
        return Err(Error::local(
            &v.file,
            format!(
                "volume '{}' is not a file in {}",
                v.name,
                store.dir.display()
            ),
        ));
    } else if is_nocow(&v.file) {
        tracing::warn!(
            "{}: NOCOW file (chattr +C): its extents cannot show changes, full scan",
            v.name
        );
        snaps.unpair();
        if monitor {
            Plan::Skip
        } else {
            Plan::Nocow
        }
    } else {
        match snaps.pairing(v.last) {
            Pairing::Unpaired => {
                if v.last.is_some() {
                    if monitor {
                        tracing::warn!("{}: no paired snapshot; skipped", v.name);
                    } else {
                        tracing::warn!("{}: no paired snapshot: queuing full scan", v.name);
                    }
                } else if monitor {
                    tracing::warn!("{}: no data in the archive yet; skipped", v.name);
                }
                snaps.unpair();
                if monitor {
                    Plan::Skip
                } else {
                    Plan::Full
                }
            }
            paired => {
                let map = match (paired, v.last.and_then(|l| snaps.map_path(l))) {
                    (Pairing::PairedWithChanges, Some(p)) => DeltaMap::load(&p),
                    _ => Ok(DeltaMap::default()),
                };
                Plan::Incremental(map?)
            }
        }
    };
    Ok(plan)
}

/// A wyng snapshot found on the local filesystem: `sn<uuid>_<vid>.wyng1|2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundSnapshot {
    pub path: PathBuf,
    pub uuid: String,
    pub vid: String,
}

/// Parses a snapshot file name (format §14.5).
pub(crate) fn parse_snapshot_name(name: &str) -> Option<(String, String)> {
    let stem = name
        .strip_suffix(".wyng1")
        .or_else(|| name.strip_suffix(".wyng2"))?;
    let rest = stem.strip_prefix("sn")?;
    let (uuid, vid) = rest.split_at_checked(36)?;
    let vid = vid.strip_prefix('_')?;
    let uuid_ok = uuid
        .bytes()
        .enumerate()
        .all(|(i, b)| matches!(i, 8 | 13 | 18 | 23) && b == b'-' || b.is_ascii_hexdigit());
    (uuid_ok && crate::format::VolumeId::parse(vid).is_some())
        .then(|| (uuid.to_string(), vid.to_string()))
}

/// Every wyng snapshot under `dir` (not following symlinks, not entering the freeze snapshot).
pub(crate) fn find_snapshots(dir: &Path) -> Vec<FoundSnapshot> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            if ft.is_dir() && name != FREEZE_NAME {
                stack.push(e.path());
            } else if ft.is_file() {
                if let Some((uuid, vid)) = parse_snapshot_name(&name) {
                    out.push(FoundSnapshot {
                        path: e.path(),
                        uuid,
                        vid,
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

const FS_NOCOW_FL: libc::c_long = 0x0080_0000;
nix::ioctl_read!(fs_ioc_getflags, b'f', 1, libc::c_long);

/// Whether a file is NOCOW (`chattr +C`): written in place, so extent maps cannot show change.
pub(crate) fn is_nocow(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long into `flags`.
    match unsafe { fs_ioc_getflags(f.as_raw_fd(), &mut flags) } {
        Ok(_) => flags & FS_NOCOW_FL != 0,
        Err(_) => false,
    }
}

/// Whether the live volume still maps exactly as its baseline: every block shared, same size.
/// The baseline's map is read before and after the volume's, so an extent relocated meanwhile
/// (which could make different data look placed alike) shows as a difference. A write racing
/// this check is simply found by the next one: nothing moves when it says "unchanged".
pub(crate) fn unchanged_since(snap1: &Path, file: &Path) -> bool {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
    let (Some(a), Some(b)) = (size(snap1), size(file)) else {
        return false;
    };
    if a != b {
        return false;
    }
    match (extents(snap1), extents(file), extents(snap1)) {
        (Ok(before), Ok(live), Ok(after)) => {
            before == after && changed_chunks(&before, &live, a, b, 1 << 16).is_empty()
        }
        _ => false,
    }
}

/// What the change scan compares for one volume.
#[derive(Clone)]
pub(crate) struct DeltaJob {
    pub snap1: PathBuf,
    pub snap2: PathBuf,
}

/// Name of the read-only subvolume snapshot that freezes a Btrfs `--local` during a scan.
pub(crate) const FREEZE_NAME: &str = "wyng_snapshot_tmp";

/// Chunk indices changed between each job's snapshots, read from one consistent moment of the
/// filesystem's block layout (see the module invariants), with the new snapshot's size.
pub(crate) fn deltas(
    store: &ReflinkStore,
    jobs: &[DeltaJob],
    chunksize: u64,
) -> Result<Vec<(ChunkRanges, u64)>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let delays = [3u64, 6, 12];
    for attempt in 0..=delays.len() {
        if let Some(maps) = consistent_maps(store, jobs)? {
            return Ok(maps
                .into_iter()
                .map(|(old, new, old_size, new_size)| {
                    (
                        changed_chunks(&old, &new, old_size, new_size, chunksize),
                        new_size,
                    )
                })
                .collect());
        }
        if let Some(d) = delays.get(attempt) {
            tracing::warn!(
                "the filesystem's block layout moved during the scan; retrying in {d} s"
            );
            std::thread::sleep(std::time::Duration::from_secs(*d));
        }
    }
    Err(Error::local(
        &store.dir,
        "the filesystem's block layout kept moving during the change scan (a balance or \
         defragmentation?); try again when it is done",
    ))
}

type Maps = (Vec<Extent>, Vec<Extent>, u64, u64);

/// One attempt: the extent maps of every job, or `None` if they may not be consistent.
fn consistent_maps(store: &ReflinkStore, jobs: &[DeltaJob]) -> Result<Option<Vec<Maps>>> {
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|e| Error::local_io(p, "", e))
    };
    let read_all = |root: Option<&Path>| -> Result<Vec<Maps>> {
        jobs.iter()
            .map(|j| {
                let at = |p: &Path| match root {
                    Some(r) => p
                        .strip_prefix(&store.dir)
                        .map(|rel| r.join(rel))
                        .ok()
                        .filter(|q| q.exists())
                        .unwrap_or_else(|| p.to_path_buf()),
                    None => p.to_path_buf(),
                };
                Ok((
                    extents(&at(&j.snap1))?,
                    extents(&at(&j.snap2))?,
                    size(&j.snap1)?,
                    size(&j.snap2)?,
                ))
            })
            .collect()
    };
    match store.freeze()? {
        Some(freeze) => {
            let maps = read_all(Some(&freeze.path));
            let stable = freeze.stable();
            freeze.release();
            let maps = maps?;
            Ok(stable.then_some(maps))
        }
        None => {
            let first = read_all(None)?;
            let again = read_all(None)?;
            Ok((first == again).then_some(first))
        }
    }
}

/// A read-only subvolume snapshot of a Btrfs `--local` held during a change scan.
pub(crate) struct Freeze {
    pub path: PathBuf,
    generation: u64,
    fs_uuid: Option<String>,
}

impl Freeze {
    /// Whether nothing relocated extents while the freeze was held.
    fn stable(&self) -> bool {
        let gen = subvolume_generation(&self.path);
        let busy = exclusive_operation(self.fs_uuid.as_deref()).is_some();
        tracing::debug!(
            "freeze generation {} -> {gen:?}, busy: {busy}",
            self.generation
        );
        gen.ok() == Some(self.generation) && !busy
    }

    fn release(self) {
        delete_subvolume(&self.path);
    }
}

fn btrfs(args: &[&std::ffi::OsStr]) -> std::io::Result<String> {
    let out = std::process::Command::new("btrfs")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn subvolume_generation(path: &Path) -> std::io::Result<u64> {
    let out = btrfs(&["subvolume".as_ref(), "show".as_ref(), path.as_os_str()])?;
    parse_generation(&out).ok_or_else(|| std::io::Error::other("no generation in output"))
}

/// The `Generation:` line of `btrfs subvolume show`.
fn parse_generation(out: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(':')?;
        (k.trim() == "Generation").then(|| v.trim().parse().ok())?
    })
}

fn delete_subvolume(path: &Path) {
    if let Err(e) = btrfs(&["subvolume".as_ref(), "delete".as_ref(), path.as_os_str()]) {
        tracing::warn!("could not delete {}: {e}", path.display());
    }
}

/// The exclusive operation (balance, device replace, ...) running on a Btrfs filesystem, from
/// sysfs; `None` when idle or unknown.
fn exclusive_operation(fs_uuid: Option<&str>) -> Option<String> {
    let p = format!("/sys/fs/btrfs/{}/exclusive_operation", fs_uuid?);
    let op = std::fs::read_to_string(p).ok()?;
    let op = op.trim();
    (op != "none" && !op.is_empty()).then(|| op.to_string())
}

/// The UUID of the filesystem holding `dir` (for its sysfs directory).
fn fs_uuid(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("findmnt")
        .args(["-n", "-o", "UUID", "--target"])
        .arg(dir)
        .output()
        .ok()?;
    let u = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !u.is_empty()).then_some(u)
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
    let f = File::open(path).map_err(|e| Error::local_io(path, "", e))?;
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
) -> ChunkRanges {
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
    let mut marked = ChunkRanges::default();
    let mut mark = |from: u64, to: u64| {
        if to <= from || n == 0 {
            return;
        }
        let first = from / chunksize;
        if first < n {
            marked.add(first, ((to - 1) / chunksize).min(n - 1) + 1);
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
        assert_eq!(
            changed_chunks(&old, &new, 500, 500, cs)
                .chunks()
                .collect::<Vec<_>>(),
            vec![1]
        );
        // The same mapping reported in other pieces (as Btrfs does) is no change.
        let pieces = vec![e(0, 1000, 50), e(50, 1050, 250), e(300, 5000, 200)];
        assert!(changed_chunks(&old, &pieces, 500, 500, cs).is_empty());
        // A punched hole: the extent disappears.
        let new = vec![e(0, 1000, 300)];
        assert_eq!(
            changed_chunks(&old, &new, 500, 500, cs)
                .chunks()
                .collect::<Vec<_>>(),
            vec![3, 4]
        );
        // Growth: the old partial last chunk and the new area.
        assert_eq!(
            changed_chunks(&old, &old, 450, 650, cs)
                .chunks()
                .collect::<Vec<_>>(),
            vec![4, 5, 6]
        );
        // Sharing flags alone do not count; unplaced extents always do.
        let mut shared = old.clone();
        shared[0].flags = FIEMAP_EXTENT_SHARED | FIEMAP_EXTENT_LAST;
        assert!(changed_chunks(&old, &shared, 500, 500, cs).is_empty());
        let mut inline = old.clone();
        inline[1].flags = FIEMAP_EXTENT_DATA_INLINE;
        assert_eq!(
            changed_chunks(&inline, &inline, 500, 500, cs)
                .chunks()
                .collect::<Vec<_>>(),
            vec![3, 4]
        );
    }

    #[test]
    fn generation_from_subvolume_show() {
        let out = "wyng_snapshot_tmp\n\tName: \t\t\twyng_snapshot_tmp\n\tUUID: \t\t\t1b2c\n\tGeneration: \t\t42\n\tGen at creation: \t41\n";
        assert_eq!(parse_generation(out), Some(42));
        assert_eq!(parse_generation("Name: x\n"), None);
    }

    #[test]
    fn snapshot_names() {
        let u = "0b5e4f3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(
            parse_snapshot_name(&format!("sn{u}_Vol_1a2b3c.wyng1")),
            Some((u.to_string(), "Vol_1a2b3c".to_string()))
        );
        assert!(parse_snapshot_name(&format!("sn{u}_Vol_1a2b3c.wyng3")).is_none());
        assert!(parse_snapshot_name("snxyz_Vol_1a2b3c.wyng1").is_none());
        assert!(parse_snapshot_name(&format!("sn{u}_../x.wyng1")).is_none());
    }
}
