#!/usr/bin/env bash
# run.sh: end-to-end test of `dsinfer serve`. Starts the real daemon on the CPU
# backend with TLS (self-signed certificate made on first start) on a free
# loopback port, with the tiny chat model and a keys file made by `dsinfer keys
# add`, then drives it with curl, openssl s_client and the official openai npm
# client (openai_client.mjs). Every daemon is stopped on exit, also on failure.
#
# Run from the source root: DSI_BIN=build/dsinfer tests/integration/run.sh
# Exit 0 pass, 1 fail (also without node or the openai client: run
# bash scripts/deps.sh), 77 skipped (no binary, model, curl or openssl).
set -u
BIN=${DSI_BIN:-build/dsinfer}
MODEL=tests/golden/models/tiny-chat
HERE=$(cd "$(dirname "$0")" && pwd)

skip() { echo "SKIP: $*"; exit 77; }
[ -x "$BIN" ] || skip "no dsinfer binary at $BIN"
[ -f "$MODEL/tokenizer.json" ] || skip "no model at $MODEL"
command -v curl >/dev/null || skip "curl not installed"
command -v openssl >/dev/null || skip "openssl not installed"
# The openai client suite is part of what this test proves: without its client the
# test fails, since a skipped suite inside a passing test reads as a pass.
if ! command -v node >/dev/null || [ ! -d "$HERE/node_modules/openai" ]; then
    echo "FAIL: the openai client suite needs node and $HERE/node_modules/openai:" \
        "run bash scripts/deps.sh"
    exit 1
fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

