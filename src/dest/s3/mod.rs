//! `s3://BUCKET/PREFIX` destinations: the V3 archive tree as objects (`PREFIX/archive.ini`,
//! `PREFIX/Vol_x/...`), so copying the prefix to a directory gives an archive the original
//! Wyng reads. Requests are signed by `rusty-s3` (SigV4) and sent with a blocking `ureq` agent
//! that keeps connections alive.
//!
//! What the engine may rely on (see [`Capabilities`]):
//! * **No atomic rename, no hard links.** A file rename is a server-side copy then a delete;
//!   the engine stages a session under its final keys (nothing references them before the
//!   root is written). A directory rename (prune's merge) copies every object, then deletes
//!   the sources, under a redo marker beside the prefix that the next writer completes first
//!   (after taking the lock), so to the engine a rename is all or nothing. Hard links are
//!   refused.
//! * **`sync` is a barrier on uploads**: chunk uploads run in parallel in the background
//!   (a bounded number in flight); `sync` returns once every one of them has been acknowledged
//!   (S3 acknowledges a PUT only once it is durable), or with the first failure.
//! * **Every failure is retried, then clear, within a bounded time.** 5xx, 429, timeouts,
//!   dropped connections and short bodies are retried with exponential backoff; then the
//!   command fails (exit 5, naming the endpoint), never with partial bytes. Every wait is
//!   bounded ([`Patience`]): connecting by [`CONNECT`], any stretch without progress by the
//!   stall timeout (`--s3-timeout`, default [`STALL`]), and a request's retries by a total
//!   window, so an engine that accepts connections and never answers fails a command within a
//!   minute, not after many. 403 is an authentication error (exit 3)
//!   naming where the credentials came from; a missing bucket exits 6.
//! * **One writer**: [`lock`] holds a lock object made with a conditional PUT.
//! * **Secrets never appear**: request URLs (which carry signatures) are never formatted into
//!   messages or logs; errors name the object key.

mod config;
mod lock;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use rusty_s3::S3Action;

pub use config::{AwsEnv, S3Config, S3Options};

use super::{Capabilities, Dest, FileStat};
use crate::error::{Error, Result};

/// How long a signed request stays valid (it is sent at once; this only covers clock skew).
const SIGN_FOR: Duration = Duration::from_secs(3600);
/// Attempts per request before a failure is reported.
const ATTEMPTS: u32 = 6;
/// The largest body buffered for retries; a larger upload is streamed once.
const RETRY_BUFFER: u64 = 64 << 20;

/// A slot of [`S3Dest::read_many`]: filled with the object (or its absence).
type Slot = Option<Option<Vec<u8>>>;

/// An upload job: the key and the bytes.
type Job = (String, Vec<u8>);

/// What [`Inner::fetch`] got.
enum Fetched {
    Missing,
    Whole(Vec<u8>),
    /// Larger than the caller holds: the unread response and its length.
    Large(Box<ureq::Response>, u64),
}

/// The signed URL of `action` with `extra` headers signed in, and the headers to send with it.
fn signed<'a>(
    mut action: impl S3Action<'a>,
    extra: &[(&'static str, String)],
) -> (url::Url, Vec<(&'static str, String)>) {
    for (h, v) in extra {
        action.headers_mut().insert(*h, v.clone());
    }
    (action.sign(SIGN_FOR), extra.to_vec())
}

/// What came back, once retries are over.
enum Reply {
    Ok(Box<ureq::Response>),
    NotFound,
    PreconditionFailed,
}

/// A request body.
enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
}

/// Requests and bytes of this run, counted as they happen; [`S3UsageLog`] reads them.
#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    retries: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// What one `s3://` destination did in this run: requests (and how many of them were retries)
/// and bytes each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct S3Usage {
    pub requests: u64,
    pub retries: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// Where the caller reads what every `s3://` destination opened with these options did
/// ([`S3Options::usage`]; clones share one log). The library counts; the binary reports,
/// once every destination is closed (closing releases the lock, itself a request).
#[derive(Clone, Debug, Default)]
pub struct S3UsageLog(Arc<Mutex<Vec<Arc<Stats>>>>);

impl S3UsageLog {
    fn register(&self, stats: Arc<Stats>) {
        self.0.lock().push(stats);
    }

    /// One entry per destination opened, in the order they were opened.
    pub fn usages(&self) -> Vec<S3Usage> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.0
            .lock()
            .iter()
            .map(|s| S3Usage {
                requests: load(&s.requests),
                retries: load(&s.retries),
                bytes_up: load(&s.bytes_up),
                bytes_down: load(&s.bytes_down),
            })
            .collect()
    }
}

