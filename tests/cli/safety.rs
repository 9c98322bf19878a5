//! Safety and daily-use contract: a restore writes only where the user pointed (symlinks
//! followed, device nodes and FIFOs refused, `-` streams), damaged local state never makes a
//! broken backup, requests are checked whole before anything changes.

use std::os::unix::fs::FileTypeExt;
use std::process::Stdio;

use crate::common::*;

/// An archive with one volume `vm.img` of two sessions; returns the images' bytes.
fn two_sessions(w: &Wyng, dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let img = dir.join("vm.img");
    let mut i = Image::new(22);
    i.random(200_000).zeros(300_000).text(100_000);
    i.write(&img);
    w.send("vm.img", &img, &[]);
    let first = std::fs::read(&img).unwrap();
    i.scribble(1000, 5000);
    i.write(&img);
    w.send("vm.img", &img, &[]);
    (first, std::fs::read(&img).unwrap())
}

#[test]
fn a_restore_follows_symlinks_and_never_replaces_device_nodes() {
    let t = tmp();
    let w = Wyng::fresh(&t.path().join("ar"), &t.path().join("meta"));
    let (_, newest) = two_sessions(&w, t.path());

    // A libvirt-style pool: the link stays, the real image gets the data.
    let data = t.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let real = data.join("vm.img");
    std::fs::write(&real, b"old contents").unwrap();
    let pool = t.path().join("pool");
    std::fs::create_dir(&pool).unwrap();
    let link = pool.join("vm.img");
    std::os::unix::fs::symlink("../data/vm.img", &link).unwrap();
    w.receive("vm.img", None, &link);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&real).unwrap(), newest);
    // A dangling link names the file to create.
    let dangling = pool.join("new.img");
    std::os::unix::fs::symlink(data.join("new.img"), &dangling).unwrap();
    w.receive("vm.img", None, &dangling);
    assert!(std::fs::symlink_metadata(&dangling)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(data.join("new.img")).unwrap(), newest);
    // A loop of links is an error, not a hang.
    std::os::unix::fs::symlink("b", pool.join("a")).unwrap();
    std::os::unix::fs::symlink("a", pool.join("b")).unwrap();
    let err = w.fails(
        &[
            "receive",
            "vm.img",
            &format!("--save-to={}", pool.join("a").display()),
            "-u",
        ],
        7,
    );
    assert!(err.contains("symbolic links"), "{err}");

    // A FIFO (and a link to one) is refused and left as it is.
    let fifo = t.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let to_fifo = t.path().join("to-fifo");
    std::os::unix::fs::symlink(&fifo, &to_fifo).unwrap();
    for p in [&fifo, &to_fifo] {
        let err = w.fails(
            &[
                "receive",
                "vm.img",
                &format!("--save-to={}", p.display()),
                "-u",
            ],
            7,
        );
        assert!(
            err.contains("is a FIFO") && err.contains("--save-to=-"),
            "{err}"
        );
    }
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // A character device like /dev/null: a link to it here, so the test never risks the real
    // node; the real one as root too (it must stay a character device).
    let to_null = t.path().join("null");
    std::os::unix::fs::symlink("/dev/null", &to_null).unwrap();
    for p in [to_null.as_path(), std::path::Path::new("/dev/null")] {
        let err = w.fails(
            &[
                "receive",
                "vm.img",
                &format!("--save-to={}", p.display()),
                "-u",
            ],
            7,
        );
        assert!(err.contains("is a character device"), "{err}");
        assert!(std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
    }
    let leftovers: Vec<_> = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("wyng-partial"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn save_to_dash_streams_the_image_in_order() {
    let t = tmp();
    let w = Wyng::fresh(&t.path().join("ar"), &t.path().join("meta"));
    let (first, newest) = two_sessions(&w, t.path());
    let newest_name = format!(
        "--session={}",
        session_names(&w, "vm.img")[1].trim_start_matches("S_")
    );
    for (session, want) in [(None, &newest), (Some(newest_name.as_str()), &newest)] {
        let mut args = vec!["receive", "vm.img", "--save-to=-"];
        args.extend(session);
        let o = w.run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(&o.stdout, want, "the stream is the image");
        assert!(String::from_utf8_lossy(&o.stderr).contains("standard output"));
    }
    // Piped into cmp against the source, as a user would.
    let oldest = session_names(&w, "vm.img")[0].clone();
    let src = t.path().join("first.img");
    std::fs::write(&src, &first).unwrap();
    let mut recv = w
        .cmd(&[
            "receive",
            "vm.img",
            &format!("--session={}", oldest.trim_start_matches("S_")),
            "--save-to=-",
            "-q",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let cmp = std::process::Command::new("cmp")
        .arg("-")
        .arg(&src)
        .stdin(recv.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(recv.wait().unwrap().success());
    assert!(cmp.success(), "cmp found a difference");
    // A damaged chunk stops the stream with exit 1 (and --skip-corrupt-chunks streams zeros).
    let chunk = chunk_files(&t.path().join("ar"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&chunk).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    std::fs::write(&chunk, &bytes).unwrap();
    let o = w.run(&["receive", "vm.img", "--save-to=-"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stdout.len() < newest.len());
    let o = w.run(&["receive", "vm.img", "--save-to=-", "--skip-corrupt-chunks"]);
    assert!(o.status.success());
    assert_eq!(o.stdout.len(), newest.len());
    assert!(String::from_utf8_lossy(&o.stderr).contains("DAMAGED"));
}

/// What is done to the resume record an interrupted send left.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Flip one bit at this offset of the first entry (0..8 index, 8..40 hash, 40..56 digest,
    /// 56..60 size, 60..68 checksum).
    EntryBit(usize),
    /// Flip a bit of the header line.
    HeaderBit,
    /// A record that checks out but names another hash for a chunk (as if written wrongly).
    ForgedHash,
}

const FIELDS: usize = 60;
const ENTRY: usize = FIELDS + 8;

fn damage_record(rec: &std::path::Path, d: Damage) {
    let mut b = std::fs::read(rec).unwrap();
    let head = b.iter().position(|&x| x == b'\n').unwrap() + 1;
    assert!(b.len() >= head + 2 * ENTRY, "the record holds entries");
    match d {
        Damage::EntryBit(off) => b[head + off] ^= 0x10,
        Damage::HeaderBit => b[5] ^= 0x01,
        Damage::ForgedHash => {
            // Re-sign the second entry with a wrong hash, as wyng signs its records.
            let line = std::str::from_utf8(&b[..head - 1]).unwrap();
            let body = line.rsplit_once(' ').unwrap().0;
            let key = *blake3::hash(body.as_bytes()).as_bytes();
            let e = head + ENTRY;
            b[e + 8] ^= 0xff;
            let sum = blake3::keyed_hash(&key, &b[e..e + FIELDS]);
            b[e + FIELDS..e + ENTRY].copy_from_slice(&sum.as_bytes()[..8]);
        }
    }
    std::fs::write(rec, &b).unwrap();
}

#[test]
fn a_damaged_resume_record_never_commits_a_bad_session() {
    let t = tmp();
    let ar = t.path().join("ar");
    let mut w = Wyng::fresh(&ar, &t.path().join("meta")).named_sessions();
    // A checkpoint after every few chunks: the record names most of what was staged.
    w.env.push(("WYNG_CHECKPOINT".into(), "128K".into()));
    let src = t.path().join("s.img");
    let mut img = Image::new(2);
    img.random(3 << 20);
    let mut history = Vec::new();
    let damages = [
        Damage::EntryBit(0),
        Damage::EntryBit(20),
        Damage::EntryBit(45),
        Damage::EntryBit(57),
        Damage::EntryBit(63),
        Damage::HeaderBit,
        Damage::ForgedHash,
    ];
    for (round, d) in damages.into_iter().enumerate() {
        if round > 0 {
            img.scribble((round * 300_000) % (2 << 20), 1 << 20);
        }
        img.write(&src);
        // Killed once every chunk is staged and checkpointed, before the commit.
        let imp = format!("--import-other-from=vm.img:|:{}", src.display());
        let o = w
            .cmd(&["send", "vm.img", &imp, "-q"])
            .env("WYNG_FAILPOINT", "chunks-written")
            .output()
            .unwrap();
        assert!(!o.status.success());
        let rec = files_under(&t.path().join("meta"))
            .into_iter()
            .find(|p| p.file_name().unwrap() == "resume")
            .expect("a resume record");
        damage_record(&rec, d);
        let r = w.send("vm.img", &src, &[]);
        history.push(sha256_file(&src));
        // Whatever was taken, every session reads back exactly.
        let out = t.path().join("out.img");
        for (s, sha) in session_names(&w, "vm.img").iter().zip(&history) {
            w.receive("vm.img", Some(s), &out);
            assert_eq!(&sha256_file(&out), sha, "{d:?}: session {s} ({r})");
        }
        if matches!(d, Damage::ForgedHash) {
            assert!(
                r["chunks_reused"].as_u64().unwrap() > 0,
                "the sound entries are taken: {r}"
            );
        }
    }
    w.ok(&["verify", "vm.img"]);
    check_strict(&ar);
}

#[test]
fn add_checks_the_whole_request_first() {
    let t = tmp();
    let w = Wyng::fresh(&t.path().join("ar"), &t.path().join("meta"));
    w.ok(&["add", "y"]);
    let err = w.fails(&["add", "x", "z", "x"], 9);
    assert!(err.contains("named twice"), "{err}");
    let err = w.fails(&["add", "x", "y"], 9);
    assert!(err.contains("'y' already exists"), "{err}");
    w.fails(&["add", "x", "bad/../name"], 9);
    let volumes = |w: &Wyng| -> Vec<String> {
        let v = w.json(&["list"]);
        v["volumes"].as_object().unwrap().keys().cloned().collect()
    };
    assert_eq!(volumes(&w), ["y"], "nothing was added");
    w.ok(&["add", "x", "z"]);
    assert_eq!(volumes(&w), ["x", "y", "z"]);
}

/// An S3 endpoint that accepts connections and never answers: every command that reaches it
/// ends with exit 5 and a line naming the endpoint, in bounded time (the stall timeout and
/// the retry window; `--s3-timeout` shortens them here, the default's bound is a unit test).
#[test]
fn a_silent_s3_endpoint_fails_commands_in_bounded_time() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            keep.lock().unwrap().push(c); // read nothing, answer nothing
        }
    });
    let t = tmp();
    let mut w = Wyng::new(&t.path().join("unused"), &t.path().join("meta"));
    w.dest = "s3://silent-bucket/archive".into();
    w.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "k".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "s".into()),
        (
            "AWS_ENDPOINT_URL".into(),
            format!("http://127.0.0.1:{port}"),
        ),
    ];
    w.extra.push("--s3-timeout=1".into());
    for args in [vec!["list"], vec!["arch-init", "--encrypt=off"]] {
        let started = std::time::Instant::now();
        let err = w.fails(&args, 5);
        assert!(
            err.contains(&format!("127.0.0.1:{port}")) && err.contains("does not answer"),
            "{args:?}: {err}"
        );
        // Not a timing assertion: a guard against hanging the suite if the bound is lost.
        assert!(started.elapsed() < std::time::Duration::from_secs(120));
    }
    assert!(
        !held.lock().unwrap().is_empty(),
        "wyng reached the endpoint"
    );
}

