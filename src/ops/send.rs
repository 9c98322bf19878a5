//! `send`: back up volumes into new sessions.
//!
//! The pipeline streams, uses every core, and costs what changed, not the volume's size:
//! * a reader thread walks the source in address order and hands out only what must be
//!   looked at: data chunks (the chunks a copy-on-write map marks, or every chunk holding data
//!   in a full scan) and *ranges* of holes, which are zeros without being read;
//! * one worker per core tests for zeros, compares raw digests with the previous send's,
//!   compresses, hashes, compares with the previous merged view and stores or links what
//!   changed;
//! * this thread restores the order and walks the previous merged view (a compact index of
//!   its data entries) in step, producing the new session's manifest lines, its merged view
//!   (the index the next command uses) with its `mfcs`, and the next digest map.
//!
//! Work per chunk slot is only what the format forces (every address listed in a volume's
//! first session; `mfcs` over the whole merged view), at a few nanoseconds per slot for runs
//! of zeros. A token channel bounds the chunks in flight, so memory is a few chunks per core.
//!
//! Several archives ([`run_multi`], `send --dest=A --dest=B`): each volume's snapshot is taken
//! once (the other archives' `.wyng2` are reflink copies of the first, the same instant), each
//! chunk any archive needs is read and digested once, and each archive ("lane") compares,
//! compresses and stores it with its own pairing, view and keys. A lane that fails (its
//! destination unreachable or full) drops out; the others finish. Chunk sizes must match to
//! share a read: archives of other chunk sizes get their own pass.
//!
//! Resume: every few seconds (and every [`Archive::checkpoint_bytes`] stored) a lane makes what it
//! staged durable and records it ([`crate::archive::resume`]); a later send of the volume
//! takes recorded chunks whose hash it reads again instead of storing them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::bounded;

use crate::archive::dedup::DedupIndex;
use crate::archive::digests::{self, Digest, DigestCursor, DigestWriter};
use crate::archive::index::{Builder, MergedIndex, Rec};
use crate::archive::resume::Staged;
use crate::archive::{Archive, NewManifest, SessionWriter, WriteArchive};
use crate::error::{Error, Result};
use crate::format::manifest::{chunk_count, chunk_len, ChunkRef, ManifestLog};
use crate::format::{Hash32, Session, SessionInfo, SessionName, Tag};
use crate::ops::is_all_zero;
use crate::parallel::workers;
use crate::progress::Progress;
use crate::source::deltamap::DeltaMap;
use crate::source::reflink::PrepareVolume;
use crate::source::{LocalStorage, Plan, Prepared, Scan, Source};
use crate::spool::Spool;

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
pub struct TargetResult {
    pub reports: Vec<VolumeReport>,
    /// The error that stopped this archive, and the volumes it did not get.
    pub failed: Option<(Error, Vec<String>)>,
}

/// The most archives one send writes to.
pub const MAX_TARGETS: usize = 16;

/// A lane's checkpoint also falls due this long after the last one (besides every
/// [`Archive::checkpoint_bytes`] stored).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

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

/// Per archive: what the send prepared for it.
struct Prep {
    index: Option<DedupIndex>,
    /// Per request: the volume's index in the archive (`None`: not sent to this archive).
    vis: Vec<Option<usize>>,
    /// Per request: the snapshots taken in local storage (taken out once used or dropped).
    prepared: Vec<Option<Prepared>>,
}

impl Prep {
    /// Nothing prepared for any of `n` requests.
    fn none(n: usize) -> Prep {
        Prep {
            index: None,
            vis: vec![None; n],
            prepared: (0..n).map(|_| None).collect(),
        }
    }
}

