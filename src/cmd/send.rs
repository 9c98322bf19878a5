//! `wyng send`.

use std::path::PathBuf;

use clap::Args;

use wyng::format::Tag;
use wyng::ops::send::{Destinations, SendReport};
use wyng::ops::vols_from::{Failures, VolsFrom};
use wyng::ops::{self, prune::AutoMode};
use wyng::source::LocalStorage;
use wyng::{Error, Result};

use super::prune::{AutopruneArgs, RetentionArgs};
use super::{count, date, human, named_or_all, Global};

pub const HELP: &str = "Examples:\n  wyng send vm1.img --import-other-from='vm1.img:|:/srv/vm1.img' --dest=file:/mnt/usb/bk\n  wyng send -a --local=/var/lib/images --dest=file:/mnt/usb/laptop.backup\n  wyng send vm1.img --import-other-from='vm1.img:|:/var/lib/images/vm1.img' --dest=file:/mnt/usb/laptop.backup\n  wyng send --import-other-from='disk:|:/dev/sdb' --tag=weekly,'Weekly full' --dest=file:/mnt/usb/laptop.backup\n  wyng send -a --local=/var/lib/images --dest=file:/mnt/usb/laptop.backup\n  wyng send -a --local=/var/lib/images --dest=file:/mnt/usb/laptop.backup --dest=ssh://backup@offsite/srv/laptop.backup\n  wyng send vm-work-private vm-mail-private --local=qubes_dom0/vm-pool --dest=...\n  wyng send -a --local=zfs:tank/vms --dest=...\n\nThe first send of a volume stores it whole; later sends read the source and store only the\nchunks whose content differs from the archive's newest session (from --local: only the chunks\nthe copy-on-write snapshots show changed). A send that finds no change records nothing unless\n--send-unchanged.\n\nWith several --dest, each volume is snapshotted and read once for all the archives; one that\nfails does not stop the others (exit 2; `wyng list --outstanding` shows what it misses, and the\nnext send catches it up). An interrupted send resumes: the next send of the volume takes the\nchunks the destination already holds instead of sending them again.";

/// `--tag=ID[,DESC]`, or `--tag=@` / `--tag=` to be asked for tags on the terminal.
#[derive(Clone, Debug)]
pub enum TagArg {
    Tag(Tag),
    Ask,
}

fn tag(s: &str) -> Result<TagArg, String> {
    if s.is_empty() || s == "@" {
        return Ok(TagArg::Ask);
    }
    let (id, desc) = s.split_once(',').unwrap_or((s, ""));
    Tag::new(id, desc).map(TagArg::Tag)
}

/// The tags of `--tag`, asking on the terminal for those of `--tag=@` (as the original: up to
/// five, one `ID[,DESCRIPTION]` per line, an empty line ends).
fn tags(g: &Global, args: &[TagArg]) -> Result<Vec<Tag>> {
    let mut out: Vec<Tag> = args
        .iter()
        .filter_map(|t| match t {
            TagArg::Tag(t) => Some(t.clone()),
            TagArg::Ask => None,
        })
        .collect();
    if args.iter().any(|t| matches!(t, TagArg::Ask)) {
        if g.unattended() {
            return Err(Error::Usage(
                "--tag=@ asks for tags on a terminal; unattended, give them as --tag=ID[,DESCRIPTION]".into(),
            ));
        }
        while out.len() < wyng::format::info::MAX_TAGS {
            let line = super::prompt::ask("Tag ID[,description] (empty line: done):")?;
            let line = line.trim();
            if line.is_empty() {
                break;
            }
            let (id, desc) = line.split_once(',').unwrap_or((line, ""));
            match Tag::new(id.trim(), desc.trim()) {
                Ok(t) => out.push(t),
                Err(e) => eprintln!("{e}; try again"),
            }
        }
    }
    if out.len() > wyng::format::info::MAX_TAGS {
        return Err(Error::Usage("at most 5 tags per session".into()));
    }
    Ok(out)
}

