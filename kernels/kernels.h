/*
 * kernels.h: the launchers of the CUDA kernels (kernels/NAME.cu), private to the
 * CUDA backend (src/backend/cuda) and to its tests and benchmarks. The backend's
 * own entry points beyond backend.h are in src/backend/cuda/cuda_backend.h.
 *
 * Every launcher names its CPU twin (the reference it is tested against,
 * mostly src/backend/cpu/cpu_ops.h); docs/cuda-backend.md has the table.
 *
 * Conventions
 * - Every launcher is plain C, takes device pointers and a stream, checks its
 *   arguments with `if`, launches, and returns DSI_CUDA_CHECK(cudaGetLastError()):
 *   0 or DSI_EINVAL / DSI_ECUDA. Nothing here allocates; the backend owns buffers.
 * - bf16 tensors are `uint16_t *` (raw bfloat16 bits) so C code can hold them.
 * - The residual stream and every matmul output are fp32; matmul inputs are bf16.
 * - Matrices are HF order (out_features, in_features) = (N, K), row-major.
 * - INT8 weights use a tiled layout made by dsi_cuda_quantize_int8 (see
 *   kernels/gemv_int8.cu): tiles of 16 rows x 32 columns, 512 bytes each, laid
 *   out so that one 16-byte load per lane gives that lane its mma.sync A
 *   fragments. N is padded to a multiple of 16 and K to 32 (zeros).
 *   Per-output-channel fp32 scales: w[n][k] = q[n][k] * scale[n].
 * - KV cache of one layer: K and V pools of (n_blocks * block_size, n_kv * hd)
 *   bf16; token slot = block_id * block_size + pos % block_size.
 */
#ifndef DSINFER_KERNELS_H
#define DSINFER_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include <stdbool.h>

#include "dsinfer/err.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Logs the failing statement with function, file, line and CUDA's string, then
 * returns DSI_ECUDA; returns 0 for cudaSuccess. */
int dsi__cuda_check(int code, const char *stmt, const char *func, const char *file, int line);
int dsi__cublas_check(int status, const char *stmt, const char *func, const char *file, int line);
#define DSI_CUDA_CHECK(stmt) dsi__cuda_check((int)(stmt), #stmt, __func__, __FILE__, __LINE__)
#define DSI_CUBLAS_CHECK(stmt) dsi__cublas_check((int)(stmt), #stmt, __func__, __FILE__, __LINE__)

/* ---- elementwise / norm (kernels/elementwise.cu) ---- */

/* Whether this build holds code the current device can run (cudaSetDevice
 * first): 0 with the SASS version used (e.g. 90) in *binary_version, or
 * DSI_EUNSUPPORTED when no compiled architecture (CMAKE_CUDA_ARCHITECTURES)
 * fits the device. */
int dsi_cuda_kernel_image(int *binary_version);

/* out[i][:] = float(table[ids[i]][:]); ids outside [0, vocab) give zero rows
 * (the host validates ids first; this only keeps the kernel memory safe). */
/* CPU twin: the embedding row of dsi__cpu_forward (src/backend/cpu/cpu_forward.c). */
int dsi_cuda_embed(float *out, const uint16_t *table, const int32_t *ids, int n_tok, int dim, int vocab,
                   cudaStream_t s);

/* x[r] += delta[r] (delta may be NULL); out[r] = bf16(x[r] * rsqrt(mean(x[r]^2)+eps) * w).
 * x, delta: (rows, dim) fp32; w: (dim) fp32; out: (rows, dim) bf16. */
/* CPU twin: the residual add + dsi_rmsnorm (cpu_ops.h). */
int dsi_cuda_add_rmsnorm(float *x, const float *delta, const float *w, uint16_t *out, int rows, int dim,
                         float eps, cudaStream_t s);
/* The same with delta's per-column scale and bias (dim each, NULL: none)
 * applied first, as dsi_cuda_scale_bias does (delta * scale, then + bias), so
 * the same bits as that pass followed by dsi_cuda_add_rmsnorm: the epilogue of
 * the matmul that wrote delta, left to the norm that reads it anyway. */
int dsi_cuda_add_rmsnorm_epi(float *x, const float *delta, const float *dscale, const float *dbias,
                             const float *w, uint16_t *out, int rows, int dim, float eps, cudaStream_t s);