/// Sends the requests to every target archive, each volume read once for all of them. An
/// `Err` is a problem with the request itself (nothing written); a target that fails later
/// is reported in its [`TargetResult`] with the volumes it did not get, and the others go on.
pub fn run_multi(
    targets: &mut [Target],
    reqs: &[SendRequest],
    opts: &SendOptions,
) -> Result<Vec<TargetResult>> {
    if targets.len() > MAX_TARGETS {
        return Err(Error::Usage(format!(
            "a send writes to at most {MAX_TARGETS} archives"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for r in reqs {
        if !seen.insert(&r.volume) {
            return Err(Error::Usage(format!(
                "volume '{}' is named twice",
                r.volume
            )));
        }
    }
    // Open every source first, so a typo fails before anything is written.
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
    let name = match &opts.session {
        Some(n) => n.clone(),
        None => {
            let archives: Vec<&Archive> = targets.iter().map(|t| &**t.archive).collect();
            session_name(&archives, reqs.iter().map(|r| r.volume.as_str()))?
        }
    };
    // wyng-*metadata volumes never dedup (behaviour §11): no index for them alone.
    let metadata = |v: &str| crate::format::ids::is_metadata_volume(v);
    let mut results: Vec<TargetResult> = targets.iter().map(|_| TargetResult::default()).collect();
    let mut preps: Vec<Prep> = Vec::new();
    for (t, tg) in targets.iter_mut().enumerate() {
        let prep = (|| -> Result<Prep> {
            let wa = &mut *tg.archive;
            let mine: Vec<bool> = reqs.iter().map(|r| wants(&tg.volumes, r)).collect();
            let index = if opts.dedup
                && reqs
                    .iter()
                    .zip(&mine)
                    .any(|(r, &m)| m && !metadata(&r.volume))
            {
                if !opts.dry_run {
                    wa.check_hard_links()?;
                }
                let idx = DedupIndex::build(wa)?;
                tracing::info!("dedup index: {} distinct chunks", idx.len());
                Some(idx)
            } else {
                None
            };
            let mut vis = Vec::new();
            for (req, &m) in reqs.iter().zip(&mine) {
                vis.push(match (m, wa.volume_index(&req.volume)) {
                    (false, _) => None,
                    (true, Some(i)) => Some(i),
                    (true, None) => Some(wa.new_volume(&req.volume, &opts.volume_desc)?),
                });
            }
            Ok(Prep {
                index,
                vis,
                ..Prep::none(reqs.len())
            })
        })();
        match prep {
            Ok(p) => preps.push(p),
            Err(e) => {
                results[t].failed = Some((e, Vec::new()));
                preps.push(Prep::none(reqs.len()));
            }
        }
    }
    // Volumes in local storage: snapshot them all and read what changed in one scan per
    // archive; the first archive's snapshot is what the others' are taken of.
    if let Some(store) = &opts.local {
        let mut first: HashMap<usize, PathBuf> = HashMap::new();
        for (t, tg) in targets.iter().enumerate() {
            if results[t].failed.is_some() {
                continue;
            }
            let wa = &*tg.archive;
            let list: Vec<usize> = (0..reqs.len())
                .filter(|&ri| reqs[ri].reflink && preps[t].vis[ri].is_some())
                .collect();
            let vols: Vec<PrepareVolume> = list
                .iter()
                .map(|&ri| {
                    let v = &wa.volumes()[preps[t].vis[ri].expect("listed")];
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
                        preps[t].prepared[ri] = Some(p);
                    }
                }
                Err(e) => results[t].failed = Some((e, Vec::new())),
            }
        }
    }
    let k = targets.len();
    for (ri, (req, src)) in reqs.iter().zip(&sources).enumerate() {
        let active = |results: &[TargetResult], preps: &[Prep]| -> Vec<usize> {
            (0..k)
                .filter(|&t| results[t].failed.is_none() && preps[t].vis[ri].is_some())
                .collect()
        };
        let mut autopruned: HashMap<usize, Vec<String>> = HashMap::new();
        if let (Some(cal), false) = (opts.autoprune_on, opts.dry_run) {
            for t in active(&results, &preps) {
                let wa = &mut *targets[t].archive;
                let needed = match preps[t].prepared[ri].as_ref().map(|p| &p.plan) {
                    Some(Plan::Incremental(map)) => map.count(u64::MAX) * wa.chunksize(),
                    _ => src.size,
                };
                let pruned =
                    crate::ops::prune::make_room(wa, &req.volume, needed, cal).and_then(|r| {
                        if !r.is_empty() && preps[t].index.is_some() {
                            // Pruning moved chunk files: the index's places are stale.
                            preps[t].index = Some(DedupIndex::build(wa)?);
                        }
                        Ok(r)
                    });
                match pruned {
                    Ok(r) => {
                        autopruned.insert(t, r.into_iter().flat_map(|r| r.removed).collect());
                    }
                    Err(e) => results[t].failed = Some((e, Vec::new())),
                }
            }
        }
        let lanes_of = active(&results, &preps);
        if lanes_of.is_empty() {
            continue;
        }
        // What is read: the first snapshot (all hold the same instant), or the live source.
        let mut snap: Option<Source> = None;
        // Per target: how it scans this volume (`None`: not in this volume's send).
        let mut scans: Vec<Option<Scan>> = (0..k).map(|_| None).collect();
        for &t in &lanes_of {
            let cs = targets[t].archive.chunksize();
            if !req.reflink {
                scans[t] = Some(Scan::Full);
                continue;
            }
            let Some(p) = &preps[t].prepared[ri] else {
                results[t].failed = Some((Error::local(&req.source, "needs --local"), Vec::new()));
                continue;
            };
            if !matches!(p.plan, Plan::Nocow) && snap.is_none() {
                match Source::open(p.snaps.snap2_path()) {
                    Ok(mut s) => {
                        // The session records the volume's own attributes, not the
                        // read-only snapshot's.
                        s.permissions = src.permissions.clone();
                        snap = Some(s);
                    }
                    Err(e) => {
                        results[t].failed = Some((e, Vec::new()));
                        continue;
                    }
                }
            }
            let size = snap.as_ref().map_or(src.size, |s| s.size);
            scans[t] = Some(match &p.plan {
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
            });
        }
        // One pass per chunk size.
        let mut sizes: Vec<u64> = (0..k)
            .filter(|&t| scans[t].is_some())
            .map(|t| targets[t].archive.chunksize())
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        let passes = sizes.len();
        for (pass, cs) in sizes.into_iter().enumerate() {
            let mut lanes: Vec<VolTarget> = Vec::new();
            let mut last_before = Vec::new();
            for (t, tg) in targets.iter_mut().enumerate() {
                if tg.archive.chunksize() != cs || results[t].failed.is_some() {
                    continue;
                }
                let Some(scan) = scans[t].take() else {
                    continue;
                };
                let vi = preps[t].vis[ri].expect("active");
                last_before.push(tg.archive.volumes()[vi].last().cloned());
                let index = preps[t].index.as_ref().filter(|_| !metadata(&req.volume));
                lanes.push(VolTarget {
                    t,
                    wa: &mut *tg.archive,
                    vi,
                    scan,
                    index,
                });
            }
            if lanes.is_empty() {
                continue;
            }
            let ts: Vec<usize> = lanes.iter().map(|l| l.t).collect();
            let outcome = send_volume(lanes, snap.as_ref().unwrap_or(src), &name, opts);
            if pass + 1 == passes {
                // Closed before the snapshot is promoted: ZFS cannot destroy an open one.
                snap = None;
            }
            let outcome = match outcome {
                Ok(v) => v,
                // The source failed: every lane fails with it.
                Err(e) => {
                    let msg = e.to_string();
                    let mut e = Some(e);
                    ts.iter()
                        .map(|_| {
                            Err(e
                                .take()
                                .unwrap_or_else(|| Error::local(&req.source, msg.clone())))
                        })
                        .collect()
                }
            };
            for ((t, res), before) in ts.into_iter().zip(outcome).zip(last_before) {
                let prep = preps[t].prepared[ri].take();
                let vi = preps[t].vis[ri].expect("active");
                let res = res.and_then(|rep| match &prep {
                    Some(p) => after_local(targets[t].archive, vi, p, rep, before, opts),
                    None => Ok(rep),
                });
                match res {
                    Ok(mut rep) => {
                        rep.autopruned = autopruned.remove(&t).unwrap_or_default();
                        results[t].reports.push(rep);
                    }
                    Err(e) => {
                        if let Some(p) = prep {
                            p.snaps.drop_snap2();
                        }
                        results[t].failed = Some((e, Vec::new()));
                    }
                }
            }
        }
    }
    // Snapshots taken for volumes that were not sent (their archive failed) are dropped.
    for (t, p) in preps.iter_mut().enumerate() {
        for (ri, prep) in p.prepared.iter_mut().enumerate() {
            if let Some(prep) = prep.take() {
                prep.snaps.drop_snap2();
            }
            let sent = results[t]
                .reports
                .iter()
                .any(|r| r.volume == reqs[ri].volume);
            let wanted = wants(&targets[t].volumes, &reqs[ri]);
            if let (Some((_, missing)), true, false) = (&mut results[t].failed, wanted, sent) {
                missing.push(reqs[ri].volume.clone());
            }
        }
    }
    Ok(results)
}

/// Whether a target with this volume list gets request `r`.
fn wants(volumes: &Option<Vec<String>>, r: &SendRequest) -> bool {
    volumes.as_ref().is_none_or(|v| v.contains(&r.volume))
}

/// After a volume of local storage was sent from its `.wyng2` snapshot as planned by
/// [`LocalStorage::prepare`], moves the baseline (behaviour §7.1 step 7): after a new session
/// `.wyng2` becomes the paired baseline with a blank map; when nothing changed it becomes the
/// baseline all the same (it holds what the newest session holds); a dry run keeps the
/// changes it found in the map, as monitor does.
fn after_local(
    wa: &mut WriteArchive,
    vi: usize,
    prep: &Prepared,
    report: VolumeReport,
    last_before: Option<Session>,
    opts: &SendOptions,
) -> Result<VolumeReport> {
    if matches!(prep.plan, Plan::Nocow) {
        return Ok(report);
    }
    let cs = wa.chunksize();
    let snaps = &prep.snaps;
    let last = wa.volumes()[vi].last().cloned();
    match (&report.session, &last, &last_before) {
        (Some(_), Some(l), _) => snaps.rotate_after_send(l, cs)?,
        // A dry run: keep what was found, as monitor does.
        (None, _, Some(l)) if opts.dry_run => match &prep.plan {
            Plan::Incremental(map) => snaps.rotate_with(l, map)?,
            _ => snaps.drop_snap2(),
        },
        // No session: `.wyng2` holds what the newest session holds.
        (None, Some(l), _) => snaps.rotate_with(l, &DeltaMap::blank(l.info.volsize, cs))?,
        _ => snaps.drop_snap2(),
    }
    Ok(report)
}

/// The session name for this run: the local time, shared by all volumes (format §3.3). If a
/// volume already has a session of that name in one of the archives (two sends within a
/// second), wait for the clock.
pub fn session_name<'a>(
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

/// How many marked chunks ahead of the reader the kernel is asked to read.
const READ_AHEAD: usize = 16;

/// One archive's part in a volume's send, as the caller hands it over.
struct VolTarget<'w> {
    /// The target's position in [`run_multi`]'s list.
    t: usize,
    wa: &'w mut WriteArchive,
    vi: usize,
    scan: Scan,
    index: Option<&'w DedupIndex>,
}

/// What the reader found for one lane at a data chunk.
struct LaneJob {
    old: Option<ChunkRef>,
    old_digest: Option<Digest>,
    /// What an interrupted send staged for this chunk.
    staged: Option<Staged>,
}

/// What the reader hands on, in address order.
enum Job {
    /// Whole chunks `from..to` that are holes in the source: zeros, not read, for the lanes
    /// of the mask.
    Holes(u64, u64, u64),
    /// A chunk's raw data, with what each lane that looks at it knows (`None`: it does not).
    Data {
        idx: u64,
        buf: Vec<u8>,
        lanes: Vec<Option<Result<LaneJob>>>,
    },
}

/// What the workers found, per lane.
enum Found {
    Holes(u64, u64, u64),
    Data(Vec<Option<Result<Outcome>>>),
}

/// What a lane made of one data chunk.
enum Outcome {
    /// A full chunk of zeros.
    Zero(u64),
    /// The same data as the previous view holds.
    Same(u64, Digest),
    /// New data, stored (`bytes`), linked, or taken from an interrupted send (`taken`, its
    /// compressed size).
    Changed {
        idx: u64,
        hash: Hash32,
        bytes: u64,
        taken: Option<u64>,
        digest: Digest,
    },
}

/// Where a send's chunks go: a session being staged, or nowhere (a dry run only counts).
enum Writer<'a> {
    Real(SessionWriter<'a>),
    Dry(&'a Archive),
}

impl Writer<'_> {
    fn archive(&self) -> &Archive {
        match self {
            Writer::Real(w) => w.archive(),
            Writer::Dry(a) => a,
        }
    }

    fn session(&self) -> Option<&SessionWriter<'_>> {
        match self {
            Writer::Real(w) => Some(w),
            Writer::Dry(_) => None,
        }
    }
}

/// One archive's state while a volume is sent: shared by the reader, the workers and the
/// collector.
struct Lane<'w> {
    writer: Writer<'w>,
    vi: usize,
    name: String,
    last: Option<Session>,
    old_n: u64,
    /// Chunks the copy-on-write maps mark (`None`: a full scan).
    marks: Option<Vec<u64>>,
    local_vol: Option<PathBuf>,
    index: Option<&'w DedupIndex>,
    linked: AtomicU64,
    failed: AtomicBool,
}

