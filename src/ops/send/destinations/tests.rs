//! A send to several destinations, in-process on in-memory destinations (see
//! [`crate::ops::faults`] for the helpers): which destination misses what, the record of it,
//! retention per archive.

use std::path::{Path, PathBuf};

use crate::archive::MemDest;
use crate::error::Error;
use crate::ops::faults::init;
use crate::ops::faults::{self, image, name, sessions};
use crate::ops::send::tests::req;

use super::*;

/// In-memory destinations by URL, each with its own local state; an URL not listed has no
/// archive (opening it fails).
struct Fleet {
    dests: Vec<(String, MemDest, PathBuf)>,
    meta: tempfile::TempDir,
    files: tempfile::TempDir,
}

impl Fleet {
    /// Archives at `urls`, each holding sessions 1..=`k` of volume "v".
    fn new(urls: &[&str], k: u32) -> Fleet {
        let meta = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let dests = urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let d = MemDest::new(url);
                let m = meta.path().join(i.to_string());
                let mut wa = init(&d, &m);
                for s in 1..=k {
                    faults::send(&mut wa, files.path(), "v", s, &image(s as u8, 4)).unwrap();
                }
                (url.to_string(), d, m)
            })
            .collect();
        Fleet { dests, meta, files }
    }

    fn dest(&self, url: &str) -> Option<(&MemDest, &PathBuf)> {
        self.dests
            .iter()
            .find(|(u, _, _)| u == url)
            .map(|(_, d, m)| (d, m))
    }

    fn open(&self, urls: &[&str]) -> Result<Destinations> {
        let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
        Destinations::open(&urls, |url| match self.dest(url) {
            Some((d, m)) => faults::open(d, m),
            None => Err(Error::ArchiveNotFound { url: url.into() }),
        })
    }

    fn archive(&self, url: &str) -> WriteArchive {
        let (d, m) = self.dest(url).unwrap();
        faults::open(d, m).unwrap()
    }

    /// The run's end: every request's volume, retention keeping the last `keep` sessions.
    fn finish(&self, reqs: &[SendRequest], keep: usize) -> FinishOptions<'_> {
        FinishOptions {
            volumes: reqs.iter().map(|r| r.volume.clone()).collect(),
            retention: (keep > 0).then(|| prune::Policy {
                last: keep,
                ..Default::default()
            }),
            now: chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
                .unwrap()
                .and_hms_opt(12, 0, 0)
                .unwrap(),
            dry_run: false,
            meta_dir: self.meta.path(),
        }
    }
}

fn opts(s: u32) -> SendOptions {
    SendOptions {
        session: Some(name(s)),
        ..Default::default()
    }
}

fn volumes(d: &DestinationReport) -> Vec<&str> {
    d.volumes.iter().map(|r| r.volume.as_str()).collect()
}

