/*
 * attention_util.cuh: what the decode (attention.cu) and prefill
 * (attention_prefill.cu) attention kernels share: the paged-cache slot of a
 * token, 16-byte cp.async, ldmatrix and mma.sync m16n8k16 bf16 wrappers, the
 * bf16 hi + lo split of fp32 operands, and the argument check.
 */
#ifndef DSI_KERNELS_ATTENTION_UTIL_CUH
#define DSI_KERNELS_ATTENTION_UTIL_CUH

#include <stdint.h>

#include "bf16_util.cuh"
#include "kernels.h"

#define MAX_GROUP 8
#define MAX_HD 256

static __device__ __forceinline__ int slot_of(const int32_t *bt, int bs, int t) {
    return bt[t / bs] * bs + t % bs;
}

static __device__ __forceinline__ void attn_cp_async16(void *dst, const void *src, int bytes) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(src), "r"(bytes));
}

static __device__ __forceinline__ void attn_ldmatrix_x4(uint32_t *r, const uint16_t *p) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

static __device__ __forceinline__ void attn_ldmatrix_x4_trans(uint32_t *r, const uint16_t *p) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

/* x as a bf16 pair hi + lo with hi + lo = x to ~16 mantissa bits: the tensor
 * cores multiply bf16, and two products (hi, lo) keep q and the probabilities
 * as exact as the fp32 CPU reference's (the bf16 K/V are the only rounding). */
static __device__ __forceinline__ void split_bf16(float x, uint16_t *hi, uint16_t *lo) {
    *hi = f2bf(x);
    *lo = f2bf(x - bf2f(*hi));
}

static inline int check_args(const struct dsi_cuda_attn_args *a) {
    if (!a || a->n_seqs < 0 || a->n_heads <= 0 || a->n_kv_heads <= 0 || a->n_heads % a->n_kv_heads ||
        a->n_heads / a->n_kv_heads > MAX_GROUP || a->head_dim <= 0 || a->head_dim > MAX_HD ||
        a->head_dim % 16 || a->block_size <= 0 || a->q_stride < a->n_heads * a->head_dim)
        return DSI_EINVAL;
    /* cp.async moves K/V in 16-byte pieces; outputs go out two bf16 at a time */
    if ((((uintptr_t)a->k_cache | (uintptr_t)a->v_cache) & 15) || ((uintptr_t)a->out & 3)) return DSI_EINVAL;
    return 0;
}

#endif
