//! Progress on long work: a bar with bytes, rate and ETA when stderr is a terminal, nothing when
//! piped or with `--quiet`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Progress(ProgressBar);

/// Whether progress bars are shown (set once from the command line).
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

pub fn set_enabled(on: bool) {
    ENABLED.store(on, std::sync::atomic::Ordering::Relaxed);
}

impl Progress {
    pub fn bytes(total: u64, label: &str) -> Progress {
        let visible =
            ENABLED.load(std::sync::atomic::Ordering::Relaxed) && std::io::stderr().is_terminal();
        let bar = if visible {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        Progress(bar)
    }

    pub fn inc(&self, n: u64) {
        self.0.inc(n)
    }

    pub fn finish(&self) {
        self.0.finish_and_clear()
    }
}
