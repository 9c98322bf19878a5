//! Change detection on ZFS volumes (`--local=zfs:POOL/DATASET`): the volumes are the zvols under
//! the dataset, named relative to it (`zfs:tank/vms` + `web` is `tank/vms/web`). A send reads
//! the snapshot `<zvol>@wyng_<uuid>_tock` through its device node; afterwards that snapshot
//! becomes the bookmark `<zvol>#wyng_<uuid>_<createtxg>` and is destroyed, so the baseline
//! pins no space. The next send's changed chunks are the WRITE and FREE records of
//! `zfs send -i <bookmark> <new snapshot>` (see [`super::zstream`]), never the data itself.
//!
//! Invariants:
//! * Everything wyng makes carries the archive's uuid in its name, so archives sharing a
//!   volume keep their own baselines and never touch each other's.
//! * A baseline pairs only if it is this archive's newest bookmark of the volume and the
//!   newest session's delta map has the bookmark's creation time as its mtime (as for LVM,
//!   behaviour §5.2); anything else is a full scan, logged.
//! * A `@…_tock` snapshot found at the start is never trusted (a run was interrupted): it is
//!   destroyed. On error no new snapshot is left behind.
//! * Every command goes through a [`Commands`], so the plans are tested with recorded output;
//!   tool output is input: bounded in size, and anything unexpected is an error.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::deltamap::{self, ChunkRanges, DeltaMap, Pairing};
use super::reflink::PrepareVolume;
use super::zstream::{self, Change};
use super::{Plan, Prepared, Snapshots};
use crate::error::{Error, Result};
use crate::format::Session;

/// The most a listing command may print (a pool with many thousands of snapshots fits).
const MAX_OUTPUT: u64 = 64 << 20;
/// How long a new snapshot's device node may take to appear (udev).
const DEVICE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `zfs` commands: listings and changes return their output, `send` streams into a parser.
pub(crate) trait Commands: Send + Sync {
    fn run(&self, argv: &[&str]) -> Result<String>;
    /// Runs `argv` and hands its standard output to `read`; the command must then succeed.
    fn stream(
        &self,
        argv: &[&str],
        read: &mut dyn FnMut(&mut dyn Read) -> Result<zstream::Summary>,
    ) -> Result<zstream::Summary>;
}

/// Runs commands for real.
pub(crate) struct System;

fn failed(argv: &[&str], stderr: &[u8]) -> Error {
    Error::local(
        Path::new(argv[0]),
        format!(
            "`{}` failed: {}",
            argv.join(" "),
            super::lvm_thin::one_line(&String::from_utf8_lossy(stderr))
        ),
    )
}

fn spawn(argv: &[&str]) -> Result<std::process::Child> {
    std::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::local(
                Path::new(argv[0]),
                format!("cannot run (is ZFS installed?): {e}"),
            )
        })
}

/// Waits for a child whose stdout was read; its stderr (bounded) explains a failure.
fn finish(argv: &[&str], mut child: std::process::Child) -> Result<()> {
    let mut err = Vec::new();
    if let Some(e) = child.stderr.take() {
        let _ = e.take(64 << 10).read_to_end(&mut err);
    }
    let status = child
        .wait()
        .map_err(|e| Error::local_io(Path::new(argv[0]), "", e))?;
    if !status.success() {
        return Err(failed(argv, &err));
    }
    Ok(())
}

impl Commands for System {
    fn run(&self, argv: &[&str]) -> Result<String> {
        let mut child = spawn(argv)?;
        let mut out = Vec::new();
        let read = child
            .stdout
            .take()
            .expect("piped")
            .take(MAX_OUTPUT + 1)
            .read_to_end(&mut out);
        if out.len() as u64 > MAX_OUTPUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Tool {
                program: argv.join(" "),
                what: format!("more than {MAX_OUTPUT} bytes of output"),
            });
        }
        finish(argv, child)?;
        read.map_err(|e| Error::local_io(Path::new(argv[0]), "", e))?;
        String::from_utf8(out).map_err(|_| Error::Tool {
            program: argv.join(" "),
            what: "output is not UTF-8".into(),
        })
    }

    fn stream(
        &self,
        argv: &[&str],
        read: &mut dyn FnMut(&mut dyn Read) -> Result<zstream::Summary>,
    ) -> Result<zstream::Summary> {
        let mut child = spawn(argv)?;
        let mut out = child.stdout.take().expect("piped");
        let parsed = read(&mut out);
        if parsed.is_err() {
            // A stream we stopped reading must not leave the sender blocked on its pipe.
            let _ = child.kill();
        }
        drop(out);
        let done = finish(argv, child);
        let sum = parsed?;
        done?;
        Ok(sum)
    }
}

