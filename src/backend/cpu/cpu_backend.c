/*
 * cpu_backend.c: dsi_cpu_backend_create() and _create_shard(): validates the
 * config, works out the shard's slices (backend.h struct dsi_shard; one shard
 * of size 1 is the whole model), loads weights (cpu_load.c), sizes the paged
 * KV pool and the per-step scratch, and fills the ops table (forward in
 * cpu_forward.c, quant_report, destroy).
 *
 * Everything is allocated here, once; forward() allocates nothing.
 *
 * The KV bytes per token depend on the model and kv_dtype: 2 * n_kv_heads * head_dim
 * values per layer for GQA, kv_lora_rank + qk_rope_head_dim for MLA (the compressed
 * latent), 4 or 2 bytes each, or 1 plus an f16 scale per vector for int8
 * (dsi_model_kv_bytes_per_token); a pool of kv_bytes holds that many more blocks,
 * and the engine's block manager only counts blocks, so it needs no change.
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
static int check_config(const struct dsi_model_config *cfg, const struct dsi_backend_opts *o, int n_ranks,
                        char **err);
static int alloc_scratch(struct dsi__cpu *c, char **err);
static int set_shard(struct dsi__cpu *c, const struct dsi_shard *sh, char **err);
static void log_ready(const struct dsi__cpu *c);
static int alloc_kv(struct dsi__cpu *c, char **err);
static int setup_ep(struct dsi__cpu *c, char **err);

static const struct dsi_backend_ops cpu_ops = {
    .name = "cpu",
    .forward = dsi__cpu_forward,
    .quant_report = cpu_quant_report,
    .destroy = cpu_destroy,
};

/* What the CPU forward pass runs beyond dsi_model_config_runnable: any GQA
 * group and any even head_dim; a shard takes the intermediate rows in whole
 * int8 groups (dsi_shard_range). */
static const struct dsi_backend_limits cpu_limits = {
    .backend = "cpu", .head_dim_multiple = 2, .mla_moe = true, .mla_moe_ranks = true};

/* MLA dimensions the DeepSeek path relies on (dsi_model_config_check covers the rest). */
static int check_mla(const struct dsi_model_config *cfg, char **err) {
    if (!dsi_model_is_mla(cfg)) return 0;
    if (cfg->kv_lora_rank <= 0 || cfg->qk_nope_head_dim <= 0 || cfg->qk_rope_head_dim <= 0 || cfg->v_head_dim <= 0 ||
        cfg->qk_rope_head_dim % 2 || cfg->head_dim != cfg->qk_rope_head_dim ||
        (long long)cfg->n_heads * (cfg->qk_nope_head_dim + cfg->qk_rope_head_dim + cfg->v_head_dim) > INT_MAX / 4 ||
        (cfg->n_routed_experts > 0 && cfg->num_experts_per_tok <= 0))
        return dsi_seterr(err, DSI_EFORMAT,
                          "config.json: MLA dimensions are invalid (kv_lora %d, nope %d, rope %d, v %d, "
                          "head_dim %d)",
                          cfg->kv_lora_rank, cfg->qk_nope_head_dim, cfg->qk_rope_head_dim, cfg->v_head_dim,
                          cfg->head_dim);
    return 0;
}

static int check_config(const struct dsi_model_config *cfg, const struct dsi_backend_opts *o, int n_ranks,
                        char **err) {
    int gs = o->weight_dtype == DSI_W_INT8 ? o->int8_group_size : 0;
    int rc = dsi_model_config_check(cfg, &cpu_limits, n_ranks, gs, err);
    return rc ? rc : check_mla(cfg, err);
}

/* int8_mode w8a8 (cpu_w8a8.c) takes per-channel int8 weights of a dense Llama /
 * Qwen2 model on one rank: a shard's column slice would quantize each token
 * over part of its row (other bits than one rank), MLA keeps its own matmuls. */
static int check_w8a8(struct dsi__cpu *c, char **err) {
    const struct dsi_backend_opts *o = &c->opts;
    if (o->int8_mode == DSI_INT8_W8A16) return 0;
    if (o->int8_mode != DSI_INT8_W8A8)
        return dsi_seterr(err, DSI_EINVAL, "cpu backend: unknown int8 mode %d", (int)o->int8_mode);
    if (o->weight_dtype != DSI_W_INT8 || o->int8_group_size > 0 || c->shard.size > 1 || c->mla)
        return dsi_seterr(err, DSI_EINVAL,
                          "int8_mode w8a8 needs dtype int8 with per-channel scales (int8_group_size 0), "
                          "one rank and a Llama/Qwen2 model");
    if (c->cfg->intermediate_size > 130000 || c->cfg->hidden_size > 130000)
        return dsi_seterr(err, DSI_EINVAL, "int8_mode w8a8: inputs wider than 130000 overflow int32 sums");
    c->w8a8 = true;
    return 0;
}

