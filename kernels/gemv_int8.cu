/*
 * gemv_int8.cu: INT8 weight-only matmul y = x W^T * scale + bias, the decode hot
 * path (weights: 7.07 GB per step of the 7B shape; target >= 80% of 4.25 TB/s).
 *
 * Weight layout (made here by dsi_cuda_quantize_int8): tiles of 16 rows x 32
 * columns, 512 bytes, row tiles outer, column tiles inner. Inside a tile, lane l
 * (group g = l/4, t = l%4) owns bytes [16l, 16l+16): for k-step s in {0,1} eight
 * bytes, the A fragment of mma.m16n8k16 (rows g and g+8, columns s*16 + 2t+{0,1}
 * and s*16 + 2t+8+{0,1}). So a warp reads each tile with one coalesced 16-byte
 * load per lane, and no shuffles or shared memory sit between DRAM and the
 * tensor cores.
 *
 * Kernel: one block of 8 warps per 16-row tile, per 8*NT rows of x and per
 * K split; warps split K (interleaved tiles) and keep two rounds of 4 tiles in
 * flight (software pipeline); small matrices (o, qkv, down: 224-288 row tiles
 * for 132 SMs) also split K over blocks, the last block of a row tile summing
 * the partials in a fixed order (deterministic, no atomics on data). It converts int8 to
 * bf16 (exact: fp32 magic-number trick, then a packed cvt), runs mma.sync with
 * x as the B operand (NT n8 tiles: batch rows), and the 8 partial sums meet in
 * shared memory for the scale/bias epilogue. x is re-read from L1/L2 by every
 * block; it is tiny next to W. Batches above 64 rows run as 64-row slices
 * (grid z), each re-reading W (the backend switches to dequant + cuBLAS for
 * large batches).
 */
#include <cuda_bf16.h>

#include "kernels.h"
#include "int8_tile.cuh"

#define WARPS 8
#define UNROLL 4

/* MODE: QUANT_ROW_SCALE computes each row's scale (absmax / 127) and quantizes
 * with it; QUANT_GIVEN_SCALE quantizes with scale[] as given (a tensor-parallel
 * column slice with the scales of its whole rows); QUANT_SCALE_ONLY only
 * writes the scales. */
enum { QUANT_ROW_SCALE, QUANT_GIVEN_SCALE, QUANT_SCALE_ONLY };
template <int MODE>
static __global__ void quantize_kernel(int8_t *q, float *scale, const uint16_t *w, int k, int k32) {
    __shared__ float red[32];
    int r = blockIdx.x;
    const uint16_t *row = w + (size_t)r * k;
    float sc;
    if constexpr (MODE == QUANT_GIVEN_SCALE) {
        sc = scale[r];
    } else {
        float amax = 0.f;
        for (int i = threadIdx.x; i < k; i += blockDim.x)
            amax = fmaxf(amax, fabsf(__uint_as_float((uint32_t)row[i] << 16)));
        for (int o = 16; o > 0; o >>= 1)
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
        __syncthreads();
        if (threadIdx.x < 32) {
            float v = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : 0.f;
            for (int o = 16; o > 0; o >>= 1)
                v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
            if (threadIdx.x == 0) red[0] = v;
        }
        __syncthreads();
        sc = red[0] / 127.f;
        if (threadIdx.x == 0) scale[r] = sc;
    }
    if constexpr (MODE != QUANT_SCALE_ONLY) {
        /* same rule as the CPU's dsi_quantize_int8: w / scale, round half away from zero */
        for (int i = threadIdx.x; i < k; i += blockDim.x) {
            float v = sc > 0.f ? roundf(__fdiv_rn(__uint_as_float((uint32_t)row[i] << 16), sc)) : 0.f;
            if (isnan(v)) v = 0.f;
            v = fminf(127.f, fmaxf(-127.f, v));
            q[q8_offset(r, i, k32)] = (int8_t)v;
        }
    }
}

/* One block per 16 rows x 256 columns (8 tiles, one per warp): coalesced 16-byte
 * loads of the tiled bytes, the values placed row-major in shared memory, then
 * written out as full 512-byte row segments (16-byte stores). */
