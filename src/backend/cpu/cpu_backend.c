/*
 * cpu_backend.c: dsi_cpu_backend_create(): validates the config, loads weights
 * (cpu_load.c), sizes the paged KV pool and the per-step scratch, and fills the
 * ops table (forward in cpu_forward.c, quant_report, destroy).
 *
 * Everything is allocated here, once; forward() allocates nothing.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_internal.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "dsinfer/rope.h"

#define DEFAULT_KV_BYTES ((size_t)64 << 20)
#define DEFAULT_BLOCK 16
#define DEFAULT_MAX_TOKENS 512

static void cpu_destroy(struct dsi_backend *be);
static int cpu_quant_report(struct dsi_backend *be, char **report, char **err);
static int check_config(const struct dsi_model_config *cfg, char **err);
static int alloc_scratch(struct dsi__cpu *c, char **err);

static const struct dsi_backend_ops cpu_ops = {
    .name = "cpu",
    .forward = dsi__cpu_forward,
    .quant_report = cpu_quant_report,
    .destroy = cpu_destroy,
};

/* Shapes the forward pass relies on; a config.json outside them is an error, not a crash. */
static int check_config(const struct dsi_model_config *cfg, char **err) {
    if (cfg->arch != DSI_ARCH_QWEN2 && cfg->arch != DSI_ARCH_LLAMA)
        return dsi_seterr(err, DSI_EUNSUPPORTED, "the CPU backend runs Qwen2 and Llama models, not %s",
                          cfg->architecture[0] ? cfg->architecture : "this architecture");
    if (cfg->vocab_size <= 0 || cfg->hidden_size <= 0 || cfg->intermediate_size <= 0 || cfg->n_layers <= 0 ||
        cfg->n_heads <= 0 || cfg->n_kv_heads <= 0 || cfg->head_dim <= 0 || cfg->max_position_embeddings <= 0)
        return dsi_seterr(
            err, DSI_EFORMAT,
            "config.json has a non-positive size (vocab %d, hidden %d, intermediate %d, layers %d, "
            "heads %d, kv heads %d, head_dim %d, max positions %d)",
            cfg->vocab_size, cfg->hidden_size, cfg->intermediate_size, cfg->n_layers, cfg->n_heads,
            cfg->n_kv_heads, cfg->head_dim, cfg->max_position_embeddings);
    if (cfg->n_heads % cfg->n_kv_heads)
        return dsi_seterr(err, DSI_EFORMAT,
                          "config.json: %d attention heads is not a multiple of %d kv heads", cfg->n_heads,
                          cfg->n_kv_heads);
    if (cfg->head_dim % 2)
        return dsi_seterr(err, DSI_EFORMAT, "config.json: head_dim %d is odd; rotary embeddings need it even",
                          cfg->head_dim);
    if ((long long)cfg->n_heads * cfg->head_dim > INT_MAX / 4 || cfg->hidden_size > INT_MAX / 4 ||
        cfg->intermediate_size > INT_MAX / 4 || cfg->vocab_size > INT_MAX / 4)
        return dsi_seterr(err, DSI_EOVERFLOW, "config.json sizes are too large");
    if (!(cfg->rms_norm_eps >= 0.0f))
        return dsi_seterr(err, DSI_EFORMAT, "config.json: rms_norm_eps %g is invalid",
                          (double)cfg->rms_norm_eps);
    if (cfg->rope.type == DSI_ROPE_DYNAMIC)
        return dsi_seterr(
            err, DSI_EUNSUPPORTED,
            "dynamic NTK rope scaling is not supported by the CPU backend (its frequencies change "
            "with the sequence length, which a KV cache cannot follow)");
    return 0;
}

