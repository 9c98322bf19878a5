//! A send to several destinations as one run (`send --dest=A --dest=B`, also with
//! `--vols-from`): open every archive, say which volumes each gets, thin them
//! (`--autoprune=full`), send (each volume read once for all of them, [`super::run_multi`]),
//! apply retention, and record what each destination misses ([`crate::ops::outstanding`]).
//!
//! Invariants:
//! - With one destination, its errors are the run's: one that cannot be opened or whose
//!   autoprune fails is an `Err`; a send that fails is in the report (the caller decides how
//!   it ends, after what it did was recorded).
//! - With several, a destination that cannot be opened, or whose autoprune fails, or whose send
//!   fails, is *outstanding*: the others go on. It misses every volume it did not get, and it
//!   gets nothing more in this run (later runs over other local storages skip it).
//! - An `Err` from [`Destinations::send`] is a problem with the request itself (nothing was
//!   sent anywhere).
//! - Retention prunes only in destinations whose send succeeded, only the volumes that got a
//!   session there, never on a dry run.
//! - `outstanding.json` is updated once, at the end, never on a dry run; failing to write it
//!   is a warning, not the run's failure (the archives hold what was sent).
//! - Nothing here prints, asks or reads the environment: the caller gives the archives'
//!   opener, the time and the options, and prints the [`SendReport`].

use std::path::Path;

use crate::archive::WriteArchive;
use crate::error::{Error, Result};
use crate::format::SessionName;
use crate::ops::{self, outstanding, prune};

use super::{run_multi, wants, SendOptions, SendRequest, Target, TargetResult, VolumeReport};

/// The archives of one send, and what each got so far.
pub struct Destinations {
    /// The archives that were opened and did not fail before the send, in the order given.
    open: Vec<Destination>,
    /// Those that could not be opened or whose autoprune failed, in the order they failed.
    lost: Vec<(String, Error)>,
    /// Only one destination was given: its errors end the run.
    single: bool,
    /// The session name the runs shared, when the caller chose it.
    session: Option<SessionName>,
}

/// One open archive of the send.
struct Destination {
    url: String,
    archive: WriteArchive,
    /// The requests (by volume name) it gets; `None`: all of them.
    volumes: Option<Vec<String>>,
    result: TargetResult,
}

/// How a send ends, after every run: see [`Destinations::finish`].
pub struct FinishOptions<'a> {
    /// Every volume the send was asked for: what an outstanding destination that got nothing
    /// misses.
    pub volumes: Vec<String>,
    /// Retention after the send (`None`: none).
    pub retention: Option<prune::Policy>,
    /// The time retention counts from.
    pub now: chrono::NaiveDateTime,
    /// A dry run: no retention, no record.
    pub dry_run: bool,
    /// Where `outstanding.json` is kept.
    pub meta_dir: &'a Path,
}

/// What a send did, per destination: the archives opened first (in the order given), then
/// those that could not be opened or thinned.
#[derive(serde::Serialize)]
pub struct SendReport {
    pub destinations: Vec<DestinationReport>,
}

/// What a send did at one destination (as `--json` shows it).
#[derive(serde::Serialize)]
pub struct DestinationReport {
    pub dest: String,
    pub volumes: Vec<VolumeReport>,
    /// Why it stopped.
    #[serde(serialize_with = "error_json")]
    pub error: Option<Error>,
    /// The volumes it did not get (once it failed).
    pub outstanding: Vec<String>,
}

impl SendReport {
    /// The destinations that failed, with the volumes each misses.
    pub fn outstanding(&self) -> Vec<(String, Vec<String>)> {
        self.destinations
            .iter()
            .filter(|d| d.error.is_some())
            .map(|d| (d.dest.clone(), d.outstanding.clone()))
            .collect()
    }
}

impl Destinations {
    /// Opens every archive of `urls` with `open`. With one URL its error is returned; with
    /// several, those that fail are outstanding, unless none opens (then the first error).
    pub fn open(
        urls: &[String],
        mut open: impl FnMut(&str) -> Result<WriteArchive>,
    ) -> Result<Destinations> {
        let mut d = Destinations {
            open: Vec::new(),
            lost: Vec::new(),
            single: urls.len() == 1,
            session: None,
        };
        for url in urls {
            match open(url) {
                Ok(archive) => d.open.push(Destination {
                    url: url.clone(),
                    archive,
                    volumes: None,
                    result: TargetResult::default(),
                }),
                Err(e) => d.lose(url.clone(), e)?,
            }
        }
        if d.open.is_empty() {
            // No destination could be opened: the first one's error.
            return Err(d.lost.remove(0).1);
        }
        Ok(d)
    }

    /// A destination failed before the send: the run's error with one destination.
    fn lose(&mut self, url: String, e: Error) -> Result<()> {
        if self.single {
            return Err(e);
        }
        tracing::error!("{url}: {e}");
        self.lost.push((url, e));
        Ok(())
    }

    /// The open archives, in the order given.
    pub fn archives(&self) -> impl Iterator<Item = &WriteArchive> {
        self.open.iter().map(|d| &d.archive)
    }

    /// The open archives, to change before the send (a `--vols-from` rename).
    pub(crate) fn archives_mut(&mut self) -> impl Iterator<Item = &mut WriteArchive> {
        self.open.iter_mut().map(|d| &mut d.archive)
    }

