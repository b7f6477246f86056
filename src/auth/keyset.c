/*
 * keyset.c: strict parser of the keys file.
 *
 *   {"version": 1,
 *    "keys": [{"id":"k_0123abcd","name":"alice","role":"user","sha256":"<64 hex>",
 *              "models":[],"rpm":0,"tpm":0,"max_tokens":0,"expires":null,
 *              "disabled":false,"created":"2026-11-28T15:00:00Z","cache_group":"team-a"}, ...],
 *    "clients": [{"cn":"billing-svc","name":"billing","role":"user"}, ...]}
 *
 * Strict on purpose: a typo in a security file ("disable": true) must not be
 * silently ignored, so unknown fields, duplicate fields, wrong types, duplicate
 * ids/digests/CNs, bad hex, bad dates and unknown roles are all errors that
 * name the entry (by index and id) and the field. Required per key: id, name,
 * role, sha256; per client: cn, name, role; everything else has a default.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth_internal.h"
#include "dsinfer/crypto.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "dsinfer/utf8.h"

enum entry_kind { KIND_KEY, KIND_CLIENT };

/* Where a message about one entry points: "keys file: keys[3] (id "k_1"): ". */
struct entry_ctx {
    const char *sect; /* "keys" | "clients" */
    size_t idx;
    char who[80]; /* " (id \"...\")", or "" before the id is known */
    const struct dsi__roles *roles;
    char **err;
};

/* One row per field an entry may carry. A row's parser checks the JSON value
 * and stores it in the entry; it returns 0, BAD_VALUE (the message is then
 * "field 'NAME' " + want), or a DSI_E* code after setting its own message. */
enum { BAD_VALUE = 1 };
enum {
    ON_KEY = 1u << 0,
    ON_CLIENT = 1u << 1,
    REQ_KEY = 1u << 2,    /* a key entry must have it */
    REQ_CLIENT = 1u << 3, /* a client entry must have it */
};
struct field {
    const char *name;
    unsigned flags;
    int (*parse)(const struct field *f, const cJSON *v, const struct entry_ctx *c, struct dsi__entry *e);
    size_t off;       /* offsetof the destination in struct dsi__entry */
    size_t max_len;   /* text fields: most bytes */
    const char *want; /* completes "field 'NAME' ..." on BAD_VALUE */
};

static int parse_entry(const cJSON *obj, enum entry_kind kind, size_t idx, const struct dsi__roles *roles,
                       struct dsi__entry *e, char **err);
