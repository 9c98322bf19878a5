//! Copy-on-write overlays (`serve --overlay=DIR`): what clients write to an export goes into
//! local files of that session, never into the archive; reads see the writes over the session.
//!
//! ```text
//! DIR/<volume id>/S_YYYYMMDD-HHMMSS.map     the map: header, then flushed batches (log.rs)
//! DIR/<volume id>/S_YYYYMMDD-HHMMSS.0, .1   sparse data files, the session's size each
//! ```
//!
//! Invariants:
//! * **The archive is only read.** An overlay belongs to one session (archive UUID, volume id,
//!   session name and size are in its header, checked on opening); the session is its base.
//! * **What a flush made durable survives a crash unchanged.** The map says which 64 KiB blocks
//!   hold data, in data file 0 or 1 and with what checksum, and which runs of blocks were
//!   zeroed. A write never overwrites the copy the durable map names: it goes to the other
//!   file (or to the copy written since the last flush). A flush syncs both data files first,
//!   then appends one checksummed batch of records and syncs the map. A crash loses only
//!   writes after the last flush (as a disk's volatile cache would), never makes a block read
//!   as zeros or as a mix of two versions.
//! * **Local state is input too.** The header and every batch carry a checksum, every block
//!   read from a data file is checked against the map before a byte of it is used: a damaged
//!   overlay is an error naming the file, never wrong bytes.
//! * **Memory follows writes, not the volume**: one entry per block written with data, one per
//!   run zeroed (a guest discarding its whole disk is one run).
//! * One server at a time: data file 0 is locked (`flock`) while the overlay is open.

mod log;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::archive::live::SessionImage;
use crate::error::{Error, Result};

#[cfg(test)]
pub(crate) use log::HEADER;
use log::{Identity, Record};

/// The unit of copy-on-write (as qcow2's default cluster).
pub(crate) const BLOCK: u64 = 64 * 1024;
/// Blocks written since the last flush before the server flushes by itself.
const AUTO_FLUSH: usize = 16 * 1024;
const STRIPES: usize = 64;

/// What a written block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not written: the session's bytes, or zeros if a zero run covers it.
    Unwritten,
    /// Zeroed since the last flush (a pending zero run covers it).
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

/// Runs of blocks, `start -> end` (exclusive), never overlapping or touching.
#[derive(Default)]
pub(super) struct Runs(BTreeMap<u64, u64>);

impl Runs {
    /// Adds `start..end`, merged with the runs it meets.
    fn add(&mut self, start: u64, end: u64) {
        let (mut s, mut e) = (start, end);
        if let Some((&a, &z)) = self.0.range(..=s).next_back() {
            if z >= s {
                s = a;
                e = e.max(z);
            }
        }
        let inside: Vec<u64> = self.0.range(s..=e).map(|(k, _)| *k).collect();
        for k in inside {
            if let Some(z) = self.0.remove(&k) {
                e = e.max(z);
            }
        }
        self.0.insert(s, e);
    }

    /// The end of the run holding block `b`, if one does.
    fn run_at(&self, b: u64) -> Option<u64> {
        self.0
            .range(..=b)
            .next_back()
            .and_then(|(_, &e)| (e > b).then_some(e))
    }

    /// The start of the first run after block `b`.
    fn next_after(&self, b: u64) -> Option<u64> {
        self.0.range(b + 1..).next().map(|(&s, _)| s)
    }

    fn records(&self) -> impl Iterator<Item = Record> + '_ {
        self.0.iter().map(|(&s, &e)| Record::Zeros {
            start: s,
            count: e - s,
        })
    }
}

#[derive(Default)]
struct Map {
    /// Blocks with data now or on disk, and blocks zeroed since whose data is still on disk.
    blocks: BTreeMap<u64, Block>,
    /// Blocks whose current state is not yet durable.
    dirty: BTreeSet<u64>,
    /// Zero runs (every one made so far: the durable ones and those since the last flush).
    zeros: Runs,
    /// Zero runs made since the last flush, in order.
    pending_zeros: Vec<(u64, u64)>,
}

