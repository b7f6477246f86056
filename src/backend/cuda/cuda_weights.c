/*
 * cuda_weights.c: weight upload for the CUDA backend.
 *
 * Each HF tensor (BF16, F16 or F32 in the mmap) is converted to bf16 on the host
 * if needed, copied into a device staging buffer (fused matrices: q|k|v
 * stacked by rows there, gate|up interleaved in blocks of 8 rows where the
 * intermediate size allows, else stacked), and then either kept as bf16 or quantized
 * on the GPU to the tiled INT8 layout with per-output-channel scales. Vectors
 * (norms, biases) are kept in fp32. Random mode fills the staging buffer on the
 * GPU instead (benchmarks of real shapes without a 15 GB file).
 *
 * A model opened with defer_weight_hash (the CLI does so for --backend cuda)
 * comes with its *.safetensors unhashed and their tensor data withheld: first
 * cuda_hashload.c hashes each file while copying it to a device image (one
 * pass, fail closed), then bf16 tensors are copied device to device from the
 * images, F16/F32 ones and vectors are read back from the images and converted
 * on the host (never from the mmap: the file may have changed since it was
 * mapped, the image holds exactly the hashed bytes), and the images are freed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"

struct dsi__cu_loader {
    struct dsi__cuda *c;
    const struct dsi_model *m;
    bool random;
    uint8_t **images; /* device image of m->pending[i] (single pass), or NULL */
    uint64_t seed, counter;
    uint16_t *stage; /* device bf16 staging, stage_elems */
    size_t stage_elems;
    uint16_t *host; /* host bf16 conversion buffer */
    size_t host_elems;
};

