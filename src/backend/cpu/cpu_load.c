/*
 * cpu_load.c: turns a struct dsi_model (mmap'd safetensors + parsed config) into
 * the CPU backend's weights: every tensor is read as fp32 (from f32/f16/bf16), its
 * shape checked against what the config implies, then kept as f32, bf16 or int8
 * (symmetric, per output channel or group-wise along the input).
 *
 * Tensor names are HF's Qwen2/Llama names (model.layers.N.self_attn.q_proj.weight ...).
 * A config that disagrees with the tensors fails here with DSI_EFORMAT naming the
 * tensor and both shapes, never later in the forward pass.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"

static int get_tensor(const struct dsi_model *m, const char *name, int64_t d0, int64_t d1,
                      const struct dsi_tensor **out, char **err);
static int read_f32(struct dsi__cpu *c, const struct dsi_tensor *t, float **out, char **err);
static int load_linear(struct dsi__cpu *c, const struct dsi_model *m, const char *name, int rows, int cols,
                       struct dsi_qweight *w, char **err);
static int load_vec(struct dsi__cpu *c, const struct dsi_model *m, const char *name, int n, float **out,
                    char **err);
static int record_qerr(struct dsi__cpu *c, const char *name, const float *src, const struct dsi_qweight *w);

int dsi__cpu_own(struct dsi__cpu *c, void *p) {
    if (!p) return DSI_ENOMEM;
    if (c->n_allocs == c->cap_allocs) {
        size_t cap = c->cap_allocs ? c->cap_allocs * 2 : 64;
        void **n = realloc(c->allocs, cap * sizeof *n);
        if (!n) {
            free(p);
            return DSI_ENOMEM;
        }
        c->allocs = n;
        c->cap_allocs = cap;
    }
    c->allocs[c->n_allocs++] = p;
    return 0;
}

static void *own_alloc(struct dsi__cpu *c, size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) return NULL;
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (dsi__cpu_own(c, p)) return NULL;
    return p;
}

/* Finds `name` and checks it is 2-D (d0, d1) or, with d1 < 0, 1-D (d0). */
static int get_tensor(const struct dsi_model *m, const char *name, int64_t d0, int64_t d1,
                      const struct dsi_tensor **out, char **err) {
    const struct dsi_tensor *t = dsi_st_find(&m->st, name);
    if (!t) return dsi_seterr(err, DSI_EFORMAT, "tensor %s is missing from the model", name);
    bool ok = d1 < 0 ? (t->n_dims == 1 && t->shape[0] == d0)
                     : (t->n_dims == 2 && t->shape[0] == d0 && t->shape[1] == d1);
    if (!ok) {
        char got[96] = "";
        size_t len = 0;
        for (int i = 0; i < t->n_dims && i < DSI_MAX_DIMS && len < sizeof got - 24; i++)
            len += (size_t)snprintf(got + len, sizeof got - len, "%s%lld", i ? ", " : "",
                                    (long long)t->shape[i]);
        if (d1 < 0)
            return dsi_seterr(err, DSI_EFORMAT, "tensor %s has shape [%s] but config.json implies [%lld]",
                              name, got, (long long)d0);
        return dsi_seterr(err, DSI_EFORMAT, "tensor %s has shape [%s] but config.json implies [%lld, %lld]",
                          name, got, (long long)d0, (long long)d1);
    }
    if (t->dtype != DSI_DT_F32 && t->dtype != DSI_DT_F16 && t->dtype != DSI_DT_BF16)
        return dsi_seterr(err, DSI_EUNSUPPORTED,
                          "tensor %s has dtype %s; the CPU backend reads F32, F16, BF16", name,
                          dsi_dtype_name(t->dtype) ? dsi_dtype_name(t->dtype) : "?");
    *out = t;
    return 0;
}

