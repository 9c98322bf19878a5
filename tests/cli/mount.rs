//! `wyng mount` end to end, with real FUSE mounts and real loop devices (root). Skips without
//! root or /dev/fuse, except under CI=true where it must run.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use wyng::format::ChunkRef;

fn mount(w: &Wyng, mnt: &Path, extra: &[&str]) -> MountGuard {
    std::fs::create_dir_all(mnt).unwrap();
    let m = mnt.display().to_string();
    let mut args = vec!["mount", m.as_str()];
    args.extend_from_slice(extra);
    w.ok(&args);
    MountGuard(mnt.to_path_buf())
}

fn seek(f: &std::fs::File, off: u64, whence: i32) -> Option<u64> {
    // SAFETY: plain syscall on an open descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as i64, whence) };
    (r >= 0).then_some(r as u64)
}

#[test]
fn every_fixture_session_reads_exactly_with_its_holes() {
    if !can_run_privileged(&["/dev/fuse"]) {
        return;
    }
    let all = expected();
    for (name, exp) in all["archives"].as_object().unwrap() {
        let t = tmp();
        let ar = copy_fixture(name, t.path());
        let pass = exp["passphrase"].as_str();
        let w = Wyng::maybe_pass(&ar, &t.path().join("meta"), pass);
        let mnt = t.path().join("mnt");
        let _g = mount(&w, &mnt, &[]);
        let archive = open_library(&ar, pass);
        for (vol, ev) in exp["volumes"].as_object().unwrap() {
            let sessions = ev["sessions"].as_array().unwrap();
            for s in sessions {
                let sname = s["name"].as_str().unwrap();
                let file = mnt.join(vol).join(format!("{sname}.img"));
                assert_eq!(
                    sha256_file(&file),
                    s["sha256"].as_str().unwrap(),
                    "{name} {vol} {sname}"
                );
                let md = std::fs::metadata(&file).unwrap();
                assert_eq!(md.len(), s["size"].as_u64().unwrap());
                // Holes are exactly the zero chunks of the merged manifest.
                let vi = archive.volume_index(vol).unwrap();
                let idx = archive.volumes()[vi]
                    .sessions
                    .iter()
                    .position(|x| x.name.as_str() == sname)
                    .unwrap();
                let m = archive.merged(vi, idx).unwrap();
                let f = std::fs::File::open(&file).unwrap();
                let mut stored = 0u64;
                for i in 0..m.chunks() {
                    let off = i * m.chunksize();
                    let data = seek(&f, off, libc::SEEK_DATA);
                    match m.get(i).unwrap().unwrap().0 {
                        ChunkRef::Data(_) => {
                            stored += 1;
                            assert_eq!(data, Some(off), "{name} {sname} chunk {i}")
                        }
                        ChunkRef::Zero => assert_ne!(data, Some(off), "{name} {sname} chunk {i}"),
                    }
                }
                assert_eq!(stored, m.data_chunks());
                assert_eq!(
                    md.blocks() * 512,
                    (stored * m.chunksize()).min(md.len().next_multiple_of(512))
                );
            }
            let newest = sessions.last().unwrap()["name"].as_str().unwrap();
            assert_eq!(
                std::fs::read_link(mnt.join(vol).join("latest.img")).unwrap(),
                PathBuf::from(format!("{newest}.img"))
            );
            for p in ev["pruned_sessions"].as_array().into_iter().flatten() {
                assert!(!mnt
                    .join(vol)
                    .join(format!("{}.img", p["name"].as_str().unwrap()))
                    .exists());
            }
        }
        w.ok(&["umount", &mnt.display().to_string()]);
        assert_eq!(
            std::fs::read_dir(&mnt).unwrap().count(),
            0,
            "{name}: unmounted"
        );
    }
}

