//! The changed ranges of a zvol in a `zfs send -i` stream (OpenZFS `dmu_replay_record_t`):
//! the stream is read record by record and only the headers are looked at.
//!
//! Invariants:
//! * Every record is a 312-byte header, then a payload whose length the header's type fixes
//!   (BEGIN: `drr_payloadlen`; WRITE: the logical or compressed size; WRITE_EMBEDDED: the
//!   embedded size rounded up to 8; OBJECT: its bonus buffer; SPILL: its length; none for the
//!   rest). Payloads are skipped through a fixed buffer, so memory does not follow what a
//!   header claims; a stream that ends before its END record is an error, never a short list.
//! * Only the volume's data object (object 1, `ZVOL_OBJ`) counts: WRITE, WRITE_EMBEDDED,
//!   WRITE_BYREF, FREE and REDACT records of it are changed byte ranges (a FREE range reads as
//!   zeros in the new snapshot); FREEOBJECTS covering object 1 changes everything. Any other
//!   object (the size ZAP, object 2) is ignored: the volume's size comes from `zfs get`.
//! * Byte order follows the BEGIN record's magic (streams are written in the sender's order).
//! * Anything else is an error that names the stream, never a panic.

use std::io::Read;

use crate::error::{Error, Result};

/// The size of one record header.
pub(crate) const RECORD_LEN: usize = 312;
const MAGIC: u64 = 0x2_f5ba_cbac;
/// The objset type of a volume (`DMU_OST_ZVOL`).
const OST_ZVOL: u32 = 3;
/// The object that holds a volume's data (`ZVOL_OBJ`).
const DATA_OBJECT: u64 = 1;

mod kind {
    pub(crate) const BEGIN: u32 = 0;
    pub(crate) const OBJECT: u32 = 1;
    pub(crate) const FREEOBJECTS: u32 = 2;
    pub(crate) const WRITE: u32 = 3;
    pub(crate) const FREE: u32 = 4;
    pub(crate) const END: u32 = 5;
    pub(crate) const WRITE_BYREF: u32 = 6;
    pub(crate) const SPILL: u32 = 7;
    pub(crate) const WRITE_EMBEDDED: u32 = 8;
    pub(crate) const OBJECT_RANGE: u32 = 9;
    pub(crate) const REDACT: u32 = 10;
}

/// What changed in the volume's data, as byte ranges `(offset, length)`; a length that runs
/// past the end means "to the end".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// New data (WRITE and its variants).
    Write { offset: u64, len: u64 },
    /// Freed: zeros in the new snapshot (FREE, REDACT).
    Free { offset: u64, len: u64 },
    /// The whole data object was freed or recreated.
    All,
}

/// How many records of each kind the stream had (for the log and the tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    /// WRITE-type records of the data object.
    pub writes: u64,
    /// FREE records of the data object.
    pub frees: u64,
    pub records: u64,
}

fn bad(what: impl Into<String>) -> Error {
    Error::Tool {
        program: "zfs send".into(),
        what: what.into(),
    }
}

/// One header, read in the stream's byte order.
struct Header<'a> {
    b: &'a [u8; RECORD_LEN],
    big: bool,
}

impl Header<'_> {
    fn u32(&self, at: usize) -> u32 {
        let v: [u8; 4] = self.b[at..at + 4].try_into().expect("4 bytes");
        if self.big {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    }
    fn u64(&self, at: usize) -> u64 {
        let v: [u8; 8] = self.b[at..at + 8].try_into().expect("8 bytes");
        if self.big {
            u64::from_be_bytes(v)
        } else {
            u64::from_le_bytes(v)
        }
    }
    fn u8(&self, at: usize) -> u8 {
        self.b[at]
    }
    /// A field of the record's union (which starts after type and payload length).
    fn field64(&self, at: usize) -> u64 {
        self.u64(8 + at)
    }
}

/// Reads one header; `Ok(false)` at a clean end of input.
fn read_header(r: &mut impl Read, buf: &mut [u8; RECORD_LEN]) -> Result<bool> {
    let mut got = 0;
    while got < RECORD_LEN {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(bad("the stream ends inside a record header")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(bad(format!("reading the stream: {e}"))),
        }
    }
    Ok(true)
}

/// Skips `n` payload bytes.
fn skip(r: &mut impl Read, n: u64) -> Result<()> {
    let copied = std::io::copy(&mut r.by_ref().take(n), &mut std::io::sink())
        .map_err(|e| bad(format!("reading the stream: {e}")))?;
    if copied != n {
        return Err(bad("the stream ends inside a record's payload"));
    }
    Ok(())
}

