//! A partition table (MBR, GPT) from a sparse disk image: every partition inside the image, at
//! most the reader's limit of them. Seeds: tests/fixtures/fuzz/guest_partition/ (real images,
//! encoded by `SparseDisk::encode`).

use super::guest::SparseDisk;
use super::Target;

pub(super) const TARGET: Target = Target {
    name: "guest_partition",
    run,
    seed_files: &[],
    builtin_seeds: &[],
};

fn run(data: &[u8]) {
    let disk: std::sync::Arc<dyn crate::guest::Disk> = std::sync::Arc::new(SparseDisk::parse(data));
    if let Ok(l) = crate::guest::partition::Layout::read(&disk) {
        assert!(l.parts().len() <= crate::guest::partition::MAX_PARTS);
        for p in l.parts() {
            assert!(
                p.start + p.len <= disk.size(),
                "a partition inside the image"
            );
        }
    }
}
