/*
 * bf16_util.cuh: device helpers the kernel files share: bf16 <-> fp32 as raw
 * uint16_t (the storage type of weights, activations and the KV cache) and the
 * block-wide float sum the norm kernels use (one order, so the fused TP
 * all-reduce + norm and add_rmsnorm reduce alike).
 */
#ifndef DSI_KERNELS_BF16_UTIL_CUH
#define DSI_KERNELS_BF16_UTIL_CUH

#include <cuda_bf16.h>
#include <stdint.h>

static __device__ __forceinline__ float bf2f(uint16_t v) {
    return __uint_as_float((uint32_t)v << 16);
}
static __device__ __forceinline__ uint16_t f2bf(float f) {
    __nv_bfloat16 b = __float2bfloat16_rn(f);
    return *reinterpret_cast<uint16_t *>(&b);
}

/* Sum of v over the block (blockDim.x a multiple of 32, <= 1024), returned to
 * every thread; red: 32 floats of shared memory. */
static __device__ __forceinline__ float block_sum(float v, float *red) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    __syncthreads(); /* red may still be read by a previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* c (16x8 fp32) += A (16x16 bf16, row) * B (16x8 bf16, col), fragments as in
 * the PTX ISA for mma.m16n8k16. */
static __device__ __forceinline__ void mma_bf16_16816(float *c, uint32_t a0, uint32_t a1, uint32_t a2,
                                                      uint32_t a3, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

#endif
