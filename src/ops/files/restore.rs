//! `files get`: files and directories of a session restored into a directory.
//!
//! Invariants (whatever names and links the image holds):
//! * **Only inside `--to`.** Every file is created relative to a directory descriptor opened
//!   from `--to` downwards with `O_NOFOLLOW`; a name is one safe component ([`GuestPath`]
//!   refuses `/`, `..`, NUL; names with control characters are skipped too), so nothing is
//!   created outside it, and no symlink is ever followed, not even one this restore created.
//! * **Never over what exists**, unless `overwrite`: then an existing file or link (never a
//!   directory) is removed first and a new file created in its place (`O_EXCL`), so a write
//!   never goes through an existing link.
//! * Symlinks are recreated as links; device nodes, FIFOs and sockets are skipped (and
//!   reported); modes lose their set-id and sticky bits; owners are not restored.
//! * A file's all-zero blocks stay holes (4 KiB granularity); a file that fails part-way is
//!   removed, and reported with why.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstatat, futimens, mkdirat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};

use super::{sorted, user_path, Held, OpenSession, Problem};
use crate::error::{Error, Result};
use crate::guest::{self, name::has_control, GuestFs, GuestPath, Kind, Stat, Target};
use crate::ops::is_all_zero;
use crate::progress::Progress;

pub struct GetOptions {
    pub to: PathBuf,
    /// Replace existing files and links (never directories; never through a link).
    pub overwrite: bool,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct GetReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Entries not restored on purpose (special files, unsafe names), with why.
    pub skipped: Vec<(String, String)>,
    /// Entries that failed (damage, or something in the way), with why.
    #[serde(skip)]
    pub failed: Vec<Problem>,
}

const BLOCK: usize = 4096;

/// An I/O failure on the restore target, keeping the error (a `nix` errno is one too).
fn local(path: &str, e: impl Into<std::io::Error>) -> Error {
    Error::local_io(path, "", e.into())
}

