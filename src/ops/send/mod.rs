//! `send`: back up volumes into new sessions.
//!
//! The pipeline streams, uses every core, and costs what changed, not the volume's size. It is
//! one stage per file, over the order-preserving parallel map [`crate::parallel::ordered_map`]:
//! * [`plan`]: per target archive, the volumes it gets, its dedup index, the snapshots taken in
//!   local storage, autoprune, and how it scans each volume;
//! * [`lanes`]: per archive and volume, a *lane*: its previous view, its staging session;
//! * [`walk`]: the source in address order, handing out only what must be looked at: data
//!   chunks (the chunks a copy-on-write map marks, or every chunk holding data in a full scan)
//!   and *ranges* of holes, which are zeros without being read;
//! * [`examine`]: on one worker per core, the zero test, the raw digest compared with the
//!   previous send's, compression, hashing, the comparison with the previous merged view, and
//!   storing or linking what changed;
//! * [`collect`]: on this thread, in address order, the walk of the previous merged view (a
//!   compact index of its data entries) in step, producing the new session's manifest lines,
//!   its merged view (the index the next command uses) with its `mfcs`, and the next digest map;
//! * [`finish`]: the commit, the digest map kept, local storage's baseline moved.
//!
//! [`volume`] runs the walk, the workers and the collector for one volume.
//!
//! Work per chunk slot is only what the format forces (every address listed in a volume's
//! first session; `mfcs` over the whole merged view), at a few nanoseconds per slot for runs
//! of zeros. The map's window bounds the chunks in flight, so memory is a few chunks per core.
//!
//! Several archives ([`run_multi`], `send --dest=A --dest=B`; [`Destinations`] is the whole run
//! around it: opening, autoprune, retention, what each destination misses): each volume's
//! snapshot is taken once (the other archives' `.wyng2` are reflink copies of the first, the
//! same instant), each chunk any archive needs is read and digested once, and each archive
//! ("lane") compares, compresses and stores it with its own pairing, view and keys. A lane that
//! fails (its destination unreachable or full) drops out; the others finish. Chunk sizes must
//! match to share a read: archives of other chunk sizes get their own pass.
//!
//! Resume: every few seconds (and every [`Archive::checkpoint_bytes`] stored) a lane makes what it
//! staged durable and records it ([`crate::archive::resume`]); a later send of the volume
//! takes recorded chunks whose hash it reads again instead of storing them.

mod collect;
mod destinations;
mod examine;
mod finish;
mod lanes;
mod plan;
#[cfg(test)]
mod tests;
mod volume;
mod walk;

use std::path::PathBuf;

use crate::archive::{Archive, WriteArchive};
use crate::error::{Error, Result};
use crate::format::{Session, SessionName, Tag};
use crate::source::{LocalStorage, Source};

pub use destinations::{DestinationReport, Destinations, FinishOptions, SendReport};
use lanes::VolTarget;
use plan::TargetRun;

pub struct SendRequest {
    pub volume: String,
    /// The volume's file or block device.
    pub source: PathBuf,
    /// In local storage (`--local`): send from a snapshot, incrementally when paired.
    pub reflink: bool,
}

#[derive(Default)]
pub struct SendOptions {
    /// Record a session even when nothing changed.
    pub send_unchanged: bool,
    pub tags: Vec<Tag>,
    /// Description for volumes this send creates.
    pub volume_desc: String,
    /// Hard-link chunks the archive already holds instead of storing them again.
    pub dedup: bool,
    /// Compute and report what would be sent; write nothing (snapshots are not rotated).
    pub dry_run: bool,
    /// The local storage (`--local`) holding the volumes of requests marked `reflink`.
    pub local: Option<LocalStorage>,
    /// The session name, when several runs over different local storages share one (see
    /// [`session_name`]); by default the current time.
    pub session: Option<SessionName>,
    /// `--autoprune=on`: before sending a volume whose change exceeds the destination's free
    /// space, thin its old sessions by this calendar ([`crate::ops::prune::make_room`]).
    pub autoprune_on: Option<crate::ops::autoprune::Calendar>,
    /// Stored bytes between checkpoints for a resume (`None`: each archive's
    /// [`Archive::checkpoint_bytes`]).
    pub checkpoint_bytes: Option<u64>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct VolumeReport {
    pub volume: String,
    /// `None` when nothing changed and no session was recorded.
    pub session: Option<String>,
    pub volsize: u64,
    /// Whether this was the volume's first session.
    pub first: bool,
    pub chunks_read: u64,
    /// Chunks whose content differs from the newest session (data stored or linked, or
    /// chunks that became zero).
    pub chunks_changed: u64,
    /// Of those, chunks that hold data.
    pub chunks_data: u64,
    /// Of those, chunks that are (or became) all zero: no file, one manifest line each.
    pub chunks_zero: u64,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    /// Changed chunks stored as hard links to identical chunks already in the archive.
    pub chunks_linked: u64,
    /// Sessions of this volume that `--autoprune=on` removed to make room for this send.
    pub autopruned: Vec<String>,
    /// Sessions that `send --keep-*` (retention) removed after this send committed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retention_removed: Vec<String>,
    /// Changed chunks taken from what an interrupted send had staged, not sent again.
    pub chunks_reused: u64,
    /// Their compressed size: bytes this send did not have to send.
    pub bytes_reused: u64,
}

/// One archive a send writes to.
pub struct Target<'a> {
    pub archive: &'a mut WriteArchive,
    /// The requests (by volume name) this archive gets; `None`: all of them.
    pub volumes: Option<Vec<String>>,
}

