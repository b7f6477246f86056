/*
 * cpu_deepseek_load.c: loads one DeepSeek-V2/V3 decoder layer (MLA projections,
 * dense MLP or MoE: router, routed and shared experts) into the CPU backend, the
 * FP8 block scales of an F8_E4M3 checkpoint, and the DeepSeek scratch buffers.
 *
 * Tensor names are those of the published checkpoints (one tensor per expert:
 * model.layers.L.mlp.experts.E.gate_proj.weight ...). Every shape is checked
 * against the config by the shared loaders, so a config that disagrees with the
 * tensors fails here naming the tensor. The router (mlp.gate.weight) and its
 * e_score_correction_bias stay f32 whatever the weight dtype: routing is a
 * discrete choice and int8 noise would flip near-ties; every expert matrix
 * follows the backend's weight dtype (f32, bf16, int8 per channel or group).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "cpu_deepseek.h"
#include "dsinfer/err.h"

/* A 1-D or 2-D f32 copy of a float tensor with the given shape, owned by c. */
static int load_f32(struct dsi__cpu *c, const struct dsi_model *m, const char *name, int d0, int d1,
                    float **out, char **err) {
    const struct dsi_tensor *t = dsi_st_find(&m->st, name);
    if (!t) return dsi_seterr(err, DSI_EFORMAT, "tensor %s is missing from the model", name);
    bool ok = d1 < 0 ? t->n_dims == 1 && t->shape[0] == d0
                     : t->n_dims == 2 && t->shape[0] == d0 && t->shape[1] == d1;
    if (!ok || (t->dtype != DSI_DT_F32 && t->dtype != DSI_DT_BF16 && t->dtype != DSI_DT_F16))
        return dsi_seterr(err, DSI_EFORMAT,
                          "tensor %s must be a float tensor of %d x %d as config.json implies", name, d0,
                          d1 < 0 ? 1 : d1);
    float *f = dsi__cpu_alloc(c, t->n_elems, sizeof(float));
    if (!f) return dsi_seterr(err, DSI_ENOMEM, "out of memory reading %s", name);
    int rc = dsi_tensor_to_f32(t, f, err);
    if (rc) return rc;
    c->be.weight_bytes += t->n_elems * sizeof(float);
    *out = f;
    return 0;
}

int dsi__cpu_fp8_scale(const struct dsi__cpu *c, const struct dsi_model *m, const char *name, float *w,
                       int rows, int cols, char **err) {
    (void)c;
    char sname[200];
    int br = m->cfg.quant_block[0] > 0 ? m->cfg.quant_block[0] : 128;
    int bc = m->cfg.quant_block[1] > 0 ? m->cfg.quant_block[1] : 128;
    int nr = (rows + br - 1) / br, nc = (cols + bc - 1) / bc;
    snprintf(sname, sizeof sname, "%s_scale_inv", name);
    const struct dsi_tensor *s = dsi_st_find(&m->st, sname);
    if (!s)
        return dsi_seterr(err, DSI_EFORMAT, "FP8 tensor %s has no %s (block scales) in the model", name,
                          sname);
    if (s->n_dims != 2 || s->shape[0] != nr || s->shape[1] != nc ||
        (s->dtype != DSI_DT_F32 && s->dtype != DSI_DT_BF16 && s->dtype != DSI_DT_F16))
        return dsi_seterr(err, DSI_EFORMAT,
                          "%s must be float [%d, %d] for a [%d, %d] weight in %d x %d blocks", sname, nr, nc,
                          rows, cols, br, bc);
    float *sc = malloc((size_t)nr * (size_t)nc * sizeof *sc);
    if (!sc) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    int rc = dsi_tensor_to_f32(s, sc, err);
    if (!rc) dsi_fp8_block_scale(w, sc, rows, cols, br, bc);
    free(sc);
    return rc;
}

