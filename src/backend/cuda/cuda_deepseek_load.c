/*
 * cuda_deepseek_load.c: DeepSeek-V2/V3 (MLA attention + MoE) on the CUDA
 * backend: the config check, the weights of one decoder layer, the step
 * buffers and the matmul plans of every DeepSeek matrix.
 *
 * Weights follow the backend's dtype like any matrix (bf16, or int8 per
 * channel / group-wise quantized on the GPU; FP8 checkpoints are decoded with
 * their block scales on the host by cuda_weights.c and then take the same
 * path). Two exceptions, as on the CPU reference: the router (mlp.gate) and
 * its correction bias stay fp32 (routing is a discrete choice), and kv_b_proj
 * is kept as the fp32 weights in use (int8: q * scale) for the absorbed
 * W_UK / W_UV products. Every expert is its own gate|up and down matrix with
 * its own plan; gate|up rows are interleaved by 8 where the size allows
 * (DSI_GLU_IL8), as the dense MLP's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "dsinfer/model.h"

int dsi__cuda_mla_check(const struct dsi_model_config *cfg, char **err) {
    if (!dsi_model_is_mla(cfg)) return 0;
    const int R = cfg->kv_lora_rank, rope = cfg->qk_rope_head_dim, E = cfg->n_routed_experts;
    bool ok = R > 0 && R <= 1024 && rope > 0 && rope % 2 == 0 && rope <= 256 && cfg->head_dim == rope &&
              cfg->qk_nope_head_dim >= 0 && cfg->v_head_dim > 0 && cfg->hidden_size % 8 == 0 &&
              cfg->intermediate_size % 2 == 0 && cfg->moe_intermediate_size % 2 == 0;
    if (!ok)
        return dsi_seterr(err, DSI_EUNSUPPORTED,
                          "cuda backend: MLA sizes not supported (kv_lora %d <= 1024, even rope %d <= 256 = "
                          "head_dim %d, hidden %d a multiple of 8, even intermediate sizes)",
                          R, rope, cfg->head_dim, cfg->hidden_size);
    if (E > 0 && (cfg->num_experts_per_tok <= 0 || cfg->num_experts_per_tok > E ||
                  (cfg->n_group > 0 && E % cfg->n_group) ||
                  dsi_cuda_moe_route_smem(cfg->hidden_size, E, cfg->n_group) > 227 * 1024))
        return dsi_seterr(err, DSI_EUNSUPPORTED,
                          "cuda backend: %d experts, top %d in %d groups not supported", E,
                          cfg->num_experts_per_tok, cfg->n_group);
    return 0;
}

static size_t max_z(const size_t *v, int n) {
    size_t m = 0;
    for (int i = 0; i < n; i++)
        if (v[i] > m) m = v[i];
    return m;
}

size_t dsi__cuda_mla_max_elems(const struct dsi_model_config *cfg) {
    size_t H = (size_t)cfg->hidden_size, nh = (size_t)cfg->n_heads, R = (size_t)cfg->kv_lora_rank;
    size_t qk = (size_t)(cfg->qk_nope_head_dim + cfg->qk_rope_head_dim), QR = (size_t)cfg->q_lora_rank;
    size_t I = (size_t)cfg->moe_intermediate_size, IS = (size_t)cfg->n_shared_experts * I;
    size_t v[] = {nh * qk * H,
                  QR * H,
                  nh * qk * QR,
                  (R + (size_t)cfg->qk_rope_head_dim) * H,
                  nh * (size_t)(cfg->qk_nope_head_dim + cfg->v_head_dim) * R,
                  H * nh * (size_t)cfg->v_head_dim,
                  2 * (size_t)cfg->intermediate_size * H,
                  2 * I * H,
                  2 * IS * H};
    return max_z(v, (int)(sizeof v / sizeof v[0]));
}

int dsi__cuda_mla_max_n(const struct dsi_model_config *cfg) {
    size_t I = (size_t)cfg->moe_intermediate_size;
    size_t v[] = {(size_t)cfg->n_heads * (size_t)(cfg->qk_nope_head_dim + cfg->qk_rope_head_dim),
                  (size_t)cfg->q_lora_rank,
                  (size_t)(cfg->kv_lora_rank + cfg->qk_rope_head_dim),
                  (size_t)cfg->hidden_size,
                  2 * (size_t)cfg->intermediate_size,
                  2 * I * (size_t)(cfg->n_shared_experts > 1 ? cfg->n_shared_experts : 1)};
    return (int)max_z(v, (int)(sizeof v / sizeof v[0]));
}

static int load_moe(struct dsi__cuda *c, struct dsi__cu_loader *L, int il, struct dsi__cu_mla *M,
                    char **err) {
    const struct dsi_model_config *cfg = &c->cfg;
    const int H = cfg->hidden_size, E = cfg->n_routed_experts, I = cfg->moe_intermediate_size;
    const int IS = cfg->n_shared_experts * I;
    char n1[200], n2[200];
    int rc;
    M->moe = true;
    snprintf(n1, sizeof n1, "model.layers.%d.mlp.gate.weight", il);
    if ((rc = dsi__cuda_load_f32(L, n1, E, H, true, &M->router, err))) return rc;
    if (cfg->topk_method == DSI_TOPK_NOAUX_TC) {
        snprintf(n1, sizeof n1, "model.layers.%d.mlp.gate.e_score_correction_bias", il);
        if ((rc = dsi__cuda_load_f32(L, n1, E, 0, false, &M->router_bias, err))) return rc;
    }
    M->ex_gu = calloc((size_t)E, sizeof *M->ex_gu);
    M->ex_down = calloc((size_t)E, sizeof *M->ex_down);
    if (!M->ex_gu || !M->ex_down) return dsi_seterr(err, DSI_ENOMEM, "cuda: out of host memory");
    for (int e = 0; e < E; e++) {
        snprintf(n1, sizeof n1, "model.layers.%d.mlp.experts.%d.gate_proj.weight", il, e);
        snprintf(n2, sizeof n2, "model.layers.%d.mlp.experts.%d.up_proj.weight", il, e);
        if ((rc = dsi__cuda_load_glu(L, &M->ex_gu[e], n1, n2, I, H, c->ex_il, "expert gate/up", err)))
            return rc;
        snprintf(n1, sizeof n1, "model.layers.%d.mlp.experts.%d.down_proj.weight", il, e);
        if ((rc = dsi__cuda_load_linear(L, &M->ex_down[e], n1, H, I, "expert down", err))) return rc;
    }
    if (IS == 0) return 0;
    snprintf(n1, sizeof n1, "model.layers.%d.mlp.shared_experts.gate_proj.weight", il);
    snprintf(n2, sizeof n2, "model.layers.%d.mlp.shared_experts.up_proj.weight", il);
    if ((rc = dsi__cuda_load_glu(L, &M->sh_gu, n1, n2, IS, H, c->sh_il, "shared gate/up", err))) return rc;
    snprintf(n1, sizeof n1, "model.layers.%d.mlp.shared_experts.down_proj.weight", il);
    return dsi__cuda_load_linear(L, &M->sh_down, n1, H, IS, "shared down", err);
}

int dsi__cuda_mla_load_layer(struct dsi__cuda *c, struct dsi__cu_loader *L, int il, char **err) {
    const struct dsi_model_config *cfg = &c->cfg;
    struct dsi__cu_layer *ly = &c->layers[il];
    const int H = cfg->hidden_size, nh = cfg->n_heads, R = cfg->kv_lora_rank, rope = cfg->qk_rope_head_dim;
    const int qk = cfg->qk_nope_head_dim + rope, vd = cfg->v_head_dim, QR = cfg->q_lora_rank;
    const int I = cfg->moe_intermediate_size, IS = cfg->n_shared_experts * I;
    char n1[200], n2[200];
    int rc;
    c->ex_il = I % 8 == 0 ? DSI_GLU_IL8 : 0;
    c->sh_il = IS % 8 == 0 ? DSI_GLU_IL8 : 0;
    struct dsi__cu_mla *M = ly->mla = calloc(1, sizeof *ly->mla);
    if (!M) return dsi_seterr(err, DSI_ENOMEM, "cuda: out of host memory");
#define NAME(suffix) (snprintf(n1, sizeof n1, "model.layers.%d.%s", il, suffix), n1)
    if ((rc = dsi__cuda_load_vec(L, NAME("input_layernorm.weight"), H, &ly->ln1, err)) ||
        (rc = dsi__cuda_load_vec(L, NAME("post_attention_layernorm.weight"), H, &ly->ln2, err)))
        return rc;
    if (QR > 0) {
        if ((rc = dsi__cuda_load_linear(L, &M->wq_a, NAME("self_attn.q_a_proj.weight"), QR, H, "q_a", err)) ||
            (rc = dsi__cuda_load_vec(L, NAME("self_attn.q_a_layernorm.weight"), QR, &M->q_a_norm, err)) ||
            (rc = dsi__cuda_load_linear(L, &M->wq_b, NAME("self_attn.q_b_proj.weight"), nh * qk, QR, "q_b",
                                        err)))
            return rc;
    } else if ((rc = dsi__cuda_load_linear(L, &M->wq, NAME("self_attn.q_proj.weight"), nh * qk, H, "q",
                                           err))) {
        return rc;
    }
    if ((rc = dsi__cuda_load_linear(L, &M->wkv_a, NAME("self_attn.kv_a_proj_with_mqa.weight"), R + rope, H,
                                    "kv_a", err)) ||
        (rc = dsi__cuda_load_vec(L, NAME("self_attn.kv_a_layernorm.weight"), R, &M->kv_a_norm, err)) ||
        (rc = dsi__cuda_load_linear_f32(L, NAME("self_attn.kv_b_proj.weight"),
                                        nh * (cfg->qk_nope_head_dim + vd), R, &M->wkv_b, err)) ||
        (rc = dsi__cuda_load_linear(L, &ly->o, NAME("self_attn.o_proj.weight"), H, nh * vd, "o", err)))
        return rc;
    if (dsi_model_layer_is_moe(cfg, il)) return load_moe(c, L, il, M, err);
    snprintf(n2, sizeof n2, "model.layers.%d.mlp.up_proj.weight", il);
    if ((rc = dsi__cuda_load_glu(L, &ly->gate_up, NAME("mlp.gate_proj.weight"), n2, cfg->intermediate_size, H,
                                 c->gate_up_il8, "gate/up", err)))
        return rc;
    return dsi__cuda_load_linear(L, &ly->down, NAME("mlp.down_proj.weight"), H, cfg->intermediate_size,
                                 "down", err);
#undef NAME
}

/* The device arrays of every MoE layer's expert tiles and scales (INT8 per
 * channel: the only weights the device grouping multiplies). */
