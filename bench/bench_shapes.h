/*
 * bench_shapes.h: the model shapes the CUDA benchmarks run with random weights
 * (bench_cuda_decode, bench_cuda_tp), and the bytes of weights a decode step
 * streams, written once so both report the same roofline.
 */
#ifndef DSI_BENCH_SHAPES_H
#define DSI_BENCH_SHAPES_H

#include <stdio.h>
#include <string.h>

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

#endif
