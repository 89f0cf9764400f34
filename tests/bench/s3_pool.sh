#!/usr/bin/env bash
# An S3 pool against a local pool on the benchmark dataset: full backup, the
# time until every sealed container is in the bucket, and a full restore by a
# restarted server (empty read cache), then `audit pool` whole and 1/7 by
# another restarted one, ROUNDS times (default 3) alternating
# which pool goes first; medians, the S3/local ratios (target: within 1.5x),
# the CPU each process spent in the restore (client, tandem-server, S3 server)
# and the object store's requests per GB from `query stgpool`. The S3 server
# is s3s-fs on 127.0.0.1 over a directory on the same disk, so the bucket's
# writes share the disk with Tandem's own. Talks only to 127.0.0.1.
#
#   tests/bench/s3_pool.sh        ROUNDS=N, CONTAINER_MIB (default 64), CACHE_MIB (the S3 pool's
#                                 read cache; unset: the server's default); SMALL/MEDIUM/LARGE/LARGE_MIB size the data
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${BENCH_DIR:-/tmp/tandem-s3-bench}
ROUNDS=${ROUNDS:-3}
CONTAINER_MIB=${CONTAINER_MIB:-64}
CACHE_MIB=${CACHE_MIB:-}
BIN=$ROOT/target/release
. "$ROOT/tests/bench/lib.sh"

