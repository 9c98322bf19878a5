//! The transaction journal of archive.ini's `[in_process]` (format §7.3) and the merge list
//! `merge.lst` (§13.4), as typed values.
//!
//! Both the original and wyng finish each other's interrupted transactions, so these follow the
//! original's shapes exactly: `[in_process]` is a positional list (`0 = merge`, `1 = <vid>`,
//! `2 = True`, `3 = <target>`, `4 = <src>:|<src>…`; or `0 = delete`, `1 = <vid>`), and the merge
//! list is a header naming the session directories, `###`, then one `rename FROM TO` or
//! `-rm PATH` per line. Every path in it is checked to be relative and made only of the
//! characters the format uses, so a hostile list cannot name anything outside the volume.

use std::io::BufRead;

use crate::error::{Error, Result};
use crate::{SessionName, VolumeId};

/// A transaction recorded in `[in_process]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Journal {
    /// A prune: `sources` (oldest first) are merged into `target`.
    Merge {
        vid: VolumeId,
        target: SessionName,
        sources: Vec<SessionName>,
    },
    /// `delete` of a whole volume.
    Delete { vid: VolumeId },
}

fn bad(what: impl Into<String>) -> Error {
    Error::corrupt("archive.ini", format!("[in_process]: {}", what.into()))
}

impl Journal {
    /// The journal in `[in_process]` items, `None` when the section is empty.
    pub fn parse(items: &[(String, String)]) -> Result<Option<Journal>> {
        if items.is_empty() {
            return Ok(None);
        }
        let get = |i: usize| {
            items
                .iter()
                .find(|(k, _)| k.parse::<usize>().ok() == Some(i))
                .map(|(_, v)| v.as_str())
        };
        let vid = get(1)
            .and_then(VolumeId::parse)
            .ok_or_else(|| bad("no valid volume id in item 1"))?;
        match get(0) {
            Some("delete") => Ok(Some(Journal::Delete { vid })),
            Some("merge") => {
                let target = get(3)
                    .and_then(SessionName::parse)
                    .ok_or_else(|| bad("no valid target session in item 3"))?;
                let sources = get(4)
                    .unwrap_or("")
                    .split(":|")
                    .filter(|s| !s.is_empty())
                    .map(|s| SessionName::parse(s).ok_or_else(|| bad(format!("bad source '{s}'"))))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Some(Journal::Merge {
                    vid,
                    target,
                    sources,
                }))
            }
            Some(other) => Err(Error::Unsupported(format!(
                "an interrupted '{other}' transaction in archive.ini"
            ))),
            None => Err(bad("no transaction name in item 0")),
        }
    }

    pub fn to_items(&self) -> Vec<(String, String)> {
        let item = |i: usize, v: String| (i.to_string(), v);
        match self {
            Journal::Delete { vid } => vec![item(0, "delete".into()), item(1, vid.to_string())],
            Journal::Merge {
                vid,
                target,
                sources,
            } => vec![
                item(0, "merge".into()),
                item(1, vid.to_string()),
                item(2, "True".into()),
                item(3, target.to_string()),
                item(
                    4,
                    sources
                        .iter()
                        .map(SessionName::as_str)
                        .collect::<Vec<_>>()
                        .join(":|"),
                ),
            ],
        }
    }

    pub fn vid(&self) -> &VolumeId {
        match self {
            Journal::Merge { vid, .. } | Journal::Delete { vid } => vid,
        }
    }

    /// The command that started it, for messages.
    pub fn command(&self) -> &'static str {
        match self {
            Journal::Merge { .. } => "prune",
            Journal::Delete { .. } => "delete",
        }
    }
}

/// A path of the merge list, relative to the volume directory (`S_…/<9 hex>/x<16 hex>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPath(String);

impl ListPath {
    pub fn parse(p: &str) -> Option<ListPath> {
        let ok = !p.is_empty()
            && p.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        ok.then(|| ListPath(p.to_string()))
    }

    /// A chunk file of a session directory.
    pub fn chunk(session: &SessionName, addr: u64) -> ListPath {
        ListPath(format!("{session}/{:09x}/x{addr:016x}", addr >> 28))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The directory part (`S_…/<9 hex>`).
    pub fn dir(&self) -> Option<&str> {
        self.0.rsplit_once('/').map(|(d, _)| d)
    }
}

/// One step of the merge list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeOp {
    Rename { from: ListPath, to: ListPath },
    Remove(ListPath),
}

impl MergeOp {
    pub fn to_line(&self) -> String {
        match self {
            MergeOp::Rename { from, to } => format!("rename {} {}\n", from.0, to.0),
            MergeOp::Remove(p) => format!("-rm {}\n", p.0),
        }
    }

    fn parse(line: &str) -> Result<Option<MergeOp>> {
        let path = |p: &str| {
            ListPath::parse(p)
                .ok_or_else(|| Error::corrupt("merge.lst.gz", format!("bad path '{p}'")))
        };
        if let Some(rest) = line.strip_prefix("rename ") {
            let (from, to) = rest
                .split_once(' ')
                .ok_or_else(|| Error::corrupt("merge.lst.gz", "bad rename line"))?;
            return Ok(Some(MergeOp::Rename {
                from: path(from)?,
                to: path(to)?,
            }));
        }
        if let Some(p) = line.strip_prefix("-rm ") {
            return Ok(Some(MergeOp::Remove(path(p)?)));
        }
        // The original ignores lines it does not know; so do we (an empty last line, say).
        Ok(None)
    }
}

/// The head of a merge list: the oldest source (whose directory becomes the target's), the
/// target, and the other directories that take part (target, then sources newest first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeListHead {
    pub src0: SessionName,
    pub target: SessionName,
    pub others: Vec<SessionName>,
}

