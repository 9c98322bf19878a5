//! `verify`: read and check every chunk of a session without writing anything. The merged
//! view is rebuilt from the archive's own manifests (not from local state) and its `mfcs`
//! checked, then every data chunk is fetched, authenticated or hashed, decompressed and
//! length-checked.

use crate::archive::Archive;
use crate::error::Result;
use crate::ops::receive::ReadReport;
use crate::ops::SessionSel;

pub fn verify(archive: &Archive, name: &str, sel: &SessionSel) -> Result<ReadReport> {
    let vi = archive.find_index(name)?;
    let vol = &archive.volumes()[vi];
    let si = sel.select(vol)?;
    let ix = archive.merged_fresh(vi, si)?;
    let progress = archive.progress(ix.data_bytes(), "verify");
    let stats = archive.chunks().run(
        ix.locs(),
        |_, d| {
            progress.inc(d.len() as u64);
            Ok(())
        },
        |_, e| Err(e),
    )?;
    progress.finish();
    Ok(ReadReport {
        volume: name.into(),
        session: vol.sessions[si].name.to_string(),
        volsize: ix.volsize(),
        chunks: ix.chunks(),
        data_chunks: stats.chunks,
        chunks_written: None,
        chunks_skipped: 0,
    })
}
