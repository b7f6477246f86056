/*
 * cuda_weights.c: weight upload for the CUDA backend.
 *
 * Each HF tensor (BF16, F16 or F32 in the mmap) is converted to bf16 on the host
 * if needed, copied into a device staging buffer (fused matrices: q|k|v and
 * gate|up are stacked by rows there), and then either kept as bf16 or quantized
 * on the GPU to the tiled INT8 layout with per-output-channel scales. Vectors
 * (norms, biases) are kept in fp32. Random mode fills the staging buffer on the
 * GPU instead (benchmarks of real shapes without a 15 GB file).
 *
 * A model opened with defer_weight_hash (the CLI does so for --backend cuda)
 * comes with its *.safetensors unhashed and their tensor data withheld: first
 * cuda_hashload.c hashes each file while copying it to a device image (one
 * pass, fail closed), then bf16 tensors are copied device to device from the
 * images, F16/F32 ones and vectors are converted on the host from the mmap
 * (released by the model once the file's digest matched), and the images are
 * freed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"

struct loader {
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

static float f16_to_f32(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, mt = h & 0x3ff, u;
    if (e == 0) {
        if (mt == 0) {
            u = s;
        } else { /* subnormal */
            e = 127 - 15 + 1;
            while (!(mt & 0x400)) {
                mt <<= 1;
                e--;
            }
            u = s | (e << 23) | ((mt & 0x3ff) << 13);
        }
    } else if (e == 31) {
        u = s | 0x7f800000u | (mt << 13);
    } else {
        u = s | ((e + 127 - 15) << 23) | (mt << 13);
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
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
    return f16_to_f32(h);
}

/* Finds `name` with shape (rows, cols) (cols 0: a vector of rows). */
static int find(struct loader *L, const char *name, int rows, int cols, const struct dsi_tensor **out,
                char **err) {
    const struct dsi_tensor *t = dsi_st_find(&L->m->st, name);
    if (!t) return dsi_seterr(err, DSI_ENOENT, "cuda: tensor %s missing from the model", name);
    if (t->dtype != DSI_DT_BF16 && t->dtype != DSI_DT_F16 && t->dtype != DSI_DT_F32)
        return dsi_seterr(err, DSI_EUNSUPPORTED, "cuda: tensor %s has dtype %s (expected BF16, F16 or F32)",
                          name, dsi_dtype_name(t->dtype));
    bool ok = cols ? (t->n_dims == 2 && t->shape[0] == rows && t->shape[1] == cols)
                   : (t->n_dims == 1 && t->shape[0] == rows);
    if (!ok) return dsi_seterr(err, DSI_EFORMAT, "cuda: tensor %s has an unexpected shape", name);
    *out = t;
    return 0;
}

/* Copies a (rows, cols) matrix as bf16 to dst (device). */
static int upload_bf16(struct loader *L, const char *name, int rows, int cols, uint16_t *dst, char **err) {
    size_t n = (size_t)rows * cols;
    if (L->random) {
        float scale = 1.f / sqrtf((float)cols) * 1.7f; /* ~unit-variance outputs */
        return dsi_cuda_fill_random_bf16(dst, n, L->seed + 0x1000003ull * ++L->counter, scale, L->c->stream)
                   ? dsi_seterr(err, DSI_ECUDA, "cuda: random fill of %s failed", name)
                   : 0;
    }
    const struct dsi_tensor *t;
    int rc = find(L, name, rows, cols, &t, err);
    if (rc) return rc;
    size_t pi = SIZE_MAX;
    uint64_t off = 0;
    if (L->images && t->dtype == DSI_DT_BF16 && dsi_model_tensor_location(L->m, t, &pi, &off) == 0 &&
        pi < L->m->n_pending && L->images[pi]) { /* verified bytes already on the device */
        if (off > L->m->pending[pi].size || n * 2 > L->m->pending[pi].size - off)
            return dsi_seterr(err, DSI_EFORMAT, "cuda: tensor %s lies outside its file", name);
        if (DSI_CUDA_CHECK(cudaMemcpyAsync(dst, L->images[pi] + off, n * 2, cudaMemcpyDeviceToDevice,
                                           L->c->stream)) ||
            DSI_CUDA_CHECK(cudaStreamSynchronize(L->c->stream)))
            return dsi_seterr(err, DSI_ECUDA, "cuda: device copy of %s failed", name);
        return 0;
    }
    if (!t->data)
        return dsi_seterr(err, DSI_EINTEGRITY, "cuda: tensor %s: its file has not been verified", name);
    const void *src = t->data;
    if (t->dtype != DSI_DT_BF16) {
        if (n > L->host_elems) {
            uint16_t *h = realloc(L->host, n * sizeof *h);
            if (!h) return dsi_seterr(err, DSI_ENOMEM, "cuda: no host memory to convert %s", name);
            L->host = h;
            L->host_elems = n;
        }
        for (size_t i = 0; i < n; i++)
            L->host[i] = f32_to_bf16(elem_f32(t, i));
        src = L->host;
    }
    if (DSI_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * 2, cudaMemcpyHostToDevice, L->c->stream)) ||
        DSI_CUDA_CHECK(cudaStreamSynchronize(L->c->stream)))
        return dsi_seterr(err, DSI_ECUDA, "cuda: upload of %s failed", name);
    return 0;
}

