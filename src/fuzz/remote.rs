//! What the remote side of ssh:// and qubes:// sends back: status lines, framed data, `df`.

use super::{text, Target};

pub(super) const TARGET: Target = Target {
    name: "remote",
    run,
    seed_files: &["remote"],
    builtin_seeds: &[
        b"\n__WYNG_OK\n",
        b"\n__WYNG_ERR 1 5\nerror",
        b"12\nhello world!\n__WYNG_OK\n",
        b"Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/sda1 100 50 50 50% /\n",
    ],
};

fn run(data: &[u8]) {
    let _ = crate::dest::remote::shell::read_status(&mut &data[..]);
    let _ = crate::dest::remote::shell::read_framed(&mut &data[..]);
    let _ = crate::dest::remote::parse_df_available(&text(data));
}
