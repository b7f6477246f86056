/*
 * engine.c: the engine's public API: create/destroy, submit (validation, the
 * bounded request queue), cancel, drain and stats. The scheduler thread that
 * runs the steps lives in sched.c; docs/engine.md describes the whole.
 *
 * A request is checked completely at submit, so that everything accepted can
 * run to completion on an otherwise empty engine: prompt tokens in range,
 * prompt + max_tokens within max_total_tokens and within the KV pool. That is
 * what lets the scheduler preempt freely without ever dead-locking.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "dsinfer/clock.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "engine_internal.h"

static int check_opts(const struct dsi_backend *be, const struct dsi_engine_opts *o, char **err);

void dsi_engine_opts_defaults(struct dsi_engine_opts *o) {
    memset(o, 0, sizeof *o); /* fields added later default to 0 = off */
    o->max_running = 64;
    o->max_queued = 1024;
    o->prefill_chunk = 512;
    o->max_batch_tokens = 2048;
    o->max_prompt_tokens = 4096;
    o->max_total_tokens = 8192;
    o->queue_timeout_ms = 30000;
    o->request_timeout_ms = 600000;
    o->prefix_cache = true;
}

/* A key for the prefix cache's bucket hash that clients cannot predict, so they
 * cannot aim requests at one bucket. Correctness never depends on it. */
static uint64_t hash_key(const struct dsi_engine *e) {
    uint64_t k = 0;
    if (getrandom(&k, sizeof k, GRND_NONBLOCK) == (ssize_t)sizeof k) return k;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)e;
}

static int check_opts(const struct dsi_backend *be, const struct dsi_engine_opts *o, char **err) {
    if (!be || !be->ops || !be->ops->forward)
        return dsi_seterr(err, DSI_EINVAL, "engine: backend has no forward op");
    if (be->vocab_size < 1 || be->kv_block_size < 1 || be->n_kv_blocks < 1)
        return dsi_seterr(err, DSI_EINVAL,
                          "engine: backend reports vocab %d, kv_block_size %d, n_kv_blocks %d",
                          be->vocab_size, be->kv_block_size, be->n_kv_blocks);
    if (o->max_running < 1 || o->max_running > 4096)
        return dsi_seterr(err, DSI_EINVAL, "engine: max_running %d not in 1..4096", o->max_running);
    if (o->max_queued < 1)
        return dsi_seterr(err, DSI_EINVAL, "engine: max_queued %d must be >= 1", o->max_queued);
    if (o->prefill_chunk < 1)
        return dsi_seterr(err, DSI_EINVAL, "engine: prefill_chunk %d must be >= 1", o->prefill_chunk);
    /* Every running sequence must get its decode token each step, or streams stall. */
    if (o->max_batch_tokens < o->max_running)
        return dsi_seterr(err, DSI_EINVAL, "engine: max_batch_tokens %d must be >= max_running %d",
                          o->max_batch_tokens, o->max_running);
    if (o->max_prompt_tokens < 1)
        return dsi_seterr(err, DSI_EINVAL, "engine: max_prompt_tokens %d must be >= 1", o->max_prompt_tokens);
    if (o->max_total_tokens < 2)
        return dsi_seterr(err, DSI_EINVAL, "engine: max_total_tokens %d must be >= 2", o->max_total_tokens);
    if (o->queue_timeout_ms < 0 || o->request_timeout_ms < 0)
        return dsi_seterr(err, DSI_EINVAL,
                          "engine: queue_timeout_ms %d and request_timeout_ms %d must be >= 0",
                          o->queue_timeout_ms, o->request_timeout_ms);
    if (o->sample_vocab < 0 || o->sample_vocab > be->vocab_size)
        return dsi_seterr(err, DSI_EINVAL, "engine: sample_vocab %d not in 0..%d", o->sample_vocab,
                          be->vocab_size);
    size_t rows = (size_t)o->max_running, vocab = (size_t)be->vocab_size;
    if (rows > SIZE_MAX / sizeof(float) / vocab)
        return dsi_seterr(err, DSI_EOVERFLOW, "engine: logits buffer of %zu x %zu floats overflows", rows,
                          vocab);
    return 0;
}

