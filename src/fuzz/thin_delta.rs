//! The XML of `thin_delta`: every changed chunk inside the volume.

use super::{text, Target};

pub(super) const TARGET: Target = Target {
    name: "thin_delta",
    run,
    seed_files: &["thin_delta"],
    builtin_seeds: &[
        b"<superblock uuid=\"\" time=\"0\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"0\"><diff left=\"1\" right=\"2\"><different begin=\"0\" length=\"1\"/><right_only begin=\"100\" length=\"3\"/><left_only begin=\"2000\" length=\"1\"/></diff></superblock>",
    ],
};

fn run(data: &[u8]) {
    if let Ok(r) = crate::source::lvm_thin::parse_thin_delta(&text(data), 65536, 1 << 30, 1 << 29) {
        assert!(r.chunks().all(|c| c < (1 << 30) / 65536));
    }
}
