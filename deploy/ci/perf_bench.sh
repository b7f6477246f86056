#!/usr/bin/env bash
# perf_bench.sh: CI stage 3, performance benchmark. Drives a dsinfer service
# with loadgen and fails when output tokens/s fall below, or p99 time to first
# token rises above, the committed baseline (deploy/ci/baseline-*.json).
#
#   deploy/ci/perf_bench.sh --baseline FILE [--out FILE]
#       starts `dsinfer serve` on the baseline's model (cpu backend, loopback,
#       temp state dir and key) and stops it afterwards (drain, SIGTERM);
#   deploy/ci/perf_bench.sh --baseline FILE --url URL --key-file K [--cacert CA]
#       measures a service that is already running (e.g. the staging VIP);
#   deploy/ci/perf_bench.sh --baseline FILE --result LOADGEN_JSON
#       only compares an earlier run (an archived perf.json) with the baseline.
# Baseline keys: model, concurrency, duration_s, prompt_words, max_tokens,
# min_output_tokens_per_s, max_ttft_p99_ms (optional: backend, dtype, model_name).
# Exit 0 at or above baseline, 1 below (or errors), 2 usage.
set -euo pipefail
# shellcheck source=deploy/ci/common.sh
source "$(dirname "$0")/common.sh"
baseline='' out='' url='' keyf='' cacert='' result=''
while [[ $# -gt 0 ]]; do
  case $1 in
    --baseline) baseline=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --url) url=$2; shift 2 ;;
    --key-file) keyf=$2; shift 2 ;;
    --cacert) cacert=$2; shift 2 ;;
    --result) result=$2; shift 2 ;;
    *) usage_die "$0 --baseline FILE [--out FILE] [--url URL --key-file K [--cacert CA] | --result LOADGEN_JSON]" ;;
  esac
done
[[ -f $baseline ]] || usage_die "$0 --baseline FILE (missing)"
[[ -n $result || -x $LOADGEN ]] || die "no loadgen binary (set LOADGEN)"
[[ -z $url || -n $keyf ]] || usage_die "--url needs --key-file"
get() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2], sys.argv[3]); print(v)' "$baseline" "$1" "${2:-}"; }
model=$(get model) conc=$(get concurrency 2) dur=$(get duration_s 4) pw=$(get prompt_words 4:16) mt=$(get max_tokens 8:16)
name=$(get model_name "$(basename "$model")")
w=$(mktemp -d /tmp/dsinfer-perf.XXXXXX)
if [[ -n $result ]]; then
  [[ -f $result ]] || usage_die "--result $result: no such file"
  cp "$result" "$w/lg.json"
fi
dpid=
cleanup() {
  if [[ -n $dpid ]]; then kill -TERM "$dpid" 2>/dev/null || true; wait "$dpid" 2>/dev/null || true; fi
  rm -rf "$w"
}
trap cleanup EXIT
if [[ -z $result && -z $url ]]; then
  [[ $model = /* ]] || model=$ci_root/$model
  [[ -d $model ]] || die "baseline model $model missing"
  key=$("$DSINFER" keys add --file "$w/keys.json" --name ci-perf --role user 2>/dev/null) || die "keys add"
  (umask 077; printf '%s\n' "$key" >"$w/key")
  keyf=$w/key
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  : >"$w/daemon.log"
  "$DSINFER" serve --model "$model" --model-name "$name" --listen "127.0.0.1:$port" --keys-file "$w/keys.json" \
      --state-dir "$w/state" --backend "$(get backend cpu)" --dtype "$(get dtype bf16)" >"$w/daemon.log" 2>&1 &
  dpid=$!
  for _ in $(seq 1 600); do
    grep -q "ready: serving" "$w/daemon.log" && break
    kill -0 "$dpid" 2>/dev/null || { cat "$w/daemon.log" >&2; die "dsinfer serve exited"; }
    sleep 0.1
  done
  grep -q "ready: serving" "$w/daemon.log" || { cat "$w/daemon.log" >&2; die "dsinfer serve not ready in 60 s"; }
  url=https://127.0.0.1:$port cacert=$w/state/tls-cert.pem
fi
if [[ -z $result ]]; then
  tls=(--insecure)
  [[ -n $cacert ]] && tls=(--cacert "$cacert")
  set +e
  "$LOADGEN" --url "$url" --key-file "$keyf" "${tls[@]}" --model "$name" --concurrency "$conc" --duration "$dur" \
      --prompt-words "$pw" --max-tokens "$mt" --seed 1 --json >"$w/lg.json" 2>"$w/lg.err"
  lrc=$?
  set -e
  [[ -n $out ]] && cp "$w/lg.json" "$out"
  [[ $lrc -eq 0 ]] || { cat "$w/lg.err" >&2; die "loadgen exited $lrc"; }
fi
python3 - "$w/lg.json" "$baseline" <<'PY'
import json, sys
r, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
tps, p99 = r["output_tokens_per_s"], r["ttft_ms"]["p99"]
bad = []
if r["errors"]:
    bad.append(f"{r['errors']} failed requests {r['errors_by_status']}")
if tps < b["min_output_tokens_per_s"]:
    bad.append(f"throughput {tps:.1f} tok/s < baseline {b['min_output_tokens_per_s']}")
if p99 > b["max_ttft_p99_ms"]:
    bad.append(f"p99 TTFT {p99:.1f} ms > baseline {b['max_ttft_p99_ms']}")
for x in bad:
    print("FAIL:", x, file=sys.stderr)
print(f"{'ok' if not bad else 'below baseline'}: {tps:.1f} tok/s (min {b['min_output_tokens_per_s']}), "
      f"p99 TTFT {p99:.1f} ms (max {b['max_ttft_p99_ms']}), {r['requests_completed']} requests",
      file=sys.stderr)
sys.exit(1 if bad else 0)
PY
