/*
 * test_cuda_util.h: what the CUDA tests share: a GPU check that turns into
 * SKIP (exit 77) where none exists, device allocation and copies, bf16
 * reading, and a small seeded RNG (each test file seeds its own stream of
 * inputs).
 */
#ifndef DSI_TEST_CUDA_UTIL_H
#define DSI_TEST_CUDA_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "../src/backend/cpu/cpu_ops.h"
#include "test.h"

#ifndef TEST_CUDA_SEED
#define TEST_CUDA_SEED 0x9E3779B97F4A7C15ull
#endif

static uint64_t rng_state = TEST_CUDA_SEED;
static inline float frand(void) { /* [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)(rng_state >> 40) / 8388608.f - 1.f;
}

static inline int have_gpu(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n > 0;
}

#define NEED_GPU()                                                                                           \
    do {                                                                                                     \
        if (!have_gpu()) SKIP("no CUDA device");                                                             \
    } while (0)

/* cudaMalloc, zero-filled; NULL on failure. */
static inline void *dmalloc(size_t n) {
    void *p = NULL;
    if (cudaMalloc(&p, n) != cudaSuccess) return NULL;
    cudaMemset(p, 0, n);
    return p;
}

static inline void up(void *d, const void *h, size_t n) {
    cudaMemcpy(d, h, n, cudaMemcpyHostToDevice);
}
static inline void down(void *h, const void *d, size_t n) {
    cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost);
}
static inline float bf(uint16_t v) {
    return dsi_bf16_to_f32(v);
}

#endif