impl Map {
    fn state(&self, b: u64) -> State {
        match self.blocks.get(&b) {
            Some(x) => x.current,
            None if self.zeros.run_at(b).is_some() => State::Zero,
            None => State::Unwritten,
        }
    }
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

fn sync_dir(d: &Path) -> Result<()> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(|e| local(d, e))
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

fn open_rw(p: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .map_err(|e| local(p, e))
}

impl Overlay {
    /// Opens (or creates) the overlay of `base` under `dir`.
    pub(crate) fn open(dir: &Path, uuid: &str, base: &SessionImage) -> Result<Overlay> {
        let vdir = dir.join(base.vid().as_str());
        std::fs::create_dir_all(&vdir).map_err(|e| local(&vdir, e))?;
        let stem = vdir.join(base.session().as_str());
        let with = |ext: &str| PathBuf::from(format!("{}.{ext}", stem.display()));
        let (map_path, slot_paths) = (with("map"), [with("0"), with("1")]);
        let slots = [open_rw(&slot_paths[0])?, open_rw(&slot_paths[1])?];
        let lock = nix::fcntl::Flock::lock(
            open_rw(&slot_paths[0])?,
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
        .map_err(|_| {
            Error::local(
                &slot_paths[0],
                "this overlay is in use by another wyng serve: stop that one first",
            )
        })?;
        let size = base.size();
        let id = Identity {
            uuid,
            vid: base.vid().as_str(),
            session: base.session().as_str(),
            size,
        };
        let mut map = open_rw(&map_path)?;
        let len = map.metadata().map_err(|e| local(&map_path, e))?.len();
        let durable = log::load(&mut map, len, &id, size.div_ceil(BLOCK), &map_path)?;
        for (s, p) in slots.iter().zip(&slot_paths) {
            if s.metadata().map_err(|e| local(p, e))?.len() != size {
                s.set_len(size).map_err(|e| local(p, e))?;
            }
        }
        let log_len = map.metadata().map_err(|e| local(&map_path, e))?.len();
        let blocks = durable
            .data
            .into_iter()
            .map(|(b, (slot, hash))| {
                let s = State::Data { slot, hash };
                (
                    b,
                    Block {
                        current: s,
                        durable: s,
                    },
                )
            })
            .collect();
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
                blocks,
                dirty: BTreeSet::new(),
                zeros: durable.zeros,
                pending_zeros: Vec::new(),
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

    /// Block `b` as it reads now (its stripe held by the caller).
    fn read_block(&self, b: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.block_len(b)];
        match self.map.read().state(b) {
            State::Zero => {}
            State::Unwritten => {
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

    /// What the export is at `pos`, and up to where it stays so (at most `limit`): a written
    /// block, or a run of blocks the session or a zero run answers.
    pub(crate) fn layer_at(&self, pos: u64, limit: u64) -> (Layer, u64) {
        let b = pos / BLOCK;
        let m = self.map.read();
        let (layer, end) = match m.blocks.get(&b).map(|x| x.current) {
            Some(State::Data { .. }) => (Layer::Data, b + 1),
            Some(State::Zero) => (Layer::Zero, b + 1),
            Some(State::Unwritten) | None => {
                let next = m.blocks.range(b + 1..).next().map_or(u64::MAX, |(k, _)| *k);
                match m.zeros.run_at(b) {
                    Some(e) => (Layer::Zero, e.min(next)),
                    None => (
                        Layer::Base,
                        m.zeros.next_after(b).unwrap_or(u64::MAX).min(next),
                    ),
                }
            }
        };
        (layer, end.saturating_mul(BLOCK).min(limit))
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
                    // Read again under the stripe: a write may have changed it.
                    let _s = self.stripe(b).read();
                    let data = self.read_block(b)?;
                    let within = (pos - b * BLOCK) as usize;
                    out.copy_from_slice(&data[within..within + out.len()]);
                }
            }
            pos = to;
        }
        Ok(())
    }

    /// Makes block `b` read as `data` (the whole block), written to the copy that is not
    /// durable (its stripe held by the caller).
    fn set_block(&self, b: u64, data: &[u8]) -> Result<()> {
        let (current, durable) = {
            let m = self.map.read();
            m.blocks
                .get(&b)
                .map_or((State::Unwritten, State::Unwritten), |x| {
                    (x.current, x.durable)
                })
        };
        let slot = match (current, durable) {
            // Rewritten since the last flush: that copy is not durable yet.
            (State::Data { slot: c, .. }, d) if d != current => c,
            (_, State::Data { slot: d, .. }) => 1 - d,
            _ => 0,
        };
        let p = &self.slot_paths[slot as usize];
        self.slots[slot as usize]
            .write_all_at(data, b * BLOCK)
            .map_err(|e| local(p, e))?;
        let mut m = self.map.write();
        let e = m.blocks.entry(b).or_insert(Block {
            current: State::Unwritten,
            durable: State::Unwritten,
        });
        e.current = State::Data {
            slot,
            hash: hash(data),
        };
        m.dirty.insert(b);
        Ok(())
    }

    /// Writes `data` over block `b` from byte `within` (completed from what the block read
    /// before: copied up from the session, verified, or from the overlay).
    fn patch(&self, b: u64, within: usize, data: &[u8]) -> Result<()> {
        let _s = self.stripe(b).write();
        if within == 0 && data.len() == self.block_len(b) {
            return self.set_block(b, data);
        }
        let mut whole = self.read_block(b)?;
        whole[within..within + data.len()].copy_from_slice(data);
        self.set_block(b, &whole)
    }

    /// Makes blocks `first..end` read as zeros: one zero run, and the written blocks in it
    /// zeroed (their copies stay until the run is durable).
    fn zero_blocks(&self, first: u64, end: u64) {
        if first >= end {
            return;
        }
        let mut m = self.map.write();
        let written: Vec<u64> = m.blocks.range(first..end).map(|(b, _)| *b).collect();
        for b in written {
            if let Some(e) = m.blocks.get_mut(&b) {
                e.current = State::Zero;
            }
            m.dirty.insert(b);
        }
        m.zeros.add(first, end);
        m.pending_zeros.push((first, end));
    }

    /// Writes `data` at `offset` (within the export).
    pub(crate) fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        {
            let _g = self.gate.read();
            let end = offset + data.len() as u64;
            let mut pos = offset;
            while pos < end {
                let b = pos / BLOCK;
                let to = end.min(b * BLOCK + self.block_len(b) as u64);
                let piece = &data[(pos - offset) as usize..(to - offset) as usize];
                self.patch(b, (pos - b * BLOCK) as usize, piece)?;
                pos = to;
            }
        }
        self.flush_if_many()
    }