/* Uploads a vector as fp32; random mode: `fill` for every element. */
static int upload_vec(struct loader *L, const char *name, int n, float fill, float **dst, const char *what,
                      char **err) {
    int rc = dsi__cuda_alloc(L->c, (void **)dst, (size_t)n * sizeof(float), what, err);
    if (rc) return rc;
    float *h = malloc((size_t)n * sizeof *h);
    if (!h) return dsi_seterr(err, DSI_ENOMEM, "cuda: no host memory for %s", name);
    if (L->random) {
        for (int i = 0; i < n; i++)
            h[i] = fill;
    } else {
        const struct dsi_tensor *t;
        if ((rc = find(L, name, n, 0, &t, err))) {
            free(h);
            return rc;
        }
        if (!t->data) {
            free(h);
            return dsi_seterr(err, DSI_EINTEGRITY, "cuda: tensor %s: its file has not been verified", name);
        }
        for (int i = 0; i < n; i++)
            h[i] = elem_f32(t, (size_t)i);
    }
    rc = DSI_CUDA_CHECK(cudaMemcpy(*dst, h, (size_t)n * sizeof *h, cudaMemcpyHostToDevice));
    free(h);
    return rc ? dsi_seterr(err, DSI_ECUDA, "cuda: upload of %s failed", name) : 0;
}

/* Stacks the named parts (rows each) into staging, then keeps bf16 or quantizes. */
static int load_matrix(struct loader *L, struct dsi__cu_matrix *w, const char *const *names, const int *rows,
                       int n_parts, int k, const char *what, char **err) {
    int n = 0, rc;
    for (int i = 0; i < n_parts; i++)
        n += rows[i];
    w->n = n;
    w->k = k;
    if (L->c->int8 && L->c->group > 0 && k % L->c->group) /* checked before any upload */
        return dsi_seterr(err, DSI_EINVAL,
                          "int8 group size %d does not divide the %d inputs of %s; use a divisor or 0 "
                          "(per channel)",
                          L->c->group, k, names[0]);
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
        if ((rc = upload_bf16(L, names[i], rows[i], k, dst + off, err))) return rc;
        off += (size_t)rows[i] * k;
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
    if (dsi_cuda_quantize_int8(w->q, w->scale, dst, n, k, L->c->stream) ||
        DSI_CUDA_CHECK(cudaStreamSynchronize(L->c->stream)))
        return dsi_seterr(err, DSI_ECUDA, "cuda: quantizing %s failed", what);
    return 0;
}

/* q|k|v biases stacked into one fp32 vector. */
static int load_qkv_bias(struct loader *L, int il, char **err) {
    const struct dsi_model_config *cfg = &L->c->cfg;
    int nq = cfg->n_heads * cfg->head_dim, nk = cfg->n_kv_heads * cfg->head_dim, n = nq + 2 * nk, rc;
    float *parts[3];
    const char *which[3] = {"q", "k", "v"};
    int len[3] = {nq, nk, nk};
    struct dsi__cu_matrix *w = &L->c->layers[il].qkv;
    if ((rc = dsi__cuda_alloc(L->c, (void **)&w->bias, (size_t)n * sizeof(float), "qkv bias", err)))
        return rc;
    int off = 0;
    for (int i = 0; i < 3; i++) {
        char name[128];
        snprintf(name, sizeof name, "model.layers.%d.self_attn.%s_proj.bias", il, which[i]);
        if ((rc = upload_vec(L, name, len[i], 0.f, &parts[i], "qkv bias part", err))) return rc;
        if (DSI_CUDA_CHECK(cudaMemcpy(w->bias + off, parts[i], (size_t)len[i] * sizeof(float),
                                      cudaMemcpyDeviceToDevice)))
            return dsi_seterr(err, DSI_ECUDA, "cuda: bias copy failed");
        off += len[i];
    }
    return 0;
}