/* Rotate-half RoPE (HF layout: pairs (i, i + hd/2)) in place over the first
 * n_rot_heads heads of each row of qk (row stride `stride` floats); token t has
 * position pos[t]; inv_freq: (hd/2) from dsi_cuda_rope_inv_freq. */
/* CPU twin: dsi_rope_neox (cpu_ops.h). */
int dsi_cuda_rope(float *qk, int stride, int n_tok, int n_rot_heads, int head_dim, const int32_t *pos,
                  const float *inv_freq, cudaStream_t s);

/* Writes K and V of each new token into the cache as bf16:
 * k_cache[slots[t]][:] = src[t*stride + k_off + :kv_dim], same for V at v_off. */
/* CPU twin: dsi_kv_store (cpu_ops.h). */
int dsi_cuda_kv_store(uint16_t *k_cache, uint16_t *v_cache, const float *src, int stride, int k_off,
                      int v_off, const int32_t *slots, int n_tok, int kv_dim, cudaStream_t s);

/* dsi_cuda_rope over the q and k heads of qkv rows (q | k | v, row stride
 * `stride`, the k heads right after the n_heads q heads, v after them) fused
 * with dsi_cuda_kv_store of the rotated k and of v: the same bits as the two
 * kernels in sequence, one launch instead of two per layer. */
int dsi_cuda_rope_kv_store(float *qkv, int stride, int n_tok, int n_heads, int n_kv_heads, int head_dim,
                           const int32_t *pos, const float *inv_freq, uint16_t *k_cache, uint16_t *v_cache,
                           const int32_t *slots, cudaStream_t s);
/* gu: (rows, 2*inter) fp32 = [gate | up], or with il8 the gate and up
 * columns interleaved in blocks of 8 (DSI_GLU_IL8: gate j at 16*(j/8) + j%8,
 * up j eight after it; inter % 8 == 0); out: (rows, inter) bf16 =
 * silu(gate)*up. The CUDA backend stores gate|up weights that way when the
 * intermediate size allows, so one 16-row tile of the matmul holds 8 gate rows
 * and their 8 up rows (see dsi_cuda_gemv_int8_swiglu). scale, bias (NULL:
 * none; 2*inter, gu's column order): applied to gu first, the same bits as
 * dsi_cuda_scale_bias then this (a matmul's epilogue left to its consumer). */
/* CPU twin of dsi_cuda_swiglu: dsi_swiglu (cpu_ops.h). */
#define DSI_GLU_IL8 8
int dsi_cuda_swiglu(uint16_t *out, const float *gu, int rows, int inter, int il8, const float *scale,
                    const float *bias, cudaStream_t s);

/* y[r][n] = y[r][n] * (scale ? scale[n] : 1) + (bias ? bias[n] : 0); y: (rows, n). */
/* CPU twin: the scale and bias of dsi_matmul (cpu_ops.h). */
int dsi_cuda_scale_bias(float *y, const float *scale, const float *bias, int rows, int n, cudaStream_t s);

/* dst[i][:] = src[rows[i]][:], bf16 rows of `dim`. */
int dsi_cuda_gather_rows(uint16_t *dst, const uint16_t *src, const int32_t *rows, int n_rows, int dim,
                         cudaStream_t s);

/* Deterministic pseudo-random bf16 fill in [-scale, scale) (benchmarks, tests). */
int dsi_cuda_fill_random_bf16(uint16_t *dst, size_t n, uint64_t seed, float scale, cudaStream_t s);
int dsi_cuda_f32_to_bf16(uint16_t *dst, const float *src, size_t n, cudaStream_t s);

/* ---- attention over the paged KV cache (kernels/attention.cu) ---- */

struct dsi_cuda_attn_seq { /* device array, one per sequence of the step */
    int q_row;             /* first row of this sequence in q/out */
    int n_q;               /* new tokens (queries) */
    int pos;               /* position of the first query */
    int bt_off;            /* offset of its block table in block_tables */
};

