//! What one session of the source adds to the copy: the source session's merged view walked in
//! step with the copy's newest view, as the steps that build the copied session's manifest
//! and merged view.
//!
//! Invariants:
//! * Steps come in strictly ascending chunk order, and every chunk of the new view is decided:
//!   carried over from the copy's previous view ([`Step::Keep`]), a zero line ([`Step::Zeros`]:
//!   data that became zero, and every zero beyond the previous end, as the format lists them),
//!   or source data the copy must get or check ([`Step::Copy`]); chunks zero in both views
//!   need nothing.
//! * A chunk is kept without reading it only when its content is known to be the same: equal
//!   hashes where both archives hash alike, else through one session both archives hold (the
//!   source's view unchanged there since that session, and the copy's too). Everything else is
//!   a [`Step::Copy`] with what the copy holds there, compared after hashing for the copy.
//! * Memory is a block of each view at a time: both views are walked as streams, and the
//!   session both hold is looked up by index.

use std::iter::Peekable;

use crate::archive::index::{IndexIter, MergedIndex, Rec};
use crate::archive::ChunkLoc;
use crate::error::Result;
use crate::format::manifest::ChunkRef;

/// One decision of the walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// The copy's previous view already holds this content: carried over (its place kept).
    Keep(Rec),
    /// Zero lines for chunks `from..to`.
    Zeros(u64, u64),
    /// Source data the copy needs at `loc.idx`; `prev` is the data the copy's previous view
    /// holds there, to compare with once the chunk is hashed for the copy.
    Copy { loc: ChunkLoc, prev: Option<Rec> },
}

/// The views a walk compares.
pub(super) struct Views<'a> {
    /// The source session's merged view.
    pub source: &'a MergedIndex,
    /// The copy's newest view (`None`: the copy has no session of this volume yet).
    pub copy: Option<&'a MergedIndex>,
    /// Hashes of the two archives name the same content (both unencrypted, hashed and
    /// compressed alike): compared directly.
    pub same_hashes: bool,
    /// Otherwise, one session both archives hold (the source's view of it, the copy's view of
    /// it): where neither side changed since, the content is the same.
    pub common: Option<(&'a MergedIndex, &'a MergedIndex)>,
}

/// The walk, as an iterator of steps.
pub(super) struct Diff<'a> {
    v: Views<'a>,
    source: Peekable<IndexIter<'a>>,
    copy: Option<Peekable<IndexIter<'a>>>,
    /// Chunks of the new view and of the copy's previous view.
    n_new: u64,
    n_old: u64,
    /// Every chunk below this is decided.
    pos: u64,
    done: bool,
}

impl<'a> Diff<'a> {
    pub fn new(v: Views<'a>) -> Diff<'a> {
        Diff {
            source: v.source.iter_from(0).peekable(),
            copy: v.copy.map(|c| c.iter_from(0).peekable()),
            n_new: v.source.chunks(),
            n_old: v.copy.map_or(0, |c| c.chunks()),
            pos: 0,
            done: false,
            v,
        }
    }

    /// Whether the content at `idx` is the same in the source (`s`) and the copy (`c`).
    fn same(&self, s: &Rec, c: &Rec) -> Result<bool> {
        if self.v.same_hashes {
            return Ok(s.hash == c.hash);
        }
        let Some((cs, cc)) = self.v.common else {
            return Ok(false);
        };
        let held = |ix: &MergedIndex, h| -> Result<bool> {
            Ok(matches!(ix.get(s.idx)?, Some((ChunkRef::Data(x), _)) if x == h))
        };
        Ok(held(cs, s.hash)? && held(cc, c.hash)?)
    }

    fn decide(&self, idx: u64, s: Option<Rec>, c: Option<Rec>) -> Result<Option<Step>> {
        Ok(match (s, c) {
            (None, None) => None,
            // Data in the copy that is zero now.
            (None, Some(_)) => Some(Step::Zeros(idx, idx + 1)),
            (Some(s), None) => Some(Step::Copy {
                loc: self.v.source.loc(&s),
                prev: None,
            }),
            (Some(s), Some(c)) if self.same(&s, &c)? => Some(Step::Keep(c)),
            (Some(s), Some(c)) => Some(Step::Copy {
                loc: self.v.source.loc(&s),
                prev: Some(c),
            }),
        })
    }

    fn step(&mut self) -> Result<Option<Step>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let ns = head(&mut self.source)?.unwrap_or(u64::MAX);
            let nc = match &mut self.copy {
                Some(c) => head(c)?.unwrap_or(u64::MAX),
                None => u64::MAX,
            };
            let next = ns.min(nc).min(self.n_new);
            // Beyond the previous end every chunk is listed: zeros up to the next data.
            let zfrom = self.pos.max(self.n_old);
            if zfrom < next {
                self.pos = next;
                return Ok(Some(Step::Zeros(zfrom, next)));
            }
            if next >= self.n_new {
                self.done = true;
                return Ok(None);
            }
            let s = take_at(&mut self.source, ns == next)?;
            let c = match &mut self.copy {
                Some(it) => take_at(it, nc == next)?,
                None => None,
            };
            self.pos = next + 1;
            if let Some(step) = self.decide(next, s, c)? {
                return Ok(Some(step));
            }
        }
    }
}