static int load_moe(struct dsi__cpu *c, const struct dsi_model *m, int l, struct dsi__cpu_layer *L,
                    char **err) {
    const struct dsi_model_config *cfg = c->cfg;
    int H = cfg->hidden_size, E = cfg->n_routed_experts, I = cfg->moe_intermediate_size;
    char name[200];
    int rc;
    L->moe = true;
    snprintf(name, sizeof name, "model.layers.%d.mlp.gate.weight", l);
    if ((rc = load_f32(c, m, name, E, H, &L->router, err))) return rc;
    if (cfg->topk_method == DSI_TOPK_NOAUX_TC) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", l);
        if ((rc = load_f32(c, m, name, E, -1, &L->router_bias, err))) return rc;
    }
    L->ex_gate = dsi__cpu_alloc(c, (size_t)E, sizeof *L->ex_gate);
    L->ex_up = dsi__cpu_alloc(c, (size_t)E, sizeof *L->ex_up);
    L->ex_down = dsi__cpu_alloc(c, (size_t)E, sizeof *L->ex_down);
    if (!L->ex_gate || !L->ex_up || !L->ex_down) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    /* a shard loads only its own experts (the plan's); the others stay empty */
    int e0 = c->ds.ep_on ? c->ds.ep.e0 : 0, e1 = c->ds.ep_on ? e0 + c->ds.ep.n_local : E;
    for (int e = e0; e < e1; e++) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.gate_proj.weight", l, e);
        if ((rc = dsi__cpu_load_linear(c, m, name, I, H, &L->ex_gate[e], err))) return rc;
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.up_proj.weight", l, e);
        if ((rc = dsi__cpu_load_linear(c, m, name, I, H, &L->ex_up[e], err))) return rc;
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.down_proj.weight", l, e);
        if ((rc = dsi__cpu_load_linear(c, m, name, H, I, &L->ex_down[e], err))) return rc;
    }
    int IS = cfg->n_shared_experts * I;
    if (IS == 0) return 0;
    snprintf(name, sizeof name, "model.layers.%d.mlp.shared_experts.gate_proj.weight", l);
    if ((rc = dsi__cpu_load_linear(c, m, name, IS, H, &L->sh_gate, err))) return rc;
    snprintf(name, sizeof name, "model.layers.%d.mlp.shared_experts.up_proj.weight", l);
    if ((rc = dsi__cpu_load_linear(c, m, name, IS, H, &L->sh_up, err))) return rc;
    snprintf(name, sizeof name, "model.layers.%d.mlp.shared_experts.down_proj.weight", l);
    return dsi__cpu_load_linear(c, m, name, H, IS, &L->sh_down, err);
}

int dsi__cpu_load_mla_layer(struct dsi__cpu *c, const struct dsi_model *m, int l, char **err) {
    const struct dsi_model_config *cfg = c->cfg;
    struct dsi__cpu_layer *L = &c->layers[l];
    int H = cfg->hidden_size, nh = cfg->n_heads, R = cfg->kv_lora_rank, rope = cfg->qk_rope_head_dim;
    int qk = cfg->qk_nope_head_dim + rope, vd = cfg->v_head_dim;
    char name[200];
    int rc;
#define LIN(field, suffix, rows, cols)                                                                       \
    snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);                                            \
    if ((rc = dsi__cpu_load_linear(c, m, name, rows, cols, &L->field, err))) return rc;
