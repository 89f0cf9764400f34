# Shared by the benchmark scripts (sourced). Needs BIN and WORK set.

# start_primary NAME: starts a release tandem-server in $WORK/server on a free
# 127.0.0.1 port, registers node "bench" and writes the client's options to
# $WORK/tandem.toml. Sets SERVER_PID and ADDR.
start_primary() {
  rm -rf "$WORK/server"
  "$BIN/tandem-server" --data-dir "$WORK/server" --listen 127.0.0.1:0 --name "$1" > "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 200); do [ -s "$WORK/server/listen.addr" ] && break; sleep 0.05; done
  ADDR=$(cat "$WORK/server/listen.addr")
  echo 'bench-password' | "$BIN/tandem-admin" --server "http://$ADDR" --token-file "$WORK/server/admin.token" register node bench > /dev/null
  printf 'node_name = "bench"\nserver_address = "http://%s"\npassword = "bench-password"\nstate_dir = "%s"\n' \
    "$ADDR" "$WORK/state" > "$WORK/tandem.toml"
}
