#!/usr/bin/env bash
# One server's catalog at 10 million versions (issue 21): NODES (default 50)
# nodes each back up the same tree of FILES (default 200,000) small files,
# two clients at a time, so the catalog holds NODES x FILES active versions.
# At each count of nodes in CHECKPOINTS (default "1 5 50": 0.2, 1 and 10
# million versions) it measures, on the release server over TLS:
#   - `query backup` of one directory (200 files) by the first node, median of 3;
#   - an incremental of the first node's unchanged 200,000-file filespace;
#   - `expire inventory` of 10,000 versions another node has just deactivated;
#   - the catalog's bytes on disk and per version, and the server's RSS;
# and each filling backup's time, to show whether a backup slows as the
# catalog grows. The last lines compare each figure at the last checkpoint
# with the one before against the growth in versions. 127.0.0.1 only; about
# 4 GB of disk at the default sizes.
#
#   tests/bench/catalog.sh        NODES=10 CHECKPOINTS="1 10" FILES=50000 for a quick run
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${BENCH_DIR:-/tmp/tandem-catalog-bench}
NODES=${NODES:-50}
FILES=${FILES:-200000}
CHECKPOINTS=${CHECKPOINTS:-1 5 50}
EXPIRE_FILES=10000
BIN=$ROOT/target/release
. "$ROOT/tests/bench/lib.sh"

(cd "$ROOT" && cargo build --release --bins --quiet)
rm -rf "$WORK"; mkdir -p "$WORK"
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
RESULTS=$WORK/results.tsv
: > "$RESULTS"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$RESULTS"; }
ms_now() { echo $(( $(date +%s%N) / 1000000 )); }

# tree DIR COUNT SEED: COUNT files of 32-96 random bytes, 200 per directory.
tree() {
  python3 - "$1" "$2" "$3" <<'PY'
import os, random, sys
root, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
for i in range(n):
    d = os.path.join(root, f"d{i // 200:04}")
    if i % 200 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:07}.txt"), "wb") as f:
        f.write(rng.randbytes(rng.randint(32, 96)))
PY
}
TREE=$WORK/tree
tree "$TREE" "$FILES" 1
echo "tree: $FILES files in $((FILES / 200)) directories"

start_primary CATALOG
ADMIN="$BIN/tandem-admin --server $SCHEME://$ADDR --token-file $WORK/server/admin.token"
# node_options NAME: registers NAME and writes its options file.
node_options() {
  echo "$1-password" | $ADMIN register node "$1" > /dev/null
  printf 'node_name = "%s"\nserver_address = "%s://%s"\n%s\npassword = "%s-password"\nstate_dir = "%s"\n' \
    "$1" "$SCHEME" "$ADDR" "$(pin_line "$WORK/server")" "$1" "$WORK/state-$1" > "$WORK/$1.toml"
  chmod 600 "$WORK/$1.toml"
}
node_name() { printf 'c%03d' "$1"; }
client() { "$BIN/tandem" --options "$WORK/$1.toml" --quiet "${@:2}"; }
node_options expirer
$ADMIN update node expirer --verdeleted 0 > /dev/null

# backup_timed NODE: the node's full backup of the tree; its seconds recorded.
backup_timed() {
  local t0; t0=$(ms_now)
  client "$1" incremental "$TREE" > /dev/null || { echo "FAILED: backup of $1"; exit 1; }
  record fill_ms "$(( $(ms_now) - t0 ))" "$1"
}

