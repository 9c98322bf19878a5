//! Change detection on LVM thin pools (`--local=vg/pool`), behaviour notes §5.1–§5.6: each volume
//! `vg/<lv>` has a baseline thin snapshot `<lv>.tick` and a new one `<lv>.tock`; what changed
//! between them comes from the pool's metadata with `thin_delta`, never from reading the data.
//!
//! Invariants:
//! * Snapshots carry the tags `wyng` and `arch-<uuid>`; the baseline also carries the name of the
//!   session it was rotated for. A baseline is paired only if it has both archive tags and the
//!   newest session's delta map has the baseline's creation time as its mtime (§5.2); anything
//!   else is a full scan.
//! * `thin_delta` reads a metadata snapshot reserved with `dmsetup message … reserve_metadata_snap`
//!   and it is always released afterwards, even when a delta fails.
//! * Every command goes through a [`Runner`], so the command plans are tested with recorded
//!   `lvs` and `thin_delta` outputs. device-mapper is absent on our build machines: this path has
//!   not yet been run against a live pool (README says so).

use std::path::{Path, PathBuf};

use super::deltamap::{self, ChunkRanges, DeltaMap, Pairing};
use super::{Plan, Prepared, Snapshots};
use crate::error::{Error, Result};
use crate::format::Session;

/// Runs one external command and returns its standard output, or an error that names it.
pub trait Runner: Send + Sync {
    fn run(&self, argv: &[String]) -> Result<String>;
}

/// Runs commands for real.
pub struct System;

