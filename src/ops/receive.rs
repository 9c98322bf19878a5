//! `receive` and `verify`: rebuild a session of a volume from its merged manifest.
//!
//! Every chunk is read, size-bounded, checked against its manifest hash, decompressed and
//! length-checked before a single byte of it reaches the target. Workers (one per core) take
//! chunk indices from a shared counter and write by position, so no reordering is needed and
//! memory is one chunk per worker. A restore into a regular file is built under a temporary name
//! beside the target and renamed into place only when complete: a failed receive leaves an
//! existing file untouched. All-zero chunks become holes.

use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::archive::{Archive, Volume};
use crate::error::{Error, Result};
use crate::format::manifest::chunk_len;
use crate::format::{ChunkRef, Merged};
use crate::ops::{is_all_zero, workers, SessionSel};
use crate::progress::Progress;

#[derive(Debug, serde::Serialize)]
pub struct ReadReport {
    pub volume: String,
    pub session: String,
    pub volsize: u64,
    pub chunks: u64,
    /// Data chunks read from the archive.
    pub data_chunks: u64,
    /// In the sparse modes: chunks whose local content differed and were rewritten (or punched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks_written: Option<u64>,
}

/// Reads, verifies and decodes every chunk of `merged` (or those `only` selects), handing data
/// to `sink(offset, bytes)` (zero chunks are passed as `None`).
fn read_session<F>(
    archive: &Archive,
    vol: &Volume,
    merged: &Merged,
    only: Option<&[bool]>,
    label: &str,
    sink: F,
) -> Result<u64>
where
    F: Fn(u64, Option<Vec<u8>>) -> Result<()> + Sync,
{
    let cs = archive.chunksize();
    let n = merged.entries.len() as u64;
    let wanted = |i: u64| only.is_none_or(|o| o.get(i as usize) == Some(&true));
    let next = AtomicU64::new(0);
    let data_chunks = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_err = parking_lot::Mutex::new(None);
    let progress = Progress::bytes(merged.volsize, label);
    let max_file = archive.codec.max_chunk_file();
    // Remote destinations: one fetcher pulls chunk files in batches (a round trip per batch, not
    // per chunk) while the workers verify, decompress and write.
    let batched = archive.dest.batch_reads();
    // Room for two batches, so the next one is fetched while this one is decoded.
    let per_batch = ((16u64 << 20) / cs).clamp(1, 256) as usize;
    let (tx, rx) =
        crossbeam_channel::bounded::<(u64, Result<Option<Vec<u8>>>)>((2 * per_batch).max(32));
    // Verifies and hands on one chunk; `fetched` is its file if the fetcher already read it.
    let process = |idx: u64, fetched: Option<Result<Option<Vec<u8>>>>| -> Result<()> {
        let len = chunk_len(idx, merged.volsize, cs);
        let (r, origin) = merged.entries[idx as usize];
        let res = match r {
            ChunkRef::Zero => sink(idx * cs, None),
            ChunkRef::Data(h) => {
                let path = archive.chunk_path(vol, origin, idx);
                data_chunks.fetch_add(1, Ordering::Relaxed);
                fetched
                    .unwrap_or_else(|| archive.dest.read(&path, max_file))
                    .and_then(|f| f.ok_or_else(|| Error::corrupt(&path, "chunk file is missing")))
                    .and_then(|f| archive.codec.decode_chunk(&f, &h, len as usize, &path))
                    .and_then(|raw| sink(idx * cs, Some(raw)))
            }
        };
        progress.inc(len);
        res
    };
    std::thread::scope(|s| {
        if batched {
            let tx = tx.clone();
            let (failed, first_err) = (&failed, &first_err);
            s.spawn(move || {
                let data: Vec<u64> = (0..n)
                    .filter(|&i| {
                        wanted(i) && matches!(merged.entries[i as usize].0, ChunkRef::Data(_))
                    })
                    .collect();
                for batch in data.chunks(per_batch) {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let paths: Vec<String> = batch
                        .iter()
                        .map(|&i| archive.chunk_path(vol, merged.entries[i as usize].1, i))
                        .collect();
                    match archive.dest.read_many(&paths, max_file) {
                        Ok(files) => {
                            for (&i, f) in batch.iter().zip(files) {
                                // Workers stop on the first error and no longer drain the
                                // channel: never block on it without watching for that.
                                let mut item = (i, Ok(f));
                                loop {
                                    match tx
                                        .send_timeout(item, std::time::Duration::from_millis(50))
                                    {
                                        Ok(()) => break,
                                        Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => {
                                            if failed.load(Ordering::Relaxed) {
                                                return;
                                            }
                                            item = back;
                                        }
                                        Err(crossbeam_channel::SendTimeoutError::Disconnected(
                                            _,
                                        )) => return,
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_err.lock().get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
        drop(tx);
        for _ in 0..workers() {
            s.spawn(|| {
                // Zero chunks (and, for local destinations, every chunk) come from the counter;
                // fetched data chunks from the channel.
                loop {
                    let idx = next.fetch_add(1, Ordering::Relaxed);
                    if idx >= n || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    if !wanted(idx)
                        || batched && matches!(merged.entries[idx as usize].0, ChunkRef::Data(_))
                    {
                        continue;
                    }
                    if let Err(e) = process(idx, None) {
                        failed.store(true, Ordering::Relaxed);
                        first_err.lock().get_or_insert(e);
                        return;
                    }
                }
                for (idx, f) in rx.iter() {
                    if failed.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Err(e) = process(idx, Some(f)) {
                        failed.store(true, Ordering::Relaxed);
                        first_err.lock().get_or_insert(e);
                        break;
                    }
                }
            });
        }
    });
    progress.finish();
    match first_err.into_inner() {
        Some(e) => Err(e),
        None => Ok(data_chunks.into_inner()),
    }
}

fn volume<'a>(archive: &'a Archive, name: &str) -> Result<&'a Volume> {
    archive
        .volume(name)
        .ok_or_else(|| Error::VolumeNotFound(name.to_string()))
}

/// `verify`: read and check every chunk of the selected session without writing anything.
pub fn verify(archive: &Archive, name: &str, sel: &SessionSel) -> Result<ReadReport> {
    let vol = volume(archive, name)?;
    let idx = sel.select(vol)?;
    let merged = archive.merged(vol, idx)?;
    let data = read_session(archive, vol, &merged, None, "verify", |_, _| Ok(()))?;
    Ok(ReadReport {
        volume: name.into(),
        session: vol.sessions[idx].name.to_string(),
        volsize: merged.volsize,
        chunks: merged.entries.len() as u64,
        data_chunks: data,
        chunks_written: None,
    })
}

pub struct ReceiveOptions {
    pub save_to: PathBuf,
    /// Overwrite an existing target without asking (`-u`).
    pub unattended: bool,
    pub mode: Mode,
}

/// How an existing target is brought to the session (behaviour §7.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Recreate the target from every chunk.
    #[default]
    Full,
    /// Keep the target; fetch only chunks whose local content hashes differently
    /// (`--sparse`), write only what differs.
    Sparse,
    /// Keep the target; fetch every chunk, write only what differs (`--sparse-write`).
    SparseWrite,
}

/// `receive --save-to`: restore the selected session into a file or an existing block device.
pub fn receive(
    archive: &Archive,
    name: &str,
    sel: &SessionSel,
    o: &ReceiveOptions,
) -> Result<ReadReport> {
    let vol = volume(archive, name)?;
    let idx = sel.select(vol)?;
    let session = &vol.sessions[idx];
    let merged = archive.merged(vol, idx)?;
    let target = &o.save_to;
    let existing = match fs::metadata(target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::local(target, e.to_string())),
    };
    if let Some(m) = &existing {
        if m.is_dir() {
            return Err(Error::local(
                target,
                "is a directory; give --save-to a file or block device path",
            ));
        }
        confirm_overwrite(target, o.unattended)?;
    }
    let block = existing
        .as_ref()
        .is_some_and(|m| m.file_type().is_block_device());
    if existing.is_some() && o.mode != Mode::Full {
        let (data_chunks, written) = if block {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(target)
                .map_err(|e| Error::local(target, format!("cannot open for writing: {e}")))?;
            update_in_place(archive, vol, &merged, &f, target, true, None, o.mode)?
        } else {
            update_file(archive, vol, &merged, target, target, None, o.mode, session)?
        };
        return Ok(ReadReport {
            volume: name.into(),
            session: session.name.to_string(),
            volsize: merged.volsize,
            chunks: merged.entries.len() as u64,
            data_chunks,
            chunks_written: Some(written),
        });
    }
    let data_chunks = if block {
        receive_to_device(archive, vol, &merged, target)?
    } else {
        if target.starts_with("/dev") && existing.is_none() {
            return Err(Error::local(
                target,
                "no such device; to restore to a block device it must exist",
            ));
        }
        receive_to_file(
            archive,
            vol,
            &merged,
            target,
            &session.info.permissions,
            session.info.localtime,
        )?
    };
    Ok(ReadReport {
        volume: name.into(),
        session: session.name.to_string(),
        volsize: merged.volsize,
        chunks: merged.entries.len() as u64,
        data_chunks,
        chunks_written: None,
    })
}

fn confirm_overwrite(target: &Path, unattended: bool) -> Result<()> {
    if unattended {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Error::Usage(format!(
            "{} exists; add -u to overwrite it",
            target.display()
        )));
    }
    eprint!(
        "{} exists and will be overwritten. Continue? [y/N] ",
        target.display()
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .read_line(&mut answer)
        .map_err(|e| Error::local(target, e.to_string()))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Error::Usage(
            "receive cancelled; nothing was written".into(),
        ))
    }
}

fn receive_to_file(
    archive: &Archive,
    vol: &Volume,
    merged: &Merged,
    target: &Path,
    perms: &str,
    localtime: i128,
) -> Result<u64> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::local(
            &parent,
            "directory does not exist; create it or choose another --save-to",
        ));
    }
    let fname = target
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{fname}.wyng-partial-{}", std::process::id()));
    let result = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::local(&tmp, format!("cannot create: {e}")))?;
        f.set_len(merged.volsize)
            .map_err(|e| Error::local(&tmp, e.to_string()))?;
        // One writer thread: concurrent writers to one file only contend for its inode lock.
        let (tx, rx) = crossbeam_channel::bounded::<(u64, Vec<u8>)>(workers() * 2);
        let data = std::thread::scope(|s| {
            let writer = s.spawn(|| -> Result<()> {
                for (off, d) in rx {
                    f.write_all_at(&d, off).map_err(|e| write_err(&tmp, e))?;
                    start_writeback(&f, off, d.len());
                }
                Ok(())
            });
            let read = read_session(
                archive,
                vol,
                merged,
                None,
                "receive",
                |off, data| match data {
                    // Zero chunks, and data that is all zeros, stay holes.
                    Some(d) if !is_all_zero(&d) => tx
                        .send((off, d))
                        .map_err(|_| Error::local(&tmp, "write failed")),
                    _ => Ok(()),
                },
            );
            drop(tx);
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(Error::local(&tmp, "writer thread failed")));
            written.and(read)
        })?;
        f.sync_all().map_err(|e| write_err(&tmp, e))?;
        apply_metadata(&f, &tmp, perms, localtime);
        fs::rename(&tmp, target)
            .map_err(|e| Error::local(target, format!("cannot rename into place: {e}")))?;
        if let Ok(d) = File::open(&parent) {
            let _ = d.sync_all();
        }
        Ok(data)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn receive_to_device(
    archive: &Archive,
    vol: &Volume,
    merged: &Merged,
    target: &Path,
) -> Result<u64> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(target)
        .map_err(|e| Error::local(target, format!("cannot open for writing: {e}")))?;
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::local(target, e.to_string()))?;
    if size < merged.volsize {
        return Err(Error::local(
            target,
            format!(
                "device is {size} bytes, smaller than the volume's {} bytes",
                merged.volsize
            ),
        ));
    }
    let zeros = vec![0u8; archive.chunksize() as usize];
    let data = read_session(archive, vol, merged, None, "receive", |off, data| {
        let buf = match &data {
            Some(d) => &d[..],
            None => &zeros[..(merged.volsize - off).min(zeros.len() as u64) as usize],
        };
        f.write_all_at(buf, off).map_err(|e| write_err(target, e))
    })?;
    f.sync_all().map_err(|e| write_err(target, e))?;
    Ok(data)
}

