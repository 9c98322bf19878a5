#!/usr/bin/env bash
# LVM thin and ZFS in a VM (scripts/vm-run.sh; scripts/vm-install.sh installs it): a first send
# and an incremental after 100 random 4 KiB writes of a GIB GiB volume (default 4), for wyng and,
# with WYNG_ORIGINAL=/path/to/the/original/wyng, the original Wyng on the same thin pool. TCG is
# slow in absolute terms, so each row also gives `dd` reading the volume / the row (a ratio).
# Usage: scripts/bench-vm.sh [GIB]
set -euo pipefail
cd "$(dirname "$0")/.."
gib="${1:-4}"
. scripts/bench-prologue.sh vm
trap remove_dir EXIT
echo "== LVM thin and ZFS in a VM (TCG, 2 vCPUs); volume ${gib} GiB, half random data"
[ -n "${WYNG_ORIGINAL:-}" ] || echo "(the original Wyng: skipped, set WYNG_ORIGINAL=/path/to/wyng to include it)"
rc=0
WYNG_BIN="$W" BENCH_GIB="$gib" VM_TIMEOUT=3600 scripts/vm-run.sh tests/vm/bench.sh "$dir/out" $((gib * 5 + 4)) || rc=$?
if [ "$rc" -eq 3 ]; then echo "bench-vm: skipped (no VM here: scripts/vm-install.sh)"; exit 0; fi
printf '%-34s %8s %9s %9s\n' "operation" "wall s" "MiB/s" "vs dd"
cat "$dir/out/rows"
[ "$rc" -eq 0 ] || { tail -30 "$dir/out/guest.log" "$dir/out/bench.err" 2>/dev/null; exit "$rc"; }
