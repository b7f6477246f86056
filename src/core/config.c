/*
 * config.c: the daemon's configuration table, and building a valid config from
 * it: defaults, the JSON file, command-line overrides, per-option checks and
 * the cross-field rules of dsi_config_validate.
 *
 * Each option of struct dsi_config is one row of `opts` below: name, type,
 * range, default, an example value for config/dsinfer.json, flags and help.
 * The JSON loader, dsi_config_set (command-line overrides), validation, and
 * in config_report.c the SIGHUP reload check, `--help` and the documented
 * example all walk this one table, so an option cannot be loadable but
 * undocumented, or documented with the wrong default.
 *
 * Invariants: every string field of a config that went through
 * dsi_config_init is a heap string (never NULL; "" means "not set"). Values
 * are checked when they are set (type, range, enum, per-option validator);
 * rules that tie several options together live in dsi_config_validate.
 * Loading is all-or-nothing: on error the config is left unchanged.
 */
#include "dsinfer/config.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"
#include "dsinfer/err.h"

static int check_listen(const struct dsi__opt *o, const char *text, char **err);
static int check_sha256(const struct dsi__opt *o, const char *text, char **err);
static int check_pow2_or_zero(const struct dsi__opt *o, const char *text, char **err);
static int check_roles(const struct dsi__opt *o, const char *text, char **err);
static int check_names(const struct dsi__opt *o, const char *text, char **err);

#define F(field) offsetof(struct dsi_config, field)
#define MIB (1024.0 * 1024.0)

