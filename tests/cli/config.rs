//! The configuration file: defaults for options, with the original's rules; the command line wins.

use std::process::Command;

use crate::common::*;

fn wyng(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wyng"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn config_file_defaults_and_overrides() {
    let t = tmp();
    let ar = t.path().join("a");
    let meta = t.path().join("meta");
    let cfg = t.path().join("wyng.ini");
    std::fs::write(
        &cfg,
        format!(
            "[var-global-default]\ndest = file:{}\nmeta-dir = {}\ncompression = zstd:9\nchunk-factor = 1\nencrypt = off\nsession = 20200101-000000\nopt-ssh = -o\n  ConnectTimeout=5\n",
            ar.display(),
            meta.display()
        ),
    )
    .unwrap();
    let c = format!("--config={}", cfg.display());
    let o = wyng(&["arch-init", &c]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Ignoring config item: session"));
    // Options of other commands are not applied to list; the config's dest is.
    let o = wyng(&["list", &c, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = wyng(&["list", &c, "--verbose"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("compr_level     = 9") && text.contains("chunksize       = 65536"),
        "{text}"
    );
    // The command line overrides the file.
    let other = t.path().join("b");
    let o = wyng(&[
        "arch-init",
        &c,
        &format!("--dest=file:{}", other.display()),
        "--compression=zlib",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let w = Wyng::new(&other, &meta);
    assert_eq!(
        w.json(&["list"])["uuid"].as_str().map(|u| !u.is_empty()),
        Some(true)
    );
    assert!(w
        .ok(&["list", "--verbose"])
        .contains("compression     = zlib"));
    // Unknown keys and bad flag values are errors (exit 9); a missing --config file too.
    std::fs::write(&cfg, "[var-global-default]\nfrobnicate = 1\n").unwrap();
    assert_eq!(wyng(&["list", &c]).status.code(), Some(9));
    std::fs::write(&cfg, "[var-global-default]\nquiet = yes\n").unwrap();
    assert_eq!(wyng(&["list", &c]).status.code(), Some(9));
    assert_eq!(
        wyng(&["list", "--config=/nonexistent/wyng.ini"])
            .status
            .code(),
        Some(9)
    );
}
