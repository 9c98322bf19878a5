//! [`WriteArchive`]: an archive opened for changing it. It exists only recovered and with its
//! nonce counters reserved (see the module docs of [`crate::archive`]); every change goes
//! through the zipper save of [`WriteArchive::save_volume`] or a journaled transaction.

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use super::{codec_for, layout, Archive, Location, OpenOptions, Volume, ROOT_MAX};
use crate::auth::Auth;
use crate::codec::{Compressor, Encoded};
use crate::crypto::{self, CipherMode, SaltFile};
use crate::error::{Error, Result};
use crate::format::ini::{self, ArchiveIni};
use crate::format::volinfo::sessions_json;
use crate::format::{self as fmt, Session, VolInfo, VolumeId};

/// Everything `arch-init` chooses.
pub struct InitParams {
    pub compression: Compressor,
    pub chunksize: u64,
    /// `None`: unencrypted.
    pub cipher: Option<CipherMode>,
}

/// An archive opened for writing. Reading methods come from [`Archive`] (`Deref`).
pub struct WriteArchive {
    pub(super) a: Archive,
    /// The salt file whose counters are persisted in local state as values are reserved.
    salt_store: Option<Arc<parking_lot::Mutex<SaltFile>>>,
}

impl Deref for WriteArchive {
    type Target = Archive;
    fn deref(&self) -> &Archive {
        &self.a
    }
}

impl Archive {
    /// Crash injection for tests: [`Tuning::failpoint`] (the binary's `WYNG_FAILPOINT`) naming
    /// this step of a commit aborts the process, exactly as a power cut or `kill -9` would (no
    /// destructors, no cleanup). Only in builds with the `failpoints` feature, which
    /// `cargo test` turns on (Cargo.toml); a release build compiles every failpoint to nothing.
    ///
    /// [`Tuning::failpoint`]: crate::tuning::Tuning
    #[cfg(feature = "failpoints")]
    pub(crate) fn failpoint(&self, name: &str) {
        if self.tuning.failpoint.as_deref() == Some(name) {
            std::process::abort();
        }
    }

    /// Without the `failpoints` feature a failpoint is nothing (see above).
    #[cfg(not(feature = "failpoints"))]
    #[inline(always)]
    pub(crate) fn failpoint(&self, _name: &str) {}

    /// Opens an archive for writing: exclusive lock, counters reserved, interrupted commands
    /// finished or rolled back.
    pub fn open_write(loc: Location, o: &OpenOptions) -> Result<WriteArchive> {
        let a = Archive::open(loc.0.into(), o, true)?;
        let mut w = WriteArchive {
            a,
            salt_store: None,
        };
        w.reserve_counters()?;
        w.recover()?;
        Ok(w)
    }

    /// Creates a new, empty archive.
    pub fn init(
        loc: Location,
        p: &InitParams,
        auth: &Auth,
        meta_dir: Option<&Path>,
    ) -> Result<WriteArchive> {
        let dest: Arc<dyn crate::dest::Dest> = loc.0.into();
        check_unused(&*dest)?;
        // Ask for the passphrase before creating anything.
        let keys = match p.cipher {
            Some(_) => Some(new_passphrase(auth)?),
            None => None,
        };
        if !dest.root_exists()? {
            dest.create_root()?;
        }
        dest.lock(true)?;
        let ci = p.cipher.map_or("00", |m| m.ci()).to_string();
        let ini = new_root(p, &ci);
        probe(&*dest)?;
        let (codec, salt, master) = match (p.cipher, &keys) {
            (Some(mode), Some(pass)) => {
                let salt = SaltFile::random();
                let master = crypto::derive_master(pass, &salt, mode);
                let c = codec_for(&ini, Some((&master, &salt)))?;
                (c, Some(salt), Some(master))
            }
            _ => (codec_for(&ini, None)?, None, None),
        };
        let mut w = WriteArchive {
            a: Archive {
                dest,
                ci,
                codec,
                ini,
                volumes: Vec::new(),
                damaged: Vec::new(),
                local: None,
                salt,
                salt_problems: Vec::new(),
                root: Vec::new(),
                force_retry: false,
                indexes: Default::default(),
                unlocked: false,
                tuning: Default::default(),
                progress: Default::default(),
            },
            salt_store: None,
        };
        w.a.attach_local(meta_dir);
        w.reserve_counters()?;
        if let (Some(mut salt), Some(c)) = (w.a.salt.clone(), w.a.codec.cipher.clone()) {
            // Sealed with the archive's own (reserved) metadata counter, so no later value
            // repeats the one used here; the persisted copy gets the check block too.
            c.seal_check(&mut salt)?;
            if let (Some(store), Some(local)) = (&w.salt_store, &w.a.local) {
                let mut st = store.lock();
                st.check = salt.check;
                local
                    .save_salt(&st)
                    .map_err(|e| Error::local_state(local.dir(), e))?;
            }
            w.a.salt = Some(salt);
        }
        w.save_root()?;
        if let Some(salt) = &w.a.salt {
            let mut salt = salt.clone();
            salt.counters = w.counters();
            let bytes = salt.to_bytes();
            w.a.dest.write(layout::SALT, &bytes)?;
            w.a.dest
                .write(layout::SALT_BAK, &SaltFile::inverted(&bytes))?;
            w.a.dest.sync()?;
        }
        if let (Some(m), Some(pass)) = (&master, &keys) {
            auth.remember(w.a.dest.url(), m, pass);
        }
        Ok(w)
    }
}