    /// Which requests each open archive gets, in the order given (`None`: all of them; the
    /// default).
    pub fn plan(
        &mut self,
        mut volumes: impl FnMut(&WriteArchive) -> Result<Option<Vec<String>>>,
    ) -> Result<()> {
        for d in &mut self.open {
            d.volumes = volumes(&d.archive)?;
        }
        Ok(())
    }

    /// `--autoprune=full` before anything is sent: thins every volume of each archive (after
    /// the requests are planned: a mistyped command prunes nothing). Returns what it removed
    /// (or, with `o.dry_run`, would), archive after archive.
    pub fn autoprune_full(&mut self, o: &prune::PruneOptions) -> Result<Vec<prune::PruneReport>> {
        let mut removed = Vec::new();
        for mut d in std::mem::take(&mut self.open) {
            if d.archive.volumes().is_empty() {
                self.open.push(d);
                continue;
            }
            match prune::run(&mut d.archive, &[], o) {
                Ok(r) => {
                    removed.extend(r);
                    self.open.push(d);
                }
                Err(e) => self.lose(d.url, e)?,
            }
        }
        Ok(removed)
    }

    /// Sends the requests to every open archive that takes them and has not failed; may be
    /// called once per local storage (`--vols-from`), each call's reports adding up.
    pub fn send(&mut self, reqs: &[SendRequest], opts: &SendOptions) -> Result<()> {
        if let Some(s) = &opts.session {
            self.session = Some(s.clone());
        }
        let mut targets: Vec<Target> = self
            .open
            .iter_mut()
            .map(|d| Target {
                volumes: match &d.result.failed {
                    // Failed in an earlier run: it gets nothing more.
                    Some(_) => Some(Vec::new()),
                    None => d.volumes.clone(),
                },
                archive: &mut d.archive,
            })
            .collect();
        let results = run_multi(&mut targets, reqs, opts)?;
        drop(targets);
        for (d, r) in self.open.iter_mut().zip(results) {
            d.result.reports.extend(r.reports);
            match &mut d.result.failed {
                Some((_, missing)) => missing.extend(
                    reqs.iter()
                        .filter(|q| wants(&d.volumes, q))
                        .map(|q| q.volume.clone()),
                ),
                None => d.result.failed = r.failed,
            }
        }
        Ok(())
    }

    /// Retention in each destination that took the send, then the record of what each
    /// destination misses; the report of the whole send.
    pub fn finish(self, o: &FinishOptions) -> SendReport {
        let Destinations {
            mut open,
            lost,
            session,
            ..
        } = self;
        if !o.dry_run {
            if let Some(policy) = &o.retention {
                for d in open.iter_mut().filter(|d| d.result.failed.is_none()) {
                    if let Err(e) = retain(&mut d.archive, policy, o.now, &mut d.result.reports) {
                        d.result.failed = Some((e, Vec::new()));
                    }
                }
            }
        }
        let when = session
            .map(|s| s.to_string())
            .or_else(|| {
                open.iter()
                    .flat_map(|d| &d.result.reports)
                    .find_map(|r| r.session.clone())
            })
            .unwrap_or_else(|| SessionName::from_time(chrono::Local::now()).to_string());
        let mut destinations: Vec<DestinationReport> = open
            .into_iter()
            .map(|d| DestinationReport::new(d.url, d.result))
            .collect();
        destinations.extend(lost.into_iter().map(|(url, e)| DestinationReport {
            dest: url,
            outstanding: o.volumes.clone(),
            error: Some(e),
            volumes: Vec::new(),
        }));
        let report = SendReport { destinations };
        if !o.dry_run {
            record(o.meta_dir, &when, &report);
        }
        report
    }
}

impl DestinationReport {
    fn new(dest: String, r: TargetResult) -> DestinationReport {
        let (error, outstanding) = match r.failed {
            Some((e, missing)) => (Some(e), missing),
            None => (None, Vec::new()),
        };
        DestinationReport {
            dest,
            volumes: r.reports,
            error,
            outstanding,
        }
    }
}

/// Retention: prunes the volumes that just got a session by `policy`, once the send has
/// committed, and notes in their reports what it removed.
fn retain(
    wa: &mut WriteArchive,
    policy: &prune::Policy,
    now: chrono::NaiveDateTime,
    reports: &mut [VolumeReport],
) -> Result<()> {
    let names: Vec<String> = reports
        .iter()
        .filter(|r| r.session.is_some())
        .map(|r| r.volume.clone())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let o = prune::PruneOptions {
        policy: policy.clone(),
        spare_metadata: true,
        now,
        ..Default::default()
    };
    for p in prune::run(wa, &names, &o)? {
        if let Some(r) = reports.iter_mut().find(|r| r.volume == p.volume) {
            r.retention_removed = p.removed;
        }
    }
    Ok(())
}

/// Records what each destination got and misses (session `when`).
fn record(meta_dir: &Path, when: &str, report: &SendReport) {
    let updates: Vec<outstanding::Update> = report
        .destinations
        .iter()
        .map(|d| outstanding::Update {
            url: &d.dest,
            sent: d.volumes.iter().map(|r| r.volume.clone()).collect(),
            missed: d.outstanding.clone(),
            error: d.error.as_ref().map(|e| e.to_string()),
        })
        .collect();
    if let Err(e) = ops::outstanding::update(meta_dir, when, &updates) {
        tracing::warn!("cannot record what each destination misses: {e}");
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
                "message": e.to_string(),
                "kind": e.kind(),
                "exit_code": e.exit_code(),
            })
        })
        .serialize(s)
}

#[cfg(test)]
mod tests;
