//! The configuration file (`wyng.ini`, configparser syntax).

use super::{text, Target};

pub(super) const TARGET: Target = Target {
    name: "config",
    run,
    seed_files: &["wyng.ini"],
    builtin_seeds: &[
        b"[var-global-default]\ndest = file:/mnt/backup\nlocal = /var/lib/images\nvolume =\n  a.img\n  b.img\n",
    ],
};

fn run(data: &[u8]) {
    let _ = crate::format::ini::parse_configparser(&text(data));
}
