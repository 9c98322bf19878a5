//! A session's `info`.

use super::{text, Target};
use crate::format::info::SessionInfo;

pub(super) const TARGET: Target = Target {
    name: "info",
    run,
    seed_files: &["info"],
    builtin_seeds: &[],
};

fn run(data: &[u8]) {
    if let Ok(i) = SessionInfo::parse(&text(data), "info") {
        let again = SessionInfo::parse(&i.to_text(), "info").expect("a parsed info re-parses");
        assert_eq!(again, i, "info round trip");
    }
}