static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float elem_f32(const struct dsi_tensor *t, size_t i) {
    const unsigned char *p = t->data;
    if (t->dtype == DSI_DT_F32) {
        float f;
        memcpy(&f, p + i * 4, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p + i * 2, 2);
    if (t->dtype == DSI_DT_BF16) {
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    return dsi_f16_to_f32(h);
}

/* Finds `name` with shape (rows, cols) (cols 0: a vector of rows). */
static int find(struct dsi__cu_loader *L, const char *name, int rows, int cols, const struct dsi_tensor **out,
                char **err) {
    const struct dsi_tensor *t = dsi_st_find(&L->m->st, name);
    if (!t) return dsi_seterr(err, DSI_ENOENT, "cuda: tensor %s missing from the model", name);
    /* F8_E4M3 only as a block-scaled matrix of a quantization_config fp8 checkpoint */
    bool fp8 = t->dtype == DSI_DT_F8_E4M3 && cols && L->m->cfg.quant_fp8;
    if (t->dtype != DSI_DT_BF16 && t->dtype != DSI_DT_F16 && t->dtype != DSI_DT_F32 && !fp8)
        return dsi_seterr(err, DSI_EUNSUPPORTED, "cuda: tensor %s has dtype %s (expected BF16, F16 or F32)",
                          name, dsi_dtype_name(t->dtype));
    bool ok = cols ? (t->n_dims == 2 && t->shape[0] == rows && t->shape[1] == cols)
                   : (t->n_dims == 1 && t->shape[0] == rows);
    if (!ok) return dsi_seterr(err, DSI_EFORMAT, "cuda: tensor %s has an unexpected shape", name);
    *out = t;
    return 0;
}

/* The bytes of tensor t that the single pass hashed: a host copy out of its
 * file's device image, so that what is used is exactly what was verified even if
 * the file changed after it was mapped; with no image (two-pass load, or a file
 * verified at open), t->data. *owned: the copy to free, or NULL. */
static int verified_bytes(struct dsi__cu_loader *L, const struct dsi_tensor *t, const void **out,
                          void **owned, char **err) {
    *out = t->data;
    *owned = NULL;
    size_t pi = SIZE_MAX;
    uint64_t off = 0;
    if (L->images && dsi_model_tensor_location(L->m, t, &pi, &off) == 0 && pi < L->m->n_pending &&
        L->images[pi]) {
        if (off > L->m->pending[pi].size || t->size_bytes > L->m->pending[pi].size - off)
            return dsi_seterr(err, DSI_EFORMAT, "cuda: tensor %s lies outside its file", t->name);
        void *h = malloc(t->size_bytes ? t->size_bytes : 1);
        if (!h) return dsi_seterr(err, DSI_ENOMEM, "cuda: no host memory for %s", t->name);
        if (DSI_CUDA_CHECK(cudaMemcpy(h, L->images[pi] + off, t->size_bytes, cudaMemcpyDeviceToHost))) {
            free(h);
            return dsi_seterr(err, DSI_ECUDA, "cuda: reading %s back from its verified image failed",
                              t->name);
        }
        *out = h;
        *owned = h;
    }
    if (!*out)
        return dsi_seterr(err, DSI_EINTEGRITY, "cuda: tensor %s: its file has not been verified", t->name);
    return 0;
}

/* The block of a (full_rows, full_cols) tensor that this backend keeps: all of
 * it, or a tensor-parallel shard's rows or columns (cuda_backend.h). */
struct part {
    const char *name;
    int full_rows, full_cols;
    int r0, rows, c0, cols;
};

static int host_room(struct dsi__cu_loader *L, size_t n, const char *name, char **err) {
    if (n <= L->host_elems) return 0;
    uint16_t *h = realloc(L->host, n * sizeof *h);
    if (!h) return dsi_seterr(err, DSI_ENOMEM, "cuda: no host memory to convert %s", name);
    L->host = h;
    L->host_elems = n;
    return 0;
}

/* An FP8 e4m3 weight of a quantization_config fp8 checkpoint as bf16 rows in
 * L->host: decoded, times its `_scale_inv` block scales (a multiplier, one per
 * quant_block[0] x quant_block[1] block) in fp32 as the CPU loader does, then
 * rounded to bf16 (int8 requantizes that on the GPU like any weight). Whole
 * tensors only: DeepSeek models are not sharded. */
static int fp8_to_host(struct dsi__cu_loader *L, const struct dsi_tensor *t, const struct part *p,
                       char **err) {
    const struct dsi_model_config *mc = &L->m->cfg;
    const int rows = p->full_rows, cols = p->full_cols;
    if (p->r0 || p->c0 || p->rows != rows || p->cols != cols)
        return dsi_seterr(err, DSI_EUNSUPPORTED, "cuda: FP8 tensor %s cannot be sharded", p->name);
    const int br = mc->quant_block[0] > 0 ? mc->quant_block[0] : 128;
    const int bc = mc->quant_block[1] > 0 ? mc->quant_block[1] : 128;
    const int nr = (rows + br - 1) / br, nc = (cols + bc - 1) / bc;
    char sname[200];
    snprintf(sname, sizeof sname, "%s_scale_inv", p->name);
    const struct dsi_tensor *st;
    int rc = find(L, sname, nr, nc, &st, err);
    if (rc) return rc;
    size_t n = (size_t)rows * (size_t)cols;
    if ((rc = host_room(L, n, p->name, err))) return rc;
    float *f = malloc(n * sizeof *f), *sc = malloc((size_t)nr * (size_t)nc * sizeof *sc);
    struct dsi_tensor tv = *t, sv = *st;
    void *o1 = NULL, *o2 = NULL;
    if (!f || !sc) rc = dsi_seterr(err, DSI_ENOMEM, "cuda: no host memory for %s", p->name);
    if (!rc) rc = verified_bytes(L, t, &tv.data, &o1, err);
    if (!rc) rc = verified_bytes(L, st, &sv.data, &o2, err);
    if (!rc) rc = dsi_tensor_to_f32(&tv, f, err);
    if (!rc) rc = dsi_tensor_to_f32(&sv, sc, err);
    for (size_t r = 0; !rc && r < (size_t)rows; r++)
        for (size_t j = 0; j < (size_t)cols; j++)
            L->host[r * cols + j] = f32_to_bf16(f[r * cols + j] * sc[(r / br) * nc + j / bc]);
    free(o1);
    free(o2);
    free(f);
    free(sc);
    return rc;
}

/* Copies the block p as a (rows, cols) bf16 matrix to dst (device); with grp > 0
 * (whole rows only: cols == full_cols, rows % grp == 0) in groups of grp rows
 * that lie gstride rows apart in dst (the interleaved gate|up layout). */
static int upload_rows(struct dsi__cu_loader *L, const struct part *p, uint16_t *dst, int grp, int gstride,
                       char **err) {
    const char *name = p->name;
    size_t n = (size_t)p->rows * p->cols, fc = (size_t)p->full_cols;
    if (grp > 0 && (p->cols != p->full_cols || p->rows % grp || gstride < grp))
        return dsi_seterr(err, DSI_EINTERNAL, "cuda: %s cannot be interleaved", name);
    /* rows -> (height, width) of a 2D copy: groups of g rows gs apart in dst
     * (single rows, one apart, when not interleaved) */
    const size_t g = grp > 0 ? (size_t)grp : 1, gs = grp > 0 ? (size_t)gstride : 1;
    size_t height = (size_t)p->rows / g, width = g * (size_t)p->cols * 2, dpitch = gs * (size_t)p->cols * 2;
    size_t first = (size_t)p->r0 * fc + (size_t)p->c0; /* element index of the block's corner */
    if (L->random) {
        if (grp > 0) /* the rows are filled contiguously: the caller stacks random weights */
            return dsi_seterr(err, DSI_EINTERNAL, "cuda: random %s cannot be interleaved", name);
        float scale = 1.f / sqrtf((float)p->full_cols) * 1.7f; /* ~unit-variance outputs */
        return dsi_cuda_fill_random_bf16(dst, n, L->seed + 0x1000003ull * ++L->counter, scale, L->c->stream)
                   ? dsi_seterr(err, DSI_ECUDA, "cuda: random fill of %s failed", name)
                   : 0;
    }
    const struct dsi_tensor *t;
    int rc = find(L, name, p->full_rows, p->full_cols, &t, err);
    if (rc) return rc;
    size_t pi = SIZE_MAX;
    uint64_t off = 0;
    if (L->images && t->dtype == DSI_DT_BF16 && dsi_model_tensor_location(L->m, t, &pi, &off) == 0 &&
        pi < L->m->n_pending && L->images[pi]) { /* verified bytes already on the device */
        size_t bytes = (size_t)p->full_rows * fc * 2;
        if (off > L->m->pending[pi].size || bytes > L->m->pending[pi].size - off)
            return dsi_seterr(err, DSI_EFORMAT, "cuda: tensor %s lies outside its file", name);
        if (DSI_CUDA_CHECK(cudaMemcpy2DAsync(dst, dpitch, L->images[pi] + off + first * 2, g * fc * 2, width,
                                             height, cudaMemcpyDeviceToDevice, L->c->stream)) ||
            DSI_CUDA_CHECK(cudaStreamSynchronize(L->c->stream)))
            return dsi_seterr(err, DSI_ECUDA, "cuda: device copy of %s failed", name);
        return 0;
    }
    if (!t->data)
        return dsi_seterr(err, DSI_EINTEGRITY, "cuda: tensor %s: its file has not been verified", name);
    const void *src = (const unsigned char *)t->data + first * 2;
    size_t pitch = fc * 2;
    if (t->dtype == DSI_DT_F8_E4M3) {
        if ((rc = fp8_to_host(L, t, p, err))) return rc;
        src = L->host;
        pitch = (size_t)p->cols * 2;
    } else if (t->dtype != DSI_DT_BF16) { /* convert the block: rows of cols elements */
        if ((rc = host_room(L, n, name, err))) return rc;
        struct dsi_tensor tv = *t;
        void *owned = NULL;
        if ((rc = verified_bytes(L, t, &tv.data, &owned, err))) return rc;
        for (size_t r = 0; r < (size_t)p->rows; r++)
            for (size_t j = 0; j < (size_t)p->cols; j++)
                L->host[r * p->cols + j] = f32_to_bf16(elem_f32(&tv, first + r * fc + j));
        free(owned);
        src = L->host;
        pitch = (size_t)p->cols * 2;
    }
    rc = pitch == (size_t)p->cols * 2 && grp == 0
             ? DSI_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * 2, cudaMemcpyHostToDevice, L->c->stream))
             : DSI_CUDA_CHECK(cudaMemcpy2DAsync(dst, dpitch, src, g * pitch, width, height,
                                                cudaMemcpyHostToDevice, L->c->stream));
    if (rc || DSI_CUDA_CHECK(cudaStreamSynchronize(L->c->stream)))
        return dsi_seterr(err, DSI_ECUDA, "cuda: upload of %s failed", name);
    return 0;
}

