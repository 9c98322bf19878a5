//! `wyng list`.

use std::io::Write;

use clap::Args;

use wyng::ops::{self, SessionSel};
use wyng::Result;

use super::Global;

pub const HELP: &str = "Examples:\n  wyng list --dest=file:/mnt/usb/laptop.backup\n  wyng list vm1.img --verbose --dest=...\n  wyng list --json --dest=... | jq .";

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Volumes whose sessions to list (none: list volumes)
    pub volumes: Vec<String>,
    /// Only volumes having this session (date-time or ^TAG)
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
}

pub fn run(g: &Global, a: ListArgs) -> Result<()> {
    let archive = g.read()?;
    if g.json {
        return g.json(&ops::list::json(&archive, &a.volumes)?);
    }
    let session = a
        .session
        .as_deref()
        .map(|s| SessionSel::parse(Some(s), true))
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
