//! The only way to an archive's bytes. An [`Archive`] is opened for reading, or as a
//! [`WriteArchive`] for changing it; everything above this module works through them and never
//! sees the destination or the codec.
//!
//! Invariants (each enforced here, by construction):
//! * **Everything read is verified** down the hash chain archive.ini → volinfo → info →
//!   manifest.z → chunk before it is used ([`chunks`], [`manifest`]).
//! * **Opened for write = recovered, counters reserved.** [`Archive::open_write`] takes the
//!   exclusive lock, reserves nonce-counter values in local state (encrypted archives) and
//!   finishes or rolls back whatever an interrupted command left ([`recovery`]) before it
//!   returns; mutating methods exist only on [`WriteArchive`]. A cipher whose counters were
//!   never reserved cannot encrypt at all (`crypto::Counter` fails closed).
//! * **Commits are atomic** ([`session`], [`write`]): nothing references a session's files until
//!   the root is renamed into place; a dropped [`SessionWriter`] removes what it staged.
//! * **Paths come from typed ids** ([`layout`]).
//! * **Memory follows data, not volume size**: manifests are streamed ([`manifest`]) and merged
//!   views are compact on-disk indexes of data entries only ([`index`]).
//!
//! # Commit order (crash safety)
//! A send writes everything new under `<vid>/S-tmp/` (chunks, `manifest.z`, `info`), makes it
//! durable, renames `S-tmp` to the session name, then "zipper-saves" the parents: `volinfo.tmp`,
//! `sessions.tmp`, `archive.ini.tmp`, a durability barrier, and renames in that order with
//! archive.ini last. Until archive.ini is replaced, the old root still describes a complete
//! archive: the one window where the old root meets the new volinfo is covered by `volinfo.bak`
//! (a copy of the previous committed volinfo), which loading falls back to. Leftovers of an
//! interrupted command are removed by recovery before the next write. `updated_at` strictly
//! increases with every save (see `format::ini::next_updated_at`).

pub mod cache;
pub mod chunks;
pub mod dedup;
pub mod digests;
pub mod index;
mod journal;
pub mod layout;
pub mod live;
pub mod local;
pub mod manifest;
mod recovery;
pub mod resume;
pub mod session;
mod transfer;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::auth::Auth;
use crate::codec::{gunzip, Codec};
use crate::crypto::{self, ArchiveCipher, HashFn, MasterKeys, SaltFile};
use crate::dest::Dest;
use crate::error::{Error, Result};
use crate::format::ini::{self, ArchiveIni};
use crate::format::{self as fmt, Hash32, Session, SessionInfo, VolInfo, VolumeId};
use crate::spool::Spool;

pub use crate::codec::{Compression, Compressor};
pub use crate::crypto::CipherMode;
/// A move of a staged file (taking chunks from an interrupted send, merges).
pub use crate::dest::Move;
pub use crate::dest::{AwsEnv, Capabilities, DestOptions, MemDest, S3Options, S3Usage, S3UsageLog};
pub use chunks::{ChunkLoc, ChunkReader};
pub use index::MergedIndex;
pub use local::LocalState;
pub use recovery::Leftover;
pub use session::{NewManifest, SessionWriter};
pub use transfer::{copy_digest, Copied, Transfer};
pub use write::{InitParams, WriteArchive};

/// Where an archive lives, opened from a `--dest` URL.
pub struct Location(Box<dyn Dest>);

impl Location {
    pub fn open(url: &str, o: &DestOptions) -> Result<Location> {
        crate::dest::open(url, o).map(Location)
    }

    pub fn url(&self) -> &str {
        self.0.url()
    }

    /// An in-memory destination (tests, fault injection).
    pub fn memory(d: MemDest) -> Location {
        Location(Box::new(d))
    }
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

    pub(crate) fn session_index(&self, name: &fmt::SessionName) -> Option<usize> {
        self.sessions.iter().position(|s| &s.name == name)
    }

    /// The hash of a session's `info`, as the volinfo records it.
    pub(crate) fn info_hash(&self, name: &fmt::SessionName) -> Option<&Hash32> {
        self.volinfo
            .sessions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, h)| h)
    }
}

