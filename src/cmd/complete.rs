//! Shell completion of what is in the archive: volume names and session names, on top of the
//! options clap completes. The shells' scripts (`wyng completions bash|zsh|fish`) call wyng
//! back at each TAB (clap_complete's environment protocol, `COMPLETE=<shell> wyng -- WORDS`).
//!
//! A keystroke must never wait: only `file:` archives are read (never a network round trip),
//! encrypted ones only with keys already in the key cache (never a prompt), without a lock,
//! and any failure completes nothing.

use std::ffi::OsStr;

use clap_complete::engine::CompletionCandidate;

use wyng::archive::{Archive, Location, LockPolicy, OpenOptions};

/// `--name=value` or `--name value` among the words being completed.
fn option(words: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    words.iter().enumerate().find_map(|(i, w)| {
        w.strip_prefix(&format!("{long}="))
            .map(str::to_string)
            .or_else(|| (*w == long).then(|| words.get(i + 1).cloned()).flatten())
    })
}

/// The archive the command line being completed names (or the configuration file's first).
fn archive() -> Option<Archive> {
    let words: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    let config = option(&words, "config").unwrap_or_else(|| "/etc/wyng/wyng.ini".into());
    let from_config = |key: &str| -> Option<String> {
        let text = std::fs::read_to_string(&config).ok()?;
        let sections = wyng::format::ini::parse_configparser(&text).ok()?;
        let (_, items) = sections
            .into_iter()
            .find(|(s, _)| s == "var-global-default")?;
        items
            .into_iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| {
                v.lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .map(str::to_string)
            })
    };
    let dest = option(&words, "dest").or_else(|| from_config("dest"))?;
    if !dest.starts_with("file:") {
        return None;
    }
    let meta = option(&words, "meta-dir")
        .or_else(|| from_config("meta-dir"))
        .map_or_else(super::default_meta_dir, std::path::PathBuf::from);
    let auth = wyng::auth::Auth {
        passcmd: None,
        authmin: 5,
        cached_only: true,
    };
    let loc = Location::open(&dest, &Default::default()).ok()?;
    Archive::open_read(
        loc,
        &OpenOptions {
            auth: &auth,
            meta_dir: Some(&meta),
            allow_rollback: true,
            force_retry: false,
            lock: LockPolicy {
                wait: std::time::Duration::ZERO,
                beside_writers: true,
            },
            tuning: Default::default(),
            progress: Default::default(),
        },
    )
    .ok()
}

fn matching(names: impl Iterator<Item = String>, current: &OsStr) -> Vec<CompletionCandidate> {
    let current = current.to_string_lossy();
    names
        .filter(|n| n.starts_with(current.as_ref()) && !n.chars().any(char::is_control))
        .map(CompletionCandidate::new)
        .collect()
}

/// Volume names of the archive.
pub fn volumes(current: &OsStr) -> Vec<CompletionCandidate> {
    archive().map_or_else(Vec::new, |a| {
        matching(a.volume_names().into_iter(), current)
    })
}

/// Session names (as `--session` takes them) of the volumes named on the command line, or of
/// every volume; plus the words that name one without a date.
pub fn sessions(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(a) = archive() else {
        return Vec::new();
    };
    let words: Vec<String> = std::env::args().collect();
    let named: Vec<&wyng::archive::Volume> = a
        .volumes()
        .iter()
        .filter(|v| words.iter().any(|w| w == v.name()))
        .collect();
    let vols: Vec<&wyng::archive::Volume> = if named.is_empty() {
        a.volumes().iter().collect()
    } else {
        named
    };
    let mut names: Vec<String> = vols
        .iter()
        .flat_map(|v| v.sessions.iter().map(|s| s.name.date().to_string()))
        .collect();
    names.sort_unstable();
    names.dedup();
    names.reverse();
    names.push("latest".into());
    matching(names.into_iter(), current)
}
