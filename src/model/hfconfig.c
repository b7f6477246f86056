/*
 * hfconfig.c: HF config.json -> struct dsi_model_config.
 *
 * Families: Qwen2ForCausalLM, LlamaForCausalLM, DeepseekV2ForCausalLM,
 * DeepseekV3ForCausalLM. Both spellings seen in the wild are read:
 * `rope_scaling` (transformers 4) and `rope_parameters` (transformers 5, which
 * also moves rope_theta inside it), `torch_dtype` and `dtype`. `type` and
 * `rope_type` are both accepted inside either object. Defaults follow the
 * transformers config classes. Every number is range-checked so later size
 * arithmetic in the backends starts from sane values (bounds below).
 *
 * DeepSeek-V2/V3: every field that changes the math is read (MLA ranks and head
 * dims, experts, first_k_dense_replace, moe_layer_freq, the router's topk_method,
 * scoring_func, n_group/topk_group, norm_topk_prob, routed_scaling_factor, YaRN
 * mscale/mscale_all_dim, rope_interleave, num_nextn_predict_layers). A value we
 * do not implement (another router, activation, FP8 format, attention_bias) is
 * DSI_EUNSUPPORTED naming it, never a silent default.
 */
#include "model_internal.h"

#include "dsinfer/err.h"
#include "dsinfer/model.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CFG_MAX_BYTES ((size_t)4 << 20)
#define CFG_MAX_DIM (1 << 20) /* hidden, intermediate, head dims */
#define CFG_MAX_VOCAB (1 << 24)
#define CFG_MAX_LAYERS 4096
#define CFG_MAX_HEADS 4096
#define CFG_MAX_CTX (1 << 26)
#define CFG_MAX_EXPERTS 65536

static const struct {
    const char *name, *model_type;
    enum dsi_arch arch;
} archs[] = {
    {"Qwen2ForCausalLM", "qwen2", DSI_ARCH_QWEN2},
    {"LlamaForCausalLM", "llama", DSI_ARCH_LLAMA},
    {"DeepseekV2ForCausalLM", "deepseek_v2", DSI_ARCH_DEEPSEEK_V2},
    {"DeepseekV3ForCausalLM", "deepseek_v3", DSI_ARCH_DEEPSEEK_V3},
};
#define N_ARCHS (sizeof archs / sizeof archs[0])
#define SUPPORTED "Qwen2ForCausalLM, LlamaForCausalLM, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM"

static int get_int(const cJSON *root, const char *key, int def, int lo, int hi, int *out, char **err);
static int get_float(const cJSON *root, const char *key, float def, float lo, float hi, float *out,
                     char **err);
static int parse_rope(const cJSON *root, struct dsi_model_config *c, char **err);
static int parse_dtype(const cJSON *root, struct dsi_model_config *c, char **err);
static int parse_tokens(const cJSON *root, struct dsi_model_config *c, char **err);
static int parse_mla_moe(const cJSON *root, struct dsi_model_config *c, char **err);
static int get_bool(const cJSON *root, const char *key, bool def, bool *out, char **err);

const char *dsi_arch_name(enum dsi_arch a) {
    for (size_t i = 0; i < N_ARCHS; i++)
        if (archs[i].arch == a) return archs[i].name;
    return "unknown";
}

const char *dsi_rope_type_name(enum dsi_rope_type t) {
    switch (t) {
    case DSI_ROPE_DEFAULT:
        return "default";
    case DSI_ROPE_LINEAR:
        return "linear";
    case DSI_ROPE_LLAMA3:
        return "llama3";
    case DSI_ROPE_YARN:
        return "yarn";
    case DSI_ROPE_DYNAMIC:
        return "dynamic";
    }
    return "unknown";
}

/* Missing or null -> def; otherwise an integral number in [lo, hi]. */
static int get_int(const cJSON *root, const char *key, int def, int lo, int hi, int *out, char **err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) {
        if (def < lo || def > hi) return dsi_seterr(err, DSI_EFORMAT, "config.json: \"%s\" is required", key);
        *out = def;
        return 0;
    }
    double d = it->valuedouble;
    if (!cJSON_IsNumber(it) || d != floor(d) || d < lo || d > hi)
        return dsi_seterr(err, DSI_EFORMAT, "config.json: \"%s\" must be an integer in [%d, %d]", key, lo,
                          hi);
    *out = (int)d;
    return 0;
}

