//! `wyng receive`.

use std::path::{Path, PathBuf};

use clap::Args;

use wyng::ops::{self, receive::Mode, receive::SnapshotUse};
use wyng::{Error, Result};

use super::{date, human, Global, SessionArgs};

pub const HELP: &str = "Examples:\n  wyng receive vm1.img --save-to=/tmp/vm1.img --dest=file:/mnt/usb/laptop.backup\n  wyng receive vm1.img --session=20261123-101500 --save-to=/dev/vg/vm1 -u --dest=...\n  wyng receive vm1.img --session=^weekly --save-to=/tmp/vm1-weekly.img --dest=...\n  wyng receive vms/web.img --local=/var/lib/images --use-snapshot --dest=...\n  wyng receive vm-work-private --local=qubes_dom0/vm-pool --use-snapshot --dest=...\n  wyng receive web --local=zfs:tank/vms --sparse --dest=...\n\nEvery chunk is checked against its hash before it is written; all-zero chunks become holes\nin a file target. A file target is built under a temporary name and renamed into place when\ncomplete. An existing target is overwritten only after confirmation or with -u.";

#[derive(Args, Debug)]
pub struct ReceiveArgs {
    /// The volumes to restore (one with --save-to)
    pub volumes: Vec<String>,
    /// Restore every volume (except --volex ones) into --local
    #[arg(short, long, conflicts_with = "save_to")]
    pub all: bool,
    /// Where to restore: a file, an existing block device, or - for standard output
    ///
    /// A symbolic link is followed to its target; character devices, FIFOs and sockets are
    /// refused (use - and a pipe); a file is built beside its place and renamed into it.
    #[arg(long, value_name = "PATH")]
    pub save_to: Option<PathBuf>,
    /// Restore into DIR/<volume>, a thin pool VG/POOL or zfs:POOL/DATASET
    ///
    /// On Btrfs/XFS the volume is paired again for incremental sends when it is the newest
    /// session; any other directory just gets the file. VG/POOL (LVM thin) or
    /// zfs:POOL/DATASET: into the thin volume or zvol of that name, made or resized to the
    /// session's size.
    #[arg(long, value_name = "DIR")]
    pub local: Option<PathBuf>,
    /// Update the existing target: fetch only chunks that differ (by hash)
    #[arg(long, conflicts_with = "sparse_write")]
    pub sparse: bool,
    /// Update the existing target: fetch every chunk, write only those that differ
    #[arg(long)]
    pub sparse_write: bool,
    /// With --local: restore from the paired snapshot
    ///
    /// The newest session instantly; an older one starts from the snapshot and rewrites what
    /// differs.
    #[arg(long, conflicts_with = "use_snapshot_diff")]
    pub use_snapshot: bool,
    /// With --local: an older session as the snapshot plus what later sessions changed
    #[arg(long)]
    pub use_snapshot_diff: bool,
    /// With --use-snapshot: fail unless the session comes from the paired snapshot
    ///
    /// Nothing is received then; wyng-*metadata volumes are exempt, as in the original.
    #[arg(long, requires = "use_snapshot")]
    pub req_snapshot: bool,
    /// Rescue what reads: a damaged chunk becomes zeros instead of an error
    ///
    /// For a full receive (or --save-to=-); each damaged chunk is reported.
    #[arg(long)]
    pub skip_corrupt_chunks: bool,
    #[command(flatten)]
    pub session: SessionArgs,
    /// Volumes and their local storages from a JSON file
    ///
    /// e.g. {"/var/lib/images": [["web.img", null], ["db.img", "db-local.img"]]}; volumes that
    /// fail are listed in FILE.error and the run exits 2
    #[arg(long, value_name = "FILE", visible_alias = "local-from", conflicts_with_all = ["volumes", "all", "local", "save_to"])]
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
        s += &format!(
            "; {} fetched, {w} rewritten",
            super::count(r.data_chunks, "chunk", "chunks")
        );
    }
    if r.chunks_skipped > 0 {
        s += &format!(
            "; {} skipped, left as zeros",
            super::count(r.chunks_skipped, "DAMAGED chunk", "DAMAGED chunks")
        );
    }
    s + ")."
}

