//! Hostile and damaged metadata: every case gives a clear error, never a panic, never a huge
//! allocation, never a write outside the target. Edits re-hash the chain so that only the
//! intended fault remains.

use std::path::{Path, PathBuf};

use crate::common::*;
use wyng::codec::{gunzip, gzip, Compression, Compressor};
use wyng::crypto::HashFn;
use wyng::format::ini::{self, ArchiveIni};
use wyng::format::{Hash32, VolumeId};

const VID: &str = "Vol_1e08b7";
const S1: &str = "S_20261123-153256";
const S2: &str = "S_20261123-153257";

/// Rewrites objects of an unencrypted zstd:3 archive and re-hashes the chain up to the root.
struct Chain {
    ar: PathBuf,
    zstd: Compressor,
}

impl Chain {
    fn new(ar: &Path) -> Chain {
        Chain {
            ar: ar.to_path_buf(),
            zstd: Compressor::new(Compression::Zstd, 3).unwrap(),
        }
    }

    fn text(&self, rel: &str) -> String {
        let f = std::fs::read(self.ar.join(rel)).unwrap();
        String::from_utf8(self.zstd.decompress(&f, 1 << 20).unwrap()).unwrap()
    }

    fn put(&self, rel: &str, text: &[u8]) -> Hash32 {
        let z = self.zstd.compress(text);
        std::fs::write(self.ar.join(rel), &z).unwrap();
        HashFn::Blake2b256.hash(&z)
    }

    /// Replaces a session's manifest and/or edits its info, then fixes volinfo and archive.ini.
    fn edit(
        &self,
        session: &str,
        manifest: Option<&str>,
        edit_info: impl FnOnce(String) -> String,
    ) {
        let mut info = self.text(&format!("{VID}/{session}/info"));
        if let Some(m) = manifest {
            let h = self.put(&format!("{VID}/{session}/manifest.z"), m.as_bytes());
            info = set_line(&info, "manifesthash", &h.to_b64());
        }
        let ih = self.put(&format!("{VID}/{session}/info"), edit_info(info).as_bytes());
        let vi = set_line(&self.text(&format!("{VID}/volinfo")), session, &ih.to_b64());
        self.edit_volinfo(&vi);
    }

    fn edit_volinfo(&self, text: &str) {
        let vh = self.put(&format!("{VID}/volinfo"), text.as_bytes());
        let _ = std::fs::remove_file(self.ar.join(format!("{VID}/volinfo.bak")));
        let file = std::fs::read(self.ar.join("archive.ini")).unwrap();
        let (_, body) = ini::parse_header(&file).unwrap();
        let mut root =
            ArchiveIni::parse(&String::from_utf8(gunzip(body, 1 << 20).unwrap()).unwrap()).unwrap();
        root.set_volume(&VolumeId::parse(VID).unwrap(), vh);
        let mut out = ini::header("00");
        out.extend_from_slice(&gzip(root.to_text().as_bytes()));
        std::fs::write(self.ar.join("archive.ini"), out).unwrap();
    }
}

