/*
 * auth_internal.h: what the files of src/auth share (not a public interface).
 *
 * A keyset is the immutable, parsed form of one keys file + one roles table.
 * dsi_auth holds a refcounted pointer to the current keyset and swaps it on
 * reload; the mutable rate-limit state lives in dsi__limiter objects that are
 * shared (refcounted) between the old and new keyset when a key id survives a
 * reload, so budgets are not reset by SIGHUP.
 */
#ifndef DSI_AUTH_INTERNAL_H
#define DSI_AUTH_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dsinfer/auth.h"
#include "limit.h"

#define DSI__KEYS_MAX_BYTES (16u << 20) /* a keys file larger than this is refused */
#define DSI__KEYS_MAX_ENTRIES 100000
#define DSI__AUTH_HEADER_MAX 1024 /* longer Authorization values are INVALID */
#define DSI__ROLES_MAX 64
#define DSI__NO_EXPIRY INT64_MAX

#define DSI__ROLE_NAME_MAX 31 /* bytes of a role name */

/* Roles table: name -> permission bits. */
struct dsi__role {
    char name[DSI__ROLE_NAME_MAX + 1];
    uint32_t perms;
};
struct dsi__roles {
    struct dsi__role r[DSI__ROLES_MAX];
    size_t n;
};

/* One key or one mTLS client. */
struct dsi__entry {
    char id[32];
    char name[64];
    char role[DSI__ROLE_NAME_MAX + 1];
    uint32_t perms;
    unsigned char sha[32]; /* keys only */
    char cn[256];          /* clients only */
    char **models;         /* allow-list; n_models == 0: all */
    size_t n_models;
    int64_t rpm, tpm;   /* 0: unlimited */
    int max_tokens;     /* 0: no cap */
    int64_t expires_ms; /* DSI__NO_EXPIRY: never */
    bool disabled;
    char cache_group[64]; /* prefix cache group; "": its own (by id) */
    int max_concurrent;   /* 0: no limit */
    int priority;         /* 0: 1 */
    struct dsi__limiter *lim; /* attached by auth.c; NULL in parse-only use */
};

struct dsi__keyset {
    int refs; /* guarded by dsi_auth.state_mu */
    struct dsi__roles roles;
    struct dsi__entry *keys;
    unsigned char (*digests)[32]; /* keys[i].sha, contiguous for the lookup scan */
    size_t n_keys;
    struct dsi__entry *clients;
    size_t n_clients;
};

/* roles.c */
void dsi__roles_default(struct dsi__roles *r);
/* NULL or "" -> defaults. Otherwise a JSON object {"role":["perm",...]} that
 * replaces the defaults entirely. Unknown permission names are errors. */
int dsi__roles_parse(const char *json, struct dsi__roles *out, char **err);
const struct dsi__role *dsi__roles_find(const struct dsi__roles *r, const char *name);
/* A role name or a key id: 1..max_len of A-Z a-z 0-9 _ - . */
bool dsi__auth_name_ok(const char *s, size_t max_len);

/* keyset.c: strict parser of the keys file text (see docs/security.md).
 * roles NULL: any well-formed role name is accepted, with no permissions
 * (for `keys list/revoke`, which may run without the config's roles). */
int dsi__keyset_parse(const char *text, size_t len, const struct dsi__roles *roles, struct dsi__keyset **out,
                      char **err);
/* Reads path (refusing unsafe modes and oversize files) and parses it. */
int dsi__keyset_load(const char *path, const struct dsi__roles *roles, struct dsi__keyset **out, char **err);
/* Reads the whole file into a NUL-terminated heap buffer after the mode check. */
int dsi__keys_read_file(const char *path, char **text, size_t *len, char **err);
/* Frees entries; limiters must have been detached (auth.c does that). */
void dsi__keyset_free(struct dsi__keyset *ks);

/* util.c */
/* Parses RFC 3339 ("2027-01-31T12:00:00Z", "...T12:00:00.5+02:00") to ms
 * since the epoch. Returns 0 or DSI_EINVAL. */
int dsi__rfc3339_parse(const char *s, int64_t *out_ms);
/* Formats ms since the epoch as "2027-01-31T12:00:00.123Z" (with_ms) or
 * "2027-01-31T12:00:00Z"; buf needs 32 bytes. */
void dsi__rfc3339_format(int64_t ms, bool with_ms, char buf[32]);
int64_t dsi__realtime_ms(void);

/* Parses an Authorization value of explicit length (it may hold NULs).
 * Returns DSI_AUTH_OK with the key copied into key_out, DSI_AUTH_MISSING for an
 * absent/blank value, DSI_AUTH_INVALID for anything malformed. */
enum dsi_auth_status dsi__auth_parse_bearer(const char *h, size_t len, char key_out[DSI_KEY_STRLEN + 1]);

#endif
