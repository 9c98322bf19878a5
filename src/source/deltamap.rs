//! The delta map: which chunks of a volume changed since its newest session, accumulated from
//! copy-on-write metadata by `send` and `monitor` (format notes §14.4, behaviour §5.2, §5.6).
//!
//! Invariants, shared with the original Wyng so a machine can switch tools without a rescan:
//! * One bit per chunk index `i`: byte `i >> 3`, bit `1 << (i & 7)`; the file is
//!   `volsize / chunksize / 8 + 1` bytes, grown with the volume.
//! * It lives in the volume's cache directory as `S_<newest session>_<its sequence>.deltamap`,
//!   so a session written from another machine (or lost) unpairs it.
//! * Its mtime (ns) equals the baseline snapshot's mtime: that is the pairing. Every change to
//!   the map is written *before* the baseline moves, and the mtime is set *after*, so a crash in
//!   between leaves either a superset of the changes or an unpaired map (a full scan), never a
//!   map that misses a change.
//! * A map of all zeros is written sparse (no allocated blocks): "no change recorded".

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::atomic_file::{AtomicFile, Durability};
use crate::error::{Error, Result};

/// The bitmap of changed chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DeltaMap {
    bytes: Vec<u8>,
}

/// Changed chunks as sorted, disjoint, non-adjacent half-open ranges of chunk indices: what a
/// change scan finds, in memory that follows the number of changed *runs*, not of chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkRanges(Vec<(u64, u64)>);

impl ChunkRanges {
    /// Adds chunks `from..to`, keeping the ranges sorted and merged. Cheap when ranges come
    /// in ascending order (as scans produce them).
    pub fn add(&mut self, from: u64, to: u64) {
        if to <= from {
            return;
        }
        match self.0.last_mut() {
            Some(last) if from >= last.0 => {
                if from <= last.1 {
                    last.1 = last.1.max(to);
                } else {
                    self.0.push((from, to));
                }
            }
            None => self.0.push((from, to)),
            Some(_) => {
                // Out of order: insert, then merge what now touches.
                let i = self.0.partition_point(|r| r.0 < from);
                self.0.insert(i, (from, to));
                let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.0.len());
                for &(a, b) in &self.0 {
                    match merged.last_mut() {
                        Some(m) if a <= m.1 => m.1 = m.1.max(b),
                        _ => merged.push((a, b)),
                    }
                }
                self.0 = merged;
            }
        }
    }

    /// How many chunks.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Every chunk index, ascending.
    pub fn chunks(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().flat_map(|&(a, b)| a..b)
    }
}

/// How a baseline snapshot relates to the newest session (behaviour §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Pairing {
    /// Paired and no change recorded: the baseline holds exactly the newest session.
    Paired,
    /// Paired, with changes recorded since the newest session.
    PairedWithChanges,
    /// No usable baseline: the next send is a full scan.
    Unpaired,
}

impl DeltaMap {
    /// An empty map sized for a volume.
    pub fn blank(volsize: u64, chunksize: u64) -> DeltaMap {
        DeltaMap {
            bytes: vec![0; map_len(volsize, chunksize)],
        }
    }

    pub fn load(path: &Path) -> Result<DeltaMap> {
        let bytes = fs::read(path).map_err(|e| Error::local_io(path, "", e))?;
        Ok(DeltaMap { bytes })
    }

    /// Grows the map to cover a volume of `volsize` (never shrinks: marks past the end are
    /// ignored by [`DeltaMap::chunks`]).
    pub(crate) fn cover(&mut self, volsize: u64, chunksize: u64) {
        let len = map_len(volsize, chunksize);
        if self.bytes.len() < len {
            self.bytes.resize(len, 0);
        }
    }

    pub fn mark(&mut self, chunk: u64) {
        let byte = (chunk >> 3) as usize;
        if self.bytes.len() <= byte {
            self.bytes.resize(byte + 1, 0);
        }
        self.bytes[byte] |= 1 << (chunk & 7);
    }

    /// Marks chunks `from..to` (a byte at a time where it can).
    pub(crate) fn mark_range(&mut self, from: u64, to: u64) {
        if to <= from {
            return;
        }
        let last = ((to - 1) >> 3) as usize;
        if self.bytes.len() <= last {
            self.bytes.resize(last + 1, 0);
        }
        let mut c = from;
        while c < to {
            if c & 7 == 0 && c + 8 <= to {
                self.bytes[(c >> 3) as usize] = 0xff;
                c += 8;
            } else {
                self.bytes[(c >> 3) as usize] |= 1 << (c & 7);
                c += 1;
            }
        }
    }