/// The collector's walk of the previous view and what it produces for the new one.
struct Output<'a> {
    cursor: std::iter::Peekable<Box<dyn Iterator<Item = Result<Rec>> + 'a>>,
    old_n: u64,
    /// Every chunk below this has been emitted.
    next: u64,
    /// The new session's own lines (`None`: a dry run).
    manifest: Option<ManifestLog<Spool>>,
    manifest_lines: u64,
    /// The new merged view (`None`: a dry run).
    view: Option<Builder>,
    /// Position of the new session among the view's origins.
    me: u16,
    digests: Option<DigestWriter>,
    /// The previous digest map, for the digests of chunks carried over unchanged.
    old_digests: DigestCursor,
    data: u64,
    zero: u64,
    stored: u64,
    taken: u64,
    taken_bytes: u64,
    /// Staged since the last checkpoint: (address, hash) for the resume record, and the
    /// chunks to take from an interrupted send.
    staged: Vec<Staged>,
    moves: Vec<crate::archive::Move>,
    since_bytes: u64,
    since: std::time::Instant,
    /// Stored bytes between checkpoints.
    every: u64,
}

impl Output<'_> {
    fn line(&mut self, idx: u64, r: &ChunkRef) -> Result<()> {
        self.manifest_lines += 1;
        if let Some(m) = &mut self.manifest {
            m.entry(idx, r)
                .map_err(|e| Error::io("manifest spool", e))?;
        }
        Ok(())
    }

    fn zero_lines(&mut self, from: u64, to: u64) -> Result<()> {
        if to <= from {
            return Ok(());
        }
        self.manifest_lines += to - from;
        if let Some(m) = &mut self.manifest {
            m.zeros(from, to)
                .map_err(|e| Error::io("manifest spool", e))?;
        }
        Ok(())
    }

    fn view(&mut self, idx: u64, hash: Hash32, origin: u16) -> Result<()> {
        if let Some(v) = &mut self.view {
            v.push(idx, hash, origin)?;
        }
        Ok(())
    }

    fn digest(&mut self, idx: u64, d: &Digest) -> Result<()> {
        if let Some(w) = &mut self.digests {
            w.push(idx, d)?;
        }
        Ok(())
    }

    /// The previous view's entry at exactly `idx`, if it holds data there; entries before it
    /// are carried over unchanged.
    fn take_old(&mut self, idx: u64) -> Result<Option<Rec>> {
        self.carry(idx)?;
        match self.cursor.peek() {
            Some(Ok(r)) if r.idx == idx => {
                let r = *r;
                self.cursor.next();
                Ok(Some(r))
            }
            Some(Err(_)) => Err(self.cursor.next().expect("peeked").expect_err("an error")),
            _ => Ok(None),
        }
    }

    /// Carries the previous view over, unchanged, for every chunk below `to`.
    fn carry(&mut self, to: u64) -> Result<()> {
        while let Some(r) = self
            .cursor
            .next_if(|r| r.as_ref().map_or(true, |r| r.idx < to))
        {
            let r = r?;
            if r.idx >= self.next {
                self.view(r.idx, r.hash, r.origin)?;
                let d = self.old_digests.get(r.idx);
                if let Some(d) = d {
                    self.digest(r.idx, &d)?;
                }
            }
        }
        if to > self.old_n.max(self.next) {
            // The reader covers every chunk beyond the previous end.
            return Err(Error::io(
                "send",
                std::io::Error::other(format!(
                    "chunk {} was neither read nor in the previous session",
                    self.old_n.max(self.next)
                )),
            ));
        }
        self.next = self.next.max(to);
        Ok(())
    }

    fn apply(&mut self, o: Outcome) -> Result<()> {
        match o {
            Outcome::Same(idx, d) => {
                let r = self
                    .take_old(idx)?
                    .expect("Same is only found for a chunk the previous view holds");
                self.view(idx, r.hash, r.origin)?;
                self.digest(idx, &d)?;
                self.next = idx + 1;
            }
            Outcome::Changed {
                idx,
                hash,
                bytes,
                taken,
                digest,
            } => {
                self.take_old(idx)?;
                self.line(idx, &ChunkRef::Data(hash))?;
                self.view(idx, hash, self.me)?;
                self.digest(idx, &digest)?;
                self.data += 1;
                self.stored += bytes;
                self.since_bytes += bytes;
                if let Some(t) = taken {
                    self.taken += 1;
                    self.taken_bytes += t;
                }
                if bytes > 0 || taken.is_some() {
                    self.staged.push(Staged {
                        idx,
                        hash,
                        digest,
                        len: taken.unwrap_or(bytes) as u32,
                    });
                }
                self.next = idx + 1;
            }
            Outcome::Zero(idx) => self.zeros(idx, idx + 1)?,
        }
        Ok(())
    }

    /// Chunks `from..to` are zero now: lines for those that were not.
    fn zeros(&mut self, from: u64, to: u64) -> Result<()> {
        self.carry(from)?;
        // Data in the previous view that became zero.
        while let Some(r) = self
            .cursor
            .next_if(|r| r.as_ref().map_or(true, |r| r.idx < to))
        {
            let r = r?;
            self.line(r.idx, &ChunkRef::Zero)?;
            self.zero += 1;
        }
        // Addresses the previous view did not have at all.
        let start = from.max(self.old_n);
        if to > start {
            self.zero_lines(start, to)?;
            self.zero += to - start;
        }
        self.next = to;
        Ok(())
    }
}

