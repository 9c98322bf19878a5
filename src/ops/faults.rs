//! Fault injection, in-process: send, prune and delete run on an in-memory destination that
//! dies at their N-th change or sync, for every N; the destination is then found as a
//! restarted machine would find it, with none of the changes since the last sync (power
//! loss), half of them, or all (`kill -9`). Opening it for writing must recover it, and then:
//! every committed session is there and reads back exactly, no session selected to keep is
//! lost, and the archive takes the next send. Recovery is itself killed at every step too.

use std::path::Path;

use crate::archive::{Archive, InitParams, Location, MemDest, OpenOptions, WriteArchive};
use crate::auth::Auth;

use crate::error::Result;
use crate::format::SessionName;
use crate::ops::{self, prune::PruneOptions, send::SendOptions, SessionSel};

pub(crate) const CS: u64 = 65536;

pub(crate) fn auth() -> Auth {
    Auth {
        passcmd: None,
        authmin: 0,
        cached_only: false,
    }
}

pub(crate) fn open(d: &MemDest, meta: &Path) -> Result<WriteArchive> {
    let auth = auth();
    Archive::open_write(
        Location::memory(d.clone()),
        &OpenOptions {
            auth: &auth,
            meta_dir: Some(meta),
            allow_rollback: false,
            force_retry: true,
            lock: Default::default(),
            tuning: Default::default(),
            progress: Default::default(),
        },
    )
}

/// The archive on `d` opened for reading, as a mount or server opens it (local state in
/// `meta`, if any).
pub(crate) fn open_read(d: &MemDest, meta: Option<&Path>) -> Result<Archive> {
    let auth = auth();
    Archive::open_read(
        Location::memory(d.clone()),
        &OpenOptions {
            auth: &auth,
            meta_dir: meta,
            allow_rollback: true,
            force_retry: false,
            lock: Default::default(),
            tuning: Default::default(),
            progress: Default::default(),
        },
    )
}

pub(crate) fn name(i: u32) -> SessionName {
    SessionName::parse(&format!("S_20260101-0000{i:02}")).unwrap()
}

