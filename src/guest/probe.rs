//! What a partition (or a whole image) holds, from the signatures at its start: a filesystem
//! wyng reads, or something it names in one line with what to do instead.
//!
//! Invariant: probing reads at most the first 68 KiB of the disk (in small reads), whatever it
//! holds; an unreadable start is an error, never a guess.

use std::sync::Arc;

use super::Disk;
use crate::error::Result;

/// A filesystem wyng reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fs {
    Ext,
    Fat,
    Ntfs,
}

/// What a disk holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Fs(Fs),
    /// Named, but not read by wyng: XFS, Btrfs, LUKS, LVM2 PV, swap, ...
    Other(&'static str),
    /// Nothing but zeros where signatures would be.
    Empty,
    /// An extended partition (the container of logical partitions, listed on their own).
    Extended,
    Unknown,
}

impl Content {
    /// The name `files ls /` shows.
    pub fn name(&self) -> &'static str {
        match self {
            Content::Fs(Fs::Ext) => "ext2/3/4",
            Content::Fs(Fs::Fat) => "FAT",
            Content::Fs(Fs::Ntfs) => "NTFS",
            Content::Other(n) => n,
            Content::Empty => "empty",
            Content::Extended => "extended",
            Content::Unknown => "unknown",
        }
    }

    /// One line: why its files cannot be listed, and what to do instead.
    pub fn unreadable(&self) -> String {
        let instead =
            "to read it, loop-mount the session image inside a VM (wyng mount, see docs/mount.md)";
        match self {
            Content::Fs(_) => "a filesystem wyng reads".into(),
            Content::Other(n) => format!(
                "holds {n}, which wyng does not read (it reads ext2/3/4, FAT and NTFS); {instead}"
            ),
            Content::Empty => "holds no filesystem (only zeros at its start)".into(),
            Content::Extended => {
                "is an extended partition: its logical partitions are listed on their own".into()
            }
            Content::Unknown => format!(
                "holds no filesystem wyng recognises (it reads ext2/3/4, FAT and NTFS); {instead}"
            ),
        }
    }
}

fn at<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off + N).and_then(|s| s.try_into().ok())
}

fn le16(b: &[u8], off: usize) -> u16 {
    at::<2>(b, off).map_or(0, u16::from_le_bytes)
}

fn le32(b: &[u8], off: usize) -> u32 {
    at::<4>(b, off).map_or(0, u32::from_le_bytes)
}

/// Reads up to `len` bytes from `off` (fewer at the end of the disk).
fn head(disk: &Arc<dyn Disk>, off: u64, len: usize) -> Result<Vec<u8>> {
    let size = disk.size();
    if off >= size {
        return Ok(Vec::new());
    }
    let n = ((size - off) as usize).min(len);
    let mut b = vec![0u8; n];
    disk.read_exact_at(off, &mut b)?;
    Ok(b)
}

/// Whether a sector is a FAT boot sector (its BIOS parameter block is plausible).
pub(crate) fn is_fat_boot(b: &[u8]) -> bool {
    let bps = le16(b, 11);
    let spc = b.get(13).copied().unwrap_or(0);
    let reserved = le16(b, 14);
    let fats = b.get(16).copied().unwrap_or(0);
    let jump = matches!(b.first(), Some(0xEB) | Some(0xE9));
    let label = at::<3>(b, 54) == Some(*b"FAT") || at::<3>(b, 82) == Some(*b"FAT");
    jump && label
        && bps.is_power_of_two()
        && (512..=4096).contains(&bps)
        && spc.is_power_of_two()
        && reserved > 0
        && (1..=2).contains(&fats)
        && le16(b, 510) == 0xAA55
}

/// Whether a sector is an NTFS boot sector.
pub(crate) fn is_ntfs_boot(b: &[u8]) -> bool {
    at::<8>(b, 3) == Some(*b"NTFS    ")
}

