//! `wyng arch-deduplicate`.

use wyng::ops;
use wyng::Result;

use super::{human, Global};

pub const HELP: &str = "Examples:\n  wyng arch-deduplicate --dest=file:/mnt/usb/laptop.backup\n  wyng arch-deduplicate --json --dest=... | jq .bytes_saved\n\nNeeds a destination with hard links. `wyng send --dedup` does the same while sending.";

pub fn run(g: &Global) -> Result<()> {
    let mut wa = g.write()?;
    let r = ops::dedup::run(&mut wa)?;
    if g.json {
        return g.json(&r);
    }
    g.say(format!(
        "{} of {} replaced by hard links; {} saved.",
        r.linked,
        super::count(r.chunk_files as u64, "chunk file", "chunk files"),
        human(r.bytes_saved)
    ));
    Ok(())
}
