//! `--vols-from FILE` (also spelled `--local-from`): several local storages and their volumes in
//! one run of `send`, `monitor`, `receive`, `verify` or `diff` (behaviour §7.10).
//!
//! The file is a JSON object. Each key is a local storage (a reflink directory or `vg/pool`; the
//! string `"null"` or `""` where the command needs none, e.g. `verify`); each value is a list of
//! `[name, alias]` pairs (a bare `"name"` is accepted too). `name` is the archive's volume,
//! `alias` (or `null`) its name in that storage when it differs:
//! `{"/var/lib/images": [["web.img", null], ["db.img", "db-2026.img"]], "vg0/pool0": [["root", null]]}`.
//!
//! Invariants:
//! - A volume error (a storage that cannot be opened, a volume missing locally or in the
//!   archive, a failed restore or verification) does not stop the run: every other volume is
//!   still processed, the failed names are written to `FILE.error` as
//!   `{"rc": 2, "volumes": [sorted names]}`, and the run exits 2 (behaviour §3). A stale
//!   `FILE.error` is removed when the run starts, so the file exists exactly when the last run
//!   had volume errors.
//! - An error that may have left work half done in the archive (a failed send) still ends the
//!   whole run, with its own exit code; the journal makes the next run finish or roll it back.
//! - `send`: every storage's volumes share one session name. An alias is the volume's name
//!   locally, and the archive's volume `name` is renamed to the alias first unless the alias is
//!   taken, so the archive follows a renamed VM without a new full backup (the rename is
//!   journaled like `wyng rename`, and skipped by `--dry-run`).
//! - Other commands find the archive's volume by `name`, or by the alias once a send has
//!   renamed it, so one file serves every command.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::ops::{self, SessionSel, VolumeRef};
use crate::source::{LocalOptions, LocalStorage};

/// One entry of the file: the archive's volume and, if different, its local name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub alias: Option<String>,
}

impl Entry {
    /// The volume's name in its local storage.
    pub(crate) fn local_name(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }

    /// The archive's volume for commands other than send: `name`, or the alias once a send
    /// has renamed the volume to it.
    pub fn resolve(&self, archive: &Archive) -> VolumeRef {
        let archive_name = match &self.alias {
            Some(a) if archive.volume(&self.name).is_none() && archive.volume(a).is_some() => a,
            _ => &self.name,
        };
        VolumeRef {
            archive: archive_name.clone(),
            local: self.local_name().to_string(),
        }
    }
}

/// One key of the file and its volumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageSet {
    /// `None` for `"null"` or `""`.
    pub local: Option<PathBuf>,
    pub volumes: Vec<Entry>,
}

/// Volumes that failed, with why; the run goes on and exits 2 at the end.
#[derive(Debug, Default)]
pub struct Failures(pub Vec<(String, String)>);

impl Failures {
    pub fn add(&mut self, volume: &str, why: impl std::fmt::Display) {
        tracing::error!("{volume}: {why}");
        self.0.push((volume.to_string(), why.to_string()));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The sorted, distinct names of the failed volumes.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.0.iter().map(|(n, _)| n.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

#[derive(Debug)]
pub struct VolsFrom {
    pub path: PathBuf,
    pub sets: Vec<StorageSet>,
    /// How the sets' storages are opened (`--remap`, `--vouch`).
    pub storage: LocalOptions,
}

impl VolsFrom {
    /// Reads and checks the file, and removes the `.error` file of an earlier run.
    pub fn load(path: &Path, storage: &LocalOptions) -> Result<VolsFrom> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Usage(format!("cannot read --vols-from {}: {e}", path.display()))
        })?;
        let sets = parse(&text).map_err(|e| {
            Error::Usage(format!(
                "--vols-from {}: {e}; expected {{\"/local/dir\": [[\"volume\", null], ...], ...}}",
                path.display()
            ))
        })?;
        let vf = VolsFrom {
            path: path.to_path_buf(),
            sets,
            storage: storage.clone(),
        };
        match std::fs::remove_file(vf.error_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::local(
                    vf.error_path(),
                    format!("cannot remove the previous run's error file: {e}"),
                ))
            }
        }
        Ok(vf)
    }

    /// `FILE.error`, beside the file.
    pub(crate) fn error_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".error");
        PathBuf::from(p)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.sets.iter().flat_map(|s| s.volumes.iter())
    }

    /// Writes `FILE.error` when volumes failed (atomically: a temporary name renamed into
    /// place) and turns the failures into the run's result: exit 2, naming them.
    pub fn finish(&self, failures: &Failures) -> Result<()> {
        self.finish_with(failures, &[])
    }

    /// [`Self::finish`], with the volumes each failed destination of a send did not get: they
    /// count as failed, and `FILE.error` lists them by destination under `outstanding`.
    pub fn finish_with(
        &self,
        failures: &Failures,
        outstanding: &[(String, Vec<String>)],
    ) -> Result<()> {
        if failures.is_empty() && outstanding.is_empty() {
            return Ok(());
        }
        let mut names = failures.names();
        names.extend(outstanding.iter().flat_map(|(_, v)| v.iter().cloned()));
        names.sort();
        names.dedup();
        let mut body = serde_json::json!({ "rc": 2, "volumes": names });
        if !outstanding.is_empty() {
            body["outstanding"] = outstanding
                .iter()
                .map(|(url, v)| (url.clone(), serde_json::json!(v)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        let path = self.error_path();
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, format!("{body}\n"))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::local(&path, format!("cannot write the error file: {e}")))?;
        Err(Error::Selection(format!(
            "Error on volumes: {} (listed in {})",
            names.join(", "),
            path.display()
        )))
    }
}

