//! Deduplication: `send --dedup` and `arch-deduplicate` (format §11.3, behaviour notes §8).
//!
//! A chunk's manifest hash is over its compressed plaintext, and the data hash key is shared by
//! every volume of an archive, so two chunk files with one hash hold the same data and either
//! one validates wherever that hash is named. A duplicate therefore becomes a hard link to the
//! file already in the archive; nothing needs to change for readers. Each session's own
//! manifest lines name files in that session's directory (prune keeps this true by moving
//! files), which is how the index finds a file for every hash.
//!
//! Memory is bounded whatever the archive's size: the index is a sorted array of 44-byte
//! records (hash, volume, session, chunk), built in memory up to a budget (`WYNG_DEDUP_MEMORY`,
//! default 256 MiB, ~6 million distinct chunks = 1.4 TiB of unique data at 256 KiB chunks).
//! Past it, sorted runs are spilled to unlinked temporary files in wyng's cache directory and
//! merged into one sorted file, looked up through an in-memory fence of every 128th hash
//! (one 5.5 KiB read per lookup, ~0.25 byte of memory per chunk). Chunks that a send stores
//! are added to a small map of this run's own. Where several files hold one hash, the first
//! in archive order (volume, then session oldest first, then address) is the one indexed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use parking_lot::Mutex;

use super::layout::{self, Dir};
use super::write::WriteArchive;
use super::Archive;
use crate::error::{Error, Result};
use crate::format::{ChunkRef, Hash32, SessionName};

/// Session index meaning "the session this send is staging".
pub(crate) const STAGED: u16 = u16::MAX;

/// One indexed chunk file: its hash and where it is (volume index, session index, chunk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rec {
    hash: Hash32,
    vol: u16,
    ses: u16,
    idx: u64,
}

const REC: usize = 44;
/// Records per fence entry of an on-disk index.
const FENCE: usize = 128;
const DEFAULT_MEMORY: u64 = 256 << 20;