static int alloc_scratch(struct dsi__cpu *c, char **err) {
    const struct dsi_model_config *cfg = c->cfg;
    size_t T = (size_t)c->max_tokens;
    size_t H = (size_t)cfg->hidden_size, I = (size_t)cfg->intermediate_size;
    struct {
        float **p;
        size_t n;
    } bufs[] = {{&c->x, T * H},
                {&c->xn, T * H},
                {&c->q, T * (size_t)c->q_dim},
                {&c->k, T * (size_t)c->kv_dim},
                {&c->v, T * (size_t)c->kv_dim},
                {&c->att, T * (size_t)c->q_dim},
                {&c->gate, T * I},
                {&c->up, T * I},
                {&c->scores, (size_t)c->n_threads * (size_t)c->max_ctx}};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        if (bufs[i].n > SIZE_MAX / sizeof(float) / 2)
            return dsi_seterr(err, DSI_EOVERFLOW, "scratch too large");
        *bufs[i].p = calloc(bufs[i].n ? bufs[i].n : 1, sizeof(float));
        if (dsi__cpu_own(c, *bufs[i].p)) return dsi_seterr(err, DSI_ENOMEM, "out of memory for scratch");
    }
    c->tok_seq = calloc(T, sizeof(int32_t));
    if (dsi__cpu_own(c, c->tok_seq)) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    c->tok_pos = calloc(T, sizeof(int32_t));
    if (dsi__cpu_own(c, c->tok_pos)) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    return 0;
}

int dsi_cpu_backend_create(const struct dsi_model *m, const struct dsi_backend_opts *o,
                           struct dsi_backend **out, char **err) {
    if (!out) return DSI_EINVAL;
    *out = NULL;
    if (!m || !o) return dsi_seterr(err, DSI_EINVAL, "cpu backend: model and options are required");
    const struct dsi_model_config *cfg = &m->cfg;
    int rc = check_config(cfg, err);
    if (rc) return rc;
    if (o->weight_dtype != DSI_W_F32 && o->weight_dtype != DSI_W_BF16 && o->weight_dtype != DSI_W_INT8)
        return dsi_seterr(err, DSI_EINVAL, "cpu backend: unknown weight dtype %d", (int)o->weight_dtype);
    if (o->kv_dtype != DSI_KV_F32 && o->kv_dtype != DSI_KV_BF16)
        return dsi_seterr(err, DSI_EINVAL, "cpu backend: unknown kv dtype %d", (int)o->kv_dtype);
    if (o->int8_group_size < 0 || o->kv_block_size < 0 || o->max_batch_tokens < 0 || o->n_threads < 0)
        return dsi_seterr(err, DSI_EINVAL, "cpu backend: negative option");

    struct dsi__cpu *c = calloc(1, sizeof *c);
    if (!c) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    c->cfg = cfg;
    c->opts = *o;
    c->be.ops = &cpu_ops;
    c->be.model = m;
    c->be.impl = c;
    c->be.vocab_size = cfg->vocab_size;
#ifdef _OPENMP
    c->n_threads = o->n_threads > 0 ? o->n_threads : omp_get_num_procs();
#else
    c->n_threads = 1;
#endif
    if (c->n_threads < 1) c->n_threads = 1;
    c->q_dim = cfg->n_heads * cfg->head_dim;
    c->kv_dim = cfg->n_kv_heads * cfg->head_dim;
    c->max_tokens = o->max_batch_tokens > 0 ? o->max_batch_tokens : DEFAULT_MAX_TOKENS;

    c->inv_freq = calloc((size_t)cfg->head_dim / 2, sizeof(float));
    if (dsi__cpu_own(c, c->inv_freq)) {
        rc = dsi_seterr(err, DSI_ENOMEM, "out of memory");
        goto fail;
    }
    rc = dsi_rope_inv_freq(&cfg->rope, cfg->rope_theta, cfg->head_dim, cfg->max_position_embeddings, 0,
                           c->inv_freq, &c->attn_factor);
    if (rc) {
        rc = dsi_seterr(err, DSI_EFORMAT,
                        "config.json: invalid rope parameters (theta %g, type %d, factor %g)",
                        (double)cfg->rope_theta, (int)cfg->rope.type, (double)cfg->rope.factor);
        goto fail;
    }

    if ((rc = dsi__cpu_load(c, m, err))) goto fail;

    /* KV pool */
    int bs = o->kv_block_size > 0 ? o->kv_block_size : DEFAULT_BLOCK;
    c->kv_elt = o->kv_dtype == DSI_KV_F32 ? sizeof(float) : sizeof(uint16_t);
    size_t per_tok = (size_t)cfg->n_layers * 2 * (size_t)c->kv_dim * c->kv_elt;
    size_t kv_bytes = o->kv_bytes ? o->kv_bytes : DEFAULT_KV_BYTES;
    size_t n_blocks = kv_bytes / ((size_t)bs * per_tok);
    if (n_blocks < 1) {
        rc = dsi_seterr(err, DSI_EINVAL, "cpu backend: kv_bytes %zu is less than one block (%zu bytes)",
                        kv_bytes, (size_t)bs * per_tok);
        goto fail;
    }
    if (n_blocks > (size_t)INT_MAX / (size_t)bs) n_blocks = (size_t)INT_MAX / (size_t)bs;
    c->kv_layer_elems = n_blocks * (size_t)bs * (size_t)c->kv_dim;
    c->kv = calloc(n_blocks * (size_t)bs, per_tok);
    if (dsi__cpu_own(c, c->kv)) {
        rc = dsi_seterr(err, DSI_ENOMEM, "out of memory for a %zu-byte KV pool",
                        n_blocks * (size_t)bs * per_tok);
        goto fail;
    }
    c->be.kv_block_size = bs;
    c->be.n_kv_blocks = (int)n_blocks;
    c->be.kv_bytes_per_token = per_tok;
    c->max_ctx = cfg->max_position_embeddings;
    if ((size_t)c->max_ctx > n_blocks * (size_t)bs) c->max_ctx = (int)(n_blocks * (size_t)bs);

    if ((rc = alloc_scratch(c, err))) goto fail;
    dsi_log(DSI_LOG_INFO, "cpu", "backend ready: %s weights %.1f MB, %d KV blocks of %d tokens, %d threads",
            o->weight_dtype == DSI_W_F32    ? "f32"
            : o->weight_dtype == DSI_W_BF16 ? "bf16"
                                            : "int8",
            (double)c->be.weight_bytes / 1e6, c->be.n_kv_blocks, bs, c->n_threads);
    *out = &c->be;
    return 0;
fail:
    cpu_destroy(&c->be);
    return rc;
}

