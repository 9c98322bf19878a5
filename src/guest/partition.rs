//! Partition tables: MBR (with extended and logical partitions) and GPT, or none (the image is
//! one filesystem).
//!
//! Invariants:
//! * Bounded whatever the image claims: at most [`MAX_PARTS`] partitions, [`MAX_GPT_ENTRIES`]
//!   GPT entries of at most 4 KiB each, [`MAX_LOGICAL`] links of an extended partition's chain
//!   (and none visited twice).
//! * A GPT is used only when its header and entry array match their CRC32s; a damaged one is
//!   an error that says so (the backup header is not read), never a guess.
//! * Partitions are clipped to the image: a read through one never leaves it.
//! * An image whose first sector is a filesystem's boot sector (FAT and NTFS also end it with
//!   0x55AA) is that filesystem, not a table.

use std::sync::Arc;

use super::probe::{self, Content};
use super::{guest, Disk, Slice};
use crate::error::Result;

pub(crate) const MAX_PARTS: usize = 128;
pub(crate) const MAX_GPT_ENTRIES: u32 = 4096;
pub(crate) const MAX_LOGICAL: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Scheme {
    #[serde(rename = "none")]
    None,
    #[serde(rename = "mbr")]
    Mbr,
    #[serde(rename = "gpt")]
    Gpt,
}

#[derive(Clone, Debug)]
pub struct Partition {
    /// 1-4 primary, 5… logical (MBR); the entry's index + 1 (GPT).
    pub number: u32,
    /// Bytes from the start of the image.
    pub start: u64,
    pub len: u64,
    /// The table's type, named (`Linux filesystem`, `0x83 Linux`, …).
    pub type_name: String,
    /// GPT partition name (empty for MBR).
    pub name: String,
    pub content: Content,
}

impl Partition {
    /// `p1`, `p2`, …: its directory name.
    pub fn label(&self) -> String {
        format!("p{}", self.number)
    }
}

#[derive(Debug)]
pub struct Layout {
    scheme: Scheme,
    parts: Vec<Partition>,
    /// What the whole image holds when it has no table.
    whole: Content,
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn read(disk: &Arc<dyn Disk>, off: u64, len: usize) -> Result<Option<Vec<u8>>> {
    match off.checked_add(len as u64) {
        Some(end) if end <= disk.size() => {
            let mut b = vec![0u8; len];
            disk.read_exact_at(off, &mut b)?;
            Ok(Some(b))
        }
        _ => Ok(None),
    }
}

impl Layout {
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    pub(crate) fn is_table(&self) -> bool {
        self.scheme != Scheme::None
    }

    pub fn parts(&self) -> &[Partition] {
        &self.parts
    }

    pub fn whole(&self) -> &Content {
        &self.whole
    }

    /// Reads the table of `disk` (and probes what each partition holds).
    pub fn read(disk: &Arc<dyn Disk>) -> Result<Layout> {
        let whole = probe::probe(disk)?;
        let none = |whole| Layout {
            scheme: Scheme::None,
            parts: Vec::new(),
            whole,
        };
        let Some(mbr) = read(disk, 0, 512)? else {
            return Ok(none(whole));
        };
        if matches!(whole, Content::Fs(_)) || le16(&mbr, 510) != 0xAA55 {
            return Ok(none(whole));
        }
        let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..462 + 16 * i]).collect();
        // Boot flags other than 0x00/0x80 mean this is not a partition table.
        if entries.iter().any(|e| e[0] & 0x7f != 0) {
            return Ok(none(whole));
        }
        let (scheme, mut parts) = if entries.iter().any(|e| e[4] == 0xEE) {
            (Scheme::Gpt, gpt(disk)?)
        } else {
            (Scheme::Mbr, mbr_parts(disk, &entries)?)
        };
        if scheme == Scheme::Mbr && parts.is_empty() {
            return Ok(none(whole));
        }
        for p in &mut parts {
            if p.content != Content::Extended {
                let slice: Arc<dyn Disk> = Arc::new(Slice::new(disk.clone(), p.start, p.len));
                p.content = probe::probe(&slice)?;
            }
        }
        Ok(Layout {
            scheme,
            parts,
            whole: Content::Unknown,
        })
    }
}

fn mbr_type(t: u8) -> String {
    let name = match t {
        0x01 | 0x04 | 0x06 | 0x0b | 0x0c | 0x0e => "FAT",
        0x05 | 0x0f | 0x85 => "Extended",
        0x07 => "NTFS/exFAT",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8e => "Linux LVM",
        0xa5 | 0xa6 | 0xa9 => "BSD",
        0xef => "EFI System",
        0xfd => "Linux RAID",
        _ => "",
    };
    if name.is_empty() {
        format!("0x{t:02x}")
    } else {
        format!("0x{t:02x} {name}")
    }
}

