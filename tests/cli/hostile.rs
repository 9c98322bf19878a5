//! Hostile and damaged metadata: every case gives a clear error, never a panic, never a huge
//! allocation, never a write outside the target. Edits re-hash the chain so that only the
//! intended fault remains.

use std::path::{Path, PathBuf};

use crate::common::*;
use wyng::codec::{gunzip, gzip, Compression, Compressor};
use wyng::crypto::HashFn;
use wyng::format::ini::{self, ArchiveIni};
use wyng::format::{Hash32, VolumeId};

const VID: &str = "Vol_1e08b7";
const S1: &str = "S_20261123-153256";
const S2: &str = "S_20261123-153257";

/// Rewrites objects of an unencrypted zstd:3 archive and re-hashes the chain up to the root.
struct Chain {
    ar: PathBuf,
    zstd: Compressor,
}

impl Chain {
    fn new(ar: &Path) -> Chain {
        Chain {
            ar: ar.to_path_buf(),
            zstd: Compressor::new(Compression::Zstd, 3).unwrap(),
        }
    }

    fn text(&self, rel: &str) -> String {
        let f = std::fs::read(self.ar.join(rel)).unwrap();
        String::from_utf8(self.zstd.decompress(&f, 1 << 20).unwrap()).unwrap()
    }

    fn put(&self, rel: &str, text: &[u8]) -> Hash32 {
        let z = self.zstd.compress(text);
        std::fs::write(self.ar.join(rel), &z).unwrap();
        HashFn::Blake2b256.hash(&z)
    }

    /// Replaces a session's manifest and/or edits its info, then fixes volinfo and archive.ini.
    fn edit(
        &self,
        session: &str,
        manifest: Option<&str>,
        edit_info: impl FnOnce(String) -> String,
    ) {
        let mut info = self.text(&format!("{VID}/{session}/info"));
        if let Some(m) = manifest {
            let h = self.put(&format!("{VID}/{session}/manifest.z"), m.as_bytes());
            info = set_line(&info, "manifesthash", &h.to_b64());
        }
        let ih = self.put(&format!("{VID}/{session}/info"), edit_info(info).as_bytes());
        let vi = set_line(&self.text(&format!("{VID}/volinfo")), session, &ih.to_b64());
        self.edit_volinfo(&vi);
    }

    fn edit_volinfo(&self, text: &str) {
        let vh = self.put(&format!("{VID}/volinfo"), text.as_bytes());
        let _ = std::fs::remove_file(self.ar.join(format!("{VID}/volinfo.bak")));
        let file = std::fs::read(self.ar.join("archive.ini")).unwrap();
        let (_, body) = ini::parse_header(&file).unwrap();
        let mut root =
            ArchiveIni::parse(&String::from_utf8(gunzip(body, 1 << 20).unwrap()).unwrap()).unwrap();
        root.set_volume(&VolumeId::parse(VID).unwrap(), vh);
        let mut out = ini::header("00");
        out.extend_from_slice(&gzip(root.to_text().as_bytes()));
        std::fs::write(self.ar.join("archive.ini"), out).unwrap();
    }
}

