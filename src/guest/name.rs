//! Names inside guest filesystems: which are safe as one file name, paths built only from
//! those, and how any name is shown.
//!
//! Invariants:
//! * A [`GuestPath`] component is never empty, `.`, `..`, longer than 255 bytes, and never
//!   holds `/` or NUL; a path has at most [`MAX_DEPTH`](super::MAX_DEPTH) components.
//! * [`escape`] output holds no control character and no invalid UTF-8: what a guest named
//!   cannot move a terminal's cursor or forge lines of output.

use crate::error::{Error, Result};

/// Why a name cannot be one component of a path (`None`: it can).
pub(crate) fn unsafe_name(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("an empty name")
    } else if name == b"." || name == b".." {
        Some("a name that is '.' or '..'")
    } else if name.contains(&b'/') {
        Some("a name holding '/'")
    } else if name.contains(&0) {
        Some("a name holding a NUL byte")
    } else if name.len() > 255 {
        Some("a name longer than 255 bytes")
    } else {
        None
    }
}

/// Whether a name holds control characters (restored files refuse them: they break scripts
/// and terminals that later list the restored tree).
pub(crate) fn has_control(name: &[u8]) -> bool {
    name.iter().any(|&b| b < 0x20 || b == 0x7f)
}

/// A path inside a guest filesystem, from its root: safe components only.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestPath(Vec<Vec<u8>>);

impl GuestPath {
    pub fn root() -> GuestPath {
        GuestPath(Vec::new())
    }

    /// A path as a user typed it: `/` separated, `.` and empty components dropped, `..` going
    /// up (never above the root).
    pub(crate) fn parse_user(s: &[u8]) -> Result<GuestPath> {
        let mut out = Vec::new();
        for c in s.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => {
                    out.pop();
                }
                c => {
                    if let Some(why) = unsafe_name(c) {
                        return Err(Error::Usage(format!("path '{}': {why}", escape(s))));
                    }
                    out.push(c.to_vec());
                }
            }
        }
        if out.len() > super::MAX_DEPTH {
            return Err(Error::Usage(format!(
                "path '{}' is deeper than {} directories",
                escape(s),
                super::MAX_DEPTH
            )));
        }
        Ok(GuestPath(out))
    }

    /// This path and one more component, if the name is safe and the path not too deep.
    pub fn join(&self, name: &[u8]) -> std::result::Result<GuestPath, &'static str> {
        if let Some(why) = unsafe_name(name) {
            return Err(why);
        }
        if self.0.len() >= super::MAX_DEPTH {
            return Err("a directory nested deeper than wyng walks");
        }
        let mut v = self.0.clone();
        v.push(name.to_vec());
        Ok(GuestPath(v))
    }

    pub fn components(&self) -> &[Vec<u8>] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn name(&self) -> Option<&[u8]> {
        self.0.last().map(Vec::as_slice)
    }

    pub fn parent(&self) -> GuestPath {
        let mut v = self.0.clone();
        v.pop();
        GuestPath(v)
    }

    pub(crate) fn strip_first(&self) -> GuestPath {
        GuestPath(self.0.iter().skip(1).cloned().collect())
    }

    /// `/a/b` (`/` for the root), as bytes.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        if self.0.is_empty() {
            return b"/".to_vec();
        }
        let mut out = Vec::new();
        for c in &self.0 {
            out.push(b'/');
            out.extend_from_slice(c);
        }
        out
    }

    /// The path as shown to a user (escaped).
    pub fn display(&self) -> String {
        escape(&self.to_bytes())
    }
}

/// A name (or path) as text safe to print: valid UTF-8 kept, backslash doubled, control
/// characters and bytes that are not UTF-8 as `\xNN`.
pub fn escape(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for byte in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{byte:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_paths_normalise_and_never_leave_the_root() {
        let p = GuestPath::parse_user(b"/a//./b/../c/").unwrap();
        assert_eq!(p.to_bytes(), b"/a/c");
        assert_eq!(GuestPath::parse_user(b"../../x").unwrap().to_bytes(), b"/x");
        assert!(GuestPath::parse_user(b"/").unwrap().is_root());
        assert!(GuestPath::parse_user(b"/a\0b").is_err());
    }

    #[test]
    fn hostile_names_are_refused_as_components() {
        let r = GuestPath::root();
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0", &[b'x'; 256]] {
            assert!(r.join(bad).is_err(), "{bad:?}");
        }
        assert!(r.join(b"ok name\n").is_ok());
        let mut deep = GuestPath::root();
        for _ in 0..crate::guest::MAX_DEPTH {
            deep = deep.join(b"d").unwrap();
        }
        assert!(deep.join(b"d").is_err());
    }

    #[test]
    fn escape_leaves_no_control_characters() {
        assert_eq!(escape(b"a\nb\x1b[2J\\"), "a\\x0ab\\x1b[2J\\\\");
        assert_eq!(escape(b"caf\xc3\xa9 \xff"), "café \\xff");
        assert_eq!(escape("\u{9b}".as_bytes()), "\\xc2\\x9b");
    }
}
