//! `send`: back up volumes into new sessions.
//!
//! The pipeline streams and uses every core while the manifest stays in address order:
//! a reader thread reads chunks by position, one worker per core tests for zeros, compresses,
//! hashes, compares with the previous merged manifest and writes changed chunk files into
//! `S-tmp`, and this thread puts results back in address order to build the manifest and its
//! checksum. A token channel bounds the chunks in flight, so memory does not grow with the
//! volume (only the previous merged manifest is held: ~36 bytes per chunk).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::bounded;

use crate::archive::{Archive, SESSION_TMP};
use crate::error::{Error, Result};
use crate::format::manifest::{chunk_count, chunk_len, push_line};
use crate::format::{chunk_rel_path, ChunkRef, Merged, SessionInfo, SessionName, Tag};
use crate::ops::{is_all_zero, workers};
use crate::progress::Progress;
use crate::source::{Scan, Source};

pub struct SendRequest {
    pub volume: String,
    pub source: PathBuf,
}

#[derive(Default)]
pub struct SendOptions {
    /// Record a session even when nothing changed.
    pub send_unchanged: bool,
    pub tags: Vec<Tag>,
    /// Description for volumes this send creates.
    pub volume_desc: String,
}

#[derive(Debug, serde::Serialize)]
pub struct VolumeReport {
    pub volume: String,
    /// `None` when nothing changed and no session was recorded.
    pub session: Option<String>,
    pub volsize: u64,
    pub chunks_read: u64,
    pub chunks_changed: u64,
    pub bytes_read: u64,
    pub bytes_stored: u64,
}

pub fn run(
    archive: &mut Archive,
    reqs: &[SendRequest],
    opts: &SendOptions,
) -> Result<Vec<VolumeReport>> {
    archive.recover()?;
    let mut seen = std::collections::HashSet::new();
    for r in reqs {
        if !seen.insert(&r.volume) {
            return Err(Error::Usage(format!(
                "volume '{}' is named twice",
                r.volume
            )));
        }
    }
    // Open every source first, so a typo fails before anything is written.
    let sources = reqs
        .iter()
        .map(|r| Source::open(&r.source))
        .collect::<Result<Vec<_>>>()?;
    let name = session_name(archive, reqs)?;
    let mut reports = Vec::new();
    for (req, src) in reqs.iter().zip(&sources) {
        let idx = match archive.volume_index(&req.volume) {
            Some(i) => i,
            None => archive.new_volume(&req.volume, &opts.volume_desc)?,
        };
        reports.push(send_volume(archive, idx, src, &name, opts, Scan::Full)?);
    }
    Ok(reports)
}

/// The session name for this run: the local time, shared by all volumes (format §3.3). If a
/// volume already has a session of that name (two sends within a second), wait for the clock.
fn session_name(archive: &Archive, reqs: &[SendRequest]) -> Result<SessionName> {
    for _ in 0..3 {
        let name = SessionName::from_time(chrono::Local::now());
        let taken = reqs.iter().any(|r| {
            archive
                .volume(&r.volume)
                .is_some_and(|v| v.session_index(&name).is_some())
        });
        if !taken {
            return Ok(name);
        }
        std::thread::sleep(std::time::Duration::from_millis(
            1000 - chrono::Local::now().timestamp_subsec_millis().min(999) as u64,
        ));
    }
    Err(Error::Other(
        "a session with this time's name already exists (is the clock set back?)".into(),
    ))
}

enum Outcome {
    Same,
    Changed(ChunkRef, u64),
}

