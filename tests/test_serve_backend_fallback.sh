#!/usr/bin/env bash
# test_serve_backend_fallback.sh: `dsinfer serve --backend cuda` opens the model
# with the weight files' SHA-256 deferred to the CUDA loader's single pass. A
# backend that was asked for and is not available is an error at start, unless
# the operator opted in with backend_fallback: cpu (docs/operating.md):
#   1. no GPU, no opt-in: the daemon refuses to start, naming backend_fallback,
#      and never reports ready (with a GPU: it serves on cuda);
#   2. --backend-fallback cpu, a good model directory: the daemon becomes ready
#      (on cuda, or on the cpu with the fallback logged) and answers a chat
#      request; the weights were verified on the host first;
#   3. --backend-fallback cpu, the same directory with one byte of
#      model.safetensors flipped (SHA256SUMS unchanged): the daemon refuses to
#      start, naming the SHA-256 mismatch, on either backend, never ready.
# Exit 0 pass, 1 fail, 77 skipped (no curl or python3).
set -u
BIN=${DSI_BIN:-build/dsinfer}
skip() { echo "skipped: $1"; exit 77; }
command -v curl >/dev/null || skip "curl not installed"
command -v python3 >/dev/null || skip "python3 not installed"
[ -x "$BIN" ] || skip "no binary at $BIN"
W=$(mktemp -d /tmp/dsi-fallback.XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
FAILS=0
check() { local what=$1; shift; if "$@"; then echo "ok   $what"; else echo "FAIL $what"; FAILS=$((FAILS + 1)); fi; }
export OMP_WAIT_POLICY=passive ASAN_OPTIONS=detect_leaks=0
KEY=$("$BIN" keys add --file "$W/keys.json" --name alice --role user 2>/dev/null) || { echo "keys add failed"; exit 1; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cp -r tests/golden/models/tiny-chat "$W/good"
cp -r tests/golden/models/tiny-chat "$W/bad"
python3 - "$W/bad/model.safetensors" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[len(b) // 2] ^= 0x01  # a tensor byte, far from the header
open(p, "wb").write(b)
PY

# serve DIR LOG [FLAGS...]: runs the daemon until it is ready (0), exits (1) or 60 s pass (2)
serve() {
    local dir=$1 log=$2
    shift 2
    "$BIN" serve --model "$dir" --backend cuda --keys "$W/keys.json" --state-dir "$W/state" --plain-http true \
        --listen "127.0.0.1:$PORT" --threads 1 --drain-timeout-s 5 "$@" >"$log" 2>&1 &
    PID=$!
    for _ in $(seq 1 300); do
        grep -q "ready: serving" "$log" && return 0
        kill -0 "$PID" 2>/dev/null || { wait "$PID"; PID=""; return 1; }
        sleep 0.2
    done
    return 2
}
stop() { [ -n "$PID" ] && kill -TERM "$PID" && wait "$PID"; PID=""; }

serve "$W/good" "$W/strict.log"
rc=$?
if grep -q "backend cuda," "$W/strict.log"; then
    check "no opt-in, GPU present: serving on cuda" test $rc = 0
else
    check "no opt-in, no GPU: daemon exits instead of serving" test $rc = 1
    check "no opt-in, no GPU: never ready" bash -c "! grep -q 'ready: serving' '$W/strict.log'"
    check "no opt-in, no GPU: the error names backend_fallback" grep -q "backend cuda is not available.*backend_fallback" "$W/strict.log"
fi
stop

serve "$W/good" "$W/good.log" --backend-fallback cpu
check "good model: ready" test $? = 0
# without a GPU the fallback is logged, and the chat below can only be answered
# if the CPU backend was handed verified tensor data (unverified is refused)
grep -q "serving on the CPU backend" "$W/good.log" ||
    check "no fallback: serving on cuda" grep -q "backend cuda," "$W/good.log"
CHAT='{"model":"good","messages":[{"role":"user","content":"Hello there"}],"max_tokens":4,"temperature":0}'
OUT=$(curl -sS --max-time 60 -H "Authorization: Bearer $KEY" -d "$CHAT" "http://127.0.0.1:$PORT/v1/chat/completions")
check "chat answered" python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["choices"][0]["message"]["content"] is not None' "$OUT"
stop

serve "$W/bad" "$W/bad.log" --backend-fallback cpu
rc=$?
check "tampered model: daemon exits instead of serving" test $rc = 1
check "tampered model: never ready" bash -c "! grep -q 'ready: serving' '$W/bad.log'"
check "tampered model: SHA-256 mismatch named" grep -qi "model.safetensors.*sha-256\|sha-256.*model.safetensors" "$W/bad.log"
if [ $FAILS -ne 0 ]; then
    echo "--- strict.log"; cat "$W/strict.log"; echo "--- good.log"; cat "$W/good.log"; echo "--- bad.log"; cat "$W/bad.log"
fi
[ $FAILS -eq 0 ]
