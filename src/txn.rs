//! Journaled transactions: merging sessions (prune) and deleting volumes, with the original
//! Wyng's journal and file protocol (format §7.3, §13.4, §13.5), so that an interrupted
//! transaction, ours or the original's, can be completed by either tool.
//!
//! Merge of sources `src[0..k]` (oldest first) into `target` (the session right after them):
//! 1. Stage: the target's new `info.tmp`/`manifest.z.tmp` (in the target's dir), `volinfo.tmp`,
//!    `sessions.tmp`, the final `archive.ini.tmp` (no journal), and `merge.lst.gz` (what moves).
//! 2. Journal: archive.ini is replaced by one whose `[in_process]` names the merge (its
//!    `updated_at` is not bumped).
//! 3. Move phase: the session dirs go into `merge-init/`, renamed to `merge/` (commit point of
//!    the move); inside it, newer chunk files are renamed into the oldest source's dir (hard
//!    links survive: nothing is rewritten), dropped ones removed; marker `CHECK-mv-rm`.
//! 4. Finalize: the staged info/manifest go into the oldest source's dir, which becomes the
//!    target; then volinfo, sessions and archive.ini (journal cleared) are renamed into place.
//!
//! Recovery ([`Archive::finish_in_process`], run before any write command): with `merge/`
//! present the move phase is completed (renames whose source is gone are skipped) and finalized;
//! otherwise the merge is abandoned (dirs moved back out of `merge-init/`, journal cleared).
//! Every step checks what is already done, so recovery can itself be interrupted and rerun.

use std::collections::BTreeMap;

use crate::archive::{failpoint, Archive, Session};
use crate::codec::{gunzip, gzip};
use crate::dest::Move;
use crate::error::{Error, Result};
use crate::format::manifest::{chunk_count, lines_to_text, SessionLines};
use crate::format::{ChunkRef, SessionInfo, SessionName, VolumeId};

fn chunk_name(idx: u64, cs: u64) -> String {
    let addr = idx * cs;
    format!("{:09x}/x{addr:016x}", addr >> 28)
}

