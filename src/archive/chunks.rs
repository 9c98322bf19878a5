//! Reading chunks: the one path by which chunk data leaves the archive. Every chunk is fetched
//! with a size bound, checked against its manifest hash in constant time (after decryption in
//! encrypted archives), decompressed strictly and length-checked before a byte of it is handed
//! on. A missing or damaged chunk is an error naming its file, never zeros or stale bytes.
//!
//! [`ChunkReader::run`] is the parallel pipeline that receive, verify, diff and arch-check use:
//! one feeder walks the caller's chunk list (a streamed merged view), remote destinations get
//! one round trip per batch of chunks instead of one per chunk, and one worker per core
//! verifies and decodes. Memory is a few batches of chunks, whatever the volume's size.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::{bounded, SendTimeoutError, Sender};

use super::{layout, Archive};
use crate::error::{Error, Result};
use crate::format::{Hash32, SessionName, VolumeId};

/// Where a chunk file is and what it must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLoc {
    /// Chunk index in the volume.
    pub idx: u64,
    pub hash: Hash32,
    /// Length of its raw data.
    pub len: u32,
    /// Path on the destination.
    pub path: String,
}

impl ChunkLoc {
    pub fn new(
        vid: &VolumeId,
        dir: &SessionName,
        idx: u64,
        chunksize: u64,
        hash: Hash32,
        len: u64,
    ) -> Self {
        ChunkLoc {
            idx,
            hash,
            len: len as u32,
            path: layout::chunk(vid, layout::Dir::Session(dir), idx * chunksize),
        }
    }
}

pub struct ChunkReader<'a> {
    a: &'a Archive,
}

/// A chunk for a worker: where it is, and its file if a batched fetch already read it.
type Fetched = (ChunkLoc, Option<Result<Option<Vec<u8>>>>);

/// What [`ChunkReader::run`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    pub chunks: u64,
    pub bytes: u64,
}

impl Archive {
    pub fn chunks(&self) -> ChunkReader<'_> {
        ChunkReader { a: self }
    }
}

