/*
 * gemm_int8_tiled.cu: INT8 weight-only GEMM for batched decode (17..256+ rows of
 * x): y (m, n) fp32 = x (m, k) bf16 @ W^T * scale[n] + bias[n], W in the tiled
 * layout of gemv_int8.cu (16x32 tiles of 512 bytes; lane l's 16 bytes are its
 * mma.m16n8k16 A fragments for the two k16 steps of the tile).
 *
 * Why a second kernel: gemv_int8.cu gives each block one 16-row tile and re-reads
 * x from L1/L2 in every block, so at m = 64 the x loads, not the weights, are the
 * limit (7% of bandwidth); above 16 rows the backend fell back to dequantize +
 * cuBLAS (5 bytes moved per weight). At m = 64 the 7B step is ~0.9 TFLOP on
 * 7.07 GB: with mma.sync (~400 TFLOP/s) compute and bandwidth cross near
 * m = 47, so the kernel must keep the tensor cores busy as well as stream W.
 *
 * Design
 * - Block: 4 warps, BN = 128 weight rows (each warp owns 2 row tiles = 32 rows,
 *   so every B fragment from shared memory feeds 2 mma), BM rows of x (16, 32
 *   or 64 by m: no tensor-core work wasted on padding rows at m = 17..32).
 *   Grid (m chunks, n blocks, k splits): the m chunks of one n block are
 *   neighbours in launch order, so for m > 64 their weight reads meet in L2
 *   and DRAM sees W about once.
 * - K loop in chunks of KC = 128 columns (4 k-tiles; 64 at BM = 64, where the
 *   64 accumulators leave no room for 2 x 32 weight registers: 168 registers
 *   spilled, 149 without). Weights go straight to registers, one 16-byte
 *   ld.global.nc.L1::no_allocate per lane per tile (the layout is the fragment
 *   layout: no shuffles), prefetched one chunk ahead (8-16 KB per block in
 *   flight; 3 blocks of 4 warps per SM, __launch_bounds__). x chunks (BM x KC
 *   bf16) go to shared memory with cp.async (zero-filled past m and k), 3
 *   stages, so one __syncthreads per chunk (13-28 KB: no opt-in attribute);
 *   rows padded by 16 bytes (stride 144 or 272 bytes) so that every ldmatrix.x4
 *   phase (8 rows x 16 bytes) hits 32 distinct banks. x columns past k and
 *   weight tiles past k32 read as zero; when k % 8 != 0 or x is not 16-byte
 *   aligned, x is staged with plain bounded loads instead (correct, slower).
 * - int8 -> bf16 exactly (the magic-number trick of gemv_int8.cu), mma.sync
 *   m16n8k16 bf16 with fp32 accumulators: 2 x BM/8 fragments per warp.
 * - Split-K only where the grid is small (o, qkv, down: 28-36 n blocks for 132
 *   SMs): splits of whole chunks (>= 2 each), at most DSI_Q8_TILED_MAX_SPLIT and
 *   what the struct dsi_cuda_gemm_ws partials hold; each block stores its
 *   partial tile, the last block of an (m chunk, n block) (per-block counter)
 *   sums all partials in split order (deterministic, no atomics on data) and
 *   resets its counter to zero. Large matrices (gate/up, lm_head) fill the GPU
 *   without it and skip the extra traffic.
 * - Epilogue: scale and bias per weight row, fp32 stores in which each group
 *   of 8 lanes writes 32 contiguous bytes (whole sectors).
 * - Variants (dsi_cuda_gemm_int8_tiled_variant, for the benchmark to decide on
 *   the H200): bit 0 no split-K; bit 1 at most 32 x rows per block (KC 128
 *   prefetch depth, W re-read through L2 per 32 rows); bit 2 weights staged in
 *   shared memory with cp.async like x (4 stages of 64 columns: 24 KB of
 *   weights in flight per block instead of 8-16, 72-148 registers, up to
 *   69.6 KB of shared memory per block, opted in per launch).
 */
#include <cuda_bf16.h>

#include "kernels.h"
#include "int8_tile.cuh"

#define T_WARPS 4
#define T_THREADS (T_WARPS * 32)
#define T_RPW 2                     /* row tiles per warp */
#define T_BN (T_WARPS * T_RPW * 16) /* weight rows per block: 128 */
#define T_STAGES 3

