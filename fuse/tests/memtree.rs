//! A real FUSE mount of an in-memory tree: reads, holes, symlinks, read-only refusals, errors.
//! Needs root and /dev/fuse; skips without them, except under CI=true where it must run.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::SystemTime;

use wyng_fuse::{mount, Attr, Kind, MountConfig, NodeId, SparseTree, ROOT};

const MIB: u64 = 1 << 20;

/// `/a.img` (3 MiB: data in [0, 64K) and [2M, 2M+100), holes elsewhere), `/latest -> a.img`,
/// `/sub/bad.img` (1 MiB data, then a region whose reads fail).
struct MemTree;

const A: NodeId = 2;
const LATEST: NodeId = 3;
const SUB: NodeId = 4;
const BAD: NodeId = 5;

fn byte_at(node: NodeId, off: u64) -> u8 {
    match node {
        A if off < 65536 || (2 * MIB..2 * MIB + 100).contains(&off) => (off % 251) as u8 + 1,
        BAD if off < MIB => 7,
        _ => 0,
    }
}

impl SparseTree for MemTree {
    fn attr(&self, node: NodeId) -> io::Result<Attr> {
        let (kind, size) = match node {
            ROOT | SUB => (Kind::Dir, 0),
            A => (Kind::File, 3 * MIB),
            BAD => (Kind::File, 2 * MIB),
            LATEST => (Kind::Symlink, 5),
            _ => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
        };
        Ok(Attr {
            kind,
            size,
            blocks: if node == A { 2 * 65536 / 512 } else { 0 },
            mtime: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
            perm: None,
            ttl: std::time::Duration::from_secs(3600),
        })
    }

    fn lookup(&self, parent: NodeId, name: &OsStr) -> Option<NodeId> {
        self.children(parent)?
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, id, _)| id)
    }

    fn children(&self, dir: NodeId) -> Option<Vec<(OsString, NodeId, Kind)>> {
        match dir {
            ROOT => Some(vec![
                ("a.img".into(), A, Kind::File),
                ("latest".into(), LATEST, Kind::Symlink),
                ("sub".into(), SUB, Kind::Dir),
            ]),
            SUB => Some(vec![("bad.img".into(), BAD, Kind::File)]),
            _ => None,
        }
    }

    fn readlink(&self, node: NodeId) -> Option<OsString> {
        (node == LATEST).then(|| "a.img".into())
    }

    fn read_at(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.attr(node)?.size;
        let n = (size.saturating_sub(offset) as usize).min(buf.len());
        if node == BAD && offset + n as u64 > MIB {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = byte_at(node, offset + i as u64);
        }
        Ok(n)
    }

    fn next_data(&self, node: NodeId, offset: u64) -> io::Result<Option<u64>> {
        Ok(match node {
            A if offset < 65536 => Some(offset),
            A if offset < 2 * MIB => Some(2 * MIB),
            A if offset < 2 * MIB + 100 => Some(offset),
            _ => None,
        })
    }

    fn next_hole(&self, node: NodeId, offset: u64) -> io::Result<u64> {
        Ok(match node {
            A if offset < 65536 => 65536,
            A if (2 * MIB..2 * MIB + 100).contains(&offset) => 2 * MIB + 100,
            _ => offset,
        })
    }
}

fn can_mount() -> bool {
    let ok = std::path::Path::new("/dev/fuse").exists() && unsafe { libc::geteuid() } == 0;
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: FUSE tests need root and /dev/fuse"
        );
        eprintln!("skipping: needs root and /dev/fuse");
    }
    ok
}

fn seek(f: &std::fs::File, off: i64, whence: i32) -> io::Result<i64> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

#[test]
fn mounted_tree_behaves_like_a_read_only_sparse_filesystem() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    let m = mount(Arc::new(MemTree), mnt, &MountConfig::default()).unwrap();

    // Listing and attributes.
    let mut names: Vec<String> = std::fs::read_dir(mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.img", "latest", "sub"]);
    let md = std::fs::metadata(mnt.join("a.img")).unwrap();
    assert_eq!(md.len(), 3 * MIB);
    assert_eq!(md.blocks(), 256);
    assert_eq!(md.mtime(), 1_700_000_000);
    assert_eq!(
        std::fs::read_link(mnt.join("latest")).unwrap(),
        std::path::Path::new("a.img")
    );

    // Content, also through the symlink.
    let data = std::fs::read(mnt.join("latest")).unwrap();
    assert_eq!(data.len() as u64, 3 * MIB);
    assert!(data
        .iter()
        .enumerate()
        .all(|(i, &b)| b == byte_at(A, i as u64)));

    // Holes.
    let f = std::fs::File::open(mnt.join("a.img")).unwrap();
    assert_eq!(seek(&f, 0, libc::SEEK_HOLE).unwrap(), 65536);
    assert_eq!(seek(&f, 65536, libc::SEEK_DATA).unwrap(), 2 * MIB as i64);
    assert_eq!(
        seek(&f, 2 * MIB as i64 + 100, libc::SEEK_DATA)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENXIO)
    );
    assert_eq!(
        seek(&f, 2 * MIB as i64 + 100, libc::SEEK_HOLE).unwrap(),
        2 * MIB as i64 + 100
    );

    // Read-only, whatever the attempt.
    let erofs = |r: io::Result<()>| assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("a.img"))
            .map(|_| ()),
    );
    erofs(std::fs::File::create(mnt.join("new")).map(|_| ()));
    erofs(std::fs::create_dir(mnt.join("d")));
    erofs(std::fs::remove_file(mnt.join("a.img")));
    erofs(std::fs::set_permissions(
        mnt.join("a.img"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    ));
    erofs(std::fs::rename(mnt.join("a.img"), mnt.join("b.img")));
    // Those whose fuser default would answer otherwise (EPERM, ENOSYS): the kernel answers
    // first, so none of them needs an implementation here.
    erofs(std::os::unix::fs::symlink("a.img", mnt.join("l")));
    erofs(std::fs::hard_link(mnt.join("a.img"), mnt.join("h")));
    erofs(std::fs::remove_dir(mnt.join("sub")));
    let path = std::ffi::CString::new(mnt.join("a.img").into_os_string().into_vec()).unwrap();
    // SAFETY: NUL-terminated strings and a 1-byte value, all alive for the call.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.x".as_ptr(),
            [1u8].as_ptr().cast(),
            1,
            0,
        )
    };
    erofs(if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    });
    // SAFETY: a NUL-terminated path alive for the call.
    let r = unsafe { libc::truncate(path.as_ptr(), 0) };
    erofs(if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    });

    // An error from the tree is an error to the reader, never data.
    let mut bad = std::fs::File::open(mnt.join("sub/bad.img")).unwrap();
    let mut first = vec![0u8; MIB as usize];
    bad.read_exact(&mut first).unwrap();
    assert!(first.iter().all(|&b| b == 7));
    bad.seek(SeekFrom::Start(MIB + 4096)).unwrap();
    let mut more = vec![0u8; 4096];
    assert_eq!(
        bad.read(&mut more).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );

    drop(f);
    drop(bad);
    m.unmount();
    assert_eq!(std::fs::read_dir(mnt).unwrap().count(), 0, "unmounted");
}
