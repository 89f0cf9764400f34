#!/usr/bin/env bash
# Expiration benchmark: back up N files (default 100,000, 1-4 KiB of random data
# each), delete them all, back up again so every version turns inactive, then
# time `expire inventory` and report versions expired, space reclaimed, and the
# server's peak RSS. Release build, 127.0.0.1 only.
#
#   tests/bench/expire.sh          FILES=20000 for a quicker run
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${BENCH_DIR:-/tmp/tandem-expire-bench}
FILES=${FILES:-100000}
BIN=$ROOT/target/release
(cd "$ROOT" && cargo build --release --bins --quiet)
rm -rf "$WORK"; mkdir -p "$WORK/data"
python3 - "$WORK/data" "$FILES" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
for i in range(n):
    d = os.path.join(root, f"d{i % 100:03}")
    if i < 100:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:07}"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 4096)))
PY
"$BIN/tandem-server" --data-dir "$WORK/server" --listen 127.0.0.1:0 > "$WORK/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do [ -s "$WORK/server/listen.addr" ] && break; sleep 0.05; done
ADDR=https://$(cat "$WORK/server/listen.addr")
ADMIN="$BIN/tandem-admin --server $ADDR --token-file $WORK/server/admin.token"
echo 'bench-password' | $ADMIN register node bench > /dev/null
$ADMIN update node bench --verdeleted 0 > /dev/null
printf 'node_name = "bench"\nserver_address = "%s"\nserver_fingerprint = "%s"\npassword = "bench-password"\nstate_dir = "%s"\n' "$ADDR" "$(cat "$WORK/server/fingerprint")" "$WORK/state" > "$WORK/tandem.toml"
chmod 600 "$WORK/tandem.toml"   # it holds the password
T="$BIN/tandem --options $WORK/tandem.toml --quiet"
/usr/bin/time -f "backup of $FILES files: %e s" $T incremental "$WORK/data"
rm -rf "$WORK/data"/*
/usr/bin/time -f "backup after deleting them: %e s" $T incremental "$WORK/data"
before=$(du -sb "$WORK/server/containers" | cut -f1)
rss_before=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
/usr/bin/time -f "expire inventory: %e s wall, admin client %M KiB" $ADMIN --json expire inventory
after=$(du -sb "$WORK/server/containers" | cut -f1)
rss_after=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
echo "containers: $before bytes before, $after after ($(( (before - after) / 1048576 )) MiB reclaimed)"
echo "server peak RSS: $rss_before KiB before expiration, $rss_after KiB after"
echo "catalog: $(du -sh "$WORK/server/catalog.db" | cut -f1)"
