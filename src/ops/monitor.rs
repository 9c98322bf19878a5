//! `monitor`: harvest what changed since the last snapshot into each volume's delta map and
//! rotate snapshots, without touching the archive (behaviour §7.2). Run from cron between sends
//! so copy-on-write snapshots never hold much old data; the next send reads only the chunks
//! recorded.
//!
//! Invariant: a map is only ever grown here (see `VolumeSnaps::rotate_with` for the crash
//! order), so whatever happens, a send after a monitor misses no change.

use crate::archive::Archive;
use crate::error::Result;
use crate::ops::VolumeRef;
use crate::source::reflink::PrepareVolume;
use crate::source::{LocalStorage, Plan};

#[derive(Debug, serde::Serialize)]
pub struct MonitorReport {
    pub volume: String,
    /// `rotated`, `no change` or `skipped` (no paired snapshot, NOCOW or missing).
    pub state: &'static str,
    /// Chunks found changed since the previous snapshot.
    pub changed_chunks: u64,
    /// Chunks recorded in the delta map since the newest session.
    pub recorded_chunks: u64,
}

pub fn run(
    archive: &Archive,
    store: &LocalStorage,
    volumes: &[VolumeRef],
) -> Result<Vec<MonitorReport>> {
    let mut vols = Vec::new();
    for v in volumes {
        let vol = archive.find(&v.archive)?;
        vols.push(PrepareVolume {
            name: &v.archive,
            file: store.volume_path(&v.local)?,
            vid: vol.vid.to_string(),
            last: vol.last(),
            snapshot_of: None,
        });
    }
    let cs = archive.chunksize();
    let prepared = store.prepare(&vols, archive.uuid(), archive.local_dir(), cs, true)?;
    let mut reports = Vec::new();
    let mut result = Ok(());
    for (v, p) in vols.iter().zip(&prepared) {
        let mut report = MonitorReport {
            volume: v.name.to_string(),
            state: "skipped",
            changed_chunks: p.found,
            recorded_chunks: 0,
        };
        if let (Plan::Incremental(map), Some(last), true) = (&p.plan, v.last, result.is_ok()) {
            report.recorded_chunks = map.chunks(u64::MAX).len() as u64;
            if p.found == 0 {
                p.snaps.drop_snap2();
                report.state = "no change";
            } else if let Err(e) = p.snaps.rotate_with(last, map) {
                p.snaps.drop_snap2();
                result = Err(e);
            } else {
                report.state = "rotated";
            }
        } else {
            p.snaps.drop_snap2();
        }
        reports.push(report);
    }
    result.map(|()| reports)
}
