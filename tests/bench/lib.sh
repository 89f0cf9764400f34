# Shared by the benchmark scripts (sourced). Needs BIN and WORK set.

# Every connection is TLS, as in production. BENCH_PLAINTEXT=1 starts the
# servers with --insecure-plaintext instead, to measure what TLS costs.
if [ -n "${BENCH_PLAINTEXT:-}" ]; then
  SCHEME=http; PLAIN_FLAG=--insecure-plaintext
else
  SCHEME=https; PLAIN_FLAG=
fi

# pin_line DATA_DIR: the options line that pins that server (empty in plaintext).
pin_line() {
  [ "$SCHEME" = https ] && printf 'server_fingerprint = "%s"' "$(cat "$1/fingerprint")"
  return 0
}
# pin_flag DATA_DIR: the define-server flag that pins that server.
pin_flag() {
  [ "$SCHEME" = https ] && printf -- '--fingerprint=%s' "$(cat "$1/fingerprint")"
  return 0
}

# Ignored when set in the environment: only a script that means it sets it
# (see start_primary).
PRIMARY_STORE=

# primary_data_dir: where start_primary keeps the server's data (an absolute
# path, named after $WORK so two runs with other BENCH_DIRs keep apart).
primary_data_dir() {
  if [ -n "${PRIMARY_STORE:-}" ]; then
    mkdir -p "$PRIMARY_STORE"
    printf '%s/tandem-bench-server-%s' "$(cd "$PRIMARY_STORE" && pwd -P)" "$(basename "$WORK")"
  else
    printf '%s/server' "$WORK"
  fi
}

# start_primary NAME: starts a release tandem-server in $WORK/server on a free
# 127.0.0.1 port, registers node "bench" and writes the client's options to
# $WORK/tandem.toml, pinning the server's certificate. Sets SERVER_PID and ADDR.
# SERVER_PREFIX runs the server under a profiler, e.g. "heaptrack -o FILE"
# (SERVER_PID is then the profiler's, so its RSS figures are not the server's,
# and the scripts' kill of SERVER_PID ends heaptrack's wrapper script only:
# after such a run, end the servers left running by their own PIDs; with
# heaptrack, every server a script starts writes the same FILE, so the last
# one's profile is what is left: in fleet.sh, round 1 ends with the fleet's).
# PRIMARY_STORE=DIR (vault.sh sets it from SERVER_STORE; not read from the
# environment, so no other script changes layout by accident) keeps the
# server's data in a directory of its own under DIR, on other storage than the
# client's, as a server on its own machine has; $WORK/server is then a link to
# it, so the scripts find it in the one place.
start_primary() {
  rm -rf "$WORK/server"
  local data; data=$(primary_data_dir)
  if [ "$data" != "$WORK/server" ]; then
    rm -rf "$data"
    ln -s "$data" "$WORK/server"
  fi
  ${SERVER_PREFIX:-} "$BIN/tandem-server" --data-dir "$data" --listen 127.0.0.1:0 --name "$1" $PLAIN_FLAG > "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 200); do [ -s "$WORK/server/listen.addr" ] && break; sleep 0.05; done
  ADDR=$(cat "$WORK/server/listen.addr")
  echo 'bench-password' | "$BIN/tandem-admin" --server "$SCHEME://$ADDR" --token-file "$WORK/server/admin.token" register node bench > /dev/null
  printf 'node_name = "bench"\nserver_address = "%s://%s"\n%s\npassword = "bench-password"\nstate_dir = "%s"\n' \
    "$SCHEME" "$ADDR" "$(pin_line "$WORK/server")" "$WORK/state" > "$WORK/tandem.toml"
  chmod 600 "$WORK/tandem.toml"   # it holds the password
}

# start_secondary: starts a second server (BENCH2) in $WORK/secondary and pairs
# it with the primary at $ADDR ($ADMIN talks to the primary): each defines the
# other with a shared password, the primary replicates node bench to it.
# Sets SECONDARY_PID and ADDR2.
start_secondary() {
  rm -rf "$WORK/secondary"
  "$BIN/tandem-server" --data-dir "$WORK/secondary" --listen 127.0.0.1:0 --name BENCH2 $PLAIN_FLAG > "$WORK/secondary.log" 2>&1 &
  SECONDARY_PID=$!
  for _ in $(seq 1 200); do [ -s "$WORK/secondary/listen.addr" ] && break; sleep 0.05; done
  ADDR2=$(cat "$WORK/secondary/listen.addr")
  echo 'bench-server-pw' > "$WORK/server.pw"
  "$BIN/tandem-admin" --server "$SCHEME://$ADDR2" --token-file "$WORK/secondary/admin.token" define server BENCH \
    --address "$SCHEME://$ADDR" $(pin_flag "$WORK/server") --server-password-file "$WORK/server.pw" > /dev/null
  $ADMIN define server BENCH2 --address "$SCHEME://$ADDR2" $(pin_flag "$WORK/secondary") \
    --server-password-file "$WORK/server.pw" > /dev/null
  $ADMIN set replserver BENCH2 > /dev/null
  $ADMIN update node bench --replstate enabled > /dev/null
}
