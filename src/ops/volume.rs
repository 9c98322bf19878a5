//! The volume commands `add`, `rename` and `delete`.

use crate::archive::WriteArchive;
use crate::error::{Error, Result};
use crate::format::VolumeId;

/// `add VOL…`: volumes with no sessions yet. The whole request is checked before anything is
/// added (valid, distinct names that no volume has), so a bad name leaves the archive as it was.
pub fn add(wa: &mut WriteArchive, names: &[String], desc: &str) -> Result<()> {
    for (i, name) in names.iter().enumerate() {
        crate::format::ids::check_volume_name(name)?;
        if names[..i].contains(name) {
            return Err(Error::VolumeNamedTwice(crate::archive::sanitized(name)));
        }
        wa.name_is_free(name)?;
    }
    if wa.volumes().len() + names.len() > 1024 {
        return Err(Error::Usage(format!(
            "the archive holds {} volumes; {} more would pass the format's limit of 1024; nothing was added",
            wa.volumes().len(),
            names.len()
        )));
    }
    for name in names {
        wa.add_volume(name, desc)?;
    }
    Ok(())
}

/// `rename OLD NEW`, optionally setting the description (a rename without one clears it, as
/// the original does).
pub fn rename(wa: &mut WriteArchive, old: &str, new: &str, desc: &str) -> Result<()> {
    wa.rename_volume(old, new, desc)
}

/// Which volume `delete` removes: by name, or by id (`--vid`). A damaged volume (one whose
/// metadata cannot be loaded) can be deleted too, by its id or by the name it still shows; a
/// name two volumes share must be given as an id.
pub fn resolve(wa: &WriteArchive, name: Option<&str>, vid: Option<&str>) -> Result<VolumeId> {
    match (name, vid) {
        (Some(n), None) => match wa.find(n) {
            Ok(v) => Ok(v.vid.clone()),
            Err(e @ Error::Corrupt { .. }) => wa
                .damaged()
                .iter()
                .find(|d| d.name.as_deref() == Some(n))
                .map(|d| d.vid.clone())
                .ok_or(e),
            Err(e) => Err(e),
        },
        (None, Some(v)) => wa
            .volumes()
            .iter()
            .map(|x| &x.vid)
            .chain(wa.damaged().iter().map(|d| &d.vid))
            .find(|x| x.as_str() == v)
            .cloned()
            .ok_or_else(|| {
                Error::Selection(format!(
                    "no volume has the id '{}': `wyng list -v` shows the ids",
                    crate::archive::sanitized(v)
                ))
            }),
        _ => Err(Error::NothingToDelete),
    }
}

/// `delete VOL`: removes a volume and all its sessions (journaled).
pub fn delete(wa: &mut WriteArchive, vid: &VolumeId) -> Result<()> {
    wa.delete_volume(vid)
}
