//! `mount` and `umount`: serve an archive's sessions as read-only sparse image files through
//! FUSE (see [`crate::view`] for what a reader sees). Running in the background, logging and
//! signals are the binary's part; this module checks the mountpoint, builds the view and
//! mounts it, and unmounts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::archive::live::LiveArchive;
use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::ops::SessionSel;
use crate::view::fuse::{at_mountpoint, AtMountpoint, Mount};
use crate::view::{View, ViewOptions};

pub struct MountOptions {
    pub mountpoint: PathBuf,
    pub volume: Option<String>,
    pub session: Option<SessionSel>,
    pub cache_bytes: u64,
    pub allow_other: bool,
    /// How often the tree checks the archive for new or removed sessions.
    pub refresh: Duration,
    /// Show the files inside each session too (`S_….files/`).
    pub files: bool,
}

/// FUSE must be usable, and the mountpoint an empty directory that is not mounted on already.
pub fn preflight(mountpoint: &Path) -> Result<()> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        return Err(Error::local(
            "/dev/fuse",
            "FUSE is not available: install fuse3 (e.g. `apt install fuse3`) and load the fuse module (`modprobe fuse`)",
        ));
    }
    clear_dead_mount(mountpoint)?;
    let md = std::fs::metadata(mountpoint).map_err(|e| {
        Error::local(
            mountpoint,
            if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) {
                format!(
                    "is a broken mount (transport endpoint is not connected): `umount -l {}` it first",
                    mountpoint.display()
                )
            } else {
                format!("cannot use as a mountpoint: {e}")
            },
        )
    })?;
    if !md.is_dir() {
        return Err(Error::local(
            mountpoint,
            "the mountpoint must be a directory",
        ));
    }
    let parent = mountpoint.join("..");
    let pmd = std::fs::metadata(&parent).map_err(|e| Error::local_io(&parent, "", e))?;
    use std::os::unix::fs::MetadataExt;
    if pmd.dev() != md.dev() || md.ino() == pmd.ino() {
        return Err(Error::local(
            mountpoint,
            "is busy: something is already mounted there (`wyng umount` it first)",
        ));
    }
    if std::fs::read_dir(mountpoint)
        .map_err(|e| Error::local_io(mountpoint, "", e))?
        .next()
        .is_some()
    {
        return Err(Error::local(
            mountpoint,
            "is busy: the directory is not empty",
        ));
    }
    Ok(())
}

/// A wyng mount whose process no longer runs (killed) can serve nothing any more: it is
/// detached so the mountpoint can be used again. A live wyng mount, or a broken mount of
/// something else, is the user's to unmount.
fn clear_dead_mount(mountpoint: &Path) -> Result<()> {
    let Ok(abs) = crate::view::fuse::absolute(mountpoint) else {
        return Ok(()); // reported by the checks that follow
    };
    match at_mountpoint(&abs) {
        AtMountpoint::Wyng { server } if !server.is_some_and(is_wyng_process) => {
            crate::view::fuse::detach(&abs).map_err(|e| {
                Error::local(
                    mountpoint,
                    format!(
                        "holds a dead wyng mount that cannot be removed ({e}): run `wyng umount {}`",
                        mountpoint.display()
                    ),
                )
            })?;
            tracing::warn!(
                "{}: removed a dead wyng mount (its process{} is gone)",
                mountpoint.display(),
                server.map_or(String::new(), |p| format!(" {p}"))
            );
            Ok(())
        }
        AtMountpoint::Wyng { server } => Err(Error::local(
            mountpoint,
            format!(
                "is busy: a wyng mount is there{} (`wyng umount {}` it first)",
                server.map_or(String::new(), |p| format!(", served by process {p}")),
                mountpoint.display()
            ),
        )),
        AtMountpoint::Other(_) | AtMountpoint::Nothing => Ok(()),
    }
}

/// Builds the view and mounts it. The archive's lock is released first: a mount is a
/// long-lived reader that must not block sends (it follows them instead).
pub fn start(mut archive: Archive, o: &MountOptions) -> Result<Mount> {
    archive.unlock();
    if let (Some(v), Some(sel)) = (&o.volume, &o.session) {
        sel.select(archive.find(v)?)?;
    }
    let filter = o.session.clone().map(|sel| {
        Arc::new(move |v: &crate::archive::Volume| sel.select(v).ok()) as crate::view::SessionFilter
    });
    let live = LiveArchive::new(archive, o.cache_bytes, o.refresh);
    let view = Arc::new(View::new(
        live,
        ViewOptions {
            volume: o.volume.clone(),
            session: filter,
            ttl: o.refresh,
            files: o.files,
        },
    )?);
    crate::view::fuse::mount(view, &o.mountpoint, o.allow_other).map_err(|e| {
        Error::local(
            &o.mountpoint,
            format!(
                "mount failed: {e}{}",
                if e.raw_os_error() == Some(libc::EPERM) {
                    " (mounting needs root, or fusermount3 from the fuse3 package)"
                } else {
                    ""
                }
            ),
        )
    })
}

/// `wyng umount MOUNTPOINT`: unmounts, then waits until the process that served the mount
/// has exited, so a `wyng mount` right after starts from a clean slate.
pub fn umount(mountpoint: &Path) -> Result<()> {
    let abs = crate::view::fuse::absolute(mountpoint)
        .map_err(|e| Error::local_io(mountpoint, "cannot use as a mountpoint", e))?;
    let server = match at_mountpoint(&abs) {
        AtMountpoint::Wyng { server } => server,
        _ => None,
    };
    unmount_path(&abs)?;
    if let Some(pid) = server {
        wait_for_exit(pid, Duration::from_secs(10));
    }
    Ok(())
}

fn unmount_path(mountpoint: &Path) -> Result<()> {
    match nix::mount::umount2(mountpoint, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let st = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(mountpoint)
                .status()
                .map_err(|e| {
                    Error::local(
                        mountpoint,
                        format!("cannot unmount: {e} (is fuse3 installed?)"),
                    )
                })?;
            if st.success() {
                Ok(())
            } else {
                Err(Error::local(mountpoint, "fusermount3 -u failed"))
            }
        }
        Err(nix::errno::Errno::EBUSY) => Err(Error::local(
            mountpoint,
            "is busy: close the files open under it (see `fuser -m`), then try again",
        )),
        Err(nix::errno::Errno::EINVAL) => Err(Error::local(mountpoint, "is not mounted")),
        Err(e) => Err(Error::local_io(mountpoint, "cannot unmount", e.into())),
    }
}

/// Whether `pid` is a running wyng process (a pid reused by another program is not, and
/// neither is an exited one not yet reaped).
fn is_wyng_process(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`: comm may hold spaces and parentheses, so split at the last ')'.
    let Some((head, tail)) = stat.rsplit_once(')') else {
        return false;
    };
    let comm = head.split_once('(').map_or("", |(_, c)| c);
    let state = tail.trim_start().chars().next().unwrap_or('?');
    comm == "wyng" && !matches!(state, 'Z' | 'X' | 'x')
}

/// Waits (bounded) for the mount's server to exit once its mount is gone.
fn wait_for_exit(pid: i32, limit: Duration) {
    let started = std::time::Instant::now();
    while is_wyng_process(pid) {
        if started.elapsed() > limit {
            tracing::warn!("the mount process {pid} is still running after the unmount");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
