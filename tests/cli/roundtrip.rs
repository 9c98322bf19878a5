//! Archives that wyng writes read back identically, and pass the independent V3 checker in
//! strict mode (the oracle for "the original Wyng reads it").

use crate::common::*;
use sha2::{Digest, Sha256};

// The history's images (`round_trip_history`, tests/support/image.rs): its semantics (every
// session received and verified, for every compression and chunk size) are tested in-process
// (`src/ops/semantics/history.rs`); here the independent checker rebuilds each session of
// archives the binary wrote.

/// One archive per compression and chunk size, each given the same history (sessions named
/// explicitly: no waiting for the clock).
#[test]
fn every_compression_and_chunk_size_passes_the_checker() {
    let t = tmp();
    let kinds = [
        ("zstd:3", 3u32, 1u64),
        ("zlib:4", 1, 2),
        ("bz2:9", 2, 3),
        ("zstd:19", 6, 4),
        ("zlib:0", 4, 5),
    ];
    struct Run {
        w: Wyng,
        ar: std::path::PathBuf,
        compression: &'static str,
        steps: Vec<(Vec<u8>, bool)>,
        recorded: Vec<(String, String)>,
    }
    let mut runs: Vec<Run> = kinds
        .iter()
        .map(|&(compression, factor, seed)| {
            let ar = t.path().join(format!("archive-{seed}"));
            let w = Wyng::new(&ar, &t.path().join(format!("meta-{seed}"))).named_sessions();
            let cf = format!("--chunk-factor={factor}");
            let comp = format!("--compression={compression}");
            w.ok(&["arch-init", "--encrypt=off", &comp, &cf]);
            let steps = round_trip_history(32768usize << factor, seed);
            Run {
                w,
                ar,
                compression,
                steps,
                recorded: Vec::new(),
            }
        })
        .collect();
    let n = runs[0].steps.len();
    for i in 0..n {
        for r in &mut runs {
            let src = r.ar.with_extension("img");
            let (img, records) = &r.steps[i];
            std::fs::write(&src, img).unwrap();
            let rep = r.w.send("vol", &src, &[]);
            assert_eq!(
                !rep["session"].is_null(),
                *records,
                "{} step {i}: {rep}",
                r.compression
            );
            if *records {
                let s = rep["session"].as_str().unwrap().to_string();
                r.recorded.push((s, hex(&Sha256::digest(img))));
            }
        }
    }
    for r in &mut runs {
        // --send-unchanged records an empty session, listed as unchanged.
        let src = r.ar.with_extension("img");
        let rep = r.w.send("vol", &src, &["--send-unchanged"]);
        assert_eq!(rep["chunks_changed"], 0);
        let s = rep["session"].as_str().unwrap().to_string();
        r.recorded.push((s.clone(), sha256_file(&src)));
        let list = r.w.json(&["list"]);
        let sessions = list["volumes"]["vol"]["sessions"].as_object().unwrap();
        assert_eq!(sessions.len(), r.recorded.len());
        assert_eq!(sessions[&s]["chg"], false);
        let out = t.path().join("out.img");
        r.w.receive("vol", None, &out);
        assert_eq!(sha256_file(&out), r.recorded.last().unwrap().1);
        r.w.ok(&["verify", "vol", "-q"]);
        if let Some(report) = check_strict(&r.ar) {
            let got = checker_hashes(&report, "vol");
            assert_eq!(
                got, r.recorded,
                "{}: the checker rebuilds the same images",
                r.compression
            );
            assert_eq!(
                report["archive"]["compression"],
                r.compression.split(':').next().unwrap()
            );
        }
    }
}

#[test]
fn empty_and_tiny_volumes() {
    let t = tmp();
    let ar = t.path().join("a");
    let w = Wyng::fresh(&ar, &t.path().join("meta"));
    let src = t.path().join("s");
    std::fs::write(&src, b"").unwrap();
    let r = w.send("empty", &src, &[]);
    assert!(r["session"].is_string());
    std::fs::write(&src, b"x").unwrap();
    let r = w.send("tiny", &src, &[]);
    assert!(r["session"].is_string());
    let out = t.path().join("o");
    w.receive("empty", None, &out);
    assert_eq!(std::fs::read(&out).unwrap(), b"");
    w.receive("tiny", None, &out);
    assert_eq!(std::fs::read(&out).unwrap(), b"x");
    check_strict(&ar);
}