/* clang-format off */
static const struct dsi__opt opts[] = {
    {"listen", DSI__OPT_STR, F(listen), 0, 0, "127.0.0.1:8443", NULL, NULL, check_listen, 0, "network",
     "address:port to listen on; IPv6 as [::1]:8443, all interfaces as 0.0.0.0:8443"},
    {"plain_http", DSI__OPT_BOOL, F(plain_http), 0, 0, "false", NULL, NULL, NULL, 0, "network",
     "serve plain HTTP instead of TLS 1.3; only allowed on a loopback listen address"},
    {"tls_cert", DSI__OPT_PATH, F(tls_cert), 0, 0, "", "/etc/dsinfer/tls.crt", NULL, NULL, 0, "network",
     "PEM certificate chain; empty: a self-signed certificate kept in state_dir"},
    {"tls_key", DSI__OPT_PATH, F(tls_key), 0, 0, "", "/run/credentials/dsinfer.service/tls.key", NULL, NULL,
     0, "network",
     "PEM private key of tls_cert; ${CREDENTIALS_DIRECTORY} is expanded (systemd LoadCredential=)"},
    {"tls_client_ca", DSI__OPT_PATH, F(tls_client_ca), 0, 0, "", NULL, NULL, NULL, 0, "network",
     "PEM CA certificates that sign client certificates (mTLS); empty: no client certificates"},
    {"tls_require_client_cert", DSI__OPT_BOOL, F(tls_require_client_cert), 0, 0, "false", NULL, NULL, NULL,
     0, "network", "refuse TLS clients without a certificate signed by tls_client_ca"},
    {"max_connections", DSI__OPT_INT, F(max_connections), 1, 65536, "1024", NULL, NULL, NULL, 0, "network",
     "open client connections at most"},
    {"client_timeout_s", DSI__OPT_INT, F(client_timeout_s), 1, 3600, "60", NULL, NULL, NULL, 0, "network",
     "seconds an idle or stalled client connection is kept"},
    {"max_connections_per_ip", DSI__OPT_INT, F(max_connections_per_ip), 0, 65536, "64", NULL, NULL, NULL, 0,
     "network", "open connections from one client address at most; 0: no limit"},
    {"request_read_timeout_s", DSI__OPT_INT, F(request_read_timeout_s), 1, 3600, "30", NULL, NULL, NULL, 0,
     "network", "seconds a client has to send a whole request, headers and body (slowloris guard)"},
    {"http_threads", DSI__OPT_INT, F(http_threads), 0, 64, "0", NULL, NULL, NULL, 0, "network",
     "threads serving HTTP and TLS; 0: one per CPU, between 2 and 8"},
    {"max_body_bytes", DSI__OPT_SIZE, F(max_body_bytes), 1024, 1024 * MIB, "1048576", NULL, NULL, NULL, 0,
     "network", "largest request body in bytes (suffixes K, M, G allowed); larger: 413"},
    {"stream_buffer_bytes", DSI__OPT_SIZE, F(stream_buffer_bytes), 4096, 1024 * MIB, "1048576", NULL, NULL, NULL,
     0, "network",
     "stream output held for a client that does not read it, in bytes (K, M, G allowed); more: the stream "
     "ends with an error event and its sequence is cancelled"},
    {"max_messages", DSI__OPT_INT, F(max_messages), 1, 65536, "256", NULL, NULL, NULL, 0, "network",
     "most messages in one chat request"},
    {"max_n", DSI__OPT_INT, F(max_n), 1, 16, "16", NULL, NULL, NULL, 0, "network",
     "most choices (n) one generation request may ask for; each is an engine sequence sharing the prompt; "
     "more: 400"},

    {"keys_file", DSI__OPT_PATH, F(keys_file), 0, 0, "", "/var/lib/dsinfer/keys.json", NULL, NULL,
     DSI__OPT_RELOAD, "auth",
     "API keys file (dsinfer keys add); empty: no keys, every non-open route answers 401"},
    {"roles", DSI__OPT_JSON, F(roles), 0, 0, "", NULL, NULL, check_roles, DSI__OPT_RELOAD, "auth",
     "JSON object {\"role\": [\"permission\", ...]}; empty or {}: the default roles admin, user, monitor"},
    {"open_health", DSI__OPT_BOOL, F(open_health), 0, 0, "true", NULL, NULL, NULL, DSI__OPT_RELOAD, "auth",
     "answer /health/live and /health/ready without a key (for load balancers)"},
    {"audit_log", DSI__OPT_PATH, F(audit_log), 0, 0, "", "/var/log/dsinfer/audit.log", NULL, NULL, 0, "auth",
     "file that gets one JSON line per request (SIGHUP reopens it after rotation); empty: no audit log"},

    {"model_dir", DSI__OPT_PATH, F(model_dir), 0, 0, "",
     "/var/lib/dsinfer/models/DeepSeek-R1-Distill-Qwen-7B", NULL, NULL, 0, "model",
     "model directory (config.json, *.safetensors, tokenizer.json, SHA256SUMS)"},
    {"model_name", DSI__OPT_STR, F(model_name), 0, 0, "", NULL, NULL, NULL, 0, "model",
     "model name served in the API; empty: the last component of model_dir"},
    {"served_model_names", DSI__OPT_JSON, F(served_model_names), 0, 0, "", NULL, NULL, check_names, 0, "model",
     "JSON array of the names the model answers to, e.g. [\"deepseek-chat\",\"deepseek-reasoner\"] (at most 16); "
     "the first is listed first in /v1/models and named in responses; empty: model_name"},
    {"dtype", DSI__OPT_ENUM, F(dtype), 0, 0, "bf16", NULL, "f32|bf16|int8", NULL, 0, "model",
     "weight type in memory: f32 (reference), bf16, int8 (weight-only, fastest on cuda)"},
    {"int8_group_size", DSI__OPT_INT, F(int8_group_size), 0, 4096, "0", NULL, NULL, check_pow2_or_zero, 0,
     "model", "int8 scale group along the input dimension; 0: one scale per output channel"},
    {"int8_mode", DSI__OPT_ENUM, F(int8_mode), 0, 0, "w8a16", NULL, "w8a16|w8a8", NULL, 0, "model",
     "int8 weights: w8a16 keeps activations bf16; w8a8 quantizes them per token to int8 too and multiplies "
     "int8 x int8 with int32 sums (layer weights at every batch size, lm_head stays w8a16; per-channel "
     "scales, one rank, Llama/Qwen2 models)"},
    {"backend", DSI__OPT_ENUM, F(backend), 0, 0, "cpu", NULL, "cpu|cuda", NULL, 0, "model",
     "compute backend"},
    {"backend_fallback", DSI__OPT_ENUM, F(backend_fallback), 0, 0, "none", NULL, "none|cpu", NULL, 0, "model",
     "when backend is not available (cuda without a GPU): none = refuse to start; cpu = warn and run on the "
     "cpu backend (orders of magnitude slower)"},
    {"device", DSI__OPT_INT, F(device), 0, 255, "0", NULL, NULL, NULL, 0, "model",
     "CUDA device index (first device when tensor_parallel > 1)"},
    {"threads", DSI__OPT_INT, F(threads), 0, 1024, "0", NULL, NULL, NULL, 0, "model",
     "cpu backend threads; 0: all cores"},
    {"skip_verify", DSI__OPT_BOOL, F(skip_verify), 0, 0, "false", NULL, NULL, NULL, 0, "model",
     "skip the SHA256SUMS check at load (not recommended)"},
    {"manifest_sha256", DSI__OPT_STR, F(manifest_sha256), 0, 0, "", NULL, NULL, check_sha256, 0, "model",
     "pin the SHA-256 of the model's SHA256SUMS file (64 hex digits); empty: not pinned"},
    {"model_key_file", DSI__OPT_PATH, F(model_key_file), 0, 0, "", NULL, NULL, NULL, 0, "model",
     "key of a model encrypted at rest (dsinfer encrypt), mode 0600 or stricter; ${CREDENTIALS_DIRECTORY} is "
     "expanded (systemd LoadCredentialEncrypted=); empty: the model is not encrypted"},
    {"chat_format", DSI__OPT_ENUM, F(chat_format), 0, 0, "auto", NULL,
     "auto|deepseek-v3|deepseek-llm|deepseek-coder|chatml", NULL, 0, "model",
     "chat template; auto: from tokenizer_config.json"},
    {"tensor_parallel", DSI__OPT_INT, F(tensor_parallel), 1, 64, "1", NULL, NULL, NULL, 0, "model",
     "GPUs one model is split over (cuda backend)"},

    {"kv_block_size", DSI__OPT_INT, F(kv_block_size), 1, 256, "16", NULL, NULL, check_pow2_or_zero, 0,
     "engine", "tokens per KV cache block (a power of two)"},
    {"kv_cache_mib", DSI__OPT_SIZE, F(kv_cache_mib), 1, 1024 * 1024, "256", NULL, NULL, NULL, 0, "engine",
     "KV cache pool of the cpu backend, MiB"},
    {"kv_dtype", DSI__OPT_ENUM, F(kv_dtype), 0, 0, "auto", NULL, "auto|f32|bf16|int8", NULL, 0, "engine",
     "KV cache element format; auto: the backend's (cpu f32, cuda bf16); int8: int8 values with an f16 "
     "scale per token and head, about half of bf16's bytes (cpu backend only)"},
    {"kv_gpu_fraction", DSI__OPT_DOUBLE, F(kv_gpu_fraction), 0.05, 0.99, "0.9", NULL, NULL, NULL, 0, "engine",
     "share of GPU memory used by weights + KV cache (cuda backend)"},
    {"max_running", DSI__OPT_INT, F(max_running), 1, 4096, "64", NULL, NULL, NULL, 0, "engine",
     "sequences decoded together at most"},
    {"max_queued", DSI__OPT_INT, F(max_queued), 0, 1000000, "256", NULL, NULL, NULL, 0, "engine",
     "requests waiting for a slot at most; more: 503"},
    {"prefill_chunk", DSI__OPT_INT, F(prefill_chunk), 1, 65536, "256", NULL, NULL, NULL, 0, "engine",
     "prompt tokens of one sequence per step (chunked prefill)"},
    {"max_batch_tokens", DSI__OPT_INT, F(max_batch_tokens), 1, 1048576, "2048", NULL, NULL, NULL, 0, "engine",
     "tokens in one forward step at most (prefill chunks + decode tokens)"},
    {"max_prompt_tokens", DSI__OPT_INT, F(max_prompt_tokens), 0, 16777216, "0", NULL, NULL, NULL, 0, "engine",
     "longest prompt in tokens; 0: limited by the model context"},
    {"max_total_tokens", DSI__OPT_INT, F(max_total_tokens), 0, 16777216, "0", NULL, NULL, NULL, 0, "engine",
     "prompt + completion tokens of one sequence at most; 0: the model context"},
    {"queue_timeout_ms", DSI__OPT_INT, F(queue_timeout_ms), 1, 3600000, "30000", NULL, NULL, NULL, 0,
     "engine", "milliseconds a request may wait in the queue; then 503"},
    {"request_timeout_ms", DSI__OPT_INT, F(request_timeout_ms), 1, 86400000, "300000", NULL, NULL, NULL, 0,
     "engine", "milliseconds a request may run in total"},
    {"default_max_tokens", DSI__OPT_INT, F(default_max_tokens), 1, 16777216, "256", NULL, NULL, NULL, 0,
     "engine", "completion tokens when a request gives no max_tokens"},
    {"prefix_cache", DSI__OPT_BOOL, F(prefix_cache), 0, 0, "true", NULL, NULL, NULL, 0, "engine",
     "reuse the KV cache of prompt prefixes computed before (docs/operating.md)"},
    {"prefix_cache_scope", DSI__OPT_ENUM, F(prefix_cache_scope), 0, 0, "key", NULL, "key|global", NULL, 0,
     "engine", "who shares cached prefixes: key (each key or keys-file cache_group alone) or global "
     "(everyone; see docs/security.md)"},

    {"state_dir", DSI__OPT_PATH, F(state_dir), 0, 0, "/var/lib/dsinfer", NULL, NULL, NULL, 0, "service",
     "writable directory for the self-signed certificate and other state"},
    {"log_level", DSI__OPT_ENUM, F(log_level), 0, 0, "info", NULL, "debug|info|warn|error", NULL,
     DSI__OPT_RELOAD, "service", "least severe log level written to stderr"},
    {"drain_timeout_s", DSI__OPT_INT, F(drain_timeout_s), 0, 3600, "30", NULL, NULL, NULL, 0, "service",
     "on SIGTERM, seconds running requests may take to finish before exit"},
    {"drain_grace_ms", DSI__OPT_INT, F(drain_grace_ms), 0, 300000, "0", NULL, NULL, NULL, 0, "service",
     "on SIGTERM, milliseconds /health/ready is 503 while requests are still served, before the drain; "
     "longer than the balancer's detection time (docs/operating.md)"},
};
/* clang-format on */