static int get_float(const cJSON *root, const char *key, float def, float lo, float hi, float *out,
                     char **err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) {
        *out = def;
        return 0;
    }
    double d = it->valuedouble;
    if (!cJSON_IsNumber(it) || !(d >= lo && d <= hi))
        return dsi_seterr(err, DSI_EFORMAT, "config.json: \"%s\" must be a number in [%g, %g]", key,
                          (double)lo, (double)hi);
    *out = (float)d;
    return 0;
}

static int get_bool(const cJSON *root, const char *key, bool def, bool *out, char **err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(it))
        return dsi_seterr(err, DSI_EFORMAT, "config.json: \"%s\" must be true or false", key);
    *out = cJSON_IsTrue(it);
    return 0;
}

static int parse_rope(const cJSON *root, struct dsi_model_config *c, char **err) {
    int rc;
    if ((rc = get_float(root, "rope_theta", 10000.0f, 1.0f, 1e12f, &c->rope_theta, err))) return rc;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    const char *key = "rope_parameters";
    if (!rs || cJSON_IsNull(rs)) {
        rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
        key = "rope_scaling";
    }
    memset(&c->rope, 0, sizeof c->rope);
    /* Defaults are the same whether or not a scaling object is present, so two
     * spellings of one model give identical structs. */
    c->rope.type = DSI_ROPE_DEFAULT;
    c->rope.factor = 1.0f;
    c->rope.low_freq_factor = 1.0f;
    c->rope.high_freq_factor = 4.0f;
    c->rope.beta_fast = 32.0f;
    c->rope.beta_slow = 1.0f;
    c->rope.mscale = 1.0f;
    if (!rs || cJSON_IsNull(rs)) return 0;
    if (!cJSON_IsObject(rs))
        return dsi_seterr(err, DSI_EFORMAT, "config.json: \"%s\" must be an object or null", key);
    /* transformers 5 may key rope_parameters by layer type; dense models use one. */
    const cJSON *full = cJSON_GetObjectItemCaseSensitive(rs, "full_attention");
    if (cJSON_IsObject(full)) rs = full;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!t) t = cJSON_GetObjectItemCaseSensitive(rs, "type");
    const char *ts = cJSON_IsString(t) ? t->valuestring : (t ? NULL : "default");
    static const struct {
        const char *name;
        enum dsi_rope_type type;
    } types[] = {{"default", DSI_ROPE_DEFAULT},
                 {"linear", DSI_ROPE_LINEAR},
                 {"llama3", DSI_ROPE_LLAMA3},
                 {"yarn", DSI_ROPE_YARN},
                 {"dynamic", DSI_ROPE_DYNAMIC}};
    bool found = false;
    for (size_t i = 0; ts && i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(ts, types[i].name)) c->rope.type = types[i].type, found = true;
    if (!found) {
        char p[64];
        dsi__printable(ts ? ts : "(not a string)", p, sizeof p);
        return dsi_seterr(err, DSI_EUNSUPPORTED,
                          "config.json: %s type \"%s\" is not supported (supported: default, "
                          "linear, llama3, yarn, dynamic)",
                          key, p);
    }
    if (cJSON_GetObjectItemCaseSensitive(rs, "rope_theta") &&
        (rc = get_float(rs, "rope_theta", 10000.0f, 1.0f, 1e12f, &c->rope_theta, err)))
        return rc;
    struct dsi_rope_scaling *r = &c->rope;
    if ((rc = get_float(rs, "factor", 1.0f, 1e-3f, 1e6f, &r->factor, err)) ||
        (rc = get_float(rs, "low_freq_factor", 1.0f, 1e-6f, 1e6f, &r->low_freq_factor, err)) ||
        (rc = get_float(rs, "high_freq_factor", 4.0f, 1e-6f, 1e6f, &r->high_freq_factor, err)) ||
        (rc = get_int(rs, "original_max_position_embeddings", 0, 0, CFG_MAX_CTX,
                      &r->original_max_position_embeddings, err)) ||
        (rc = get_float(rs, "beta_fast", 32.0f, 0.0f, 1e6f, &r->beta_fast, err)) ||
        (rc = get_float(rs, "beta_slow", 1.0f, 0.0f, 1e6f, &r->beta_slow, err)) ||
        (rc = get_float(rs, "mscale", 1.0f, 0.0f, 1e6f, &r->mscale, err)) ||
        (rc = get_float(rs, "mscale_all_dim", 0.0f, 0.0f, 1e6f, &r->mscale_all_dim, err)))
        return rc;
    if (r->type == DSI_ROPE_LLAMA3 &&
        (r->original_max_position_embeddings == 0 || r->high_freq_factor <= r->low_freq_factor))
        return dsi_seterr(err, DSI_EFORMAT,
                          "config.json: llama3 rope needs original_max_position_embeddings and "
                          "high_freq_factor > low_freq_factor");
    return 0;
}