impl MergeListHead {
    pub fn to_text(&self) -> String {
        let mut s = format!("{} {}\n", self.src0, self.target);
        for d in &self.others {
            s.push_str(d.as_str());
            s.push('\n');
        }
        s.push_str("###\n");
        s
    }

    /// Every session directory the merge moves into `merge/`.
    pub fn dirs(&self) -> impl Iterator<Item = &SessionName> {
        std::iter::once(&self.src0).chain(&self.others)
    }
}

/// Reads a merge list from its decompressed text: the head, then [`MergeList::ops`].
pub struct MergeList<R> {
    pub head: MergeListHead,
    r: R,
    line: String,
}

/// Longest line of a merge list: `rename` + two chunk paths.
const MAX_LIST_LINE: u64 = 7 + 2 * (17 + 1 + 9 + 1 + 17) + 2;

fn read_line<R: BufRead>(r: &mut R, line: &mut String) -> Result<bool> {
    line.clear();
    let n = std::io::Read::take(&mut *r, MAX_LIST_LINE + 1)
        .read_line(line)
        .map_err(|e| Error::corrupt("merge.lst.gz", format!("cannot be read: {e}")))?;
    if n as u64 > MAX_LIST_LINE && !line.ends_with('\n') {
        return Err(Error::corrupt("merge.lst.gz", "line too long"));
    }
    if line.ends_with('\n') {
        line.pop();
    }
    Ok(n > 0)
}

impl<R: BufRead> MergeList<R> {
    pub fn read(mut r: R) -> Result<Self> {
        let mut line = String::new();
        let name = |s: &str| {
            SessionName::parse(s)
                .ok_or_else(|| Error::corrupt("merge.lst.gz", format!("bad session name '{s}'")))
        };
        if !read_line(&mut r, &mut line)? {
            return Err(Error::corrupt("merge.lst.gz", "empty"));
        }
        let (a, b) = line
            .split_once(' ')
            .ok_or_else(|| Error::corrupt("merge.lst.gz", "bad first line"))?;
        let (src0, target) = (name(a)?, name(b)?);
        let mut others = Vec::new();
        loop {
            if !read_line(&mut r, &mut line)? {
                return Err(Error::corrupt("merge.lst.gz", "no ### line"));
            }
            if line == "###" {
                break;
            }
            if others.len() > crate::volinfo::MAX_SESSIONS {
                return Err(Error::corrupt("merge.lst.gz", "too many sessions"));
            }
            others.push(name(&line)?);
        }
        Ok(MergeList {
            head: MergeListHead {
                src0,
                target,
                others,
            },
            r,
            line,
        })
    }

    /// The next step, `None` at the end.
    pub fn next_op(&mut self) -> Result<Option<MergeOp>> {
        loop {
            if !read_line(&mut self.r, &mut self.line)? {
                return Ok(None);
            }
            if let Some(op) = MergeOp::parse(&self.line)? {
                return Ok(Some(op));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: &str) -> SessionName {
        SessionName::parse(n).unwrap()
    }

    #[test]
    fn journal_roundtrip_in_the_originals_shape() {
        let j = Journal::Merge {
            vid: VolumeId::parse("Vol_3fa2c1").unwrap(),
            target: s("S_20250103-000000"),
            sources: vec![s("S_20250101-000000"), s("S_20250102-000000")],
        };
        let items = j.to_items();
        assert_eq!(items[2], ("2".into(), "True".into()));
        assert_eq!(
            items[4].1,
            "S_20250101-000000:|S_20250102-000000".to_string()
        );
        assert_eq!(Journal::parse(&items).unwrap(), Some(j));
        let d = Journal::Delete {
            vid: VolumeId::parse("Vol_1").unwrap(),
        };
        assert_eq!(Journal::parse(&d.to_items()).unwrap(), Some(d));
        assert_eq!(Journal::parse(&[]).unwrap(), None);
        assert!(Journal::parse(&[("0".into(), "merge".into())]).is_err());
        assert!(Journal::parse(&[("0".into(), "x".into()), ("1".into(), "Vol_1".into())]).is_err());
    }

    #[test]
    fn merge_list_roundtrip_and_hostile_paths() {
        let head = MergeListHead {
            src0: s("S_20250101-000000"),
            target: s("S_20250103-000000"),
            others: vec![s("S_20250103-000000"), s("S_20250102-000000")],
        };
        let mut text = head.to_text();
        let ops = [
            MergeOp::Rename {
                from: ListPath::chunk(&s("S_20250103-000000"), 0x10000),
                to: ListPath::chunk(&s("S_20250101-000000"), 0x10000),
            },
            MergeOp::Remove(ListPath::chunk(&s("S_20250101-000000"), 0x20000)),
        ];
        for op in &ops {
            text.push_str(&op.to_line());
        }
        let mut l = MergeList::read(text.as_bytes()).unwrap();
        assert_eq!(l.head, head);
        assert_eq!(l.next_op().unwrap(), Some(ops[0].clone()));
        assert_eq!(l.next_op().unwrap(), Some(ops[1].clone()));
        assert_eq!(l.next_op().unwrap(), None);
        for evil in [
            "-rm ../x\n",
            "-rm /etc/passwd\n",
            "rename a/../b c\n",
            "-rm a//b\n",
        ] {
            let t = format!("{}{evil}", head.to_text());
            let mut l = MergeList::read(t.as_bytes()).unwrap();
            assert!(l.next_op().is_err(), "{evil}");
        }
        assert!(MergeList::read(&b"S_20250101-000000 S_2025\n###\n"[..]).is_err());
        let long = format!("{}-rm {}\n", head.to_text(), "a".repeat(10_000));
        assert!(MergeList::read(long.as_bytes()).unwrap().next_op().is_err());
    }
}
