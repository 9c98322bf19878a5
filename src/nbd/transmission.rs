//! The transmission phase: requests, simple replies and structured reply chunks, block status
//! descriptors (`proto.md`, "Transmission" and "Values: Transmission phase").

use super::{bounded, Cursor, Malformed};

pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub(crate) const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Transmission flags (what an export offers).
pub mod flag {
    pub(crate) const HAS_FLAGS: u16 = 1 << 0;
    pub(crate) const READ_ONLY: u16 = 1 << 1;
    pub(crate) const SEND_FLUSH: u16 = 1 << 2;
    pub(crate) const SEND_FUA: u16 = 1 << 3;
    pub(crate) const SEND_TRIM: u16 = 1 << 5;
    pub(crate) const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub(crate) const SEND_DF: u16 = 1 << 7;
    pub(crate) const CAN_MULTI_CONN: u16 = 1 << 8;
    pub(crate) const SEND_CACHE: u16 = 1 << 10;
    pub(crate) const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Command flags (on a request).
pub mod cmd_flag {
    pub(crate) const FUA: u16 = 1 << 0;
    pub(crate) const NO_HOLE: u16 = 1 << 1;
    pub(crate) const DF: u16 = 1 << 2;
    pub(crate) const REQ_ONE: u16 = 1 << 3;
    pub(crate) const FAST_ZERO: u16 = 1 << 4;
}

/// Error values of replies.
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const EINVAL: u32 = 22;
    pub(crate) const ENOSPC: u32 = 28;
    pub(crate) const EOVERFLOW: u32 = 75;
    pub(crate) const ENOTSUP: u32 = 95;
    pub(crate) const ESHUTDOWN: u32 = 108;
}

/// Structured reply chunk types.
pub mod reply_type {
    pub(crate) const NONE: u16 = 0;
    pub(crate) const OFFSET_DATA: u16 = 1;
    pub(crate) const OFFSET_HOLE: u16 = 2;
    pub(crate) const BLOCK_STATUS: u16 = 5;
    pub const ERROR: u16 = (1 << 15) + 1;
    pub(crate) const ERROR_OFFSET: u16 = (1 << 15) + 2;
}

/// The last chunk of a structured reply.
pub(crate) const REPLY_FLAG_DONE: u16 = 1;

/// `base:allocation` status flags.
pub mod state {
    pub(crate) const HOLE: u32 = 1 << 0;
    pub const ZERO: u32 = 1 << 1;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    /// A command this module does not know (answered `NBD_EINVAL`).
    Other(u16),
}

impl Command {
    pub(crate) fn from_code(c: u16) -> Command {
        match c {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            5 => Command::Cache,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            o => Command::Other(o),
        }
    }

    #[cfg(any(test, feature = "fuzz-targets"))]
    pub fn code(self) -> u16 {
        match self {
            Command::Read => 0,
            Command::Write => 1,
            Command::Disc => 2,
            Command::Flush => 3,
            Command::Trim => 4,
            Command::Cache => 5,
            Command::WriteZeroes => 6,
            Command::BlockStatus => 7,
            Command::Other(o) => o,
        }
    }

    /// The command flags valid on this command (FUA is accepted on every command, as clients
    /// are known to set it everywhere).
    pub(crate) fn valid_flags(self) -> u16 {
        cmd_flag::FUA
            | match self {
                Command::Read => cmd_flag::DF,
                Command::WriteZeroes => cmd_flag::NO_HOLE | cmd_flag::FAST_ZERO,
                Command::BlockStatus => cmd_flag::REQ_ONE,
                _ => 0,
            }
    }
}

