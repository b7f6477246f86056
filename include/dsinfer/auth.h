/*
 * auth.h: API keys, roles and permissions, rate limits and quotas, audit log.
 *
 * Keys are "dsi-" + 64 hex chars (256 random bits); the keys file stores only
 * their SHA-256, and lookups compare digests in constant time.
 *
 * Owner: src/auth.
 */
#ifndef DSINFER_AUTH_H
#define DSINFER_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define DSI_KEY_PREFIX "dsi-"
#define DSI_KEY_STRLEN 68 /* "dsi-" + 64 lowercase hex; buffers need +1 */

enum dsi_perm {
    DSI_PERM_CHAT = 1u << 0,
    DSI_PERM_COMPLETIONS = 1u << 1,
    DSI_PERM_MODELS = 1u << 2,
    DSI_PERM_TOKENIZE = 1u << 3,
    DSI_PERM_METRICS = 1u << 4,
    DSI_PERM_ADMIN = 1u << 5,
};
#define DSI_PERM_ALL 0x3fu

/* "chat" for DSI_PERM_CHAT (one bit); NULL for anything else. Static string. */
const char *dsi_perm_name(uint32_t perm);
/* "chat" -> DSI_PERM_CHAT; returns 0 or DSI_EINVAL. */
int dsi_perm_parse(const char *name, uint32_t *out);

struct dsi_principal {
    char key_id[32];
    char name[64];
    char role[32];
    uint32_t perms;
    int max_tokens_cap; /* 0: none */
    char cache_group[64]; /* keys file cache_group; "": the key is its own prefix cache group */
    int max_concurrent;   /* keys file: generations running or queued at once; 0: no limit */
    int priority;         /* keys file: share of the batch against other keys, 1..100 (default 1) */
    int64_t tpm_reserved; /* set by dsi_auth_reserve, settled by dsi_auth_charge */
};

enum dsi_auth_status {
    DSI_AUTH_OK,
    DSI_AUTH_MISSING,         /* 401 */
    DSI_AUTH_INVALID,         /* 401: unknown, revoked, disabled or expired key */
    DSI_AUTH_FORBIDDEN,       /* 403: lacks permission */
    DSI_AUTH_MODEL_FORBIDDEN, /* 403: model not in its list */
    DSI_AUTH_RATE_LIMITED,    /* 429 */
};

struct dsi_auth;
struct dsi_auth_opts {
    const char *keys_file;  /* NULL: no keys -> every non-open route is 401 */
    const char *roles_json; /* NULL: default roles (admin, user, monitor) */
    bool open_health;       /* health routes need no key (default true) */
};
int dsi_auth_create(const struct dsi_auth_opts *o, struct dsi_auth **out, char **err);
/* Re-reads the keys file and roles; on error the old state stays and *err says why. */
int dsi_auth_reload(struct dsi_auth *a, char **err);
void dsi_auth_destroy(struct dsi_auth *a);

/* Checks an Authorization header value for a permission (and model, may be NULL:
 * one name, or a model's aliases joined by '\n', any of which the key's model
 * list may hold).
 * Counts one request against the key's rpm. retry_after_s set for RATE_LIMITED.
 * Thread-safe. Order: header -> key (constant-time digest compare) -> state
 * (disabled, expired) -> permission -> model -> rpm/tpm token buckets; a
 * request denied before the rate check consumes no budget. `out` is filled
 * from FORBIDDEN onwards (so denials can be audited with the principal); for
 * INVALID it is filled only when a known key was disabled or expired (for the
 * audit log: never put it in the response). Otherwise it is zeroed. */
enum dsi_auth_status dsi_auth_check(struct dsi_auth *a, const char *authorization, uint32_t perm,
                                    const char *model, struct dsi_principal *out, int *retry_after_s);
/* Reserves a generation's worst case (prompt + max_tokens, as clamped) from the
 * key's tpm bucket before it starts, into p->tpm_reserved; RATE_LIMITED (with
 * retry_after_s) when that much is not there. A worst case above the key's
 * whole tpm reserves a full bucket. OK without a tpm limit. Thread-safe. */
enum dsi_auth_status dsi_auth_reserve(struct dsi_auth *a, struct dsi_principal *p, int64_t tokens,
                                      int *retry_after_s);
/* Charges tokens to the key's tpm budget and the principal's chargeback counter.
 * Call once per finished (or failed, cancelled, abandoned) request with the
 * counts from its usage: what it reserved is settled, the unused part refunded.
 * Thread-safe. */
