//! Files inside session images: a session image as a [`guest::Disk`], and the guest trees the
//! mount shows as `S_….files/` directories.
//!
//! Invariants:
//! * Every byte comes through the session's [`SessionImage`] (verified chunks, the live
//!   archive's one cache); a damaged chunk is that read's error.
//! * A guest filesystem's crate objects are not `Send`: each session's guest tree lives on one
//!   worker thread of its own ([`GuestWorker`]), asked by every FUSE thread in turn. Its
//!   memory is the crates' small caches plus what each request holds.
//! * Node ids of guest entries are handed out as they are looked up and stay the same while
//!   the session exists (guest content never changes); at most [`MAX_NODES`] are kept, after
//!   which lookups fail with `ENOMEM` and a log line (remount to start again).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::archive::live::SessionImage;
use crate::error::{Error, Result};
use crate::guest::{self, Disk, GuestFs, GuestPath, Image, Kind, Stat, Target};

/// A session image read as a disk, fetching ahead when it is read in order.
pub(crate) struct ImageDisk {
    image: SessionImage,
    last_end: AtomicU64,
    ahead_to: AtomicU64,
}

impl ImageDisk {
    pub fn new(image: SessionImage) -> ImageDisk {
        ImageDisk {
            image,
            last_end: AtomicU64::new(u64::MAX),
            ahead_to: AtomicU64::new(0),
        }
    }
}

impl Disk for ImageDisk {
    fn size(&self) -> u64 {
        self.image.size()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.saturating_add(buf.len() as u64);
        if self.last_end.swap(end, Ordering::Relaxed) == offset {
            // In order: keep a window of chunks decoding ahead of the reader.
            let window = 32 * self.image.chunksize();
            let ahead = self.ahead_to.load(Ordering::Relaxed);
            if end + window / 2 > ahead {
                let from = ahead.max(end);
                self.image.prefetch(from, window);
                self.ahead_to.store(from + window, Ordering::Relaxed);
            }
        }
        let n = self.image.read_at(offset, buf)?;
        if n < buf.len() {
            return Err(Error::Guest {
                path: format!("{} {}", self.image.volume(), self.image.session()),
                what: format!("a read at {offset} goes past the end of the image"),
            });
        }
        Ok(())
    }
}

/// The guest tree of a session image as one session image opens it.
pub(crate) fn open_image(image: SessionImage) -> Result<Image> {
    Image::open(Arc::new(ImageDisk::new(image)))
}

/// Most guest nodes a mount keeps ids for.
pub(crate) const MAX_NODES: usize = 4 << 20;

type Job = Box<dyn FnOnce(&mut WorkerState) + Send>;

/// What a worker thread owns: the image and the filesystems opened in it so far.
pub struct WorkerState {
    image: Result<Image>,
    open: HashMap<Option<usize>, Result<Box<dyn GuestFs>>>,
}

impl WorkerState {
    /// The filesystem of a partition (opened on first use; its failure is kept).
    pub fn fs(&mut self, part: Option<usize>) -> Result<&dyn GuestFs> {
        let image = match &self.image {
            Ok(i) => i,
            Err(e) => {
                return Err(Error::Guest {
                    path: "the image".into(),
                    what: e.to_string(),
                })
            }
        };
        let fs = self
            .open
            .entry(part)
            .or_insert_with(|| image.filesystem(part));
        match fs {
            Ok(f) => Ok(&**f),
            Err(e) => Err(Error::Guest {
                path: image.prefix(part),
                what: e.to_string(),
            }),
        }
    }

    pub fn image(&self) -> Result<&Image> {
        self.image.as_ref().map_err(|e| Error::Guest {
            path: "the image".into(),
            what: e.to_string(),
        })
    }
}

/// One thread serving a session's guest tree.
pub(crate) struct GuestWorker {
    jobs: crossbeam_channel::Sender<Job>,
}

