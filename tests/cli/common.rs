//! Helpers shared by the black-box tests: run the `wyng` binary, copy fixtures to temporary
//! directories, build test images, and find the independent checker.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wyng-v3")
}

pub fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("EXPECTED.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A fresh temporary directory (removed when dropped).
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("wyng-test-")
        .tempdir()
        .unwrap()
}

/// Copies a fixture archive into `into`, writable, and returns its path. Archives with
/// hard-linked chunks are unpacked from their tarball so the links are real.
pub fn copy_fixture(name: &str, into: &Path) -> PathBuf {
    let dest = into.join(name);
    let tarball = fixtures().join("tarballs").join(format!("{name}.tar.gz"));
    if tarball.exists() {
        let st = Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(into)
            .status()
            .unwrap();
        assert!(st.success());
        assert!(
            dest.is_dir(),
            "tarball {name} did not unpack to {}",
            dest.display()
        );
        Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(&dest)
            .status()
            .unwrap();
    } else {
        copy_dir(&fixtures().join(name), &dest);
    }
    dest
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::write(&t, std::fs::read(e.path()).unwrap()).unwrap();
        }
    }
}

#[derive(Clone)]
pub struct Wyng {
    pub dest: String,
    pub meta: PathBuf,
    /// Passphrase fed on standard input (encrypted archives).
    pub pass: Option<String>,
    /// Extra arguments for every command (e.g. `--opt-ssh`).
    pub extra: Vec<String>,
    /// Extra environment for every command.
    pub env: Vec<(String, String)>,
    /// With [`Wyng::named_sessions`]: the time (seconds) of the last session name given.
    pub named: Option<std::sync::Arc<std::sync::Mutex<i64>>>,
}

impl Wyng {
    pub fn new(archive: &Path, meta: &Path) -> Wyng {
        Wyng {
            dest: format!("file:{}", archive.display()),
            meta: meta.to_path_buf(),
            pass: None,
            extra: Vec::new(),
            env: Vec::new(),
            named: None,
        }
    }

    /// Every `send` through this helper (and its clones) names its session explicitly
    /// (`WYNG_TEST_SESSION`, a test-only hook): the current second, or the second after the
    /// last name given if that is later, so sends in a row do not wait for the clock. Only for
    /// tests whose archive no other helper sends to and that select no session relative to
    /// now: a name can be a few seconds ahead of the clock.
    pub fn named_sessions(mut self) -> Wyng {
        self.named = Some(Default::default());
        self
    }

    /// The next explicit session name (see [`Wyng::named_sessions`]).
    fn next_session(&self) -> Option<String> {
        let mut last = self.named.as_ref()?.lock().unwrap();
        let now = chrono::Local::now().naive_local().and_utc().timestamp();
        *last = now.max(*last + 1);
        let t = chrono::DateTime::from_timestamp(*last, 0)?.naive_utc();
        Some(t.format("%Y%m%d-%H%M%S").to_string())
    }

    pub fn with_pass(archive: &Path, meta: &Path, pass: &str) -> Wyng {
        Wyng {
            pass: Some(pass.to_string()),
            ..Wyng::new(archive, meta)
        }
    }

    /// A new unencrypted archive with 64 KiB chunks: the set-up most tests start from.
    pub fn fresh(archive: &Path, meta: &Path) -> Wyng {
        let w = Wyng::new(archive, meta);
        w.ok(&["arch-init", "--encrypt=off", "--chunk-factor=1"]);
        w
    }

    /// With the passphrase if there is one (encrypted archive), without otherwise.
    pub fn maybe_pass(archive: &Path, meta: &Path, pass: Option<&str>) -> Wyng {
        Wyng {
            pass: pass.map(str::to_string),
            ..Wyng::new(archive, meta)
        }
    }