/// Brings a copy of `base` up to `merged` and renames it over `target` (`base` may be the
/// target itself, or a snapshot). The copy is a reflink, so only changed blocks cost space and
/// a failure leaves the target as it was; where reflinks are impossible the target is updated
/// in place (an interrupted receive then leaves it partly updated, as the original does).
#[allow(clippy::too_many_arguments)]
fn update_file(
    archive: &Archive,
    vol: &Volume,
    merged: &Merged,
    base: &Path,
    target: &Path,
    only: Option<&[bool]>,
    mode: Mode,
    session: &crate::archive::Session,
) -> Result<(u64, u64)> {
    let fname = target
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = target.with_file_name(format!(".{fname}.wyng-partial-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let (work, staged) = match reflink_copy::reflink(base, &tmp) {
        Ok(()) => (tmp.as_path(), true),
        Err(e) if base == target => {
            tracing::warn!(
                "{}: no reflink copy possible ({e}); updating in place",
                target.display()
            );
            (target, false)
        }
        Err(e) => {
            return Err(Error::local(
                base,
                format!("cannot make a reflink copy: {e}"),
            ))
        }
    };
    let result = (|| {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(work)
            .map_err(|e| Error::local(work, format!("cannot open for writing: {e}")))?;
        let counts = update_in_place(archive, vol, merged, &f, work, false, only, mode)?;
        apply_metadata(&f, work, &session.info.permissions, session.info.localtime);
        if staged {
            fs::rename(work, target)
                .map_err(|e| Error::local(target, format!("cannot rename into place: {e}")))?;
        }
        if let Some(d) = target.parent().and_then(|p| File::open(p).ok()) {
            let _ = d.sync_all();
        }
        Ok(counts)
    })();
    if result.is_err() && staged {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes an open file or device hold `merged`, touching only chunks whose content differs:
/// zero chunks that are not zero locally are punched (files) or zeroed (devices); data chunks
/// are fetched (all of them, or with [`Mode::Sparse`] only those whose local content hashes
/// differently) and written if they differ. `only` limits the work to some chunks (the rest
/// are known to be right). Returns (chunks fetched, chunks written).
#[allow(clippy::too_many_arguments)]
fn update_in_place(
    archive: &Archive,
    vol: &Volume,
    merged: &Merged,
    f: &File,
    path: &Path,
    block: bool,
    only: Option<&[bool]>,
    mode: Mode,
) -> Result<(u64, u64)> {
    let cs = archive.chunksize();
    let volsize = merged.volsize;
    if block {
        let size = (&*f)
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::local(path, e.to_string()))?;
        if size < volsize {
            return Err(Error::local(
                path,
                format!("device is {size} bytes, smaller than the volume's {volsize} bytes"),
            ));
        }
    } else {
        f.set_len(volsize)
            .map_err(|e| Error::local(path, e.to_string()))?;
    }
    let n = merged.entries.len();
    let written = AtomicU64::new(0);
    let read_local = |off: u64, len: usize| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off)
            .map_err(|e| Error::local(path, format!("read error at offset {off}: {e}")))?;
        Ok(buf)
    };
    let zero_range = |off: u64, len: usize| -> Result<()> {
        if !block {
            let punched = nix::fcntl::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(f),
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                off as i64,
                len as i64,
            );
            if punched.is_ok() {
                return Ok(());
            }
        }
        f.write_all_at(&vec![0u8; len], off)
            .map_err(|e| write_err(path, e))
    };
    // First pass, local only: zero chunks, and which data chunks must come from the archive.
    let fetch: Vec<AtomicBool> = (0..n).map(|_| AtomicBool::new(false)).collect();
    crate::ops::parallel(n, |i| {
        if only.is_some_and(|o| !o[i]) {
            return Ok(());
        }
        let idx = i as u64;
        let len = chunk_len(idx, volsize, cs) as usize;
        match merged.entries[i].0 {
            ChunkRef::Zero => {
                let off = idx * cs;
                // Holes are zeros: skip reading them.
                if !block && crate::source::seek_data(f, off) >= off + len as u64 {
                    return Ok(());
                }
                if !is_all_zero(&read_local(off, len)?) {
                    zero_range(off, len)?;
                    written.fetch_add(1, Ordering::Relaxed);
                }
            }
            ChunkRef::Data(h) => {
                let needed = mode != Mode::Sparse || {
                    let local = read_local(idx * cs, len)?;
                    is_all_zero(&local) || archive.codec.hash_chunk(&local).hash != h
                };
                fetch[i].store(needed, Ordering::Relaxed);
            }
        }
        Ok(())
    })?;
    let fetch: Vec<bool> = fetch.into_iter().map(AtomicBool::into_inner).collect();
    let fetched = read_session(
        archive,
        vol,
        merged,
        Some(&fetch),
        "receive",
        |off, data| {
            let Some(d) = data else {
                return Ok(());
            };
            if read_local(off, d.len())? != d {
                f.write_all_at(&d, off).map_err(|e| write_err(path, e))?;
                written.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        },
    )?;
    f.sync_all().map_err(|e| write_err(path, e))?;
    Ok((fetched, written.into_inner()))
}

