/*
 * gemv_int8_dec.cu: INT8 weight-only GEMV / small GEMM on CUDA cores for decode
 * (1..8 rows of x): y = x W^T * scale + bias, built for bandwidth.
 *
 * It reads the tiled layout of gemv_int8.cu as is (tiles of 16 rows x 32
 * columns, 512 bytes; lane l = 4g + t holds rows g and g+8, columns
 * s*16 + hi*8 + 2t + {0,1} of the tile, word 2s+hi of its 16 bytes: bytes
 * (row g, c), (row g, c+1), (row g+8, c), (row g+8, c+1)), so no second copy of
 * the weights exists and the tensor-core kernel stays usable (DSI_CUDA_GEMV=old).
 *
 * The device's SM count (cudaDeviceGetAttribute at each launch, a host call
 * that graph replays skip) picks the kernel and block shape by tiles per SM.
 *
 * One block of 8 warps (16 for matrices of few row tiles) per 16-row tile; the
 * warps take interleaved column tiles (no split over blocks: no workspace, no
 * atomics, deterministic), each warp issuing U 16-byte loads per lane
 * (ld.global.nc.L1::no_allocate) before it uses any (U = 8 for one or two rows
 * of x, 4 above): with 2-4 resident blocks per SM that keeps > 64 KB per SM in
 * flight, more than 4.25 TB/s x DRAM latency needs, while the warps' compute
 * (about 16 instructions per 4 weight bytes) overlaps other warps' loads. Every load of the warp is
 * one fully coalesced 512-byte tile. int8 -> fp32 is exact (magic-number
 * trick), products with the bf16 activations are exact in fp32, and the sum is
 * fp32: the same numbers as the CPU reference up to summation order. Lanes of
 * one row meet by two shuffles, the warps in shared memory in a fixed order,
 * then scale and bias. x (bf16, tiny next to W) is read through L1 with 4-byte
 * loads; lanes of equal t share addresses (broadcast).
 *
 * Requirements (checked at launch, DSI_EINVAL otherwise; the backend's matmul
 * plan checks them at load): 1 <= m <= 8, k even, x 4-byte aligned, q 16-byte
 * aligned. Columns past k (the zero padding of the last tile) are never read
 * from x.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "bf16_util.cuh"
#include "kernels.h"
#include "int8_tile.cuh"

/* The SM count of the current device: it steers the kernel and block shape
 * (tiles per SM), never the result. 0 when CUDA cannot say. */
static int device_sms(void) {
    int dev = 0, n_sm = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n_sm;
}

/* W warps per block, U tiles per lane in flight per round, MINB resident
 * blocks per SM the register budget must allow (launch bounds). */
