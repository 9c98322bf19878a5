//! `wyng completions` and `wyng man`: shell completion scripts and manual pages, generated from
//! the same clap definitions the parser uses, so they never drift from the options.

use std::path::PathBuf;

use clap::Args;

use wyng::{Error, Result};

pub const COMPLETIONS_HELP: &str = "Examples:\n  wyng completions bash > /usr/share/bash-completion/completions/wyng\n  wyng completions zsh > /usr/share/zsh/vendor-completions/_wyng\n  wyng completions fish > /usr/share/fish/vendor_completions.d/wyng.fish";

pub const MAN_HELP: &str = "Examples:\n  wyng man | man -l -            # wyng(1)\n  wyng man send | man -l -       # wyng-send(1)\n  wyng man --dir=/usr/local/share/man/man1   # every page";

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// The command whose page to print (none: wyng(1))
    pub command: Option<String>,
    /// Write wyng.1 and a wyng-COMMAND.1 for every command into DIR instead
    #[arg(long, value_name = "DIR", conflicts_with = "command")]
    pub dir: Option<PathBuf>,
}

pub fn completions(a: CompletionsArgs) -> Result<()> {
    use clap_complete::env::EnvCompleter;
    // The script calls wyng back at each TAB (`COMPLETE=<shell> wyng -- WORDS`), so volume
    // and session names come from the archive, and options never drift from the parser.
    let shell: &dyn EnvCompleter = match a.shell {
        clap_complete::Shell::Bash => &clap_complete::env::Bash,
        clap_complete::Shell::Zsh => &clap_complete::env::Zsh,
        clap_complete::Shell::Fish => &clap_complete::env::Fish,
        clap_complete::Shell::Elvish => &clap_complete::env::Elvish,
        clap_complete::Shell::PowerShell => &clap_complete::env::Powershell,
        _ => {
            return Err(Error::Usage(
                "completions: bash, zsh, fish, elvish or powershell".into(),
            ))
        }
    };
    let mut buf = Vec::new();
    shell
        .write_registration("COMPLETE", "wyng", "wyng", "wyng", &mut buf)
        .map_err(|e| Error::io("completion script", e))?;
    super::write_stdout(&buf)
}

/// The built command tree: global options propagated into every subcommand, so each page
/// lists them too.
fn tree() -> clap::Command {
    let mut cmd = super::shape::command();
    cmd.build();
    cmd
}

fn page(cmd: &clap::Command, name: Option<&str>) -> Result<Vec<u8>> {
    let cmd = match name {
        None => cmd.clone(),
        Some(n) => {
            let sub = cmd
                .get_subcommands()
                .find(|s| s.get_name() == n)
                .ok_or_else(|| {
                    Error::Usage(format!("no command '{n}': `wyng --help` lists them"))
                })?;
            sub.clone()
                .name(format!("wyng-{n}"))
                .version(env!("CARGO_PKG_VERSION"))
        }
    };
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .map_err(|e| Error::io("man page", e))?;
    Ok(buf)
}

pub fn man(a: ManArgs) -> Result<()> {
    let cmd = tree();
    let Some(dir) = a.dir else {
        let text = page(&cmd, a.command.as_deref())?;
        return super::write_stdout(&text);
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::local_io(&dir, "", e))?;
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .filter(|n| n != "help")
        .collect();
    let write = |file: String, text: Vec<u8>| {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| Error::local_io(&path, "", e))
    };
    write("wyng.1".into(), page(&cmd, None)?)?;
    for n in &names {
        write(format!("wyng-{n}.1"), page(&cmd, Some(n))?)?;
    }
    super::write_stdout(
        format!(
            "{} manual pages written to {}\n",
            names.len() + 1,
            dir.display()
        )
        .as_bytes(),
    )
}
