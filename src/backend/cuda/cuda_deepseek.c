/*
 * cuda_deepseek.c: one DeepSeek-V2/V3 decoder layer of a CUDA step (MLA
 * attention + dense MLP or MoE), the same math as the CPU reference
 * (cpu_deepseek_fwd.c, whose comment gives the formulas).
 *
 * MLA, absorbed form over the latent cache (kernels/mla.cu):
 *   q      = q_b(rmsnorm(q_a(xn))) or q_proj(xn)          fp32 (T, nh*(nope+rope))
 *   kva    = kv_a_proj_with_mqa(xn)                        fp32 (T, R+rope)
 *   mla_kv_rope: latent norm, RoPE of k_pe and q_pe, bf16 cache store
 *   q_lat  = W_UK^T q_nope per head                        cuBLAS SGEMM, batch nh
 *   o_lat  = softmax(scale (q_lat.c_kv + q_pe.k_pe)) c_kv  mla_attn (prefill chunks
 *            of >= DSI__CUDA_MLA_LONG_Q tokens: two cuBLAS GEMMs + causal softmax)
 *   att    = W_UV o_lat per head                           cuBLAS SGEMM, then bf16
 *   delta  = o_proj(att)
 * MoE (kernels/moe.cu): the router kernel picks top_k experts per token from
 * the fp32 normed residual; the shared experts write delta; then the routed
 * experts, two ways: steps of at most DSI__CUDA_MOE_DEV_ROWS (token, expert)
 * rows with INT8 per-channel weights group on the device and run one grouped
 * GEMV per matrix kind (no host round trip: decode steps are CUDA graphs);
 * larger steps (prefill) and other weights read the choices back (one sync
 * per MoE layer), group them on the host with the CPU's counting sort, gather
 * the rows and give each used expert its planned gate|up, SwiGLU and down.
 * moe_combine adds each token's k outputs in selection order. A token's
 * result does not depend on the other tokens of the step.
 */
#include <string.h>

#include "cuda_internal.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"

#define MLA_NORM_EPS 1e-6f /* q_a / kv_a norms: HF builds them without rms_norm_eps */

/* The long prefill sequences of a step (mla_attn skipped their rows), on the
 * tensor cores: per sequence the latent rows gathered from the cache, S_h =
 * [q_lat_h | q_pe_h] scale . [c_kv | k_pe]^T for all heads as one batched GEMM
 * (the latent shared: stride 0), the causal softmax, O_lat_h = P_h . c_kv. bf16
 * operands with fp32 sums, as the dense models' long prefill. */
static int mla_long_prefill(struct dsi__cuda *c, const struct dsi_cuda_attn_args *proto, const uint16_t *pool,
                            float scale) {
    const struct dsi_model_config *cfg = &c->cfg;
    struct dsi__cu_ds *d = &c->ds;
    const int nh = cfg->n_heads, R = cfg->kv_lora_rank, rope = cfg->qk_rope_head_dim, W = R + rope;
    const int nope = cfg->qk_nope_head_dim, qs = nh * (nope + rope);
    const int32_t *seqs = c->meta_h + 3 * (size_t)c->max_tokens,
                  *bt_d = c->meta_d + 3 * (size_t)c->max_tokens + 5 * (size_t)c->max_seqs;
    const float one = 1.f, zero = 0.f;
    int rc;
    for (int i = 0; i < proto->n_seqs; i++) {
        const int q_row = seqs[4 * i], n_q = seqs[4 * i + 1], pos = seqs[4 * i + 2], bt_off = seqs[4 * i + 3];
        if (!dsi_cuda_attn_is_long(n_q, pos, d->long_q, d->long_ctx)) continue;
        const int ctx = pos + n_q;
        if ((rc = dsi_cuda_kv_gather(d->lp_lat, d->lp_lat, pool, pool, bt_d + bt_off, proto->block_size, ctx,
                                     1, W, c->stream)) ||
            (rc = dsi_cuda_mla_q_pack(d->lp_q, d->q_lat + (size_t)q_row * nh * R, d->q + (size_t)q_row * qs,
                                      qs, n_q, nh, nope, R, rope, scale, c->stream)) ||
            (rc = DSI_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
                 c->blas, CUBLAS_OP_T, CUBLAS_OP_N, ctx, n_q, W, &one, d->lp_lat, CUDA_R_16BF, W, 0, d->lp_q,
                 CUDA_R_16BF, W, (long long)n_q * W, &zero, d->lp_s, CUDA_R_32F, ctx, (long long)n_q * ctx,
                 nh, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT))) ||
            (rc = dsi_cuda_causal_softmax(d->lp_p, d->lp_s, nh, n_q, ctx, pos, c->stream)) ||
            (rc = DSI_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
                 c->blas, CUBLAS_OP_N, CUBLAS_OP_N, R, n_q, ctx, &one, d->lp_lat, CUDA_R_16BF, W, 0, d->lp_p,
                 CUDA_R_16BF, ctx, (long long)n_q * ctx, &zero, d->o_lat + (size_t)q_row * nh * R, CUDA_R_32F,
                 nh * R, R, nh, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT))))
            return rc;
    }
    return 0;
}