#define N_OPTS (sizeof opts / sizeof opts[0])

const struct dsi__opt *dsi__config_opts(size_t *n) {
    *n = N_OPTS;
    return opts;
}

/* Variables a path option may name as ${VAR}: the directories systemd hands a service. */
static const char *const path_vars[] = {"CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "LOGS_DIRECTORY",
                                        "RUNTIME_DIRECTORY"};

static int apply_text(struct dsi_config *c, const struct dsi__opt *o, const char *text, char **err);
static int apply_json(struct dsi_config *c, const struct dsi__opt *o, const cJSON *item, char **err);
static int store_str(struct dsi_config *c, const struct dsi__opt *o, const char *s, char **err);
static int expand_path(const struct dsi__opt *o, const char *text, char **out, char **err);

static char **str_field(struct dsi_config *c, const struct dsi__opt *o) {
    return (char **)((char *)c + o->off);
}
static char *const *cstr_field(const struct dsi_config *c, const struct dsi__opt *o) {
    return (char *const *)((const char *)c + o->off);
}
static bool is_string_type(enum dsi__opt_type t) {
    return t == DSI__OPT_STR || t == DSI__OPT_PATH || t == DSI__OPT_ENUM || t == DSI__OPT_JSON;
}

const struct dsi__opt *dsi__config_find_opt(const char *name) {
    for (size_t i = 0; i < N_OPTS; i++)
        if (strcmp(opts[i].name, name) == 0) return &opts[i];
    return NULL;
}

