//! Finishing a lane: commit its session (or abandon it when nothing changed), keep the digest
//! map for the next send, and move local storage's baseline.

use crate::archive::digests::DigestWriter;
use crate::archive::{NewManifest, WriteArchive};
use crate::error::Result;
use crate::format::{Session, SessionInfo, SessionName};
use crate::source::deltamap::DeltaMap;
use crate::source::{Plan, Prepared, Source};

use super::lanes::{Collected, Lane, Writer};
use super::{SendOptions, VolumeReport};

/// What the walk read, shared by every lane's report.
#[derive(Clone, Copy, Default)]
pub(super) struct Read {
    pub chunks: u64,
    pub bytes: u64,
}

/// Commits one lane's session (or abandons it when nothing changed).
pub(super) fn finish_lane(
    lane: Lane<'_>,
    mut p: Collected,
    src: &Source,
    name: &SessionName,
    opts: &SendOptions,
    read: Read,
) -> Result<VolumeReport> {
    let cs = lane.writer.archive().chunksize();
    let last = lane.last;
    let mut report = VolumeReport {
        volume: lane.name,
        session: None,
        volsize: src.size,
        first: last.is_none(),
        chunks_read: read.chunks,
        chunks_changed: p.data + p.zero,
        chunks_data: p.data,
        chunks_zero: p.zero,
        bytes_read: read.bytes,
        bytes_stored: p.stored,
        chunks_linked: lane.linked.into_inner(),
        chunks_reused: p.taken,
        bytes_reused: p.taken_bytes,
        ..Default::default()
    };
    let is_changed = match &last {
        None => true,
        Some(l) => {
            p.manifest_lines > 0
                || l.info.volsize != src.size
                || l.info.permissions != src.permissions
        }
    };
    let writer = match lane.writer {
        Writer::Real(w) => w,
        Writer::Dry(_a) => return Ok(report),
    };
    if !is_changed && !opts.send_unchanged {
        writer.abort()?;
        if let (Some(d), Some(l)) = (p.digests.take(), &last) {
            save_digests(d, l, cs);
        }
        return Ok(report);
    }
    if !p.moves.is_empty() {
        writer.checkpoint(&[], &p.moves)?;
    }
    let mut view = p.view.take().expect("not a dry run");
    let manifest = NewManifest::new(p.manifest.take().expect("not a dry run"))?;
    let info = SessionInfo {
        localtime: src.mtime_ns,
        previous: last.as_ref().map(|l| l.name.clone()),
        permissions: src.permissions.clone(),
        manifest_hash: None,
        volsize: src.size,
        sequence: last.as_ref().map_or(0, |l| l.info.sequence + 1),
        mfcs: Some(view.view_mfcs()),
        tags: opts.tags.clone(),
    };
    let committed = Session {
        name: name.clone(),
        info: info.clone(),
    };
    writer.commit(info, Some(manifest), Some(view))?;
    report.session = Some(name.to_string());
    if let Some(d) = p.digests {
        save_digests(d, &committed, cs);
    }
    Ok(report)
}

/// Keeps the digest map for the volume's newest session. Best effort: without it the next
/// send compresses every chunk to compare, which is slower but just as correct.
fn save_digests(d: DigestWriter, last: &Session, cs: u64) {
    if let Err(e) = d.save(last, cs) {
        tracing::warn!("could not save the digest map: {e}");
    }
}

/// After a volume of local storage was sent from its `.wyng2` snapshot as planned by
/// [`crate::source::LocalStorage::prepare`], moves the baseline (behaviour §7.1 step 7): after
/// a new session `.wyng2` becomes the paired baseline with a blank map; when nothing changed it
/// becomes the baseline all the same (it holds what the newest session holds); a dry run keeps
/// the changes it found in the map, as monitor does.
pub(super) fn after_local(
    wa: &mut WriteArchive,
    vi: usize,
    prep: &Prepared,
    report: VolumeReport,
    last_before: Option<Session>,
    opts: &SendOptions,
) -> Result<VolumeReport> {
    if matches!(prep.plan, Plan::Nocow) {
        return Ok(report);
    }
    let cs = wa.chunksize();
    let snaps = &prep.snaps;
    let last = wa.volumes()[vi].last().cloned();
    match (&report.session, &last, &last_before) {
        (Some(_), Some(l), _) => snaps.rotate_after_send(l, cs)?,
        // A dry run: keep what was found, as monitor does.
        (None, _, Some(l)) if opts.dry_run => match &prep.plan {
            Plan::Incremental(map) => snaps.rotate_with(l, map)?,
            _ => snaps.drop_snap2(),
        },
        // No session: `.wyng2` holds what the newest session holds.
        (None, Some(l), _) => snaps.rotate_with(l, &DeltaMap::blank(l.info.volsize, cs))?,
        _ => snaps.drop_snap2(),
    }
    Ok(report)
}
