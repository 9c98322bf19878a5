//! The mount's view of an archive, FUSE-free: every volume a directory, every session a sparse
//! image file (`view::fuse` adapts it to `wyng-fuse`).
//!
//! ```text
//! /<volume name>/S_YYYYMMDD-HHMMSS.img       one read-only file per session, the volume's size then
//! /<volume name>/latest.img -> S_….img        the newest session
//! /<volume name>/by-tag/<tag>/S_….img -> ../../S_….img
//! /<volume name>/S_….files/                   with `--files`: the files inside (p1/, p2/, … with a
//! /<volume name>/latest.files -> S_….files    partition table), read by [`crate::guest`]
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
//! * Memory does not grow with volumes: a session is served by a
//!   [`SessionImage`](crate::archive::live::SessionImage) (its merged-view index, data entries
//!   on disk), `stat` is O(1) once the index is open, and `SEEK_DATA`/`SEEK_HOLE` are
//!   O(log n). Decoded chunks are kept in the live archive's cache, bounded by `--cache`
//!   bytes and keyed by their verified hash, so a chunk shared by many sessions is decoded
//!   once (and shared with anything else reading the same live archive).
//!
//! This module is the tree and its refresh policy; reading, caching and following the archive
//! are [`LiveArchive`]'s.

mod build;
pub mod files;
pub mod fuse;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};

use crate::archive::live::{LiveArchive, SessionImage};
use crate::error::{Error, Result};
use crate::format::SessionName;

use build::build;

pub type NodeId = u64;
pub const ROOT: NodeId = 1;

/// Which session `--session` shows (resolved by the caller against each volume).
pub(crate) type SessionFilter = Arc<dyn Fn(&crate::archive::Volume) -> Option<usize> + Send + Sync>;

pub struct ViewOptions {
    /// Only this volume.
    pub volume: Option<String>,
    /// Only this session of each volume (a volume without one is left out).
    pub session: Option<SessionFilter>,
    /// How long the kernel may cache directories and attributes (the live archive is compared
    /// with the destination about as often).
    pub ttl: Duration,
    /// Show each session's files too (`S_….files/`, `latest.files`).
    pub files: bool,
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
    /// Permission bits, where they are not the defaults (files inside sessions).
    pub perm: Option<u16>,
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
    /// `S_….files/`: the root of a session's files.
    Files(Box<files::FilesNode>),
}

struct SessionNode {
    vi: usize,
    si: usize,
    volume: String,
    name: SessionName,
    volsize: u64,
    mtime: SystemTime,
    image: OnceLock<SessionImage>,
}

/// The tree built from one state of the archive.
struct Tree {
    generation: u64,
    nodes: HashMap<NodeId, Node>,
}

/// What a node was, for nodes whose session is gone (pruned).
struct GoneSession {
    volume: String,
    name: SessionName,
}

pub struct View {
    live: Arc<LiveArchive>,
    tree: RwLock<Tree>,
    opts: ViewOptions,
    /// Stable node ids: a path keeps its id across refreshes.
    ids: Mutex<(HashMap<String, NodeId>, NodeId)>,
    gone: Mutex<HashMap<NodeId, GoneSession>>,
    /// Ids of entries inside sessions' files.
    guest_ids: files::GuestIds,
}

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

impl View {
    pub fn new(live: Arc<LiveArchive>, o: ViewOptions) -> Result<View> {
        let archive = live.current();
        if let Some(v) = &o.volume {
            archive.find(v)?;
        }
        let mut ids = (HashMap::new(), ROOT);
        let nodes = build(&archive, &o, &mut |p| {
            *ids.0.entry(p.to_string()).or_insert_with(|| {
                ids.1 += 1;
                ids.1
            })
        });
        Ok(View {
            tree: RwLock::new(Tree {
                generation: live.generation(),
                nodes,
            }),
            live,
            opts: o,
            ids: Mutex::new(ids),
            gone: Mutex::new(HashMap::new()),
            guest_ids: files::GuestIds::default(),
        })
    }

