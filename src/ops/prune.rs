//! `prune`: remove sessions, merging what they hold into the sessions after them.
//!
//! Selection follows the original (behaviour notes §7.5): `--session=D` one session;
//! `--session=^tag` every session with the tag; `--session=A,B` a range (dates and/or tags,
//! inclusive); `--all-before --session=D` every session before D. `--keep` (dates or `^tag`)
//! excludes sessions, and the newest session is always kept. Each run of consecutive selected
//! sessions is merged into the session after it, as one journaled transaction.
//!
//! Retention policies (`--keep-last/-hourly/-daily/-weekly/-monthly/-yearly=N`), as restic,
//! borg and PBS users know them: going from the newest session back, each policy keeps the
//! newest session of each new hour/day/ISO week/month/year until it has N; `last` keeps the N
//! newest. A session any policy keeps stays; with policies and no `--session`, every other
//! session is pruned (with `--session`, only those it selects).

use crate::archive::{Archive, Volume, WriteArchive};
use crate::error::{Error, Result};
use crate::format::SessionName;

#[derive(Clone, Debug, Default)]
pub struct PruneOptions {
    /// `--session`: one WHEN (see [`crate::ops::when`]) or a range `A,B`.
    pub session: Option<String>,
    /// The time `--session`'s relative forms (`2d`, `yesterday`) and autoprune's calendar
    /// count from.
    pub now: chrono::NaiveDateTime,
    pub all_before: bool,
    /// `--keep` dates and `^tags`.
    pub keep: Vec<String>,
    /// Only report what would be removed.
    pub dry_run: bool,
    pub policy: Policy,
    /// `--autoprune`: calendar thinning on top of any selection (see [`crate::ops::autoprune`]).
    pub autoprune: AutoMode,
    pub apdays: crate::ops::autoprune::ApDays,
    /// With [`AutoMode::On`]: at most this many marked sessions per volume (default 3).
    pub on_limit: Option<usize>,
    /// Leave `wyng-*metadata` volumes alone (the original prunes them only when `--all`
    /// selected every volume).
    pub spare_metadata: bool,
}

/// `--autoprune`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AutoMode {
    #[default]
    Off,
    /// Remove a few of the sessions autoprune marks (at most 3 per volume per run, oldest
    /// first), as the original's `on` does when pruning.
    On,
    /// Remove every session autoprune marks.
    Full,
}

/// Bucket retention policy: how many of each to keep (0: that rule is off).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
    pub yearly: usize,
}

type BucketKey = fn(&chrono::NaiveDateTime) -> String;

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// For each session (sequence order), the rules that keep it.
    pub fn reasons(&self, names: &[&SessionName]) -> Vec<Vec<&'static str>> {
        let mut out = vec![Vec::new(); names.len()];
        let dates: Vec<Option<chrono::NaiveDateTime>> = names
            .iter()
            .map(|n| chrono::NaiveDateTime::parse_from_str(n.date(), "%Y%m%d-%H%M%S").ok())
            .collect();
        // Newest first by time (the name), the order the rules count in.
        let mut order: Vec<usize> = (0..names.len()).collect();
        order.sort_by(|&a, &b| names[b].cmp(names[a]));
        for &i in order.iter().take(self.last) {
            out[i].push("last");
        }
        let rules: [(&'static str, usize, BucketKey); 5] = [
            ("hourly", self.hourly, |d| d.format("%Y%m%d%H").to_string()),
            ("daily", self.daily, |d| d.format("%Y%m%d").to_string()),
            ("weekly", self.weekly, |d| {
                use chrono::Datelike;
                let w = d.iso_week();
                format!("{}-{:02}", w.year(), w.week())
            }),
            ("monthly", self.monthly, |d| d.format("%Y%m").to_string()),
            ("yearly", self.yearly, |d| d.format("%Y").to_string()),
        ];
        for (label, n, key) in rules {
            if n == 0 {
                continue;
            }
            let mut last_key: Option<String> = None;
            let mut kept = 0;
            for &i in &order {
                if kept == n {
                    break;
                }
                let Some(d) = &dates[i] else { continue };
                let k = key(d);
                if last_key.as_ref() != Some(&k) {
                    out[i].push(label);
                    kept += 1;
                    last_key = Some(k);
                }
            }
        }
        out
    }
}

