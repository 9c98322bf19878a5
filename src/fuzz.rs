//! Fuzz targets: every parser of input that comes from an archive, local state, a tool's output
//! or the remote side, each as a function of raw bytes.
//!
//! The rule every target checks: no panic, and no allocation beyond a bound set by the bytes
//! actually present (or by the parser's own fixed limit), never by a size the input claims.
//! Where a parser has a serializer, what it accepts must also survive a round trip.
//!
//! The same targets run two ways:
//! * `fuzz/` (cargo-fuzz, libFuzzer, coverage-guided; `scripts/fuzz.sh MINUTES`), with
//!   libFuzzer's `-malloc_limit_mb` enforcing the allocation rule;
//! * the unit test below, on stable, over seeds from the fixtures and deterministic mutations
//!   of them, with a counting allocator enforcing the same rule. It runs in every `cargo test`.

use std::io::BufRead;
use std::path::Path;

use crate::codec::{Compression, Compressor};
use crate::format::info::SessionInfo;
use crate::format::ini::{self, ArchiveIni};
use crate::format::journal::{Journal, ListPath, MergeList};
use crate::format::manifest::LineReader;
use crate::format::volinfo::VolInfo;
use crate::format::{Hash32, SessionName, VolumeId};

/// One fuzz target.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Fixture files (by name) whose contents seed it.
    pub seed_files: &'static [&'static str],
}

/// The largest output the targets let a decompressor produce.
const MAX_OUT: usize = 1 << 20;

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

fn archive_ini(data: &[u8]) {
    if let Ok((_, body)) = ini::parse_header(data) {
        if let Ok(t) = crate::codec::gunzip(body, MAX_OUT) {
            root_text(&text(&t));
        }
    }
    root_text(&text(data));
}

fn root_text(t: &str) {
    if let Ok(r) = ArchiveIni::parse(t) {
        let again = ArchiveIni::parse(&r.to_text()).expect("a parsed root re-parses");
        assert_eq!(again.to_text(), r.to_text(), "root round trip");
    }
}

fn salt(data: &[u8]) {
    for b in [data.to_vec(), crate::crypto::SaltFile::inverted(data)] {
        if let Ok(s) = crate::crypto::SaltFile::parse(&b) {
            let again = crate::crypto::SaltFile::parse(&s.to_bytes()).expect("re-parses");
            assert_eq!(again.to_bytes(), s.to_bytes(), "salt round trip");
        }
    }
}

fn volinfo(data: &[u8]) {
    if let Ok(v) = VolInfo::parse(&text(data), "volinfo") {
        let again = VolInfo::parse(&v.to_text(), "volinfo").expect("a parsed volinfo re-parses");
        assert_eq!(again, v, "volinfo round trip");
    }
}

fn info(data: &[u8]) {
    if let Ok(i) = SessionInfo::parse(&text(data), "info") {
        let again = SessionInfo::parse(&i.to_text(), "info").expect("a parsed info re-parses");
        assert_eq!(again, i, "info round trip");
    }
}

/// A leading control byte and the byte after it choose the chunk size and the volume size the
/// lines are read against; otherwise 64 KiB chunks in a 1 TiB volume (every fixture fits).
fn geometry(data: &[u8]) -> (u64, u64, &[u8]) {
    match data {
        [a, b, rest @ ..] if *a < 0x20 => (
            32768 << (1 + (*a % 6)),
            (*b as u64 + 1) << (10 + (*a >> 3) as u64 * 6),
            rest,
        ),
        _ => (65536, 1 << 40, data),
    }
}

fn read_lines(r: impl BufRead, cs: u64, volsize: u64) {
    let mut last = None;
    for e in LineReader::new(r, cs, volsize, "manifest") {
        match e {
            Ok((idx, _)) => {
                assert!(last.is_none_or(|l| idx > l), "ascending");
                assert!(
                    idx * cs < volsize.max(1),
                    "within the volume: {idx} {cs} {volsize}"
                );
                last = Some(idx);
            }
            Err(_) => break,
        }
    }
}

fn manifest(data: &[u8]) {
    let (cs, volsize, rest) = geometry(data);
    read_lines(rest, cs, volsize);
    if let Ok(v) = crate::format::manifest::parse_lines(rest, cs, volsize, "manifest") {
        assert!(v.windows(2).all(|w| w[0].0 < w[1].0));
    }
}

