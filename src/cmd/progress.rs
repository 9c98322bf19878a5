//! The progress bars users see: bytes, rate and ETA on stderr when it is a terminal, nothing
//! when piped or with `--quiet`. The library reports counts ([`wyng::progress::Reporter`]).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars of this run (none with `--quiet`).
pub struct Bars {
    pub quiet: bool,
}

struct Bar(ProgressBar);

impl wyng::progress::Reporter for Bars {
    fn bytes(&self, total: u64, label: &str) -> Box<dyn wyng::progress::Meter> {
        // Whether stderr is a terminal is asked per bar: a background child's is not.
        let bar = if !self.quiet && std::io::stderr().is_terminal() {
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
        Box::new(Bar(bar))
    }
}

impl wyng::progress::Meter for Bar {
    fn inc(&self, n: u64) {
        self.0.inc(n)
    }

    fn finish(&self) {
        self.0.finish_and_clear()
    }
}
