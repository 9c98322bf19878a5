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
//! Recovery ([`WriteArchive::finish_in_process`], run when an archive is opened for writing):
//! with `merge/` present the move phase is completed (renames whose source is gone are
//! skipped) and finalized; otherwise the merge is abandoned (dirs moved back out of
//! `merge-init/`, journal cleared). Every step checks what is already done, so recovery can
//! itself be interrupted and rerun.
//!
//! Memory does not grow with the volume: the new manifest and the merge list are produced by a
//! streamed k-way merge into spools, and the list is read back as a stream.

use std::collections::BTreeSet;
use std::io::{BufReader, Write};

use super::layout::{self, Dir};
use super::session::NewManifest;
use super::write::WriteArchive;
use crate::codec::Encoded;
use crate::dest::Move;
use crate::error::{Error, Result};
use crate::format::ini::ArchiveIni;
use crate::format::journal::{Journal, ListPath, MergeList, MergeListHead, MergeOp};
use crate::format::manifest::{chunk_count, ChunkRef, ManifestLog, Merge};
use crate::format::{self as fmt, Session, SessionInfo, SessionName, VolumeId};

/// Moves applied per round trip to the destination.
const MOVE_BATCH: usize = 4096;
/// Bound on the stored merge list (its lines are streamed, never held).
const MAX_LIST: u64 = 1 << 40;

impl WriteArchive {
    /// Merges sessions `first..=last` of volume `vi` into the session after them.
    pub(crate) fn merge_sessions(&mut self, vi: usize, first: usize, last: usize) -> Result<()> {
        let vol = self.a.volumes[vi].clone();
        let vid = vol.vid.clone();
        let ti = last + 1;
        assert!(
            ti < vol.sessions.len(),
            "the newest session is never merged away"
        );
        let src: Vec<Session> = vol.sessions[first..=last].to_vec();
        let target = vol.sessions[ti].clone();
        let (manifest, list) = self.merge_plan(&vid, &src, &target)?;
        let spool_err = |e: std::io::Error| Error::io("merge spool", e);
        let empty = manifest.is_empty();

        // 1. Stage what the journal's recovery may need (all of it is swept by recovery as
        // leftovers if we die before the journal is written).
        let mut info = SessionInfo {
            previous: src[0].info.previous.clone(),
            ..target.info.clone()
        };
        let tdir = Dir::Session(&target.name);
        let staged_manifest = if empty {
            None
        } else {
            Some(self.a.encode_manifest(&manifest)?)
        };
        info.manifest_hash = staged_manifest.as_ref().map(|(h, _)| *h);
        let ienc = self.a.codec.encode_meta(info.to_text().as_bytes())?;
        let mut r = list.reader().map_err(spool_err)?;
        self.a
            .dest
            .write_from(&layout::merge_list(&vid), &mut r, list.len())?;
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
        let venc: Encoded = self.stage_volume(&vid, &volinfo, &sessions)?;
        let mut final_ini = self.a.ini.clone();
        final_ini.set_volume(&vid, venc.hash);
        final_ini.in_process.clear();
        self.prepare_root(&mut final_ini)?;

        // 2. Journal.
        let mut journaled = self.a.ini.clone();
        journaled.in_process = Journal::Merge {
            vid: vid.clone(),
            target: target.name.clone(),
            sources: src.iter().map(|s| s.name.clone()).collect(),
        }
        .to_items();
        self.write_journal(&journaled)?;
        self.failpoint("merge-journaled");
        // The target's new info and manifest go inside its directory only now: if we die
        // before the move phase, recovery rolls back and removes them.
        self.a.dest.remove_all(&layout::manifest_tmp(&vid, tdir))?;
        if let Some((_, file)) = staged_manifest {
            let mut r = file.reader().map_err(spool_err)?;
            self.a
                .dest
                .write_from(&layout::manifest_tmp(&vid, tdir), &mut r, file.len())?;
        }
        self.a
            .dest
            .write(&layout::info_tmp(&vid, tdir), &ienc.file)?;
        self.failpoint("merge-staged");

        // The views of the target and later sessions do not change, only where their chunk
        // files are: their indexes are carried over with the origins moved, not rebuilt.
        let carried = self.a.known_indexes(vi, ti);

        // 3 and 4.
        self.run_merge(&vid)?;
        self.reload_all()?;
        self.carry_indexes(&vid, carried, first, last);
        Ok(())
    }

