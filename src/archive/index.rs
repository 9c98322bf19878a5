//! Merged views as compact on-disk indexes: for one session, the data entries of its merged
//! view (§10.2) sorted by chunk index, each with the session whose directory holds the file.
//! Zero chunks are not stored: every index below the chunk count that is not listed is zero.
//!
//! Invariants:
//! * Memory does not grow with the volume: an index is read a block of [`BLOCK`] entries at a
//!   time (a small LRU of blocks for random access); only the fence table (32 bytes per block)
//!   stays in memory. A 16 TiB volume at 64 KiB chunks with 2 GiB of data is 32 K entries,
//!   1.4 MB on disk; even fully allocated it would be 11 GB on disk and 8 MB in memory.
//! * An index is only made from verified manifests, and its `mfcs` is checked against the
//!   session's before it is used. On disk every block carries a BLAKE3 checksum in the fence
//!   table, and the header and fence table one over both, so a damaged index file is detected
//!   (and rebuilt), never read as zeros.
//! * An index is named by a key over the archive, the volume and every session up to its own
//!   (names and `info` hashes): any change to that history (a prune, a new send from elsewhere)
//!   gives a new key, so a stale index is never used.
//! * Building: from the previous session's index plus this session's own lines when possible
//!   (cost: data entries + changes, plus the `mfcs` walk at a few ns per chunk slot), else a
//!   k-way merge of every session's streamed manifest.
//! * Random access is O(log n): SEEK_DATA / SEEK_HOLE and lookups binary-search the fences,
//!   then one block (using that `idx - position` never decreases along a run of data).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use super::chunks::ChunkLoc;
use super::Archive;
use crate::error::{Error, Result};
use crate::format::manifest::{chunk_count, chunk_len, ChunkRef, Complete, Merge, Mfcs};
use crate::format::{Hash32, SessionName, VolumeId};

/// Entries per block.
pub const BLOCK: usize = 1024;
const REC: usize = 42;
const FENCE: usize = 32;
const MAGIC: &[u8; 8] = b"WYNGIX01";
const HEADER: usize = 80;
const NAME: usize = 17;

/// One data entry of a merged view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rec {
    pub idx: u64,
    pub hash: Hash32,
    /// Position in the index's origin table (the session holding the chunk file).
    pub origin: u16,
}

impl Rec {
    fn encode(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.idx.to_le_bytes());
        out[8..40].copy_from_slice(&self.hash.0);
        out[40..42].copy_from_slice(&self.origin.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Rec {
        Rec {
            idx: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            hash: Hash32(b[8..40].try_into().expect("32 bytes")),
            origin: u16::from_le_bytes([b[40], b[41]]),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Fence {
    first: u64,
    last: u64,
    sum: [u8; 16],
}

fn sum16(b: &[u8]) -> [u8; 16] {
    blake3::hash(b).as_bytes()[..16]
        .try_into()
        .expect("16 bytes")
}

/// The merged view of one session. Cheap to share (`Arc`); safe to read from many threads.
pub struct MergedIndex {
    file: File,
    vid: VolumeId,
    chunksize: u64,
    volsize: u64,
    entries: u64,
    mfcs: u32,
    origins: Vec<SessionName>,
    base: u64,
    fences: Vec<Fence>,
    blocks: Mutex<LruCache<usize, Arc<Vec<Rec>>>>,
}

impl std::fmt::Debug for MergedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MergedIndex({} entries of {})",
            self.entries,
            self.chunks()
        )
    }
}

impl MergedIndex {
    pub fn volsize(&self) -> u64 {
        self.volsize
    }

    pub fn chunksize(&self) -> u64 {
        self.chunksize
    }

    /// Chunk slots of the view (`volsize / chunksize`, rounded up).
    pub fn chunks(&self) -> u64 {
        chunk_count(self.volsize, self.chunksize)
    }

    /// Chunks that hold data (the rest are zero).
    pub fn data_chunks(&self) -> u64 {
        self.entries
    }

    pub fn mfcs(&self) -> u32 {
        self.mfcs
    }

