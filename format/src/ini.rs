//! archive.ini (format §7): a 17-byte clear header, then the body (gzip of an INI text; for
//! encrypted archives the gzip is also sealed by the metadata cipher).
//!
//! Invariants kept by the writer:
//! * `[var]` keys are rewritten in the order they were read (the original's rollback check zips
//!   items positionally), unknown keys are kept;
//! * sections are written `[var]`, `[volumes]`, `[in_process]`, each followed by one blank line;
//! * `updated_at` strictly increases on every save (see [`next_updated_at`]).

use crate::error::{Error, Result};
use crate::ids::{Hash32, VolumeId};

pub const HEADER_PREFIX: &[u8] = b"[WYNG03]\nci = ";
pub const HEADER_LEN: usize = 17;
/// Body bytes read after the header (format §1 `max_conf_sz`).
pub const MAX_BODY: usize = (10 + 100 + 44 + 25) * 1024 + 1000;

/// The two-digit cipher mode code of the header (format §6.1).
pub fn parse_header(file: &[u8]) -> Result<(String, &[u8])> {
    if file.starts_with(b"[var]") {
        return Err(Error::Unsupported(
            "this is a Wyng V2 archive; upgrade it with the original Wyng's `arch-check --upgrade-format`".into(),
        ));
    }
    if file.len() < HEADER_LEN || !file.starts_with(HEADER_PREFIX) || file[16] != b'\n' {
        return Err(Error::corrupt(
            "archive.ini",
            "not a Wyng V3 archive header",
        ));
    }
    let ci = &file[14..16];
    if !ci.iter().all(u8::is_ascii_digit) {
        return Err(Error::corrupt("archive.ini", "bad cipher code in header"));
    }
    let body = &file[HEADER_LEN..];
    let body = &body[..body.len().min(MAX_BODY)];
    Ok((String::from_utf8_lossy(ci).into_owned(), body))
}

pub fn header(ci: &str) -> Vec<u8> {
    let mut h = HEADER_PREFIX.to_vec();
    h.extend_from_slice(ci.as_bytes());
    h.push(b'\n');
    h
}

/// The parsed INI body.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchiveIni {
    pub var: Vec<(String, String)>,
    pub volumes: Vec<(VolumeId, Hash32)>,
    pub in_process: Vec<(String, String)>,
}

impl ArchiveIni {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.var
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets a `[var]` key, keeping its position if present, appending otherwise.
    pub fn set(&mut self, key: &str, value: String) {
        match self.var.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value,
            None => self.var.push((key.to_string(), value)),
        }
    }

    pub fn volume_hash(&self, vid: &VolumeId) -> Option<&Hash32> {
        self.volumes.iter().find(|(v, _)| v == vid).map(|(_, h)| h)
    }

    pub fn set_volume(&mut self, vid: &VolumeId, hash: Hash32) {
        match self.volumes.iter_mut().find(|(v, _)| v == vid) {
            Some(e) => e.1 = hash,
            None => self.volumes.push((vid.clone(), hash)),
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        let bad = |what: String| Error::corrupt("archive.ini", what);
        let sections = parse_configparser(text).map_err(bad)?;
        let mut ini = ArchiveIni {
            var: Vec::new(),
            volumes: Vec::new(),
            in_process: Vec::new(),
        };
        for (name, items) in sections {
            match name.as_str() {
                "var" => ini.var = items,
                "volumes" => {
                    for (k, v) in items {
                        let vid = VolumeId::parse(&k)
                            .ok_or_else(|| bad(format!("bad volume id '{k}'")))?;
                        let h = Hash32::parse_b64(&v)
                            .ok_or_else(|| bad(format!("bad volinfo hash for {k}")))?;
                        ini.volumes.push((vid, h));
                    }
                }
                "in_process" => ini.in_process = items,
                _ => {}
            }
        }
        for key in [
            "updated_at",
            "uuid",
            "format_ver",
            "chunksize",
            "compression",
            "compr_level",
            "hashtype",
            "ci_mode",
        ] {
            if ini.get(key).is_none() {
                return Err(bad(format!("missing [var] key '{key}'")));
            }
        }
        Ok(ini)
    }

    pub fn to_text(&self) -> String {
        let mut s = String::from("[var]\n");
        for (k, v) in &self.var {
            push_item(&mut s, k, v);
        }
        s.push_str("\n[volumes]\n");
        for (k, v) in &self.volumes {
            push_item(&mut s, k.as_str(), &v.to_b64());
        }
        s.push_str("\n[in_process]\n");
        for (k, v) in &self.in_process {
            push_item(&mut s, k, v);
        }
        s.push('\n');
        s
    }
}

fn push_item(s: &mut String, k: &str, v: &str) {
    s.push_str(k);
    s.push_str(" = ");
    // configparser continuation lines: a multi-line value keeps its later lines indented.
    s.push_str(&v.replace('\n', "\n\t"));
    s.push('\n');
}

