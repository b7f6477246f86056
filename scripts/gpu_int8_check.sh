#!/bin/bash
# gpu_int8_check.sh: issue 19's W8A8 and issue 26's padding-row sampler on the GPU
# machine, one call:
#   1. the CUDA tests they touch: test_cuda_w8a8 (the W8A8 kernels vs their CPU
#      twins), test_cuda_kernels (sampler over n_ids), test_cuda_backend (W8A8 logits
#      vs the CPU backend's, forward_sample past padding rows), test_cuda_matmul,
#      test_cuda_fused;
#   2. bench_cuda_decode on the random 7B shape: 2k prefill (TTFT) bf16, int8 w8a16,
#      int8 w8a8, the last two with their batch-1 decode rows;
#   3. bench_cublas_int8: cuBLASLt int8 and cuBLAS bf16 per 7B weight and m, next to
#      the whole W8A8 op (quantize + int8 product + epilogue);
#   4. dsinfer perplexity --backend cuda on the demo model: bf16, int8, int8 w8a8.
# Run from the repo root with G=<folder holding those binaries and devlibs/>
# (build with -DCMAKE_CUDA_ARCHITECTURES=90, strip, bundle the libraries with
# bundle-libs.sh); logs and a summary in $OUT.
G=${G:-.gpurun}
OUT=${OUT:-/tmp/gpu-int8}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/$G/devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
S=$OUT/int8_summary.txt
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader | tee "$S"
for t in test_cuda_w8a8 test_cuda_kernels test_cuda_backend test_cuda_matmul test_cuda_fused; do
  timeout 120 "$G/$t" > "$OUT/$t.log" 2>&1
  echo "$t rc=$? $(grep -E 'passed' "$OUT/$t.log" | tail -1)" | tee -a "$S"
done
grep -hE "w8a8 g0|FAIL" "$OUT/test_cuda_backend.log" | tee -a "$S"
B=$OUT/bench.log
for a in "--dtype bf16 --prefill" "--dtype int8 --quick --prefill" "--dtype int8 --int8-mode w8a8 --quick --prefill"; do
  echo "== bench_cuda_decode $a --steps 20" >> "$B"
  # shellcheck disable=SC2086 # $a is a list of flags
  timeout 120 "$G/bench_cuda_decode" $a --steps 20 >> "$B" 2>&1
done
grep -E "^1 |^prefill|^==|bench:" "$B" | tee -a "$S"
timeout 120 "$G/bench_cublas_int8" --iters 50 > "$OUT/gemm.txt" 2>&1
tee -a "$S" < "$OUT/gemm.txt"
for a in "--dtype bf16" "--dtype int8" "--dtype int8 --int8-mode w8a8"; do
  # shellcheck disable=SC2086 # $a is a list of flags
  timeout 60 "$G/dsinfer" perplexity --model models/demo --text tests/data/demo/heldout.txt --max-tokens 4096 \
    --backend cuda $a --json 2>> "$OUT/ppl.log" | tee -a "$S"
done