struct dsi_cuda_attn_args {
    const float *q; /* head h of row r at q[r*q_stride + h*head_dim] */
    int q_stride;
    const uint16_t *k_cache, *v_cache;    /* one layer; (slots, n_kv_heads*head_dim) bf16 */
    uint16_t *out;                        /* (rows, n_heads*head_dim) bf16 */
    const struct dsi_cuda_attn_seq *seqs; /* device */
    int n_seqs;
    const int32_t *block_tables; /* device, flattened */
    int block_size;
    int n_heads, n_kv_heads, head_dim; /* head_dim % 16 == 0, <= 256; n_heads/n_kv_heads <= 8 */
    /* alignment (else DSI_EINVAL): k_cache, v_cache 16 bytes; out 4; work 8 */
    float scale;  /* 1/sqrt(head_dim) */
    int max_ctx;  /* max over seqs of pos + n_q */
    int max_n_q;  /* max over seqs of n_q */
    int n_splits; /* decode: from dsi_cuda_attn_decode_splits */
    float *work;  /* decode partials, dsi_cuda_attn_work_bytes */
    size_t work_bytes;
    int long_q; /* prefill skips sequences dsi_cuda_attn_is_long() picks (0: none) */
    int long_ctx;
};

/* Prefill attention runs on the tensor cores (flash-attention style, scores
 * never leave registers) for head_dim <= DSI_CUDA_ATTN_FA_MAX_HD, on CUDA
 * cores above. */
#define DSI_CUDA_ATTN_FA_MAX_HD 128

/* Sequences whose prefill goes through cuBLAS (scores materialized) instead of
 * the tiled kernel: long enough to pay, small enough for the score scratch. */
#ifdef __CUDACC__
__host__ __device__
#endif
    static inline int
    dsi_cuda_attn_is_long(int n_q, int pos, int long_q, int long_ctx) {
    return long_q > 0 && n_q >= long_q && pos <= long_ctx - n_q;
}

/* Long-prefill pieces (the host side runs the two GEMMs with cuBLAS):
 * K/V of positions 0..ctx-1 to contiguous (n_kv, ctx, hd) bf16; q rows to
 * (n_heads, n_q, hd) bf16 times scale; causal softmax of (n_heads, n_q, ctx)
 * fp32 scores to bf16 probabilities (query i at position pos + i). */
int dsi_cuda_kv_gather(uint16_t *kc, uint16_t *vc, const uint16_t *k_cache, const uint16_t *v_cache,
                       const int32_t *bt, int block_size, int ctx, int n_kv, int hd, cudaStream_t s);
int dsi_cuda_q_pack(uint16_t *qb, const float *q, int q_stride, int n_q, int n_heads, int hd, float scale,
                    cudaStream_t s);
int dsi_cuda_causal_softmax(uint16_t *p, const float *scores, int n_heads, int n_q, int ctx, int pos,
                            cudaStream_t s);

/* Split count for decode so that the grid fills the GPU (flash-decoding). */
int dsi_cuda_attn_decode_splits(int n_seqs, int n_kv_heads, int max_ctx, int n_sm);
size_t dsi_cuda_attn_work_bytes(int n_seqs, int n_heads, int head_dim, int n_splits);
/* Decode: every sequence has n_q == 1. Split-K over the context, then a combine pass. */
/* CPU twin of the attention launchers: dsi_attn_head (cpu_ops.h). */
int dsi_cuda_attn_decode(const struct dsi_cuda_attn_args *a, cudaStream_t s);
/* The same with RoPE and the KV store of the new token folded in: every
 * sequence's q row (at a->q, row stride a->q_stride: q | k | v of n_heads,
 * n_kv_heads, n_kv_heads heads) is NOT rotated yet and its K/V are not in the
 * cache. Each block rotates its q heads and the new k with inv_freq at the
 * sequence's position, uses them for the last key, and the first split writes
 * bf16 K and V into the cache slot of that position (so a->k_cache/v_cache are
 * written). The same bits as dsi_cuda_rope_kv_store then dsi_cuda_attn_decode;
 * one launch fewer per layer. head_dim <= 256. */
int dsi_cuda_attn_decode_rope(const struct dsi_cuda_attn_args *a, const float *inv_freq, cudaStream_t s);
/* Prefill (any n_q, causal, tiled, online softmax); also correct for n_q == 1. */
int dsi_cuda_attn_prefill(const struct dsi_cuda_attn_args *a, cudaStream_t s);

/* ---- DeepSeek MLA attention over the latent cache (kernels/mla.cu) ---- */