int dsi_engine_create(struct dsi_backend *be, const struct dsi_engine_opts *o_in, struct dsi_engine **out,
                      char **err) {
    struct dsi_engine_opts o;
    if (o_in)
        o = *o_in;
    else
        dsi_engine_opts_defaults(&o);
    *out = NULL;
    int rc = check_opts(be, &o, err);
    if (rc) return rc;

    struct dsi_engine *e = calloc(1, sizeof(*e));
    if (!e) return dsi_seterr(err, DSI_ENOMEM, "engine: out of memory");
    e->be = be;
    e->o = o;
    e->next_id = 1;
    bool mu_ok = false, cv_ok = false;
    rc = dsi_kv_cache_init(&e->kv, be->n_kv_blocks, be->kv_block_size, err);
    /* the format: the cache's element type and bytes per token */
    uint64_t format = (uint64_t)be->kv_dtype << 48 ^ (uint64_t)be->kv_bytes_per_token;
    if (!rc && o.prefix_cache) rc = dsi_kv_prefix_enable(&e->kv, hash_key(e), format, err);
    if (rc) goto fail;
    rc = DSI_ENOMEM;
    e->running = calloc((size_t)o.max_running, sizeof(*e->running));
    e->bseqs = calloc((size_t)o.max_running, sizeof(*e->bseqs));
    e->breqs = calloc((size_t)o.max_running, sizeof(*e->breqs));
    e->logits = malloc((size_t)o.max_running * (size_t)be->vocab_size * sizeof(float));
    e->sparams = calloc((size_t)o.max_running, sizeof(*e->sparams));
    e->sids = calloc((size_t)o.max_running, sizeof(*e->sids));
    if (!e->running || !e->bseqs || !e->breqs || !e->logits || !e->sparams || !e->sids) {
        dsi_seterr(err, rc, "engine: out of memory for %d running sequences", o.max_running);
        goto fail;
    }
    rc = DSI_EINTERNAL;
    if (pthread_mutex_init(&e->mu, NULL) != 0) {
        dsi_seterr(err, rc, "engine: pthread_mutex_init failed");
        goto fail;
    }
    mu_ok = true;
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) {
        dsi_seterr(err, rc, "engine: pthread_condattr_init failed");
        goto fail;
    }
    /* Timed waits use CLOCK_MONOTONIC so a wall-clock jump cannot stretch a timeout. */
    int crc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (crc == 0) crc = pthread_cond_init(&e->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (crc != 0) {
        dsi_seterr(err, rc, "engine: pthread_cond_init failed");
        goto fail;
    }
    cv_ok = true;
    if (pthread_create(&e->thread, NULL, dsi__engine_sched_main, e) != 0) {
        dsi_seterr(err, rc, "engine: cannot start the scheduler thread");
        goto fail;
    }
    dsi_log(DSI_LOG_INFO, "engine",
            "started: max_running %d, max_batch_tokens %d, prefill_chunk %d, kv %d blocks x %d tokens, "
            "prefix cache %s",
            o.max_running, o.max_batch_tokens, o.prefill_chunk, be->n_kv_blocks, be->kv_block_size,
            o.prefix_cache ? "on" : "off");
    *out = e;
    return 0;

fail:
    if (cv_ok) pthread_cond_destroy(&e->cv);
    if (mu_ok) pthread_mutex_destroy(&e->mu);
    free(e->sids);
    free(e->sparams);
    free(e->logits);
    free(e->breqs);
    free(e->bseqs);
    free(e->running);
    dsi_kv_cache_free(&e->kv);
    free(e);
    return rc;
}

void dsi_engine_destroy(struct dsi_engine *e) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->stopping = true;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    /* The scheduler delivers a CANCELLED final event to every request before it exits. */
    pthread_join(e->thread, NULL);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    free(e->sids);
    free(e->sparams);
    free(e->logits);
    free(e->breqs);
    free(e->bseqs);
    free(e->running);
    dsi_kv_cache_free(&e->kv);
    free(e);
}