#[derive(Debug, serde::Serialize)]
pub struct PruneReport {
    pub volume: String,
    /// Sessions removed (or, with `--dry-run`, that would be).
    pub removed: Vec<String>,
    /// Sessions kept, with why (`newest`, `--keep`, or the retention rules that keep them).
    pub kept: Vec<(String, Vec<String>)>,
}

use crate::ops::when::When;

fn has_tag(vol: &Volume, i: usize, tag: &str) -> bool {
    vol.sessions[i].info.tags.iter().any(|t| t.id == tag)
        || (tag == "all" && !vol.sessions[i].info.tags.is_empty())
}

/// What a prune does to one volume: sessions (indices in sequence order) to remove, and the
/// others with the reasons they stay.
pub struct Selection {
    pub remove: Vec<usize>,
    pub keep: Vec<(usize, Vec<String>)>,
}

/// Decides which sessions of `vol` a prune removes, and why each other session stays.
pub fn select(vol: &Volume, o: &PruneOptions) -> Result<Selection> {
    select_with(vol, o, &std::collections::BTreeSet::new())
}

/// [`select`], plus the sessions autoprune marked (`auto`, by name).
fn select_with(
    vol: &Volume,
    o: &PruneOptions,
    auto: &std::collections::BTreeSet<SessionName>,
) -> Result<Selection> {
    let n = vol.sessions.len();
    let mut chosen = match o.session.as_deref() {
        Some(spec) => select_spec(vol, spec, o)?,
        None if !o.policy.is_empty() => (0..n).collect(),
        None if o.autoprune != AutoMode::Off => Vec::new(),
        None => return Err(Error::NothingToPrune),
    };
    if o.autoprune != AutoMode::Off {
        let limit = match o.autoprune {
            AutoMode::On => o.on_limit.unwrap_or(3),
            _ => usize::MAX,
        };
        let extra: Vec<usize> = (0..n)
            .filter(|&i| auto.contains(&vol.sessions[i].name) && !chosen.contains(&i))
            .take(limit)
            .collect();
        chosen.extend(extra);
        chosen.sort_unstable();
    }
    let mut why: Vec<Vec<String>> = vec![Vec::new(); n];
    if n > 0 {
        why[n - 1].push("newest".into());
    }
    for k in &o.keep {
        for i in kept_by(vol, k, o.now)? {
            why[i].push(format!("keep {k}"));
        }
    }
    let names: Vec<&SessionName> = vol.sessions.iter().map(|s| &s.name).collect();
    for (i, rules) in o.policy.reasons(&names).into_iter().enumerate() {
        why[i].extend(rules.into_iter().map(String::from));
    }
    chosen.retain(|&i| why[i].is_empty());
    let kept = (0..n)
        .filter(|i| !chosen.contains(i))
        .map(|i| (i, std::mem::take(&mut why[i])))
        .collect();
    Ok(Selection {
        remove: chosen,
        keep: kept,
    })
}

/// The sessions of `vol` a `--keep=WHEN` keeps: a date-time's session, every session of a day
/// or a tag, the newest, or the one a time ago names.
fn kept_by(vol: &Volume, k: &str, now: chrono::NaiveDateTime) -> Result<Vec<usize>> {
    let n = vol.sessions.len();
    let name = |i: usize| &vol.sessions[i].name;
    Ok(match When::parse(k, now)? {
        When::Span { from, to } => (0..n)
            .filter(|&i| *name(i) >= from && *name(i) <= to)
            .collect(),
        When::Tag(t) => (0..n).filter(|&i| has_tag(vol, i, &t)).collect(),
        When::Newest => n.checked_sub(1).into_iter().collect(),
        When::AsOf(d) => (0..n).rev().find(|&i| *name(i) <= d).into_iter().collect(),
    })
}

