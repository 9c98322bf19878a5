# Benchmark scenario (scripts/bench-vm.sh runs it in the VM): a first send and an incremental
# (100 random 4 KiB writes) of a BENCH_GIB GiB volume (default 4), half random data and half
# never written, from an LVM thin pool and from a ZFS zvol; and, with WYNG_ORIGINAL set, the
# original Wyng on the same thin volume. TCG is slow in absolute terms: every row is also given as
# a ratio to `dd` reading the same volume in the same VM.
set -u
W=${WYNG_BIN:-$WYNG_ROOT/target/release/wyng}
G=${BENCH_GIB:-4}
modprobe -a virtio_blk dm_thin_pool zfs || exit 1
export LVM_SUPPRESS_FD_WARNINGS=1
# The pool, the zpool and an ext4 for the archives (the guest's /tmp is a small tmpfs).
sfdisk -q "$DISK" <<PARTS || exit 1
,$((G + 1))G
,$((G + 1))G
,
PARTS
udevadm settle
mkfs.ext4 -q "${DISK}3" && mkdir -p /tmp/arch && mount "${DISK}3" /tmp/arch || exit 1
pvcreate -q "${DISK}1" && vgcreate -q bench "${DISK}1" &&
  lvcreate -q -T -L "$G"G --chunksize 64k bench/pool && lvcreate -q -V "$G"G -T bench/pool -n vol || exit 1
zpool create -f -o cachefile=none -m none -O compression=off tank "${DISK}2" &&
  zfs create -o mountpoint=none tank/vms && zfs create -s -V "$G"G -o volblocksize=64K tank/vms/vol || exit 1
udevadm settle
rows=$OUT/rows
: >"$rows"
secs() { local t0=$(date +%s.%N); "$@" >/dev/null 2>>"$OUT/bench.err"; local rc=$?; awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { print a - b }'; return $rc; }
row() { # name seconds dd_seconds [exit code of the timed command]
  if [ "${4:-0}" -ne 0 ]; then
    printf '%-34s FAILED (exit %s; see below)\n' "$1" "$4" >>"$rows"
    failed=1
    return
  fi
  awk -v n="$1" -v s="$2" -v d="$3" -v g="$G" 'BEGIN { printf "%-34s %8.1f %9.1f %8.2fx\n", n, s, g * 1024 / s, d / s }' >>"$rows"
}
failed=0
# Times a command (its output to bench.err); a failure is a FAILED row, never a fast one.
timed() { # name dd_seconds command...
  local name=$1 d=$2 t rc=0
  shift 2
  t=$(secs "$@") || rc=$?
  row "$name" "$t" "$d" "$rc"
}
for kind in lvm zfs; do
  if [ $kind = lvm ]; then dev=/dev/bench/vol; local=bench/pool; else dev=/dev/zvol/tank/vms/vol; local=zfs:tank/vms; fi
  dd if=/dev/urandom of=$dev bs=1M count=$((G * 512)) status=none
  sync
  d=$(secs dd if=$dev of=/dev/null bs=1M)
  row "$kind: dd read of the volume" "$d" "$d"
  dest=file:/tmp/arch/$kind
  "$W" arch-init --dest=$dest --encrypt=off --meta-dir=/tmp/meta -q 2>>"$OUT/bench.err"
  timed "$kind: wyng first send" "$d" "$W" send vol --local=$local --dest=$dest --meta-dir=/tmp/meta -q
  for i in $(seq 100); do dd if=/dev/urandom of=$dev bs=4096 count=1 seek=$((RANDOM * 8 % (G * 262144))) conv=notrunc status=none; done
  sync
  timed "$kind: wyng incremental (100x4K)" "$d" "$W" send vol --local=$local --dest=$dest --meta-dir=/tmp/meta -q
  if [ $kind = lvm ] && [ -n "${WYNG_ORIGINAL:-}" ]; then
    od=/tmp/arch/orig
    # Both tools name their snapshot <lv>.tick: the original refuses another archive's, so
    # wyng's goes (the original then makes its own full send, as wyng's first one was).
    lvremove -qy bench/vol.tick >>"$OUT/bench.err" 2>&1
    python3 "$WYNG_ORIGINAL" --dest=file:$od arch-init --encrypt=off -u >>"$OUT/bench.err" 2>&1
    timed "lvm: original first send" "$d" python3 "$WYNG_ORIGINAL" --dest=file:$od --local=bench/pool send vol -u
    for i in $(seq 100); do dd if=/dev/urandom of=$dev bs=4096 count=1 seek=$((RANDOM * 8 % (G * 262144))) conv=notrunc status=none; done
    sync
    timed "lvm: original incremental (100x4K)" "$d" python3 "$WYNG_ORIGINAL" --dest=file:$od --local=bench/pool send vol -u
  fi
done
exit $failed