static int entry_err(const struct entry_ctx *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int field_id(const struct field *f, const cJSON *v, const struct entry_ctx *c, struct dsi__entry *e);
static int field_text(const struct field *f, const cJSON *v, const struct entry_ctx *c, struct dsi__entry *e);
static int field_role(const struct field *f, const cJSON *v, const struct entry_ctx *c, struct dsi__entry *e);
static int field_sha256(const struct field *f, const cJSON *v, const struct entry_ctx *c,
                        struct dsi__entry *e);
static int field_models(const struct field *f, const cJSON *v, const struct entry_ctx *c,
                        struct dsi__entry *e);
static int field_i64(const struct field *f, const cJSON *v, const struct entry_ctx *c, struct dsi__entry *e);
static int field_int(const struct field *f, const cJSON *v, const struct entry_ctx *c, struct dsi__entry *e);
static int field_time(const struct field *f, const cJSON *v, const struct entry_ctx *c, struct dsi__entry *e);
static int field_bool(const struct field *f, const cJSON *v, const struct entry_ctx *c, struct dsi__entry *e);
static bool plain_text(const char *s, size_t max_len, bool allow_comma);
static int get_int(const cJSON *v, int64_t max, int64_t *out);
static void entry_free(struct dsi__entry *e);
static int check_duplicates(struct dsi__keyset *ks, char **err);

#define E(field) offsetof(struct dsi__entry, field)
#define INT_WANT "must be an integer 0..2147483647 (0: none)"
#define TIME_WANT "must be an RFC 3339 time like 2027-01-31T00:00:00Z, or null"

/* The keys file schema (docs/security.md). `expires: null` means never;
 * `created` is informational and only checked. */
/* clang-format off */
static const struct field fields[] = {
    {"id", ON_KEY | REQ_KEY, field_id, E(id), sizeof ((struct dsi__entry *)0)->id - 1,
     "must be 1-31 of A-Z a-z 0-9 _ - ."},
    {"cn", ON_CLIENT | REQ_CLIENT, field_text, E(cn), sizeof ((struct dsi__entry *)0)->cn - 1,
     "must be non-empty printable UTF-8 (no control characters), at most 255 bytes"},
    {"name", ON_KEY | ON_CLIENT | REQ_KEY | REQ_CLIENT, field_text, E(name),
     sizeof ((struct dsi__entry *)0)->name - 1,
     "must be non-empty printable UTF-8 (no control characters), at most 63 bytes"},
    {"role", ON_KEY | ON_CLIENT | REQ_KEY | REQ_CLIENT, field_role, E(role), 0, "must be a role name"},
    {"sha256", ON_KEY | REQ_KEY, field_sha256, E(sha), 0, "must be 64 hex digits"},
    {"models", ON_KEY | ON_CLIENT, field_models, 0, 127, "must be a list of model names"},
    {"rpm", ON_KEY | ON_CLIENT, field_i64, E(rpm), 0, INT_WANT},
    {"tpm", ON_KEY | ON_CLIENT, field_i64, E(tpm), 0, INT_WANT},
    {"max_tokens", ON_KEY | ON_CLIENT, field_int, E(max_tokens), 0, INT_WANT},
    {"expires", ON_KEY | ON_CLIENT, field_time, E(expires_ms), 0, TIME_WANT},
    {"created", ON_KEY | ON_CLIENT, field_time, 0, 0, TIME_WANT},
    {"disabled", ON_KEY | ON_CLIENT, field_bool, E(disabled), 0, "must be true or false"},
    {"max_concurrent", ON_KEY | ON_CLIENT, field_int, E(max_concurrent), 0, INT_WANT},
    {"priority", ON_KEY | ON_CLIENT, field_int, E(priority), 100, "must be an integer 0..100 (0: 1)"},
    {"cache_group", ON_KEY | ON_CLIENT, field_id, E(cache_group), sizeof ((struct dsi__entry *)0)->cache_group - 1,
     "must be 1-63 of A-Z a-z 0-9 _ - ."},
};
/* clang-format on */
#define N_FIELDS (sizeof fields / sizeof fields[0])
_Static_assert(N_FIELDS <= 32, "seen-field bit mask");

/* Printable UTF-8 (dsi_utf8_printable): names, model names and CNs end up in
 * logs, audit lines, keys.json and Prometheus labels, where invalid UTF-8 breaks
 * the JSON and the exposition format and control bytes reach terminals. */
static bool plain_text(const char *s, size_t max_len, bool allow_comma) {
    size_t n = strlen(s);
    if (n == 0 || n > max_len || !dsi_utf8_printable(s, n)) return false;
    return allow_comma || !strchr(s, ',');
}


static int get_int(const cJSON *v, int64_t max, int64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= (double)max) || d != (double)(int64_t)d) return -1;
    *out = (int64_t)d;
    return 0;
}

static int entry_err(const struct entry_ctx *c, int code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return dsi_seterr(c->err, code, "keys file: %s[%zu]%s: %s", c->sect, c->idx, c->who, msg);
}

static int field_id(const struct field *f, const cJSON *v, const struct entry_ctx *c, struct dsi__entry *e) {
    if (!cJSON_IsString(v) || !dsi__auth_name_ok(v->valuestring, f->max_len)) return BAD_VALUE;
    memcpy((char *)e + f->off, v->valuestring, strlen(v->valuestring) + 1);
    return 0;
}

static int field_text(const struct field *f, const cJSON *v, const struct entry_ctx *c,
                      struct dsi__entry *e) {
    if (!cJSON_IsString(v) || !plain_text(v->valuestring, f->max_len, true)) return BAD_VALUE;
    memcpy((char *)e + f->off, v->valuestring, strlen(v->valuestring) + 1);
    return 0;
}

static int field_role(const struct field *f, const cJSON *v, const struct entry_ctx *c,
                      struct dsi__entry *e) {
    if (!cJSON_IsString(v) || !dsi__auth_name_ok(v->valuestring, DSI__ROLE_NAME_MAX)) return BAD_VALUE;
    /* roles == NULL: listing/revoking without the config's roles at hand */
    const struct dsi__role *r = c->roles ? dsi__roles_find(c->roles, v->valuestring) : NULL;
    if (c->roles && !r) return entry_err(c, DSI_EINVAL, "field 'role': unknown role '%s'", v->valuestring);
    strcpy(e->role, v->valuestring);
    e->perms = r ? r->perms : 0;
    return 0;
}