/// A request header (a write's data follows it on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    pub(crate) const LEN: usize = 28;

    /// A wrong magic ends the connection: nothing after it can be trusted to be in step.
    pub fn parse(b: &[u8; Self::LEN]) -> Result<Request, Malformed> {
        let mut c = Cursor::new(b);
        if c.u32() != Some(REQUEST_MAGIC) {
            return Err(Malformed("a request without the request magic"));
        }
        Ok(Request {
            flags: c.u16().expect("in bounds"),
            command: Command::from_code(c.u16().expect("in bounds")),
            cookie: c.u64().expect("in bounds"),
            offset: c.u64().expect("in bounds"),
            length: c.u32().expect("in bounds"),
        })
    }

    #[cfg(any(test, feature = "fuzz-targets"))]
    pub(crate) fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.code().to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// The end of the range the request names, if it does not overflow.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.length as u64)
    }
}

/// A simple reply (a successful simple read's data follows it).
pub(crate) fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// The header of a structured reply chunk with `length` bytes of payload.
pub(crate) fn chunk_header(flags: u16, kind: u16, cookie: u64, length: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..].copy_from_slice(&length.to_be_bytes());
    b
}

fn done(d: bool) -> u16 {
    if d {
        REPLY_FLAG_DONE
    } else {
        0
    }
}

/// `NBD_REPLY_TYPE_OFFSET_DATA` up to its data: `data_len` bytes at `offset` follow it.
pub(crate) fn offset_data_header(cookie: u64, offset: u64, data_len: u32, last: bool) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[..20].copy_from_slice(&chunk_header(
        done(last),
        reply_type::OFFSET_DATA,
        cookie,
        data_len
            .checked_add(8)
            .expect("data chunks are far below 4 GiB"),
    ));
    b[20..].copy_from_slice(&offset.to_be_bytes());
    b
}

/// `NBD_REPLY_TYPE_OFFSET_HOLE`: `size` bytes at `offset` read as zeros.
pub(crate) fn offset_hole(cookie: u64, offset: u64, size: u32, last: bool) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..20].copy_from_slice(&chunk_header(
        done(last),
        reply_type::OFFSET_HOLE,
        cookie,
        12,
    ));
    b[20..28].copy_from_slice(&offset.to_be_bytes());
    b[28..].copy_from_slice(&size.to_be_bytes());
    b
}

/// One block status descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub length: u32,
    pub flags: u32,
}

/// `NBD_REPLY_TYPE_BLOCK_STATUS` for one metadata context.
pub(crate) fn block_status(cookie: u64, context: u32, extents: &[Extent], last: bool) -> Vec<u8> {
    let len = 4 + 8 * extents.len();
    let mut b = Vec::with_capacity(20 + len);
    b.extend_from_slice(&chunk_header(
        done(last),
        reply_type::BLOCK_STATUS,
        cookie,
        len as u32,
    ));
    b.extend_from_slice(&context.to_be_bytes());
    for e in extents {
        b.extend_from_slice(&e.length.to_be_bytes());
        b.extend_from_slice(&e.flags.to_be_bytes());
    }
    b
}

/// An error chunk (the last of its reply): `NBD_REPLY_TYPE_ERROR_OFFSET` when the error is
/// at a known offset, else `NBD_REPLY_TYPE_ERROR`.
pub(crate) fn error_chunk(cookie: u64, error: u32, message: &str, offset: Option<u64>) -> Vec<u8> {
    let m = bounded(message).as_bytes();
    let (kind, extra) = match offset {
        Some(_) => (reply_type::ERROR_OFFSET, 8),
        None => (reply_type::ERROR, 0),
    };
    let len = 6 + m.len() + extra;
    let mut b = Vec::with_capacity(20 + len);
    b.extend_from_slice(&chunk_header(REPLY_FLAG_DONE, kind, cookie, len as u32));
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&(m.len() as u16).to_be_bytes());
    b.extend_from_slice(m);
    if let Some(o) = offset {
        b.extend_from_slice(&o.to_be_bytes());
    }
    b
}

