//! Identifiers of the format, as newtypes that can only hold valid values. Paths on the
//! destination are built from these (never from raw strings read from an archive), which is what
//! keeps a hostile archive from naming `../` paths.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;

use crate::error::{Error, Result};

/// `Vol_` + hex digits (format §3.2).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeId(String);

impl VolumeId {
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("Vol_")?;
        (!hex.is_empty() && hex.len() <= 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| VolumeId(s.to_string()))
    }

    /// A new random id: `Vol_` + 6 lower-case hex digits.
    pub fn random() -> Self {
        let mut b = [0u8; 3];
        getrandom::getrandom(&mut b).expect("OS random source");
        VolumeId(format!("Vol_{:02x}{:02x}{:02x}", b[0], b[1], b[2]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `S_YYYYMMDD-HHMMSS` (format §3.3). Ordering by name is date order; the authoritative session
/// order is the `sequence` field.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionName(String);

impl SessionName {
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        let ok = b.len() == 17
            && s.starts_with("S_")
            && b[2..10].iter().all(u8::is_ascii_digit)
            && b[10] == b'-'
            && b[11..].iter().all(u8::is_ascii_digit);
        ok.then(|| SessionName(s.to_string()))
    }

    /// Accepts `YYYYMMDD-HHMMSS` or `S_YYYYMMDD-HHMMSS` as users type it.
    pub fn from_user(s: &str) -> Option<Self> {
        Self::parse(s).or_else(|| Self::parse(&format!("S_{s}")))
    }

    pub fn from_time(t: chrono::DateTime<chrono::Local>) -> Self {
        SessionName(t.format("S_%Y%m%d-%H%M%S").to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The date-time part, as `list` shows it.
    pub fn date(&self) -> &str {
        &self.0[2..]
    }
}

impl fmt::Display for SessionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A 32-byte hash as stored in the format: URL-safe base64 with padding, 44 chars (§4.4).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    pub fn parse_b64(s: &str) -> Option<Self> {
        if s.len() != 44 {
            return None;
        }
        let mut out = [0u8; 32];
        // The engine rejects non-canonical trailing bits, so parse/format round-trips exactly.
        match URL_SAFE.decode_slice(s.as_bytes(), &mut [0u8; 33][..]) {
            Ok(32) => {}
            _ => return None,
        }
        URL_SAFE.decode_slice(s.as_bytes(), &mut out[..]).ok()?;
        Some(Hash32(out))
    }

    pub fn to_b64(&self) -> String {
        URL_SAFE.encode(self.0)
    }

    /// Constant-time comparison: hashes here authenticate data.
    pub fn ct_eq(&self, other: &Hash32) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash32({})", self.to_b64())
    }
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_b64())
    }
}

/// Volume names (format §1): 1–4000 printable chars, no `.`/`..` component, no leading `/`.
/// A `wyng-*metadata` volume (`^wyng-.*metadata$`): where wrapper tools such as Qubes keep
/// their own metadata; prune, autoprune, dedup and delete treat it specially (behaviour §11).
pub fn is_metadata_volume(name: &str) -> bool {
    name.starts_with("wyng-") && name.ends_with("metadata") && name.len() >= "wyng-metadata".len()
}

pub fn check_volume_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidName(format!(
            "invalid volume name '{name}': {why}"
        )))
    };
    if name.is_empty() || name.chars().count() > 4000 {
        return bad("must be 1 to 4000 characters");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("must be printable");
    }
    if name.starts_with('/') {
        return bad("must not start with '/'");
    }
    if name.split('/').any(|c| c == "." || c == "..") {
        return bad("must not contain '.' or '..' path components");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_roundtrip_and_canonical() {
        let h = Hash32([7u8; 32]);
        let s = h.to_b64();
        assert_eq!(s.len(), 44);
        assert_eq!(Hash32::parse_b64(&s), Some(h));
        // Non-canonical last char (trailing bits set) is rejected.
        let mut bad = s.clone().into_bytes();
        bad[42] = b'x';
        assert!(Hash32::parse_b64(std::str::from_utf8(&bad).unwrap()).is_none());
        assert!(Hash32::parse_b64("abc").is_none());
    }

    #[test]
    fn names() {
        assert!(SessionName::parse("S_20261123-153256").is_some());
        assert!(SessionName::parse("S_2026112-1532567").is_none());
        assert!(SessionName::parse("S_20261123-15325x").is_none());
        assert_eq!(
            SessionName::from_user("20261123-153256").unwrap().as_str(),
            "S_20261123-153256"
        );
        assert!(VolumeId::parse("Vol_1e08b7").is_some());
        assert!(VolumeId::parse("Vol_../x").is_none());
        assert!(VolumeId::parse("Vol_").is_none());
        assert!(check_volume_name("a/../b").is_err());
        assert!(check_volume_name("/abs").is_err());
        assert!(check_volume_name("vms/disk1.img").is_ok());
    }
}
