#!/usr/bin/env bash
# The copy-on-write scale rows (root, btrfs-progs): a 1 TiB sparse volume holding ~2 GiB
# (2,000 extents of 1 MiB) on a Btrfs loop filesystem, 64 KiB chunks: the first send --local,
# an unchanged send --local and monitor (targets <= 1 s), and an incremental send --local after
# 100 changed 4 KiB blocks (target <= 3 s). Usage: scripts/bench-scale-cow.sh [SIZE_GIB]
set -euo pipefail
cd "$(dirname "$0")/.."
gib="${1:-1024}"
. scripts/bench-prologue.sh scale-cow
mnt="$dir/mnt"
cleanup() {
  sync
  for _ in 1 2 3 4 5; do umount "$mnt" 2>/dev/null && break; sleep 1; done
  mountpoint -q "$mnt" && umount -l "$mnt"
  remove_dir
}
trap cleanup EXIT
truncate -s 12G "$dir/btrfs.img"
mkfs.btrfs -q "$dir/btrfs.img" >/dev/null 2>&1
mkdir -p "$mnt"
mount -o loop "$dir/btrfs.img" "$mnt"
btrfs -q subvolume create "$mnt/pool"
meta="--meta-dir=$dir/meta"; ar="file:$dir/archive"
"$B" sparse "$mnt/pool/vol.img" "$gib" 2000 1 7
"$W" arch-init -q --encrypt=off --chunk-factor=1 --dest="$ar" $meta
row() { # name -- command...
  local name="$1"; shift 2
  /usr/bin/time -f "%e %M" -o "$dir/time" "$@" >/dev/null
  read -r wall rss < "$dir/time"
  awk -v n="$name" -v w="$wall" -v r="$rss" 'BEGIN { printf "%-34s %8.2f %9.1f\n", n, w, r / 1024 }'
}
echo "== ${gib} GiB sparse volume on Btrfs (--local), 2000 MiB of data, 64 KiB chunks"
printf '%-34s %8s %9s\n' "operation" "wall s" "RSS MiB"
row "send --local (first)" -- "$W" send -q vol.img --local="$mnt/pool" --dest="$ar" $meta
row "send --local (unchanged)" -- "$W" send -q vol.img --local="$mnt/pool" --dest="$ar" $meta
row "monitor (unchanged)" -- "$W" monitor -q vol.img --local="$mnt/pool" --dest="$ar" $meta
"$B" poke "$mnt/pool/vol.img" 100 3
row "monitor (100 x 4 KiB changed)" -- "$W" monitor -q vol.img --local="$mnt/pool" --dest="$ar" $meta
row "send --local (after monitor)" -- "$W" send -q vol.img --local="$mnt/pool" --dest="$ar" $meta
"$B" poke "$mnt/pool/vol.img" 100 5
row "send --local (100 x 4 KiB)" -- "$W" send -q vol.img --local="$mnt/pool" --dest="$ar" $meta