impl Rec {
    fn encode(&self, out: &mut [u8]) {
        out[..32].copy_from_slice(&self.hash.0);
        out[32..34].copy_from_slice(&self.vol.to_le_bytes());
        out[34..36].copy_from_slice(&self.ses.to_le_bytes());
        out[36..44].copy_from_slice(&self.idx.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Rec {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[..32]);
        Rec {
            hash: Hash32(hash),
            vol: u16::from_le_bytes([b[32], b[33]]),
            ses: u16::from_le_bytes([b[34], b[35]]),
            idx: u64::from_le_bytes(b[36..44].try_into().expect("8 bytes")),
        }
    }
}

/// The archive's chunks, sorted by hash with one record per hash.
enum Base {
    Memory(Vec<Rec>),
    Disk {
        file: File,
        records: u64,
        /// The hash of every FENCE-th record.
        fences: Vec<Hash32>,
    },
}

/// Where a chunk with a given hash already is (see the module docs).
pub(crate) struct DedupIndex {
    base: Base,
    /// Chunks this send stored: hash -> (volume index, chunk).
    staged: Mutex<HashMap<Hash32, (u16, u64)>>,
}

/// Sorts by hash, keeping the first record of each hash (the sort is stable).
fn sort_distinct(buf: &mut Vec<Rec>) {
    buf.sort_by_key(|r| r.hash);
    buf.dedup_by(|later, first| later.hash == first.hash);
}

/// A new file that no directory lists: it vanishes when closed, even after a crash.
fn unlinked_file(dir: &Path) -> Result<File> {
    crate::spool::unlinked_file(dir).map_err(|e| Error::local_state(dir, e))
}

fn spill(buf: &mut Vec<Rec>, dir: &Path) -> Result<File> {
    sort_distinct(buf);
    let f = unlinked_file(dir)?;
    let io = |e: std::io::Error| Error::local_state(dir, e);
    let mut w = BufWriter::with_capacity(1 << 20, &f);
    let mut b = [0u8; REC];
    for r in buf.iter() {
        r.encode(&mut b);
        w.write_all(&b).map_err(io)?;
    }
    w.flush().map_err(io)?;
    drop(w);
    buf.clear();
    Ok(f)
}

/// Merges sorted runs (earlier runs first among equal hashes) into one sorted, distinct file.
fn merge(runs: Vec<File>, dir: &Path) -> Result<Base> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let io = |e: std::io::Error| Error::local_state(dir, e);
    let mut readers: Vec<BufReader<File>> = runs
        .into_iter()
        .map(|f| BufReader::with_capacity(1 << 16, f))
        .collect();
    let mut b = [0u8; REC];
    let mut next = |r: &mut BufReader<File>| -> Result<Option<Rec>> {
        match r.read_exact(&mut b) {
            Ok(()) => Ok(Some(Rec::decode(&b))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(io(e)),
        }
    };
    let mut heap = BinaryHeap::new();
    let mut heads = Vec::new();
    for (i, r) in readers.iter_mut().enumerate() {
        use std::io::Seek;
        r.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        let head = next(r)?;
        if let Some(h) = &head {
            heap.push(Reverse((h.hash, i)));
        }
        heads.push(head);
    }
    let out = unlinked_file(dir)?;
    let mut w = BufWriter::with_capacity(1 << 20, &out);
    let mut records = 0u64;
    let mut fences = Vec::new();
    let mut last: Option<Hash32> = None;
    let mut ob = [0u8; REC];
    while let Some(Reverse((_, i))) = heap.pop() {
        let rec = heads[i].take().expect("a head for every heap entry");
        if last != Some(rec.hash) {
            if records % FENCE as u64 == 0 {
                fences.push(rec.hash);
            }
            rec.encode(&mut ob);
            w.write_all(&ob).map_err(io)?;
            records += 1;
            last = Some(rec.hash);
        }
        heads[i] = next(&mut readers[i])?;
        if let Some(h) = &heads[i] {
            heap.push(Reverse((h.hash, i)));
        }
    }
    w.flush().map_err(io)?;
    drop(w);
    Ok(Base::Disk {
        file: out,
        records,
        fences,
    })
}

/// [`Tuning::dedup_memory`], else 256 MiB: how many records the index keeps in memory.
///
/// [`Tuning::dedup_memory`]: crate::tuning::Tuning::dedup_memory
fn memory_records(t: &crate::tuning::Tuning) -> usize {
    let bytes = t.dedup_memory.unwrap_or(DEFAULT_MEMORY);
    ((bytes / REC as u64) as usize).max(1)
}

impl DedupIndex {
    /// Indexes every data chunk file of the archive, within the memory budget.
    pub fn build(archive: &Archive) -> Result<DedupIndex> {
        Self::build_bounded(
            archive,
            memory_records(archive.tuning()),
            &archive.spool_dir(),
        )
    }