static int alloc_scratch(struct dsi__cpu *c, char **err) {
    const struct dsi_model_config *cfg = c->cfg;
    size_t T = (size_t)c->max_tokens;
    size_t H = (size_t)cfg->hidden_size;
    struct {
        float **p;
        size_t n;
    } bufs[] = {{&c->x, T * H},
                {&c->xn, T * H},
                {&c->q, T * (size_t)c->q_dim},
                {&c->k, T * (size_t)c->kv_dim},
                {&c->v, T * (size_t)c->kv_dim},
                {&c->att, T * (size_t)c->att_dim},
                {&c->gate, T * (size_t)c->ffn_dim},
                {&c->up, T * (size_t)c->ffn_dim},
                {&c->scores, (size_t)c->n_threads * (size_t)c->max_ctx},
                {&c->lg_local, c->shard.size > 1 ? (size_t)c->max_seqs * (size_t)c->n_vocab : 0}};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        if (bufs[i].n > SIZE_MAX / sizeof(float) / 2)
            return dsi_seterr(err, DSI_EOVERFLOW, "scratch too large");
        if (bufs[i].n == 0) continue; /* lg_local of the whole model: logits go straight out */
        *bufs[i].p = calloc(bufs[i].n, sizeof(float));
        if (dsi__cpu_own(c, *bufs[i].p)) return dsi_seterr(err, DSI_ENOMEM, "out of memory for scratch");
    }
    c->tok_seq = calloc(T, sizeof(int32_t));
    if (dsi__cpu_own(c, c->tok_seq)) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    c->tok_pos = calloc(T, sizeof(int32_t));
    if (dsi__cpu_own(c, c->tok_pos)) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    if (c->w8a8) {
        size_t kmax = H;
        if ((size_t)c->q_dim > kmax) kmax = (size_t)c->q_dim;
        if ((size_t)c->n_inter > kmax) kmax = (size_t)c->n_inter;
        c->xq = calloc(T, kmax);
        if (dsi__cpu_own(c, c->xq)) return dsi_seterr(err, DSI_ENOMEM, "out of memory for w8a8 scratch");
        c->xs = calloc(T, sizeof(float));
        if (dsi__cpu_own(c, c->xs)) return dsi_seterr(err, DSI_ENOMEM, "out of memory for w8a8 scratch");
    }
    return c->mla ? dsi__cpu_alloc_deepseek(c, err) : 0;
}

void dsi_shard_range(int total, int n, int r, int unit, int *lo, int *hi) {
    int u = unit > 0 ? unit : 1;
    long long units = total / u;
    *lo = (int)(units * r / n) * u;
    *hi = r == n - 1 ? total : (int)(units * (r + 1) / n) * u;
}

/* The shard's slices (cpu_internal.h); the split itself was checked by check_config. */
static int set_shard(struct dsi__cpu *c, const struct dsi_shard *sh, char **err) {
    const struct dsi_model_config *cfg = c->cfg;
    struct dsi_shard whole = {.rank = 0, .size = 1};
    if (!sh) sh = &whole;
    int n = sh->size, r = sh->rank;
    if (n < 1 || r < 0 || r >= n || (n > 1 && (!sh->all_reduce || !sh->gather_logits)))
        return dsi_seterr(err, DSI_EINVAL, "cpu backend: shard %d of %d is invalid", r, n);
    c->shard = *sh;
    int gs = c->opts.weight_dtype == DSI_W_INT8 ? c->opts.int8_group_size : 0, lo, hi;
    c->nh = cfg->n_heads / n;
    c->nkv = cfg->n_kv_heads / n;
    c->head0 = r * c->nh;
    c->kv_head0 = r * c->nkv;
    dsi_shard_range(cfg->intermediate_size, n, r, gs, &lo, &hi);
    c->inter0 = lo;
    c->n_inter = hi - lo;
    dsi_shard_range(cfg->vocab_size, n, r, 1, &lo, &hi);
    c->vocab0 = lo;
    c->n_vocab = hi - lo;
    c->q_dim = c->nh * cfg->head_dim;
    c->kv_dim = c->nkv * cfg->head_dim;
    c->att_dim = c->q_dim;
    c->ffn_dim = c->n_inter;
    c->mla = dsi_model_is_mla(cfg);
    c->tp_reduce = n > 1 && !c->mla;
    if (c->mla) {
        /* every rank holds whole heads, dense MLPs and shared experts (replicated);
         * only the routed experts (setup_ep) and lm_head's vocab rows are split */
        c->nh = cfg->n_heads;
        c->nkv = cfg->n_kv_heads;
        c->head0 = c->kv_head0 = 0;
        c->inter0 = 0;
        c->n_inter = cfg->intermediate_size;
        c->ffn_dim = c->n_inter;
        /* per-token cache entry: the latent plus the shared rope key, not K and V per head */
        c->q_dim = cfg->n_heads * (cfg->qk_nope_head_dim + cfg->qk_rope_head_dim);
        c->kv_dim = cfg->kv_lora_rank + cfg->qk_rope_head_dim;
        c->att_dim = cfg->n_heads * cfg->v_head_dim;
        int shared = cfg->n_shared_experts * cfg->moe_intermediate_size;
        if (shared > c->ffn_dim) c->ffn_dim = shared;
    }
    return 0;
}

