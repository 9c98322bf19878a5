//! The binary's commands: one module per command with its clap arguments (typed values), the
//! conversion to the library's options, and its report text. Everything a user sees, asks or
//! waits for (prompts, output, running in the background) is here, not in the library.

pub mod arch_check;
pub mod arch_copy;
pub mod arch_dedup;
pub mod arch_init;
pub mod background;
pub mod complete;
pub mod config;
pub mod delete;
pub mod diff;
pub mod docs;
pub mod environment;
pub mod errors;
pub mod files;
pub mod list;
pub mod monitor;
pub mod mount;
pub mod progress;
pub mod prompt;
pub mod prune;
pub mod receive;
pub mod send;
pub mod serve;
pub mod shape;
pub mod verify;
pub mod vols_from;
pub mod volume;

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use wyng::archive::{Archive, DestOptions, Location, OpenOptions, WriteArchive};
use wyng::ops::SessionSel;
use wyng::{Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "wyng",
    version,
    args_override_self = true,
    about = "Fast incremental backup of disk images and block devices, compatible with Wyng archive format V3",
    long_about = "Fast incremental backup of disk images and block devices into Wyng V3 archives.\n\n\
An archive holds volumes; every `send` of a volume records a session (a point-in-time copy)\n\
that stores only the chunks that changed. Archives written by wyng are readable by the\n\
original Wyng 0.8, and the other way round.",
    after_help = "Quick start:\n  wyng arch-init --dest=file:/mnt/usb/laptop.backup --encrypt=off\n  wyng send vm1.img --import-other-from='vm1.img:|:/var/lib/images/vm1.img' --dest=file:/mnt/usb/laptop.backup\n  wyng list --dest=file:/mnt/usb/laptop.backup\n  wyng receive vm1.img --save-to=/tmp/vm1.img --dest=file:/mnt/usb/laptop.backup"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Archive location: file:/path, ssh://[user@]host[:port]/path, qubes://vm/path,
    /// qubes-ssh://vm:[user@]host[:port]/path or s3://bucket[/prefix]. `send` takes several
    /// (--dest=A --dest=B, or one per line in the configuration file): one read of each
    /// volume, written to every archive
    #[arg(long, global = true, value_name = "URL", action = clap::ArgAction::Append)]
    pub dest: Vec<String>,
    /// Directory for wyng's local state about archives (created if missing). Default:
    /// /var/lib/wyng as root; otherwise $XDG_STATE_HOME/wyng (~/.local/state/wyng), so a
    /// user's runs need no setting
    #[arg(long, global = true, value_name = "DIR")]
    pub meta_dir: Option<PathBuf>,
    /// Never ask: accept overwrites and other confirmations
    #[arg(short = 'u', long, global = true)]
    pub unattended: bool,
    /// Print only errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More log output (repeat for more)
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Debug logging
    #[arg(long, global = true)]
    pub debug: bool,
    /// Machine-readable output on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Encrypted archives: shell command that prints the passphrase (e.g. 'pass show backup')
    #[arg(long, global = true, value_name = "CMD")]
    pub passcmd: Option<String>,
    /// Encrypted archives: keep the unlocked keys for N minutes for later runs (0: don't; -1:
    /// forget them now)
    #[arg(
        long,
        global = true,
        value_name = "N",
        default_value_t = 5,
        allow_negative_numbers = true
    )]
    pub authmin: i64,
    /// Accept an archive older than the last one this machine saw (it may be an old copy)
    #[arg(long, global = true)]
    pub force_allow_rollback: bool,
    /// Retry an interrupted prune or delete again, after an earlier retry of it failed
    #[arg(long, global = true)]
    pub force_retry: bool,
    /// When another wyng process is writing to the archive, wait up to SECONDS for it instead
    /// of failing at once (commands that change the archive, and arch-check); reading commands
    /// never wait: they read the archive as committed so far
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 0)]
    pub lock_wait: u32,
    /// Configuration file (default /etc/wyng/wyng.ini): defaults for options, section
    /// [var-global-default], keys are option names without "--"
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Set by the configuration file's reader: the `--dest` values came from this file.
    #[arg(long, global = true, hide = true, value_name = "FILE")]
    pub dests_from_config: Option<PathBuf>,
    /// ssh options replacing wyng's defaults, e.g. --opt-ssh='-F ~/.ssh/backup_config'
    /// (repeatable; each value is split at spaces)
    #[arg(long, global = true, value_name = "OPTS", allow_hyphen_values = true)]
    pub opt_ssh: Vec<String>,
    /// qvm-run options replacing wyng's defaults for qubes:// destinations (repeatable; each
    /// value is split at spaces)
    #[arg(long, global = true, value_name = "OPTS", allow_hyphen_values = true)]
    pub opt_qubes: Vec<String>,
    /// Leave this volume out of --all (repeatable)
    #[arg(long, global = true, value_name = "NAME")]
    pub volex: Vec<String>,
    /// Skip confirmations; also needed to delete a wyng-*metadata volume
    #[arg(long, global = true)]
    pub force: bool,
    /// Trim wyng's local cache at exit: off, or on:MIN / extra:MIN to remove cached index files
    /// not used for MIN minutes (extra: also the chunk digest maps kept for --dedup)
    #[arg(long, global = true, value_name = "MODE:MIN", default_value = "on:3000", value_parser = meta_reduce)]
    pub meta_reduce: MetaReduce,
    /// LVM send/monitor: remove a volume's .tick snapshot that belongs to another archive (the
    /// volume is then scanned in full) instead of failing
    #[arg(long, global = true)]
    pub remap: bool,
    /// Vouch for what wyng cannot check itself: reflink_fs_TYPE trusts the filesystem type TYPE
    /// (as /proc/mounts names it) to do reflinks for --local, and needs fs_online_factors too
    /// (you vouch that its copy-on-write snapshots are consistent while online); repeatable
    #[arg(long, global = true, value_name = "FLAG", value_parser = vouch)]
    pub vouch: Vec<String>,
    /// Accepted for the original's scripts; changes nothing: wyng always writes file: chunks
    /// directly (the original's --tar-bypass behaviour), and sends to ssh:// as a stream
    #[arg(long, global = true)]
    pub tar_bypass: bool,
    /// s3:// endpoint, e.g. http://127.0.0.1:8333 (default: AWS_ENDPOINT_URL, the profile's
    /// endpoint_url, else AWS itself)
    #[arg(long, global = true, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// s3:// region (default: AWS_REGION, the profile's region, else us-east-1)
    #[arg(long, global = true, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// s3:// credentials profile of ~/.aws/credentials (default: AWS_PROFILE, else default);
    /// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment take precedence
    #[arg(long, global = true, value_name = "NAME")]
    pub s3_profile: Option<String>,
    /// s3:// addressing: path (https://host/bucket/key), virtual (https://bucket.host/key), or
    /// auto (path for a custom endpoint, virtual for AWS)
    #[arg(long, global = true, value_name = "STYLE", value_parser = ["auto", "path", "virtual"])]
    pub s3_addressing: Option<String>,
    /// s3:// requests in flight at once
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub s3_parallel: Option<u16>,
    /// s3:// seconds a request may go without progress (connecting, sending, or waiting for an
    /// answer) before it is retried; a request gives up after about three of them
    #[arg(long, global = true, value_name = "SECONDS", value_parser = clap::value_parser!(u16).range(1..=3600))]
    pub s3_timeout: Option<u16>,
    /// s3:// on an engine that ignores conditional writes: lock without them. Only safe if
    /// you make sure a single wyng writes to the archive at a time
    #[arg(long, global = true)]
    pub s3_no_conditional_lock: bool,
    /// Accepted for the original's scripts; changes nothing: wyng keeps no temporary run
    /// directory to purge (temporary files are unlinked as they are made)
    #[arg(long, global = true)]
    pub purge_tmp: bool,
    /// Accepted for the original's scripts; changes nothing: wyng already syncs the destination
    /// at every commit point and removes snapshots synchronously
    #[arg(long, global = true)]
    pub maxsync: bool,
    /// What the run's s3:// destinations did, reported at the end ([`report_s3_usage`]).
    #[arg(skip)]
    pub s3_usage: wyng::archive::S3UsageLog,
    /// `--remap` and `--vouch` as the library takes them (set when the command starts).
    #[arg(skip)]
    pub local: wyng::source::LocalOptions,
    /// The environment's `WYNG_*` tuning (set when the command starts).
    #[arg(skip)]
    pub tuning: wyng::tuning::Tuning,
    /// The progress bars (set when the command starts: none with `--quiet`).
    #[arg(skip)]
    pub progress: wyng::progress::Reporting,
}