/// A volume image: random data in a few chunks, zeros and holes elsewhere.
pub(crate) fn image(seed: u8, chunks: u64) -> Vec<u8> {
    let mut v = vec![0u8; (chunks * CS) as usize + 1234];
    let mut x = (seed as u64).wrapping_mul(0x9e3779b97f4a7c15) | 1;
    for c in 0..chunks {
        if (c + seed as u64) % 3 == 0 {
            continue; // a zero chunk
        }
        for b in &mut v[(c * CS) as usize..(c * CS + CS / 2) as usize] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    v
}

pub(crate) fn send(
    wa: &mut WriteArchive,
    files: &Path,
    vol: &str,
    s: u32,
    data: &[u8],
) -> Result<()> {
    send_with(wa, files, vol, s, data, None).map(drop)
}

/// [`send`] with a checkpoint interval; returns the volume's report.
fn send_with(
    wa: &mut WriteArchive,
    files: &Path,
    vol: &str,
    s: u32,
    data: &[u8],
    checkpoint_bytes: Option<u64>,
) -> Result<ops::send::VolumeReport> {
    let src = files.join(format!("{vol}.{s}.src"));
    std::fs::write(&src, data).unwrap();
    let mut r = ops::send::run(
        wa,
        &[ops::send::SendRequest {
            volume: vol.into(),
            source: src,
            reflink: false,
        }],
        &SendOptions {
            session: Some(name(s)),
            send_unchanged: true,
            checkpoint_bytes,
            ..Default::default()
        },
    )?;
    Ok(r.remove(0))
}

/// Every session of `vol`, received.
pub(crate) fn sessions(a: &Archive, files: &Path, vol: &str) -> Vec<(SessionName, Vec<u8>)> {
    let Some(v) = a.volume(vol) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in &v.sessions {
        let to = files.join("out.img");
        let _ = std::fs::remove_file(&to);
        ops::receive::receive(
            a,
            vol,
            &SessionSel::Exact(s.name.clone()),
            &ops::receive::ReceiveOptions {
                save_to: to.clone(),
                confirm: &|_| Ok(()),
                mode: ops::receive::Mode::Full,
                skip_corrupt: false,
                require_snapshot: false,
            },
        )
        .unwrap_or_else(|e| panic!("{vol} {}: {e}", s.name));
        ops::verify::verify(a, vol, &SessionSel::Exact(s.name.clone()))
            .unwrap_or_else(|e| panic!("verify {vol} {}: {e}", s.name));
        out.push((s.name.clone(), std::fs::read(&to).unwrap()));
    }
    out
}

/// A copy of local state as the crashed run left it (each restart goes on from it).
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// What a restarted machine may find: nothing unsynced kept, half, or all of it.
pub(crate) fn restarts(d: &MemDest) -> Vec<MemDest> {
    let n = d.unsynced();
    let mut keeps = vec![0, n / 2, n];
    keeps.dedup();
    keeps.into_iter().map(|k| d.after_crash(k)).collect()
}

/// The fault-injection harness: runs `op` on fresh copies of `template`, once undisturbed to
/// count its steps, then killed at each step `n`; every destination a restarted machine may
/// find ([`restarts`]) is opened for writing (which must recover it) with a copy of the local
/// state the killed run left, and handed to `check` with `n` and the number of steps. Returns
/// that number.
pub(crate) fn crash_at_every_step<T>(
    template: &MemDest,
    op: &dyn Fn(&mut WriteArchive) -> Result<T>,
    check: &mut dyn FnMut(&mut WriteArchive, u64, u64),
) -> u64 {
    let steps = {
        let meta = tempfile::tempdir().unwrap();
        let d = template.after_crash(usize::MAX);
        let mut wa = open(&d, meta.path()).unwrap();
        let before = d.steps();
        op(&mut wa).unwrap();
        d.steps() - before
    };
    for n in 1..=steps {
        let meta = tempfile::tempdir().unwrap();
        let d = template.after_crash(usize::MAX);
        {
            let mut wa = open(&d, meta.path()).unwrap();
            d.crash_at(n);
            assert!(op(&mut wa).is_err(), "step {n} of {steps}");
        }
        for found in restarts(&d) {
            let local = tempfile::tempdir().unwrap();
            copy_dir(meta.path(), local.path());
            let mut wa = open(&found, local.path())
                .unwrap_or_else(|e| panic!("recovery after step {n} of {steps}: {e}"));
            check(&mut wa, n, steps);
        }
    }
    steps
}

/// [`crash_at_every_step`] for an operation that must leave the archive as it was or done:
/// `check` judges each recovered archive, then again after a later send.
fn every_step(
    template: &MemDest,
    op: &dyn Fn(&mut WriteArchive, &Path) -> Result<()>,
    check: &dyn Fn(&mut WriteArchive, &Path, bool),
) -> u64 {
    let files = tempfile::tempdir().unwrap();
    let steps = crash_at_every_step(template, &|wa| op(wa, files.path()), &mut |wa, n, steps| {
        // Recovery leaves nothing for arch-check to report: no leftovers (session
        // directories included), no volume damaged or still on its volinfo.bak.
        let left = wa.leftovers(true).unwrap();
        assert!(left.is_empty(), "after step {n} of {steps}: {left:?}");
        assert!(
            wa.damaged().is_empty(),
            "after step {n}: {:?}",
            wa.damaged()
        );
        assert!(wa.interrupted_commits().is_empty());
        check(wa, files.path(), false);
        // The archive takes the next send, and still reads back.
        send(wa, files.path(), "vol", 40, &image(40, 5)).unwrap();
        check(wa, files.path(), true);
    });
    assert!(steps > 5, "the operation did {steps} steps");
    steps
}

/// An archive with sessions 1..=k of "vol" (and "other" with one session).
fn template(k: u32) -> (MemDest, Vec<Vec<u8>>) {
    template_on(MemDest::new("mem:faults"), k)
}

/// A new unencrypted archive on `d` (zstd-3, `CS` chunks), its local state in `meta`.
pub(crate) fn init(d: &MemDest, meta: &Path) -> WriteArchive {
    Archive::init(
        Location::memory(d.clone()),
        &InitParams {
            compression: crate::archive::Compressor::new(crate::archive::Compression::Zstd, 3)
                .unwrap(),
            chunksize: CS,
            cipher: None,
        },
        &auth(),
        Some(meta),
    )
    .unwrap()
}

pub(crate) fn template_on(d: MemDest, k: u32) -> (MemDest, Vec<Vec<u8>>) {
    let meta = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut wa = init(&d, meta.path());
    let mut images = Vec::new();
    for s in 1..=k {
        let img = image(s as u8, 6);
        send(&mut wa, files.path(), "vol", s, &img).unwrap();
        images.push(img);
    }
    send(&mut wa, files.path(), "other", 1, &image(99, 3)).unwrap();
    (d, images)
}

pub(crate) fn assert_sessions(
    got: &[(SessionName, Vec<u8>)],
    want: &[(u32, &Vec<u8>)],
    what: &str,
) {
    for (s, data) in got {
        if s == &name(40) {
            continue;
        }
        let expected = want
            .iter()
            .find(|(n, _)| name(*n) == *s)
            .unwrap_or_else(|| panic!("{what}: unknown session {s}"));
        assert!(expected.1 == data, "{what}: session {s} reads back wrong");
    }
}

#[test]
fn a_send_killed_at_any_step_loses_nothing_committed() {
    let (template, images) = template(1);
    let next = image(7, 8);
    let steps = every_step(
        &template,
        &|wa, files| send(wa, files, "vol", 2, &next),
        &|wa, files, _| {
            let got = sessions(wa, files, "vol");
            assert!(got.iter().any(|(s, _)| *s == name(1)), "session 1 lost");
            assert_sessions(&got, &[(1, &images[0]), (2, &next)], "send");
            assert_eq!(sessions(wa, files, "other").len(), 1);
        },
    );
    assert!(steps > 10);
}

#[test]
fn a_prune_killed_at_any_step_keeps_what_it_must() {
    let (template, images) = template(3);
    every_step(
        &template,
        &|wa, _| {
            ops::prune::run(
                wa,
                &["vol".to_string()],
                &PruneOptions {
                    session: Some("20260101-000002".into()),
                    ..Default::default()
                },
            )
            .map(drop)
        },
        &|wa, files, _| {
            let got = sessions(wa, files, "vol");
            for keep in [1, 3] {
                assert!(
                    got.iter().any(|(s, _)| *s == name(keep)),
                    "session {keep} lost"
                );
            }
            assert_sessions(
                &got,
                &[(1, &images[0]), (2, &images[1]), (3, &images[2])],
                "prune",
            );
        },
    );
}

#[test]
fn a_delete_killed_at_any_step_is_all_or_nothing() {
    let (template, images) = template(2);
    every_step(
        &template,
        &|wa, _| {
            let vid = wa.find("vol")?.vid.clone();
            ops::volume::delete(wa, &vid)
        },
        &|wa, files, sent_again| {
            let got = sessions(wa, files, "vol");
            let old: Vec<_> = got.iter().filter(|(s, _)| *s != name(40)).collect();
            // Either still whole, or gone (and then only the later send is there).
            assert!(
                old.len() == 2 || old.is_empty(),
                "a half-deleted volume: {:?}",
                old.iter().map(|(s, _)| s).collect::<Vec<_>>()
            );
            assert_sessions(&got, &[(1, &images[0]), (2, &images[1])], "delete");
            if !sent_again {
                assert_eq!(sessions(wa, files, "other").len(), 1);
            }
        },
    );
}

#[test]
fn recovery_killed_at_any_step_recovers_next_time() {
    let (template, images) = template(3);
    let files = tempfile::tempdir().unwrap();
    let prune = |wa: &mut WriteArchive| {
        ops::prune::run(
            wa,
            &["vol".to_string()],
            &PruneOptions {
                session: Some("20260101-000001,20260101-000002".into()),
                ..Default::default()
            },
        )
        .map(drop)
    };
    // A prune killed in its move phase (after the journal), then its recovery killed at each
    // of its steps.
    for n in [8, 14, 20] {
        let meta = tempfile::tempdir().unwrap();
        let d = template.after_crash(usize::MAX);
        {
            let mut wa = open(&d, meta.path()).unwrap();
            d.crash_at(n);
            let _ = prune(&mut wa);
        }
        let crashed = d.after_crash(usize::MAX);
        let recovery_steps = {
            let probe = crashed.after_crash(usize::MAX);
            let local = tempfile::tempdir().unwrap();
            copy_dir(meta.path(), local.path());
            let before = probe.steps();
            open(&probe, local.path()).unwrap();
            probe.steps() - before
        };
        for m in 1..=recovery_steps {
            let again = crashed.after_crash(usize::MAX);
            let attempt = tempfile::tempdir().unwrap();
            copy_dir(meta.path(), attempt.path());
            again.crash_at(m);
            assert!(open(&again, attempt.path()).is_err());
            for found in restarts(&again) {
                let local = tempfile::tempdir().unwrap();
                copy_dir(attempt.path(), local.path());
                let wa =
                    open(&found, local.path()).unwrap_or_else(|e| panic!("recovery {n}/{m}: {e}"));
                let got = sessions(&wa, files.path(), "vol");
                assert!(got.iter().any(|(s, _)| *s == name(3)), "session 3 lost");
                assert_sessions(
                    &got,
                    &[(1, &images[0]), (2, &images[1]), (3, &images[2])],
                    "recovery",
                );
            }
        }
    }
}

/// A send that checkpoints after every chunk, killed at each of its steps, then sent again from
/// the machine as it restarted (nothing unsynced kept, half, all): what the resumed send takes
/// is there (the record names only synced chunks), every session reads back exactly, and
/// nothing is left over.
#[test]
fn a_send_resumed_after_a_crash_at_any_step_reads_back_exactly() {
    resumed_after_a_crash_at_any_step(MemDest::new("mem:faults"));
}

/// The same where sessions are staged under their final names (object storage), so taking a
/// chunk moves it between two session directories.
#[test]
fn a_send_resumed_on_object_storage_after_a_crash_at_any_step_reads_back_exactly() {
    resumed_after_a_crash_at_any_step(MemDest::new("mem:faults").like_object_storage());
}

fn resumed_after_a_crash_at_any_step(d: MemDest) {
    let (template, images) = template_on(d, 1);
    let next = image(7, 8);
    let files = tempfile::tempdir().unwrap();
    let op = |wa: &mut WriteArchive, s| send_with(wa, files.path(), "vol", s, &next, Some(1));
    let mut taken = 0;
    crash_at_every_step(&template, &|wa| op(wa, 2), &mut |wa, n, _| {
        let r = op(wa, 3).unwrap_or_else(|e| panic!("resume after step {n}: {e}"));
        taken += r.chunks_reused;
        let got = sessions(wa, files.path(), "vol");
        assert!(
            got.iter().any(|(s, _)| *s == name(3)),
            "step {n}: no resumed session"
        );
        assert_sessions(&got, &[(1, &images[0]), (2, &next), (3, &next)], "resume");
        let left = wa.leftovers(true).unwrap();
        assert!(left.is_empty(), "after step {n}: {left:?}");
    });
    assert!(taken > 0, "no resumed send took anything");
}