impl ChunkReader<'_> {
    /// Largest chunk file accepted (format §1).
    pub(crate) fn max_file(&self) -> u64 {
        self.a.codec.max_chunk_file()
    }

    /// Whether fetching many chunks at once is much cheaper than one by one (remote).
    pub(crate) fn batched(&self) -> bool {
        self.a.dest.batch_reads()
    }

    /// Reads, verifies and decodes one chunk.
    pub fn read(&self, loc: &ChunkLoc) -> Result<Vec<u8>> {
        let f = self.a.dest.read(&loc.path, self.max_file())?;
        self.decode(loc, f)
    }

    /// The raw files of several chunks, in one request where the destination batches.
    pub fn fetch(&self, locs: &[ChunkLoc]) -> Result<Vec<Option<Vec<u8>>>> {
        let paths: Vec<String> = locs.iter().map(|l| l.path.clone()).collect();
        self.a.dest.read_many(&paths, self.max_file())
    }

    /// Verifies and decodes a fetched chunk file (`None`: it was missing).
    pub(crate) fn decode(&self, loc: &ChunkLoc, file: Option<Vec<u8>>) -> Result<Vec<u8>> {
        let f = file.ok_or_else(|| self.missing(loc))?;
        self.a
            .codec
            .decode_chunk(&f, &loc.hash, loc.len as usize, &loc.path)
    }

    /// A chunk file that is not there: damage, unless this reader holds no lock and the
    /// archive changed since it was loaded (another process pruned or deleted meanwhile).
    fn missing(&self, loc: &ChunkLoc) -> Error {
        if self.a.is_unlocked() && matches!(self.a.is_current(), Ok(false)) {
            return Error::ChangedWhileReading {
                url: self.a.url().to_string(),
            };
        }
        Error::corrupt(&loc.path, "chunk file is missing")
    }

    /// Whether the destination still has this chunk file (a long-lived reader checks this to
    /// tell a chunk moved by a prune from a lost one).
    pub fn exists(&self, loc: &ChunkLoc) -> Result<bool> {
        self.a.dest.exists(&loc.path)
    }

    /// Reads every chunk `jobs` names, in parallel, handing each verified chunk to `sink`
    /// (from any worker thread, in no particular order). A chunk that fails goes to
    /// `on_error`, which stops the run by returning the error or lets it continue (arch-check
    /// collects them). An error of `jobs` itself always stops it.
    pub fn run<J, S, E>(&self, jobs: J, sink: S, on_error: E) -> Result<RunStats>
    where
        J: Iterator<Item = Result<ChunkLoc>> + Send,
        S: Fn(&ChunkLoc, Vec<u8>) -> Result<()> + Sync,
        E: Fn(&ChunkLoc, Error) -> Result<()> + Sync,
    {
        let workers = self.a.tuning().workers();
        let batched = self.batched();
        let per_batch = self.per_batch();
        let (tx, rx) = bounded::<Fetched>((2 * per_batch).max(workers * 4));
        let failed = AtomicBool::new(false);
        let first_err = parking_lot::Mutex::new(None);
        let fail = |e: Error| {
            failed.store(true, Ordering::Relaxed);
            first_err.lock().get_or_insert(e);
        };
        let (chunks, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|s| {
            let (failed, fail) = (&failed, &fail);
            s.spawn(move || {
                let mut batch = Vec::with_capacity(per_batch);
                let flush = |batch: &mut Vec<ChunkLoc>| -> bool {
                    if batch.is_empty() {
                        return true;
                    }
                    let items: Vec<Fetched> = if batched {
                        match self.fetch(batch) {
                            Ok(files) => batch
                                .drain(..)
                                .zip(files)
                                .map(|(l, f)| (l, Some(Ok(f))))
                                .collect(),
                            Err(e) => {
                                fail(e);
                                return false;
                            }
                        }
                    } else {
                        batch.drain(..).map(|l| (l, None)).collect()
                    };
                    items
                        .into_iter()
                        .all(|item| send_watching(&tx, item, failed))
                };
                for job in jobs {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    match job {
                        Ok(loc) => {
                            batch.push(loc);
                            if batch.len() >= per_batch && !flush(&mut batch) {
                                return;
                            }
                        }
                        Err(e) => {
                            fail(e);
                            return;
                        }
                    }
                }
                flush(&mut batch);
            });
            for _ in 0..workers {
                let rx = rx.clone();
                let (sink, on_error, chunks, bytes) = (&sink, &on_error, &chunks, &bytes);
                s.spawn(move || {
                    for (loc, fetched) in rx.iter() {
                        if failed.load(Ordering::Relaxed) {
                            break;
                        }
                        let data = match fetched {
                            Some(f) => f.and_then(|f| self.decode(&loc, f)),
                            None => self.read(&loc),
                        };
                        chunks.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(loc.len as u64, Ordering::Relaxed);
                        let r = match data {
                            Ok(d) => sink(&loc, d),
                            Err(e) => on_error(&loc, e),
                        };
                        if let Err(e) = r {
                            fail(e);
                            break;
                        }
                    }
                });
            }
            drop(rx);
        });
        match first_err.into_inner() {
            Some(e) => Err(e),
            None => Ok(RunStats {
                chunks: chunks.into_inner(),
                bytes: bytes.into_inner(),
            }),
        }
    }
}

