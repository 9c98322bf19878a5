//! Writing a session: [`SessionWriter`] stages chunk files (or hard links) in `<vid>/S-tmp`,
//! then [`SessionWriter::commit`] writes `manifest.z` and `info`, renames the directory to the
//! session's name and zipper-saves volinfo and the root (see [`crate::archive`]'s commit
//! order). Dropping a writer that was not committed aborts it: the staging directory is
//! removed, and nothing ever referred to it.

use std::sync::Arc;

use super::index::{Builder, MergedIndex};
use super::write::{failpoint, WriteArchive};
use super::{layout, Archive, ChunkLoc};
use crate::codec::Encoded;
use crate::error::{Error, Result};
use crate::format::manifest::{write_log_text, ManifestLog};
use crate::format::{self as fmt, Session, SessionInfo, SessionName};
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
}

impl WriteArchive {
    /// Starts staging session `name` of volume `vi` (an empty `S-tmp`, or on a destination
    /// without atomic rename the session's own directory: see [`SessionWriter::staging`]).
    pub fn begin_session(&mut self, vi: usize, name: SessionName) -> Result<SessionWriter<'_>> {
        let vid = self.a.volumes[vi].vid.clone();
        let dir = layout::dir(&vid, staging_dir(&*self.a.dest, &name));
        self.a.dest.remove_all(&dir)?;
        self.a.dest.mkdir_all(&dir)?;
        Ok(SessionWriter {
            w: self,
            vi,
            name,
            done: false,
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

    /// Makes chunk `idx` a hard link to a file the archive already holds with the same hash.
    pub fn link(&self, idx: u64, existing: &str) -> Result<()> {
        self.w.a.dest.link_chunk(existing, &self.staged(idx))
    }

    /// Where chunk `idx` of this session is while it is staged (dedup links to it).
    pub fn staged_path(&self, idx: u64) -> String {
        self.staged(idx)
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
        w.a.dest.sync()?;
        failpoint("before-session-rename");
        if !in_place {
            w.a.dest.rename(
                &layout::dir(&vid, staging),
                &layout::dir(&vid, layout::Dir::Session(&self.name)),
            )?;
        }
        self.done = true;
        failpoint("after-session-rename");
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
        Ok(installed)
    }

    /// Abandons the session explicitly (dropping the writer does the same).
    pub fn abort(mut self) -> Result<()> {
        self.done = true;
        let vid = &self.w.a.volumes[self.vi].vid;
        self.w.a.dest.remove_all(&layout::dir(vid, self.staging()))
    }
}

impl Drop for SessionWriter<'_> {
    fn drop(&mut self) {
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