/// A volume the root lists whose metadata cannot be loaded. It is left out of the archive's
/// volumes, so every other volume stays usable; naming it gives its damage, and it can be
/// deleted (`delete --vid`).
#[derive(Clone, Debug)]
pub struct DamagedVolume {
    pub vid: VolumeId,
    /// Its name, if its volinfo could still be read.
    pub name: Option<String>,
    pub error: String,
    /// Its volinfo is damaged but `volinfo.bak` holds the committed version (arch-check
    /// --clean restores it).
    pub repairable: bool,
}

/// How to open an archive.
pub struct OpenOptions<'a> {
    pub auth: &'a Auth,
    /// `--meta-dir`: local state (rollback detection, counters, indexes, digest maps).
    pub meta_dir: Option<&'a Path>,
    /// Accept an archive older than the last one seen here (`--force-allow-rollback`).
    pub allow_rollback: bool,
    /// `--force-retry`: retry an interrupted transaction even though an earlier retry of it
    /// did not complete.
    pub force_retry: bool,
    /// How to share the archive with other processes.
    pub lock: LockPolicy,
    /// Workers, memory and disk budgets, checkpoints of the work done on this archive.
    pub tuning: crate::tuning::Tuning,
    /// Where the progress of long work on this archive goes.
    pub progress: crate::progress::Reporting,
}

/// How a command shares the archive with other wyng processes.
#[derive(Clone, Copy, Debug, Default)]
pub struct LockPolicy {
    /// How long to wait for another process's lock before giving up (`Busy`): writers, and
    /// readers that cannot read beside a writer.
    pub wait: std::time::Duration,
    /// A reader that finds a writer at work reads the archive as committed so far instead of
    /// waiting for it (list, verify, receive, diff, mount): a commit is atomic, and a chunk
    /// that a concurrent prune moves away is reported as the archive changing, never as damage
    /// (see [`ChunkReader`]). Off for a reader whose view must not include a writer's staging
    /// (arch-check would call it a leftover).
    pub beside_writers: bool,
}

pub struct Archive {
    dest: Arc<dyn Dest>,
    ci: String,
    ini: ArchiveIni,
    codec: Codec,
    volumes: Vec<Volume>,
    /// Volumes the root lists that cannot be loaded (see [`DamagedVolume`]).
    damaged: Vec<DamagedVolume>,
    local: Option<LocalState>,
    salt: Option<SaltFile>,
    /// Copies of the salt file found damaged or missing (`archive.salt` or `salt.bak`, and
    /// what is wrong); the one in use passed its check block. A write command rewrites them.
    salt_problems: Vec<(&'static str, String)>,
    /// The root file as last loaded or committed (to tell whether the archive changed).
    root: Vec<u8>,
    force_retry: bool,
    /// Merged-view indexes built by this process (the mount reuses them).
    indexes: Mutex<index::Memo>,
    /// Read without holding a lock (a writer was at work, or readers of this destination take
    /// none): files may move under this reader.
    unlocked: bool,
    tuning: crate::tuning::Tuning,
    progress: crate::progress::Reporting,
}

const ROOT_MAX: u64 = (ini::HEADER_LEN + ini::MAX_BODY + 4096) as u64;

impl Archive {
    /// Opens an archive for reading (a shared lock) and verifies its metadata down to every
    /// session's `info`.
    pub fn open_read(loc: Location, o: &OpenOptions) -> Result<Archive> {
        Self::open(loc.0.into(), o, false)
    }