fn manifest_z(data: &[u8]) {
    let (cs, volsize, rest) = geometry(data);
    for kind in [Compression::Zstd, Compression::Zlib, Compression::Bz2] {
        let c = Compressor::new(kind, kind.level_range().0.max(1)).expect("level in range");
        if let Ok(out) = c.decompress(rest, MAX_OUT) {
            assert!(out.len() <= MAX_OUT);
        }
        let input: Box<dyn BufRead + Send> = Box::new(std::io::Cursor::new(rest.to_vec()));
        if let Ok(r) = c.decompress_reader(input) {
            // Bounded by what the lines may hold: at most one line buffered at a time.
            read_lines(std::io::Read::take(r, (MAX_OUT as u64) * 4), cs, volsize);
        }
    }
}

fn journal(data: &[u8]) {
    let t = text(data);
    // The journal's items as the root holds them (`key = value` lines of its [in_process]).
    let items: Vec<(String, String)> = t
        .lines()
        .take(64)
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    {
        if let Ok(Some(j)) = Journal::parse(&items) {
            let again = Journal::parse(&j.to_items()).expect("a parsed journal re-parses");
            assert_eq!(again.map(|a| a.to_items()), Some(j.to_items()));
        }
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

fn deltamap(data: &[u8]) {
    let (count, rest) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) as u64 * 8, rest),
        _ => (64, data),
    };
    let m = crate::source::deltamap::DeltaMap::from_bytes(rest.to_vec());
    let n = m.count(count);
    let chunks = m.chunks(count);
    assert_eq!(chunks.len() as u64, n);
}

fn lvs(data: &[u8]) {
    let _ = crate::source::lvm::parse_lvs(&text(data));
}

fn thin_delta(data: &[u8]) {
    if let Ok(r) = crate::source::lvm::parse_thin_delta(&text(data), 65536, 1 << 30, 1 << 29) {
        assert!(r.chunks().all(|c| c < (1 << 30) / 65536));
    }
}

fn zstream(data: &[u8]) {
    let limit = 1u64 << 30;
    if let Ok((r, sum)) = crate::source::zfs::changed_chunks(data, 65536, limit, limit / 2) {
        assert!(r.chunks().all(|c| c < limit / 65536));
        // At least BEGIN and END, each a whole header of the input.
        assert!(sum.records >= 2 && sum.records as usize * 312 <= data.len());
    }
}

fn config(data: &[u8]) {
    let _ = crate::format::ini::parse_configparser(&text(data));
}

fn remote(data: &[u8]) {
    let _ = crate::dest::remote::shell::read_status(&mut &data[..]);
    let _ = crate::dest::remote::shell::read_framed(&mut &data[..]);
    let _ = crate::dest::remote::parse_df_available(&text(data));
}

fn vols_from(data: &[u8]) {
    let _ = crate::ops::vols_from::parse(&text(data));
}

fn names(data: &[u8]) {
    for part in text(data).split(['\n', ' ', '/']).take(256) {
        if let Some(s) = SessionName::parse(part) {
            assert_eq!(SessionName::parse(s.as_str()).as_ref(), Some(&s));
        }
        let _ = SessionName::from_user(part);
        if let Some(v) = VolumeId::parse(part) {
            assert_eq!(v.as_str(), part);
        }
        if let Some(h) = Hash32::parse_b64(part) {
            assert_eq!(Hash32::parse_b64(&h.to_b64()), Some(h));
        }
        let _ = crate::format::ids::check_volume_name(part);
        let _ = crate::size::parse(part);
    }
}