#[test]
fn read_only_tags_sparse_copy_and_damage() {
    if !can_run_privileged(&["/dev/fuse"]) {
        return;
    }
    let t = tmp();
    let ar = copy_fixture("h-tags", t.path());
    let w = Wyng::new(&ar, &t.path().join("meta"));
    let mnt = t.path().join("mnt");
    let _g = mount(&w, &mnt, &[]);
    let vol = mnt.join("tagged");
    let tagged: Vec<String> = std::fs::read_dir(vol.join("by-tag/keep"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(tagged.len(), 2, "{tagged:?}");
    for f in &tagged {
        assert_eq!(
            std::fs::read(vol.join("by-tag/keep").join(f)).unwrap(),
            std::fs::read(vol.join(f)).unwrap()
        );
    }
    // Read-only whatever the attempt.
    let latest = vol.join("latest.img");
    let erofs =
        |r: std::io::Result<()>| assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&latest)
            .map(|_| ()),
    );
    erofs(std::fs::File::create(vol.join("new.img")).map(|_| ()));
    erofs(std::fs::remove_file(&latest));
    erofs(std::fs::create_dir(vol.join("d")));
    let st = Command::new("truncate")
        .arg("-s0")
        .arg(&latest)
        .status()
        .unwrap();
    assert!(!st.success());
    // cp --sparse keeps holes.
    let copy = t.path().join("copy.img");
    assert!(Command::new("cp")
        .arg("--sparse=always")
        .arg(&latest)
        .arg(&copy)
        .status()
        .unwrap()
        .success());
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&latest).unwrap()
    );
    w.ok(&["umount", &mnt.display().to_string()]);

    // A damaged chunk: EIO for reads that touch it, the rest reads fine.
    let chunk = chunk_files(&ar).remove(0);
    let mut b = std::fs::read(&chunk).unwrap();
    let i = b.len() / 2;
    b[i] ^= 4;
    std::fs::write(&chunk, &b).unwrap();
    let _g2 = mount(&w, &mnt, &[]);
    let session = chunk
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let addr = u64::from_str_radix(&chunk.file_name().unwrap().to_string_lossy()[1..], 16).unwrap();
    let file = vol.join(format!("{session}.img"));
    let f = std::fs::File::open(&file).unwrap();
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let err = f.read_at(&mut buf, addr).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let size = f.metadata().unwrap().len();
    let other = if addr == 0 { size - 1 } else { 0 };
    f.read_at(&mut buf[..1], other).unwrap();
    let log = std::fs::read_to_string(t.path().join("meta/mount.log")).unwrap_or_default();
    assert!(
        log.contains(&chunk.file_name().unwrap().to_string_lossy().to_string()),
        "the log names the chunk: {log}"
    );
}