/* Applies the table's defaults, then (example) its example values, to a zeroed c. */
static int init_from_table(struct dsi_config *c, bool example) {
    if (!c) return DSI_EINVAL;
    memset(c, 0, sizeof *c);
    for (int pass = 0; pass < (example ? 2 : 1); pass++)
        for (size_t i = 0; i < N_OPTS; i++) {
            const char *text = pass ? opts[i].example : opts[i].def;
            char *err = NULL;
            int rc = text ? apply_text(c, &opts[i], text, &err) : 0;
            free(err); /* table values are tested to be valid; only ENOMEM can happen here */
            if (rc < 0) {
                dsi_config_free(c);
                return rc;
            }
        }
    return 0;
}

int dsi_config_init(struct dsi_config *c) {
    return init_from_table(c, false);
}
int dsi_config_init_example(struct dsi_config *c) {
    return init_from_table(c, true);
}

void dsi_config_free(struct dsi_config *c) {
    if (!c) return;
    for (size_t i = 0; i < N_OPTS; i++) {
        if (!is_string_type(opts[i].type)) continue;
        char **p = str_field(c, &opts[i]);
        free(*p);
        *p = NULL;
    }
}

/* Parses a decimal integer with an optional binary suffix (K, KiB, M, MiB, G, GiB)
 * for DSI__OPT_SIZE. Returns false when text is not entirely such a number. */
static bool parse_integer(const char *text, bool allow_suffix, double *out) {
    if (!text || !*text || isspace((unsigned char)*text)) return false;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    if (end == text || errno == ERANGE) return false;
    double mult = 1;
    if (*end && allow_suffix) {
        static const struct {
            const char *s;
            double m;
        } sfx[] = {{"K", 1024.0}, {"KiB", 1024.0},   {"M", MIB},
                   {"MiB", MIB},  {"G", 1024 * MIB}, {"GiB", 1024 * MIB}};
        bool found = false;
        for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++)
            if (strcmp(end, sfx[i].s) == 0) {
                mult = sfx[i].m;
                found = true;
            }
        if (!found) return false;
    } else if (*end) {
        return false;
    }
    *out = (double)v * mult;
    return true;
}

static bool parse_bool(const char *text, bool *out) {
    static const char *const yes[] = {"true", "1", "yes", "on"}, *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(text, yes[i]) == 0) return *out = true, true;
        if (strcmp(text, no[i]) == 0) return *out = false, true;
    }
    return false;
}

static int range_error(const struct dsi__opt *o, const char *shown, char **err) {
    if (o->type == DSI__OPT_DOUBLE)
        return dsi_seterr(err, DSI_EINVAL, "config: %s = %s is out of range [%g, %g]", o->name, shown, o->min,
                          o->max);
    return dsi_seterr(err, DSI_EINVAL, "config: %s = %s is out of range [%.0f, %.0f]", o->name, shown, o->min,
                      o->max);
}

/* Stores a number already known to be integral or finite into its field after the range check. */
static int store_number(struct dsi_config *c, const struct dsi__opt *o, double v, const char *shown,
                        char **err) {
    if (!(v >= o->min && v <= o->max)) return range_error(o, shown, err);
    char *p = (char *)c + o->off;
    if (o->type == DSI__OPT_INT)
        *(int *)p = (int)v;
    else if (o->type == DSI__OPT_SIZE)
        *(size_t *)p = (size_t)v;
    else if (o->type == DSI__OPT_DOUBLE)
        *(double *)p = v;
    else
        return DSI_EINTERNAL;
    return 0;
}

/* Sets one option from its text form: the path of defaults, examples and the command line. */
static int apply_text(struct dsi_config *c, const struct dsi__opt *o, const char *text, char **err) {
    if (!text) return dsi_seterr(err, DSI_EINVAL, "config: %s needs a value", o->name);
    switch (o->type) {
    case DSI__OPT_BOOL: {
        bool b;
        if (!parse_bool(text, &b))
            return dsi_seterr(err, DSI_EINVAL, "config: %s = \"%s\" is not a boolean (true or false)",
                              o->name, text);
        *(bool *)((char *)c + o->off) = b;
        return 0;
    }
    case DSI__OPT_INT:
    case DSI__OPT_SIZE: {
        double v;
        if (!parse_integer(text, o->type == DSI__OPT_SIZE, &v))
            return dsi_seterr(err, DSI_EINVAL, "config: %s = \"%s\" is not an integer%s", o->name, text,
                              o->type == DSI__OPT_SIZE ? " (optionally with K, M or G)" : "");
        if (o->check) {
            int rc = o->check(o, text, err);
            if (rc < 0) return rc;
        }
        return store_number(c, o, v, text, err);
    }
    case DSI__OPT_DOUBLE: {
        errno = 0;
        char *end = NULL;
        double v = strtod(text, &end);
        if (!*text || end == text || *end || errno == ERANGE || !isfinite(v))
            return dsi_seterr(err, DSI_EINVAL, "config: %s = \"%s\" is not a number", o->name, text);
        return store_number(c, o, v, text, err);
    }
    case DSI__OPT_JSON: {
        if (!*text) return store_str(c, o, "", err);
        cJSON *j = cJSON_Parse(text);
        if (!j) return dsi_seterr(err, DSI_EINVAL, "config: %s = %s is not valid JSON", o->name, text);
        int rc = apply_json(c, o, j, err);
        cJSON_Delete(j);
        return rc;
    }
    case DSI__OPT_ENUM: {
        size_t n = strlen(text);
        for (const char *p = o->choices; *p;) {
            const char *bar = strchr(p, '|');
            size_t len = bar ? (size_t)(bar - p) : strlen(p);
            if (len == n && strncmp(p, text, n) == 0) return store_str(c, o, text, err);
            p += len + (bar ? 1 : 0);
        }
        return dsi_seterr(err, DSI_EINVAL, "config: %s = \"%s\" is not one of %s", o->name, text, o->choices);
    }
    case DSI__OPT_PATH: {
        char *exp = NULL;
        int rc = expand_path(o, text, &exp, err);
        if (rc < 0) return rc;
        rc = store_str(c, o, exp, err);
        free(exp);
        return rc;
    }
    case DSI__OPT_STR:
        if (o->check) {
            int rc = o->check(o, text, err);
            if (rc < 0) return rc;
        }
        return store_str(c, o, text, err);
    }
    return DSI_EINTERNAL;
}

