//! `prune`: remove sessions, merging what they hold into the sessions after them, and the
//! volume commands `delete`, `rename`, `add`.
//!
//! Selection follows the original (behaviour notes §7.5): `--session=D` one session;
//! `--session=^tag` every session with the tag; `--session=A,B` a range (dates and/or tags,
//! inclusive); `--all-before --session=D` every session before D. `--keep` (dates or `^tag`)
//! excludes sessions, and the newest session is always kept. Each run of consecutive selected
//! sessions is merged into the session after it, as one journaled transaction.

use crate::archive::{Archive, Volume};
use crate::error::{Error, Result};
use crate::format::SessionName;

#[derive(Clone, Debug, Default)]
pub struct PruneOptions {
    /// `--session`: `D`, `^tag`, `newest`, or `A,B`.
    pub session: Option<String>,
    pub all_before: bool,
    /// `--keep` dates and `^tags`.
    pub keep: Vec<String>,
    /// Only report what would be removed.
    pub dry_run: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct PruneReport {
    pub volume: String,
    /// Sessions removed (or, with `--dry-run`, that would be).
    pub removed: Vec<String>,
}

enum Point {
    Date(SessionName),
    Tag(String),
}

fn point(s: &str) -> Result<Point> {
    if let Some(t) = s.strip_prefix('^') {
        return Ok(Point::Tag(t.to_lowercase()));
    }
    SessionName::from_user(s).map(Point::Date).ok_or_else(|| {
        Error::Usage(format!(
            "'{s}' is not a date-time like 20261123-101500 or a ^tag"
        ))
    })
}

fn has_tag(vol: &Volume, i: usize, tag: &str) -> bool {
    vol.sessions[i].info.tags.iter().any(|t| t.id == tag)
        || (tag == "all" && !vol.sessions[i].info.tags.is_empty())
}

/// Indices (sequence order) of the sessions a prune removes from `vol`.
pub fn select(vol: &Volume, o: &PruneOptions) -> Result<Vec<usize>> {
    let spec = o.session.as_deref().ok_or_else(|| {
        Error::Usage("prune needs --session=DATE, --session=^TAG or --session=FROM,TO".into())
    })?;
    let items: Vec<&str> = spec.split(',').collect();
    let n = vol.sessions.len();
    let name = |i: usize| &vol.sessions[i].name;
    let mut chosen: Vec<usize> = match items.as_slice() {
        ["newest"] => (n > 0).then(|| n - 1).into_iter().collect(),
        [one] if o.all_before => match point(one)? {
            Point::Date(d) => (0..n).filter(|&i| *name(i) < d).collect(),
            Point::Tag(_) => {
                return Err(Error::Usage(
                    "--all-before takes a date-time, not a tag".into(),
                ))
            }
        },
        [one] => match point(one)? {
            Point::Date(d) => (0..n).filter(|&i| *name(i) == d).collect(),
            Point::Tag(t) => (0..n).filter(|&i| has_tag(vol, i, &t)).collect(),
        },
        [a, b] => {
            let from = match point(a)? {
                Point::Date(d) => (0..n).find(|&i| *name(i) >= d),
                Point::Tag(t) => (0..n).find(|&i| has_tag(vol, i, &t)),
            };
            let to = match point(b)? {
                Point::Date(d) => (0..n).rev().find(|&i| {
                    if o.all_before {
                        *name(i) < d
                    } else {
                        *name(i) <= d
                    }
                }),
                Point::Tag(t) => (0..n).rev().find(|&i| has_tag(vol, i, &t)),
            };
            match (from, to) {
                (Some(f), Some(t)) if t >= f => (f..=t).collect(),
                (Some(_), Some(_)) => {
                    return Err(Error::Usage(format!(
                        "--session={spec}: the range ends before it starts"
                    )))
                }
                _ => Vec::new(),
            }
        }
        _ => {
            return Err(Error::Usage(format!(
                "--session={spec}: give one date or tag, or a range FROM,TO"
            )))
        }
    };
    // The newest session is always kept.
    chosen.retain(|&i| i + 1 < n);
    for k in &o.keep {
        match point(k)? {
            Point::Date(d) => chosen.retain(|&i| *name(i) != d),
            Point::Tag(t) => chosen.retain(|&i| !has_tag(vol, i, &t)),
        }
    }
    Ok(chosen)
}

/// Prunes the named volumes (all, if none are named).
pub fn run(archive: &mut Archive, names: &[String], o: &PruneOptions) -> Result<Vec<PruneReport>> {
    archive.recover()?;
    let names: Vec<String> = if names.is_empty() {
        archive
            .volumes
            .iter()
            .map(|v| v.name().to_string())
            .collect()
    } else {
        for n in names {
            if archive.volume(n).is_none() {
                return Err(Error::VolumeNotFound(n.clone()));
            }
        }
        names.to_vec()
    };
    let mut reports = Vec::new();
    for name in names {
        let vi = archive.volume_index(&name).expect("checked");
        let chosen = select(&archive.volumes[vi], o)?;
        let removed: Vec<String> = chosen
            .iter()
            .map(|&i| archive.volumes[vi].sessions[i].name.to_string())
            .collect();
        if !o.dry_run {
            // Runs of consecutive sessions, newest run first so earlier indices stay valid.
            let mut runs: Vec<(usize, usize)> = Vec::new();
            for &i in &chosen {
                match runs.last_mut() {
                    Some((_, last)) if *last + 1 == i => *last = i,
                    _ => runs.push((i, i)),
                }
            }
            for (first, last) in runs.into_iter().rev() {
                archive.merge_sessions(vi, first, last)?;
            }
        }
        reports.push(PruneReport {
            volume: name,
            removed,
        });
    }
    Ok(reports)
}

/// `delete VOL`: removes a volume and all its sessions.
pub fn delete(archive: &mut Archive, name: &str) -> Result<()> {
    archive.recover()?;
    let vid = archive
        .volume(name)
        .ok_or_else(|| Error::VolumeNotFound(name.to_string()))?
        .vid
        .clone();
    archive.delete_volume(&vid)
}

/// `rename OLD NEW`, optionally setting the description (a rename without one clears it, as
/// the original does).
pub fn rename(archive: &mut Archive, old: &str, new: &str, desc: &str) -> Result<()> {
    archive.recover()?;
    crate::format::ids::check_volume_name(new)?;
    if archive.volume(new).is_some() {
        return Err(Error::Usage(format!("volume '{new}' already exists")));
    }
    check_desc(desc)?;
    let vi = archive
        .volume_index(old)
        .ok_or_else(|| Error::VolumeNotFound(old.to_string()))?;
    let mut volinfo = archive.volumes[vi].volinfo.clone();
    volinfo.name = new.to_string();
    volinfo.desc = desc.to_string();
    let sessions = archive.volumes[vi].sessions.clone();
    archive.save_volume(vi, volinfo, sessions)
}

/// `add VOL`: a volume with no sessions yet.
pub fn add(archive: &mut Archive, name: &str, desc: &str) -> Result<()> {
    archive.recover()?;
    check_desc(desc)?;
    let vi = archive.new_volume(name, desc)?;
    let volinfo = archive.volumes[vi].volinfo.clone();
    archive.save_volume(vi, volinfo, Vec::new())
}

fn check_desc(desc: &str) -> Result<()> {
    if desc.len() > crate::format::volinfo::MAX_DESC || desc.chars().any(char::is_control) {
        return Err(Error::Usage(
            "a volume description is at most 100 printable bytes".into(),
        ));
    }
    Ok(())
}
