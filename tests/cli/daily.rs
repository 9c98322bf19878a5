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
