/*
 * runtime.c: dsi_runtime_open, the one assembly path of model + tokenizer +
 * backend + engine (see include/dsinfer/runtime.h for what it owns and why).
 *
 * Invariants: open is all or nothing; the backend reads only verified weights
 * (the CUDA backend verifies in its upload; anything else, the fallback
 * included, runs after dsi_model_verify_pending); the engine's limits never
 * exceed what the backend was created for (max_running <= max_seqs,
 * max_batch_tokens equal).
 */
#include "dsinfer/runtime.h"

#include <stdlib.h>
#include <string.h>

#include "dsinfer/clock.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#ifdef DSI_TEST_HOOKS
#include "dsinfer/fault.h"
#endif

int dsi_runtime_parse_dtype(const char *s, enum dsi_weight_dtype *out) {
    if (!s || !s[0] || !strcmp(s, "bf16")) *out = DSI_W_BF16;
    else if (!strcmp(s, "f32")) *out = DSI_W_F32;
    else if (!strcmp(s, "int8")) *out = DSI_W_INT8;
    else return DSI_EINVAL;
    return 0;
}

int dsi_runtime_parse_kv_dtype(const char *s, const char *backend, enum dsi_kv_dtype *out) {
    if (!s || !s[0] || !strcmp(s, "auto")) *out = backend && !strcmp(backend, "cuda") ? DSI_KV_BF16 : DSI_KV_F32;
    else if (!strcmp(s, "f32")) *out = DSI_KV_F32;
    else if (!strcmp(s, "bf16")) *out = DSI_KV_BF16;
    else if (!strcmp(s, "int8")) *out = DSI_KV_INT8;
    else return DSI_EINVAL;
    return 0;
}

const char *dsi_runtime_dtype_name(enum dsi_weight_dtype d) {
    return d == DSI_W_F32 ? "f32" : d == DSI_W_BF16 ? "bf16" : "int8";
}

static bool is_set(const char *s) { return s && s[0]; }

static int backend_opts(const struct dsi_config *c, const struct dsi_runtime_opts *o,
                        const struct dsi_model_config *mc, struct dsi_backend_opts *bo, char **err) {
    const char *backend = is_set(c->backend) ? c->backend : "cpu";
    memset(bo, 0, sizeof *bo);
    if (dsi_runtime_parse_dtype(c->dtype, &bo->weight_dtype))
        return dsi_seterr(err, DSI_EINVAL, "dtype '%s' is not f32, bf16 or int8", c->dtype);
    bo->int8_group_size = c->int8_group_size;
    if (c->int8_mode && strcmp(c->int8_mode, "w8a8") == 0) bo->int8_mode = DSI_INT8_W8A8;
    if (dsi_runtime_parse_kv_dtype(c->kv_dtype, backend, &bo->kv_dtype))
        return dsi_seterr(err, DSI_EINVAL, "kv_dtype '%s' is not auto, f32, bf16 or int8", c->kv_dtype);
    bo->kv_block_size = c->kv_block_size > 0 ? c->kv_block_size : 16;
    bo->kv_bytes = c->kv_cache_mib << 20;
    if (o->kv_tokens > 0) {
        /* Exactly the sequences asked for, plus two blocks of slack per pool. */
        size_t blocks = (size_t)o->kv_tokens / (size_t)bo->kv_block_size + 2;
        size_t seqs = (size_t)(c->max_running > 0 ? c->max_running : 1);
        bo->kv_bytes = seqs * blocks * (size_t)bo->kv_block_size * dsi_model_kv_bytes_per_token(mc, bo->kv_dtype);
    }
    bo->kv_gpu_fraction = (float)c->kv_gpu_fraction;
    bo->max_batch_tokens = c->max_batch_tokens;
    bo->max_seqs = c->max_running;
    bo->n_threads = c->threads;
    bo->device = c->device;
    return 0;
}

/* Creates the backend the config names; on DSI_ENODEV, the CPU backend only when
 * the operator opted in (a service must not silently run 1000x slower). */
