#!/usr/bin/env bash
# The bundled demo model's perplexity on its held-out text (tests/data/demo/heldout.txt):
#  1. f32 weights equal HF transformers' perplexity of the same directory within 0.1%
#     (tests/golden/demo/hf_perplexity.json, made by scripts/demo/train_demo.py on the
#     GPU machine, by the same windowing protocol);
#  2. the INT8 regression guard: int8 per-channel within +2% of bf16 (the goal is
#     +0.5%; bench/RESULTS.md records the measured gap), group-wise 128 likewise, and
#     W8A8 (int8 activations per token too, int32 sums: --int8-mode w8a8) likewise;
#  3. the 8-bit KV cache (--kv-dtype int8, bf16 weights) within +0.5% of the same
#     weights with the default f32 cache (issue 23's goal; measured +0.03%).
# Not a speed test.
set -euo pipefail
bin=${DSI_BIN:?DSI_BIN must name the dsinfer binary}
model=models/demo text=tests/data/demo/heldout.txt
ppl() { "$bin" perplexity --model "$model" --text "$text" --json "$@" 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])'; }
hf=$(python3 -c 'import json; print(json.load(open("tests/golden/demo/hf_perplexity.json"))["hf_f32"])')
f32=$(ppl --dtype f32)
echo "f32 perplexity $f32, HF transformers f32 $hf"
python3 - "$f32" "$hf" <<'PY'
import sys
ours, hf = map(float, sys.argv[1:])
rel = abs(ours - hf) / hf
assert rel <= 1e-3, f"dsinfer f32 perplexity {ours} differs from HF {hf} by {rel:.2%} (> 0.1%)"
PY
n=4096
bf16=$(ppl --dtype bf16 --max-tokens $n)
int8=$(ppl --dtype int8 --max-tokens $n)
g128=$(ppl --dtype int8 --group-size 128 --max-tokens $n)
w8a8=$(ppl --dtype int8 --int8-mode w8a8 --max-tokens $n)
kv8=$(ppl --dtype bf16 --kv-dtype int8 --max-tokens $n --parallel 8) # windows in parallel: same numbers, faster
echo "first $n tokens: bf16 $bf16, int8 per-channel $int8, int8 group-128 $g128, int8 w8a8 $w8a8, int8 KV $kv8"
python3 - "$bf16" "$int8" "$g128" "$w8a8" "$kv8" <<'PY'
import sys
bf16, int8, g128, w8a8, kv8 = map(float, sys.argv[1:])
assert bf16 <= kv8 * 1.005 and kv8 <= bf16 * 1.005, f"int8 KV perplexity {kv8} is not within 0.5% of {bf16}"
assert kv8 != bf16, "the int8 KV cache changed nothing: not in use?"
for name, v in (("int8 per-channel", int8), ("int8 group-128", g128), ("int8 w8a8", w8a8)):
    assert v <= bf16 * 1.02, f"{name} perplexity {v} is more than 2% above bf16 {bf16}"
    assert v >= bf16 * 0.9, f"{name} perplexity {v} is implausibly below bf16 {bf16}"
PY
echo "1 passed, 0 failed"