#define DQ_TILES 8
static __global__ void __launch_bounds__(256)
    dequant_kernel(uint16_t *dst, const int8_t *q, const float *scale, int n, int k, int k32) {
    __shared__ __align__(16) uint16_t tile[16][DQ_TILES * 32 + 8];
    const int rt = blockIdx.y, kt0 = blockIdx.x * DQ_TILES;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int kt = kt0 + warp;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (kt < k32) v = reinterpret_cast<const uint4 *>(q + ((size_t)rt * k32 + kt) * Q8_TILE_BYTES)[lane];
    uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int p = 0; p < 8; p++) { /* pair p: bytes 2p, 2p+1 */
        int s2 = p >> 2, jj = (p & 3) * 2, hi = jj >> 2, rowhi = (jj >> 1) & 1;
        int r = g + 8 * rowhi, c = warp * 32 + s2 * 16 + hi * 8 + 2 * t;
        int row = rt * 16 + r;
        float sc = scale && row < n ? scale[row] : 1.f;
        uint32_t word = w[p >> 1] >> ((p & 1) * 16);
        tile[r][c] = q8_f2bf((float)(int8_t)(word & 0xff) * sc);
        tile[r][c + 1] = q8_f2bf((float)(int8_t)((word >> 8) & 0xff) * sc);
    }
    __syncthreads();
    /* 16 rows x 256 columns = 512 chunks of 8 values; two per thread */
    for (int i = threadIdx.x; i < 16 * DQ_TILES * 4; i += 256) {
        int r = i / (DQ_TILES * 4), c = (i % (DQ_TILES * 4)) * 8, row = rt * 16 + r, col = kt0 * 32 + c;
        if (row >= n || col >= k) continue;
        uint16_t *d = dst + (size_t)row * k + col;
        if (col + 8 <= k && !(k & 7)) {
            *reinterpret_cast<uint4 *>(d) = *reinterpret_cast<const uint4 *>(&tile[r][c]);
        } else {
            for (int e = 0; e < 8 && col + e < k; e++)
                d[e] = tile[r][c + e];
        }
    }
}

static __device__ __forceinline__ uint32_t ldg_u32(const uint16_t *p) {
    return __ldg(reinterpret_cast<const unsigned int *>(p));
}

/* Loads the B fragment pair (k, k+1) of x row m, zero outside (m < M, k < K). */
static __device__ __forceinline__ uint32_t load_b(const uint16_t *x, int m, int M, int k, int K, bool fast) {
    if (m >= M) return 0u;
    const uint16_t *p = x + (size_t)m * K + k;
    if (fast) return ldg_u32(p);
    uint32_t lo = k < K ? p[0] : 0u, hi = k + 1 < K ? p[1] : 0u;
    return lo | (hi << 16);
}

/* Loads the U tiles of one round (zeros past the warp's k range). */
template <int U, bool NOALLOC>
static __device__ __forceinline__ void load_round(uint4 *a, const uint4 *qt, int kt0, int kt_end) {
#pragma unroll
    for (int u = 0; u < U; u++) {
        int kt = kt0 + u * WARPS;
        const uint4 *p = qt + (size_t)kt * (Q8_TILE_BYTES / 16);
        if (NOALLOC)
            a[u] = kt < kt_end ? q8_ld_weights(p) : make_uint4(0, 0, 0, 0);
        else
            a[u] = kt < kt_end ? __ldcs(p) : make_uint4(0, 0, 0, 0);
    }
}

/* VAR bit 0: software-pipelined loads; bit 1: weight loads bypass L1
 * (no_allocate) so x stays there; bit 2: split-K count chosen for whole waves
 * of resident blocks (the launcher's choice). */
