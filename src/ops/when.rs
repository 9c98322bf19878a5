//! How users name a session (`--session=WHEN`), wherever one is chosen.
//!
//! * `latest`, `newest` or `last`: the newest session.
//! * `^TAG`: the newest session carrying the tag (prune: every one).
//! * a date-time `20261205-101500` (also `S_20261205-101500`, `2026-12-05T10:15:00`): that
//!   session.
//! * a prefix of one, `20261205`, `2026-12-05`, `20261205-10`, `2026-12-05 10:15`: the newest
//!   session in that day, hour or minute (prune: every one).
//! * a time ago, `90m`, `36h`, `2d`, `1w`, or `yesterday` (the end of it), `today`, `now`: the
//!   newest session as of then, i.e. not after it.
//!
//! Invariants: an impossible date (month 13, 25 o'clock) is bad input (`Usage`, exit 9), never
//! "no such session"; the clock is the caller's (`now`), so the rule is a pure function.

use chrono::{Duration, NaiveDate, NaiveDateTime, NaiveTime};

use crate::error::{Error, Result};
use crate::format::SessionName;

/// What `--session=WHEN` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum When {
    Newest,
    Tag(String),
    /// Sessions named from `from` to `to` inclusive: one second for a full date-time, a whole
    /// day (hour, minute) for a prefix.
    Span {
        from: SessionName,
        to: SessionName,
    },
    /// The newest session not after this time.
    AsOf(SessionName),
}

/// The help text's summary of the rule.
pub(crate) const RULE: &str = "WHEN is latest (or newest), ^TAG, a date-time 20261205-101500, a day, hour or minute of one (20261205, 2026-12-05, 20261205-10: the newest in it), or a time ago: 90m, 36h, 2d, 1w, yesterday (the newest as of then)";

impl When {
    pub fn parse(s: &str, now: NaiveDateTime) -> Result<When> {
        let bad = |why: &str| Error::BadSessionSpec {
            spec: crate::archive::sanitized(s),
            why: format!("{why}; {RULE}"),
        };
        let t = s.trim();
        match t.to_ascii_lowercase().as_str() {
            "latest" | "newest" | "last" => return Ok(When::Newest),
            "now" | "today" => return Ok(When::AsOf(name_of(now))),
            "yesterday" => {
                let end = (now.date() - Duration::days(1)).and_time(end_of_day());
                return Ok(When::AsOf(name_of(end)));
            }
            _ => {}
        }
        if let Some(tag) = t.strip_prefix('^') {
            if tag.is_empty() {
                return Err(bad("a tag is missing after ^"));
            }
            return Ok(When::Tag(tag.to_lowercase()));
        }
        if let Some(ago) = ago(t) {
            let ago = ago.ok_or_else(|| bad("that is further back than dates go"))?;
            let at = now
                .checked_sub_signed(ago)
                .ok_or_else(|| bad("that is too long ago"))?;
            return Ok(When::AsOf(name_of(at)));
        }
        span(t.strip_prefix("S_").unwrap_or(t)).map_err(|why| bad(&why))
    }
}

fn end_of_day() -> NaiveTime {
    NaiveTime::from_hms_opt(23, 59, 59).expect("a valid time")
}

fn name_of(t: NaiveDateTime) -> SessionName {
    SessionName::parse(&t.format("S_%Y%m%d-%H%M%S").to_string()).expect("a formatted name")
}

/// `90m`, `36h`, `2d`, `1w`, `30s`: how long ago (`Some(None)`: a number too large).
fn ago(t: &str) -> Option<Option<Duration>> {
    let unit = t.chars().last()?;
    let n: i64 = t[..t.len() - unit.len_utf8()].parse().ok()?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        'w' => 7 * 86400,
        _ => return None,
    };
    Some(n.checked_mul(secs).and_then(Duration::try_seconds))
}

