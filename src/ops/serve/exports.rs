//! The exports of a server: every session of every volume as `VOLUME@YYYYMMDD-HHMMSS`, and
//! `VOLUME` for its newest (as selected), named from the archive's current state.
//!
//! Invariants:
//! * **The list follows the archive**: every list and every export opened looks at the live
//!   archive (checked against the destination at most every refresh interval), so a session
//!   sent while serving is an export at the next list. An open export keeps its session (by
//!   volume id and name) until it is pruned.
//! * A name two volumes would share (a hostile or hand-edited archive) is no export.
//! * Bytes come only from [`SessionImage`] (verified chunks) and, with overlays, from a
//!   checksummed [`Overlay`].

use std::sync::Arc;

use crate::archive::live::{LiveArchive, SessionImage};
use crate::archive::{Archive, Volume};
use crate::error::{Error, Result};
use crate::format::SessionName;
use crate::ops::SessionSel;

use super::overlay::{Layer, Overlay, Overlays};

/// One export as a list shows it.
pub(crate) struct Listed {
    pub(crate) name: String,
    pub(crate) description: String,
}

/// Why an export could not be opened.
pub(crate) enum Refused {
    /// No such export (the message says what there is).
    Unknown(String),
    /// It exists but cannot be served now (damaged index, overlay in use...).
    Failed(Error),
}

pub(crate) struct Exports {
    live: Arc<LiveArchive>,
    volume: Option<String>,
    session: Option<SessionSel>,
    overlays: Option<Overlays>,
}

/// A session chosen by name.
struct Chosen {
    vi: usize,
    si: usize,
    /// Named as the volume's newest (`VOLUME`), not by its date.
    newest: bool,
}

impl Exports {
    pub(crate) fn new(
        live: Arc<LiveArchive>,
        volume: Option<String>,
        session: Option<SessionSel>,
        overlays: Option<Overlays>,
    ) -> Exports {
        Exports {
            live,
            volume,
            session,
            overlays,
        }
    }

    pub(crate) fn writable(&self) -> bool {
        self.overlays.is_some()
    }

    pub(crate) fn overlays(&self) -> Option<&Overlays> {
        self.overlays.as_ref()
    }

    /// The volumes served and, for each, the indexes of its sessions served (oldest first).
    fn served<'a>(&self, a: &'a Archive) -> Vec<(usize, &'a Volume, Vec<usize>)> {
        let mut out = Vec::new();
        for (vi, vol) in a.volumes().iter().enumerate() {
            if self.volume.as_ref().is_some_and(|v| v != vol.name()) || vol.sessions.is_empty() {
                continue;
            }
            if a.volume_index(vol.name()).is_none() {
                continue; // two volumes of one name: neither is served
            }
            let sessions = match &self.session {
                None => (0..vol.sessions.len()).collect(),
                Some(sel) => match sel.select(vol) {
                    Ok(i) => vec![i],
                    Err(_) => continue,
                },
            };
            out.push((vi, vol, sessions));
        }
        out
    }

    fn describe(&self, vol: &Volume, si: usize, newest: bool) -> String {
        let s = &vol.sessions[si];
        format!(
            "{}session {} of {}, {}, {}",
            if newest { "newest " } else { "" },
            s.name.date(),
            crate::archive::sanitized(vol.name()),
            crate::size::human(s.info.volsize),
            if self.writable() {
                "writable (copy-on-write overlay)"
            } else {
                "read-only"
            }
        )
    }

    /// Every export, after checking the archive for changes.
    pub(crate) fn list(&self) -> Vec<Listed> {
        self.live.refresh(false);
        let a = self.live.current();
        let mut out = Vec::new();
        for (_, vol, sessions) in self.served(&a) {
            let newest = *sessions.last().expect("never empty");
            out.push(Listed {
                name: vol.name().to_string(),
                description: self.describe(vol, newest, true),
            });
            for si in sessions {
                out.push(Listed {
                    name: format!("{}@{}", vol.name(), vol.sessions[si].name.date()),
                    description: self.describe(vol, si, false),
                });
            }
        }
        out
    }

    /// The session `name` names in `a`.
    fn choose(&self, a: &Archive, name: &str) -> std::result::Result<Chosen, Refused> {
        let served = self.served(a);
        if name.is_empty() {
            return match served.as_slice() {
                [(vi, _, sessions)] => Ok(Chosen {
                    vi: *vi,
                    si: *sessions.last().expect("never empty"),
                    newest: true,
                }),
                _ => Err(Refused::Unknown(
                    "there is no default export here: name one (`nbdinfo --list` shows them)"
                        .into(),
                )),
            };
        }
        let whole = served
            .iter()
            .find(|(_, v, _)| v.name() == name)
            .map(|(vi, _, s)| Chosen {
                vi: *vi,
                si: *s.last().expect("never empty"),
                newest: true,
            });
        let dated = name.rsplit_once('@').and_then(|(vol, date)| {
            let s = SessionName::from_user(date)?;
            let (vi, v, sessions) = served.iter().find(|(_, v, _)| v.name() == vol)?;
            let si = v.session_index(&s).filter(|i| sessions.contains(i))?;
            Some(Chosen {
                vi: *vi,
                si,
                newest: false,
            })
        });
        match (whole, dated) {
            (Some(_), Some(_)) => Err(Refused::Unknown(format!(
                "'{name}' names a volume and a session of another volume: rename one of them"
            ))),
            (Some(c), None) | (None, Some(c)) => Ok(c),
            (None, None) => Err(Refused::Unknown(format!(
                "no export '{name}': exports are VOLUME (its newest session) and VOLUME@YYYYMMDD-HHMMSS (`nbdinfo --list` shows them)"
            ))),
        }
    }

    /// Opens export `name` ("" is the default export: the one volume served, if only one).
    pub(crate) fn open(&self, name: &str) -> std::result::Result<Export, Refused> {
        self.live.refresh(false);
        // The archive may change between naming a session and opening it: check that the
        // image opened is the one named, and look again if not.
        for _ in 0..3 {
            let a = self.live.current();
            let c = self.choose(&a, name)?;
            let vol = &a.volumes()[c.vi];
            let want = (&vol.vid, &vol.sessions[c.si].name);
            let image = self.live.image(c.vi, c.si).map_err(Refused::Failed)?;
            if (image.vid(), image.session()) != want {
                continue;
            }
            let overlay = match &self.overlays {
                Some(o) => Some(o.get(&image).map_err(Refused::Failed)?),
                None => None,
            };
            let canonical = if c.newest {
                vol.name().to_string()
            } else {
                format!("{}@{}", vol.name(), want.1.date())
            };
            return Ok(Export {
                name: canonical,
                description: self.describe(vol, c.si, c.newest),
                image,
                overlay,
            });
        }
        Err(Refused::Failed(Error::Busy {
            url: self.live.current().url().to_string(),
        }))
    }
}

