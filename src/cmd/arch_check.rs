//! `wyng arch-check`.

use clap::Args;

use wyng::ops;
use wyng::{Error, Result};

use super::Global;

pub const HELP: &str = "Examples:\n  wyng arch-check --dest=file:/mnt/usb/laptop.backup\n  wyng arch-check vm1.img --session=newest --dest=...\n  wyng arch-check --clean --dest=...          # first remove leftovers of interrupted commands\n\nEvery problem found is listed; the exit status is 1 if there was any.";

#[derive(Args, Debug)]
pub struct ArchCheckArgs {
    /// Volumes to check (none: all)
    pub volumes: Vec<String>,
    /// Every volume (as with no names), except --volex ones
    #[arg(short, long)]
    pub all: bool,
    /// Only this session's own chunks (WHEN as for receive: newest, 20261205-101500,
    /// 20261205, 2d ...)
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
    /// Remove leftovers of interrupted commands first
    #[arg(long)]
    pub clean: bool,
    /// Upgrade a V2 archive to V3. wyng does not convert V2 archives: it says so, and checks
    /// a V3 archive as usual (see docs/compatibility.md)
    #[arg(long)]
    pub upgrade_format: bool,
    /// Give the archive a new UUID (for a copy that must not be confused with its original)
    #[arg(long)]
    pub change_uuid: bool,
}

pub fn run(g: &Global, a: ArchCheckArgs) -> Result<()> {
    let o = ops::check::CheckOptions {
        session: a
            .session
            .as_deref()
            .map(|s| wyng::ops::SessionSel::parse(Some(s), true, super::now()))
            .transpose()?,
    };
    let open_read = || {
        g.read().map_err(|e| match e {
            Error::Unsupported(_) if a.upgrade_format => Error::Usage(format!(
                "{e}. wyng does not convert V2 archives: run the original Wyng 0.8 once (`wyng arch-check --upgrade-format`), then use wyng"
            )),
            e => e,
        })
    };
    let mut volumes = a.volumes.clone();
    if a.upgrade_format || a.all {
        let archive = open_read()?;
        if a.upgrade_format {
            g.say("The archive is already format V3: nothing to upgrade.");
        }
        if a.all {
            volumes = g.selection(&archive, &a.volumes, true)?;
        }
    }
    let (reports, stagings) = if a.clean || a.change_uuid {
        let mut wa = g.write()?;
        if a.change_uuid {
            if !g.confirm("Give this archive a new UUID?")? {
                g.say("Cancelled; nothing was changed.");
                return Ok(());
            }
            let uuid = wa.change_uuid()?;
            g.say(format!("New archive UUID: {uuid}"));
            return Ok(());
        }
        for p in ops::check::clean(&mut wa)? {
            g.say(capitalized(&p));
        }
        (ops::check::run(&wa, &volumes, &o)?, wa.resumable_stagings())
    } else {
        // With no writer at work: a send's staging would look like a leftover.
        let archive = g.read_quiescent()?;
        (
            ops::check::run(&archive, &volumes, &o)?,
            archive.resumable_stagings(),
        )
    };
    let problems: usize = reports.iter().map(|r| r.problems.len()).sum();
    if g.json {
        g.json(&reports)?;
    } else {
        for (dir, vol) in &stagings {
            g.say(format!(
                "{dir}: kept for the next send of '{vol}' from this host to resume (an interrupted send staged it; nothing refers to it)"
            ));
        }
        for r in &reports {
            for p in &r.problems {
                eprintln!(
                    "{}",
                    wyng::archive::printable(&format!("{}: {p}", r.volume))
                );
            }
            if r.volume == ops::check::ARCHIVE {
                continue;
            }
            g.say(format!(
                "{}: {}, {} checked, {}.",
                r.volume,
                super::count(r.sessions as u64, "session", "sessions"),
                super::count(r.chunks, "chunk file", "chunk files"),
                if r.problems.is_empty() {
                    "no problems".to_string()
                } else {
                    super::count(r.problems.len() as u64, "problem", "problems")
                }
            ));
        }
    }
    if problems > 0 {
        return Err(Error::corrupt(
            g.dest_url().to_string(),
            format!(
                "arch-check found {}. For a damaged chunk file: `wyng receive VOL --session=S --skip-corrupt-chunks` rescues what reads; a full send of the volume under its name (after `wyng rename VOL VOL.damaged`) keeps a whole copy; pruning the sessions that hold it removes it once later sessions no longer need it; or put back a copy of the archive. Leftovers of interrupted commands: `wyng arch-check --clean`",
                super::count(problems as u64, "problem", "problems")
            ),
        ));
    }
    Ok(())
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
}
