/*
 * config_check.c: dsi_model_config_check(), the one answer to "can this
 * backend run this config, split over n ranks?" that every backend asks before
 * it loads a weight. What the build runs at all is dsi_model_config_runnable's
 * (hfconfig.c); what differs per backend comes in a struct dsi_backend_limits
 * that the backend owns (CPU: cpu_backend.c, CUDA: cuda_backend.c).
 *
 * Error codes, one per cause, whatever the backend: a feature or size that is
 * not run is DSI_EUNSUPPORTED, a config.json that contradicts itself is
 * DSI_EFORMAT, sizes past int indexing are DSI_EOVERFLOW, and a model that
 * does not split over the ranks asked for is DSI_EINVAL.
 */
#include <limits.h>

#include "dsinfer/err.h"
#include "dsinfer/model.h"

static int check_sizes(const struct dsi_model_config *cfg, char **err);
static int check_limits(const struct dsi_model_config *cfg, const struct dsi_backend_limits *lim, char **err);
static int check_split(const struct dsi_model_config *cfg, const struct dsi_backend_limits *lim, int n,
                       int gs, char **err);

/* Shapes every forward pass relies on; outside them is an error, not a crash. */
static int check_sizes(const struct dsi_model_config *cfg, char **err) {
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
    return 0;
}

static int check_limits(const struct dsi_model_config *cfg, const struct dsi_backend_limits *lim,
                        char **err) {
    if (dsi_model_is_mla(cfg) && !lim->mla_moe)
        return dsi_seterr(err, DSI_EUNSUPPORTED,
                          "%s backend: %s (MLA attention + MoE) is not supported; the cpu backend runs it",
                          lim->backend, cfg->architecture);
    int group = cfg->n_heads / cfg->n_kv_heads;
    if (lim->max_gqa_group > 0 && group > lim->max_gqa_group)
        return dsi_seterr(err, DSI_EUNSUPPORTED,
                          "%s backend: %d attention heads per kv head (%d over %d); at most %d are supported",
                          lim->backend, group, cfg->n_heads, cfg->n_kv_heads, lim->max_gqa_group);
    if ((lim->head_dim_multiple > 0 && cfg->head_dim % lim->head_dim_multiple) ||
        (lim->head_dim_divides > 0 && lim->head_dim_divides % cfg->head_dim))
        return dsi_seterr(err, DSI_EUNSUPPORTED,
                          "%s backend: head_dim %d is not supported (a multiple of %d that divides %d)",
                          lim->backend, cfg->head_dim, lim->head_dim_multiple, lim->head_dim_divides);
    return 0;
}

/* n ranks: whole heads and kv heads per rank, int8 groups inside one rank's
 * columns, and a slice of the intermediate size and the vocabulary for each. */
static int check_split(const struct dsi_model_config *cfg, const struct dsi_backend_limits *lim, int n,
                       int gs, char **err) {
    if (dsi_model_is_mla(cfg) && lim->mla_moe_ranks) {
        /* heads and intermediate rows stay whole (replicated); only lm_head's vocab is split */
        if (cfg->vocab_size < n)
            return dsi_seterr(err, DSI_EINVAL, "%d ranks: the vocabulary of %d is too small to split", n,
                              cfg->vocab_size);
        return 0;
    }
    if (dsi_model_is_mla(cfg))
        return dsi_seterr(err, DSI_EUNSUPPORTED,
                          "tensor parallel %d: %s (MLA attention + MoE) is not implemented across ranks", n,
                          cfg->architecture);
    if (cfg->n_heads % n || cfg->n_kv_heads % n)
        return dsi_seterr(
            err, DSI_EINVAL,
            "tensor parallel %d does not divide this model's %d attention heads and %d kv heads; "
            "use a number of ranks that divides both",
            n, cfg->n_heads, cfg->n_kv_heads);
    if (lim->split_inter_evenly && cfg->intermediate_size % n)
        return dsi_seterr(err, DSI_EINVAL,
                          "tensor parallel %d does not divide this model's intermediate size %d (the %s "
                          "backend splits it evenly)",
                          n, cfg->intermediate_size, lim->backend);
    int q_l = cfg->n_heads / n * cfg->head_dim;
    if (gs > 0 && (q_l % gs || cfg->intermediate_size % gs ||
                   (lim->split_inter_evenly && (cfg->intermediate_size / n) % gs)))
        return dsi_seterr(err, DSI_EINVAL,
                          "tensor parallel %d: int8 group size %d does not divide the %d attention columns "
                          "per rank or the intermediate size %d, so groups would straddle ranks; use a "
                          "group size that divides both, or 0 (per channel)",
                          n, gs, q_l, cfg->intermediate_size);
    if (cfg->intermediate_size / (gs > 0 ? gs : 1) < n || cfg->vocab_size < n)
        return dsi_seterr(
            err, DSI_EINVAL,
            "tensor parallel %d: the intermediate size %d or vocabulary %d is too small to give "
            "every rank a slice",
            n, cfg->intermediate_size, cfg->vocab_size);
    return 0;
}

int dsi_model_config_check(const struct dsi_model_config *cfg, const struct dsi_backend_limits *lim,
                           int n_ranks, int int8_group_size, char **err) {
    if (!cfg || !lim) return dsi_seterr(err, DSI_EINVAL, "config check: config and limits are required");
    if (n_ranks < 1) return dsi_seterr(err, DSI_EINVAL, "tensor parallel: %d ranks", n_ranks);
    if (int8_group_size < 0)
        return dsi_seterr(err, DSI_EINVAL, "int8 group size %d is negative", int8_group_size);
    int rc = dsi_model_config_runnable(cfg, err);
    if (!rc) rc = check_sizes(cfg, err);
    if (!rc) rc = check_limits(cfg, lim, err);
    if (!rc && n_ranks > 1) rc = check_split(cfg, lim, n_ranks, int8_group_size, err);
    return rc;
}