fn vouch(s: &str) -> std::result::Result<String, String> {
    match s.strip_prefix("reflink_fs_") {
        Some(t) if !t.is_empty() => Ok(s.to_string()),
        _ if s == "fs_online_factors" => Ok(s.to_string()),
        _ => Err(format!(
            "'{s}': use reflink_fs_TYPE (e.g. reflink_fs_bcachefs) or fs_online_factors"
        )),
    }
}

/// Whether this run printed its JSON report: stdout then holds one document, so a later error
/// is reported by the exit code and on stderr only.
static JSON_WRITTEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn json_written() -> bool {
    JSON_WRITTEN.load(std::sync::atomic::Ordering::Relaxed)
}

/// A command streaming its JSON document (it has started writing stdout).
pub fn mark_json_written() {
    JSON_WRITTEN.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// `--meta-reduce MODE:MIN` (behaviour §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaReduce {
    pub mode: MetaMode,
    pub minutes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaMode {
    Off,
    On,
    Extra,
}

fn meta_reduce(s: &str) -> std::result::Result<MetaReduce, String> {
    let (mode, min) = s.split_once(':').unwrap_or((s, "0"));
    let mode = match mode {
        "off" => MetaMode::Off,
        "on" => MetaMode::On,
        "extra" => MetaMode::Extra,
        _ => return Err(format!("'{s}': use off, on:MINUTES or extra:MINUTES")),
    };
    let minutes = min
        .parse()
        .map_err(|_| format!("'{s}': MINUTES must be a whole number"))?;
    Ok(MetaReduce { mode, minutes })
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a new archive
    #[command(after_help = arch_init::HELP)]
    ArchInit(arch_init::InitArgs),
    /// Back up volumes: each send records a new session holding only what changed
    #[command(after_help = send::HELP)]
    Send(send::SendArgs),
    /// Restore a session of a volume to a file or block device
    #[command(after_help = receive::HELP)]
    Receive(receive::ReceiveArgs),
    /// Check that sessions can be restored intact, without writing anything
    #[command(after_help = verify::HELP)]
    Verify(verify::VerifyArgs),
    /// List volumes, or the sessions of the named volumes
    #[command(after_help = list::HELP)]
    List(list::ListArgs),
    /// Show every volume and session as a read-only sparse image file (FUSE)
    #[command(after_help = mount::HELP)]
    Mount(mount::MountArgs),
    /// Serve every session as a network block device (NBD: qemu, nbdcopy, qemu-img, Proxmox)
    #[command(after_help = serve::HELP)]
    Serve(serve::ServeArgs),
    /// Record what changed since the last send and rotate snapshots, without sending
    #[command(after_help = monitor::HELP)]
    Monitor(monitor::MonitorArgs),
    /// Compare local volumes with their newest (or a chosen) session in the archive
    #[command(after_help = diff::HELP)]
    Diff(diff::DiffArgs),
    /// Browse, find and restore files inside sessions (ext2/3/4, FAT, NTFS; no root needed)
    #[command(after_help = files::HELP)]
    Files(files::FilesArgs),
    /// Unmount a `wyng mount`
    #[command(after_help = mount::UMOUNT_HELP)]
    Umount(mount::UmountArgs),
    /// Remove sessions; what they hold is merged into the sessions after them
    #[command(after_help = prune::HELP)]
    Prune(prune::PruneArgs),
    /// Delete a volume and all its sessions from the archive
    #[command(after_help = delete::HELP)]
    Delete(delete::DeleteArgs),
    /// Replace duplicate chunk files in the archive by hard links to one copy
    #[command(after_help = arch_dedup::HELP)]
    ArchDeduplicate,
    /// Check the whole archive: metadata, manifests, and every chunk file once
    #[command(after_help = arch_check::HELP)]
    ArchCheck(arch_check::ArchCheckArgs),
    /// Copy volumes and their sessions into another archive (a new copy, or one kept in step)
    #[command(after_help = arch_copy::HELP)]
    ArchCopy(arch_copy::CopyArgs),
    /// Rename a volume
    #[command(after_help = volume::RENAME_HELP)]
    Rename(volume::RenameArgs),
    /// Add a volume (with no sessions yet)
    #[command(after_help = volume::ADD_HELP)]
    Add(volume::AddArgs),
    /// Print the version
    #[command(after_help = "Examples:\n  wyng version\n  wyng version --json | jq -r .wyng")]
    Version,
    /// Print a shell completion script
    #[command(after_help = docs::COMPLETIONS_HELP)]
    Completions(docs::CompletionsArgs),
    /// Print a manual page (roff), or write them all to a directory
    #[command(after_help = docs::MAN_HELP)]
    Man(docs::ManArgs),
}

/// Runs one command, then trims the local cache as `--meta-reduce` says.
/// `--meta-dir`'s default: the system's place for root, the user's state directory otherwise
/// (a non-root user cannot write /var/lib/wyng; that is routine, not a problem to warn of).
fn default_meta_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/wyng");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    state.map_or_else(|| PathBuf::from("/var/lib/wyng"), |s| s.join("wyng"))
}