[ -x /usr/bin/time ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time
S3S_FS=$(command -v s3s-fs || echo "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs")
[ -x "$S3S_FS" ] || cargo install s3s-fs --version 0.14.1 --features binary --locked
(cd "$ROOT" && cargo build --release --bins --quiet)
rm -rf "$WORK"; mkdir -p "$WORK"
SERVER_PID=
S3_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
  [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null
  wait 2>/dev/null || true
}
trap cleanup EXIT

DATA=$WORK/data
python3 "$ROOT/tests/bench/dataset.py" generate "$DATA"
DATA_BYTES=$(du -sb "$DATA" | cut -f1)
RESULTS=$WORK/results.tsv
: > "$RESULTS"
T="$BIN/tandem --options $WORK/tandem.toml --quiet"

# timed NAME CMD...: wall seconds of CMD into $RESULTS.
timed() {
  local name=$1; shift
  local rc=0
  sync
  /usr/bin/time -f "%e %U %S" -o "$WORK/time.out" "$@" > "$WORK/last.out" 2> "$WORK/last.err" || rc=$?
  if [ "$rc" -ne 0 ]; then echo "FAILED: $name (exit $rc)"; cat "$WORK/last.err"; exit 1; fi
  local secs user sys; read -r secs user sys < <(tail -n 1 "$WORK/time.out")
  CLIENT_CPU=$(python3 -c "print($user + $sys)")
  printf '%s\t%s\n' "$name" "$secs" >> "$RESULTS"
  printf '  %-24s %8.2f s\n' "$name" "$secs"
}

stgpool() { $ADMIN --json query stgpool; }

# cpu_ticks PID: user + system CPU of a running process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# cpu_line NAME CLIENT_SECS SERVER_TICKS_BEFORE S3_TICKS_BEFORE: where the CPU of
# the step just timed went (the S3 server's part is 0 for a local pool).
cpu_line() {
  local hz; hz=$(getconf CLK_TCK)
  local server=$(( $(cpu_ticks "$SERVER_PID") - $3 )) s3=0
  [ -n "$S3_PID" ] && s3=$(( $(cpu_ticks "$S3_PID") - $4 ))
  python3 -c "import sys; c,s,o,hz=float(sys.argv[1]),int(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4]); print(f'  {\"\":24} CPU: client {c:.2f} s, tandem-server {s/hz:.2f} s, S3 server {o/hz:.2f} s, total {c+(s+o)/hz:.2f} s')" "$2" "$server" "$s3" "$hz" | tee -a "$WORK/cpu.txt"
  printf '%s cpu\t%s\n' "$1" "$(python3 -c "print(float('$2') + ($server + $s3) / $hz)")" >> "$RESULTS"
}

# start_s3: s3s-fs on a free port with an empty bucket; exports the pool's
# settings for the next tandem-server.
start_s3() {
  rm -rf "$WORK/s3"; mkdir -p "$WORK/s3/bench"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$S3S_FS" --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret "$WORK/s3" > "$WORK/s3.log" 2>&1 &
  S3_PID=$!
  for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  export TANDEM_SERVER_POOL__KIND=s3 TANDEM_SERVER_POOL__ENDPOINT="http://127.0.0.1:$port" \
    TANDEM_SERVER_POOL__BUCKET=bench TANDEM_SERVER_POOL__CONTAINER_MIB=$CONTAINER_MIB \
    AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
  if [ -n "$CACHE_MIB" ]; then export TANDEM_SERVER_POOL__CACHE_MIB=$CACHE_MIB; fi
}
stop_s3() {
  kill "$S3_PID"; wait "$S3_PID" 2>/dev/null || true; S3_PID=
  unset TANDEM_SERVER_POOL__KIND TANDEM_SERVER_POOL__ENDPOINT TANDEM_SERVER_POOL__BUCKET \
    TANDEM_SERVER_POOL__CONTAINER_MIB TANDEM_SERVER_POOL__CACHE_MIB AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
}

# restart_server: the same data dir and port, a new process (empty caches).
restart_server() {
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  rm -f "$WORK/server/listen.addr"
  "$BIN/tandem-server" --data-dir "$WORK/server" --listen "$ADDR" --name BENCH $PLAIN_FLAG >> "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 200); do [ -s "$WORK/server/listen.addr" ] && break; sleep 0.05; done
}

# one_round local|s3 ROUND
one_round() {
  local pool=$1 restored=$WORK/restore-$1-$2
  export TANDEM_SERVER_POOL__CONTAINER_MIB=$CONTAINER_MIB
  [ "$pool" = s3 ] && start_s3
  start_primary BENCH
  ADMIN="$BIN/tandem-admin --server $SCHEME://$ADDR --token-file $WORK/server/admin.token"
  rm -rf "$WORK/state"
  local started; started=$(date +%s.%N)
  timed "$pool full backup" $T incremental "$DATA"
  if [ "$pool" = s3 ]; then
    for _ in $(seq 1 3000); do
      [ "$(stgpool | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["uploads_pending"])')" = 0 ] && break
      sleep 0.1
    done
    local drained; drained=$(python3 -c "import time; print(f'{time.time() - $started:.2f}')")
    printf '%s\t%s\n' "s3 backup until in bucket" "$drained" >> "$RESULTS"
    printf '  %-24s %8.2f s\n' "s3 backup until in bucket" "$drained"
    stgpool > "$WORK/after-backup.json"
  fi
  restart_server
  # Each restore goes to a new directory, kept until the run ends: this
  # file system (ext4 without a journal) skips inodes freed in the last
  # minute or more when it allocates new ones, so a restore made just after
  # the previous one was deleted spent 2-3x the CPU in the kernel, and which
  # pool came second decided the ratio.
  local server_before s3_before=0
  server_before=$(cpu_ticks "$SERVER_PID")
  [ -n "$S3_PID" ] && s3_before=$(cpu_ticks "$S3_PID")
  timed "$pool full restore" $T restore "$DATA/*" "$restored" --subdir
  cpu_line "$pool full restore" "$CLIENT_CPU" "$server_before" "$s3_before"
  diff -r -q "$DATA" "$restored" > /dev/null || { echo "$pool restore differs"; exit 1; }
  if [ "$pool" = s3 ]; then
    stgpool > "$WORK/after-restore.json"
    python3 - "$WORK/after-backup.json" "$WORK/after-restore.json" "$DATA_BYTES" <<'PY'
import json, sys
backup, restore = (json.load(open(f))[0] for f in sys.argv[1:3])
gb = int(sys.argv[3]) / 1e9
print(f"  {'':24} bucket: {backup['remote_containers']} containers, {backup['remote_bytes']/1e6:.0f} MB; "
      f"backup: {backup['put_requests']/gb:.0f} PUTs and {backup['head_requests']/gb:.0f} HEADs per GB of source; "
      f"restore: {restore['get_requests']/gb:.0f} GETs per GB ({restore['bytes_downloaded']/1e6:.0f} MB read)")
PY
  fi
  # Audits by a restarted server (cold cache): the whole pool, then a
  # seventh of it (what a nightly [audit] with slices = 7 reads).
  restart_server
  timed "$pool audit pool" $ADMIN --json audit pool
  timed "$pool audit pool 1/7" $ADMIN --json audit pool --read-data-subset 1/7
  if [ "$pool" = s3 ]; then
    stgpool > "$WORK/after-audit.json"
    python3 - "$WORK/after-audit.json" "$DATA_BYTES" <<'PY'
import json, sys
audit = json.load(open(sys.argv[1]))[0]
gb = int(sys.argv[2]) / 1e9
print(f"  {'':24} audits (whole + 1/7): {audit['get_requests']/gb:.0f} GETs per GB of source "
      f"({audit['bytes_downloaded']/1e6:.0f} MB read)")
PY
  fi
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
  [ "$pool" = s3 ] && stop_s3
  rm -rf "$WORK/server" "$WORK/s3"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round"
  if (( round % 2 )); then order="local s3"; else order="s3 local"; fi
  for pool in $order; do one_round "$pool" "$round"; done
done

python3 - "$RESULTS" "$DATA_BYTES" "$ROUNDS" "$CONTAINER_MIB" <<'PY'
import os, statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
med = lambda name: statistics.median(float(s) for n, s in rows if n == name)
spread = lambda name: ", ".join(f"{float(s):.2f}" for n, s in rows if n == name)
print(f"\ndataset {int(sys.argv[2]) / 1e6:.0f} MB, {sys.argv[3]} rounds, containers of {sys.argv[4]} MiB, "
      f"S3 read cache {os.environ.get('CACHE_MIB') or 'default'} MiB, "
      f"load {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
for name in ["local full backup", "s3 full backup", "s3 backup until in bucket", "local full restore", "s3 full restore",
             "local full restore cpu", "s3 full restore cpu",
             "local audit pool", "s3 audit pool", "local audit pool 1/7", "s3 audit pool 1/7"]:
    print(f"  {name:28} median {med(name):7.2f} s  (all: {spread(name)})")
b = med("s3 full backup") / med("local full backup")
d = med("s3 backup until in bucket") / med("local full backup")
r = med("s3 full restore") / med("local full restore")
a = med("s3 audit pool") / med("local audit pool")
print(f"S3/local: backup {b:.2f}x (until in the bucket {d:.2f}x), restore {r:.2f}x (target: within 1.5x), "
      f"audit of the pool {a:.2f}x")
PY
rm -rf "$WORK"