fn set_line(text: &str, key: &str, value: &str) -> String {
    text.lines()
        .map(|l| {
            if l.split(" = ").next() == Some(key) {
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn fixture() -> (tempfile::TempDir, PathBuf, Wyng) {
    let t = tmp();
    let ar = copy_fixture("a-plain-zstd", t.path());
    let w = Wyng::new(&ar, &t.path().join("meta"));
    (t, ar, w)
}

/// The unchanged edit path itself must produce a valid archive (so the faults below are the
/// only faults).
#[test]
fn chain_edit_without_fault_is_valid() {
    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    let m = c.text(&format!("{VID}/{S2}/manifest.z"));
    c.edit(S2, Some(&m), |i| i);
    w.ok(&["verify", "vol1"]);
}

#[test]
fn manifest_with_path_traversal() {
    let (t, ar, w) = fixture();
    let c = Chain::new(&ar);
    let m = c.text(&format!("{VID}/{S2}/manifest.z"));
    let evil = m.replacen(" x0000000000000000", " ../../../../../tmp/evil", 1);
    c.edit(S2, Some(&evil), |i| i);
    let out = t.path().join("out.img");
    let err = w.fails(
        &["receive", "vol1", &format!("--save-to={}", out.display())],
        1,
    );
    assert!(err.contains("manifest line 1"), "{err}");
    assert!(!out.exists());
    assert!(!Path::new("/tmp/evil").exists());
}

#[test]
fn absurd_volume_size() {
    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    c.edit(S2, None, |i| set_line(&i, "volsize", &u64::MAX.to_string()));
    let started = std::time::Instant::now();
    let err = w.fails(&["verify", "vol1"], 1);
    assert!(err.contains("incomplete") || err.contains("mfcs"), "{err}");
    assert!(started.elapsed().as_secs() < 10);
    // Not a number at all.
    c.edit(S2, None, |i| set_line(&i, "volsize", "-5"));
    w.fails(&["list"], 1);
}

#[test]
fn manifest_address_beyond_volume() {
    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    let m = c.text(&format!("{VID}/{S2}/manifest.z"));
    let extra = format!("{m}0 x{:016x}\n", 0x7fff_ffff_0000_0000u64);
    c.edit(S2, Some(&extra), |i| i);
    let err = w.fails(&["verify", "vol1"], 1);
    assert!(err.contains("beyond"), "{err}");
}

#[test]
fn manifest_decompression_bomb() {
    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    // 64 MiB of newlines compress to a few hundred bytes: under the file size limit, far over
    // what a manifest of this volume can decompress to.
    let bomb = vec![b'\n'; 64 << 20];
    let h = c.put(&format!("{VID}/{S2}/manifest.z"), &bomb);
    let info = set_line(
        &c.text(&format!("{VID}/{S2}/info")),
        "manifesthash",
        &h.to_b64(),
    );
    let ih = c.put(&format!("{VID}/{S2}/info"), info.as_bytes());
    c.edit_volinfo(&set_line(
        &c.text(&format!("{VID}/volinfo")),
        S2,
        &ih.to_b64(),
    ));
    let err = w.fails(&["verify", "vol1"], 1);
    assert!(err.contains("more than"), "{err}");
}

#[test]
fn broken_session_chain_and_names() {
    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    c.edit(S2, None, |i| set_line(&i, "previous", "S_20200101-000000"));
    let err = w.fails(&["list"], 1);
    assert!(err.contains("previous"), "{err}");

    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    c.edit(S2, None, |i| set_line(&i, "sequence", "0"));
    w.fails(&["list"], 1);

    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    let vi = c
        .text(&format!("{VID}/volinfo"))
        .replace(S1, "S_../../../x");
    c.edit_volinfo(&vi);
    let err = w.fails(&["list"], 1);
    assert!(err.contains("bad session name"), "{err}");

    let (_t, ar, w) = fixture();
    let c = Chain::new(&ar);
    let vi = set_line(
        &c.text(&format!("{VID}/volinfo")),
        "name",
        "../../etc/passwd",
    );
    c.edit_volinfo(&vi);
    w.fails(&["list"], 1);
}

/// Random single-byte damage anywhere in the metadata or chunks: never a panic, and a command
/// that succeeds never returns wrong bytes.
#[test]
fn random_damage_never_panics_or_lies() {
    let exp = expected();
    let sessions = exp["archives"]["a-plain-zstd"]["volumes"]["vol1"]["sessions"]
        .as_array()
        .unwrap()
        .clone();
    let want = sessions.last().unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let (t, ar, w) = fixture();
    let mut files = Vec::new();
    let mut stack = vec![ar.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.metadata().unwrap().len() > 0
                && !e.file_name().to_string_lossy().ends_with(".bak")
            {
                files.push(e.path());
            }
        }
    }
    files.sort();
    let mut seed = 99u64;
    let out = t.path().join("out.img");
    for round in 0..60 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let f = &files[(seed >> 33) as usize % files.len()];
        let orig = std::fs::read(f).unwrap();
        let mut bad = orig.clone();
        match round % 3 {
            0 => {
                let i = (seed >> 7) as usize % bad.len();
                bad[i] ^= 1 << ((seed >> 3) % 8);
            }
            1 => bad.truncate((seed >> 9) as usize % bad.len()),
            _ => bad.extend_from_slice(b"\0garbage"),
        }
        std::fs::write(f, &bad).unwrap();
        let o = w
            .cmd(&[
                "receive",
                "vol1",
                "-u",
                "-q",
                &format!("--save-to={}", out.display()),
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains("panicked"),
            "round {round} {}: {err}",
            f.display()
        );
        assert_ne!(o.status.code(), Some(101));
        if o.status.success() {
            assert_eq!(
                sha256_file(&out),
                want,
                "round {round}: damaged {} yet wrong bytes returned",
                f.display()
            );
        } else {
            assert_eq!(
                err.lines()
                    .filter(|l| l.starts_with("wyng: error:"))
                    .count(),
                1,
                "{err}"
            );
        }
        std::fs::write(f, &orig).unwrap();
    }
}
