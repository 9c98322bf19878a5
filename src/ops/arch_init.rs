//! `arch-init`: create a new archive.

use std::path::Path;

use crate::archive::{Archive, InitParams};
use crate::auth::Auth;
use crate::codec::{Compression, Compressor};
use crate::crypto::CipherMode;
use crate::dest::Dest;
use crate::error::{Error, Result};

pub struct InitOptions {
    /// `off`, or a cipher mode name.
    pub encrypt: String,
    /// `zstd`, `zlib:4`, ...
    pub compression: String,
    pub chunk_factor: u32,
    pub hashtype: Option<String>,
}

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
    dest: Box<dyn Dest>,
    o: &InitOptions,
    auth: &Auth,
    meta_dir: Option<&Path>,
) -> Result<Archive> {
    let cipher = match o.encrypt.as_str() {
        "off" => None,
        name => Some(CipherMode::from_name(name).ok_or_else(|| {
            Error::Usage(format!(
                "unknown --encrypt mode '{name}': use xchacha20-dgr (default), xchacha20-msr, xchacha20-ct or off"
            ))
        })?),
    };
    if let Some(h) = &o.hashtype {
        // The original validates --hashtype and then stores the hash its cipher mode implies.
        if !["blake2b", "hmac-sha256"].contains(&h.as_str()) {
            return Err(Error::Usage(format!(
                "unknown --hashtype '{h}': use blake2b or hmac-sha256"
            )));
        }
    }
    if !(1..=6).contains(&o.chunk_factor) {
        return Err(Error::Usage(format!(
            "--chunk-factor {} is out of range: 1 (64 KiB chunks) to 6 (2 MiB)",
            o.chunk_factor
        )));
    }
    let params = InitParams {
        compression: parse_compression(&o.compression)?,
        chunksize: 32768u64 << o.chunk_factor,
        cipher,
    };
    Archive::init(dest, &params, auth, meta_dir)
}
