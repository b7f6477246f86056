#!/usr/bin/env bash
# test_deploy_ci.sh: the CI stage scripts of deploy/ci on the CPU backend.
#   validate_model: a pinned good model passes (plain and encrypted, no key);
#     a wrong pin, a missing pin and a changed file fail; usage errors exit 2
#   hardware_test: passes with --min-gpus 0 on any host, fails on a threshold no
#     host meets (--min-gpus 99), JSON report written
#   perf_bench: starts dsinfer on models/demo and meets the committed baseline;
#     the same result fails an unreachable baseline (--result)
# Exit 0 pass, 1 fail, 77 skipped (no binaries or python3).
set -u
BIN=${DSI_BIN:-build/dsinfer}
LG=${LOADGEN:-$(dirname "$BIN")/loadgen}
[[ -x $BIN && -x $LG ]] || { echo "skip: no dsinfer/loadgen binaries"; exit 77; }
command -v python3 >/dev/null || { echo "skip: python3 missing"; exit 77; }
export DSINFER=$BIN LOADGEN=$LG
unset CREDENTIALS_DIRECTORY
dir=$(mktemp -d /tmp/dsi_deploy_ci.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fails=0
expect() { # expect DESCRIPTION WANT_RC COMMAND...
  local what=$1 want=$2; shift 2
  "$@" >"$dir/out" 2>&1; local rc=$?
  if [[ $rc -eq $want ]]; then echo "ok   $what"; else echo "FAIL $what: rc $rc, want $want"; sed 's/^/    /' "$dir/out"; fails=$((fails + 1)); fi
}
pin=$(sha256sum models/demo/SHA256SUMS | cut -d' ' -f1)
expect "validate: pinned model passes" 0 deploy/ci/validate_model.sh models/demo "$pin"
expect "validate: pin from the environment" 0 env MODEL_MANIFEST_SHA256="$pin" deploy/ci/validate_model.sh models/demo
expect "validate: wrong pin fails" 1 deploy/ci/validate_model.sh models/demo "$(printf '%064d' 0)"
expect "validate: no pin fails" 1 env -u MODEL_MANIFEST_SHA256 deploy/ci/validate_model.sh models/demo
expect "validate: usage" 2 deploy/ci/validate_model.sh
cp -r models/demo "$dir/m"
printf ' ' >>"$dir/m/config.json"
expect "validate: a changed file fails" 1 deploy/ci/validate_model.sh "$dir/m" "$pin"
"$BIN" encrypt --new-key --key-file "$dir/k" models/demo "$dir/enc" >"$dir/enc.out" 2>/dev/null
epin=$(grep -Eo '[0-9a-f]{64}$' "$dir/enc.out")
expect "validate: encrypted model passes without the key" 0 deploy/ci/validate_model.sh "$dir/enc" "$epin"

echo '{}' >"$dir/empty.json"
doc=(-- --config "$dir/empty.json" --model models/demo --state-dir "$dir")
expect "hardware: --min-gpus 0 passes" 0 deploy/ci/hardware_test.sh --min-gpus 0 --report "$dir/hw.json" "${doc[@]}"
expect "hardware: report is doctor JSON" 0 python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert "gpus" in j and "checks" in j' "$dir/hw.json"
expect "hardware: 99 GPUs required fails" 1 deploy/ci/hardware_test.sh --min-gpus 99 "${doc[@]}"
expect "hardware: --strict fails on any doctor FAIL" 1 deploy/ci/hardware_test.sh --min-gpus 0 --strict -- --config "$dir/empty.json" --model "$dir/missing"
expect "hardware: usage" 2 deploy/ci/hardware_test.sh --min-gpus many

expect "perf: demo model meets the committed baseline" 0 deploy/ci/perf_bench.sh --baseline deploy/ci/baseline-cpu-demo.json --out "$dir/perf.json"
expect "perf: loadgen JSON kept" 0 python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["requests_completed"] > 0' "$dir/perf.json"
python3 - "$dir/hard.json" <<'PY'
import json, sys
b = json.load(open("deploy/ci/baseline-cpu-demo.json"))
b.update(min_output_tokens_per_s=1e9)
json.dump(b, open(sys.argv[1], "w"))
PY
expect "perf: the same run against the baseline again (--result)" 0 deploy/ci/perf_bench.sh --baseline deploy/ci/baseline-cpu-demo.json --result "$dir/perf.json"
expect "perf: an unreachable baseline fails" 1 deploy/ci/perf_bench.sh --baseline "$dir/hard.json" --result "$dir/perf.json"
expect "perf: usage" 2 deploy/ci/perf_bench.sh
[[ $fails -eq 0 ]] && echo "all passed" || { echo "$fails failed"; exit 1; }
