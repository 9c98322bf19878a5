//! `wyng diff`.

use std::path::PathBuf;

use clap::Args;

use wyng::ops;
use wyng::{Error, Result};

use super::{date, Global, SessionArgs};

pub const HELP: &str = "Examples:\n  wyng diff vms/disk.img --local=/var/lib/images --dest=...\n  wyng diff vm1.img --file=/dev/vg/vm1 --quick --dest=...\n\nExit status 0 if identical, 2 if they differ (the first differing offset is printed).";

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The volume to compare
    #[arg(required_unless_present = "vols_from")]
    pub volume: Option<String>,
    /// The directory holding the volume file
    #[arg(long, value_name = "DIR", conflicts_with = "file")]
    pub local: Option<PathBuf>,
    /// The volume's file or block device
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Compare hashes of recompressed local chunks with the manifest; read nothing from the archive
    #[arg(long)]
    pub quick: bool,
    #[command(flatten)]
    pub session: SessionArgs,
    /// Volumes and their local storages from a JSON file, e.g. {"/var/lib/images":
    /// [["web.img", null], ["db.img", "db-local.img"]]}; volumes that fail are listed in
    /// FILE.error and the run exits 2
    #[arg(long, value_name = "FILE", visible_alias = "local-from", conflicts_with_all = ["volume", "local", "file"])]
    pub vols_from: Option<PathBuf>,
}

fn identical(r: &ops::diff::DiffReport) -> String {
    format!("{}: identical to session {}.", r.volume, date(&r.session))
}

pub fn run(g: &Global, a: DiffArgs) -> Result<()> {
    if let Some(file) = &a.vols_from {
        return super::vols_from::run(
            g,
            file,
            || g.read(),
            |archive, vf, failures| Ok(ops::vols_from::diff(archive, vf, a.quick, failures)),
            // Differences are volume errors, reported with the failures.
            |r| {
                r.first_difference
                    .is_none()
                    .then(|| identical(r))
                    .into_iter()
                    .collect()
            },
        );
    }
    let sel = a.session.sel()?;
    let volume = a.volume.clone().unwrap_or_default();
    let archive = g.read()?;
    let local = match (&a.local, &a.file) {
        (Some(dir), None) => {
            let store = wyng::source::LocalStorage::open(dir)?;
            ops::diff::diff_source(&archive, &ops::VolumeRef::same(&volume), &store)?
        }
        (None, Some(f)) => f.clone(),
        _ => return Err(Error::Usage("diff needs --local=DIR or --file=PATH".into())),
    };
    let r = ops::diff::diff(&archive, &volume, &sel, &local, a.quick)?;
    if g.json {
        g.json(&r)?;
    }
    match r.first_difference {
        None => {
            g.say(identical(&r));
            Ok(())
        }
        Some(off) => Err(Error::Selection(format!(
            "{}: differs from session {} (first difference at byte {off})",
            r.volume,
            date(&r.session)
        ))),
    }
}
