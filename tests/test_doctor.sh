#!/bin/sh
# test_doctor.sh: `dsinfer doctor` against broken setups: missing model, bad
# config, group-readable keys file, expired / soon-expiring / mismatched TLS
# material (made here with the openssl CLI), corrupted model files with --verify,
# a wrong manifest pin, unwritable paths; and a good setup that passes.
# Each case checks the exit status and the line of the failing check.
# Exit 77 (skipped) when the dsinfer binary or openssl is missing.
set -u
bin=${DSI_BIN:-build/dsinfer}
[ -x "$bin" ] || { echo "skip: $bin not built"; exit 77; }
command -v openssl >/dev/null 2>&1 || { echo "skip: openssl CLI missing"; exit 77; }
[ -f models/demo/SHA256SUMS ] || { echo "FAIL: run from the source root (models/demo)"; exit 1; }
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
fail=0
unset NOTIFY_SOCKET CREDENTIALS_DIRECTORY

# run NAME WANT_RC PATTERN ARGS...: doctor's exit status must be WANT_RC and its
# output must contain a line matching PATTERN (grep -E).
run() {
    name=$1 want=$2 pat=$3
    shift 3
    out=$("$bin" doctor "$@" 2>&1)
    rc=$?
    if [ "$rc" -ne "$want" ] || ! printf '%s\n' "$out" | grep -Eq -- "$pat"; then
        echo "FAIL $name: rc $rc (want $want), no line matching /$pat/ in:"
        printf '%s\n' "$out" | sed 's/^/    /'
        fail=1
    else
        echo "ok   $name"
    fi
}

mkdir -p "$tmp/state" "$tmp/log"
keys=$tmp/keys.json
echo '{"keys":[]}' > "$keys"
chmod 600 "$keys"
# the settings of a healthy setup; each case breaks one thing. An empty config keeps
# an installed /etc/dsinfer/dsinfer.json out of the test; run as root, files are
# judged as root would see them (not as an existing "dsinfer" user).
echo '{}' > "$tmp/empty.json"
good="--config $tmp/empty.json --service-user root --model models/demo --state-dir $tmp/state --audit-log $tmp/log/audit.log --keys-file $keys"

# TLS material: a good certificate, one expiring in 10 days, an expired one, a stranger's key
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/good.key" \
    -out "$tmp/good.crt" -days 365 -subj /CN=dsinfer-good >/dev/null 2>&1 || { echo "FAIL: openssl req"; exit 1; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/soon.key" \
    -out "$tmp/soon.crt" -days 10 -subj /CN=dsinfer-soon >/dev/null 2>&1
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/other.key" >/dev/null 2>&1
# openssl req cannot back-date; a self-signed `openssl ca` run can
mkdir -p "$tmp/ca/db"
: > "$tmp/ca/db/index"
echo 01 > "$tmp/ca/db/serial"
printf '[ca]\ndefault_ca=c\n[c]\ndatabase=%s/ca/db/index\nnew_certs_dir=%s/ca/db\nserial=%s/ca/db/serial\ndefault_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n' \
    "$tmp" "$tmp" "$tmp" > "$tmp/ca/ca.cnf"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/old.key" \
    -out "$tmp/old.csr" -subj /CN=dsinfer-expired >/dev/null 2>&1
openssl ca -batch -config "$tmp/ca/ca.cnf" -selfsign -keyfile "$tmp/old.key" -in "$tmp/old.csr" \
    -out "$tmp/old.crt" -startdate 20200101000000Z -enddate 20200201000000Z >/dev/null 2>&1 ||
    { echo "FAIL: openssl ca"; exit 1; }