    /// [`build`](Self::build) keeping at most `max_records` in memory, spilling to `dir`.
    pub(crate) fn build_bounded(
        archive: &Archive,
        max_records: usize,
        dir: &Path,
    ) -> Result<DedupIndex> {
        // Lazily, one session's manifest at a time, each streamed.
        let sessions = archive
            .volumes
            .iter()
            .enumerate()
            .flat_map(|(vi, vol)| (0..vol.sessions.len()).map(move |si| (vi, si)));
        let recs = sessions.flat_map(|(vi, si)| -> Box<dyn Iterator<Item = Result<Rec>>> {
            match archive.session_lines(vi, si) {
                Ok(lines) => Box::new(lines.filter_map(move |l| match l {
                    Ok((idx, ChunkRef::Data(hash))) => Some(Ok(Rec {
                        hash,
                        vol: vi as u16,
                        ses: si as u16,
                        idx,
                    })),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })),
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        });
        let base = Self::sorted(recs, max_records, dir)?;
        Ok(DedupIndex {
            base,
            staged: Mutex::new(HashMap::new()),
        })
    }

    fn sorted(
        recs: impl Iterator<Item = Result<Rec>>,
        max_records: usize,
        dir: &Path,
    ) -> Result<Base> {
        let mut buf: Vec<Rec> = Vec::new();
        let mut runs = Vec::new();
        for rec in recs {
            if buf.len() == buf.capacity() {
                let more = buf.capacity().clamp(1024, 1 << 20);
                buf.reserve_exact(more.min(max_records.saturating_sub(buf.len()).max(1)));
            }
            buf.push(rec?);
            if buf.len() >= max_records {
                std::fs::create_dir_all(dir).map_err(|e| Error::local_io(dir, "", e))?;
                runs.push(spill(&mut buf, dir)?);
            }
        }
        if runs.is_empty() {
            sort_distinct(&mut buf);
            buf.shrink_to_fit();
            return Ok(Base::Memory(buf));
        }
        if !buf.is_empty() {
            runs.push(spill(&mut buf, dir)?);
        }
        drop(buf);
        tracing::info!("dedup index: {} sorted runs merged on disk", runs.len());
        merge(runs, dir)
    }

    #[cfg(test)]
    /// Whether the index spilled to disk (it outgrew its memory budget).
    pub(crate) fn on_disk(&self) -> bool {
        matches!(self.base, Base::Disk { .. })
    }

    pub fn len(&self) -> usize {
        let base = match &self.base {
            Base::Memory(v) => v.len(),
            Base::Disk { records, .. } => *records as usize,
        };
        base + self.staged.lock().len()
    }

    /// The archive's first chunk file with this hash: (volume, session, chunk index).
    fn lookup(&self, h: &Hash32) -> Result<Option<(u16, u16, u64)>> {
        let found = match &self.base {
            Base::Memory(v) => v.binary_search_by(|r| r.hash.cmp(h)).ok().map(|i| v[i]),
            Base::Disk {
                file,
                records,
                fences,
            } => {
                let block = fences.partition_point(|f| f <= h);
                if block == 0 {
                    None
                } else {
                    let first = ((block - 1) * FENCE) as u64;
                    let n = (FENCE as u64).min(records - first) as usize;
                    let mut b = vec![0u8; n * REC];
                    file.read_exact_at(&mut b, first * REC as u64)
                        .map_err(|e| Error::io("dedup index", e))?;
                    let recs: Vec<Rec> = b.chunks_exact(REC).map(Rec::decode).collect();
                    recs.binary_search_by(|r| r.hash.cmp(h))
                        .ok()
                        .map(|i| recs[i])
                }
            }
        };
        Ok(found.map(|r| (r.vol, r.ses, r.idx)))
    }

    /// The path of an existing file with this hash. `staging_vol` is the volume being sent and
    /// `session` this run's session name: chunks staged by this run are in `S-tmp` while their
    /// volume is being sent, and under the session name once it has been committed. A failed
    /// index read counts as a miss (storing the chunk again is always correct).
    pub fn path(
        &self,
        archive: &Archive,
        h: &Hash32,
        staging_vol: usize,
        session: &SessionName,
    ) -> Option<String> {
        let (vi, si, idx) = match self.lookup(h) {
            Ok(Some(found)) => found,
            Ok(None) => {
                let (vi, idx) = *self.staged.lock().get(h)?;
                (vi, STAGED, idx)
            }
            Err(e) => {
                tracing::warn!("{e}; storing the chunk instead of linking it");
                return None;
            }
        };
        let vol = archive.volumes.get(vi as usize)?;
        let dir = if si == STAGED {
            if vi as usize == staging_vol {
                Dir::Staging
            } else {
                Dir::Session(session)
            }
        } else {
            Dir::Session(&vol.sessions.get(si as usize)?.name)
        };
        Some(layout::chunk(&vol.vid, dir, idx * archive.chunksize()))
    }

    /// Records a chunk this send has just stored.
    pub(crate) fn insert_staged(&self, h: Hash32, vol: usize, idx: u64) {
        self.staged.lock().entry(h).or_insert((vol as u16, idx));
    }
}

impl Archive {
    /// Refuses clearly when the destination cannot make hard links.
    pub(crate) fn check_hard_links(&self) -> Result<()> {
        let refuse = |detail: String| Error::DestUnavailable {
            url: self.dest.url().into(),
            detail,
        };
        if !self.dest.capabilities().hard_links {
            return Err(refuse("this destination has no hard links, which deduplication needs; send without --dedup (nothing was changed)".into()));
        }
        let _ = self.dest.remove_all(layout::DEDUP_PROBE);
        if self.dest.stat(layout::PROBE)?.is_none() {
            self.dest.write(layout::PROBE, b"")?;
        }
        let r = self.dest.hard_link(layout::PROBE, layout::DEDUP_PROBE);
        let _ = self.dest.remove_all(layout::DEDUP_PROBE);
        r.map_err(|e| refuse(format!("this destination does not support hard links, which deduplication needs; send without --dedup ({e})")))
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct DedupReport {
    pub chunk_files: u64,
    pub linked: u64,
    pub bytes_saved: u64,
}

impl WriteArchive {
    /// `arch-deduplicate`: replaces every chunk file whose hash appears earlier in the archive
    /// by a hard link to the first one. Each replacement is atomic (link to a temporary name,
    /// rename over the duplicate), so an interruption leaves only whole files.
    pub fn deduplicate(&mut self) -> Result<DedupReport> {
        self.check_hard_links()?;
        let index = DedupIndex::build(self)?;
        let cs = self.chunksize();
        let dest = self.a.dest.clone();
        let mut report = DedupReport::default();
        for (vi, vol) in self.a.volumes.iter().enumerate() {
            let tmp = layout::dedup_tmp(&vol.vid);
            for si in 0..vol.sessions.len() {
                let dir = Dir::Session(&vol.sessions[si].name);
                for line in self.a.session_lines(vi, si)? {
                    let (idx, r) = line?;
                    let ChunkRef::Data(h) = r else { continue };
                    let path = layout::chunk(&vol.vid, dir, idx * cs);
                    let Some(st) = dest.stat(&path)? else {
                        return Err(Error::corrupt(
                            &path,
                            "chunk file is missing (run `wyng verify`)",
                        ));
                    };
                    report.chunk_files += 1;
                    let first = match index.lookup(&h)? {
                        Some(at) if at != (vi as u16, si as u16, idx) => at,
                        _ => continue, // the first file with this hash
                    };
                    let orig = {
                        let v = &self.a.volumes[first.0 as usize];
                        layout::chunk(
                            &v.vid,
                            Dir::Session(&v.sessions[first.1 as usize].name),
                            first.2 * cs,
                        )
                    };
                    match dest.stat(&orig)? {
                        Some(o) if o.id == st.id => {} // already one file
                        Some(_) => {
                            dest.hard_link(&orig, &tmp)?;
                            dest.rename(&tmp, &path)?;
                            report.linked += 1;
                            report.bytes_saved += st.size;
                        }
                        None => {
                            return Err(Error::corrupt(
                                &orig,
                                "chunk file is missing (run `wyng verify`)",
                            ))
                        }
                    }
                }
            }
        }
        dest.sync()?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn index(recs: &[Rec], max: usize, dir: &Path) -> DedupIndex {
        DedupIndex {
            base: DedupIndex::sorted(recs.iter().map(|r| Ok(*r)), max, dir).unwrap(),
            staged: Mutex::new(HashMap::new()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// In memory or spilled to disk in runs of any size, the index answers every lookup as
        /// a map of first occurrences does.
        #[test]
        fn spilled_index_equals_first_occurrence(
            keys in proptest::collection::vec(0u8..=255, 0..700),
            max in 1usize..300,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let recs: Vec<Rec> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let mut h = [0u8; 32];
                    h[0] = *k;
                    h[31] = k.wrapping_mul(7);
                    Rec { hash: Hash32(h), vol: (i % 3) as u16, ses: (i % 5) as u16, idx: i as u64 }
                })
                .collect();
            let mut model: HashMap<Hash32, (u16, u16, u64)> = HashMap::new();
            for r in &recs {
                model.entry(r.hash).or_insert((r.vol, r.ses, r.idx));
            }
            let idx = index(&recs, max, dir.path());
            prop_assert_eq!(idx.on_disk(), recs.len() >= max);
            prop_assert_eq!(idx.len(), model.len());
            for k in 0..=255u8 {
                let mut h = [0u8; 32];
                h[0] = k;
                h[31] = k.wrapping_mul(7);
                let h = Hash32(h);
                prop_assert_eq!(idx.lookup(&h).unwrap(), model.get(&h).copied());
                let mut other = h;
                other.0[5] = 1;
                prop_assert_eq!(idx.lookup(&other).unwrap(), None);
            }
            // The spill files are unlinked: nothing is left in the directory.
            prop_assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }
}