/// Starts writeback of a range now, so the disk works while we decode and the final sync has
/// little left to wait for. Advisory: failures show up at that sync.
fn start_writeback(f: &File, off: u64, len: usize) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            off as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

fn write_err(path: &Path, e: std::io::Error) -> Error {
    Error::local(path, format!("write failed: {e}"))
}

/// Mode, owner (when root and the names exist) and mtime of the session, as the original does.
/// Failures here do not fail the restore: the data is what matters.
fn apply_metadata(f: &File, path: &Path, perms: &str, localtime: i128) {
    let parts: Vec<&str> = perms.split(':').collect();
    if parts.len() == 3 {
        if let Ok(mode) = parts[0].parse::<u32>() {
            let _ = f.set_permissions(fs::Permissions::from_mode(mode & 0o7777));
        }
        if nix::unistd::geteuid().is_root() {
            let uid = nix::unistd::User::from_name(parts[1])
                .ok()
                .flatten()
                .map(|u| u.uid);
            let gid = nix::unistd::Group::from_name(parts[2])
                .ok()
                .flatten()
                .map(|g| g.gid);
            if uid.is_some() || gid.is_some() {
                if let Err(e) = nix::unistd::fchown(std::os::fd::AsRawFd::as_raw_fd(f), uid, gid) {
                    tracing::debug!("chown {}: {e}", path.display());
                }
            }
        }
    }
    if localtime > 0 {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(localtime as u64);
        let _ = f.set_modified(t);
    }
}

