#!/usr/bin/env bash
# A burst of logons from one address (issue 21, "logon latency under load";
# and the busy-is-not-down rule of the README's "Failover and failback"):
# N (default 200) `tandem query session` by one node, all started at once,
# against a release primary paired with a secondary, after the node's
# options file has received its failover block. Prints how many logged on to
# the primary, how many failed over (TDM2106I-2108I) or failed, the slowest
# and median times, and the messages they printed, most common first.
#
#   N=400 tests/bench/logons.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${BENCH_DIR:-/tmp/tandem-logons-bench}
N=${N:-200}
BIN=$ROOT/target/release
. "$ROOT/tests/bench/lib.sh"

(cd "$ROOT" && cargo build --release --bins --quiet)
rm -rf "$WORK"; mkdir -p "$WORK/out"
SERVER_PID= SECONDARY_PID=
cleanup() {
  for pid in $SERVER_PID $SECONDARY_PID; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
start_primary BENCH
ADMIN="$BIN/tandem-admin --server $SCHEME://$ADDR --token-file $WORK/server/admin.token"
start_secondary
mkdir -p "$WORK/tree"; echo "one file" > "$WORK/tree/file"
"$BIN/tandem" --options "$WORK/tandem.toml" --quiet incremental "$WORK/tree" > /dev/null
$ADMIN replicate node bench --wait > /dev/null
"$BIN/tandem" --options "$WORK/tandem.toml" --quiet query session > /dev/null
grep -q '^\[replication_servers' "$WORK/tandem.toml" || { echo "FAILED: no failover block was pushed"; exit 1; }
: > "$WORK/state/dsierror.log"

ms_now() { echo $(( $(date +%s%N) / 1000000 )); }
start=$(ms_now)
pids=()
for i in $(seq 1 "$N"); do
  (
    t0=$(ms_now)
    if "$BIN/tandem" --options "$WORK/tandem.toml" --json query session > "$WORK/out/$i.json" 2> "$WORK/out/$i.err"; then rc=0; else rc=$?; fi
    echo "$rc $(( $(ms_now) - t0 ))" > "$WORK/out/$i.rc"
  ) &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || true; done
echo "$N logons from 127.0.0.1 at once, all ended in $(( $(ms_now) - start )) ms"
cat "$WORK"/out/*.rc | sort -k2 -n | awk '
  { n++; ms[n] = $2; if ($1 != 0) failed++ }
  END { printf "  failed %d, median %d ms, slowest %d ms\n", failed, ms[int((n + 1) / 2)], ms[n] }'
# grep finding nothing is an answer here, not a failure.
count_mode() { { grep -l "\"mode\": *\"$1\"" "$WORK"/out/*.json 2>/dev/null || true; } | wc -l; }
normal=$(count_mode normal) failover=$(count_mode failover)
echo "  sessions on the primary $normal, in failover mode $failover"
echo "  dsierror.log: $(grep -c TDM2106I "$WORK/state/dsierror.log" || true) failover attempts (TDM2106I), $(grep -c TDM1071W "$WORK/state/dsierror.log" || true) busy waits (TDM1071W)"
if [ -n "$(cat "$WORK"/out/*.err)" ]; then
  echo "  what they printed (count, message):"
  cat "$WORK"/out/*.err | sed -E 's/127\.0\.0\.1:[0-9]+/ADDR/g; s/[0-9]+ ms/N ms/g; s/\(guid [^)]*\)/(guid …)/; s/replicated [0-9T:.+-]+/replicated …/' \
    | cut -c1-160 | sort | uniq -c | sort -rn | awk 'NR <= 6'
fi