template <int NT, int VAR>
static __global__ void __launch_bounds__(WARPS * 32)
    gemm_int8_kernel(float *y, const uint16_t *x, const int8_t *q, const float *scale, const float *bias,
                     int M, int N, int K, int k32, int ksplit, float *ws, unsigned *counters) {
    __shared__ float red[WARPS][NT * 4][32];
    __shared__ int is_last;
    const int rt = blockIdx.x, ks = blockIdx.y, m0 = blockIdx.z * NT * 8;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    /* fast B loads: K a multiple of 32 (no column padding) and rows 4-byte aligned */
    const bool fast = (K & 31) == 0;
    const int chunk = (k32 + ksplit - 1) / ksplit, kt_beg = ks * chunk, kt_end = min(k32, kt_beg + chunk);
    const uint4 *qt = reinterpret_cast<const uint4 *>(q + (size_t)rt * k32 * Q8_TILE_BYTES) + lane;
    /* per n-tile row pointer (clamped to a valid row; masked below) so that each B
     * load is one instruction with an immediate offset */
    const uint16_t *xrow[NT];
    bool xval[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        int m = m0 + j * 8 + g;
        xval[j] = m < M;
        xrow[j] = x + (size_t)(xval[j] ? m : 0) * K + 2 * t;
    }
    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++)
        for (int c = 0; c < 4; c++)
            acc[j][c] = 0.f;

    constexpr int U = UNROLL;
    constexpr bool NA = (VAR & DSI_Q8_NO_L1) != 0;
    uint4 cur[U], nxt[U];
    load_round<U, NA>(cur, qt, kt_beg + warp, kt_end);
    for (int kt0 = kt_beg + warp; kt0 < kt_end; kt0 += WARPS * U) {
        if (VAR & DSI_Q8_PIPELINED) load_round<U, NA>(nxt, qt, kt0 + WARPS * U, kt_end);
#pragma unroll
        for (int u = 0; u < U; u++) {
            int kt = kt0 + u * WARPS;
            if (kt >= kt_end) break;
            uint32_t w[4] = {cur[u].x, cur[u].y, cur[u].z, cur[u].w};
#pragma unroll
            for (int s = 0; s < 2; s++) {
                uint32_t a0, a1, a2, a3;
                q8_i8x4_to_bf16x4(w[2 * s], a0, a1);
                q8_i8x4_to_bf16x4(w[2 * s + 1], a2, a3);
                int k = kt * 32 + s * 16 + 2 * t;
#pragma unroll
                for (int j = 0; j < NT; j++) {
                    uint32_t b0, b1;
                    if (fast) {
                        const uint16_t *p = xrow[j] + kt * 32 + s * 16;
                        b0 = ldg_u32(p);
                        b1 = ldg_u32(p + 8);
                        b0 = xval[j] ? b0 : 0u;
                        b1 = xval[j] ? b1 : 0u;
                    } else {
                        int m = m0 + j * 8 + g;
                        b0 = load_b(x, m, M, k, K, false);
                        b1 = load_b(x, m, M, k + 8, K, false);
                    }
                    mma_bf16_16816(acc[j], a0, a1, a2, a3, b0, b1);
                }
            }
        }
        if (VAR & DSI_Q8_PIPELINED) {
#pragma unroll
            for (int u = 0; u < U; u++)
                cur[u] = nxt[u];
        } else {
            load_round<U, NA>(cur, qt, kt0 + WARPS * U, kt_end);
        }
    }