/// Holds the archive's lock as a writer would (`flock` on its directory) until dropped.
struct Holder(std::process::Child);

impl Holder {
    fn new(ar: &std::path::Path) -> Holder {
        let mut c = std::process::Command::new("flock")
            .arg("-x")
            .arg(ar)
            .args(["-c", "echo held; exec cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(c.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "held\n");
        Holder(c)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take()); // cat ends, the lock goes
        let _ = self.0.wait();
    }
}

#[test]
fn readers_read_beside_a_writer_and_writers_can_wait() {
    let t = tmp();
    let ar = t.path().join("ar");
    let w = Wyng::fresh(&ar, &t.path().join("meta"));
    let (_, newest) = two_sessions(&w, t.path());
    let held = Holder::new(&ar);
    // Reading commands go on, as committed so far.
    assert!(w.ok(&["list"]).contains("vm.img"));
    w.ok(&["verify", "vm.img"]);
    let out = t.path().join("out.img");
    w.receive("vm.img", None, &out);
    assert_eq!(std::fs::read(&out).unwrap(), newest);
    // A writer fails at once, saying how to wait; arch-check waits for quiet too.
    let err = w.fails(&["add", "other"], 5);
    assert!(err.contains("--lock-wait"), "{err}");
    w.fails(&["arch-check"], 5);
    // With --lock-wait it starts once the other is done.
    let mut waiting = w
        .cmd(&["add", "other", "--lock-wait=30"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(waiting.try_wait().unwrap().is_none(), "it waits");
    drop(held);
    let o = waiting.wait_with_output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("waiting up to 30 s"));
    assert!(w.ok(&["list"]).contains("other"));
    // The configuration key works as the option.
    let conf = t.path().join("wyng.ini");
    std::fs::write(&conf, "[var-global-default]\nlock-wait = 20\n").unwrap();
    let held = Holder::new(&ar);
    let waiting = w
        .cmd(&["add", "third", &format!("--config={}", conf.display())])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(held);
    assert!(waiting.wait_with_output().unwrap().status.success());
}

/// A reader holding no lock that meets a chunk a prune moved away says the archive changed
/// (run again), never that it is damaged.
#[test]
fn a_prune_under_an_unlocked_reader_is_not_damage() {
    let t = tmp();
    let ar = t.path().join("ar");
    let w = Wyng::fresh(&ar, &t.path().join("meta"));
    two_sessions(&w, t.path());
    let mut a = open_library(&ar, None);
    a.unlock();
    let vi = a.find_index("vm.img").unwrap();
    let oldest = a.merged(vi, 0).unwrap();
    let locs: Vec<_> = oldest.locs().map(Result::unwrap).collect();
    let oldest_name = session_names(&w, "vm.img")[0].clone();
    w.ok(&[
        "prune",
        "vm.img",
        &format!("--session={}", oldest_name.trim_start_matches("S_")),
        "-u",
    ]);
    let errs: Vec<_> = locs
        .iter()
        .filter_map(|l| a.chunks().read(l).err())
        .collect();
    assert!(!errs.is_empty(), "the prune moved some of the chunks");
    for e in errs {
        assert!(
            matches!(e, wyng::Error::ChangedWhileReading { .. }) && e.exit_code() == 5,
            "{e}"
        );
    }
}
