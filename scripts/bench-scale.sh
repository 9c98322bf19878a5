#!/usr/bin/env bash
# Scale rows: a large sparse volume (SIZE_GIB, default 1024) holding ~2 GiB of data (2,000
# extents of 1 MiB) in an archive with 64 KiB chunks. Wall time and peak RSS of each command,
# and the mount: first `ls`, `ls -l`, `cp --sparse=always` of a session, a SEEK_DATA/SEEK_HOLE
# walk, the mount's peak RSS. Cost must follow the data and the change, not the volume size.
# Usage: scripts/bench-scale.sh [SIZE_GIB] [EXTENTS] [SESSIONS]   (root for the mount rows;
#        with SESSIONS, sends more small changes until the volume has that many, then times
#        `ls -l` of the volume's directory in a fresh mount)
set -euo pipefail
cd "$(dirname "$0")/.."
gib="${1:-1024}"; extents="${2:-2000}"; sessions="${3:-0}"
. scripts/bench-prologue.sh scale
mnt="$dir/mnt"
cleanup() {
  mountpoint -q "$mnt" 2>/dev/null && { "$W" umount "$mnt" || umount -l "$mnt"; }
  remove_dir
}
trap cleanup EXIT
img="$dir/vol.img"; ar="file:$dir/archive"; meta="--meta-dir=$dir/meta"
"$B" sparse "$img" "$gib" "$extents" 1 7
imp="--import-other-from=vol:|:$img"
printf '== %s GiB sparse volume, %s MiB of data, 64 KiB chunks (%s chunk slots)\n' \
  "$gib" "$extents" "$((gib * 16384))"
printf '%-30s %8s %9s\n' "operation" "wall s" "RSS MiB"
row() { # name -- command...
  local name="$1"; shift 2
  /usr/bin/time -f "%e %M" -o "$dir/time" "$@" >/dev/null
  read -r wall rss < "$dir/time"
  awk -v n="$name" -v w="$wall" -v r="$rss" 'BEGIN { printf "%-30s %8.2f %9.1f\n", n, w, r / 1024 }'
}
"$W" arch-init --encrypt=off --chunk-factor=1 --dest="$ar" $meta >/dev/null
row "send (first)" -- "$W" send vol "$imp" --dest="$ar" $meta
"$B" poke "$img" 100 3
row "send (100 x 4 KiB changed)" -- "$W" send vol "$imp" --dest="$ar" $meta
row "send (unchanged)" -- "$W" send vol "$imp" --dest="$ar" $meta
row "verify" -- "$W" verify vol --dest="$ar" $meta
row "receive" -- "$W" receive vol -u --save-to="$dir/out.img" --dest="$ar" $meta
"$B" cmpsparse "$img" "$dir/out.img" && echo "(restored image identical)"
rm -f "$dir/out.img"
row "arch-check" -- "$W" arch-check --dest="$ar" $meta
row "list" -- "$W" list vol --dest="$ar" $meta
first=$("$W" list vol --json --dest="$ar" $meta | python3 -c 'import json,sys; print(sorted(json.load(sys.stdin)["volumes"]["vol"]["sessions"])[0][2:])')
row "prune oldest" -- "$W" prune vol --session="$first" -u --dest="$ar" $meta
if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ]; then
  mkdir -p "$mnt"
  "$W" mount "$mnt" --dest="$ar" $meta >/dev/null
  t() { local a b; a=$(date +%s.%N); "$@" >/dev/null; b=$(date +%s.%N); awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", b - a }'; }
  printf '%-30s %8s\n' "mount: first ls" "$(t ls "$mnt/vol")"
  printf '%-30s %8s\n' "mount: ls -l" "$(t ls -l "$mnt/vol")"
  printf '%-30s %8s\n' "mount: first byte" "$(t head -c 1 "$mnt/vol/latest.img")"
  walk=$(python3 - "$mnt/vol/latest.img" <<'PY'
import os, sys, time
f = os.open(sys.argv[1], os.O_RDONLY); size = os.fstat(f).st_size; off = 0; n = 0
t = time.time()
while True:
    try:
        d = os.lseek(f, off, os.SEEK_DATA)
    except OSError:
        break
    off = os.lseek(f, d, os.SEEK_HOLE); n += 1
print("%.2f %d" % (time.time() - t, n))
PY
)
  printf '%-30s %8s  (%s data runs)\n' "mount: SEEK_DATA/HOLE walk" ${walk}
  printf '%-30s %8s\n' "mount: cp --sparse=always" "$(t cp --sparse=always "$mnt/vol/latest.img" "$dir/copy.img")"
  "$B" cmpsparse "$img" "$dir/copy.img" && echo "(copy identical)"
  rm -f "$dir/copy.img"
  pid=$(pgrep -f "wyng mount $mnt" | head -1)
  printf '%-30s %8s %9.1f\n' "mount: peak RSS" "" "$(awk '/VmHWM/ {print $2 / 1024}' /proc/$pid/status)"
  "$W" umount "$mnt"
  if [ "$sessions" -gt 0 ]; then
    have=$("$W" list vol --dest="$ar" $meta | grep -c '^[0-9]')
    for i in $(seq "$have" $((sessions - 1))); do
      "$B" poke "$img" 10 $((2 * i + 101))
      "$W" send vol "$imp" --dest="$ar" $meta -q
    done
    n=$("$W" list vol --dest="$ar" $meta | grep -c '^[0-9]')
    "$W" mount "$mnt" --dest="$ar" $meta >/dev/null
    printf '%-30s %8s  (%s sessions)\n' "mount: ls -l, fresh mount" "$(t ls -l "$mnt/vol")" "$n"
    "$W" umount "$mnt"
  fi
fi
