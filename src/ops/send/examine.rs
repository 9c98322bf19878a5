//! Examining a chunk, on the workers: what a data chunk is to each lane, compared with that
//! lane's previous session, storing or linking it there when it is new.
//!
//! The zero test and the raw digest are done once per chunk, the compression once per
//! compressor (archives that compress alike share it). A chunk is only compressed when its raw
//! digest differs from the previous send's: the same raw bytes are the same stored chunk.

use std::sync::atomic::Ordering;

use crate::archive::digests::{self, Digest};
use crate::archive::Archive;
use crate::error::Result;
use crate::format::manifest::ChunkRef;
use crate::format::{Hash32, SessionName};
use crate::ops::is_all_zero;

use super::lanes::Lane;
use super::walk::{Job, LaneJob};

/// What the workers found, per lane, in address order.
pub(super) enum Found {
    /// Whole chunks `from..to` that are holes, for the lanes of the mask.
    Holes(u64, u64, u64),
    /// A chunk of `len` bytes read: per lane, what it made of it (`None`: it did not look).
    Data {
        len: u64,
        outcomes: Vec<Option<Result<Outcome>>>,
    },
}

/// What a lane made of one data chunk.
pub(super) enum Outcome {
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

/// A worker's part: holes pass through, data chunks are examined.
pub(super) fn job(lanes: &[Lane], name: &SessionName, cs: u64, job: Job) -> Found {
    match job {
        Job::Holes(a, b, m) => Found::Holes(a, b, m),
        Job::Data {
            idx,
            buf,
            lanes: jobs,
        } => Found::Data {
            len: buf.len() as u64,
            outcomes: examine(lanes, name, cs, idx, &buf, jobs),
        },
    }
}

/// What one data chunk is to each lane that looks at it.
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
    // Compressed once per compression setting: archives that compress alike share it.
    let mut shared = crate::archive::SharedChunk::new(buf);
    let several = jobs.iter().filter(|j| j.is_some()).count() > 1;
    lanes
        .iter()
        .zip(jobs)
        .map(|(lane, j)| {
            let j = j.filter(|_| !lane.is_failed())?;
            let mut hash = |a: &Archive| {
                if several {
                    shared.hash_for(a)
                } else {
                    a.hash_chunk(buf)
                }
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
