//! `wyng files` and `wyng mount --files` on images made by the real tools (mke2fs -d,
//! mkfs.vfat + mcopy, mkntfs + ntfscp, sfdisk, mkfs.xfs, cryptsetup), nothing mounted by the
//! kernel: every listing, restore, find and diff is compared with the directory the image was
//! built from, for every session. Skips where a tool is missing, except under CI=true.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// Whether every tool is installed (under CI=true they must be).
fn have(tools: &[&str]) -> bool {
    let missing: Vec<&&str> = tools
        .iter()
        .filter(|t| {
            !["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(t).exists())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: missing {missing:?}"
    );
    eprintln!("skipping: needs {missing:?}");
    false
}

fn run(c: &mut Command) {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn sh(cmd: &str, args: &[&str]) {
    run(Command::new(cmd).args(args));
}

fn touch(p: &Path, secs: i64) {
    let t = format!("@{secs}");
    sh("touch", &["-h", "-d", &t, p.to_str().unwrap()]);
}

/// A source tree; `v` changes it as a second session would see it.
fn tree(root: &Path, v: u32) {
    let _ = std::fs::remove_dir_all(root);
    let d = |p: &str| {
        let p = root.join(p);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let f = |p: &str, data: &[u8], mode: u32, secs: i64| {
        let p = root.join(p);
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        touch(&p, secs);
    };
    d("etc");
    d(if v == 1 {
        "home/alice/docs"
    } else {
        "home/alice/papers"
    });
    d("empty");
    f(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n",
        0o644,
        1_600_000_000,
    );
    f("etc/shadow", b"root:*:1::::::\n", 0o640, 1_600_000_100);
    let docs = if v == 1 {
        "home/alice/docs"
    } else {
        "home/alice/papers"
    };
    f(
        &format!("{docs}/thesis.txt"),
        &vec![b'x'; 70_000],
        0o600,
        1_600_000_200,
    );
    let mut big = Image::new(7);
    big.random(300_000);
    f("home/alice/big.bin", &big.data, 0o644, 1_600_000_300);
    if v == 1 {
        f(
            "home/alice/old.txt",
            b"to be deleted\n",
            0o644,
            1_600_000_400,
        );
        f("etc/motd", b"hello\n", 0o644, 1_600_000_500);
    } else {
        f("home/alice/new.txt", b"added later\n", 0o644, 1_600_000_600);
        f("etc/motd", b"hello again\n", 0o644, 1_600_000_700);
    }
    // A sparse file: 4 MiB with one block of data in the middle.
    let sparse = root.join("home/sparse.img");
    let fh = std::fs::File::create(&sparse).unwrap();
    fh.set_len(4 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&fh, b"middle", 2 << 20).unwrap();
    drop(fh);
    touch(&sparse, 1_600_000_800);
    std::os::unix::fs::symlink("../etc/passwd", root.join("home/link")).unwrap();
    touch(&root.join("home/link"), 1_600_000_900);
    for (p, secs) in [
        ("etc", 1),
        ("home/alice", 2),
        ("home", 3),
        ("empty", 4),
        (docs, 5),
    ] {
        touch(&root.join(p), 1_600_001_000 + secs);
    }
}

/// Every entry under `root`: relative path -> (type, mode, size, mtime, link target).
fn describe(root: &Path) -> BTreeMap<String, (char, u32, u64, i64, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "lost+found" {
                continue;
            }
            let t = if m.is_dir() {
                stack.push(p.clone());
                'd'
            } else if m.file_type().is_symlink() {
                'l'
            } else {
                '-'
            };
            let target = if t == 'l' {
                std::fs::read_link(&p)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            } else {
                String::new()
            };
            let size = if t == '-' { m.len() } else { 0 };
            let mtime = if t == 'd' { 0 } else { m.mtime() };
            out.insert(rel, (t, m.mode() & 0o7777, size, mtime, target));
        }
    }
    out
}

/// Files' contents under `root`, by relative path, as digests (short failure messages).
fn contents(root: &Path) -> BTreeMap<String, String> {
    files_under(root)
        .into_iter()
        .filter(|p| {
            !std::fs::symlink_metadata(p)
                .unwrap()
                .file_type()
                .is_symlink()
        })
        .map(|p| {
            (
                p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
                sha256_file(&p),
            )
        })
        .collect()
}

fn ext4(src: &Path, img: &Path, mib: u64) {
    let _ = std::fs::remove_file(img);
    sh(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-d",
            src.to_str().unwrap(),
            img.to_str().unwrap(),
            &format!("{mib}M"),
        ],
    );
}

fn fat(src: &Path, img: &Path, mib: u64) {
    let _ = std::fs::remove_file(img);
    sh(
        "mkfs.vfat",
        &["-C", img.to_str().unwrap(), &(mib * 1024).to_string()],
    );
    let entries: Vec<String> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    let mut c = Command::new("mcopy");
    c.env("MTOOLS_SKIP_CHECK", "1")
        .args(["-s", "-p", "-m", "-i", img.to_str().unwrap()])
        .args(&entries)
        .arg("::/");
    run(&mut c);
}

/// A GPT disk of `mib` MiB with partitions of the given sizes (MiB, from 1 MiB on), each
/// filled from its image.
fn gpt_disk(disk: &Path, mib: u64, parts: &[(u64, &Path)]) {
    let _ = std::fs::remove_file(disk);
    std::fs::File::create(disk)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let mut script = String::from("label: gpt\n");
    let mut start = 1u64;
    for (size, _) in parts {
        script.push_str(&format!(
            "start={}MiB, size={}MiB, type=linux\n",
            start, size
        ));
        start += size;
    }
    sfdisk(disk, &script);
    let mut start = 1u64;
    for (size, img) in parts {
        sh(
            "dd",
            &[
                &format!("if={}", img.display()),
                &format!("of={}", disk.display()),
                "bs=1M",
                &format!("seek={start}"),
                "conv=notrunc,sparse",
                "status=none",
            ],
        );
        start += size;
    }
}

fn sfdisk(disk: &Path, script: &str) {
    use std::io::Write;
    let mut c = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

struct Set {
    _t: tempfile::TempDir,
    dir: PathBuf,
    w: Wyng,
}

fn set() -> Set {
    let t = tmp();
    let dir = t.path().to_path_buf();
    let w = Wyng::fresh(&dir.join("archive"), &dir.join("meta"));
    Set { _t: t, dir, w }
}

/// `files ls -R --json` of `path` as `describe` shows a tree (paths relative to `path`).
fn listed(
    w: &Wyng,
    vol: &str,
    session: &str,
    path: &str,
) -> BTreeMap<String, (char, u32, u64, i64, String)> {
    let s = format!("--session={session}");
    let j = w.json(&["files", "ls", vol, path, "-R", "-l", &s]);
    let mut out = BTreeMap::new();
    for e in j.as_array().unwrap() {
        let p = e["path"].as_str().unwrap();
        let rel = p
            .strip_prefix(path.trim_end_matches('/'))
            .unwrap()
            .trim_start_matches('/')
            .to_string();
        if rel.starts_with("lost+found") {
            continue;
        }
        let t = match e["type"].as_str().unwrap() {
            "dir" => 'd',
            "symlink" => 'l',
            _ => '-',
        };
        let mode = u32::from_str_radix(e["mode"].as_str().unwrap(), 8).unwrap();
        let size = if t == '-' {
            e["size"].as_u64().unwrap()
        } else {
            0
        };
        let mtime = if t == 'd' {
            0
        } else {
            e["mtime"].as_i64().unwrap()
        };
        let target = e["target"].as_str().unwrap_or("").to_string();
        out.insert(rel, (t, mode, size, mtime, target));
    }
    out
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: two sessions, every command compared"
)]
fn gpt_ext4_and_fat_two_sessions_ls_get_cat_find_diff() {
    if !have(&[
        "mke2fs",
        "mkfs.vfat",
        "mcopy",
        "sfdisk",
        "mkfs.xfs",
        "cryptsetup",
    ]) {
        return;
    }
    let s = set();
    let (src, dir) = (s.dir.join("src"), &s.dir);
    let disk = dir.join("disk.img");
    let xfs = dir.join("xfs.img");
    std::fs::File::create(&xfs)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    sh("mkfs.xfs", &["-q", "-f", xfs.to_str().unwrap()]);
    let luks = dir.join("luks.img");
    std::fs::File::create(&luks)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    std::fs::write(dir.join("key"), "secret").unwrap();
    sh(
        "cryptsetup",
        &[
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            dir.join("key").to_str().unwrap(),
            luks.to_str().unwrap(),
        ],
    );
    let mut sessions = Vec::new();
    for v in 1..=2 {
        tree(&src, v);
        ext4(&src, &dir.join("ext4.img"), 32);
        fat(&src, &dir.join("fat.img"), 16);
        gpt_disk(
            &disk,
            400,
            &[
                (32, &dir.join("ext4.img")),
                (16, &dir.join("fat.img")),
                (300, &xfs),
                (20, &luks),
            ],
        );
        s.w.send("vm", &disk, &[]);
        sessions.push(session_names(&s.w, "vm").last().unwrap().clone());
        let copy = dir.join(format!("src{v}"));
        sh("cp", &["-a", src.to_str().unwrap(), copy.to_str().unwrap()]);
    }
    for (i, sess) in sessions.iter().enumerate() {
        let src = dir.join(format!("src{}", i + 1));
        let sarg = format!("--session={sess}");
        // The partitions, named.
        let parts = s.w.json(&["files", "ls", "vm", &sarg]);
        let fs: Vec<&str> = parts
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["filesystem"].as_str().unwrap())
            .collect();
        assert_eq!(
            fs,
            ["ext2/3/4", "FAT", "XFS", "LUKS (encrypted)"],
            "{parts}"
        );
        // ext4: listing and restore equal the source (content, mode, mtime, symlinks).
        assert_eq!(
            listed(&s.w, "vm", sess, "/p1"),
            describe(&src),
            "session {sess}"
        );
        let out = dir.join(format!("out{i}"));
        s.w.ok(&[
            "files",
            "get",
            "vm",
            "/p1",
            &format!("--to={}", out.display()),
            &sarg,
            "-q",
        ]);
        let got = out.join("p1");
        assert_eq!(describe(&got), describe(&src));
        assert_eq!(contents(&got), contents(&src));
        // Sparse stays sparse.
        let sp = std::fs::metadata(got.join("home/sparse.img")).unwrap();
        assert!(sp.blocks() * 512 < 64 << 10, "{} blocks", sp.blocks());
        // cat
        let cat = s.w.ok(&["files", "cat", "vm", "/p1/etc/motd", &sarg]);
        assert_eq!(cat.as_bytes(), std::fs::read(src.join("etc/motd")).unwrap());
        // FAT: the same files (FAT keeps no modes, links or holes; mtimes to 2 s).
        let outf = dir.join(format!("outf{i}"));
        s.w.ok(&[
            "files",
            "get",
            "vm",
            "/p2/etc",
            "/p2/home",
            &format!("--to={}", outf.display()),
            &sarg,
            "-q",
        ]);
        // mcopy stored the link as a copy of its target.
        let mut want = contents(&src);
        want.insert("home/link".into(), sha256_file(&src.join("etc/passwd")));
        assert_eq!(contents(&outf), want);
        let m = std::fs::metadata(outf.join("etc/passwd")).unwrap().mtime();
        assert!((m - 1_600_000_000).abs() <= 2, "FAT mtime {m}");
        // The unreadable ones, in one line each.
        let e = s.w.fails(&["files", "ls", "vm", "/p3", &sarg], 1);
        assert!(e.contains("XFS") && e.contains("docs/mount.md"), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        let e = s.w.fails(&["files", "ls", "vm", "/p4/x", &sarg], 1);
        assert!(e.contains("LUKS"), "{e}");
    }
    // find: both sessions, with what changed.
    let j = s.w.json(&["files", "find", "vm", "/p1/etc/*"]);
    let found: Vec<(String, String, String)> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["session"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("S_")
                    .to_string(),
                m["path"].as_str().unwrap().to_string(),
                m["since"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let (a, b) = (&sessions[0], &sessions[1]);
    for (sess, path, since) in [
        (a, "/p1/etc/motd", "new"),
        (a, "/p1/etc/passwd", "new"),
        (b, "/p1/etc/motd", "changed"),
        (b, "/p1/etc/passwd", "same"),
        (b, "/p1/etc/shadow", "same"),
    ] {
        assert!(
            found.contains(&(sess.clone(), path.to_string(), since.to_string())),
            "{sess} {path} {since} not in {found:?}"
        );
    }
    let only_new = s.w.ok(&[
        "files",
        "find",
        "vm",
        "new.txt",
        &format!("--session={b},{b}"),
    ]);
    assert_eq!(
        only_new.lines().count(),
        2,
        "in p1 and p2 of that session only: {only_new}"
    );
    // diff: the renamed directory, the added, deleted and modified files.
    let d = s.w.json(&[
        "files",
        "diff",
        "vm",
        "/p1",
        &format!("--session={a},{b}"),
        "--checksum",
    ]);
    let changes: Vec<(String, String)> = d
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap().into(),
                c["path"].as_str().unwrap().into(),
            )
        })
        .collect();
    for want in [
        ("removed", "/p1/home/alice/docs"),
        ("removed", "/p1/home/alice/docs/thesis.txt"),
        ("added", "/p1/home/alice/papers"),
        ("added", "/p1/home/alice/papers/thesis.txt"),
        ("removed", "/p1/home/alice/old.txt"),
        ("added", "/p1/home/alice/new.txt"),
        ("changed", "/p1/etc/motd"),
    ] {
        assert!(
            changes.contains(&(want.0.into(), want.1.into())),
            "{want:?} not in {changes:?}"
        );
    }
    assert!(
        !changes
            .iter()
            .any(|(_, p)| p == "/p1/etc/passwd" || p == "/p1/home/alice/big.bin"),
        "{changes:?}"
    );
}

