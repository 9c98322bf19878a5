//! wyng-fuse: a read-only FUSE filesystem of directories, symlinks and sparse files, served from
//! any [`SparseTree`]. It knows nothing of archives: the tree decides what exists and what a read
//! returns; this crate speaks the kernel protocol.
//!
//! Invariants:
//! * Nothing can be changed: the mount is `ro`, so the kernel answers every modifying call
//!   `EROFS` before it reaches us (`fuse/tests/memtree.rs` proves it), and opening for writing
//!   is refused here too. No modifying request is implemented: should one arrive anyway (a
//!   mount remounted `rw` by hand), fuser's default refuses it (`ENOSYS`/`EPERM`).
//! * A file's content never changes while it exists, so opened files keep their page cache
//!   (`FOPEN_KEEP_CACHE`); how long the kernel may cache each node's attributes and entries is
//!   the tree's choice ([`Attr::ttl`]), so directories can follow a source that changes.
//! * Reads run on a pool of worker threads and reply asynchronously, so one slow read (a chunk
//!   being fetched and decoded) never blocks lookups or other reads. A read error from the tree is
//!   returned as that error (the tree maps integrity failures to `EIO`), never as data.
//! * `lseek(SEEK_DATA/SEEK_HOLE)` follows the tree's holes, so `cp --sparse`, `qemu-img` and
//!   `du`-aware tools see them; `st_blocks` is the tree's count of stored data.

pub mod mounts;

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, MountOption, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request,
};

/// Node number; the root directory is [`ROOT`].
pub type NodeId = u64;
pub const ROOT: NodeId = 1;

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
    /// How long the kernel may cache this node's attributes and its directory entry.
    pub ttl: Duration,
    /// Permission bits (`0o777`); `None`: 0555 directories, 0444 files, 0777 links.
    pub perm: Option<u16>,
}

/// A tree of read-only sparse files. A node id always names the same thing; what a directory
/// holds may change.
pub trait SparseTree: Send + Sync + 'static {
    fn attr(&self, node: NodeId) -> io::Result<Attr>;
    fn lookup(&self, parent: NodeId, name: &OsStr) -> Option<NodeId>;
    /// A directory's entries with their kinds (listing must not need each child's attributes).
    fn children(&self, dir: NodeId) -> Option<Vec<(OsString, NodeId, Kind)>>;
    fn readlink(&self, node: NodeId) -> Option<OsString>;
    /// Fills `buf` from `offset`; returns the bytes read (short only at end of file). Holes read
    /// as zeros.
    fn read_at(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// The first offset at or after `offset` that holds data (`None`: only holes follow).
    fn next_data(&self, node: NodeId, offset: u64) -> io::Result<Option<u64>>;
    /// The first offset at or after `offset` in a hole (the file size if none before the end).
    fn next_hole(&self, node: NodeId, offset: u64) -> io::Result<u64>;
}

#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Let users other than the mounting one read the files.
    pub allow_other: bool,
    /// Threads answering reads.
    pub read_threads: usize,
    /// Shown as the filesystem's source in `mount` / `df`.
    pub fs_name: String,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            allow_other: false,
            read_threads: 4,
            fs_name: "wyng".into(),
        }
    }
}

/// A mounted tree. Dropping it unmounts, but only its own mount: once the mount is gone from
/// outside (`umount`, `fusermount3 -u`), the mountpoint may already hold a new one, which must
/// not be touched (fuser's own unmount-on-drop would unmount whatever is there by path).
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    /// The device number of this mount's root, to recognise it at the mountpoint.
    dev: u64,
}

impl Mounted {
    /// Whether the kernel side has gone away (unmounted from outside, e.g. `fusermount3 -u`).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Whether the mountpoint still shows this mount.
    fn still_mounted_here(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        !self.is_finished()
            && std::fs::metadata(&self.mountpoint).is_ok_and(|m| m.dev() == self.dev)
    }

