//! Golden tests: archives written by the original Wyng 0.8 (tests/fixtures/wyng-v3) are listed,
//! verified and received exactly as EXPECTED.json says.

use crate::common::*;

const PLAIN: &[&str] = &[
    "a-plain-zstd",
    "b-plain-zlib",
    "c-plain-bz2-cf1-blake2b",
    "f-multisession",
    "g-dedup",
    "h-tags",
    "i-two-volumes",
    "j-renamed",
];

fn volumes(exp: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    exp["volumes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn every_plain_fixture_lists_as_expected() {
    let all = expected();
    for name in PLAIN {
        let exp = &all["archives"][name];
        let t = tmp();
        let ar = copy_fixture(name, t.path());
        let w = Wyng::new(&ar, &t.path().join("meta"));
        let list = w.json(&["list"]);
        assert_eq!(list["uuid"], exp["uuid"], "{name}");
        assert_eq!(list["encrypted"], false);
        let got = list["volumes"].as_object().unwrap();
        assert_eq!(
            got.len(),
            exp["volumes"].as_object().unwrap().len(),
            "{name}"
        );
        for (vol, ev) in volumes(exp) {
            let gv = &got[&vol];
            assert_eq!(gv["vid"], ev["vid"], "{name} {vol}");
            assert_eq!(gv["desc"], ev["desc"], "{name} {vol}");
            let gs = gv["sessions"].as_object().unwrap();
            let es = ev["sessions"].as_array().unwrap();
            assert_eq!(gs.len(), es.len(), "{name} {vol}: session count");
            for s in es {
                let g = &gs[s["name"].as_str().unwrap()];
                assert_eq!(g["volsize"], s["size"], "{name} {vol} {}", s["name"]);
                assert_eq!(g["sequence"], s["sequence"]);
                assert_eq!(g["tags"], s["tags"]);
                assert_eq!(g["chg"], s["changed"], "{name} {vol} {} chg", s["name"]);
                assert_eq!(g["ts"], s["localtime_ns"]);
            }
            for p in ev["pruned_sessions"].as_array().into_iter().flatten() {
                assert!(
                    !gs.contains_key(p["name"].as_str().unwrap()),
                    "pruned session listed"
                );
            }
        }
        // The plain text listing names every volume.
        let text = w.ok(&["list"]);
        for (vol, _) in volumes(exp) {
            assert!(text.contains(&format!(" {vol}\n")), "{name}: {text}");
        }
    }
}

#[test]
fn every_session_of_every_plain_fixture_receives_exactly() {
    let all = expected();
    for name in PLAIN {
        let exp = &all["archives"][name];
        let t = tmp();
        let ar = copy_fixture(name, t.path());
        let w = Wyng::new(&ar, &t.path().join("meta"));
        for (vol, ev) in volumes(exp) {
            for s in ev["sessions"].as_array().unwrap() {
                let ses = s["name"].as_str().unwrap();
                let out = t.path().join("out.img");
                w.receive(&vol, Some(ses), &out);
                assert_eq!(
                    std::fs::metadata(&out).unwrap().len(),
                    s["size"].as_u64().unwrap(),
                    "{name} {vol} {ses}"
                );
                assert_eq!(
                    sha256_file(&out),
                    s["sha256"].as_str().unwrap(),
                    "{name} {vol} {ses}"
                );
                let ses_arg = format!("--session={}", &ses[2..]);
                w.ok(&["verify", &vol, &ses_arg, "-q"]);
            }
            // A pruned session is gone: selecting it is a clear volume error (exit 2).
            for p in ev["pruned_sessions"].as_array().into_iter().flatten() {
                let ses_arg = format!("--session={}", &p["name"].as_str().unwrap()[2..]);
                let err = w.fails(&["verify", &vol, &ses_arg], 2);
                assert!(err.contains("no session"), "{err}");
            }
        }
    }
}

#[test]
fn receive_is_sparse_and_keeps_metadata() {
    let t = tmp();
    let ar = copy_fixture("i-two-volumes", t.path());
    let w = Wyng::new(&ar, &t.path().join("meta"));
    let out = t.path().join("disk1.img");
    w.receive("vms/disk1.img", None, &out);
    let md = std::fs::metadata(&out).unwrap();
    use std::os::unix::fs::MetadataExt;
    // 260 MiB volume, mostly zero chunks: the restore must be holes, not written zeros.
    assert!(md.len() > 250 << 20);
    assert!(
        md.blocks() * 512 < md.len() / 4,
        "restored file is not sparse: {} blocks",
        md.blocks()
    );
    let list = w.json(&["list"]);
    let ts = list["volumes"]["vms/disk1.img"]["ts"].as_i64().unwrap();
    assert_eq!(
        md.mtime(),
        ts / 1_000_000_000,
        "mtime is the session's time"
    );
}

#[test]
fn dedup_fixture_has_real_hard_links_and_reads() {
    use std::os::unix::fs::MetadataExt;
    let t = tmp();
    let ar = copy_fixture("g-dedup", t.path());
    let linked = chunk_files(&ar)
        .iter()
        .filter(|f| std::fs::metadata(f).unwrap().nlink() > 1)
        .count();
    assert!(linked > 0, "the tarball should carry hard-linked chunks");
    let w = Wyng::new(&ar, &t.path().join("meta"));
    w.ok(&["verify", "--all", "-q"]);
}

/// Our compressors produce the original's bytes: a full-scan send of a received image onto the
/// original's archive finds every chunk unchanged and records nothing.
#[test]
fn full_scan_over_original_archive_finds_no_change() {
    let all = expected();
    for name in [
        "a-plain-zstd",
        "b-plain-zlib",
        "c-plain-bz2-cf1-blake2b",
        "i-two-volumes",
    ] {
        let t = tmp();
        let ar = copy_fixture(name, t.path());
        let w = Wyng::new(&ar, &t.path().join("meta"));
        for (vol, _) in volumes(&all["archives"][name]) {
            let img = t.path().join("img");
            w.receive(&vol, None, &img);
            let r = w.send(&vol, &img, &[]);
            assert_eq!(r["chunks_changed"], 0, "{name} {vol}: {r}");
            assert!(
                r["session"].is_null(),
                "{name} {vol}: a session was recorded: {r}"
            );
        }
    }
}

/// Sending onto an archive the original wrote keeps it valid for the original (checked by the
/// independent checker) and the old sessions keep their content.
#[test]
fn incremental_send_onto_original_archive_stays_valid() {
    let all = expected();
    let t = tmp();
    let ar = copy_fixture("f-multisession", t.path());
    let w = Wyng::new(&ar, &t.path().join("meta"));
    let img = t.path().join("img");
    w.receive("multi.img", None, &img);
    let mut data = std::fs::read(&img).unwrap();
    data[1000..2000].fill(0xAB);
    data.extend_from_slice(&[7u8; 100_000]);
    std::fs::write(&img, &data).unwrap();
    let r = w.send("multi.img", &img, &["--tag=after,after the original"]);
    assert_eq!(r["chunks_changed"], 2, "{r}");
    let out = t.path().join("out");
    w.receive("multi.img", None, &out);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    if let Some(report) = check_strict(&ar) {
        let hashes = checker_hashes(&report, "multi.img");
        let exp = all["archives"]["f-multisession"]["volumes"]["multi.img"]["sessions"]
            .as_array()
            .unwrap();
        for s in exp {
            assert!(hashes.iter().any(
                |(n, h)| n == s["name"].as_str().unwrap() && h == s["sha256"].as_str().unwrap()
            ));
        }
        assert_eq!(hashes.last().unwrap().1, sha256_file(&out));
    }
}

/// `list --verbose`'s archive properties (with the cipher line) and `list --json`'s
/// `encrypted`/`is_auth` are what the original printed for its own archives.
#[test]
fn list_properties_and_json_flags_match_the_original() {
    let all = expected();
    for (name, exp) in all["archives"].as_object().unwrap() {
        let cli = fixtures().join("cli").join(name);
        let Ok(verbose) = std::fs::read_to_string(cli.join("list-verbose.txt")) else {
            continue;
        };
        let t = tmp();
        let ar = copy_fixture(name, t.path());
        let w = Wyng::maybe_pass(&ar, &t.path().join("meta"), exp["passphrase"].as_str());
        let block = |text: &str| -> Vec<String> {
            text.lines()
                .skip_while(|l| *l != "Archive Properties:")
                .take_while(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        };
        let want = block(&verbose);
        assert!(want.iter().any(|l| l.starts_with(" cipher ")), "{name}");
        assert_eq!(block(&w.ok(&["list", "--verbose"])), want, "{name}");
        let orig_json = std::fs::read_to_string(cli.join("list-json.txt")).unwrap();
        let line = orig_json.lines().find(|l| l.starts_with('{')).unwrap();
        let orig: serde_json::Value = serde_json::from_str(line).unwrap();
        let ours = w.json(&["list"]);
        for key in ["encrypted", "is_auth", "fver"] {
            assert_eq!(ours[key], orig[key], "{name}: {key}");
        }
    }
}

/// The original's archive of a live LVM thin volume (recorded in the VM by tests/vm/original.sh,
/// tests/fixtures/wyng-v3-lvm): a first send and a thin_delta incremental, each received exactly,
/// verified, and valid for the independent checker.
#[test]
fn original_archive_from_a_live_thin_pool_receives_exactly() {
    let dir = fixtures().join("../wyng-v3-lvm");
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("EXPECTED.json")).unwrap()).unwrap();
    let t = tmp();
    let ar = t.path().join("k-lvm-thin");
    copy_dir(&dir.join("k-lvm-thin"), &ar);
    check_strict(&ar);
    let w = Wyng::new(&ar, &t.path().join("meta"));
    let vol = exp["volume"].as_str().unwrap();
    let sessions = exp["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    for s in sessions {
        let name = s["name"].as_str().unwrap();
        let out = t.path().join("out.img");
        w.receive(vol, Some(name), &out);
        assert_eq!(
            std::fs::metadata(&out).unwrap().len(),
            s["size"].as_u64().unwrap()
        );
        assert_eq!(sha256_file(&out), s["sha256"].as_str().unwrap(), "{name}");
        w.ok(&["verify", vol, &format!("--session={}", &name[2..]), "-q"]);
    }
}
