#!/usr/bin/env bash
# The DeepSeek-V3-layout demo model (models/demo-v3: MLA + MoE) on the CUDA backend:
# its perplexity on the held-out text equals the CPU backend's within 0.1%, in bf16
# and in INT8 per channel (the same weights on both backends). Exit 77 (skip)
# where nvidia-smi sees no GPU.
set -euo pipefail
bin=${DSI_BIN:?DSI_BIN must name the dsinfer binary}
model=models/demo-v3 text=tests/data/demo/heldout.txt n=${DSI_DEMO_TOKENS:-2048}
ppl() { "$bin" perplexity --model "$model" --text "$text" --json --max-tokens "$n" --kv-dtype bf16 "$@" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])'; }
nvidia-smi -L >/dev/null 2>&1 || { echo "no GPU: skipped"; exit 77; }
for dt in bf16 int8; do
  cpu=$(ppl --backend cpu --dtype "$dt")
  gpu=$(ppl --backend cuda --dtype "$dt")
  echo "first $n tokens, $dt: cpu $cpu, cuda $gpu"
  python3 -c "
import sys; c, g = $cpu, $gpu; rel = abs(g - c) / c
print(f'  relative difference {rel:.3e}')
sys.exit(0 if rel <= 1e-3 else 1)" || { echo "cuda perplexity differs from the cpu's by more than 0.1%" >&2; exit 1; }
done
echo "1 passed, 0 failed"
