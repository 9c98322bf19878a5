//! `serve`: an NBD server (the wire format is [`crate::nbd`]) whose exports are the archive's
//! sessions, `VOLUME@YYYYMMDD-HHMMSS` and `VOLUME` for the newest, read through the same
//! live archive, session images and chunk cache as the mount; with an overlay directory,
//! writable copy-on-write (see [`overlay`]). Running in the background, logging and signals
//! are the binary's part.
//!
//! Invariants:
//! * **Every byte served comes from a verified chunk** (or from the overlay's checksummed
//!   blocks); a chunk that fails is an error for the request that needed it, never zeros.
//! * **The archive is never written** (the lock is released; the server follows sends and
//!   prunes as the mount does).
//! * **Plain text only on loopback or a unix socket**: a TCP address that is not loopback is
//!   refused without TLS, and with TLS configured every connection must start TLS first
//!   (the protocol's FORCEDTLS mode).
//! * **Bounded**: at most `max_clients` connections (others are turned away), one thread each
//!   plus a shared pool of workers; memory is the archive index and chunk cache plus at most
//!   [`BUFFER_BUDGET`] of whole read replies and a piece per worker.

mod conn;
mod exports;
mod overlay;
mod tls;
mod wire;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::archive::live::LiveArchive;
use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::ops::SessionSel;

pub use tls::TlsOptions;
use wire::Socket;

/// The largest read or write a client may ask for in one request.
pub(crate) const MAX_PAYLOAD: u64 = 32 << 20;
/// Memory for reads answered whole (simple replies), shared by every connection.
const BUFFER_BUDGET: u64 = 64 << 20;
/// The port NBD is registered on.
pub(crate) const DEFAULT_PORT: u16 = 10809;

/// Where the server listens.
#[derive(Clone, Debug)]
pub enum Listen {
    Unix(PathBuf),
    /// `HOST[:PORT]`.
    Tcp(String),
}

pub struct ServeOptions {
    pub listen: Listen,
    pub volume: Option<String>,
    pub session: Option<SessionSel>,
    /// Writable exports, copy-on-write into this directory.
    pub overlay: Option<PathBuf>,
    pub cache_bytes: u64,
    /// How often the archive is checked for new or removed sessions.
    pub refresh: Duration,
    pub tls: Option<TlsOptions>,
    pub max_clients: usize,
    /// The whole handshake, from connecting to choosing an export.
    pub handshake_limit: Duration,
    /// A client of a read-only export that sends nothing for this long is disconnected.
    pub idle_limit: Option<Duration>,
    /// The same for a writable export (a running VM may be idle much longer).
    pub idle_limit_writable: Option<Duration>,
    /// The rest of a message once it has begun, and every reply sent.
    pub io_limit: Duration,
}

impl ServeOptions {
    /// The defaults, listening at `listen`.
    pub fn new(listen: Listen) -> ServeOptions {
        ServeOptions {
            listen,
            volume: None,
            session: None,
            overlay: None,
            cache_bytes: 256 << 20,
            refresh: Duration::from_secs(2),
            tls: None,
            max_clients: 64,
            handshake_limit: Duration::from_secs(10),
            idle_limit: Some(Duration::from_secs(3600)),
            idle_limit_writable: None,
            io_limit: Duration::from_secs(60),
        }
    }
}

pub(crate) struct Limits {
    handshake: Duration,
    idle: Option<Duration>,
    idle_writable: Option<Duration>,
    io: Duration,
    in_flight: usize,
}

type Job = Box<dyn FnOnce() + Send>;

/// Worker threads answering reads and block status for every connection.
struct Pool {
    tx: crossbeam_channel::Sender<Job>,
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("nbd-worker-{i}"))
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                });
        }
        Pool { tx }
    }

    fn run(&self, job: Job) {
        // The workers outlive every connection: a send cannot fail while one runs.
        let _ = self.tx.send(job);
    }
}

/// Bytes of whole replies held at once, across connections.
struct Budget {
    free: Mutex<u64>,
    cv: Condvar,
}

struct Taken<'a>(&'a Budget, u64);

impl Budget {
    fn take(&self, n: u64) -> Taken<'_> {
        let n = n.min(BUFFER_BUDGET);
        let mut free = self.free.lock();
        while *free < n {
            self.cv.wait(&mut free);
        }
        *free -= n;
        Taken(self, n)
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        *self.0.free.lock() += self.1;
        self.0.cv.notify_all();
    }
}

