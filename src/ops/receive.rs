//! `receive`: rebuild a session of a volume into a file, a block device, or its place in local
//! storage (`--local`).
//!
//! Every chunk is read, size-bounded, checked against its manifest hash, decompressed and
//! length-checked (by the archive's chunk reader) before a byte of it reaches the target.
//! Workers take chunks of the session's merged view in any order and write by position; the
//! view is walked as data chunks and zero *ranges*, so a sparse multi-terabyte volume costs
//! what it holds. A restore into a regular file is built under a temporary name beside the
//! target and renamed into place only when complete: a failed receive leaves an existing file
//! untouched. All-zero chunks become holes.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::bounded;

use crate::archive::index::MergedIndex;
use crate::archive::Archive;
use crate::atomic_file::{self, Durability};
use crate::error::{Error, Result};
use crate::format::manifest::chunk_len;
use crate::format::Session;
use crate::ops::segments::{self, Seg};
use crate::ops::{is_all_zero, SessionSel};

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
    /// With `--skip-corrupt-chunks`: damaged chunks left as zeros in the target.
    #[serde(skip_serializing_if = "is_zero")]
    pub chunks_skipped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Asked before an existing target is overwritten: `Ok` to go ahead (the binary prompts, or
/// `-u` says yes).
pub(crate) type Confirm<'a> = &'a (dyn Fn(&Path) -> Result<()> + Sync);

pub struct ReceiveOptions<'a> {
    pub save_to: PathBuf,
    pub confirm: Confirm<'a>,
    pub mode: Mode,
    /// `--skip-corrupt-chunks` (a full receive to a path): a chunk that fails its checks is
    /// reported and left as zeros instead of failing the receive.
    pub skip_corrupt: bool,
    /// `--req-snapshot`: fail (before anything is written) unless the session can be served
    /// from the paired local snapshot; wyng-*metadata volumes are exempt (behaviour §7.3).
    pub require_snapshot: bool,
}

/// What a full receive does with a chunk that fails its checks: stop, or with
/// `--skip-corrupt-chunks` report it, count it and leave zeros (`zero` clears its range where
/// the target may hold old data).
fn on_chunk_error<'a>(
    skip: bool,
    skipped: &'a AtomicU64,
    zero: impl Fn(&crate::archive::ChunkLoc) -> Result<()> + Sync + 'a,
) -> impl Fn(&crate::archive::ChunkLoc, Error) -> Result<()> + Sync + 'a {
    move |loc, e| {
        if !(skip && e.is_damage()) {
            return Err(e);
        }
        tracing::warn!("skipping a damaged chunk (zeros in its place): {e}");
        skipped.fetch_add(1, Ordering::Relaxed);
        zero(loc)
    }
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

/// An existing target is only replaced with permission.
fn check_overwrite(target: &Path, confirm: Confirm) -> Result<()> {
    if fs::symlink_metadata(target).is_ok() {
        confirm(target)?;
    }
    Ok(())
}

/// The file or device a `--save-to` path names: symbolic links are followed to their end (a
/// libvirt pool's `vm.img -> /data/vm.img` restores into `/data/vm.img` and the link stays),
/// and a dangling link names the file to create. Returns that path and what is there now.
fn resolve_target(path: &Path) -> Result<(PathBuf, Option<fs::Metadata>)> {
    let mut at = path.to_path_buf();
    // As the kernel does: a chain of more than 40 links is a loop.
    for _ in 0..40 {
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = fs::read_link(&at).map_err(|e| Error::local_io(&at, "", e))?;
                at = match at.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            Ok(m) => return Ok((at, Some(m))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((at, None)),
            Err(e) => return Err(Error::local_io(&at, "", e)),
        }
    }
    Err(Error::local(
        path,
        "too many levels of symbolic links; give --save-to the file or device itself",
    ))
}

