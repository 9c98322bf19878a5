//! `arch-copy`: copy volumes and their sessions from one archive into another (a new archive
//! it creates, or a copy it keeps in step), between any two kinds of destination.
//!
//! Invariants:
//! * **The copy is an archive of its own**: its own uuid, salts, keys and counters
//!   ([`new_copy`]). Chunks are verified against the source's hashes before they are written
//!   and sealed with the copy's keys (see `archive::transfer`), so the two never share a
//!   (key, nonce) pair and both can be sent to afterwards.
//! * **Data first, metadata last, resumable**: each session is copied through the archive's
//!   own `SessionWriter` (chunks staged and synced at checkpoints, the metadata that names
//!   them committed last, atomically); an interrupted copy leaves the copy as it was, and the
//!   next run takes what the staging durably holds instead of copying it again.
//! * **Cost follows what is new**: sessions are matched by name; a source session is copied
//!   as the difference between its merged view and the copy's newest view ([`diff`]), so a
//!   prune on the source (which changes no view) costs no chunk data, and a new session
//!   costs what it changed. `delete` replays the source's prunes on the copy with the
//!   journaled merge (renames).
//! * **Only forward**: a session is appended after the copy's newest one; a source session
//!   older than that (and not in the copy) is reported as skipped, never inserted.

mod diff;
mod session;

#[cfg(test)]
mod faults;

use std::sync::Arc;

use crate::archive::index::MergedIndex;
use crate::archive::{
    Archive, CipherMode, Compressor, InitParams, Location, Transfer, Volume, WriteArchive,
};
use crate::auth::Auth;
use crate::error::{Error, Result};
use crate::format::SessionName;

use self::diff::{Diff, Step};
use self::session::{copy_session, Plan, Source};

/// What a copy run copies.
#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    /// The source's volumes to copy, by name.
    pub volumes: Vec<String>,
    /// Every volume of the source was selected: with `delete`, the copy's volumes that the
    /// source does not have go too (except those named in `volex`).
    pub all: bool,
    pub volex: Vec<String>,
    /// Which sessions (as `prune --session`: WHEN or `FROM,TO`); `None`: all of them.
    pub session: Option<String>,
    /// The time `session`'s relative forms count from.
    pub now: chrono::NaiveDateTime,
    /// Remove from the copy the sessions (and with `all`, volumes) the source no longer has.
    pub delete: bool,
    /// Stored bytes between checkpoints (`None`: the copy's destination decides).
    pub checkpoint_bytes: Option<u64>,
}

/// Settings of a copy `arch-copy` creates; `None`: as the source.
#[derive(Clone, Copy, Debug, Default)]
pub struct NewCopy {
    /// `Some(None)`: unencrypted.
    pub cipher: Option<Option<CipherMode>>,
    pub compression: Option<Compressor>,
}

/// One session copied (or, in a dry run, that would be).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SessionCopy {
    pub session: String,
    /// Chunks written to the copy (a dry run: at most this many).
    pub chunks_copied: u64,
    /// Their raw size.
    pub data_bytes: u64,
    /// Bytes of chunk files written.
    pub bytes_stored: u64,
    /// Chunks taken from what an interrupted copy had staged, and their size.
    pub chunks_reused: u64,
    pub bytes_reused: u64,
    /// Chunks read and found to be what the copy already holds (not written).
    pub chunks_unchanged: u64,
    /// Bytes of chunk files read from the source.
    pub bytes_read: u64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VolumeCopy {
    pub volume: String,
    /// The copy had no such volume.
    pub created: bool,
    /// The copy's volume had this name (renamed in the source since the last copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<String>,
    pub sessions: Vec<SessionCopy>,
    /// Source sessions not copied: older than the copy's newest session.
    pub skipped: Vec<String>,
    /// Sessions of the copy the source no longer has: removed (`delete`) ...
    pub removed: Vec<String>,
    /// ... or kept.
    pub kept: Vec<String>,
    /// Why this volume's copy stopped (damage in it; the other volumes went on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CopyReport {
    pub from: String,
    pub dest: String,
    pub dry_run: bool,
    /// How chunks travel: `as-stored`, `reseal` or `recompress`.
    pub transfer: &'static str,
    pub volumes: Vec<VolumeCopy>,
    /// Volumes deleted from the copy (`delete` with every volume selected).
    pub volumes_removed: Vec<String>,
    pub chunks_copied: u64,
    pub data_bytes: u64,
    pub bytes_stored: u64,
    pub chunks_reused: u64,
    /// Every byte this run wrote to the copy's destination (chunks and metadata), as the
    /// destination layer counted it.
    pub bytes_written: u64,
}

