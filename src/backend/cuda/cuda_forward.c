/*
 * cuda_forward.c: one scheduler step of the CUDA backend (Qwen2 / Llama; the
 * layers of DeepSeek-V2/V3 are cuda_deepseek.c's, the rest of the step is shared).
 *
 * The host checks the batch (ids, positions, block tables) and packs the step's
 * metadata (token ids, positions, KV slots, per-sequence attention records,
 * block tables, logit rows) into one pinned buffer, sent with one async copy.
 * Then, per layer: add+RMSNorm -> qkv matmul (+bias) -> RoPE + KV store (inside
 * the attention kernel on decode steps) ->
 * attention (decode kernel when every sequence brings one token, else the
 * prefill kernel; prompts of >= 16 new tokens and <= 4096 context go through
 * two cuBLAS GEMMs and a causal softmax) -> o matmul -> add+RMSNorm -> gate|up matmul -> SwiGLU (in
 * the matmul's epilogue for one row) -> down matmul; the residual add of each block is fused into the next
 * norm. Finally the norm, a gather of the rows that want logits, and the lm_head. Decode steps (one token per
 * sequence) are captured once per batch shape in a CUDA graph and replayed, so launch gaps vanish.
 *
 * Matmuls: bf16 weights -> cuBLAS (fp32 accumulate, fp32 out); int8 weights ->
 * the decode GEMV for one row (DSI_CUDA_GEMV=old: skipped); the tiled
 * INT8 GEMM for 2..128 rows of the wide matrices (gate|up, lm_head) and 9..64
 * rows of those too big for L2 as bf16 (down; see DSI__CUDA_TILED_*); the
 * mma.sync INT8 kernel for <= 16 rows of the others; above that dequantize to
 * bf16 scratch and cuBLAS (the lm_head never dequantizes: the tiled GEMM takes
 * all its rows). Group-wise int8: dequantize + cuBLAS at any size.
 */
#include <math.h>
#include <string.h>

#include "cuda_internal.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"

/* The per-channel scale and bias a dequantize + cuBLAS matmul leaves for its
 * consumer to apply (matmul with epi: the scale_bias pass over y skipped). */
struct epilogue {
    const float *scale, *bias;
};

