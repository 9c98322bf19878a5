//! `delete --clean`: remove wyng's snapshots from local storage (behaviour §7.7), and the
//! snapshots of a deleted volume.
//!
//! Only this archive's snapshots of volumes it no longer holds are removed by default; a
//! snapshot of a current volume is its baseline, and removing it costs the next send a full
//! scan, so that takes `--purge=full` (or `--all`). Delta maps are removed with the snapshots
//! they pair with, so nothing stale can pair again.

use std::path::{Path, PathBuf};

use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::source::reflink::{self, FoundSnapshot};
use crate::source::{deltamap, LocalStorage};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purge {
    /// This archive's snapshots of volumes it no longer has.
    Orphans,
    /// ... and other archives' snapshots.
    Other,
    /// ... and all of this archive's snapshots.
    Full,
    /// Every wyng snapshot and this archive's delta maps.
    All,
}

/// The snapshots a clean would remove.
pub fn select(archive: &Archive, local: &Path, purge: Purge) -> Vec<FoundSnapshot> {
    let ours = archive.uuid();
    // Damaged volumes are still the archive's: their snapshots are not orphans.
    let current: std::collections::HashSet<String> = archive
        .volumes()
        .iter()
        .map(|v| v.vid.to_string())
        .chain(archive.damaged().iter().map(|d| d.vid.to_string()))
        .collect();
    reflink::find_snapshots(local)
        .into_iter()
        .filter(|s| match purge {
            Purge::All => true,
            Purge::Full => s.uuid == ours,
            Purge::Other => s.uuid != ours || !current.contains(&s.vid),
            Purge::Orphans => s.uuid == ours && !current.contains(&s.vid),
        })
        .collect()
}

/// Removes the selected snapshots (and, for this archive's, their volumes' delta maps).
pub fn remove(archive: &Archive, snaps: &[FoundSnapshot], purge: Purge) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for s in snaps {
        std::fs::remove_file(&s.path).map_err(|e| Error::local_io(&s.path, "", e))?;
        if s.uuid == archive.uuid() {
            forget_maps(archive, &s.vid);
        }
        removed.push(s.path.clone());
    }
    if purge == Purge::All {
        for v in archive.volumes() {
            forget_maps(archive, v.vid.as_str());
        }
    }
    Ok(removed)
}

/// After `delete NAME --local=DIR`: that volume's snapshots and maps.
pub fn remove_volume(archive: &Archive, local: &Path, vid: &str) -> Result<Vec<PathBuf>> {
    let snaps: Vec<FoundSnapshot> = reflink::find_snapshots(local)
        .into_iter()
        .filter(|s| s.uuid == archive.uuid() && s.vid == vid)
        .collect();
    let removed = remove(archive, &snaps, Purge::Full)?;
    forget_maps(archive, vid);
    Ok(removed)
}

/// wyng's snapshots (and ZFS bookmarks) in an LVM thin pool or under a ZFS dataset, as
/// [`select`] picks them: `path` is the snapshot's name there, `vid` the archive's id of the
/// volume it belongs to (empty if the archive has no volume of that name).
pub fn select_block(
    archive: &Archive,
    store: &LocalStorage,
    purge: Purge,
) -> Result<Vec<FoundSnapshot>> {
    let found: Vec<(String, String, String)> = match store {
        LocalStorage::Reflink(_) => Vec::new(),
        LocalStorage::Thin(t) => t
            .wyng_snapshots()?
            .into_iter()
            .map(|(n, u, v)| (n, u.unwrap_or_default(), v))
            .collect(),
        LocalStorage::Zfs(z) => z
            .wyng_marks(None)?
            .into_iter()
            .filter_map(|m| {
                let (zvol, tail) = m.name.split_once('@').or_else(|| m.name.split_once('#'))?;
                let uuid = tail.strip_prefix("wyng_")?.rsplit_once('_')?.0.to_string();
                let vol = zvol.strip_prefix(&format!("{}/", z.dataset))?.to_string();
                Some((m.name.clone(), uuid, vol))
            })
            .collect(),
    };
    let ours = archive.uuid();
    Ok(found
        .into_iter()
        .map(|(name, uuid, vol)| FoundSnapshot {
            path: PathBuf::from(name),
            vid: archive
                .volume(&vol)
                .map(|v| v.vid.to_string())
                .unwrap_or_default(),
            uuid,
        })
        .filter(|s| match purge {
            Purge::All => true,
            Purge::Full => s.uuid == ours,
            Purge::Other => s.uuid != ours || s.vid.is_empty(),
            Purge::Orphans => s.uuid == ours && s.vid.is_empty(),
        })
        .collect())
}

/// Removes what [`select_block`] picked (and this archive's delta maps of those volumes).
pub fn remove_block(
    archive: &Archive,
    store: &LocalStorage,
    snaps: &[FoundSnapshot],
    purge: Purge,
) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for s in snaps {
        let name = s.path.to_string_lossy();
        match store {
            LocalStorage::Reflink(_) => continue,
            LocalStorage::Thin(t) => t.remove(&name)?,
            LocalStorage::Zfs(z) => z.remove_mark(&name)?,
        }
        if s.uuid == archive.uuid() && !s.vid.is_empty() {
            forget_maps(archive, &s.vid);
        }
        removed.push(s.path.clone());
    }
    if purge == Purge::All {
        for v in archive.volumes() {
            forget_maps(archive, v.vid.as_str());
        }
    }
    Ok(removed)
}

fn forget_maps(archive: &Archive, vid: &str) {
    if let Some(c) = archive.local_dir() {
        deltamap::remove_others(&c.join(vid), None);
    }
}
