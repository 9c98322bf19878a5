//! Lanes: one archive's part in a volume's send.
//!
//! A [`Lane`] is shared (by reference) by the walk, the workers and the collector for the
//! whole volume; only its counters and its `failed` flag change meanwhile, both atomics. Once
//! `failed` is set the lane is skipped everywhere: a failed archive drops out while the others
//! go on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::archive::dedup::DedupIndex;
use crate::archive::digests::DigestWriter;
use crate::archive::index::{Builder, MergedIndex};
use crate::archive::{Archive, SessionWriter, WriteArchive};
use crate::error::Result;
use crate::format::manifest::{chunk_count, ManifestLog};
use crate::format::{Session, SessionName};
use crate::source::{Scan, Source};
use crate::spool::Spool;

/// One archive's part in a volume's send, as the planner hands it over.
pub(super) struct VolTarget<'w> {
    pub wa: &'w mut WriteArchive,
    pub vi: usize,
    pub scan: Scan,
    pub index: Option<&'w DedupIndex>,
}

/// Where a send's chunks go: a session being staged, or nowhere (a dry run only counts).
pub(super) enum Writer<'a> {
    Real(SessionWriter<'a>),
    Dry(&'a Archive),
}

impl Writer<'_> {
    pub fn archive(&self) -> &Archive {
        match self {
            Writer::Real(w) => w.archive(),
            Writer::Dry(a) => a,
        }
    }

    pub fn session(&self) -> Option<&SessionWriter<'_>> {
        match self {
            Writer::Real(w) => Some(w),
            Writer::Dry(_) => None,
        }
    }
}

/// One archive's state while a volume is sent: shared by the walk, the workers and the
/// collector.
pub(super) struct Lane<'w> {
    /// Position among the targets handed to [`super::volume::send_volume`].
    pub pos: usize,
    pub writer: Writer<'w>,
    pub vi: usize,
    pub name: String,
    pub last: Option<Session>,
    /// The previous session's merged view.
    pub old: Option<Arc<MergedIndex>>,
    /// Chunks in the previous view.
    pub old_n: u64,
    /// Position of the new session among the view's origins.
    pub me: u16,
    /// Chunks the copy-on-write maps mark (`None`: a full scan).
    pub marks: Option<Vec<u64>>,
    pub local_vol: Option<PathBuf>,
    pub index: Option<&'w DedupIndex>,
    pub linked: AtomicU64,
    pub failed: AtomicBool,
}

/// What a lane's collector starts from and hands to the commit: the new session's manifest
/// lines, its merged view, the digest map for the next send, and the counts of what it saw.
#[derive(Default)]
pub(super) struct Collected {
    /// The new session's own lines (`None`: a dry run).
    pub manifest: Option<ManifestLog<Spool>>,
    pub manifest_lines: u64,
    /// The new merged view (`None`: a dry run).
    pub view: Option<Builder>,
    pub digests: Option<DigestWriter>,
    /// Files to move from an interrupted send's staging, not yet checkpointed.
    pub moves: Vec<crate::archive::Move>,
    pub data: u64,
    pub zero: u64,
    pub stored: u64,
    pub taken: u64,
    pub taken_bytes: u64,
}

impl Collected {
    /// Drops what a failed lane built (its digest map for the next send).
    pub(crate) fn discard(self) {
        if let Some(d) = self.digests {
            d.discard();
        }
    }
}

impl<'w> Lane<'w> {
    /// Prepares one archive's lane: its previous view, its staging session, its digest map.
    pub fn setup(
        vt: VolTarget<'w>,
        pos: usize,
        src: &Source,
        name: &SessionName,
        dry: bool,
    ) -> Result<(Lane<'w>, Collected)> {
        let VolTarget {
            wa,
            vi,
            scan,
            index,
        } = vt;
        let cs = wa.chunksize();
        let vol = wa.volumes()[vi].clone();
        let last: Option<Session> = vol.last().cloned();
        let old = match vol.sessions.len() {
            0 => None,
            n => Some(wa.merged(vi, n - 1)?),
        };
        let old_n = old.as_ref().map_or(0, |o| o.chunks());
        let local_vol = wa.local_volume_dir(&vol.vid);
        tracing::info!(
            "sending {} ({} bytes, {} chunks) as {name} to {}",
            vol.name(),
            src.size,
            chunk_count(src.size, cs),
            wa.url()
        );
        let view = if dry {
            None
        } else {
            Some(wa.next_index_builder(vi, name, src.size)?)
        };
        let spool = wa.spool();
        let writer = if dry {
            Writer::Dry(wa)
        } else {
            Writer::Real(wa.begin_session(vi, name.clone())?)
        };
        let digests = match (&local_vol, dry) {
            (Some(d), false) => match DigestWriter::new(d) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("no digest map for the next send: {e}");
                    None
                }
            },
            _ => None,
        };
        let marks = match scan {
            Scan::Full => None,
            Scan::Chunks(v) => Some(v),
        };
        let lane = Lane {
            pos,
            writer,
            vi,
            name: vol.name().to_string(),
            last,
            old,
            old_n,
            me: vol.sessions.len() as u16,
            marks,
            local_vol,
            index,
            linked: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        };
        let start = Collected {
            manifest: (!dry).then(|| ManifestLog::new(spool)),
            view,
            digests,
            ..Default::default()
        };
        Ok((lane, start))
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}