/* y = x W^T with cuBLAS, W bf16 (n, k) row-major; beta 0 or 1 (accumulate). */
static int gemm_bf16(struct dsi__cuda *c, const uint16_t *wt, int n, int k, const uint16_t *x, float *y,
                     int m, bool accumulate) {
    const float one = 1.f, zero = 0.f;
    return DSI_CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, wt, CUDA_R_16BF, k,
                                         x, CUDA_R_16BF, k, accumulate ? &one : &zero, y, CUDA_R_32F, n,
                                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* Runs the planned kernel of m rows of w; epi (may be NULL) receives the
 * scale and bias left for the consumer. */
static int run_planned(struct dsi__cuda *c, const struct dsi__cu_matrix *w, const struct dsi__cu_range *r,
                       const uint16_t *x, float *y, int m, struct epilogue *epi) {
    int rc = 0;
    switch ((enum dsi__cu_kernel)r->kernel) {
    case DSI__CU_CUBLAS:
        if ((rc = gemm_bf16(c, w->w, w->n, w->k, x, y, m, false))) return rc;
        break; /* bias below */
    case DSI__CU_GROUP:
        /* bf16(q * group scale) into the scratch, cuBLAS, then the same for
         * the rounding rest of the weights (accumulated); no post-scale.
         * Correct, not fast: 10 bytes moved per weight (quant_group.cu). */
        for (int part = 0; part < 2 && !rc; part++) {
            rc = dsi_cuda_dequant_int8_group_part(c->deq, w->q, w->gscale, w->n, w->k, w->group, part,
                                                  c->stream);
            if (!rc) rc = gemm_bf16(c, c->deq, w->n, w->k, x, y, m, part == 1);
        }
        if (!rc && w->bias) rc = dsi_cuda_scale_bias(y, NULL, w->bias, m, w->n, c->stream);
        return rc;
    case DSI__CU_GEMV:
        return dsi_cuda_gemv_int8_path(y, x, w->q, w->scale, w->bias, m, w->n, w->k, r->flags, c->stream);
    case DSI__CU_TILED:
        return dsi_cuda_gemm_int8_tiled_variant(y, x, w->q, w->scale, w->bias, m, w->n, w->k, &c->gemm_ws,
                                                r->flags, c->stream);
    case DSI__CU_MMA:
        return dsi_cuda_gemm_int8_variant(y, x, w->q, w->scale, w->bias, m, w->n, w->k, &c->gemm_ws, r->flags,
                                          c->stream);
    case DSI__CU_W8A8:
        return dsi__cuda_w8a8_matmul(c, w, x, y, m); /* scales and bias applied: nothing left */
    case DSI__CU_DEQ:
        if ((rc = dsi_cuda_dequant_int8(c->deq, w->q, NULL, w->n, w->k, c->stream)) ||
            (rc = gemm_bf16(c, c->deq, w->n, w->k, x, y, m, false)))
            return rc;
        break; /* scale and bias below */
    default:
        return DSI_EINTERNAL;
    }
    const float *scale = c->int8 ? w->scale : NULL;
    if (epi) {
        epi->scale = scale;
        epi->bias = w->bias;
        return 0;
    }
    return dsi_cuda_scale_bias(y, scale, w->bias, m, w->n, c->stream);
}

static int matmul(struct dsi__cuda *c, const struct dsi__cu_matrix *w, const uint16_t *x, float *y, int m,
                  struct epilogue *epi) {
    if (epi) epi->scale = epi->bias = NULL;
    if (m <= 0) return 0;
    const struct dsi__cu_plan *p = &w->plan;
    int i = 0;
    while (i < p->n && m > p->r[i].max_m)
        i++;
    if (i == p->n) {
        dsi_log(DSI_LOG_ERROR, "cuda", "matmul of %d rows (%d x %d) beyond its plan: a bug", m, w->n, w->k);
        return DSI_EINTERNAL;
    }
    int rc = run_planned(c, w, &p->r[i], x, y, m, epi);
    if (rc == DSI_EINVAL) { /* the plan checked the kernel's conditions: a bug */
        dsi_log(DSI_LOG_ERROR, "cuda", "%s/%d refused its planned matmul of %d rows (%d x %d): a bug",
                dsi__cuda_kernel_name((enum dsi__cu_kernel)p->r[i].kernel), p->r[i].flags, m, w->n, w->k);
        rc = DSI_EINTERNAL;
    }
    return rc;
}

int dsi__cuda_matmul(struct dsi__cuda *c, const struct dsi__cu_matrix *w, const uint16_t *x, float *y,
                     int m) {
    return matmul(c, w, x, y, m, NULL);
}

/* Validates the batch and fills the pinned metadata; returns token and row counts. */
static int pack(struct dsi__cuda *c, const struct dsi_batch *b, int *n_tok, int *n_rows, int *max_ctx,
                int *max_n_q, int *n_bt, char **err) {
    const int T = c->max_tokens, S = c->max_seqs, bs = c->base.kv_block_size, V = c->cfg.vocab_size;
    if (!b || b->n_seqs <= 0 || b->n_seqs > S || !b->seqs)
        return dsi_seterr(err, DSI_EINVAL, "cuda: batch of %d sequences (1..%d allowed)", b ? b->n_seqs : 0,
                          S);
    int32_t *tok = c->meta_h, *pos = tok + T, *slot = pos + T, *seqs = slot + T, *lrows = seqs + 4 * S;
    int32_t *bt = lrows + S;
    int t = 0, r = 0, nbt = 0;
    *max_ctx = 0;
    *max_n_q = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        const struct dsi_batch_seq *s = &b->seqs[i];
        if (s->n_tokens <= 0 || !s->tokens || s->pos < 0 || s->n_tokens > T - t)
            return dsi_seterr(err, DSI_EINVAL, "cuda: seq %d: %d tokens (step limit %d)", i, s->n_tokens, T);
        if (s->pos > INT32_MAX - s->n_tokens || s->n_blocks < 0 || !s->block_table ||
            (long long)s->n_blocks * bs < (long long)s->pos + s->n_tokens)
            return dsi_seterr(err, DSI_EINVAL, "cuda: seq %d: block table too short for position %d", i,
                              s->pos + s->n_tokens);
        int need = (s->pos + s->n_tokens + bs - 1) / bs; /* blocks actually read */
        if (need > c->bt_cap - nbt)
            return dsi_seterr(err, DSI_EINVAL, "cuda: block tables exceed the step limit");
        for (int j = 0; j < need; j++) {
            int blk = s->block_table[j];
            if (blk < 0 || blk >= c->base.n_kv_blocks)
                return dsi_seterr(err, DSI_EINVAL, "cuda: seq %d: block id %d out of range", i, blk);
            bt[nbt + j] = blk;
        }
        seqs[4 * i] = t;
        seqs[4 * i + 1] = s->n_tokens;
        seqs[4 * i + 2] = s->pos;
        seqs[4 * i + 3] = nbt;
        for (int j = 0; j < s->n_tokens; j++) {
            int id = s->tokens[j], p = s->pos + j;
            if (id < 0 || id >= V)
                return dsi_seterr(err, DSI_EINVAL, "cuda: seq %d: token id %d out of range", i, id);
            tok[t + j] = id;
            pos[t + j] = p;
            slot[t + j] = s->block_table[p / bs] * bs + p % bs;
        }
        t += s->n_tokens;
        nbt += need;
        if (s->want_logits) lrows[r++] = t - 1;
        if (s->pos + s->n_tokens > *max_ctx) *max_ctx = s->pos + s->n_tokens;
        if (s->n_tokens > *max_n_q) *max_n_q = s->n_tokens;
    }
    *n_tok = t;
    *n_rows = r;
    *n_bt = nbt;
    return 0;
}

