/*
 * cpu_deepseek_fwd.c: the DeepSeek-V2/V3 pieces of one CPU forward step, called
 * by cpu_forward.c for every layer of an MLA model.
 *
 * MLA attention (per layer, T new tokens):
 *   q      = q_b(rmsnorm(q_a(xn)))  or  q_proj(xn)           (T, n_heads*(nope+rope))
 *   kva    = kv_a_proj_with_mqa(xn)                           (T, kv_lora + rope)
 *   c_kv   = rmsnorm(kva[:kv_lora]); k_pe = rope(kva[kv_lora:]); q_pe = rope(q_pe)
 *   cache  <- (c_kv, k_pe) at the token's position            (cpu_deepseek.h layout)
 *   att_h  = dsi_mla_head (W_UK absorbed into q, W_UV into the output)
 * The q_a/kv_a norms use eps 1e-6: transformers and DeepSeek's code build them
 * without the config's rms_norm_eps.
 *
 * MoE (per MoE layer): router logits in fp32, dsi_moe_route per token, then the
 * (token, k) assignments are grouped by expert (counting sort, tokens ascending)
 * so each expert's matrices are read once per step for all its tokens; each
 * assignment's output has its own row, and a token sums its k rows in selection
 * order, then adds the shared experts. A token's result therefore does not depend
 * on which other tokens share the step or on the thread count.
 */
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_internal.h"
#include "cpu_deepseek.h"

#define MLA_NORM_EPS 1e-6f

static inline int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static void rope_heads(const struct dsi__cpu *c, float *x, int n_heads, int stride, int pos) {
    const struct dsi_model_config *cfg = c->cfg;
    if (cfg->rope_interleave)
        dsi_rope_interleaved(x, n_heads, stride, cfg->qk_rope_head_dim, pos, c->inv_freq, c->attn_factor);
    else
        dsi_rope_neox(x, n_heads, stride, cfg->qk_rope_head_dim, pos, c->inv_freq, c->attn_factor);
}

void dsi__cpu_mla_attention(struct dsi__cpu *c, const struct dsi_batch *b, int l, int T) {
    const struct dsi_model_config *cfg = c->cfg;
    const struct dsi__cpu_layer *L = &c->layers[l];
    struct dsi__cpu_ds *d = &c->ds;
    int nh = cfg->n_heads, R = cfg->kv_lora_rank, rope = cfg->qk_rope_head_dim, nope = cfg->qk_nope_head_dim;
    int qk = nope + rope, W = R + rope, vd = cfg->v_head_dim, bs = c->be.kv_block_size;
    void *pool = (char *)c->kv + (size_t)l * c->kv_layer_elems * c->kv_elt;
    if (cfg->q_lora_rank > 0) {
        int QR = cfg->q_lora_rank;
        dsi__cpu_par_matmul(c, &L->wq_a, c->xn, T, NULL, d->qa, QR);
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
        for (int r = 0; r < T; r++)
            dsi_rmsnorm(d->qa + (size_t)r * QR, d->qa + (size_t)r * QR, L->q_a_norm, QR, MLA_NORM_EPS);
        dsi__cpu_par_matmul(c, &L->wq_b, d->qa, T, NULL, c->q, nh * qk);
    } else {
        dsi__cpu_par_matmul(c, &L->wq, c->xn, T, NULL, c->q, nh * qk);
    }
    dsi__cpu_par_matmul(c, &L->wkv_a, c->xn, T, NULL, d->kva, W);
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int r = 0; r < T; r++) {
        const struct dsi_batch_seq *s = &b->seqs[c->tok_seq[r]];
        float *kv = d->kva + (size_t)r * W, *q = c->q + (size_t)r * nh * qk;
        int pos = c->tok_pos[r];
        dsi_rmsnorm(kv, kv, L->kv_a_norm, R, MLA_NORM_EPS);
        rope_heads(c, kv + R, 1, rope, pos);
        rope_heads(c, q + nope, nh, qk, pos);
        dsi_mla_store(pool, c->opts.kv_dtype, bs, R, rope, s->block_table, pos, kv, kv + R);
    }
    float scale = dsi_mla_softmax_scale(cfg);
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int th = 0; th < T * nh; th++) {
        int r = th / nh, h = th % nh;
        const struct dsi_batch_seq *s = &b->seqs[c->tok_seq[r]];
        struct dsi_mla_args a = {.kv_lora_rank = R,
                                 .qk_nope_head_dim = nope,
                                 .qk_rope_head_dim = rope,
                                 .v_head_dim = vd,
                                 .scale = scale,
                                 .block_size = bs,
                                 .kv_dtype = c->opts.kv_dtype,
                                 .cache = pool,
                                 .block_table = s->block_table,
                                 .n_ctx = c->tok_pos[r] + 1,
                                 .wkv_b = &L->wkv_b};
        dsi_mla_head(&a, h, c->q + (size_t)r * nh * qk + (size_t)h * qk,
                     c->att + (size_t)r * c->att_dim + (size_t)h * vd,
                     d->mla_scratch + (size_t)thread_id() * d->mla_scratch_n);
    }
}