#define VEC(field, suffix, n)                                                                                \
    snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);                                            \
    if ((rc = dsi__cpu_load_vec(c, m, name, n, &L->field, err))) return rc;
    if (cfg->q_lora_rank > 0) {
        LIN(wq_a, "self_attn.q_a_proj.weight", cfg->q_lora_rank, H)
        VEC(q_a_norm, "self_attn.q_a_layernorm.weight", cfg->q_lora_rank)
        LIN(wq_b, "self_attn.q_b_proj.weight", nh * qk, cfg->q_lora_rank)
    } else {
        LIN(wq, "self_attn.q_proj.weight", nh * qk, H)
    }
    LIN(wkv_a, "self_attn.kv_a_proj_with_mqa.weight", R + rope, H)
    VEC(kv_a_norm, "self_attn.kv_a_layernorm.weight", R)
    LIN(wkv_b, "self_attn.kv_b_proj.weight", nh * (cfg->qk_nope_head_dim + vd), R)
    LIN(wo, "self_attn.o_proj.weight", H, nh * vd)
    VEC(attn_norm, "input_layernorm.weight", H)
    VEC(ffn_norm, "post_attention_layernorm.weight", H)
    if (dsi_model_layer_is_moe(cfg, l)) return load_moe(c, m, l, L, err);
    int I = cfg->intermediate_size;
    LIN(w_gate, "mlp.gate_proj.weight", I, H)
    LIN(w_up, "mlp.up_proj.weight", I, H)
    LIN(w_down, "mlp.down_proj.weight", H, I)
#undef LIN
#undef VEC
    return 0;
}

int dsi__cpu_alloc_deepseek(struct dsi__cpu *c, char **err) {
    const struct dsi_model_config *cfg = c->cfg;
    struct dsi__cpu_ds *d = &c->ds;
    size_t T = (size_t)c->max_tokens, nt = (size_t)c->n_threads;
    size_t K = (size_t)(cfg->num_experts_per_tok > 0 ? cfg->num_experts_per_tok : 1);
    size_t E = (size_t)cfg->n_routed_experts, H = (size_t)cfg->hidden_size,
           I = (size_t)cfg->moe_intermediate_size;
    struct dsi_mla_args ma = {.kv_lora_rank = cfg->kv_lora_rank, .n_ctx = c->max_ctx};
    struct dsi_router ra = {.n_experts = cfg->n_routed_experts, .n_group = cfg->n_group};
    d->mla_scratch_n = dsi_mla_scratch_floats(&ma);
    d->route_scratch_n = dsi_moe_route_scratch(&ra);
    struct {
        void **p;
        size_t n, size;
    } bufs[] = {
        {(void **)&d->qa, T * (size_t)(cfg->q_lora_rank > 0 ? cfg->q_lora_rank : 1), sizeof(float)},
        {(void **)&d->kva, T * (size_t)(cfg->kv_lora_rank + cfg->qk_rope_head_dim), sizeof(float)},
        {(void **)&d->mla_scratch, nt * d->mla_scratch_n, sizeof(float)},
        {(void **)&d->logits, T * (E ? E : 1), sizeof(float)},
        {(void **)&d->idx, T * K, sizeof(int32_t)},
        {(void **)&d->w, T * K, sizeof(float)},
        {(void **)&d->route_scratch, nt * d->route_scratch_n, sizeof(float)},
        {(void **)&d->count, E + 1, sizeof(int32_t)},
        {(void **)&d->slot_of, T * K, sizeof(int32_t)},
        {(void **)&d->tok_of, T * K, sizeof(int32_t)},
        {(void **)&d->xg, T * K * H, sizeof(float)},
        {(void **)&d->gg, T * K * (I ? I : 1), sizeof(float)},
        {(void **)&d->ug, T * K * (I ? I : 1), sizeof(float)},
        {(void **)&d->yo, T * K * H, sizeof(float)},
        {(void **)&d->ep_send, d->ep_on ? T * K * H : 1, sizeof(float)},
        {(void **)&d->ep_recv, d->ep_on ? T * K * H : 1, sizeof(float)},
        {(void **)&d->tok_rows, (size_t)c->shard.size, sizeof(int32_t)},
        {(void **)&d->tok_displs, (size_t)c->shard.size, sizeof(int32_t)},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        if (bufs[i].n > SIZE_MAX / 8 / bufs[i].size)
            return dsi_seterr(err, DSI_EOVERFLOW, "scratch too large");
        *bufs[i].p = dsi__cpu_alloc(c, bufs[i].n, bufs[i].size);
        if (!*bufs[i].p) return dsi_seterr(err, DSI_ENOMEM, "out of memory for the DeepSeek scratch");
    }
    return 0;
}
