//! The black-box tests: every command run as users run it (the `wyng` binary, real files,
//! real loop-device filesystems, a FUSE mount, a private sshd), plus golden tests against the
//! original Wyng's archives (`tests/fixtures/wyng-v3`) judged by the independent checker
//! (`../shared/tools/wyng-v3-check`, where it exists). One test binary: one link, shared
//! helpers in `common`.

mod common;

mod check;
mod config;
mod conformance;
mod copy;
mod crash;
mod daily;
mod dedup;
mod diff;
mod encryption;
mod errors;
mod files;
mod golden;
mod hostile;
mod layers;
mod mount;
mod multi;
mod prune;
mod reflink;
mod resume;
mod retention;
mod roundtrip;
mod s3;
mod safety;
mod scale;
mod serve;
mod ssh;
mod vm;
