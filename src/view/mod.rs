//! The mount's view of an archive, FUSE-free: every volume a directory, every session a sparse
//! image file (`view::fuse` adapts it to `wyng-fuse`).
//!
//! ```text
//! /<volume name>/S_YYYYMMDD-HHMMSS.img       one read-only file per session, the volume's size then
//! /<volume name>/latest.img -> S_….img        the newest session
//! /<volume name>/by-tag/<tag>/S_….img -> ../../S_….img
//! ```
//! Volume names with slashes become nested directories. A file's mtime is its session's time.
//!
//! Invariants:
//! * Every byte returned comes from a chunk the archive's chunk reader verified; a chunk that
//!   fails is `EIO` for the read (and one log line naming it), never zeros or stale bytes.
//! * The view stays true to the archive: directories are checked against the archive's root at
//!   most every [`ViewOptions::refresh`]; when it changed (a send, a prune elsewhere), the tree
//!   is rebuilt from the new state. A session file keeps its node id for as long as the session
//!   exists, so an open file keeps reading the same session; its chunks are found again in the
//!   new state (a prune moves chunk files). A read that meets a missing chunk checks the
//!   archive first, so a prune never shows as damage. A session that was pruned answers
//!   `ESTALE` with a log line saying so.
//! * Memory does not grow with volumes: a session is served from its merged-view index
//!   (data entries on disk, a few blocks cached), `stat` is O(1) once the index is open, and
//!   `SEEK_DATA`/`SEEK_HOLE` are O(log n). Decoded chunks are kept in an LRU bounded by
//!   `--cache` bytes, keyed by their verified hash, so a chunk shared by many sessions is
//!   decoded once.

pub mod fuse;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::num::NonZeroUsize;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::archive::index::MergedIndex;
use crate::archive::{Archive, ChunkLoc};
use crate::error::{Error, Result};
use crate::format::manifest::ChunkRef;
use crate::format::{Hash32, SessionName};

pub type NodeId = u64;
pub const ROOT: NodeId = 1;

/// Which session `--session` shows (resolved by the caller against each volume).
pub type SessionFilter = Arc<dyn Fn(&crate::archive::Volume) -> Option<usize> + Send + Sync>;

