/*
 * auth.c: the dsi_auth object: key lookup, permission, model and rate checks,
 * token charging, reload, chargeback metrics.
 *
 * Concurrency: the current keyset is immutable and refcounted. A check takes
 * a reference under state_mu (a few instructions), works on the keyset
 * without any lock, and drops the reference; a reload builds a whole new
 * keyset outside the lock and swaps the pointer under it, so a request never
 * sees a half-loaded file and never waits for file I/O. Rate-limit state sits
 * in limiters shared by old and new keyset for the same key id. Chargeback
 * counters live in dsi_auth itself (stats_mu), keyed by principal name, so
 * they survive reloads and key rotation.
 */
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth_internal.h"
#include "dsinfer/alloc.h"
#include "dsinfer/clock.h"
#include "dsinfer/crypto.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"

struct principal_stat {
    char name[64];
    uint64_t requests, prompt_tokens, completion_tokens;
};

#define N_STATUS 6

struct dsi_auth {
    pthread_mutex_t state_mu;
    struct dsi__keyset *cur;      /* guarded by state_mu (pointer and refs) */
    pthread_mutex_t reload_mu;    /* serializes reloads */
    char *keys_file, *roles_json; /* guarded by reload_mu */
    atomic_bool open_health;        /* read by request threads, set by reload */
    int64_t (*clock)(void *); /* test hook; set before concurrent use */
    void *clock_ctx;
    pthread_mutex_t stats_mu;
    struct principal_stat *stats; /* guarded by stats_mu */
    size_t n_stats, cap_stats;    /* guarded by stats_mu */
    atomic_uint_fast64_t denials[N_STATUS];
};

struct id_ref {
    const char *id;
    struct dsi__limiter *lim;
};

static struct dsi__keyset *acquire(struct dsi_auth *a);
static void release(struct dsi_auth *a, struct dsi__keyset *ks);
static int build(struct dsi_auth *a, const char *keys_file, const char *roles_json, struct dsi__keyset **out,
                 char **err);
static int attach_limiters(struct dsi__entry *ne, size_t nn, const struct dsi__entry *oe, size_t on);
/* model: one name, or the served model's names (aliases) joined by '\n'. */
static bool model_listed(const char *model, const char *allowed) {
    size_t n = strlen(allowed);
    for (const char *p = model;;) {
        const char *nl = strchr(p, '\n');
        size_t l = nl ? (size_t)(nl - p) : strlen(p);
        if (l == n && !memcmp(p, allowed, n)) return true;
        if (!nl) return false;
        p = nl + 1;
    }
}

static enum dsi_auth_status authorize(struct dsi_auth *a, const struct dsi__entry *e, uint32_t perm,
                                      const char *model, struct dsi_principal *out, int *retry_after_s);
static enum dsi_auth_status deny(struct dsi_auth *a, enum dsi_auth_status s);
static struct principal_stat *stat_find(struct dsi_auth *a, const char *name);
static int64_t now_wall(const struct dsi_auth *a);
static int64_t now_mono(const struct dsi_auth *a);
static int cmp_id_ref(const void *x, const void *y);

static int64_t now_wall(const struct dsi_auth *a) {
    return a->clock ? a->clock(a->clock_ctx) : dsi__realtime_ms();
}
/* Rate limits use the monotonic clock so an NTP step neither refills nor
 * drains budgets. */
static int64_t now_mono(const struct dsi_auth *a) {
    return a->clock ? a->clock(a->clock_ctx) : dsi_now_ms();
}

static struct dsi__keyset *acquire(struct dsi_auth *a) {
    pthread_mutex_lock(&a->state_mu);
    struct dsi__keyset *ks = a->cur;
    ks->refs++;
    pthread_mutex_unlock(&a->state_mu);
    return ks;
}

static void release(struct dsi_auth *a, struct dsi__keyset *ks) {
    if (!ks) return;
    pthread_mutex_lock(&a->state_mu);
    bool last = --ks->refs == 0;
    pthread_mutex_unlock(&a->state_mu);
    if (!last) return;
    for (size_t i = 0; i < ks->n_keys; i++)
        dsi__limiter_unref(ks->keys[i].lim);
    for (size_t i = 0; i < ks->n_clients; i++)
        dsi__limiter_unref(ks->clients[i].lim);
    dsi__keyset_free(ks);
}

static int cmp_id_ref(const void *x, const void *y) {
    return strcmp(((const struct id_ref *)x)->id, ((const struct id_ref *)y)->id);
}

