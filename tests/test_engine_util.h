/*
 * test_engine_util.h: what the engine test binaries (test_engine_sched.c,
 * test_engine_life.c, and for the event collector test_engine_batch.c) share:
 * a mock backend, an event collector, the reference they check the engine's
 * tokens against, and the set-up sequences their tests repeat (engine on a
 * fresh mock, greedy request, one request running with one waiting).
 *
 * The mock is a real paged store: forward() writes (seq id, position, token,
 * hash of the history up to it) into the slots named by each sequence's block
 * table and, for logits, reads the whole history back through that table. A
 * block table that misses a position, or a block written for another history
 * (a wrong prefix-cache hit, a block handed to two live writers), makes it
 * read a slot whose history hash disagrees with what it read before; the mock
 * counts that as an error and the logits (a hash of the history read back)
 * change, so the tokens differ from the reference. Reading a block another
 * sequence wrote for the same history is the prefix cache working, and fine.
 * The reference (ref_tokens) computes the same hash chain directly.
 *
 * Everything here is static inline: each test binary uses a different subset,
 * and an unused static function would fail the -Werror build.
 */
#ifndef DSI_TEST_ENGINE_UTIL_H
#define DSI_TEST_ENGINE_UTIL_H

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dsinfer/engine.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "test.h"

#define VOCAB 64
#define MAX_REC_TOKENS 512

/* Waits give up after this long, failing the test instead of hanging it. A
 * binary whose engine runs a real model defines a longer one before the include. */
#ifndef WAIT_LIMIT_S
#define WAIT_LIMIT_S 60
#endif

/* Absolute CLOCK_REALTIME time s seconds from now (default condvars use it). */
static inline struct timespec deadline_in(int s) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += s;
    return ts;
}

/* ---- mock backend ---- */

struct slot {
    uint64_t seq;
    uint64_t chain; /* hash of the tokens at positions 0..pos of the history written here */
    int32_t pos, tok;
};

struct mock {
    struct dsi_backend be;
    struct slot *slots;   /* (n_blocks * block_size) */
    uint64_t *block_step; /* (n_blocks) last step that named the block */
    uint64_t *block_seq;  /* (n_blocks) which sequence named it in that step */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool paused;
    int entered; /* forward() calls begun (mu) */
    int errors;  /* (mu) */
    int fail_rc; /* next forward fails with this (mu) */
    bool sticky; /* (mu) a failure leaves the mock dead (its ops->dead says true) */
    bool dead;   /* (mu) */
    int max_step_tokens, max_chunk, mixed_steps, max_seqs;
    uint64_t step;
    int started[64]; /* prefills from position 0, by seq id (< 64): > 1 means recomputed */
};

static inline uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Logits of the token after toks[0..n): distinct values, so argmax has no ties. */
static inline void ref_logits(const int32_t *toks, int n, float *out) {
    uint64_t h = 0x1234;
    for (int i = 0; i < n; i++)
        h = mix64(h ^ (uint64_t)toks[i] ^ ((uint64_t)i << 32));
    for (int v = 0; v < VOCAB; v++)
        out[v] = (float)((double)(mix64(h + (uint64_t)v) % 1024) + v / 2048.0) / 64.0f;
}

static inline void mock_error(struct mock *m, const char *what, uint64_t seq) {
    if (m->errors++ < 5) fprintf(stderr, "  mock: %s (seq %llu)\n", what, (unsigned long long)seq);
}

