#!/usr/bin/env bash
# Measures wyng on a reproducible volume image and compares with this machine's own
# single-core limits on the same data, measured in the same run.
# Usage: scripts/bench.sh [SIZE_MIB]   (default 1024; docs/benchmarks.md uses 4096)
#        BENCH_DIR=/path keeps the work files there, one subdirectory per script (default: a
#        temporary dir, removed after).
#        BENCH_CORE_ONLY=1 stops after the core rows (file:, ssh, encrypted), the quick before/after
#        comparison of a change that touches no one area.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib="${1:-1024}"
. scripts/bench-prologue.sh bench
trap remove_dir EXIT
img="$dir/vol.img"; ar="$dir/archive"; meta="--meta-dir=$dir/meta"
rm -rf "$ar" "$dir/archive-enc" "$dir/meta" "$dir/out.img"

echo "== $(nproc) cores; image ${size_mib} MiB (30% random, 30% text, 40% holes); page cache warm"
"$B" gen "$img" "$size_mib"
cat "$img" >/dev/null
eval "$("$B" limits "$img" 262144)"
echo "single-core limits: read ${read_mibs} MiB/s, zstd-3 compress+hash ${compress_hash_mibs} MiB/s, hash+decompress ${hash_decompress_mibs} MiB/s"

printf '\n%-22s %8s %9s %8s %9s %s\n' "operation" "wall s" "MiB/s" "CPU s" "RSS MiB" "vs limit"
row() { # name limit_mibs -- command...
  local name="$1" limit="$2"; shift 3
  /usr/bin/time -f "%e %U %S %M" -o "$dir/time" "$@" >/dev/null
  read -r wall user sys rss < "$dir/time"
  awk -v n="$name" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v m="$size_mib" -v l="$limit" 'BEGIN {
    if (w < 0.001) w = 0.001; rate = m / w;
    ratio = (l > 0) ? sprintf("%.2fx", rate / l) : "";
    mibs = (l > 0) ? sprintf("%9.0f", rate) : sprintf("%9s", "-");
    printf "%-22s %8.2f %s %8.2f %9.1f %s\n", n, w, mibs, u + s, r / 1024, ratio }'
}
imp="--import-other-from=vol:|:$img"
row "arch-init" 0 -- "$W" arch-init --encrypt=off --dest="file:$ar" $meta
row "send (full)" "$compress_hash_mibs" -- "$W" send vol "$imp" --dest="file:$ar" $meta
cp "$dir/time" "$dir/time.full"
row "send (unchanged)" "$read_mibs" -- "$W" send vol "$imp" --dest="file:$ar" $meta
"$B" scribble "$img" 1 7 >/dev/null
cat "$img" >/dev/null
row "send (1% changed)" "$compress_hash_mibs" -- "$W" send vol "$imp" --dest="file:$ar" $meta
row "receive" "$hash_decompress_mibs" -- "$W" receive vol -u --save-to="$dir/out.img" --dest="file:$ar" $meta
receive_wall=$(awk '{print $1}' "$dir/time")
# Pruning the oldest of the two sessions moves only what the newer one changed.
send_wall=$(awk 'NR==1 {print $1}' "$dir/time.full")
first=$("$W" list vol --json --dest="file:$ar" $meta | python3 -c 'import json,sys; print(sorted(json.load(sys.stdin)["volumes"]["vol"]["sessions"])[0][2:])')
row "prune oldest" 0 -- "$W" prune vol --session="$first" -u --dest="file:$ar" $meta
awk -v p="$(awk '{print $1}' "$dir/time")" -v s="$send_wall" 'BEGIN { if (p < 0.001) p = 0.001; printf "%-22s %.0fx faster than the full send\n", "", s / p }'
row "verify" "$hash_decompress_mibs" -- "$W" verify vol --dest="file:$ar" $meta
cmp "$img" "$dir/out.img" && echo "(restored image identical)"

