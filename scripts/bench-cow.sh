#!/usr/bin/env bash
# Copy-on-write rows (root, btrfs-progs): on a Btrfs loop filesystem, an incremental send from
# extent maps (--local) against a full-scan incremental of the same change
# (--import-other-from), the same change on a larger volume, and monitor of an unchanged volume.
# Usage: scripts/bench-cow.sh [SIZE_MIB] [BIG_MIB]   (defaults 4096 16384; page cache warm)
set -euo pipefail
cd "$(dirname "$0")/.."
small="${1:-4096}"; big="${2:-16384}"
. scripts/bench-prologue.sh cow
mnt="$dir/mnt"
cleanup() {
  sync
  # Btrfs may still be dropping deleted snapshots' extents: give it a moment before forcing.
  for _ in 1 2 3 4 5; do umount "$mnt" 2>/dev/null && break; sleep 1; done
  mountpoint -q "$mnt" && umount -l "$mnt"
  for _ in 1 2 3; do remove_dir && break; sleep 1; done
}
trap cleanup EXIT
# The images are 60% data; room for both, their snapshots' divergence and Btrfs metadata.
truncate -s "$(( (small + big) * 3 / 2 + 2048 ))M" "$dir/btrfs.img"
mkfs.btrfs -q "$dir/btrfs.img" >/dev/null 2>&1
mkdir -p "$mnt"
mount -o loop "$dir/btrfs.img" "$mnt"
btrfs -q subvolume create "$mnt/pool"
meta="--meta-dir=$dir/meta"
secs() { /usr/bin/time -f "%e" -o "$dir/t" "$@" >/dev/null; cat "$dir/t"; }

# Prints: cow_s scan_s monitor_unchanged_s cow_clustered_s scan_clustered_s
measure() { # size_mib blocks_to_rewrite
  local size=$1 blocks=$2 name="v$1.img"
  local cow="file:$dir/cow-$1" scan="file:$dir/scan-$1" vol="$mnt/pool/v$1.img"
  "$B" gen "$vol" "$size" >/dev/null
  "$W" arch-init -q --encrypt=off --dest="$cow" $meta
  "$W" arch-init -q --encrypt=off --dest="$scan" $meta
  "$W" send -q "$name" --local="$mnt/pool" --dest="$cow" $meta
  "$W" send -q "$name" --import-other-from="$name:|:$vol" --dest="$scan" $meta
  local pct; pct=$(awk -v b="$blocks" -v s="$size" 'BEGIN { printf "%.6f", b * 100 / (s * 256) }')
  "$B" scribble "$vol" "$pct" 7 >/dev/null
  cat "$vol" >/dev/null
  local c s m
  c=$(secs "$W" send -q "$name" --local="$mnt/pool" --dest="$cow" $meta)
  s=$(secs "$W" send -q "$name" --import-other-from="$name:|:$vol" --dest="$scan" $meta)
  m=$(secs "$W" monitor -q "$name" --local="$mnt/pool" --dest="$cow" $meta)
  # The same amount of data rewritten in 1 MiB runs (how filesystems in guests tend to write).
  pct=$(awk -v b="$blocks" -v s="$size" 'BEGIN { printf "%.6f", b * 4 / 1024 * 100 / s }')
  "$B" scribble "$vol" "$pct" 8 1024 >/dev/null
  cat "$vol" >/dev/null
  local cc sc
  cc=$(secs "$W" send -q "$name" --local="$mnt/pool" --dest="$cow" $meta)
  sc=$(secs "$W" send -q "$name" --import-other-from="$name:|:$vol" --dest="$scan" $meta)
  echo "$c $s $m $cc $sc"
  rm -f "$vol" "$mnt/pool"/sn*"_"*.wyng1
}

blocks=$(( small * 256 / 100 ))   # 1% of the small volume's 4 KiB blocks
echo "== $(nproc) cores; Btrfs on a loop file; rewriting $blocks random 4 KiB blocks"
read -r c4 s4 m4 cc4 sc4 < <(measure "$small" "$blocks")
read -r c16 s16 m16 cc16 sc16 < <(measure "$big" "$blocks")
printf '%-40s %8s %8s\n' "" "${small} MiB" "${big} MiB"
printf '%-40s %8.2f %8.2f\n' "send --local (extent maps), s" "$c4" "$c16"
printf '%-40s %8.2f %8.2f\n' "send, full-scan incremental, s" "$s4" "$s16"
printf '%-40s %8.2f %8.2f\n' "monitor, unchanged volume, s" "$m4" "$m16"
printf '%-40s %8.2f %8.2f\n' "same bytes in 1 MiB runs: send --local" "$cc4" "$cc16"
printf '%-40s %8.2f %8.2f\n' "same bytes in 1 MiB runs: full scan" "$sc4" "$sc16"
awk -v c4="$c4" -v s4="$s4" -v c16="$c16" -v s16="$s16" 'BEGIN {
  if (c4 < 0.01) c4 = 0.01; if (c16 < 0.01) c16 = 0.01;
  printf "extent maps vs full scan: %.1fx (%s MiB), %.1fx (%s MiB); %s MiB / %s MiB time: %.2f\n",
    s4 / c4, "'"$small"'", s16 / c16, "'"$big"'", "'"$big"'", "'"$small"'", c16 / c4 }'
awk -v c="$cc4" -v s="$sc4" 'BEGIN { if (c < 0.01) c = 0.01; printf "1 MiB runs: extent maps vs full scan %.1fx\n", s / c }'
echo "targets: >= 10x faster than the full scan; the larger volume <= 1.5x the time; monitor < 0.5 s"
