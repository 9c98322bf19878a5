//! One send to several archives (`--dest=A --dest=B`): one snapshot and one read of each
//! changed chunk for all of them, each archive with its own pairing; a destination that fails
//! (here a full tmpfs) does not stop the other, is recorded as outstanding, and the next send
//! brings it up to date incrementally. Needs root (XFS on a loop file, tmpfs); skips without
//! it, except under CI=true.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;
use crate::reflink::{local_dir, make_fs};

const CS: u64 = 65536;

fn write_random(f: &Path, off: u64, len: usize, seed: u64) {
    let mut img = Image::new(seed);
    img.random(len);
    let p = f.with_extension("part");
    img.write(&p);
    let data = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
    file.write_all_at(&data, off).unwrap();
    file.sync_all().unwrap();
}

fn outstanding(meta: &Path) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_wyng"))
        .args(["list", "--outstanding", "--json"])
        .arg(format!("--meta-dir={}", meta.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[expect(clippy::too_many_lines, reason = "long before the lint; to be split")]
#[test]
fn a_send_to_two_archives_survives_one_filling_up_and_catches_up() {
    if !can_run_privileged(&["/dev/loop-control", "/usr/sbin/mkfs.xfs"]) {
        eprintln!("skipped: needs root, loop devices and mkfs.xfs");
        return;
    }
    let t = tmp();
    let fs = make_fs(t.path(), "xfs").expect("checked above");
    let local = local_dir(&fs, "xfs");
    let meta = t.path().join("meta");
    let a_dir = t.path().join("a");
    let b_mnt = t.path().join("b-mnt");
    std::fs::create_dir(&b_mnt).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=10m", "tmpfs"])
        .arg(&b_mnt)
        .status()
        .unwrap()
        .success());
    let _b_mount = MountGuard(b_mnt.clone());
    let b_dir = b_mnt.join("b");
    let wa = Wyng::fresh(&a_dir, &meta);
    let wb = Wyng::fresh(&b_dir, &meta);
    // 16 MiB, of which the first 4 MiB hold data.
    let vol = local.join("disk.img");
    std::fs::File::create(&vol)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    write_random(&vol, 0, 4 << 20, 1);
    let send_both = || -> (Output, serde_json::Value) {
        let o = wa
            .cmd(&[
                "send",
                "disk.img",
                &format!("--local={}", local.display()),
                "--json",
            ])
            .arg(format!("--dest={}", wb.dest))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{err}");
        let j = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {err}"));
        (o, j)
    };
    let report = |j: &serde_json::Value, i: usize| j["destinations"][i].clone();
    let mut history: Vec<(String, String)> = Vec::new();

    // Both archives get the first session.
    let (o, j) = send_both();
    assert!(o.status.success(), "{j}");
    let name = |v: &serde_json::Value| {
        v["session"]
            .as_str()
            .unwrap()
            .trim_start_matches("S_")
            .to_string()
    };
    let s1 = name(&report(&j, 0)["volumes"][0]);
    assert_eq!(name(&report(&j, 1)["volumes"][0]), s1);
    history.push((s1.clone(), sha256_file(&vol)));

    // 8 MiB more data: B (10 MiB of tmpfs) fills up; A commits; exit 2, B outstanding.
    write_random(&vol, 4 << 20, 8 << 20, 2);
    let (o, j) = send_both();
    assert_eq!(o.status.code(), Some(2), "{j}");
    let a2 = report(&j, 0);
    let b2 = report(&j, 1);
    assert!(a2["error"].is_null(), "{j}");
    let s2 = name(&a2["volumes"][0]);
    assert_eq!(a2["volumes"][0]["chunks_changed"], 128, "{j}");
    assert_eq!(b2["error"]["exit_code"], 5, "{j}");
    assert_eq!(b2["outstanding"], serde_json::json!(["disk.img"]), "{j}");
    history.push((s2.clone(), sha256_file(&vol)));
    let rec = outstanding(&meta);
    assert!(rec[&wb.dest]["volumes"]["disk.img"].is_string(), "{rec}");
    assert!(rec.get(&wa.dest).is_none(), "{rec}");
    // B is as it was: one session, valid (the independent checker would call the staging
    // kept for a resume a stray leftover; it runs at the end).
    assert_eq!(session_names(&wb, "disk.img"), vec![s1.clone()]);
    wb.ok(&["arch-check"]);

    // Room again, one more chunk changed: A sends one chunk, B catches up from its own
    // baseline (the 8 MiB it missed plus that chunk); each changed chunk is read once.
    assert!(Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&b_mnt)
        .status()
        .unwrap()
        .success());
    write_random(&vol, 0, CS as usize, 3);
    // monitor follows both archives' pairings (the configuration a two-destination send
    // reads gives it both --dest).
    let o = wa
        .cmd(&[
            "monitor",
            "-a",
            &format!("--local={}", local.display()),
            "--json",
        ])
        .arg(format!("--dest={}", wb.dest))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        m["destinations"][0]["volumes"][0]["state"], "rotated",
        "{m}"
    );
    assert_eq!(
        m["destinations"][0]["volumes"][0]["recorded_chunks"], 1,
        "{m}"
    );
    assert_eq!(
        m["destinations"][1]["volumes"][0]["recorded_chunks"], 129,
        "{m}"
    );
    let (o, j) = send_both();
    assert!(o.status.success(), "{j}");
    let (a3, b3) = (&report(&j, 0)["volumes"][0], &report(&j, 1)["volumes"][0]);
    assert_eq!(a3["chunks_changed"], 1, "{j}");
    assert_eq!(b3["first"], false, "{j}");
    assert_eq!(b3["chunks_changed"], 129, "{j}");
    assert_eq!(a3["chunks_read"], 129, "one read for both: {j}");
    let s3 = name(a3);
    assert_eq!(name(b3), s3);
    history.push((s3.clone(), sha256_file(&vol)));
    assert!(
        outstanding(&meta).as_object().unwrap().is_empty(),
        "caught up"
    );

    // Every session of both archives receives exactly; both pass the checker.
    assert_eq!(
        session_names(&wa, "disk.img"),
        vec![s1.clone(), s2, s3.clone()]
    );
    assert_eq!(session_names(&wb, "disk.img"), vec![s1, s3]);
    let out = t.path().join("out.img");
    for (s, sha) in &history {
        wa.receive("disk.img", Some(s), &out);
        assert_eq!(&sha256_file(&out), sha, "A {s}");
        if session_names(&wb, "disk.img").contains(s) {
            wb.receive("disk.img", Some(s), &out);
            assert_eq!(&sha256_file(&out), sha, "B {s}");
        }
    }
    check_strict(&a_dir);
    check_strict(&b_dir);

    // The destinations from the configuration file, one per line, as the one timer of a
    // local + off-site setup runs it.
    let conf = t.path().join("wyng.ini");
    std::fs::write(
        &conf,
        format!(
            "[var-global-default]\ndest = {}\n    {}\nlocal = {}\n",
            wa.dest,
            wb.dest,
            local.display()
        ),
    )
    .unwrap();
    write_random(&vol, 2 * CS, CS as usize, 4);
    let o = Command::new(env!("CARGO_BIN_EXE_wyng"))
        .args(["send", "-a", "--json"])
        .arg(format!("--config={}", conf.display()))
        .arg(format!("--meta-dir={}", meta.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for d in 0..2 {
        assert_eq!(
            j["destinations"][d]["volumes"][0]["chunks_changed"], 1,
            "{j}"
        );
    }
    // --vols-from: a destination that cannot be reached is listed under `outstanding` in
    // FILE.error, its volumes as failed.
    let vf = t.path().join("vols.json");
    std::fs::write(
        &vf,
        format!("{{\"{}\": [[\"disk.img\", null]]}}", local.display()),
    )
    .unwrap();
    let missing = format!("file:{}", t.path().join("gone").display());
    let o = wa
        .cmd(&["send", &format!("--vols-from={}", vf.display())])
        .arg(format!("--dest={missing}"))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let e: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path().join("vols.json.error")).unwrap()).unwrap();
    assert_eq!(e["volumes"], serde_json::json!(["disk.img"]), "{e}");
    assert_eq!(
        e["outstanding"][&missing],
        serde_json::json!(["disk.img"]),
        "{e}"
    );
    check_strict(&a_dir);
    check_strict(&b_dir);

    // Text output names each destination; a repeated --dest elsewhere is refused.
    let o = wa
        .cmd(&["send", "disk.img", &format!("--local={}", local.display())])
        .arg(format!("--dest={}", wb.dest))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        text.contains(&format!("{}:", wa.dest)) && text.contains(&format!("{}:", wb.dest)),
        "{text}"
    );
    let o = wa
        .cmd(&["list"])
        .arg(format!("--dest={}", wb.dest))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(9));
}

