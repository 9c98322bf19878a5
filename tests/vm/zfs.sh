# ZFS zvols as a change source, live (run in the VM by tests/cli/vm.rs): a pool on a virtio disk,
# zvols with volblocksize 16K and 64K under tank/vms, every case with its assertion.
. "$(dirname "$0")/lib.sh"
modprobe -a virtio_blk zfs || exit 1
# The host's / is read-only here: no cache file, no mountpoints.
zpool create -f -o cachefile=none -m none -O compression=off tank "$DISK" &&
  zfs create -o mountpoint=none tank/vms && zfs create tank/restore &&
  zfs create -V 16M -o volblocksize=16K tank/vms/vm16 &&
  zfs create -V 16M -o volblocksize=64K tank/vms/vm64 || exit 1
udevadm settle
V16=/dev/zvol/tank/vms/vm16
V64=/dev/zvol/tank/vms/vm64
# Written in full: ZFS also sends FREE records for holes that never held data (they read as
# zeros and are found unchanged, but they would blur the counts below).
for d in $V16 $V64; do dd if=/dev/urandom of=$d bs=1M count=16 status=none; done
L=zfs:tank/vms
DEST=file:/tmp/arch-z
"$W" arch-init --dest=$DEST --encrypt=off --chunk-factor=1 -q
CS=65536
wyng_snaps() { zfs list -H -t snapshot -o name -r tank | grep -c '@wyng_'; }
wyng_bookmarks() { zfs list -H -t bookmark -o name -r "$1" | grep -c '#wyng_'; }

wy send vm16 vm64 --local=$L --json
check "first send of two zvols reads every chunk" \
  eq "$(field '[.[] | select(.first)] | length'):$(field '[.[].chunks_read] | join(",")')" "2:256,256"
check "the baselines are bookmarks only (no snapshot pins space)" \
  eq "$(wyng_snaps):$(wyng_bookmarks tank/vms)" "0:2"
check "the sessions are exactly the zvols" \
  eq "$(session_sha vm16):$(session_sha vm64)" "$(sha $V16):$(sha $V64)"

# 100 random 4 KiB writes: zfs's own WRITE records (zstream dump of a probe snapshot) give one
# record per changed volblocksize block, and the incremental reads exactly their chunks.
for v in vm16 vm64; do
  bs=$((${v#vm} * 1024))
  blocks=$(scribble /dev/zvol/tank/vms/$v $((16 << 20)) $bs)
  zfs snapshot tank/vms/$v@probe
  bm=$(zfs list -H -t bookmark -o name tank/vms/$v | grep '#wyng_')
  zfs send -i "$bm" tank/vms/$v@probe | zstream dump -v | sed -nE 's/^WRITE object = 1 .*offset = ([0-9]+) .*/\1/p' >/tmp/writes
  zfs destroy tank/vms/$v@probe
  check "$v: zfs sends one WRITE record per changed ${bs}-byte block ($blocks)" eq "$(wc -l </tmp/writes)" "$blocks"
  chunks=$(awk -v cs=$CS '{print int($1 / cs)}' /tmp/writes | sort -un | wc -l)
  wy send $v --local=$L --json
  check "$v: the incremental reads only the $chunks chunks of the WRITE records" eq "$(field '.[0].chunks_read')" "$chunks"
  check "$v: ... and the session is exact" eq "$(session_sha $v)" "$(sha /dev/zvol/tank/vms/$v)"
done

# A discard: FREE records, zeros in the session.
blkdiscard -o $((4 << 20)) -l $((4 << 20)) $V64
wy send vm64 --local=$L --json
check "discard: FREE records read as the 64 changed chunks" eq "$(field '.[0].chunks_read')" 64
"$W" --meta-dir="$META" --dest="$DEST" receive vm64 --save-to=/tmp/r64.img -u -q
check "discard: zeros in the session, and exact" \
  eq "$(cmp -n $((4 << 20)) -i $((4 << 20)):0 /tmp/r64.img /dev/zero && echo zeros):$(sha /tmp/r64.img)" "zeros:$(sha $V64)"
rm -f /tmp/r64.img

# A grown volume.
zfs set volsize=24M tank/vms/vm16
udevadm settle
dd if=/dev/urandom of=$V16 bs=1M count=2 seek=20 conv=notrunc status=none
wy send vm16 --local=$L --json
check "grown zvol: new size; the send reads the whole grown area (128 chunks), exact" \
  eq "$(field '.[0].volsize'):$(field '.[0].chunks_read'):$(session_sha vm16)" "$((24 << 20)):128:$(sha $V16)"

# monitor, then a send that reads what it recorded.
changed=$(scribble $V64 $((16 << 20)) $CS 30)
wy monitor vm64 --local=$L --json
check "monitor rotates and records $changed changed chunks" \
  eq "$(echo "$LAST" | jq -r '.[0].state + ":" + (.[0].changed_chunks|tostring)'):$(wyng_snaps)" "rotated:$changed:0"
wy send vm64 --local=$L --json
check "send after monitor reads the recorded chunks" eq "$(field '.[0].chunks_read')" "$changed"
check "diff: identical after the send" wy diff vm64 --local=$L

# Receive: into a new zvol (made by wyng), and into an existing one with --sparse.
wy receive vm16 --local=zfs:tank/restore -u
udevadm settle
check "receive --local into a new zvol, exact" \
  eq "$(zfs get -H -p -o value volsize tank/restore/vm16):$(sha /dev/zvol/tank/restore/vm16)" "$((24 << 20)):$(session_sha vm16)"
want=$(session_sha vm64)
scribble $V64 $((16 << 20)) $CS 30 >/dev/null
wy receive vm64 --local=$L --sparse -u
check "receive --sparse into the existing zvol, exact" eq "$(sha $V64)" "$want"

# The baseline destroyed: a full scan, reported.
zfs destroy "$(zfs list -H -t bookmark -o name tank/vms/vm64 | grep '#wyng_')"
wy send vm64 --local=$L --json --send-unchanged
check "baseline destroyed: full scan" eq "$(field '.[0].chunks_read')" 256
check "... reported" bash -c "[[ '$LASTERR' == *'queuing full scan'* ]]"
check "... and a new bookmark is the baseline" eq "$(wyng_bookmarks tank/vms/vm64):$(wyng_snaps)" "1:0"

# delete --clean: a volume the archive no longer has loses its bookmark.
wy delete vm16 -u --force
wy delete --clean --local=$L -u --force
check "delete --clean removes the deleted volume's bookmark, keeps the other" \
  eq "$(wyng_bookmarks tank/vms/vm16):$(wyng_bookmarks tank/vms/vm64)" "0:1"
check "arch-check passes after all of it" wy arch-check

# A small recorded stream for the parser's tests and the fuzz seeds.
zfs create -V 1M -o volblocksize=16K tank/vms/fx && udevadm settle
yes fixture | head -c 32768 | dd of=/dev/zvol/tank/vms/fx bs=16K conv=notrunc,fsync status=none
zfs snapshot tank/vms/fx@a
printf 'changed %.0s' $(seq 2048) | head -c 16384 | dd of=/dev/zvol/tank/vms/fx bs=16K seek=3 conv=notrunc,fsync status=none
blkdiscard -o 0 -l 16384 /dev/zvol/tank/vms/fx
zfs snapshot tank/vms/fx@b
zfs send -i @a tank/vms/fx@b >"$OUT/send-i.zstream"
zstream dump -v <"$OUT/send-i.zstream" >"$OUT/send-i.dump"

keep_archive arch-zfs
finish