static int field_sha256(const struct field *f, const cJSON *v, const struct entry_ctx *c,
                        struct dsi__entry *e) {
    if (!cJSON_IsString(v) || dsi_hex_decode(v->valuestring, strlen(v->valuestring), e->sha, sizeof e->sha))
        return BAD_VALUE;
    return 0;
}

static int field_models(const struct field *f, const cJSON *v, const struct entry_ctx *c,
                        struct dsi__entry *e) {
    if (!cJSON_IsArray(v)) return BAD_VALUE;
    size_t n = (size_t)cJSON_GetArraySize(v);
    if (n > 1024) return entry_err(c, DSI_EINVAL, "field 'models': more than 1024 names");
    if (n && !(e->models = calloc(n, sizeof *e->models)))
        return dsi_seterr(c->err, DSI_ENOMEM, "keys file: out of memory");
    for (const cJSON *m = v->child; m; m = m->next) {
        if (!cJSON_IsString(m) || !plain_text(m->valuestring, f->max_len, false))
            return entry_err(c, DSI_EINVAL,
                             "field 'models': each name must be non-empty printable UTF-8 without "
                             "commas or control characters, at most 127 bytes");
        if (!(e->models[e->n_models] = strdup(m->valuestring)))
            return dsi_seterr(c->err, DSI_ENOMEM, "keys file: out of memory");
        e->n_models++;
    }
    return 0;
}

static int field_i64(const struct field *f, const cJSON *v, const struct entry_ctx *c, struct dsi__entry *e) {
    int64_t x;
    if (get_int(v, INT32_MAX, &x)) return BAD_VALUE;
    memcpy((char *)e + f->off, &x, sizeof x);
    return 0;
}

static int field_int(const struct field *f, const cJSON *v, const struct entry_ctx *c, struct dsi__entry *e) {
    int64_t x;
    /* max_len, when set, is the largest value (priority) */
    if (get_int(v, f->max_len ? (int64_t)f->max_len : INT32_MAX, &x)) return BAD_VALUE;
    int i = (int)x;
    memcpy((char *)e + f->off, &i, sizeof i);
    return 0;
}

/* RFC 3339 or null; stored as ms since the epoch when the row has a field. */
static int field_time(const struct field *f, const cJSON *v, const struct entry_ctx *c,
                      struct dsi__entry *e) {
    int64_t ms;
    if (cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v) || dsi__rfc3339_parse(v->valuestring, &ms)) return BAD_VALUE;
    if (f->off) memcpy((char *)e + f->off, &ms, sizeof ms);
    return 0;
}

static int field_bool(const struct field *f, const cJSON *v, const struct entry_ctx *c,
                      struct dsi__entry *e) {
    if (!cJSON_IsBool(v)) return BAD_VALUE;
    e->disabled = cJSON_IsTrue(v);
    return 0;
}

/* Fills *e from one object of "keys" or "clients": every field through its
 * row, each at most once, unknown fields and missing required ones refused.
 * On error *e holds nothing to free. */
