//! Pure parsing and serialization of Wyng archive format V3 objects (no I/O, no crypto).
//! See `docs/architecture.md` and the format notes for the layout these objects live in.
//!
//! Invariant: this crate depends on nothing of wyng's. It is its own crate so that the rule
//! "the format layer is pure" is a compile error to break, not a text scan: it cannot reach a
//! destination, a key or the codec. `wyng` re-exports it as `wyng::format` and converts its
//! [`Error`] into `wyng::Error`.

pub mod error;

pub mod ids;
pub mod info;
pub mod ini;
pub mod journal;
mod kv;
pub mod manifest;
pub mod volinfo;

pub use error::{Error, Result};
pub use ids::{Hash32, SessionName, VolumeId};
pub use info::{Session, SessionInfo, Tag};
pub use ini::ArchiveIni;
pub use manifest::ChunkRef;
pub use volinfo::VolInfo;

/// This release's date (`wdate` in `list --json` and `version --json`, as the original's).
pub const RELEASE_DATE: &str = "20261201";

/// Size limits of metadata objects as stored (format §1).
pub const MAX_VOLINFO_Z: usize = (44 + 17 + 10) * 16384 + 4000 * 4 + 100 * 4 + 10;
pub const MAX_INFO_Z: usize = 3388;

/// Bound on the compressed size of a session's manifest.z.
pub fn max_manifest_z(volsize: u64, chunksize: u64) -> u64 {
    (volsize / chunksize).saturating_add(1).saturating_mul(72)
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn parsers_never_panic(text in "(?s).{0,400}", bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = ArchiveIni::parse(&text);
            let _ = VolInfo::parse(&text, "v");
            let _ = SessionInfo::parse(&text, "i");
            let _ = manifest::parse_lines(text.as_bytes(), 65536, 1 << 40, "m");
            let _ = manifest::parse_lines(&bytes, 65536, u64::MAX, "m");
            let _ = ini::parse_header(&bytes);
            let _ = Hash32::parse_b64(&text);
            let _ = journal::Journal::parse(&[("0".into(), text.clone()), ("1".into(), "Vol_1".into()), ("3".into(), text.clone())]);
            if let Ok(mut l) = journal::MergeList::read(&bytes[..]) {
                while let Ok(Some(_)) = l.next_op() {}
            }
        }

        #[test]
        fn info_roundtrips(localtime in 0i128..i64::MAX as i128, volsize in any::<u64>(), sequence in any::<u64>(),
                           mfcs in any::<u32>(), tag in "[a-z0-9.]{1,25}", desc in "[ -~]{0,40}") {
            let info = SessionInfo {
                localtime,
                previous: SessionName::parse("S_20261123-153256"),
                permissions: "420:root:root".into(),
                manifest_hash: Some(Hash32([3; 32])),
                volsize,
                sequence,
                mfcs: Some(mfcs),
                tags: vec![Tag::new(&tag, desc.trim()).unwrap()],
            };
            prop_assert_eq!(SessionInfo::parse(&info.to_text(), "i").unwrap(), info);
        }
    }
}
