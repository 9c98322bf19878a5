//! `wyng delete` (a volume, or `--clean` of local snapshots).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use wyng::ops::{self, clean::Purge};
use wyng::{Error, Result};

use super::Global;

pub const HELP: &str = "Examples:\n  wyng delete old-vm.img -u --dest=file:/mnt/usb/laptop.backup\n  wyng delete --clean --local=/var/lib/images --dest=...\n  wyng delete --outstanding --dest=ssh://retired-host/srv/backup\n\nThe deletion is journaled: if it is interrupted, the next write command finishes it.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PurgeArg {
    Other,
    Full,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The volume to delete
    pub volume: Option<String>,
    /// Delete the volume with this id instead (as `wyng list -v` or arch-check name it), e.g.
    /// one whose name cannot be typed
    #[arg(long, value_name = "VID", conflicts_with_all = ["volume", "clean"])]
    pub vid: Option<String>,
    /// Also remove the volume's snapshots in this reflink directory; with --clean, the
    /// directory, LVM thin pool VG/POOL or zfs:POOL/DATASET to clean
    #[arg(long, value_name = "DIR")]
    pub local: Option<PathBuf>,
    /// Remove wyng's leftover snapshots in --local: those of volumes this archive no longer has
    #[arg(long)]
    pub clean: bool,
    /// With --clean: every wyng snapshot in --local (any archive) and this archive's delta maps
    #[arg(short, long, requires = "clean")]
    pub all: bool,
    /// With --clean: also remove other archives' snapshots (other), or all of this archive's
    /// (full; the next sends are full scans)
    #[arg(long, value_enum, value_name = "other|full", requires = "clean")]
    pub purge: Option<PurgeArg>,
    /// Forget what the --dest archive misses from earlier sends (`wyng list --outstanding`):
    /// for a destination given up for good. Only this host's record changes; the archive is
    /// not opened (its snapshots stay: `delete --clean --purge` drops them)
    #[arg(long, conflicts_with_all = ["volume", "vid", "clean", "local"])]
    pub outstanding: bool,
}

pub fn run(g: &Global, a: DeleteArgs) -> Result<()> {
    if a.outstanding {
        let urls = g.dests()?;
        let forgotten = ops::outstanding::forget(g.meta_dir(), &urls)?;
        for u in &urls {
            match forgotten.iter().find(|(f, _)| f == u) {
                Some((_, n)) => g.say(format!("{u}: forgot {n} outstanding volume(s).")),
                None => g.say(format!("{u}: nothing outstanding.")),
            }
        }
        return Ok(());
    }
    let mut wa = g.write()?;
    if a.clean {
        if a.volume.is_some() {
            return Err(Error::Usage("delete --clean takes no volume name".into()));
        }
        let local = a
            .local
            .as_deref()
            .ok_or_else(|| Error::Usage("delete --clean needs --local=DIR".into()))?;
        let purge = match (a.all, a.purge) {
            (true, _) => Purge::All,
            (false, None) => Purge::Orphans,
            (false, Some(PurgeArg::Other)) => Purge::Other,
            (false, Some(PurgeArg::Full)) => Purge::Full,
        };
        let block = local
            .to_str()
            .is_some_and(|s| s.starts_with("zfs:") || wyng::source::lvm_thin::ThinPool::is_spec(s));
        let store = block
            .then(|| wyng::source::LocalStorage::open(local, &g.local))
            .transpose()?;
        let found = match &store {
            Some(st) => ops::clean::select_block(&wa, st, purge)?,
            None => ops::clean::select(&wa, local, purge),
        };
        if (!found.is_empty() || purge == Purge::All) && g.unattended() && !g.force {
            // As the original: removing local snapshots unattended takes --force.
            return Err(Error::Usage(format!(
                "delete --clean would remove {} from {} without asking: add --force to do so unattended",
                super::count(found.len() as u64, "snapshot", "snapshots"),
                local.display()
            )));
        }
        if (!found.is_empty() || purge == Purge::All)
            && !g.confirm(&format!(
                "Remove {} from {}?",
                super::count(found.len() as u64, "wyng snapshot", "wyng snapshots"),
                local.display()
            ))?
        {
            g.say("Cancelled; nothing was removed.");
            return Ok(());
        }
        let removed = match &store {
            Some(st) => ops::clean::remove_block(&wa, st, &found, purge)?,
            None => ops::clean::remove(&wa, &found, purge)?,
        };
        if g.json {
            return g.json(&removed);
        }
        for p in &removed {
            g.say(format!("Removed {}", p.display()));
        }
        g.say(format!(
            "{} removed.",
            super::count(removed.len() as u64, "snapshot", "snapshots")
        ));
        return Ok(());
    }
    let vid = ops::volume::resolve(&wa, a.volume.as_deref(), a.vid.as_deref())?;
    let name = wa
        .volumes()
        .iter()
        .find(|v| v.vid == vid)
        .map(|v| v.name().to_string())
        .or_else(|| {
            wa.damaged()
                .iter()
                .find(|d| d.vid == vid)
                .map(|d| d.name.clone().unwrap_or_else(|| vid.to_string()))
        })
        .map(|n| wyng::archive::sanitized(&n))
        .unwrap_or_default();
    if wyng::format::ids::is_metadata_volume(&name) && !g.force {
        return Err(Error::Usage(format!(
            "'{name}' is a wyng-*metadata volume (another tool's metadata, e.g. Qubes'): deleting it needs --force"
        )));
    }
    if !g.confirm(&format!("Delete volume '{name}' and all its sessions?"))? {
        g.say("Cancelled; nothing was deleted.");
        return Ok(());
    }
    ops::volume::delete(&mut wa, &vid)?;
    if let Some(local) = &a.local {
        for p in ops::clean::remove_volume(&wa, local, vid.as_str())? {
            g.say(format!("Removed {}", p.display()));
        }
    }
    g.say(format!("Deleted volume '{name}'."));
    Ok(())
}