    /// `arch-init`: encrypted (the default mode) if this helper has a passphrase, else plain.
    pub fn init(&self, args: &[&str]) {
        let mut a = vec!["arch-init"];
        if self.pass.is_none() {
            a.push("--encrypt=off");
        }
        a.extend_from_slice(args);
        self.ok(&a);
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_wyng"));
        c.args(args)
            .arg(format!("--dest={}", self.dest))
            .arg(format!("--meta-dir={}", self.meta.display()))
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null());
        if args.first() == Some(&"send") {
            if let Some(name) = self.next_session() {
                c.env("WYNG_TEST_SESSION", name);
            }
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(args);
        match &self.pass {
            None => c.output().unwrap(),
            Some(p) => {
                use std::io::Write;
                let mut child = c
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                // The passphrase is read only when no cached keys exist: ignore a closed pipe.
                let _ = writeln!(child.stdin.take().unwrap(), "{p}");
                child.wait_with_output().unwrap()
            }
        }
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "wyng {args:?} failed: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs, asserts the exit code and returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(code), "wyng {args:?}: stderr: {err}");
        assert!(!err.contains("panicked"), "panic: {err}");
        err
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Sends `image` as volume `vol`; returns the volume's report.
    pub fn send(&self, vol: &str, image: &Path, extra: &[&str]) -> serde_json::Value {
        let imp = format!("--import-other-from={vol}:|:{}", image.display());
        let mut a = vec!["send", vol, imp.as_str()];
        a.extend_from_slice(extra);
        self.json(&a)[0].clone()
    }

    pub fn receive(&self, vol: &str, session: Option<&str>, to: &Path) {
        let save = format!("--save-to={}", to.display());
        let mut a = vec!["receive", vol, save.as_str(), "-u", "-q"];
        let s;
        if let Some(ses) = session {
            s = format!("--session={}", ses.trim_start_matches("S_"));
            a.push(&s);
        }
        self.ok(&a);
    }
}

/// The first key of a JSON object (e.g. the only volume of a fixture, the oldest session).
pub fn first_key(v: &serde_json::Value) -> String {
    v.as_object()
        .and_then(|o| o.keys().next())
        .expect("a non-empty JSON object")
        .clone()
}

pub fn sha256_file(p: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    hex(&h.finalize())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The independent V3 checker, if present (`WYNG_V3_CHECK` or `../shared/tools`). Under
/// `CI=true` it must be there: a missing oracle fails the test instead of skipping it.
pub fn checker() -> Option<PathBuf> {
    let p = std::env::var_os("WYNG_V3_CHECK")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/wyng-v3-check")
        });
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but the checker is missing at {}",
        p.display()
    );
    eprintln!(
        "note: {} not found; skipping the independent check",
        p.display()
    );
    None
}

/// Runs the checker in strict mode (no errors, no warnings) and returns its JSON report.
pub fn check_strict(archive: &Path) -> Option<serde_json::Value> {
    check_strict_with(archive, None)
}

/// The same for an encrypted archive.
pub fn check_strict_with(archive: &Path, pass: Option<&str>) -> Option<serde_json::Value> {
    let c = checker()?;
    let mut cmd = Command::new("python3");
    cmd.arg(&c).arg(archive).arg("--strict").arg("--json");
    if let Some(p) = pass {
        cmd.arg("--passphrase-env")
            .arg("WYNG_TEST_PASS")
            .env("WYNG_TEST_PASS", p);
    }
    let o = cmd.output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "checker output: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert!(
        o.status.success(),
        "wyng-v3-check --strict failed on {}:\n{}",
        archive.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    Some(report)
}

/// The checker's report on an archive expected to be invalid (no assertion on its verdict);
/// `None` where the checker is not available.
pub fn check_report(archive: &Path, pass: Option<&str>) -> Option<serde_json::Value> {
    let c = checker()?;
    let mut cmd = Command::new("python3");
    cmd.arg(&c).arg(archive).arg("--json");
    if let Some(p) = pass {
        cmd.arg("--passphrase-env")
            .arg("WYNG_TEST_PASS")
            .env("WYNG_TEST_PASS", p);
    }
    let o = cmd.output().unwrap();
    Some(serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "checker output: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }))
}

/// The sha256 the checker computed for each session of a volume, by session name.
pub fn checker_hashes(report: &serde_json::Value, vol: &str) -> Vec<(String, String)> {
    report["volumes"][vol]["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["sha256"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

// Not every test binary uses every builder method.
#[allow(dead_code)]
#[path = "../support/image.rs"]
mod image;
pub use image::{round_trip_history, Image};

impl Image {
    pub fn sha256(&self) -> String {
        hex(&Sha256::digest(&self.data))
    }
}

/// Every regular file under `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Chunk files (`x<16 hex>`) under `dir`, sorted.
pub fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('x'))
        .collect()
}

/// Every file under `dir` with its content (to show that nothing changed).
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let c = std::fs::read(&p).unwrap();
            (p, c)
        })
        .collect()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a test that needs root and these device nodes or programs can run here. Under
