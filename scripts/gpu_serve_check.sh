#!/bin/bash
# gpu_serve_check.sh: the daemon end to end on the GPU machine, after
# gpu_final_check.sh (which leaves the 7B-shape model in /tmp/dsi-7b):
#   1. dsinfer perplexity --backend cuda on the demo model (bf16, int8, int8 g128)
#   2. dsinfer serve --backend cuda on the demo model, driven by loadgen over TLS
#      at 1, 16 and 64 streaming clients
#   3. dsinfer bench --backend cuda on the 7B shape (engine only, int8 and bf16)
# Run from the repo root with G=<folder with dsinfer, loadgen, devlibs/>; logs in $OUT.
G=${G:-.gpurun}
OUT=${OUT:-/tmp/gpu-serve}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/$G/devlibs:/usr/local/cuda/lib64:$LD_LIBRARY_PATH
S=$OUT/serve_summary.log
t0=$(date +%s)
step() { echo "[$(($(date +%s) - t0)) s] $*" >> "$S"; }

for a in "--dtype bf16" "--dtype int8" "--dtype int8 --group-size 128"; do
  timeout 40 $G/dsinfer perplexity --model models/demo --text tests/data/demo/heldout.txt --max-tokens 8192 \
    --backend cuda $a --json >> "$S" 2>> "$OUT/serve.log"
done
step "perplexity done"

st=$(mktemp -d)
$G/dsinfer keys add --file "$st/keys.json" --name bench --role admin > "$st/key" 2>> "$OUT/serve.log"
$G/dsinfer serve --model models/demo --backend cuda --dtype int8 --listen 127.0.0.1:18443 \
  --keys-file "$st/keys.json" --state-dir "$st" >> "$OUT/serve.log" 2>&1 &
pid=$!
for i in $(seq 60); do
  curl -sk https://127.0.0.1:18443/health/ready 2>/dev/null | grep -q . && break; sleep 0.5
done
step "serve ready after loop $i"
curl -sk https://127.0.0.1:18443/v1/chat/completions -H "Authorization: Bearer $(cat $st/key)" \
  -H 'Content-Type: application/json' \
  -d '{"model":"demo","messages":[{"role":"user","content":"In the beginning God created the heaven and the earth."}],"max_tokens":40,"temperature":0}' >> "$S" 2>&1
echo >> "$S"
for c in 1 16 64; do
  timeout 30 $G/loadgen --url https://127.0.0.1:18443 --key-file "$st/key" --insecure \
    --concurrency $c --duration 6 --max-tokens 64:64 --json >> "$S" 2>> "$OUT/serve.log"
done
kill -TERM $pid; wait $pid; step "serve exit rc=$?"

for d in int8 bf16; do
  timeout 60 $G/dsinfer bench --model /tmp/dsi-7b --no-verify --backend cuda --dtype $d \
    --batch 1,16,64 --context 128,2048 --steps 10 --json >> "$S" 2>> "$OUT/serve.log"
  step "bench 7b $d rc=$?"
done
cat "$S"
