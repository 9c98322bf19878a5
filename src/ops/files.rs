//! `files ls/get/cat/find/diff`: the files inside a volume's sessions, read in userspace
//! ([`crate::guest`]) from session images of one [`LiveArchive`] (one verified, single-flight
//! chunk cache for every session a command opens, so what sessions share is decoded once).
//!
//! Invariants:
//! * Nothing here trusts the image: names go through [`GuestPath`] (refused, never joined, when
//!   unsafe), output is escaped by the binary, directory listings held in memory stay within
//!   [`MAX_HELD`] bytes whatever the tree, and depth within [`guest::MAX_DEPTH`].
//! * A damaged chunk or a damaged guest structure is an error for the path that met it; the
//!   walk goes on, and the command ends non-zero naming each one.
//! * `get` writes only inside its target directory ([`restore`]).

mod restore;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::archive::live::LiveArchive;
use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::format::SessionName;
use crate::guest::{self, partition::Partition, GuestFs, GuestPath, Image, Kind, Stat, Target};
use crate::ops::SessionSel;
use crate::view::files::open_image;

pub use restore::{get, GetOptions, GetReport};

/// Bytes of directory listings a walk holds at once (names and stats of every directory on
/// the path being walked).
pub(crate) const MAX_HELD: u64 = 128 << 20;
/// Bytes one entry costs in a held listing besides its name.
const ENTRY_COST: u64 = 96;

/// One archive opened for browsing files: its sessions read through one cache.
pub struct Files {
    live: Arc<LiveArchive>,
}

/// A session of a volume opened as an image.
pub struct OpenSession {
    pub volume: String,
    pub session: SessionName,
    pub image: Image,
    /// Where a restore's progress goes (the archive's).
    progress: crate::progress::Reporting,
}

impl Files {
    /// Keeps `archive` open with `cache_bytes` of decoded chunks.
    pub fn new(archive: Archive, cache_bytes: u64) -> Files {
        Files {
            live: LiveArchive::new(archive, cache_bytes, Duration::from_secs(3600)),
        }
    }

    fn volume(&self, vol: &str) -> Result<(usize, Vec<SessionName>)> {
        let a = self.live.current();
        let vi = a.find_index(vol)?;
        let names = a.volumes()[vi]
            .sessions
            .iter()
            .map(|s| s.name.clone())
            .collect();
        Ok((vi, names))
    }

    /// The session `sel` picks.
    pub fn select(&self, vol: &str, sel: &SessionSel) -> Result<usize> {
        let a = self.live.current();
        sel.select(a.find(vol)?)
    }

    /// Sessions `from..=to` (indexes, oldest first); `None` ends are the volume's first and
    /// last.
    pub fn range(
        &self,
        vol: &str,
        from: Option<&SessionSel>,
        to: Option<&SessionSel>,
    ) -> Result<Vec<usize>> {
        let a = self.live.current();
        let v = a.find(vol)?;
        if v.sessions.is_empty() {
            return SessionSel::Newest.select(v).map(|_| Vec::new());
        }
        let lo = from.map(|s| s.select(v)).transpose()?.unwrap_or(0);
        let hi = to
            .map(|s| s.select(v))
            .transpose()?
            .unwrap_or(v.sessions.len() - 1);
        let (lo, hi) = (lo.min(hi), lo.max(hi));
        Ok((lo..=hi).collect())
    }

    /// Opens session `si` of `vol` as an image (its partition table read).
    pub fn open(&self, vol: &str, si: usize) -> Result<OpenSession> {
        let (vi, names) = self.volume(vol)?;
        let image = self.live.image(vi, si)?;
        Ok(OpenSession {
            volume: vol.to_string(),
            session: names[si].clone(),
            image: open_image(image)?,
            progress: self.live.current().reporting().clone(),
        })
    }
}

/// One line of `files ls`.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum Listed {
    /// A partition (`/` of an image with a partition table).
    Part(PartInfo),
    Entry(EntryInfo),
}

#[derive(Debug, serde::Serialize)]
pub struct PartInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub label: String,
    pub start: u64,
    pub size: u64,
    pub filesystem: String,
}

