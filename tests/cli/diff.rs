//! diff: a local volume against its newest session.

use crate::common::*;

fn case(pass: Option<&str>) {
    let t = tmp();
    let ar = t.path().join("a");
    let w = Wyng::maybe_pass(&ar, &t.path().join("meta"), pass);
    w.init(&["--chunk-factor=1"]);
    let src = t.path().join("v.img");
    let mut img = Image::new(4);
    img.random(500_000).zeros(300_000).text(200_123);
    img.write(&src);
    w.send("v", &src, &[]);
    let file = format!("--file={}", src.display());
    for quick in [false, true] {
        let mut args = vec!["diff", "v", file.as_str()];
        if quick {
            args.push("--quick");
        }
        w.ok(&args);
    }
    // One byte changed in the zero region, one in the text.
    let mut data = img.data.clone();
    data[600_001] = 1;
    data[900_000] ^= 0x20;
    std::fs::write(&src, &data).unwrap();
    let err = w.fails(&["diff", "v", &file], 2);
    assert!(err.contains("first difference at byte 600001"), "{err}");
    let err = w.fails(&["diff", "v", &file, "--quick"], 2);
    assert!(
        err.contains(&format!(
            "first difference at byte {}",
            600_001 / 65536 * 65536
        )),
        "{err}"
    );
    // A different size is a difference too.
    std::fs::write(&src, &img.data[..700_000]).unwrap();
    w.fails(&["diff", "v", &file, "--quick"], 2);
    w.fails(&["diff", "v"], 9);
}

#[test]
fn diff_plain() {
    case(None);
}

#[test]
fn diff_encrypted() {
    case(Some("diff passphrase"));
}
