/*
 * cpu_forward.c: one scheduler step of the Qwen2/Llama decoder on the CPU.
 *
 * All new tokens of the batch (prefill chunks and decode tokens of any number of
 * sequences) are laid out as rows of one (n_tokens, dim) activation matrix:
 *   x = embed[tokens]
 *   per layer: xn = rmsnorm(x); q,k,v = W xn (+b); rope(q, k); store k,v in the
 *              sequence's KV blocks; att = softmax(q K^T * scale) V (causal, GQA);
 *              x += Wo att; xn = rmsnorm(x); x += Wdown (silu(Wgate xn) * Wup xn)
 *   logits = lm_head rmsnorm(x[last token of each seq with want_logits])
 * A layer is two functions, attention() and mlp(), each of which reads x and
 * adds its output to it; DeepSeek-V2/V3 use mla_attention() and, in MoE layers,
 * moe() instead (their math is in cpu_deepseek_fwd.c).
 *
 * A shard (cpu_internal.h) runs the same steps over its heads, intermediate
 * rows and vocab rows: the outputs of o and down are partial sums that the
 * shard's all_reduce sums over the ranks before they are added to x, and the
 * lm_head slices go to rank 0 through gather_logits. A rank's partial sums are
 * summed in a different order than one process sums the whole row, so a
 * shard's logits match the whole model's to ~1e-6 relative, not bit for bit.
 * A shard of a DeepSeek-V2/V3 model instead runs attention and dense MLPs
 * whole on every rank (no all-reduce) and its MoE layers expert parallel
 * (cpu_deepseek_fwd.c); those sums keep one process's order.
 *
 * Threads split output rows of each matmul, (token, head) pairs of attention and
 * tokens of the elementwise steps. Each output element is computed by exactly one
 * thread with a fixed summation order, so a sequence's logits are bit-identical
 * whatever else is in the batch and however many threads run.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_internal.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"

#define ROW_CHUNK 16

static int check_batch(const struct dsi__cpu *c, const struct dsi_batch *b, int *n_tokens, char **err);
static void par_matmul(const struct dsi__cpu *c, const struct dsi_qweight *w, const float *x, int n,
                       const float *bias, float *y, int ldy);
static void lin(const struct dsi__cpu *c, const struct dsi_qweight *w, const float *x, int n, const float *bias,
                float *y, int ldy);
static void embed_tokens(struct dsi__cpu *c, const struct dsi_batch *b, int T);
static int add_reduced(struct dsi__cpu *c, float *out, int T, char **err);
static void norm_rows(struct dsi__cpu *c, const float *w, int T);
static int attention(struct dsi__cpu *c, const struct dsi__cpu_layer *L, int l, const struct dsi_batch *b,
                     int T, char **err);
static int mlp(struct dsi__cpu *c, const struct dsi__cpu_layer *L, int T, char **err);
static int lm_head(struct dsi__cpu *c, const struct dsi_batch *b, float *logits, char **err);

static int check_batch(const struct dsi__cpu *c, const struct dsi_batch *b, int *n_tokens, char **err) {
    if (!b || b->n_seqs < 0 || (b->n_seqs > 0 && !b->seqs))
        return dsi_seterr(err, DSI_EINVAL, "cpu forward: malformed batch");
    long long total = 0;
    int bs = c->be.kv_block_size;
    for (int i = 0; i < b->n_seqs; i++) {
        const struct dsi_batch_seq *s = &b->seqs[i];
        if (s->n_tokens <= 0 || !s->tokens)
            return dsi_seterr(err, DSI_EINVAL, "sequence %llu has no new tokens",
                              (unsigned long long)s->seq_id);
        if (s->pos < 0)
            return dsi_seterr(err, DSI_EINVAL, "sequence %llu has negative position %d",
                              (unsigned long long)s->seq_id, s->pos);
        long long end = (long long)s->pos + s->n_tokens;
        if (end > c->max_ctx)
            return dsi_seterr(
                err, DSI_ERANGE,
                "sequence %llu needs %lld positions but the context holds %d (max_position_embeddings "
                "or KV pool)",
                (unsigned long long)s->seq_id, end, c->max_ctx);
        long long need_blocks = (end + bs - 1) / bs;
        if (!s->block_table || s->n_blocks < need_blocks)
            return dsi_seterr(err, DSI_EINVAL, "sequence %llu: %d KV blocks given, %lld needed",
                              (unsigned long long)s->seq_id, s->n_blocks, need_blocks);
        for (long long k = 0; k < need_blocks; k++)
            if (s->block_table[k] < 0 || s->block_table[k] >= c->be.n_kv_blocks)
                return dsi_seterr(err, DSI_EINVAL, "sequence %llu: KV block id %d out of range [0, %d)",
                                  (unsigned long long)s->seq_id, s->block_table[k], c->be.n_kv_blocks);
        for (int t = 0; t < s->n_tokens; t++)
            if (s->tokens[t] < 0 || s->tokens[t] >= c->cfg->vocab_size)
                return dsi_seterr(err, DSI_ERANGE,
                                  "token id %d is out of range: the vocabulary has %d tokens", s->tokens[t],
                                  c->cfg->vocab_size);
        total += s->n_tokens;
    }
    int n_out = 0;
    for (int i = 0; i < b->n_seqs; i++)
        n_out += b->seqs[i].want_logits ? 1 : 0;
    if (c->shard.size > 1 && n_out > c->max_seqs)
        return dsi_seterr(err, DSI_ERANGE, "batch wants %d rows of logits; this shard was sized for %d",
                          n_out, c->max_seqs);
    if (total > c->max_tokens)
        return dsi_seterr(err, DSI_ERANGE, "batch has %lld tokens; this backend was sized for %d per step",
                          total, c->max_tokens);
    *n_tokens = (int)total;
    return 0;
}

/* Y(n, ldy) = X(n, cols) W^T (+ bias), rows of W split across threads in
 * chunks. X is x (f32), or, when xq is not NULL, the int8 tokens xq with their
 * scales xs (int8_mode w8a8, cpu_w8a8.c). Each chunk's rows are computed by one
 * thread alone, so the result does not depend on the thread count. */