impl WriteArchive {
    /// This new archive with `like`'s tuning and progress reporting (a copy's target, created
    /// by the run that reads the source).
    pub(crate) fn tuned_as(mut self, like: &Archive) -> WriteArchive {
        self.a.tuning = like.tuning.clone();
        self.a.progress = like.progress.clone();
        self
    }
}

impl WriteArchive {
    /// Before anything is encrypted: reserve counter values in local state, so that a run
    /// killed half-way can never make a later run reuse them. An encrypted archive without
    /// usable local state cannot be written (fails closed).
    fn reserve_counters(&mut self) -> Result<()> {
        let Some(cipher) = self.a.codec.cipher.clone() else {
            return Ok(());
        };
        let (Some(salt), Some(local)) = (self.a.salt.clone(), self.a.local.clone()) else {
            return Err(Error::CountersNotReserved);
        };
        let shared = Arc::new(parking_lot::Mutex::new(salt));
        self.salt_store = Some(shared.clone());
        for slot in 0..2 {
            let (shared, local) = (shared.clone(), local.clone());
            let counter = if slot == 0 {
                &cipher.data_counter
            } else {
                &cipher.meta_counter
            };
            counter.reserve_with(Box::new(move |limit| {
                let mut s = shared.lock();
                s.counters[slot] = limit;
                local
                    .save_salt(&s)
                    .map_err(|e| Error::local_state(local.dir().join("archive.salt"), e))
            }))?;
        }
        Ok(())
    }

    /// Current counters [data, metadata], at or above every value used.
    fn counters(&self) -> [u64; 2] {
        match &self.a.codec.cipher {
            Some(c) => [c.data_counter.high_water(), c.meta_counter.high_water()],
            None => [0, 0],
        }
    }

    /// Rereads archive.ini from the destination (after a transaction replaced it), refreshes
    /// the `.bak` copies, and reloads every volume.
    pub(super) fn reload_all(&mut self) -> Result<()> {
        let file =
            self.a
                .dest
                .read(layout::ROOT, ROOT_MAX)?
                .ok_or_else(|| Error::ArchiveNotFound {
                    url: self.a.dest.url().into(),
                })?;
        let (_, body) = ini::parse_header(&file)?;
        self.a.ini = ArchiveIni::parse(&self.a.codec.open_root(body)?)?;
        self.remember_root(&file);
        self.refresh_bak(layout::ROOT, ROOT_MAX)?;
        for (vid, _) in self.a.ini.volumes.clone() {
            self.refresh_bak(
                &layout::volinfo(&vid),
                self.a.meta_limit(fmt::MAX_VOLINFO_Z as u64),
            )?;
        }
        self.a.reload()
    }