/* Validates p against the engine's limits and builds a request (not yet queued).
 * Returns 0 or DSI_EINVAL / DSI_ERANGE / DSI_ENOMEM with a message. */
static int req_build(struct dsi_engine *e, const struct dsi_request_params *p, dsi_token_cb cb, void *user,
                     struct dsi__req **out, char **err) {
    const struct dsi_engine_opts *o = &e->o;
    int vocab = e->be->vocab_size;
    if (!p || !cb) return dsi_seterr(err, DSI_EINVAL, "request: params and callback are required");
    if (!p->prompt || p->n_prompt < 1) return dsi_seterr(err, DSI_EINVAL, "request: empty prompt");
    if (p->n_prompt > o->max_prompt_tokens)
        return dsi_seterr(err, DSI_ERANGE, "request: prompt has %d tokens, limit is max_prompt_tokens %d",
                          p->n_prompt, o->max_prompt_tokens);
    for (int i = 0; i < p->n_prompt; i++)
        if (p->prompt[i] < 0 || p->prompt[i] >= vocab)
            return dsi_seterr(err, DSI_EINVAL, "request: prompt token %d at %d out of range 0..%d", p->prompt[i], i,
                              vocab - 1);
    if (p->max_tokens < 0)
        return dsi_seterr(err, DSI_EINVAL, "request: max_tokens %d must be >= 0", p->max_tokens);
    if (p->n_stop_ids < 0 || p->n_stop_ids > DSI_MAX_STOP_IDS)
        return dsi_seterr(err, DSI_EINVAL, "request: %d stop ids, at most %d", p->n_stop_ids,
                          DSI_MAX_STOP_IDS);
    for (int i = 0; i < p->n_stop_ids; i++)
        if (p->stop_ids[i] < 0 || p->stop_ids[i] >= vocab)
            return dsi_seterr(err, DSI_EINVAL, "request: stop id %d not in 0..%d", p->stop_ids[i], vocab - 1);
    if (p->deadline_ms < 0) return dsi_seterr(err, DSI_EINVAL, "request: negative deadline");
    int rc = dsi_sampling_check(&p->sampling, NULL, err);
    if (rc) return rc;
    if (p->score && p->n_prompt < 2)
        return dsi_seterr(err, DSI_EINVAL, "request: scoring needs at least 2 tokens, got %d", p->n_prompt);
    if (p->score && p->max_tokens != 0)
        return dsi_seterr(err, DSI_EINVAL, "request: scoring generates nothing; max_tokens must be 0");
    if (p->score && p->grammar) return dsi_seterr(err, DSI_EINVAL, "request: scoring takes no grammar");
    if (p->score && p->n > 1) return dsi_seterr(err, DSI_EINVAL, "request: scoring is one sequence; n must be 1");

    /* The most tokens one sequence can ever hold, from the limits and the pool. */
    int64_t pool_tokens = (int64_t)e->be->n_kv_blocks * e->be->kv_block_size;
    int64_t cap_total = o->max_total_tokens < pool_tokens ? o->max_total_tokens : pool_tokens;
    int max_tokens = p->max_tokens;
    if (max_tokens == 0 && !p->score)
        max_tokens = (int)(cap_total - p->n_prompt > 0 ? cap_total - p->n_prompt : 0);
    int64_t total = (int64_t)p->n_prompt + max_tokens;
    if ((max_tokens < 1 && !p->score) || total > o->max_total_tokens)
        return dsi_seterr(
            err, DSI_ERANGE,
            "request: prompt %d + max_tokens %d tokens exceeds max_total_tokens %d; shorten the "
            "prompt or lower max_tokens",
            p->n_prompt, max_tokens, o->max_total_tokens);
    if (total > pool_tokens)
        return dsi_seterr(
            err, DSI_ERANGE,
            "request: prompt %d + max_tokens %d tokens exceeds the whole KV pool (%d blocks x %d "
            "tokens); lower max_tokens or give the KV cache more memory",
            p->n_prompt, max_tokens, e->be->n_kv_blocks, e->be->kv_block_size);

    struct dsi__req *r = calloc(1, sizeof(*r));
    if (!r) return dsi_seterr(err, DSI_ENOMEM, "request: out of memory");
    r->tokens = malloc((size_t)total * sizeof(int32_t));
    rc = r->tokens ? dsi_kv_seq_init(&r->kv, &e->kv, (int)total, err) : DSI_ENOMEM;
    if (rc) {
        free(r->tokens);
        free(r);
        return dsi_seterr(err, rc, "request: out of memory");
    }
    memcpy(r->tokens, p->prompt, (size_t)p->n_prompt * sizeof(int32_t));
    r->cb = cb;
    r->user = user;
    r->sampling = p->sampling;
    memcpy(r->stop_ids, p->stop_ids, sizeof(r->stop_ids));
    r->n_stop_ids = p->n_stop_ids;
    r->max_tokens = max_tokens;
    r->score = p->score;
    r->n_prompt = r->n_tokens = p->n_prompt;
    r->cache_ns[0] = p->cache_ns[0];
    r->cache_ns[1] = p->cache_ns[1];
    r->tenant = p->tenant;
    r->weight = p->weight < 1 ? 1 : p->weight > 100 ? 100 : p->weight;
    dsi_sampler_seed(&r->rng, p->sampling.seed);
    if ((rc = dsi__engine_grammar_init(r, p, e->be->vocab_size))) {
        dsi__engine_req_free(r);
        return dsi_seterr(err, rc, rc == DSI_EINVAL ? "request: a grammar needs its token trie"
                                                    : "request: out of memory");
    }
    r->submit_ms = dsi_now_ms();
    r->deadline_ms = p->deadline_ms;
    if (!r->deadline_ms && o->request_timeout_ms > 0) r->deadline_ms = r->submit_ms + o->request_timeout_ms;
    *out = r;
    return 0;
}