static void par_matmul_rows(const struct dsi__cpu *c, const struct dsi_qweight *w, const float *x,
                            const int8_t *xq, const float *xs, int n, const float *bias, float *y, int ldy) {
    int n_chunks = (w->rows + ROW_CHUNK - 1) / ROW_CHUNK;
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int ch = 0; ch < n_chunks; ch++) {
        int r0 = ch * ROW_CHUNK, r1 = r0 + ROW_CHUNK < w->rows ? r0 + ROW_CHUNK : w->rows;
        if (xq)
            dsi_matmul_w8a8(w, xq, xs, n, bias, y, ldy, r0, r1);
        else
            dsi_matmul(w, x, n, bias, y, ldy, r0, r1);
    }
}

static void par_matmul(const struct dsi__cpu *c, const struct dsi_qweight *w, const float *x, int n,
                       const float *bias, float *y, int ldy) {
    par_matmul_rows(c, w, x, NULL, NULL, n, bias, y, ldy);
}

void dsi__cpu_par_matmul(const struct dsi__cpu *c, const struct dsi_qweight *w, const float *x, int n,
                         const float *bias, float *y, int ldy) {
    par_matmul(c, w, x, n, bias, y, ldy);
}

/* A layer's linear map (q, k, v, o, gate, up, down): par_matmul, or under
 * int8_mode w8a8 each token of x quantized to int8 (c->xq, c->xs) and the
 * int8 x int8 products (cpu_w8a8.c), rows split across threads as above. */
static void lin(const struct dsi__cpu *c, const struct dsi_qweight *w, const float *x, int n, const float *bias,
                float *y, int ldy) {
    if (!c->w8a8) {
        par_matmul(c, w, x, n, bias, y, ldy);
        return;
    }
    const int k = w->cols;
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int t = 0; t < n; t++)
        dsi_quantize_act_int8(x + (size_t)t * k, k, c->xq + (size_t)t * k, &c->xs[t]);
    par_matmul_rows(c, w, NULL, c->xq, c->xs, n, bias, y, ldy);
}

