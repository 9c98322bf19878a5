#!/usr/bin/env bash
# Resumed and multi-destination sends, against a plain send of the same image in the same run:
#  * a first send killed (SIGKILL) at about 50% of what it stores, then the resumed send: its
#    time and the bytes it stored, versus a full send;
#  * one send to two archives (--dest=A --dest=B) versus two single sends, first (full) and
#    after 1% changed.
# Usage: scripts/bench-resume.sh [SIZE_MIB]   (default 1024; BENCH_DIR as in bench.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib="${1:-1024}"
. scripts/bench-prologue.sh resume
trap remove_dir EXIT
img="$dir/vol.img"; meta="--meta-dir=$dir/meta"
rm -rf "$dir"/r-* "$dir/meta"
"$B" gen "$img" "$size_mib"
cat "$img" >/dev/null
imp="--import-other-from=vol:|:$img"
init() { "$W" arch-init --encrypt=off --dest="file:$1" $meta >/dev/null; }
# Runs a send with --json; prints "wall bytes_stored bytes_reused" (summed over destinations).
timed() {
  local t0 t1
  t0=$(date +%s.%N)
  "$W" send vol "$imp" $meta --json "$@" > "$dir/out.json" || true
  t1=$(date +%s.%N)
  python3 - "$t0" "$t1" "$dir/out.json" <<'EOF'
import json, sys
t0, t1, f = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
j = json.load(open(f))
vols = [v for d in j["destinations"] for v in d["volumes"]] if isinstance(j, dict) else j
print(f"{t1 - t0:.2f} {sum(v['bytes_stored'] for v in vols)} {sum(v['bytes_reused'] for v in vols)}")
EOF
}
staged() { du -sb "$1"/Vol_*/S-tmp 2>/dev/null | awk '{s += $1} END {print s + 0}'; }

echo "== resume and multi-destination sends; image ${size_mib} MiB, $(nproc) cores, page cache warm"
printf '%-32s %8s %12s %12s %s\n' "operation" "wall s" "MiB stored" "MiB reused" "vs full send"
init "$dir/r-full"
read -r fw fb _ < <(timed --dest="file:$dir/r-full")
printf '%-32s %8.2f %12.0f %12s\n' "send (full)" "$fw" "$((fb >> 20))" "-"
# The same send killed at half of what the full send stored.
init "$dir/r-kill"
"$W" send vol "$imp" --dest="file:$dir/r-kill" $meta -q & pid=$!
while [ "$(staged "$dir/r-kill")" -lt $((fb / 2)) ] && kill -0 $pid 2>/dev/null; do sleep 0.02; done
kill -9 $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
had=$(staged "$dir/r-kill")
read -r rw rb rr < <(timed --dest="file:$dir/r-kill")
awk -v w="$rw" -v b="$rb" -v r="$rr" -v fw="$fw" -v fb="$fb" -v h="$had" 'BEGIN {
  printf "%-32s %8.2f %12.0f %12.0f %.0f%% of the time, %.0f%% of the bytes (killed with %.0f MiB staged)\n",
    "send resumed after a kill at 50%", w, b / 1048576, r / 1048576, 100 * w / fw, 100 * b / fb, h / 1048576 }'
"$W" receive vol -u -q --save-to="$dir/out.img" --dest="file:$dir/r-kill" $meta
cmp "$img" "$dir/out.img" && echo "(resumed session restores identical)"

# Two destinations in one run versus one after the other.
for a in r-a r-b r-c r-d; do init "$dir/$a"; done
read -r w2 b2 _ < <(timed --dest="file:$dir/r-a" --dest="file:$dir/r-b")
read -r wc _ _ < <(timed --dest="file:$dir/r-c")
read -r wd _ _ < <(timed --dest="file:$dir/r-d")
awk -v a="$w2" -v c="$wc" -v d="$wd" 'BEGIN {
  printf "%-32s %8.2f %12s %12s two single sends: %.2f s (%.2fx)\n", "send to 2 archives (full)", a, "", "", c + d, (c + d) / a }'
"$B" scribble "$img" 1 7 >/dev/null
cat "$img" >/dev/null
read -r w2 _ _ < <(timed --dest="file:$dir/r-a" --dest="file:$dir/r-b")
read -r wc _ _ < <(timed --dest="file:$dir/r-c")
read -r wd _ _ < <(timed --dest="file:$dir/r-d")
awk -v a="$w2" -v c="$wc" -v d="$wd" 'BEGIN {
  printf "%-32s %8.2f %12s %12s two single sends: %.2f s (%.2fx)\n", "send to 2 archives (1% changed)", a, "", "", c + d, (c + d) / a }'
for a in r-a r-b; do
  "$W" receive vol -u -q --save-to="$dir/out.img" --dest="file:$dir/$a" $meta
  cmp "$img" "$dir/out.img"
done
echo "(both archives restore identical)"