    /// Writes a volume's new volinfo and session list as `volinfo.tmp` and `sessions.tmp`, for a
    /// commit to rename into place; returns the encoded volinfo (its hash goes in the root).
    pub(super) fn stage_volume(
        &self,
        vid: &VolumeId,
        volinfo: &VolInfo,
        sessions: &[Session],
    ) -> Result<Encoded> {
        let enc = self.a.codec.encode_meta(volinfo.to_text().as_bytes())?;
        if enc.file.len() as u64 > self.a.meta_limit(fmt::MAX_VOLINFO_Z as u64) {
            return Err(Error::Usage(format!(
                "volume {} has too many sessions to save; prune some first",
                volinfo.name
            )));
        }
        self.a.dest.write(&layout::volinfo_tmp(vid), &enc.file)?;
        self.a.dest.write(
            &layout::sessions_tmp(vid),
            sessions_json(sessions.iter().map(|s| &s.name)).as_bytes(),
        )?;
        Ok(enc)
    }

    /// Zipper-saves a volume's new volinfo (and `sessions`), then the root.
    pub(super) fn save_volume(
        &mut self,
        vol_idx: usize,
        volinfo: VolInfo,
        sessions: Vec<Session>,
    ) -> Result<()> {
        let vid = self.a.volumes[vol_idx].vid.clone();
        let enc = self.stage_volume(&vid, &volinfo, &sessions)?;
        let mut ini = self.a.ini.clone();
        ini.set_volume(&vid, enc.hash);
        let root = self.prepare_root(&mut ini)?;
        // The fallback for the window between the volinfo and archive.ini renames must be the
        // volinfo the current root refers to, whatever earlier runs left in volinfo.bak.
        let volinfo_path = layout::volinfo(&vid);
        if let Some(current) = self
            .a
            .dest
            .read(&volinfo_path, self.a.meta_limit(fmt::MAX_VOLINFO_Z as u64))?
        {
            self.replace_file(&layout::volinfo_bak(&vid), &current)?;
        }
        self.a.dest.sync()?;
        self.a.failpoint("before-volinfo-rename");
        self.a
            .dest
            .rename(&layout::volinfo_tmp(&vid), &volinfo_path)?;
        self.a.failpoint("after-volinfo-rename");
        self.a
            .dest
            .rename(&layout::sessions_tmp(&vid), &layout::sessions(&vid))?;
        self.a.dest.rename(layout::ROOT_TMP, layout::ROOT)?;
        self.a.dest.sync()?;
        self.a.failpoint("after-root-rename");
        self.a.ini = ini;
        self.remember_root(&root);
        let v = &mut self.a.volumes[vol_idx];
        v.volinfo = volinfo;
        v.sessions = sessions;
        self.replace_file(&layout::volinfo_bak(&vid), &enc.file)?;
        self.replace_file(layout::ROOT_BAK, &root)
    }

    /// Saves archive.ini alone (atomically).
    pub(super) fn save_root(&mut self) -> Result<()> {
        let mut ini = self.a.ini.clone();
        let root = self.prepare_root(&mut ini)?;
        self.a.dest.sync()?;
        self.a.dest.rename(layout::ROOT_TMP, layout::ROOT)?;
        self.a.dest.sync()?;
        self.a.ini = ini;
        self.remember_root(&root);
        self.replace_file(layout::ROOT_BAK, &root)
    }

    /// Keeps the root just committed (rollback detection; [`Archive::is_current`]).
    pub(super) fn remember_root(&mut self, root: &[u8]) {
        self.a.root = root.to_vec();
        if let Some(local) = &self.a.local {
            if let Err(e) = local.save_root(root) {
                tracing::warn!("could not update the local copy of archive.ini: {e}");
            }
        }
    }

    /// Writes `archive.ini.tmp` for `ini` (a fresh `updated_at`, counters recorded).
    pub(super) fn prepare_root(&self, ini: &mut ArchiveIni) -> Result<Vec<u8>> {
        ini.set(
            "updated_at",
            ini::next_updated_at(self.a.ini.get("updated_at")),
        );
        if self.a.codec.cipher.is_some() {
            // Record counters at or above anything used; the root's own sealing included.
            let [data, meta] = self.counters();
            let old = |k: &str| ini.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let (old_data, old_meta) = (old("dataci_count"), old("mci_count"));
            ini.set("dataci_count", data.max(old_data).to_string());
            ini.set("mci_count", (meta + 1).max(old_meta).to_string());
        }
        let file = self.seal_root(ini)?;
        self.a.dest.write(layout::ROOT_TMP, &file)?;
        Ok(file)
    }