    /// Bytes of data the view holds (what `st_blocks` reports).
    pub fn data_bytes(&self) -> u64 {
        (self.entries * self.chunksize).min(self.volsize)
    }

    fn block_len(&self, b: usize) -> usize {
        (self.entries as usize - b * BLOCK).min(BLOCK)
    }

    fn read_block(&self, b: usize) -> Result<Vec<Rec>> {
        let n = self.block_len(b);
        let mut buf = vec![0u8; n * REC];
        self.file
            .read_exact_at(&mut buf, self.base + (b * BLOCK * REC) as u64)
            .map_err(|e| Error::io("merged-view index", e))?;
        if sum16(&buf) != self.fences[b].sum {
            return Err(Error::io(
                "merged-view index",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a block fails its checksum",
                ),
            ));
        }
        Ok(buf.chunks_exact(REC).map(Rec::decode).collect())
    }

    fn block(&self, b: usize) -> Result<Arc<Vec<Rec>>> {
        if let Some(x) = self.blocks.lock().get(&b) {
            return Ok(x.clone());
        }
        let recs = Arc::new(self.read_block(b)?);
        self.blocks.lock().put(b, recs.clone());
        Ok(recs)
    }

    /// The block that would hold `idx` (the last block whose first index is ≤ idx).
    fn block_of(&self, idx: u64) -> Option<usize> {
        self.fences
            .partition_point(|f| f.first <= idx)
            .checked_sub(1)
    }

    /// What chunk `idx` holds: `None` beyond the end, else zero or data with its place.
    pub fn get(&self, idx: u64) -> Result<Option<(ChunkRef, Option<Rec>)>> {
        if idx >= self.chunks() {
            return Ok(None);
        }
        let Some(b) = self.block_of(idx) else {
            return Ok(Some((ChunkRef::Zero, None)));
        };
        if self.fences[b].last < idx {
            return Ok(Some((ChunkRef::Zero, None)));
        }
        let recs = self.block(b)?;
        Ok(Some(match recs.binary_search_by_key(&idx, |r| r.idx) {
            Ok(i) => (ChunkRef::Data(recs[i].hash), Some(recs[i])),
            Err(_) => (ChunkRef::Zero, None),
        }))
    }

    /// The first chunk at or after `idx` that holds data.
    pub fn next_data(&self, idx: u64) -> Result<Option<u64>> {
        let b = self.fences.partition_point(|f| f.last < idx);
        if b >= self.fences.len() {
            return Ok(None);
        }
        let recs = self.block(b)?;
        let i = recs.partition_point(|r| r.idx < idx);
        Ok(recs.get(i).map(|r| r.idx))
    }

    /// The first chunk at or after `idx` that is zero (or the chunk count).
    pub fn next_hole(&self, idx: u64) -> Result<u64> {
        let n = self.chunks();
        if idx >= n {
            return Ok(n);
        }
        let Some(b) = self.block_of(idx) else {
            return Ok(idx);
        };
        let recs = self.block(b)?;
        let Ok(p) = recs.binary_search_by_key(&idx, |r| r.idx) else {
            return Ok(idx);
        };
        // Along a run of consecutive data chunks, chunk index minus position is constant, and
        // it never decreases: binary search the blocks whose last entry is still on the run,
        // then the block where it ends.
        let d = idx - (b * BLOCK + p) as u64;
        let off = |c: usize, i: usize, idx: u64| idx - (c * BLOCK + i) as u64;
        let nb = self.fences.len();
        let (mut lo, mut hi) = (b, nb);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if off(mid, self.block_len(mid) - 1, self.fences[mid].last) == d {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == nb {
            return Ok((self.fences[nb - 1].last + 1).min(n));
        }
        let recs = self.block(lo)?;
        // In the first block the run starts at `p`; in later ones at their first entry.
        let (mut a, mut z) = (if lo == b { p } else { 0 }, recs.len());
        while a < z {
            let mid = (a + z) / 2;
            if off(lo, mid, recs[mid].idx) == d {
                a = mid + 1;
            } else {
                z = mid;
            }
        }
        Ok(if a == 0 {
            self.fences[lo - 1].last + 1
        } else {
            recs[a - 1].idx + 1
        })
    }

    /// Data entries from chunk `idx` on, in order (blocks read one at a time).
    pub(crate) fn iter_from(&self, idx: u64) -> IndexIter<'_> {
        let b = self.fences.partition_point(|f| f.last < idx);
        IndexIter {
            ix: self,
            block: b,
            recs: Arc::new(Vec::new()),
            pos: 0,
            from: idx,
            failed: false,
        }
    }