/* Reads t as fp32 into a new buffer (not owned by c; the caller frees). */
static int read_f32(struct dsi__cpu *c, const struct dsi_tensor *t, float **out, char **err) {
    (void)c;
    *out = NULL;
    if (t->n_elems > SIZE_MAX / sizeof(float))
        return dsi_seterr(err, DSI_EOVERFLOW, "tensor %s too large", t->name);
    float *buf = malloc((t->n_elems ? t->n_elems : 1) * sizeof(float));
    if (!buf) return dsi_seterr(err, DSI_ENOMEM, "out of memory reading tensor %s", t->name);
    int rc = dsi_tensor_to_f32(t, buf, err);
    if (rc) {
        free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

static int load_linear(struct dsi__cpu *c, const struct dsi_model *m, const char *name, int rows, int cols,
                       struct dsi_qweight *w, char **err) {
    const struct dsi_tensor *t;
    float *f = NULL;
    int rc = get_tensor(m, name, rows, cols, &t, err);
    if (rc) return rc;
    if ((rc = read_f32(c, t, &f, err))) return rc;
    size_t n = (size_t)rows * (size_t)cols;
    memset(w, 0, sizeof *w);
    w->rows = rows;
    w->cols = cols;
    w->dtype = c->opts.weight_dtype;
    switch (c->opts.weight_dtype) {
    case DSI_W_F32:
        if (dsi__cpu_own(c, f)) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
        w->data = f;
        c->be.weight_bytes += n * sizeof(float);
        return 0;
    case DSI_W_BF16: {
        uint16_t *h = own_alloc(c, n, sizeof *h);
        if (!h) {
            free(f);
            return dsi_seterr(err, DSI_ENOMEM, "out of memory converting %s", name);
        }
        for (size_t i = 0; i < n; i++)
            h[i] = dsi_f32_to_bf16(f[i]);
        free(f);
        w->data = h;
        c->be.weight_bytes += n * sizeof *h;
        return 0;
    }
    case DSI_W_INT8: {
        int gs = c->opts.int8_group_size;
        if (gs > 0 && cols % gs != 0) {
            free(f);
            return dsi_seterr(
                err, DSI_EINVAL,
                "int8 group size %d does not divide the %d inputs of %s; use a divisor or 0 (per channel)",
                gs, cols, name);
        }
        size_t ng = gs > 0 ? (size_t)(cols / gs) : 1;
        int8_t *q = own_alloc(c, n, 1);
        float *sc = own_alloc(c, (size_t)rows, ng * sizeof(float));
        if (!q || !sc) {
            free(f);
            return dsi_seterr(err, DSI_ENOMEM, "out of memory quantizing %s", name);
        }
        rc = dsi_quantize_int8(f, rows, cols, gs, q, sc);
        w->group_size = gs;
        w->data = q;
        w->scales = sc;
        if (!rc) rc = record_qerr(c, name, f, w);
        free(f);
        if (rc) return dsi_seterr(err, rc, "quantizing %s failed", name);
        c->be.weight_bytes += n + (size_t)rows * ng * sizeof(float);
        return 0;
    }
    }
    free(f);
    return dsi_seterr(err, DSI_EINVAL, "unknown weight dtype %d", (int)c->opts.weight_dtype);
}

static int load_vec(struct dsi__cpu *c, const struct dsi_model *m, const char *name, int n, float **out,
                    char **err) {
    const struct dsi_tensor *t;
    int rc = get_tensor(m, name, n, -1, &t, err);
    if (rc) return rc;
    if ((rc = read_f32(c, t, out, err))) return rc;
    if (dsi__cpu_own(c, *out)) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    c->be.weight_bytes += (size_t)n * sizeof(float);
    return 0;
}

static int record_qerr(struct dsi__cpu *c, const char *name, const float *src, const struct dsi_qweight *w) {
    if (c->n_qerr == c->cap_qerr) {
        size_t cap = c->cap_qerr ? c->cap_qerr * 2 : 32;
        struct dsi__cpu_qerr *n = realloc(c->qerr, cap * sizeof *n);
        if (!n) return DSI_ENOMEM;
        c->qerr = n;
        c->cap_qerr = cap;
    }
    float *row = malloc((size_t)w->cols * sizeof *row);
    if (!row) return DSI_ENOMEM;
    double num = 0, den = 0, mx = 0;
    for (int r = 0; r < w->rows; r++) {
        dsi_qweight_row_f32(w, r, row);
        const float *s = src + (size_t)r * (size_t)w->cols;
        for (int i = 0; i < w->cols; i++) {
            double d = (double)s[i] - (double)row[i];
            num += d * d;
            den += (double)s[i] * (double)s[i];
            if (fabs(d) > mx) mx = fabs(d);
        }
    }
    free(row);
    struct dsi__cpu_qerr *e = &c->qerr[c->n_qerr++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->rel_err = den > 0 ? sqrt(num / den) : 0.0;
    e->max_abs_err = mx;
    return 0;
}

int dsi__cpu_load(struct dsi__cpu *c, const struct dsi_model *m, char **err) {
    const struct dsi_model_config *cfg = c->cfg;
    int H = cfg->hidden_size, I = cfg->intermediate_size, V = cfg->vocab_size;
    char name[160];
    int rc;

    if ((rc = load_linear(c, m, "model.embed_tokens.weight", V, H, &c->embed, err))) return rc;
    if (cfg->tie_word_embeddings) {
        c->lm_head = c->embed; /* HF ties: lm_head.weight, if shipped, is ignored */
    } else if ((rc = load_linear(c, m, "lm_head.weight", V, H, &c->lm_head, err))) {
        return rc;
    }
    if ((rc = load_vec(c, m, "model.norm.weight", H, &c->final_norm, err))) return rc;

    c->layers = own_alloc(c, (size_t)cfg->n_layers, sizeof *c->layers);
    if (!c->layers) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    bool bias = cfg->attention_bias || cfg->arch == DSI_ARCH_QWEN2;
    for (int l = 0; l < cfg->n_layers; l++) {
        struct dsi__cpu_layer *L = &c->layers[l];
#define LIN(field, suffix, rows, cols)                                                                       \
    snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);                                            \
    if ((rc = load_linear(c, m, name, rows, cols, &L->field, err))) return rc;
#define VEC(field, suffix, n)                                                                                \
    snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);                                            \
    if ((rc = load_vec(c, m, name, n, &L->field, err))) return rc;
        LIN(wq, "self_attn.q_proj.weight", c->q_dim, H)
        LIN(wk, "self_attn.k_proj.weight", c->kv_dim, H)
        LIN(wv, "self_attn.v_proj.weight", c->kv_dim, H)
        LIN(wo, "self_attn.o_proj.weight", H, c->q_dim)
        LIN(w_gate, "mlp.gate_proj.weight", I, H)
        LIN(w_up, "mlp.up_proj.weight", I, H)
        LIN(w_down, "mlp.down_proj.weight", H, I)
        VEC(attn_norm, "input_layernorm.weight", H)
        VEC(ffn_norm, "post_attention_layernorm.weight", H)
        if (bias) {
            VEC(bq, "self_attn.q_proj.bias", c->q_dim)
            VEC(bk, "self_attn.k_proj.bias", c->kv_dim)
            VEC(bv, "self_attn.v_proj.bias", c->kv_dim)
        }
#undef LIN
#undef VEC
    }
    return 0;
}
