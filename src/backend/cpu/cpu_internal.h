/*
 * cpu_internal.h: state shared by the CPU backend's loader (cpu_load.c) and
 * forward pass (cpu_forward.c). Not a public header.
 *
 * A backend holds one shard of the model (backend.h struct dsi_shard; size 1:
 * all of it). Every shape below is the shard's: nh/nkv heads starting at
 * head0/kv_head0, n_inter intermediate rows starting at inter0, n_vocab
 * lm_head rows starting at vocab0. hidden, the embedding and the norms are
 * whole on every rank.
 */
#ifndef DSINFER_CPU_INTERNAL_H
#define DSINFER_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "dsinfer/backend.h"
#include "dsinfer/cpu_ops.h"

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
    int nh, nkv, head0, kv_head0; /* the shard's heads and kv heads, first of each */
    int n_inter, inter0;          /* the shard's intermediate rows */
    int n_vocab, vocab0;          /* the shard's lm_head rows */
    int q_dim, kv_dim;            /* nh*head_dim, nkv*head_dim */
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

    /* KV pool: layer l K at kv + l*2*layer_elems, V right after; element size kv_elt. */
    void *kv;
    size_t kv_layer_elems, kv_elt;

    /* per-step scratch, sized for max_batch_tokens */
    int max_tokens;
    float *x, *xn, *q, *k, *v, *att, *gate, *up; /* (max_tokens, dim of each) */
    int32_t *tok_seq, *tok_pos;                  /* (max_tokens) */
    float *scores;                               /* (n_threads, max_ctx) */
    float *lg_local;                             /* shard: (max_seqs, n_vocab), else NULL */
};

/* Loads and converts weights into c (cfg, opts, n_threads set by the caller). */
int dsi__cpu_load(struct dsi__cpu *c, const struct dsi_model *m, char **err);
/* Records a buffer c owns; frees it and returns DSI_ENOMEM if tracking fails. */
int dsi__cpu_own(struct dsi__cpu *c, void *p);
int dsi__cpu_forward(struct dsi_backend *be, const struct dsi_batch *b, float *logits, char **err);

#endif