static int moe_tables(struct dsi__cuda *c, char **err) {
    const int E = c->cfg.n_routed_experts;
    if (!c->int8 || c->group > 0) return 0;
    struct dsi_cuda_moe_w *h = malloc((size_t)E * 2 * sizeof *h);
    if (!h) return dsi_seterr(err, DSI_ENOMEM, "cuda: out of host memory");
    int rc = 0;
    for (int il = 0; il < c->cfg.n_layers && !rc; il++) {
        struct dsi__cu_mla *M = c->layers[il].mla;
        if (!M->moe) continue;
        for (int e = 0; e < E; e++) {
            h[e] = (struct dsi_cuda_moe_w){M->ex_gu[e].q, M->ex_gu[e].scale};
            h[E + e] = (struct dsi_cuda_moe_w){M->ex_down[e].q, M->ex_down[e].scale};
        }
        if ((rc = dsi__cuda_alloc(c, (void **)&M->gu_w, (size_t)E * 2 * sizeof *h, "moe tables", err))) break;
        M->down_w = M->gu_w + E;
        if (DSI_CUDA_CHECK(cudaMemcpy(M->gu_w, h, (size_t)E * 2 * sizeof *h, cudaMemcpyHostToDevice)))
            rc = dsi_seterr(err, DSI_ECUDA, "cuda: moe table upload failed");
    }
    free(h);
    return rc;
}

