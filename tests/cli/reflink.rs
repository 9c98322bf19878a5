//! `send --local` on real Btrfs and XFS (reflink) filesystems on loop files: incremental sends
//! read only what the extent maps say changed, and every session still receives exactly.
//! Needs root and loop devices; skips without them, except under CI=true.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use crate::common::*;

const CS: u64 = 65536;

pub(crate) struct Fs {
    _mount: MountGuard,
    dir: std::path::PathBuf,
}

/// A Btrfs subvolume (so scans freeze it) or a plain directory, as `--local`.
pub(crate) fn local_dir(fs: &Fs, kind: &str) -> std::path::PathBuf {
    let local = fs.dir.join("pool");
    if kind == "btrfs" {
        assert!(Command::new("btrfs")
            .args(["-q", "subvolume", "create"])
            .arg(&local)
            .status()
            .unwrap()
            .success());
    } else {
        std::fs::create_dir(&local).unwrap();
    }
    local
}

pub(crate) fn make_fs(t: &Path, kind: &str) -> Option<Fs> {
    let mkfs = format!("/usr/sbin/mkfs.{kind}");
    if !can_run_privileged(&["/dev/loop-control", &mkfs]) {
        return None;
    }
    let img = t.join(format!("{kind}.img"));
    std::fs::File::create(&img)
        .unwrap()
        .set_len(320 << 20)
        .unwrap();
    let mut c = Command::new(&mkfs);
    match kind {
        "xfs" => c.args(["-q", "-f", "-m", "reflink=1"]),
        _ => c.args(["-q", "-f"]),
    };
    assert!(c.arg(&img).status().unwrap().success(), "mkfs.{kind}");
    let dir = t.join(format!("{kind}-mnt"));
    std::fs::create_dir(&dir).unwrap();
    assert!(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    Some(Fs {
        _mount: MountGuard(dir.clone()),
        dir,
    })
}

fn punch_hole(f: &std::fs::File, off: u64, len: u64) {
    // SAFETY: plain syscall on an open descriptor.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as i64,
            len as i64,
        )
    };
    assert_eq!(r, 0, "punch hole");
}

