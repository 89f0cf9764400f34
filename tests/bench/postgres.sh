#!/usr/bin/env bash
# The PostgreSQL agent on a pgbench database (scale 50 by default, about
# 750 MB), against a real PostgreSQL 15 run as the postgres user:
#   1. base backup: `tandem backup db postgres` (streamed to a release
#      tandem-server over TLS on 127.0.0.1) against `pg_basebackup -Ft` to
#      a local directory, alternating, REPS times each, with a short pgbench
#      run between rounds so each backup has changes; wall time and peak RSS;
#   2. WAL archiving through `archive_command = 'tandem archive-wal %p'`
#      while pgbench runs flat out for PGBENCH_SECS: the archive lag (WAL
#      segments written but not yet archived), sampled every second, and
#      how long the archiver needs to catch up after pgbench stops;
#   3. point-in-time restore: `tandem restore db postgres` of the newest
#      base backup, then PostgreSQL replaying the archived WAL through
#      `restore-wal` until it promotes.
# Needs root (it runs PostgreSQL as postgres with setpriv). Talks only to
# 127.0.0.1 and a Unix socket in its own directory.
#
#   tests/bench/postgres.sh      SCALE=N REPS=N PGBENCH_SECS=N to change
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${BENCH_DIR:-/tmp/tandem-pg}
SCALE=${SCALE:-50}
REPS=${REPS:-3}
PGBENCH_SECS=${PGBENCH_SECS:-60}
BIN=$ROOT/target/release
PGBIN=/usr/lib/postgresql/15/bin
. "$ROOT/tests/bench/lib.sh"