fn send_volume(
    archive: &mut Archive,
    vol_idx: usize,
    src: &Source,
    name: &SessionName,
    opts: &SendOptions,
    scan: Scan,
) -> Result<VolumeReport> {
    let Scan::Full = scan;
    let vol = &archive.volumes[vol_idx];
    let vid = vol.vid.clone();
    let cs = archive.chunksize();
    let old: Option<Merged> = match vol.sessions.len() {
        0 => None,
        n => Some(archive.merged(vol, n - 1)?),
    };
    let last = vol.last().cloned();
    let n = chunk_count(src.size, cs);
    archive.begin_session(&vid)?;
    tracing::info!(
        "sending {} ({} bytes, {n} chunks) as {name}",
        vol.name(),
        src.size
    );

    let dest = &*archive.dest;
    let codec = &archive.codec;
    let progress = Progress::bytes(src.size, "send");
    let workers = workers();
    let inflight = workers * 4;
    let abort = AtomicBool::new(false);
    let (tok_tx, tok_rx) = bounded::<()>(inflight);
    for _ in 0..inflight {
        tok_tx.send(()).expect("receiver alive");
    }
    let (job_tx, job_rx) = bounded::<(u64, Vec<u8>)>(inflight);
    let (res_tx, res_rx) = bounded::<Result<(u64, Outcome)>>(inflight);

    let mut manifest = String::new();
    let mut crc = crc32fast::Hasher::new();
    let mut line = String::with_capacity(64);
    let (mut changed, mut stored) = (0u64, 0u64);
    let mut first_err: Option<Error> = None;

    std::thread::scope(|s| {
        let reader_res = res_tx.clone();
        let abort_r = &abort;
        s.spawn(move || {
            for idx in 0..n {
                if tok_rx.recv().is_err() || abort_r.load(Ordering::Relaxed) {
                    break;
                }
                let mut buf = vec![0u8; chunk_len(idx, src.size, cs) as usize];
                match src.read_at(&mut buf, idx * cs) {
                    Ok(()) => {
                        if job_tx.send((idx, buf)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = reader_res.send(Err(e));
                        break;
                    }
                }
            }
        });
        for _ in 0..workers {
            let (job_rx, res_tx, old, abort) =
                (job_rx.clone(), res_tx.clone(), old.as_ref(), &abort);
            let vid = &vid;
            s.spawn(move || {
                for (idx, buf) in job_rx.iter() {
                    if abort.load(Ordering::Relaxed) {
                        break;
                    }
                    let old_ref = old.and_then(|m| m.get(idx)).map(|e| e.0);
                    let out = if buf.len() as u64 == cs && is_all_zero(&buf) {
                        Ok(if old_ref == Some(ChunkRef::Zero) {
                            Outcome::Same
                        } else {
                            Outcome::Changed(ChunkRef::Zero, 0)
                        })
                    } else {
                        let enc = codec.encode_chunk(&buf);
                        if old_ref == Some(ChunkRef::Data(enc.hash)) {
                            Ok(Outcome::Same)
                        } else {
                            let path = chunk_rel_path(vid, SESSION_TMP, idx * cs);
                            dest.write(&path, &enc.file).map(|()| {
                                Outcome::Changed(ChunkRef::Data(enc.hash), enc.file.len() as u64)
                            })
                        }
                    };
                    if res_tx.send(out.map(|o| (idx, o))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(res_tx);
        drop(job_rx);

        // Collector: restore address order, build the manifest and the merged checksum.
        let mut tok_tx = Some(tok_tx);
        let mut pending: BTreeMap<u64, Outcome> = BTreeMap::new();
        let mut next = 0u64;
        for r in res_rx.iter() {
            match r {
                Err(e) => {
                    abort.store(true, Ordering::Relaxed);
                    first_err.get_or_insert(e);
                    tok_tx = None; // wakes the reader so every thread winds down
                }
                Ok((idx, out)) => {
                    pending.insert(idx, out);
                }
            }
            if first_err.is_some() {
                continue;
            }
            while let Some(out) = pending.remove(&next) {
                let final_ref = match out {
                    Outcome::Same => old
                        .as_ref()
                        .and_then(|m| m.get(next))
                        .map(|e| e.0)
                        .expect("Same implies an old entry"),
                    Outcome::Changed(r, bytes) => {
                        push_line(&mut manifest, next, cs, &r);
                        changed += 1;
                        stored += bytes;
                        r
                    }
                };
                line.clear();
                push_line(&mut line, next, cs, &final_ref);
                crc.update(line.as_bytes());
                progress.inc(chunk_len(next, src.size, cs));
                next += 1;
                if let Some(t) = &tok_tx {
                    let _ = t.send(());
                }
            }
        }
        drop(tok_tx);
    });
    progress.finish();
    if std::env::var("WYNG_FAILPOINT").is_ok_and(|v| v == "chunks-written") {
        std::process::abort();
    }
    if let Some(e) = first_err {
        let _ = archive.abort_session(&vid);
        return Err(e);
    }

    let mut report = VolumeReport {
        volume: archive.volumes[vol_idx].name().to_string(),
        session: None,
        volsize: src.size,
        chunks_read: n,
        chunks_changed: changed,
        bytes_read: src.size,
        bytes_stored: stored,
    };
    let is_changed = match &last {
        None => true,
        Some(l) => {
            !manifest.is_empty()
                || l.info.volsize != src.size
                || l.info.permissions != src.permissions
        }
    };
    if !is_changed && !opts.send_unchanged {
        archive.abort_session(&vid)?;
        return Ok(report);
    }
    let info = SessionInfo {
        localtime: src.mtime_ns,
        previous: last.as_ref().map(|l| l.name.clone()),
        permissions: src.permissions.clone(),
        manifest_hash: None,
        volsize: src.size,
        sequence: last.as_ref().map_or(0, |l| l.info.sequence + 1),
        mfcs: Some(crc.finalize()),
        tags: opts.tags.clone(),
    };
    archive.commit_session(vol_idx, name.clone(), info, &manifest)?;
    report.session = Some(name.to_string());
    Ok(report)
}
