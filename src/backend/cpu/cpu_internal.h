/*
 * cpu_internal.h: state shared by the CPU backend's loader (cpu_load.c) and
 * forward pass (cpu_forward.c). Not a public header.
 *
 * A backend holds one shard of the model (backend.h struct dsi_shard; size 1:
 * all of it). Every shape below is the shard's: nh/nkv heads starting at
 * head0/kv_head0, n_inter intermediate rows starting at inter0, n_vocab
 * lm_head rows starting at vocab0. hidden, the embedding and the norms are
 * whole on every rank. A shard of an MLA model holds every head and
 * intermediate row too (replicated) and only its routed experts (ds.ep).
 */
#ifndef DSINFER_CPU_INTERNAL_H
#define DSINFER_CPU_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dsinfer/backend.h"
#include "dsinfer/ep.h"
#include "cpu_ops.h"

struct dsi__cpu_layer {
    struct dsi_qweight wq;     /* (nh*head_dim, hidden) */
    struct dsi_qweight wk, wv; /* (nkv*head_dim, hidden) */
    struct dsi_qweight wo;     /* (hidden, nh*head_dim): the shard's columns */
    struct dsi_qweight w_gate; /* (n_inter, hidden) */
    struct dsi_qweight w_up;   /* (n_inter, hidden) */
    struct dsi_qweight w_down; /* (hidden, n_inter): the shard's columns */
    float *bq, *bk, *bv;       /* the shard's biases or NULL (Qwen2 has them) */
    float *attn_norm;          /* (hidden) input_layernorm */
    float *ffn_norm;           /* (hidden) post_attention_layernorm */
    /* DeepSeek MLA (wq is q_proj when q_lora_rank is 0); whole on every rank */
    struct dsi_qweight wq_a;  /* (q_lora, hidden) */
    struct dsi_qweight wq_b;  /* (n_heads*(nope+rope), q_lora) */
    struct dsi_qweight wkv_a; /* (kv_lora+rope, hidden) kv_a_proj_with_mqa */
    struct dsi_qweight wkv_b; /* (n_heads*(nope+v), kv_lora) */
    float *q_a_norm, *kv_a_norm;
    /* DeepSeek MoE (moe set): router kept f32 whatever the weight dtype, since
     * its choice is discrete and cheap; every expert matrix is a qweight. */
    bool moe;
    float *router;                                 /* (n_experts, hidden) mlp.gate.weight */
    float *router_bias;                            /* (n_experts) e_score_correction_bias or NULL */
    struct dsi_qweight *ex_gate, *ex_up, *ex_down; /* n_experts each; a shard loads only its
                                                    * own (ds.ep.e0 ..), the others stay empty */
    struct dsi_qweight sh_gate, sh_up, sh_down;    /* shared experts (n_shared*moe_I); rows 0 if none */
};

/* Scratch of the DeepSeek paths (cpu_deepseek_fwd.c), sized for max_tokens. */
struct dsi__cpu_ds {
    float *qa;            /* (T, q_lora) */
    float *kva;           /* (T, kv_lora + rope) */
    float *mla_scratch;   /* (n_threads, dsi_mla_scratch_floats at max_ctx) */
    size_t mla_scratch_n; /* floats per thread */
    float *logits;        /* (T, n_experts) router logits */
    int32_t *idx;         /* (T, top_k) chosen experts */
    float *w;             /* (T, top_k) their weights */
    float *route_scratch; /* (n_threads, dsi_moe_route_scratch) */
    size_t route_scratch_n;
    int32_t *count;           /* (n_experts + 1) assignments per expert, then offsets */
    int32_t *slot_of;         /* (T*top_k) assignment position of (token, k) */
    int32_t *tok_of;          /* (T*top_k) token of each assignment position */
    float *xg, *gg, *ug, *yo; /* (T*top_k, hidden / moe_I / moe_I / hidden) */
    /* expert parallel (a shard of an MoE model; cpu_deepseek_fwd.c) */
    bool ep_on;
    struct dsi_ep_plan ep;           /* this rank's plan, re-planned every MoE layer */
    float *ep_send, *ep_recv;        /* (T*top_k, hidden) rows out / in, reused for the way back */
    int32_t *tok_rows, *tok_displs;  /* (ranks) token rows each rank routes this step */
};

/* Quantization error of one tensor, measured at load (int8 only). */
struct dsi__cpu_qerr {
    char name[96];
    double rel_err; /* ||W - deq(Q)||_F / ||W||_F */
    double max_abs_err;
};