/// How `receive --local` may use the paired baseline snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotUse {
    #[default]
    No,
    /// `--use-snapshot`: the newest session instantly from the baseline; an older one starts
    /// from the baseline and rewrites what differs.
    Snapshot,
    /// `--use-snapshot-diff`: an older session from the baseline plus only the chunks that
    /// sessions after it changed.
    SnapshotDiff,
}

/// `receive --local=DIR`: restores a volume file in a reflink directory (behaviour §7.3).
/// After the newest session, the volume is paired again, so the next send is incremental.
pub fn receive_local(
    archive: &Archive,
    v: &crate::ops::VolumeRef,
    sel: &SessionSel,
    store: &crate::source::reflink::ReflinkStore,
    o: &ReceiveOptions,
    use_snapshot: SnapshotUse,
    cache_dir: Option<&Path>,
) -> Result<ReadReport> {
    use crate::source::deltamap::{DeltaMap, Pairing};
    use crate::source::reflink::{self, VolumeSnaps};
    use crate::source::Snapshots;
    let name = v.archive.as_str();
    let vol = volume(archive, name)?;
    let idx = sel.select(vol)?;
    let newest = idx + 1 == vol.sessions.len();
    let session = &vol.sessions[idx];
    let target = store.volume_path(&v.local)?;
    let snaps = VolumeSnaps::new(&target, archive.uuid(), vol.vid.as_str(), cache_dir);
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::local(parent, e.to_string()))?;
    }
    let exists = fs::symlink_metadata(&target).is_ok();
    if exists {
        confirm_overwrite(&target, o.unattended)?;
    }
    // The baseline holds exactly the newest session only when paired without changes.
    let baseline = use_snapshot != SnapshotUse::No && snaps.pairing(vol.last()) == Pairing::Paired;
    if use_snapshot != SnapshotUse::No && !baseline {
        tracing::warn!("{name}: no paired snapshot; receiving from the archive");
    }
    let report = |data_chunks: u64, written: Option<u64>| ReadReport {
        volume: name.into(),
        session: session.name.to_string(),
        volsize: session.info.volsize,
        chunks: session.info.volsize.div_ceil(archive.chunksize()),
        data_chunks,
        chunks_written: written,
    };
    let r = if baseline && newest {
        let tmp = target.with_extension("wyng-partial");
        reflink::snapshot(&snaps.snap1, &tmp)?;
        let f = OpenOptions::new()
            .write(true)
            .open(&tmp)
            .map_err(|e| Error::local(&tmp, e.to_string()))?;
        apply_metadata(&f, &tmp, &session.info.permissions, session.info.localtime);
        fs::rename(&tmp, &target).map_err(|e| Error::local(&target, e.to_string()))?;
        tracing::info!("{name}: snapshot retrieved");
        report(0, Some(0))
    } else if baseline {
        // An older session, starting from the baseline (the newest session).
        let merged = archive.merged(vol, idx)?;
        let only = (use_snapshot == SnapshotUse::SnapshotDiff)
            .then(|| changed_after(archive, vol, idx))
            .transpose()?;
        let (fetched, written) = update_file(
            archive,
            vol,
            &merged,
            &snaps.snap1,
            &target,
            only.as_deref(),
            Mode::SparseWrite,
            session,
        )?;
        report(fetched, Some(written))
    } else if exists && o.mode != Mode::Full {
        let merged = archive.merged(vol, idx)?;
        let (fetched, written) = update_file(
            archive, vol, &merged, &target, &target, None, o.mode, session,
        )?;
        report(fetched, Some(written))
    } else {
        receive(
            archive,
            name,
            sel,
            &ReceiveOptions {
                save_to: target.clone(),
                unattended: true,
                mode: Mode::Full,
            },
        )?
    };
    if newest && !reflink::is_nocow(&target) {
        // Pair again: the restored file is the baseline of the newest session. Best effort:
        // the volume is restored either way; without pairing the next send is a full scan.
        snaps.unpair();
        let paired = reflink::snapshot(&target, &snaps.snap1).and_then(|()| {
            match (
                snaps.map_path(session),
                crate::source::deltamap::mtime_ns(&snaps.snap1),
            ) {
                (Some(map), Some(t)) => {
                    DeltaMap::blank(session.info.volsize, archive.chunksize()).save(&map, t)
                }
                _ => Ok(()),
            }
        });
        if let Err(e) = paired {
            tracing::warn!("{name}: restored, but not paired (the next send is a full scan): {e}");
            snaps.unpair();
        }
    }
    Ok(r)
}