static int upload_bf16(struct dsi__cu_loader *L, const struct part *p, uint16_t *dst, char **err) {
    return upload_rows(L, p, dst, 0, 0, err);
}

/* Uploads elements [off, off + n) of a vector of full elements as fp32;
 * random mode: `fill` for every element. */
static int upload_vec_part(struct dsi__cu_loader *L, const char *name, int full, int off, int n, float fill,
                           float **dst, const char *what, char **err) {
    int rc = dsi__cuda_alloc(L->c, (void **)dst, (size_t)n * sizeof(float), what, err);
    if (rc) return rc;
    float *h = malloc((size_t)n * sizeof *h);
    if (!h) return dsi_seterr(err, DSI_ENOMEM, "cuda: no host memory for %s", name);
    if (L->random) {
        for (int i = 0; i < n; i++)
            h[i] = fill;
    } else {
        const struct dsi_tensor *t;
        if ((rc = find(L, name, full, 0, &t, err))) {
            free(h);
            return rc;
        }
        struct dsi_tensor tv = *t;
        void *owned = NULL;
        if ((rc = verified_bytes(L, t, &tv.data, &owned, err))) {
            free(h);
            return rc;
        }
        for (int i = 0; i < n; i++)
            h[i] = elem_f32(&tv, (size_t)off + (size_t)i);
        free(owned);
    }
    rc = DSI_CUDA_CHECK(cudaMemcpy(*dst, h, (size_t)n * sizeof *h, cudaMemcpyHostToDevice));
    free(h);
    return rc ? dsi_seterr(err, DSI_ECUDA, "cuda: upload of %s failed", name) : 0;
}