static __device__ __forceinline__ void t_ldmatrix_x4(uint32_t *r, const uint16_t *p) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

static __device__ __forceinline__ void t_cp_async16(uint16_t *dst, const uint16_t *src, int bytes) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(src), "r"(bytes));
}

static __device__ __forceinline__ void t_cp_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}

template <int N> static __device__ __forceinline__ void t_cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Weight tiles of chunk c (T_KT per row tile) into registers; zeros past k32
 * and past the last row tile. */
template <int T_KT>
static __device__ __forceinline__ void t_load_w(uint4 (&w)[T_RPW][T_KT], const uint4 *const (&wp)[T_RPW],
                                                const bool (&wv)[T_RPW], int c, int k32) {
#pragma unroll
    for (int r = 0; r < T_RPW; r++)
#pragma unroll
        for (int j = 0; j < T_KT; j++) {
            int kt = c * T_KT + j;
            w[r][j] =
                wv[r] && kt < k32 ? q8_ld_weights(wp[r] + (size_t)kt * Q8_TILE_U4) : make_uint4(0, 0, 0, 0);
        }
}

/* x rows m0..m0+BM-1, columns c*KC.. of one chunk into a shared stage; zeros
 * outside (m, k). fast: k % 8 == 0 and x 16-byte aligned (cp.async). */
template <int BM, int T_KT>
static __device__ __forceinline__ void t_load_x(uint16_t *dst, const uint16_t *x, int M, int K, int m0, int c,
                                                bool fast) {
    constexpr int T_KC = T_KT * 32, T_XS = T_KC + 8;
    constexpr int PIECES = BM * (T_KC / 8);
#pragma unroll
    for (int i = 0; i < PIECES / T_THREADS; i++) {
        int p = i * T_THREADS + threadIdx.x, r = p / (T_KC / 8), cp = p % (T_KC / 8);
        int row = m0 + r, col = c * T_KC + cp * 8;
        uint16_t *d = dst + r * T_XS + cp * 8;
        if (fast) {
            bool ok = row < M && col < K;
            t_cp_async16(d, ok ? x + (size_t)row * K + col : x, ok ? 16 : 0);
        } else {
            uint32_t v[4] = {0, 0, 0, 0};
            if (row < M) {
                const uint16_t *s = x + (size_t)row * K;
#pragma unroll
                for (int e = 0; e < 8; e++)
                    if (col + e < K) v[e >> 1] |= (uint32_t)s[col + e] << ((e & 1) * 16);
            }
            *reinterpret_cast<uint4 *>(d) = make_uint4(v[0], v[1], v[2], v[3]);
        }
    }
}

/* Weight tiles of chunk c of the block's 8 row tiles into a shared stage
 * (variant 4), in the global tile order: warp w's row tile r, k-tile j at tile
 * (2w + r) * KT + j, lane l's 16 bytes at l * 16 (conflict-free lds.128). */
template <int T_KT>
static __device__ __forceinline__ void t_load_wsm(uint16_t *dst, const int8_t *q, int n16, int k32,
                                                  int rt_blk, int c) {
    constexpr int PIECES = (T_BN / 16) * T_KT * Q8_TILE_U4;
#pragma unroll
    for (int i = 0; i < PIECES / T_THREADS; i++) {
        int p = i * T_THREADS + threadIdx.x, ti = p / Q8_TILE_U4, u = p % Q8_TILE_U4;
        int rt = rt_blk + ti / T_KT, kt = c * T_KT + ti % T_KT;
        bool ok = rt < n16 && kt < k32;
        const int8_t *src = ok ? q + ((size_t)rt * k32 + kt) * 512 + u * 16 : q;
        t_cp_async16(dst + ti * 256 + u * 8, reinterpret_cast<const uint16_t *>(src), ok ? 16 : 0);
    }
}

