//! `send`: back up volumes into new sessions.
//!
//! The pipeline streams and uses every core while the manifest stays in address order:
//! a reader thread reads chunks by position, one worker per core tests for zeros, compresses,
//! hashes, compares with the previous merged manifest and writes changed chunk files into
//! `S-tmp`, and this thread puts results back in address order to build the manifest and its
//! checksum. A token channel bounds the chunks in flight, so memory does not grow with the
//! volume (only the previous merged manifest is held: ~36 bytes per chunk).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::bounded;

use crate::archive::{Archive, Session, SESSION_TMP};
use crate::cache::DigestMap;
use crate::error::{Error, Result};
use crate::format::manifest::{chunk_count, chunk_len, push_line};
use crate::format::{chunk_rel_path, ChunkRef, Merged, SessionInfo, SessionName, Tag};
use crate::ops::{is_all_zero, workers};
use crate::progress::Progress;
use crate::source::deltamap::DeltaMap;
use crate::source::reflink::PrepareVolume;
use crate::source::{LocalStorage, Plan, Prepared};
use crate::source::{Scan, Source};

pub struct SendRequest {
    pub volume: String,
    /// The volume's file or block device.
    pub source: PathBuf,
    /// In local storage (`--local`): send from a snapshot, incrementally when paired.
    pub reflink: bool,
}

#[derive(Default)]
pub struct SendOptions {
    /// Record a session even when nothing changed.
    pub send_unchanged: bool,
    pub tags: Vec<Tag>,
    /// Description for volumes this send creates.
    pub volume_desc: String,
    /// Hard-link chunks the archive already holds instead of storing them again.
    pub dedup: bool,
    /// Compute and report what would be sent; write nothing (snapshots are not rotated).
    pub dry_run: bool,
    /// The local storage (`--local`) holding the volumes of requests marked `reflink`.
    pub local: Option<LocalStorage>,
    /// wyng's cache directory for this archive, where the digest maps live (see
    /// [`DigestMap`]). Without it every chunk is compressed to compare.
    pub cache_dir: Option<PathBuf>,
    /// The session name, when several runs over different local storages share one (see
    /// [`session_name`]); by default the current time.
    pub session: Option<SessionName>,
    /// `--autoprune=on`: before sending a volume whose change exceeds the destination's free
    /// space, thin its old sessions by this calendar ([`crate::ops::prune::make_room`]).
    pub autoprune_on: Option<crate::ops::autoprune::ApDays>,
}

#[derive(Debug, serde::Serialize)]
pub struct VolumeReport {
    pub volume: String,
    /// `None` when nothing changed and no session was recorded.
    pub session: Option<String>,
    pub volsize: u64,
    pub chunks_read: u64,
    pub chunks_changed: u64,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    /// Changed chunks stored as hard links to identical chunks already in the archive.
    pub chunks_linked: u64,
    /// Sessions of this volume that `--autoprune=on` removed to make room for this send.
    pub autopruned: Vec<String>,
}