static int upload_vec(struct dsi__cu_loader *L, const char *name, int n, float fill, float **dst,
                      const char *what, char **err) {
    return upload_vec_part(L, name, n, 0, n, fill, dst, what, err);
}

/* Stacks the parts (blocks of equal width k) by rows into staging, or with il
 * > 0 interleaves them in blocks of il rows (part 0's first il rows, part 1's
 * first il rows, ...; parts of equal height), then keeps bf16 or quantizes. */
static int load_matrix_il(struct dsi__cu_loader *L, struct dsi__cu_matrix *w, const struct part *parts,
                          int n_parts, int il, const char *what, char **err) {
    int n = 0, k = parts[0].cols, rc;
    for (int i = 0; i < n_parts; i++) {
        if (parts[i].cols != k) return dsi_seterr(err, DSI_EINTERNAL, "cuda: %s parts differ in width", what);
        if (il > 0 && parts[i].rows != parts[0].rows)
            return dsi_seterr(err, DSI_EINTERNAL, "cuda: %s parts differ in height", what);
        n += parts[i].rows;
    }
    w->n = n;
    w->k = k;
    if (L->c->int8 && L->c->group > 0 && k % L->c->group) /* checked before any upload */
        return dsi_seterr(err, DSI_EINVAL,
                          "int8 group size %d does not divide the %d inputs of %s; use a divisor or 0 "
                          "(per channel)",
                          L->c->group, k, parts[0].name);
    size_t elems = (size_t)n * k;
    uint16_t *dst;
    if (L->c->int8) {
        if (elems > L->stage_elems)
            return dsi_seterr(err, DSI_EINTERNAL, "cuda: staging too small for %s", what);
        dst = L->stage;
    } else {
        if ((rc = dsi__cuda_alloc(L->c, (void **)&w->w, elems * 2, what, err))) return rc;
        dst = w->w;
    }
    size_t off = 0;
    for (int i = 0; i < n_parts; i++) {
        /* random weights: the order of the rows means nothing, fill them stacked */
        if (il > 0 && !L->random)
            rc = upload_rows(L, &parts[i], dst + (size_t)i * il * k, il, n_parts * il, err);
        else
            rc = upload_bf16(L, &parts[i], dst + off, err);
        if (rc) return rc;
        off += (size_t)parts[i].rows * k;
    }
    if (!L->c->int8) return 0;
    int gs = L->c->group;
    if (gs > 0) { /* as the CPU backend: every matrix group-wise, embedding and lm_head too */
        w->group = gs;
        if ((rc = dsi__cuda_alloc(L->c, (void **)&w->q, dsi_cuda_q8_bytes(n, k), what, err)) ||
            (rc = dsi__cuda_alloc(L->c, (void **)&w->gscale, (size_t)n * (size_t)(k / gs) * sizeof(float),
                                  what, err)))
            return rc;
        if (dsi_cuda_quantize_int8_group(w->q, w->gscale, dst, n, k, gs, L->c->stream) ||
            DSI_CUDA_CHECK(cudaStreamSynchronize(L->c->stream)))
            return dsi_seterr(err, DSI_ECUDA, "cuda: group-wise quantizing %s failed", what);
        return 0;
    }
    if ((rc = dsi__cuda_alloc(L->c, (void **)&w->q, dsi_cuda_q8_bytes(n, k), what, err)) ||
        (rc = dsi__cuda_alloc(L->c, (void **)&w->scale, (size_t)n * sizeof(float), what, err)))
        return rc;
    const struct part *p0 = &parts[0];
    if (n_parts == 1 && p0->cols != p0->full_cols && !L->random) {
        /* a tensor-parallel column slice (o, down): the scales of the whole rows,
         * as one GPU has them, so the slice holds the same bytes and TP=N
         * computes what TP=1 does up to the order of the sums */
        struct part rows = *p0;
        rows.c0 = 0;
        rows.cols = p0->full_cols;
        if ((size_t)rows.rows * rows.cols > L->stage_elems)
            return dsi_seterr(err, DSI_EINTERNAL, "cuda: staging too small for the rows of %s", what);
        if ((rc = upload_bf16(L, &rows, dst, err))) return rc;
        if (dsi_cuda_int8_row_scales(w->scale, dst, rows.rows, rows.cols, L->c->stream) ||
            (rc = upload_bf16(L, p0, dst, err)) ||
            dsi_cuda_quantize_int8_scaled(w->q, w->scale, dst, n, k, L->c->stream) ||
            DSI_CUDA_CHECK(cudaStreamSynchronize(L->c->stream)))
            return rc ? rc : dsi_seterr(err, DSI_ECUDA, "cuda: quantizing %s failed", what);
        return 0;
    }
    if (dsi_cuda_quantize_int8(w->q, w->scale, dst, n, k, L->c->stream) ||
        DSI_CUDA_CHECK(cudaStreamSynchronize(L->c->stream)))
        return dsi_seterr(err, DSI_ECUDA, "cuda: quantizing %s failed", what);
    return 0;
}