/// A restore writes into a regular file (built beside it, then renamed into place) or an
/// existing block device, nothing else: a character device (`/dev/null`), FIFO or socket is
/// never replaced by a file, and a directory is not a target.
fn check_target_type(target: &Path, m: &fs::Metadata) -> Result<()> {
    let ft = m.file_type();
    let what = if m.is_dir() {
        "is a directory"
    } else if ft.is_char_device() {
        "is a character device"
    } else if ft.is_fifo() {
        "is a FIFO"
    } else if ft.is_socket() {
        "is a socket"
    } else {
        return Ok(());
    };
    Err(Error::local(
        target,
        format!(
            "{what}; a restore writes only to a regular file or a block device. To stream the image, use --save-to=- (e.g. `wyng receive VOL --save-to=- | ssh host dd of=/dev/vg/vm1 bs=1M`)"
        ),
    ))
}

/// `receive --save-to=-`: the session as a stream of bytes in order (zeros included) into
/// `out`, every chunk checked before a byte of it is written. With `skip_corrupt`, a damaged
/// chunk is reported and streamed as zeros.
pub fn receive_to_writer(
    archive: &Archive,
    name: &str,
    sel: &SessionSel,
    out: &mut dyn std::io::Write,
    skip_corrupt: bool,
) -> Result<ReadReport> {
    let vi = archive.find_index(name)?;
    let vol = &archive.volumes()[vi];
    let si = sel.select(vol)?;
    let session = &vol.sessions[si];
    let ix = archive.merged(vi, si)?;
    let (cs, volsize) = (ix.chunksize(), ix.volsize());
    let progress = archive.progress(volsize, "receive");
    let mut skipped = 0u64;
    let zeros = vec![0u8; (1 << 20).max(cs as usize)];
    let stdout_err = |e: std::io::Error| Error::io("standard output", e);
    let write_zeros = |out: &mut dyn std::io::Write, mut len: u64| -> Result<()> {
        while len > 0 {
            let n = len.min(zeros.len() as u64) as usize;
            out.write_all(&zeros[..n]).map_err(stdout_err)?;
            len -= n as u64;
        }
        Ok(())
    };
    let jobs = segments::walk(&ix).map(|seg| {
        seg.map(|seg| match seg {
            Seg::Data(rec) => (seg, Some(ix.loc(&rec))),
            Seg::Zeros(..) => (seg, None),
        })
    });
    let stats = archive.chunks().run_ordered(jobs, |seg, read| {
        let len = match seg {
            Seg::Zeros(a, b) => (b * cs).min(volsize) - a * cs,
            Seg::Data(rec) => chunk_len(rec.idx, volsize, cs),
        };
        match read {
            Some((_, Ok(data))) => out.write_all(&data).map_err(stdout_err)?,
            Some((_, Err(e))) if skip_corrupt && e.is_damage() => {
                tracing::warn!("skipping a damaged chunk (zeros in its place): {e}");
                skipped += 1;
                write_zeros(out, len)?;
            }
            Some((_, Err(e))) => return Err(e),
            None => write_zeros(out, len)?,
        }
        progress.inc(len);
        Ok(())
    })?;
    out.flush().map_err(stdout_err)?;
    progress.finish();
    let mut r = report(name, session, &ix, stats.chunks, None);
    r.chunks_skipped = skipped;
    Ok(r)
}

fn report(
    name: &str,
    s: &Session,
    ix: &MergedIndex,
    data: u64,
    written: Option<u64>,
) -> ReadReport {
    ReadReport {
        volume: name.into(),
        session: s.name.to_string(),
        volsize: ix.volsize(),
        chunks: ix.chunks(),
        data_chunks: data,
        chunks_written: written,
        chunks_skipped: 0,
    }
}

