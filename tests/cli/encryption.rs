//! Encrypted archives: the original's archives in every mode read exactly; archives we write in
//! every mode pass the independent checker; wrong passphrases, tampering, rollback, counters
//! and nonces, and the key cache.

use std::collections::HashMap;
use std::path::Path;

use crate::common::*;

const ENCRYPTED: &[&str] = &["d-enc-dgr", "e1-enc-msr", "e2-enc-ct"];

#[test]
fn original_encrypted_archives_read_exactly() {
    let all = expected();
    for name in ENCRYPTED {
        let exp = &all["archives"][name];
        let t = tmp();
        let ar = copy_fixture(name, t.path());
        let w = Wyng::with_pass(
            &ar,
            &t.path().join("meta"),
            exp["passphrase"].as_str().unwrap(),
        );
        let list = w.json(&["list"]);
        assert_eq!(list["encrypted"], true);
        assert_eq!(list["uuid"], exp["uuid"]);
        for (vol, ev) in exp["volumes"].as_object().unwrap() {
            let sessions = ev["sessions"].as_array().unwrap();
            assert_eq!(
                list["volumes"][vol]["sessions"].as_object().unwrap().len(),
                sessions.len()
            );
            for s in sessions {
                let out = t.path().join("out.img");
                w.receive(vol, Some(s["name"].as_str().unwrap()), &out);
                assert_eq!(
                    sha256_file(&out),
                    s["sha256"].as_str().unwrap(),
                    "{name} {vol} {}",
                    s["name"]
                );
            }
            w.ok(&["verify", vol, "-q"]);
        }
        // Our incremental send onto the original's encrypted archive stays valid for it.
        let vol = first_key(&exp["volumes"]);
        let img = t.path().join("img");
        w.receive(&vol, None, &img);
        let r = w.send(&vol, &img, &[]);
        assert_eq!(
            r["chunks_changed"], 0,
            "{name}: unchanged chunks are recognised: {r}"
        );
        let mut data = std::fs::read(&img).unwrap();
        data[5000..9000].fill(1);
        std::fs::write(&img, &data).unwrap();
        let r = w.send(&vol, &img, &[]);
        assert_eq!(r["chunks_changed"], 1, "{name}: {r}");
        check_strict_with(&ar, exp["passphrase"].as_str());
    }
}

#[test]
fn every_mode_we_write_passes_the_checker() {
    // One archive per mode, each given the same history (sessions named explicitly: no waiting
    // for the clock).
    let t = tmp();
    let modes = ["xchacha20-dgr", "xchacha20-msr", "xchacha20-ct"];
    let archives: Vec<(&str, std::path::PathBuf, String, Wyng)> = modes
        .iter()
        .map(|mode| {
            let ar = t.path().join(mode);
            let pass = format!("test passphrase for {mode}");
            let w = Wyng::with_pass(&ar, &t.path().join(format!("meta-{mode}")), &pass)
                .named_sessions();
            w.ok(&[
                "arch-init",
                &format!("--encrypt={mode}"),
                "--chunk-factor=1",
                "--compression=zlib:6",
            ]);
            (*mode, ar, pass, w)
        })
        .collect();
    let src = t.path().join("s.img");
    let mut img = Image::new(7);
    img.random(300_000)
        .text(200_000)
        .zeros(200_000)
        .random(1234);
    let mut recorded = vec![Vec::new(); modes.len()];
    for step in 0..4 {
        match step {
            1 => {
                img.scribble(70_000, 5000);
            }
            2 => {
                img.text(150_000);
            }
            3 => img.data.truncate(400_001),
            _ => {}
        }
        img.write(&src);
        for ((_, _, _, w), rec) in archives.iter().zip(&mut recorded) {
            let r = w.send("disk", &src, &[]);
            rec.push((r["session"].as_str().unwrap().to_string(), img.sha256()));
        }
    }
    let out = t.path().join("o");
    for ((mode, ar, pass, w), rec) in archives.iter().zip(&recorded) {
        for (s, sha) in rec {
            w.receive("disk", Some(s), &out);
            assert_eq!(&sha256_file(&out), sha, "{mode} {s}");
        }
        if let Some(report) = check_strict_with(ar, Some(pass)) {
            assert_eq!(report["archive"]["encrypted"], true);
            assert_eq!(&checker_hashes(&report, "disk"), rec, "{mode}");
        }
    }
}

