//! Session names, volume ids and names, hashes and sizes, as users and archives write them.

use super::{text, Target};
use crate::format::{Hash32, SessionName, VolumeId};

pub(super) const TARGET: Target = Target {
    name: "names",
    run,
    seed_files: &["names"],
    builtin_seeds: &[
        b"S_20261123-153256 Vol_1e08b7 20261123-153256 vm/disk1.img 1G 64K AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ],
};

fn run(data: &[u8]) {
    for part in text(data).split(['\n', ' ', '/']).take(256) {
        if let Some(s) = SessionName::parse(part) {
            assert_eq!(SessionName::parse(s.as_str()).as_ref(), Some(&s));
        }
        let _ = SessionName::from_user(part);
        if let Some(v) = VolumeId::parse(part) {
            assert_eq!(v.as_str(), part);
        }
        if let Some(h) = Hash32::parse_b64(part) {
            assert_eq!(Hash32::parse_b64(&h.to_b64()), Some(h));
        }
        let _ = crate::format::ids::check_volume_name(part);
        let _ = crate::size::parse(part);
    }
}