/* Attention of the long prefill sequences of a step (the tiled kernel skipped
 * them): scores = Q K^T and O = P V as cuBLAS batched GEMMs per KV head (its
 * GQA group is the batch: K/V stride 0), a causal softmax in between. */
static int long_prefill(struct dsi__cuda *c, const struct dsi_cuda_attn_args *a) {
    const int nh = a->n_heads, nkv = a->n_kv_heads, hd = a->head_dim, g = nh / nkv;
    const int32_t *seqs = c->meta_h + 3 * (size_t)c->max_tokens,
                  *bt_d = c->meta_d + 3 * (size_t)c->max_tokens + 5 * (size_t)c->max_seqs;
    const float one = 1.f, zero = 0.f;
    int rc;
    for (int i = 0; i < a->n_seqs; i++) {
        int q_row = seqs[4 * i], n_q = seqs[4 * i + 1], pos = seqs[4 * i + 2], bt_off = seqs[4 * i + 3];
        if (!dsi_cuda_attn_is_long(n_q, pos, c->long_q, c->long_ctx)) continue;
        int ctx = pos + n_q;
        if ((rc = dsi_cuda_kv_gather(c->lp_k, c->lp_v, a->k_cache, a->v_cache, bt_d + bt_off, a->block_size,
                                     ctx, nkv, hd, c->stream)) ||
            (rc = dsi_cuda_q_pack(c->lp_q, a->q + (size_t)q_row * a->q_stride, a->q_stride, n_q, nh, hd,
                                  a->scale, c->stream)))
            return rc;
        for (int kvh = 0; kvh < nkv; kvh++) {
            rc = DSI_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
                c->blas, CUBLAS_OP_T, CUBLAS_OP_N, ctx, n_q, hd, &one, c->lp_k + (size_t)kvh * ctx * hd,
                CUDA_R_16BF, hd, 0, c->lp_q + (size_t)kvh * g * n_q * hd, CUDA_R_16BF, hd,
                (long long)n_q * hd, &zero, c->lp_s + (size_t)kvh * g * n_q * ctx, CUDA_R_32F, ctx,
                (long long)n_q * ctx, g, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            if (rc) return rc;
        }
        if ((rc = dsi_cuda_causal_softmax(c->lp_p, c->lp_s, nh, n_q, ctx, pos, c->stream))) return rc;
        for (int kvh = 0; kvh < nkv; kvh++) {
            rc = DSI_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
                c->blas, CUBLAS_OP_N, CUBLAS_OP_N, hd, n_q, ctx, &one, c->lp_v + (size_t)kvh * ctx * hd,
                CUDA_R_16BF, hd, 0, c->lp_p + (size_t)kvh * g * n_q * ctx, CUDA_R_16BF, ctx,
                (long long)n_q * ctx, &zero, a->out + (size_t)q_row * nh * hd + (size_t)kvh * g * hd,
                CUDA_R_16BF, nh * hd, hd, g, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            if (rc) return rc;
        }
    }
    return 0;
}

