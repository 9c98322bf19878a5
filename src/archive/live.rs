//! An archive that long-lived readers (the mount, file browsing, NBD serving) keep open while
//! sends and prunes change it, and sessions read from it as random-access images.
//!
//! Invariants:
//! * **One cache, one reader.** Every [`SessionImage`] of a [`LiveArchive`] reads through its
//!   [`ChunkCache`]: a chunk shared by sessions, or wanted by the mount and an NBD client at
//!   once, is fetched and decoded once. Every byte returned comes from a verified chunk; a chunk
//!   that fails is an error for that read (never zeros or stale bytes).
//! * **The archive is followed, not frozen.** [`LiveArchive::refresh`] compares the archive's
//!   root at most every `refresh` (or when forced) and loads the new state when it changed; its
//!   generation tells readers to look again. A [`SessionImage`] is a session by volume id and
//!   name: after a prune moved its chunk files, it finds them in the new state; a read that
//!   meets a missing chunk file refreshes first, and waits while a journaled change (a prune
//!   moving files) is under way, so a prune never shows as damage. A session that is gone
//!   answers [`Error::Pruned`].
//! * **Memory does not grow with volumes**: an image is its merged-view index (data entries on
//!   disk) plus the shared, byte-bounded cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::{Mutex, RwLock};

use super::cache::{Chunk, ChunkCache};
use super::{Archive, ChunkLoc, MergedIndex};
use crate::error::{Error, Result};
use crate::format::manifest::ChunkRef;
use crate::format::{SessionName, VolumeId};

/// Chunks fetched per request from a remote destination when reading sequentially.
const REMOTE_WINDOW: u64 = 32;
/// How long a read waits for a prune or delete under way to finish before it answers that the
/// archive changed while reading (never damage); and how often it looks.
const TRANSACTION_WAIT: Duration = Duration::from_secs(60);
const TRANSACTION_POLL: Duration = Duration::from_millis(100);

pub struct LiveArchive {
    current: RwLock<Arc<Archive>>,
    /// Bumped each time a new state is loaded.
    generation: AtomicU64,
    checked: Mutex<Instant>,
    refreshing: Mutex<()>,
    every: Duration,
    cache: ChunkCache,
    /// Read-ahead work for remote destinations (started on first use).
    ahead: OnceLock<Sender<Ahead>>,
}

/// A window of chunks to fetch before a sequential reader gets there.
struct Ahead {
    image: SessionImage,
    first: u64,
    count: u64,
}

impl std::fmt::Debug for LiveArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveArchive")
            .field("generation", &self.generation())
            .finish()
    }
}

impl LiveArchive {
    /// Keeps `archive` open for reading, with `cache_bytes` of decoded chunks, comparing it
    /// with the destination at most every `refresh`. The lock is released: a long-lived reader
    /// must not block writers (it follows them instead).
    pub fn new(mut archive: Archive, cache_bytes: u64, refresh: Duration) -> Arc<LiveArchive> {
        archive.unlock();
        let cache = ChunkCache::new(cache_bytes, archive.chunksize());
        Arc::new(LiveArchive {
            current: RwLock::new(Arc::new(archive)),
            generation: AtomicU64::new(0),
            checked: Mutex::new(Instant::now()),
            refreshing: Mutex::new(()),
            every: refresh,
            cache,
            ahead: OnceLock::new(),
        })
    }

    /// The archive as last loaded.
    pub fn current(&self) -> Arc<Archive> {
        self.current.read().clone()
    }

    /// Changes each time a new state of the archive is loaded.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    /// Compares the archive with the destination (at most every `refresh`, unless `force`) and
    /// loads its new state if it changed. Returns whether a new state was loaded, by this call
    /// or by another one meanwhile. A failure to check is logged and leaves the state as is.
    pub fn refresh(&self, force: bool) -> bool {
        let before = self.generation();
        if !force && self.checked.lock().elapsed() < self.every {
            return false;
        }
        // One refresh at a time: an unforced one leaves it to whoever runs; a forced one (a
        // read that met a missing chunk) waits for its result.
        let _one = if force {
            self.refreshing.lock()
        } else {
            match self.refreshing.try_lock() {
                Some(g) => g,
                None => return false,
            }
        };
        if self.generation() != before {
            return true;
        }
        let archive = self.current();
        let changed = match archive.is_current() {
            Ok(current) => !current,
            Err(e) => {
                tracing::warn!("cannot check the archive for changes: {e}");
                false
            }
        };
        *self.checked.lock() = Instant::now();
        if !changed {
            return false;
        }
        match archive.refreshed() {
            Ok(fresh) => {
                *self.current.write() = Arc::new(fresh);
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!("the archive changed; readers follow it");
                true
            }
            Err(e) => {
                tracing::warn!("the archive changed but cannot be loaded again: {e}");
                false
            }
        }
    }

