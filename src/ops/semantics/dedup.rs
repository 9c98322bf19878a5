//! Deduplication: `send --dedup` and `arch-deduplicate` store shared chunks once (hard links),
//! every session still reads back exactly, a second `arch-deduplicate` links nothing, and a
//! prune (a merge) keeps the links valid. Was `tests/cli/dedup.rs` (`send_dedup_links_shared_
//! chunks`, `arch_deduplicate_links_what_was_sent_twice`), which keeps the encrypted, the
//! spilled-index and the checker's parts.

use std::sync::Arc;

use super::{init_with, send_as, Image};
use crate::archive::{Compression, MemDest};
use crate::ops::faults::sessions;
use crate::ops::prune::{self, PruneOptions};
use crate::ops::send::SendOptions;

/// (chunk files, distinct contents among them by identity: hard links share theirs).
fn chunk_files(d: &MemDest) -> (usize, usize) {
    let files: Vec<Arc<Vec<u8>>> = d
        .files()
        .into_iter()
        .filter(|(p, _)| p.rsplit('/').next().is_some_and(|f| f.starts_with('x')))
        .map(|(_, data)| data)
        .collect();
    let mut distinct: Vec<&Arc<Vec<u8>>> = Vec::new();
    for f in &files {
        if !distinct.iter().any(|d| Arc::ptr_eq(d, f)) {
            distinct.push(f);
        }
    }
    (files.len(), distinct.len())
}

/// Two images sharing 1 MiB (16 chunks of 64 KiB), the second also repeating a chunk.
fn shared_images() -> (Vec<u8>, Vec<u8>) {
    let common = Image::new(1).random(1 << 20).data.clone();
    let mut a = Image::new(2);
    a.random(256 << 10);
    a.data.extend_from_slice(&common);
    let mut b = Image::new(3);
    b.data.extend_from_slice(&common);
    b.random(128 << 10);
    let block = b.data[..65536].to_vec();
    b.data.extend_from_slice(&block);
    (a.data, b.data)
}

#[test]
fn send_dedup_links_shared_chunks() {
    let (meta, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d = MemDest::new("mem:dedup");
    let mut wa = init_with(&d, meta.path(), Compression::Zstd, 3, 65536);
    let (a, b) = shared_images();
    let dedup = || SendOptions {
        dedup: true,
        ..Default::default()
    };
    let r = send_as(&mut wa, files.path(), 1, &[("a", &a)], dedup());
    assert_eq!(r[0].chunks_linked, 0);
    let r = send_as(&mut wa, files.path(), 2, &[("b", &b)], dedup());
    // 16 shared 64 KiB chunks with a, and one repeated inside b.
    assert_eq!(r[0].chunks_linked, 17);
    let (files_n, distinct) = chunk_files(&d);
    assert_eq!(
        files_n - distinct,
        17,
        "{files_n} files, {distinct} distinct"
    );
    assert_eq!(sessions(&wa, files.path(), "a")[0].1, a);
    assert_eq!(sessions(&wa, files.path(), "b")[0].1, b);
}

#[test]
fn arch_deduplicate_links_what_was_sent_twice() {
    let (meta, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d = MemDest::new("mem:arch-dedup");
    let mut wa = init_with(&d, meta.path(), Compression::Zstd, 3, 65536);
    let (a, b) = shared_images();
    send_as(
        &mut wa,
        files.path(),
        1,
        &[("a", &a)],
        SendOptions::default(),
    );
    send_as(
        &mut wa,
        files.path(),
        1,
        &[("b", &b)],
        SendOptions::default(),
    );
    let (files_n, distinct) = chunk_files(&d);
    assert_eq!(files_n, distinct, "no links without dedup");
    let r = crate::ops::dedup::run(&mut wa).unwrap();
    assert_eq!(r.linked, 17);
    assert!(r.bytes_saved > 17 * 60_000, "{}", r.bytes_saved);
    let (files_n, distinct) = chunk_files(&d);
    assert_eq!(files_n - distinct, 17);
    // Idempotent.
    assert_eq!(crate::ops::dedup::run(&mut wa).unwrap().linked, 0);
    assert_eq!(sessions(&wa, files.path(), "a")[0].1, a);
    assert_eq!(sessions(&wa, files.path(), "b")[0].1, b);
    // A pruned (merged) volume keeps its links valid.
    let dedup = SendOptions {
        dedup: true,
        ..Default::default()
    };
    send_as(&mut wa, files.path(), 2, &[("b", &a)], dedup);
    let o = PruneOptions {
        session: Some(crate::ops::faults::name(1).date().to_string()),
        now: chrono::Local::now().naive_local(),
        ..Default::default()
    };
    prune::run(&mut wa, &["b".to_string()], &o).unwrap();
    let got = sessions(&wa, files.path(), "b");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, a);
    assert_eq!(sessions(&wa, files.path(), "a")[0].1, a);
}
