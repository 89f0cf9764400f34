#!/usr/bin/env bash
# A fleet of nodes backing up to one server at once (issue 21): NODES (default
# 16) nodes, each with its own tree (the benchmark dataset's shape, smaller:
# SMALL=2500 MEDIUM=25 LARGE=0 per node, ~150 MB, every node's bytes its own),
# start their full backups at the same moment while the server replicates
# another node (~4 trees' worth) to a secondary. Against it, the same first
# node's full backup alone on a fresh server. Per round (ROUNDS, default 3,
# the two alternating which goes first, every server fresh):
#   - one client alone: wall time, MB/s;
#   - the fleet: wall time from the first start to the last end, aggregate
#     MB/s and its ratio to the single client's, each client's time, failed
#     clients and failed files (both must be 0), the replication run's time;
#   - logon latency: `tandem query session` (TLS handshake, logon, one query)
#     by a further node, every 0.25 s while the fleet runs, against the same
#     on the idle server;
#   - the primary's peak RSS (VmHWM) and its RSS idle before the fleet.
# The last round restores one fleet node's tree and compares it. Release
# build, TLS, 127.0.0.1 only.
#
#   tests/bench/fleet.sh          NODES=4 ROUNDS=1 for a quick run
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${BENCH_DIR:-/tmp/tandem-fleet-bench}
NODES=${NODES:-16}
ROUNDS=${ROUNDS:-3}
NODE_SMALL=${SMALL:-2500} NODE_MEDIUM=${MEDIUM:-25}
BIN=$ROOT/target/release
. "$ROOT/tests/bench/lib.sh"

[ -x /usr/bin/time ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time
(cd "$ROOT" && cargo build --release --bins --quiet)
rm -rf "$WORK"; mkdir -p "$WORK"
SERVER_PID= SECONDARY_PID=
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}" $SERVER_PID $SECONDARY_PID; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
RESULTS=$WORK/results.tsv
: > "$RESULTS"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$RESULTS"; }

# The trees: one per fleet node, and a larger one for the replicated node.
# Two generators at a time (two cores).
node_name() { printf 'n%02d' "$1"; }
gen() { SEED=$1 SMALL=$2 MEDIUM=$3 LARGE=0 python3 "$ROOT/tests/bench/dataset.py" generate "$4" > /dev/null; }
for i in $(seq 1 "$NODES"); do
  gen $((1000 + i)) "$NODE_SMALL" "$NODE_MEDIUM" "$WORK/data/$(node_name "$i")" &
  if (( i % 2 == 0 )); then wait; fi
done
gen 2000 $((NODE_SMALL * 4)) $((NODE_MEDIUM * 4)) "$WORK/data/archive" &
wait
NODE_BYTES=$(du -sb "$WORK/data/$(node_name 1)" | cut -f1)
FLEET_BYTES=0
for i in $(seq 1 "$NODES"); do
  FLEET_BYTES=$((FLEET_BYTES + $(du -sb "$WORK/data/$(node_name "$i")" | cut -f1)))
done
echo "data: $NODES trees, $((FLEET_BYTES / 1000000)) MB in all ($((NODE_BYTES / 1000000)) MB for $(node_name 1)); replicated node: $(du -sh "$WORK/data/archive" | cut -f1)"

# node_options NAME: registers NAME on the primary and writes its options file.
node_options() {
  echo "$1-password" | $ADMIN register node "$1" > /dev/null
  printf 'node_name = "%s"\nserver_address = "%s://%s"\n%s\npassword = "%s-password"\nstate_dir = "%s"\n' \
    "$1" "$SCHEME" "$ADDR" "$(pin_line "$WORK/server")" "$1" "$WORK/state-$1" > "$WORK/$1.toml"
  chmod 600 "$WORK/$1.toml"
  rm -rf "$WORK/state-$1"
}
# fresh_primary: a new primary with node bench (the replicated node), the
# probe node and the fleet's nodes registered.
fresh_primary() {
  start_primary BENCH   # the name start_secondary pairs with
  ADMIN="$BIN/tandem-admin --server $SCHEME://$ADDR --token-file $WORK/server/admin.token"
  node_options probe
  for i in $(seq 1 "$NODES"); do node_options "$(node_name "$i")"; done
}
stop_servers() {
  for pid in $SERVER_PID $SECONDARY_PID; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
  SERVER_PID= SECONDARY_PID=
}
ms_now() { echo $(( $(date +%s%N) / 1000000 )); }
# logon_probe FILE STOPFILE: times `query session` every 0.25 s until STOPFILE
# exists (at most 2,400 times, 10 minutes); a line "ms rc" each. What a
# failed logon said goes to $WORK/logon-failures (kept over the rounds).
logon_probe() {
  local n=0 t0
  while [ ! -e "$2" ] && (( n < 2400 )); do
    t0=$(ms_now)
    if "$BIN/tandem" --options "$WORK/probe.toml" --quiet query session > /dev/null 2> "$1.err"; then
      rc=0
    else
      rc=$?; cat "$1.err" >> "$WORK/logon-failures"
    fi
    echo "$(( $(ms_now) - t0 )) $rc" >> "$1"
    n=$((n + 1)); sleep 0.25
  done
}

