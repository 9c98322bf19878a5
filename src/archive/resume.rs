//! Resuming an interrupted send: chunks a send staged and the destination holds durably are
//! not sent again by the next send of that volume from this host.
//!
//! Invariants:
//! * The record (`<local state>/<vid>/resume`, on this host) lists chunks of the session being
//!   staged in address order: address, hash, raw-data digest and stored size ([`Staged`]). Pairs are appended only after a
//!   [`sync`](crate::dest::Dest::sync) of the destination returned, so the record never names
//!   a chunk the destination may not hold. Losing the record's tail (a crash of this host) only
//!   costs sending those chunks again.
//! * The record checks itself: its header line ends with a checksum and every entry carries
//!   one keyed by the header ([`super::local::record_sum`]). A damaged header is no record; a
//!   damaged entry ends the record there (what follows is sent again, never taken on trust).
//!   A taken chunk is also compressed and hashed again and taken only if that hash is the one
//!   the record names, which the new manifest will name: the record cannot put a hash in a
//!   manifest that the data does not have.
//! * The record names its staging directory and a random id, which a marker file in that
//!   directory ([`MARKER`]) holds: a staging directory that another run left (another host, a
//!   later send that was interrupted too) is never mistaken for this one.
//! * Recovery keeps a staging directory (and, for a volume's first send, the volume directory
//!   no root refers to yet) that a record with a matching marker names; everything else goes
//!   as before. Nothing references a kept directory, so the archive stays valid, and the
//!   original Wyng removes it as any leftover.
//! * A resumed send sets the old staging aside ([`super::layout::ASIDE`], or on object storage
//!   the old session-named directory where it already is) and stages afresh. A chunk is taken
//!   from the aside only when the resumed send has read, from the source, data whose digest is
//!   the recorded one (the same test that lets a send skip compressing a chunk the previous
//!   session holds); the rest goes with the aside at commit. Taken chunks keep the bytes (and,
//!   encrypted, the nonce) they were written with: nothing is sealed twice, so no counter is
//!   reused.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use super::digests::Digest;
use crate::format::{Hash32, VolumeId};

/// The marker file in a staging directory that a record may resume.
pub(crate) const MARKER: &str = "wyng-resume";

const MAGIC: &str = "wyng-resume 2";
const FIELDS: usize = 8 + 32 + 16 + 4;
const ENTRY: usize = FIELDS + 8;

/// One chunk a session staged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staged {
    pub idx: u64,
    /// The chunk's hash as the manifest records it.
    pub hash: Hash32,
    /// The digest of its raw data.
    pub digest: Digest,
    /// The compressed size (what taking it saves sending).
    pub len: u32,
}

/// The record of the session being staged for a volume.
pub(crate) fn record_path(local_vol: &Path) -> PathBuf {
    local_vol.join("resume")
}

/// A resumed send's copy of the interrupted record, read while the new one is written.
pub(crate) fn taken_path(local_vol: &Path) -> PathBuf {
    local_vol.join("resume.old")
}

/// What a record says about its staging directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub id: String,
    /// The staging directory, relative to the archive (`Vol_x/S-tmp`, or `Vol_x/S_<name>` on
    /// object storage).
    pub staging: String,
    /// The volume's name (a first send's volume is in no root yet).
    pub volume: String,
}

impl Header {
    fn body(&self) -> String {
        format!("{MAGIC} {} {} {}", self.id, self.staging, self.volume)
    }

    fn line(&self) -> String {
        let body = self.body();
        format!("{body} {}\n", hex8(&sum(&body)))
    }