chmod 600 "$tmp"/*.key

# shellcheck disable=SC2086 # $good is a list of words on purpose
run good_setup_passes 0 '^OK   tls key: .* matches the certificate' $good \
    --tls-cert "$tmp/good.crt" --tls-key "$tmp/good.key"
run good_setup_keys_ok 0 "^OK   keys: $keys is mode 0600" $good
run good_setup_model_ok 0 '^OK   model: models/demo: Qwen2ForCausalLM' $good
run good_setup_dirs_ok 0 "^OK   state dir: $tmp/state is writable" $good
run good_setup_audit_ok 0 "^OK   audit log: new file in $tmp/log is writable" $good
run good_setup_summary 0 '^doctor: [0-9]+ ok, [0-9]+ warnings, 0 failures$' $good

run missing_model_fails 1 '^FAIL model: .*/no-such-model: No such file' $good --model "$tmp/no-such-model"
run unset_model_fails 1 '^FAIL config: model_dir is not set' --config "$tmp/empty.json" --state-dir "$tmp/state"

echo '{"max_running": 0}' > "$tmp/bad.json"
run bad_config_names_key_and_value 1 "^FAIL config: $tmp/bad.json: max_running = 0 is out of range \[1, 4096\]" \
    $good --config "$tmp/bad.json"
printf '{"model_dir": "models/demo", "state_dir": "%s/state", "keys_file": "%s", "log_level": "debug"}\n' \
    "$tmp" "$keys" > "$tmp/ok.json"
run config_file_is_read 0 "^OK   config: $tmp/ok.json is valid" --config "$tmp/ok.json"
run flags_override_the_file 1 '^FAIL config: .*tls_key' --config "$tmp/ok.json" --tls-key "$tmp/good.key"
run unknown_flag_is_usage_error 2 'unknown option "no-such-flag"' --config "$tmp/empty.json" --no-such-flag 1

chmod 640 "$keys"
run group_readable_keys_fail 1 "^FAIL keys: $keys is mode 0640: group or others" $good
chmod 606 "$keys"
run world_writable_keys_fail 1 "^FAIL keys: $keys is mode 0606" $good
chmod 600 "$keys"
run missing_keys_fail 1 "^FAIL keys: $tmp/nokeys.json: No such file" $good --keys-file "$tmp/nokeys.json"

# run as root, doctor judges files as the service user: root-owned files fail for another one
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1; then
    run keys_owned_by_other_user_fail 1 "^FAIL keys: $keys is owned by uid 0, so the service user nobody cannot" \
        $good --service-user nobody
    run state_dir_of_other_user_fails 1 "^FAIL state dir: $tmp/state is not writable by the service user nobody" \
        $good --service-user nobody
fi

run expired_cert_fails 1 "^FAIL tls cert: $tmp/old.crt \(.*dsinfer-expired\) expired on 2020-02-01" $good \
    --tls-cert "$tmp/old.crt" --tls-key "$tmp/old.key"
run soon_expiring_cert_warns 0 "^WARN tls cert: $tmp/soon.crt .* expires in (9|10) days" $good \
    --tls-cert "$tmp/soon.crt" --tls-key "$tmp/soon.key"
run mismatched_key_fails 1 "^FAIL tls key: $tmp/other.key does not match the certificate" $good \
    --tls-cert "$tmp/good.crt" --tls-key "$tmp/other.key"
echo "not a certificate" > "$tmp/junk.crt"
run junk_cert_fails 1 "^FAIL tls cert: $tmp/junk.crt: not a PEM certificate" $good \
    --tls-cert "$tmp/junk.crt" --tls-key "$tmp/good.key"
chmod 644 "$tmp/good.key"
run world_readable_tls_key_fails 1 "^FAIL tls key: $tmp/good.key is readable by everyone" $good \
    --tls-cert "$tmp/good.crt" --tls-key "$tmp/good.key"
chmod 600 "$tmp/good.key"
run client_ca_expiry_checked 1 "^FAIL tls client ca: $tmp/old.crt .* expired" $good \
    --tls-cert "$tmp/good.crt" --tls-key "$tmp/good.key" --tls-client-ca "$tmp/old.crt"

# no tls_cert: the self-signed certificate the server keeps in state_dir is checked
mkdir -p "$tmp/state2"
cp "$tmp/old.crt" "$tmp/state2/tls-cert.pem"
run self_signed_cert_checked 1 "^FAIL tls cert: $tmp/state2/tls-cert.pem .* expired" $good --state-dir "$tmp/state2"