/// `receive --save-to`: restore the selected session into a file or an existing block device.
pub fn receive(
    archive: &Archive,
    name: &str,
    sel: &SessionSel,
    o: &ReceiveOptions,
) -> Result<ReadReport> {
    let vi = archive.find_index(name)?;
    let vol = &archive.volumes()[vi];
    let si = sel.select(vol)?;
    let session = &vol.sessions[si];
    let ix = archive.merged(vi, si)?;
    let (target, existing) = resolve_target(&o.save_to)?;
    let target = &target;
    if let Some(m) = &existing {
        check_target_type(target, m)?;
        check_overwrite(target, o.confirm)?;
    }
    let block = existing
        .as_ref()
        .is_some_and(|m| m.file_type().is_block_device());
    if o.skip_corrupt && existing.is_some() && o.mode != Mode::Full {
        return Err(Error::SkipNeedsFullReceive);
    }
    if existing.is_some() && o.mode != Mode::Full {
        let (data, written) = if block {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(target)
                .map_err(|e| Error::local_io(target, "cannot open for writing", e))?;
            update_in_place(archive, &ix, &f, target, true, None, o.mode)?
        } else {
            update_file(archive, &ix, target, target, None, o.mode, session)?
        };
        return Ok(report(name, session, &ix, data, Some(written)));
    }
    let skipped = AtomicU64::new(0);
    let data = if block {
        receive_to_device(archive, &ix, target, o.skip_corrupt, &skipped)?
    } else {
        if target.starts_with("/dev") && existing.is_none() {
            return Err(Error::local(
                target,
                "no such device; to restore to a block device it must exist",
            ));
        }
        receive_to_file(archive, &ix, target, session, o.skip_corrupt, &skipped)?
    };
    let mut r = report(name, session, &ix, data, None);
    r.chunks_skipped = skipped.into_inner();
    if r.chunks_skipped > 0 {
        tracing::warn!(
            "{name}: {} damaged chunk(s) skipped; those ranges of {} are zeros",
            r.chunks_skipped,
            target.display()
        );
    }
    Ok(r)
}

fn receive_to_file(
    archive: &Archive,
    ix: &MergedIndex,
    target: &Path,
    s: &Session,
    skip: bool,
    skipped: &AtomicU64,
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
    let tmp = partial_name(target);
    let result = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::local_io(&tmp, "cannot create", e))?;
        f.set_len(ix.volsize())
            .map_err(|e| Error::local_io(&tmp, "", e))?;
        let progress = archive.progress(ix.data_bytes(), "receive");
        // One writer thread: concurrent writers to one file only contend for its inode lock.
        let (tx, rx) = bounded::<(u64, Vec<u8>)>(archive.tuning().workers() * 2);
        let cs = ix.chunksize();
        let data = std::thread::scope(|s| {
            let writer = s.spawn(|| -> Result<()> {
                for (off, d) in rx {
                    f.write_all_at(&d, off).map_err(|e| write_err(&tmp, e))?;
                    crate::atomic_file::start_writeback(&f, off, d.len() as u64);
                }
                Ok(())
            });
            let read = archive.chunks().run(
                ix.locs(),
                |loc, d| {
                    progress.inc(d.len() as u64);
                    // Data that is all zeros stays a hole too.
                    if is_all_zero(&d) {
                        return Ok(());
                    }
                    tx.send((loc.idx * cs, d))
                        .map_err(|_| Error::local(&tmp, "write failed"))
                },
                // A skipped chunk stays a hole: zeros.
                on_chunk_error(skip, skipped, |_| Ok(())),
            );
            drop(tx);
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(Error::local(&tmp, "writer thread failed")));
            written.and(read)
        })?;
        progress.finish();
        f.sync_all().map_err(|e| write_err(&tmp, e))?;
        apply_metadata(&f, &tmp, &s.info.permissions, s.info.localtime);
        // Synced above (a write error is reported as one, not as a failed rename).
        atomic_file::commit(&f, &tmp, target, Durability::FileAndDir)
            .map_err(|e| Error::local_io(target, "cannot rename into place", e))?;
        Ok(data.chunks)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The temporary name a restore is built under, beside its target. Earlier receives of the
/// same target that were killed left theirs behind; they are removed first.
fn partial_name(target: &Path) -> PathBuf {
    let fname = target
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    remove_stale_partials(target, &fname);
    target.with_file_name(format!(".{fname}.wyng-partial-{}", std::process::id()))
}

