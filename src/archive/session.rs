//! Writing a session: [`SessionWriter`] stages chunk files (or hard links) in `<vid>/S-tmp`,
//! then [`SessionWriter::commit`] writes `manifest.z` and `info`, renames the directory to the
//! session's name and zipper-saves volinfo and the root (see [`crate::archive`]'s commit
//! order). Dropping a writer that was not committed aborts it: the staging directory is
//! removed, and nothing ever referred to it.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use super::index::{Builder, MergedIndex};
use super::resume::{self, RecordWriter, ReuseCursor};
use super::write::WriteArchive;
use super::{layout, Archive, ChunkLoc};
use crate::codec::Encoded;
use crate::dest::Move;
use crate::error::{Error, Result};
use crate::format::manifest::{write_log_text, ManifestLog};
use crate::format::{self as fmt, Session, SessionInfo, SessionName, VolumeId};
use crate::spool::Spool;

/// A raw chunk compressed and hashed as this archive stores it: enough to compare with a
/// manifest, and what [`SessionWriter::store`] seals and writes.
pub struct Hashed(pub(super) Encoded);

impl Hashed {
    pub fn hash(&self) -> fmt::Hash32 {
        self.0.hash
    }

    /// Compressed size (what storing it costs, before encryption).
    pub fn len(&self) -> usize {
        self.0.file.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.file.is_empty()
    }
}

/// A session's own manifest as the writer built it: a compact log of its lines (see
/// `format::manifest::ManifestLog`), turned into text only as it is compressed.
pub struct NewManifest {
    log: Spool,
    text_len: u64,
}

impl NewManifest {
    pub fn new(log: ManifestLog<Spool>) -> Result<NewManifest> {
        let text_len = log.text_len();
        let log = log.finish().map_err(|e| Error::io("manifest spool", e))?;
        Ok(NewManifest { log, text_len })
    }

    pub fn is_empty(&self) -> bool {
        self.text_len == 0
    }
}

impl Archive {
    /// A new manifest's stored file: compressed, hashed and sealed as it is generated.
    pub(super) fn encode_manifest(&self, m: &NewManifest) -> Result<(fmt::Hash32, Spool)> {
        let cs = self.chunksize();
        self.codec.encode_meta_stream(
            m.text_len,
            |w| write_log_text(m.log.reader()?, cs, w),
            &self.spool_dir(),
        )
    }
}

/// Where a session is staged: `S-tmp`, renamed to the session's name at commit; or, where
/// rename is not atomic (object storage, where renaming a directory is copying every chunk),
/// under the final name from the start. Either way nothing references it until the root is
/// written, and recovery removes a session directory no root refers to.
fn staging_dir<'n>(dest: &dyn crate::dest::Dest, name: &'n SessionName) -> layout::Dir<'n> {
    if dest.capabilities().atomic_rename {
        layout::Dir::Staging
    } else {
        layout::Dir::Session(name)
    }
}

pub struct SessionWriter<'a> {
    w: &'a mut WriteArchive,
    vi: usize,
    name: SessionName,
    done: bool,
    /// `None` without local state: an interrupted send then starts over.
    resume: Option<Resume>,
}

/// A session's part in resuming (see [`super::resume`]).
struct Resume {
    /// This session's record, appended to at each checkpoint.
    record: Mutex<RecordWriter>,
    /// An interrupted send's staging, set aside, and its record: where chunks may be taken
    /// from.
    from: Option<(String, PathBuf)>,
}