/// What every connection of a server shares.
pub(crate) struct Shared {
    exports: exports::Exports,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    stopping: AtomicBool,
    /// Open connections (a clone of each socket, to end its input when stopping).
    conns: Mutex<std::collections::HashMap<u64, Socket>>,
    conns_cv: Condvar,
    next_id: AtomicU64,
    pool: Pool,
    budget: Budget,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn accept(&self) -> std::io::Result<Socket> {
        Ok(match self {
            Listener::Unix(l) => Socket::Unix(l.accept()?.0),
            Listener::Tcp(l) => {
                let s = l.accept()?.0;
                s.set_nodelay(true)?;
                keepalive(&s);
                Socket::Tcp(s)
            }
        })
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Listener::Unix(l) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        }
    }
}

/// TCP keepalive after a minute of silence: a peer that vanished is noticed.
fn keepalive(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let set = |level, name, v: libc::c_int| {
        // SAFETY: setsockopt with a pointer to a live c_int and its size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                level,
                name,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 60);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 15);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4);
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    /// The unix socket this server made (removed when it stops, if still the same file).
    socket: Option<(PathBuf, u64)>,
    uri: String,
}

/// Resolves `HOST[:PORT]` (`[v6]:PORT` for IPv6) to the address to bind.
fn tcp_address(spec: &str) -> Result<SocketAddr> {
    let bad = |why: String| Error::Usage(format!("cannot listen on '{spec}': {why}"));
    if let Ok(a) = spec.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = spec.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let with_port = if spec.contains(':') {
        spec.to_string()
    } else {
        format!("{spec}:{DEFAULT_PORT}")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("the name has no address".into()))
}

/// Whether `HOST[:PORT]` is a loopback address (plain text is only allowed there).
pub fn is_loopback(spec: &str) -> Result<bool> {
    Ok(tcp_address(spec)?.ip().is_loopback())
}

/// Binds a unix socket at `path`: a stale socket left by a server that died is replaced, a
/// live one or any other file refused. Only its owner may connect.
fn bind_unix(path: &Path) -> Result<UnixListener> {
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if !md.file_type().is_socket() {
            return Err(Error::local(path, "exists and is not a socket"));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(Error::local(
                path,
                "is busy: a server is listening there (stop it first)",
            ));
        }
        std::fs::remove_file(path).map_err(|e| Error::local_io(path, "", e))?;
    }
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| Error::local_io(d, "", e))?;
    }
    let l =
        UnixListener::bind(path).map_err(|e| Error::local_io(path, "cannot listen there", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::local_io(path, "", e))?;
    Ok(l)
}

/// Checks the selection, opens the overlays' directory, binds and starts accepting.
pub fn start(mut archive: Archive, o: ServeOptions) -> Result<Server> {
    archive.unlock();
    if let Some(v) = &o.volume {
        let vol = archive.find(v)?;
        if let Some(sel) = &o.session {
            sel.select(vol)?;
        }
    }
    let tls = o.tls.as_ref().map(tls::server_config).transpose()?;
    let overlays = o
        .overlay
        .as_deref()
        .map(|d| overlay::Overlays::new(d, archive.uuid()))
        .transpose()?;
    let (listener, socket, uri) = match &o.listen {
        Listen::Unix(p) => {
            let l = bind_unix(p)?;
            l.set_nonblocking(true)
                .map_err(|e| Error::local_io(p, "", e))?;
            let ino = std::fs::metadata(p).map(|m| m.ino()).unwrap_or(0);
            let scheme = if tls.is_some() {
                "nbds+unix"
            } else {
                "nbd+unix"
            };
            (
                Listener::Unix(l),
                Some((p.clone(), ino)),
                format!("{scheme}:///?socket={}", p.display()),
            )
        }
        Listen::Tcp(spec) => {
            let addr = tcp_address(spec)?;
            if !addr.ip().is_loopback() && tls.is_none() {
                return Err(Error::Usage(format!(
                    "{addr} is not a loopback address: serving there needs TLS (a certificate and key), or the exports would cross the network in clear"
                )));
            }
            let l = TcpListener::bind(addr)
                .map_err(|e| Error::local_io(addr.to_string(), "cannot listen there", e))?;
            l.set_nonblocking(true)
                .map_err(|e| Error::local_io(addr.to_string(), "", e))?;
            let bound = l.local_addr().unwrap_or(addr);
            let scheme = if tls.is_some() { "nbds" } else { "nbd" };
            (Listener::Tcp(l), None, format!("{scheme}://{bound}/"))
        }
    };
    let live = LiveArchive::new(archive, o.cache_bytes, o.refresh);
    let workers = std::thread::available_parallelism()
        .map_or(4, |n| n.get() * 2)
        .clamp(4, 16);
    let shared = Arc::new(Shared {
        exports: exports::Exports::new(live, o.volume.clone(), o.session.clone(), overlays),
        limits: Limits {
            handshake: o.handshake_limit,
            idle: o.idle_limit,
            idle_writable: o.idle_limit_writable,
            io: o.io_limit,
            // Half the workers per connection: a client that stops reading its replies
            // holds at most that many while their writes wait out the I/O limit.
            in_flight: (workers / 2).max(2),
        },
        tls,
        stopping: AtomicBool::new(false),
        conns: Mutex::new(std::collections::HashMap::new()),
        conns_cv: Condvar::new(),
        next_id: AtomicU64::new(1),
        pool: Pool::new(workers),
        budget: Budget {
            free: Mutex::new(BUFFER_BUDGET),
            cv: Condvar::new(),
        },
    });
    let s = shared.clone();
    let max = o.max_clients.max(1);
    let accept = std::thread::Builder::new()
        .name("nbd-accept".into())
        .spawn(move || accept_loop(s, listener, max))
        .map_err(|e| Error::io("a thread", e))?;
    Ok(Server {
        shared,
        accept: Some(accept),
        socket,
        uri,
    })
}