pub fn run(mut cli: Cli) -> Result<()> {
    if cli.global.meta_dir.is_none() {
        cli.global.meta_dir = Some(default_meta_dir());
    }
    let g = &cli.global;
    let reflink_fs: Vec<String> = g
        .vouch
        .iter()
        .filter_map(|v| v.strip_prefix("reflink_fs_").map(str::to_string))
        .collect();
    // As the original: a reflink filesystem type counts only with fs_online_factors too.
    let reflink_fs = if !reflink_fs.is_empty() && !g.vouch.iter().any(|v| v == "fs_online_factors")
    {
        if !g.quiet {
            eprintln!("Note: --vouch=reflink_fs_TYPE has no effect without --vouch=fs_online_factors (your word that the filesystem's reflink copies are consistent while it is in use).");
        }
        Vec::new()
    } else {
        reflink_fs
    };
    // Commands that never open an archive leave its cache alone (no walk of the meta dir).
    let uses_archive = !matches!(
        cli.cmd,
        Cmd::Version | Cmd::Completions(_) | Cmd::Man(_) | Cmd::Umount(_)
    );
    cli.global.local = wyng::source::LocalOptions {
        remap: cli.global.remap,
        reflink_fs,
    };
    if uses_archive {
        cli.global.tuning = environment::tuning()?;
    }
    cli.global.progress = wyng::progress::Reporting::to(std::sync::Arc::new(progress::Bars {
        quiet: cli.global.quiet,
    }));
    let g = &cli.global;
    // The mount handles its signals itself (it unmounts first).
    if !matches!(cli.cmd, Cmd::Mount(_)) {
        exit_on_signals();
    }
    let result = run_command(g, cli.cmd);
    // Every archive is closed by now (each s3:// lock released), so the counts are complete.
    report_s3_usage(g);
    if uses_archive && g.meta_reduce.mode != MetaMode::Off && g.meta_dir().is_dir() {
        let n = wyng::archive::local::reduce(
            g.meta_dir(),
            g.meta_reduce.minutes,
            g.meta_reduce.mode == MetaMode::Extra,
        );
        if n > 0 {
            tracing::debug!("--meta-reduce: removed {n} cached file(s)");
        }
    }
    result
}

