//! A saved delta map (local state), counted over a chunk count the input chooses.

use super::Target;

pub(super) const TARGET: Target = Target {
    name: "deltamap",
    run,
    seed_files: &["deltamap"],
    builtin_seeds: &[b"\x10\x00\x01\x80\x00\xff\x00\x00\x00\x00\x00\x00\x00\x00\x10"],
};

fn run(data: &[u8]) {
    let (count, rest) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) as u64 * 8, rest),
        _ => (64, data),
    };
    let m = crate::source::deltamap::DeltaMap::from_bytes(rest.to_vec());
    let n = m.count(count);
    let chunks = m.chunks(count);
    assert_eq!(chunks.len() as u64, n);
}
