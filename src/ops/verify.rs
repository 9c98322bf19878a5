//! `verify`: read and check every chunk of a session without writing anything. The merged
//! view is rebuilt from the archive's own manifests (not from local state) and its `mfcs`
//! checked, then every data chunk is fetched, authenticated or hashed, decompressed and
//! length-checked.

use crate::archive::Archive;
use crate::error::Result;
use crate::ops::receive::ReadReport;
use crate::ops::SessionSel;

pub fn verify(archive: &Archive, name: &str, sel: &SessionSel) -> Result<ReadReport> {
    let vi = archive.find_index(name)?;
    let vol = &archive.volumes()[vi];
    let si = sel.select(vol)?;
    let ix = archive.merged_fresh(vi, si)?;
    let progress = archive.progress(ix.data_bytes(), "verify");
    let stats = archive.chunks().run(
        ix.locs(),
        |_, d| {
            progress.inc(d.len() as u64);
            Ok(())
        },
        |_, e| Err(e),
    )?;
    progress.finish();
    Ok(ReadReport {
        volume: name.into(),
        session: vol.sessions[si].name.to_string(),
        volsize: ix.volsize(),
        chunks: ix.chunks(),
        data_chunks: stats.chunks,
        chunks_written: None,
        chunks_skipped: 0,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use crate::archive::{
        Archive, Compression, Compressor, InitParams, Location, MemDest, OpenOptions,
    };
    use crate::ops::faults;
    use crate::progress::{Meter, Reporter, Reporting};
    use crate::tuning::Tuning;

    /// One task as reported.
    #[derive(Clone, Debug)]
    struct Seen {
        label: String,
        total: u64,
        done: u64,
        finished: bool,
    }

    /// Every task reported.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Seen>>>);

    struct Task(Recorder, usize);

    impl Reporter for Recorder {
        fn bytes(&self, total: u64, label: &str) -> Box<dyn Meter> {
            let mut log = self.0.lock();
            log.push(Seen {
                label: label.into(),
                total,
                done: 0,
                finished: false,
            });
            Box::new(Task(self.clone(), log.len() - 1))
        }
    }

    impl Meter for Task {
        fn inc(&self, n: u64) {
            self.0 .0.lock()[self.1].done += n;
        }
        fn finish(&self) {
            self.0 .0.lock()[self.1].finished = true;
        }
    }

    #[test]
    fn send_and_verify_report_their_bytes_to_the_reporter_the_archive_was_opened_with() {
        let (meta, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let d = MemDest::new("mem:progress");
        let auth = faults::auth();
        let params = InitParams {
            compression: Compressor::new(Compression::Zstd, 3).unwrap(),
            chunksize: faults::CS,
            cipher: None,
        };
        drop(
            Archive::init(
                Location::memory(d.clone()),
                &params,
                &auth,
                Some(meta.path()),
            )
            .unwrap(),
        );
        let rec = Recorder::default();
        let mut wa = Archive::open_write(
            Location::memory(d.clone()),
            &OpenOptions {
                auth: &auth,
                meta_dir: Some(meta.path()),
                allow_rollback: false,
                force_retry: false,
                lock: Default::default(),
                tuning: Tuning {
                    workers: Some(2),
                    ..Default::default()
                },
                progress: Reporting::to(Arc::new(rec.clone())),
            },
        )
        .unwrap();
        let img = faults::image(1, 6);
        faults::send(&mut wa, files.path(), "vol", 1, &img).unwrap();
        let r = super::verify(&wa, "vol", &crate::ops::SessionSel::Newest).unwrap();
        let log = rec.0.lock().clone();
        let labels: Vec<&str> = log.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["send", "verify"], "{log:?}");
        assert_eq!(
            log[0].total,
            img.len() as u64,
            "send counts the volume's bytes"
        );
        // Verify's total counts the last, partial chunk whole (the bar is cleared at the end).
        let v = &log[1];
        assert!(
            r.data_chunks > 0 && 0 < v.done && v.done <= v.total,
            "{log:?}"
        );
        assert!(
            log.iter().all(|t| t.finished),
            "every task finished: {log:?}"
        );
    }
}