/* o and down: their output is delta, which only the next add + RMSNorm reads,
 * so on one GPU a dequantize + cuBLAS product leaves its per-channel scale
 * and bias to that norm (one fp32 pass over delta fewer); under tensor
 * parallel the partial sums go to the all-reduce complete. */
static int delta_matmul(struct dsi__cuda *c, const struct dsi__cu_matrix *w, const uint16_t *x, int T) {
    struct epilogue epi = {NULL, NULL};
    int rc = matmul(c, w, x, c->delta, T, c->tp_size == 1 ? &epi : NULL);
    c->delta_scale = epi.scale; /* under TP epi stays empty */
    c->delta_bias = epi.bias;
    return rc;
}

/* x += delta (with the epilogue delta_matmul left, then cleared); xn = norm(x) * w */
static int add_norm(struct dsi__cuda *c, const float *delta, const float *w, int T) {
    const float *ds = delta ? c->delta_scale : NULL, *db = delta ? c->delta_bias : NULL;
    c->delta_scale = c->delta_bias = NULL;
    return dsi_cuda_add_rmsnorm_epi(c->x, delta, ds, db, w, c->xn, T, c->cfg.hidden_size, c->cfg.rms_norm_eps,
                                    c->stream);
}

int dsi__cuda_add_norm(struct dsi__cuda *c, const float *delta, const float *w, int T) {
    return add_norm(c, delta, w, T);
}

int dsi__cuda_delta_matmul(struct dsi__cuda *c, const struct dsi__cu_matrix *w, const uint16_t *x, int T) {
    return delta_matmul(c, w, x, T);
}