/* Expert parallel for a shard of an MoE model (include/dsinfer/ep.h): the plan
 * says which experts this rank loads and runs. ep_size 0 means all ranks; a
 * layout that does not split the experts evenly fails here on every rank with
 * the same message. */
static int setup_ep(struct dsi__cpu *c, char **err) {
    const struct dsi_model_config *cfg = c->cfg;
    const struct dsi_shard *sh = &c->shard;
    int ep = c->opts.ep_size, n = sh->size;
    if (ep < 0) return dsi_seterr(err, DSI_EINVAL, "expert parallel %d is negative", ep);
    if (!c->mla || cfg->n_routed_experts <= 0) {
        if (ep > 1)
            return dsi_seterr(err, DSI_EINVAL,
                              "expert parallel %d needs a DeepSeek-V2/V3 MoE model; %s has no routed experts",
                              ep, cfg->architecture);
        return 0;
    }
    if (n == 1) {
        if (ep > 1)
            return dsi_seterr(err, DSI_EINVAL,
                              "expert parallel %d needs as many ranks under mpirun; this is one", ep);
        return 0;
    }
    if (!sh->all_to_all_counts || !sh->all_to_all_rows || !sh->all_gather_rows)
        return dsi_seterr(err, DSI_EINVAL, "cpu backend: shard %d of %d has no expert-parallel exchange",
                          sh->rank, n);
    int rc = dsi_ep_plan_init(&c->ds.ep, n, sh->rank, ep > 0 ? ep : n, cfg->n_routed_experts,
                              cfg->num_experts_per_tok, c->max_tokens, err);
    if (rc) return rc;
    c->ds.ep_on = true;
    return 0;
}

/* The paged KV pool. The engine sees the whole model's block count (per-token
 * bytes of every kv head); a shard stores only its own kv heads of each token. */
static int alloc_kv(struct dsi__cpu *c, char **err) {
    const struct dsi_model_config *cfg = c->cfg;
    const struct dsi_backend_opts *o = &c->opts;
    int bs = o->kv_block_size > 0 ? o->kv_block_size : DEFAULT_BLOCK;
    /* one slot of a layer's pool: this shard's kv heads' vectors, or MLA's
     * latent + rope key entry (two vectors: int8 scales each separately) */
    size_t slot_bytes = c->mla ? dsi_kv_vector_bytes(o->kv_dtype, (size_t)cfg->kv_lora_rank) +
                                     dsi_kv_vector_bytes(o->kv_dtype, (size_t)cfg->qk_rope_head_dim)
                               : (size_t)c->nkv * dsi_kv_vector_bytes(o->kv_dtype, (size_t)cfg->head_dim);
    size_t per_tok = dsi_model_kv_bytes_per_token(cfg, o->kv_dtype);
    size_t per_tok_local = (size_t)cfg->n_layers * (c->mla ? 1 : 2) * slot_bytes;
    size_t kv_bytes = o->kv_bytes ? o->kv_bytes : DEFAULT_KV_BYTES;
    size_t n_blocks = kv_bytes / ((size_t)bs * per_tok);
    if (n_blocks < 1)
        return dsi_seterr(err, DSI_EINVAL, "cpu backend: kv_bytes %zu is less than one block (%zu bytes)",
                          kv_bytes, (size_t)bs * per_tok);
    if (n_blocks > (size_t)INT_MAX / (size_t)bs) n_blocks = (size_t)INT_MAX / (size_t)bs;
    c->kv_pool_bytes = n_blocks * (size_t)bs * slot_bytes;
    c->kv = calloc(n_blocks * (size_t)bs, per_tok_local);
    if (dsi__cpu_own(c, c->kv))
        return dsi_seterr(err, DSI_ENOMEM, "out of memory for a %zu-byte KV pool",
                          n_blocks * (size_t)bs * per_tok_local);
    c->be.kv_block_size = bs;
    c->be.n_kv_blocks = (int)n_blocks;
    c->be.kv_bytes_per_token = per_tok;
    c->be.kv_dtype = o->kv_dtype;
    c->max_ctx = cfg->max_position_embeddings;
    if ((size_t)c->max_ctx > n_blocks * (size_t)bs) c->max_ctx = (int)(n_blocks * (size_t)bs);
    return 0;
}

