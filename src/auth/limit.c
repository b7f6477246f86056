/*
 * limit.c: per-key token buckets for requests per minute and tokens per minute.
 *
 * Why a token bucket and not a sliding window: it needs two integers per key
 * instead of a ring of timestamps, allows a burst of up to one minute's budget
 * after an idle minute (which is what "N per minute" means to an operator),
 * and gives an exact Retry-After. Levels are kept scaled by 60000, so a rate
 * of R per minute refills exactly R units per millisecond in integer math.
 *
 * rpm: a request needs one whole token and takes it at check time.
 * tpm: a generation reserves its worst case (prompt + max_tokens) once its
 * prompt is known (dsi__limiter_reserve) and settles with the real count when
 * it ends (dsi__limiter_charge with used - reserved, a refund when negative),
 * so concurrent requests cannot spend more than the bucket holds. A worst case
 * above the whole capacity needs a full bucket and reserves all of it; only
 * such a request can overspend, by at most its own excess, and it leaves the
 * bucket in debt so the key then waits until the debt has refilled. A new
 * request is admitted only while at least one token is available. A rate of 0
 * means unlimited.
 */
#include <stdlib.h>

#include "limit.h"

#define SCALE 60000                       /* ms per minute */
#define MAX_ELAPSED_MS ((int64_t)1 << 31) /* keeps elapsed * rate (< 2^31) below 2^62 */
#define MIN_LEVEL (-((int64_t)1 << 61))

static void refill(struct dsi__limiter *l, int64_t rpm, int64_t tpm, int64_t now_ms);

struct dsi__limiter *dsi__limiter_new(void) {
    struct dsi__limiter *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    if (pthread_mutex_init(&l->mu, NULL) != 0) {
        free(l);
        return NULL;
    }
    atomic_init(&l->refs, 1);
    return l;
}

void dsi__limiter_ref(struct dsi__limiter *l) {
    atomic_fetch_add(&l->refs, 1);
}

void dsi__limiter_unref(struct dsi__limiter *l) {
    if (!l || atomic_fetch_sub(&l->refs, 1) != 1) return;
    pthread_mutex_destroy(&l->mu);
    free(l);
}

/* Caller holds l->mu. A changed rate (reload) restarts that bucket full: the
 * operator raised or lowered the budget on purpose. */
static void refill(struct dsi__limiter *l, int64_t rpm, int64_t tpm, int64_t now_ms) {
    if (!l->started || rpm != l->rpm_seen) l->req_level = rpm * SCALE;
    if (!l->started || tpm != l->tpm_seen) l->tok_level = tpm * SCALE;
    if (!l->started) l->last_ms = now_ms;
    l->started = true;
    l->rpm_seen = rpm;
    l->tpm_seen = tpm;
    int64_t elapsed = now_ms - l->last_ms;
    if (elapsed <= 0) return; /* clock stepped back: no refill, keep last_ms */
    if (elapsed > MAX_ELAPSED_MS) elapsed = MAX_ELAPSED_MS;
    l->last_ms = now_ms;
    if (rpm) {
        l->req_level += elapsed * rpm;
        if (l->req_level > rpm * SCALE) l->req_level = rpm * SCALE;
    }
    if (tpm) {
        l->tok_level += elapsed * tpm;
        if (l->tok_level > tpm * SCALE) l->tok_level = tpm * SCALE;
    }
}

bool dsi__limiter_take(struct dsi__limiter *l, int64_t rpm, int64_t tpm, int64_t now_ms, int *retry_after_s) {
    if (!l || (rpm == 0 && tpm == 0)) return true;
    int64_t wait_ms = 0;
    pthread_mutex_lock(&l->mu);
    refill(l, rpm, tpm, now_ms);
    if (rpm && l->req_level < SCALE) wait_ms = (SCALE - l->req_level + rpm - 1) / rpm;
    if (tpm && l->tok_level < SCALE) {
        int64_t w = (SCALE - l->tok_level + tpm - 1) / tpm;
        if (w > wait_ms) wait_ms = w;
    }
    if (wait_ms == 0 && rpm) l->req_level -= SCALE;
    pthread_mutex_unlock(&l->mu);
    if (wait_ms == 0) return true;
    if (retry_after_s) {
        int64_t s = (wait_ms + 999) / 1000;
        *retry_after_s = s < 1 ? 1 : s > 86400 ? 86400 : (int)s;
    }
    return false;
}

bool dsi__limiter_reserve(struct dsi__limiter *l, int64_t rpm, int64_t tpm, int64_t now_ms, int64_t tokens,
                          int64_t *reserved, int *retry_after_s) {
    *reserved = 0;
    if (!l || tpm == 0 || tokens <= 0) return true;
    int64_t need = tokens < tpm ? tokens : tpm; /* more than the capacity: a full bucket */
    int64_t wait_ms = 0;
    pthread_mutex_lock(&l->mu);
    refill(l, rpm, tpm, now_ms);
    if (l->tok_level >= need * SCALE) {
        l->tok_level -= need * SCALE;
        *reserved = need;
    } else {
        wait_ms = (need * SCALE - l->tok_level + tpm - 1) / tpm;
    }
    pthread_mutex_unlock(&l->mu);
    if (wait_ms == 0) return true;
    if (retry_after_s) {
        int64_t s = (wait_ms + 999) / 1000;
        *retry_after_s = s < 1 ? 1 : s > 86400 ? 86400 : (int)s;
    }
    return false;
}

void dsi__limiter_charge(struct dsi__limiter *l, int64_t rpm, int64_t tpm, int64_t now_ms, int64_t tokens) {
    if (!l || tpm == 0 || tokens == 0) return;
    if (tokens > INT32_MAX) tokens = INT32_MAX; /* callers pass int-sized counts; keeps * SCALE in range */
    if (tokens < -INT32_MAX) tokens = -INT32_MAX;
    pthread_mutex_lock(&l->mu);
    refill(l, rpm, tpm, now_ms);
    l->tok_level -= tokens * SCALE;
    if (l->tok_level < MIN_LEVEL) l->tok_level = MIN_LEVEL;
    if (l->tok_level > tpm * SCALE) l->tok_level = tpm * SCALE; /* a refund never overfills */
    pthread_mutex_unlock(&l->mu);
}
