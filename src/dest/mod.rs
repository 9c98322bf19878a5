//! Where an archive lives. The archive engine only talks to a [`Dest`]: whole-file reads with a
//! size bound, writes, renames, directory listing, and a durability barrier. Paths are relative
//! to the archive root and are always built from validated ids (never from archive content).
//!
//! Crash safety rests on two primitives every destination must provide: `rename` replaces its
//! target atomically, and `sync` makes everything written so far durable.

mod file;
pub mod remote;

pub use file::FileDest;
pub use remote::RemoteDest;

use crate::error::{Error, Result};

pub trait Dest: Send + Sync {
    /// The URL as the user gave it (for messages).
    fn url(&self) -> &str;
    /// Whether the archive directory exists.
    fn root_exists(&self) -> Result<bool>;
    fn create_root(&self) -> Result<()>;
    /// Reads a whole file. `Ok(None)` if it does not exist; an error if larger than `max`.
    fn read(&self, rel: &str, max: u64) -> Result<Option<Vec<u8>>>;
    /// Reads several files (in the order given).
    fn read_many(&self, rels: &[String], max: u64) -> Result<Vec<Option<Vec<u8>>>> {
        rels.iter().map(|r| self.read(r, max)).collect()
    }
    /// Whether [`Dest::read_many`] is much cheaper than reading files one by one (a remote
    /// destination, where each request is a round trip).
    fn batch_reads(&self) -> bool {
        false
    }
    /// Creates or replaces a file (parent directories are created as needed). Not atomic:
    /// callers write to a temporary name and [`Dest::rename`] it.
    fn write(&self, rel: &str, data: &[u8]) -> Result<()>;
    /// Writes a chunk file of a session being staged. Destinations may stream these (they are
    /// only read after a later [`Dest::sync`]).
    fn write_chunk(&self, rel: &str, data: &[u8]) -> Result<()> {
        self.write(rel, data)
    }
    fn rename(&self, from: &str, to: &str) -> Result<()>;
    fn hard_link(&self, from: &str, to: &str) -> Result<()>;
    /// Makes `to` (a chunk of a session being staged) a hard link to the existing `from`;
    /// like [`Dest::write_chunk`], it may be streamed.
    fn link_chunk(&self, from: &str, to: &str) -> Result<()> {
        if let Some((dir, _)) = to.rsplit_once('/') {
            self.mkdir_all(dir)?;
        }
        self.hard_link(from, to)
    }
    /// Size and identity (device, inode) of a file, `None` if it does not exist.
    fn stat(&self, rel: &str) -> Result<Option<FileStat>>;
    fn mkdir_all(&self, rel: &str) -> Result<()>;
    /// Removes a file or a whole tree; nothing to remove is fine.
    fn remove_all(&self, rel: &str) -> Result<()>;
    /// Names in a directory (empty if it does not exist).
    fn list(&self, rel: &str) -> Result<Vec<String>>;
    fn exists(&self, rel: &str) -> Result<bool>;
    /// Durability barrier: everything written or renamed before is on stable storage after.
    fn sync(&self) -> Result<()>;
    /// Carries out the moves of a journaled merge (format §13), as if one by one in order. A
    /// rename whose source is missing was done by an earlier, interrupted run and is skipped;
    /// removing nothing is fine. Remote destinations send them in batches (one round trip per
    /// batch): nothing is durable before the caller's next `sync` anyway.
    fn apply_moves(&self, moves: &[Move]) -> Result<()> {
        for m in moves {
            match m {
                Move::Rename { from, to } => {
                    if self.exists(from)? {
                        self.rename(from, to)?;
                    }
                }
                Move::Remove(p) => self.remove_all(p)?,
            }
        }
        Ok(())
    }
    /// Bytes an unprivileged writer may still store at the archive (`None` where the
    /// destination cannot tell). Drives `send --autoprune=on`.
    fn free_space(&self) -> Result<Option<u64>> {
        Ok(None)
    }
    /// Takes the archive lock (exclusive for writers, shared for readers) for this process.
    fn lock(&self, exclusive: bool) -> Result<()>;
    /// Releases the lock (a long-lived reader such as a mount, which must not block sends).
    fn unlock(&self);
    /// In a child process after `fork`: let go of connections that belong to the parent
    /// (without closing them for the parent); new ones are made on first use.
    fn detach_after_fork(&self) {}
}

/// One step of [`Dest::apply_moves`], paths relative to the archive root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Move {
    Rename { from: String, to: String },
    Remove(String),
}

/// What [`Dest::stat`] tells: two paths with the same `id` are hard links of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    pub id: (u64, u64),
}

/// Options for destinations.
#[derive(Clone, Debug, Default)]
pub struct DestOptions {
    /// Replaces the default ssh options (`--opt-ssh`).
    pub ssh_opts: Option<Vec<String>>,
}

/// Opens a destination URL (behaviour notes §4.1).
pub fn open(url: &str) -> Result<Box<dyn Dest>> {
    open_with(url, &DestOptions::default())
}

pub fn open_with(url: &str, o: &DestOptions) -> Result<Box<dyn Dest>> {
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
    if ["ssh://", "qubes://", "qubes-ssh://"]
        .iter()
        .any(|s| url.starts_with(s))
    {
        return Ok(Box::new(RemoteDest::new(url, o.ssh_opts.clone())?));
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
        assert!(open("ssh://host/x").is_ok());
    }
}