impl Output<'_> {
    /// Drops what a failed lane built (its digest map for the next send).
    fn discard(self) {
        if let Some(d) = self.digests {
            d.discard();
        }
    }

    /// Whether this lane's staged chunks should be made durable and recorded now.
    fn due(&self) -> bool {
        self.moves.len() >= 2000
            || (!self.staged.is_empty()
                && (self.since_bytes >= self.every || self.since.elapsed() >= CHECKPOINT_EVERY))
    }

    fn checkpoint(&mut self, w: &SessionWriter) -> Result<()> {
        w.checkpoint(&self.staged, &self.moves)?;
        self.staged.clear();
        self.moves.clear();
        self.since_bytes = 0;
        self.since = std::time::Instant::now();
        Ok(())
    }
}

/// What a lane needs besides the [`Lane`] itself to build its output.
struct Setup {
    /// The previous session's merged view (kept apart from the lane, which its commit
    /// consumes while the output's walk of this view still borrows it).
    old: Option<Arc<MergedIndex>>,
    view: Option<Builder>,
    me: u16,
    spool: Spool,
    digests: Option<DigestWriter>,
}

/// Prepares one archive's lane: its previous view, its staging session, its digest map.
fn setup_lane<'w>(
    vt: VolTarget<'w>,
    src: &Source,
    name: &SessionName,
    dry: bool,
) -> Result<(Lane<'w>, Setup)> {
    let VolTarget {
        wa,
        vi,
        scan,
        index,
        ..
    } = vt;
    let cs = wa.chunksize();
    let vol = wa.volumes()[vi].clone();
    let last: Option<Session> = vol.last().cloned();
    let old = match vol.sessions.len() {
        0 => None,
        n => Some(wa.merged(vi, n - 1)?),
    };
    let old_n = old.as_ref().map_or(0, |o| o.chunks());
    let local_vol = wa.local_volume_dir(&vol.vid);
    tracing::info!(
        "sending {} ({} bytes, {} chunks) as {name} to {}",
        vol.name(),
        src.size,
        chunk_count(src.size, cs),
        wa.url()
    );
    let view = if dry {
        None
    } else {
        Some(wa.next_index_builder(vi, name, src.size)?)
    };
    let spool = wa.spool();
    let writer = if dry {
        Writer::Dry(wa)
    } else {
        Writer::Real(wa.begin_session(vi, name.clone())?)
    };
    let digests = match (&local_vol, dry) {
        (Some(d), false) => match DigestWriter::new(d) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("no digest map for the next send: {e}");
                None
            }
        },
        _ => None,
    };
    let marks = match scan {
        Scan::Full => None,
        Scan::Chunks(v) => Some(v),
    };
    Ok((
        Lane {
            writer,
            vi,
            name: vol.name().to_string(),
            last,
            old_n,
            marks,
            local_vol,
            index,
            linked: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        },
        Setup {
            old,
            view,
            me: vol.sessions.len() as u16,
            spool,
            digests,
        },
    ))
}