impl GuestWorker {
    pub fn start(image: SessionImage) -> GuestWorker {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        std::thread::Builder::new()
            .name("wyng-guest".into())
            .spawn(move || {
                let mut state = WorkerState {
                    image: open_image(image),
                    open: HashMap::new(),
                };
                for job in rx {
                    job(&mut state);
                }
            })
            .expect("a thread for the guest tree");
        GuestWorker { jobs: tx }
    }

    /// Runs `f` on the worker and waits for its answer.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WorkerState) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.jobs
            .send(Box::new(move |s| {
                let _ = tx.send(f(s));
            }))
            .map_err(|_| Error::Guest {
                path: "the guest tree".into(),
                what: "its worker is gone".into(),
            })?;
        rx.recv().map_err(|_| Error::Guest {
            path: "the guest tree".into(),
            what: "its worker failed".into(),
        })
    }
}

/// Where a guest node is: its session's `.files` node, partition and path.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct GuestRef {
    pub session: u64,
    pub at: Target,
}

/// Node ids for guest entries, in their own range above the tree's.
pub(crate) struct GuestIds {
    inner: Mutex<Ids>,
}

struct Ids {
    by_id: HashMap<u64, GuestRef>,
    by_ref: HashMap<GuestRef, u64>,
    next: u64,
}

/// Guest node ids start here (the tree's own ids count up from 1).
pub(crate) const FIRST_GUEST_ID: u64 = 1 << 48;

impl Default for GuestIds {
    fn default() -> Self {
        GuestIds {
            inner: Mutex::new(Ids {
                by_id: HashMap::new(),
                by_ref: HashMap::new(),
                next: FIRST_GUEST_ID,
            }),
        }
    }
}

impl GuestIds {
    pub fn get(&self, id: u64) -> Option<GuestRef> {
        self.inner.lock().by_id.get(&id).cloned()
    }

