//! Resuming an interrupted send: chunks a send staged and the destination holds durably are
//! not sent again by the next send of that volume from this host.
//!
//! Invariants:
//! * The record (`<local state>/<vid>/resume`, on this host) lists chunks of the session being
//!   staged as (address, hash) pairs in address order. Pairs are appended only after a
//!   [`sync`](crate::dest::Dest::sync) of the destination returned, so the record never names
//!   a chunk the destination may not hold. Losing the record's tail (a crash of this host) only
//!   costs sending those chunks again.
//! * The record names its staging directory and a random id, which a marker file in that
//!   directory ([`MARKER`]) holds: a staging directory that another run left (another host, a
//!   later send that was interrupted too) is never mistaken for this one.
//! * Recovery keeps a staging directory (and, for a volume's first send, the volume directory
//!   no root refers to yet) that a record with a matching marker names; everything else goes
//!   as before. Nothing references a kept directory, so the archive stays valid, and the
//!   original Wyng removes it as any leftover.
//! * A resumed send sets the old staging aside ([`super::layout::ASIDE`], or on object storage
//!   the old session-named directory where it already is) and stages afresh. A chunk is taken
//!   from the aside only when the resumed send has read, from the source, data whose hash is
//!   the recorded one; the rest goes with the aside at commit. Taken chunks keep the bytes (and,
//!   encrypted, the nonce) they were written with: nothing is sealed twice, so no counter is
//!   reused.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::format::{Hash32, VolumeId};

/// The marker file in a staging directory that a record may resume.
pub const MARKER: &str = "wyng-resume";

const MAGIC: &str = "wyng-resume 1";
const ENTRY: usize = 8 + 32;

/// The record of the session being staged for a volume.
pub fn record_path(local_vol: &Path) -> PathBuf {
    local_vol.join("resume")
}

/// A resumed send's copy of the interrupted record, read while the new one is written.
pub fn taken_path(local_vol: &Path) -> PathBuf {
    local_vol.join("resume.old")
}

/// What a record says about its staging directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub id: String,
    /// The staging directory, relative to the archive (`Vol_x/S-tmp`, or `Vol_x/S_<name>` on
    /// object storage).
    pub staging: String,
    /// The volume's name (a first send's volume is in no root yet).
    pub volume: String,
}

impl Header {
    fn line(&self) -> String {
        format!("{MAGIC} {} {} {}\n", self.id, self.staging, self.volume)
    }

    pub fn marker(&self) -> String {
        format!("{}/{MARKER}", self.staging)
    }

    /// Whether the staging directory is `dir` of volume `vid`.
    pub fn names(&self, vid: &VolumeId, dir: &str) -> bool {
        self.staging == format!("{vid}/{dir}")
    }
}

/// The header of the record at `path`, if it is one.
pub fn read_header(path: &Path) -> Option<Header> {
    let f = File::open(path).ok()?;
    let mut line = String::new();
    BufReader::new(f.take(4096)).read_line(&mut line).ok()?;
    let rest = line
        .strip_suffix('\n')?
        .strip_prefix(MAGIC)?
        .strip_prefix(' ')?;
    let mut it = rest.splitn(3, ' ');
    let (id, staging, volume) = (it.next()?, it.next()?, it.next()?);
    let ok = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| Header {
        id: id.into(),
        staging: staging.into(),
        volume: volume.into(),
    })
}

/// A fresh random id for a record and its marker.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the system's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The record being appended to while a session is staged.
pub struct RecordWriter {
    path: PathBuf,
    file: Option<File>,
}

impl RecordWriter {
    pub fn create(path: &Path, h: &Header) -> std::io::Result<RecordWriter> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let mut file = File::create(path)?;
        file.write_all(h.line().as_bytes())?;
        Ok(RecordWriter {
            path: path.to_path_buf(),
            file: Some(file),
        })
    }

    /// Appends pairs the destination now holds durably. Best effort: a record that cannot be
    /// written only makes the next run send those chunks again.
    pub fn append(&mut self, entries: &[(u64, Hash32)]) {
        let Some(f) = &mut self.file else { return };
        let mut buf = Vec::with_capacity(entries.len() * ENTRY);
        for (idx, h) in entries {
            buf.extend_from_slice(&idx.to_le_bytes());
            buf.extend_from_slice(&h.0);
        }
        if let Err(e) = f.write_all(&buf) {
            tracing::warn!(
                "{}: cannot record staged chunks ({e}); an interrupted send will not resume",
                self.path.display()
            );
            self.file = None;
            let _ = std::fs::remove_file(&self.path);
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pairs of an interrupted send's record, looked up in increasing address order.
pub struct ReuseCursor {
    r: BufReader<File>,
    next: Option<(u64, Hash32)>,
    /// Pairs in the record (read so far).
    pub seen: u64,
}

impl ReuseCursor {
    pub fn open(path: &Path) -> Option<ReuseCursor> {
        let mut r = BufReader::new(File::open(path).ok()?);
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).ok()?;
        let mut c = ReuseCursor {
            r,
            next: None,
            seen: 0,
        };
        c.advance();
        Some(c)
    }

    fn advance(&mut self) {
        let mut b = [0u8; ENTRY];
        self.next = match self.r.read_exact(&mut b) {
            Ok(()) => {
                self.seen += 1;
                let idx = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                let hash: [u8; 32] = b[8..].try_into().expect("32 bytes");
                Some((idx, Hash32(hash)))
            }
            // A torn tail (this host crashed while appending) ends the record.
            Err(_) => None,
        };
    }

    /// Whether the record holds no pair at all (nothing to take).
    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }

    /// The recorded hash of chunk `idx`; addresses must be asked in increasing order.
    pub fn get(&mut self, idx: u64) -> Option<Hash32> {
        while let Some((i, h)) = self.next {
            if i > idx {
                return None;
            }
            self.advance();
            if i == idx {
                return Some(h);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_torn_tails_end_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = record_path(dir.path());
        let h = Header {
            id: new_id(),
            staging: "Vol_1a2b3c/S-tmp".into(),
            volume: "my disk.img".into(),
        };
        let mut w = RecordWriter::create(&p, &h).unwrap();
        let hash = |b: u8| Hash32([b; 32]);
        w.append(&[(1, hash(1)), (4, hash(4))]);
        w.append(&[(9, hash(9))]);
        drop(w);
        assert_eq!(read_header(&p), Some(h));
        let mut c = ReuseCursor::open(&p).unwrap();
        assert_eq!(c.get(0), None);
        assert_eq!(c.get(1), Some(hash(1)));
        assert_eq!(c.get(3), None);
        assert_eq!(c.get(4), Some(hash(4)));
        assert_eq!(c.get(9), Some(hash(9)));
        assert_eq!(c.get(10), None);
        // A torn last pair is not a pair.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[7u8; 20]).unwrap();
        let mut c = ReuseCursor::open(&p).unwrap();
        assert_eq!(c.get(100), None);
        assert_eq!(c.seen, 3);
        // Not a record.
        std::fs::write(&p, "something else\n").unwrap();
        assert_eq!(read_header(&p), None);
    }
}