    /// The streamed merge of sessions `src` into `target` (oldest first): the target's new
    /// manifest, and the merge list (gzip) of the moves that make it so.
    fn merge_plan(
        &self,
        vid: &VolumeId,
        src: &[Session],
        target: &Session,
    ) -> Result<(NewManifest, crate::spool::Spool)> {
        let cs = self.a.chunksize();
        let src0 = src[0].name.clone();
        let n = chunk_count(target.info.volsize, cs);
        // One streamed merge, oldest first: src[0], src[1..], target. Whatever a session
        // other than src[0] holds is "manifest.one" of the original (its file moves into
        // src[0]'s directory, or a zero removes src[0]'s); src[0]'s own lines only complete
        // "manifest.two", the target's new manifest.
        let mut layers = Vec::with_capacity(src.len() + 1);
        let mut names: Vec<&SessionName> = Vec::new();
        for s in src.iter().chain(std::iter::once(target)) {
            layers.push(self.a.lines_of(vid, s)?);
            names.push(&s.name);
        }
        let head = MergeListHead {
            src0: src0.clone(),
            target: target.name.clone(),
            others: std::iter::once(target.name.clone())
                .chain(src[1..].iter().rev().map(|s| s.name.clone()))
                .collect(),
        };
        let mut manifest = ManifestLog::new(self.a.spool());
        let spool_err = |e: std::io::Error| Error::io("merge spool", e);
        let mut list = flate2::write::GzEncoder::new(self.a.spool(), flate2::Compression::new(4));
        list.write_all(head.to_text().as_bytes())
            .map_err(spool_err)?;
        for e in Merge::new(layers)? {
            let (idx, r, layer) = e?;
            // Paths are only made for the entries that move (few, after the base session).
            let p = || ListPath::chunk(&src0, idx * cs);
            let op = if idx >= n {
                Some(MergeOp::Remove(p()))
            } else {
                manifest.entry(idx, &r).map_err(spool_err)?;
                match (layer, r) {
                    (0, _) => None,
                    (_, ChunkRef::Data(_)) => Some(MergeOp::Rename {
                        from: ListPath::chunk(names[layer], idx * cs),
                        to: p(),
                    }),
                    (_, ChunkRef::Zero) => Some(MergeOp::Remove(p())),
                }
            };
            if let Some(op) = op {
                list.write_all(op.to_line().as_bytes()).map_err(spool_err)?;
            }
        }
        let manifest = NewManifest::new(manifest)?;
        let list = list.finish().map_err(spool_err)?;
        Ok((manifest, list))
    }

    /// After a merge of sessions `first..=last` of `vid`: the indexes of the target and later
    /// sessions, carried over with their chunks' origins moved (`carried`, by old session
    /// index), instead of being rebuilt.
    fn carry_indexes(
        &mut self,
        vid: &VolumeId,
        carried: Vec<(usize, std::sync::Arc<super::index::MergedIndex>)>,
        first: usize,
        last: usize,
    ) {
        let ti = last + 1;
        if let Some(vi) = self.a.volumes.iter().position(|v| v.vid == *vid) {
            let gone = (last - first + 1) as u16;
            let (first, ti) = (first as u16, ti as u16);
            let map = |o: u16| match o {
                o if o < first => o,
                o if o <= ti => first,
                o => o - gone,
            };
            for (old_si, ix) in carried {
                let si = old_si - gone as usize;
                if let Err(e) = self.a.remap_index(vi, si, &ix, map) {
                    tracing::debug!("index of session {si} not carried over: {e}");
                }
            }
            self.a.prune_indexes(vi);
        }
    }

    /// Writes a root carrying a journal (its `updated_at` unchanged, as the original does)
    /// and makes it current.
    fn write_journal(&mut self, journal: &ArchiveIni) -> Result<()> {
        let file = self.seal_root(journal)?;
        self.a.dest.write(layout::ROOT_JOURNAL_TMP, &file)?;
        self.a.dest.sync()?;
        self.a.dest.rename(layout::ROOT_JOURNAL_TMP, layout::ROOT)?;
        self.a.dest.sync()?;
        self.a.ini = journal.clone();
        self.remember_root(&file);
        Ok(())
    }