static int layer(struct dsi__cuda *c, int il, int T, const struct dsi_cuda_attn_args *proto,
                 const int32_t *pos_d, const int32_t *slot_d) {
    const struct dsi_model_config *cfg = &c->cfg;
    const struct dsi__cu_layer *ly = &c->layers[il];
    const int hd = cfg->head_dim, nq = cfg->n_heads * hd, nk = cfg->n_kv_heads * hd;
    const int stride = nq + 2 * nk;
    cudaStream_t s = c->stream;
    int rc;
    uint16_t *kc = c->kv + (size_t)il * 2 * c->kv_layer_elems, *vc = kc + c->kv_layer_elems;
    /* the residual add of the previous layer's MLP is fused here (tensor
     * parallel: into that layer's all-reduce, which also wrote xn) */
    if ((il == 0 || c->tp_size == 1) && (rc = add_norm(c, il ? c->delta : NULL, ly->ln1, T))) return rc;
    if ((rc = dsi__cuda_matmul(c, &ly->qkv, c->xn, c->qkv, T))) return rc;
    struct dsi_cuda_attn_args a = *proto;
    a.q = c->qkv;
    a.q_stride = stride;
    a.k_cache = kc;
    a.v_cache = vc;
    a.out = c->attn;
    if (a.max_n_q == 1 && c->sw.fuse_rope) { /* decode: RoPE and the KV store inside the attention kernel */
        if ((rc = dsi_cuda_attn_decode_rope(&a, c->inv_freq, s))) return rc;
    } else {
        if ((rc = dsi_cuda_rope_kv_store(c->qkv, stride, T, cfg->n_heads, cfg->n_kv_heads, hd, pos_d,
                                         c->inv_freq, kc, vc, slot_d, s)))
            return rc;
        rc = a.max_n_q == 1 ? dsi_cuda_attn_decode(&a, s) : dsi_cuda_attn_prefill(&a, s);
        if (rc) return rc;
    }
    if (a.max_n_q > 1 && c->long_q > 0 && (rc = long_prefill(c, &a))) return rc;
    /* tensor parallel: o and down give partial sums over this rank's heads and
     * rows; the all-reduce comes with the residual add and the next norm */
    if ((rc = delta_matmul(c, &ly->o, c->attn, T))) return rc;
    rc = c->tp_size > 1 ? dsi__cuda_tp_reduce_norm(c, ly->ln2, T) : add_norm(c, c->delta, ly->ln2, T);
    if (rc) return rc;
    /* one row: SwiGLU in the tensor-core GEMV's epilogue where the plan says so */
    const struct dsi__cu_matrix *gu = &ly->gate_up;
    if (T == 1 && gu->plan.swiglu1) {
        rc = dsi_cuda_gemv_int8_swiglu(c->act, c->xn, gu->q, gu->scale, gu->bias, gu->n, gu->k, DSI_GEMV_TC,
                                       s);
        if (rc == DSI_EINVAL) {
            dsi_log(DSI_LOG_ERROR, "cuda", "gemv-int8 swiglu refused its planned gate|up (%d x %d): a bug",
                    gu->n, gu->k);
            rc = DSI_EINTERNAL;
        }
    } else {
        /* a dequantize + cuBLAS product (prefill, > 128 rows) leaves its scale
         * for swiglu to apply while it reads gu anyway: one pass over the
         * (T, 2I) fp32 rows fewer (620 MB per layer for a 2k prompt, 7B) */
        struct epilogue epi;
        if ((rc = matmul(c, gu, c->xn, c->gu, T, &epi))) return rc;
        rc =
            dsi_cuda_swiglu(c->act, c->gu, T, cfg->intermediate_size, c->gate_up_il8, epi.scale, epi.bias, s);
    }
    if (rc) return rc;
    if ((rc = delta_matmul(c, &ly->down, c->act, T))) return rc;
    if (c->tp_size == 1) return 0; /* the next layer's first norm (or the final one) adds it */
    return dsi__cuda_tp_reduce_norm(c, il + 1 < cfg->n_layers ? c->layers[il + 1].ln1 : c->final_norm, T);
}

/* Everything of one step after the metadata copy: embed, layers, logits. */
static int run_model(struct dsi__cuda *c, int T, int R, const struct dsi_cuda_attn_args *proto) {
    const struct dsi_model_config *cfg = &c->cfg;
    const int Tc = c->max_tokens, S = c->max_seqs;
    int32_t *tok_d = c->meta_d, *pos_d = tok_d + Tc, *slot_d = pos_d + Tc, *lrows_d = slot_d + Tc + 4 * S;
    int rc;
    c->delta_scale = c->delta_bias = NULL;
    if ((rc = dsi_cuda_embed(c->x, c->embed, tok_d, T, cfg->hidden_size, cfg->vocab_size, c->stream)))
        return rc;
    for (int il = 0; il < cfg->n_layers; il++)
        if ((rc = c->mla ? dsi__cuda_mla_layer(c, il, T, proto, pos_d, slot_d)
                         : layer(c, il, T, proto, pos_d, slot_d)))
            return rc;
    /* with no logits wanted the last down product stays in delta, its scale
     * pending (delta_scale): x is then not the final residual stream */
    if (R == 0) return 0;
    /* tensor parallel: the last layer's all-reduce already applied the final norm */
    if (c->tp_size == 1 && (rc = add_norm(c, c->delta, c->final_norm, T))) return rc;
    if ((rc = dsi_cuda_gather_rows(c->xsel, c->xn, lrows_d, R, cfg->hidden_size, c->stream))) return rc;
    if (c->tp_size == 1) return dsi__cuda_matmul(c, &c->lm_head, c->xsel, c->logits, R);
    /* vocab parallel: this rank's rows, then every rank's slices into c->logits */
    if ((rc = dsi__cuda_matmul(c, &c->lm_head, c->xsel, c->lg_local, R))) return rc;
    return dsi__cuda_tp_logits(c, R);
}