pub(crate) fn select_spec(vol: &Volume, spec: &str, o: &PruneOptions) -> Result<Vec<usize>> {
    let items: Vec<&str> = spec.split(',').collect();
    let n = vol.sessions.len();
    let name = |i: usize| &vol.sessions[i].name;
    let newest = (n > 0).then(|| n - 1);
    let chosen: Vec<usize> = match items.as_slice() {
        [one] if o.all_before => match When::parse(one, o.now)? {
            When::Span { from: d, .. } | When::AsOf(d) => (0..n).filter(|&i| *name(i) < d).collect(),
            When::Newest => (0..newest.unwrap_or(0)).collect(),
            When::Tag(_) => {
                return Err(Error::Usage(
                    "--all-before takes a date-time, not a tag".into(),
                ))
            }
        },
        [one] => match When::parse(one, o.now)? {
            When::Newest => newest.into_iter().collect(),
            // A date-time is that session; a day (hour, minute) every session in it.
            When::Span { from, to } => (0..n).filter(|&i| *name(i) >= from && *name(i) <= to).collect(),
            When::Tag(t) => (0..n).filter(|&i| has_tag(vol, i, &t)).collect(),
            When::AsOf(_) => {
                return Err(Error::Usage(format!(
                    "--session={spec}: a time ago names a moment, not sessions: give a range (e.g. --session=30d,7d) or use --all-before"
                )))
            }
        },
        [a, b] => {
            let from = match When::parse(a, o.now)? {
                When::Span { from: d, .. } | When::AsOf(d) => (0..n).find(|&i| *name(i) >= d),
                When::Tag(t) => (0..n).find(|&i| has_tag(vol, i, &t)),
                When::Newest => newest,
            };
            let to = match When::parse(b, o.now)? {
                When::Span { from, to } => (0..n).rev().find(|&i| {
                    if o.all_before {
                        *name(i) < from
                    } else {
                        *name(i) <= to
                    }
                }),
                When::AsOf(d) => (0..n).rev().find(|&i| {
                    if o.all_before {
                        *name(i) < d
                    } else {
                        *name(i) <= d
                    }
                }),
                When::Tag(t) => (0..n).rev().find(|&i| has_tag(vol, i, &t)),
                When::Newest => newest,
            };
            match (from, to) {
                (Some(f), Some(t)) if t >= f => (f..=t).collect(),
                (Some(_), Some(_)) => {
                    return Err(Error::BadSessionSpec {
                        spec: spec.into(),
                        why: "the range ends before it starts".into(),
                    })
                }
                _ => Vec::new(),
            }
        }
        _ => {
            return Err(Error::BadSessionSpec {
                spec: spec.into(),
                why: format!("give one WHEN or a range FROM,TO ({})", crate::ops::when::RULE),
            })
        }
    };
    Ok(chosen)
}

/// `send --autoprune=on` before sending a volume whose change (`needed` bytes) exceeds the
/// destination's free space (behaviour §7.6 step 5): passes of autoprune over the volume
/// removing at most 3, then 9 sessions per volume, then all that the calendar marks, each pass
/// recomputing the calendar, until the space is there or nothing more can go. Returns what was
/// removed; the caller finds out from the send itself whether the space then sufficed.
pub(crate) fn make_room(
    wa: &mut WriteArchive,
    name: &str,
    needed: u64,
    cal: crate::ops::autoprune::Calendar,
) -> Result<Vec<PruneReport>> {
    let names = [name.to_string()];
    let mut removed = Vec::new();
    let mut factor = 1;
    if matches!(wa.free_space()?, Some(free) if free < needed) {
        // What an interrupted send staged for its resume goes before any session does.
        if let Some(vi) = wa.volume_index(name) {
            wa.drop_resume(vi)?;
        }
    }
    loop {
        match wa.free_space()? {
            Some(free) if free < needed => {
                tracing::info!("{free} bytes free, about {needed} needed: autoprune");
            }
            _ => break,
        }
        let o = PruneOptions {
            autoprune: AutoMode::On,
            apdays: cal.apdays,
            now: cal.now,
            on_limit: Some(if factor > 4 { usize::MAX } else { 3 * factor }),
            ..Default::default()
        };
        let pass: Vec<PruneReport> = run(wa, &names, &o)?
            .into_iter()
            .filter(|r| !r.removed.is_empty())
            .collect();
        if pass.is_empty() {
            break;
        }
        removed.extend(pass);
        factor += 2;
    }
    Ok(removed)
}

