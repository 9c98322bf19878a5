//! `arch-init`: create a new archive.

use std::path::Path;

use crate::archive::{
    Archive, CipherMode, Compression, Compressor, InitParams, Location, WriteArchive,
};
use crate::auth::Auth;
use crate::error::{Error, Result};

pub struct InitOptions {
    /// `None`: unencrypted.
    pub cipher: Option<CipherMode>,
    pub compression: Compressor,
    /// Chunk size 32 KiB × 2^factor, 1..=6.
    pub chunk_factor: u32,
}

/// `zstd`, `zlib:4`, `bz2:9` …, with the level checked for the method.
pub fn parse_compression(s: &str) -> Result<Compressor> {
    let (name, level) = match s.split_once(':') {
        Some((n, l)) => (n, Some(l)),
        None => (s, None),
    };
    let kind = Compression::parse(name).ok_or_else(|| {
        Error::Usage(format!(
            "unknown compression '{name}': use zstd, zlib or bz2"
        ))
    })?;
    let level = match level {
        Some(l) => l
            .parse()
            .map_err(|_| Error::Usage(format!("compression level '{l}' is not a number")))?,
        None => kind.default_level(),
    };
    Compressor::new(kind, level)
}

pub fn run(
    loc: Location,
    o: &InitOptions,
    auth: &Auth,
    meta_dir: Option<&Path>,
) -> Result<WriteArchive> {
    if !(1..=6).contains(&o.chunk_factor) {
        return Err(Error::BadValue {
            setting: crate::error::Setting::ChunkFactor,
            value: o.chunk_factor.to_string(),
            expected: "out of range: 1 (64 KiB chunks) to 6 (2 MiB)".into(),
        });
    }
    let params = InitParams {
        compression: o.compression,
        chunksize: 32768u64 << o.chunk_factor,
        cipher: o.cipher,
    };
    Archive::init(loc, &params, auth, meta_dir)
}