fn incremental_on(kind: &str) {
    let t = tmp();
    let Some(fs) = make_fs(t.path(), kind) else {
        return;
    };
    let local = fs.dir.join("pool");
    std::fs::create_dir_all(local.join("vms")).unwrap();
    let vol = local.join("vms/disk.img");
    let mut img = Image::new(21);
    img.random(24 << 20);
    img.write(&vol);
    let ar = t.path().join("archive");
    // Explicit session names: sends in a row do not wait for the clock.
    let w = Wyng::fresh(&ar, &t.path().join("meta")).named_sessions();
    let loc = format!("--local={}", local.display());
    let send = || -> serde_json::Value { w.json(&["send", "vms/disk.img", &loc])[0].clone() };
    let mut sessions = Vec::new();
    let sha = || sha256_file(&vol);

    let r = send();
    assert_eq!(
        r["chunks_read"], 384,
        "{kind}: first send is a full scan: {r}"
    );
    sessions.push((r["session"].as_str().unwrap().to_string(), sha()));

    // In-place writes at 3 places, and growth by 1 MiB.
    {
        let f = std::fs::OpenOptions::new().write(true).open(&vol).unwrap();
        for off in [100_000u64, 7 << 20, (20 << 20) + 12_345] {
            f.write_all_at(&[0xA5; 5000], off).unwrap();
        }
        f.write_all_at(&vec![0x3C; 1 << 20], 24 << 20).unwrap();
        f.sync_all().unwrap();
    }
    let r = send();
    let read = r["chunks_read"].as_u64().unwrap();
    assert!(
        (3..=40).contains(&read),
        "{kind}: only changed chunks are read, not {read}: {r}"
    );
    assert_eq!(r["volsize"], 25 << 20);
    sessions.push((r["session"].as_str().unwrap().to_string(), sha()));

    // A punched hole and a shrink.
    {
        let f = std::fs::OpenOptions::new().write(true).open(&vol).unwrap();
        punch_hole(&f, 4 * CS, 8 * CS);
        f.set_len((22 << 20) + 777).unwrap();
        f.sync_all().unwrap();
    }
    let r = send();
    assert!(r["chunks_read"].as_u64().unwrap() <= 40, "{kind}: {r}");
    sessions.push((r["session"].as_str().unwrap().to_string(), sha()));

    // A dry run reports and writes nothing; the baseline stays paired.
    {
        let f = std::fs::OpenOptions::new().write(true).open(&vol).unwrap();
        f.write_all_at(&[0x77; 3000], 9 << 20).unwrap();
    }
    let before = files_under(&ar).len();
    let dry = w.json(&["send", "vms/disk.img", &loc, "--dry-run"])[0].clone();
    assert!(
        dry["session"].is_null() && dry["chunks_changed"].as_u64().unwrap() >= 1,
        "{kind}: {dry}"
    );
    assert_eq!(
        files_under(&ar).len(),
        before,
        "{kind}: a dry run writes nothing"
    );
    let r = send();
    assert!(
        r["chunks_read"].as_u64().unwrap() <= 40,
        "{kind}: still incremental after a dry run: {r}"
    );
    sessions.push((r["session"].as_str().unwrap().to_string(), sha()));

    // Nothing changed: nothing read, no session.
    let r = send();
    assert_eq!(r["chunks_read"], 0, "{kind}: {r}");
    assert!(r["session"].is_null());

    // The baseline snapshot lost: a full scan, still exact.
    for e in std::fs::read_dir(local.join("vms")).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".wyng1") {
            std::fs::remove_file(p).unwrap();
        }
    }
    {
        let f = std::fs::OpenOptions::new().write(true).open(&vol).unwrap();
        f.write_all_at(b"after the loss", 3 << 20).unwrap();
    }
    let r = send();
    assert!(r["chunks_read"].as_u64().unwrap() > 300, "{kind}: {r}");
    sessions.push((r["session"].as_str().unwrap().to_string(), sha()));

    // send -a: every volume of the archive, from the same directory.
    let r = w.json(&["send", "-a", &loc]);
    assert_eq!(r.as_array().unwrap().len(), 1);
    assert_eq!(r[0]["chunks_read"], 0, "{kind}: {r}");

    let out = t.path().join("out.img");
    for (s, sha) in &sessions {
        w.receive("vms/disk.img", Some(s), &out);
        assert_eq!(&sha256_file(&out), sha, "{kind} {s}");
    }
    if let Some(report) = check_strict(&ar) {
        let want: Vec<(String, String)> = sessions.clone();
        assert_eq!(checker_hashes(&report, "vms/disk.img"), want);
    }

    // Disaster: the volume file is lost. Receive it into --local; it is paired again, so the
    // next send is incremental.
    let newest = sha();
    std::fs::remove_file(&vol).unwrap();
    w.ok(&["receive", "vms/disk.img", &loc, "-u"]);
    assert_eq!(sha(), newest);
    {
        let f = std::fs::OpenOptions::new().write(true).open(&vol).unwrap();
        f.write_all_at(&[1; 100], 5 << 20).unwrap();
    }
    let r = send();
    assert!(
        r["chunks_read"].as_u64().unwrap() <= 40,
        "{kind}: paired again after receive: {r}"
    );
    let newest = sha();
    // --use-snapshot restores the newest session from the snapshot, reading nothing from the
    // archive: it works even with a damaged chunk there.
    for c in chunk_files(&ar).iter().take(3) {
        let mut b = std::fs::read(c).unwrap();
        b[0] ^= 0xFF;
        std::fs::write(c, &b).unwrap();
    }
    std::fs::remove_file(&vol).unwrap();
    w.ok(&["receive", "vms/disk.img", &loc, "--use-snapshot", "-u"]);
    assert_eq!(sha(), newest);
}

#[test]
fn btrfs_incremental_sends() {
    incremental_on("btrfs");
}

#[test]
fn xfs_incremental_sends() {
    incremental_on("xfs");
}

#[test]
fn local_must_be_reflink_capable() {
    let t = tmp();
    let ar = t.path().join("archive");
    let w = Wyng::new(&ar, &t.path().join("meta"));
    w.ok(&["arch-init", "--encrypt=off"]);
    std::fs::write(t.path().join("v.img"), b"x").unwrap();
    // /tmp here is not Btrfs or XFS (ext4 or tmpfs): a clear refusal.
    let st = nix_statfs_type(t.path());
    if st == 0x9123_683E || st == 0x5846_5342 {
        return;
    }
    let err = w.fails(
        &["send", "v.img", &format!("--local={}", t.path().display())],
        7,
    );
    assert!(err.contains("reflink"), "{err}");
}

