//! A compressed manifest (`manifest.z`) under every compression, whole and streamed.

use std::io::BufRead;

use super::manifest::{geometry, read_lines};
use super::{Target, MAX_OUT};
use crate::codec::{Compression, Compressor};

pub(super) const TARGET: Target = Target {
    name: "manifest_z",
    run,
    seed_files: &["manifest.z"],
    builtin_seeds: &[],
};

fn run(data: &[u8]) {
    let (cs, volsize, rest) = geometry(data);
    for kind in [Compression::Zstd, Compression::Zlib, Compression::Bz2] {
        let c = Compressor::new(kind, kind.level_range().0.max(1)).expect("level in range");
        if let Ok(out) = c.decompress(rest, MAX_OUT) {
            assert!(out.len() <= MAX_OUT);
        }
        let input: Box<dyn BufRead + Send> = Box::new(std::io::Cursor::new(rest.to_vec()));
        if let Ok(r) = c.decompress_reader(input) {
            // Bounded by what the lines may hold: at most one line buffered at a time.
            read_lines(std::io::Read::take(r, (MAX_OUT as u64) * 4), cs, volsize);
        }
    }
}
