//! The command line as users meet it, on top of the derived definitions:
//! * `-h` is short: the command's own options and two examples. Global options, and options
//!   kept only for the original's scripts, appear under their headings in `--help` only.
//! * Every option of Wyng 0.8 is accepted on every command, as the original's single parser
//!   accepts it: where a command has no use for it, a hidden stand-in takes it and the run
//!   says in one line that it has no effect there (never a usage error for a script that
//!   worked with the original).

use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory};

use super::Cli;

/// The original's options (behaviour notes §2): long name, short name, whether it takes a
/// value (`Some(true)`: always, `Some(false)`: optionally, `None`: a flag).
const ORIGINAL: &[(&str, Option<char>, Option<bool>)] = &[
    ("dest", None, Some(true)),
    ("local", None, Some(true)),
    ("unattended", Some('u'), None),
    ("authmin", None, Some(true)),
    ("passcmd", None, Some(true)),
    ("all", Some('a'), None),
    ("volex", None, Some(true)),
    ("session", None, Some(true)),
    ("all-before", None, None),
    ("session-strict", None, Some(true)),
    ("keep", None, Some(true)),
    ("autoprune", None, Some(true)),
    ("apdays", None, Some(true)),
    ("tag", None, Some(false)),
    ("dedup", Some('d'), None),
    ("volume-desc", None, Some(true)),
    ("send-unchanged", None, None),
    ("dry-run", None, None),
    ("import-other-from", None, Some(true)),
    ("vols-from", None, Some(true)),
    ("local-from", None, Some(true)),
    ("remap", None, None),
    ("save-to", None, Some(true)),
    ("sparse", None, None),
    ("sparse-write", None, None),
    ("use-snapshot", None, None),
    ("use-snapshot-diff", None, None),
    ("req-snapshot", None, None),
    ("skip-corrupt-chunks", None, None),
    ("quick", None, None),
    ("encrypt", None, Some(true)),
    ("compression", None, Some(true)),
    ("hashtype", None, Some(true)),
    ("chunk-factor", None, Some(true)),
    ("vid", None, Some(true)),
    ("meta-dir", None, Some(true)),
    ("meta-reduce", None, Some(true)),
    ("json", None, None),
    ("force", None, None),
    ("force-retry", None, None),
    ("force-allow-rollback", None, None),
    ("vouch", None, Some(true)),
    ("clean", None, None),
    ("purge", None, Some(true)),
    ("maxsync", None, None),
    ("upgrade-format", None, None),
    ("change-uuid", None, None),
    ("tar-bypass", None, None),
    ("opt-ssh", None, Some(true)),
    ("opt-qubes", None, Some(true)),
    ("purge-tmp", None, None),
    ("config", None, Some(true)),
    ("debug", None, None),
    ("quiet", Some('q'), None),
    ("verbose", Some('v'), None),
];

/// Ids of the hidden stand-ins start with this.
const STAND_IN: &str = "no-effect:";

/// Options that change nothing in wyng (accepted for the original's scripts): `--help` shows
/// them under their own heading, `-h` not at all.
const NO_OP: &[&str] = &["tar_bypass", "purge_tmp", "maxsync", "hashtype"];

/// The full command line definition (parsing, help, man pages and completions all use it).
pub fn command() -> Command {
    let mut cmd = Cli::command();
    let globals: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.get_id().to_string())
        .collect();
    for id in globals {
        cmd = cmd.mut_arg(id, |a| a.hide_short_help(true));
    }
    for id in NO_OP {
        if cmd.get_arguments().any(|a| a.get_id() == *id) {
            cmd = cmd.mut_arg(*id, quiet_no_op);
        }
    }
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let root_longs: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    for name in names {
        let root_longs = &root_longs;
        cmd = cmd.mut_subcommand(&name, |sub| shape_subcommand(sub, root_longs));
    }
    cmd
}

fn quiet_no_op(a: Arg) -> Arg {
    a.hide_short_help(true)
        .help_heading("Accepted for the original's scripts (no effect)")
}

/// Positional arguments that name volumes, completed from the archive (a command's only
/// positional: changing an argument moves it last, which would reorder several; `rename`'s
/// OLD gets its completer where it is defined).
const VOLUME_ARGS: &[&str] = &["volumes", "volume"];

