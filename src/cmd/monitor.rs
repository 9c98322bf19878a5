//! `wyng monitor`.

use std::path::PathBuf;

use clap::Args;

use wyng::ops;
use wyng::{Error, Result};

use super::{named_or_all, Global};

pub const HELP: &str = "Examples:\n  wyng monitor -a --local=/var/lib/images --dest=file:/mnt/usb/laptop.backup\n  */20 * * * *  wyng monitor -a -q --local=/var/lib/images --dest=...   # crontab\n\nEach paired volume gets a fresh snapshot; the chunks that changed since the last one are\nadded to its delta map and the old snapshot is released, so copy-on-write overhead stays\nsmall between sends. The next send reads only the chunks recorded. Volumes without a paired\nsnapshot (never sent from --local) are skipped. The archive is not changed.";

#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// Volumes to watch (paths relative to --local)
    pub volumes: Vec<String>,
    /// Every volume the archive holds
    #[arg(short, long)]
    pub all: bool,
    /// Reflink directory (Btrfs, or XFS with reflink) holding the volumes
    #[arg(long, value_name = "DIR")]
    pub local: Option<PathBuf>,
    /// Volumes and their local storages from a JSON file, e.g. {"/var/lib/images":
    /// [["web.img", null], ["db.img", "db-local.img"]]}; volumes that fail are listed in
    /// FILE.error and the run exits 2
    #[arg(long, value_name = "FILE", visible_alias = "local-from", conflicts_with_all = ["volumes", "local", "all"])]
    pub vols_from: Option<PathBuf>,
}

fn lines(r: &ops::monitor::MonitorReport) -> Vec<String> {
    vec![match r.state {
        "rotated" => format!(
            "{}: {} chunks changed ({} recorded since the last send).",
            r.volume, r.changed_chunks, r.recorded_chunks
        ),
        state => format!("{}: {state}.", r.volume),
    }]
}

pub fn run(g: &Global, a: MonitorArgs) -> Result<()> {
    if let Some(file) = &a.vols_from {
        return super::vols_from::run(
            g,
            file,
            || g.write(),
            |wa, vf, failures| Ok(ops::vols_from::monitor(wa, vf, failures)),
            lines,
        );
    }
    let dir = a.local.as_deref().ok_or_else(|| {
        Error::Usage("monitor needs --local=DIR (the reflink directory holding the volumes)".into())
    })?;
    let store = wyng::source::LocalStorage::open(dir)?;
    if !a.all && a.volumes.is_empty() {
        return Err(Error::Usage(
            "name the volumes to monitor, or use --all".into(),
        ));
    }
    // Pairing state changes: one writer at a time, as for send.
    let wa = g.write()?;
    let refs: Vec<ops::VolumeRef> = named_or_all(&wa, &a.volumes, a.all, &g.volex)
        .iter()
        .map(|n| ops::VolumeRef::same(n))
        .collect();
    let reports = ops::monitor::run(&wa, &store, &refs)?;
    g.reports(&reports, lines)
}
