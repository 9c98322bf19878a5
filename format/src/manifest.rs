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
use crate::ids::Hash32;

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

/// Hex digit values, 0xff for anything else.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// The 16 hex digits of an address.
fn parse_hex16(d: &[u8]) -> Option<u64> {
    let mut addr = 0u64;
    let mut bad = 0u8;
    for &c in &d[..16] {
        let v = HEX_VALUE[c as usize];
        bad |= v;
        addr = addr << 4 | (v & 15) as u64;
    }
    // Any invalid digit set the high bits of `bad`.
    (bad & 0xf0 == 0).then_some(addr)
}

/// Parses one manifest line (without its newline): `(chunk index, value)`.
pub fn parse_line(
    line: &[u8],
    chunksize: u64,
    volsize: u64,
) -> std::result::Result<Entry, &'static str> {
    // The two shapes every manifest is made of, first (a few ns per line); anything else
    // goes the general way, which says what is wrong.
    let fast = match line.len() {
        19 if line[..3] == *b"0 x" => parse_hex16(&line[3..]).map(|a| (a, None)),
        62 if line[44] == b' ' && line[45] == b'x' => {
            parse_hex16(&line[46..]).map(|a| (a, Some(&line[..44])))
        }
        _ => None,
    };
    let (addr, hash) = match fast {
        Some(x) => x,
        None => {
            let sp = line.iter().position(|&b| b == b' ').ok_or("no separator")?;
            let (h, a) = (&line[..sp], &line[sp + 1..]);
            if a.len() != 17 || a[0] != b'x' {
                return Err("bad address");
            }
            let addr = parse_hex16(&a[1..]).ok_or("bad address")?;
            (addr, (h != b"0").then_some(h))
        }
    };
    if addr % chunksize != 0 {
        return Err("address not aligned to the chunk size");
    }
    // Every address is that of a chunk of the volume: below its size (an empty volume's
    // manifest may still name address 0).
    if addr >= volsize && addr != 0 {
        return Err("address beyond the volume size");
    }
    let r = match hash {
        None => ChunkRef::Zero,
        Some(h) => {
            let s = std::str::from_utf8(h).map_err(|_| "bad hash")?;
            ChunkRef::Data(Hash32::parse_b64(s).ok_or("bad hash")?)
        }
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

impl<R: BufRead> LineReader<R> {
    /// The next line parsed: straight from the reader's buffer when it holds the whole line
    /// (nearly always), else gathered in `self.buf`.
    fn next_entry(&mut self) -> Result<Option<Entry>> {
        let in_place = match self.r.fill_buf() {
            Ok(avail) => {
                let look = &avail[..avail.len().min(MAX_LINE as usize)];
                look.iter().position(|&b| b == b'\n').map(|nl| {
                    (
                        parse_line(&look[..nl], self.chunksize, self.volsize),
                        nl + 1,
                    )
                })
            }
            Err(_) => None,
        };
        let parsed = match in_place {
            Some((p, used)) => {
                self.r.consume(used);
                p
            }
            None => match self.next_line()? {
                None => return Ok(None),
                Some(()) => parse_line(&self.buf, self.chunksize, self.volsize),
            },
        };
        match parsed {
            Err(what) => Err(self.bad(what)),
            Ok((idx, _)) if self.last.is_some_and(|l| idx <= l) => {
                Err(self.bad("addresses not in ascending order"))
            }
            Ok(e) => {
                self.last = Some(e.0);
                self.line_no += 1;
                Ok(Some(e))
            }
        }
    }
}

impl<R: BufRead> Iterator for LineReader<R> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if self.done {
            return None;
        }
        match self.next_entry() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
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

/// Adds `delta` to the hex digit at `pos` of a line, carrying leftwards.
fn count_up(line: &mut [u8; 20], pos: usize, delta: u8) {
    let (mut i, mut add) = (pos, delta);
    loop {
        let v = HEX_VALUE[line[i] as usize] + add;
        if v < 16 {
            line[i] = HEX[v as usize];
            return;
        }
        line[i] = HEX[(v - 16) as usize];
        if i == 3 {
            return; // past the last address: wraps, as the arithmetic would
        }
        add = 1;
        i -= 1;
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
    /// Zero lines given one by one and not written yet: `from..to`.
    zero_run: Option<(u64, u64)>,
}

const FLUSH_AT: usize = 1 << 16;

impl<W: Write> Lines<W> {
    pub fn new(w: W, chunksize: u64) -> Self {
        Lines {
            w,
            buf: Vec::with_capacity(FLUSH_AT + 128),
            chunksize,
            len: 0,
            zero_run: None,
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

    fn flush_zero_run(&mut self) -> std::io::Result<()> {
        match self.zero_run.take() {
            Some((from, to)) => self.write_zeros(from, to),
            None => Ok(()),
        }
    }

    pub fn entry(&mut self, idx: u64, r: &ChunkRef) -> std::io::Result<()> {
        if let ChunkRef::Zero = r {
            // Consecutive zero lines are written as one run.
            match &mut self.zero_run {
                Some((_, to)) if *to == idx => *to += 1,
                _ => {
                    self.flush_zero_run()?;
                    self.zero_run = Some((idx, idx + 1));
                }
            }
            return Ok(());
        }
        self.flush_zero_run()?;
        if let ChunkRef::Data(h) = r {
            self.buf.extend_from_slice(h.to_b64().as_bytes());
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
        if from >= to {
            return Ok(());
        }
        match &mut self.zero_run {
            Some((_, end)) if *end == from => *end = to,
            _ => {
                self.flush_zero_run()?;
                self.zero_run = Some((from, to));
            }
        }
        Ok(())
    }

    fn write_zeros(&mut self, from: u64, to: u64) -> std::io::Result<()> {
        // Consecutive addresses differ by the chunk size, a power of two: the line is kept as
        // a template whose hex digits are counted up in place (one digit, rarely a carry).
        let cs = self.chunksize;
        let odometer = cs.is_power_of_two().then(|| {
            let p = (cs.trailing_zeros() / 4) as usize;
            (3 + 15 - p, (cs >> (4 * p)) as u8)
        });
        let mut line = *b"0 x0000000000000000\n";
        put_hex16(&mut line[3..19], from * cs);
        let mut idx = from;
        while idx < to {
            let room = (FLUSH_AT + 64 - self.buf.len()) / ZERO_LINE as usize;
            let n = (to - idx).min(room.max(1) as u64);
            let at = self.buf.len();
            self.buf.resize(at + n as usize * ZERO_LINE as usize, 0);
            for (k, out) in self.buf[at..]
                .chunks_exact_mut(ZERO_LINE as usize)
                .enumerate()
            {
                match odometer {
                    Some((pos, delta)) => {
                        out.copy_from_slice(&line);
                        count_up(&mut line, pos, delta);
                    }
                    None => {
                        out[..3].copy_from_slice(b"0 x");
                        put_hex16(&mut out[3..19], (idx + k as u64) * cs);
                        out[19] = b'\n';
                    }
                }
            }
            idx += n;
            self.maybe_flush()?;
        }
        Ok(())
    }

    /// Bytes written so far (flushed, buffered, or in a pending run of zero lines).
    pub fn len(&self) -> u64 {
        let run = self.zero_run.map_or(0, |(a, b)| (b - a) * ZERO_LINE);
        self.len + self.buf.len() as u64 + run
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.flush_zero_run()?;
        self.w.write_all(&self.buf)?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// A session's manifest kept compactly until it is written out: runs of zero lines as one
/// record, data lines as index and hash. Its text is produced from it (twice costs nothing:
/// [`ManifestLog::text_len`] is known exactly beforehand), so a multi-terabyte first session's
/// gigabytes of `0 x…` lines are never stored, only compressed as they are generated.
pub struct ManifestLog<W: Write> {
    w: W,
    zero_run: Option<(u64, u64)>,
    text_len: u64,
    lines: u64,
}

const LOG_ZEROS: u8 = 0;
const LOG_DATA: u8 = 1;

impl<W: Write> ManifestLog<W> {
    pub fn new(w: W) -> Self {
        ManifestLog {
            w,
            zero_run: None,
            text_len: 0,
            lines: 0,
        }
    }

    fn flush_run(&mut self) -> std::io::Result<()> {
        if let Some((a, b)) = self.zero_run.take() {
            let mut rec = [0u8; 17];
            rec[0] = LOG_ZEROS;
            rec[1..9].copy_from_slice(&a.to_le_bytes());
            rec[9..].copy_from_slice(&b.to_le_bytes());
            self.w.write_all(&rec)?;
        }
        Ok(())
    }

    /// Zero lines for `from..to`.
    pub fn zeros(&mut self, from: u64, to: u64) -> std::io::Result<()> {
        if from >= to {
            return Ok(());
        }
        self.text_len += (to - from) * ZERO_LINE;
        self.lines += to - from;
        match &mut self.zero_run {
            Some((_, end)) if *end == from => *end = to,
            _ => {
                self.flush_run()?;
                self.zero_run = Some((from, to));
            }
        }
        Ok(())
    }

    pub fn entry(&mut self, idx: u64, r: &ChunkRef) -> std::io::Result<()> {
        match r {
            ChunkRef::Zero => self.zeros(idx, idx + 1),
            ChunkRef::Data(h) => {
                self.flush_run()?;
                let mut rec = [0u8; 41];
                rec[0] = LOG_DATA;
                rec[1..9].copy_from_slice(&idx.to_le_bytes());
                rec[9..].copy_from_slice(&h.0);
                self.text_len += MAX_LINE;
                self.lines += 1;
                self.w.write_all(&rec)
            }
        }
    }

    /// The length of the manifest's text.
    pub fn text_len(&self) -> u64 {
        self.text_len
    }

    /// Lines so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.flush_run()?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Writes the text of a manifest log (what [`ManifestLog::finish`] gave) to `out`.
pub fn write_log_text(
    mut log: impl std::io::Read,
    chunksize: u64,
    out: impl Write,
) -> std::io::Result<()> {
    let mut lines = Lines::new(out, chunksize);
    let mut tag = [0u8; 1];
    loop {
        match log.read_exact(&mut tag) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        match tag[0] {
            LOG_ZEROS => {
                let mut b = [0u8; 16];
                log.read_exact(&mut b)?;
                let from = u64::from_le_bytes(b[..8].try_into().expect("8"));
                let to = u64::from_le_bytes(b[8..].try_into().expect("8"));
                lines.zeros(from, to)?;
            }
            LOG_DATA => {
                let mut b = [0u8; 40];
                log.read_exact(&mut b)?;
                let idx = u64::from_le_bytes(b[..8].try_into().expect("8"));
                let h = Hash32(b[8..].try_into().expect("32"));
                lines.entry(idx, &ChunkRef::Data(h))?;
            }
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a damaged manifest log",
                ))
            }
        }
    }
    lines.finish().map(drop)
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
///
/// The layer just read from is kept out of the heap while its entries stay below every other
/// layer's head: the base session of a volume lists every address and later ones few, so
/// nearly every entry is a comparison, not a heap operation.
pub struct Merge<I> {
    layers: Vec<I>,
    /// Min-heap on (index, newest layer first).
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(u64, std::cmp::Reverse<usize>, Slot)>>,
    /// The head of the layer last advanced, not yet in the heap.
    held: Option<(u64, usize, ChunkRef)>,
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

/// Generic over the layers' error type: the layers are read by the caller (from a destination,
/// with its own errors); the merge adds none.
impl<E, I: Iterator<Item = Result<Entry, E>>> Merge<I> {
    pub fn new(layers: Vec<I>) -> Result<Self, E> {
        let mut m = Merge {
            layers,
            heap: std::collections::BinaryHeap::new(),
            held: None,
            failed: false,
        };
        for l in 0..m.layers.len() {
            if let Some(e) = m.layers[l].next() {
                let (idx, r) = e?;
                m.push(idx, l, r);
            }
        }
        Ok(m)
    }

    fn push(&mut self, idx: u64, layer: usize, r: ChunkRef) {
        self.heap
            .push(std::cmp::Reverse((idx, std::cmp::Reverse(layer), Slot(r))));
    }

    /// The smallest head (newest layer first among equal indices).
    fn pop_min(&mut self) -> Option<(u64, usize, ChunkRef)> {
        if let Some((idx, layer, r)) = self.held {
            let below = match self.heap.peek() {
                None => true,
                Some(std::cmp::Reverse((i, std::cmp::Reverse(l), _))) => {
                    idx < *i || (idx == *i && layer > *l)
                }
            };
            self.held = None;
            if below {
                return Some((idx, layer, r));
            }
            self.push(idx, layer, r);
        }
        let std::cmp::Reverse((idx, std::cmp::Reverse(layer), Slot(r))) = self.heap.pop()?;
        Some((idx, layer, r))
    }

    /// Reads the next entry of `layer` into the held slot.
    fn advance(&mut self, layer: usize) -> Result<(), E> {
        if let Some(e) = self.layers[layer].next() {
            let (idx, r) = e?;
            match self.held.take() {
                None => self.held = Some((idx, layer, r)),
                Some((hi, hl, hr)) => {
                    self.push(hi, hl, hr);
                    self.held = Some((idx, layer, r));
                }
            }
        }
        Ok(())
    }
}

impl<E, I: Iterator<Item = Result<Entry, E>>> Iterator for Merge<I> {
    /// `(index, value, layer)`.
    type Item = Result<(u64, ChunkRef, usize), E>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let (idx, layer, r) = self.pop_min()?;
        let mut step = || -> Result<(), E> {
            self.advance(layer)?;
            // Older layers with the same index: skip their entries.
            loop {
                let older = match (&self.held, self.heap.peek()) {
                    (Some((i, l, _)), _) if *i == idx => Some(*l),
                    (_, Some(std::cmp::Reverse((i, std::cmp::Reverse(l), _)))) if *i == idx => {
                        let l = *l;
                        self.heap.pop();
                        Some(l)
                    }
                    _ => None,
                };
                match older {
                    Some(l) => {
                        if matches!(&self.held, Some((i, hl, _)) if *i == idx && *hl == l) {
                            self.held = None;
                        }
                        self.advance(l)?;
                    }
                    None => break,
                }
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

/// A gap is damage in the format's terms, converted into the caller's error type.
impl<T, E: From<Error>, I: Iterator<Item = Result<(u64, ChunkRef, T), E>>> Iterator
    for Complete<I>
{
    type Item = Result<(u64, ChunkRef, T), E>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.inner.next() {
            Some(Ok((idx, r, t))) if idx < self.n => {
                if idx != self.next {
                    self.done = true;
                    return Some(Err(self.gap(self.next).into()));
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
                (self.next < self.n).then(|| Err(self.gap(self.next).into()))
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
    fn counted_zero_lines_equal_formatted_ones() {
        for f in 1..=6 {
            let cs = 32768u64 << f;
            let mut a = Lines::new(Vec::new(), cs);
            a.zeros(0xffff0, 0x100_0100).unwrap();
            let text = a.finish().unwrap();
            for (k, line) in text.chunks(ZERO_LINE as usize).enumerate().step_by(997) {
                let want = format!("0 x{:016x}\n", (0xffff0 + k as u64) * cs);
                assert_eq!(line, want.as_bytes(), "chunk size {cs}");
            }
        }
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
    fn a_log_gives_back_the_text_of_its_lines() {
        let h = |b| ChunkRef::Data(Hash32([b; 32]));
        let entries = [
            (0, ChunkRef::Zero),
            (1, ChunkRef::Zero),
            (2, h(1)),
            (3, ChunkRef::Zero),
            (9, h(2)),
        ];
        let mut log = ManifestLog::new(Vec::new());
        let mut direct = Lines::new(Vec::new(), CS);
        for (i, r) in &entries {
            log.entry(*i, r).unwrap();
            direct.entry(*i, r).unwrap();
        }
        log.zeros(10, 70_000).unwrap();
        direct.zeros(10, 70_000).unwrap();
        let want = direct.finish().unwrap();
        assert_eq!(log.text_len(), want.len() as u64);
        let bytes = log.finish().unwrap();
        assert!(
            bytes.len() < 200,
            "runs are one record each: {}",
            bytes.len()
        );
        let mut text = Vec::new();
        write_log_text(&bytes[..], CS, &mut text).unwrap();
        assert_eq!(text, want);
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