W=$(mktemp -d /tmp/dsinfer-e2e.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

FAILS=0
ok() { echo "ok   $1"; }
fail() { echo "FAIL $1"; FAILS=$((FAILS + 1)); }
check() { # check NAME CONDITION-COMMAND...
    local name=$1; shift
    if "$@"; then ok "$name"; else fail "$name"; fi
}

# --- keys --------------------------------------------------------------------
KEYS=$W/keys.json
USER_KEY=$("$BIN" keys add --file "$KEYS" --name alice --role user 2>/dev/null) || { echo "keys add failed"; exit 1; }
MON_KEY=$("$BIN" keys add --file "$KEYS" --name prom --role monitor 2>/dev/null)
SLOW_KEY=$("$BIN" keys add --file "$KEYS" --name slowpoke --role user --rpm 1 2>/dev/null)
CAP_KEY=$("$BIN" keys add --file "$KEYS" --name capped --role user --max-tokens 3 2>/dev/null)
DS_KEY=$("$BIN" keys add --file "$KEYS" --name dsonly --role user --models deepseek-chat 2>/dev/null)

# --- start the daemon ----------------------------------------------------------
# free_port: a port nobody listens on right now (the kernel picks it).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_daemon LOG ARGS...: starts dsinfer serve on 127.0.0.1:PORT (a free port),
# waits for "ready", sets PORT and DPID.
start_daemon() {
    local log=$1; shift
    PORT=$(free_port)
    "$BIN" serve "$@" --listen "127.0.0.1:$PORT" >"$log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    DPID=$pid
    for _ in $(seq 1 600); do
        grep -q "ready: serving" "$log" && return 0
        kill -0 "$pid" 2>/dev/null || { echo "daemon exited:"; cat "$log"; return 1; }
        sleep 0.1
    done
    echo "daemon did not become ready:"; cat "$log"; return 1
}

LOG=$W/daemon.log
start_daemon "$LOG" --model "$MODEL" --keys "$KEYS" --state-dir "$W/state" \
    --backend cpu --dtype f32 --audit-log "$W/audit.log" --max-messages 8 --max-n 8 --max-body-bytes 65536 \
    --max-running 64 --log-level info --drain-timeout-s 10 \
    --served-model-names '["tiny-chat","deepseek-chat","deepseek-reasoner"]' || exit 1
URL=https://127.0.0.1:$PORT
CA=$W/state/tls-cert.pem
C=(curl -sS --cacert "$CA" --max-time 60)
AUTH=(-H "Authorization: Bearer $USER_KEY")
echo "daemon on port $PORT"

# status BODYFILE ARGS...: prints the HTTP status, body to BODYFILE
status() { local out=$1; shift; "${C[@]}" -o "$out" -w '%{http_code}' "$@"; }
json() { node -e 'const fs=require("fs");const j=JSON.parse(fs.readFileSync(process.argv[1]));console.log(eval(process.argv[2]))' "$1" "$2"; }

# --- TLS --------------------------------------------------------------------------
check "self-signed certificate created, key 0600" test "$(stat -c %a "$W/state/tls-key.pem")" = 600
check "fingerprint logged" grep -q "SHA-256 fingerprint [0-9A-F:]\{95\}" "$LOG"
check "tls1.3 handshake works" bash -c "echo | openssl s_client -connect 127.0.0.1:$PORT -tls1_3 -CAfile $CA >/dev/null 2>&1"
check "tls1.2 handshake refused" bash -c "! (echo | openssl s_client -connect 127.0.0.1:$PORT -tls1_2 >/dev/null 2>&1)"
check "curl verifies the certificate for 127.0.0.1" test "$(status $W/b "$URL/health/live")" = 200

# --- health, models, auth -----------------------------------------------------------
check "ready 200" test "$(status $W/b "$URL/health/ready")" = 200
check "models without key 401" test "$(status $W/b "$URL/v1/models")" = 401
check "401 body is an OpenAI error" grep -q '"type":"authentication_error"' $W/b
check "models with unknown key 401" test "$(status $W/b -H 'Authorization: Bearer dsi-0000000000000000000000000000000000000000000000000000000000000000' "$URL/v1/models")" = 401
check "models 200" test "$(status $W/b "${AUTH[@]}" "$URL/v1/models")" = 200
check "models lists tiny-chat" grep -q '"id":"tiny-chat"' $W/b
check "models lists the aliases, the first first" test "$(json $W/b 'j.data.map(m=>m.id).join()')" = "tiny-chat,deepseek-chat,deepseek-reasoner"
ALIAS_CHAT='{"model":"deepseek-reasoner","messages":[{"role":"user","content":"Hi"}],"max_tokens":2}'
check "an alias serves the model" test "$(status $W/b "${AUTH[@]}" -d "$ALIAS_CHAT" "$URL/v1/chat/completions")" = 200
check "a key allowed one alias uses every alias" test "$(status $W/b -H "Authorization: Bearer $DS_KEY" -d "$ALIAS_CHAT" "$URL/v1/chat/completions")" = 200
check "a key allowed one alias still reaches no other model" test "$(status $W/b -H "Authorization: Bearer $DS_KEY" -d '{"model":"big-chat","messages":[{"role":"user","content":"Hi"}]}' "$URL/v1/chat/completions")" = 404
check "monitor key may not chat 403" test "$(status $W/b -H "Authorization: Bearer $MON_KEY" -d '{"messages":[{"role":"user","content":"hi"}]}' "$URL/v1/chat/completions")" = 403
check "monitor key reads metrics" test "$(status $W/b -H "Authorization: Bearer $MON_KEY" "$URL/metrics")" = 200
check "user key may not read metrics 403" test "$(status $W/b "${AUTH[@]}" "$URL/metrics")" = 403
status $W/b -H "Authorization: Bearer $SLOW_KEY" "$URL/v1/models" >/dev/null
"${C[@]}" -D $W/h -o $W/b -H "Authorization: Bearer $SLOW_KEY" "$URL/v1/models"
check "rpm limit 429" grep -q "^HTTP/[0-9.]* 429" $W/h
check "429 has Retry-After" grep -qi "^retry-after: [0-9]" $W/h

# --- chat, completions, tokenize ------------------------------------------------------------
CHAT='{"model":"tiny-chat","messages":[{"role":"user","content":"Hello there"}],"max_tokens":8,"temperature":0}'
check "chat 200" test "$(status $W/chat "${AUTH[@]}" -d "$CHAT" "$URL/v1/chat/completions")" = 200
check "chat object + id" test "$(json $W/chat 'j.object+" "+j.id.startsWith("chatcmpl-")')" = "chat.completion true"
check "chat usage adds up" test "$(json $W/chat 'j.usage.prompt_tokens+j.usage.completion_tokens===j.usage.total_tokens && j.usage.completion_tokens<=8 && j.usage.prompt_tokens>0')" = true
check "chat finish_reason" test "$(json $W/chat '["stop","length"].includes(j.choices[0].finish_reason)')" = true
check "deepseek path /chat/completions" test "$(status $W/b "${AUTH[@]}" -d "$CHAT" "$URL/chat/completions")" = 200
check "same answer on both paths (greedy)" test "$(json $W/b 'j.choices[0].message.content')" = "$(json $W/chat 'j.choices[0].message.content')"
check "max_tokens capped by the key (3)" test "$(status $W/b -H "Authorization: Bearer $CAP_KEY" -d "${CHAT/\"max_tokens\":8/\"max_tokens\":50}" "$URL/v1/chat/completions")" = 200
check "capped usage <= 3" test "$(json $W/b 'j.usage.completion_tokens<=3')" = true

"${C[@]}" -N "${AUTH[@]}" -d '{"messages":[{"role":"user","content":"Hello there"}],"max_tokens":8,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}' "$URL/v1/chat/completions" >$W/sse
check "stream ends with [DONE]" test "$(grep -v '^$' $W/sse | tail -1)" = "data: [DONE]"
check "stream first chunk has the role" bash -c "head -1 $W/sse | grep -q '\"delta\":{\"role\":\"assistant\"'"
check "stream has a finish_reason chunk" grep -q '"finish_reason":"\(stop\|length\)"' $W/sse
check "stream usage chunk" grep -q '"choices":\[\],"usage":{"prompt_tokens"' $W/sse
STREAMED=$(grep '^data: {' $W/sse | sed 's/^data: //' | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{let t="";for(const l of s.trim().split("\n")){const j=JSON.parse(l);for(const c of j.choices)t+=c.delta.content||""}process.stdout.write(t)})')
check "stream text equals non-stream text" test "$STREAMED" = "$(json $W/chat 'j.choices[0].message.content')"

check "completions 200" test "$(status $W/b "${AUTH[@]}" -d '{"prompt":"Once upon","max_tokens":5,"temperature":0}' "$URL/v1/completions")" = 200
check "completions object" test "$(json $W/b 'j.object')" = text_completion
check "tokenize 200" test "$(status $W/b "${AUTH[@]}" -d '{"prompt":"hello world"}' "$URL/v1/tokenize")" = 200
TOKS=$(json $W/b 'JSON.stringify(j.tokens)')
check "tokenize count" test "$(json $W/b 'j.count===j.tokens.length && j.count>0')" = true
check "detokenize 200" test "$(status $W/b "${AUTH[@]}" -d "{\"tokens\":$TOKS}" "$URL/v1/detokenize")" = 200
check "detokenize round trip" test "$(json $W/b 'j.prompt')" = "hello world"

# --- errors ---------------------------------------------------------------------------------
e() { status $W/e "${AUTH[@]}" "$@"; }
check "malformed JSON 400" test "$(e -d '{"messages":' "$URL/v1/chat/completions")" = 400
check "400 body has OpenAI error fields" test "$(json $W/e 'Object.keys(j.error).join(",")')" = "message,type,param,code"
check "wrong type 400" test "$(e -d '{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}' "$URL/v1/chat/completions")" = 400
check "out of range 400" test "$(e -d '{"messages":[{"role":"user","content":"x"}],"top_p":2}' "$URL/v1/chat/completions")" = 400
check "ignore_eos must be a boolean" test "$(e -d '{"messages":[{"role":"user","content":"x"}],"ignore_eos":"yes"}' "$URL/v1/chat/completions")" = 400
check "n=17 refused 400" test "$(e -d '{"messages":[{"role":"user","content":"x"}],"n":17}' "$URL/v1/chat/completions")" = 400
check "n=9 over max_n 8 refused 400" test "$(e -d '{"messages":[{"role":"user","content":"x"}],"n":9}' "$URL/v1/chat/completions")" = 400
check "  naming n and the configured cap" test "$(json $W/e 'j.error.param+" "+/between 1 and 8/.test(j.error.message)')" = "n true"
check "n=2 answers 200" test "$(e -d '{"messages":[{"role":"user","content":"x"}],"n":2,"max_tokens":3}' "$URL/v1/chat/completions")" = 200
check "  with choices 0 and 1" test "$(json $W/e 'j.choices.map(c=>c.index).join()')" = "0,1"
printf '{"messages":[{"role":"user","content":"\xff\xfe"}]}' >$W/bad_utf8
check "invalid UTF-8 400" test "$(e --data-binary @$W/bad_utf8 "$URL/v1/chat/completions")" = 400
M='{"role":"user","content":"x"}'
check "too many messages 400" test "$(e -d "{\"messages\":[$M,$M,$M,$M,$M,$M,$M,$M,$M]}" "$URL/v1/chat/completions")" = 400
head -c 70000 /dev/zero | tr '\0' 'a' | sed 's/^/{"prompt":"/; s/$/"}/' >$W/big
check "body too large 413" test "$(e --data-binary @$W/big "$URL/v1/completions")" = 413
check "unknown model 404" test "$(e -d '{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}' "$URL/v1/chat/completions")" = 404
LONG=$(head -c 30000 /dev/zero | tr '\0' 'a' | sed 's/a/ab /g' | head -c 30000)
check "prompt longer than the context 400" test "$(e -d "{\"prompt\":\"$LONG\"}" "$URL/v1/completions")" = 400
check "context error code" test "$(json $W/e 'j.error.code')" = context_length_exceeded
check "unknown route 404" test "$(e "$URL/v1/nothing")" = 404
check "wrong method 405" test "$(e "$URL/v1/chat/completions")" = 405
check "bytes after the JSON body 400" test "$(e -d '{"messages":[{"role":"user","content":"x"}]}}}' "$URL/v1/chat/completions")" = 400
check "trailing bytes param" test "$(json $W/e 'j.error.param')" = body
check "message without content 400" test "$(e -d '{"messages":[{"role":"user"}]}' "$URL/v1/chat/completions")" = 400
check "missing content param" test "$(json $W/e 'j.error.param')" = "messages[0].content"

# --- structured output (response_format) ------------------------------------------------------
SCHEMA='{"type":"object","properties":{"name":{"type":"string","maxLength":10},"n":{"type":"integer"},"ok":{"type":"boolean"}},"required":["name","n","ok"],"additionalProperties":false}'
RF="{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"t\",\"strict\":true,\"schema\":$SCHEMA}}"
check "json_schema 200" test "$(status $W/js "${AUTH[@]}" -d "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":100,\"response_format\":$RF}" "$URL/v1/chat/completions")" = 200
check "json_schema content is schema-valid JSON" test "$(json $W/js 'const o=JSON.parse(j.choices[0].message.content); Object.keys(o).join()==="name,n,ok" && typeof o.name==="string" && o.name.length<=10 && Number.isInteger(o.n) && typeof o.ok==="boolean"')" = true
check "json_schema finish_reason stop" test "$(json $W/js 'j.choices[0].finish_reason')" = stop
check "json_object 200" test "$(status $W/jo "${AUTH[@]}" -d '{"messages":[{"role":"user","content":"hi"}],"max_tokens":200,"temperature":0,"response_format":{"type":"json_object"}}' "$URL/v1/chat/completions")" = 200
check "json_object content is an object or cut at length" test "$(json $W/jo 'j.choices[0].finish_reason==="length" || typeof JSON.parse(j.choices[0].message.content)==="object"')" = true
check "unsupported schema keyword 400" test "$(e -d '{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"t","schema":{"type":"string","format":"email"}}}}' "$URL/v1/chat/completions")" = 400
check "schema error names the keyword" test "$(json $W/e 'j.error.param+" "+j.error.message.includes("format")')" = "response_format.json_schema.schema true"

