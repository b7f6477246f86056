/*
 * cpu_deepseek.h: the DeepSeek-V2/V3 ops of the CPU reference backend: MLA
 * attention over the compressed KV cache, the MoE router, and FP8 block
 * dequantization. Like cpu_ops.h these are the numerical truth the CUDA kernels
 * are checked against: fp32 math, one row (token, or head of a token) per call,
 * fixed summation order, so a row's result never depends on the batch or the
 * thread count.
 *
 * MLA cache (one pool per layer): per token kv_lora_rank values of the
 * normalised latent c_kv = kv_a_layernorm(kv_a_proj(x)[:kv_lora_rank]) followed by
 * qk_rope_head_dim values of the shared rope key k_pe (already rotated at the
 * token's position):
 *     entry(block b, slot t) at byte (b*block_size + t) * entry_bytes: the latent
 *     vector, then the rope key vector (cpu_ops.h: f32/bf16 values, or int8
 *     values with one f16 scale each, so the two ranges get their own scale);
 *     entry_bytes = dsi_kv_vector_bytes(dt, kv_lora_rank) + (.., qk_rope_head_dim)
 *     (576 values for V3 instead of 2*128*128)
 * Attention never re-expands the cache. With W_UK / W_UV the nope-key and value
 * rows of kv_b_proj for head h (kv_b_proj row h*(nope+v) + d, d < nope: W_UK;
 * row h*(nope+v) + nope + e: W_UV):
 *     q_lat  = W_UK^T q_nope                       (kv_lora_rank)
 *     s_j    = scale * (q_lat . c_kv_j + q_pe . k_pe_j)
 *     o_lat  = sum_j softmax(s)_j c_kv_j           (kv_lora_rank)
 *     out    = W_UV o_lat                          (v_head_dim)
 * which equals HF's q_nope . (W_UK c_kv_j) and softmax . (W_UV c_kv_j) up to
 * rounding (the products are reassociated).
 *
 * Owner: src/backend/cpu. Backend-private like cpu_ops.h: the CPU backend and
 * the tests that compare against it include it by path.
 */
#ifndef DSINFER_CPU_DEEPSEEK_H
#define DSINFER_CPU_DEEPSEEK_H

#include <stddef.h>
#include <stdint.h>

#include "cpu_ops.h"
#include "dsinfer/model.h"

/* ---- MLA ------------------------------------------------------------------------ */

struct dsi_mla_args {
    int kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
    float scale; /* dsi_mla_softmax_scale() */
    int block_size;
    enum dsi_kv_dtype kv_dtype;
    const void *cache;               /* this layer's pool (layout above) */
    const int32_t *block_table;      /* blocks of this sequence */
    int n_ctx;                       /* attend to positions 0..n_ctx-1 */
    const struct dsi_qweight *wkv_b; /* kv_b_proj: (n_heads*(nope+v), kv_lora_rank) */
};

/* Floats of scratch dsi_mla_head needs for n_ctx positions. */
size_t dsi_mla_scratch_floats(const struct dsi_mla_args *a);

/* Writes one token's latent (kv_lora floats, already normalised) and rotated
 * k_pe (rope floats) into slot pos, converting to the cache dtype. */
void dsi_mla_store(void *pool, enum dsi_kv_dtype dt, int block_size, int kv_lora_rank, int rope_dim,
                   const int32_t *block_table, int pos, const float *c_kv, const float *k_pe);

/* out (v_head_dim) for head h of one query: q = (qk_nope | qk_rope) with the rope
 * part already rotated. scratch: dsi_mla_scratch_floats(a) floats. */
void dsi_mla_head(const struct dsi_mla_args *a, int h, const float *q, float *out, float *scratch);

/* ---- MoE router ------------------------------------------------------------------ */

struct dsi_router {
    int n_experts, top_k, n_group, topk_group;
    enum dsi_topk_method method;
    enum dsi_scoring_func scoring;
    bool norm_topk_prob;
    float routed_scaling_factor;
    const float *bias; /* e_score_correction_bias (n_experts) or NULL; noaux_tc only */
};

/* Floats of scratch dsi_moe_route needs. */
size_t dsi_moe_route_scratch(const struct dsi_router *r);

/* From one token's router logits (n_experts, gate . x in fp32) picks top_k
 * experts: idx[k] in selection order (best first; equal values: lower id first)
 * and their weights w[k] = score (softmax or sigmoid, without the correction
 * bias), renormalised to sum 1 when norm_topk_prob, times routed_scaling_factor.
 *  greedy:               top_k of the scores
 *  group_limited_greedy: groups ranked by their best score; top_k among the
 *                        experts of the best topk_group groups
 *  noaux_tc:             choice = score + bias; groups ranked by the sum of their
 *                        two best choices; top_k choices in the best topk_group
 * Experts outside the chosen groups are never picked (DeepSeek's own rule; HF
 * writes 0 there, which only differs when every allowed choice is negative). */
void dsi_moe_route(const struct dsi_router *r, const float *logits, int32_t *idx, float *w, float *scratch);

/* ---- FP8 e4m3 block-scaled weights ------------------------------------------------ */

/* Applies the block scales of an FP8 weight in place: w (rows, cols) holds the
 * decoded e4m3 values (dsi_tensor_to_f32); scale (ceil(rows/br), ceil(cols/bc))
 * f32 is `weight_scale_inv`, a multiplier despite its name:
 * w[r][c] *= scale[r/br][c/bc]. */
void dsi_fp8_block_scale(float *w, const float *scale, int rows, int cols, int br, int bc);

#endif
