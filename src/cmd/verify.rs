//! `wyng verify`.

use std::path::PathBuf;

use clap::Args;

use wyng::ops;
use wyng::{Error, Result};

use super::{date, human, Global, SessionArgs};

pub const HELP: &str = "Examples:\n  wyng verify vm1.img --dest=file:/mnt/usb/laptop.backup\n  wyng verify vm1.img --session=20261123-101500 --dest=...\n  wyng verify --all --dest=...\n\nThe session's merged manifest is rebuilt from the archive and checked, then every chunk is\nread, authenticated or hashed, decompressed and length-checked; nothing is written.";

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Volumes to verify
    pub volumes: Vec<String>,
    /// Verify every volume
    #[arg(short, long)]
    pub all: bool,
    #[command(flatten)]
    pub session: SessionArgs,
    /// Volumes and their local storages from a JSON file, e.g. {"/var/lib/images":
    /// [["web.img", null], ["db.img", "db-local.img"]]}; volumes that fail are listed in
    /// FILE.error and the run exits 2
    #[arg(long, value_name = "FILE", visible_alias = "local-from", conflicts_with_all = ["volumes", "all"])]
    pub vols_from: Option<PathBuf>,
}

pub fn summary(r: &ops::receive::ReadReport) -> String {
    format!(
        "{}: session {} verified: {} ({} with data), {}.",
        r.volume,
        date(&r.session),
        super::count(r.chunks, "chunk", "chunks"),
        r.data_chunks,
        human(r.volsize)
    )
}

pub fn run(g: &Global, a: VerifyArgs) -> Result<()> {
    let sel = a.session.sel()?;
    if let Some(file) = &a.vols_from {
        return super::vols_from::run(
            g,
            file,
            || g.read(),
            |archive, vf, failures| Ok(ops::vols_from::verify(archive, vf, &sel, failures)),
            |r| vec![summary(r)],
        );
    }
    let archive = g.read()?;
    let names = g.selection(&archive, &a.volumes, a.all)?;
    // Every volume is checked; failures are reported together at the end, as the original
    // does ("Error on volumes"): exit 1 if any was damaged, else 2.
    let mut reports = Vec::new();
    let mut failed: Vec<(String, Error)> = Vec::new();
    for n in &names {
        match ops::verify::verify(&archive, n, &sel).map_err(|e| super::with_damage_advice(e, n)) {
            Ok(r) => {
                g.say(summary(&r));
                reports.push(r);
            }
            Err(e) if names.len() == 1 => return Err(e),
            Err(e) => {
                eprintln!(
                    "wyng: error: {}",
                    wyng::archive::printable(&super::errors::message(&e))
                );
                failed.push((n.clone(), e));
            }
        }
    }
    if a.all {
        // A damaged volume is part of "all": its damage is a failure, not a silent skip.
        for d in archive
            .damaged()
            .iter()
            .filter(|d| d.name.as_ref().is_none_or(|n| !g.volex.contains(n)))
        {
            let name = d.name.clone().unwrap_or_else(|| d.vid.to_string());
            let e = Error::corrupt(
                d.vid.as_str(),
                format!(
                    "volume '{}' is damaged: {}",
                    wyng::archive::sanitized(&name),
                    d.error
                ),
            );
            eprintln!(
                "wyng: error: {}",
                wyng::archive::printable(&super::errors::message(&e))
            );
            failed.push((name, e));
        }
    }
    if g.json {
        g.json(&reports)?;
    }
    super::volumes_failed("verification", &failed)
}