# print_logon_failures: the three commonest lines failed logons wrote (awk,
# not head: a closed pipe would end the script under pipefail).
print_logon_failures() {
  [ -s "$WORK/logon-failures" ] || return 0
  echo "failed logons said (count, line):"
  sort "$WORK/logon-failures" | uniq -c | sort -rn | awk 'NR <= 3' | cut -c1-300
}

# rss_sampler PID FILE STOPFILE: the process's RSS (KiB), anonymous part and
# threads every 0.2 s until STOPFILE exists (at most 3,000 samples).
rss_sampler() {
  local n=0
  while [ ! -e "$3" ] && (( n < 3000 )); do
    awk '/^VmRSS/ {r=$2} /^RssAnon/ {a=$2} /^Threads/ {t=$2} END {print r, a, t}' "/proc/$1/status" >> "$2" 2>/dev/null || true
    n=$((n + 1)); sleep 0.2
  done
}

solo() {
  fresh_primary
  sync
  local t0; t0=$(ms_now)
  "$BIN/tandem" --options "$WORK/n01.toml" --quiet incremental "$WORK/data/n01" \
    || { echo "FAILED: the single client's backup"; exit 1; }
  local ms=$(( $(ms_now) - t0 ))
  record solo_ms "$ms" 0
  awk -v ms="$ms" -v b="$NODE_BYTES" 'BEGIN { printf "  one client alone        %8.2f s  %6.0f MB/s\n", ms / 1000, b / 1000 / ms }'
  stop_servers
}

fleet() {
  local round=$1
  fresh_primary
  start_secondary
  "$BIN/tandem" --options "$WORK/tandem.toml" --quiet incremental "$WORK/data/archive" > /dev/null
  # The idle server: its RSS, and five logons.
  record idle_rss_kib "$(awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status")" 0
  rm -f "$WORK/idle.lat"
  for _ in 1 2 3 4 5; do
    local t0; t0=$(ms_now)
    "$BIN/tandem" --options "$WORK/probe.toml" --quiet query session > /dev/null
    echo "$(( $(ms_now) - t0 )) 0" >> "$WORK/idle.lat"
  done
  sync
  rm -f "$WORK/fleet.done" "$WORK/busy.lat" "$WORK"/fleet-*.time "$WORK"/fleet-*.json "$WORK"/fleet-*.err
  logon_probe "$WORK/busy.lat" "$WORK/fleet.done" &
  local probe_pid=$!
  rm -f "$WORK/rss.samples"
  rss_sampler "$SERVER_PID" "$WORK/rss.samples" "$WORK/fleet.done" &
  local sampler_pid=$! start; start=$(ms_now)
  (
    s=$(ms_now)
    if $ADMIN replicate node bench --wait > "$WORK/repl.out" 2>&1; then rc=0; else rc=$?; fi
    echo "$rc $(( $(ms_now) - s ))" > "$WORK/repl.done"
  ) &
  local repl_pid=$!
  PIDS=()
  for i in $(seq 1 "$NODES"); do
    local n; n=$(node_name "$i")
    /usr/bin/time -f "%e %M" -o "$WORK/fleet-$n.time" \
      "$BIN/tandem" --options "$WORK/$n.toml" --json incremental "$WORK/data/$n" \
      > "$WORK/fleet-$n.json" 2> "$WORK/fleet-$n.err" &
    PIDS+=($!)
  done
  local failed=0
  for pid in "${PIDS[@]}"; do wait "$pid" || failed=$((failed + 1)); done
  local ms=$(( $(ms_now) - start ))
  PIDS=()
  touch "$WORK/fleet.done"
  wait "$probe_pid" "$sampler_pid" "$repl_pid" || true
  while read -r rss anon threads; do record rss_sample "$rss" "$anon"; record threads "$threads" 0; done < "$WORK/rss.samples"
  record fleet_ms "$ms" 0
  record failed_clients "$failed" 0
  record peak_rss_kib "$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")" 0
  read -r repl_rc repl_ms < "$WORK/repl.done"
  [ "$repl_rc" = 0 ] || { echo "FAILED: the replication run"; cat "$WORK/repl.out"; exit 1; }
  record repl_ms "$repl_ms" 0
  local failed_files
  failed_files=$(python3 -c '
import json, sys
print(sum(json.load(open(p)).get("failed", 0) for p in sys.argv[1:]))' "$WORK"/fleet-*.json 2>/dev/null || echo unreadable)
  record failed_files "$failed_files" 0
  for f in "$WORK"/fleet-*.time; do record client_s "$(tail -n 1 "$f" | cut -d' ' -f1)" "$(tail -n 1 "$f" | cut -d' ' -f2)"; done
  while read -r lat rc; do record idle_logon_ms "$lat" "$rc"; done < "$WORK/idle.lat"
  while read -r lat rc; do record busy_logon_ms "$lat" "$rc"; done < "$WORK/busy.lat"
  awk -v n="$NODES" -v ms="$ms" -v b="$FLEET_BYTES" -v f="$failed" -v ff="$failed_files" -v r="$repl_ms" \
    'BEGIN { printf "  fleet of %d              %8.2f s  %6.0f MB/s  failed clients %d, failed files %s, replication %.2f s\n", n, ms / 1000, b / 1000 / ms, f, ff, r / 1000 }'
  if (( failed > 0 )); then tail -n 3 "$WORK"/fleet-*.err; print_logon_failures; exit 1; fi
  if (( round == ROUNDS )); then
    local n; n=$(node_name "$NODES")
    "$BIN/tandem" --options "$WORK/$n.toml" --quiet restore "$WORK/data/$n/*" "$WORK/restore" --subdir
    diff -r -q "$WORK/data/$n" "$WORK/restore" > /dev/null || { echo "FAILED: $n's restore differs"; exit 1; }
    echo "  $n restored after the fleet: identical"
    rm -rf "$WORK/restore"
  fi
  stop_servers
}

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round"
  if (( round % 2 )); then solo; fleet "$round"; else fleet "$round"; solo; fi
