//! An overlay's map on disk: a checksummed header naming the session it belongs to, then
//! batches of records appended at each flush, each batch checksummed as a whole.
//!
//! ```text
//! header  160 bytes: "WYNGOVL1", version, block size, volume size, archive UUID, volume id,
//!                    session, BLAKE3 (16 bytes) of the rest
//! batch   magic "WYOB", record count, records (32 bytes each), BLAKE3 of count and records
//! record  block u64, kind (1: data, 2: one zero block, 4: a zero run), slot, 6 zero bytes,
//!         then the data's BLAKE3 (16 bytes) or, for a run, its length in blocks (u64)
//! ```
//! Replaying the batches in order gives the durable state. Nothing is sized by a count before
//! its bytes are read; a batch that does not hold together where a crash can leave one (at the
//! end, with no room for another after it) is dropped, anywhere else it is damage.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{hash, local, sync_dir, Runs, BLOCK};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"WYNGOVL1";
const VERSION: u32 = 1;
pub(crate) const HEADER: usize = 160;
const BATCH_MAGIC: u32 = 0x5759_4f42;
const RECORD: usize = 32;
/// Records per batch at most.
pub(super) const MAX_BATCH: usize = 1 << 16;
const BATCH_MAX_BYTES: u64 = (8 + MAX_BATCH * RECORD + 16) as u64;

/// One change to the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Record {
    /// Block `block` is the data in data file `slot`, of this checksum.
    Data {
        block: u64,
        slot: u8,
        hash: [u8; 16],
    },
    /// Blocks `start..start + count` read as zeros.
    Zeros { start: u64, count: u64 },
}

/// The session an overlay belongs to, as its header names it.
pub(super) struct Identity<'a> {
    pub(super) uuid: &'a str,
    pub(super) vid: &'a str,
    pub(super) session: &'a str,
    pub(super) size: u64,
}

fn put(b: &mut [u8], s: &str) -> Result<()> {
    if s.len() > b.len() {
        return Err(Error::Usage(format!(
            "'{s}' is too long for an overlay header"
        )));
    }
    b[..s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

fn get(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

impl Identity<'_> {
    pub(super) fn header(&self) -> Result<[u8; HEADER]> {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_be_bytes());
        h[12..16].copy_from_slice(&(BLOCK as u32).to_be_bytes());
        h[16..24].copy_from_slice(&self.size.to_be_bytes());
        put(&mut h[24..88], self.uuid)?;
        put(&mut h[88..120], self.vid)?;
        put(&mut h[120..144], self.session)?;
        let sum = hash(&h[..144]);
        h[144..].copy_from_slice(&sum);
        Ok(h)
    }

    /// Why a header is not this overlay's, if it is not.
    pub(super) fn check(&self, h: &[u8]) -> std::result::Result<(), String> {
        if h.len() < HEADER || &h[..8] != MAGIC {
            return Err("is not a wyng overlay map".into());
        }
        if hash(&h[..144]) != h[144..HEADER] {
            return Err("has a damaged header".into());
        }
        if h[8..12] != VERSION.to_be_bytes() || h[12..16] != (BLOCK as u32).to_be_bytes() {
            return Err("was written by another version of wyng".into());
        }
        if get(&h[24..88]) != self.uuid.as_bytes()
            || get(&h[88..120]) != self.vid.as_bytes()
            || get(&h[120..144]) != self.session.as_bytes()
        {
            return Err(format!(
                "belongs to another archive or session ({} {})",
                String::from_utf8_lossy(get(&h[88..120])),
                String::from_utf8_lossy(get(&h[120..144]))
            ));
        }
        if h[16..24] != self.size.to_be_bytes() {
            return Err("was made for a session of another size".into());
        }
        Ok(())
    }
}

fn encode(r: Record) -> [u8; RECORD] {
    let mut b = [0u8; RECORD];
    match r {
        Record::Data { block, slot, hash } => {
            b[..8].copy_from_slice(&block.to_be_bytes());
            b[8] = 1;
            b[9] = slot;
            b[16..].copy_from_slice(&hash);
        }
        Record::Zeros { start, count } => {
            b[..8].copy_from_slice(&start.to_be_bytes());
            b[8] = 4;
            b[16..24].copy_from_slice(&count.to_be_bytes());
        }
    }
    b
}

/// A record, if it is one of a volume of `blocks` blocks.
fn decode(r: &[u8], blocks: u64) -> Option<Record> {
    let block = u64::from_be_bytes(r[..8].try_into().expect("8 bytes"));
    if block >= blocks || r[10..16].iter().any(|&x| x != 0) {
        return None;
    }
    match (r[8], r[9]) {
        (1, slot @ (0 | 1)) => Some(Record::Data {
            block,
            slot,
            hash: r[16..RECORD].try_into().expect("16 bytes"),
        }),
        (2, 0) if r[16..].iter().all(|&x| x == 0) => Some(Record::Zeros {
            start: block,
            count: 1,
        }),
        (4, 0) if r[24..].iter().all(|&x| x == 0) => {
            let count = u64::from_be_bytes(r[16..24].try_into().expect("8 bytes"));
            (count >= 1 && count <= blocks - block).then_some(Record::Zeros {
                start: block,
                count,
            })
        }
        _ => None,
    }
}

/// One batch: magic, count, records, checksum.
pub(super) fn batch(records: &[Record]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + records.len() * RECORD + 16);
    b.extend_from_slice(&BATCH_MAGIC.to_be_bytes());
    b.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for r in records {
        b.extend_from_slice(&encode(*r));
    }
    let sum = hash(&b[4..]);
    b.extend_from_slice(&sum);
    b
}

