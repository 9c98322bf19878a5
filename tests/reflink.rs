//! `send --local` on real Btrfs and XFS (reflink) filesystems on loop files: incremental sends
//! read only what the extent maps say changed, and every session still receives exactly.
//! Needs root and loop devices; skips without them, except under CI=true.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use common::*;

const CS: u64 = 65536;

struct Fs {
    _mount: MountGuard,
    dir: std::path::PathBuf,
}

fn make_fs(t: &Path, kind: &str) -> Option<Fs> {
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
    let w = Wyng::new(&ar, &t.path().join("meta"));
    w.ok(&["arch-init", "--encrypt=off", "--chunk-factor=1"]);
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

fn nix_statfs_type(p: &Path) -> i64 {
    // SAFETY: statfs into a zeroed struct.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        libc::statfs(c.as_ptr(), &mut s);
        s.f_type as i64
    }
}