    /// The key of this record's entry checksums.
    fn key(&self) -> [u8; 32] {
        super::local::record_key(self.body().as_bytes())
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
pub(crate) fn read_header(path: &Path) -> Option<Header> {
    let f = File::open(path).ok()?;
    let mut line = String::new();
    BufReader::new(f.take(4096)).read_line(&mut line).ok()?;
    let (body, check) = line.strip_suffix('\n')?.rsplit_once(' ')?;
    if check != hex8(&sum(body)) {
        tracing::warn!(
            "{}: the resume record is damaged; the interrupted send's chunks are sent again",
            path.display()
        );
        return None;
    }
    let rest = body.strip_prefix(MAGIC)?.strip_prefix(' ')?;
    let mut it = rest.splitn(3, ' ');
    let (id, staging, volume) = (it.next()?, it.next()?, it.next()?);
    let ok = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| Header {
        id: id.into(),
        staging: staging.into(),
        volume: volume.into(),
    })
}

fn sum(line: &str) -> [u8; 8] {
    super::local::record_sum(&[0u8; 32], line.as_bytes())
}

fn hex8(b: &[u8; 8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fresh random id for a record and its marker.
pub(crate) fn new_id() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the system's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The record being appended to while a session is staged.
pub(crate) struct RecordWriter {
    path: PathBuf,
    file: Option<File>,
    key: [u8; 32],
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
            key: h.key(),
        })
    }