/// One destination that cannot be opened and one that dies part way through the send: the
/// third gets everything; both others miss every volume, in the report and in
/// `outstanding.json` (with why), and a later send that reaches them clears the record.
#[test]
fn destinations_that_fail_at_open_or_while_writing_miss_what_they_did_not_get() {
    let f = Fleet::new(&["mem:dies", "mem:lives"], 0);
    let mut dests = f.open(&["mem:down", "mem:dies", "mem:lives"]).unwrap();
    f.dest("mem:dies").unwrap().0.crash_at(3);
    let (a, b) = (image(1, 5), image(2, 5));
    let reqs = [req(f.files.path(), "a", &a), req(f.files.path(), "b", &b)];
    dests.send(&reqs, &opts(1)).unwrap();
    let report = dests.finish(&f.finish(&reqs, 0));
    let order: Vec<&str> = report
        .destinations
        .iter()
        .map(|d| d.dest.as_str())
        .collect();
    assert_eq!(order, ["mem:dies", "mem:lives", "mem:down"]);
    let [dies, lives, down] = &report.destinations[..] else {
        unreachable!()
    };
    assert!(lives.error.is_none() && lives.outstanding.is_empty());
    assert_eq!(volumes(lives), ["a", "b"]);
    assert!(matches!(down.error, Some(Error::ArchiveNotFound { .. })));
    assert!(dies.error.is_some());
    for d in [dies, down] {
        assert_eq!(d.outstanding, ["a", "b"], "{}", d.dest);
    }
    assert_eq!(report.outstanding().len(), 2);
    let lives = f.archive("mem:lives");
    assert_eq!(sessions(&lives, f.files.path(), "a")[0].1, a);
    assert_eq!(sessions(&lives, f.files.path(), "b")[0].1, b);

    let rec = outstanding::load(f.meta.path()).unwrap();
    assert_eq!(rec.keys().collect::<Vec<_>>(), ["mem:dies", "mem:down"]);
    let when = name(1).to_string();
    for m in rec.values() {
        assert_eq!(m.volumes.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(m.volumes.values().all(|w| *w == when) && !m.error.is_empty());
    }
    assert!(rec["mem:down"].error.contains("no Wyng archive"));

    // The next send reaches "mem:down" (now made) and catches "a" up there: it no longer
    // misses "a"; "mem:dies" (not in this send) still misses both.
    let d = MemDest::new("mem:down");
    drop(init(&d, &f.meta.path().join("down")));
    let urls = ["mem:down".to_string()];
    let mut dests =
        Destinations::open(&urls, |_| faults::open(&d, &f.meta.path().join("down"))).unwrap();
    dests.send(&reqs[..1], &opts(2)).unwrap();
    let report = dests.finish(&f.finish(&reqs[..1], 0));
    assert!(report.outstanding().is_empty());
    let rec = outstanding::load(f.meta.path()).unwrap();
    assert_eq!(rec["mem:down"].volumes.keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(rec["mem:dies"].volumes.len(), 2);
}

/// Retention prunes in each archive that took the send, by its own sessions; an archive whose
/// send failed keeps every session.
#[test]
fn retention_applies_per_archive_and_only_where_the_send_committed() {
    let f = Fleet::new(&["mem:one", "mem:two", "mem:dies"], 3);
    let mut dests = f.open(&["mem:one", "mem:two", "mem:dies"]).unwrap();
    f.dest("mem:dies").unwrap().0.crash_at(2);
    let reqs = [req(f.files.path(), "v", &image(9, 4))];
    dests.send(&reqs, &opts(4)).unwrap();
    let report = dests.finish(&f.finish(&reqs, 2));
    for d in &report.destinations[..2] {
        assert!(d.error.is_none(), "{}", d.dest);
        let r = &d.volumes[0];
        assert_eq!(r.session.as_deref(), Some(name(4).to_string().as_str()));
        assert_eq!(r.retention_removed.len(), 2, "{}", d.dest);
        let wa = f.archive(&d.dest);
        let kept: Vec<_> = wa
            .volume("v")
            .unwrap()
            .sessions
            .iter()
            .map(|s| s.name.clone())
            .collect();
        assert_eq!(kept, [name(3), name(4)], "{}", d.dest);
    }
    assert!(report.destinations[2].error.is_some());
    let (d, m) = f.dest("mem:dies").unwrap();
    let wa = faults::open(&d.after_crash(usize::MAX), m).unwrap();
    assert_eq!(wa.volume("v").unwrap().sessions.len(), 3);
}

/// With one destination its errors are the run's; with several, the run fails only when
/// none opens (with the first one's error). A dry run records nothing.
#[test]
fn one_destination_fails_the_run_several_only_when_none_opens() {
    let f = Fleet::new(&["mem:up"], 0);
    assert!(matches!(
        f.open(&["mem:down"]),
        Err(Error::ArchiveNotFound { url }) if url == "mem:down"
    ));
    assert!(matches!(
        f.open(&["mem:gone", "mem:down"]),
        Err(Error::ArchiveNotFound { url }) if url == "mem:gone"
    ));
    let mut dests = f.open(&["mem:up", "mem:down"]).unwrap();
    assert_eq!(dests.archives().count(), 1);
    let reqs = [req(f.files.path(), "a", &image(1, 3))];
    let dry = SendOptions {
        dry_run: true,
        ..opts(1)
    };
    dests.send(&reqs, &dry).unwrap();
    let report = dests.finish(&FinishOptions {
        dry_run: true,
        ..f.finish(&reqs, 1)
    });
    assert_eq!(
        report.outstanding(),
        [("mem:down".into(), vec!["a".into()])]
    );
    assert!(report.destinations[0].volumes[0].session.is_none());
    assert!(outstanding::load(f.meta.path()).unwrap().is_empty());
    assert!(!Path::new(&f.meta.path().join("outstanding.json")).exists());
}
