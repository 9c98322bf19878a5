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

/// The image builder the CLI tests use too (`tests/support/image.rs`).
#[allow(dead_code)]
#[path = "../../../tests/support/image.rs"]
mod image;
pub(super) use image::{round_trip_history, Image};
