/*
 * runtime.h: the one way to assemble a model for inference: model directory +
 * tokenizer + backend + engine, with the policy that goes with it.
 *
 * dsi_runtime_open owns, for `serve`, `generate`, `logits`, `perplexity`,
 * `quant-report` and `bench`:
 * - dtype parsing (dsi_runtime_parse_dtype / _kv_dtype: the only parser);
 * - the verification policy: the CUDA backend hashes the weight files in its
 *   one-pass upload (fail closed); every other backend gets them verified first;
 * - backend creation and the fallback: a backend that was asked for and is not
 *   available (DSI_ENODEV: cuda without a GPU) is an error, unless the config's
 *   backend_fallback is "cpu" (then: verify what was deferred, warn, run on cpu);
 * - engine sizing from the config (context = min(max_total_tokens, model));
 * - chat format selection (config chat_format, "auto": tokenizer_config.json);
 * - the stop-token set (dsi_tok_stop_ids: the tokenizer's and the model's EOS
 *   plus the chat formats' end-of-turn tokens).
 * BOS handling is dsi_tok_encode_prompt's (src/tok).
 *
 * Owner: src/runtime. The runtime owns what it opens; dsi_runtime_close frees it
 * in the right order (engine, backend, tokenizer, model).
 */
#ifndef DSINFER_RUNTIME_H
#define DSINFER_RUNTIME_H

#include <stdbool.h>
#include <stdint.h>

#include "dsinfer/backend.h"
#include "dsinfer/config.h"
#include "dsinfer/engine.h"
#include "dsinfer/model.h"
#include "dsinfer/tok.h"

/* What differs between the callers; the rest comes from struct dsi_config. */
struct dsi_runtime_opts {
    bool no_engine;            /* logits, quant-report: backend only */
    bool tokenizer_optional;   /* generate --ids: a model without tokenizer.json still runs */
    int kv_tokens;             /* > 0: the KV pool holds max_running sequences of this many
                                  tokens (CLI runs) instead of kv_cache_mib */
    bool no_timeouts;          /* CLI runs: no queue or request deadline */
};

struct dsi_runtime {
    struct dsi_model model;
    struct dsi_tokenizer *tok;  /* NULL only with tokenizer_optional and no tokenizer.json */
    struct dsi_backend *be;
    struct dsi_engine *eng;     /* NULL with no_engine, or after dsi_runtime_stop_engine */
    const char *backend_name;   /* what runs: the config's, or "cpu" after a fallback */
    bool fell_back;
    enum dsi_chat_format chat_format; /* resolved (never AUTO); CHATML without a tokenizer */
    bool reasoning;             /* the format opens assistant turns in <think> */
    int32_t stop_ids[DSI_MAX_STOP_IDS];
    int n_stop_ids;
    int context_tokens;         /* prompt + completion per sequence */
    int max_prompt_tokens;
    double backend_s, total_s;  /* backend load; everything (verify and open included) */
};

/* "f32", "bf16", "int8" ("" or NULL: bf16, the config default). 0 or DSI_EINVAL. */
int dsi_runtime_parse_dtype(const char *s, enum dsi_weight_dtype *out);
/* The KV cache format config kv_dtype names: "f32", "bf16", "int8", or "auto"
 * ("" or NULL too): backend's own (cuda: bf16, anything else: f32). 0 or
 * DSI_EINVAL. The one parser of kv_dtype / --kv-dtype. */
int dsi_runtime_parse_kv_dtype(const char *s, const char *backend, enum dsi_kv_dtype *out);
const char *dsi_runtime_dtype_name(enum dsi_weight_dtype d);

/* Opens c->model_dir as the config says. o NULL: defaults (engine on). On error
 * nothing is left open and *err says what failed (a missing backend names
 * backend_fallback). */
int dsi_runtime_open(const struct dsi_config *c, const struct dsi_runtime_opts *o, struct dsi_runtime **out,
                     char **err);
/* Destroys the engine first (every request gets its CANCELLED final event), so a
 * server can stop generating before it tears down connections; idempotent. */
void dsi_runtime_stop_engine(struct dsi_runtime *rt);
/* Accepts NULL. */
void dsi_runtime_close(struct dsi_runtime *rt);

#endif
