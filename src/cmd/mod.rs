//! The binary's commands: one module per command with its clap arguments (typed values), the
//! conversion to the library's options, and its report text. Everything a user sees, asks or
//! waits for (prompts, output, running in the background) is here, not in the library.

pub mod arch_check;
pub mod arch_dedup;
pub mod arch_init;
pub mod config;
pub mod delete;
pub mod diff;
pub mod docs;
pub mod files;
pub mod list;
pub mod monitor;
pub mod mount;
pub mod prompt;
pub mod prune;
pub mod receive;
pub mod send;
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
    /// Directory for wyng's local state about archives (created if missing)
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/var/lib/wyng"
    )]
    pub meta_dir: PathBuf,
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
    /// Configuration file (default /etc/wyng/wyng.ini): defaults for options, section
    /// [var-global-default], keys are option names without "--"
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
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
    /// Rename a volume
    #[command(after_help = volume::RENAME_HELP)]
    Rename(volume::RenameArgs),
    /// Add a volume (with no sessions yet)
    #[command(after_help = volume::ADD_HELP)]
    Add(volume::AddArgs),
    /// Print the version
    Version,
    /// Print a shell completion script
    #[command(after_help = docs::COMPLETIONS_HELP)]
    Completions(docs::CompletionsArgs),
    /// Print a manual page (roff), or write them all to a directory
    #[command(after_help = docs::MAN_HELP)]
    Man(docs::ManArgs),
}

/// Runs one command, then trims the local cache as `--meta-reduce` says.
pub fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    let reflink_fs: Vec<String> = g
        .vouch
        .iter()
        .filter_map(|v| v.strip_prefix("reflink_fs_").map(str::to_string))
        .collect();
    if !reflink_fs.is_empty() && !g.vouch.iter().any(|v| v == "fs_online_factors") {
        return Err(Error::Usage(
            "--vouch=reflink_fs_TYPE needs --vouch=fs_online_factors too (you vouch that the filesystem's reflink copies are consistent while it is in use)".into(),
        ));
    }
    wyng::source::configure(wyng::source::LocalOptions {
        remap: g.remap,
        reflink_fs,
    });
    // Commands that never open an archive leave its cache alone (no walk of the meta dir).
    let uses_archive = !matches!(
        cli.cmd,
        Cmd::Version | Cmd::Completions(_) | Cmd::Man(_) | Cmd::Umount(_)
    );
    let result = run_command(g, cli.cmd);
    if uses_archive && g.meta_reduce.mode != MetaMode::Off && g.meta_dir.is_dir() {
        let n = wyng::archive::local::reduce(
            &g.meta_dir,
            g.meta_reduce.minutes,
            g.meta_reduce.mode == MetaMode::Extra,
        );
        if n > 0 {
            tracing::debug!("--meta-reduce: removed {n} cached file(s)");
        }
    }
    result
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
            println!("{}", wyng::VERSION_LINE);
            Ok(())
        }
        Cmd::ArchInit(a) => arch_init::run(g, a),
        Cmd::Send(a) => send::run(g, a),
        Cmd::Receive(a) => receive::run(g, a),
        Cmd::Verify(a) => verify::run(g, a),
        Cmd::List(a) => list::run(g, a),
        Cmd::Mount(a) => mount::run(g, a),
        Cmd::Umount(a) => mount::umount(a),
        Cmd::Files(a) => files::run(g, a),
        Cmd::Monitor(a) => monitor::run(g, a),
        Cmd::Diff(a) => diff::run(g, a),
        Cmd::Prune(a) => prune::run(g, a),
        Cmd::Delete(a) => delete::run(g, a),
        Cmd::ArchDeduplicate => arch_dedup::run(g),
        Cmd::ArchCheck(a) => arch_check::run(g, a),
        Cmd::Rename(a) => volume::rename(g, a),
        Cmd::Add(a) => volume::add(g, a),
        Cmd::Completions(a) => docs::completions(a),
        Cmd::Man(a) => docs::man(a),
    }
}

/// `--session` with `--session-strict`.
#[derive(Args, Debug)]
pub struct SessionArgs {
    /// Session: date-time YYYYMMDD-HHMMSS, or ^TAG for the newest session with that tag
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
    /// off: use the newest session not after --session's date-time
    #[arg(long, value_name = "on|off", default_value = "on")]
    pub session_strict: OnOff,
}

impl SessionArgs {
    pub fn sel(&self) -> Result<SessionSel> {
        SessionSel::parse(self.session.as_deref(), self.session_strict == OnOff::On)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl Global {
    pub fn auth(&self) -> wyng::auth::Auth {
        wyng::auth::Auth {
            passcmd: self.passcmd.clone(),
            authmin: self.authmin,
        }
    }

    /// The one archive location of this command (only `send` takes several).
    pub fn location(&self) -> Result<Location> {
        match self.dests()?.as_slice() {
            [one] => self.location_of(one),
            _ => Err(Error::Usage(
                "--dest was given more than once: only send writes to several archives".into(),
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
                    access_key: None,
                    report_json: self.json,
                },
            },
        )
    }

    fn open_options<'a>(&'a self, auth: &'a wyng::auth::Auth) -> OpenOptions<'a> {
        OpenOptions {
            auth,
            meta_dir: Some(&self.meta_dir),
            allow_rollback: self.force_allow_rollback,
            force_retry: self.force_retry,
        }
    }

    /// The archive, opened for reading.
    pub fn read(&self) -> Result<Archive> {
        let auth = self.auth();
        Archive::open_read(self.location()?, &self.open_options(&auth))
    }

    /// The archive, opened for writing (locked, recovered).
    pub fn write(&self) -> Result<WriteArchive> {
        let auth = self.auth();
        Archive::open_write(self.location()?, &self.open_options(&auth))
    }

    /// The archive at `url`, opened for writing (a send to several archives).
    pub fn write_to(&self, url: &str) -> Result<WriteArchive> {
        let auth = self.auth();
        Archive::open_write(self.location_of(url)?, &self.open_options(&auth))
    }

    /// A line of report text (nothing with `--quiet` or `--json`).
    pub fn say(&self, s: impl AsRef<str>) {
        if !self.quiet && !self.json {
            // Report text carries names from the archive: never raw control bytes.
            println!("{}", wyng::archive::printable(s.as_ref()));
        }
    }

    pub fn json<T: serde::Serialize>(&self, v: &T) -> Result<()> {
        let s = serde_json::to_string_pretty(v)
            .map_err(|e| Error::io("stdout", std::io::Error::other(e)))?;
        println!("{s}");
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
    /// with `--force`, the answer is yes, as in the original.
    pub fn confirm(&self, question: &str) -> Result<()> {
        if self.force || self.unattended() {
            return Ok(());
        }
        prompt::confirm(question)
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
pub fn date(session: &str) -> &str {
    session.strip_prefix("S_").unwrap_or(session)
}