static int load_matrix(struct dsi__cu_loader *L, struct dsi__cu_matrix *w, const struct part *parts,
                       int n_parts, const char *what, char **err) {
    return load_matrix_il(L, w, parts, n_parts, 0, what, err);
}

/* q|k|v biases (this shard's heads) stacked into one fp32 vector. */
static int load_qkv_bias(struct dsi__cu_loader *L, int il, char **err) {
    const struct dsi_model_config *cfg = &L->c->cfg, *full = &L->m->cfg;
    int hd = cfg->head_dim, nq = cfg->n_heads * hd, nk = cfg->n_kv_heads * hd, n = nq + 2 * nk, rc;
    float *parts[3];
    const char *which[3] = {"q", "k", "v"};
    int len[3] = {nq, nk, nk}, flen[3] = {full->n_heads * hd, full->n_kv_heads * hd, full->n_kv_heads * hd};
    int first[3] = {L->c->head0 * hd, L->c->kv_head0 * hd, L->c->kv_head0 * hd};
    struct dsi__cu_matrix *w = &L->c->layers[il].qkv;
    if ((rc = dsi__cuda_alloc(L->c, (void **)&w->bias, (size_t)n * sizeof(float), "qkv bias", err)))
        return rc;
    int off = 0;
    for (int i = 0; i < 3; i++) {
        char name[128];
        snprintf(name, sizeof name, "model.layers.%d.self_attn.%s_proj.bias", il, which[i]);
        if ((rc = upload_vec_part(L, name, flen[i], first[i], len[i], 0.f, &parts[i], "qkv bias part", err)))
            return rc;
        if (DSI_CUDA_CHECK(cudaMemcpy(w->bias + off, parts[i], (size_t)len[i] * sizeof(float),
                                      cudaMemcpyDeviceToDevice)))
            return dsi_seterr(err, DSI_ECUDA, "cuda: bias copy failed");
        off += len[i];
    }
    return 0;
}

