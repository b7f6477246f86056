/*
 * int8_tile.cuh: the device helpers every INT8 kernel shares, so the tiled
 * weight layout and its conversions are written once (gemv_int8.cu,
 * gemv_int8_dec.cu, gemm_int8_tiled.cu, quant_group.cu).
 *
 * Layout (kernels.h): tiles of 16 rows x 32 columns, 512 bytes, row tiles
 * outer; lane l = 4g + t of a warp owns bytes [16l, 16l + 16): for k-step s
 * in {0, 1} eight bytes that are exactly its mma.m16n8k16 A fragments (rows g
 * and g + 8, columns s*16 + 2t + {0,1} and s*16 + 8 + 2t + {0,1}), so one
 * coalesced 16-byte load per lane reads a tile.
 */
#ifndef DSI_KERNELS_INT8_TILE_CUH
#define DSI_KERNELS_INT8_TILE_CUH

#include <cuda_bf16.h>
#include <stddef.h>
#include <stdint.h>

#include "bf16_util.cuh"

#define Q8_TILE_BYTES 512
#define Q8_TILE_U4 32 /* uint4 per tile: one per lane */

static __device__ __forceinline__ uint16_t q8_f2bf(float f) {
    __nv_bfloat16 b = __float2bfloat16_rn(f);
    return *reinterpret_cast<uint16_t *>(&b);
}

/* Byte offset of element (r, k) in the tiled layout (k32 column tiles per row tile). */
static __device__ __forceinline__ size_t q8_offset(int r, int k, int k32) {
    int rt = r >> 4, rr = r & 15, kt = k >> 5, kk = k & 31;
    int s = kk >> 4, kq = kk & 15, hi = kq >> 3, kq8 = kq & 7;
    int t = kq8 >> 1, e = kq8 & 1, g = rr & 7, rowhi = rr >> 3;
    int lane = g * 4 + t, j = hi * 4 + rowhi * 2 + e;
    return ((size_t)rt * k32 + kt) * Q8_TILE_BYTES + lane * 16 + s * 8 + j;
}

/* A weight load that leaves L1 to the activations. */
static __device__ __forceinline__ uint4 q8_ld_weights(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

/* Byte sel of a biased word (w ^ 0x80808080) as an exact float: the byte placed
 * in the mantissa of 2^23, minus 2^23 + 128. */
static __device__ __forceinline__ float q8_byte_f32(uint32_t u_biased, int sel) {
    return __uint_as_float(__byte_perm(u_biased, 0x4B000000u, 0x7650 + sel)) - 8388736.f;
}

/* 4 int8 (one word) -> 2 registers of bf16x2, exact. */
static __device__ __forceinline__ void q8_i8x4_to_bf16x4(uint32_t w, uint32_t &lo, uint32_t &hi) {
    uint32_t u = w ^ 0x80808080u; /* biased: value + 128 */
    __nv_bfloat162 a = __floats2bfloat162_rn(q8_byte_f32(u, 0), q8_byte_f32(u, 1));
    __nv_bfloat162 b = __floats2bfloat162_rn(q8_byte_f32(u, 2), q8_byte_f32(u, 3));
    lo = *reinterpret_cast<uint32_t *>(&a);
    hi = *reinterpret_cast<uint32_t *>(&b);
}

#endif