/* Per new token t: c_kv = RMSNorm(kva[t][:R]) * norm_w (fp32, eps), k_pe =
 * RoPE(kva[t][R:R+rope]) and every head's q_pe (q[t*q_stride + h*(nope+rope)
 * + nope ..], rotated in place) at pos[t]; (c_kv, k_pe) stored as bf16 in
 * cache slot slots[t] (rows of R + rope). Pairs (2i, 2i+1) when interleave,
 * else (i, i + rope/2); cos/sin times attn_factor (YaRN). rope/2 <= 128. */
/* CPU twin: dsi_rmsnorm + dsi_rope_interleaved/neox + dsi_mla_store. */
struct dsi_cuda_mla_rope_args {
    float *q; /* (T, q_stride) fp32 */
    int q_stride, n_heads, nope;
    const float *kva; /* (T, R + rope) fp32 */
    int kv_lora_rank, rope_dim;
    const float *norm_w; /* (R) */
    float eps;
    const int32_t *pos, *slots; /* (T) device */
    const float *inv_freq;      /* (rope / 2) */
    float attn_factor;
    int interleave;
    uint16_t *cache; /* one layer's latent pool */
};
int dsi_cuda_mla_kv_rope(const struct dsi_cuda_mla_rope_args *a, int n_tok, cudaStream_t s);
/* o_lat (T, n_heads, R) fp32 = softmax_j(scale * (q_lat . c_kv_j + q_pe . k_pe_j)) . c_kv_j
 * over the causal context of each row (the row's sequence from seqs). R <= 1024. */
/* CPU twin: the middle of dsi_mla_head (cpu_deepseek.h). */
struct dsi_cuda_mla_attn_args {
    float *o_lat;
    const float *q_lat; /* (T, n_heads, R) fp32 */
    const float *q;     /* q_pe of head h of row t at q[t*q_stride + h*(nope+rope) + nope] */
    int q_stride, n_heads, nope, kv_lora_rank, rope_dim;
    const uint16_t *cache;
    const struct dsi_cuda_attn_seq *seqs; /* device */
    int n_seqs;
    const int32_t *block_tables;
    int block_size;
    float scale;
    int long_q, long_ctx; /* rows of sequences dsi_cuda_attn_is_long() picks are skipped */
    int variant;          /* 0: a block per head; 1: all heads of a row per block where it applies */
    int n_splits;         /* > 1: the context of each row split over that many blocks */
    float *work;          /* n_splits > 1: dsi_cuda_mla_work_bytes of partials */
    size_t work_bytes;
};
size_t dsi_cuda_mla_work_bytes(int n_tok, int n_heads, int kv_lora_rank, int n_splits);
/* 1 when variant 1 runs the shared-latent kernel (16 heads per block) for these sizes. */
int dsi_cuda_mla_heads_kernel_takes(int kv_lora_rank, int rope_dim);
/* Long prefill (the backend's cuBLAS path): n_q rows to (n_heads, n_q, R + rope)
 * bf16 = [q_lat_h | q_pe_h] * scale; the latent rows come out of the cache with
 * dsi_cuda_kv_gather (one "head" of R + rope), the scores and the causal
 * softmax are the dense path's. */
int dsi_cuda_mla_q_pack(uint16_t *qb, const float *q_lat, const float *q, int q_stride, int n_q, int n_heads,
                        int nope, int kv_lora_rank, int rope_dim, float scale, cudaStream_t s);
int dsi_cuda_mla_attn(const struct dsi_cuda_mla_attn_args *a, int n_tok, cudaStream_t s);

/* ---- DeepSeek MoE router and un-permute (kernels/moe.cu) ---- */

enum { DSI_CUDA_SCORE_SOFTMAX, DSI_CUDA_SCORE_SIGMOID };
enum { DSI_CUDA_TOPK_GREEDY, DSI_CUDA_TOPK_GROUP_LIMITED, DSI_CUDA_TOPK_NOAUX_TC };
struct dsi_cuda_router {
    int n_experts, top_k, n_group, topk_group;
    int method, scoring; /* DSI_CUDA_TOPK_*, DSI_CUDA_SCORE_* */
    int norm_topk_prob;
    float routed_scaling_factor;
    const float *bias; /* device (n_experts) or NULL */
};
/* Per token: xn = RMSNorm(x[t]) * norm_w in fp32, logits = router (E, H) fp32 . xn,
 * then idx[t*K + k], w[t*K + k] as dsi_moe_route picks them. Dynamic shared
 * memory dsi_cuda_moe_route_smem (up to 227 KB). */