static int parse_entry(const cJSON *obj, enum entry_kind kind, size_t idx, const struct dsi__roles *roles,
                       struct dsi__entry *e, char **err) {
    struct entry_ctx c = {
        .sect = kind == KIND_KEY ? "keys" : "clients", .idx = idx, .roles = roles, .err = err};
    const char *id_name = kind == KIND_KEY ? "id" : "cn";
    unsigned on = kind == KIND_KEY ? ON_KEY : ON_CLIENT, req = kind == KIND_KEY ? REQ_KEY : REQ_CLIENT;
    uint32_t seen = 0;
    int rc = 0;
    memset(e, 0, sizeof *e);
    e->expires_ms = DSI__NO_EXPIRY;
    /* The entry's id (or CN) is used in messages as soon as it is known. */
    const cJSON *idv = cJSON_GetObjectItemCaseSensitive(obj, id_name);
    if (cJSON_IsString(idv)) snprintf(c.who, sizeof c.who, " (%s \"%.40s\")", id_name, idv->valuestring);
    if (!cJSON_IsObject(obj))
        return dsi_seterr(err, DSI_EINVAL, "keys file: %s[%zu]: must be an object", c.sect, idx);
    for (const cJSON *v = obj->child; v; v = v->next) {
        const char *k = v->string ? v->string : "";
        size_t i = 0;
        while (i < N_FIELDS && (!(fields[i].flags & on) || strcmp(fields[i].name, k)))
            i++;
        if (i < N_FIELDS && (seen & 1u << i)) {
            rc = entry_err(&c, DSI_EINVAL, "field '%.40s' appears twice", k);
            goto fail;
        }
        if (i == N_FIELDS) {
            rc = entry_err(&c, DSI_EINVAL, "unknown field '%.40s'", k);
            goto fail;
        }
        seen |= 1u << i;
        if ((rc = fields[i].parse(&fields[i], v, &c, e)) == BAD_VALUE)
            rc = entry_err(&c, DSI_EINVAL, "field '%s' %s", k, fields[i].want);
        if (rc) goto fail;
    }
    for (size_t i = 0; i < N_FIELDS; i++)
        if ((fields[i].flags & req) && !(seen & 1u << i)) {
            if (!strcmp(fields[i].name, id_name)) c.who[0] = 0; /* no id to name the entry by */
            rc = entry_err(&c, DSI_EINVAL, "missing field '%s'", fields[i].name);
            goto fail;
        }
    if (kind == KIND_CLIENT) {
        /* A stable id derived from the CN: rate-limit state and audit lines need
         * one, and it must survive reloads. */
        unsigned char d[32];
        char hx[65];
        if (dsi_sha256(e->cn, strlen(e->cn), d)) {
            rc = dsi_seterr(err, DSI_EINTERNAL, "keys file: SHA-256 failed");
            goto fail;
        }
        dsi_hex_encode(d, 8, hx);
        memcpy(e->id, "mtls-", 5);
        memcpy(e->id + 5, hx, 17); /* 16 hex + NUL */
    }
    return 0;
fail:
    entry_free(e);
    return rc;
}

/* Sorting entry pointers by a field, ties by position, finds duplicates in
 * O(n log n): a keys file with 100k keys must not take minutes to load. */
static int cmp_id(const void *x, const void *y) {
    const struct dsi__entry *a = *(const struct dsi__entry *const *)x,
                            *b = *(const struct dsi__entry *const *)y;
    int c = strcmp(a->id, b->id);
    return c ? c : (a > b) - (a < b);
}
static int cmp_sha(const void *x, const void *y) {
    const struct dsi__entry *a = *(const struct dsi__entry *const *)x,
                            *b = *(const struct dsi__entry *const *)y;
    int c = memcmp(a->sha, b->sha, 32);
    return c ? c : (a > b) - (a < b);
}
static int cmp_cn(const void *x, const void *y) {
    const struct dsi__entry *a = *(const struct dsi__entry *const *)x,
                            *b = *(const struct dsi__entry *const *)y;
    int c = strcmp(a->cn, b->cn);
    return c ? c : (a > b) - (a < b);
}

static bool same_id(const struct dsi__entry *a, const struct dsi__entry *b) {
    return !strcmp(a->id, b->id);
}
static bool same_sha(const struct dsi__entry *a, const struct dsi__entry *b) {
    return !memcmp(a->sha, b->sha, 32);
}
static bool same_cn(const struct dsi__entry *a, const struct dsi__entry *b) {
    return !strcmp(a->cn, b->cn);
}

/* Finds the first entry (in file order) that repeats an earlier one; returns
 * its index and the earlier one's in *later / *earlier, or false. */
static bool first_duplicate(const struct dsi__entry **v, const struct dsi__entry *base, size_t n,
                            int (*cmp)(const void *, const void *),
                            bool (*same)(const struct dsi__entry *, const struct dsi__entry *), size_t *later,
                            size_t *earlier) {
    bool found = false;
    qsort(v, n, sizeof *v, cmp);
    for (size_t i = 1; i < n; i++) {
        if (!same(v[i - 1], v[i])) continue;
        size_t l = (size_t)(v[i] - base); /* ties sort by position: v[i] is the later one */
        if (!found || l < *later) {
            *later = l;
            *earlier = (size_t)(v[i - 1] - base);
            found = true;
        }
    }
    return found;
}

