#!/bin/bash
# gpu_engine_check.sh: on the GPU machine, after the GPU-sampling change: the CUDA
# tests, the engine path with device sampling on the 7B shape (dsinfer bench), decode
# with the one-row GEMV threshold, and SHA256SUMS manifest + verify of the 15 GB bf16
# 7B-shape directory. Run from the repo root with G=<dsinfer, tests, devlibs/>.
G=${G:-.gpurun}
OUT=${OUT:-/tmp/gpu-engine}
LIBS=$G/devlibs SUMMARY=engine_summary.log
# shellcheck source=scripts/gpu_env.sh
. "$(dirname "$0")/gpu_env.sh"
( [ -f /tmp/dsi-7b/config.json ] || timeout 90 python3 scripts/gen_7b_shape.py /tmp/dsi-7b ) > "$OUT/gen.log" 2>&1 &
GEN=$!
: > "$OUT/tests.log"
for t in $CUDA_TESTS; do
  [ -x "$G/$t" ] || continue
  timeout 60 $G/$t >> "$OUT/tests.log" 2>&1; step "$t rc=$?"
done
grep -E "^FAIL|passed" "$OUT/tests.log" >> "$S"
wait $GEN; step "gen_7b rc=$?"
timeout 60 $G/bench_cuda_decode --dtype int8 --steps 10 --model /tmp/dsi-7b 2>&1 | grep -v INFO > "$OUT/decode_int8.log"
grep -E "^(1|16|64|256) |prefill" "$OUT/decode_int8.log" >> "$S"; step "decode int8"
for d in int8 bf16; do
  timeout 90 $G/dsinfer bench --model /tmp/dsi-7b --no-verify --backend cuda --dtype $d \
    --batch 1,16,64 --context 128,2048 --steps 10 > "$OUT/bench_$d.log" 2>&1
  step "dsinfer bench $d rc=$?"
done
cat "$OUT/bench_int8.log" "$OUT/bench_bf16.log" | grep -v "INFO\|WARN" >> "$S"
du -sh /tmp/dsi-7b >> "$S"
/usr/bin/time -f "manifest %e s" $G/dsinfer manifest /tmp/dsi-7b >> "$S" 2>&1
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
/usr/bin/time -f "verify (cold cache if drop_caches worked) %e s" $G/dsinfer verify /tmp/dsi-7b >> "$S" 2>&1
/usr/bin/time -f "verify (page cache) %e s" $G/dsinfer verify /tmp/dsi-7b >> "$S" 2>&1
timeout 180 /usr/bin/time -f "single-pass verify+upload+bench %e s" $G/dsinfer bench --model /tmp/dsi-7b --backend cuda --dtype int8 --batch 1 --context 128 --steps 2 2>&1 | grep -E "single|two passes|verif|GB/s" >> "$S"
nproc >> "$S"
cat "$S"