/// One snapshot or bookmark of a zvol, as `zfs list` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    /// `pool/ds/vol@snap` or `pool/ds/vol#bookmark`.
    pub name: String,
    pub createtxg: u64,
    /// Creation time, seconds since the epoch.
    pub creation: i64,
}

impl Mark {
    /// The zvol and the part after `@` or `#`.
    fn split(&self) -> Option<(&str, &str)> {
        self.name
            .split_once('@')
            .or_else(|| self.name.split_once('#'))
    }
}

fn bad_line(program: &str, line: &str) -> Error {
    Error::Tool {
        program: program.into(),
        what: format!("line '{line}'"),
    }
}

/// Parses `zfs list -H -p -o name,createtxg,creation` output.
pub(crate) fn parse_marks(out: &str) -> Result<Vec<Mark>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            match f[..] {
                [name, txg, creation] => Ok(Mark {
                    name: name.into(),
                    createtxg: txg.parse().map_err(|_| bad_line("zfs list", line))?,
                    creation: creation.parse().map_err(|_| bad_line("zfs list", line))?,
                }),
                _ => Err(bad_line("zfs list", line)),
            }
        })
        .collect()
}

/// One zvol as `zfs list -o name,volsize,snapdev` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zvol {
    pub name: String,
    pub size: u64,
    /// Whether its snapshots have device nodes (`snapdev=visible`).
    pub snapdev_visible: bool,
}

/// Parses `zfs list -H -p -o name,volsize,snapdev` output.
pub(crate) fn parse_volumes(out: &str) -> Result<Vec<Zvol>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| match line.split('\t').collect::<Vec<_>>()[..] {
            [name, size, snapdev] => Ok(Zvol {
                name: name.to_string(),
                size: size.parse().map_err(|_| bad_line("zfs list", line))?,
                snapdev_visible: snapdev == "visible",
            }),
            _ => Err(bad_line("zfs list", line)),
        })
        .collect()
}

/// Chunk indices a stream's changes touch: writes up to `limit` bytes (the larger of the two
/// sizes), frees up to `old_size` only: past the old end the volume had nothing, and what was
/// freed there reads as the zeros a grown volume holds anyway (every incremental stream ends
/// with a FREE from the last block to the end of the address space).
pub(crate) fn changed_chunks(
    stream: impl Read,
    chunksize: u64,
    limit: u64,
    old_size: u64,
) -> Result<(ChunkRanges, zstream::Summary)> {
    let mut out = ChunkRanges::default();
    let sum = zstream::changes(stream, |c| {
        let (from, len, end) = match c {
            Change::Write { offset, len } => (offset, len, limit),
            Change::Free { offset, len } => (offset, len, old_size.min(limit)),
            Change::All => (0, u64::MAX, limit),
        };
        let to = from.saturating_add(len).min(end);
        if to > from {
            out.add(from / chunksize, (to - 1) / chunksize + 1);
        }
    })?;
    Ok((out, sum))
}

/// The zvols under one dataset (`--local=zfs:POOL/DATASET`).
pub struct ZfsStore {
    pub dataset: String,
    zfs: Box<dyn Commands>,
    /// Where zvol device nodes are (`/dev/zvol`; a directory of stand-ins in tests).
    dev_root: PathBuf,
}

impl ZfsStore {
    /// The dataset named by a `--local` value, if it is a `zfs:` one.
    pub fn spec(local: &str) -> Option<&str> {
        local.strip_prefix("zfs:")
    }

