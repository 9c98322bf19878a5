//! The walk: the source in address order, handing out only what must be looked at.
//!
//! [`Walk`] is an iterator of [`Job`]s in strictly increasing chunk order: a data chunk read
//! once for every lane that looks at it (the chunks a copy-on-write map marks, then every chunk
//! beyond the previous end; or every chunk holding data in a full scan), and *ranges* of holes,
//! zeros without being read. A range of holes is cut where the set of lanes looking at its
//! chunks changes, so each job carries one lane mask. Lanes that failed are no longer looked
//! at; once all have failed the walk ends.

use crate::archive::digests::{Digest, DigestCursor};
use crate::archive::resume::{ReuseCursor, Staged};
use crate::error::Result;
use crate::format::manifest::{chunk_len, ChunkRef};
use crate::source::Source;

use super::lanes::Lane;

/// How many marked chunks ahead of the walk the kernel is asked to read.
const READ_AHEAD: usize = 16;

/// What the walk found for one lane at a data chunk.
pub(super) struct LaneJob {
    pub old: Option<ChunkRef>,
    pub old_digest: Option<Digest>,
    /// What an interrupted send staged for this chunk.
    pub staged: Option<Staged>,
}

/// What the walk hands on, in address order.
pub(super) enum Job {
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

/// The walk's own view of one lane: which chunks it looks at, and its cursors.
struct ReadLane<'a, 'w> {
    lane: &'a Lane<'w>,
    marks: Option<&'a [u64]>,
    /// The next mark at or after the walk's position.
    pos: usize,
    /// Below this a marked lane looks only at its marks; from it on at every chunk (beyond
    /// the previous end).
    lim: u64,
    digests: DigestCursor,
    staged: Option<ReuseCursor>,
}

impl ReadLane<'_, '_> {
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

    /// What this lane knows of data chunk `idx`.
    fn job(&mut self, idx: u64) -> Result<LaneJob> {
        let old = match self.lane.old.as_ref().map(|o| o.get(idx)) {
            Some(Ok(v)) => v.map(|(r, _)| r),
            Some(Err(e)) => return Err(e),
            None => None,
        };
        Ok(LaneJob {
            old,
            old_digest: self.digests.get(idx),
            staged: self.staged.as_mut().and_then(|c| c.get(idx)),
        })
    }
}

/// The source's chunks `0..n` as [`Job`]s for the lanes.
pub(super) struct Walk<'a, 'w> {
    src: &'a Source,
    cs: u64,
    n: u64,
    lanes: Vec<ReadLane<'a, 'w>>,
    /// The next chunk to consider.
    idx: u64,
    /// No data before this offset (from the last SEEK_DATA answer).
    data_from: u64,
}

impl<'a, 'w> Walk<'a, 'w> {
    pub fn new(lanes: &'a [Lane<'w>], src: &'a Source, cs: u64, n: u64) -> Walk<'a, 'w> {
        let lanes: Vec<ReadLane> = lanes
            .iter()
            .map(|l| ReadLane {
                lane: l,
                marks: l.marks.as_deref(),
                pos: 0,
                lim: n.min(l.old_n),
                digests: DigestCursor::open(l.local_vol.as_deref(), l.last.as_ref(), cs),
                staged: l.writer.session().and_then(|w| w.reuse_cursor()),
            })
            .collect();
        for rl in &lanes {
            for &c in rl.marks.unwrap_or(&[]).iter().take(READ_AHEAD) {
                src.will_need(c * cs, cs);
            }
        }
        Walk {
            src,
            cs,
            n,
            lanes,
            idx: 0,
            data_from: 0,
        }
    }

    /// The end of the run of holes starting at chunk `idx`: up to the next data (whole
    /// chunks), cut where the set of lanes looking at the chunks changes.
    fn holes_end(&mut self, idx: u64, mask: u64) -> u64 {
        let (cs, n) = (self.cs, self.n);
        let mut end = (self.data_from / cs).min(n);
        if chunk_len(end.saturating_sub(1), self.src.size, cs) != cs {
            end = end.saturating_sub(1).max(idx + 1);
        }
        for (l, rl) in self.lanes.iter_mut().enumerate() {
            if rl.lane.is_failed() {
                continue;
            }
            if mask & (1 << l) == 0 {
                end = end.min(rl.next_wanted(idx));
            } else if rl.marks.is_some() && idx < rl.lim {
                end = idx + 1;
            }
        }
        end.max(idx + 1)
    }
}

impl Iterator for Walk<'_, '_> {
    type Item = Result<Job>;

    fn next(&mut self) -> Option<Result<Job>> {
        let (src, cs) = (self.src, self.cs);
        // The next chunk any lane looks at: every chunk for a full scan; for a marked lane its
        // marks, then every chunk beyond the previous end.
        let mut next = self.n;
        for rl in &mut self.lanes {
            if !rl.lane.is_failed() {
                next = next.min(rl.next_wanted(self.idx));
            }
        }
        if next >= self.n {
            return None;
        }
        let idx = next;
        self.idx = idx;
        let mut mask = 0u64;
        for (l, rl) in self.lanes.iter_mut().enumerate() {
            if !rl.lane.is_failed() && rl.next_wanted(idx) == idx {
                mask |= 1 << l;
                rl.read_ahead(src, idx, cs);
            }
        }
        let (off, len) = (idx * cs, chunk_len(idx, src.size, cs));
        if len == cs && off + len > self.data_from {
            self.data_from = src.next_data(off);
        }
        if len == cs && off + len <= self.data_from {
            let end = self.holes_end(idx, mask);
            self.idx = end;
            return Some(Ok(Job::Holes(idx, end, mask)));
        }
        let mut buf = vec![0u8; len as usize];
        if let Err(e) = src.read_at(&mut buf, off) {
            self.n = 0; // nothing after a failed read
            return Some(Err(e));
        }
        let lanes = self
            .lanes
            .iter_mut()
            .enumerate()
            .map(|(l, rl)| (mask & (1 << l) != 0).then(|| rl.job(idx)))
            .collect();
        self.idx = idx + 1;
        Some(Ok(Job::Data { idx, buf, lanes }))
    }
}