pub fn run(
    archive: &mut Archive,
    reqs: &[SendRequest],
    opts: &SendOptions,
) -> Result<Vec<VolumeReport>> {
    if !opts.dry_run {
        archive.recover()?;
    }
    let mut seen = std::collections::HashSet::new();
    for r in reqs {
        if !seen.insert(&r.volume) {
            return Err(Error::Usage(format!(
                "volume '{}' is named twice",
                r.volume
            )));
        }
    }
    // Open every source first, so a typo fails before anything is written.
    let sources = reqs
        .iter()
        .map(|r| Source::open(&r.source))
        .collect::<Result<Vec<_>>>()?;
    if reqs.iter().any(|r| r.reflink) && opts.cache_dir.is_none() {
        tracing::warn!(
            "no local cache: snapshot pairing cannot be recorded, every send is a full scan"
        );
    }
    let name = match &opts.session {
        Some(n) => n.clone(),
        None => session_name(archive, reqs.iter().map(|r| r.volume.as_str()))?,
    };
    let mut index = if opts.dedup {
        if !opts.dry_run {
            crate::ops::dedup::check_hard_links(archive)?;
        }
        let idx = crate::ops::dedup::DedupIndex::build(archive)?;
        tracing::info!("dedup index: {} distinct chunks", idx.len());
        Some(idx)
    } else {
        None
    };
    let mut idxs = Vec::new();
    for req in reqs {
        idxs.push(match archive.volume_index(&req.volume) {
            Some(i) => i,
            None => archive.new_volume(&req.volume, &opts.volume_desc)?,
        });
    }
    // Volumes in local storage: snapshot them all and read what changed in one scan.
    let mut prepared = match &opts.local {
        Some(store) => {
            let vols: Vec<PrepareVolume> = reqs
                .iter()
                .zip(&idxs)
                .filter(|(r, _)| r.reflink)
                .map(|(r, &i)| PrepareVolume {
                    name: &r.volume,
                    file: r.source.clone(),
                    vid: archive.volumes[i].vid.to_string(),
                    last: archive.volumes[i].last(),
                })
                .collect();
            store.prepare(
                &vols,
                archive.uuid(),
                opts.cache_dir.as_deref(),
                archive.chunksize(),
                false,
            )?
        }
        None => Vec::new(),
    }
    .into_iter();
    let mut reports = Vec::new();
    let mut pending: Vec<Prepared> = Vec::new();
    let mut result = Ok(());
    for ((req, src), &idx) in reqs.iter().zip(&sources).zip(&idxs) {
        let prep = if req.reflink { prepared.next() } else { None };
        let mut autopruned = Vec::new();
        if let (Some(apdays), false) = (opts.autoprune_on, opts.dry_run) {
            let needed = match prep.as_ref().map(|p| &p.plan) {
                Some(Plan::Incremental(map)) => {
                    map.chunks(u64::MAX).len() as u64 * archive.chunksize()
                }
                _ => src.size,
            };
            let pruned = crate::ops::prune::make_room(archive, &req.volume, needed, apdays)
                .and_then(|r| {
                    if !r.is_empty() && index.is_some() {
                        // Pruning moved chunk files: the index's places are stale.
                        index = Some(crate::ops::dedup::DedupIndex::build(archive)?);
                    }
                    Ok(r)
                });
            match pruned {
                Ok(r) => autopruned = r.into_iter().flat_map(|r| r.removed).collect(),
                Err(e) => {
                    pending.extend(prep);
                    result = Err(e);
                    break;
                }
            }
        }
        let r = if req.reflink {
            match prep {
                Some(p) => {
                    let r = send_local(archive, idx, req, src, &p, &name, opts, index.as_ref());
                    if r.is_err() {
                        pending.push(p);
                    }
                    r
                }
                None => Err(Error::local(&req.source, "needs --local")),
            }
        } else {
            send_volume(archive, idx, src, &name, opts, Scan::Full, index.as_ref())
        };
        match r {
            Ok(mut rep) => {
                rep.autopruned = autopruned;
                reports.push(rep);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // Snapshots taken for volumes that were not sent (an earlier one failed) are dropped.
    pending
        .iter()
        .chain(prepared.as_slice())
        .for_each(|p| p.snaps.drop_snap2());
    result.map(|()| reports)
}

/// Sends a volume of a reflink store from its `.wyng2` snapshot as planned by
/// [`LocalStorage::prepare`], then moves the baseline (behaviour §7.1 step 7): after a new session
/// `.wyng2` becomes the paired baseline with a blank map; when nothing changed it becomes the
/// baseline all the same (it holds what the newest session holds); a dry run keeps the changes
/// it found in the map, as monitor does.
#[allow(clippy::too_many_arguments)]
fn send_local(
    archive: &mut Archive,
    vol_idx: usize,
    req: &SendRequest,
    live: &Source,
    prep: &Prepared,
    name: &SessionName,
    opts: &SendOptions,
    index: Option<&crate::ops::dedup::DedupIndex>,
) -> Result<VolumeReport> {
    let snaps = &prep.snaps;
    let cs = archive.chunksize();
    let snap;
    let (scan, src) = match &prep.plan {
        Plan::Nocow => (Scan::Full, live),
        plan => {
            let mut s = Source::open(snaps.snap2_path())?;
            // The session records the volume's own attributes, not the read-only snapshot's.
            s.permissions = live.permissions.clone();
            snap = s;
            let scan = match plan {
                Plan::Incremental(map) => {
                    let chunks = map.chunks(chunk_count(snap.size, cs));
                    tracing::info!(
                        "{}: {} chunks changed according to the extent maps",
                        req.volume,
                        chunks.len()
                    );
                    Scan::Chunks(chunks)
                }
                _ => Scan::Full,
            };
            (scan, &snap)
        }
    };
    let last_before = archive.volumes[vol_idx].last().cloned();
    let report = send_volume(archive, vol_idx, src, name, opts, scan, index)?;
    if matches!(prep.plan, Plan::Nocow) {
        return Ok(report);
    }
    let last = archive.volumes[vol_idx].last().cloned();
    match (&report.session, &last, &last_before) {
        (Some(_), Some(l), _) => snaps.rotate_after_send(l, cs)?,
        // A dry run: keep what was found, as monitor does.
        (None, _, Some(l)) if opts.dry_run => match &prep.plan {
            Plan::Incremental(map) => snaps.rotate_with(l, map)?,
            _ => snaps.drop_snap2(),
        },
        // No session: `.wyng2` holds what the newest session holds.
        (None, Some(l), _) => snaps.rotate_with(l, &DeltaMap::blank(l.info.volsize, cs))?,
        _ => snaps.drop_snap2(),
    }
    Ok(report)
}

/// The session name for this run: the local time, shared by all volumes (format §3.3). If a
/// volume already has a session of that name (two sends within a second), wait for the clock.
pub fn session_name<'a>(
    archive: &Archive,
    volumes: impl Iterator<Item = &'a str> + Clone,
) -> Result<SessionName> {
    for _ in 0..3 {
        let name = SessionName::from_time(chrono::Local::now());
        let taken = volumes.clone().any(|v| {
            archive
                .volume(v)
                .is_some_and(|v| v.session_index(&name).is_some())
        });
        if !taken {
            return Ok(name);
        }
        std::thread::sleep(std::time::Duration::from_millis(
            1000 - chrono::Local::now().timestamp_subsec_millis().min(999) as u64,
        ));
    }
    Err(Error::Other(
        "a session with this time's name already exists (is the clock set back?)".into(),
    ))
}

/// How many marked chunks ahead of the reader the kernel is asked to read.
const READ_AHEAD: usize = 16;

/// What the reader hands a worker.
enum Job {
    /// A hole in the source: zeros, not read.
    Hole,
    Data(Vec<u8>),
    /// Left out by the change map: as the newest session has it.
    Unchanged,
}

/// What a worker found for one chunk, with its raw digest for the next digest map.
enum Outcome {
    Same([u8; 16]),
    Changed(ChunkRef, u64, [u8; 16]),
}

fn send_volume(
    archive: &mut Archive,
    vol_idx: usize,
    src: &Source,
    name: &SessionName,
    opts: &SendOptions,
    scan: Scan,
    index: Option<&crate::ops::dedup::DedupIndex>,
) -> Result<VolumeReport> {
    // Chunks the change map leaves out are taken as they are in the newest session.
    let marked: Option<Vec<u64>> = match scan {
        Scan::Full => None,
        Scan::Chunks(v) => Some(v),
    };
    let read_count = std::sync::atomic::AtomicU64::new(0);
    let read_bytes = std::sync::atomic::AtomicU64::new(0);
    let vol = &archive.volumes[vol_idx];
    let vid = vol.vid.clone();
    let cs = archive.chunksize();
    let old: Option<Merged> = match vol.sessions.len() {
        0 => None,
        n => Some(archive.merged(vol, n - 1)?),
    };
    let last = vol.last().cloned();
    let old_digests = match (&opts.cache_dir, &last) {
        (Some(dir), Some(l)) => DigestMap::load(dir, vid.as_str(), l, cs),
        _ => None,
    };
    let n = chunk_count(src.size, cs);
    let mut digests: Vec<[u8; 16]> = Vec::with_capacity(n as usize);
    if !opts.dry_run {
        archive.begin_session(&vid)?;
    }
    let dry = opts.dry_run;
    tracing::info!(
        "sending {} ({} bytes, {n} chunks) as {name}",
        vol.name(),
        src.size
    );

    let dest = &*archive.dest;
    let codec = &archive.codec;
    let shared: &Archive = archive;
    let linked = std::sync::atomic::AtomicU64::new(0);
    let progress = Progress::bytes(src.size, "send");
    let workers = workers();
    let inflight = workers * 4;
    let abort = AtomicBool::new(false);
    let (tok_tx, tok_rx) = bounded::<()>(inflight);
    for _ in 0..inflight {
        tok_tx.send(()).expect("receiver alive");
    }
    // `None`: a chunk the filesystem reports as a hole, known to be zeros without reading it.
    let (job_tx, job_rx) = bounded::<(u64, Job)>(inflight);
    let (res_tx, res_rx) = bounded::<Result<(u64, Outcome)>>(inflight);

    let mut manifest = String::new();
    let mut crc = crc32fast::Hasher::new();
    let mut line = String::with_capacity(64);
    let (mut changed, mut stored) = (0u64, 0u64);
    let mut first_err: Option<Error> = None;

    std::thread::scope(|s| {
        let reader_res = res_tx.clone();
        let abort_r = &abort;
        let (marked, old_r, read_count, read_bytes) =
            (marked.as_deref(), old.as_ref(), &read_count, &read_bytes);
        s.spawn(move || {
            // No data before this offset (from the last SEEK_DATA answer).
            let mut data_from = 0u64;
            let mut next_marked = 0usize;
            for &c in marked.unwrap_or(&[]).iter().take(READ_AHEAD) {
                src.will_need(c * cs, cs);
            }
            for idx in 0..n {
                if tok_rx.recv().is_err() || abort_r.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(m) = marked {
                    while next_marked < m.len() && m[next_marked] < idx {
                        next_marked += 1;
                        // Keep the disk busy a few marked chunks ahead of the reads.
                        if let Some(&ahead) = m.get(next_marked + READ_AHEAD - 1) {
                            src.will_need(ahead * cs, cs);
                        }
                    }
                    let is_marked = m.get(next_marked) == Some(&idx);
                    // Unmarked and known to the archive: not read at all.
                    if !is_marked && old_r.and_then(|o| o.get(idx)).is_some() {
                        if job_tx.send((idx, Job::Unchanged)).is_err() {
                            break;
                        }
                        continue;
                    }
                }
                let (off, len) = (idx * cs, chunk_len(idx, src.size, cs));
                if len == cs && off + len > data_from {
                    data_from = src.next_data(off);
                }
                if len == cs && off + len <= data_from {
                    if job_tx.send((idx, Job::Hole)).is_err() {
                        break;
                    }
                    continue;
                }
                let mut buf = vec![0u8; len as usize];
                read_count.fetch_add(1, Ordering::Relaxed);
                read_bytes.fetch_add(len, Ordering::Relaxed);
                match src.read_at(&mut buf, off) {
                    Ok(()) => {
                        if job_tx.send((idx, Job::Data(buf))).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = reader_res.send(Err(e));
                        break;
                    }
                }
            }
        });
        for _ in 0..workers {
            let (job_rx, res_tx, abort) = (job_rx.clone(), res_tx.clone(), &abort);
            let (old, old_digests, vid) = (old.as_ref(), old_digests.as_ref(), &vid);
            let linked = &linked;
            s.spawn(move || {
                for (idx, job) in job_rx.iter() {
                    if abort.load(Ordering::Relaxed) {
                        break;
                    }
                    let old_ref = old.and_then(|m| m.get(idx)).map(|e| e.0);
                    let buf = match job {
                        Job::Unchanged => {
                            let d = old_digests
                                .and_then(|m| m.digests.get(idx as usize))
                                .copied()
                                .unwrap_or([0; 16]);
                            if res_tx.send(Ok((idx, Outcome::Same(d)))).is_err() {
                                break;
                            }
                            continue;
                        }
                        Job::Data(b) if !(b.len() as u64 == cs && is_all_zero(&b)) => b,
                        // A hole, or a full chunk of zeros.
                        _ => {
                            let out = match old_ref {
                                Some(ChunkRef::Zero) => Outcome::Same([0; 16]),
                                _ => Outcome::Changed(ChunkRef::Zero, 0, [0; 16]),
                            };
                            if res_tx.send(Ok((idx, out))).is_err() {
                                break;
                            }
                            continue;
                        }
                    };
                    let digest = DigestMap::digest(&buf);
                    let known = old_digests.and_then(|m| m.digests.get(idx as usize));
                    let out = if matches!(old_ref, Some(ChunkRef::Data(_)))
                        && known == Some(&digest)
                    {
                        // The same raw bytes as the newest session holds: no need to compress.
                        Ok(Outcome::Same(digest))
                    } else {
                        let hashed = codec.hash_chunk(&buf);
                        if old_ref == Some(ChunkRef::Data(hashed.hash)) {
                            Ok(Outcome::Same(digest))
                        } else {
                            let path = chunk_rel_path(vid, SESSION_TMP, idx * cs);
                            let existing = index
                                .and_then(|x| x.path(shared, &hashed.hash, vol_idx, name.as_str()));
                            if dry {
                                // Only counting: what it would store (or link).
                                let bytes = if existing.is_some() {
                                    linked.fetch_add(1, Ordering::Relaxed);
                                    0
                                } else {
                                    hashed.file.len() as u64
                                };
                                Ok(Outcome::Changed(ChunkRef::Data(hashed.hash), bytes, digest))
                            } else if let Some(existing) = existing {
                                // Already in the archive: a hard link, nothing stored.
                                linked.fetch_add(1, Ordering::Relaxed);
                                dest.link_chunk(&existing, &path).map(|()| {
                                    Outcome::Changed(ChunkRef::Data(hashed.hash), 0, digest)
                                })
                            } else {
                                let h = hashed.hash;
                                codec.seal_chunk(hashed).and_then(|enc| {
                                    dest.write_chunk(&path, &enc.file).map(|()| {
                                        if let Some(x) = index {
                                            x.insert_staged(h, vol_idx, idx);
                                        }
                                        Outcome::Changed(
                                            ChunkRef::Data(enc.hash),
                                            enc.file.len() as u64,
                                            digest,
                                        )
                                    })
                                })
                            }
                        }
                    };
                    if res_tx.send(out.map(|o| (idx, o))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(res_tx);
        drop(job_rx);

        // Collector: restore address order, build the manifest and the merged checksum.
        let mut tok_tx = Some(tok_tx);
        let mut pending: BTreeMap<u64, Outcome> = BTreeMap::new();
        let mut next = 0u64;
        for r in res_rx.iter() {
            match r {
                Err(e) => {
                    abort.store(true, Ordering::Relaxed);
                    first_err.get_or_insert(e);
                    tok_tx = None; // wakes the reader so every thread winds down
                }
                Ok((idx, out)) => {
                    pending.insert(idx, out);
                }
            }
            if first_err.is_some() {
                continue;
            }
            while let Some(out) = pending.remove(&next) {
                let final_ref = match out {
                    Outcome::Same(d) => {
                        digests.push(d);
                        old.as_ref()
                            .and_then(|m| m.get(next))
                            .map(|e| e.0)
                            .expect("Same implies an old entry")
                    }
                    Outcome::Changed(r, bytes, d) => {
                        digests.push(d);
                        push_line(&mut manifest, next, cs, &r);
                        changed += 1;
                        stored += bytes;
                        r
                    }
                };
                line.clear();
                push_line(&mut line, next, cs, &final_ref);
                crc.update(line.as_bytes());
                progress.inc(chunk_len(next, src.size, cs));
                next += 1;
                if let Some(t) = &tok_tx {
                    let _ = t.send(());
                }
            }
        }
        drop(tok_tx);
    });
    progress.finish();
    crate::archive::failpoint("chunks-written");
    if let Some(e) = first_err {
        let _ = archive.abort_session(&vid);
        return Err(e);
    }

    let mut report = VolumeReport {
        volume: archive.volumes[vol_idx].name().to_string(),
        session: None,
        volsize: src.size,
        chunks_read: read_count.into_inner(),
        chunks_changed: changed,
        bytes_read: read_bytes.into_inner(),
        bytes_stored: stored,
        chunks_linked: linked.into_inner(),
        autopruned: Vec::new(),
    };
    let is_changed = match &last {
        None => true,
        Some(l) => {
            !manifest.is_empty()
                || l.info.volsize != src.size
                || l.info.permissions != src.permissions
        }
    };
    if opts.dry_run {
        return Ok(report);
    }
    if !is_changed && !opts.send_unchanged {
        archive.abort_session(&vid)?;
        if let Some(l) = &last {
            save_digests(opts, &vid, l, cs, digests);
        }
        return Ok(report);
    }
    let info = SessionInfo {
        localtime: src.mtime_ns,
        previous: last.as_ref().map(|l| l.name.clone()),
        permissions: src.permissions.clone(),
        manifest_hash: None,
        volsize: src.size,
        sequence: last.as_ref().map_or(0, |l| l.info.sequence + 1),
        mfcs: Some(crc.finalize()),
        tags: opts.tags.clone(),
    };
    archive.commit_session(vol_idx, name.clone(), info, &manifest)?;
    report.session = Some(name.to_string());
    if let Some(l) = archive.volumes[vol_idx].last() {
        save_digests(opts, &vid, l, cs, digests);
    }
    Ok(report)
}

/// Saves the digest map for the volume's newest session. Best effort: without it the next
/// send compresses every chunk to compare, which is slower but just as correct.
fn save_digests(
    opts: &SendOptions,
    vid: &crate::format::VolumeId,
    last: &Session,
    cs: u64,
    digests: Vec<[u8; 16]>,
) {
    if let Some(dir) = &opts.cache_dir {
        if let Err(e) = (DigestMap { digests }).save(dir, vid.as_str(), last, cs) {
            tracing::warn!("could not save the digest map: {e}");
        }
    }
}