static inline int mock_forward(struct dsi_backend *be, const struct dsi_batch *b, float *logits, char **err) {
    struct mock *m = be->impl;
    pthread_mutex_lock(&m->mu);
    m->entered++;
    pthread_cond_broadcast(&m->cv);
    while (m->paused)
        pthread_cond_wait(&m->cv, &m->mu);
    int fail = m->dead ? DSI_ECUDA : m->fail_rc;
    m->fail_rc = 0;
    if (fail && m->sticky) m->dead = true;
    m->step++;
    int bs = be->kv_block_size, total = 0, row = 0;
    bool has_decode = false, has_prefill = false;
    if (b->n_seqs < 1) mock_error(m, "empty batch", 0);
    for (int i = 0; i < b->n_seqs; i++) {
        const struct dsi_batch_seq *s = &b->seqs[i];
        total += s->n_tokens;
        if (s->n_tokens > m->max_chunk) m->max_chunk = s->n_tokens;
        if (s->n_tokens == 1 && s->pos > 0) has_decode = true;
        if (s->n_tokens > 1) has_prefill = true;
        if (s->pos == 0 && s->seq_id < 64) m->started[s->seq_id]++;
        if (s->n_tokens < 1 || s->pos < 0 || s->n_blocks * bs < s->pos + s->n_tokens) {
            mock_error(m, "block table does not cover the positions", s->seq_id);
            continue;
        }
        bool ids_ok = true;
        for (int j = 0; j < s->n_blocks; j++) {
            int id = s->block_table[j];
            if (id < 0 || id >= be->n_kv_blocks) {
                mock_error(m, "block id out of range", s->seq_id);
                ids_ok = false;
                continue;
            }
            if (j < s->pos / bs) continue; /* read only: sharing it is the prefix cache */
            if (m->block_step[id] == m->step && m->block_seq[id] != s->seq_id)
                mock_error(m, "block written by two sequences in one step", s->seq_id);
            m->block_step[id] = m->step;
            m->block_seq[id] = s->seq_id;
        }
        if (!ids_ok) continue;
        for (int t = 0; t < s->n_tokens; t++) {
            int p = s->pos + t;
            struct slot *sl = &m->slots[(size_t)s->block_table[p / bs] * bs + p % bs];
            const struct slot *prev = p > 0 ? &m->slots[(size_t)s->block_table[(p - 1) / bs] * bs + (p - 1) % bs] : NULL;
            sl->seq = s->seq_id;
            sl->pos = p;
            sl->tok = s->tokens[t];
            sl->chain = mix64((prev ? prev->chain : 0x77) ^ (uint64_t)sl->tok ^ ((uint64_t)p << 32));
        }
        if (!s->want_logits) continue;
        int n = s->pos + s->n_tokens;
        int32_t *hist = malloc((size_t)n * sizeof(int32_t));
        uint64_t chain = 0x77;
        for (int p = 0; p < n; p++) {
            const struct slot *sl = &m->slots[(size_t)s->block_table[p / bs] * bs + p % bs];
            chain = mix64(chain ^ (uint64_t)sl->tok ^ ((uint64_t)p << 32));
            if (sl->pos != p || sl->chain != chain)
                mock_error(m, "read a slot written for another history", s->seq_id);
            hist[p] = sl->tok;
        }
        ref_logits(hist, n, logits + (size_t)row++ * VOCAB);
        free(hist);
    }
    if (total > m->max_step_tokens) m->max_step_tokens = total;
    if (b->n_seqs > m->max_seqs) m->max_seqs = b->n_seqs;
    if (has_decode && has_prefill) m->mixed_steps++;
    pthread_mutex_unlock(&m->mu);
    if (fail) {
        if (err) *err = dsi_errf("mock: injected failure");
        return fail;
    }
    return 0;
}

static inline bool mock_dead(struct dsi_backend *be) {
    struct mock *m = be->impl;
    pthread_mutex_lock(&m->mu);
    bool dead = m->dead;
    pthread_mutex_unlock(&m->mu);
    return dead;
}

static const struct dsi_backend_ops mock_ops = {.name = "mock", .forward = mock_forward, .dead = mock_dead};

static inline void mock_init(struct mock *m, int n_blocks, int block_size) {
    memset(m, 0, sizeof(*m));
    m->be.ops = &mock_ops;
    m->be.vocab_size = VOCAB;
    m->be.kv_block_size = block_size;
    m->be.n_kv_blocks = n_blocks;
    m->be.impl = m;
    m->slots = calloc((size_t)n_blocks * block_size, sizeof(*m->slots));
    m->block_step = calloc((size_t)n_blocks, sizeof(uint64_t));
    m->block_seq = calloc((size_t)n_blocks, sizeof(uint64_t));
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);
}

static inline void mock_free(struct mock *m) {
    free(m->slots);
    free(m->block_step);
    free(m->block_seq);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
}

