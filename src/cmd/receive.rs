//! `wyng receive`.

use std::path::{Path, PathBuf};

use clap::Args;

use wyng::ops::{self, receive::Mode, receive::SnapshotUse};
use wyng::{Error, Result};

use super::{date, human, Global, SessionArgs};

pub const HELP: &str = "Examples:\n  wyng receive vm1.img --save-to=/tmp/vm1.img --dest=file:/mnt/usb/laptop.backup\n  wyng receive vm1.img --session=20261123-101500 --save-to=/dev/vg/vm1 -u --dest=...\n  wyng receive vm1.img --session=^weekly --save-to=/tmp/vm1-weekly.img --dest=...\n  wyng receive vms/web.img --local=/var/lib/images --use-snapshot --dest=...\n\nEvery chunk is checked against its hash before it is written; all-zero chunks become holes\nin a file target. A file target is built under a temporary name and renamed into place when\ncomplete. An existing target is overwritten only after confirmation or with -u.";

#[derive(Args, Debug)]
pub struct ReceiveArgs {
    /// The volume to restore
    #[arg(required_unless_present = "vols_from")]
    pub volume: Option<String>,
    /// Where to write the volume: a file path or an existing block device
    #[arg(long, value_name = "PATH")]
    pub save_to: Option<PathBuf>,
    /// Restore into this reflink directory (Btrfs/XFS) as the volume's file, paired again for
    /// incremental sends when it is the newest session
    #[arg(long, value_name = "DIR")]
    pub local: Option<PathBuf>,
    /// Keep the existing target; fetch only chunks whose local content differs (by hash) and
    /// write only those
    #[arg(long, conflicts_with = "sparse_write")]
    pub sparse: bool,
    /// Keep the existing target; fetch every chunk, write only those that differ, punch holes
    /// for zero chunks
    #[arg(long)]
    pub sparse_write: bool,
    /// With --local: restore the newest session instantly from its paired snapshot; an older
    /// one starts from the snapshot and rewrites what differs
    #[arg(long, conflicts_with = "use_snapshot_diff")]
    pub use_snapshot: bool,
    /// With --local: restore an older session as the paired snapshot plus only the chunks that
    /// later sessions changed
    #[arg(long)]
    pub use_snapshot_diff: bool,
    #[command(flatten)]
    pub session: SessionArgs,
    /// Volumes and their local storages from a JSON file, e.g. {"/var/lib/images":
    /// [["web.img", null], ["db.img", "db-local.img"]]}; volumes that fail are listed in
    /// FILE.error and the run exits 2
    #[arg(long, value_name = "FILE", visible_alias = "local-from", conflicts_with_all = ["volume", "local", "save_to"])]
    pub vols_from: Option<PathBuf>,
}

pub fn summary(r: &ops::receive::ReadReport, to: &str) -> String {
    let mut s = format!(
        "{}: session {} received to {} ({}",
        r.volume,
        date(&r.session),
        to,
        human(r.volsize)
    );
    if let Some(w) = r.chunks_written {
        s += &format!("; {} chunks fetched, {w} rewritten", r.data_chunks);
    }
    s + ")."
}

pub fn run(g: &Global, a: ReceiveArgs) -> Result<()> {
    let mode = match (a.sparse, a.sparse_write) {
        (true, _) => Mode::Sparse,
        (_, true) => Mode::SparseWrite,
        _ => Mode::Full,
    };
    let snapshot_use = match (a.use_snapshot, a.use_snapshot_diff) {
        (true, _) => SnapshotUse::Snapshot,
        (_, true) => SnapshotUse::SnapshotDiff,
        _ => SnapshotUse::No,
    };
    let sel = a.session.sel()?;
    let confirm = |p: &Path| {
        g.confirm(&format!(
            "{} exists and will be overwritten. Continue?",
            p.display()
        ))
    };
    let opts = |save_to: PathBuf| ops::receive::ReceiveOptions {
        save_to,
        confirm: &confirm,
        mode,
    };
    if let Some(file) = &a.vols_from {
        return super::vols_from::run(
            g,
            file,
            || g.write(),
            |wa, vf, failures| {
                Ok(ops::vols_from::receive(
                    wa,
                    vf,
                    &sel,
                    &opts(PathBuf::new()),
                    snapshot_use,
                    failures,
                ))
            },
            |r| vec![summary(r, "its --vols-from storage")],
        );
    }
    let volume = a.volume.clone().unwrap_or_default();
    if snapshot_use != SnapshotUse::No && a.local.is_none() {
        return Err(Error::Usage(
            "--use-snapshot and --use-snapshot-diff restore into --local=DIR".into(),
        ));
    }
    if let (None, Some(dir)) = (&a.save_to, &a.local) {
        let local = wyng::source::LocalStorage::open(dir)?;
        let store = local.reflink("receive --local")?;
        // Writing pairing state: the archive is opened as a writer (one at a time).
        let wa = g.write()?;
        let r = ops::receive::receive_local(
            &wa,
            &ops::VolumeRef::same(&volume),
            &sel,
            store,
            &opts(PathBuf::new()),
            snapshot_use,
        )?;
        if g.json {
            return g.json(&r);
        }
        g.say(summary(&r, &dir.display().to_string()));
        return Ok(());
    }
    let save_to = a.save_to.ok_or_else(|| {
        Error::Usage(
            "receive needs --save-to=PATH (a file or an existing block device) or --local=DIR"
                .into(),
        )
    })?;
    let archive = g.read()?;
    let r = ops::receive::receive(&archive, &volume, &sel, &opts(save_to.clone()))?;
    if g.json {
        return g.json(&r);
    }
    g.say(summary(&r, &save_to.display().to_string()));
    Ok(())
}
