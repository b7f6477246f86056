#!/usr/bin/env bash
# test_bench_smoke.sh: CI smoke of the benchmark tools on the CPU backend. Checks
# that each completes and reports sane numbers (present, positive, finite; JSON
# that parses), never how fast: CI machines are shared and noisy.
#   1. `dsinfer bench` on the tiny chat model (table and --json), and its usage errors
#   2. `dsinfer serve` on the tiny chat model (free loopback port, state dir and keys in a
#      temp dir), build/loadgen at concurrency 4 for 2 s with --json, and with
#      --shared-prefix-words (later requests hit the prefix cache)
#   3. bench/sweep.sh at 2 levels of 2 s: sweep.jsonl, sweep.md, sweep.png
#   4. bench/locustfile.py compiles (Locust itself is not installed here)
# The daemon is stopped on exit, also on failure.
# Run from the source root: DSI_BIN=build/dsinfer LOADGEN=build/loadgen tests/test_bench_smoke.sh
# Exit 0 pass, 1 fail, 77 skipped (no binary, model, curl or python3).
set -u
BIN=${DSI_BIN:-build/dsinfer}
LOADGEN=${LOADGEN:-$(dirname "$BIN")/loadgen}
TINY=tests/golden/models/tiny-chat
# The daemon serves tiny-chat: under ASan on a busy 2-core CI machine models/demo
# takes tens of seconds per request; BENCH_SMOKE_MODEL=models/demo to try it anyway.
SERVE_MODEL=${BENCH_SMOKE_MODEL:-$TINY}
MODEL_ID=$(basename "$SERVE_MODEL")

skip() { echo "SKIP: $*"; exit 77; }
[ -x "$BIN" ] || skip "no dsinfer binary at $BIN"
[ -x "$LOADGEN" ] || skip "no loadgen binary at $LOADGEN"
[ -f "$TINY/config.json" ] && [ -f "$SERVE_MODEL/config.json" ] || skip "no models"
command -v python3 >/dev/null || skip "python3 not installed"