impl CopyReport {
    fn total(&mut self) {
        let all = self.volumes.iter().flat_map(|v| &v.sessions);
        for s in all {
            self.chunks_copied += s.chunks_copied;
            self.data_bytes += s.data_bytes;
            self.bytes_stored += s.bytes_stored;
            self.chunks_reused += s.chunks_reused;
        }
    }
}

fn transfer_name(t: Transfer) -> &'static str {
    match t {
        Transfer::AsStored => "as-stored",
        Transfer::Reseal => "reseal",
        Transfer::Recompress => "recompress",
    }
}

/// Creates the copy: a new, empty archive with the source's chunk size and, unless `o` says
/// otherwise, its encryption mode and compression. Its uuid, salts and keys are its own (the
/// passphrase from `auth` may be the source's).
pub fn new_copy(
    loc: Location,
    src: &Archive,
    o: &NewCopy,
    auth: &Auth,
    meta_dir: Option<&std::path::Path>,
) -> Result<WriteArchive> {
    let cipher = o.cipher.unwrap_or_else(|| {
        // The legacy mode 30 is read only: its copies get the default mode.
        src.cipher_mode().map(|m| match m {
            CipherMode::Legacy30 => CipherMode::Dgr,
            m => m,
        })
    });
    let p = InitParams {
        compression: o.compression.unwrap_or_else(|| src.compression()),
        chunksize: src.chunksize(),
        cipher,
    };
    Ok(Archive::init(loc, &p, auth, meta_dir)?.tuned_as(src))
}

/// Refuses a pair that cannot be copied: chunk sizes differ, or the target is the source (or a
/// byte copy of it, which shares its keys and counters).
pub(crate) fn check_pair(src: &Archive, copy: &Archive) -> Result<()> {
    if src.uuid() == copy.uuid() {
        return Err(Error::Usage(format!(
            "{} has the source's uuid: it is the source, or a byte copy of it (which shares its keys and counters); copy into a new place, or give an unencrypted byte copy its own uuid with `wyng arch-check --change-uuid`",
            copy.url()
        )));
    }
    if src.chunksize() != copy.chunksize() {
        return Err(Error::Usage(format!(
            "{} has {} KiB chunks, the source {} KiB: a copy keeps the chunk size; copy into a new place",
            copy.url(),
            copy.chunksize() / 1024,
            src.chunksize() / 1024
        )));
    }
    Ok(())
}

/// What a volume's copy does with sessions: which source sessions to copy (indices, in
/// order), which it skips, and which of the copy's sessions the source no longer has.
struct Choice {
    copy: Vec<usize>,
    skipped: Vec<String>,
    extra: Vec<usize>,
    /// The selection matched a session of this volume.
    matched: bool,
}

fn choose(
    src: &Volume,
    copy: Option<&Volume>,
    spec: Option<&str>,
    now: chrono::NaiveDateTime,
) -> Result<Choice> {
    let selected: Vec<usize> = match spec {
        Some(spec) => crate::ops::prune::select_spec(
            src,
            spec,
            &crate::ops::prune::PruneOptions {
                now,
                ..Default::default()
            },
        )?,
        None => (0..src.sessions.len()).collect(),
    };
    let held = |n: &SessionName| copy.is_some_and(|c| c.session_index(n).is_some());
    let newest = copy.and_then(|c| c.sessions.iter().map(|s| &s.name).max());
    let mut c = Choice {
        copy: Vec::new(),
        skipped: Vec::new(),
        extra: Vec::new(),
        matched: !selected.is_empty(),
    };
    for si in selected {
        let name = &src.sessions[si].name;
        if held(name) {
            continue;
        }
        match newest {
            Some(n) if name <= n => c.skipped.push(name.to_string()),
            _ => c.copy.push(si),
        }
    }
    if let Some(cv) = copy {
        c.extra = (0..cv.sessions.len())
            .filter(|&i| src.session_index(&cv.sessions[i].name).is_none())
            .collect();
    }
    Ok(c)
}

/// The copy's volume for source volume `src`: the one of the same id that shares its history
/// (renamed in the source since), else the one of the same name.
fn find_volume(copy: &Archive, src: &Volume) -> Option<usize> {
    let same_id = copy.volumes().iter().position(|v| {
        v.vid == src.vid
            && (v.sessions.is_empty()
                || v.sessions
                    .iter()
                    .any(|s| src.session_index(&s.name).is_some()))
    });
    same_id.or_else(|| copy.volume_index(src.name()))
}

/// The newest session of the copy that the source holds too (the same name, size and time):
/// where neither changed since it, content is the same whatever the hashes say.
fn common_session(src: &Volume, copy: &Volume) -> Option<(usize, usize)> {
    copy.sessions.iter().enumerate().rev().find_map(|(ci, c)| {
        let si = src.session_index(&c.name)?;
        let s = &src.sessions[si].info;
        (s.volsize == c.info.volsize && s.localtime == c.info.localtime).then_some((si, ci))
    })
}