static int store_str(struct dsi_config *c, const struct dsi__opt *o, const char *s, char **err) {
    if (strlen(s) > 4096 && o->type != DSI__OPT_JSON)
        return dsi_seterr(err, DSI_EINVAL, "config: %s is longer than 4096 bytes", o->name);
    char *dup = strdup(s);
    if (!dup) return dsi_seterr(err, DSI_ENOMEM, "config: out of memory");
    char **p = str_field(c, o);
    free(*p);
    *p = dup;
    return 0;
}

/* Replaces ${VAR} (only the systemd directory variables) in a path option. An unset or
 * unknown variable is an error, so that a key path never silently becomes "/tls.key". */
static int expand_path(const struct dsi__opt *o, const char *text, char **out, char **err) {
    enum { MAX_PATH_BYTES = 4096 }; /* store_str's limit too */
    char buf[MAX_PATH_BYTES + 1];
    size_t len = 0;
    for (const char *p = text; *p;) {
        const char *add = p;
        size_t add_len = 1;
        if (p[0] == '$' && p[1] == '{') {
            const char *close = strchr(p + 2, '}'), *name = NULL;
            for (size_t i = 0; close && i < sizeof path_vars / sizeof path_vars[0]; i++)
                if (strlen(path_vars[i]) == (size_t)(close - p - 2) &&
                    strncmp(path_vars[i], p + 2, (size_t)(close - p - 2)) == 0)
                    name = path_vars[i];
            if (!name)
                return dsi_seterr(err, DSI_EINVAL,
                                  "config: %s = \"%s\": only ${CREDENTIALS_DIRECTORY}, ${STATE_DIRECTORY}, "
                                  "${LOGS_DIRECTORY} and ${RUNTIME_DIRECTORY} are expanded",
                                  o->name, text);
            add = getenv(name);
            if (!add || !*add)
                return dsi_seterr(err, DSI_EINVAL, "config: %s = \"%s\": $%s is not set", o->name, text,
                                  name);
            add_len = strlen(add);
            p = close + 1;
        } else {
            p++;
        }
        if (add_len > MAX_PATH_BYTES - len)
            return dsi_seterr(err, DSI_EINVAL, "config: %s is longer than %d bytes", o->name, MAX_PATH_BYTES);
        memcpy(buf + len, add, add_len);
        len += add_len;
    }
    buf[len] = '\0';
    *out = strdup(buf);
    return *out ? 0 : dsi_seterr(err, DSI_ENOMEM, "config: out of memory");
}

/* Short text of a JSON value for error messages (bounded, so a huge value cannot flood a log). */
static void shown_json(const cJSON *item, char *buf, size_t n) {
    char *s = cJSON_PrintUnformatted(item);
    snprintf(buf, n, "%s", s ? s : "?");
    if (s && strlen(s) >= n && n > 4) memcpy(buf + n - 4, "...", 4);
    free(s);
}

/* Sets one option from a JSON value of the file: strict JSON types, same checks as text. */
static int apply_json(struct dsi_config *c, const struct dsi__opt *o, const cJSON *item, char **err) {
    char shown[128];
    shown_json(item, shown, sizeof shown);
    switch (o->type) {
    case DSI__OPT_BOOL:
        if (!cJSON_IsBool(item))
            return dsi_seterr(err, DSI_EINVAL, "config: %s = %s is not a boolean (true or false)", o->name,
                              shown);
        *(bool *)((char *)c + o->off) = cJSON_IsTrue(item);
        return 0;
    case DSI__OPT_INT:
    case DSI__OPT_SIZE: {
        if (o->type == DSI__OPT_SIZE && cJSON_IsString(item)) return apply_text(c, o, item->valuestring, err);
        double v = cJSON_IsNumber(item) ? item->valuedouble : NAN;
        if (!isfinite(v) || v != floor(v))
            return dsi_seterr(err, DSI_EINVAL, "config: %s = %s is not an integer", o->name, shown);
        if (o->check) {
            char text[64];
            snprintf(text, sizeof text, "%.0f", fabs(v) < 1e18 ? v : 0);
            int rc = o->check(o, text, err);
            if (rc < 0) return rc;
        }
        return store_number(c, o, v, shown, err);
    }
    case DSI__OPT_DOUBLE:
        if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble))
            return dsi_seterr(err, DSI_EINVAL, "config: %s = %s is not a number", o->name, shown);
        return store_number(c, o, item->valuedouble, shown, err);
    case DSI__OPT_JSON: {
        if (cJSON_IsString(item) && item->valuestring[0] == '\0') return store_str(c, o, "", err);
        /* {} means "the defaults" for every JSON option (it is how an empty one prints) */
        if (cJSON_IsObject(item) && !item->child) return store_str(c, o, "", err);
        if (!cJSON_IsObject(item) && !(cJSON_IsArray(item) && o->check == check_names))
            return dsi_seterr(err, DSI_EINVAL, "config: %s = %s is not a JSON %s", o->name, shown,
                              o->check == check_names ? "array" : "object");
        char *text = cJSON_PrintUnformatted(item);
        if (!text) return dsi_seterr(err, DSI_ENOMEM, "config: out of memory");
        int rc = o->check ? o->check(o, text, err) : 0;
        /* {} means "the defaults", the same as "", so consumers have one case to handle */
        if (rc == 0) rc = store_str(c, o, item->child ? text : "", err);
        free(text);
        return rc;
    }
    case DSI__OPT_STR:
    case DSI__OPT_PATH:
    case DSI__OPT_ENUM:
        if (!cJSON_IsString(item))
            return dsi_seterr(err, DSI_EINVAL, "config: %s = %s is not a string", o->name, shown);
        return apply_text(c, o, item->valuestring, err);
    }
    return DSI_EINTERNAL;
}