# --- tools ------------------------------------------------------------------------------------
# Forced calls end with the format's closing markers, which this tiny vocabulary spells
# in ordinary tokens (a real model writes them as one token each): room for them.
TOOLS='"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string","maxLength":20}},"required":["city"],"additionalProperties":false}}}]'
check "tool_choice required 200" test "$(status $W/tc "${AUTH[@]}" -d "{\"messages\":[{\"role\":\"user\",\"content\":\"Weather in Oslo?\"}],\"max_tokens\":300,$TOOLS,\"tool_choice\":\"required\"}" "$URL/v1/chat/completions")" = 200
check "required: finish_reason tool_calls, content null" test "$(json $W/tc 'j.choices[0].finish_reason+" "+j.choices[0].message.content')" = "tool_calls null"
check "required: arguments validate" test "$(json $W/tc 'j.choices[0].message.tool_calls.every(c=>c.type==="function"&&c.function.name==="get_weather"&&typeof JSON.parse(c.function.arguments).city==="string"&&Object.keys(JSON.parse(c.function.arguments)).join()==="city"&&c.id.startsWith("call_"))')" = true
"${C[@]}" -N "${AUTH[@]}" -d "{\"messages\":[{\"role\":\"user\",\"content\":\"Weather?\"}],\"max_tokens\":300,\"stream\":true,$TOOLS,\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}}" "$URL/v1/chat/completions" >$W/tsse
check "named, streamed: a delta.tool_calls chunk" grep -q '"delta":{"tool_calls":\[{"index":0,"id":"call_' $W/tsse
check "named, streamed: finish_reason tool_calls" grep -q '"finish_reason":"tool_calls"' $W/tsse
# Forced calls with two tools (issue 22): parallel_tool_calls true gives 1 to 8 calls,
# false exactly one, each to a listed tool with arguments its schema accepts, whole
# and streamed (delta.tool_calls, indexes 0..n-1). SEED is one at which this model
# writes several calls: the cap and the separators are exercised, not only one call.
TOOLS2='"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string","maxLength":20}},"required":["city"],"additionalProperties":false}}},{"type":"function","function":{"name":"get_time","parameters":{"type":"object","properties":{"tz":{"enum":["utc","cet"]}},"required":["tz"],"additionalProperties":false}}}]'
VALID_CALL='c=>c.type==="function"&&c.id.startsWith("call_")&&((c.function.name==="get_weather"&&(a=>Object.keys(a).join()==="city"&&typeof a.city==="string"&&[...a.city].length<=20)(JSON.parse(c.function.arguments)))||(c.function.name==="get_time"&&(a=>Object.keys(a).join()==="tz"&&["utc","cet"].includes(a.tz))(JSON.parse(c.function.arguments))))'
# multicall NAME URL SEED: the checks above against one daemon
multicall() {
    local name=$1 url=$2 seed=$3 body
    body="{\"messages\":[{\"role\":\"user\",\"content\":\"Weather and time in Oslo?\"}],\"max_tokens\":1200,\"seed\":$seed,$TOOLS2,\"tool_choice\":\"required\""
    check "$name: required, parallel: 200" test "$(status $W/mc "${AUTH[@]}" -d "$body}" "$url/v1/chat/completions")" = 200
    check "$name: required, parallel: 2 to 8 valid calls, finish_reason tool_calls" test "$(json $W/mc 'const m=j.choices[0].message; j.choices[0].finish_reason+" "+m.content+" "+(m.tool_calls.length>=2&&m.tool_calls.length<=8&&m.tool_calls.every('"$VALID_CALL"'))')" = "tool_calls null true"
    "${C[@]}" -N "${AUTH[@]}" -d "$body,\"stream\":true}" "$url/v1/chat/completions" >$W/mcsse
    check "$name: required, parallel, streamed: the same calls as deltas with indexes 0..n-1" test "$(node -e '
        const fs=require("fs"); const whole=JSON.parse(fs.readFileSync(process.argv[1])).choices[0].message.tool_calls;
        const ev=fs.readFileSync(process.argv[2],"utf8").split("\n").filter(l=>l.startsWith("data: {")).map(l=>JSON.parse(l.slice(6)));
        const calls=[]; for (const e of ev) for (const d of e.choices[0].delta.tool_calls||[]) {
            if (!calls[d.index]) calls[d.index]={id:d.id,type:d.type,function:{name:d.function.name,arguments:""}};
            calls[d.index].function.arguments+=d.function.arguments||""; }
        const fin=ev[ev.length-1].choices[0].finish_reason;
        console.log(fin==="tool_calls"&&calls.length===whole.length&&calls.every((c,i)=>c&&c.function.name===whole[i].function.name&&c.function.arguments===whole[i].function.arguments)&&calls.every('"$VALID_CALL"'))' $W/mc $W/mcsse)" = true
    check "$name: parallel_tool_calls false: exactly one valid call" test "$(status $W/mc1 "${AUTH[@]}" -d "$body,\"parallel_tool_calls\":false}" "$url/v1/chat/completions") $(json $W/mc1 'const m=j.choices[0].message; j.choices[0].finish_reason+" "+(m.tool_calls.length===1&&m.tool_calls.every('"$VALID_CALL"'))')" = "200 tool_calls true"
}
multicall chatml "$URL" 5
ROUND='{"messages":[{"role":"user","content":"Weather?"},{"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}]},{"role":"tool","tool_call_id":"c1","content":"-3 C"}],"max_tokens":4,'"$TOOLS"'}'
check "tool round trip 200" test "$(status $W/b "${AUTH[@]}" -d "$ROUND" "$URL/v1/chat/completions")" = 200
check "still serving after errors" test "$(status $W/b "${AUTH[@]}" -d "$CHAT" "$URL/v1/chat/completions")" = 200