/// A date-time or a prefix of one, with or without separators (`-`, `:`, `T`, space).
fn span(t: &str) -> std::result::Result<When, String> {
    let digits: String = t.chars().filter(|c| c.is_ascii_digit()).collect();
    let separators_only = t
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '-' | ':' | 'T' | ' ' | '_'));
    if !separators_only || !matches!(digits.len(), 8 | 10 | 12 | 14) {
        return Err("not a session name, date, time ago or tag".into());
    }
    let num = |r: std::ops::Range<usize>| digits[r].parse::<u32>().expect("digits");
    let date = NaiveDate::from_ymd_opt(num(0..4) as i32, num(4..6), num(6..8))
        .ok_or_else(|| format!("{} is not a date", &digits[..8]))?;
    let field = |at: usize, max: u32, what: &str| -> std::result::Result<Option<u32>, String> {
        if digits.len() <= at {
            return Ok(None);
        }
        let v = num(at..at + 2);
        (v <= max)
            .then_some(Some(v))
            .ok_or_else(|| format!("{v} is not a valid {what}"))
    };
    let (h, m, s) = (
        field(8, 23, "hour")?,
        field(10, 59, "minute")?,
        field(12, 59, "second")?,
    );
    let at = |h: u32, m: u32, s: u32| {
        name_of(date.and_time(NaiveTime::from_hms_opt(h, m, s).expect("checked above")))
    };
    Ok(When::Span {
        from: at(h.unwrap_or(0), m.unwrap_or(0), s.unwrap_or(0)),
        to: at(h.unwrap_or(23), m.unwrap_or(59), s.unwrap_or(59)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 12, 6)
            .unwrap()
            .and_hms_opt(10, 30, 0)
            .unwrap()
    }

    fn name(s: &str) -> SessionName {
        SessionName::parse(s).unwrap()
    }

    fn span(a: &str, b: &str) -> When {
        When::Span {
            from: name(a),
            to: name(b),
        }
    }

    #[test]
    fn every_form_people_use() {
        let p = |s| When::parse(s, now()).unwrap();
        assert_eq!(p("latest"), When::Newest);
        assert_eq!(p("Newest"), When::Newest);
        assert_eq!(p("^Weekly"), When::Tag("weekly".into()));
        let one = span("S_20261205-101500", "S_20261205-101500");
        assert_eq!(p("20261205-101500"), one);
        assert_eq!(p("S_20261205-101500"), one);
        assert_eq!(p("2026-12-05T10:15:00"), one);
        assert_eq!(p("2026-12-05 10:15:00"), one);
        let day = span("S_20261205-000000", "S_20261205-235959");
        assert_eq!(p("20261205"), day);
        assert_eq!(p("2026-12-05"), day);
        assert_eq!(
            p("20261205-10"),
            span("S_20261205-100000", "S_20261205-105959")
        );
        assert_eq!(
            p("2026-12-05 10:15"),
            span("S_20261205-101500", "S_20261205-101559")
        );
        assert_eq!(p("2d"), When::AsOf(name("S_20261204-103000")));
        assert_eq!(p("90m"), When::AsOf(name("S_20261206-090000")));
        assert_eq!(p("1w"), When::AsOf(name("S_20261129-103000")));
        assert_eq!(p("yesterday"), When::AsOf(name("S_20261205-235959")));
        assert_eq!(p("now"), When::AsOf(name("S_20261206-103000")));
    }

    #[test]
    fn impossible_dates_are_bad_input() {
        for s in [
            "20261301-256161",
            "20261232",
            "20260230",
            "20261205-25",
            "20261205-1060",
            "2026120",
            "tuesday",
            "^",
            "99999999999999999999d",
            "12x",
        ] {
            match When::parse(s, now()) {
                Err(e @ Error::BadSessionSpec { .. }) => {
                    assert!(e.to_string().contains("latest"), "{e}")
                }
                other => panic!("{s}: {other:?}"),
            }
        }
    }
}
