//! Every filesystem of a sparse disk image (ext2/3/4, FAT, NTFS), opened and walked within fixed
//! bounds. Seeds: tests/fixtures/fuzz/guest_fs/ (real images, encoded by `SparseDisk::encode`).

use super::guest::{walk_fs, SparseDisk};
use super::Target;

pub(super) const TARGET: Target = Target {
    name: "guest_fs",
    run,
    seed_files: &[],
    builtin_seeds: &[],
};

/// Opens every filesystem of the image (each partition's, or the whole image's) and walks
/// it: lists, stats, reads links and the start of files, within fixed bounds.
fn run(data: &[u8]) {
    let disk: std::sync::Arc<dyn crate::guest::Disk> = std::sync::Arc::new(SparseDisk::parse(data));
    let Ok(image) = crate::guest::Image::open(disk) else {
        return;
    };
    let parts: Vec<Option<usize>> = if image.layout().is_table() {
        (0..image.layout().parts().len()).map(Some).collect()
    } else {
        vec![None]
    };
    for part in parts {
        if let Ok(fs) = image.filesystem(part) {
            walk_fs(fs.as_ref());
        }
    }
}