static int mla_attention(struct dsi__cuda *c, int il, int T, const struct dsi_cuda_attn_args *proto,
                         const int32_t *pos_d, const int32_t *slot_d) {
    const struct dsi_model_config *cfg = &c->cfg;
    const struct dsi__cu_mla *M = c->layers[il].mla;
    struct dsi__cu_ds *d = &c->ds;
    const int nh = cfg->n_heads, R = cfg->kv_lora_rank, rope = cfg->qk_rope_head_dim;
    const int nope = cfg->qk_nope_head_dim, vd = cfg->v_head_dim, qk = nope + rope;
    cudaStream_t s = c->stream;
    int rc;
    if (cfg->q_lora_rank > 0) {
        if ((rc = dsi__cuda_matmul(c, &M->wq_a, c->xn, d->qa, T)) ||
            (rc = dsi_cuda_add_rmsnorm(d->qa, NULL, M->q_a_norm, d->qa_n, T, cfg->q_lora_rank, MLA_NORM_EPS,
                                       s)) ||
            (rc = dsi__cuda_matmul(c, &M->wq_b, d->qa_n, d->q, T)))
            return rc;
    } else if ((rc = dsi__cuda_matmul(c, &M->wq, c->xn, d->q, T))) {
        return rc;
    }
    if ((rc = dsi__cuda_matmul(c, &M->wkv_a, c->xn, d->kva, T))) return rc;
    uint16_t *pool = c->kv + (size_t)il * c->kv_layer_elems;
    const struct dsi_cuda_mla_rope_args ra = {.q = d->q,
                                              .q_stride = nh * qk,
                                              .n_heads = nh,
                                              .nope = nope,
                                              .kva = d->kva,
                                              .kv_lora_rank = R,
                                              .rope_dim = rope,
                                              .norm_w = M->kv_a_norm,
                                              .eps = MLA_NORM_EPS,
                                              .pos = pos_d,
                                              .slots = slot_d,
                                              .inv_freq = c->inv_freq,
                                              .attn_factor = c->attn_factor,
                                              .interleave = cfg->rope_interleave,
                                              .cache = pool};
    if ((rc = dsi_cuda_mla_kv_rope(&ra, T, s))) return rc;
    /* column-major view: q_lat_h (R x T) = W_UK_h (R x nope, rows of kv_b) . q_nope_h (nope x T) */
    const float one = 1.f, zero = 0.f;
    const long long wstride = (long long)(nope + vd) * R;
    if ((rc = DSI_CUBLAS_CHECK(cublasSgemmStridedBatched(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, R, T, nope, &one,
                                                         M->wkv_b, R, wstride, d->q, nh * qk, qk, &zero,
                                                         d->q_lat, nh * R, R, nh))))
        return rc;
    const struct dsi_cuda_mla_attn_args aa = {.o_lat = d->o_lat,
                                              .q_lat = d->q_lat,
                                              .q = d->q,
                                              .q_stride = nh * qk,
                                              .n_heads = nh,
                                              .nope = nope,
                                              .kv_lora_rank = R,
                                              .rope_dim = rope,
                                              .cache = pool,
                                              .seqs = proto->seqs,
                                              .n_seqs = proto->n_seqs,
                                              .block_tables = proto->block_tables,
                                              .block_size = proto->block_size,
                                              .scale = dsi_mla_softmax_scale(cfg),
                                              .long_q = proto->max_n_q > 1 ? d->long_q : 0,
                                              .long_ctx = d->long_ctx,
                                              .n_splits = proto->max_n_q == 1 ? proto->n_splits : 1,
                                              .work = d->mla_work,
                                              .work_bytes = d->mla_work_bytes};
    if ((rc = dsi_cuda_mla_attn(&aa, T, s)) ||
        (aa.long_q > 0 && (rc = mla_long_prefill(c, proto, pool, aa.scale))))
        return rc;
    /* att_h (vd x T) = W_UV_h (vd x R; stored R x vd column-major) . o_lat_h (R x T) */
    if ((rc = DSI_CUBLAS_CHECK(cublasSgemmStridedBatched(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, vd, T, R, &one,
                                                         M->wkv_b + (size_t)nope * R, R, wstride, d->o_lat,
                                                         nh * R, R, &zero, d->att32, nh * vd, vd, nh))))
        return rc;
    return dsi_cuda_f32_to_bf16(d->att, d->att32, (size_t)T * nh * vd, s);
}

