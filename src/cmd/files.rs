//! `wyng files ls|get|cat|find|diff`: files inside a volume's sessions, read in userspace.
//! Every name from an image is printed escaped (no control characters reach the terminal).

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use wyng::guest::{escape, Kind};
use wyng::ops::files::{
    self, Change, DiffOptions, EntryInfo, Files, GetOptions, Listed, LsOptions, Pattern, Problem,
    Since,
};
use wyng::ops::SessionSel;
use wyng::{Error, Result};

use super::Global;

pub const HELP: &str = "Browse, find and restore single files inside a volume's sessions, without root, without a\n\
loop device and without the kernel parsing the guest's filesystem: partition tables (MBR, GPT),\n\
ext2/3/4, FAT and NTFS are read by wyng itself, from verified chunks.\n\n\
Examples:\n  wyng files ls vm1.img --dest=file:/mnt/usb/laptop.backup             # partitions: p1, p2, ...\n  wyng files ls vm1.img /p1/etc -l --session=20261123-101500 --dest=...\n  wyng files cat vm1.img /p1/etc/fstab --dest=... | less\n  wyng files get vm1.img /p1/home/alice/thesis --to=./restored --dest=...\n  wyng files find vm1.img 'etc/passwd' --dest=...                        # every session holding it\n  wyng files find vm1.img '*.odt' --session=20261101-000000,20261123-235959 --dest=...\n  wyng files diff vm1.img --session=20261122-101500,20261123-101500 /p1/etc --dest=...\n\n\
A volume without a partition table is one filesystem: its paths start at / directly. XFS,\n\
Btrfs, LUKS, LVM and swap are named, not read: use `wyng mount` and a VM (docs/mount.md).\n\
See docs/files.md.";

#[derive(Args, Debug)]
pub struct FilesArgs {
    #[command(subcommand)]
    pub cmd: FilesCmd,
}

#[derive(Args, Debug)]
pub struct Common {
    /// Volume
    pub volume: String,
    /// Memory for decoded chunks (shared by every session the command reads)
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = size)]
    pub cache: u64,
}

fn size(s: &str) -> Result<u64, String> {
    wyng::size::parse(s).map_err(|e| e.to_string())
}

#[derive(Subcommand, Debug)]
pub enum FilesCmd {
    /// List a directory of a session (/: the partitions, with a partition table)
    #[command(
        after_help = "Examples:\n  wyng files ls vm1.img\n  wyng files ls vm1.img /p1/etc -l\n  wyng files ls vm1.img /p2 -R --json"
    )]
    Ls(LsArgs),
    /// Restore files and directories of a session into a directory
    #[command(
        after_help = "Examples:\n  wyng files get vm1.img /p1/etc/fstab /p1/home/alice --to=./restored\n  wyng files get vm1.img / --to=./all --session=^weekly\n\nModes, mtimes and symlinks (as links) are restored; owners, device nodes, FIFOs, sockets\nand set-id bits are not. Nothing is written outside --to whatever names the image holds;\nexisting files are kept unless --overwrite (which never replaces a directory and never\nwrites through a link). Sparse files stay sparse."
    )]
    Get(GetArgs),
    /// Write one file of a session to standard output
    #[command(
        after_help = "Example:\n  wyng files cat vm1.img /p1/etc/fstab --session=20261123-101500"
    )]
    Cat(CatArgs),
    /// Every session in which a path matching a pattern exists
    #[command(
        after_help = "Examples:\n  wyng files find vm1.img passwd                 # by name, in every session\n  wyng files find vm1.img '/p1/etc/*.conf'      # a glob on the full path\n  wyng files find vm1.img 'alice/**/*.odt' --session=20261101-000000,20261130-000000\n\nEach match shows whether its content (or type, or link target) differs from the previous\nsession's match: new, changed or same (+metadata: mode, owner or mtime differ)."
    )]
    Find(FindArgs),
    /// Added, removed and changed files between two sessions
    #[command(
        after_help = "Examples:\n  wyng files diff vm1.img --session=20261122-101500,20261123-101500\n  wyng files diff vm1.img /p1/etc --session=^monday,^tuesday --checksum\n\n+ added, - removed, M changed (with what: type, size, content, target, mode, owner, mtime).\nWithout --checksum a file counts as changed when its type, size, mode, owner or mtime\ndiffers (as virt-diff); --checksum also compares the content of files of the same size."
    )]
    Diff(DiffArgs),
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Path in the session (default /)
    pub path: Option<String>,
    /// Session: date-time YYYYMMDD-HHMMSS or ^TAG (default: the newest)
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
    /// Long listing: type and mode, owner, size, mtime, symlink targets
    #[arg(short = 'l')]
    pub long: bool,
    /// Recursive: every entry below, as full paths
    #[arg(short = 'R')]
    pub recursive: bool,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    pub common: Common,
    /// Paths in the session (files or directories)
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// Directory to restore into (created if missing)
    #[arg(long, value_name = "DIR", required = true)]
    pub to: PathBuf,
    /// Session: date-time YYYYMMDD-HHMMSS or ^TAG (default: the newest)
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
    /// Replace existing files and links in DIR (never directories; never through a link)
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    #[command(flatten)]
    pub common: Common,
    /// Path of a file in the session
    pub path: String,
    /// Session: date-time YYYYMMDD-HHMMSS or ^TAG (default: the newest)
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
}