bool dsi__cuda_mla_graphable(const struct dsi__cuda *c, int T) {
    const struct dsi_model_config *cfg = &c->cfg;
    return cfg->n_routed_experts == 0 ||
           (c->int8 && c->group == 0 && (long long)T * cfg->num_experts_per_tok <= DSI__CUDA_MOE_DEV_ROWS);
}

int dsi__cuda_mla_splits(const struct dsi__cuda *c, int n_seqs, int ctx) {
    /* about two blocks per SM, at least two chunks of 32 positions per split */
    const int rows = n_seqs * c->cfg.n_heads;
    int s = (2 * c->n_sm + rows - 1) / (rows > 0 ? rows : 1);
    if (s > ctx / 64) s = ctx / 64;
    if (s > 64) s = 64;
    while (s > 1 && (long long)rows * s > DSI__CUDA_MLA_PARTIALS)
        s--;
    return s < 1 ? 1 : s;
}

int dsi__cuda_mla_alloc(struct dsi__cuda *c, char **err) {
    const struct dsi_model_config *cfg = &c->cfg;
    struct dsi__cu_ds *d = &c->ds;
    const size_t T = (size_t)c->max_tokens, nh = (size_t)cfg->n_heads, R = (size_t)cfg->kv_lora_rank;
    const size_t rope = (size_t)cfg->qk_rope_head_dim, qk = (size_t)cfg->qk_nope_head_dim + rope;
    const size_t vd = (size_t)cfg->v_head_dim, QR = (size_t)(cfg->q_lora_rank > 0 ? cfg->q_lora_rank : 1);
    const size_t H = (size_t)cfg->hidden_size, I = (size_t)cfg->moe_intermediate_size;
    const size_t K = (size_t)(cfg->num_experts_per_tok > 0 ? cfg->num_experts_per_tok : 1);
    const size_t IS = (size_t)cfg->n_shared_experts * I, E = (size_t)cfg->n_routed_experts;
    const size_t act = K * I > IS ? K * I : IS;
    int rc;
    if ((rc = dsi__cuda_alloc(c, (void **)&d->q, T * nh * qk * 4, "mla q", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&d->kva, T * (R + rope) * 4, "mla kv_a", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&d->qa, T * QR * 4, "mla q_a", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&d->qa_n, T * QR * 2, "mla q_a normed", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&d->q_lat, T * nh * R * 4, "mla q latent", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&d->o_lat, T * nh * R * 4, "mla out latent", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&d->att32, T * nh * vd * 4, "mla attention out", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&d->att, T * nh * vd * 2, "mla attention out bf16", err)))
        return rc;
    d->mla_work_bytes = dsi_cuda_mla_work_bytes(1, 1, (int)R, DSI__CUDA_MLA_PARTIALS);
    if ((rc = dsi__cuda_alloc(c, (void **)&d->mla_work, d->mla_work_bytes, "mla attention partials", err)))
        return rc;
    if (T >= DSI__CUDA_MLA_LONG_Q) { /* long prefill: scores materialized for cuBLAS */
        const size_t lctx = DSI__CUDA_MLA_LONG_CTX, rows = T < lctx ? T : lctx, W = R + rope;
        if ((rc = dsi__cuda_alloc(c, (void **)&d->lp_lat, lctx * W * 2, "mla prefill latent", err)) ||
            (rc = dsi__cuda_alloc(c, (void **)&d->lp_q, nh * T * W * 2, "mla prefill q", err)) ||
            (rc = dsi__cuda_alloc(c, (void **)&d->lp_s, nh * rows * lctx * 4, "mla prefill scores", err)) ||
            (rc = dsi__cuda_alloc(c, (void **)&d->lp_p, nh * rows * lctx * 2, "mla prefill probabilities",
                                  err)))
            return rc;
        d->long_q = DSI__CUDA_MLA_LONG_Q;
        d->long_ctx = (int)lctx;
    }
    if (E == 0) return 0;
    if ((rc = moe_tables(c, err))) return rc;
    if ((rc = dsi__cuda_alloc(c, (void **)&d->off_d, (2 * E + 2) * 4, "moe runs", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&d->idx_d, T * K * 4, "moe choices", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&d->perm_d, 2 * T * K * 4, "moe permutation", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&d->rw_d, T * K * 4, "moe weights", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&d->xg, T * K * H * 2, "moe gathered rows", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&d->eact, T * act * 2, "moe activations", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&d->egu, T * act * 2 * 4, "moe gate/up", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&d->yo, T * K * H * 4, "moe expert outputs", err)))
        return rc;
    d->count = calloc(E + 1, sizeof *d->count);
    if (!d->count || DSI_CUDA_CHECK(cudaMallocHost((void **)&d->idx_h, T * K * 4)) ||
        DSI_CUDA_CHECK(cudaMallocHost((void **)&d->perm_h, 2 * T * K * 4)))
        return dsi_seterr(err, DSI_ENOMEM, "cuda: host memory for the expert grouping failed");
    return 0;
}

