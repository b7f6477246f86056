/*
 * cpu_ops.h: the scalar/vectorised kernels of the CPU reference backend.
 *
 * These are the numerical truth for every CUDA kernel: a CUDA test fills the same
 * inputs, runs its kernel and compares with the op here at a per-op tolerance.
 * All math is fp32. Every op works on one row (one token, or one head of one token),
 * so the caller decides threading, and a row's result never depends on the batch,
 * the thread count or what else is computed alongside it (fixed summation order).
 *
 * Layouts (row-major, HF order):
 *   activations   x: (n_tokens, dim) floats
 *   weights       W: (rows = out_features, cols = in_features), y = W x (+ b)
 *   int8 weights  q[r*cols + c]; scales[r*n_groups + g], n_groups = cols / group_size
 *                 (group_size 0 means one group per row = per output channel);
 *                 w ~= q * scale, scale = max|w in group| / 127 (0 for an all-zero group)
 *   bf16          uint16_t, the top half of the fp32 bit pattern
 *   paged KV      per layer, K and V each a pool of blocks of vectors: the vector of
 *                 (block b, slot t, kv head h) starts at byte
 *                 ((b*block_size + t)*n_kv_heads + h) * dsi_kv_vector_bytes(dtype, head_dim);
 *                 f32/bf16: head_dim values; int8: head_dim int8 then one f16 scale
 *                 (value = int8 * scale, per token and head: model.h dsi_kv_dtype).
 *                 position p of a sequence lives in block block_table[p / block_size],
 *                 slot p % block_size.
 *
 * Owner: src/backend/cpu. Backend-private, not a module contract (hence not
 * under include/): the CPU backend and the tests that compare against it
 * (tests/test_cpu_*.c, tests/test_cuda_*.c) include it by path.
 */
#ifndef DSINFER_CPU_OPS_H
#define DSINFER_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "dsinfer/backend.h"
#include "dsinfer/model.h"

/* ---- scalar conversions ------------------------------------------------------- */

static inline float dsi_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even; NaN stays a (quiet) NaN. Same rule as torch's .to(bfloat16). */
static inline uint16_t dsi_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* ---- weights ---------------------------------------------------------------- */

/* One linear layer's weight in the backend's format. */
struct dsi_qweight {
    enum dsi_weight_dtype dtype;
    int rows;            /* out_features */
    int cols;            /* in_features */
    int group_size;      /* int8 only: 0 = per output channel, else divides cols */
    const void *data;    /* f32: float, bf16: uint16_t, int8: int8_t; (rows, cols) */
    const float *scales; /* int8 only: (rows, n_groups) */
};

/* Number of int8 scale groups per row (1 when per-channel). */
static inline int dsi_qweight_groups(const struct dsi_qweight *w) {
    return w->group_size > 0 ? w->cols / w->group_size : 1;
}

/* Symmetric int8 quantization of src (rows, cols) fp32. group_size 0 = per row,
 * else it must divide cols (DSI_EINVAL otherwise). q: rows*cols, scales: rows*n_groups.
 * q = clamp(round_half_away(w / scale), -127, 127), scale = amax / 127. */
int dsi_quantize_int8(const float *src, int rows, int cols, int group_size, int8_t *q, float *scales);

/* Writes weight row r as fp32 into out (cols floats). Used for embeddings. */
void dsi_qweight_row_f32(const struct dsi_qweight *w, int r, float *out);

/* Dot products of one weight row with fp32 activations (fixed order: AVX2 lanes of
 * 8 with 4 accumulators when built with AVX2/FMA, else a portable loop). */
float dsi_dot_f32(const float *a, const float *b, int n);
float dsi_dot_bf16(const uint16_t *w, const float *x, int n);
/* sum_i w[i] * x[i] without the scale (the caller multiplies by the group scale). */
float dsi_dot_i8(const int8_t *w, const float *x, int n);

/* y[r] = W[r,:] . x (+ bias[r]) for r in [r0, r1). bias may be NULL. */
void dsi_matvec(const struct dsi_qweight *w, const float *x, const float *bias, float *y, int r0, int r1);
/* Y[t, r] = W[r,:] . X[t,:] (+ bias[r]) for t < n_tokens, r in [r0, r1); X is
 * (n_tokens, cols), Y is (n_tokens, ldy) with ldy >= rows. Same per-element result
 * as dsi_matvec (bit for bit); only the loop order differs (weight row reused). */
void dsi_matmul(const struct dsi_qweight *w, const float *x, int n_tokens, const float *bias, float *y,
                int ldy, int r0, int r1);