/// Each s3:// destination's requests and bytes: a log line (`-v`) and, with `--json`, one JSON
/// line on stderr (stdout keeps the command's own report).
fn report_s3_usage(g: &Global) {
    for u in g.s3_usage.usages() {
        if g.json {
            eprintln!("{}", serde_json::json!({ "s3": u }));
        }
        tracing::info!(
            "s3: {} requests ({} retried), {} uploaded, {} downloaded",
            u.requests,
            u.retries,
            wyng::size::human(u.bytes_up),
            wyng::size::human(u.bytes_down),
        );
    }
}

/// SIGTERM, SIGINT and SIGHUP end the command with the original's exit code for an
/// interruption (8) and one line saying so. Ending anywhere is safe: every write is staged and
/// committed atomically, and the next command finishes, rolls back or resumes what was left.
fn exit_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let name = match sig {
                SIGINT => "SIGINT",
                SIGHUP => "SIGHUP",
                _ => "SIGTERM",
            };
            eprintln!(
                "wyng: interrupted ({name}); the archive is as the last completed step left it (the next command finishes or resumes what this one began)"
            );
            std::process::exit(Error::Interrupted.exit_code());
        }
    });
}

/// Writes report text to standard output. A reader that went away (`wyng list | head`) ends
/// the command quietly, as other tools do, instead of a panic or an error about a pipe.
pub fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r.map_err(|e| Error::io("standard output", e)),
    }
}

