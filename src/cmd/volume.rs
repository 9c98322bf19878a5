//! `wyng add` and `wyng rename`.

use clap::Args;

use wyng::ops;
use wyng::{Error, Result};

use super::Global;

pub const RENAME_HELP: &str =
    "Examples:\n  wyng rename vm1.img vms/web.img --dest=file:/mnt/usb/laptop.backup\n  wyng rename vm1.img vms/web.img --volume-desc='web server' --dest=...\n\nA rename without --volume-desc clears the description, as the original does. The new name must\nnot belong to another volume, readable or damaged.";
pub const ADD_HELP: &str =
    "Examples:\n  wyng add vms/new.img --dest=file:/mnt/usb/laptop.backup\n  wyng add web.img db.img --volume-desc='not sent yet' --dest=...\n\nThe whole request is checked first: a name given twice or already used adds nothing.";

#[derive(Args, Debug)]
pub struct RenameArgs {
    #[arg(add = clap_complete::engine::ArgValueCompleter::new(super::complete::volumes))]
    pub old: String,
    pub new: String,
    /// New description (a rename without it clears the description, as the original does)
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub volume_desc: String,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    pub volumes: Vec<String>,
    /// Description of the new volumes
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub volume_desc: String,
}

pub fn rename(g: &Global, a: RenameArgs) -> Result<()> {
    let mut wa = g.write()?;
    ops::volume::rename(&mut wa, &a.old, &a.new, &a.volume_desc)?;
    g.say(format!("Renamed '{}' to '{}'.", a.old, a.new));
    Ok(())
}

pub fn add(g: &Global, a: AddArgs) -> Result<()> {
    if a.volumes.is_empty() {
        return Err(Error::Usage("name the volumes to add".into()));
    }
    let mut wa = g.write()?;
    ops::volume::add(&mut wa, &a.volumes, &a.volume_desc)?;
    for v in &a.volumes {
        g.say(format!("Added volume '{v}'."));
    }
    Ok(())
}