/// What `disk` holds, from its first 68 KiB.
pub fn probe(disk: &Arc<dyn Disk>) -> Result<Content> {
    let start = head(disk, 0, 8192)?;
    if start.is_empty() {
        return Ok(Content::Empty);
    }
    if le16(&start, 1024 + 56) == 0xEF53 {
        return Ok(Content::Fs(Fs::Ext));
    }
    if is_ntfs_boot(&start) {
        return Ok(Content::Fs(Fs::Ntfs));
    }
    if is_fat_boot(&start) {
        return Ok(Content::Fs(Fs::Fat));
    }
    if start.starts_with(b"XFSB") {
        return Ok(Content::Other("XFS"));
    }
    if start.starts_with(b"LUKS\xba\xbe") || start.starts_with(b"SKUL\xba\xbe") {
        return Ok(Content::Other("LUKS (encrypted)"));
    }
    for sector in 0..4 {
        let o = sector * 512;
        if at::<8>(&start, o) == Some(*b"LABELONE") && at::<8>(&start, o + 24) == Some(*b"LVM2 001")
        {
            return Ok(Content::Other("an LVM2 physical volume"));
        }
    }
    for page in [4096usize, 8192] {
        if let Some(sig) = start.get(page.saturating_sub(10)..page) {
            if sig == b"SWAPSPACE2" || sig == b"SWAP-SPACE" {
                return Ok(Content::Other("Linux swap"));
            }
        }
    }
    if le32(&start, 0) == 0x00bab10c || at::<4>(&start, 0) == Some(*b"\x0c\xb1\xba\x00") {
        return Ok(Content::Other("ZFS"));
    }
    let btrfs = head(disk, 0x10040, 8)?;
    if btrfs == b"_BHRfS_M" {
        return Ok(Content::Other("Btrfs"));
    }
    if start.starts_with(b"\xc6\x85\x73\xf6\x4e\x1a\x45\xca") {
        return Ok(Content::Other("bcachefs"));
    }
    if start.iter().all(|&b| b == 0) && head(disk, 8192, 64 << 10)?.iter().all(|&b| b == 0) {
        return Ok(Content::Empty);
    }
    Ok(Content::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::Bytes;

    fn disk(f: impl FnOnce(&mut Vec<u8>)) -> Arc<dyn Disk> {
        let mut v = vec![0u8; 1 << 17];
        f(&mut v);
        Arc::new(Bytes(v))
    }

    #[test]
    fn signatures_are_named() {
        assert_eq!(
            probe(&disk(|v| v[..4].copy_from_slice(b"XFSB"))).unwrap(),
            Content::Other("XFS")
        );
        assert_eq!(
            probe(&disk(|v| v[..6].copy_from_slice(b"LUKS\xba\xbe"))).unwrap(),
            Content::Other("LUKS (encrypted)")
        );
        assert_eq!(
            probe(&disk(|v| v[0x10040..0x10048].copy_from_slice(b"_BHRfS_M"))).unwrap(),
            Content::Other("Btrfs")
        );
        assert_eq!(
            probe(&disk(|v| v[4086..4096].copy_from_slice(b"SWAPSPACE2"))).unwrap(),
            Content::Other("Linux swap")
        );
        assert_eq!(
            probe(&disk(|v| {
                v[512..520].copy_from_slice(b"LABELONE");
                v[536..544].copy_from_slice(b"LVM2 001");
            }))
            .unwrap(),
            Content::Other("an LVM2 physical volume")
        );
        assert_eq!(probe(&disk(|_| {})).unwrap(), Content::Empty);
        assert_eq!(probe(&disk(|v| v[100] = 1)).unwrap(), Content::Unknown);
        assert_eq!(
            probe(&disk(|v| v[1080..1082].copy_from_slice(&[0x53, 0xEF]))).unwrap(),
            Content::Fs(Fs::Ext)
        );
        assert_eq!(
            probe(&(Arc::new(Bytes(vec![])) as Arc<dyn Disk>)).unwrap(),
            Content::Empty
        );
        assert!(Content::Other("XFS").unreadable().contains("docs/mount.md"));
    }
}