#[derive(Debug, serde::Serialize)]
pub struct EntryInfo {
    /// The full path as `files` takes it (bytes; the binary escapes it).
    #[serde(skip)]
    pub path: Vec<u8>,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_ns: u32,
    #[serde(skip)]
    pub target: Option<Vec<u8>>,
}

/// A path that could not be read, and why (reported by every command, which ends non-zero).
#[derive(Debug)]
pub struct Problem {
    pub path: String,
    pub error: Error,
}

impl PartInfo {
    fn of(p: &Partition) -> PartInfo {
        PartInfo {
            name: p.label(),
            type_name: p.type_name.clone(),
            label: p.name.clone(),
            start: p.start,
            size: p.len,
            filesystem: p.content.name().to_string(),
        }
    }
}

fn entry_info(path: Vec<u8>, st: &Stat, target: Option<Vec<u8>>) -> EntryInfo {
    EntryInfo {
        path,
        kind: st.kind,
        mode: st.perm,
        uid: st.uid,
        gid: st.gid,
        size: st.size,
        mtime: st.mtime.0,
        mtime_ns: st.mtime.1,
        target,
    }
}

/// A user path: the partition's prefix and the path inside it.
pub(crate) fn user_path(prefix: &str, p: &GuestPath) -> Vec<u8> {
    let mut out = prefix.as_bytes().to_vec();
    if p.is_root() && !prefix.is_empty() {
        return out;
    }
    out.extend_from_slice(&p.to_bytes());
    out
}

/// Bytes held by the listings of one walk (shared by its clones).
#[derive(Clone, Default)]
pub(crate) struct Held(std::rc::Rc<std::cell::Cell<u64>>);

/// A directory's entries, sorted by name, counted against `held` while alive.
pub(crate) struct Listing<'h> {
    pub entries: Vec<guest::Entry>,
    held: &'h Held,
    bytes: u64,
}

impl Drop for Listing<'_> {
    fn drop(&mut self) {
        self.held.0.set(self.held.0.get() - self.bytes);
    }
}

/// Lists `p` sorted by name, within the walk's memory bound.
pub(crate) fn sorted<'h>(fs: &dyn GuestFs, p: &GuestPath, held: &'h Held) -> Result<Listing<'h>> {
    let mut l = Listing {
        entries: Vec::new(),
        held,
        bytes: 0,
    };
    fs.list(p, &mut |e| {
        let cost = e.name.len() as u64 + ENTRY_COST;
        if held.0.get() + cost > MAX_HELD {
            return Err(Error::Guest {
                path: p.display(),
                what: format!(
                    "the directories being walked hold more than {} MiB of names: too large to list in order (damaged, or list a deeper path)",
                    MAX_HELD >> 20
                ),
            });
        }
        held.0.set(held.0.get() + cost);
        l.bytes += cost;
        l.entries.push(e);
        Ok(true)
    })?;
    l.entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(l)
}

/// What to do after visiting an entry.
#[derive(PartialEq, Eq)]
pub(crate) enum Visit {
    /// Go into it (if it is a directory).
    Descend,
    Skip,
}

/// Walks the tree under `root` in name order (pre-order), giving `visit` each entry's path and
/// stat; an entry whose name is unsafe goes to `problem` with its escaped name, as does a
/// directory or inode that cannot be read.
pub(crate) fn walk(
    fs: &dyn GuestFs,
    root: &GuestPath,
    held: &Held,
    visit: &mut dyn FnMut(&GuestPath, &Stat) -> Result<Visit>,
    problem: &mut dyn FnMut(String, Error),
) -> Result<()> {
    let listing = match sorted(fs, root, held) {
        Ok(l) => l,
        Err(e) => {
            problem(root.display(), e);
            return Ok(());
        }
    };
    for e in &listing.entries {
        let path = match root.join(&e.name) {
            Ok(p) => p,
            Err(why) => {
                let shown = format!(
                    "{}/{}",
                    root.display().trim_end_matches('/'),
                    guest::escape(&e.name)
                );
                problem(
                    shown.clone(),
                    Error::Guest {
                        path: shown,
                        what: format!("{why}: left out"),
                    },
                );
                continue;
            }
        };
        let st = match &e.stat {
            Ok(st) => st,
            Err(err) => {
                problem(
                    path.display(),
                    Error::Guest {
                        path: path.display(),
                        what: err.to_string(),
                    },
                );
                continue;
            }
        };
        if visit(&path, st)? == Visit::Descend && st.kind == Kind::Dir {
            walk(fs, &path, held, visit, problem)?;
        }
    }
    Ok(())
}

