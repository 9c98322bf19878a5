//! An open archive: its root (`archive.ini`), volumes (`volinfo`) and sessions (`info`), loaded
//! and verified down the hash chain archive.ini → volinfo → info → manifest.z → chunk.
//!
//! # Commit order (crash safety)
//! A send writes everything new under `<vid>/S-tmp/` (chunks, `manifest.z`, `info`), makes it
//! durable, renames `S-tmp` to the session name, then "zipper-saves" the parents: `volinfo.tmp`,
//! `sessions.tmp`, `archive.ini.tmp`, a durability barrier, and renames in that order with
//! archive.ini last. Until archive.ini is replaced, the old root still describes a complete
//! archive: the one window where the old root meets the new volinfo is covered by `volinfo.bak`
//! (a copy of the previous committed volinfo), which [`Archive::open`] falls back to. Leftovers
//! of an interrupted command (`S-tmp`, `*.tmp`, session or volume directories no root refers to)
//! are removed by [`Archive::recover`] before the next write.
//!
//! `updated_at` strictly increases with every save (see `format::ini::next_updated_at`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::auth::Auth;
use crate::cache;
use crate::codec::{gunzip, Codec, Compression, Compressor};
use crate::crypto::{self, ArchiveCipher, CipherMode, HashFn, MasterKeys, SaltFile};
use crate::dest::Dest;
use crate::error::{Error, Result};
use crate::format::ini::{self, ArchiveIni};
use crate::format::manifest::{self, chunk_count};
use crate::format::volinfo::sessions_json;
use crate::format::{
    self as fmt, Hash32, Merged, SessionInfo, SessionLines, SessionName, VolInfo, VolumeId,
};

/// A session as loaded from its `info`.
#[derive(Clone, Debug)]
pub struct Session {
    pub name: SessionName,
    pub info: SessionInfo,
}

#[derive(Clone, Debug)]
pub struct Volume {
    pub vid: VolumeId,
    pub volinfo: VolInfo,
    /// Sorted by `sequence` (the authoritative order).
    pub sessions: Vec<Session>,
    /// Loaded from `volinfo.bak` because `volinfo` was left mid-commit.
    restored_from_bak: bool,
}

impl Volume {
    pub fn name(&self) -> &str {
        &self.volinfo.name
    }

    pub fn last(&self) -> Option<&Session> {
        self.sessions.last()
    }

    pub fn session_index(&self, name: &SessionName) -> Option<usize> {
        self.sessions.iter().position(|s| &s.name == name)
    }
}

pub struct Archive {
    pub dest: Box<dyn Dest>,
    pub ci: String,
    pub ini: ArchiveIni,
    pub codec: Codec,
    pub volumes: Vec<Volume>,
    /// wyng's local state for this archive (`--meta-dir`), if available.
    pub cache_dir: Option<PathBuf>,
    /// `--force-retry`: retry an interrupted transaction even though an earlier retry of it
    /// did not complete (see `finish_in_process`).
    pub force_retry: bool,
    /// The salt file (encrypted archives).
    salt: Option<SaltFile>,
}

/// Everything `arch-init` chooses.
pub struct InitParams {
    pub compression: Compressor,
    pub chunksize: u64,
    /// `None`: unencrypted.
    pub cipher: Option<CipherMode>,
}

/// How to open an archive.
pub struct OpenOptions<'a> {
    /// Writers take the archive lock exclusively.
    pub exclusive: bool,
    pub auth: &'a Auth,
    /// `--meta-dir`: local state (rollback detection, counters, digest maps).
    pub meta_dir: Option<&'a Path>,
    /// Accept an archive older than the last one seen here (`--force-allow-rollback`).
    pub allow_rollback: bool,
}

/// Where a send stages its session before the commit renames it.
pub const SESSION_TMP: &str = "S-tmp";

const ROOT_MAX: u64 = (ini::HEADER_LEN + ini::MAX_BODY + 4096) as u64;

