//! arch-check: clean archives pass, damage is found and every damaged file named, --clean and
//! --change-uuid.

use crate::common::*;

#[test]
fn original_archives_check_clean() {
    for name in [
        "a-plain-zstd",
        "c-plain-bz2-cf1-blake2b",
        "f-multisession",
        "g-dedup",
        "i-two-volumes",
    ] {
        let t = tmp();
        let ar = copy_fixture(name, t.path());
        let w = Wyng::new(&ar, &t.path().join("meta"));
        let r = w.json(&["arch-check"]);
        for v in r.as_array().unwrap() {
            assert!(v["problems"].as_array().unwrap().is_empty(), "{name}: {v}");
            assert!(v["chunks"].as_u64().unwrap() > 0);
        }
    }
}

#[test]
fn damage_is_found_and_named() {
    let t = tmp();
    let ar = copy_fixture("f-multisession", t.path());
    let w = Wyng::new(&ar, &t.path().join("meta"));
    // Damage one chunk in the oldest and one in the newest session.
    let mut chunks = Vec::new();
    let vol = ar.join("Vol_10112d");
    for s in ["S_20261123-153631", "S_20261123-153636"] {
        let dir = vol.join(s).join("000000000");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let f = files[0].clone();
        let mut b = std::fs::read(&f).unwrap();
        b[3] ^= 0x20;
        std::fs::write(&f, &b).unwrap();
        chunks.push(format!(
            "{s}/000000000/{}",
            f.file_name().unwrap().to_string_lossy()
        ));
    }
    let err = w.fails(&["arch-check"], 1);
    for c in &chunks {
        assert!(err.contains(c.as_str()), "{c} not named: {err}");
    }
    // --session=newest checks only the newest session's own chunks.
    let err = w.fails(&["arch-check", "--session=newest"], 1);
    assert!(
        err.contains(&chunks[1]) && !err.contains(&chunks[0]),
        "{err}"
    );
}

#[test]
fn clean_and_change_uuid() {
    let t = tmp();
    let ar = copy_fixture("a-plain-zstd", t.path());
    let w = Wyng::new(&ar, &t.path().join("meta"));
    std::fs::create_dir_all(ar.join("Vol_1e08b7/S-tmp/000000000")).unwrap();
    std::fs::write(ar.join("Vol_1e08b7/volinfo.tmp"), b"x").unwrap();
    w.ok(&["arch-check", "--clean"]);
    assert!(!ar.join("Vol_1e08b7/S-tmp").exists());
    assert!(!ar.join("Vol_1e08b7/volinfo.tmp").exists());
    let before = w.json(&["list"])["uuid"].as_str().unwrap().to_string();
    // Off a terminal the run is unattended (as the original): no question, a new UUID.
    w.ok(&["arch-check", "--change-uuid"]);
    w.ok(&["arch-check", "--change-uuid", "-u"]);
    let after = w.json(&["list"])["uuid"].as_str().unwrap().to_string();
    assert_ne!(before, after);
    let out = t.path().join("o");
    w.receive("vol1", None, &out);
    check_strict(&ar);
}