run missing_state_dir_fails 1 "^FAIL state dir: $tmp/nostate does not exist" $good --state-dir "$tmp/nostate"
run audit_log_dir_missing_fails 1 "^FAIL audit log: new file in $tmp/nolog does not exist" $good \
    --audit-log "$tmp/nolog/audit.log"

# --verify hashes every file: a copy with one changed byte fails
run verify_good_model 0 '^OK   manifest: every file matches SHA256SUMS' $good --verify
cp -r models/demo "$tmp/model"
printf '{"x":1}' >> "$tmp/model/generation_config.json"
run verify_corrupt_model_fails 1 '^FAIL manifest: .*generation_config.json' $good --model "$tmp/model" --verify
rm "$tmp/model/SHA256SUMS"
run missing_manifest_fails 1 "^FAIL manifest: $tmp/model/SHA256SUMS: No such file" $good --model "$tmp/model"
pin=$(sha256sum models/demo/SHA256SUMS | cut -d' ' -f1)
run manifest_pin_matches 0 '^OK   manifest' $good --manifest-sha256 "$pin"
run manifest_pin_mismatch_fails 1 '^FAIL manifest: .* does not have the pinned SHA-256' $good \
    --manifest-sha256 "$(printf '%064d' 0)"

# without a usable GPU, backend cuda cannot start; with one, the cpu backend only notes it
if "$bin" doctor $good 2>&1 | grep -Eq '^WARN gpu: (no CUDA device|CUDA runtime)'; then
    run cuda_without_gpu_fails 1 '^FAIL gpu: ' $good --backend cuda
else
    run cuda_with_gpu_checks_memory 0 '^OK   gpu: device 0 .* free of' $good --backend cuda
fi

# --json: one object whose ok, counts and checks agree with the exit status
json_case() { # json_case NAME WANT_RC PYTHON_ASSERT ARGS...
    name=$1 want=$2 cond=$3
    shift 3
    "$bin" doctor --json "$@" >"$tmp/doctor.json" 2>"$tmp/doctor.err"
    rc=$?
    if [ "$rc" -eq "$want" ] && python3 -c "
import json, sys
j = json.load(open(sys.argv[1]))
assert j['ok'] == (j['n_fail'] == 0) and len(j['checks']) == j['n_ok'] + j['n_warn'] + j['n_fail']
assert isinstance(j['gpus'], list)
$cond" "$tmp/doctor.json"; then
        echo "ok   $name"
    else
        echo "FAIL $name: rc $rc (want $want)"; cat "$tmp/doctor.json" "$tmp/doctor.err" | sed 's/^/    /'
        fail=1
    fi
}
json_case json_good 0 "assert j['ok'] and any(c['check'] == 'model' and c['level'] == 'ok' for c in j['checks'])" $good
json_case json_bad_pin 1 "assert not j['ok'] and any(c['check'] == 'manifest' and c['level'] == 'fail' for c in j['checks'])" \
    $good --manifest-sha256 "$(printf '%064d' 0)"

# an encrypted model: checked with model_key_file, refused without it
if "$bin" encrypt --new-key --key-file "$tmp/model.key" models/demo "$tmp/enc" >/dev/null 2>&1; then
    run encrypted_model_with_key 0 "^OK   model key: $tmp/model.key opens" $good --model "$tmp/enc" \
        --model-key-file "$tmp/model.key"
    run encrypted_model_without_key_fails 1 "^FAIL model: .*encrypted at rest; model_key_file is not set" $good \
        --model "$tmp/enc"
    chmod 644 "$tmp/model.key"
    run encrypted_model_open_key_fails 1 "^FAIL model: .*chmod 600" $good --model "$tmp/enc" \
        --model-key-file "$tmp/model.key"
else
    echo "FAIL encrypt for the doctor cases"; fail=1
fi

exit $fail
