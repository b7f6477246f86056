/*
 * tp_load.c: loads one rank's shard of a Qwen2/Llama model straight from the
 * mmap'd safetensors: only the rows (column-parallel layers, lm_head) or the
 * columns (row-parallel O and down) of this rank are read and converted, so a
 * rank's memory is its slice plus the replicated embedding and norms.
 *
 * Quantization gives exactly what the single-process CPU backend holds for the
 * same weights:
 *  - row slices: int8 scales are per output row (or per group along the row),
 *    and a row is whole in its slice, so quantizing the slice is the same.
 *  - column slices: each full row is read and quantized (its per-row scale
 *    comes from the whole row), then the slice's q values and scales are kept.
 *    Group-wise, dsi_tp_check_split made the slice start on a group boundary.
 */
#ifdef DSI_HAVE_MPI
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "tp_internal.h"

static int find(const struct dsi__tp *t, const char *name, int64_t d0, int64_t d1,
                const struct dsi_tensor **out, char **err);
static int read_rows(const struct dsi_tensor *src, int r0, int r1, int cols, float *dst, char **err);
static int store(struct dsi__tp *t, const char *name, float *f, int rows, int cols, struct dsi_qweight *w,
                 char **err);
static int load_rows(struct dsi__tp *t, const char *name, int rows, int cols, int r0, int r1,
                     struct dsi_qweight *w, char **err);
static int load_cols(struct dsi__tp *t, const char *name, int rows, int cols, int c0, int c1,
                     struct dsi_qweight *w, char **err);
static int load_vec(struct dsi__tp *t, const char *name, int n, int i0, int i1, float **out, char **err);

int dsi__tp_own(struct dsi__tp *t, void *p) {
    if (!p) return DSI_ENOMEM;
    if (t->n_allocs == t->cap_allocs) {
        size_t cap = t->cap_allocs ? t->cap_allocs * 2 : 64;
        void **n = realloc(t->allocs, cap * sizeof *n);
        if (!n) {
            free(p);
            return DSI_ENOMEM;
        }
        t->allocs = n;
        t->cap_allocs = cap;
    }
    t->allocs[t->n_allocs++] = p;
    return 0;
}

static void *own_alloc(struct dsi__tp *t, size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) return NULL;
    void *p = calloc(n ? n : 1, size ? size : 1);
    return dsi__tp_own(t, p) ? NULL : p;
}