/// The use case: back up a disk image holding a filesystem, then loop-mount an old session from
/// the FUSE mount and read a file out of it.
#[test]
fn loop_mount_an_old_session_and_recover_a_file() {
    if !can_run_privileged(&["/dev/fuse"]) {
        return;
    }
    if Command::new("mkfs.ext4").arg("-V").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: mkfs.ext4 (e2fsprogs) is needed"
        );
        return;
    }
    let t = tmp();
    let img = t.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    assert!(Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .status()
        .unwrap()
        .success());
    // Put a file in the filesystem with debugfs (no loop mount needed for writing).
    let payload = t.path().join("payload.txt");
    std::fs::write(&payload, b"the file we will want back\n".repeat(1000)).unwrap();
    let st = Command::new("debugfs")
        .args(["-w", "-R"])
        .arg(format!("write {} payload.txt", payload.display()))
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let ar = t.path().join("archive");
    let w = Wyng::with_pass(&ar, &t.path().join("meta"), "loop mount passphrase");
    w.ok(&["arch-init", "--chunk-factor=1"]);
    let r = w.send("disk.img", &img, &[]);
    let first = r["session"].as_str().unwrap().to_string();
    // Later the file is deleted in the source; the old session still has it.
    let st = Command::new("debugfs")
        .args(["-w", "-R", "rm payload.txt"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(st.status.success());
    w.send("disk.img", &img, &[]);

    let mnt = t.path().join("mnt");
    let _g = mount(&w, &mnt, &[]);
    let session_file = mnt.join("disk.img").join(format!("{first}.img"));
    let l = attach_loop(&session_file, true);
    let dev = l.0.clone();
    let fsmnt = t.path().join("fs");
    std::fs::create_dir(&fsmnt).unwrap();
    let st = Command::new("mount")
        .args(["-o", "ro,noload"])
        .arg(&dev)
        .arg(&fsmnt)
        .status()
        .unwrap();
    assert!(st.success());
    let _fg = MountGuard(fsmnt.clone());
    assert_eq!(
        std::fs::read(fsmnt.join("payload.txt")).unwrap(),
        std::fs::read(&payload).unwrap()
    );
}

#[test]
fn foreground_mount_stops_on_sigterm_and_refuses_busy_mountpoints() {
    if !can_run_privileged(&["/dev/fuse"]) {
        return;
    }
    let t = tmp();
    let ar = copy_fixture("a-plain-zstd", t.path());
    let w = Wyng::new(&ar, &t.path().join("meta"));
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut child = w
        .cmd(&[
            "mount",
            &mnt.display().to_string(),
            "--foreground",
            "--volume=vol1",
        ])
        .spawn()
        .unwrap();
    let _g = MountGuard(mnt.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !mnt.join("vol1/latest.img").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "mount did not come up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A second mount on the same point, and a non-empty directory, are refused.
    let err = w.fails(&["mount", &mnt.display().to_string()], 7);
    assert!(err.contains("busy"), "{err}");
    let full = t.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    w.fails(&["mount", &full.display().to_string()], 7);
    // SIGTERM unmounts cleanly.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
    // Unknown volume: a clear error and nothing mounted.
    let err = w.fails(&["mount", &mnt.display().to_string(), "--volume=nosuch"], 2);
    assert!(err.contains("nosuch"), "{err}");
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
}

/// Many readers at once, at random offsets and sizes, across chunk boundaries: all correct.
#[test]
fn parallel_random_readers_get_correct_data() {
    if !can_run_privileged(&["/dev/fuse"]) {
        return;
    }
    let t = tmp();
    let ar = t.path().join("a");
    let w = Wyng::fresh(&ar, &t.path().join("meta"));
    let mut img = Image::new(11);
    img.random(6 << 20)
        .zeros(3 << 20)
        .text(5 << 20)
        .random(12345);
    let src = t.path().join("s.img");
    img.write(&src);
    w.send("v", &src, &[]);
    let mnt = t.path().join("mnt");
    let _g = mount(&w, &mnt, &["--cache=1M"]);
    let file = mnt.join("v/latest.img");
    let data = std::sync::Arc::new(img.data);
    std::thread::scope(|s| {
        for k in 0..8u64 {
            let (data, file) = (data.clone(), file.clone());
            s.spawn(move || {
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::open(&file).unwrap();
                let mut seed = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(k + 1);
                for _ in 0..150 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let off = (seed % data.len() as u64) as usize;
                    let len = ((seed >> 40) % 300_000) as usize + 1;
                    let end = (off + len).min(data.len());
                    let mut buf = vec![0u8; end - off];
                    f.read_exact_at(&mut buf, off as u64).unwrap();
                    assert!(
                        buf == data[off..end],
                        "reader {k}: wrong bytes at {off}+{}",
                        end - off
                    );
                }
            });
        }
    });
}

/// The mount follows the archive: a session sent while mounted appears and `latest.img`
/// follows it within seconds, while a file already open keeps reading the session it opened.
#[test]
fn a_session_sent_while_mounted_appears() {
    if !can_run_privileged(&["/dev/fuse"]) {
        return;
    }
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let t = tmp();
    let mut w = Wyng::fresh(&t.path().join("archive"), &t.path().join("meta"));
    let src = t.path().join("v.img");
    let mut one = Image::new(3);
    one.random(3 << 20);
    one.write(&src);
    w.send("vol", &src, &[]);
    w.env.push(("WYNG_MOUNT_REFRESH".into(), "0.3".into()));
    let mnt = t.path().join("mnt");
    let _g = mount(&w, &mnt, &[]);
    let old = std::fs::File::open(mnt.join("vol/latest.img")).unwrap();
    let first_target = std::fs::read_link(mnt.join("vol/latest.img")).unwrap();
    let mut two = Image::new(4);
    two.random(3 << 20);
    two.write(&src);
    let s2 = w.send("vol", &src, &[])["session"]
        .as_str()
        .unwrap()
        .to_string();
    let want = PathBuf::from(format!("{s2}.img"));
    let started = std::time::Instant::now();
    loop {
        let now = std::fs::read_link(mnt.join("vol/latest.img")).unwrap();
        if now == want {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 10,
            "latest.img still points at {now:?}, not {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_ne!(first_target, want);
    assert!(mnt.join("vol").join(&want).exists());
    // The new session reads back as sent; the file opened before reads the old one.
    let mut now = Vec::new();
    std::fs::File::open(mnt.join("vol/latest.img"))
        .unwrap()
        .read_to_end(&mut now)
        .unwrap();
    assert!(now == two.data, "the new latest.img");
    let mut before = vec![0u8; one.data.len()];
    old.read_exact_at(&mut before, 0).unwrap();
    assert!(before == one.data, "an open file keeps its session");
}

/// A prune under a running mount: a surviving session whose chunk files moved still reads
/// exactly (no EIO), and a file of the pruned session fails with ESTALE and a log line saying
/// it was pruned, not that the archive is damaged.
#[test]
fn a_prune_under_open_files() {
    if !can_run_privileged(&["/dev/fuse"]) {
        return;
    }
    use std::os::unix::fs::FileExt;
    let t = tmp();
    let meta = t.path().join("meta");
    let mut w = Wyng::fresh(&t.path().join("archive"), &meta);
    let src = t.path().join("v.img");
    let mut img = Image::new(9);
    img.random(4 << 20);
    img.write(&src);
    let s1 = w.send("vol", &src, &[])["session"]
        .as_str()
        .unwrap()
        .to_string();
    let v1 = img.data.clone();
    // The second session changes little: most of its chunks are files of the first.
    img.scribble(100_000, 70_000);
    img.write(&src);
    let s2 = w.send("vol", &src, &[])["session"]
        .as_str()
        .unwrap()
        .to_string();
    let v2 = img.data.clone();
    img.scribble(3 << 20, 10_000);
    img.write(&src);
    w.send("vol", &src, &[]);
    w.env.push(("WYNG_MOUNT_REFRESH".into(), "0.3".into()));
    let mnt = t.path().join("mnt");
    let _g = mount(&w, &mnt, &[]);
    let f1 = std::fs::File::open(mnt.join(format!("vol/{s1}.img"))).unwrap();
    let f2 = std::fs::File::open(mnt.join(format!("vol/{s2}.img"))).unwrap();
    let mut head = vec![0u8; 4096];
    f1.read_exact_at(&mut head, 0).unwrap();
    f2.read_exact_at(&mut head, 0).unwrap();
    // Merging the first session into the second moves its chunk files.
    w.ok(&["prune", "vol", &format!("--session={}", &s1[2..]), "-u"]);
    let mut all = vec![0u8; v2.len()];
    f2.read_exact_at(&mut all, 0).unwrap();
    assert!(
        all == v2,
        "the surviving session reads exactly after the prune"
    );
    let mut rest = vec![0u8; 1 << 20];
    let e = f1.read_exact_at(&mut rest, 2 << 20).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}");
    let _ = v1;
    let log = std::fs::read_to_string(meta.join("mount.log")).unwrap();
    assert!(log.contains("was pruned"), "{log}");
    assert!(!log.contains("archive damaged"), "{log}");
    // The next refresh (every 0.3 s here) drops the pruned session from the tree; a loaded
    // machine may take a while to run it, so wait for it rather than for a fixed time.
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        !mnt.join(format!("vol/{s1}.img")).exists()
    });
    assert!(gone, "the pruned session leaves the tree at a refresh");
}

