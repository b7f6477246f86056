#!/usr/bin/env bash
# test_serve_generate_same.sh: `serve` and `generate` assemble the model the same
# way (src/runtime) and run the same engine, so for the same prompt they give the
# same greedy text and stop at the same token. On the demo model:
#   1. /v1/completions with "And the LORD said unto Moses," returns exactly the
#      text `generate --prompt` prints, leading space included (" Go up ...");
#   2. a chat prompt (ids from /v1/tokenize): /v1/chat/completions and
#      `generate --ids` give the same content, finish with "stop" on the same
#      token (same completion token count).
# Exit 0 pass, 1 fail, 77 skipped (no curl or python3).
set -u
BIN=${DSI_BIN:-build/dsinfer}
MODEL=models/demo
skip() { echo "skipped: $1"; exit 77; }
command -v curl >/dev/null || skip "curl not installed"
command -v python3 >/dev/null || skip "python3 not installed"
[ -x "$BIN" ] || skip "no binary at $BIN"
[ -f "$MODEL/tokenizer.json" ] || skip "no model at $MODEL"
W=$(mktemp -d /tmp/dsi-same.XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
FAILS=0
check() { local what=$1; shift; if "$@"; then echo "ok   $what"; else echo "FAIL $what"; FAILS=$((FAILS + 1)); fi; }
export OMP_WAIT_POLICY=passive ASAN_OPTIONS=detect_leaks=0
KEY=$("$BIN" keys add --file "$W/keys.json" --name alice --role user 2>/dev/null) || { echo "keys add failed"; exit 1; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" serve --model "$MODEL" --keys "$W/keys.json" --state-dir "$W/state" --plain-http true \
    --listen "127.0.0.1:$PORT" --threads 1 --drain-timeout-s 5 >"$W/serve.log" 2>&1 &
PID=$!
for _ in $(seq 1 300); do
    grep -q "ready: serving" "$W/serve.log" && break
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.2
done
grep -q "ready: serving" "$W/serve.log" || { echo "daemon not ready"; cat "$W/serve.log"; exit 1; }
post() { curl -sS --max-time 120 -H "Authorization: Bearer $KEY" -d "$2" "http://127.0.0.1:$PORT$1"; }
gen() { "$BIN" generate --model "$MODEL" --threads 1 --temperature 0 --json "$@" 2>"$W/gen.err"; }

PROMPT="And the LORD said unto Moses,"
SRV=$(post /v1/completions "{\"prompt\":\"$PROMPT\",\"max_tokens\":24,\"temperature\":0}")
CLI=$(gen --prompt "$PROMPT" --max-tokens 24)
check "completion: same text as generate, leading space kept" python3 - "$SRV" "$CLI" <<'PY'
import json, sys
s, c = json.loads(sys.argv[1]), json.loads(sys.argv[2])
t = s["choices"][0]["text"]
assert t == c["text"], (t, c["text"])
assert t.startswith(" Go up"), t
assert s["choices"][0]["finish_reason"] == c["finish_reason"] == "length"
PY

MSGS='[{"role":"user","content":"In the beginning God created the heaven and the earth."}]'
IDS=$(post /v1/tokenize "{\"messages\":$MSGS,\"add_generation_prompt\":true}" |
    python3 -c 'import json,sys; print(",".join(map(str, json.load(sys.stdin)["tokens"])))')
SRV=$(post /v1/chat/completions "{\"messages\":$MSGS,\"max_tokens\":200,\"temperature\":0}")
CLI=$(gen --ids "$IDS" --max-tokens 200)
check "chat: same content and the same stop token as generate" python3 - "$SRV" "$CLI" <<'PY'
import json, sys
s, c = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ch = s["choices"][0]
assert ch["message"]["content"] == c["text"], (ch["message"]["content"], c["text"])
assert ch["finish_reason"] == c["finish_reason"] == "stop", (ch["finish_reason"], c["finish_reason"])
# the engine counts the stop token as a completion token; generate counts text tokens
assert s["usage"]["completion_tokens"] == c["completion_tokens"] + 1, (s["usage"], c["completion_tokens"])
PY
kill -TERM "$PID" && wait "$PID"
PID=""
if [ $FAILS -ne 0 ]; then
    echo "--- completion: $SRV"; echo "--- generate: $CLI"; cat "$W/gen.err"; echo "--- serve.log"; cat "$W/serve.log"
fi
[ $FAILS -eq 0 ]