pub struct LsOptions {
    pub long: bool,
    pub recursive: bool,
}

/// `files ls`: the entries at `path` (a directory's, or the one entry a file is), each to
/// `out`; returns the paths that could not be read.
pub fn ls(
    s: &OpenSession,
    path: &[u8],
    o: &LsOptions,
    out: &mut dyn FnMut(Listed) -> Result<()>,
) -> Result<Vec<Problem>> {
    let image = &s.image;
    let mut problems = Vec::new();
    let (part, path) = match image.resolve(path)? {
        Target::Partitions => {
            for p in image.layout().parts() {
                out(Listed::Part(PartInfo::of(p)))?;
            }
            if !o.recursive {
                return Ok(problems);
            }
            for (i, p) in image.layout().parts().iter().enumerate() {
                if let guest::probe::Content::Fs(_) = p.content {
                    ls_tree(image, Some(i), &GuestPath::root(), o, out, &mut problems)?;
                }
            }
            return Ok(problems);
        }
        Target::InFs { part, path } => (part, path),
    };
    ls_tree(image, part, &path, o, out, &mut problems)?;
    Ok(problems)
}

fn ls_tree(
    image: &Image,
    part: Option<usize>,
    path: &GuestPath,
    o: &LsOptions,
    out: &mut dyn FnMut(Listed) -> Result<()>,
    problems: &mut Vec<Problem>,
) -> Result<()> {
    let fs = image.filesystem(part)?;
    let prefix = image.prefix(part);
    let st = fs.stat(path)?;
    let link = |p: &GuestPath, st: &Stat| -> Option<Vec<u8>> {
        (o.long && st.kind == Kind::Symlink).then(|| fs.read_link(p).unwrap_or_default())
    };
    if st.kind != Kind::Dir {
        let t = link(path, &st);
        return out(Listed::Entry(entry_info(user_path(&prefix, path), &st, t)));
    }
    let held = Held::default();
    let mut emit = |p: &GuestPath, st: &Stat| -> Result<Visit> {
        out(Listed::Entry(entry_info(
            user_path(&prefix, p),
            st,
            link(p, st),
        )))?;
        Ok(if o.recursive {
            Visit::Descend
        } else {
            Visit::Skip
        })
    };
    walk(fs.as_ref(), path, &held, &mut emit, &mut |p, error| {
        problems.push(Problem {
            path: format!("{prefix}{p}"),
            error,
        })
    })
}

/// `files cat`: a regular file's bytes, in order, to `out`.
pub fn cat(s: &OpenSession, path: &[u8], out: &mut dyn std::io::Write) -> Result<u64> {
    let Target::InFs { part, path } = s.image.resolve(path)? else {
        return Err(Error::Usage(
            "/ lists partitions: name a file in one".into(),
        ));
    };
    let fs = s.image.filesystem(part)?;
    let st = fs.stat(&path)?;
    if st.kind == Kind::Dir {
        return Err(Error::Usage(format!(
            "{}{} is a directory (files ls lists it, files get restores it)",
            s.image.prefix(part),
            path.display()
        )));
    }
    if st.kind.is_special() {
        return Err(Error::Usage(format!(
            "{}{} is a device node, FIFO or socket",
            s.image.prefix(part),
            path.display()
        )));
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = fs.read_at(&path, off, &mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("standard output", e))?;
        off += n as u64;
    }
    Ok(off)
}

