//! The Network Block Device protocol's wire format (the NBD project's `doc/proto.md`): the
//! fixed newstyle handshake and its options, transmission requests, simple and structured
//! replies, block status and metadata contexts. Pure: bytes in, values out, values in, bytes
//! out; no sockets, no policy (which options a server accepts, limits, deadlines: that is
//! `ops::serve`).
//!
//! Invariants:
//! * **Nothing a peer sends sizes an allocation.** Parsers take the bytes already read and
//!   check every length field against them; a count never pre-allocates. A string is at most
//!   [`MAX_STRING`] bytes of UTF-8 without NUL.
//! * **Malformed input is a value, never a panic**: [`Malformed`] for what ends the connection
//!   (a bad magic, unknown client flags), [`handshake::OptError`] for an option the server
//!   answers with an error and goes on.
//! * **What a parser accepts, the matching encoder writes back identically** (the fuzz target
//!   `nbd` checks the round trip).

pub mod handshake;
pub mod transmission;

/// The longest string (export name, query, error message) the protocol allows.
pub(crate) const MAX_STRING: usize = 4096;

/// Input that breaks the protocol so that the connection cannot go on (the server hangs up).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed NBD input: {0}")]
pub struct Malformed(pub &'static str);

/// Big-endian reads over a byte slice that never go past its end.
pub(crate) struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Cursor<'a> {
        Cursor { data }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.data.len() {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    /// A string of `len` bytes: UTF-8, no NUL, at most [`MAX_STRING`].
    pub(crate) fn string(&mut self, len: usize) -> Result<String, &'static str> {
        if len > MAX_STRING {
            return Err("a string longer than 4096 bytes");
        }
        let b = self
            .take(len)
            .ok_or("a string runs past the end of its option")?;
        checked_string(b)
    }
}

/// `b` as a protocol string: UTF-8, no NUL, at most [`MAX_STRING`] bytes.
pub(crate) fn checked_string(b: &[u8]) -> Result<String, &'static str> {
    if b.len() > MAX_STRING {
        return Err("a string longer than 4096 bytes");
    }
    if b.contains(&0) {
        return Err("a string holds a NUL byte");
    }
    std::str::from_utf8(b)
        .map(str::to_string)
        .map_err(|_| "a string is not UTF-8")
}

/// `s` cut to at most [`MAX_STRING`] bytes at a character boundary (messages we send).
pub(crate) fn bounded(s: &str) -> &str {
    if s.len() <= MAX_STRING {
        return s;
    }
    let mut end = MAX_STRING;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_never_reads_past_the_end() {
        let mut c = Cursor::new(&[0, 1, 2]);
        assert_eq!(c.u16(), Some(1));
        assert_eq!(c.u16(), None);
        assert_eq!(c.remaining(), 1);
        assert_eq!(c.take(1), Some(&[2u8][..]));
        assert_eq!(c.u32(), None);
    }

    #[test]
    fn strings_are_checked() {
        assert_eq!(
            checked_string(b"vm1.img@20261101-020000").unwrap(),
            "vm1.img@20261101-020000"
        );
        assert!(checked_string(b"a\0b").is_err());
        assert!(checked_string(&[0xff, 0xfe]).is_err());
        assert!(checked_string(&vec![b'a'; MAX_STRING + 1]).is_err());
        assert!(Cursor::new(b"abc").string(4).is_err());
        let long = "é".repeat(3000);
        let b = bounded(&long);
        assert!(b.len() <= MAX_STRING && long.starts_with(b));
    }
}
