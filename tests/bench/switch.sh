#!/usr/bin/env bash
# How long a planned role switch of 10 nodes takes (`switch replication
# --all`). The benchmark dataset is split into 10 parts, one per node; each
# node backs its part up to the primary, all are replicated to the
# secondary, then ~1% of the files change and every node backs up again, so
# the switch's final replication has that change to carry. The switch is
# timed, then one client's first command after it (its logon is redirected
# to the new primary, its options file rewritten), then a restore of that
# node's part from the new primary, compared with the data byte for byte.
# Last, the switch back (run on the new primary) is timed. Talks only to
# 127.0.0.1.
#
#   tests/bench/switch.sh        ROUNDS=N for more rounds (default 1)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${BENCH_DIR:-/tmp/tandem-switch}
ROUNDS=${ROUNDS:-1}
NODES=10
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
DATA_MB=0
: > "$WORK/times.tsv"

# wall NAME CMD...: the wall seconds of CMD (after a sync) into times.tsv.
wall() {
  local name=$1; shift
  sync
  /usr/bin/time -f "%e" -o "$WORK/time.out" "$@" > "$WORK/last.out" 2> "$WORK/last.err" ||
    { echo "FAILED: $name"; cat "$WORK/last.err"; cat "$WORK/last.out"; exit 1; }
  local secs; secs=$(tail -n 1 "$WORK/time.out")
  printf '%s\t%s\n' "$name" "$secs" >> "$WORK/times.tsv"
  printf '  %-34s %7.2f s\n' "$name" "$secs"
}

# part K: the dataset paths node K backs up (every 10th small-file folder;
# the medium files go to node 0, the large ones to node 1).
part() {
  local k=$1 i
  for i in $(seq "$k" "$NODES" 63); do printf '%s\n' "$DATA/small/d$(printf %02d "$i")"; done
  [ "$k" = 0 ] && printf '%s\n' "$DATA/medium"
  [ "$k" = 1 ] && printf '%s\n' "$DATA/large"
  return 0
}

node_name() { printf 'node%02d' "$1"; }

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round"
  rm -rf "$DATA"   # each round starts from the unchanged dataset
  python3 "$ROOT/tests/bench/dataset.py" generate "$DATA" > /dev/null
  DATA_MB=$(( $(du -sb "$DATA" | cut -f1) / 1000000 ))
  start_primary BENCH
  ADMIN="$BIN/tandem-admin --server $SCHEME://$ADDR --token-file $WORK/server/admin.token"
  start_secondary
  ADMIN2="$BIN/tandem-admin --server $SCHEME://$ADDR2 --token-file $WORK/secondary/admin.token"
  $ADMIN update node bench --replstate disabled > /dev/null   # lib.sh's node; not one of the 10
  for k in $(seq 0 $((NODES - 1))); do
    node=$(node_name "$k")
    echo "$node-password" | $ADMIN register node "$node" > /dev/null
    $ADMIN update node "$node" --replstate enabled > /dev/null
    mkdir -p "$WORK/c$k"
    printf '# bench client %s\nnode_name = "%s"\nserver_name = "BENCH"\nserver_address = "%s://%s"\n%s\npassword = "%s-password"\nstate_dir = "%s"\n' \
      "$node" "$node" "$SCHEME" "$ADDR" "$(pin_line "$WORK/server")" "$node" "$WORK/c$k/state" > "$WORK/c$k/tandem.toml"
    chmod 600 "$WORK/c$k/tandem.toml"
    mapfile -t paths < <(part "$k")
    "$BIN/tandem" --options "$WORK/c$k/tandem.toml" --quiet incremental "${paths[@]}" > /dev/null
  done
  wall "first replication (10 nodes)" bash -c "for k in \$(seq 0 $((NODES - 1))); do $ADMIN --json replicate node node\$(printf %02d \$k) --wait > /dev/null || exit 1; done"
  python3 "$ROOT/tests/bench/dataset.py" mutate "$DATA" > /dev/null
  for k in $(seq 0 $((NODES - 1))); do
    mapfile -t paths < <(part "$k")
    # Each client logs on once more here, which saves the pushed replication server.
    "$BIN/tandem" --options "$WORK/c$k/tandem.toml" --quiet incremental "${paths[@]}" > /dev/null
  done

  wall "switch of 10 nodes" $ADMIN --json switch replication --all
  python3 - "$WORK/last.out" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
bad = [r for r in rows if r["state"] != "switched"]
if bad or len(rows) != 10:
    sys.exit(f"not every node switched: {rows}")
sent = sum(r["objects_sent"] for r in rows)
print(f"  {'':34} {len(rows)} nodes switched; final replication sent {sent} versions")
PY
  wall "first command after (redirect)" "$BIN/tandem" --options "$WORK/c0/tandem.toml" --json query filespace
  grep -q "server_address = \"$SCHEME://$ADDR2\"" "$WORK/c0/tandem.toml" ||
    { echo "  the client's options file does not name the new primary"; exit 1; }
  rm -rf "$WORK/restored"
  mapfile -t paths < <(part 0)
  wall "restore of node00 (new primary)" "$BIN/tandem" --options "$WORK/c0/tandem.toml" --quiet restore "$DATA/*" "$WORK/restored/" --subdir
  for p in "${paths[@]}"; do
    diff -r "$p" "$WORK/restored/${p#"$DATA"/}" > /dev/null ||
      { echo "  restore of $p from the new primary DIFFERS from the data"; exit 1; }
  done
  echo "  restore of node00 from the new primary: identical to its part of the data"
  wall "switch back of 10 nodes" $ADMIN2 --json switch replication --all

  kill "$SERVER_PID" "$SECONDARY_PID"; wait "$SERVER_PID" "$SECONDARY_PID" 2>/dev/null || true
  SERVER_PID=; SECONDARY_PID=
  rm -rf "$WORK/server" "$WORK/secondary" "$WORK/restored" "$WORK"/c*
done

python3 - "$WORK/times.tsv" "$DATA_MB" "$ROUNDS" <<'PY'
import os, statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
def median(name):
    return statistics.median(float(s) for n, s in rows if n == name)
mb = int(sys.argv[2])
print(f"\ndataset {mb} MB in 10 nodes, {sys.argv[3]} round(s), medians; load {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
for name in ["first replication (10 nodes)", "switch of 10 nodes", "first command after (redirect)",
             "restore of node00 (new primary)", "switch back of 10 nodes"]:
    print(f"{name:34} {median(name):6.2f} s")
PY
rm -rf "$WORK"