/// One batch as found in a map.
enum Found {
    Records(Vec<Record>, u64),
    /// Not a whole batch: `true` if it may be the append a crash cut off, `false` if it is
    /// damage.
    Broken(&'static str, bool),
}

fn read_batch(f: &File, pos: u64, len: u64, blocks: u64, path: &Path) -> Result<Found> {
    let rest = len - pos;
    // What a crash can leave at the end: a batch cut short, or one whose bytes did not all
    // reach the disk. Never room for another batch after it.
    let may_be_cut = rest <= BATCH_MAX_BYTES;
    if rest < 8 {
        return Ok(Found::Broken("a short batch", may_be_cut));
    }
    let mut head = [0u8; 8];
    f.read_exact_at(&mut head, pos)
        .map_err(|e| local(path, e))?;
    let count = u32::from_be_bytes(head[4..].try_into().expect("4 bytes")) as u64;
    let body = 8 + count * RECORD as u64 + 16;
    if u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) != BATCH_MAGIC
        || count as usize > MAX_BATCH
        || body > rest
    {
        return Ok(Found::Broken("not a batch", may_be_cut));
    }
    let mut b = vec![0u8; body as usize];
    f.read_exact_at(&mut b, pos).map_err(|e| local(path, e))?;
    let n = b.len();
    if hash(&b[4..n - 16]) != b[n - 16..] {
        return Ok(Found::Broken("a batch fails its checksum", body == rest));
    }
    let mut out = Vec::with_capacity(count as usize);
    for r in b[8..n - 16].chunks_exact(RECORD) {
        match decode(r, blocks) {
            Some(x) => out.push(x),
            None => return Ok(Found::Broken("a record is not valid", false)),
        }
    }
    Ok(Found::Records(out, body))
}

/// The durable state a map records: data blocks (slot and checksum) and zero runs.
#[derive(Default)]
pub(super) struct Durable {
    pub(super) data: BTreeMap<u64, (u8, [u8; 16])>,
    pub(super) zeros: Runs,
}

impl Durable {
    fn apply(&mut self, r: Record) {
        match r {
            Record::Data { block, slot, hash } => {
                self.data.insert(block, (slot, hash));
            }
            Record::Zeros { start, count } => {
                let end = start + count;
                let inside: Vec<u64> = self.data.range(start..end).map(|(b, _)| *b).collect();
                for b in inside {
                    self.data.remove(&b);
                }
                self.zeros.add(start, end);
            }
        }
    }
}

/// Replays the batches after the header; returns the state and where the sound part ends.
fn replay(f: &File, len: u64, blocks: u64, path: &Path) -> Result<(Durable, u64)> {
    let mut out = Durable::default();
    let mut pos = HEADER as u64;
    while pos < len {
        match read_batch(f, pos, len, blocks, path)? {
            Found::Records(records, body) => {
                records.into_iter().for_each(|r| out.apply(r));
                pos += body;
            }
            Found::Broken(_, true) => return Ok((out, pos)),
            Found::Broken(what, false) => {
                return Err(Error::local(
                    path,
                    format!(
                        "the overlay map is damaged at byte {pos} ({what}); the writes it records cannot be trusted: move the overlay's files away to start again from the session"
                    ),
                ))
            }
        }
    }
    Ok((out, pos))
}

