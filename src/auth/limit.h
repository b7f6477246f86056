/*
 * limit.h: token buckets for per-key rpm/tpm limits (see limit.c for why).
 * Internal to src/auth.
 */
#ifndef DSI_AUTH_LIMIT_H
#define DSI_AUTH_LIMIT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* Shared by every keyset that holds the same key id, so a reload keeps it. */
struct dsi__limiter {
    atomic_int refs;
    pthread_mutex_t mu;
    bool started;               /* guarded by mu */
    int64_t last_ms;            /* guarded by mu */
    int64_t rpm_seen, tpm_seen; /* guarded by mu: rates the levels belong to */
    int64_t req_level;          /* guarded by mu; requests * 60000 */
    int64_t tok_level;          /* guarded by mu; tokens * 60000, may go negative */
};

/* refs = 1; NULL when out of memory. */
struct dsi__limiter *dsi__limiter_new(void);
void dsi__limiter_ref(struct dsi__limiter *l);
void dsi__limiter_unref(struct dsi__limiter *l);
/* Admits one request (taking one rpm token) or returns false with the seconds
 * until it would be admitted (>= 1). rpm/tpm 0: unlimited. */
bool dsi__limiter_take(struct dsi__limiter *l, int64_t rpm, int64_t tpm, int64_t now_ms, int *retry_after_s);
/* Reserves min(tokens, tpm) from the tpm bucket into *reserved, or returns
 * false with the seconds until that much is there (>= 1). *reserved = 0 when
 * tpm is 0 (unlimited). */
bool dsi__limiter_reserve(struct dsi__limiter *l, int64_t rpm, int64_t tpm, int64_t now_ms, int64_t tokens,
                          int64_t *reserved, int *retry_after_s);
/* Takes `tokens` from the tpm bucket (it may go into debt); negative refunds,
 * up to the capacity. */
void dsi__limiter_charge(struct dsi__limiter *l, int64_t rpm, int64_t tpm, int64_t now_ms, int64_t tokens);

#endif
