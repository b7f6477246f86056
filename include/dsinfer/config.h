/*
 * config.h: the daemon's configuration, declared once.
 *
 * Every option is one row of the table in src/core/config.c (name, type, range,
 * default, help, offsetof). The JSON loader, validation, `dsinfer serve --help`,
 * command-line overrides (--name value, with '_' spelled '-') and
 * config/dsinfer.json are all produced from that table.
 *
 * Owner: src/core/config.c.
 */
#ifndef DSINFER_CONFIG_H
#define DSINFER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct dsi_config {
    /* network */
    char *listen;              /* "127.0.0.1:8443" */
    bool plain_http;           /* only allowed on loopback */
    char *tls_cert, *tls_key;  /* PEM files; empty: self-signed in state_dir */
    char *tls_client_ca;       /* mTLS: CA that signs client certificates */
    bool tls_require_client_cert;
    int max_connections;
    int client_timeout_s;      /* idle / stalled client */
    size_t max_body_bytes;
    int max_messages;
    /* auth */
    char *keys_file;
    char *roles;               /* JSON object text {"role":["perm",...]}; empty: defaults */
    bool open_health;
    char *audit_log;
    /* model */
    char *model_dir;
    char *model_name;          /* served name; empty: basename of model_dir */
    char *dtype;               /* f32 | bf16 | int8 */
    int int8_group_size;       /* 0: per channel */
    char *backend;             /* cpu | cuda */
    int device;
    int threads;               /* 0: all cores */
    bool skip_verify;
    char *manifest_sha256;
    char *chat_format;         /* auto | deepseek-v3 | deepseek-llm | deepseek-coder | chatml */
    int tensor_parallel;
    /* engine */
    int kv_block_size;
    size_t kv_cache_mib;       /* CPU pool */
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
    /* service */
    char *state_dir;
    char *log_level;
    int drain_timeout_s;
};

/* Fills every field with its table default (strings are heap copies). */
int dsi_config_init(struct dsi_config *c);
/* Applies a JSON file over c. Unknown keys, wrong types and out-of-range values
 * are DSI_EINVAL with *err quoting key and value. */
int dsi_config_load_file(struct dsi_config *c, const char *path, char **err);
int dsi_config_load_json(struct dsi_config *c, const char *json, size_t len, char **err);
/* Sets one option from text ("max_running", "64"); same checks as the loader. */
int dsi_config_set(struct dsi_config *c, const char *name, const char *value, char **err);
/* Cross-field checks (plain_http only on loopback, ...). */
int dsi_config_validate(const struct dsi_config *c, char **err);
void dsi_config_free(struct dsi_config *c);
/* --help text and the documented example, from the table. */
void dsi_config_print_help(FILE *f);
void dsi_config_print_json(FILE *f, const struct dsi_config *c);

#endif
