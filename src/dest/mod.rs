//! Where an archive lives. The archive engine only talks to a [`Dest`]: whole-file reads with a
//! size bound, writes, renames, directory listing, and a durability barrier. Paths are relative
//! to the archive root and are always built from validated ids (never from archive content).
//!
//! Crash safety rests on two primitives every destination must provide: `rename` replaces its
//! target atomically, and `sync` makes everything written so far durable.

mod file;

pub use file::FileDest;

use crate::error::{Error, Result};

pub trait Dest: Send + Sync {
    /// The URL as the user gave it (for messages).
    fn url(&self) -> &str;
    /// Whether the archive directory exists.
    fn root_exists(&self) -> Result<bool>;
    fn create_root(&self) -> Result<()>;
    /// Reads a whole file. `Ok(None)` if it does not exist; an error if larger than `max`.
    fn read(&self, rel: &str, max: u64) -> Result<Option<Vec<u8>>>;
    /// Creates or replaces a file (parent directories are created as needed). Not atomic:
    /// callers write to a temporary name and [`Dest::rename`] it.
    fn write(&self, rel: &str, data: &[u8]) -> Result<()>;
    fn rename(&self, from: &str, to: &str) -> Result<()>;
    fn hard_link(&self, from: &str, to: &str) -> Result<()>;
    fn mkdir_all(&self, rel: &str) -> Result<()>;
    /// Removes a file or a whole tree; nothing to remove is fine.
    fn remove_all(&self, rel: &str) -> Result<()>;
    /// Names in a directory (empty if it does not exist).
    fn list(&self, rel: &str) -> Result<Vec<String>>;
    fn exists(&self, rel: &str) -> Result<bool>;
    /// Durability barrier: everything written or renamed before is on stable storage after.
    fn sync(&self) -> Result<()>;
    /// Takes the archive lock (exclusive for writers, shared for readers) for this process.
    fn lock(&self, exclusive: bool) -> Result<()>;
    /// Releases the lock (a long-lived reader such as a mount, which must not block sends).
    fn unlock(&self);
}

/// Opens a destination URL (behaviour notes §4.1).
pub fn open(url: &str) -> Result<Box<dyn Dest>> {
    if url.chars().any(char::is_control) {
        return Err(Error::Usage(format!(
            "--dest '{url}' contains control characters"
        )));
    }
    if let Some(rest) = url.strip_prefix("file:") {
        let path = if let Some(p) = rest.strip_prefix("//") {
            if !p.starts_with('/') {
                return Err(Error::Usage(format!(
                    "--dest '{url}': a file: URL has no host part; write file:/path/to/archive"
                )));
            }
            p
        } else {
            rest
        };
        if path.is_empty() {
            return Err(Error::Usage(format!(
                "--dest '{url}' names no path; write file:/path/to/archive"
            )));
        }
        return Ok(Box::new(FileDest::new(url, path)?));
    }
    for scheme in ["ssh://", "qubes://", "qubes-ssh://"] {
        if url.starts_with(scheme) {
            return Err(Error::Usage(format!(
                "--dest '{url}': {scheme} destinations are not supported by this version of wyng; use a file: destination (for example on a mounted network share)"
            )));
        }
    }
    Err(Error::Usage(format!(
        "--dest '{url}' is not a destination URL; use file:/path/to/archive (or ssh://user@host/path, qubes://vm/path)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(open("file:/tmp/x").is_ok());
        assert!(open("file:///tmp/x").is_ok());
        assert!(open("file://host/tmp/x").is_err());
        assert!(open("file:").is_err());
        assert!(open("/tmp/x").is_err());
        assert!(open("http://x").is_err());
    }
}
