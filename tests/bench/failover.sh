#!/usr/bin/env bash
# Failover benchmark: time from command start to the first restored byte
# (a one-file restore) with the primary up, refusing connections, and silent
# (a loopback listener that accepts TCP and never answers). Median of RUNS
# (default 10). Release build, 127.0.0.1 only.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${BENCH_DIR:-/tmp/tandem-failover-bench}
RUNS=${RUNS:-10}
BIN=$ROOT/target/release
(cd "$ROOT" && cargo build --release --bins --quiet)
rm -rf "$WORK"; mkdir -p "$WORK/src"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
start() { # start NAME DIR -> sets ADDR
  "$BIN/tandem-server" --data-dir "$2" --listen 127.0.0.1:0 --name "$1" > "$2.log" 2>&1 &
  PIDS+=($!); LAST_PID=$!
  for _ in $(seq 1 200); do [ -s "$2/listen.addr" ] && break; sleep 0.05; done
  ADDR=$(cat "$2/listen.addr")
}
start PRIMARY "$WORK/primary"; P=$ADDR; PRIMARY_PID=$LAST_PID
start SECONDARY "$WORK/secondary"; S=$ADDR
AP="$BIN/tandem-admin --server https://$P --token-file $WORK/primary/admin.token"
AS="$BIN/tandem-admin --server https://$S --token-file $WORK/secondary/admin.token"
echo 'bench-server-pw' > "$WORK/spw"; echo 'bench-password' > "$WORK/pw"
$AP register node bench --password-file "$WORK/pw" > /dev/null
$AP define server SECONDARY --address "https://$S" --fingerprint "$(cat "$WORK/secondary/fingerprint")" --server-password-file "$WORK/spw" > /dev/null
$AS define server PRIMARY --address "https://$P" --fingerprint "$(cat "$WORK/primary/fingerprint")" --server-password-file "$WORK/spw" > /dev/null
$AP set replserver SECONDARY > /dev/null
$AP update node bench --replstate enabled > /dev/null
printf 'node_name = "bench"\nserver_name = "PRIMARY"\nserver_address = "https://%s"\nserver_fingerprint = "%s"\npassword = "bench-password"\nstate_dir = "%s"\n' "$P" "$(cat "$WORK/primary/fingerprint")" "$WORK/state" > "$WORK/tandem.toml"
chmod 600 "$WORK/tandem.toml"   # it holds the password
echo "first byte" > "$WORK/src/file.txt"
T="$BIN/tandem --options $WORK/tandem.toml --quiet"
$T incremental "$WORK/src" > /dev/null
$AP replicate node bench --wait > /dev/null
$T query session > /dev/null   # the logon saves the failover block

measure() { # measure LABEL -> median ms of RUNS restores
  local times=()
  for _ in $(seq 1 "$RUNS"); do
    rm -rf "$WORK/out"
    local t0; t0=$(date +%s%N)
    $T restore "$WORK/src/file.txt" "$WORK/out" > /dev/null 2>&1 || true
    local t1; t1=$(date +%s%N)
    [ -s "$WORK/out/file.txt" ] || { echo "$1: restore failed"; exit 1; }
    times+=($(( (t1 - t0) / 1000000 )))
  done
  local median; median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '  %-34s median %5d ms   (runs: %s)\n' "$1" "$median" "${times[*]}"
}
echo "time from command start to the first restored byte, $RUNS runs each:"
measure "primary up"
kill "$PRIMARY_PID"; wait "$PRIMARY_PID" 2>/dev/null || true
measure "primary refusing connections"
python3 -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(64)
print(s.getsockname()[1], flush=True)
time.sleep(600)   # accepts (kernel backlog) and never answers; bounded
' > "$WORK/silent.port" &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$WORK/silent.port" ] && break; sleep 0.05; done
sed -i "s|^server_address = .*|server_address = \"https://127.0.0.1:$(cat "$WORK/silent.port")\"|" "$WORK/tandem.toml"
measure "primary silent (accepts, never answers)"
echo "error log lines written: $(wc -l < "$WORK/state/dsierror.log")"
