//! wyng: block-level incremental backup, byte-compatible with Wyng archive format V3.
//!
//! Layers, from the bytes on disk up (each knows only those below it; Cargo and
//! `tests/cli/layers.rs` check the rules):
//! * [`format`]: pure parse/serialize of the format's objects (no I/O, no crypto): the
//!   `wyng-format` crate (`format/`), so that its purity is a compile error.
//! * [`crypto`], [`codec`]: hashes, ciphers, compression; the one path every byte takes.
//! * [`dest`]: where an archive lives (a directory, a remote shell, memory for tests).
//! * [`archive`]: the only way to an archive's bytes: open for read or write, verified
//!   streamed manifests, merged-view indexes, chunk reader, session writer, journal, recovery.
//! * [`source`]: where volume data and its changes come from (files, block devices,
//!   copy-on-write snapshots).
//! * [`guest`]: what is inside a disk image (partition tables, ext2/3/4, FAT, NTFS), read
//!   in userspace from any "read at an offset" source.
//! * `view`: a FUSE-free tree of volumes and sessions as sparse files (the mount).
//! * `nbd`: the NBD protocol's wire format (pure; `ops::serve` is the server).
//! * [`ops`]: one module per command, on top of all of that.
//!
//! Beside the layers: [`auth`] (passphrases, the kernel keyring's key cache), `parallel`
//! (the order-preserving parallel map every pipeline runs on), `spool` (temporary files),
//! [`size`] (sizes as users write them), [`progress`] (progress counts, shown by the caller's
//! reporter), [`tuning`] (workers and budgets the caller gives). The library reads no
//! environment variable and never prints: the binary passes options in by value (the one
//! conversation it has is `auth`'s passphrase prompt on the terminal, when no `--passcmd` gives it).
//!
//! The public API is what the binary (`src/cmd/`), the tests, `wyng-fuse` and the fuzz targets
//! use; everything else is `pub(crate)` (`parallel`, `spool`, `view`, `nbd` and the atomic file
//! writer entirely), so the compiler's dead-code lint finds what nothing uses.

pub mod archive;
pub(crate) mod atomic_file;
pub mod auth;
pub mod codec;
pub mod crypto;
pub mod dest;
pub mod error;
pub use wyng_format as format;
#[doc(hidden)]
#[cfg(feature = "fuzz-targets")]
pub mod fuzz;
pub mod guest;
pub(crate) mod nbd;
pub mod ops;
pub(crate) mod parallel;
pub mod progress;
pub mod size;
pub mod source;
pub(crate) mod spool;
pub mod tuning;
pub(crate) mod view;

pub use error::{Error, Result};

pub use format::RELEASE_DATE;

/// The version line `wyng version` prints.
pub const VERSION_LINE: &str = concat!(
    "wyng ",
    env!("CARGO_PKG_VERSION"),
    " (Wyng archive format V3, compatible with Wyng 0.8)"
);
