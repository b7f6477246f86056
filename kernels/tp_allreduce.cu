/*
 * tp_allreduce.cu: the tensor-parallel all-reduce of a decode step, fused with
 * the residual add and RMSNorm that follow it, over NVLink without NCCL.
 *
 * Why: at batch 1 a TP step all-reduces 2 x layers vectors of `hidden` floats
 * (190 of 32 KB for the 67B shape). NCCL takes ~6.9 us for each inside a CUDA
 * graph (1.3 ms of a 15.4 ms TP=2 step on two H200s), and the add + RMSNorm
 * node after it another ~3.7 us. Here one kernel does both in one pass.
 *
 * One-shot, push: every rank owns an exchange region that every other rank
 * has mapped (CUDA IPC, set up in src/backend/cuda/cuda_nccl.c). Rows are cut
 * into chunks of 256 values, one block each, so a row is spread over many SMs
 * (a block per row was measured slower than NCCL: one SM's loads and NVLink
 * stores in series). Block (c, t) of rank r
 *   1. writes its chunk of partial sums into slot [parity][r] of every rank's
 *      region (NVLink stores), fences them system-wide, then sets flag
 *      [parity][t][c][r] = epoch in every region (st.release.sys);
 *   2. waits until its own region has flag [parity][t][c][q] == epoch for
 *      every rank q (ld.acquire.sys);
 *   3. sums the slots in rank order 0..N-1 (the same bits on every rank) and
 *      adds the sum to the residual x;
 *   4. leaves its chunk's sum of squares in local scratch, and once every
 *      block of the row has arrived (a counter per parity; the few dozen
 *      blocks are all resident) adds the parts in chunk order, so every block
 *      and every rank get the same norm, and writes bf16(x * rsqrt(mean +
 *      eps) * w).
 * The epoch counts the calls (a device counter advanced by the kernel's last
 * block, so a CUDA graph can replay it; it wraps modulo 2^32 and only its
 * equality and its parity matter). Every row of a call uses the call's parity,
 * and a rank can only reuse a parity after every peer has flagged a chunk of
 * the call in between, i.e. has started it, so its kernel of the call before
 * (the last reader of that parity) has ended: calls may change rows and dim.
 */
#include <cuda_bf16.h>

#include "bf16_util.cuh"
#include "kernels.h"

#define AR_THREADS 128
#define AR_CHUNK 256 /* elements of a row per block: rows are split over many SMs */
#define AR_MAX_CHUNKS 64
#define AR_FLAG_BYTES ((size_t)2 * DSI_CUDA_AR_MAX_ROWS * AR_MAX_CHUNKS * DSI_CUDA_AR_MAX_RANKS * 4)

/* Exchange region (mapped by every rank): flags [parity][row][chunk][src],
 * then data [parity][src][DSI_CUDA_AR_MAX_ELEMS]. */
static __device__ __forceinline__ uint32_t *ar_flag(void *region, int parity, int row, int chunk, int src) {
    return reinterpret_cast<uint32_t *>(region) +
           (((size_t)parity * DSI_CUDA_AR_MAX_ROWS + row) * AR_MAX_CHUNKS + chunk) * DSI_CUDA_AR_MAX_RANKS +
           src;
}
static __device__ __forceinline__ float *ar_data(void *region, int parity, int src) {
    return reinterpret_cast<float *>(reinterpret_cast<char *>(region) + AR_FLAG_BYTES) +
           ((size_t)parity * DSI_CUDA_AR_MAX_RANKS + src) * DSI_CUDA_AR_MAX_ELEMS;
}

/* This rank's own scratch (never mapped by others): per row the call count
 * (epoch) and the blocks' arrival count, then per parity, row and chunk the
 * block's sum of squares. */
struct ar_local {
    uint32_t epoch;                            /* calls so far */
    uint32_t done[2];                          /* blocks of the call that finished, by parity */
    uint32_t arrived[2][DSI_CUDA_AR_MAX_ROWS]; /* blocks of a row with their part written */
    float part[2][DSI_CUDA_AR_MAX_ROWS][AR_MAX_CHUNKS];
};