int dsi_cpu_backend_create(const struct dsi_model *m, const struct dsi_backend_opts *o,
                           struct dsi_backend **out, char **err) {
    return dsi_cpu_backend_create_shard(m, o, NULL, out, err);
}

int dsi_cpu_backend_create_shard(const struct dsi_model *m, const struct dsi_backend_opts *o,
                                 const struct dsi_shard *sh, struct dsi_backend **out, char **err) {
    if (!out) return DSI_EINVAL;
    *out = NULL;
    if (!m || !o) return dsi_seterr(err, DSI_EINVAL, "cpu backend: model and options are required");
    const struct dsi_model_config *cfg = &m->cfg;
    int size = sh ? sh->size : 1;
    int rc = check_config(cfg, o, size, err);
    if (rc) return rc;
    if (o->weight_dtype != DSI_W_F32 && o->weight_dtype != DSI_W_BF16 && o->weight_dtype != DSI_W_INT8)
        return dsi_seterr(err, DSI_EINVAL, "cpu backend: unknown weight dtype %d", (int)o->weight_dtype);
    if (o->kv_dtype != DSI_KV_F32 && o->kv_dtype != DSI_KV_BF16 && o->kv_dtype != DSI_KV_INT8)
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
    if ((rc = set_shard(c, sh, err))) goto fail;
    if ((rc = check_w8a8(c, err))) goto fail;
    c->max_tokens = o->max_batch_tokens > 0 ? o->max_batch_tokens : DEFAULT_MAX_TOKENS;
    if ((rc = setup_ep(c, err))) goto fail;
    c->max_seqs = o->max_seqs > 0 && o->max_seqs < c->max_tokens ? o->max_seqs : c->max_tokens;

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
    if ((rc = dsi__cpu_load(c, m, err)) || (rc = alloc_kv(c, err)) || (rc = alloc_scratch(c, err))) goto fail;
    log_ready(c);
    *out = &c->be;
    return 0;
fail:
    cpu_destroy(&c->be);
    return rc;
}

static void log_ready(const struct dsi__cpu *c) {
    const char *dt = c->opts.weight_dtype == DSI_W_F32    ? "f32"
                     : c->opts.weight_dtype == DSI_W_BF16 ? "bf16"
                                                          : "int8";
    if (c->ds.ep_on)
        dsi_log(DSI_LOG_INFO, "cpu",
                "rank %d/%d: replicated MLA attention, routed experts %d..%d of %d (expert parallel %d), vocab "
                "%d..%d, %s weights %.1f MB, %d KV blocks of %d tokens, %d threads",
                c->shard.rank, c->shard.size, c->ds.ep.e0, c->ds.ep.e0 + c->ds.ep.n_local - 1,
                c->cfg->n_routed_experts, c->ds.ep.ep, c->vocab0, c->vocab0 + c->n_vocab - 1, dt,
                (double)c->be.weight_bytes / 1e6, c->be.n_kv_blocks, c->be.kv_block_size, c->n_threads);
    else if (c->shard.size > 1)
        dsi_log(DSI_LOG_INFO, "cpu",
                "rank %d/%d shard: heads %d..%d, kv heads %d..%d, intermediate %d..%d, vocab %d..%d, %s "
                "weights %.1f MB, %d KV blocks of %d tokens, %d threads",
                c->shard.rank, c->shard.size, c->head0, c->head0 + c->nh - 1, c->kv_head0,
                c->kv_head0 + c->nkv - 1, c->inter0, c->inter0 + c->n_inter - 1, c->vocab0,
                c->vocab0 + c->n_vocab - 1, dt, (double)c->be.weight_bytes / 1e6, c->be.n_kv_blocks,
                c->be.kv_block_size, c->n_threads);
    else
        dsi_log(DSI_LOG_INFO, "cpu",
                "backend ready: %s weights %.1f MB, %d KV blocks of %d tokens (%s cache, %zu KV bytes per "
                "token%s), %d threads",
                dt, (double)c->be.weight_bytes / 1e6, c->be.n_kv_blocks, c->be.kv_block_size,
                dsi_kv_dtype_name(c->opts.kv_dtype), c->be.kv_bytes_per_token, c->mla ? ", MLA latent" : "",
                c->n_threads);
}

void dsi_cpu_backend_limits(const struct dsi_backend *be, int *max_tokens, int *max_seqs, int *max_ctx) {
    const struct dsi__cpu *c = be->impl;
    *max_tokens = c->max_tokens;
    *max_seqs = c->max_seqs;
    *max_ctx = c->max_ctx;
}

static void cpu_destroy(struct dsi_backend *be) {
    if (!be) return;
    struct dsi__cpu *c = be->impl;
    dsi_ep_plan_free(&c->ds.ep);
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