W=$(mktemp -d /tmp/dsinfer-bench.XXXXXX)
DPID=
cleanup() {
    if [ -n "$DPID" ]; then
        kill "$DPID" 2>/dev/null
        wait "$DPID" 2>/dev/null
    fi
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

FAILS=0
ok() { echo "ok   $1"; }
fail() { echo "FAIL $1"; FAILS=$((FAILS + 1)); }
check() { # check NAME COMMAND...
    local name=$1; shift
    if "$@"; then ok "$name"; else fail "$name"; fi
}

# sane_bench FILE: dsinfer bench --json output with every expected row and every
# number positive and finite.
sane_bench() {
    python3 - "$1" <<'PY'
import json, math, sys
j = json.load(open(sys.argv[1]))
def pos(x): return isinstance(x, (int, float)) and math.isfinite(x) and x > 0
assert pos(j["peak_gbs"]), "peak_gbs"
assert j["repeat"] == 2 and j["steps"] == 4, "options echoed"
assert len(j["runs"]) == 2, "two dtypes"
for r in j["runs"]:
    assert pos(r["weight_bytes"]) and pos(r["kv_bytes_per_token"]), "sizes"
    assert [(d["batch"], d["context"]) for d in r["decode"]] == [(1, 16), (4, 16)], "decode rows"
    for d in r["decode"]:
        for k in ("tok_s", "ms_per_step", "ms_forward", "bytes_per_step", "gbs", "roofline"):
            assert pos(d[k]), k
        assert d["ms_sample"] >= 0 and d["ms_forward"] <= d["ms_per_step"] + 1e-9
        # tok/s is B*N over the step time: the two columns must agree
        assert abs(d["tok_s"] * d["ms_per_step"] / 1e3 - d["batch"]) < 1e-6 * d["batch"] + 1e-9
    p = r["prefill"]
    assert p["tokens"] == 16 and pos(p["tok_s"]) and pos(p["ms"]) and p["ttft_ms"] >= p["ms"], "prefill"
    assert [e["streams"] for e in r["engine"]] == [1, 4], "engine rows"
    for e in r["engine"]:
        assert e["tokens"] == 4 * e["streams"], "every request gets its 4 tokens"
        assert pos(e["wall_s"]) and pos(e["tok_s"]) and pos(e["ttft_ms_mean"]), "engine numbers"
PY
}

# --- 1. dsinfer bench ------------------------------------------------------------
B=("$BIN" bench --model "$TINY" --dtype f32,int8 --batch 1,4 --context 16 --prefill 16 --steps 4
   --engine-prompt 8)
"${B[@]}" --repeat 2 --json >"$W/bench.json" 2>"$W/bench.err"; check "bench --json exits 0" test $? = 0
check "bench --json is sane" sane_bench "$W/bench.json"
"${B[@]}" >"$W/bench.txt" 2>&1; check "bench table exits 0" test $? = 0
check "bench table has decode, prefill and engine" \
    bash -c "grep -q '^ *4 *16 ' $W/bench.txt && grep -q '^prefill 16 tokens' $W/bench.txt && grep -q '^engine' $W/bench.txt"
"$BIN" bench >/dev/null 2>&1; check "bench without --model is a usage error" test $? = 2
"$BIN" bench --model "$TINY" --batch 0 >/dev/null 2>&1; check "bench --batch 0 is a usage error" test $? = 2
"$BIN" bench --model "$TINY" --dtype fp4 >/dev/null 2>&1; check "bench --dtype fp4 is a usage error" test $? = 2
"$BIN" bench --model "$TINY" --context 1000000 --steps 2 >/dev/null 2>"$W/e"
check "bench with no context that fits fails" test $? = 1
check "  and says why" grep -q "no --context fits" "$W/e"
"$BIN" bench --model "$W/nonexistent" >/dev/null 2>&1; check "bench on a missing model fails" test $? = 1

# --- 2. daemon + loadgen -----------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
KEY=$("$BIN" keys add --file "$W/keys.json" --name bench --role user 2>/dev/null) || { echo "keys add failed"; exit 1; }
(umask 077; printf '%s\n' "$KEY" >"$W/key")
PORT=$(free_port)
"$BIN" serve --model "$SERVE_MODEL" --listen "127.0.0.1:$PORT" --keys "$W/keys.json" --state-dir "$W/state" \
    --backend cpu --audit-log "$W/audit.log" --log-level info >"$W/daemon.log" 2>&1 &
DPID=$!
for _ in $(seq 1 600); do
    grep -q "ready: serving" "$W/daemon.log" && break
    kill -0 "$DPID" 2>/dev/null || { echo "daemon exited:"; cat "$W/daemon.log"; exit 1; }
    sleep 0.1
done
grep -q "ready: serving" "$W/daemon.log" || { echo "daemon not ready:"; cat "$W/daemon.log"; exit 1; }
URL=https://127.0.0.1:$PORT
CA=$W/state/tls-cert.pem

"$LOADGEN" --url "$URL" --key-file "$W/key" --cacert "$CA" --model "$MODEL_ID" --concurrency 4 \
    --duration 2 --prompt-words 4:16 --max-tokens 4:8 --json >"$W/lg.json" 2>"$W/lg.err"
check "loadgen exits 0" test $? = 0
check "loadgen JSON is sane" python3 - "$W/lg.json" <<'PY'
import json, math, sys
j = json.load(open(sys.argv[1]))
def pos(x): return isinstance(x, (int, float)) and math.isfinite(x) and x > 0
assert j["concurrency"] == 4 and j["requests_completed"] > 0 and j["errors"] == 0, j
assert j["errors_by_status"] == {}
for k in ("elapsed_s", "requests_per_s", "output_tokens", "output_tokens_per_s"):
    assert pos(j[k]), k
for k in ("ttft_ms", "itl_ms", "latency_ms"):
    p = j[k]
    assert pos(p["p50"]) and p["p50"] <= p["p90"] <= p["p99"], k
PY
"$LOADGEN" --url "$URL" --key-file "$W/key" --cacert "$CA" --model "$MODEL_ID" --concurrency 1 \
    --requests 3 --shared-prefix-words 60 --prompt-words 4:4 --max-tokens 2:2 --json >"$W/lgp.json" 2>"$W/lgp.err"
check "loadgen --shared-prefix-words exits 0" test $? = 0
check "  and the later requests' prompts hit the prefix cache" python3 - "$W/lgp.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["requests_completed"] == 3 and j["errors"] == 0, j
assert j["shared_prefix_words"] == 60 and j["ttft_first_ms"] > 0 and j["ttft_later_ms"]["p50"] > 0, j
assert 0 < j["cached_prompt_tokens"] < j["prompt_tokens"], j
PY
"$LOADGEN" --url "$URL" --key "dsi-not-a-key" --cacert "$CA" --model "$MODEL_ID" --requests 2 --json >"$W/lg401.json" 2>/dev/null
check "loadgen with a bad key exits 1" test $? = 1
check "  and counts the 401s" python3 -c "import json,sys; j=json.load(open(sys.argv[1])); assert j['errors_by_status'].get('401') == 2 and j['requests_completed'] == 0" "$W/lg401.json"
"$LOADGEN" --concurrency 4 >/dev/null 2>&1; check "loadgen without --url is a usage error" test $? = 2

# --- 3. sweep ------------------------------------------------------------------------
LOADGEN=$LOADGEN LOADGEN_EXTRA="--model $MODEL_ID --prompt-words 4:16 --max-tokens 4:8" \
    bash bench/sweep.sh "$URL" "$W/key" "$CA" "$W/sweep" 2 1 2 >"$W/sweep.out" 2>&1
check "sweep exits 0" test $? = 0
check "sweep.jsonl has one line per level" test "$(grep -c . "$W/sweep/sweep.jsonl" 2>/dev/null)" = 2
check "sweep.md has the two rows" bash -c "grep -q '^| 1 |' $W/sweep/sweep.md && grep -q '^| 2 |' $W/sweep/sweep.md"
if command -v gnuplot >/dev/null; then
    check "sweep.png is a PNG" bash -c "head -c 8 $W/sweep/sweep.png | od -An -tx1 | grep -q '89 50 4e 47'"
else
    echo "skip sweep.png (no gnuplot)"
fi

# --- 4. locust ----------------------------------------------------------------------
check "locustfile compiles" python3 -c "import py_compile,sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)" bench/locustfile.py "$W/locust.pyc"

if [ "$FAILS" -ne 0 ]; then
    echo "--- daemon log (tail)"; tail -20 "$W/daemon.log"
    echo "$FAILS check(s) failed"
    exit 1
fi
echo "all bench smoke checks passed"
