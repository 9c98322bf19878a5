# The original Wyng and wyng side by side on one live thin pool (opt-in: needs WYNG_ORIGINAL, the
# original's `wyng` script, which the project does not ship; run by hand with
#   WYNG_ORIGINAL=/path/to/wyng scripts/vm-run.sh tests/vm/original.sh OUT
# ). Each reads the other's archive exactly, and both take turns on one archive (the original's
# .tick and delta map pair with wyng's and the other way round). OUT/arch-orig is the original's
# archive of a live thin volume, OUT/expected.json its sessions' sizes and sha256.
. "$(dirname "$0")/lib.sh"
[ -n "${WYNG_ORIGINAL:-}" ] || { echo "WYNG_ORIGINAL is not set"; exit 3; }
O() { python3 "$WYNG_ORIGINAL" "$@"; }
modprobe -a virtio_blk dm_thin_pool || exit 1
pvcreate -q "$DISK" && vgcreate -q qubes_dom0 "$DISK" &&
  lvcreate -q -T -L 512M --chunksize 64k qubes_dom0/vm-pool &&
  lvcreate -q -V 4M -T qubes_dom0/vm-pool -n vm-a-private &&
  lvcreate -q -V 16M -T qubes_dom0/vm-pool -n vm-b-private || exit 1
L=qubes_dom0/vm-pool
A=/dev/qubes_dom0/vm-a-private
B=/dev/qubes_dom0/vm-b-private
yes "wyng side by side" | head -c $((2 << 20)) | dd of=$A bs=1M conv=notrunc status=none
dd if=/dev/urandom of=$A bs=64K count=8 seek=40 conv=notrunc status=none
dd if=/dev/urandom of=$B bs=1M count=12 status=none
echo '{"sessions": [' >"$OUT/expected.json"

# The original writes an archive of vm-a-private from the live pool (its default meta dir).
OD=/tmp/arch-orig
O --dest=file:$OD arch-init --encrypt=off --chunk-factor=1 -u
O --dest=file:$OD --local=$L send vm-a-private -u; rc1=$?
s1=$(sha $A)
scribble $A $((4 << 20)) 65536 >/dev/null
O --dest=file:$OD --local=$L send vm-a-private -u; rc2=$?
s2=$(sha $A)
check "the original sends twice from the live pool" eq "$rc1:$rc2" "0:0"
DEST=file:$OD
wy list --json
sessions=$(echo "$LAST" | jq -r '.volumes["vm-a-private"].sessions | keys | .[]' 2>/dev/null | sort)
i=0
for s in $sessions; do
  i=$((i + 1)); want=$([ $i = 1 ] && echo "$s1" || echo "$s2")
  "$W" --meta-dir=/tmp/meta-reader --dest=$DEST receive vm-a-private --session="${s#S_}" --save-to=/tmp/r.img -u -q
  check "wyng reads the original's session $s exactly" eq "$(sha /tmp/r.img)" "$want"
  echo "  {\"name\": \"$s\", \"size\": $(stat -c %s /tmp/r.img), \"sha256\": \"$want\"}," >>"$OUT/expected.json"
  rm -f /tmp/r.img
done
check "the original made two sessions" eq "$i" 2
sed -i '$ s/,$//' "$OUT/expected.json"; echo ']}' >>"$OUT/expected.json"
keep_archive arch-orig

# Taking turns on that archive: wyng's incremental pairs with the original's .tick and map.
changed=$(scribble $A $((4 << 20)) 65536)
META=/var/lib/wyng
wy send vm-a-private --local=$L --json
check "wyng continues the original's archive incrementally ($changed chunks)" \
  eq "$(field '.[0].chunks_read')" "$changed"
scribble $A $((4 << 20)) 65536 >/dev/null
O --dest=file:$OD --local=$L send vm-a-private -u; rc=$?
s3=$(sha $A)
check "... and the original continues after wyng" eq "$rc" 0
check "wyng reads that session exactly" eq "$(session_sha vm-a-private)" "$s3"
O --dest=file:$OD verify vm-a-private -u >/dev/null; check "the original verifies the shared archive" eq "$?" 0
wy arch-check; check "wyng arch-check on the shared archive" eq "$?" 0
META=/tmp/wyng-meta

# wyng's archive of vm-b-private, read by the original.
DEST=file:/tmp/arch-w
"$W" arch-init --dest=$DEST --encrypt=off --chunk-factor=1 -q
wy send vm-b-private --local=$L --json
scribble $B $((16 << 20)) 65536 >/dev/null
wy send vm-b-private --local=$L --json
O --dest=$DEST receive vm-b-private --save-to=/tmp/o.img -u >/dev/null
check "the original reads wyng's archive of a thin volume exactly" eq "$(sha /tmp/o.img)" "$(sha $B)"
O --dest=$DEST verify vm-b-private -u >/dev/null; check "the original verifies wyng's archive" eq "$?" 0
O --dest=$DEST arch-check -u >/dev/null; check "the original's arch-check on wyng's archive" eq "$?" 0
keep_archive arch-w
finish