/// The reader's own walk for one lane: which chunks it looks at, and its cursors.
struct ReadLane<'a> {
    marks: Option<&'a [u64]>,
    /// The next mark at or after the reader's position.
    pos: usize,
    /// Below this a marked lane looks only at its marks; from it on at every chunk (beyond
    /// the previous end).
    lim: u64,
    digests: DigestCursor,
    staged: Option<crate::archive::resume::ReuseCursor>,
}

impl ReadLane<'_> {
    /// The first chunk at or after `idx` this lane looks at.
    fn next_wanted(&mut self, idx: u64) -> u64 {
        let Some(m) = self.marks else { return idx };
        if idx >= self.lim {
            return idx;
        }
        while self.pos < m.len() && m[self.pos] < idx {
            self.pos += 1;
        }
        m.get(self.pos).copied().unwrap_or(self.lim).min(self.lim)
    }

    /// At a mark: ask the kernel for the one `READ_AHEAD` marks further.
    fn read_ahead(&self, src: &Source, idx: u64, cs: u64) {
        if let Some(m) = self.marks.filter(|_| idx < self.lim) {
            if let Some(&a) = m.get(self.pos + READ_AHEAD) {
                src.will_need(a * cs, cs);
            }
        }
    }
}

/// Sends one volume from `src` into every lane: per target, its report or why it failed. An
/// `Err` is a failure of the source itself, which every lane shares.
fn send_volume(
    targets: Vec<VolTarget<'_>>,
    src: &Source,
    name: &SessionName,
    opts: &SendOptions,
) -> Result<Vec<Result<VolumeReport>>> {
    let dry = opts.dry_run;
    let mut results: Vec<Option<Result<VolumeReport>>> = targets.iter().map(|_| None).collect();
    let mut lanes: Vec<Lane> = Vec::new();
    let mut setups: Vec<Setup> = Vec::new();
    let mut lane_pos: Vec<usize> = Vec::new();
    for (pos, vt) in targets.into_iter().enumerate() {
        match setup_lane(vt, src, name, dry) {
            Ok((lane, setup)) => {
                lanes.push(lane);
                setups.push(setup);
                lane_pos.push(pos);
            }
            Err(e) => results[pos] = Some(Err(e)),
        }
    }
    if lanes.is_empty() {
        return Ok(results.into_iter().map(|r| r.expect("set")).collect());
    }
    let cs = lanes[0].writer.archive().chunksize();
    let n = chunk_count(src.size, cs);
    let now = std::time::Instant::now();
    let olds: Vec<Option<Arc<MergedIndex>>> = setups.iter_mut().map(|s| s.old.take()).collect();
    let mut outs: Vec<Output> = lanes
        .iter()
        .zip(setups)
        .zip(&olds)
        .map(|((l, s), old)| Output {
            cursor: match old {
                Some(o) => {
                    (Box::new(o.iter_from(0)) as Box<dyn Iterator<Item = Result<Rec>>>).peekable()
                }
                None => (Box::new(std::iter::empty()) as Box<dyn Iterator<Item = Result<Rec>>>)
                    .peekable(),
            },
            old_n: l.old_n,
            next: 0,
            manifest: (!dry).then(|| ManifestLog::new(s.spool)),
            manifest_lines: 0,
            view: s.view,
            me: s.me,
            digests: s.digests,
            old_digests: DigestCursor::open(l.local_vol.as_deref(), l.last.as_ref(), cs),
            data: 0,
            zero: 0,
            stored: 0,
            taken: 0,
            taken_bytes: 0,
            staged: Vec::new(),
            moves: Vec::new(),
            since_bytes: 0,
            since: now,
            every: opts
                .checkpoint_bytes
                .unwrap_or_else(|| l.writer.archive().checkpoint_bytes()),
        })
        .collect();
    let mut errs: Vec<Option<Error>> = lanes.iter().map(|_| None).collect();
    let read_count = AtomicU64::new(0);
    let read_bytes = AtomicU64::new(0);
    let progress = Progress::bytes(src.size, "send");
    let workers = workers();
    let inflight = workers * 4;
    let abort = AtomicBool::new(false);
    let (tok_tx, tok_rx) = bounded::<()>(inflight);
    for _ in 0..inflight {
        tok_tx.send(()).expect("receiver alive");
    }
    let (job_tx, job_rx) = bounded::<(u64, Job)>(inflight);
    let (res_tx, res_rx) = bounded::<Result<(u64, Found)>>(inflight);
    let mut first_err: Option<Error> = None;

    std::thread::scope(|s| {
        let reader_res = res_tx.clone();
        let (abort_r, read_count, read_bytes) = (&abort, &read_count, &read_bytes);
        let (lanes_r, olds) = (&lanes, &olds);
        s.spawn(move || {
            let failed = |l: usize| lanes_r[l].failed.load(Ordering::Relaxed);
            let mut rls: Vec<ReadLane> = lanes_r
                .iter()
                .map(|l| ReadLane {
                    marks: l.marks.as_deref(),
                    pos: 0,
                    lim: n.min(l.old_n),
                    digests: DigestCursor::open(l.local_vol.as_deref(), l.last.as_ref(), cs),
                    staged: l.writer.session().and_then(|w| w.reuse_cursor()),
                })
                .collect();
            for rl in &rls {
                for &c in rl.marks.unwrap_or(&[]).iter().take(READ_AHEAD) {
                    src.will_need(c * cs, cs);
                }
            }
            let mut seq = 0u64;
            let send = |seq: &mut u64, job: Job| -> bool {
                if tok_rx.recv().is_err() || abort_r.load(Ordering::Relaxed) {
                    return false;
                }
                let ok = match job {
                    // Holes need no worker.
                    Job::Holes(a, b, m) => {
                        reader_res.send(Ok((*seq, Found::Holes(a, b, m)))).is_ok()
                    }
                    job => job_tx.send((*seq, job)).is_ok(),
                };
                *seq += 1;
                ok
            };
            let mut idx = 0u64;
            // No data before this offset (from the last SEEK_DATA answer).
            let mut data_from = 0u64;
            loop {
                // The next chunk any lane looks at: every chunk for a full scan; for a marked
                // lane its marks, then every chunk beyond the previous end.
                let mut next = n;
                for (l, rl) in rls.iter_mut().enumerate() {
                    if !failed(l) {
                        next = next.min(rl.next_wanted(idx));
                    }
                }
                if next >= n {
                    break;
                }
                idx = next;
                let mut mask = 0u64;
                for (l, rl) in rls.iter_mut().enumerate() {
                    if !failed(l) && rl.next_wanted(idx) == idx {
                        mask |= 1 << l;
                        rl.read_ahead(src, idx, cs);
                    }
                }
                let (off, len) = (idx * cs, chunk_len(idx, src.size, cs));
                if len == cs && off + len > data_from {
                    data_from = src.next_data(off);
                }
                if len == cs && off + len <= data_from {
                    // A run of holes: up to the next data (whole chunks), cut where the set of
                    // lanes looking at the chunks changes.
                    let mut end = (data_from / cs).min(n);
                    if chunk_len(end.saturating_sub(1), src.size, cs) != cs {
                        end = end.saturating_sub(1).max(idx + 1);
                    }
                    for (l, rl) in rls.iter_mut().enumerate() {
                        if failed(l) {
                            continue;
                        }
                        if mask & (1 << l) == 0 {
                            end = end.min(rl.next_wanted(idx));
                        } else if rl.marks.is_some() && idx < rl.lim {
                            end = idx + 1;
                        }
                    }
                    let end = end.max(idx + 1);
                    if !send(&mut seq, Job::Holes(idx, end, mask)) {
                        return;
                    }
                    idx = end;
                    continue;
                }
                let mut buf = vec![0u8; len as usize];
                read_count.fetch_add(1, Ordering::Relaxed);
                read_bytes.fetch_add(len, Ordering::Relaxed);
                if let Err(e) = src.read_at(&mut buf, off) {
                    let _ = reader_res.send(Err(e));
                    return;
                }
                let jobs = rls
                    .iter_mut()
                    .enumerate()
                    .map(|(l, rl)| {
                        if mask & (1 << l) == 0 {
                            return None;
                        }
                        let old = match olds[l].as_ref().map(|o| o.get(idx)) {
                            Some(Ok(v)) => v.map(|(r, _)| r),
                            Some(Err(e)) => return Some(Err(e)),
                            None => None,
                        };
                        Some(Ok(LaneJob {
                            old,
                            old_digest: rl.digests.get(idx),
                            staged: rl.staged.as_mut().and_then(|c| c.get(idx)),
                        }))
                    })
                    .collect();
                if !send(
                    &mut seq,
                    Job::Data {
                        idx,
                        buf,
                        lanes: jobs,
                    },
                ) {
                    return;
                }
                idx += 1;
            }
        });
        for _ in 0..workers {
            let (job_rx, res_tx, abort) = (job_rx.clone(), res_tx.clone(), &abort);
            let lanes = &lanes;
            s.spawn(move || {
                for (seq, job) in job_rx.iter() {
                    if abort.load(Ordering::Relaxed) {
                        break;
                    }
                    let found = match job {
                        Job::Holes(a, b, m) => Found::Holes(a, b, m),
                        Job::Data {
                            idx,
                            buf,
                            lanes: jobs,
                        } => Found::Data(examine(lanes, name, cs, idx, &buf, jobs)),
                    };
                    if res_tx.send(Ok((seq, found))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(res_tx);
        drop(job_rx);

        // Collector: restore the order and build what each lane's new session needs.
        let lanes = &lanes;
        let fail = |l: usize, e: Error, errs: &mut Vec<Option<Error>>| {
            lanes[l].failed.store(true, Ordering::Relaxed);
            tracing::debug!("{}: lane failed: {e}", lanes[l].writer.archive().url());
            errs[l].get_or_insert(e);
        };
        let mut tok_tx = Some(tok_tx);
        let mut pending: BTreeMap<u64, Found> = BTreeMap::new();
        let mut next = 0u64;
        for r in res_rx.iter() {
            match r {
                Err(e) => {
                    abort.store(true, Ordering::Relaxed);
                    first_err.get_or_insert(e);
                    tok_tx = None; // wakes the reader so every thread winds down
                }
                Ok((seq, o)) => {
                    pending.insert(seq, o);
                }
            }
            if first_err.is_some() || abort.load(Ordering::Relaxed) {
                continue;
            }
            while let Some(f) = pending.remove(&next) {
                let failed = |l: usize| lanes[l].failed.load(Ordering::Relaxed);
                let bytes = match f {
                    Found::Holes(a, b, mask) => {
                        for (l, out) in outs.iter_mut().enumerate() {
                            if mask & (1 << l) != 0 && !failed(l) {
                                if let Err(e) = out.zeros(a, b) {
                                    fail(l, e, &mut errs);
                                }
                            }
                        }
                        (b - a) * cs
                    }
                    Found::Data(v) => {
                        for (l, o) in v.into_iter().enumerate() {
                            let Some(o) = o.filter(|_| !failed(l)) else {
                                continue;
                            };
                            let out = &mut outs[l];
                            let done = o.and_then(|o| {
                                if let Outcome::Changed {
                                    idx,
                                    taken: Some(_),
                                    ..
                                } = &o
                                {
                                    let w = lanes[l].writer.session();
                                    out.moves.extend(w.and_then(|w| w.take(*idx)));
                                }
                                out.apply(o)
                            });
                            if let Err(e) = done {
                                fail(l, e, &mut errs);
                            }
                        }
                        cs
                    }
                };
                for (l, out) in outs.iter_mut().enumerate() {
                    if let (Some(w), false) = (lanes[l].writer.session(), failed(l)) {
                        if out.due() {
                            if let Err(e) = out.checkpoint(w) {
                                fail(l, e, &mut errs);
                            }
                        }
                    }
                }
                if (0..lanes.len()).all(failed) {
                    abort.store(true, Ordering::Relaxed);
                    tok_tx = None;
                    break;
                }
                progress.inc(bytes);
                next += 1;
                if let Some(t) = &tok_tx {
                    let _ = t.send(());
                }
            }
        }
        drop(tok_tx);
    });
    if first_err.is_none() {
        for (l, out) in outs.iter_mut().enumerate() {
            if !lanes[l].failed.load(Ordering::Relaxed) {
                if let Err(e) = out.carry(n) {
                    lanes[l].failed.store(true, Ordering::Relaxed);
                    errs[l] = Some(e);
                }
            }
        }
    }
    progress.finish();
    crate::archive::failpoint("chunks-written");
    if let Some(e) = first_err {
        outs.into_iter().for_each(Output::discard);
        return Err(e);
    }
    let (chunks_read, bytes_read) = (read_count.into_inner(), read_bytes.into_inner());
    for (((lane, out), pos), err) in lanes.into_iter().zip(outs).zip(lane_pos).zip(errs) {
        results[pos] = Some(match err {
            Some(e) => {
                out.discard();
                Err(e)
            }
            None => finish_lane(lane, out, src, name, opts, chunks_read, bytes_read),
        });
    }
    Ok(results.into_iter().map(|r| r.expect("set")).collect())
}

/// Commits one lane's session (or abandons it when nothing changed).
fn finish_lane(
    lane: Lane<'_>,
    mut p: Output<'_>,
    src: &Source,
    name: &SessionName,
    opts: &SendOptions,
    chunks_read: u64,
    bytes_read: u64,
) -> Result<VolumeReport> {
    let cs = lane.writer.archive().chunksize();
    let last = lane.last;
    let mut report = VolumeReport {
        volume: lane.name,
        session: None,
        volsize: src.size,
        first: last.is_none(),
        chunks_read,
        chunks_changed: p.data + p.zero,
        chunks_data: p.data,
        chunks_zero: p.zero,
        bytes_read,
        bytes_stored: p.stored,
        chunks_linked: lane.linked.into_inner(),
        chunks_reused: p.taken,
        bytes_reused: p.taken_bytes,
        ..Default::default()
    };
    let is_changed = match &last {
        None => true,
        Some(l) => {
            p.manifest_lines > 0
                || l.info.volsize != src.size
                || l.info.permissions != src.permissions
        }
    };
    let writer = match lane.writer {
        Writer::Real(w) => w,
        Writer::Dry(_a) => return Ok(report),
    };
    if !is_changed && !opts.send_unchanged {
        writer.abort()?;
        if let (Some(d), Some(l)) = (p.digests.take(), &last) {
            save_digests(d, l, cs);
        }
        return Ok(report);
    }
    if !p.moves.is_empty() {
        writer.checkpoint(&[], &p.moves)?;
    }
    let mut view = p.view.take().expect("not a dry run");
    let manifest = NewManifest::new(p.manifest.take().expect("not a dry run"))?;
    let info = SessionInfo {
        localtime: src.mtime_ns,
        previous: last.as_ref().map(|l| l.name.clone()),
        permissions: src.permissions.clone(),
        manifest_hash: None,
        volsize: src.size,
        sequence: last.as_ref().map_or(0, |l| l.info.sequence + 1),
        mfcs: Some(view.view_mfcs()),
        tags: opts.tags.clone(),
    };
    let committed = Session {
        name: name.clone(),
        info: info.clone(),
    };
    writer.commit(info, Some(manifest), Some(view))?;
    report.session = Some(name.to_string());
    if let Some(d) = p.digests {
        save_digests(d, &committed, cs);
    }
    Ok(report)
}

/// What one data chunk is to each lane that looks at it, compared with that lane's previous
/// session; stores or links it there if new. The zero test and the raw digest are done once.
fn examine(
    lanes: &[Lane],
    name: &SessionName,
    cs: u64,
    idx: u64,
    buf: &[u8],
    jobs: Vec<Option<Result<LaneJob>>>,
) -> Vec<Option<Result<Outcome>>> {
    let zero = buf.len() as u64 == cs && is_all_zero(buf);
    let digest = (!zero).then(|| digests::digest(buf));
    // Compressed once per compressor: archives that compress alike share it.
    let mut compressed: Vec<(crate::archive::Compressor, Vec<u8>)> = Vec::new();
    let several = jobs.iter().filter(|j| j.is_some()).count() > 1;
    jobs.into_iter()
        .enumerate()
        .map(|(l, j)| {
            let lane = &lanes[l];
            let j = j.filter(|_| !lane.failed.load(Ordering::Relaxed))?;
            let mut hash = |a: &Archive| {
                if !several {
                    return a.hash_chunk(buf);
                }
                let c = a.compressor();
                let file = match compressed.iter().find(|(k, _)| *k == c) {
                    Some((_, f)) => f.clone(),
                    None => {
                        let f = c.compress(buf);
                        compressed.push((c, f.clone()));
                        f
                    }
                };
                a.hash_compressed(file)
            };
            Some(j.and_then(|j| match digest {
                None => Ok(Outcome::Zero(idx)),
                Some(d) => examine_lane(lane, name, idx, d, j, &mut hash),
            }))
        })
        .collect()
}

fn examine_lane(
    lane: &Lane,
    name: &SessionName,
    idx: u64,
    digest: Digest,
    j: LaneJob,
    hash_chunk: &mut dyn FnMut(&Archive) -> crate::archive::session::Hashed,
) -> Result<Outcome> {
    if matches!(j.old, Some(ChunkRef::Data(_))) && j.old_digest == Some(digest) {
        // The same raw bytes as the newest session holds: no need to compress.
        return Ok(Outcome::Same(idx, digest));
    }
    let writer = lane.writer.session();
    let archive = lane.writer.archive();
    let hashed = hash_chunk(archive);
    let hash = hashed.hash();
    if j.old == Some(ChunkRef::Data(hash)) {
        return Ok(Outcome::Same(idx, digest));
    }
    if let Some(st) = j.staged.filter(|s| writer.is_some() && s.digest == digest) {
        // An interrupted send staged exactly these raw bytes: take its file instead of
        // sending them again, if the hash the record names (which the new manifest will name)
        // is this data's hash: local state never puts a hash in a manifest on its own word.
        if st.hash == hash {
            return Ok(Outcome::Changed {
                idx,
                hash,
                bytes: 0,
                taken: Some(st.len.into()),
                digest,
            });
        }
        tracing::warn!(
            "{}: chunk {idx} of the interrupted send is recorded with another hash; stored again",
            lane.writer.archive().url()
        );
    }
    let existing = lane
        .index
        .and_then(|x| x.path(archive, &hash, lane.vi, name));
    let bytes = match (writer, existing) {
        (None, Some(_)) => {
            lane.linked.fetch_add(1, Ordering::Relaxed);
            0
        }
        // A dry run only counts what it would store.
        (None, None) => hashed.len() as u64,
        (Some(w), Some(existing)) => {
            // Already in the archive: a hard link, nothing stored.
            lane.linked.fetch_add(1, Ordering::Relaxed);
            w.link(idx, &existing)?;
            0
        }
        (Some(w), None) => {
            let n = w.store(idx, hashed)?;
            if let Some(x) = lane.index {
                x.insert_staged(hash, lane.vi, idx);
            }
            n
        }
    };
    Ok(Outcome::Changed {
        idx,
        hash,
        bytes,
        taken: None,
        digest,
    })
}

/// Keeps the digest map for the volume's newest session. Best effort: without it the next
/// send compresses every chunk to compare, which is slower but just as correct.
fn save_digests(d: DigestWriter, last: &Session, cs: u64) {
    if let Err(e) = d.save(last, cs) {
        tracing::warn!("could not save the digest map: {e}");
    }
}