/// What the upload workers and the destination share.
struct Inner {
    url: String,
    cfg: S3Config,
    bucket: rusty_s3::Bucket,
    agent: RwLock<ureq::Agent>,
    stats: Arc<Stats>,
    /// Set when the lock was lost (taken over after we stalled past its expiry): every later
    /// write fails rather than racing the new owner.
    lock_lost: AtomicBool,
    /// Set once a request failed all its attempts (the engine or the link is down): the
    /// command is failing, so later requests (other chunks, the lock's release) get a single
    /// attempt instead of minutes of retries.
    down: AtomicBool,
}

/// How long connecting may take.
pub(crate) const CONNECT: Duration = Duration::from_secs(5);
/// How long a request may go without progress by default.
pub(crate) const STALL: Duration = Duration::from_secs(15);

/// When a request stops being retried: no attempt starts once two stall timeouts have passed
/// since the first one began. The longest a request can take is therefore about three stall
/// timeouts plus the backoff (see the test below).
#[derive(Clone, Copy, Debug)]
struct Patience {
    stall: Duration,
}

impl Patience {
    fn window(&self) -> Duration {
        self.stall * 2
    }

    /// Whether attempt number `attempt` (0 is the first) may start `since` after the first.
    fn may_start(&self, attempt: u32, since: Duration) -> bool {
        attempt < ATTEMPTS && (attempt == 0 || since < self.window())
    }

    fn backoff(attempt: u32) -> Duration {
        Duration::from_millis(200 << (attempt - 1).min(5))
    }
}

fn agent(parallel: usize, stall: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(CONNECT)
        .timeout_read(stall)
        .timeout_write(stall)
        .max_idle_connections_per_host(parallel + 4)
        .build()
}

/// Whether a transport error is a timeout (the engine connected and then said nothing).
fn is_timeout(t: &ureq::Transport) -> bool {
    let mut src = std::error::Error::source(t);
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            );
        }
        src = e.source();
    }
    false
}

/// The S3 error code in an error response body (`<Code>NoSuchBucket</Code>`).
fn error_code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + 6;
    let end = body[start..].find("</Code>")? + start;
    Some(&body[start..end])
}

impl Inner {
    fn unavailable(&self, detail: String) -> Error {
        Error::DestUnavailable {
            url: self.url.clone(),
            detail,
        }
    }

