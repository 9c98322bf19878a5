//! Recovery, run by [`Archive::open_write`](super::Archive::open_write) before anything
//! changes: an interrupted transaction is finished or rolled back (see `journal`), then what
//! interrupted commands left is removed: `S-tmp`, `*.tmp`, merge leftovers, session and volume
//! directories no root refers to. A volinfo left mid-commit is repaired from `volinfo.bak`,
//! and stale `.bak` and `sessions` copies are refreshed.

use super::layout::{self, Dir};
use super::write::WriteArchive;
use super::ROOT_MAX;
use crate::error::{Error, Result};
use crate::format::volinfo::sessions_json;
use crate::format::{self as fmt, SessionName, VolumeId};

impl WriteArchive {
    pub(super) fn recover(&mut self) -> Result<()> {
        self.finish_in_process()?;
        let dest = self.a.dest.clone();
        for name in dest.list("")? {
            if name.ends_with(".tmp") {
                dest.remove_all(&name)?;
            } else if VolumeId::parse(&name).is_some()
                && !self.a.volumes.iter().any(|v| v.vid.as_str() == name)
            {
                tracing::info!("removing {name}: a volume directory no archive.ini refers to (left by an interrupted send)");
                dest.remove_all(&name)?;
            }
        }
        self.refresh_bak(layout::ROOT, ROOT_MAX)?;
        for i in 0..self.a.volumes.len() {
            let vid = self.a.volumes[i].vid.clone();
            for name in dest.list(vid.as_str())? {
                let stray = name == layout::STAGING
                    || name.ends_with(".tmp")
                    || name.starts_with("merge")
                    || name.starts_with("dedup")
                    || (SessionName::parse(&name).is_some()
                        && !self.a.volumes[i]
                            .volinfo
                            .sessions
                            .iter()
                            .any(|(s, _)| s.as_str() == name));
                if stray {
                    tracing::info!("removing {vid}/{name}: left by an interrupted command");
                    dest.remove_all(&format!("{vid}/{name}"))?;
                }
            }
            let limit = self.a.meta_limit(fmt::MAX_VOLINFO_Z as u64);
            self.refresh_bak(&layout::volinfo(&vid), limit)?;
            if self.a.volumes[i].restored_from_bak {
                let bak = layout::volinfo_bak(&vid);
                let data = dest
                    .read(&bak, limit)?
                    .ok_or_else(|| Error::corrupt(&bak, "missing"))?;
                dest.write(&layout::volinfo_tmp(&vid), &data)?;
                dest.sync()?;
                dest.rename(&layout::volinfo_tmp(&vid), &layout::volinfo(&vid))?;
                self.a.volumes[i].restored_from_bak = false;
            }
            let want = sessions_json(self.a.volumes[i].sessions.iter().map(|s| &s.name));
            let path = layout::sessions(&vid);
            if dest.read(&path, 1 << 20)?.as_deref() != Some(want.as_bytes()) {
                self.replace_file(&path, want.as_bytes())?;
            }
        }
        dest.sync()
    }

    /// `arch-check --clean`: recovery, plus leftovers inside session directories (`*.tmp`
    /// files an interrupted prune of the original may leave). Lists every session directory,
    /// so it is kept out of the recovery every write command runs.
    pub fn clean_deep(&mut self) -> Result<Vec<String>> {
        let dest = self.a.dest.clone();
        let mut removed = Vec::new();
        for v in &self.a.volumes {
            for s in &v.sessions {
                let dir = layout::dir(&v.vid, Dir::Session(&s.name));
                for name in dest.list(&dir)? {
                    if name.ends_with(".tmp") {
                        let p = format!("{dir}/{name}");
                        dest.remove_all(&p)?;
                        removed.push(p);
                    }
                }
            }
        }
        if !removed.is_empty() {
            dest.sync()?;
        }
        Ok(removed)
    }
}
