//! Library errors. Every variant says what went wrong *and what the user can do*, keeps the
//! underlying error as its `source`, and maps to the original Wyng's exit codes (behaviour
//! notes §3) so scripts written for Wyng keep working: 1 fatal/integrity, 2 per-volume
//! selection problems, 3 authentication, 5 destination not usable or already exists, 6 archive
//! not found, 7 local storage, 8 interrupted, 9 bad input.
//!
//! Where an I/O error happened decides its variant: the destination ([`Error::DestIo`],
//! [`Error::DestFull`]), wyng's local state under `--meta-dir` ([`Error::LocalState`]), the
//! volume or restore target ([`Error::Local`]), or a temporary file ([`Error::Io`]). A full
//! disk is never reported as the destination's unless it is.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A setting whose value the library checks ([`Error::BadValue`]); the binary knows which
/// option gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// Autoprune's day windows (A:B:C:D).
    AutopruneDays,
    /// Chunk size of a new archive, as a power of two times 32 KiB.
    ChunkFactor,
    /// S3 addressing style.
    S3Addressing,
    /// Where local volumes live (a directory, vg/pool or zfs:pool/dataset).
    LocalStorage,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Setting::AutopruneDays => "autoprune days",
            Setting::ChunkFactor => "chunk factor",
            Setting::S3Addressing => "S3 addressing",
            Setting::LocalStorage => "local storage",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line input or option value.
    #[error("{0}")]
    Usage(String),

    #[error("no Wyng archive at '{url}': check the location, or create an archive there")]
    ArchiveNotFound { url: String },

    #[error("an archive already exists at '{url}': choose another location, or remove the old archive first")]
    ArchiveExists { url: String },

    #[error("destination '{url}' is not usable: {detail}")]
    DestUnavailable { url: String, detail: String },

    /// The destination itself (an S3 bucket) is not there.
    #[error("destination '{url}' not found: {detail}")]
    DestMissing { url: String, detail: String },

    #[error("destination is full while writing {path} in '{url}': free space there and run the command again (an interrupted command is finished or rolled back by the next one)")]
    DestFull { url: String, path: String },

    #[error("I/O error on the destination '{url}' at {path}: {source}")]
    DestIo {
        url: String,
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("another wyng process is using the archive '{url}'; wait for it to finish, or let this command wait for it")]
    Busy { url: String },

    /// A reader holding no lock found files moved by a writer (a prune or delete).
    #[error("the archive '{url}' changed while this command read it (another wyng process pruned or deleted sessions): run the command again")]
    ChangedWhileReading { url: String },

    #[error("volume '{0}' is not in the archive: `wyng list` shows the volume names")]
    VolumeNotFound(String),

    /// A destination URL that cannot be used as written; `why` says how to write it.
    #[error("destination '{url}': {why}")]
    BadDest { url: String, why: String },

    /// A session selection (WHEN, or FROM,TO) that cannot be read; `why` says what is wrong.
    #[error("session selection '{spec}': {why}")]
    BadSessionSpec { spec: String, why: String },

    /// A session selection that matches no session of `of` ("volume 'x'", "volumes x, y").
    #[error("session selection '{spec}' matches no session of {of}")]
    NoSessionMatches { spec: String, of: String },

    /// The same volume named twice in one command (nothing was changed).
    #[error("volume '{0}' is named twice; nothing was changed")]
    VolumeNamedTwice(String),

    /// A volume of this name is already in the archive.
    #[error("volume '{0}' already exists")]
    VolumeExists(String),

    /// A delete given neither a volume name nor a volume id.
    #[error("name the volume to delete, or give its id")]
    NothingToDelete,

    /// Skipping damaged chunks was asked of a receive that updates its target in place.
    #[error("skipping damaged chunks works with a full receive, not with an update in place")]
    SkipNeedsFullReceive,

    /// A prune given no sessions, no retention policy and no autoprune.
    #[error("prune needs sessions to remove, a retention policy, or autoprune")]
    NothingToPrune,

    /// The command that prints the passphrase could not run, or failed.
    #[error("the passphrase command {0}")]
    Passcmd(String),

    /// A setting's value the library does not take; `expected` says what it takes.
    #[error("{setting} '{value}': {expected}")]
    BadValue {
        setting: Setting,
        value: String,
        expected: String,
    },

    #[error("{0}")]
    Selection(String),

    /// Some of the volumes a command worked on failed (each was reported as it failed).
    #[error("{command} failed for volumes: {volumes}")]
    VolumesFailed {
        command: &'static str,
        volumes: String,
        /// Any of them damaged (exit 1), not only missing or different (exit 2).
        damage: bool,
    },

    /// The archive's content does not match its hashes or is malformed.
    #[error("archive damaged: {path}: {what}")]
    Corrupt { path: String, what: String },

    /// A session that existed when a command (a mount) started is gone: pruned meanwhile.
    #[error("session {session} of volume '{volume}' was pruned while in use; open it again from the volume's directory")]
    Pruned { volume: String, session: String },

    #[error("archive format not supported: {0}")]
    Unsupported(String),

    #[error("could not authenticate archive: {0}")]
    Auth(String),

    /// An encrypted archive and no passphrase (an empty line, or nothing on standard input).
    #[error("could not authenticate archive: no passphrase given: type it at the prompt, pipe it on standard input, or give a command that prints it")]
    NoPassphrase,

    /// A problem with the local source or restore target.
    #[error("{path}: {what}")]
    Local { path: PathBuf, what: String },

    /// An I/O failure on the local source or restore target (or a local file the user named),
    /// with what was being done (may be empty) and the error itself.
    #[error("{path}: {what}{sep}{source}", sep = if what.is_empty() { "" } else { ": " })]
    LocalIo {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// wyng's own state under `--meta-dir` (rollback copy, counters, indexes, maps).
    // Names the option itself: the library logs this error as a warning when the local state
    // is only an optimisation (an unencrypted send goes on), where the binary cannot word it.
    #[error("local state in {path}: {source} (check --meta-dir; free space there if it is full)")]
    LocalState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A temporary file or pipe of this run.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("archive is older than the last one seen here: '{url}' may have been replaced by an old copy of itself; check it, then accept the rollback explicitly")]
    Rollback { url: String },

    #[error(
        "the archive was updated in the future by this machine's clock: check the system time"
    )]
    FutureTimestamp,

    #[error("an interrupted {command} of {vid} was already retried and did not complete: see why in the earlier error (or check the archive), then force one more retry")]
    RetryPending { command: String, vid: String },

    /// An encryption was attempted with counters that were never reserved in local state: a
    /// programming error caught before it could reuse a nonce counter.
    #[error("encryption counters were not reserved in local state; nothing was written (an encrypted archive can only be written with a usable local state directory)")]
    CountersNotReserved,

    /// An external program (lvm, thin_delta, …) answered something we cannot parse.
    #[error("unexpected output from {program}: {what}")]
    Tool { program: String, what: String },

    #[error("interrupted")]
    Interrupted,

    /// The user answered no.
    #[error("cancelled; nothing was changed")]
    Cancelled,
    /// A filesystem inside a session image is damaged, or holds what wyng does not read.
    #[error("{path}: {what}")]
    Guest { path: String, what: String },
}

