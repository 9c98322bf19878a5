//! Manifests (format §10): per-session lists of `hash xADDR` / `0 xADDR` lines, and the merged
//! (full) view of a session.
//!
//! The merged view is built only from lines that exist: it is never sized from a `volsize`
//! claimed by metadata, so a hostile archive cannot make us allocate by lying about the size.

use std::fmt::Write as _;

use crate::error::{Error, Result};
use crate::format::ids::Hash32;

/// What one chunk address holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkRef {
    Zero,
    Data(Hash32),
}

/// One session's own manifest lines: (chunk index, value), strictly ascending.
pub type SessionLines = Vec<(u64, ChunkRef)>;

/// Longest manifest line: 44-char hash, space, `x` + 16 hex digits, newline.
pub const MAX_LINE: u64 = 44 + 1 + 17 + 1;

/// Number of chunks of a volume (the last one may be partial).
pub fn chunk_count(volsize: u64, chunksize: u64) -> u64 {
    volsize.div_ceil(chunksize)
}

/// Length of chunk `idx` of a volume of `volsize` bytes.
pub fn chunk_len(idx: u64, volsize: u64, chunksize: u64) -> u64 {
    (volsize - idx * chunksize).min(chunksize)
}

/// Parses a decompressed manifest. Checks the line syntax, alignment, strict ascending order and
/// that no address lies beyond `volsize`.
pub fn parse_lines(text: &[u8], chunksize: u64, volsize: u64, path: &str) -> Result<SessionLines> {
    let bad =
        |n: usize, what: &str| Error::corrupt(path, format!("manifest line {}: {what}", n + 1));
    let mut out = Vec::with_capacity(text.len() / MAX_LINE as usize + 1);
    let mut last: Option<u64> = None;
    let body = match text.last() {
        None => return Ok(out),
        Some(b'\n') => &text[..text.len() - 1],
        Some(_) => return Err(Error::corrupt(path, "manifest does not end with a newline")),
    };
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(line).map_err(|_| bad(n, "not text"))?;
        let (h, a) = line.split_once(' ').ok_or_else(|| bad(n, "no separator"))?;
        let a = a
            .strip_prefix('x')
            .filter(|a| a.len() == 16)
            .ok_or_else(|| bad(n, "bad address"))?;
        if !a.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(n, "bad address"));
        }
        let addr = u64::from_str_radix(a, 16).map_err(|_| bad(n, "bad address"))?;
        if addr % chunksize != 0 {
            return Err(bad(n, "address not aligned to the chunk size"));
        }
        if addr > volsize {
            return Err(bad(n, "address beyond the volume size"));
        }
        let idx = addr / chunksize;
        if last.is_some_and(|l| idx <= l) {
            return Err(bad(n, "addresses not in ascending order"));
        }
        last = Some(idx);
        let r = if h == "0" {
            ChunkRef::Zero
        } else {
            ChunkRef::Data(Hash32::parse_b64(h).ok_or_else(|| bad(n, "bad hash"))?)
        };
        out.push((idx, r));
    }
    Ok(out)
}

pub fn push_line(out: &mut String, idx: u64, chunksize: u64, r: &ChunkRef) {
    match r {
        ChunkRef::Zero => out.push('0'),
        ChunkRef::Data(h) => out.push_str(&h.to_b64()),
    }
    let _ = writeln!(out, " x{:016x}", idx * chunksize);
}

pub fn lines_to_text(lines: &[(u64, ChunkRef)], chunksize: u64) -> String {
    let mut s = String::with_capacity(lines.len() * MAX_LINE as usize);
    for (i, r) in lines {
        push_line(&mut s, *i, chunksize, r);
    }
    s
}

/// The full view of one session: for every chunk index, its value and the index (into the
/// volume's sessions, oldest first) of the session whose directory holds the chunk file.
#[derive(Clone, Debug, Default)]
pub struct Merged {
    pub chunksize: u64,
    pub volsize: u64,
    pub entries: Vec<(ChunkRef, u16)>,
}

