//! Command-line definitions. Options may come before or after the command and the volume names:
//! [`normalize_args`] moves anything before the command word to after it, so clap sees one shape.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};

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
    #[command(
        after_help = "Examples:\n  wyng arch-init --dest=file:/mnt/usb/laptop.backup\n  wyng arch-init --dest=file:/mnt/usb/laptop.backup --passcmd='pass show backup/laptop'\n  wyng arch-init --dest=file:/mnt/usb/plain.backup --encrypt=off --compression=zstd:3 --chunk-factor=3\n\nEncrypted archives (the default) ask for a passphrase of at least 10 characters, twice on a\nterminal; keep it safe: without it the archive cannot be read."
    )]
    ArchInit(InitArgs),
    /// Back up volumes: each send records a new session holding only what changed
    #[command(
        after_help = "Examples:\n  wyng send vm1.img --import-other-from='vm1.img:|:/var/lib/images/vm1.img' --dest=file:/mnt/usb/laptop.backup\n  wyng send --import-other-from='disk:|:/dev/sdb' --tag=weekly,'Weekly full' --dest=file:/mnt/usb/laptop.backup\n\nThe first send of a volume stores it whole; later sends read the source and store only the\nchunks whose content differs from the archive's newest session. A send that finds no change\nrecords nothing unless --send-unchanged."
    )]
    Send(SendArgs),
    /// Restore a session of a volume to a file or block device
    #[command(
        after_help = "Examples:\n  wyng receive vm1.img --save-to=/tmp/vm1.img --dest=file:/mnt/usb/laptop.backup\n  wyng receive vm1.img --session=20261123-101500 --save-to=/dev/vg/vm1 -u --dest=...\n  wyng receive vm1.img --session=^weekly --save-to=/tmp/vm1-weekly.img --dest=...\n\nEvery chunk is checked against its hash before it is written; all-zero chunks become holes\nin a file target. A file target is built under a temporary name and renamed into place when\ncomplete. An existing target is overwritten only after confirmation or with -u."
    )]
    Receive(ReceiveArgs),
    /// Check that sessions can be restored intact, without writing anything
    #[command(
        after_help = "Examples:\n  wyng verify vm1.img --dest=file:/mnt/usb/laptop.backup\n  wyng verify vm1.img --session=20261123-101500 --dest=...\n  wyng verify --all --dest=..."
    )]
    Verify(VerifyArgs),
    /// List volumes, or the sessions of the named volumes
    #[command(
        after_help = "Examples:\n  wyng list --dest=file:/mnt/usb/laptop.backup\n  wyng list vm1.img --verbose --dest=...\n  wyng list --json --dest=... | jq ."
    )]
    List(ListArgs),
    /// Show every volume and session as a read-only sparse image file (FUSE)
    #[command(
        after_help = "Examples:\n  wyng mount /mnt/wyng --dest=file:/mnt/usb/laptop.backup\n  ls /mnt/wyng/vm1.img/            # S_20261101-020000.img ... latest.img -> newest, by-tag/\n  losetup -r -f --show -P /mnt/wyng/vm1.img/S_20261101-020000.img   # then mount -o ro,noload\n  dd if=/mnt/wyng/vm1.img/latest.img of=/dev/vg/vm1 bs=4M conv=sparse\n  wyng umount /mnt/wyng\n\nEvery chunk read is verified; a damaged chunk is an I/O error for that read, never wrong\nbytes. The mount runs in the background (logging to <meta-dir>/mount.log) until `wyng umount`,\nSIGTERM or SIGINT. Loop-mounting a guest filesystem makes your kernel parse untrusted data:\nsee docs/mount.md."
    )]
    Mount(MountArgs),
    /// Record what changed since the last send and rotate snapshots, without sending
    #[command(
        after_help = "Examples:\n  wyng monitor -a --local=/var/lib/images --dest=file:/mnt/usb/laptop.backup\n  */20 * * * *  wyng monitor -a -q --local=/var/lib/images --dest=...   # crontab\n\nEach paired volume gets a fresh snapshot; the chunks that changed since the last one are\nadded to its delta map and the old snapshot is released, so copy-on-write overhead stays\nsmall between sends. The next send reads only the chunks recorded. Volumes without a paired\nsnapshot (never sent from --local) are skipped. The archive is not changed."
    )]
    Monitor(MonitorArgs),
    /// Compare a local volume with its newest session in the archive
    #[command(
        after_help = "Examples:\n  wyng diff vms/disk.img --local=/var/lib/images --dest=...\n  wyng diff vm1.img --file=/dev/vg/vm1 --quick --dest=...\n\nExit status 0 if identical, 2 if they differ (the first differing offset is printed)."
    )]
    Diff(DiffArgs),
    /// Unmount a `wyng mount`
    #[command(
        after_help = "Example:\n  wyng umount /mnt/wyng          # same as fusermount3 -u /mnt/wyng"
    )]
    Umount(UmountArgs),
    /// Remove sessions; what they hold is merged into the sessions after them
    #[command(
        after_help = "Examples:\n  wyng prune vm1.img --session=20261101-020000 --dest=...           # one session\n  wyng prune --session=20261101-000000,20261130-235959 --dest=...    # a range, every volume\n  wyng prune vm1.img --session=^daily --keep=^monthly --dest=...\n  wyng prune --all-before --session=20261001-000000 --dry-run --dest=...\n  wyng prune --keep-daily=7 --keep-weekly=4 --keep-monthly=12 --keep=^release --dry-run --dest=...\n\nThe newest session of a volume is always kept. Chunk files are moved, not rewritten, and an\ninterrupted prune is finished (or rolled back) by the next write command."
    )]
    Prune(PruneArgs),
    /// Delete a volume and all its sessions from the archive
    #[command(
        after_help = "Example:\n  wyng delete old-vm.img -u --dest=file:/mnt/usb/laptop.backup\n\nThe deletion is journaled: if it is interrupted, the next write command finishes it."
    )]
    Delete(DeleteArgs),
    /// Replace duplicate chunk files in the archive by hard links to one copy
    #[command(
        after_help = "Example:\n  wyng arch-deduplicate --dest=file:/mnt/usb/laptop.backup\n\nNeeds a destination with hard links. `wyng send --dedup` does the same while sending."
    )]
    ArchDeduplicate,
    /// Check the whole archive: metadata, manifests, and every chunk file once
    #[command(
        after_help = "Examples:\n  wyng arch-check --dest=file:/mnt/usb/laptop.backup\n  wyng arch-check vm1.img --session=newest --dest=...\n  wyng arch-check --clean --dest=...          # first remove leftovers of interrupted commands\n\nEvery problem found is listed; the exit status is 1 if there was any."
    )]
    ArchCheck(ArchCheckArgs),
    /// Rename a volume
    #[command(
        after_help = "Example:\n  wyng rename vm1.img vms/web.img --volume-desc='web server' --dest=..."
    )]
    Rename(RenameArgs),
    /// Add a volume (with no sessions yet)
    #[command(
        after_help = "Example:\n  wyng add vms/new.img --volume-desc='not sent yet' --dest=..."
    )]
    Add(AddArgs),
    /// Print the version
    Version,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Volumes to prune (none: every volume)
    pub volumes: Vec<String>,
    /// What to remove: DATE, ^TAG, or a range FROM,TO (dates and/or ^tags)
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
    /// Remove every session before --session's date
    #[arg(long)]
    pub all_before: bool,
    /// Never remove this session (DATE) or sessions with this tag (^TAG); repeatable
    #[arg(long, value_name = "WHEN")]
    pub keep: Vec<String>,
    /// Only show what would be removed, and why every other session stays
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the N newest sessions
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: usize,
    /// Keep the newest session of each of the last N hours that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: usize,
    /// ... of each of the last N days that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: usize,
    /// ... of each of the last N ISO weeks that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: usize,
    /// ... of each of the last N months that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: usize,
    /// ... of each of the last N years that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: usize,
    #[command(flatten)]
    pub auto: AutopruneArgs,
}

