//! An in-memory destination with fault injection, so that every step of a commit, a merge, a
//! delete and their recovery can be tested in-process.
//!
//! It keeps two trees: what a reader sees now, and what was durable at the last `sync`, plus
//! the log of changes since that sync. A *crash* can be scheduled at the N-th change (that
//! change and everything after it fail, as if the process died there); [`MemDest::after_crash`]
//! then gives the destination as a restarted machine finds it: the durable tree plus any
//! prefix of the unsynced changes (none = power loss, all = `kill -9`). Renames are atomic and
//! a directory rename moves its tree, as on a POSIX filesystem.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Capabilities, Dest, FileStat};
use crate::error::{Error, Result};

#[derive(Clone, Debug, Default)]
struct Tree {
    files: BTreeMap<String, (Arc<Vec<u8>>, u64)>,
    dirs: BTreeSet<String>,
    next_ino: u64,
}

/// A change to the tree, kept until the next sync so a crash can keep any prefix of them.
#[derive(Clone, Debug)]
enum Op {
    Write(String, Arc<Vec<u8>>),
    Rename(String, String),
    Link(String, String),
    Mkdir(String),
    Remove(String),
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(d, _)| d)
}

fn under(p: &str, dir: &str) -> bool {
    dir.is_empty() || p.len() > dir.len() && p.starts_with(dir) && p.as_bytes()[dir.len()] == b'/'
}

impl Tree {
    fn is_dir(&self, p: &str) -> bool {
        p.is_empty() || self.dirs.contains(p)
    }

    fn mkdirs(&mut self, p: &str) {
        let mut at = String::new();
        for c in p.split('/').filter(|c| !c.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(c);
            self.dirs.insert(at.clone());
        }
    }