template <int BM, int T_KT, bool WSM>
static __global__ void __launch_bounds__(T_THREADS, 3)
    gemm_int8_tiled_kernel(float *y, const uint16_t *x, const int8_t *q, const float *scale,
                           const float *bias, int M, int N, int K, int k32, int nkc, int per_split,
                           int ksplit, int xfast, float *ws, unsigned *counters) {
    constexpr int NT = BM / 8;          /* n8 tiles (8 rows of x) per warp */
    constexpr int T_XS = T_KT * 32 + 8; /* smem row stride in bf16 */
    constexpr int S = WSM ? 4 : T_STAGES;
    /* stage: [weights (WSM): 8 x KT tiles of 256 bf16][x: BM rows of T_XS] */
    constexpr int WST = WSM ? (T_BN / 16) * T_KT * 256 : 0, STAGE = WST + BM * T_XS;
    extern __shared__ __align__(16) uint16_t xs[];
    __shared__ int is_last;
    const int mc = blockIdx.x, bn = blockIdx.y, ks = blockIdx.z, nbn = gridDim.y;
    const int m0 = mc * BM;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int n16 = (N + 15) >> 4, rt0 = bn * (T_BN / 16) + warp * T_RPW;
    const int c_beg = ks * per_split, c_end = min(nkc, c_beg + per_split);
    const bool fast = xfast != 0;

    const uint4 *wp[T_RPW];
    bool wv[T_RPW];
#pragma unroll
    for (int r = 0; r < T_RPW; r++) {
        wv[r] = rt0 + r < n16;
        wp[r] = reinterpret_cast<const uint4 *>(q) + (size_t)(wv[r] ? rt0 + r : 0) * k32 * Q8_TILE_U4 + lane;
    }
    float acc[T_RPW][NT][4];
#pragma unroll
    for (int r = 0; r < T_RPW; r++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                acc[r][j][e] = 0.f;

    /* ldmatrix.x4 source of this lane: matrix i = lane / 8 holds x rows
     * (i / 2) * 8 + lane % 8 of an n8 pair, columns (i % 2) * 8 of a k16 step */
    const int lm_off = (((lane >> 4) & 1) * 8 + (lane & 7)) * T_XS + ((lane >> 3) & 1) * 8;
    const int rt_blk = bn * (T_BN / 16);

    /* prologue: chunks c_beg .. c_beg + S - 2, one commit group each */
#pragma unroll
    for (int i = 0; i < S - 1; i++) {
        if (c_beg + i < c_end) {
            if (WSM) t_load_wsm<T_KT>(xs + i * STAGE, q, n16, k32, rt_blk, c_beg + i);
            t_load_x<BM, T_KT>(xs + i * STAGE + WST, x, M, K, m0, c_beg + i, fast);
        }
        t_cp_commit();
    }
    uint4 wc[T_RPW][T_KT], wn[T_RPW][T_KT];
#pragma unroll
    for (int r = 0; r < T_RPW; r++)
#pragma unroll
        for (int j = 0; j < T_KT; j++)
            wc[r][j] = wn[r][j] = make_uint4(0, 0, 0, 0);
    if (!WSM) t_load_w(wc, wp, wv, c_beg, k32);
    int st = 0; /* stage of chunk c */
    for (int c = c_beg; c < c_end; c++) {
        if (!WSM && c + 1 < c_end) t_load_w(wn, wp, wv, c + 1, k32);
        t_cp_wait<S - 2>(); /* chunk c's group (all but the S - 2 newest) has landed */
        __syncthreads();    /* ... for every thread; and stage (c - 1) % S is free */
        int stn = st == 0 ? S - 1 : st - 1;
        if (c + S - 1 < c_end) {
            if (WSM) t_load_wsm<T_KT>(xs + stn * STAGE, q, n16, k32, rt_blk, c + S - 1);
            t_load_x<BM, T_KT>(xs + stn * STAGE + WST, x, M, K, m0, c + S - 1, fast);
        }
        t_cp_commit(); /* possibly empty: keeps one group per chunk */
        const uint16_t *xb = xs + st * STAGE + WST + lm_off;
        if (WSM) {
            const uint16_t *wsb = xs + st * STAGE + (warp * T_RPW) * T_KT * 256 + lane * 8;
#pragma unroll
            for (int r = 0; r < T_RPW; r++)
#pragma unroll
                for (int j = 0; j < T_KT; j++)
                    wc[r][j] = *reinterpret_cast<const uint4 *>(wsb + (r * T_KT + j) * 256);
        }
#pragma unroll
        for (int j = 0; j < T_KT; j++) {
#pragma unroll
            for (int s = 0; s < 2; s++) {
                uint32_t a[T_RPW][4];
#pragma unroll
                for (int r = 0; r < T_RPW; r++) {
                    q8_i8x4_to_bf16x4(s ? wc[r][j].z : wc[r][j].x, a[r][0], a[r][1]);
                    q8_i8x4_to_bf16x4(s ? wc[r][j].w : wc[r][j].y, a[r][2], a[r][3]);
                }
#pragma unroll
                for (int p = 0; p < NT / 2; p++) {
                    uint32_t b[4];
                    t_ldmatrix_x4(b, xb + p * 16 * T_XS + j * 32 + s * 16);
#pragma unroll
                    for (int r = 0; r < T_RPW; r++) {
                        mma_bf16_16816(acc[r][2 * p], a[r][0], a[r][1], a[r][2], a[r][3], b[0], b[1]);
                        mma_bf16_16816(acc[r][2 * p + 1], a[r][0], a[r][1], a[r][2], a[r][3], b[2], b[3]);
                    }
                }
            }
        }
        if (!WSM) {
#pragma unroll
            for (int r = 0; r < T_RPW; r++)
#pragma unroll
                for (int j = 0; j < T_KT; j++)
                    wc[r][j] = wn[r][j];
        }
        st = st + 1 == S ? 0 : st + 1;
    }

    if (ksplit > 1) {
        /* publish this split's partial tile; the last block of (mc, bn) sums
         * all splits in split order and resets the counter */
        constexpr int NACC = T_RPW * NT * 4;
        const size_t blk = (size_t)mc * nbn + bn;
        float *wsb = ws + (blk * ksplit + ks) * (NACC * T_THREADS) + threadIdx.x;
#pragma unroll
        for (int r = 0; r < T_RPW; r++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    __stcg(wsb + ((r * NT + j) * 4 + e) * T_THREADS, acc[r][j][e]);
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) is_last = atomicAdd(&counters[blk], 1u) == (unsigned)ksplit - 1;
        __syncthreads();
        if (!is_last) return;
        __threadfence();
        const float *wsa = ws + blk * ksplit * (NACC * T_THREADS) + threadIdx.x;
#pragma unroll
        for (int r = 0; r < T_RPW; r++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float v = 0.f;
                    for (int s2 = 0; s2 < ksplit; s2++)
                        v += __ldcg(wsa + (size_t)s2 * (NACC * T_THREADS) +
                                    ((r * NT + j) * 4 + e) * T_THREADS);
                    acc[r][j][e] = v;
                }
        if (threadIdx.x == 0) counters[blk] = 0;
    }

    /* C fragment: e = 0,1: weight row g, x rows 2t, 2t+1; e = 2,3: row g + 8 */
#pragma unroll
    for (int r = 0; r < T_RPW; r++) {
        int row0 = (rt0 + r) * 16 + g, row1 = row0 + 8;
        bool v0 = row0 < N, v1 = row1 < N;
        float s0 = v0 ? scale[row0] : 0.f, s1 = v1 ? scale[row1] : 0.f;
        float b0 = bias && v0 ? bias[row0] : 0.f, b1 = bias && v1 ? bias[row1] : 0.f;
#pragma unroll
        for (int j = 0; j < NT; j++) {
#pragma unroll
            for (int e2 = 0; e2 < 2; e2++) {
                int m = m0 + j * 8 + 2 * t + e2;
                if (m >= M) continue;
                float *yr = y + (size_t)m * N;
                if (v0) yr[row0] = acc[r][j][e2] * s0 + b0;
                if (v1) yr[row1] = acc[r][j][2 + e2] * s1 + b1;
            }
        }
    }
}

template <int BM, int T_KT, bool WSM>
static int launch_tiled(float *y, const uint16_t *x, const int8_t *q, const float *scale, const float *bias,
                        int m, int n, int k, const struct dsi_cuda_gemm_ws *ws, bool no_split,
                        cudaStream_t s) {
    int k32 = (k + 31) / 32, nkc = (k32 + T_KT - 1) / T_KT, nbn = (n + T_BN - 1) / T_BN;
    int chunks = (m + BM - 1) / BM, ksplit = 1, per = nkc;
    if (nbn > 65535) return DSI_EINVAL;
    if (!no_split && ws && ws->partial && ws->counters && ws->n_sm > 0 &&
        (long long)nbn * chunks <= ws->n_counters) {
        long long base = (long long)nbn * chunks;
        if (base < 2LL * ws->n_sm) { /* fewer blocks than 2 per SM: split K toward 3 per SM */
            long long want = (3LL * ws->n_sm + base - 1) / base;
            long long fit = (long long)(ws->partial_bytes / ((size_t)base * T_BN * BM * sizeof(float)));
            if (want > nkc / 2) want = nkc / 2; /* >= 2 chunks per split */
            if (want > DSI_Q8_TILED_MAX_SPLIT) want = DSI_Q8_TILED_MAX_SPLIT;
            if (want > fit) want = fit;
            if (want > 1) {
                per = (int)((nkc + want - 1) / want);
                ksplit = (nkc + per - 1) / per; /* no empty split */
            }
        }
    }
    /* default: <= 27.6 KB, under the 48 KB default (no attribute call); the
     * weights-in-shared-memory variant needs up to 69.6 KB */
    size_t smem = (size_t)(WSM ? 4 : T_STAGES) *
                  ((WSM ? (T_BN / 16) * T_KT * 256 : 0) + BM * (T_KT * 32 + 8)) * sizeof(uint16_t);
    if (smem > 48 * 1024) {
        int rc = DSI_CUDA_CHECK(cudaFuncSetAttribute(gemm_int8_tiled_kernel<BM, T_KT, WSM>,
                                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        if (rc) return rc;
    }
    int xfast = ((uintptr_t)x & 15) == 0 && (k & 7) == 0;
    dim3 grid(chunks, nbn, ksplit);
    gemm_int8_tiled_kernel<BM, T_KT, WSM>
        <<<grid, T_THREADS, smem, s>>>(y, x, q, scale, bias, m, n, k, k32, nkc, per, ksplit, xfast,
                                       ksplit > 1 ? ws->partial : NULL, ksplit > 1 ? ws->counters : NULL);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

extern "C" int dsi_cuda_gemm_int8_tiled_variant(float *y, const uint16_t *x, const int8_t *q,
                                                const float *scale, const float *bias, int m, int n, int k,
                                                const struct dsi_cuda_gemm_ws *ws, int variant,
                                                cudaStream_t s) {
    if (m < 0 || n <= 0 || k <= 0 || !y || !x || !q || !scale || variant < 0 || variant > 7)
        return DSI_EINVAL;
    if (((uintptr_t)q & 15) != 0 || ((uintptr_t)x & 1) != 0) return DSI_EINVAL;
    if (m == 0) return 0;
    bool no_split = (variant & DSI_Q8T_NO_SPLIT) != 0, bm32 = (variant & DSI_Q8T_BM32) != 0;
    if (variant & DSI_Q8T_SMEM_W) { /* weights through shared memory, 64-column chunks, 4 stages */
        if (m <= 16) return launch_tiled<16, 2, true>(y, x, q, scale, bias, m, n, k, ws, no_split, s);
        if (m <= 32 || bm32) return launch_tiled<32, 2, true>(y, x, q, scale, bias, m, n, k, ws, no_split, s);
        return launch_tiled<64, 2, true>(y, x, q, scale, bias, m, n, k, ws, no_split, s);
    }
    if (m <= 16) return launch_tiled<16, 4, false>(y, x, q, scale, bias, m, n, k, ws, no_split, s);
    if (m <= 32 || bm32) return launch_tiled<32, 4, false>(y, x, q, scale, bias, m, n, k, ws, no_split, s);
    return launch_tiled<64, 2, false>(y, x, q, scale, bias, m, n, k, ws, no_split, s);
}

extern "C" int dsi_cuda_gemm_int8_tiled(float *y, const uint16_t *x, const int8_t *q, const float *scale,
                                        const float *bias, int m, int n, int k,
                                        const struct dsi_cuda_gemm_ws *ws, cudaStream_t s) {
    return dsi_cuda_gemm_int8_tiled_variant(y, x, q, scale, bias, m, n, k, ws, 0, s);
}
