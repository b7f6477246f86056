# shellcheck shell=bash
# gpu_env.sh: what the gpu_*_check.sh scripts share; sourced, not run.
# In: LIBS (the folder of libraries the GPU machine lacks, made by the device's
# bundle-libs.sh), OUT (the output folder), SUMMARY (the step log's name in OUT,
# default summary.log). Out: LD_LIBRARY_PATH for binaries built on the dev
# machine, S (the step log), step (one timestamped line into it), CUDA_TESTS
# (the ctest binaries with label cuda that run on one GPU).
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/$LIBS:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
S=$OUT/${SUMMARY:-summary.log}
t0=$(date +%s)
step() { echo "[$(($(date +%s) - t0)) s] $*" >> "$S"; }
# shellcheck disable=SC2034 # used by the scripts that source this file
CUDA_TESTS="test_cuda_kernels test_cuda_matmul test_cuda_fused test_cuda_backend"