void dsi__engine_req_free(struct dsi__req *r) {
    if (!r) return;
    dsi_kv_seq_free(&r->kv);
    dsi__engine_grammar_free(r);
    free(r->tokens);
    free(r);
}

int dsi_engine_submit(struct dsi_engine *e, const struct dsi_request_params *p, dsi_token_cb cb, void *user,
                      uint64_t *request_id, char **err) {
    if (!e) return dsi_seterr(err, DSI_EINVAL, "engine: NULL engine");
    int n = p && p->n > 1 ? p->n : 1;
    if (p && (p->n < 0 || p->n > DSI_MAX_N))
        return dsi_seterr(err, DSI_EINVAL, "request: n %d not in 1..%d", p->n, DSI_MAX_N);
    struct dsi__req *r[DSI_MAX_N] = {0};
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        rc = req_build(e, p, cb, user, &r[i], err);
        if (rc) break;
        r[i]->index = i;
        /* each sequence its own stream of draws: seed + index */
        dsi_sampler_seed(&r[i]->rng, p->sampling.seed + (uint64_t)i);
    }
    if (rc) {
        for (int i = 0; i < n; i++) dsi__engine_req_free(r[i]);
        dsi_log(DSI_LOG_INFO, "engine", "request rejected: %s", dsi_err_name(rc));
        return rc;
    }
    pthread_mutex_lock(&e->mu);
    const char *why = e->dead                    ? "dead"
                      : e->draining || e->stopping ? "draining"
                      : e->n_waiting + n > e->o.max_queued ? "full"
                                                             : NULL;
    if (why) {
        int w = e->n_waiting;
        pthread_mutex_unlock(&e->mu);
        for (int i = 0; i < n; i++) dsi__engine_req_free(r[i]);
        if (!strcmp(why, "dead")) {
            dsi_log(DSI_LOG_INFO, "engine", "request rejected: the backend is dead");
            return dsi_seterr(err, DSI_ESTATE, "engine: the backend failed and runs no more steps; restart the service");
        }
        if (why[0] == 'd') {
            dsi_log(DSI_LOG_INFO, "engine", "request rejected: draining");
            return dsi_seterr(err, DSI_ESTATE, "engine: draining, not accepting requests");
        }
        dsi_log(DSI_LOG_INFO, "engine", "request rejected: queue full (%d waiting)", w);
        return dsi_seterr(err, DSI_EFULL, "engine: queue full (%d requests waiting); retry later", w);
    }
    for (int i = 0; i < n; i++) {
        r[i]->id = e->next_id++;
        r[i]->leader_id = i ? r[0]->id : 0;
        r[i]->lnext = e->live_head;
        if (e->live_head) e->live_head->lprev = r[i];
        e->live_head = r[i];
        dsi__engine_wait_push_back(e, r[i]);
    }
    if (request_id) *request_id = r[0]->id;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

