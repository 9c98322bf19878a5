//! `wyng serve`: the archive's sessions as NBD exports. Runs in the background unless
//! `--foreground` (see [`super::background`]), logging to `<meta-dir>/serve.log`, until
//! SIGTERM/SIGINT/SIGHUP; then it lets connections finish, flushes overlays, removes its
//! socket and pid file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use wyng::archive::Archive;
use wyng::ops::serve::{Listen, ServeOptions, TlsOptions};
use wyng::ops::{self, SessionSel};
use wyng::{Error, Result};

use super::Global;

pub const HELP: &str = "Examples:\n  wyng serve --dest=file:/mnt/usb/laptop.backup     # on the unix socket /run/wyng/nbd.sock\n  S=/run/wyng/nbd.sock\n  nbdinfo --list \"nbd+unix:///?socket=$S\"\n  nbdcopy \"nbd+unix:///vm1.img?socket=$S\" /dev/vg/vm1               # restore the newest session\n  qemu-img convert -O qcow2 \"nbd+unix:///vm1.img@20261101-020000?socket=$S\" vm1.qcow2\n  wyng serve --overlay=/var/lib/wyng/overlay --dest=file:/mnt/usb/laptop.backup  # writable\n  qemu-system-x86_64 -m 2G -drive \"file=nbd+unix:///vm1.img@20261101-020000?socket=$S,format=raw\"\n  wyng serve --listen=0.0.0.0 --tls-cert=cert.pem --tls-key=key.pem --dest=...\n  kill $(cat /run/wyng/nbd.pid)                      # with --pid-file=/run/wyng/nbd.pid\n\nExports: VOLUME@YYYYMMDD-HHMMSS for every session, VOLUME for the newest; sessions sent while\nserving appear. Every chunk is verified; a damaged one is an I/O error for that read, never\nzeros. Read-only unless --overlay=DIR: writes then go to copy-on-write files in DIR (never the\narchive), kept across restarts until you delete them. TCP other than loopback needs TLS\n(--tls-cert, --tls-key). Runs in the background (log: <meta-dir>/serve.log) until SIGTERM or\nSIGINT. See docs/serve.md: restores, instant boot, moving a booted VM to real storage.";

/// Where the server listens when neither --unix nor --listen is given.
const DEFAULT_SOCKET: &str = "/run/wyng/nbd.sock";

fn size(s: &str) -> Result<u64, String> {
    wyng::size::parse(s).map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Listen on this unix socket (default /run/wyng/nbd.sock; only its owner may connect)
    #[arg(long, value_name = "SOCKET", conflicts_with = "listen")]
    pub unix: Option<PathBuf>,
    /// Listen on TCP instead, HOST[:PORT] (port 10809 by default); an address other than
    /// loopback needs --tls-cert and --tls-key
    #[arg(long, value_name = "HOST[:PORT]")]
    pub listen: Option<String>,
    /// Make exports writable: what clients write goes to copy-on-write files in DIR (never
    /// the archive), one set per session, kept across restarts until deleted
    #[arg(long, value_name = "DIR")]
    pub overlay: Option<PathBuf>,
    /// Only this volume
    #[arg(long, value_name = "NAME")]
    pub volume: Option<String>,
    /// Only this session of each volume: date-time YYYYMMDD-HHMMSS, or ^TAG
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
    /// Memory for decoded chunks
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = size)]
    pub cache: u64,
    /// Stay in the foreground (logs on stderr)
    #[arg(long)]
    pub foreground: bool,
    /// Write the server's process id to this file (removed when it stops)
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// TLS: the server's certificate chain (PEM). Clients must then use TLS (nbds://)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the server's private key (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// TLS: accept only clients with a certificate signed by this CA (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Disconnect a client of a read-only export after this many idle seconds (0: never);
    /// clients of writable exports (running VMs) are never disconnected for being idle
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub idle_timeout: u64,
    /// Clients at once, at most
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_clients: u16,
}

