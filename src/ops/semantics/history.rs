//! Histories of sends (write, grow, shrink, unchanged, zeroed) read back exactly for every
//! compression and chunk size; several volumes share a session; `--session` picks by tag,
//! exact name or "not after". Was `tests/cli/roundtrip.rs` (`history`,
//! `several_volumes_share_a_session_and_selection_works`), which keeps the checker's part.

use super::{init_with, round_trip_history, send_as, tag, Image};
use crate::archive::{Compression, MemDest};
use crate::error::Error;
use crate::ops::faults::{name, sessions};
use crate::ops::send::SendOptions;
use crate::ops::{self, SessionSel};

fn history(compression: Compression, level: i32, factor: u32, seed: u64) {
    let what = format!("{compression:?}:{level} cf{factor}");
    let (meta, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d = MemDest::new("mem:history");
    let cs = 32768usize << factor;
    let mut wa = init_with(&d, meta.path(), compression, level, cs as u64);
    let mut recorded = Vec::new();
    for (i, (data, records)) in round_trip_history(cs, seed).into_iter().enumerate() {
        let s = i as u32 + 1;
        let r = send_as(
            &mut wa,
            files.path(),
            s,
            &[("vol", &data)],
            SendOptions::default(),
        );
        assert_eq!(r[0].session.is_some(), records, "{what} step {i}");
        if records {
            recorded.push((name(s), data));
        }
    }
    // send_unchanged records an empty session.
    let last = recorded.last().unwrap().1.clone();
    let r = send_as(
        &mut wa,
        files.path(),
        20,
        &[("vol", &last)],
        SendOptions {
            send_unchanged: true,
            ..Default::default()
        },
    );
    assert_eq!(r[0].chunks_changed, 0, "{what}");
    assert!(r[0].session.is_some(), "{what}");
    recorded.push((name(20), last));

    let vol = wa.volume("vol").unwrap();
    assert_eq!(vol.sessions.len(), recorded.len(), "{what}");
    assert!(
        !ops::list::session_changed(vol, vol.sessions.len() - 1),
        "{what}: the unchanged session is listed unchanged"
    );
    // Each session received (exact size and bytes) and verified.
    let got = sessions(&wa, files.path(), "vol");
    assert_eq!(got.len(), recorded.len(), "{what}");
    for ((gn, gd), (wn, wd)) in got.iter().zip(&recorded) {
        assert_eq!(gn, wn, "{what}");
        assert_eq!(gd.len(), wd.len(), "{what} {gn}: size");
        assert!(gd == wd, "{what} {gn}: reads back wrong");
    }
}

#[test]
fn history_zstd_default_chunks() {
    history(Compression::Zstd, 3, 3, 1);
}

#[test]
fn history_zlib_64k_chunks() {
    history(Compression::Zlib, 4, 1, 2);
}

#[test]
fn history_bz2_128k_chunks() {
    history(Compression::Bz2, 9, 2, 3);
}

#[test]
fn history_zstd_high_level_2m_chunks() {
    history(Compression::Zstd, 19, 6, 4);
}

#[test]
fn history_zlib_level0_512k_chunks() {
    history(Compression::Zlib, 0, 4, 5);
}

#[test]
fn empty_and_tiny_volumes() {
    let (meta, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d = MemDest::new("mem:tiny");
    let mut wa = init_with(&d, meta.path(), Compression::Zstd, 3, 65536);
    let r = send_as(
        &mut wa,
        files.path(),
        1,
        &[("empty", b""), ("tiny", b"x")],
        SendOptions::default(),
    );
    assert!(r.iter().all(|r| r.session.is_some()));
    assert_eq!(sessions(&wa, files.path(), "empty")[0].1, b"");
    assert_eq!(sessions(&wa, files.path(), "tiny")[0].1, b"x");
}

#[test]
fn several_volumes_share_a_session_and_selection_works() {
    let (meta, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let d = MemDest::new("mem:select");
    let mut wa = init_with(&d, meta.path(), Compression::Zstd, 3, 65536);
    let a1 = Image::new(1).random(300_000).data.clone();
    let b = Image::new(2).text(500_000).data.clone();
    let tagged = SendOptions {
        tags: vec![tag("first", "First one")],
        ..Default::default()
    };
    let r = send_as(
        &mut wa,
        files.path(),
        1,
        &[("disks/a.img", &a1), ("b.img", &b)],
        tagged,
    );
    assert_eq!(r[0].session, r[1].session);
    assert_eq!(r[0].session.as_deref(), Some(name(1).as_str()));
    // Two seconds later, so that "first + 1 s" falls between the sessions.
    let a2 = Image::new(3).random(300_000).data.clone();
    let r = send_as(
        &mut wa,
        files.path(),
        3,
        &[("disks/a.img", &a2), ("b.img", &b)],
        SendOptions::default(),
    );
    assert!(r[0].session.is_some());
    assert!(r[1].session.is_none(), "b did not change");

    let vol = wa.volume("disks/a.img").unwrap();
    let pick = |sel: &SessionSel| sel.select(vol).map(|i| vol.sessions[i].name.clone());
    // ^tag picks the tagged session.
    assert_eq!(pick(&SessionSel::Tag("first".into())).unwrap(), name(1));
    let got = sessions(&wa, files.path(), "disks/a.img");
    assert_eq!(got[0].1, a1);
    assert_eq!(got[1].1, a2);
    // Strict selection needs an exact name; strict off takes the newest not after the time.
    let now = chrono::Local::now().naive_local();
    let after_first = name(2).date().to_string();
    let strict = SessionSel::parse(Some(&after_first), true, now).unwrap();
    assert!(matches!(pick(&strict), Err(Error::Selection(_))));
    let loose = SessionSel::parse(Some(&after_first), false, now).unwrap();
    assert_eq!(pick(&loose).unwrap(), name(1));
    assert_eq!(pick(&SessionSel::Newest).unwrap(), name(3));
    ops::verify::verify(&wa, "disks/a.img", &loose).unwrap();
    // The tag and its description are recorded with the session, in both volumes.
    for v in ["disks/a.img", "b.img"] {
        let tags = &wa.volume(v).unwrap().sessions[0].info.tags;
        assert_eq!(tags, &[tag("first", "First one")], "{v}");
    }
}