impl Archive {
    /// Merges sessions `first..=last` of volume `vi` into the session after them.
    pub fn merge_sessions(&mut self, vi: usize, first: usize, last: usize) -> Result<()> {
        let vol = &self.volumes[vi];
        let vid = vol.vid.clone();
        let ti = last + 1;
        assert!(
            ti < vol.sessions.len(),
            "the newest session is never merged away"
        );
        let cs = self.chunksize();
        let src: Vec<Session> = vol.sessions[first..=last].to_vec();
        let target = vol.sessions[ti].clone();
        let src0 = src[0].name.clone();

        // manifest.one: target + src[k..1], newest wins, with the session holding each file;
        // manifest.two: that + src[0]'s lines.
        let mut one: BTreeMap<u64, (ChunkRef, SessionName)> = BTreeMap::new();
        for s in std::iter::once(&target).chain(src[1..].iter().rev()) {
            let idx = vol.session_index(&s.name).expect("listed");
            for (i, r) in self.session_lines(vol, idx)? {
                one.entry(i).or_insert((r, s.name.clone()));
            }
        }
        let mut two: BTreeMap<u64, ChunkRef> = one.iter().map(|(i, (r, _))| (*i, *r)).collect();
        for (i, r) in self.session_lines(vol, first)? {
            two.entry(i).or_insert(r);
        }
        let n = chunk_count(target.info.volsize, cs);
        let new_lines: SessionLines = two.range(..n).map(|(i, r)| (*i, *r)).collect();

        // The journal of moves, in the original's format.
        let mut lst = format!("{src0} {}\n{}\n", target.name, target.name);
        for s in src[1..].iter().rev() {
            lst.push_str(&format!("{}\n", s.name));
        }
        lst.push_str("###\n");
        for (i, (r, ses)) in &one {
            let p = chunk_name(*i, cs);
            match r {
                ChunkRef::Data(_) => lst.push_str(&format!("rename {ses}/{p} {src0}/{p}\n")),
                ChunkRef::Zero => lst.push_str(&format!("-rm {src0}/{p}\n")),
            }
        }
        for i in two.range(n..).map(|(i, _)| *i) {
            lst.push_str(&format!("-rm {src0}/{}\n", chunk_name(i, cs)));
        }

        // 1. Stage.
        let mut info = SessionInfo {
            previous: src[0].info.previous.clone(),
            ..target.info.clone()
        };
        let text = lines_to_text(&new_lines, cs);
        let tdir = format!("{vid}/{}", target.name);
        self.dest.remove_all(&format!("{tdir}/manifest.z.tmp"))?;
        info.manifest_hash = if text.is_empty() {
            None
        } else {
            let enc = self.codec.encode_meta(text.as_bytes())?;
            self.dest
                .write(&format!("{tdir}/manifest.z.tmp"), &enc.file)?;
            Some(enc.hash)
        };
        let ienc = self.codec.encode_meta(info.to_text().as_bytes())?;
        self.dest.write(&format!("{tdir}/info.tmp"), &ienc.file)?;
        self.dest
            .write(&format!("{vid}/merge.lst.gz"), &gzip(lst.as_bytes()))?;
        let removed: Vec<&SessionName> = src.iter().map(|s| &s.name).collect();
        let mut volinfo = vol.volinfo.clone();
        volinfo.sessions.retain(|(s, _)| !removed.contains(&s));
        for (s, h) in volinfo.sessions.iter_mut() {
            if *s == target.name {
                *h = ienc.hash;
            }
        }
        let mut sessions: Vec<Session> = vol
            .sessions
            .iter()
            .filter(|s| !removed.contains(&&s.name))
            .cloned()
            .collect();
        for s in sessions.iter_mut() {
            if s.name == target.name {
                s.info = info.clone();
            }
        }
        let venc = self.stage_volume(&vid, &volinfo, &sessions)?;
        let mut final_ini = self.ini.clone();
        final_ini.set_volume(&vid, venc.hash);
        final_ini.in_process.clear();
        self.prepare_root(&mut final_ini)?;

        // 2. Journal.
        let mut journal = self.ini.clone();
        journal.in_process = vec![
            ("0".into(), "merge".into()),
            ("1".into(), vid.to_string()),
            ("2".into(), "True".into()),
            ("3".into(), target.name.to_string()),
            (
                "4".into(),
                src.iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(":|"),
            ),
        ];
        self.write_journal(&journal)?;
        failpoint("merge-journaled");

        // 3 and 4.
        self.run_merge(&vid)?;
        self.reload_all()
    }

    /// Writes a root carrying a journal (its `updated_at` unchanged, as the original does)
    /// and makes it current.
    fn write_journal(&mut self, journal: &crate::format::ArchiveIni) -> Result<()> {
        let mut file = crate::format::ini::header(&self.ci);
        file.extend_from_slice(&self.codec.seal_root(&journal.to_text())?);
        self.dest.write("archive.ini.journal.tmp", &file)?;
        self.dest.sync()?;
        self.dest.rename("archive.ini.journal.tmp", "archive.ini")?;
        self.dest.sync()?;
        self.ini = journal.clone();
        self.remember_root(&file);
        Ok(())
    }