/// Removes `.<target>.wyng-partial-<pid>` files whose process is gone (a receive killed
/// before it could clean up; such a file can be as large as the volume). A live process's
/// file is left alone: it may be a receive running now.
fn remove_stale_partials(target: &Path, fname: &str) {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let prefix = format!(".{fname}.wyng-partial-");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let gone = pid != std::process::id() as i32
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                == Err(nix::errno::Errno::ESRCH);
        if gone {
            let p = e.path();
            match fs::remove_file(&p) {
                Ok(()) => tracing::info!(
                    "removed {}: left by an interrupted receive (process {pid})",
                    p.display()
                ),
                Err(err) => tracing::warn!("could not remove {}: {err}", p.display()),
            }
        }
    }
}

/// Writes zeros over `len` bytes at `off` of a device: asks the device to zero the range,
/// else writes zero blocks.
fn zero_device(f: &File, path: &Path, off: u64, len: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let zeroed = nix::fcntl::fallocate(
        f.as_raw_fd(),
        nix::fcntl::FallocateFlags::FALLOC_FL_ZERO_RANGE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off as i64,
        len as i64,
    );
    if zeroed.is_ok() {
        return Ok(());
    }
    let zeros = vec![0u8; (1 << 20).min(len) as usize];
    let mut at = off;
    while at < off + len {
        let n = (off + len - at).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], at)
            .map_err(|e| write_err(path, e))?;
        at += n as u64;
    }
    Ok(())
}

fn receive_to_device(
    archive: &Archive,
    ix: &MergedIndex,
    target: &Path,
    skip: bool,
    skipped: &AtomicU64,
) -> Result<u64> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(target)
        .map_err(|e| Error::local_io(target, "cannot open for writing", e))?;
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::local_io(target, "", e))?;
    if size < ix.volsize() {
        return Err(Error::local(
            target,
            format!(
                "device is {size} bytes, smaller than the volume's {} bytes",
                ix.volsize()
            ),
        ));
    }
    let cs = ix.chunksize();
    // Zero ranges first (the device may hold anything there), then the data.
    for seg in segments::walk(ix) {
        if let Seg::Zeros(a, b) = seg? {
            let end = (b * cs).min(ix.volsize());
            zero_device(&f, target, a * cs, end - a * cs)?;
        }
    }
    let progress = archive.progress(ix.data_bytes(), "receive");
    let stats = archive.chunks().run(
        ix.locs(),
        |loc, d| {
            progress.inc(d.len() as u64);
            f.write_all_at(&d, loc.idx * cs)
                .map_err(|e| write_err(target, e))
        },
        // The device may hold anything where a skipped chunk goes: zero it.
        on_chunk_error(skip, skipped, |loc| {
            zero_device(&f, target, loc.idx * cs, loc.len as u64)
        }),
    )?;
    progress.finish();
    f.sync_all().map_err(|e| write_err(target, e))?;
    Ok(stats.chunks)
}

