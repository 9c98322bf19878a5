//! What can be wrong with format objects. `wyng::Error` converts each variant into its own
//! (same text, same exit code), so callers above see one error type.

/// A format object that cannot be read or a name that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Stored metadata does not parse: the archive (or a copy of its metadata) is damaged.
    #[error("archive damaged: {path}: {what}")]
    Corrupt { path: String, what: String },

    /// A format version or feature this implementation does not read.
    #[error("archive format not supported: {0}")]
    Unsupported(String),

    /// A volume name the format cannot hold (given by the user, or found in an archive where
    /// the parser reports it as damage instead).
    #[error("{0}")]
    InvalidName(String),
}

impl Error {
    pub fn corrupt(path: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            what: what.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
