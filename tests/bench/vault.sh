#!/usr/bin/env bash
# The local vault tier against a server alone, on the benchmark dataset
# (smaller by default: SMALL=5000 MEDIUM=50 LARGE=2 LARGE_MIB=64, ~0.5 GB):
#   - full backup to the server alone, and to server + vault (the backup,
#     then the vault's pull from the server), each on a fresh release
#     tandem-server over TLS on 127.0.0.1, alternating which goes first;
#   - full restore from the server, and from the synchronized vault;
#   - after a ~1% change: what the backup sent and what the vault's sync
#     moved (versions, chunks, bytes: TDM2123I);
#   - three pairs of restores from that one server, with the vault and
#     without it in turn.
# Wall time and peak RSS of the client; each step's stderr and each server's
# log stay in $WORK/logs. Talks only to 127.0.0.1.
#
#   tests/bench/vault.sh          REPS (default 3); SMALL/MEDIUM/LARGE/LARGE_MIB size the data
#   DATASET=smalltree tests/bench/vault.sh
#                                 issue 21's tree of 80,000 small files instead (~0.6 GB), where
#                                 the vault's per-file catalog work weighs most
#   SERVER_STORE=/dev/shm tests/bench/vault.sh
#                                 the server's data on tmpfs, standing in for a server on its own
#                                 machine: the vault then has the disk to itself, as on a client
#                                 whose server is elsewhere (by default both share this one disk);
#                                 its restores from the server then read from memory, so compare
#                                 restores in the default layout
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${BENCH_DIR:-/tmp/tandem-vault-bench}
REPS=${REPS:-3}
BIN=$ROOT/target/release
export SMALL=${SMALL:-5000} MEDIUM=${MEDIUM:-50} LARGE=${LARGE:-2} LARGE_MIB=${LARGE_MIB:-64}
. "$ROOT/tests/bench/lib.sh"
PRIMARY_STORE=${SERVER_STORE:-}

[ -x /usr/bin/time ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time
(cd "$ROOT" && cargo build --release --bins --quiet)
rm -rf "$WORK"; mkdir -p "$WORK"
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null || true
  [ -n "$PRIMARY_STORE" ] && rm -rf "$(primary_data_dir)"
  return 0
}
trap cleanup EXIT

RESULTS=$WORK/results.tsv
: > "$RESULTS"
# Every step's stderr and every server's log are kept in $WORK/logs, so that
# an outlier can be looked into afterwards.
mkdir -p "$WORK/logs"
STEP=0
# timed NAME CMD...: wall seconds and peak RSS (KiB) of CMD, after a sync.
timed() {
  local name=$1; shift
  sync
  /usr/bin/time -f "%e %M" -o "$WORK/time.out" "$@" > "$WORK/last.out" 2> "$WORK/last.err" \
    || { echo "FAILED: $name"; cat "$WORK/last.err"; exit 1; }
  STEP=$((STEP + 1))
  cp "$WORK/last.err" "$WORK/logs/$(printf '%02d' "$STEP") ${name//[^A-Za-z0-9,%+ -]/_}.err"
  read -r secs rss < <(tail -n 1 "$WORK/time.out")
  printf '%s\t%s\t%s\n' "$name" "$secs" "$rss" >> "$RESULTS"
  printf '  %-30s %8.2f s  %8d KiB\n' "$name" "$secs" "$rss"
}
stop_server() {
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
  cp "$WORK/server.log" "$WORK/logs/server-after-step-$(printf '%02d' "$STEP").log"
}

DATA=$WORK/data
case ${DATASET:-mixed} in
  mixed) python3 "$ROOT/tests/bench/dataset.py" generate "$DATA" ;;
  smalltree) python3 "$ROOT/tests/bench/dataset.py" generate-smalltree "$DATA" ;;
  *) echo "DATASET must be mixed or smalltree, not '$DATASET'" >&2; exit 2 ;;