    /// Unmounts and waits for the session to end.
    pub fn unmount(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        let ours = self.still_mounted_here();
        let Some(session) = self.session.take() else {
            return;
        };
        if ours {
            session.join();
        } else {
            // Gone already: nothing of ours is mounted, so nothing may be unmounted. The
            // session's device handle is released with the process.
            std::mem::forget(session);
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Mounts `tree` read-only at `mountpoint` and serves it from background threads.
pub fn mount(
    tree: Arc<dyn SparseTree>,
    mountpoint: &Path,
    cfg: &MountConfig,
) -> io::Result<Mounted> {
    let (tx, rx) = crossbeam_channel::bounded::<ReadJob>(256);
    for _ in 0..cfg.read_threads.max(1) {
        let (rx, tree) = (rx.clone(), tree.clone());
        std::thread::Builder::new()
            .name("wyng-fuse-read".into())
            .spawn(move || {
                for job in rx {
                    job.run(&*tree);
                }
            })?;
    }
    let mut options = vec![
        MountOption::RO,
        MountOption::FSName(cfg.fs_name.clone()),
        MountOption::Subtype("wyng".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
    ];
    if cfg.allow_other {
        options.push(MountOption::AllowOther);
    }
    let fs = ReadOnlyFs { tree, reads: tx };
    let session = fuser::spawn_mount2(fs, mountpoint, &options)?;
    let dev = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(mountpoint)?.dev()
    };
    Ok(Mounted {
        session: Some(session),
        mountpoint: mountpoint.to_path_buf(),
        dev,
    })
}

const BLOCK: u32 = 4096;

struct ReadOnlyFs {
    tree: Arc<dyn SparseTree>,
    reads: crossbeam_channel::Sender<ReadJob>,
}

struct ReadJob {
    node: NodeId,
    offset: u64,
    size: usize,
    reply: ReplyData,
}

impl ReadJob {
    fn run(self, tree: &dyn SparseTree) {
        let mut buf = vec![0u8; self.size];
        match tree.read_at(self.node, self.offset, &mut buf) {
            Ok(n) => self.reply.data(&buf[..n]),
            Err(e) => self.reply.error(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }
}

fn file_attr(node: NodeId, a: &Attr) -> FileAttr {
    let (kind, perm, nlink) = match a.kind {
        Kind::Dir => (FileType::Directory, 0o555, 2),
        Kind::File => (FileType::RegularFile, 0o444, 1),
        Kind::Symlink => (FileType::Symlink, 0o777, 1),
    };
    let perm = a.perm.map_or(perm, |p| p & 0o777);
    FileAttr {
        ino: node,
        size: a.size,
        blocks: a.blocks,
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind,
        perm,
        nlink,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        rdev: 0,
        blksize: BLOCK,
        flags: 0,
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Filesystem for ReadOnlyFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        // Large sequential reads: let the kernel read ahead up to 1 MiB.
        let _ = config.set_max_readahead(1 << 20);
        let _ = config
            .add_capabilities(fuser::consts::FUSE_ASYNC_READ | fuser::consts::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self
            .tree
            .lookup(parent, name)
            .map(|n| (n, self.tree.attr(n)))
        {
            Some((n, Ok(a))) => reply.entry(&a.ttl, &file_attr(n, &a), 0),
            Some((_, Err(e))) => reply.error(errno(&e)),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.tree.attr(ino) {
            Ok(a) => reply.attr(&a.ttl, &file_attr(ino, &a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.tree.readlink(ino) {
            Some(t) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str())),
            None => reply.error(libc::EINVAL),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return reply.error(libc::EROFS);
        }
        match self.tree.attr(ino) {
            Ok(a) if a.kind == Kind::File => reply.opened(0, fuser::consts::FOPEN_KEEP_CACHE),
            Ok(_) => reply.error(libc::EISDIR),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        if offset < 0 {
            return reply.error(libc::EINVAL);
        }
        let job = ReadJob {
            node: ino,
            offset: offset as u64,
            size: size as usize,
            reply,
        };
        if let Err(e) = self.reads.send(job) {
            e.into_inner().reply.error(libc::EIO);
        }
    }

    fn lseek(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        if offset < 0 {
            return reply.error(libc::ENXIO);
        }
        let size = match self.tree.attr(ino) {
            Ok(a) => a.size,
            Err(e) => return reply.error(errno(&e)),
        };
        let off = offset as u64;
        let r = match whence {
            libc::SEEK_DATA if off >= size => Err(libc::ENXIO),
            libc::SEEK_HOLE if off >= size => Err(libc::ENXIO),
            libc::SEEK_DATA => match self.tree.next_data(ino, off) {
                Ok(Some(d)) => Ok(d),
                Ok(None) => Err(libc::ENXIO),
                Err(e) => Err(errno(&e)),
            },
            libc::SEEK_HOLE => self.tree.next_hole(ino, off).map_err(|e| errno(&e)),
            libc::SEEK_SET => Ok(off),
            _ => Err(libc::EINVAL),
        };
        match r {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.tree.attr(ino) {
            Ok(a) if a.kind == Kind::Dir => reply.opened(0, 0),
            Ok(_) => reply.error(libc::ENOTDIR),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(children) = self.tree.children(ino) else {
            return reply.error(libc::ENOTDIR);
        };
        let parent = ino; // ".." resolves through the kernel's dentry cache; its number is not used
        let mut entries = vec![
            (OsString::from("."), ino, Kind::Dir),
            (OsString::from(".."), parent, Kind::Dir),
        ];
        entries.extend(children);
        for (i, (name, n, kind)) in entries.into_iter().enumerate().skip(offset.max(0) as usize) {
            let ft = match kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
                Kind::Symlink => FileType::Symlink,
            };
            if reply.add(n, (i + 1) as i64, ft, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, BLOCK, 255, BLOCK);
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(libc::ENODATA);
    }

    fn listxattr(&mut self, _req: &Request<'_>, _ino: u64, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, mask: i32, reply: ReplyEmpty) {
        if mask & libc::W_OK != 0 {
            reply.error(libc::EROFS)
        } else {
            reply.ok()
        }
    }
}