/* Gives each new entry the old entry's limiter when the id is unchanged (so a
 * reload does not reset budgets), else a fresh one. Sorted lookup: a keys file
 * with 100k keys must not make a reload quadratic. */
static int attach_limiters(struct dsi__entry *ne, size_t nn, const struct dsi__entry *oe, size_t on) {
    struct id_ref *idx = on ? malloc(on * sizeof *idx) : NULL;
    if (on && !idx) return DSI_ENOMEM;
    for (size_t i = 0; i < on; i++)
        idx[i] = (struct id_ref){oe[i].id, oe[i].lim};
    if (on) qsort(idx, on, sizeof *idx, cmp_id_ref);
    int rc = 0;
    for (size_t i = 0; i < nn; i++) {
        struct id_ref want = {ne[i].id, NULL};
        struct id_ref *hit = on ? bsearch(&want, idx, on, sizeof *idx, cmp_id_ref) : NULL;
        if (hit && hit->lim) {
            dsi__limiter_ref(hit->lim);
            ne[i].lim = hit->lim;
        } else if (!(ne[i].lim = dsi__limiter_new())) {
            rc = DSI_ENOMEM;
            break;
        }
    }
    free(idx);
    return rc;
}

/* Builds a complete keyset (roles + keys file); nothing is shared yet. */
static int build(struct dsi_auth *a, const char *keys_file, const char *roles_json, struct dsi__keyset **out,
                 char **err) {
    (void)a;
    struct dsi__roles roles;
    int rc = dsi__roles_parse(roles_json, &roles, err);
    if (rc) return rc;
    struct dsi__keyset *ks = NULL;
    if (keys_file) {
        rc = dsi__keyset_load(keys_file, &roles, &ks, err);
        if (rc) return rc;
    } else {
        ks = calloc(1, sizeof *ks);
        if (!ks) return dsi_seterr(err, DSI_ENOMEM, "auth: out of memory");
        ks->roles = roles;
    }
    *out = ks;
    return 0;
}

/* Installs ks as the current keyset, carrying limiters over from the old one. */
static int install(struct dsi_auth *a, struct dsi__keyset *ks, char **err) {
    struct dsi__keyset *old = a->cur ? acquire(a) : NULL;
    int rc = attach_limiters(ks->keys, ks->n_keys, old ? old->keys : NULL, old ? old->n_keys : 0);
    if (!rc)
        rc = attach_limiters(ks->clients, ks->n_clients, old ? old->clients : NULL, old ? old->n_clients : 0);
    if (rc) {
        ks->refs = 1;
        release(a, ks); /* unrefs whatever was attached */
        release(a, old);
        return dsi_seterr(err, rc, "auth: out of memory");
    }
    ks->refs = 1; /* the reference held by a->cur */
    pthread_mutex_lock(&a->state_mu);
    struct dsi__keyset *prev = a->cur;
    a->cur = ks;
    pthread_mutex_unlock(&a->state_mu);
    release(a, prev);
    release(a, old);
    return 0;
}

int dsi_auth_create(const struct dsi_auth_opts *o, struct dsi_auth **out, char **err) {
    struct dsi_auth *a = calloc(1, sizeof *a);
    if (!a) return dsi_seterr(err, DSI_ENOMEM, "auth: out of memory");
    int rc = DSI_ENOMEM;
    pthread_mutex_init(&a->state_mu, NULL);
    pthread_mutex_init(&a->reload_mu, NULL);
    pthread_mutex_init(&a->stats_mu, NULL);
    atomic_init(&a->open_health, o ? o->open_health : true);
    if (o && o->keys_file && !(a->keys_file = strdup(o->keys_file))) goto fail;
    if (o && o->roles_json && !(a->roles_json = strdup(o->roles_json))) goto fail;
    struct dsi__keyset *ks = NULL;
    if ((rc = build(a, a->keys_file, a->roles_json, &ks, err))) goto fail;
    if ((rc = install(a, ks, err))) goto fail;
    dsi_log(DSI_LOG_INFO, "auth", "loaded %zu keys, %zu mTLS clients, %zu roles%s", a->cur->n_keys,
            a->cur->n_clients, a->cur->roles.n,
            a->keys_file ? "" : " (no keys file: every protected route is 401)");
    *out = a;
    return 0;
fail:
    if (rc == DSI_ENOMEM) dsi_seterr(err, rc, "auth: out of memory");
    dsi_auth_destroy(a);
    return rc;
}

