//! The mount table as it concerns a FUSE mountpoint: what is mounted at a path (from
//! `/proc/self/mountinfo`, so it answers even where the mount itself no longer does, as after
//! its server was killed), and unmounting by path.

use std::io;
use std::path::{Path, PathBuf};

/// One line of the mount table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    /// The filesystem type, e.g. `fuse.wyng`.
    pub fstype: String,
    /// The source (`fsname` for FUSE mounts).
    pub source: String,
}

/// `path` made absolute without touching the path itself (a dead FUSE mountpoint answers
/// every `stat` with ENOTCONN): its parent is canonicalized and its name appended.
pub fn absolute(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok(parent.canonicalize()?.join(name))
}

/// The topmost mount at `path` (absolute), if any.
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&table)
        .into_iter()
        .rfind(|m| m.mountpoint == path)
}

/// Parses `/proc/<pid>/mountinfo` (proc(5)): `id parent major:minor root mountpoint options
/// [optional fields] - fstype source superoptions`, with spaces and such escaped as `\ooo`.
pub fn parse_mountinfo(table: &str) -> Vec<MountEntry> {
    table
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mountpoint = unescape(left.split(' ').nth(4)?);
            let mut r = right.split(' ');
            let fstype = unescape(r.next()?);
            let source = unescape(r.next()?);
            Some(MountEntry {
                mountpoint: PathBuf::from(mountpoint),
                fstype,
                source,
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches whatever is mounted at `path` (`umount -l`): for a mount whose server is gone.
pub fn detach(path: &Path) -> io::Result<()> {
    nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let t = "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - fuse.wyng wyng:123 ro,user_id=0\n\
                 37 1 0:5 / /proc rw - proc proc rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mountpoint, PathBuf::from("/mnt/with space"));
        assert_eq!(m[0].fstype, "fuse.wyng");
        assert_eq!(m[0].source, "wyng:123");
        assert_eq!(m[1].fstype, "proc");
    }
}
