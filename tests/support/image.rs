//! A deterministic test image builder: random, text-like and zero regions. One file shared by
//! the CLI tests (`tests/cli/common.rs`) and the library's in-process tests
//! (`src/ops/semantics/`), so both build the same images from the same seeds.

pub struct Image {
    pub data: Vec<u8>,
    rng: u64,
}

impl Image {
    pub fn new(seed: u64) -> Image {
        Image {
            data: Vec::new(),
            rng: seed.wrapping_mul(0x9E3779B97F4A7C15) | 1,
        }
    }

    pub fn next(&mut self) -> u64 {
        // xorshift64*: fast and reproducible; quality does not matter here.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545F4914F6CDD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn random(&mut self, len: usize) -> &mut Self {
        for _ in 0..len / 8 {
            let v = self.next();
            self.data.extend_from_slice(&v.to_le_bytes());
        }
        for _ in 0..len % 8 {
            let v = self.next() as u8;
            self.data.push(v);
        }
        self
    }

    pub fn text(&mut self, len: usize) -> &mut Self {
        let start = self.data.len();
        let mut i = 0u64;
        while self.data.len() - start < len {
            let line = format!(
                "{i:08} the quick brown fox jumps over the lazy dog {}\n",
                self.next() % 1000
            );
            self.data.extend_from_slice(line.as_bytes());
            i += 1;
        }
        self.data.truncate(start + len);
        self
    }

    pub fn zeros(&mut self, len: usize) -> &mut Self {
        self.data.resize(self.data.len() + len, 0);
        self
    }

    /// Overwrites `len` bytes at `off` with random data (growing the image if needed).
    pub fn scribble(&mut self, off: usize, len: usize) -> &mut Self {
        if self.data.len() < off + len {
            self.data.resize(off + len, 0);
        }
        for i in 0..len {
            self.data[off + i] = self.next() as u8;
        }
        self
    }

    /// One change of the kinds a volume sees between two sessions, chosen by `rng`: a large
    /// write, a zeroed range, growth, shrinking to three quarters, or a few bytes.
    pub fn change_randomly(&mut self, rng: &mut Image) {
        let len = self.data.len() as u64;
        match rng.below(5) {
            0 => {
                let off = rng.below(len) as usize;
                self.scribble(off, 70_000);
            }
            1 => {
                let off = rng.below(len - 1) as usize;
                let end = (off + 150_000).min(self.data.len());
                self.data[off..end].fill(0);
            }
            2 => {
                self.random(rng.below(200_000) as usize + 1);
            }
            3 => {
                let n = self.data.len() * 3 / 4;
                self.data.truncate(n.max(1));
            }
            _ => {
                let off = rng.below(len) as usize;
                self.scribble(off, 10);
            }
        }
    }

    pub fn write(&self, p: &std::path::Path) {
        std::fs::write(p, &self.data).unwrap();
    }
}

/// The round-trip tests' history of one volume at chunk size `cs` (write, grow, shrink to an
/// unaligned and an aligned size, unchanged, whole chunks zeroed): each image with whether its
/// send must record a session.
pub fn round_trip_history(cs: usize, seed: u64) -> Vec<(Vec<u8>, bool)> {
    let mut steps = Vec::new();
    let mut img = Image::new(seed);
    img.random(3 * cs + 100)
        .text(4 * cs)
        .zeros(5 * cs)
        .random(cs / 3);
    steps.push((img.data.clone(), true));
    // Small scattered writes.
    for k in 0..5 {
        let off = (k * 7919 * 131) % (img.data.len() - 4096);
        img.scribble(off, 4096);
    }
    steps.push((img.data.clone(), true));
    // Grow.
    img.zeros(2 * cs).text(cs + 17);
    steps.push((img.data.clone(), true));
    // Shrink to an unaligned size, then to an aligned one.
    img.data.truncate(6 * cs + 999);
    steps.push((img.data.clone(), true));
    img.data.truncate(5 * cs);
    steps.push((img.data.clone(), true));
    // Nothing changed: nothing recorded.
    steps.push((img.data.clone(), false));
    // Data turned into zeros (whole chunks), and a zeroed region turning back into data.
    let n = img.data.len();
    img.data[..2 * cs].fill(0);
    img.scribble(n - cs / 2, 100);
    steps.push((img.data.clone(), true));
    steps
}
