#!/usr/bin/env bash
# idle_streams.sh: measures what 200 open streams that wait on a busy model cost
# the HTTP side. The daemon runs one sequence at a time (--max-running 1), one
# long stream keeps it busy and 200 more wait in the queue with their connections
# suspended. Prints the CPU seconds each daemon thread used over 20 s: the
# MHD-single thread (all HTTP/TLS work) should stay near zero. A measurement, not
# a pass/fail test (no timing assertions in ctest).
# Run from the source root: DSI_BIN=build/dsinfer tests/integration/idle_streams.sh
set -eu
BIN=${DSI_BIN:-build/dsinfer}
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d /tmp/dsinfer-idle.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$W"' EXIT
KEY=$("$BIN" keys add --file "$W/keys.json" --name idle --role user 2>/dev/null)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" serve --model tests/golden/models/tiny-chat --listen 127.0.0.1:$PORT --keys "$W/keys.json" \
    --state-dir "$W/state" --backend cpu --dtype f32 --max-running 1 --max-queued 1000 >"$W/log" 2>&1 &
DPID=$!; PIDS+=($DPID)
for _ in $(seq 1 600); do grep -q "ready: serving" "$W/log" && break; sleep 0.1; done
CA=$W/state/tls-cert.pem node "$HERE/idle_streams.mjs" "$PORT" "$KEY" 201 1900 >"$W/node.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do grep -q "open 201" "$W/node.log" && break; sleep 0.2; done
tail -1 "$W/node.log"
snap() { for t in /proc/$DPID/task/*; do echo "$(cat $t/comm) $(awk '{print $14+$15}' $t/stat)"; done; }
snap >"$W/a"; sleep 20; snap >"$W/b"
hz=$(getconf CLK_TCK)
paste "$W/a" "$W/b" | awk -v hz="$hz" '{printf "%-12s %6.2f CPU-s in 20 s (%.1f%%)\n", $1, ($4-$2)/hz, ($4-$2)/hz/20*100}'
