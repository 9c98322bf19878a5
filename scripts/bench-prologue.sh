# Sourced by the bench scripts as `. scripts/bench-prologue.sh NAME`, after `set -euo pipefail`
# and the `cd` to the checkout: builds wyng and the benchdata tool (release) and sets W and B;
# makes the work directory `dir`: BENCH_DIR/NAME when BENCH_DIR is set (kept afterwards), else
# a fresh /var/tmp/wyng-NAME.XXXXXX. `remove_dir` removes it unless it is to be kept.
cargo build --release --quiet --bin wyng --example benchdata
W="$PWD/target/release/wyng"
B="$PWD/target/release/examples/benchdata"
if [ -n "${BENCH_DIR:-}" ]; then
  dir="$BENCH_DIR/$1"; keep_dir=1; mkdir -p "$dir"
else
  dir="$(mktemp -d "/var/tmp/wyng-$1.XXXXXX")"; keep_dir=0
fi
remove_dir() { [ "$keep_dir" = 1 ] || rm -rf "$dir"; }