# --- the official openai client ---------------------------------------------------------------
if NODE_EXTRA_CA_CERTS=$CA DSI_URL=$URL DSI_KEY=$USER_KEY DSI_LOG=$LOG node "$HERE/openai_client.mjs"; then
    ok "openai client suite"
else
    fail "openai client suite"
fi

# --- metrics and audit ----------------------------------------------------------------------------
# The disconnected stream (openai suite) leaves the batch at the engine's next step.
for _ in $(seq 1 100); do
    status $W/m -H "Authorization: Bearer $MON_KEY" "$URL/metrics" >/dev/null
    grep -q '^dsinfer_running_sequences 0$' $W/m && grep -q '^dsinfer_kv_blocks_used 0$' $W/m && break
    sleep 0.1
done
check "metrics: requests by route" grep -q '^dsinfer_requests_total{route="/v1/chat/completions",status="200"} [0-9]' $W/m
check "metrics: TTFT histogram" grep -q '^dsinfer_time_to_first_token_seconds_count [1-9]' $W/m
check "metrics: per-principal tokens" grep -q 'principal="alice"' $W/m
check "metrics: no sequence left running" grep -q '^dsinfer_running_sequences 0$' $W/m
check "metrics: cancelled sequence freed its KV blocks" grep -q '^dsinfer_kv_blocks_used 0$' $W/m
check "audit log has records" test "$(wc -l <$W/audit.log)" -gt 10
check "audit log has denials" grep -q '"status":401' $W/audit.log
check "audit log never holds the key" bash -c "! grep -q '$USER_KEY' $W/audit.log"
check "audit log never holds prompt text" bash -c "! grep -q 'Hello there' $W/audit.log"
check "daemon log never holds the key" bash -c "! grep -q '$USER_KEY' $LOG"

