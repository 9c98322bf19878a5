//! `wyng mount` and `wyng umount`. The mount runs in the background unless `--foreground`:
//! the archive is opened first (this may ask for the passphrase, so it happens while we still
//! own the terminal), then the process forks; the parent waits until the child reports that
//! the mount is up (or why it failed) and exits with that status; the child detaches, logs to
//! `<meta-dir>/mount.log`, serves until SIGTERM/SIGINT/SIGHUP or an external unmount, then
//! unmounts cleanly.

use std::path::PathBuf;

use clap::Args;

use wyng::archive::Archive;
use wyng::ops::{self, mount::MountOptions, SessionSel};
use wyng::{Error, Result};

use super::Global;

pub const HELP: &str = "Examples:\n  wyng mount /mnt/wyng --dest=file:/mnt/usb/laptop.backup\n  ls /mnt/wyng/vm1.img/            # S_20261101-020000.img ... latest.img -> newest, by-tag/\n  losetup -r -f --show -P /mnt/wyng/vm1.img/S_20261101-020000.img   # then mount -o ro,noload\n  dd if=/mnt/wyng/vm1.img/latest.img of=/dev/vg/vm1 bs=4M conv=sparse\n  wyng mount /mnt/wyng --files --dest=...   # and S_….files/: the files inside, no root needed\n  cp -a /mnt/wyng/vm1.img/latest.files/p1/etc/fstab /tmp/\n  wyng umount /mnt/wyng\n\nEvery chunk read is verified; a damaged chunk is an I/O error for that read, never wrong\nbytes. New sessions appear (and latest.img follows) within a few seconds; a session pruned\nwhile open answers ESTALE. The mount runs in the background (logging to <meta-dir>/mount.log)\nuntil `wyng umount`, SIGTERM or SIGINT. Loop-mounting a guest filesystem makes your kernel\nparse untrusted data: see docs/mount.md.";
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
    /// Show the files inside each session too: S_….files/ beside S_….img (ext2/3/4, FAT,
    /// NTFS, read by wyng itself; see docs/files.md)
    #[arg(long)]
    pub files: bool,
}

#[derive(Args, Debug)]
pub struct UmountArgs {
    /// Where a `wyng mount` is mounted
    pub mountpoint: PathBuf,
}

pub fn umount(a: UmountArgs) -> Result<()> {
    ops::mount::umount(&a.mountpoint)
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
        refresh: super::background::refresh_interval(),
        files: a.files,
    };
    if a.foreground {
        return serve(archive, &o, &mut |_| {});
    }
    let log = g.meta_dir().join("mount.log");
    let mp = o.mountpoint.clone();
    super::background::daemon(
        archive,
        &log,
        |archive, ready| serve(archive, &o, ready),
        |code, text| {
            let text = text
                .trim_start_matches(&format!("{}: ", mp.display()))
                .to_string();
            match code {
                2 => Error::Selection(text),
                _ => Error::local(&mp, text),
            }
        },
        || {
            Error::local(
                &mp,
                format!(
                    "the mount process ended before the mount was up; see {}",
                    log.display()
                ),
            )
        },
    )?;
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
fn serve(archive: Archive, o: &MountOptions, ready: &mut super::background::Ready) -> Result<()> {
    let started = super::background::stop_signals()
        .and_then(|s| ops::mount::start(archive, o).map(|m| (m, s)));
    let (mounted, mut signals) = match started {
        Ok(x) => x,
        Err(e) => {
            ready(Err(&e));
            return Err(e);
        }
    };
    ready(Ok(""));
    tracing::info!("mounted at {}", o.mountpoint.display());
    match super::background::wait_for_signal(&mut signals, || mounted.is_finished()) {
        None => {
            tracing::info!("unmounted from outside; exiting");
            return Ok(());
        }
        Some(sig) => tracing::info!("signal {sig}: unmounting {}", o.mountpoint.display()),
    }
    mounted.unmount();
    Ok(())
}
