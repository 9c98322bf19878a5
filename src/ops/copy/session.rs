//! Copying one session: the walk of [`super::diff`] turned into a session of the copy,
//! through the archive's own [`SessionWriter`] (staging, checkpoints, resume, atomic commit).
//!
//! The pipeline streams and keeps the destinations busy:
//! * a feeder thread walks the views in chunk order; chunks the copy must get are fetched from
//!   the source in batches where the source is remote (one request per batch on ssh, parallel
//!   GETs on S3), one by one by the workers otherwise; chunks an interrupted copy of this
//!   volume staged and recorded (the same source chunk: see [`crate::archive::copy_digest`])
//!   are taken from its staging instead;
//! * one worker per core verifies each chunk against the source's hash and stages it as the
//!   copy stores chunks (uploads on S3 run in parallel in the background, ssh streams them);
//! * this thread restores the order and builds the new session's manifest and merged view,
//!   and every [`Archive::checkpoint_bytes`] stored (or 10 s) makes what was staged durable
//!   and records it for a resume, as a send does.
//!
//! Tokens bound the items in flight, so memory is a few batches of chunks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

use super::diff::{Diff, Step, Views};
use super::SessionCopy;
use crate::archive::index::{Builder, MergedIndex, Rec};
use crate::archive::resume::{ReuseCursor, Staged};
use crate::archive::{
    copy_digest, Archive, ChunkLoc, ChunkReader, Copied, Move, NewManifest, SessionWriter,
};
use crate::archive::{Transfer, WriteArchive};
use crate::error::{Error, Result};
use crate::format::manifest::{ChunkRef, ManifestLog};
use crate::format::{Session, SessionInfo};
use crate::spool::Spool;

/// Plain steps sent on as one item.
const PLAIN: usize = 1024;
/// A checkpoint also falls due this long after the last one.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

/// The session of the source being copied.
pub(super) struct Source<'a> {
    pub archive: &'a Archive,
    pub vi: usize,
    pub si: usize,
    pub how: Transfer,
}

/// The views a session's copy is decided by (see [`Views`]).
pub(super) struct Plan {
    pub source: Arc<MergedIndex>,
    pub copy: Option<Arc<MergedIndex>>,
    pub same_hashes: bool,
    pub common: Option<(Arc<MergedIndex>, Arc<MergedIndex>)>,
}

impl Plan {
    pub(crate) fn views(&self) -> Views<'_> {
        Views {
            source: &self.source,
            copy: self.copy.as_deref(),
            same_hashes: self.same_hashes,
            common: self.common.as_ref().map(|(a, b)| (&**a, &**b)),
        }
    }
}

/// What goes down the pipeline, in chunk order.
enum Item {
    /// Steps that need no work.
    Plain(Vec<Step>),
    /// A chunk an interrupted copy staged: taken, not copied again.
    Taken(Staged),
    /// A chunk to copy, with its file if a batched fetch already read it.
    Copy {
        loc: ChunkLoc,
        prev: Option<Rec>,
        file: Option<Option<Vec<u8>>>,
    },
}

/// What comes back, in any order (put back in order by sequence number).
enum Done {
    Plain(Vec<Step>),
    Taken(Staged),
    Copied {
        loc: ChunkLoc,
        prev: Option<Rec>,
        copied: Copied,
        read: u64,
    },
}

/// The new session as the collector builds it.
struct Out<'w, 'a> {
    w: &'w SessionWriter<'a>,
    manifest: ManifestLog<Spool>,
    view: Builder,
    me: u16,
    /// Staged since the last checkpoint, and chunks to take from an interrupted copy.
    staged: Vec<Staged>,
    moves: Vec<Move>,
    since_bytes: u64,
    since: Instant,
    every: u64,
    report: SessionCopy,
}

impl Out<'_, '_> {
    fn data(&mut self, idx: u64, hash: crate::format::Hash32) -> Result<()> {
        self.manifest
            .entry(idx, &ChunkRef::Data(hash))
            .map_err(|e| Error::io("manifest spool", e))?;
        self.view.push(idx, hash, self.me)
    }