use crate::format::ids::is_metadata_volume;

/// Autoprune's marks less its thinning: wyng-*metadata volumes lose only sessions older than
/// the calendar's A days (behaviour §7.6 step 4 exempts them from thinning).
fn age_marks_only(
    marks: &std::collections::BTreeSet<SessionName>,
    o: &PruneOptions,
) -> Result<std::collections::BTreeSet<SessionName>> {
    let today = o.now.date();
    Ok(marks
        .iter()
        .filter(|s| crate::ops::autoprune::past_age(s, o.apdays, today))
        .cloned()
        .collect())
}

/// What a prune would do to the named volumes (all, if none are named), changing nothing.
pub fn plan(archive: &Archive, names: &[String], o: &PruneOptions) -> Result<Vec<PruneReport>> {
    let mut names = resolve(archive, names)?;
    // wyng-*metadata volumes last (behaviour §11), or not at all.
    names.sort_by_key(|n| is_metadata_volume(n));
    if o.spare_metadata {
        names.retain(|n| {
            let spare = is_metadata_volume(n);
            if spare {
                tracing::warn!(
                    "{n}: a wyng-*metadata volume is pruned only by --all (of every volume)"
                );
            }
            !spare
        });
    }
    if let Some(spec) = &o.session {
        // A selection that matches no session of any volume is a mistake (a mistyped tag or
        // date), not a prune with nothing to do.
        let mut matched = false;
        for n in &names {
            matched |= !select_spec(archive.find(n)?, spec, o)?.is_empty();
        }
        // As `receive` of a session that is not there: a selection error (exit 2).
        if !matched && !names.is_empty() {
            return Err(Error::NoSessionMatches {
                spec: spec.clone(),
                of: if names.len() == 1 {
                    format!("volume '{}'", names[0])
                } else {
                    "the selected volumes".into()
                },
            });
        }
    }
    let auto = autoprune_marks(archive, o)?;
    names
        .iter()
        .map(|name| {
            let vol = archive.find(name)?;
            let auto = if is_metadata_volume(name) {
                age_marks_only(&auto, o)?
            } else {
                auto.clone()
            };
            let Selection { remove, keep } = select_with(vol, o, &auto)?;
            Ok(PruneReport {
                volume: name.clone(),
                removed: remove
                    .iter()
                    .map(|&i| vol.sessions[i].name.to_string())
                    .collect(),
                kept: keep
                    .into_iter()
                    .map(|(i, why)| (vol.sessions[i].name.to_string(), why))
                    .collect(),
            })
        })
        .collect()
}

fn resolve(archive: &Archive, names: &[String]) -> Result<Vec<String>> {
    if names.is_empty() {
        return Ok(archive.volume_names());
    }
    for n in names {
        archive.find(n)?;
    }
    Ok(names.to_vec())
}

/// Prunes the named volumes (all, if none are named).
pub fn run(wa: &mut WriteArchive, names: &[String], o: &PruneOptions) -> Result<Vec<PruneReport>> {
    let reports = plan(wa, names, o)?;
    if o.dry_run {
        return Ok(reports);
    }
    for r in &reports {
        let vi = wa.find_index(&r.volume)?;
        let vol = &wa.volumes()[vi];
        let chosen: Vec<usize> = r
            .removed
            .iter()
            .filter_map(|s| {
                crate::format::SessionName::parse(s).and_then(|n| vol.session_index(&n))
            })
            .collect();
        remove_sessions(wa, vi, chosen)?;
    }
    Ok(reports)
}