/* CPU twin: dsi_rmsnorm + the router logits of dsi__cpu_moe + dsi_moe_route. */
size_t dsi_cuda_moe_route_smem(int hidden, int n_experts, int n_group);
int dsi_cuda_moe_route(int32_t *idx, float *w, const float *x, const float *norm_w, int n_tok, int hidden,
                       float eps, const float *router, const struct dsi_cuda_router *r, cudaStream_t s);
/* Groups the n = T*K choices idx by expert on the device: off (2 E + 2 ints):
 * off[0..E] the runs, off[E+1..] the experts with a non-empty run (ascending),
 * off[2E+1] their count; asg[p] the choice at run position p, slot[a] the
 * position of choice a (the order inside a run is not fixed; no value depends
 * on it). One block. */
int dsi_cuda_moe_group(int32_t *off, int32_t *asg, int32_t *slot, const int32_t *idx, int n, int E,
                       cudaStream_t s);
/* One INT8 matrix per expert (tiled layout, per-channel scales). */
struct dsi_cuda_moe_w {
    const int8_t *q;
    const float *scale;
};
/* y[p] (n) = W_e x_row(p) * scale_e for every run position p of every expert e
 * (off, asg from dsi_cuda_moe_group over n_rows choices), x_row(p) = asg[p] /
 * x_div (x_div > 0: rows of x per token) or p (x_div 0: rows per position).
 * w: device array of n_experts; k even, x 4-byte aligned. */
/* CPU twin: dsi_matmul per expert (cpu_ops.h), as dsi__cpu_moe runs it. */
int dsi_cuda_moe_gemv_int8(float *y, const uint16_t *x, const struct dsi_cuda_moe_w *w, const int32_t *off,
                           const int32_t *asg, int x_div, int n_experts, int n_rows, int n, int k,
                           cudaStream_t s);
/* out[t] = (accumulate ? out[t] : 0) + sum_k w[t*K+k] * y[slot[t*K+k]] (rows of hidden). */
int dsi_cuda_moe_combine(float *out, int accumulate, const float *y, const int32_t *slot, const float *w,
                         int n_tok, int top_k, int hidden, cudaStream_t s);

/* ---- INT8 weight-only matmul (kernels/gemv_int8.cu) ---- */

#define DSI_Q8_ROWS 16
#define DSI_Q8_COLS 32
/* Padded sizes of the tiled layout. */
/* CPU twin of the INT8 launchers: dsi_quantize_int8 and dsi_matmul over a
 * dsi_qweight (cpu_ops.h); the tiled layout is the GPU's own. */
size_t dsi_cuda_q8_bytes(int n, int k);
/* w: (n, k) bf16 row-major -> q (tiled, dsi_cuda_q8_bytes) + scale (n) fp32,
 * symmetric per output channel: scale = max|w|/127. */
int dsi_cuda_quantize_int8(int8_t *q, float *scale, const uint16_t *w, int n, int k, cudaStream_t s);
/* The scales dsi_cuda_quantize_int8 would pick: scale[r] = max|w[r][:]| / 127. */
int dsi_cuda_int8_row_scales(float *scale, const uint16_t *w, int n, int k, cudaStream_t s);
/* dsi_cuda_quantize_int8 with the scales given instead of computed: a tensor-
 * parallel column slice quantized with the scales of its whole rows gets the
 * very bytes the whole matrix has in those columns. */
int dsi_cuda_quantize_int8_scaled(int8_t *q, const float *scale, const uint16_t *w, int n, int k,
                                  cudaStream_t s);
/* q (tiled) -> dst (n, k) bf16 row-major: the integer values (scale NULL; the
 * cuBLAS path of large batches applies scales after the product) or
 * bf16(q * scale[row]) (the INT8 embedding table). */
int dsi_cuda_dequant_int8(uint16_t *dst, const int8_t *q, const float *scale, int n, int k, cudaStream_t s);
/* Split-K workspace of the INT8 matmul: partial sums and one counter per
 * 16-row tile (zeroed once at allocation; the kernel leaves them zero).
 * Matmuls on one workspace must be serialized (one stream). */