# --- reload and drain ---------------------------------------------------------------------------------
NEW_KEY=$("$BIN" keys add --file "$KEYS" --name bob --role user 2>/dev/null)
check "new key unknown before SIGHUP" test "$(status $W/b -H "Authorization: Bearer $NEW_KEY" "$URL/v1/models")" = 401
kill -HUP "$DPID"
for _ in $(seq 1 50); do grep -q "reload done" "$LOG" && break; sleep 0.1; done
check "new key works after SIGHUP" test "$(status $W/b -H "Authorization: Bearer $NEW_KEY" "$URL/v1/models")" = 200
# The same SIGHUP re-read the certificate; replace it and reload again.
fp() { echo | openssl s_client -connect 127.0.0.1:$PORT -tls1_3 2>/dev/null | openssl x509 -noout -fingerprint -sha256 | cut -d= -f2; }
OLD_FP=$(fp)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout $W/new-key.pem -out $W/new-cert.pem 2>/dev/null
NEW_FP=$(openssl x509 -in $W/new-cert.pem -noout -fingerprint -sha256 | cut -d= -f2)
cat "$CA" $W/new-cert.pem >$W/bundle.pem
cp $W/new-cert.pem "$W/state/tls-cert.pem"; cp $W/new-key.pem "$W/state/tls-key.pem"
CA=$W/bundle.pem; C=(curl -sS --cacert "$CA" --max-time 60)
kill -HUP "$DPID"
for _ in $(seq 1 50); do [ "$(grep -c "reload done" "$LOG")" -ge 2 ] && break; sleep 0.1; done
check "SIGHUP: new handshakes get the new certificate" test "$(fp)" = "$NEW_FP"
check "SIGHUP: the certificate really changed" test "$OLD_FP" != "$NEW_FP"
check "still serving after the certificate reload" test "$(status $W/b "${AUTH[@]}" "$URL/v1/models")" = 200
# Drain: a stream in flight keeps going, readiness turns 503, new work is refused.
"${C[@]}" -N "${AUTH[@]}" -d '{"messages":[{"role":"user","content":"Tell me a very long story"}],"max_tokens":1900,"temperature":0,"stream":true,"ignore_eos":true}' \
    "$URL/v1/chat/completions" >$W/drain_sse 2>/dev/null &