fn run_command(g: &Global, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Version => {
            if g.json {
                return g.json(&serde_json::json!({
                    "wyng": env!("CARGO_PKG_VERSION"),
                    "wdate": wyng::RELEASE_DATE,
                    "format": 3,
                    "compatible": "Wyng 0.8",
                    "version_line": wyng::VERSION_LINE,
                }));
            }
            write_stdout(format!("{}\n", wyng::VERSION_LINE).as_bytes())
        }
        Cmd::ArchInit(a) => arch_init::run(g, a),
        Cmd::Send(a) => send::run(g, a),
        Cmd::Receive(a) => receive::run(g, a),
        Cmd::Verify(a) => verify::run(g, a),
        Cmd::List(a) => list::run(g, a),
        Cmd::Mount(a) => mount::run(g, a),
        Cmd::Umount(a) => mount::umount(a),
        Cmd::Serve(a) => serve::run(g, a),
        Cmd::Files(a) => files::run(g, a),
        Cmd::Monitor(a) => monitor::run(g, a),
        Cmd::Diff(a) => diff::run(g, a),
        Cmd::Prune(a) => prune::run(g, a),
        Cmd::Delete(a) => delete::run(g, a),
        Cmd::ArchDeduplicate => arch_dedup::run(g),
        Cmd::ArchCheck(a) => arch_check::run(g, a),
        Cmd::ArchCopy(a) => arch_copy::run(g, a),
        Cmd::Rename(a) => volume::rename(g, a),
        Cmd::Add(a) => volume::add(g, a),
        Cmd::Completions(a) => docs::completions(a),
        Cmd::Man(a) => docs::man(a),
    }
}

/// `--session` with `--session-strict`.
#[derive(Args, Debug)]
pub struct SessionArgs {
    /// Which session (default: the newest): latest, ^TAG, 20261205-101500, 20261205, 2d ...
    ///
    /// latest, ^TAG (the newest with it), a date-time 20261205-101500, a day, hour or minute
    /// of one (20261205, 2026-12-05, 20261205-10: the newest in it), or a time ago: 90m, 36h,
    /// 2d, 1w, yesterday (the newest as of then).
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
    /// off: a date-time or day that has no session means the newest session before it
    #[arg(long, value_name = "on|off", default_value = "on")]
    pub session_strict: OnOff,
}

impl SessionArgs {
    pub fn sel(&self) -> Result<SessionSel> {
        SessionSel::parse(
            self.session.as_deref(),
            self.session_strict == OnOff::On,
            now(),
        )
    }
}

