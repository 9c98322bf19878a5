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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::bounded;

use crate::archive::dedup::DedupIndex;
use crate::archive::digests::{self, Digest, DigestCursor, DigestWriter};
use crate::archive::index::{Builder, Rec};
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
    pub autoprune_on: Option<crate::ops::autoprune::ApDays>,
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
}

pub fn run(
    wa: &mut WriteArchive,
    reqs: &[SendRequest],
    opts: &SendOptions,
) -> Result<Vec<VolumeReport>> {
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
    if reqs.iter().any(|r| r.reflink) && wa.local_dir().is_none() {
        tracing::warn!(
            "no local state: snapshot pairing cannot be recorded, every send is a full scan"
        );
    }
    let name = match &opts.session {
        Some(n) => n.clone(),
        None => session_name(wa, reqs.iter().map(|r| r.volume.as_str()))?,
    };
    // wyng-*metadata volumes never dedup (behaviour §11): no index for them alone.
    let metadata = |v: &str| crate::format::ids::is_metadata_volume(v);
    let mut index = if opts.dedup && reqs.iter().any(|r| !metadata(&r.volume)) {
        if !opts.dry_run {
            wa.check_hard_links()?;
        }
        let idx = DedupIndex::build(wa)?;
        tracing::info!("dedup index: {} distinct chunks", idx.len());
        Some(idx)
    } else {
        None
    };
    let mut idxs = Vec::new();
    for req in reqs {
        idxs.push(match wa.volume_index(&req.volume) {
            Some(i) => i,
            None => wa.new_volume(&req.volume, &opts.volume_desc)?,
        });
    }
    // Volumes in local storage: snapshot them all and read what changed in one scan.
    let mut prepared = match &opts.local {
        Some(store) => {
            let vols: Vec<PrepareVolume> = reqs
                .iter()
                .zip(&idxs)
                .filter(|(r, _)| r.reflink)
                .map(|(r, &i)| PrepareVolume {
                    name: &r.volume,
                    file: r.source.clone(),
                    vid: wa.volumes()[i].vid.to_string(),
                    last: wa.volumes()[i].last(),
                })
                .collect();
            store.prepare(&vols, wa.uuid(), wa.local_dir(), wa.chunksize(), false)?
        }
        None => Vec::new(),
    }
    .into_iter();
    let mut reports = Vec::new();
    let mut pending: Vec<Prepared> = Vec::new();
    let mut result = Ok(());
    for ((req, src), &vi) in reqs.iter().zip(&sources).zip(&idxs) {
        let prep = if req.reflink { prepared.next() } else { None };
        let mut autopruned = Vec::new();
        if let (Some(apdays), false) = (opts.autoprune_on, opts.dry_run) {
            let needed = match prep.as_ref().map(|p| &p.plan) {
                Some(Plan::Incremental(map)) => map.count(u64::MAX) * wa.chunksize(),
                _ => src.size,
            };
            let pruned =
                crate::ops::prune::make_room(wa, &req.volume, needed, apdays).and_then(|r| {
                    if !r.is_empty() && index.is_some() {
                        // Pruning moved chunk files: the index's places are stale.
                        index = Some(DedupIndex::build(wa)?);
                    }
                    Ok(r)
                });
            match pruned {
                Ok(r) => autopruned = r.into_iter().flat_map(|r| r.removed).collect(),
                Err(e) => {
                    pending.extend(prep);
                    result = Err(e);
                    break;
                }
            }
        }
        let dedup = index.as_ref().filter(|_| !metadata(&req.volume));
        let r = if req.reflink {
            match prep {
                Some(p) => {
                    let r = send_local(wa, vi, req, src, &p, &name, opts, dedup);
                    if r.is_err() {
                        pending.push(p);
                    }
                    r
                }
                None => Err(Error::local(&req.source, "needs --local")),
            }
        } else {
            send_volume(wa, vi, src, &name, opts, Scan::Full, dedup)
        };
        match r {
            Ok(mut rep) => {
                rep.autopruned = autopruned;
                reports.push(rep);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // Snapshots taken for volumes that were not sent (an earlier one failed) are dropped.
    pending
        .iter()
        .chain(prepared.as_slice())
        .for_each(|p| p.snaps.drop_snap2());
    result.map(|()| reports)
}

/// Sends a volume of local storage from its `.wyng2` snapshot as planned by
/// [`LocalStorage::prepare`], then moves the baseline (behaviour §7.1 step 7): after a new
/// session `.wyng2` becomes the paired baseline with a blank map; when nothing changed it
/// becomes the baseline all the same (it holds what the newest session holds); a dry run keeps
/// the changes it found in the map, as monitor does.
#[allow(clippy::too_many_arguments)]
fn send_local(
    wa: &mut WriteArchive,
    vi: usize,
    req: &SendRequest,
    live: &Source,
    prep: &Prepared,
    name: &SessionName,
    opts: &SendOptions,
    index: Option<&DedupIndex>,
) -> Result<VolumeReport> {
    let snaps = &prep.snaps;
    let cs = wa.chunksize();
    let snap;
    let (scan, src) = match &prep.plan {
        Plan::Nocow => (Scan::Full, live),
        plan => {
            let mut s = Source::open(snaps.snap2_path())?;
            // The session records the volume's own attributes, not the read-only snapshot's.
            s.permissions = live.permissions.clone();
            snap = s;
            let scan = match plan {
                Plan::Incremental(map) => {
                    let chunks = map.chunks(chunk_count(snap.size, cs));
                    tracing::info!(
                        "{}: {} chunks changed according to the extent maps",
                        req.volume,
                        chunks.len()
                    );
                    Scan::Chunks(chunks)
                }
                _ => Scan::Full,
            };
            (scan, &snap)
        }
    };
    let last_before = wa.volumes()[vi].last().cloned();
    let report = send_volume(wa, vi, src, name, opts, scan, index)?;
    if matches!(prep.plan, Plan::Nocow) {
        return Ok(report);
    }
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
/// volume already has a session of that name (two sends within a second), wait for the clock.
pub fn session_name<'a>(
    archive: &Archive,
    volumes: impl Iterator<Item = &'a str> + Clone,
) -> Result<SessionName> {
    for _ in 0..3 {
        let name = SessionName::from_time(chrono::Local::now());
        let taken = volumes.clone().any(|v| {
            archive
                .volume(v)
                .is_some_and(|v| v.session_index(&name).is_some())
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

/// What the reader hands on, in address order.
enum Job {
    /// Whole chunks `from..to` that are holes in the source: zeros, not read.
    Holes(u64, u64),
    /// A chunk's raw data, with what the previous view and the previous digest map hold.
    Data {
        idx: u64,
        buf: Vec<u8>,
        old: Option<ChunkRef>,
        old_digest: Option<Digest>,
    },
}

/// What a worker found.
enum Outcome {
    Holes(u64, u64),
    /// A full chunk of zeros.
    Zero(u64),
    /// The same data as the previous view holds.
    Same(u64, Digest),
    /// New data, stored (`bytes`) or linked.
    Changed {
        idx: u64,
        hash: Hash32,
        bytes: u64,
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
                digest,
            } => {
                self.take_old(idx)?;
                self.line(idx, &ChunkRef::Data(hash))?;
                self.view(idx, hash, self.me)?;
                self.digest(idx, &digest)?;
                self.data += 1;
                self.stored += bytes;
                self.next = idx + 1;
            }
            Outcome::Zero(idx) => self.zeros(idx, idx + 1)?,
            Outcome::Holes(from, to) => self.zeros(from, to)?,
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

fn send_volume(
    wa: &mut WriteArchive,
    vi: usize,
    src: &Source,
    name: &SessionName,
    opts: &SendOptions,
    scan: Scan,
    index: Option<&DedupIndex>,
) -> Result<VolumeReport> {
    let cs = wa.chunksize();
    let vol = wa.volumes()[vi].clone();
    let last: Option<Session> = vol.last().cloned();
    let old = match vol.sessions.len() {
        0 => None,
        n => Some(wa.merged(vi, n - 1)?),
    };
    let old_n = old.as_ref().map_or(0, |o| o.chunks());
    let n = chunk_count(src.size, cs);
    let local_vol = wa.local_volume_dir(&vol.vid);
    tracing::info!(
        "sending {} ({} bytes, {n} chunks) as {name}",
        vol.name(),
        src.size
    );
    let dry = opts.dry_run;
    let view = if dry {
        None
    } else {
        Some(wa.next_index_builder(vi, name, src.size)?)
    };
    let me = vol.sessions.len() as u16;
    let spool = wa.spool();
    let writer = if dry {
        Writer::Dry(wa)
    } else {
        Writer::Real(wa.begin_session(vi, name.clone())?)
    };
    let digest_out = match (&local_vol, dry) {
        (Some(d), false) => match DigestWriter::new(d) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("no digest map for the next send: {e}");
                None
            }
        },
        _ => None,
    };
    let mut out = Output {
        cursor: match &old {
            Some(o) => {
                (Box::new(o.iter_from(0)) as Box<dyn Iterator<Item = Result<Rec>>>).peekable()
            }
            None => {
                (Box::new(std::iter::empty()) as Box<dyn Iterator<Item = Result<Rec>>>).peekable()
            }
        },
        old_n,
        next: 0,
        manifest: (!dry).then(|| ManifestLog::new(spool)),
        manifest_lines: 0,
        view,
        me,
        digests: digest_out,
        old_digests: DigestCursor::open(local_vol.as_deref(), last.as_ref(), cs),
        data: 0,
        zero: 0,
        stored: 0,
    };
    let read_count = AtomicU64::new(0);
    let read_bytes = AtomicU64::new(0);
    let linked = AtomicU64::new(0);
    let progress = Progress::bytes(src.size, "send");
    let workers = workers();
    let inflight = workers * 4;
    let abort = AtomicBool::new(false);
    let (tok_tx, tok_rx) = bounded::<()>(inflight);
    for _ in 0..inflight {
        tok_tx.send(()).expect("receiver alive");
    }
    let (job_tx, job_rx) = bounded::<(u64, Job)>(inflight);
    let (res_tx, res_rx) = bounded::<Result<(u64, Outcome)>>(inflight);
    let mut first_err: Option<Error> = None;
    let marked: Option<Vec<u64>> = match scan {
        Scan::Full => None,
        Scan::Chunks(v) => Some(v),
    };

    std::thread::scope(|s| {
        let reader_res = res_tx.clone();
        let (abort_r, read_count, read_bytes) = (&abort, &read_count, &read_bytes);
        let old_r = old.as_deref();
        let marked = marked.as_deref();
        let local_vol = local_vol.as_deref();
        let last_r = last.as_ref();
        s.spawn(move || {
            let mut old_digests = DigestCursor::open(local_vol, last_r, cs);
            let mut seq = 0u64;
            let send = |seq: &mut u64, job: Job| -> bool {
                if tok_rx.recv().is_err() || abort_r.load(Ordering::Relaxed) {
                    return false;
                }
                let ok = match job {
                    // Holes need no worker.
                    Job::Holes(a, b) => reader_res.send(Ok((*seq, Outcome::Holes(a, b)))).is_ok(),
                    job => job_tx.send((*seq, job)).is_ok(),
                };
                *seq += 1;
                ok
            };
            // The chunks to look at, in order: every chunk (full scan), or the marked ones
            // plus every chunk beyond the previous end.
            let mut marks =
                marked.map(|m| m.iter().copied().filter(|&c| c < n.min(old_n)).peekable());
            if let Some(m) = marked {
                for &c in m.iter().take(READ_AHEAD) {
                    src.will_need(c * cs, cs);
                }
            }
            let mut ahead = READ_AHEAD;
            let mut idx = 0u64;
            // No data before this offset (from the last SEEK_DATA answer).
            let mut data_from = 0u64;
            while idx < n {
                if let Some(m) = marks.as_mut() {
                    if idx < old_n.min(n) {
                        match m.next() {
                            Some(c) => idx = c,
                            None => {
                                idx = old_n.min(n);
                                continue;
                            }
                        }
                        if let Some(&a) = marked.and_then(|m| m.get(ahead)) {
                            src.will_need(a * cs, cs);
                        }
                        ahead += 1;
                    }
                }
                let (off, len) = (idx * cs, chunk_len(idx, src.size, cs));
                if len == cs && off + len > data_from {
                    data_from = src.next_data(off);
                }
                if len == cs && off + len <= data_from {
                    // A run of holes: up to the next data (whole chunks), or the next mark.
                    let mut end = (data_from / cs).min(n);
                    if chunk_len(end.saturating_sub(1), src.size, cs) != cs {
                        end = end.saturating_sub(1).max(idx + 1);
                    }
                    if marks.is_some() && idx < old_n {
                        end = idx + 1;
                    }
                    let end = end.max(idx + 1);
                    if !send(&mut seq, Job::Holes(idx, end)) {
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
                let old = match old_r.map(|o| o.get(idx)) {
                    Some(Ok(v)) => v.map(|(r, _)| r),
                    Some(Err(e)) => {
                        let _ = reader_res.send(Err(e));
                        return;
                    }
                    None => None,
                };
                let old_digest = old_digests.get(idx);
                if !send(
                    &mut seq,
                    Job::Data {
                        idx,
                        buf,
                        old,
                        old_digest,
                    },
                ) {
                    return;
                }
                idx += 1;
            }
        });
        for _ in 0..workers {
            let (job_rx, res_tx, abort, linked) = (job_rx.clone(), res_tx.clone(), &abort, &linked);
            let writer = &writer;
            s.spawn(move || {
                for (seq, job) in job_rx.iter() {
                    if abort.load(Ordering::Relaxed) {
                        break;
                    }
                    let out = match job {
                        Job::Holes(a, b) => Ok(Outcome::Holes(a, b)),
                        Job::Data {
                            idx,
                            buf,
                            old,
                            old_digest,
                        } => examine(
                            writer.archive(),
                            writer.session(),
                            index,
                            vi,
                            name,
                            linked,
                            idx,
                            buf,
                            old,
                            old_digest,
                        ),
                    };
                    if res_tx.send(out.map(|o| (seq, o))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(res_tx);
        drop(job_rx);

        // Collector: restore the order and build what the new session needs.
        let mut tok_tx = Some(tok_tx);
        let mut pending: BTreeMap<u64, Outcome> = BTreeMap::new();
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
            if first_err.is_some() {
                continue;
            }
            while let Some(o) = pending.remove(&next) {
                let bytes = match &o {
                    Outcome::Holes(a, b) => (b - a) * cs,
                    _ => cs,
                };
                if let Err(e) = out.apply(o) {
                    abort.store(true, Ordering::Relaxed);
                    first_err.get_or_insert(e);
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
        if let Err(e) = out.carry(n) {
            first_err = Some(e);
        }
    }
    progress.finish();
    crate::archive::failpoint("chunks-written");
    if let Some(e) = first_err {
        if let Some(d) = out.digests.take() {
            d.discard();
        }
        return Err(e);
    }
    let mut report = VolumeReport {
        volume: vol.name().to_string(),
        session: None,
        volsize: src.size,
        first: last.is_none(),
        chunks_read: read_count.into_inner(),
        chunks_changed: out.data + out.zero,
        chunks_data: out.data,
        chunks_zero: out.zero,
        bytes_read: read_bytes.into_inner(),
        bytes_stored: out.stored,
        chunks_linked: linked.into_inner(),
        autopruned: Vec::new(),
        retention_removed: Vec::new(),
    };
    let is_changed = match &last {
        None => true,
        Some(l) => {
            out.manifest_lines > 0
                || l.info.volsize != src.size
                || l.info.permissions != src.permissions
        }
    };
    let writer = match writer {
        Writer::Real(w) => w,
        Writer::Dry(_a) => return Ok(report),
    };
    if !is_changed && !opts.send_unchanged {
        writer.abort()?;
        if let (Some(d), Some(l)) = (out.digests.take(), &last) {
            save_digests(d, l, cs);
        }
        return Ok(report);
    }
    let mut view = out.view.take().expect("not a dry run");
    let manifest = NewManifest::new(out.manifest.take().expect("not a dry run"))?;
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
    let digests = out.digests.take();
    drop(out);
    let committed = Session {
        name: name.clone(),
        info: info.clone(),
    };
    writer.commit(info, Some(manifest), Some(view))?;
    report.session = Some(name.to_string());
    if let Some(d) = digests {
        save_digests(d, &committed, cs);
    }
    Ok(report)
}

/// What one data chunk is, compared with the previous session; stores or links it if new.
#[allow(clippy::too_many_arguments)]
fn examine(
    archive: &Archive,
    writer: Option<&SessionWriter>,
    index: Option<&DedupIndex>,
    vi: usize,
    name: &SessionName,
    linked: &AtomicU64,
    idx: u64,
    buf: Vec<u8>,
    old: Option<ChunkRef>,
    old_digest: Option<Digest>,
) -> Result<Outcome> {
    let cs = archive.chunksize();
    if buf.len() as u64 == cs && is_all_zero(&buf) {
        return Ok(Outcome::Zero(idx));
    }
    let digest = digests::digest(&buf);
    if matches!(old, Some(ChunkRef::Data(_))) && old_digest == Some(digest) {
        // The same raw bytes as the newest session holds: no need to compress.
        return Ok(Outcome::Same(idx, digest));
    }
    let hashed = archive.hash_chunk(&buf);
    let hash = hashed.hash();
    if old == Some(ChunkRef::Data(hash)) {
        return Ok(Outcome::Same(idx, digest));
    }
    let existing = index.and_then(|x| x.path(archive, &hash, vi, name));
    let bytes = match (writer, existing) {
        (None, Some(_)) => {
            linked.fetch_add(1, Ordering::Relaxed);
            0
        }
        // A dry run only counts what it would store.
        (None, None) => hashed.len() as u64,
        (Some(w), Some(existing)) => {
            // Already in the archive: a hard link, nothing stored.
            linked.fetch_add(1, Ordering::Relaxed);
            w.link(idx, &existing)?;
            0
        }
        (Some(w), None) => {
            let n = w.store(idx, hashed)?;
            if let Some(x) = index {
                x.insert_staged(hash, vi, idx);
            }
            n
        }
    };
    Ok(Outcome::Changed {
        idx,
        hash,
        bytes,
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