impl Archive {
    /// Creates a new, empty archive.
    pub fn init(
        dest: Box<dyn Dest>,
        p: &InitParams,
        auth: &Auth,
        meta_dir: Option<&Path>,
    ) -> Result<Archive> {
        if dest.root_exists()? {
            if dest.exists("archive.ini")? {
                return Err(Error::ArchiveExists {
                    url: dest.url().into(),
                });
            }
            if !dest.list("")?.is_empty() {
                return Err(Error::DestUnavailable {
                    url: dest.url().into(),
                    detail: "the directory is not empty; give arch-init an empty or new directory"
                        .into(),
                });
            }
        }
        // Ask for the passphrase before creating anything.
        let keys = match p.cipher {
            Some(mode) => {
                let pass = auth.passphrase(true)?;
                if pass.len() < crate::auth::MIN_PASSPHRASE {
                    return Err(Error::Usage(format!(
                        "the passphrase must be at least {} bytes long",
                        crate::auth::MIN_PASSPHRASE
                    )));
                }
                let mut salt = SaltFile::random();
                let keys = crypto::derive_master(&pass, &salt, mode);
                let (cipher, _) = ArchiveCipher::new(mode, &keys, &salt, [0, 0]);
                cipher.seal_check(&mut salt)?;
                Some((keys, salt))
            }
            None => None,
        };
        if !dest.root_exists()? {
            dest.create_root()?;
        }
        dest.lock(true)?;
        let ci = p.cipher.map_or("00", |m| m.ci()).to_string();
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
            ("ci_mode".into(), ci.clone()),
        ];
        if p.cipher.is_some() {
            var.push(("dataci_count".into(), "0".into()));
            var.push(("mci_count".into(), "0".into()));
        }
        let ini = ArchiveIni {
            var,
            volumes: Vec::new(),
            in_process: Vec::new(),
        };
        // The original's destination probe: a write test and a hard-link test.
        dest.write("archive.dat", b"")?;
        let _ = dest.remove_all(".hardlink");
        if dest.hard_link("archive.dat", ".hardlink").is_err() {
            tracing::warn!(
                "destination does not support hard links; deduplication will not be available"
            );
        }
        let (codec, salt) = match keys {
            Some((keys, salt)) => {
                let c = codec_for(&ini, Some((&keys, &salt)))?;
                auth.remember(dest.url(), &keys);
                (c, Some(salt))
            }
            None => (codec_for(&ini, None)?, None),
        };
        let mut a = Archive {
            dest,
            ci,
            codec,
            ini,
            volumes: Vec::new(),
            cache_dir: None,
            force_retry: false,
            salt,
        };
        a.attach_cache(meta_dir)?;
        a.save_root()?;
        if let Some(salt) = &a.salt {
            let mut salt = salt.clone();
            salt.counters = a.counters();
            let bytes = salt.to_bytes();
            a.dest.write("archive.salt", &bytes)?;
            a.dest.write("salt.bak", &SaltFile::inverted(&bytes))?;
            a.dest.sync()?;
        }
        Ok(a)
    }

    /// Opens an archive and verifies its metadata down to every session's `info`.
    pub fn open(dest: Box<dyn Dest>, o: &OpenOptions) -> Result<Archive> {
        if !dest.root_exists()? {
            return Err(Error::ArchiveNotFound {
                url: dest.url().into(),
            });
        }
        dest.lock(o.exclusive)?;
        let file = dest
            .read("archive.ini", ROOT_MAX)?
            .ok_or_else(|| Error::ArchiveNotFound {
                url: dest.url().into(),
            })?;
        let (ci, body) = ini::parse_header(&file)?;
        let (codec, ini, salt) = if ci == "00" {
            let ini = ArchiveIni::parse(&gunzip_root(body)?)?;
            (codec_for(&ini, None)?, ini, None)
        } else {
            let mode = CipherMode::from_ci(&ci)
                .ok_or_else(|| Error::Unsupported(format!("cipher mode {ci}")))?;
            let salt_bytes = dest
                .read("archive.salt", crypto::SALT_FILE_LEN as u64)?
                .ok_or_else(|| {
                    Error::corrupt(
                        "archive.salt",
                        "missing: an encrypted archive cannot be opened without it",
                    )
                })?;
            let salt = SaltFile::parse(&salt_bytes)?;
            let opens = |k: &MasterKeys| {
                ArchiveCipher::new(mode, k, &salt, [0, 0])
                    .0
                    .decrypt_meta(body)
                    .is_some()
            };
            let keys = o.auth.unlock(dest.url(), &salt, mode, &opens)?;
            let (cipher, _) = ArchiveCipher::new(mode, &keys, &salt, [0, 0]);
            let gz = cipher
                .decrypt_meta(body)
                .ok_or_else(|| Error::Auth(crate::auth::WRONG_PASSPHRASE.into()))?;
            let ini = ArchiveIni::parse(&gunzip_root(&gz)?)?;
            let codec = codec_for(&ini, Some((&keys, &salt)))?;
            (codec, ini, Some(salt))
        };
        validate_var(&ini, &ci)?;
        let mut a = Archive {
            dest,
            ci,
            ini,
            codec,
            volumes: Vec::new(),
            cache_dir: None,
            force_retry: false,
            salt,
        };
        a.attach_cache(o.meta_dir)?;
        a.check_rollback(&file, o.allow_rollback)?;
        a.reload()?;
        Ok(a)
    }

    /// Rereads archive.ini from the destination (after a transaction replaced it), refreshes
    /// the `.bak` copies, and reloads every volume.
    pub(crate) fn reload_all(&mut self) -> Result<()> {
        let file =
            self.dest
                .read("archive.ini", ROOT_MAX)?
                .ok_or_else(|| Error::ArchiveNotFound {
                    url: self.dest.url().into(),
                })?;
        let (_, body) = ini::parse_header(&file)?;
        self.ini = ArchiveIni::parse(&self.codec.open_root(body)?)?;
        self.remember_root(&file);
        self.refresh_bak("archive.ini", ROOT_MAX)?;
        for (vid, _) in self.ini.volumes.clone() {
            self.refresh_bak(
                &format!("{vid}/volinfo"),
                self.meta_limit(fmt::MAX_VOLINFO_Z as u64),
            )?;
        }
        self.reload()
    }

    /// (Re)loads every volume from the destination. While a transaction is pending, the
    /// volume it concerns may be half-moved: it is left out (with a warning) until a write
    /// command finishes the transaction.
    pub(crate) fn reload(&mut self) -> Result<()> {
        let pending = self
            .ini
            .in_process
            .get(1)
            .and_then(|(_, v)| VolumeId::parse(v));
        self.volumes.clear();
        for (vid, h) in self.ini.volumes.clone() {
            match self.load_volume(&vid, &h) {
                Ok(v) => self.volumes.push(v),
                Err(e) if pending.as_ref() == Some(&vid) => {
                    tracing::warn!("volume {vid} is in an interrupted prune or delete and cannot be read until a write command (such as `wyng prune`) finishes it: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(v) = pending {
            tracing::warn!(
                "an interrupted transaction on {v} is pending; the next write command finishes it"
            );
        }
        Ok(())
    }

    /// Binds the local cache directory; for encrypted archives, raises the counters to the
    /// cached salt file's (never lowering them).
    fn attach_cache(&mut self, meta_dir: Option<&Path>) -> Result<()> {
        let Some(meta) = meta_dir else { return Ok(()) };
        let dir = match cache::dir(meta, self) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("no local cache in {}: {e}", meta.display());
                return Ok(());
            }
        };
        if let (Some(salt), Some(c)) = (&self.salt, &self.codec.cipher) {
            if let Some(cached) =
                cache::load_salt(&dir).filter(|s| s.same_salts(salt) && c.verify_check(s))
            {
                c.data_counter.raise_to(cached.counters[0]);
                c.meta_counter.raise_to(cached.counters[1]);
            }
        }
        self.cache_dir = Some(dir);
        Ok(())
    }

    /// Refuses an archive older than the last one seen from this machine (format §14.3).
    fn check_rollback(&self, remote: &[u8], allow: bool) -> Result<()> {
        let Some(dir) = &self.cache_dir else {
            return Ok(());
        };
        let Some(cached) = cache::load_root(dir) else {
            return cache::save_root(dir, remote);
        };
        if cached == remote {
            return Ok(());
        }
        let cached_time = ini::parse_header(&cached)
            .ok()
            .filter(|(ci, _)| *ci == self.ci)
            .and_then(|(_, body)| self.codec.open_root(body).ok())
            .and_then(|t| ArchiveIni::parse(&t).ok())
            .and_then(|c| c.get("updated_at").and_then(|t| t.parse::<f64>().ok()));
        let remote_time = self
            .ini
            .get("updated_at")
            .and_then(|t| t.parse::<f64>().ok());
        if let (Some(c), Some(r)) = (cached_time, remote_time) {
            if c > r && !allow {
                return Err(Error::Other(format!(
                    "archive is older than the last one seen here: '{}' may have been replaced by an old copy of itself; check it, then use --force-allow-rollback to accept it",
                    self.dest.url()
                )));
            }
        }
        cache::save_root(dir, remote)
    }

    /// Before a write command encrypts anything: reserve counter values in the local cache, so
    /// that a run killed half-way can never make a later run reuse them.
    fn reserve_counters(&self) -> Result<()> {
        let (Some(cipher), Some(salt), Some(dir)) =
            (&self.codec.cipher, &self.salt, &self.cache_dir)
        else {
            return Ok(());
        };
        let shared = Arc::new(parking_lot::Mutex::new(salt.clone()));
        for slot in 0..2 {
            let (shared, dir) = (shared.clone(), dir.clone());
            let counter = if slot == 0 {
                &cipher.data_counter
            } else {
                &cipher.meta_counter
            };
            counter.reserve_with(Box::new(move |limit| {
                let mut s = shared.lock();
                s.counters[slot] = limit;
                cache::save_salt(&dir, &s)
            }))?;
        }
        Ok(())
    }

    /// Current counters [data, metadata], at or above every value used.
    fn counters(&self) -> [u64; 2] {
        match &self.codec.cipher {
            Some(c) => [c.data_counter.high_water(), c.meta_counter.high_water()],
            None => [0, 0],
        }
    }

    /// The largest stored size of a metadata object whose compressed text may be `max` bytes.
    fn meta_limit(&self, max: u64) -> u64 {
        max + self.codec.meta_overhead()
    }

    pub fn uuid(&self) -> &str {
        self.ini.get("uuid").unwrap_or("")
    }

    pub fn chunksize(&self) -> u64 {
        self.codec.chunksize
    }

    fn load_volume(&self, vid: &VolumeId, hash: &Hash32) -> Result<Volume> {
        let path = format!("{vid}/volinfo");
        let limit = fmt::MAX_VOLINFO_Z as u64;
        let read = |p: &str| -> Result<Vec<u8>> {
            let f = self
                .dest
                .read(p, self.meta_limit(limit))?
                .ok_or_else(|| Error::corrupt(p, "missing"))?;
            self.codec.decode_meta(&f, hash, limit, 8 << 20, p)
        };
        let (text, restored_from_bak) = match read(&path) {
            Ok(t) => (t, false),
            Err(first) => match read(&format!("{path}.bak")) {
                Ok(t) => {
                    tracing::warn!("{path} is from an interrupted commit; using volinfo.bak");
                    (t, true)
                }
                Err(_) => return Err(first),
            },
        };
        let text = String::from_utf8(text).map_err(|_| Error::corrupt(&path, "not UTF-8 text"))?;
        let volinfo = VolInfo::parse(&text, &path)?;
        let mut sessions = Vec::with_capacity(volinfo.sessions.len());
        for (name, h) in &volinfo.sessions {
            let p = format!("{vid}/{name}/info");
            let f = self
                .dest
                .read(&p, self.meta_limit(fmt::MAX_INFO_Z as u64))?
                .ok_or_else(|| Error::corrupt(&p, "missing"))?;
            let t = self
                .codec
                .decode_meta(&f, h, fmt::MAX_INFO_Z as u64, 64 << 10, &p)?;
            let t = String::from_utf8(t).map_err(|_| Error::corrupt(&p, "not UTF-8 text"))?;
            sessions.push(Session {
                name: name.clone(),
                info: SessionInfo::parse(&t, &p)?,
            });
        }
        sessions.sort_by_key(|s| s.info.sequence);
        for w in sessions.windows(2) {
            if w[0].info.sequence == w[1].info.sequence {
                return Err(Error::corrupt(
                    &path,
                    format!(
                        "sessions {} and {} share a sequence number",
                        w[0].name, w[1].name
                    ),
                ));
            }
            if w[1].info.previous.as_ref() != Some(&w[0].name) {
                return Err(Error::corrupt(
                    format!("{vid}/{}/info", w[1].name),
                    format!("previous session should be {}", w[0].name),
                ));
            }
        }
        Ok(Volume {
            vid: vid.clone(),
            volinfo,
            sessions,
            restored_from_bak,
        })
    }

    /// Every volume's name, in the archive's order.
    pub fn volume_names(&self) -> Vec<String> {
        self.volumes.iter().map(|v| v.name().to_string()).collect()
    }

    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name() == name)
    }

    pub fn volume_index(&self, name: &str) -> Option<usize> {
        self.volumes.iter().position(|v| v.name() == name)
    }

    /// The manifest lines a session recorded itself.
    pub fn session_lines(&self, vol: &Volume, idx: usize) -> Result<SessionLines> {
        let s = &vol.sessions[idx];
        let Some(h) = s.info.manifest_hash else {
            return Ok(Vec::new());
        };
        let p = format!("{}/{}/manifest.z", vol.vid, s.name);
        let cs = self.chunksize();
        let max_file = fmt::max_manifest_z(s.info.volsize, cs);
        let f = self
            .dest
            .read(&p, self.meta_limit(max_file))?
            .ok_or_else(|| Error::corrupt(&p, "missing"))?;
        let max_text =
            (chunk_count(s.info.volsize, cs).saturating_add(1)).saturating_mul(manifest::MAX_LINE);
        let text = self.codec.decode_meta(
            &f,
            &h,
            max_file,
            usize::try_from(max_text).unwrap_or(usize::MAX),
            &p,
        )?;
        manifest::parse_lines(&text, cs, s.info.volsize, &p)
    }

    /// The full view of session `idx` (sessions 0..=idx merged), with its `mfcs` checked.
    pub fn merged(&self, vol: &Volume, idx: usize) -> Result<Merged> {
        let mut layers = Vec::with_capacity(idx + 1);
        for i in 0..=idx {
            layers.push(self.session_lines(vol, i)?);
        }
        let refs: Vec<(u16, &SessionLines)> = layers
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u16, l))
            .collect();
        let s = &vol.sessions[idx];
        let what = format!("{}/{}", vol.vid, s.name);
        let m = Merged::build(&refs, self.chunksize(), s.info.volsize, &what)?;
        if let Some(expected) = s.info.mfcs {
            if m.mfcs() != expected {
                return Err(Error::corrupt(
                    what,
                    "merged manifest does not match the session's checksum (mfcs)",
                ));
            }
        }
        Ok(m)
    }

    /// Path of the file holding chunk `idx` of a merged view.
    pub fn chunk_path(&self, vol: &Volume, origin: u16, idx: u64) -> String {
        fmt::chunk_rel_path(
            &vol.vid,
            vol.sessions[origin as usize].name.as_str(),
            idx * self.chunksize(),
        )
    }

    /// Removes what interrupted commands left behind and repairs a volinfo left mid-commit.
    /// Run by every write command before it changes anything.
    pub fn recover(&mut self) -> Result<()> {
        self.reserve_counters()?;
        self.finish_in_process()?;
        for name in self.dest.list("")? {
            if name.ends_with(".tmp") {
                self.dest.remove_all(&name)?;
            } else if VolumeId::parse(&name).is_some()
                && !self.volumes.iter().any(|v| v.vid.as_str() == name)
            {
                tracing::info!("removing {name}: a volume directory no archive.ini refers to (left by an interrupted send)");
                self.dest.remove_all(&name)?;
            }
        }
        self.refresh_bak(
            "archive.ini",
            (ini::HEADER_LEN + ini::MAX_BODY + 4096) as u64,
        )?;
        for i in 0..self.volumes.len() {
            let vid = self.volumes[i].vid.clone();
            for name in self.dest.list(vid.as_str())? {
                let stray = name == SESSION_TMP
                    || name.ends_with(".tmp")
                    || name.starts_with("merge")
                    || (SessionName::parse(&name).is_some()
                        && !self.volumes[i]
                            .volinfo
                            .sessions
                            .iter()
                            .any(|(s, _)| s.as_str() == name));
                if stray {
                    tracing::info!("removing {vid}/{name}: left by an interrupted command");
                    self.dest.remove_all(&format!("{vid}/{name}"))?;
                }
            }
            self.refresh_bak(
                &format!("{vid}/volinfo"),
                self.meta_limit(fmt::MAX_VOLINFO_Z as u64),
            )?;
            if self.volumes[i].restored_from_bak {
                let bak = format!("{vid}/volinfo.bak");
                let data = self
                    .dest
                    .read(&bak, self.meta_limit(fmt::MAX_VOLINFO_Z as u64))?
                    .ok_or_else(|| Error::corrupt(&bak, "missing"))?;
                self.dest.write(&format!("{vid}/volinfo.tmp"), &data)?;
                self.dest.sync()?;
                self.dest
                    .rename(&format!("{vid}/volinfo.tmp"), &format!("{vid}/volinfo"))?;
                self.volumes[i].restored_from_bak = false;
            }
            let want = sessions_json(self.volumes[i].sessions.iter().map(|s| &s.name));
            let path = format!("{vid}/sessions");
            if self.dest.read(&path, 1 << 20)?.as_deref() != Some(want.as_bytes()) {
                self.replace_file(&path, want.as_bytes())?;
            }
        }
        self.dest.sync()
    }

    /// Prepares `<vid>/S-tmp`, where a send stages its new session, empty.
    pub fn begin_session(&self, vid: &VolumeId) -> Result<()> {
        let dir = format!("{vid}/{SESSION_TMP}");
        self.dest.remove_all(&dir)?;
        self.dest.mkdir_all(&dir)
    }

    pub fn abort_session(&self, vid: &VolumeId) -> Result<()> {
        self.dest.remove_all(&format!("{vid}/{SESSION_TMP}"))
    }

    /// Commits a staged session (chunks already in `S-tmp`): see the module docs for the order.
    /// `vol_idx` may name a volume that has never been saved (a new volume).
    pub fn commit_session(
        &mut self,
        vol_idx: usize,
        name: SessionName,
        mut info: SessionInfo,
        manifest_text: &str,
    ) -> Result<()> {
        let vid = self.volumes[vol_idx].vid.clone();
        let tmp = format!("{vid}/{SESSION_TMP}");
        info.manifest_hash = if manifest_text.is_empty() {
            None
        } else {
            let enc = self.codec.encode_meta(manifest_text.as_bytes())?;
            self.dest.write(&format!("{tmp}/manifest.z"), &enc.file)?;
            Some(enc.hash)
        };
        let enc = self.codec.encode_meta(info.to_text().as_bytes())?;
        if enc.file.len() as u64 > fmt::MAX_INFO_Z as u64 + self.codec.meta_overhead() {
            return Err(Error::Other(
                "session info too large (too many or too long tags)".into(),
            ));
        }
        self.dest.write(&format!("{tmp}/info"), &enc.file)?;
        self.dest.sync()?;
        failpoint("before-session-rename");
        self.dest.rename(&tmp, &format!("{vid}/{name}"))?;
        failpoint("after-session-rename");

        let mut volinfo = self.volumes[vol_idx].volinfo.clone();
        volinfo.sessions.push((name.clone(), enc.hash));
        let mut sessions = self.volumes[vol_idx].sessions.clone();
        sessions.push(Session { name, info });
        self.save_volume(vol_idx, volinfo, sessions)
    }

    /// Writes a volume's new volinfo and session list as `volinfo.tmp` and `sessions.tmp`, for a
    /// commit to rename into place; returns the encoded volinfo (its hash goes in the root).
    pub(crate) fn stage_volume(
        &self,
        vid: &VolumeId,
        volinfo: &VolInfo,
        sessions: &[Session],
    ) -> Result<crate::codec::Encoded> {
        let enc = self.codec.encode_meta(volinfo.to_text().as_bytes())?;
        if enc.file.len() as u64 > fmt::MAX_VOLINFO_Z as u64 + self.codec.meta_overhead() {
            return Err(Error::Other(format!(
                "volume {} has too many sessions to save",
                volinfo.name
            )));
        }
        self.dest.write(&format!("{vid}/volinfo.tmp"), &enc.file)?;
        self.dest.write(
            &format!("{vid}/sessions.tmp"),
            sessions_json(sessions.iter().map(|s| &s.name)).as_bytes(),
        )?;
        Ok(enc)
    }

    /// Zipper-saves a volume's new volinfo (and `sessions`), then the root.
    pub fn save_volume(
        &mut self,
        vol_idx: usize,
        volinfo: VolInfo,
        sessions: Vec<Session>,
    ) -> Result<()> {
        let vid = self.volumes[vol_idx].vid.clone();
        let enc = self.stage_volume(&vid, &volinfo, &sessions)?;
        let mut ini = self.ini.clone();
        ini.set_volume(&vid, enc.hash);
        let root = self.prepare_root(&mut ini)?;
        // The fallback for the window between the volinfo and archive.ini renames must be the
        // volinfo the current root refers to, whatever earlier runs left in volinfo.bak.
        let volinfo_path = format!("{vid}/volinfo");
        if let Some(current) = self
            .dest
            .read(&volinfo_path, self.meta_limit(fmt::MAX_VOLINFO_Z as u64))?
        {
            self.replace_file(&format!("{volinfo_path}.bak"), &current)?;
        }
        self.dest.sync()?;
        failpoint("before-volinfo-rename");
        self.dest
            .rename(&format!("{vid}/volinfo.tmp"), &format!("{vid}/volinfo"))?;
        failpoint("after-volinfo-rename");
        self.dest
            .rename(&format!("{vid}/sessions.tmp"), &format!("{vid}/sessions"))?;
        self.dest.rename("archive.ini.tmp", "archive.ini")?;
        self.dest.sync()?;
        failpoint("after-root-rename");
        self.ini = ini;
        self.remember_root(&root);
        let v = &mut self.volumes[vol_idx];
        v.volinfo = volinfo;
        v.sessions = sessions;
        self.replace_file(&format!("{vid}/volinfo.bak"), &enc.file)?;
        self.replace_file("archive.ini.bak", &root)
    }

    /// Saves archive.ini alone (atomically).
    pub fn save_root(&mut self) -> Result<()> {
        let mut ini = self.ini.clone();
        let root = self.prepare_root(&mut ini)?;
        self.dest.sync()?;
        self.dest.rename("archive.ini.tmp", "archive.ini")?;
        self.dest.sync()?;
        self.ini = ini;
        self.remember_root(&root);
        self.replace_file("archive.ini.bak", &root)
    }

    /// Keeps the root just committed in the local cache (rollback detection).
    pub(crate) fn remember_root(&self, root: &[u8]) {
        if let Some(dir) = &self.cache_dir {
            if let Err(e) = cache::save_root(dir, root) {
                tracing::warn!("could not update the local cache: {e}");
            }
        }
    }

    pub(crate) fn prepare_root(&self, ini: &mut ArchiveIni) -> Result<Vec<u8>> {
        ini.set(
            "updated_at",
            ini::next_updated_at(self.ini.get("updated_at")),
        );
        if self.codec.cipher.is_some() {
            // Record counters at or above anything used; the root's own sealing included.
            let [data, meta] = self.counters();
            let old = |k: &str| ini.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let (old_data, old_meta) = (old("dataci_count"), old("mci_count"));
            ini.set("dataci_count", data.max(old_data).to_string());
            ini.set("mci_count", (meta + 1).max(old_meta).to_string());
        }
        let mut file = ini::header(&self.ci);
        file.extend_from_slice(&self.codec.seal_root(&ini.to_text())?);
        self.dest.write("archive.ini.tmp", &file)?;
        Ok(file)
    }

    /// Makes `<rel>.bak` equal `<rel>` again after a run that died before copying it (only when
    /// `<rel>` itself is the committed version, i.e. not while a volinfo fallback is in use).
    fn refresh_bak(&self, rel: &str, max: u64) -> Result<()> {
        let Some(cur) = self.dest.read(rel, max)? else {
            return Ok(());
        };
        let bak = format!("{rel}.bak");
        let in_use = self
            .volumes
            .iter()
            .any(|v| v.restored_from_bak && rel.starts_with(&format!("{}/", v.vid)));
        if !in_use && self.dest.read(&bak, max)?.as_deref() != Some(&cur[..]) {
            self.replace_file(&bak, &cur)?;
        }
        Ok(())
    }

    /// Replaces a small file atomically (temporary name, then rename): used for the `.bak`
    /// copies (informational for the original, our crash fallback for volinfo) and `sessions`.
    fn replace_file(&self, rel: &str, data: &[u8]) -> Result<()> {
        let tmp = format!("{rel}.tmp");
        self.dest.write(&tmp, data)?;
        self.dest.rename(&tmp, rel)
    }

    /// Adds a volume to the in-memory archive (persisted with its first commit).
    pub fn new_volume(&mut self, name: &str, desc: &str) -> Result<usize> {
        fmt::ids::check_volume_name(name)?;
        if self.volume(name).is_some() {
            return Err(Error::Usage(format!("volume '{name}' already exists")));
        }
        if self.volumes.len() >= 1024 {
            return Err(Error::Usage(
                "the archive already holds 1024 volumes, the format's limit".into(),
            ));
        }
        let vid = loop {
            let v = VolumeId::random();
            if !self.volumes.iter().any(|x| x.vid == v) && !self.dest.exists(v.as_str())? {
                break v;
            }
        };
        self.volumes.push(Volume {
            vid,
            volinfo: VolInfo {
                name: name.into(),
                desc: desc.into(),
                sessions: Vec::new(),
            },
            sessions: Vec::new(),
            restored_from_bak: false,
        });
        Ok(self.volumes.len() - 1)
    }
}