/// Copies the selected volumes of `src` into `wa` (see the module docs).
pub fn run(src: &Archive, wa: &mut WriteArchive, o: &CopyOptions) -> Result<CopyReport> {
    check_pair(src, wa)?;
    let how = src.transfer_to(wa);
    let before = wa.bytes_written();
    let mut report = CopyReport {
        from: src.url().to_string(),
        dest: wa.url().to_string(),
        transfer: transfer_name(how),
        ..Default::default()
    };
    let mut matched = o.session.is_none();
    for name in &o.volumes {
        let mut v = VolumeCopy {
            volume: name.clone(),
            ..Default::default()
        };
        let copied = src
            .find_index(name)
            .and_then(|svi| copy_volume(src, svi, wa, how, o, &mut v));
        match copied {
            Ok(m) => matched |= m,
            // Damage stays with its volume; anything else (the copy's destination) stops.
            Err(e) if e.is_damage() => v.error = Some(e.to_string()),
            Err(e) => return Err(e),
        }
        report.volumes.push(v);
    }
    if !matched {
        return Err(unmatched(o));
    }
    if o.delete && o.all {
        report.volumes_removed = remove_volumes(src, wa, o)?;
    }
    report.total();
    report.bytes_written = wa.bytes_written() - before;
    Ok(report)
}

fn unmatched(o: &CopyOptions) -> Error {
    Error::NoSessionMatches {
        spec: o.session.clone().unwrap_or_default(),
        of: "the selected volumes".into(),
    }
}

/// One volume: find or create it in the copy, copy its new sessions, then (with `delete`)
/// remove the sessions the source no longer has. Returns whether the selection matched.
fn copy_volume(
    src: &Archive,
    svi: usize,
    wa: &mut WriteArchive,
    how: Transfer,
    o: &CopyOptions,
    v: &mut VolumeCopy,
) -> Result<bool> {
    let sv = &src.volumes()[svi];
    let tvi = match find_volume(wa, sv) {
        Some(i) => {
            let tv = &wa.volumes()[i];
            if tv.name() != sv.name() || tv.volinfo.desc != sv.volinfo.desc {
                if tv.name() != sv.name() {
                    v.renamed_from = Some(tv.name().to_string());
                }
                wa.relabel_volume(i, sv.name(), &sv.volinfo.desc)?;
            }
            i
        }
        None => {
            v.created = true;
            if sv.sessions.is_empty() {
                wa.add_volume(sv.name(), &sv.volinfo.desc)?;
                return Ok(o.session.is_none());
            }
            wa.new_volume_as(sv.name(), &sv.volinfo.desc, Some(&sv.vid))?
        }
    };
    let choice = choose(sv, Some(&wa.volumes()[tvi]), o.session.as_deref(), o.now)?;
    v.skipped = choice.skipped.clone();
    for &si in &choice.copy {
        let plan = Base::of(src, svi, wa, tvi, how)?.plan(src.merged(svi, si)?);
        let s = Source {
            archive: src,
            vi: svi,
            si,
            how,
        };
        v.sessions
            .push(copy_session(&s, &plan, wa, tvi, o.checkpoint_bytes)?);
    }
    let tv = &wa.volumes()[tvi];
    let newest = tv.sessions.len().saturating_sub(1);
    let extra: Vec<usize> = (0..tv.sessions.len())
        .filter(|&i| {
            src.volumes()[svi]
                .session_index(&tv.sessions[i].name)
                .is_none()
        })
        .collect();
    let (gone, stay): (Vec<usize>, Vec<usize>) =
        extra.into_iter().partition(|&i| o.delete && i != newest);
    let names = |ix: &[usize]| -> Vec<String> {
        ix.iter()
            .map(|&i| tv.sessions[i].name.to_string())
            .collect()
    };
    v.removed = names(&gone);
    v.kept = names(&stay);
    if !gone.is_empty() {
        crate::ops::prune::remove_sessions(wa, tvi, gone)?;
    }
    Ok(choice.matched)
}

/// What a source session is compared with: the copy's newest view, and how.
struct Base {
    copy: Option<Arc<MergedIndex>>,
    same_hashes: bool,
    common: Option<(Arc<MergedIndex>, Arc<MergedIndex>)>,
}

impl Base {
    /// An empty copy.
    fn none() -> Base {
        Base {
            copy: None,
            same_hashes: true,
            common: None,
        }
    }