#[test]
fn mbr_logical_partition_ntfs() {
    if !have(&["mkntfs", "ntfscp", "sfdisk"]) {
        return;
    }
    let s = set();
    let dir = &s.dir;
    let ntfs = dir.join("ntfs.img");
    std::fs::File::create(&ntfs)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    sh("mkntfs", &["-q", "-F", "-f", ntfs.to_str().unwrap()]);
    let mut data = Image::new(3);
    data.text(200_000);
    data.write(&dir.join("report.txt"));
    std::fs::write(dir.join("small.ini"), "[a]\nb=c\n").unwrap();
    for f in ["report.txt", "small.ini"] {
        sh(
            "ntfscp",
            &[
                "-q",
                ntfs.to_str().unwrap(),
                dir.join(f).to_str().unwrap(),
                f,
            ],
        );
    }
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    sfdisk(&disk, "label: dos\nstart=1MiB, size=4MiB, type=83\nstart=6MiB, size=30MiB, type=5\nstart=7MiB, size=17MiB, type=7\n");
    // The logical partition starts 1 MiB into the extended one.
    sh(
        "dd",
        &[
            &format!("if={}", ntfs.display()),
            &format!("of={}", disk.display()),
            "bs=1M",
            "seek=7",
            "conv=notrunc",
            "status=none",
        ],
    );
    s.w.send("win", &disk, &[]);
    let ls = s.w.ok(&["files", "ls", "win"]);
    assert!(
        ls.contains("p5") && ls.contains("NTFS") && ls.contains("p2"),
        "{ls}"
    );
    let names = s.w.ok(&["files", "ls", "win", "/p5"]);
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(
        names,
        ["report.txt", "small.ini"],
        "metafiles and DOS names are not listed"
    );
    assert_eq!(
        s.w.ok(&["files", "cat", "win", "/p5/small.ini"]),
        "[a]\nb=c\n"
    );
    let out = dir.join("out");
    s.w.ok(&[
        "files",
        "get",
        "win",
        "/p5/report.txt",
        &format!("--to={}", out.display()),
        "-q",
    ]);
    assert_eq!(std::fs::read(out.join("report.txt")).unwrap(), data.data);
    // Case-insensitive lookup, as NTFS does.
    assert_eq!(
        s.w.ok(&["files", "cat", "win", "/p5/SMALL.INI"]),
        "[a]\nb=c\n"
    );
    let e = s.w.fails(&["files", "cat", "win", "/p5/missing"], 2);
    assert!(e.contains("no such file"), "{e}");
}