int dsi_config_set(struct dsi_config *c, const char *name, const char *value, char **err) {
    if (!c || !name) return dsi_seterr(err, DSI_EINVAL, "config: no option name");
    char key[64];
    size_t n = strlen(name);
    if (n >= sizeof key) return dsi_seterr(err, DSI_EINVAL, "config: unknown option \"%.64s...\"", name);
    for (size_t i = 0; i <= n; i++)
        key[i] = name[i] == '-' ? '_' : name[i];
    const struct dsi__opt *o = dsi__config_find_opt(key);
    if (!o)
        return dsi_seterr(err, DSI_EINVAL, "config: unknown option \"%s\" (see dsinfer serve --help)", name);
    if (!value) return dsi_seterr(err, DSI_EINVAL, "config: %s needs a value", o->name);
    struct dsi_config tmp;
    if (dsi_config_copy(&tmp, c) < 0) return dsi_seterr(err, DSI_ENOMEM, "config: out of memory");
    int rc = apply_text(&tmp, o, value, err);
    if (rc < 0) {
        dsi_config_free(&tmp);
        return rc;
    }
    dsi_config_free(c);
    *c = tmp;
    return 0;
}

int dsi_config_load_json(struct dsi_config *c, const char *json, size_t len, char **err) {
    if (!c || (!json && len)) return dsi_seterr(err, DSI_EINVAL, "config: no input");
    const char *src = json ? json : "", *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(src, len, &end, 0);
    size_t off = (end && end >= src && end <= src + len) ? (size_t)(end - src) : 0;
    /* cJSON stops after the first value; anything but whitespace after it is an error */
    while (root && off < len && (src[off] == ' ' || src[off] == '\t' || src[off] == '\n' || src[off] == '\r'))
        off++;
    if (!root || off < len) {
        cJSON_Delete(root);
        return dsi_seterr(err, DSI_EINVAL, "config: malformed JSON near byte %zu", off);
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return dsi_seterr(err, DSI_EINVAL, "config: the top level must be a JSON object");
    }
    struct dsi_config tmp;
    if (dsi_config_copy(&tmp, c) < 0) {
        cJSON_Delete(root);
        return dsi_seterr(err, DSI_ENOMEM, "config: out of memory");
    }
    bool seen[N_OPTS] = {false};
    int rc = 0;
    for (const cJSON *it = root->child; it && rc == 0; it = it->next) {
        const struct dsi__opt *o = it->string ? dsi__config_find_opt(it->string) : NULL;
        if (!o) {
            char shown[128];
            shown_json(it, shown, sizeof shown);
            rc = dsi_seterr(err, DSI_EINVAL, "config: unknown key \"%.64s\" (= %s)",
                            it->string ? it->string : "", shown);
            break;
        }
        size_t idx = (size_t)(o - opts);
        if (seen[idx]) {
            rc = dsi_seterr(err, DSI_EINVAL, "config: key \"%s\" appears twice", o->name);
            break;
        }
        seen[idx] = true;
        rc = apply_json(&tmp, o, it, err);
    }
    cJSON_Delete(root);
    if (rc < 0) {
        dsi_config_free(&tmp);
        return rc;
    }
    dsi_config_free(c);
    *c = tmp;
    return 0;
}

int dsi_config_load_file(struct dsi_config *c, const char *path, char **err) {
    if (!c || !path) return dsi_seterr(err, DSI_EINVAL, "config: no file name");
    FILE *f = fopen(path, "rb");
    if (!f)
        return dsi_seterr(err, errno == ENOENT ? DSI_ENOENT : DSI_EIO, "config: cannot open %s: %s", path,
                          strerror(errno));
    /* A config file is small; a cap keeps a wrong path (a model file?) from being slurped. */
    enum { MAX_CONFIG_BYTES = 1 << 20 };
    char *buf = malloc(MAX_CONFIG_BYTES + 1);
    if (!buf) {
        fclose(f);
        return dsi_seterr(err, DSI_ENOMEM, "config: out of memory");
    }
    size_t n = fread(buf, 1, MAX_CONFIG_BYTES + 1, f);
    int rd_err = ferror(f);
    fclose(f);
    int rc;
    if (rd_err)
        rc = dsi_seterr(err, DSI_EIO, "config: cannot read %s", path);
    else if (n > MAX_CONFIG_BYTES)
        rc = dsi_seterr(err, DSI_EINVAL, "config: %s is larger than 1 MiB", path);
    else {
        char *e = NULL;
        rc = dsi_config_load_json(c, buf, n, &e);
        if (rc < 0) {
            /* prefix the file name: "config: /etc/dsinfer/dsinfer.json: max_running = ..." */
            const char *msg = e && strncmp(e, "config: ", 8) == 0 ? e + 8 : (e ? e : dsi_strerror(rc));
            dsi_seterr(err, rc, "config: %s: %s", path, msg);
        }
        free(e);
    }
    free(buf);
    return rc;
}

