# Helpers for the VM scenarios (sourced in the guest by tests/vm/*.sh; see scripts/vm-run.sh).
# Each check appends a TAP line to $OUT/results.tap; the host test (tests/cli/vm.rs) reads it and
# prints $OUT/guest.log when something failed.
set -u
W=${WYNG_BIN:-$WYNG_ROOT/target/debug/wyng}
META=/tmp/wyng-meta
n=0
: >"$OUT/results.tap"
tap() { n=$((n + 1)); echo "$1 $n - $2" >>"$OUT/results.tap"; echo "== $1 $n - $2 [${SECONDS} s]"; }
# check NAME COMMAND...: the command's status is the result.
check() { local name=$1; shift; if "$@"; then tap ok "$name"; else tap "not ok" "$name"; fi; }
# eq GOT WANT: prints both when they differ.
eq() { [ "$1" = "$2" ] || { echo "   got '$1', want '$2'"; return 1; }; }
# wy ARGS...: wyng on the scenario's archive ($DEST), output kept in $LAST (stdout) and $LASTERR.
wy() {
  LAST=$("$W" --meta-dir="$META" --dest="$DEST" "$@" 2>/tmp/wyng.err); local rc=$?
  LASTERR=$(cat /tmp/wyng.err); echo "\$ wyng $* -> $rc"; [ -n "$LASTERR" ] && echo "$LASTERR" | sed 's/^/   /'
  return $rc
}
# The JSON report of one volume from the last `send --json`.
field() { echo "$LAST" | jq -r "$1"; }
sha() { sha256sum "$1" | cut -c1-64; }
# The sha256 of the newest session of a volume, as wyng restores it.
session_sha() { "$W" --meta-dir="$META" --dest="$DEST" receive "$1" --save-to=/tmp/restore.img -u -q >/dev/null 2>&1 && sha /tmp/restore.img && rm -f /tmp/restore.img; }
# ${4:-100} random 4 KiB writes (offsets within the first $2 bytes, 4 KiB aligned) to $1, synced;
# prints the number of distinct $3-byte blocks touched. One process: forks are slow under TCG.
scribble() {
  python3 - "$1" "$2" "$3" "${4:-100}" <<'PY'
import os, random, sys
dev, span, block, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fd = os.open(dev, os.O_WRONLY)
touched = set()
for _ in range(count):
    off = random.randrange(span // 4096) * 4096
    os.pwrite(fd, os.urandom(4096), off)
    touched.add(off // block)
os.fsync(fd)
print(len(touched))
PY
}
# Copies the archive back to the host (for the independent checker) at the end.
keep_archive() { rm -rf "$OUT/$1"; cp -a "${DEST#file:}" "$OUT/$1"; }
finish() { echo "1..$n" >>"$OUT/results.tap"; grep -c '^not ok' "$OUT/results.tap" >/dev/null && exit 1; exit 0; }
