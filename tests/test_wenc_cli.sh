#!/usr/bin/env bash
# test_wenc_cli.sh: `dsinfer encrypt|decrypt` end to end on models/demo: the
# encrypted folder verifies without the key and holds no plaintext; decrypt
# restores every byte; the key never reaches stdout/stderr; loading refuses a
# missing, world-readable or wrong key and a tampered file (exit 1, one line);
# generate --key-file and serve with model_key_file run it, serve without the
# key refuses to start.
set -u
BIN=${DSI_BIN:-build/dsinfer}
[[ -x $BIN ]] || { echo "skip: no dsinfer binary at $BIN"; exit 77; }
dir=$(mktemp -d /tmp/dsi_wenc_cli.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fails=0
check() { # check DESCRIPTION CONDITION...
  local what=$1; shift
  if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi
}
K=$dir/k E=$dir/enc D=$dir/dec
"$BIN" encrypt --new-key --key-file "$K" models/demo "$E" >"$dir/out" 2>"$dir/err"; rc=$?
check "encrypt exits 0" test $rc -eq 0
check "key file is 0600" test "$(stat -c %a "$K")" = 600
key=$(tr -d '\n' <"$K")
check "the key is not printed" bash -c '! grep -q -- "$0" "$1" "$2"' "$key" "$dir/out" "$dir/err"
check "encrypt prints the manifest pin" grep -Eq 'SHA256SUMS sha256 [0-9a-f]{64}$' "$dir/out"
pin=$(grep -Eo '[0-9a-f]{64}$' "$dir/out")
check "verify works without the key, pinned" "$BIN" verify "$E" --expect-manifest-sha256 "$pin"
check "sha256sum -c agrees" bash -c 'cd "$0" && sha256sum --quiet -c SHA256SUMS' "$E"
check "no plaintext vocabulary in the encrypted tokenizer" bash -c '! grep -q "\"vocab\"" "$0/tokenizer.json"' "$E"
check "encrypt refuses a non-empty destination" bash -c '! "$0" encrypt --key-file "$1" models/demo "$2" 2>/dev/null' "$BIN" "$K" "$E"
"$BIN" decrypt --key-file "$K" "$E" "$D" >/dev/null 2>&1
check "decrypt restores every byte" bash -c 'for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do cmp -s "models/demo/$f" "$0/$f" || exit 1; done' "$D"

# loading: bench is the quickest command that opens the model
load() { "$BIN" bench --model "$E" --dtype f32 --batch 1 --context 8 --steps 1 --warmup 0 --prefill 8 \
         --engine-prompt 4 --repeat 1 --fill none "$@" >"$dir/lout" 2>&1; }
load; rc=$?
check "no key: exit 1" test $rc -eq 1
check "no key: says set model_key_file" grep -q "model_key_file" "$dir/lout"
chmod 644 "$K"; load --key-file "$K"; rc=$?
check "world-readable key: refused" bash -c '[ "$0" -eq 1 ] && grep -q "chmod 600" "$1"' $rc "$dir/lout"
chmod 600 "$K"
python3 -c "print('ab'*32)" >"$dir/k2"; chmod 600 "$dir/k2"
load --key-file "$dir/k2"; rc=$?
check "wrong key: refused" bash -c '[ "$0" -eq 1 ] && grep -q "wrong key" "$1"' $rc "$dir/lout"
load --key-file "$K"; rc=$?
check "right key: loads and runs" test $rc -eq 0
check "the key is not in the load output" bash -c '! grep -q -- "$0" "$1"' "$key" "$dir/lout"
# one flipped byte in the weights, SHA256SUMS rewritten to match (an attacker
# with write access): the GCM tag still refuses it
python3 -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(4096); b=f.read(1); f.seek(4096); f.write(bytes([b[0]^1]))' "$E/model.safetensors"
"$BIN" manifest "$E" >/dev/null 2>&1
load --key-file "$K"; rc=$?
check "tampered chunk: refused" bash -c '[ "$0" -eq 1 ] && grep -q "failed authentication" "$1"' $rc "$dir/lout"
# generate and serve take the key too (model_key_file); without it nothing is served
"$BIN" generate --model "$E" --key-file "$K" --ids 1,2,3 --max-tokens 2 >"$dir/gout" 2>&1; rc=$?
check "generate --key-file: tampered chunk refused" test $rc -eq 1
rm -rf "$E"; "$BIN" encrypt --key-file "$K" models/demo "$E" >/dev/null 2>&1
"$BIN" generate --model "$E" --key-file "$K" --ids 1,2,3 --max-tokens 2 >"$dir/gout" 2>&1; rc=$?
check "generate --key-file: runs" test $rc -eq 0
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" serve --model "$E" --listen "127.0.0.1:$port" --state-dir "$dir/st" >"$dir/s1" 2>&1; rc=$?
check "serve without model_key_file: exit 1, says why" bash -c '[ "$0" -eq 1 ] && grep -q "model_key_file" "$1"' $rc "$dir/s1"
mkdir -p "$dir/st"
"$BIN" serve --model "$E" --model-key-file "$K" --listen "127.0.0.1:$port" --state-dir "$dir/st" >"$dir/s2" 2>&1 &
spid=$!
for _ in $(seq 1 600); do grep -q "ready: serving" "$dir/s2" && break; kill -0 $spid 2>/dev/null || break; sleep 0.1; done
check "serve with model_key_file: ready" grep -q "ready: serving" "$dir/s2"
check "  and /health/ready answers 200" curl -fsk --max-time 5 -o /dev/null "https://127.0.0.1:$port/health/ready"
kill -TERM $spid 2>/dev/null; wait $spid 2>/dev/null
check "the key is not in the serve log" bash -c '! grep -q -- "$0" "$1"' "$key" "$dir/s2"
[[ $fails -eq 0 ]] && echo "all passed" || { echo "$fails failed"; exit 1; }