#define DSI_Q8_MAX_SPLIT 8
struct dsi_cuda_gemm_ws {
    float *partial;
    size_t partial_bytes; /* dsi_cuda_gemm_ws_bytes(max n) */
    unsigned *counters;
    int n_counters; /* >= (max n + 15) / 16 */
    int n_sm;       /* multiprocessors of the device */
};
size_t dsi_cuda_gemm_ws_bytes(int max_n);
/* y (m, n) fp32 = x (m, k) bf16 @ W^T * scale + bias (bias may be NULL).
 * Tensor cores (mma.sync bf16), weights read once per 64 rows of x. ws may be
 * NULL (no split-K: slower for matrices of few rows). */
int dsi_cuda_gemm_int8(float *y, const uint16_t *x, const int8_t *q, const float *scale, const float *bias,
                       int m, int n, int k, const struct dsi_cuda_gemm_ws *ws, cudaStream_t s);
/* The same with a code variant (benchmarks and tests), an OR of the flags
 * below. All give the same results up to fp32 summation order. */
#define DSI_Q8_PIPELINED 1  /* software-pipelined loads */
#define DSI_Q8_NO_L1 2      /* weight loads bypass L1 */
#define DSI_Q8_WAVE_SPLIT 4 /* split-K sized for whole waves of resident blocks */
#define DSI_Q8_DEFAULT_VARIANT DSI_Q8_PIPELINED
int dsi_cuda_gemm_int8_variant(float *y, const uint16_t *x, const int8_t *q, const float *scale,
                               const float *bias, int m, int n, int k, const struct dsi_cuda_gemm_ws *ws,
                               int variant, cudaStream_t s);

/* ---- group-wise INT8 weights (kernels/quant_group.cu) ---- */

/* w: (n, k) bf16 row-major -> q in the tiled layout above (dsi_cuda_q8_bytes) +
 * scale (n, k / group_size) fp32 row-major: symmetric, one scale per row and
 * group of group_size inputs; bytes and scales bit-identical to the CPU's
 * dsi_quantize_int8 for the same input. DSI_EINVAL if group_size does not
 * divide k. */
/* CPU twin: dsi_quantize_int8 with group_size (cpu_ops.h), bit for bit. */
int dsi_cuda_quantize_int8_group(int8_t *q, float *scale, const uint16_t *w, int n, int k, int group_size,
                                 cudaStream_t s);
/* q (tiled) -> dst (n, k) bf16 row-major = bf16(q * scale[row][col / group_size]).
 * The matmul of group-wise weights is this + a cuBLAS bf16 GEMM: correct, not
 * fast (5 bytes moved per weight against 1 for the per-channel kernels). */
int dsi_cuda_dequant_int8_group(uint16_t *dst, const int8_t *q, const float *scale, int n, int k,
                                int group_size, cudaStream_t s);
/* part 0: the same; part 1: bf16(v - bf16(v)) for v = q * scale, the rest
 * that part 0 rounded away (the two GEMMs together carry ~16-bit weights). */
int dsi_cuda_dequant_int8_group_part(uint16_t *dst, const int8_t *q, const float *scale, int n, int k,
                                     int group_size, int part, cudaStream_t s);

/* ---- tiled INT8 GEMM for batched decode (kernels/gemm_int8_tiled.cu) ---- */

/* y (m, n) fp32 = x (m, k) bf16 @ W^T * scale + bias (bias may be NULL), W in
 * the tiled layout above. Built for m = 17..256+: blocks of 128 weight rows x
 * 16/32/64 rows of x, x staged in shared memory (cp.async), weights streamed
 * once per block into registers, mma.sync bf16 with fp32 accumulation. ws may
 * be NULL; with it, matrices of few 128-row blocks (o, qkv, down) split K over
 * at most DSI_Q8_TILED_MAX_SPLIT blocks, as far as ws->partial_bytes holds
 * (128 * 64 floats per block and split) and ws->n_counters covers one counter
 * per (64-row chunk of x, 128-row block); the sum is in fixed order
 * (deterministic) and the counters are left zero. Any m >= 0, n, k > 0; q must
 * be 16-byte aligned and x 2-byte aligned (DSI_EINVAL otherwise); k % 8 == 0
 * with a 16-byte aligned x takes the fast (cp.async) path. */
