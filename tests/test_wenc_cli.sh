#!/usr/bin/env bash
# test_wenc_cli.sh: `dsinfer encrypt|decrypt` end to end on models/demo: the
# encrypted folder verifies without the key and holds no plaintext; decrypt
# restores every byte; the key never reaches stdout/stderr; loading refuses a
# missing, world-readable or wrong key and a tampered file (exit 1, one line).
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
[[ $fails -eq 0 ]] && echo "all passed" || { echo "$fails failed"; exit 1; }