void dsi_auth_destroy(struct dsi_auth *a) {
    if (!a) return;
    release(a, a->cur);
    a->cur = NULL;
    free(a->keys_file);
    free(a->roles_json);
    free(a->stats);
    pthread_mutex_destroy(&a->state_mu);
    pthread_mutex_destroy(&a->reload_mu);
    pthread_mutex_destroy(&a->stats_mu);
    free(a);
}

int dsi_auth_reload_opts(struct dsi_auth *a, const struct dsi_auth_opts *o, char **err) {
    pthread_mutex_lock(&a->reload_mu);
    const char *kf = o ? o->keys_file : a->keys_file;
    const char *rj = o ? o->roles_json : a->roles_json;
    char *kf_copy = NULL, *rj_copy = NULL;
    struct dsi__keyset *ks = NULL;
    char *why = NULL;
    int rc = 0;
    if ((kf && !(kf_copy = strdup(kf))) || (rj && !(rj_copy = strdup(rj)))) {
        rc = dsi_seterr(&why, DSI_ENOMEM, "out of memory");
    } else if (!(rc = build(a, kf_copy, rj_copy, &ks, &why))) {
        rc = install(a, ks, &why);
    }
    if (rc) {
        /* The old keyset keeps serving: a typo during SIGHUP must not lock
         * every client out. */
        dsi_log(DSI_LOG_ERROR, "auth", "reload rejected, keeping the previous keys and roles: %s",
                why ? why : dsi_strerror(rc));
        free(kf_copy);
        free(rj_copy);
    } else {
        free(a->keys_file);
        free(a->roles_json);
        a->keys_file = kf_copy;
        a->roles_json = rj_copy;
        if (o) atomic_store(&a->open_health, o->open_health);
        dsi_log(DSI_LOG_INFO, "auth", "reloaded %zu keys, %zu mTLS clients, %zu roles", ks->n_keys,
                ks->n_clients, ks->roles.n);
    }
    pthread_mutex_unlock(&a->reload_mu);
    if (rc && err && !*err)
        *err = why;
    else
        free(why);
    return rc;
}

int dsi_auth_reload(struct dsi_auth *a, char **err) {
    return dsi_auth_reload_opts(a, NULL, err);
}

bool dsi_auth_health_open(const struct dsi_auth *a) {
    return atomic_load(&a->open_health);
}

void dsi_auth_set_clock(struct dsi_auth *a, int64_t (*now_ms)(void *ctx), void *ctx) {
    a->clock = now_ms;
    a->clock_ctx = ctx;
}

static enum dsi_auth_status deny(struct dsi_auth *a, enum dsi_auth_status s) {
    if ((int)s > 0 && (int)s < N_STATUS) atomic_fetch_add(&a->denials[s], 1);
    return s;
}

/* Caller holds stats_mu. NULL when out of memory. */
static struct principal_stat *stat_find(struct dsi_auth *a, const char *name) {
    for (size_t i = 0; i < a->n_stats; i++)
        if (!strcmp(a->stats[i].name, name)) return &a->stats[i];
    struct principal_stat *grown = dsi_grow(a->stats, a->n_stats, &a->cap_stats, sizeof *grown, 16);
    if (!grown) return NULL;
    a->stats = grown;
    struct principal_stat *s = &a->stats[a->n_stats++];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    return s;
}

static enum dsi_auth_status authorize(struct dsi_auth *a, const struct dsi__entry *e, uint32_t perm,
                                      const char *model, struct dsi_principal *out, int *retry_after_s) {
    /* Filled even for a disabled or expired key so the audit log can say which
     * key was used; the HTTP answer is the same as for an unknown key. */
    if (out) {
        snprintf(out->key_id, sizeof out->key_id, "%s", e->id);
        snprintf(out->name, sizeof out->name, "%s", e->name);
        snprintf(out->role, sizeof out->role, "%s", e->role);
        out->perms = e->perms;
        out->max_tokens_cap = e->max_tokens;
        snprintf(out->cache_group, sizeof out->cache_group, "%s", e->cache_group);
        out->max_concurrent = e->max_concurrent;
        out->priority = e->priority > 0 ? e->priority : 1;
    }
    if (e->disabled || (e->expires_ms != DSI__NO_EXPIRY && now_wall(a) >= e->expires_ms))
        return deny(a, DSI_AUTH_INVALID);
    if ((e->perms & perm) != perm) return deny(a, DSI_AUTH_FORBIDDEN);
    if (model && e->n_models) {
        bool ok = false;
        for (size_t i = 0; i < e->n_models && !ok; i++)
            ok = model_listed(model, e->models[i]);
        if (!ok) return deny(a, DSI_AUTH_MODEL_FORBIDDEN);
    }
    if (!dsi__limiter_take(e->lim, e->rpm, e->tpm, now_mono(a), retry_after_s))
        return deny(a, DSI_AUTH_RATE_LIMITED);
    pthread_mutex_lock(&a->stats_mu);
    struct principal_stat *s = stat_find(a, e->name);
    if (s) s->requests++;
    pthread_mutex_unlock(&a->stats_mu);
    return DSI_AUTH_OK;
}

