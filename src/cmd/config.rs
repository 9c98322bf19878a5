//! The configuration file (`/etc/wyng/wyng.ini` or `--config FILE`) and option order: options
//! may come before or after the command and the volume names; [`normalize_args`] moves
//! anything before the command word to after it, so clap sees one shape, and
//! [`apply_config`] puts the file's defaults where the command line overrides them.

use std::ffi::OsString;

use clap::{ArgAction, CommandFactory};

use super::Cli;

/// Keys the original ignores in the configuration file (behaviour notes §1.1).
const CONFIG_IGNORED: &[&str] = &[
    "config",
    "debug",
    "force",
    "save-to",
    "session",
    "unattended",
    "volume-desc",
    "tag",
    "all",
    "all-before",
    "vols-from",
    "import-other-from",
    "upgrade-format",
    "help",
    "skip-corrupt-chunks",
    "force-retry",
];

/// Inserts the configuration file's defaults (`--config FILE`, or /etc/wyng/wyng.ini if it
/// exists) right after the command word, where the command line's own options, coming later,
/// override them. Follows the original's rules: flags take 1/0, list options one item per line,
/// some keys are ignored (with a message), an unknown key is an error. Expects normalised args.
pub fn apply_config(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let strs: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let explicit = strs.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--config=").map(str::to_string).or_else(|| {
            (a == "--config")
                .then(|| strs.get(i + 1).cloned())
                .flatten()
        })
    });
    let path = explicit
        .clone()
        .unwrap_or_else(|| "/etc/wyng/wyng.ini".into());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(_) if explicit.is_none() => return Ok(args),
        Err(e) => return Err(format!("cannot read --config {path}: {e}")),
    };
    let sections =
        wyng::format::ini::parse_configparser(&text).map_err(|e| format!("{path}: {e}"))?;
    let Some((_, items)) = sections
        .into_iter()
        .find(|(s, _)| s == "var-global-default")
    else {
        return Ok(args);
    };
    let cmd = Cli::command();
    let sub_name = strs.get(1).cloned().unwrap_or_default();
    let Some(sub) = cmd.get_subcommands().find(|s| s.get_name() == sub_name) else {
        return Ok(args);
    };
    // Destinations on the command line replace the file's (which may list several, one per
    // line, for send).
    let cli_dest = strs
        .iter()
        .any(|a| a == "--dest" || a.starts_with("--dest="));
    let mut inject: Vec<OsString> = Vec::new();
    for (key, value) in items {
        if CONFIG_IGNORED.contains(&key.as_str()) {
            eprintln!("Ignoring config item: {key}");
            continue;
        }
        if key == "dest" && cli_dest {
            continue;
        }
        let find = |c: &clap::Command| {
            c.get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
                .cloned()
        };
        let arg = find(sub).or_else(|| find(&cmd));
        let Some(arg) = arg else {
            if cmd.get_subcommands().any(|s| find(s).is_some()) {
                continue; // an option of another command
            }
            return Err(format!("{path}: unknown configuration item '{key}'"));
        };
        match arg.get_action() {
            ArgAction::SetTrue => {
                let on = value
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{path}: '{key}' takes 1 or 0"))?;
                if on != 0 {
                    inject.push(format!("--{key}").into());
                }
            }
            ArgAction::Count => {
                let n = value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("{path}: '{key}' takes a number"))?;
                inject.extend(std::iter::repeat_n(OsString::from(format!("--{key}")), n));
            }
            ArgAction::Append => {
                for line in value.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    inject.push(format!("--{key}={line}").into());
                }
            }
            _ => inject.push(format!("--{key}={value}").into()),
        }
    }
    // Commands that work on one archive say so when the file lists several.
    if !cli_dest
        && inject
            .iter()
            .any(|a| a.to_string_lossy().starts_with("--dest="))
    {
        inject.push(format!("--dests-from-config={path}").into());
    }
    let mut out = args[..2.min(args.len())].to_vec();
    out.extend(inject);
    out.extend_from_slice(&args[2.min(args.len())..]);
    Ok(out)
}

/// A single-valued option given twice on the command line is an error (the original would
/// silently take the last one, which hides mistakes such as two `--dest`). Repeatable options
/// (`--volex`, `--tag`, ...) and flags may repeat; values from the configuration file are
/// defaults and never count. Expects normalised args (the command word first).
pub fn check_repeats(args: &[OsString]) -> Result<(), String> {
    let cmd = Cli::command();
    let Some(sub) = args
        .get(1)
        .and_then(|a| a.to_str())
        .and_then(|w| cmd.get_subcommands().find(|s| s.get_name() == w))
    else {
        return Ok(());
    };
    let single: Vec<&clap::Arg> = sub
        .get_arguments()
        .chain(cmd.get_arguments())
        .filter(|a| matches!(a.get_action(), ArgAction::Set) && !a.is_positional())
        .collect();
    let mut seen: Vec<String> = Vec::new();
    for a in args[2..].iter().map(|a| a.to_string_lossy()) {
        if a == "--" {
            break;
        }
        let Some(word) = a
            .strip_prefix("--")
            .map(|w| w.split('=').next().unwrap_or(w))
        else {
            continue;
        };
        if let Some(arg) = single.iter().find(|x| x.get_long() == Some(word)) {
            let long = arg.get_long().unwrap_or(word).to_string();
            if seen.contains(&long) {
                return Err(format!(
                    "--{long} was given more than once; give it once (options repeat only where their help says so)"
                ));
            }
            seen.push(long);
        }
    }
    Ok(())
}

/// Moves options given before the command word to after it, so that `wyng --save-to=x receive
/// vol` and `wyng receive vol --save-to=x` parse alike.
pub fn normalize_args(args: Vec<OsString>) -> Vec<OsString> {
    let cmd = Cli::command();
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let mut takes_value: Vec<String> = Vec::new();
    for c in std::iter::once(&cmd).chain(cmd.get_subcommands()) {
        for a in c.get_arguments() {
            if a.get_action().takes_values() {
                if let Some(l) = a.get_long() {
                    takes_value.push(format!("--{l}"));
                }
                if let Some(s) = a.get_short() {
                    takes_value.push(format!("-{s}"));
                }
            }
        }
    }
    let mut pos = None;
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--" {
            break;
        }
        if names.iter().any(|n| *n == a) {
            pos = Some(i);
            break;
        }
        if takes_value.iter().any(|t| *t == a) {
            i += 1; // its value follows
        }
        i += 1;
    }
    match pos {
        Some(p) if p > 1 => {
            let mut out = vec![args[0].clone(), args[p].clone()];
            out.extend_from_slice(&args[p + 1..]);
            out.extend_from_slice(&args[1..p]);
            out
        }
        _ => args,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(v: &[&str]) -> Vec<String> {
        normalize_args(v.iter().map(OsString::from).collect())
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn options_anywhere() {
        assert_eq!(
            norm(&["wyng", "--save-to", "x", "receive", "v"]),
            ["wyng", "receive", "v", "--save-to", "x"]
        );
        assert_eq!(
            norm(&["wyng", "list", "--dest=file:/a"]),
            ["wyng", "list", "--dest=file:/a"]
        );
        assert_eq!(
            norm(&["wyng", "--dest", "list", "list"]),
            ["wyng", "list", "--dest", "list"]
        );
        Cli::command().debug_assert();
    }
}