template <int M, int W, int U, int MINB>
static __global__ void __launch_bounds__(W * 32, MINB)
    gemv_int8_dec_kernel(float *__restrict__ y, const uint16_t *__restrict__ x, const int8_t *__restrict__ q,
                         const float *__restrict__ scale, const float *__restrict__ bias, int N, int K,
                         int k32) {
    __shared__ float red[W][M][16];
    const int rt = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, t = lane & 3, g = lane >> 2;
    const uint4 *qt = reinterpret_cast<const uint4 *>(q + (size_t)rt * k32 * 512) + lane;
    float lo[M], hi[M];
#pragma unroll
    for (int m = 0; m < M; m++)
        lo[m] = hi[m] = 0.f;

    for (int kt0 = warp; kt0 < k32; kt0 += W * U) {
        uint4 a[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int kt = kt0 + u * W;
            a[u] = kt < k32 ? q8_ld_weights(qt + (size_t)kt * Q8_TILE_U4) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int kt = kt0 + u * W;
            if (kt >= k32) break;
            uint32_t w[4] = {a[u].x, a[u].y, a[u].z, a[u].w};
#pragma unroll
            for (int j = 0; j < 4; j++) { /* word j = 2s + hi: columns c, c+1 */
                int c = kt * 32 + (j >> 1) * 16 + (j & 1) * 8 + 2 * t;
                uint32_t ub = w[j] ^ 0x80808080u;
                float q0 = q8_byte_f32(ub, 0), q1 = q8_byte_f32(ub, 1), q2 = q8_byte_f32(ub, 2),
                      q3 = q8_byte_f32(ub, 3);
                bool in = c < K; /* k even and c even: c < K implies c + 1 < K */
#pragma unroll
                for (int m = 0; m < M; m++) {
                    uint32_t xv =
                        in ? __ldg(reinterpret_cast<const unsigned int *>(x + (size_t)m * K + c)) : 0u;
                    float x0 = __uint_as_float(xv << 16), x1 = __uint_as_float(xv & 0xffff0000u);
                    lo[m] = fmaf(q0, x0, lo[m]);
                    lo[m] = fmaf(q1, x1, lo[m]);
                    hi[m] = fmaf(q2, x0, hi[m]);
                    hi[m] = fmaf(q3, x1, hi[m]);
                }
            }
        }
    }
    /* the 4 lanes of a row (t = 0..3) are lanes 4g..4g+3 */
#pragma unroll
    for (int m = 0; m < M; m++) {
        lo[m] += __shfl_xor_sync(0xffffffffu, lo[m], 1);
        lo[m] += __shfl_xor_sync(0xffffffffu, lo[m], 2);
        hi[m] += __shfl_xor_sync(0xffffffffu, hi[m], 1);
        hi[m] += __shfl_xor_sync(0xffffffffu, hi[m], 2);
    }
    if (t == 0) {
#pragma unroll
        for (int m = 0; m < M; m++) {
            red[warp][m][g] = lo[m];
            red[warp][m][g + 8] = hi[m];
        }
    }
    __syncthreads();
    if (threadIdx.x < M * 16) {
        int m = threadIdx.x >> 4, r = threadIdx.x & 15, row = rt * 16 + r;
        float v = 0.f;
#pragma unroll
        for (int wi = 0; wi < W; wi++)
            v += red[wi][m][r];
        if (row < N) {
            v *= scale[row];
            if (bias) v += bias[row];
            y[(size_t)m * N + row] = v;
        }
    }
}

/* ---- one row on the tensor cores ----
 * The fp32 kernel above spends ~16 instructions per 4 weight bytes (byte ->
 * fp32, x load, 4 FMA), and at one row that issue work, not DRAM, sets its
 * speed. Here 4 bytes become two f16 pairs in 4 instructions (prmt into
 * 0x64XX = 1024 + byte, then one hsub2: exact for int8) and mma.sync
 * m16n8k16 (f16 x f16, fp32 accumulate) does the multiply-adds with x as the
 * B operand (column 0; the other 7 columns are zero). x is converted to f16
 * once per block into shared memory, scaled by a power of two (exact) that
 * puts the row's largest |x| just under 2^15, the result divided back: no
 * overflow, and f16's 11 mantissa bits (more than the bf16 x has) hold for
 * every value within 2^-29 of the row's largest. */