impl Runner for System {
    fn run(&self, argv: &[String]) -> Result<String> {
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            // Inherited descriptors are ours to keep; LVM's warning about each is noise.
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output()
            .map_err(|e| Error::local_io(Path::new(&argv[0]), "cannot run", e))?;
        if !out.status.success() {
            return Err(Error::local(
                Path::new(&argv[0]),
                format!(
                    "`{}` failed: {}",
                    argv.join(" "),
                    one_line(&String::from_utf8_lossy(&out.stderr))
                ),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A tool's message on one line (errors are one line each): its lines joined by "; ".
pub(crate) fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// One logical volume as `lvs` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lv {
    pub vg: String,
    pub name: String,
    pub attr: String,
    pub size: u64,
    pub pool: String,
    pub thin_id: Option<u64>,
    pub tags: Vec<String>,
    /// Creation time, seconds since the epoch.
    pub time: i64,
}

/// The fields [`parse_lvs`] expects, in order.
const LVS_FIELDS: &str = "vg_name,lv_name,lv_attr,lv_size,pool_lv,thin_id,lv_tags,lv_time";

/// The `lvs` command whose output [`parse_lvs`] reads.
pub(crate) fn lvs_command(vg: &str) -> Vec<String> {
    argv(&[
        "lvm",
        "lvs",
        "--noheadings",
        "--units=b",
        "--nosuffix",
        "--separator=::",
        "--config=report/time_format=\"%s\"",
        "-o",
        LVS_FIELDS,
        vg,
    ])
}

/// Parses `lvs` output made by [`lvs_command`].
pub(crate) fn parse_lvs(out: &str) -> Result<Vec<Lv>> {
    let bad = |l: &str| Error::Tool {
        program: "lvs".into(),
        what: format!("line '{l}'"),
    };
    let mut v = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split("::").map(str::trim).collect();
        if f.len() != 8 {
            return Err(bad(line));
        }
        v.push(Lv {
            vg: f[0].into(),
            name: f[1].into(),
            attr: f[2].into(),
            size: f[3].parse().map_err(|_| bad(line))?,
            pool: f[4].into(),
            thin_id: (!f[5].is_empty())
                .then(|| f[5].parse())
                .transpose()
                .map_err(|_| bad(line))?,
            tags: f[6]
                .split(',')
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
            time: f[7].parse().map_err(|_| bad(line))?,
        });
    }
    Ok(v)
}

/// Chunk indices that `thin_delta` output marks as changed (§5.4): every `different`,
/// `right_only` and `left_only` range, in data blocks of `data_block_size` sectors, clipped at
/// the larger of the two volume sizes.
pub(crate) fn parse_thin_delta(
    xml: &str,
    chunksize: u64,
    size1: u64,
    size2: u64,
) -> Result<ChunkRanges> {
    let bad = |what: &str| Error::Tool {
        program: "thin_delta".into(),
        what: what.to_string(),
    };
    let doc = roxmltree::Document::parse(xml).map_err(|e| bad(&e.to_string()))?;
    let root = doc.root_element();
    let dbs: u64 = root
        .attribute("data_block_size")
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .ok_or_else(|| bad("no data_block_size"))?;
    let limit = size1.max(size2) / 512;
    let per_chunk = (chunksize / 512).max(1);
    let mut out = ChunkRanges::default();
    for n in root.descendants().filter(|n| n.is_element()) {
        if !matches!(
            n.tag_name().name(),
            "different" | "right_only" | "left_only"
        ) {
            continue;
        }
        let num = |a: &str| {
            n.attribute(a)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad(&format!("<{}> without {a}", n.tag_name().name())))
        };
        let (begin, length) = (num("begin")?, num("length")?);
        let from = begin.saturating_mul(dbs);
        let to = begin.saturating_add(length).saturating_mul(dbs).min(limit);
        if to > from {
            out.add(from / per_chunk, (to - 1) / per_chunk + 1);
        }
    }
    Ok(out)
}

/// A device-mapper name part: hyphens doubled.
fn dm_escape(s: &str) -> String {
    s.replace('-', "--")
}

/// A thin pool holding volumes as thin LVs (`--local=vg/pool`).
pub struct ThinPool {
    pub vg: String,
    pub pool: String,
    runner: Box<dyn Runner>,
    /// `--remap`: a `.tick` of another archive is removed rather than refused.
    pub remap: bool,
}

impl ThinPool {
    /// Whether a `--local` value names a volume group and pool rather than a directory.
    pub fn is_spec(local: &str) -> bool {
        !local.starts_with('/') && local.split('/').count() == 2 && !local.contains("..")
    }

    /// `--remap`: a `.tick` snapshot of another archive is removed instead of stopping.
    pub(crate) fn with_remap(mut self, remap: bool) -> ThinPool {
        self.remap = remap;
        self
    }

    /// Opens `vg/pool`, checking with `lvs` that it is a thin pool (§5.1).
    pub fn open(spec: &str, runner: Box<dyn Runner>) -> Result<ThinPool> {
        let (vg, pool) = spec
            .split_once('/')
            .filter(|(v, p)| !v.is_empty() && !p.is_empty())
            .ok_or_else(|| Error::BadValue {
                setting: crate::error::Setting::LocalStorage,
                value: spec.into(),
                expected: "use vg/pool or /dir".into(),
            })?;
        let tp = ThinPool {
            vg: vg.into(),
            pool: pool.into(),
            runner,
            remap: false,
        };
        let lvs = tp.lvs().map_err(|e| {
            Error::local(
                Path::new(spec),
                format!("cannot list logical volumes (is LVM installed?): {e}"),
            )
        })?;
        match lvs.iter().find(|l| l.name == pool) {
            Some(l) if l.attr.starts_with('t') => Ok(tp),
            _ => Err(Error::local(
                Path::new(spec),
                "is not an LVM thin pool (lvs attribute 't')",
            )),
        }
    }

    fn lvs(&self) -> Result<Vec<Lv>> {
        parse_lvs(&self.runner.run(&lvs_command(&self.vg))?)
    }

    pub fn device(&self, lv: &str) -> PathBuf {
        PathBuf::from(format!("/dev/{}/{lv}", self.vg))
    }

    fn run(&self, parts: &[&str]) -> Result<String> {
        self.runner.run(&argv(parts))
    }

    /// wyng's snapshots in the volume group (tagged `wyng`, named `<lv>.tick` or `<lv>.tock`):
    /// `(snapshot, archive uuid from its arch-<uuid> tag if any, volume)`.
    pub(crate) fn wyng_snapshots(&self) -> Result<Vec<(String, Option<String>, String)>> {
        Ok(self
            .lvs()?
            .into_iter()
            .filter(|l| l.pool == self.pool && l.tags.iter().any(|t| t == "wyng"))
            .filter_map(|l| {
                let vol = l
                    .name
                    .strip_suffix(".tick")
                    .or_else(|| l.name.strip_suffix(".tock"))?
                    .to_string();
                let uuid = l
                    .tags
                    .iter()
                    .find_map(|t| t.strip_prefix("arch-"))
                    .map(String::from);
                Some((l.name, uuid, vol))
            })
            .collect())
    }

    /// Removes one logical volume of the group.
    pub fn remove(&self, lv: &str) -> Result<()> {
        self.run(&["lvm", "lvremove", "-f", &format!("{}/{lv}", self.vg)])
            .map(drop)
    }

    /// Snapshots every volume (`<lv>.tock`), decides how each is scanned and reads what
    /// changed for the paired ones from one metadata snapshot (§5.3, §5.4). `monitor` leaves
    /// unpaired volumes alone. On error no `.tock` is left behind.
    pub(crate) fn prepare(
        self: &std::sync::Arc<Self>,
        vols: &[super::reflink::PrepareVolume],
        uuid: &str,
        cache_dir: Option<&Path>,
        chunksize: u64,
        monitor: bool,
    ) -> Result<Vec<Prepared>> {
        let arch_tag = format!("arch-{uuid}");
        let lvs = self.lvs()?;
        let mut out: Vec<Prepared> = Vec::new();
        let mut jobs = Vec::new();
        let cleanup = |out: &[Prepared]| out.iter().for_each(|p| p.snaps.drop_snap2());
        for v in vols {
            match self.prepare_volume(&lvs, v, &arch_tag, cache_dir, monitor) {
                Ok((prepared, job)) => {
                    if let Some((tick, size)) = job {
                        jobs.push((out.len(), tick, size));
                    }
                    out.push(prepared);
                }
                Err(e) => {
                    cleanup(&out);
                    return Err(e);
                }
            }
        }
        if jobs.is_empty() {
            return Ok(out);
        }
        let found = self.deltas(&jobs, vols, chunksize);
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                cleanup(&out);
                return Err(e);
            }
        };
        for ((i, _, size), changed) in jobs.iter().zip(found) {
            let p = &mut out[*i];
            p.found = changed.count();
            if let Plan::Incremental(map) = &mut p.plan {
                map.cover(*size, chunksize);
                map.mark_ranges(&changed);
            }
        }
        Ok(out)
    }