int dsi__cuda_mla_plan(struct dsi__cuda *c, char **err) {
    const struct dsi_model_config *cfg = &c->cfg;
    const int T = c->max_tokens;
    int rc = 0;
    for (int il = 0; il < cfg->n_layers && !rc; il++) {
        struct dsi__cu_layer *ly = &c->layers[il];
        struct dsi__cu_mla *M = ly->mla;
        if (cfg->q_lora_rank > 0) {
            if ((rc = dsi__cuda_plan_matrix(c, &M->wq_a, true, T, "q_a", err)) ||
                (rc = dsi__cuda_plan_matrix(c, &M->wq_b, true, T, "q_b", err)))
                return rc;
        } else if ((rc = dsi__cuda_plan_matrix(c, &M->wq, true, T, "q", err))) {
            return rc;
        }
        if ((rc = dsi__cuda_plan_matrix(c, &M->wkv_a, true, T, "kv_a", err)) ||
            (rc = dsi__cuda_plan_matrix(c, &ly->o, true, T, "o", err)))
            return rc;
        if (!M->moe) {
            if ((rc = dsi__cuda_plan_matrix(c, &ly->gate_up, true, T, "gate|up", err)) ||
                (rc = dsi__cuda_plan_matrix(c, &ly->down, true, T, "down", err)))
                return rc;
            continue;
        }
        for (int e = 0; e < cfg->n_routed_experts && !rc; e++)
            if ((rc = dsi__cuda_plan_matrix(c, &M->ex_gu[e], true, T, "expert gate|up", err)) ||
                (rc = dsi__cuda_plan_matrix(c, &M->ex_down[e], true, T, "expert down", err)))
                return rc;
        if (M->sh_gu.n > 0 && ((rc = dsi__cuda_plan_matrix(c, &M->sh_gu, true, T, "shared gate|up", err)) ||
                               (rc = dsi__cuda_plan_matrix(c, &M->sh_down, true, T, "shared down", err))))
            return rc;
    }
    return rc;
}

void dsi__cuda_mla_free(struct dsi__cuda *c) {
    for (int il = 0; c->layers && il < c->cfg.n_layers; il++) {
        struct dsi__cu_mla *M = c->layers[il].mla;
        if (!M) continue;
        free(M->ex_gu);
        free(M->ex_down);
        free(M);
        c->layers[il].mla = NULL;
    }
    if (c->ds.idx_h) cudaFreeHost(c->ds.idx_h);
    if (c->ds.perm_h) cudaFreeHost(c->ds.perm_h);
    free(c->ds.count);
    c->ds.idx_h = c->ds.perm_h = c->ds.count = NULL;
}
