//! What each destination of a send still misses: `<meta-dir>/outstanding.json`.
//!
//! A send to several archives records, per destination URL, the volumes a failed destination
//! did not get (and why); a later send that brings a volume to that destination removes it
//! again. `list --outstanding` shows the record. The record is bookkeeping only: what a
//! destination needs to catch up is its own pairing (the `.wyng1` baseline named after its
//! archive, which sends to other archives never touch), so a catch-up send is incremental.
//!
//! Updates are read-modify-write under an exclusive lock on the file's directory entry
//! (`outstanding.lock`), written to a temporary file and renamed, so concurrent sends to
//! different destinations never lose each other's entries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One destination's missing volumes.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Missing {
    /// Volume name → when it was first missed (the session name of that send).
    pub volumes: BTreeMap<String, String>,
    /// Why the last send to this destination failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Destination URL → what it misses.
pub(crate) type Outstanding = BTreeMap<String, Missing>;

fn path(meta_dir: &Path) -> PathBuf {
    meta_dir.join("outstanding.json")
}

/// The record (empty if there is none). A damaged record is an error naming the file.
pub fn load(meta_dir: &Path) -> Result<Outstanding> {
    let p = path(meta_dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            Error::local(
                &p,
                format!("not a record of outstanding sends ({e}); remove it to start afresh"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Outstanding::new()),
        Err(e) => Err(Error::local_state(p, e)),
    }
}

/// What one send did at one destination.
pub struct Update<'a> {
    pub url: &'a str,
    /// Volumes that got a session (or had nothing to send): no longer missing.
    pub sent: Vec<String>,
    /// Volumes the destination did not get, and why.
    pub missed: Vec<String>,
    pub error: Option<String>,
}

/// Applies the updates of one send (its session name `when`) to the record.
pub fn update(meta_dir: &Path, when: &str, updates: &[Update]) -> Result<()> {
    if updates.iter().all(|u| u.missed.is_empty()) && !path(meta_dir).exists() {
        return Ok(()); // nothing was ever missed: no record to keep
    }
    std::fs::create_dir_all(meta_dir).map_err(|e| Error::local_state(meta_dir, e))?;
    let lock_path = meta_dir.join("outstanding.lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| Error::local_state(&lock_path, e))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::local_state(&lock_path, std::io::Error::from(e)))?;
    let mut rec = load(meta_dir)?;
    let before = rec.clone();
    for u in updates {
        let m = rec.entry(u.url.to_string()).or_default();
        for v in &u.sent {
            m.volumes.remove(v);
        }
        for v in &u.missed {
            m.volumes
                .entry(v.clone())
                .or_insert_with(|| when.to_string());
        }
        if let Some(e) = &u.error {
            m.error = e.clone();
        }
        if m.volumes.is_empty() {
            rec.remove(u.url);
        }
    }
    let p = path(meta_dir);
    if rec == before {
        return Ok(());
    }
    let text = serde_json::to_string_pretty(&rec).expect("serializable") + "\n";
    // What the next send relies on to catch up the destinations that missed volumes.
    crate::atomic_file::write(
        &p,
        text.as_bytes(),
        crate::atomic_file::Durability::FileAndDir,
    )
    .map_err(|e| Error::local_state(&p, e))
}

/// Forgets what destinations `urls` miss; returns those that had entries, with how many.
pub fn forget(meta_dir: &Path, urls: &[String]) -> Result<Vec<(String, usize)>> {
    let gone: Vec<(String, Vec<String>)> = load(meta_dir)?
        .into_iter()
        .filter(|(url, _)| urls.contains(url))
        .map(|(url, m)| (url, m.volumes.into_keys().collect()))
        .collect();
    let updates: Vec<Update> = gone
        .iter()
        .map(|(url, volumes)| Update {
            url,
            sent: volumes.clone(),
            missed: Vec::new(),
            error: None,
        })
        .collect();
    update(meta_dir, "", &updates)?;
    Ok(gone.into_iter().map(|(u, v)| (u, v.len())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_are_kept_until_sent() {
        let d = tempfile::tempdir().unwrap();
        let up = |url, sent: &[&str], missed: &[&str], err: Option<&str>| Update {
            url,
            sent: sent.iter().map(|s| s.to_string()).collect(),
            missed: missed.iter().map(|s| s.to_string()).collect(),
            error: err.map(str::to_string),
        };
        update(
            d.path(),
            "S_1",
            &[
                up("file:/a", &["x", "y"], &[], None),
                up("ssh://b/p", &[], &["x", "y"], Some("link down")),
            ],
        )
        .unwrap();
        let r = load(d.path()).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r["ssh://b/p"].volumes.len(), 2);
        assert_eq!(r["ssh://b/p"].error, "link down");
        // Missed again later: the first miss's date stays.
        update(
            d.path(),
            "S_2",
            &[up("ssh://b/p", &["x"], &["y"], Some("full"))],
        )
        .unwrap();
        let r = load(d.path()).unwrap();
        assert_eq!(r["ssh://b/p"].volumes["y"], "S_1");
        assert!(!r["ssh://b/p"].volumes.contains_key("x"));
        update(d.path(), "S_3", &[up("ssh://b/p", &["y"], &[], None)]).unwrap();
        assert!(load(d.path()).unwrap().is_empty());
        // A destination given up for good is forgotten.
        update(
            d.path(),
            "S_4",
            &[up("ssh://gone/p", &[], &["x", "y"], Some("down"))],
        )
        .unwrap();
        let urls = ["ssh://gone/p".to_string(), "file:/other".to_string()];
        assert_eq!(
            forget(d.path(), &urls).unwrap(),
            vec![("ssh://gone/p".to_string(), 2)]
        );
        assert!(load(d.path()).unwrap().is_empty());
        std::fs::write(d.path().join("outstanding.json"), "{bad").unwrap();
        assert!(load(d.path()).is_err());
    }
}