/// What a send did in one archive.
#[derive(Default)]
pub(crate) struct TargetResult {
    pub reports: Vec<VolumeReport>,
    /// The error that stopped this archive, and the volumes it did not get.
    pub failed: Option<(Error, Vec<String>)>,
}

/// The most archives one send writes to.
pub(crate) const MAX_TARGETS: usize = 16;

/// Sends to one archive; the first error stops it (see [`run_multi`]).
pub fn run(
    wa: &mut WriteArchive,
    reqs: &[SendRequest],
    opts: &SendOptions,
) -> Result<Vec<VolumeReport>> {
    let mut t = [Target {
        archive: wa,
        volumes: None,
    }];
    let r = run_multi(&mut t, reqs, opts)?.pop().expect("one target");
    match r.failed {
        Some((e, _)) => Err(e),
        None => Ok(r.reports),
    }
}

/// Sends the requests to every target archive, each volume read once for all of them. An
/// `Err` is a problem with the request itself (nothing written); a target that fails later
/// is reported in its [`TargetResult`] with the volumes it did not get, and the others go on.
pub(crate) fn run_multi(
    targets: &mut [Target],
    reqs: &[SendRequest],
    opts: &SendOptions,
) -> Result<Vec<TargetResult>> {
    let sources = check_request(targets, reqs, opts)?;
    let name = match &opts.session {
        Some(n) => n.clone(),
        None => {
            let archives: Vec<&Archive> = targets.iter().map(|t| &**t.archive).collect();
            session_name(&archives, reqs.iter().map(|r| r.volume.as_str()))?
        }
    };
    let mut runs: Vec<TargetRun> = targets
        .iter_mut()
        .map(|t| TargetRun::new(t, reqs, opts))
        .collect();
    if let Some(store) = &opts.local {
        plan::snapshot_local(&mut runs, reqs, store);
    }
    for (ri, (req, src)) in reqs.iter().zip(&sources).enumerate() {
        send_request(&mut runs, ri, req, src, &name, opts);
    }
    // Snapshots taken for volumes that were not sent (their archive failed) are dropped.
    for run in &mut runs {
        for (ri, req) in reqs.iter().enumerate() {
            if let Some(prep) = run.vols[ri].as_mut().and_then(|v| v.prepared.take()) {
                prep.snaps.drop_snap2();
            }
            let sent = run.result.reports.iter().any(|r| r.volume == req.volume);
            let wanted = run.wants(req);
            if let (Some((_, missing)), true, false) = (&mut run.result.failed, wanted, sent) {
                missing.push(req.volume.clone());
            }
        }
    }
    Ok(runs.into_iter().map(|r| r.result).collect())
}