CURL_PID=$!
# A client that asks for a long stream and never reads it keeps its request in
# flight however fast the model is, so the drain lasts until drain_timeout_s.
python3 - "$PORT" "$CA" "$USER_KEY" "$W/stall_started" <<'PY' &
import json, socket, ssl, sys, time
port, ca, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False       # certificate checks are tested elsewhere; this client only stalls
ctx.verify_mode = ssl.CERT_NONE
# A 4 KiB receive window and ~2 MB of output (1900 tokens, ignore_eos, top_logprobs
# make every chunk about 1 KB) keep the stream blocked in the server's socket
# however fast the model is.
raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
raw.connect(("127.0.0.1", port))
s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
body = json.dumps({"messages": [{"role": "user", "content": "Tell me a very long story"}], "max_tokens": 1900,
                   "temperature": 0, "stream": True, "logprobs": True, "top_logprobs": 20,
                   "ignore_eos": True}).encode()
s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() +
          b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
s.recv(64)                        # the response has started: the request is in the engine
open(sys.argv[4], "w").close()
time.sleep(60)
PY
PIDS+=($!)
for _ in $(seq 1 300); do [ -f $W/stall_started ] && break; sleep 0.1; done
kill -TERM "$DPID"
for _ in $(seq 1 50); do grep -q "draining" "$LOG" && break; sleep 0.1; done
check "ready 503 while draining" test "$(status $W/b "$URL/health/ready")" = 503
check "new generation 503 while draining" test "$(status $W/b "${AUTH[@]}" -d "$CHAT" "$URL/v1/chat/completions")" = 503
wait "$CURL_PID"
check "stream in flight ends with [DONE]" test "$(grep -v '^$' $W/drain_sse | tail -1)" = "data: [DONE]"
wait "$DPID"
check "SIGTERM drains and exits 0" test $? = 0

