#!/usr/bin/env bash
# soak.sh: the daemon under long, hostile-ish load (issue 26 item 4), for the GPU
# machine by default and, shortened, for CI on the CPU backend.
#
#   scripts/soak.sh [--bin DIR] [--model DIR] [--backend cuda|cpu] [--dtype D]
#                   [--segments N] [--segment-s S] [--concurrency C] [--cut F]
#                   [--prompt-words A:B] [--max-tokens A:B] [--hup-every S]
#                   [--out DIR] [-- extra serve flags]
#
# Defaults: the demo model on CUDA, INT8, 10 segments of 60 s at 256 clients,
# 10% of the streams cut mid-way by the client, prompts of 16..600 words and
# max_tokens 64..1024 (clamped by the server at the context end, so long prompts
# run into it), SIGHUP (config + certificate reload) every 30 s.
#
# loadgen runs once per segment (its own seed each), so every segment prints its
# own line: requests, tok/s, streams cut, errors, p99 inter-token latency, the
# daemon's RSS and its GPU memory (nvidia-smi, where there is one). At the end the
# run passes only if
#   - no request failed other than the streams cut on purpose (loadgen's errors,
#     and the server's dsinfer_generation_failures_total, stay 0);
#   - dsinfer_running_sequences, _waiting_sequences and dsinfer_kv_blocks_used
#     are back to 0 within 30 s;
#   - RSS and GPU memory after the first segment (warm-up) grow by less than
#     --max-growth-mib (default 64) to the last;
#   - the daemon exits 0 on SIGTERM.
# p99 inter-token latency per segment is printed for the reader to judge.
# Exit 0 pass, 1 fail. Needs python3 (standard library) for JSON and /metrics.
set -u
BIN=build; MODEL=models/demo; BACKEND=cuda; DTYPE=int8; SEGMENTS=10; SEG_S=60; CONC=256; CUT=0.1
PW=16:600; MT=64:1024; HUP=30; OUT=; GROW=64; EXTRA=()
while (($#)); do
  case $1 in
    --bin) BIN=$2; shift 2 ;; --model) MODEL=$2; shift 2 ;; --backend) BACKEND=$2; shift 2 ;;
    --dtype) DTYPE=$2; shift 2 ;; --segments) SEGMENTS=$2; shift 2 ;; --segment-s) SEG_S=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;; --cut) CUT=$2; shift 2 ;; --prompt-words) PW=$2; shift 2 ;;
    --max-tokens) MT=$2; shift 2 ;; --hup-every) HUP=$2; shift 2 ;; --out) OUT=$2; shift 2 ;;
    --max-growth-mib) GROW=$2; shift 2 ;; --) shift; EXTRA=("$@"); break ;;
    *) echo "soak.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ -x $BIN/dsinfer && -x $BIN/loadgen ]] || { echo "soak.sh: no $BIN/dsinfer or $BIN/loadgen" >&2; exit 2; }
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=https://127.0.0.1:$PORT
NAME=$(basename "$MODEL")

"$BIN/dsinfer" keys add --file "$OUT/keys.json" --name soak --role user > "$OUT/key" 2>/dev/null || exit 2
"$BIN/dsinfer" keys add --file "$OUT/keys.json" --name soakmon --role monitor > "$OUT/mkey" 2>/dev/null || exit 2
"$BIN/dsinfer" serve --model "$MODEL" --backend "$BACKEND" --dtype "$DTYPE" --listen "127.0.0.1:$PORT" \
  --keys-file "$OUT/keys.json" --state-dir "$OUT/state" --max-running "$CONC" --max-queued $((CONC * 2)) \
  "${EXTRA[@]}" >"$OUT/serve.log" 2>&1 &
PID=$!
trap 'kill -9 $PID 2>/dev/null' EXIT

# metrics NAME...: the values of those unlabelled-or-labelled series, one per line
metrics() {
  python3 - "$URL/metrics" "$(cat "$OUT/mkey")" "$@" <<'EOF'
import ssl, sys, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
try:
    req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]})
    text = urllib.request.urlopen(req, context=ctx, timeout=10).read().decode()
except Exception as e:
    print("metrics unreadable: %s" % e, file=sys.stderr); sys.exit(1)
