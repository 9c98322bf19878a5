//! Building the view's tree from one state of the archive.
//!
//! Invariants: a path always gets the same node id (the caller's `id` hands them out by a key
//! naming the path), so an open file or a kernel-cached entry stays valid across refreshes; a
//! volume whose name is ambiguous (used twice, or clashing with another volume's directory) is
//! left out with a warning, never shown as the other one.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::SystemTime;

use super::{files, session_time, Node, NodeId, SessionNode, ViewOptions, ROOT};
use crate::archive::{Archive, Volume};

/// Builds the tree of one archive state. `id` hands out a stable id for a path key.
pub(super) fn build(
    archive: &Archive,
    o: &ViewOptions,
    id: &mut dyn FnMut(&str) -> NodeId,
) -> HashMap<NodeId, Node> {
    let mut tree = TreeBuilder::new(id);
    for (vi, vol) in archive.volumes().iter().enumerate() {
        if let Some(sessions) = shown_sessions(archive, o, vol) {
            tree.volume(o, vi, vol, &sessions);
        }
    }
    tree.nodes
}

/// The sessions of `vol` the view shows (none: the volume is left out).
fn shown_sessions(archive: &Archive, o: &ViewOptions, vol: &Volume) -> Option<Vec<usize>> {
    if o.volume.as_ref().is_some_and(|v| v != vol.name()) || vol.sessions.is_empty() {
        return None;
    }
    if archive.volume_index(vol.name()).is_none() {
        // Two volumes of one name (a hostile or hand-edited archive): neither is shown
        // rather than one passing for the other.
        tracing::warn!(
            "volume {} is not shown: its name '{}' is used by another volume too (rename or delete one by its id)",
            vol.vid,
            crate::archive::sanitized(vol.name())
        );
        return None;
    }
    match &o.session {
        None => Some((0..vol.sessions.len()).collect()),
        Some(f) => f(vol).map(|i| vec![i]),
    }
}

struct TreeBuilder<'a> {
    nodes: HashMap<NodeId, Node>,
    id: &'a mut dyn FnMut(&str) -> NodeId,
}

impl<'a> TreeBuilder<'a> {
    fn new(id: &'a mut dyn FnMut(&str) -> NodeId) -> TreeBuilder<'a> {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node::Dir {
                children: Vec::new(),
                mtime: SystemTime::now(),
            },
        );
        TreeBuilder { nodes, id }
    }

    /// Adds `node` as `name` in `dir`, with the id of `key`.
    fn add(&mut self, dir: NodeId, name: &str, key: &str, node: Node) -> NodeId {
        let i = (self.id)(key);
        self.nodes.insert(i, node);
        if let Some(Node::Dir { children, .. }) = self.nodes.get_mut(&dir) {
            children.push((name.into(), i));
        }
        i
    }

    fn dir(&mut self, parent: NodeId, name: &str, key: &str, mtime: SystemTime) -> NodeId {
        let node = Node::Dir {
            children: Vec::new(),
            mtime,
        };
        self.add(parent, name, key, node)
    }

    fn link(&mut self, dir: NodeId, name: &str, key: &str, target: String, mtime: SystemTime) {
        let node = Node::Link {
            target: target.into(),
            mtime,
        };
        self.add(dir, name, key, node);
    }

    /// The directory of a volume, nested for names with slashes, and its path; `None` when a
    /// component is already something else than a directory.
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
                None => self.dir(dir, comp, &format!("d:{path}"), mtime),
            };
        }
        Some((dir, path))
    }

    /// A volume's directory: its sessions (and their files), `latest` and `by-tag/`.
    fn volume(&mut self, o: &ViewOptions, vi: usize, vol: &Volume, sessions: &[usize]) {
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
            let node = Node::Session(Box::new(SessionNode {
                vi,
                si,
                volume: vol.name().to_string(),
                name: s.name.clone(),
                volsize: s.info.volsize,
                mtime: session_time(&s.name),
                image: OnceLock::new(),
            }));
            self.add(dir, &file, &format!("s:{}/{}", vol.vid, s.name), node);
            if o.files {
                let node = Node::Files(Box::new(files::FilesNode::new(
                    vi,
                    si,
                    session_time(&s.name),
                )));
                let key = format!("f:{}/{}", vol.vid, s.name);
                self.add(dir, &format!("{}.files", s.name), &key, node);
            }
            for t in &s.info.tags {
                match tags.iter_mut().find(|(id, _)| *id == t.id) {
                    Some((_, files)) => files.push(file.clone()),
                    None => tags.push((t.id.clone(), vec![file.clone()])),
                }
            }
        }
        let key = format!("l:{path}/latest.img");
        self.link(
            dir,
            "latest.img",
            &key,
            format!("{}.img", newest.name),
            mtime,
        );
        if o.files {
            let key = format!("l:{path}/latest.files");
            let target = format!("{}.files", newest.name);
            self.link(dir, "latest.files", &key, target, mtime);
        }
        self.tags(dir, &path, tags, mtime);
    }

    /// `by-tag/<tag>/S_….img`, links to the sessions carrying each tag.
    fn tags(
        &mut self,
        dir: NodeId,
        path: &str,
        tags: Vec<(String, Vec<String>)>,
        mtime: SystemTime,
    ) {
        if tags.is_empty() {
            return;
        }
        let by_tag = self.dir(dir, "by-tag", &format!("d:{path}/by-tag"), mtime);
        for (tag, files) in tags {
            let tdir = self.dir(by_tag, &tag, &format!("d:{path}/by-tag/{tag}"), mtime);
            for f in files {
                let key = format!("l:{path}/by-tag/{tag}/{f}");
                self.link(tdir, &f, &key, format!("../../{f}"), mtime);
            }
        }
    }
}
