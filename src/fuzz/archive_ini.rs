//! The archive root (`archive.ini`), plain or gzip-wrapped: parse, and a parsed root survives a
//! round trip.

use super::{text, Target, MAX_OUT};
use crate::format::ini::{self, ArchiveIni};

pub(super) const TARGET: Target = Target {
    name: "archive_ini",
    run,
    seed_files: &["archive.ini"],
    builtin_seeds: &[],
};

fn run(data: &[u8]) {
    if let Ok((_, body)) = ini::parse_header(data) {
        if let Ok(t) = crate::codec::gunzip(body, MAX_OUT) {
            root_text(&text(&t));
        }
    }
    root_text(&text(data));
}

fn root_text(t: &str) {
    if let Ok(r) = ArchiveIni::parse(t) {
        let again = ArchiveIni::parse(&r.to_text()).expect("a parsed root re-parses");
        assert_eq!(again.to_text(), r.to_text(), "root round trip");
    }
}
