//! Running a command over a `--vols-from` / `--local-from` file (behaviour §7.10).

use wyng::ops::vols_from::{Failures, VolsFrom};
use wyng::Result;

use super::Global;

/// Loads FILE, runs `op` on the open archive, writes FILE.error for the volumes that failed,
/// prints what succeeded, and exits 2 if any volume failed.
pub fn run<A, R: serde::Serialize>(
    g: &Global,
    file: &std::path::Path,
    open: impl FnOnce() -> Result<A>,
    op: impl FnOnce(&mut A, &VolsFrom, &mut Failures) -> Result<Vec<R>>,
    lines: impl Fn(&R) -> Vec<String>,
) -> Result<()> {
    let vf = VolsFrom::load(file, &g.local)?;
    let mut archive = open()?;
    let mut failures = Failures::default();
    let reports = op(&mut archive, &vf, &mut failures);
    let finished = vf.finish(&failures);
    g.reports(&reports?, lines)?;
    finished
}