    /// Makes `[offset, offset + len)` read as zeros: whole blocks become a zero run (no data
    /// kept) unless `keep_allocated`, where zeros are written as data; partial blocks are
    /// written.
    pub(crate) fn zero(&self, offset: u64, len: u64, keep_allocated: bool) -> Result<()> {
        {
            let _g = self.gate.read();
            let end = offset + len;
            let (first, last) = (offset.div_ceil(BLOCK), self.whole_blocks_end(end));
            if !keep_allocated && first < last {
                self.zero_blocks(first, last);
            }
            let mut pos = offset;
            while pos < end {
                let b = pos / BLOCK;
                let to = end.min(b * BLOCK + self.block_len(b) as u64);
                if keep_allocated || !(first..last).contains(&b) {
                    let zeros = vec![0u8; (to - pos) as usize];
                    self.patch(b, (pos - b * BLOCK) as usize, &zeros)?;
                }
                pos = to;
            }
        }
        self.flush_if_many()
    }

    /// The end (a block number) of the whole blocks before byte `end` (the short last block
    /// counts as whole at the export's end).
    fn whole_blocks_end(&self, end: u64) -> u64 {
        if end >= self.size {
            self.size.div_ceil(BLOCK)
        } else {
            end / BLOCK
        }
    }

    /// Discards `[offset, offset + len)`: the whole blocks in it become a zero run.
    pub(crate) fn trim(&self, offset: u64, len: u64) -> Result<()> {
        {
            let _g = self.gate.read();
            self.zero_blocks(offset.div_ceil(BLOCK), self.whole_blocks_end(offset + len));
        }
        self.flush_if_many()
    }

