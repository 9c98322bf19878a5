//! What the environment says about a run: the `WYNG_*` tuning variables (for tests and
//! benchmarks). Only the binary reads the environment; the library gets the values
//! ([`wyng::tuning::Tuning`]).

use wyng::tuning::Tuning;
use wyng::Result;

/// `WYNG_WORKERS` (1 to 256; else one per core), `WYNG_INDEX_BUDGET` (a size; else 1G),
/// `WYNG_DEDUP_MEMORY` (a size; else 256M, and a value that is not a size is an error),
/// `WYNG_CHECKPOINT` (a size; else what suits the destination), and in builds with the
/// `failpoints` feature `WYNG_FAILPOINT` (the crash tests' commit step to abort at).
pub fn tuning() -> Result<Tuning> {
    let size = |k: &str| std::env::var(k).ok().map(|v| wyng::size::parse(&v));
    Ok(Tuning {
        workers: std::env::var("WYNG_WORKERS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| (1..=256).contains(n)),
        index_budget: size("WYNG_INDEX_BUDGET").and_then(Result::ok),
        dedup_memory: size("WYNG_DEDUP_MEMORY").transpose()?,
        checkpoint: size("WYNG_CHECKPOINT")
            .and_then(Result::ok)
            .filter(|&b| b > 0),
        #[cfg(feature = "failpoints")]
        failpoint: std::env::var("WYNG_FAILPOINT").ok(),
    })
}

/// The AWS tools' variables an s3:// destination is configured by (the S3 convention).
pub fn aws() -> wyng::archive::AwsEnv {
    wyng::archive::AwsEnv(
        wyng::archive::AwsEnv::NAMES
            .iter()
            .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
            .collect(),
    )
}