static int create_backend(const struct dsi_config *c, const struct dsi_backend_opts *bo, struct dsi_runtime *rt,
                          char **err) {
    const char *name = is_set(c->backend) ? c->backend : "cpu";
    char *why = NULL;
    int rc = dsi_backend_create(name, &rt->model, bo, &rt->be, &why);
    rt->backend_name = name;
    if (rc != DSI_ENODEV || !strcmp(name, "cpu")) {
        if (rc && err) *err = why;
        else free(why);
        return rc;
    }
    bool opted_in = is_set(c->backend_fallback) && !strcmp(c->backend_fallback, "cpu");
    if (!opted_in) {
        rc = dsi_seterr(err, DSI_ENODEV,
                        "backend %s is not available (%s); set backend_fallback to \"cpu\" to run on the CPU "
                        "backend instead", name, why ? why : dsi_strerror(rc));
        free(why);
        return rc;
    }
    dsi_log(DSI_LOG_WARN, "runtime", "backend %s unavailable (%s); backend_fallback: serving on the CPU backend",
            name, why ? why : dsi_strerror(rc));
    free(why);
    /* the CUDA upload would have hashed the weights; the CPU backend needs them verified now */
    if (dsi_model_unverified(&rt->model) > 0 && (rc = dsi_model_verify_pending(&rt->model, c->threads, err)))
        return rc;
    rt->backend_name = "cpu";
    rt->fell_back = true;
    return dsi_backend_create("cpu", &rt->model, bo, &rt->be, err);
}

#ifdef DSI_TEST_HOOKS
/* Test builds: DSI_TEST_FAIL_STEP ("N", "N:oom", "N:dead") fails the backend's
 * Nth step (dsinfer/fault.h); the one place this hook is read. */
static int wrap_fault(struct dsi_runtime *rt, char **err) {
    const char *spec = getenv("DSI_TEST_FAIL_STEP");
    if (!spec || !spec[0]) return 0;
    struct dsi_fault_spec f;
    int rc = dsi_fault_parse(spec, &f, err);
    if (rc) return rc;
    struct dsi_backend *inner = rt->be;
    rt->be = NULL; /* the wrapper owns it now, also when wrapping fails */
    return dsi_fault_backend_wrap(inner, &f, &rt->be, err);
}
#endif

static int create_engine(const struct dsi_config *c, const struct dsi_runtime_opts *o, struct dsi_runtime *rt,
                         char **err) {
    int ctx = rt->model.cfg.max_position_embeddings;
    if (c->max_total_tokens > 0 && (ctx <= 0 || c->max_total_tokens < ctx)) ctx = c->max_total_tokens;
    rt->context_tokens = ctx;
    rt->max_prompt_tokens = c->max_prompt_tokens > 0 && c->max_prompt_tokens < ctx ? c->max_prompt_tokens : ctx;
    if (o->no_engine) return 0;
    struct dsi_engine_opts eo;
    dsi_engine_opts_defaults(&eo);
    if (c->max_running > 0) eo.max_running = c->max_running;
    if (c->max_queued > 0) eo.max_queued = c->max_queued;
    if (c->prefill_chunk > 0) eo.prefill_chunk = c->prefill_chunk;
    if (c->max_batch_tokens > 0) eo.max_batch_tokens = c->max_batch_tokens;
    eo.max_total_tokens = ctx;
    eo.max_prompt_tokens = rt->max_prompt_tokens;
    if (c->queue_timeout_ms > 0) eo.queue_timeout_ms = c->queue_timeout_ms;
    if (c->request_timeout_ms > 0) eo.request_timeout_ms = c->request_timeout_ms;
    int n_ids = dsi_tok_vocab_size(rt->tok);
    if (n_ids > 0 && n_ids < rt->be->vocab_size) eo.sample_vocab = n_ids;
    if (o->no_timeouts) eo.queue_timeout_ms = eo.request_timeout_ms = 0;
    eo.prefix_cache = c->prefix_cache;
    return dsi_engine_create(rt->be, &eo, &rt->eng, err);
}

