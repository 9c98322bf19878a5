//! `wyng serve` with real NBD clients over a unix socket (no kernel module needed): libnbd's
//! `nbdinfo` and `nbdcopy`, qemu's `qemu-img` and `qemu-io`, and `qemu-system-x86_64`
//! booting a disk straight from the archive. Skips where a client is missing, except under
//! CI=true where it must run.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// Whether these programs are installed (under CI=true they must be).
fn have(programs: &[&str]) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&&str> = programs
        .iter()
        .filter(|p| !std::env::split_paths(&path).any(|d| d.join(p).is_file()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: this test needs {missing:?} (libnbd-bin, qemu-utils, qemu-system-x86)"
    );
    eprintln!("skipping: needs {missing:?}");
    false
}

/// Whether a process runs (an exited one not yet reaped does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !matches!(
            s.rsplit_once(')')
                .map(|(_, t)| t.trim_start().as_bytes()[0]),
            Some(b'Z' | b'X')
        )
    })
}

/// A server this test started; stopped (SIGTERM, then waited for) when dropped.
struct Served {
    pid: i32,
    socket: PathBuf,
    uri: String,
}

impl Served {
    /// `nbd+unix:///EXPORT?socket=...` (or the TCP/TLS form the server reported).
    fn uri(&self, export: &str) -> String {
        match self.uri.split_once(":///?") {
            Some((scheme, query)) => format!("{scheme}:///{export}?{query}"),
            None => format!("{}{export}", self.uri),
        }
    }

