# LVM thin, live (run in the VM by tests/cli/vm.rs): a Qubes-like pool qubes_dom0/vm-pool with
# vm-NAME-private volumes, every case with its assertion.
. "$(dirname "$0")/lib.sh"
modprobe -a virtio_blk dm_thin_pool dm_snapshot || exit 1
set -x
pvcreate -q "$DISK" && vgcreate -q qubes_dom0 "$DISK" &&
  lvcreate -q -T -L 1G --chunksize 64k --errorwhenfull y qubes_dom0/vm-pool &&
  lvcreate -q -V 16M -T qubes_dom0/vm-pool -n vm-work-private &&
  lvcreate -q -V 8M -T qubes_dom0/vm-pool -n vm-mail-private || exit 1
set +x
L=qubes_dom0/vm-pool
WORK=/dev/qubes_dom0/vm-work-private
MAIL=/dev/qubes_dom0/vm-mail-private
dd if=/dev/urandom of=$WORK bs=1M count=12 status=none
dd if=/dev/urandom of=$MAIL bs=1M count=4 seek=2 status=none
DEST=file:/tmp/arch-a
"$W" arch-init --dest=$DEST --encrypt=off --chunk-factor=1 -q
CS=65536

# First send of two thin volumes: a full scan each.
wy send vm-work-private vm-mail-private --local=$L --json
check "first send of two thin volumes reads every chunk" \
  eq "$(field '[.[] | select(.first)] | length'):$(field '.[0].chunks_read')" "2:$((16 << 20 >> 16))"
check "baselines made, tagged, and .tock gone" \
  eq "$(lvs --noheadings -o lv_name,lv_tags qubes_dom0 | grep -E 'tick' | grep arch- | grep -c wyng)$(lvs --noheadings -o lv_name qubes_dom0 | grep -c tock)" "20"

# Incremental: only thin_delta's changed blocks (64 KiB pool chunks = archive chunks).
changed=$(scribble $WORK $((16 << 20)) $CS)
wy send vm-work-private --local=$L --json
check "incremental after 100 random 4 KiB writes reads only thin_delta's $changed changed chunks" \
  eq "$(field '.[0].chunks_read')" "$changed"
check "the session is exactly the volume" eq "$(session_sha vm-work-private)" "$(sha $WORK)"

# monitor records the changes; the next send reads exactly those.
changed=$(scribble $WORK $((16 << 20)) $CS 30)
wy monitor vm-work-private --local=$L --json
check "monitor rotates and records $changed changed chunks" \
  eq "$(echo "$LAST" | jq -r '.[0].state + ":" + (.[0].changed_chunks|tostring)')" "rotated:$changed"
more=$(scribble $MAIL $((8 << 20)) $CS 30)
wy send vm-work-private vm-mail-private --local=$L --json
check "send after monitor reads the recorded chunks (and $more of the other volume)" \
  eq "$(field '[.[].chunks_read] | join(",")')" "$changed,$more"

# diff: identical after the send, different after a write.
check "diff: identical after the send" wy diff vm-work-private --local=$L
dd if=/dev/urandom of=$WORK bs=4096 count=1 seek=1000 conv=notrunc status=none
wy diff vm-work-private --local=$L; rc=$?
check "diff: a write is found (exit 2)" eq "$rc" 2
wy send vm-work-private --local=$L --json

# Written during a send: the session is the snapshot, whatever the writer does.
scribble $WORK $((16 << 20)) $CS 2000 >/dev/null &
writer=$!
scribble $WORK $((16 << 20)) $CS 30 >/dev/null
wy send vm-work-private --local=$L --json
sent=$?
wait $writer
check "a send while the volume is written succeeds" eq "$sent" 0
check "... and holds exactly its snapshot (.tick)" \
  eq "$(session_sha vm-work-private)" "$(sha /dev/qubes_dom0/vm-work-private.tick)"

# Receive into a new thin volume (wyng creates it in the pool) and with --save-to.
want_mail=$(session_sha vm-mail-private)
lvremove -q -f qubes_dom0/vm-mail-private
wy receive vm-mail-private --local=$L -u
check "receive --local creates the thin volume, exact" eq "$(sha $MAIL)" "$want_mail"
check "... as a thin volume of the pool" \
  eq "$(lvs --noheadings -o pool_lv qubes_dom0/vm-mail-private | tr -d ' ')" vm-pool
lvcreate -q -V 16M -T $L -n vm-copy-private
wy receive vm-work-private --save-to=/dev/qubes_dom0/vm-copy-private -u
check "receive --save-to into a new thin volume, exact" \
  eq "$(head -c $((16 << 20)) /dev/qubes_dom0/vm-copy-private | sha256sum | cut -c1-64)" "$(session_sha vm-work-private)"
