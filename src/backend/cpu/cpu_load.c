/*
 * cpu_load.c: turns a struct dsi_model (mmap'd safetensors + parsed config) into
 * the CPU backend's weights: every tensor is read as fp32 (from f32/f16/bf16), its
 * shape checked against what the config implies, then kept as f32, bf16 or int8
 * (symmetric, per output channel or group-wise along the input).
 *
 * Tensor names are HF's Qwen2/Llama names (model.layers.N.self_attn.q_proj.weight ...).
 * A config that disagrees with the tensors fails here with DSI_EFORMAT naming the
 * tensor and both shapes, never later in the forward pass.
 *
 * A shard (cpu_internal.h) reads only its slices straight from the mmap: rows
 * of column-parallel matrices (q/k/v, gate/up, lm_head), columns of the
 * row-parallel ones (o, down). Quantization gives exactly what the whole model
 * holds for the same weights, so a shard's partial sums are the whole model's:
 *  - row slices: int8 scales are per output row (or per group along the row),
 *    and a row is whole in its slice, so quantizing the slice is the same.
 *  - column slices: each full row is read and quantized (its per-row scale
 *    comes from the whole row), then the slice's q values and scales are kept;
 *    group-wise, the shard check made the slice start on a group boundary.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "dsinfer/alloc.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"

static int get_tensor(const struct dsi_model *m, const char *name, int64_t d0, int64_t d1,
                      const struct dsi_tensor **out, char **err);
static int read_rows(const struct dsi_tensor *src, int r0, int r1, int cols, float *dst, char **err);
static int store(struct dsi__cpu *c, const char *name, float *f, int rows, int cols, struct dsi_qweight *w,
                 char **err);
static int load_rows(struct dsi__cpu *c, const struct dsi_model *m, const char *name, int rows, int cols,
                     int r0, int r1, struct dsi_qweight *w, char **err);
static int load_cols(struct dsi__cpu *c, const struct dsi_model *m, const char *name, int rows, int cols,
                     int c0, int c1, struct dsi_qweight *w, char **err);
static int quantize_cols(struct dsi__cpu *c, const struct dsi_tensor *x, const char *name, int rows, int cols,
                         int c0, int c1, struct dsi_qweight *w, char **err);
static int load_vec(struct dsi__cpu *c, const struct dsi_model *m, const char *name, int n, int i0, int i1,
                    float **out, char **err);
static int record_qerr(struct dsi__cpu *c, const char *name, const float *src, const struct dsi_qweight *w);

int dsi__cpu_own(struct dsi__cpu *c, void *p) {
    if (!p) return DSI_ENOMEM;
    void **n = dsi_grow(c->allocs, c->n_allocs, &c->cap_allocs, sizeof *n, 64);
    if (!n) {
        free(p);
        return DSI_ENOMEM;
    }
    c->allocs = n;
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
    /* F8_E4M3 only as a block-scaled 2-D weight (load_rows applies its scales) */
    if (t->dtype != DSI_DT_F32 && t->dtype != DSI_DT_F16 && t->dtype != DSI_DT_BF16 &&
        !(t->dtype == DSI_DT_F8_E4M3 && d1 >= 0 && m->cfg.quant_fp8))
        return dsi_seterr(err, DSI_EUNSUPPORTED,
                          "tensor %s has dtype %s; the CPU backend reads F32, F16, BF16 (and F8_E4M3 "
                          "weights of a quantization_config fp8 checkpoint)",
                          name, dsi_dtype_name(t->dtype) ? dsi_dtype_name(t->dtype) : "?");
    *out = t;
    return 0;
}

/* Rows [r0, r1) of a (rows, cols) tensor as fp32: a view of the mmap converted by
 * dsi_tensor_to_f32, so no byte outside the slice is read. */
static int read_rows(const struct dsi_tensor *src, int r0, int r1, int cols, float *dst, char **err) {
    struct dsi_tensor v = *src;
    size_t esz = dsi_dtype_size(src->dtype);
    v.data = (const char *)src->data + (size_t)r0 * (size_t)cols * esz;
    v.n_elems = (size_t)(r1 - r0) * (size_t)cols;
    v.size_bytes = v.n_elems * esz;
    v.n_dims = 1;
    v.shape[0] = (int64_t)v.n_elems;
    return dsi_tensor_to_f32(&v, dst, err);
}