#pragma unroll
    for (int j = 0; j < NT; j++)
        for (int c = 0; c < 4; c++)
            red[warp][j * 4 + c][lane] = acc[j][c];
    __syncthreads();
    const int n_out = NT * 4 * 32;
    if (ksplit > 1) {
        /* split-K: publish this block's partial; the last block of the row tile
         * sums all of them in split order (deterministic) and resets the counter */
        float *wp = ws + ((size_t)rt * ksplit + ks) * n_out;
        for (int i = threadIdx.x; i < n_out; i += WARPS * 32) {
            float v = 0.f;
#pragma unroll
            for (int w = 0; w < WARPS; w++)
                v += red[w][i / 32][i % 32];
            __stcg(wp + i, v);
        }
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) is_last = atomicAdd(&counters[rt], 1u) == (unsigned)ksplit - 1;
        __syncthreads();
        if (!is_last) return;
        __threadfence();
    }
    for (int i = threadIdx.x; i < n_out; i += WARPS * 32) {
        int jc = i / 32, l = i % 32, j = jc / 4, c = jc % 4;
        float v = 0.f;
        if (ksplit > 1) {
            for (int s2 = 0; s2 < ksplit; s2++)
                v += __ldcg(ws + ((size_t)rt * ksplit + s2) * n_out + i);
        } else {
#pragma unroll
            for (int w = 0; w < WARPS; w++)
                v += red[w][jc][l];
        }
        int row = rt * 16 + (l >> 2) + (c >= 2 ? 8 : 0);
        int m = m0 + j * 8 + (l & 3) * 2 + (c & 1);
        if (row < N && m < M) {
            v *= scale[row];
            if (bias) v += bias[row];
            y[(size_t)m * N + row] = v;
        }
    }
    if (ksplit > 1 && threadIdx.x == 0) counters[rt] = 0;
}

extern "C" size_t dsi_cuda_q8_bytes(int n, int k) {
    if (n <= 0 || k <= 0) return 0;
    return (size_t)((n + 15) / 16) * ((k + 31) / 32) * Q8_TILE_BYTES;
}

