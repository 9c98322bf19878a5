//! Library errors. Every variant says what went wrong *and what the user can do*, and maps to
//! the original Wyng's exit codes (behaviour notes §3) so scripts written for Wyng keep working:
//! 1 fatal/integrity, 2 per-volume selection problems, 3 authentication, 5 destination not
//! usable or already exists, 6 archive not found, 7 local storage, 8 interrupted, 9 bad input.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line input or option value.
    #[error("{0}")]
    Usage(String),

    #[error("no Wyng archive at '{url}': check --dest, or create one with `wyng arch-init --dest={url}`")]
    ArchiveNotFound { url: String },

    #[error("an archive already exists at '{url}': choose another --dest, or remove the old archive first")]
    ArchiveExists { url: String },

    #[error("destination '{url}' is not usable: {detail}")]
    DestUnavailable { url: String, detail: String },

    #[error("destination is full while writing '{path}': free space there and run the command again (the archive is unchanged)")]
    DestFull { path: String },

    #[error("volume '{0}' is not in the archive: `wyng list` shows the volume names")]
    VolumeNotFound(String),

    #[error("{0}")]
    Selection(String),

    /// The archive's content does not match its hashes or is malformed.
    #[error("archive damaged: {path}: {what} (run `wyng verify` or `wyng arch-check` to see the extent)")]
    Corrupt { path: String, what: String },

    #[error("archive format not supported: {0}")]
    Unsupported(String),

    #[error("could not authenticate archive: {0}")]
    Auth(String),

    /// A problem with the local source or restore target.
    #[error("{path}: {what}")]
    Local { path: PathBuf, what: String },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("interrupted")]
    Interrupted,

    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn corrupt(path: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            what: what.into(),
        }
    }

    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.raw_os_error() == Some(libc::EDQUOT)
        {
            return Error::DestFull { path };
        }
        Error::Io { path, source }
    }

    pub fn local(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Local {
            path: path.into(),
            what: what.into(),
        }
    }

    /// Exit code, following the original Wyng (behaviour notes §3).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 9,
            Error::Selection(_) | Error::VolumeNotFound(_) => 2,
            Error::Auth(_) => 3,
            Error::ArchiveExists { .. }
            | Error::DestUnavailable { .. }
            | Error::DestFull { .. } => 5,
            Error::ArchiveNotFound { .. } => 6,
            Error::Local { .. } => 7,
            Error::Interrupted => 8,
            Error::Corrupt { .. } | Error::Unsupported(_) | Error::Io { .. } | Error::Other(_) => 1,
        }
    }
}