#[test]
fn hostile_names_and_links_write_nothing_outside_the_target() {
    if !have(&["mke2fs"]) {
        return;
    }
    let s = set();
    let dir = &s.dir;
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    for n in ["a\nb", "esc\x1b[2Jx", "-rf", "..."] {
        std::fs::write(src.join(n), n).unwrap();
    }
    std::fs::write(src.join("victim"), "from the image").unwrap();
    std::fs::write(src.join("d/setuid"), "x").unwrap();
    std::fs::set_permissions(
        src.join("d/setuid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../tmp", src.join("up")).unwrap();
    // A directory named like a link the image also holds: the restore never follows it.
    std::os::unix::fs::symlink("../outside", src.join("d/via")).unwrap();
    sh("mkfifo", &[src.join("fifo").to_str().unwrap()]);
    let img = dir.join("fs.img");
    ext4(&src, &img, 8);
    s.w.send("h", &img, &[]);
    // Listing escapes control characters.
    let ls = s.w.ok(&["files", "ls", "h", "/"]);
    assert!(
        ls.contains("a\\x0ab") && ls.contains("esc\\x1b[2Jx"),
        "{ls}"
    );
    assert!(!ls.contains('\x1b'));
    // The target holds a link to outside where the image has a file named "victim".
    let outside = dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep"), "mine").unwrap();
    let to = dir.join("to");
    std::fs::create_dir_all(&to).unwrap();
    std::os::unix::fs::symlink(outside.join("keep"), to.join("victim")).unwrap();
    let before = snapshot(&outside);
    let o =
        s.w.run(&["files", "get", "h", "/", &format!("--to={}", to.display())]);
    assert_eq!(
        o.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("exists"), "{err}");
    assert!(
        err.contains("skipped /a\\x0ab") && err.contains("FIFO"),
        "{err}"
    );
    assert_eq!(snapshot(&outside), before);
    assert_eq!(
        std::fs::read_link(to.join("victim")).unwrap(),
        outside.join("keep")
    );
    // Links restored as links, never followed; no set-id bits.
    assert_eq!(
        std::fs::read_link(to.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        std::fs::read_link(to.join("d/via")).unwrap(),
        Path::new("../outside")
    );
    let m = std::fs::metadata(to.join("d/setuid")).unwrap().mode();
    assert_eq!(m & 0o7777, 0o755);
    assert!(!to.join("fifo").exists());
    assert!(!to.join("a\nb").exists());
    // --overwrite replaces the link itself, never what it points at.
    s.w.ok(&[
        "files",
        "get",
        "h",
        "/victim",
        &format!("--to={}", to.display()),
        "--overwrite",
        "-q",
    ]);
    assert_eq!(
        std::fs::read_to_string(to.join("victim")).unwrap(),
        "from the image"
    );
    assert_eq!(snapshot(&outside), before);
    // Every file written is under the target.
    for f in files_under(dir) {
        let rel = f.strip_prefix(dir).unwrap();
        assert!(
            ["to", "outside", "src", "fs.img", "archive", "meta"]
                .iter()
                .any(|p| rel.starts_with(p)),
            "{} written outside",
            f.display()
        );
    }
}

#[test]
fn damaged_guest_metadata_and_damaged_chunks_are_errors_not_panics() {
    if !have(&["mke2fs", "debugfs"]) {
        return;
    }
    let s = set();
    let dir = &s.dir;
    let src = dir.join("src");
    tree(&src, 1);
    let img = dir.join("fs.img");
    ext4(&src, &img, 16);
    // Flip the bytes of /etc's directory block (its checksum fails): that directory is
    // an error, the rest reads.
    let o = Command::new("debugfs")
        .args(["-R", "blocks /etc"])
        .arg(&img)
        .output()
        .unwrap();
    let block: u64 = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&[0xA5; 64], block * 4096 + 40).unwrap();
    }
    s.w.send("c", &img, &[]);
    let e = s.w.fails(&["files", "ls", "c", "/etc"], 1);
    assert!(e.contains("/etc"), "{e}");
    assert_eq!(
        s.w.ok(&["files", "cat", "c", "/home/alice/old.txt"]),
        "to be deleted\n"
    );
    let e = s.w.fails(&["files", "ls", "c", "/", "-R"], 1);
    assert!(e.contains("/etc"), "{e}");
    // A damaged chunk of the archive: exit 1 naming the archive's damage, never its bytes.
    for c in chunk_files(&dir.join("archive")) {
        let mut b = std::fs::read(&c).unwrap();
        let n = b.len();
        b[n / 2] ^= 0xff;
        std::fs::write(&c, b).unwrap();
    }
    let e = s.w.fails(&["files", "cat", "c", "/home/alice/big.bin"], 1);
    assert!(e.contains("damaged"), "{e}");
}

