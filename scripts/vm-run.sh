#!/usr/bin/env bash
# Boots Debian's kernel (linux-image-amd64) under qemu with virtme-ng, this machine's root
# filesystem shared read-only, and runs one scenario script in it (tests/cli/vm.rs calls this;
# scripts/vm-install.sh installs what it needs).
#
#   scripts/vm-run.sh SCRIPT OUTDIR [DISK_GIB]
#
# In the guest, SCRIPT runs as root under bash with OUT=OUTDIR (the only directory the guest
# writes back to the host), WYNG_ROOT=<this checkout> and DISK=/dev/vda, a sparse DISK_GIB GiB
# (default 4) virtio disk backed by OUTDIR/disk.img (removed afterwards). The guest's console goes
# to OUTDIR/console.log; the script's own results are whatever it writes into OUTDIR.
# Exit status: the script's (124: the VM timed out, 3: qemu, vng or the kernel is missing).
#
# Facts this relies on: TCG only (--disable-kvm: this machine's /dev/kvm is PVM-based and a stock
# kernel hangs there); qemu truncates a log file it is redirected to, so its output goes through
# `| cat`; vng calls virtme-run, so the venv's bin must be on PATH.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
script=$(realpath "$1")
out=$(realpath -m "$2")
gib=${3:-4}
venv="${WYNG_VM_VENV:-/opt/wyng-vm/venv}"
# The host's python3 (with the packages .ci/run installs), which may not be /usr/bin's.
py=$(dirname "$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || echo /usr/bin/python3)")
export PATH="$venv/bin:$PATH"
missing() { echo "vm-run: $1 (install with scripts/vm-install.sh)" >&2; exit 3; }
command -v vng >/dev/null || missing "no vng in $venv/bin"
command -v qemu-system-x86_64 >/dev/null || missing "no qemu-system-x86_64"
kpkg=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null | grep -oE 'linux-image-[0-9][^ ,]*')
kver=${kpkg#linux-image-}
[ -n "$kver" ] && [ -r "/boot/vmlinuz-$kver" ] || missing "no kernel from linux-image-amd64"
mkdir -p "$out"
rm -f "$out/disk.img"
truncate -s "${gib}G" "$out/disk.img"
# The guest's init gives the command no environment of ours: pass what it needs explicitly.
cmd="cd /; export OUT='$out' WYNG_ROOT='$here' DISK=/dev/vda LVM_SUPPRESS_FD_WARNINGS=1"
cmd+=" PATH=$py:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
cmd+=" WYNG_BIN='${WYNG_BIN:-}' WYNG_ORIGINAL='${WYNG_ORIGINAL:-}' BENCH_GIB='${BENCH_GIB:-}';"
cmd+=" /bin/bash '$script' >'$out/guest.log' 2>&1; echo \$? >'$out/exit'"
rm -f "$out/exit"
timeout "${VM_TIMEOUT:-1200}" vng --disable-kvm -r "/boot/vmlinuz-$kver" --cpus 2 -m "${VM_MEM:-3G}" \
  --rwdir "$out" "--qemu-opts=-drive file=$out/disk.img,if=virtio,format=raw,cache=unsafe" \
  -e "$cmd" 2>&1 | cat >"$out/console.log"
rc=${PIPESTATUS[0]}
rm -f "$out/disk.img"
[ "$rc" -eq 124 ] && { echo "vm-run: the VM timed out" >&2; exit 124; }
[ -f "$out/exit" ] || { echo "vm-run: the VM ended without running the script (vng exit $rc); see $out/console.log" >&2; exit 1; }
exit "$(cat "$out/exit")"