    /// One volume of [`Self::prepare`]: its plan and its new `.tock` (none for
    /// [`Plan::Skip`]), and for an incremental plan the `.tick` to diff against and the
    /// volume's size. On error no `.tock` of it is left behind.
    fn prepare_volume(
        self: &std::sync::Arc<Self>,
        lvs: &[Lv],
        v: &super::reflink::PrepareVolume,
        arch_tag: &str,
        cache_dir: Option<&Path>,
        monitor: bool,
    ) -> Result<(Prepared, Option<(Lv, u64)>)> {
        let find = |n: &str| lvs.iter().find(|l| l.name == n);
        let Some(lv) = find(v.name).filter(|l| l.pool == self.pool) else {
            return Err(Error::local(
                Path::new(v.name),
                format!("not a thin volume in {}/{}", self.vg, self.pool),
            ));
        };
        let snaps = LvSnaps {
            pool: self.clone(),
            lv: v.name.to_string(),
            cache: cache_dir.map(|d| d.join(&v.vid)),
            snap2: self.device(&format!("{}.tock", v.name)),
        };
        // A .tock left by an interrupted run is never trusted.
        if find(&format!("{}.tock", v.name)).is_some() {
            self.remove(&format!("{}.tock", v.name))?;
        }
        let tick = self.own_tick(find(&format!("{}.tick", v.name)), arch_tag, v.name)?;
        let plan = self.plan(v, tick, &snaps, arch_tag, monitor);
        let mut job = None;
        if !matches!(plan, Plan::Skip) {
            self.snapshot(v.name, arch_tag, monitor)?;
            if let (Plan::Incremental(_), Some(t)) = (&plan, tick) {
                job = Some((t.clone(), lv.size));
            }
        }
        let prepared = Prepared {
            snaps: Box::new(snaps),
            plan,
            found: 0,
        };
        Ok((prepared, job))
    }

