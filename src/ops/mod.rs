//! One module per command. Each takes an open [`Archive`](crate::archive::Archive) (or a
//! [`WriteArchive`](crate::archive::WriteArchive) for commands that change it) and plain option
//! structs, does the work, and returns a report the binary prints. Nothing here prompts, forks
//! or prints: that is the binary's part.

pub mod arch_init;
pub mod autoprune;
pub mod check;
pub mod clean;
pub mod copy;
pub mod dedup;
pub mod diff;
#[cfg(test)]
pub(crate) mod faults;
pub mod files;
pub mod list;
pub mod monitor;
pub mod mount;
pub mod outstanding;
pub mod prune;
pub mod receive;
pub mod segments;
#[cfg(test)]
mod semantics;
pub mod send;
pub mod serve;
pub mod verify;
pub mod vols_from;
pub mod volume;
pub mod when;

use crate::archive::Volume;
use crate::error::{Error, Result};
use crate::format::SessionName;

/// A volume as the archive names it and as its local storage names it. The two differ only
/// when a `--vols-from` file gives an alias (behaviour §7.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRef {
    pub archive: String,
    pub local: String,
}

impl VolumeRef {
    /// A volume with one name in both places.
    pub fn same(name: &str) -> VolumeRef {
        VolumeRef {
            archive: name.to_string(),
            local: name.to_string(),
        }
    }
}

/// How `--session` picks a session of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionSel {
    Newest,
    /// `YYYYMMDD-HHMMSS`, exactly.
    Exact(SessionName),
    /// The newest session not after this time (`--session-strict=off`, or a time ago).
    NotAfter(SessionName),
    /// The newest session named within this span (a day, hour or minute).
    Within(SessionName, SessionName),
    /// `^tag`: the newest session carrying the tag.
    Tag(String),
}

impl SessionSel {
    /// `--session=WHEN` (see [`when`]) as of `now`; none is the newest session.
    pub fn parse(s: Option<&str>, strict: bool, now: chrono::NaiveDateTime) -> Result<SessionSel> {
        let Some(s) = s else {
            return Ok(SessionSel::Newest);
        };
        Ok(match when::When::parse(s, now)? {
            when::When::Newest => SessionSel::Newest,
            when::When::Tag(t) => SessionSel::Tag(t),
            when::When::AsOf(t) => SessionSel::NotAfter(t),
            when::When::Span { to, .. } if !strict => SessionSel::NotAfter(to),
            when::When::Span { from, to } if from == to => SessionSel::Exact(from),
            when::When::Span { from, to } => SessionSel::Within(from, to),
        })
    }

    /// Index into `vol.sessions` (sequence order).
    pub fn select(&self, vol: &Volume) -> Result<usize> {
        let none = |what: String| {
            Error::Selection(format!(
                "volume '{}': {what}; `wyng list {}` shows its sessions",
                vol.name(),
                vol.name()
            ))
        };
        if vol.sessions.is_empty() {
            return Err(none("has no sessions".into()));
        }
        match self {
            SessionSel::Newest => Ok(vol.sessions.len() - 1),
            SessionSel::Exact(n) => vol
                .session_index(n)
                .ok_or_else(|| none(format!("no session {}", n.date()))),
            SessionSel::NotAfter(n) => vol
                .sessions
                .iter()
                .enumerate()
                .filter(|(_, s)| s.name <= *n)
                .max_by(|a, b| {
                    a.1.name
                        .cmp(&b.1.name)
                        .then(a.1.info.sequence.cmp(&b.1.info.sequence))
                })
                .map(|(i, _)| i)
                .ok_or_else(|| none(format!("no session at or before {}", n.date()))),
            SessionSel::Within(from, to) => vol
                .sessions
                .iter()
                .enumerate()
                .filter(|(_, s)| s.name >= *from && s.name <= *to)
                .max_by(|a, b| {
                    a.1.name
                        .cmp(&b.1.name)
                        .then(a.1.info.sequence.cmp(&b.1.info.sequence))
                })
                .map(|(i, _)| i)
                .ok_or_else(|| none(format!("no session from {} to {}", from.date(), to.date()))),
            SessionSel::Tag(t) => vol
                .sessions
                .iter()
                .rposition(|s| s.info.tags.iter().any(|x| &x.id == t))
                .ok_or_else(|| none(format!("no session tagged '{t}'"))),
        }
    }
}

/// True if every byte is zero (written so the compiler vectorises it).
pub(crate) fn is_all_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    chunks.all(|c| c.iter().fold(0u8, |a, x| a | x) == 0)
        && chunks.remainder().iter().all(|&x| x == 0)
}