static __device__ __forceinline__ void gv_mma16(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* Two bytes of a biased word (u = w ^ 0x80808080) as an exact f16 pair: sel
 * 0x4140 takes bytes 0, 1 and 0x4342 bytes 2, 3 (each below 0x64), then
 * (1024 + q + 128) - 1152 = q. */
static __device__ __forceinline__ uint32_t gv_h2(uint32_t u, uint32_t sel) {
    uint32_t r = __byte_perm(u, 0x64646464u, sel);
    __half2 h = __hsub2(*reinterpret_cast<__half2 *>(&r),
                        __halves2half2(__ushort_as_half(0x6480), __ushort_as_half(0x6480)));
    return *reinterpret_cast<uint32_t *>(&h);
}

/* GLU: the rows are gate|up interleaved by 8 (DSI_GLU_IL8, N % 16 == 0), and
 * the epilogue writes act[8 rt + r] = bf16(silu(gate) * up) of the tile's two
 * halves (the expression of swiglu_kernel, so the same bits) instead of y. */
template <int W, int U, int MINB, bool GLU>
static __global__ void __launch_bounds__(W * 32, MINB)
    gemv_int8_f16_kernel(float *__restrict__ y, uint16_t *__restrict__ act, const uint16_t *__restrict__ x,
                         const int8_t *__restrict__ q, const float *__restrict__ scale,
                         const float *__restrict__ bias, int N, int K, int k32) {
    extern __shared__ uint32_t xs[]; /* (k32 * 16) f16 pairs, zero past K */
    __shared__ float red[W][16];
    __shared__ float fin[GLU ? 16 : 1];
    __shared__ float wmax[W];
    const int rt = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, t = lane & 3, g = lane >> 2;
    const uint4 *qt = reinterpret_cast<const uint4 *>(q + (size_t)rt * k32 * 512) + lane;
    uint4 a[U];
    int kt0 = warp;
#pragma unroll
    for (int u = 0; u < U; u++) {
        int kt = kt0 + u * W;
        a[u] = kt < k32 ? q8_ld_weights(qt + (size_t)kt * Q8_TILE_U4) : make_uint4(0, 0, 0, 0);
    }
    /* x to f16 (while the first weight loads are in flight) */
    const uint32_t *x32 = reinterpret_cast<const uint32_t *>(x);
    float mx = 0.f;
    for (int i = threadIdx.x; 2 * i < K; i += W * 32) {
        uint32_t v = __ldg(x32 + i);
        mx = fmaxf(mx, fmaxf(fabsf(__uint_as_float(v << 16)), fabsf(__uint_as_float(v & 0xffff0000u))));
    }
    for (int o = 16; o > 0; o >>= 1)
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) wmax[warp] = mx;
    __syncthreads();
    mx = 0.f;
#pragma unroll
    for (int i = 0; i < W; i++)
        mx = fmaxf(mx, wmax[i]);
    /* xsc = 2^e puts the row's largest |x| in [2^14, 2^15): exact, no overflow,
     * and small rows keep their bits instead of going subnormal. A zero, inf or
     * NaN row keeps xsc = 1 (inf/NaN then give NaN outputs, as the fp32 path). */
    float xsc = 1.f;
    if (mx > 0.f && mx <= 3.0e38f) {
        int e;
        frexpf(mx, &e); /* mx = f * 2^e, f in [0.5, 1) */
        xsc = ldexpf(1.f, min(100, max(-100, 15 - e)));
    }
    for (int i = threadIdx.x; i < k32 * 16; i += W * 32) {
        uint32_t v = 2 * i < K ? __ldg(x32 + i) : 0u;
        __half2 h = __floats2half2_rn(__uint_as_float(v << 16) * xsc, __uint_as_float(v & 0xffff0000u) * xsc);
        xs[i] = *reinterpret_cast<uint32_t *>(&h);
    }
    __syncthreads();
    /* word j = 2s + hi of a lane's 16 bytes: bytes (g, c), (g, c+1), (g+8, c),
     * (g+8, c+1) at column c = s*16 + hi*8 + 2t: A fragment regs a0/a1 (hi 0)
     * and a2/a3 (hi 1) of k-step s; B: x pairs at the same columns, lanes of
     * group 0 only */
    float c0[4] = {0.f, 0.f, 0.f, 0.f}, c1[4] = {0.f, 0.f, 0.f, 0.f};
    const bool col0 = g == 0;
    while (kt0 < k32) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            int kt = kt0 + u * W;
            if (kt >= k32) break;
            uint32_t w0 = a[u].x ^ 0x80808080u, w1 = a[u].y ^ 0x80808080u, w2 = a[u].z ^ 0x80808080u,
                     w3 = a[u].w ^ 0x80808080u;
            const int base = kt * 16 + t; /* f16 pair of columns kt*32 + 2t */
            uint32_t b00 = col0 ? xs[base] : 0u, b01 = col0 ? xs[base + 4] : 0u;
            uint32_t b10 = col0 ? xs[base + 8] : 0u, b11 = col0 ? xs[base + 12] : 0u;
            gv_mma16(c0, gv_h2(w0, 0x4140), gv_h2(w0, 0x4342), gv_h2(w1, 0x4140), gv_h2(w1, 0x4342), b00,
                     b01);
            gv_mma16(c1, gv_h2(w2, 0x4140), gv_h2(w2, 0x4342), gv_h2(w3, 0x4140), gv_h2(w3, 0x4342), b10,
                     b11);
        }
        kt0 += W * U;
        if (kt0 >= k32) break;