/// `NBD_REPLY_TYPE_NONE`: the end of a successful structured reply.
pub(crate) fn none_chunk(cookie: u64) -> [u8; 20] {
    chunk_header(REPLY_FLAG_DONE, reply_type::NONE, cookie, 0)
}

/// A reply header as a client reads it. For tests and the fuzz round trip.
#[cfg(any(test, feature = "fuzz-targets"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplyHeader {
    Simple {
        error: u32,
        cookie: u64,
    },
    Chunk {
        flags: u16,
        kind: u16,
        cookie: u64,
        length: u32,
    },
}

#[cfg(any(test, feature = "fuzz-targets"))]
impl ReplyHeader {
    /// Parses a simple reply (16 bytes) or a chunk header (20 bytes), by the magic.
    pub fn parse(b: &[u8]) -> Result<ReplyHeader, Malformed> {
        let mut c = Cursor::new(b);
        match c.u32() {
            Some(SIMPLE_REPLY_MAGIC) => Ok(ReplyHeader::Simple {
                error: c.u32().ok_or(Malformed("short reply"))?,
                cookie: c.u64().ok_or(Malformed("short reply"))?,
            }),
            Some(STRUCTURED_REPLY_MAGIC) => Ok(ReplyHeader::Chunk {
                flags: c.u16().ok_or(Malformed("short reply"))?,
                kind: c.u16().ok_or(Malformed("short reply"))?,
                cookie: c.u64().ok_or(Malformed("short reply"))?,
                length: c.u32().ok_or(Malformed("short reply"))?,
            }),
            _ => Err(Malformed("a reply without a reply magic")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_magic_is_refused() {
        let r = Request {
            flags: cmd_flag::DF,
            command: Command::Read,
            cookie: 0x0102_0304_0506_0708,
            offset: 1 << 40,
            length: 65536,
        };
        let b = r.to_bytes();
        assert_eq!(Request::parse(&b).unwrap(), r);
        let mut bad = b;
        bad[3] ^= 1;
        assert!(Request::parse(&bad).is_err());
        assert_eq!(Command::from_code(42), Command::Other(42));
        for c in 0..9 {
            assert_eq!(Command::from_code(c).code(), c);
        }
        let far = Request {
            offset: u64::MAX,
            length: 1,
            ..r
        };
        assert_eq!(far.end(), None);
    }

    #[test]
    fn replies_have_the_documented_layout() {
        assert_eq!(
            ReplyHeader::parse(&simple_reply(5, 9)).unwrap(),
            ReplyHeader::Simple {
                error: 5,
                cookie: 9
            }
        );
        let h = offset_data_header(7, 4096, 512, false);
        assert_eq!(
            ReplyHeader::parse(&h).unwrap(),
            ReplyHeader::Chunk {
                flags: 0,
                kind: reply_type::OFFSET_DATA,
                cookie: 7,
                length: 520
            }
        );
        assert_eq!(&h[20..], &4096u64.to_be_bytes());
        let hole = offset_hole(7, 0, 65536, true);
        assert_eq!(&hole[28..], &65536u32.to_be_bytes());
        let bs = block_status(
            1,
            3,
            &[
                Extent {
                    length: 512,
                    flags: 0,
                },
                Extent {
                    length: 1024,
                    flags: state::HOLE | state::ZERO,
                },
            ],
            true,
        );
        assert_eq!(bs.len(), 20 + 4 + 16);
        let e = error_chunk(1, errno::EIO, "chunk damaged", Some(8192));
        match ReplyHeader::parse(&e).unwrap() {
            ReplyHeader::Chunk { kind, length, .. } => {
                assert_eq!(kind, reply_type::ERROR_OFFSET);
                assert_eq!(length as usize, 6 + 13 + 8);
            }
            _ => panic!(),
        }
        assert!(ReplyHeader::parse(&[0; 20]).is_err());
        assert_eq!(Command::Read.valid_flags(), cmd_flag::FUA | cmd_flag::DF);
    }
}
