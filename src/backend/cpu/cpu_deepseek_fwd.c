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
 *
 * Expert parallel (a shard of an MoE model, dsi__cpu_moe_ep): attention is
 * replicated, so every rank holds every token's xn. Each rank routes its slice
 * of the step's tokens (dsi_ep_token_range), the plan (include/dsinfer/ep.h)
 * sends each assignment's row to the rank that holds the expert, that rank
 * runs its experts over the rows it received (grouped by expert), the outputs
 * come back the reverse way, and the slice's tokens add shared + routed
 * outputs in the same order as one process does; an all-gather then gives
 * every rank every token's rows. The matmuls are per row and the combine
 * order is the same, so the ranks' result equals one process's.
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
    void *pool = (char *)c->kv + (size_t)l * c->kv_pool_bytes;
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

/* Router logits and top-k of n token rows of x: d->idx and d->w rows 0..n-1. */
static void route_rows(struct dsi__cpu *c, const struct dsi__cpu_layer *L, const float *x, int n) {
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
    for (int r = 0; r < n; r++) {
        float *lg = d->logits + (size_t)r * E;
        const float *xr = x + (size_t)r * H;
        for (int e = 0; e < E; e++)
            lg[e] = dsi_dot_f32(L->router + (size_t)e * H, xr, H);
        dsi_moe_route(&rt, lg, d->idx + (size_t)r * K, d->w + (size_t)r * K,
                      d->route_scratch + (size_t)thread_id() * d->route_scratch_n);
    }
}

/* Routes every token and groups the (token, k) assignments by expert:
 * count[e]..count[e+1] are expert e's positions, tok_of[p] their tokens
 * (ascending), slot_of[t*K + k] the position of token t's k-th choice. */
static void route_and_group(struct dsi__cpu *c, const struct dsi__cpu_layer *L, int T) {
    struct dsi__cpu_ds *d = &c->ds;
    int E = c->cfg->n_routed_experts, K = c->cfg->num_experts_per_tok;
    route_rows(c, L, c->xn, T);
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

/* Expert e's SwiGLU FFN over n rows: xg (n, H) -> y (n, H); gg, ug (n, I) scratch. */
static void run_expert(const struct dsi__cpu *c, const struct dsi__cpu_layer *L, int e, const float *xg,
                       int n, float *gg, float *ug, float *y) {
    int H = c->cfg->hidden_size, I = c->cfg->moe_intermediate_size;
    dsi_matmul(&L->ex_gate[e], xg, n, NULL, gg, I, 0, I);
    dsi_matmul(&L->ex_up[e], xg, n, NULL, ug, I, 0, I);
    for (int i = 0; i < n; i++)
        dsi_swiglu(gg + (size_t)i * I, gg + (size_t)i * I, ug + (size_t)i * I, I);
    dsi_matmul(&L->ex_down[e], gg, n, NULL, y, H, 0, H);
}

/* out (n, H) = the shared experts of x's n rows, or zeros without any. out may
 * be x itself (x is consumed by the first two matmuls). */
static void shared_experts(struct dsi__cpu *c, const struct dsi__cpu_layer *L, const float *x, int n,
                           float *out) {
    int H = c->cfg->hidden_size, IS = L->sh_gate.rows;
    if (IS == 0) {
        memset(out, 0, (size_t)n * (size_t)H * sizeof(float));
        return;
    }
    /* rows of IS floats (the down projection reads them contiguous) */
    dsi__cpu_par_matmul(c, &L->sh_gate, x, n, NULL, c->gate, IS);
    dsi__cpu_par_matmul(c, &L->sh_up, x, n, NULL, c->up, IS);
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int r = 0; r < n; r++)
        dsi_swiglu(c->gate + (size_t)r * IS, c->gate + (size_t)r * IS, c->up + (size_t)r * IS, IS);
    dsi__cpu_par_matmul(c, &L->sh_down, c->gate, n, NULL, out, H);
}

/* o (n, H) += sum over k in selection order of w[t*K + k] * y[slot[t*K + k]]:
 * the one combine order of both paths. */