/* Routes every token and groups the (token, k) assignments by expert:
 * count[e]..count[e+1] are expert e's positions, tok_of[p] their tokens
 * (ascending), slot_of[t*K + k] the position of token t's k-th choice. */
static void route_and_group(struct dsi__cpu *c, const struct dsi__cpu_layer *L, int T) {
    const struct dsi_model_config *cfg = c->cfg;
    struct dsi__cpu_ds *d = &c->ds;
    int E = cfg->n_routed_experts, K = cfg->num_experts_per_tok, H = cfg->hidden_size;
    struct dsi_router rt = {.n_experts = E,
                            .top_k = K,
                            .n_group = cfg->n_group,
                            .topk_group = cfg->topk_group,
                            .method = cfg->topk_method,
                            .scoring = cfg->scoring_func,
                            .norm_topk_prob = cfg->norm_topk_prob,
                            .routed_scaling_factor = cfg->routed_scaling_factor,
                            .bias = L->router_bias};
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int r = 0; r < T; r++) {
        float *lg = d->logits + (size_t)r * E;
        const float *x = c->xn + (size_t)r * H;
        for (int e = 0; e < E; e++)
            lg[e] = dsi_dot_f32(L->router + (size_t)e * H, x, H);
        dsi_moe_route(&rt, lg, d->idx + (size_t)r * K, d->w + (size_t)r * K,
                      d->route_scratch + (size_t)thread_id() * d->route_scratch_n);
    }
    memset(d->count, 0, (size_t)(E + 1) * sizeof *d->count);
    for (int a = 0; a < T * K; a++)
        d->count[d->idx[a] + 1]++;
    for (int e = 0; e < E; e++)
        d->count[e + 1] += d->count[e];
    /* fill positions in token order: a second pass with a moving cursor per expert */
    for (int e = E; e > 0; e--)
        d->count[e] = d->count[e - 1];
    d->count[0] = 0;
    for (int a = 0; a < T * K; a++) {
        int p = d->count[d->idx[a] + 1]++;
        d->slot_of[a] = p;
        d->tok_of[p] = a / K;
    }
    /* count[e + 1] is now the end of expert e; count[0] stays 0 */
}

void dsi__cpu_moe(struct dsi__cpu *c, int l, int T) {
    const struct dsi_model_config *cfg = c->cfg;
    const struct dsi__cpu_layer *L = &c->layers[l];
    struct dsi__cpu_ds *d = &c->ds;
    int E = cfg->n_routed_experts, K = cfg->num_experts_per_tok, H = cfg->hidden_size;
    int I = cfg->moe_intermediate_size, IS = L->sh_gate.rows;
    route_and_group(c, L, T);
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int p = 0; p < T * K; p++)
        memcpy(d->xg + (size_t)p * H, c->xn + (size_t)d->tok_of[p] * H, (size_t)H * sizeof(float));
        /* each expert's rows by one thread: its weights are read once for all its tokens */
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(dynamic, 1)
#endif
    for (int e = 0; e < E; e++) {
        int p0 = e ? d->count[e] : 0, n = d->count[e + 1] - p0;
        if (n <= 0) continue;
        float *xg = d->xg + (size_t)p0 * H, *gg = d->gg + (size_t)p0 * I, *ug = d->ug + (size_t)p0 * I;
        dsi_matmul(&L->ex_gate[e], xg, n, NULL, gg, I, 0, I);
        dsi_matmul(&L->ex_up[e], xg, n, NULL, ug, I, 0, I);
        for (int i = 0; i < n; i++)
            dsi_swiglu(gg + (size_t)i * I, gg + (size_t)i * I, ug + (size_t)i * I, I);
        dsi_matmul(&L->ex_down[e], gg, n, NULL, d->yo + (size_t)p0 * H, H, 0, H);
    }
    if (IS > 0) {
        /* rows of IS floats (the down projection reads them contiguous) */
        dsi__cpu_par_matmul(c, &L->sh_gate, c->xn, T, NULL, c->gate, IS);
        dsi__cpu_par_matmul(c, &L->sh_up, c->xn, T, NULL, c->up, IS);
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
        for (int r = 0; r < T; r++)
            dsi_swiglu(c->gate + (size_t)r * IS, c->gate + (size_t)r * IS, c->up + (size_t)r * IS, IS);
        dsi__cpu_par_matmul(c, &L->sh_down, c->gate, T, NULL, c->xn, H); /* xn is consumed: reuse it */
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int r = 0; r < T; r++) {
        float *o = c->xn + (size_t)r * H;
        if (IS == 0) memset(o, 0, (size_t)H * sizeof(float));
        for (int k = 0; k < K; k++) {
            float w = d->w[(size_t)r * K + k];
            const float *y = d->yo + (size_t)d->slot_of[(size_t)r * K + k] * H;
            for (int i = 0; i < H; i++)
                o[i] += w * y[i];
        }
    }
}
