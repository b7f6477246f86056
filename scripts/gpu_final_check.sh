#!/bin/bash
# gpu_final_check.sh: the final GPU-machine check of the INT8 decode GEMV
# (DSI_CUDA_GEMV=new, the default) against the tensor-core path (old): kernel
# and backend tests, kernel bandwidth (old vs new per 7B matrix) and end-to-end
# decode on the 7B-shape model from gen_7b_shape.py. Run from the repo root:
#   B=build-gpu2 LIBS=build-gpu-run/devlibs scripts/gpu_final_check.sh
# Writes 6 logs into $OUT (default /tmp/gpu-final). Every step has a timeout;
# the sum of the timeouts is 234 s (the model is made meanwhile) (typical: well under that).
B=${B:-build-gpu2}
LIBS=${LIBS:-$B/devlibs}
OUT=${OUT:-/tmp/gpu-final}
# shellcheck source=scripts/gpu_env.sh
. "$(dirname "$0")/gpu_env.sh"
# test binaries land in $B/tests (dsi_test) or $B (a copied run folder)
T=$B/tests
[ -x "$T/test_cuda_kernels" ] || T=$B

# the model is made in the background while the tests run (GPU, ~23 s)
( [ -f /tmp/dsi-7b/config.json ] || timeout 90 python3 scripts/gen_7b_shape.py /tmp/dsi-7b ) > /tmp/gen7b.log 2>&1 &
GEN=$!

timeout 50 $T/test_cuda_kernels > "$OUT/tests.log" 2>&1; step "test_cuda_kernels rc=$?"
timeout 50 $T/test_cuda_matmul >> "$OUT/tests.log" 2>&1; step "test_cuda_matmul rc=$?" # the GEMV tests
DSI_CUDA_GEMV=new timeout 35 $T/test_cuda_backend >> "$OUT/tests.log" 2>&1; step "test_cuda_backend (new) rc=$?"
echo "==== DSI_CUDA_GEMV=old ====" >> "$OUT/tests.log"
DSI_CUDA_GEMV=old timeout 25 $T/test_cuda_backend >> "$OUT/tests.log" 2>&1; step "test_cuda_backend (old) rc=$?"
grep -E "^(FAIL|SKIP)|passed|gemv" "$OUT/tests.log" >> "$S"

timeout 40 stdbuf -oL $B/bench_cuda_gemv --quick > "$OUT/gemv.log" 2>&1; step "bench_cuda_gemv rc=$?"
grep -E "^(int8v1|gemv-new)" "$OUT/gemv.log" | grep -E "m=  1|m=  8" >> "$S"

wait $GEN; GRC=$?; step "gen_7b_shape rc=$GRC ($(tail -1 /tmp/gen7b.log))"
M=""  # random weights of the same shape made by the bench if the model is not complete
[ $GRC = 0 ] && [ -f /tmp/dsi-7b/config.json ] && M="--model /tmp/dsi-7b"
# full runs: batch 1 at ctx 128/2048, 16/64/256 streams at ctx 1024, 2k prefill
DSI_CUDA_GEMV=new timeout 28 stdbuf -oL $B/bench_cuda_decode --dtype int8 --steps 10 $M 2>&1 | grep -v INFO > "$OUT/decode_int8_new.log"
step "decode int8 new"
DSI_CUDA_GEMV=old timeout 28 stdbuf -oL $B/bench_cuda_decode --dtype int8 --steps 10 $M 2>&1 | grep -v INFO > "$OUT/decode_int8_old.log"
step "decode int8 old"
timeout 28 stdbuf -oL $B/bench_cuda_decode --dtype bf16 --steps 10 $M 2>&1 | grep -v INFO > "$OUT/decode_bf16.log"
step "decode bf16"
for f in decode_int8_new decode_int8_old decode_bf16; do
    echo "== $f" >> "$S"
    grep -E "^(1|16|64) " "$OUT/$f.log" >> "$S"
done
cat "$S"