    /// The stored merge list of `vid`, spooled locally.
    fn merge_list(&self, vid: &VolumeId) -> Result<crate::spool::Spool> {
        let mut spool = self.a.spool();
        let p = layout::merge_list(vid);
        if self.a.dest.read_into(&p, MAX_LIST, &mut spool)?.is_none() {
            return Err(Error::corrupt(p, "missing during an interrupted prune"));
        }
        Ok(spool)
    }

    /// The move and finalize phases of a journaled merge; each step checks what is done.
    fn run_merge(&mut self, vid: &VolumeId) -> Result<()> {
        let spool = self.merge_list(vid)?;
        let open = || -> Result<MergeList<Box<dyn std::io::BufRead + Send>>> {
            let r = spool.reader().map_err(|e| Error::io("merge list", e))?;
            let r: Box<dyn std::io::BufRead + Send> =
                Box::new(BufReader::new(flate2::bufread::GzDecoder::new(r)));
            Ok(MergeList::read(r)?)
        };
        let head = open()?.head;
        let src0 = head.src0.clone();
        let target = head.target.clone();
        let dest = self.a.dest.clone();
        let merge = layout::merge(vid);
        // Move the session dirs aside (a crash here is rolled back by recovery).
        if !dest.exists(&merge)? {
            let init = layout::merge_init(vid);
            dest.mkdir_all(&init)?;
            for d in head.dirs() {
                let from = layout::dir(vid, Dir::Session(d));
                if dest.exists(&from)? {
                    dest.rename(&from, &layout::in_merge_init(vid, d))?;
                }
            }
            dest.sync()?;
            self.failpoint("merge-init");
            dest.rename(&init, &merge)?;
            dest.sync()?;
        }
        self.failpoint("merge-moving");
        let src0_in_merge = layout::in_merge(vid, src0.as_str());
        if !dest.exists(&layout::merge_moved(vid))? && dest.exists(&src0_in_merge)? {
            // Every chunk subdirectory a rename needs, first (bounded: one per 256 MiB of
            // volume address space).
            let mut subdirs = BTreeSet::new();
            let mut l = open()?;
            while let Some(op) = l.next_op()? {
                if let MergeOp::Rename { to, .. } = op {
                    if let Some(d) = to.dir() {
                        subdirs.insert(d.to_string());
                    }
                }
            }
            for d in subdirs {
                dest.mkdir_all(&layout::in_merge(vid, &d))?;
            }
            // A source already moved by an earlier, interrupted run is skipped.
            let mut l = open()?;
            let mut batch = Vec::with_capacity(MOVE_BATCH);
            loop {
                let op = l.next_op()?;
                if let Some(op) = &op {
                    batch.push(match op {
                        MergeOp::Rename { from, to } => Move::Rename {
                            from: layout::in_merge_list(vid, from),
                            to: layout::in_merge_list(vid, to),
                        },
                        MergeOp::Remove(p) => Move::Remove(layout::in_merge_list(vid, p)),
                    });
                }
                if batch.len() >= MOVE_BATCH || (op.is_none() && !batch.is_empty()) {
                    dest.apply_moves(&batch)?;
                    batch.clear();
                }
                if op.is_none() {
                    break;
                }
            }
            dest.sync()?;
            dest.write(&layout::merge_moved(vid), b"")?;
        }
        self.failpoint("merge-moved");
        // Finalize.
        if dest.exists(&src0_in_merge)? {
            let t = layout::in_merge(vid, target.as_str());
            let info_tmp = format!("{t}/info.tmp");
            if let Some(staged) = dest.read(&info_tmp, self.a.meta_limit(fmt::MAX_INFO_Z as u64))? {
                // Whether the new manifest still has to move is told by the staged info, not
                // by what exists: a run that died after moving it left no manifest.z.tmp, and
                // the oldest source's own manifest.z must then stay (it is the new one).
                let text = self
                    .a
                    .codec
                    .open_meta_unhashed(&staged, 64 << 10, &info_tmp)?;
                let text = String::from_utf8(text)
                    .map_err(|_| Error::corrupt(&info_tmp, "not UTF-8 text"))?;
                let has_manifest = SessionInfo::parse(&text, &info_tmp)?
                    .manifest_hash
                    .is_some();
                if dest.exists(&format!("{t}/manifest.z.tmp"))? {
                    dest.rename(
                        &format!("{t}/manifest.z.tmp"),
                        &format!("{src0_in_merge}/manifest.z"),
                    )?;
                } else if !has_manifest {
                    dest.remove_all(&format!("{src0_in_merge}/manifest.z"))?;
                }
                dest.rename(&info_tmp, &format!("{src0_in_merge}/info"))?;
            }
            dest.sync()?;
            dest.rename(&src0_in_merge, &layout::dir(vid, Dir::Session(&target)))?;
            dest.sync()?;
        }
        self.failpoint("merge-finalizing");
        for (tmp, f) in [
            (layout::volinfo_tmp(vid), layout::volinfo(vid)),
            (layout::sessions_tmp(vid), layout::sessions(vid)),
        ] {
            if dest.exists(&tmp)? {
                dest.rename(&tmp, &f)?;
            }
        }
        if dest.exists(layout::ROOT_TMP)? {
            dest.sync()?;
            dest.rename(layout::ROOT_TMP, layout::ROOT)?;
        }
        dest.sync()?;
        dest.remove_all(&merge)?;
        dest.remove_all(&layout::merge_list(vid))?;
        Ok(())
    }