static int parse_dtype(const cJSON *root, struct dsi_model_config *c, char **err) {
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(root, "dtype");
    if (!d || cJSON_IsNull(d)) d = cJSON_GetObjectItemCaseSensitive(root, "torch_dtype");
    c->dtype = DSI_DT_F32;
    if (!d || cJSON_IsNull(d)) return 0;
    static const struct {
        const char *name;
        enum dsi_dtype dt;
    } names[] = {{"bfloat16", DSI_DT_BF16}, {"float16", DSI_DT_F16}, {"half", DSI_DT_F16},
                 {"float32", DSI_DT_F32},   {"float", DSI_DT_F32},   {"float8_e4m3fn", DSI_DT_F8_E4M3}};
    const char *s = cJSON_IsString(d) ? d->valuestring : "";
    if (!strncmp(s, "torch.", 6)) s += 6;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(s, names[i].name)) {
            c->dtype = names[i].dt;
            return 0;
        }
    char p[64];
    dsi__printable(s, p, sizeof p);
    return dsi_seterr(err, DSI_EUNSUPPORTED,
                      "config.json: dtype \"%s\" is not supported (bfloat16, float16, float32)", p);
}

static int parse_tokens(const cJSON *root, struct dsi_model_config *c, char **err) {
    int rc = get_int(root, "bos_token_id", -1, -1, CFG_MAX_VOCAB, &c->bos_token_id, err);
    if (rc) return rc;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    c->n_eos = 0;
    if (!e || cJSON_IsNull(e)) return 0;
    if (cJSON_IsNumber(e)) {
        c->n_eos = 1;
        return get_int(root, "eos_token_id", -1, 0, CFG_MAX_VOCAB, &c->eos_token_ids[0], err);
    }
    if (!cJSON_IsArray(e) || cJSON_GetArraySize(e) > DSI_MAX_EOS)
        return dsi_seterr(err, DSI_EFORMAT,
                          "config.json: \"eos_token_id\" must be an integer or a list of at most %d",
                          DSI_MAX_EOS);
    for (const cJSON *x = e->child; x; x = x->next) {
        double d = x->valuedouble;
        if (!cJSON_IsNumber(x) || d != floor(d) || d < 0 || d > CFG_MAX_VOCAB)
            return dsi_seterr(err, DSI_EFORMAT, "config.json: \"eos_token_id\" has a bad entry");
        c->eos_token_ids[c->n_eos++] = (int)d;
    }
    return 0;
}

/* A string field out of a fixed list: missing or null -> def; any other value is
 * DSI_EUNSUPPORTED naming the value and the list (never a silent default). */
static int get_enum(const cJSON *root, const char *key, const char *const *names, int n, int def, int *out,
                    const char *list, char **err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    *out = def;
    if (!it || cJSON_IsNull(it)) return 0;
    for (int i = 0; cJSON_IsString(it) && i < n; i++)
        if (!strcmp(it->valuestring, names[i])) {
            *out = i;
            return 0;
        }
    char p[64];
    dsi__printable(cJSON_IsString(it) ? it->valuestring : "(not a string)", p, sizeof p);
    return dsi_seterr(err, DSI_EUNSUPPORTED, "config.json: %s \"%s\" is not implemented (implemented: %s)", key, p,
                      list);
}

