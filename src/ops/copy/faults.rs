//! A copy killed at every change and sync of its destination (in-process fault injection, see
//! `ops::faults`), then found as a restarted machine finds it (nothing unsynced kept, half,
//! all): recovery succeeds, every session the copy committed reads back as the source's,
//! nothing is left over, and the next run completes the copy, taking what was staged and
//! recorded. On a destination with atomic renames and on one staging under final names
//! (object storage).

use super::{run, CopyOptions};
use crate::archive::{Archive, MemDest, WriteArchive};
use crate::ops::faults::{assert_sessions, crash_at_every_step, init, sessions, template_on};

fn source(d: &MemDest) -> Archive {
    crate::ops::faults::open_read(d, None).unwrap()
}

fn options(session: Option<&str>) -> CopyOptions {
    CopyOptions {
        volumes: vec!["vol".into(), "other".into()],
        session: session.map(str::to_string),
        checkpoint_bytes: Some(1),
        ..Default::default()
    }
}

/// A copy holding the source's first session of "vol".
fn copy_template(src: &Archive, d: MemDest) -> MemDest {
    let meta = tempfile::tempdir().unwrap();
    let mut wa = init(&d, meta.path());
    let mut o = options(Some("20260101-000001"));
    o.volumes.truncate(1);
    run(src, &mut wa, &o).unwrap();
    d
}

fn killed_at_every_step(target: MemDest) {
    let (src_d, images) = template_on(MemDest::new("mem:source"), 3);
    let src = source(&src_d);
    let template = copy_template(&src, target);
    let files = tempfile::tempdir().unwrap();
    let want: Vec<(u32, &Vec<u8>)> = (1..=3).map(|s| (s, &images[s as usize - 1])).collect();
    let op = |wa: &mut WriteArchive| run(&src, wa, &options(None));
    let mut taken = 0;
    let steps = crash_at_every_step(&template, &op, &mut |wa, n, _| {
        let got = sessions(wa, files.path(), "vol");
        assert!(!got.is_empty(), "step {n}: the first session was lost");
        assert_sessions(&got, &want, "a killed copy");
        let r = op(wa).unwrap_or_else(|e| panic!("resume after step {n}: {e}"));
        taken += r.chunks_reused;
        let got = sessions(wa, files.path(), "vol");
        assert_eq!(got.len(), 3, "step {n}");
        assert_sessions(&got, &want, "a resumed copy");
        assert_eq!(
            sessions(wa, files.path(), "other"),
            sessions(&src, files.path(), "other")
        );
        let left = wa.leftovers(true).unwrap();
        assert!(left.is_empty(), "after step {n}: {left:?}");
    });
    assert!(steps > 10, "{steps} steps");
    assert!(taken > 0, "no resumed copy took anything");
}

#[test]
fn a_copy_killed_at_any_step_keeps_the_copy_valid_and_resumes() {
    killed_at_every_step(MemDest::new("mem:copy"));
}

#[test]
fn a_copy_to_object_storage_killed_at_any_step_resumes() {
    killed_at_every_step(MemDest::new("mem:copy").like_object_storage());
}