    fn open(dest: Arc<dyn Dest>, o: &OpenOptions, exclusive: bool) -> Result<Archive> {
        if !dest.root_exists()? {
            return Err(Error::ArchiveNotFound {
                url: dest.url().into(),
            });
        }
        let unlocked = !take_lock(&*dest, exclusive, &o.lock)?;
        let file = dest
            .read(layout::ROOT, ROOT_MAX)?
            .ok_or_else(|| Error::ArchiveNotFound {
                url: dest.url().into(),
            })?;
        let (ci, body) = ini::parse_header(&file)?;
        let mut salt_problems = Vec::new();
        let (codec, ini, salt) = if ci == "00" {
            let ini = ArchiveIni::parse(&gunzip_root(body)?)?;
            (codec_for(&ini, None)?, ini, None)
        } else {
            let mode = CipherMode::from_ci(&ci)
                .ok_or_else(|| Error::Unsupported(format!("cipher mode {ci}")))?;
            let salts = read_salts(&*dest)?;
            // Keys fit when they open the root and the salt file's check block: the check
            // covers all four salts, so damage to any of them (even the unused-looking slots
            // the subkeys come from) is caught before anything is decrypted with it.
            let fits = |k: &MasterKeys, s: &SaltFile| {
                let (c, _) = ArchiveCipher::new(mode, k, s, [0, 0]);
                c.decrypt_meta(body).is_some() && c.verify_check(s)
            };
            // Cached keys came from a salt file that passed its check: any copy that passes
            // with them is theirs. Derived keys belong to the copy they were derived from.
            let fit = |k: &MasterKeys| salts.files.iter().position(|(_, s)| fits(k, s));
            let opens = |k: &MasterKeys| fit(k).is_some();
            let derived_from = std::cell::Cell::new(None);
            let derive = |pass: &[u8]| -> Result<MasterKeys> {
                let mut root_opened = false;
                for (i, (_, s)) in salts.files.iter().enumerate() {
                    let k = crypto::derive_master(pass, s, mode);
                    if fits(&k, s) {
                        derived_from.set(Some(i));
                        return Ok(k);
                    }
                    let (c, _) = ArchiveCipher::new(mode, &k, s, [0, 0]);
                    root_opened |= c.decrypt_meta(body).is_some();
                }
                Err(if root_opened {
                    salts.unusable()
                } else {
                    Error::Auth(crate::crypto::WRONG_PASSPHRASE.into())
                })
            };
            let keys = o.auth.unlock(dest.url(), &opens, &derive)?;
            let chosen = derived_from
                .get()
                .or_else(|| fit(&keys))
                .ok_or_else(|| salts.unusable())?;
            let (which, salt) = salts.files[chosen].clone();
            let (cipher, _) = ArchiveCipher::new(mode, &keys, &salt, [0, 0]);
            let mut salt_damage = salts.problems.clone();
            for (w, s) in &salts.files {
                if *w != which && !(s.same_salts(&salt) && cipher.verify_check(s)) {
                    salt_damage.push((w, "does not match its check block".to_string()));
                }
            }
            salt_damage.sort();
            salt_damage.dedup();
            if which != layout::SALT {
                tracing::warn!(
                    "{} is damaged; using {which} (the next write command rewrites {})",
                    layout::SALT,
                    layout::SALT
                );
            }
            let gz = cipher
                .decrypt_meta(body)
                .ok_or_else(|| Error::Auth(crate::crypto::WRONG_PASSPHRASE.into()))?;
            let ini = ArchiveIni::parse(&gunzip_root(&gz)?)?;
            let codec = codec_for(&ini, Some((&keys, &salt)))?;
            salt_problems = salt_damage;
            (codec, ini, Some(salt))
        };
        validate_var(&ini, &ci)?;
        let mut a = Archive {
            dest,
            ci,
            ini,
            codec,
            volumes: Vec::new(),
            damaged: Vec::new(),
            local: None,
            salt,
            salt_problems,
            root: file.clone(),
            force_retry: o.force_retry,
            indexes: Mutex::new(index::Memo::default()),
            unlocked,
            tuning: o.tuning.clone(),
            progress: o.progress.clone(),
        };
        a.attach_local(o.meta_dir);
        a.check_rollback(&file, o.allow_rollback)?;
        a.reload()?;
        Ok(a)
    }