int dsi__cuda_load_weights(struct dsi__cuda *c, const struct dsi_model *m, bool random, uint64_t seed,
                           char **err) {
    /* cfg: this backend's sizes (a shard's heads and intermediate rows); full:
     * the tensors' shapes in the files */
    const struct dsi_model_config *cfg = &c->cfg, *full = &m->cfg;
    struct dsi__cu_loader L = {.c = c, .m = m, .random = random, .seed = seed};
    int H = cfg->hidden_size, I = cfg->intermediate_size, hd = cfg->head_dim, V = cfg->vocab_size, rc = 0;
    int nq = cfg->n_heads * hd, nk = cfg->n_kv_heads * hd;
    int fq = full->n_heads * hd, fk = full->n_kv_heads * hd, fI = full->intermediate_size;
    int q0 = c->head0 * hd, k0 = c->kv_head0 * hd, i0 = c->inter0;
    int v0 = c->vocab0, nv = c->tp_size > 1 && v0 + c->vocab_pad < V ? c->vocab_pad : V - v0;
    char n1[128], n2[128], n3[128];

    if (!random && dsi_model_unverified(m) > 0 && (rc = dsi__cuda_hash_upload(c, m, &L.images, err)))
        goto out;

    if (c->int8) {
        size_t big = (size_t)V * H;
        /* a shard's o/down slices stage their whole rows (fq, fI) for the scales */
        size_t cand[5] = {(size_t)(nq + 2 * nk) * H, (size_t)2 * I * H, (size_t)H * nq, (size_t)H * fq,
                          (size_t)H * fI};
        for (int i = 0; i < 5; i++)
            if (cand[i] > big) big = cand[i];
        if (c->mla && dsi__cuda_mla_max_elems(cfg) > big) big = dsi__cuda_mla_max_elems(cfg);
        L.stage_elems = big;
        if ((rc = dsi__cuda_alloc(c, (void **)&L.stage, big * 2, "weight staging", err))) goto out;
    }
    const struct part emb = {"model.embed_tokens.weight", V, H, 0, V, 0, H};
    /* the lm_head: this shard's vocab rows of the tied table or of lm_head.weight */
    const struct part lm = {cfg->tie_word_embeddings ? emb.name : "lm_head.weight", V, H, v0, nv, 0, H};
    if ((rc = dsi__cuda_alloc(c, (void **)&c->embed, (size_t)V * H * 2, "embeddings", err))) goto out;
    if (c->int8) {
        /* as the CPU reference does: the table is int8 too (rows read as q * scale);
         * kept as bf16(q * scale) for the gather, and reused as a tied lm_head
         * (a shard re-quantizes its rows below: per-row scales, the same bytes) */
        if ((rc = load_matrix(&L, &c->lm_head, &emb, 1, "embeddings (int8)", err))) goto out;
        int drc = c->group > 0
                      ? dsi_cuda_dequant_int8_group(c->embed, c->lm_head.q, c->lm_head.gscale, V, H, c->group,
                                                    c->stream)
                      : dsi_cuda_dequant_int8(c->embed, c->lm_head.q, c->lm_head.scale, V, H, c->stream);
        if (drc || DSI_CUDA_CHECK(cudaStreamSynchronize(c->stream))) {
            rc = dsi_seterr(err, DSI_ECUDA, "cuda: expanding the int8 embedding table failed");
            goto out;
        }
        if (!cfg->tie_word_embeddings || nv != V) {
            dsi__cuda_free(c, c->lm_head.q);
            dsi__cuda_free(c, c->lm_head.scale);
            dsi__cuda_free(c, c->lm_head.gscale);
            memset(&c->lm_head, 0, sizeof c->lm_head);
        }
    } else if ((rc = upload_bf16(&L, &emb, c->embed, err))) {
        goto out;
    }
    for (int il = 0; il < cfg->n_layers && c->mla; il++)
        if ((rc = dsi__cuda_mla_load_layer(c, &L, il, err))) goto out;
    for (int il = 0; il < cfg->n_layers && !c->mla; il++) {
        struct dsi__cu_layer *ly = &c->layers[il];
        snprintf(n1, sizeof n1, "model.layers.%d.input_layernorm.weight", il);
        if ((rc = upload_vec(&L, n1, H, 1.f, &ly->ln1, "norm", err))) goto out;
        snprintf(n1, sizeof n1, "model.layers.%d.post_attention_layernorm.weight", il);
        if ((rc = upload_vec(&L, n1, H, 1.f, &ly->ln2, "norm", err))) goto out;
        snprintf(n1, sizeof n1, "model.layers.%d.self_attn.q_proj.weight", il);
        snprintf(n2, sizeof n2, "model.layers.%d.self_attn.k_proj.weight", il);
        snprintf(n3, sizeof n3, "model.layers.%d.self_attn.v_proj.weight", il);
        const struct part qkv[3] = {
            {n1, fq, H, q0, nq, 0, H}, {n2, fk, H, k0, nk, 0, H}, {n3, fk, H, k0, nk, 0, H}};
        if ((rc = load_matrix(&L, &ly->qkv, qkv, 3, "qkv weights", err))) goto out;
        if (cfg->attention_bias && (rc = load_qkv_bias(&L, il, err))) goto out;
        snprintf(n1, sizeof n1, "model.layers.%d.self_attn.o_proj.weight", il);
        const struct part o = {n1, H, fq, 0, H, q0, nq}; /* the columns of the own heads */
        if ((rc = load_matrix(&L, &ly->o, &o, 1, "o weights", err))) goto out;
        snprintf(n1, sizeof n1, "model.layers.%d.mlp.gate_proj.weight", il);
        snprintf(n2, sizeof n2, "model.layers.%d.mlp.up_proj.weight", il);
        const struct part gu[2] = {{n1, fI, H, i0, I, 0, H}, {n2, fI, H, i0, I, 0, H}};
        if ((rc = load_matrix_il(&L, &ly->gate_up, gu, 2, c->gate_up_il8, "gate/up weights", err))) goto out;
        snprintf(n1, sizeof n1, "model.layers.%d.mlp.down_proj.weight", il);
        const struct part dn = {n1, H, fI, 0, H, i0, I};
        if ((rc = load_matrix(&L, &ly->down, &dn, 1, "down weights", err))) goto out;
    }
    if ((rc = upload_vec(&L, "model.norm.weight", H, 1.f, &c->final_norm, "norm", err))) goto out;
    if (cfg->tie_word_embeddings && !c->int8) {
        c->lm_head.n = nv; /* bf16 and tied: share the table's rows */
        c->lm_head.k = H;
        c->lm_head.w = c->embed + (size_t)v0 * H;
    } else if (cfg->tie_word_embeddings && nv == V) {
        /* int8 and tied: quantized with the embedding above */
    } else if ((rc = load_matrix(&L, &c->lm_head, &lm, 1, "lm_head", err))) {
        goto out;
    }
out:
    free(L.host);
    dsi__cuda_free(c, L.stage); /* the staging buffer is only needed at load time */
    dsi__cuda_free_images(c, m, L.images);
    return rc;
}

