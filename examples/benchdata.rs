//! Data and single-core limits for `scripts/bench.sh`.
//!
//! ```text
//! benchdata gen PATH SIZE_MIB          reproducible image: 30% random, 30% text, 40% holes
//! benchdata scribble PATH PERCENT SEED [KIB]  rewrite PERCENT of the KIB (4) blocks at random offsets
//! benchdata limits PATH CHUNKSIZE      single-core MiB/s: read, compress+hash, verify+decompress
//! benchdata randread PATH COUNT SEED   random 4 KiB reads per second (one thread)
//! benchdata sparse PATH SIZE_GIB EXTENTS EXTENT_MIB SEED   a sparse volume: EXTENTS runs of
//!                                      random data at random 1 MiB-aligned places, holes elsewhere
//! benchdata poke PATH COUNT SEED       rewrite COUNT random 4 KiB blocks inside the data extents
//! benchdata cmpsparse A B              exit 1 unless A and B hold the same bytes, reading only
//!                                      their data (holes read as zeros)
//! ```

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use wyng::codec::{Compression, Compressor};
use wyng::crypto::HashFn;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

const MIB: u64 = 1 << 20;

fn gen(path: &str, mib: u64) {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(mib * MIB).unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut buf = vec![0u8; MIB as usize];
    let mut line = 0u64;
    for i in 0..mib {
        // A fixed 10-step pattern per 10 MiB: 3 random, 3 text, 4 left as holes.
        match i % 10 {
            0 | 4 | 7 => {
                rng.fill(&mut buf);
                f.write_all_at(&buf, i * MIB).unwrap();
            }
            1 | 5 | 8 => {
                let mut t = Vec::with_capacity(MIB as usize + 128);
                while (t.len() as u64) < MIB {
                    t.extend_from_slice(
                        format!(
                            "{line:010} host-{} GET /index.html?id={} 200 {}\n",
                            line % 97,
                            rng.next() % 100000,
                            rng.next() % 5000
                        )
                        .as_bytes(),
                    );
                    line += 1;
                }
                f.write_all_at(&t[..MIB as usize], i * MIB).unwrap();
            }
            _ => {}
        }
    }
    f.sync_all().unwrap();
}

/// Extent starts (in MiB) of a sparse volume, sorted and non-overlapping.
fn extents(size_gib: u64, count: u64, mib: u64, seed: u64) -> Vec<u64> {
    let slots = size_gib * 1024 / mib;
    let mut rng = Rng(seed | 1);
    let mut set = std::collections::BTreeSet::new();
    while (set.len() as u64) < count.min(slots) {
        set.insert((rng.next() % slots) * mib);
    }
    set.into_iter().collect()
}

fn sparse(path: &str, size_gib: u64, count: u64, mib: u64, seed: u64) {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(size_gib << 30).unwrap();
    let mut rng = Rng(seed ^ 0x5a5a);
    let mut buf = vec![0u8; (mib * MIB) as usize];
    for start in extents(size_gib, count, mib, seed) {
        rng.fill(&mut buf);
        f.write_all_at(&buf, start * MIB).unwrap();
    }
    f.sync_all().unwrap();
}

/// The data runs of a file, as SEEK_DATA / SEEK_HOLE report them.
fn data_runs(f: &File) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let size = f.metadata().unwrap().len();
    let mut runs = Vec::new();
    let mut off = 0i64;
    loop {
        // SAFETY: plain lseek on an open descriptor.
        let d = unsafe { libc::lseek(f.as_raw_fd(), off, libc::SEEK_DATA) };
        if d < 0 || d as u64 >= size {
            break;
        }
        let h = unsafe { libc::lseek(f.as_raw_fd(), d, libc::SEEK_HOLE) };
        runs.push((d as u64, h as u64));
        off = h;
    }
    runs
}

fn cmpsparse(a: &str, b: &str) {
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let size = fa.metadata().unwrap().len();
    if size != fb.metadata().unwrap().len() {
        eprintln!("sizes differ");
        std::process::exit(1);
    }
    let mut x = vec![0u8; MIB as usize];
    let mut y = vec![0u8; MIB as usize];
    for (s, e) in data_runs(&fa).into_iter().chain(data_runs(&fb)) {
        let mut off = s;
        while off < e {
            let n = (e - off).min(MIB) as usize;
            fa.read_exact_at(&mut x[..n], off).unwrap();
            fb.read_exact_at(&mut y[..n], off).unwrap();
            if x[..n] != y[..n] {
                eprintln!("differ near offset {off}");
                std::process::exit(1);
            }
            off += n as u64;
        }
    }
}