/// Brings a copy of `base` up to the view `ix` and renames it over `target` (`base` may be the
/// target itself, or a snapshot). The copy is a reflink, so only changed blocks cost space and
/// a failure leaves the target as it was; where reflinks are impossible the target is updated
/// in place (an interrupted receive then leaves it partly updated, as the original does).
fn update_file(
    archive: &Archive,
    ix: &MergedIndex,
    base: &Path,
    target: &Path,
    only: Option<Box<dyn Iterator<Item = Result<u64>> + Send + '_>>,
    mode: Mode,
    session: &Session,
) -> Result<(u64, u64)> {
    let tmp = partial_name(target);
    let _ = fs::remove_file(&tmp);
    let (work, staged) = match reflink_copy::reflink(base, &tmp) {
        Ok(()) => (tmp.as_path(), true),
        Err(e) if base == target => {
            // Routine on filesystems without reflinks (ext4): said, not warned about.
            tracing::info!(
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
    let old_len = fs::metadata(work).map(|m| m.len()).ok();
    if !staged {
        check_room_in_place(ix, work)?;
    }
    let result = (|| {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(work)
            .map_err(|e| Error::local_io(work, "cannot open for writing", e))?;
        let counts = update_in_place(archive, ix, &f, work, false, only, mode).map_err(|e| {
            // Say exactly what state the target is left in. Only a local failure's text is
            // extended; others keep their kind (and exit code), with the state logged.
            let state = if staged {
                "the target is unchanged (the update was made on a reflink copy, now removed)"
                    .to_string()
            } else {
                let restored =
                    old_len.is_some_and(|n| n < ix.volsize() && f.set_len(n).is_ok());
                format!(
                    "the target was being updated in place (no reflink copy possible) and is now partly updated{}: run the receive again once the problem is fixed (only what still differs is written), or receive to a new file",
                    if restored { ", its size restored to what it was" } else { "" }
                )
            };
            match e {
                Error::Local { path, what } => Error::Local {
                    path,
                    what: format!("{what}; {state}"),
                },
                // The state goes after the error's own words: one message, the text of the
                // I/O error kept in it.
                Error::LocalIo { path, what, source } => Error::Local {
                    path,
                    what: match what.is_empty() {
                        true => format!("{source}; {state}"),
                        false => format!("{what}: {source}; {state}"),
                    },
                },
                e => {
                    tracing::warn!("{}: {state}", target.display());
                    e
                }
            }
        })?;
        apply_metadata(&f, work, &session.info.permissions, session.info.localtime);
        if staged {
            atomic_file::commit(&f, work, target, Durability::FileAndDir)
                .map_err(|e| Error::local_io(target, "cannot rename into place", e))?;
        } else {
            atomic_file::sync_parent(target);
        }
        Ok(counts)
    })();
    if result.is_err() && staged {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Before a file is updated in place: refuses (leaving it untouched) when its filesystem
/// certainly lacks the room, i.e. when the session's data exceeds what the file already has
/// allocated plus the free space. Passing does not promise success (a copy-on-write
/// filesystem needs room for rewritten blocks too); a failure later says what state the file
/// is in.
fn check_room_in_place(ix: &MergedIndex, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = fs::metadata(path) else {
        return Ok(());
    };
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return Ok(());
    };
    let free = st.blocks_available().saturating_mul(st.fragment_size());
    let allocated = md.blocks() * 512;
    let need = ix.data_bytes().saturating_sub(allocated);
    if need > free {
        return Err(Error::local(
            path,
            format!(
                "not enough free space to update it in place: up to {} more needed, {} free; the target is unchanged (free space, or receive to another filesystem)",
                crate::size::human(need),
                crate::size::human(free)
            ),
        ));
    }
    Ok(())
}

/// Makes an open file or device hold the view `ix`, touching only chunks whose content
/// differs: zero chunks that are not zero locally are punched (files) or zeroed (devices);
/// data chunks are fetched (all of them, or with [`Mode::Sparse`] only those whose local
/// content hashes differently) and written if they differ. `only` limits the work to some
/// chunks (the rest are known to be right). Returns (chunks fetched, chunks written).
///
/// Local comparisons run on one thread per core and feed the fetch pipeline as they go, so
/// nothing is held per chunk.
fn update_in_place(
    archive: &Archive,
    ix: &MergedIndex,
    f: &File,
    path: &Path,
    block: bool,
    only: Option<Box<dyn Iterator<Item = Result<u64>> + Send + '_>>,
    mode: Mode,
) -> Result<(u64, u64)> {
    let cs = ix.chunksize();
    let volsize = ix.volsize();
    if block {
        let size = (&*f)
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::local_io(path, "", e))?;
        if size < volsize {
            return Err(Error::local(
                path,
                format!("device is {size} bytes, smaller than the volume's {volsize} bytes"),
            ));
        }
    } else {
        f.set_len(volsize)
            .map_err(|e| Error::local_io(path, "", e))?;
    }
    let written = AtomicU64::new(0);
    let read_local = |off: u64, len: usize| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off)
            .map_err(|e| Error::local_io(path, format!("read error at offset {off}"), e))?;
        Ok(buf)
    };
    let zero_range = |off: u64, len: u64| -> Result<()> {
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
        zero_device(f, path, off, len)
    };
    let segs: Box<dyn Iterator<Item = Result<Seg>> + Send> = match only {
        Some(o) => Box::new(segments::select(ix, o)),
        None => Box::new(segments::walk(ix)),
    };
    // Each segment is compared on a worker; chunks to fetch go on to the reader.
    let progress = archive.progress(ix.data_bytes(), "receive");
    let stats = segments::compare(
        archive,
        segs,
        |seg, fetch| match seg {
            Seg::Zeros(a, b) => {
                for i in segments::local_data_chunks(f, block, a, b, cs) {
                    let len = chunk_len(i, volsize, cs) as usize;
                    if !is_all_zero(&read_local(i * cs, len)?) {
                        zero_range(i * cs, len as u64)?;
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            }
            Seg::Data(rec) => {
                let loc = ix.loc(&rec);
                let needed = mode != Mode::Sparse || {
                    let local = read_local(rec.idx * cs, loc.len as usize)?;
                    is_all_zero(&local) || archive.hash_chunk(&local).hash() != rec.hash
                };
                if needed {
                    fetch(loc)?;
                }
                Ok(())
            }
        },
        |loc, d| {
            progress.inc(d.len() as u64);
            if read_local(loc.idx * cs, d.len())? != d {
                f.write_all_at(&d, loc.idx * cs)
                    .map_err(|e| write_err(path, e))?;
                written.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        },
    );
    progress.finish();
    let fetched = stats?.chunks;
    f.sync_all().map_err(|e| write_err(path, e))?;
    Ok((fetched, written.into_inner()))
}

fn write_err(path: &Path, e: std::io::Error) -> Error {
    Error::local_io(path, "write failed", e)
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

/// The path `receive --local` restores a volume to.
pub(crate) fn local_target(
    store: &crate::source::reflink::ReflinkStore,
    v: &crate::ops::VolumeRef,
) -> Result<PathBuf> {
    store.volume_path(&v.local)
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
) -> Result<ReadReport> {
    use crate::source::deltamap::Pairing;
    use crate::source::reflink::{self, VolumeSnaps};
    let name = v.archive.as_str();
    let vi = archive.find_index(name)?;
    let vol = &archive.volumes()[vi];
    let si = sel.select(vol)?;
    let newest = si + 1 == vol.sessions.len();
    let session = &vol.sessions[si];
    let target = local_target(store, v)?;
    let snaps = VolumeSnaps::new(
        &target,
        archive.uuid(),
        vol.vid.as_str(),
        archive.local_dir(),
    );
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::local_io(parent, "", e))?;
    }
    let exists = fs::symlink_metadata(&target).is_ok();
    if exists {
        check_overwrite(&target, o.confirm)?;
    }
    // The baseline holds exactly the newest session only when paired without changes.
    let baseline = use_snapshot != SnapshotUse::No && snaps.pairing(vol.last()) == Pairing::Paired;
    if use_snapshot != SnapshotUse::No && !baseline {
        tracing::warn!("{name}: no paired snapshot; receiving from the archive");
    }
    let cs = archive.chunksize();
    let plain = |data: u64, written: Option<u64>| ReadReport {
        volume: name.into(),
        session: session.name.to_string(),
        volsize: session.info.volsize,
        chunks: session.info.volsize.div_ceil(cs),
        data_chunks: data,
        chunks_written: written,
        chunks_skipped: 0,
    };
    if o.require_snapshot && !(baseline && newest) && !crate::format::ids::is_metadata_volume(name)
    {
        return Err(Error::Selection(format!(
            "{name}: --req-snapshot: session {} cannot be served from a paired local snapshot (it needs --use-snapshot and the newest session, paired); nothing was received",
            session.name
        )));
    }
    let r = if baseline && newest {
        copy_baseline(&snaps.snap1, &target, session)?;
        tracing::info!("{name}: snapshot retrieved");
        plain(0, Some(0))
    } else if baseline {
        // An older session, starting from the baseline (the newest session).
        let ix = archive.merged(vi, si)?;
        let only = match use_snapshot == SnapshotUse::SnapshotDiff {
            true => Some(changed_after(archive, vi, si)?),
            false => None,
        };
        let (fetched, written) = update_file(
            archive,
            &ix,
            &snaps.snap1,
            &target,
            only,
            Mode::SparseWrite,
            session,
        )?;
        report(name, session, &ix, fetched, Some(written))
    } else if exists && o.mode != Mode::Full {
        let ix = archive.merged(vi, si)?;
        let (fetched, written) =
            update_file(archive, &ix, &target, &target, None, o.mode, session)?;
        report(name, session, &ix, fetched, Some(written))
    } else {
        receive(
            archive,
            name,
            sel,
            &ReceiveOptions {
                save_to: target.clone(),
                confirm: &|_| Ok(()),
                mode: Mode::Full,
                skip_corrupt: o.skip_corrupt,
                require_snapshot: false,
            },
        )?
    };
    if newest && !reflink::is_nocow(&target) {
        pair_again(&snaps, &target, session, cs, name);
    }
    Ok(r)
}

/// `receive --use-snapshot` of the newest session: the paired baseline `snap1` (which holds
/// exactly it) copied (a reflink) into `target`, with the session's metadata.
fn copy_baseline(snap1: &Path, target: &Path, session: &crate::format::Session) -> Result<()> {
    let tmp = partial_name(target);
    let _ = fs::remove_file(&tmp);
    crate::source::reflink::snapshot(snap1, &tmp)?;
    let f = OpenOptions::new()
        .write(true)
        .open(&tmp)
        .map_err(|e| Error::local_io(&tmp, "", e))?;
    apply_metadata(&f, &tmp, &session.info.permissions, session.info.localtime);
    // The snapshot's copy is as durable as the snapshot itself.
    atomic_file::commit(&f, &tmp, target, Durability::None)
        .map_err(|e| Error::local_io(target, "", e))
}

/// Pairs `target`, just restored to the newest session, again: it becomes the baseline.
/// Best effort: the volume is restored either way; without pairing the next send is a full
/// scan.
fn pair_again(
    snaps: &crate::source::reflink::VolumeSnaps,
    target: &Path,
    session: &crate::format::Session,
    cs: u64,
    name: &str,
) {
    use crate::source::deltamap::{self, DeltaMap};
    use crate::source::Snapshots;
    snaps.unpair();
    let paired = crate::source::reflink::snapshot(target, &snaps.snap1).and_then(|()| {
        match (snaps.map_path(session), deltamap::mtime_ns(&snaps.snap1)) {
            (Some(map), Some(t)) => DeltaMap::blank(session.info.volsize, cs).save(&map, t),
            _ => Ok(()),
        }
    });
    if let Err(e) = paired {
        tracing::warn!("{name}: restored, but not paired (the next send is a full scan): {e}");
        snaps.unpair();
    }
}

/// Chunks that may differ between session `si` and the newest one, ascending: every address a
/// later session recorded, and everything past the smallest later size (truncated and
/// regrown). A streamed merge of the later sessions' lines.
fn changed_after(
    archive: &Archive,
    vi: usize,
    si: usize,
) -> Result<Box<dyn Iterator<Item = Result<u64>> + Send + '_>> {
    use crate::format::manifest::Merge;
    let vol = &archive.volumes()[vi];
    let cs = archive.chunksize();
    let n = vol.sessions[si].info.volsize.div_ceil(cs);
    let later = si + 1..vol.sessions.len();
    let min_size = later
        .clone()
        .map(|l| vol.sessions[l].info.volsize)
        .min()
        .unwrap_or(u64::MAX);
    let layers = later
        .map(|l| archive.session_lines(vi, l))
        .collect::<Result<Vec<_>>>()?;
    let tail_from = (min_size / cs).min(n);
    let recorded = Merge::new(layers)?
        .map(|e| e.map(|(i, _, _)| i))
        .take_while(move |i| i.as_ref().map_or(true, |&i| i < tail_from));
    Ok(Box::new(recorded.chain((tail_from..n).map(Ok))))
}