int dsi__cuda_load_weights(struct dsi__cuda *c, const struct dsi_model *m, bool random, uint64_t seed,
                           char **err) {
    const struct dsi_model_config *cfg = &c->cfg;
    struct loader L = {.c = c, .m = m, .random = random, .seed = seed};
    int H = cfg->hidden_size, I = cfg->intermediate_size, hd = cfg->head_dim, V = cfg->vocab_size, rc = 0;
    int nq = cfg->n_heads * hd, nk = cfg->n_kv_heads * hd;
    char n1[128], n2[128], n3[128];

    if (!random && dsi_model_unverified(m) > 0 && (rc = dsi__cuda_hash_upload(c, m, &L.images, err))) goto out;

    if (c->int8) {
        size_t big = (size_t)V * H;
        size_t cand[3] = {(size_t)(nq + 2 * nk) * H, (size_t)2 * I * H, (size_t)H * nq};
        for (int i = 0; i < 3; i++)
            if (cand[i] > big) big = cand[i];
        L.stage_elems = big;
        if ((rc = dsi__cuda_alloc(c, (void **)&L.stage, big * 2, "weight staging", err))) goto out;
    }
    if ((rc = dsi__cuda_alloc(c, (void **)&c->embed, (size_t)V * H * 2, "embeddings", err))) goto out;
    if (c->int8) {
        /* as the CPU reference does: the table is int8 too (rows read as q * scale);
         * kept as bf16(q * scale) for the gather, and reused as a tied lm_head */
        const char *em[1] = {"model.embed_tokens.weight"};
        int em_rows[1] = {V};
        if ((rc = load_matrix(&L, &c->lm_head, em, em_rows, 1, H, "embeddings (int8)", err))) goto out;
        int drc = c->group > 0
                      ? dsi_cuda_dequant_int8_group(c->embed, c->lm_head.q, c->lm_head.gscale, V, H, c->group,
                                                    c->stream)
                      : dsi_cuda_dequant_int8(c->embed, c->lm_head.q, c->lm_head.scale, V, H, c->stream);
        if (drc || DSI_CUDA_CHECK(cudaStreamSynchronize(c->stream))) {
            rc = dsi_seterr(err, DSI_ECUDA, "cuda: expanding the int8 embedding table failed");
            goto out;
        }
        if (!cfg->tie_word_embeddings) {
            dsi__cuda_free(c, c->lm_head.q);
            dsi__cuda_free(c, c->lm_head.scale);
            dsi__cuda_free(c, c->lm_head.gscale);
            memset(&c->lm_head, 0, sizeof c->lm_head);
        }
    } else if ((rc = upload_bf16(&L, "model.embed_tokens.weight", V, H, c->embed, err))) {
        goto out;
    }
    for (int il = 0; il < cfg->n_layers; il++) {
        struct dsi__cu_layer *ly = &c->layers[il];
        snprintf(n1, sizeof n1, "model.layers.%d.input_layernorm.weight", il);
        if ((rc = upload_vec(&L, n1, H, 1.f, &ly->ln1, "norm", err))) goto out;
        snprintf(n1, sizeof n1, "model.layers.%d.post_attention_layernorm.weight", il);
        if ((rc = upload_vec(&L, n1, H, 1.f, &ly->ln2, "norm", err))) goto out;
        snprintf(n1, sizeof n1, "model.layers.%d.self_attn.q_proj.weight", il);
        snprintf(n2, sizeof n2, "model.layers.%d.self_attn.k_proj.weight", il);
        snprintf(n3, sizeof n3, "model.layers.%d.self_attn.v_proj.weight", il);
        const char *qkv[3] = {n1, n2, n3};
        int qkv_rows[3] = {nq, nk, nk};
        if ((rc = load_matrix(&L, &ly->qkv, qkv, qkv_rows, 3, H, "qkv weights", err))) goto out;
        if (cfg->attention_bias && (rc = load_qkv_bias(&L, il, err))) goto out;
        snprintf(n1, sizeof n1, "model.layers.%d.self_attn.o_proj.weight", il);
        const char *o[1] = {n1};
        int o_rows[1] = {H};
        if ((rc = load_matrix(&L, &ly->o, o, o_rows, 1, nq, "o weights", err))) goto out;
        snprintf(n1, sizeof n1, "model.layers.%d.mlp.gate_proj.weight", il);
        snprintf(n2, sizeof n2, "model.layers.%d.mlp.up_proj.weight", il);
        const char *gu[2] = {n1, n2};
        int gu_rows[2] = {I, I};
        if ((rc = load_matrix(&L, &ly->gate_up, gu, gu_rows, 2, H, "gate/up weights", err))) goto out;
        snprintf(n1, sizeof n1, "model.layers.%d.mlp.down_proj.weight", il);
        const char *dn[1] = {n1};
        int dn_rows[1] = {H};
        if ((rc = load_matrix(&L, &ly->down, dn, dn_rows, 1, I, "down weights", err))) goto out;
    }
    if ((rc = upload_vec(&L, "model.norm.weight", H, 1.f, &c->final_norm, "norm", err))) goto out;
    {
        const char *lm[1] = {cfg->tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight"};
        int lm_rows[1] = {V};
        if (cfg->tie_word_embeddings && !c->int8) {
            c->lm_head.n = V; /* bf16 and tied: share the table */
            c->lm_head.k = H;
            c->lm_head.w = c->embed;
        } else if (cfg->tie_word_embeddings) {
            /* int8 and tied: quantized with the embedding above */
        } else if ((rc = load_matrix(&L, &c->lm_head, lm, lm_rows, 1, H, "lm_head", err))) {
            goto out;
        }
    }
out:
    free(L.host);
    dsi__cuda_free(c, L.stage); /* the staging buffer is only needed at load time */
    dsi__cuda_free_images(c, m, L.images);
    return rc;
}