impl ServeArgs {
    fn options(&self) -> Result<ServeOptions> {
        let listen = match (&self.listen, &self.unix) {
            (Some(l), _) => {
                if self.tls_cert.is_none() && !ops::serve::is_loopback(l)? {
                    return Err(Error::Usage(format!(
                        "--listen={l} is not a loopback address: serving there needs --tls-cert and --tls-key (the exports would cross the network in clear)"
                    )));
                }
                Listen::Tcp(l.clone())
            }
            (None, Some(p)) => Listen::Unix(p.clone()),
            (None, None) => Listen::Unix(PathBuf::from(DEFAULT_SOCKET)),
        };
        let mut o = ServeOptions::new(listen);
        o.volume = self.volume.clone();
        o.session = self
            .session
            .as_deref()
            .map(|s| SessionSel::parse(Some(s), true, super::now()))
            .transpose()?;
        o.overlay = self.overlay.clone();
        o.cache_bytes = self.cache;
        o.refresh = super::background::refresh_interval();
        o.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsOptions {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        };
        o.max_clients = self.max_clients as usize;
        o.idle_limit = (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout));
        Ok(o)
    }

    fn place(&self) -> String {
        match (&self.listen, &self.unix) {
            (Some(l), _) => l.clone(),
            (None, Some(p)) => p.display().to_string(),
            (None, None) => DEFAULT_SOCKET.to_string(),
        }
    }
}

pub fn run(g: &Global, a: ServeArgs) -> Result<()> {
    let o = a.options()?;
    std::fs::create_dir_all(g.meta_dir()).map_err(|e| Error::local_io(g.meta_dir(), "", e))?;
    let archive = g.read()?;
    let pid_file = a.pid_file.clone();
    let writable = o.overlay.is_some();
    let report = |pid: i32, uri: &str| -> Result<()> {
        if g.json {
            return g.json(&serde_json::json!({
                "pid": pid,
                "uri": uri,
                "writable": writable,
                "log": (!a.foreground).then(|| g.meta_dir().join("serve.log")),
            }));
        }
        g.say(format!(
            "Serving the sessions of {} at {uri} (pid {pid}), {}.\n  nbdinfo --list '{uri}'\nStop it with `kill {pid}`{}.",
            g.dest_url(),
            if writable { "writable (overlay)" } else { "read-only" },
            if a.foreground { " or Ctrl-C" } else { "" }
        ));
        Ok(())
    };
    if a.foreground {
        let mut reported = Ok(());
        let res = serve(archive, o, pid_file.as_deref(), &mut |r| {
            if let Ok(uri) = r {
                reported = report(std::process::id() as i32, uri);
            }
        });
        return reported.and(res);
    }
    let log = g.meta_dir().join("serve.log");
    let place = a.place();
    let (pid, uri) = super::background::daemon(
        archive,
        &log,
        |archive, ready| serve(archive, o, pid_file.as_deref(), ready),
        |code, text| match code {
            2 => Error::Selection(text.to_string()),
            9 => Error::Usage(text.to_string()),
            _ => Error::local(
                &place,
                text.trim_start_matches(&format!("{place}: ")).to_string(),
            ),
        },
        || {
            Error::local(
                &place,
                format!("the server ended before it was up; see {}", log.display()),
            )
        },
    )?;
    report(pid, &uri)
}

/// Serves until a signal. `ready` is told where clients connect, or why the server could not
/// start.
fn serve(
    archive: Archive,
    o: ServeOptions,
    pid_file: Option<&Path>,
    ready: &mut super::background::Ready,
) -> Result<()> {
    let started = super::background::stop_signals()
        .and_then(|s| ops::serve::start(archive, o).map(|srv| (srv, s)))
        .and_then(|(srv, s)| {
            if let Some(p) = pid_file {
                std::fs::write(p, format!("{}\n", std::process::id()))
                    .map_err(|e| Error::local(p, format!("cannot write the pid file: {e}")))?;
            }
            Ok((srv, s))
        });
    let (server, mut signals) = match started {
        Ok(x) => x,
        Err(e) => {
            ready(Err(&e));
            return Err(e);
        }
    };
    ready(Ok(server.uri()));
    tracing::info!(
        "serving {} at {}",
        super::count(server.exports().len() as u64, "export", "exports"),
        server.uri()
    );
    match super::background::wait_for_signal(&mut signals, || server.is_finished()) {
        Some(sig) => tracing::info!("signal {sig}: stopping"),
        None => tracing::error!("the server stopped accepting connections"),
    }
    let res = server.stop(Duration::from_secs(10));
    if let Some(p) = pid_file {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("stopped");
    res
}
