//! `wyng list`.

use std::io::Write;

use clap::Args;

use wyng::ops::{self, SessionSel};
use wyng::Result;

use super::Global;

pub const HELP: &str = "Examples:\n  wyng list --dest=file:/mnt/usb/laptop.backup\n  wyng list vm1.img --verbose --dest=...\n  wyng list --json --dest=... | jq .\n  wyng list --outstanding     (what each destination of earlier sends still misses)";

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Volumes whose sessions to list (none: list volumes)
    pub volumes: Vec<String>,
    /// List the sessions of every volume (except --volex ones)
    #[arg(short, long)]
    pub all: bool,
    /// Only volumes having this session (WHEN as for receive: latest, ^TAG, 20261205-101500,
    /// 20261205, 2d, yesterday ...)
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
    /// The tag view: every tag (or only TAG; --tag=@ as --tag) with the sessions that carry it
    #[arg(long, value_name = "TAG", num_args = 0..=1, default_missing_value = "")]
    pub tag: Option<String>,
    /// What each destination of earlier sends still misses (from this host's --meta-dir; no
    /// archive is opened): volumes a failed destination did not get, since when, and why.
    /// With --dest, only those destinations
    #[arg(long, conflicts_with_all = ["volumes", "all", "session", "tag"])]
    pub outstanding: bool,
}

fn outstanding(g: &Global) -> Result<()> {
    let mut rec = ops::outstanding::load(g.meta_dir())?;
    if !g.dest.is_empty() {
        rec.retain(|url, _| g.dest.contains(url));
    }
    if g.json {
        return g.json(&rec);
    }
    if rec.is_empty() {
        g.say("Every destination has every volume sent to it.");
    }
    for (url, m) in &rec {
        g.say(format!("{url}:"));
        for (v, since) in &m.volumes {
            g.say(format!("  {v}  (missing since {})", super::date(since)));
        }
        if !m.error.is_empty() {
            g.say(format!("  last error: {}", m.error));
        }
    }
    Ok(())
}

pub fn run(g: &Global, a: ListArgs) -> Result<()> {
    if a.outstanding {
        return outstanding(g);
    }
    let archive = g.read()?;
    let volumes = if a.all {
        g.selection(&archive, &a.volumes, true)?
    } else {
        a.volumes.clone()
    };
    if let Some(tag) = &a.tag {
        // `--tag=@` (the original's prompt marker) and a bare `--tag`: every tag.
        let tag = if tag == "@" { "" } else { tag.as_str() };
        let rows = ops::list::tags(&archive, &volumes, tag)?;
        if g.json {
            return g.json(&rows);
        }
        let out = ops::list::tags_text(&archive, &rows);
        let _ = std::io::stdout()
            .lock()
            .write_all(wyng::archive::printable(&out).as_bytes());
        return Ok(());
    }
    let a = ListArgs { volumes, ..a };
    if g.json {
        return g.json(&ops::list::json(&archive, &a.volumes)?);
    }
    let session = a
        .session
        .as_deref()
        .map(|s| SessionSel::parse(Some(s), true, super::now()))
        .transpose()?;
    let text = ops::list::text(
        &archive,
        &a.volumes,
        &ops::list::TextOptions {
            verbose: g.verbose > 0,
            session,
        },
    )?;
    let text = wyng::archive::printable(&text);
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(())
}