    /// Stops the server the way a user does, and waits until it is gone.
    fn stop(&mut self) {
        if self.pid == 0 {
            return;
        }
        // SAFETY: signalling the server this test started.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive(self.pid) {
            assert!(
                Instant::now() < deadline,
                "wyng serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.pid = 0;
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.pid != 0 && alive(self.pid) {
            // SAFETY: as above.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Starts `wyng serve` in the background on `socket`.
fn serve(w: &Wyng, socket: &Path, extra: &[&str]) -> Served {
    let unix = format!("--unix={}", socket.display());
    let mut args = vec!["serve", unix.as_str(), "--json"];
    args.extend_from_slice(extra);
    let out = w.ok(&args);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    Served {
        pid: j["pid"].as_i64().unwrap() as i32,
        socket: socket.to_path_buf(),
        uri: j["uri"].as_str().unwrap().to_string(),
    }
}

fn run(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Data runs of an image as 64 KiB chunks see it: `(offset, length)` of each run of chunks
/// holding any non-zero byte.
fn data_runs(data: &[u8], chunk: usize) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, c) in data.chunks(chunk).enumerate() {
        if c.iter().all(|&b| b == 0) {
            continue;
        }
        let (off, len) = ((i * chunk) as u64, c.len() as u64);
        match out.last_mut() {
            Some((o, l)) if *o + *l == off => *l += len,
            _ => out.push((off, len)),
        }
    }
    out
}

/// Data runs from a list of (offset, length, is_data), clipped to `size`, neighbours merged.
fn merged(extents: impl Iterator<Item = (u64, u64, bool)>, size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (off, len, data) in extents {
        let len = len.min(size.saturating_sub(off));
        if !data || len == 0 {
            continue;
        }
        match out.last_mut() {
            Some((o, l)) if *o + *l == off => *l += len,
            _ => out.push((off, len)),
        }
    }
    out
}

/// An archive with two sessions of "vm1.img" (data, holes, text, a short end).
fn two_sessions(t: &Path) -> (Wyng, PathBuf, Vec<Vec<u8>>, Vec<String>) {
    let ar = t.join("archive");
    let mut w = Wyng::fresh(&ar, &t.join("meta"));
    w.env.push(("WYNG_MOUNT_REFRESH".into(), "0.3".into()));
    let src = t.join("vm1.img");
    let mut img = Image::new(5);
    img.random(1 << 20)
        .zeros(2 << 20)
        .text(1 << 20)
        .zeros(300_000)
        .random(50_001);
    img.write(&src);
    let mut names = Vec::new();
    let mut images = Vec::new();
    for _ in 0..2 {
        names.push(w.send("vm1.img", &src, &[])["session"].as_str().unwrap()[2..].to_string());
        images.push(img.data.clone());
        img.scribble(2 << 20, 70_000);
        img.write(&src);
    }
    (w, ar, images, names)
}

#[test]
fn real_clients_list_map_copy_compare_and_convert_sessions() {
    if !have(&["nbdinfo", "nbdcopy", "qemu-img"]) {
        return;
    }
    let t = tmp();
    let (w, _ar, images, names) = two_sessions(t.path());
    let sock = t.path().join("nbd.sock");
    let mut s = serve(&w, &sock, &[]);
    let first = format!("vm1.img@{}", names[0]);
    let second = format!("vm1.img@{}", names[1]);
    // The handshake and the list.
    let list: serde_json::Value = serde_json::from_str(&run(Command::new("nbdinfo").args([
        "--list",
        "--json",
        &s.uri(""),
    ])))
    .unwrap();
    let exports: Vec<&str> = list["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    assert_eq!(exports, ["vm1.img", first.as_str(), second.as_str()]);
    assert_eq!(list["exports"][0]["is_read_only"], true);
    assert_eq!(list["exports"][0]["can_multi_conn"], true);
    assert_eq!(list["structured"], true);
    // The map is the session's data and holes.
    let size = images[0].len() as u64;
    let map: serde_json::Value = serde_json::from_str(&run(Command::new("nbdinfo").args([
        "--map",
        "--json",
        &s.uri(&first),
    ])))
    .unwrap();
    let got = merged(
        map.as_array().unwrap().iter().map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["type"].as_u64().unwrap() & 1 == 0,
            )
        }),
        size,
    );
    assert_eq!(got, data_runs(&images[0], 65536));
    // qemu-img map sees the same.
    let qmap: serde_json::Value = serde_json::from_str(&run(Command::new("qemu-img").args([
        "map",
        "--output=json",
        "-f",
        "raw",
        &s.uri(&first),
    ])))
    .unwrap();
    let got = merged(
        qmap.as_array().unwrap().iter().map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["data"].as_bool().unwrap(),
            )
        }),
        size,
    );
    assert_eq!(got, data_runs(&images[0], 65536));
    // nbdcopy of a session equals `receive` of it, and is sparse.
    let copy = t.path().join("copy.img");
    run(Command::new("nbdcopy").arg(s.uri(&first)).arg(&copy));
    let received = t.path().join("received.img");
    w.receive("vm1.img", Some(&names[0]), &received);
    assert_eq!(sha256_file(&copy), sha256_file(&received));
    let md = std::fs::metadata(&copy).unwrap();
    assert!(
        md.blocks() * 512 < md.len() - (2 << 20),
        "holes stay holes: {md:?}"
    );
    // qemu-img compare against the source, and convert to qcow2.
    let src2 = t.path().join("second.img");
    std::fs::write(&src2, &images[1]).unwrap();
    let out = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src2)
        .arg(s.uri("vm1.img")));
    assert!(out.contains("identical"), "{out}");
    let qcow = t.path().join("second.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", &s.uri(&second)])
        .arg(&qcow));
    let out = run(Command::new("qemu-img")
        .args(["compare", "-F", "raw"])
        .arg(&qcow)
        .arg(&src2));
    assert!(out.contains("identical"), "{out}");
    s.stop();
}