/// `--save-to=-`: the image on standard output (the report goes to standard error, so the
/// stream stays only data).
fn to_stdout(
    g: &Global,
    archive: &wyng::archive::Archive,
    volume: &str,
    sel: &wyng::ops::SessionSel,
    a: &ReceiveArgs,
) -> Result<()> {
    use std::io::IsTerminal;
    if a.sparse || a.sparse_write {
        return Err(Error::Usage(
            "--sparse and --sparse-write update an existing target; --save-to=- streams the whole image".into(),
        ));
    }
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        return Err(Error::Usage(
            "--save-to=- writes the image to standard output, which is a terminal: pipe it (`| dd of=...`, `| ssh host dd of=...`) or redirect it".into(),
        ));
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let r = ops::receive::receive_to_writer(archive, volume, sel, &mut out, a.skip_corrupt_chunks)
        .map_err(|e| super::with_damage_advice(e, volume))?;
    if g.json {
        let s =
            serde_json::to_string(&r).map_err(|e| Error::io("stderr", std::io::Error::other(e)))?;
        eprintln!("{s}");
    } else if !g.quiet {
        eprintln!(
            "{}",
            wyng::archive::printable(&summary(&r, "standard output"))
        );
    }
    Ok(())
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
        g.confirm_or_stop(&format!(
            "{} exists and will be overwritten. Continue?",
            p.display()
        ))
    };
    let opts = |save_to: PathBuf| ops::receive::ReceiveOptions {
        save_to,
        confirm: &confirm,
        mode,
        skip_corrupt: a.skip_corrupt_chunks,
        require_snapshot: a.req_snapshot,
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
    if snapshot_use != SnapshotUse::No && a.local.is_none() {
        return Err(Error::Usage(
            "--use-snapshot and --use-snapshot-diff restore into --local=DIR".into(),
        ));
    }
    if let Some(save_to) = &a.save_to {
        let [volume] = &a.volumes[..] else {
            return Err(Error::Usage(
                "--save-to takes exactly one volume (use --local=DIR for several)".into(),
            ));
        };
        let archive = g.read()?;
        if save_to.as_os_str() == "-" {
            return to_stdout(g, &archive, volume, &sel, &a);
        }
        let r = ops::receive::receive(&archive, volume, &sel, &opts(save_to.clone()))
            .map_err(|e| super::with_damage_advice(e, volume))?;
        if g.json {
            return g.json(&r);
        }
        g.say(summary(&r, &save_to.display().to_string()));
        return Ok(());
    }
    let Some(dir) = &a.local else {
        return Err(Error::Usage(
            "receive needs --save-to=PATH (a file or an existing block device) or --local=DIR"
                .into(),
        ));
    };
    into_local(g, &a, dir, &sel, snapshot_use, &opts)
}

