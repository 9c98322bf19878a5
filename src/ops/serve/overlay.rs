//! Copy-on-write overlays (`serve --overlay=DIR`): what clients write to an export goes into
//! local files of that session, never into the archive; reads see the writes over the session.
//!
//! ```text
//! DIR/<volume id>/S_YYYYMMDD-HHMMSS.map     the allocation map: header, then flushed batches
//! DIR/<volume id>/S_YYYYMMDD-HHMMSS.0, .1   sparse data files, the session's size each
//! ```
//!
//! Invariants:
//! * **The archive is only read.** An overlay belongs to one session (archive UUID, volume id,
//!   session name and size are in its header, checked on opening); the session is its base.
//! * **What a flush made durable survives a crash unchanged.** The map says, per 64 KiB block
//!   written, whether it is zeros or data in data file 0 or 1, with the data's checksum. A
//!   write never overwrites the copy the durable map names: it goes to the other file (or to
//!   the copy written since the last flush). A flush syncs both data files first, then appends
//!   one checksummed batch of map records and syncs the map. A crash loses only writes after
//!   the last flush (as a disk's volatile cache would), never makes a block read as zeros or
//!   as a mix of two versions.
//! * **Local state is input too.** The header and every batch carry a checksum, every block
//!   read from a data file is checked against the map before a byte of it is used: a damaged
//!   overlay is an error naming the file, never wrong bytes. A batch cut short by a crash at
//!   the end of the map is dropped (with a warning); damage anywhere else refuses the overlay.
//! * **Memory follows writes, not the volume**: one map entry per block written.
//! * One server at a time: data file 0 is locked (`flock`) while the overlay is open.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::archive::live::SessionImage;
use crate::error::{Error, Result};

/// The unit of copy-on-write (as qcow2's default cluster).
pub(crate) const BLOCK: u64 = 64 * 1024;
const MAGIC: &[u8; 8] = b"WYNGOVL1";
const VERSION: u32 = 1;
pub(crate) const HEADER: usize = 160;
const BATCH_MAGIC: u32 = 0x5759_4f42;
const RECORD: usize = 32;
/// Records per batch at most (a batch longer than this at the end of a map is damage, not a
/// crash's cut).
const MAX_BATCH: usize = 1 << 16;
const BATCH_MAX_BYTES: u64 = (8 + MAX_BATCH * RECORD + 16) as u64;
/// Blocks written since the last flush before the server flushes by itself.
const AUTO_FLUSH: usize = 16 * 1024;
const STRIPES: usize = 64;

/// What a block of the export is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The session's bytes.
    Base,
    Zero,
    Data {
        slot: u8,
        hash: [u8; 16],
    },
}

#[derive(Clone, Copy, Debug)]
struct Block {
    current: State,
    /// What the map on disk says.
    durable: State,
}

#[derive(Default)]
struct Map {
    blocks: BTreeMap<u64, Block>,
    /// Blocks whose current state is not yet durable.
    dirty: BTreeSet<u64>,
}

/// What a stretch of the export is, for reads and block status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layer {
    /// Read from the session.
    Base,
    Zero,
    Data,
}

struct Log {
    file: File,
    len: u64,
}

pub(crate) struct Overlay {
    map_path: PathBuf,
    slot_paths: [PathBuf; 2],
    size: u64,
    base: SessionImage,
    slots: [File; 2],
    /// Held while open: one server per overlay.
    _lock: nix::fcntl::Flock<File>,
    log: Mutex<Log>,
    map: RwLock<Map>,
    /// Held for reading while a block is read from a data file, for writing while it changes.
    stripes: Vec<RwLock<()>>,
    /// Writes hold it shared; a flush exclusively (no write between its sync and its record).
    gate: RwLock<()>,
}

fn hash(data: &[u8]) -> [u8; 16] {
    blake3::hash(data).as_bytes()[..16]
        .try_into()
        .expect("16 bytes")
}

fn local(p: &Path, e: std::io::Error) -> Error {
    Error::local_state(p, e)
}

