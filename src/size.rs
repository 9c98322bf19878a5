//! Sizes as users write them (`256M`, `1G`, `65536`) and as wyng prints them (binary units).

use crate::error::{Error, Result};

/// Parses sizes like `256M`, `1G`, `64K`, `65536` (binary multiples).
pub fn parse(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| Error::Usage(format!("'{s}' is not a size like 256M or 1G")))
}

/// `1.5 GiB`, `512 B`.
pub fn human(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse("256M").unwrap(), 256 << 20);
        assert_eq!(parse("1g").unwrap(), 1 << 30);
        assert_eq!(parse("65536").unwrap(), 65536);
        assert!(parse("1X").is_err());
        assert!(parse("99999999999999999999T").is_err());
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 29), "1.50 GiB");
    }
}