#pragma unroll
        for (int u = 0; u < U; u++) {
            int kt = kt0 + u * W;
            a[u] = kt < k32 ? q8_ld_weights(qt + (size_t)kt * Q8_TILE_U4) : make_uint4(0, 0, 0, 0);
        }
    }
    /* column 0 of the 16 x 8 result: c[0] (row g) and c[2] (row g + 8) of lanes t = 0 */
    if (t == 0) {
        red[warp][g] = c0[0] + c1[0];
        red[warp][g + 8] = c0[2] + c1[2];
    }
    __syncthreads();
    if (threadIdx.x < 16) {
        float v = 0.f;
#pragma unroll
        for (int wi = 0; wi < W; wi++)
            v += red[wi][threadIdx.x];
        const int row = rt * 16 + threadIdx.x;
        if (row < N) {
            v = v / xsc * scale[row];
            if (bias) v += bias[row];
            if (GLU)
                fin[threadIdx.x] = v;
            else
                y[row] = v;
        }
    }
    if (GLU) {
        __syncthreads();
        if (threadIdx.x < 8) {
            float a = fin[threadIdx.x];
            act[rt * 8 + threadIdx.x] = f2bf(a / (1.f + expf(-a)) * fin[threadIdx.x + 8]);
        }
    }
}

