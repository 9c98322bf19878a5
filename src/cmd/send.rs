//! `wyng send`.

use std::path::PathBuf;

use clap::Args;

use wyng::archive::WriteArchive;
use wyng::format::Tag;
use wyng::ops::{self, autoprune::ApDays, prune::AutoMode};
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
fn autoprune_full(g: &Global, wa: &mut WriteArchive, a: &SendArgs) -> Result<()> {
    if a.auto.autoprune() != AutoMode::Full || wa.volumes().is_empty() {
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
    for r in ops::prune::run(wa, &[], &o)? {
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

/// `send --keep-*`: prunes the volumes that just got a session by the retention policy, once
/// the send has committed (a failed send prunes nothing). Returns the sessions removed, by
/// volume.
fn retain(
    wa: &mut WriteArchive,
    a: &SendArgs,
    reports: &mut [ops::send::VolumeReport],
) -> Result<()> {
    if !a.retention.is_set() || a.dry_run {
        return Ok(());
    }
    let names: Vec<String> = reports
        .iter()
        .filter(|r| r.session.is_some())
        .map(|r| r.volume.clone())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let o = ops::prune::PruneOptions {
        policy: a.retention.policy(),
        spare_metadata: true,
        now: super::now(),
        ..Default::default()
    };
    for p in ops::prune::run(wa, &names, &o)? {
        if let Some(r) = reports.iter_mut().find(|r| r.volume == p.volume) {
            r.retention_removed = p.removed;
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

#[expect(clippy::too_many_lines, reason = "long before the lint; to be split")]
pub fn run(g: &Global, a: SendArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let tags = tags(g, &a.tag)?;
    let urls = g.dests()?;
    let apdays: ApDays = a.auto.apdays;
    let mut opts = ops::send::SendOptions {
        send_unchanged: a.send_unchanged,
        tags,
        volume_desc: a.volume_desc.clone(),
        dedup: a.dedup,
        dry_run: a.dry_run,
        local: None,
        session: test_session_name(),
        autoprune_on: (a.auto.autoprune() == AutoMode::On).then_some(ops::autoprune::Calendar {
            apdays,
            now: super::now(),
        }),
        checkpoint_bytes: None,
    };
    let vf = a
        .vols_from
        .as_deref()
        .map(|f| wyng::ops::vols_from::VolsFrom::load(f, &g.local))
        .transpose()?;
    let store = a
        .local
        .as_deref()
        .map(|l| wyng::source::LocalStorage::open(l, &g.local))
        .transpose()?;
    if vf.is_none() {
        if a.all && store.is_none() {
            return Err(Error::Usage("send --all needs --local=DIR".into()));
        }
        if !a.all && a.volumes.is_empty() && a.import_other_from.is_empty() {
            return Err(Error::Usage(
                "nothing to send: name a volume and its --import-other-from source".into(),
            ));
        }
    }
    // Every archive is opened first; with several, one that cannot be opened (unreachable,
    // locked, missing) is outstanding and the others go on.
    let mut archives: Vec<(String, WriteArchive)> = Vec::new();
    let mut unreachable: Vec<(String, Error)> = Vec::new();
    for url in &urls {
        match g.write_to(url) {
            Ok(wa) => archives.push((url.clone(), wa)),
            Err(e) if urls.len() == 1 => return Err(e),
            Err(e) => {
                tracing::error!("{url}: {e}");
                unreachable.push((url.clone(), e));
            }
        }
    }
    if archives.is_empty() {
        // No destination could be opened: the first one's error, with its exit code.
        return Err(unreachable.remove(0).1);
    }
    // What each archive gets (`None`: every request; with `--vols-from`, the file decides).
    let (reqs, mut volumes) = match &vf {
        Some(_) => (Vec::new(), vec![None; archives.len()]),
        None => requests(g, &a, &archives, store.as_ref())?,
    };
    // `--autoprune=full` thins each archive before anything is sent to it (after the
    // requests are checked: a mistyped command prunes nothing).
    let mut i = 0;
    while i < archives.len() {
        match autoprune_full(g, &mut archives[i].1, &a) {
            Ok(()) => i += 1,
            Err(e) if urls.len() == 1 => return Err(e),
            Err(e) => {
                let (url, _) = archives.remove(i);
                volumes.remove(i);
                tracing::error!("{url}: {e}");
                unreachable.push((url, e));
            }
        }
    }
    let mut targets: Vec<ops::send::Target> = archives
        .iter_mut()
        .zip(volumes)
        .map(|((_, wa), volumes)| ops::send::Target {
            archive: wa,
            volumes,
        })
        .collect();
    let mut failures = wyng::ops::vols_from::Failures::default();
    let (names, mut results) = match &vf {
        Some(vf) => match ops::vols_from::send(&mut targets, vf, &mut opts, &mut failures) {
            Ok(r) => (vf.entries().map(|e| e.name.clone()).collect::<Vec<_>>(), r),
            Err(e) => {
                // FILE.error still lists what failed before the run stopped.
                let _ = vf.finish(&failures);
                return Err(e);
            }
        },
        None => {
            opts.local = store;
            let r = ops::send::run_multi(&mut targets, &reqs, &opts)?;
            (reqs.into_iter().map(|r| r.volume).collect(), r)
        }
    };
    for ((_, wa), r) in archives.iter_mut().zip(results.iter_mut()) {
        if r.failed.is_none() {
            if let Err(e) = retain(wa, &a, &mut r.reports) {
                r.failed = Some((e, Vec::new()));
            }
        }
    }
    let when = opts
        .session
        .as_ref()
        .map(|s| s.to_string())
        .or_else(|| {
            results
                .iter()
                .flat_map(|r| &r.reports)
                .find_map(|r| r.session.clone())
        })
        .unwrap_or_else(|| wyng::format::SessionName::from_time(chrono::Local::now()).to_string());
    // Per destination: what it got, what it misses.
    let mut dests: Vec<DestReport> = archives
        .iter()
        .zip(results)
        .map(|((url, _), r)| DestReport::new(url, r))
        .collect();
    dests.extend(unreachable.into_iter().map(|(url, e)| DestReport {
        dest: url,
        outstanding: names.clone(),
        error: Some(e),
        volumes: Vec::new(),
    }));
    if !a.dry_run {
        let updates: Vec<ops::outstanding::Update> = dests
            .iter()
            .map(|d| ops::outstanding::Update {
                url: &d.dest,
                sent: d.volumes.iter().map(|r| r.volume.clone()).collect(),
                missed: d.outstanding.clone(),
                error: d.error.as_ref().map(super::errors::message),
            })
            .collect();
        if let Err(e) = ops::outstanding::update(g.meta_dir(), &when, &updates) {
            tracing::warn!("cannot record what each destination misses: {e}");
        }
    }
    let outstanding: Vec<(String, Vec<String>)> = dests
        .iter()
        .filter(|d| d.error.is_some())
        .map(|d| (d.dest.clone(), d.outstanding.clone()))
        .collect();
    if urls.len() == 1 {
        let mut d = dests.pop().expect("one destination");
        if let Some(e) = d.error.take() {
            if let Some(vf) = &vf {
                let _ = vf.finish_with(&failures, &outstanding);
            }
            return Err(e);
        }
        g.reports(&d.volumes, |r| lines(r, a.dry_run))?;
        if !a.dry_run && !d.volumes.is_empty() {
            g.say(totals(d.volumes.iter(), started.elapsed()));
        }
        return match &vf {
            Some(vf) => vf.finish(&failures),
            None => Ok(()),
        };
    }
    if g.json {
        g.json(&serde_json::json!({ "destinations": dests }))?;
    } else {
        for d in &dests {
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
            let read = dests.iter().find(|d| !d.volumes.is_empty());
            if let Some(d) = read {
                g.say(totals(d.volumes.iter(), started.elapsed()));
            }
        }
    }
    let finished = match &vf {
        Some(vf) => vf.finish_with(&failures, &outstanding),
        None => Ok(()),
    };
    if outstanding.is_empty() {
        return finished;
    }
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

/// What a send did at one destination, as `--json` shows it.
#[derive(serde::Serialize)]
struct DestReport {
    dest: String,
    volumes: Vec<ops::send::VolumeReport>,
    #[serde(serialize_with = "error_json")]
    error: Option<Error>,
    outstanding: Vec<String>,
}

impl DestReport {
    fn new(url: &str, r: ops::send::TargetResult) -> DestReport {
        let (error, outstanding) = match r.failed {
            Some((e, missing)) => (Some(e), missing),
            None => (None, Vec::new()),
        };
        DestReport {
            dest: url.to_string(),
            volumes: r.reports,
            error,
            outstanding,
        }
    }
}

fn error_json<S: serde::Serializer>(
    e: &Option<Error>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::Serialize;
    e.as_ref()
        .map(|e| {
            serde_json::json!({
                "message": super::errors::message(e),
                "kind": e.kind(),
                "exit_code": e.exit_code(),
            })
        })
        .serialize(s)
}

/// The requests of a send without `--vols-from`, and per archive the volumes it gets (`None`:
/// every request; with `--all`, each archive its own volumes besides those named).
#[allow(clippy::type_complexity)]
fn requests(
    g: &Global,
    a: &SendArgs,
    archives: &[(String, WriteArchive)],
    store: Option<&wyng::source::LocalStorage>,
) -> Result<(Vec<ops::send::SendRequest>, Vec<Option<Vec<String>>>)> {
    let mut reqs: Vec<ops::send::SendRequest> = a
        .import_other_from
        .iter()
        .map(|(name, path)| ops::send::SendRequest {
            volume: name.clone(),
            source: path.clone(),
            reflink: false,
        })
        .collect();
    let mut per = Vec::new();
    for (_, wa) in archives {
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
        per.push(a.all.then_some(mine));
    }
    if reqs.is_empty() {
        return Err(Error::Usage(
            "nothing to send: the archive has no volumes yet".into(),
        ));
    }
    Ok((reqs, per))
}

/// Tests only: `WYNG_TEST_SESSION=YYYYMMDD-HHMMSS` names the session instead of the clock, so a
/// test sending a volume again need not wait for the next second. Read only in builds with the
/// test-only `failpoints` feature, never in a release build (see Cargo.toml).
fn test_session_name() -> Option<wyng::format::SessionName> {
    #[cfg(feature = "failpoints")]
    if let Ok(s) = std::env::var("WYNG_TEST_SESSION") {
        return wyng::format::SessionName::from_user(&s);
    }
    None
}
