#!/usr/bin/env bash
# The whole test suite, as CI runs it (README's second command):
#   1. Release build (CUDA kernels compiled when nvcc exists) + ctest
#   2. ASan + UBSan build (CPU only) + ctest
#   3. libFuzzer targets, each for DSI_FUZZ_SECONDS (default 20)
# CUDA tests are reported as skipped on machines without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
jobs=$(nproc)
fuzz_s=${DSI_FUZZ_SECONDS:-20}

echo "== release build + tests"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DDSI_WERROR=ON >/dev/null
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"

echo "== ASan + UBSan build + tests"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DDSI_SANITIZE=ON -DDSI_CUDA=OFF -DDSI_WERROR=ON >/dev/null
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j"$jobs" -LE slow

echo "== fuzz smoke (${fuzz_s}s per target)"
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DDSI_FUZZ=ON -DDSI_SANITIZE=ON -DDSI_CUDA=OFF -DDSI_WERROR=ON >/dev/null
cmake --build build-fuzz -j"$jobs"
for f in build-fuzz/fuzz_*; do
  [[ -x $f ]] || continue
  name=$(basename "$f")
  corpus=tests/fuzz/corpus/${name#fuzz_}
  mkdir -p "build-fuzz/corpus-$name"
  args=("build-fuzz/corpus-$name")
  [[ -d $corpus ]] && args+=("$corpus")
  echo "-- $name"
  "$f" -max_total_time="$fuzz_s" -rss_limit_mb=4096 -print_final_stats=0 "${args[@]}" 2>&1 | tail -n 2
done
echo "all test stages passed"
