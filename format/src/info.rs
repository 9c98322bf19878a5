//! Session `info` (format §9). Lines are written in the original's fixed order, tags last.

use crate::error::{Error, Result};
use crate::ids::{Hash32, SessionName};
use crate::kv::parse_kv;

pub const MAX_TAGS: usize = 5;
pub const MAX_TAG_ID: usize = 25;
pub const MAX_TAG_DESC: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    pub id: String,
    pub desc: String,
}

impl Tag {
    /// Validates and normalises a tag id the way the format requires (§9): lower case, ≤ 25
    /// chars, printable, no whitespace, none of `, = ^`, not `all`.
    pub fn new(id: &str, desc: &str) -> std::result::Result<Tag, String> {
        let id = id.to_lowercase();
        if id.is_empty()
            || id.chars().count() > MAX_TAG_ID
            || id == "all"
            || id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || ",=^".contains(c))
        {
            return Err(format!("invalid tag id '{id}'"));
        }
        if desc.chars().count() > MAX_TAG_DESC || desc.chars().any(char::is_control) {
            return Err(format!("invalid description for tag '{id}'"));
        }
        Ok(Tag {
            id,
            desc: desc.to_string(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Nanoseconds since the epoch of the source's time (file mtime / LV creation).
    pub localtime: i128,
    pub previous: Option<SessionName>,
    pub permissions: String,
    /// `None` = empty manifest (`manifesthash = 0`, no manifest.z).
    pub manifest_hash: Option<Hash32>,
    pub volsize: u64,
    pub sequence: u64,
    pub mfcs: Option<u32>,
    pub tags: Vec<Tag>,
}

impl SessionInfo {
    pub fn parse(text: &str, path: &str) -> Result<Self> {
        let bad = |what: String| Error::corrupt(path, what);
        let (mut localtime, mut previous, mut permissions) = (None, None, String::new());
        let (mut mhash, mut volsize, mut sequence, mut mfcs) = (None, None, None, None);
        let mut tags = Vec::new();
        for (k, v) in parse_kv(text).map_err(bad)? {
            match k {
                "localtime" => {
                    localtime = Some(
                        parse_localtime(v).ok_or_else(|| bad(format!("bad localtime '{v}'")))?,
                    )
                }
                "previous" => {
                    previous = match v {
                        "None" => None,
                        _ => Some(
                            SessionName::parse(v)
                                .ok_or_else(|| bad(format!("bad previous '{v}'")))?,
                        ),
                    }
                }
                "permissions" => {
                    if !permissions_valid(v) {
                        return Err(bad(format!("bad permissions '{v}'")));
                    }
                    permissions = v.to_string();
                }
                "manifesthash" => {
                    mhash = Some(match v {
                        "0" => None,
                        _ => Some(
                            Hash32::parse_b64(v).ok_or_else(|| bad("bad manifesthash".into()))?,
                        ),
                    })
                }
                "volsize" => {
                    volsize = Some(
                        v.parse::<u64>()
                            .map_err(|_| bad(format!("bad volsize '{v}'")))?,
                    )
                }
                "sequence" => {
                    sequence = Some(
                        v.parse::<u64>()
                            .map_err(|_| bad(format!("bad sequence '{v}'")))?,
                    )
                }
                "mfcs" => {
                    mfcs = Some(
                        v.parse::<u32>()
                            .map_err(|_| bad(format!("bad mfcs '{v}'")))?,
                    )
                }
                "tag" => {
                    let (id, desc) = v.split_once(' ').unwrap_or((v, ""));
                    let tag = Tag::new(id, desc.trim()).map_err(bad)?;
                    if tags.len() >= MAX_TAGS {
                        return Err(bad("more than 5 tags".into()));
                    }
                    tags.push(tag);
                }
                _ => {}
            }
        }
        Ok(SessionInfo {
            localtime: localtime.ok_or_else(|| bad("missing localtime".into()))?,
            previous,
            permissions,
            manifest_hash: mhash.ok_or_else(|| bad("missing manifesthash".into()))?,
            volsize: volsize.ok_or_else(|| bad("missing volsize".into()))?,
            sequence: sequence.ok_or_else(|| bad("missing sequence".into()))?,
            mfcs,
            tags,
        })
    }

    pub fn to_text(&self) -> String {
        let mut s = format!(
            "localtime = {}\nprevious = {}\npermissions = {}\nmanifesthash = {}\nvolsize = {}\nsequence = {}\n",
            self.localtime,
            self.previous.as_ref().map_or("None", |p| p.as_str()),
            self.permissions,
            self.manifest_hash.map_or("0".to_string(), |h| h.to_b64()),
            self.volsize,
            self.sequence,
        );
        // A beta archive's info may have no mfcs (optional on read, format §9): keep it absent.
        // Writing 0 would make a later check fail for any non-empty manifest (found by fuzzing).
        if let Some(m) = self.mfcs {
            s.push_str(&format!("mfcs = {m}\n"));
        }
        for t in &self.tags {
            s.push_str(&format!("tag = {} {}\n", t.id, t.desc));
        }
        s
    }
}

fn parse_localtime(v: &str) -> Option<i128> {
    if !v.is_empty() && v.len() < 30 && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().ok();
    }
    // Legacy form YYYYMMDD-HHMMSS, local time.
    let t = chrono::NaiveDateTime::parse_from_str(v, "%Y%m%d-%H%M%S").ok()?;
    let t = t.and_local_timezone(chrono::Local).earliest()?;
    // Before 1970 is no session time; it would also be written back as a negative number,
    // which is not a localtime (found by fuzzing).
    (t.timestamp() >= 0).then(|| t.timestamp() as i128 * 1_000_000_000)
}

/// `r`, `w`, empty, or `mode:user:group` with a decimal mode and alphanumeric names (§9).
pub fn permissions_valid(v: &str) -> bool {
    if v.is_empty() || v == "r" || v == "w" {
        return true;
    }
    let parts: Vec<&str> = v.split(':').collect();
    parts.len() == 3
        && v.len() <= 261
        && !parts[0].is_empty()
        && parts[0].bytes().all(|b| b.is_ascii_digit())
        && parts[1..]
            .iter()
            .all(|p| p.chars().all(char::is_alphanumeric))
        && !(parts[1].is_empty() && parts[2].is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_findings_round_trip() {
        // An absent mfcs stays absent (it used to come back as 0, a wrong checksum).
        let t = "localtime = 1\nprevious = None\nvolsize = 11\nsequence = 6\nmanifesthash = 0\n";
        let i = SessionInfo::parse(t, "info").unwrap();
        assert_eq!(i.mfcs, None);
        assert_eq!(SessionInfo::parse(&i.to_text(), "info").unwrap(), i);
        // A legacy date before 1970 is refused, not turned into a negative localtime.
        let t = "localtime = 00000101-000000\nvolsize = 1\nsequence = 0\nmanifesthash = 0\n";
        assert!(SessionInfo::parse(t, "info").is_err());
    }

    #[test]
    fn info_roundtrip() {
        let t = "localtime = 1795445641214679757\nprevious = None\npermissions = 420:root:root\nmanifesthash = fnMdjchmhtM52Pitupc-_KxFK8ZG0j4GXknaerULh8Q=\nvolsize = 205800\nsequence = 0\nmfcs = 3248287972\ntag = daily Daily backup\ntag = base \n";
        let i = SessionInfo::parse(t, "info").unwrap();
        assert_eq!(i.mfcs, Some(3248287972));
        assert_eq!(i.tags.len(), 2);
        assert_eq!(i.to_text(), t);
        assert!(SessionInfo::parse("volsize = 1\n", "info").is_err());
        assert!(!permissions_valid("420:qubes-user:root"));
        assert!(permissions_valid("420:1000:1000"));
    }
}

/// A session as a volume's metadata holds it: its name and its parsed `info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub name: SessionName,
    pub info: SessionInfo,
}