static void cpu_destroy(struct dsi_backend *be) {
    if (!be) return;
    struct dsi__cpu *c = be->impl;
    for (size_t i = 0; i < c->n_allocs; i++)
        free(c->allocs[i]);
    free(c->allocs);
    free(c->qerr);
    free(c);
}

static int cpu_quant_report(struct dsi_backend *be, char **report, char **err) {
    struct dsi__cpu *c = be->impl;
    *report = NULL;
    if (c->opts.weight_dtype != DSI_W_INT8)
        return dsi_seterr(err, DSI_ESTATE, "quant report needs a backend loaded with int8 weights");
    size_t cap = 256 + c->n_qerr * 160, len = 0;
    char *s = malloc(cap);
    if (!s) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    double sum = 0, worst = 0;
    const char *worst_name = "";
    len +=
        (size_t)snprintf(s + len, cap - len, "# int8 %s, rel_err = ||W - Q||_F / ||W||_F\n%-56s %12s %12s\n",
                         c->opts.int8_group_size > 0 ? "group-wise" : "per output channel", "tensor",
                         "rel_err", "max_abs_err");
    for (size_t i = 0; i < c->n_qerr; i++) {
        const struct dsi__cpu_qerr *e = &c->qerr[i];
        int w = snprintf(s + len, cap - len, "%-56s %12.6f %12.6g\n", e->name, e->rel_err, e->max_abs_err);
        if (w > 0) len += (size_t)w < cap - len ? (size_t)w : cap - len - 1; /* never past the buffer */
        sum += e->rel_err;
        if (e->rel_err > worst) {
            worst = e->rel_err;
            worst_name = e->name;
        }
    }
    snprintf(s + len, cap - len, "# %zu tensors, mean rel_err %.6f, worst %.6f (%s)\n", c->n_qerr,
             c->n_qerr ? sum / (double)c->n_qerr : 0.0, worst, worst_name);
    *report = s;
    return 0;
}
