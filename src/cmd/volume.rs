//! `wyng add` and `wyng rename`.

use clap::Args;

use wyng::ops;
use wyng::{Error, Result};

use super::Global;

pub const RENAME_HELP: &str =
    "Example:\n  wyng rename vm1.img vms/web.img --volume-desc='web server' --dest=...";
pub const ADD_HELP: &str =
    "Example:\n  wyng add vms/new.img --volume-desc='not sent yet' --dest=...";

#[derive(Args, Debug)]
pub struct RenameArgs {
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