int dsi_engine_cancel(struct dsi_engine *e, uint64_t request_id) {
    if (!e) return DSI_EINVAL;
    int rc = DSI_ENOENT;
    pthread_mutex_lock(&e->mu);
    /* A linear scan: live requests are at most max_running + max_queued, and
     * cancels are rare next to steps. */
    for (struct dsi__req *r = e->live_head; r; r = r->lnext) {
        if (r->id == request_id) {
            r->cancel_requested = true;
            pthread_cond_signal(&e->cv);
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

void dsi_engine_get_stats(struct dsi_engine *e, struct dsi_engine_stats *st) {
    memset(st, 0, sizeof(*st));
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    *st = e->st;
    st->running = e->n_running;
    st->waiting = e->n_waiting;
    st->kv_blocks_used = dsi_kv_used(&e->kv);
    st->kv_blocks_free = dsi_kv_free_count(&e->kv);
    st->kv_block_tokens = e->be->kv_block_size;
    st->kv_bytes_per_token = e->be->kv_bytes_per_token;
    st->kv_capacity_tokens = (uint64_t)e->kv.n_blocks * (uint64_t)e->be->kv_block_size;
    st->kv_dtype = e->be->kv_dtype;
    st->kv_blocks_cached = dsi_kv_cached_count(&e->kv);
    st->kv_evictions_total = e->kv.evictions;
    st->dead = e->dead;
    pthread_mutex_unlock(&e->mu);
}

bool dsi_engine_dead(struct dsi_engine *e) {
    if (!e) return false;
    pthread_mutex_lock(&e->mu);
    bool dead = e->dead;
    pthread_mutex_unlock(&e->mu);
    return dead;
}

void dsi_engine_drain(struct dsi_engine *e) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    if (!e->draining)
        dsi_log(DSI_LOG_INFO, "engine", "draining: %d running, %d waiting", e->n_running, e->n_waiting);
    e->draining = true;
    pthread_mutex_unlock(&e->mu);
}

void dsi__engine_wait_push_back(struct dsi_engine *e, struct dsi__req *r) {
    r->wnext = NULL;
    r->wprev = e->wait_tail;
    if (e->wait_tail)
        e->wait_tail->wnext = r;
    else
        e->wait_head = r;
    e->wait_tail = r;
    e->n_waiting++;
}

void dsi__engine_wait_push_front(struct dsi_engine *e, struct dsi__req *r) {
    r->wprev = NULL;
    r->wnext = e->wait_head;
    if (e->wait_head)
        e->wait_head->wprev = r;
    else
        e->wait_tail = r;
    e->wait_head = r;
    e->n_waiting++;
}

void dsi__engine_wait_remove(struct dsi_engine *e, struct dsi__req *r) {
    if (r->wprev)
        r->wprev->wnext = r->wnext;
    else
        e->wait_head = r->wnext;
    if (r->wnext)
        r->wnext->wprev = r->wprev;
    else
        e->wait_tail = r->wprev;
    r->wprev = r->wnext = NULL;
    e->n_waiting--;
}

void dsi__engine_live_remove(struct dsi_engine *e, struct dsi__req *r) {
    if (r->lprev)
        r->lprev->lnext = r->lnext;
    else
        e->live_head = r->lnext;
    if (r->lnext) r->lnext->lprev = r->lprev;
    r->lprev = r->lnext = NULL;
}