/// Chunks that may differ between session `idx` and the newest one: every address a later
/// session recorded, and everything past the smallest later size (truncated and regrown).
fn changed_after(archive: &Archive, vol: &Volume, idx: usize) -> Result<Vec<bool>> {
    let cs = archive.chunksize();
    let n = vol.sessions[idx].info.volsize.div_ceil(cs) as usize;
    let mut only = vec![false; n];
    let mut min_size = u64::MAX;
    for later in idx + 1..vol.sessions.len() {
        min_size = min_size.min(vol.sessions[later].info.volsize);
        for (i, _) in archive.session_lines(vol, later)? {
            if let Some(b) = only.get_mut(i as usize) {
                *b = true;
            }
        }
    }
    for b in only.iter_mut().skip((min_size / cs) as usize) {
        *b = true;
    }
    Ok(only)
}

#[derive(Debug, serde::Serialize)]
pub struct DiffReport {
    pub volume: String,
    pub session: String,
    /// Byte offset of the first difference (at chunk granularity with `--quick`), if any.
    pub first_difference: Option<u64>,
}

/// What `diff --local` compares with the newest session (behaviour §7.3): the paired baseline
/// snapshot when there is one (it is what the next incremental send builds on), else the
/// volume itself.
pub fn diff_source(
    archive: &Archive,
    v: &crate::ops::VolumeRef,
    store: &crate::source::LocalStorage,
) -> Result<PathBuf> {
    use crate::source::deltamap::Pairing;
    let name = v.archive.as_str();
    let path = store.volume_path(&v.local)?;
    let vol = volume(archive, name)?;
    if let (crate::source::LocalStorage::Reflink(_), Some(cache)) = (store, &archive.cache_dir) {
        let snaps = crate::source::reflink::VolumeSnaps::new(
            &path,
            archive.uuid(),
            vol.vid.as_str(),
            Some(cache),
        );
        match snaps.pairing(vol.last()) {
            Pairing::Paired => {
                tracing::warn!(
                    "{name}: comparing the paired snapshot {}",
                    snaps.snap1.display()
                );
                return Ok(snaps.snap1);
            }
            Pairing::PairedWithChanges => {
                tracing::warn!("{name}: changed since the last send (monitor recorded changes); comparing the volume")
            }
            Pairing::Unpaired => tracing::warn!("{name}: not paired; comparing the volume"),
        }
    }
    Ok(path)
}

