//! The send's planning and its order and commit behaviour, in-process on the in-memory
//! destination (see [`crate::ops::faults`] for the helpers).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::archive::{Archive, MemDest};
use crate::error::Error;
use crate::ops::faults::{image, init, name, sessions, CS};

use super::*;

/// A request for `vol` reading `data` from a file in `files`.
pub(super) fn req(files: &Path, vol: &str, data: &[u8]) -> SendRequest {
    let source = files.join(format!("{vol}.src"));
    std::fs::write(&source, data).unwrap();
    SendRequest {
        volume: vol.into(),
        source,
        reflink: false,
    }
}

fn opts(s: u32) -> SendOptions {
    SendOptions {
        session: Some(name(s)),
        ..Default::default()
    }
}

/// Every file of the archive that is the same in two archives holding the same sessions:
/// the volumes' directories (under a name that does not depend on the volume's random id).
fn volume_files(a: &Archive, d: &MemDest) -> BTreeMap<String, Arc<Vec<u8>>> {
    let dirs: Vec<(String, String)> = a
        .volumes()
        .iter()
        .map(|v| (crate::archive::layout::volume(&v.vid), v.name().to_string()))
        .collect();
    d.files()
        .into_iter()
        .filter_map(|(path, data)| {
            let (dir, vol) = dirs
                .iter()
                .find(|(dir, _)| path.starts_with(dir.as_str()))?;
            Some((format!("{vol}{}", &path[dir.len()..]), data))
        })
        .collect()
}

/// The image of `image(seed, chunks)` changed as a second session would change it: one
/// chunk rewritten, one data chunk zeroed, grown by two chunks at the end.
fn changed(seed: u8, chunks: u64) -> Vec<u8> {
    let mut v = image(seed, chunks);
    let c = |i: u64| (i * CS) as usize..((i + 1) * CS) as usize;
    v[c(1)].iter_mut().for_each(|b| *b ^= 0x5a);
    let data = (0..chunks)
        .find(|&i| i != 1 && v[c(i)].iter().any(|&b| b != 0))
        .unwrap();
    v[c(data)].fill(0);
    v.extend(image(seed.wrapping_add(1), 2));
    v
}