#[derive(Args, Debug)]
pub struct AutopruneArgs {
    /// Thin old sessions by calendar (see --apdays). prune: on = at most 3 per volume per run,
    /// full = all that the calendar marks. send: on = only when a volume's change exceeds the
    /// destination's free space (3, then 9, then all marked sessions of that volume), full =
    /// every volume before sending
    #[arg(long, value_name = "off|on|full", default_value = "off")]
    pub autoprune: String,
    /// Autoprune calendar A:B:C:D: remove sessions older than A days (0: never); keep at most D
    /// sessions per C days among those older than B days
    #[arg(long, value_name = "A:B:C:D", default_value = "0:62:1:2")]
    pub apdays: String,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The volume to compare
    #[arg(required_unless_present = "vols_from")]
    pub volume: Option<String>,
    /// The directory holding the volume file
    #[arg(long, value_name = "DIR", conflicts_with = "file")]
    pub local: Option<PathBuf>,
    /// The volume's file or block device
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Compare hashes of recompressed local chunks with the manifest; read nothing from the archive
    #[arg(long)]
    pub quick: bool,
    /// Volumes and their local storages from a JSON file, e.g. {"/var/lib/images":
    /// [["web.img", null], ["db.img", "db-local.img"]]}; volumes that fail are listed in
    /// FILE.error and the run exits 2
    #[arg(long, value_name = "FILE", visible_alias = "local-from", conflicts_with_all = ["volume", "local", "file"])]
    pub vols_from: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ArchCheckArgs {
    /// Volumes to check (none: all)
    pub volumes: Vec<String>,
    /// `newest` (only the newest session's own chunks) or a date-time
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
    /// Remove leftovers of interrupted commands first
    #[arg(long)]
    pub clean: bool,
    /// Give the archive a new UUID (for a copy that must not be confused with its original)
    #[arg(long)]
    pub change_uuid: bool,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The volume to delete
    pub volume: Option<String>,
    /// Delete the volume with this id instead (as `wyng list -v` or arch-check name it), e.g.
    /// one whose name cannot be typed
    #[arg(long, value_name = "VID", conflicts_with_all = ["volume", "clean"])]
    pub vid: Option<String>,
    /// Also remove the volume's snapshots in this reflink directory; with --clean, the
    /// directory to clean
    #[arg(long, value_name = "DIR")]
    pub local: Option<PathBuf>,
    /// Remove wyng's leftover snapshots in --local: those of volumes this archive no longer has
    #[arg(long)]
    pub clean: bool,
    /// With --clean: every wyng snapshot in --local (any archive) and this archive's delta maps
    #[arg(short, long, requires = "clean")]
    pub all: bool,
    /// With --clean: also remove other archives' snapshots (other), or all of this archive's
    /// (full; the next sends are full scans)
    #[arg(long, value_name = "other|full", requires = "clean")]
    pub purge: Option<String>,
}

#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// Volumes to watch (paths relative to --local)
    pub volumes: Vec<String>,
    /// Every volume the archive holds
    #[arg(short, long)]
    pub all: bool,
    /// Reflink directory (Btrfs, or XFS with reflink) holding the volumes
    #[arg(long, value_name = "DIR")]
    pub local: Option<PathBuf>,
    /// Volumes and their local storages from a JSON file, e.g. {"/var/lib/images":
    /// [["web.img", null], ["db.img", "db-local.img"]]}; volumes that fail are listed in
    /// FILE.error and the run exits 2
    #[arg(long, value_name = "FILE", visible_alias = "local-from", conflicts_with_all = ["volumes", "local", "all"])]
    pub vols_from: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RenameArgs {
    pub old: String,
    pub new: String,
    /// New description (a rename without it clears the description, as the original does)
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub volume_desc: String,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    pub volumes: Vec<String>,
    /// Description of the new volumes
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub volume_desc: String,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// An empty directory to mount on
    pub mountpoint: PathBuf,
    /// Only this volume
    #[arg(long, value_name = "NAME")]
    pub volume: Option<String>,
    /// Only this session of each volume: date-time YYYYMMDD-HHMMSS, or ^TAG
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
    /// Memory for decoded chunks
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub cache: String,
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

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Encryption: xchacha20-dgr (default), xchacha20-msr, xchacha20-ct, or off
    #[arg(long, default_value = "xchacha20-dgr", value_name = "MODE")]
    pub encrypt: String,
    /// Compression and level: zstd[:1..22], zlib[:0..9], bz2[:1..9]
    #[arg(long, default_value = "zstd:3", value_name = "TYPE[:LEVEL]")]
    pub compression: String,
    /// Chunk size 32 KiB × 2^F: 1 = 64 KiB … 3 = 256 KiB (default) … 6 = 2 MiB
    #[arg(long, default_value_t = 3, value_name = "F")]
    pub chunk_factor: u32,
    /// Accepted for compatibility: the hash follows from the encryption mode
    #[arg(long, value_name = "NAME")]
    pub hashtype: Option<String>,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// Volume names (as stored in the archive)
    pub volumes: Vec<String>,
    /// Send volume NAME from the file or block device PATH: 'NAME:|:PATH' (repeatable)
    #[arg(long, value_name = "NAME:|:PATH")]
    pub import_other_from: Vec<String>,
    /// Record a session even if nothing changed
    #[arg(long)]
    pub send_unchanged: bool,
    /// Tag the new sessions: ID[,DESCRIPTION] (repeatable, up to 5)
    #[arg(long, value_name = "ID[,DESC]")]
    pub tag: Vec<String>,
    /// Description for volumes this send adds to the archive
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub volume_desc: String,
    /// Store chunks the archive already holds (in any volume) as hard links
    #[arg(short = 'd', long)]
    pub dedup: bool,
    /// Directory on a reflink filesystem (Btrfs, or XFS with reflink) holding the volumes as
    /// files: sends read only what changed since the last send, from copy-on-write snapshots
    #[arg(long, value_name = "DIR")]
    pub local: Option<PathBuf>,
    /// With --local: every volume the archive holds
    #[arg(short, long)]
    pub all: bool,
    /// Report how much would be sent; write nothing
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub auto: AutopruneArgs,
    /// Volumes and their local storages from a JSON file, e.g. {"/var/lib/images":
    /// [["web.img", null], ["db.img", "db-local.img"]]}; volumes that fail are listed in
    /// FILE.error and the run exits 2
    #[arg(long, value_name = "FILE", visible_alias = "local-from", conflicts_with_all = ["volumes", "local", "all", "import_other_from"])]
    pub vols_from: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SessionArgs {
    /// Session: date-time YYYYMMDD-HHMMSS, or ^TAG for the newest session with that tag
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
    /// off: use the newest session not after --session's date-time
    #[arg(long, value_name = "on|off", default_value = "on")]
    pub session_strict: String,
}

#[derive(Args, Debug)]
pub struct ReceiveArgs {
    /// The volume to restore
    #[arg(required_unless_present = "vols_from")]
    pub volume: Option<String>,
    /// Where to write the volume: a file path or an existing block device
    #[arg(long, value_name = "PATH")]
    pub save_to: Option<PathBuf>,
    /// Restore into this reflink directory (Btrfs/XFS) as the volume's file, paired again for
    /// incremental sends when it is the newest session
    #[arg(long, value_name = "DIR")]
    pub local: Option<PathBuf>,
    /// Keep the existing target; fetch only chunks whose local content differs (by hash) and
    /// write only those
    #[arg(long, conflicts_with = "sparse_write")]
    pub sparse: bool,
    /// Keep the existing target; fetch every chunk, write only those that differ, punch holes
    /// for zero chunks
    #[arg(long)]
    pub sparse_write: bool,
    /// With --local: restore the newest session instantly from its paired snapshot; an older
    /// one starts from the snapshot and rewrites what differs
    #[arg(long, conflicts_with = "use_snapshot_diff")]
    pub use_snapshot: bool,
    /// With --local: restore an older session as the paired snapshot plus only the chunks that
    /// later sessions changed
    #[arg(long)]
    pub use_snapshot_diff: bool,
    #[command(flatten)]
    pub session: SessionArgs,
    /// Volumes and their local storages from a JSON file, e.g. {"/var/lib/images":
    /// [["web.img", null], ["db.img", "db-local.img"]]}; volumes that fail are listed in
    /// FILE.error and the run exits 2
    #[arg(long, value_name = "FILE", visible_alias = "local-from", conflicts_with_all = ["volume", "local", "save_to"])]
    pub vols_from: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Volumes to verify
    pub volumes: Vec<String>,
    /// Verify every volume
    #[arg(short, long)]
    pub all: bool,
    #[command(flatten)]
    pub session: SessionArgs,
    /// Volumes and their local storages from a JSON file, e.g. {"/var/lib/images":
    /// [["web.img", null], ["db.img", "db-local.img"]]}; volumes that fail are listed in
    /// FILE.error and the run exits 2
    #[arg(long, value_name = "FILE", visible_alias = "local-from", conflicts_with_all = ["volumes", "all"])]
    pub vols_from: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Volumes whose sessions to list (none: list volumes)
    pub volumes: Vec<String>,
    /// Only volumes having this session (date-time or ^TAG)
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
}

/// Keys the original ignores in the configuration file (behaviour notes §1.1).
const CONFIG_IGNORED: &[&str] = &[
    "config",
    "debug",
    "force",
    "save-to",
    "session",
    "unattended",
    "volume-desc",
    "tag",
    "all",
    "all-before",
    "vols-from",
    "import-other-from",
    "upgrade-format",
    "help",
    "skip-corrupt-chunks",
    "force-retry",
];

/// Inserts the configuration file's defaults (`--config FILE`, or /etc/wyng/wyng.ini if it
/// exists) right after the command word, where the command line's own options, coming later,
/// override them. Follows the original's rules: flags take 1/0, list options one item per line,
/// some keys are ignored (with a message), an unknown key is an error. Expects normalised args.
pub fn apply_config(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let strs: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let explicit = strs.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--config=").map(str::to_string).or_else(|| {
            (a == "--config")
                .then(|| strs.get(i + 1).cloned())
                .flatten()
        })
    });
    let path = explicit
        .clone()
        .unwrap_or_else(|| "/etc/wyng/wyng.ini".into());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(_) if explicit.is_none() => return Ok(args),
        Err(e) => return Err(format!("cannot read --config {path}: {e}")),
    };
    let sections =
        wyng::format::ini::parse_configparser(&text).map_err(|e| format!("{path}: {e}"))?;
    let Some((_, items)) = sections
        .into_iter()
        .find(|(s, _)| s == "var-global-default")
    else {
        return Ok(args);
    };
    let cmd = Cli::command();
    let sub_name = strs.get(1).cloned().unwrap_or_default();
    let Some(sub) = cmd.get_subcommands().find(|s| s.get_name() == sub_name) else {
        return Ok(args);
    };
    let mut inject: Vec<OsString> = Vec::new();
    for (key, value) in items {
        if CONFIG_IGNORED.contains(&key.as_str()) {
            eprintln!("Ignoring config item: {key}");
            continue;
        }
        let find = |c: &clap::Command| {
            c.get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
                .cloned()
        };
        let arg = find(sub).or_else(|| find(&cmd));
        let Some(arg) = arg else {
            if cmd.get_subcommands().any(|s| find(s).is_some()) {
                continue; // an option of another command
            }
            return Err(format!("{path}: unknown configuration item '{key}'"));
        };
        match arg.get_action() {
            ArgAction::SetTrue => {
                let on = value
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{path}: '{key}' takes 1 or 0"))?;
                if on != 0 {
                    inject.push(format!("--{key}").into());
                }
            }
            ArgAction::Count => {
                let n = value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("{path}: '{key}' takes a number"))?;
                inject.extend(std::iter::repeat_n(OsString::from(format!("--{key}")), n));
            }
            ArgAction::Append => {
                for line in value.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    inject.push(format!("--{key}={line}").into());
                }
            }
            _ => inject.push(format!("--{key}={value}").into()),
        }
    }
    let mut out = args[..2.min(args.len())].to_vec();
    out.extend(inject);
    out.extend_from_slice(&args[2.min(args.len())..]);
    Ok(out)
}

