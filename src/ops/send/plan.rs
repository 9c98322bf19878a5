//! Planning, per target archive: which volumes it gets, its dedup index, the snapshots taken
//! in local storage, room made by `--autoprune=on`, and how it scans each volume.
//!
//! A [`TargetRun`] follows one archive through the whole send. The first error in it stops it
//! (recorded in its [`TargetResult`]); every later step skips it, so the other archives go on.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::archive::dedup::DedupIndex;
use crate::archive::WriteArchive;
use crate::error::{Error, Result};
use crate::format::manifest::chunk_count;
use crate::source::reflink::PrepareVolume;
use crate::source::{LocalStorage, Plan, Prepared, Scan, Source};

use super::{wants, SendOptions, SendRequest, Target, TargetResult};

/// One request's volume in one archive.
pub(super) struct VolPlan {
    /// The volume's index in the archive.
    pub vi: usize,
    /// The snapshots taken in local storage (taken out once used or dropped).
    pub prepared: Option<Prepared>,
}

/// One target archive through the whole send: what was prepared for it and what it did.
pub(super) struct TargetRun<'t> {
    pub archive: &'t mut WriteArchive,
    /// The requests (by volume name) this archive gets; `None`: all of them.
    volumes: &'t Option<Vec<String>>,
    pub index: Option<DedupIndex>,
    /// Per request: the volume in this archive (`None`: not sent to it).
    pub vols: Vec<Option<VolPlan>>,
    /// The volume being sent: how this archive scans it (`None`: not in its send).
    pub scan: Option<Scan>,
    /// The volume being sent: the sessions `--autoprune=on` removed for it.
    pub autopruned: Vec<String>,
    pub result: TargetResult,
}

/// wyng-*metadata volumes never dedup (behaviour §11).
pub(super) fn is_metadata(volume: &str) -> bool {
    crate::format::ids::is_metadata_volume(volume)
}

impl<'t> TargetRun<'t> {
    /// Prepares one archive: its dedup index (when some volume it gets dedups) and its
    /// volumes, created where new. A failure is recorded: the archive gets nothing.
    pub fn new(target: &'t mut Target, reqs: &[SendRequest], opts: &SendOptions) -> Self {
        let mut run = TargetRun {
            archive: &mut *target.archive,
            volumes: &target.volumes,
            index: None,
            vols: reqs.iter().map(|_| None).collect(),
            scan: None,
            autopruned: Vec::new(),
            result: TargetResult::default(),
        };
        if let Err(e) = run.prepare(reqs, opts) {
            run.index = None;
            run.vols.iter_mut().for_each(|v| *v = None);
            run.fail(e);
        }
        run
    }

    fn prepare(&mut self, reqs: &[SendRequest], opts: &SendOptions) -> Result<()> {
        let wa = &mut *self.archive;
        let mine: Vec<bool> = reqs.iter().map(|r| wants(self.volumes, r)).collect();
        if opts.dedup
            && reqs
                .iter()
                .zip(&mine)
                .any(|(r, &m)| m && !is_metadata(&r.volume))
        {
            if !opts.dry_run {
                wa.check_hard_links()?;
            }
            let idx = DedupIndex::build(wa)?;
            tracing::info!("dedup index: {} distinct chunks", idx.len());
            self.index = Some(idx);
        }
        for ((req, &m), v) in reqs.iter().zip(&mine).zip(&mut self.vols) {
            let vi = match (m, wa.volume_index(&req.volume)) {
                (false, _) => continue,
                (true, Some(i)) => i,
                (true, None) => wa.new_volume(&req.volume, &opts.volume_desc)?,
            };
            *v = Some(VolPlan { vi, prepared: None });
        }
        Ok(())
    }

    /// This archive stops here: the error is recorded, the volumes it did not get are listed
    /// at the end.
    pub fn fail(&mut self, e: Error) {
        self.result.failed = Some((e, Vec::new()));
    }

    /// Whether request `ri` is still to be sent to this archive.
    pub(crate) fn active(&self, ri: usize) -> bool {
        self.result.failed.is_none() && self.vols[ri].is_some()
    }

    /// Whether this archive gets request `r` at all.
    pub fn wants(&self, r: &SendRequest) -> bool {
        wants(self.volumes, r)
    }

    fn vi(&self, ri: usize) -> usize {
        self.vols[ri].as_ref().expect("active").vi
    }

    fn prepared(&self, ri: usize) -> Option<&Prepared> {
        self.vols[ri].as_ref().and_then(|v| v.prepared.as_ref())
    }
}