    fn apply(&mut self, op: &Op) -> std::result::Result<(), String> {
        match op {
            Op::Write(p, data) => {
                if self.is_dir(p) {
                    return Err(format!("{p}: is a directory"));
                }
                self.mkdirs(parent(p));
                self.next_ino += 1;
                self.files.insert(p.clone(), (data.clone(), self.next_ino));
            }
            Op::Mkdir(p) => {
                if self.files.contains_key(p) {
                    return Err(format!("{p}: is a file"));
                }
                self.mkdirs(p);
            }
            Op::Link(from, to) => {
                let f = self
                    .files
                    .get(from)
                    .cloned()
                    .ok_or_else(|| format!("{from}: no such file"))?;
                if self.files.contains_key(to) || self.is_dir(to) {
                    return Err(format!("{to}: exists"));
                }
                if !self.is_dir(parent(to)) {
                    return Err(format!("{to}: no such directory"));
                }
                self.files.insert(to.clone(), f);
            }
            Op::Rename(from, to) => {
                if !self.is_dir(parent(to)) {
                    return Err(format!("{to}: no such directory"));
                }
                if let Some(f) = self.files.remove(from) {
                    if self.is_dir(to) {
                        self.files.insert(from.clone(), f);
                        return Err(format!("{to}: is a directory"));
                    }
                    self.files.insert(to.clone(), f);
                } else if self.dirs.contains(from) {
                    if self.files.contains_key(to) {
                        return Err(format!("{to}: not a directory"));
                    }
                    if self.dirs.contains(to) {
                        let busy = self.files.keys().any(|k| under(k, to))
                            || self.dirs.iter().any(|d| under(d, to));
                        if busy {
                            return Err(format!("{to}: directory not empty"));
                        }
                    }
                    if under(to, from) {
                        return Err(format!("{to}: inside {from}"));
                    }
                    let move_key = |k: &str| format!("{to}{}", &k[from.len()..]);
                    let files: Vec<String> = self
                        .files
                        .keys()
                        .filter(|k| under(k, from))
                        .cloned()
                        .collect();
                    for k in files {
                        let v = self.files.remove(&k).expect("listed");
                        self.files.insert(move_key(&k), v);
                    }
                    let dirs: Vec<String> = self
                        .dirs
                        .iter()
                        .filter(|d| under(d, from) || *d == from)
                        .cloned()
                        .collect();
                    for d in dirs {
                        self.dirs.remove(&d);
                        self.dirs.insert(move_key(&d));
                    }
                } else {
                    return Err(format!("{from}: no such file or directory"));
                }
            }
            Op::Remove(p) => {
                self.files.remove(p);
                if self.dirs.remove(p) || p.is_empty() {
                    self.files.retain(|k, _| !under(k, p));
                    self.dirs.retain(|d| !under(d, p));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct State {
    current: Tree,
    durable: Tree,
    /// Changes since the last sync.
    log: Vec<Op>,
    /// Changes and syncs made so far.
    steps: u64,
    crash_at: Option<u64>,
    crashed: bool,
    locked: bool,
    /// File bytes written (`Dest::bytes_written`).
    written: u64,
}

/// See the module docs. Clones share one destination (a test keeps a handle to the one an
/// archive was opened on).
#[derive(Clone)]
pub struct MemDest {
    url: String,
    state: Arc<Mutex<State>>,
    caps: Capabilities,
}

const CRASHED: &str = "simulated crash: the process died here";

impl MemDest {
    pub fn new(url: &str) -> MemDest {
        MemDest {
            url: url.to_string(),
            state: Arc::new(Mutex::new(State::default())),
            caps: Capabilities {
                atomic_rename: true,
                hard_links: true,
                process_lock: true,
            },
        }
    }

    #[cfg(test)]
    /// The same destination without atomic rename either (an object store: sessions are
    /// staged under their final names).
    pub(crate) fn like_object_storage(mut self) -> MemDest {
        self.caps.hard_links = false;
        self.caps.atomic_rename = false;
        self
    }

    /// Changes and syncs made so far (what [`crash_at`](Self::crash_at) counts).
    pub fn steps(&self) -> u64 {
        self.state.lock().steps
    }

    #[cfg(test)]
    /// The `n`-th change or sync from now (1 = the next one) fails, and so does every
    /// operation after it.
    pub(crate) fn crash_at(&self, n: u64) {
        let mut s = self.state.lock();
        s.crash_at = Some(s.steps + n);
    }

    #[cfg(test)]
    pub(crate) fn crashed(&self) -> bool {
        self.state.lock().crashed
    }

    #[cfg(test)]
    /// The destination as found after the crash (or now, if none happened): the durable state
    /// plus the first `keep` changes made since the last sync.
    pub(crate) fn after_crash(&self, keep: usize) -> MemDest {
        let s = self.state.lock();
        let mut t = s.durable.clone();
        for op in s.log.iter().take(keep) {
            let _ = t.apply(op);
        }
        MemDest {
            url: self.url.clone(),
            state: Arc::new(Mutex::new(State {
                current: t.clone(),
                durable: t,
                ..Default::default()
            })),
            caps: self.caps,
        }
    }

    #[cfg(test)]
    /// Changes made since the last sync (how many prefixes [`after_crash`](Self::after_crash)
    /// can keep).
    pub(crate) fn unsynced(&self) -> usize {
        self.state.lock().log.len()
    }

    /// Every file, with its content (for tests).
    pub fn files(&self) -> BTreeMap<String, Arc<Vec<u8>>> {
        let s = self.state.lock();
        s.current
            .files
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }

    /// Replaces a file's content outside any accounting (to damage an archive in tests).
    pub fn poke(&self, rel: &str, data: Vec<u8>) {
        let mut s = self.state.lock();
        let data = Arc::new(data);
        let _ = s.current.apply(&Op::Write(rel.into(), data.clone()));
        let _ = s.durable.apply(&Op::Write(rel.into(), data));
    }

    fn check(&self, s: &State) -> Result<()> {
        if s.crashed {
            return Err(self.fail(CRASHED.into()));
        }
        Ok(())
    }

    fn fail(&self, detail: String) -> Error {
        Error::DestUnavailable {
            url: self.url.clone(),
            detail,
        }
    }

    /// Counts a change or sync, crashing there if it is the scheduled one.
    fn step(&self, s: &mut State) -> Result<()> {
        self.check(s)?;
        s.steps += 1;
        if s.crash_at.is_some_and(|n| s.steps >= n) {
            s.crashed = true;
            return Err(self.fail(CRASHED.into()));
        }
        Ok(())
    }

    fn change(&self, op: Op) -> Result<()> {
        let mut s = self.state.lock();
        self.step(&mut s)?;
        s.current.apply(&op).map_err(|e| self.fail(e))?;
        s.log.push(op);
        Ok(())
    }

    fn read_state<T>(&self, f: impl FnOnce(&Tree) -> T) -> Result<T> {
        let s = self.state.lock();
        self.check(&s)?;
        Ok(f(&s.current))
    }
}

impl Dest for MemDest {
    fn url(&self) -> &str {
        &self.url
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn root_exists(&self) -> Result<bool> {
        self.read_state(|_| true)
    }

    fn create_root(&self) -> Result<()> {
        Ok(())
    }

    fn read(&self, rel: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let f = self.read_state(|t| t.files.get(rel).map(|(d, _)| d.clone()))?;
        match f {
            Some(d) if d.len() as u64 > max => Err(Error::corrupt(
                rel,
                format!("file is {} bytes, more than the {max} allowed", d.len()),
            )),
            Some(d) => Ok(Some(d.to_vec())),
            None => Ok(None),
        }
    }

    fn read_into(&self, rel: &str, max: u64, out: &mut dyn Write) -> Result<Option<u64>> {
        match self.read(rel, max)? {
            None => Ok(None),
            Some(d) => {
                out.write_all(&d)
                    .map_err(|e| Error::io("local spool for a download", e))?;
                Ok(Some(d.len() as u64))
            }
        }
    }

    fn write(&self, rel: &str, data: &[u8]) -> Result<()> {
        self.change(Op::Write(rel.into(), Arc::new(data.to_vec())))?;
        self.state.lock().written += data.len() as u64;
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.change(Op::Rename(from.into(), to.into()))
    }

    fn hard_link(&self, from: &str, to: &str) -> Result<()> {
        if !self.caps.hard_links {
            return Err(self.fail("hard links are not supported".into()));
        }
        self.change(Op::Link(from.into(), to.into()))
    }

    fn stat(&self, rel: &str) -> Result<Option<FileStat>> {
        self.read_state(|t| {
            t.files.get(rel).map(|(d, ino)| FileStat {
                size: d.len() as u64,
                id: (0, *ino),
            })
        })
    }

    fn mkdir_all(&self, rel: &str) -> Result<()> {
        self.change(Op::Mkdir(rel.into()))
    }

    fn remove_all(&self, rel: &str) -> Result<()> {
        if !self.read_state(|t| t.files.contains_key(rel) || t.dirs.contains(rel))? {
            return Ok(());
        }
        self.change(Op::Remove(rel.into()))
    }

    fn list(&self, rel: &str) -> Result<Vec<String>> {
        self.read_state(|t| {
            let child = |k: &String| -> Option<String> {
                if !under(k, rel) {
                    return None;
                }
                let rest = if rel.is_empty() {
                    &k[..]
                } else {
                    &k[rel.len() + 1..]
                };
                (!rest.contains('/')).then(|| rest.to_string())
            };
            let mut v: Vec<String> = t
                .files
                .keys()
                .filter_map(child)
                .chain(t.dirs.iter().filter_map(child))
                .collect();
            v.sort();
            v
        })
    }

    fn exists(&self, rel: &str) -> Result<bool> {
        self.read_state(|t| t.files.contains_key(rel) || t.is_dir(rel))
    }

    fn sync(&self) -> Result<()> {
        let mut s = self.state.lock();
        self.step(&mut s)?;
        s.durable = s.current.clone();
        s.log.clear();
        Ok(())
    }

    fn free_space(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    fn lock(&self, _exclusive: bool) -> Result<bool> {
        let mut s = self.state.lock();
        self.check(&s)?;
        s.locked = true;
        Ok(true)
    }

    fn unlock(&self) {
        self.state.lock().locked = false;
    }

    fn bytes_written(&self) -> u64 {
        self.state.lock().written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_like_tree_and_crashes() {
        let d = MemDest::new("mem:test");
        d.write("a/b/c", b"1").unwrap();
        d.mkdir_all("x").unwrap();
        d.rename("a/b", "x/b").unwrap();
        assert_eq!(d.read("x/b/c", 10).unwrap().unwrap(), b"1");
        assert_eq!(d.list("x").unwrap(), vec!["b"]);
        assert_eq!(d.list("").unwrap(), vec!["a", "x"]);
        d.hard_link("x/b/c", "x/l").unwrap();
        assert_eq!(d.stat("x/l").unwrap(), d.stat("x/b/c").unwrap());
        assert!(d.rename("x/b", "nowhere/b").is_err());
        d.sync().unwrap();
        d.write("x/new", b"2").unwrap();
        d.remove_all("x/b").unwrap();
        // Power loss: back to the sync; kill -9: everything.
        assert!(!d.after_crash(0).exists("x/new").unwrap());
        assert!(d.after_crash(0).exists("x/b/c").unwrap());
        assert!(!d.after_crash(2).exists("x/b/c").unwrap());
        d.crash_at(1);
        assert!(d.write("y", b"3").is_err());
        assert!(d.read("x/new", 10).is_err());
        assert!(d.crashed());
    }
}