/// Parses the file's JSON (see the module docs).
pub fn parse(text: &str) -> std::result::Result<Vec<StorageSet>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let obj = v
        .as_object()
        .ok_or("the top level must be an object keyed by local storage")?;
    let mut sets = Vec::new();
    let mut names = HashSet::new();
    for (key, list) in obj {
        let local = match key.as_str() {
            "" | "null" => None,
            k => Some(PathBuf::from(k)),
        };
        let list = list
            .as_array()
            .ok_or_else(|| format!("the value of \"{key}\" must be a list of [name, alias]"))?;
        if list.is_empty() {
            tracing::warn!("--vols-from: no volumes listed for \"{key}\"");
        }
        let mut locals = HashSet::new();
        let mut volumes = Vec::new();
        for item in list {
            let bad = || format!("\"{key}\": {item} is not [name, alias] or \"name\"");
            let (name, alias) = match item {
                serde_json::Value::String(n) => (n.clone(), None),
                serde_json::Value::Array(a) if (1..=2).contains(&a.len()) => {
                    let name = a[0].as_str().ok_or_else(bad)?.to_string();
                    let alias = match a.get(1) {
                        None | Some(serde_json::Value::Null) => None,
                        Some(serde_json::Value::String(s)) if s.is_empty() || *s == name => None,
                        Some(serde_json::Value::String(s)) => Some(s.clone()),
                        Some(_) => return Err(bad()),
                    };
                    (name, alias)
                }
                _ => return Err(bad()),
            };
            crate::format::ids::check_volume_name(&name).map_err(|e| e.to_string())?;
            if let Some(a) = &alias {
                crate::format::ids::check_volume_name(a).map_err(|e| e.to_string())?;
            }
            if !names.insert(name.clone()) {
                return Err(format!("volume '{name}' is listed twice"));
            }
            let entry = Entry { name, alias };
            if !locals.insert(entry.local_name().to_string()) {
                return Err(format!(
                    "\"{key}\": two volumes have the local name '{}'",
                    entry.local_name()
                ));
            }
            volumes.push(entry);
        }
        sets.push(StorageSet { local, volumes });
    }
    if sets.iter().all(|s| s.volumes.is_empty()) {
        return Err("it names no volumes".into());
    }
    Ok(sets)
}

/// Opens a set's storage, or fails all its volumes.
fn open_store(
    set: &StorageSet,
    storage: &LocalOptions,
    command: &str,
    failures: &mut Failures,
) -> Option<LocalStorage> {
    let Some(local) = &set.local else {
        for e in &set.volumes {
            failures.add(
                &e.name,
                format!("{command} needs a local storage: list the volume under its directory or vg/pool, not \"null\""),
            );
        }
        return None;
    };
    match LocalStorage::open(local, storage) {
        Ok(s) => Some(s),
        Err(err) => {
            for e in &set.volumes {
                failures.add(&e.name, &err);
            }
            None
        }
    }
}

