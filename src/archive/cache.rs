//! Decoded chunks kept for long-lived readers: the mount, file browsing and NBD serving share
//! one [`ChunkCache`] through [`super::live::LiveArchive`].
//!
//! Invariants:
//! * **Only verified chunks enter.** A value is what the chunk reader returned for a location
//!   whose manifest hash is the key: a hit is as good as a fresh, checked read. A chunk that
//!   fails its checks is never cached (its next read fails again, as it should).
//! * **Bounded by bytes**, not entries (chunk sizes differ between archives, and the last chunk
//!   of a volume may be short).
//! * **Single flight.** While one thread reads or decodes a chunk, others that want it wait for
//!   that result instead of fetching it again (neighbouring reads share a chunk; sessions share
//!   every chunk they did not change). A reader that fails lets the next waiter try for itself.

use std::sync::Arc;

use parking_lot::Mutex;
use quick_cache::sync::{Cache, GuardResult};
use quick_cache::Weighter;

use super::{Archive, ChunkLoc};
use crate::error::Result;
use crate::format::Hash32;

/// A decoded, verified chunk.
pub type Chunk = Arc<[u8]>;

#[derive(Clone)]
struct ByLength;

impl Weighter<Hash32, Chunk> for ByLength {
    fn weight(&self, _: &Hash32, v: &Chunk) -> u64 {
        v.len().max(1) as u64
    }
}

pub struct ChunkCache {
    chunks: Cache<Hash32, Chunk, ByLength>,
    /// One batched transfer at a time: a remote destination's reads share one connection, and
    /// two windows fetched at once would only interleave on it.
    transfer: Mutex<()>,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache")
            .field("bytes", &self.chunks.weight())
            .finish()
    }
}

impl ChunkCache {
    /// A cache of at most `bytes` of decoded chunks (at least 16 chunks of `chunksize`).
    pub fn new(bytes: u64, chunksize: u64) -> ChunkCache {
        let bytes = bytes.max(16 * chunksize);
        ChunkCache {
            chunks: Cache::with_weighter((bytes / chunksize) as usize, bytes, ByLength),
            transfer: Mutex::new(()),
        }
    }

    /// Whether the chunk of this hash is held now.
    pub fn contains(&self, hash: &Hash32) -> bool {
        self.chunks.contains_key(hash)
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.chunks.weight()
    }

    /// The verified chunk at `loc`, from the cache or read (once, whoever else asks meanwhile).
    pub fn get(&self, a: &Archive, loc: &ChunkLoc) -> Result<Chunk> {
        self.chunks
            .get_or_insert_with(&loc.hash, || a.chunks().read(loc).map(Chunk::from))
    }

    /// Reads the chunks of `locs` that are neither held nor being read by someone else, in one
    /// request to the destination (a remote destination's round trip is what a sequential
    /// reader waits for), and decodes them on two threads. A chunk that fails is left out: the
    /// read that wants it reads it again and reports why.
    pub(crate) fn fetch_window(
        &self,
        a: &Archive,
        locs: impl Iterator<Item = Result<ChunkLoc>>,
    ) -> Result<()> {
        let transfer = self.transfer.lock();
        let mut want = Vec::new();
        for loc in locs {
            let loc = loc?;
            // A zero timeout: a chunk someone else is reading is theirs to finish.
            if let GuardResult::Guard(g) = self
                .chunks
                .get_value_or_guard(&loc.hash, Some(std::time::Duration::ZERO))
            {
                want.push((loc, g));
            }
        }
        if want.is_empty() {
            return Ok(());
        }
        let reader = a.chunks();
        let paths: Vec<ChunkLoc> = want.iter().map(|(l, _)| l.clone()).collect();
        let files = reader.fetch(&paths)?;
        // Decoding can overlap the next transfer.
        drop(transfer);
        let mut jobs: Vec<_> = want.into_iter().zip(files).collect();
        let half = jobs.len().div_ceil(2);
        std::thread::scope(|s| {
            while !jobs.is_empty() {
                let part: Vec<_> = jobs.drain(..half.min(jobs.len())).collect();
                let reader = &reader;
                s.spawn(move || {
                    for ((loc, guard), file) in part {
                        if let Ok(data) = reader.decode(&loc, file) {
                            let _ = guard.insert(Chunk::from(data));
                        }
                    }
                });
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_is_bounded_by_bytes() {
        let c = ChunkCache::new(64 << 10, 4 << 10);
        for i in 0..100u8 {
            c.chunks
                .insert(Hash32([i; 32]), Chunk::from(vec![i; 4 << 10]));
        }
        assert!(c.bytes() <= 64 << 10, "{} bytes held", c.bytes());
        assert!(c.bytes() > 0);
    }

    #[test]
    fn one_read_for_many_waiters() {
        let c = Arc::new(ChunkCache::new(1 << 20, 4 << 10));
        let reads = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let v: Result<Chunk, ()> =
                        c.chunks.get_or_insert_with(&Hash32([7; 32]), || {
                            reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok(Chunk::from(vec![7u8; 10]))
                        });
                    assert_eq!(&v.unwrap()[..], &[7u8; 10]);
                });
            }
        });
        assert_eq!(reads.into_inner(), 1);
    }

    #[test]
    fn a_failed_read_is_not_cached() {
        let c = ChunkCache::new(1 << 20, 4 << 10);
        let r: Result<Chunk, &str> = c
            .chunks
            .get_or_insert_with(&Hash32([1; 32]), || Err("damaged"));
        assert!(r.is_err());
        assert!(!c.contains(&Hash32([1; 32])));
    }
}