/// CI=true it must: a missing capability fails the test instead of skipping it.
pub fn can_run_privileged(needs: &[&str]) -> bool {
    let missing: Vec<&&str> = needs.iter().filter(|p| !Path::new(p).exists()).collect();
    let ok = is_root() && missing.is_empty();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: this test needs root and {needs:?} (missing: {missing:?})"
        );
        eprintln!("skipping: needs root and {needs:?}");
    }
    ok
}

/// Unmounts (lazily, so a busy mount cannot hang the test) when dropped.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Detaches a loop device this test attached, when dropped.
pub struct LoopGuard(pub String);

/// Attaches `file` to a free loop device (read-only if asked); detached when the guard drops.
pub fn attach_loop(file: &Path, read_only: bool) -> LoopGuard {
    let mut c = Command::new("losetup");
    if read_only {
        c.arg("-r");
    }
    let out = c.args(["-f", "--show"]).arg(file).output().unwrap();
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    LoopGuard(String::from_utf8(out.stdout).unwrap().trim().to_string())
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// Opens an archive through the library (read-only, no local cache), for tests that inspect
/// what the command line does not show. The passphrase, if any, comes from a `--passcmd`.
pub fn open_library(ar: &Path, pass: Option<&str>) -> wyng::archive::Archive {
    let auth = wyng::auth::Auth {
        passcmd: pass.map(|p| format!("printf %s '{p}'")),
        authmin: 5,
        cached_only: false,
    };
    wyng::archive::Archive::open_read(
        wyng::archive::Location::open(
            &format!("file:{}", ar.display()),
            &wyng::archive::DestOptions::default(),
        )
        .unwrap(),
        &wyng::archive::OpenOptions {
            auth: &auth,
            meta_dir: None,
            allow_rollback: true,
            force_retry: false,
            lock: Default::default(),
            tuning: Default::default(),
            progress: Default::default(),
        },
    )
    .unwrap()
}

/// Runs a command to completion and returns its output with its own peak RSS in KiB, as the
/// kernel accounts it for that process (`wait4` in GNU time, which forks and execs it from a
/// small process: a child spawned straight from this large, multi-threaded test process
/// would be charged this process's pages up to its exec).
pub fn run_measured(c: Command) -> (Output, u64) {
    let t = tmp();
    let report = t.path().join("rss");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&report)
        .arg(c.get_program())
        .args(c.get_args())
        .envs(c.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .stdin(std::process::Stdio::null());
    let o = timed
        .output()
        .expect("GNU time (/usr/bin/time, package `time`)");
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let rss = text
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no peak RSS from GNU time: {text:?}"));
    (o, rss)
}

/// A sparse file of `size` bytes with `extents` runs of 1 MiB of random data spread over it;
/// returns where they are.
pub fn sparse_volume(path: &Path, size: u64, extents: u64, seed: u64) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut img = Image::new(seed);
    let step = size / extents;
    let mut at = Vec::new();
    for i in 0..extents {
        let off = (i * step + (img.next() % (step / 2))) & !((1 << 20) - 1);
        let mut data = Image::new(seed + i + 1);
        data.random(1 << 20);
        f.write_all_at(&data.data, off).unwrap();
        at.push(off);
    }
    at
}

/// Runs `c` on a terminal (a pty made by util-linux `script`), typing `lines` half a second
/// apart; its stdout and stderr both come back as stdout. `None` where `script` is missing.
pub fn on_terminal(c: Command, lines: &[&str]) -> Option<Output> {
    use std::io::Write;
    let line = std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| shlex::try_quote(a.to_str().unwrap()).unwrap().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let _ = writeln!(stdin, "{l}");
    }
    drop(stdin);
    Some(child.wait_with_output().unwrap())
}

/// The sessions of `vol` as `--session` takes them (`YYYYMMDD-HHMMSS`, no `S_`), oldest
/// first, through `list --json`.
pub fn session_names(w: &Wyng, vol: &str) -> Vec<String> {
    let j = w.json(&["list", vol]);
    let key = first_key(&j["volumes"]);
    j["volumes"][key]["sessions"]
        .as_object()
        .unwrap()
        .keys()
        .map(|s| s.trim_start_matches("S_").to_string())
        .collect()
}