/// The time commands count from: the clock, or `WYNG_TODAY=YYYY-MM-DD` (noon that day) to
/// preview what a prune or autoprune would do on another day (with --dry-run).
pub fn now() -> chrono::NaiveDateTime {
    std::env::var("WYNG_TODAY")
        .ok()
        .and_then(|d| chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok())
        .and_then(|d| d.and_hms_opt(12, 0, 0))
        .unwrap_or_else(|| chrono::Local::now().naive_local())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl Global {
    /// `--meta-dir`, or its default (resolved when the command starts).
    pub fn meta_dir(&self) -> &std::path::Path {
        self.meta_dir
            .as_deref()
            .expect("resolved when the command starts")
    }

    pub fn auth(&self) -> wyng::auth::Auth {
        wyng::auth::Auth {
            passcmd: self.passcmd.clone(),
            authmin: self.authmin,
            cached_only: false,
        }
    }

    /// The one archive location of this command (only `send` and `monitor` take several).
    /// Several from the configuration file (a local and an off-site archive for the timer):
    /// the first, with a note saying so and how to pick another.
    pub fn location(&self) -> Result<Location> {
        match (self.dests()?.as_slice(), &self.dests_from_config) {
            ([one], _) => self.location_of(one),
            ([first, rest @ ..], Some(file)) => {
                if !self.quiet && !self.json {
                    eprintln!(
                        "Note: {} lists {} archives ({first}, {}); this command uses the first. Give --dest=URL to use another.",
                        file.display(),
                        rest.len() + 1,
                        rest.join(", ")
                    );
                }
                self.location_of(first)
            }
            _ => Err(Error::Usage(
                "--dest was given more than once on the command line: only send (and monitor) work with several archives; give this command one --dest".into(),
            )),
        }
    }

    /// Every `--dest` given (at least one).
    pub fn dests(&self) -> Result<Vec<String>> {
        if self.dest.is_empty() {
            return Err(Error::Usage(
                "--dest is required, e.g. --dest=file:/mnt/usb/laptop.backup".into(),
            ));
        }
        let mut seen = Vec::new();
        for d in &self.dest {
            if seen.contains(d) {
                return Err(Error::Usage(format!("--dest={d} was given twice")));
            }
            seen.push(d.clone());
        }
        Ok(seen)
    }

    /// The first `--dest`, for messages.
    pub fn dest_url(&self) -> &str {
        self.dest.first().map_or("", String::as_str)
    }

    /// The archive location `url`.
    pub fn location_of(&self, url: &str) -> Result<Location> {
        let words = |v: &[String]| {
            (!v.is_empty()).then(|| {
                v.iter()
                    .flat_map(|o| o.split_whitespace().map(str::to_string))
                    .collect()
            })
        };
        Location::open(
            url,
            &DestOptions {
                ssh_opts: words(&self.opt_ssh),
                qubes_opts: words(&self.opt_qubes),
                s3: wyng::archive::S3Options {
                    endpoint: self.s3_endpoint.clone(),
                    region: self.s3_region.clone(),
                    profile: self.s3_profile.clone(),
                    addressing: self.s3_addressing.clone(),
                    no_conditional_lock: self.s3_no_conditional_lock,
                    parallel: self.s3_parallel.map(usize::from),
                    stall: self
                        .s3_timeout
                        .map(|s| std::time::Duration::from_secs(s.into())),
                    access_key: None,
                    usage: self.s3_usage.clone(),
                    env: environment::aws(),
                },
            },
        )
    }

    fn open_options<'a>(
        &'a self,
        auth: &'a wyng::auth::Auth,
        beside_writers: bool,
    ) -> OpenOptions<'a> {
        OpenOptions {
            auth,
            meta_dir: Some(self.meta_dir()),
            allow_rollback: self.force_allow_rollback,
            force_retry: self.force_retry,
            lock: wyng::archive::LockPolicy {
                wait: std::time::Duration::from_secs(self.lock_wait.into()),
                beside_writers,
            },
            tuning: self.tuning.clone(),
            progress: self.progress.clone(),
        }
    }

    /// The archive, opened for reading.
    pub fn read(&self) -> Result<Archive> {
        let auth = self.auth();
        Archive::open_read(self.location()?, &self.open_options(&auth, true))
    }

    /// The archive, opened for reading with no writer at work (waiting `--lock-wait` for one
    /// to finish): for a check whose view must not include a writer's staging.
    pub fn read_quiescent(&self) -> Result<Archive> {
        let auth = self.auth();
        Archive::open_read(self.location()?, &self.open_options(&auth, false))
    }

    /// The archive, opened for writing (locked, recovered).
    pub fn write(&self) -> Result<WriteArchive> {
        let auth = self.auth();
        Archive::open_write(self.location()?, &self.open_options(&auth, false))
    }

    /// The archive at `url`, opened for writing (a send to several archives).
    pub fn write_to(&self, url: &str) -> Result<WriteArchive> {
        let auth = self.auth();
        Archive::open_write(self.location_of(url)?, &self.open_options(&auth, false))
    }

    /// A line of report text (nothing with `--quiet` or `--json`).
    pub fn say(&self, s: impl AsRef<str>) {
        if !self.quiet && !self.json {
            // Report text carries names from the archive: never raw control bytes.
            let line = format!("{}\n", wyng::archive::printable(s.as_ref()));
            let _ = write_stdout(line.as_bytes());
        }
    }

    pub fn json<T: serde::Serialize>(&self, v: &T) -> Result<()> {
        let s = serde_json::to_string_pretty(v)
            .map_err(|e| Error::io("stdout", std::io::Error::other(e)))?;
        write_stdout(format!("{s}\n").as_bytes())?;
        JSON_WRITTEN.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Reports as JSON, or each one's lines (nothing with `--quiet`).
    pub fn reports<R: serde::Serialize>(
        &self,
        reports: &[R],
        lines: impl Fn(&R) -> Vec<String>,
    ) -> Result<()> {
        if self.json {
            return self.json(&reports);
        }
        reports.iter().flat_map(lines).for_each(|l| self.say(l));
        Ok(())
    }

    /// Whether nobody can be asked: `-u`, `--quiet`, or (as the original) a standard input
    /// that is not a terminal.
    pub fn unattended(&self) -> bool {
        self.unattended || self.quiet || !std::io::IsTerminal::is_terminal(&std::io::stdin())
    }

    /// Asks before destructive work on a terminal; unattended (see [`Global::unattended`]) or
    /// with `--force`, the answer is yes, as in the original. Whether to go on: a "no" is the
    /// caller's to report (the original ends prune, delete and clean with exit 0 then).
    pub fn confirm(&self, question: &str) -> Result<bool> {
        if self.force || self.unattended() {
            return Ok(true);
        }
        prompt::confirm(question)
    }

    /// [`Global::confirm`] where a "no" ends the command as a failure (exit 1, as the
    /// original's receive).
    pub fn confirm_or_stop(&self, question: &str) -> Result<()> {
        if self.confirm(question)? {
            Ok(())
        } else {
            Err(Error::Cancelled)
        }
    }

    /// The named volumes, or with `--all` every volume of the archive except `--volex` ones
    /// (named ones first); none of either is an error, as in the original.
    pub fn selection(&self, archive: &Archive, named: &[String], all: bool) -> Result<Vec<String>> {
        let names = named_or_all(archive, named, all, &self.volex);
        if names.is_empty() {
            return Err(Error::Usage(if all {
                "--all selects no volume (the archive has none, or --volex left out all)".into()
            } else {
                "volume name(s) or --all required".into()
            }));
        }
        Ok(names)
    }
}