# wyng mount: sequential and random reads of the newest session, cold (fresh mount) and warm.
mnt="$dir/mnt"; mkdir -p "$mnt"
mount_up() { "$W" mount "$mnt" --dest="file:$ar" $meta >/dev/null; }
mount_up
t0=$(date +%s.%N); dd if="$mnt/vol/latest.img" of=/dev/null bs=1M status=none; t1=$(date +%s.%N)
"$W" umount "$mnt"
awk -v a="$t0" -v b="$t1" -v m="$size_mib" -v r="$receive_wall" 'BEGIN {
  w = b - a; printf "%-22s %8.2f %9.0f %8s %9s %.2fx of receive\n", "mount: dd bs=1M", w, m / w, "", "", r / w }'
mount_up
cold=$("$B" randread "$mnt/vol/latest.img" 4000 42)
warm=$("$B" randread "$mnt/vol/latest.img" 4000 42)
pid=$(pgrep -f "wyng mount $mnt" | head -1)
rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
"$W" umount "$mnt"
echo "$cold $warm $rss" | awk '{ printf "%-22s random 4 KiB reads/s: %s cold, %s warm; mount peak RSS %.1f MiB (cache 256 MiB)\n", "mount: random", $1, $2, $3 / 1024 }'

# Time to the first byte of a session, with 50 sessions in the archive.
for i in $(seq 1 48); do
  "$B" scribble "$img" 0.001 "$((i * 2 + 1))" >/dev/null
  "$W" send vol "$imp" --dest="file:$ar" $meta -q
done
sessions=$("$W" list vol --dest="file:$ar" $meta | grep -c '^[0-9]')
t0=$(date +%s.%N)
mount_up
head -c 1 "$mnt/vol/latest.img" >/dev/null
t1=$(date +%s.%N)
"$W" umount "$mnt"
awk -v a="$t0" -v b="$t1" -v n="$sessions" 'BEGIN { printf "%-22s %.3f s from `wyng mount` to the first byte (%d sessions)\n", "mount: first byte", b - a, n }'

# Over ssh to a private sshd on 127.0.0.1 (only when this machine has one and we are root).
if [ -x /usr/sbin/sshd ] && [ "$(id -u)" = 0 ]; then
  sd="$dir/sshd"; rm -rf "$sd"; mkdir -p "$sd" /run/sshd
  ssh-keygen -q -t ed25519 -N '' -f "$sd/host"; ssh-keygen -q -t ed25519 -N '' -f "$sd/user"
  cp "$sd/user.pub" "$sd/authorized_keys"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  printf 'Port %s\nListenAddress 127.0.0.1\nHostKey %s/host\nPidFile %s/pid\nAuthorizedKeysFile %s/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nStrictModes no\nLogLevel ERROR\n' "$port" "$sd" "$sd" "$sd" > "$sd/sshd_config"
  printf 'Host *\n  IdentityFile %s/user\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  Ciphers aes128-gcm@openssh.com\n' "$sd" > "$sd/ssh_config"
  /usr/sbin/sshd -D -e -f "$sd/sshd_config" 2>/dev/null & sshd_pid=$!
  trap 'kill $sshd_pid 2>/dev/null || true; remove_dir' EXIT
  sleep 0.5
  sshdest="ssh://root@127.0.0.1:$port$dir/archive-ssh"
  sopt="--opt-ssh=-F $sd/ssh_config"
  rm -rf "$dir/archive-ssh"
  "$W" arch-init --encrypt=off --dest="$sshdest" "$sopt" $meta >/dev/null
  row "ssh send (full)" "$compress_hash_mibs" -- "$W" send vol "$imp" --dest="$sshdest" "$sopt" $meta
  row "ssh receive" "$hash_decompress_mibs" -- "$W" receive vol -u --save-to="$dir/out.img" --dest="$sshdest" "$sopt" $meta
  cmp "$img" "$dir/out.img" && echo "(restored image identical)"
  "$W" mount "$mnt" --dest="$sshdest" "$sopt" $meta >/dev/null
  t0=$(date +%s.%N); dd if="$mnt/vol/latest.img" of=/dev/null bs=1M status=none; t1=$(date +%s.%N)
  "$W" umount "$mnt"
  awk -v a="$t0" -v b="$t1" -v m="$size_mib" 'BEGIN { w = b - a; printf "%-22s %8.2f %9.0f\n", "ssh mount: dd bs=1M", w, m / w }'
  kill $sshd_pid 2>/dev/null