/* gate|up -> SwiGLU -> down of one matrix pair over n rows of x into y. */
static int glu_mlp(struct dsi__cuda *c, const struct dsi__cu_matrix *gu, const struct dsi__cu_matrix *down,
                   int il8, const uint16_t *x, float *gbuf, uint16_t *abuf, float *y, int n) {
    int rc;
    if ((rc = dsi__cuda_matmul(c, gu, x, gbuf, n)) ||
        (rc = dsi_cuda_swiglu(abuf, gbuf, n, gu->n / 2, il8, NULL, NULL, c->stream)))
        return rc;
    return dsi__cuda_matmul(c, down, abuf, y, n);
}

/* Host side of the grouping: count[e]..count[e+1] are expert e's rows,
 * tok_of[p] their tokens ascending, slot_of[t*K + k] the row of token t's
 * k-th choice (the CPU's counting sort). DSI_EINTERNAL on an expert id out of
 * range (a kernel bug: the router only writes ids it checked). */
static int group(int32_t *count, const int32_t *idx, int n, int K, int E, int32_t *tok_of, int32_t *slot_of) {
    memset(count, 0, (size_t)(E + 1) * sizeof *count);
    for (int a = 0; a < n; a++) {
        if (idx[a] < 0 || idx[a] >= E) return DSI_EINTERNAL;
        count[idx[a] + 1]++;
    }
    for (int e = 0; e < E; e++)
        count[e + 1] += count[e];
    for (int e = E; e > 0; e--)
        count[e] = count[e - 1];
    count[0] = 0;
    for (int a = 0; a < n; a++) {
        int p = count[idx[a] + 1]++;
        slot_of[a] = p;
        tok_of[p] = a / K;
    }
    return 0;
}

/* The routed experts of a decode-sized step, grouped and multiplied on the
 * device: yo[p] for run position p, slot (perm_d + n) maps choice -> p. */
static int experts_device(struct dsi__cuda *c, const struct dsi__cu_mla *M, int T) {
    const struct dsi_model_config *cfg = &c->cfg;
    struct dsi__cu_ds *d = &c->ds;
    const int E = cfg->n_routed_experts, K = cfg->num_experts_per_tok, H = cfg->hidden_size;
    const int I = cfg->moe_intermediate_size, n = T * K;
    cudaStream_t s = c->stream;
    int rc;
    if ((rc = dsi_cuda_moe_group(d->off_d, d->perm_d, d->perm_d + n, d->idx_d, n, E, s)) ||
        (rc = dsi_cuda_moe_gemv_int8(d->egu, c->xn, M->gu_w, d->off_d, d->perm_d, K, E, n, 2 * I, H, s)) ||
        (rc = dsi_cuda_swiglu(d->eact, d->egu, n, I, c->ex_il, NULL, NULL, s)))
        return rc;
    return dsi_cuda_moe_gemv_int8(d->yo, d->eact, M->down_w, d->off_d, d->perm_d, 0, E, n, H, I, s);
}

/* The routed experts of a large step: the choices read back, grouped on the
 * host (the CPU's counting sort), each used expert's planned matmuls. */