/* Lays out the batch's tokens as rows: (sequence, position) of each, and x = embed[tokens]. */
static void embed_tokens(struct dsi__cpu *c, const struct dsi_batch *b, int T) {
    int H = c->cfg->hidden_size, t = 0;
    for (int i = 0; i < b->n_seqs; i++)
        for (int j = 0; j < b->seqs[i].n_tokens; j++, t++) {
            c->tok_seq[t] = i;
            c->tok_pos[t] = b->seqs[i].pos + j;
        }
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int r = 0; r < T; r++) {
        const struct dsi_batch_seq *s = &b->seqs[c->tok_seq[r]];
        dsi_qweight_row_f32(&c->embed, s->tokens[c->tok_pos[r] - s->pos], c->x + (size_t)r * H);
    }
}

/* x += out, summed over the ranks first when it is a partial sum (dense TP
 * shards; an MLA shard's rows are whole: replicated attention, gathered MoE). */
static int add_reduced(struct dsi__cpu *c, float *out, int T, char **err) {
    int H = c->cfg->hidden_size, rc;
    if (c->tp_reduce && (rc = c->shard.all_reduce(c->shard.ctx, out, (size_t)T * (size_t)H, err)))
        return rc;
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int r = 0; r < T; r++) {
        float *x = c->x + (size_t)r * H, *o = out + (size_t)r * H;
        for (int i = 0; i < H; i++)
            x[i] += o[i];
    }
    return 0;
}

/* xn = rmsnorm(x) * w for the step's T token rows: every layer's pre-norm. */
static void norm_rows(struct dsi__cpu *c, const float *w, int T) {
    int H = c->cfg->hidden_size;
    float eps = c->cfg->rms_norm_eps;
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int r = 0; r < T; r++)
        dsi_rmsnorm(c->xn + (size_t)r * H, c->x + (size_t)r * H, w, H, eps);
}

/* x += Wo attention(rope(Wq xn), rope(Wk xn), Wv xn), xn = rmsnorm(x); K and V
 * of the new tokens go into the sequences' blocks of layer l first. */
static int attention(struct dsi__cpu *c, const struct dsi__cpu_layer *L, int l, const struct dsi_batch *b,
                     int T, char **err) {
    const struct dsi_model_config *cfg = c->cfg;
    int H = cfg->hidden_size, hd = cfg->head_dim, nh = c->nh, nkv = c->nkv, qd = c->q_dim, kvd = c->kv_dim;
    int bs = c->be.kv_block_size;
    float scale = 1.0f / sqrtf((float)hd);
    char *kbase = (char *)c->kv + (size_t)l * 2 * c->kv_pool_bytes;
    void *kpool = kbase, *vpool = kbase + c->kv_pool_bytes;
    norm_rows(c, L->attn_norm, T);
    lin(c, &L->wq, c->xn, T, L->bq, c->q, qd);
    lin(c, &L->wk, c->xn, T, L->bk, c->k, kvd);
    lin(c, &L->wv, c->xn, T, L->bv, c->v, kvd);
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int r = 0; r < T; r++) {
        const struct dsi_batch_seq *s = &b->seqs[c->tok_seq[r]];
        float *q = c->q + (size_t)r * qd, *k = c->k + (size_t)r * kvd;
        dsi_rope_neox(q, nh, hd, hd, c->tok_pos[r], c->inv_freq, c->attn_factor);
        dsi_rope_neox(k, nkv, hd, hd, c->tok_pos[r], c->inv_freq, c->attn_factor);
        dsi_kv_store(kpool, vpool, c->opts.kv_dtype, bs, nkv, hd, s->block_table, c->tok_pos[r], k,
                     c->v + (size_t)r * kvd);
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int th = 0; th < T * nh; th++) {
        int r = th / nh, h = th % nh;
#ifdef _OPENMP
        float *scores = c->scores + (size_t)omp_get_thread_num() * (size_t)c->max_ctx;
#else
        float *scores = c->scores;
#endif
        const struct dsi_batch_seq *s = &b->seqs[c->tok_seq[r]];
        struct dsi_attn_args a = {.n_heads = nh,
                                  .n_kv_heads = nkv,
                                  .head_dim = hd,
                                  .scale = scale,
                                  .block_size = bs,
                                  .kv_dtype = c->opts.kv_dtype,
                                  .k = kpool,
                                  .v = vpool,
                                  .block_table = s->block_table,
                                  .n_ctx = c->tok_pos[r] + 1};
        dsi_attn_head(&a, h, c->q + (size_t)r * qd + (size_t)h * hd, c->att + (size_t)r * qd + (size_t)h * hd,
                      scores);
    }
    lin(c, &L->wo, c->att, T, NULL, c->xn, H);
    return add_reduced(c, c->xn, T, err);
}