fn import(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once(":|:")
        .ok_or_else(|| format!("'{s}' must look like 'NAME:|:/path/to/image'"))?;
    Ok((name.to_string(), PathBuf::from(path)))
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// Volume names (as stored in the archive)
    pub volumes: Vec<String>,
    /// Send volume NAME from the file or block device PATH: 'NAME:|:PATH' (repeatable)
    #[arg(long, value_name = "NAME:|:PATH", value_parser = import)]
    pub import_other_from: Vec<(String, PathBuf)>,
    /// Record a session even if nothing changed
    #[arg(long)]
    pub send_unchanged: bool,
    /// Tag the new sessions (repeatable)
    ///
    /// ID[,DESCRIPTION], up to 5; --tag=@ or --tag= asks for them on the terminal
    #[arg(long, value_name = "ID[,DESC]", value_parser = tag)]
    pub tag: Vec<TagArg>,
    /// Description for volumes this send adds to the archive
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub volume_desc: String,
    /// Store chunks the archive already holds (in any volume) as hard links
    #[arg(short = 'd', long)]
    pub dedup: bool,
    /// Volumes kept as files in DIR (Btrfs/XFS reflink), an LVM thin pool VG/POOL, or
    /// zfs:POOL/DATASET (its zvols)
    ///
    /// Sends read only what changed since the last send, from copy-on-write snapshots (Btrfs,
    /// or XFS with reflink; LVM thin pools by thin_delta; ZFS by `zfs send -i` records).
    #[arg(long, value_name = "DIR")]
    pub local: Option<PathBuf>,
    /// With --local: every volume the archive holds
    #[arg(short, long)]
    pub all: bool,
    /// Report how much would be sent; write nothing
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub auto: AutopruneArgs,
    /// Retention after the send (as `wyng prune --keep-*`, in the same run, journaled as prune
    /// is): for each volume that got a session, sessions no policy keeps are pruned
    #[command(flatten, next_help_heading = "Retention (after a successful send)")]
    pub retention: RetentionArgs,
    /// Volumes and their local storages from a JSON file
    ///
    /// e.g. {"/var/lib/images": [["web.img", null], ["db.img", "db-local.img"]]}; volumes that
    /// fail are listed in FILE.error and the run exits 2
    #[arg(long, value_name = "FILE", visible_alias = "local-from", conflicts_with_all = ["volumes", "local", "all", "import_other_from"])]
    pub vols_from: Option<PathBuf>,
}

/// `send --autoprune=full`, before sending: thins every volume, as the original does. (`on` is
/// driven by the destination's free space, inside the send.)
fn autoprune_full(g: &Global, dests: &mut Destinations, a: &SendArgs) -> Result<()> {
    if a.auto.autoprune() != AutoMode::Full {
        return Ok(());
    }
    let o = ops::prune::PruneOptions {
        autoprune: AutoMode::Full,
        apdays: a.auto.apdays,
        now: super::now(),
        dry_run: a.dry_run,
        ..Default::default()
    };
    let verb = if a.dry_run { "would remove" } else { "removed" };
    for r in dests.autoprune_full(&o)? {
        if !r.removed.is_empty() {
            g.say(format!(
                "{}: autoprune {verb} {}.",
                r.volume,
                count(r.removed.len() as u64, "session", "sessions")
            ));
        }
    }
    Ok(())
}

fn lines(r: &ops::send::VolumeReport, dry_run: bool) -> Vec<String> {
    let mut out = Vec::new();
    if !r.autopruned.is_empty() {
        let names: Vec<&str> = r.autopruned.iter().map(|s| date(s)).collect();
        out.push(format!(
            "{}: autoprune removed {} to make room: {}",
            r.volume,
            count(names.len() as u64, "session", "sessions"),
            names.join(" ")
        ));
    }
    let what = if r.first {
        format!(
            "{} with data, {} zero",
            count(r.chunks_data, "chunk", "chunks"),
            r.chunks_zero
        )
    } else {
        format!("{} changed", count(r.chunks_changed, "chunk", "chunks"))
    };
    let retention = (!r.retention_removed.is_empty()).then(|| {
        let names: Vec<&str> = r.retention_removed.iter().map(|s| date(s)).collect();
        format!(
            "{}: retention removed {}: {}",
            r.volume,
            count(names.len() as u64, "session", "sessions"),
            names.join(" ")
        )
    });
    out.push(if dry_run {
        format!(
            "{}: would store {what}, {} ({} read).",
            r.volume,
            human(r.bytes_stored),
            count(r.chunks_read, "chunk", "chunks")
        )
    } else {
        match &r.session {
            Some(s) => format!(
                "{}: session {} recorded: {what}, {} stored ({} read).",
                r.volume,
                date(s),
                human(r.bytes_stored),
                human(r.bytes_read)
            ),
            None => format!("{}: no change; no session recorded.", r.volume),
        }
    });
    out.extend(retention);
    out
}

