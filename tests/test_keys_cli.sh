#!/usr/bin/env bash
# test_keys_cli.sh: `dsinfer keys add|list|revoke` end to end through the binary:
# add prints exactly one line (the key) on stdout, the file is 0600 and holds
# no key, list never prints hashes, revoke disables, rewrites are atomic (no
# temp files left), usage errors exit 2, failures exit 1.
set -u
BIN=${DSI_BIN:-build/dsinfer}
[[ -x $BIN ]] || { echo "skip: no dsinfer binary at $BIN"; exit 77; }
dir=$(mktemp -d /tmp/dsi_keys_cli.XXXXXX)
trap 'rm -rf "$dir"' EXIT
F=$dir/keys.json
fails=0
check() { # check DESCRIPTION CONDITION...
  local what=$1; shift
  if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi
}

out=$("$BIN" keys add --file "$F" --name alice --role user --models tiny-chat --rpm 60 --tpm 10000 \
      --max-tokens 256 --expires 2099-01-31 2>"$dir/err"); rc=$?
check "add exits 0" test $rc -eq 0
check "add prints exactly one stdout line" test "$(printf '%s\n' "$out" | wc -l)" -eq 1
check "the line is a key" bash -c '[[ $0 =~ ^dsi-[0-9a-f]{64}$ ]]' "$out"
key=$out
check "the key is not on stderr" bash -c '! grep -q -- "$0" "$1"' "${key#dsi-}" "$dir/err"
check "file mode is 0600" test "$(stat -c %a "$F")" = 600
check "the key is not in the file" bash -c '! grep -q -- "$0" "$1"' "${key#dsi-}" "$F"
sha=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)
check "the file holds its sha256" grep -q "$sha" "$F"

out2=$("$BIN" keys add --file "$F" --name prom --role monitor 2>/dev/null)
check "second add gives a different key" test -n "$out2" -a "$out2" != "$key"

list=$("$BIN" keys list --file "$F"); rc=$?
check "list exits 0" test $rc -eq 0
check "list has one line per key" test "$(printf '%s\n' "$list" | wc -l)" -eq 2
check "list lines start with an id" bash -c '! printf "%s\n" "$0" | grep -vq "^k_[0-9a-f]\{8\}	"' "$list"
check "list shows name, role, status" bash -c 'printf "%s\n" "$0" | grep -q "	alice	user	active	"' "$list"
check "list never prints hashes" bash -c '! printf "%s\n" "$0" | grep -Eq "[0-9a-f]{64}"' "$list"
id=$(printf '%s\n' "$list" | awk -F'\t' '$2=="alice"{print $1}')

ino=$(stat -c %i "$F")
"$BIN" keys revoke --file "$F" "$id" 2>/dev/null; rc=$?
check "revoke exits 0" test $rc -eq 0
check "revoke replaced the file (atomic rename)" test "$(stat -c %i "$F")" != "$ino"
check "mode still 0600 after revoke" test "$(stat -c %a "$F")" = 600
check "revoked key listed as disabled" bash -c '"$0" keys list --file "$1" | grep -q "^$2	alice	user	disabled	"' "$BIN" "$F" "$id"
check "no temp files left" bash -c '! ls "$0" | grep -q "\.tmp\."' "$dir"

"$BIN" keys revoke --file "$F" k_00000000 2>/dev/null; check "revoke unknown id exits 1" test $? -eq 1
"$BIN" keys add --file "$F" --name x --role wizard >/dev/null 2>&1; check "unknown role exits 1" test $? -eq 1
"$BIN" keys add --file "$F" --name x --role user --rpm ten >/dev/null 2>&1; check "bad number exits 2" test $? -eq 2
"$BIN" keys add --file "$F" --role user >/dev/null 2>&1; check "missing --name exits 2" test $? -eq 2
"$BIN" keys frob >/dev/null 2>&1; check "unknown subcommand exits 2" test $? -eq 2
out=$("$BIN" keys add --file "$F" --name x --role user --expires 2001-01-01 2>/dev/null); rc=$?
check "past expiry refused, nothing on stdout" test $rc -eq 1 -a -z "$out"

# roles from a daemon config file (object or string form)
printf '{"keys_file":"%s","roles":{"user":["chat"],"monitor":["metrics"],"reader":["models"]}}\n' "$F" >"$dir/cfg.json"
out=$("$BIN" keys add --config "$dir/cfg.json" --name r --role reader 2>/dev/null)
check "--config supplies keys_file and roles" bash -c '[[ $0 =~ ^dsi-[0-9a-f]{64}$ ]]' "$out"

chmod 644 "$F"
"$BIN" keys list --file "$F" >/dev/null 2>"$dir/err"; rc=$?
check "world-readable keys file refused" test $rc -eq 1
check "refusal says how to fix it" grep -q "chmod 600" "$dir/err"

echo "$fails failed"
[[ $fails -eq 0 ]]
