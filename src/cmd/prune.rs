//! `wyng prune`.

use clap::{Args, ValueEnum};

use wyng::ops::{self, autoprune::ApDays, prune::AutoMode};
use wyng::Result;

use super::{date, Global};

pub const HELP: &str = "Examples:\n  wyng prune vm1.img --session=20261101-020000 --dest=...           # one session\n  wyng prune --all --session=20261101-000000,20261130-235959 --dest=...  # a range, every volume\n  wyng prune vm1.img --session=^daily --keep=^monthly --dest=...\n  wyng prune -a --all-before --session=20261001-000000 --dry-run --dest=...\n  wyng prune -a --keep-daily=7 --keep-weekly=4 --keep-monthly=12 --keep=^release --dry-run --dest=...\n\nThe newest session of a volume is always kept. Chunk files are moved, not rewritten, and an\ninterrupted prune is finished (or rolled back) by the next write command.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Autoprune {
    Off,
    On,
    Full,
}

fn apdays(s: &str) -> Result<ApDays, String> {
    ApDays::parse(s).map_err(|e| super::errors::message(&e))
}

#[derive(Args, Debug)]
pub struct AutopruneArgs {
    /// Thin old sessions by calendar (see --apdays)
    ///
    /// prune: on = at most 3 per volume per run, full = all that the calendar marks. send: on =
    /// only when a volume's change exceeds the destination's free space (3, then 9, then all
    /// marked sessions of that volume), full = every volume before sending.
    #[arg(long, value_enum, value_name = "off|on|full", default_value = "off")]
    pub autoprune: Autoprune,
    /// Autoprune calendar
    ///
    /// A:B:C:D: remove sessions older than A days (0: never); keep at most D sessions per C
    /// days among those older than B days.
    #[arg(long, value_name = "A:B:C:D", default_value = "0:62:1:2", value_parser = apdays)]
    pub apdays: ApDays,
}

impl AutopruneArgs {
    pub fn autoprune(&self) -> AutoMode {
        match self.autoprune {
            Autoprune::Off => AutoMode::Off,
            Autoprune::On => AutoMode::On,
            Autoprune::Full => AutoMode::Full,
        }
    }
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Volumes to prune
    pub volumes: Vec<String>,
    /// Prune every volume (except --volex ones; wyng-*metadata volumes only when none is
    /// left out)
    #[arg(short, long)]
    pub all: bool,
    /// What to remove: a date-time 20261205-101500, a day (hour, minute) of sessions
    /// 20261205, every session with ^TAG, newest, or a range FROM,TO of any of those or of
    /// times ago (--session=30d,7d)
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
    /// Remove every session before --session's date
    #[arg(long)]
    pub all_before: bool,
    /// Never remove this session (a date-time), the sessions of a day (20261205), those with
    /// ^TAG, or the one a time ago names (2d); repeatable
    #[arg(long, value_name = "WHEN")]
    pub keep: Vec<String>,
    /// Only show what would be removed, and why every other session stays
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub auto: AutopruneArgs,
}

/// `--keep-last/-hourly/-daily/-weekly/-monthly/-yearly` (prune, and send after it commits).
#[derive(Args, Debug, Clone, Default)]
pub struct RetentionArgs {
    /// Keep the N newest sessions
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: usize,
    /// Keep the newest session of each of the last N hours that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: usize,
    /// ... of each of the last N days that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: usize,
    /// ... of each of the last N ISO weeks that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: usize,
    /// ... of each of the last N months that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: usize,
    /// ... of each of the last N years that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: usize,
}

impl RetentionArgs {
    pub fn policy(&self) -> ops::prune::Policy {
        ops::prune::Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
        }
    }

    pub fn is_set(&self) -> bool {
        [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ]
        .iter()
        .any(|&n| n > 0)
    }
}

/// The confirmation question, naming what goes (a few per volume, then how many more).
fn question(plan: &[ops::prune::PruneReport]) -> String {
    const SHOWN: usize = 8;
    let total: usize = plan.iter().map(|r| r.removed.len()).sum();
    let mut q = format!(
        "Prune will remove {}:\n",
        super::count(total as u64, "session", "sessions")
    );
    for r in plan.iter().filter(|r| !r.removed.is_empty()) {
        let names: Vec<&str> = r.removed.iter().take(SHOWN).map(|s| date(s)).collect();
        let more = r.removed.len().saturating_sub(SHOWN);
        q += &format!(
            "  {}: {}{}\n",
            wyng::archive::printable(&r.volume),
            names.join(" "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    q + "Continue?"
}

pub fn run(g: &Global, a: PruneArgs) -> Result<()> {
    let o = ops::prune::PruneOptions {
        session: a.session,
        all_before: a.all_before,
        keep: a.keep,
        dry_run: a.dry_run,
        policy: a.retention.policy(),
        autoprune: a.auto.autoprune(),
        apdays: a.auto.apdays,
        now: super::now(),
        on_limit: None,
        // As the original: only an --all of every volume touches wyng-*metadata volumes.
        spare_metadata: !(a.all && g.volex.is_empty()),
    };
    let reports = if o.dry_run {
        let archive = g.read()?;
        let names = g.selection(&archive, &a.volumes, a.all)?;
        ops::prune::plan(&archive, &names, &o)?
    } else {
        let mut wa = g.write()?;
        let names = g.selection(&wa, &a.volumes, a.all)?;
        // Nothing is asked unless something would go; the question says what.
        let plan = ops::prune::plan(&wa, &names, &o)?;
        if plan.iter().any(|r| !r.removed.is_empty()) && !g.confirm(&question(&plan))? {
            g.say("Cancelled; nothing was pruned.");
            return Ok(());
        }
        ops::prune::run(&mut wa, &names, &o)?
    };
    if g.json {
        return g.json(&reports);
    }
    for r in reports {
        if o.dry_run {
            for (s, why) in &r.kept {
                g.say(format!(
                    "{}: keep   {}  ({})",
                    r.volume,
                    date(s),
                    if why.is_empty() {
                        "not selected".to_string()
                    } else {
                        why.join(", ")
                    }
                ));
            }
            for s in &r.removed {
                g.say(format!("{}: remove {}", r.volume, date(s)));
            }
        } else if r.removed.is_empty() {
            g.say(format!("{}: no session selected.", r.volume));
        } else {
            let names: Vec<&str> = r.removed.iter().map(|s| date(s)).collect();
            g.say(format!(
                "{}: removed {}: {}",
                r.volume,
                super::count(r.removed.len() as u64, "session", "sessions"),
                names.join(" ")
            ));
        }
    }
    Ok(())
}