int dsi_config_copy(struct dsi_config *dst, const struct dsi_config *src) {
    if (!dst || !src) return DSI_EINVAL;
    *dst = *src;
    for (size_t i = 0; i < N_OPTS; i++)
        if (is_string_type(opts[i].type)) *str_field(dst, &opts[i]) = NULL;
    for (size_t i = 0; i < N_OPTS; i++) {
        if (!is_string_type(opts[i].type)) continue;
        const char *s = *cstr_field(src, &opts[i]);
        char *d = strdup(s ? s : "");
        if (!d) {
            dsi_config_free(dst);
            return DSI_ENOMEM;
        }
        *str_field(dst, &opts[i]) = d;
    }
    return 0;
}

/* ---- per-option checks ---- */

int dsi_config_parse_listen(const char *listen, char *host, size_t host_len, int *port) {
    if (!listen || !host || host_len == 0) return DSI_EINVAL;
    const char *colon, *h = listen;
    size_t hl;
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':') return DSI_EINVAL;
        h = listen + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(listen, ':');
        if (!colon || memchr(listen, ':', (size_t)(colon - listen))) return DSI_EINVAL; /* bare IPv6 */
        hl = (size_t)(colon - listen);
    }
    if (hl == 0 || hl >= host_len) return DSI_EINVAL;
    for (size_t i = 0; i < hl; i++)
        if (!(isalnum((unsigned char)h[i]) || h[i] == '.' || h[i] == '-' || h[i] == ':' || h[i] == '%'))
            return DSI_EINVAL;
    double p;
    if (!parse_integer(colon + 1, false, &p) || p < 1 || p > 65535) return DSI_EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (port) *port = (int)p;
    return 0;
}

bool dsi_config_is_loopback(const char *listen) {
    char host[256];
    if (dsi_config_parse_listen(listen, host, sizeof host, NULL) < 0) return false;
    if (strcmp(host, "localhost") == 0 || strcmp(host, "::1") == 0) return true;
    /* 127.0.0.0/8: "127." followed by three dotted decimals */
    unsigned a, b, cc, d;
    char tail;
    return sscanf(host, "%u.%u.%u.%u%c", &a, &b, &cc, &d, &tail) == 4 && a == 127 && b < 256 && cc < 256 &&
           d < 256;
}

static int check_listen(const struct dsi__opt *o, const char *text, char **err) {
    char host[256];
    if (dsi_config_parse_listen(text, host, sizeof host, NULL) < 0)
        return dsi_seterr(err, DSI_EINVAL,
                          "config: %s = \"%s\" is not host:port (port 1..65535, IPv6 as [::1]:8443)", o->name,
                          text);
    return 0;
}

static int check_sha256(const struct dsi__opt *o, const char *text, char **err) {
    size_t n = strlen(text);
    bool ok = n == 0 || n == 64;
    for (size_t i = 0; ok && i < n; i++)
        ok = isxdigit((unsigned char)text[i]) != 0;
    if (!ok) return dsi_seterr(err, DSI_EINVAL, "config: %s = \"%s\" is not 64 hex digits", o->name, text);
    return 0;
}

static int check_pow2_or_zero(const struct dsi__opt *o, const char *text, char **err) {
    double v;
    if (!parse_integer(text, false, &v) || v < 0 || v > (double)INT_MAX)
        return 0; /* range check reports it */
    unsigned long long u = (unsigned long long)v;
    if (u & (u - 1))
        return dsi_seterr(err, DSI_EINVAL, "config: %s = %s is not a power of two", o->name, text);
    return 0;
}

/* roles: {"name": ["perm", ...], ...} with short names; permissions are checked by auth. */
/* served_model_names: 1 to DSI_MAX_MODEL_NAMES distinct names of 1 to 255 bytes
 * without control characters (the auth module gets them joined by newlines). */
static int check_names(const struct dsi__opt *o, const char *text, char **err) {
    cJSON *j = cJSON_Parse(text);
    int rc = 0, n = cJSON_IsArray(j) ? cJSON_GetArraySize(j) : 0;
    if (n < 1 || n > DSI_MAX_MODEL_NAMES) {
        rc = dsi_seterr(err, DSI_EINVAL, "config: %s must be a JSON array of 1 to %d names", o->name,
                        DSI_MAX_MODEL_NAMES);
        goto out;
    }
    for (const cJSON *a = j->child; a; a = a->next) {
        size_t l = cJSON_IsString(a) ? strlen(a->valuestring) : 0;
        bool ctl = false;
        for (size_t i = 0; i < l; i++)
            ctl |= (unsigned char)a->valuestring[i] < 0x20;
        if (l == 0 || l > 255 || ctl) {
            rc = dsi_seterr(err, DSI_EINVAL, "config: %s: each name must be a string of 1 to 255 bytes without "
                            "control characters", o->name);
            goto out;
        }
        for (const cJSON *b = j->child; b != a; b = b->next)
            if (!strcmp(a->valuestring, b->valuestring)) {
                rc = dsi_seterr(err, DSI_EINVAL, "config: %s lists '%.64s' twice", o->name, a->valuestring);
                goto out;
            }
    }
out:
    cJSON_Delete(j);
    return rc;
}

