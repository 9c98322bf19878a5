//! The mount's view of an archive: every volume a directory, every session a sparse image file.
//!
//! ```text
//! /<volume name>/S_YYYYMMDD-HHMMSS.img       one read-only file per session, the volume's size then
//! /<volume name>/latest.img -> S_….img        the newest session
//! /<volume name>/by-tag/<tag>/S_….img -> ../../S_….img
//! ```
//! Volume names with slashes become nested directories. A file's mtime is its session's time.
//!
//! Invariants:
//! * Every byte returned comes from a chunk that was read, size-checked, authenticated/hashed
//!   and decompressed by [`Codec::decode_chunk`](crate::codec::Codec::decode_chunk); a chunk
//!   that fails is `EIO` for the read (and one log line naming it), never zeros or stale bytes.
//! * The chunk cache is keyed by the chunk's verified hash, so a chunk shared by many sessions
//!   (or volumes) is decoded once. Merged manifests are built on first use and kept in a small
//!   LRU, as are decoded chunks (bounded by `--cache` bytes).
//! * Zero chunks are holes: `SEEK_DATA`/`SEEK_HOLE` and `st_blocks` follow the manifest.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lru::LruCache;
use parking_lot::Mutex;
use wyng_fuse::{Attr, Kind, NodeId, SparseTree, ROOT};

use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::format::{ChunkRef, Merged, SessionName};
use crate::ops::SessionSel;

pub struct ViewOptions {
    /// Only this volume.
    pub volume: Option<String>,
    /// Only this session of each volume.
    pub session: Option<SessionSel>,
    /// Bytes of decoded chunks to keep.
    pub cache_bytes: u64,
}

enum Node {
    Dir { children: Vec<(OsString, NodeId)> },
    Session { vol: usize, ses: usize },
    Link { target: OsString },
}

pub struct ArchiveView {
    archive: Archive,
    nodes: Vec<(Node, SystemTime)>,
    merged: Mutex<LruCache<(usize, usize), Arc<Merged>>>,
    chunks: Mutex<LruCache<crate::format::Hash32, Arc<Vec<u8>>>>,
    /// Where the last read of each file ended: a read starting there is sequential.
    last_end: Mutex<HashMap<NodeId, u64>>,
    /// Chunks being fetched or decoded right now, so that no one fetches them twice.
    pending: Mutex<std::collections::HashSet<crate::format::Hash32>>,
    pending_done: parking_lot::Condvar,
    /// One transfer at a time from a remote destination (they share one connection).
    transfer: Mutex<()>,
    /// (volume, session, first chunk, chunks): read-ahead work.
    prefetch: crossbeam_channel::Sender<(usize, usize, u64, u64)>,
    prefetch_rx: crossbeam_channel::Receiver<(usize, usize, u64, u64)>,
}

/// Chunks fetched ahead of a sequential reader.
const READ_AHEAD: u64 = 8;
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

fn eio(what: impl std::fmt::Display) -> io::Error {
    tracing::error!("{what}");
    io::Error::from_raw_os_error(libc::EIO)
}

