//! Disk images for the guest targets: a sparse encoding of a whole image in a small input, and a
//! bounded walk of a filesystem.

/// A disk image from fuzz input: `[sectors: u32 LE]` then `[sector: u32 LE][512 bytes]`…,
/// every other sector zero. Sparse, so a small input describes a whole filesystem (the seeds
/// are real images made by mke2fs, mkfs.vfat, mkntfs and sfdisk, encoded so).
pub struct SparseDisk {
    size: u64,
    sectors: std::collections::BTreeMap<u64, Vec<u8>>,
}

/// The largest image a fuzz input describes (64 MiB).
const MAX_SECTORS: u32 = 1 << 17;

impl SparseDisk {
    pub fn parse(data: &[u8]) -> SparseDisk {
        let n = data
            .get(..4)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .min(MAX_SECTORS) as u64;
        let mut sectors = std::collections::BTreeMap::new();
        for rec in data.get(4..).unwrap_or(&[]).chunks(516) {
            if rec.len() < 5 {
                break;
            }
            let at = u32::from_le_bytes(rec[..4].try_into().expect("4 bytes")) as u64;
            if at < n {
                let mut s = rec[4..].to_vec();
                s.resize(512, 0);
                sectors.insert(at, s);
            }
        }
        SparseDisk {
            size: n * 512,
            sectors,
        }
    }
}

impl crate::guest::Disk for SparseDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> crate::error::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| crate::error::Error::Guest {
                path: "fuzz".into(),
                what: "past the end".into(),
            })?;
        buf.fill(0);
        for (&s, data) in self.sectors.range(offset / 512..end.div_ceil(512)) {
            let (from, to) = ((s * 512).max(offset), ((s + 1) * 512).min(end));
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&data[(from - s * 512) as usize..(to - s * 512) as usize]);
        }
        Ok(())
    }
}

pub(super) fn walk_fs(fs: &dyn crate::guest::GuestFs) {
    use crate::guest::{GuestPath, Kind};
    let mut todo = vec![GuestPath::root()];
    let mut budget = 400usize;
    let mut buf = vec![0u8; 8192];
    while let Some(dir) = todo.pop() {
        let _ = fs.stat(&dir);
        let mut children = Vec::new();
        let _ = fs.list(&dir, &mut |e| {
            budget = budget.saturating_sub(1);
            if let (Ok(p), Ok(st)) = (dir.join(&e.name), e.stat) {
                children.push((p, st));
            }
            Ok(budget > 0)
        });
        for (p, st) in children {
            match st.kind {
                Kind::Dir if todo.len() < 64 => todo.push(p),
                Kind::Symlink => {
                    if let Ok(t) = fs.read_link(&p) {
                        assert!(t.len() as u64 <= crate::guest::MAX_LINK);
                    }
                }
                Kind::File => {
                    if let Ok(n) = fs.read_at(&p, 0, &mut buf) {
                        assert!(n <= buf.len());
                    }
                    let _ = fs.read_at(&p, st.size.saturating_sub(100), &mut buf[..100]);
                }
                _ => {}
            }
        }
        if budget == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest seeds are real filesystems the readers list (so their mutations explore
    /// the readers, not only the first check that fails).
    #[test]
    fn guest_seeds_are_readable_filesystems() {
        let dir = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fuzz/guest_fs"
        ));
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            // Findings (`found-*`) are damaged on purpose.
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("found-"))
            {
                continue;
            }
            let disk: std::sync::Arc<dyn crate::guest::Disk> =
                std::sync::Arc::new(SparseDisk::parse(&std::fs::read(&p).unwrap()));
            let image = crate::guest::Image::open(disk).unwrap();
            let part = image.layout().is_table().then_some(0);
            let fs = image.filesystem(part).unwrap();
            let mut n = 0;
            fs.list(&crate::guest::GuestPath::root(), &mut |_| {
                n += 1;
                Ok(true)
            })
            .unwrap();
            assert!(n >= 1, "{}", p.display());
            names.push(fs.kind());
        }
        names.sort();
        assert_eq!(names, ["ext4", "ext4", "ext4", "ext4", "ntfs", "vfat"]);
    }
}