#[derive(Args, Debug)]
pub struct FindArgs {
    #[command(flatten)]
    pub common: Common,
    /// A glob: on the name, or on the full path when it holds a '/' (* within a directory,
    /// ** across them)
    pub pattern: String,
    /// Only sessions from FROM to TO (each a date-time or ^TAG; either may be left empty)
    #[arg(long, value_name = "FROM,TO")]
    pub session: Option<String>,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    pub common: Common,
    /// Only under this path
    pub path: Option<String>,
    /// The two sessions, older first: A,B (each a date-time or ^TAG)
    #[arg(long, value_name = "A,B", required = true)]
    pub session: String,
    /// Compare the content of regular files of the same size too
    #[arg(long)]
    pub checksum: bool,
}

fn sel(s: Option<&str>) -> Result<SessionSel> {
    SessionSel::parse(s, true, super::now())
}

/// `A,B` as two selections (an empty side: `None`).
fn pair(s: &str) -> Result<(Option<SessionSel>, Option<SessionSel>)> {
    let Some((a, b)) = s.split_once(',') else {
        return Err(Error::Usage(format!(
            "--session={s}: give two sessions, FROM,TO (e.g. 20261101-000000,20261123-101500)"
        )));
    };
    let side = |x: &str| (!x.is_empty()).then(|| sel(Some(x))).transpose();
    Ok((side(a)?, side(b)?))
}