impl WriteArchive {
    /// Starts staging session `name` of volume `vi` (an empty `S-tmp`, or on a destination
    /// without atomic rename the session's own directory: see [`SessionWriter::staging`]).
    /// With local state the staging is resumable: what an interrupted send of this volume
    /// staged, that its record names, is set aside for [`SessionWriter::reuse_cursor`].
    pub(crate) fn begin_session(
        &mut self,
        vi: usize,
        name: SessionName,
    ) -> Result<SessionWriter<'_>> {
        let vid = self.a.volumes[vi].vid.clone();
        let dest = &*self.a.dest;
        let dir = layout::dir(&vid, staging_dir(dest, &name));
        let local = self.a.local_volume_dir(&vid);
        let mut from = None;
        if let Some(ld) = &local {
            let rec = resume::record_path(ld);
            match resume::read_header(&rec) {
                Some(h) if self.a.marker_matches(&h) => {
                    let aside = if h.staging == dir {
                        let a = layout::dir(&vid, layout::Dir::Aside);
                        dest.remove_all(&a)?;
                        dest.rename(&h.staging, &a)?;
                        a
                    } else {
                        h.staging.clone()
                    };
                    // What may be taken is what the record names and the staging holds.
                    let taken = resume::taken_path(ld);
                    let cs = self.a.chunksize();
                    let kept = resume::keep_present(&rec, &taken, cs, &aside, |d| dest.list(d))?;
                    if kept > 0 {
                        tracing::info!("resuming an interrupted send: {kept} chunks staged");
                        from = Some((aside, taken));
                    } else {
                        // Nothing to take: the staging goes now, not after the commit (it may
                        // be what filled the destination).
                        dest.remove_all(&aside)?;
                        let _ = std::fs::remove_file(&taken);
                    }
                }
                _ => {}
            }
            let _ = std::fs::remove_file(&rec);
        }
        dest.remove_all(&dir)?;
        dest.mkdir_all(&dir)?;
        let resume = match &local {
            Some(ld) => {
                let h = resume::Header {
                    id: resume::new_id(),
                    staging: dir.clone(),
                    volume: self.a.volumes[vi].name().to_string(),
                };
                dest.write(&h.marker(), h.id.as_bytes())?;
                match RecordWriter::create(&resume::record_path(ld), &h) {
                    Ok(record) => Some(Resume {
                        record: Mutex::new(record),
                        from,
                    }),
                    Err(e) => {
                        tracing::warn!("cannot keep a resume record ({e}): an interrupted send will start over");
                        None
                    }
                }
            }
            None => None,
        };
        Ok(SessionWriter {
            w: self,
            vi,
            name,
            done: false,
            resume,
        })
    }
}

impl WriteArchive {
    /// Removes what an interrupted send of volume `vi` staged for its resume (to make room:
    /// sessions are worth more than a head start).
    pub(crate) fn drop_resume(&mut self, vi: usize) -> Result<()> {
        let vid = self.a.volumes[vi].vid.clone();
        let Some(ld) = self.a.local_volume_dir(&vid) else {
            return Ok(());
        };
        let rec = resume::record_path(&ld);
        if let Some(h) = resume::read_header(&rec) {
            if self.a.marker_matches(&h) {
                tracing::info!(
                    "removing {}: staged by an interrupted send, to make room",
                    h.staging
                );
                self.a.dest.remove_all(&h.staging)?;
            }
        }
        let _ = std::fs::remove_file(rec);
        Ok(())
    }
}

impl Archive {
    /// Whether the staging directory `h` names holds the marker with `h`'s id.
    pub(super) fn marker_matches(&self, h: &resume::Header) -> bool {
        matches!(self.dest.read(&h.marker(), 64), Ok(Some(m)) if m == h.id.as_bytes())
    }

    /// This host's resume record for volume `vid` (read locally; its marker not checked).
    fn record(&self, vid: &VolumeId) -> Option<resume::Header> {
        resume::read_header(&resume::record_path(&self.local_volume_dir(vid)?))
    }

    /// The volume ids local state has a directory for (volumes this host sent, or began to).
    fn local_vids(&self) -> Vec<VolumeId> {
        let Some(rd) = self.local_dir().and_then(|d| std::fs::read_dir(d).ok()) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| VolumeId::parse(&e.file_name().to_string_lossy()))
            .collect()
    }

    /// Whether `dir` (a directory of volume `vid`) is the staging of an interrupted send that
    /// this host's record can resume (recovery keeps it).
    pub(super) fn resumable(&self, vid: &VolumeId, dir: &str) -> bool {
        self.record(vid)
            .is_some_and(|h| h.names(vid, dir) && self.marker_matches(&h))
    }

    /// The staging directories this host's interrupted sends left for their resume, with the
    /// volume each is for (recovery keeps them; `arch-check` mentions them).
    pub fn resumable_stagings(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .local_vids()
            .iter()
            .filter_map(|v| self.record(v))
            .filter(|h| self.marker_matches(h))
            .map(|h| (h.staging, h.volume))
            .collect();
        out.sort();
        out
    }

    /// Whether `vid`, a volume directory no root names, holds the resumable staging of this
    /// host's interrupted first send of it (whatever else it holds is staging too: no root
    /// names the volume; the first commit's recovery removes what is left over).
    pub(super) fn resumable_first_send(&self, vid: &VolumeId) -> bool {
        self.record(vid)
            .is_some_and(|h| self.first_send_record(vid, &h))
    }

    fn first_send_record(&self, vid: &VolumeId, h: &resume::Header) -> bool {
        h.staging.starts_with(&format!("{vid}/")) && self.marker_matches(h)
    }

    /// The id of a volume `name` whose first send this host began and that can resume: no
    /// root names it yet, its directory holds only that staging.
    pub(super) fn resumable_new_volume(&self, name: &str) -> Option<VolumeId> {
        self.local_vids().into_iter().find(|v| {
            !self.volumes.iter().any(|x| &x.vid == v)
                && self
                    .record(v)
                    .is_some_and(|h| h.volume == name && self.first_send_record(v, &h))
        })
    }
}