impl ArchiveView {
    pub fn new(archive: Archive, o: &ViewOptions) -> Result<ArchiveView> {
        if let Some(v) = &o.volume {
            if archive.volume(v).is_none() {
                return Err(Error::VolumeNotFound(v.clone()));
            }
        }
        let now = SystemTime::now();
        let mut nodes: Vec<(Node, SystemTime)> = vec![(
            Node::Dir {
                children: Vec::new(),
            },
            now,
        )];
        for (vi, vol) in archive.volumes.iter().enumerate() {
            if o.volume.as_ref().is_some_and(|v| v != vol.name()) || vol.sessions.is_empty() {
                continue;
            }
            let sessions: Vec<usize> = match &o.session {
                None => (0..vol.sessions.len()).collect(),
                Some(sel) => match sel.select(vol) {
                    Ok(i) => vec![i],
                    Err(_) if o.volume.is_none() => continue,
                    Err(e) => return Err(e),
                },
            };
            let newest = &vol.sessions[*sessions.last().expect("not empty")];
            let Some(dir) = ensure_dir(&mut nodes, vol.name(), session_time(&newest.name)) else {
                tracing::warn!(
                    "volume '{}' clashes with another name in the tree; not shown",
                    vol.name()
                );
                continue;
            };
            let mut tags: Vec<(String, Vec<String>)> = Vec::new();
            for &si in &sessions {
                let s = &vol.sessions[si];
                let file = format!("{}.img", s.name);
                nodes.push((Node::Session { vol: vi, ses: si }, session_time(&s.name)));
                let id = nodes.len() as NodeId;
                add_child(&mut nodes, dir, file.clone().into(), id);
                for t in &s.info.tags {
                    match tags.iter_mut().find(|(id, _)| *id == t.id) {
                        Some((_, files)) => files.push(file.clone()),
                        None => tags.push((t.id.clone(), vec![file.clone()])),
                    }
                }
            }
            let mtime = session_time(&newest.name);
            nodes.push((
                Node::Link {
                    target: format!("{}.img", newest.name).into(),
                },
                mtime,
            ));
            let id = nodes.len() as NodeId;
            add_child(&mut nodes, dir, "latest.img".into(), id);
            if !tags.is_empty() {
                nodes.push((
                    Node::Dir {
                        children: Vec::new(),
                    },
                    mtime,
                ));
                let by_tag = nodes.len() as NodeId;
                add_child(&mut nodes, dir, "by-tag".into(), by_tag);
                for (tag, files) in tags {
                    nodes.push((
                        Node::Dir {
                            children: Vec::new(),
                        },
                        mtime,
                    ));
                    let tdir = nodes.len() as NodeId;
                    add_child(&mut nodes, by_tag, tag.into(), tdir);
                    for f in files {
                        nodes.push((
                            Node::Link {
                                target: format!("../../{f}").into(),
                            },
                            mtime,
                        ));
                        let id = nodes.len() as NodeId;
                        add_child(&mut nodes, tdir, f.into(), id);
                    }
                }
            }
        }
        let chunks = (o.cache_bytes / archive.chunksize()).max(16) as usize;
        let (prefetch, prefetch_rx) = crossbeam_channel::bounded(64);
        Ok(ArchiveView {
            archive,
            nodes,
            merged: Mutex::new(LruCache::new(NonZeroUsize::new(8).expect("8 > 0"))),
            chunks: Mutex::new(LruCache::new(
                NonZeroUsize::new(chunks).expect("at least 16"),
            )),
            last_end: Mutex::new(HashMap::new()),
            pending: Mutex::new(std::collections::HashSet::new()),
            pending_done: parking_lot::Condvar::new(),
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
                for (vol, ses, idx, count) in me.prefetch_rx.clone() {
                    if let Ok(m) = me.merged_for(vol, ses) {
                        let _ = me.fetch_window(vol, &m, idx, count);
                    }
                }
            });
        }
    }

    fn node(&self, id: NodeId) -> Option<&(Node, SystemTime)> {
        self.nodes.get((id as usize).checked_sub(1)?)
    }

    fn session_of(&self, id: NodeId) -> io::Result<(usize, usize)> {
        match self.node(id) {
            Some((Node::Session { vol, ses }, _)) => Ok((*vol, *ses)),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn merged_for(&self, vol: usize, ses: usize) -> io::Result<Arc<Merged>> {
        if let Some(m) = self.merged.lock().get(&(vol, ses)) {
            return Ok(m.clone());
        }
        let v = &self.archive.volumes[vol];
        let m = Arc::new(self.archive.merged(v, ses).map_err(eio)?);
        self.merged.lock().put((vol, ses), m.clone());
        Ok(m)
    }

    /// Fetches and caches the data chunks among `count` chunks from `first` that are not cached
    /// yet, in one request to the destination.
    fn fetch_window(&self, vol: usize, m: &Merged, first: u64, count: u64) -> io::Result<()> {
        let v = &self.archive.volumes[vol];
        let end = (first + count).min(m.entries.len() as u64);
        let transfer = self.transfer.lock();
        let mut want = Vec::new();
        {
            let cache = self.chunks.lock();
            let mut pending = self.pending.lock();
            for idx in first..end {
                if let Some((ChunkRef::Data(h), origin)) = m.get(idx) {
                    if !cache.contains(h) && pending.insert(*h) {
                        want.push((idx, *h, *origin));
                    }
                }
            }
        }
        if want.is_empty() {
            return Ok(());
        }
        // Whatever happens below, these are no longer pending afterwards.
        let _done = PendingGuard(self, want.iter().map(|w| w.1).collect());
        let paths: Vec<String> = want
            .iter()
            .map(|(idx, _, origin)| self.archive.chunk_path(v, *origin, *idx))
            .collect();
        let files = self
            .archive
            .dest
            .read_many(&paths, self.archive.codec.max_chunk_file())
            .map_err(eio)?;
        // Decoding can overlap the next transfer.
        drop(transfer);
        let jobs: Vec<_> = want.iter().zip(&paths).zip(files).collect();
        // Decode on two threads: the transfer is done, this is CPU work.
        let half = jobs.len().div_ceil(2);
        std::thread::scope(|s| {
            let mut results = Vec::new();
            for part in jobs.chunks(half.max(1)) {
                results.push(s.spawn(move || -> io::Result<()> {
                    for (((idx, h, _), path), file) in part {
                        let len = crate::format::manifest::chunk_len(*idx, m.volsize, m.chunksize)
                            as usize;
                        let data = file
                            .as_ref()
                            .ok_or_else(|| Error::corrupt(path.as_str(), "chunk file is missing"))
                            .and_then(|f| self.archive.codec.decode_chunk(f, h, len, path))
                            .map_err(eio)?;
                        self.chunks.lock().put(*h, Arc::new(data));
                    }
                    Ok(())
                }));
            }
            results.into_iter().try_for_each(|r| {
                r.join()
                    .unwrap_or_else(|_| Err(eio("decoder thread failed")))
            })
        })
    }

    /// The decoded, verified chunk `idx` of a merged view (zero chunks never get here).
    fn chunk(&self, vol: usize, m: &Merged, idx: u64) -> io::Result<Arc<Vec<u8>>> {
        let (r, origin) = *m.get(idx).ok_or_else(|| eio("chunk index out of range"))?;
        let ChunkRef::Data(h) = r else {
            return Err(eio("zero chunk requested as data"));
        };
        if let Some(c) = self.chunks.lock().get(&h) {
            return Ok(c.clone());
        }
        // Being fetched by another thread: wait for it rather than fetch it again.
        {
            let mut pending = self.pending.lock();
            while pending.contains(&h) {
                self.pending_done.wait(&mut pending);
            }
        }
        if let Some(c) = self.chunks.lock().get(&h) {
            return Ok(c.clone());
        }
        let v = &self.archive.volumes[vol];
        let path = self.archive.chunk_path(v, origin, idx);
        let len = crate::format::manifest::chunk_len(idx, m.volsize, m.chunksize) as usize;
        let data = self
            .archive
            .dest
            .read(&path, self.archive.codec.max_chunk_file())
            .and_then(|f| f.ok_or_else(|| Error::corrupt(&path, "chunk file is missing")))
            .and_then(|f| self.archive.codec.decode_chunk(&f, &h, len, &path))
            .map_err(eio)?;
        let data = Arc::new(data);
        self.chunks.lock().put(h, data.clone());
        Ok(data)
    }
}

/// Clears chunks from the pending set (and wakes waiters) when a fetch ends, however it ends.
struct PendingGuard<'a>(&'a ArchiveView, Vec<crate::format::Hash32>);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut pending = self.0.pending.lock();
        for h in &self.1 {
            pending.remove(h);
        }
        self.0.pending_done.notify_all();
    }
}

