//! Prune selections (a session, a range, `--all-before`, `^tag`, `--keep`) on random histories:
//! exactly the selected sessions go, never the newest, and every session left reads back
//! exactly; a dry run changes nothing; retention after a send keeps what its policy says.
//! Was `tests/cli/prune.rs` (`random_histories_and_selections`, `tags_keep_and_dry_run`) and
//! `tests/cli/retention.rs` (`send_keeps_what_its_retention_policy_says`), which keep the
//! text, JSON and checker parts.

use std::collections::BTreeMap;
use std::path::Path;

use super::{init_with, send_as, tag, Image};
use crate::archive::{Compression, MemDest, WriteArchive};
use crate::format::SessionName;
use crate::ops::faults::{name, sessions};
use crate::ops::prune::{self, Policy, PruneOptions};
use crate::ops::send::SendOptions;

/// Sends `count` random versions of "vol" (writes, zeroing, growth, shrink; tag `t{i % 3}`)
/// as sessions 1..=count; returns session → image.
fn random_history(
    wa: &mut WriteArchive,
    files: &Path,
    rng: &mut Image,
    count: u32,
) -> BTreeMap<SessionName, Vec<u8>> {
    let mut img = Image::new(rng.next());
    img.random(300_000).zeros(200_000).text(100_000);
    let mut out = BTreeMap::new();
    for i in 0..count {
        if i > 0 {
            img.change_randomly(rng);
        }
        let opts = SendOptions {
            tags: vec![tag(&format!("t{}", i % 3), &format!("tag {i}"))],
            send_unchanged: true,
            ..Default::default()
        };
        send_as(wa, files, i + 1, &[("vol", &img.data)], opts);
        out.insert(name(i + 1), img.data.clone());
    }
    out
}

/// The sessions of "vol" are exactly `live`, and each reads back (and verifies) exactly.
fn check_all(wa: &WriteArchive, files: &Path, live: &BTreeMap<SessionName, Vec<u8>>, what: &str) {
    let got = sessions(wa, files, "vol");
    let names: Vec<&SessionName> = got.iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        live.keys().collect::<Vec<_>>(),
        "{what}: surviving sessions"
    );
    for (n, data) in &got {
        assert!(&live[n] == data, "{what}: session {n} reads back wrong");
    }
}

fn prune_vol(wa: &mut WriteArchive, o: &PruneOptions) -> Vec<String> {
    let mut r = prune::run(wa, &["vol".to_string()], o).unwrap();
    assert_eq!(r.len(), 1);
    r.remove(0).removed
}

fn opts(session: &str) -> PruneOptions {
    PruneOptions {
        session: Some(session.to_string()),
        now: chrono::Local::now().naive_local(),
        ..Default::default()
    }
}

#[test]
fn random_histories_and_selections() {
    for seed in [3u64, 17, 101] {
        let (meta, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let d = MemDest::new("mem:prune");
        let mut wa = init_with(&d, meta.path(), Compression::Zstd, 3, 65536);
        let mut rng = Image::new(seed * 0x9E37_79B9 + 1);
        let mut live = random_history(&mut wa, files.path(), &mut rng, 8);
        for round in 0..3 {
            let names: Vec<SessionName> = live.keys().cloned().collect();
            if names.len() < 3 {
                break;
            }
            let n = names.len() as u64;
            let a = rng.below(n - 1) as usize;
            let b = a + rng.below(n - 1 - a as u64) as usize;
            let (spec, mut expect): (String, Vec<SessionName>) = match rng.below(3) {
                0 => (names[a].date().to_string(), vec![names[a].clone()]),
                1 => (
                    format!("{},{}", names[a].date(), names[b].date()),
                    names[a..=b].to_vec(),
                ),
                _ => (names[b].date().to_string(), names[..b].to_vec()),
            };
            let mut o = opts(&spec);
            o.all_before = !spec.contains(',') && expect.len() != 1;
            // Keep one of them, sometimes.
            if expect.len() > 1 && rng.below(2) == 0 {
                let k = expect.remove(0);
                o.keep.push(k.date().to_string());
            }
            expect.retain(|s| s != names.last().unwrap());
            let removed = prune_vol(&mut wa, &o);
            let want: Vec<String> = expect.iter().map(ToString::to_string).collect();
            assert_eq!(removed, want, "seed {seed} round {round}: prune {o:?}");
            for s in &expect {
                live.remove(s);
            }
            check_all(
                &wa,
                files.path(),
                &live,
                &format!("seed {seed} round {round}"),
            );
        }
    }
}

#[test]
fn tags_keep_and_dry_run() {
    let (meta, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d = MemDest::new("mem:tags");
    let mut wa = init_with(&d, meta.path(), Compression::Zstd, 3, 65536);
    let mut rng = Image::new(7);
    let mut live = random_history(&mut wa, files.path(), &mut rng, 6);
    let names: Vec<SessionName> = live.keys().cloned().collect();
    // A dry run reports and changes nothing: t0 is on sessions 0 and 3 (not the newest).
    let before = d.files();
    let dry = PruneOptions {
        dry_run: true,
        ..opts("^t0")
    };
    assert_eq!(
        prune_vol(&mut wa, &dry),
        [names[0].to_string(), names[3].to_string()]
    );
    assert_eq!(d.files(), before, "a dry run writes nothing");
    check_all(&wa, files.path(), &live, "after the dry run");
    // ^tag with a kept date.
    let mut o = opts("^t0");
    o.keep.push(names[3].date().to_string());
    assert_eq!(prune_vol(&mut wa, &o), [names[0].to_string()]);
    live.remove(&names[0]);
    check_all(&wa, files.path(), &live, "after ^t0");
    // The newest session is never pruned.
    assert!(prune_vol(&mut wa, &opts(names[5].date())).is_empty());
    // ^t1: sessions 1 and 4.
    assert_eq!(
        prune_vol(&mut wa, &opts("^t1")),
        [names[1].to_string(), names[4].to_string()]
    );
    live.remove(&names[1]);
    live.remove(&names[4]);
    check_all(&wa, files.path(), &live, "after ^t1");
}

#[test]
fn retention_after_each_send_keeps_what_its_policy_says() {
    // btrfs-backup's `-n`, as `send --keep-last=2` runs it: after each send, a prune by the
    // policy on the volumes that got a session; the newest two remain and restore exactly.
    let (meta, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d = MemDest::new("mem:retention");
    let mut wa = init_with(&d, meta.path(), Compression::Zstd, 3, 65536);
    let policy = PruneOptions {
        policy: Policy {
            last: 2,
            ..Default::default()
        },
        spare_metadata: true,
        now: chrono::Local::now().naive_local(),
        ..Default::default()
    };
    let mut images = BTreeMap::new();
    for i in 0..4u32 {
        let img = Image::new(100 + u64::from(i)).random(200_000).data.clone();
        send_as(
            &mut wa,
            files.path(),
            i + 1,
            &[("v.img", &img)],
            SendOptions::default(),
        );
        images.insert(name(i + 1), img);
        let removed = prune::run(&mut wa, &["v.img".to_string()], &policy).unwrap();
        let want: Vec<String> = if i >= 2 {
            vec![name(i - 1).to_string()]
        } else {
            Vec::new()
        };
        assert_eq!(removed[0].removed, want, "send {i}");
    }
    let got = sessions(&wa, files.path(), "v.img");
    assert_eq!(got.len(), 2);
    for (n, data) in &got {
        assert!(&images[n] == data, "{n} reads back wrong");
    }
    assert_eq!(got[0].0, name(3));
    assert_eq!(got[1].0, name(4));
}