    /// Volume `tvi` of the copy as it is now.
    fn of(src: &Archive, svi: usize, copy: &Archive, tvi: usize, how: Transfer) -> Result<Base> {
        let tv = &copy.volumes()[tvi];
        let same_hashes = how == Transfer::AsStored;
        let newest = match tv.sessions.len() {
            0 => None,
            n => Some(copy.merged(tvi, n - 1)?),
        };
        let common = match common_session(&src.volumes()[svi], tv) {
            Some((a, b)) if !same_hashes => Some((src.merged(svi, a)?, copy.merged(tvi, b)?)),
            _ => None,
        };
        Ok(Base {
            copy: newest,
            same_hashes,
            common,
        })
    }

    fn plan(self, source: Arc<MergedIndex>) -> Plan {
        Plan {
            source,
            copy: self.copy,
            same_hashes: self.same_hashes,
            common: self.common,
        }
    }
}

/// `delete` with every volume selected: the copy's volumes the source does not have.
fn remove_volumes(src: &Archive, wa: &mut WriteArchive, o: &CopyOptions) -> Result<Vec<String>> {
    let gone: Vec<(crate::format::VolumeId, String)> = wa
        .volumes()
        .iter()
        .filter(|v| !o.volex.iter().any(|x| x == v.name()))
        .filter(|v| src.volume(v.name()).is_none() && !o.volumes.iter().any(|n| n == v.name()))
        .map(|v| (v.vid.clone(), v.name().to_string()))
        .collect();
    for (vid, _) in &gone {
        wa.delete_volume(vid)?;
    }
    Ok(gone.into_iter().map(|(_, n)| n).collect())
}

/// What a copy run would do, changing nothing: `copy` is the existing copy, if any. Chunk
/// counts are upper bounds where the two archives hash differently (a chunk that turns out to
/// be what the copy holds is not written).
pub fn plan(src: &Archive, copy: Option<&Archive>, o: &CopyOptions) -> Result<CopyReport> {
    if let Some(c) = copy {
        check_pair(src, c)?;
    }
    let how = copy.map_or(Transfer::AsStored, |c| src.transfer_to(c));
    let mut report = CopyReport {
        from: src.url().to_string(),
        dest: copy.map_or(String::new(), |c| c.url().to_string()),
        dry_run: true,
        transfer: transfer_name(how),
        ..Default::default()
    };
    let mut matched = o.session.is_none();
    for name in &o.volumes {
        let svi = src.find_index(name)?;
        let sv = &src.volumes()[svi];
        let tvi = copy.and_then(|c| find_volume(c, sv));
        let cv = copy.zip(tvi).map(|(c, i)| &c.volumes()[i]);
        let choice = choose(sv, cv, o.session.as_deref(), o.now)?;
        matched |= choice.matched;
        let mut v = VolumeCopy {
            volume: name.clone(),
            created: cv.is_none(),
            renamed_from: cv
                .filter(|c| c.name() != sv.name())
                .map(|c| c.name().to_string()),
            skipped: choice.skipped.clone(),
            ..Default::default()
        };
        let mut base = match (copy, tvi) {
            (Some(c), Some(i)) => Base::of(src, svi, c, i, how)?,
            _ => Base::none(),
        };
        for &si in &choice.copy {
            let p = base.plan(src.merged(svi, si)?);
            v.sessions
                .push(count(&p, sv.sessions[si].name.to_string())?);
            // The next session is compared with this one, in the source's own hashes.
            base = Base {
                copy: Some(p.source),
                ..Base::none()
            };
        }
        if let Some(cv) = cv {
            // Once a session is copied, the copy's newest is one the source has.
            let newest = cv.sessions.len().saturating_sub(1);
            let stays = |i: usize| choice.copy.is_empty() && i == newest;
            for i in choice.extra {
                let n = cv.sessions[i].name.to_string();
                if o.delete && !stays(i) {
                    v.removed.push(n);
                } else {
                    v.kept.push(n);
                }
            }
        }
        report.volumes.push(v);
    }
    if !matched {
        return Err(unmatched(o));
    }
    if let (Some(c), true, true) = (copy, o.delete, o.all) {
        report.volumes_removed = c
            .volumes()
            .iter()
            .filter(|v| !o.volex.iter().any(|x| x == v.name()))
            .filter(|v| src.volume(v.name()).is_none())
            .map(|v| v.name().to_string())
            .collect();
    }
    report.total();
    Ok(report)
}

/// A dry run's count of what one session's walk would copy.
fn count(p: &Plan, session: String) -> Result<SessionCopy> {
    let mut s = SessionCopy {
        session,
        ..Default::default()
    };
    for step in Diff::new(p.views()) {
        if let Step::Copy { loc, .. } = step? {
            s.chunks_copied += 1;
            s.data_bytes += u64::from(loc.len);
        }
    }
    Ok(s)
}