fn accept_loop(shared: Arc<Shared>, listener: Listener, max: usize) {
    while !shared.stopping() {
        let mut fds = [nix::poll::PollFd::new(
            listener.fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::error!("cannot wait for connections: {e}");
                return;
            }
        }
        let sock = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // Out of descriptors and the like: say so, and keep serving those connected.
                tracing::warn!("cannot accept a connection: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut conns = shared.conns.lock();
            if conns.len() >= max {
                tracing::warn!(
                    "{}: turned away: {max} clients are connected already",
                    sock.peer()
                );
                continue;
            }
            match sock.try_clone() {
                Ok(c) => {
                    conns.insert(id, c);
                }
                Err(e) => {
                    tracing::warn!("cannot accept a connection: {e}");
                    continue;
                }
            }
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("nbd-conn".into())
            .spawn(move || {
                conn::serve(s.clone(), sock);
                s.conns.lock().remove(&id);
                s.conns_cv.notify_all();
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot serve a connection: {e}");
            shared.conns.lock().remove(&id);
        }
    }
}

impl Server {
    /// How clients reach it: `nbd+unix:///?socket=PATH`, `nbd://HOST:PORT/` (`nbds…` with TLS);
    /// the export name goes after the `/`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The exports' names as a list shows them now.
    pub fn exports(&self) -> Vec<String> {
        self.shared
            .exports
            .list()
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

    /// Whether the server stopped accepting by itself (its listener failed).
    pub fn is_finished(&self) -> bool {
        self.accept.as_ref().is_none_or(|a| a.is_finished())
    }

    /// Stops: no new connections; each connection finishes the requests it has (at most
    /// `wait` in all), then every overlay is flushed and the socket file removed.
    pub fn stop(mut self, wait: Duration) -> Result<()> {
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for s in self.shared.conns.lock().values() {
            s.shutdown_read();
        }
        let deadline = Instant::now() + wait;
        let mut conns = self.shared.conns.lock();
        while !conns.is_empty() {
            if self
                .shared
                .conns_cv
                .wait_until(&mut conns, deadline)
                .timed_out()
            {
                tracing::warn!(
                    "{} connection(s) still busy after {} s; stopping anyway",
                    conns.len(),
                    wait.as_secs()
                );
                break;
            }
        }
        drop(conns);
        let flushed = match self.shared.exports.overlays() {
            Some(o) => o.flush_all(),
            None => Ok(()),
        };
        self.remove_socket();
        flushed
    }

    fn remove_socket(&mut self) {
        if let Some((p, ino)) = self.socket.take() {
            // Only the file this server made: another server may have taken the path since.
            if std::fs::metadata(&p).is_ok_and(|m| m.ino() == ino) {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.remove_socket();
    }
}

#[cfg(test)]
mod tests;
