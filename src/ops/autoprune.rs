//! Autoprune: calendar-based thinning of old sessions (behaviour notes §7.6), used by
//! `prune --autoprune=on|full` and `send --autoprune=full`.
//!
//! `--apdays=A:B:C:D` (default `0:62:1:2`): sessions older than A days are removed (A = 0: none);
//! sessions older than B days are thinned so that every window of C days keeps at most D of them.
//! Newer sessions are never touched.
//!
//! Invariants:
//! * Decisions are made on the calendar of *all* volumes' sessions together, minus each volume's
//!   newest session, so every volume thins the same dates and a volume's newest session is never
//!   removed.
//! * `--keep` sessions are never removed. Thinning that reaches one spares it and goes on, so it
//!   does not use up its window's quota (as the original's un-keep step does).
//! * Only the dates are decided here; removal is prune's journaled merge.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, Days, NaiveDate};

use crate::error::{Error, Result};
use crate::format::SessionName;

/// Autoprune's calendar (`--apdays`) as of a time (the caller's clock).
#[derive(Clone, Copy, Debug)]
pub struct Calendar {
    pub apdays: ApDays,
    pub now: chrono::NaiveDateTime,
}

/// `A:B:C:D` of `--apdays`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApDays {
    /// Remove sessions older than this many days (0: never).
    pub remove_after: u64,
    /// Thin sessions older than this many days (0: never).
    pub thin_after: u64,
    /// Window length in days.
    pub window: u64,
    /// Sessions kept per window.
    pub per_window: u64,
}

impl Default for ApDays {
    fn default() -> Self {
        ApDays {
            remove_after: 0,
            thin_after: 62,
            window: 1,
            per_window: 2,
        }
    }
}

impl ApDays {
    pub fn parse(s: &str) -> Result<ApDays> {
        let bad = || {
            Error::BadValue {
                setting: crate::error::Setting::AutopruneDays,
                value: s.into(),
                expected: "use A:B:C:D (whole days: remove after A, thin after B, keep D per C days; C, D >= 1)".into(),
            }
        };
        let v: Vec<u64> = s
            .split(':')
            .map(|x| x.trim().parse::<u64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad())?;
        match v[..] {
            [a, b, c, d] if c >= 1 && d >= 1 && a <= 100_000 && b <= 100_000 && c <= 10_000 => {
                Ok(ApDays {
                    remove_after: a,
                    thin_after: b,
                    window: c,
                    per_window: d,
                })
            }
            _ => Err(bad()),
        }
    }

    /// Whether these parameters can remove anything.
    pub(crate) fn is_off(&self) -> bool {
        self.remove_after == 0 && self.thin_after == 0
    }
}

fn date_of(n: &SessionName) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(&n.date()[..8], "%Y%m%d").ok()
}

/// Whether step 3 (removal by age) alone marks session `n` as of `today`.
pub(crate) fn past_age(n: &SessionName, ap: ApDays, today: NaiveDate) -> bool {
    ap.remove_after > 0
        && today
            .checked_sub_days(Days::new(ap.remove_after))
            .zip(date_of(n))
            .is_some_and(|(oldest, d)| d <= oldest)
}