#[test]
fn mount_files_equals_the_sources() {
    if !have(&["mke2fs", "sfdisk"]) || !can_run_privileged(&["/dev/fuse"]) {
        return;
    }
    let s = set();
    let dir = &s.dir;
    let src = dir.join("src");
    let mut sessions = Vec::new();
    for v in 1..=2 {
        tree(&src, v);
        ext4(&src, &dir.join("ext4.img"), 32);
        gpt_disk(&dir.join("disk.img"), 40, &[(32, &dir.join("ext4.img"))]);
        s.w.send("vm", &dir.join("disk.img"), &[]);
        sessions.push(session_names(&s.w, "vm").last().unwrap().clone());
        sh(
            "cp",
            &[
                "-a",
                src.to_str().unwrap(),
                dir.join(format!("src{v}")).to_str().unwrap(),
            ],
        );
    }
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    s.w.ok(&["mount", mnt.to_str().unwrap(), "--files"]);
    let _g = MountGuard(mnt.clone());
    for (i, sess) in sessions.iter().enumerate() {
        let root = mnt.join("vm").join(format!("S_{sess}.files/p1"));
        let o = Command::new("diff")
            .args(["-r", "--no-dereference", "-x", "lost+found"])
            .arg(dir.join(format!("src{}", i + 1)))
            .arg(&root)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "diff -r: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        let m = std::fs::symlink_metadata(root.join("etc/shadow")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o640);
        assert_eq!(m.mtime(), 1_600_000_100);
    }
    assert_eq!(
        std::fs::read_link(mnt.join("vm/latest.files")).unwrap(),
        PathBuf::from(format!("S_{}.files", sessions[1]))
    );
    assert!(std::fs::write(mnt.join("vm/latest.files/p1/etc/new"), "x").is_err());
    s.w.ok(&["umount", mnt.to_str().unwrap()]);
}