static int check_roles(const struct dsi__opt *o, const char *text, char **err) {
    cJSON *j = cJSON_Parse(text);
    int rc = 0;
    if (!cJSON_IsObject(j)) {
        rc = dsi_seterr(err, DSI_EINVAL, "config: %s is not a JSON object", o->name);
        goto out;
    }
    for (const cJSON *r = j->child; r; r = r->next) {
        if (!r->string || !*r->string || strlen(r->string) > 64) {
            rc = dsi_seterr(err, DSI_EINVAL, "config: %s: role names are 1..64 characters", o->name);
            goto out;
        }
        if (!cJSON_IsArray(r)) {
            rc = dsi_seterr(err, DSI_EINVAL, "config: %s.%s is not an array of permission names", o->name,
                            r->string);
            goto out;
        }
        for (const cJSON *p = r->child; p; p = p->next)
            if (!cJSON_IsString(p)) {
                rc = dsi_seterr(err, DSI_EINVAL, "config: %s.%s has a permission that is not a string",
                                o->name, r->string);
                goto out;
            }
    }
out:
    cJSON_Delete(j);
    return rc;
}

/* ---- cross-field rules ---- */

int dsi_config_validate(const struct dsi_config *c, char **err) {
    if (!c || !c->listen) return dsi_seterr(err, DSI_EINVAL, "config: not initialized");
    if (c->plain_http && !dsi_config_is_loopback(c->listen))
        return dsi_seterr(err, DSI_EINVAL,
                          "config: plain_http = true needs a loopback listen address (127.0.0.1 or [::1]), "
                          "not \"%s\"; use TLS on other addresses",
                          c->listen);
    if (c->plain_http && (c->tls_require_client_cert || c->tls_client_ca[0]))
        return dsi_seterr(err, DSI_EINVAL,
                          "config: plain_http = true cannot check client certificates "
                          "(tls_client_ca, tls_require_client_cert)");
    if (c->tls_key[0] && !c->tls_cert[0])
        return dsi_seterr(err, DSI_EINVAL, "config: tls_key = \"%s\" is set but tls_cert is not", c->tls_key);
    if (c->tls_cert[0] && !c->tls_key[0])
        return dsi_seterr(err, DSI_EINVAL, "config: tls_cert = \"%s\" is set but tls_key is not",
                          c->tls_cert);
    if (c->tls_require_client_cert && !c->tls_client_ca[0])
        return dsi_seterr(err, DSI_EINVAL, "config: tls_require_client_cert = true needs tls_client_ca");
    if (!c->model_dir[0])
        return dsi_seterr(err, DSI_EINVAL,
                          "config: model_dir is not set (\"model_dir\" in the file or --model DIR)");
    if (!c->state_dir[0]) return dsi_seterr(err, DSI_EINVAL, "config: state_dir is not set");
    if (strcmp(c->backend, "cpu") == 0 && c->tensor_parallel > 1)
        return dsi_seterr(err, DSI_EINVAL, "config: tensor_parallel = %d needs backend = \"cuda\"",
                          c->tensor_parallel);
    if (c->int8_group_size && strcmp(c->dtype, "int8") != 0)
        return dsi_seterr(err, DSI_EINVAL, "config: int8_group_size = %d needs dtype = \"int8\", not \"%s\"",
                          c->int8_group_size, c->dtype);
    if (strcmp(c->int8_mode, "w8a16") != 0 &&
        (strcmp(c->dtype, "int8") != 0 || c->int8_group_size || c->tensor_parallel > 1))
        return dsi_seterr(err, DSI_EINVAL,
                          "config: int8_mode = \"%s\" needs dtype = \"int8\", int8_group_size = 0 and "
                          "tensor_parallel = 1",
                          c->int8_mode);
    if (c->prefill_chunk > c->max_batch_tokens)
        return dsi_seterr(err, DSI_EINVAL, "config: prefill_chunk = %d is larger than max_batch_tokens = %d",
                          c->prefill_chunk, c->max_batch_tokens);
    if (c->max_running > c->max_batch_tokens)
        return dsi_seterr(err, DSI_EINVAL,
                          "config: max_running = %d is larger than max_batch_tokens = %d (one decode token "
                          "per running sequence must fit in a step)",
                          c->max_running, c->max_batch_tokens);
    if (c->max_total_tokens && c->max_prompt_tokens > c->max_total_tokens)
        return dsi_seterr(err, DSI_EINVAL,
                          "config: max_prompt_tokens = %d is larger than max_total_tokens = %d",
                          c->max_prompt_tokens, c->max_total_tokens);
    if (c->max_total_tokens && c->default_max_tokens > c->max_total_tokens)
        return dsi_seterr(err, DSI_EINVAL,
                          "config: default_max_tokens = %d is larger than max_total_tokens = %d",
                          c->default_max_tokens, c->max_total_tokens);
    if (c->queue_timeout_ms > c->request_timeout_ms)
        return dsi_seterr(err, DSI_EINVAL,
                          "config: queue_timeout_ms = %d is larger than request_timeout_ms = %d",
                          c->queue_timeout_ms, c->request_timeout_ms);
    return 0;
}