impl ChunkReader<'_> {
    /// Reads the chunks `jobs` names, in parallel, and hands each one's result to `sink` **in
    /// the order of `jobs`**, with a bounded number in flight (a stream: restoring to standard
    /// output). A job without a location passes through (a range of zeros, say). A chunk that
    /// fails its checks reaches `sink` as its error (to stop, or to skip it); an error of
    /// `jobs` or of `sink` stops the run. Remote destinations get one round trip per batch.
    pub(crate) fn run_ordered<T: Send>(
        &self,
        jobs: impl Iterator<Item = Result<(T, Option<ChunkLoc>)>> + Send,
        mut sink: impl FnMut(T, Option<(ChunkLoc, Result<Vec<u8>>)>) -> Result<()>,
    ) -> Result<RunStats> {
        let per_batch = self.per_batch();
        let workers = self.a.tuning().workers();
        let mut stats = RunStats::default();
        let fetched = Batches {
            reader: self,
            jobs,
            per_batch,
            ready: std::collections::VecDeque::new(),
        };
        crate::parallel::ordered_map(
            fetched,
            workers,
            (2 * per_batch).max(workers * 4),
            |(t, job): (T, Option<Fetched>)| {
                Ok((
                    t,
                    job.map(|(loc, fetched)| {
                        let data = match fetched {
                            Some(f) => f.and_then(|f| self.decode(&loc, f)),
                            None => self.read(&loc),
                        };
                        (loc, data)
                    }),
                ))
            },
            |(t, read)| {
                if let Some((loc, _)) = &read {
                    stats.chunks += 1;
                    stats.bytes += loc.len as u64;
                }
                sink(t, read)
            },
        )?;
        Ok(stats)
    }

    /// Chunks per request to the destination: many for a remote one (a round trip each).
    fn per_batch(&self) -> usize {
        if self.batched() {
            ((16u64 << 20) / self.a.chunksize()).clamp(1, 256) as usize
        } else {
            1
        }
    }
}

/// Jobs with their chunk files fetched a batch at a time where the destination batches.
struct Batches<'r, 'a, T, J> {
    reader: &'r ChunkReader<'a>,
    jobs: J,
    per_batch: usize,
    ready: std::collections::VecDeque<(T, Option<Fetched>)>,
}

impl<T, J> Iterator for Batches<'_, '_, T, J>
where
    J: Iterator<Item = Result<(T, Option<ChunkLoc>)>>,
{
    type Item = Result<(T, Option<Fetched>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(r) = self.ready.pop_front() {
            return Some(Ok(r));
        }
        if self.per_batch == 1 {
            return self
                .jobs
                .next()
                .map(|j| j.map(|(t, loc)| (t, loc.map(|l| (l, None)))));
        }
        let mut batch: Vec<(T, Option<ChunkLoc>)> = Vec::new();
        let mut locs = 0;
        while locs < self.per_batch {
            match self.jobs.next() {
                Some(Ok(j)) => {
                    locs += usize::from(j.1.is_some());
                    batch.push(j);
                }
                Some(Err(e)) => return Some(Err(e)),
                None => break,
            }
        }
        let wanted: Vec<ChunkLoc> = batch.iter().filter_map(|(_, l)| l.clone()).collect();
        let fetched = if wanted.is_empty() {
            Ok(Vec::new())
        } else {
            self.reader.fetch(&wanted)
        };
        let mut files = match fetched {
            Ok(f) => f.into_iter(),
            Err(e) => return Some(Err(e)),
        };
        for (t, loc) in batch {
            let job = loc.map(|l| (l, Some(Ok(files.next().flatten()))));
            self.ready.push_back((t, job));
        }
        self.ready.pop_front().map(Ok)
    }
}

/// Sends without blocking forever: workers stop draining the channel after an error.
fn send_watching<T>(tx: &Sender<T>, mut item: T, failed: &AtomicBool) -> bool {
    loop {
        match tx.send_timeout(item, std::time::Duration::from_millis(50)) {
            Ok(()) => return true,
            Err(SendTimeoutError::Timeout(back)) => {
                if failed.load(Ordering::Relaxed) {
                    return false;
                }
                item = back;
            }
            Err(SendTimeoutError::Disconnected(_)) => return false,
        }
    }
}