/// A file's content as a digest (BLAKE3), read in order.
fn digest(fs: &dyn GuestFs, p: &GuestPath) -> Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = fs.read_at(p, off, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(*h.finalize().as_bytes())
}

/// A pattern of `files find`: a glob on the full path when it holds a `/` (`*` stays within a
/// component, `**` spans them; one not starting with `/` may match at any depth), else on the
/// name alone.
pub struct Pattern {
    glob: glob::Pattern,
    full: bool,
}

impl Pattern {
    pub fn new(s: &str) -> Result<Pattern> {
        let full = s.contains('/');
        let text = if full && !s.starts_with('/') && !s.starts_with("**") {
            format!("/**/{s}")
        } else {
            s.to_string()
        };
        let glob =
            glob::Pattern::new(&text).map_err(|e| Error::Usage(format!("pattern '{s}': {e}")))?;
        Ok(Pattern { glob, full })
    }

    pub fn matches(&self, path: &[u8]) -> bool {
        let subject = if self.full {
            path
        } else {
            path.rsplit(|&b| b == b'/').next().unwrap_or(path)
        };
        let o = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        self.glob.matches_with(&String::from_utf8_lossy(subject), o)
    }
}

/// How a match compares with the same path's previous match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Since {
    /// No earlier session in the range had it.
    New,
    /// Its content (or type, or link target) differs.
    Changed,
    /// Same content; `metadata` says whether mode, owner or mtime changed.
    Same,
}

#[derive(Debug, serde::Serialize)]
pub struct Found {
    pub session: String,
    #[serde(flatten)]
    pub entry: EntryInfo,
    pub since: Since,
    /// Mode, owner or mtime differ from the previous match.
    pub metadata_changed: bool,
}

/// What a match was, to compare the next one with.
struct Seen {
    stat: Stat,
    /// A regular file's content digest, a symlink's target.
    content: Option<Vec<u8>>,
}

fn content_of(fs: &dyn GuestFs, p: &GuestPath, st: &Stat) -> Result<Option<Vec<u8>>> {
    Ok(match st.kind {
        Kind::File => Some(digest(fs, p)?.to_vec()),
        Kind::Symlink => Some(fs.read_link(p)?),
        _ => None,
    })
}

/// Most matches `find` remembers (one per path).
pub(crate) const MAX_MATCHES: usize = 1 << 20;