fi

# The same on an encrypted archive (xchacha20-dgr). The passphrase comes from --passcmd and the
# keys stay in the kernel keyring, so only arch-init pays for the key derivation.
"$B" gen "$img" "$size_mib"
cat "$img" >/dev/null
enc="file:$dir/archive-enc"
pass=(--passcmd="printf %s wyng-bench-passphrase" --authmin=5)
row "enc arch-init (KDF)" 0 -- "$W" arch-init --dest="$enc" "${pass[@]}" $meta
row "enc send (full)" "$compress_hash_mibs" -- "$W" send vol "$imp" --dest="$enc" "${pass[@]}" $meta
row "enc send (unchanged)" "$read_mibs" -- "$W" send vol "$imp" --dest="$enc" "${pass[@]}" $meta
"$B" scribble "$img" 1 7 >/dev/null
cat "$img" >/dev/null
row "enc send (1% changed)" "$compress_hash_mibs" -- "$W" send vol "$imp" --dest="$enc" "${pass[@]}" $meta
row "enc receive" "$hash_decompress_mibs" -- "$W" receive vol -u --save-to="$dir/out.img" --dest="$enc" "${pass[@]}" $meta
row "enc verify" "$hash_decompress_mibs" -- "$W" verify vol --dest="$enc" "${pass[@]}" $meta
cmp "$img" "$dir/out.img" && echo "(restored image identical)"
"$W" list --dest="$enc" --passcmd="printf %s wyng-bench-passphrase" --authmin=-1 $meta >/dev/null
echo "archive: $(du -sm "$ar" | cut -f1) MiB on disk"
echo "ratios: send vs single-core compress+hash (target >= 1.6x), unchanged send vs single-core read"
echo "(target: no slower than reading the volume once), receive/verify vs single-core hash+decompress (target >= 1.5x)"
[ "${BENCH_CORE_ONLY:-0}" = 1 ] && exit 0
# Resumed sends (killed at ~50%) and sends to two archives at once, against plain sends.
echo
scripts/bench-resume.sh "$size_mib"
# NBD serving against the mount and qemu-nbd over it (needs nbdcopy, qemu-nbd, python3-libnbd).
if command -v nbdcopy >/dev/null && command -v qemu-nbd >/dev/null && /usr/bin/python3 -c 'import nbd' 2>/dev/null; then
  echo
  scripts/bench-nbd.sh "$size_mib"
fi
# s3:// rows against file: in the same run, on SeaweedFS on 127.0.0.1 (needs weed).
if command -v weed >/dev/null; then
  echo
  scripts/bench-s3.sh "$size_mib"
fi
# Archive copies (arch-copy): file: -> file: against cp -a, file: -> s3:// against the same
# sessions sent to s3://, encrypted copies, mirror updates.
echo
scripts/bench-copy.sh "$size_mib"
# Files inside sessions: ls of a 1 TiB ext4 volume, get of a 1 GiB file, find over 50 sessions.
if command -v mke2fs >/dev/null && command -v debugfs >/dev/null; then
  echo
  scripts/bench-files.sh
fi
# Scale rows: 1 TiB (with 50 sessions for the mount) and 16 TiB sparse volumes at 64 KiB
# chunks (16,383 GiB: ext4's largest file). BENCH_SCALE=0 leaves them out.
if [ "${BENCH_SCALE:-1}" != 0 ]; then
  echo
  scripts/bench-scale.sh 1024 2000 50
  echo
  scripts/bench-scale.sh 16383 2000
  if [ "$(id -u)" = 0 ] && command -v mkfs.btrfs >/dev/null; then
    echo
    scripts/bench-scale-cow.sh 1024
  fi
fi
# Copy-on-write rows (Btrfs on a loop file): need root and btrfs-progs.
if [ "$(id -u)" = 0 ] && command -v mkfs.btrfs >/dev/null; then
  echo
  scripts/bench-cow.sh "$size_mib" "$((size_mib * 4))"
fi
# LVM thin and ZFS rows from a VM (scripts/vm-install.sh; says "skipped" without it).
echo
scripts/bench-vm.sh 4
