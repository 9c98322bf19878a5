//! What the environment says about a run: the `WYNG_*` tuning variables (for tests and
//! benchmarks). Only the binary reads the environment; the library gets the values
//! ([`wyng::tuning::Tuning`]).

use wyng::tuning::Tuning;
use wyng::{Error, Result};

/// `WYNG_WORKERS` (1 to [`Tuning::MAX_WORKERS`]; unset: one per core), `WYNG_INDEX_BUDGET`
/// (a size; unset: 1G), `WYNG_DEDUP_MEMORY` (a size; unset: 256M), `WYNG_CHECKPOINT` (a size,
/// 0 or unset: what suits the destination), and in builds with the `failpoints` feature
/// `WYNG_FAILPOINT` (the crash tests' commit step to abort at). A value that is set but cannot
/// be used is an error: a benchmark or test that sets one must not run with another.
pub fn tuning() -> Result<Tuning> {
    let size = |k: &str| -> Result<Option<u64>> {
        std::env::var(k)
            .ok()
            .map(|v| wyng::size::parse(&v).map_err(|e| Error::Usage(format!("{k}: {e}"))))
            .transpose()
    };
    let workers = match std::env::var("WYNG_WORKERS") {
        Err(_) => None,
        Ok(v) => Some(
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=Tuning::MAX_WORKERS).contains(n))
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "WYNG_WORKERS={v}: give a number of threads from 1 to {}",
                        Tuning::MAX_WORKERS
                    ))
                })?,
        ),
    };
    Ok(Tuning {
        workers,
        index_budget: size("WYNG_INDEX_BUDGET")?,
        dedup_memory: size("WYNG_DEDUP_MEMORY")?,
        checkpoint: size("WYNG_CHECKPOINT")?.filter(|&b| b > 0),
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