/// `send --vols-from`: one session name for every storage; see the module docs for aliases.
/// `opts.local` and `opts.session` are set here for each storage in turn, and each storage's
/// volumes are sent to `dests` in one run ([`ops::send::Destinations::send`]).
pub fn send(
    dests: &mut ops::send::Destinations,
    vf: &VolsFrom,
    opts: &mut ops::send::SendOptions,
    failures: &mut Failures,
) -> Result<()> {
    let mut runs = Vec::new();
    for set in &vf.sets {
        let Some(store) = open_store(set, &vf.storage, "send", failures) else {
            continue;
        };
        let reqs: Vec<ops::send::SendRequest> = set
            .volumes
            .iter()
            .filter_map(|e| request(dests, &store, e, opts.dry_run, failures))
            .collect();
        if !reqs.is_empty() {
            runs.push((store, reqs));
        }
    }
    if runs.is_empty() {
        return Ok(());
    }
    let all = runs
        .iter()
        .flat_map(|(_, r)| r.iter().map(|r| r.volume.as_str()));
    let archives: Vec<&Archive> = dests.archives().map(|wa| &**wa).collect();
    opts.session = Some(ops::send::session_name(&archives, all)?);
    for (store, reqs) in runs {
        opts.local = Some(store);
        let r = dests.send(&reqs, opts);
        opts.local = None;
        r?;
    }
    Ok(())
}

/// The request for entry `e` of a storage (`None`: it failed), renaming the archive's volume
/// to the alias first where that is free (not on a dry run).
fn request(
    dests: &mut ops::send::Destinations,
    store: &LocalStorage,
    e: &Entry,
    dry_run: bool,
    failures: &mut Failures,
) -> Option<ops::send::SendRequest> {
    let source = match store.volume_path(e.local_name()) {
        Ok(p) if p.exists() => p,
        Ok(p) => {
            failures.add(&e.name, format!("not found at {}", p.display()));
            return None;
        }
        Err(err) => {
            failures.add(&e.name, err);
            return None;
        }
    };
    let mut volume = e.name.clone();
    if let Some(alias) = &e.alias {
        let mut use_alias = true;
        for archive in dests.archives_mut() {
            let renamable = archive.volume(&e.name).is_some() && archive.volume(alias).is_none();
            if renamable && !dry_run {
                let desc = archive.volume(&e.name).map(|v| v.volinfo.desc.clone());
                if let Err(err) =
                    ops::volume::rename(archive, &e.name, alias, &desc.unwrap_or_default())
                {
                    failures.add(&e.name, format!("cannot rename it to '{alias}': {err}"));
                    return None;
                }
                tracing::warn!("{}: renamed to '{alias}' in {}", e.name, archive.url());
            }
            use_alias &= !(renamable && dry_run);
        }
        if use_alias {
            volume = alias.clone();
        }
    }
    Some(ops::send::SendRequest {
        volume,
        source,
        reflink: true,
    })
}

/// Resolves a set's entries against the archive, failing those it does not hold.
fn resolve_all(archive: &Archive, set: &StorageSet, failures: &mut Failures) -> Vec<VolumeRef> {
    let mut out = Vec::new();
    for e in &set.volumes {
        let v = e.resolve(archive);
        if archive.volume(&v.archive).is_none() {
            failures.add(&e.name, Error::VolumeNotFound(v.archive.clone()));
        } else {
            out.push(v);
        }
    }
    out
}

/// `monitor --vols-from`. Monitor never writes the archive, so a storage that fails (e.g. a
/// filesystem generation that kept moving) fails its volumes and the others go on.
pub fn monitor(
    archive: &Archive,
    vf: &VolsFrom,
    failures: &mut Failures,
) -> Vec<ops::monitor::MonitorReport> {
    let mut reports = Vec::new();
    for set in &vf.sets {
        let Some(store) = open_store(set, &vf.storage, "monitor", failures) else {
            continue;
        };
        let refs = resolve_all(archive, set, failures);
        if refs.is_empty() {
            continue;
        }
        match ops::monitor::run(archive, &store, &refs) {
            Ok(r) => reports.extend(r),
            Err(err) => {
                for v in &refs {
                    failures.add(&v.archive, &err);
                }
            }
        }
    }
    reports
}

/// `receive --vols-from`: each volume into its storage under its local name.
pub fn receive(
    archive: &Archive,
    vf: &VolsFrom,
    sel: &SessionSel,
    o: &ops::receive::ReceiveOptions,
    use_snapshot: ops::receive::SnapshotUse,
    failures: &mut Failures,
) -> Vec<ops::receive::ReadReport> {
    let mut reports = Vec::new();
    for set in &vf.sets {
        let Some(store) = open_store(set, &vf.storage, "receive", failures) else {
            continue;
        };
        let reflink = match store.reflink("receive --vols-from") {
            Ok(r) => r,
            Err(err) => {
                set.volumes.iter().for_each(|e| failures.add(&e.name, &err));
                continue;
            }
        };
        for v in resolve_all(archive, set, failures) {
            match ops::receive::receive_local(archive, &v, sel, reflink, o, use_snapshot) {
                Ok(r) => reports.push(r),
                Err(err) => failures.add(&v.archive, err),
            }
        }
    }
    reports
}

