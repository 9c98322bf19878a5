//! Deduplication: shared chunks are stored once (hard links), every session still receives
//! exactly, and the archive stays valid for the original: encrypted, with an index larger than
//! its memory (`WYNG_DEDUP_MEMORY`), and `arch-deduplicate`'s report. What the plain cases
//! link and read back, in-process: src/ops/semantics/dedup.rs.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::common::*;

/// (chunk files, distinct inodes among them).
fn chunk_inodes(ar: &Path) -> (usize, usize) {
    let files = chunk_files(ar);
    let inodes: HashSet<u64> = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().ino())
        .collect();
    (files.len(), inodes.len())
}

fn shared_images(t: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>, Vec<u8>) {
    let mut common = Image::new(1);
    common.random(1 << 20);
    let mut a = Image::new(2);
    a.random(256 << 10);
    a.data.extend_from_slice(&common.data);
    let mut b = Image::new(3);
    b.data.extend_from_slice(&common.data);
    b.random(128 << 10);
    // And repetition inside one volume.
    let block = b.data[..65536].to_vec();
    b.data.extend_from_slice(&block);
    let (pa, pb) = (t.join("a.img"), t.join("b.img"));
    a.write(&pa);
    b.write(&pb);
    (pa, pb, a.data, b.data)
}

/// `memory`: `WYNG_DEDUP_MEMORY`, small enough to make the index spill to disk.
fn dedup_send(pass: Option<&str>, memory: Option<&str>) {
    let t = tmp();
    let ar = t.path().join("archive");
    let mut w = Wyng::maybe_pass(&ar, &t.path().join("meta"), pass);
    if let Some(m) = memory {
        w.env.push(("WYNG_DEDUP_MEMORY".into(), m.into()));
    }
    w.init(&["--chunk-factor=1"]);
    let (pa, pb, da, db) = shared_images(t.path());
    let ra = w.send("a", &pa, &["--dedup"]);
    assert_eq!(ra["chunks_linked"], 0);
    let rb = w.send("b", &pb, &["--dedup"]);
    // 16 shared 64 KiB chunks with a, and one repeated inside b.
    assert_eq!(rb["chunks_linked"], 17, "{rb}");
    let (files, inodes) = chunk_inodes(&ar);
    assert_eq!(files - inodes, 17, "{files} files, {inodes} inodes");
    let out = t.path().join("o");
    w.receive("a", None, &out);
    assert_eq!(std::fs::read(&out).unwrap(), da);
    w.receive("b", None, &out);
    assert_eq!(std::fs::read(&out).unwrap(), db);
    check_strict_with(&ar, pass);
}

#[test]
fn send_dedup_on_an_encrypted_archive() {
    dedup_send(Some("dedup passphrase"), None);
}

#[test]
fn dedup_with_an_index_larger_than_its_memory() {
    // 440 bytes = 10 records: the index is built in sorted runs merged on disk.
    dedup_send(None, Some("440"));
    arch_deduplicate(Some("440"));
}

#[test]
fn arch_deduplicate_links_what_was_sent_twice() {
    arch_deduplicate(None);
}

fn arch_deduplicate(memory: Option<&str>) {
    let t = tmp();
    let ar = t.path().join("archive");
    let mut w = Wyng::new(&ar, &t.path().join("meta"));
    if let Some(m) = memory {
        w.env.push(("WYNG_DEDUP_MEMORY".into(), m.into()));
    }
    w.ok(&["arch-init", "--encrypt=off", "--chunk-factor=1"]);
    let (pa, pb, da, db) = shared_images(t.path());
    w.send("a", &pa, &[]);
    w.send("b", &pb, &[]);
    let (files, inodes) = chunk_inodes(&ar);
    assert_eq!(files, inodes, "no links without --dedup");
    let o = w.run(&["arch-deduplicate", "--json", "-v"]);
    assert!(o.status.success(), "{o:?}");
    let spilled = String::from_utf8_lossy(&o.stderr).contains("merged on disk");
    assert_eq!(spilled, memory.is_some(), "{o:?}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["linked"], 17, "{r}");
    assert!(r["bytes_saved"].as_u64().unwrap() > 17 * 60_000);
    let (files, inodes) = chunk_inodes(&ar);
    assert_eq!(files - inodes, 17);
    // Idempotent.
    assert_eq!(w.json(&["arch-deduplicate"])["linked"], 0);
    let out = t.path().join("o");
    w.receive("a", None, &out);
    assert_eq!(std::fs::read(&out).unwrap(), da);
    w.receive("b", None, &out);
    assert_eq!(std::fs::read(&out).unwrap(), db);
    check_strict(&ar);
    // A pruned (merged) volume keeps its links valid.
    w.send("b", &pa, &["--dedup"]);
    let first = first_key(&w.json(&["list"])["volumes"]["b"]["sessions"]);
    w.ok(&["prune", "b", &format!("--session={}", &first[2..]), "-u"]);
    w.receive("b", None, &out);
    assert_eq!(std::fs::read(&out).unwrap(), da);
    check_strict(&ar);
}