impl Error {
    pub fn corrupt(path: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            what: what.into(),
        }
    }

    /// An I/O error on a temporary file of this run (not the destination, not local state).
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn local(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Local {
            path: path.into(),
            what: what.into(),
        }
    }

    /// [`Error::LocalIo`]: `what` says what was being done ("cannot create"), or is empty.
    pub fn local_io(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        source: std::io::Error,
    ) -> Self {
        Error::LocalIo {
            path: path.into(),
            what: what.into(),
            source,
        }
    }

    pub(crate) fn local_state(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::LocalState {
            path: path.into(),
            source,
        }
    }

    /// Exit code, following the original Wyng (behaviour notes §3).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_)
            | Error::BadDest { .. }
            | Error::BadSessionSpec { .. }
            | Error::VolumeNamedTwice(_)
            | Error::VolumeExists(_)
            | Error::Passcmd(_)
            | Error::NothingToPrune
            | Error::NothingToDelete
            | Error::SkipNeedsFullReceive
            | Error::BadValue { .. } => 9,
            Error::Selection(_) | Error::VolumeNotFound(_) | Error::NoSessionMatches { .. } => 2,
            Error::VolumesFailed { damage, .. } => {
                if *damage {
                    1
                } else {
                    2
                }
            }
            Error::Auth(_) | Error::NoPassphrase => 3,
            Error::ArchiveExists { .. }
            | Error::DestUnavailable { .. }
            | Error::DestFull { .. }
            | Error::DestIo { .. }
            | Error::Busy { .. }
            | Error::ChangedWhileReading { .. } => 5,
            Error::ArchiveNotFound { .. } | Error::DestMissing { .. } => 6,
            Error::Local { .. } | Error::LocalIo { .. } => 7,
            Error::Interrupted => 8,
            Error::Corrupt { .. }
            | Error::Pruned { .. }
            | Error::Unsupported(_)
            | Error::LocalState { .. }
            | Error::Io { .. }
            | Error::Rollback { .. }
            | Error::FutureTimestamp
            | Error::RetryPending { .. }
            | Error::CountersNotReserved
            | Error::Tool { .. }
            | Error::Cancelled => 1,
            Error::Guest { .. } => 1,
        }
    }

    /// A stable name for the kind of error (`--json` error reports carry it).
    pub fn kind(&self) -> &'static str {
        match self {
            // The typed usage and selection cases keep the kind they had as text.
            Error::Usage(_)
            | Error::BadDest { .. }
            | Error::BadSessionSpec { .. }
            | Error::VolumeNamedTwice(_)
            | Error::VolumeExists(_)
            | Error::Passcmd(_)
            | Error::NothingToPrune
            | Error::NothingToDelete
            | Error::SkipNeedsFullReceive
            | Error::BadValue { .. } => "usage",
            Error::NoSessionMatches { .. } => "selection",
            Error::ArchiveNotFound { .. } => "archive_not_found",
            Error::DestMissing { .. } => "destination_not_found",
            Error::ArchiveExists { .. } => "archive_exists",
            Error::DestUnavailable { .. } => "dest_unavailable",
            Error::DestFull { .. } => "dest_full",
            Error::DestIo { .. } => "dest_io",
            Error::Busy { .. } => "busy",
            Error::ChangedWhileReading { .. } => "changed_while_reading",
            Error::VolumeNotFound(_) => "volume_not_found",
            Error::Selection(_) => "selection",
            Error::VolumesFailed { .. } => "volumes_failed",
            Error::Corrupt { .. } => "damaged",
            Error::Pruned { .. } => "pruned",
            Error::Unsupported(_) => "unsupported",
            Error::Auth(_) | Error::NoPassphrase => "auth",
            Error::Local { .. } | Error::LocalIo { .. } => "local",
            Error::LocalState { .. } => "local_state",
            Error::Io { .. } => "io",
            Error::Rollback { .. } => "rollback",
            Error::FutureTimestamp => "future_timestamp",
            Error::RetryPending { .. } => "retry_pending",
            Error::CountersNotReserved => "counters_not_reserved",
            Error::Tool { .. } => "tool",
            Error::Interrupted => "interrupted",
            Error::Cancelled => "cancelled",
            Error::Guest { .. } => "guest",
        }
    }

    /// Whether this is damage to the archive (as opposed to a failure to reach it, bad input…).
    pub(crate) fn is_damage(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

/// Format errors keep their text and exit code: damage is damage wherever it is found.
impl From<crate::format::Error> for Error {
    fn from(e: crate::format::Error) -> Self {
        match e {
            crate::format::Error::Corrupt { path, what } => Error::Corrupt { path, what },
            crate::format::Error::Unsupported(s) => Error::Unsupported(s),
            crate::format::Error::InvalidName(s) => Error::Usage(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_io_error_reads_as_before_and_keeps_its_source() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let e = Error::local_io("/x.img", "cannot create", full);
        assert_eq!(e.to_string(), "/x.img: cannot create: no storage space");
        let src = std::error::Error::source(&e).expect("the io::Error is the source");
        let io = src.downcast_ref::<std::io::Error>().unwrap();
        assert_eq!(io.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!((e.exit_code(), e.kind()), (7, "local"));
        let bare = Error::local_io("/x.img", "", std::io::ErrorKind::NotFound.into());
        assert_eq!(bare.to_string(), "/x.img: entity not found");
    }
}