/// `receive --local=DIR`: each volume into DIR, a thin pool or ZFS; with several, one that
/// fails does not stop the others (exit 2 at the end).
fn into_local<'c>(
    g: &Global,
    a: &ReceiveArgs,
    dir: &Path,
    sel: &ops::SessionSel,
    snapshot_use: SnapshotUse,
    opts: &dyn Fn(PathBuf) -> ops::receive::ReceiveOptions<'c>,
) -> Result<()> {
    // A reflink directory (or vg/pool) pairs restored volumes again; any other directory
    // just receives the files, as DIR/<volume>.
    let storage = match wyng::source::LocalStorage::open(dir, &g.local) {
        Ok(l) => Some(l),
        Err(_) if dir.is_dir() && snapshot_use == SnapshotUse::No => None,
        Err(e) => return Err(e),
    };
    let mut reports = Vec::new();
    let mut failed: Vec<(String, Error)> = Vec::new();
    let mut each =
        |names: &[String], one: &mut dyn FnMut(&str) -> Result<ops::receive::ReadReport>| {
            for n in names {
                match one(n) {
                    Ok(r) => {
                        g.say(summary(&r, &dir.join(n).display().to_string()));
                        reports.push(r);
                    }
                    Err(e) if names.len() == 1 => return Err(e),
                    Err(e) => {
                        eprintln!(
                            "wyng: error: {}",
                            wyng::archive::printable(&super::errors::message(&e))
                        );
                        failed.push((n.clone(), e));
                    }
                }
            }
            Ok(())
        };
    match &storage {
        Some(
            local @ (wyng::source::LocalStorage::Thin(_) | wyng::source::LocalStorage::Zfs(_)),
        ) => {
            let archive = g.read()?;
            let names = g.selection(&archive, &a.volumes, a.all)?;
            each(&names, &mut |n| {
                let o = opts(PathBuf::new());
                receive_block(&archive, local, n, sel, snapshot_use, o)
            })?;
        }
        Some(local) => {
            let store = local.reflink("receive --local")?;
            // Writing pairing state: the archive is opened as a writer (one at a time).
            let wa = g.write()?;
            let names = g.selection(&wa, &a.volumes, a.all)?;
            each(&names, &mut |n| {
                ops::receive::receive_local(
                    &wa,
                    &ops::VolumeRef::same(n),
                    sel,
                    store,
                    &opts(PathBuf::new()),
                    snapshot_use,
                )
            })?;
        }
        None => {
            let archive = g.read()?;
            let names = g.selection(&archive, &a.volumes, a.all)?;
            each(&names, &mut |n| {
                let target = dir.join(n);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| Error::local_io(parent, "", e))?;
                }
                ops::receive::receive(&archive, n, sel, &opts(target))
            })?;
        }
    }
    // One volume named: its report (as with --save-to); several or --all: a list.
    if g.json {
        match &reports[..] {
            [one] if a.volumes.len() == 1 && !a.all => g.json(one)?,
            _ => g.json(&reports)?,
        }
    }
    super::volumes_failed("receive", &failed)
}

/// `receive --local` into an LVM thin pool or ZFS: the volume is made (or resized) and written
/// as a block device; with `--use-snapshot(-diff)` on LVM it first becomes a copy of its paired
/// baseline (the newest session: done), then is rewritten where the session differs.
fn receive_block(
    archive: &wyng::archive::Archive,
    local: &wyng::source::LocalStorage,
    n: &str,
    sel: &wyng::ops::SessionSel,
    snapshot_use: SnapshotUse,
    mut o: ops::receive::ReceiveOptions,
) -> Result<ops::receive::ReadReport> {
    let vol = archive.find(n)?;
    let si = sel.select(vol)?;
    let session = &vol.sessions[si];
    let newest = si + 1 == vol.sessions.len();
    let required = o.require_snapshot && !wyng::format::ids::is_metadata_volume(n);
    let unserved = || {
        Error::Selection(format!(
            "{n}: --req-snapshot: session {} cannot be served from a paired local snapshot; nothing was received",
            session.name
        ))
    };
    if required && !newest {
        return Err(unserved());
    }
    let cloned = match (snapshot_use, vol.last()) {
        (SnapshotUse::No, _) | (_, None) => false,
        (_, Some(last)) => {
            (o.confirm)(&local.volume_path(n)?)?;
            let cache = archive.local_dir().map(|d| d.join(vol.vid.as_str()));
            local.restore_from_baseline(n, archive.uuid(), cache.as_deref(), last)?
        }
    };
    if snapshot_use != SnapshotUse::No && !cloned {
        tracing::warn!("{n}: no paired snapshot; receiving from the archive");
    }
    if required && !cloned {
        return Err(unserved());
    }
    o.save_to = local
        .block_volume(n, session.info.volsize)?
        .expect("a block storage");
    if cloned && newest {
        let cs = archive.chunksize();
        return Ok(ops::receive::ReadReport {
            volume: n.to_string(),
            session: session.name.to_string(),
            volsize: session.info.volsize,
            chunks: session.info.volsize.div_ceil(cs),
            data_chunks: 0,
            chunks_written: Some(0),
            chunks_skipped: 0,
        });
    }
    if cloned {
        o.mode = Mode::Sparse;
    }
    ops::receive::receive(archive, n, sel, &o)
}
