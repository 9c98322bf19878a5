//! One volume into every lane of one chunk size: the walk ([`super::walk`]) feeds
//! [`crate::parallel::ordered_map`], whose workers examine the chunks ([`super::examine`]) and
//! whose in-order sink is the collector ([`super::collect`]); then each lane is finished
//! ([`super::finish`]). The map's window (four chunks per worker) bounds the chunks in flight,
//! so memory is a few chunks per core whatever the volume's size.

use crate::error::Result;
use crate::format::manifest::chunk_count;
use crate::format::SessionName;
use crate::parallel::ordered_map;
use crate::source::Source;

use super::collect::{collect, Output};
use super::examine::{self, Found};
use super::finish::{finish_lane, Read};
use super::lanes::{Collected, Lane, VolTarget};
use super::walk::Walk;
use super::{SendOptions, VolumeReport};

/// Sends one volume from `src` into every lane: per target, its report or why it failed. An
/// `Err` is a failure of the source itself, which every lane shares.
pub(super) fn send_volume(
    targets: Vec<VolTarget<'_>>,
    src: &Source,
    name: &SessionName,
    opts: &SendOptions,
) -> Result<Vec<Result<VolumeReport>>> {
    let mut results: Vec<Option<Result<VolumeReport>>> = targets.iter().map(|_| None).collect();
    let mut lanes = Vec::new();
    let mut starts = Vec::new();
    for (pos, vt) in targets.into_iter().enumerate() {
        match Lane::setup(vt, pos, src, name, opts.dry_run) {
            Ok((lane, start)) => {
                lanes.push(lane);
                starts.push(start);
            }
            Err(e) => results[pos] = Some(Err(e)),
        }
    }
    if !lanes.is_empty() {
        let (built, read) = run_lanes(&lanes, starts, src, name, opts)?;
        for (lane, built) in lanes.into_iter().zip(built) {
            let pos = lane.pos;
            results[pos] = Some(built.and_then(|c| finish_lane(lane, c, src, name, opts, read)));
        }
    }
    Ok(results.into_iter().map(|r| r.expect("set")).collect())
}

/// Runs the pipeline over the volume: per lane what it built (or why it failed), and what was
/// read. An `Err` is the source's failure; every lane's output is dropped then.
fn run_lanes(
    lanes: &[Lane],
    starts: Vec<Collected>,
    src: &Source,
    name: &SessionName,
    opts: &SendOptions,
) -> Result<(Vec<Result<Collected>>, Read)> {
    let cs = lanes[0].writer.archive().chunksize();
    let n = chunk_count(src.size, cs);
    let now = std::time::Instant::now();
    let mut outs: Vec<Output> = lanes
        .iter()
        .zip(starts)
        .map(|(l, start)| {
            let every = opts
                .checkpoint_bytes
                .unwrap_or_else(|| l.writer.archive().checkpoint_bytes());
            Output::new(l, start, cs, every, now)
        })
        .collect();
    let progress = lanes[0].writer.archive().progress(src.size, "send");
    let mut read = Read::default();
    let threads = lanes[0].writer.archive().tuning().workers();
    let walked = ordered_map(
        Walk::new(lanes, src, cs, n),
        threads,
        threads * 4,
        |job| Ok(examine::job(lanes, name, cs, job)),
        |found: Found| {
            if let Found::Data { len, .. } = &found {
                read.chunks += 1;
                read.bytes += len;
            }
            let bytes = collect(&mut outs, found, cs);
            progress.inc(bytes);
            Ok(())
        },
    );
    if walked.is_ok() {
        for out in outs.iter_mut().filter(|o| !o.lane.is_failed()) {
            if let Err(e) = out.carry(n) {
                out.fail(e);
            }
        }
    }
    progress.finish();
    lanes[0].writer.archive().failpoint("chunks-written");
    let built = outs.into_iter().map(Output::finish);
    match walked {
        Ok(()) => Ok((built.collect(), read)),
        Err(e) => {
            built.for_each(|b| b.map_or((), Collected::discard));
            Err(e)
        }
    }
}