#[test]
fn wrong_passphrase_is_exit_3_and_changes_nothing() {
    let t = tmp();
    let ar = copy_fixture("d-enc-dgr", t.path());
    let before = snapshot(&ar);
    let w = Wyng::with_pass(&ar, &t.path().join("meta"), "not the passphrase");
    let err = w.fails(&["list", "--authmin=0"], 3);
    assert!(
        err.contains("could not authenticate archive: wrong passphrase or damaged archive.ini"),
        "{err}"
    );
    let src = t.path().join("s");
    std::fs::write(&src, b"data").unwrap();
    let imp = format!("--import-other-from=vm1.img:|:{}", src.display());
    w.fails(&["send", "vm1.img", &imp, "--authmin=0"], 3);
    assert_eq!(snapshot(&ar), before);
    // No passphrase at all.
    let w = Wyng::new(&ar, &t.path().join("meta"));
    w.fails(&["list", "--authmin=0"], 3);
    // A failing --passcmd is reported as such.
    let err = w.fails(&["list", "--authmin=0", "--passcmd=exit 4"], 9);
    assert!(err.contains("--passcmd"), "{err}");
    // A short passphrase cannot create an archive, and nothing is created.
    let fresh = t.path().join("fresh");
    let w = Wyng::with_pass(&fresh, &t.path().join("meta"), "short");
    w.fails(&["arch-init"], 9);
    assert!(!fresh.exists());
}

