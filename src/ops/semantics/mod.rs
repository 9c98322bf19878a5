//! What the commands mean, in-process on the in-memory destination ([`MemDest`]) with explicit
//! session names (no clock, no sleeps): histories of sends that read back exactly for every
//! compression and chunk size, session selection, prune and retention selections, dedup.
//! The command line's contract (exit codes, text, JSON, the independent checker on the files
//! written) stays in `tests/cli`; these tests are what used to be checked there through the
//! binary, one spawn and one second per session.

mod dedup;
mod history;
mod prune;

use std::path::Path;

use crate::archive::{
    Archive, Compression, Compressor, InitParams, Location, MemDest, WriteArchive,
};
use crate::format::Tag;
use crate::ops::faults::{auth, name};
use crate::ops::send::{self, SendOptions, SendRequest, VolumeReport};

/// A new unencrypted archive on `d`.
pub(super) fn init_with(
    d: &MemDest,
    meta: &Path,
    compression: Compression,
    level: i32,
    chunksize: u64,
) -> WriteArchive {
    Archive::init(
        Location::memory(d.clone()),
        &InitParams {
            compression: Compressor::new(compression, level).unwrap(),
            chunksize,
            cipher: None,
        },
        &auth(),
        Some(meta),
    )
    .unwrap()
}

/// Sends `vols` (name, image) as session `s` (see [`name`]); returns the volumes' reports.
pub(super) fn send_as(
    wa: &mut WriteArchive,
    files: &Path,
    s: u32,
    vols: &[(&str, &[u8])],
    opts: SendOptions,
) -> Vec<VolumeReport> {
    let reqs: Vec<SendRequest> = vols
        .iter()
        .map(|(vol, data)| {
            let source = files.join(format!("{}.src", vol.replace('/', "_")));
            std::fs::write(&source, data).unwrap();
            SendRequest {
                volume: vol.to_string(),
                source,
                reflink: false,
            }
        })
        .collect();
    send::run(
        wa,
        &reqs,
        &SendOptions {
            session: Some(name(s)),
            ..opts
        },
    )
    .unwrap_or_else(|e| panic!("send {s}: {e}"))
}

pub(super) fn tag(id: &str, desc: &str) -> Tag {
    Tag::new(id, desc).unwrap()
}

/// A deterministic image builder (the same generator as `tests/cli/common.rs`'s `Image`):
/// random, text-like and zero regions.
pub(super) struct Img {
    pub data: Vec<u8>,
    rng: u64,
}

impl Img {
    pub fn new(seed: u64) -> Img {
        Img {
            data: Vec::new(),
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    pub fn next(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn random(&mut self, len: usize) -> &mut Self {
        for _ in 0..len / 8 {
            let v = self.next();
            self.data.extend_from_slice(&v.to_le_bytes());
        }
        for _ in 0..len % 8 {
            let v = self.next() as u8;
            self.data.push(v);
        }
        self
    }

    pub fn text(&mut self, len: usize) -> &mut Self {
        let start = self.data.len();
        let mut i = 0u64;
        while self.data.len() - start < len {
            let line = format!(
                "{i:08} the quick brown fox jumps over the lazy dog {}\n",
                self.next() % 1000
            );
            self.data.extend_from_slice(line.as_bytes());
            i += 1;
        }
        self.data.truncate(start + len);
        self
    }

    pub fn zeros(&mut self, len: usize) -> &mut Self {
        self.data.resize(self.data.len() + len, 0);
        self
    }

    /// Overwrites `len` bytes at `off` with random data (growing the image if needed).
    pub fn scribble(&mut self, off: usize, len: usize) -> &mut Self {
        if self.data.len() < off + len {
            self.data.resize(off + len, 0);
        }
        for i in 0..len {
            self.data[off + i] = self.next() as u8;
        }
        self
    }
}