/// `files find`: every session of `sessions` in which a path matching `pattern` exists, in
/// session order, each compared with its previous match; returns what could not be read.
pub fn find(
    f: &Files,
    vol: &str,
    sessions: &[usize],
    pattern: &Pattern,
    out: &mut dyn FnMut(Found) -> Result<()>,
) -> Result<Vec<Problem>> {
    let mut seen: HashMap<Vec<u8>, Seen> = HashMap::new();
    let mut problems = Vec::new();
    for &si in sessions {
        let s = f.open(vol, si)?;
        let parts: Vec<Option<usize>> = if s.image.layout().is_table() {
            (0..s.image.layout().parts().len())
                .filter(|&i| {
                    matches!(
                        s.image.layout().parts()[i].content,
                        guest::probe::Content::Fs(_)
                    )
                })
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        for part in parts {
            let fs = match s.image.filesystem(part) {
                Ok(fs) => fs,
                Err(error) => {
                    problems.push(Problem {
                        path: format!("{} {}", s.session, s.image.prefix(part)),
                        error,
                    });
                    continue;
                }
            };
            let prefix = s.image.prefix(part);
            let held = Held::default();
            let fs = fs.as_ref();
            let mut visit = |p: &GuestPath, st: &Stat| -> Result<Visit> {
                let path = user_path(&prefix, p);
                if !pattern.matches(&path) {
                    return Ok(Visit::Descend);
                }
                let content = match content_of(fs, p, st) {
                    Ok(c) => c,
                    Err(error) => {
                        problems.push(Problem {
                            path: format!("{} {}", s.session, guest::escape(&path)),
                            error,
                        });
                        return Ok(Visit::Descend);
                    }
                };
                let (since, metadata_changed) = match seen.get(&path) {
                    None => (Since::New, false),
                    Some(prev) => (
                        if prev.stat.kind != st.kind || prev.content != content {
                            Since::Changed
                        } else {
                            Since::Same
                        },
                        (
                            prev.stat.perm,
                            prev.stat.uid,
                            prev.stat.gid,
                            prev.stat.mtime,
                        ) != (st.perm, st.uid, st.gid, st.mtime),
                    ),
                };
                let target =
                    (st.kind == Kind::Symlink).then(|| content.clone().unwrap_or_default());
                if seen.len() < MAX_MATCHES || seen.contains_key(&path) {
                    seen.insert(
                        path.clone(),
                        Seen {
                            stat: st.clone(),
                            content,
                        },
                    );
                }
                out(Found {
                    session: s.session.to_string(),
                    entry: entry_info(path, st, target),
                    since,
                    metadata_changed,
                })?;
                Ok(Visit::Descend)
            };
            let mut unread = Vec::new();
            walk(
                fs,
                &GuestPath::root(),
                &held,
                &mut visit,
                &mut |p, error| {
                    unread.push(Problem {
                        path: format!("{} {prefix}{p}", s.session),
                        error,
                    })
                },
            )?;
            problems.extend(unread);
        }
    }
    Ok(problems)
}

/// One difference between two sessions.
#[derive(Debug, serde::Serialize)]
pub struct Difference {
    #[serde(skip)]
    pub path: Vec<u8>,
    pub change: Change,
    /// What differs, for a changed entry: type, size, content, target, mode, owner, mtime.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub what: Vec<&'static str>,
    #[serde(rename = "type")]
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

pub struct DiffOptions {
    /// Compare the content of regular files whose size is the same (else: type, size, link
    /// target, mode, owner and mtime).
    pub checksum: bool,
}

/// `files diff`: what was added, removed and changed from session `a` to `b` under `path`.
pub fn diff(
    a: &OpenSession,
    b: &OpenSession,
    path: &[u8],
    o: &DiffOptions,
    out: &mut dyn FnMut(Difference) -> Result<()>,
) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    let (ta, tb) = (a.image.resolve(path)?, b.image.resolve(path)?);
    let parts: Vec<(Option<usize>, Option<usize>, GuestPath)> = match (&ta, &tb) {
        (Target::InFs { part: pa, path }, Target::InFs { part: pb, .. }) => {
            vec![(*pa, *pb, path.clone())]
        }
        _ => {
            // Partitions, matched by their names.
            let (la, lb) = (a.image.layout().parts(), b.image.layout().parts());
            let mut v = Vec::new();
            for (i, p) in la.iter().enumerate() {
                match lb.iter().position(|q| q.label() == p.label()) {
                    Some(j) => v.push((Some(i), Some(j), GuestPath::root())),
                    None => out(part_change(p, Change::Removed))?,
                }
            }
            for p in lb {
                if !la.iter().any(|q| q.label() == p.label()) {
                    out(part_change(p, Change::Added))?;
                }
            }
            v
        }
    };
    for (pa, pb, path) in parts {
        let readable = |img: &Image, p: Option<usize>| match p {
            None => true,
            Some(i) => matches!(
                img.layout().parts()[i].content,
                guest::probe::Content::Fs(_)
            ),
        };
        if !readable(&a.image, pa) || !readable(&b.image, pb) {
            continue;
        }
        let (fa, fb) = match (a.image.filesystem(pa), b.image.filesystem(pb)) {
            (Ok(x), Ok(y)) => (x, y),
            (Err(error), _) | (_, Err(error)) => {
                problems.push(Problem {
                    path: a.image.prefix(pa),
                    error,
                });
                continue;
            }
        };
        let d = Differ {
            a: fa.as_ref(),
            b: fb.as_ref(),
            prefix: a.image.prefix(pa),
            checksum: o.checksum,
            held: Held::default(),
        };
        d.compare(&path, out, &mut problems)?;
    }
    Ok(problems)
}

fn entry_stat(e: Option<&guest::Entry>) -> Option<std::result::Result<&Stat, String>> {
    e.map(|e| e.stat.as_ref().map_err(|e| e.to_string()))
}

fn part_change(p: &Partition, change: Change) -> Difference {
    Difference {
        path: format!("/{}", p.label()).into_bytes(),
        change,
        what: Vec::new(),
        kind: Kind::Dir,
    }
}

struct Differ<'a> {
    a: &'a dyn GuestFs,
    b: &'a dyn GuestFs,
    prefix: String,
    checksum: bool,
    held: Held,
}