impl ArchiveView {
    /// The first offset at or after `offset` in a chunk matching `pred` (holes are zero chunks).
    fn next_where(
        &self,
        node: NodeId,
        offset: u64,
        pred: impl Fn(&ChunkRef) -> bool,
    ) -> io::Result<Option<u64>> {
        let (vol, ses) = self.session_of(node)?;
        let m = self.merged_for(vol, ses)?;
        let first = offset / m.chunksize;
        Ok(m.entries
            .iter()
            .enumerate()
            .skip(first as usize)
            .find(|(_, (r, _))| pred(r))
            .map(|(i, _)| (i as u64 * m.chunksize).max(offset)))
    }
}

fn add_child(nodes: &mut [(Node, SystemTime)], dir: NodeId, name: OsString, id: NodeId) {
    if let (Node::Dir { children }, _) = &mut nodes[dir as usize - 1] {
        children.push((name, id));
    }
}

/// The directory for a volume name (`a/b/c` → nested), created as needed. `None` if a path
/// component is already something other than a directory.
fn ensure_dir(
    nodes: &mut Vec<(Node, SystemTime)>,
    name: &str,
    mtime: SystemTime,
) -> Option<NodeId> {
    let mut cur = ROOT;
    for comp in name.split('/').filter(|c| !c.is_empty()) {
        let existing = match &nodes[cur as usize - 1].0 {
            Node::Dir { children } => children.iter().find(|(n, _)| n == comp).map(|(_, id)| *id),
            _ => return None,
        };
        cur = match existing {
            Some(id) if matches!(nodes[id as usize - 1].0, Node::Dir { .. }) => id,
            Some(_) => return None,
            None => {
                nodes.push((
                    Node::Dir {
                        children: Vec::new(),
                    },
                    mtime,
                ));
                let id = nodes.len() as NodeId;
                add_child(nodes, cur, comp.into(), id);
                id
            }
        };
    }
    Some(cur)
}