    /// Session `si` of volume `vi` of [`LiveArchive::current`] as an image (its merged-view
    /// index is built or loaded now).
    pub fn image(self: &Arc<Self>, vi: usize, si: usize) -> Result<SessionImage> {
        let generation = self.generation();
        let archive = self.current();
        let vol = archive
            .volumes()
            .get(vi)
            .ok_or_else(|| Error::Selection("no such volume".into()))?;
        let session = vol
            .sessions
            .get(si)
            .ok_or_else(|| Error::Selection("no such session".into()))?;
        let (vid, volume, name) = (
            vol.vid.clone(),
            vol.name().to_string(),
            session.name.clone(),
        );
        let index = archive.merged(vi, si)?;
        Ok(SessionImage(Arc::new(Image {
            live: self.clone(),
            vid,
            volume,
            session: name,
            volsize: index.volsize(),
            state: RwLock::new(Resolved {
                generation,
                archive,
                index,
            }),
            last_end: AtomicU64::new(u64::MAX),
        })))
    }

    /// Hands a read-ahead window to the background threads (started on first use). Dropped
    /// when they are busy: read-ahead is an optimisation, never owed.
    fn read_ahead(&self, job: Ahead) {
        let tx = self.ahead.get_or_init(|| {
            let (tx, rx) = crossbeam_channel::bounded::<Ahead>(64);
            for _ in 0..2 {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    for job in rx {
                        let _ = job.image.fetch_window(job.first, job.count);
                    }
                });
            }
            tx
        });
        let _ = tx.try_send(job);
    }
}

/// One session of one volume as a random-access, read-only image: what the mount's files,
/// file browsing and NBD exports read. Cheap to clone.
#[derive(Clone)]
pub struct SessionImage(Arc<Image>);

struct Image {
    live: Arc<LiveArchive>,
    vid: VolumeId,
    volume: String,
    session: SessionName,
    volsize: u64,
    state: RwLock<Resolved>,
    /// Where the last read ended: a read starting there is sequential.
    last_end: AtomicU64,
}

/// Where the session's chunks are in one state of the archive.
#[derive(Clone)]
struct Resolved {
    generation: u64,
    archive: Arc<Archive>,
    index: Arc<MergedIndex>,
}

/// Why a read could not be served from one state of the archive.
enum Miss {
    /// A chunk file is not where that state says: a prune may have moved it.
    Moved,
    Failed(Error),
}

impl From<Error> for Miss {
    fn from(e: Error) -> Self {
        Miss::Failed(e)
    }
}

impl std::fmt::Debug for SessionImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionImage({} {})", self.0.volume, self.0.session)
    }
}

impl SessionImage {
    pub fn volume(&self) -> &str {
        &self.0.volume
    }

    pub fn vid(&self) -> &VolumeId {
        &self.0.vid
    }

    pub fn session(&self) -> &SessionName {
        &self.0.session
    }

    /// The image's size in bytes (the volume's size in that session).
    pub fn size(&self) -> u64 {
        self.0.volsize
    }

    pub fn chunksize(&self) -> u64 {
        self.resolved().index.chunksize()
    }

    /// Bytes of data chunks (what `du` shows of it).
    pub fn data_bytes(&self) -> u64 {
        self.resolved().index.data_bytes()
    }

    fn resolved(&self) -> Resolved {
        self.0.state.read().clone()
    }

    /// Finds the session again in the archive's current state (after a refresh).
    fn resolve_again(&self, seen: &Resolved) -> Result<Resolved> {
        let live = &self.0.live;
        if live.generation() == seen.generation {
            return Ok(seen.clone());
        }
        let generation = live.generation();
        let archive = live.current();
        let pruned = || Error::Pruned {
            volume: self.0.volume.clone(),
            session: self.0.session.to_string(),
        };
        let vi = archive
            .volumes()
            .iter()
            .position(|v| v.vid == self.0.vid)
            .ok_or_else(pruned)?;
        let si = archive.volumes()[vi]
            .session_index(&self.0.session)
            .ok_or_else(pruned)?;
        let index = archive.merged(vi, si)?;
        let r = Resolved {
            generation,
            archive,
            index,
        };
        *self.0.state.write() = r.clone();
        Ok(r)
    }

