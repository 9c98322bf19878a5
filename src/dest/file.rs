//! `file:` destinations: a directory on a mounted filesystem.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};
use parking_lot::Mutex;

use super::{Capabilities, Dest};
use crate::error::{Error, Result};

pub struct FileDest {
    url: String,
    root: PathBuf,
    lock: Mutex<Option<Flock<File>>>,
    written: AtomicU64,
}

impl FileDest {
    pub fn new(url: &str, path: &str) -> Result<Self> {
        let p = Path::new(path);
        let root = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| Error::local_io(".", "no current directory", e))?
                .join(p)
        };
        Ok(FileDest {
            url: url.to_string(),
            root,
            lock: Mutex::new(None),
            written: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, rel: &str) -> PathBuf {
        debug_assert!(!rel.split('/').any(|c| c == ".."), "{rel}");
        self.root.join(rel)
    }

    /// A destination I/O error: "full" where there is no space, else naming the file.
    fn err(&self, rel: &str, e: std::io::Error) -> Error {
        if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
            return super::full(&self.url, rel);
        }
        Error::DestIo {
            url: self.url.clone(),
            path: format!("{}/{rel}", self.root.display()),
            source: e,
        }
    }

    fn create(&self, rel: &str) -> Result<File> {
        let p = self.path(rel);
        let open = |p: &Path| {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
        };
        match open(&p) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).map_err(|e| self.err(rel, e))?;
                }
                open(&p).map_err(|e| self.err(rel, e))
            }
            Err(e) => Err(self.err(rel, e)),
        }
    }
}

/// Starts writeback now so the disk works in parallel with compression; the commit's sync then
/// has little left to wait for. Advisory only: errors surface at that sync.
fn start_writeback(f: &File) {
    crate::atomic_file::start_writeback(f, 0, 0);
}

impl Dest for FileDest {
    fn url(&self) -> &str {
        &self.url
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_rename: true,
            hard_links: true,
            process_lock: true,
        }
    }

    fn root_exists(&self) -> Result<bool> {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(true),
            Ok(_) => Err(Error::DestUnavailable {
                url: self.url.clone(),
                detail: format!("{} is not a directory", self.root.display()),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::DestUnavailable {
                url: self.url.clone(),
                detail: e.to_string(),
            }),
        }
    }

    fn create_root(&self) -> Result<()> {
        let parent_ok = self.root.parent().is_none_or(|p| p.is_dir());
        if !parent_ok {
            return Err(Error::DestUnavailable {
                url: self.url.clone(),
                detail: format!(
                    "parent directory of {} does not exist (is the backup drive mounted?)",
                    self.root.display()
                ),
            });
        }
        fs::create_dir_all(&self.root).map_err(|e| Error::DestUnavailable {
            url: self.url.clone(),
            detail: format!("cannot create {}: {e}", self.root.display()),
        })
    }

    fn read(&self, rel: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let mut f = match File::open(self.path(rel)) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(rel, e)),
        };
        let len = f.metadata().map_err(|e| self.err(rel, e))?.len();
        if len > max {
            return Err(Error::corrupt(
                rel,
                format!("file is {len} bytes, more than the {max} allowed"),
            ));
        }
        let mut buf = Vec::with_capacity(len as usize);
        Read::by_ref(&mut f)
            .take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| self.err(rel, e))?;
        if buf.len() as u64 > max {
            return Err(Error::corrupt(
                rel,
                format!("file grew beyond the {max} bytes allowed"),
            ));
        }
        Ok(Some(buf))
    }

    fn read_into(&self, rel: &str, max: u64, out: &mut dyn Write) -> Result<Option<u64>> {
        let f = match File::open(self.path(rel)) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(rel, e)),
        };
        let len = f.metadata().map_err(|e| self.err(rel, e))?.len();
        if len > max {
            return Err(Error::corrupt(
                rel,
                format!("file is {len} bytes, more than the {max} allowed"),
            ));
        }
        let mut f = f.take(max + 1);
        let n = std::io::copy(&mut f, out).map_err(|e| self.err(rel, e))?;
        if n > max {
            return Err(Error::corrupt(
                rel,
                format!("file grew beyond the {max} bytes allowed"),
            ));
        }
        Ok(Some(n))
    }

    fn write(&self, rel: &str, data: &[u8]) -> Result<()> {
        let mut f = self.create(rel)?;
        f.write_all(data).map_err(|e| self.err(rel, e))?;
        self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        start_writeback(&f);
        Ok(())
    }

    fn write_from(&self, rel: &str, src: &mut dyn Read, _len: u64) -> Result<()> {
        let mut f = self.create(rel)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("local spool for an upload", e)),
            };
            f.write_all(&buf[..n]).map_err(|e| self.err(rel, e))?;
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        start_writeback(&f);
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        fs::rename(self.path(from), self.path(to)).map_err(|e| self.err(from, e))
    }

    fn hard_link(&self, from: &str, to: &str) -> Result<()> {
        fs::hard_link(self.path(from), self.path(to)).map_err(|e| self.err(to, e))
    }

    fn stat(&self, rel: &str) -> Result<Option<super::FileStat>> {
        use std::os::unix::fs::MetadataExt;
        match fs::metadata(self.path(rel)) {
            Ok(m) => Ok(Some(super::FileStat {
                size: m.len(),
                id: (m.dev(), m.ino()),
            })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    fn mkdir_all(&self, rel: &str) -> Result<()> {
        fs::create_dir_all(self.path(rel)).map_err(|e| self.err(rel, e))
    }

    fn remove_all(&self, rel: &str) -> Result<()> {
        let p = self.path(rel);
        let r = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
            Ok(_) => fs::remove_file(&p),
            Err(e) => Err(e),
        };
        match r {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(self.err(rel, e)),
            _ => Ok(()),
        }
    }

    fn list(&self, rel: &str) -> Result<Vec<String>> {
        let rd = match fs::read_dir(self.path(rel)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(rel, e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| self.err(rel, e))?;
            out.push(e.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }

    fn exists(&self, rel: &str) -> Result<bool> {
        match fs::symlink_metadata(self.path(rel)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    fn free_space(&self) -> Result<Option<u64>> {
        let st = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| self.err(".", std::io::Error::from(e)))?;
        Ok(Some(
            (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64),
        ))
    }

    fn sync(&self) -> Result<()> {
        let f = File::open(&self.root).map_err(|e| self.err(".", e))?;
        // syncfs flushes the whole filesystem once: far cheaper than an fsync per chunk file.
        nix::unistd::syncfs(f.as_raw_fd()).map_err(|e| self.err(".", std::io::Error::from(e)))
    }

    fn lock(&self, exclusive: bool) -> Result<bool> {
        let f = File::open(&self.root).map_err(|e| self.err(".", e))?;
        let arg = if exclusive {
            FlockArg::LockExclusiveNonblock
        } else {
            FlockArg::LockSharedNonblock
        };
        match Flock::lock(f, arg) {
            Ok(l) => {
                *self.lock.lock() = Some(l);
                Ok(true)
            }
            Err(_) => Err(Error::Busy {
                url: self.url.clone(),
            }),
        }
    }

    fn unlock(&self) {
        *self.lock.lock() = None;
    }

    fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}