static void combine(const struct dsi__cpu *c, float *o, int n, const float *y, const int32_t *slot) {
    int K = c->cfg->num_experts_per_tok, H = c->cfg->hidden_size;
    const float *wt = c->ds.w;
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int r = 0; r < n; r++) {
        float *orow = o + (size_t)r * H;
        for (int k = 0; k < K; k++) {
            float w = wt[(size_t)r * K + k];
            const float *yr = y + (size_t)slot[(size_t)r * K + k] * H;
            for (int i = 0; i < H; i++)
                orow[i] += w * yr[i];
        }
    }
}

void dsi__cpu_moe(struct dsi__cpu *c, int l, int T) {
    const struct dsi_model_config *cfg = c->cfg;
    const struct dsi__cpu_layer *L = &c->layers[l];
    struct dsi__cpu_ds *d = &c->ds;
    int E = cfg->n_routed_experts, K = cfg->num_experts_per_tok, H = cfg->hidden_size;
    int I = cfg->moe_intermediate_size;
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
        run_expert(c, L, e, d->xg + (size_t)p0 * H, n, d->gg + (size_t)p0 * I, d->ug + (size_t)p0 * I,
                   d->yo + (size_t)p0 * H);
    }
    shared_experts(c, L, c->xn, T, c->xn);
    combine(c, c->xn, T, d->yo, d->slot_of);
}

/* Copies n rows of H floats: dst[i] = src[map[i]] (gather) or dst[map[i]] = src[i] (scatter). */
static void move_rows(const struct dsi__cpu *c, float *dst, const float *src, const int32_t *map, int n,
                      bool gather) {
    size_t H = (size_t)c->cfg->hidden_size;
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int i = 0; i < n; i++) {
        size_t from = gather ? (size_t)map[i] : (size_t)i, to = gather ? (size_t)i : (size_t)map[i];
        memcpy(dst + to * H, src + from * H, H * sizeof(float));
    }
}

int dsi__cpu_moe_ep(struct dsi__cpu *c, int l, int T, char **err) {
    const struct dsi_model_config *cfg = c->cfg;
    const struct dsi__cpu_layer *L = &c->layers[l];
    const struct dsi_shard *sh = &c->shard;
    struct dsi__cpu_ds *d = &c->ds;
    struct dsi_ep_plan *p = &d->ep;
    int H = cfg->hidden_size, I = cfg->moe_intermediate_size, rc;
    for (int r = 0; r < sh->size; r++) {
        int lo, hi;
        dsi_ep_token_range(T, sh->size, r, &lo, &hi);
        d->tok_rows[r] = hi - lo;
        d->tok_displs[r] = lo;
    }
    int n = d->tok_rows[sh->rank];
    const float *xs = c->xn + (size_t)d->tok_displs[sh->rank] * H;
    route_rows(c, L, xs, n);
    if ((rc = dsi_ep_plan_send(p, d->idx, n, err))) return rc;
    move_rows(c, d->ep_send, xs, p->send_tok, p->n_send, true);
    if ((rc = sh->all_to_all_counts(sh->ctx, p->send_count, p->recv_count, p->n_experts, err)) ||
        (rc = dsi_ep_plan_recv(p, err)) ||
        (rc = sh->all_to_all_rows(sh->ctx, d->ep_send, p->send_rows, p->send_displs, d->ep_recv, p->recv_rows,
                                  p->recv_displs, H, err)))
        return rc;
    move_rows(c, d->xg, d->ep_recv, p->grp_row, p->n_recv, true);
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(dynamic, 1)
#endif
    for (int j = 0; j < p->n_local; j++) {
        int g0 = p->grp_start[j], m = p->grp_start[j + 1] - g0;
        if (m <= 0) continue;
        run_expert(c, L, p->e0 + j, d->xg + (size_t)g0 * H, m, d->gg + (size_t)g0 * I, d->ug + (size_t)g0 * I,
                   d->yo + (size_t)g0 * H);
    }
    /* outputs into the receive layout, and back to their senders' send layout */
    move_rows(c, d->ep_recv, d->yo, p->grp_row, p->n_recv, false);
    if ((rc = sh->all_to_all_rows(sh->ctx, d->ep_recv, p->recv_rows, p->recv_displs, d->ep_send, p->send_rows,
                                  p->send_displs, H, err)))
        return rc;
    shared_experts(c, L, xs, n, d->yo);
    combine(c, d->yo, n, d->ep_send, p->pos_of);
    return sh->all_gather_rows(sh->ctx, d->yo, c->xn, d->tok_rows, d->tok_displs, H, err);
}