    fn flush_if_many(&self) -> Result<()> {
        let many = {
            let m = self.map.read();
            m.dirty.len() >= AUTO_FLUSH || m.pending_zeros.len() >= AUTO_FLUSH
        };
        if many {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes every write so far durable: data files synced, then the map records them (zero
    /// runs first: data records after them are newer).
    pub(crate) fn flush(&self) -> Result<()> {
        let _g = self.gate.write();
        let (records, dirty) = {
            let m = self.map.read();
            let mut records: Vec<Record> = m
                .pending_zeros
                .iter()
                .map(|&(s, e)| Record::Zeros {
                    start: s,
                    count: e - s,
                })
                .collect();
            let mut dirty = Vec::new();
            for b in &m.dirty {
                let s = m.blocks.get(b).map_or(State::Unwritten, |x| x.current);
                if let State::Data { slot, hash } = s {
                    records.push(Record::Data {
                        block: *b,
                        slot,
                        hash,
                    });
                }
                dirty.push((*b, s));
            }
            (records, dirty)
        };
        if records.is_empty() && dirty.is_empty() {
            return Ok(());
        }
        for (f, p) in self.slots.iter().zip(&self.slot_paths) {
            f.sync_data().map_err(|e| local(p, e))?;
        }
        {
            let mut log = self.log.lock();
            let at = log.len;
            log.len += log::append(&log.file, at, &records, &self.map_path)?;
        }
        {
            let mut m = self.map.write();
            m.pending_zeros.clear();
            for (b, s) in &dirty {
                m.dirty.remove(b);
                match s {
                    State::Data { .. } => {
                        if let Some(e) = m.blocks.get_mut(b) {
                            e.durable = *s;
                        }
                    }
                    // Zeroed: the run on disk says so now.
                    State::Zero | State::Unwritten => {
                        m.blocks.remove(b);
                    }
                }
            }
        }
        // The copies no longer named: space back (a crash before this only wastes it).
        for (b, s) in &dirty {
            for (slot, f) in self.slots.iter().enumerate() {
                if !matches!(s, State::Data { slot: d, .. } if *d as usize == slot) {
                    punch(f, b * BLOCK, BLOCK);
                }
            }
        }
        self.compact()
    }

    /// Rewrites the map as what is durable once replaying it costs far more than that.
    fn compact(&self) -> Result<()> {
        let mut log = self.log.lock();
        let records: Vec<Record> = {
            let m = self.map.read();
            m.zeros
                .records()
                .chain(m.blocks.iter().filter_map(|(b, x)| match x.durable {
                    State::Data { slot, hash } => Some(Record::Data {
                        block: *b,
                        slot,
                        hash,
                    }),
                    _ => None,
                }))
                .collect()
        };
        if log.len < (1 << 20) || log.len < 4 * log::size_of(records.len()) {
            return Ok(());
        }
        let (file, len) = log::rewrite(&log.file, &records, &self.map_path)?;
        *log = Log { file, len };
        Ok(())
    }
}

#[cfg(test)]
impl Overlay {
    /// Entries held in memory: (blocks, zero runs).
    pub(crate) fn footprint(&self) -> (usize, usize) {
        let m = self.map.read();
        (m.blocks.len(), m.zeros.0.len())
    }
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
    fn runs_merge_and_answer() {
        let mut r = Runs::default();
        r.add(10, 20);
        r.add(30, 40);
        assert_eq!(r.run_at(15), Some(20));
        assert_eq!(r.run_at(20), None);
        assert_eq!(r.next_after(20), Some(30));
        r.add(18, 31);
        assert_eq!(r.0.len(), 1);
        assert_eq!(r.run_at(10), Some(40));
        r.add(40, 41);
        assert_eq!(r.run_at(39), Some(41));
        r.add(0, 5);
        assert_eq!(r.records().count(), 2);
        assert_eq!(r.next_after(0), Some(10));
    }
}
