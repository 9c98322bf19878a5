//! One writer at a time on object storage, without a server-side lock service: a lock object
//! (`PREFIX.wyng-lock`, beside the archive) created with a conditional PUT
//! (`If-None-Match: *`: only one creator wins), holding an owner id and an expiry that a
//! background thread renews while the command runs. A lock past its expiry (its holder died)
//! is taken over: deleted only if it is still the stale one (`If-Match` on its ETag), then
//! created again conditionally, so two takers cannot both win.
//!
//! An engine that ignores conditional writes would let two writers in: [`probe`] checks it once
//! per run (a second conditional PUT of the same key must fail) and refuses such an engine,
//! unless the user accepts the risk with `--s3-no-conditional-lock`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Inner, Reply};
use crate::error::{Error, Result};

/// How long a lock lives without renewal.
const TTL: Duration = Duration::from_secs(120);
/// How often the holder renews it.
const RENEW: Duration = Duration::from_secs(30);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A lock nobody holds any more: past its expiry, or left by a process of this machine that
/// has exited (a command killed or cut off before it could release it).
fn stale(text: &str) -> bool {
    let expired = field(text, "expires")
        .and_then(|e| e.parse::<u64>().ok())
        .is_none_or(|e| e <= now());
    let dead_here = field(text, "host") == Some(hostname().as_str())
        && field(text, "pid")
            .and_then(|p| p.parse::<i32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() as i32
                    && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                        == Err(nix::errno::Errno::ESRCH)
            });
    expired || dead_here
}