/// The key of an overlay: its identity in the header.
struct Identity<'a> {
    uuid: &'a str,
    vid: &'a str,
    session: &'a str,
    size: u64,
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
    fn header(&self) -> Result<[u8; HEADER]> {
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
    fn check(&self, h: &[u8]) -> std::result::Result<(), String> {
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

fn encode(b: u64, s: State) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..8].copy_from_slice(&b.to_be_bytes());
    match s {
        State::Data { slot, hash } => {
            r[8] = 1;
            r[9] = slot;
            r[16..].copy_from_slice(&hash);
        }
        State::Zero => r[8] = 2,
        State::Base => r[8] = 3,
    }
    r
}

fn decode(r: &[u8], blocks: u64) -> Option<(u64, State)> {
    let b = u64::from_be_bytes(r[..8].try_into().expect("8 bytes"));
    if b >= blocks || r[10..16].iter().any(|&x| x != 0) {
        return None;
    }
    let s = match (r[8], r[9]) {
        (1, slot @ (0 | 1)) => State::Data {
            slot,
            hash: r[16..RECORD].try_into().expect("16 bytes"),
        },
        (2, 0) if r[16..].iter().all(|&x| x == 0) => State::Zero,
        (3, 0) if r[16..].iter().all(|&x| x == 0) => State::Base,
        _ => return None,
    };
    Some((b, s))
}

/// One batch of records: magic, count, records, checksum.
fn batch(records: &[(u64, State)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + records.len() * RECORD + 16);
    b.extend_from_slice(&BATCH_MAGIC.to_be_bytes());
    b.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for (blk, s) in records {
        b.extend_from_slice(&encode(*blk, *s));
    }
    let sum = hash(&b[4..]);
    b.extend_from_slice(&sum);
    b
}

