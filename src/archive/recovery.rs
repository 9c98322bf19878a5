//! Recovery, run by [`Archive::open_write`](super::Archive::open_write) before anything
//! changes: an interrupted transaction is finished or rolled back (see `journal`), a volinfo
//! left mid-commit is restored from `volinfo.bak`, then what interrupted commands left is
//! removed: `S-tmp`, `*.tmp`, merge leftovers, session and volume directories no root refers
//! to. Stale `.bak` and `sessions` copies are refreshed.
//!
//! What recovery would remove is also what `arch-check` reports ([`Archive::leftovers`]), so
//! the check and the repair cannot disagree. Order matters: the volinfo restore comes before
//! `archive.ini.tmp` is removed, because that staged root is what tells an interrupted commit
//! from damage (`Archive::in_commit_window`).
//!
//! A damaged volume (listed by the root, metadata unloadable) is never touched by recovery:
//! its directory stays for `arch-check` and `delete --vid`. `arch-check --clean` restores its
//! volinfo from `volinfo.bak` when that copy is the committed one.

use super::layout::{self, Dir};
use super::write::WriteArchive;
use super::{Archive, ROOT_MAX};
use crate::error::{Error, Result};
use crate::format::volinfo::sessions_json;
use crate::format::{self as fmt, SessionName, VolumeId};

/// Something an interrupted command left in the archive.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Leftover {
    /// Its path in the archive.
    pub path: String,
    /// What left it.
    pub why: &'static str,
}