fn body(owner: &str) -> String {
    let host = hostname();
    format!(
        "owner={owner}\nhost={host}\npid={}\nexpires={}\n",
        std::process::id(),
        now() + TTL.as_secs()
    )
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

pub(crate) struct Held {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    etag: Arc<parking_lot::Mutex<String>>,
}

/// Checks once that the engine honours `If-None-Match: *` on PUT.
pub fn probe(inner: &Inner) -> Result<()> {
    let key = format!(
        "{}.wyng-probe-{}",
        inner.cfg.lock_key(),
        uuid::Uuid::new_v4().simple()
    );
    let cond = [("if-none-match", "*".to_string())];
    let first = inner.put(&key, b"probe", &cond)?;
    let second = inner.put(&key, b"probe", &cond)?;
    let _ = inner.delete(&key, &[]);
    match (first, second) {
        (Reply::Ok(_), Reply::PreconditionFailed) => Ok(()),
        _ => Err(inner.unavailable(
            "this S3 engine ignores conditional writes (If-None-Match), so wyng cannot keep two writers apart; \
             if you make sure only one wyng writes to this archive at a time, add --s3-no-conditional-lock"
                .into(),
        )),
    }
}

pub(crate) fn acquire(inner: &Arc<Inner>) -> Result<Held> {
    let key = inner.cfg.lock_key();
    let owner = uuid::Uuid::new_v4().simple().to_string();
    let unconditional = inner.cfg.no_conditional_lock;
    for _ in 0..3 {
        let cond = if unconditional {
            Vec::new()
        } else {
            vec![("if-none-match", "*".to_string())]
        };
        if unconditional {
            // Without conditional writes, a live lock is still respected.
            if let Some(text) = inner.get(&key, 4096)? {
                let text = String::from_utf8_lossy(&text).into_owned();
                if !stale(&text) {
                    return Err(busy(inner, &text));
                }
            }
        }
        match inner.put(&key, body(&owner).as_bytes(), &cond)? {
            Reply::Ok(resp) => {
                let etag = resp.header("ETag").unwrap_or("").to_string();
                return Ok(start(inner.clone(), key, owner, etag));
            }
            Reply::PreconditionFailed => {}
            Reply::NotFound => return Err(inner.unavailable(format!("PUT {key}: not found"))),
        }
        // Somebody holds it: theirs, unless it expired.
        let resp = match inner.send(
            &key,
            "GET",
            &|| super::signed(inner.bucket.get_object(inner.creds(), &key), &[]),
            &super::Body::Empty,
        )? {
            Reply::Ok(r) => r,
            // Released meanwhile: try again.
            _ => continue,
        };
        let etag = resp.header("ETag").unwrap_or("").to_string();
        let text = resp.into_string().unwrap_or_default();
        if !stale(&text) {
            return Err(busy(inner, &text));
        }
        tracing::warn!(
            "taking over a stale archive lock (host {}, pid {}: expired, or its process is gone)",
            field(&text, "host").unwrap_or("?"),
            field(&text, "pid").unwrap_or("?")
        );
        // Only the stale lock: If-Match on its ETag.
        let _ = inner.delete(&key, &[("if-match", etag)]);
    }
    Err(Error::Busy {
        url: inner.url.clone(),
    })
}

fn busy(inner: &Inner, text: &str) -> Error {
    tracing::warn!(
        "the archive is locked by host {}, pid {} (until {} unless renewed)",
        field(text, "host").unwrap_or("?"),
        field(text, "pid").unwrap_or("?"),
        field(text, "expires").unwrap_or("?"),
    );
    Error::Busy {
        url: inner.url.clone(),
    }
}

fn start(inner: Arc<Inner>, key: String, owner: String, etag: String) -> Held {
    let stop = Arc::new(AtomicBool::new(false));
    let etag = Arc::new(parking_lot::Mutex::new(etag));
    let (s, e) = (stop.clone(), etag.clone());
    let thread = std::thread::spawn(move || {
        let mut waited = Duration::ZERO;
        while !s.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            waited += Duration::from_millis(200);
            if waited < RENEW {
                continue;
            }
            waited = Duration::ZERO;
            // Renew only our own lock (If-Match on our ETag); anything else means it was
            // taken over while we stalled: stop writing.
            let cur = e.lock().clone();
            let cond = if inner.cfg.no_conditional_lock || cur.is_empty() {
                Vec::new()
            } else {
                vec![("if-match", cur)]
            };
            match inner.put(&key, body(&owner).as_bytes(), &cond) {
                Ok(Reply::Ok(resp)) => {
                    *e.lock() = resp.header("ETag").unwrap_or("").to_string();
                }
                Ok(_) => {
                    tracing::error!(
                        "the archive lock was taken over by another process; stopping writes"
                    );
                    inner.lock_lost.store(true, Ordering::Relaxed);
                    return;
                }
                Err(err) => tracing::warn!("could not renew the archive lock: {err}"),
            }
        }
    });
    Held {
        stop,
        thread: Some(thread),
        etag,
    }
}

impl Held {
    pub fn release(mut self, inner: &Inner) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if inner.lock_lost.load(Ordering::Relaxed) {
            return;
        }
        let etag = self.etag.lock().clone();
        let cond = if inner.cfg.no_conditional_lock || etag.is_empty() {
            Vec::new()
        } else {
            vec![("if-match", etag)]
        };
        if let Err(e) = inner.delete(&inner.cfg.lock_key(), &cond) {
            tracing::warn!("could not release the archive lock (it expires by itself): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_fields() {
        let b = super::body("abc");
        assert_eq!(super::field(&b, "owner"), Some("abc"));
        assert!(super::field(&b, "expires").unwrap().parse::<u64>().unwrap() > super::now());
        assert_eq!(super::field("x=1\n", "owner"), None);
        // Live: ours, unexpired. Stale: expired, or a dead process of this host.
        assert!(!super::stale(&b));
        assert!(super::stale("owner=a\nhost=h\npid=1\nexpires=1000\n"));
        let dead = format!(
            "owner=a\nhost={}\npid=999999999\nexpires={}\n",
            super::hostname(),
            u64::MAX
        );
        assert!(super::stale(&dead));
        let elsewhere = format!(
            "owner=a\nhost=other-{}\npid=999999999\nexpires={}\n",
            super::hostname(),
            u64::MAX
        );
        assert!(!super::stale(&elsewhere));
    }
}