/// Moves options given before the command word to after it, so that `wyng --save-to=x receive
/// vol` and `wyng receive vol --save-to=x` parse alike.
pub fn normalize_args(args: Vec<OsString>) -> Vec<OsString> {
    let cmd = Cli::command();
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let mut takes_value: Vec<String> = Vec::new();
    for c in std::iter::once(&cmd).chain(cmd.get_subcommands()) {
        for a in c.get_arguments() {
            if a.get_action().takes_values() {
                if let Some(l) = a.get_long() {
                    takes_value.push(format!("--{l}"));
                }
                if let Some(s) = a.get_short() {
                    takes_value.push(format!("-{s}"));
                }
            }
        }
    }
    let mut pos = None;
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--" {
            break;
        }
        if names.iter().any(|n| *n == a) {
            pos = Some(i);
            break;
        }
        if takes_value.iter().any(|t| *t == a) {
            i += 1; // its value follows
        }
        i += 1;
    }
    match pos {
        Some(p) if p > 1 => {
            let mut out = vec![args[0].clone(), args[p].clone()];
            out.extend_from_slice(&args[p + 1..]);
            out.extend_from_slice(&args[1..p]);
            out
        }
        _ => args,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(v: &[&str]) -> Vec<String> {
        normalize_args(v.iter().map(OsString::from).collect())
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn options_anywhere() {
        assert_eq!(
            norm(&["wyng", "--save-to", "x", "receive", "v"]),
            ["wyng", "receive", "v", "--save-to", "x"]
        );
        assert_eq!(
            norm(&["wyng", "list", "--dest=file:/a"]),
            ["wyng", "list", "--dest=file:/a"]
        );
        assert_eq!(
            norm(&["wyng", "--dest", "list", "list"]),
            ["wyng", "list", "--dest", "list"]
        );
        Cli::command().debug_assert();
    }
}
