//! `arch-deduplicate`: replace duplicate chunk files by hard links to one copy (format §11.3).
//! The work is the archive's own (`archive::dedup`): it knows where every chunk file is.

use crate::archive::WriteArchive;
use crate::error::Result;

pub use crate::archive::dedup::DedupReport;

pub fn run(wa: &mut WriteArchive) -> Result<DedupReport> {
    wa.deduplicate()
}
