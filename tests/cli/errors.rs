//! Bad input gets one clear line, the original's exit code, and leaves everything as it was.

use std::path::{Path, PathBuf};

use crate::common::*;

/// The first error line is the whole message: one line, naming what to do.
fn one_line(err: &str) -> &str {
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("wyng: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line: {err}");
    lines[0]
}

#[test]
fn missing_archive() {
    let t = tmp();
    let w = Wyng::new(&t.path().join("nope"), &t.path().join("meta"));
    let err = w.fails(&["list"], 6);
    assert!(one_line(&err).contains("arch-init"), "{err}");
    w.fails(&["verify", "v"], 6);
}

#[test]
fn arch_init_refuses_existing_archive() {
    let t = tmp();
    let ar = copy_fixture("a-plain-zstd", t.path());
    let before = snapshot(&ar);
    let w = Wyng::new(&ar, &t.path().join("meta"));
    let err = w.fails(&["arch-init", "--encrypt=off"], 5);
    assert!(one_line(&err).contains("already exists"), "{err}");
    assert_eq!(snapshot(&ar), before);
}

#[test]
fn bad_urls_and_options() {
    let t = tmp();
    for (url, what) in [
        ("/no/scheme", "file:"),
        ("file://host/x", "host"),
        ("ssh:///x", "host"),
        ("gopher://x", "file:"),
    ] {
        let w = Wyng {
            dest: url.into(),
            meta: t.path().join("m"),
            pass: None,
            extra: Vec::new(),
            env: Vec::new(),
            named: None,
        };
        let err = w.fails(&["list"], 9);
        assert!(one_line(&err).contains(what), "{url}: {err}");
    }
    let w = Wyng::new(&t.path().join("a"), &t.path().join("m"));
    w.fails(&["arch-init", "--encrypt=off", "--chunk-factor=9"], 9);
    w.fails(&["arch-init", "--encrypt=off", "--compression=lz4"], 9);
    w.fails(&["arch-init", "--encrypt=off", "--compression=zstd:99"], 9);
    w.fails(&["arch-init", "--encrypt=bogus"], 9);
    assert!(
        !t.path().join("a").exists(),
        "a refused arch-init creates nothing"
    );
    // Unknown options are usage errors too.
    w.fails(&["list", "--frobnicate"], 9);
}

#[test]
fn missing_volume_and_session() {
    let t = tmp();
    let ar = copy_fixture("a-plain-zstd", t.path());
    let w = Wyng::new(&ar, &t.path().join("meta"));
    let err = w.fails(&["verify", "nosuch"], 2);
    assert!(one_line(&err).contains("wyng list"), "{err}");
    let out = t.path().join("o");
    w.fails(
        &["receive", "nosuch", &format!("--save-to={}", out.display())],
        2,
    );
    w.fails(
        &[
            "receive",
            "vol1",
            "--session=20200101-000000",
            &format!("--save-to={}", out.display()),
        ],
        2,
    );
    w.fails(
        &[
            "receive",
            "vol1",
            "--session=^nosuchtag",
            &format!("--save-to={}", out.display()),
        ],
        2,
    );
    w.fails(
        &[
            "receive",
            "vol1",
            "--session=garbage",
            &format!("--save-to={}", out.display()),
        ],
        9,
    );
    assert!(!out.exists());
}

#[test]
fn unreadable_source_changes_nothing() {
    let t = tmp();
    let ar = copy_fixture("a-plain-zstd", t.path());
    let before = snapshot(&ar);
    let w = Wyng::new(&ar, &t.path().join("meta"));
    let err = w.fails(
        &[
            "send",
            "vol1",
            "--import-other-from=vol1:|:/nonexistent/disk.img",
        ],
        7,
    );
    assert!(one_line(&err).contains("/nonexistent/disk.img"), "{err}");
    w.fails(&["send", "--import-other-from=x:|:/etc"], 7);
    w.fails(&["send", "vol1"], 9);
    w.fails(&["send", "--import-other-from=no-separator"], 9);
    assert_eq!(snapshot(&ar), before);
}

#[test]
fn existing_target_needs_confirmation() {
    let t = tmp();
    let ar = copy_fixture("a-plain-zstd", t.path());
    let w = Wyng::new(&ar, &t.path().join("meta"));
    let out = t.path().join("precious");
    std::fs::write(&out, b"keep me").unwrap();
    let save = format!("--save-to={}", out.display());
    // On a terminal (a pty from util-linux `script`), wyng asks; "n" keeps the target.
    let on_terminal = |answer: &str| on_terminal(w.cmd(&["receive", "vol1", &save]), &[answer]);
    match on_terminal("n") {
        Some(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                text.contains("will be overwritten. Continue? [y/N]"),
                "{text}"
            );
            // As the original's receive: a "no" is exit 1.
            assert_eq!(o.status.code(), Some(1), "{text}");
            assert!(text.contains("cancelled"), "{text}");
            assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
        }
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("util-linux `script` is needed for the terminal prompt test")
        }
        None => println!("skipped the terminal prompt: util-linux `script` is not installed"),
    }
    // Without a terminal the run is unattended, as the original: no question, overwritten.
    w.ok(&["receive", "vol1", &save]);
    assert_ne!(std::fs::read(&out).unwrap(), b"keep me");
}

