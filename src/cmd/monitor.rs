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
    /// Reflink directory (Btrfs, or XFS with reflink) holding the volumes, an LVM thin pool
    /// VG/POOL, or zfs:POOL/DATASET
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
            "{}: {} changed ({} recorded since the last send).",
            r.volume,
            super::count(r.changed_chunks, "chunk", "chunks"),
            r.recorded_chunks
        ),
        state => format!("{}: {state}.", r.volume),
    }]
}

/// One archive's monitor run (its own pairing: snapshots and delta maps named after it).
fn monitor_one(
    g: &Global,
    a: &MonitorArgs,
    url: &str,
    vf: Option<&ops::vols_from::VolsFrom>,
    failures: &mut ops::vols_from::Failures,
) -> Result<Vec<ops::monitor::MonitorReport>> {
    // Pairing state changes: one writer at a time, as for send.
    if let Some(vf) = vf {
        let wa = g.write_to(url)?;
        return Ok(ops::vols_from::monitor(&wa, vf, failures));
    }
    let dir = a.local.as_deref().ok_or_else(|| {
        Error::Usage("monitor needs --local=DIR (the reflink directory holding the volumes)".into())
    })?;
    let store = wyng::source::LocalStorage::open(dir, &g.local)?;
    if !a.all && a.volumes.is_empty() {
        return Err(Error::Usage(
            "name the volumes to monitor, or use --all".into(),
        ));
    }
    let wa = g.write_to(url)?;
    let refs: Vec<ops::VolumeRef> = named_or_all(&wa, &a.volumes, a.all, &g.volex)
        .iter()
        .map(|n| ops::VolumeRef::same(n))
        .collect();
    ops::monitor::run(&wa, &store, &refs)
}

/// With several `--dest` (a configuration file that lists the archives a send writes to),
/// each archive's pairing is monitored in turn: one that fails does not stop the others.
pub fn run(g: &Global, a: MonitorArgs) -> Result<()> {
    let urls = g.dests()?;
    let vf = a
        .vols_from
        .as_deref()
        .map(|f| ops::vols_from::VolsFrom::load(f, &g.local))
        .transpose()?;
    let mut failures = ops::vols_from::Failures::default();
    if let [url] = urls.as_slice() {
        let reports = monitor_one(g, &a, url, vf.as_ref(), &mut failures);
        let finished = vf.as_ref().map_or(Ok(()), |vf| vf.finish(&failures));
        g.reports(&reports?, lines)?;
        return finished;
    }
    let runs: Vec<(&String, Result<Vec<ops::monitor::MonitorReport>>)> = urls
        .iter()
        .map(|url| (url, monitor_one(g, &a, url, vf.as_ref(), &mut failures)))
        .collect();
    if g.json {
        let out: Vec<serde_json::Value> = runs
            .iter()
            .map(|(url, r)| match r {
                Ok(r) => serde_json::json!({ "dest": url, "volumes": r }),
                Err(e) => serde_json::json!({ "dest": url, "volumes": [], "error": super::errors::message(e) }),
            })
            .collect();
        g.json(&serde_json::json!({ "destinations": out }))?;
    } else {
        for (url, r) in &runs {
            g.say(format!("{url}:"));
            match r {
                Ok(r) => r
                    .iter()
                    .flat_map(lines)
                    .for_each(|l| g.say(format!("  {l}"))),
                Err(e) => g.say(format!("  failed: {}", super::errors::message(e))),
            }
        }
    }
    let finished = vf.as_ref().map_or(Ok(()), |vf| vf.finish(&failures));
    match runs.into_iter().find_map(|(_, r)| r.err()) {
        Some(e) => Err(e),
        None => finished,
    }
}