/// What a stretch of an export reads as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Extent {
    Data,
    /// Zeros, not stored.
    Hole,
}

/// An opened export: a session, and its overlay if the server has overlays.
pub(crate) struct Export {
    pub(crate) name: String,
    pub(crate) description: String,
    image: SessionImage,
    overlay: Option<Arc<Overlay>>,
}

impl Export {
    pub(crate) fn size(&self) -> u64 {
        self.image.size()
    }

    pub(crate) fn read_only(&self) -> bool {
        self.overlay.is_none()
    }

    /// The archive's chunk size: reads aligned to it are served from one cached chunk.
    pub(crate) fn chunksize(&self) -> u64 {
        self.image.chunksize()
    }

    /// Fills `buf` from `offset` (the range is within the export).
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match &self.overlay {
            Some(o) => o.read(offset, buf),
            None => {
                let n = self.image.read_at(offset, buf)?;
                if n < buf.len() {
                    return Err(Error::corrupt(
                        format!("{}/{}", self.image.vid(), self.image.session()),
                        "the session ends before its size",
                    ));
                }
                Ok(())
            }
        }
    }

    /// The session's own data or hole run at `pos`, up to `limit`.
    fn base_extent(&self, pos: u64, limit: u64) -> Result<(Extent, u64)> {
        Ok(match self.image.next_data(pos)? {
            None => (Extent::Hole, limit),
            Some(d) if d > pos => (Extent::Hole, d.min(limit)),
            Some(_) => (
                Extent::Data,
                self.image.next_hole(pos)?.min(limit).max(pos + 1),
            ),
        })
    }

    /// The runs of data and holes from `offset` to `offset + len` (or fewer: at most `max`
    /// runs; each at least a byte), neighbours of one kind merged.
    pub(crate) fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<(Extent, u64)>> {
        let end = offset + len;
        let mut out: Vec<(Extent, u64)> = Vec::new();
        let mut pos = offset;
        // Bounded work per call, merged runs included.
        let mut steps = 0;
        while pos < end && steps < 4 * max.max(1) {
            steps += 1;
            let (kind, to) = match &self.overlay {
                None => self.base_extent(pos, end)?,
                Some(o) => match o.layer_at(pos, end) {
                    (Layer::Base, to) => self.base_extent(pos, to)?,
                    (Layer::Zero, to) => (Extent::Hole, to),
                    (Layer::Data, to) => (Extent::Data, to),
                },
            };
            match out.last_mut() {
                Some((k, l)) if *k == kind => *l += to - pos,
                _ => {
                    if out.len() == max {
                        break;
                    }
                    out.push((kind, to - pos));
                }
            }
            pos = to;
        }
        Ok(out)
    }

    fn overlay(&self) -> Result<&Overlay> {
        self.overlay
            .as_deref()
            .ok_or_else(|| Error::Usage("this export is read-only".into()))
    }

    pub(crate) fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.overlay()?.write(offset, data)
    }

    pub(crate) fn zero(&self, offset: u64, len: u64, keep_allocated: bool) -> Result<()> {
        self.overlay()?.zero(offset, len, keep_allocated)
    }

    pub(crate) fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.overlay()?.trim(offset, len)
    }

    /// Makes every write so far durable (nothing to do for a read-only export).
    pub(crate) fn flush(&self) -> Result<()> {
        match &self.overlay {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }
}
