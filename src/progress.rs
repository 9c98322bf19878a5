//! Progress on long work, as counts: the library says how many bytes a task has and how many
//! are done; whether and how that is shown is the caller's (the binary draws a bar on a
//! terminal, nothing when piped or with `--quiet`). The library never draws anything itself.
//!
//! A [`Reporting`] (default: nowhere) travels with the archive it was opened with
//! (`OpenOptions::progress`); each task asks it for a [`Progress`].

use std::sync::Arc;

/// Where progress goes: a caller's implementation (the binary's progress bars).
pub trait Reporter: Send + Sync {
    /// A task of `total` bytes begins; `label` names it ("send", "receive", ...).
    fn bytes(&self, total: u64, label: &str) -> Box<dyn Meter>;
}

/// One task's progress as the [`Reporter`] shows it.
pub trait Meter: Send + Sync {
    fn inc(&self, n: u64);
    /// The task ended (done or failed): the meter goes away.
    fn finish(&self);
}

/// The reporter of a run, or none ([`Default`]: tests, library users that show nothing).
#[derive(Clone, Default)]
pub struct Reporting(Option<Arc<dyn Reporter>>);

impl Reporting {
    pub fn to(reporter: Arc<dyn Reporter>) -> Reporting {
        Reporting(Some(reporter))
    }

    /// A task of `total` bytes begins.
    pub fn bytes(&self, total: u64, label: &str) -> Progress {
        Progress(self.0.as_ref().map(|r| r.bytes(total, label)))
    }
}

impl std::fmt::Debug for Reporting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Reporting(to a reporter)"
        } else {
            "Reporting(nowhere)"
        })
    }
}

/// One task's progress (see [`Reporting::bytes`]).
pub struct Progress(Option<Box<dyn Meter>>);

impl Progress {
    pub fn inc(&self, n: u64) {
        if let Some(m) = &self.0 {
            m.inc(n)
        }
    }

    pub fn finish(&self) {
        if let Some(m) = &self.0 {
            m.finish()
        }
    }
}
