//! The volume commands `add`, `rename` and `delete`.

use crate::archive::WriteArchive;
use crate::error::{Error, Result};
use crate::format::VolumeId;

/// `add VOL`: a volume with no sessions yet.
pub fn add(wa: &mut WriteArchive, name: &str, desc: &str) -> Result<()> {
    wa.add_volume(name, desc)
}

/// `rename OLD NEW`, optionally setting the description (a rename without one clears it, as
/// the original does).
pub fn rename(wa: &mut WriteArchive, old: &str, new: &str, desc: &str) -> Result<()> {
    wa.rename_volume(old, new, desc)
}

/// Which volume `delete` removes: by name, or by id (`--vid`).
pub fn resolve(wa: &WriteArchive, name: Option<&str>, vid: Option<&str>) -> Result<VolumeId> {
    match (name, vid) {
        (Some(n), None) => Ok(wa.find(n)?.vid.clone()),
        (None, Some(v)) => wa
            .volumes()
            .iter()
            .find(|x| x.vid.as_str() == v)
            .map(|x| x.vid.clone())
            .ok_or_else(|| {
                Error::Selection(format!(
                    "no volume has the id '{v}': `wyng list -v` shows the ids"
                ))
            }),
        _ => Err(Error::Usage(
            "name the volume to delete, or give --vid (or use --clean)".into(),
        )),
    }
}

/// `delete VOL`: removes a volume and all its sessions (journaled).
pub fn delete(wa: &mut WriteArchive, vid: &VolumeId) -> Result<()> {
    wa.delete_volume(vid)
}