void dsi_auth_charge(struct dsi_auth *a, const struct dsi_principal *p, int prompt_tokens,
                     int completion_tokens);
/* Stable snake_case reason for logs and the audit log ("invalid_key", ...). */
const char *dsi_auth_status_reason(enum dsi_auth_status s);
/* HTTP status for a check result: 200, 401, 403 or 429. */
int dsi_auth_http_status(enum dsi_auth_status s);
/* Whether /health/live and /health/ready need no key (opts->open_health). */
bool dsi_auth_health_open(const struct dsi_auth *a);

/* mTLS: maps a verified client certificate's subject CN to a principal through
 * the "clients" section of the keys file; then the same permission, model and
 * rate checks as dsi_auth_check. NULL or empty CN: MISSING; unknown or disabled
 * CN: INVALID. The TLS layer must have verified the chain before calling. */
enum dsi_auth_status dsi_auth_check_client_cert(struct dsi_auth *a, const char *subject_cn, uint32_t perm,
                                                const char *model, struct dsi_principal *out,
                                                int *retry_after_s);

/* Like dsi_auth_reload, but also replaces the keys file path and roles (for a
 * SIGHUP that re-read the config). Strings are copied. Same all-or-nothing rule. */
int dsi_auth_reload_opts(struct dsi_auth *a, const struct dsi_auth_opts *o, char **err);

/* Prometheus text for /metrics: per-principal token counters for chargeback,
 *   dsinfer_principal_tokens_total{principal="x",kind="prompt|completion"} N
 *   dsinfer_principal_requests_total{principal="x"} N
 *   dsinfer_auth_denials_total{reason="invalid_key"} N
 * with # HELP / # TYPE lines. *prom_text is heap memory the caller frees.
 * Returns 0 or DSI_ENOMEM. */
int dsi_auth_metrics(struct dsi_auth *a, char **prom_text);

/* Test hook: milliseconds since the Unix epoch, used for expiry and rate
 * limits instead of the system clocks. NULL restores the system clocks. Call
 * before the object is shared between threads (the pointer is not locked). */
void dsi_auth_set_clock(struct dsi_auth *a, int64_t (*now_ms)(void *ctx), void *ctx);

/* Keys file management (`dsinfer keys`). Every change rewrites the file
 * atomically (temp file in the same directory, fsync, rename) with mode 0600,
 * under an advisory lock on "<path>.lock". */
struct dsi_key_spec {
    const char *name;       /* principal */
    const char *role;       /* must exist in the roles */
    const char *models;     /* comma-separated allow-list; NULL or "": all */
    int64_t rpm, tpm;       /* 0: unlimited */
    int max_tokens;         /* 0: no cap */
    const char *expires;    /* RFC 3339, or YYYY-MM-DD (valid through that UTC day); NULL: never */
    const char *cache_group; /* prefix cache group shared with other keys; NULL or "": its own */
    int max_concurrent;     /* 0: no limit */
    int priority;           /* 0: the default (1); at most 100 */
    const char *roles_json; /* NULL: default roles */
};
/* Adds a key (creating the file if absent). key_out receives the key, which
 * exists nowhere else afterwards; id_out its public id. */
int dsi_keys_add(const char *path, const struct dsi_key_spec *s, char key_out[DSI_KEY_STRLEN + 1],
                 char id_out[32], char **err);
/* One line per key: id, name, role, status (active|disabled|expired), expires,
 * models, tab-separated. Never prints hashes. */
int dsi_keys_list(const char *path, const char *roles_json, FILE *out, char **err);
/* Sets "disabled": true on key ID. DSI_ENOENT if no such id. */
int dsi_keys_revoke(const char *path, const char *id, const char *roles_json, char **err);

/* Audit log: one JSON line per request and per denial. */
struct dsi_audit;
struct dsi_audit_record {
    const char *request_id, *key_id, *principal, *role, *remote_addr, *route, *model, *denial;
    int status;
    int prompt_tokens, completion_tokens;
    double latency_ms;
};
int dsi_audit_open(const char *path, struct dsi_audit **out, char **err);
int dsi_audit_reopen(struct dsi_audit *a, char **err); /* after log rotation (SIGHUP) */
void dsi_audit_write(struct dsi_audit *a, const struct dsi_audit_record *r);
void dsi_audit_close(struct dsi_audit *a);

#endif