static int experts_host(struct dsi__cuda *c, const struct dsi__cu_mla *M, int T) {
    const struct dsi_model_config *cfg = &c->cfg;
    struct dsi__cu_ds *d = &c->ds;
    const int E = cfg->n_routed_experts, K = cfg->num_experts_per_tok, H = cfg->hidden_size;
    const int I = cfg->moe_intermediate_size, n = T * K;
    cudaStream_t s = c->stream;
    int rc;
    if ((rc =
             DSI_CUDA_CHECK(cudaMemcpyAsync(d->idx_h, d->idx_d, (size_t)n * 4, cudaMemcpyDeviceToHost, s))) ||
        (rc = DSI_CUDA_CHECK(cudaStreamSynchronize(s))))
        return rc;
    if ((rc = group(d->count, d->idx_h, n, K, E, d->perm_h, d->perm_h + n))) {
        dsi_log(DSI_LOG_ERROR, "cuda", "moe router wrote an expert id out of range: a bug");
        return rc;
    }
    if ((rc = DSI_CUDA_CHECK(
             cudaMemcpyAsync(d->perm_d, d->perm_h, (size_t)n * 2 * 4, cudaMemcpyHostToDevice, s))) ||
        (rc = dsi_cuda_gather_rows(d->xg, c->xn, d->perm_d, n, H, s)))
        return rc;
    for (int e = 0; e < E; e++) {
        const int p0 = d->count[e], m = d->count[e + 1] - p0;
        if (m <= 0) continue;
        rc = glu_mlp(c, &M->ex_gu[e], &M->ex_down[e], c->ex_il, d->xg + (size_t)p0 * H,
                     d->egu + (size_t)p0 * 2 * I, d->eact + (size_t)p0 * I, d->yo + (size_t)p0 * H, m);
        if (rc) return rc;
    }
    return 0;
}

static int moe(struct dsi__cuda *c, int il, int T) {
    const struct dsi_model_config *cfg = &c->cfg;
    const struct dsi__cu_layer *ly = &c->layers[il];
    const struct dsi__cu_mla *M = ly->mla;
    struct dsi__cu_ds *d = &c->ds;
    const int E = cfg->n_routed_experts, K = cfg->num_experts_per_tok, H = cfg->hidden_size, n = T * K;
    cudaStream_t s = c->stream;
    const struct dsi_cuda_router r = {
        .n_experts = E,
        .top_k = K,
        .n_group = cfg->n_group,
        .topk_group = cfg->topk_group,
        .method = cfg->topk_method == DSI_TOPK_NOAUX_TC               ? DSI_CUDA_TOPK_NOAUX_TC
                  : cfg->topk_method == DSI_TOPK_GROUP_LIMITED_GREEDY ? DSI_CUDA_TOPK_GROUP_LIMITED
                                                                      : DSI_CUDA_TOPK_GREEDY,
        .scoring = cfg->scoring_func == DSI_SCORE_SIGMOID ? DSI_CUDA_SCORE_SIGMOID : DSI_CUDA_SCORE_SOFTMAX,
        .norm_topk_prob = cfg->norm_topk_prob,
        .routed_scaling_factor = cfg->routed_scaling_factor,
        .bias = M->router_bias,
    };
    int rc = dsi_cuda_moe_route(d->idx_d, d->rw_d, c->x, ly->ln2, T, H, cfg->rms_norm_eps, M->router, &r, s);
    if (rc) return rc;
    /* shared experts into delta (before the routed ones: the host path reuses their scratch) */
    const bool shared = M->sh_gu.n > 0;
    if (shared && (rc = glu_mlp(c, &M->sh_gu, &M->sh_down, c->sh_il, c->xn, d->egu, d->eact, c->delta, T)))
        return rc;
    rc = M->gu_w && dsi__cuda_mla_graphable(c, T) ? experts_device(c, M, T) : experts_host(c, M, T);
    if (rc) return rc;
    c->delta_scale = c->delta_bias = NULL; /* delta is complete */
    return dsi_cuda_moe_combine(c->delta, shared, d->yo, d->perm_d + n, d->rw_d, T, K, H, s);
}

int dsi__cuda_mla_layer(struct dsi__cuda *c, int il, int T, const struct dsi_cuda_attn_args *proto,
                        const int32_t *pos_d, const int32_t *slot_d) {
    const struct dsi__cu_layer *ly = &c->layers[il];
    int rc;
    /* the previous layer's MLP output (delta) is added here */
    if ((rc = dsi__cuda_add_norm(c, il ? c->delta : NULL, ly->ln1, T)) ||
        (rc = mla_attention(c, il, T, proto, pos_d, slot_d)) ||
        (rc = dsi__cuda_delta_matmul(c, &ly->o, c->ds.att, T)) ||
        (rc = dsi__cuda_add_norm(c, c->delta, ly->ln2, T)))
        return rc;
    if (ly->mla->moe) return moe(c, il, T);
    if ((rc = glu_mlp(c, &ly->gate_up, &ly->down, c->gate_up_il8, c->xn, c->gu, c->act, c->delta, T)))
        return rc;
    c->delta_scale = c->delta_bias = NULL;
    return 0;
}
