#!/bin/bash
# gpu_nccl_check.sh: NCCL all-reduce latency per tensor-parallel decode step on the
# GPU machine with two H200s (kind nvidia-h200-x2; issue 12 item 4). Runs
# bench_nccl_allreduce with NCCL's default choices, then with the low-latency
# protocol (NCCL_PROTO=LL) and with the ring algorithm (NCCL_ALGO=Ring) for
# comparison, then once more with --json and NCCL's INIT log (transport chosen).
# Run from the repo root with the binary and its bundled libraries in $G:
#   G=.gpurun bash scripts/gpu_nccl_check.sh
# Writes $OUT/nccl.log, $OUT/nccl.json and $OUT/nccl-debug.*.log.
# NVLink multicast (NVLS) can take the host's shared GPUs out of service: it stays
# off on every run (the binary also forces NCCL_NVLS_ENABLE=0 itself).
G=${G:-.gpurun}
OUT=${OUT:-/tmp/gpu-nccl}
ITERS=${ITERS:-100}
mkdir -p "$OUT"
L=$OUT/nccl.log
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export LD_LIBRARY_PATH=$PWD/$G/devlibs:/usr/local/cuda/lib64
B=$G/bench_nccl_allreduce
if [ ! -x "$B" ]; then
    echo "no $B: build it and bundle it first (see bench/nccl.cmake)" | tee -a "$L"
    exit 1
fi
nvidia-smi topo -m >> "$L" 2>&1

run() { # label, extra mpirun -x args / program args...
    local label=$1
    shift
    echo "==== $label" >> "$L"
    timeout 300 mpirun --allow-run-as-root -np 2 -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH "$@" >> "$L" 2>&1
    local rc=$?
    echo "==== $label rc=$rc" >> "$L"
    [ $rc = 0 ] || fails=$((fails + 1))
}
fails=0
run "default" $B --iters $ITERS
run "NCCL_PROTO=LL" -x NCCL_PROTO=LL $B --iters $ITERS
run "NCCL_ALGO=Ring" -x NCCL_ALGO=Ring $B --iters $ITERS
echo "==== default --json (NCCL INIT log in nccl-debug.*.log)" >> "$L"
timeout 300 mpirun --allow-run-as-root -np 2 -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH -x NCCL_DEBUG=INFO \
    -x NCCL_DEBUG_SUBSYS=INIT,ENV -x NCCL_DEBUG_FILE="$OUT/nccl-debug.%h.%p.log" \
    $B --iters $ITERS --json > "$OUT/nccl.json" 2>> "$L"
rc=$?
echo "==== default --json rc=$rc" >> "$L"
[ $rc = 0 ] || fails=$((fails + 1))
cat "$L"
[ $fails = 0 ]
