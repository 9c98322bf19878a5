//! Cost follows the data, not the volume: a 1 TiB sparse volume (16.7 M chunk slots at 64 KiB)
//! holding 24 MiB goes through send, incremental send, verify, receive, list, prune,
//! arch-check and a mount read, and every command's peak RSS (the kernel's own accounting of
//! that child) stays under a bound that a structure with one entry per chunk slot would blow
//! through (16.7 M slots at even 8 bytes each is 128 MiB; the old merged manifest took ~2 GiB).

use std::os::unix::fs::FileExt;

use crate::common::*;

const TIB: u64 = 1 << 40;
/// Peak RSS allowed for any command, KiB.
const BOUND_KIB: u64 = 96 << 10;

fn measured(w: &Wyng, args: &[&str]) -> String {
    let (o, rss) = run_measured(w.cmd(args));
    assert!(
        o.status.success(),
        "wyng {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        rss < BOUND_KIB,
        "wyng {args:?} peaked at {} MiB, over the bound of {} MiB",
        rss >> 10,
        BOUND_KIB >> 10
    );
    eprintln!("wyng {}: peak RSS {} MiB", args[0], rss >> 10);
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn a_terabyte_volume_costs_what_it_holds() {
    let t = tmp();
    let img = t.path().join("big.img");
    let at = sparse_volume(&img, TIB, 24, 5);
    let w = Wyng::fresh(&t.path().join("archive"), &t.path().join("meta"));
    let imp = format!("--import-other-from=big:|:{}", img.display());
    let r: serde_json::Value =
        serde_json::from_str(&measured(&w, &["send", "big", &imp, "--json"])).unwrap();
    // A first send says how much held data and how much was zero.
    assert_eq!(r[0]["chunks_data"], 24 * 16);
    assert_eq!(r[0]["chunks_zero"], (TIB >> 16) - 24 * 16);
    // An incremental send after a few changed blocks.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    for (i, off) in at.iter().enumerate().take(5) {
        f.write_all_at(&[i as u8 + 1; 4096], off + 8192).unwrap();
    }
    drop(f);
    let r: serde_json::Value =
        serde_json::from_str(&measured(&w, &["send", "big", &imp, "--json"])).unwrap();
    assert_eq!(r[0]["chunks_changed"], 5);
    measured(&w, &["verify", "big"]);
    let out = t.path().join("out.img");
    measured(
        &w,
        &[
            "receive",
            "big",
            &format!("--save-to={}", out.display()),
            "-u",
        ],
    );
    let (a, b) = (
        std::fs::File::open(&img).unwrap(),
        std::fs::File::open(&out).unwrap(),
    );
    assert_eq!(b.metadata().unwrap().len(), TIB);
    for off in &at {
        let (mut x, mut y) = (vec![0u8; 1 << 20], vec![1u8; 1 << 20]);
        a.read_exact_at(&mut x, *off).unwrap();
        b.read_exact_at(&mut y, *off).unwrap();
        assert!(x == y, "extent at {off} restored wrong");
    }
    use std::os::unix::fs::MetadataExt;
    assert!(
        b.metadata().unwrap().blocks() * 512 < 64 << 20,
        "the restore is sparse"
    );
    drop(b);
    std::fs::remove_file(&out).unwrap();
    measured(&w, &["list", "big"]);
    measured(&w, &["arch-check"]);
    let list = w.json(&["list", "big"]);
    let oldest = first_key(&list["volumes"]["big"]["sessions"]);
    measured(
        &w,
        &["prune", "big", &format!("--session={}", &oldest[2..]), "-u"],
    );
    measured(&w, &["verify", "big"]);
    if !can_run_privileged(&["/dev/fuse"]) {
        return;
    }
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    w.ok(&["mount", &mnt.display().to_string()]);
    let _g = MountGuard(mnt.clone());
    let f = std::fs::File::open(mnt.join("big/latest.img")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), TIB);
    let mut x = vec![0u8; 1 << 20];
    f.read_exact_at(&mut x, at[3]).unwrap();
    let mut y = vec![0u8; 1 << 20];
    std::fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut y, at[3])
        .unwrap();
    assert!(x == y, "a read through the mount");
    drop(f);
    w.ok(&["umount", &mnt.display().to_string()]);
}