    /// Where an entry's chunk file is.
    pub fn loc(&self, r: &Rec) -> ChunkLoc {
        ChunkLoc::new(
            &self.vid,
            &self.origins[r.origin as usize],
            r.idx,
            self.chunksize,
            r.hash,
            chunk_len(r.idx, self.volsize, self.chunksize),
        )
    }

    /// Every data chunk's location, in order.
    pub fn locs(&self) -> impl Iterator<Item = Result<ChunkLoc>> + Send + '_ {
        self.iter_from(0).map(|r| r.map(|r| self.loc(&r)))
    }
}

pub(crate) struct IndexIter<'a> {
    ix: &'a MergedIndex,
    block: usize,
    recs: Arc<Vec<Rec>>,
    pos: usize,
    from: u64,
    failed: bool,
}

impl Iterator for IndexIter<'_> {
    type Item = Result<Rec>;

    fn next(&mut self) -> Option<Result<Rec>> {
        loop {
            if self.failed {
                return None;
            }
            if self.pos < self.recs.len() {
                let r = self.recs[self.pos];
                self.pos += 1;
                if r.idx < self.from {
                    continue;
                }
                return Some(Ok(r));
            }
            if self.block >= self.ix.fences.len() {
                return None;
            }
            match self.ix.block(self.block) {
                Ok(r) => {
                    self.recs = r;
                    self.pos = 0;
                    self.block += 1;
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Writes an index entry by entry (strictly ascending chunk indices), computing the view's
/// `mfcs` as it goes.
pub struct Builder {
    w: Option<BufWriter<File>>,
    path: Option<PathBuf>,
    vid: VolumeId,
    chunksize: u64,
    volsize: u64,
    origins: Vec<SessionName>,
    block: Vec<u8>,
    block_first: u64,
    fences: Vec<Fence>,
    entries: u64,
    last: Option<u64>,
    mfcs: Option<Mfcs>,
    sealed: Option<u32>,
}

impl Builder {
    /// A new index for a view of `volsize` bytes whose files are in `origins` (session
    /// directories, by position). It is written in `dir` under a temporary name, or as an
    /// unlinked file in `spool_dir` when there is no local state to keep it in.
    pub fn new(
        dir: Option<&Path>,
        spool_dir: &Path,
        vid: &VolumeId,
        chunksize: u64,
        volsize: u64,
        origins: Vec<SessionName>,
    ) -> Result<Builder> {
        let (file, path) = match dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| Error::local_state(d, e))?;
                let p = crate::atomic_file::temp_path(&d.join("index"));
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .map_err(|e| Error::local_state(&p, e))?;
                (f, Some(p))
            }
            None => (
                crate::spool::unlinked_file(spool_dir).map_err(|e| Error::io("index", e))?,
                None,
            ),
        };
        let head = HEADER + NAME * origins.len();
        let mut w = BufWriter::with_capacity(1 << 16, file);
        w.write_all(&vec![0u8; head])
            .map_err(|e| Error::io("index", e))?;
        Ok(Builder {
            w: Some(w),
            path,
            vid: vid.clone(),
            chunksize,
            volsize,
            origins,
            block: Vec::with_capacity(BLOCK * REC),
            block_first: 0,
            fences: Vec::new(),
            entries: 0,
            last: None,
            mfcs: Some(Mfcs::new(chunksize)),
            sealed: None,
        })
    }

    /// Adds a data entry (indices strictly ascending, below the chunk count).
    pub fn push(&mut self, idx: u64, hash: Hash32, origin: u16) -> Result<()> {
        debug_assert!(self.last.is_none_or(|l| idx > l));
        debug_assert!((origin as usize) < self.origins.len());
        let Some(mfcs) = self.mfcs.as_mut() else {
            return Err(Error::io(
                "index",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "entry after the end"),
            ));
        };
        if idx >= chunk_count(self.volsize, self.chunksize) || self.last.is_some_and(|l| idx <= l) {
            return Err(Error::io(
                "index",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "entries out of order"),
            ));
        }
        mfcs.push(idx, &ChunkRef::Data(hash));
        if self.block.is_empty() {
            self.block_first = idx;
        }
        let at = self.block.len();
        self.block.resize(at + REC, 0);
        Rec { idx, hash, origin }.encode(&mut self.block[at..]);
        self.last = Some(idx);
        self.entries += 1;
        if self.block.len() == BLOCK * REC {
            self.end_block()?;
        }
        Ok(())
    }

    fn end_block(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        self.fences.push(Fence {
            first: self.block_first,
            last: self.last.expect("a block has entries"),
            sum: sum16(&self.block),
        });
        self.w
            .as_mut()
            .expect("open until finished")
            .write_all(&self.block)
            .map_err(|e| Error::io("index", e))?;
        self.block.clear();
        Ok(())
    }

    /// The `mfcs` of the view pushed so far, taken as complete (every other chunk zero):
    /// nothing more can be pushed after this.
    pub(crate) fn view_mfcs(&mut self) -> u32 {
        if let Some(m) = self.mfcs.take() {
            self.sealed = Some(m.finish(chunk_count(self.volsize, self.chunksize)));
        }
        self.sealed.expect("sealed above")
    }

    /// Writes the index out (as `dest` when given) and opens it.
    pub fn finish(mut self, key: [u8; 32], dest: Option<&Path>) -> Result<MergedIndex> {
        self.end_block()?;
        let mfcs = self.view_mfcs();
        let mut head = Vec::with_capacity(HEADER + NAME * self.origins.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&self.chunksize.to_le_bytes());
        head.extend_from_slice(&self.volsize.to_le_bytes());
        head.extend_from_slice(&self.entries.to_le_bytes());
        head.extend_from_slice(&mfcs.to_le_bytes());
        head.extend_from_slice(&(BLOCK as u32).to_le_bytes());
        head.extend_from_slice(&key);
        head.extend_from_slice(&(self.origins.len() as u64).to_le_bytes());
        for o in &self.origins {
            head.extend_from_slice(o.as_str().as_bytes());
        }
        let mut table = Vec::with_capacity(self.fences.len() * FENCE);
        for f in &self.fences {
            table.extend_from_slice(&f.first.to_le_bytes());
            table.extend_from_slice(&f.last.to_le_bytes());
            table.extend_from_slice(&f.sum);
        }
        let mut h = blake3::Hasher::new();
        h.update(&head);
        h.update(&table);
        let io = |e: std::io::Error| Error::io("index", e);
        let mut w = self.w.take().expect("open until finished");
        w.write_all(&table).map_err(io)?;
        w.write_all(h.finalize().as_bytes()).map_err(io)?;
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.write_all_at(&head, 0).map_err(io)?;
        if let Some(tmp) = self.path.take() {
            match dest {
                // A cache (rebuilt from the archive if lost): not synced.
                Some(d) => {
                    crate::atomic_file::commit(&file, &tmp, d, crate::atomic_file::Durability::None)
                        .map_err(|e| Error::local_state(d, e))?
                }
                // Kept open, named by nothing.
                None => {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
        Ok(MergedIndex {
            file,
            vid: self.vid.clone(),
            chunksize: self.chunksize,
            volsize: self.volsize,
            entries: self.entries,
            mfcs,
            origins: std::mem::take(&mut self.origins),
            base: head.len() as u64,
            fences: std::mem::take(&mut self.fences),
            blocks: new_lru(),
        })
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        // An unfinished build leaves nothing behind (a finished one has renamed its file).
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn new_lru() -> Mutex<LruCache<usize, Arc<Vec<Rec>>>> {
    Mutex::new(LruCache::new(NonZeroUsize::new(64).expect("64 > 0")))
}

/// Opens an index file, checking its header and fence table; `None` if it is not a valid
/// index for `key` (the caller rebuilds it).
fn open(path: &Path, vid: &VolumeId, key: &[u8; 32]) -> Option<MergedIndex> {
    let file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut head = [0u8; HEADER];
    file.read_exact_at(&mut head, 0).ok()?;
    let u64_at = |o: usize| u64::from_le_bytes(head[o..o + 8].try_into().expect("8"));
    if &head[..8] != MAGIC || &head[40..72] != key {
        return None;
    }
    let (chunksize, volsize, entries) = (u64_at(8), u64_at(16), u64_at(24));
    let mfcs = u32::from_le_bytes(head[32..36].try_into().expect("4"));
    if u32::from_le_bytes(head[36..40].try_into().expect("4")) as usize != BLOCK {
        return None;
    }
    let k = u64_at(72);
    let blocks = entries.div_ceil(BLOCK as u64);
    // Every size claimed must match the file's actual length before anything is allocated.
    let base = (HEADER as u64).checked_add(k.checked_mul(NAME as u64)?)?;
    let want = base
        .checked_add(entries.checked_mul(REC as u64)?)?
        .checked_add(blocks.checked_mul(FENCE as u64)?)?
        .checked_add(32)?;
    if want != len || k > u16::MAX as u64 + 1 {
        return None;
    }
    let mut names = vec![0u8; (k as usize) * NAME];
    file.read_exact_at(&mut names, HEADER as u64).ok()?;
    let origins = names
        .chunks_exact(NAME)
        .map(|n| std::str::from_utf8(n).ok().and_then(SessionName::parse))
        .collect::<Option<Vec<_>>>()?;
    let mut table = vec![0u8; (blocks as usize) * FENCE];
    let table_at = base + entries * REC as u64;
    file.read_exact_at(&mut table, table_at).ok()?;
    let mut trailer = [0u8; 32];
    file.read_exact_at(&mut trailer, table_at + table.len() as u64)
        .ok()?;
    let mut h = blake3::Hasher::new();
    h.update(&head);
    h.update(&names);
    h.update(&table);
    if h.finalize().as_bytes() != &trailer {
        return None;
    }
    let fences = table
        .chunks_exact(FENCE)
        .map(|f| Fence {
            first: u64::from_le_bytes(f[..8].try_into().expect("8")),
            last: u64::from_le_bytes(f[8..16].try_into().expect("8")),
            sum: f[16..32].try_into().expect("16"),
        })
        .collect();
    Some(MergedIndex {
        file,
        vid: vid.clone(),
        chunksize,
        volsize,
        entries,
        mfcs,
        origins,
        base,
        fences,
        blocks: new_lru(),
    })
}

/// Indexes this process built or opened, by key.
#[derive(Clone, Default)]
pub(crate) struct Memo(HashMap<[u8; 32], Arc<MergedIndex>>);

impl Archive {
    /// The key of session `si`'s merged view (see the module docs).
    fn index_key(&self, vi: usize, si: usize) -> [u8; 32] {
        let vol = &self.volumes[vi];
        let mut h = blake3::Hasher::new();
        h.update(b"wyng merged index v1\0");
        h.update(self.uuid().as_bytes());
        h.update(vol.vid.as_str().as_bytes());
        h.update(&self.chunksize().to_le_bytes());
        for s in &vol.sessions[..=si] {
            h.update(s.name.as_str().as_bytes());
            h.update(&vol.info_hash(&s.name).map_or([0; 32], |h| h.0));
            h.update(&s.info.volsize.to_le_bytes());
        }
        *h.finalize().as_bytes()
    }

    fn index_dir(&self, vid: &VolumeId) -> Option<PathBuf> {
        self.local.as_ref().map(|l| l.volume_dir(vid).join("index"))
    }

    fn index_path(&self, vi: usize, si: usize, key: &[u8; 32]) -> Option<PathBuf> {
        let vol = &self.volumes[vi];
        let hex: String = key[..10].iter().map(|b| format!("{b:02x}")).collect();
        self.index_dir(&vol.vid)
            .map(|d| d.join(format!("{}.{hex}.idx", vol.sessions[si].name)))
    }

    /// An index already built for session `si`, in this process or in local state.
    fn known_index(&self, vi: usize, si: usize) -> Option<Arc<MergedIndex>> {
        let key = self.index_key(vi, si);
        if let Some(ix) = self.indexes.lock().0.get(&key) {
            return Some(ix.clone());
        }
        let path = self.index_path(vi, si, &key)?;
        match open(&path, &self.volumes[vi].vid, &key) {
            Some(ix) => {
                // Recently used (the local state's size budget trims the oldest).
                let _ =
                    File::open(&path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
                let ix = Arc::new(ix);
                self.indexes.lock().0.insert(key, ix.clone());
                Some(ix)
            }
            None => {
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// The merged view of session `si` of volume `vi`, its `mfcs` checked: from local state
    /// when an index for exactly this history exists, else built from the manifests.
    pub fn merged(&self, vi: usize, si: usize) -> Result<Arc<MergedIndex>> {
        if let Some(ix) = self.known_index(vi, si) {
            return Ok(ix);
        }
        self.build_index(vi, si, true)
    }

    /// The merged view of session `si` built from the archive's manifests only, ignoring what
    /// local state holds (verify and arch-check: they check the archive, not a cache).
    pub(crate) fn merged_fresh(&self, vi: usize, si: usize) -> Result<Arc<MergedIndex>> {
        self.build_index(vi, si, false)
    }

    fn builder(&self, vi: usize, si: usize) -> Result<Builder> {
        let vol = &self.volumes[vi];
        Builder::new(
            self.index_dir(&vol.vid).as_deref(),
            &self.spool_dir(),
            &vol.vid,
            self.chunksize(),
            vol.sessions[si].info.volsize,
            vol.sessions[..=si].iter().map(|s| s.name.clone()).collect(),
        )
    }

    fn build_index(&self, vi: usize, si: usize, use_known: bool) -> Result<Arc<MergedIndex>> {
        let prev = if use_known && si > 0 {
            self.known_index(vi, si - 1)
        } else {
            None
        };
        let built = match prev {
            Some(p) => match self.build_overlay(vi, si, &p)? {
                Some(b) => b,
                None => self.build_scratch(vi, si)?,
            },
            None => self.build_scratch(vi, si)?,
        };
        self.install(vi, si, built)
    }

    /// Finishes a built index as session `si`'s: checks its `mfcs`, keeps it (in local state
    /// when there is some) and returns it.
    pub(super) fn install(&self, vi: usize, si: usize, b: Builder) -> Result<Arc<MergedIndex>> {
        let key = self.index_key(vi, si);
        let path = self.index_path(vi, si, &key);
        let ix = b.finish(key, path.as_deref())?;
        let s = &self.volumes[vi].sessions[si];
        if let Some(expected) = s.info.mfcs {
            if ix.mfcs != expected {
                if let Some(p) = &path {
                    let _ = std::fs::remove_file(p);
                }
                return Err(Error::corrupt(
                    format!("{}/{}", self.volumes[vi].vid, s.name),
                    "merged manifest does not match the session's checksum (mfcs)",
                ));
            }
        }
        let ix = Arc::new(ix);
        self.indexes.lock().0.insert(key, ix.clone());
        if let Some(p) = &path {
            self.trim_indexes(p);
        }
        Ok(ix)
    }

    /// Keeps this archive's index files within [`Tuning::index_budget`] (default 1G) of local
    /// disk: the least recently used go first (each is only a cache), never `keep`.
    ///
    /// [`Tuning::index_budget`]: crate::tuning::Tuning::index_budget
    fn trim_indexes(&self, keep: &Path) {
        let budget = self.tuning().index_budget.unwrap_or(1 << 30);
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = self
            .volumes
            .iter()
            .filter_map(|v| self.index_dir(&v.vid))
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flat_map(|rd| rd.flatten())
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, p) in files {
            if total <= budget {
                break;
            }
            if p != keep && std::fs::remove_file(&p).is_ok() {
                total -= len;
            }
        }
    }

    /// A k-way merge of every session's streamed manifest up to `si` (§10.2).
    fn build_scratch(&self, vi: usize, si: usize) -> Result<Builder> {
        let vol = &self.volumes[vi];
        let s = &vol.sessions[si];
        let what = format!("{}/{}", vol.vid, s.name);
        let layers = (0..=si)
            .map(|i| self.session_lines(vi, i))
            .collect::<Result<Vec<_>>>()?;
        let n = chunk_count(s.info.volsize, self.chunksize());
        let mut b = self.builder(vi, si)?;
        for e in Complete::new(Merge::new(layers)?, n, self.chunksize(), &what) {
            let (idx, r, layer) = e?;
            if let ChunkRef::Data(h) = r {
                b.push(idx, h, layer as u16)?;
            }
        }
        Ok(b)
    }

    /// Session `si`'s view as the view of `si - 1` overlaid with `si`'s own lines. `None` when
    /// that is not enough (the volume grew past an address `si` does not list): the caller
    /// merges from scratch, which decides exactly as the format says.
    fn build_overlay(&self, vi: usize, si: usize, prev: &MergedIndex) -> Result<Option<Builder>> {
        let s = &self.volumes[vi].sessions[si];
        let n_new = chunk_count(s.info.volsize, self.chunksize());
        let n_prev = prev.chunks();
        let mut b = self.builder(vi, si)?;
        let mut old = prev.iter_from(0).peekable();
        let mut expect = n_prev;
        let me = si as u16;
        for line in self.session_lines(vi, si)? {
            let (idx, r) = line?;
            if idx >= n_new {
                break;
            }
            while let Some(o) = old.next_if(|o| o.as_ref().map_or(true, |o| o.idx < idx)) {
                let o = o?;
                b.push(o.idx, o.hash, o.origin)?;
            }
            if let Some(Ok(o)) = old.peek() {
                if o.idx == idx {
                    old.next();
                }
            }
            if idx >= n_prev {
                if idx != expect {
                    return Ok(None);
                }
                expect = idx + 1;
            }
            if let ChunkRef::Data(h) = r {
                b.push(idx, h, me)?;
            }
        }
        for o in old {
            let o = o?;
            if o.idx >= n_new {
                break;
            }
            b.push(o.idx, o.hash, o.origin)?;
        }
        if expect < n_new {
            return Ok(None);
        }
        Ok(Some(b))
    }

    /// Known indexes of sessions `from..` of volume `vi` (before a change that keeps their
    /// views but moves chunk files, such as a merge).
    pub(super) fn known_indexes(&self, vi: usize, from: usize) -> Vec<(usize, Arc<MergedIndex>)> {
        (from..self.volumes[vi].sessions.len())
            .filter_map(|si| self.known_index(vi, si).map(|ix| (si, ix)))
            .collect()
    }

    /// The view of session `si` as `old` has it, with each entry's origin mapped to its new
    /// position (the sessions before it changed, the view did not). O(data entries).
    pub(super) fn remap_index(
        &self,
        vi: usize,
        si: usize,
        old: &MergedIndex,
        map: impl Fn(u16) -> u16,
    ) -> Result<Arc<MergedIndex>> {
        let mut b = self.builder(vi, si)?;
        for r in old.iter_from(0) {
            let r = r?;
            b.push(r.idx, r.hash, map(r.origin))?;
        }
        self.install(vi, si, b)
    }

    /// A builder for the view of the session a send is about to commit as volume `vi`'s
    /// next one (`name`, of `volsize` bytes): origins are the existing sessions then it.
    pub(crate) fn next_index_builder(
        &self,
        vi: usize,
        name: &SessionName,
        volsize: u64,
    ) -> Result<Builder> {
        let vol = &self.volumes[vi];
        let mut origins: Vec<SessionName> = vol.sessions.iter().map(|s| s.name.clone()).collect();
        origins.push(name.clone());
        Builder::new(
            self.index_dir(&vol.vid).as_deref(),
            &self.spool_dir(),
            &vol.vid,
            self.chunksize(),
            volsize,
            origins,
        )
    }

    /// Removes index files of volume `vid` that no current session's history names.
    pub(super) fn prune_indexes(&self, vi: usize) {
        let Some(dir) = self.index_dir(&self.volumes[vi].vid) else {
            return;
        };
        let keep: Vec<PathBuf> = (0..self.volumes[vi].sessions.len())
            .filter_map(|si| self.index_path(vi, si, &self.index_key(vi, si)))
            .collect();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if !keep.contains(&e.path()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn build(entries: &BTreeSet<u64>, n: u64, dir: &Path) -> MergedIndex {
        let cs = 65536;
        let vid = VolumeId::parse("Vol_1").unwrap();
        let origins = vec![SessionName::parse("S_20261123-153256").unwrap()];
        let mut b = Builder::new(None, dir, &vid, cs, n * cs, origins).unwrap();
        for &i in entries {
            b.push(i, Hash32([(i % 251) as u8; 32]), 0).unwrap();
        }
        b.finish([7; 32], None).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Lookups, SEEK_DATA and SEEK_HOLE equal a plain scan, for runs that cross blocks.
        #[test]
        fn random_access_equals_a_scan(
            runs in proptest::collection::vec((0u64..5000, 0u64..3000), 0..12),
            probes in proptest::collection::vec(0u64..12000, 1..60),
        ) {
            let n = 11000u64;
            let mut entries = BTreeSet::new();
            for (start, len) in runs {
                for i in start..(start + len).min(n) {
                    entries.insert(i);
                }
            }
            let dir = tempfile::tempdir().unwrap();
            let ix = build(&entries, n, dir.path());
            prop_assert_eq!(ix.data_chunks(), entries.len() as u64);
            let all: Vec<u64> = ix.iter_from(0).map(|r| r.unwrap().idx).collect();
            prop_assert_eq!(&all, &entries.iter().copied().collect::<Vec<_>>());
            for p in probes {
                let data = entries.contains(&p);
                match ix.get(p).unwrap() {
                    None => prop_assert!(p >= n),
                    Some((ChunkRef::Zero, _)) => prop_assert!(!data && p < n),
                    Some((ChunkRef::Data(h), Some(r))) => {
                        prop_assert!(data);
                        prop_assert_eq!(r.idx, p);
                        prop_assert_eq!(h, Hash32([(p % 251) as u8; 32]));
                    }
                    Some(_) => prop_assert!(false),
                }
                prop_assert_eq!(ix.next_data(p).unwrap(), entries.range(p..).next().copied());
                let hole = (p..).find(|i| !entries.contains(i)).unwrap().min(n);
                prop_assert_eq!(ix.next_hole(p).unwrap(), if p >= n { n } else { hole });
                let from: Vec<u64> = ix.iter_from(p).map(|r| r.unwrap().idx).collect();
                prop_assert_eq!(from, entries.range(p..).copied().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn damaged_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cs = 65536;
        let vid = VolumeId::parse("Vol_1").unwrap();
        let origins = vec![SessionName::parse("S_20261123-153256").unwrap()];
        let path = dir.path().join("x.idx");
        let mut b =
            Builder::new(Some(dir.path()), dir.path(), &vid, cs, 6000 * cs, origins).unwrap();
        for i in 0..3000u64 {
            b.push(i * 2, Hash32([1; 32]), 0).unwrap();
        }
        let key = [9; 32];
        let ix = b.finish(key, Some(&path)).unwrap();
        assert_eq!(ix.data_chunks(), 3000);
        assert!(open(&path, &vid, &key).is_some());
        assert!(open(&path, &vid, &[8; 32]).is_none(), "another key");
        // A flipped byte in a block: that block's read fails (never zeros).
        let mut bytes = std::fs::read(&path).unwrap();
        let base = HEADER + NAME;
        bytes[base + 100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let ix = open(&path, &vid, &key).unwrap();
        assert!(ix.get(2).is_err());
        assert!(ix.iter_from(0).any(|r| r.is_err()));
        // A flipped byte in the fence table or a truncated file: not opened at all.
        bytes[base + 100] ^= 1;
        let table = base + 3000 * REC;
        bytes[table + 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(open(&path, &vid, &key).is_none());
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(open(&path, &vid, &key).is_none());
        // Only the index file itself is in the directory: no build leftovers.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