template <int W, int U, int MINB, bool GLU>
static int gv16_launch(float *y, uint16_t *act, const uint16_t *x, const int8_t *q, const float *scale,
                       const float *bias, int n, int k, cudaStream_t s) {
    int k32 = (k + 31) / 32, n16 = (n + 15) / 16;
    gemv_int8_f16_kernel<W, U, MINB, GLU>
        <<<n16, W * 32, (size_t)k32 * 64, s>>>(y, act, x, q, scale, bias, n, k, k32);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

/* Whether one row of (n, k) takes the tensor-core kernel under path (see
 * dsi_cuda_gemv_int8_path): x as f16 in dynamic shared memory plus under 1 KB
 * of static (red, wmax, fin) within the 48 KB no-opt-in limit, and path 2 or
 * enough row tiles. */
static bool gv16_takes(int n, int k, int path, int n_sm) {
    return path != 1 && (size_t)(k + 31) / 32 * 64 + 1024 <= 48 * 1024 &&
           (path == 2 || (n + 15) / 16 >= 4 * n_sm);
}

extern "C" int dsi_cuda_gemv_int8_tc_takes(int n, int k, int path, int n_sm) {
    return n > 0 && k > 0 && !(k & 1) && path >= 0 && path <= 2 && n_sm > 0 && gv16_takes(n, k, path, n_sm);
}

template <int M, int W, int U, int MINB>
static int gv_launch(float *y, const uint16_t *x, const int8_t *q, const float *scale, const float *bias,
                     int n, int k, cudaStream_t s) {
    int k32 = (k + 31) / 32, n16 = (n + 15) / 16;
    gemv_int8_dec_kernel<M, W, U, MINB><<<n16, W * 32, 0, s>>>(y, x, q, scale, bias, n, k, k32);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

extern "C" int dsi_cuda_gemv_int8_path(float *y, const uint16_t *x, const int8_t *q, const float *scale,
                                       const float *bias, int m, int n, int k, int path, cudaStream_t s) {
    if (path < 0 || path > 2) return DSI_EINVAL;
    if (m < 1 || m > DSI_Q8_GEMV_MAX_ROWS || n <= 0 || k <= 0 || (k & 1)) return DSI_EINVAL;
    if (!y || !x || !q || !scale) return DSI_EINVAL;
    if (((uintptr_t)x & 3) || ((uintptr_t)q & 15)) return DSI_EINVAL;
    const int n_sm = device_sms();
    if (n_sm <= 0) return DSI_ECUDA;
    /* x rows of m * k bf16 and the row index m * n must fit the kernel's size_t math;
     * the grid is one block per 16 rows (x dimension: up to 2^31 - 1) */
    switch (m) {
    case 1:
        /* one row. Matrices of many row tiles (gate|up, lm_head: >= 4 per SM)
         * take the tensor-core kernel (8 warps x 4 tiles x 6 blocks/SM) while x
         * fits 48 KB of shared memory as f16; the others the CUDA cores, 16 warps
         * per row tile where there are fewer than two tiles per SM (o, down),
         * else 8. bench_cuda_gemv on the H200 (bench/RESULTS.md, "One-row GEMV
         * on the tensor cores"), f16 tensor cores vs fp32 CUDA cores: gate_up
         * 38.5 vs 43.0 us, lm_head 130.7 vs 149.3 us, but qkv 10.9 vs 10.0, o 9.1
         * vs 8.0 and down 28.6 vs 26.0 us. */
        if (gv16_takes(n, k, path, n_sm))
            return (n + 15) / 16 < 2 * n_sm
                       ? gv16_launch<8, 16, 2, false>(y, NULL, x, q, scale, bias, n, k, s)
                       : gv16_launch<8, 4, 6, false>(y, NULL, x, q, scale, bias, n, k, s);
        if (path == 2) return DSI_EINVAL;
        if ((n + 15) / 16 < 2 * n_sm) return gv_launch<1, 16, 8, 2>(y, x, q, scale, bias, n, k, s);
        return gv_launch<1, 8, 8, 4>(y, x, q, scale, bias, n, k, s);
    case 2:
        return gv_launch<2, 8, 8, 4>(y, x, q, scale, bias, n, k, s);
    case 3:
        return gv_launch<3, 8, 4, 4>(y, x, q, scale, bias, n, k, s);
    case 4:
        return gv_launch<4, 8, 4, 4>(y, x, q, scale, bias, n, k, s);
    case 5:
        return gv_launch<5, 8, 4, 4>(y, x, q, scale, bias, n, k, s);
    case 6:
        return gv_launch<6, 8, 4, 4>(y, x, q, scale, bias, n, k, s);
    case 7:
        return gv_launch<7, 8, 4, 4>(y, x, q, scale, bias, n, k, s);
    default:
        return gv_launch<8, 8, 4, 4>(y, x, q, scale, bias, n, k, s);
    }
}

extern "C" int dsi_cuda_gemv_int8_swiglu(uint16_t *act, const uint16_t *x, const int8_t *q,
                                         const float *scale, const float *bias, int n, int k, int path,
                                         cudaStream_t s) {
    if (path < 0 || path > 2 || n <= 0 || n % 16 || k <= 0 || (k & 1) || !act || !x || !q || !scale)
        return DSI_EINVAL;
    const int n_sm = device_sms();
    if (n_sm <= 0) return DSI_ECUDA;
    if (((uintptr_t)x & 3) || ((uintptr_t)q & 15) || !gv16_takes(n, k, path, n_sm)) return DSI_EINVAL;
    return n / 16 < 2 * n_sm ? gv16_launch<8, 16, 2, true>(NULL, act, x, q, scale, bias, n, k, s)
                             : gv16_launch<8, 4, 6, true>(NULL, act, x, q, scale, bias, n, k, s);
}

extern "C" int dsi_cuda_gemv_int8(float *y, const uint16_t *x, const int8_t *q, const float *scale,
                                  const float *bias, int m, int n, int k, cudaStream_t s) {
    return dsi_cuda_gemv_int8_path(y, x, q, scale, bias, m, n, k, 0, s);
}