# --- mTLS --------------------------------------------------------------------------------------------
# --- tools in DeepSeek-V3's native syntax (the tiny model's vocabulary lacks the tool
# tokens, so they are text here; the path is the one a V3 model takes) ------------------
start_daemon "$W/v3.log" --model "$MODEL" --keys "$KEYS" --state-dir "$W/state" --chat-format deepseek-v3 || exit 1
VURL=https://127.0.0.1:$PORT
check "v3: tool_choice required 200" test "$(status $W/v3 "${AUTH[@]}" -d "{\"messages\":[{\"role\":\"user\",\"content\":\"Weather in Oslo?\"}],\"max_tokens\":1200,$TOOLS,\"tool_choice\":\"required\"}" "$VURL/v1/chat/completions")" = 200
check "v3: the forced call comes back as tool_calls with valid arguments" test "$(json $W/v3 'j.choices[0].finish_reason+" "+j.choices[0].message.content+" "+j.choices[0].message.tool_calls.every(c=>c.function.name==="get_weather"&&typeof JSON.parse(c.function.arguments).city==="string")')" = "tool_calls null true"
multicall v3 "$VURL" 1
check "v3: tool round trip 200" test "$(status $W/b "${AUTH[@]}" -d "$ROUND" "$VURL/v1/chat/completions")" = 200
"${C[@]}" -N "${AUTH[@]}" -d "{\"messages\":[{\"role\":\"user\",\"content\":\"Weather?\"}],\"max_tokens\":300,\"stream\":true,$TOOLS,\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}}" "$VURL/v1/chat/completions" >$W/v3sse
check "v3: named, streamed: a delta.tool_calls chunk, no tool tokens as content" \
    bash -c "grep -q '\"tool_calls\":\[{\"index\":0,\"id\":\"call_' $W/v3sse && ! grep -q 'tool▁' $W/v3sse"