#[test]
fn corrupt_chunk_is_an_error_and_never_reaches_the_target() {
    let t = tmp();
    let ar = copy_fixture("a-plain-zstd", t.path());
    let chunk = chunk_files(&ar).remove(0);
    let mut bytes = std::fs::read(&chunk).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&chunk, &bytes).unwrap();
    let w = Wyng::new(&ar, &t.path().join("meta"));
    let name = chunk.file_name().unwrap().to_string_lossy().into_owned();

    let err = w.fails(&["verify", "vol1", "--session=20261123-153256"], 1);
    assert!(
        one_line(&err).contains(&name),
        "the error names the chunk: {err}"
    );
    // An existing target stays as it was; a new one is not created.
    let out = t.path().join("target.img");
    std::fs::write(&out, b"old contents").unwrap();
    w.fails(
        &[
            "receive",
            "vol1",
            "--session=20261123-153256",
            "-u",
            &format!("--save-to={}", out.display()),
        ],
        1,
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"old contents");
    let new = t.path().join("new.img");
    w.fails(
        &[
            "receive",
            "vol1",
            "--session=20261123-153256",
            &format!("--save-to={}", new.display()),
        ],
        1,
    );
    assert!(!new.exists());
    let leftovers: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "temporary restore files are removed");

    // A missing chunk, a truncated one, and a 10 GB one (sparse) are errors too, found fast.
    std::fs::remove_file(&chunk).unwrap();
    let err = w.fails(&["verify", "vol1", "--session=20261123-153256"], 1);
    assert!(err.contains("missing"), "{err}");
    std::fs::write(&chunk, b"").unwrap();
    w.fails(&["verify", "vol1", "--session=20261123-153256"], 1);
    let f = std::fs::File::create(&chunk).unwrap();
    f.set_len(10 << 30).unwrap();
    let started = std::time::Instant::now();
    let err = w.fails(&["verify", "vol1", "--session=20261123-153256"], 1);
    assert!(err.contains("bytes"), "{err}");
    assert!(
        started.elapsed().as_secs() < 20,
        "a huge chunk must be rejected by its size, not read"
    );
}

#[test]
fn corrupt_metadata_is_an_error() {
    let t = tmp();
    for (file, code) in [
        ("archive.ini", 1),
        ("Vol_1e08b7/volinfo", 1),
        ("Vol_1e08b7/S_20261123-153257/info", 1),
        ("Vol_1e08b7/S_20261123-153257/manifest.z", 1),
    ] {
        let dir = t.path().join(file.replace('/', "_"));
        std::fs::create_dir_all(&dir).unwrap();
        let ar = copy_fixture("a-plain-zstd", &dir);
        let p = ar.join(file);
        let mut b = std::fs::read(&p).unwrap();
        let i = b.len() - 3;
        b[i] ^= 0x40;
        std::fs::write(&p, &b).unwrap();
        if file.ends_with("volinfo") {
            // volinfo.bak is the fallback for an interrupted commit: damage it as well.
            std::fs::write(ar.join("Vol_1e08b7/volinfo.bak"), &b).unwrap();
        }
        let w = Wyng::new(&ar, &t.path().join("meta"));
        let err = w.fails(&["verify", "vol1"], code);
        assert!(
            err.contains("damaged") || err.contains("archive.ini"),
            "{file}: {err}"
        );
    }
}