    /// The volume's `.tick`, if this archive's: a `.tick` of another archive (or of none) is not
    /// ours to use, nor to drop unasked (`remap` replaces it).
    fn own_tick<'l>(
        &self,
        tick: Option<&'l Lv>,
        arch_tag: &str,
        vol: &str,
    ) -> Result<Option<&'l Lv>> {
        let Some(t) = tick.filter(|t| !t.tags.iter().any(|x| x == arch_tag)) else {
            return Ok(tick);
        };
        if !self.remap {
            return Err(Error::local(
                Path::new(&t.name),
                "this snapshot belongs to another archive (or to none): send with --remap to replace it (the volume is then scanned in full)",
            ));
        }
        tracing::warn!(
            "{vol}: removing {}, a snapshot of another archive (--remap)",
            t.name
        );
        self.remove(&t.name)?;
        Ok(None)
    }

    /// How volume `v` is scanned: incrementally when its `.tick` is this archive's and its
    /// delta map is the one recorded with it; otherwise in full (or, for `monitor`, not at
    /// all), the stale `.tick` and maps removed.
    fn plan(
        &self,
        v: &super::reflink::PrepareVolume,
        tick: Option<&Lv>,
        snaps: &LvSnaps,
        arch_tag: &str,
        monitor: bool,
    ) -> Plan {
        let ours = |t: &Lv| t.tags.iter().any(|x| x == arch_tag);
        let paired = match (tick, v.last.and_then(|l| snaps.map_path(l))) {
            (Some(t), Some(map))
                if t.tags.iter().any(|x| x == "wyng")
                    && ours(t)
                    && deltamap::mtime_ns(&map) == Some(t.time as i128 * 1_000_000_000) =>
            {
                match deltamap::pairing_without_snapshot(&map) {
                    Pairing::PairedWithChanges => DeltaMap::load(&map).ok(),
                    _ => Some(DeltaMap::default()),
                }
            }
            _ => None,
        };
        if let Some(map) = paired {
            return Plan::Incremental(map);
        }
        if v.last.is_some() {
            tracing::warn!(
                "{}: no paired snapshot: {}",
                v.name,
                if monitor {
                    "skipped"
                } else {
                    "queuing full scan"
                }
            );
        }
        if tick.is_some_and(ours) {
            let _ = self.remove(&format!("{}.tick", v.name));
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

    /// Creates `<vol>.tock`, read-only, tagged for wyng and this archive (and `delta` for
    /// `monitor`).
    fn snapshot(&self, vol: &str, arch_tag: &str, monitor: bool) -> Result<()> {
        let mut cmd = vec![
            "lvm".to_string(),
            "lvcreate".into(),
            "-kn".into(),
            "-ay".into(),
            "-pr".into(),
            "--addtag=wyng".into(),
            format!("--addtag={arch_tag}"),
        ];
        if monitor {
            cmd.push("--addtag=delta".into());
        }
        cmd.extend([
            "-s".into(),
            format!("{}/{vol}", self.vg),
            "-n".into(),
            format!("{vol}.tock"),
        ]);
        self.runner.run(&cmd).map(drop)
    }

    /// `thin_delta` between each job's `.tick` and the new `.tock`, from one reserved metadata
    /// snapshot that is always released.
    fn deltas(
        &self,
        jobs: &[(usize, Lv, u64)],
        vols: &[super::reflink::PrepareVolume],
        chunksize: u64,
    ) -> Result<Vec<ChunkRanges>> {
        let lvs = self.lvs()?;
        let tpool = format!("{}-{}-tpool", dm_escape(&self.vg), dm_escape(&self.pool));
        let tmeta = format!(
            "/dev/mapper/{}-{}_tmeta",
            dm_escape(&self.vg),
            dm_escape(&self.pool)
        );
        self.run(&["dmsetup", "message", &tpool, "0", "reserve_metadata_snap"])?;
        let result: Result<Vec<ChunkRanges>> = jobs
            .iter()
            .map(|(i, tick, size)| {
                let name = format!("{}.tock", vols[*i].name);
                let tock = lvs
                    .iter()
                    .find(|l| l.name == name)
                    .ok_or_else(|| Error::local(Path::new(&name), "snapshot not created"))?;
                let (Some(a), Some(b)) = (tick.thin_id, tock.thin_id) else {
                    return Err(Error::local(Path::new(&name), "no thin_id"));
                };
                let xml = self.run(&[
                    "thin_delta",
                    "--metadata-snap",
                    &format!("--thin1={a}"),
                    &format!("--thin2={b}"),
                    &tmeta,
                ])?;
                parse_thin_delta(&xml, chunksize, tick.size, tock.size.max(*size))
            })
            .collect();
        // Released whatever happened: a held metadata snapshot blocks the pool's own
        // maintenance.
        let released = self.run(&["dmsetup", "message", &tpool, "0", "release_metadata_snap"]);
        let result = result?;
        released?;
        Ok(result)
    }
}

impl ThinPool {
    /// The device of a thin volume for a receive, made (or resized) to hold `size` bytes first
    /// (LVM rounds up to its extent size; the tail past the volume stays as it is).
    pub(crate) fn volume_for_receive(&self, name: &str, size: u64) -> Result<PathBuf> {
        let lvs = self.lvs()?;
        let size_arg = format!("{size}b");
        match lvs.iter().find(|l| l.name == name) {
            None => {
                self.run(&[
                    "lvm",
                    "lvcreate",
                    "-kn",
                    "-ay",
                    "-V",
                    &size_arg,
                    "-T",
                    &format!("{}/{}", self.vg, self.pool),
                    "-n",
                    name,
                ])?;
            }
            Some(l) if l.pool != self.pool => {
                return Err(Error::local(
                    self.device(name),
                    format!(
                        "exists but is not a thin volume of {}/{}",
                        self.vg, self.pool
                    ),
                ))
            }
            Some(l) if l.size != size => {
                self.run(&[
                    "lvm",
                    "lvresize",
                    "-f",
                    "-L",
                    &size_arg,
                    &format!("{}/{name}", self.vg),
                ])?;
            }
            Some(_) => {}
        }
        Ok(self.device(name))
    }
}

impl ThinPool {
    /// `receive --use-snapshot`: makes thin volume `name` a writable snapshot of its baseline
    /// `.tick` when that is this archive's and holds exactly the newest session `last` (paired,
    /// no change recorded in the map under `vol_cache`); `Ok(false)`, nothing touched,
    /// otherwise. The old volume goes only once the new one exists.
    pub fn restore_from_baseline(
        &self,
        name: &str,
        uuid: &str,
        vol_cache: Option<&Path>,
        last: &Session,
    ) -> Result<bool> {
        let lvs = self.lvs()?;
        let tick = format!("{name}.tick");
        let Some(t) = lvs.iter().find(|l| l.name == tick) else {
            return Ok(false);
        };
        let map = vol_cache.map(|c| deltamap::path(c, last.name.as_str(), last.info.sequence));
        let paired = t.tags.iter().any(|x| x == "wyng")
            && t.tags.contains(&format!("arch-{uuid}"))
            && map.is_some_and(|m| {
                deltamap::mtime_ns(&m) == Some(t.time as i128 * 1_000_000_000)
                    && deltamap::pairing_without_snapshot(&m) == Pairing::Paired
            });
        if !paired {
            return Ok(false);
        }
        let new = format!("{name}.wyng-restore");
        if lvs.iter().any(|l| l.name == new) {
            self.remove(&new)?;
        }
        self.run(&[
            "lvm",
            "lvcreate",
            "-kn",
            "-ay",
            "-prw",
            "-s",
            &format!("{}/{tick}", self.vg),
            "-n",
            &new,
        ])?;
        for tag in &t.tags {
            self.run(&[
                "lvm",
                "lvchange",
                &format!("--deltag={tag}"),
                &format!("{}/{new}", self.vg),
            ])?;
        }
        if lvs.iter().any(|l| l.name == name) {
            self.remove(name)?;
        }
        self.run(&["lvm", "lvrename", &format!("{}/{new}", self.vg), name])?;
        Ok(true)
    }
}

/// The `.tick`/`.tock` pair of one thin volume.
pub(crate) struct LvSnaps {
    pool: std::sync::Arc<ThinPool>,
    lv: String,
    cache: Option<PathBuf>,
    snap2: PathBuf,
}

impl LvSnaps {
    fn tick(&self) -> String {
        format!("{}.tick", self.lv)
    }
}

impl Snapshots for LvSnaps {
    fn snap2_path(&self) -> &Path {
        &self.snap2
    }

    fn cache(&self) -> Option<&Path> {
        self.cache.as_deref()
    }

    /// `.tock` becomes `.tick`, tagged with the session; the time is the LV's creation time.
    fn promote_snap2(&self, last: &Session) -> Result<i128> {
        let p = &self.pool;
        if p.lvs()?.iter().any(|l| l.name == self.tick()) {
            p.remove(&self.tick())?;
        }
        p.run(&[
            "lvm",
            "lvrename",
            &format!("{}/{}.tock", p.vg, self.lv),
            &self.tick(),
        ])?;
        p.run(&[
            "lvm",
            "lvchange",
            &format!("--addtag={}", last.name),
            &format!("{}/{}", p.vg, self.tick()),
        ])?;
        p.lvs()?
            .into_iter()
            .find(|l| l.name == self.tick())
            .map(|l| l.time as i128 * 1_000_000_000)
            .ok_or_else(|| Error::local(Path::new(&self.tick()), "vanished after rename"))
    }

    fn drop_snap2(&self) {
        let _ = self.pool.remove(&format!("{}.tock", self.lv));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::Arc;

    /// Answers commands from a script of (argv prefix, output) and records every call. Answers
    /// for one prefix are used in order; the last one keeps answering.
    type Answer = (String, std::result::Result<String, String>);

    #[derive(Clone, Default)]
    struct Fake {
        log: Arc<Mutex<Vec<String>>>,
        answers: Arc<Mutex<Vec<Answer>>>,
    }

    impl Fake {
        fn answer(&self, prefix: &str, out: &str) {
            self.answers.lock().push((prefix.into(), Ok(out.into())));
        }
        fn fail(&self, prefix: &str) {
            self.answers
                .lock()
                .push((prefix.into(), Err("failed".into())));
        }
        fn calls(&self) -> Vec<String> {
            self.log.lock().clone()
        }
    }

    impl Runner for Fake {
        fn run(&self, argv: &[String]) -> Result<String> {
            let line = argv.join(" ");
            self.log.lock().push(line.clone());
            let mut a = self.answers.lock();
            let matching: Vec<usize> = (0..a.len())
                .filter(|&i| line.starts_with(a[i].0.as_str()))
                .collect();
            let r = match matching.as_slice() {
                [] => Ok(String::new()),
                [only] => a[*only].1.clone(),
                [first, ..] => a.remove(*first).1,
            };
            r.map_err(|what| Error::Tool {
                program: "lvm".into(),
                what,
            })
        }
    }

    // Recorded from `lvs` on a thin pool (LVM 2.03), with the options of `lvs_command`.
    const LVS: &str = "  qubes_dom0::pool00::twi-aotz--::107374182400::::::::1700000000
  qubes_dom0::vm-work-private::Vwi-aotz--::2147483648::pool00::7::::1700000100
  qubes_dom0::vm-work-private.tick::Vri---tz-k::2147483648::pool00::9::wyng,arch-UUID,S_20261101-020000::1700000200
";
    const LVS_TOCK: &str = "  qubes_dom0::pool00::twi-aotz--::107374182400::::::::1700000000
  qubes_dom0::vm-work-private::Vwi-aotz--::2147483648::pool00::7::::1700000100
  qubes_dom0::vm-work-private.tick::Vri---tz-k::2147483648::pool00::9::wyng,arch-UUID,S_20261101-020000::1700000200
  qubes_dom0::vm-work-private.tock::Vri---tz-k::2147483648::pool00::12::wyng,arch-UUID::1700000300
";
    // Recorded from thin_delta 0.9 (`grep -v same` as the original filters it).
    const DELTA: &str = r#"<superblock uuid="" time="3" transaction="5" data_block_size="128" nr_data_blocks="1638400">
  <diff left="9" right="12">
    <different begin="0" length="1"/>
    <right_only begin="100" length="3"/>
    <left_only begin="2000" length="1"/>
  </diff>
</superblock>
"#;

    #[test]
    fn lvs_lines_parse() {
        let v = parse_lvs(LVS).unwrap();
        assert_eq!(v.len(), 3);
        assert!(v[0].attr.starts_with('t') && v[0].thin_id.is_none());
        assert_eq!(v[2].name, "vm-work-private.tick");
        assert_eq!(v[2].thin_id, Some(9));
        assert_eq!(v[2].tags, ["wyng", "arch-UUID", "S_20261101-020000"]);
        assert_eq!((v[2].size, v[2].time), (2147483648, 1700000200));
        assert!(parse_lvs("garbage").is_err());
    }

    #[test]
    fn thin_delta_ranges_become_chunks() {
        // 128 sectors per block = 64 KiB; chunks of 128 KiB hold two blocks.
        let c = parse_thin_delta(DELTA, 131072, 2 << 30, 2 << 30).unwrap();
        assert_eq!(c.chunks().collect::<Vec<_>>(), vec![0, 50, 51, 1000]);
        // Clipped at the larger volume size.
        let c = parse_thin_delta(DELTA, 131072, 1 << 20, 1 << 20).unwrap();
        assert_eq!(c.chunks().collect::<Vec<_>>(), vec![0]);
        assert!(parse_thin_delta("<superblock/>", 65536, 1, 1).is_err());
        assert!(parse_thin_delta("not xml", 65536, 1, 1).is_err());
    }

    fn session(name: &str, seq: u64) -> Session {
        Session {
            name: crate::format::SessionName::parse(name).unwrap(),
            info: crate::format::SessionInfo {
                localtime: 0,
                previous: None,
                permissions: "420:root:root".into(),
                manifest_hash: None,
                volsize: 2147483648,
                sequence: seq,
                mfcs: None,
                tags: Vec::new(),
            },
        }
    }

    /// A delta map for `last` paired with the recorded `.tick` (created at 1700000200).
    fn paired_map(cache: &Path, last: &Session) -> PathBuf {
        let map = deltamap::path(&cache.join("Vol_1a2b3c"), last.name.as_str(), 4);
        DeltaMap::blank(2147483648, 65536)
            .save(&map, 1_700_000_200 * 1_000_000_000)
            .unwrap();
        map
    }

    /// Opens the recorded pool through `fake` and prepares its one volume, newest session `last`.
    fn prepare_one(
        fake: &Fake,
        cache: &Path,
        last: &Session,
        monitor: bool,
    ) -> Result<Vec<Prepared>> {
        prepare_with(fake, cache, last, monitor, false)
    }

    fn prepare_with(
        fake: &Fake,
        cache: &Path,
        last: &Session,
        monitor: bool,
        remap: bool,
    ) -> Result<Vec<Prepared>> {
        let mut pool = ThinPool::open("qubes_dom0/pool00", Box::new(fake.clone())).unwrap();
        pool.remap = remap;
        let pool = Arc::new(pool);
        let vols = [super::super::reflink::PrepareVolume {
            name: "vm-work-private",
            file: pool.device("vm-work-private"),
            vid: "Vol_1a2b3c".into(),
            last: Some(last),
            snapshot_of: None,
        }];
        pool.prepare(&vols, "UUID", Some(cache), 65536, monitor)
    }

    #[test]
    fn paired_volume_plan_reserves_and_releases_the_metadata_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let last = session("S_20261101-020000", 4);
        let map = paired_map(d.path(), &last);
        let fake = Fake::default();
        fake.answer("lvm lvs", LVS);
        fake.answer("lvm lvs", LVS);
        fake.answer("lvm lvs", LVS_TOCK);
        fake.answer("thin_delta", DELTA);
        let p = prepare_one(&fake, d.path(), &last, false).unwrap();
        let Plan::Incremental(m) = &p[0].plan else {
            panic!("paired volume is incremental");
        };
        // 64 KiB blocks, 64 KiB chunks: blocks 0, 100-102, 2000.
        assert_eq!(m.chunks(u64::MAX), vec![0, 100, 101, 102, 2000]);
        assert_eq!(
            p[0].snaps.snap2_path(),
            Path::new("/dev/qubes_dom0/vm-work-private.tock")
        );
        let calls = fake.calls();
        let want = [
            "lvm lvcreate -kn -ay -pr --addtag=wyng --addtag=arch-UUID -s qubes_dom0/vm-work-private -n vm-work-private.tock",
            "dmsetup message qubes_dom0-pool00-tpool 0 reserve_metadata_snap",
            "thin_delta --metadata-snap --thin1=9 --thin2=12 /dev/mapper/qubes_dom0-pool00_tmeta",
            "dmsetup message qubes_dom0-pool00-tpool 0 release_metadata_snap",
        ];
        let got: Vec<&str> = calls
            .iter()
            .map(String::as_str)
            .filter(|c| !c.starts_with("lvm lvs"))
            .collect();
        assert_eq!(got, want);

        // After the send: .tock replaces .tick, tagged with the new session; a blank map is
        // stamped with the baseline's time.
        let new = session("S_20261102-020000", 5);
        fake.answer(
            "lvm lvs",
            &LVS.replace(
                "::9::wyng,arch-UUID,S_20261101-020000",
                "::12::wyng,arch-UUID,S_20261102-020000",
            )
            .replace("1700000200", "1700000300"),
        );
        p[0].snaps.rotate_after_send(&new, 65536).unwrap();
        let calls = fake.calls();
        let tail: Vec<&str> = calls
            .iter()
            .map(String::as_str)
            .filter(|c| !c.starts_with("lvm lvs"))
            .skip(4)
            .collect();
        assert_eq!(
            tail,
            [
                "lvm lvremove -f qubes_dom0/vm-work-private.tick",
                "lvm lvrename qubes_dom0/vm-work-private.tock vm-work-private.tick",
                "lvm lvchange --addtag=S_20261102-020000 qubes_dom0/vm-work-private.tick",
            ]
        );
        let newmap = deltamap::path(&d.path().join("Vol_1a2b3c"), new.name.as_str(), 5);
        assert_eq!(
            deltamap::mtime_ns(&newmap),
            Some(1_700_000_300 * 1_000_000_000)
        );
        assert!(!map.exists());
    }

    #[test]
    fn a_failed_delta_still_releases_and_drops_the_new_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let last = session("S_20261101-020000", 4);
        paired_map(d.path(), &last);
        let fake = Fake::default();
        fake.answer("lvm lvs", LVS);
        fake.answer("lvm lvs", LVS);
        fake.answer("lvm lvs", LVS_TOCK);
        fake.fail("thin_delta");
        assert!(prepare_one(&fake, d.path(), &last, false).is_err());
        let calls = fake.calls();
        assert!(calls.iter().any(|c| c.ends_with("release_metadata_snap")));
        assert!(calls
            .last()
            .unwrap()
            .ends_with("lvremove -f qubes_dom0/vm-work-private.tock"));
    }

    #[test]
    fn unpaired_volume_is_a_full_scan_and_loses_its_stale_tick() {
        let d = tempfile::tempdir().unwrap();
        let last = session("S_20261101-020000", 4);
        // No map: unpaired.
        let fake = Fake::default();
        fake.answer("lvm lvs", LVS);
        let p = prepare_one(&fake, d.path(), &last, false).unwrap();
        assert!(matches!(p[0].plan, Plan::Full));
        let calls = fake.calls();
        assert!(calls.contains(&"lvm lvremove -f qubes_dom0/vm-work-private.tick".to_string()));
        assert!(!calls.iter().any(|c| c.starts_with("dmsetup")));
        // monitor leaves it alone.
        let p = prepare_one(&fake, d.path(), &last, true).unwrap();
        assert!(matches!(p[0].plan, Plan::Skip));
    }

    #[test]
    fn a_tick_of_another_archive_needs_remap() {
        let d = tempfile::tempdir().unwrap();
        let last = session("S_20261101-020000", 4);
        paired_map(d.path(), &last);
        let foreign = LVS.replace("arch-UUID", "arch-OTHER");
        let fake = Fake::default();
        fake.answer("lvm lvs", &foreign);
        let Err(e) = prepare_with(&fake, d.path(), &last, false, false) else {
            panic!("a foreign .tick was used or dropped without --remap");
        };
        assert!(e.to_string().contains("--remap"), "{e}");
        assert!(!fake.calls().iter().any(|c| c.contains("lvremove")));
        // --remap: the foreign snapshot goes and the volume is scanned in full.
        let fake = Fake::default();
        fake.answer("lvm lvs", &foreign);
        let p = prepare_with(&fake, d.path(), &last, false, true).unwrap();
        assert!(matches!(p[0].plan, Plan::Full));
        assert!(fake
            .calls()
            .contains(&"lvm lvremove -f qubes_dom0/vm-work-private.tick".to_string()));
    }

    #[test]
    fn spec_detection_and_escaping() {
        assert!(ThinPool::is_spec("qubes_dom0/pool00"));
        assert!(!ThinPool::is_spec("/var/lib/qubes"));
        assert!(!ThinPool::is_spec("a/b/c"));
        assert_eq!(dm_escape("my-vg"), "my--vg");
        let fake = Fake::default();
        fake.answer("lvm lvs", LVS.replace("twi-", "-wi-").as_str());
        assert!(ThinPool::open("qubes_dom0/pool00", Box::new(fake)).is_err());
    }
}
