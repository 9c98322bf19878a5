//! A temporary byte buffer that lives in memory while small and moves to an unlinked file when
//! it grows: how large objects (a multi-terabyte volume's manifest, a merge list) are staged
//! without holding them in RAM.
//!
//! Invariants: memory use is at most [`Spool::MEMORY`] bytes whatever is written; the file has
//! no name from the moment it is created, so nothing is left behind, even after a crash.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub struct Spool {
    dir: PathBuf,
    mem: Vec<u8>,
    file: Option<File>,
    len: u64,
}

/// A new file that no directory lists (`O_TMPFILE` where the filesystem has it, else created
/// and unlinked at once: the `tempfile` crate's `tempfile_in`).
pub(crate) fn unlinked_file(dir: &Path) -> io::Result<File> {
    std::fs::create_dir_all(dir)?;
    tempfile::tempfile_in(dir)
}

impl Spool {
    /// Bytes kept in memory before moving to a file.
    pub(crate) const MEMORY: usize = 8 << 20;

    /// An empty spool whose file, if it needs one, goes in `dir`.
    pub fn new(dir: &Path) -> Spool {
        Spool {
            dir: dir.to_path_buf(),
            mem: Vec::new(),
            file: None,
            len: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole content, if it is still in memory.
    pub fn as_slice(&self) -> Option<&[u8]> {
        self.file.is_none().then_some(&self.mem[..])
    }

    /// A reader from the start (the spool is not changed).
    pub fn reader(&self) -> io::Result<Box<dyn BufRead + Send + '_>> {
        match &self.file {
            None => Ok(Box::new(&self.mem[..])),
            Some(f) => {
                let mut f = f.try_clone()?;
                f.seek(SeekFrom::Start(0))?;
                Ok(Box::new(BufReader::with_capacity(
                    1 << 16,
                    f.take(self.len),
                )))
            }
        }
    }

    /// A reader from the start that owns the content.
    pub(crate) fn into_reader(self) -> io::Result<Box<dyn BufRead + Send>> {
        match self.file {
            None => Ok(Box::new(io::Cursor::new(self.mem))),
            Some(mut f) => {
                f.seek(SeekFrom::Start(0))?;
                Ok(Box::new(BufReader::with_capacity(
                    1 << 16,
                    f.take(self.len),
                )))
            }
        }
    }

    /// The whole content in memory (for objects known to be small).
    pub fn into_vec(self) -> io::Result<Vec<u8>> {
        match self.file {
            None => Ok(self.mem),
            Some(_) => {
                let mut v = Vec::with_capacity(self.len as usize);
                self.into_reader()?.read_to_end(&mut v)?;
                Ok(v)
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Overwrites bytes at `offset` (within what was written).
    pub(crate) fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        assert!(
            offset + data.len() as u64 <= self.len,
            "write_at past the end"
        );
        match &mut self.file {
            None => {
                self.mem[offset as usize..offset as usize + data.len()].copy_from_slice(data);
                Ok(())
            }
            Some(f) => {
                use std::os::unix::fs::FileExt;
                f.write_all_at(data, offset)
            }
        }
    }
}

impl Write for Spool {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.file.is_none() && self.mem.len() + b.len() > Self::MEMORY {
            let mut f = unlinked_file(&self.dir)?;
            f.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some(f);
        }
        match &mut self.file {
            None => self.mem.extend_from_slice(b),
            Some(f) => f.write_all(b)?,
        }
        self.len += b.len() as u64;
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_to_an_unlinked_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(dir.path());
        let block: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        for _ in 0..10 {
            s.write_all(&block).unwrap();
        }
        assert!(s.as_slice().is_none());
        assert_eq!(s.len(), 10 << 20);
        s.write_at(5, b"hello").unwrap();
        let mut back = Vec::new();
        s.reader().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 10 << 20);
        assert_eq!(&back[5..10], b"hello");
        assert_eq!(back[(1 << 20) + 3], block[3]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut small = Spool::new(dir.path());
        small.write_all(b"abc").unwrap();
        assert_eq!(small.as_slice(), Some(&b"abc"[..]));
    }
}
