//! The `wyng` binary: parse the command line, run one command, map errors to exit codes.

mod cli;

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use cli::{Cli, Cmd};
use wyng::archive::Archive;
use wyng::format::Tag;
use wyng::ops::{self, SessionSel};
use wyng::{Error, Result};

fn main() {
    let args = match cli::apply_config(cli::normalize_args(std::env::args_os().collect())) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wyng: error: {e}");
            std::process::exit(9);
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 9 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_logging(&cli.global);
    wyng::progress::set_enabled(!cli.global.quiet);
    if let Err(e) = run(cli) {
        eprintln!("wyng: error: {e}");
        std::process::exit(e.exit_code());
    }
}

fn init_logging(g: &cli::Global) {
    let level = if g.debug {
        "debug"
    } else if g.quiet {
        "error"
    } else {
        match g.verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WYNG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

fn auth(g: &cli::Global) -> wyng::auth::Auth {
    wyng::auth::Auth {
        passcmd: g.passcmd.clone(),
        authmin: g.authmin,
    }
}

fn open_archive(g: &cli::Global, exclusive: bool) -> Result<Archive> {
    let auth = auth(g);
    let mut archive = Archive::open(
        open_dest(g)?,
        &wyng::archive::OpenOptions {
            exclusive,
            auth: &auth,
            meta_dir: Some(&g.meta_dir),
            allow_rollback: g.force_allow_rollback,
        },
    )?;
    archive.force_retry = g.force_retry;
    Ok(archive)
}

fn open_dest(g: &cli::Global) -> Result<Box<dyn wyng::dest::Dest>> {
    let url = g.dest.as_deref().ok_or_else(|| {
        Error::Usage("--dest is required, e.g. --dest=file:/mnt/usb/laptop.backup".into())
    })?;
    let ssh_opts = (!g.opt_ssh.is_empty()).then(|| {
        g.opt_ssh
            .iter()
            .flat_map(|o| o.split_whitespace().map(str::to_string))
            .collect()
    });
    wyng::dest::open_with(url, &wyng::dest::DestOptions { ssh_opts })
}

fn session_sel(a: &cli::SessionArgs) -> Result<SessionSel> {
    let strict = match a.session_strict.as_str() {
        "on" => true,
        "off" => false,
        o => {
            return Err(Error::Usage(format!(
                "--session-strict takes on or off, not '{o}'"
            )))
        }
    };
    SessionSel::parse(a.session.as_deref(), strict)
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Other(e.to_string()))?;
    println!("{s}");
    Ok(())
}

fn verify_summary(r: &ops::receive::ReadReport) -> String {
    format!(
        "{}: session {} verified: {} chunks ({} with data), {}.",
        r.volume,
        &r.session[2..],
        r.chunks,
        r.data_chunks,
        human(r.volsize)
    )
}

fn receive_summary(r: &ops::receive::ReadReport, to: &str) -> String {
    let mut s = format!(
        "{}: session {} received to {} ({}",
        r.volume,
        &r.session[2..],
        to,
        human(r.volsize)
    );
    if let Some(w) = r.chunks_written {
        s += &format!("; {} chunks fetched, {w} rewritten", r.data_chunks);
    }
    s + ")."
}

/// Asks before destructive work: on a terminal, y/N; otherwise refuse (use -u).
fn confirm(question: &str) -> Result<()> {
    use std::io::{BufRead, IsTerminal};
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "{question} Add -u to confirm when not on a terminal."
        )));
    }
    eprint!("{question} [y/N] ");
    let mut a = String::new();
    let _ = std::io::stdin().lock().read_line(&mut a);
    if matches!(a.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Error::Usage("cancelled; nothing was changed".into()))
    }
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// `send --autoprune=full`, before sending: thins every volume, as the original does. (`on` is
/// driven by the destination's free space, inside the send: see `SendOptions::autoprune_on`.)
fn send_autoprune(
    g: &cli::Global,
    archive: &mut Archive,
    autoprune: ops::prune::AutoMode,
    apdays: &ops::autoprune::ApDays,
    dry_run: bool,
) -> Result<()> {
    if autoprune != ops::prune::AutoMode::Full || archive.volumes.is_empty() {
        return Ok(());
    }
    let o = ops::prune::PruneOptions {
        autoprune,
        apdays: *apdays,
        dry_run,
        ..Default::default()
    };
    let verb = if dry_run { "would remove" } else { "removed" };
    for r in ops::prune::run(archive, &[], &o)? {
        if !r.removed.is_empty() && !g.quiet && !g.json {
            println!(
                "{}: autoprune {verb} {} sessions.",
                r.volume,
                r.removed.len()
            );
        }
    }
    Ok(())
}