impl Merged {
    /// Merges session manifests given oldest first (newest entry per address wins, §10.2),
    /// truncated to `volsize`. Fails if any address of the result has no line.
    pub fn build(
        layers: &[(u16, &SessionLines)],
        chunksize: u64,
        volsize: u64,
        what: &str,
    ) -> Result<Merged> {
        let n = chunk_count(volsize, chunksize);
        let total: u64 = layers.iter().map(|(_, l)| l.len() as u64).sum();
        if n > total {
            return Err(Error::corrupt(
                what,
                format!("merged manifest incomplete: {n} chunks but only {total} manifest lines"),
            ));
        }
        let mut dense: Vec<Option<(ChunkRef, u16)>> = vec![None; n as usize];
        for (origin, lines) in layers {
            for (idx, r) in lines.iter() {
                if let Some(slot) = dense.get_mut(*idx as usize) {
                    *slot = Some((*r, *origin));
                }
            }
        }
        let mut entries = Vec::with_capacity(dense.len());
        for (i, e) in dense.into_iter().enumerate() {
            entries.push(e.ok_or_else(|| {
                Error::corrupt(
                    what,
                    format!(
                        "merged manifest has no entry for address x{:016x}",
                        i as u64 * chunksize
                    ),
                )
            })?);
        }
        Ok(Merged {
            chunksize,
            volsize,
            entries,
        })
    }

    /// CRC32 of the merged manifest text (the `mfcs` of §10.3).
    pub fn mfcs(&self) -> u32 {
        mfcs_of(self.entries.iter().map(|(r, _)| r), self.chunksize)
    }

    pub fn get(&self, idx: u64) -> Option<&(ChunkRef, u16)> {
        self.entries.get(idx as usize)
    }
}

/// CRC32 over manifest lines for chunk indices 0.. in order.
pub fn mfcs_of<'a>(refs: impl Iterator<Item = &'a ChunkRef>, chunksize: u64) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    let mut line = String::with_capacity(64);
    for (i, r) in refs.enumerate() {
        line.clear();
        push_line(&mut line, i as u64, chunksize, r);
        crc.update(line.as_bytes());
    }
    crc.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u64 = 65536;

    #[test]
    fn worked_example_mfcs() {
        // Format notes §17.1.
        let text = "WbvkSJ3hx09fe8QceZ8emnntErrgbMwOrcYXT2rXPIY= x0000000000000000\n0 x0000000000010000\nWbvkSJ3hx09fe8QceZ8emnntErrgbMwOrcYXT2rXPIY= x0000000000020000\nLLBbiVPQv6RuVGxbuF6iySNkcfgGVnbDVmgN312vpaI= x0000000000030000\n";
        let lines = parse_lines(text.as_bytes(), CS, 205800, "m").unwrap();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines_to_text(&lines, CS), text);
        let m = Merged::build(&[(0, &lines)], CS, 205800, "m").unwrap();
        assert_eq!(m.mfcs(), 3248287972);
    }

    #[test]
    fn merge_newest_wins_and_truncates() {
        let h = |b| ChunkRef::Data(Hash32([b; 32]));
        let a = vec![(0, h(1)), (1, h(2)), (2, h(3))];
        let b = vec![(1, ChunkRef::Zero)];
        let m = Merged::build(&[(0, &a), (1, &b)], CS, 2 * CS, "m").unwrap();
        assert_eq!(m.entries, vec![(h(1), 0), (ChunkRef::Zero, 1)]);
        // A claimed huge size with few lines is an error, not an allocation.
        assert!(Merged::build(&[(0, &a)], CS, u64::MAX, "m").is_err());
        // A gap is an error.
        let gap = vec![(0, h(1)), (2, h(3))];
        let again = vec![(2, ChunkRef::Zero)];
        let err = Merged::build(&[(0, &gap), (1, &again)], CS, 3 * CS, "m").unwrap_err();
        assert!(err.to_string().contains("x0000000000010000"), "{err}");
        assert!(Merged::build(&[(0, &gap), (1, &b)], CS, 3 * CS, "m").is_ok());
    }

    #[test]
    fn longest_line_is_max_line() {
        let mut s = String::new();
        push_line(
            &mut s,
            u64::MAX / CS,
            CS,
            &ChunkRef::Data(Hash32([0xff; 32])),
        );
        assert_eq!(s.len() as u64, MAX_LINE);
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
        ] {
            assert!(
                parse_lines(t.as_bytes(), CS, 1 << 30, "m").is_err(),
                "{t:?}"
            );
        }
        assert!(parse_lines(b"0 x0000000000020000\n", CS, CS, "m").is_err());
    }
}