impl Differ<'_> {
    fn problem(&self, problems: &mut Vec<Problem>, p: &GuestPath, error: Error) {
        problems.push(Problem {
            path: format!("{}{}", self.prefix, p.display()),
            error,
        });
    }

    /// Compares the entry at `p` in both trees (it exists in both).
    fn compare(
        &self,
        p: &GuestPath,
        out: &mut dyn FnMut(Difference) -> Result<()>,
        problems: &mut Vec<Problem>,
    ) -> Result<()> {
        let (sa, sb) = match (self.a.stat(p), self.b.stat(p)) {
            (Ok(x), Ok(y)) => (x, y),
            (Err(Error::Selection(_)), Ok(y)) => {
                return self.whole(self.b, p, &y, Change::Added, out, problems)
            }
            (Ok(x), Err(Error::Selection(_))) => {
                return self.whole(self.a, p, &x, Change::Removed, out, problems)
            }
            (Err(e), _) | (_, Err(e)) => {
                self.problem(problems, p, e);
                return Ok(());
            }
        };
        self.compare_stats(p, &sa, &sb, out, problems)
    }

    fn compare_stats(
        &self,
        p: &GuestPath,
        sa: &Stat,
        sb: &Stat,
        out: &mut dyn FnMut(Difference) -> Result<()>,
        problems: &mut Vec<Problem>,
    ) -> Result<()> {
        let mut what = Vec::new();
        if sa.kind != sb.kind {
            what.push("type");
        } else {
            match sa.kind {
                Kind::File if sa.size != sb.size => what.push("size"),
                Kind::File if self.checksum => match (digest(self.a, p), digest(self.b, p)) {
                    (Ok(x), Ok(y)) if x != y => what.push("content"),
                    (Ok(_), Ok(_)) => {}
                    (Err(e), _) | (_, Err(e)) => self.problem(problems, p, e),
                },
                Kind::Symlink => match (self.a.read_link(p), self.b.read_link(p)) {
                    (Ok(x), Ok(y)) if x != y => what.push("target"),
                    (Ok(_), Ok(_)) => {}
                    (Err(e), _) | (_, Err(e)) => self.problem(problems, p, e),
                },
                _ => {}
            }
        }
        if sa.perm != sb.perm {
            what.push("mode");
        }
        if (sa.uid, sa.gid) != (sb.uid, sb.gid) {
            what.push("owner");
        }
        if sa.mtime != sb.mtime && !(sa.kind == Kind::Dir && sb.kind == Kind::Dir) {
            what.push("mtime");
        }
        if !what.is_empty() {
            out(Difference {
                path: user_path(&self.prefix, p),
                change: Change::Changed,
                what,
                kind: sb.kind,
            })?;
        }
        if sa.kind == Kind::Dir && sb.kind == Kind::Dir {
            self.children(p, out, problems)?;
        } else if sa.kind == Kind::Dir {
            self.under(self.a, p, Change::Removed, out, problems)?;
        } else if sb.kind == Kind::Dir {
            self.under(self.b, p, Change::Added, out, problems)?;
        }
        Ok(())
    }

    /// Compares two directories' entries, merged by name.
    fn children(
        &self,
        p: &GuestPath,
        out: &mut dyn FnMut(Difference) -> Result<()>,
        problems: &mut Vec<Problem>,
    ) -> Result<()> {
        let (la, lb) = match (sorted(self.a, p, &self.held), sorted(self.b, p, &self.held)) {
            (Ok(x), Ok(y)) => (x, y),
            (Err(e), _) | (_, Err(e)) => {
                self.problem(problems, p, e);
                return Ok(());
            }
        };
        let (mut i, mut j) = (0, 0);
        while i < la.entries.len() || j < lb.entries.len() {
            let order = match (la.entries.get(i), lb.entries.get(j)) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            let (name, ea, eb) = match order {
                std::cmp::Ordering::Less => {
                    i += 1;
                    (&la.entries[i - 1].name, Some(&la.entries[i - 1]), None)
                }
                std::cmp::Ordering::Greater => {
                    j += 1;
                    (&lb.entries[j - 1].name, None, Some(&lb.entries[j - 1]))
                }
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                    (
                        &la.entries[i - 1].name,
                        Some(&la.entries[i - 1]),
                        Some(&lb.entries[j - 1]),
                    )
                }
            };
            let child = match p.join(name) {
                Ok(c) => c,
                Err(why) => {
                    let shown = format!(
                        "{}/{}",
                        p.display().trim_end_matches('/'),
                        guest::escape(name)
                    );
                    self.problem(
                        problems,
                        p,
                        Error::Guest {
                            path: shown,
                            what: format!("{why}: left out"),
                        },
                    );
                    continue;
                }
            };
            match (entry_stat(ea), entry_stat(eb)) {
                (Some(Ok(x)), Some(Ok(y))) => {
                    let (x, y) = (x.clone(), y.clone());
                    self.compare_stats(&child, &x, &y, out, problems)?
                }
                (Some(Ok(x)), None) => {
                    let x = x.clone();
                    self.whole(self.a, &child, &x, Change::Removed, out, problems)?
                }
                (None, Some(Ok(y))) => {
                    let y = y.clone();
                    self.whole(self.b, &child, &y, Change::Added, out, problems)?
                }
                (Some(Err(e)), _) | (_, Some(Err(e))) => self.problem(
                    problems,
                    &child,
                    Error::Guest {
                        path: child.display(),
                        what: e,
                    },
                ),
                (None, None) => {}
            }
        }
        Ok(())
    }

    /// An entry only one side has, and everything under it.
    fn whole(
        &self,
        fs: &dyn GuestFs,
        p: &GuestPath,
        st: &Stat,
        change: Change,
        out: &mut dyn FnMut(Difference) -> Result<()>,
        problems: &mut Vec<Problem>,
    ) -> Result<()> {
        out(Difference {
            path: user_path(&self.prefix, p),
            change,
            what: Vec::new(),
            kind: st.kind,
        })?;
        if st.kind == Kind::Dir {
            self.under(fs, p, change, out, problems)?;
        }
        Ok(())
    }

    fn under(
        &self,
        fs: &dyn GuestFs,
        p: &GuestPath,
        change: Change,
        out: &mut dyn FnMut(Difference) -> Result<()>,
        problems: &mut Vec<Problem>,
    ) -> Result<()> {
        let prefix = &self.prefix;
        let mut found = Vec::new();
        walk(
            fs,
            p,
            &self.held,
            &mut |q, st| {
                out(Difference {
                    path: user_path(prefix, q),
                    change,
                    what: Vec::new(),
                    kind: st.kind,
                })?;
                Ok(Visit::Descend)
            },
            &mut |q, e| found.push((q, e)),
        )?;
        for (q, error) in found {
            problems.push(Problem {
                path: format!("{prefix}{q}"),
                error,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_or_full_paths() {
        let p = Pattern::new("*.conf").unwrap();
        assert!(p.matches(b"/etc/x.conf"));
        assert!(!p.matches(b"/etc.conf/x"));
        let p = Pattern::new("/etc/*").unwrap();
        assert!(p.matches(b"/etc/passwd"));
        assert!(!p.matches(b"/etc/ssh/sshd_config"));
        let p = Pattern::new("etc/passwd").unwrap();
        assert!(p.matches(b"/etc/passwd"));
        assert!(p.matches(b"/p1/etc/passwd"));
        let p = Pattern::new("/**/passwd").unwrap();
        assert!(p.matches(b"/p2/etc/passwd"));
    }
}