int dsi__cuda_load_linear(struct dsi__cu_loader *L, struct dsi__cu_matrix *w, const char *name, int rows,
                          int cols, const char *what, char **err) {
    const struct part p = {name, rows, cols, 0, rows, 0, cols};
    return load_matrix(L, w, &p, 1, what, err);
}

int dsi__cuda_load_glu(struct dsi__cu_loader *L, struct dsi__cu_matrix *w, const char *gate, const char *up,
                       int inter, int cols, int il, const char *what, char **err) {
    const struct part p[2] = {{gate, inter, cols, 0, inter, 0, cols}, {up, inter, cols, 0, inter, 0, cols}};
    return load_matrix_il(L, w, p, 2, il, what, err);
}

int dsi__cuda_load_vec(struct dsi__cu_loader *L, const char *name, int n, float **dst, char **err) {
    return upload_vec(L, name, n, 1.f, dst, "norm", err);
}

int dsi__cuda_load_f32(struct dsi__cu_loader *L, const char *name, int rows, int cols, bool random_values,
                       float **dst, char **err) {
    size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
    int rc = dsi__cuda_alloc(L->c, (void **)dst, n * sizeof(float), name, err);
    if (rc) return rc;
    float *h = malloc(n * sizeof *h);
    if (!h) return dsi_seterr(err, DSI_ENOMEM, "cuda: no host memory for %s", name);
    if (L->random) { /* xorshift values in [-1, 1) / sqrt(cols): logits of unit scale */
        uint64_t st = L->seed + 0x9E3779B97F4A7C15ull * ++L->counter;
        float amp = random_values ? 1.f / sqrtf((float)(cols ? cols : 1)) : 0.f;
        for (size_t i = 0; i < n; i++) {
            st ^= st << 13, st ^= st >> 7, st ^= st << 17;
            h[i] = amp * ((float)(st >> 40) / 8388608.f - 1.f);
        }
    } else {
        const struct dsi_tensor *t;
        struct dsi_tensor tv;
        void *owned = NULL;
        if (!(rc = find(L, name, rows, cols, &t, err)) && t->dtype == DSI_DT_F8_E4M3)
            rc = dsi_seterr(err, DSI_EUNSUPPORTED, "cuda: %s must be a float tensor", name);
        if (!rc) {
            tv = *t;
            rc = verified_bytes(L, t, &tv.data, &owned, err);
        }
        for (size_t i = 0; !rc && i < n; i++)
            h[i] = elem_f32(&tv, i);
        free(owned);
    }
    if (!rc && DSI_CUDA_CHECK(cudaMemcpy(*dst, h, n * sizeof *h, cudaMemcpyHostToDevice)))
        rc = dsi_seterr(err, DSI_ECUDA, "cuda: upload of %s failed", name);
    free(h);
    return rc;
}