    /// The move and finalize phases of a journaled merge; each step checks what is done.
    fn run_merge(&mut self, vid: &VolumeId) -> Result<()> {
        let lst = self
            .dest
            .read(&format!("{vid}/merge.lst.gz"), 256 << 20)?
            .ok_or_else(|| {
                Error::corrupt(
                    format!("{vid}/merge.lst.gz"),
                    "missing during an interrupted prune",
                )
            })?;
        let lst = String::from_utf8(
            gunzip(&lst, 1 << 30).map_err(|e| Error::corrupt("merge.lst.gz", e))?,
        )
        .map_err(|_| Error::corrupt("merge.lst.gz", "not text"))?;
        let mut lines = lst.lines();
        let (src0, target) = lines
            .next()
            .and_then(|l| l.split_once(' '))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .ok_or_else(|| Error::corrupt("merge.lst.gz", "bad first line"))?;
        let mut dirs = vec![src0.clone()];
        for l in lines.by_ref() {
            if l == "###" {
                break;
            }
            dirs.push(l.to_string());
        }
        let ops: Vec<&str> = lines.collect();
        for d in &dirs {
            if SessionName::parse(d).is_none() {
                return Err(Error::corrupt(
                    "merge.lst.gz",
                    format!("bad session name '{d}'"),
                ));
            }
        }
        let init = format!("{vid}/merge-init");
        let merge = format!("{vid}/merge");
        // Move the session dirs aside (a crash here is rolled back by recovery).
        if !self.dest.exists(&merge)? {
            self.dest.mkdir_all(&init)?;
            for d in &dirs {
                if self.dest.exists(&format!("{vid}/{d}"))? {
                    self.dest
                        .rename(&format!("{vid}/{d}"), &format!("{init}/{d}"))?;
                }
            }
            self.dest.sync()?;
            failpoint("merge-init");
            self.dest.rename(&init, &merge)?;
            self.dest.sync()?;
        }
        failpoint("merge-moving");
        if !self.dest.exists(&format!("{merge}/CHECK-mv-rm"))?
            && self.dest.exists(&format!("{merge}/{src0}"))?
        {
            let mut subdirs = std::collections::BTreeSet::new();
            for op in &ops {
                if let Some(rest) = op.strip_prefix("rename ") {
                    if let Some((_, to)) = rest.split_once(' ') {
                        if let Some((d, _)) = to.rsplit_once('/') {
                            subdirs.insert(d.to_string());
                        }
                    }
                }
            }
            for d in subdirs {
                check_rel(&d)?;
                self.dest.mkdir_all(&format!("{merge}/{d}"))?;
            }
            // A source already moved by an earlier, interrupted run is skipped.
            let mut moves = Vec::with_capacity(ops.len());
            for op in &ops {
                if let Some(rest) = op.strip_prefix("rename ") {
                    let (from, to) = rest
                        .split_once(' ')
                        .ok_or_else(|| Error::corrupt("merge.lst.gz", "bad rename"))?;
                    check_rel(from)?;
                    check_rel(to)?;
                    moves.push(Move::Rename {
                        from: format!("{merge}/{from}"),
                        to: format!("{merge}/{to}"),
                    });
                } else if let Some(p) = op.strip_prefix("-rm ") {
                    check_rel(p)?;
                    moves.push(Move::Remove(format!("{merge}/{p}")));
                }
            }
            self.dest.apply_moves(&moves)?;
            self.dest.sync()?;
            self.dest.write(&format!("{merge}/CHECK-mv-rm"), b"")?;
        }
        failpoint("merge-moved");
        // Finalize.
        if self.dest.exists(&format!("{merge}/{src0}"))? {
            let t = format!("{merge}/{target}");
            if self.dest.exists(&format!("{t}/info.tmp"))? {
                if self.dest.exists(&format!("{t}/manifest.z.tmp"))? {
                    self.dest.rename(
                        &format!("{t}/manifest.z.tmp"),
                        &format!("{merge}/{src0}/manifest.z"),
                    )?;
                } else {
                    self.dest
                        .remove_all(&format!("{merge}/{src0}/manifest.z"))?;
                }
                self.dest
                    .rename(&format!("{t}/info.tmp"), &format!("{merge}/{src0}/info"))?;
            }
            self.dest.sync()?;
            self.dest
                .rename(&format!("{merge}/{src0}"), &format!("{vid}/{target}"))?;
            self.dest.sync()?;
        }
        failpoint("merge-finalizing");
        for f in ["volinfo", "sessions"] {
            if self.dest.exists(&format!("{vid}/{f}.tmp"))? {
                self.dest
                    .rename(&format!("{vid}/{f}.tmp"), &format!("{vid}/{f}"))?;
            }
        }
        if self.dest.exists("archive.ini.tmp")? {
            self.dest.sync()?;
            self.dest.rename("archive.ini.tmp", "archive.ini")?;
        }
        self.dest.sync()?;
        self.dest.remove_all(&merge)?;
        self.dest.remove_all(&format!("{vid}/merge.lst.gz"))?;
        Ok(())
    }