/// ext4-view 1.0 panics reading a file whose block map stops early once a read has seeked
/// past the stop (here an indirect block numbered past the end of the filesystem, as debugfs
/// sets it): caught, that read is an error (EIO in the mount), the rest is served, and no
/// panic message reaches the user or the mount's log.
#[test]
fn a_reader_panic_is_a_read_error_and_prints_nothing() {
    if !have(&["mke2fs", "debugfs"]) || !can_run_privileged(&["/dev/fuse"]) {
        return;
    }
    let s = set();
    let dir = &s.dir;
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), vec![b'x'; 40 << 10]).unwrap();
    std::fs::write(src.join("ok"), "fine\n").unwrap();
    let img = dir.join("fs.img");
    sh(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext2",
            "-b",
            "1024",
            "-d",
            src.to_str().unwrap(),
            img.to_str().unwrap(),
            "1M",
        ],
    );
    sh(
        "debugfs",
        &[
            "-w",
            "-R",
            "sif /f block[IND] 999999",
            img.to_str().unwrap(),
        ],
    );
    s.w.send("e", &img, &[]);
    let e = s.w.fails(&["files", "cat", "e", "/f"], 1);
    assert!(e.contains("/f") && !e.contains("panicked"), "{e}");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    s.w.ok(&["mount", mnt.to_str().unwrap(), "--files"]);
    let _g = MountGuard(mnt.clone());
    let f = std::fs::File::open(mnt.join("e/latest.files/f")).unwrap();
    for _ in 0..2 {
        let err = std::os::unix::fs::FileExt::read_at(&f, &mut [0u8; 1024], 20 << 10)
            .expect_err("a read past the block map's stop");
        assert_eq!(err.raw_os_error(), Some(5), "EIO: {err}");
    }
    assert_eq!(
        std::fs::read_to_string(mnt.join("e/latest.files/ok")).unwrap(),
        "fine\n"
    );
    drop(f);
    s.w.ok(&["umount", mnt.to_str().unwrap()]);
    let log = std::fs::read_to_string(dir.join("meta/mount.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}