/// One batch as found in a map.
enum Found {
    Records(Vec<(u64, State)>, u64),
    /// Not a whole batch: `true` if it may be the append a crash cut off (nothing sound can
    /// follow it), `false` if it is damage.
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

/// What replaying a map found: the durable state of every block recorded, and where the
/// sound part of the map ends (a batch a crash cut off after it is dropped).
struct Replayed {
    blocks: BTreeMap<u64, State>,
    end: u64,
}

/// Replays the batches after the header, a batch at a time (nothing is sized by a count
/// before the bytes are there).
fn replay(f: &File, len: u64, blocks: u64, path: &Path) -> Result<Replayed> {
    let mut out = BTreeMap::new();
    let mut pos = HEADER as u64;
    while pos < len {
        match read_batch(f, pos, len, blocks, path)? {
            Found::Records(records, body) => {
                out.extend(records);
                pos += body;
            }
            Found::Broken(_, true) => return Ok(Replayed { blocks: out, end: pos }),
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
    Ok(Replayed {
        blocks: out,
        end: pos,
    })
}

fn punch(f: &File, off: u64, len: u64) {
    use nix::fcntl::{fallocate, FallocateFlags};
    // Space only: a filesystem that cannot punch keeps the stale copy, which the map ignores.
    let _ = fallocate(
        f.as_raw_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off as i64,
        len as i64,
    );
}

/// Where data is in `f` at or after `from` (SEEK_DATA/SEEK_HOLE), as `[start, end)`.
fn next_allocated(f: &File, from: u64) -> Option<(u64, u64)> {
    let fd = f.as_raw_fd();
    // SAFETY: lseek on a descriptor we own; errors (ENXIO: no more data) are results.
    let start = unsafe { libc::lseek(fd, from as i64, libc::SEEK_DATA) };
    if start < 0 {
        return None;
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    (end > start).then_some((start as u64, end as u64))
}

/// The durable state a map records: a new map gets its header; an existing one is checked
/// against `id` and replayed (a flush a crash cut off at its end is dropped).
fn load_map(
    map: &mut File,
    len: u64,
    id: &Identity,
    blocks: u64,
    path: &Path,
) -> Result<BTreeMap<u64, State>> {
    if len == 0 {
        map.write_all(&id.header()?).map_err(|e| local(path, e))?;
        map.sync_all().map_err(|e| local(path, e))?;
        if let Some(d) = path.parent() {
            sync_dir(d)?;
        }
        return Ok(BTreeMap::new());
    }
    let mut h = vec![0u8; HEADER.min(len as usize)];
    map.read_exact(&mut h).map_err(|e| local(path, e))?;
    id.check(&h).map_err(|why| {
        Error::local(
            path,
            format!("{why}: it cannot be used as this session's overlay"),
        )
    })?;
    let r = replay(map, len, blocks, path)?;
    if r.end < len {
        tracing::warn!(
            "{}: dropped an unfinished flush at its end (the server stopped during it): the last writes before that are lost, as on a disk that lost power",
            path.display()
        );
        map.set_len(r.end).map_err(|e| local(path, e))?;
        map.sync_all().map_err(|e| local(path, e))?;
    }
    Ok(r.blocks)
}

impl Overlay {
    /// Opens (or creates) the overlay of `base` under `dir`.
    pub(crate) fn open(dir: &Path, uuid: &str, base: &SessionImage) -> Result<Overlay> {
        let vdir = dir.join(base.vid().as_str());
        std::fs::create_dir_all(&vdir).map_err(|e| local(&vdir, e))?;
        let stem = vdir.join(base.session().as_str());
        let with = |ext: &str| PathBuf::from(format!("{}.{ext}", stem.display()));
        let (map_path, slot_paths) = (with("map"), [with("0"), with("1")]);
        let id = Identity {
            uuid,
            vid: base.vid().as_str(),
            session: base.session().as_str(),
            size: base.size(),
        };
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
                .map_err(|e| local(p, e))
        };
        let slots = [open(&slot_paths[0])?, open(&slot_paths[1])?];
        let lock = nix::fcntl::Flock::lock(
            open(&slot_paths[0])?,
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
        .map_err(|_| {
            Error::local(
                &slot_paths[0],
                "this overlay is in use by another wyng serve: stop that one first",
            )
        })?;
        let mut map = open(&map_path)?;
        let len = map.metadata().map_err(|e| local(&map_path, e))?.len();
        let size = base.size();
        let blocks = size.div_ceil(BLOCK);
        let durable = load_map(&mut map, len, &id, blocks, &map_path)?;
        for (s, p) in slots.iter().zip(&slot_paths) {
            if s.metadata().map_err(|e| local(p, e))?.len() != size {
                s.set_len(size).map_err(|e| local(p, e))?;
            }
        }
        let log_len = map.metadata().map_err(|e| local(&map_path, e))?.len();
        let o = Overlay {
            map_path,
            slot_paths,
            size,
            base: base.clone(),
            slots,
            _lock: lock,
            log: Mutex::new(Log {
                file: map,
                len: log_len,
            }),
            map: RwLock::new(Map {
                blocks: durable
                    .into_iter()
                    .filter(|(_, s)| *s != State::Base)
                    .map(|(b, s)| {
                        (
                            b,
                            Block {
                                current: s,
                                durable: s,
                            },
                        )
                    })
                    .collect(),
                dirty: BTreeSet::new(),
            }),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            gate: RwLock::new(()),
        };
        o.release_stale();
        Ok(o)
    }

    /// Punches the copies no durable map entry names (left by writes a crash cut off).
    fn release_stale(&self) {
        let m = self.map.read();
        for (slot, f) in self.slots.iter().enumerate() {
            let mut pos = 0;
            while let Some((start, end)) = next_allocated(f, pos) {
                let mut b = start / BLOCK;
                while b * BLOCK < end {
                    let used = matches!(
                        m.blocks.get(&b).map(|x| x.durable),
                        Some(State::Data { slot: s, .. }) if s as usize == slot
                    );
                    if !used {
                        punch(f, b * BLOCK, BLOCK);
                    }
                    b += 1;
                }
                pos = end;
            }
        }
    }

    fn block_len(&self, b: u64) -> usize {
        (self.size - b * BLOCK).min(BLOCK) as usize
    }

    fn stripe(&self, b: u64) -> &RwLock<()> {
        &self.stripes[(b % STRIPES as u64) as usize]
    }

    fn state(&self, b: u64) -> State {
        self.map
            .read()
            .blocks
            .get(&b)
            .map_or(State::Base, |x| x.current)
    }

    /// Block `b` as it reads in state `s` (its stripe held by the caller).
    fn read_block(&self, b: u64, s: State) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.block_len(b)];
        match s {
            State::Zero => {}
            State::Base => {
                self.base.read_at(b * BLOCK, &mut buf)?;
            }
            State::Data { slot, hash: h } => {
                let p = &self.slot_paths[slot as usize];
                self.slots[slot as usize]
                    .read_exact_at(&mut buf, b * BLOCK)
                    .map_err(|e| local(p, e))?;
                if hash(&buf) != h {
                    return Err(Error::local(
                        p,
                        format!(
                            "the overlay's data at byte {} does not match its checksum: the overlay is damaged (the archive is not); the block cannot be read",
                            b * BLOCK
                        ),
                    ));
                }
            }
        }
        Ok(buf)
    }

    /// What the export is at `pos`, and up to where it stays so (at most `limit`): a run of
    /// base blocks, or one written block.
    pub(crate) fn layer_at(&self, pos: u64, limit: u64) -> (Layer, u64) {
        let b = pos / BLOCK;
        let m = self.map.read();
        match m.blocks.get(&b).map(|x| x.current) {
            Some(State::Zero) => (Layer::Zero, ((b + 1) * BLOCK).min(limit)),
            Some(State::Data { .. }) => (Layer::Data, ((b + 1) * BLOCK).min(limit)),
            Some(State::Base) | None => {
                let next = m
                    .blocks
                    .range(b + 1..)
                    .find(|(_, x)| x.current != State::Base)
                    .map_or(limit, |(nb, _)| nb * BLOCK);
                (Layer::Base, next.min(limit))
            }
        }
    }

    /// Fills `buf` from `offset` (within the export).
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let (layer, to) = self.layer_at(pos, end);
            let out = &mut buf[(pos - offset) as usize..(to - offset) as usize];
            match layer {
                Layer::Base => {
                    self.base.read_at(pos, out)?;
                }
                Layer::Zero => out.fill(0),
                Layer::Data => {
                    let b = pos / BLOCK;
                    let _s = self.stripe(b).read();
                    // Looked up again under the stripe: a write may have changed it.
                    let data = self.read_block(b, self.state(b))?;
                    let within = (pos - b * BLOCK) as usize;
                    out.copy_from_slice(&data[within..within + out.len()]);
                }
            }
            pos = to;
        }
        Ok(())
    }