pub struct ViewOptions {
    /// Only this volume.
    pub volume: Option<String>,
    /// Only this session of each volume (a volume without one is left out).
    pub session: Option<SessionFilter>,
    /// Bytes of decoded chunks to keep.
    pub cache_bytes: u64,
    /// How often directories check the archive for new or removed sessions.
    pub refresh: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

#[derive(Clone, Debug)]
pub struct Attr {
    pub kind: Kind,
    pub size: u64,
    /// Stored data in 512-byte blocks (what `du` shows).
    pub blocks: u64,
    pub mtime: SystemTime,
    /// How long the kernel may cache this: directories, links and the existence of a session
    /// follow the archive (a session's content never changes: open files keep their cache).
    pub ttl: Duration,
}

enum Node {
    Dir {
        children: Vec<(OsString, NodeId)>,
        mtime: SystemTime,
    },
    Session(Box<SessionNode>),
    Link {
        target: OsString,
        mtime: SystemTime,
    },
}

struct SessionNode {
    vi: usize,
    si: usize,
    volume: String,
    name: SessionName,
    volsize: u64,
    mtime: SystemTime,
    index: OnceLock<Arc<MergedIndex>>,
}

/// One state of the archive and the tree built from it.
struct State {
    archive: Arc<Archive>,
    nodes: HashMap<NodeId, Node>,
    /// When the archive was last compared with the destination.
    checked: Instant,
}

/// What a node was, for nodes whose session is gone (pruned).
struct GoneSession {
    volume: String,
    name: SessionName,
}

pub struct View {
    state: RwLock<State>,
    opts: ViewOptions,
    /// Stable node ids: a path keeps its id across refreshes.
    ids: Mutex<(HashMap<String, NodeId>, NodeId)>,
    gone: Mutex<HashMap<NodeId, GoneSession>>,
    refreshing: Mutex<()>,
    chunks: Mutex<LruCache<Hash32, Arc<Vec<u8>>>>,
    /// Where the last read of each file ended: a read starting there is sequential.
    last_end: Mutex<HashMap<NodeId, u64>>,
    /// Chunks being fetched or decoded right now, so that no one fetches them twice.
    pending: Mutex<std::collections::HashSet<Hash32>>,
    pending_done: Condvar,
    /// One transfer at a time from a remote destination (they share one connection).
    transfer: Mutex<()>,
    /// (node, first chunk, chunks): read-ahead work.
    prefetch: crossbeam_channel::Sender<(NodeId, u64, u64)>,
    prefetch_rx: crossbeam_channel::Receiver<(NodeId, u64, u64)>,
}

/// Chunks fetched per request from a remote destination when reading sequentially.
const REMOTE_WINDOW: u64 = 32;

fn session_time(name: &SessionName) -> SystemTime {
    chrono::NaiveDateTime::parse_from_str(name.date(), "%Y%m%d-%H%M%S")
        .ok()
        .and_then(|t| t.and_local_timezone(chrono::Local).earliest())
        .and_then(|t| u64::try_from(t.timestamp()).ok())
        .map_or(SystemTime::UNIX_EPOCH, |s| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(s)
        })
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn eio(what: impl std::fmt::Display) -> io::Error {
    tracing::error!("{what}");
    errno(libc::EIO)
}

/// Builds the tree of one archive state. `id` hands out a stable id for a path.
fn build(
    archive: &Archive,
    o: &ViewOptions,
    id: &mut dyn FnMut(&str) -> NodeId,
) -> HashMap<NodeId, Node> {
    let now = SystemTime::now();
    let mut nodes: HashMap<NodeId, Node> = HashMap::new();
    nodes.insert(
        ROOT,
        Node::Dir {
            children: Vec::new(),
            mtime: now,
        },
    );
    let add_child = |nodes: &mut HashMap<NodeId, Node>, dir: NodeId, name: &str, child: NodeId| {
        if let Some(Node::Dir { children, .. }) = nodes.get_mut(&dir) {
            children.push((name.into(), child));
        }
    };
    for (vi, vol) in archive.volumes().iter().enumerate() {
        if o.volume.as_ref().is_some_and(|v| v != vol.name()) || vol.sessions.is_empty() {
            continue;
        }
        if archive.volume_index(vol.name()).is_none() {
            // Two volumes of one name (a hostile or hand-edited archive): neither is shown
            // rather than one passing for the other.
            tracing::warn!(
                "volume {} is not shown: its name '{}' is used by another volume too (rename or delete one by its id)",
                vol.vid,
                crate::archive::sanitized(vol.name())
            );
            continue;
        }
        let sessions: Vec<usize> = match &o.session {
            None => (0..vol.sessions.len()).collect(),
            Some(f) => match f(vol) {
                Some(i) => vec![i],
                None => continue,
            },
        };
        let newest = &vol.sessions[*sessions.last().expect("not empty")];
        let mtime = session_time(&newest.name);
        // The volume's directory, nested for names with slashes.
        let mut dir = ROOT;
        let mut path = String::new();
        let mut clash = false;
        for comp in vol.name().split('/').filter(|c| !c.is_empty()) {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(comp);
            let existing = match nodes.get(&dir) {
                Some(Node::Dir { children, .. }) => {
                    children.iter().find(|(n, _)| n == comp).map(|(_, i)| *i)
                }
                _ => None,
            };
            dir = match existing {
                Some(i) if matches!(nodes.get(&i), Some(Node::Dir { .. })) => i,
                Some(_) => {
                    clash = true;
                    break;
                }
                None => {
                    let i = id(&format!("d:{path}"));
                    nodes.insert(
                        i,
                        Node::Dir {
                            children: Vec::new(),
                            mtime,
                        },
                    );
                    add_child(&mut nodes, dir, comp, i);
                    i
                }
            };
        }
        if clash {
            tracing::warn!(
                "volume '{}' clashes with another name in the tree; not shown",
                crate::archive::sanitized(vol.name())
            );
            continue;
        }
        let mut tags: Vec<(String, Vec<String>)> = Vec::new();
        for &si in &sessions {
            let s = &vol.sessions[si];
            let file = format!("{}.img", s.name);
            let i = id(&format!("s:{}/{}", vol.vid, s.name));
            nodes.insert(
                i,
                Node::Session(Box::new(SessionNode {
                    vi,
                    si,
                    volume: vol.name().to_string(),
                    name: s.name.clone(),
                    volsize: s.info.volsize,
                    mtime: session_time(&s.name),
                    index: OnceLock::new(),
                })),
            );
            add_child(&mut nodes, dir, &file, i);
            for t in &s.info.tags {
                match tags.iter_mut().find(|(id, _)| *id == t.id) {
                    Some((_, files)) => files.push(file.clone()),
                    None => tags.push((t.id.clone(), vec![file.clone()])),
                }
            }
        }
        let latest = id(&format!("l:{path}/latest.img"));
        nodes.insert(
            latest,
            Node::Link {
                target: format!("{}.img", newest.name).into(),
                mtime,
            },
        );
        add_child(&mut nodes, dir, "latest.img", latest);
        if !tags.is_empty() {
            let by_tag = id(&format!("d:{path}/by-tag"));
            nodes.insert(
                by_tag,
                Node::Dir {
                    children: Vec::new(),
                    mtime,
                },
            );
            add_child(&mut nodes, dir, "by-tag", by_tag);
            for (tag, files) in tags {
                let tdir = id(&format!("d:{path}/by-tag/{tag}"));
                nodes.insert(
                    tdir,
                    Node::Dir {
                        children: Vec::new(),
                        mtime,
                    },
                );
                add_child(&mut nodes, by_tag, &tag, tdir);
                for f in files {
                    let l = id(&format!("l:{path}/by-tag/{tag}/{f}"));
                    nodes.insert(
                        l,
                        Node::Link {
                            target: format!("../../{f}").into(),
                            mtime,
                        },
                    );
                    add_child(&mut nodes, tdir, &f, l);
                }
            }
        }
    }
    nodes
}

impl View {
    pub fn new(archive: Archive, o: ViewOptions) -> Result<View> {
        if let Some(v) = &o.volume {
            archive.find(v)?;
        }
        let chunks = (o.cache_bytes / archive.chunksize()).max(16) as usize;
        let (prefetch, prefetch_rx) = crossbeam_channel::bounded(64);
        let mut ids = (HashMap::new(), ROOT);
        let nodes = build(&archive, &o, &mut |p| {
            *ids.0.entry(p.to_string()).or_insert_with(|| {
                ids.1 += 1;
                ids.1
            })
        });
        Ok(View {
            state: RwLock::new(State {
                archive: Arc::new(archive),
                nodes,
                checked: Instant::now(),
            }),
            opts: o,
            ids: Mutex::new(ids),
            gone: Mutex::new(HashMap::new()),
            refreshing: Mutex::new(()),
            chunks: Mutex::new(LruCache::new(
                NonZeroUsize::new(chunks).expect("at least 16"),
            )),
            last_end: Mutex::new(HashMap::new()),
            pending: Mutex::new(std::collections::HashSet::new()),
            pending_done: Condvar::new(),
            transfer: Mutex::new(()),
            prefetch,
            prefetch_rx,
        })
    }