/* Converts f (rows, cols fp32; taken over or freed) into w in the backend dtype. */
static int store(struct dsi__cpu *c, const char *name, float *f, int rows, int cols, struct dsi_qweight *w,
                 char **err) {
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
        if (h)
            for (size_t i = 0; i < n; i++)
                h[i] = dsi_f32_to_bf16(f[i]);
        free(f);
        if (!h) return dsi_seterr(err, DSI_ENOMEM, "out of memory converting %s", name);
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
        int rc = q && sc ? dsi_quantize_int8(f, rows, cols, gs, q, sc) : DSI_ENOMEM;
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

/* Rows [r0, r1) of the (rows, cols) tensor name. */
static int load_rows(struct dsi__cpu *c, const struct dsi_model *m, const char *name, int rows, int cols,
                     int r0, int r1, struct dsi_qweight *w, char **err) {
    const struct dsi_tensor *x;
    int rc = get_tensor(m, name, rows, cols, &x, err);
    if (rc) return rc;
    size_t n = (size_t)(r1 - r0) * (size_t)cols;
    if (n > SIZE_MAX / sizeof(float) - 1) return dsi_seterr(err, DSI_EOVERFLOW, "tensor %s too large", name);
    float *f = malloc((n + 1) * sizeof *f);
    if (!f) return dsi_seterr(err, DSI_ENOMEM, "out of memory reading tensor %s", name);
    if ((rc = read_rows(x, r0, r1, cols, f, err))) {
        free(f);
        return rc;
    }
    /* FP8 checkpoints: dequantized here (whole tensors: an MLA shard loads its
     * layers whole and splits only lm_head), then kept or requantized like any weight */
    if (x->dtype == DSI_DT_F8_E4M3) {
        rc = r0 == 0 && r1 == rows ? dsi__cpu_fp8_scale(c, m, name, f, rows, cols, err)
                                   : dsi_seterr(err, DSI_EUNSUPPORTED, "FP8 tensor %s cannot be sharded", name);
        if (rc) {
            free(f);
            return rc;
        }
    }
    return store(c, name, f, r1 - r0, cols, w, err);
}

int dsi__cpu_load_linear(struct dsi__cpu *c, const struct dsi_model *m, const char *name, int rows, int cols,
                         struct dsi_qweight *w, char **err) {
    return load_rows(c, m, name, rows, cols, 0, rows, w, err);
}

int dsi__cpu_load_vec(struct dsi__cpu *c, const struct dsi_model *m, const char *name, int n, float **out,
                      char **err) {
    return load_vec(c, m, name, n, 0, n, out, err);
}

void *dsi__cpu_alloc(struct dsi__cpu *c, size_t n, size_t size) {
    return own_alloc(c, n, size);
}

/* Columns [c0, c1) of every row of the (rows, cols) tensor name; int8 scales
 * come from the whole row (see the file comment). */
static int load_cols(struct dsi__cpu *c, const struct dsi_model *m, const char *name, int rows, int cols,
                     int c0, int c1, struct dsi_qweight *w, char **err) {
    if (c0 == 0 && c1 == cols) return load_rows(c, m, name, rows, cols, 0, rows, w, err);
    const struct dsi_tensor *x;
    int rc = get_tensor(m, name, rows, cols, &x, err);
    if (rc) return rc;
    if (x->dtype == DSI_DT_F8_E4M3) return dsi_seterr(err, DSI_EUNSUPPORTED, "FP8 tensor %s cannot be sharded", name);
    if (c->opts.weight_dtype == DSI_W_INT8) return quantize_cols(c, x, name, rows, cols, c0, c1, w, err);
    int nc = c1 - c0;
    float *row = malloc((size_t)cols * sizeof *row);
    float *f = malloc(((size_t)rows * (size_t)nc + 1) * sizeof *f);
    if (!row || !f) rc = dsi_seterr(err, DSI_ENOMEM, "out of memory reading %s", name);
    for (int r = 0; r < rows && !rc; r++) {
        rc = read_rows(x, r, r + 1, cols, row, err);
        memcpy(f + (size_t)r * (size_t)nc, row + c0, (size_t)nc * sizeof *f);
    }
    free(row);
    if (rc) {
        free(f);
        return rc;
    }
    return store(c, name, f, rows, nc, w, err);
}

/* load_cols in int8: quantizes each whole row, keeps the slice's values and scales. */
static int quantize_cols(struct dsi__cpu *c, const struct dsi_tensor *x, const char *name, int rows, int cols,
                         int c0, int c1, struct dsi_qweight *w, char **err) {
    int gs = c->opts.int8_group_size, nc = c1 - c0, rc = 0;
    if (gs > 0 && (cols % gs || c0 % gs || nc % gs))
        return dsi_seterr(err, DSI_EINVAL, "int8 group size %d does not align with the slice [%d, %d) of %s",
                          gs, c0, c1, name);
    int ng_full = gs > 0 ? cols / gs : 1, ng = gs > 0 ? nc / gs : 1;
    float *row = malloc((size_t)cols * sizeof *row);
    int8_t *qrow = malloc((size_t)cols);
    float *srow = malloc((size_t)ng_full * sizeof *srow);
    int8_t *q = own_alloc(c, (size_t)rows * (size_t)nc, 1);
    float *sc = own_alloc(c, (size_t)rows, (size_t)ng * sizeof(float));
    if (!row || !qrow || !srow || !q || !sc)
        rc = dsi_seterr(err, DSI_ENOMEM, "out of memory quantizing %s", name);
    for (int r = 0; r < rows && !rc; r++) {
        if ((rc = read_rows(x, r, r + 1, cols, row, err))) break;
        if ((rc = dsi_quantize_int8(row, 1, cols, gs, qrow, srow))) {
            rc = dsi_seterr(err, rc, "quantizing %s failed", name);
            break;
        }
        memcpy(q + (size_t)r * (size_t)nc, qrow + c0, (size_t)nc);
        if (gs > 0)
            memcpy(sc + (size_t)r * (size_t)ng, srow + c0 / gs, (size_t)ng * sizeof *sc);
        else
            sc[r] = srow[0];
    }
    free(qrow);
    free(srow);
    free(row);
    if (rc) return rc;
    memset(w, 0, sizeof *w);
    w->dtype = DSI_W_INT8;
    w->rows = rows;
    w->cols = nc;
    w->group_size = gs;
    w->data = q;
    w->scales = sc;
    c->be.weight_bytes += (size_t)rows * (size_t)nc + (size_t)rows * (size_t)ng * sizeof(float);
    return 0;
}

/* Elements [i0, i1) of the vector name of n. */
static int load_vec(struct dsi__cpu *c, const struct dsi_model *m, const char *name, int n, int i0, int i1,
                    float **out, char **err) {
    const struct dsi_tensor *t;
    int rc = get_tensor(m, name, n, -1, &t, err);
    if (rc) return rc;
    float *f = own_alloc(c, (size_t)(i1 - i0), sizeof *f);
    if (!f) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    if ((rc = read_rows(t, i0, i1, 1, f, err))) return rc;
    c->be.weight_bytes += (size_t)(i1 - i0) * sizeof(float);
    *out = f;
    return 0;
}

static int record_qerr(struct dsi__cpu *c, const char *name, const float *src, const struct dsi_qweight *w) {
    struct dsi__cpu_qerr *q = dsi_grow(c->qerr, c->n_qerr, &c->cap_qerr, sizeof *q, 32);
    if (!q) return DSI_ENOMEM;
    c->qerr = q;
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

/* lm_head of a tied model: a view of this shard's rows of the embedding (the
 * same quantization, no second copy). */
static void tie_lm_head(struct dsi__cpu *c) {
    size_t off = (size_t)c->vocab0 * (size_t)c->cfg->hidden_size;
    c->lm_head = c->embed;
    c->lm_head.rows = c->n_vocab;
    if (c->embed.dtype == DSI_W_F32) c->lm_head.data = (const float *)c->embed.data + off;
    if (c->embed.dtype == DSI_W_BF16) c->lm_head.data = (const uint16_t *)c->embed.data + off;
    if (c->embed.dtype == DSI_W_INT8) {
        c->lm_head.data = (const int8_t *)c->embed.data + off;
        c->lm_head.scales = c->embed.scales + (size_t)c->vocab0 * (size_t)dsi_qweight_groups(&c->embed);
    }
}

int dsi__cpu_load(struct dsi__cpu *c, const struct dsi_model *m, char **err) {
    const struct dsi_model_config *cfg = c->cfg;
    int H = cfg->hidden_size, I = cfg->intermediate_size, V = cfg->vocab_size, hd = cfg->head_dim;
    int qd = cfg->n_heads * hd, kvd = cfg->n_kv_heads * hd; /* the whole model's */
    int q0 = c->head0 * hd, q1 = q0 + c->q_dim, k0 = c->kv_head0 * hd, k1 = k0 + c->kv_dim;
    int i0 = c->inter0, i1 = c->inter0 + c->n_inter;
    char name[160];
    int rc;

    if ((rc = load_rows(c, m, "model.embed_tokens.weight", V, H, 0, V, &c->embed, err))) return rc;
    if (cfg->tie_word_embeddings) {
        tie_lm_head(c); /* HF ties: lm_head.weight, if shipped, is ignored */
    } else if ((rc = load_rows(c, m, "lm_head.weight", V, H, c->vocab0, c->vocab0 + c->n_vocab, &c->lm_head,
                               err))) {
        return rc;
    }
    if ((rc = load_vec(c, m, "model.norm.weight", H, 0, H, &c->final_norm, err))) return rc;

    c->layers = own_alloc(c, (size_t)cfg->n_layers, sizeof *c->layers);
    if (!c->layers) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    bool bias = cfg->attention_bias || cfg->arch == DSI_ARCH_QWEN2;
    if (c->mla && cfg->n_mtp_layers > 0) {
        snprintf(name, sizeof name, "model.layers.%d.", cfg->n_layers);
        size_t n = 0, len = strlen(name);
        for (size_t i = 0; i < m->st.n_tensors; i++)
            n += !strncmp(m->st.tensors[i].name, name, len);
        if (n)
            dsi_log(DSI_LOG_INFO, "cpu",
                    "skipping %d multi-token-prediction layer(s) past num_hidden_layers %d (%zu tensors "
                    "from %s*): next-token decoding does not use them",
                    cfg->n_mtp_layers, cfg->n_layers, n, name);
    }
    for (int l = 0; l < cfg->n_layers; l++) {
        struct dsi__cpu_layer *L = &c->layers[l];
        if (c->mla) {
            if ((rc = dsi__cpu_load_mla_layer(c, m, l, err))) return rc;
            continue;
        }
#define NAME(suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), name)
        if ((rc = load_rows(c, m, NAME("self_attn.q_proj.weight"), qd, H, q0, q1, &L->wq, err)) ||
            (rc = load_rows(c, m, NAME("self_attn.k_proj.weight"), kvd, H, k0, k1, &L->wk, err)) ||
            (rc = load_rows(c, m, NAME("self_attn.v_proj.weight"), kvd, H, k0, k1, &L->wv, err)) ||
            (rc = load_cols(c, m, NAME("self_attn.o_proj.weight"), H, qd, q0, q1, &L->wo, err)) ||
            (rc = load_rows(c, m, NAME("mlp.gate_proj.weight"), I, H, i0, i1, &L->w_gate, err)) ||
            (rc = load_rows(c, m, NAME("mlp.up_proj.weight"), I, H, i0, i1, &L->w_up, err)) ||
            (rc = load_cols(c, m, NAME("mlp.down_proj.weight"), H, I, i0, i1, &L->w_down, err)) ||
            (rc = load_vec(c, m, NAME("input_layernorm.weight"), H, 0, H, &L->attn_norm, err)) ||
            (rc = load_vec(c, m, NAME("post_attention_layernorm.weight"), H, 0, H, &L->ffn_norm, err)))
            return rc;
        if (bias && ((rc = load_vec(c, m, NAME("self_attn.q_proj.bias"), qd, q0, q1, &L->bq, err)) ||
                     (rc = load_vec(c, m, NAME("self_attn.k_proj.bias"), kvd, k0, k1, &L->bk, err)) ||
                     (rc = load_vec(c, m, NAME("self_attn.v_proj.bias"), kvd, k0, k1, &L->bv, err))))
            return rc;
#undef NAME
    }
    return 0;
}