#[test]
fn verify_checks_every_volume_and_reports_all_failures() {
    let t = tmp();
    let ar = copy_fixture("i-two-volumes", t.path());
    let w = Wyng::new(&ar, &t.path().join("meta"));
    // Damage a chunk of root.img only: vms/disk1.img must still be verified and reported OK.
    let list = w.json(&["list"]);
    let vid = list["volumes"]["root.img"]["vid"]
        .as_str()
        .unwrap()
        .to_string();
    let last = list["volumes"]["root.img"]["last"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = ar.join(&vid).join(&last).join("000000000");
    let f = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut b = std::fs::read(&f).unwrap();
    b[0] ^= 1;
    std::fs::write(&f, &b).unwrap();
    let o = w.run(&["verify", "--all"]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        out.contains("vms/disk1.img: session"),
        "the other volume is still verified: {out}"
    );
    assert!(
        err.contains("verification failed for volumes: root.img"),
        "{err}"
    );
    // Only a missing volume among others: exit 2.
    let o = w.run(&["verify", "vms/disk1.img", "nosuch"]);
    assert_eq!(o.status.code(), Some(2));
}

/// A destination that runs out of space: a clear error (exit 5), earlier sessions intact, and
/// once there is room again the next send succeeds. Uses a small real ext4 filesystem.
/// A small real ext4 filesystem (no reflinks) mounted at `<t>/<name>`.
fn small_ext4(t: &Path, name: &str, mib: u64) -> (PathBuf, MountGuard) {
    let img = t.join(format!("{name}.fs"));
    std::fs::File::create(&img)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    assert!(std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0"])
        .arg(&img)
        .status()
        .unwrap()
        .success());
    let mnt = t.join(name);
    std::fs::create_dir(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    (mnt.clone(), MountGuard(mnt))
}

/// Fills a filesystem to the last block.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![0xa5u8; 1 << 16];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    let mut f = std::fs::File::create(dir.join("filler2")).unwrap();
    while f.write_all(&block[..512]).is_ok() {}
}

#[test]
fn full_destination_disk() {
    if !can_run_privileged(&["/dev/loop-control"]) {
        return;
    }
    let t = tmp();
    let (mnt, _u) = small_ext4(t.path(), "mnt", 24);
    let ar = mnt.join("archive");
    let w = Wyng::fresh(&ar, &t.path().join("meta"));
    let small = t.path().join("small.img");
    Image::new(1).random(2 << 20).write(&small);
    w.send("vol", &small, &[]);
    let big = t.path().join("big.img");
    Image::new(2).random(40 << 20).write(&big);
    let imp = format!("--import-other-from=vol:|:{}", big.display());
    let err = w.fails(&["send", "vol", &imp], 5);
    assert!(err.contains("destination is full"), "{err}");
    // The earlier session is intact, and the archive is valid once the failed send is cleaned.
    let out = t.path().join("o.img");
    w.receive("vol", None, &out);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&small).unwrap());
    std::fs::write(&big, &std::fs::read(&small).unwrap()[..1 << 20]).unwrap();
    w.send("vol", &big, &[]);
    check_strict(&ar);
}

/// Issue 16, finding 9: a full --meta-dir is reported as wyng's local state (never as a full
/// destination), saying where to free space. Unencrypted, the send goes on without the
/// optional local copies; encrypted, counters cannot be reserved, so nothing is written.
#[test]
fn full_meta_dir_is_reported_as_local_state() {
    if !can_run_privileged(&["/dev/loop-control"]) {
        return;
    }
    for pass in [None, Some("meta dir passphrase")] {
        let t = tmp();
        let (meta, _u) = small_ext4(t.path(), "meta", 8);
        let ar = t.path().join("ar");
        let w = Wyng::maybe_pass(&ar, &meta, pass);
        w.init(&["--chunk-factor=1"]);
        let img = t.path().join("img");
        Image::new(4).random(4 << 20).write(&img);
        w.send("vol", &img, &[]);
        fill(&meta);
        let before = snapshot(&ar);
        Image::new(5).random(4 << 20).write(&img);
        let imp = format!("--import-other-from=vol:|:{}", img.display());
        let o = w.run(&["send", "vol", &imp]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("destination is full"), "{err}");
        assert!(
            err.contains("local state in") && err.contains("--meta-dir"),
            "{err}"
        );
        if pass.is_some() {
            assert!(!o.status.success(), "{err}");
            assert_eq!(
                snapshot(&ar),
                before,
                "nothing written without reserved counters"
            );
        } else {
            assert!(o.status.success(), "{err}");
        }
        std::fs::remove_file(meta.join("filler")).unwrap();
        std::fs::remove_file(meta.join("filler2")).unwrap();
        w.ok(&["verify", "vol"]);
        check_strict_with(&ar, pass);
    }
}

/// Issue 16, finding 9: `receive --sparse-write` onto a file whose filesystem lacks the room
/// refuses before touching it (no grown, half-written target).
#[test]
fn in_place_receive_without_room_leaves_the_target_untouched() {
    if !can_run_privileged(&["/dev/loop-control"]) {
        return;
    }
    let t = tmp();
    let w = Wyng::fresh(&t.path().join("ar"), &t.path().join("meta"));
    let img = t.path().join("img");
    Image::new(6).random(30 << 20).write(&img);
    w.send("vol", &img, &[]);
    let (mnt, _u) = small_ext4(t.path(), "small", 16);
    let target = mnt.join("vol.img");
    Image::new(7).random(1 << 20).write(&target);
    let before = sha256_file(&target);
    let err = w.fails(
        &[
            "receive",
            "vol",
            &format!("--save-to={}", target.display()),
            "--sparse-write",
            "-u",
        ],
        7,
    );
    assert!(
        err.contains("not enough free space") && err.contains("unchanged"),
        "{err}"
    );
    assert_eq!(sha256_file(&target), before);
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 1 << 20);
}