    /// Starts the threads that fetch ahead of sequential readers.
    pub fn start_prefetch(self: &Arc<Self>, threads: usize) {
        for _ in 0..threads {
            let me = self.clone();
            std::thread::spawn(move || {
                for (node, idx, count) in me.prefetch_rx.clone() {
                    if let Ok((a, ix)) = me.session(node) {
                        let _ = me.fetch_window(&a, &ix, idx, count);
                    }
                }
            });
        }
    }

    /// Checks whether the archive changed (at most every `refresh`, unless `force`) and, if
    /// so, rebuilds the tree from its new state. Returns whether it did.
    pub fn refresh(&self, force: bool) -> bool {
        if !force && self.state.read().checked.elapsed() < self.opts.refresh {
            return false;
        }
        // One refresh at a time; the others keep using the current state.
        let Some(_g) = self.refreshing.try_lock() else {
            return false;
        };
        let archive = self.state.read().archive.clone();
        let changed = match archive.is_current() {
            Ok(current) => !current,
            Err(e) => {
                tracing::warn!("cannot check the archive for changes: {e}");
                false
            }
        };
        if !changed {
            self.state.write().checked = Instant::now();
            return false;
        }
        let fresh = match archive.refreshed() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("the archive changed but cannot be loaded again: {e}");
                self.state.write().checked = Instant::now();
                return false;
            }
        };
        let nodes = {
            let mut ids = self.ids.lock();
            let (map, next) = &mut *ids;
            build(&fresh, &self.opts, &mut |p| {
                *map.entry(p.to_string()).or_insert_with(|| {
                    *next += 1;
                    *next
                })
            })
        };
        let mut st = self.state.write();
        // Sessions that are no longer there: their open files learn that they were pruned.
        let mut gone = self.gone.lock();
        for (id, n) in &st.nodes {
            if let Node::Session(s) = n {
                if !matches!(nodes.get(id), Some(Node::Session(_))) {
                    tracing::info!(
                        "session {} of '{}' is gone from the archive",
                        s.name,
                        s.volume
                    );
                    gone.insert(
                        *id,
                        GoneSession {
                            volume: s.volume.clone(),
                            name: s.name.clone(),
                        },
                    );
                }
            }
        }
        tracing::info!("the archive changed; the view follows it");
        *st = State {
            archive: Arc::new(fresh),
            nodes,
            checked: Instant::now(),
        };
        true
    }

    fn gone_error(&self, node: NodeId) -> io::Error {
        if let Some(g) = self.gone.lock().get(&node) {
            tracing::error!(
                "{}",
                Error::Pruned {
                    volume: g.volume.clone(),
                    session: g.name.to_string(),
                }
            );
            return errno(libc::ESTALE);
        }
        errno(libc::ENOENT)
    }

    /// The archive state and merged view of a session file (its index built on first use).
    fn session(&self, node: NodeId) -> io::Result<(Arc<Archive>, Arc<MergedIndex>)> {
        let st = self.state.read();
        match st.nodes.get(&node) {
            Some(Node::Session(s)) => {
                if let Some(ix) = s.index.get() {
                    return Ok((st.archive.clone(), ix.clone()));
                }
                let ix = st.archive.merged(s.vi, s.si).map_err(eio)?;
                let _ = s.index.set(ix.clone());
                Ok((st.archive.clone(), ix))
            }
            Some(_) => Err(errno(libc::EINVAL)),
            None => {
                drop(st);
                Err(self.gone_error(node))
            }
        }
    }

    pub fn kind(&self, node: NodeId) -> Option<Kind> {
        Some(match self.state.read().nodes.get(&node)? {
            Node::Dir { .. } => Kind::Dir,
            Node::Session(_) => Kind::File,
            Node::Link { .. } => Kind::Symlink,
        })
    }

    pub fn attr(&self, node: NodeId) -> io::Result<Attr> {
        if matches!(self.kind(node), Some(Kind::Dir)) {
            self.refresh(false);
        }
        let st = self.state.read();
        let short = self.opts.refresh;
        match st.nodes.get(&node) {
            Some(Node::Dir { mtime, .. }) => Ok(Attr {
                kind: Kind::Dir,
                size: 0,
                blocks: 0,
                mtime: *mtime,
                ttl: short,
            }),
            Some(Node::Link { target, mtime }) => Ok(Attr {
                kind: Kind::Symlink,
                size: target.len() as u64,
                blocks: 0,
                mtime: *mtime,
                ttl: short,
            }),
            Some(Node::Session(s)) => {
                let (size, mtime) = (s.volsize, s.mtime);
                drop(st);
                let (_, ix) = self.session(node)?;
                Ok(Attr {
                    kind: Kind::File,
                    size,
                    blocks: ix.data_bytes().min(size.next_multiple_of(512)) / 512,
                    mtime,
                    // The content never changes, but the session may be pruned.
                    ttl: short,
                })
            }
            None => {
                drop(st);
                Err(self.gone_error(node))
            }
        }
    }

    pub fn lookup(&self, parent: NodeId, name: &OsStr) -> Option<NodeId> {
        self.refresh(false);
        match self.state.read().nodes.get(&parent)? {
            Node::Dir { children, .. } => {
                children.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
            }
            _ => None,
        }
    }

    /// A directory's entries with their kinds (no index is built for a listing).
    pub fn children(&self, dir: NodeId) -> Option<Vec<(OsString, NodeId, Kind)>> {
        self.refresh(false);
        let st = self.state.read();
        match st.nodes.get(&dir)? {
            Node::Dir { children, .. } => Some(
                children
                    .iter()
                    .map(|(n, id)| {
                        let k = match st.nodes.get(id) {
                            Some(Node::Dir { .. }) => Kind::Dir,
                            Some(Node::Link { .. }) => Kind::Symlink,
                            _ => Kind::File,
                        };
                        (n.clone(), *id, k)
                    })
                    .collect(),
            ),
            _ => None,
        }
    }

    pub fn readlink(&self, node: NodeId) -> Option<OsString> {
        match self.state.read().nodes.get(&node)? {
            Node::Link { target, .. } => Some(target.clone()),
            _ => None,
        }
    }

    /// Fetches and caches the data chunks among `count` chunks from `first` that are not cached
    /// yet, in one request to the destination.
    fn fetch_window(
        &self,
        a: &Archive,
        ix: &MergedIndex,
        first: u64,
        count: u64,
    ) -> io::Result<()> {
        let end = (first + count).min(ix.chunks());
        let transfer = self.transfer.lock();
        let mut want: Vec<ChunkLoc> = Vec::new();
        {
            let cache = self.chunks.lock();
            let mut pending = self.pending.lock();
            for r in ix.iter_from(first) {
                let r = r.map_err(eio)?;
                if r.idx >= end {
                    break;
                }
                if !cache.contains(&r.hash) && pending.insert(r.hash) {
                    want.push(ix.loc(&r));
                }
            }
        }
        if want.is_empty() {
            return Ok(());
        }
        // Whatever happens below, these are no longer pending afterwards.
        let _done = PendingGuard(self, want.iter().map(|w| w.hash).collect());
        let reader = a.chunks();
        let files = reader.fetch(&want).map_err(eio)?;
        // Decoding can overlap the next transfer.
        drop(transfer);
        let jobs: Vec<_> = want.iter().zip(files).collect();
        // Decode on two threads: the transfer is done, this is CPU work. A chunk that fails
        // is left out (its own read reports why).
        let half = jobs.len().div_ceil(2);
        std::thread::scope(|s| {
            for part in jobs.chunks(half.max(1)) {
                let reader = &reader;
                s.spawn(move || {
                    for (loc, file) in part {
                        if let Ok(data) = reader.decode(loc, file.clone()) {
                            self.chunks.lock().put(loc.hash, Arc::new(data));
                        }
                    }
                });
            }
        });
        Ok(())
    }

    /// The decoded, verified chunk at `loc`. One thread decodes a chunk; others that want it
    /// meanwhile wait for it (readers of neighbouring ranges, and several sessions sharing it).
    fn chunk(&self, a: &Archive, loc: &ChunkLoc) -> io::Result<Arc<Vec<u8>>> {
        loop {
            if let Some(c) = self.chunks.lock().get(&loc.hash) {
                return Ok(c.clone());
            }
            let mut pending = self.pending.lock();
            if pending.contains(&loc.hash) {
                self.pending_done.wait(&mut pending);
                continue;
            }
            pending.insert(loc.hash);
            break;
        }
        let _done = PendingGuard(self, vec![loc.hash]);
        // Another thread may have finished it between the two checks.
        if let Some(c) = self.chunks.lock().get(&loc.hash) {
            return Ok(c.clone());
        }
        match a.chunks().read(loc) {
            Ok(data) => {
                let data = Arc::new(data);
                self.chunks.lock().put(loc.hash, data.clone());
                Ok(data)
            }
            // A missing file may have been moved by a prune: the caller looks again.
            Err(e) if a.chunks().exists(loc).ok() == Some(false) => {
                tracing::debug!("{e}");
                Err(errno(libc::EAGAIN))
            }
            Err(e) => Err(eio(e)),
        }
    }

    /// Fills `buf` from `offset` of a session file.
    pub fn read_at(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        match self.read_once(node, offset, buf) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                // A chunk file is not where this state says: if the archive changed, read
                // from its new state; if not, the archive is damaged.
                if self.refresh(true) {
                    return match self.read_once(node, offset, buf) {
                        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                            Err(eio("a chunk file is missing (run `wyng arch-check`)"))
                        }
                        r => r,
                    };
                }
                Err(eio("a chunk file is missing (run `wyng arch-check`)"))
            }
            r => r,
        }
    }

    fn read_once(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let (a, ix) = self.session(node)?;
        let volsize = ix.volsize();
        if offset >= volsize {
            return Ok(0);
        }
        let n = ((volsize - offset) as usize).min(buf.len());
        let cs = ix.chunksize();
        let sequential = offset == 0 || self.last_end.lock().get(&node) == Some(&offset);
        let remote = a.chunks().batched();
        if sequential && remote {
            // Remote: one request for this chunk and the following ones, not one per chunk.
            if let Some((ChunkRef::Data(h), _)) = ix.get(offset / cs).map_err(eio)? {
                if !self.chunks.lock().contains(&h) && !self.pending.lock().contains(&h) {
                    self.fetch_window(&a, &ix, offset / cs, REMOTE_WINDOW)?;
                }
            }
        }
        let mut done = 0usize;
        while done < n {
            let pos = offset + done as u64;
            let idx = pos / cs;
            let within = (pos % cs) as usize;
            let take = (cs as usize - within).min(n - done);
            let out = &mut buf[done..done + take];
            match ix.get(idx).map_err(eio)? {
                Some((ChunkRef::Zero, _)) => out.fill(0),
                Some((ChunkRef::Data(_), Some(rec))) => {
                    let c = self.chunk(&a, &ix.loc(&rec))?;
                    out.copy_from_slice(&c[within..within + take]);
                }
                _ => return Err(eio("read beyond the merged manifest")),
            }
            done += take;
        }
        // Sequential reader: fetch the next chunks in the background.
        let end = offset + n as u64;
        self.last_end.lock().insert(node, end);
        if sequential {
            let last = (end - 1) / cs;
            if remote {
                // Keep a window ahead: on entering a window, ask for the next one.
                let first = offset / cs;
                if first % REMOTE_WINDOW == 0 || last / REMOTE_WINDOW != first / REMOTE_WINDOW {
                    // Two windows ahead: one transfers while the other decodes.
                    let next = (last / REMOTE_WINDOW + 1) * REMOTE_WINDOW;
                    for w in [next, next + REMOTE_WINDOW] {
                        let _ = self.prefetch.try_send((node, w, REMOTE_WINDOW));
                    }
                }
            }
            // A local destination needs no read-ahead of ours: the kernel's (FUSE async reads,
            // up to 1 MiB ahead) already keeps every read thread busy, and more threads
            // fetching the same chunks would only contend for the two cores.
        }
        Ok(n)
    }

    /// The first offset at or after `offset` that holds data (`None`: only holes follow).
    pub fn next_data(&self, node: NodeId, offset: u64) -> io::Result<Option<u64>> {
        let (_, ix) = self.session(node)?;
        let cs = ix.chunksize();
        Ok(ix
            .next_data(offset / cs)
            .map_err(eio)?
            .map(|i| (i * cs).max(offset)))
    }

    /// The first offset at or after `offset` in a hole (the file size if none before the end).
    pub fn next_hole(&self, node: NodeId, offset: u64) -> io::Result<u64> {
        let (_, ix) = self.session(node)?;
        let cs = ix.chunksize();
        let h = ix.next_hole(offset / cs).map_err(eio)?;
        Ok((h * cs).max(offset).min(ix.volsize()))
    }
}

/// Clears chunks from the pending set (and wakes waiters) when a fetch ends, however it ends.
struct PendingGuard<'a>(&'a View, Vec<Hash32>);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut pending = self.0.pending.lock();
        for h in &self.1 {
            pending.remove(h);
        }
        self.0.pending_done.notify_all();
    }
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("View")
    }
}