static int parse_router(const cJSON *root, struct dsi_model_config *c, char **err) {
    static const char *const methods[] = {"greedy", "group_limited_greedy", "noaux_tc"};
    static const char *const funcs[] = {"softmax", "sigmoid"};
    bool v3 = c->arch == DSI_ARCH_DEEPSEEK_V3;
    int m, f, rc;
    /* Defaults of the transformers config classes: V3 is sigmoid + noaux_tc with
     * normalised weights scaled by 2.5, V2 softmax + greedy, unnormalised, 1.0. */
    if ((rc = get_enum(root, "topk_method", methods, 3, v3 ? 2 : 0, &m, "greedy, group_limited_greedy, noaux_tc",
                       err)) ||
        (rc = get_enum(root, "scoring_func", funcs, 2, v3 ? 1 : 0, &f, "softmax, sigmoid", err)) ||
        (rc = get_bool(root, "norm_topk_prob", v3, &c->norm_topk_prob, err)) ||
        (rc = get_float(root, "routed_scaling_factor", v3 ? 2.5f : 1.0f, 0.0f, 1e6f, &c->routed_scaling_factor,
                        err)))
        return rc;
    c->topk_method = (enum dsi_topk_method)m;
    c->scoring_func = (enum dsi_scoring_func)f;
    if (!c->n_routed_experts) return 0;
    int per_group = c->n_routed_experts / c->n_group;
    bool grouped = c->topk_method != DSI_TOPK_GREEDY;
    if (c->num_experts_per_tok < 1 || (grouped && c->num_experts_per_tok > c->topk_group * per_group) ||
        (c->topk_method == DSI_TOPK_NOAUX_TC && per_group < 2))
        return dsi_seterr(err, DSI_EFORMAT,
                          "config.json: router cannot pick %d experts per token with %s over %d groups of %d "
                          "(topk_group %d)",
                          c->num_experts_per_tok, methods[m], c->n_group, per_group, c->topk_group);
    return 0;
}

static int parse_mla_moe(const cJSON *root, struct dsi_model_config *c, char **err) {
    int rc;
    if ((rc = get_int(root, "q_lora_rank", 0, 0, CFG_MAX_DIM, &c->q_lora_rank, err)) ||
        (rc = get_int(root, "kv_lora_rank", -1, 1, CFG_MAX_DIM, &c->kv_lora_rank, err)) ||
        (rc = get_int(root, "qk_nope_head_dim", -1, 1, CFG_MAX_DIM, &c->qk_nope_head_dim, err)) ||
        (rc = get_int(root, "qk_rope_head_dim", -1, 1, CFG_MAX_DIM, &c->qk_rope_head_dim, err)) ||
        (rc = get_int(root, "v_head_dim", -1, 1, CFG_MAX_DIM, &c->v_head_dim, err)) ||
        (rc = get_int(root, "n_routed_experts", 0, 0, CFG_MAX_EXPERTS, &c->n_routed_experts, err)) ||
        (rc = get_int(root, "n_shared_experts", 0, 0, CFG_MAX_EXPERTS, &c->n_shared_experts, err)) ||
        (rc = get_int(root, "num_experts_per_tok", 0, 0, CFG_MAX_EXPERTS, &c->num_experts_per_tok, err)) ||
        (rc = get_int(root, "moe_intermediate_size", 0, 0, CFG_MAX_DIM, &c->moe_intermediate_size, err)) ||
        (rc = get_int(root, "first_k_dense_replace", 0, 0, CFG_MAX_LAYERS, &c->first_k_dense_replace, err)) ||
        (rc = get_int(root, "moe_layer_freq", 1, 1, CFG_MAX_LAYERS, &c->moe_layer_freq, err)) ||
        (rc = get_int(root, "n_group", 1, 1, CFG_MAX_EXPERTS, &c->n_group, err)) ||
        (rc = get_int(root, "topk_group", 1, 1, CFG_MAX_EXPERTS, &c->topk_group, err)) ||
        (rc = get_int(root, "num_nextn_predict_layers", c->arch == DSI_ARCH_DEEPSEEK_V3, 0, CFG_MAX_LAYERS,
                      &c->n_mtp_layers, err)) || /* transformers 5's V3 default: 1 */
        (rc = get_bool(root, "rope_interleave", true, &c->rope_interleave, err)))
        return rc;
    if (c->arch == DSI_ARCH_DEEPSEEK_V2) c->rope_interleave = true; /* V2 rotates complex pairs, no switch */
    if (c->num_experts_per_tok > c->n_routed_experts || c->topk_group > c->n_group ||
        (c->n_routed_experts && c->n_routed_experts % c->n_group) ||
        (c->n_routed_experts && !c->moe_intermediate_size))
        return dsi_seterr(err, DSI_EFORMAT,
                          "config.json: expert counts are inconsistent (experts %d, per token %d, "
                          "groups %d, topk_group %d, moe_intermediate_size %d)",
                          c->n_routed_experts, c->num_experts_per_tok, c->n_group, c->topk_group,
                          c->moe_intermediate_size);
    if (c->qk_rope_head_dim % 2)
        return dsi_seterr(err, DSI_EFORMAT, "config.json: qk_rope_head_dim %d must be even for rope",
                          c->qk_rope_head_dim);
    if (c->attention_bias)
        return dsi_seterr(err, DSI_EUNSUPPORTED,
                          "config.json: attention_bias true is not implemented for MLA attention");
    if ((rc = parse_router(root, c, err))) return rc;
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (cJSON_IsObject(q)) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(q, "quant_method");
        if (!cJSON_IsString(m) || strcmp(m->valuestring, "fp8"))
            return dsi_seterr(err, DSI_EUNSUPPORTED,
                              "config.json: quantization_config.quant_method must be \"fp8\"");
        const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(q, "fmt");
        if (fmt && !cJSON_IsNull(fmt) && (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "e4m3")))
            return dsi_seterr(err, DSI_EUNSUPPORTED,
                              "config.json: quantization_config.fmt must be \"e4m3\" (the only FP8 format "
                              "implemented)");
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(q, "weight_block_size");
        c->quant_fp8 = true;
        c->quant_block[0] = c->quant_block[1] = 128;
        if (b && !cJSON_IsNull(b) && (!cJSON_IsArray(b) || cJSON_GetArraySize(b) != 2))
            return dsi_seterr(err, DSI_EFORMAT, "config.json: weight_block_size must be [r, c]");
        if (cJSON_IsArray(b)) {
            for (int i = 0; i < 2; i++) {
                const cJSON *x = cJSON_GetArrayItem(b, i);
                double d = x ? x->valuedouble : 0;
                if (!cJSON_IsNumber(x) || d != floor(d) || d < 1 || d > 65536)
                    return dsi_seterr(err, DSI_EFORMAT, "config.json: weight_block_size must be [r, c]");
                c->quant_block[i] = (int)d;
            }
        }
    }
    return 0;
}

