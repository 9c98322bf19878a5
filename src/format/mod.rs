//! Pure parsing and serialization of Wyng archive format V3 objects (no I/O, no crypto).
//! See `docs/architecture.md` and the format notes for the layout these objects live in.

pub mod ids;
pub mod info;
pub mod ini;
mod kv;
pub mod manifest;
pub mod volinfo;

pub use ids::{chunk_rel_path, Hash32, SessionName, VolumeId};
pub use info::{SessionInfo, Tag};
pub use ini::ArchiveIni;
pub use manifest::{ChunkRef, Merged, SessionLines};
pub use volinfo::VolInfo;

/// Size limits of metadata objects as stored (format §1).
pub const MAX_VOLINFO_Z: usize = (44 + 17 + 10) * 16384 + 4000 * 4 + 100 * 4 + 10;
pub const MAX_INFO_Z: usize = 3388;

/// Bound on the compressed size of a session's manifest.z.
pub fn max_manifest_z(volsize: u64, chunksize: u64) -> u64 {
    (volsize / chunksize).saturating_add(1).saturating_mul(72)
}