fn is_extended(t: u8) -> bool {
    matches!(t, 0x05 | 0x0f | 0x85)
}

/// An MBR entry as (type, start, length) in bytes; `None` for an empty slot.
fn entry(e: &[u8], base: u64) -> Option<(u8, u64, u64)> {
    let (t, lba, count) = (e[4], le32(e, 8) as u64, le32(e, 12) as u64);
    (t != 0 && count != 0).then(|| (t, (base + lba) * 512, count * 512))
}

fn clip(disk: &Arc<dyn Disk>, start: u64, len: u64) -> Option<(u64, u64)> {
    let size = disk.size();
    (start < size).then(|| (start, len.min(size - start)))
}

fn mbr_parts(disk: &Arc<dyn Disk>, entries: &[&[u8]]) -> Result<Vec<Partition>> {
    let mut parts = Vec::new();
    let mut extended = None;
    for (i, e) in entries.iter().enumerate() {
        let Some((t, start, len)) = entry(e, 0) else {
            continue;
        };
        let Some((start, len)) = clip(disk, start, len) else {
            continue;
        };
        if is_extended(t) && extended.is_none() {
            extended = Some(start / 512);
        }
        parts.push(Partition {
            number: i as u32 + 1,
            start,
            len,
            type_name: mbr_type(t),
            name: String::new(),
            content: if is_extended(t) {
                Content::Extended
            } else {
                Content::Unknown
            },
        });
    }
    if let Some(ext) = extended {
        logical(disk, ext, &mut parts)?;
    }
    Ok(parts)
}

/// Follows the chain of extended boot records from the extended partition at sector `ext`.
fn logical(disk: &Arc<dyn Disk>, ext: u64, parts: &mut Vec<Partition>) -> Result<()> {
    let mut ebr = ext;
    let mut seen = Vec::new();
    let mut number = 5;
    for _ in 0..MAX_LOGICAL {
        if seen.contains(&ebr) || parts.len() >= MAX_PARTS {
            break;
        }
        seen.push(ebr);
        let Some(b) = read(disk, ebr * 512, 512)? else {
            break;
        };
        if le16(&b, 510) != 0xAA55 {
            break;
        }
        if let Some((t, start, len)) = entry(&b[446..462], ebr) {
            if let Some((start, len)) = clip(disk, start, len) {
                parts.push(Partition {
                    number,
                    start,
                    len,
                    type_name: mbr_type(t),
                    name: String::new(),
                    content: Content::Unknown,
                });
                number += 1;
            }
        }
        match entry(&b[462..478], ext) {
            Some((t, next, _)) if is_extended(t) => ebr = next / 512,
            _ => break,
        }
    }
    Ok(())
}

fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(b, 0),
        le16(b, 4),
        le16(b, 6),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

fn gpt_type(g: &str) -> String {
    let name = match g {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "933AC7E1-2EB4-4F13-B844-0E14E2AEF915" => "Linux home",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI System",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC" => "Windows recovery",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "CA7D7CCB-63ED-4C53-861C-1742536059CC" => "Linux LUKS",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "BC13C2FF-59E6-4262-A352-B275FD6F7172" => "Linux extended boot",
        _ => return g.to_string(),
    };
    name.to_string()
}

