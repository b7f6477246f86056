/*
 * tp_forward.c: one rank's part of a tensor-parallel scheduler step. Every rank
 * runs this with the same batch (rank 0's, or the decoded broadcast copy):
 *
 *   x = embed[tokens]                                   (replicated)
 *   per layer: xn = rmsnorm(x)                          (replicated)
 *              q,k,v = W_shard xn (+b_shard)            (column parallel: own heads)
 *              rope, store k,v in the local KV pool, attention over own heads
 *              o = Wo[:, own cols] att; Allreduce(o, SUM); x += o   (row parallel)
 *              xn = rmsnorm(x); g = swiglu(Wgate_s xn, Wup_s xn)
 *              d = Wdown[:, own cols] g; Allreduce(d, SUM); x += d
 *   logits[:, v0:v1] = lm_head_shard rmsnorm(x_last)   (vocab parallel, Gatherv to rank 0)
 *
 * The math is the CPU backend's (cpu_ops.h) over the shard; only the order of
 * the sums of O and down differs (partial sums per rank, then MPI's sum), so the
 * logits match the single-process run to ~1e-5 relative, not bit for bit.
 */
#ifdef DSI_HAVE_MPI
#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "tp_internal.h"

#define ROW_CHUNK 16

static void par_matmul(const struct dsi__tp *t, const struct dsi_qweight *w, const float *x, int n,
                       const float *bias, float *y, int ldy);
static int allreduce(struct dsi__tp *t, float *buf, int n, const char *what, char **err);
static int gather_logits(struct dsi__tp *t, int n_out, float *logits, char **err);

static void par_matmul(const struct dsi__tp *t, const struct dsi_qweight *w, const float *x, int n,
                       const float *bias, float *y, int ldy) {
    int n_chunks = (w->rows + ROW_CHUNK - 1) / ROW_CHUNK;
#ifdef _OPENMP
#pragma omp parallel for num_threads(t->n_threads) schedule(static)
#endif
    for (int ch = 0; ch < n_chunks; ch++) {
        int r0 = ch * ROW_CHUNK, r1 = r0 + ROW_CHUNK < w->rows ? r0 + ROW_CHUNK : w->rows;
        dsi_matmul(w, x, n, bias, y, ldy, r0, r1);
    }
    (void)t;
}

static int allreduce(struct dsi__tp *t, float *buf, int n, const char *what, char **err) {
    int mrc = MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, t->comm);
    return mrc == MPI_SUCCESS ? 0 : dsi__dist_mpierr(mrc, what, err);
}

/* Rank r's lg_local is (n_out, v1-v0); rank 0 receives every rank's block into
 * lg_all (rank-major) and scatters them into logits (n_out, vocab). */
static int gather_logits(struct dsi__tp *t, int n_out, float *logits, char **err) {
    int *counts = t->g_counts, *displs = t->g_displs;
    for (int r = 0; r < t->size; r++) {
        counts[r] = t->v_counts[r] * n_out;
        displs[r] = t->v_displs[r] * n_out;
    }
    int mrc = MPI_Gatherv(t->lg_local, (t->v1 - t->v0) * n_out, MPI_FLOAT, t->lg_all, counts, displs,
                          MPI_FLOAT, 0, t->comm);
    if (mrc != MPI_SUCCESS) return dsi__dist_mpierr(mrc, "gather of logits", err);
    if (t->rank != 0) return 0;
    int V = t->cfg->vocab_size;
    for (int r = 0; r < t->size; r++) {
        const float *blk = t->lg_all + displs[r];
        int w = t->v_counts[r], v0 = t->v_displs[r];
        for (int o = 0; o < n_out; o++)
            memcpy(logits + (size_t)o * (size_t)V + (size_t)v0, blk + (size_t)o * (size_t)w,
                   (size_t)w * sizeof(float));
    }
    return 0;
}

