//! `arch-check`: a deep check of an archive (behaviour notes §7.9).
//!
//! Loading the archive already checks the metadata chain (root → volinfo → every info, session
//! sequence and `previous` links). arch-check then rebuilds the oldest and newest merged views
//! from the archive's own manifests (contiguity, `mfcs`), and reads every chunk file each
//! session stored itself, newest to oldest, so every stored file is verified (hash,
//! decryption, decompression, length) exactly once. Manifests are streamed and chunks read in
//! parallel, so memory does not grow with the archive. It reports every problem it finds, not
//! just the first.

use crate::archive::{sanitized, Archive, ChunkLoc, WriteArchive};
use crate::error::Result;
use crate::format::manifest::chunk_len;
use crate::format::ChunkRef;

#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub volume: String,
    pub sessions: usize,
    pub chunks: u64,
    pub problems: Vec<String>,
}

pub struct CheckOptions {
    /// Only this session of each volume (`--session=WHEN`: `newest`, a date-time, a day...);
    /// a volume without one is left out.
    pub session: Option<crate::ops::SessionSel>,
}

/// `arch-check --clean`: leftovers of interrupted commands are removed (recovery, which
/// opening for write already ran, and `*.tmp` files inside session directories), and a
/// damaged volinfo whose `volinfo.bak` is the committed version is restored.
pub fn clean(wa: &mut WriteArchive) -> Result<Vec<String>> {
    wa.clean_deep()
}

/// The name reports about the archive as a whole carry.
pub const ARCHIVE: &str = "(archive)";

/// Problems of the archive as a whole: leftovers of interrupted commands, volinfo files in use
/// from `volinfo.bak`, damaged volumes (each with what to do).
fn archive_problems(archive: &Archive, names: &[String]) -> Result<Vec<String>> {
    let mut p = Vec::new();
    if names.is_empty() {
        for (file, what) in archive.salt_problems() {
            p.push(format!(
                "{file} {what}; the other copy is sound and in use: the next write command (or `wyng arch-check --clean`) rewrites {file}"
            ));
        }
        for l in archive.leftovers(true)? {
            p.push(format!(
                "{}: {} (or of one still running); `wyng arch-check --clean` removes it",
                l.path, l.why
            ));
        }
        for vid in archive.interrupted_commits() {
            p.push(format!(
                "{vid}/volinfo is from an interrupted commit and volinfo.bak stands in for it; the next write command (or `wyng arch-check --clean`) restores it"
            ));
        }
    }
    for d in archive.damaged() {
        let named = d.name.as_deref().map(sanitized);
        if !names.is_empty() && !names.iter().any(|n| Some(sanitized(n)) == named) {
            continue;
        }
        let what = if d.repairable {
            "`wyng arch-check --clean` restores its volinfo from volinfo.bak".to_string()
        } else {
            format!("`wyng delete --vid={}` removes it", d.vid)
        };
        p.push(format!(
            "volume {}{} is damaged and cannot be used: {}; {what}",
            named.map_or(String::new(), |n| format!("'{n}' ")),
            d.vid,
            d.error
        ));
    }
    Ok(p)
}

pub fn run(archive: &Archive, names: &[String], o: &CheckOptions) -> Result<Vec<CheckReport>> {
    for n in names {
        if let Err(e) = archive.find(n) {
            if !archive
                .damaged()
                .iter()
                .any(|d| d.name.as_deref() == Some(n))
            {
                return Err(e);
            }
        }
    }
    let cs = archive.chunksize();
    let mut reports = Vec::new();
    let problems = archive_problems(archive, names)?;
    if !problems.is_empty() {
        reports.push(CheckReport {
            volume: ARCHIVE.to_string(),
            problems,
            ..Default::default()
        });
    }
    for (vi, vol) in archive.volumes().iter().enumerate() {
        if !names.is_empty() && !names.iter().any(|n| n == vol.name()) {
            continue;
        }
        // The sessions whose own chunks are checked (all, or the one --session names).
        let sessions: Vec<usize> = match &o.session {
            None => (0..vol.sessions.len()).rev().collect(),
            Some(sel) => sel.select(vol).ok().into_iter().collect(),
        };
        let mut r = CheckReport {
            volume: vol.name().to_string(),
            sessions: sessions.len(),
            ..Default::default()
        };
        let n = vol.sessions.len();
        if n > 0 {
            if let Err(e) = archive.merged_fresh(vi, 0) {
                r.problems.push(format!("oldest session: {e}"));
            }
            if n > 1 {
                if let Err(e) = archive.merged_fresh(vi, n - 1) {
                    r.problems.push(format!("newest session: {e}"));
                }
            }
        }
        let problems = parking_lot::Mutex::new(Vec::new());
        // Each session's own lines, streamed; a damaged manifest is a problem of its own and
        // the check goes on with the next session.
        let problems_ref = &problems;
        let jobs = sessions.into_iter().flat_map(move |si| {
            let s = &vol.sessions[si];
            let lines = match archive.session_lines(vi, si) {
                Ok(l) => Some(l),
                Err(e) => {
                    problems_ref.lock().push(e.to_string());
                    None
                }
            };
            let mut failed = false;
            lines.into_iter().flatten().filter_map(move |line| {
                if failed {
                    return None;
                }
                match line {
                    Ok((idx, ChunkRef::Data(h))) => Some(Ok(ChunkLoc::new(
                        &vol.vid,
                        &s.name,
                        idx,
                        cs,
                        h,
                        chunk_len(idx, s.info.volsize, cs),
                    ))),
                    Ok(_) => None,
                    Err(e) => {
                        failed = true;
                        problems_ref.lock().push(e.to_string());
                        None
                    }
                }
            })
        });
        let last_size = vol.last().map_or(0, |s| s.info.volsize);
        let progress = archive.progress(last_size, "check");
        let stats = archive.chunks().run(
            jobs,
            |loc, _| {
                progress.inc(loc.len as u64);
                Ok(())
            },
            // Every problem is collected: a damaged chunk does not stop the check.
            |_, e| {
                problems.lock().push(e.to_string());
                Ok(())
            },
        )?;
        progress.finish();
        r.chunks = stats.chunks;
        r.problems.extend(problems.into_inner());
        reports.push(r);
    }
    Ok(reports)
}
