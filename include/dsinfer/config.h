/*
 * config.h: the daemon's configuration, declared once.
 *
 * Every option is one row of the table in src/core/config.c (name, type, range,
 * default, help, offsetof). The JSON loader, validation, `dsinfer serve --help`,
 * command-line overrides (--name value, with '_' spelled '-') and
 * config/dsinfer.json are all produced from that table.
 *
 * Owner: src/core/config.c (table, loading, validation) and
 * src/core/config_report.c (reload check, --help, JSON output).
 */
#ifndef DSINFER_CONFIG_H
#define DSINFER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define DSI_MAX_MODEL_NAMES 16 /* served_model_names */

struct dsi_config {
    /* network */
    char *listen;             /* "127.0.0.1:8443" */
    bool plain_http;          /* only allowed on loopback */
    char *tls_cert, *tls_key; /* PEM files; empty: self-signed in state_dir */
    char *tls_client_ca;      /* mTLS: CA that signs client certificates */
    bool tls_require_client_cert;
    int max_connections;
    int client_timeout_s; /* idle / stalled client */
    int max_connections_per_ip;  /* 0: no per-address limit */
    int request_read_timeout_s;  /* whole request (headers + body) must arrive within it */
    int http_threads;            /* HTTP/TLS worker threads; 0: min(CPUs, 8), at least 2 */
    size_t max_body_bytes;
    size_t stream_buffer_bytes;  /* unsent output one stream may hold; past it the stream ends */
    int max_messages;
    int max_n;                   /* choices one generation request may ask for (n), 1..DSI_MAX_N */
    /* auth */
    char *keys_file;
    char *roles; /* JSON object text {"role":["perm",...]}; empty: defaults */
    bool open_health;
    char *audit_log;
    /* model */
    char *model_dir;
    char *model_name;    /* served name; empty: basename of model_dir */
    char *served_model_names; /* JSON array text ["name", ...] (aliases); empty: [model_name] */
    char *dtype;         /* f32 | bf16 | int8 */
    int int8_group_size; /* 0: per channel */
    char *int8_mode;     /* w8a16 | w8a8 */
    char *backend;       /* cpu | cuda */
    char *backend_fallback; /* none | cpu: what to do when backend is unavailable */
    int device;
    int threads; /* 0: all cores */
    bool skip_verify;
    char *manifest_sha256;
    char *model_key_file; /* encrypted at rest; empty: plain */
    char *chat_format; /* auto | deepseek-v3 | deepseek-llm | deepseek-coder | chatml */
    int tensor_parallel;
    /* engine */
    int kv_block_size;
    size_t kv_cache_mib; /* CPU pool */
    char *kv_dtype;      /* auto | f32 | bf16 | int8 (runtime.h dsi_runtime_parse_kv_dtype) */
    double kv_gpu_fraction;
    int max_running;
    int max_queued;
    int prefill_chunk;
    int max_batch_tokens;
    int max_prompt_tokens;
    int max_total_tokens;
    int queue_timeout_ms;
    int request_timeout_ms;
    int default_max_tokens;
    bool prefix_cache;         /* share the K/V of equal prompt prefixes */
    char *prefix_cache_scope;  /* key | global: who shares cached blocks */
    /* service */
    char *state_dir;
    char *log_level;
    int drain_timeout_s;
    int drain_grace_ms; /* SIGTERM: served though not ready this long, then the drain */
};

/* Fills every field with its table default (strings are heap copies, never NULL;
 * "" means "not set"). Returns 0 or DSI_ENOMEM. */
int dsi_config_init(struct dsi_config *c);
/* Defaults plus the table's example values (model_dir, keys_file, TLS, audit_log):
 * the content of config/dsinfer.json. */
int dsi_config_init_example(struct dsi_config *c);
/* Deep copy of an initialized config into dst (uninitialized). 0 or DSI_ENOMEM. */
int dsi_config_copy(struct dsi_config *dst, const struct dsi_config *src);
/* Applies a JSON file over c, all or nothing: on error c is unchanged. Path
 * options expand ${CREDENTIALS_DIRECTORY}, ${STATE_DIRECTORY}, ${LOGS_DIRECTORY}
 * and ${RUNTIME_DIRECTORY} (unset: DSI_EINVAL). "roles" is a JSON object in the
 * file and its compact text in c->roles ({} is stored as ""). Unknown keys, wrong types and out-of-range
 * values are DSI_EINVAL with *err quoting key and value. */
int dsi_config_load_file(struct dsi_config *c, const char *path, char **err);
int dsi_config_load_json(struct dsi_config *c, const char *json, size_t len, char **err);
/* Sets one option from text ("max_running" or "max-running", "64"); same checks as
 * the loader; booleans take true/false/1/0/yes/no/on/off, sizes K/M/G suffixes. */
int dsi_config_set(struct dsi_config *c, const char *name, const char *value, char **err);
/* Cross-field checks (plain_http only on loopback, tls_key needs tls_cert,
 * model_dir set, prefill_chunk <= max_batch_tokens, ...). Call after overrides. */
int dsi_config_validate(const struct dsi_config *c, char **err);
/* For SIGHUP: the number of changed options that only take effect after a
 * restart (listen, model_dir, max_running, ...), with their names joined by ", "
 * in *restart_needed (heap, caller frees; NULL when 0). Negative DSI_E* on error. */
int dsi_config_reload_changes(const struct dsi_config *running, const struct dsi_config *fresh,
                              char **restart_needed);
/* true when SIGHUP applies option `name` (keys_file, roles, open_health, log_level). */
bool dsi_config_is_reloadable(const char *name);
/* Splits "host:port" / "[v6]:port" into host (no brackets) and port. 0 or DSI_EINVAL. */
int dsi_config_parse_listen(const char *listen, char *host, size_t host_len, int *port);
/* true for 127.0.0.0/8, ::1 and localhost. */
bool dsi_config_is_loopback(const char *listen);
void dsi_config_free(struct dsi_config *c);
/* --help text and the documented example, from the table. */
void dsi_config_print_help(FILE *f);
void dsi_config_print_json(FILE *f, const struct dsi_config *c);

#endif