fn poke(path: &str, count: u64, seed: u64) {
    // The data extents are where SEEK_DATA finds them.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let runs = data_runs(&f);
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 4096];
    for _ in 0..count {
        let (a, b) = runs[(rng.next() % runs.len() as u64) as usize];
        let blocks = (b - a) / 4096;
        rng.fill(&mut buf);
        f.write_all_at(&buf, a + (rng.next() % blocks) * 4096)
            .unwrap();
    }
    f.sync_all().unwrap();
}

fn scribble(path: &str, percent: f64, seed: u64, block_kib: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    let bs = block_kib * 1024;
    let blocks = f.metadata().unwrap().len() / bs;
    let n = (blocks as f64 * percent / 100.0) as u64;
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; bs as usize];
    for _ in 0..n {
        rng.fill(&mut buf);
        f.write_all_at(&buf, (rng.next() % blocks) * bs).unwrap();
    }
    f.sync_all().unwrap();
    println!("rewrote {n} of {blocks} {block_kib} KiB blocks");
}

fn limits(path: &str, chunksize: usize) {
    let mut f = File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let mib = size as f64 / MIB as f64;
    // Page-cache read, single thread.
    let mut buf = vec![0u8; chunksize];
    let t = Instant::now();
    let mut chunks = Vec::new();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        chunks.push(buf[..n].iter().any(|&b| b != 0));
    }
    let read = mib / t.elapsed().as_secs_f64();
    // Compress + hash (what send does per non-zero chunk), single core.
    let zstd = Compressor::new(Compression::Zstd, 3).unwrap();
    let hash = HashFn::Blake2b256;
    let mut compressed = Vec::new();
    let t = Instant::now();
    for (i, nonzero) in chunks.iter().enumerate() {
        if *nonzero {
            let n = f.read_at(&mut buf, (i * chunksize) as u64).unwrap();
            let z = zstd.compress(&buf[..n]);
            std::hint::black_box(hash.hash(&z));
            compressed.push((z, n));
        }
    }
    let comp = mib / t.elapsed().as_secs_f64();
    // Hash + decompress (what receive does per data chunk), single core.
    let t = Instant::now();
    for (z, n) in &compressed {
        std::hint::black_box(hash.hash(z));
        std::hint::black_box(zstd.decompress(z, *n).unwrap());
    }
    let decomp = mib / t.elapsed().as_secs_f64();
    println!("read_mibs={read:.0} compress_hash_mibs={comp:.0} hash_decompress_mibs={decomp:.0}");
}

fn randread(path: &str, count: u64, seed: u64) {
    let f = File::open(path).unwrap();
    let blocks = f.metadata().unwrap().len() / 4096;
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 4096];
    let t = Instant::now();
    for _ in 0..count {
        f.read_exact_at(&mut buf, (rng.next() % blocks) * 4096)
            .unwrap();
    }
    println!("{:.0}", count as f64 / t.elapsed().as_secs_f64());
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("gen") => gen(&a[2], a[3].parse().unwrap()),
        Some("scribble") => scribble(
            &a[2],
            a[3].parse().unwrap(),
            a[4].parse().unwrap(),
            a.get(5).map_or(4, |k| k.parse().unwrap()),
        ),
        Some("limits") => limits(&a[2], a[3].parse().unwrap()),
        Some("sparse") => sparse(
            &a[2],
            a[3].parse().unwrap(),
            a[4].parse().unwrap(),
            a[5].parse().unwrap(),
            a[6].parse().unwrap(),
        ),
        Some("poke") => poke(&a[2], a[3].parse().unwrap(), a[4].parse().unwrap()),
        Some("cmpsparse") => cmpsparse(&a[2], &a[3]),
        Some("randread") => randread(&a[2], a[3].parse().unwrap(), a[4].parse().unwrap()),
        _ => eprintln!("usage: benchdata gen PATH SIZE_MIB | scribble PATH PERCENT SEED | limits PATH CHUNKSIZE"),
    }
}