/// The sessions (by name) that autoprune removes, from the calendar `candidates` (every
/// volume's sessions except each volume's newest), as of `today`. `keep` are never removed.
pub fn marks(
    candidates: &BTreeSet<SessionName>,
    keep: &BTreeSet<SessionName>,
    ap: ApDays,
    today: NaiveDate,
) -> BTreeSet<SessionName> {
    let mut out = BTreeSet::new();
    if ap.is_off() || candidates.is_empty() {
        return out;
    }
    let dated: Vec<(NaiveDate, &SessionName)> = candidates
        .iter()
        .filter_map(|n| date_of(n).map(|d| (d, n)))
        .collect();
    // Step 3: everything older than A days.
    if ap.remove_after > 0 {
        if let Some(oldest) = today.checked_sub_days(Days::new(ap.remove_after)) {
            for (d, n) in &dated {
                if *d <= oldest && !keep.contains(*n) {
                    out.insert((*n).clone());
                }
            }
        }
    }
    // Step 4: thinning up to min(the second newest candidate, today - B).
    if ap.thin_after == 0 || dated.len() <= 2 {
        return out;
    }
    let Some(horizon) = today.checked_sub_days(Days::new(ap.thin_after)) else {
        return out;
    };
    let enddate = dated[dated.len() - 2].0.min(horizon);
    // Day → its sessions still kept, oldest first.
    let mut days: BTreeMap<NaiveDate, Vec<&SessionName>> = BTreeMap::new();
    for (d, n) in &dated {
        if !out.contains(*n) {
            days.entry(*d).or_default().push(n);
        }
    }
    let first_year = dated[0].0.year();
    let c = ap.window;
    let d_keep = ap.per_window as usize;
    for year in first_year..=enddate.year() {
        let Some(mut start) = NaiveDate::from_ymd_opt(year, 1, 1) else {
            continue;
        };
        while start <= enddate && start.year() == year {
            // The window [start, start + C), cut at the year's end and at enddate.
            let mut len = 0u64;
            while len < c {
                let day = start + Days::new(len);
                if day > enddate || day.year() != year {
                    break;
                }
                len += 1;
            }
            let window: Vec<NaiveDate> = (0..len).map(|i| start + Days::new(i)).collect();
            let kept = |days: &BTreeMap<NaiveDate, Vec<&SessionName>>| {
                window
                    .iter()
                    .map(|d| days.get(d).map_or(0, Vec::len))
                    .sum::<usize>()
            };
            let modulus = c.min(len).max(1) as usize;
            let step = (c / ap.per_window + 1) as usize;
            let mut offset = 0usize;
            while kept(&days) > d_keep {
                // The fullest day at or after `offset` (the first of equals).
                let (mut best, mut most) = (offset, 0usize);
                for (i, day) in window.iter().enumerate().skip(offset) {
                    let k = days.get(day).map_or(0, Vec::len);
                    if k > most {
                        (best, most) = (i, k);
                    }
                }
                offset = (offset + step) % modulus;
                if most == 0 {
                    continue;
                }
                let list = days.get_mut(&window[best]).expect("counted above");
                let n = list.remove(0);
                if !keep.contains(n) {
                    out.insert(n.clone());
                }
            }
            start = start + Days::new(len.max(1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> BTreeSet<SessionName> {
        v.iter()
            .map(|s| SessionName::parse(&format!("S_{s}")).unwrap())
            .collect()
    }

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
    }

    #[test]
    fn apdays_parse() {
        assert_eq!(ApDays::parse("0:62:1:2").unwrap(), ApDays::default());
        assert_eq!(ApDays::parse("365:30:7:1").unwrap().per_window, 1);
        for bad in ["1:2:3", "1:2:0:1", "1:2:1:0", "a:b:c:d", "-1:2:3:4", ""] {
            assert!(ApDays::parse(bad).is_err(), "{bad}");
        }
        assert!(ApDays::parse("0:0:1:1").unwrap().is_off());
    }

    #[test]
    fn old_sessions_go_and_recent_ones_stay() {
        // Hourly sessions for 100 days.
        let mut all = BTreeSet::new();
        let start = today() - Days::new(100);
        for day in 0..100u64 {
            for h in [1, 7, 13, 19] {
                let d = start + Days::new(day);
                all.insert(
                    SessionName::parse(&format!("S_{}-{h:02}0000", d.format("%Y%m%d"))).unwrap(),
                );
            }
        }
        let keep = names(&["20260901-070000"]);
        let ap = ApDays::parse("90:30:7:2").unwrap();
        let gone = marks(&all, &keep, ap, today());
        let left: Vec<&SessionName> = all.iter().filter(|n| !gone.contains(*n)).collect();
        let horizon = today() - Days::new(30);
        for n in &left {
            let d = date_of(n).unwrap();
            assert!(d > today() - Days::new(90), "{n} is older than 90 days");
        }
        // Everything in the last 30 days stays.
        for n in &all {
            if date_of(n).unwrap() > horizon {
                assert!(!gone.contains(n), "{n} is recent");
            }
        }
        assert!(!gone.contains(keep.iter().next().unwrap()));
        // Thinned windows of 7 days (from 1 Jan) keep at most 2, plus --keep.
        let mut per_window: BTreeMap<i64, usize> = BTreeMap::new();
        for n in &left {
            let d = date_of(n).unwrap();
            if d <= horizon {
                let w = (d.ordinal0() / 7) as i64;
                *per_window.entry(w).or_default() += 1;
            }
        }
        assert!(per_window.values().all(|&k| k <= 3), "{per_window:?}");
        assert!(per_window.values().any(|&k| k == 2), "{per_window:?}");
    }

    #[test]
    fn few_sessions_or_off_means_nothing() {
        let all = names(&["20200101-000000", "20200102-000000"]);
        assert!(marks(&all, &BTreeSet::new(), ApDays::default(), today()).is_empty());
        let ap = ApDays::parse("0:0:1:1").unwrap();
        assert!(marks(&all, &BTreeSet::new(), ap, today()).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn never_removes_kept_or_recent(days in proptest::collection::vec(0u64..400, 0..60), a in 0u64..200, b in 0u64..100, c in 1u64..10, d in 1u64..4) {
            let all: BTreeSet<SessionName> = days.iter().enumerate().map(|(i, &back)| {
                let day = today() - Days::new(back);
                SessionName::parse(&format!("S_{}-{:02}{:02}00", day.format("%Y%m%d"), i % 24, i % 60)).unwrap()
            }).collect();
            let keep: BTreeSet<SessionName> = all.iter().step_by(5).cloned().collect();
            let ap = ApDays { remove_after: a, thin_after: b, window: c, per_window: d };
            let gone = marks(&all, &keep, ap, today());
            for n in &gone {
                proptest::prop_assert!(all.contains(n) && !keep.contains(n));
                let age = (today() - date_of(n).unwrap()).num_days() as u64;
                proptest::prop_assert!((a > 0 && age >= a) || (b > 0 && age >= b), "{} age {}", n, age);
            }
        }
    }
}