    /// Sends one request (built afresh for every attempt: signatures carry the time), retrying
    /// what may pass. `key` names the object in messages.
    fn send(
        &self,
        key: &str,
        method: &str,
        url: &dyn Fn() -> (url::Url, Vec<(&'static str, String)>),
        body: &Body,
    ) -> Result<Reply> {
        let mut last = String::new();
        let patience = Patience {
            stall: self.cfg.stall,
        };
        let first = std::time::Instant::now();
        let mut attempt = 0;
        let mut stalled = false;
        loop {
            // Once the engine has failed a request whole, later ones get a single attempt.
            let down = self.down.load(Ordering::Relaxed);
            if (down && attempt > 0) || !patience.may_start(attempt, first.elapsed()) {
                break;
            }
            if attempt > 0 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Patience::backoff(attempt));
            }
            attempt += 1;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let (u, headers) = url();
            let mut req = self.agent.read().request_url(method, &u);
            for (h, v) in &headers {
                req = req.set(h, v);
            }
            let r = match body {
                Body::Empty => req.call(),
                Body::Bytes(b) => {
                    self.stats
                        .bytes_up
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                    req.send_bytes(b)
                }
            };
            match r {
                Ok(resp) => return Ok(Reply::Ok(Box::new(resp))),
                Err(ureq::Error::Status(404, _)) => return Ok(Reply::NotFound),
                Err(ureq::Error::Status(412, _)) => return Ok(Reply::PreconditionFailed),
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    let code_name = error_code(&text).unwrap_or("").to_string();
                    match code {
                        401 | 403 => {
                            return Err(Error::Auth(format!(
                                "S3 refused {method} {key} ({code}{}{code_name}) with the credentials from {}: check the access key, secret and region, or a bucket policy or quota that forbids it",
                                if code_name.is_empty() { "" } else { " " },
                                self.cfg.credential_source,
                            )))
                        }
                        // The bucket (or the archive) is not there.
                        _ if code_name == "NoSuchBucket" => {
                            return Err(Error::DestMissing {
                                url: self.url.clone(),
                                detail: format!(
                                    "bucket '{}' does not exist: create it with your S3 tool first",
                                    self.cfg.bucket
                                ),
                            })
                        }
                        507 => return Err(super::full(&self.url, key)),
                        _ if code_name == "QuotaExceeded" || code_name == "EntityTooLarge" => {
                            return Err(super::full(&self.url, key))
                        }
                        408 | 429 | 500..=599 => {
                            last = format!("{code} {code_name}");
                            continue;
                        }
                        _ => {
                            return Err(self.unavailable(format!(
                                "{method} {key}: {code} {code_name}"
                            )))
                        }
                    }
                }
                Err(ureq::Error::Transport(t)) => {
                    // Not t's Display: it carries the signed URL.
                    last = match t.message() {
                        Some(m) => format!("{}: {m}", t.kind()),
                        None => t.kind().to_string(),
                    };
                    stalled = is_timeout(&t);
                    if stalled {
                        last += " (no answer in time)";
                    }
                    continue;
                }
            }
        }
        self.down.store(true, Ordering::Relaxed);
        let attempts = attempt;
        // Engines refuse writes to a bucket over its quota with a plain 500 (SeaweedFS) or a
        // 503: say so, or the user looks for a network fault.
        let hint = if method != "GET" && method != "HEAD" && last.starts_with('5') {
            "; the engine refuses writes: if the bucket is over a quota or read-only, free space or raise the quota"
        } else {
            ""
        };
        let timed_out = if stalled {
            format!(
                "; the S3 endpoint {} does not answer (it accepts connections but sends nothing within {}s): check the engine, or give it longer with --s3-timeout=SECONDS",
                self.cfg.endpoint,
                self.cfg.stall.as_secs()
            )
        } else {
            format!(" (S3 endpoint {})", self.cfg.endpoint)
        };
        Err(self.unavailable(format!(
            "{method} {key} failed {attempts} times in {}s (last: {last}){hint}{timed_out}; the archive is as the last completed command left it",
            first.elapsed().as_secs()
        )))
    }

    fn creds(&self) -> Option<&rusty_s3::Credentials> {
        Some(&self.cfg.credentials)
    }

    fn put(&self, key: &str, data: &[u8], extra: &[(&'static str, String)]) -> Result<Reply> {
        if self.lock_lost.load(Ordering::Relaxed) {
            return Err(Error::Busy {
                url: self.url.clone(),
            });
        }
        self.send(
            key,
            "PUT",
            &|| signed(self.bucket.put_object(self.creds(), key), extra),
            &Body::Bytes(data),
        )
    }

    fn put_ok(&self, key: &str, data: &[u8]) -> Result<()> {
        match self.put(key, data, &[])? {
            Reply::Ok(_) => Ok(()),
            _ => Err(self.unavailable(format!("PUT {key}: unexpected answer"))),
        }
    }

    /// GET of a whole object of at most `max` bytes, checked against its Content-Length.
    fn get(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>> {
        match self.fetch(key, max, u64::MAX)? {
            Fetched::Missing => Ok(None),
            Fetched::Whole(b) => Ok(Some(b)),
            Fetched::Large(..) => unreachable!("every size is held"),
        }
    }

    /// One GET of an object of at most `max` bytes: a body of at most `hold` bytes is read
    /// whole and checked against its Content-Length (a short one is fetched again, never
    /// used); a larger one comes back unread, for the caller to stream once.
    fn fetch(&self, key: &str, max: u64, hold: u64) -> Result<Fetched> {
        for _ in 0..ATTEMPTS {
            let resp = match self.send(
                key,
                "GET",
                &|| signed(self.bucket.get_object(self.creds(), key), &[]),
                &Body::Empty,
            )? {
                Reply::Ok(r) => r,
                Reply::NotFound => return Ok(Fetched::Missing),
                Reply::PreconditionFailed => {
                    return Err(self.unavailable(format!("GET {key}: precondition failed")))
                }
            };
            let len: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
            if let Some(n) = len.filter(|&n| n > max) {
                return Err(Error::corrupt(
                    key,
                    format!("object is {n} bytes, more than the {max} allowed"),
                ));
            }
            if let Some(n) = len.filter(|&n| n > hold) {
                return Ok(Fetched::Large(resp, n));
            }
            let mut buf = Vec::with_capacity(len.unwrap_or(0).min(max) as usize);
            let read = resp.into_reader().take(max + 1).read_to_end(&mut buf);
            self.stats
                .bytes_down
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            match read {
                Ok(_) if buf.len() as u64 > max => {
                    return Err(Error::corrupt(
                        key,
                        format!("object is more than the {max} bytes allowed"),
                    ))
                }
                // A short body (a dropped connection) is fetched again, never used.
                Ok(_) if len.is_some_and(|n| n != buf.len() as u64) => {}
                Ok(_) => return Ok(Fetched::Whole(buf)),
                Err(_) => {}
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        Err(self.unavailable(format!(
            "GET {key}: the body came back short {ATTEMPTS} times"
        )))
    }

    fn head(&self, key: &str) -> Result<Option<u64>> {
        match self.send(
            key,
            "HEAD",
            &|| {
                (
                    self.bucket.head_object(self.creds(), key).sign(SIGN_FOR),
                    Vec::new(),
                )
            },
            &Body::Empty,
        )? {
            Reply::Ok(r) => Ok(Some(
                r.header("Content-Length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            Reply::NotFound => Ok(None),
            Reply::PreconditionFailed => Ok(None),
        }
    }

    fn delete(&self, key: &str, extra: &[(&'static str, String)]) -> Result<Reply> {
        self.send(
            key,
            "DELETE",
            &|| signed(self.bucket.delete_object(self.creds(), key), extra),
            &Body::Empty,
        )
    }

    /// Every key under `prefix` (one level with `delimiter`: files, then `dir/` prefixes).
    fn list(&self, prefix: &str, delimiter: bool, max: Option<usize>) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let reply = self.send(
                prefix,
                "GET",
                &|| {
                    let mut a = self.bucket.list_objects_v2(self.creds());
                    a.with_prefix(prefix.to_string());
                    if delimiter {
                        a.with_delimiter("/");
                    }
                    if let Some(m) = max {
                        a.with_max_keys(m);
                    }
                    if let Some(t) = &token {
                        a.with_continuation_token(t.clone());
                    }
                    (a.sign(SIGN_FOR), Vec::new())
                },
                &Body::Empty,
            )?;
            let Reply::Ok(resp) = reply else {
                return Err(Error::DestMissing {
                    url: self.url.clone(),
                    detail: format!("bucket '{}' does not exist", self.cfg.bucket),
                });
            };
            let text = resp
                .into_string()
                .map_err(|e| self.unavailable(format!("listing {prefix}: {e}")))?;
            self.stats
                .bytes_down
                .fetch_add(text.len() as u64, Ordering::Relaxed);
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text)
                .map_err(|e| self.unavailable(format!("listing {prefix}: bad reply ({e})")))?;
            out.extend(page.contents.into_iter().map(|c| c.key));
            out.extend(page.common_prefixes.into_iter().map(|c| c.prefix));
            if max.is_some_and(|m| out.len() >= m) {
                break;
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Deletes keys, a thousand per request (DeleteObjects).
    fn delete_many(&self, keys: &[String]) -> Result<()> {
        for batch in keys.chunks(1000) {
            let objects: Vec<rusty_s3::actions::ObjectIdentifier> = batch
                .iter()
                .map(|k| rusty_s3::actions::ObjectIdentifier::new(k.clone()))
                .collect();
            // The XML body and its MD5 do not change between attempts; the signature does.
            let (xml, md5) = self
                .bucket
                .delete_objects(self.creds(), objects.iter())
                .body_with_md5();
            let reply = self.send(
                &batch[0],
                "POST",
                &|| {
                    let a = self.bucket.delete_objects(self.creds(), objects.iter());
                    (a.sign(SIGN_FOR), vec![("Content-MD5", md5.clone())])
                },
                &Body::Bytes(xml.as_bytes()),
            )?;
            if let Reply::Ok(resp) = reply {
                let text = resp.into_string().unwrap_or_default();
                if let Ok(r) = rusty_s3::actions::DeleteObjectsResponse::parse(&text) {
                    if let Some(e) = r.errors.first() {
                        return Err(self
                            .unavailable(format!("deleting {}: {} {}", e.key, e.code, e.message)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Server-side copy of one object.
    fn copy(&self, from: &str, to: &str) -> Result<()> {
        const KEY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'/')
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~');
        let source = format!(
            "/{}/{}",
            self.cfg.bucket,
            percent_encoding::utf8_percent_encode(from, KEY)
        );
        match self.put(to, b"", &[("x-amz-copy-source", source)])? {
            // A copy can fail after its 200 (the error is in the body): check it.
            Reply::Ok(resp) => {
                let text = resp.into_string().unwrap_or_default();
                match error_code(&text) {
                    Some(code) => Err(self.unavailable(format!("copying {from}: {code}"))),
                    None => Ok(()),
                }
            }
            Reply::NotFound => Err(self.unavailable(format!("copying {from}: not found"))),
            Reply::PreconditionFailed => {
                Err(self.unavailable(format!("copying {from}: precondition failed")))
            }
        }
    }
}

/// Background chunk uploads: at most `parallel` in flight, the first failure kept for `sync`.
struct Uploads {
    tx: Mutex<Option<SyncSender<Job>>>,
    state: Arc<(Mutex<UploadState>, Condvar)>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct UploadState {
    in_flight: usize,
    error: Option<Error>,
}

impl Uploads {
    fn new() -> Uploads {
        Uploads {
            tx: Mutex::new(None),
            state: Arc::new((Mutex::new(UploadState::default()), Condvar::new())),
            workers: Mutex::new(Vec::new()),
        }
    }

    fn submit(&self, inner: &Arc<Inner>, key: String, data: Vec<u8>) -> Result<()> {
        {
            let mut st = self.state.0.lock();
            if let Some(e) = st.error.take() {
                return Err(e);
            }
            st.in_flight += 1;
        }
        let mut tx = self.tx.lock();
        if tx.is_none() {
            let (s, r) = sync_channel::<Job>(inner.cfg.parallel);
            let r = Arc::new(Mutex::new(r));
            let mut workers = self.workers.lock();
            for _ in 0..inner.cfg.parallel {
                let (inner, r, state) = (inner.clone(), r.clone(), self.state.clone());
                workers.push(std::thread::spawn(move || worker(&inner, &r, &state)));
            }
            *tx = Some(s);
        }
        tx.as_ref()
            .expect("started above")
            .send((key, data))
            .map_err(|_| inner.unavailable("the upload workers stopped".into()))
    }

    /// Waits for every upload; the first failure, if any.
    fn wait(&self) -> Result<()> {
        let (m, cv) = &*self.state;
        let mut st = m.lock();
        while st.in_flight > 0 {
            cv.wait(&mut st);
        }
        match st.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn stop(&self) {
        *self.tx.lock() = None;
        for w in self.workers.lock().drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(inner: &Inner, rx: &Mutex<Receiver<Job>>, state: &(Mutex<UploadState>, Condvar)) {
    loop {
        let job = rx.lock().recv();
        let Ok((key, data)) = job else { return };
        let failed = state.0.lock().error.is_some();
        let r = if failed {
            Ok(())
        } else {
            inner.put_ok(&key, &data)
        };
        let mut st = state.0.lock();
        if let Err(e) = r {
            st.error.get_or_insert(e);
        }
        st.in_flight -= 1;
        state.1.notify_all();
    }
}

pub struct S3Dest {
    inner: Arc<Inner>,
    uploads: Uploads,
    lock: Mutex<Option<lock::Held>>,
    /// Whether conditional writes were probed and found honoured (once per run).
    probed: AtomicUsize,
}

impl S3Dest {
    pub fn new(url: &str, o: &S3Options) -> Result<S3Dest> {
        let cfg = S3Config::resolve(url, o)?;
        let style = if cfg.path_style {
            rusty_s3::UrlStyle::Path
        } else {
            rusty_s3::UrlStyle::VirtualHost
        };
        let bucket = rusty_s3::Bucket::new(
            cfg.endpoint.clone(),
            style,
            cfg.bucket.clone(),
            cfg.region.clone(),
        )
        .map_err(|e| Error::BadDest {
            url: url.into(),
            why: e.to_string(),
        })?;
        let (parallel, cfg_stall) = (cfg.parallel, cfg.stall);
        let stats = Arc::new(Stats::default());
        o.usage.register(stats.clone());
        Ok(S3Dest {
            inner: Arc::new(Inner {
                url: url.to_string(),
                cfg,
                bucket,
                agent: RwLock::new(agent(parallel, cfg_stall)),
                stats,
                lock_lost: AtomicBool::new(false),
                down: AtomicBool::new(false),
            }),
            uploads: Uploads::new(),
            lock: Mutex::new(None),
            probed: AtomicUsize::new(0),
        })
    }

    /// Renames the object `from` (copy, then delete: a crash between leaves both, and the
    /// source is a leftover the engine's recovery treats as it treats the staged file it was).
    /// `false` if `from` is no object (a directory, or nothing).
    fn move_object(&self, from: &str, to: &str) -> Result<bool> {
        let (f, t) = (self.inner.cfg.key(from), self.inner.cfg.key(to));
        if self.inner.head(&f)?.is_none() {
            return Ok(false);
        }
        self.inner.copy(&f, &t)?;
        self.inner.delete(&f, &[])?;
        Ok(true)
    }

    /// Moves every object under `from/` to `to/` (copies first, then deletes, so a crash at
    /// any point leaves every object in at least one place), then drops the redo marker.
    /// Running it again after a crash completes the move.
    fn finish_rename(&self, from: &str, to: &str) -> Result<()> {
        let i = &self.inner;
        let (src, dst) = (i.cfg.dir_prefix(from), i.cfg.dir_prefix(to));
        let keys = i.list(&src, false, None)?;
        crate::parallel::run_on(i.cfg.parallel, keys.len(), |n| {
            let k = &keys[n];
            i.copy(k, &format!("{dst}{}", &k[src.len()..]))
        })?;
        // Deleting the sources is one `remove_all` (batched, folders included).
        self.remove_all(from)?;
        i.delete(&i.cfg.rename_key(), &[])?;
        Ok(())
    }

    /// Finishes a directory move an interrupted writer left (its redo marker exists).
    fn recover_rename(&self) -> Result<()> {
        let i = &self.inner;
        let Some(text) = i.get(&i.cfg.rename_key(), 4096)? else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&text).into_owned();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        let (Some(from), Some(to)) = (field("from"), field("to")) else {
            return Err(Error::corrupt(
                i.cfg.rename_key(),
                "the redo marker of an interrupted directory move is unreadable; \
                 check which of its directories holds the objects, then delete it",
            ));
        };
        // Paths come from our own writes; still refuse anything that leaves the archive.
        if [&from, &to]
            .iter()
            .any(|p| p.split('/').any(|c| c.is_empty() || c == ".."))
        {
            return Err(Error::corrupt(
                i.cfg.rename_key(),
                "bad path in the redo marker",
            ));
        }
        tracing::warn!("finishing an interrupted move of {from} to {to}");
        self.finish_rename(&from, &to)
    }

    /// Whether the bucket exists (HeadBucket).
    fn bucket_exists(&self) -> Result<bool> {
        let i = &self.inner;
        match i.send(
            &i.cfg.bucket,
            "HEAD",
            &|| (i.bucket.head_bucket(i.creds()).sign(SIGN_FOR), Vec::new()),
            &Body::Empty,
        )? {
            Reply::Ok(_) => Ok(true),
            _ => Ok(false),
        }
    }
}

impl Drop for S3Dest {
    fn drop(&mut self) {
        let _ = self.uploads.wait();
        self.uploads.stop();
        if let Some(l) = self.lock.lock().take() {
            l.release(&self.inner);
        }
    }
}

impl Dest for S3Dest {
    fn url(&self) -> &str {
        &self.inner.url
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_rename: false,
            hard_links: false,
            process_lock: false,
        }
    }

    fn root_exists(&self) -> Result<bool> {
        if !self.bucket_exists()? {
            return Err(Error::DestMissing {
                url: self.inner.url.clone(),
                detail: format!(
                    "bucket '{}' does not exist (or these credentials may not see it): create it with your S3 tool first",
                    self.inner.cfg.bucket
                ),
            });
        }
        let p = self.inner.cfg.dir_prefix("");
        Ok(!self.inner.list(&p, true, Some(1))?.is_empty())
    }

    fn create_root(&self) -> Result<()> {
        // A prefix exists once something is written under it.
        Ok(())
    }

    fn read(&self, rel: &str, max: u64) -> Result<Option<Vec<u8>>> {
        self.inner.get(&self.inner.cfg.key(rel), max)
    }

    fn read_many(&self, rels: &[String], max: u64) -> Result<Vec<Option<Vec<u8>>>> {
        // Parallel GETs, results in order.
        let slots: Vec<Mutex<Slot>> = rels.iter().map(|_| Mutex::new(None)).collect();
        crate::parallel::run_on(self.inner.cfg.parallel, rels.len(), |i| {
            *slots[i].lock() = Some(self.read(&rels[i], max)?);
            Ok::<(), Error>(())
        })?;
        Ok(slots
            .into_iter()
            .map(|s| {
                s.into_inner()
                    .expect("every slot is filled when run_on succeeds")
            })
            .collect())
    }

    fn batch_reads(&self) -> bool {
        true
    }

    fn read_into(&self, rel: &str, max: u64, out: &mut dyn Write) -> Result<Option<u64>> {
        let i = &self.inner;
        let key = i.cfg.key(rel);
        // Small enough to hold: fetched whole (with retries), then written; larger: streamed
        // once from the same response.
        let (resp, len) = match i.fetch(&key, max, RETRY_BUFFER)? {
            Fetched::Missing => return Ok(None),
            Fetched::Whole(b) => {
                out.write_all(&b)
                    .map_err(|e| Error::io("local spool for a download", e))?;
                return Ok(Some(b.len() as u64));
            }
            Fetched::Large(resp, len) => (resp, len),
        };
        let mut r = resp.into_reader().take(max + 1);
        let n = std::io::copy(&mut r, out).map_err(|e| Error::DestIo {
            url: i.url.clone(),
            path: key.clone(),
            source: e,
        })?;
        i.stats.bytes_down.fetch_add(n, Ordering::Relaxed);
        if n != len {
            return Err(i.unavailable(format!("GET {key}: {n} bytes received, {len} expected")));
        }
        Ok(Some(n))
    }

    fn write(&self, rel: &str, data: &[u8]) -> Result<()> {
        self.inner.put_ok(&self.inner.cfg.key(rel), data)
    }

    fn write_from(&self, rel: &str, src: &mut dyn Read, len: u64) -> Result<()> {
        let key = self.inner.cfg.key(rel);
        if len <= RETRY_BUFFER {
            let mut b = Vec::with_capacity(len as usize);
            src.read_to_end(&mut b)
                .map_err(|e| Error::io("local spool for an upload", e))?;
            return self.inner.put_ok(&key, &b);
        }
        // Too large to buffer: streamed once with its length (a failure fails the command,
        // which leaves the archive as it was).
        let i = &self.inner;
        if i.lock_lost.load(Ordering::Relaxed) {
            return Err(Error::Busy { url: i.url.clone() });
        }
        i.stats.requests.fetch_add(1, Ordering::Relaxed);
        i.stats.bytes_up.fetch_add(len, Ordering::Relaxed);
        let url = i.bucket.put_object(i.creds(), &key).sign(SIGN_FOR);
        let r = i
            .agent
            .read()
            .request_url("PUT", &url)
            .set("Content-Length", &len.to_string())
            .send(src.take(len));
        match r {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(code, _)) => Err(i.unavailable(format!("PUT {key}: {code}"))),
            Err(ureq::Error::Transport(t)) => {
                Err(i.unavailable(format!("PUT {key}: {}", t.kind())))
            }
        }
    }

    fn write_chunk(&self, rel: &str, data: &[u8]) -> Result<()> {
        self.uploads
            .submit(&self.inner, self.inner.cfg.key(rel), data.to_vec())
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        if self.move_object(from, to)? {
            return Ok(());
        }
        // A directory (prune's merge moves session directories): every object is copied, then
        // the sources deleted, under a redo marker beside the prefix, so that after a crash the
        // next writer finishes the move before anything looks at the archive (see `lock`).
        if self
            .inner
            .list(&self.inner.cfg.dir_prefix(from), false, Some(1))?
            .is_empty()
        {
            return Err(Error::DestIo {
                url: self.inner.url.clone(),
                path: from.to_string(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let marker = format!("from={from}\nto={to}\n");
        self.inner
            .put_ok(&self.inner.cfg.rename_key(), marker.as_bytes())?;
        self.finish_rename(from, to)
    }

    /// As the default, one move at a time in order, but a source is looked up once (the
    /// default asks `exists` and then `rename` asks again: two HEADs per chunk of a merge).
    fn apply_moves(&self, moves: &[super::Move]) -> Result<()> {
        for m in moves {
            match m {
                super::Move::Rename { from, to } => {
                    if !self.move_object(from, to)? && self.exists(from)? {
                        self.rename(from, to)?;
                    }
                }
                super::Move::Remove(p) => self.remove_all(p)?,
            }
        }
        Ok(())
    }

    fn hard_link(&self, _from: &str, _to: &str) -> Result<()> {
        Err(Error::Unsupported(format!(
            "{} is object storage, which has no hard links: --dedup and arch-deduplicate need a file: or ssh:// destination",
            self.inner.url
        )))
    }

    fn stat(&self, rel: &str) -> Result<Option<FileStat>> {
        let key = self.inner.cfg.key(rel);
        Ok(self.inner.head(&key)?.map(|size| {
            // No hard links: every object is its own file.
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut h);
            FileStat {
                size,
                id: (0, h.finish()),
            }
        }))
    }

    fn mkdir_all(&self, _rel: &str) -> Result<()> {
        Ok(())
    }

    fn remove_all(&self, rel: &str) -> Result<()> {
        let key = self.inner.cfg.key(rel);
        if self.inner.head(&key)?.is_some() {
            self.inner.delete(&key, &[])?;
            return Ok(());
        }
        let dir = self.inner.cfg.dir_prefix(rel);
        let keys = self.inner.list(&dir, false, None)?;
        self.inner.delete_many(&keys)?;
        if !dir.is_empty() {
            // Engines with a filer (SeaweedFS) keep emptied folders listed until their own
            // keys are deleted, deepest first (a folder with a subfolder stays); elsewhere
            // there are none and these delete nothing.
            let mut folders: Vec<String> = keys
                .iter()
                .filter_map(|k| Some(k[..k.rfind('/')? + 1].to_string()))
                .filter(|f| f.len() > dir.len())
                .collect();
            if keys.is_empty() {
                // Only empty folders left (their objects were moved away): find them.
                let mut todo = vec![dir.clone()];
                while let Some(d) = todo.pop() {
                    for k in self.inner.list(&d, true, None)? {
                        if k.ends_with('/') && k.len() > d.len() {
                            folders.push(k.clone());
                            todo.push(k);
                        }
                    }
                }
            }
            folders.sort_by_key(|f| std::cmp::Reverse(f.len()));
            folders.dedup();
            for f in &folders {
                self.inner.delete(f, &[])?;
            }
            self.inner.delete(&dir, &[])?;
        }
        Ok(())
    }

    fn list(&self, rel: &str) -> Result<Vec<String>> {
        let p = self.inner.cfg.dir_prefix(rel);
        let mut names: Vec<String> = self
            .inner
            .list(&p, true, None)?
            .into_iter()
            .filter_map(|k| {
                let n = k.strip_prefix(&p)?.trim_end_matches('/');
                (!n.is_empty()).then(|| n.to_string())
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn exists(&self, rel: &str) -> Result<bool> {
        if self.inner.head(&self.inner.cfg.key(rel))?.is_some() {
            return Ok(true);
        }
        let p = self.inner.cfg.dir_prefix(rel);
        Ok(!self.inner.list(&p, true, Some(1))?.is_empty())
    }

    fn sync(&self) -> Result<()> {
        // A PUT is durable once acknowledged: the barrier is waiting for every upload.
        self.uploads.wait()
    }

    fn lock(&self, exclusive: bool) -> Result<bool> {
        if !exclusive {
            // Readers take no lock: a commit is one PUT of the root, so a reader sees the old
            // archive or the new one (a prune's moves are caught by the reader: see
            // `ChunkReader`).
            return Ok(false);
        }
        if self.probed.load(Ordering::Relaxed) == 0 && !self.inner.cfg.no_conditional_lock {
            lock::probe(&self.inner)?;
            self.probed.store(1, Ordering::Relaxed);
        }
        let held = lock::acquire(&self.inner)?;
        *self.lock.lock() = Some(held);
        // Before the engine looks at anything: a directory move a crash interrupted is
        // finished, so renames look atomic to it.
        self.recover_rename()?;
        Ok(true)
    }

    fn unlock(&self) {
        if let Some(l) = self.lock.lock().take() {
            l.release(&self.inner);
        }
    }

    fn bytes_written(&self) -> u64 {
        self.inner.stats.bytes_up.load(Ordering::Relaxed)
    }

    fn detach_after_fork(&self) {
        // Threads do not survive a fork, and the parent's connections are not ours.
        *self.uploads.tx.lock() = None;
        self.uploads.workers.lock().clear();
        *self.inner.agent.write() = agent(self.inner.cfg.parallel, self.inner.cfg.stall);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest a request to an engine that never answers can take: every attempt waits a
    /// whole stall timeout (plus connecting), with the backoff between them.
    fn worst_case(p: Patience) -> Duration {
        let (mut t, mut attempt) = (Duration::ZERO, 0);
        while p.may_start(attempt, t) {
            if attempt > 0 {
                t += Patience::backoff(attempt);
            }
            t += p.stall + CONNECT;
            attempt += 1;
        }
        t
    }

    #[test]
    fn a_silent_engine_fails_a_request_within_a_minute() {
        let default = worst_case(Patience { stall: STALL });
        assert!(default <= Duration::from_secs(60), "{default:?}");
        // Retries still happen: a stall is worth a second attempt.
        assert!(default >= STALL * 2);
        assert!(
            worst_case(Patience {
                stall: Duration::from_secs(2)
            }) <= Duration::from_secs(12)
        );
    }
}
