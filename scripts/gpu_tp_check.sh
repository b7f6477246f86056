#!/bin/bash
# gpu_tp_check.sh: tensor parallel on CUDA (issue 12 item 4) on the GPU machine
# with two H200s (kind nvidia-h200-x2). Runs, in order:
#   1. nvidia-smi -L (which GPUs the ranks get);
#   2. tests/test_cuda_tp if present (TP=2 logits and greedy ids equal TP=1;
#      it starts its own mpirun and needs the repo root for tests/golden), and
#      tests/test_parallel_serve.sh with DSI_TP_BACKEND=cuda (the service on 2 GPUs);
#   3. bench_cuda_tp for 7b int8 and 67b int8, each with -np 1 (the TP=1
#      baseline: same binary, shard size 1) and -np 2, default cases (batch 1 at
#      ctx 128 and 2048, 64 streams at ctx 1024), --json;
# then prints a TP=1 vs TP=2 table built from the JSON lines.
#
# Run from the repo root with the binaries built elsewhere and unpacked in one
# folder (dsinfer, bench_cuda_tp, tests/test_cuda_tp, devlibs/ for the libraries
# the GPU machine lacks):
#   bash scripts/gpu_tp_check.sh .gpurun/g
# Env: OUT (default /tmp/gpu-tp), STEPS (20), BUDGET (seconds for the whole
# script, 570 so it ends inside one 10-minute device call), TEST_TIMEOUT (240),
# SHAPES ("7b 67b"), DTYPE (int8), MPIRUN_OPTS ("--bind-to none": the NCCL proxy
# thread must not share the one core Open MPI would bind a rank to).
# Writes $OUT/tp.log (everything), $OUT/tp.json (one line per bench case) and
# $OUT/summary.txt (the table, also printed last).
#
# Every run has a `timeout` no longer than what is left of BUDGET, so one hang
# cannot eat the call; a run that does not fit is reported as skipped.
# NVLink multicast (NVLS) can take the host's shared GPUs out of service: it
# stays off on every run (bench_cuda_tp also forces NCCL_NVLS_ENABLE=0 itself).
G=${1:?usage: bash scripts/gpu_tp_check.sh DIR (with dsinfer, bench_cuda_tp, tests/, devlibs/)}
G=$(cd "$G" && pwd) || exit 1
OUT=${OUT:-/tmp/gpu-tp}
STEPS=${STEPS:-20}
BUDGET=${BUDGET:-570}
TEST_TIMEOUT=${TEST_TIMEOUT:-240}
SHAPES=${SHAPES:-7b 67b}
DTYPE=${DTYPE:-int8}
MPIRUN_OPTS=${MPIRUN_OPTS:---bind-to none}
mkdir -p "$OUT"
L=$OUT/tp.log
J=$OUT/tp.json
S=$OUT/summary.txt
: > "$L"
: > "$J"
: > "$S"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export LD_LIBRARY_PATH=$G/devlibs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
t0=$(date +%s)
note() { echo "[$(($(date +%s) - t0)) s] $*" | tee -a "$S" >> "$L"; }

# timeout for the next run: its own limit, cut to what is left of BUDGET
# (10 s kept for the summary); prints 0 when less than 20 s would be left.
limit() {
    local left=$((BUDGET - ($(date +%s) - t0) - 10))
    if [ $left -lt 20 ]; then echo 0; elif [ $left -lt "$1" ]; then echo $left; else echo "$1"; fi
}

echo "==== nvidia-smi -L" >> "$L"
nvidia-smi -L >> "$L" 2>&1
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
note "GPUs: $ngpu; mpirun: $(mpirun --version 2>&1 | head -1)"

# 2. correctness first: a fast TP=2 that gives wrong tokens is not a result
T=$G/tests/test_cuda_tp
if [ -x "$T" ]; then
    t=$(limit "$TEST_TIMEOUT")
    if [ "$t" = 0 ]; then
        note "test_cuda_tp skipped: no time left"
    else
        echo "==== test_cuda_tp (timeout $t s)" >> "$L"
        DSI_BIN=$G/dsinfer timeout -k 10 "$t" "$T" >> "$L" 2>&1
        rc=$?
        note "test_cuda_tp rc=$rc$([ $rc = 77 ] && echo ' (skipped)')$([ $rc = 124 ] && echo ' (timed out)')"
        # keep the verdict lines in the summary too
        sed -n '/^==== test_cuda_tp/,$p' "$L" | grep -E "^(FAIL|SKIP)|passed" | head -20 >> "$S"
    fi
else
    note "no $T: correctness test not run"
fi

