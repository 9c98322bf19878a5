//! `wyng arch-init`.

use clap::{Args, ValueEnum};

use wyng::archive::{CipherMode, Compressor};
use wyng::ops;
use wyng::Result;

use super::Global;

pub const HELP: &str = "Examples:\n  wyng arch-init --dest=file:/mnt/usb/laptop.backup\n  wyng arch-init --dest=file:/mnt/usb/laptop.backup --passcmd='pass show backup/laptop'\n  wyng arch-init --dest=file:/mnt/usb/plain.backup --encrypt=off --compression=zstd:3 --chunk-factor=3\n\nEncrypted archives (the default) ask for a passphrase of at least 10 characters, twice on a\nterminal; keep it safe: without it the archive cannot be read.";

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Encrypt {
    #[value(name = "xchacha20-dgr")]
    Dgr,
    #[value(name = "xchacha20-msr")]
    Msr,
    #[value(name = "xchacha20-ct")]
    Ct,
    Off,
}

fn compression(s: &str) -> Result<Compressor, String> {
    ops::arch_init::parse_compression(s).map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Encryption of chunks and metadata
    #[arg(long, value_enum, default_value = "xchacha20-dgr", value_name = "MODE")]
    pub encrypt: Encrypt,
    /// Compression and level: zstd[:1..22], zlib[:0..9], bz2[:1..9]
    #[arg(long, default_value = "zstd:3", value_name = "TYPE[:LEVEL]", value_parser = compression)]
    pub compression: Compressor,
    /// Chunk size 32 KiB × 2^F: 1 = 64 KiB … 3 = 256 KiB (default) … 6 = 2 MiB
    #[arg(long, default_value_t = 3, value_name = "F", value_parser = clap::value_parser!(u32).range(1..=6))]
    pub chunk_factor: u32,
    /// Accepted for compatibility: the hash follows from the encryption mode
    #[arg(long, value_name = "NAME", value_parser = ["blake2b", "hmac-sha256"])]
    pub hashtype: Option<String>,
}

pub fn run(g: &Global, a: InitArgs) -> Result<()> {
    let cipher = match a.encrypt {
        Encrypt::Dgr => Some(CipherMode::Dgr),
        Encrypt::Msr => Some(CipherMode::Msr),
        Encrypt::Ct => Some(CipherMode::Ct),
        Encrypt::Off => None,
    };
    let w = ops::arch_init::run(
        g.location()?,
        &ops::arch_init::InitOptions {
            cipher,
            compression: a.compression,
            chunk_factor: a.chunk_factor,
        },
        &g.auth(),
        Some(g.meta_dir()),
    )?;
    let c = w.compression();
    g.say(format!(
        "Created archive {}: {}, {} KiB chunks, {}:{} compression.",
        w.url(),
        w.cipher_names().map_or("unencrypted", |n| n.0),
        w.chunksize() / 1024,
        c.kind.name(),
        c.level
    ));
    Ok(())
}
