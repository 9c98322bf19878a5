//! The stable, always-run share of the fuzzing: every target of `wyng::fuzz` over its seeds and
//! deterministic mutations of them, under a counting allocator that enforces the targets'
//! allocation rule (see src/fuzz/mod.rs). Its own test binary: the allocator wraps only these
//! tests. `scripts/fuzz.sh` runs the same targets coverage-guided for as long as it is given.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use wyng::fuzz::{mutate, seeds, Target, MAX_OUT, TARGETS};

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

/// Every target, over its seeds and 300 mutations of each (a few seconds in all).
#[test]
fn every_target_survives_its_seeds_and_their_mutations() {
    for t in TARGETS {
        let mut seeds = seeds(t, &fixtures());
        // Inputs fuzzing once found (kept as regression seeds).
        let found = fixtures().join("../fuzz").join(t.name);
        for e in std::fs::read_dir(found).into_iter().flatten().flatten() {
            seeds.push(std::fs::read(e.path()).unwrap());
        }
        assert!(!seeds.is_empty(), "{}: no seeds", t.name);
        for (i, s) in seeds.iter().enumerate() {
            run_checked(t, s);
            for m in 0..300u64 {
                let state = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (m + 1);
                let input = mutate(s, state, 1 + (m % 6) as usize);
                run_checked(t, &input);
            }
        }
        run_checked(t, b"");
    }
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
        builtin_seeds: &[],
    };
    run_checked(&t, &[0]);
    let r = std::panic::catch_unwind(|| run_checked(&t, &[200]));
    assert!(r.is_err());
}
