#!/bin/bash
# gpu_perf_check.sh: GPU-machine check of a CUDA-backend change: kernel, fused and
# backend tests (every INT8 path), then batch-1 decode of the 7B shape (random
# weights made on the GPU) and the full decode table (16/64/256 streams, 2k
# prefill) for each INT8 matmul policy given in POLICIES (DSI_CUDA_TILED values;
# "default" = the built-in policy), and bf16.
# Run from the repo root:  B=.gpurun LIBS=.gpurun/devlibs bash scripts/gpu_perf_check.sh
# Writes tests.log and summary.log into $OUT (default /tmp/gpu-perf).
B=${B:-build-gpu}
LIBS=${LIBS:-$B/devlibs}
OUT=${OUT:-/tmp/gpu-perf}
POLICIES=${POLICIES:-default}
# shellcheck source=scripts/gpu_env.sh
. "$(dirname "$0")/gpu_env.sh"
T=$B/tests
[ -x "$T/test_cuda_kernels" ] || T=$B

for t in $CUDA_TESTS; do
    [ -x "$T/$t" ] || continue
    echo "==== $t" >> "$OUT/tests.log"
    timeout 90 $T/$t > /tmp/$t.log 2>&1; step "$t rc=$?"
    cat /tmp/$t.log >> "$OUT/tests.log"
    grep -E "^(FAIL|SKIP)|passed" /tmp/$t.log >> "$S"
done
for p in $POLICIES; do
    [ "$p" = default ] && continue
    DSI_CUDA_TILED=$p timeout 60 $T/test_cuda_backend > /tmp/tb.log 2>&1
    step "test_cuda_backend (DSI_CUDA_TILED=$p) rc=$?"
    grep -E "^(FAIL|SKIP)|passed" /tmp/tb.log >> "$S"
done

full() { # label, dtype, env...
    local label=$1 dt=$2
    shift 2
    echo "== $label ($dt $*)" >> "$S"
    env "$@" timeout 60 stdbuf -oL $B/bench_cuda_decode --dtype $dt --steps 10 2>&1 | grep -v INFO |
        grep -E "^(1|16|64|256) |prefill" >> "$S"
}
for p in $POLICIES; do
    if [ "$p" = default ]; then full default int8; else full "tiled $p" int8 DSI_CUDA_TILED=$p; fi
done
full bf16 bf16
step "decode tables done"
if [ -x "$B/bench_cuda_gemv" ]; then
    timeout 90 stdbuf -oL $B/bench_cuda_gemv --quick > "$OUT/gemv.log" 2>&1
    step "bench_cuda_gemv rc=$?"
fi
cat "$S"
