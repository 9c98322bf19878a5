//! `arch-check`: a deep check of an archive (behaviour notes §7.9).
//!
//! Loading the archive already checks the metadata chain (root → volinfo → every info, session
//! sequence and `previous` links). arch-check then parses every session's manifest, rebuilds the
//! oldest and newest merged views (contiguity, the newest's `mfcs`), and reads every chunk file
//! each session stored itself, newest to oldest, so every stored file is verified (hash,
//! decryption, decompression, length) exactly once. It reports every problem it finds, not just
//! the first.

use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::format::manifest::chunk_len;
use crate::format::{chunk_rel_path, ChunkRef, Hash32, SessionName};
use crate::ops::parallel;
use crate::progress::Progress;

#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub volume: String,
    pub sessions: usize,
    pub chunks: u64,
    pub problems: Vec<String>,
}

pub struct CheckOptions {
    /// `newest` (only the archive's newest sessions) or a date-time (only that session).
    pub session: Option<String>,
    /// Remove leftovers of interrupted commands first.
    pub clean: bool,
}

pub fn run(archive: &mut Archive, names: &[String], o: &CheckOptions) -> Result<Vec<CheckReport>> {
    if o.clean {
        archive.recover()?;
    }
    let only: Option<SessionName> = match o.session.as_deref() {
        None | Some("newest") => None,
        Some(s) => Some(
            SessionName::from_user(s)
                .ok_or_else(|| Error::Usage(format!("--session '{s}' is not a date-time")))?,
        ),
    };
    let newest_only = o.session.as_deref() == Some("newest");
    let mut reports = Vec::new();
    for vol in &archive.volumes {
        if !names.is_empty() && !names.iter().any(|n| n == vol.name()) {
            continue;
        }
        let mut r = CheckReport {
            volume: vol.name().to_string(),
            sessions: vol.sessions.len(),
            ..Default::default()
        };
        let n = vol.sessions.len();
        if n > 0 {
            if let Err(e) = archive.merged(vol, 0) {
                r.problems.push(format!("oldest session: {e}"));
            }
            if let Err(e) = archive.merged(vol, n - 1) {
                r.problems.push(format!("newest session: {e}"));
            }
        }
        let cs = archive.chunksize();
        let mut jobs: Vec<(String, Hash32, usize)> = Vec::new();
        for si in (0..n).rev() {
            let s = &vol.sessions[si];
            if newest_only && si + 1 != n || only.as_ref().is_some_and(|d| *d != s.name) {
                continue;
            }
            match archive.session_lines(vol, si) {
                Err(e) => r.problems.push(e.to_string()),
                Ok(lines) => {
                    for (idx, cref) in lines {
                        if let ChunkRef::Data(h) = cref {
                            let path = chunk_rel_path(&vol.vid, s.name.as_str(), idx * cs);
                            jobs.push((path, h, chunk_len(idx, s.info.volsize, cs) as usize));
                        }
                    }
                }
            }
        }
        r.chunks = jobs.len() as u64;
        let problems = parking_lot::Mutex::new(Vec::new());
        let progress = Progress::bytes(jobs.iter().map(|j| j.2 as u64).sum(), "check");
        // Every problem is collected: a damaged chunk does not stop the check.
        parallel(jobs.len(), |i| {
            let (path, h, len) = &jobs[i];
            let res = archive
                .dest
                .read(path, archive.codec.max_chunk_file())
                .and_then(|f| f.ok_or_else(|| Error::corrupt(path, "chunk file is missing")))
                .and_then(|f| archive.codec.decode_chunk(&f, h, *len, path));
            if let Err(e) = res {
                problems.lock().push(e.to_string());
            }
            progress.inc(*len as u64);
            Ok(())
        })?;
        progress.finish();
        r.problems.extend(problems.into_inner());
        reports.push(r);
    }
    Ok(reports)
}

/// `arch-check --change-uuid`: gives the archive a new UUID (for a copy that must not be
/// confused with its original).
pub fn change_uuid(archive: &mut Archive) -> Result<String> {
    archive.recover()?;
    let uuid = uuid::Uuid::new_v4().to_string();
    archive.ini.set("uuid", uuid.clone());
    archive.save_root()?;
    Ok(uuid)
}