kill -TERM "$DPID"; wait "$DPID"

M=$W/mtls; mkdir -p $M
mkcert() { # mkcert NAME CN [CA]: key + cert (self-signed CA when no CA given)
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $M/$1.key -subj "/CN=$2" -out $M/$1.csr 2>/dev/null
    if [ -z "${3:-}" ]; then
        openssl x509 -req -in $M/$1.csr -signkey $M/$1.key -days 2 -out $M/$1.pem \
            -extfile <(printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=keyCertSign,digitalSignature') 2>/dev/null
    else
        openssl x509 -req -in $M/$1.csr -CA $M/$3.pem -CAkey $M/$3.key -CAcreateserial -days 2 -out $M/$1.pem \
            -extfile <(printf 'extendedKeyUsage=clientAuth') 2>/dev/null
    fi
}
mkcert ca "dsinfer test CA"; mkcert client billing-svc ca; mkcert rogue_ca "rogue"; mkcert rogue billing-svc rogue_ca
cp "$KEYS" $M/keys.json
python3 - $M/keys.json <<'PY'
import json, sys
k = json.load(open(sys.argv[1])); k["clients"] = [{"cn": "billing-svc", "name": "billing", "role": "user"}]
json.dump(k, open(sys.argv[1], "w"))
PY
start_daemon "$W/mtls.log" --model "$MODEL" --keys $M/keys.json --state-dir "$W/state" \
    --tls-client-ca $M/ca.pem --tls-require-client-cert true || exit 1
MURL=https://127.0.0.1:$PORT
check "mTLS: a key without a client certificate is 401" test "$(status $W/b "${AUTH[@]}" "$MURL/v1/models")" = 401
check "mTLS: a trusted client certificate maps to its principal" \
    test "$(status $W/b --cert $M/client.pem --key $M/client.key "$MURL/v1/models")" = 200
R=$(status $W/b --cert $M/rogue.pem --key $M/rogue.key "$MURL/v1/models" 2>/dev/null)
check "mTLS: a certificate from another CA is refused" test "$R" != 200
kill -TERM "$DPID"; wait "$DPID"

# --- plain HTTP -------------------------------------------------------------------------------------------
"$BIN" serve --model "$MODEL" --listen 0.0.0.0:18999 --plain-http true --keys "$KEYS" --state-dir "$W/state" >$W/plain.log 2>&1
check "plain HTTP on a non-loopback address refused" test $? -ne 0
check "plain HTTP refusal says why" grep -qi "loopback" $W/plain.log
start_daemon "$W/plain2.log" --model "$MODEL" --plain-http true --keys "$KEYS" --state-dir "$W/state" \
    --client-timeout-s 2 || exit 1
check "plain HTTP on loopback serves" test "$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health/live")" = 200
# A client that connects and then says nothing is dropped after client_timeout_s.
check "stalled client is dropped after client_timeout_s" python3 - "$PORT" <<'PY'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
s.settimeout(20)
t = time.time()
try:
    data = s.recv(1024)
except ConnectionResetError:
    data = b""
sys.exit(0 if data == b"" or data.startswith(b"HTTP/1.1 4") else 1)
PY

echo "$FAILS failed"
[ "$FAILS" = 0 ]