/// Crash injection for tests: `WYNG_FAILPOINT=<name>` aborts the process at that step of a
/// commit, exactly as a power cut or `kill -9` would (no destructors, no cleanup).
pub(crate) fn failpoint(name: &str) {
    if std::env::var("WYNG_FAILPOINT").is_ok_and(|v| v == name) {
        std::process::abort();
    }
}

fn validate_var(ini: &ArchiveIni, ci: &str) -> Result<()> {
    let bad = |what: String| Error::corrupt("archive.ini", what);
    let get = |k| ini.get(k).unwrap_or("");
    if get("ci_mode") != ci {
        return Err(bad("ci_mode differs from the header".into()));
    }
    match get("format_ver").parse::<u32>() {
        Ok(3) => {}
        Ok(v) if (1..3).contains(&v) => {
            return Err(Error::Unsupported(format!("format version {v}")))
        }
        _ => return Err(bad("bad format_ver".into())),
    }
    match get("updated_at").parse::<f64>() {
        Ok(t) if t >= 1514782800.0 => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            if ci != "00" && t > now + 1.0 {
                return Err(Error::Other(
                    "the archive was updated in the future by this machine's clock: check the system time".into(),
                ));
            }
        }
        _ => return Err(bad("bad updated_at".into())),
    }
    let uuid = get("uuid");
    let parts: Vec<&str> = uuid.split('-').collect();
    if parts.len() < 2
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(bad("bad uuid".into()));
    }
    Ok(())
}

