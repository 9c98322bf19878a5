//! A session's own manifest, verified and streamed.
//!
//! The compressed file is first copied into a [`Spool`] (memory while small, an unlinked local
//! file when large) and verified whole: authentication in encrypted archives, then the hash its
//! `info` records. Only then is it decompressed, as a stream, and parsed one line at a time, so
//! a manifest of any size costs a bounded amount of memory and nothing unverified is parsed.

use std::io::BufRead;

use super::{layout, Archive};
use crate::error::{Error, Result};
use crate::format::manifest::{Entry, LineReader};
use crate::format::{self as fmt, Session, VolumeId};

/// The lines a session recorded itself: `(chunk index, value)` in ascending order.
pub(crate) struct SessionLines {
    inner: Option<LineReader<Box<dyn BufRead + Send>>>,
}

impl SessionLines {
    pub fn empty() -> SessionLines {
        SessionLines { inner: None }
    }
}

impl Iterator for SessionLines {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        Some(self.inner.as_mut()?.next()?.map_err(Error::from))
    }
}

impl Archive {
    /// The manifest lines session `si` of volume `vi` recorded itself.
    pub(crate) fn session_lines(&self, vi: usize, si: usize) -> Result<SessionLines> {
        let vol = &self.volumes[vi];
        self.lines_of(&vol.vid, &vol.sessions[si])
    }

    pub(super) fn lines_of(&self, vid: &VolumeId, s: &Session) -> Result<SessionLines> {
        let Some(h) = s.info.manifest_hash else {
            return Ok(SessionLines::empty());
        };
        let p = layout::manifest(vid, layout::Dir::Session(&s.name));
        let cs = self.chunksize();
        let max_file = fmt::max_manifest_z(s.info.volsize, cs) + self.codec.meta_overhead();
        let mut spool = self.spool();
        if self.dest.read_into(&p, max_file, &mut spool)?.is_none() {
            return Err(Error::corrupt(&p, "missing"));
        }
        let text = self.codec.decode_meta_spool(spool, &h, &p)?;
        Ok(SessionLines {
            inner: Some(LineReader::new(text, cs, s.info.volsize, &p)),
        })
    }
}