static int check_duplicates(struct dsi__keyset *ks, char **err) {
    size_t n = ks->n_keys > ks->n_clients ? ks->n_keys : ks->n_clients, l = 0, e = 0;
    if (n < 2) return 0;
    const struct dsi__entry **v = malloc(n * sizeof *v);
    if (!v) return dsi_seterr(err, DSI_ENOMEM, "keys file: out of memory");
    int rc = 0;
    for (size_t i = 0; i < ks->n_keys; i++)
        v[i] = &ks->keys[i];
    if (first_duplicate(v, ks->keys, ks->n_keys, cmp_id, same_id, &l, &e)) {
        rc = dsi_seterr(err, DSI_EINVAL, "keys file: keys[%zu] (id \"%s\"): id already used by keys[%zu]", l,
                        ks->keys[l].id, e);
        goto done;
    }
    for (size_t i = 0; i < ks->n_keys; i++)
        v[i] = &ks->keys[i];
    if (first_duplicate(v, ks->keys, ks->n_keys, cmp_sha, same_sha, &l, &e)) {
        rc = dsi_seterr(err, DSI_EINVAL,
                        "keys file: keys[%zu] (id \"%s\"): same sha256 as keys[%zu] (id \"%s\")", l,
                        ks->keys[l].id, e, ks->keys[e].id);
        goto done;
    }
    for (size_t i = 0; i < ks->n_clients; i++)
        v[i] = &ks->clients[i];
    if (first_duplicate(v, ks->clients, ks->n_clients, cmp_cn, same_cn, &l, &e))
        rc = dsi_seterr(err, DSI_EINVAL,
                        "keys file: clients[%zu] (cn \"%.40s\"): cn already used by clients[%zu]", l,
                        ks->clients[l].cn, e);
done:
    free(v);
    return rc;
}

static void entry_free(struct dsi__entry *e) {
    for (size_t i = 0; i < e->n_models; i++)
        free(e->models[i]);
    free(e->models);
    e->models = NULL;
    e->n_models = 0;
    OPENSSL_cleanse(e->sha, sizeof e->sha);
}

void dsi__keyset_free(struct dsi__keyset *ks) {
    if (!ks) return;
    for (size_t i = 0; i < ks->n_keys; i++)
        entry_free(&ks->keys[i]);
    for (size_t i = 0; i < ks->n_clients; i++)
        entry_free(&ks->clients[i]);
    if (ks->digests) OPENSSL_cleanse(ks->digests, ks->n_keys * sizeof *ks->digests);
    free(ks->digests);
    free(ks->keys);
    free(ks->clients);
    free(ks);
}

#define EFAIL(...)                                                                                           \
    do {                                                                                                     \
        rc = dsi_seterr(err, DSI_EINVAL, __VA_ARGS__);                                                       \
        goto fail;                                                                                           \
    } while (0)

