#!/usr/bin/env bash
# What TLS costs a full backup. The benchmark dataset is generated once, then
# backed up ROUNDS times (default 5) to a fresh TLS server and to a fresh
# plaintext (--insecure-plaintext) server, alternating which goes first, with
# a sync before every run. Prints each time, the medians and the difference.
# Client and server share this machine's cores, so each side's TLS work slows
# the other; on separate hosts each pays only its own. Talks only to 127.0.0.1.
#
#   tests/bench/tls_cost.sh        ROUNDS=N for more pairs
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${BENCH_DIR:-/tmp/tandem-tls-cost}
ROUNDS=${ROUNDS:-5}
BIN=$ROOT/target/release
. "$ROOT/tests/bench/lib.sh"

[ -x /usr/bin/time ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time
(cd "$ROOT" && cargo build --release --bins --quiet)
rm -rf "$WORK"; mkdir -p "$WORK"
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

DATA=$WORK/data
python3 "$ROOT/tests/bench/dataset.py" generate "$DATA"
DATA_MB=$(( $(du -sb "$DATA" | cut -f1) / 1000000 ))
: > "$WORK/times.tsv"

# backup_once tls|plaintext: one full backup of $DATA to a new server.
backup_once() {
  if [ "$1" = tls ]; then SCHEME=https; PLAIN_FLAG=; else SCHEME=http; PLAIN_FLAG=--insecure-plaintext; fi
  start_primary BENCH
  rm -rf "$WORK/state"
  sync
  local rc=0
  /usr/bin/time -f "%e" -o "$WORK/time.out" \
    "$BIN/tandem" --options "$WORK/tandem.toml" --quiet incremental "$DATA" > /dev/null 2> "$WORK/last.err" || rc=$?
  if [ "$rc" -ne 0 ]; then echo "FAILED ($1, exit $rc)"; cat "$WORK/last.err"; exit 1; fi
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
  local secs; secs=$(tail -n 1 "$WORK/time.out")
  printf '%s\t%s\n' "$1" "$secs" >> "$WORK/times.tsv"
  printf '  %-10s %6.2f s\n' "$1" "$secs"
  rm -rf "$WORK/server"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round"
  if (( round % 2 )); then order="tls plaintext"; else order="plaintext tls"; fi
  for transport in $order; do backup_once "$transport"; done
done

python3 - "$WORK/times.tsv" "$DATA_MB" "$ROUNDS" <<'PY'
import os, statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]) if line.strip()]
times = {k: [float(s) for t, s in rows if t == k] for k in ("tls", "plaintext")}
tls, plain = statistics.median(times["tls"]), statistics.median(times["plaintext"])
print(f"\ndataset {sys.argv[2]} MB, {sys.argv[3]} pairs, load {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
print(f"full backup, TLS        median {tls:6.2f} s  (all: {', '.join(f'{t:.2f}' for t in times['tls'])})")
print(f"full backup, plaintext  median {plain:6.2f} s  (all: {', '.join(f'{t:.2f}' for t in times['plaintext'])})")
print(f"TLS costs {100 * (tls / plain - 1):+.1f}% of the plaintext backup's wall time (target: within 10%)")
PY
rm -rf "$WORK"