/// Removes sessions `chosen` (ascending indices, never the newest) of volume `vi`: each run of
/// consecutive ones is merged into the session after it, newest run first so earlier indices
/// stay valid.
pub(crate) fn remove_sessions(wa: &mut WriteArchive, vi: usize, chosen: Vec<usize>) -> Result<()> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for i in chosen {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == i => *last = i,
            _ => runs.push((i, i)),
        }
    }
    for (first, last) in runs.into_iter().rev() {
        wa.merge_sessions(vi, first, last)?;
    }
    Ok(())
}

/// The sessions autoprune marks, decided on every volume's sessions together (§7.6).
fn autoprune_marks(
    archive: &Archive,
    o: &PruneOptions,
) -> Result<std::collections::BTreeSet<SessionName>> {
    use std::collections::BTreeSet;
    if o.autoprune == AutoMode::Off {
        return Ok(BTreeSet::new());
    }
    let mut candidates = BTreeSet::new();
    let mut keep = BTreeSet::new();
    for vol in archive.volumes() {
        let n = vol.sessions.len();
        for (i, s) in vol.sessions.iter().enumerate() {
            if i + 1 < n {
                candidates.insert(s.name.clone());
            }
        }
        for k in &o.keep {
            keep.extend(
                kept_by(vol, k, o.now)?
                    .into_iter()
                    .map(|i| vol.sessions[i].name.clone()),
            );
        }
    }
    let today = o.now.date();
    Ok(crate::ops::autoprune::marks(
        &candidates,
        &keep,
        o.apdays,
        today,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed calendar (2026-11-02 is a Monday, ISO week 45), checked by hand.
    const CAL: [&str; 8] = [
        "S_20261025-120000", // 0 Sun, week 43, October
        "S_20261101-010000", // 1 Sun, week 44
        "S_20261101-230000", // 2 Sun, week 44
        "S_20261102-080000", // 3 Mon, week 45
        "S_20261102-090000", // 4 Mon, week 45, hour 09
        "S_20261102-093000", // 5 Mon, week 45, hour 09 (newer)
        "S_20261130-100000", // 6 Mon, week 49, November
        "S_20261201-100000", // 7 Tue, week 49, December
    ];

    fn kept(p: Policy) -> Vec<(usize, Vec<&'static str>)> {
        let names: Vec<SessionName> = CAL.iter().map(|n| SessionName::parse(n).unwrap()).collect();
        let refs: Vec<&SessionName> = names.iter().collect();
        p.reasons(&refs)
            .into_iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .collect()
    }

    #[test]
    fn bucket_policies_on_a_fixed_calendar() {
        assert_eq!(
            kept(Policy {
                last: 2,
                ..Default::default()
            }),
            vec![(6, vec!["last"]), (7, vec!["last"])]
        );
        assert_eq!(
            kept(Policy {
                daily: 3,
                weekly: 2,
                ..Default::default()
            }),
            vec![
                (5, vec!["daily", "weekly"]),
                (6, vec!["daily"]),
                (7, vec!["daily", "weekly"])
            ]
        );
        // Two sessions in hour 09 of Nov 2: only the newer one counts for that hour.
        assert_eq!(
            kept(Policy {
                hourly: 4,
                ..Default::default()
            }),
            vec![
                (3, vec!["hourly"]),
                (5, vec!["hourly"]),
                (6, vec!["hourly"]),
                (7, vec!["hourly"])
            ]
        );
        assert_eq!(
            kept(Policy {
                monthly: 3,
                yearly: 1,
                ..Default::default()
            }),
            vec![
                (0, vec!["monthly"]),
                (6, vec!["monthly"]),
                (7, vec!["monthly", "yearly"])
            ]
        );
        // Weeks 49, 45, 44, 43: the newest of each.
        assert_eq!(
            kept(Policy {
                weekly: 10,
                ..Default::default()
            }),
            vec![
                (0, vec!["weekly"]),
                (2, vec!["weekly"]),
                (5, vec!["weekly"]),
                (7, vec!["weekly"])
            ]
        );
        assert!(kept(Policy::default()).is_empty());
    }
}
