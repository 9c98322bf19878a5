//! A `--vols-from` JSON file.

use super::{text, Target};

pub(super) const TARGET: Target = Target {
    name: "vols_from",
    run,
    seed_files: &["vols-from.json"],
    builtin_seeds: &[br#"{"/var/lib/images": [["a.img", null], "b.img"], "": ["c"]}"#],
};

fn run(data: &[u8]) {
    let _ = crate::ops::vols_from::parse(&text(data));
}