/* ---- W8A8: int8 activations x int8 weights, int32 accumulation (cpu_w8a8.c) ----
 * The CPU twin of the CUDA W8A8 path (kernels/w8a8.cu). */

/* One token's activations x (n) -> q (n) and its scale, by dsi_quantize_int8's
 * rule: scale = max|x| / 127, q = clamp(round_half_away(x / scale), -127, 127). */
void dsi_quantize_act_int8(const float *x, int n, int8_t *q, float *scale);
/* sum a[i] * b[i] in int32 (exact; |sum| <= 127 * 127 * n). */
int32_t dsi_dot_i8i8(const int8_t *a, const int8_t *b, int n);
/* One output: ((float)acc * x_scale) * w_scale (+ bias[r]), no fused multiply-add. */
float dsi_w8a8_out(int32_t acc, float x_scale, float w_scale, const float *bias, int r);
/* Y[t, r] = W8A8 product of row r of w (int8, per channel) with token t of xq
 * (n_tokens, cols) scaled by xs[t], for r in [r0, r1); Y is (n_tokens, ldy). */
void dsi_matmul_w8a8(const struct dsi_qweight *w, const int8_t *xq, const float *xs, int n_tokens,
                     const float *bias, float *y, int ldy, int r0, int r1);

/* ---- elementwise / normalisation ----------------------------------------------- */

/* out = x * rsqrt(mean(x^2) + eps) * w   (HF LlamaRMSNorm/Qwen2RMSNorm in fp32).
 * out may alias x. */
void dsi_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
/* out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)). out may alias gate. */
void dsi_swiglu(float *out, const float *gate, const float *up, int n);
/* In-place softmax over n floats (max-subtracted). */
void dsi_softmax(float *x, int n);

/* ---- rotary position embeddings ------------------------------------------------ */

/* Frequency tables (inv_freq, attn_factor): dsinfer/rope.h (model math). */
/* Rotates n_heads heads of head_dim floats (x: (n_heads, head_dim)) at position pos.
 * Only the first rot_dim dims of each head rotate. angle_i = (float)pos * inv_freq[i].
 *  neox (HF rotate_half; Llama, Qwen2): pairs (i, i + rot_dim/2)
 *  interleaved (DeepSeek-V2/V3 q_pe/k_pe as stored): pairs (2i, 2i+1) */
void dsi_rope_neox(float *x, int n_heads, int head_dim, int rot_dim, int pos, const float *inv_freq,
                   float attn_factor);
void dsi_rope_interleaved(float *x, int n_heads, int head_dim, int rot_dim, int pos, const float *inv_freq,
                          float attn_factor);

/* ---- attention over the paged KV cache ----------------------------------------- */

struct dsi_attn_args {
    int n_heads, n_kv_heads, head_dim; /* GQA: head h reads kv head h / (n_heads/n_kv_heads) */
    float scale;                       /* softmax scale, 1/sqrt(head_dim) for Llama/Qwen2 */
    int block_size;                    /* tokens per KV block */
    enum dsi_kv_dtype kv_dtype;
    const void *k, *v;          /* this layer's K and V block pools (layout above) */
    const int32_t *block_table; /* blocks of this sequence */
    int n_ctx;                  /* attend to positions 0..n_ctx-1 (causal: pos+1) */
};

/* One cached vector of n values in format dt (layout above): written from x,
 * dotted with x, or added to out weighted by w. int8: the dot and the sum read
 * the int8 values directly and apply the vector's scale once. */
void dsi_kv_put(enum dsi_kv_dtype dt, void *dst, const float *x, int n);
float dsi_kv_dot(enum dsi_kv_dtype dt, const void *v, const float *x, int n);
void dsi_kv_axpy(enum dsi_kv_dtype dt, float *out, float w, const void *v, int n);
/* int8 vector: dst gets n int8 values then the f16 scale (absmax / 127 rounded
 * up; 0 for an all-zero vector). */
void dsi_kv_quant_int8(uint8_t *dst, const float *x, int n);
float dsi_kv_int8_scale(const uint8_t *v, int n); /* the scale after n values */

/* out_head (head_dim) = softmax(scale * q.K^T) V for query head h.
 * scores: scratch of n_ctx floats. */
void dsi_attn_head(const struct dsi_attn_args *a, int h, const float *q_head, float *out_head, float *scores);

/* Writes one token's K and V (n_kv_heads*head_dim floats each) into slot pos of the
 * sequence's blocks, converting to the cache dtype. */
void dsi_kv_store(void *k_pool, void *v_pool, enum dsi_kv_dtype dt, int block_size, int n_kv_heads,
                  int head_dim, const int32_t *block_table, int pos, const float *k, const float *v);

#endif
