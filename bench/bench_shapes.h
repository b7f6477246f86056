/*
 * bench_shapes.h: what the CUDA benchmarks (bench_cuda_decode, bench_cuda_tp)
 * share, written once so both measure and report alike: the model shapes they
 * run with random weights, the bytes of weights a decode step streams, and the
 * decode batch they time.
 */
#ifndef DSI_BENCH_SHAPES_H
#define DSI_BENCH_SHAPES_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "dsinfer/backend.h"
#include "kernels.h"
#include "dsinfer/model.h"

/* Qwen2-7B (Qwen/Qwen2-7B config.json): the shape of issue 9. */
static inline void qwen2_7b(struct dsi_model_config *c) {
    memset(c, 0, sizeof *c);
    c->arch = DSI_ARCH_QWEN2;
    snprintf(c->architecture, sizeof c->architecture, "Qwen2ForCausalLM");
    c->vocab_size = 152064;
    c->hidden_size = 3584;
    c->intermediate_size = 18944;
    c->n_layers = 28;
    c->n_heads = 28;
    c->n_kv_heads = 4;
    c->head_dim = 128;
    c->max_position_embeddings = 32768;
    c->rms_norm_eps = 1e-6f;
    c->rope_theta = 1000000.f;
    c->rope.type = DSI_ROPE_DEFAULT;
    c->attention_bias = true;
    c->dtype = DSI_DT_BF16;
}

/* DeepSeek LLM 67B (deepseek-ai/deepseek-llm-67b-base config.json): a Llama. */
static inline void deepseek_67b(struct dsi_model_config *c) {
    memset(c, 0, sizeof *c);
    c->arch = DSI_ARCH_LLAMA;
    snprintf(c->architecture, sizeof c->architecture, "LlamaForCausalLM");
    c->vocab_size = 102400;
    c->hidden_size = 8192;
    c->intermediate_size = 22016;
    c->n_layers = 95;
    c->n_heads = 64;
    c->n_kv_heads = 8;
    c->head_dim = 128;
    c->max_position_embeddings = 4096;
    c->rms_norm_eps = 1e-6f;
    c->rope_theta = 10000.f;
    c->rope.type = DSI_ROPE_DEFAULT;
    c->attention_bias = false;
    c->dtype = DSI_DT_BF16;
}

/* DeepSeek-V2-Lite (deepseek-ai/DeepSeek-V2-Lite config.json, issue 21's shape):
 * MLA without q compression, a dense first layer, then 64 routed experts (6 per
 * token, greedy softmax routing) + 2 shared experts per layer. */
static inline void deepseek_v2_lite(struct dsi_model_config *c) {
    memset(c, 0, sizeof *c);
    c->arch = DSI_ARCH_DEEPSEEK_V2;
    snprintf(c->architecture, sizeof c->architecture, "DeepseekV2ForCausalLM");
    c->vocab_size = 102400;
    c->hidden_size = 2048;
    c->intermediate_size = 10944;
    c->n_layers = 27;
    c->n_heads = 16;
    c->n_kv_heads = 16;
    c->kv_lora_rank = 512;
    c->qk_nope_head_dim = 128;
    c->qk_rope_head_dim = 64;
    c->head_dim = 64;
    c->v_head_dim = 128;
    c->n_routed_experts = 64;
    c->n_shared_experts = 2;
    c->num_experts_per_tok = 6;
    c->moe_intermediate_size = 1408;
    c->first_k_dense_replace = 1;
    c->moe_layer_freq = 1;
    c->n_group = 1;
    c->topk_group = 1;
    c->topk_method = DSI_TOPK_GREEDY;
    c->scoring_func = DSI_SCORE_SOFTMAX;
    c->routed_scaling_factor = 1.0f;
    c->rope_interleave = true;
    c->max_position_embeddings = 163840;
    c->rms_norm_eps = 1e-6f;
    c->rope_theta = 10000.f;
    c->rope.type = DSI_ROPE_DEFAULT;
    c->dtype = DSI_DT_BF16;
}

