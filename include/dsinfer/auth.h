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

enum dsi_perm {
    DSI_PERM_CHAT = 1u << 0,
    DSI_PERM_COMPLETIONS = 1u << 1,
    DSI_PERM_MODELS = 1u << 2,
    DSI_PERM_TOKENIZE = 1u << 3,
    DSI_PERM_METRICS = 1u << 4,
    DSI_PERM_ADMIN = 1u << 5,
};

struct dsi_principal {
    char key_id[32];
    char name[64];
    char role[32];
    uint32_t perms;
    int max_tokens_cap;       /* 0: none */
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
    const char *keys_file;    /* NULL: no keys -> every non-open route is 401 */
    const char *roles_json;   /* NULL: default roles (admin, user, monitor) */
    bool open_health;         /* health routes need no key (default true) */
};
int dsi_auth_create(const struct dsi_auth_opts *o, struct dsi_auth **out, char **err);
/* Re-reads the keys file and roles; on error the old state stays and *err says why. */
int dsi_auth_reload(struct dsi_auth *a, char **err);
void dsi_auth_destroy(struct dsi_auth *a);

/* Checks an Authorization header value for a permission (and model, may be NULL).
 * Counts one request against the key's rpm. retry_after_s set for RATE_LIMITED. */
enum dsi_auth_status dsi_auth_check(struct dsi_auth *a, const char *authorization, uint32_t perm,
                                    const char *model, struct dsi_principal *out, int *retry_after_s);
/* Charges tokens to the key's tpm budget and the principal's chargeback counter. */
void dsi_auth_charge(struct dsi_auth *a, const struct dsi_principal *p, int prompt_tokens,
                     int completion_tokens);
const char *dsi_auth_status_reason(enum dsi_auth_status s);

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