struct dsi__cpu {
    struct dsi_backend be; /* first member: be.impl points back here */
    const struct dsi_model_config *cfg;
    struct dsi_backend_opts opts;
    int n_threads;
    struct dsi_shard shard;       /* size 1: the whole model, no callbacks */
    bool tp_reduce;               /* layer outputs are partial sums to all-reduce (dense TP);
                                   * false for MLA shards, whose ranks hold whole rows */
    int nh, nkv, head0, kv_head0; /* the shard's heads and kv heads, first of each */
    int n_inter, inter0;          /* the shard's intermediate rows */
    int n_vocab, vocab0;          /* the shard's lm_head rows */
    int q_dim, kv_dim;            /* nh*head_dim, nkv*head_dim; MLA: n_heads*(nope+rope), latent+rope */
    int att_dim;                  /* attention output width: q_dim, or n_heads*v_head_dim for MLA */
    int ffn_dim;                  /* gate/up scratch width: max(n_inter, shared experts') */
    bool mla;                     /* DeepSeek-V2/V3: MLA attention, MoE layers (shards: replicated
                                   * attention, expert-parallel routed experts) */
    struct dsi__cpu_ds ds;
    int max_ctx;                  /* positions a sequence may reach */
    int max_seqs;                 /* rows of logits per step (sizes lg_local) */

    struct dsi_qweight embed;   /* (vocab, hidden) */
    struct dsi_qweight lm_head; /* (n_vocab, hidden); a view of embed's rows when tied */
    float *final_norm;          /* (hidden) */
    struct dsi__cpu_layer *layers;
    float *inv_freq; /* (head_dim/2) */
    float attn_factor;

    void **allocs; /* every buffer owned, freed at destroy */
    size_t n_allocs, cap_allocs;

    struct dsi__cpu_qerr *qerr;
    size_t n_qerr, cap_qerr;

    /* KV pool (format opts.kv_dtype): layer l's K pool at kv + l*2*kv_pool_bytes, its
     * V pool right after (cpu_ops.h layout). MLA: one latent pool per layer at
     * kv + l*kv_pool_bytes (cpu_deepseek.h layout). */
    void *kv;
    size_t kv_pool_bytes;

    /* per-step scratch, sized for max_batch_tokens */
    int max_tokens;
    float *x, *xn, *q, *k, *v, *att, *gate, *up; /* (max_tokens, dim of each) */
    int32_t *tok_seq, *tok_pos;                  /* (max_tokens) */
    float *scores;                               /* (n_threads, max_ctx) */
    float *lg_local;                             /* shard: (max_seqs, n_vocab), else NULL */
    bool w8a8;                                   /* int8_mode w8a8: layers' matmuls int8 x int8 */
    int8_t *xq;                                  /* w8a8: (max_tokens, widest layer input) */
    float *xs;                                   /* w8a8: (max_tokens) per-token scales */
};

/* Loads and converts weights into c (cfg, opts, n_threads set by the caller). */
int dsi__cpu_load(struct dsi__cpu *c, const struct dsi_model *m, char **err);
/* Records a buffer c owns; frees it and returns DSI_ENOMEM if tracking fails. */
int dsi__cpu_own(struct dsi__cpu *c, void *p);
int dsi__cpu_forward(struct dsi_backend *be, const struct dsi_batch *b, float *logits, char **err);
/* Y(n, ldy) = X(n, cols) W^T (+ bias), output rows split across threads. */
void dsi__cpu_par_matmul(const struct dsi__cpu *c, const struct dsi_qweight *w, const float *x, int n,
                         const float *bias, float *y, int ldy);
/* Loaders shared with cpu_deepseek_load.c (cpu_load.c). */
int dsi__cpu_load_linear(struct dsi__cpu *c, const struct dsi_model *m, const char *name, int rows, int cols,
                         struct dsi_qweight *w, char **err);
int dsi__cpu_load_vec(struct dsi__cpu *c, const struct dsi_model *m, const char *name, int n, float **out,
                      char **err);
void *dsi__cpu_alloc(struct dsi__cpu *c, size_t n, size_t size);
/* DeepSeek (cpu_deepseek_load.c / cpu_deepseek_fwd.c). */
int dsi__cpu_load_mla_layer(struct dsi__cpu *c, const struct dsi_model *m, int l, char **err);
int dsi__cpu_alloc_deepseek(struct dsi__cpu *c, char **err);
/* Applies FP8 block scales to w (rows, cols) decoded from F8_E4M3 tensor `name`. */
int dsi__cpu_fp8_scale(const struct dsi__cpu *c, const struct dsi_model *m, const char *name, float *w, int rows,
                       int cols, char **err);
/* Layer l's MLA attention: c->xn (T, hidden) normalised -> c->att (T, att_dim),
 * the latent cache of each token written on the way. */
void dsi__cpu_mla_attention(struct dsi__cpu *c, const struct dsi_batch *b, int l, int T);
/* Layer l's MoE: c->xn (T, hidden) normalised -> c->xn = shared + routed experts. */
void dsi__cpu_moe(struct dsi__cpu *c, int l, int T);
/* The same on a shard: expert parallel over the shard's callbacks; every rank
 * calls it with the same T and ends with every token's rows in c->xn. */
int dsi__cpu_moe_ep(struct dsi__cpu *c, int l, int T, char **err);

#endif