/* Decode steps replay a CUDA graph per (sequences, logit rows, attention
 * splits): ~10 launches per layer become one. The graph reads the step's
 * metadata from the same device buffer each time; the split count is fixed per
 * graph (any context is correct with any split count). */
static int run_decode_graph(struct dsi__cuda *c, int T, int R, const struct dsi_cuda_attn_args *proto) {
    struct dsi__cu_graph *gr = NULL;
    for (int i = 0; i < c->n_graphs && !gr; i++)
        if (c->graphs[i].n_seqs == T && c->graphs[i].n_rows == R &&
            c->graphs[i].n_splits == proto->n_splits) {
            /* most recently used last, so eviction drops the least recently used */
            struct dsi__cu_graph hit = c->graphs[i];
            memmove(&c->graphs[i], &c->graphs[i + 1], sizeof hit * (size_t)(c->n_graphs - 1 - i));
            c->graphs[c->n_graphs - 1] = hit;
            gr = &c->graphs[c->n_graphs - 1];
        }
    if (!gr) {
        if (c->n_graphs == DSI__CUDA_MAX_GRAPHS) { /* drop the least recently used shape */
            cudaGraphExecDestroy(c->graphs[0].exec);
            memmove(&c->graphs[0], &c->graphs[1], sizeof c->graphs[0] * (DSI__CUDA_MAX_GRAPHS - 1));
            c->n_graphs--;
        }
        cudaGraph_t graph = NULL;
        int rc = DSI_CUDA_CHECK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeRelaxed));
        if (rc) return rc;
        int run_rc = run_model(c, T, R, proto);
        rc = DSI_CUDA_CHECK(cudaStreamEndCapture(c->stream, &graph));
        if (run_rc || rc) {
            if (graph) cudaGraphDestroy(graph);
            return run_rc ? run_rc : rc;
        }
        cudaGraphExec_t exec = NULL;
        /* the WithFlags form (CUDA 11.4 on) is one signature in CUDA 11 and 12+, where
         * plain cudaGraphInstantiate changed its arguments: the Debian-packaged 11.8
         * toolkit (deploy/docker/Dockerfile.cuda) builds this file too */
        rc = DSI_CUDA_CHECK(cudaGraphInstantiateWithFlags(&exec, graph, 0));
        cudaGraphDestroy(graph);
        if (rc) return rc;
        gr = &c->graphs[c->n_graphs++];
        gr->n_seqs = T;
        gr->n_rows = R;
        gr->n_splits = proto->n_splits;
        gr->exec = exec;
    }
    return DSI_CUDA_CHECK(cudaGraphLaunch(gr->exec, c->stream));
}

/* After a failed step: whether the context still runs work. A non-sticky
 * error (out of memory) is cleared and the stream drains; a sticky one (an
 * illegal address, a launch failure) makes every later call fail. */
static bool context_usable(struct dsi__cuda *c) {
    cudaGetLastError();
    if (DSI_CUDA_CHECK(cudaStreamSynchronize(c->stream))) return false;
    return cudaPeekAtLastError() == cudaSuccess;
}