vals = {ln.rsplit(" ", 1)[0]: ln.rsplit(" ", 1)[1] for ln in text.splitlines() if ln and not ln.startswith("#")}
print(" ".join(vals.get(n, "NA") for n in sys.argv[3:]))
EOF
}
rss_mib() { awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$PID/status" 2>/dev/null || echo NA; }
gpu_mib() {
  command -v nvidia-smi >/dev/null || { echo NA; return; }
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
    awk -F', *' -v p="$PID" '$1 == p {print $2; f = 1} END {if (!f) print "NA"}'
}

for _ in $(seq 600); do
  grep -q "ready: serving" "$OUT/serve.log" && break
  kill -0 $PID 2>/dev/null || break
  sleep 0.5
done
grep -q "ready: serving" "$OUT/serve.log" || { echo "soak: the daemon did not start"; tail -20 "$OUT/serve.log"; exit 1; }
echo "soak: $BACKEND $DTYPE $NAME, $SEGMENTS x ${SEG_S} s at $CONC clients, cut $CUT, prompts $PW words," \
  "max_tokens $MT, SIGHUP every ${HUP} s; logs in $OUT"
printf "%4s %8s %9s %5s %6s %9s %8s %8s\n" seg requests tok/s cut errors itl_p99ms rss_MiB gpu_MiB

fails=0; errors=0; rss0=; gpu0=; rss=; gpu=
t_hup=$(date +%s)
for seg in $(seq "$SEGMENTS"); do
  "$BIN/loadgen" --url "$URL" --key-file "$OUT/key" --insecure --model "$NAME" --concurrency "$CONC" \
    --duration "$SEG_S" --prompt-words "$PW" --max-tokens "$MT" --cut-fraction "$CUT" --seed "$seg" \
    --timeout 600 --json >"$OUT/seg$seg.json" 2>"$OUT/seg$seg.err" &
  lg=$!
  while kill -0 $lg 2>/dev/null; do
    sleep 1
    if (($(date +%s) - t_hup >= HUP)); then kill -HUP $PID; t_hup=$(date +%s); fi
  done
  wait $lg
  read -r n tps cut err itl < <(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
print(j["requests_completed"], round(j["output_tokens_per_s"]), j["cut_streams"], j["errors"],
      (j["itl_ms"] or {}).get("p99", "NA"))' "$OUT/seg$seg.json" 2>/dev/null || echo "NA NA NA 1 NA")
  [[ $err == 0 ]] || cat "$OUT/seg$seg.err" "$OUT/seg$seg.json"
  errors=$((errors + err))
  rss=$(rss_mib); gpu=$(gpu_mib)
  [[ $seg == 1 ]] && rss0=$rss && gpu0=$gpu
  printf "%4s %8s %9s %5s %6s %9s %8s %8s\n" "$seg" "$n" "$tps" "$cut" "$err" "$itl" "$rss" "$gpu"
done

check() { # NAME COMMAND...
  if "${@:2}"; then echo "ok   $1"; else echo "FAIL $1"; fails=$((fails + 1)); fi
}
check "no request failed other than the streams cut on purpose ($errors errors)" test "$errors" -eq 0
read -r f500 f503 < <(metrics 'dsinfer_generation_failures_total{status="500"}' \
                              'dsinfer_generation_failures_total{status="503"}')
check "the server ended no generation with an error (500: $f500, 503: $f503)" test "$f500$f503" = 00
left=
for _ in $(seq 60); do
  left=$(metrics dsinfer_running_sequences dsinfer_waiting_sequences dsinfer_kv_blocks_used)
  [[ $left == "0 0 0" ]] && break
  sleep 0.5
done
check "running, waiting sequences and KV blocks in use back to 0 (now: $left)" test "$left" = "0 0 0"
check "RSS after warm-up grew < $GROW MiB ($rss0 -> $rss)" test $((rss - rss0)) -lt "$GROW"
if [[ $gpu0 != NA && $gpu != NA ]]; then
  check "GPU memory after warm-up grew < $GROW MiB ($gpu0 -> $gpu)" test $((gpu - gpu0)) -lt "$GROW"
fi
kill -TERM $PID
wait $PID; rc=$?
trap - EXIT
check "the daemon exits 0 on SIGTERM" test "$rc" -eq 0
grep -c "reloaded\|reload" "$OUT/serve.log" | sed 's/^/     reload log lines: /'
[[ $fails -eq 0 ]] && echo "soak: passed" || echo "soak: $fails failed"
exit $((fails > 0))
