#!/usr/bin/env bash
# NBD serving (docs/serve.md), side by side in one run on the same 1 GiB session:
#  * `wyng serve`: nbdcopy of the session (to null:), random 4 KiB reads with 1 and 4
#    connections (libnbd's Python binding), time from `wyng serve` to the first byte read;
#  * `wyng mount`: dd bs=1M of the session's file;
#  * `qemu-nbd -r` serving the mount's file: the same nbdcopy, random reads and first byte.
# Targets (issue 25): nbdcopy from wyng serve >= the mount's dd; >= 5,000 random reads/s with
# 4 connections. Each server starts fresh (cold chunk cache); the archive's files are in the
# page cache.
# Usage: scripts/bench-nbd.sh [SIZE_MIB]   (default 1024; BENCH_DIR as in bench.sh). Needs
# nbdcopy (libnbd-bin), python3-libnbd, qemu-nbd (qemu-utils); the mount rows need root and FUSE.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib="${1:-1024}"
for p in nbdcopy qemu-nbd; do
  command -v $p >/dev/null || { echo "bench-nbd.sh: $p is not installed" >&2; exit 2; }
done
py=/usr/bin/python3
$py -c 'import nbd' 2>/dev/null || { echo "bench-nbd.sh: python3-libnbd is not installed" >&2; exit 2; }
. scripts/bench-prologue.sh nbd
mnt="$dir/mnt"; sock="$dir/wyng.sock"; qsock="$dir/qemu.sock"
serve_pid=""; qemu_pid=""
stop_serve() { [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && while kill -0 "$serve_pid" 2>/dev/null; do sleep 0.05; done; serve_pid=""; }
stop_qemu() { [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null; qemu_pid=""; }
cleanup() {
  stop_serve || true; stop_qemu || true
  mountpoint -q "$mnt" 2>/dev/null && "$W" umount "$mnt" || true
  remove_dir
}
trap cleanup EXIT
img="$dir/vol.img"; ar="$dir/archive"; meta="--meta-dir=$dir/meta"; dest="--dest=file:$ar"
rm -rf "$ar" "$dir/meta"
"$B" gen "$img" "$size_mib"
"$W" arch-init --encrypt=off $dest $meta >/dev/null
"$W" send vol "--import-other-from=vol:|:$img" $dest $meta -q
cat "$ar"/Vol_*/S_*/*/* >/dev/null 2>&1 || true

# Random 4 KiB reads: CONNECTIONS threads, one connection each, for SECONDS; prints reads/s.
cat > "$dir/randread.py" <<'EOF'
import random, sys, threading, time, nbd
uri, conns, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
counts = [0] * conns
def reader(i):
    h = nbd.NBD(); h.connect_uri(uri)
    blocks = h.get_size() // 4096
    r = random.Random(42 + i); end = time.monotonic() + seconds
    while time.monotonic() < end:
        h.pread(4096, r.randrange(blocks) * 4096); counts[i] += 1
    h.shutdown()
ts = [threading.Thread(target=reader, args=(i,)) for i in range(conns)]
t0 = time.monotonic(); [t.start() for t in ts]; [t.join() for t in ts]
print(f"{sum(counts) / (time.monotonic() - t0):.0f}")
EOF
# Seconds from T0 (date +%s.%N) to the first byte of URI.
first_byte() { $py -c 'import nbd, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1]); h.pread(1, 0)
print(f"{time.time() - float(sys.argv[2]):.3f}")' "$1" "$2"; }
wyng_up() { serve_pid=$("$W" serve --unix="$sock" $dest $meta --json | $py -c 'import json,sys; print(json.load(sys.stdin)["pid"])'); }
qemu_up() {
  qemu-nbd -r -t -f raw --shared=16 --socket="$qsock" "$mnt/vol/latest.img" & qemu_pid=$!
  while [ ! -S "$qsock" ]; do sleep 0.02; done
}
rate() { awk -v a="$1" -v b="$2" -v m="$size_mib" 'BEGIN { w = b - a; printf "%8.2f %9.0f", w, m / w }'; }
now() { date +%s.%N; }
wuri="nbd+unix:///vol?socket=$sock"; quri="nbd+unix:///?socket=$qsock"
can_mount=0
[ "$(id -u)" = 0 ] && [ -e /dev/fuse ] && can_mount=1

echo "== NBD: a ${size_mib} MiB session (30% random, 30% text, 40% holes), $(nproc) cores"
printf '%-34s %8s %9s %s\n' "operation" "wall s" "MiB/s" ""
wyng_up
t0=$(now); nbdcopy "$wuri" null:; t1=$(now)
printf '%-34s %s\n' "nbdcopy <- wyng serve" "$(rate "$t0" "$t1")"
serve_mibs=$(awk -v a="$t0" -v b="$t1" -v m="$size_mib" 'BEGIN { print m / (b - a) }')
rss=$(awk '/VmHWM/ {print $2}' "/proc/$serve_pid/status")
stop_serve
echo "  (wyng serve peak RSS $((rss / 1024)) MiB, chunk cache 256 MiB)"
if [ $can_mount = 1 ]; then
  mkdir -p "$mnt"
  "$W" mount "$mnt" $dest $meta >/dev/null
  t0=$(now); dd if="$mnt/vol/latest.img" of=/dev/null bs=1M status=none; t1=$(now)
  printf '%-34s %s\n' "dd bs=1M <- wyng mount" "$(rate "$t0" "$t1")"
  dd_mibs=$(awk -v a="$t0" -v b="$t1" -v m="$size_mib" 'BEGIN { print m / (b - a) }')
  "$W" umount "$mnt"
  "$W" mount "$mnt" $dest $meta >/dev/null
  qemu_up
  t0=$(now); nbdcopy "$quri" null:; t1=$(now)
  printf '%-34s %s\n' "nbdcopy <- qemu-nbd -r <- mount" "$(rate "$t0" "$t1")"
  stop_qemu; "$W" umount "$mnt"
  awk -v s="$serve_mibs" -v d="$dd_mibs" 'BEGIN { printf "nbdcopy from wyng serve / mount dd: %.2fx (target >= 1x: %s)\n", s / d, (s >= d) ? "met" : "NOT met" }'
fi

echo
printf '%-34s %12s %12s\n' "random 4 KiB reads/s (5 s each)" "1 connection" "4 connections"
wyng_up
one=$($py "$dir/randread.py" "$wuri" 1 5); four=$($py "$dir/randread.py" "$wuri" 4 5)
stop_serve
printf '%-34s %12s %12s\n' "wyng serve" "$one" "$four"
wyng_four=$four
if [ $can_mount = 1 ]; then
  "$W" mount "$mnt" $dest $meta >/dev/null
  qemu_up
  one=$($py "$dir/randread.py" "$quri" 1 5); four=$($py "$dir/randread.py" "$quri" 4 5)
  stop_qemu; "$W" umount "$mnt"
  printf '%-34s %12s %12s\n' "qemu-nbd -r <- mount" "$one" "$four"
fi
awk -v f="$wyng_four" 'BEGIN { printf "wyng serve with 4 connections: target >= 5000/s: %s\n", (f >= 5000) ? "met" : "NOT met" }'

echo
t0=$(now); wyng_up; tb=$(first_byte "$wuri" "$t0"); stop_serve
printf '%-34s %s s\n' "first byte: wyng serve" "$tb"
if [ $can_mount = 1 ]; then
  t0=$(now); "$W" mount "$mnt" $dest $meta >/dev/null; qemu_up; tb=$(first_byte "$quri" "$t0")
  stop_qemu; "$W" umount "$mnt"
  printf '%-34s %s s\n' "first byte: mount + qemu-nbd -r" "$tb"
fi