    /// Marks every chunk of `ranges`.
    pub(crate) fn mark_ranges(&mut self, ranges: &ChunkRanges) {
        for &(a, b) in &ranges.0 {
            self.mark_range(a, b);
        }
    }

    /// A map read from bytes (a map file's content).
    #[cfg(any(test, feature = "fuzz-targets"))]
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> DeltaMap {
        DeltaMap { bytes }
    }

    #[cfg(test)]
    pub(crate) fn is_marked(&self, chunk: u64) -> bool {
        self.bytes
            .get((chunk >> 3) as usize)
            .is_some_and(|b| b & (1 << (chunk & 7)) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.iter().all(|&b| b == 0)
    }

    /// How many chunks below `count` are marked.
    pub fn count(&self, count: u64) -> u64 {
        let full = (count / 8).min(self.bytes.len() as u64) as usize;
        let mut n: u64 = self.bytes[..full]
            .iter()
            .map(|b| b.count_ones() as u64)
            .sum();
        if let Some(&b) = self.bytes.get(full) {
            let rest = (count % 8) as u32;
            n += (b & ((1u16 << rest) - 1) as u8).count_ones() as u64;
        }
        n
    }

    /// Marked chunk indices below `count`, sorted. Runs of zero bytes are skipped a word at a
    /// time, so a large quiet map costs little.
    pub fn chunks(&self, count: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut i = 0usize;
        let bytes = &self.bytes;
        while i < bytes.len() {
            if i % 8 == 0 && i + 8 <= bytes.len() && bytes[i..i + 8] == [0; 8] {
                i += 8;
                continue;
            }
            let b = bytes[i];
            for bit in 0..8 {
                let c = (i as u64) * 8 + bit;
                if b & (1 << bit) != 0 && c < count {
                    out.push(c);
                }
            }
            i += 1;
        }
        out
    }

    /// Writes the map under a temporary name and renames it into place, with `mtime_ns` as
    /// its mtime. An all-zero map is written sparse.
    pub fn save(&self, path: &Path, mtime_ns: i128) -> Result<()> {
        let io = |e: std::io::Error| Error::local_io(path, "cannot write the delta map", e);
        let af = AtomicFile::create(path).map_err(io)?;
        let mut f = af.file();
        if self.is_empty() {
            f.set_len(self.bytes.len() as u64).map_err(io)?;
        } else {
            f.write_all(&self.bytes).map_err(io)?;
        }
        f.set_modified(time_of(mtime_ns)).map_err(io)?;
        af.commit(Durability::FileAndDir).map_err(io)
    }
}

fn map_len(volsize: u64, chunksize: u64) -> usize {
    (volsize / chunksize / 8 + 1) as usize
}

fn time_of(ns: i128) -> std::time::SystemTime {
    let ns = ns.max(0) as u128;
    UNIX_EPOCH + Duration::new((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32)
}

/// The map file of a volume whose newest session is `session` (`S_…`) with `sequence`.
pub fn path(vol_cache_dir: &Path, session: &str, sequence: u64) -> PathBuf {
    vol_cache_dir.join(format!("{session}_{sequence}.deltamap"))
}

/// The mtime of a file in nanoseconds (how snapshots and maps are paired).
pub(crate) fn mtime_ns(path: &Path) -> Option<i128> {
    let md = fs::symlink_metadata(path).ok()?;
    Some(md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128)
}

#[cfg(test)]
/// Sets a map's mtime to its new baseline's (the last step of a rotation).
pub(crate) fn stamp(path: &Path, mtime_ns: i128) -> Result<()> {
    let f = fs::File::options()
        .write(true)
        .open(path)
        .map_err(|e| Error::local_io(path, "", e))?;
    f.set_modified(time_of(mtime_ns))
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::local_io(path, "cannot stamp the delta map", e))
}

/// Whether `snap1` is the paired baseline of the session whose map is `map` (behaviour §5.2).
pub fn pairing(map: &Path, snap1: &Path) -> Pairing {
    let (Some(snap_t), Ok(md)) = (mtime_ns(snap1), fs::metadata(map)) else {
        return Pairing::Unpaired;
    };
    let map_t = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
    if map_t != snap_t {
        return Pairing::Unpaired;
    }
    pairing_without_snapshot(map)
}

/// Whether a paired map records changes. No allocated blocks means sparse, all zeros;
/// otherwise look (a map written by another tool may hold zeros in allocated blocks).
pub(crate) fn pairing_without_snapshot(map: &Path) -> Pairing {
    match fs::metadata(map) {
        Err(_) => Pairing::Unpaired,
        Ok(md) if md.blocks() == 0 => Pairing::Paired,
        Ok(_) if DeltaMap::load(map).is_ok_and(|m| m.is_empty()) => Pairing::Paired,
        Ok(_) => Pairing::PairedWithChanges,
    }
}

/// First step of moving a baseline forward while the map of `path` becomes `map`: while the old
/// baseline (of time `old_t`) is still the one paired, the map on disk becomes the union of what
/// it recorded and `map`, so no moment of the rotation has a paired map that misses a change.
pub(crate) fn save_union(path: &Path, map: &DeltaMap, old_t: i128) -> Result<()> {
    let mut union = DeltaMap::load(path).unwrap_or_default();
    for c in map.chunks(u64::MAX) {
        union.mark(c);
    }
    union.save(path, old_t)
}

/// Removes every delta map of a volume except `keep`.
pub(crate) fn remove_others(vol_cache_dir: &Path, keep: Option<&Path>) {
    let Ok(rd) = fs::read_dir(vol_cache_dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        // Maps, and what a save interrupted by a crash left (older versions' names too).
        let leftover = crate::atomic_file::is_temp(&name) && name.contains(".deltamap.");
        if (name.ends_with(".deltamap") || name.ends_with(".deltamap.tmp") || leftover)
            && Some(p.as_path()) != keep
        {
            let _ = fs::remove_file(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_lsb_first_and_sized_like_the_original() {
        let mut m = DeltaMap::blank(10 * 65536, 65536);
        assert_eq!(m.bytes.len(), 2);
        m.mark(0);
        m.mark(9);
        assert_eq!(m.bytes, vec![0b0000_0001, 0b0000_0010]);
        assert_eq!(m.chunks(10), vec![0, 9]);
        assert_eq!(m.chunks(9), vec![0]);
        m.mark(100);
        assert!(m.is_marked(100) && !m.is_marked(99));
        assert_eq!(m.chunks(1000), vec![0, 9, 100]);
    }

    #[test]
    fn pairing_follows_the_mtime_and_the_content() {
        let d = tempfile::tempdir().unwrap();
        let snap = d.path().join("snap");
        fs::write(&snap, b"x").unwrap();
        let t = mtime_ns(&snap).unwrap();
        let map = path(d.path(), "S_20261101-020000", 3);
        assert_eq!(pairing(&map, &snap), Pairing::Unpaired);
        DeltaMap::blank(1 << 30, 65536).save(&map, t).unwrap();
        assert_eq!(fs::metadata(&map).unwrap().blocks(), 0);
        assert_eq!(pairing(&map, &snap), Pairing::Paired);
        let mut m = DeltaMap::load(&map).unwrap();
        m.mark(5);
        m.save(&map, t).unwrap();
        assert_eq!(pairing(&map, &snap), Pairing::PairedWithChanges);
        stamp(&map, t + 1).unwrap();
        assert_eq!(pairing(&map, &snap), Pairing::Unpaired);
        remove_others(d.path(), None);
        assert!(!map.exists() && snap.exists());
    }

    #[test]
    fn ranges_stay_sorted_and_merged_and_mark_like_single_marks() {
        let mut r = ChunkRanges::default();
        for (a, b) in [
            (10, 12),
            (12, 15),
            (20, 21),
            (3, 5),
            (4, 11),
            (30, 30),
            (100, 117),
        ] {
            r.add(a, b);
        }
        assert_eq!(r.ranges(), &[(3, 15), (20, 21), (100, 117)]);
        assert_eq!(r.count(), 12 + 1 + 17);
        let mut by_range = DeltaMap::default();
        by_range.mark_ranges(&r);
        let mut by_one = DeltaMap::default();
        for c in r.chunks() {
            by_one.mark(c);
        }
        assert_eq!(by_range, by_one);
        assert_eq!(by_range.chunks(u64::MAX), r.chunks().collect::<Vec<_>>());
    }

    proptest::proptest! {
        #[test]
        fn chunks_lists_exactly_the_marks(marks in proptest::collection::btree_set(0u64..5000, 0..200)) {
            let mut m = DeltaMap::blank(0, 1);
            for &c in &marks {
                m.mark(c);
            }
            let want: Vec<u64> = marks.iter().copied().collect();
            proptest::prop_assert_eq!(m.chunks(u64::MAX), want);
        }
    }
}
