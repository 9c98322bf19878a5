//! Manifests (format §10): per-session lists of `hash xADDR` / `0 xADDR` lines, sorted by
//! address, and the merged (full) view of a session, all as *streams*.
//!
//! Invariants:
//! * Nothing here holds one entry per chunk slot. A manifest is read line by line from any
//!   [`BufRead`] ([`LineReader`], at most [`MAX_LINE`] bytes buffered per line, so a
//!   decompression bomb of one endless line fails at its first line); merged views are k-way
//!   merges of such streams ([`Merge`]); lines and `mfcs` are produced by [`Lines`], which
//!   formats runs of zero lines without any per-entry allocation.
//! * Parsing checks syntax, alignment, strict ascending order and `addr ≤ volsize` (§10.1).
//!   Nothing is ever sized from a `volsize` claimed by metadata.

use std::io::{BufRead, Write};

use crate::error::{Error, Result};
use crate::format::ids::Hash32;

/// What one chunk address holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChunkRef {
    Zero,
    Data(Hash32),
}

/// One manifest entry: chunk index and its value.
pub type Entry = (u64, ChunkRef);

/// Longest manifest line: 44-char hash, space, `x` + 16 hex digits, newline.
pub const MAX_LINE: u64 = 44 + 1 + 17 + 1;
/// A zero line: `0 x` + 16 hex digits + newline.
pub const ZERO_LINE: u64 = 20;

/// Number of chunks of a volume (the last one may be partial).
pub fn chunk_count(volsize: u64, chunksize: u64) -> u64 {
    volsize.div_ceil(chunksize)
}

/// Length of chunk `idx` of a volume of `volsize` bytes.
pub fn chunk_len(idx: u64, volsize: u64, chunksize: u64) -> u64 {
    (volsize - idx * chunksize).min(chunksize)
}

/// Parses one manifest line (without its newline): `(chunk index, value)`.
pub fn parse_line(
    line: &[u8],
    chunksize: u64,
    volsize: u64,
) -> std::result::Result<Entry, &'static str> {
    let sp = line.iter().position(|&b| b == b' ').ok_or("no separator")?;
    let (h, a) = (&line[..sp], &line[sp + 1..]);
    if a.len() != 17 || a[0] != b'x' {
        return Err("bad address");
    }
    let mut addr = 0u64;
    for &c in &a[1..] {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return Err("bad address"),
        };
        addr = addr << 4 | d as u64;
    }
    if addr % chunksize != 0 {
        return Err("address not aligned to the chunk size");
    }
    if addr > volsize {
        return Err("address beyond the volume size");
    }
    let r = if h == b"0" {
        ChunkRef::Zero
    } else {
        let s = std::str::from_utf8(h).map_err(|_| "bad hash")?;
        ChunkRef::Data(Hash32::parse_b64(s).ok_or("bad hash")?)
    };
    Ok((addr / chunksize, r))
}

/// A session's manifest lines read from decompressed text, checked as they come.
pub struct LineReader<R> {
    r: R,
    chunksize: u64,
    volsize: u64,
    path: String,
    line_no: u64,
    last: Option<u64>,
    buf: Vec<u8>,
    done: bool,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(r: R, chunksize: u64, volsize: u64, path: &str) -> Self {
        LineReader {
            r,
            chunksize,
            volsize,
            path: path.to_string(),
            line_no: 0,
            last: None,
            buf: Vec::with_capacity(MAX_LINE as usize + 1),
            done: false,
        }
    }

    fn bad(&self, what: &str) -> Error {
        Error::corrupt(
            &self.path,
            format!("manifest line {}: {what}", self.line_no + 1),
        )
    }