/* x += Wdown (silu(Wgate xn) * Wup xn), xn = rmsnorm(x). */
static int mlp(struct dsi__cpu *c, const struct dsi__cpu_layer *L, int T, char **err) {
    int H = c->cfg->hidden_size, I = c->n_inter;
    norm_rows(c, L->ffn_norm, T);
    lin(c, &L->w_gate, c->xn, T, NULL, c->gate, I);
    lin(c, &L->w_up, c->xn, T, NULL, c->up, I);
#ifdef _OPENMP
#pragma omp parallel for num_threads(c->n_threads) schedule(static)
#endif
    for (int r = 0; r < T; r++)
        dsi_swiglu(c->gate + (size_t)r * I, c->gate + (size_t)r * I, c->up + (size_t)r * I, I);
    lin(c, &L->w_down, c->gate, T, NULL, c->xn, H);
    return add_reduced(c, c->xn, T, err);
}

/* DeepSeek MLA: x += Wo mla(xn), xn = rmsnorm(x) (cpu_deepseek_fwd.c). */
static int mla_attention(struct dsi__cpu *c, const struct dsi__cpu_layer *L, int l, const struct dsi_batch *b,
                         int T, char **err) {
    int H = c->cfg->hidden_size;
    norm_rows(c, L->attn_norm, T);
    dsi__cpu_mla_attention(c, b, l, T);
    par_matmul(c, &L->wo, c->att, T, NULL, c->xn, H);
    return add_reduced(c, c->xn, T, err);
}

/* DeepSeek MoE: x += shared(xn) + routed experts(xn), xn = rmsnorm(x). */
static int moe(struct dsi__cpu *c, const struct dsi__cpu_layer *L, int l, int T, char **err) {
    norm_rows(c, L->ffn_norm, T);
    if (!c->ds.ep_on) {
        dsi__cpu_moe(c, l, T);
    } else {
        int rc = dsi__cpu_moe_ep(c, l, T, err);
        if (rc) return rc;
    }
    return add_reduced(c, c->xn, T, err);
}

/* Final norm of each wanted row, packed into xn rows 0..n_out-1, then lm_head:
 * straight into logits, or (shard) into lg_local and on to rank 0. */
static int lm_head(struct dsi__cpu *c, const struct dsi_batch *b, float *logits, char **err) {
    int H = c->cfg->hidden_size, n_out = 0, t = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        t += b->seqs[i].n_tokens;
        if (!b->seqs[i].want_logits) continue;
        dsi_rmsnorm(c->xn + (size_t)n_out * H, c->x + (size_t)(t - 1) * H, c->final_norm, H,
                    c->cfg->rms_norm_eps);
        n_out++;
    }
    if (n_out == 0) return 0;
    if (c->shard.size > 1) {
        par_matmul(c, &c->lm_head, c->xn, n_out, NULL, c->lg_local, c->n_vocab);
        return c->shard.gather_logits(c->shard.ctx, c->lg_local, n_out, logits, err);
    }
    if (!logits) return dsi_seterr(err, DSI_EINVAL, "cpu forward: logits wanted but no buffer given");
    par_matmul(c, &c->lm_head, c->xn, n_out, NULL, logits, c->cfg->vocab_size);
    return 0;
}

int dsi__cpu_forward(struct dsi_backend *be, const struct dsi_batch *b, float *logits, char **err) {
    struct dsi__cpu *c = be->impl;
    int T = 0, rc = check_batch(c, b, &T, err);
    if (rc) return rc;
    if (T == 0) return 0;
    embed_tokens(c, b, T);
    for (int l = 0; l < c->cfg->n_layers; l++) {
        const struct dsi__cpu_layer *L = &c->layers[l];
        rc = c->mla ? mla_attention(c, L, l, b, T, err) : attention(c, L, l, b, T, err);
        if (!rc) rc = L->moe ? moe(c, L, l, T, err) : mlp(c, L, T, err);
        if (rc) return rc;
    }
    return lm_head(c, b, logits, err);
}
