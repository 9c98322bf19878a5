//! The output of `lvs`.

use super::{text, Target};

pub(super) const TARGET: Target = Target {
    name: "lvs",
    run,
    seed_files: &["lvs"],
    builtin_seeds: &[
        b"  vg0::pool0::twi-aotz--::10737418240::::::::1700000000\n  vg0::vm-a::Vwi-a-tz--::2147483648::pool0::3::wyng,arch-x::1700000100\n",
    ],
};

fn run(data: &[u8]) {
    let _ = crate::source::lvm_thin::parse_lvs(&text(data));
}
