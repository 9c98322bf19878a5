//! A plain manifest, read against a chunk size and volume size the input chooses.

use std::io::BufRead;

use super::Target;
use crate::format::manifest::LineReader;

pub(super) const TARGET: Target = Target {
    name: "manifest",
    run,
    seed_files: &["manifest"],
    builtin_seeds: &[
        b"\x01\x20 0 x0000000000000000\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= x0000000000010000\n",
    ],
};

/// A leading control byte and the byte after it choose the chunk size and the volume size the
/// lines are read against; otherwise 64 KiB chunks in a 1 TiB volume (every fixture fits).
pub(super) fn geometry(data: &[u8]) -> (u64, u64, &[u8]) {
    match data {
        [a, b, rest @ ..] if *a < 0x20 => (
            32768 << (1 + (*a % 6)),
            (*b as u64 + 1) << (10 + (*a >> 3) as u64 * 6),
            rest,
        ),
        _ => (65536, 1 << 40, data),
    }
}

pub(super) fn read_lines(r: impl BufRead, cs: u64, volsize: u64) {
    let mut last = None;
    for e in LineReader::new(r, cs, volsize, "manifest") {
        match e {
            Ok((idx, _)) => {
                assert!(last.is_none_or(|l| idx > l), "ascending");
                assert!(
                    idx * cs < volsize.max(1),
                    "within the volume: {idx} {cs} {volsize}"
                );
                last = Some(idx);
            }
            Err(_) => break,
        }
    }
}

fn run(data: &[u8]) {
    let (cs, volsize, rest) = geometry(data);
    read_lines(rest, cs, volsize);
    if let Ok(v) = crate::format::manifest::parse_lines(rest, cs, volsize, "manifest") {
        assert!(v.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