int dsi_model_config_parse(const char *json, size_t len, struct dsi_model_config *cfg, char **err) {
    if (!json || !cfg) return DSI_EINVAL;
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return dsi_seterr(err, DSI_EFORMAT, "config.json: not a JSON object");
    }
    int rc = 0;
    const cJSON *ar = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const char *name = NULL;
    if (cJSON_IsArray(ar) && cJSON_IsString(ar->child)) name = ar->child->valuestring;
    int found = -1;
    for (size_t i = 0; i < N_ARCHS; i++) {
        if (name && !strcmp(name, archs[i].name)) found = (int)i;
        if (!name && cJSON_IsString(mt) && !strcmp(mt->valuestring, archs[i].model_type)) found = (int)i;
    }
    if (found < 0) {
        char p[80];
        dsi__printable(name ? name : cJSON_IsString(mt) ? mt->valuestring : "(none)", p, sizeof p);
        rc = dsi_seterr(err, DSI_EUNSUPPORTED, "architecture %s is not supported (supported: %s)", p,
                        SUPPORTED);
        goto out;
    }
    cfg->arch = archs[found].arch;
    snprintf(cfg->architecture, sizeof cfg->architecture, "%s", archs[found].name);
    bool mla = cfg->arch == DSI_ARCH_DEEPSEEK_V2 || cfg->arch == DSI_ARCH_DEEPSEEK_V3;
    int def_ctx = cfg->arch == DSI_ARCH_QWEN2 ? 32768 : cfg->arch == DSI_ARCH_LLAMA ? 2048 : 4096;
    if ((rc = get_int(root, "vocab_size", -1, 1, CFG_MAX_VOCAB, &cfg->vocab_size, err)) ||
        (rc = get_int(root, "hidden_size", -1, 1, CFG_MAX_DIM, &cfg->hidden_size, err)) ||
        (rc = get_int(root, "intermediate_size", -1, 1, CFG_MAX_DIM, &cfg->intermediate_size, err)) ||
        (rc = get_int(root, "num_hidden_layers", -1, 1, CFG_MAX_LAYERS, &cfg->n_layers, err)) ||
        (rc = get_int(root, "num_attention_heads", -1, 1, CFG_MAX_HEADS, &cfg->n_heads, err)) ||
        (rc = get_int(root, "num_key_value_heads", cfg->n_heads, 1, CFG_MAX_HEADS, &cfg->n_kv_heads, err)) ||
        (rc = get_int(root, "max_position_embeddings", def_ctx, 1, CFG_MAX_CTX, &cfg->max_position_embeddings,
                      err)) ||
        (rc = get_float(root, "rms_norm_eps", 1e-6f, 1e-12f, 1.0f, &cfg->rms_norm_eps, err)) ||
        (rc = get_bool(root, "tie_word_embeddings", false, &cfg->tie_word_embeddings, err)) ||
        (rc = get_bool(root, "attention_bias", cfg->arch == DSI_ARCH_QWEN2, &cfg->attention_bias, err)) ||
        (rc = parse_rope(root, cfg, err)) || (rc = parse_dtype(root, cfg, err)) ||
        (rc = parse_tokens(root, cfg, err)))
        goto out;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && !cJSON_IsNull(act) && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu"))) {
        char p[64];
        dsi__printable(cJSON_IsString(act) ? act->valuestring : "(not a string)", p, sizeof p);
        rc = dsi_seterr(err, DSI_EUNSUPPORTED, "config.json: hidden_act \"%s\" is not implemented (silu)", p);
        goto out;
    }
    bool sw = false;
    if ((rc = get_bool(root, "mlp_bias", false, &cfg->mlp_bias, err)) ||
        (rc = get_bool(root, "use_sliding_window", false, &sw, err)))
        goto out;
    if (sw && cfg->arch == DSI_ARCH_QWEN2 &&
        (rc = get_int(root, "sliding_window", 4096, 1, CFG_MAX_CTX, &cfg->sliding_window, err)))
        goto out;
    if (cfg->n_heads % cfg->n_kv_heads) {
        rc = dsi_seterr(err, DSI_EFORMAT,
                        "config.json: num_attention_heads %d is not a multiple of "
                        "num_key_value_heads %d",
                        cfg->n_heads, cfg->n_kv_heads);
        goto out;
    }
    if (mla && (rc = parse_mla_moe(root, cfg, err))) goto out;
    int def_hd = mla ? cfg->qk_rope_head_dim : cfg->hidden_size / cfg->n_heads;
    const cJSON *hd = cJSON_GetObjectItemCaseSensitive(root, "head_dim");
    if (!mla && (!hd || cJSON_IsNull(hd)) && cfg->hidden_size % cfg->n_heads) {
        rc = dsi_seterr(err, DSI_EFORMAT,
                        "config.json: hidden_size %d is not a multiple of num_attention_heads %d "
                        "and head_dim is not given",
                        cfg->hidden_size, cfg->n_heads);
        goto out;
    }
    if ((rc = get_int(root, "head_dim", def_hd, 1, CFG_MAX_DIM, &cfg->head_dim, err))) goto out;
    if (!mla && cfg->head_dim % 2) {
        rc = dsi_seterr(err, DSI_EFORMAT, "config.json: head_dim %d must be even for rope", cfg->head_dim);
        goto out;
    }
    for (int i = 0; i < cfg->n_eos; i++)
        if (cfg->eos_token_ids[i] >= cfg->vocab_size) {
            rc = dsi_seterr(err, DSI_EFORMAT, "config.json: eos_token_id %d >= vocab_size %d",
                            cfg->eos_token_ids[i], cfg->vocab_size);
            goto out;
        }
    if (cfg->bos_token_id >= cfg->vocab_size) {
        rc = dsi_seterr(err, DSI_EFORMAT, "config.json: bos_token_id %d >= vocab_size %d", cfg->bos_token_id,
                        cfg->vocab_size);
        goto out;
    }