    /// Appends pairs the destination now holds durably. Best effort: a record that cannot be
    /// written only makes the next run send those chunks again.
    pub fn append(&mut self, entries: &[Staged]) {
        let Some(f) = &mut self.file else { return };
        let mut buf = Vec::with_capacity(entries.len() * ENTRY);
        for e in entries {
            let at = buf.len();
            buf.extend_from_slice(&e.idx.to_le_bytes());
            buf.extend_from_slice(&e.hash.0);
            buf.extend_from_slice(&e.digest);
            buf.extend_from_slice(&e.len.to_le_bytes());
            let check = super::local::record_sum(&self.key, &buf[at..]);
            buf.extend_from_slice(&check);
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
pub(crate) struct ReuseCursor {
    r: BufReader<File>,
    key: [u8; 32],
    next: Option<Staged>,
    /// Pairs in the record (read so far).
    pub seen: u64,
}

impl ReuseCursor {
    pub fn open(path: &Path) -> Option<ReuseCursor> {
        let key = read_header(path)?.key();
        let mut r = BufReader::new(File::open(path).ok()?);
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).ok()?;
        let mut c = ReuseCursor {
            r,
            key,
            next: None,
            seen: 0,
        };
        c.advance();
        Some(c)
    }

    fn advance(&mut self) {
        let mut b = [0u8; ENTRY];
        self.next = match self.r.read_exact(&mut b) {
            Ok(()) if super::local::record_sum(&self.key, &b[..FIELDS])[..] != b[FIELDS..] => {
                tracing::warn!(
                    "the resume record is damaged after {} entries; the rest is sent again",
                    self.seen
                );
                None
            }
            Ok(()) => {
                self.seen += 1;
                Some(Staged {
                    idx: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
                    hash: Hash32(b[8..40].try_into().expect("32 bytes")),
                    digest: b[40..56].try_into().expect("16 bytes"),
                    len: u32::from_le_bytes(b[56..FIELDS].try_into().expect("4 bytes")),
                })
            }
            // A torn tail (this host crashed while appending) ends the record.
            Err(_) => None,
        };
    }

    fn next_entry(&mut self) -> Option<Staged> {
        let e = self.next?;
        self.advance();
        Some(e)
    }

    /// What the record says of chunk `idx`; addresses must be asked in increasing order.
    pub fn get(&mut self, idx: u64) -> Option<Staged> {
        while let Some(e) = self.next {
            if e.idx > idx {
                return None;
            }
            self.advance();
            if e.idx == idx {
                return Some(e);
            }
        }
        None
    }
}

/// Copies the record at `rec` to `out`, keeping only chunks whose file is in staging
/// directory `dir` (`list` names a chunk subdirectory's files, sorted): what a resume may
/// take is what is there. Returns how many were kept.
pub(crate) fn keep_present(
    rec: &Path,
    out: &Path,
    chunksize: u64,
    dir: &str,
    mut list: impl FnMut(&str) -> crate::error::Result<Vec<String>>,
) -> crate::error::Result<u64> {
    let (Some(h), Some(mut c)) = (read_header(rec), ReuseCursor::open(rec)) else {
        return Ok(0);
    };
    let mut w =
        RecordWriter::create(out, &h).map_err(|e| crate::error::Error::local_state(out, e))?;
    let (mut sub, mut names) = (String::new(), Vec::new());
    let (mut kept, mut batch) = (0, Vec::new());
    while let Some(e) = c.next_entry() {
        let addr = e.idx * chunksize;
        let s = super::layout::chunk_subdir(addr);
        if s != sub {
            names = list(&format!("{dir}/{s}"))?;
            sub = s;
        }
        if names
            .binary_search(&super::layout::chunk_file(addr))
            .is_ok()
        {
            batch.push(e);
            kept += 1;
            if batch.len() >= 4096 {
                w.append(&batch);
                batch.clear();
            }
        }
    }
    w.append(&batch);
    Ok(kept)
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
        let e = |i: u64| Staged {
            idx: i,
            hash: Hash32([i as u8; 32]),
            digest: [i as u8 + 1; 16],
            len: i as u32 * 1000,
        };
        w.append(&[e(1), e(4)]);
        w.append(&[e(9)]);
        drop(w);
        assert_eq!(read_header(&p), Some(h));
        let mut c = ReuseCursor::open(&p).unwrap();
        assert_eq!(c.get(0), None);
        assert_eq!(c.get(1), Some(e(1)));
        assert_eq!(c.get(3), None);
        assert_eq!(c.get(4), Some(e(4)));
        assert_eq!(c.get(9), Some(e(9)));
        assert_eq!(c.get(10), None);
        // A torn last pair is not a pair.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[7u8; 20]).unwrap();
        let mut c = ReuseCursor::open(&p).unwrap();
        assert_eq!(c.get(100), None);
        assert_eq!(c.seen, 3);
        // Only what the staging holds is kept for taking.
        let out = dir.path().join("kept");
        let cs = 1 << 27; // chunks 1 and 4 in subdirectory 0, chunk 9 in 4
        let kept = keep_present(&p, &out, cs, "Vol_1a2b3c/S-resume", |d| {
            Ok(match d {
                // Sorted, as `Dest::list` answers.
                "Vol_1a2b3c/S-resume/000000000" => vec![
                    "x0000000000000005".into(),
                    super::super::layout::chunk_file(cs),
                ],
                _ => Vec::new(),
            })
        })
        .unwrap();
        assert_eq!(kept, 1);
        let mut c = ReuseCursor::open(&out).unwrap();
        assert_eq!(c.get(1), Some(e(1)));
        assert_eq!(c.get(9), None);
        // Not a record.
        std::fs::write(&p, "something else\n").unwrap();
        assert_eq!(read_header(&p), None);
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let p = record_path(dir.path());
        let h = Header {
            id: new_id(),
            staging: "Vol_1a2b3c/S-tmp".into(),
            volume: "vm.img".into(),
        };
        let e = |i: u64| Staged {
            idx: i,
            hash: Hash32([i as u8 + 7; 32]),
            digest: [i as u8 + 1; 16],
            len: i as u32 * 1000,
        };
        let mut w = RecordWriter::create(&p, &h).unwrap();
        w.append(&[e(1), e(2), e(3)]);
        drop(w);
        let good = std::fs::read(&p).unwrap();
        let head = good.iter().position(|&b| b == b'\n').unwrap() + 1;
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&p, &bad).unwrap();
            let entries: Vec<Staged> = match ReuseCursor::open(&p) {
                None => Vec::new(),
                Some(mut c) => (0..10).filter_map(|i| c.get(i)).collect(),
            };
            // Whatever is still read is exactly what was written, and the damaged entry and
            // everything after it are gone.
            for x in &entries {
                assert_eq!(*x, e(x.idx), "bit {bit}");
            }
            if bit / 8 >= head {
                let damaged = (bit / 8 - head) / ENTRY;
                assert_eq!(entries.len(), damaged, "bit {bit}");
            } else {
                assert!(entries.is_empty(), "bit {bit} in the header");
            }
        }
    }
}