    /// Completes or rolls back a transaction that archive.ini's `[in_process]` records.
    pub(super) fn finish_in_process(&mut self) -> Result<()> {
        let Some(j) = Journal::parse(&self.a.ini.in_process)? else {
            return Ok(());
        };
        // A retry that fails leaves a marker, so a recovery that cannot succeed is not run on
        // every later command without the user knowing (format §13.5). Unlike the original,
        // the marker records a failed retry, not an attempted one (a retry killed midway is
        // simply run again: recovery is idempotent), and it goes once a recovery completes.
        if self.a.local.as_ref().is_some_and(|l| l.retry_failed()) && !self.a.force_retry {
            return Err(Error::RetryPending {
                command: j.command().into(),
                vid: j.vid().to_string(),
            });
        }
        let r = self.retry_in_process(&j);
        if let Some(l) = &self.a.local {
            l.set_retry_failed(r.is_err());
        }
        r
    }

    fn retry_in_process(&mut self, j: &Journal) -> Result<()> {
        match j {
            Journal::Delete { vid } => {
                tracing::warn!("finishing an interrupted delete of {vid}");
                self.complete_delete(vid)
            }
            Journal::Merge { vid, target, .. } => {
                let dest = self.a.dest.clone();
                if dest.exists(&layout::merge(vid))? && !dest.exists(&layout::merge_init(vid))? {
                    tracing::warn!("finishing an interrupted prune of {vid}");
                    self.run_merge(vid)?;
                } else {
                    tracing::warn!("rolling back an interrupted prune of {vid}");
                    let init = layout::merge_init(vid);
                    for d in dest.list(&init)? {
                        if let Some(s) = SessionName::parse(&d) {
                            dest.rename(
                                &layout::in_merge_init(vid, &s),
                                &layout::dir(vid, Dir::Session(&s)),
                            )?;
                        }
                    }
                    dest.remove_all(&init)?;
                    for f in [
                        layout::volinfo_tmp(vid),
                        layout::sessions_tmp(vid),
                        layout::merge_list(vid),
                        layout::info_tmp(vid, Dir::Session(target)),
                        layout::manifest_tmp(vid, Dir::Session(target)),
                    ] {
                        dest.remove_all(&f)?;
                    }
                    dest.remove_all(layout::ROOT_TMP)?;
                    self.a.ini.in_process.clear();
                    self.save_root()?;
                }
                self.reload_all()
            }
        }
    }

    /// `delete`: removes a volume and all its sessions, journaled.
    pub(crate) fn delete_volume(&mut self, vid: &VolumeId) -> Result<()> {
        let mut journaled = self.a.ini.clone();
        journaled.in_process = Journal::Delete { vid: vid.clone() }.to_items();
        self.write_journal(&journaled)?;
        self.failpoint("delete-journaled");
        self.complete_delete(vid)
    }

    fn complete_delete(&mut self, vid: &VolumeId) -> Result<()> {
        self.a.ini.volumes.retain(|(v, _)| v != vid);
        self.a.ini.in_process.clear();
        self.save_root()?;
        self.failpoint("delete-committed");
        self.a.dest.remove_all(&layout::volume(vid))?;
        if let Some(d) = self
            .a
            .local
            .as_ref()
            .map(|l| l.volume_dir(vid).join("index"))
        {
            let _ = std::fs::remove_dir_all(d);
        }
        self.reload_all()
    }
}