out:
    cJSON_Delete(root);
    if (rc) memset(cfg, 0, sizeof *cfg);
    return rc;
}

int dsi_model_config_load(const char *dir, struct dsi_model_config *cfg, char **err) {
    if (!dir || !cfg) return DSI_EINVAL;
    char *path = dsi__path_join(dir, "config.json");
    if (!path) return DSI_ENOMEM;
    char *text = NULL;
    size_t len = 0;
    int rc = dsi_read_file(path, CFG_MAX_BYTES, &text, &len, err);
    if (rc == 0) {
        char *e2 = NULL;
        rc = dsi_model_config_parse(text, len, cfg, &e2);
        if (rc) dsi_seterr(err, rc, "%s: %s", dir, e2 ? e2 : dsi_strerror(rc));
        free(e2);
    }
    free(text);
    free(path);
    return rc;
}

int dsi_model_config_runnable(const struct dsi_model_config *cfg, char **err) {
    if (!cfg) return DSI_EINVAL;
    if (dsi_model_is_mla(cfg)) {
        /* MLA + MoE run on the CPU backend (the CUDA backend refuses them itself);
         * YaRN is DeepSeek's own long-context rope and is implemented for it. */
        if (cfg->rope.type != DSI_ROPE_DEFAULT && cfg->rope.type != DSI_ROPE_LINEAR &&
            cfg->rope.type != DSI_ROPE_YARN)
            return dsi_seterr(err, DSI_EUNSUPPORTED, "%s with %s rope scaling is not runnable yet",
                              cfg->architecture, dsi_rope_type_name(cfg->rope.type));
        return 0;
    }
    if (cfg->mlp_bias || cfg->sliding_window)
        return dsi_seterr(err, DSI_EUNSUPPORTED, "%s with %s is not runnable yet", cfg->architecture,
                          cfg->mlp_bias ? "mlp_bias" : "use_sliding_window");
    if (cfg->rope.type != DSI_ROPE_DEFAULT && cfg->rope.type != DSI_ROPE_LINEAR &&
        cfg->rope.type != DSI_ROPE_LLAMA3)
        return dsi_seterr(err, DSI_EUNSUPPORTED,
                          "%s with %s rope scaling is not runnable yet (default, linear, llama3)",
                          cfg->architecture, dsi_rope_type_name(cfg->rope.type));
    return 0;
}