enum dsi_auth_status dsi_auth_check(struct dsi_auth *a, const char *authorization, uint32_t perm,
                                    const char *model, struct dsi_principal *out, int *retry_after_s) {
    if (out) memset(out, 0, sizeof *out);
    if (retry_after_s) *retry_after_s = 0;
    size_t len = authorization ? strnlen(authorization, DSI__AUTH_HEADER_MAX + 1) : 0;
    char key[DSI_KEY_STRLEN + 1];
    enum dsi_auth_status st = dsi__auth_parse_bearer(authorization, len, key);
    if (st != DSI_AUTH_OK) return deny(a, st);
    unsigned char d[32];
    int hrc = dsi_sha256(key, DSI_KEY_STRLEN, d);
    OPENSSL_cleanse(key, sizeof key);
    if (hrc) return deny(a, DSI_AUTH_INVALID);
    struct dsi__keyset *ks = acquire(a);
    /* Compare against every digest, without an early exit and with a
     * branch-free select, so the time taken says nothing about whether or
     * where a key matched. Digests are unique (the parser rejects duplicates). */
    size_t hit = 0;
    unsigned found = 0;
    for (size_t i = 0; i < ks->n_keys; i++) {
        unsigned eq = (unsigned)(CRYPTO_memcmp(d, ks->digests[i], 32) == 0);
        size_t mask = (size_t)0 - (size_t)eq;
        hit = (hit & ~mask) | (i & mask);
        found |= eq;
    }
    OPENSSL_cleanse(d, sizeof d);
    st = found ? authorize(a, &ks->keys[hit], perm, model, out, retry_after_s) : deny(a, DSI_AUTH_INVALID);
    release(a, ks);
    return st;
}

enum dsi_auth_status dsi_auth_check_client_cert(struct dsi_auth *a, const char *subject_cn, uint32_t perm,
                                                const char *model, struct dsi_principal *out,
                                                int *retry_after_s) {
    if (out) memset(out, 0, sizeof *out);
    if (retry_after_s) *retry_after_s = 0;
    if (!subject_cn || !*subject_cn) return deny(a, DSI_AUTH_MISSING);
    struct dsi__keyset *ks = acquire(a);
    const struct dsi__entry *e = NULL;
    for (size_t i = 0; i < ks->n_clients && !e; i++)
        if (!strcmp(ks->clients[i].cn, subject_cn)) e = &ks->clients[i];
    enum dsi_auth_status st =
        e ? authorize(a, e, perm, model, out, retry_after_s) : deny(a, DSI_AUTH_INVALID);
    release(a, ks);
    return st;
}

/* The entry for a principal's key id in the current keyset (caller holds ks). */
static const struct dsi__entry *entry_by_id(const struct dsi__keyset *ks, const char *key_id) {
    for (size_t i = 0; i < ks->n_keys; i++)
        if (!strcmp(ks->keys[i].id, key_id)) return &ks->keys[i];
    for (size_t i = 0; i < ks->n_clients; i++)
        if (!strcmp(ks->clients[i].id, key_id)) return &ks->clients[i];
    return NULL;
}

enum dsi_auth_status dsi_auth_reserve(struct dsi_auth *a, struct dsi_principal *p, int64_t tokens,
                                      int *retry_after_s) {
    if (retry_after_s) *retry_after_s = 0;
    if (!a || !p || !p->key_id[0]) return DSI_AUTH_OK;
    struct dsi__keyset *ks = acquire(a);
    const struct dsi__entry *e = entry_by_id(ks, p->key_id);
    int64_t got = 0;
    bool ok = !e || dsi__limiter_reserve(e->lim, e->rpm, e->tpm, now_mono(a), tokens, &got, retry_after_s);
    release(a, ks);
    if (!ok) return deny(a, DSI_AUTH_RATE_LIMITED);
    p->tpm_reserved += got;
    return DSI_AUTH_OK;
}