checkpoint() {
  local nodes=$1 versions=$(( $1 * FILES )) first; first=$(node_name 1)
  echo "== $nodes node(s), $versions versions"
  local t0 q
  for _ in 1 2 3; do
    t0=$(ms_now)
    client "$first" query backup "$TREE/d0$(printf '%03d' $((FILES / 400)))/*" > "$WORK/query.out"
    q=$(( $(ms_now) - t0 )); record query_ms "$q" "$versions"
  done
  local listed=$(( $(wc -l < "$WORK/query.out") - 2 ))
  echo "  query backup of one directory: ${q} ms (last of 3), $listed versions listed"
  t0=$(ms_now)
  client "$first" incremental "$TREE" > /dev/null
  local inc=$(( $(ms_now) - t0 )); record incremental_ms "$inc" "$versions"
  echo "  unchanged incremental of $FILES files: ${inc} ms"
  # Expiration: the expirer's 10,000 versions, deactivated just now.
  rm -rf "$WORK/expiring"; tree "$WORK/expiring" "$EXPIRE_FILES" "$((100 + nodes))"
  client expirer incremental "$WORK/expiring" > /dev/null
  rm -rf "$WORK/expiring"/*
  client expirer incremental "$WORK/expiring" > /dev/null
  t0=$(ms_now)
  $ADMIN --json expire inventory > "$WORK/expire.json"
  local exp=$(( $(ms_now) - t0 )); record expire_ms "$exp" "$versions"
  echo "  expire inventory ($EXPIRE_FILES versions due): ${exp} ms"
  local kib; kib=$(du -ck "$WORK/server"/catalog.db* | tail -1 | cut -f1)
  record catalog_kib "$kib" "$versions"
  record server_rss_kib "$(awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status")" "$versions"
  record server_hwm_kib "$(awk '/^VmHWM/ {print $2}' "/proc/$SERVER_PID/status")" "$versions"
  # The catalog is read through a memory map: its pages count in the RSS as
  # file cache (the kernel's to drop); the anonymous part is the server's own.
  record server_anon_kib "$(awk '/^RssAnon/ {print $2}' "/proc/$SERVER_PID/status")" "$versions"
  echo "  catalog $((kib / 1024)) MiB ($(( kib * 1024 / versions )) bytes per version)"
}

done_nodes=0
for target in $CHECKPOINTS; do
  (( target <= NODES )) || target=$NODES
  while (( done_nodes < target )); do
    # Two clients at a time (the second only while under the target).
    a=$((done_nodes + 1)); node_options "$(node_name "$a")"
    if (( a + 1 <= target )); then
      b=$((a + 1)); node_options "$(node_name "$b")"
      backup_timed "$(node_name "$a")" & pa=$!
      backup_timed "$(node_name "$b")" & pb=$!
      wait "$pa"; wait "$pb"
      done_nodes=$b
    else
      backup_timed "$(node_name "$a")"
      done_nodes=$a
    fi
  done
  checkpoint "$done_nodes"
done

python3 - "$RESULTS" "$FILES" <<'PY'
import os, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, value, key = line.rstrip("\n").split("\t")
    rows.setdefault(name, []).append((float(value), key))
files = int(sys.argv[2])
def at(name):
    out = {}
    for value, key in rows[name]:
        out.setdefault(int(key), []).append(value)
    return {k: statistics.median(v) for k, v in out.items()}
query, inc, exp = at("query_ms"), at("incremental_ms"), at("expire_ms")
cat, rss, hwm = at("catalog_kib"), at("server_rss_kib"), at("server_hwm_kib")
anon = at("server_anon_kib")
print(f"\nload {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores; {files} files per node")
print(f"{'versions':>11} {'query dir (ms)':>15} {'unchanged incr (s)':>19} {'expire 10k (s)':>15} "
      f"{'catalog MiB':>12} {'bytes/version':>14} {'server RSS MiB':>15}")
for v in sorted(query):
    print(f"{v:>11} {query[v]:>15.0f} {inc[v] / 1000:>19.2f} {exp[v] / 1000:>15.2f} "
          f"{cat[v] / 1024:>12.0f} {cat[v] * 1024 / v:>14.0f} {rss[v] / 1024:>8.0f} (peak {hwm[v] / 1024:.0f}, "
          f"anonymous {anon[v] / 1024:.0f})")
fills = [v for v, _ in rows["fill_ms"]]
k = max(1, len(fills) // 10)
print(f"filling backups of {files} files, two at a time: first {k}: median {statistics.median(fills[:k]) / 1000:.2f} s, "
      f"last {k}: median {statistics.median(fills[-k:]) / 1000:.2f} s ({len(fills)} backups)")
vs = sorted(query)
if len(vs) > 1:
    lo, hi = vs[-2], vs[-1]
    grow = hi / lo
    print(f"from {lo} to {hi} versions ({grow:.1f}x):")
    for name, table in [("query of one directory", query), ("unchanged incremental", inc),
                        ("expire inventory of 10k", exp), ("catalog bytes", cat)]:
        ratio = table[hi] / table[lo]
        print(f"  {name:<26} {ratio:>6.2f}x  {'superlinear' if ratio > grow * 1.1 else 'not superlinear'}")
PY