fn shape_subcommand(mut sub: Command, root_longs: &[String]) -> Command {
    use clap_complete::engine::ArgValueCompleter;
    let name = sub.get_name().to_string();
    for id in VOLUME_ARGS {
        if sub
            .get_arguments()
            .any(|a| a.get_id() == *id && a.is_positional())
        {
            sub = sub.mut_arg(*id, |a| {
                a.add(ArgValueCompleter::new(super::complete::volumes))
            });
        }
    }
    if sub.get_arguments().any(|a| a.get_id() == "session") {
        sub = sub.mut_arg("session", |a| {
            a.add(ArgValueCompleter::new(super::complete::sessions))
        });
    }
    if let Some(long) = sub.get_after_help().map(|s| s.to_string()) {
        sub = sub
            .after_help(short_help(&name, &long))
            .after_long_help(long);
    }
    for id in NO_OP {
        if sub.get_arguments().any(|a| a.get_id() == *id) {
            sub = sub.mut_arg(*id, quiet_no_op);
        }
    }
    let has = |sub: &Command, long: &str, short: Option<char>| {
        sub.get_arguments().any(|a| {
            a.get_long() == Some(long)
                || a.get_visible_aliases().is_some_and(|v| v.contains(&long))
                || (short.is_some() && a.get_short() == short)
        }) || root_longs.iter().any(|l| l == long)
    };
    for &(long, short, value) in ORIGINAL {
        if has(&sub, long, short) {
            continue;
        }
        let mut a = Arg::new(format!("{STAND_IN}{long}")).long(long).hide(true);
        if let Some(c) = short.filter(|c| !sub.get_arguments().any(|x| x.get_short() == Some(*c))) {
            a = a.short(c);
        }
        a = match value {
            None => a.action(ArgAction::Count),
            Some(true) => a
                .action(ArgAction::Append)
                .num_args(1)
                .allow_hyphen_values(true),
            Some(false) => a
                .action(ArgAction::Append)
                .num_args(0..=1)
                .require_equals(true),
        };
        sub = sub.arg(a);
    }
    sub
}

/// `-h`'s closing text: the first two examples of `--help`'s, and where the rest is.
fn short_help(name: &str, long: &str) -> String {
    // The examples may follow a paragraph of prose: start at their heading.
    let mut lines = long.lines().skip_while(|l| !l.starts_with("Example"));
    let head = lines.next().unwrap_or("Examples:");
    // The first two that fit on a line.
    let examples: Vec<&str> = lines
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.len() <= 90)
        .take(2)
        .collect();
    format!(
        "{head}\n{}\n\n`wyng {name} --help`: every option, the global options (--dest, --meta-dir, -u, -q, --json ...) and more examples.",
        examples.join("\n")
    )
}

/// Options the original's parser refuses outside the commands that use them (its
/// consistency checks): on any other command they are a usage error here too, never a note.
const REFUSED_ELSEWHERE: &[(&str, &str)] = &[
    (
        "vols-from",
        "--vols-from works with send, monitor, receive, verify and diff only",
    ),
    ("save-to", "--save-to works with receive only"),
];

/// One line for each option of the original given to a command that has no use for it, or
/// the usage error the original gives for it.
pub fn no_effect_notes(m: &ArgMatches) -> Result<Vec<String>, String> {
    let Some((name, sub)) = m.subcommand() else {
        return Ok(Vec::new());
    };
    let given: Vec<&str> = sub
        .ids()
        .filter_map(|id| id.as_str().strip_prefix(STAND_IN))
        .filter(|long| {
            sub.value_source(&format!("{STAND_IN}{long}"))
                == Some(clap::parser::ValueSource::CommandLine)
        })
        .collect();
    if let Some((_, why)) = REFUSED_ELSEWHERE
        .iter()
        .find(|(long, _)| given.contains(long))
    {
        return Err(format!("{why}: it cannot be used with `{name}`"));
    }
    Ok(given
        .into_iter()
        .map(|long| {
            format!(
                "Note: --{long} has no effect with `{name}` (accepted for the original's scripts)."
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_original_option_parses_on_every_command() {
        let cmd = command();
        cmd.clone().debug_assert();
        for sub in cmd.get_subcommands() {
            for &(long, _, _) in ORIGINAL {
                let named = |a: &Arg| {
                    a.get_long() == Some(long)
                        || a.get_visible_aliases().is_some_and(|v| v.contains(&long))
                };
                let has_long = sub.get_arguments().any(named) || cmd.get_arguments().any(named);
                assert!(has_long, "{} lacks --{long}", sub.get_name());
            }
        }
    }
}