int dsi__keyset_parse(const char *text, size_t len, const struct dsi__roles *roles, struct dsi__keyset **out,
                      char **err) {
    int rc = 0;
    cJSON *root = NULL;
    struct dsi__keyset *ks = NULL;
    if (!text || len > DSI__KEYS_MAX_BYTES) EFAIL("keys file: empty or larger than 16 MiB");
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root)
        EFAIL("keys file: not valid JSON (near byte %td)", end && end >= text ? end - text : (ptrdiff_t)0);
    for (const char *p = end; p && p < text + len; p++)
        if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t')
            EFAIL("keys file: text after the JSON object");
    if (!cJSON_IsObject(root)) EFAIL("keys file: top level must be an object {\"version\":1,\"keys\":[...]}");
    const cJSON *ver = NULL, *keys = NULL, *clients = NULL;
    for (const cJSON *f = root->child; f; f = f->next) {
        const char *k = f->string ? f->string : "";
        const cJSON **slot = !strcmp(k, "version")   ? &ver
                             : !strcmp(k, "keys")    ? &keys
                             : !strcmp(k, "clients") ? &clients
                                                     : NULL;
        if (!slot) EFAIL("keys file: unknown top-level field '%.40s'", k);
        if (*slot) EFAIL("keys file: top-level field '%s' appears twice", k);
        *slot = f;
    }
    int64_t v;
    if (!ver || get_int(ver, 1000, &v) || v != 1) EFAIL("keys file: \"version\" must be 1");
    if (!cJSON_IsArray(keys)) EFAIL("keys file: \"keys\" must be a list");
    if (clients && !cJSON_IsArray(clients)) EFAIL("keys file: \"clients\" must be a list");
    size_t nk = (size_t)cJSON_GetArraySize(keys), nc = clients ? (size_t)cJSON_GetArraySize(clients) : 0;
    if (nk > DSI__KEYS_MAX_ENTRIES || nc > DSI__KEYS_MAX_ENTRIES)
        EFAIL("keys file: more than 100000 entries");
    ks = calloc(1, sizeof *ks);
    if (!ks || (nk && !(ks->keys = calloc(nk, sizeof *ks->keys))) ||
        (nc && !(ks->clients = calloc(nc, sizeof *ks->clients)))) {
        rc = dsi_seterr(err, DSI_ENOMEM, "keys file: out of memory");
        goto fail;
    }
    if (roles) ks->roles = *roles;
    for (const cJSON *k = keys->child; k; k = k->next) {
        struct dsi__entry *e = &ks->keys[ks->n_keys];
        if ((rc = parse_entry(k, KIND_KEY, ks->n_keys, roles, e, err))) goto fail;
        ks->n_keys++;
    }
    for (const cJSON *c = clients ? clients->child : NULL; c; c = c->next) {
        struct dsi__entry *e = &ks->clients[ks->n_clients];
        if ((rc = parse_entry(c, KIND_CLIENT, ks->n_clients, roles, e, err))) goto fail;
        ks->n_clients++;
    }
    if ((rc = check_duplicates(ks, err))) goto fail;
    /* The digests side by side: the check path scans all of them for every
     * request, and a 32-byte stride keeps that scan in cache. */
    if (ks->n_keys && !(ks->digests = malloc(ks->n_keys * sizeof *ks->digests))) {
        rc = dsi_seterr(err, DSI_ENOMEM, "keys file: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < ks->n_keys; i++)
        memcpy(ks->digests[i], ks->keys[i].sha, 32);
    cJSON_Delete(root);
    *out = ks;
    return 0;
fail:
    cJSON_Delete(root);
    dsi__keyset_free(ks);
    return rc;
}

int dsi__keys_read_file(const char *path, char **text, size_t *len, char **err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dsi_seterr(err, errno == ENOENT ? DSI_ENOENT : DSI_EIO, "keys file %s: %s", path,
                          strerror(errno));
    struct stat st;
    char *buf = NULL;
    int rc = 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = dsi_seterr(err, DSI_EIO, "keys file %s: not a regular file", path);
        goto done;
    }
    /* Digests of 256-bit keys cannot be brute-forced, but who holds which key,
     * roles and limits are still nobody else's business, and a writable file
     * would let anyone mint an admin key. */
    if (st.st_mode & (S_IWGRP | S_IRWXO)) {
        rc = dsi_seterr(err, DSI_EPERM,
                        "keys file %s: mode %03o lets other users read or write it; run chmod 600 %s", path,
                        (unsigned)(st.st_mode & 0777), path);
        goto done;
    }
    if (st.st_mode & S_IRGRP)
        dsi_log(DSI_LOG_WARN, "auth", "keys file %s is group-readable (mode %03o); 600 is safer", path,
                (unsigned)(st.st_mode & 0777));
    if ((uint64_t)st.st_size > DSI__KEYS_MAX_BYTES) {
        rc = dsi_seterr(err, DSI_EINVAL, "keys file %s: larger than 16 MiB", path);
        goto done;
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    buf = malloc(cap);
    if (!buf) {
        rc = dsi_seterr(err, DSI_ENOMEM, "keys file %s: out of memory", path);
        goto done;
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = dsi_seterr(err, DSI_EIO, "keys file %s: %s", path, strerror(errno));
            goto done;
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n == cap - 1) break; /* file grew while reading: parse what fstat promised */
    }
    buf[n] = 0;
    *text = buf;
    *len = n;
    buf = NULL;
done:
    free(buf);
    close(fd);
    return rc;
}

int dsi__keyset_load(const char *path, const struct dsi__roles *roles, struct dsi__keyset **out, char **err) {
    char *text = NULL;
    size_t len = 0;
    int rc = dsi__keys_read_file(path, &text, &len, err);
    if (rc) return rc;
    char *perr = NULL;
    rc = dsi__keyset_parse(text, len, roles, out, &perr);
    if (rc) {
        dsi_seterr(err, rc, "%s: %s", path, perr ? perr : "invalid");
        free(perr);
    }
    free(text);
    return rc;
}
