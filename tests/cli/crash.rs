//! Crash safety: a send killed at any point leaves an archive whose earlier sessions all still
//! verify and receive exactly, and the next send cleans up and succeeds.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

/// Every session listed must receive with the content recorded for it.
fn check_sessions(w: &Wyng, t: &Path, known: &[(String, String)]) {
    let list = w.json(&["list"]);
    let sessions = list["volumes"]["vol"]["sessions"].as_object().unwrap();
    let out = t.join("check.img");
    for (name, _) in sessions {
        let (_, sha) = known
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("unknown session {name} appeared"));
        w.receive("vol", Some(name), &out);
        assert_eq!(&sha256_file(&out), sha, "session {name}");
    }
    for (name, _) in known {
        assert!(
            sessions.contains_key(name),
            "committed session {name} was lost"
        );
    }
}

fn setup(t: &Path) -> (Wyng, Image, Vec<(String, String)>) {
    let ar = t.join("archive");
    // Explicit session names: sends in a row do not wait for the clock.
    let w = Wyng::fresh(&ar, &t.join("meta")).named_sessions();
    let mut img = Image::new(42);
    img.random(6 << 20).text(2 << 20);
    img.write(&t.join("src.img"));
    let r = w.send("vol", &t.join("src.img"), &[]);
    let known = vec![(r["session"].as_str().unwrap().to_string(), img.sha256())];
    (w, img, known)
}

fn clone(i: &Image) -> Image {
    let mut c = Image::new(0);
    c.data = i.data.clone();
    c
}

#[test]
fn every_commit_step_is_crash_safe() {
    let base = tmp();
    let (_, img0, known0) = setup(base.path());
    for point in [
        "chunks-written",
        "before-session-rename",
        "after-session-rename",
        "before-volinfo-rename",
        "after-volinfo-rename",
        "after-root-rename",
    ] {
        // A copy of one first session for each point (a second later, mostly: the binary
        // would wait for the clock to name the next session).
        let t = tmp();
        copy_dir(&base.path().join("archive"), &t.path().join("archive"));
        copy_dir(&base.path().join("meta"), &t.path().join("meta"));
        let w = Wyng::new(&t.path().join("archive"), &t.path().join("meta"));
        let (mut img, mut known) = (clone(&img0), known0.clone());
        let src = t.path().join("src.img");
        img.scribble(100_000, 300_000).scribble(5 << 20, 70_000);
        img.write(&src);
        let imp = format!("--import-other-from=vol:|:{}", src.display());
        let o = w
            .cmd(&["send", "vol", &imp, "-q"])
            .env("WYNG_FAILPOINT", point)
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "{point}: the failpoint must stop the send"
        );
        let list = w.json(&["list"]);
        let names: Vec<String> = list["volumes"]["vol"]["sessions"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let committed = names.len() == 2;
        assert_eq!(
            committed,
            point == "after-root-rename",
            "{point}: the root rename is the commit point"
        );
        if committed {
            known.push((names[1].clone(), img.sha256()));
        }
        check_sessions(&w, t.path(), &known);
        // The next send recovers and leaves an archive the original reads without a warning.
        img.scribble(7 << 20, 10_000);
        img.write(&src);
        let r = w.send("vol", &src, &[]);
        known.push((r["session"].as_str().unwrap().to_string(), img.sha256()));
        check_sessions(&w, t.path(), &known);
        check_strict(&t.path().join("archive"));
    }
}

#[test]
fn kill_9_at_random_points() {
    let t = tmp();
    let (w, mut img, mut known) = setup(t.path());
    let src = t.path().join("src.img");
    // Measure one send to spread the kills over its whole duration.
    img.scribble(0, 8 << 20);
    img.write(&src);
    let started = Instant::now();
    let r = w.send("vol", &src, &[]);
    let full = started.elapsed();
    known.push((r["session"].as_str().unwrap().to_string(), img.sha256()));

    let mut seed = 0x1234_5678u64;
    for round in 0..12 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_micros((seed >> 33) % (full.as_micros() as u64 + 1));
        img.scribble(((seed >> 20) % (6 << 20)) as usize, 2 << 20);
        img.write(&src);
        let imp = format!("--import-other-from=vol:|:{}", src.display());
        let mut child = w
            .cmd(&["send", "vol", &imp, "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let finished = child.wait().unwrap().success();
        let list = w.json(&["list"]);
        let sessions = list["volumes"]["vol"]["sessions"].as_object().unwrap();
        if sessions.len() > known.len() {
            let newest = list["volumes"]["vol"]["last"].as_str().unwrap().to_string();
            known.push((newest, img.sha256()));
        } else {
            assert!(
                !finished,
                "round {round}: a send that exited 0 must have committed"
            );
        }
        check_sessions(&w, t.path(), &known);
    }
    // The next send recovers whatever was left and the result is valid for the original.
    img.scribble(1 << 20, 4096);
    img.write(&src);
    let r = w.send("vol", &src, &[]);
    known.push((r["session"].as_str().unwrap().to_string(), img.sha256()));
    check_sessions(&w, t.path(), &known);
    let ar = t.path().join("archive");
    if let Some(report) = check_strict(&ar) {
        let got = checker_hashes(&report, "vol");
        assert_eq!(got.len(), known.len());
        for ((n1, h1), (n2, h2)) in got.iter().zip(&known) {
            assert_eq!((n1, h1), (n2, h2));
        }
    }
}

/// Issue 16, finding 5: a receive killed before it could clean up leaves its partial file; the
/// next receive of that target removes it (its process is gone), never one of a live process.
#[test]
fn killed_receive_leaves_no_partial_file_behind() {
    let t = tmp();
    let (w, img, _) = setup(t.path());
    let out = t.path().join("out.img");
    // What a receive killed by SIGKILL leaves: its partial file, named by its (now dead) pid.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    let partial = t.path().join(format!(".out.img.wyng-partial-{pid}"));
    std::fs::File::create(&partial)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    // One of a process that is still alive (this test's own) stays.
    let live = t
        .path()
        .join(format!(".out.img.wyng-partial-{}", std::process::id()));
    std::fs::write(&live, b"busy").unwrap();
    w.receive("vol", None, &out);
    assert_eq!(sha256_file(&out), img.sha256());
    assert!(!partial.exists(), "the stale partial file was removed");
    assert!(live.exists());
}