fn open_dir_at(dir: Option<&OwnedFd>, name: &std::path::Path) -> nix::Result<OwnedFd> {
    let fd = openat(
        dir.map(|d| d.as_raw_fd()),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: `openat` just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn times(st: &Stat) -> TimeSpec {
    TimeSpec::new(st.mtime.0, st.mtime.1.min(999_999_999) as _)
}

struct Restorer<'a> {
    fs: &'a dyn GuestFs,
    prefix: String,
    o: &'a GetOptions,
    report: &'a mut GetReport,
    progress: &'a Progress,
    held: Held,
    buf: Vec<u8>,
}

/// `files get`: restores each of `paths` of session `s` into `o.to` (created if missing).
pub fn get(s: &OpenSession, paths: &[Vec<u8>], o: &GetOptions) -> Result<GetReport> {
    std::fs::create_dir_all(&o.to).map_err(|e| local(&o.to.display().to_string(), e))?;
    let top = openat(
        None,
        &o.to,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| local(&o.to.display().to_string(), e))?;
    // SAFETY: `openat` just returned this descriptor; nothing else owns it.
    let top = unsafe { OwnedFd::from_raw_fd(top) };
    let mut report = GetReport::default();
    let progress = s.progress.bytes(0, "restoring");
    for p in paths {
        match s.image.resolve(p)? {
            Target::Partitions => {
                for (i, part) in s.image.layout().parts().iter().enumerate() {
                    if !matches!(part.content, guest::probe::Content::Fs(_)) {
                        report
                            .skipped
                            .push((format!("/{}", part.label()), part.content.unreadable()));
                        continue;
                    }
                    let name = part.label();
                    restore_fs(
                        s,
                        Some(i),
                        &GuestPath::root(),
                        Some(name.as_bytes()),
                        &top,
                        o,
                        &mut report,
                        &progress,
                    )?;
                }
            }
            Target::InFs { part, path } => {
                // The root of a filesystem goes into a directory named after its partition,
                // or (no table) straight into the target.
                let label = part.map(|i| s.image.layout().parts()[i].label());
                let name = match path.name() {
                    Some(n) => Some(n.to_vec()),
                    None => label.map(String::into_bytes),
                };
                restore_fs(
                    s,
                    part,
                    &path,
                    name.as_deref(),
                    &top,
                    o,
                    &mut report,
                    &progress,
                )?;
            }
        }
    }
    progress.finish();
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn restore_fs(
    s: &OpenSession,
    part: Option<usize>,
    path: &GuestPath,
    name: Option<&[u8]>,
    top: &OwnedFd,
    o: &GetOptions,
    report: &mut GetReport,
    progress: &Progress,
) -> Result<()> {
    let fs = s.image.filesystem(part)?;
    let st = fs.stat(path)?;
    let mut r = Restorer {
        fs: fs.as_ref(),
        prefix: s.image.prefix(part),
        o,
        report,
        progress,
        held: Held::default(),
        buf: vec![0u8; 1 << 20],
    };
    match name {
        Some(n) => r.entry(top, path, n, &st),
        None => r.children(top, path),
    }
}

impl Restorer<'_> {
    fn shown(&self, p: &GuestPath) -> String {
        guest::escape(&user_path(&self.prefix, p))
    }

    fn fail(&mut self, p: &GuestPath, error: Error) {
        self.report.failed.push(Problem {
            path: self.shown(p),
            error,
        });
    }

    /// Restores the entry `p` (stat `st`) as `name` in `dir`.
    fn entry(&mut self, dir: &OwnedFd, p: &GuestPath, name: &[u8], st: &Stat) -> Result<()> {
        if let Some(why) = guest::name::unsafe_name(name) {
            self.report.skipped.push((self.shown(p), why.to_string()));
            return Ok(());
        }
        if has_control(name) {
            self.report
                .skipped
                .push((self.shown(p), "a name holding control characters".into()));
            return Ok(());
        }
        let cname = std::path::Path::new(std::ffi::OsStr::from_bytes(name));
        let r = match st.kind {
            Kind::Dir => self.dir(dir, p, cname, st),
            Kind::File => self.file(dir, p, cname, st),
            Kind::Symlink => self.symlink(dir, p, cname, st),
            k => {
                let what = match k {
                    Kind::CharDev | Kind::BlockDev => "a device node",
                    Kind::Fifo => "a FIFO",
                    _ => "a socket",
                };
                self.report
                    .skipped
                    .push((self.shown(p), format!("{what} (not restored)")));
                Ok(())
            }
        };
        if let Err(e) = r {
            self.fail(p, e);
        }
        Ok(())
    }

    fn children(&mut self, dir: &OwnedFd, p: &GuestPath) -> Result<()> {
        let held = self.held.clone();
        let listing = match sorted(self.fs, p, &held) {
            Ok(l) => l,
            Err(e) => {
                self.fail(p, e);
                return Ok(());
            }
        };
        for e in &listing.entries {
            let child = match p.join(&e.name) {
                Ok(c) => c,
                Err(why) => {
                    let shown = format!(
                        "{}/{}",
                        self.shown(p).trim_end_matches('/'),
                        guest::escape(&e.name)
                    );
                    self.report.skipped.push((shown, why.to_string()));
                    continue;
                }
            };
            match &e.stat {
                Ok(st) => self.entry(dir, &child, &e.name, st)?,
                Err(err) => {
                    let err = Error::Guest {
                        path: self.shown(&child),
                        what: err.to_string(),
                    };
                    self.fail(&child, err)
                }
            }
        }
        Ok(())
    }

    /// Removes what is at `name` in `dir` (never a directory), for `overwrite`.
    fn clear(&self, dir: &OwnedFd, name: &std::path::Path, shown: &str) -> Result<()> {
        let shown = shown.to_string();
        match fstatat(
            Some(dir.as_raw_fd()),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(local(&shown, e)),
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
                Err(Error::local(
                    &shown,
                    "a directory is in the way (not replaced)",
                ))
            }
            Ok(_) if !self.o.overwrite => Err(Error::local(
                shown,
                "exists (--overwrite replaces files and links, never directories)",
            )),
            Ok(_) => unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| local(&shown, e)),
        }
    }

    fn dir(
        &mut self,
        dir: &OwnedFd,
        p: &GuestPath,
        name: &std::path::Path,
        st: &Stat,
    ) -> Result<()> {
        let shown = self.shown(p);
        let created = match mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => true,
            Err(nix::errno::Errno::EEXIST) => false,
            Err(e) => return Err(local(&shown, e)),
        };
        // An existing directory is merged into; a link or file there is refused (O_NOFOLLOW).
        let sub = open_dir_at(Some(dir), name).map_err(|e| {
            if e == nix::errno::Errno::ELOOP || e == nix::errno::Errno::ENOTDIR {
                Error::local(
                    &shown,
                    "something that is not a directory is in the way (not replaced)",
                )
            } else {
                local(&shown, e)
            }
        })?;
        self.report.dirs += 1;
        self.children(&sub, p)?;
        if created || self.o.overwrite {
            nix::sys::stat::fchmod(sub.as_raw_fd(), Mode::from_bits_truncate(st.perm & 0o777))
                .map_err(|e| local(&shown, e))?;
            futimens(sub.as_raw_fd(), &times(st), &times(st)).map_err(|e| local(&shown, e))?;
        }
        Ok(())
    }

    fn file(
        &mut self,
        dir: &OwnedFd,
        p: &GuestPath,
        name: &std::path::Path,
        st: &Stat,
    ) -> Result<()> {
        let shown = self.shown(p);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let create = || {
            openat(
                Some(dir.as_raw_fd()),
                name,
                flags,
                Mode::from_bits_truncate(0o600),
            )
        };
        let fd = match create() {
            Err(nix::errno::Errno::EEXIST) => {
                self.clear(dir, name, &shown)?;
                create()
            }
            r => r,
        }
        .map_err(|e| local(&shown, e))?;
        // SAFETY: `openat` just returned this descriptor; nothing else owns it.
        let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        match self.content(&f, p, st) {
            Ok(()) => {}
            Err(e) => {
                drop(f);
                let _ = unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir);
                return Err(e);
            }
        }
        nix::sys::stat::fchmod(f.as_raw_fd(), Mode::from_bits_truncate(st.perm & 0o777))
            .map_err(|e| local(&shown, e))?;
        futimens(f.as_fd().as_raw_fd(), &times(st), &times(st)).map_err(|e| local(&shown, e))?;
        self.report.files += 1;
        Ok(())
    }

    /// Copies a file's bytes, leaving its all-zero blocks as holes.
    fn content(&mut self, f: &File, p: &GuestPath, st: &Stat) -> Result<()> {
        let shown = self.shown(p);
        let mut off = 0u64;
        while off < st.size {
            let n = self.fs.read_at(p, off, &mut self.buf)?;
            if n == 0 {
                return Err(Error::Guest {
                    path: shown,
                    what: format!("ends at {off} bytes, before its size ({})", st.size),
                });
            }
            let data = &self.buf[..n];
            let mut i = 0;
            while i < n {
                let end = (i + BLOCK).min(n);
                if is_all_zero(&data[i..end]) {
                    i = end;
                    continue;
                }
                // A run of blocks holding data, written at once.
                let mut j = end;
                while j < n && !is_all_zero(&data[j..(j + BLOCK).min(n)]) {
                    j = (j + BLOCK).min(n);
                }
                f.write_all_at(&data[i..j], off + i as u64)
                    .map_err(|e| local(&shown, e))?;
                i = j;
            }
            off += n as u64;
            self.report.bytes += n as u64;
            self.progress.inc(n as u64);
        }
        f.set_len(st.size).map_err(|e| local(&shown, e))
    }

    fn symlink(
        &mut self,
        dir: &OwnedFd,
        p: &GuestPath,
        name: &std::path::Path,
        st: &Stat,
    ) -> Result<()> {
        let shown = self.shown(p);
        let target = self.fs.read_link(p)?;
        let Ok(target) = CString::new(target) else {
            self.report
                .skipped
                .push((shown, "a symlink whose target holds a NUL byte".into()));
            return Ok(());
        };
        let make = || symlinkat(target.as_c_str(), Some(dir.as_raw_fd()), name);
        match make() {
            Err(nix::errno::Errno::EEXIST) => {
                self.clear(dir, name, &shown)?;
                make()
            }
            r => r,
        }
        .map_err(|e| local(&shown, e))?;
        utimensat(
            Some(dir.as_raw_fd()),
            name,
            &times(st),
            &times(st),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| local(&shown, e))?;
        self.report.symlinks += 1;
        Ok(())
    }
}

use std::os::unix::ffi::OsStrExt;
