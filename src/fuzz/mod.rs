//! Fuzz targets: every parser of input that comes from an archive, local state, a tool's output
//! or the remote side, each as a function of raw bytes (one file per target).
//!
//! The rule every target checks: no panic, and no allocation beyond a bound set by the bytes
//! actually present (or by the parser's own fixed limit), never by a size the input claims.
//! Where a parser has a serializer, what it accepts must also survive a round trip.
//!
//! Compiled only with the `fuzz-targets` feature, which `fuzz/` and the tests turn on (never a
//! release build). The same targets run two ways:
//! * `fuzz/` (cargo-fuzz, libFuzzer, coverage-guided; `scripts/fuzz.sh MINUTES`), with
//!   libFuzzer's `-malloc_limit_mb` enforcing the allocation rule;
//! * `tests/fuzz_targets.rs`, on stable, over seeds from the fixtures and deterministic
//!   mutations of them, with a counting allocator (its own test binary, so it wraps no other
//!   test) enforcing the same rule. It runs in every `cargo test`.

use std::path::Path;

pub use guest::SparseDisk;

mod archive_ini;
mod config;
mod deltamap;
mod guest;
mod guest_fs;
mod guest_partition;
mod info;
mod journal;
mod lvs;
mod manifest;
mod manifest_z;
mod names;
mod nbd;
mod remote;
mod salt;
mod thin_delta;
mod volinfo;
mod vols_from;
mod zstream;

/// One fuzz target.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Fixture files (by name) whose contents seed it.
    pub seed_files: &'static [&'static str],
    /// Hand-made seeds (tool output and local files the fixtures do not hold).
    pub builtin_seeds: &'static [&'static [u8]],
}

/// The largest output the targets let a decompressor produce.
pub const MAX_OUT: usize = 1 << 20;

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

pub const TARGETS: &[Target] = &[
    archive_ini::TARGET,
    salt::TARGET,
    volinfo::TARGET,
    info::TARGET,
    manifest::TARGET,
    manifest_z::TARGET,
    journal::TARGET,
    deltamap::TARGET,
    lvs::TARGET,
    thin_delta::TARGET,
    zstream::TARGET,
    config::TARGET,
    remote::TARGET,
    vols_from::TARGET,
    names::TARGET,
    nbd::TARGET,
    guest_partition::TARGET,
    guest_fs::TARGET,
];

/// The target of this name.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Seeds for a target: the files it names under `fixtures` (the fixture archives), plus
/// its hand-made ones.
pub fn seeds(t: &Target, fixtures: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack = vec![fixtures.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| t.seed_files.contains(&n))
            {
                out.push(std::fs::read(&p).unwrap());
            }
        }
    }
    out.extend(t.builtin_seeds.iter().map(|s| s.to_vec()));
    out
}

/// A deterministic mutator (for the stable run): bit flips, truncations, insertions,
/// duplications and boundary values, chosen by a xorshift generator.
pub fn mutate(seed: &[u8], mut state: u64, rounds: usize) -> Vec<u8> {
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut d = seed.to_vec();
    for _ in 0..rounds {
        let r = next();
        let at = if d.is_empty() {
            0
        } else {
            (r >> 8) as usize % d.len()
        };
        match r % 8 {
            0 if !d.is_empty() => d[at] ^= 1 << ((r >> 3) % 8),
            1 => d.truncate(at),
            2 => d.insert(at, (r >> 40) as u8),
            3 if !d.is_empty() => {
                let len = ((r >> 20) as usize % 32).min(d.len() - at);
                let piece = d[at..at + len].to_vec();
                d.splice(at..at, piece);
            }
            4 if !d.is_empty() => {
                d[at] = [0, 0xff, b'\n', b'=', b' ', b'0', b'9', b'x'][(r >> 33) as usize % 8]
            }
            5 => {
                let digits = ["18446744073709551615", "-1", "99999999999999999999", "0"];
                let s = digits[(r >> 35) as usize % digits.len()];
                d.splice(at..at, s.bytes());
            }
            6 if at + 1 < d.len() => d.swap(at, at + 1),
            _ => {
                if !d.is_empty() {
                    d.remove(at);
                }
            }
        }
    }
    d
}