static int open_tokenizer(const struct dsi_config *c, const struct dsi_runtime_opts *o, struct dsi_runtime *rt,
                          char **err) {
    char *why = NULL;
    /* an encrypted model's tokenizer comes from its decrypted files */
    int rc = dsi_tok_load_model(&rt->model, &rt->tok, &why);
    if (rc && o->tokenizer_optional) {
        free(why); /* ids in, ids out */
        rt->tok = NULL;
    } else if (rc) {
        if (err) *err = why;
        else free(why);
        return rc;
    }
    if (!rt->tok || !is_set(c->chat_format) || !strcmp(c->chat_format, "auto"))
        rt->chat_format = rt->tok ? dsi_tok_chat_format(rt->tok) : DSI_CHAT_CHATML;
    else if (dsi_chat_format_parse(c->chat_format, &rt->chat_format))
        return dsi_seterr(err, DSI_EINVAL, "unknown chat_format '%s'", c->chat_format);
    rt->reasoning = rt->tok && dsi_chat_is_reasoning(rt->tok, rt->chat_format);
    const struct dsi_model_config *mc = &rt->model.cfg;
    int32_t eos[DSI_MAX_EOS];
    int n_eos = mc->n_eos < DSI_MAX_EOS ? mc->n_eos : DSI_MAX_EOS;
    for (int i = 0; i < n_eos; i++) eos[i] = mc->eos_token_ids[i];
    rt->n_stop_ids = dsi_tok_stop_ids(rt->tok, eos, n_eos, rt->stop_ids, DSI_MAX_STOP_IDS);
    return 0;
}

int dsi_runtime_open(const struct dsi_config *c, const struct dsi_runtime_opts *o_in, struct dsi_runtime **out,
                     char **err) {
    *out = NULL;
    struct dsi_runtime_opts o = {0};
    if (o_in) o = *o_in;
    if (!is_set(c->model_dir)) return dsi_seterr(err, DSI_EINVAL, "no model directory (model_dir)");
    struct dsi_backend_opts bo;
    enum dsi_weight_dtype dt;
    if (dsi_runtime_parse_dtype(c->dtype, &dt))
        return dsi_seterr(err, DSI_EINVAL, "dtype '%s' is not f32, bf16 or int8", c->dtype);
    struct dsi_runtime *rt = calloc(1, sizeof *rt);
    if (!rt) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    double t0 = dsi_now_s();
    const bool cuda = is_set(c->backend) && !strcmp(c->backend, "cuda");
    struct dsi_model_open_opts mo = {.skip_verify = c->skip_verify,
                                     .expect_manifest_sha256 = is_set(c->manifest_sha256) ? c->manifest_sha256 : NULL,
                                     .n_threads = c->threads,
                                     .defer_weight_hash = cuda,
                                     .key_file = is_set(c->model_key_file) ? c->model_key_file : NULL};
    int rc = dsi_model_open(&rt->model, c->model_dir, &mo, err);
    if (rc) {
        free(rt);
        return rc;
    }
    if ((rc = dsi_model_config_runnable(&rt->model.cfg, err))) goto fail;
    if ((rc = open_tokenizer(c, &o, rt, err))) goto fail;
    if ((rc = backend_opts(c, &o, &rt->model.cfg, &bo, err))) goto fail;
    double t1 = dsi_now_s();
    if ((rc = create_backend(c, &bo, rt, err))) goto fail;
#ifdef DSI_TEST_HOOKS
    if ((rc = wrap_fault(rt, err))) goto fail;
#endif
    rt->backend_s = dsi_now_s() - t1;
    if ((rc = create_engine(c, &o, rt, err))) goto fail;
    rt->total_s = dsi_now_s() - t0;
    *out = rt;
    return 0;
fail:
    dsi_runtime_close(rt);
    return rc;
}

void dsi_runtime_stop_engine(struct dsi_runtime *rt) {
    if (!rt) return;
    dsi_engine_destroy(rt->eng);
    rt->eng = NULL;
}

void dsi_runtime_close(struct dsi_runtime *rt) {
    if (!rt) return;
    dsi_runtime_stop_engine(rt);
    dsi_backend_destroy(rt->be);
    dsi_tok_free(rt->tok);
    dsi_model_close(&rt->model);
    free(rt);
}