/* Finds name, checks it is (d0, d1) or, with d1 < 0, (d0), in a float dtype. */
static int find(const struct dsi__tp *t, const char *name, int64_t d0, int64_t d1,
                const struct dsi_tensor **out, char **err) {
    const struct dsi_tensor *x = dsi_st_find(&t->m->st, name);
    if (!x) return dsi_seterr(err, DSI_EFORMAT, "tensor %s is missing from the model", name);
    bool ok = d1 < 0 ? (x->n_dims == 1 && x->shape[0] == d0)
                     : (x->n_dims == 2 && x->shape[0] == d0 && x->shape[1] == d1);
    if (!ok)
        return dsi_seterr(err, DSI_EFORMAT,
                          "tensor %s does not have the shape config.json implies [%lld, %lld]", name,
                          (long long)d0, (long long)d1);
    if (x->dtype != DSI_DT_F32 && x->dtype != DSI_DT_F16 && x->dtype != DSI_DT_BF16)
        return dsi_seterr(err, DSI_EUNSUPPORTED,
                          "tensor %s has dtype %s; tensor parallel reads F32, F16, BF16", name,
                          dsi_dtype_name(x->dtype) ? dsi_dtype_name(x->dtype) : "?");
    *out = x;
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
static int store(struct dsi__tp *t, const char *name, float *f, int rows, int cols, struct dsi_qweight *w,
                 char **err) {
    size_t n = (size_t)rows * (size_t)cols;
    memset(w, 0, sizeof *w);
    w->rows = rows;
    w->cols = cols;
    w->dtype = t->opts.weight_dtype;
    if (w->dtype == DSI_W_F32) {
        if (dsi__tp_own(t, f)) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
        w->data = f;
        t->be.weight_bytes += n * sizeof(float);
        return 0;
    }
    if (w->dtype == DSI_W_BF16) {
        uint16_t *h = own_alloc(t, n, sizeof *h);
        if (h)
            for (size_t i = 0; i < n; i++)
                h[i] = dsi_f32_to_bf16(f[i]);
        free(f);
        if (!h) return dsi_seterr(err, DSI_ENOMEM, "out of memory converting %s", name);
        w->data = h;
        t->be.weight_bytes += n * sizeof *h;
        return 0;
    }
    int gs = t->opts.int8_group_size;
    if (gs > 0 && cols % gs) {
        free(f);
        return dsi_seterr(err, DSI_EINVAL, "int8 group size %d does not divide the %d inputs of %s", gs, cols,
                          name);
    }
    size_t ng = gs > 0 ? (size_t)(cols / gs) : 1;
    int8_t *q = own_alloc(t, n, 1);
    float *sc = own_alloc(t, (size_t)rows, ng * sizeof(float));
    int rc = q && sc ? dsi_quantize_int8(f, rows, cols, gs, q, sc) : DSI_ENOMEM;
    free(f);
    if (rc) return dsi_seterr(err, rc, "quantizing %s failed", name);
    w->group_size = gs;
    w->data = q;
    w->scales = sc;
    t->be.weight_bytes += n + (size_t)rows * ng * sizeof(float);
    return 0;
}

static int load_rows(struct dsi__tp *t, const char *name, int rows, int cols, int r0, int r1,
                     struct dsi_qweight *w, char **err) {
    const struct dsi_tensor *x;
    int rc = find(t, name, rows, cols, &x, err);
    if (rc) return rc;
    float *f = malloc(((size_t)(r1 - r0) * (size_t)cols + 1) * sizeof *f);
    if (!f) return dsi_seterr(err, DSI_ENOMEM, "out of memory reading %s", name);
    if ((rc = read_rows(x, r0, r1, cols, f, err))) {
        free(f);
        return rc;
    }
    return store(t, name, f, r1 - r0, cols, w, err);
}

/* Columns [c0, c1) of every row; int8 scales from the whole row (see the file comment). */
static int load_cols(struct dsi__tp *t, const char *name, int rows, int cols, int c0, int c1,
                     struct dsi_qweight *w, char **err) {
    const struct dsi_tensor *x;
    int rc = find(t, name, rows, cols, &x, err);
    if (rc) return rc;
    int nc = c1 - c0;
    float *row = malloc((size_t)cols * sizeof *row);
    float *f = malloc(((size_t)rows * (size_t)nc + 1) * sizeof *f);
    if (!row || !f) {
        free(row);
        free(f);
        return dsi_seterr(err, DSI_ENOMEM, "out of memory reading %s", name);
    }
    for (int r = 0; r < rows && !rc; r++) {
        rc = read_rows(x, r, r + 1, cols, row, err);
        memcpy(f + (size_t)r * (size_t)nc, row + c0, (size_t)nc * sizeof *f);
    }
    if (rc || t->opts.weight_dtype != DSI_W_INT8) {
        free(row);
        if (rc) {
            free(f);
            return rc;
        }
        return store(t, name, f, rows, nc, w, err);
    }
    int gs = t->opts.int8_group_size;
    if (gs > 0 && (cols % gs || c0 % gs || nc % gs)) {
        free(row);
        free(f);
        return dsi_seterr(err, DSI_EINVAL, "int8 group size %d does not align with the slice [%d, %d) of %s",
                          gs, c0, c1, name);
    }
    int ng_full = gs > 0 ? cols / gs : 1, ng = gs > 0 ? nc / gs : 1;
    int8_t *qrow = malloc((size_t)cols);
    float *srow = malloc((size_t)ng_full * sizeof *srow);
    int8_t *q = own_alloc(t, (size_t)rows * (size_t)nc, 1);
    float *sc = own_alloc(t, (size_t)rows, (size_t)ng * sizeof(float));
    if (!qrow || !srow || !q || !sc) rc = dsi_seterr(err, DSI_ENOMEM, "out of memory quantizing %s", name);
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
    free(f);
    if (rc) return rc;
    memset(w, 0, sizeof *w);
    w->dtype = DSI_W_INT8;
    w->rows = rows;
    w->cols = nc;
    w->group_size = gs;
    w->data = q;
    w->scales = sc;
    t->be.weight_bytes += (size_t)rows * (size_t)nc + (size_t)rows * (size_t)ng * sizeof(float);
    return 0;
}

/* Elements [i0, i1) of a vector of n. */
static int load_vec(struct dsi__tp *t, const char *name, int n, int i0, int i1, float **out, char **err) {
    const struct dsi_tensor *x;
    int rc = find(t, name, n, -1, &x, err);
    if (rc) return rc;
    float *f = own_alloc(t, (size_t)(i1 - i0), sizeof *f);
    if (!f) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    if ((rc = read_rows(x, i0, i1, 1, f, err))) return rc;
    t->be.weight_bytes += (size_t)(i1 - i0) * sizeof(float);
    *out = f;
    return 0;
}

int dsi__tp_load(struct dsi__tp *t, char **err) {
    const struct dsi_model_config *cfg = t->cfg;
    int H = cfg->hidden_size, I = cfg->intermediate_size, V = cfg->vocab_size, hd = cfg->head_dim;
    int q_dim = cfg->n_heads * hd, kv_dim = cfg->n_kv_heads * hd;
    int q0 = t->rank * t->q_l, k0 = t->rank * t->kv_l;
    char name[160];
    int rc;

    if ((rc = load_rows(t, "model.embed_tokens.weight", V, H, 0, V, &t->embed, err))) return rc;
    if (cfg->tie_word_embeddings) {
        /* a view of this rank's rows of the replicated embedding (same quantization) */
        t->lm_head = t->embed;
        t->lm_head.rows = t->v1 - t->v0;
        size_t off = (size_t)t->v0 * (size_t)H;
        if (t->embed.dtype == DSI_W_F32) t->lm_head.data = (const float *)t->embed.data + off;
        if (t->embed.dtype == DSI_W_BF16) t->lm_head.data = (const uint16_t *)t->embed.data + off;
        if (t->embed.dtype == DSI_W_INT8) {
            t->lm_head.data = (const int8_t *)t->embed.data + off;
            t->lm_head.scales = t->embed.scales + (size_t)t->v0 * (size_t)dsi_qweight_groups(&t->embed);
        }
    } else if ((rc = load_rows(t, "lm_head.weight", V, H, t->v0, t->v1, &t->lm_head, err))) {
        return rc;
    }
    if ((rc = load_vec(t, "model.norm.weight", H, 0, H, &t->final_norm, err))) return rc;
    t->layers = own_alloc(t, (size_t)cfg->n_layers, sizeof *t->layers);
    if (!t->layers) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    bool bias = cfg->attention_bias || cfg->arch == DSI_ARCH_QWEN2;
    for (int l = 0; l < cfg->n_layers; l++) {
        struct dsi__tp_layer *L = &t->layers[l];
#define NAME(suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), name)
        if ((rc = load_rows(t, NAME("self_attn.q_proj.weight"), q_dim, H, q0, q0 + t->q_l, &L->wq, err)) ||
            (rc = load_rows(t, NAME("self_attn.k_proj.weight"), kv_dim, H, k0, k0 + t->kv_l, &L->wk, err)) ||
            (rc = load_rows(t, NAME("self_attn.v_proj.weight"), kv_dim, H, k0, k0 + t->kv_l, &L->wv, err)) ||
            (rc = load_cols(t, NAME("self_attn.o_proj.weight"), H, q_dim, q0, q0 + t->q_l, &L->wo, err)) ||
            (rc = load_rows(t, NAME("mlp.gate_proj.weight"), I, H, t->i0, t->i1, &L->w_gate, err)) ||
            (rc = load_rows(t, NAME("mlp.up_proj.weight"), I, H, t->i0, t->i1, &L->w_up, err)) ||
            (rc = load_cols(t, NAME("mlp.down_proj.weight"), H, I, t->i0, t->i1, &L->w_down, err)) ||
            (rc = load_vec(t, NAME("input_layernorm.weight"), H, 0, H, &L->attn_norm, err)) ||
            (rc = load_vec(t, NAME("post_attention_layernorm.weight"), H, 0, H, &L->ffn_norm, err)))
            return rc;
        if (bias &&
            ((rc = load_vec(t, NAME("self_attn.q_proj.bias"), q_dim, q0, q0 + t->q_l, &L->bq, err)) ||
             (rc = load_vec(t, NAME("self_attn.k_proj.bias"), kv_dim, k0, k0 + t->kv_l, &L->bk, err)) ||
             (rc = load_vec(t, NAME("self_attn.v_proj.bias"), kv_dim, k0, k0 + t->kv_l, &L->bv, err))))
            return rc;
#undef NAME
    }
    return 0;
}
#else
typedef int dsi__tp_load_needs_mpi;
#endif
