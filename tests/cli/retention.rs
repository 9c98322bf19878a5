//! Snapshot tests (insta) of retention decisions on fixed calendars: autoprune's calendar
//! thinning (behaviour notes §7.6) and the bucket policies (`--keep-daily=N`...). Each
//! snapshot is a table a person can check against the algorithm: the expected outcomes are
//! worked out by hand in the comments, and the snapshots were reviewed against them.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use wyng::format::SessionName;
use wyng::ops::autoprune::{marks, ApDays};
use wyng::ops::prune::Policy;

fn name(s: &str) -> SessionName {
    SessionName::parse(&format!("S_{s}")).unwrap()
}

/// A volume's history: bursts on a few days, then a recent stretch, then the newest session.
fn calendar() -> Vec<SessionName> {
    [
        "20260105-080000",
        "20260105-100000",
        "20260105-120000",
        "20260105-140000",
        "20260105-160000",
        "20260106-090000",
        "20260210-070000",
        "20260210-130000",
        "20260210-190000",
        "20260401-010000",
        "20260401-020000",
        "20260401-030000",
        "20260401-040000",
        "20260520-060000",
        "20260520-120000",
        "20260520-180000",
        "20260520-235959",
        "20260629-120000",
    ]
    .iter()
    .map(|s| name(s))
    .collect()
}

/// Every session of the calendar with its fate; the newest is never a candidate.
fn autoprune_table(apdays: &str, keep: &[&str], today: &str) -> String {
    let all = calendar();
    let candidates: BTreeSet<SessionName> = all[..all.len() - 1].iter().cloned().collect();
    let keep: BTreeSet<SessionName> = keep.iter().map(|k| name(k)).collect();
    let today = NaiveDate::parse_from_str(today, "%Y-%m-%d").unwrap();
    let removed = marks(&candidates, &keep, ApDays::parse(apdays).unwrap(), today);
    let mut out = format!("apdays {apdays}, today {today}, keep {keep:?}\n");
    for s in &all {
        let fate = if removed.contains(s) {
            "remove"
        } else if !candidates.contains(s) {
            "keep (newest)"
        } else if keep.contains(s) {
            "keep (--keep)"
        } else {
            "keep"
        };
        out += &format!("{}  {fate}\n", s.date());
    }
    out
}

#[test]
fn autoprune_default_calendar() {
    // Horizon 2026-06-30 - 62 days = 04-29; enddate = min(05-20, 04-29). Day windows keep 2,
    // un-keeping the first (oldest) kept session of the day each time: 01-05 loses 08/10/12,
    // 01-06 keeps its one, 02-10 loses 07:00, 04-01 loses 01:00 and 02:00; 05-20 is newer
    // than the horizon and untouched.
    insta::assert_snapshot!(autoprune_table("0:62:1:2", &[], "2026-06-30"));
}

#[test]
fn autoprune_weekly_windows() {
    // C=7, D=1: windows from 1 Jan; step = 7/1 + 1 = 8, modulus 7. Jan 1-7 holds 6 sessions
    // (5 on the 5th, 1 on the 6th): the fullest day at or after the offset (0,1,2,3,4) is the
    // 5th four times, then the 5th and 6th tie at one each and the first (the 5th) goes: only
    // the 6th survives. Feb 5-11 keeps the last of 02-10; Mar 26-Apr 1 keeps 04-01 04:00.
    // enddate = min(horizon 05-31, the second-newest candidate's day 05-20) = 05-20, so the
    // last window, May 14-20, keeps only 05-20 23:59:59.
    insta::assert_snapshot!(autoprune_table("0:30:7:1", &[], "2026-06-30"));
}

#[test]
fn autoprune_remove_after_90_days_only() {
    // A=90: everything dated on or before 2026-06-30 - 90 days = 04-01 goes; B=0: no thinning.
    insta::assert_snapshot!(autoprune_table("90:0:1:1", &[], "2026-06-30"));
}

#[test]
fn autoprune_spares_kept_sessions() {
    // As the default calendar, but 01-05 08:00 is --keep: thinning reaches it first and spares
    // it, then removes 10:00 and 12:00, so 01-05 ends with 08:00, 14:00 and 16:00.
    insta::assert_snapshot!(autoprune_table(
        "0:62:1:2",
        &["20260105-080000"],
        "2026-06-30"
    ));
}