    /// Applies one item; returns the chunk index it reached.
    fn apply(&mut self, d: Done) -> Result<Option<u64>> {
        match d {
            Done::Plain(steps) => {
                let mut last = None;
                for s in steps {
                    match s {
                        Step::Keep(r) => {
                            self.view.push(r.idx, r.hash, r.origin)?;
                            last = Some(r.idx + 1);
                        }
                        Step::Zeros(a, b) => {
                            self.manifest
                                .zeros(a, b)
                                .map_err(|e| Error::io("manifest spool", e))?;
                            last = Some(b);
                        }
                        Step::Copy { .. } => unreachable!("copies are items of their own"),
                    }
                }
                Ok(last)
            }
            Done::Taken(st) => {
                self.data(st.idx, st.hash)?;
                self.moves.extend(self.w.take(st.idx));
                self.report.chunks_reused += 1;
                self.report.bytes_reused += u64::from(st.len);
                self.staged.push(st);
                Ok(Some(st.idx + 1))
            }
            Done::Copied {
                loc,
                prev,
                copied,
                read,
            } => {
                self.report.bytes_read += read;
                match prev.filter(|p| copied.stored == 0 && p.hash == copied.hash) {
                    Some(p) => {
                        self.view.push(p.idx, p.hash, p.origin)?;
                        self.report.chunks_unchanged += 1;
                    }
                    None => {
                        self.data(loc.idx, copied.hash)?;
                        self.report.chunks_copied += 1;
                        self.report.data_bytes += u64::from(loc.len);
                        self.report.bytes_stored += copied.stored;
                        self.since_bytes += copied.stored;
                        self.staged.push(Staged {
                            idx: loc.idx,
                            hash: copied.hash,
                            digest: copy_digest(&loc.hash),
                            len: copied.stored as u32,
                        });
                    }
                }
                Ok(Some(loc.idx + 1))
            }
        }
    }

    fn due(&self) -> bool {
        self.moves.len() >= 2000
            || (!self.staged.is_empty()
                && (self.since_bytes >= self.every || self.since.elapsed() >= CHECKPOINT_EVERY))
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.w.checkpoint(&self.staged, &self.moves)?;
        self.staged.clear();
        self.moves.clear();
        self.since_bytes = 0;
        self.since = Instant::now();
        Ok(())
    }
}

/// Copies session `src.si` of the source into volume `tvi` of the copy, as its newest session,
/// with the source session's name and info (times, permissions, tags).
pub(super) fn copy_session(
    src: &Source,
    plan: &Plan,
    wa: &mut WriteArchive,
    tvi: usize,
    every: Option<u64>,
) -> Result<SessionCopy> {
    let session = src.archive.volumes()[src.vi].sessions[src.si].clone();
    let last = wa.volumes()[tvi].last().cloned();
    let every = every.unwrap_or_else(|| wa.checkpoint_bytes());
    let view = wa.next_index_builder(tvi, &session.name, session.info.volsize)?;
    let me = wa.volumes()[tvi].sessions.len() as u16;
    let spool = wa.spool();
    let w = wa.begin_session(tvi, session.name.clone())?;
    let mut out = Out {
        w: &w,
        manifest: ManifestLog::new(spool),
        view,
        me,
        staged: Vec::new(),
        moves: Vec::new(),
        since_bytes: 0,
        since: Instant::now(),
        every,
        report: SessionCopy {
            session: session.name.to_string(),
            ..Default::default()
        },
    };
    let reuse = w.reuse_cursor();
    run_pipeline(src, plan, &mut out, reuse)?;
    let Out {
        manifest,
        mut view,
        moves,
        report,
        ..
    } = out;
    if !moves.is_empty() {
        w.checkpoint(&[], &moves)?;
    }
    let info = copied_info(&session, last.as_ref(), view.view_mfcs());
    w.commit(info, Some(NewManifest::new(manifest)?), Some(view))?;
    Ok(report)
}