/// `diff`: compares a local volume with the archive's newest session. `quick` compares the
/// hash of each recompressed local chunk with the manifest (nothing is read from the archive);
/// otherwise every chunk is read, verified, and compared byte for byte.
pub fn diff(archive: &Archive, name: &str, local: &Path, quick: bool) -> Result<DiffReport> {
    let vol = volume(archive, name)?;
    let idx = SessionSel::Newest.select(vol)?;
    let merged = archive.merged(vol, idx)?;
    let src = crate::source::Source::open(local)?;
    let cs = archive.chunksize();
    let first = std::sync::atomic::AtomicU64::new(u64::MAX);
    let note = |off: u64| {
        first.fetch_min(off, Ordering::Relaxed);
    };
    if src.size != merged.volsize {
        note(src.size.min(merged.volsize));
    }
    let local_chunk = |off: u64, len: usize| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        src.read_at(&mut buf, off)?;
        Ok(buf)
    };
    if quick {
        let n = merged.entries.len().min(src.size.div_ceil(cs) as usize);
        crate::ops::parallel(n, |i| {
            let i = i as u64;
            let len = chunk_len(i, merged.volsize, cs) as usize;
            let local = local_chunk(i * cs, len.min((src.size - i * cs) as usize))?;
            let same = match merged.entries[i as usize].0 {
                ChunkRef::Zero => is_all_zero(&local),
                ChunkRef::Data(h) => {
                    local.len() == len && archive.codec.hash_chunk(&local).hash == h
                }
            };
            if !same {
                note(i * cs);
            }
            Ok(())
        })?;
    } else {
        read_session(archive, vol, &merged, None, "diff", |off, data| {
            if off >= src.size {
                return Ok(());
            }
            let len = chunk_len(off / cs, merged.volsize, cs) as usize;
            let local = local_chunk(off, len.min((src.size - off) as usize))?;
            let differs = match &data {
                None => !is_all_zero(&local),
                Some(d) => d[..local.len()] != local[..],
            };
            if differs {
                let at = match &data {
                    None => local.iter().position(|&b| b != 0),
                    Some(d) => d.iter().zip(&local).position(|(a, b)| a != b),
                };
                note(off + at.unwrap_or(0) as u64);
            }
            Ok(())
        })?;
    }
    let f = first.into_inner();
    Ok(DiffReport {
        volume: name.into(),
        session: vol.sessions[idx].name.to_string(),
        first_difference: (f != u64::MAX).then_some(f),
    })
}