bool dsi_model_is_mla(const struct dsi_model_config *cfg) {
    return cfg && (cfg->arch == DSI_ARCH_DEEPSEEK_V2 || cfg->arch == DSI_ARCH_DEEPSEEK_V3);
}

bool dsi_model_layer_is_moe(const struct dsi_model_config *cfg, int l) {
    if (!dsi_model_is_mla(cfg) || cfg->n_routed_experts <= 0 || l < cfg->first_k_dense_replace) return false;
    return cfg->moe_layer_freq <= 1 || l % cfg->moe_layer_freq == 0;
}

float dsi_mla_softmax_scale(const struct dsi_model_config *cfg) {
    float s = 1.0f / sqrtf((float)(cfg->qk_nope_head_dim + cfg->qk_rope_head_dim));
    if (cfg->rope.type == DSI_ROPE_YARN && cfg->rope.mscale_all_dim != 0.0f && cfg->rope.factor > 1.0f) {
        float m = 0.1f * cfg->rope.mscale_all_dim * logf(cfg->rope.factor) + 1.0f;
        s *= m * m;
    }
    return s;
}

size_t dsi_model_kv_values_per_token_layer(const struct dsi_model_config *cfg) {
    if (dsi_model_is_mla(cfg)) return (size_t)cfg->kv_lora_rank + (size_t)cfg->qk_rope_head_dim;
    return 2 * (size_t)(cfg->n_kv_heads > 0 ? cfg->n_kv_heads : 1) * (size_t)(cfg->head_dim > 0 ? cfg->head_dim : 1);
}

const char *dsi_kv_dtype_name(enum dsi_kv_dtype dt) {
    return dt == DSI_KV_F32 ? "f32" : dt == DSI_KV_BF16 ? "bf16" : dt == DSI_KV_INT8 ? "int8" : "?";
}

size_t dsi_kv_vector_bytes(enum dsi_kv_dtype dt, size_t n) {
    return dt == DSI_KV_F32 ? 4 * n : dt == DSI_KV_BF16 ? 2 * n : n + DSI_KV_INT8_SCALE_BYTES;
}

size_t dsi_model_kv_bytes_per_token(const struct dsi_model_config *cfg, enum dsi_kv_dtype dt) {
    size_t layers = (size_t)(cfg->n_layers > 0 ? cfg->n_layers : 1);
    /* int8 pays one scale per vector: MLA's latent and rope key are two vectors a
     * layer (their magnitudes differ), K and V two per kv head */
    if (dsi_model_is_mla(cfg))
        return layers * (dsi_kv_vector_bytes(dt, (size_t)cfg->kv_lora_rank) +
                         dsi_kv_vector_bytes(dt, (size_t)cfg->qk_rope_head_dim));
    size_t nkv = (size_t)(cfg->n_kv_heads > 0 ? cfg->n_kv_heads : 1);
    return layers * 2 * nkv * dsi_kv_vector_bytes(dt, (size_t)(cfg->head_dim > 0 ? cfg->head_dim : 1));
}
