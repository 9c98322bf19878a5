//! How a run uses the machine: worker threads, memory and local disk budgets, how often a send
//! makes its work durable. The caller decides (the binary reads `WYNG_WORKERS`,
//! `WYNG_INDEX_BUDGET`, `WYNG_DEDUP_MEMORY`, `WYNG_CHECKPOINT`); the library never reads the
//! environment. An archive keeps the [`Tuning`] it was opened with (`OpenOptions::tuning`), so
//! every pipeline over it sees the same values. `None` everywhere ([`Default`]) is what suits
//! the machine and the destination.

/// What a run may use. Every field is a cap or an interval, never a correctness setting: any
/// value gives the same archive bytes.
#[derive(Clone, Debug, Default)]
pub struct Tuning {
    /// Worker threads of the data pipelines (1 to 256); `None`: one per core.
    pub workers: Option<usize>,
    /// Local disk the cached merged-view indexes of one archive may take; `None`: 1 GiB.
    pub index_budget: Option<u64>,
    /// Memory the deduplication index keeps before it spills to disk; `None`: 256 MiB.
    pub dedup_memory: Option<u64>,
    /// Bytes a send stores between checkpoints for a resume; `None`: what suits the
    /// destination.
    pub checkpoint: Option<u64>,
    /// Crash injection for the crash tests: the commit step at which the process aborts.
    /// Only builds with the `failpoints` feature have it (see `Archive::failpoint`).
    #[cfg(feature = "failpoints")]
    pub failpoint: Option<String>,
}

impl Tuning {
    /// The most worker threads a pipeline starts.
    pub const MAX_WORKERS: usize = 256;

    /// Worker threads for the data pipelines: [`Tuning::workers`] or one per core.
    pub fn workers(&self) -> usize {
        self.workers
            .filter(|n| (1..=Self::MAX_WORKERS).contains(n))
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            })
    }
}