/// The list follows the archive; a busy socket and an unknown volume are refused.
#[test]
fn a_session_sent_while_serving_is_an_export_at_once() {
    if !have(&["nbdinfo", "nbdcopy"]) {
        return;
    }
    let t = tmp();
    let (w, _ar, _images, _names) = two_sessions(t.path());
    let sock = t.path().join("nbd.sock");
    let mut s = serve(&w, &sock, &[]);
    // A session sent while serving: a new export, and the volume's name follows it.
    let src = t.path().join("vm1.img");
    let mut three = Image::new(77);
    three.random(3 << 20);
    three.write(&src);
    let s3 = w.send("vm1.img", &src, &[])["session"].as_str().unwrap()[2..].to_string();
    let third = format!("vm1.img@{s3}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = run(Command::new("nbdinfo").args(["--list", "--json", &s.uri("")]));
        if list.contains(&third) {
            break;
        }
        assert!(Instant::now() < deadline, "{third} never appeared: {list}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let now = t.path().join("now.img");
    run(Command::new("nbdcopy").arg(s.uri("vm1.img")).arg(&now));
    assert!(std::fs::read(&now).unwrap() == three.data);
    // A second server on the same socket is refused; an unknown volume too.
    let err = w.fails(&["serve", &format!("--unix={}", sock.display())], 7);
    assert!(err.contains("busy"), "{err}");
    let other = t.path().join("other.sock");
    let err = w.fails(
        &[
            "serve",
            &format!("--unix={}", other.display()),
            "--volume=nosuch",
        ],
        2,
    );
    assert!(err.contains("nosuch"), "{err}");
    assert!(!other.exists());
    // SIGTERM stops it and removes its socket.
    s.stop();
    assert!(!s.socket.exists());
}

#[test]
fn an_encrypted_archive_is_served() {
    if !have(&["nbdcopy"]) {
        return;
    }
    let t = tmp();
    let ar = t.path().join("archive");
    let w = Wyng::with_pass(&ar, &t.path().join("meta"), "serve-test-passphrase");
    w.init(&["--chunk-factor=1"]);
    let src = t.path().join("v.img");
    let mut img = Image::new(21);
    img.text(700_000).zeros(500_000).random(300_001);
    img.write(&src);
    w.send("v", &src, &[]);
    let sock = t.path().join("nbd.sock");
    let pid_file = t.path().join("serve.pid");
    let mut s = serve(&w, &sock, &[&format!("--pid-file={}", pid_file.display())]);
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        s.pid.to_string()
    );
    let copy = t.path().join("copy.img");
    run(Command::new("nbdcopy").arg(s.uri("v")).arg(&copy));
    assert_eq!(sha256_file(&copy), img.sha256());
    s.stop();
    assert!(!pid_file.exists(), "the pid file goes with the server");
}

/// The chunk file holding `vol`'s data at the smallest address of one session, and that
/// address.
fn a_chunk_of(ar: &Path) -> (PathBuf, u64) {
    let chunk = chunk_files(ar).remove(0);
    let addr = u64::from_str_radix(&chunk.file_name().unwrap().to_string_lossy()[1..], 16).unwrap();
    (chunk, addr)
}

#[test]
fn a_damaged_chunk_is_an_error_for_the_reads_that_need_it_only() {
    if !have(&["qemu-io", "nbdcopy"]) {
        return;
    }
    let t = tmp();
    let ar = t.path().join("archive");
    let w = Wyng::fresh(&ar, &t.path().join("meta"));
    let src = t.path().join("v.img");
    let mut img = Image::new(8);
    img.random(1 << 20);
    img.write(&src);
    w.send("v", &src, &[]);
    let (chunk, addr) = a_chunk_of(&ar);
    let mut b = std::fs::read(&chunk).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x10;
    std::fs::write(&chunk, &b).unwrap();
    let s = serve(&w, &t.path().join("nbd.sock"), &[]);
    let io = |off: u64| {
        Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-r",
                "-c",
                &format!("read {off} 4096"),
                &s.uri("v"),
            ])
            .output()
            .unwrap()
    };
    let bad = io(addr + 100);
    let text =
        String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
    assert!(text.contains("Input/output error"), "{text}");
    let other = if addr == 0 { 512 << 10 } else { 0 };
    let good = io(other);
    assert!(good.status.success());
    assert!(String::from_utf8_lossy(&good.stdout).contains("read 4096/4096"));
    // A whole copy fails rather than hand over zeros.
    let st = Command::new("nbdcopy")
        .arg(s.uri("v"))
        .arg(t.path().join("copy.img"))
        .output()
        .unwrap();
    assert!(!st.status.success());
    let log = std::fs::read_to_string(t.path().join("meta/serve.log")).unwrap();
    let name = chunk.file_name().unwrap().to_string_lossy().to_string();
    assert!(log.contains(&name), "the log names the chunk: {log}");
}