/// What the test knows the volume holds, and which chunks it touched since the last send.
struct Model {
    path: std::path::PathBuf,
    data: Vec<u8>,
    touched: std::collections::BTreeSet<u64>,
}

impl Model {
    fn touch(&mut self, from: u64, to: u64) {
        if to > from {
            self.touched.extend(from / CS..=(to - 1) / CS);
        }
    }

    fn file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap()
    }

    fn write(&mut self, off: u64, bytes: &[u8]) {
        self.file().write_all_at(bytes, off).unwrap();
        let end = off as usize + bytes.len();
        if self.data.len() < end {
            self.touch(self.data.len() as u64, end as u64);
            self.data.resize(end, 0);
        }
        self.data[off as usize..end].copy_from_slice(bytes);
        self.touch(off, end as u64);
    }

    fn resize(&mut self, len: u64) {
        self.file().set_len(len).unwrap();
        let old = self.data.len() as u64;
        self.touch(old.min(len) / CS * CS, old.max(len));
        self.data.resize(len as usize, 0);
    }

    fn punch(&mut self, off: u64, len: u64) {
        let end = (off + len).min(self.data.len() as u64);
        if end <= off {
            return;
        }
        punch_hole(&self.file(), off, end - off);
        self.data[off as usize..end as usize].fill(0);
        self.touch(off, end);
    }

    fn sha(&self) -> String {
        let got = sha256_file(&self.path);
        let mut img = Image::new(0);
        img.data = self.data.clone();
        assert_eq!(got, img.sha256(), "the model tracks the file");
        got
    }
}

/// Random writes, growth, shrinks and holes, with monitor runs between some of them; every
/// send reads no more chunks than were touched, and every session receives exactly.
fn randomized_on(kind: &str, seed: u64, rounds: usize) {
    let t = tmp();
    let Some(fs) = make_fs(t.path(), kind) else {
        return;
    };
    let local = local_dir(&fs, kind);
    let mut rng = Image::new(seed);
    let mut init = Image::new(seed + 1);
    init.random(6 << 20).zeros(1 << 20).random(1 << 20);
    let path = local.join("vol.img");
    init.write(&path);
    let mut m = Model {
        path,
        data: init.data.clone(),
        touched: Default::default(),
    };
    let ar = t.path().join("archive");
    // Explicit session names: a send per round, no waiting for the clock.
    let w = Wyng::fresh(&ar, &t.path().join("meta")).named_sessions();
    let loc = format!("--local={}", local.display());
    let mut sessions = Vec::new();
    let r = w.json(&["send", "vol.img", &loc])[0].clone();
    sessions.push((r["session"].as_str().unwrap().to_string(), m.sha()));
    m.touched.clear();
    let mut monitors = 0;
    for round in 0..rounds {
        for _ in 0..1 + rng.next() % 4 {
            let size = m.data.len() as u64;
            match rng.next() % 8 {
                0 => {
                    let grow = 1 + rng.next() % (2 << 20);
                    if rng.next() % 2 == 0 {
                        m.resize(size + grow); // sparse growth
                    } else {
                        let mut b = Image::new(rng.next());
                        b.random(grow as usize);
                        m.write(size, &b.data);
                    }
                }
                1 if size > 3 << 20 => m.resize(size - rng.next() % (size / 3)),
                2 => {
                    let off = rng.next() % size / 4096 * 4096;
                    m.punch(off, 4096 * (1 + rng.next() % 40));
                }
                _ => {
                    let len = 1 + rng.next() % 200_000;
                    let off = rng.next() % size.saturating_sub(len).max(1);
                    let mut b = Image::new(rng.next());
                    b.random(len as usize);
                    m.write(off, &b.data);
                }
            }
        }
        if rng.next() % 3 == 0 {
            let r = w.json(&["monitor", "vol.img", &loc]);
            // "no change" is right when the operations rewrote nothing (a hole punched in a hole).
            assert_ne!(r[0]["state"], "skipped", "{kind} round {round}: {r}");
            monitors += (r[0]["state"] == "rotated") as usize;
            continue;
        }
        let r = w.json(&["send", "vol.img", &loc])[0].clone();
        let read = r["chunks_read"].as_u64().unwrap();
        assert!(
            read <= m.touched.len() as u64,
            "{kind} round {round}: read {read} chunks, touched {}: {r}",
            m.touched.len()
        );
        if let Some(s) = r["session"].as_str() {
            sessions.push((s.to_string(), m.sha()));
        }
        m.touched.clear();
    }
    // The last changes, harvested by monitor only, then sent.
    let r = w.json(&["send", "vol.img", &loc])[0].clone();
    assert!(
        r["chunks_read"].as_u64().unwrap() <= m.touched.len() as u64,
        "{r}"
    );
    if let Some(s) = r["session"].as_str() {
        sessions.push((s.to_string(), m.sha()));
    }
    let unchanged = w.json(&["monitor", "vol.img", &loc]);
    assert_eq!(unchanged[0]["state"], "no change", "{unchanged}");
    assert!(sessions.len() > 2 && monitors > 0, "{kind}: too few steps");
    let out = t.path().join("out.img");
    for (s, sha) in &sessions {
        w.receive("vol.img", Some(s), &out);
        assert_eq!(&sha256_file(&out), sha, "{kind} {s}");
    }
    if let Some(report) = check_strict(&ar) {
        assert_eq!(checker_hashes(&report, "vol.img"), sessions);
    }
    assert!(!local.join("wyng_snapshot_tmp").exists());
}