# 2b. the service: serve --backend cuda under mpirun -np 2 (HTTP chat equal to one
# GPU, only rank 0 listens, SIGTERM drains, a killed worker ends the job)
if [ -f tests/test_parallel_serve.sh ] && [ "$ngpu" -ge 2 ]; then
    t=$(limit 180)
    if [ "$t" != 0 ]; then
        echo "==== test_parallel_serve.sh, DSI_TP_BACKEND=cuda (timeout $t s)" >> "$L"
        DSI_TP_BACKEND=cuda DSI_BIN=$G/dsinfer timeout -k 10 "$t" bash tests/test_parallel_serve.sh >> "$L" 2>&1
        rc=$?
        note "test_parallel_serve (cuda) rc=$rc$([ $rc = 124 ] && echo ' (timed out)')"
        sed -n '/^==== test_parallel_serve/,$p' "$L" | grep -E "^(ok|FAIL)|failed$" >> "$S"
    fi
fi

# 3. speed: TP=1 and TP=2 of each shape, same binary, same mpirun options
B=$G/bench_cuda_tp
if [ ! -x "$B" ]; then
    note "no $B: build it (bench/cuda_tp.cmake) and bundle it first"
    cat "$S"
    exit 1
fi
fails=0
for shape in $SHAPES; do
    # the 67b shape creates ~68 GB of random int8 weights per process at TP=1
    case $shape in 67b) lim=150 ;; *) lim=90 ;; esac
    for np in 1 2; do
        label="$shape $DTYPE np=$np"
        if [ $np -gt "$ngpu" ]; then
            note "$label skipped: $ngpu GPU(s)"
            continue
        fi
        t=$(limit $lim)
        if [ "$t" = 0 ]; then
            note "$label skipped: no time left in BUDGET=$BUDGET s"
            continue
        fi
        echo "==== $label (timeout $t s)" >> "$L"
        # shellcheck disable=SC2086 # MPIRUN_OPTS is a list of words
        timeout -k 10 "$t" mpirun --allow-run-as-root $MPIRUN_OPTS -np $np -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH \
            "$B" --shape $shape --dtype $DTYPE --steps $STEPS --json > "$OUT/.run.out" 2>&1
        rc=$?
        grep -v '^{' "$OUT/.run.out" >> "$L"
        grep '^{' "$OUT/.run.out" >> "$J"
        rm -f "$OUT/.run.out"
        why=""
        case $rc in 0) ;; 77) why=" (skipped: no GPU or no NCCL)" ;; 124 | 137) why=" (timed out)" ;; *) why=" (FAILED)" ;; esac
        note "$label rc=$rc$why"
        [ $rc = 0 ] || [ $rc = 77 ] || fails=$((fails + 1))
    done
done

# TP=1 vs TP=2 per case from the JSON lines (python3 is on the GPU machine).
python3 - "$J" >> "$S" 2>&1 << 'EOF'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    rows[(r["shape"], r["dtype"], r["streams"], r["ctx"], r["tp"])] = r
keys = sorted({k[:4] for k in rows}, key=lambda k: (k[0] != "7b", k[1], k[2], k[3]))
print()
print("%-5s %-5s %7s %5s | %9s %9s %7s | %10s %10s | %8s %8s | %7s" % (
    "shape", "dtype", "streams", "ctx", "TP1 ms", "TP2 ms", "speedup", "TP1 tok/s", "TP2 tok/s",
    "TP1 roof", "TP2 roof", "ctl us"))
def f(r, key, fmt):
    return fmt % r[key] if r and key in r else "-"
for k in keys:
    a, b = rows.get(k + (1,)), rows.get(k + (2,))
    sp = "-"
    if a and b and "step_ms" in a and "step_ms" in b and b["step_ms"] > 0:
        sp = "%.2fx" % (a["step_ms"] / b["step_ms"])
    roof = lambda r: ("%.1f%%" % (100 * r["roofline_per_gpu"])) if r and "roofline_per_gpu" in r else "-"
    print("%-5s %-5s %7d %5d | %9s %9s %7s | %10s %10s | %8s %8s | %7s" % (
        k[0], k[1], k[2], k[3], f(a, "step_ms", "%.3f"), f(b, "step_ms", "%.3f"), sp,
        f(a, "tok_s", "%.1f"), f(b, "tok_s", "%.1f"), roof(a), roof(b), f(b, "ctl_us", "%.1f")))
print("(speedup = TP1 step / TP2 step; roofline = per-GPU bytes / step / 4.25 TB/s;"
      " ctl us = TP2 rank 0's control message time per step)")
EOF
note "done, $fails bench run(s) failed; log $L, JSON $J"
cat "$S"
[ $fails = 0 ]
