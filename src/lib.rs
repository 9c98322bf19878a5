//! wyng: block-level incremental backup, byte-compatible with Wyng archive format V3.
//!
//! Layers, from the bytes on disk up: [`format`] (pure parse/serialize), [`crypto`] and
//! [`codec`] (hash, compress, verify), [`dest`] (where an archive lives), [`archive`] (an open
//! archive: load, merged manifests, crash-safe commits), [`source`] (where volume data and its
//! changes come from), [`ops`] (one module per command).

pub mod archive;
pub mod auth;
pub mod cache;
pub mod codec;
pub mod crypto;
pub mod dest;
pub mod error;
pub mod format;
pub mod ops;
pub mod progress;
pub mod source;
pub mod txn;
pub mod view;

pub use error::{Error, Result};

/// The version line `wyng version` prints.
pub const VERSION_LINE: &str = concat!(
    "wyng ",
    env!("CARGO_PKG_VERSION"),
    " (Wyng archive format V3, compatible with Wyng 0.8)"
);