fn set_line(text: &str, key: &str, value: &str) -> String {
    text.lines()
        .map(|l| {
            if l.split(" = ").next() == Some(key) {
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn fixture() -> (tempfile::TempDir, PathBuf, Wyng) {
    let t = tmp();
    let ar = copy_fixture("a-plain-zstd", t.path());
    let w = Wyng::new(&ar, &t.path().join("meta"));
    (t, ar, w)
}

/// The unchanged edit path itself must produce a valid archive (so the faults below are the
/// only faults).
#[test]
fn chain_edit_without_fault_is_valid() {
    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    let m = c.text(&format!("{VID}/{S2}/manifest.z"));
    c.edit(S2, Some(&m), |i| i);
    w.ok(&["verify", "vol1"]);
}

#[test]
fn manifest_with_path_traversal() {
    let (t, ar, w) = fixture();
    let c = Chain::new(&ar);
    let m = c.text(&format!("{VID}/{S2}/manifest.z"));
    let evil = m.replacen(" x0000000000000000", " ../../../../../tmp/evil", 1);
    c.edit(S2, Some(&evil), |i| i);
    let out = t.path().join("out.img");
    let err = w.fails(
        &["receive", "vol1", &format!("--save-to={}", out.display())],
        1,
    );
    assert!(err.contains("manifest line 1"), "{err}");
    assert!(!out.exists());
    assert!(!Path::new("/tmp/evil").exists());
}

#[test]
fn absurd_volume_size() {
    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    c.edit(S2, None, |i| set_line(&i, "volsize", &u64::MAX.to_string()));
    let started = std::time::Instant::now();
    let err = w.fails(&["verify", "vol1"], 1);
    assert!(err.contains("incomplete") || err.contains("mfcs"), "{err}");
    assert!(started.elapsed().as_secs() < 10);
    // Not a number at all.
    c.edit(S2, None, |i| set_line(&i, "volsize", "-5"));
    assert_damaged(&w, "volsize");
}

/// The volume is left out as damaged: `list` still works and shows it as such, and a command
/// naming it fails (exit 1) saying what is wrong.
fn assert_damaged(w: &Wyng, needle: &str) {
    let list = w.ok(&["list"]);
    assert!(list.contains("DAMAGED"), "{list}");
    let err = w.fails(&["verify", "vol1"], 1);
    assert!(err.contains(needle), "{err}");
}

#[test]
fn manifest_address_beyond_volume() {
    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    let m = c.text(&format!("{VID}/{S2}/manifest.z"));
    let extra = format!("{m}0 x{:016x}\n", 0x7fff_ffff_0000_0000u64);
    c.edit(S2, Some(&extra), |i| i);
    let err = w.fails(&["verify", "vol1"], 1);
    assert!(err.contains("beyond"), "{err}");
}

#[test]
fn manifest_decompression_bomb() {
    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    // 64 MiB of newlines compress to a few hundred bytes: under the file size limit, far over
    // what a manifest of this volume can decompress to.
    let bomb = vec![b'\n'; 64 << 20];
    let h = c.put(&format!("{VID}/{S2}/manifest.z"), &bomb);
    let info = set_line(
        &c.text(&format!("{VID}/{S2}/info")),
        "manifesthash",
        &h.to_b64(),
    );
    let ih = c.put(&format!("{VID}/{S2}/info"), info.as_bytes());
    c.edit_volinfo(&set_line(
        &c.text(&format!("{VID}/volinfo")),
        S2,
        &ih.to_b64(),
    ));
    let err = w.fails(&["verify", "vol1"], 1);
    assert!(err.contains("more than"), "{err}");
}

/// Finding 1: a tiny zstd bomb (1 GiB of '0' without a newline, in about 32 KiB) under a
/// session claiming a 2^50-byte volume. Memory is bounded by the bytes present, not by the
/// claimed size: each command rejects the first malformed line with a small peak RSS.
#[test]
fn manifest_bomb_with_claimed_huge_volume_keeps_memory_bounded() {
    let (t, ar, w) = fixture();
    let c = Chain::new(&ar);
    let mut z = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    let block = vec![b'0'; 1 << 20];
    for _ in 0..1024 {
        std::io::Write::write_all(&mut z, &block).unwrap();
    }
    let z = z.finish().unwrap();
    assert!(z.len() < 1 << 20, "{}", z.len());
    std::fs::write(ar.join(format!("{VID}/{S2}/manifest.z")), &z).unwrap();
    let h = HashFn::Blake2b256.hash(&z);
    let info = set_line(
        &set_line(
            &c.text(&format!("{VID}/{S2}/info")),
            "manifesthash",
            &h.to_b64(),
        ),
        "volsize",
        &(1u64 << 50).to_string(),
    );
    let ih = c.put(&format!("{VID}/{S2}/info"), info.as_bytes());
    c.edit_volinfo(&set_line(
        &c.text(&format!("{VID}/volinfo")),
        S2,
        &ih.to_b64(),
    ));
    let img = t.path().join("img");
    Image::new(3).random(64 << 10).write(&img);
    let imp = format!("--import-other-from=vol1:|:{}", img.display());
    for args in [
        &["verify", "vol1"][..],
        &["arch-check"],
        &["receive", "vol1", "--save-to=/dev/null"],
        &["send", "vol1", &imp],
    ] {
        let (o, rss) = run_measured(w.cmd(args));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains("line too long") || err.contains("manifest"),
            "{args:?}: {err}"
        );
        eprintln!("{args:?}: {rss} KiB: {}", err.trim());
        assert!(rss < 100 << 10, "{args:?}: peak RSS {rss} KiB");
    }
}

#[test]
fn broken_session_chain_and_names() {
    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    c.edit(S2, None, |i| set_line(&i, "previous", "S_20200101-000000"));
    assert_damaged(&w, "previous");

    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    c.edit(S2, None, |i| set_line(&i, "sequence", "0"));
    assert_damaged(&w, "sequence");

    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    let vi = c
        .text(&format!("{VID}/volinfo"))
        .replace(S1, "S_../../../x");
    c.edit_volinfo(&vi);
    let list = w.ok(&["list"]);
    assert!(
        list.contains("DAMAGED") && list.contains("bad session name"),
        "{list}"
    );

    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    let vi = set_line(
        &c.text(&format!("{VID}/volinfo")),
        "name",
        "../../etc/passwd",
    );
    c.edit_volinfo(&vi);
    let list = w.ok(&["list"]);
    assert!(list.contains("DAMAGED"), "{list}");
}

/// An archive of two volumes, `good` and `bad`, two sessions each.
fn two_volumes() -> (tempfile::TempDir, PathBuf, Wyng, PathBuf) {
    let t = tmp();
    let ar = t.path().join("ar");
    let w = Wyng::fresh(&ar, &t.path().join("meta"));
    let img = t.path().join("img");
    for (i, vol) in ["good", "bad"].iter().enumerate() {
        let mut im = Image::new(i as u64 + 1);
        im.random(300 << 10).zeros(200 << 10).text(100 << 10);
        im.write(&img);
        w.send(vol, &img, &[]);
        im.scribble(4096, 9000);
        im.write(&img);
        w.send(vol, &img, &[]);
    }
    let good = t.path().join("good.img");
    w.receive("good", None, &good);
    (t, ar, w, good)
}

/// The directory of a volume's oldest session.
fn first_session_dir(ar: &Path, vid: &str) -> PathBuf {
    let mut s: Vec<String> = std::fs::read_dir(ar.join(vid))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("S_"))
        .collect();
    s.sort();
    ar.join(vid).join(&s[0])
}

fn vid_of(w: &Wyng, vol: &str) -> String {
    w.json(&["list"])["volumes"][vol]["vid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Finding 3: one damaged `info` confines the damage to its volume. Every command still works
/// on the other volume; `list` and `arch-check` name the damaged one and what to do, and it
/// can be deleted.
#[test]
fn damaged_info_is_confined_to_its_volume() {
    let (t, ar, w, good_img) = two_volumes();
    let good_sha = sha256_file(&good_img);
    let bad = vid_of(&w, "bad");
    let good = vid_of(&w, "good");
    let sdir = first_session_dir(&ar, &bad);
    let info = sdir.join("info");
    let mut b = std::fs::read(&info).unwrap();
    b[3] ^= 0x20;
    std::fs::write(&info, &b).unwrap();

    let list = w.ok(&["list"]);
    assert!(
        list.contains(" good\n") || list.lines().any(|l| l == " good"),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.contains("bad") && l.contains("DAMAGED") && l.contains(&bad)),
        "{list}"
    );
    let js = w.json(&["list"]);
    assert_eq!(js["damaged"][0]["vid"], bad.as_str());
    assert_eq!(js["damaged"][0]["name"], "bad");
    assert!(js["volumes"]["good"].is_object());

    w.ok(&["verify", "good"]);
    let out = t.path().join("again.img");
    w.receive("good", None, &out);
    assert_eq!(sha256_file(&out), good_sha);
    let err = w.fails(&["verify", "bad"], 1);
    assert!(
        err.contains("damaged") && err.contains("delete --vid"),
        "{err}"
    );
    // --all: the damaged volume is a failure, not a silent skip; the good one still verified.
    let o = w.run(&["verify", "--all"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad"), "{err}");

    let err = w.fails(&["arch-check"], 1);
    assert!(
        err.contains(&format!("wyng delete --vid={bad}")) && err.contains("damaged"),
        "{err}"
    );
    // arch-check --clean removes nothing of it (no volinfo.bak can repair an info).
    w.fails(&["arch-check", "--clean"], 1);
    assert!(sdir.join("info").exists());
    // A write command on the other volume: its recovery keeps the damaged volume's files.
    let img = t.path().join("img");
    let mut im = Image::new(7);
    im.random(64 << 10);
    im.write(&img);
    w.send("good", &img, &[]);
    w.ok(&["prune", "good", "--all-before", "--session=newest", "-u"]);
    assert!(sdir.join("info").exists());

    w.ok(&["delete", "bad", "-u"]);
    assert!(!ar.join(&bad).exists());
    assert!(ar.join(&good).exists());
    w.ok(&["arch-check"]);
    check_strict(&ar);
}

/// Finding 4: a damaged volinfo is not "healed" in silence from volinfo.bak: the volume is
/// reported damaged, arch-check says so and `--clean` restores the committed copy.
#[test]
fn damaged_volinfo_is_reported_and_repaired_on_request() {
    let (t, ar, w, good_img) = two_volumes();
    let bad = vid_of(&w, "bad");
    let volinfo = ar.join(&bad).join("volinfo");
    assert!(ar.join(&bad).join("volinfo.bak").exists());
    let orig = std::fs::read(&volinfo).unwrap();
    let mut b = orig.clone();
    let n = b.len();
    b[n / 2] ^= 1;
    std::fs::write(&volinfo, &b).unwrap();

    let list = w.ok(&["list"]);
    assert!(list.contains("DAMAGED"), "{list}");
    let err = w.fails(&["verify", "bad"], 1);
    assert!(err.contains("arch-check --clean"), "{err}");
    w.ok(&["verify", "good"]);
    let err = w.fails(&["arch-check"], 1);
    assert!(err.contains("restores its volinfo"), "{err}");
    // A write that names it is refused, with what to do: never a second volume of its name.
    let img = t.path().join("new.img");
    std::fs::write(&img, vec![7u8; 100_000]).unwrap();
    let imp = format!("--import-other-from=bad:|:{}", img.display());
    for args in [
        vec!["send", "bad", imp.as_str()],
        vec!["add", "bad"],
        vec!["rename", "good", "bad"],
    ] {
        let err = w.fails(&args, 1);
        assert!(
            err.contains("is damaged") && err.contains("delete --vid"),
            "{args:?}: {err}"
        );
    }
    // A write command does not repair it behind the user's back either.
    w.ok(&["add", "third"]);
    assert_eq!(std::fs::read(&volinfo).unwrap(), b);
    if let Some(r) = check_report(&ar, None) {
        assert_eq!(r["valid"], false, "the checker agrees it is damaged");
    }

    let out = w.ok(&["arch-check", "--clean"]);
    assert!(out.contains("Restored"), "{out}");
    assert_eq!(std::fs::read(&volinfo).unwrap(), orig);
    w.ok(&["arch-check"]);
    w.ok(&["verify", "bad"]);
    let again = t.path().join("again.img");
    w.receive("good", None, &again);
    assert_eq!(sha256_file(&again), sha256_file(&good_img));
    check_strict(&ar);
}

/// Finding 5: leftovers inside session directories are reported by arch-check and removed by
/// `--clean`.
#[test]
fn leftovers_in_session_dirs_are_reported_and_cleaned() {
    let (_t, ar, w, _) = two_volumes();
    let vid = vid_of(&w, "good");
    let dir = first_session_dir(&ar, &vid);
    let s = dir.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::write(dir.join("manifest.z.tmp"), b"x").unwrap();
    std::fs::write(dir.join("info.tmp"), b"y").unwrap();
    let err = w.fails(&["arch-check"], 1);
    assert!(
        err.contains(&format!("{vid}/{s}/manifest.z.tmp")) && err.contains("--clean"),
        "{err}"
    );
    let out = w.ok(&["arch-check", "--clean"]);
    assert!(
        out.contains("manifest.z.tmp") && out.contains("info.tmp"),
        "{out}"
    );
    assert!(!dir.join("info.tmp").exists());
    let out = w.ok(&["arch-check"]);
    assert!(!out.contains("problem("), "{out}");
}

/// Finding 8: two volume ids with one name are refused by name (with both ids), listed
/// clearly, and each can be removed by its id.
/// Gives volume vol1 of the fixture a twin: a second id with the same name.
fn add_twin(ar: &Path, twin: &str) {
    copy_dir(&ar.join(VID), &ar.join(twin));
    let file = std::fs::read(ar.join("archive.ini")).unwrap();
    let (_, body) = ini::parse_header(&file).unwrap();
    let mut root =
        ArchiveIni::parse(&String::from_utf8(gunzip(body, 1 << 20).unwrap()).unwrap()).unwrap();
    let h = *root.volume_hash(&VolumeId::parse(VID).unwrap()).unwrap();
    root.set_volume(&VolumeId::parse(twin).unwrap(), h);
    let mut out = ini::header("00");
    out.extend_from_slice(&gzip(root.to_text().as_bytes()));
    std::fs::write(ar.join("archive.ini"), out).unwrap();
}

#[test]
fn duplicate_volume_names_are_refused_by_name() {
    let (_t, ar, w) = fixture();
    let twin = "Vol_2e08b7";
    add_twin(&ar, twin);
    let list = w.ok(&["list"]);
    assert_eq!(list.matches("used by another volume").count(), 2, "{list}");
    let js = w.json(&["list"]);
    assert!(js["volumes"]["vol1"].is_null(), "{js}");
    assert_eq!(js["damaged"].as_array().unwrap().len(), 2);
    for args in [&["verify", "vol1"][..], &["delete", "vol1", "-u"]] {
        let err = w.fails(args, 2);
        assert!(err.contains(VID) && err.contains(twin), "{err}");
    }
    w.ok(&["delete", &format!("--vid={twin}"), "-u"]);
    w.ok(&["verify", "vol1"]);
}

/// Finding 8: names with terminal escapes never reach the terminal raw.
#[test]
fn archive_strings_are_sanitised_in_messages() {
    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    let vi = set_line(&c.text(&format!("{VID}/volinfo")), "name", "ev\x1b[31mil");
    c.edit_volinfo(&vi.replace("\\x1b", "\x1b"));
    let o = w.run(&["list"]);
    let all = [o.stdout, o.stderr].concat();
    assert!(!all.contains(&0x1b), "{}", String::from_utf8_lossy(&all));
    let o = w.run(&["verify", "ev\x1b[31mil"]);
    assert!(
        !o.stderr.contains(&0x1b),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_ne!(o.status.code(), Some(0));
}

/// Random single-byte damage anywhere in the metadata or chunks: never a panic, and a command
/// that succeeds never returns wrong bytes.
#[test]
fn random_damage_never_panics_or_lies() {
    let exp = expected();
    let sessions = exp["archives"]["a-plain-zstd"]["volumes"]["vol1"]["sessions"]
        .as_array()
        .unwrap()
        .clone();
    let want = sessions.last().unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let (t, ar, w) = fixture();
    let mut files = Vec::new();
    let mut stack = vec![ar.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.metadata().unwrap().len() > 0
                && !e.file_name().to_string_lossy().ends_with(".bak")
            {
                files.push(e.path());
            }
        }
    }
    files.sort();
    let mut seed = 99u64;
    let out = t.path().join("out.img");
    for round in 0..60 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let f = &files[(seed >> 33) as usize % files.len()];
        let orig = std::fs::read(f).unwrap();
        let mut bad = orig.clone();
        match round % 3 {
            0 => {
                let i = (seed >> 7) as usize % bad.len();
                bad[i] ^= 1 << ((seed >> 3) % 8);
            }
            1 => bad.truncate((seed >> 9) as usize % bad.len()),
            _ => bad.extend_from_slice(b"\0garbage"),
        }
        std::fs::write(f, &bad).unwrap();
        let o = w
            .cmd(&[
                "receive",
                "vol1",
                "-u",
                "-q",
                &format!("--save-to={}", out.display()),
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains("panicked"),
            "round {round} {}: {err}",
            f.display()
        );
        assert_ne!(o.status.code(), Some(101));
        if o.status.success() {
            assert_eq!(
                sha256_file(&out),
                want,
                "round {round}: damaged {} yet wrong bytes returned",
                f.display()
            );
        } else {
            assert_eq!(
                err.lines()
                    .filter(|l| l.starts_with("wyng: error:"))
                    .count(),
                1,
                "{err}"
            );
        }
        std::fs::write(f, &orig).unwrap();
    }
}

/// The mount shows what is sound: a damaged volume and a name two volumes share are left out
/// (with a warning in the log), everything else reads as usual.
#[test]
fn the_mount_leaves_out_damaged_and_ambiguous_volumes() {
    if !can_run_privileged(&["/dev/fuse"]) {
        return;
    }
    let (t, ar, w, good_img) = two_volumes();
    let bad = vid_of(&w, "bad");
    let info = first_session_dir(&ar, &bad).join("info");
    let mut b = std::fs::read(&info).unwrap();
    b[2] ^= 0x11;
    std::fs::write(&info, &b).unwrap();
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    w.ok(&["mount", &mnt.display().to_string()]);
    let _g = MountGuard(mnt.clone());
    let names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["good"]);
    assert_eq!(
        sha256_file(&mnt.join("good/latest.img")),
        sha256_file(&good_img)
    );
    w.ok(&["umount", &mnt.display().to_string()]);

    let (_t2, ar, w) = fixture();
    add_twin(&ar, "Vol_2e08b7");
    w.ok(&["mount", &mnt.display().to_string()]);
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
    w.ok(&["umount", &mnt.display().to_string()]);
}