    /// The next line into `self.buf` (without newline); `None` at the end of the text.
    fn next_line(&mut self) -> Result<Option<()>> {
        self.buf.clear();
        loop {
            let avail = match self.r.fill_buf() {
                Ok(a) => a,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::corrupt(
                        &self.path,
                        format!("manifest does not decompress: {e}"),
                    ))
                }
            };
            if avail.is_empty() {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(Error::corrupt(
                    &self.path,
                    "manifest does not end with a newline",
                ));
            }
            let room = MAX_LINE as usize - self.buf.len();
            let look = &avail[..avail.len().min(room)];
            if let Some(nl) = look.iter().position(|&b| b == b'\n') {
                self.buf.extend_from_slice(&look[..nl]);
                self.r.consume(nl + 1);
                return Ok(Some(()));
            }
            if look.len() == room {
                return Err(self.bad("line too long"));
            }
            let n = look.len();
            self.buf.extend_from_slice(look);
            self.r.consume(n);
        }
    }
}

impl<R: BufRead> Iterator for LineReader<R> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if self.done {
            return None;
        }
        let r = match self.next_line() {
            Ok(None) => {
                self.done = true;
                return None;
            }
            Err(e) => Err(e),
            Ok(Some(())) => match parse_line(&self.buf, self.chunksize, self.volsize) {
                Err(what) => Err(self.bad(what)),
                Ok((idx, _)) if self.last.is_some_and(|l| idx <= l) => {
                    Err(self.bad("addresses not in ascending order"))
                }
                Ok(e) => {
                    self.last = Some(e.0);
                    self.line_no += 1;
                    Ok(e)
                }
            },
        };
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