/// The index of the next entry, if any (an error of the stream is returned).
fn head(it: &mut Peekable<IndexIter<'_>>) -> Result<Option<u64>> {
    match it.peek() {
        Some(Ok(r)) => Ok(Some(r.idx)),
        Some(Err(_)) => Err(it.next().expect("peeked").expect_err("an error")),
        None => Ok(None),
    }
}

fn take_at(it: &mut Peekable<IndexIter<'_>>, here: bool) -> Result<Option<Rec>> {
    if !here {
        return Ok(None);
    }
    it.next().transpose()
}

impl Iterator for Diff<'_> {
    type Item = Result<Step>;

    fn next(&mut self) -> Option<Result<Step>> {
        match self.step() {
            Ok(s) => s.map(Ok),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::index::Builder;
    use crate::format::{Hash32, SessionName, VolumeId};

    const CS: u64 = 65536;

    /// A view of `n` chunks with data `(idx, hash byte)`, all in one session directory.
    fn view(n: u64, data: &[(u64, u8)], dir: &std::path::Path) -> MergedIndex {
        let vid = VolumeId::parse("Vol_1").unwrap();
        let origins = vec![SessionName::parse("S_20261123-153256").unwrap()];
        let mut b = Builder::new(None, dir, &vid, CS, n * CS, origins).unwrap();
        for &(i, h) in data {
            b.push(i, Hash32([h; 32]), 0).unwrap();
        }
        b.finish([7; 32], None).unwrap()
    }

    fn steps(v: Views) -> Vec<String> {
        Diff::new(v)
            .map(|s| match s.unwrap() {
                Step::Keep(r) => format!("keep {}", r.idx),
                Step::Zeros(a, b) => format!("zeros {a}..{b}"),
                Step::Copy { loc, prev } => {
                    format!(
                        "copy {}{}",
                        loc.idx,
                        if prev.is_some() { " vs" } else { "" }
                    )
                }
            })
            .collect()
    }

    #[test]
    fn a_first_session_lists_every_chunk() {
        let d = tempfile::tempdir().unwrap();
        let s = view(6, &[(1, 1), (2, 2), (5, 5)], d.path());
        let got = steps(Views {
            source: &s,
            copy: None,
            same_hashes: true,
            common: None,
        });
        assert_eq!(
            got,
            ["zeros 0..1", "copy 1", "copy 2", "zeros 3..5", "copy 5"]
        );
    }

    #[test]
    fn later_sessions_list_changes_growth_and_shrink() {
        let d = tempfile::tempdir().unwrap();
        let old = view(5, &[(0, 1), (1, 1), (2, 2), (4, 4)], d.path());
        // Chunk 1 changed, 2 became zero, 3 new data, 4 same, grown to 8 with data at 6.
        let new = view(8, &[(0, 1), (1, 9), (3, 3), (4, 4), (6, 6)], d.path());
        let got = steps(Views {
            source: &new,
            copy: Some(&old),
            same_hashes: true,
            common: None,
        });
        assert_eq!(
            got,
            [
                "keep 0",
                "copy 1 vs",
                "zeros 2..3",
                "copy 3",
                "keep 4",
                "zeros 5..6",
                "copy 6",
                "zeros 7..8"
            ]
        );
        // Shrunk to 2 chunks: nothing beyond is listed.
        let small = view(2, &[(0, 1), (1, 1)], d.path());
        let got = steps(Views {
            source: &small,
            copy: Some(&old),
            same_hashes: true,
            common: None,
        });
        assert_eq!(got, ["keep 0", "keep 1"]);
    }

    #[test]
    fn other_hashes_are_compared_through_a_common_session() {
        let d = tempfile::tempdir().unwrap();
        // The source's hashes (1x) and the copy's (2x) differ; the common session holds
        // chunks 0 and 1 in both; since then the source changed chunk 1, the copy chunk 0.
        let common_src = view(3, &[(0, 10), (1, 11)], d.path());
        let common_copy = view(3, &[(0, 20), (1, 21)], d.path());
        let source = view(3, &[(0, 10), (1, 12), (2, 13)], d.path());
        let copy = view(3, &[(0, 29), (1, 21)], d.path());
        let got = steps(Views {
            source: &source,
            copy: Some(&copy),
            same_hashes: false,
            common: Some((&common_src, &common_copy)),
        });
        assert_eq!(got, ["copy 0 vs", "copy 1 vs", "copy 2"]);
        let got = steps(Views {
            source: &source,
            copy: Some(&common_copy),
            same_hashes: false,
            common: Some((&common_src, &common_copy)),
        });
        assert_eq!(got, ["keep 0", "copy 1 vs", "copy 2"]);
        // Without a common session nothing can be kept unread.
        let got = steps(Views {
            source: &source,
            copy: Some(&common_copy),
            same_hashes: false,
            common: None,
        });
        assert_eq!(got, ["copy 0 vs", "copy 1 vs", "copy 2"]);
    }
}