fn gpt(disk: &Arc<dyn Disk>) -> Result<Vec<Partition>> {
    let damaged = |what: &str| guest("partition table", format!("the GPT {what}"));
    let mut found = None;
    for sector in [512u64, 4096] {
        if let Some(h) = read(disk, sector, sector as usize)? {
            if h.starts_with(b"EFI PART") {
                found = Some((sector, h));
                break;
            }
        }
    }
    let Some((sector, h)) = found else {
        return Err(damaged(
            "header is missing (the protective MBR names one): the table is damaged",
        ));
    };
    let hs = le32(&h, 12) as usize;
    if hs < 92 || hs > h.len() {
        return Err(damaged("header has an impossible size"));
    }
    let mut hdr = h[..hs].to_vec();
    hdr[16..20].fill(0);
    if crc32fast::hash(&hdr) != le32(&h, 16) {
        return Err(damaged(
            "header fails its CRC32: the table is damaged (wyng does not read the backup header)",
        ));
    }
    let (entries_lba, count, esize) = (le64(&h, 72), le32(&h, 80), le32(&h, 84));
    if count > MAX_GPT_ENTRIES || !(128..=4096).contains(&esize) || esize % 8 != 0 {
        return Err(damaged("header claims an impossible entry array"));
    }
    let bytes = count as usize * esize as usize;
    let Some(array) = entries_lba
        .checked_mul(sector)
        .map(|o| read(disk, o, bytes))
        .transpose()?
        .flatten()
    else {
        return Err(damaged("entry array lies beyond the image"));
    };
    if crc32fast::hash(&array) != le32(&h, 88) {
        return Err(damaged("entry array fails its CRC32: the table is damaged"));
    }
    let mut parts = Vec::new();
    for (i, e) in array.chunks_exact(esize as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        if last < first || parts.len() >= MAX_PARTS {
            continue;
        }
        let (Some(start), Some(len)) = (
            first.checked_mul(sector),
            (last - first)
                .checked_add(1)
                .and_then(|n| n.checked_mul(sector)),
        ) else {
            continue;
        };
        let Some((start, len)) = clip(disk, start, len) else {
            continue;
        };
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        parts.push(Partition {
            number: i as u32 + 1,
            start,
            len,
            type_name: gpt_type(&guid(&e[..16])),
            name: String::from_utf16_lossy(&name),
            content: Content::Unknown,
        });
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::Bytes;

    fn mbr_with(entries: &[(u8, u32, u32)], size: usize) -> Vec<u8> {
        let mut v = vec![0u8; size];
        for (i, (t, lba, n)) in entries.iter().enumerate() {
            let e = 446 + 16 * i;
            v[e + 4] = *t;
            v[e + 8..e + 12].copy_from_slice(&lba.to_le_bytes());
            v[e + 12..e + 16].copy_from_slice(&n.to_le_bytes());
        }
        v[510] = 0x55;
        v[511] = 0xAA;
        v
    }

    #[test]
    fn mbr_primary_and_a_looping_logical_chain() {
        // p1 at sector 2, an extended partition at 10 whose EBR points at itself.
        let mut v = mbr_with(&[(0x83, 2, 4), (0x05, 10, 20)], 64 * 512);
        let ebr = 10 * 512;
        v[ebr + 446 + 4] = 0x83;
        v[ebr + 446 + 8..ebr + 446 + 12].copy_from_slice(&1u32.to_le_bytes());
        v[ebr + 446 + 12..ebr + 446 + 16].copy_from_slice(&2u32.to_le_bytes());
        v[ebr + 462 + 4] = 0x05;
        v[ebr + 462 + 8..ebr + 462 + 12].copy_from_slice(&0u32.to_le_bytes());
        v[ebr + 462 + 12..ebr + 462 + 16].copy_from_slice(&1u32.to_le_bytes());
        v[ebr + 510] = 0x55;
        v[ebr + 511] = 0xAA;
        let d: Arc<dyn Disk> = Arc::new(Bytes(v));
        let l = Layout::read(&d).unwrap();
        assert_eq!(l.scheme(), Scheme::Mbr);
        let labels: Vec<String> = l.parts().iter().map(|p| p.label()).collect();
        assert_eq!(labels, ["p1", "p2", "p5"]);
        assert_eq!(l.parts()[2].start, 11 * 512);
        assert_eq!(l.parts()[1].content, Content::Extended);
    }

    #[test]
    fn partitions_are_clipped_to_the_image() {
        let v = mbr_with(&[(0x83, 2, u32::MAX), (0x83, u32::MAX, 5)], 8 * 512);
        let d: Arc<dyn Disk> = Arc::new(Bytes(v));
        let l = Layout::read(&d).unwrap();
        assert_eq!(l.parts().len(), 1);
        assert_eq!(l.parts()[0].len, 6 * 512);
    }

    #[test]
    fn a_damaged_gpt_is_an_error() {
        let mut v = mbr_with(&[(0xEE, 1, 100)], 128 * 512);
        v[512..520].copy_from_slice(b"EFI PART");
        v[512 + 12..512 + 16].copy_from_slice(&92u32.to_le_bytes());
        let d: Arc<dyn Disk> = Arc::new(Bytes(v));
        let e = Layout::read(&d).unwrap_err().to_string();
        assert!(e.contains("CRC32"), "{e}");
    }

    #[test]
    fn no_table_is_one_filesystem() {
        let d: Arc<dyn Disk> = Arc::new(Bytes(vec![0u8; 4096]));
        let l = Layout::read(&d).unwrap();
        assert!(!l.is_table());
        assert_eq!(*l.whole(), Content::Empty);
    }
}
