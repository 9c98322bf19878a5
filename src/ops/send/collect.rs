//! The collector, on the calling thread: takes what the workers found **in address order** and
//! walks each lane's previous merged view in step, producing the new session's manifest lines,
//! its merged view (with its `mfcs`) and the next digest map.
//!
//! Invariants: every chunk below [`Output::next`] has been emitted exactly once (carried over
//! from the previous view, or replaced); the view's entries and the manifest's lines are pushed
//! in increasing order; a lane's first error is kept and the lane marked failed, which stops
//! every stage from looking at it again. Every few seconds (and every `every` bytes stored) a
//! lane checkpoints what it staged, for a resume.

use std::sync::atomic::Ordering;

use crate::archive::digests::{Digest, DigestCursor};
use crate::archive::index::Rec;
use crate::archive::resume::Staged;
use crate::archive::SessionWriter;
use crate::error::{Error, Result};
use crate::format::manifest::ChunkRef;
use crate::format::Hash32;

use super::examine::{Found, Outcome};
use super::lanes::{Collected, Lane};

/// A lane's checkpoint also falls due this long after the last one (besides every
/// `every` bytes stored).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

type OldRecs<'a> = std::iter::Peekable<Box<dyn Iterator<Item = Result<Rec>> + 'a>>;

/// One lane's collector: its walk of the previous view and what it produces for the new one.
pub(super) struct Output<'a, 'w> {
    pub lane: &'a Lane<'w>,
    cursor: OldRecs<'a>,
    /// Every chunk below this has been emitted.
    next: u64,
    /// The previous digest map, for the digests of chunks carried over unchanged.
    old_digests: DigestCursor,
    /// Staged since the last checkpoint: (address, hash) for the resume record, and the
    /// chunks to take from an interrupted send.
    staged: Vec<Staged>,
    since_bytes: u64,
    since: std::time::Instant,
    /// Stored bytes between checkpoints.
    every: u64,
    /// The lane's first error.
    err: Option<Error>,
    c: Collected,
}

impl<'a, 'w> Output<'a, 'w> {
    pub fn new(
        lane: &'a Lane<'w>,
        start: Collected,
        cs: u64,
        every: u64,
        now: std::time::Instant,
    ) -> Self {
        let cursor: Box<dyn Iterator<Item = Result<Rec>> + 'a> = match &lane.old {
            Some(o) => Box::new(o.iter_from(0)),
            None => Box::new(std::iter::empty()),
        };
        Output {
            lane,
            cursor: cursor.peekable(),
            next: 0,
            old_digests: DigestCursor::open(lane.local_vol.as_deref(), lane.last.as_ref(), cs),
            staged: Vec::new(),
            since_bytes: 0,
            since: now,
            every,
            err: None,
            c: start,
        }
    }

    /// Marks the lane failed with its first error: it drops out, the others go on.
    pub fn fail(&mut self, e: Error) {
        self.lane.failed.store(true, Ordering::Relaxed);
        tracing::debug!("{}: lane failed: {e}", self.lane.writer.archive().url());
        self.err.get_or_insert(e);
    }

    fn check(&mut self, r: Result<()>) {
        if let Err(e) = r {
            self.fail(e);
        }
    }

    /// What the lane built, or its first error (what it built then dropped).
    pub fn finish(self) -> Result<Collected> {
        match self.err {
            Some(e) => {
                self.c.discard();
                Err(e)
            }
            None => Ok(self.c),
        }
    }

    fn line(&mut self, idx: u64, r: &ChunkRef) -> Result<()> {
        self.c.manifest_lines += 1;
        if let Some(m) = &mut self.c.manifest {
            m.entry(idx, r)
                .map_err(|e| Error::io("manifest spool", e))?;
        }
        Ok(())
    }

    fn zero_lines(&mut self, from: u64, to: u64) -> Result<()> {
        if to <= from {
            return Ok(());
        }
        self.c.manifest_lines += to - from;
        if let Some(m) = &mut self.c.manifest {
            m.zeros(from, to)
                .map_err(|e| Error::io("manifest spool", e))?;
        }
        Ok(())
    }

    fn view(&mut self, idx: u64, hash: Hash32, origin: u16) -> Result<()> {
        if let Some(v) = &mut self.c.view {
            v.push(idx, hash, origin)?;
        }
        Ok(())
    }

    fn digest(&mut self, idx: u64, d: &Digest) -> Result<()> {
        if let Some(w) = &mut self.c.digests {
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
    pub fn carry(&mut self, to: u64) -> Result<()> {
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
        let old_n = self.lane.old_n;
        if to > old_n.max(self.next) {
            // The walk covers every chunk beyond the previous end.
            return Err(Error::io(
                "send",
                std::io::Error::other(format!(
                    "chunk {} was neither read nor in the previous session",
                    old_n.max(self.next)
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
                self.view(idx, hash, self.lane.me)?;
                self.digest(idx, &digest)?;
                self.c.data += 1;
                self.c.stored += bytes;
                self.since_bytes += bytes;
                if let Some(t) = taken {
                    self.c.taken += 1;
                    self.c.taken_bytes += t;
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
            self.c.zero += 1;
        }
        // Addresses the previous view did not have at all.
        let start = from.max(self.lane.old_n);
        if to > start {
            self.zero_lines(start, to)?;
            self.c.zero += to - start;
        }
        self.next = to;
        Ok(())
    }

    /// Applies one chunk's outcome for this lane; taking a file an interrupted send staged
    /// also queues its move.
    fn outcome(&mut self, o: Result<Outcome>) -> Result<()> {
        let o = o?;
        if let Outcome::Changed {
            idx,
            taken: Some(_),
            ..
        } = &o
        {
            let w = self.lane.writer.session();
            self.c.moves.extend(w.and_then(|w| w.take(*idx)));
        }
        self.apply(o)
    }

    /// Whether this lane's staged chunks should be made durable and recorded now.
    fn due(&self) -> bool {
        self.c.moves.len() >= 2000
            || (!self.staged.is_empty()
                && (self.since_bytes >= self.every || self.since.elapsed() >= CHECKPOINT_EVERY))
    }

    fn checkpoint(&mut self, w: &SessionWriter) -> Result<()> {
        w.checkpoint(&self.staged, &self.c.moves)?;
        self.staged.clear();
        self.c.moves.clear();
        self.since_bytes = 0;
        self.since = std::time::Instant::now();
        Ok(())
    }
}

/// Takes the next item in address order into every lane's output; returns the bytes of
/// the volume it covers (for the progress).
pub(super) fn collect(outs: &mut [Output], found: Found, cs: u64) -> u64 {
    let bytes = match found {
        Found::Holes(a, b, mask) => {
            for (l, out) in outs.iter_mut().enumerate() {
                if mask & (1 << l) != 0 && !out.lane.is_failed() {
                    let r = out.zeros(a, b);
                    out.check(r);
                }
            }
            (b - a) * cs
        }
        Found::Data { outcomes, .. } => {
            for (out, o) in outs.iter_mut().zip(outcomes) {
                if let Some(o) = o.filter(|_| !out.lane.is_failed()) {
                    let r = out.outcome(o);
                    out.check(r);
                }
            }
            cs
        }
    };
    for out in outs.iter_mut() {
        let lane = out.lane;
        if let (Some(w), false) = (lane.writer.session(), lane.is_failed()) {
            if out.due() {
                let r = out.checkpoint(w);
                out.check(r);
            }
        }
    }
    bytes
}