#[test]
fn tampering_is_detected_and_named() {
    let all = expected();
    let pass = all["archives"]["e1-enc-msr"]["passphrase"]
        .as_str()
        .unwrap()
        .to_string();
    let t = tmp();
    let ar = copy_fixture("e1-enc-msr", t.path());
    let w = Wyng::with_pass(&ar, &t.path().join("meta"), &pass);
    w.ok(&["verify", "v", "-q"]);
    let files: Vec<String> = files_under(&ar)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let chunk = files
        .iter()
        .find(|p| p.contains("/x0000000000000000"))
        .unwrap()
        .clone();
    let info = files.iter().find(|p| p.ends_with("/info")).unwrap().clone();
    for (path, expect) in [
        (chunk.as_str(), "manifest hash"),
        (info.as_str(), "authentication"),
    ] {
        let orig = std::fs::read(path).unwrap();
        let mut bad = orig.clone();
        let i = bad.len() - 2;
        bad[i] ^= 0x10;
        std::fs::write(path, &bad).unwrap();
        // Verify the session that holds the damaged file.
        let ses = path.split('/').find(|c| c.starts_with("S_")).unwrap();
        let ses_arg = format!("--session={}", &ses[2..]);
        let o = w.run(&["verify", "v", &ses_arg]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{path}");
        assert!(err.contains(expect), "{path}: {err}");
        let target = format!("--save-to={}", t.path().join("r").display());
        let r = w.run(&["receive", "v", "-u", &ses_arg, &target]);
        assert!(!r.status.success(), "{path}");
        assert!(
            !t.path().join("r").exists(),
            "no restore target from a damaged archive"
        );
        std::fs::write(path, &orig).unwrap();
    }
    // A damaged root reads as a failed authentication.
    let root = ar.join("archive.ini");
    let orig = std::fs::read(&root).unwrap();
    let mut bad = orig.clone();
    let i = bad.len() - 1;
    bad[i] ^= 1;
    std::fs::write(&root, &bad).unwrap();
    let err = w.fails(&["list", "--authmin=0"], 3);
    assert!(err.contains("damaged archive.ini"), "{err}");
}

/// Reads the counters and updated_at of an archive's root through the library.
fn root_state(ar: &Path, pass: &str) -> (u64, u64, f64) {
    let a = open_library(ar, Some(pass));
    let get = |k: &str| {
        a.settings()
            .iter()
            .find(|(key, _)| key == k)
            .unwrap()
            .1
            .parse::<f64>()
            .unwrap()
    };
    (
        get("dataci_count") as u64,
        get("mci_count") as u64,
        get("updated_at"),
    )
}

/// Every nonce in the archive (chunks: first 24 bytes; metadata: after the header for the
/// root) with a digest of the content it sealed.
fn nonces(
    ar: &Path,
    seen: &mut HashMap<Vec<u8>, Vec<u8>>,
    chunk_nonces: &mut std::collections::HashSet<Vec<u8>>,
) {
    for (path, bytes) in snapshot(ar) {
        let path = path.display().to_string();
        let name = Path::new(&path)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let body = if name == "archive.ini" || name == "archive.ini.bak" {
            &bytes[17..]
        } else if name.starts_with('x')
            || ["info", "volinfo", "manifest.z", "volinfo.bak"].contains(&name.as_str())
        {
            &bytes[..]
        } else {
            continue;
        };
        let (nonce, content) = body.split_at(24);
        if name.starts_with('x') {
            chunk_nonces.insert(nonce.to_vec());
        }
        let prev = seen.insert(nonce.to_vec(), content.to_vec());
        if let Some(prev) = prev {
            assert_eq!(
                prev, content,
                "nonce reused for different content in {path}"
            );
        }
    }
}

#[test]
fn counters_never_go_down_and_nonces_never_repeat() {
    let t = tmp();
    let ar = t.path().join("a");
    let pass = "counter test passphrase";
    let w = Wyng::with_pass(&ar, &t.path().join("meta"), pass);
    w.ok(&["arch-init", "--encrypt=xchacha20-ct", "--chunk-factor=1"]);
    let src = t.path().join("s.img");
    let mut seen = HashMap::new();
    let mut chunk_nonces = std::collections::HashSet::new();
    let mut last = root_state(&ar, pass);
    let mut img = Image::new(3);
    img.random(40 * 65536);
    for round in 0..5 {
        img.scribble(round * 65536 * 3, 65536 * 4);
        img.write(&src);
        let imp = format!("--import-other-from=disk:|:{}", src.display());
        if round == 2 {
            // A send killed after it encrypted its chunks: they are in S-tmp; keep their nonces.
            // With a checkpoint after every chunk, the next send resumes: it takes those
            // files as they are (same nonce, same content), never seals anything twice.
            let o = w
                .cmd(&["send", "disk", &imp, "-q"])
                .env("WYNG_FAILPOINT", "chunks-written")
                .env("WYNG_CHECKPOINT", "1")
                .output()
                .unwrap();
            assert!(!o.status.success());
            nonces(&ar, &mut seen, &mut chunk_nonces);
        }
        let r = w.send("disk", &src, &[]);
        if round == 2 {
            assert!(r["chunks_reused"].as_u64().unwrap() >= 3, "{r}");
        }
        nonces(&ar, &mut seen, &mut chunk_nonces);
        let now = root_state(&ar, pass);
        assert!(
            now.0 > last.0,
            "data counter must grow: {last:?} -> {now:?}"
        );
        assert!(
            now.1 > last.1,
            "metadata counter must grow: {last:?} -> {now:?}"
        );
        assert!(now.2 > last.2, "updated_at must strictly increase");
        last = now;
    }
    // ct nonces embed the data counter (bytes 14..24): no two chunk files share a value, the
    // killed run's included.
    let mut counters = std::collections::HashSet::new();
    for nonce in &chunk_nonces {
        assert!(
            counters.insert(nonce[14..].to_vec()),
            "a counter value was used twice"
        );
    }
    assert!(chunk_nonces.len() > 20);
    check_strict_with(&ar, Some(pass));
}

#[test]
fn replaced_by_older_copy_is_refused() {
    let t = tmp();
    let ar = t.path().join("a");
    let pass = "rollback passphrase";
    let w = Wyng::with_pass(&ar, &t.path().join("meta"), pass);
    w.ok(&["arch-init"]);
    let src = t.path().join("s");
    std::fs::write(&src, vec![5u8; 100_000]).unwrap();
    w.send("v", &src, &[]);
    copy_dir(&ar, &t.path().join("old"));
    std::fs::write(&src, vec![6u8; 100_000]).unwrap();
    w.send("v", &src, &[]);
    std::fs::remove_dir_all(&ar).unwrap();
    copy_dir(&t.path().join("old"), &ar);
    let err = w.fails(&["list"], 1);
    assert!(
        err.contains("archive is older than the last one seen here"),
        "{err}"
    );
    w.fails(&["verify", "v"], 1);
    w.ok(&["list", "--force-allow-rollback"]);
    // Unencrypted archives are protected the same way.
    let plain = t.path().join("p");
    let w = Wyng::new(&plain, &t.path().join("meta"));
    w.ok(&["arch-init", "--encrypt=off"]);
    w.send("v", &src, &[]);
    copy_dir(&plain, &t.path().join("old-plain"));
    std::fs::write(&src, vec![7u8; 100_000]).unwrap();
    w.send("v", &src, &[]);
    std::fs::remove_dir_all(&plain).unwrap();
    copy_dir(&t.path().join("old-plain"), &plain);
    w.fails(&["list"], 1);
}

#[test]
fn key_cache_follows_authmin() {
    let t = tmp();
    let ar = t.path().join("a");
    let pass = "keyring passphrase";
    let with = Wyng::with_pass(&ar, &t.path().join("meta"), pass);
    let without = Wyng::new(&ar, &t.path().join("meta"));
    // --passcmd, and --authmin=0: nothing is kept.
    let passcmd = format!("--passcmd=printf %s '{pass}'");
    without.ok(&["arch-init", &passcmd, "--authmin=0"]);
    without.fails(&["list"], 3);
    // The default keeps the keys: the next run needs no passphrase.
    with.ok(&["list"]);
    without.ok(&["list"]);
    // -1 forgets them after this run.
    without.ok(&["list", "--authmin=-1"]);
    without.fails(&["list"], 3);
}

/// Issue 16, finding 7: a passphrase given while keys are cached is checked: a wrong one is
/// exit 3 (and changes nothing) whatever the command; none given uses the cache.
#[test]
fn explicit_passphrase_is_checked_against_cached_keys() {
    let t = tmp();
    let ar = t.path().join("a");
    let meta = t.path().join("meta");
    let pass = "the right passphrase";
    let right = Wyng::with_pass(&ar, &meta, pass);
    right.ok(&["arch-init", "--chunk-factor=1"]);
    let img = t.path().join("img");
    Image::new(5).random(200 << 10).write(&img);
    right.send("v", &img, &[]);
    let cached = Wyng::new(&ar, &meta);
    cached.ok(&["list"]);
    let wrong = Wyng::with_pass(&ar, &meta, "a wrong passphrase");
    let before = snapshot(&ar);
    for args in [
        &["list"][..],
        &["verify", "v"],
        &["delete", "v", "-u"],
        &["prune", "v", "--all-before", "--session=newest", "-u"],
    ] {
        let err = wrong.fails(args, 3);
        assert!(err.contains("wrong passphrase"), "{args:?}: {err}");
    }
    let err = cached.fails(&["list", "--passcmd=printf %s nope-nope-nope"], 3);
    assert!(err.contains("checked even while keys are cached"), "{err}");
    assert_eq!(snapshot(&ar), before);
    cached.ok(&["list", &format!("--passcmd=printf %s '{pass}'")]);
    right.ok(&["verify", "v"]);
    cached.ok(&["verify", "v"]);
    cached.ok(&["list", "--authmin=-1"]);
}

/// Issue 16, finding 2: archive.salt is checked against its check block on every load (keys
/// cached or not); a damaged copy falls back to salt.bak with a warning, arch-check reports
/// it and the next write command rewrites it. Both damaged is a clear error.
#[test]
fn damaged_salt_falls_back_to_bak_and_is_repaired() {
    let t = tmp();
    let ar = t.path().join("a");
    let meta = t.path().join("meta");
    let pass = "salt test passphrase";
    let w = Wyng::with_pass(&ar, &meta, pass);
    w.ok(&["arch-init", "--chunk-factor=1"]);
    let img = t.path().join("img");
    let mut im = Image::new(9);
    im.random(300 << 10);
    im.write(&img);
    w.send("v", &img, &[]);
    let salt = ar.join("archive.salt");
    let good = std::fs::read(&salt).unwrap();
    let flip = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x04;
        std::fs::write(&salt, &b).unwrap();
    };
    // 20: the data-key salt; 170 + 5: the nonce-subkey salt; 160 + 76: a zero byte of slot 2.
    for (at, cached) in [(20, true), (175, true), (236, false), (20, false)] {
        flip(at);
        let w = if cached {
            w.ok(&["list"]);
            Wyng::new(&ar, &meta)
        } else {
            w.ok(&["list", "--authmin=-1"]);
            Wyng::with_pass(&ar, &meta, pass)
        };
        let o = w.run(&["list", "--authmin=0"]);
        assert!(
            o.status.success(),
            "{at}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("archive.salt is damaged; using salt.bak"),
            "{at}: {err}"
        );
        let err = w.fails(&["arch-check", "--authmin=0"], 1);
        assert!(err.contains("archive.salt"), "{at}: {err}");
        let out = t.path().join("out.img");
        w.receive("v", None, &out);
        assert_eq!(sha256_file(&out), im.sha256());
        // A write command rewrites it from salt.bak.
        w.ok(&["arch-check", "--clean", "--authmin=0"]);
        assert_eq!(std::fs::read(&salt).unwrap()[..320], good[..320], "{at}");
        w.ok(&["arch-check", "--authmin=0"]);
    }
    // salt.bak damaged: reported, and rewritten by a write command.
    let bak = ar.join("salt.bak");
    let bak_good = std::fs::read(&bak).unwrap();
    let mut b = bak_good.clone();
    b[30] ^= 1;
    std::fs::write(&bak, &b).unwrap();
    let err = w.fails(&["arch-check"], 1);
    assert!(err.contains("salt.bak"), "{err}");
    w.send("v", &img, &[]);
    assert_eq!(std::fs::read(&bak).unwrap()[..320], bak_good[..320]);
    // Both damaged: a clear error, nothing written.
    flip(20);
    std::fs::write(&bak, &b).unwrap();
    let err = Wyng::with_pass(&ar, &meta, pass).fails(&["list", "--authmin=-1"], 1);
    assert!(err.contains("neither archive.salt nor salt.bak"), "{err}");
    if let Some(r) = check_report(&ar, Some(pass)) {
        assert_eq!(r["valid"], false);
    }
}