static __device__ __forceinline__ uint32_t ld_acquire_sys(const uint32_t *p) {
    uint32_t v;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
static __device__ __forceinline__ uint32_t ld_acquire_gpu(const uint32_t *p) {
    uint32_t v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
static __device__ __forceinline__ void st_release_sys(uint32_t *p, uint32_t v) {
    asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

/* Grid (chunks, rows): block (c, t) owns elements [c * AR_CHUNK, ...) of row t. */
static __global__ void __launch_bounds__(AR_THREADS)
    ar_add_rmsnorm_kernel(struct dsi_cuda_ar ar, float *x, const float *delta, const float *w, uint16_t *out,
                          int dim, float eps) {
    __shared__ float red[32];
    __shared__ float total_s;
    const int c = blockIdx.x, t = blockIdx.y, n_chunks = gridDim.x, n = ar.size, me = ar.rank;
    struct ar_local *loc = reinterpret_cast<struct ar_local *>(ar.local);
    /* every block reads the same count: the last block to finish advances it */
    const uint32_t e = loc->epoch + 1;
    const int p = (int)(e & 1);
    const size_t row = (size_t)t * dim;
    const int i0 = c * AR_CHUNK, i1 = min(dim, i0 + AR_CHUNK);
    /* 1. push this rank's partial sums of the chunk into slot [p][me] of every region */
    for (int q = 0; q < n; q++) {
        float *dst = ar_data(ar.peer[q], p, me) + row;
        for (int i = i0 + threadIdx.x; i < i1; i += blockDim.x)
            dst[i] = delta[row + i];
    }
    __threadfence_system();
    __syncthreads();
    if (threadIdx.x < n) st_release_sys(ar_flag(ar.peer[threadIdx.x], p, t, c, me), e);
    /* 2. wait for every rank's chunk in this region */
    if (threadIdx.x < n)
        while (ld_acquire_sys(ar_flag(ar.peer[me], p, t, c, threadIdx.x)) != e) {
        }
    __syncthreads();
    /* 3. sum in rank order (the same bits on every rank), residual add */
    float ss = 0.f;
    for (int i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        float s = 0.f;
        for (int q = 0; q < n; q++)
            s += __ldcg(ar_data(ar.peer[me], p, q) + row + i); /* written over NVLink: not from L1 */
        float v = x[row + i] + s;
        x[row + i] = v;
        ss += v * v;
    }
    ss = block_sum(ss, red);
    /* 4. the row's sum of squares: every block's part, added in chunk order
     * once all blocks of the row arrived (all are resident: a few dozen) */
    if (threadIdx.x == 0) {
        loc->part[p][t][c] = ss;
        __threadfence();
        atomicAdd(&loc->arrived[p][t], 1u);
        while (ld_acquire_gpu(&loc->arrived[p][t]) < (uint32_t)n_chunks) {
        }
        float tot = 0.f;
        for (int k = 0; k < n_chunks; k++)
            tot += __ldcg(&loc->part[p][t][k]);
        total_s = tot;
    }
    __syncthreads();
    const float r = rsqrtf(total_s / (float)dim + eps);
    for (int i = i0 + threadIdx.x; i < i1; i += blockDim.x)
        out[row + i] = f2bf(x[row + i] * r * w[i]);
    /* 5. the last block of the call (every other one has read the count, which
     * precedes its finishing) advances the count and clears the other parity's
     * arrivals for the next call (the previous call, their last user, ended
     * before this kernel began) */
    if (threadIdx.x == 0) {
        const uint32_t total = gridDim.x * gridDim.y;
        if (atomicAdd(&loc->done[p], 1u) == total - 1) {
            for (int r = 0; r < DSI_CUDA_AR_MAX_ROWS; r++)
                loc->arrived[p ^ 1][r] = 0;
            loc->done[p] = 0;
            loc->epoch = e;
        }
    }
}

extern "C" size_t dsi_cuda_ar_region_bytes(void) {
    return AR_FLAG_BYTES + (size_t)2 * DSI_CUDA_AR_MAX_RANKS * DSI_CUDA_AR_MAX_ELEMS * sizeof(float);
}

extern "C" size_t dsi_cuda_ar_local_bytes(void) {
    return sizeof(struct ar_local);
}

extern "C" int dsi_cuda_ar_fits(int rows, int dim) {
    return rows >= 1 && rows <= DSI_CUDA_AR_MAX_ROWS && dim > 0 && dim <= AR_MAX_CHUNKS * AR_CHUNK &&
           (long long)rows * dim <= DSI_CUDA_AR_MAX_ELEMS;
}

extern "C" int dsi_cuda_ar_add_rmsnorm(const struct dsi_cuda_ar *ar, float *x, const float *delta,
                                       const float *w, uint16_t *out, int rows, int dim, float eps,
                                       cudaStream_t s) {
    if (!ar || !x || !delta || !w || !out || !ar->local || ar->size < 1 || ar->size > DSI_CUDA_AR_MAX_RANKS ||
        ar->rank < 0 || ar->rank >= ar->size || !dsi_cuda_ar_fits(rows, dim) || !(eps >= 0.f))
        return DSI_EINVAL;
    for (int q = 0; q < ar->size; q++)
        if (!ar->peer[q]) return DSI_EINVAL;
    dim3 grid((dim + AR_CHUNK - 1) / AR_CHUNK, rows);
    ar_add_rmsnorm_kernel<<<grid, AR_THREADS, 0, s>>>(*ar, x, delta, w, out, dim, eps);
    return DSI_CUDA_CHECK(cudaGetLastError());
}
