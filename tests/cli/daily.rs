//! Daily use as a new user meets it: the README's configuration recipes work for every
//! command, sessions are chosen the ways people name them, help is short where it should be,
//! and routine situations are not reported as problems.

use std::process::{Command, Stdio};

use crate::common::*;

fn wyng_cfg(cfg: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wyng"))
        .args(args)
        .arg(format!("--config={}", cfg.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The README's "a local and an off-site archive, one timer" configuration, encrypted, with
/// the passphrase from `passcmd` (as the units run it: no terminal, nothing on stdin, no key
/// cache): send writes both; every other command uses the first archive with a note, or the
/// one `--dest` picks.
#[test]
fn the_readme_two_archive_config_works_for_every_command() {
    let t = tmp();
    let (a, b) = (t.path().join("usb"), t.path().join("offsite"));
    let meta = t.path().join("meta");
    let pass = t.path().join("passphrase");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let img = t.path().join("vm1.img");
    let mut i = Image::new(6);
    i.random(300_000).zeros(200_000).text(50_000);
    i.write(&img);
    let cfg = t.path().join("wyng.ini");
    std::fs::write(
        &cfg,
        format!(
            "[var-global-default]\ndest = file:{}\n    file:{}\nmeta-dir = {}\npasscmd = cat {}\nauthmin = 0\n",
            a.display(),
            b.display(),
            meta.display(),
            pass.display(),
        ),
    )
    .unwrap();
    for d in [&a, &b] {
        let o = wyng_cfg(
            &cfg,
            &["arch-init", &format!("--dest=file:{}", d.display())],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let imp = format!("--import-other-from=vm1.img:|:{}", img.display());
    let o = wyng_cfg(&cfg, &["send", "vm1.img", &imp]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ok = |args: &[&str]| -> (String, String) {
        let o = wyng_cfg(&cfg, args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{args:?}: {err}");
        (String::from_utf8_lossy(&o.stdout).into_owned(), err)
    };
    let (out, err) = ok(&["list"]);
    assert!(
        out.contains("vm1.img") && out.contains(&a.display().to_string()),
        "{out}"
    );
    assert!(
        err.contains("lists 2 archives") && err.contains("--dest=URL"),
        "the note says where the values came from and what to do: {err}"
    );
    ok(&["verify", "vm1.img"]);
    let back = t.path().join("back.img");
    ok(&[
        "receive",
        "vm1.img",
        &format!("--save-to={}", back.display()),
    ]);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&img).unwrap());
    // --dest picks the other one.
    let (out, err) = ok(&["list", &format!("--dest=file:{}", b.display())]);
    assert!(
        out.contains(&b.display().to_string()) && !err.contains("lists 2"),
        "{out}"
    );
    // Two on the command line are still a usage error, saying so.
    let o = wyng_cfg(
        &cfg,
        &[
            "list",
            &format!("--dest=file:{}", a.display()),
            &format!("--dest=file:{}", b.display()),
        ],
    );
    assert_eq!(o.status.code(), Some(9));
    assert!(String::from_utf8_lossy(&o.stderr).contains("on the command line"));
    if can_run_privileged(&["/dev/fuse"]) {
        let mnt = t.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        ok(&["mount", &mnt.display().to_string()]);
        let _guard = MountGuard(mnt.clone());
        let got = std::fs::read(mnt.join("vm1.img/latest.img")).unwrap();
        assert_eq!(got, std::fs::read(&img).unwrap());
    }
}

#[test]
fn sessions_are_chosen_as_people_name_them() {
    let t = tmp();
    let w = Wyng::fresh(&t.path().join("ar"), &t.path().join("meta"));
    let img = t.path().join("vm.img");
    let mut i = Image::new(9);
    i.random(150_000);
    i.write(&img);
    w.send("vm.img", &img, &[]);
    let first = std::fs::read(&img).unwrap();
    i.scribble(100, 1000);
    i.write(&img);
    w.send("vm.img", &img, &[]);
    let newest = std::fs::read(&img).unwrap();
    let names = session_names(&w, "vm.img");
    let day = &names[1][..8]; // YYYYMMDD-HHMMSS
    let dashed = format!("{}-{}-{}", &day[..4], &day[4..6], &day[6..8]);
    let out = t.path().join("out.img");
    let got = |when: &str| {
        w.ok(&[
            "receive",
            "vm.img",
            &format!("--session={when}"),
            &format!("--save-to={}", out.display()),
            "-u",
            "-q",
        ]);
        std::fs::read(&out).unwrap()
    };
    for when in ["latest", "newest", "last", day, &dashed, "0m", "now"] {
        assert_eq!(got(when), newest, "{when}");
    }
    assert_eq!(got(&names[0]), first);
    assert_eq!(got(&format!("S_{}", names[0])), first);
    // Nothing that long ago: a selection error (exit 2), as for a date with no session.
    for when in ["yesterday", "1w", "20200101", "20200101-000000"] {
        let err = w.fails(
            &[
                "receive",
                "vm.img",
                &format!("--session={when}"),
                "--save-to=-",
            ],
            2,
        );
        assert!(err.contains("no session"), "{when}: {err}");
    }
    // An impossible date is bad input (exit 9) that says what is accepted.
    for when in ["20261301-256161", "20260230", "someday"] {
        let err = w.fails(
            &[
                "receive",
                "vm.img",
                &format!("--session={when}"),
                "--save-to=-",
            ],
            9,
        );
        assert!(err.contains("latest") && err.contains("yesterday"), "{err}");
    }
    // The same forms elsewhere: list, verify, arch-check (which says how many it checked).
    assert!(w
        .ok(&["list", &format!("--session={dashed}")])
        .contains("vm.img"));
    w.ok(&["verify", "vm.img", "--session=latest"]);
    let out_check = w.ok(&["arch-check", "--session=newest"]);
    assert!(
        out_check.contains("1 session,") || out_check.contains("1 session "),
        "{out_check}"
    );
    // prune: a date matching nothing is the same exit as receive's; a day prunes that day.
    let err = w.fails(&["prune", "vm.img", "--session=20200101", "-u"], 2);
    assert!(err.contains("matches no session"), "{err}");
    w.fails(&["prune", "vm.img", "--session=2d", "-u"], 9);
    let dry = w.ok(&[
        "prune",
        "vm.img",
        &format!("--session={}", names[0]),
        "--dry-run",
    ]);
    assert!(dry.contains(&names[0]), "{dry}");
}

#[test]
fn prune_says_what_it_keeps_and_removes_and_a_no_is_not_an_error() {
    let t = tmp();
    let w = Wyng::fresh(&t.path().join("ar"), &t.path().join("meta")).named_sessions();
    let img = t.path().join("vm.img");
    let mut i = Image::new(13);
    i.random(100_000);
    for k in 0..3 {
        i.scribble(k * 1000, 500);
        i.write(&img);
        w.send("vm.img", &img, &[]);
    }
    let names = session_names(&w, "vm.img");
    let dry = w.ok(&[
        "prune",
        "vm.img",
        &format!("--session={}", names[0]),
        "--dry-run",
    ]);
    assert!(
        dry.contains(&format!("keep   {}  (not selected)", names[1])),
        "{dry}"
    );
    assert!(
        dry.contains(&format!("keep   {}  (newest)", names[2])),
        "{dry}"
    );
    assert!(dry.contains(&format!("remove {}", names[0])), "{dry}");
    let c = w.cmd(&[
        "prune",
        "vm.img",
        &format!("--session={},{}", names[0], names[1]),
    ]);
    match on_terminal(c, &["n"]) {
        Some(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                text.contains("Prune will remove 2 sessions:")
                    && text.contains(&format!("vm.img: {} {}", names[0], names[1])),
                "{text}"
            );
            assert_eq!(o.status.code(), Some(0), "{text}");
            assert!(text.contains("nothing was pruned"), "{text}");
            assert_eq!(session_names(&w, "vm.img"), names);
        }
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("util-linux `script` is needed for the terminal prompt test")
        }
        None => println!("skipped the terminal prompt: util-linux `script` is not installed"),
    }
}

#[test]
fn a_closed_pipe_ends_output_quietly_and_sigterm_is_exit_8() {
    // `wyng completions zsh | head -1`, `wyng man | head`, `wyng list | head`.
    let t = tmp();
    let ar = t.path().join("ar");
    let w = Wyng::fresh(&ar, &t.path().join("meta"));
    for args in [
        vec!["completions", "zsh"],
        vec!["man"],
        vec!["list", "--verbose"],
    ] {
        let mut c = w.cmd(&args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut first = [0u8; 1];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        assert!(o.status.code().is_some(), "{args:?}: ended by a signal");
    }
    // SIGTERM during a send: exit 8 with a line saying so; the next send completes.
    let img = t.path().join("big.img");
    // Large enough that the send is still storing chunks when the signal comes.
    Image::new(8).random(256 << 20).write(&img);
    let imp = format!("--import-other-from=big:|:{}", img.display());
    let child = w
        .cmd(&["send", "big", &imp])
        .env("WYNG_WORKERS", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while files_under(&ar)
        .iter()
        .filter(|p| p.to_string_lossy().contains("S-tmp"))
        .count()
        < 4
    {
        assert!(std::time::Instant::now() < deadline, "the send started");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(8), "{err}");
    assert!(err.contains("interrupted (SIGTERM)"), "{err}");
    w.send("big", &img, &[]);
    let back = t.path().join("back.img");
    w.receive("big", None, &back);
    assert_eq!(sha256_file(&back), sha256_file(&img));
}

/// Routine situations are not warnings: a user without root gets a state directory of their
/// own (no --meta-dir needed), and `--sparse` on a filesystem without reflinks just updates in
/// place.
#[test]
fn routine_situations_are_not_warnings() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let t = tmp();
    let w = Wyng::fresh(&t.path().join("ar"), &t.path().join("meta"));
    let img = t.path().join("vm.img");
    Image::new(3).random(200_000).write(&img);
    w.send("vm.img", &img, &[]);
    // --sparse onto an existing copy (tmpfs/ext4 here: no reflinks): no warning.
    let out = t.path().join("out.img");
    std::fs::copy(&img, &out).unwrap();
    let o = w.run(&[
        "receive",
        "vm.img",
        &format!("--save-to={}", out.display()),
        "--sparse",
        "-u",
    ]);
    assert!(o.status.success());
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("WARN"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    if !is_root() {
        println!("skipped the non-root part: the test runs as a user already");
        return;
    }
    // As another user, with no --meta-dir: $XDG_STATE_HOME/wyng, silently.
    let home = t.path().join("home");
    std::fs::create_dir(&home).unwrap();
    for p in [t.path(), home.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let ar2 = home.join("ar2");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wyng"))
            .args(args)
            .arg(format!("--dest=file:{}", ar2.display()))
            .env("HOME", &home)
            .env("XDG_STATE_HOME", home.join("state"))
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = run(&["arch-init", "--encrypt=off"]);
    if o.status.code() == Some(126)
        || String::from_utf8_lossy(&o.stderr).contains("Permission denied")
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        println!("skipped the non-root part: the binary is not reachable by user nobody");
        return;
    }
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["list"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        home.join("state/wyng").is_dir(),
        "the user's state directory is used"
    );
}

/// Damage messages say which session holds the damage and what to do, without sending the
/// user in circles (verify telling them to run verify).
#[test]
fn damage_messages_say_where_and_what_to_do() {
    let t = tmp();
    let ar = t.path().join("ar");
    let w = Wyng::fresh(&ar, &t.path().join("meta"));
    let img = t.path().join("vm.img");
    Image::new(4).random(300_000).write(&img);
    w.send("vm.img", &img, &[]);
    let session = session_names(&w, "vm.img")[0].clone();
    let chunk = chunk_files(&ar).remove(0);
    let mut b = std::fs::read(&chunk).unwrap();
    b[10] ^= 1;
    std::fs::write(&chunk, &b).unwrap();
    for args in [
        vec!["verify", "vm.img"],
        vec!["receive", "vm.img", "--save-to=-"],
    ] {
        let err = w.fails(&args, 1);
        assert!(
            err.contains(&format!("stored by session {session} of 'vm.img'"))
                && err.contains("--skip-corrupt-chunks")
                && err.contains("wyng rename 'vm.img'")
                && !err.contains("run `wyng verify`"),
            "{args:?}: {err}"
        );
    }
    let err = w.fails(&["arch-check"], 1);
    assert!(
        err.contains("found 1 problem.") && err.contains("--skip-corrupt-chunks"),
        "{err}"
    );
}

/// `-h` is short (the command's own options and two examples); `--help` teaches (every
/// option, the global options under their heading, more examples); every option of the
/// original is accepted on every command, saying where it has no effect.
#[test]
fn short_help_long_help_and_the_originals_options_everywhere() {
    let wyng = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wyng"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let commands = [
        "arch-init",
        "send",
        "receive",
        "verify",
        "list",
        "mount",
        "monitor",
        "diff",
        "umount",
        "prune",
        "delete",
        "arch-deduplicate",
        "arch-check",
        "rename",
        "add",
        "version",
        "completions",
        "man",
    ];
    for c in commands {
        let short = String::from_utf8(wyng(&[c, "-h"]).stdout).unwrap();
        let long = String::from_utf8(wyng(&[c, "--help"]).stdout).unwrap();
        let examples = |h: &str| {
            h.lines()
                .skip_while(|l| !l.starts_with("Example"))
                .skip(1)
                .take_while(|l| l.starts_with("  "))
                .count()
        };
        assert!(
            examples(&short) >= 2 || c == "arch-init",
            "{c} -h: two examples\n{short}"
        );
        assert!(examples(&long) >= 2, "{c} --help examples\n{long}");
        assert!(
            !short.contains("Global options:") && !short.contains("--meta-dir <DIR>"),
            "{c} -h"
        );
        assert!(
            long.contains("Global options:") && long.contains("--meta-dir <DIR>"),
            "{c} --help"
        );
        assert!(
            short.lines().count() <= 60,
            "{c} -h is {} lines",
            short.lines().count()
        );
        assert!(
            !short.contains("--tar-bypass") && !short.contains("--maxsync"),
            "{c} -h"
        );
    }
    let long = String::from_utf8(wyng(&["send", "--help"]).stdout).unwrap();
    assert!(
        long.contains("Accepted for the original's scripts (no effect):"),
        "{long}"
    );
    // The original's options on commands that do not use them: accepted, with a note.
    let t = tmp();
    let w = Wyng::fresh(&t.path().join("ar"), &t.path().join("meta"));
    let img = t.path().join("vm.img");
    Image::new(5).random(100_000).write(&img);
    w.send("vm.img", &img, &[]);
    for args in [
        vec!["verify", "vm.img", "--skip-corrupt-chunks"],
        vec!["list", "--remap", "--quick"],
        vec!["verify", "vm.img", "--dedup", "--tag=x"],
        vec!["arch-check", "--sparse", "--remap"],
    ] {
        let o = w.run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{args:?}: {err}");
        assert!(err.contains("has no effect with"), "{args:?}: {err}");
    }
    // ... except the two the original's parser refuses outside their commands.
    let e = w.fails(&["arch-check", "--save-to=/nowhere"], 9);
    assert!(e.contains("--save-to works with receive only"), "{e}");
    let e = w.fails(&["list", "--vols-from=/nowhere"], 9);
    assert!(e.contains("cannot be used with `list`"), "{e}");
}

/// The shells' completion calls wyng back: volume and session names come from the archive
/// (a `file:` one, read without prompting or locking).
#[test]
fn completion_of_names() {
    let t = tmp();
    let ar = t.path().join("ar");
    let w = Wyng::fresh(&ar, &t.path().join("meta"));
    let img = t.path().join("vm.img");
    Image::new(5).random(100_000).write(&img);
    w.send("vm-one.img", &img, &[]);
    w.ok(&["add", "vm-two.img", "other.img"]);
    let complete = |words: &[&str]| -> Vec<String> {
        let o = Command::new(env!("CARGO_BIN_EXE_wyng"))
            .env("COMPLETE", "fish")
            .arg("--")
            .arg("wyng")
            .args(words)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    };
    let dest = format!("--dest={}", w.dest);
    let meta = format!("--meta-dir={}", w.meta.display());
    assert_eq!(
        complete(&["receive", &dest, &meta, "vm-"]),
        ["vm-one.img", "vm-two.img"]
    );
    assert_eq!(complete(&["rename", &dest, &meta, "oth"]), ["other.img"]);
    let session = session_names(&w, "vm-one.img")[0].clone();
    let got = complete(&["verify", &dest, &meta, "vm-one.img", "--session", ""]);
    assert!(
        got.contains(&session) && got.contains(&"latest".to_string()),
        "{got:?}"
    );
    // Commands and options complete as clap knows them.
    assert!(complete(&["arch-"]).contains(&"arch-check".to_string()));
    // An archive that cannot be read completes nothing, quietly.
    assert!(complete(&["receive", "--dest=file:/nonexistent", "vm"]).is_empty());
}