/// The end of a command over several volumes: the failures (each already reported) as one
/// error, exit 1 if any was damage, else 2, as the original's "Error on volumes".
/// Damage found in `volume` (a chunk that fails its checks), with what to do about it: which
/// session holds the damaged file, and the ways out (rescue what reads, keep a whole copy from
/// the source, drop sessions that no longer need it, restore a copy of the archive).
pub fn with_damage_advice(e: Error, volume: &str) -> Error {
    let Error::Corrupt { path, what } = e else {
        return e;
    };
    let session = path
        .split('/')
        .nth(1)
        .filter(|s| s.starts_with("S_"))
        .map(|s| date(s).to_string());
    let Some(s) = session else {
        return Error::Corrupt { path, what };
    };
    let v = wyng::archive::sanitized(volume);
    let advice = format!(
        "\nThe damaged chunk file is stored by session {s} of '{v}'; that session and later ones that did not change this chunk read it. What to do:\n  \
         - rescue what still reads: wyng receive '{v}' --session={s} --skip-corrupt-chunks --save-to=FILE (the damaged range becomes zeros)\n  \
         - if the source still holds the data, keep a whole copy: wyng rename '{v}' '{v}.damaged', then wyng send '{v}' (a full send); delete the damaged volume when its older sessions are no longer needed\n  \
         - if the newest session verifies, drop the older sessions that hold the damage: wyng prune '{v}' --session=FROM,TO\n  \
         - or put back a copy of the archive made before the damage (wyng arch-check lists every damaged file)"
    );
    Error::Corrupt {
        path,
        what: what + &advice,
    }
}

pub fn volumes_failed(command: &'static str, failed: &[(String, Error)]) -> Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    Err(Error::VolumesFailed {
        command,
        volumes: failed
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        damage: failed.iter().any(|(_, e)| e.exit_code() != 2),
    })
}

/// `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    wyng::size::human(bytes)
}

/// The named volumes, and with `--all` every other volume of the archive after them, minus
/// the `--volex` ones.
pub fn named_or_all(
    archive: &Archive,
    named: &[String],
    all: bool,
    volex: &[String],
) -> Vec<String> {
    let mut names = named.to_vec();
    if all {
        names.extend(
            archive
                .volume_names()
                .into_iter()
                .filter(|n| !named.contains(n) && !volex.contains(n)),
        );
    }
    names
}

/// A session name as `list` shows it (without `S_`).
/// `1 chunk`, `2 chunks`: a count with its noun, singular or plural.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub fn date(session: &str) -> &str {
    session.strip_prefix("S_").unwrap_or(session)
}