    /// Binds the local state directory; for encrypted archives, raises the counters to the
    /// cached salt file's (never lowering them). Without usable local state the archive can
    /// still be read.
    fn attach_local(&mut self, meta_dir: Option<&Path>) {
        let Some(meta) = meta_dir else { return };
        let local = match LocalState::open(meta, self.uuid(), self.dest.url()) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("no local state in {}: {e}", meta.display());
                return;
            }
        };
        if let (Some(salt), Some(c)) = (&self.salt, &self.codec.cipher) {
            if let Some(cached) = local
                .load_salt()
                .filter(|s| s.same_salts(salt) && c.verify_check(s))
            {
                c.data_counter.raise_to(cached.counters[0]);
                c.meta_counter.raise_to(cached.counters[1]);
            }
        }
        self.local = Some(local);
    }

    /// Refuses an archive older than the last one seen from this machine (format §14.3).
    fn check_rollback(&self, remote: &[u8], allow: bool) -> Result<()> {
        let Some(local) = &self.local else {
            return Ok(());
        };
        let Some(cached) = local.load_root() else {
            return local.save_root(remote);
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
                return Err(Error::Rollback {
                    url: self.dest.url().into(),
                });
            }
        }
        local.save_root(remote)
    }

    /// (Re)loads every volume from the destination. While a transaction is pending, the
    /// volume it concerns may be half-moved: it is left out (with a warning) until a write
    /// command finishes the transaction.
    fn reload(&mut self) -> Result<()> {
        let pending = fmt::journal::Journal::parse(&self.ini.in_process)
            .ok()
            .flatten()
            .map(|j| j.vid().clone());
        self.volumes.clear();
        self.damaged.clear();
        for (vid, h) in self.ini.volumes.clone() {
            match self.load_volume(&vid, &h) {
                Ok(v) => self.volumes.push(v),
                Err(e) if pending.as_ref() == Some(&vid) => {
                    tracing::warn!("volume {vid} is in an interrupted prune or delete and cannot be read until a write command (such as `wyng prune`) finishes it: {e}");
                }
                // Damage is confined to its volume: the others stay usable.
                Err(e @ Error::Corrupt { .. }) | Err(e @ Error::Unsupported(_)) => {
                    let (name, repairable) = self.salvage(&vid, &h);
                    tracing::warn!(
                        "volume {}{vid} is damaged and left out: {e}",
                        name.as_ref()
                            .map_or(String::new(), |n| format!("'{}' ", sanitized(n)))
                    );
                    self.damaged.push(DamagedVolume {
                        vid,
                        name,
                        error: e.to_string(),
                        repairable,
                    });
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

    /// What can still be told of a damaged volume: its name (from volinfo or volinfo.bak),
    /// and whether volinfo.bak is the committed volinfo (so a repair can restore it).
    fn salvage(&self, vid: &VolumeId, hash: &Hash32) -> (Option<String>, bool) {
        let limit = fmt::MAX_VOLINFO_Z as u64;
        let decode = |p: &str, checked: bool| -> Option<VolInfo> {
            let f = self.dest.read(p, self.meta_limit(limit)).ok()??;
            let t = if checked {
                self.codec.decode_meta(&f, hash, limit, 8 << 20, p).ok()?
            } else {
                self.codec.open_meta_unhashed(&f, 8 << 20, p).ok()?
            };
            VolInfo::parse(&String::from_utf8(t).ok()?, p).ok()
        };
        let bak = decode(&layout::volinfo_bak(vid), true);
        let repairable = bak.is_some() && decode(&layout::volinfo(vid), true).is_none();
        let name = bak
            .or_else(|| decode(&layout::volinfo(vid), false))
            .map(|v| v.name);
        (name, repairable)
    }

    /// Whether a volinfo that does not match the root is the one a commit was about to make
    /// current: the commit's staged root (`archive.ini.tmp`, durable before any rename of the
    /// commit) names it. Only then is `volinfo.bak` the right fallback; otherwise the volinfo
    /// is damaged.
    fn in_commit_window(&self, vid: &VolumeId, volinfo: &[u8]) -> bool {
        let Ok(Some(tmp)) = self.dest.read(layout::ROOT_TMP, ROOT_MAX) else {
            return false;
        };
        let Ok((ci, body)) = ini::parse_header(&tmp) else {
            return false;
        };
        if ci != self.ci {
            return false;
        }
        let staged = self
            .codec
            .open_root(body)
            .ok()
            .and_then(|t| ArchiveIni::parse(&t).ok());
        let Some(h) = staged.as_ref().and_then(|i| i.volume_hash(vid).copied()) else {
            return false;
        };
        let limit = fmt::MAX_VOLINFO_Z as u64;
        self.codec
            .decode_meta(volinfo, &h, limit, 8 << 20, "volinfo")
            .is_ok()
    }

    /// The largest stored size of a metadata object whose compressed text may be `max` bytes.
    fn meta_limit(&self, max: u64) -> u64 {
        max + self.codec.meta_overhead()
    }

    fn load_volume(&self, vid: &VolumeId, hash: &Hash32) -> Result<Volume> {
        let path = layout::volinfo(vid);
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
            Err(first) => {
                // `volinfo.bak` stands in only for a commit that was interrupted between the
                // volinfo and root renames; anything else is damage, reported as such.
                let current = self
                    .dest
                    .read(&path, self.meta_limit(limit))?
                    .unwrap_or_default();
                match read(&layout::volinfo_bak(vid)) {
                    Ok(t) if self.in_commit_window(vid, &current) => {
                        tracing::info!("{path} is from an interrupted commit; using volinfo.bak");
                        (t, true)
                    }
                    Ok(_) => {
                        return Err(Error::corrupt(
                            &path,
                            format!(
                                "{}; volinfo.bak holds the committed version: `wyng arch-check --clean` restores it",
                                what_of(&first)
                            ),
                        ))
                    }
                    Err(_) => return Err(first),
                }
            }
        };
        let text = String::from_utf8(text).map_err(|_| Error::corrupt(&path, "not UTF-8 text"))?;
        let volinfo = VolInfo::parse(&text, &path)?;
        let mut sessions = Vec::with_capacity(volinfo.sessions.len());
        for (name, h) in &volinfo.sessions {
            let p = layout::info(vid, layout::Dir::Session(name));
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
                    layout::info(vid, layout::Dir::Session(&w[1].name)),
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

    // ---- what the archive is -----------------------------------------------------------

    pub fn url(&self) -> &str {
        self.dest.url()
    }

    pub fn uuid(&self) -> &str {
        self.ini.get("uuid").unwrap_or("")
    }

    pub fn chunksize(&self) -> u64 {
        self.codec.chunksize
    }

    pub fn encrypted(&self) -> bool {
        self.ci != "00"
    }

    /// The cipher mode, `None` for an unencrypted archive.
    pub(crate) fn cipher_mode(&self) -> Option<CipherMode> {
        CipherMode::from_ci(&self.ci).filter(|_| self.encrypted())
    }

    /// File bytes this process has written to the archive's destination so far (chunks and
    /// metadata; renames and links cost none).
    pub fn bytes_written(&self) -> u64 {
        self.dest.bytes_written()
    }

    /// `(data cipher, metadata cipher)` names, `None` for an unencrypted archive.
    pub fn cipher_names(&self) -> Option<(&'static str, &'static str)> {
        self.codec.cipher.as_ref().map(|c| c.mode.names())
    }

    pub fn compression(&self) -> Compressor {
        self.codec.compressor
    }

    /// The `[var]` settings of archive.ini, in file order (for `list --verbose`).
    pub fn settings(&self) -> &[(String, String)] {
        &self.ini.var
    }

    pub fn updated_at(&self) -> Option<f64> {
        self.ini.get("updated_at").and_then(|t| t.parse().ok())
    }

    /// Bytes a send stores between checkpoints for a resume: [`Tuning::checkpoint`] if set,
    /// else what suits the destination (64 MiB; 256 MiB over ssh).
    ///
    /// [`Tuning::checkpoint`]: crate::tuning::Tuning::checkpoint
    pub fn checkpoint_bytes(&self) -> u64 {
        self.tuning
            .checkpoint
            .filter(|&b| b > 0)
            .unwrap_or_else(|| self.dest.checkpoint_bytes())
    }

    /// How work on this archive uses the machine (as opened).
    pub fn tuning(&self) -> &crate::tuning::Tuning {
        &self.tuning
    }

    /// Where progress of work on this archive goes.
    pub(crate) fn reporting(&self) -> &crate::progress::Reporting {
        &self.progress
    }

    /// A long task on this archive begins: `total` bytes, `label` naming it.
    pub fn progress(&self, total: u64, label: &str) -> crate::progress::Progress {
        self.progress.bytes(total, label)
    }

    /// Bytes the destination can still take, if it can tell.
    pub fn free_space(&self) -> Result<Option<u64>> {
        self.dest.free_space()
    }

    /// The local state directory for this archive, if there is one (delta maps live there).
    pub fn local_dir(&self) -> Option<&Path> {
        self.local.as_ref().map(|l| l.dir())
    }

    /// A volume's directory in local state.
    pub(crate) fn local_volume_dir(&self, vid: &VolumeId) -> Option<PathBuf> {
        self.local.as_ref().map(|l| l.volume_dir(vid))
    }

    /// Where temporary files of this archive go.
    pub(crate) fn spool_dir(&self) -> PathBuf {
        self.local
            .as_ref()
            .map(|l| l.spool_dir())
            .unwrap_or_else(std::env::temp_dir)
    }

    pub fn spool(&self) -> Spool {
        Spool::new(&self.spool_dir())
    }

    // ---- volumes --------------------------------------------------------------------------

    pub fn volumes(&self) -> &[Volume] {
        &self.volumes
    }

    /// Every volume's name, in the archive's order.
    pub fn volume_names(&self) -> Vec<String> {
        self.volumes.iter().map(|v| v.name().to_string()).collect()
    }

    /// The volume of this name (`None` if there is none, or if two volumes share it: see
    /// [`Archive::find`]).
    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volume_index(name).map(|i| &self.volumes[i])
    }

    pub fn volume_index(&self, name: &str) -> Option<usize> {
        let mut it = self
            .volumes
            .iter()
            .enumerate()
            .filter(|(_, v)| v.name() == name);
        match (it.next(), it.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    }

    /// Volumes the root lists that could not be loaded.
    pub fn damaged(&self) -> &[DamagedVolume] {
        &self.damaged
    }

    /// The volume of this name, or the error that says why there is none: not in the archive,
    /// damaged, or a name two volumes share.
    pub fn find(&self, name: &str) -> Result<&Volume> {
        self.find_index(name).map(|i| &self.volumes[i])
    }

    pub fn find_index(&self, name: &str) -> Result<usize> {
        let matches: Vec<usize> = (0..self.volumes.len())
            .filter(|&i| self.volumes[i].name() == name)
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => match self
                .damaged
                .iter()
                .find(|d| d.name.as_deref() == Some(name))
            {
                Some(d) => Err(Error::corrupt(
                    d.vid.as_str(),
                    format!(
                        "volume '{}' is damaged: {}; `wyng delete --vid={}` removes it",
                        sanitized(name),
                        d.error,
                        d.vid
                    ),
                )),
                None => {
                    let unnamed: Vec<String> = self
                        .damaged
                        .iter()
                        .filter(|d| d.name.is_none())
                        .map(|d| d.vid.to_string())
                        .collect();
                    if unnamed.is_empty() {
                        Err(Error::VolumeNotFound(sanitized(name)))
                    } else {
                        // It may be one of them: that is damage, not a mistyped name.
                        Err(Error::corrupt(
                            layout::ROOT,
                            format!(
                                "volume '{}' is not among the readable volumes, and the archive has damaged volumes whose names cannot be read ({}): see `wyng arch-check`",
                                sanitized(name),
                                unnamed.join(", ")
                            ),
                        ))
                    }
                }
            },
            many => Err(Error::Selection(format!(
                "the name '{}' is used by {} volumes ({}): rename or delete one by its id (`wyng delete --vid=VID`)",
                sanitized(name),
                many.len(),
                many.iter()
                    .map(|&i| self.volumes[i].vid.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Compresses and hashes raw volume data as a chunk of this archive would be, to compare
    /// it with a manifest hash (or to store it, through a [`SessionWriter`]).
    pub(crate) fn hash_chunk(&self, raw: &[u8]) -> session::Hashed {
        session::Hashed(self.codec.hash_chunk(raw))
    }

    /// Whether this state was loaded while a journaled change (a prune's merge, a delete) was
    /// under way: its chunk files may be moving until the root changes again.
    pub(crate) fn transaction_pending(&self) -> bool {
        !self.ini.in_process.is_empty()
    }

    /// Whether the archive on the destination is still the one loaded (its root unchanged).
    pub(crate) fn is_current(&self) -> Result<bool> {
        Ok(self.dest.read(layout::ROOT, ROOT_MAX)?.as_deref() == Some(&self.root[..]))
    }

    /// Loads the archive again as it is now on the destination (a long-lived reader such as
    /// a mount, after a send or prune elsewhere). Keeps the keys, so no passphrase is asked.
    pub(crate) fn refreshed(&self) -> Result<Archive> {
        let file =
            self.dest
                .read(layout::ROOT, ROOT_MAX)?
                .ok_or_else(|| Error::ArchiveNotFound {
                    url: self.dest.url().into(),
                })?;
        let (ci, body) = ini::parse_header(&file)?;
        if ci != self.ci {
            return Err(Error::corrupt(layout::ROOT, "cipher mode changed"));
        }
        let ini = ArchiveIni::parse(&self.codec.open_root(body)?)?;
        validate_var(&ini, &ci)?;
        if ini.get("uuid") != self.ini.get("uuid")
            || ini.get("chunksize") != self.ini.get("chunksize")
        {
            return Err(Error::corrupt(
                layout::ROOT,
                "the archive was replaced by another one",
            ));
        }
        let mut a = Archive {
            dest: self.dest.clone(),
            ci,
            ini,
            codec: self.codec.clone(),
            volumes: Vec::new(),
            damaged: Vec::new(),
            local: self.local.clone(),
            salt: self.salt.clone(),
            salt_problems: self.salt_problems.clone(),
            root: file,
            force_retry: false,
            indexes: Mutex::new(self.indexes.lock().clone()),
            unlocked: true,
            tuning: self.tuning.clone(),
            progress: self.progress.clone(),
        };
        a.reload()?;
        Ok(a)
    }

    /// Lets go of the destination's lock (a long-lived reader that must not block writers).
    pub fn unlock(&mut self) {
        self.dest.unlock();
        self.unlocked = true;
    }

    /// Whether this reader holds no lock (files may move under it).
    pub(crate) fn is_unlocked(&self) -> bool {
        self.unlocked
    }

    /// In a process forked from this one: drop connections that belong to the parent.
    pub fn detach_after_fork(&self) {
        self.dest.detach_after_fork();
    }
}

/// Takes the lock `exclusive` asks for under `policy`; returns whether one is held.
fn take_lock(dest: &dyn Dest, exclusive: bool, policy: &LockPolicy) -> Result<bool> {
    let busy = match dest.lock(exclusive) {
        Ok(held) => return Ok(held),
        Err(e @ Error::Busy { .. }) => e,
        Err(e) => return Err(e),
    };
    if !exclusive && policy.beside_writers {
        tracing::info!(
            "another wyng process is writing to {}; reading the archive as committed so far",
            dest.url()
        );
        return Ok(false);
    }
    if policy.wait.is_zero() {
        return Err(busy);
    }
    tracing::warn!(
        "{} is in use by another wyng process; waiting up to {} s for it to finish",
        dest.url(),
        policy.wait.as_secs()
    );
    let deadline = std::time::Instant::now() + policy.wait;
    // Polls: a lock on a remote destination costs a round trip each.
    let pause = std::time::Duration::from_millis(if dest.batch_reads() { 1000 } else { 100 });
    loop {
        std::thread::sleep(pause);
        match dest.lock(exclusive) {
            Ok(held) => {
                tracing::info!("{}: the other process is done; going on", dest.url());
                return Ok(held);
            }
            Err(Error::Busy { .. }) if std::time::Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
}

/// A name from an archive, safe to print: control characters (a terminal's escape sequences)
/// are shown escaped, never sent to the terminal.
pub fn sanitized(s: &str) -> String {
    escape_controls(s, |_| false)
}

/// Report text, safe to print: as [`sanitized`], but line breaks and tabs stay.
pub fn printable(s: &str) -> String {
    escape_controls(s, |c| c == '\n' || c == '\t')
}

fn escape_controls(s: &str, keep: impl Fn(char) -> bool) -> String {
    if !s.chars().any(|c| c.is_control() && !keep(c)) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() && !keep(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// What an error says, without the advice its message ends with.
fn what_of(e: &Error) -> String {
    match e {
        Error::Corrupt { what, .. } => what.clone(),
        e => e.to_string(),
    }
}

/// The two copies of the salt file (`archive.salt`, and `salt.bak` with every byte inverted)
/// that could be parsed, and what is wrong with the others.
struct Salts {
    files: Vec<(&'static str, SaltFile)>,
    problems: Vec<(&'static str, String)>,
}

impl Salts {
    fn unusable(&self) -> Error {
        Error::corrupt(
            layout::SALT,
            "neither archive.salt nor salt.bak matches its check block: the salts the keys come from are damaged; restore archive.salt from a copy of this archive",
        )
    }
}

fn read_salts(dest: &dyn Dest) -> Result<Salts> {
    let mut s = Salts {
        files: Vec::new(),
        problems: Vec::new(),
    };
    let len = crypto::SALT_FILE_LEN as u64;
    for (name, inverted) in [(layout::SALT, false), (layout::SALT_BAK, true)] {
        match dest.read(name, len + 1)? {
            None => s.problems.push((name, "is missing".to_string())),
            Some(b) => {
                let b = if inverted { SaltFile::inverted(&b) } else { b };
                match SaltFile::parse(&b) {
                    Ok(f) => s.files.push((name, f)),
                    Err(e) => s
                        .problems
                        .push((name, format!("is damaged ({})", what_of(&e)))),
                }
            }
        }
    }
    if s.files.is_empty() {
        let (name, what) = &s.problems[0];
        return Err(Error::corrupt(
            *name,
            format!("{what} (and so is salt.bak): an encrypted archive cannot be opened without its salts"),
        ));
    }
    Ok(s)
}

fn validate_var(ini: &ArchiveIni, ci: &str) -> Result<()> {
    let bad = |what: String| Error::corrupt(layout::ROOT, what);
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
                return Err(Error::FutureTimestamp);
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
    let bad = |what: String| Error::corrupt(layout::ROOT, what);
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
    let text = gunzip(body, ini::MAX_BODY * 8).map_err(|e| Error::corrupt(layout::ROOT, e))?;
    String::from_utf8(text).map_err(|_| Error::corrupt(layout::ROOT, "not UTF-8 text"))
}

/// One chunk's data hashed for several archives (a send to several destinations): compressed
/// once per compression setting, so archives that compress alike share that work, and hashed
/// with each archive's own key. Compression stays behind the archive: callers see only the
/// [`session::Hashed`] each archive would store.
pub(crate) struct SharedChunk<'a> {
    raw: &'a [u8],
    compressed: Vec<(Compressor, Vec<u8>)>,
}

impl<'a> SharedChunk<'a> {
    pub(crate) fn new(raw: &'a [u8]) -> SharedChunk<'a> {
        SharedChunk {
            raw,
            compressed: Vec::new(),
        }
    }

    /// [`Archive::hash_chunk`] of the data, reusing a compression another archive with the same
    /// settings already made.
    pub(crate) fn hash_for(&mut self, archive: &Archive) -> session::Hashed {
        let c = archive.codec.compressor;
        let file = match self.compressed.iter().find(|(k, _)| *k == c) {
            Some((_, f)) => f.clone(),
            None => {
                let f = c.compress(self.raw);
                self.compressed.push((c, f.clone()));
                f
            }
        };
        session::Hashed(archive.codec.hash_compressed(file))
    }
}

#[cfg(test)]
mod shared_chunk_tests {
    use super::*;

    fn archive(compression: Compression, level: i32, cipher: Option<CipherMode>) -> WriteArchive {
        let meta = tempfile::tempdir().unwrap();
        let auth = crate::auth::Auth {
            passcmd: None,
            authmin: 0,
            cached_only: false,
        };
        Archive::init(
            Location::memory(MemDest::new("mem:shared")),
            &InitParams {
                compression: Compressor::new(compression, level).unwrap(),
                chunksize: 65536,
                cipher,
            },
            &auth,
            Some(meta.path()),
        )
        .unwrap()
    }

    /// Sharing changes nothing an archive stores: every archive gets exactly the hash and file
    /// it computes alone, whether its compression matches another's or not.
    #[test]
    fn a_shared_chunk_hashes_as_each_archive_alone() {
        let raw: Vec<u8> = (0..65536u32).map(|i| (i * 7 / 13) as u8).collect();
        let archives = [
            archive(Compression::Zstd, 3, None),
            archive(Compression::Zstd, 3, None),
            archive(Compression::Zlib, 6, None),
            archive(Compression::Zstd, 9, None),
        ];
        let mut shared = SharedChunk::new(&raw);
        for wa in &archives {
            let alone = wa.hash_chunk(&raw);
            let got = shared.hash_for(wa);
            assert_eq!(got.hash(), alone.hash());
            assert_eq!(got.0.file, alone.0.file);
        }
        // Two archives compress alike: three compressions, not four.
        assert_eq!(shared.compressed.len(), 3);
    }
}
