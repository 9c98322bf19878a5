//! An incremental `zfs send` stream: every changed chunk inside the volume, every record a
//! whole header of the input.

use super::Target;

pub(super) const TARGET: Target = Target {
    name: "zstream",
    run,
    seed_files: &["zstream"],
    builtin_seeds: &[include_bytes!("../../tests/fixtures/zfs/send-i.zstream")],
};

fn run(data: &[u8]) {
    let limit = 1u64 << 30;
    if let Ok((r, sum)) = crate::source::zfs::changed_chunks(data, 65536, limit, limit / 2) {
        assert!(r.chunks().all(|c| c < limit / 65536));
        // At least BEGIN and END, each a whole header of the input.
        assert!(sum.records >= 2 && sum.records as usize * 312 <= data.len());
    }
}
