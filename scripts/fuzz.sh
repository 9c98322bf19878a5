#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of archive input (src/fuzz/), with cargo-fuzz and
# libFuzzer under AddressSanitizer.
#
#   scripts/fuzz.sh [MINUTES]     (default 10: the total wall-clock time, shared by the targets)
#   FUZZ_TARGETS="salt volinfo" scripts/fuzz.sh 30     only these targets
#
# Each target runs with one libFuzzer process per core (-fork). Memory rules: no single
# allocation over 160 MiB (-malloc_limit_mb; every target caps its decompressed output at
# 1 MiB, so only an allocation sized by what the input claims can reach it: the one such
# allocation allowed is a zstd frame's window, capped at 2^27 bytes, the largest the format's
# compression levels write), 1 GiB RSS.
# Findings land in fuzz/artifacts/<target>/; copy one into tests/fixtures/fuzz/<target>/ once
# fixed, so `cargo test` replays it forever. The corpus (fuzz/corpus/) is kept between runs.
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain, or RUSTC_BOOTSTRAP.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
cores=$(nproc)
if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz.sh: cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
    exit 2
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
cargo run --quiet --release --example fuzzseeds -- tests/fixtures/wyng-v3 fuzz/corpus >/dev/null
for d in tests/fixtures/fuzz/*/; do
    [ -d "$d" ] && cp -n "$d"* "fuzz/corpus/$(basename "$d")/" 2>/dev/null || true
done
"${fuzz[@]}" build --release parsers
targets=${FUZZ_TARGETS:-$(ls fuzz/corpus)}
n=$(echo "$targets" | wc -w)
per=$(( MINUTES * 60 / n ))
[ "$per" -lt 10 ] && per=10
echo "fuzzing $n targets, ${per} s each on $cores cores (about $(( per * n * cores / 60 )) core-minutes)"
status=0
for t in $targets; do
    mkdir -p "fuzz/artifacts/$t"
    start=$(date +%s)
    set +e
    # Guest images (sparse-encoded filesystems, up to 256 KiB) are larger than the parsers' inputs.
    case $t in guest_*) max_len=262144 ;; *) max_len=65536 ;; esac
    WYNG_FUZZ_TARGET=$t "${fuzz[@]}" run --release parsers "fuzz/corpus/$t" -- \
        -fork="$cores" -ignore_crashes=1 -max_total_time="$per" -max_len="$max_len" \
        -malloc_limit_mb=160 -rss_limit_mb=1024 -timeout=10 \
        -artifact_prefix="fuzz/artifacts/$t/" >"fuzz/artifacts/$t/log" 2>&1
    set -e
    found=$(find "fuzz/artifacts/$t" -type f ! -name log | wc -l)
    execs=$(grep -o 'exec/s: [0-9]*' "fuzz/artifacts/$t/log" | tail -1 || true)
    cov=$(grep -o 'cov: [0-9]*' "fuzz/artifacts/$t/log" | tail -1 || true)
    corpus=$(ls "fuzz/corpus/$t" | wc -l)
    echo "$t: $(( $(date +%s) - start )) s, $cov, $execs, corpus $corpus, findings $found"
    [ "$found" -gt 0 ] && status=1
done
exit $status
