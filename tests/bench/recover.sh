#!/usr/bin/env bash
# How fast a lost primary is rebuilt from its replica (`recover node`),
# against how fast the same data was first replicated. The benchmark dataset
# is backed up to a primary and replicated to a secondary (timed); the
# primary is then killed and its data dir wiped, a new primary starts with
# an empty one and is paired again, and `recover node --all` brings the node
# back (timed). Before the loss, `audit node` reads and verifies every stored
# chunk (timed). A full restore from the rebuilt primary is compared with the
# dataset byte for byte. Talks only to 127.0.0.1.
#
#   tests/bench/recover.sh        ROUNDS=N for more rounds (default 1)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${BENCH_DIR:-/tmp/tandem-recover}
ROUNDS=${ROUNDS:-1}
BIN=$ROOT/target/release
. "$ROOT/tests/bench/lib.sh"

[ -x /usr/bin/time ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time
(cd "$ROOT" && cargo build --release --bins --quiet)
rm -rf "$WORK"; mkdir -p "$WORK"
SERVER_PID=
SECONDARY_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" "$SECONDARY_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

DATA=$WORK/data
python3 "$ROOT/tests/bench/dataset.py" generate "$DATA"
DATA_MB=$(( $(du -sb "$DATA" | cut -f1) / 1000000 ))
: > "$WORK/times.tsv"

# wall NAME CMD...: the wall seconds of CMD (after a sync) into times.tsv.
wall() {
  local name=$1; shift
  sync
  /usr/bin/time -f "%e" -o "$WORK/time.out" "$@" > "$WORK/last.out" 2> "$WORK/last.err" ||
    { echo "FAILED: $name"; cat "$WORK/last.err"; exit 1; }
  local secs; secs=$(tail -n 1 "$WORK/time.out")
  printf '%s\t%s\n' "$name" "$secs" >> "$WORK/times.tsv"
  printf '  %-24s %7.2f s\n' "$name" "$secs"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round"
  start_primary BENCH
  ADMIN="$BIN/tandem-admin --server $SCHEME://$ADDR --token-file $WORK/server/admin.token"
  start_secondary
  "$BIN/tandem" --options "$WORK/tandem.toml" --quiet incremental "$DATA" > /dev/null
  wall "first replication" $ADMIN --json replicate node bench --wait
  wall "audit node (read all)" $ADMIN --json audit node bench

  # The primary is lost with its disk; a new one starts empty.
  kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK/server"
  "$BIN/tandem-server" --data-dir "$WORK/server" --listen 127.0.0.1:0 --name BENCH $PLAIN_FLAG > "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 200); do [ -s "$WORK/server/listen.addr" ] && break; sleep 0.05; done
  ADDR=$(cat "$WORK/server/listen.addr")
  ADMIN="$BIN/tandem-admin --server $SCHEME://$ADDR --token-file $WORK/server/admin.token"
  $ADMIN define server BENCH2 --address "$SCHEME://$ADDR2" $(pin_flag "$WORK/secondary") \
    --server-password-file "$WORK/server.pw" > /dev/null
  $ADMIN set replserver BENCH2 > /dev/null
  "$BIN/tandem-admin" --server "$SCHEME://$ADDR2" --token-file "$WORK/secondary/admin.token" update server BENCH \
    --address "$SCHEME://$ADDR" $(pin_flag "$WORK/server") > /dev/null
  wall "recovery (recover node)" $ADMIN --json recover node --all
  python3 -c "import json,sys; r=json.load(open(sys.argv[1]))[0]; print(f'  {\"\":24} {r[\"state\"]}: {r[\"objects_received\"]} versions, {r[\"chunks_received\"]} chunks, {r[\"bytes_received\"]} bytes')" "$WORK/last.out"

  # What comes back is the dataset, byte for byte.
  printf 'node_name = "bench"\nserver_address = "%s://%s"\n%s\npassword = "bench-password"\nstate_dir = "%s"\n' \
    "$SCHEME" "$ADDR" "$(pin_line "$WORK/server")" "$WORK/state" > "$WORK/tandem.toml"
  rm -rf "$WORK/restored" "$WORK/state"
  "$BIN/tandem" --options "$WORK/tandem.toml" --quiet restore "$DATA/*" "$WORK/restored/" --subdir > /dev/null
  diff -r "$DATA" "$WORK/restored" > /dev/null && echo "  restore from the rebuilt primary: identical to the dataset" ||
    { echo "  restore from the rebuilt primary DIFFERS from the dataset"; exit 1; }
  kill "$SERVER_PID" "$SECONDARY_PID"; wait "$SERVER_PID" "$SECONDARY_PID" 2>/dev/null || true
  SERVER_PID=; SECONDARY_PID=
  rm -rf "$WORK/server" "$WORK/secondary" "$WORK/restored" "$WORK/state"
done

python3 - "$WORK/times.tsv" "$DATA_MB" "$ROUNDS" <<'PY'
import os, statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
def median(name):
    return statistics.median(float(s) for n, s in rows if n == name)
first, rebuild = median("first replication"), median("recovery (recover node)")
audit = median("audit node (read all)")
mb = int(sys.argv[2])
print(f"\ndataset {mb} MB, {sys.argv[3]} round(s), medians; load {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
print(f"first replication   {first:6.2f} s  ({mb / first:5.0f} MB/s logical)")
print(f"recovery            {rebuild:6.2f} s  ({mb / rebuild:5.0f} MB/s logical)")
print(f"recovery / first replication: {rebuild / first:.2f} (target: <= 1.0)")
print(f"audit node (every chunk read, decompressed, hashed) {audit:6.2f} s  ({mb / audit:5.0f} MB/s logical)")
PY
rm -rf "$WORK"