#[test]
fn btrfs_randomized_with_monitor() {
    for seed in [1, 2] {
        randomized_on("btrfs", seed, 14);
    }
}

#[test]
fn xfs_randomized_with_monitor() {
    randomized_on("xfs", 3, 14);
}

/// One volume sent once from a fresh Btrfs subvolume.
struct Setup {
    t: tempfile::TempDir,
    _fs: Fs,
    local: std::path::PathBuf,
    ar: std::path::PathBuf,
    w: Wyng,
    loc: String,
}

impl Setup {
    fn new(kind: &str, volume: &[u8]) -> Option<Setup> {
        let t = tmp();
        let fs = make_fs(t.path(), kind)?;
        let local = local_dir(&fs, kind);
        std::fs::write(local.join("vol.img"), volume).unwrap();
        let ar = t.path().join("archive");
        let w = Wyng::fresh(&ar, &t.path().join("meta"));
        let loc = format!("--local={}", local.display());
        Some(Setup {
            t,
            _fs: fs,
            local,
            ar,
            w,
            loc,
        })
    }

    fn send(&self) -> serde_json::Value {
        self.w.json(&["send", "vol.img", &self.loc])[0].clone()
    }

    fn vol(&self) -> std::path::PathBuf {
        self.local.join("vol.img")
    }

    fn scribble(&self, off: u64, b: &[u8]) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.vol())
            .unwrap()
            .write_all_at(b, off)
            .unwrap();
    }

    fn snapshots(&self) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&self.local)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.to_string_lossy();
                n.ends_with(".wyng1") || n.ends_with(".wyng2")
            })
            .collect();
        v.sort();
        v
    }

    fn maps(&self) -> Vec<std::path::PathBuf> {
        files_under(&self.t.path().join("meta"))
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".deltamap"))
            .collect()
    }

    fn check_newest(&self) {
        let out = self.t.path().join("check.img");
        self.w.receive("vol.img", None, &out);
        assert_eq!(sha256_file(&out), sha256_file(&self.vol()));
    }
}

/// 8 MiB of data: 128 chunks of 64 KiB.
fn eight_mib(seed: u64) -> Vec<u8> {
    let mut i = Image::new(seed);
    i.random(8 << 20);
    i.data.clone()
}