impl SessionWriter<'_> {
    /// The directory this session is staged in ([`staging_dir`]).
    fn staging(&self) -> layout::Dir<'_> {
        staging_dir(&*self.w.a.dest, &self.name)
    }

    pub fn archive(&self) -> &Archive {
        self.w
    }

    pub fn name(&self) -> &SessionName {
        &self.name
    }

    fn staged(&self, idx: u64) -> String {
        layout::chunk(
            &self.w.a.volumes[self.vi].vid,
            self.staging(),
            idx * self.w.a.chunksize(),
        )
    }

    /// Seals and writes chunk `idx`; returns the bytes stored.
    pub fn store(&self, idx: u64, hashed: Hashed) -> Result<u64> {
        let enc = self.w.a.codec.seal_chunk(hashed.0)?;
        self.w.a.dest.write_chunk(&self.staged(idx), &enc.file)?;
        Ok(enc.file.len() as u64)
    }

    /// Writes chunk `idx`'s file as given (bytes already in this archive's form).
    pub(super) fn write_staged(&self, idx: u64, file: &[u8]) -> Result<()> {
        self.w.a.dest.write_chunk(&self.staged(idx), file)
    }

    /// Makes chunk `idx` a hard link to a file the archive already holds with the same hash.
    pub fn link(&self, idx: u64, existing: &str) -> Result<()> {
        self.w.a.dest.link_chunk(existing, &self.staged(idx))
    }

    /// The chunks an interrupted send of this volume staged and recorded, if this session
    /// resumes one: a cursor over their addresses and hashes.
    pub(crate) fn reuse_cursor(&self) -> Option<ReuseCursor> {
        let (_, rec) = self.resume.as_ref()?.from.as_ref()?;
        ReuseCursor::open(rec)
    }

    /// The move that takes chunk `idx` from the interrupted send's staging into this one
    /// (its recorded digest is what this send read: see [`Self::reuse_cursor`]).
    pub fn take(&self, idx: u64) -> Option<Move> {
        let (aside, _) = self.resume.as_ref()?.from.as_ref()?;
        Some(Move::Rename {
            from: layout::chunk_under(aside, idx * self.w.a.chunksize()),
            to: self.staged(idx),
        })
    }

    /// Makes what was staged so far durable and records it for a resume: `moves` (chunks
    /// taken from an interrupted send) are carried out, the destination synced, then
    /// `entries` (every chunk staged since the last checkpoint, taken or stored) appended to
    /// the record.
    pub fn checkpoint(&self, entries: &[resume::Staged], moves: &[Move]) -> Result<()> {
        let dest = &*self.w.a.dest;
        if !moves.is_empty() {
            let mut dirs: Vec<&str> = moves
                .iter()
                .filter_map(|m| match m {
                    Move::Rename { to, .. } => to.rsplit_once('/').map(|(d, _)| d),
                    Move::Remove(_) => None,
                })
                .collect();
            dirs.dedup();
            for d in dirs {
                dest.mkdir_all(d)?;
            }
            dest.apply_moves(moves)?;
        }
        dest.sync()?;
        if let Some(r) = &self.resume {
            r.record.lock().append(entries);
        }
        Ok(())
    }

    /// Forgets the resume state once the session is committed or abandoned: the record, and
    /// the interrupted send's staging (what this session did not take of it).
    fn end_resume(&mut self) {
        let Some(r) = self.resume.take() else { return };
        let _ = std::fs::remove_file(r.record.lock().path());
        if let Some((aside, rec)) = r.from {
            if let Err(e) = self.w.a.dest.remove_all(&aside) {
                tracing::debug!("could not remove {aside}: {e}");
            }
            let _ = std::fs::remove_file(rec);
        }
    }

    /// Commits the staged session with its `info` (the manifest hash is filled in here) and
    /// its manifest text (`None`: nothing changed). With `index`, the merged view of the new
    /// session that the caller built as it went is kept for later commands.
    pub fn commit(
        mut self,
        mut info: SessionInfo,
        manifest: Option<NewManifest>,
        index: Option<Builder>,
    ) -> Result<Option<Arc<MergedIndex>>> {
        let w = &mut *self.w;
        let vi = self.vi;
        let vid = w.a.volumes[vi].vid.clone();
        let in_place = !w.a.dest.capabilities().atomic_rename;
        let staging = staging_dir(&*w.a.dest, &self.name);
        info.manifest_hash = match manifest {
            Some(m) if !m.is_empty() => {
                let (hash, file) = w.a.encode_manifest(&m)?;
                drop(m);
                let len = file.len();
                let mut r = file.reader().map_err(|e| Error::io("manifest spool", e))?;
                w.a.dest
                    .write_from(&layout::manifest(&vid, staging), &mut r, len)?;
                Some(hash)
            }
            _ => None,
        };
        let enc = w.a.codec.encode_meta(info.to_text().as_bytes())?;
        if enc.file.len() as u64 > w.a.meta_limit(fmt::MAX_INFO_Z as u64) {
            return Err(Error::Usage(
                "session info too large (too many or too long tags)".into(),
            ));
        }
        w.a.dest.write(&layout::info(&vid, staging), &enc.file)?;
        // The resume marker goes last before the rename (a session dir never holds it), so an
        // interruption before this point leaves a staging a later run still resumes from; only
        // the sync and the rename remain in which a kill costs the session's chunks.
        if self.resume.is_some() {
            w.a.dest.remove_all(&format!(
                "{}/{}",
                layout::dir(&vid, staging),
                resume::MARKER
            ))?;
        }
        w.a.dest.sync()?;
        w.a.failpoint("before-session-rename");
        if !in_place {
            w.a.dest.rename(
                &layout::dir(&vid, staging),
                &layout::dir(&vid, layout::Dir::Session(&self.name)),
            )?;
        }
        self.done = true;
        w.a.failpoint("after-session-rename");
        let mut volinfo = w.a.volumes[vi].volinfo.clone();
        volinfo.sessions.push((self.name.clone(), enc.hash));
        let mut sessions = w.a.volumes[vi].sessions.clone();
        sessions.push(Session {
            name: self.name.clone(),
            info,
        });
        w.save_volume(vi, volinfo, sessions)?;
        let si = w.a.volumes[vi].sessions.len() - 1;
        let installed = match index {
            // The view is a cache: a failure to keep it costs the next command a rebuild.
            Some(b) => match w.a.install(vi, si, b) {
                Ok(ix) => Some(ix),
                Err(e) if e.is_damage() => return Err(e),
                Err(e) => {
                    tracing::warn!("could not keep the new session's index: {e}");
                    None
                }
            },
            None => None,
        };
        w.a.prune_indexes(vi);
        self.end_resume();
        Ok(installed)
    }

    /// Abandons the session explicitly (dropping the writer does the same).
    pub fn abort(mut self) -> Result<()> {
        self.done = true;
        self.end_resume();
        let vid = &self.w.a.volumes[self.vi].vid;
        self.w.a.dest.remove_all(&layout::dir(vid, self.staging()))
    }
}

/// A writer dropped before its commit (an error, an interrupt) keeps a resumable staging for
/// the next send; without local state it removes the staging, which nothing refers to.
impl Drop for SessionWriter<'_> {
    fn drop(&mut self) {
        if let (false, Some(r)) = (self.done, self.resume.take()) {
            if let Some((aside, rec)) = r.from {
                let _ = self.w.a.dest.remove_all(&aside);
                let _ = std::fs::remove_file(rec);
            }
            return;
        }
        if !self.done {
            let vid = &self.w.a.volumes[self.vi].vid;
            if let Err(e) = self.w.a.dest.remove_all(&layout::dir(vid, self.staging())) {
                tracing::debug!("could not remove an abandoned staging directory: {e}");
            }
        }
    }
}

impl ChunkLoc {
    /// The path of this chunk, for a hard link to it.
    pub fn path(&self) -> &str {
        &self.path
    }
}