    /// Makes block `b` read as `data` (a whole block) or zeros, in the copy that is not durable.
    fn set_block(&self, b: u64, data: Option<&[u8]>) -> Result<()> {
        let new = match data {
            None => State::Zero,
            Some(d) => {
                let (current, durable) = {
                    let m = self.map.read();
                    m.blocks
                        .get(&b)
                        .map_or((State::Base, State::Base), |x| (x.current, x.durable))
                };
                let slot = match (current, durable) {
                    // Rewritten since the last flush: that copy is not durable yet.
                    (State::Data { slot: c, .. }, d) if d != current => c,
                    (_, State::Data { slot: d, .. }) => 1 - d,
                    _ => 0,
                };
                let p = &self.slot_paths[slot as usize];
                self.slots[slot as usize]
                    .write_all_at(d, b * BLOCK)
                    .map_err(|e| local(p, e))?;
                State::Data {
                    slot,
                    hash: hash(d),
                }
            }
        };
        let mut m = self.map.write();
        let e = m.blocks.entry(b).or_insert(Block {
            current: State::Base,
            durable: State::Base,
        });
        e.current = new;
        if e.current != e.durable {
            m.dirty.insert(b);
        } else {
            m.dirty.remove(&b);
        }
        Ok(())
    }

    /// Writes `data` at `offset` (within the export); a block written in part is completed
    /// from what it read before (copied up from the session, verified).
    pub(crate) fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        {
            let _g = self.gate.read();
            let end = offset + data.len() as u64;
            let mut pos = offset;
            while pos < end {
                let b = pos / BLOCK;
                let start = b * BLOCK;
                let blen = self.block_len(b) as u64;
                let to = end.min(start + blen);
                let piece = &data[(pos - offset) as usize..(to - offset) as usize];
                let _s = self.stripe(b).write();
                if pos == start && to == start + blen {
                    self.set_block(b, Some(piece))?;
                } else {
                    let mut whole = self.read_block(b, self.state(b))?;
                    whole[(pos - start) as usize..(to - start) as usize].copy_from_slice(piece);
                    self.set_block(b, Some(&whole))?;
                }
                pos = to;
            }
        }
        self.flush_if_many()
    }

    /// Makes `[offset, offset + len)` read as zeros: whole blocks become zero blocks (no data
    /// kept) unless `keep_allocated`, partial ones are written.
    pub(crate) fn zero(&self, offset: u64, len: u64, keep_allocated: bool) -> Result<()> {
        {
            let _g = self.gate.read();
            let end = offset + len;
            let mut pos = offset;
            while pos < end {
                let b = pos / BLOCK;
                let start = b * BLOCK;
                let blen = self.block_len(b) as u64;
                let to = end.min(start + blen);
                let _s = self.stripe(b).write();
                if pos == start && to == start + blen && !keep_allocated {
                    self.set_block(b, None)?;
                } else {
                    let mut whole = self.read_block(b, self.state(b))?;
                    whole[(pos - start) as usize..(to - start) as usize].fill(0);
                    self.set_block(b, Some(&whole))?;
                }
                pos = to;
            }
        }
        self.flush_if_many()
    }

    /// Discards `[offset, offset + len)`: the whole blocks in it become zero blocks.
    pub(crate) fn trim(&self, offset: u64, len: u64) -> Result<()> {
        {
            let _g = self.gate.read();
            let first = offset.div_ceil(BLOCK);
            let end = offset + len;
            let mut b = first;
            while b * BLOCK < self.size && b * BLOCK + self.block_len(b) as u64 <= end {
                let _s = self.stripe(b).write();
                self.set_block(b, None)?;
                b += 1;
            }
        }
        self.flush_if_many()
    }

    fn flush_if_many(&self) -> Result<()> {
        if self.map.read().dirty.len() >= AUTO_FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes every write so far durable: data files synced, then the map records them.
    pub(crate) fn flush(&self) -> Result<()> {
        let _g = self.gate.write();
        let records: Vec<(u64, State)> = {
            let m = self.map.read();
            m.dirty
                .iter()
                .map(|b| (*b, m.blocks.get(b).map_or(State::Base, |x| x.current)))
                .collect()
        };
        if records.is_empty() {
            return Ok(());
        }
        for (f, p) in self.slots.iter().zip(&self.slot_paths) {
            f.sync_data().map_err(|e| local(p, e))?;
        }
        {
            let mut log = self.log.lock();
            for part in records.chunks(MAX_BATCH) {
                let b = batch(part);
                let at = log.len;
                log.file
                    .write_all_at(&b, at)
                    .map_err(|e| local(&self.map_path, e))?;
                log.len += b.len() as u64;
            }
            log.file.sync_data().map_err(|e| local(&self.map_path, e))?;
        }
        {
            let mut m = self.map.write();
            for (b, s) in &records {
                if let Some(e) = m.blocks.get_mut(b) {
                    e.durable = *s;
                }
                m.dirty.remove(b);
            }
            m.blocks
                .retain(|_, x| x.current != State::Base || x.durable != State::Base);
        }
        // The copies no longer named: space back (a crash before this only wastes it).
        for (b, s) in &records {
            for (slot, f) in self.slots.iter().enumerate() {
                if !matches!(s, State::Data { slot: d, .. } if *d as usize == slot) {
                    punch(f, b * BLOCK, BLOCK);
                }
            }
        }
        self.compact()
    }

    /// Rewrites the map as one batch of what is durable once replaying it costs far more than
    /// that (a new file renamed over the old one: either is a sound map).
    fn compact(&self) -> Result<()> {
        let mut log = self.log.lock();
        let live: Vec<(u64, State)> = self
            .map
            .read()
            .blocks
            .iter()
            .map(|(b, x)| (*b, x.durable))
            .filter(|(_, s)| *s != State::Base)
            .collect();
        let needed =
            (HEADER + live.len() * RECORD) as u64 + 24 * live.len().div_ceil(MAX_BATCH) as u64;
        if log.len < (1 << 20) || log.len < 4 * needed {
            return Ok(());
        }
        let tmp = PathBuf::from(format!("{}.tmp", self.map_path.display()));
        let mut header = vec![0u8; HEADER];
        log.file
            .read_exact_at(&mut header, 0)
            .map_err(|e| local(&self.map_path, e))?;
        let mut f = File::create(&tmp).map_err(|e| local(&tmp, e))?;
        f.write_all(&header).map_err(|e| local(&tmp, e))?;
        let mut len = HEADER as u64;
        for part in live.chunks(MAX_BATCH) {
            let b = batch(part);
            f.write_all(&b).map_err(|e| local(&tmp, e))?;
            len += b.len() as u64;
        }
        f.sync_all().map_err(|e| local(&tmp, e))?;
        std::fs::rename(&tmp, &self.map_path).map_err(|e| local(&self.map_path, e))?;
        if let Some(d) = self.map_path.parent() {
            sync_dir(d)?;
        }
        *log = Log { file: f, len };
        Ok(())
    }
}

