# Sourced by the bench scripts as `. scripts/bench-prologue.sh NAME`, after `set -euo pipefail`
# and the `cd` to the checkout: builds wyng and the benchdata tool (release) and sets W and B;
# makes the work directory `dir`: BENCH_DIR/NAME when BENCH_DIR is set (kept afterwards), else
# a fresh /var/tmp/wyng-NAME.XXXXXX. `remove_dir` removes it unless it is to be kept.
cargo build --release --quiet --bin wyng --example benchdata
W="$PWD/target/release/wyng"
B="$PWD/target/release/examples/benchdata"
if [ -n "${BENCH_DIR:-}" ]; then
  dir="$BENCH_DIR/$1"; keep_dir=1; mkdir -p "$dir"
else
  dir="$(mktemp -d "/var/tmp/wyng-$1.XXXXXX")"; keep_dir=0
fi
remove_dir() { [ "$keep_dir" = 1 ] || rm -rf "$dir"; }

# Starts SeaweedFS (`weed mini`, every port free and on 127.0.0.1) in "$dir/weed", exports the
# AWS_* variables wyng's s3:// destination reads, sets weed_pid and waits up to 60 s until it
# answers (wyng list with $W and $meta); returns non-zero if it never did.
start_weed() {
  port() { python3 -c 'import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p < 55000:
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", p + 10000)); t.close(); print(p); break
        except OSError: pass'; }
  s3p=$(port)
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret S3_BUCKET=bench \
    weed mini -dir="$dir/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -admin.ui=false \
    -master.port="$(port)" -volume.port="$(port)" -filer.port="$(port)" -s3.port="$s3p" \
    -webdav.port="$(port)" -admin.port="$(port)" -s3.port.iceberg="$(port)" -s3.port.lance="$(port)" \
    >"$dir/weed.log" 2>&1 & weed_pid=$!
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_ENDPOINT_URL="http://127.0.0.1:$s3p"
  for _ in $(seq 120); do
    # (wyng list fails on a missing archive: only its message counts, pipefail or not)
    { "$W" list --dest=s3://bench/ready $meta 2>&1 || true; } | grep -q "no Wyng archive" && return 0
    sleep 0.5
  done
  return 1
}
