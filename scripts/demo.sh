#!/usr/bin/env bash
# Build and install wyng, then make a first backup of an example disk image and restore it.
# Usage: scripts/demo.sh [WORKDIR]   (default: a new temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo install --locked --path . --root "${WYNG_PREFIX:-$HOME/.local}" --quiet
wyng="${WYNG_PREFIX:-$HOME/.local}/bin/wyng"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
echo "== wyng installed as $wyng; working in $work"

# An example 64 MiB disk image: some random data, some text, the rest unallocated.
img="$work/vm1.img"
truncate -s 64M "$img"
head -c 8M /dev/urandom | dd of="$img" conv=notrunc status=none
{ yes "wyng demo: the quick brown fox jumps over the lazy dog" || true; } | head -c 8M | dd of="$img" bs=1M seek=32 conv=notrunc status=none

dest="file:$work/backup.wyng"
meta="--meta-dir=$work/meta"
"$wyng" arch-init --dest="$dest" --encrypt=off "$meta"
"$wyng" send vm1.img --import-other-from="vm1.img:|:$img" --dest="$dest" "$meta"
cp --sparse=always "$img" "$work/first.img"
# Change a little and send again: only the changed chunks are stored.
head -c 1M /dev/urandom | dd of="$img" bs=1M seek=50 conv=notrunc status=none
"$wyng" send vm1.img --import-other-from="vm1.img:|:$img" --dest="$dest" "$meta"
"$wyng" list vm1.img --dest="$dest" "$meta"
"$wyng" verify vm1.img --dest="$dest" "$meta"
"$wyng" receive vm1.img --save-to="$work/restored.img" --dest="$dest" "$meta"
cmp "$img" "$work/restored.img" && echo "== restored image is identical to the source"

# The mount: every session of every volume as a read-only sparse image, read through wyng (each
# chunk verified as it is read).
if [ -w /dev/fuse ] && { [ "$(id -u)" = 0 ] || command -v fusermount3 >/dev/null; }; then
  mnt="$work/mnt"
  mkdir -p "$mnt"
  "$wyng" mount "$mnt" --dest="$dest" "$meta"
  echo "== mounted at $mnt:"
  ls -l "$mnt/vm1.img/"
  first=$(ls "$mnt/vm1.img" | grep '^S_' | head -n 1)
  cmp "$work/first.img" "$mnt/vm1.img/$first" \
    && echo "== $first, read through the mount, is the image as it was at the first send"
  "$wyng" umount "$mnt"
else
  echo "== (the mount step needs FUSE: install fuse3; skipped)"
fi

# Single files from a session, without root or a mount: an ext4 disk made from a directory,
# backed up, then browsed and one file restored (read by wyng itself, every chunk verified).
if command -v mke2fs >/dev/null; then
  mkdir -p "$work/tree/etc" "$work/tree/home/alice"
  echo "demo host" > "$work/tree/etc/hostname"
  echo "the thesis, chapter one" > "$work/tree/home/alice/thesis.txt"
  disk="$work/disk.img"
  mke2fs -q -F -t ext4 -d "$work/tree" "$disk" 32M
  "$wyng" send disk.img --import-other-from="disk.img:|:$disk" --dest="$dest" "$meta"
  echo "== files of disk.img's newest session:"
  "$wyng" files ls disk.img / -R --dest="$dest" "$meta"
  "$wyng" files get disk.img /home/alice/thesis.txt --to="$work/restored-files" --dest="$dest" "$meta"
  cmp "$work/tree/home/alice/thesis.txt" "$work/restored-files/thesis.txt" \
    && echo "== thesis.txt restored from the backup, identical"
else
  echo "== (the files step needs mke2fs: install e2fsprogs; skipped)"
fi