#[test]
fn lost_state_means_a_correct_full_scan() {
    let Some(mut s) = Setup::new("btrfs", &eight_mib(5)) else {
        return;
    };
    s.w = s.w.named_sessions();
    s.send();
    assert_eq!(s.snapshots().len(), 1, "{:?}", s.snapshots());
    assert_eq!(s.maps().len(), 1, "{:?}", s.maps());
    s.scribble(1 << 20, b"one");
    assert_eq!(s.send()["chunks_read"], 1);

    // The delta map deleted: a full scan, and pairing restored.
    s.maps()
        .iter()
        .for_each(|m| std::fs::remove_file(m).unwrap());
    s.scribble(2 << 20, b"two");
    let r = s.send();
    assert_eq!(r["chunks_read"], 128, "{r}");
    assert_eq!(r["chunks_changed"], 1, "{r}");
    s.check_newest();
    s.scribble(3 << 20, b"three");
    assert_eq!(s.send()["chunks_read"], 1);

    // The baseline snapshot deleted behind wyng's back.
    s.snapshots()
        .iter()
        .for_each(|m| std::fs::remove_file(m).unwrap());
    s.scribble(4 << 20, b"four");
    assert_eq!(s.send()["chunks_read"], 128);
    s.check_newest();

    // The volume replaced by a different file of the same name: every chunk differs in the
    // extent maps, so every chunk is read.
    let other = s.local.join("other.img");
    let mut img = eight_mib(6);
    img[..10].copy_from_slice(b"replaced!!");
    std::fs::write(&other, &img).unwrap();
    std::fs::rename(&other, s.vol()).unwrap();
    let r = s.send();
    assert_eq!(r["chunks_read"], 128, "{r}");
    assert_eq!(r["chunks_changed"], 128, "{r}");
    s.check_newest();

    // The map lost after a monitor recorded changes: a full scan still finds them.
    s.scribble(5 << 20, b"five");
    let m = s.w.json(&["monitor", "-a", &s.loc]);
    assert_eq!(m[0]["state"], "rotated", "{m}");
    s.maps()
        .iter()
        .for_each(|m| std::fs::remove_file(m).unwrap());
    let r = s.send();
    assert_eq!(
        (r["chunks_read"].as_u64(), r["chunks_changed"].as_u64()),
        (Some(128), Some(1))
    );
    s.check_newest();

    // A freeze snapshot left by a killed run is removed; the scan still works.
    assert!(Command::new("btrfs")
        .args(["-q", "subvolume", "snapshot", "-r"])
        .arg(&s.local)
        .arg(s.local.join("wyng_snapshot_tmp"))
        .status()
        .unwrap()
        .success());
    s.scribble(6 << 20, b"six");
    assert_eq!(s.send()["chunks_read"], 1);
    assert!(!s.local.join("wyng_snapshot_tmp").exists());
    s.check_newest();
    check_strict(&s.ar);
}