/// The durable state of the map `map` (`len` bytes): a new map gets its header; an existing
/// one is checked against `id` and replayed (a flush a crash cut off at its end is dropped).
pub(super) fn load(
    map: &mut File,
    len: u64,
    id: &Identity,
    blocks: u64,
    path: &Path,
) -> Result<Durable> {
    if len == 0 {
        map.write_all(&id.header()?).map_err(|e| local(path, e))?;
        map.sync_all().map_err(|e| local(path, e))?;
        if let Some(d) = path.parent() {
            sync_dir(d)?;
        }
        return Ok(Durable::default());
    }
    let mut h = vec![0u8; HEADER.min(len as usize)];
    map.read_exact(&mut h).map_err(|e| local(path, e))?;
    id.check(&h).map_err(|why| {
        Error::local(
            path,
            format!("{why}: it cannot be used as this session's overlay"),
        )
    })?;
    let (state, end) = replay(map, len, blocks, path)?;
    if end < len {
        tracing::warn!(
            "{}: dropped an unfinished flush at its end (the server stopped during it): the last writes before that are lost, as on a disk that lost power",
            path.display()
        );
        map.set_len(end).map_err(|e| local(path, e))?;
        map.sync_all().map_err(|e| local(path, e))?;
    }
    Ok(state)
}

/// Appends `records` in batches and syncs; returns the bytes appended.
pub(super) fn append(f: &File, at: u64, records: &[Record], path: &Path) -> Result<u64> {
    let mut pos = at;
    for part in records.chunks(MAX_BATCH) {
        let b = batch(part);
        f.write_all_at(&b, pos).map_err(|e| local(path, e))?;
        pos += b.len() as u64;
    }
    f.sync_data().map_err(|e| local(path, e))?;
    Ok(pos - at)
}

/// Bytes a map of `records` takes.
pub(super) fn size_of(records: usize) -> u64 {
    (HEADER + records * RECORD) as u64 + 24 * records.div_ceil(MAX_BATCH) as u64
}

/// Writes a new map of `records` at `tmp` (with the header of `old`), synced, and renames it
/// over `path`: either file is a sound map. Returns the new file and its length.
pub(super) fn rewrite(old: &File, records: &[Record], path: &Path) -> Result<(File, u64)> {
    let tmp = std::path::PathBuf::from(format!("{}.tmp", path.display()));
    let mut header = vec![0u8; HEADER];
    old.read_exact_at(&mut header, 0)
        .map_err(|e| local(path, e))?;
    let mut f = File::create(&tmp).map_err(|e| local(&tmp, e))?;
    f.write_all(&header).map_err(|e| local(&tmp, e))?;
    let len = HEADER as u64 + append(&f, HEADER as u64, records, &tmp)?;
    f.sync_all().map_err(|e| local(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| local(path, e))?;
    if let Some(d) = path.parent() {
        sync_dir(d)?;
    }
    // Reopened for reading and writing (created write-only).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| local(path, e))?;
    Ok((f, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_batches_round_trip() {
        let d = Record::Data {
            block: 42,
            slot: 1,
            hash: [7; 16],
        };
        let z = Record::Zeros {
            start: 10,
            count: 90,
        };
        for r in [d, z] {
            assert_eq!(decode(&encode(r), 100), Some(r));
        }
        // Beyond the volume, a run past its end, a slot that does not exist: not records.
        assert_eq!(
            decode(
                &encode(Record::Zeros {
                    start: 100,
                    count: 1
                }),
                100
            ),
            None
        );
        assert_eq!(
            decode(
                &encode(Record::Zeros {
                    start: 10,
                    count: 91
                }),
                100
            ),
            None
        );
        assert_eq!(
            decode(
                &encode(Record::Zeros {
                    start: 10,
                    count: 0
                }),
                100
            ),
            None
        );
        let mut bad = encode(d);
        bad[9] = 2;
        assert_eq!(decode(&bad, 100), None);
        assert_eq!(batch(&[d, z]).len(), 8 + 2 * RECORD + 16);
        // Replayed in order: a run zeroes the data before it, data after it stands.
        let mut s = Durable::default();
        s.apply(d);
        s.apply(Record::Zeros {
            start: 40,
            count: 5,
        });
        assert!(s.data.is_empty());
        s.apply(Record::Data {
            block: 41,
            slot: 0,
            hash: [1; 16],
        });
        assert_eq!(s.data.len(), 1);
        assert_eq!(s.zeros.run_at(43), Some(45));
    }

    #[test]
    fn headers_name_their_session() {
        let id = Identity {
            uuid: "u",
            vid: "Vol_1",
            session: "S_20260101-000000",
            size: 1 << 20,
        };
        let h = id.header().unwrap();
        assert!(id.check(&h).is_ok());
        let other = Identity {
            session: "S_20260101-000001",
            ..id
        };
        assert!(other
            .check(&h)
            .unwrap_err()
            .contains("another archive or session"));
        let mut d = h;
        d[20] ^= 1;
        assert!(id.check(&d).unwrap_err().contains("damaged"));
    }
}