/* CPU twin: dsi_matmul (cpu_ops.h). */
#define DSI_Q8_TILED_MAX_SPLIT 16
int dsi_cuda_gemm_int8_tiled(float *y, const uint16_t *x, const int8_t *q, const float *scale,
                             const float *bias, int m, int n, int k, const struct dsi_cuda_gemm_ws *ws,
                             cudaStream_t s);
/* The same with a code variant (benchmarks, tests and the backend's plan; 0 =
 * the default above), an OR of the flags below. All give the same results up
 * to fp32 summation order. */
#define DSI_Q8T_NO_SPLIT 1 /* no split-K */
#define DSI_Q8T_BM32 2     /* at most 32 rows of x per block (for m > 32) */
/* weights through shared memory too (cp.async, 4 stages of 64 columns: deeper
 * prefetch, fewer registers, up to 70 KB of shared memory) */
#define DSI_Q8T_SMEM_W 4
int dsi_cuda_gemm_int8_tiled_variant(float *y, const uint16_t *x, const int8_t *q, const float *scale,
                                     const float *bias, int m, int n, int k,
                                     const struct dsi_cuda_gemm_ws *ws, int variant, cudaStream_t s);

/* ---- INT8 decode GEMV on CUDA cores (kernels/gemv_int8_dec.cu) ---- */

/* y (m, n) fp32 = x (m, k) bf16 @ W^T * scale + bias for 1 <= m <= 8, reading
 * the same tiled int8 layout once for all m rows; one block of 8 warps per 16
 * output rows, fp32 FMA of exactly dequantized weights, deterministic (no
 * split over blocks). DSI_EINVAL (nothing launched) when m is outside 1..8, k
 * is odd, x is not 4-byte or q not 16-byte aligned: the caller then takes
 * dsi_cuda_gemm_int8. */
/* CPU twin: dsi_matvec (cpu_ops.h). */
#define DSI_Q8_GEMV_MAX_ROWS 8
int dsi_cuda_gemv_int8(float *y, const uint16_t *x, const int8_t *q, const float *scale, const float *bias,
                       int m, int n, int k, cudaStream_t s);
/* The same with the one-row kernel chosen (tests, A/B timing, the backend's
 * plan): path 0 as above (tensor cores with x as f16 in shared memory for
 * matrices of >= 4 row tiles per SM of the current device while 2 x k bytes
 * fit 47 KB; else CUDA cores), DSI_GEMV_FP32 CUDA cores in fp32,
 * DSI_GEMV_TC tensor cores (DSI_EINVAL if x does not fit). Rows 2..8: CUDA
 * cores. */
#define DSI_GEMV_FP32 1
#define DSI_GEMV_TC 2
int dsi_cuda_gemv_int8_path(float *y, const uint16_t *x, const int8_t *q, const float *scale,
                            const float *bias, int m, int n, int k, int path, cudaStream_t s);
/* 1 when one row of an (n, k) matrix takes the tensor-core kernel under path
 * on a device of n_sm SMs (the plan's supports() of that kernel), else 0. */
int dsi_cuda_gemv_int8_tc_takes(int n, int k, int path, int n_sm);
/* One row of x through a gate|up matrix of n = 2 * inter rows stored
 * DSI_GLU_IL8-interleaved, SwiGLU in the tensor-core kernel's epilogue:
 * act (inter) bf16 = the same bits as dsi_cuda_gemv_int8_path then
 * dsi_cuda_swiglu(il8), one node instead of two and no fp32 gate|up row.
 * path as above; DSI_EINVAL (nothing launched) where that path would not take
 * the tensor-core kernel (path 1, few row tiles under path 0, x too large) or
 * n % 16 != 0: the caller then runs the two kernels. */
int dsi_cuda_gemv_int8_swiglu(uint16_t *act, const uint16_t *x, const int8_t *q, const float *scale,
                              const float *bias, int n, int k, int path, cudaStream_t s);

/* ---- W8A8: int8 activations x int8 weights (kernels/w8a8.cu) ---- */

/* x (m, k) bf16 -> q (m, k) int8 + scale (m), per token (row), symmetric:
 * scale = max|x| / 127, q = clamp(round_half_away(x / scale), -127, 127).
 * CPU twin: dsi_quantize_act_int8 (cpu_ops.h), bit for bit. */