done

python3 - "$RESULTS" "$NODES" "$NODE_BYTES" "$FLEET_BYTES" <<'PY'
import os, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, a, b = line.rstrip("\n").split("\t")
    rows.setdefault(name, []).append((float(a), float(b)))
nodes, node_mb, fleet_mb = int(sys.argv[2]), int(sys.argv[3]) / 1e6, int(sys.argv[4]) / 1e6
med = lambda name: statistics.median(v[0] for v in rows[name])
pct = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]
solo_s, fleet_s = med("solo_ms") / 1000, med("fleet_ms") / 1000
solo_rate, fleet_rate = node_mb / solo_s, fleet_mb / fleet_s
print(f"\n{nodes} nodes, {fleet_mb:.0f} MB in all, {len(rows['solo_ms'])} round(s), medians; "
      f"load {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
print(f"one client alone      {solo_s:7.2f} s  {solo_rate:6.0f} MB/s  (rounds: "
      + ", ".join(f"{v[0] / 1000:.2f}" for v in rows["solo_ms"]) + ")")
print(f"{nodes} clients at once    {fleet_s:7.2f} s  {fleet_rate:6.0f} MB/s aggregate  (rounds: "
      + ", ".join(f"{v[0] / 1000:.2f}" for v in rows["fleet_ms"]) + ")")
ratio = fleet_rate / solo_rate
print(f"aggregate / single    {ratio:7.2f}    target >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'}")
clients = [v[0] for v in rows["client_s"]]
print(f"each client's time    min {min(clients):.2f} s, median {statistics.median(clients):.2f} s, max {max(clients):.2f} s; "
      f"client peak RSS max {max(v[1] for v in rows['client_s']) / 1024:.0f} MiB")
print(f"failed clients        {int(sum(v[0] for v in rows['failed_clients']))}; failed files "
      f"{int(sum(v[0] for v in rows['failed_files']))}")
print(f"replication run       median {med('repl_ms') / 1000:.2f} s (4 trees' worth, during the fleet)")
idle = [v[0] for v in rows["idle_logon_ms"]]
busy = [v[0] for v in rows["busy_logon_ms"]]
busy_failed = sum(1 for v in rows["busy_logon_ms"] if v[1] != 0)
print(f"logon, idle server    median {statistics.median(idle):.0f} ms, max {max(idle):.0f} ms ({len(idle)} logons)")
print(f"logon, under load     median {statistics.median(busy):.0f} ms, p90 {pct(busy, 0.9):.0f} ms, "
      f"max {max(busy):.0f} ms ({len(busy)} logons, {busy_failed} failed)")
print(f"server RSS            idle {med('idle_rss_kib') / 1024:.0f} MiB; peak under the fleet "
      f"{max(v[0] for v in rows['peak_rss_kib']) / 1024:.0f} MiB (VmHWM, max over rounds)")
samples = rows.get("rss_sample", [])
if samples:
    rss = [v[0] for v in samples]
    print(f"  sampled every 0.2 s  RSS median {statistics.median(rss) / 1024:.0f} MiB, p90 {pct(rss, 0.9) / 1024:.0f} MiB, "
          f"max {max(rss) / 1024:.0f} MiB (anonymous max {max(v[1] for v in samples) / 1024:.0f} MiB); "
          f"threads max {max(v[0] for v in rows['threads']):.0f} ({len(rss)} samples)")
PY
print_logon_failures
rm -rf "$WORK"/data "$WORK"/state-*