/* The fp32 weights of w as its matmuls use them: bf16 as stored, int8 q *
 * scale (per channel or group) computed exactly on the host from the integer
 * values (dequantized into the staging buffer) and the scales. */
static int matrix_f32(struct dsi__cu_loader *L, const struct dsi__cu_matrix *w, float *dst, char **err) {
    struct dsi__cuda *c = L->c;
    size_t n = (size_t)w->n * (size_t)w->k;
    int ng = w->group > 0 ? w->k / w->group : 1, rc = 0;
    const uint16_t *src = w->w;
    if (c->int8 && (n > L->stage_elems || dsi_cuda_dequant_int8(L->stage, w->q, NULL, w->n, w->k, c->stream)))
        return dsi_seterr(err, DSI_EINTERNAL, "cuda: cannot expand an int8 matrix to fp32");
    if (c->int8) src = L->stage;
    uint16_t *hq = malloc(n * sizeof *hq);
    float *hs = malloc((size_t)w->n * (size_t)ng * sizeof *hs), *hf = malloc(n * sizeof *hf);
    if (!hq || !hs || !hf) rc = dsi_seterr(err, DSI_ENOMEM, "cuda: no host memory");
    if (!rc &&
        (DSI_CUDA_CHECK(cudaStreamSynchronize(c->stream)) ||
         DSI_CUDA_CHECK(cudaMemcpy(hq, src, n * 2, cudaMemcpyDeviceToHost)) ||
         (c->int8 && DSI_CUDA_CHECK(cudaMemcpy(hs, w->group > 0 ? w->gscale : w->scale,
                                               (size_t)w->n * ng * sizeof *hs, cudaMemcpyDeviceToHost)))))
        rc = dsi_seterr(err, DSI_ECUDA, "cuda: reading a matrix back failed");
    for (size_t r = 0; !rc && r < (size_t)w->n; r++)
        for (size_t j = 0; j < (size_t)w->k; j++) {
            uint32_t u = (uint32_t)hq[r * w->k + j] << 16;
            float v;
            memcpy(&v, &u, sizeof v);
            hf[r * w->k + j] = c->int8 ? v * hs[r * ng + (w->group > 0 ? j / w->group : 0)] : v;
        }
    if (!rc && DSI_CUDA_CHECK(cudaMemcpy(dst, hf, n * sizeof *hf, cudaMemcpyHostToDevice)))
        rc = dsi_seterr(err, DSI_ECUDA, "cuda: fp32 matrix upload failed");
    free(hq);
    free(hs);
    free(hf);
    return rc;
}

int dsi__cuda_load_linear_f32(struct dsi__cu_loader *L, const char *name, int rows, int cols, float **dst,
                              char **err) {
    struct dsi__cu_matrix w;
    memset(&w, 0, sizeof w);
    int rc = dsi__cuda_load_linear(L, &w, name, rows, cols, name, err);
    if (!rc) rc = dsi__cuda_alloc(L->c, (void **)dst, (size_t)rows * (size_t)cols * sizeof(float), name, err);
    if (!rc) rc = matrix_f32(L, &w, *dst, err);
    dsi__cuda_free(L->c, w.q);
    dsi__cuda_free(L->c, w.scale);
    dsi__cuda_free(L->c, w.gscale);
    dsi__cuda_free(L->c, w.w);
    return rc;
}
