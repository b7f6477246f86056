/*
 * quant_group.cu: group-wise INT8 weights on the GPU (the CPU backend's
 * --group-size G): symmetric, one fp32 scale per (row, group of G inputs).
 *
 * Quantize writes the SAME tiled byte layout as dsi_cuda_quantize_int8
 * (kernels/gemv_int8.cu; q8_offset below is a copy of its layout function,
 * and a test checks that G = k gives identical bytes) plus scales (n, k/G),
 * with the CPU's rule (dsi_quantize_int8 in cpu_ops.c): scale = amax/127,
 * q = roundf(w / scale) (IEEE division, round half away from zero), NaN -> 0,
 * clamped to +-127. So the bytes and scales are bit-identical to the CPU's for
 * the same bf16 input.
 *
 * The matmul path of group-wise weights is dequant (this file) to bf16
 * bf16(q * scale[row][col/G]) row-major, then a cuBLAS bf16 GEMM, twice: the
 * second pass multiplies what that bf16 rounding left out (part 1), so the
 * weights enter the product with ~16 bits, not 8 (one pass measured 0.049 of
 * logit scale against the CPU on a fixture, two passes match the per-channel
 * path). Correct but not fast: 10 bytes move per weight per matmul, against 1
 * for the per-channel INT8 kernels. A group-aware INT8
 * kernel is the step that would make group-wise pay on the GPU.
 */
#include <cuda_bf16.h>

#include "kernels.h"
#include "int8_tile.cuh"

#define QG_WARPS 8

/* One warp per (row, group): grid (n, ceil(ng / 8)), 8 warps per block (rows on
 * x: a vocabulary of 152064 rows exceeds grid.y's 65535). */
static __global__ void __launch_bounds__(QG_WARPS * 32)
    quant_group_kernel(int8_t *q, float *scale, const uint16_t *w, int k, int k32, int gs, int ng) {
    const int r = blockIdx.x, g = blockIdx.y * QG_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (g >= ng) return;
    const uint16_t *src = w + (size_t)r * k + (size_t)g * gs;
    float amax = 0.f;
    for (int i = lane; i < gs; i += 32) {
        float a = fabsf(__uint_as_float((uint32_t)src[i] << 16));
        if (a > amax) amax = a; /* as the CPU: a NaN never wins */
    }
    for (int o = 16; o > 0; o >>= 1) {
        float b = __shfl_xor_sync(0xffffffffu, amax, o);
        if (b > amax) amax = b;
    }
    const float sc = __fdiv_rn(amax, 127.f);
    if (lane == 0) scale[(size_t)r * ng + g] = sc;
    for (int i = lane; i < gs; i += 32) {
        float v = sc > 0.f ? roundf(__fdiv_rn(__uint_as_float((uint32_t)src[i] << 16), sc)) : 0.f;
        if (isnan(v)) v = 0.f;
        if (v > 127.f) v = 127.f; /* inf weights make amax inf */
        if (v < -127.f) v = -127.f;
        q[q8_offset(r, g * gs + i, k32)] = (int8_t)v;
    }
}

/* One block per 16 rows x 256 columns (8 tiles, one per warp), as the
 * per-channel dequant: coalesced 16-byte tile loads, values placed row-major in
 * shared memory, 16-byte row stores. */
#define QG_DQ_TILES 8
static __global__ void __launch_bounds__(256)
    dequant_group_kernel(uint16_t *dst, const int8_t *q, const float *scale, int n, int k, int k32, int gs,
                         int ng, int part) {
    __shared__ __align__(16) uint16_t tile[16][QG_DQ_TILES * 32 + 8];
    const int rt = blockIdx.y, kt0 = blockIdx.x * QG_DQ_TILES;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int kt = kt0 + warp;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (kt < k32) v = reinterpret_cast<const uint4 *>(q + ((size_t)rt * k32 + kt) * Q8_TILE_BYTES)[lane];
    uint32_t wd[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int p = 0; p < 8; p++) { /* pair p: bytes 2p, 2p+1 */
        int s2 = p >> 2, jj = (p & 3) * 2, hi = jj >> 2, rowhi = (jj >> 1) & 1;
        int r = g + 8 * rowhi, c = warp * 32 + s2 * 16 + hi * 8 + 2 * t;
        int row = rt * 16 + r, col = kt0 * 32 + c;
        float s0 = 0.f, s1 = 0.f; /* padding rows/columns: q is 0 there, no scale exists */
        if (row < n && col < k) s0 = scale[(size_t)row * ng + col / gs];
        if (row < n && col + 1 < k) s1 = scale[(size_t)row * ng + (col + 1) / gs];
        uint32_t word = wd[p >> 1] >> ((p & 1) * 16);
        float v0 = (float)(int8_t)(word & 0xff) * s0, v1 = (float)(int8_t)((word >> 8) & 0xff) * s1;
        if (part) { /* what bf16(v) left out: exactly representable in fp32 */
            v0 -= __uint_as_float((uint32_t)q8_f2bf(v0) << 16);
            v1 -= __uint_as_float((uint32_t)q8_f2bf(v1) << 16);
        }
        tile[r][c] = q8_f2bf(v0);
        tile[r][c + 1] = q8_f2bf(v1);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 16 * QG_DQ_TILES * 4; i += 256) {
        int r = i / (QG_DQ_TILES * 4), c = (i % (QG_DQ_TILES * 4)) * 8, row = rt * 16 + r, col = kt0 * 32 + c;
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

static bool qg_shape_ok(int n, int k, int gs) {
    return n > 0 && k > 0 && gs > 0 && k % gs == 0 && (n + 15) / 16 <= 65535;
}

extern "C" int dsi_cuda_quantize_int8_group(int8_t *q, float *scale, const uint16_t *w, int n, int k,
                                            int group_size, cudaStream_t s) {
    if (!q || !scale || !w || !qg_shape_ok(n, k, group_size)) return DSI_EINVAL;
    int ng = k / group_size;
    if ((ng + QG_WARPS - 1) / QG_WARPS > 65535) return DSI_EINVAL;
    int rc = DSI_CUDA_CHECK(cudaMemsetAsync(q, 0, dsi_cuda_q8_bytes(n, k), s));
    if (rc) return rc;
    dim3 grid(n, (ng + QG_WARPS - 1) / QG_WARPS);
    quant_group_kernel<<<grid, QG_WARPS * 32, 0, s>>>(q, scale, w, k, (k + 31) / 32, group_size, ng);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

extern "C" int dsi_cuda_dequant_int8_group_part(uint16_t *dst, const int8_t *q, const float *scale, int n,
                                                int k, int group_size, int part, cudaStream_t s) {
    if (!dst || !q || !scale || !qg_shape_ok(n, k, group_size) || part < 0 || part > 1) return DSI_EINVAL;
    int k32 = (k + 31) / 32;
    dim3 grid((k32 + QG_DQ_TILES - 1) / QG_DQ_TILES, (n + 15) / 16);
    dequant_group_kernel<<<grid, 256, 0, s>>>(dst, q, scale, n, k, k32, group_size, k / group_size, part);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

extern "C" int dsi_cuda_dequant_int8_group(uint16_t *dst, const int8_t *q, const float *scale, int n, int k,
                                           int group_size, cudaStream_t s) {
    return dsi_cuda_dequant_int8_group_part(dst, q, scale, n, k, group_size, 0, s);
}