type Section = (String, Vec<(String, String)>);

/// A reader for what Python's configparser accepts (format §4.2): `=` or `:` delimiters,
/// surrounding whitespace, blank lines, `#`/`;` full-line comments, indented continuation lines.
/// Duplicate sections or keys are errors, as in configparser's strict mode.
pub fn parse_configparser(text: &str) -> std::result::Result<Vec<Section>, String> {
    let mut sections: Vec<Section> = Vec::new();
    let mut last_key: Option<usize> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            last_key = None;
            continue;
        }
        if trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let indented = line.len() != trimmed.len();
        if indented {
            if let (Some(i), Some(sec)) = (last_key, sections.last_mut()) {
                let v = &mut sec.1[i].1;
                v.push('\n');
                v.push_str(trimmed);
                continue;
            }
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            if sections.iter().any(|(s, _)| s == name) {
                return Err(format!("line {}: duplicate section [{name}]", n + 1));
            }
            sections.push((name.to_string(), Vec::new()));
            last_key = None;
            continue;
        }
        let sec = sections
            .last_mut()
            .ok_or_else(|| format!("line {}: item before any section", n + 1))?;
        let pos = trimmed
            .find(['=', ':'])
            .ok_or_else(|| format!("line {}: not a key = value line", n + 1))?;
        let key = trimmed[..pos].trim().to_string();
        let value = trimmed[pos + 1..].trim().to_string();
        if key.is_empty() {
            return Err(format!("line {}: empty key", n + 1));
        }
        if sec.1.iter().any(|(k, _)| *k == key) {
            return Err(format!("line {}: duplicate key '{key}'", n + 1));
        }
        sec.1.push((key, value));
        last_key = Some(sec.1.len() - 1);
    }
    Ok(sections)
}

/// Python's `repr(float)` for the positive timestamps used in `updated_at`.
pub fn format_timestamp(t: f64) -> String {
    let s = format!("{t}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

/// The `updated_at` for a save: now, but strictly greater than the previous value, so that the
/// original Wyng's rollback check never sees a save as older (format §14.3).
pub fn next_updated_at(previous: Option<&str>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let prev = previous.and_then(|p| p.parse::<f64>().ok()).unwrap_or(0.0);
    if now > prev {
        return format_timestamp(now);
    }
    // Far in the future an f64 cannot hold +1 µs; the next representable value still orders.
    let bumped = prev + 1e-6;
    format_timestamp(if bumped > prev {
        bumped
    } else {
        prev.next_up()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "[var]\nupdated_at = 1795445645.9067492\nuuid = 6f2bd608-31c4-4c16-b729-d77665174c94\nformat_ver = 3\nchunksize = 65536\ncompression = zlib\ncompr_level = 4\nhashtype = blake2b\nci_mode = 00\n\n[volumes]\nVol_b2ace5 = Kx2FGxHJKVQWmqksQpx5Fy4I1AH_S5UXhrt1zAvO1kQ=\n\n[in_process]\n\n";

    #[test]
    fn roundtrip_exact() {
        let ini = ArchiveIni::parse(SAMPLE).unwrap();
        assert_eq!(ini.get("chunksize"), Some("65536"));
        assert_eq!(ini.to_text(), SAMPLE);
    }

    #[test]
    fn configparser_forms() {
        let t = "# c\n[var]\n  updated_at: 1.5\nuuid=a-b\n; x\nformat_ver = 3\nchunksize = 1\ncompression = zstd\ncompr_level = 3\nhashtype = blake2b\nci_mode = 00\n[volumes]\n[in_process]\n0 = delete\n1 = Vol_12\n";
        let ini = ArchiveIni::parse(t).unwrap();
        assert_eq!(ini.get("updated_at"), Some("1.5"));
        assert_eq!(ini.in_process.len(), 2);
        assert!(ArchiveIni::parse("[var]\na = 1\na = 2\n").is_err());
        assert!(ArchiveIni::parse("a = 1\n").is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_timestamp(1795445645.9067492), "1795445645.9067492");
        assert_eq!(format_timestamp(1795445645.0), "1795445645.0");
        let far = "99999999999.5";
        let n = next_updated_at(Some(far));
        assert!(n.parse::<f64>().unwrap() > 99999999999.5);
    }

    #[test]
    fn header_checks() {
        let mut f = header("00");
        f.extend_from_slice(b"body");
        let (ci, body) = parse_header(&f).unwrap();
        assert_eq!(ci, "00");
        assert_eq!(body, b"body");
        assert!(parse_header(b"[WYNG03]\nci = 0").is_err());
        assert!(matches!(
            parse_header(b"[var]\n"),
            Err(Error::Unsupported(_))
        ));
    }
}
