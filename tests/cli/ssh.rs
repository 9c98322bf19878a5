//! Remote destinations against a real, private sshd on 127.0.0.1 (throwaway host and user keys,
//! its own config, stopped at the end), and `qubes://` through a fake `qvm-run` that runs the
//! remote side locally. Skips where sshd is missing, except under CI=true.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

pub(crate) struct Sshd {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Our sshd and the connection processes it forked: nothing else.
        for pid in children(self.child.id()) {
            // SAFETY: signalling processes we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if ppid == Some(pid) {
                out.push(p);
            }
        }
    }
    out
}

impl Sshd {
    pub(crate) fn start() -> Option<Sshd> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !can_run_privileged(&["/usr/sbin/sshd"]) {
            return None;
        }
        let dir = tmp();
        let d = dir.path();
        for k in ["host", "user"] {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(k))
                .status()
                .unwrap();
            assert!(st.success());
        }
        std::fs::copy(d.join("user.pub"), d.join("authorized_keys")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::create_dir_all("/run/sshd").unwrap();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {h}\nPidFile {p}\nAuthorizedKeysFile {a}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nLogLevel ERROR\nMaxSessions 50\nMaxStartups 50\n",
                h = d.join("host").display(),
                p = d.join("sshd.pid").display(),
                a = d.join("authorized_keys").display(),
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("ssh_config"),
            format!(
                "Host *\n  IdentityFile {}\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n",
                d.join("user").display()
            ),
        )
        .unwrap();
        let child = Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Sshd { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(s)
    }

    pub(crate) fn wyng(&self, remote: &Path, pass: Option<&str>) -> Wyng {
        let meta = self.dir.path().join(format!(
            "meta-{}",
            remote.file_name().unwrap().to_string_lossy()
        ));
        let mut w = Wyng::maybe_pass(Path::new("/unused"), &meta, pass);
        w.dest = format!("ssh://root@127.0.0.1:{}{}", self.port, remote.display());
        w.extra = vec![format!(
            "--opt-ssh=-F {}",
            self.dir.path().join("ssh_config").display()
        )];
        w
    }

    /// Runs `c`, and from `after` on drops its connections again and again until it ends (so a
    /// fast machine cannot finish in between); returns how it ended.
    pub(crate) fn run_cut_off(&self, mut c: Command, after: Duration) -> std::process::Output {
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        while child.try_wait().unwrap().is_none() {
            self.cut_links();
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().unwrap()
    }

    /// Drops every connection to this sshd, as a network failure would.
    fn cut_links(&self) {
        for pid in children(self.child.id()) {
            // SAFETY: signalling processes our sshd forked.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn history(w: &Wyng, t: &Path) -> Vec<(String, String)> {
    let src = t.join("src.img");
    let mut img = Image::new(5);
    img.random(3 << 20).zeros(2 << 20).text(1 << 20);
    let mut recorded = Vec::new();
    for step in 0..3 {
        match step {
            1 => {
                img.scribble(100_000, 50_000);
            }
            2 => {
                img.random(700_000);
            }
            _ => {}
        }
        img.write(&src);
        let r = w.send("disk", &src, &[]);
        recorded.push((r["session"].as_str().unwrap().to_string(), img.sha256()));
    }
    recorded
}

fn round_trip(sshd: &Sshd, pass: Option<&str>) {
    let t = tmp();
    let remote = t.path().join("remote-archive");
    let w = sshd.wyng(&remote, pass).named_sessions();
    w.init(&["--chunk-factor=1"]);
    let mut recorded = history(&w, t.path());
    let list = w.json(&["list"]);
    assert_eq!(
        list["volumes"]["disk"]["sessions"]
            .as_object()
            .unwrap()
            .len(),
        3
    );
    let out = t.path().join("out.img");
    for (s, sha) in &recorded {
        w.receive("disk", Some(s), &out);
        assert_eq!(&sha256_file(&out), sha);
    }
    w.ok(&["verify", "disk", "-q"]);
    // Dedup over ssh: the copy's chunks arrive as hard-link members of the tar stream.
    let src = t.path().join("src.img");
    let r = w.send("copy", &src, &["--dedup"]);
    assert!(r["chunks_linked"].as_u64().unwrap() > 10, "{r}");
    w.receive("copy", None, &out);
    assert_eq!(sha256_file(&out), recorded.last().unwrap().1);
    // Mount over ssh.
    if Path::new("/dev/fuse").exists() {
        let mnt = t.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        w.ok(&["mount", &mnt.display().to_string()]);
        let sums: Vec<String> = recorded
            .iter()
            .map(|(s, _)| sha256_file(&mnt.join(format!("disk/{s}.img"))))
            .collect();
        w.ok(&["umount", &mnt.display().to_string()]);
        for ((_, want), got) in recorded.iter().zip(sums) {
            assert_eq!(want, &got);
        }
    }
    // The free space `send --autoprune=on` goes by, read over ssh (`df`), is the filesystem's.
    let ssh_dest = wyng::dest::open(
        &w.dest,
        &wyng::dest::DestOptions {
            ssh_opts: Some(vec![
                "-F".into(),
                sshd.dir.path().join("ssh_config").display().to_string(),
            ]),
            ..Default::default()
        },
    )
    .unwrap();
    let over_ssh = ssh_dest.free_space().unwrap().expect("df over ssh");
    let here = wyng::dest::open(
        &format!("file:{}", remote.display()),
        &wyng::dest::DestOptions::default(),
    )
    .unwrap()
    .free_space()
    .unwrap()
    .unwrap();
    assert!(over_ssh.abs_diff(here) < 256 << 20, "{over_ssh} vs {here}");
    // A merge's moves go over in one script: a missing source (moved by an interrupted run)
    // is skipped, a name with a space or quote survives the shell.
    std::fs::create_dir_all(remote.join("mv/a b")).unwrap();
    std::fs::write(remote.join("mv/a b/it's"), b"moved").unwrap();
    std::fs::write(remote.join("mv/gone"), b"x").unwrap();
    std::fs::create_dir_all(remote.join("mv/c")).unwrap();
    use wyng::dest::Move;
    ssh_dest
        .apply_moves(&[
            Move::Rename {
                from: "mv/a b/it's".into(),
                to: "mv/c/it's".into(),
            },
            Move::Rename {
                from: "mv/never".into(),
                to: "mv/c/never".into(),
            },
            Move::Remove("mv/gone".into()),
        ])
        .unwrap();
    assert_eq!(std::fs::read(remote.join("mv/c/it's")).unwrap(), b"moved");
    assert!(!remote.join("mv/c/never").exists() && !remote.join("mv/gone").exists());
    std::fs::remove_dir_all(remote.join("mv")).unwrap();
    // prune and delete through the remote shell: the journaled protocol over ssh. The prune
    // is killed after its moves, before finishing: the next write command (delete) finishes it,
    // running the moves again (every source is gone by then, and skipped).
    let oldest = recorded.remove(0);
    let o = w
        .cmd(&[
            "prune",
            "disk",
            &format!("--session={}", &oldest.0[2..]),
            "-u",
        ])
        .env("WYNG_FAILPOINT", "merge-moved")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{o:?}");
    w.ok(&["delete", "copy", "-u"]);
    let list = w.json(&["list"]);
    let vols = list["volumes"].as_object().unwrap();
    assert_eq!(vols.keys().collect::<Vec<_>>(), ["disk"], "{list}");
    assert_eq!(vols["disk"]["sessions"].as_object().unwrap().len(), 2);
    for (s, sha) in &recorded {
        w.receive("disk", Some(s), &out);
        assert_eq!(&sha256_file(&out), sha);
    }
    if let Some(report) = check_strict_with(&remote, pass) {
        assert_eq!(checker_hashes(&report, "disk"), recorded);
    }
}

#[test]
fn full_round_trip_over_ssh_plain_and_encrypted() {
    let Some(sshd) = Sshd::start() else { return };
    round_trip(&sshd, None);
    round_trip(&sshd, Some("passphrase over ssh"));
}

#[test]
fn link_loss_during_send_and_receive_leaves_a_valid_archive() {
    let Some(sshd) = Sshd::start() else { return };
    let t = tmp();
    let remote = t.path().join("remote-archive");
    let w = sshd.wyng(&remote, None).named_sessions();
    w.ok(&["arch-init", "--encrypt=off", "--chunk-factor=1"]);
    let recorded = history(&w, t.path());

    // A big change, and the link cut while it is being sent (cut again and again until the
    // send ends, so a fast machine cannot finish it in between).
    let src = t.path().join("big.img");
    Image::new(77).random(160 << 20).write(&src);
    let imp = format!("--import-other-from=disk:|:{}", src.display());
    let out = sshd.run_cut_off(
        w.cmd(&["send", "disk", &imp, "-q"]),
        Duration::from_millis(300),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the send must fail when the link drops"
    );
    assert!(
        err.contains("wyng: error:") && !err.contains("panicked"),
        "{err}"
    );
    assert!(
        err.lines().count() <= 3,
        "a clear error, not a trace: {err}"
    );
    // Every earlier session is intact; the next send cleans up and succeeds.
    let o = t.path().join("o.img");
    for (s, sha) in &recorded {
        w.receive("disk", Some(s), &o);
        assert_eq!(&sha256_file(&o), sha);
    }
    let r = w.send("disk", &src, &[]);
    assert!(r["session"].is_string());
    w.receive("disk", None, &o);
    assert_eq!(sha256_file(&o), sha256_file(&src));
    check_strict(&remote);

    // The link cut during a receive: an error, and no restore target left behind.
    let target = t.path().join("restore.img");
    let child = w
        .cmd(&[
            "receive",
            "disk",
            "-u",
            "-q",
            &format!("--save-to={}", target.display()),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    sshd.cut_links();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        assert!(
            !target.exists(),
            "a failed receive leaves no partial target"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("wyng: error:"));
    } else {
        // It finished before the cut: then it must be exact.
        assert_eq!(sha256_file(&target), sha256_file(&src));
    }
}

/// A send to a local and an ssh archive whose link is cut again and again: the local archive
/// commits, the ssh one is outstanding (exit 2); the next run brings it up to date, taking
/// what the cut send had staged, and both restore exactly.
#[test]
fn a_two_destination_send_survives_the_link_to_one() {
    let Some(sshd) = Sshd::start() else { return };
    let t = tmp();
    let remote = t.path().join("remote-two");
    let mut wb = sshd.wyng(&remote, None);
    wb.env.push(("WYNG_CHECKPOINT".into(), "1M".into()));
    wb.ok(&["arch-init", "--encrypt=off", "--chunk-factor=1"]);
    let a_dir = t.path().join("local-a");
    let wa = Wyng::fresh(&a_dir, &wb.meta);
    let src = t.path().join("big.img");
    Image::new(79).random(96 << 20).write(&src);
    let imp = format!("--import-other-from=disk:|:{}", src.display());
    let mut send = wb.cmd(&["send", "disk", &imp, "-q", "--json"]);
    send.arg(format!("--dest={}", wa.dest));
    let out = sshd.run_cut_off(send, Duration::from_millis(500));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        j["destinations"][0]["outstanding"],
        serde_json::json!(["disk"]),
        "{j}"
    );
    assert!(
        j["destinations"][1]["volumes"][0]["session"].is_string(),
        "{j}"
    );
    let o = t.path().join("o.img");
    wa.receive("disk", None, &o);
    assert_eq!(sha256_file(&o), sha256_file(&src));
    // The link back: the next run catches the ssh archive up.
    let out = wb
        .cmd(&["send", "disk", &imp, "--json"])
        .arg(format!("--dest={}", wa.dest))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = &j["destinations"][0]["volumes"][0];
    assert!(b["session"].is_string() && b["first"] == true, "{j}");
    println!(
        "the catch-up took {} chunks the cut send had staged",
        b["chunks_reused"]
    );
    assert!(
        j["destinations"][1]["volumes"][0]["session"].is_null(),
        "A had nothing new: {j}"
    );
    wb.receive("disk", None, &o);
    assert_eq!(sha256_file(&o), sha256_file(&src));
    check_strict(&remote);
    check_strict(&a_dir);
}

/// A send over ssh killed (SIGKILL) mid-way resumes: what the remote synced and the record
/// names is taken (renamed in one batch on the remote), not sent again.
#[test]
fn a_killed_send_over_ssh_resumes() {
    let Some(sshd) = Sshd::start() else { return };
    let t = tmp();
    let remote = t.path().join("remote-resume");
    let mut w = sshd.wyng(&remote, None);
    w.ok(&["arch-init", "--encrypt=off", "--chunk-factor=1"]);
    w.env.push(("WYNG_CHECKPOINT".into(), "1M".into()));
    let src = t.path().join("big.img");
    Image::new(78).random(48 << 20).write(&src);
    let had = crate::resume::kill_at(&w, "disk", &src, &remote, 16 << 20);
    let r = w.send("disk", &src, &[]);
    let reused = r["chunks_reused"].as_u64().unwrap();
    assert!(
        reused * 65536 + (4 << 20) >= had,
        "staged {had}, reused {r}"
    );
    assert!(
        r["bytes_stored"].as_u64().unwrap() <= (48 << 20) - had + (4 << 20),
        "{r}"
    );
    let o = t.path().join("o.img");
    w.receive("disk", None, &o);
    assert_eq!(sha256_file(&o), sha256_file(&src));
    check_strict(&remote);
}

#[test]
fn qubes_destination_through_qvm_run() {
    let t = tmp();
    // A stand-in for Qubes' qvm-run: runs the command in this machine's shell.
    let bin = t.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("qvm-run");
    std::fs::write(
        &fake,
        // qvm-run [OPTIONS] -p VM COMMAND: the options, -p and the VM name are dropped.
        "#!/bin/sh\nwhile [ \"${1#-}\" != \"$1\" ]; do shift; done\nshift\nexec sh -c \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let remote = t.path().join("vm-archive");
    let mut w = Wyng::new(Path::new("/unused"), &t.path().join("meta"));
    w.dest = format!("qubes://backupvm{}", remote.display());
    w.env = vec![(
        "PATH".into(),
        format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
    )];
    w.ok(&["arch-init", "--encrypt=off"]);
    let recorded = history(&w, t.path());
    let out = t.path().join("o.img");
    for (s, sha) in &recorded {
        w.receive("disk", Some(s), &out);
        assert_eq!(&sha256_file(&out), sha);
    }
    check_strict(&remote);
    // Without qvm-run at all: a clear error.
    w.env = vec![("PATH".into(), "/nonexistent".into())];
    let err = w.fails(&["list"], 5);
    assert!(err.contains("qvm-run"), "{err}");
}