/// Prints reports as JSON, or each one's lines (nothing with `--quiet`).
fn print_reports<R: serde::Serialize>(
    g: &cli::Global,
    reports: &[R],
    lines: impl Fn(&R) -> Vec<String>,
) -> Result<()> {
    if g.json {
        return print_json(&reports);
    }
    if !g.quiet {
        reports.iter().flat_map(lines).for_each(|l| println!("{l}"));
    }
    Ok(())
}

/// A `--vols-from` run: load FILE, open the archive, run `op`, write FILE.error for the
/// volumes that failed, print what succeeded, and exit 2 if any volume failed.
fn vols_from_run<R: serde::Serialize>(
    g: &cli::Global,
    file: &std::path::Path,
    exclusive: bool,
    op: impl FnOnce(
        &mut Archive,
        &ops::vols_from::VolsFrom,
        &mut ops::vols_from::Failures,
    ) -> Result<Vec<R>>,
    lines: impl Fn(&R) -> Vec<String>,
) -> Result<()> {
    let vf = ops::vols_from::VolsFrom::load(file)?;
    let mut archive = open_archive(g, exclusive)?;
    let mut failures = ops::vols_from::Failures::default();
    let reports = op(&mut archive, &vf, &mut failures);
    let finished = vf.finish(&failures);
    print_reports(g, &reports?, lines)?;
    finished
}

fn monitor_lines(r: &ops::monitor::MonitorReport) -> Vec<String> {
    vec![match r.state {
        "rotated" => format!(
            "{}: {} chunks changed ({} recorded since the last send).",
            r.volume, r.changed_chunks, r.recorded_chunks
        ),
        state => format!("{}: {state}.", r.volume),
    }]
}

fn send_lines(r: &ops::send::VolumeReport, dry_run: bool) -> Vec<String> {
    let mut out = Vec::new();
    if !r.autopruned.is_empty() {
        let names: Vec<&str> = r.autopruned.iter().map(|s| &s[2..]).collect();
        out.push(format!(
            "{}: autoprune removed {} session(s) to make room: {}",
            r.volume,
            names.len(),
            names.join(" ")
        ));
    }
    out.push(if dry_run {
        format!(
            "{}: would store {} changed chunks, {} ({} chunks read).",
            r.volume,
            r.chunks_changed,
            human(r.bytes_stored),
            r.chunks_read
        )
    } else {
        match &r.session {
            Some(s) => format!(
                "{}: session {} recorded: {} chunks changed, {} stored ({} read).",
                r.volume,
                &s[2..],
                r.chunks_changed,
                human(r.bytes_stored),
                human(r.bytes_read)
            ),
            None => format!("{}: no change; no session recorded.", r.volume),
        }
    });
    out
}

fn identical_line(r: &ops::receive::DiffReport) -> String {
    format!("{}: identical to session {}.", r.volume, &r.session[2..])
}

/// The named volumes, and with `--all` every other volume of the archive after them.
fn named_or_all(archive: &Archive, named: &[String], all: bool) -> Vec<String> {
    let mut names = named.to_vec();
    if all {
        names.extend(
            archive
                .volume_names()
                .into_iter()
                .filter(|n| !named.contains(n)),
        );
    }
    names
}

fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    let say = |s: String| {
        if !g.quiet && !g.json {
            println!("{s}");
        }
    };
    match cli.cmd {
        Cmd::Version => {
            println!("{}", wyng::VERSION_LINE);
            Ok(())
        }
        Cmd::ArchInit(a) => {
            let archive = ops::arch_init::run(
                open_dest(g)?,
                &ops::arch_init::InitOptions {
                    encrypt: a.encrypt,
                    compression: a.compression,
                    chunk_factor: a.chunk_factor,
                    hashtype: a.hashtype,
                },
                &auth(g),
                Some(&g.meta_dir),
            )?;
            let cipher = archive
                .codec
                .cipher
                .as_ref()
                .map_or("unencrypted", |c| c.mode.names().0);
            say(format!(
                "Created archive {}: {cipher}, {} KiB chunks, {}:{} compression.",
                archive.dest.url(),
                archive.chunksize() / 1024,
                archive.codec.compressor.kind.name(),
                archive.codec.compressor.level
            ));
            Ok(())
        }
        Cmd::Send(a) => {
            let tags = a
                .tag
                .iter()
                .map(|t| {
                    let (id, desc) = t.split_once(',').unwrap_or((t, ""));
                    Tag::new(id, desc).map_err(Error::Usage)
                })
                .collect::<Result<Vec<_>>>()?;
            if tags.len() > wyng::format::info::MAX_TAGS {
                return Err(Error::Usage("at most 5 tags per session".into()));
            }
            let autoprune = ops::prune::AutoMode::parse(&a.auto.autoprune)?;
            let apdays = ops::autoprune::ApDays::parse(&a.auto.apdays)?;
            let base = |local, cache_dir| ops::send::SendOptions {
                send_unchanged: a.send_unchanged,
                tags: tags.clone(),
                volume_desc: a.volume_desc.clone(),
                dedup: a.dedup,
                dry_run: a.dry_run,
                local,
                cache_dir,
                session: None,
                autoprune_on: (autoprune == ops::prune::AutoMode::On).then_some(apdays),
            };
            if let Some(file) = &a.vols_from {
                return vols_from_run(
                    g,
                    file,
                    true,
                    |archive, vf, failures| {
                        send_autoprune(g, archive, autoprune, &apdays, a.dry_run)?;
                        let mut opts = base(None, archive.cache_dir.clone());
                        ops::vols_from::send(archive, vf, &mut opts, failures)
                    },
                    |r| send_lines(r, a.dry_run),
                );
            }
            let mut reqs = Vec::new();
            for spec in &a.import_other_from {
                let (name, path) = spec.split_once(":|:").ok_or_else(|| {
                    Error::Usage(format!(
                        "--import-other-from '{spec}' must look like 'NAME:|:/path/to/image'"
                    ))
                })?;
                reqs.push(ops::send::SendRequest {
                    volume: name.to_string(),
                    source: PathBuf::from(path),
                    reflink: false,
                });
            }
            let store = a
                .local
                .as_deref()
                .map(wyng::source::LocalStorage::open)
                .transpose()?;
            if a.all && store.is_none() {
                return Err(Error::Usage("send --all needs --local=DIR".into()));
            }
            if !a.all && a.volumes.is_empty() && reqs.is_empty() {
                return Err(Error::Usage(
                    "nothing to send: name a volume and its --import-other-from source".into(),
                ));
            }
            let mut archive = open_archive(g, true)?;
            for v in &named_or_all(&archive, &a.volumes, a.all) {
                if reqs.iter().any(|r| &r.volume == v) {
                    continue;
                }
                if let (true, false, Some(st)) = (a.all, a.volumes.contains(v), &store) {
                    if !st.volume_path(v)?.exists() {
                        tracing::warn!("{v}: not in --local; skipped");
                        continue;
                    }
                }
                match &store {
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
            if reqs.is_empty() {
                return Err(Error::Usage(
                    "nothing to send: the archive has no volumes yet".into(),
                ));
            }
            let opts = base(store, archive.cache_dir.clone());
            send_autoprune(g, &mut archive, autoprune, &apdays, a.dry_run)?;
            let reports = ops::send::run(&mut archive, &reqs, &opts)?;
            print_reports(g, &reports, |r| send_lines(r, a.dry_run))
        }
        Cmd::Receive(a) => {
            let mode = match (a.sparse, a.sparse_write) {
                (true, _) => ops::receive::Mode::Sparse,
                (_, true) => ops::receive::Mode::SparseWrite,
                _ => ops::receive::Mode::Full,
            };
            let snapshot_use = match (a.use_snapshot, a.use_snapshot_diff) {
                (true, _) => ops::receive::SnapshotUse::Snapshot,
                (_, true) => ops::receive::SnapshotUse::SnapshotDiff,
                _ => ops::receive::SnapshotUse::No,
            };
            if let Some(file) = &a.vols_from {
                let sel = session_sel(&a.session)?;
                let opts = ops::receive::ReceiveOptions {
                    save_to: PathBuf::new(),
                    unattended: g.unattended,
                    mode,
                };
                return vols_from_run(
                    g,
                    file,
                    true,
                    |archive, vf, failures| {
                        Ok(ops::vols_from::receive(
                            archive,
                            vf,
                            &sel,
                            &opts,
                            snapshot_use,
                            failures,
                        ))
                    },
                    |r| vec![receive_summary(r, "its --vols-from storage")],
                );
            }
            let volume = a.volume.clone().unwrap_or_default();
            if snapshot_use != ops::receive::SnapshotUse::No && a.local.is_none() {
                return Err(Error::Usage(
                    "--use-snapshot and --use-snapshot-diff restore into --local=DIR".into(),
                ));
            }
            if let (None, Some(dir)) = (&a.save_to, &a.local) {
                let sel = session_sel(&a.session)?;
                let local = wyng::source::LocalStorage::open(dir)?;
                let store = local.reflink("receive --local")?;
                let archive = open_archive(g, true)?;
                let r = ops::receive::receive_local(
                    &archive,
                    &ops::VolumeRef::same(&volume),
                    &sel,
                    store,
                    &ops::receive::ReceiveOptions {
                        save_to: PathBuf::new(),
                        unattended: g.unattended,
                        mode,
                    },
                    snapshot_use,
                    archive.cache_dir.as_deref(),
                )?;
                if g.json {
                    return print_json(&r);
                }
                say(receive_summary(&r, &dir.display().to_string()));
                return Ok(());
            }
            let save_to = a.save_to.ok_or_else(|| {
                Error::Usage("receive needs --save-to=PATH (a file or an existing block device) or --local=DIR".into())
            })?;
            let sel = session_sel(&a.session)?;
            let archive = open_archive(g, false)?;
            let r = ops::receive::receive(
                &archive,
                &volume,
                &sel,
                &ops::receive::ReceiveOptions {
                    save_to: save_to.clone(),
                    unattended: g.unattended,
                    mode,
                },
            )?;
            if g.json {
                return print_json(&r);
            }
            say(receive_summary(&r, &save_to.display().to_string()));
            Ok(())
        }
        Cmd::Monitor(a) => {
            if let Some(file) = &a.vols_from {
                return vols_from_run(
                    g,
                    file,
                    true,
                    |archive, vf, failures| Ok(ops::vols_from::monitor(archive, vf, failures)),
                    monitor_lines,
                );
            }
            let dir = a.local.as_deref().ok_or_else(|| {
                Error::Usage(
                    "monitor needs --local=DIR (the reflink directory holding the volumes)".into(),
                )
            })?;
            let store = wyng::source::LocalStorage::open(dir)?;
            if !a.all && a.volumes.is_empty() {
                return Err(Error::Usage(
                    "name the volumes to monitor, or use --all".into(),
                ));
            }
            let archive = open_archive(g, true)?;
            let refs: Vec<ops::VolumeRef> = named_or_all(&archive, &a.volumes, a.all)
                .iter()
                .map(|n| ops::VolumeRef::same(n))
                .collect();
            let reports = ops::monitor::run(&archive, &store, &refs)?;
            print_reports(g, &reports, monitor_lines)
        }
        Cmd::Verify(a) => {
            let sel = session_sel(&a.session)?;
            if let Some(file) = &a.vols_from {
                return vols_from_run(
                    g,
                    file,
                    false,
                    |archive, vf, failures| Ok(ops::vols_from::verify(archive, vf, &sel, failures)),
                    |r| vec![verify_summary(r)],
                );
            }
            let archive = open_archive(g, false)?;
            let names: Vec<String> = if a.all {
                archive.volume_names()
            } else {
                a.volumes.clone()
            };
            if names.is_empty() {
                return Err(Error::Usage(
                    "name the volumes to verify, or use --all".into(),
                ));
            }
            // Every volume is checked; failures are reported together at the end, as the
            // original does ("Error on volumes"): exit 1 if any was damaged, else 2.
            let mut reports = Vec::new();
            let mut failed: Vec<(String, Error)> = Vec::new();
            for n in &names {
                match ops::receive::verify(&archive, n, &sel) {
                    Ok(r) => {
                        say(verify_summary(&r));
                        reports.push(r);
                    }
                    Err(e) if names.len() == 1 => return Err(e),
                    Err(e) => {
                        eprintln!("wyng: error: {e}");
                        failed.push((n.clone(), e));
                    }
                }
            }
            if g.json {
                print_json(&reports)?;
            }
            if !failed.is_empty() {
                let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
                let damaged = failed.iter().any(|(_, e)| e.exit_code() != 2);
                let msg = format!("verification failed for volumes: {}", names.join(", "));
                return Err(if damaged {
                    Error::Other(msg)
                } else {
                    Error::Selection(msg)
                });
            }
            Ok(())
        }
        Cmd::Mount(a) => {
            ops::mount::preflight(&a.mountpoint)?;
            let session = a
                .session
                .as_deref()
                .map(|s| SessionSel::parse(Some(s), true))
                .transpose()?;
            let cache_bytes = ops::mount::parse_size(&a.cache)?;
            std::fs::create_dir_all(&g.meta_dir)
                .map_err(|e| Error::local(&g.meta_dir, e.to_string()))?;
            let archive = open_archive(g, false)?;
            let o = ops::mount::MountOptions {
                mountpoint: a.mountpoint.clone(),
                volume: a.volume,
                session,
                cache_bytes,
                foreground: a.foreground,
                allow_other: a.allow_other,
                log_file: g.meta_dir.join("mount.log"),
            };
            ops::mount::run(archive, &o)?;
            if !a.foreground {
                say(format!(
                    "Mounted {} at {}; `wyng umount {}` to unmount.",
                    g.dest.as_deref().unwrap_or(""),
                    a.mountpoint.display(),
                    a.mountpoint.display()
                ));
            }
            Ok(())
        }
        Cmd::Umount(a) => ops::mount::umount(&a.mountpoint),
        Cmd::Diff(a) => {
            if let Some(file) = &a.vols_from {
                return vols_from_run(
                    g,
                    file,
                    false,
                    |archive, vf, failures| {
                        Ok(ops::vols_from::diff(archive, vf, a.quick, failures))
                    },
                    // Differences are volume errors, reported with the failures.
                    |r| {
                        r.first_difference
                            .is_none()
                            .then(|| identical_line(r))
                            .into_iter()
                            .collect()
                    },
                );
            }
            let volume = a.volume.clone().unwrap_or_default();
            let archive = open_archive(g, false)?;
            let local = match (&a.local, &a.file) {
                (Some(dir), None) => {
                    let store = wyng::source::LocalStorage::open(dir)?;
                    ops::receive::diff_source(&archive, &ops::VolumeRef::same(&volume), &store)?
                }
                (None, Some(f)) => f.clone(),
                _ => return Err(Error::Usage("diff needs --local=DIR or --file=PATH".into())),
            };
            let r = ops::receive::diff(&archive, &volume, &local, a.quick)?;
            if g.json {
                print_json(&r)?;
            }
            match r.first_difference {
                None => {
                    say(identical_line(&r));
                    Ok(())
                }
                Some(off) => Err(Error::Selection(format!(
                    "{}: differs from session {} (first difference at byte {off})",
                    r.volume,
                    &r.session[2..]
                ))),
            }
        }
        Cmd::Prune(a) => {
            let o = ops::prune::PruneOptions {
                session: a.session,
                all_before: a.all_before,
                keep: a.keep,
                dry_run: a.dry_run,
                policy: ops::prune::Policy {
                    last: a.keep_last,
                    hourly: a.keep_hourly,
                    daily: a.keep_daily,
                    weekly: a.keep_weekly,
                    monthly: a.keep_monthly,
                    yearly: a.keep_yearly,
                },
                autoprune: ops::prune::AutoMode::parse(&a.auto.autoprune)?,
                apdays: ops::autoprune::ApDays::parse(&a.auto.apdays)?,
                on_limit: None,
            };
            let mut archive = open_archive(g, !o.dry_run)?;
            if !o.dry_run && !g.unattended {
                confirm("Prune the selected sessions?")?;
            }
            let reports = ops::prune::run(&mut archive, &a.volumes, &o)?;
            if g.json {
                return print_json(&reports);
            }
            for r in reports {
                let verb = if o.dry_run { "would remove" } else { "removed" };
                if o.dry_run {
                    for (s, why) in &r.kept {
                        say(format!(
                            "{}: keep   {}  ({})",
                            r.volume,
                            &s[2..],
                            why.join(", ")
                        ));
                    }
                    for s in &r.removed {
                        say(format!("{}: remove {}", r.volume, &s[2..]));
                    }
                } else if r.removed.is_empty() {
                    say(format!("{}: no session selected.", r.volume));
                } else {
                    let names: Vec<&str> = r.removed.iter().map(|s| &s[2..]).collect();
                    say(format!(
                        "{}: {verb} {} session(s): {}",
                        r.volume,
                        r.removed.len(),
                        names.join(" ")
                    ));
                }
            }
            Ok(())
        }
        Cmd::ArchCheck(a) => {
            let mut archive = open_archive(g, a.clean || a.change_uuid)?;
            if a.change_uuid {
                if !g.unattended {
                    confirm("Give this archive a new UUID?")?;
                }
                let uuid = ops::check::change_uuid(&mut archive)?;
                say(format!("New archive UUID: {uuid}"));
                return Ok(());
            }
            let reports = ops::check::run(
                &mut archive,
                &a.volumes,
                &ops::check::CheckOptions {
                    session: a.session,
                    clean: a.clean,
                },
            )?;
            let problems: usize = reports.iter().map(|r| r.problems.len()).sum();
            if g.json {
                print_json(&reports)?;
            } else {
                for r in &reports {
                    for p in &r.problems {
                        eprintln!("{}: {p}", r.volume);
                    }
                    say(format!(
                        "{}: {} sessions, {} chunk files checked, {}.",
                        r.volume,
                        r.sessions,
                        r.chunks,
                        if r.problems.is_empty() {
                            "no problems".to_string()
                        } else {
                            format!("{} problem(s)", r.problems.len())
                        }
                    ));
                }
            }
            if problems > 0 {
                return Err(Error::corrupt(
                    g.dest.clone().unwrap_or_default(),
                    format!("arch-check found {problems} problem(s)"),
                ));
            }
            Ok(())
        }
        Cmd::ArchDeduplicate => {
            let mut archive = open_archive(g, true)?;
            let r = ops::dedup::arch_deduplicate(&mut archive)?;
            if g.json {
                return print_json(&r);
            }
            say(format!(
                "{} of {} chunk files replaced by hard links; {} saved.",
                r.linked,
                r.chunk_files,
                human(r.bytes_saved)
            ));
            Ok(())
        }
        Cmd::Delete(a) => {
            let mut archive = open_archive(g, true)?;
            if a.clean {
                if a.volume.is_some() {
                    return Err(Error::Usage("delete --clean takes no volume name".into()));
                }
                let local = a
                    .local
                    .as_deref()
                    .ok_or_else(|| Error::Usage("delete --clean needs --local=DIR".into()))?;
                let purge = ops::clean::Purge::parse(a.all, a.purge.as_deref())?;
                let found = ops::clean::select(&archive, local, purge);
                if !g.unattended && (!found.is_empty() || purge == ops::clean::Purge::All) {
                    confirm(&format!(
                        "Remove {} wyng snapshot(s) from {}?",
                        found.len(),
                        local.display()
                    ))?;
                }
                let removed = ops::clean::remove(&archive, &found, purge)?;
                if g.json {
                    return print_json(&removed);
                }
                for p in &removed {
                    say(format!("Removed {}", p.display()));
                }
                say(format!("{} snapshot(s) removed.", removed.len()));
                return Ok(());
            }
            let volume = match (a.volume, &a.vid) {
                (Some(v), None) => v,
                (None, Some(vid)) => archive
                    .volumes
                    .iter()
                    .find(|v| v.vid.as_str() == vid)
                    .map(|v| v.name().to_string())
                    .ok_or_else(|| {
                        Error::Selection(format!(
                            "no volume has the id '{vid}': `wyng list -v` shows the ids"
                        ))
                    })?,
                _ => {
                    return Err(Error::Usage(
                        "name the volume to delete, or give --vid (or use --clean)".into(),
                    ))
                }
            };
            let vid = archive.volume(&volume).map(|v| v.vid.to_string());
            if !g.unattended {
                confirm(&format!("Delete volume '{volume}' and all its sessions?"))?;
            }
            ops::prune::delete(&mut archive, &volume)?;
            if let (Some(local), Some(vid)) = (&a.local, vid) {
                for p in ops::clean::remove_volume(&archive, local, &vid)? {
                    say(format!("Removed {}", p.display()));
                }
            }
            say(format!("Deleted volume '{volume}'."));
            Ok(())
        }
        Cmd::Rename(a) => {
            let mut archive = open_archive(g, true)?;
            ops::prune::rename(&mut archive, &a.old, &a.new, &a.volume_desc)?;
            say(format!("Renamed '{}' to '{}'.", a.old, a.new));
            Ok(())
        }
        Cmd::Add(a) => {
            if a.volumes.is_empty() {
                return Err(Error::Usage("name the volumes to add".into()));
            }
            let mut archive = open_archive(g, true)?;
            for v in &a.volumes {
                ops::prune::add(&mut archive, v, &a.volume_desc)?;
                say(format!("Added volume '{v}'."));
            }
            Ok(())
        }
        Cmd::List(a) => {
            let archive = open_archive(g, false)?;
            if g.json {
                return print_json(&ops::list::json(&archive, &a.volumes)?);
            }
            let session = a
                .session
                .as_deref()
                .map(|s| SessionSel::parse(Some(s), true))
                .transpose()?;
            let text = ops::list::text(
                &archive,
                &a.volumes,
                &ops::list::TextOptions {
                    verbose: g.verbose > 0,
                    session,
                },
            )?;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            Ok(())
        }
    }
}