/// The codec an archive's `[var]` settings describe, with its cipher when keys are given.
fn codec_for(ini: &ArchiveIni, keys: Option<(&MasterKeys, &SaltFile)>) -> Result<Codec> {
    let bad = |what: String| Error::corrupt("archive.ini", what);
    let get = |k| ini.get(k).unwrap_or("");
    let chunksize: u64 = get("chunksize")
        .parse()
        .map_err(|_| bad("bad chunksize".into()))?;
    if !(1..=6).any(|f| chunksize == 32768 << f) {
        return Err(bad(format!("unsupported chunksize {chunksize}")));
    }
    let kind = Compression::parse(get("compression"))
        .ok_or_else(|| bad(format!("unknown compression '{}'", get("compression"))))?;
    let level: i32 = get("compr_level")
        .parse()
        .map_err(|_| bad("bad compr_level".into()))?;
    let compressor = Compressor::new(kind, level).map_err(|e| bad(e.to_string()))?;
    let counter = |k: &str| ini.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let (data_hash, meta_hash, cipher) = match keys {
        None => {
            let h = HashFn::for_hashtype(get("hashtype"))?;
            (h.clone(), h, None)
        }
        Some((keys, salt)) => {
            let mode =
                CipherMode::from_ci(get("ci_mode")).ok_or_else(|| bad("bad ci_mode".into()))?;
            let counters = [
                counter("dataci_count").max(salt.counters[0]),
                counter("mci_count").max(salt.counters[1]),
            ];
            let (cipher, keyed) = ArchiveCipher::new(mode, keys, salt, counters);
            let data_hash = match mode {
                // Legacy archives hash chunks with the plain function their hashtype names.
                CipherMode::Legacy30 => HashFn::for_hashtype(get("hashtype"))?,
                _ => keyed,
            };
            (data_hash, HashFn::Blake2b256, Some(Arc::new(cipher)))
        }
    };
    Ok(Codec {
        compressor,
        data_hash,
        meta_hash,
        chunksize,
        cipher,
    })
}

fn gunzip_root(body: &[u8]) -> Result<String> {
    let text = gunzip(body, ini::MAX_BODY * 8).map_err(|e| Error::corrupt("archive.ini", e))?;
    String::from_utf8(text).map_err(|_| Error::corrupt("archive.ini", "not UTF-8 text"))
}