int dsi__cuda_step(struct dsi__cuda *c, const struct dsi_batch *b, int *n_rows, char **err) {
    *n_rows = 0;
    if (c->dead) return dsi_seterr(err, DSI_ECUDA, "cuda: backend disabled by an earlier CUDA error");
    const struct dsi_model_config *cfg = &c->cfg;
    int T = 0, R = 0, max_ctx = 0, max_n_q = 0, nbt = 0;
    int rc = pack(c, b, &T, &R, &max_ctx, &max_n_q, &nbt, err);
    if (rc) return rc;
    const int Tc = c->max_tokens, S = c->max_seqs;
    int32_t *seqs_d = c->meta_d + 3 * Tc, *bt_d = seqs_d + 5 * S;
    size_t ints = 3 * (size_t)Tc + 5 * (size_t)S + (size_t)nbt;
    /* DeepSeek: not where the MoE groups its rows on the host mid-step */
    const bool graph = c->sw.graphs && max_n_q == 1 && (!c->mla || dsi__cuda_mla_graphable(c, T));
    /* a graph fixes the attention split count; it is chosen for the context
     * rounded up to a power of two, so a growing context re-captures a handful
     * of times (any split count is correct for any context): at batch 1, 4
     * splits take 8.5 us per layer at context 128 where 64 take 10.2, and 32
     * take 9.5 us at 2048 where 16 take 12.7 (bench_cuda_nodes, bench/RESULTS.md) */
    int split_ctx = max_ctx;
    if (graph)
        for (split_ctx = 32; split_ctx < max_ctx && split_ctx < (1 << 30);)
            split_ctx <<= 1;
    struct dsi_cuda_attn_args proto = {
        .seqs = (const struct dsi_cuda_attn_seq *)seqs_d,
        .n_seqs = b->n_seqs,
        .block_tables = bt_d,
        .block_size = c->base.kv_block_size,
        .n_heads = cfg->n_heads,
        .n_kv_heads = cfg->n_kv_heads,
        .head_dim = cfg->head_dim,
        .scale = 1.f / sqrtf((float)cfg->head_dim),
        .max_ctx = max_ctx,
        .max_n_q = max_n_q,
        .n_splits = dsi_cuda_attn_decode_splits(b->n_seqs, cfg->n_kv_heads, split_ctx, c->n_sm),
        .work = c->attn_work,
        .work_bytes = c->attn_work_bytes,
        .long_q = c->long_q,
        .long_ctx = c->long_ctx,
    };
    if (proto.n_splits > DSI__CUDA_MAX_SPLITS) proto.n_splits = DSI__CUDA_MAX_SPLITS;
    if (c->mla) proto.n_splits = dsi__cuda_mla_splits(c, b->n_seqs, split_ctx);
    if ((rc = DSI_CUDA_CHECK(
             cudaMemcpyAsync(c->meta_d, c->meta_h, ints * 4, cudaMemcpyHostToDevice, c->stream))))
        goto fail;
    if ((rc = graph ? run_decode_graph(c, T, R, &proto) : run_model(c, T, R, &proto))) goto fail;
    /* the pinned metadata is rewritten by the next step: wait for the copy */
    if ((rc = DSI_CUDA_CHECK(cudaStreamSynchronize(c->stream)))) goto fail;
    c->failed_steps = 0;
    *n_rows = R;
    return 0;
fail:
    /* the batch was checked by pack(), so any failure here is CUDA's or a
     * bug. One GPU whose context still works (a graph that could not be
     * instantiated for want of memory, another process's allocation) fails only
     * this step; a sticky error, a shard (its peers wait in collectives) or
     * DSI__CUDA_MAX_FAILED_STEPS failures in a row mark the backend dead. */
    if (c->tp_size == 1 && ++c->failed_steps < DSI__CUDA_MAX_FAILED_STEPS && context_usable(c)) {
        dsi_log(DSI_LOG_WARN, "cuda",
                "step failed (%s) on a healthy device: its requests fail, the next step runs (%d in a row; %d "
                "mark the backend dead). Out of memory at run time: lower kv_gpu_fraction for more headroom and "
                "check nvidia-smi for other processes on device %d",
                dsi_strerror(rc), c->failed_steps, DSI__CUDA_MAX_FAILED_STEPS, c->device);
        return dsi_seterr(err, rc, "cuda: step failed (%s); the device is still usable", dsi_strerror(rc));
    }
    c->dead = true;
    return dsi_seterr(err, rc, "cuda: step failed (%s); the backend is dead (see the log for the failing call)",
                      dsi_strerror(rc));
}