esac
echo "data: $(du -sh "$DATA" | cut -f1)"
echo "server data in $(primary_data_dir)${PRIMARY_STORE:+ (its own storage)}; vault in $WORK/vault"
T="$BIN/tandem --options $WORK/tandem.toml --quiet"
TV="$BIN/tandem --options $WORK/tandem.toml"   # says where a restore came from
for rep in $(seq 1 "$REPS"); do
  echo "== round $rep"
  if (( rep % 2 )); then order="alone vault"; else order="vault alone"; fi
  for kind in $order; do
    start_primary VAULTBENCH
    rm -rf "$WORK/vault" "$WORK/state"
    # Every restore gets a new directory, kept until the run ends: this
    # file system (ext4 without a journal) skips inodes freed in the last
    # minute or more when it allocates new ones, so a restore just after
    # the previous one was deleted spent 2-3x the CPU in the kernel.
    restored=$WORK/restore-$rep-$kind
    if [ "$kind" = vault ]; then
      printf 'vault_dir = "%s"\n' "$WORK/vault" >> "$WORK/tandem.toml"
    fi
    timed "backup, server $kind" $T incremental "$DATA"
    if [ "$kind" = vault ]; then
      timed "restore from the vault" $TV restore "$DATA/*" "$restored" --subdir
      grep -q TDM2126I "$WORK/last.err" || { echo "the restore did not come from the vault"; cat "$WORK/last.err"; exit 1; }
    else
      timed "restore from the server" $T restore "$DATA/*" "$restored" --subdir
    fi
    diff -r -q "$DATA" "$restored" > /dev/null || { echo "restore differs"; exit 1; }
    stop_server
  done
done
# A 1% change with the vault: what the backup sent, what the sync moved.
start_primary VAULTBENCH
rm -rf "$WORK/vault" "$WORK/state"
printf 'vault_dir = "%s"\n' "$WORK/vault" >> "$WORK/tandem.toml"
$T incremental "$DATA" > /dev/null 2>&1
python3 "$ROOT/tests/bench/dataset.py" mutate "$DATA"
T1="$BIN/tandem --options $WORK/tandem.toml --json"
timed "backup after 1%, with vault" $T1 incremental "$DATA"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f'  backup after 1%: {r[\"backed_up\"]} versions, {r[\"bytes_sent\"]} bytes sent')" "$WORK/last.out"
grep -o 'Local vault synchronized.*' "$WORK/state/dsierror.log" | tail -n 1 | sed 's/^/  /'
grep -v '^vault_dir' "$WORK/tandem.toml" > "$WORK/novault.toml"
chmod 600 "$WORK/novault.toml"   # it holds the password
TN="$BIN/tandem --options $WORK/novault.toml --quiet"
# Unchanged incrementals with the synchronized vault and without it in
# turn: what the sync at the end of every command costs when nothing moved.
for pair in 1 2 3; do
  timed "unchanged incr, vault" $T incremental "$DATA"
  timed "unchanged incr, server" $TN incremental "$DATA"
done
# Restores back to back from one server, with the synchronized vault and
# without it in turn: the fresh-server rounds above drift with the disk's
# writeback, pairs on one setup compare the two sources more fairly.
for pair in 1 2 3; do
  timed "paired restore, vault" $TV restore "$DATA/*" "$WORK/paired-$pair-vault" --subdir
  grep -q TDM2126I "$WORK/last.err" || { echo "the restore did not come from the vault"; exit 1; }
  timed "paired restore, server" $TN restore "$DATA/*" "$WORK/paired-$pair-server" --subdir
done
stop_server

python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, secs, rss = line.rstrip("\n").split("\t")
    rows.setdefault(name, []).append((float(secs), int(rss)))
def med(name, i=0):
    return statistics.median(v[i] for v in rows[name])
print("medians:")
for name in rows:
    print(f"  {name:30} {med(name):8.2f} s  {int(med(name, 1)):8d} KiB  (min {min(v[0] for v in rows[name]):.2f}, max {max(v[0] for v in rows[name]):.2f})")
print(f"backup server + vault / server alone: {med('backup, server vault') / med('backup, server alone'):.2f}x")
print(f"restore from vault / from server:     {med('restore from the vault') / med('restore from the server'):.2f}x")
print(f"paired restores, vault / server:      {med('paired restore, vault') / med('paired restore, server'):.2f}x")
print(f"unchanged incremental, vault / server: {med('unchanged incr, vault') / med('unchanged incr, server'):.2f}x"
      f" (peak RSS {med('unchanged incr, vault', 1) / 1024:.0f} against {med('unchanged incr, server', 1) / 1024:.0f} MiB)")
PY
rm -rf "$WORK"/restore-* "$WORK"/paired-*   # kept until now (see above)