static inline void mock_pause(struct mock *m, bool on) {
    pthread_mutex_lock(&m->mu);
    m->paused = on;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

/* The next forward() fails with rc; sticky: the mock is dead from then on. */
static inline void mock_fail_next(struct mock *m, int rc, bool sticky) {
    pthread_mutex_lock(&m->mu);
    m->fail_rc = rc;
    m->sticky = sticky;
    pthread_mutex_unlock(&m->mu);
}

/* Waits until forward() has been entered n times (the scheduler is then inside it). */
static inline void mock_wait_entered(struct mock *m, int n) {
    struct timespec until = deadline_in(WAIT_LIMIT_S);
    int rc = 0;
    pthread_mutex_lock(&m->mu);
    while (m->entered < n && rc == 0)
        rc = pthread_cond_timedwait(&m->cv, &m->mu, &until);
    CHECK(m->entered >= n);
    pthread_mutex_unlock(&m->mu);
}

/* ---- event collector: the callback copies and signals ---- */

struct rec {
    int32_t tokens[MAX_REC_TOKENS];
    int n;
    int n_finals, after_final, wrong_id;
    uint64_t id;
    struct dsi_token_event final;
    struct coll *c;
};

struct coll {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int finals;
};

static inline void coll_init(struct coll *c) {
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
}

static inline void coll_free(struct coll *c) {
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
}

static inline void on_event(void *user, const struct dsi_token_event *ev) {
    struct rec *r = user;
    struct coll *c = r->c;
    pthread_mutex_lock(&c->mu);
    if (r->id && ev->request_id != r->id) r->wrong_id++;
    if (r->n_finals > 0) {
        r->after_final++;
    } else {
        if (ev->token >= 0 && r->n < MAX_REC_TOKENS) r->tokens[r->n++] = ev->token;
        if (ev->finished) {
            r->n_finals++;
            r->final = *ev;
            c->finals++;
            pthread_cond_broadcast(&c->cv);
        }
    }
    pthread_mutex_unlock(&c->mu);
}

static inline void coll_wait(struct coll *c, int finals) {
    struct timespec until = deadline_in(WAIT_LIMIT_S);
    int rc = 0;
    pthread_mutex_lock(&c->mu);
    while (c->finals < finals && rc == 0)
        rc = pthread_cond_timedwait(&c->cv, &c->mu, &until);
    CHECK(c->finals >= finals);
    pthread_mutex_unlock(&c->mu);
}

/* ---- helpers ---- */

static inline void make_prompt(int32_t *p, int n, unsigned seed) {
    for (int i = 0; i < n; i++)
        p[i] = (int32_t)(mix64(seed * 7919u + (unsigned)i) % VOCAB);
}

static inline void greedy_params(struct dsi_request_params *rp, const int32_t *prompt, int n,
                                 int max_tokens) {
    memset(rp, 0, sizeof(*rp));
    rp->prompt = prompt;
    rp->n_prompt = n;
    rp->max_tokens = max_tokens;
    dsi_sampling_defaults(&rp->sampling);
    rp->sampling.temperature = 0.0f;
}

/* Greedy continuation by the reference, cut after the first stop id. */
static inline int ref_tokens(const int32_t *prompt, int n_prompt, int max_tokens, const int32_t *stop,
                             int n_stop, int32_t *out) {
    int32_t hist[MAX_REC_TOKENS * 2];
    float lg[VOCAB];
    memcpy(hist, prompt, (size_t)n_prompt * sizeof(int32_t));
    int n = n_prompt;
    for (int g = 0; g < max_tokens; g++) {
        ref_logits(hist, n, lg);
        int best = 0;
        for (int v = 1; v < VOCAB; v++)
            if (lg[v] > lg[best]) best = v;
        hist[n++] = best;
        out[g] = best;
        for (int k = 0; k < n_stop; k++)
            if (stop[k] == best) return g + 1;
    }
    return max_tokens;
}

/* Fills prompt with n tokens drawn from seed and rp with greedy params for it. */
static inline void greedy_request(struct dsi_request_params *rp, int32_t *prompt, int n, unsigned seed,
                                  int max_tokens) {
    make_prompt(prompt, n, seed);
    greedy_params(rp, prompt, n, max_tokens);
}

static inline void small_opts(struct dsi_engine_opts *o) {
    dsi_engine_opts_defaults(o);
    o->max_running = 8;
    o->max_queued = 64;
    o->prefill_chunk = 4;
    o->max_batch_tokens = 16;
    o->max_prompt_tokens = 64;
    o->max_total_tokens = 256;
}

static inline struct dsi_engine *start(struct mock *m, const struct dsi_engine_opts *o) {
    struct dsi_engine *e = NULL;
    char *err = NULL;
    int rc = dsi_engine_create(&m->be, o, &e, &err);
    if (rc) fprintf(stderr, "  create: %s\n", err ? err : "?");
    free(err);
    return e;
}

static inline int submit(struct dsi_engine *e, const struct dsi_request_params *rp, struct rec *r,
                         struct coll *c) {
    memset(r, 0, sizeof(*r));
    r->c = c;
    uint64_t id = 0;
    char *err = NULL;
    /* Events may arrive before submit returns: hold the collector lock until r->id is set. */
    pthread_mutex_lock(&c->mu);
    int rc = dsi_engine_submit(e, rp, on_event, r, &id, &err);
    r->id = id;
    pthread_mutex_unlock(&c->mu);
    free(err);
    return rc;
}

/* Sets up a mock of n_blocks blocks of 4 tokens and an empty collector c, and
 * starts an engine on the mock with options o (NULL: the engine's defaults). */
static inline struct dsi_engine *mock_engine_start(struct mock *m, struct coll *c, int n_blocks,
                                                   const struct dsi_engine_opts *o) {
    mock_init(m, n_blocks, 4);
    coll_init(c);
    return start(m, o);
}

/* Destroys the engine, then the collector and the mock it ran on. */
static inline void mock_engine_stop(struct dsi_engine *e, struct coll *c, struct mock *m) {
    dsi_engine_destroy(e);
    coll_free(c);
    mock_free(m);
}

/* With max_running 1: pauses the mock, submits r[0] and waits until the
 * scheduler is inside forward() with it, then submits r[1], which has to wait
 * behind it. Both submits must succeed; the mock is left paused. */
static inline void submit_running_and_waiting(struct dsi_engine *e, struct mock *m,
                                              const struct dsi_request_params *rp, struct rec *r,
                                              struct coll *c) {
    mock_pause(m, true);
    CHECK_EQ_INT(submit(e, rp, &r[0], c), 0);
    mock_wait_entered(m, 1);
    CHECK_EQ_INT(submit(e, rp, &r[1], c), 0);
}

static inline void check_pool_empty(struct dsi_engine *e, int n_blocks) {
    struct dsi_engine_stats st;
    dsi_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.kv_blocks_used, 0);
    CHECK_EQ_INT(st.kv_blocks_free, n_blocks);
}

#endif
