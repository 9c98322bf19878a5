//! Real kernels: LVM thin pools and ZFS zvols tested live in a VM (Debian's kernel under qemu,
//! booted by virtme-ng with this machine's root filesystem shared read-only). Each test boots
//! the VM once for a whole scenario script (`tests/vm/<name>.sh`, run by `scripts/vm-run.sh`),
//! which writes one TAP line per case; a failed case fails the test and prints the guest's log.
//! The archives the guest wrote come back and go through the independent checker.
//!
//! Needs root, qemu and the kernel (`scripts/vm-install.sh`); without them each test says
//! "skipped" and why, except under CI=true where it fails. `cargo test -- --skip vm::` runs the
//! rest of the suite without them (each boot costs ~15 s under TCG, the scenarios ~1-2 min).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// Why the VM cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !is_root() {
        return Some("needs root".into());
    }
    let venv = std::env::var("WYNG_VM_VENV").unwrap_or_else(|_| "/opt/wyng-vm/venv".into());
    let vng = Path::new(&venv).join("bin/vng");
    if !vng.exists() {
        return Some(format!("no virtme-ng at {}", vng.display()));
    }
    if !Path::new("/usr/bin/qemu-system-x86_64").exists() {
        return Some("no qemu-system-x86_64".into());
    }
    let kernel = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"));
    if !kernel {
        return Some("no kernel in /boot (linux-image-amd64)".into());
    }
    None
}

/// Boots the VM for `tests/vm/<scenario>.sh`; returns the directory the guest wrote to, or
/// `None` when the VM cannot run here (skipped, or under CI=true a failure).
fn run_scenario(scenario: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    if let Some(why) = missing() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: the VM tests must run, but: {why} (scripts/vm-install.sh installs it all)"
        );
        eprintln!("skipped: vm::{scenario}: {why} (scripts/vm-install.sh installs it all)");
        return None;
    }
    // One VM at a time: two TCG guests on two cores take longer than one after the other.
    static ONE_VM: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _vm = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let status = Command::new(root.join("scripts/vm-run.sh"))
        .arg(root.join(format!("tests/vm/{scenario}.sh")))
        .arg(&out)
        .env("WYNG_BIN", env!("CARGO_BIN_EXE_wyng"))
        .env_remove("WYNG_ORIGINAL")
        .status()
        .unwrap();
    let tap = std::fs::read_to_string(out.join("results.tap")).unwrap_or_default();
    let log = || {
        format!(
            "--- guest log ---\n{}\n--- console ---\n{}",
            std::fs::read_to_string(out.join("guest.log")).unwrap_or_default(),
            tail(&std::fs::read_to_string(out.join("console.log")).unwrap_or_default())
        )
    };
    let failed: Vec<&str> = tap.lines().filter(|l| l.starts_with("not ok")).collect();
    let passed = tap.lines().filter(|l| l.starts_with("ok ")).count();
    eprintln!("vm::{scenario}: {passed} cases passed\n{tap}");
    assert!(
        failed.is_empty() && status.success() && tap.contains("\n1.."),
        "vm::{scenario}: failed cases {failed:?} (vm-run exit {status})\n{}",
        log()
    );
    Some((t, out))
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(4000);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

#[test]
fn lvm_thin_live() {
    let Some((_t, out)) = run_scenario("lvm") else {
        return;
    };
    let tap = std::fs::read_to_string(out.join("results.tap")).unwrap();
    assert!(
        tap.lines().filter(|l| l.starts_with("ok ")).count() >= 20,
        "{tap}"
    );
    check_strict(&out.join("arch-lvm"));
}

#[test]
fn zfs_live() {
    let Some((_t, out)) = run_scenario("zfs") else {
        return;
    };
    let tap = std::fs::read_to_string(out.join("results.tap")).unwrap();
    assert!(
        tap.lines().filter(|l| l.starts_with("ok ")).count() >= 12,
        "{tap}"
    );
    check_strict(&out.join("arch-zfs"));
}

/// On this machine's kernel (no ZFS module), or without ZFS at all, `--local=zfs:` is recognised
/// and refused with one clear line; a malformed dataset is a usage error.
#[test]
fn zfs_without_a_pool_is_one_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let w = Wyng::new(&t.path().join("archive"), &t.path().join("meta"));
    w.ok(&["arch-init", "--encrypt=off"]);
    let o = w.run(&["send", "web", "--local=zfs:nosuchpool/vms"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("zfs:nosuchpool/vms"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let o = w.run(&["send", "web", "--local=zfs:tank/../vms"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("name a pool or dataset"), "{err}");
}
