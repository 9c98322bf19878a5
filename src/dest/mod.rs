//! Where an archive lives. Only [`crate::archive`] talks to a [`Dest`]: whole-file and
//! streamed reads with a size bound, writes, renames, directory listing, and a durability
//! barrier. Paths are relative to the archive root and are always built from validated ids
//! (`archive::layout`), never from archive content.
//!
//! What the archive engine may rely on is explicit in [`Capabilities`]: crash safety rests on
//! `sync` (everything written or renamed before it is durable after it) and, where
//! `atomic_rename` holds, on `rename` replacing its target atomically. A destination without
//! hard links refuses `hard_link` with an error; one without a process-bound lock says so.

mod file;
pub mod memory;
pub mod remote;
pub mod s3;

use std::io::{Read, Write};

pub use file::FileDest;
pub use memory::MemDest;
pub use remote::RemoteDest;
pub use s3::{AwsEnv, S3Dest, S3Options, S3Usage, S3UsageLog};

use crate::error::{Error, Result};

/// What a destination can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `rename` replaces its target atomically, and renaming a directory moves its tree.
    pub atomic_rename: bool,
    /// `hard_link` works (needed by `--dedup` and `arch-deduplicate`).
    pub hard_links: bool,
    /// `lock` takes a lock that ends with this process (or its connection).
    pub process_lock: bool,
}

pub trait Dest: Send + Sync {
    /// The URL as the user gave it (for messages).
    fn url(&self) -> &str;
    fn capabilities(&self) -> Capabilities;
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
    /// Streams a file of at most `max` bytes into `out`; its size, or `None` if it does not
    /// exist. For objects too large to hold in memory (a large volume's manifest).
    fn read_into(&self, rel: &str, max: u64, out: &mut dyn Write) -> Result<Option<u64>> {
        match self.read(rel, max)? {
            None => Ok(None),
            Some(b) => {
                out.write_all(&b)
                    .map_err(|e| Error::io("local spool for a download", e))?;
                Ok(Some(b.len() as u64))
            }
        }
    }
    /// Creates or replaces a file (parent directories are created as needed). Not atomic:
    /// callers write to a temporary name and [`Dest::rename`] it.
    fn write(&self, rel: &str, data: &[u8]) -> Result<()>;
    /// [`Dest::write`] from a stream of `len` bytes.
    fn write_from(&self, rel: &str, src: &mut dyn Read, len: u64) -> Result<()> {
        let mut b = Vec::with_capacity(len.min(64 << 20) as usize);
        src.read_to_end(&mut b)
            .map_err(|e| Error::io("local spool for an upload", e))?;
        self.write(rel, &b)
    }
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
    /// Names in a directory (empty if it does not exist), sorted.
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
    /// Bytes a send stores between two checkpoints for a resume (each is a [`Dest::sync`]):
    /// small where a sync is cheap, larger where it stalls the pipeline for longer.
    fn checkpoint_bytes(&self) -> u64 {
        64 << 20
    }
    /// Bytes an unprivileged writer may still store at the archive (`None` where the
    /// destination cannot tell). Drives `send --autoprune=on`.
    fn free_space(&self) -> Result<Option<u64>> {
        Ok(None)
    }
    /// Takes the archive lock (exclusive for writers, shared for readers) for this process,
    /// without waiting: `Busy` if another process holds it. `Ok(false)`: this destination
    /// takes no lock of that kind (readers of object storage), so nothing is held.
    fn lock(&self, exclusive: bool) -> Result<bool>;
    /// Releases the lock (a long-lived reader such as a mount, which must not block sends).
    fn unlock(&self);
    /// In a child process after `fork`: let go of connections that belong to the parent
    /// (without closing them for the parent); new ones are made on first use.
    fn detach_after_fork(&self) {}
    /// File bytes this process has sent to the destination so far (writes and uploads, not
    /// renames or links): what a copy or a send cost in transfer.
    fn bytes_written(&self) -> u64;
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
    /// Options for `qvm-run` (`--opt-qubes`; `-p`, which the protocol needs, is always given).
    pub qubes_opts: Option<Vec<String>>,
    /// Endpoint, region, profile and lock options for `s3://`.
    pub s3: S3Options,
}

/// Opens a destination URL (behaviour notes §4.1).
pub fn open(url: &str, o: &DestOptions) -> Result<Box<dyn Dest>> {
    if url.chars().any(char::is_control) {
        return Err(Error::BadDest {
            url: url.escape_debug().to_string(),
            why: "contains control characters".into(),
        });
    }
    if let Some(rest) = url.strip_prefix("file:") {
        let path = if let Some(p) = rest.strip_prefix("//") {
            if !p.starts_with('/') {
                return Err(Error::BadDest {
                    url: url.into(),
                    why: "a file: URL has no host part; write file:/path/to/archive".into(),
                });
            }
            p
        } else {
            rest
        };
        if path.is_empty() {
            return Err(Error::BadDest {
                url: url.into(),
                why: "names no path; write file:/path/to/archive".into(),
            });
        }
        return Ok(Box::new(FileDest::new(url, path)?));
    }
    if ["ssh://", "qubes://", "qubes-ssh://"]
        .iter()
        .any(|s| url.starts_with(s))
    {
        return Ok(Box::new(RemoteDest::new(url, o)?));
    }
    if url.starts_with("s3://") {
        return Ok(Box::new(S3Dest::new(url, &o.s3)?));
    }
    Err(Error::BadDest {
        url: url.into(),
        why: "not a destination URL; use file:/path/to/archive (or ssh://user@host/path, qubes://vm/path, s3://bucket/prefix)".into(),
    })
}

/// The error for a destination write that found no space.
pub(crate) fn full(url: &str, rel: &str) -> Error {
    Error::DestFull {
        url: url.to_string(),
        path: rel.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let o = DestOptions::default();
        assert!(open("file:/tmp/x", &o).is_ok());
        assert!(open("file:///tmp/x", &o).is_ok());
        assert!(open("file://host/tmp/x", &o).is_err());
        assert!(open("file:", &o).is_err());
        assert!(open("/tmp/x", &o).is_err());
        assert!(open("http://x", &o).is_err());
        assert!(open("ssh://host/x", &o).is_ok());
    }
}
