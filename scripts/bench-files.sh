#!/usr/bin/env bash
# `wyng files` rows: wall time and peak RSS (GNU time) of each, every command a fresh process
# (an empty chunk cache: "cold"; the page cache is warm).
#  * a 1 TiB sparse ext4 volume (mke2fs -d, lazy inode tables) holding a 1 GiB file, a
#    directory of 2,000 files and a directory nested 24 deep, in one session:
#    `files ls /`, `files ls` of the deepest directory (target <= 1 s each);
#    `files get` of the 1 GiB file against `dd` of the same bytes from the mount: the session
#    image (raw chunk reads) and the file through `mount --files` (target >= 70% of dd);
#  * a 1 GiB ext4 volume of 5,000 files with 50 sessions (a few files changed between each,
#    through debugfs): `files find` over all 50 against over one (target <= 3x: what sessions
#    share is decoded once).
# Usage: scripts/bench-files.sh   (root and /dev/fuse for the mount rows; BENCH_DIR as in bench.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-prologue.sh files
mnt="$dir/mnt"
cleanup() {
  mountpoint -q "$mnt" 2>/dev/null && { "$W" umount "$mnt" || umount -l "$mnt"; }
  remove_dir
}
trap cleanup EXIT
meta="--meta-dir=$dir/meta"
rm -rf "$dir/archive" "$dir/archive2" "$dir/meta" "$dir/tree" "$dir/tree2" "$dir/out"
row() { # name -- command...
  local name="$1"; shift 2
  /usr/bin/time -f "%e %M" -o "$dir/time" "$@" >/dev/null
  read -r wall rss < "$dir/time"
  awk -v n="$name" -v w="$wall" -v r="$rss" 'BEGIN { printf "%-40s %8.2f %9.1f\n", n, w, r / 1024 }'
}
wall() { awk '{print $1}' "$dir/time"; }

# The 1 TiB volume.
python3 - "$dir/tree" <<'PY'
import os, sys
root = sys.argv[1]
os.makedirs(f"{root}/many")
for i in range(2000):
    with open(f"{root}/many/file{i:05}.txt", "w") as f:
        f.write(f"file {i}\n" * 20)
deep = root
for i in range(24):
    deep = f"{deep}/d{i}"
os.makedirs(deep)
with open(f"{deep}/leaf.txt", "w") as f:
    f.write("leaf\n")
PY
head -c 1G /dev/urandom > "$dir/tree/big.bin"
deep=$(cd "$dir/tree" && find . -name leaf.txt | sed 's|^\.||; s|/leaf.txt$||')
img="$dir/vol.img"; rm -f "$img"; truncate -s 1T "$img"
mke2fs -q -F -t ext4 -E lazy_itable_init=1,lazy_journal_init=1 -d "$dir/tree" "$img"
rm -rf "$dir/tree"
ar="file:$dir/archive"
"$W" arch-init --encrypt=off --dest="$ar" $meta >/dev/null
"$W" send vol "--import-other-from=vol:|:$img" --dest="$ar" $meta -q
rm -f "$img"
echo "== 1 TiB sparse ext4 volume (1 GiB file, 2,000 files in one directory, 24 nested), 256 KiB chunks"
printf '%-40s %8s %9s\n' "operation" "wall s" "RSS MiB"
row "files ls / (cold)" -- "$W" files ls vol / -l --dest="$ar" $meta
row "files ls /many (2,000 entries, cold)" -- "$W" files ls vol /many -l --dest="$ar" $meta
row "files ls deepest (24 deep, cold)" -- "$W" files ls vol "$deep" -l --dest="$ar" $meta
row "files get 1 GiB file" -- "$W" files get vol /big.bin --to="$dir/out" --dest="$ar" $meta -q
get=$(wall)
rm -rf "$dir/out"
row "files cat 1 GiB file" -- "$W" files cat vol /big.bin --dest="$ar" $meta
if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ]; then
  mkdir -p "$mnt"
  "$W" mount "$mnt" --files --dest="$ar" $meta >/dev/null
  # The file's bytes in the session image, read raw (from its first block on).
  first=$(debugfs -R "bmap /big.bin 0" "$mnt/vol/latest.img" 2>/dev/null | tail -1)
  t0=$(date +%s.%N); dd if="$mnt/vol/latest.img" of=/dev/null bs=1M skip=$((first * 4096 / 1048576)) count=1024 status=none; t1=$(date +%s.%N)
  dd_img=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  t0=$(date +%s.%N); dd if="$mnt/vol/latest.files/big.bin" of=/dev/null bs=1M status=none; t1=$(date +%s.%N)
  dd_files=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  pid=$(pgrep -f "wyng mount $mnt" | head -1)
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  "$W" umount "$mnt"
  awk -v g="$get" -v d="$dd_img" -v f="$dd_files" -v r="$rss" 'BEGIN {
    printf "%-40s %8.2f %9s %.0f MiB/s\n", "dd 1 GiB of the session image (mount)", d, "", 1024 / d;
    printf "%-40s %8.2f %9.1f %.0f MiB/s (mount peak RSS)\n", "dd big.bin via mount --files", f, r / 1024, 1024 / f;
    printf "%-40s %.0f%% of dd of the image, %.0f%% of dd via --files (target >= 70%%)\n", "files get vs dd", 100 * d / g, 100 * f / g }'
fi

# 50 sessions of a smaller volume.
python3 - "$dir/tree2" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(50):
    os.makedirs(f"{root}/etc{d}")
    for i in range(100):
        ext = "conf" if i == 0 else "txt"
        with open(f"{root}/etc{d}/f{i:03}.{ext}", "w") as f:
            f.write(f"setting {d} {i}\n" * 30)
PY
img2="$dir/vol2.img"; rm -f "$img2"; truncate -s 1G "$img2"
mke2fs -q -F -t ext4 -d "$dir/tree2" "$img2"
ar2="file:$dir/archive2"
"$W" arch-init --encrypt=off --dest="$ar2" $meta >/dev/null
imp2="--import-other-from=vol2:|:$img2"
"$W" send vol2 "$imp2" --dest="$ar2" $meta -q
for s in $(seq 2 50); do
  printf 'changed in session %s\n' "$s" > "$dir/new.conf"
  d=$(( (s * 7) % 50 ))
  debugfs -w -R "rm /etc$d/f000.conf" "$img2" >/dev/null 2>&1
  debugfs -w -R "write $dir/new.conf /etc$d/f000.conf" "$img2" >/dev/null 2>&1
  "$W" send vol2 "$imp2" --dest="$ar2" $meta -q
done
rm -rf "$dir/tree2" "$img2"
sessions=$("$W" list vol2 --dest="$ar2" $meta | grep -c '^[0-9]' || true)
last=$("$W" list vol2 --json --dest="$ar2" $meta | python3 -c 'import json,sys; print(sorted(json.load(sys.stdin)["volumes"]["vol2"]["sessions"])[-1][2:])')
echo
echo "== 1 GiB ext4 volume, 5,000 files, $sessions sessions (one *.conf changed between each)"
printf '%-40s %8s %9s\n' "operation" "wall s" "RSS MiB"
row "files find '*.conf' (1 session)" -- "$W" files find vol2 '*.conf' --session="$last" --dest="$ar2" $meta
one=$(wall)
row "files find '*.conf' ($sessions sessions)" -- "$W" files find vol2 '*.conf' --dest="$ar2" $meta
all=$(wall)
awk -v a="$all" -v o="$one" -v n="$sessions" 'BEGIN { if (o < 0.001) o = 0.001; printf "%-40s %.1fx one session (target <= 3x)\n", "files find: " n " sessions", a / o }'