/// A 512-byte boot sector (16-bit x86, assembled from the source beside it): reads sector 1
/// through the BIOS, adds one to the ASCII digit at its start, writes it back, prints
/// "wyng boot <digit>" on COM1 and leaves qemu through isa-debug-exit with status 33 (65 if
/// the disk could not be read or written, "wyng disk error").
///
/// ```text
///     cli; cld; xor %ax,%ax; mov %ax,%ds; mov %ax,%es; mov %ax,%ss; mov $0x7c00,%sp; sti
///     mov %dl,drive               # the boot drive
///     mov $0x0201,%ax; mov $2,%cx; xor %dh,%dh; mov $0x7e00,%bx; int $0x13; jc fail
///     incb 0x7e00                 # the counter
///     mov $0x0301,%ax; mov $2,%cx; xor %dh,%dh; mov drive,%dl; mov $0x7e00,%bx; int $0x13; jc fail
///     mov $msg,%si; call print; mov $0x7e00,%si; call print; mov $0x10,%al; jmp exit
/// fail: mov $failmsg,%si; call print; mov $0x20,%al
/// exit: mov $0xf4,%dx; out %al,%dx; hlt; jmp exit
/// print: mov $0x3f8,%dx; 1: lodsb; test %al,%al; jz 2f; out %al,%dx; jmp 1b; 2: ret
/// drive: .byte 0; msg: .asciz "wyng boot "; failmsg: .asciz "wyng disk error\n"
///     .org 510; .byte 0x55,0xaa
/// ```
const BOOT_CODE: &[u8] = &[
    0xfa, 0xfc, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbc, 0x00, 0x7c, 0xfb, 0x88, 0x16,
    0x63, 0x7c, 0xb8, 0x01, 0x02, 0xb9, 0x02, 0x00, 0x30, 0xf6, 0xbb, 0x00, 0x7e, 0xcd, 0x13, 0x72,
    0x27, 0xfe, 0x06, 0x00, 0x7e, 0xb8, 0x01, 0x03, 0xb9, 0x02, 0x00, 0x30, 0xf6, 0x8a, 0x16, 0x63,
    0x7c, 0xbb, 0x00, 0x7e, 0xcd, 0x13, 0x72, 0x10, 0xbe, 0x64, 0x7c, 0xe8, 0x19, 0x00, 0xbe, 0x00,
    0x7e, 0xe8, 0x13, 0x00, 0xb0, 0x10, 0xeb, 0x08, 0xbe, 0x6f, 0x7c, 0xe8, 0x09, 0x00, 0xb0, 0x20,
    0xba, 0xf4, 0x00, 0xee, 0xf4, 0xeb, 0xf9, 0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee,
    0xeb, 0xf8, 0xc3, 0x00,
];

/// A bootable 4 MiB disk: the boot sector, the counter "0\n" in sector 1, a little data far
/// away and holes between.
fn boot_disk() -> Vec<u8> {
    let mut d = vec![0u8; 4 << 20];
    d[..BOOT_CODE.len()].copy_from_slice(BOOT_CODE);
    let msg = b"wyng boot \0wyng disk error\n\0";
    d[BOOT_CODE.len()..BOOT_CODE.len() + msg.len()].copy_from_slice(msg);
    d[510] = 0x55;
    d[511] = 0xaa;
    d[512..514].copy_from_slice(b"0\n");
    d[3 << 20..(3 << 20) + 5].copy_from_slice(b"tail!");
    d
}

/// Boots `uri` in qemu (TCG, no display, COM1 to a file); returns the exit status and what
/// the guest printed.
fn boot(uri: &str, extra: &str, out: &Path) -> (Option<i32>, String) {
    let _ = std::fs::remove_file(out);
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-m",
            "16",
        ])
        .arg("-serial")
        .arg(format!("file:{}", out.display()))
        .args([
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive",
        ])
        .arg(format!("file={uri},format=raw{extra}"))
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A guard against a guest that never exits, not a measurement.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code(),
        std::fs::read_to_string(out).unwrap_or_default(),
    )
}

#[test]
fn boot_a_vm_from_the_backup_and_keep_its_writes_in_an_overlay() {
    if !have(&["qemu-system-x86_64"]) {
        return;
    }
    let t = tmp();
    let ar = t.path().join("archive");
    let w = Wyng::fresh(&ar, &t.path().join("meta"));
    let disk = t.path().join("disk.img");
    std::fs::write(&disk, boot_disk()).unwrap();
    let session = w.send("disk.img", &disk, &[])["session"].as_str().unwrap()[2..].to_string();
    let export = format!("disk.img@{session}");
    let sock = t.path().join("nbd.sock");
    let serial = t.path().join("serial.txt");

    // Read-only: qemu keeps the guest's writes in its own temporary overlay.
    let mut s = serve(&w, &sock, &[]);
    let (code, out) = boot(&s.uri(&export), ",snapshot=on", &serial);
    assert_eq!((code, out.as_str()), (Some(33), "wyng boot 1\n"));
    s.stop();

    // With an overlay: the writes land there and survive a restart of the server.
    let ov = t.path().join("overlay");
    let ovarg = format!("--overlay={}", ov.display());
    let mut s = serve(&w, &sock, &[&ovarg]);
    for n in 1..=2 {
        let (code, out) = boot(&s.uri(&export), "", &serial);
        assert_eq!((code, out), (Some(33), format!("wyng boot {n}\n")));
    }
    s.stop();
    let mut s = serve(&w, &sock, &[&ovarg]);
    let (code, out) = boot(&s.uri("disk.img"), "", &serial);
    assert_eq!((code, out.as_str()), (Some(33), "wyng boot 3\n"));
    s.stop();
    assert!(!crate::common::files_under(&ov).is_empty());

    // The archive is as sent: the checker passes and the session hashes to the disk.
    w.ok(&["verify", "disk.img"]);
    if let Some(report) = check_strict(&ar) {
        let hashes = checker_hashes(&report, "disk.img");
        assert_eq!(hashes.len(), 1);
        assert_eq!(hashes[0].1, sha256_file(&disk));
    }
}