/// The closing line the original prints: volumes, bytes read and stored, time and rate.
fn totals<'r>(
    reports: impl Iterator<Item = &'r ops::send::VolumeReport>,
    took: std::time::Duration,
) -> String {
    let (mut n, mut read, mut stored) = (0u64, 0u64, 0u64);
    for r in reports {
        n += 1;
        read += r.bytes_read;
        stored += r.bytes_stored;
    }
    let secs = took.as_secs_f64();
    format!(
        "{}, {} read, {} stored in {secs:.1} s ({}/s).",
        count(n, "volume", "volumes"),
        human(read),
        human(stored),
        human((read as f64 / secs.max(0.001)) as u64)
    )
}

/// What the send is asked for, checked against the arguments (nothing opened yet).
fn check(a: &SendArgs, vf: Option<&VolsFrom>, store: Option<&LocalStorage>) -> Result<()> {
    if vf.is_some() {
        return Ok(());
    }
    if a.all && store.is_none() {
        return Err(Error::Usage("send --all needs --local=DIR".into()));
    }
    if !a.all && a.volumes.is_empty() && a.import_other_from.is_empty() {
        return Err(Error::Usage(
            "nothing to send: name a volume and its --import-other-from source".into(),
        ));
    }
    Ok(())
}

pub fn run(g: &Global, a: SendArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let tags = tags(g, &a.tag)?;
    let urls = g.dests()?;
    let mut opts = ops::send::SendOptions {
        send_unchanged: a.send_unchanged,
        tags,
        volume_desc: a.volume_desc.clone(),
        dedup: a.dedup,
        dry_run: a.dry_run,
        local: None,
        session: test_session_name(),
        autoprune_on: (a.auto.autoprune() == AutoMode::On).then_some(ops::autoprune::Calendar {
            apdays: a.auto.apdays,
            now: super::now(),
        }),
        checkpoint_bytes: None,
    };
    let vf = a
        .vols_from
        .as_deref()
        .map(|f| VolsFrom::load(f, &g.local))
        .transpose()?;
    let store = a
        .local
        .as_deref()
        .map(|l| LocalStorage::open(l, &g.local))
        .transpose()?;
    check(&a, vf.as_ref(), store.as_ref())?;
    // Every archive is opened first; with several, one that cannot be opened (unreachable,
    // locked, missing) is outstanding and the others go on.
    let mut dests = Destinations::open(&urls, |url| g.write_to(url))?;
    // What each archive gets (with `--vols-from`, the file decides).
    let reqs = match &vf {
        Some(_) => Vec::new(),
        None => requests(g, &a, &mut dests, store.as_ref())?,
    };
    autoprune_full(g, &mut dests, &a)?;
    let mut failures = Failures::default();
    let volumes = match &vf {
        Some(vf) => {
            if let Err(e) = ops::vols_from::send(&mut dests, vf, &mut opts, &mut failures) {
                // FILE.error still lists what failed before the run stopped.
                let _ = vf.finish(&failures);
                return Err(e);
            }
            vf.entries().map(|e| e.name.clone()).collect()
        }
        None => {
            opts.local = store;
            dests.send(&reqs, &opts)?;
            reqs.into_iter().map(|r| r.volume).collect()
        }
    };
    let report = dests.finish(&ops::send::FinishOptions {
        volumes,
        retention: a.retention.is_set().then(|| a.retention.policy()),
        now: super::now(),
        dry_run: a.dry_run,
        meta_dir: g.meta_dir(),
    });
    let finish_vols_from = |outstanding: &[(String, Vec<String>)]| match &vf {
        Some(vf) => vf.finish_with(&failures, outstanding),
        None => Ok(()),
    };
    if urls.len() == 1 {
        return one(g, &a, report, started, finish_vols_from);
    }
    print(g, &a, &report, started)?;
    let outstanding = report.outstanding();
    let finished = finish_vols_from(&outstanding);
    if outstanding.is_empty() {
        return finished;
    }
    let mut dests = report.destinations;
    if dests.iter().all(|d| d.error.is_some()) {
        // No destination got anything: the first one's error, with its exit code.
        return Err(dests.remove(0).error.expect("failed"));
    }
    Err(Error::Selection(format!(
        "not every destination got every volume (the next send catches up; `wyng list --outstanding` shows what each misses): {}",
        outstanding
            .iter()
            .map(|(u, v)| format!("{u}: {}", v.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

/// The end of a send to one destination: its error is the command's.
fn one(
    g: &Global,
    a: &SendArgs,
    mut report: SendReport,
    started: std::time::Instant,
    finish_vols_from: impl Fn(&[(String, Vec<String>)]) -> Result<()>,
) -> Result<()> {
    let outstanding = report.outstanding();
    let mut d = report.destinations.pop().expect("one destination");
    if let Some(e) = d.error.take() {
        let _ = finish_vols_from(&outstanding);
        return Err(e);
    }
    g.reports(&d.volumes, |r| lines(r, a.dry_run))?;
    if !a.dry_run && !d.volumes.is_empty() {
        g.say(totals(d.volumes.iter(), started.elapsed()));
    }
    finish_vols_from(&[])
}

/// A send to several destinations, per destination: what it got, what it misses.
fn print(g: &Global, a: &SendArgs, report: &SendReport, started: std::time::Instant) -> Result<()> {
    if g.json {
        // The library's report, with each error's message as the binary words it (naming the
        // option to change, as every other error message does).
        let mut v = serde_json::to_value(report)
            .map_err(|e| Error::io("stdout", std::io::Error::other(e)))?;
        for (d, j) in report
            .destinations
            .iter()
            .zip(v["destinations"].as_array_mut().into_iter().flatten())
        {
            if let Some(e) = &d.error {
                j["error"]["message"] = super::errors::message(e).into();
            }
        }
        return g.json(&v);
    }
    for d in &report.destinations {
        g.say(format!("{}:", d.dest));
        for r in &d.volumes {
            lines(r, a.dry_run)
                .iter()
                .for_each(|l| g.say(format!("  {l}")));
        }
        if let Some(e) = &d.error {
            g.say(format!(
                "  failed: {}; outstanding: {}",
                super::errors::message(e),
                d.outstanding.join(", ")
            ));
        }
    }
    if !a.dry_run {
        // Read once for every archive: the first archive's reports say what was read.
        let read = report.destinations.iter().find(|d| !d.volumes.is_empty());
        if let Some(d) = read {
            g.say(totals(d.volumes.iter(), started.elapsed()));
        }
    }
    Ok(())
}

/// The requests of a send without `--vols-from`, and per archive the volumes it gets (`None`:
/// every request; with `--all`, each archive its own volumes besides those named).
fn requests(
    g: &Global,
    a: &SendArgs,
    dests: &mut Destinations,
    store: Option<&LocalStorage>,
) -> Result<Vec<ops::send::SendRequest>> {
    let mut reqs: Vec<ops::send::SendRequest> = a
        .import_other_from
        .iter()
        .map(|(name, path)| ops::send::SendRequest {
            volume: name.clone(),
            source: path.clone(),
            reflink: false,
        })
        .collect();
    dests.plan(|wa| {
        let mut mine: Vec<String> = reqs.iter().map(|r| r.volume.clone()).collect();
        for v in &named_or_all(wa, &a.volumes, a.all, &g.volex) {
            if mine.contains(v) {
                continue;
            }
            if let (true, false, Some(st)) = (a.all, a.volumes.contains(v), store) {
                if !st.volume_path(v)?.exists() {
                    tracing::warn!("{v}: not in --local; skipped");
                    continue;
                }
            }
            mine.push(v.clone());
            if reqs.iter().any(|r| &r.volume == v) {
                continue;
            }
            match store {
                Some(st) => reqs.push(ops::send::SendRequest {
                    volume: v.clone(),
                    source: st.volume_path(v)?,
                    reflink: true,
                }),
                None => {
                    return Err(Error::Usage(format!(
                        "volume '{v}' has no source: give --local=DIR (a Btrfs or XFS reflink directory holding it) or --import-other-from='{v}:|:/path/to/image'"
                    )))
                }
            }
        }
        Ok(a.all.then_some(mine))
    })?;
    if reqs.is_empty() {
        return Err(Error::Usage(
            "nothing to send: the archive has no volumes yet".into(),
        ));
    }
    Ok(reqs)
}

/// Tests only: `WYNG_TEST_SESSION=YYYYMMDD-HHMMSS` names the session instead of the clock, so a
/// test sending a volume again need not wait for the next second. Read only in builds with the
/// test-only `failpoints` feature, never in a release build (see Cargo.toml).
fn test_session_name() -> Option<wyng::format::SessionName> {
    #[cfg(feature = "failpoints")]
    if let Ok(s) = std::env::var("WYNG_TEST_SESSION") {
        // A test's mistake must not fall back to the clock unnoticed.
        let name = wyng::format::SessionName::from_user(&s);
        assert!(name.is_some(), "WYNG_TEST_SESSION={s}: not YYYYMMDD-HHMMSS");
        return name;
    }
    None
}