#[test]
fn requests_are_checked_before_anything_is_written() {
    let (meta, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d = MemDest::new("mem:check");
    let mut wa = init(&d, meta.path());
    let before = d.files();
    let twice = [
        req(files.path(), "a", &image(1, 2)),
        req(files.path(), "a", &image(2, 2)),
    ];
    assert!(matches!(
        run(&mut wa, &twice, &opts(1)),
        Err(Error::VolumeNamedTwice(_))
    ));
    let mut missing = req(files.path(), "b", &image(1, 2));
    missing.source = files.path().join("no such file");
    let reqs = [req(files.path(), "a", &image(1, 2)), missing];
    assert!(run(&mut wa, &reqs, &opts(1)).is_err());
    assert!(wa.volume("a").is_none() && wa.volume("b").is_none());
    assert_eq!(d.files(), before, "nothing written");
}

#[test]
fn each_archive_gets_the_volumes_planned_for_it() {
    let (meta, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (d0, d1) = (MemDest::new("mem:t0"), MemDest::new("mem:t1"));
    let (m0, m1) = (meta.path().join("0"), meta.path().join("1"));
    let (mut w0, mut w1) = (init(&d0, &m0), init(&d1, &m1));
    let (a, b) = (image(1, 4), image(2, 3));
    let reqs = [req(files.path(), "a", &a), req(files.path(), "b", &b)];
    let mut targets = [
        Target {
            archive: &mut w0,
            volumes: Some(vec!["b".into()]),
        },
        Target {
            archive: &mut w1,
            volumes: None,
        },
    ];
    let r = run_multi(&mut targets, &reqs, &opts(1)).unwrap();
    let vols = |r: &TargetResult| {
        r.reports
            .iter()
            .map(|v| v.volume.clone())
            .collect::<Vec<_>>()
    };
    assert!(r.iter().all(|r| r.failed.is_none()));
    assert_eq!(vols(&r[0]), ["b"]);
    assert_eq!(vols(&r[1]), ["a", "b"]);
    assert!(
        w0.volume("a").is_none(),
        "no volume made where it is not sent"
    );
    assert_eq!(sessions(&w0, files.path(), "b")[0].1, b);
    assert_eq!(sessions(&w1, files.path(), "a")[0].1, a);
    assert_eq!(sessions(&w1, files.path(), "b")[0].1, b);
}

#[test]
fn an_archive_that_fails_drops_out_and_lists_what_it_missed() {
    let (meta, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (d0, d1) = (MemDest::new("mem:dies"), MemDest::new("mem:lives"));
    let (m0, m1) = (meta.path().join("0"), meta.path().join("1"));
    let (mut w0, mut w1) = (init(&d0, &m0), init(&d1, &m1));
    let (a, b) = (image(1, 5), image(2, 5));
    let reqs = [req(files.path(), "a", &a), req(files.path(), "b", &b)];
    // Dies part way through the first volume's chunks.
    d0.crash_at(3);
    let mut targets = [
        Target {
            archive: &mut w0,
            volumes: None,
        },
        Target {
            archive: &mut w1,
            volumes: None,
        },
    ];
    let r = run_multi(&mut targets, &reqs, &opts(1)).unwrap();
    let (_, missed) = r[0].failed.as_ref().expect("the first archive failed");
    assert_eq!(missed, &["a", "b"]);
    assert!(r[0].reports.is_empty());
    assert!(r[1].failed.is_none());
    assert!(r[1].reports.iter().all(|v| v.session.is_some()));
    assert_eq!(sessions(&w1, files.path(), "a")[0].1, a);
    assert_eq!(sessions(&w1, files.path(), "b")[0].1, b);
}

/// The order the collector restores does not depend on how many archives share the read:
/// one send to two archives writes, in each, exactly the files a send to one archive writes
/// (chunks, manifests, session info, volume info), for a first session and an incremental
/// one that changes, zeroes and appends chunks.
#[test]
fn two_archives_at_once_hold_exactly_what_one_archive_holds() {
    let (meta, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ds = [
        MemDest::new("mem:one"),
        MemDest::new("mem:two-a"),
        MemDest::new("mem:two-b"),
    ];
    let mut ws: Vec<WriteArchive> = ds
        .iter()
        .enumerate()
        .map(|(i, d)| init(d, &meta.path().join(i.to_string())))
        .collect();
    let images = [image(3, 40), changed(3, 40)];
    for (s, img) in (1..).zip(&images) {
        let reqs = [req(files.path(), "v", img)];
        let (one, two) = ws.split_at_mut(1);
        let single = run(&mut one[0], &reqs, &opts(s)).unwrap();
        let [x, y] = two else { unreachable!() };
        let mut targets = [
            Target {
                archive: x,
                volumes: None,
            },
            Target {
                archive: y,
                volumes: None,
            },
        ];
        let multi = run_multi(&mut targets, &reqs, &opts(s)).unwrap();
        for r in &multi {
            assert!(r.failed.is_none());
            let (m, o) = (&r.reports[0], &single[0]);
            assert_eq!(
                (
                    m.chunks_changed,
                    m.chunks_data,
                    m.chunks_zero,
                    m.bytes_stored
                ),
                (
                    o.chunks_changed,
                    o.chunks_data,
                    o.chunks_zero,
                    o.bytes_stored
                )
            );
        }
    }
    let want = volume_files(&ws[0], &ds[0]);
    assert!(want.keys().any(|k| k.contains("S_20260101-000002/")));
    for (w, d) in ws.iter().zip(&ds).skip(1) {
        assert!(volume_files(w, d) == want, "{} differs", d.files().len());
    }
    let got = sessions(&ws[1], files.path(), "v");
    assert_eq!(got.len(), 2);
    assert!(got[0].1 == images[0] && got[1].1 == images[1]);
}

#[test]
fn a_session_is_committed_only_when_something_changed() {
    let (meta, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d = MemDest::new("mem:commit");
    let mut wa = init(&d, meta.path());
    let first = image(5, 8);
    let r = run(&mut wa, &[req(files.path(), "v", &first)], &opts(1)).unwrap();
    assert!(r[0].first && r[0].session.is_some());
    // Unchanged: nothing recorded, nothing stored.
    let before = d.files();
    let r = run(&mut wa, &[req(files.path(), "v", &first)], &opts(2)).unwrap();
    assert_eq!((r[0].session.as_ref(), r[0].chunks_changed), (None, 0));
    assert_eq!(wa.volume("v").unwrap().sessions.len(), 1);
    assert_eq!(d.files(), before);
    // A dry run of a change counts what it would store and writes nothing.
    let next = changed(5, 8);
    let dry = SendOptions {
        dry_run: true,
        ..opts(3)
    };
    let r = run(&mut wa, &[req(files.path(), "v", &next)], &dry).unwrap();
    assert!(r[0].session.is_none() && r[0].bytes_stored > 0);
    assert_eq!((r[0].chunks_data, r[0].chunks_zero), (3, 2));
    assert_eq!(d.files(), before);
    // The change itself: data in chunk 1 and the two new chunks at the end (the old partial
    // end chunk is all zero now, like the chunk zeroed).
    let r = run(&mut wa, &[req(files.path(), "v", &next)], &opts(4)).unwrap();
    assert_eq!(r[0].session.as_deref(), Some(name(4).to_string().as_str()));
    assert_eq!((r[0].chunks_data, r[0].chunks_zero), (3, 2));
    let got = sessions(&wa, files.path(), "v");
    assert!(got.len() == 2 && got[0].1 == first && got[1].1 == next);
    // With send_unchanged, an unchanged volume still gets a session.
    let again = SendOptions {
        send_unchanged: true,
        ..opts(5)
    };
    let r = run(&mut wa, &[req(files.path(), "v", &next)], &again).unwrap();
    assert!(r[0].session.is_some() && r[0].chunks_changed == 0);
    assert_eq!(wa.volume("v").unwrap().sessions.len(), 3);
}

/// Holes in the source are zeros without being read: only the data chunks are read, and the
/// session reads back exactly.
#[test]
fn holes_are_not_read() {
    let (meta, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d = MemDest::new("mem:holes");
    let mut wa = init(&d, meta.path());
    let src = files.path().join("sparse");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(64 * CS).unwrap();
    let data = image(7, 1);
    use std::os::unix::fs::FileExt;
    for at in [3u64, 40] {
        f.write_all_at(&data[..CS as usize], at * CS).unwrap();
    }
    drop(f);
    let reqs = [SendRequest {
        volume: "s".into(),
        source: src.clone(),
        reflink: false,
    }];
    let r = run(&mut wa, &reqs, &opts(1)).unwrap();
    assert!(
        r[0].chunks_read < 64,
        "read {} of 64 chunks",
        r[0].chunks_read
    );
    assert_eq!(r[0].chunks_data, 2);
    assert_eq!(
        sessions(&wa, files.path(), "s")[0].1,
        std::fs::read(&src).unwrap()
    );
}