/// Reads a `zfs send` stream of a volume to its END record, calling `f` for every change to
/// the volume's data in stream order.
pub(crate) fn changes(mut r: impl Read, mut f: impl FnMut(Change)) -> Result<Summary> {
    let mut buf = [0u8; RECORD_LEN];
    if !read_header(&mut r, &mut buf)? {
        return Err(bad("empty stream"));
    }
    let big = match (
        u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes")),
        u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes")),
    ) {
        (MAGIC, _) => false,
        (_, MAGIC) => true,
        _ => return Err(bad("not a zfs send stream (no BEGIN record)")),
    };
    let mut sum = Summary::default();
    loop {
        let h = Header { b: &buf, big };
        sum.records += 1;
        let payload = record(&h, &mut sum, &mut f)?;
        if h.u32(0) == kind::END {
            return Ok(sum);
        }
        skip(&mut r, payload)?;
        if !read_header(&mut r, &mut buf)? {
            return Err(bad("the stream ends before its END record"));
        }
    }
}

/// Interprets one header: reports its change, returns its payload length.
fn record(h: &Header, sum: &mut Summary, f: &mut impl FnMut(Change)) -> Result<u64> {
    let ty = h.u32(0);
    let object = h.field64(0);
    let ours = object == DATA_OBJECT;
    Ok(match ty {
        kind::BEGIN => {
            if sum.records != 1 {
                return Err(bad("a second BEGIN record (a compound stream?)"));
            }
            let versioninfo = h.field64(8);
            if versioninfo & 3 != 1 {
                return Err(bad("not a single dataset's stream"));
            }
            if h.u32(8 + 24) != OST_ZVOL {
                return Err(bad("the stream is not of a volume"));
            }
            h.u32(4) as u64
        }
        _ if sum.records == 1 => return Err(bad("the stream does not start with BEGIN")),
        kind::OBJECT => {
            // drr_bonuslen at 20, drr_raw_bonuslen at 28.
            let raw = h.u32(8 + 28) as u64;
            if raw != 0 {
                raw
            } else {
                (h.u32(8 + 20) as u64).div_ceil(8) * 8
            }
        }
        kind::FREEOBJECTS => {
            let (first, n) = (h.field64(0), h.field64(8));
            if first <= DATA_OBJECT && DATA_OBJECT - first < n {
                f(Change::All);
            }
            0
        }
        kind::WRITE => {
            let (offset, len) = (h.field64(16), h.field64(24));
            if ours {
                sum.writes += 1;
                f(Change::Write { offset, len });
            }
            // drr_compressiontype at 42; drr_compressed_size at 88.
            if h.u8(8 + 42) != 0 {
                h.field64(88)
            } else {
                len
            }
        }
        kind::WRITE_BYREF => {
            if ours {
                sum.writes += 1;
                f(Change::Write {
                    offset: h.field64(8),
                    len: h.field64(16),
                });
            }
            0
        }
        kind::WRITE_EMBEDDED => {
            if ours {
                sum.writes += 1;
                f(Change::Write {
                    offset: h.field64(8),
                    len: h.field64(16),
                });
            }
            // drr_psize at 44.
            (h.u32(8 + 44) as u64).div_ceil(8) * 8
        }
        kind::FREE | kind::REDACT => {
            if ours {
                if ty == kind::FREE {
                    sum.frees += 1;
                }
                f(Change::Free {
                    offset: h.field64(8),
                    len: h.field64(16),
                });
            }
            0
        }
        kind::SPILL => {
            // drr_compressed_size at 32, else drr_length at 8.
            match h.field64(32) {
                0 => h.field64(8),
                c => c,
            }
        }
        kind::END | kind::OBJECT_RANGE => 0,
        other => return Err(bad(format!("unknown record type {other}"))),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds stream records for tests (little-endian unless `big`).
    pub(crate) struct Builder {
        pub out: Vec<u8>,
        pub big: bool,
    }

    impl Builder {
        pub fn new(big: bool) -> Builder {
            let mut b = Builder {
                out: Vec::new(),
                big,
            };
            let mut r = b.blank(kind::BEGIN);
            b.put64(&mut r, 8, MAGIC);
            b.put64(&mut r, 16, 1 | (17 << 2));
            b.put32(&mut r, 32, OST_ZVOL);
            b.out.extend_from_slice(&r);
            b
        }
        fn blank(&self, ty: u32) -> [u8; RECORD_LEN] {
            let mut r = [0u8; RECORD_LEN];
            self.put32(&mut r, 0, ty);
            r
        }
        fn put32(&self, r: &mut [u8], at: usize, v: u32) {
            let b = if self.big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            r[at..at + 4].copy_from_slice(&b);
        }
        fn put64(&self, r: &mut [u8], at: usize, v: u64) {
            let b = if self.big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            r[at..at + 8].copy_from_slice(&b);
        }
        pub fn write(mut self, object: u64, offset: u64, data: &[u8]) -> Builder {
            let mut r = self.blank(kind::WRITE);
            self.put64(&mut r, 8, object);
            self.put64(&mut r, 24, offset);
            self.put64(&mut r, 32, data.len() as u64);
            self.out.extend_from_slice(&r);
            self.out.extend_from_slice(data);
            self
        }
        pub fn free(mut self, object: u64, offset: u64, len: u64) -> Builder {
            let mut r = self.blank(kind::FREE);
            self.put64(&mut r, 8, object);
            self.put64(&mut r, 16, offset);
            self.put64(&mut r, 24, len);
            self.out.extend_from_slice(&r);
            self
        }
        pub fn object(mut self, object: u64, bonuslen: u32) -> Builder {
            let mut r = self.blank(kind::OBJECT);
            self.put64(&mut r, 8, object);
            self.put32(&mut r, 28, bonuslen);
            self.out.extend_from_slice(&r);
            self.out
                .extend(std::iter::repeat_n(7u8, bonuslen.div_ceil(8) as usize * 8));
            self
        }
        pub fn end(mut self) -> Vec<u8> {
            let r = self.blank(kind::END);
            self.out.extend_from_slice(&r);
            self.out
        }
    }

    fn all(stream: &[u8]) -> Result<(Vec<Change>, Summary)> {
        let mut v = Vec::new();
        let s = changes(stream, |c| v.push(c))?;
        Ok((v, s))
    }

    #[test]
    fn writes_and_frees_of_the_data_object_only() {
        for big in [false, true] {
            let s = Builder::new(big)
                .object(1, 0)
                .object(2, 13)
                .write(1, 65536, &[1u8; 16384])
                .write(2, 0, &[2u8; 512])
                .free(1, 1 << 20, 1 << 16)
                .free(1, 1 << 30, u64::MAX)
                .end();
            let (v, sum) = all(&s).unwrap();
            assert_eq!(
                v,
                [
                    Change::Write {
                        offset: 65536,
                        len: 16384
                    },
                    Change::Free {
                        offset: 1 << 20,
                        len: 1 << 16
                    },
                    Change::Free {
                        offset: 1 << 30,
                        len: u64::MAX
                    },
                ]
            );
            assert_eq!((sum.writes, sum.frees, sum.records), (1, 2, 8));
        }
    }

    #[test]
    fn damage_is_an_error() {
        let good = Builder::new(false).write(1, 0, &[0u8; 4096]).end();
        assert!(all(&good).is_ok());
        // Truncated anywhere: inside a header, inside a payload, before END.
        for cut in [
            0,
            100,
            RECORD_LEN + 10,
            2 * RECORD_LEN + 100,
            good.len() - 1,
        ] {
            assert!(all(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(all(&good[..2 * RECORD_LEN + 4096]).is_err());
        // No magic; not a volume; a record type from the future.
        let mut g = good.clone();
        g[8] ^= 1;
        assert!(all(&g).is_err());
        let mut g = good.clone();
        g[32] = 2;
        assert!(all(&g).is_err());
        let mut g = good.clone();
        g[RECORD_LEN] = 77;
        assert!(all(&g).is_err());
        // A payload length claimed far beyond the input is a truncation, not an allocation.
        let mut g = good.clone();
        g[RECORD_LEN + 32..RECORD_LEN + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(all(&g).is_err());
    }

    /// Recorded in the VM (tests/vm/zfs.sh): `zfs send -i @a tank/vms/fx@b` of a 16K-block zvol
    /// after one block written, one discarded; `send-i.dump` is `zstream dump -v` of it.
    #[test]
    fn a_recorded_stream_gives_what_zstream_dump_shows() {
        let s = include_bytes!("../../tests/fixtures/zfs/send-i.zstream");
        let (v, sum) = all(s).unwrap();
        assert_eq!(
            v,
            [
                Change::Free {
                    offset: 65536,
                    len: u64::MAX
                },
                Change::Free {
                    offset: 0,
                    len: 16384
                },
                Change::Free {
                    offset: 32768,
                    len: 16384
                },
                Change::Write {
                    offset: 49152,
                    len: 16384
                },
            ]
        );
        assert_eq!((sum.writes, sum.frees, sum.records), (1, 3, 11));
        let dump = include_str!("../../tests/fixtures/zfs/send-i.dump");
        assert!(dump.contains("Total DRR_WRITE records = 1 "));
    }

    #[test]
    fn freeing_the_data_object_changes_everything() {
        let mut s = Builder::new(false);
        let mut r = s.blank(kind::FREEOBJECTS);
        s.put64(&mut r, 8, 0);
        s.put64(&mut r, 16, 5);
        s.out.extend_from_slice(&r);
        let (v, _) = all(&s.end()).unwrap();
        assert_eq!(v, [Change::All]);
    }
}