    /// Opens `POOL/DATASET`, checking with `zfs list` that it exists.
    pub(crate) fn open(dataset: &str, zfs: Box<dyn Commands>) -> Result<ZfsStore> {
        let dataset = dataset.trim_end_matches('/');
        if dataset.is_empty()
            || dataset.starts_with('/')
            || dataset.contains(['@', '#'])
            || dataset
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Error::BadValue {
                setting: crate::error::Setting::LocalStorage,
                value: format!("zfs:{dataset}"),
                expected: "name a pool or dataset, e.g. zfs:tank/vms".into(),
            });
        }
        let store = ZfsStore {
            dataset: dataset.into(),
            zfs,
            dev_root: PathBuf::from("/dev/zvol"),
        };
        store
            .zfs
            .run(&["zfs", "list", "-H", "-p", "-o", "name", dataset])
            .map_err(|e| {
                Error::local(
                    Path::new(&format!("zfs:{dataset}")),
                    format!("not a ZFS dataset (is the pool imported?): {e}"),
                )
            })?;
        Ok(store)
    }

    /// The zvol holding a volume.
    pub fn zvol(&self, name: &str) -> Result<String> {
        crate::format::ids::check_volume_name(name)?;
        if name.contains(['@', '#']) || name.split('/').any(str::is_empty) {
            return Err(Error::Usage(format!(
                "'{name}': ZFS volume names cannot contain '@', '#' or empty components"
            )));
        }
        Ok(format!("{}/{name}", self.dataset))
    }

    /// The device node of a zvol (or of a zvol's snapshot).
    pub fn device(&self, zvol: &str) -> PathBuf {
        self.dev_root.join(zvol)
    }

    /// The zvol a volume's device path names (what a send was given as its source).
    fn zvol_of(&self, v: &PrepareVolume) -> Result<String> {
        v.file
            .strip_prefix(&self.dev_root)
            .ok()
            .and_then(Path::to_str)
            .filter(|z| z.starts_with(&format!("{}/", self.dataset)))
            .map(String::from)
            .map_or_else(|| self.zvol(v.name), Ok)
    }

    fn run(&self, argv: &[&str]) -> Result<String> {
        self.zfs.run(argv)
    }

    /// Every zvol under the dataset.
    pub fn volumes(&self) -> Result<Vec<Zvol>> {
        parse_volumes(&self.run(&[
            "zfs",
            "list",
            "-H",
            "-p",
            "-r",
            "-t",
            "volume",
            "-o",
            "name,volsize,snapdev",
            &self.dataset,
        ])?)
    }

    /// Every snapshot and bookmark under the dataset.
    pub fn marks(&self) -> Result<Vec<Mark>> {
        parse_marks(&self.run(&[
            "zfs",
            "list",
            "-H",
            "-p",
            "-r",
            "-t",
            "snapshot,bookmark",
            "-o",
            "name,createtxg,creation",
            &self.dataset,
        ])?)
    }

    /// Destroys a snapshot or bookmark. udev may still be probing a new snapshot's device node,
    /// which makes it busy for a moment: retried for up to 5 s.
    fn destroy(&self, name: &str) -> Result<()> {
        let mut tries = 0;
        loop {
            match self.run(&["zfs", "destroy", name]) {
                Ok(_) => return Ok(()),
                Err(e) if tries < 20 && e.to_string().contains("busy") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits (bounded) for a device node udev makes asynchronously.
    fn wait_for_device(&self, path: &Path) -> Result<()> {
        let start = std::time::Instant::now();
        while !path.exists() {
            if start.elapsed() > DEVICE_WAIT {
                return Err(Error::local(
                    path,
                    "the snapshot's device did not appear (is udev running, and the zvol's volmode 'default' or 'dev'?)",
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }

    /// Snapshots every volume, decides how each is scanned and reads what changed for the
    /// paired ones (one `zfs send -i` each). `monitor` leaves unpaired volumes alone. On error
    /// no new snapshot is left behind.
    pub(crate) fn prepare(
        self: &Arc<Self>,
        vols: &[PrepareVolume],
        uuid: &str,
        cache_dir: Option<&Path>,
        chunksize: u64,
        monitor: bool,
    ) -> Result<Vec<Prepared>> {
        let mut out: Vec<Prepared> = Vec::new();
        let r = self.prepare_into(&mut out, vols, uuid, cache_dir, chunksize, monitor);
        if r.is_err() {
            out.iter().for_each(|p| p.snaps.drop_snap2());
        }
        r.map(|()| out)
    }

    fn prepare_into(
        self: &Arc<Self>,
        out: &mut Vec<Prepared>,
        vols: &[PrepareVolume],
        uuid: &str,
        cache_dir: Option<&Path>,
        chunksize: u64,
        monitor: bool,
    ) -> Result<()> {
        let volumes = self.volumes()?;
        let marks = self.marks()?;
        let prefix = format!("wyng_{uuid}_");
        for v in vols {
            let zvol = self.zvol_of(v)?;
            let Some(zv) = volumes.iter().find(|z| z.name == zvol) else {
                if monitor {
                    tracing::warn!(
                        "{}: no such volume in zfs:{}; skipped",
                        v.name,
                        self.dataset
                    );
                    out.push(Prepared {
                        snaps: Box::new(self.snaps(&zvol, uuid, cache_dir, &v.vid)),
                        plan: Plan::Skip,
                        found: 0,
                    });
                    continue;
                }
                return Err(Error::local(
                    Path::new(&zvol),
                    format!("volume '{}' is not a zvol in zfs:{}", v.name, self.dataset),
                ));
            };
            let size = zv.size;
            let snaps = self.snaps(&zvol, uuid, cache_dir, &v.vid);
            let mine: Vec<&Mark> = marks
                .iter()
                .filter(|m| {
                    m.split()
                        .is_some_and(|(z, s)| z == zvol && s.starts_with(&prefix))
                })
                .collect();
            let (mut plan, baseline) = self.plan(v, &snaps, mine, monitor)?;
            let mut found = 0;
            if !matches!(plan, Plan::Skip) {
                if !zv.snapdev_visible {
                    // Snapshots are read through their device nodes.
                    tracing::info!("{zvol}: setting snapdev=visible so its snapshots can be read");
                    self.run(&["zfs", "set", "snapdev=visible", &zvol])?;
                }
                self.run(&["zfs", "snapshot", &snaps.tock])?;
                out.push(Prepared {
                    snaps: Box::new(snaps.clone()),
                    plan: Plan::Skip,
                    found: 0,
                });
                self.wait_for_device(&snaps.snap2)?;
                if let (Plan::Incremental(map), Some(b)) = (&mut plan, baseline) {
                    let old = v.last.map_or(0, |l| l.info.volsize);
                    let (changed, sum) =
                        self.delta(&b.name, &snaps.tock, chunksize, size.max(old), old)?;
                    tracing::info!(
                        "{}: {} WRITE and {} FREE records since {}",
                        v.name,
                        sum.writes,
                        sum.frees,
                        b.name
                    );
                    found = changed.count();
                    map.cover(size, chunksize);
                    map.mark_ranges(&changed);
                }
                out.pop();
            }
            out.push(Prepared {
                snaps: Box::new(snaps),
                plan,
                found,
            });
        }
        Ok(())
    }

    /// How volume `v` is scanned: incrementally from this archive's newest bookmark (of
    /// `mine`, its marks) when the delta map recorded with it is there; otherwise in full (or,
    /// for `monitor`, not at all), its bookmarks destroyed. A stale `tock` is destroyed first.
    fn plan<'m>(
        &self,
        v: &PrepareVolume,
        snaps: &ZvolSnaps,
        mine: Vec<&'m Mark>,
        monitor: bool,
    ) -> Result<(Plan, Option<&'m Mark>)> {
        if let Some(stale) = mine.iter().find(|m| m.name == snaps.tock) {
            self.destroy(&stale.name)?;
        }
        let mut bookmarks: Vec<&Mark> = mine.into_iter().filter(|m| m.name.contains('#')).collect();
        bookmarks.sort_by_key(|m| m.createtxg);
        let baseline = bookmarks.last().copied();
        let map = v.last.and_then(|l| snaps.map_path(l));
        let paired = match (baseline, &map) {
            (Some(b), Some(map))
                if deltamap::mtime_ns(map) == Some(b.creation as i128 * 1_000_000_000) =>
            {
                match deltamap::pairing_without_snapshot(map) {
                    Pairing::PairedWithChanges => Some(DeltaMap::load(map)?),
                    _ => Some(DeltaMap::default()),
                }
            }
            _ => None,
        };
        let plan = match paired {
            Some(m) => Plan::Incremental(m),
            None => {
                if v.last.is_some() {
                    tracing::warn!(
                        "{}: no baseline bookmark of this archive paired with the newest session (destroyed, or never made here): {}",
                        v.name,
                        if monitor { "skipped" } else { "queuing full scan" }
                    );
                }
                for b in &bookmarks {
                    self.destroy(&b.name)?;
                }
                if let Some(c) = &snaps.cache {
                    deltamap::remove_others(c, None);
                }
                if monitor {
                    Plan::Skip
                } else {
                    Plan::Full
                }
            }
        };
        Ok((plan, baseline))
    }

    /// The chunks `zfs send -i from to` changes.
    fn delta(
        &self,
        from: &str,
        to: &str,
        chunksize: u64,
        limit: u64,
        old_size: u64,
    ) -> Result<(ChunkRanges, zstream::Summary)> {
        let mut ranges = ChunkRanges::default();
        let sum = self
            .zfs
            .stream(&["zfs", "send", "-i", from, to], &mut |r| {
                let (c, s) = changed_chunks(r, chunksize, limit, old_size)?;
                ranges = c;
                Ok(s)
            })?;
        Ok((ranges, sum))
    }

    fn snaps(
        self: &Arc<Self>,
        zvol: &str,
        uuid: &str,
        cache_dir: Option<&Path>,
        vid: &str,
    ) -> ZvolSnaps {
        let tock = format!("{zvol}@wyng_{uuid}_tock");
        ZvolSnaps {
            store: self.clone(),
            zvol: zvol.into(),
            prefix: format!("wyng_{uuid}_"),
            snap2: self.device(&tock),
            tock,
            cache: cache_dir.map(|d| d.join(vid)),
        }
    }

    /// wyng's snapshots and bookmarks under the dataset: of archive `uuid`, or of any archive.
    pub(crate) fn wyng_marks(&self, uuid: Option<&str>) -> Result<Vec<Mark>> {
        let prefix = uuid.map_or("wyng_".to_string(), |u| format!("wyng_{u}_"));
        Ok(self
            .marks()?
            .into_iter()
            .filter(|m| m.split().is_some_and(|(_, s)| s.starts_with(&prefix)))
            .collect())
    }

    /// Removes one of wyng's snapshots or bookmarks (`delete --clean`).
    pub(crate) fn remove_mark(&self, name: &str) -> Result<()> {
        self.destroy(name)
    }

    /// The device of a volume for a receive, made (or resized) to `size` first.
    pub(crate) fn volume_for_receive(&self, name: &str, size: u64) -> Result<PathBuf> {
        let zvol = self.zvol(name)?;
        let dev = self.device(&zvol);
        match self.volumes()?.iter().find(|z| z.name == zvol) {
            None => {
                let s = size.to_string();
                self.run(&["zfs", "create", "-p", "-s", "-V", &s, &zvol])?;
            }
            Some(z) if z.size != size => {
                self.run(&["zfs", "set", &format!("volsize={size}"), &zvol])?;
            }
            Some(_) => {}
        }
        self.wait_for_device(&dev)?;
        Ok(dev)
    }
}

/// The new snapshot and the baseline bookmark of one zvol.
#[derive(Clone)]
pub(crate) struct ZvolSnaps {
    store: Arc<ZfsStore>,
    zvol: String,
    /// `wyng_<uuid>_`: what this archive's names start with.
    prefix: String,
    /// `<zvol>@wyng_<uuid>_tock`.
    tock: String,
    snap2: PathBuf,
    cache: Option<PathBuf>,
}

impl Snapshots for ZvolSnaps {
    fn snap2_path(&self) -> &Path {
        &self.snap2
    }

    fn cache(&self) -> Option<&Path> {
        self.cache.as_deref()
    }

    /// The new snapshot becomes the only bookmark of this archive, then goes: the time is its
    /// creation time.
    fn promote_snap2(&self, _last: &Session) -> Result<i128> {
        let s = &self.store;
        let marks = s.marks()?;
        let tock = marks
            .iter()
            .find(|m| m.name == self.tock)
            .ok_or_else(|| Error::local(Path::new(&self.tock), "snapshot vanished"))?;
        let bookmark = format!("{}#{}{}", self.zvol, self.prefix, tock.createtxg);
        if !marks.iter().any(|m| m.name == bookmark) {
            s.run(&["zfs", "bookmark", &self.tock, &bookmark])?;
        }
        for old in marks.iter().filter(|m| {
            m.name != bookmark
                && m.split()
                    .is_some_and(|(z, n)| z == self.zvol && n.starts_with(&self.prefix))
                && m.name.contains('#')
        }) {
            s.destroy(&old.name)?;
        }
        s.destroy(&self.tock)?;
        Ok(tock.creation as i128 * 1_000_000_000)
    }

    fn drop_snap2(&self) {
        let _ = self.store.destroy(&self.tock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::zstream::tests::Builder;
    use parking_lot::Mutex;

    /// Answers commands from a script of (argv prefix, output) and records every call; the
    /// first matching answer is used up unless it is the last one for that prefix.
    /// An argv prefix and what the command then prints (or its error).
    type Answer = (String, std::result::Result<Vec<u8>, String>);

    #[derive(Clone, Default)]
    struct Fake {
        log: Arc<Mutex<Vec<String>>>,
        answers: Arc<Mutex<Vec<Answer>>>,
    }

    impl Fake {
        fn answer(&self, prefix: &str, out: impl Into<Vec<u8>>) {
            self.answers.lock().push((prefix.into(), Ok(out.into())));
        }
        /// From now on `prefix` gets only this answer.
        fn replace(&self, prefix: &str, out: impl Into<Vec<u8>>) {
            self.answers.lock().retain(|(p, _)| p != prefix);
            self.answer(prefix, out);
        }
        fn calls(&self) -> Vec<String> {
            self.log.lock().clone()
        }
        fn take(&self, argv: &[&str]) -> Result<Vec<u8>> {
            let line = argv.join(" ");
            self.log.lock().push(line.clone());
            let mut a = self.answers.lock();
            let m: Vec<usize> = (0..a.len())
                .filter(|&i| line.starts_with(&a[i].0))
                .collect();
            let r = match m[..] {
                [] => Ok(Vec::new()),
                [only] => a[only].1.clone(),
                [first, ..] => a.remove(first).1,
            };
            r.map_err(|what| Error::Tool {
                program: "zfs".into(),
                what,
            })
        }
    }

    impl Commands for Fake {
        fn run(&self, argv: &[&str]) -> Result<String> {
            Ok(String::from_utf8(self.take(argv)?).unwrap())
        }
        fn stream(
            &self,
            argv: &[&str],
            read: &mut dyn FnMut(&mut dyn Read) -> Result<zstream::Summary>,
        ) -> Result<zstream::Summary> {
            let bytes = self.take(argv)?;
            read(&mut &bytes[..])
        }
    }

    const VOLS: &str = "tank/vms/web\t1073741824\tvisible\ntank/vms/db\t2147483648\thidden\n";

    #[test]
    fn listings_parse_and_reject_garbage() {
        let v = parse_volumes(VOLS).unwrap();
        assert_eq!((v[1].name.as_str(), v[1].size), ("tank/vms/db", 2147483648));
        assert!(v[0].snapdev_visible && !v[1].snapdev_visible);
        let m = parse_marks("tank/vms/web#wyng_U_41\t41\t1700000000\n").unwrap();
        assert_eq!(m[0].split(), Some(("tank/vms/web", "wyng_U_41")));
        assert!(parse_marks("tank/vms/web#x\tnot\t1\n").is_err());
        assert!(parse_volumes("one field\n").is_err());
    }

    #[test]
    fn stream_changes_become_chunks_clipped_at_the_volume() {
        let s = Builder::new(false)
            .write(1, 16384, &[1; 16384])
            .write(1, 200 << 10, &[1; 16384])
            .free(1, 1 << 20, 1 << 16)
            .free(1, 4 << 20, u64::MAX)
            .write(2, 0, &[3; 8])
            .end();
        let (c, sum) = changed_chunks(&s[..], 65536, 2 << 20, 2 << 20).unwrap();
        assert_eq!(c.chunks().collect::<Vec<_>>(), [0, 3, 16]);
        // Grown from 1 MiB: the free past the old end is nothing new.
        let (c, _) = changed_chunks(&s[..], 65536, 2 << 20, 1 << 20).unwrap();
        assert_eq!(c.chunks().collect::<Vec<_>>(), [0, 3]);
        assert_eq!((sum.writes, sum.frees), (2, 2));
    }

    /// The store, with device stand-ins under `dev` (the new snapshot's one made).
    fn store(fake: &Fake, dev: &Path) -> Arc<ZfsStore> {
        let mut s = ZfsStore::open("tank/vms", Box::new(fake.clone())).unwrap();
        s.dev_root = dev.to_path_buf();
        std::fs::create_dir_all(dev.join("tank/vms")).unwrap();
        std::fs::write(dev.join("tank/vms/web@wyng_U_tock"), b"").unwrap();
        Arc::new(s)
    }

    fn session(name: &str, seq: u64) -> Session {
        Session {
            name: crate::format::SessionName::parse(name).unwrap(),
            info: crate::format::SessionInfo {
                localtime: 0,
                previous: None,
                permissions: "420:root:root".into(),
                manifest_hash: None,
                volsize: 1073741824,
                sequence: seq,
                mfcs: None,
                tags: Vec::new(),
            },
        }
    }

    fn vols<'a>(last: Option<&'a Session>, dev: &Path) -> Vec<PrepareVolume<'a>> {
        vec![PrepareVolume {
            name: "web",
            file: dev.to_path_buf(),
            vid: "Vol_1a2b3c".into(),
            last,
            snapshot_of: None,
        }]
    }

    #[test]
    fn a_paired_bookmark_gives_the_streams_changes_and_rotates_into_a_new_bookmark() {
        let d = tempfile::tempdir().unwrap();
        let last = session("S_20261101-020000", 4);
        let map = deltamap::path(&d.path().join("Vol_1a2b3c"), last.name.as_str(), 4);
        DeltaMap::blank(1 << 30, 65536)
            .save(&map, 1_700_000_000 * 1_000_000_000)
            .unwrap();
        let fake = Fake::default();
        fake.answer("zfs list -H -p -r -t volume", VOLS);
        fake.answer(
            "zfs list -H -p -r -t snapshot,bookmark",
            "tank/vms/web#wyng_U_30\t30\t1690000000\ntank/vms/web#wyng_U_41\t41\t1700000000\ntank/vms/web@wyng_U_tock\t45\t1700000050\ntank/vms/web#wyng_OTHER_2\t2\t1600000000\n",
        );
        let stream = Builder::new(false)
            .write(1, 0, &[1; 16384])
            .write(1, 16384, &[1; 16384])
            .free(1, 10 << 20, 65536)
            .end();
        fake.answer("zfs send", stream);
        let st = store(&fake, &d.path().join("dev"));
        let p = st
            .prepare_into_test(&vols(Some(&last), d.path()), d.path())
            .unwrap();
        let Plan::Incremental(m) = &p[0].plan else {
            panic!("paired volume is incremental");
        };
        assert_eq!(m.chunks(u64::MAX), [0, 160]);
        assert_eq!(p[0].found, 2);
        let calls: Vec<String> = fake
            .calls()
            .into_iter()
            .filter(|c| !c.starts_with("zfs list"))
            .collect();
        assert_eq!(
            calls,
            [
                "zfs destroy tank/vms/web@wyng_U_tock",
                "zfs snapshot tank/vms/web@wyng_U_tock",
                "zfs send -i tank/vms/web#wyng_U_41 tank/vms/web@wyng_U_tock",
            ]
        );
        // After the send: the snapshot becomes the only bookmark of this archive, then goes;
        // another archive's bookmark stays.
        fake.replace(
            "zfs list -H -p -r -t snapshot,bookmark",
            "tank/vms/web#wyng_U_30\t30\t1690000000\ntank/vms/web#wyng_U_41\t41\t1700000000\ntank/vms/web@wyng_U_tock\t50\t1700000100\ntank/vms/web#wyng_OTHER_2\t2\t1600000000\n",
        );
        let new = session("S_20261102-020000", 5);
        p[0].snaps.rotate_after_send(&new, 65536).unwrap();
        let calls: Vec<String> = fake
            .calls()
            .into_iter()
            .filter(|c| !c.starts_with("zfs list"))
            .skip(3)
            .collect();
        assert_eq!(
            calls,
            [
                "zfs bookmark tank/vms/web@wyng_U_tock tank/vms/web#wyng_U_50",
                "zfs destroy tank/vms/web#wyng_U_30",
                "zfs destroy tank/vms/web#wyng_U_41",
                "zfs destroy tank/vms/web@wyng_U_tock",
            ]
        );
        let newmap = deltamap::path(&d.path().join("Vol_1a2b3c"), new.name.as_str(), 5);
        assert_eq!(
            deltamap::mtime_ns(&newmap),
            Some(1_700_000_100 * 1_000_000_000)
        );
        assert!(!map.exists());
    }

    #[test]
    fn without_its_bookmark_a_volume_is_scanned_in_full_and_a_bad_stream_fails_cleanly() {
        let d = tempfile::tempdir().unwrap();
        let last = session("S_20261101-020000", 4);
        let fake = Fake::default();
        fake.answer("zfs list -H -p -r -t volume", VOLS);
        fake.answer("zfs list -H -p -r -t snapshot,bookmark", "");
        let st = store(&fake, &d.path().join("dev"));
        let p = st
            .prepare_into_test(&vols(Some(&last), d.path()), d.path())
            .unwrap();
        assert!(matches!(p[0].plan, Plan::Full));
        assert!(!fake.calls().iter().any(|c| c.starts_with("zfs send")));
        // Paired, but the stream is cut: an error, and the new snapshot is gone.
        let map = deltamap::path(&d.path().join("Vol_1a2b3c"), last.name.as_str(), 4);
        DeltaMap::blank(1 << 30, 65536)
            .save(&map, 1_700_000_000 * 1_000_000_000)
            .unwrap();
        let fake = Fake::default();
        fake.answer("zfs list -H -p -r -t volume", VOLS);
        fake.answer(
            "zfs list -H -p -r -t snapshot,bookmark",
            "tank/vms/web#wyng_U_41\t41\t1700000000\n",
        );
        let stream = Builder::new(false).write(1, 0, &[1; 16384]).end();
        fake.answer("zfs send", &stream[..stream.len() - 400]);
        let st = store(&fake, &d.path().join("dev"));
        assert!(st
            .prepare_into_test(&vols(Some(&last), d.path()), d.path())
            .is_err());
        assert_eq!(
            fake.calls().last().unwrap(),
            "zfs destroy tank/vms/web@wyng_U_tock"
        );
    }

    impl ZfsStore {
        /// `prepare` with the volume found by name (the device stand-in is `dev`).
        fn prepare_into_test(
            self: &Arc<Self>,
            vols: &[PrepareVolume],
            cache: &Path,
        ) -> Result<Vec<Prepared>> {
            self.prepare(vols, "U", Some(cache), 65536, false)
        }
    }
}