int dsi_cuda_quant_act_int8(int8_t *q, float *scale, const uint16_t *x, int m, int k, cudaStream_t s);
/* y (m, n) fp32 = ((float)acc * x_scale[row]) * w_scale[col] (+ bias[col]);
 * acc (m, n) int32 row-major (the int8 x int8 product). CPU twin:
 * dsi_w8a8_out, bit for bit. bias may be NULL. */
int dsi_cuda_w8a8_epilogue(float *y, const int32_t *acc, const float *x_scale, const float *w_scale,
                           const float *bias, int m, int n, cudaStream_t s);
/* dst[i] = (int8)src[i] for bf16 src holding integers in [-127, 127] (the
 * integer values dsi_cuda_dequant_int8 gives with scale NULL): the row-major
 * int8 weights of the W8A8 path, made once at load. */
int dsi_cuda_int8_from_bf16(int8_t *dst, const uint16_t *src, size_t n, cudaStream_t s);

/* ---- sampling (kernels/sample.cu) ---- */

/* CPU twin: dsi_sample (include/dsinfer/engine.h, src/engine/sampler.c). */
struct dsi_cuda_sample_params { /* device array, one per row */
    float temperature;          /* <= 0: greedy */
    int top_k;                  /* 0: off */
    float top_p;                /* >= 1: off */
    float u;                    /* uniform [0,1) drawn by the host RNG of the sequence */
    int n_ids;                  /* draw among ids < n_ids only (a head's padding rows past
                                 * the tokenizer's last id); 0 or >= vocab: the whole row */
};
/* ids[r] = token chosen from logits row r (vocab floats apart, not modified): among
 * its first p[r].n_ids entries where that is set. */
int dsi_cuda_sample(int32_t *ids, const float *logits, const struct dsi_cuda_sample_params *p, int rows,
                    int vocab, cudaStream_t s);
/* The same with the path chosen (tests): 0 as above (the few-pass path where it
 * applies), 1 always the full scan; both give the same ids up to fp32
 * summation order at a threshold. */
int dsi_cuda_sample_variant(int32_t *ids, const float *logits, const struct dsi_cuda_sample_params *p,
                            int rows, int vocab, int variant, cudaStream_t s);

/* One-shot all-reduce fused with the residual add and RMSNorm, over NVLink
 * (kernels/tp_allreduce.cu; the backend uses it for small decode steps and
 * NCCL otherwise): x[r] += sum over ranks of delta[r] (in rank order, the
 * same bits on every rank), out[r] = bf16(x[r] * rsqrt(mean(x[r]^2) + eps) * w),
 * as dsi_cuda_add_rmsnorm after an all-reduce. Collective: every rank
 * launches it with the same rows, in the same order of calls. peer[q] is rank
 * q's exchange region (dsi_cuda_ar_region_bytes, zeroed once) as this process
 * sees it (its own included). Needs dsi_cuda_ar_fits(rows, dim). */
/* CPU twin: a sum over ranks then dsi_rmsnorm (cpu_ops.h). */
#define DSI_CUDA_AR_MAX_RANKS 8
#define DSI_CUDA_AR_MAX_ROWS 16
#define DSI_CUDA_AR_MAX_ELEMS 32768 /* rows x dim per call */
struct dsi_cuda_ar {
    void *peer[DSI_CUDA_AR_MAX_RANKS];
    void *local; /* this rank's scratch: dsi_cuda_ar_local_bytes, zeroed once */
    int rank, size;
};
size_t dsi_cuda_ar_region_bytes(void);
size_t dsi_cuda_ar_local_bytes(void);
int dsi_cuda_ar_fits(int rows, int dim);
int dsi_cuda_ar_add_rmsnorm(const struct dsi_cuda_ar *ar, float *x, const float *delta, const float *w,
                            uint16_t *out, int rows, int dim, float eps, cudaStream_t s);
/* (rows, vocab) logits from the all-gathered lm_head slices: `all` holds N
 * chunks of rows*pad floats, chunk r the (rows, n_r) slice of rank r, n_r =
 * min(vocab, (r+1)*pad) - r*pad (kernels/elementwise.cu). */
int dsi_cuda_tp_logits_unpack(float *out, const float *all, int rows, int vocab, int pad, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