/// `verify --vols-from`: the storages do not matter, only the volume names.
pub fn verify(
    archive: &Archive,
    vf: &VolsFrom,
    sel: &SessionSel,
    failures: &mut Failures,
) -> Vec<ops::receive::ReadReport> {
    let mut reports = Vec::new();
    for set in &vf.sets {
        for v in resolve_all(archive, set, failures) {
            match ops::verify::verify(archive, &v.archive, sel) {
                Ok(r) => reports.push(r),
                Err(err) => failures.add(&v.archive, err),
            }
        }
    }
    reports
}

/// `diff --vols-from`: a volume that differs from its newest session is a volume error, as a
/// single `diff` exits 2 for it.
pub fn diff(
    archive: &Archive,
    vf: &VolsFrom,
    quick: bool,
    failures: &mut Failures,
) -> Vec<ops::diff::DiffReport> {
    let mut reports = Vec::new();
    for set in &vf.sets {
        let Some(store) = open_store(set, &vf.storage, "diff", failures) else {
            continue;
        };
        for v in resolve_all(archive, set, failures) {
            let r = ops::diff::diff_source(archive, &v, &store).and_then(|path| {
                ops::diff::diff(archive, &v.archive, &SessionSel::Newest, &path, quick)
            });
            match r {
                Ok(r) => {
                    if let Some(off) = r.first_difference {
                        failures.add(
                            &v.archive,
                            format!(
                                "differs from session {} (first difference at byte {off})",
                                &r.session[2..]
                            ),
                        );
                    }
                    reports.push(r);
                }
                Err(err) => failures.add(&v.archive, err),
            }
        }
    }
    reports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_original_shape() {
        let sets = parse(
            r#"{"/var/lib/images": [["web.img", null], ["db.img", "db-new.img"], "x.img"],
                "null": [["other", null]], "vg0/pool0": []}"#,
        )
        .unwrap();
        assert_eq!(sets.len(), 3);
        assert_eq!(sets[0].local.as_deref(), Some(Path::new("/var/lib/images")));
        assert_eq!(
            sets[0].volumes,
            [
                Entry {
                    name: "web.img".into(),
                    alias: None
                },
                Entry {
                    name: "db.img".into(),
                    alias: Some("db-new.img".into())
                },
                Entry {
                    name: "x.img".into(),
                    alias: None
                },
            ]
        );
        assert_eq!(sets[0].volumes[1].local_name(), "db-new.img");
        assert_eq!(sets[1].local, None);
        assert!(sets[2].volumes.is_empty());
    }

    #[test]
    fn refuses_bad_files() {
        for (text, why) in [
            ("[]", "top level"),
            ("{\"/a\": {}}", "must be a list"),
            ("{\"/a\": [[1, null]]}", "is not [name, alias]"),
            ("{\"/a\": [[\"v\", 3]]}", "is not [name, alias]"),
            ("{\"/a\": [[\"v\"]], \"/b\": [\"v\"]}", "listed twice"),
            (
                "{\"/a\": [[\"v\", \"w\"], [\"w\", null]]}",
                "local name 'w'",
            ),
            ("{\"/a\": []}", "no volumes"),
            ("{\"/a\": [\"../etc\"]}", ""),
            ("{\"/a\": [", ""),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn error_file_lists_sorted_names_and_exits_2() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vols.json");
        std::fs::write(&file, r#"{"/x": ["b", "a", "c"]}"#).unwrap();
        std::fs::write(dir.path().join("vols.json.error"), "stale").unwrap();
        let vf = VolsFrom::load(&file, &LocalOptions::default()).unwrap();
        assert!(!vf.error_path().exists(), "a stale error file is removed");
        assert!(vf.finish(&Failures::default()).is_ok());
        assert!(!vf.error_path().exists());
        let mut f = Failures::default();
        f.add("c", "gone");
        f.add("a", "gone");
        f.add("c", "again");
        let e = vf.finish(&f).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(vf.error_path()).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"rc": 2, "volumes": ["a", "c"]}));
    }
}