[ -x /usr/bin/time ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time
[ -x "$PGBIN/postgres" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15
(cd "$ROOT" && cargo build --release --bins --quiet)
rm -rf "$WORK"; mkdir -p "$WORK"; chmod 755 "$WORK"
SERVER_PID=
PG_PID=
PG2_PID=
cleanup() {
  for pid in $PG_PID $PG2_PID; do kill -INT "$pid" 2>/dev/null || true; done
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
  wait 2>/dev/null || true
}
trap cleanup EXIT

AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
as_pg() { "${AS_PG[@]}" "$@"; }
export PATH=$PGBIN:$PATH

start_primary PGBENCH
mkdir -p "$WORK/state"
chown postgres:postgres "$WORK/tandem.toml" "$WORK/state"
TANDEM="$BIN/tandem --options $WORK/tandem.toml --quiet"

PGDATA=$WORK/pgdata
SOCK=$WORK/sock
mkdir -p "$SOCK" "$WORK/local"; chown postgres:postgres "$SOCK" "$WORK/local"
chown postgres:postgres "$WORK"
as_pg "$PGBIN/initdb" -D "$PGDATA" --auth=trust -U postgres > /dev/null
cat >> "$PGDATA/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$SOCK'
archive_mode = on
archive_command = '$TANDEM archive-wal %p'
max_wal_size = 1GB
EOF
as_pg "$PGBIN/postgres" -D "$PGDATA" > "$WORK/pg.log" 2>&1 &
PG_PID=$!
export PGHOST=$SOCK PGUSER=postgres PGDATABASE=postgres
for _ in $(seq 1 120); do pg_isready -q && break; sleep 0.5; done
pg_isready -q || { echo "PostgreSQL did not start"; cat "$WORK/pg.log"; exit 1; }
sql() { as_pg psql -Atq -v ON_ERROR_STOP=1 -c "$1"; }

# segment NAME: a WAL file name's position as one number (16 MiB segments).
segment() { echo $(( 16#${1:8:8} * 256 + 16#${1:16:8} )); }

# caught_up: waits until everything written so far is archived; prints secs.
caught_up() {
  local want start now
  want=$(sql "SELECT pg_walfile_name(pg_switch_wal())")
  start=$(date +%s.%N)
  local last
  for _ in $(seq 1 1200); do
    last=$(sql "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
    if [ "$last" = "$want" ] || [ "$last" \> "$want" ]; then break; fi
    sleep 0.25
  done
  now=$(date +%s.%N)
  python3 -c "print(f'{$now - $start:.1f}')"
}

echo "== pgbench -i -s $SCALE"
as_pg pgbench -i -q -s "$SCALE" > "$WORK/init.log" 2>&1
echo "   database: $(sql "SELECT pg_size_pretty(pg_database_size('postgres'))"); initial WAL archived after $(caught_up) s"

: > "$WORK/times.tsv"
# timed NAME CMD...: wall seconds and peak RSS (MiB) of CMD into times.tsv.
timed() {
  local name=$1; shift
  sync
  /usr/bin/time -f "%e %M" -o "$WORK/time.out" "$@" > "$WORK/last.out" 2> "$WORK/last.err" ||
    { echo "FAILED: $name"; cat "$WORK/last.err"; exit 1; }
  read -r secs kib < "$WORK/time.out"
  printf '%s\t%s\t%s\n' "$name" "$secs" "$((kib / 1024))" >> "$WORK/times.tsv"
  printf '  %-28s %7.2f s  %5d MiB peak RSS\n' "$name" "$secs" "$((kib / 1024))"
}

echo "== base backups, alternating ($REPS rounds)"
for r in $(seq 1 "$REPS"); do
  rm -rf "$WORK/local/pgb"
  timed pg_basebackup "${AS_PG[@]}" pg_basebackup -D "$WORK/local/pgb" -Ft -X none --checkpoint=fast --no-manifest
  timed tandem "${AS_PG[@]}" $TANDEM backup db postgres "$PGDATA" --keep "$REPS"
  as_pg pgbench -c 2 -j 2 -T 5 > /dev/null 2>&1
done
LOCAL_MB=$(( $(du -sb "$WORK/local/pgb" | cut -f1) / 1000000 ))

echo "== WAL archiving under pgbench -c 4 -j 2 -T $PGBENCH_SECS"
start_lsn=$(sql "SELECT pg_current_wal_lsn()")
as_pg pgbench -c 4 -j 2 -T "$PGBENCH_SECS" > "$WORK/pgbench.log" 2>&1 &
BENCH_PID=$!
max_lag=0; samples=0; total_lag=0
while kill -0 "$BENCH_PID" 2>/dev/null; do
  current=$(sql "SELECT pg_walfile_name(pg_current_wal_lsn())")
  archived=$(sql "SELECT coalesce(last_archived_wal, '$current') FROM pg_stat_archiver")
  lag=$(( $(segment "$current") - $(segment "$archived") - 1 ))
  [ "$lag" -lt 0 ] && lag=0
  [ "$lag" -gt "$max_lag" ] && max_lag=$lag
  total_lag=$((total_lag + lag)); samples=$((samples + 1))
  sleep 1
done
wait "$BENCH_PID"
wal_mb=$(sql "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$start_lsn') / 1e6)")
catch_up=$(caught_up)
failed=$(sql "SELECT failed_count FROM pg_stat_archiver")
tps=$(grep -o 'tps = [0-9.]*' "$WORK/pgbench.log" | tail -1 | cut -d' ' -f3)

echo "== point-in-time restore of the newest base backup"
timed "restore db postgres" "${AS_PG[@]}" $TANDEM restore db postgres "$PGDATA" "$WORK/restored"
mkdir -p "$WORK/sock2"; chown postgres:postgres "$WORK/sock2"
printf "unix_socket_directories = '%s'\narchive_mode = off\n" "$WORK/sock2" >> "$WORK/restored/postgresql.auto.conf"
replay_start=$(date +%s.%N)
as_pg "$PGBIN/postgres" -D "$WORK/restored" > "$WORK/pg2.log" 2>&1 &
PG2_PID=$!
for _ in $(seq 1 2400); do
  [ "$(as_pg psql -h "$WORK/sock2" -Atq -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ] && break
  sleep 0.25
done
replay_secs=$(python3 -c "import time; print(f'{time.time() - $replay_start:.1f}')")
rows=$(as_pg psql -h "$WORK/sock2" -Atq -c 'SELECT count(*) FROM pgbench_accounts')

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v n="$1" -v c="$2" '$1 == n { print $c }' "$WORK/times.tsv"; }
pg_med=$(col pg_basebackup 2 | median); t_med=$(col tandem 2 | median)
pg_rss=$(col pg_basebackup 3 | median); t_rss=$(col tandem 3 | median)
echo
echo "== PostgreSQL agent, scale $SCALE (base backup ${LOCAL_MB} MB as pg_basebackup writes it)"
printf '  base backup, median of %s: tandem %.2f s, pg_basebackup to local disk %.2f s: ratio %.2fx (runs: tandem %s; pg_basebackup %s)\n' \
  "$REPS" "$t_med" "$pg_med" "$(python3 -c "print($t_med / $pg_med)")" "$(col tandem 2 | tr '\n' ' ')" "$(col pg_basebackup 2 | tr '\n' ' ')"
printf '  peak RSS: tandem client %s MiB, pg_basebackup %s MiB\n' "$t_rss" "$pg_rss"
printf '  archiving under pgbench (%s tps, %s MB of WAL in %s s): archive lag max %s segments, mean %s; caught up %s s after pgbench stopped; archive failures %s\n' \
  "$tps" "$wal_mb" "$PGBENCH_SECS" "$max_lag" "$(python3 -c "print(round($total_lag / max($samples, 1), 1))")" "$catch_up" "$failed"
printf '  restore: base backup laid down in %s s, then replay through restore-wal and promotion in %s s (%s accounts)\n' \
  "$(col 'restore db postgres' 2)" "$replay_secs" "$rows"