/// What an NBD client sends: its flags, options (each re-encoded and parsed again), then
/// request headers.
fn nbd(data: &[u8]) {
    use crate::nbd::handshake::{ClientFlags, Opt, OptionHeader};
    use crate::nbd::transmission::{ReplyHeader, Request};
    let mut rest = data;
    if let Some((f, r)) = rest.split_first_chunk::<4>() {
        if let Ok(c) = ClientFlags::parse(*f) {
            assert_eq!(c.to_bytes(), *f, "client flags round trip");
        }
        rest = r;
    }
    while let Some((h, r)) = rest.split_first_chunk::<{ OptionHeader::LEN }>() {
        let Ok(h) = OptionHeader::parse(h) else {
            break;
        };
        let (d, r) = r.split_at((h.length as usize).min(r.len()));
        if let Ok(o) = Opt::parse(h.option, d) {
            let b = o.to_bytes();
            let h2 = OptionHeader::parse(b[..OptionHeader::LEN].try_into().expect("a header"))
                .expect("an option re-parses");
            assert_eq!(
                Opt::parse(h2.option, &b[OptionHeader::LEN..]).as_ref(),
                Ok(&o),
                "option round trip"
            );
        }
        rest = r;
    }
    for r in rest.chunks_exact(Request::LEN) {
        if let Ok(q) = Request::parse(r.try_into().expect("a request")) {
            assert_eq!(Request::parse(&q.to_bytes()), Ok(q), "request round trip");
        }
        let _ = ReplyHeader::parse(r);
    }
}

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

    /// The encoding of a whole image (its non-zero sectors).
    pub fn encode(image: &[u8]) -> Vec<u8> {
        let n = image.len().div_ceil(512) as u32;
        let mut out = n.to_le_bytes().to_vec();
        for (i, s) in image.chunks(512).enumerate() {
            if s.iter().any(|&b| b != 0) {
                out.extend_from_slice(&(i as u32).to_le_bytes());
                out.extend_from_slice(s);
                out.resize(out.len() + 512 - s.len(), 0);
            }
        }
        out
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

fn guest_partition(data: &[u8]) {
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

/// Opens every filesystem of the image (each partition's, or the whole image's) and walks
/// it: lists, stats, reads links and the start of files, within fixed bounds.
fn guest_fs(data: &[u8]) {
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

fn walk_fs(fs: &dyn crate::guest::GuestFs) {
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

pub const TARGETS: &[Target] = &[
    Target {
        name: "archive_ini",
        run: archive_ini,
        seed_files: &["archive.ini"],
    },
    Target {
        name: "salt",
        run: salt,
        seed_files: &["archive.salt"],
    },
    Target {
        name: "volinfo",
        run: volinfo,
        seed_files: &["volinfo"],
    },
    Target {
        name: "info",
        run: info,
        seed_files: &["info"],
    },
    Target {
        name: "manifest",
        run: manifest,
        seed_files: &["manifest"],
    },
    Target {
        name: "manifest_z",
        run: manifest_z,
        seed_files: &["manifest.z"],
    },
    Target {
        name: "journal",
        run: journal,
        seed_files: &["journal", "merge.lst"],
    },
    Target {
        name: "deltamap",
        run: deltamap,
        seed_files: &["deltamap"],
    },
    Target {
        name: "lvs",
        run: lvs,
        seed_files: &["lvs"],
    },
    Target {
        name: "thin_delta",
        run: thin_delta,
        seed_files: &["thin_delta"],
    },
    Target {
        name: "zstream",
        run: zstream,
        seed_files: &["zstream"],
    },
    Target {
        name: "config",
        run: config,
        seed_files: &["wyng.ini"],
    },
    Target {
        name: "remote",
        run: remote,
        seed_files: &["remote"],
    },
    Target {
        name: "vols_from",
        run: vols_from,
        seed_files: &["vols-from.json"],
    },
    Target {
        name: "names",
        run: names,
        seed_files: &["names"],
    },
    Target {
        name: "nbd",
        run: nbd,
        seed_files: &[],
    },
    // Seeds: tests/fixtures/fuzz/<name>/ (real images, encoded by `SparseDisk::encode`).
    Target {
        name: "guest_partition",
        run: guest_partition,
        seed_files: &[],
    },
    Target {
        name: "guest_fs",
        run: guest_fs,
        seed_files: &[],
    },
];

/// The target of this name.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Seeds for a target: the files it names under `fixtures` (the fixture archives), plus
/// hand-made ones for tool output and local files.
pub fn seeds(t: &Target, fixtures: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack = vec![fixtures.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| t.seed_files.contains(&n))
            {
                out.push(std::fs::read(&p).unwrap());
            }
        }
    }
    out.extend(builtin_seeds(t.name).into_iter().map(|s| s.to_vec()));
    out
}

fn builtin_seeds(name: &str) -> Vec<&'static [u8]> {
    match name {
        "manifest" => vec![
            b"\x01\x20 0 x0000000000000000\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= x0000000000010000\n",
        ],
        "journal" => vec![
            b"in_process = merge\nvid = Vol_1e08b7\n",
            b"S_20261123-153256 S_20261123-153257\nS_20261123-153257\n###\nrename S_20261123-153257/000000000/x0000000000000000 S_20261123-153256/000000000/x0000000000000000\n-rm S_20261123-153257\n",
        ],
        "deltamap" => vec![b"\x10\x00\x01\x80\x00\xff\x00\x00\x00\x00\x00\x00\x00\x00\x10"],
        "lvs" => vec![
            b"  vg0::pool0::twi-aotz--::10737418240::::::::1700000000\n  vg0::vm-a::Vwi-a-tz--::2147483648::pool0::3::wyng,arch-x::1700000100\n",
        ],
        "thin_delta" => vec![
            b"<superblock uuid=\"\" time=\"0\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"0\"><diff left=\"1\" right=\"2\"><different begin=\"0\" length=\"1\"/><right_only begin=\"100\" length=\"3\"/><left_only begin=\"2000\" length=\"1\"/></diff></superblock>",
        ],
        "zstream" => vec![include_bytes!("../tests/fixtures/zfs/send-i.zstream")],
        "config" => vec![
            b"[var-global-default]\ndest = file:/mnt/backup\nlocal = /var/lib/images\nvolume =\n  a.img\n  b.img\n",
        ],
        "remote" => vec![
            b"\n__WYNG_OK\n",
            b"\n__WYNG_ERR 1 5\nerror",
            b"12\nhello world!\n__WYNG_OK\n",
            b"Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/sda1 100 50 50 50% /\n",
        ],
        "vols_from" => vec![br#"{"/var/lib/images": [["a.img", null], "b.img"], "": ["c"]}"#],
        "names" => vec![
            b"S_20261123-153256 Vol_1e08b7 20261123-153256 vm/disk1.img 1G 64K AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ],
        "nbd" => vec![
            // Client flags; LIST; GO "vol" asking for the block size; SET_META_CONTEXT
            // base:allocation; a read request.
            b"\0\0\0\x03IHAVEOPT\0\0\0\x03\0\0\0\0IHAVEOPT\0\0\0\x07\0\0\0\x0b\0\0\0\x03vol\0\x01\0\x03IHAVEOPT\0\0\0\x0a\0\0\0\x1e\0\0\0\x03vol\0\0\0\x01\0\0\0\x0fbase:allocation\x25\x60\x95\x13\0\0\0\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\x10\0\0\0\x10\0",
            b"\0\0\0\x01IHAVEOPT\0\0\0\x01\0\0\0\x07vm1.img",
        ],
        _ => Vec::new(),
    }
}

/// A deterministic mutator (for the stable run): bit flips, truncations, insertions,
/// duplications and boundary values, chosen by a xorshift generator.
pub fn mutate(seed: &[u8], mut state: u64, rounds: usize) -> Vec<u8> {
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut d = seed.to_vec();
    for _ in 0..rounds {
        let r = next();
        let at = if d.is_empty() {
            0
        } else {
            (r >> 8) as usize % d.len()
        };
        match r % 8 {
            0 if !d.is_empty() => d[at] ^= 1 << ((r >> 3) % 8),
            1 => d.truncate(at),
            2 => d.insert(at, (r >> 40) as u8),
            3 if !d.is_empty() => {
                let len = ((r >> 20) as usize % 32).min(d.len() - at);
                let piece = d[at..at + len].to_vec();
                d.splice(at..at, piece);
            }
            4 if !d.is_empty() => {
                d[at] = [0, 0xff, b'\n', b'=', b' ', b'0', b'9', b'x'][(r >> 33) as usize % 8]
            }
            5 => {
                let digits = ["18446744073709551615", "-1", "99999999999999999999", "0"];
                let s = digits[(r >> 35) as usize % digits.len()];
                d.splice(at..at, s.bytes());
            }
            6 if at + 1 < d.len() => d.swap(at, at + 1),
            _ => {
                if !d.is_empty() {
                    d.remove(at);
                }
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::path::PathBuf;

    /// Counts the largest single allocation of the current thread while a target runs.
    struct Counting;

    thread_local! {
        static PEAK: Cell<usize> = const { Cell::new(0) };
        static WATCH: Cell<bool> = const { Cell::new(false) };
    }

    // SAFETY: forwards to the system allocator; the bookkeeping touches only const-initialised
    // thread-locals (no allocation, no re-entry).
    unsafe impl std::alloc::GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
            note(l.size());
            unsafe { std::alloc::System.alloc(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
            unsafe { std::alloc::System.dealloc(p, l) }
        }
        unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
            note(l.size());
            unsafe { std::alloc::System.alloc_zeroed(l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
            note(n);
            unsafe { std::alloc::System.realloc(p, l, n) }
        }
    }

    fn note(size: usize) {
        let _ = WATCH.try_with(|w| {
            if w.get() {
                let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
            }
        });
    }

    #[global_allocator]
    static ALLOC: Counting = Counting;

    /// The allocation rule: what the input's own bytes and the parsers' fixed limits allow
    /// (a decompressor's output up to [`MAX_OUT`] and its working memory), never more.
    fn bound(input: usize) -> usize {
        8 * MAX_OUT + 64 * input
    }

    fn run_checked(t: &Target, input: &[u8]) {
        PEAK.with(|p| p.set(0));
        WATCH.with(|w| w.set(true));
        (t.run)(input);
        WATCH.with(|w| w.set(false));
        let peak = PEAK.with(|p| p.get());
        assert!(
            peak <= bound(input.len()),
            "{}: an allocation of {peak} bytes for {} input bytes",
            t.name,
            input.len()
        );
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wyng-v3")
    }

    /// Every target, over its seeds and 300 mutations of each (a few seconds in all): the
    /// stable, always-run share of the fuzzing. `scripts/fuzz.sh` runs the same targets
    /// coverage-guided for as long as it is given.
    #[test]
    fn every_target_survives_its_seeds_and_their_mutations() {
        // Decoded manifests are stored plain beside the fixtures: seeds for `manifest`.
        // WYNG_FUZZ_ROUNDS=N (and WYNG_FUZZ_ONLY=TARGET) run longer, where cargo-fuzz is
        // not at hand.
        let rounds: u64 = std::env::var("WYNG_FUZZ_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        let only = std::env::var("WYNG_FUZZ_ONLY").ok();
        for t in TARGETS {
            if only.as_ref().is_some_and(|o| o != t.name) {
                continue;
            }
            let mut seeds = seeds(t, &fixtures());
            // Inputs fuzzing once found (kept as regression seeds).
            let found = fixtures().join("../fuzz").join(t.name);
            for e in std::fs::read_dir(found).into_iter().flatten().flatten() {
                seeds.push(std::fs::read(e.path()).unwrap());
            }
            assert!(!seeds.is_empty(), "{}: no seeds", t.name);
            for (i, s) in seeds.iter().enumerate() {
                run_checked(t, s);
                for m in 0..rounds {
                    let state = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (m + 1);
                    let input = mutate(s, state, 1 + (m % 6) as usize);
                    run_checked(t, &input);
                }
            }
            run_checked(t, b"");
        }
    }

    /// The guest seeds are real filesystems the readers list (so their mutations explore
    /// the readers, not only the first check that fails).
    #[test]
    fn guest_seeds_are_readable_filesystems() {
        let dir = fixtures().join("../fuzz/guest_fs");
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

    /// The allocation check can fail: a target that allocates from a claimed size is caught.
    #[test]
    fn the_allocation_rule_catches_a_claimed_size() {
        fn claims(data: &[u8]) {
            let n = data.first().copied().unwrap_or(0) as usize;
            std::hint::black_box(vec![0u8; n << 24]);
        }
        let t = Target {
            name: "claims",
            run: claims,
            seed_files: &[],
        };
        run_checked(&t, &[0]);
        let r = std::panic::catch_unwind(|| run_checked(&t, &[200]));
        assert!(r.is_err());
    }
}