fn is_mounted(mnt: &Path) -> bool {
    let abs = mnt.canonicalize().unwrap_or(mnt.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(abs.to_str().unwrap()))
}

/// Whether a process runs (an exited one not yet reaped does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !matches!(
            s.rsplit_once(')')
                .map(|(_, t)| t.trim_start().as_bytes()[0]),
            Some(b'Z' | b'X')
        )
    })
}

/// The pid serving the wyng mount at `mnt` (its source in the mount table is `wyng:<pid>`).
fn server_pid(mnt: &Path) -> i32 {
    let abs = mnt.canonicalize().unwrap();
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = table
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(abs.to_str().unwrap()))
        .expect("mounted");
    let right = line.split_once(" - ").unwrap().1;
    right.split(' ').nth(1).unwrap()["wyng:".len()..]
        .parse()
        .unwrap()
}

/// The a-plain-zstd fixture, mounted at `<tmp>/mnt`.
fn mounted_fixture() -> (tempfile::TempDir, Wyng, PathBuf, MountGuard) {
    let t = tmp();
    let ar = copy_fixture("a-plain-zstd", t.path());
    let w = Wyng::new(&ar, &t.path().join("meta"));
    let mnt = t.path().join("mnt");
    let g = mount(&w, &mnt, &[]);
    (t, w, mnt, g)
}