    /// Completes or rolls back a transaction that archive.ini's `[in_process]` records.
    pub(crate) fn finish_in_process(&mut self) -> Result<()> {
        let j: Vec<String> = self.ini.in_process.iter().map(|(_, v)| v.clone()).collect();
        if j.is_empty() {
            return Ok(());
        }
        let vid = j
            .get(1)
            .and_then(|v| VolumeId::parse(v))
            .ok_or_else(|| Error::corrupt("archive.ini", "bad [in_process] journal"))?;
        // A retry that fails leaves a marker, so a recovery that cannot succeed is not run on
        // every later command without the user knowing (format §13.5). Unlike the original,
        // the marker records a failed retry, not an attempted one (a retry killed midway is
        // simply run again: recovery is idempotent), and it goes once a recovery completes.
        let marker = self.cache_dir.as_ref().map(|c| c.join("in_process_retry"));
        if let Some(m) = &marker {
            if m.exists() && !self.force_retry {
                return Err(Error::Other(format!(
                    "an interrupted {} of {vid} was already retried and did not complete: see why \
                     in the earlier error (or run `wyng arch-check`), then run again with \
                     --force-retry to retry it once more",
                    j[0]
                )));
            }
        }
        let r = self.retry_in_process(&j, vid);
        if let Some(m) = &marker {
            match &r {
                Ok(()) => {
                    let _ = std::fs::remove_file(m);
                }
                Err(_) => {
                    let _ = std::fs::write(m, b"");
                }
            }
        }
        r
    }

    fn retry_in_process(&mut self, j: &[String], vid: VolumeId) -> Result<()> {
        match j[0].as_str() {
            "delete" => {
                tracing::warn!("finishing an interrupted delete of {vid}");
                self.complete_delete(&vid)
            }
            "merge" => {
                if self.dest.exists(&format!("{vid}/merge"))?
                    && !self.dest.exists(&format!("{vid}/merge-init"))?
                {
                    tracing::warn!("finishing an interrupted prune of {vid}");
                    self.run_merge(&vid)?;
                } else {
                    tracing::warn!("rolling back an interrupted prune of {vid}");
                    let init = format!("{vid}/merge-init");
                    for d in self.dest.list(&init)? {
                        if SessionName::parse(&d).is_some() {
                            self.dest
                                .rename(&format!("{init}/{d}"), &format!("{vid}/{d}"))?;
                        }
                    }
                    self.dest.remove_all(&init)?;
                    for f in ["volinfo.tmp", "sessions.tmp", "merge.lst.gz"] {
                        self.dest.remove_all(&format!("{vid}/{f}"))?;
                    }
                    if let Some(target) = j.get(3).and_then(|t| SessionName::parse(t)) {
                        for f in ["info.tmp", "manifest.z.tmp"] {
                            self.dest.remove_all(&format!("{vid}/{target}/{f}"))?;
                        }
                    }
                    self.dest.remove_all("archive.ini.tmp")?;
                    let mut ini = self.ini.clone();
                    ini.in_process.clear();
                    self.ini = ini;
                    self.save_root()?;
                }
                self.reload_all()
            }
            other => Err(Error::Unsupported(format!(
                "an interrupted '{other}' transaction in archive.ini"
            ))),
        }
    }

    /// Deletes a volume and all its sessions.
    pub fn delete_volume(&mut self, vid: &VolumeId) -> Result<()> {
        let mut journal = self.ini.clone();
        journal.in_process = vec![("0".into(), "delete".into()), ("1".into(), vid.to_string())];
        self.write_journal(&journal)?;
        failpoint("delete-journaled");
        self.complete_delete(vid)
    }

    fn complete_delete(&mut self, vid: &VolumeId) -> Result<()> {
        let mut ini = self.ini.clone();
        ini.volumes.retain(|(v, _)| v != vid);
        ini.in_process.clear();
        self.ini = ini;
        self.save_root()?;
        failpoint("delete-committed");
        self.dest.remove_all(vid.as_str())?;
        self.reload_all()
    }
}

/// A path from merge.lst.gz: relative, no `..`, only names the format uses.
fn check_rel(p: &str) -> Result<()> {
    let ok = !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::corrupt("merge.lst.gz", format!("bad path '{p}'")))
    }
}