/// Checks what can be checked before anything is written, and opens every source (so a typo
/// fails first).
fn check_request(
    targets: &[Target],
    reqs: &[SendRequest],
    opts: &SendOptions,
) -> Result<Vec<Source>> {
    if targets.len() > MAX_TARGETS {
        return Err(Error::Usage(format!(
            "a send writes to at most {MAX_TARGETS} archives"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for r in reqs {
        if !seen.insert(&r.volume) {
            return Err(Error::VolumeNamedTwice(r.volume.clone()));
        }
    }
    let sources = reqs
        .iter()
        .map(|r| Source::open(&r.source))
        .collect::<Result<Vec<_>>>()?;
    if let (Some(LocalStorage::Thin(t)), true) = (&opts.local, targets.len() > 1) {
        return Err(Error::Unsupported(format!(
            "a send to several archives from an LVM thin pool ({}/{}): not supported yet; send to each archive in turn",
            t.vg, t.pool
        )));
    }
    if let (Some(LocalStorage::Zfs(z)), true) = (&opts.local, targets.len() > 1) {
        return Err(Error::Unsupported(format!(
            "a send to several archives from ZFS (zfs:{}): not supported yet; send to each archive in turn",
            z.dataset
        )));
    }
    if reqs.iter().any(|r| r.reflink) && targets.iter().any(|t| t.archive.local_dir().is_none()) {
        tracing::warn!(
            "no local state: snapshot pairing cannot be recorded, every send is a full scan"
        );
    }
    Ok(sources)
}

/// Sends request `ri` to every archive still taking it: one pass per chunk size, each volume
/// read once per pass for all of that pass's archives.
fn send_request(
    runs: &mut [TargetRun],
    ri: usize,
    req: &SendRequest,
    src: &Source,
    name: &SessionName,
    opts: &SendOptions,
) {
    for run in runs.iter_mut() {
        run.scan = None;
        run.autopruned.clear();
    }
    plan::autoprune(runs, ri, req, src, opts);
    if !runs.iter().any(|r| r.active(ri)) {
        return;
    }
    // What is read: the first snapshot (all hold the same instant), or the live source.
    let mut snap = plan::plan_scans(runs, ri, req, src);
    let mut sizes: Vec<u64> = runs
        .iter()
        .filter(|r| r.scan.is_some())
        .map(|r| r.archive.chunksize())
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let passes = sizes.len();
    for (pass, cs) in sizes.into_iter().enumerate() {
        let Some((lanes, outcome)) =
            send_pass(runs, ri, req, cs, snap.as_ref().unwrap_or(src), name, opts)
        else {
            continue;
        };
        if pass + 1 == passes {
            // Closed before the snapshot is promoted: ZFS cannot destroy an open one.
            snap = None;
        }
        record(runs, ri, lanes, outcome, opts);
    }
}

/// Which target a lane of a pass belongs to, and the volume's newest session before it.
type PassLane = (usize, Option<Session>);

/// Sends request `ri` into the archives of chunk size `cs` (`None`: none of them takes it).
fn send_pass(
    runs: &mut [TargetRun],
    ri: usize,
    req: &SendRequest,
    cs: u64,
    src: &Source,
    name: &SessionName,
    opts: &SendOptions,
) -> Option<(Vec<PassLane>, Vec<Result<VolumeReport>>)> {
    let mut lanes: Vec<PassLane> = Vec::new();
    let mut targets: Vec<VolTarget> = Vec::new();
    for (t, run) in runs.iter_mut().enumerate() {
        if run.archive.chunksize() != cs || run.result.failed.is_some() {
            continue;
        }
        let Some(scan) = run.scan.take() else {
            continue;
        };
        let vi = run.vols[ri].as_ref().expect("active").vi;
        lanes.push((t, run.archive.volumes()[vi].last().cloned()));
        let index = run
            .index
            .as_ref()
            .filter(|_| !plan::is_metadata(&req.volume));
        targets.push(VolTarget {
            wa: &mut *run.archive,
            vi,
            scan,
            index,
        });
    }
    if targets.is_empty() {
        return None;
    }
    let outcome = match volume::send_volume(targets, src, name, opts) {
        Ok(v) => v,
        // The source failed: every lane fails with it.
        Err(e) => {
            let msg = e.to_string();
            let mut e = Some(e);
            lanes
                .iter()
                .map(|_| {
                    Err(e
                        .take()
                        .unwrap_or_else(|| Error::local(&req.source, msg.clone())))
                })
                .collect()
        }
    };
    Some((lanes, outcome))
}

/// Records what a pass did in each of its archives, moving local storage's baseline.
fn record(
    runs: &mut [TargetRun],
    ri: usize,
    lanes: Vec<PassLane>,
    outcome: Vec<Result<VolumeReport>>,
    opts: &SendOptions,
) {
    for ((t, before), res) in lanes.into_iter().zip(outcome) {
        let run = &mut runs[t];
        let v = run.vols[ri].as_mut().expect("active");
        let (vi, prep) = (v.vi, v.prepared.take());
        let res = res.and_then(|rep| match &prep {
            Some(p) => finish::after_local(run.archive, vi, p, rep, before, opts),
            None => Ok(rep),
        });
        match res {
            Ok(mut rep) => {
                rep.autopruned = std::mem::take(&mut run.autopruned);
                run.result.reports.push(rep);
            }
            Err(e) => {
                if let Some(p) = prep {
                    p.snaps.drop_snap2();
                }
                run.fail(e);
            }
        }
    }
}

/// Whether a target with this volume list gets request `r`.
fn wants(volumes: &Option<Vec<String>>, r: &SendRequest) -> bool {
    volumes.as_ref().is_none_or(|v| v.contains(&r.volume))
}

/// The session name for this run: the local time, shared by all volumes (format §3.3). If a
/// volume already has a session of that name in one of the archives (two sends within a
/// second), wait for the clock.
pub(crate) fn session_name<'a>(
    archives: &[&Archive],
    volumes: impl Iterator<Item = &'a str> + Clone,
) -> Result<SessionName> {
    for _ in 0..3 {
        let name = SessionName::from_time(chrono::Local::now());
        let taken = archives.iter().any(|archive| {
            volumes.clone().any(|v| {
                archive
                    .volume(v)
                    .is_some_and(|v| v.session_index(&name).is_some())
            })
        });
        if !taken {
            return Ok(name);
        }
        std::thread::sleep(std::time::Duration::from_millis(
            1000 - chrono::Local::now().timestamp_subsec_millis().min(999) as u64,
        ));
    }
    Err(Error::Usage(
        "a session with this time's name already exists (is the clock set back?)".into(),
    ))
}