    /// [`Self::resolve_again`], except that a session missing from a state loaded while a
    /// journaled change is under way (its volume may be left out until the change is done) is
    /// waited for, up to [`TRANSACTION_WAIT`], before it counts as pruned.
    fn resolve_settled(&self, seen: &Resolved) -> Result<Resolved> {
        let deadline = Instant::now() + TRANSACTION_WAIT;
        loop {
            match self.resolve_again(seen) {
                Err(Error::Pruned { .. })
                    if self.0.live.current().transaction_pending() && Instant::now() < deadline =>
                {
                    std::thread::sleep(TRANSACTION_POLL);
                    self.0.live.refresh(true);
                }
                other => return other,
            }
        }
    }

    /// Fills `buf` from `offset` (fewer bytes only at the end of the image).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let r = self.resolved();
        // A session pruned meanwhile, or loaded anew by another reader's refresh.
        let r = self.resolve_settled(&r)?;
        match self.read_in(&r, offset, buf) {
            Ok(n) => Ok(n),
            Err(Miss::Failed(e)) => Err(e),
            Err(Miss::Moved) => self.read_moved(r, offset, buf),
        }
    }

    /// A read that met a chunk file not where its state says: follow the archive to where the
    /// file is now. A journaled change under way (a prune moving files) is waited for, up to
    /// [`TRANSACTION_WAIT`]; only a chunk missing from an archive that did not change and has
    /// no change under way is damage.
    fn read_moved(&self, mut r: Resolved, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let deadline = Instant::now() + TRANSACTION_WAIT;
        loop {
            // A newer state than the one this read used (loaded by another reader since, so
            // this refresh may find nothing new), or a newer one now: read from it first.
            let newer = self.0.live.generation() != r.generation || self.0.live.refresh(true);
            if !newer {
                if !self.0.live.current().transaction_pending() {
                    return Err(Error::corrupt(
                        format!("{}/{}", self.0.vid, self.0.session),
                        "a chunk file of this session is missing (run `wyng arch-check` to see what else is)",
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(Error::ChangedWhileReading {
                        url: self.0.live.current().url().to_string(),
                    });
                }
                std::thread::sleep(TRANSACTION_POLL);
                continue;
            }
            r = self.resolve_settled(&r)?;
            match self.read_in(&r, offset, buf) {
                Ok(n) => return Ok(n),
                Err(Miss::Failed(e)) => return Err(e),
                Err(Miss::Moved) => continue,
            }
        }
    }

    fn chunk(&self, r: &Resolved, loc: &ChunkLoc) -> Result<Chunk, Miss> {
        match self.0.live.cache.get(&r.archive, loc) {
            Ok(c) => Ok(c),
            Err(e) if r.archive.chunks().exists(loc).ok() == Some(false) => {
                tracing::debug!("{e}");
                Err(Miss::Moved)
            }
            Err(e) => Err(Miss::Failed(e)),
        }
    }

    fn read_in(&self, r: &Resolved, offset: u64, buf: &mut [u8]) -> Result<usize, Miss> {
        let ix = &r.index;
        let volsize = ix.volsize();
        if offset >= volsize {
            return Ok(0);
        }
        let n = ((volsize - offset) as usize).min(buf.len());
        let cs = ix.chunksize();
        let sequential = offset == 0 || self.0.last_end.load(Ordering::Relaxed) == offset;
        let remote = r.archive.chunks().batched();
        if sequential && remote {
            // Remote: one request for this chunk and the following ones, not one per chunk.
            if let Some((ChunkRef::Data(h), _)) = ix.get(offset / cs)? {
                if !self.0.live.cache.contains(&h) {
                    self.fetch_window_in(r, offset / cs, REMOTE_WINDOW)?;
                }
            }
        }
        let mut done = 0usize;
        while done < n {
            let pos = offset + done as u64;
            let within = (pos % cs) as usize;
            let take = (cs as usize - within).min(n - done);
            let out = &mut buf[done..done + take];
            match ix.get(pos / cs)? {
                Some((ChunkRef::Zero, _)) => out.fill(0),
                Some((ChunkRef::Data(_), Some(rec))) => {
                    let c = self.chunk(r, &ix.loc(&rec))?;
                    out.copy_from_slice(&c[within..within + take]);
                }
                _ => {
                    return Err(Miss::Failed(Error::corrupt(
                        format!("{}/{}", self.0.vid, self.0.session),
                        "read beyond the merged manifest",
                    )))
                }
            }
            done += take;
        }
        let end = offset + n as u64;
        self.0.last_end.store(end, Ordering::Relaxed);
        if sequential && remote {
            // Keep a window ahead: on entering a window, ask for the next two (one transfers
            // while the other decodes). A local destination needs none of ours: the kernel's
            // and the clients' own read-ahead already keep the cores busy.
            let (first, last) = (offset / cs, (end - 1) / cs);
            if first % REMOTE_WINDOW == 0 || last / REMOTE_WINDOW != first / REMOTE_WINDOW {
                let next = (last / REMOTE_WINDOW + 1) * REMOTE_WINDOW;
                for w in [next, next + REMOTE_WINDOW] {
                    self.0.live.read_ahead(Ahead {
                        image: self.clone(),
                        first: w,
                        count: REMOTE_WINDOW,
                    });
                }
            }
        }
        Ok(n)
    }

    /// Asks the background threads to fetch and decode the chunks holding `len` bytes from
    /// `offset` into the cache, for a reader that knows where it goes next (a file inside the
    /// image read in order). Never owed: dropped when they are busy.
    pub(crate) fn prefetch(&self, offset: u64, len: u64) {
        let cs = self.chunksize();
        let first = offset / cs;
        let count = (offset.saturating_add(len).div_ceil(cs)).saturating_sub(first);
        if count > 0 {
            self.0.live.read_ahead(Ahead {
                image: self.clone(),
                first,
                count,
            });
        }
    }

    /// Fetches into the cache the data chunks among `count` chunks from `first`.
    fn fetch_window(&self, first: u64, count: u64) -> Result<()> {
        let r = self.resolved();
        self.fetch_window_in(&r, first, count)
    }

    fn fetch_window_in(&self, r: &Resolved, first: u64, count: u64) -> Result<()> {
        let ix = &r.index;
        let end = (first + count).min(ix.chunks());
        let cache = &self.0.live.cache;
        let locs = ix
            .iter_from(first)
            .take_while(|rec| rec.as_ref().map_or(true, |rec| rec.idx < end))
            .filter(|rec| rec.as_ref().map_or(true, |rec| !cache.contains(&rec.hash)))
            .map(|rec| rec.map(|rec| ix.loc(&rec)));
        cache.fetch_window(&r.archive, locs)
    }

    /// The first offset at or after `offset` that holds data (`None`: only holes follow).
    pub fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        let ix = self.resolved().index;
        let cs = ix.chunksize();
        Ok(ix.next_data(offset / cs)?.map(|i| (i * cs).max(offset)))
    }

    /// The first offset at or after `offset` in a hole (the image's size if none before).
    pub fn next_hole(&self, offset: u64) -> Result<u64> {
        let ix = self.resolved().index;
        let cs = ix.chunksize();
        let h = ix.next_hole(offset / cs)?;
        Ok((h * cs).max(offset).min(ix.volsize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dest::MemDest;
    use crate::ops::faults;

    /// A read that met a moved chunk file with a state older than the live archive's (another
    /// reader refreshed after a prune moved the files, between this read's resolve and its
    /// chunk fetch) reads from the newer state: the refresh it forces finds nothing new, and
    /// that is not damage. (`mount::a_prune_under_open_files` flaked on exactly this.)
    #[test]
    fn a_read_behind_another_readers_refresh_follows_a_prune() {
        let (d, images) = faults::template_on(MemDest::new("mem:live"), 3);
        let meta = tempfile::tempdir().unwrap();
        let archive = faults::open_read(&d, Some(meta.path())).unwrap();
        // No cache (every read goes to the chunk files), no timed refresh.
        let live = LiveArchive::new(archive, 0, Duration::from_secs(3600));
        let image = live.image(0, 1).unwrap();
        assert_eq!(*image.session(), faults::name(2));
        // What this read resolved before the prune.
        let stale = image.resolved();
        {
            // Session 1 merged into session 2: session 2's chunk files move.
            let mut wa = faults::open(&d, meta.path()).unwrap();
            crate::ops::prune::run(
                &mut wa,
                &["vol".to_string()],
                &crate::ops::prune::PruneOptions {
                    session: Some("20260101-000001".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        // Another reader's refresh loads the new state first.
        assert!(live.refresh(true));
        let mut got = vec![0u8; faults::CS as usize];
        let n = image.read_moved(stale, 0, &mut got).unwrap();
        assert_eq!(n, got.len());
        assert!(got == images[1][..got.len()], "session 2 reads back wrong");
    }
}
