//! `wyng mount` and `wyng umount`. The mount runs in the background unless `--foreground`:
//! the archive is opened first (this may ask for the passphrase, so it happens while we still
//! own the terminal), then the process forks; the parent waits until the child reports that
//! the mount is up (or why it failed) and exits with that status; the child detaches, logs to
//! `<meta-dir>/mount.log`, serves until SIGTERM/SIGINT/SIGHUP or an external unmount, then
//! unmounts cleanly.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use wyng::archive::Archive;
use wyng::ops::{self, mount::MountOptions, SessionSel};
use wyng::{Error, Result};

use super::Global;

pub const HELP: &str = "Examples:\n  wyng mount /mnt/wyng --dest=file:/mnt/usb/laptop.backup\n  ls /mnt/wyng/vm1.img/            # S_20261101-020000.img ... latest.img -> newest, by-tag/\n  losetup -r -f --show -P /mnt/wyng/vm1.img/S_20261101-020000.img   # then mount -o ro,noload\n  dd if=/mnt/wyng/vm1.img/latest.img of=/dev/vg/vm1 bs=4M conv=sparse\n  wyng umount /mnt/wyng\n\nEvery chunk read is verified; a damaged chunk is an I/O error for that read, never wrong\nbytes. New sessions appear (and latest.img follows) within a few seconds; a session pruned\nwhile open answers ESTALE. The mount runs in the background (logging to <meta-dir>/mount.log)\nuntil `wyng umount`, SIGTERM or SIGINT. Loop-mounting a guest filesystem makes your kernel\nparse untrusted data: see docs/mount.md.";
pub const UMOUNT_HELP: &str =
    "Examples:\n  wyng umount /mnt/wyng          # same as fusermount3 -u /mnt/wyng\n  wyng umount ~/restore/mnt\n\nWaits until the process that served the mount has exited.";

fn size(s: &str) -> Result<u64, String> {
    wyng::size::parse(s).map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// An empty directory to mount on
    pub mountpoint: PathBuf,
    /// Only this volume
    #[arg(long, value_name = "NAME")]
    pub volume: Option<String>,
    /// Only this session of each volume (WHEN as for receive: latest, ^TAG, 20261205-101500,
    /// 20261205, 2d, yesterday ...)
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
    /// Memory for decoded chunks
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = size)]
    pub cache: u64,
    /// Stay in the foreground (logs on stderr)
    #[arg(long)]
    pub foreground: bool,
    /// Let other users read the files (needs user_allow_other in /etc/fuse.conf for non-root)
    #[arg(long)]
    pub allow_other: bool,
}

#[derive(Args, Debug)]
pub struct UmountArgs {
    /// Where a `wyng mount` is mounted
    pub mountpoint: PathBuf,
}

pub fn umount(a: UmountArgs) -> Result<()> {
    ops::mount::umount(&a.mountpoint)
}

/// How often the tree checks the archive for new or removed sessions (`WYNG_MOUNT_REFRESH`
/// seconds, for tests; 2 s by default).
fn refresh() -> Duration {
    std::env::var("WYNG_MOUNT_REFRESH")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(Duration::from_secs(2), Duration::from_secs_f64)
}

pub fn run(g: &Global, a: MountArgs) -> Result<()> {
    ops::mount::preflight(&a.mountpoint)?;
    let session = a
        .session
        .as_deref()
        .map(|s| SessionSel::parse(Some(s), true, super::now()))
        .transpose()?;
    std::fs::create_dir_all(g.meta_dir()).map_err(|e| Error::local_io(g.meta_dir(), "", e))?;
    let archive = g.read()?;
    let o = MountOptions {
        mountpoint: a.mountpoint.clone(),
        volume: a.volume,
        session,
        cache_bytes: a.cache,
        allow_other: a.allow_other,
        refresh: refresh(),
    };
    if a.foreground {
        return serve(archive, &o, &mut |_| {});
    }
    daemon(archive, &o, &g.meta_dir().join("mount.log"))?;
    g.say(format!(
        "Mounted {} at {}; `wyng umount {}` to unmount.",
        g.dest_url(),
        a.mountpoint.display(),
        a.mountpoint.display()
    ));
    Ok(())
}

/// Mounts and serves until a signal or an external unmount. `ready` is told once the mount is
/// up, or why it failed.
fn serve(
    archive: Archive,
    o: &MountOptions,
    ready: &mut dyn FnMut(std::result::Result<(), &Error>),
) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| Error::io("signal handlers", e));
    let started = signals.and_then(|s| ops::mount::start(archive, o).map(|m| (m, s)));
    let (mounted, mut signals) = match started {
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
        if let Some(sig) = signals.pending().next() {
            tracing::info!("signal {sig}: unmounting {}", o.mountpoint.display());
            break;
        }
        // Short: `wyng umount` waits for this process to exit.
        std::thread::sleep(Duration::from_millis(25));
    }
    mounted.unmount();
    Ok(())
}

/// Runs the mount in the background: forks, and returns in the parent once the child reports.
fn daemon(archive: Archive, o: &MountOptions, log_file: &Path) -> Result<()> {
    let (r, w) = nix::unistd::pipe().map_err(|e| Error::io("pipe", e.into()))?;
    // SAFETY: the archive was opened on this thread and every helper thread it used for that
    // has been joined, so the child may continue normally.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::io("fork", e.into()))? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(w);
            let mut msg = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut msg);
            match msg.strip_prefix("ok") {
                Some(_) => Ok(()),
                None if msg.is_empty() => Err(Error::local(
                    &o.mountpoint,
                    format!(
                        "the mount process ended before the mount was up; see {}",
                        log_file.display()
                    ),
                )),
                None => {
                    let (code, text) = msg.split_once(' ').unwrap_or(("1", &msg));
                    Err(match code.parse().unwrap_or(1) {
                        7 => Error::local(&o.mountpoint, text.to_string()),
                        2 => Error::Selection(text.to_string()),
                        _ => Error::local(&o.mountpoint, text.to_string()),
                    })
                }
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(r);
            archive.detach_after_fork();
            let _ = nix::unistd::setsid();
            detach_stdio(log_file);
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
    if let Some(n) = &null {
        let _ = nix::unistd::dup2(n.as_raw_fd(), 0);
    }
    let out = log
        .as_ref()
        .map(|l| l.as_raw_fd())
        .or(null.as_ref().map(|n| n.as_raw_fd()));
    if let Some(fd) = out {
        let _ = nix::unistd::dup2(fd, 1);
        let _ = nix::unistd::dup2(fd, 2);
    }
}
