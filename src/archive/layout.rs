//! Every path of an archive on its destination (format §2), built from typed ids and nothing
//! else: a hostile archive cannot make us touch a path it names, because no path is ever
//! taken from archive content (merge-list paths are checked by `format::journal::ListPath`).

use crate::format::journal::ListPath;
use crate::format::{SessionName, VolumeId};

pub const ROOT: &str = "archive.ini";
pub(crate) const ROOT_TMP: &str = "archive.ini.tmp";
pub(crate) const ROOT_BAK: &str = "archive.ini.bak";
/// A root carrying a journal, before it replaces the root.
pub(crate) const ROOT_JOURNAL_TMP: &str = "archive.ini.journal.tmp";
pub(crate) const SALT: &str = "archive.salt";
pub(crate) const SALT_BAK: &str = "salt.bak";
/// The original's write probe, also the target of the hard-link probes.
pub(crate) const PROBE: &str = "archive.dat";
pub(crate) const LINK_PROBE: &str = ".hardlink";
pub(crate) const DEDUP_PROBE: &str = "dedup-probe.tmp";

/// Where a send stages its session before the commit renames it.
pub(crate) const STAGING: &str = "S-tmp";
/// Where a resumed send sets the interrupted send's staging aside (see `archive::resume`).
pub(crate) const ASIDE: &str = "S-resume";

/// A session's directory: a committed session, or the one being staged.
#[derive(Clone, Copy, Debug)]
pub enum Dir<'a> {
    Session(&'a SessionName),
    Staging,
    Aside,
}

impl Dir<'_> {
    fn name(&self) -> &str {
        match self {
            Dir::Session(s) => s.as_str(),
            Dir::Staging => STAGING,
            Dir::Aside => ASIDE,
        }
    }
}

pub fn volume(vid: &VolumeId) -> String {
    vid.to_string()
}

pub fn volinfo(vid: &VolumeId) -> String {
    format!("{vid}/volinfo")
}

pub(crate) fn volinfo_tmp(vid: &VolumeId) -> String {
    format!("{vid}/volinfo.tmp")
}

pub(crate) fn volinfo_bak(vid: &VolumeId) -> String {
    format!("{vid}/volinfo.bak")
}

pub fn sessions(vid: &VolumeId) -> String {
    format!("{vid}/sessions")
}

pub(crate) fn sessions_tmp(vid: &VolumeId) -> String {
    format!("{vid}/sessions.tmp")
}

pub fn dir(vid: &VolumeId, d: Dir) -> String {
    format!("{vid}/{}", d.name())
}

pub fn info(vid: &VolumeId, d: Dir) -> String {
    format!("{vid}/{}/info", d.name())
}

pub(crate) fn info_tmp(vid: &VolumeId, d: Dir) -> String {
    format!("{vid}/{}/info.tmp", d.name())
}

pub fn manifest(vid: &VolumeId, d: Dir) -> String {
    format!("{vid}/{}/manifest.z", d.name())
}

pub(crate) fn manifest_tmp(vid: &VolumeId, d: Dir) -> String {
    format!("{vid}/{}/manifest.z.tmp", d.name())
}

/// Chunk file for a byte address: `x%016x`, in subdir = its first 9 hex digits (§3.4).
pub fn chunk(vid: &VolumeId, d: Dir, addr: u64) -> String {
    chunk_under(&format!("{vid}/{}", d.name()), addr)
}

/// A chunk's file in session directory `dir` (a path relative to the archive).
pub(crate) fn chunk_under(dir: &str, addr: u64) -> String {
    format!("{dir}/{}/{}", chunk_subdir(addr), chunk_file(addr))
}

/// The name of a chunk's subdirectory in its session directory.
pub(crate) fn chunk_subdir(addr: u64) -> String {
    format!("{:09x}", addr >> 28)
}

/// The name of a chunk's file.
pub(crate) fn chunk_file(addr: u64) -> String {
    format!("x{addr:016x}")
}

pub(crate) fn merge_list(vid: &VolumeId) -> String {
    format!("{vid}/merge.lst.gz")
}

pub(crate) fn merge_init(vid: &VolumeId) -> String {
    format!("{vid}/merge-init")
}

pub fn merge(vid: &VolumeId) -> String {
    format!("{vid}/merge")
}

/// A session directory moved aside into `merge-init/`.
pub(crate) fn in_merge_init(vid: &VolumeId, s: &SessionName) -> String {
    format!("{vid}/merge-init/{s}")
}

/// A path of the merge list, inside `merge/`.
pub(crate) fn in_merge(vid: &VolumeId, p: &str) -> String {
    format!("{vid}/merge/{p}")
}

pub(crate) fn in_merge_list(vid: &VolumeId, p: &ListPath) -> String {
    in_merge(vid, p.as_str())
}

/// The marker that the move phase of a merge is complete.
pub(crate) fn merge_moved(vid: &VolumeId) -> String {
    format!("{vid}/merge/CHECK-mv-rm")
}

/// Where `arch-deduplicate` stages a link before renaming it over a duplicate.
pub(crate) fn dedup_tmp(vid: &VolumeId) -> String {
    format!("{vid}/dedup.tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_paths() {
        let v = VolumeId::parse("Vol_1").unwrap();
        assert_eq!(
            chunk(&v, Dir::Staging, 0x1b40000),
            "Vol_1/S-tmp/000000000/x0000000001b40000"
        );
        let s = SessionName::parse("S_20261123-153256").unwrap();
        assert_eq!(
            chunk(&v, Dir::Session(&s), 0x10000000),
            "Vol_1/S_20261123-153256/000000001/x0000000010000000"
        );
    }
}
