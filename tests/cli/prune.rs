//! prune, delete, rename, add: surviving sessions stay byte-exact, pruned ones are gone, the
//! archive stays valid for the original (checker, strict), and a crash at any step of the
//! journaled protocol is finished or rolled back by the next write command.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;

/// Sends `count` random versions of a volume (writes, zeroing, growth, shrink, tags); returns
/// session name → sha256 of the image sent.
fn random_history(w: &Wyng, t: &Path, rng: &mut Image, count: usize) -> BTreeMap<String, String> {
    let src = t.join("src.img");
    let mut img = Image::new(rng.next());
    img.random(300_000).zeros(200_000).text(100_000);
    let mut out = BTreeMap::new();
    for i in 0..count {
        if i > 0 {
            img.change_randomly(rng);
        }
        img.write(&src);
        let tag = format!("--tag=t{},tag {i}", i % 3);
        let r = w.send("vol", &src, &[&tag, "--send-unchanged"]);
        out.insert(r["session"].as_str().unwrap().to_string(), img.sha256());
    }
    out
}

fn check_all(w: &Wyng, t: &Path, live: &BTreeMap<String, String>, ar: &Path) {
    let list = w.json(&["list"]);
    let got: Vec<String> = list["volumes"]["vol"]["sessions"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let want: Vec<String> = live.keys().cloned().collect();
    assert_eq!(got, want, "surviving sessions");
    let out = t.join("out.img");
    for (s, sha) in live {
        w.receive("vol", Some(s), &out);
        assert_eq!(&sha256_file(&out), sha, "session {s}");
    }
    if let Some(report) = check_strict(ar) {
        let hashes = checker_hashes(&report, "vol");
        assert_eq!(
            hashes,
            live.iter()
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn original_archives_prune_and_stay_valid() {
    let all = expected();
    for (name, vol) in [
        ("f-multisession", "multi.img"),
        ("h-tags", "tagged"),
        ("g-dedup", "vol-a"),
    ] {
        let exp = &all["archives"][name];
        let t = tmp();
        let ar = copy_fixture(name, t.path());
        let w = Wyng::new(&ar, &t.path().join("meta"));
        let vol = if exp["volumes"].get(vol).is_some() {
            vol.to_string()
        } else {
            exp["volumes"]
                .as_object()
                .unwrap()
                .keys()
                .next()
                .unwrap()
                .clone()
        };
        let sessions = exp["volumes"][&vol]["sessions"].as_array().unwrap();
        let links_before = count_links(&ar);
        let first = &sessions[0]["name"].as_str().unwrap()[2..];
        w.ok(&["prune", &vol, &format!("--session={first}"), "-u"]);
        let out = t.path().join("o.img");
        for s in &sessions[1..] {
            w.receive(&vol, Some(s["name"].as_str().unwrap()), &out);
            assert_eq!(
                sha256_file(&out),
                s["sha256"].as_str().unwrap(),
                "{name} {vol} {}",
                s["name"]
            );
        }
        if name == "g-dedup" {
            // Chunks are moved by rename: hard links survive.
            assert!(count_links(&ar) > 0 && links_before > 0);
        }
        check_strict(&ar);
    }
}

#[test]
fn autoprune_thins_by_calendar_on_original_archives() {
    let all = expected();
    let exp = &all["archives"]["f-multisession"];
    let vol = first_key(&exp["volumes"]);
    let sessions: Vec<(String, String)> = exp["volumes"][&vol]["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let n = s["name"].as_str().unwrap().to_string();
            (n, s["sha256"].as_str().unwrap().to_string())
        })
        .collect();
    assert!(sessions.len() >= 5);
    let day = &sessions[0].0[2..10];
    // Two days after the sessions were made (all on one day): thin days older than 1 day to
    // 1 session per day, keeping the oldest explicitly.
    let later = chrono::NaiveDate::parse_from_str(day, "%Y%m%d").unwrap() + chrono::Days::new(2);
    let t = tmp();
    let ar = copy_fixture("f-multisession", t.path());
    let mut w = Wyng::new(&ar, &t.path().join("meta"));
    w.env
        .push(("WYNG_TODAY".into(), later.format("%Y-%m-%d").to_string()));
    let keep = format!("--keep={}", &sessions[0].0[2..]);
    let args = [
        "prune",
        "-a",
        "--autoprune=full",
        "--apdays=0:1:1:1",
        keep.as_str(),
    ];
    let dry = w.json(&[&args[..], &["--dry-run"]].concat());
    let n = sessions.len();
    // Candidates are all but the newest; one per day survives thinning (the newest of them),
    // plus --keep and the newest session.
    let want: Vec<&str> = sessions[1..n - 2].iter().map(|s| s.0.as_str()).collect();
    assert_eq!(dry[0]["removed"], serde_json::json!(want), "{dry}");
    w.ok(&[&args[..], &["-u"]].concat());
    let out = t.path().join("o.img");
    let left = [&sessions[0], &sessions[n - 2], &sessions[n - 1]];
    let listed = w.json(&["list", &vol]);
    assert_eq!(
        listed["volumes"][&vol]["sessions"]
            .as_object()
            .unwrap()
            .len(),
        3,
        "{listed}"
    );
    for (s, sha) in left {
        w.receive(&vol, Some(s), &out);
        assert_eq!(&sha256_file(&out), sha, "{s}");
    }
    check_strict(&ar);
    // Nothing older than the horizon is left to thin; "on" removes nothing more.
    let r = w.json(&["prune", "-a", "--autoprune=on", "--apdays=0:1:1:1", "-u"]);
    assert_eq!(r[0]["removed"], serde_json::json!([]), "{r}");
    w.fails(&["prune", "--autoprune=sometimes"], 9);

    // send --autoprune=on prunes only when the destination lacks the space for the change
    // (see send_autoprune_on_makes_room); with room to spare it removes nothing.
    let t2 = tmp();
    let ar2 = copy_fixture("h-tags", t2.path());
    let mut w2 = Wyng::new(&ar2, &t2.path().join("meta"));
    w2.env = w.env.clone();
    let img = t2.path().join("newest.img");
    w2.receive("tagged", None, &img);
    let imp = format!("--import-other-from=tagged:|:{}", img.display());
    let args = [
        "send",
        "tagged",
        &imp,
        "--send-unchanged",
        "--apdays=1:0:1:1",
    ];
    let r = w2.json(&[&args[..], &["--autoprune=on"]].concat());
    assert_eq!(r[0]["autopruned"], serde_json::json!([]), "{r}");
    let listed = w2.json(&["list", "tagged"]);
    assert_eq!(
        listed["volumes"]["tagged"]["sessions"]
            .as_object()
            .unwrap()
            .len(),
        4,
        "{listed}"
    );
    // full thins every volume before sending: those older than a day go, never the newest
    // (here the session the send above made).
    w2.ok(&[&args[..], &["--autoprune=full"]].concat());
    let listed = w2.json(&["list", "tagged"]);
    let left: Vec<&String> = listed["volumes"]["tagged"]["sessions"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(left.len(), 2, "{listed}");
    assert_eq!(left[0], r[0]["session"].as_str().unwrap(), "{listed}");
    check_strict(&ar2);
    w.fails(&["prune", "-a", "--autoprune=on", "--apdays=1:2:0:1"], 9);
}

fn count_links(ar: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    chunk_files(ar)
        .iter()
        .filter(|f| std::fs::metadata(f).unwrap().nlink() > 1)
        .count()
}

#[test]
fn a_crash_at_any_step_is_finished_or_rolled_back() {
    // One history, copied for each crash point (its own meta dir: another machine).
    let t = tmp();
    let base = t.path().join("base");
    let w = Wyng::fresh(&base, &t.path().join("meta"));
    let mut rng = Image::new(11);
    let live = random_history(&w, t.path(), &mut rng, 5);
    let names: Vec<String> = live.keys().cloned().collect();
    let spec = format!("--session={},{}", &names[1][2..], &names[2][2..]);
    for point in [
        "merge-journaled",
        "merge-init",
        "merge-moving",
        "merge-moved",
        "merge-finalizing",
    ] {
        let ar = t.path().join(point);
        copy_dir(&base, &ar);
        let w = Wyng::new(&ar, &t.path().join(format!("meta-{point}")));
        let o = w
            .cmd(&["prune", "vol", &spec, "-u"])
            .env("WYNG_FAILPOINT", point)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{point}");
        // Any write command finishes the job first.
        w.ok(&["prune", "vol", "--session=newest", "-u"]);
        let mut expect = live.clone();
        let rolled_back = matches!(point, "merge-journaled" | "merge-init");
        if !rolled_back {
            expect.remove(&names[1]);
            expect.remove(&names[2]);
        }
        check_all(&w, t.path(), &expect, &ar);
        assert!(!ar
            .join(format!(
                "{}/merge",
                w.json(&["list"])["volumes"]["vol"]["vid"].as_str().unwrap()
            ))
            .exists());
    }
}

#[test]
fn delete_rename_add() {
    let t = tmp();
    let ar = t.path().join("a");
    let w = Wyng::new(&ar, &t.path().join("meta"));
    w.ok(&["arch-init", "--encrypt=off"]);
    let src = t.path().join("s");
    Image::new(1).random(100_000).write(&src);
    w.send("one", &src, &[]);
    w.send("two", &src, &[]);
    w.ok(&["add", "empty/vol", "--volume-desc=nothing yet"]);
    w.ok(&["rename", "one", "renamed/one", "--volume-desc=Renamed"]);
    let list = w.json(&["list"]);
    assert_eq!(list["volumes"]["renamed/one"]["desc"], "Renamed");
    assert!(list["volumes"]["empty/vol"].is_object());
    w.fails(&["rename", "two", "renamed/one"], 9);
    w.fails(&["rename", "nosuch", "x"], 2);
    // A delete killed after its journal is finished by the next write command.
    let o = w
        .cmd(&["delete", "two", "-u"])
        .env("WYNG_FAILPOINT", "delete-journaled")
        .output()
        .unwrap();
    assert!(!o.status.success());
    w.ok(&["add", "another"]);
    let list = w.json(&["list"]);
    assert!(list["volumes"].get("two").is_none(), "{list}");
    let out = t.path().join("o");
    w.receive("renamed/one", None, &out);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
    w.ok(&["delete", "renamed/one", "-u"]);
    assert_eq!(
        std::fs::read_dir(&ar)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("Vol_"))
            .count(),
        2
    );
    check_strict(&ar);
}

#[test]
fn retention_policy_with_dry_run_reasons() {
    let t = tmp();
    let ar = t.path().join("a");
    let w = Wyng::fresh(&ar, &t.path().join("meta"));
    let mut rng = Image::new(5);
    let mut live = random_history(&w, t.path(), &mut rng, 6);
    let names: Vec<String> = live.keys().cloned().collect();
    // Tags t0,t1,t2 repeat: t0 is on sessions 0 and 3. Keep the 2 newest and every t0.
    let out = w.ok(&["prune", "vol", "--keep-last=2", "--keep=^t0", "--dry-run"]);
    assert!(
        out.contains(&format!("keep   {}  (newest, last)", &names[5][2..])),
        "{out}"
    );
    assert!(
        out.contains(&format!("keep   {}  (keep ^t0)", &names[0][2..])),
        "{out}"
    );
    assert!(out.contains(&format!("remove {}", &names[1][2..])), "{out}");
    assert_eq!(
        w.json(&["list"])["volumes"]["vol"]["sessions"]
            .as_object()
            .unwrap()
            .len(),
        6,
        "dry run"
    );
    w.fails(&["prune", "vol"], 9);
    let r: serde_json::Value = serde_json::from_str(&w.ok(&[
        "prune",
        "vol",
        "--keep-last=2",
        "--keep=^t0",
        "-u",
        "--json",
    ]))
    .unwrap();
    let removed: Vec<&str> = r[0]["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(removed, [names[1].as_str(), names[2].as_str()]);
    for s in &removed {
        live.remove(*s);
    }
    check_all(&w, t.path(), &live, &ar);
    // Off a terminal nothing is asked (as the original): ^t1 is on session 4 (not the newest).
    let r: serde_json::Value =
        serde_json::from_str(&w.ok(&["prune", "vol", "--session=^t1", "--json"])).unwrap();
    assert_eq!(r[0]["removed"], serde_json::json!([names[4]]), "{r}");
}

/// kill -9 at random moments of prune, delete and arch-deduplicate: the next write command
/// leaves a complete, valid archive, and nothing that was not selected is lost.
#[test]
fn kill_9_during_prune_delete_and_dedup() {
    use std::time::{Duration, Instant};
    let t = tmp();
    let base = t.path().join("base");
    let w = Wyng::fresh(&base, &t.path().join("meta-base")).named_sessions();
    let src = t.path().join("s.img");
    let mut img = Image::new(9);
    img.random(12 << 20);
    let mut live = BTreeMap::new();
    for i in 0..5 {
        img.scribble(i * (2 << 20), 3 << 20);
        img.write(&src);
        let r = w.send("vol", &src, &[]);
        live.insert(r["session"].as_str().unwrap().to_string(), img.sha256());
    }
    // A second volume, a copy of the first's data, for delete and dedup.
    w.send("other", &src, &[]);
    let names: Vec<String> = live.keys().cloned().collect();
    let spec = format!("--session={},{}", &names[0][2..], &names[2][2..]);
    // How long a full prune takes, to spread the kills over it.
    let probe = t.path().join("probe");
    copy_dir(&base, &probe);
    let wp = Wyng::new(&probe, &t.path().join("meta-probe"));
    let started = Instant::now();
    wp.ok(&["prune", "vol", &spec, "-u"]);
    let span = started.elapsed().as_micros() as u64 + 1;

    let mut seed = 0xDEAD_BEEFu64;
    for round in 0..8 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let ar = t.path().join(format!("r{round}"));
        copy_dir(&base, &ar);
        let w = Wyng::new(&ar, &t.path().join(format!("meta{round}")));
        let args: Vec<String> = match round % 3 {
            0 | 1 => vec!["prune".into(), "vol".into(), spec.clone(), "-u".into()],
            _ => vec!["arch-deduplicate".into()],
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = w
            .cmd(&argv)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros((seed >> 20) % span));
        let _ = child.kill();
        let _ = child.wait();
        // Recovery by any write command.
        w.ok(&["add", "recovery-trigger"]);
        let list = w.json(&["list"]);
        let got: Vec<String> = list["volumes"]["vol"]["sessions"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let mut expect = live.clone();
        if round % 3 != 2 && got.len() < names.len() {
            // Finished: exactly the selected sessions are gone.
            for n in &names[0..3] {
                expect.remove(n);
            }
        }
        let want: Vec<String> = expect.keys().cloned().collect();
        assert_eq!(got, want, "round {round}: all or nothing");
        let out = t.path().join("o.img");
        for (s, sha) in &expect {
            w.receive("vol", Some(s), &out);
            assert_eq!(&sha256_file(&out), sha, "round {round} {s}");
        }
        w.receive("other", None, &out);
        assert_eq!(sha256_file(&out), img.sha256());
        check_strict(&ar);
    }
    // delete killed at a random moment: the volume is either whole or gone.
    for round in 0..3 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let ar = t.path().join(format!("d{round}"));
        copy_dir(&base, &ar);
        let w = Wyng::new(&ar, &t.path().join(format!("dmeta{round}")));
        let mut child = w
            .cmd(&["delete", "other", "-u"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros((seed >> 20) % 30_000));
        let _ = child.kill();
        let _ = child.wait();
        w.ok(&["add", "recovery-trigger"]);
        let list = w.json(&["list"]);
        if list["volumes"].get("other").is_some() {
            let out = t.path().join("o.img");
            w.receive("other", None, &out);
            assert_eq!(sha256_file(&out), img.sha256());
        }
        check_strict(&ar);
    }
}

/// `send --autoprune=on` on a destination too small for the change: without it the send is
/// refused as "destination is full" and the archive stays intact; with it, old sessions are
/// thinned by the calendar until the change fits, and the send goes through.
#[test]
fn send_autoprune_on_makes_room() {
    if !can_run_privileged(&["/usr/bin/mount"]) {
        return;
    }
    let t = tmp();
    let small = t.path().join("small");
    std::fs::create_dir(&small).unwrap();
    assert!(std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=40m",
            "wyng-test",
            small.to_str().unwrap()
        ])
        .status()
        .unwrap()
        .success());
    let _guard = MountGuard(small.clone());
    let ar = small.join("archive");
    let mut w = Wyng::fresh(&ar, &t.path().join("meta"));
    let img = t.path().join("vol.img");
    let mut sessions = Vec::new();
    // Four sessions of 8 MiB that does not compress: ~34 MiB of the 40.
    for seed in 0..4 {
        let mut i = Image::new(500 + seed);
        i.random(8 << 20);
        i.write(&img);
        let r = w.send("vol", &img, &[]);
        sessions.push((r["session"].as_str().unwrap().to_string(), i.sha256()));
    }
    let mut next = Image::new(600);
    next.random(8 << 20);
    next.write(&img);
    // What sessions are made of (the staging an interrupted send keeps for its resume aside).
    let committed = || -> Vec<_> {
        snapshot(&ar)
            .into_iter()
            .filter(|(p, _)| !p.to_string_lossy().contains("/S-tmp"))
            .collect()
    };
    let before = committed();
    let imp = format!("--import-other-from=vol:|:{}", img.display());
    let e = w.fails(&["send", "vol", &imp], 5);
    assert!(e.contains("destination is full"), "{e}");
    assert_eq!(
        committed(),
        before,
        "a send that ran out of space changes nothing"
    );

    // 100 days on, the default calendar (0:62:1:2) keeps two sessions per day: one of the
    // four same-day sessions (not the newest) can go, which frees the 8 MiB needed.
    let day = chrono::NaiveDate::parse_from_str(&sessions[0].0[2..10], "%Y%m%d").unwrap();
    w.env.push((
        "WYNG_TODAY".into(),
        (day + chrono::Days::new(100))
            .format("%Y-%m-%d")
            .to_string(),
    ));
    let r = w.send("vol", &img, &["--autoprune=on"]);
    let pruned: Vec<&str> = r["autopruned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(pruned.len(), 1, "{r}");
    assert!(r["session"].is_string(), "{r}");
    sessions.retain(|(s, _)| s != pruned[0]);
    sessions.push((r["session"].as_str().unwrap().to_string(), next.sha256()));
    let out = t.path().join("out.img");
    for (s, sha) in &sessions {
        w.receive("vol", Some(s), &out);
        assert_eq!(&sha256_file(&out), sha, "{s}");
    }
    check_strict(&ar);
}

/// A recovery that fails is not silently retried by every later command: the second attempt
/// asks for --force-retry; once a retry completes, commands run normally again. And
/// `delete --vid` removes a volume by its id.
#[test]
fn failed_retries_need_force_retry_and_delete_by_vid() {
    let t = tmp();
    let ar = t.path().join("a");
    let w = Wyng::fresh(&ar, &t.path().join("meta"));
    let mut rng = Image::new(5);
    let live = random_history(&w, t.path(), &mut rng, 3);
    let names: Vec<String> = live.keys().cloned().collect();
    let mut b = Image::new(9);
    b.random(1 << 20);
    b.write(&t.path().join("b.img"));
    w.send("b", &t.path().join("b.img"), &[]);
    let list = w.json(&["list"]);
    let vid = list["volumes"]["vol"]["vid"].as_str().unwrap().to_string();

    let o = w
        .cmd(&[
            "prune",
            "vol",
            &format!("--session={}", &names[0][2..]),
            "-u",
        ])
        .env("WYNG_FAILPOINT", "merge-moved")
        .output()
        .unwrap();
    assert!(!o.status.success());
    // The move list vanishes (a damaged destination): the retry fails, and says why.
    let lst = ar.join(&vid).join("merge.lst.gz");
    let saved = std::fs::read(&lst).unwrap();
    std::fs::remove_file(&lst).unwrap();
    let e = w.fails(&["add", "x"], 1);
    assert!(e.contains("merge.lst.gz"), "{e}");
    let e = w.fails(&["add", "x"], 1);
    assert!(
        e.contains("already retried") && e.contains("--force-retry"),
        "{e}"
    );
    // Repaired, the retry is forced and completes; then commands run normally.
    std::fs::write(&lst, saved).unwrap();
    w.ok(&["add", "x", "--force-retry"]);
    w.ok(&["add", "y"]);
    let sessions = w.json(&["list", "vol"])["volumes"]["vol"]["sessions"].clone();
    assert_eq!(sessions.as_object().unwrap().len(), 2, "{sessions}");
    let out = t.path().join("o.img");
    for s in &names[1..] {
        w.receive("vol", Some(s), &out);
        assert_eq!(sha256_file(&out), live[s], "{s}");
    }

    let bvid = list["volumes"]["b"]["vid"].as_str().unwrap().to_string();
    w.fails(&["delete", "--vid=Vol_000000", "-u"], 2);
    w.fails(&["delete", "b", &format!("--vid={bvid}"), "-u"], 9);
    w.ok(&["delete", &format!("--vid={bvid}"), "-u"]);
    let vols = w.json(&["list"])["volumes"].clone();
    assert!(
        vols.get("b").is_none() && vols.get("vol").is_some(),
        "{vols}"
    );
    assert!(!ar.join(&bvid).exists());
    check_strict(&ar);
}
