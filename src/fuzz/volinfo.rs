//! A volume's `volinfo`.

use super::{text, Target};
use crate::format::volinfo::VolInfo;

pub(super) const TARGET: Target = Target {
    name: "volinfo",
    run,
    seed_files: &["volinfo"],
    builtin_seeds: &[],
};

fn run(data: &[u8]) {
    if let Ok(v) = VolInfo::parse(&text(data), "volinfo") {
        let again = VolInfo::parse(&v.to_text(), "volinfo").expect("a parsed volinfo re-parses");
        assert_eq!(again, v, "volinfo round trip");
    }
}