void dsi_auth_charge(struct dsi_auth *a, const struct dsi_principal *p, int prompt_tokens,
                     int completion_tokens) {
    if (!a || !p || !p->key_id[0]) return;
    int64_t pt = prompt_tokens > 0 ? prompt_tokens : 0, ct = completion_tokens > 0 ? completion_tokens : 0;
    struct dsi__keyset *ks = acquire(a);
    const struct dsi__entry *e = entry_by_id(ks, p->key_id);
    /* A key revoked by a reload mid-request has no bucket left to charge; the
     * chargeback counter below still counts its tokens. */
    if (e) dsi__limiter_charge(e->lim, e->rpm, e->tpm, now_mono(a), pt + ct - p->tpm_reserved);
    release(a, ks);
    pthread_mutex_lock(&a->stats_mu);
    struct principal_stat *s = p->name[0] ? stat_find(a, p->name) : NULL;
    if (s) {
        s->prompt_tokens += (uint64_t)pt;
        s->completion_tokens += (uint64_t)ct;
    }
    pthread_mutex_unlock(&a->stats_mu);
}

const char *dsi_auth_status_reason(enum dsi_auth_status s) {
    switch (s) {
    case DSI_AUTH_OK:
        return "ok";
    case DSI_AUTH_MISSING:
        return "missing_credentials";
    case DSI_AUTH_INVALID:
        return "invalid_credentials";
    case DSI_AUTH_FORBIDDEN:
        return "permission_denied";
    case DSI_AUTH_MODEL_FORBIDDEN:
        return "model_not_allowed";
    case DSI_AUTH_RATE_LIMITED:
        return "rate_limited";
    }
    return "unknown";
}

int dsi_auth_http_status(enum dsi_auth_status s) {
    switch (s) {
    case DSI_AUTH_OK:
        return 200;
    case DSI_AUTH_MISSING:
    case DSI_AUTH_INVALID:
        return 401;
    case DSI_AUTH_FORBIDDEN:
    case DSI_AUTH_MODEL_FORBIDDEN:
        return 403;
    case DSI_AUTH_RATE_LIMITED:
        return 429;
    }
    return 500;
}

/* Growing text buffer for the metrics dump. */
struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_label(struct sbuf *b, const char *s);

static void sb_printf(struct sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if (b->p && (size_t)n < b->cap - b->n) {
            b->n += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + (size_t)n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
}

/* Prometheus label value escaping: backslash, double quote, newline. */
static void sb_label(struct sbuf *b, const char *s) {
    for (; *s; s++) {
        if (*s == '\\')
            sb_printf(b, "\\\\");
        else if (*s == '"')
            sb_printf(b, "\\\"");
        else if (*s == '\n')
            sb_printf(b, "\\n");
        else
            sb_printf(b, "%c", *s);
    }
}

int dsi_auth_metrics(struct dsi_auth *a, char **prom_text) {
    struct sbuf b = {0};
    sb_printf(&b, "# HELP dsinfer_principal_tokens_total Tokens processed per principal (chargeback).\n"
                  "# TYPE dsinfer_principal_tokens_total counter\n");
    pthread_mutex_lock(&a->stats_mu);
    for (size_t i = 0; i < a->n_stats; i++)
        for (int k = 0; k < 2; k++) {
            sb_printf(&b, "dsinfer_principal_tokens_total{principal=\"");
            sb_label(&b, a->stats[i].name);
            sb_printf(&b, "\",kind=\"%s\"} %llu\n", k ? "completion" : "prompt",
                      (unsigned long long)(k ? a->stats[i].completion_tokens : a->stats[i].prompt_tokens));
        }
    sb_printf(&b, "# HELP dsinfer_principal_requests_total Authorized requests per principal.\n"
                  "# TYPE dsinfer_principal_requests_total counter\n");
    for (size_t i = 0; i < a->n_stats; i++) {
        sb_printf(&b, "dsinfer_principal_requests_total{principal=\"");
        sb_label(&b, a->stats[i].name);
        sb_printf(&b, "\"} %llu\n", (unsigned long long)a->stats[i].requests);
    }
    pthread_mutex_unlock(&a->stats_mu);
    sb_printf(&b, "# HELP dsinfer_auth_denials_total Requests denied by access control, by reason.\n"
                  "# TYPE dsinfer_auth_denials_total counter\n");
    for (int s = 1; s < N_STATUS; s++)
        sb_printf(&b, "dsinfer_auth_denials_total{reason=\"%s\"} %llu\n",
                  dsi_auth_status_reason((enum dsi_auth_status)s),
                  (unsigned long long)atomic_load(&a->denials[s]));
    if (b.oom) {
        free(b.p);
        return DSI_ENOMEM;
    }
    *prom_text = b.p;
    return 0;
}