/* Bytes a DeepSeek (MLA + MoE) decode step of n_seqs tokens streams: every
 * non-expert matrix, kv_b_proj as fp32, the routers (fp32), and the experts the
 * step touches (at most n_seqs * top_k distinct, at most all): int8 + one fp32
 * scale per row, or bf16. */
static inline double mla_stream_bytes(const struct dsi_model_config *c, int int8, int n_seqs) {
    double H = c->hidden_size, nh = c->n_heads, R = c->kv_lora_rank, rope = c->qk_rope_head_dim;
    double qk = c->qk_nope_head_dim + rope, vd = c->v_head_dim, QR = c->q_lora_rank, V = c->vocab_size;
    double I = c->moe_intermediate_size, IS = c->n_shared_experts * I, E = c->n_routed_experts;
    double used = (double)n_seqs * c->num_experts_per_tok < E ? (double)n_seqs * c->num_experts_per_tok : E;
    double eb = int8 ? 1.0 : 2.0, total = V * H * eb + (int8 ? V * 4 : 0); /* lm_head */
    for (int l = 0; l < c->n_layers; l++) {
        double q = QR > 0 ? QR * H + nh * qk * QR : nh * qk * H;
        double m = q + (R + rope) * H + H * nh * vd, rows = (QR > 0 ? QR + nh * qk : nh * qk) + R + rope + H;
        double kvb = nh * (c->qk_nope_head_dim + vd) * R * 4;
        if (l >= c->first_k_dense_replace && E > 0) {
            double ex = 3 * I * H * (used + (IS > 0 ? IS / I : 0));
            m += ex;
            rows += (2 * I + H) * used + (IS > 0 ? 2 * IS + H : 0);
            total += E * H * 4; /* router */
        } else {
            m += 3 * (double)c->intermediate_size * H;
            rows += 2 * (double)c->intermediate_size + H;
        }
        total += m * eb + (int8 ? rows * 4 : 0) + kvb;
    }
    return total;
}

/* Bytes of all matrices of the whole model as streamed by one decode step
 * (same count as bench_cuda_decode: int8 + one fp32 scale per row, or bf16). */
static inline double weight_stream_bytes(const struct dsi_model_config *c, int int8) {
    double H = c->hidden_size, I = c->intermediate_size, hd = c->head_dim, V = c->vocab_size;
    double nq = c->n_heads * hd, nk = c->n_kv_heads * hd;
    double per_layer = (nq + 2 * nk) * H + H * nq + 2 * I * H + H * I;
    double rows = c->n_layers * ((nq + 2 * nk) + H + 2 * I + H) + V;
    double elems = c->n_layers * per_layer + V * H;
    return int8 ? elems + rows * 4 : elems * 2;
}

/* A decode step of n_seqs sequences at context ctx, one new token each (the KV
 * cache counts as filled up to ctx - 1: its contents do not change the work):
 * sequence s gets blocks [s * bps, (s + 1) * bps) of bt, bps = (ctx + bs) / bs
 * (the caller checks that n_seqs * bps blocks fit), a fixed token id and greedy
 * sampling params. seqs, tokens and sp: n_seqs entries. */
static inline void bench_decode_batch(int n_seqs, int ctx, int bs, int vocab, int32_t *bt, int32_t *tokens,
                                      struct dsi_batch_seq *seqs, struct dsi_cuda_sample_params *sp) {
    int bps = (ctx + bs) / bs;
    for (int i = 0; i < n_seqs * bps; i++)
        bt[i] = i;
    for (int s = 0; s < n_seqs; s++) {
        tokens[s] = (s * 7919 + 13) % vocab;
        seqs[s] = (struct dsi_batch_seq){.seq_id = (uint64_t)s,
                                         .tokens = &tokens[s],
                                         .n_tokens = 1,
                                         .pos = ctx - 1,
                                         .block_table = bt + (size_t)s * bps,
                                         .n_blocks = bps,
                                         .want_logits = true};
        sp[s] = (struct dsi_cuda_sample_params){0.f, 0, 1.f, 0.5f, 0}; /* greedy */
    }
}

#endif
