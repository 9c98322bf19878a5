//! Per-chunk digests of the raw data of a volume's newest session, as the send that made that
//! session read it from the source: a chunk whose raw digest still matches is identical to what
//! the archive holds and need not be compressed again to find out.
//!
//! Local state only (`<vid>/digests`), and only a speed-up: a map is used only for the exact
//! session (name, sequence, size, mfcs, chunk size) its header names, and a missing or damaged
//! one makes the next send compress every chunk to compare, which is just as correct.
//! Memory does not grow with the volume: the map is a file of `(chunk index, digest)` records
//! for data chunks only, sorted, written and read as streams in address order. Each record
//! carries a checksum keyed by the header ([`super::local::record_sum`]): a record that fails
//! ends the map there (a flipped chunk index could otherwise make a changed chunk look
//! unchanged).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::atomic_file::{AtomicFile, Durability};
use crate::error::{Error, Result};
use crate::format::Session;

const MAGIC: &[u8; 8] = b"WYNGDM03";
const FIELDS: usize = 24;
const REC: usize = FIELDS + 8;

pub type Digest = [u8; 16];

/// The digest of a raw chunk.
pub fn digest(raw: &[u8]) -> Digest {
    blake3::hash(raw).as_bytes()[..16]
        .try_into()
        .expect("16 bytes")
}

fn header(s: &Session, chunksize: u64) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(s.name.as_str().as_bytes());
    h.extend_from_slice(&s.info.sequence.to_le_bytes());
    h.extend_from_slice(&s.info.volsize.to_le_bytes());
    h.extend_from_slice(&chunksize.to_le_bytes());
    h.extend_from_slice(&s.info.mfcs.unwrap_or(0).to_le_bytes());
    h
}

fn path(vol_dir: &Path) -> PathBuf {
    vol_dir.join("digests")
}

/// Reads a map forward: [`DigestCursor::get`] takes ascending chunk indices.
pub(crate) struct DigestCursor {
    r: Option<BufReader<File>>,
    key: [u8; 32],
    head: Option<(u64, Digest)>,
}

impl DigestCursor {
    /// The map saved for exactly `last` (the volume's newest session), if there is one.
    pub fn open(vol_dir: Option<&Path>, last: Option<&Session>, chunksize: u64) -> DigestCursor {
        let none = DigestCursor {
            r: None,
            key: [0; 32],
            head: None,
        };
        let (Some(dir), Some(last)) = (vol_dir, last) else {
            return none;
        };
        let Ok(f) = File::open(path(dir)) else {
            return none;
        };
        let want = header(last, chunksize);
        let mut r = BufReader::with_capacity(1 << 16, f);
        let mut got = vec![0u8; want.len()];
        if r.read_exact(&mut got).is_err() || got != want {
            return none;
        }
        let mut c = DigestCursor {
            r: Some(r),
            key: super::local::record_key(&want),
            head: None,
        };
        c.advance();
        c
    }

    fn advance(&mut self) {
        let mut b = [0u8; REC];
        self.head = match self.r.as_mut().map(|r| r.read_exact(&mut b)) {
            Some(Ok(())) => {
                let idx = u64::from_le_bytes(b[..8].try_into().expect("8"));
                let sound = super::local::record_sum(&self.key, &b[..FIELDS])[..] == b[FIELDS..];
                // A map damaged or out of order: stop using it.
                if !sound || self.head.is_some_and(|(h, _)| idx <= h) {
                    self.r = None;
                    None
                } else {
                    Some((idx, b[8..FIELDS].try_into().expect("16")))
                }
            }
            _ => None,
        };
    }

    /// The digest recorded for chunk `idx` (queries must not go back).
    pub fn get(&mut self, idx: u64) -> Option<Digest> {
        while let Some((h, _)) = self.head {
            if h >= idx {
                break;
            }
            self.advance();
        }
        match self.head {
            Some((h, d)) if h == idx => Some(d),
            _ => None,
        }
    }
}

/// Writes a new map in ascending chunk order; [`DigestWriter::save`] puts it in place.
pub(crate) struct DigestWriter {
    w: BufWriter<File>,
    tmp: PathBuf,
    dir: PathBuf,
}