impl Archive {
    /// What interrupted commands left that recovery removes; with `deep`, also `*.tmp` files
    /// inside session directories (which lists every session directory, so the recovery every
    /// write command runs leaves that to `arch-check --clean`).
    pub fn leftovers(&self, deep: bool) -> Result<Vec<Leftover>> {
        let mut out = Vec::new();
        let mut add = |path: String, why| out.push(Leftover { path, why });
        for name in self.dest.list("")? {
            if name.ends_with(".tmp") {
                add(name, "a file an interrupted command staged");
            } else if let Some(vid) = VolumeId::parse(&name).filter(|v| {
                // The root decides, not what could be loaded: a damaged volume's directory
                // is kept.
                !self.ini.volumes.iter().any(|(x, _)| x == v)
            }) {
                if !self.resumable_first_send(&vid) {
                    add(name, "a volume directory no archive.ini refers to");
                }
            }
        }
        for v in &self.volumes {
            for name in self.dest.list(v.vid.as_str())? {
                let why = if name == layout::STAGING {
                    if self.resumable(&v.vid, &name) {
                        continue; // kept for the next send to resume (see `resume`)
                    }
                    "the staging directory of an interrupted send"
                } else if name == layout::ASIDE {
                    "what a resumed send did not take of an interrupted one"
                } else if name.ends_with(".tmp") {
                    "a file an interrupted command staged"
                } else if name.starts_with("merge") {
                    "a leftover of an interrupted prune"
                } else if name.starts_with("dedup") {
                    "a leftover of an interrupted arch-deduplicate"
                } else if SessionName::parse(&name).is_some()
                    && !v.volinfo.sessions.iter().any(|(s, _)| s.as_str() == name)
                {
                    if self.resumable(&v.vid, &name) {
                        continue; // a send staged in place, kept for its resume
                    }
                    "a session directory the volume does not list"
                } else {
                    continue;
                };
                add(format!("{}/{name}", v.vid), why);
            }
            if deep {
                for s in &v.sessions {
                    let dir = layout::dir(&v.vid, Dir::Session(&s.name));
                    for name in self.dest.list(&dir)? {
                        if name.ends_with(".tmp") {
                            add(
                                format!("{dir}/{name}"),
                                "a file an interrupted prune staged",
                            );
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Copies of the salt file that are damaged or missing, and what is wrong (the copy in use
    /// passed its check block).
    pub(crate) fn salt_problems(&self) -> &[(&'static str, String)] {
        &self.salt_problems
    }

    /// Volumes whose volinfo is the new one of an interrupted commit (`volinfo.bak` is in use
    /// until the next write command restores it).
    pub(crate) fn interrupted_commits(&self) -> Vec<&VolumeId> {
        self.volumes
            .iter()
            .filter(|v| v.restored_from_bak)
            .map(|v| &v.vid)
            .collect()
    }
}

impl WriteArchive {
    pub(super) fn recover(&mut self) -> Result<()> {
        self.repair_salts()?;
        self.finish_in_process()?;
        let dest = self.a.dest.clone();
        let limit = self.a.meta_limit(fmt::MAX_VOLINFO_Z as u64);
        for i in 0..self.a.volumes.len() {
            if self.a.volumes[i].restored_from_bak {
                let vid = self.a.volumes[i].vid.clone();
                self.restore_volinfo(&vid)?;
                self.a.volumes[i].restored_from_bak = false;
            }
        }
        for l in self.a.leftovers(false)? {
            tracing::info!("removing {}: {}", l.path, l.why);
            dest.remove_all(&l.path)?;
        }
        self.refresh_bak(layout::ROOT, ROOT_MAX)?;
        for i in 0..self.a.volumes.len() {
            let vid = self.a.volumes[i].vid.clone();
            self.refresh_bak(&layout::volinfo(&vid), limit)?;
            let want = sessions_json(self.a.volumes[i].sessions.iter().map(|s| &s.name));
            let path = layout::sessions(&vid);
            if dest.read(&path, 1 << 20)?.as_deref() != Some(want.as_bytes()) {
                self.replace_file(&path, want.as_bytes())?;
            }
        }
        dest.sync()
    }

    /// Rewrites a damaged or missing copy of the salt file from the one that passed its check
    /// block (loading said which, and warned). `salt.bak` stays the inverted `archive.salt`.
    fn repair_salts(&mut self) -> Result<()> {
        if self.a.salt_problems.is_empty() {
            return Ok(());
        }
        let Some(good) = self.a.salt.clone() else {
            return Ok(());
        };
        let dest = self.a.dest.clone();
        let bad = |name: &str| self.a.salt_problems.iter().any(|(n, _)| *n == name);
        let salt_bytes = if bad(layout::SALT) {
            let bytes = good.to_bytes();
            self.replace_file(layout::SALT, &bytes)?;
            tracing::warn!("rewrote {} from {}", layout::SALT, layout::SALT_BAK);
            bytes
        } else {
            dest.read(layout::SALT, crate::crypto::SALT_FILE_LEN as u64)?
                .unwrap_or_else(|| good.to_bytes())
        };
        if bad(layout::SALT_BAK) {
            self.replace_file(
                layout::SALT_BAK,
                &crate::crypto::SaltFile::inverted(&salt_bytes),
            )?;
            tracing::warn!("rewrote {} from {}", layout::SALT_BAK, layout::SALT);
        }
        dest.sync()?;
        self.a.salt_problems.clear();
        Ok(())
    }

    /// Puts `volinfo.bak` back as the volume's volinfo (durably, before anything else).
    fn restore_volinfo(&self, vid: &VolumeId) -> Result<()> {
        let dest = &self.a.dest;
        let limit = self.a.meta_limit(fmt::MAX_VOLINFO_Z as u64);
        let bak = layout::volinfo_bak(vid);
        let data = dest
            .read(&bak, limit)?
            .ok_or_else(|| Error::corrupt(&bak, "missing"))?;
        dest.write(&layout::volinfo_tmp(vid), &data)?;
        dest.sync()?;
        dest.rename(&layout::volinfo_tmp(vid), &layout::volinfo(vid))?;
        dest.sync()
    }

    /// `arch-check --clean`: recovery (already run by opening for write), plus `*.tmp` files
    /// inside session directories, plus the volinfo of each damaged volume whose `volinfo.bak`
    /// holds the committed version. Returns what it removed or repaired.
    pub(crate) fn clean_deep(&mut self) -> Result<Vec<String>> {
        let dest = self.a.dest.clone();
        let mut done = Vec::new();
        for l in self.a.leftovers(true)? {
            dest.remove_all(&l.path)?;
            done.push(format!("removed {} ({})", l.path, l.why));
        }
        let repairable: Vec<VolumeId> = self
            .a
            .damaged
            .iter()
            .filter(|d| d.repairable)
            .map(|d| d.vid.clone())
            .collect();
        for vid in &repairable {
            self.restore_volinfo(vid)?;
            done.push(format!(
                "restored {} from volinfo.bak (the committed version)",
                layout::volinfo(vid)
            ));
        }
        if !done.is_empty() {
            dest.sync()?;
        }
        if !repairable.is_empty() {
            self.reload_all()?;
        }
        Ok(done)
    }
}