extern "C" int dsi_cuda_quantize_int8(int8_t *q, float *scale, const uint16_t *w, int n, int k,
                                      cudaStream_t s) {
    if (n <= 0 || k <= 0) return DSI_EINVAL;
    int rc = DSI_CUDA_CHECK(cudaMemsetAsync(q, 0, dsi_cuda_q8_bytes(n, k), s));
    if (rc) return rc;
    quantize_kernel<QUANT_ROW_SCALE><<<n, 256, 0, s>>>(q, scale, w, k, (k + 31) / 32);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

extern "C" int dsi_cuda_int8_row_scales(float *scale, const uint16_t *w, int n, int k, cudaStream_t s) {
    if (!scale || !w || n <= 0 || k <= 0) return DSI_EINVAL;
    quantize_kernel<QUANT_SCALE_ONLY><<<n, 256, 0, s>>>(NULL, scale, w, k, (k + 31) / 32);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

extern "C" int dsi_cuda_quantize_int8_scaled(int8_t *q, const float *scale, const uint16_t *w, int n, int k,
                                             cudaStream_t s) {
    if (!q || !scale || !w || n <= 0 || k <= 0) return DSI_EINVAL;
    int rc = DSI_CUDA_CHECK(cudaMemsetAsync(q, 0, dsi_cuda_q8_bytes(n, k), s));
    if (rc) return rc;
    quantize_kernel<QUANT_GIVEN_SCALE><<<n, 256, 0, s>>>(q, const_cast<float *>(scale), w, k, (k + 31) / 32);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

extern "C" int dsi_cuda_dequant_int8(uint16_t *dst, const int8_t *q, const float *scale, int n, int k,
                                     cudaStream_t s) {
    if (n <= 0 || k <= 0) return DSI_EINVAL;
    int k32 = (k + 31) / 32, n16 = (n + 15) / 16;
    if (n16 > 65535) return DSI_EINVAL;
    dim3 grid((k32 + DQ_TILES - 1) / DQ_TILES, n16);
    dequant_kernel<<<grid, 256, 0, s>>>(dst, q, scale, n, k, k32);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

extern "C" size_t dsi_cuda_gemm_ws_bytes(int max_n) {
    return (size_t)((max_n + 15) / 16) * DSI_Q8_MAX_SPLIT * 8 * 4 * 32 * sizeof(float);
}

template <int NT, int VAR>
static int launch(float *y, const uint16_t *x, const int8_t *q, const float *scale, const float *bias, int m,
                  int n, int k, const struct dsi_cuda_gemm_ws *ws, cudaStream_t s) {
    int k32 = (k + 31) / 32, n16 = (n + 15) / 16, ksplit = 1;
    int chunks = (m + NT * 8 - 1) / (NT * 8);
    if (ws && ws->partial && ws->counters && n16 <= ws->n_counters) {
        /* enough blocks for ~4 per SM; each split keeps >= 2 tiles per warp */
        int want = (4 * ws->n_sm + n16 * chunks - 1) / (n16 * chunks);
        int most = k32 / (2 * WARPS);
        ksplit = want < most ? want : most;
        if (VAR & DSI_Q8_WAVE_SPLIT) { /* the split whose blocks fill whole waves of resident blocks best */
            int per_sm = 0;
            if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gemm_int8_kernel<NT, VAR>, WARPS * 32,
                                                              0) != cudaSuccess ||
                per_sm < 1)
                per_sm = 1;
            double slots = (double)per_sm * ws->n_sm, best = 0;
            ksplit = 1;
            for (int ks = 1; ks <= DSI_Q8_MAX_SPLIT && ks <= most; ks++) {
                double waves = n16 * (double)ks / slots, eff = waves / ceil(waves);
                if (eff > best + 0.02) best = eff, ksplit = ks;
            }
        }
        if (ksplit > DSI_Q8_MAX_SPLIT) ksplit = DSI_Q8_MAX_SPLIT;
        if (ksplit < 1 || chunks > 1) ksplit = 1; /* the workspace holds one chunk of rows */
        size_t need = (size_t)n16 * ksplit * NT * 4 * 32 * sizeof(float);
        if (need > ws->partial_bytes) ksplit = 1;
    }
    if (chunks > 65535) return DSI_EINVAL;
    dim3 grid(n16, ksplit, chunks);
    gemm_int8_kernel<NT, VAR><<<grid, WARPS * 32, 0, s>>>(y, x, q, scale, bias, m, n, k, k32, ksplit,
                                                          ws ? ws->partial : NULL, ws ? ws->counters : NULL);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

template <int VAR>
static int dispatch(float *y, const uint16_t *x, const int8_t *q, const float *scale, const float *bias,
                    int m, int n, int k, const struct dsi_cuda_gemm_ws *ws, cudaStream_t s) {
    if (m <= 8) return launch<1, VAR>(y, x, q, scale, bias, m, n, k, ws, s);
    if (m <= 16) return launch<2, VAR>(y, x, q, scale, bias, m, n, k, ws, s);
    if (m <= 32) return launch<4, VAR>(y, x, q, scale, bias, m, n, k, ws, s);
    return launch<8, VAR>(y, x, q, scale, bias, m, n, k, ws, s);
}

extern "C" int dsi_cuda_gemm_int8_variant(float *y, const uint16_t *x, const int8_t *q, const float *scale,
                                          const float *bias, int m, int n, int k,
                                          const struct dsi_cuda_gemm_ws *ws, int variant, cudaStream_t s) {
    if (m < 0 || n <= 0 || k <= 0 || variant < 0 || variant > 7) return DSI_EINVAL;
    if (m == 0) return 0;
    switch (variant) {
    case 0:
        return dispatch<0>(y, x, q, scale, bias, m, n, k, ws, s);
    case 1:
        return dispatch<1>(y, x, q, scale, bias, m, n, k, ws, s);
    case 2:
        return dispatch<2>(y, x, q, scale, bias, m, n, k, ws, s);
    case 3:
        return dispatch<3>(y, x, q, scale, bias, m, n, k, ws, s);
    case 4:
        return dispatch<4>(y, x, q, scale, bias, m, n, k, ws, s);
    case 5:
        return dispatch<5>(y, x, q, scale, bias, m, n, k, ws, s);
    case 6:
        return dispatch<6>(y, x, q, scale, bias, m, n, k, ws, s);
    default:
        return dispatch<7>(y, x, q, scale, bias, m, n, k, ws, s);
    }
}

extern "C" int dsi_cuda_gemm_int8(float *y, const uint16_t *x, const int8_t *q, const float *scale,
                                  const float *bias, int m, int n, int k, const struct dsi_cuda_gemm_ws *ws,
                                  cudaStream_t s) {
    return dsi_cuda_gemm_int8_variant(y, x, q, scale, bias, m, n, k, ws, DSI_Q8_DEFAULT_VARIANT, s);
}
