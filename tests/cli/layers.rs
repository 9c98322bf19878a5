//! The layer rules of docs/architecture.md that Cargo cannot express, checked on the source
//! (the pure format layer is a crate of its own, so its rule needs no scan): every `crate::<module>`
//! path in a module's (non-test) code must name a module that layer may use. The archive is
//! the only way to an archive's bytes: nothing outside `src/archive/` reaches the destination
//! or the codec, and only `src/view/fuse.rs` touches `wyng-fuse`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Which top-level modules each layer may name (`crate::X`).
fn allowed(layer: &str) -> Option<&'static [&'static str]> {
    Some(match layer {
        // The format layer is its own crate (format/, `wyng_format`): Cargo makes its rule (it
        // uses nothing of wyng's) a compile error. Errors convert its error type.
        "error" => &["format"],
        "spool" | "size" | "parallel" | "progress" => &["error"],
        "atomic_file" => &[],
        // How a run uses the machine: plain values the binary fills in.
        "tuning" => &[],
        "crypto" => &["error", "format", "spool"],
        "codec" => &["error", "format", "crypto", "spool"],
        // The foundations, and format's pure ini parser (for ~/.aws/credentials).
        "dest" => &[
            "error",
            "spool",
            "size",
            "parallel",
            "format",
            "atomic_file",
        ],
        "auth" => &["error", "crypto"],
        "archive" => &[
            "error",
            "format",
            "crypto",
            "codec",
            "dest",
            "spool",
            "parallel",
            "size",
            "auth",
            "progress",
            "atomic_file",
            "tuning",
        ],
        "source" => &[
            "error",
            "format",
            "parallel",
            "progress",
            "spool",
            "atomic_file",
        ],
        // The NBD wire format: pure, on its own.
        "nbd" => &[],
        // Guest filesystems are pure over a "read at an offset" source: no archive.
        "guest" => &["error"],
        "view" => &[
            "error", "format", "archive", "parallel", "spool", "size", "guest",
        ],
        "ops" => &[
            "error",
            "format",
            "archive",
            "source",
            "view",
            "parallel",
            "progress",
            "size",
            "spool",
            "auth",
            "ops",
            "nbd",
            "guest",
            "atomic_file",
        ],
        // The fuzz targets reach every parser, wherever it lives.
        "fuzz" => &[
            "error", "format", "crypto", "codec", "dest", "spool", "source", "ops", "size", "nbd",
            "guest",
        ],
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file before its unit tests (they may use anything), without comments.
fn code(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap();
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::X` a piece of code names, including the items of `use crate::{X, Y}`.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        // Not part of a longer identifier (`wyng_crate::`).
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let m: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !m.is_empty() {
                    out.insert(m);
                }
            }
        } else {
            let m: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(m);
        }
    }
    out
}

#[test]
fn layers_only_reach_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        // The binary (main.rs, cmd/) uses the library from outside: checked below.
        let layer = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        let code = code(f);
        if let Some(ok) = allowed(&layer) {
            checked += 1;
            for m in named_modules(&code) {
                if m != layer && !ok.contains(&m.as_str()) {
                    problems.push(format!("{rel} uses crate::{m}, above its layer"));
                }
            }
        }
        // Nothing but the archive reaches an archive's destination or codec.
        let inside = rel.starts_with("archive/")
            || rel.starts_with("dest/")
            || rel == "codec.rs"
            || rel == "lib.rs"
            // The fuzz targets call the parsers themselves, on bytes of their own.
            || rel.starts_with("fuzz/");
        if !inside {
            for bad in [
                "crate::dest",
                "crate::codec",
                "wyng::dest",
                "wyng::codec",
                "archive.dest",
                "archive.codec",
                "wa.dest",
                "wa.codec",
                ".codec.",
            ] {
                if code.contains(bad) {
                    problems.push(format!("{rel} reaches past the archive: `{bad}`"));
                }
            }
        }
        if rel != "view/fuse.rs" && code.contains("wyng_fuse") {
            problems.push(format!("{rel} uses wyng_fuse (only view/fuse.rs may)"));
        }
        // Options come in by value: only the binary (main.rs, cmd/) reads the environment.
        let binary = rel == "main.rs" || rel.starts_with("cmd/");
        if !binary && (code.contains("env::var") || code.contains("env::vars")) {
            problems.push(format!(
                "{rel} reads the environment (only the binary may: pass the value in)"
            ));
        }
    }
    assert!(
        checked > 30,
        "the source tree was not found ({checked} files)"
    );
    assert!(
        problems.is_empty(),
        "layer rules broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_binary_is_thin() {
    let main = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/main.rs");
    let lines = std::fs::read_to_string(main).unwrap().lines().count();
    assert!(lines < 150, "src/main.rs has {lines} lines");
}

#[test]
fn the_rule_checker_sees_what_it_must() {
    let m = named_modules("use crate::{archive::X, ops};\nlet a = crate::view::f(); foo_crate::x");
    assert_eq!(
        m.into_iter().collect::<Vec<_>>(),
        vec!["archive", "ops", "view"]
    );
}

/// Chunks are compressed and decompressed behind the archive: re-exporting `Compressor` for
/// configuration (`arch-init`'s settings) must not let a layer above compress on its own (a
/// send to several archives shares compressions through `archive::SharedChunk`).
#[test]
fn compression_stays_behind_the_archive() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let offenders: Vec<String> = files
        .iter()
        .filter(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            !(rel.starts_with("archive/") || rel == "codec.rs" || rel.starts_with("fuzz/"))
        })
        .filter(|p| {
            let c = code(p);
            c.contains(".compress(") || c.contains(".decompress(")
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "compression outside the archive: {offenders:?}"
    );
}