#[test]
fn an_unreachable_destination_does_not_stop_the_others() {
    let t = tmp();
    let meta = t.path().join("meta");
    let a_dir = t.path().join("a");
    let wa = Wyng::fresh(&a_dir, &meta);
    let src = t.path().join("s.img");
    Image::new(9).random(1 << 20).write(&src);
    let missing = format!("file:{}", t.path().join("no-such-archive").display());
    let imp = format!("--import-other-from=disk:|:{}", src.display());
    let o = wa
        .cmd(&["send", "disk", &imp, "--json"])
        .arg(format!("--dest={missing}"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let d = j["destinations"].as_array().unwrap();
    assert!(d[0]["volumes"][0]["session"].is_string(), "{j}");
    assert_eq!(d[1]["dest"], missing.as_str());
    assert_eq!(d[1]["error"]["exit_code"], 6, "{j}");
    assert_eq!(d[1]["outstanding"], serde_json::json!(["disk"]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("list --outstanding"));
    let rec = outstanding(&meta);
    assert!(
        rec[&missing]["error"]
            .as_str()
            .unwrap()
            .contains("no-such-archive"),
        "{rec}"
    );
    // The text view of the record.
    let o = Command::new(env!("CARGO_BIN_EXE_wyng"))
        .args(["list", "--outstanding"])
        .arg(format!("--meta-dir={}", meta.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&missing) && text.contains("disk  (missing since"),
        "{text}"
    );
    wa.receive("disk", None, &t.path().join("o.img"));
    assert_eq!(sha256_file(&t.path().join("o.img")), sha256_file(&src));
    // A destination given up for good: its entry forgotten (no archive opened).
    let o = Command::new(env!("CARGO_BIN_EXE_wyng"))
        .args(["delete", "--outstanding"])
        .arg(format!("--dest={missing}"))
        .arg(format!("--meta-dir={}", meta.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("forgot 1 outstanding volume"));
    assert!(outstanding(&meta).get(&missing).is_none());
    // A destination another writer holds (its lock taken): outstanding too, the other
    // archive goes on.
    let c_dir = t.path().join("c");
    let wc = Wyng::fresh(&c_dir, &meta);
    let lock = std::fs::File::open(&c_dir).unwrap();
    // SAFETY: flock on a descriptor we own, released when it closes.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    Image::new(10).random(1 << 20).write(&src);
    let o = wa
        .cmd(&["send", "disk", &imp, "--json"])
        .arg(format!("--dest={}", wc.dest))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        j["destinations"][0]["volumes"][0]["session"].is_string(),
        "{j}"
    );
    assert_eq!(j["destinations"][1]["error"]["kind"], "busy", "{j}");
    drop(lock);
    // Both unreachable: the first one's own error and exit code.
    let o = Command::new(env!("CARGO_BIN_EXE_wyng"))
        .args(["send", "disk", &imp])
        .arg(format!("--dest={missing}"))
        .arg(format!("--dest={missing}2"))
        .arg(format!("--meta-dir={}", meta.display()))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
