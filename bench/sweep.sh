#!/usr/bin/env bash
# Runs build/loadgen at rising concurrency against a running dsinfer and draws
# throughput against latency.
#   bench/sweep.sh URL KEY_FILE CACERT OUTDIR [SECONDS] [LEVELS...]
# Writes OUTDIR/sweep.jsonl (one loadgen JSON per level), OUTDIR/sweep.md (a
# markdown table for bench/RESULTS.md) and OUTDIR/sweep.png (gnuplot).
# LOADGEN_EXTRA adds loadgen options to every level (e.g. "--max-tokens 32:32");
# LOADGEN names the loadgen binary (default build/loadgen).
set -euo pipefail
url=${1:?url}; key=${2:?key file}; ca=${3:?cacert}; out=${4:?outdir}; secs=${5:-20}
shift $(( $# < 5 ? $# : 5 ))
levels=("$@"); ((${#levels[@]})) || levels=(1 2 4 8 16 32 64 128 256)
lg=${LOADGEN:-$(dirname "$0")/../build/loadgen}
mkdir -p "$out"; : > "$out/sweep.jsonl"
for c in "${levels[@]}"; do
  echo "concurrency $c ..." >&2
  "$lg" --url "$url" --key-file "$key" --cacert "$ca" --concurrency "$c" --duration "$secs" \
        --json ${LOADGEN_EXTRA:-} >> "$out/sweep.jsonl" || true
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/sweep.jsonl") if l.strip()]
def g(d, k, p):
    v = d.get(k)
    return v[p] if v else float("nan")
with open(f"{out}/sweep.md", "w") as f:
    f.write("| concurrency | req/s | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | errors |\n")
    f.write("|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for r in rows:
        f.write(f"| {r['concurrency']} | {r['requests_per_s']:.2f} | {r['output_tokens_per_s']:.1f} | "
                f"{g(r,'ttft_ms','p50'):.1f} | {g(r,'ttft_ms','p99'):.1f} | {g(r,'itl_ms','p50'):.2f} | "
                f"{g(r,'itl_ms','p99'):.2f} | {r['errors']} |\n")
with open(f"{out}/sweep.dat", "w") as f:
    for r in rows:
        f.write(f"{r['concurrency']} {r['output_tokens_per_s']} {g(r,'itl_ms','p50')} {g(r,'ttft_ms','p50')}\n")
PY
if command -v gnuplot >/dev/null; then
  gnuplot <<GP
set terminal pngcairo size 900,560
set output "$out/sweep.png"
set title "dsinfer: output throughput vs inter-token latency (labels: concurrency)"
set xlabel "output tokens/s"; set ylabel "inter-token latency p50 (ms)"; set grid
plot "$out/sweep.dat" using 2:3 with linespoints pt 7 notitle, \
     "$out/sweep.dat" using 2:3:1 with labels offset 1,1 notitle
GP
fi
cat "$out/sweep.md"
