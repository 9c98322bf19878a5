//! A send killed (SIGKILL) at random points resumes: the next send takes the chunks the
//! destination durably holds instead of sending them again, and every session receives
//! exactly. A first send (the volume in no root yet) and a later one; plain and encrypted.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

/// Bytes of chunk files staged (in `S-tmp`) by an interrupted send.
fn staged_bytes(ar: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(ar) else {
        return 0;
    };
    rd.flatten()
        .map(|v| v.path().join("S-tmp"))
        .filter(|p| p.is_dir())
        .flat_map(|p| files_under(&p))
        .filter(|f| f.file_name().unwrap().to_string_lossy().starts_with('x'))
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum()
}

/// Starts `send`, kills it with SIGKILL once `at` bytes are staged; returns what was staged.
pub(crate) fn kill_at(w: &Wyng, vol: &str, src: &Path, ar: &Path, at: u64) -> u64 {
    let imp = format!("--import-other-from={vol}:|:{}", src.display());
    let mut c = w.cmd(&["send", vol, &imp, "-q"]);
    let mut child = c
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    if let Some(p) = &w.pass {
        use std::io::Write;
        let _ = writeln!(child.stdin.take().unwrap(), "{p}");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while staged_bytes(ar) < at {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the send ended before the kill"
        );
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    staged_bytes(ar)
}

fn resume_after_kills(pass: Option<&str>, seed: u64) {
    let t = tmp();
    let ar = t.path().join("a");
    let w = {
        let mut w = Wyng::maybe_pass(&ar, &t.path().join("meta"), pass).named_sessions();
        // Small checkpoints, so a kill anywhere finds most of what was staged recorded.
        w.env.push(("WYNG_CHECKPOINT".into(), "512K".into()));
        w
    };
    w.init(&["--chunk-factor=1"]);
    let src = t.path().join("s.img");
    let mut img = Image::new(seed);
    img.random(48 << 20);
    img.write(&src);
    let total = 48u64 << 20;
    let mut rng = Image::new(seed ^ 0x5eed);
    let mut history = Vec::new();
    // A first send killed at a random point between 20% and 80%, then resumed.
    for round in 0..2 {
        if round == 1 {
            // A later session: 24 MiB changed, killed again.
            img.scribble(8 << 20, 24 << 20);
            img.write(&src);
        }
        let changed = if round == 0 { total } else { 24 << 20 };
        let at = changed / 5 + rng.next() % (changed * 3 / 5);
        let had = kill_at(&w, "disk", &src, &ar, at);
        // The archive is valid meanwhile: the killed session is in no root.
        if round == 1 {
            assert_eq!(session_names(&w, "disk").len(), 1);
        }
        let r = w.send("disk", &src, &[]);
        let reused = r["bytes_reused"].as_u64().unwrap();
        let stored = r["bytes_stored"].as_u64().unwrap();
        assert!(r["chunks_reused"].as_u64().unwrap() > 0, "{r}");
        // Sent again: what was missing, plus at most the unrecorded tail (the checkpoint
        // interval, the chunks in flight) and the files' own overhead.
        let margin = (2 << 20) + changed / 64;
        assert!(
            stored <= changed - had.min(changed) + margin,
            "round {round}: staged {had} before the kill, then stored {stored} (reused {reused}) of {changed}"
        );
        assert!(reused + stored >= changed * 9 / 10, "{r}");
        history.push(sha256_file(&src));
        let names = session_names(&w, "disk");
        assert_eq!(names.len(), round + 1);
        let o = t.path().join("o.img");
        for (s, sha) in names.iter().zip(&history) {
            w.receive("disk", Some(s), &o);
            assert_eq!(&sha256_file(&o), sha, "round {round} {s}");
        }
        // Nothing of the interrupted send is left behind.
        let vol_dir = std::fs::read_dir(&ar)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("Vol_"))
            .unwrap()
            .path();
        assert!(!vol_dir.join("S-tmp").exists() && !vol_dir.join("S-resume").exists());
        check_strict_with(&ar, pass);
    }
    w.ok(&["arch-check"]);
}

#[test]
fn a_killed_send_resumes_from_what_the_archive_holds() {
    resume_after_kills(None, 11);
}

#[test]
fn a_killed_encrypted_send_resumes_without_resealing() {
    resume_after_kills(Some("resume test passphrase"), 12);
}

#[test]
fn a_resumable_staging_survives_other_commands_and_is_not_taken_blindly() {
    let t = tmp();
    let ar = t.path().join("a");
    let mut w = Wyng::fresh(&ar, &t.path().join("meta"));
    w.env.push(("WYNG_CHECKPOINT".into(), "256K".into()));
    let src = t.path().join("s.img");
    let mut img = Image::new(21);
    img.random(24 << 20);
    img.write(&src);
    w.send("other", &src, &[]);
    kill_at(&w, "disk", &src, &ar, 8 << 20);
    // Other writers keep it (this host's record names it); arch-check does not call it
    // damage, and says what it is.
    w.send("other", &src, &["--send-unchanged"]);
    let out = w.ok(&["arch-check"]);
    assert!(out.contains("kept for the next send of 'disk'"), "{out}");
    // The source changed everywhere since: nothing staged matches, nothing is taken.
    img.scribble(0, 24 << 20);
    img.write(&src);
    let r = w.send("disk", &src, &[]);
    assert_eq!(r["chunks_reused"], 0, "{r}");
    let o = t.path().join("o.img");
    w.receive("disk", None, &o);
    assert_eq!(sha256_file(&o), sha256_file(&src));
    check_strict(&ar);
    // Another host (no record: another meta dir) removes what a killed send left.
    kill_at(&w, "third", &src, &ar, 4 << 20);
    let other = Wyng::new(&ar, &t.path().join("meta-other"));
    other.ok(&[
        "send",
        "other",
        &format!("--import-other-from=other:|:{}", src.display()),
    ]);
    assert!(std::fs::read_dir(&ar)
        .unwrap()
        .flatten()
        .all(|e| !e.path().join("S-tmp").exists()));
    let r = w.send("third", &src, &[]);
    assert_eq!(r["chunks_reused"], 0, "{r}");
    check_strict(&ar);
    // Staged files that went missing are not taken (the session would lack them): only what
    // the staging still holds is.
    kill_at(&w, "fourth", &src, &ar, 8 << 20);
    let staged: Vec<_> = std::fs::read_dir(&ar)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("S-tmp"))
        .filter(|p| p.is_dir())
        .flat_map(|p| files_under(&p))
        .filter(|f| f.file_name().unwrap().to_string_lossy().starts_with('x'))
        .collect();
    for f in staged.iter().step_by(2) {
        std::fs::remove_file(f).unwrap();
    }
    let r = w.send("fourth", &src, &[]);
    assert!(
        r["chunks_reused"].as_u64().unwrap() <= staged.len() as u64 / 2,
        "{r}"
    );
    w.receive("fourth", None, &o);
    assert_eq!(sha256_file(&o), sha256_file(&src));
    check_strict(&ar);
}