/// The copied session's info: the source session's, placed after the copy's newest session
/// (its own sequence where that still follows, as it does in a copy kept in step).
fn copied_info(s: &Session, last: Option<&Session>, mfcs: u32) -> SessionInfo {
    let sequence = match last {
        Some(l) => s.info.sequence.max(l.info.sequence + 1),
        None => s.info.sequence,
    };
    SessionInfo {
        previous: last.map(|l| l.name.clone()),
        manifest_hash: None,
        sequence,
        mfcs: Some(mfcs),
        ..s.info.clone()
    }
}

/// Runs the feeder, the workers and the collector (this thread) over the plan's walk.
fn run_pipeline(
    src: &Source,
    plan: &Plan,
    out: &mut Out,
    reuse: Option<ReuseCursor>,
) -> Result<()> {
    let reader = src.archive.chunks();
    let batched = reader.batched();
    let cs = src.archive.chunksize();
    let per_batch = if batched {
        ((16u64 << 20) / cs).clamp(1, 256) as usize
    } else {
        1
    };
    let workers = src.archive.tuning().workers();
    let inflight = (workers * 4).max(2 * per_batch + 8);
    let (tok_tx, tok_rx) = bounded::<()>(inflight);
    for _ in 0..inflight {
        tok_tx.send(()).expect("receiver alive");
    }
    let (job_tx, job_rx) = bounded::<(u64, Item)>(inflight);
    let (res_tx, res_rx) = bounded::<(u64, Result<Done>)>(inflight);
    let abort = AtomicBool::new(false);
    let progress = src.archive.progress(plan.source.volsize(), "copy");
    let mut first_err: Option<Error> = None;
    std::thread::scope(|s| {
        let (feed_res, abort_f) = (res_tx.clone(), &abort);
        s.spawn(move || {
            let mut seq = 0u64;
            let mut send = |item: Item| -> bool {
                if tok_rx.recv().is_err() || abort_f.load(Ordering::Relaxed) {
                    return false;
                }
                let ok = match item {
                    Item::Plain(v) => feed_res.send((seq, Ok(Done::Plain(v)))).is_ok(),
                    Item::Taken(st) => feed_res.send((seq, Ok(Done::Taken(st)))).is_ok(),
                    copy => job_tx.send((seq, copy)).is_ok(),
                };
                seq += 1;
                ok
            };
            let walk = Diff::new(plan.views());
            let batch = batched.then_some(per_batch);
            if let Err(e) = feed(walk, reuse, batch, &reader, &mut send) {
                // Stops the pipeline in order: everything before it is applied first.
                send_err(&feed_res, &tok_rx, seq, e);
            }
        });
        for _ in 0..workers {
            let (job_rx, res_tx, abort) = (job_rx.clone(), res_tx.clone(), &abort);
            let w = out.w;
            s.spawn(move || {
                for (seq, item) in job_rx.iter() {
                    if abort.load(Ordering::Relaxed) {
                        break;
                    }
                    let done = copy_item(src, w, item);
                    if res_tx.send((seq, done)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(res_tx);
        drop(job_rx);
        let mut tok_tx = Some(tok_tx);
        let mut pending: BTreeMap<u64, Result<Done>> = BTreeMap::new();
        let (mut next, mut reached) = (0u64, 0u64);
        for (seq, r) in res_rx.iter() {
            pending.insert(seq, r);
            if first_err.is_some() {
                continue;
            }
            while let Some(r) = pending.remove(&next) {
                next += 1;
                let applied = r.and_then(|d| out.apply(d)).and_then(|at| {
                    if out.due() {
                        out.checkpoint()?;
                    }
                    Ok(at)
                });
                match applied {
                    Ok(at) => {
                        if let Some(at) = at.filter(|&a| a > reached) {
                            progress.inc((at - reached) * cs);
                            reached = at;
                        }
                        if let Some(t) = &tok_tx {
                            let _ = t.send(());
                        }
                    }
                    Err(e) => {
                        abort.store(true, Ordering::Relaxed);
                        first_err = Some(e);
                        // Wakes the feeder so every thread winds down.
                        tok_tx = None;
                        break;
                    }
                }
            }
        }
    });
    progress.finish();
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// An error of the walk or of a batched fetch, as the next item.
fn send_err(
    res: &crossbeam_channel::Sender<(u64, Result<Done>)>,
    tok: &crossbeam_channel::Receiver<()>,
    seq: u64,
    e: Error,
) {
    if tok.recv().is_ok() {
        let _ = res.send((seq, Err(e)));
    }
}

/// The feeder: the walk as items; with `batch`, chunks to copy are fetched that many at a
/// time (a remote source), else each by the worker that copies it.
fn feed(
    walk: Diff,
    mut reuse: Option<ReuseCursor>,
    batch: Option<usize>,
    reader: &ChunkReader,
    send: &mut dyn FnMut(Item) -> bool,
) -> Result<()> {
    let per_batch = batch.unwrap_or(1);
    let mut pending: Vec<Item> = Vec::new();
    let mut plain: Vec<Step> = Vec::new();
    let mut copies = 0usize;
    let mut flush = |pending: &mut Vec<Item>, copies: &mut usize| -> Result<bool> {
        if batch.is_some() && *copies > 0 {
            let locs: Vec<ChunkLoc> = pending
                .iter()
                .filter_map(|i| match i {
                    Item::Copy { loc, .. } => Some(loc.clone()),
                    _ => None,
                })
                .collect();
            let mut files = reader.fetch(&locs)?.into_iter();
            for i in pending.iter_mut() {
                if let Item::Copy { file, .. } = i {
                    *file = Some(files.next().expect("one file per chunk"));
                }
            }
        }
        *copies = 0;
        Ok(pending.drain(..).all(&mut *send))
    };
    for step in walk {
        match step? {
            Step::Copy { loc, prev } => {
                let staged = reuse
                    .as_mut()
                    .and_then(|c| c.get(loc.idx))
                    .filter(|st| st.digest == copy_digest(&loc.hash));
                if let (Some(st), Some(p)) = (&staged, &prev) {
                    if st.hash == p.hash {
                        plain.push(Step::Keep(*p));
                        continue;
                    }
                }
                if !plain.is_empty() {
                    pending.push(Item::Plain(std::mem::take(&mut plain)));
                }
                match staged {
                    Some(st) => pending.push(Item::Taken(st)),
                    None => {
                        pending.push(Item::Copy {
                            loc,
                            prev,
                            file: None,
                        });
                        copies += 1;
                    }
                }
                if copies >= per_batch && !flush(&mut pending, &mut copies)? {
                    return Ok(());
                }
            }
            other => {
                plain.push(other);
                if plain.len() >= PLAIN {
                    pending.push(Item::Plain(std::mem::take(&mut plain)));
                    if copies == 0 && !flush(&mut pending, &mut copies)? {
                        return Ok(());
                    }
                }
            }
        }
    }
    if !plain.is_empty() {
        pending.push(Item::Plain(plain));
    }
    flush(&mut pending, &mut copies)?;
    Ok(())
}

/// A worker's part: one chunk verified and staged in the copy.
fn copy_item(src: &Source, w: &SessionWriter, item: Item) -> Result<Done> {
    let Item::Copy { loc, prev, file } = item else {
        unreachable!("only copies go to the workers");
    };
    let file = match file {
        Some(f) => f,
        None => src
            .archive
            .chunks()
            .fetch(std::slice::from_ref(&loc))?
            .pop()
            .expect("one file"),
    };
    let read = file.as_ref().map_or(0, |f| f.len() as u64);
    let copied = w.copy_chunk(
        src.archive,
        src.how,
        &loc,
        file,
        prev.as_ref().map(|p| &p.hash),
    )?;
    Ok(Done::Copied {
        loc,
        prev,
        copied,
        read,
    })
}