/// A CA and a server certificate for localhost (libnbd checks the name) in `pki`, as libnbd
/// wants them there (`ca-cert.pem`).
fn make_pki(pki: &Path) {
    std::fs::create_dir(pki).unwrap();
    let ssl = |args: &[&str]| {
        run(Command::new("openssl").args(args).current_dir(pki));
    };
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca-cert.pem",
        "-days",
        "2",
        "-subj",
        "/CN=wyng test CA",
    ]);
    ssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server-key.pem",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        pki.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca-cert.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-out",
        "server-cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

#[test]
fn tls_is_required_off_loopback_and_works_with_real_clients() {
    if !have(&["nbdinfo", "nbdcopy", "qemu-img", "openssl"]) {
        return;
    }
    let t = tmp();
    let ar = t.path().join("archive");
    let w = Wyng::fresh(&ar, &t.path().join("meta"));
    let src = t.path().join("v.img");
    let mut img = Image::new(3);
    img.random(600_000).zeros(400_000).random(1);
    img.write(&src);
    w.send("v", &src, &[]);
    // Plain text off loopback: refused, saying what to do.
    let err = w.fails(&["serve", "--listen=0.0.0.0:0"], 9);
    assert!(err.contains("--tls-cert"), "{err}");
    let pki = t.path().join("pki");
    make_pki(&pki);
    let cert = format!("--tls-cert={}", pki.join("server-cert.pem").display());
    let key = format!("--tls-key={}", pki.join("server-key.pem").display());
    // TCP on loopback, an ephemeral port, TLS: nbds:// works, plain nbd:// is told to use TLS.
    let out = w.ok(&["serve", "--listen=127.0.0.1:0", &cert, &key, "--json"]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut s = Served {
        pid: j["pid"].as_i64().unwrap() as i32,
        socket: PathBuf::new(),
        uri: j["uri"].as_str().unwrap().replace("127.0.0.1", "localhost"),
    };
    assert!(s.uri.starts_with("nbds://"), "{}", s.uri);
    let certs = format!("?tls-certificates={}", pki.display());
    let list = run(Command::new("nbdinfo").args(["--list", &format!("{}{certs}", s.uri)]));
    assert!(list.contains("with TLS"), "{list}");
    let copy = t.path().join("copy.img");
    run(Command::new("nbdcopy")
        .arg(format!("{}{certs}", s.uri("v")))
        .arg(&copy));
    assert_eq!(sha256_file(&copy), img.sha256());
    // qemu over TLS, with its own x509 credentials object.
    let port = s
        .uri
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let out = run(Command::new("qemu-img")
        .arg("compare")
        .arg("--object")
        .arg(format!("tls-creds-x509,id=tls0,endpoint=client,dir={}", pki.display()))
        .arg("--image-opts")
        .arg(format!(
            "driver=nbd,server.type=inet,server.host=localhost,server.port={port},export=v,tls-creds=tls0"
        ))
        .arg(format!("driver=file,filename={}", src.display())));
    assert!(out.contains("identical"), "{out}");
    let plain = Command::new("nbdinfo")
        .arg(s.uri("v").replace("nbds://", "nbd://"))
        .output()
        .unwrap();
    assert!(!plain.status.success());
    s.stop();
    // On a unix socket too (nbds+unix://), with the CA's name for the server.
    let sock = t.path().join("tls.sock");
    let s = serve(&w, &sock, &[&cert, &key]);
    assert!(s.uri.starts_with("nbds+unix://"), "{}", s.uri);
    let list = run(Command::new("nbdinfo").args([
        "--list",
        &format!(
            "nbds+unix:///?socket={}&tls-certificates={}&tls-hostname=localhost",
            sock.display(),
            pki.display()
        ),
    ]));
    assert!(list.contains("export=\"v\""), "{list}");
}
