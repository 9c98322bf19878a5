//! The root's journal items, a merge list (`merge.lst`) and its paths.

use super::{text, Target};
use crate::format::journal::{Journal, ListPath, MergeList};

pub(super) const TARGET: Target = Target {
    name: "journal",
    run,
    seed_files: &["journal", "merge.lst"],
    builtin_seeds: &[
        b"in_process = merge\nvid = Vol_1e08b7\n",
        b"S_20261123-153256 S_20261123-153257\nS_20261123-153257\n###\nrename S_20261123-153257/000000000/x0000000000000000 S_20261123-153256/000000000/x0000000000000000\n-rm S_20261123-153257\n",
    ],
};

fn run(data: &[u8]) {
    let t = text(data);
    // The journal's items as the root holds them (`key = value` lines of its [in_process]).
    let items: Vec<(String, String)> = t
        .lines()
        .take(64)
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    if let Ok(Some(j)) = Journal::parse(&items) {
        let again = Journal::parse(&j.to_items()).expect("a parsed journal re-parses");
        assert_eq!(again.map(|a| a.to_items()), Some(j.to_items()));
    }
    if let Ok(mut list) = MergeList::read(data) {
        let _ = list.head.to_text();
        while let Ok(Some(op)) = list.next_op() {
            let _ = op.to_line();
        }
    }
    for line in t.lines().take(64) {
        if let Some(p) = ListPath::parse(line) {
            assert_eq!(ListPath::parse(p.as_str()), Some(p));
        }
    }
}
