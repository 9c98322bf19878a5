//! volinfo (format §8.1) and the informational `sessions` file (§8.2).

use crate::error::{Error, Result};
use crate::ids::{check_volume_name, Hash32, SessionName};
use crate::kv::parse_kv;

pub const MAX_SESSIONS: usize = 16384;
pub const MAX_DESC: usize = 100;

#[derive(Clone, Debug, PartialEq)]
pub struct VolInfo {
    pub name: String,
    pub desc: String,
    /// Session name → hash of its compressed `info`, in the file's order (order has no meaning).
    pub sessions: Vec<(SessionName, Hash32)>,
}

impl VolInfo {
    pub fn parse(text: &str, path: &str) -> Result<Self> {
        let bad = |what: String| Error::corrupt(path, what);
        let mut name = None;
        let mut desc = String::new();
        let mut sessions = Vec::new();
        for (k, v) in parse_kv(text).map_err(bad)? {
            match k {
                "name" => name = Some(v.to_string()),
                "desc" => desc = v.to_string(),
                _ if k.starts_with("S_") => {
                    let s = SessionName::parse(k)
                        .ok_or_else(|| bad(format!("bad session name '{k}'")))?;
                    let h = Hash32::parse_b64(v).ok_or_else(|| bad(format!("bad hash for {k}")))?;
                    if sessions.iter().any(|(n, _)| *n == s) {
                        return Err(bad(format!("session {k} listed twice")));
                    }
                    sessions.push((s, h));
                }
                _ => {}
            }
        }
        let name = name.ok_or_else(|| bad("no volume name".into()))?;
        check_volume_name(&name).map_err(|e| bad(e.to_string()))?;
        if desc.chars().count() > MAX_DESC || desc.chars().any(char::is_control) {
            return Err(bad("bad volume description".into()));
        }
        if sessions.len() > MAX_SESSIONS {
            return Err(bad("too many sessions".into()));
        }
        Ok(VolInfo {
            name,
            desc,
            sessions,
        })
    }

    pub fn to_text(&self) -> String {
        let mut s = format!("name = {}\ndesc = {}\n", self.name, self.desc);
        for (n, h) in &self.sessions {
            s.push_str(&format!("{n} = {h}\n"));
        }
        s
    }
}

/// `sessions`: Python's `json.dump` of the names in sequence order (", " separator, no newline).
pub fn sessions_json<'a>(names: impl IntoIterator<Item = &'a SessionName>) -> String {
    let items: Vec<String> = names.into_iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volinfo_roundtrip() {
        let t = "name = vol1.img\ndesc = \nS_20261123-145405 = rlYPHfHR5J2e0zsqFGYlpsUSij7ZWh1xXlPLB8wd_gQ=\n";
        let v = VolInfo::parse(t, "volinfo").unwrap();
        assert_eq!(v.name, "vol1.img");
        assert_eq!(v.to_text(), t);
        assert_eq!(
            sessions_json(v.sessions.iter().map(|(n, _)| n)),
            "[\"S_20261123-145405\"]"
        );
        assert!(VolInfo::parse("desc = x\n", "v").is_err());
        assert!(VolInfo::parse("name = ../x\n", "v").is_err());
    }
}
