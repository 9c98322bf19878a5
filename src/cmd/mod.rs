//! The binary's commands: one module per command with its clap arguments (typed values), the
//! conversion to the library's options, and its report text. Everything a user sees, asks or
//! waits for (prompts, output, running in the background) is here, not in the library.

pub mod arch_check;
pub mod arch_dedup;
pub mod arch_init;
pub mod config;
pub mod delete;
pub mod diff;
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
pub struct Global {
    /// Archive location: file:/path, ssh://[user@]host[:port]/path, qubes://vm/path or
    /// qubes-ssh://vm:[user@]host[:port]/path
    #[arg(long, global = true, value_name = "URL")]
    pub dest: Option<String>,
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
    /// Compare a local volume with its newest session in the archive
    #[command(after_help = diff::HELP)]
    Diff(diff::DiffArgs),
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
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match cli.cmd {
        Cmd::Version => {
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
        Cmd::Monitor(a) => monitor::run(g, a),
        Cmd::Diff(a) => diff::run(g, a),
        Cmd::Prune(a) => prune::run(g, a),
        Cmd::Delete(a) => delete::run(g, a),
        Cmd::ArchDeduplicate => arch_dedup::run(g),
        Cmd::ArchCheck(a) => arch_check::run(g, a),
        Cmd::Rename(a) => volume::rename(g, a),
        Cmd::Add(a) => volume::add(g, a),
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

    pub fn location(&self) -> Result<Location> {
        let url = self.dest.as_deref().ok_or_else(|| {
            Error::Usage("--dest is required, e.g. --dest=file:/mnt/usb/laptop.backup".into())
        })?;
        let ssh_opts = (!self.opt_ssh.is_empty()).then(|| {
            self.opt_ssh
                .iter()
                .flat_map(|o| o.split_whitespace().map(str::to_string))
                .collect()
        });
        Location::open(url, &DestOptions { ssh_opts })
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

    /// Asks before destructive work, unless `-u`.
    pub fn confirm(&self, question: &str) -> Result<()> {
        if self.unattended {
            return Ok(());
        }
        prompt::confirm(question)
    }
}

/// `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    wyng::size::human(bytes)
}

/// The named volumes, and with `--all` every other volume of the archive after them.
pub fn named_or_all(archive: &Archive, named: &[String], all: bool) -> Vec<String> {
    let mut names = named.to_vec();
    if all {
        names.extend(
            archive
                .volume_names()
                .into_iter()
                .filter(|n| !named.contains(n)),
        );
    }
    names
}

/// A session name as `list` shows it (without `S_`).
pub fn date(session: &str) -> &str {
    session.strip_prefix("S_").unwrap_or(session)
}
