//! A session's merged view walked in address order as data chunks and *ranges* of zero
//! chunks, so that commands comparing or restoring a whole volume do work per data chunk and
//! per zero range, never per chunk slot of a sparse volume.

use std::fs::File;

use crate::archive::index::{MergedIndex, Rec};
use crate::error::Result;

/// A piece of a merged view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg {
    Data(Rec),
    /// Chunks `from..to` are zero.
    Zeros(u64, u64),
}

/// Every chunk of the view, in order.
pub fn walk(ix: &MergedIndex) -> impl Iterator<Item = Result<Seg>> + Send + '_ {
    let n = ix.chunks();
    let mut entries = ix.iter_from(0);
    let mut next = 0u64;
    let mut held: Option<Rec> = None;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        if let Some(r) = held.take() {
            next = r.idx + 1;
            return Some(Ok(Seg::Data(r)));
        }
        match entries.next() {
            Some(Err(e)) => {
                done = true;
                Some(Err(e))
            }
            Some(Ok(r)) if r.idx > next => {
                let gap = Seg::Zeros(next, r.idx);
                held = Some(r);
                Some(Ok(gap))
            }
            Some(Ok(r)) => {
                next = r.idx + 1;
                Some(Ok(Seg::Data(r)))
            }
            None => {
                done = true;
                (next < n).then_some(Ok(Seg::Zeros(next, n)))
            }
        }
    })
}

/// Only the chunks `only` names (ascending, duplicates allowed), as the view holds them.
pub fn select<'a>(
    ix: &'a MergedIndex,
    only: impl Iterator<Item = Result<u64>> + Send + 'a,
) -> impl Iterator<Item = Result<Seg>> + Send + 'a {
    let n = ix.chunks();
    let mut last: Option<u64> = None;
    only.filter_map(move |i| {
        let i = match i {
            Ok(i) => i,
            Err(e) => return Some(Err(e)),
        };
        if i >= n || last.is_some_and(|l| i <= l) {
            return None;
        }
        last = Some(i);
        Some(ix.get(i).map(|v| match v {
            Some((_, Some(rec))) => Seg::Data(rec),
            _ => Seg::Zeros(i, i + 1),
        }))
    })
}

/// The chunks among `from..to` (of `chunksize` bytes) where an open file may hold data: all of
/// them for a device, only those `SEEK_DATA` reports for a file.
pub(crate) fn local_data_chunks(
    f: &File,
    block: bool,
    from: u64,
    to: u64,
    chunksize: u64,
) -> impl Iterator<Item = u64> + '_ {
    let mut idx = from;
    std::iter::from_fn(move || {
        if idx >= to {
            return None;
        }
        if !block {
            let d = crate::source::seek_data(f, idx * chunksize);
            if d == u64::MAX {
                idx = to;
                return None;
            }
            idx = idx.max(d / chunksize);
            if idx >= to {
                return None;
            }
        }
        idx += 1;
        Some(idx - 1)
    })
}

/// Compares local data with a view on one worker per core: `local` gets each segment and calls
/// `fetch` for every chunk that must come from the archive; those are read (verified) as they
/// come and handed to `sink`. Nothing is held per chunk: segments and fetches flow through
/// bounded channels. Returns what was fetched.
pub fn compare<L, S>(
    archive: &crate::archive::Archive,
    segs: impl Iterator<Item = Result<Seg>> + Send,
    local: L,
    sink: S,
) -> Result<crate::archive::chunks::RunStats>
where
    L: Fn(Seg, &dyn Fn(crate::archive::ChunkLoc) -> Result<()>) -> Result<()> + Sync,
    S: Fn(&crate::archive::ChunkLoc, Vec<u8>) -> Result<()> + Sync,
{
    use crate::error::Error;
    use crossbeam_channel::bounded;
    let workers = archive.tuning().workers();
    let (seg_tx, seg_rx) = bounded::<Seg>(workers * 4);
    let (fetch_tx, fetch_rx) = bounded::<Result<crate::archive::ChunkLoc>>(workers * 8);
    std::thread::scope(|s| {
        let feeder_tx = fetch_tx.clone();
        s.spawn(move || {
            for seg in segs {
                match seg {
                    Ok(seg) => {
                        if seg_tx.send(seg).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = feeder_tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        for _ in 0..workers {
            let (seg_rx, fetch_tx, local) = (seg_rx.clone(), fetch_tx.clone(), &local);
            s.spawn(move || {
                let fetch = |loc| fetch_tx.send(Ok(loc)).map_err(|_| Error::Interrupted);
                for seg in seg_rx.iter() {
                    if let Err(e) = local(seg, &fetch) {
                        let _ = fetch_tx.send(Err(e));
                        return;
                    }
                }
            });
        }
        drop(fetch_tx);
        drop(seg_rx);
        archive
            .chunks()
            .run(fetch_rx.into_iter(), sink, |_, e| Err(e))
    })
}