    /// Checks whether the archive changed (at most every refresh interval, unless `force`)
    /// and, if so, rebuilds the tree from its new state. Returns whether it did.
    pub fn refresh(&self, force: bool) -> bool {
        self.live.refresh(force);
        let generation = self.live.generation();
        if self.tree.read().generation == generation {
            return false;
        }
        let fresh = self.live.current();
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
        let mut tree = self.tree.write();
        if tree.generation >= generation {
            return false; // another thread rebuilt it meanwhile
        }
        // Sessions that are no longer there: their open files learn that they were pruned.
        let mut gone = self.gone.lock();
        for (id, n) in &tree.nodes {
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
        *tree = Tree { generation, nodes };
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

    /// The image of a session file (its index built on first use).
    fn session(&self, node: NodeId) -> io::Result<SessionImage> {
        let tree = self.tree.read();
        match tree.nodes.get(&node) {
            Some(Node::Session(s)) => {
                if let Some(img) = s.image.get() {
                    return Ok(img.clone());
                }
                let img = self.live.image(s.vi, s.si).map_err(|e| self.io_error(e))?;
                Ok(s.image.get_or_init(|| img).clone())
            }
            Some(_) => Err(errno(libc::EINVAL)),
            None => {
                drop(tree);
                Err(self.gone_error(node))
            }
        }
    }

    /// A read's error as the kernel sees it: a pruned session is `ESTALE`, the rest `EIO`
    /// (each with one log line).
    fn io_error(&self, e: Error) -> io::Error {
        match e {
            Error::Pruned { .. } => {
                tracing::error!("{e}");
                errno(libc::ESTALE)
            }
            e => eio(e),
        }
    }

    pub fn kind(&self, node: NodeId) -> Option<Kind> {
        Some(match self.tree.read().nodes.get(&node)? {
            Node::Dir { .. } | Node::Files(_) => Kind::Dir,
            Node::Session(_) => Kind::File,
            Node::Link { .. } => Kind::Symlink,
        })
    }

    pub fn attr(&self, node: NodeId) -> io::Result<Attr> {
        if let Some(r) = self.guest_attr(node) {
            return r;
        }
        if matches!(self.kind(node), Some(Kind::Dir)) {
            self.refresh(false);
        }
        let st = self.tree.read();
        let short = self.opts.ttl;
        match st.nodes.get(&node) {
            Some(Node::Dir { mtime, .. }) => Ok(Attr {
                kind: Kind::Dir,
                size: 0,
                blocks: 0,
                mtime: *mtime,
                ttl: short,
                perm: None,
            }),
            Some(Node::Link { target, mtime }) => Ok(Attr {
                kind: Kind::Symlink,
                size: target.len() as u64,
                blocks: 0,
                mtime: *mtime,
                ttl: short,
                perm: None,
            }),
            Some(Node::Session(s)) => {
                let (size, mtime) = (s.volsize, s.mtime);
                drop(st);
                let img = self.session(node)?;
                Ok(Attr {
                    kind: Kind::File,
                    size,
                    blocks: img.data_bytes().min(size.next_multiple_of(512)) / 512,
                    mtime,
                    // The content never changes, but the session may be pruned.
                    ttl: short,
                    perm: None,
                })
            }
            Some(Node::Files(f)) => Ok(Attr {
                kind: Kind::Dir,
                size: 0,
                blocks: 0,
                mtime: f.mtime,
                ttl: short,
                perm: None,
            }),
            None => {
                drop(st);
                Err(self.gone_error(node))
            }
        }
    }

    pub fn lookup(&self, parent: NodeId, name: &OsStr) -> Option<NodeId> {
        if let Some(r) = self.guest_lookup(parent, name) {
            return r;
        }
        self.refresh(false);
        match self.tree.read().nodes.get(&parent)? {
            Node::Dir { children, .. } => {
                children.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
            }
            _ => None,
        }
    }

    /// A directory's entries with their kinds (no index is built for a listing).
    pub fn children(&self, dir: NodeId) -> Option<Vec<(OsString, NodeId, Kind)>> {
        if let Some(r) = self.guest_children(dir) {
            return r;
        }
        self.refresh(false);
        let st = self.tree.read();
        match st.nodes.get(&dir)? {
            Node::Dir { children, .. } => Some(
                children
                    .iter()
                    .map(|(n, id)| {
                        let k = match st.nodes.get(id) {
                            Some(Node::Dir { .. } | Node::Files(_)) => Kind::Dir,
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
        if node >= files::FIRST_GUEST_ID {
            return self.guest_readlink(node);
        }
        match self.tree.read().nodes.get(&node)? {
            Node::Link { target, .. } => Some(target.clone()),
            _ => None,
        }
    }

    /// Fills `buf` from `offset` of a session file.
    pub fn read_at(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if node >= files::FIRST_GUEST_ID {
            return self.guest_read(node, offset, buf);
        }
        self.session(node)?
            .read_at(offset, buf)
            .map_err(|e| self.io_error(e))
    }

    /// The first offset at or after `offset` that holds data (`None`: only holes follow).
    pub fn next_data(&self, node: NodeId, offset: u64) -> io::Result<Option<u64>> {
        if node >= files::FIRST_GUEST_ID {
            // Holes inside guest files are not known: all data.
            let size = self.attr(node)?.size;
            return Ok((offset < size).then_some(offset));
        }
        self.session(node)?
            .next_data(offset)
            .map_err(|e| self.io_error(e))
    }

    /// The first offset at or after `offset` in a hole (the file size if none before the end).
    pub fn next_hole(&self, node: NodeId, offset: u64) -> io::Result<u64> {
        if node >= files::FIRST_GUEST_ID {
            return Ok(self.attr(node)?.size.max(offset));
        }
        self.session(node)?
            .next_hole(offset)
            .map_err(|e| self.io_error(e))
    }
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("View")
    }
}
