//! Building the view's tree from one state of the archive.
//!
//! Invariants: a node's id comes from its path key (`d:` directories, `s:`/`f:` sessions and
//! their files by volume id, `l:` links), so a path keeps its id across rebuilds; a directory
//! lists its children in the order they were added; a volume whose name is used twice or
//! clashes with another name in the tree is left out (one log line), never shown as another.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::SystemTime;

use super::{files, session_time, Node, NodeId, SessionNode, ViewOptions, ROOT};
use crate::archive::{Archive, Volume};

/// Builds the tree of one archive state. `id` hands out a stable id for a path.
pub(super) fn build(
    archive: &Archive,
    o: &ViewOptions,
    id: &mut dyn FnMut(&str) -> NodeId,
) -> HashMap<NodeId, Node> {
    let mut b = Builder {
        nodes: HashMap::new(),
        id,
    };
    b.nodes.insert(ROOT, dir(SystemTime::now()));
    for (vi, vol) in archive.volumes().iter().enumerate() {
        if o.volume.as_ref().is_some_and(|v| v != vol.name()) || vol.sessions.is_empty() {
            continue;
        }
        if archive.volume_index(vol.name()).is_none() {
            // Two volumes of one name (a hostile or hand-edited archive): neither is shown
            // rather than one passing for the other.
            tracing::warn!(
                "volume {} is not shown: its name '{}' is used by another volume too (rename or delete one by its id)",
                vol.vid,
                crate::archive::sanitized(vol.name())
            );
            continue;
        }
        let sessions: Vec<usize> = match &o.session {
            None => (0..vol.sessions.len()).collect(),
            Some(f) => match f(vol) {
                Some(i) => vec![i],
                None => continue,
            },
        };
        b.volume(vi, vol, &sessions, o.files);
    }
    b.nodes
}

fn dir(mtime: SystemTime) -> Node {
    Node::Dir {
        children: Vec::new(),
        mtime,
    }
}

fn link(target: String, mtime: SystemTime) -> Node {
    Node::Link {
        target: target.into(),
        mtime,
    }
}

struct Builder<'i> {
    nodes: HashMap<NodeId, Node>,
    id: &'i mut dyn FnMut(&str) -> NodeId,
}

impl Builder<'_> {
    /// Adds `node` (path key `key`) to directory `parent` as `name`.
    fn add(&mut self, parent: NodeId, name: &str, key: &str, node: Node) -> NodeId {
        let i = (self.id)(key);
        self.nodes.insert(i, node);
        if let Some(Node::Dir { children, .. }) = self.nodes.get_mut(&parent) {
            children.push((name.into(), i));
        }
        i
    }

    /// A volume's sessions `sessions` (indexes, oldest first), with its `latest` links and
    /// `by-tag` directory.
    fn volume(&mut self, vi: usize, vol: &Volume, sessions: &[usize], with_files: bool) {
        let newest = &vol.sessions[*sessions.last().expect("not empty")];
        let mtime = session_time(&newest.name);
        let Some((dir, path)) = self.volume_dir(vol.name(), mtime) else {
            tracing::warn!(
                "volume '{}' clashes with another name in the tree; not shown",
                crate::archive::sanitized(vol.name())
            );
            return;
        };
        let mut tags: Vec<(String, Vec<String>)> = Vec::new();
        for &si in sessions {
            let s = &vol.sessions[si];
            let file = format!("{}.img", s.name);
            let session = SessionNode {
                vi,
                si,
                volume: vol.name().to_string(),
                name: s.name.clone(),
                volsize: s.info.volsize,
                mtime: session_time(&s.name),
                image: OnceLock::new(),
            };
            let key = format!("s:{}/{}", vol.vid, s.name);
            self.add(dir, &file, &key, Node::Session(Box::new(session)));
            if with_files {
                let node = files::FilesNode::new(vi, si, session_time(&s.name));
                let key = format!("f:{}/{}", vol.vid, s.name);
                let name = format!("{}.files", s.name);
                self.add(dir, &name, &key, Node::Files(Box::new(node)));
            }
            for t in &s.info.tags {
                match tags.iter_mut().find(|(id, _)| *id == t.id) {
                    Some((_, files)) => files.push(file.clone()),
                    None => tags.push((t.id.clone(), vec![file.clone()])),
                }
            }
        }
        let target = format!("{}.img", newest.name);
        let key = format!("l:{path}/latest.img");
        self.add(dir, "latest.img", &key, link(target, mtime));
        if with_files {
            let target = format!("{}.files", newest.name);
            let key = format!("l:{path}/latest.files");
            self.add(dir, "latest.files", &key, link(target, mtime));
        }
        if !tags.is_empty() {
            self.by_tag(dir, &path, tags, mtime);
        }
    }

    /// The volume's directory, nested for names with slashes, and its path; `None` when a
    /// component is already something other than a directory.
    fn volume_dir(&mut self, name: &str, mtime: SystemTime) -> Option<(NodeId, String)> {
        let mut dir = ROOT;
        let mut path = String::new();
        for comp in name.split('/').filter(|c| !c.is_empty()) {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(comp);
            let existing = match self.nodes.get(&dir) {
                Some(Node::Dir { children, .. }) => {
                    children.iter().find(|(n, _)| n == comp).map(|(_, i)| *i)
                }
                _ => None,
            };
            dir = match existing {
                Some(i) if matches!(self.nodes.get(&i), Some(Node::Dir { .. })) => i,
                Some(_) => return None,
                None => self.add(dir, comp, &format!("d:{path}"), self::dir(mtime)),
            };
        }
        Some((dir, path))
    }

    /// `by-tag/<tag>/S_….img`, links to the sessions carrying each tag.
    fn by_tag(
        &mut self,
        dir: NodeId,
        path: &str,
        tags: Vec<(String, Vec<String>)>,
        mtime: SystemTime,
    ) {
        let by_tag = self.add(dir, "by-tag", &format!("d:{path}/by-tag"), self::dir(mtime));
        for (tag, files) in tags {
            let key = format!("d:{path}/by-tag/{tag}");
            let tdir = self.add(by_tag, &tag, &key, self::dir(mtime));
            for f in files {
                let key = format!("l:{path}/by-tag/{tag}/{f}");
                self.add(tdir, &f, &key, link(format!("../../{f}"), mtime));
            }
        }
    }
}