    /// The bytes of archive.ini for `ini`, as is (no `updated_at` change).
    pub(super) fn seal_root(&self, ini: &ArchiveIni) -> Result<Vec<u8>> {
        let mut file = ini::header(&self.a.ci);
        file.extend_from_slice(&self.a.codec.seal_root(&ini.to_text())?);
        Ok(file)
    }

    /// Makes `<rel>.bak` equal `<rel>` again after a run that died before copying it (only when
    /// `<rel>` itself is the committed version, i.e. not while a volinfo fallback is in use).
    pub(super) fn refresh_bak(&self, rel: &str, max: u64) -> Result<()> {
        let Some(cur) = self.a.dest.read(rel, max)? else {
            return Ok(());
        };
        let bak = format!("{rel}.bak");
        let in_use = self
            .a
            .volumes
            .iter()
            .any(|v| v.restored_from_bak && rel.starts_with(&format!("{}/", v.vid)));
        if !in_use && self.a.dest.read(&bak, max)?.as_deref() != Some(&cur[..]) {
            self.replace_file(&bak, &cur)?;
        }
        Ok(())
    }

    /// Replaces a small file atomically (temporary name, then rename): used for the `.bak`
    /// copies (informational for the original, our crash fallback for volinfo) and `sessions`.
    pub(super) fn replace_file(&self, rel: &str, data: &[u8]) -> Result<()> {
        let tmp = format!("{rel}.tmp");
        self.a.dest.write(&tmp, data)?;
        self.a.dest.rename(&tmp, rel)
    }

    /// Adds a volume to the in-memory archive (persisted with its first commit).
    pub(crate) fn new_volume(&mut self, name: &str, desc: &str) -> Result<usize> {
        self.new_volume_as(name, desc, None)
    }

    /// [`WriteArchive::new_volume`], with the id `prefer` if this archive has no volume (or
    /// directory) of that id (a copy keeps its source's ids, so renames can be followed).
    pub(crate) fn new_volume_as(
        &mut self,
        name: &str,
        desc: &str,
        prefer: Option<&VolumeId>,
    ) -> Result<usize> {
        fmt::ids::check_volume_name(name)?;
        check_desc(desc)?;
        self.name_is_free(name)?;
        if self.a.volumes.len() >= 1024 {
            return Err(Error::Usage(
                "the archive already holds 1024 volumes, the format's limit".into(),
            ));
        }
        // A first send of this name that this host began and that was interrupted keeps its
        // id, so that the next send resumes it (see `resume`).
        let resumed = self.a.resumable_new_volume(name);
        let free = |a: &Archive, v: &VolumeId| -> Result<bool> {
            Ok(!a.volumes.iter().any(|x| &x.vid == v) && !a.dest.exists(v.as_str())?)
        };
        let preferred = match prefer {
            Some(v) if resumed.is_none() && free(&self.a, v)? => Some(v.clone()),
            _ => None,
        };
        let vid = loop {
            if let Some(v) = resumed.as_ref().or(preferred.as_ref()) {
                break v.clone();
            }
            let v = VolumeId::random();
            if !self.a.volumes.iter().any(|x| x.vid == v) && !self.a.dest.exists(v.as_str())? {
                break v;
            }
        };
        self.a.volumes.push(Volume {
            vid,
            volinfo: VolInfo {
                name: name.into(),
                desc: desc.into(),
                sessions: Vec::new(),
            },
            sessions: Vec::new(),
            restored_from_bak: false,
        });
        Ok(self.a.volumes.len() - 1)
    }

