//! How work is spread over the machine's cores.

/// Number of worker threads for the data pipelines: one per core, or `WYNG_WORKERS`.
pub fn workers() -> usize {
    std::env::var("WYNG_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| (1..=256).contains(&n))
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
}

/// Runs `f(0..n)` on one worker per core, each taking the next index; stops at the first error
/// and returns it.
pub fn run<E: Send>(n: usize, f: impl Fn(usize) -> Result<(), E> + Sync) -> Result<(), E> {
    run_on(workers(), n, f)
}

/// [`run`] on `threads` workers (for work that waits on the network rather than the CPU).
pub fn run_on<E: Send>(
    threads: usize,
    n: usize,
    f: impl Fn(usize) -> Result<(), E> + Sync,
) -> Result<(), E> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_err = parking_lot::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, n.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || failed.load(Ordering::Relaxed) {
                    break;
                }
                if let Err(e) = f(i) {
                    failed.store(true, Ordering::Relaxed);
                    first_err.lock().get_or_insert(e);
                    break;
                }
            });
        }
    });
    first_err.into_inner().map_or(Ok(()), Err)
}