# Into the existing volume: --sparse, --sparse-write, --use-snapshot(-diff).
want=$(session_sha vm-work-private)
for mode in --sparse --sparse-write --use-snapshot --use-snapshot-diff; do
  scribble $WORK $((16 << 20)) $CS 30 >/dev/null
  wy receive vm-work-private --local=$L $mode -u --json
  check "receive $mode into the existing thin volume, exact" eq "$(sha $WORK)" "$want"
done
check "... --use-snapshot-diff of the newest session is the baseline's copy: nothing fetched" \
  eq "$(echo "$LAST" | jq -r '.data_chunks')" 0
first=$("$W" --meta-dir="$META" --dest="$DEST" list --json | jq -r '.volumes["vm-work-private"].sessions | keys | min')
"$W" --meta-dir="$META" --dest="$DEST" receive vm-work-private --session="${first#S_}" --save-to=/tmp/first.img -u -q
wy receive vm-work-private --local=$L --use-snapshot --session="${first#S_}" -u
check "receive --use-snapshot of the first session (from the baseline, rewritten where it differs), exact" \
  eq "$(sha $WORK)" "$(sha /tmp/first.img)"
rm -f /tmp/first.img
wy receive vm-work-private --local=$L -u -q
wy send vm-work-private --local=$L --json

# Grown and shrunk with lvresize.
lvresize -q -f -L 24M qubes_dom0/vm-work-private
dd if=/dev/urandom of=$WORK bs=1M count=2 seek=20 conv=notrunc status=none
wy send vm-work-private --local=$L --json
check "grown volume: new size recorded, exact" \
  eq "$(field '.[0].volsize'):$(session_sha vm-work-private)" "$((24 << 20)):$(sha $WORK)"
lvresize -q -f -L 12M qubes_dom0/vm-work-private
wy send vm-work-private --local=$L --json
check "shrunk volume: new size recorded, exact" \
  eq "$(field '.[0].volsize'):$(session_sha vm-work-private)" "$((12 << 20)):$(sha $WORK)"

# Renamed in LVM (and in the archive): the old baseline no longer pairs: a full scan, exact.
lvrename -q qubes_dom0 vm-work-private vm-home-private
wy rename vm-work-private vm-home-private -u
wy send vm-home-private --local=$L --json
check "renamed volume: full scan, exact" \
  eq "$(field '.[0].chunks_read'):$(session_sha vm-home-private)" "$((12 << 20 >> 16)):$(sha /dev/qubes_dom0/vm-home-private)"

# delete --clean: the renamed volume's old .tick is an orphan (no volume of that name).
wy delete --clean --local=$L -u --force
check "delete --clean removes the orphaned snapshot, keeps the baselines" \
  eq "$(lvs --noheadings -o lv_name qubes_dom0 | tr -d ' ' | grep tick | sort | tr '\n' ' ')" \
  "vm-home-private.tick vm-mail-private.tick "

# --remap: another archive's baseline is not used or dropped without it.
DEST=file:/tmp/arch-b
"$W" arch-init --dest=$DEST --encrypt=off --chunk-factor=1 -q
wy send vm-mail-private --local=$L
check "a baseline of another archive stops the send (says --remap)" \
  bash -c "[[ '$LASTERR' == *--remap* ]]"
wy send vm-mail-private --local=$L --remap --json
check "--remap replaces it: full scan, exact" \
  eq "$(field '.[0].chunks_read'):$(session_sha vm-mail-private)" "$((8 << 20 >> 16)):$(sha $MAIL)"
keep_archive arch-lvm-b
DEST=file:/tmp/arch-a

# A full pool: a clear error or a correct send, and nothing lost either way.
lvcreate -q -T -L 16M --chunksize 64k --errorwhenfull y qubes_dom0/tiny-pool
lvcreate -q -V 32M -T qubes_dom0/tiny-pool -n vm-full-private 2>/dev/null
dd if=/dev/urandom of=/dev/qubes_dom0/vm-full-private bs=1M count=4 status=none
wy send vm-full-private --local=qubes_dom0/tiny-pool --json
before=$(session_sha vm-full-private)
dd if=/dev/urandom of=/dev/qubes_dom0/vm-full-private bs=1M count=28 seek=4 conv=notrunc status=none 2>/dev/null
echo "tiny-pool: $(lvs --noheadings -o data_percent qubes_dom0/tiny-pool)% used"
wy send vm-full-private --local=qubes_dom0/tiny-pool; rc=$?
if [ $rc -eq 0 ]; then
  check "full pool: the send succeeded and is exact" \
    eq "$(session_sha vm-full-private)" "$(sha /dev/qubes_dom0/vm-full-private)"
else
  check "full pool: one clear error line, no panic" \
    bash -c "[[ '$LASTERR' != *panick* && \$(echo '$LASTERR' | grep -c 'error') -ge 1 ]]"
  check "full pool: the earlier session is intact" eq "$(session_sha vm-full-private)" "$before"
fi
check "arch-check passes after all of it" wy arch-check

keep_archive arch-lvm
finish