    /// A new volume may take `name` only if no volume has it: not a readable one, and not a
    /// damaged one (whose name a second volume would shadow until the damage is repaired,
    /// leaving two volumes of one name).
    pub(crate) fn name_is_free(&self, name: &str) -> Result<()> {
        match self.find_index(name) {
            Ok(_) => Err(Error::VolumeExists(super::sanitized(name))),
            Err(Error::VolumeNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `add`: a volume with no sessions yet.
    pub(crate) fn add_volume(&mut self, name: &str, desc: &str) -> Result<()> {
        let vi = self.new_volume(name, desc)?;
        let volinfo = self.a.volumes[vi].volinfo.clone();
        self.save_volume(vi, volinfo, Vec::new())
    }

    /// `rename`: a new name and description (a rename without one clears it, as the
    /// original does).
    pub(crate) fn rename_volume(&mut self, old: &str, new: &str, desc: &str) -> Result<()> {
        fmt::ids::check_volume_name(new)?;
        self.name_is_free(new)?;
        check_desc(desc)?;
        let vi = self.find_index(old)?;
        let mut volinfo = self.a.volumes[vi].volinfo.clone();
        volinfo.name = new.to_string();
        volinfo.desc = desc.to_string();
        let sessions = self.a.volumes[vi].sessions.clone();
        self.save_volume(vi, volinfo, sessions)
    }

    /// Gives volume `vi` the name and description of the volume it copies (`arch-copy`
    /// following a rename in its source).
    pub(crate) fn relabel_volume(&mut self, vi: usize, name: &str, desc: &str) -> Result<()> {
        fmt::ids::check_volume_name(name)?;
        check_desc(desc)?;
        if self
            .a
            .volumes
            .iter()
            .enumerate()
            .any(|(i, v)| i != vi && v.name() == name)
        {
            return Err(Error::VolumeExists(super::sanitized(name)));
        }
        let mut volinfo = self.a.volumes[vi].volinfo.clone();
        volinfo.name = name.to_string();
        volinfo.desc = desc.to_string();
        let sessions = self.a.volumes[vi].sessions.clone();
        self.save_volume(vi, volinfo, sessions)
    }

    /// `arch-check --change-uuid`: a new UUID (for a copy that must not be confused with its
    /// original). Local state follows the new identity.
    pub fn change_uuid(&mut self) -> Result<String> {
        let uuid = uuid::Uuid::new_v4().to_string();
        self.a.ini.set("uuid", uuid.clone());
        self.save_root()?;
        Ok(uuid)
    }
}

fn check_desc(desc: &str) -> Result<()> {
    if desc.len() > fmt::volinfo::MAX_DESC || desc.chars().any(char::is_control) {
        return Err(Error::Usage(
            "a volume description is at most 100 printable bytes".into(),
        ));
    }
    Ok(())
}

/// An archive is made only where there is none, in an empty (or new) directory.
fn check_unused(dest: &dyn crate::dest::Dest) -> Result<()> {
    if !dest.root_exists()? {
        return Ok(());
    }
    if dest.exists(layout::ROOT)? {
        return Err(Error::ArchiveExists {
            url: dest.url().into(),
        });
    }
    if !dest.list("")?.is_empty() {
        return Err(Error::DestUnavailable {
            url: dest.url().into(),
            detail: "the directory is not empty; give arch-init an empty or new directory".into(),
        });
    }
    Ok(())
}

/// The new archive's passphrase (asked twice), long enough.
fn new_passphrase(auth: &Auth) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let pass = auth.passphrase(true)?;
    if pass.len() < crate::auth::MIN_PASSPHRASE {
        return Err(Error::Usage(format!(
            "the passphrase must be at least {} bytes long",
            crate::auth::MIN_PASSPHRASE
        )));
    }
    Ok(pass)
}

/// The new archive's root: its parameters, no volumes.
fn new_root(p: &InitParams, ci: &str) -> ArchiveIni {
    let mut var = vec![
        ("updated_at".to_string(), ini::next_updated_at(None)),
        ("uuid".into(), uuid::Uuid::new_v4().to_string()),
        ("format_ver".into(), "3".into()),
        ("chunksize".into(), p.chunksize.to_string()),
        ("compression".into(), p.compression.kind.name().into()),
        ("compr_level".into(), p.compression.level.to_string()),
        (
            "hashtype".into(),
            if p.cipher.is_some() {
                "hmac-sha256"
            } else {
                "blake2b"
            }
            .into(),
        ),
        ("ci_mode".into(), ci.to_string()),
    ];
    if p.cipher.is_some() {
        var.push(("dataci_count".into(), "0".into()));
        var.push(("mci_count".into(), "0".into()));
    }
    ArchiveIni {
        var,
        volumes: Vec::new(),
        in_process: Vec::new(),
    }
}

/// The original's destination probe: a write test and a hard-link test.
fn probe(dest: &dyn crate::dest::Dest) -> Result<()> {
    dest.write(layout::PROBE, b"")?;
    let _ = dest.remove_all(layout::LINK_PROBE);
    if !dest.capabilities().hard_links || dest.hard_link(layout::PROBE, layout::LINK_PROBE).is_err()
    {
        tracing::warn!(
            "destination does not support hard links; deduplication will not be available"
        );
    }
    Ok(())
}