impl SparseTree for ArchiveView {
    fn attr(&self, node: NodeId) -> io::Result<Attr> {
        let (n, mtime) = self
            .node(node)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let (kind, size, blocks) = match n {
            Node::Dir { .. } => (Kind::Dir, 0, 0),
            Node::Link { target } => (Kind::Symlink, target.len() as u64, 0),
            Node::Session { vol, ses } => {
                let info = &self.archive.volumes[*vol].sessions[*ses].info;
                let m = self.merged_for(*vol, *ses)?;
                let data = m
                    .entries
                    .iter()
                    .filter(|(r, _)| matches!(r, ChunkRef::Data(_)))
                    .count() as u64;
                (
                    Kind::File,
                    info.volsize,
                    (data * m.chunksize).min(info.volsize.next_multiple_of(512)) / 512,
                )
            }
        };
        Ok(Attr {
            kind,
            size,
            blocks,
            mtime: *mtime,
        })
    }

    fn lookup(&self, parent: NodeId, name: &OsStr) -> Option<NodeId> {
        match self.node(parent)? {
            (Node::Dir { children }, _) => {
                children.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
            }
            _ => None,
        }
    }

    fn children(&self, dir: NodeId) -> Option<Vec<(OsString, NodeId)>> {
        match self.node(dir)? {
            (Node::Dir { children }, _) => Some(children.clone()),
            _ => None,
        }
    }

    fn readlink(&self, node: NodeId) -> Option<OsString> {
        match self.node(node)? {
            (Node::Link { target }, _) => Some(target.clone()),
            _ => None,
        }
    }

    fn read_at(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let (vol, ses) = self.session_of(node)?;
        let m = self.merged_for(vol, ses)?;
        if offset >= m.volsize {
            return Ok(0);
        }
        let n = ((m.volsize - offset) as usize).min(buf.len());
        let cs = m.chunksize;
        let sequential = offset == 0 || self.last_end.lock().get(&node) == Some(&offset);
        if sequential && self.archive.dest.batch_reads() {
            // Remote: one request for this chunk and the following ones, not one per chunk.
            if let Some((ChunkRef::Data(h), _)) = m.get(offset / cs) {
                if !self.chunks.lock().contains(h) && !self.pending.lock().contains(h) {
                    self.fetch_window(vol, &m, offset / cs, REMOTE_WINDOW)?;
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
            match m.get(idx).map(|e| e.0) {
                Some(ChunkRef::Zero) => out.fill(0),
                Some(ChunkRef::Data(_)) => {
                    let c = self.chunk(vol, &m, idx)?;
                    out.copy_from_slice(&c[within..within + take]);
                }
                None => return Err(eio("read beyond the merged manifest")),
            }
            done += take;
        }
        // Sequential reader: fetch the next chunks in the background.
        let end = offset + n as u64;
        self.last_end.lock().insert(node, end);
        if sequential {
            let last = (end - 1) / cs;
            if self.archive.dest.batch_reads() {
                // Keep a window ahead: on entering a window, ask for the next one.
                let first = offset / cs;
                if first % REMOTE_WINDOW == 0 || last / REMOTE_WINDOW != first / REMOTE_WINDOW {
                    // Two windows ahead: one transfers while the other decodes.
                    let next = (last / REMOTE_WINDOW + 1) * REMOTE_WINDOW;
                    for w in [next, next + REMOTE_WINDOW] {
                        let _ = self.prefetch.try_send((vol, ses, w, REMOTE_WINDOW));
                    }
                }
            } else {
                for idx in last + 1..=(last + READ_AHEAD).min(m.entries.len() as u64 - 1) {
                    if let Some((ChunkRef::Data(h), _)) = m.get(idx) {
                        if !self.chunks.lock().contains(h) {
                            let _ = self.prefetch.try_send((vol, ses, idx, 1));
                        }
                    }
                }
            }
        }
        Ok(n)
    }

    fn next_data(&self, node: NodeId, offset: u64) -> io::Result<Option<u64>> {
        self.next_where(node, offset, |r| matches!(r, ChunkRef::Data(_)))
    }

    fn next_hole(&self, node: NodeId, offset: u64) -> io::Result<u64> {
        let (vol, ses) = self.session_of(node)?;
        let size = self.merged_for(vol, ses)?.volsize;
        Ok(self
            .next_where(node, offset, |r| matches!(r, ChunkRef::Zero))?
            .unwrap_or(size))
    }
}