    pub fn id(&self, r: GuestRef) -> io::Result<u64> {
        let mut g = self.inner.lock();
        if let Some(id) = g.by_ref.get(&r) {
            return Ok(*id);
        }
        if g.by_id.len() >= MAX_NODES {
            tracing::error!(
                "more than {MAX_NODES} files looked up in session images: unmount and mount again to look up more"
            );
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        let id = g.next;
        g.next += 1;
        g.by_id.insert(id, r.clone());
        g.by_ref.insert(r, id);
        Ok(id)
    }
}

/// Attributes of a guest entry as the mount shows it: the guest's permissions without
/// set-id and sticky bits, readable by the mount's owner.
pub(crate) fn mount_perm(st: &Stat) -> u16 {
    let base = st.perm & 0o777;
    (match st.kind {
        Kind::Dir => base | 0o500,
        _ => base | 0o400,
    }) as u16
}

/// A guest entry's kind as the tree knows it (special files are not shown).
pub(crate) fn tree_kind(k: Kind) -> Option<super::Kind> {
    match k {
        Kind::Dir => Some(super::Kind::Dir),
        Kind::File => Some(super::Kind::File),
        Kind::Symlink => Some(super::Kind::Symlink),
        _ => None,
    }
}

/// The entries of a guest directory (or the partition list), sorted, for a mount listing.
/// Names that are not safe path components and special files are left out.
pub(crate) fn list_dir(
    s: &mut WorkerState,
    at: &Target,
    cap: usize,
) -> Result<Vec<(OsString, Target, super::Kind)>> {
    let mut out = Vec::new();
    match at {
        Target::Partitions => {
            let image = s.image()?;
            let parts: Vec<(usize, String, bool)> = image
                .layout()
                .parts()
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    (
                        i,
                        p.label(),
                        matches!(p.content, guest::probe::Content::Fs(_)),
                    )
                })
                .collect();
            for (i, label, readable) in parts {
                if readable {
                    out.push((
                        OsString::from(label),
                        Target::InFs {
                            part: Some(i),
                            path: GuestPath::root(),
                        },
                        super::Kind::Dir,
                    ));
                }
            }
        }
        Target::InFs { part, path } => {
            let fs = s.fs(*part)?;
            fs.list(path, &mut |e| {
                let (Ok(child), Ok(st)) = (path.join(&e.name), &e.stat) else {
                    return Ok(true);
                };
                if let Some(k) = tree_kind(st.kind) {
                    out.push((
                        OsString::from_vec(e.name),
                        Target::InFs {
                            part: *part,
                            path: child,
                        },
                        k,
                    ));
                }
                if out.len() > cap {
                    return Err(Error::Guest {
                        path: path.display(),
                        what: format!(
                            "the directory has more than {cap} entries; use `wyng files ls`"
                        ),
                    });
                }
                Ok(true)
            })?;
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A child of a guest directory by name.
pub fn lookup(s: &mut WorkerState, at: &Target, name: &OsStr) -> Result<Option<Target>> {
    match at {
        Target::Partitions => {
            let image = s.image()?;
            Ok(image
                .layout()
                .parts()
                .iter()
                .position(|p| {
                    p.label().as_bytes() == name.as_bytes()
                        && matches!(p.content, guest::probe::Content::Fs(_))
                })
                .map(|i| Target::InFs {
                    part: Some(i),
                    path: GuestPath::root(),
                }))
        }
        Target::InFs { part, path } => {
            let Ok(child) = path.join(name.as_bytes()) else {
                return Ok(None);
            };
            let fs = s.fs(*part)?;
            match fs.stat(&child) {
                Ok(st) if tree_kind(st.kind).is_some() => Ok(Some(Target::InFs {
                    part: *part,
                    path: child,
                })),
                Ok(_) => Ok(None),
                Err(Error::Selection(_)) => Ok(None),
                Err(e) => Err(e),
            }
        }
    }
}

/// The stat of a guest node (a partition list or a partition's root is a directory).
pub fn stat(s: &mut WorkerState, at: &Target) -> Result<Stat> {
    match at {
        Target::Partitions => Ok(Stat {
            kind: Kind::Dir,
            perm: 0o555,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: (0, 0),
        }),
        Target::InFs { part, path } => s.fs(*part)?.stat(path),
    }
}

/// `S_….files/` in the tree: the root of a session's files, served by its own worker.
pub(crate) struct FilesNode {
    vi: usize,
    si: usize,
    pub mtime: std::time::SystemTime,
    worker: std::sync::OnceLock<Arc<GuestWorker>>,
}

impl FilesNode {
    pub fn new(vi: usize, si: usize, mtime: std::time::SystemTime) -> FilesNode {
        FilesNode {
            vi,
            si,
            mtime,
            worker: std::sync::OnceLock::new(),
        }
    }
}

/// The root of a session's files: its partitions, or its one filesystem.
fn root(s: &mut WorkerState) -> Result<Target> {
    Ok(if s.image()?.layout().is_table() {
        Target::Partitions
    } else {
        Target::InFs {
            part: None,
            path: GuestPath::root(),
        }
    })
}

fn time(t: (i64, u32)) -> std::time::SystemTime {
    let base = std::time::UNIX_EPOCH;
    if t.0 >= 0 {
        base + std::time::Duration::new(t.0 as u64, t.1.min(999_999_999))
    } else {
        base - std::time::Duration::from_secs(t.0.unsigned_abs())
    }
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Where a node is in a session's files: the `.files` node serving it, and its place (`None`:
/// the root).
type Place = (u64, Option<Target>);

impl super::View {
    fn files_worker(&self, node: u64) -> io::Result<Arc<GuestWorker>> {
        let tree = self.tree.read();
        match tree.nodes.get(&node) {
            Some(super::Node::Files(f)) => {
                if let Some(w) = f.worker.get() {
                    return Ok(w.clone());
                }
                let img = self
                    .live
                    .image(f.vi, f.si)
                    .map_err(|e| self.guest_error(e))?;
                Ok(f.worker
                    .get_or_init(|| Arc::new(GuestWorker::start(img)))
                    .clone())
            }
            Some(_) => Err(errno(libc::EINVAL)),
            None => Err(errno(libc::ESTALE)),
        }
    }

    /// A guest error as the kernel sees it: a path that is not there `ENOENT`, a pruned
    /// session `ESTALE`, the rest `EIO` with a log line.
    fn guest_error(&self, e: Error) -> io::Error {
        match e {
            Error::Selection(_) => errno(libc::ENOENT),
            e => self.io_error(e),
        }
    }

    fn place(&self, node: u64) -> Option<Place> {
        if node >= FIRST_GUEST_ID {
            return self.guest_ids.get(node).map(|r| (r.session, Some(r.at)));
        }
        matches!(
            self.tree.read().nodes.get(&node),
            Some(super::Node::Files(_))
        )
        .then_some((node, None))
    }

    /// Runs `f` on the worker of `place`, with its target resolved.
    fn on_worker<T: Send + 'static>(
        &self,
        place: Place,
        f: impl FnOnce(&mut WorkerState, &Target) -> Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (files, at) = place;
        let w = self.files_worker(files)?;
        w.call(move |s| {
            let at = match at {
                Some(a) => a,
                None => root(s)?,
            };
            f(s, &at)
        })
        .and_then(|r| r)
        .map_err(|e| self.guest_error(e))
    }

    pub(super) fn guest_attr(&self, node: u64) -> Option<io::Result<super::Attr>> {
        if node < FIRST_GUEST_ID {
            return None;
        }
        let Some(place) = self.place(node) else {
            return Some(Err(errno(libc::ENOENT)));
        };
        let ttl = self.opts.ttl;
        Some(self.on_worker(place, stat).and_then(|st| {
            let kind = tree_kind(st.kind).ok_or_else(|| errno(libc::ENOENT))?;
            Ok(super::Attr {
                kind,
                size: if kind == super::Kind::Dir { 0 } else { st.size },
                blocks: if kind == super::Kind::File {
                    st.size.div_ceil(512)
                } else {
                    0
                },
                mtime: time(st.mtime),
                ttl,
                perm: Some(mount_perm(&st)),
            })
        }))
    }

    pub(super) fn guest_lookup(&self, parent: u64, name: &OsStr) -> Option<Option<u64>> {
        let (files, at) = self.place(parent)?;
        let name = name.to_os_string();
        let found = self.on_worker((files, at), move |s, at| lookup(s, at, &name));
        Some(match found {
            Ok(Some(t)) => self
                .guest_ids
                .id(GuestRef {
                    session: files,
                    at: t,
                })
                .ok(),
            Ok(None) => None,
            Err(_) => None,
        })
    }

    pub(super) fn guest_children(
        &self,
        dir: u64,
    ) -> Option<Option<Vec<(OsString, u64, super::Kind)>>> {
        let (files, at) = self.place(dir)?;
        let listed = self.on_worker((files, at), |s, at| list_dir(s, at, 1 << 20));
        Some(match listed {
            Ok(v) => {
                let mut out = Vec::with_capacity(v.len());
                for (name, t, k) in v {
                    let id = self
                        .guest_ids
                        .id(GuestRef {
                            session: files,
                            at: t,
                        })
                        .ok()?;
                    out.push((name, id, k));
                }
                Some(out)
            }
            Err(_) => None,
        })
    }

    pub(super) fn guest_readlink(&self, node: u64) -> Option<OsString> {
        let place = self.place(node)?;
        self.on_worker(place, |s, at| match at {
            Target::InFs { part, path } => s.fs(*part)?.read_link(path),
            Target::Partitions => Err(Error::Selection("not a link".into())),
        })
        .ok()
        .map(OsString::from_vec)
    }

    pub(super) fn guest_read(&self, node: u64, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let place = self.place(node).ok_or_else(|| errno(libc::ENOENT))?;
        let len = buf.len();
        let data = self.on_worker(place, move |s, at| match at {
            Target::InFs { part, path } => {
                let mut v = vec![0u8; len];
                let n = s.fs(*part)?.read_at(path, offset, &mut v)?;
                v.truncate(n);
                Ok(v)
            }
            Target::Partitions => Err(Error::Selection("a directory".into())),
        })?;
        buf[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }
}