/// Standard output, where a closed pipe (`| head`) just ends the output.
struct Out(std::io::BufWriter<std::io::StdoutLock<'static>>);

impl Out {
    fn new() -> Out {
        Out(std::io::BufWriter::new(std::io::stdout().lock()))
    }

    fn line(&mut self, s: &str) -> Result<()> {
        writeln!(self.0, "{s}").map_err(|e| Error::io("standard output", e))
    }

    fn finish(mut self) -> Result<()> {
        self.0.flush().map_err(|e| Error::io("standard output", e))
    }
}

/// Ends quietly when the reader of our output went away.
fn closed_pipe(r: Result<()>) -> Result<()> {
    match r {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// A JSON array written one element at a time (bounded memory for large trees).
struct JsonArray {
    out: Out,
    first: bool,
}

impl JsonArray {
    fn new() -> JsonArray {
        super::mark_json_written();
        JsonArray {
            out: Out::new(),
            first: true,
        }
    }

    fn push(&mut self, v: serde_json::Value) -> Result<()> {
        let sep = if self.first { "[\n  " } else { ",\n  " };
        self.first = false;
        write!(self.out.0, "{sep}{v}").map_err(|e| Error::io("standard output", e))
    }

    fn finish(mut self) -> Result<()> {
        let end = if self.first { "[]\n" } else { "\n]\n" };
        write!(self.out.0, "{end}").map_err(|e| Error::io("standard output", e))?;
        self.out.finish()
    }
}

/// `-rwxr-xr-x` for a kind and permission bits.
fn mode_string(kind: Kind, perm: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(kind.letter());
    for (shift, special, set, unset) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (perm >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, perm & special != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| secs.to_string())
}

fn entry_json(e: &EntryInfo) -> serde_json::Value {
    let mut v = serde_json::to_value(e).expect("plain data");
    v["path"] = escape(&e.path).into();
    v["mode"] = format!("{:04o}", e.mode).into();
    if let Some(t) = &e.target {
        v["target"] = escape(t).into();
    }
    v
}

fn long_line(e: &EntryInfo, name: &str) -> String {
    let mut s = format!(
        "{} {:>6} {:>6} {:>12} {} {}",
        mode_string(e.kind, e.mode),
        e.uid,
        e.gid,
        e.size,
        time(e.mtime),
        name
    );
    if let Some(t) = &e.target {
        s.push_str(" -> ");
        s.push_str(&escape(t));
    }
    s
}

/// `PATH: why`, without saying the path twice when the error names it already.
fn problem_line(p: &Problem) -> String {
    let e = wyng::archive::printable(&p.error.to_string());
    if e.starts_with(&p.path) {
        e
    } else {
        format!("{}: {e}", p.path)
    }
}

/// Reports each path that could not be read (stderr) and fails if there was one.
fn problems(what: &str, p: Vec<Problem>) -> Result<()> {
    if p.is_empty() {
        return Ok(());
    }
    let damage = p.iter().any(|x| x.error.exit_code() == 1);
    for x in &p {
        eprintln!("wyng: {}", problem_line(x));
    }
    let text = format!(
        "{what}: {} could not be read (listed above)",
        super::count(p.len() as u64, "path", "paths")
    );
    Err(if damage {
        Error::Guest {
            path: "files".into(),
            what: text,
        }
    } else {
        Error::Selection(text)
    })
}

pub fn run(g: &Global, a: FilesArgs) -> Result<()> {
    match a.cmd {
        FilesCmd::Ls(a) => ls(g, a),
        FilesCmd::Get(a) => get(g, a),
        FilesCmd::Cat(a) => cat(g, a),
        FilesCmd::Find(a) => find(g, a),
        FilesCmd::Diff(a) => diff(g, a),
    }
}

fn open(g: &Global, c: &Common) -> Result<Files> {
    std::fs::create_dir_all(g.meta_dir()).map_err(|e| Error::local_io(g.meta_dir(), "", e))?;
    Ok(Files::new(g.read()?, c.cache))
}

fn ls(g: &Global, a: LsArgs) -> Result<()> {
    let f = open(g, &a.common)?;
    let si = f.select(&a.common.volume, &sel(a.session.as_deref())?)?;
    let s = f.open(&a.common.volume, si)?;
    let path = a.path.unwrap_or_else(|| "/".into());
    let o = LsOptions {
        long: a.long,
        recursive: a.recursive,
    };
    if g.json {
        let mut arr = JsonArray::new();
        let p = files::ls(&s, path.as_bytes(), &o, &mut |l| {
            arr.push(match &l {
                Listed::Part(p) => serde_json::to_value(p).expect("plain data"),
                Listed::Entry(e) => entry_json(e),
            })
        });
        closed_pipe(arr.finish())?;
        return problems("files ls", closed_pipe_p(p)?);
    }
    let mut out = Out::new();
    let p = files::ls(&s, path.as_bytes(), &o, &mut |l| match l {
        Listed::Part(p) => out.line(&format!(
            "{:<4} {:>10}  {:<10} {}{}",
            p.name,
            wyng::size::human(p.size),
            p.filesystem,
            p.type_name,
            if p.label.is_empty() {
                String::new()
            } else {
                format!(" \"{}\"", escape(p.label.as_bytes()))
            }
        )),
        Listed::Entry(e) => {
            let name = if o.recursive {
                escape(&e.path)
            } else {
                escape(e.path.rsplit(|&b| b == b'/').next().unwrap_or(&e.path))
            };
            if o.long {
                out.line(&long_line(&e, &name))
            } else {
                out.line(&name)
            }
        }
    });
    closed_pipe(out.finish())?;
    problems("files ls", closed_pipe_p(p)?)
}

/// A listing cut short by a closed pipe is no error.
fn closed_pipe_p(r: Result<Vec<Problem>>) -> Result<Vec<Problem>> {
    match r {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(Vec::new())
        }
        r => r,
    }
}

fn cat(g: &Global, a: CatArgs) -> Result<()> {
    let f = open(g, &a.common)?;
    let si = f.select(&a.common.volume, &sel(a.session.as_deref())?)?;
    let s = f.open(&a.common.volume, si)?;
    let mut out = std::io::stdout().lock();
    match files::cat(&s, a.path.as_bytes(), &mut out) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map(|_| ()),
    }
}

fn get(g: &Global, a: GetArgs) -> Result<()> {
    let f = open(g, &a.common)?;
    let si = f.select(&a.common.volume, &sel(a.session.as_deref())?)?;
    let s = f.open(&a.common.volume, si)?;
    let paths: Vec<Vec<u8>> = a.paths.iter().map(|p| p.as_bytes().to_vec()).collect();
    let r = files::get(
        &s,
        &paths,
        &GetOptions {
            to: a.to.clone(),
            overwrite: a.overwrite,
        },
    )?;
    for (p, why) in &r.skipped {
        eprintln!("wyng: skipped {p}: {why}");
    }
    if g.json {
        g.json(&serde_json::json!({
            "volume": a.common.volume,
            "session": s.session.to_string(),
            "to": a.to,
            "files": r.files,
            "dirs": r.dirs,
            "symlinks": r.symlinks,
            "bytes": r.bytes,
            "skipped": r.skipped.iter().map(|(p, w)| serde_json::json!({"path": p, "why": w})).collect::<Vec<_>>(),
            "failed": r.failed.iter().map(|p| serde_json::json!({"path": p.path, "error": p.error.to_string()})).collect::<Vec<_>>(),
        }))?;
    } else {
        g.say(format!(
            "Restored {}, {}, {}, {} from {} of {} into {}{}.",
            super::count(r.files as u64, "file", "files"),
            super::count(r.dirs as u64, "directory", "directories"),
            super::count(r.symlinks as u64, "symlink", "symlinks"),
            wyng::size::human(r.bytes),
            super::date(s.session.as_str()),
            a.common.volume,
            a.to.display(),
            if r.skipped.is_empty() {
                String::new()
            } else {
                format!("; skipped {} (listed above)", r.skipped.len())
            }
        ));
    }
    if r.failed.is_empty() {
        return Ok(());
    }
    let local = r
        .failed
        .iter()
        .all(|p| matches!(p.error, Error::Local { .. }));
    for p in &r.failed {
        eprintln!("wyng: {}", problem_line(p));
    }
    let what = format!(
        "{} not restored (listed above)",
        super::count(r.failed.len() as u64, "path was", "paths were")
    );
    Err(if local {
        Error::local(&a.to, what)
    } else {
        Error::Guest {
            path: "files get".into(),
            what,
        }
    })
}

fn since(f: &files::Found) -> String {
    let s = match f.since {
        Since::New => "new",
        Since::Changed => "changed",
        Since::Same => "same",
    };
    if f.metadata_changed {
        format!("{s}+metadata")
    } else {
        s.to_string()
    }
}

fn find(g: &Global, a: FindArgs) -> Result<()> {
    let pattern = Pattern::new(&a.pattern)?;
    let f = open(g, &a.common)?;
    let (from, to) = match a.session.as_deref() {
        Some(s) if s.contains(',') => pair(s)?,
        Some(s) => {
            let one = sel(Some(s))?;
            (Some(one.clone()), Some(one))
        }
        None => (None, None),
    };
    let sessions = f.range(&a.common.volume, from.as_ref(), to.as_ref())?;
    let mut found = 0u64;
    let p = if g.json {
        let mut arr = JsonArray::new();
        let p = files::find(&f, &a.common.volume, &sessions, &pattern, &mut |m| {
            found += 1;
            let mut v = entry_json(&m.entry);
            v["session"] = m.session.clone().into();
            v["since"] = serde_json::to_value(m.since).expect("plain data");
            v["metadata_changed"] = m.metadata_changed.into();
            arr.push(v)
        });
        closed_pipe(arr.finish())?;
        p
    } else {
        let mut out = Out::new();
        let p = files::find(&f, &a.common.volume, &sessions, &pattern, &mut |m| {
            found += 1;
            out.line(&format!(
                "{}  {}  {}  {}  {}",
                super::date(&m.session),
                escape(&m.entry.path),
                if m.entry.kind == Kind::Dir {
                    "dir".to_string()
                } else {
                    m.entry.size.to_string()
                },
                time(m.entry.mtime),
                since(&m)
            ))
        });
        closed_pipe(out.finish())?;
        p
    };
    let p = closed_pipe_p(p)?;
    if found == 0 && p.is_empty() && !g.json {
        eprintln!(
            "wyng: no path matching '{}' in {} of {}",
            escape(a.pattern.as_bytes()),
            super::count(sessions.len() as u64, "session", "sessions"),
            a.common.volume
        );
    }
    problems("files find", p)
}

fn diff(g: &Global, a: DiffArgs) -> Result<()> {
    let (x, y) = pair(&a.session)?;
    let (Some(x), Some(y)) = (x, y) else {
        return Err(Error::Usage(
            "--session=A,B: files diff needs both sessions".into(),
        ));
    };
    let f = open(g, &a.common)?;
    let (sx, sy) = (
        f.select(&a.common.volume, &x)?,
        f.select(&a.common.volume, &y)?,
    );
    let (sa, sb) = (f.open(&a.common.volume, sx)?, f.open(&a.common.volume, sy)?);
    let path = a.path.unwrap_or_else(|| "/".into());
    let o = DiffOptions {
        checksum: a.checksum,
    };
    let p = if g.json {
        let mut arr = JsonArray::new();
        let p = files::diff(&sa, &sb, path.as_bytes(), &o, &mut |d| {
            let mut v = serde_json::to_value(&d).expect("plain data");
            v["path"] = escape(&d.path).into();
            arr.push(v)
        });
        closed_pipe(arr.finish())?;
        p
    } else {
        let mut out = Out::new();
        let p = files::diff(&sa, &sb, path.as_bytes(), &o, &mut |d| {
            let mark = match d.change {
                Change::Added => "+",
                Change::Removed => "-",
                Change::Changed => "M",
            };
            let dir = if d.kind == Kind::Dir { "/" } else { "" };
            let what = if d.what.is_empty() {
                String::new()
            } else {
                format!("  ({})", d.what.join(", "))
            };
            out.line(&format!("{mark} {}{dir}{what}", escape(&d.path)))
        });
        closed_pipe(out.finish())?;
        p
    };
    problems("files diff", closed_pipe_p(p)?)
}