/// Volumes in local storage: snapshots them all and reads what changed in one scan per
/// archive; the first archive's snapshot is what the others' are taken of.
pub(super) fn snapshot_local(runs: &mut [TargetRun], reqs: &[SendRequest], store: &LocalStorage) {
    let mut first: HashMap<usize, PathBuf> = HashMap::new();
    for run in runs.iter_mut().filter(|r| r.result.failed.is_none()) {
        let wa = &*run.archive;
        let list: Vec<usize> = (0..reqs.len())
            .filter(|&ri| reqs[ri].reflink && run.vols[ri].is_some())
            .collect();
        let vols: Vec<PrepareVolume> = list
            .iter()
            .map(|&ri| {
                let v = &wa.volumes()[run.vi(ri)];
                PrepareVolume {
                    name: &reqs[ri].volume,
                    file: reqs[ri].source.clone(),
                    vid: v.vid.to_string(),
                    last: v.last(),
                    snapshot_of: first.get(&ri).cloned(),
                }
            })
            .collect();
        match store.prepare(&vols, wa.uuid(), wa.local_dir(), wa.chunksize(), false) {
            Ok(prepared) => {
                for (ri, p) in list.into_iter().zip(prepared) {
                    if !matches!(p.plan, Plan::Nocow) {
                        first
                            .entry(ri)
                            .or_insert_with(|| p.snaps.snap2_path().into());
                    }
                    run.vols[ri].as_mut().expect("listed").prepared = Some(p);
                }
            }
            Err(e) => run.fail(e),
        }
    }
}

/// `--autoprune=on`: before request `ri` is sent, thins its old sessions in each archive
/// whose free space the change exceeds.
pub(super) fn autoprune(
    runs: &mut [TargetRun],
    ri: usize,
    req: &SendRequest,
    src: &Source,
    opts: &SendOptions,
) {
    let (Some(cal), false) = (opts.autoprune_on, opts.dry_run) else {
        return;
    };
    for run in runs.iter_mut().filter(|r| r.active(ri)) {
        let wa = &mut *run.archive;
        let needed = match run.vols[ri].as_ref().and_then(|v| v.prepared.as_ref()) {
            Some(p) => match &p.plan {
                Plan::Incremental(map) => map.count(u64::MAX) * wa.chunksize(),
                _ => src.size,
            },
            None => src.size,
        };
        let index = &mut run.index;
        let pruned = crate::ops::prune::make_room(wa, &req.volume, needed, cal).and_then(|r| {
            if !r.is_empty() && index.is_some() {
                // Pruning moved chunk files: the index's places are stale.
                *index = Some(DedupIndex::build(wa)?);
            }
            Ok(r)
        });
        match pruned {
            Ok(r) => run.autopruned = r.into_iter().flat_map(|r| r.removed).collect(),
            Err(e) => run.fail(e),
        }
    }
}

/// How each active archive scans request `ri`: in full, or the chunks its copy-on-write maps
/// mark. Returns the snapshot to read, when one was taken (all hold the same instant).
pub(super) fn plan_scans(
    runs: &mut [TargetRun],
    ri: usize,
    req: &SendRequest,
    src: &Source,
) -> Option<Source> {
    let mut snap: Option<Source> = None;
    for run in runs.iter_mut().filter(|r| r.active(ri)) {
        let cs = run.archive.chunksize();
        if !req.reflink {
            run.scan = Some(Scan::Full);
            continue;
        }
        let Some(p) = run.prepared(ri) else {
            run.fail(Error::local(&req.source, "needs --local"));
            continue;
        };
        if !matches!(p.plan, Plan::Nocow) && snap.is_none() {
            match Source::open(p.snaps.snap2_path()) {
                Ok(mut s) => {
                    // The session records the volume's own attributes, not the read-only
                    // snapshot's.
                    s.permissions = src.permissions.clone();
                    snap = Some(s);
                }
                Err(e) => {
                    run.fail(e);
                    continue;
                }
            }
        }
        let size = snap.as_ref().map_or(src.size, |s| s.size);
        let scan = match &p.plan {
            Plan::Incremental(map) => {
                let chunks = map.chunks(chunk_count(size, cs));
                tracing::info!(
                    "{}: {} chunks changed according to the extent maps",
                    req.volume,
                    chunks.len()
                );
                Scan::Chunks(chunks)
            }
            _ => Scan::Full,
        };
        run.scan = Some(scan);
    }
    snap
}
