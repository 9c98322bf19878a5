//! Long-lived commands (`mount`, `serve`) in the background: the archive is opened first (this
//! may ask for the passphrase, so it happens while we still own the terminal), then the
//! process forks; the parent waits until the child reports that it is up (or why it failed)
//! and returns; the child detaches, logs to a file and runs until it is stopped.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use wyng::archive::Archive;
use wyng::{Error, Result};

/// How often a long-lived reader checks the archive for new or removed sessions
/// (`WYNG_MOUNT_REFRESH` seconds, for tests; 2 s by default).
pub fn refresh_interval() -> Duration {
    std::env::var("WYNG_MOUNT_REFRESH")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(Duration::from_secs(2), Duration::from_secs_f64)
}

/// Tells the parent the service is up (with a line of detail for it, e.g. where it listens),
/// or why it failed. Only the first report counts.
pub type Ready<'a> = dyn FnMut(std::result::Result<&str, &Error>) + 'a;

/// Runs `run` in a forked, detached child logging to `log_file`; returns the child's pid and
/// the detail it reported once `run` reported through its `Ready`. A failure the child
/// reports comes back as `rebuild` makes it from the error's exit code and text; a child that
/// ends without reporting is `early`.
pub fn daemon(
    archive: Archive,
    log_file: &Path,
    run: impl FnOnce(Archive, &mut Ready) -> Result<()>,
    rebuild: impl Fn(i32, &str) -> Error,
    early: impl FnOnce() -> Error,
) -> Result<(i32, String)> {
    let (r, w) = nix::unistd::pipe().map_err(|e| Error::io("pipe", e.into()))?;
    // SAFETY: the archive was opened on this thread and every helper thread it used for that
    // has been joined, so the child may continue normally.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::io("fork", e.into()))? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut msg = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut msg);
            match msg.strip_prefix("ok ") {
                Some(detail) => Ok((child.as_raw(), detail.to_string())),
                None if msg.is_empty() => Err(early()),
                None => {
                    let (code, text) = msg.split_once(' ').unwrap_or(("1", &msg));
                    Err(rebuild(code.parse().unwrap_or(1), text))
                }
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(r);
            archive.detach_after_fork();
            let _ = nix::unistd::setsid();
            detach_stdio(log_file);
            let mut w = Some(std::fs::File::from(w));
            let res = run(archive, &mut |res| {
                if let Some(mut w) = w.take() {
                    let msg = match res {
                        Ok(detail) => format!("ok {detail}"),
                        Err(e) => format!("{} {}", e.exit_code(), super::errors::message(e)),
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

/// Waits for SIGTERM, SIGINT or SIGHUP, or until `finished` says the service ended by itself
/// (checked every 25 ms: whoever stops us may be waiting for us to exit). Returns the signal.
pub fn wait_for_signal(
    signals: &mut signal_hook::iterator::Signals,
    finished: impl Fn() -> bool,
) -> Option<i32> {
    loop {
        if finished() {
            return None;
        }
        if let Some(sig) = signals.pending().next() {
            return Some(sig);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The signals that stop a long-lived command.
pub fn stop_signals() -> Result<signal_hook::iterator::Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| Error::io("signal handlers", e))
}
