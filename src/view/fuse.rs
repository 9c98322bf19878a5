//! The one place that speaks to `wyng-fuse`: the view as a [`SparseTree`].

use std::ffi::{OsStr, OsString};
use std::io;
use std::sync::Arc;

use wyng_fuse::{Attr, Kind, NodeId, SparseTree};

use super::View;

/// A [`View`] served by `wyng-fuse`.
pub(crate) struct Adapter(pub Arc<View>);

fn kind(k: super::Kind) -> Kind {
    match k {
        super::Kind::Dir => Kind::Dir,
        super::Kind::File => Kind::File,
        super::Kind::Symlink => Kind::Symlink,
    }
}

impl SparseTree for Adapter {
    fn attr(&self, node: NodeId) -> io::Result<Attr> {
        let a = self.0.attr(node)?;
        Ok(Attr {
            kind: kind(a.kind),
            size: a.size,
            blocks: a.blocks,
            mtime: a.mtime,
            ttl: a.ttl,
            perm: a.perm,
        })
    }

    fn lookup(&self, parent: NodeId, name: &OsStr) -> Option<NodeId> {
        self.0.lookup(parent, name)
    }

    fn children(&self, dir: NodeId) -> Option<Vec<(OsString, NodeId, Kind)>> {
        Some(
            self.0
                .children(dir)?
                .into_iter()
                .map(|(n, id, k)| (n, id, kind(k)))
                .collect(),
        )
    }

    fn readlink(&self, node: NodeId) -> Option<OsString> {
        self.0.readlink(node)
    }

    fn read_at(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_at(node, offset, buf)
    }

    fn next_data(&self, node: NodeId, offset: u64) -> io::Result<Option<u64>> {
        self.0.next_data(node, offset)
    }

    fn next_hole(&self, node: NodeId, offset: u64) -> io::Result<u64> {
        self.0.next_hole(node, offset)
    }
}

/// A mounted view; dropping it unmounts.
pub struct Mount(wyng_fuse::Mounted);

impl Mount {
    /// Whether it was unmounted from outside (`fusermount3 -u`, `umount`).
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// Unmounts and waits for the FUSE session to end.
    pub fn unmount(self) {
        self.0.unmount()
    }
}

/// A wyng mount's source in the mount table is this prefix and its server's pid.
pub(crate) const FS_NAME_PREFIX: &str = "wyng:";

/// What the mount table shows at a mountpoint.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AtMountpoint {
    Nothing,
    /// Another filesystem (its type).
    Other(String),
    /// A wyng mount, and the pid of the process serving it (older wyng mounts name none).
    Wyng {
        server: Option<i32>,
    },
}

/// `path` made absolute without touching it (a dead FUSE mountpoint fails every `stat`).
pub fn absolute(path: &std::path::Path) -> io::Result<std::path::PathBuf> {
    wyng_fuse::mounts::absolute(path)
}

/// Detaches whatever is mounted at `path` (`umount -l`).
pub fn detach(path: &std::path::Path) -> io::Result<()> {
    wyng_fuse::mounts::detach(path)
}

/// What is mounted at `mountpoint` (absolute).
pub(crate) fn at_mountpoint(mountpoint: &std::path::Path) -> AtMountpoint {
    match wyng_fuse::mounts::mount_at(mountpoint) {
        None => AtMountpoint::Nothing,
        // `fuse` when mounted directly, `fuse.wyng` through fusermount3.
        Some(m)
            if (m.fstype == "fuse" || m.fstype == "fuse.wyng")
                && (m.source == "wyng" || m.source.starts_with(FS_NAME_PREFIX)) =>
        {
            AtMountpoint::Wyng {
                server: m
                    .source
                    .strip_prefix(FS_NAME_PREFIX)
                    .and_then(|p| p.parse().ok()),
            }
        }
        Some(m) => AtMountpoint::Other(m.fstype),
    }
}

/// Mounts a view read-only.
pub fn mount(
    view: Arc<View>,
    mountpoint: &std::path::Path,
    allow_other: bool,
) -> io::Result<Mount> {
    let cfg = wyng_fuse::MountConfig {
        allow_other,
        read_threads: (view.live.current().tuning().workers() * 2).max(4),
        // The serving process, for `wyng umount` to wait for (and for `mount` to tell a
        // dead mount from a live one).
        fs_name: format!("{FS_NAME_PREFIX}{}", std::process::id()),
    };
    wyng_fuse::mount(Arc::new(Adapter(view)), mountpoint, &cfg).map(Mount)
}