int dsi__tp_forward_local(struct dsi__tp *t, const struct dsi_batch *b, float *logits, char **err) {
    /* a CUDA shard runs the whole step itself, NCCL inside (tp_cuda.c) */
    if (t->gpu) return t->gpu->ops->forward(t->gpu, b, logits, err);
    const struct dsi_model_config *cfg = t->cfg;
    int T = 0;
    for (int i = 0; i < b->n_seqs; i++)
        T += b->seqs[i].n_tokens;
    if (T == 0) return 0;
    int H = cfg->hidden_size, I = t->i1 - t->i0, hd = cfg->head_dim;
    int nh = t->nh_l, nkv = t->nkv_l, qd = t->q_l, kvd = t->kv_l;
    float eps = cfg->rms_norm_eps, scale = 1.0f / sqrtf((float)hd);
    int bs = t->be.kv_block_size, rc;

    int r = 0;
    for (int i = 0; i < b->n_seqs; i++)
        for (int j = 0; j < b->seqs[i].n_tokens; j++, r++) {
            t->tok_seq[r] = i;
            t->tok_pos[r] = b->seqs[i].pos + j;
        }
    for (r = 0; r < T; r++) {
        const struct dsi_batch_seq *s = &b->seqs[t->tok_seq[r]];
        dsi_qweight_row_f32(&t->embed, s->tokens[t->tok_pos[r] - s->pos], t->x + (size_t)r * H);
    }
    for (int l = 0; l < cfg->n_layers; l++) {
        const struct dsi__tp_layer *L = &t->layers[l];
        char *kbase = (char *)t->kv + (size_t)l * 2 * t->kv_layer_elems * t->kv_elt;
        void *kpool = kbase, *vpool = kbase + t->kv_layer_elems * t->kv_elt;
        for (r = 0; r < T; r++)
            dsi_rmsnorm(t->xn + (size_t)r * H, t->x + (size_t)r * H, L->attn_norm, H, eps);
        par_matmul(t, &L->wq, t->xn, T, L->bq, t->q, qd);
        par_matmul(t, &L->wk, t->xn, T, L->bk, t->k, kvd);
        par_matmul(t, &L->wv, t->xn, T, L->bv, t->v, kvd);
        for (r = 0; r < T; r++) {
            const struct dsi_batch_seq *s = &b->seqs[t->tok_seq[r]];
            float *q = t->q + (size_t)r * qd, *k = t->k + (size_t)r * kvd;
            dsi_rope_neox(q, nh, hd, hd, t->tok_pos[r], t->inv_freq, t->attn_factor);
            dsi_rope_neox(k, nkv, hd, hd, t->tok_pos[r], t->inv_freq, t->attn_factor);
            dsi_kv_store(kpool, vpool, t->opts.kv_dtype, bs, nkv, hd, s->block_table, t->tok_pos[r], k,
                         t->v + (size_t)r * kvd);
        }
#ifdef _OPENMP
#pragma omp parallel for num_threads(t->n_threads) schedule(static)
#endif
        for (int th = 0; th < T * nh; th++) {
            int rr = th / nh, h = th % nh;
#ifdef _OPENMP
            float *scores = t->scores + (size_t)omp_get_thread_num() * (size_t)t->max_ctx;
#else
            float *scores = t->scores;
#endif
            const struct dsi_batch_seq *s = &b->seqs[t->tok_seq[rr]];
            struct dsi_attn_args a = {.n_heads = nh,
                                      .n_kv_heads = nkv,
                                      .head_dim = hd,
                                      .scale = scale,
                                      .block_size = bs,
                                      .kv_dtype = t->opts.kv_dtype,
                                      .k = kpool,
                                      .v = vpool,
                                      .block_table = s->block_table,
                                      .n_ctx = t->tok_pos[rr] + 1};
            dsi_attn_head(&a, h, t->q + (size_t)rr * qd + (size_t)h * hd,
                          t->att + (size_t)rr * qd + (size_t)h * hd, scores);
        }
        par_matmul(t, &L->wo, t->att, T, NULL, t->xn, H);
        if ((rc = allreduce(t, t->xn, T * H, "all-reduce after attention", err))) return rc;
        for (r = 0; r < T; r++) {
            float *x = t->x + (size_t)r * H, *o = t->xn + (size_t)r * H;
            for (int i = 0; i < H; i++)
                x[i] += o[i];
            dsi_rmsnorm(o, x, L->ffn_norm, H, eps);
        }
        par_matmul(t, &L->w_gate, t->xn, T, NULL, t->gate, I);
        par_matmul(t, &L->w_up, t->xn, T, NULL, t->up, I);
        for (r = 0; r < T; r++)
            dsi_swiglu(t->gate + (size_t)r * I, t->gate + (size_t)r * I, t->up + (size_t)r * I, I);
        par_matmul(t, &L->w_down, t->gate, T, NULL, t->xn, H);
        if ((rc = allreduce(t, t->xn, T * H, "all-reduce after the MLP", err))) return rc;
        for (r = 0; r < T; r++) {
            float *x = t->x + (size_t)r * H, *o = t->xn + (size_t)r * H;
            for (int i = 0; i < H; i++)
                x[i] += o[i];
        }
    }
    int n_out = 0;
    r = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        r += b->seqs[i].n_tokens;
        if (!b->seqs[i].want_logits) continue;
        dsi_rmsnorm(t->xn + (size_t)n_out * H, t->x + (size_t)(r - 1) * H, t->final_norm, H, eps);
        n_out++;
    }
    if (n_out == 0) return 0;
    par_matmul(t, &t->lm_head, t->xn, n_out, NULL, t->lg_local, t->v1 - t->v0);
    return gather_logits(t, n_out, logits, err);
}
#else
typedef int dsi__tp_forward_needs_mpi;
#endif
