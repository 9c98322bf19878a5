//! How work is spread over the machine's cores (how many workers: [`crate::tuning::Tuning`]).

/// Runs `f(0..n)` on `threads` workers, each taking the next index; stops at the first error
/// and returns it. (How many: [`crate::tuning::Tuning::workers`] for CPU work, more for work
/// that waits on the network.)
pub(crate) fn run_on<E: Send>(
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

/// Maps `items` through `f` on `threads` workers and hands the results to `sink` on the calling
/// thread **in input order**, with at most `window` items between the input and the sink (the
/// memory bound: a slow item holds the others back instead of letting them pile up). The input
/// is pulled on a thread of its own, so an iterator that does I/O (a batched fetch) overlaps
/// the work. Stops at the first error of the input, `f` or `sink`, and returns it.
pub(crate) fn ordered_map<T, U, E>(
    items: impl Iterator<Item = Result<T, E>> + Send,
    threads: usize,
    window: usize,
    f: impl Fn(T) -> Result<U, E> + Sync,
    mut sink: impl FnMut(U) -> Result<(), E>,
) -> Result<(), E>
where
    T: Send,
    U: Send,
    E: Send,
{
    use crossbeam_channel::bounded;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};

    let window = window.max(1);
    let stop = AtomicBool::new(false);
    // A token per item in flight: the feeder takes one before it hands an item out, the sink
    // gives it back once the item is consumed in order.
    let (tokens, tokens_back) = bounded::<()>(window);
    let (jobs_tx, jobs_rx) = bounded::<(u64, T)>(window);
    let (done_tx, done_rx) = bounded::<(u64, Result<U, E>)>(window);
    std::thread::scope(|s| {
        let stop = &stop;
        let feeder = s.spawn(move || -> Result<(), E> {
            for (seq, item) in (0u64..).zip(items) {
                if stop.load(Ordering::Relaxed) || tokens.send(()).is_err() {
                    return Ok(());
                }
                let item = item?;
                if jobs_tx.send((seq, item)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        for _ in 0..threads.max(1) {
            let (jobs_rx, done_tx, f) = (jobs_rx.clone(), done_tx.clone(), &f);
            s.spawn(move || {
                for (seq, item) in jobs_rx {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if done_tx.send((seq, f(item))).is_err() {
                        break;
                    }
                }
            });
        }
        drop((jobs_rx, done_tx));
        let mut held: BTreeMap<u64, U> = BTreeMap::new();
        let mut next = 0u64;
        let mut result = Ok(());
        for (seq, r) in &done_rx {
            match r {
                Ok(u) => {
                    held.insert(seq, u);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            while let Some(u) = held.remove(&next) {
                next += 1;
                if let Err(e) = sink(u) {
                    result = Err(e);
                    break;
                }
                let _ = tokens_back.recv();
            }
            if result.is_err() {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        // Unblock the feeder and the workers, then let them see the stop.
        drop(tokens_back);
        drop(done_rx);
        let fed = feeder.join().unwrap_or(Ok(()));
        result.and(fed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_map_keeps_order_and_bounds_the_window() {
        use std::sync::atomic::{AtomicI64, Ordering};
        let in_flight = AtomicI64::new(0);
        let peak = AtomicI64::new(0);
        let mut out = Vec::new();
        let items = (0..500u64).map(|i| {
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            Ok::<_, String>(i)
        });
        ordered_map(
            items,
            4,
            8,
            |i| {
                // Later items finish first now and then.
                if i % 7 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Ok(i * 2)
            },
            |u| {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                out.push(u);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(out, (0..500u64).map(|i| i * 2).collect::<Vec<_>>());
        assert!(
            peak.load(Ordering::SeqCst) <= 9,
            "peak {}",
            peak.load(Ordering::SeqCst)
        );
    }

    #[test]
    fn ordered_map_stops_at_the_first_error() {
        let mut seen = 0;
        let r = ordered_map(
            (0..10_000u64).map(Ok::<_, String>),
            2,
            4,
            |i| {
                if i == 100 {
                    Err(format!("bad {i}"))
                } else {
                    Ok(i)
                }
            },
            |_| {
                seen += 1;
                Ok(())
            },
        );
        assert_eq!(r, Err("bad 100".to_string()));
        assert_eq!(seen, 100);
        let r = ordered_map(
            (0..10u64).map(|i| {
                if i == 3 {
                    Err("input".to_string())
                } else {
                    Ok(i)
                }
            }),
            2,
            4,
            Ok,
            |_| Ok(()),
        );
        assert_eq!(r, Err("input".to_string()));
        let r = ordered_map((0..10_000u64).map(Ok::<_, String>), 2, 4, Ok, |i| {
            if i == 5 {
                Err("sink".to_string())
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err("sink".to_string()));
    }
}
