#!/usr/bin/env bash
# Scale benchmark: trees of many small files (default 50,000 and 200,000; 1-2 KiB
# of random data each, 200 files per folder, folders nested two deep). For each
# size: first backup, unchanged re-run and `query backup` over the whole
# filespace, with wall time and client peak RSS; the catalog's size; the
# server's peak RSS; and restic's first backup and unchanged re-run on the same
# tree for reference. Comparing the sizes shows whether memory grows with the
# file count. Release build, 127.0.0.1 only.
#
#   tests/bench/scale.sh               COUNTS="20000" for a quick run
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${BENCH_DIR:-/tmp/tandem-scale-bench}
COUNTS=${COUNTS:-50000 200000}
BIN=$ROOT/target/release
. "$ROOT/tests/bench/lib.sh"

command -v restic >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic time; }
[ -x /usr/bin/time ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time
(cd "$ROOT" && cargo build --release --bins --quiet)

SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK"
RESULTS=$WORK/results.tsv
: > "$RESULTS"

# measure COUNT NAME CMD...: wall seconds and peak RSS (KiB) of CMD into $RESULTS
measure() {
  local count=$1 name=$2; shift 2
  /usr/bin/time -f "%e %M" -o "$WORK/time.out" "$@" > "$WORK/last.out" 2> "$WORK/last.err" || {
    echo "FAILED: $name"; tail -5 "$WORK/last.err"; exit 1; }
  read -r secs rss < "$WORK/time.out"
  printf '%s\t%s\t%s\t%s\n' "$count" "$name" "$secs" "$rss" >> "$RESULTS"
  printf '  %-28s %8.2f s  %8d KiB\n' "$name" "$secs" "$rss"
}

export RESTIC_PASSWORD=bench
for count in $COUNTS; do
  echo "== $count files"
  DATA=$WORK/data-$count
  python3 - "$DATA" "$count" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(n)
for i in range(n):
    d = os.path.join(root, f"top{i // 20000:02}", f"dir{i // 200:04}")
    if i % 200 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"file{i:07}.dat"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 2048)))
PY
  rm -rf "$WORK/state"
  start_primary SCALE
  T="$BIN/tandem --options $WORK/tandem.toml --quiet"

  measure "$count" "tandem first backup" $T incremental "$DATA"
  measure "$count" "tandem unchanged re-run" $T incremental "$DATA"
  measure "$count" "tandem query backup" $T query backup "$DATA/*" --subdir
  listed=$(($(wc -l < "$WORK/last.out") - 2))
  echo "  query backup listed $listed versions"
  printf '%s\tlisted\t0\t%s\n' "$count" "$listed" >> "$RESULTS"
  printf '%s\tcatalog\t0\t%s\n' "$count" "$(du -ck "$WORK/server"/catalog.db* | tail -1 | cut -f1)" >> "$RESULTS"
  printf '%s\tserver peak\t0\t%s\n' "$count" "$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")" >> "$RESULTS"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=

  export RESTIC_REPOSITORY=$WORK/restic
  rm -rf "$RESTIC_REPOSITORY"; restic init -q
  measure "$count" "restic first backup" restic backup -q "$DATA"
  measure "$count" "restic unchanged re-run" restic backup -q "$DATA"
  rm -rf "$RESTIC_REPOSITORY" "$DATA"
done

python3 - "$RESULTS" <<'PY'
import sys, os
rows = {}
for line in open(sys.argv[1]):
    count, name, secs, kib = line.rstrip("\n").split("\t")
    rows[(int(count), name)] = (float(secs), int(kib))
counts = sorted({c for c, _ in rows})
print(f"\nload {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores; seconds and peak RSS (MiB)")
print(f"{'files':>8} {'step':<26} {'seconds':>9} {'RSS MiB':>8}")
for c in counts:
    for step in ["tandem first backup", "tandem unchanged re-run", "tandem query backup",
                 "restic first backup", "restic unchanged re-run"]:
        s, k = rows[(c, step)]
        print(f"{c:>8} {step:<26} {s:>9.2f} {k / 1024:>8.0f}")
    print(f"{c:>8} {'versions listed':<26} {rows[(c, 'listed')][1]:>9}")
    print(f"{c:>8} {'catalog size (MiB)':<26} {rows[(c, 'catalog')][1] / 1024:>9.1f}"
          f"   ({rows[(c, 'catalog')][1] * 1024 / c:.0f} bytes per file)")
    print(f"{c:>8} {'server peak RSS (MiB)':<26} {rows[(c, 'server peak')][1] / 1024:>9.0f}")
if len(counts) > 1:
    lo, hi = counts[0], counts[-1]
    for step in ["tandem first backup", "tandem unchanged re-run", "tandem query backup"]:
        a, b = rows[(lo, step)][1], rows[(hi, step)][1]
        print(f"client RSS growth, {step}: {(b - a) / 1024:+.0f} MiB from {lo} to {hi} files"
              f" ({(b - a) * 1024 / (hi - lo):.0f} bytes per added file)")
PY
