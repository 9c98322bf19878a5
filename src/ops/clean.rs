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
use crate::source::deltamap;
use crate::source::reflink::{self, FoundSnapshot};

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

impl Purge {
    pub fn parse(all: bool, purge: Option<&str>) -> Result<Purge> {
        match (all, purge) {
            (true, _) => Ok(Purge::All),
            (false, None) => Ok(Purge::Orphans),
            (false, Some("other")) => Ok(Purge::Other),
            (false, Some("full")) => Ok(Purge::Full),
            (false, Some(p)) => Err(Error::Usage(format!(
                "--purge takes other or full, not '{p}'"
            ))),
        }
    }
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
        std::fs::remove_file(&s.path).map_err(|e| Error::local(&s.path, e.to_string()))?;
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

fn forget_maps(archive: &Archive, vid: &str) {
    if let Some(c) = archive.local_dir() {
        deltamap::remove_others(&c.join(vid), None);
    }
}