/// Every session, newest first, with the rules that keep it (or `remove`).
fn policy_table(p: Policy) -> String {
    let all = calendar();
    let refs: Vec<&SessionName> = all.iter().collect();
    let reasons = p.reasons(&refs);
    let mut out = format!("{p:?}\n");
    for i in (0..all.len()).rev() {
        let why = if reasons[i].is_empty() {
            "remove".to_string()
        } else {
            reasons[i].join(", ")
        };
        out += &format!("{}  {why}\n", all[i].date());
    }
    out
}

#[test]
fn policy_last_and_daily() {
    // last=2: 06-29 and 05-20 23:59:59. daily=3: the newest of the three newest days: 06-29,
    // 05-20 23:59:59, 04-01 04:00.
    insta::assert_snapshot!(policy_table(Policy {
        last: 2,
        daily: 3,
        ..Default::default()
    }));
}

#[test]
fn policy_weekly_monthly_yearly() {
    // weekly=3 (ISO weeks): 06-29 (W27), 05-20 23:59:59 (W21), 04-01 04:00 (W14).
    // monthly=4: 06-29, 05-20 23:59:59, 04-01 04:00, 02-10 19:00. yearly=1: 06-29.
    insta::assert_snapshot!(policy_table(Policy {
        weekly: 3,
        monthly: 4,
        yearly: 1,
        ..Default::default()
    }));
}

#[test]
fn policy_hourly_within_a_busy_day() {
    // hourly=6: each session here is in its own hour, so the six newest sessions.
    insta::assert_snapshot!(policy_table(Policy {
        hourly: 6,
        ..Default::default()
    }));
}

#[test]
fn prune_dry_run_output_on_an_original_archive() {
    // What `prune --dry-run` prints is the contract with the user: every session, kept with
    // its reasons or removed. On the original's f-multisession archive (sessions a few seconds
    // apart, one day): last=2 keeps the two newest, --keep keeps the oldest, the rest go.
    let t = crate::common::tmp();
    let ar = crate::common::copy_fixture("f-multisession", t.path());
    let w = crate::common::Wyng::new(&ar, &t.path().join("meta"));
    let list = w.json(&["list"]);
    let vol = crate::common::first_key(&list["volumes"]);
    let oldest = crate::common::first_key(&list["volumes"][&vol]["sessions"]);
    let keep = format!("--keep={}", &oldest[2..]);
    let out = w.ok(&["prune", &vol, "--keep-last=2", &keep, "--dry-run"]);
    insta::assert_snapshot!(out);
    // Nothing was changed.
    assert_eq!(w.json(&["list"]), list);
}

#[test]
fn send_keeps_what_its_retention_policy_says() {
    // btrfs-backup's `-n`: send --keep-last=2 prunes after each successful send, in the same
    // run, and says so in its JSON and text; a dry run prunes nothing. (Which sessions a policy
    // keeps after each send, read back: src/ops/semantics/prune.rs.)
    use crate::common::*;
    let t = tmp();
    let ar = t.path().join("a");
    let w = Wyng::fresh(&ar, &t.path().join("meta"));
    let img = t.path().join("v.img");
    let mut shas = Vec::new();
    // The binary waits for the clock between sends of a volume within one second.
    for i in 0..3u64 {
        Image::new(100 + i).random(200_000).write(&img);
        let r = w.send("v.img", &img, &["--keep-last=2"]);
        shas.push((
            r["session"].as_str().unwrap().to_string(),
            sha256_file(&img),
        ));
        let removed = r["retention_removed"].as_array().map_or(0, |a| a.len());
        assert_eq!(removed, usize::from(i >= 2), "send {i}: {r}");
    }
    let list = w.json(&["list", "v.img"]);
    let names: Vec<String> = list["volumes"]["v.img"]["sessions"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(names, [shas[1].0.clone(), shas[2].0.clone()]);
    let out = t.path().join("out.img");
    w.receive("v.img", Some(&shas[1].0), &out);
    assert_eq!(sha256_file(&out), shas[1].1);
    // A dry run records and prunes nothing; text output says what retention removed.
    w.ok(&[
        "send",
        "v.img",
        &format!("--import-other-from=v.img:|:{}", img.display()),
        "--keep-last=1",
        "--dry-run",
        "--send-unchanged",
    ]);
    assert_eq!(w.json(&["list", "v.img"]), list);
    Image::new(200).random(200_000).write(&img);
    let text = w.ok(&[
        "send",
        "v.img",
        &format!("--import-other-from=v.img:|:{}", img.display()),
        "--keep-last=1",
    ]);
    assert!(
        text.contains("v.img: retention removed 2 sessions"),
        "{text}"
    );
    check_strict(&ar);
}