#[test]
fn monitor_accumulates_changes_for_the_next_send() {
    let Some(s) = Setup::new("xfs", &eight_mib(7)) else {
        return;
    };
    // Not sent yet: nothing to monitor.
    s.w.ok(&["add", "vol.img"]);
    let m = s.w.json(&["monitor", "vol.img", &s.loc]);
    assert_eq!(m[0]["state"], "skipped", "{m}");
    s.send();
    let m = s.w.json(&["monitor", "vol.img", &s.loc]);
    assert_eq!(m[0]["state"], "no change", "{m}");
    let snaps = s.snapshots();
    for (i, off) in [0u64, 3 << 20, 7 << 20].iter().enumerate() {
        s.scribble(*off, b"monitored");
        let m = s.w.json(&["monitor", "-a", &s.loc]);
        assert_eq!(m[0]["state"], "rotated", "{m}");
        assert_eq!(m[0]["changed_chunks"], 1, "{m}");
        assert_eq!(m[0]["recorded_chunks"], i as u64 + 1, "{m}");
    }
    assert_eq!(s.snapshots().len(), 1, "monitor keeps one baseline");
    assert_ne!(std::fs::metadata(&snaps[0]).unwrap().modified().ok(), None);
    // The map holds the three chunks in the original's layout: bit i of byte i/8, LSB first.
    let map = std::fs::read(&s.maps()[0]).unwrap();
    assert_eq!(map.len(), 128 / 8 + 1);
    assert_eq!((map[0], map[6], map[14]), (0b1, 0b1, 0b1), "{map:?}");
    // diff --local compares the volume while changes are recorded since the send...
    let d = s.w.fails(&["diff", "vol.img", &s.loc], 2);
    assert!(d.contains("comparing the volume"), "{d}");
    let r = s.send();
    assert_eq!(r["chunks_read"], 3, "{r}");
    assert_eq!(r["chunks_changed"], 3, "{r}");
    s.check_newest();
    // ... and the paired snapshot once the baseline holds exactly the newest session.
    let d = s.w.run(&["diff", "vol.img", &s.loc, "--quick"]);
    assert!(d.status.success(), "{d:?}");
    assert!(String::from_utf8_lossy(&d.stderr).contains("paired snapshot"));
    // The next session starts with a blank map.
    let map = &s.maps()[0];
    assert!(std::fs::read(map).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn nocow_files_get_full_scans_without_snapshots() {
    let Some(s) = Setup::new("btrfs", b"") else {
        return;
    };
    // +C takes effect only on an empty file.
    assert!(Command::new("chattr")
        .arg("+C")
        .arg(s.vol())
        .status()
        .unwrap()
        .success());
    std::fs::write(s.vol(), eight_mib(8)).unwrap();
    let out =
        s.w.cmd(&["send", "vol.img", &s.loc, "--json"])
            .output()
            .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOCOW"));
    s.scribble(100, b"nocow write");
    let r = s.send();
    assert_eq!(r["chunks_read"], 128, "a full scan: {r}");
    assert_eq!(r["chunks_changed"], 1, "{r}");
    assert!(s.snapshots().is_empty(), "{:?}", s.snapshots());
    s.check_newest();
}

#[test]
fn receive_modes_touch_only_what_differs() {
    let Some(mut s) = Setup::new("btrfs", &eight_mib(9)) else {
        return;
    };
    s.w = s.w.named_sessions();
    let mut shas = Vec::new();
    let mut names = Vec::new();
    let r = s.send();
    names.push(r["session"].as_str().unwrap().to_string());
    shas.push(sha256_file(&s.vol()));
    for (i, off) in [1u64 << 20, 5 << 20].iter().enumerate() {
        s.scribble(*off, format!("session {i}").as_bytes());
        let r = s.send();
        names.push(r["session"].as_str().unwrap().to_string());
        shas.push(sha256_file(&s.vol()));
    }
    let sess = |i: usize| format!("--session={}", &names[i][2..]);
    let newest = shas[2].clone();

    // The volume damaged locally in 3 chunks, one of them zeroed: --sparse fetches only the
    // damaged data chunks and rewrites those 3.
    s.scribble(0, b"damage");
    s.scribble(6 << 20, b"damage");
    s.scribble(2 << 20, &vec![0u8; 65536]);
    let r = s.w.json(&["receive", "vol.img", &s.loc, "--sparse", "-u"]);
    assert_eq!(r["data_chunks"], 3, "{r}");
    assert_eq!(r["chunks_written"], 3, "{r}");
    assert_eq!(sha256_file(&s.vol()), newest);
    // Nothing differs now.
    let r = s.w.json(&["receive", "vol.img", &s.loc, "--sparse", "-u"]);
    assert_eq!(
        (r["data_chunks"].as_u64(), r["chunks_written"].as_u64()),
        (Some(0), Some(0))
    );

    // --sparse-write fetches everything and writes what differs; a zero session chunk is
    // punched.
    s.scribble(4 << 20, b"damage");
    let r =
        s.w.json(&["receive", "vol.img", &s.loc, "--sparse-write", "-u"]);
    assert_eq!(r["data_chunks"], 128, "{r}");
    assert_eq!(r["chunks_written"], 1, "{r}");
    assert_eq!(sha256_file(&s.vol()), newest);

    // An older session from the paired snapshot plus only what later sessions changed.
    let r = s.w.json(&[
        "receive",
        "vol.img",
        &s.loc,
        &sess(0),
        "--use-snapshot-diff",
        "-u",
    ]);
    assert_eq!(r["data_chunks"], 2, "{r}");
    assert_eq!(sha256_file(&s.vol()), shas[0]);
    let r = s.w.json(&[
        "receive",
        "vol.img",
        &s.loc,
        &sess(1),
        "--use-snapshot",
        "-u",
    ]);
    assert_eq!(r["chunks_written"], 1, "{r}");
    assert_eq!(sha256_file(&s.vol()), shas[1]);
    // Back to the newest, instantly.
    let r =
        s.w.json(&["receive", "vol.img", &s.loc, "--use-snapshot", "-u"]);
    assert_eq!(r["data_chunks"], 0, "{r}");
    assert_eq!(sha256_file(&s.vol()), newest);
    // --sparse to a --save-to file (not in --local) works the same way.
    let out = s.t.path().join("copy.img");
    s.w.receive("vol.img", Some(&names[0]), &out);
    let save = format!("--save-to={}", out.display());
    let r = s.w.json(&["receive", "vol.img", &save, "--sparse", "-u"]);
    assert_eq!(r["data_chunks"], 2, "{r}");
    assert_eq!(sha256_file(&out), newest);
    // After all that the volume is still paired: the next send is incremental.
    s.scribble(0, b"later");
    assert_eq!(s.send()["chunks_read"], 1);
}

#[test]
fn delete_clean_removes_only_what_it_should() {
    let Some(s) = Setup::new("xfs", &eight_mib(10)) else {
        return;
    };
    s.send();
    let ours = s.snapshots()[0].clone();
    let name = ours.file_name().unwrap().to_string_lossy().into_owned();
    let uuid = &name[2..38];
    let orphan = s.local.join(format!("sn{uuid}_Vol_00dead.wyng1"));
    let other = s
        .local
        .join("sub/sn00000000-1111-2222-3333-444444444444_Vol_abcdef.wyng1");
    std::fs::create_dir(s.local.join("sub")).unwrap();
    std::fs::write(&orphan, b"x").unwrap();
    std::fs::write(&other, b"x").unwrap();
    let unrelated = s.local.join("snapshot-notes.wyng1.txt");
    std::fs::write(&unrelated, b"x").unwrap();

    // Unattended (no terminal, or -u), removing snapshots takes --force, as in the original.
    s.w.fails(&["delete", "--clean", &s.loc], 9);
    s.w.fails(&["delete", "--clean", &s.loc, "-u"], 9);
    s.w.ok(&["delete", "--clean", &s.loc, "--force"]);
    assert!(!orphan.exists() && other.exists() && ours.exists());
    s.w.ok(&["delete", "--clean", "--purge=other", &s.loc, "--force"]);
    assert!(!other.exists() && ours.exists() && unrelated.exists());
    // Still paired: incremental.
    s.scribble(0, b"x");
    assert_eq!(s.send()["chunks_read"], 1);
    // delete with --local removes the volume's snapshots and maps too.
    s.w.ok(&["delete", "vol.img", &s.loc, "-u"]);
    assert!(s.snapshots().is_empty() && s.maps().is_empty());
    assert!(unrelated.exists() && s.vol().exists());
}

#[test]
fn thin_pool_spec_needs_lvm() {
    // device-mapper is absent here: a vg/pool --local is recognised and refused clearly.
    let t = tmp();
    let w = Wyng::new(&t.path().join("archive"), &t.path().join("meta"));
    w.ok(&["arch-init", "--encrypt=off"]);
    let err = w.fails(&["send", "vm-work", "--local=qubes_dom0/pool00"], 7);
    assert!(err.contains("LVM"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

fn nix_statfs_type(p: &Path) -> i64 {
    // SAFETY: statfs into a zeroed struct.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        libc::statfs(c.as_ptr(), &mut s);
        s.f_type as i64
    }
}

/// Runs with `--json`, expecting exit code `code`; returns the parsed stdout.
fn json_exit(w: &Wyng, args: &[&str], code: i32) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let o = w.run(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "wyng {args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"))
}

#[expect(clippy::too_many_lines, reason = "long before the lint; to be split")]
#[test]
fn vols_from_spans_storages_renames_and_lists_failures() {
    let Some(s) = Setup::new("btrfs", &eight_mib(11)) else {
        return;
    };
    let second = s._fs.dir.join("second");
    std::fs::create_dir(&second).unwrap();
    std::fs::write(second.join("web.img"), eight_mib(12)).unwrap();
    let file = s.t.path().join("vols.json");
    let error_file = s.t.path().join("vols.json.error");
    let write_spec = |web_alias: &str| {
        let spec = serde_json::json!({
            s.local.to_str().unwrap(): [["vol.img", null], ["missing.img", null]],
            second.to_str().unwrap(): [["web.img", web_alias]],
            "/nonexistent-wyng-storage": [["ghost.img", null]],
        });
        std::fs::write(&file, spec.to_string()).unwrap();
    };
    write_spec("");
    let vf = format!("--vols-from={}", file.display());

    // Two storages, one session name; the missing volume and the missing storage are volume
    // errors: everything else is still sent, the run exits 2 and lists them.
    let r = json_exit(&s.w, &["send", &vf], 2);
    let r = r.as_array().unwrap();
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0]["session"], r[1]["session"], "one session name: {r:?}");
    let errors: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&error_file).unwrap()).unwrap();
    assert_eq!(
        errors,
        serde_json::json!({"rc": 2, "volumes": ["ghost.img", "missing.img"]})
    );

    // The VM's disk is renamed locally; the file says so with an alias. The archive volume
    // follows (renamed, keeping its sessions) and the send stays incremental.
    std::fs::rename(second.join("web.img"), second.join("web-2027.img")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(second.join("web-2027.img"))
        .unwrap()
        .write_all_at(b"changed", 5 << 20)
        .unwrap();
    write_spec("web-2027.img");
    let local_from = format!("--local-from={}", file.display());
    let r = json_exit(&s.w, &["send", &local_from], 2);
    let web = r
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["volume"] == "web-2027.img")
        .unwrap_or_else(|| panic!("{r}"))
        .clone();
    assert_eq!(
        web["chunks_read"], 1,
        "still paired after the rename: {web}"
    );
    let vols = s.w.json(&["list"])["volumes"].clone();
    assert!(vols.get("web.img").is_none(), "{vols}");
    assert_eq!(
        vols["web-2027.img"]["sessions"].as_object().unwrap().len(),
        2,
        "{vols}"
    );

    // verify, monitor and diff take the same file; the renamed volume is found by its alias.
    let v = json_exit(&s.w, &["verify", &vf], 2);
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    s.scribble(1 << 20, b"monitored");
    let m = json_exit(&s.w, &["monitor", &vf], 2);
    let states: Vec<&str> = m
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["rotated", "no change"], "{m}");
    let d = json_exit(&s.w, &["diff", &vf], 2);
    let differs: Vec<&str> = d
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["first_difference"].is_null())
        .map(|r| r["volume"].as_str().unwrap())
        .collect();
    assert_eq!(differs, ["vol.img"], "{d}");
    let errors: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&error_file).unwrap()).unwrap();
    assert_eq!(
        errors["volumes"],
        serde_json::json!(["ghost.img", "missing.img", "vol.img"])
    );

    // receive: each volume into its storage under the local name given.
    let restore = s._fs.dir.join("restore");
    std::fs::create_dir(&restore).unwrap();
    let spec = serde_json::json!({
        restore.to_str().unwrap(): [["vol.img", "vol-restored.img"], ["web-2027.img", null]],
    });
    let rfile = s.t.path().join("restore.json");
    std::fs::write(&rfile, spec.to_string()).unwrap();
    let rvf = format!("--vols-from={}", rfile.display());
    let r = s.w.json(&["receive", &rvf, "-u"]);
    assert_eq!(r.as_array().unwrap().len(), 2, "{r}");
    assert!(!s.t.path().join("restore.json.error").exists());
    assert_eq!(
        sha256_file(&restore.join("web-2027.img")),
        sha256_file(&second.join("web-2027.img"))
    );
    let first = s.t.path().join("first.img");
    std::fs::write(&first, eight_mib(11)).unwrap();
    assert_eq!(
        sha256_file(&restore.join("vol-restored.img")),
        sha256_file(&first),
        "vol.img's only session (the monitored change was never sent)"
    );

    // A clean run removes the stale error file; bad files are one-line input errors.
    std::fs::write(
        &file,
        serde_json::json!({"null": [["vol.img", null]]}).to_string(),
    )
    .unwrap();
    s.w.ok(&["verify", &vf]);
    assert!(
        !error_file.exists(),
        "a clean run removes the old error file"
    );
    std::fs::write(&file, "{\"/x\": [[\"a\"], [\"a\"]]}").unwrap();
    let e = s.w.fails(&["verify", &vf], 9);
    assert!(e.contains("listed twice"), "{e}");
    let e = s.w.fails(&["send", "vol.img", &vf], 9);
    assert!(e.contains("cannot be used with"), "{e}");
    let e = s.w.fails(&["prune", "vol.img", &vf], 9);
    assert!(e.contains("cannot be used with `prune`"), "{e}");
}