fn sync_dir(d: &Path) -> Result<()> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(|e| local(d, e))
}

/// The overlays of one server: one per session written to, shared by every connection to it.
pub(crate) struct Overlays {
    dir: PathBuf,
    uuid: String,
    open: Mutex<HashMap<String, Arc<Overlay>>>,
}

impl Overlays {
    pub(crate) fn new(dir: &Path, uuid: &str) -> Result<Overlays> {
        std::fs::create_dir_all(dir).map_err(|e| local(dir, e))?;
        Ok(Overlays {
            dir: dir.to_path_buf(),
            uuid: uuid.to_string(),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The overlay of `base`'s session, opened on first use.
    pub(crate) fn get(&self, base: &SessionImage) -> Result<Arc<Overlay>> {
        let key = format!("{}/{}", base.vid().as_str(), base.session().as_str());
        let mut open = self.open.lock();
        if let Some(o) = open.get(&key) {
            return Ok(o.clone());
        }
        let o = Arc::new(Overlay::open(&self.dir, &self.uuid, base)?);
        tracing::info!(
            "overlay of {}@{} opened: {}",
            base.volume(),
            base.session().date(),
            o.map_path.display()
        );
        open.insert(key, o.clone());
        Ok(o)
    }

    /// Flushes every overlay (a server that stops); returns the first failure.
    pub(crate) fn flush_all(&self) -> Result<()> {
        let mut first = Ok(());
        for o in self.open.lock().values() {
            if let Err(e) = o.flush() {
                tracing::error!("{e}");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_batches_round_trip() {
        let s = State::Data {
            slot: 1,
            hash: [7; 16],
        };
        for st in [s, State::Zero, State::Base] {
            assert_eq!(decode(&encode(42, st), 100), Some((42, st)));
        }
        assert_eq!(decode(&encode(100, State::Zero), 100), None);
        let mut bad = encode(1, s);
        bad[9] = 2;
        assert_eq!(decode(&bad, 100), None);
        let b = batch(&[(1, s), (2, State::Zero)]);
        assert_eq!(b.len(), 8 + 2 * RECORD + 16);
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