/// Parses a whole decompressed manifest held in memory (small manifests, tests).
pub fn parse_lines(text: &[u8], chunksize: u64, volsize: u64, path: &str) -> Result<Vec<Entry>> {
    LineReader::new(text, chunksize, volsize, path).collect()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex16(out: &mut [u8], v: u64) {
    for (i, o) in out.iter_mut().enumerate().take(16) {
        *o = HEX[((v >> (60 - 4 * i)) & 15) as usize];
    }
}

/// Writes manifest lines to `w` through a buffer: single entries, and runs of zero lines at a
/// few nanoseconds per line (the merged view of a sparse volume is mostly such runs).
pub struct Lines<W: Write> {
    w: W,
    buf: Vec<u8>,
    chunksize: u64,
    /// Bytes written so far.
    len: u64,
}

const FLUSH_AT: usize = 1 << 16;

impl<W: Write> Lines<W> {
    pub fn new(w: W, chunksize: u64) -> Self {
        Lines {
            w,
            buf: Vec::with_capacity(FLUSH_AT + 128),
            chunksize,
            len: 0,
        }
    }

    fn maybe_flush(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= FLUSH_AT {
            self.w.write_all(&self.buf)?;
            self.len += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    pub fn entry(&mut self, idx: u64, r: &ChunkRef) -> std::io::Result<()> {
        match r {
            ChunkRef::Zero => self.buf.push(b'0'),
            ChunkRef::Data(h) => self.buf.extend_from_slice(h.to_b64().as_bytes()),
        }
        self.buf.extend_from_slice(b" x");
        let at = self.buf.len();
        self.buf.resize(at + 16, 0);
        put_hex16(&mut self.buf[at..], idx * self.chunksize);
        self.buf.push(b'\n');
        self.maybe_flush()
    }

    /// Zero lines for every index in `from..to`.
    pub fn zeros(&mut self, from: u64, to: u64) -> std::io::Result<()> {
        let mut idx = from;
        while idx < to {
            let room = (FLUSH_AT + 64 - self.buf.len()) / ZERO_LINE as usize;
            let n = (to - idx).min(room.max(1) as u64);
            let at = self.buf.len();
            self.buf.resize(at + n as usize * ZERO_LINE as usize, 0);
            for (k, line) in self.buf[at..]
                .chunks_exact_mut(ZERO_LINE as usize)
                .enumerate()
            {
                line[..3].copy_from_slice(b"0 x");
                put_hex16(&mut line[3..19], (idx + k as u64) * self.chunksize);
                line[19] = b'\n';
            }
            idx += n;
            self.maybe_flush()?;
        }
        Ok(())
    }

    /// Bytes written so far (flushed or buffered).
    pub fn len(&self) -> u64 {
        self.len + self.buf.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.w.write_all(&self.buf)?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// A writer that only computes the CRC32 of what passes through (the `mfcs` of §10.3).
#[derive(Default)]
pub struct Crc(crc32fast::Hasher);

impl Write for Crc {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Crc {
    pub fn value(&self) -> u32 {
        self.0.clone().finalize()
    }
}

/// Computes `mfcs` from a merged view given in address order, as data entries with the zero
/// runs between them implied (a complete merged view of `n` chunks).
pub struct Mfcs {
    lines: Lines<Crc>,
    next: u64,
}

impl Mfcs {
    pub fn new(chunksize: u64) -> Self {
        Mfcs {
            lines: Lines::new(Crc::default(), chunksize),
            next: 0,
        }
    }

    /// The entry at `idx` (every index before it not given yet is zero).
    pub fn push(&mut self, idx: u64, r: &ChunkRef) {
        debug_assert!(idx >= self.next);
        // Writing to a Crc never fails.
        let _ = self.lines.zeros(self.next, idx);
        let _ = self.lines.entry(idx, r);
        self.next = idx + 1;
    }

    /// Zeros up to `n`, then the checksum.
    pub fn finish(mut self, n: u64) -> u32 {
        let _ = self.lines.zeros(self.next, n);
        self.lines.finish().map(|c| c.value()).unwrap_or(0)
    }
}

/// A k-way merge of sorted manifest streams, `layers[0]` oldest: yields each index once, with
/// the value of the newest layer holding it and that layer's position (§10.2).
pub struct Merge<I> {
    layers: Vec<I>,
    /// Min-heap on (index, newest layer first).
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(u64, std::cmp::Reverse<usize>, Slot)>>,
    failed: bool,
}

/// A head value kept in the heap (ordering ignores it: index and layer are unique).
#[derive(Clone, Copy, Debug)]
struct Slot(ChunkRef);

impl PartialEq for Slot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Slot {}
impl PartialOrd for Slot {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Slot {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<I: Iterator<Item = Result<Entry>>> Merge<I> {
    pub fn new(layers: Vec<I>) -> Result<Self> {
        let mut m = Merge {
            layers,
            heap: std::collections::BinaryHeap::new(),
            failed: false,
        };
        for l in 0..m.layers.len() {
            m.advance(l)?;
        }
        Ok(m)
    }

    fn advance(&mut self, layer: usize) -> Result<()> {
        if let Some(e) = self.layers[layer].next() {
            let (idx, r) = e?;
            self.heap
                .push(std::cmp::Reverse((idx, std::cmp::Reverse(layer), Slot(r))));
        }
        Ok(())
    }
}

impl<I: Iterator<Item = Result<Entry>>> Iterator for Merge<I> {
    /// `(index, value, layer)`.
    type Item = Result<(u64, ChunkRef, usize)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let std::cmp::Reverse((idx, std::cmp::Reverse(layer), Slot(r))) = self.heap.pop()?;
        let mut step = || -> Result<()> {
            self.advance(layer)?;
            while let Some(std::cmp::Reverse((i, std::cmp::Reverse(l), _))) = self.heap.peek() {
                if *i != idx {
                    break;
                }
                let l = *l;
                self.heap.pop();
                self.advance(l)?;
            }
            Ok(())
        };
        match step() {
            Ok(()) => Some(Ok((idx, r, layer))),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Checks that a merged stream covers every index below `n` (the chunk count of the session's
/// volume size) and drops what lies beyond (§10.2: "drop addresses > last chunk").
pub struct Complete<I> {
    inner: I,
    n: u64,
    next: u64,
    what: String,
    chunksize: u64,
    done: bool,
}

impl<I> Complete<I> {
    pub fn new(inner: I, n: u64, chunksize: u64, what: &str) -> Self {
        Complete {
            inner,
            n,
            next: 0,
            what: what.to_string(),
            chunksize,
            done: false,
        }
    }

    fn gap(&self, idx: u64) -> Error {
        Error::corrupt(
            &self.what,
            format!(
                "merged manifest incomplete: no entry for address x{:016x}",
                idx * self.chunksize
            ),
        )
    }
}

impl<T, I: Iterator<Item = Result<(u64, ChunkRef, T)>>> Iterator for Complete<I> {
    type Item = Result<(u64, ChunkRef, T)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.inner.next() {
            Some(Ok((idx, r, t))) if idx < self.n => {
                if idx != self.next {
                    self.done = true;
                    return Some(Err(self.gap(self.next)));
                }
                self.next = idx + 1;
                Some(Ok((idx, r, t)))
            }
            Some(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            // Beyond the end (or the end itself): the view is complete if nothing is missing.
            _ => {
                self.done = true;
                (self.next < self.n).then(|| Err(self.gap(self.next)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const CS: u64 = 65536;

    fn text_of(lines: &[Entry]) -> String {
        let mut l = Lines::new(Vec::new(), CS);
        for (i, r) in lines {
            l.entry(*i, r).unwrap();
        }
        String::from_utf8(l.finish().unwrap()).unwrap()
    }

    #[test]
    fn worked_example_mfcs() {
        // Format notes §17.1.
        let text = "WbvkSJ3hx09fe8QceZ8emnntErrgbMwOrcYXT2rXPIY= x0000000000000000\n0 x0000000000010000\nWbvkSJ3hx09fe8QceZ8emnntErrgbMwOrcYXT2rXPIY= x0000000000020000\nLLBbiVPQv6RuVGxbuF6iySNkcfgGVnbDVmgN312vpaI= x0000000000030000\n";
        let lines = parse_lines(text.as_bytes(), CS, 205800, "m").unwrap();
        assert_eq!(lines.len(), 4);
        assert_eq!(text_of(&lines), text);
        let mut m = Mfcs::new(CS);
        for (i, r) in &lines {
            if let ChunkRef::Data(_) = r {
                m.push(*i, r);
            }
        }
        assert_eq!(m.finish(4), 3248287972);
    }

    #[test]
    fn zero_runs_equal_single_lines() {
        let mut a = Lines::new(Vec::new(), CS);
        let mut b = Lines::new(Vec::new(), CS);
        a.zeros(3, 70_000).unwrap();
        for i in 3..70_000 {
            b.entry(i, &ChunkRef::Zero).unwrap();
        }
        assert_eq!(a.len(), b.len());
        assert_eq!(a.finish().unwrap(), b.finish().unwrap());
    }

    #[test]
    fn longest_line_is_max_line() {
        let t = text_of(&[(u64::MAX / CS, ChunkRef::Data(Hash32([0xff; 32])))]);
        assert_eq!(t.len() as u64, MAX_LINE);
    }

    #[test]
    fn rejects_bad_lines() {
        for t in [
            "0 x0000000000000001\n",
            "0 x0000000000010000\n0 x0000000000000000\n",
            "0 x0000000000000000",
            "zz x0000000000000000\n",
            "0 x000000000000000g\n",
            "0 ../../etc/passwd\n",
            "0 x0000000000000000 \n",
        ] {
            assert!(
                parse_lines(t.as_bytes(), CS, 1 << 30, "m").is_err(),
                "{t:?}"
            );
        }
        assert!(parse_lines(b"0 x0000000000020000\n", CS, CS, "m").is_err());
        // One endless line fails at once, whatever follows.
        let bomb = vec![b'0'; 10 << 20];
        let err = LineReader::new(&bomb[..], CS, u64::MAX, "m")
            .next()
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("line too long"), "{err}");
    }

    #[test]
    fn lines_across_small_buffers() {
        let lines: Vec<Entry> = (0..500)
            .map(|i| {
                (
                    i * 3,
                    if i % 2 == 0 {
                        ChunkRef::Zero
                    } else {
                        ChunkRef::Data(Hash32([i as u8; 32]))
                    },
                )
            })
            .collect();
        let text = text_of(&lines);
        let r = std::io::BufReader::with_capacity(7, text.as_bytes());
        let back: Vec<Entry> = LineReader::new(r, CS, u64::MAX, "m")
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(back, lines);
    }

    fn ok_iter(v: Vec<Entry>) -> impl Iterator<Item = Result<Entry>> {
        v.into_iter().map(Ok)
    }

    #[test]
    fn merge_newest_wins_and_truncates() {
        let h = |b| ChunkRef::Data(Hash32([b; 32]));
        let a = vec![(0, h(1)), (1, h(2)), (2, h(3))];
        let b = vec![(1, ChunkRef::Zero)];
        let m = Merge::new(vec![ok_iter(a.clone()), ok_iter(b.clone())]).unwrap();
        let out: Vec<_> = Complete::new(m, 2, CS, "m").collect::<Result<_>>().unwrap();
        assert_eq!(out, vec![(0, h(1), 0), (1, ChunkRef::Zero, 1)]);
        // A claimed size beyond the lines is an error, not an allocation.
        let m = Merge::new(vec![ok_iter(a)]).unwrap();
        assert!(Complete::new(m, u64::MAX, CS, "m")
            .collect::<Result<Vec<_>>>()
            .is_err());
        // A gap is an error naming the address.
        let gap = vec![(0, h(1)), (2, h(3))];
        let m = Merge::new(vec![
            ok_iter(gap.clone()),
            ok_iter(vec![(2, ChunkRef::Zero)]),
        ])
        .unwrap();
        let err = Complete::new(m, 3, CS, "m")
            .collect::<Result<Vec<_>>>()
            .unwrap_err();
        assert!(err.to_string().contains("x0000000000010000"), "{err}");
        let m = Merge::new(vec![ok_iter(gap), ok_iter(b)]).unwrap();
        assert!(Complete::new(m, 3, CS, "m")
            .collect::<Result<Vec<_>>>()
            .is_ok());
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// The streamed merge (and its mfcs) equals a plain map merge, over random histories
        /// with growth, shrink and zeroing.
        #[test]
        fn streamed_merge_equals_reference(
            sessions in proptest::collection::vec(
                (0u64..40, proptest::collection::btree_map(0u64..40, 0u8..4, 0..40)), 1..6),
        ) {
            // Session 0 lists every address up to its size; later ones any subset, plus every
            // address beyond the previous size (growth must be listed).
            let mut layers: Vec<Vec<Entry>> = Vec::new();
            let mut sizes = Vec::new();
            for (si, (n, changes)) in sessions.iter().enumerate() {
                let prev = sizes.last().copied().unwrap_or(0);
                let mut l = BTreeMap::new();
                for (i, v) in changes {
                    if *i < *n {
                        l.insert(*i, *v);
                    }
                }
                for i in (if si == 0 { 0 } else { prev })..*n {
                    l.entry(i).or_insert(0);
                }
                layers.push(l.into_iter().map(|(i, v)| (i, if v == 0 { ChunkRef::Zero } else { ChunkRef::Data(Hash32([v; 32])) })).collect());
                sizes.push(*n);
            }
            let last = layers.len() - 1;
            let n = sizes[last];
            // Reference: newest wins in a map, truncated.
            let mut reference: BTreeMap<u64, (ChunkRef, usize)> = BTreeMap::new();
            for (li, l) in layers.iter().enumerate() {
                for (i, r) in l {
                    reference.insert(*i, (*r, li));
                }
            }
            let want: Vec<(u64, ChunkRef, usize)> = reference.range(..n).map(|(i, (r, l))| (*i, *r, *l)).collect();
            let m = Merge::new(layers.iter().cloned().map(ok_iter).collect()).unwrap();
            let got: Vec<_> = Complete::new(m, n, CS, "m").collect::<Result<_>>().unwrap();
            prop_assert_eq!(&got, &want);
            // mfcs from data entries alone equals the CRC of the full text.
            let mut full = Lines::new(Crc::default(), CS);
            let mut m = Mfcs::new(CS);
            for (i, r, _) in &got {
                full.entry(*i, r).unwrap();
                if matches!(r, ChunkRef::Data(_)) { m.push(*i, r); }
            }
            prop_assert_eq!(m.finish(n), full.finish().unwrap().value());
        }
    }
}
