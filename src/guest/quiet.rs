//! Calls into a crate that is known to panic on some hostile images, caught and kept off the
//! user's terminal.
//!
//! Invariants:
//! * A panic inside [`catch`] is caught, becomes `None` (the caller turns it into an error for
//!   the path it was reading), and prints nothing: the process's panic hook is wrapped once
//!   (the first time [`catch`] runs) by one that stays silent while the current thread is
//!   inside [`catch`] and passes every other panic, on any thread, to the hook it replaced.
//!   The flag is per thread, so a panic elsewhere at the same time is reported as before.
//! * Only use it around a call whose panic leaves nothing half-updated that is used again
//!   (the caller drops what the call was working on).
//! * A hook set later by someone else replaces this one (the message would show again, the
//!   panic is still caught): wyng sets none.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

static WRAP_HOOK: Once = Once::new();

fn wrap_hook() {
    WRAP_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.try_with(Cell::get).unwrap_or(false) {
                previous(info);
            }
        }));
    });
}

/// Runs `f`; a panic in it is `None`, and its message is not printed.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Option<T> {
    wrap_hook();
    let was = QUIET.replace(true);
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.set(was);
    r.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_none_and_a_value_passes() {
        assert_eq!(catch(|| 7), Some(7));
        assert_eq!(catch(|| -> u8 { panic!("crate bug") }), None);
        // Nested: the outer call stays quiet after the inner one returns.
        assert_eq!(
            catch(|| {
                let _ = catch(|| 1);
                panic!("after")
            }),
            None::<()>
        );
        assert!(!QUIET.with(Cell::get));
    }
}
