#!/usr/bin/env bash
# test_loadgen_errors.sh: loadgen counts what a client would lose, per request.
#   1. nobody listens: each client's one request is never sent; it is resent
#      after the backoff (connect_retries) and counted once ("connect") when the
#      run ends, not once per failed attempt.
#   2. the server starts after loadgen: the early attempts are resent and every
#      request completes, with no error.
#   3. a server that reads the request and closes the connection: the request
#      was sent, so it is lost ("transport") and not resent.
# The servers are Python stand-ins: what is tested is loadgen's accounting.
# Exit 0 pass, 1 fail, 77 skipped (no loadgen or python3).
set -u
BIN=${DSI_BIN:-build/dsinfer}
LG=${LOADGEN:-$(dirname "$BIN")/loadgen}
skip() { echo "skip: $*"; exit 77; }
[[ -x $LG ]] || skip "no loadgen binary at $LG"
command -v python3 >/dev/null || skip "no python3"
W=$(mktemp -d /tmp/dsi_lgerr.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null; [[ ${KEEP:-0} = 1 ]] && echo "kept $W" || rm -rf "$W"; }
trap cleanup EXIT
fails=0
check() { local what=$1; shift; if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# field FILE EXPR: a Python expression over the JSON report j
# (a tuple prints its items space-separated)
field() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); v=eval(sys.argv[2]); print(*(v if isinstance(v, tuple) else (v,)))' "$1" "$2"; }

# --- 1. nobody listens ---------------------------------------------------------------
p1=$(free_port)
"$LG" --url "https://127.0.0.1:$p1" --insecure --concurrency 3 --duration 1 --json >"$W/closed.json"
rc=$?
check "closed port: loadgen fails" test "$rc" = 1
check "closed port: one lost request per client, all 'connect'" \
  test "$(field "$W/closed.json" 'j["errors"], j["errors_by_status"]')" = "3 {'connect': 3}"
check "closed port: the failed attempts are resent, not counted as requests" \
  test "$(field "$W/closed.json" 'j["connect_retries"] >= 3')" = True

# --- 2. the server comes up during the run -------------------------------------------
# A stand-in that streams one token per request and listens only once it is
# ready: dsinfer itself answers 503 while its model loads, a loss of its own.
p2=$(free_port)
"$LG" --url "http://127.0.0.1:$p2" --concurrency 2 --requests 4 --timeout 60 --json >"$W/late.json" &
lpid=$!
sleep 0.3 # loadgen's first attempts find the port closed
python3 - "$p2" <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = (b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
                b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
                b"data: [DONE]\n\n")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
pids+=($!)
wait "$lpid"
rc=$?
check "late server: loadgen passes" test "$rc" = 0
check "late server: all 4 requests completed, no error" \
  test "$(field "$W/late.json" 'j["requests_completed"], j["errors"]')" = "4 0"
check "late server: the early attempts were resent" test "$(field "$W/late.json" 'j["connect_retries"] > 0')" = True

# --- 3. the connection breaks after the request was sent -----------------------------
p3=$(free_port)
python3 - "$p3" "$W/reset_ready" <<'PY' &
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
open(sys.argv[2], "w").close()
while True:
    c, _ = s.accept()
    c.recv(65536)   # the request arrives ...
    c.close()       # ... and nothing comes back
PY
pids+=($!)
for _ in $(seq 1 100); do [[ -f $W/reset_ready ]] && break; sleep 0.05; done
"$LG" --url "http://127.0.0.1:$p3" --concurrency 1 --requests 3 --json >"$W/reset.json"
check "sent then cut: each request lost once, as 'transport', never resent" \
  test "$(field "$W/reset.json" 'j["errors"], j["errors_by_status"], j["connect_retries"]')" = "3 {'transport': 3} 0"
[[ $fails -eq 0 ]] && echo "all passed" || { echo "$fails failed"; exit 1; }