/// Issue 16, finding 6: `umount` returns only once the old mount's process is gone, and a
/// process never unmounts what it did not mount: `mount; umount; mount` leaves the second
/// mount up, every time.
#[test]
fn umount_then_mount_again_keeps_the_new_mount() {
    if !can_run_privileged(&["/dev/fuse"]) {
        return;
    }
    let (_t, w, mnt, _g) = mounted_fixture();
    let m = mnt.display().to_string();
    for round in 0..8 {
        let old = server_pid(&mnt);
        w.ok(&["umount", &m]);
        assert!(
            !alive(old),
            "round {round}: umount returned before the mount process {old} exited"
        );
        w.ok(&["mount", &m]);
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(is_mounted(&mnt), "round {round}: the new mount vanished");
        assert!(mnt.join("vol1/latest.img").exists(), "round {round}");
    }
    // Unmounted from outside: the process exits without touching the mountpoint.
    let old = server_pid(&mnt);
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    w.ok(&["mount", &m]);
    let started = std::time::Instant::now();
    while alive(old) && started.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(is_mounted(&mnt), "the old process unmounted the new mount");
    w.ok(&["umount", &m]);
    assert!(!is_mounted(&mnt));
}

/// Issue 16, finding 6: after the mount process is killed (SIGKILL), `wyng mount` on that
/// mountpoint clears the dead mount and mounts; `wyng umount` works on a dead mount too.
#[test]
fn a_killed_mount_is_cleared_by_the_next_mount() {
    if !can_run_privileged(&["/dev/fuse"]) {
        return;
    }
    let (_t, w, mnt, _g) = mounted_fixture();
    let m = mnt.display().to_string();
    let kill = |pid: i32| {
        assert!(Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success());
        while alive(pid) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    kill(server_pid(&mnt));
    // The kernel answers ECONNABORTED at first, ENOTCONN after.
    let err = std::fs::read_dir(&mnt).unwrap_err();
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED)
        ),
        "{err}"
    );
    let o = w.run(&["mount", &m]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("removed a dead wyng mount"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(mnt.join("vol1/latest.img").exists());
    kill(server_pid(&mnt));
    w.ok(&["umount", &m]);
    assert!(!is_mounted(&mnt));
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
}
