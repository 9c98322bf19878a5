//! `wyng diff`.

use std::path::PathBuf;

use clap::Args;

use wyng::ops;
use wyng::{Error, Result};

use super::{date, Global, SessionArgs};

pub const HELP: &str = "Examples:\n  wyng diff vms/disk.img --local=/var/lib/images --dest=...\n  wyng diff vm1.img --file=/dev/vg/vm1 --quick --dest=...\n  wyng diff -a --local=/var/lib/images --session=20261130-220000 --dest=...\n\nExit status 0 if identical, 2 if any differs (the first differing offset is printed).\n--session compares with that session instead of the newest.";

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The volumes to compare
    pub volumes: Vec<String>,
    /// Every volume of the archive (except --volex ones); needs --local
    #[arg(short, long, conflicts_with = "file")]
    pub all: bool,
    /// The directory holding the volume file, an LVM thin pool VG/POOL, or zfs:POOL/DATASET
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
    #[arg(long, value_name = "FILE", visible_alias = "local-from", conflicts_with_all = ["volumes", "local", "file", "all"])]
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
    let archive = g.read()?;
    if a.file.is_some() && a.volumes.len() != 1 {
        return Err(Error::Usage(
            "diff --file=PATH compares exactly one volume (use --local=DIR for several)".into(),
        ));
    }
    // A reflink directory (or vg/pool) compares with the paired snapshot; any other
    // directory holds the volumes as plain files, DIR/<volume>.
    let (store, plain) = match (&a.local, &a.file) {
        (Some(dir), None) => match wyng::source::LocalStorage::open(dir, &g.local) {
            Ok(s) => (Some(s), None),
            Err(_) if dir.is_dir() => (None, Some(dir.clone())),
            Err(e) => return Err(e),
        },
        (None, Some(_)) => (None, None),
        _ => return Err(Error::Usage("diff needs --local=DIR or --file=PATH".into())),
    };
    let names = g.selection(&archive, &a.volumes, a.all)?;
    let one = |name: &str| -> Result<ops::diff::DiffReport> {
        let local = match (&store, &plain, &a.file) {
            (Some(store), _, _) => {
                ops::diff::diff_source(&archive, &ops::VolumeRef::same(name), store)?
            }
            (None, Some(dir), _) => dir.join(name),
            (None, None, Some(f)) => f.clone(),
            (None, None, None) => unreachable!("checked above"),
        };
        ops::diff::diff(&archive, name, &sel, &local, a.quick)
    };
    let mut reports = Vec::new();
    let mut failed: Vec<(String, Error)> = Vec::new();
    for n in &names {
        let e = match one(n) {
            Ok(r) => {
                let differs = r.first_difference.map(|off| {
                    Error::Selection(format!(
                        "{}: differs from session {} (first difference at byte {off})",
                        r.volume,
                        date(&r.session)
                    ))
                });
                if differs.is_none() {
                    g.say(identical(&r));
                }
                reports.push(r);
                match differs {
                    None => continue,
                    Some(e) => e,
                }
            }
            Err(e) => e,
        };
        failed.push((n.clone(), e));
    }
    if g.json {
        if names.len() == 1 {
            if let Some(r) = reports.first() {
                g.json(r)?;
            }
        } else {
            g.json(&reports)?;
        }
    }
    if names.len() == 1 {
        return match failed.pop() {
            None => Ok(()),
            Some((_, e)) => Err(e),
        };
    }
    for (_, e) in &failed {
        eprintln!(
            "wyng: error: {}",
            wyng::archive::printable(&super::errors::message(e))
        );
    }
    super::volumes_failed("diff", &failed)
}