#[test]
fn several_volumes_share_a_session_and_selection_works() {
    let t = tmp();
    let ar = t.path().join("a");
    let w = Wyng::new(&ar, &t.path().join("meta"));
    // Options before the command word are accepted too.
    let o = w.cmd(&["--encrypt=off", "arch-init"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b) = (t.path().join("a.img"), t.path().join("b.img"));
    Image::new(1).random(300_000).write(&a);
    Image::new(2).text(500_000).write(&b);
    let ia = format!("--import-other-from=disks/a.img:|:{}", a.display());
    let ib = format!("--import-other-from=b.img:|:{}", b.display());
    let r = w.json(&["send", &ia, &ib, "--tag=first,First one"]);
    assert_eq!(r[0]["session"], r[1]["session"]);
    let first = r[0]["session"].as_str().unwrap().to_string();
    // A second send of a only (the binary waits for the next second if needed): b unchanged.
    Image::new(3).random(300_000).write(&a);
    let r = w.json(&["send", &ia, &ib]);
    assert!(r[0]["session"].is_string());
    assert!(r[1]["session"].is_null(), "b did not change");
    let second = r[0]["session"].as_str().unwrap().to_string();

    let out = t.path().join("o");
    // ^tag picks the tagged session.
    w.ok(&[
        "receive",
        "disks/a.img",
        "--session=^first",
        "-u",
        "-q",
        &format!("--save-to={}", out.display()),
    ]);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        Image::new(1).random(300_000).data
    );
    // Strict selection needs an exact name (a selection error, exit 2); strict off takes the
    // newest not after the time (selection between sessions: src/ops/semantics/history.rs).
    let before_first = format!("--session={}", bump(&first, -1));
    w.fails(&["verify", "disks/a.img", &before_first], 2);
    let exact = format!("--session={}", &first[2..]);
    let o = w.ok(&["verify", "disks/a.img", &exact, "--session-strict=off"]);
    assert!(o.contains(&first[2..]), "{o}");
    let o = w.ok(&["verify", "disks/a.img"]);
    assert!(o.contains(&second[2..]), "{o}");
    let list = w.ok(&["list", "disks/a.img", "--verbose"]);
    assert!(list.contains("tag: first, First one"), "{list}");
    check_strict(&ar);
}

/// The date-time `secs` seconds after a session's.
fn bump(name: &str, secs: i64) -> String {
    let t = chrono::NaiveDateTime::parse_from_str(&name[2..], "%Y%m%d-%H%M%S").unwrap();
    (t + chrono::Duration::seconds(secs))
        .format("%Y%m%d-%H%M%S")
        .to_string()
}

#[test]
fn receive_to_block_device() {
    if !can_run_privileged(&["/dev/loop-control"]) {
        return;
    }
    let t = tmp();
    let ar = t.path().join("a");
    let w = Wyng::new(&ar, &t.path().join("meta"));
    w.ok(&["arch-init", "--encrypt=off"]);
    let src = t.path().join("s.img");
    let mut img = Image::new(9);
    img.random(1 << 20).zeros(1 << 20).text((1 << 20) + 512);
    img.write(&src);
    w.send("disk", &src, &[]);
    // A loop device over a file pre-filled with garbage: zero chunks must be written as zeros.
    let backing = t.path().join("dev.img");
    std::fs::write(&backing, vec![0x55u8; 4 << 20]).unwrap();
    let l = attach_loop(&backing, false);
    let dev = l.0.clone();
    w.ok(&["receive", "disk", "-u", "-q", &format!("--save-to={dev}")]);
    let got = std::fs::read(&backing).unwrap();
    assert_eq!(&got[..img.data.len()], &img.data[..]);
    assert!(
        got[img.data.len()..].iter().all(|&b| b == 0x55),
        "bytes past the volume are untouched"
    );
}

/// The local digest map speeds up unchanged chunks but must never be trusted for a state of
/// the archive it was not made for: here another machine (another --meta-dir) sends in
/// between, and the first machine's map still names the older session.
#[test]
fn digest_map_is_only_used_for_its_own_session() {
    let t = tmp();
    let ar = t.path().join("a");
    let here = Wyng::new(&ar, &t.path().join("meta-here"));
    let other = Wyng::new(&ar, &t.path().join("meta-other"));
    here.ok(&["arch-init", "--encrypt=off", "--chunk-factor=1"]);
    let src = t.path().join("s.img");
    let v1 = Image::new(1).random(1 << 20).data.clone();
    std::fs::write(&src, &v1).unwrap();
    here.send("vol", &src, &[]);
    // Another machine sends different content.
    let mut v2 = v1.clone();
    v2[..1 << 19].fill(0x77);
    std::fs::write(&src, &v2).unwrap();
    other.send("vol", &src, &[]);
    // Back to v1 here: the map here still describes v1, but the archive's newest is v2.
    std::fs::write(&src, &v1).unwrap();
    let r = here.send("vol", &src, &[]);
    assert!(r["chunks_changed"].as_u64().unwrap() >= 8, "{r}");
    let out = t.path().join("o");
    here.receive("vol", None, &out);
    assert_eq!(std::fs::read(&out).unwrap(), v1);
    // And a damaged map is ignored, not trusted.
    let map = std::fs::read_dir(t.path().join("meta-here"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("a_"))
        .unwrap();
    let vid = std::fs::read_dir(&map)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let digests = vid.join("digests");
    let mut d = std::fs::read(&digests).unwrap();
    let n = d.len();
    d.truncate(n - 16);
    std::fs::write(&digests, &d).unwrap();
    std::fs::write(&src, &v2).unwrap();
    let r = here.send("vol", &src, &[]);
    assert!(r["chunks_changed"].as_u64().unwrap() >= 8, "{r}");
    here.receive("vol", None, &out);
    assert_eq!(std::fs::read(&out).unwrap(), v2);
    check_strict(&ar);
}
