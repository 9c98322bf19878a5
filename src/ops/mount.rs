//! `mount` and `umount`: serve an archive's sessions as read-only sparse image files.
//!
//! Order of events: check FUSE and the mountpoint, open the archive (this may ask for the
//! passphrase, so it happens while we still own the terminal), then, unless `--foreground`,
//! fork: the parent waits until the child reports that the mount is up (or why it failed) and
//! exits with that status; the child detaches, logs to `<meta-dir>/mount.log`, serves until
//! SIGTERM/SIGINT/SIGHUP or an external unmount, then unmounts cleanly.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::ops::SessionSel;
use crate::view::{ArchiveView, ViewOptions};

pub struct MountOptions {
    pub mountpoint: PathBuf,
    pub volume: Option<String>,
    pub session: Option<SessionSel>,
    pub cache_bytes: u64,
    pub foreground: bool,
    pub allow_other: bool,
    /// Daemon log file (used when not in the foreground).
    pub log_file: PathBuf,
}

/// Parses sizes like `256M`, `1G`, `65536`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| Error::Usage(format!("'{s}' is not a size like 256M or 1G")))
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
    let md = std::fs::metadata(mountpoint)
        .map_err(|e| Error::local(mountpoint, format!("cannot use as a mountpoint: {e}")))?;
    if !md.is_dir() {
        return Err(Error::local(
            mountpoint,
            "the mountpoint must be a directory",
        ));
    }
    let parent = mountpoint.join("..");
    let pmd = std::fs::metadata(&parent).map_err(|e| Error::local(&parent, e.to_string()))?;
    use std::os::unix::fs::MetadataExt;
    if pmd.dev() != md.dev() || md.ino() == pmd.ino() {
        return Err(Error::local(
            mountpoint,
            "is busy: something is already mounted there (`wyng umount` it first)",
        ));
    }
    if std::fs::read_dir(mountpoint)
        .map_err(|e| Error::local(mountpoint, e.to_string()))?
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

/// Mounts and serves until a signal or an external unmount. `ready` is told once the mount is
/// up, or why it failed.
pub fn serve(
    archive: Archive,
    o: &MountOptions,
    ready: &mut dyn FnMut(std::result::Result<(), &Error>),
) -> Result<()> {
    let result = (|| {
        archive.dest.unlock();
        let view = Arc::new(ArchiveView::new(
            archive,
            &ViewOptions {
                volume: o.volume.clone(),
                session: o.session.clone(),
                cache_bytes: o.cache_bytes,
            },
        )?);
        // Signals are taken synchronously by this thread; every thread started after this
        // inherits the mask, so none of them is interrupted.
        let signals = blocked_signals();
        view.start_prefetch(2);
        let cfg = wyng_fuse::MountConfig {
            allow_other: o.allow_other,
            read_threads: (crate::ops::workers() * 2).max(4),
            fs_name: "wyng".into(),
        };
        let mounted = wyng_fuse::mount(view, &o.mountpoint, &cfg).map_err(|e| {
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
        })?;
        Ok((mounted, signals))
    })();
    let (mounted, signals) = match result {
        Ok(x) => x,
        Err(e) => {
            ready(Err(&e));
            return Err(e);
        }
    };
    ready(Ok(()));
    tracing::info!("mounted at {}", o.mountpoint.display());
    loop {
        if mounted.is_finished() {
            tracing::info!("unmounted from outside; exiting");
            return Ok(());
        }
        let ts = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: the set is initialised by blocked_signals; a null info pointer is allowed.
        let sig = unsafe { libc::sigtimedwait(&signals, std::ptr::null_mut(), &ts) };
        if sig > 0 {
            tracing::info!("signal {sig}: unmounting {}", o.mountpoint.display());
            break;
        }
    }
    mounted.unmount();
    Ok(())
}

fn blocked_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, then blocking it for this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Runs the mount in the background: forks, and returns in the parent once the child reports.
/// Must be called before any thread is started.
pub fn run(archive: Archive, o: &MountOptions) -> Result<()> {
    if o.foreground {
        return serve(archive, o, &mut |_| {});
    }
    let (r, w) = nix::unistd::pipe().map_err(|e| Error::Other(format!("pipe: {e}")))?;
    // SAFETY: no other thread is running yet (the archive was opened on this thread and every
    // helper thread it used has been joined), so the child may continue normally.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::Other(format!("fork: {e}")))? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(w);
            let mut msg = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut msg);
            match msg.strip_prefix("ok") {
                Some(_) => Ok(()),
                None if msg.is_empty() => Err(Error::Other(format!(
                    "the mount process ended before the mount was up; see {}",
                    o.log_file.display()
                ))),
                None => {
                    let (code, text) = msg.split_once(' ').unwrap_or(("1", &msg));
                    let code = code.parse().unwrap_or(1);
                    Err(match code {
                        7 => Error::local(&o.mountpoint, text.to_string()),
                        2 => Error::Selection(text.to_string()),
                        _ => Error::Other(text.to_string()),
                    })
                }
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(r);
            archive.dest.detach_after_fork();
            let _ = nix::unistd::setsid();
            detach_stdio(&o.log_file);
            let mut w = Some(std::fs::File::from(w));
            let res = serve(archive, o, &mut |res| {
                if let Some(mut w) = w.take() {
                    let msg = match res {
                        Ok(()) => "ok".to_string(),
                        Err(e) => format!(
                            "{} {}",
                            e.exit_code(),
                            e.to_string()
                                .trim_start_matches(&format!("{}: ", o.mountpoint.display()))
                        ),
                    };
                    let _ = w.write_all(msg.as_bytes());
                }
            });
            std::process::exit(if res.is_ok() { 0 } else { 1 });
        }
    }
}

/// Daemon: stdin from /dev/null; stdout and stderr (where the log goes) to the log file.
fn detach_stdio(log: &Path) {
    let null = std::fs::File::open("/dev/null").ok();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .ok();
    // SAFETY: dup2 onto the standard descriptors of this (single-threaded) process.
    unsafe {
        if let Some(n) = &null {
            libc::dup2(n.as_raw_fd(), 0);
        }
        let out = log
            .as_ref()
            .map(|l| l.as_raw_fd())
            .or(null.as_ref().map(|n| n.as_raw_fd()));
        if let Some(fd) = out {
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
        }
    }
}

/// `wyng umount MOUNTPOINT`.
pub fn umount(mountpoint: &Path) -> Result<()> {
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Usage("the mountpoint path contains a NUL byte".into()))?;
    // SAFETY: plain syscall with a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EPERM) => {
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
        Some(libc::EBUSY) => Err(Error::local(
            mountpoint,
            "is busy: close the files open under it (see `fuser -m`), then try again",
        )),
        Some(libc::EINVAL) => Err(Error::local(mountpoint, "is not mounted")),
        _ => Err(Error::local(mountpoint, format!("cannot unmount: {e}"))),
    }
}