impl DigestWriter {
    pub fn new(vol_dir: &Path) -> Result<DigestWriter> {
        std::fs::create_dir_all(vol_dir).map_err(|e| Error::local_state(vol_dir, e))?;
        let tmp = vol_dir.join(format!("digests.{}.tmp", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::local_state(&tmp, e))?;
        Ok(DigestWriter {
            w: BufWriter::with_capacity(1 << 16, f),
            tmp,
            dir: vol_dir.to_path_buf(),
        })
    }

    pub fn push(&mut self, idx: u64, d: &Digest) -> Result<()> {
        if *d == [0; 16] {
            return Ok(());
        }
        self.w
            .write_all(&idx.to_le_bytes())
            .and_then(|_| self.w.write_all(d))
            .map_err(|e| Error::local_state(&self.tmp, e))
    }

    /// Puts the map in place for session `last`. The records were written before the header
    /// was known, so the file is assembled here: header, then the records.
    pub fn save(self, last: &Session, chunksize: u64) -> Result<()> {
        let err = |p: &Path, e| Error::local_state(p, e);
        let f = self
            .w
            .into_inner()
            .map_err(|e| err(&self.tmp, e.into_error()))?;
        let dst = path(&self.dir);
        let af = AtomicFile::create(&dst).map_err(|e| err(&dst, e))?;
        let mut out = BufWriter::new(af.file());
        out.write_all(&header(last, chunksize))
            .map_err(|e| err(&dst, e))?;
        let mut r = BufReader::new(f);
        std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(0)).map_err(|e| err(&self.tmp, e))?;
        // The checksums are keyed by the header, known only now.
        let key = super::local::record_key(&header(last, chunksize));
        let mut rec = [0u8; FIELDS];
        loop {
            match r.read_exact(&mut rec) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(err(&self.tmp, e)),
            }
            out.write_all(&rec)
                .and_then(|()| out.write_all(&super::local::record_sum(&key, &rec)))
                .map_err(|e| err(&dst, e))?;
        }
        out.flush().map_err(|e| err(&dst, e))?;
        drop(out);
        let _ = std::fs::remove_file(&self.tmp);
        // A cache (rebuilt by a full scan if lost): not synced.
        af.commit(Durability::None).map_err(|e| err(&dst, e))
    }

    /// Drops the unfinished map.
    pub(crate) fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{SessionInfo, SessionName};

    #[test]
    fn saved_for_exactly_one_session() {
        let dir = tempfile::tempdir().unwrap();
        let s = Session {
            name: SessionName::parse("S_20261123-153256").unwrap(),
            info: SessionInfo {
                localtime: 1,
                previous: None,
                permissions: String::new(),
                manifest_hash: None,
                volsize: 1 << 30,
                sequence: 3,
                mfcs: Some(7),
                tags: vec![],
            },
        };
        let mut w = DigestWriter::new(dir.path()).unwrap();
        for i in [1u64, 5, 9, 1000] {
            w.push(i, &[i as u8; 16]).unwrap();
        }
        w.push(1001, &[0; 16]).unwrap();
        w.save(&s, 65536).unwrap();
        let mut c = DigestCursor::open(Some(dir.path()), Some(&s), 65536);
        assert_eq!(c.get(0), None);
        assert_eq!(c.get(5), Some([5; 16]));
        assert_eq!(c.get(6), None);
        assert_eq!(c.get(1000), Some([232; 16]));
        assert_eq!(c.get(1001), None);
        let mut other = s.clone();
        other.info.sequence = 4;
        assert_eq!(
            DigestCursor::open(Some(dir.path()), Some(&other), 65536).get(5),
            None
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A flipped chunk index is caught: the map ends there.
        let p = path(dir.path());
        let mut b = std::fs::read(&p).unwrap();
        let first = header(&s, 65536).len();
        b[first + REC] ^= 0x04; // chunk 5 would read as chunk 1
        std::fs::write(&p, &b).unwrap();
        let mut c = DigestCursor::open(Some(dir.path()), Some(&s), 65536);
        assert_eq!(c.get(1), Some([1; 16]));
        assert_eq!(c.get(5), None);
        assert_eq!(c.get(1000), None);
    }
}
