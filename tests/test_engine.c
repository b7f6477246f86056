/*
 * test_engine.c: the continuous-batching engine against a mock backend.
 *
 * The mock is a real paged store: forward() writes (seq id, position, token)
 * into the slots named by each sequence's block table and, for logits, reads
 * the whole history back through that table. A block table that misses a
 * position, or a block handed to two live sequences, makes it read a slot that
 * another sequence wrote; the mock counts that as an error and the logits (a
 * hash of the history read back) change, so the tokens differ from the
 * reference. The reference (ref_tokens) computes the same hash chain directly.
 */
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

/* Waits give up after this long, failing the test instead of hanging it. */
#define WAIT_LIMIT_S 60

/* Absolute CLOCK_REALTIME time s seconds from now (default condvars use it). */
static struct timespec deadline_in(int s) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += s;
    return ts;
}

/* ---- mock backend ---- */

struct slot {
    uint64_t seq;
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
    int max_step_tokens, max_chunk, mixed_steps, max_seqs;
    uint64_t step;
    int started[64]; /* prefills from position 0, by seq id (< 64): > 1 means recomputed */
};

static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Logits of the token after toks[0..n): distinct values, so argmax has no ties. */
static void ref_logits(const int32_t *toks, int n, float *out) {
    uint64_t h = 0x1234;
    for (int i = 0; i < n; i++)
        h = mix64(h ^ (uint64_t)toks[i] ^ ((uint64_t)i << 32));
    for (int v = 0; v < VOCAB; v++)
        out[v] = (float)((double)(mix64(h + (uint64_t)v) % 1024) + v / 2048.0) / 64.0f;
}

static void mock_error(struct mock *m, const char *what, uint64_t seq) {
    if (m->errors++ < 5) fprintf(stderr, "  mock: %s (seq %llu)\n", what, (unsigned long long)seq);
}

static int mock_forward(struct dsi_backend *be, const struct dsi_batch *b, float *logits, char **err) {
    struct mock *m = be->impl;
    pthread_mutex_lock(&m->mu);
    m->entered++;
    pthread_cond_broadcast(&m->cv);
    while (m->paused)
        pthread_cond_wait(&m->cv, &m->mu);
    int fail = m->fail_rc;
    m->fail_rc = 0;
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
            if (m->block_step[id] == m->step && m->block_seq[id] != s->seq_id)
                mock_error(m, "block shared by two sequences in one step", s->seq_id);
            m->block_step[id] = m->step;
            m->block_seq[id] = s->seq_id;
        }
        if (!ids_ok) continue;
        for (int t = 0; t < s->n_tokens; t++) {
            int p = s->pos + t;
            struct slot *sl = &m->slots[(size_t)s->block_table[p / bs] * bs + p % bs];
            sl->seq = s->seq_id;
            sl->pos = p;
            sl->tok = s->tokens[t];
        }
        if (!s->want_logits) continue;
        int n = s->pos + s->n_tokens;
        int32_t *hist = malloc((size_t)n * sizeof(int32_t));
        for (int p = 0; p < n; p++) {
            const struct slot *sl = &m->slots[(size_t)s->block_table[p / bs] * bs + p % bs];
            if (sl->seq != s->seq_id || sl->pos != p)
                mock_error(m, "read a slot another sequence wrote", s->seq_id);
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

static const struct dsi_backend_ops mock_ops = {.name = "mock", .forward = mock_forward};

static void mock_init(struct mock *m, int n_blocks, int block_size) {
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

static void mock_free(struct mock *m) {
    free(m->slots);
    free(m->block_step);
    free(m->block_seq);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
}

static void mock_pause(struct mock *m, bool on) {
    pthread_mutex_lock(&m->mu);
    m->paused = on;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

/* Waits until forward() has been entered n times (the scheduler is then inside it). */
static void mock_wait_entered(struct mock *m, int n) {
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

static void coll_init(struct coll *c) {
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
}

static void coll_free(struct coll *c) {
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
}

static void on_event(void *user, const struct dsi_token_event *ev) {
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

static void coll_wait(struct coll *c, int finals) {
    struct timespec until = deadline_in(WAIT_LIMIT_S);
    int rc = 0;
    pthread_mutex_lock(&c->mu);
    while (c->finals < finals && rc == 0)
        rc = pthread_cond_timedwait(&c->cv, &c->mu, &until);
    CHECK(c->finals >= finals);
    pthread_mutex_unlock(&c->mu);
}

/* ---- helpers ---- */

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void make_prompt(int32_t *p, int n, unsigned seed) {
    for (int i = 0; i < n; i++)
        p[i] = (int32_t)(mix64(seed * 7919u + (unsigned)i) % VOCAB);
}

static void greedy_params(struct dsi_request_params *rp, const int32_t *prompt, int n, int max_tokens) {
    memset(rp, 0, sizeof(*rp));
    rp->prompt = prompt;
    rp->n_prompt = n;
    rp->max_tokens = max_tokens;
    dsi_sampling_defaults(&rp->sampling);
    rp->sampling.temperature = 0.0f;
}

/* Greedy continuation by the reference, cut after the first stop id. */
static int ref_tokens(const int32_t *prompt, int n_prompt, int max_tokens, const int32_t *stop, int n_stop,
                      int32_t *out) {
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

static void small_opts(struct dsi_engine_opts *o) {
    dsi_engine_opts_defaults(o);
    o->max_running = 8;
    o->max_queued = 64;
    o->prefill_chunk = 4;
    o->max_batch_tokens = 16;
    o->max_prompt_tokens = 64;
    o->max_total_tokens = 256;
}

static struct dsi_engine *start(struct mock *m, const struct dsi_engine_opts *o) {
    struct dsi_engine *e = NULL;
    char *err = NULL;
    int rc = dsi_engine_create(&m->be, o, &e, &err);
    if (rc) fprintf(stderr, "  create: %s\n", err ? err : "?");
    free(err);
    return e;
}

static int submit(struct dsi_engine *e, const struct dsi_request_params *rp, struct rec *r, struct coll *c) {
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

static void check_pool_empty(struct dsi_engine *e, int n_blocks) {
    struct dsi_engine_stats st;
    dsi_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.kv_blocks_used, 0);
    CHECK_EQ_INT(st.kv_blocks_free, n_blocks);
}

/* ---- tests ---- */

TEST(engine_create_rejects_bad_opts) {
    struct mock m;
    mock_init(&m, 16, 4);
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_batch_tokens = o.max_running - 1;
    struct dsi_engine *e = NULL;
    char *err = NULL;
    CHECK_EQ_INT(dsi_engine_create(&m.be, &o, &e, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "max_batch_tokens"));
    free(err);
    err = NULL;
    small_opts(&o);
    o.max_running = 0;
    CHECK_EQ_INT(dsi_engine_create(&m.be, &o, &e, &err), DSI_EINVAL);
    free(err);
    err = NULL;
    struct dsi_backend_ops no_fwd = {.name = "none"};
    struct dsi_backend be = m.be;
    be.ops = &no_fwd;
    CHECK_EQ_INT(dsi_engine_create(&be, NULL, &e, &err), DSI_EINVAL);
    free(err);
    CHECK(e == NULL);
    dsi_engine_destroy(NULL);
    mock_free(&m);
}

TEST(engine_submit_rejects_bad_requests) {
    struct mock m;
    mock_init(&m, 16, 4); /* pool: 64 tokens */
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_prompt_tokens = 40;
    o.max_total_tokens = 100;
    struct dsi_engine *e = start(&m, &o);
    struct coll c;
    coll_init(&c);
    struct rec r;
    int32_t prompt[80];
    make_prompt(prompt, 80, 1);
    struct dsi_request_params rp;
    greedy_params(&rp, prompt, 4, 4);
    rp.n_prompt = 0;
    CHECK_EQ_INT(submit(e, &rp, &r, &c), DSI_EINVAL);
    greedy_params(&rp, prompt, 4, 4);
    int32_t bad[2] = {1, VOCAB};
    rp.prompt = bad;
    rp.n_prompt = 2;
    CHECK_EQ_INT(submit(e, &rp, &r, &c), DSI_EINVAL);
    greedy_params(&rp, prompt, 4, 4);
    rp.sampling.temperature = -1.0f;
    CHECK_EQ_INT(submit(e, &rp, &r, &c), DSI_EINVAL);
    greedy_params(&rp, prompt, 4, 4);
    rp.n_stop_ids = DSI_MAX_STOP_IDS + 1;
    CHECK_EQ_INT(submit(e, &rp, &r, &c), DSI_EINVAL);
    greedy_params(&rp, prompt, 4, 4);
    rp.max_tokens = -3;
    CHECK_EQ_INT(submit(e, &rp, &r, &c), DSI_EINVAL);
    CHECK_EQ_INT(dsi_engine_submit(e, &rp, NULL, NULL, NULL, NULL), DSI_EINVAL);

    /* Never fits: over max_prompt_tokens, over max_total_tokens, over the pool. */
    char *err = NULL;
    greedy_params(&rp, prompt, 41, 4);
    CHECK_EQ_INT(dsi_engine_submit(e, &rp, on_event, &r, NULL, &err), DSI_ERANGE);
    CHECK(err && strstr(err, "max_prompt_tokens"));
    free(err);
    err = NULL;
    greedy_params(&rp, prompt, 30, 71);
    CHECK_EQ_INT(dsi_engine_submit(e, &rp, on_event, &r, NULL, &err), DSI_ERANGE);
    CHECK(err && strstr(err, "max_total_tokens"));
    free(err);
    err = NULL;
    greedy_params(&rp, prompt, 30, 35);
    CHECK_EQ_INT(dsi_engine_submit(e, &rp, on_event, &r, NULL, &err), DSI_ERANGE);
    CHECK(err && strstr(err, "KV pool"));
    free(err);
    CHECK_EQ_INT(c.finals, 0); /* no callback for a rejected submit */

    /* max_tokens 0 means "what fits": 64-token pool minus a 30-token prompt. */
    greedy_params(&rp, prompt, 30, 0);
    CHECK_EQ_INT(submit(e, &rp, &r, &c), 0);
    coll_wait(&c, 1);
    CHECK_EQ_INT(r.final.finish, DSI_FINISH_LENGTH);
    CHECK_EQ_INT(r.final.n_completion_tokens, 34);
    dsi_engine_destroy(e);
    coll_free(&c);
    mock_free(&m);
}

TEST(engine_single_request_matches_reference) {
    struct mock m;
    mock_init(&m, 64, 4);
    struct dsi_engine_opts o;
    small_opts(&o);
    struct dsi_engine *e = start(&m, &o);
    struct coll c;
    coll_init(&c);
    struct rec r;
    int32_t prompt[10], want[20];
    make_prompt(prompt, 10, 2);
    struct dsi_request_params rp;
    greedy_params(&rp, prompt, 10, 20);
    CHECK_EQ_INT(submit(e, &rp, &r, &c), 0);
    coll_wait(&c, 1);
    ref_tokens(prompt, 10, 20, NULL, 0, want);
    CHECK_EQ_INT(r.n, 20);
    CHECK(memcmp(r.tokens, want, sizeof(want)) == 0);
    CHECK_EQ_INT(r.final.finish, DSI_FINISH_LENGTH);
    CHECK_EQ_INT(r.final.token, want[19]);
    CHECK_EQ_INT(r.final.n_prompt_tokens, 10);
    CHECK_EQ_INT(r.final.n_completion_tokens, 20);
    CHECK_EQ_INT(r.after_final + r.wrong_id, 0);
    CHECK(m.max_chunk <= 4);
    CHECK_EQ_INT(m.errors, 0);
    check_pool_empty(e, 64);
    struct dsi_engine_stats st;
    dsi_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.generated_total, 20);
    CHECK_EQ_INT(st.tokens_total, 10 + 19); /* prompt + every decode input */
    CHECK_EQ_INT(st.steps_total, 3 + 19);   /* 10 prompt tokens in chunks of 4 */
    dsi_engine_destroy(e);
    coll_free(&c);
    mock_free(&m);
}

TEST(engine_stop_id_ends_without_text) {
    struct mock m;
    mock_init(&m, 64, 4);
    struct dsi_engine *e = start(&m, NULL);
    struct coll c;
    coll_init(&c);
    struct rec r;
    int32_t prompt[5], want[30];
    make_prompt(prompt, 5, 3);
    ref_tokens(prompt, 5, 30, NULL, 0, want);
    struct dsi_request_params rp;
    greedy_params(&rp, prompt, 5, 30);
    rp.stop_ids[0] = want[3];
    rp.n_stop_ids = 1;
    int n_want = ref_tokens(prompt, 5, 30, rp.stop_ids, 1, want);
    CHECK_EQ_INT(submit(e, &rp, &r, &c), 0);
    coll_wait(&c, 1);
    CHECK_EQ_INT(r.final.finish, DSI_FINISH_STOP);
    CHECK_EQ_INT(r.final.token, -1);
    CHECK_EQ_INT(r.n, n_want - 1); /* the stop token is not delivered */
    CHECK(memcmp(r.tokens, want, (size_t)(n_want - 1) * sizeof(int32_t)) == 0);
    CHECK_EQ_INT(r.final.n_completion_tokens, n_want);
    check_pool_empty(e, 64);
    dsi_engine_destroy(e);
    coll_free(&c);
    mock_free(&m);
}

TEST(engine_chunked_prefill_mixes_with_decode) {
    struct mock m;
    mock_init(&m, 128, 4);
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_batch_tokens = 9;
    struct dsi_engine *e = start(&m, &o);
    struct coll c;
    coll_init(&c);
    struct rec r[3];
    int32_t p[3][40], want[30];
    for (int i = 0; i < 3; i++)
        make_prompt(p[i], 40, 10 + (unsigned)i);
    struct dsi_request_params rp;
    mock_pause(&m, true);
    greedy_params(&rp, p[0], 2, 30);
    CHECK_EQ_INT(submit(e, &rp, &r[0], &c), 0);
    mock_wait_entered(&m, 1); /* the short one is in the batch */
    greedy_params(&rp, p[1], 40, 30);
    CHECK_EQ_INT(submit(e, &rp, &r[1], &c), 0);
    greedy_params(&rp, p[2], 37, 30);
    CHECK_EQ_INT(submit(e, &rp, &r[2], &c), 0);
    mock_pause(&m, false);
    coll_wait(&c, 3);
    CHECK(m.mixed_steps > 0);
    CHECK(m.max_chunk <= 4);
    CHECK(m.max_step_tokens <= 9);
    int lens[3] = {2, 40, 37};
    for (int i = 0; i < 3; i++) {
        ref_tokens(p[i], lens[i], 30, NULL, 0, want);
        CHECK_EQ_INT(r[i].n, 30);
        CHECK(memcmp(r[i].tokens, want, sizeof(want)) == 0);
    }
    CHECK_EQ_INT(m.errors, 0);
    check_pool_empty(e, 128);
    dsi_engine_destroy(e);
    coll_free(&c);
    mock_free(&m);
}

/* Submits n requests under a given pool; returns preemptions; fills r. */
static uint64_t run_group(int n_blocks, int n, struct rec *r, float temperature, int *errors, int *started) {
    struct mock m;
    mock_init(&m, n_blocks, 4);
    struct dsi_engine_opts o;
    small_opts(&o);
    struct dsi_engine *e = start(&m, &o);
    struct coll c;
    coll_init(&c);
    mock_pause(&m, true);
    for (int i = 0; i < n; i++) {
        int32_t prompt[16];
        make_prompt(prompt, 6 + i, 100 + (unsigned)i);
        struct dsi_request_params rp;
        greedy_params(&rp, prompt, 6 + i, 36);
        rp.sampling.temperature = temperature;
        rp.sampling.seed = 7 + (uint64_t)i;
        CHECK_EQ_INT(submit(e, &rp, &r[i], &c), 0);
    }
    mock_pause(&m, false);
    coll_wait(&c, n);
    struct dsi_engine_stats st;
    dsi_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.kv_blocks_used, 0);
    CHECK_EQ_INT(st.running + st.waiting, 0);
    dsi_engine_destroy(e);
    coll_free(&c);
    *errors = m.errors;
    memcpy(started, m.started, sizeof(m.started));
    mock_free(&m);
    return st.preempted_total;
}

TEST(engine_preemption_recompute_gives_same_tokens) {
    enum { N = 8 };
    struct rec *calm = calloc(N, sizeof(struct rec)), *tight = calloc(N, sizeof(struct rec));
    int err_calm = 0, err_tight = 0, started[64], recomputed = 0;
    /* Each request grows to 11..13 blocks; 28 blocks force preemptions. */
    uint64_t pre_calm = run_group(256, N, calm, 0.0f, &err_calm, started);
    uint64_t pre_tight = run_group(28, N, tight, 0.0f, &err_tight, started);
    CHECK_EQ_INT(pre_calm, 0);
    CHECK(pre_tight > 0);
    /* The oldest request is never the victim; the preempted ones were recomputed. */
    CHECK_EQ_INT(started[1], 1);
    for (int i = 1; i <= N; i++)
        recomputed += started[i] - 1;
    CHECK(recomputed > 0 && (uint64_t)recomputed <= pre_tight);
    CHECK_EQ_INT(err_calm + err_tight, 0);
    for (int i = 0; i < N; i++) {
        int32_t prompt[16], want[36];
        make_prompt(prompt, 6 + i, 100 + (unsigned)i);
        ref_tokens(prompt, 6 + i, 36, NULL, 0, want);
        CHECK_EQ_INT(tight[i].n, 36); /* nothing delivered twice after recompute */
        CHECK(memcmp(tight[i].tokens, want, sizeof(want)) == 0);
        CHECK(memcmp(calm[i].tokens, want, sizeof(want)) == 0);
        CHECK_EQ_INT(tight[i].n_finals, 1);
        CHECK_EQ_INT(tight[i].after_final + tight[i].wrong_id, 0);
    }
    free(calm);
    free(tight);
}

TEST(engine_seeded_sampling_reproducible_under_pressure) {
    enum { N = 8 };
    struct rec *a = calloc(N, sizeof(struct rec)), *b = calloc(N, sizeof(struct rec));
    int ea = 0, eb = 0, started[64];
    run_group(256, N, a, 1.0f, &ea, started);
    uint64_t pre = run_group(28, N, b, 1.0f, &eb, started);
    CHECK(pre > 0);
    CHECK_EQ_INT(ea + eb, 0);
    int differs_from_greedy = 0;
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(a[i].n, 36);
        CHECK_EQ_INT(b[i].n, 36);
        CHECK(memcmp(a[i].tokens, b[i].tokens, sizeof(a[i].tokens)) == 0);
        int32_t prompt[16], want[36];
        make_prompt(prompt, 6 + i, 100 + (unsigned)i);
        ref_tokens(prompt, 6 + i, 36, NULL, 0, want);
        differs_from_greedy += memcmp(a[i].tokens, want, sizeof(want)) != 0;
    }
    CHECK(differs_from_greedy > 0); /* the sampler really sampled */
    free(a);
    free(b);
}

TEST(engine_queue_full) {
    struct mock m;
    mock_init(&m, 64, 4);
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 1;
    o.max_queued = 2;
    struct dsi_engine *e = start(&m, &o);
    struct coll c;
    coll_init(&c);
    struct rec r[4];
    int32_t prompt[4];
    make_prompt(prompt, 4, 5);
    struct dsi_request_params rp;
    greedy_params(&rp, prompt, 4, 5);
    mock_pause(&m, true);
    CHECK_EQ_INT(submit(e, &rp, &r[0], &c), 0);
    mock_wait_entered(&m, 1);
    CHECK_EQ_INT(submit(e, &rp, &r[1], &c), 0);
    CHECK_EQ_INT(submit(e, &rp, &r[2], &c), 0);
    CHECK_EQ_INT(submit(e, &rp, &r[3], &c), DSI_EFULL);
    struct dsi_engine_stats st;
    dsi_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.running, 1);
    CHECK_EQ_INT(st.waiting, 2);
    mock_pause(&m, false);
    coll_wait(&c, 3);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(r[i].final.finish, DSI_FINISH_LENGTH);
    CHECK_EQ_INT(r[3].n_finals, 0);
    dsi_engine_destroy(e);
    coll_free(&c);
    mock_free(&m);
}

TEST(engine_queue_timeout_gives_etimedout) {
    struct mock m;
    mock_init(&m, 64, 4);
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 1;
    o.queue_timeout_ms = 300;
    struct dsi_engine *e = start(&m, &o);
    struct coll c;
    coll_init(&c);
    struct rec r[2];
    int32_t prompt[4];
    make_prompt(prompt, 4, 6);
    struct dsi_request_params rp;
    greedy_params(&rp, prompt, 4, 5);
    mock_pause(&m, true);
    CHECK_EQ_INT(submit(e, &rp, &r[0], &c), 0);
    mock_wait_entered(&m, 1);
    CHECK_EQ_INT(submit(e, &rp, &r[1], &c), 0);
    sleep_ms(400); /* past the queue timeout while the first one holds the only slot */
    mock_pause(&m, false);
    coll_wait(&c, 2);
    CHECK_EQ_INT(r[0].final.finish, DSI_FINISH_LENGTH);
    CHECK_EQ_INT(r[1].final.finish, DSI_FINISH_ERROR);
    CHECK_EQ_INT(r[1].final.error, DSI_ETIMEDOUT);
    CHECK_EQ_INT(r[1].n, 0);
    check_pool_empty(e, 64);
    dsi_engine_destroy(e);
    coll_free(&c);
    mock_free(&m);
}

TEST(engine_deadline_cuts_running_and_waiting) {
    struct mock m;
    mock_init(&m, 64, 4);
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 1;
    o.queue_timeout_ms = 0;
    struct dsi_engine *e = start(&m, &o);
    struct coll c;
    coll_init(&c);
    struct rec r[2];
    int32_t prompt[3];
    make_prompt(prompt, 3, 7);
    struct dsi_request_params rp;
    greedy_params(&rp, prompt, 3, 200);
    rp.deadline_ms = now_ms() + 300;
    mock_pause(&m, true);
    CHECK_EQ_INT(submit(e, &rp, &r[0], &c), 0);
    mock_wait_entered(&m, 1);
    CHECK_EQ_INT(submit(e, &rp, &r[1], &c), 0);
    while (now_ms() <= rp.deadline_ms)
        sleep_ms(20);
    mock_pause(&m, false);
    coll_wait(&c, 2);
    /* The running one got its first token from the step in flight, then was cut. */
    CHECK_EQ_INT(r[0].final.finish, DSI_FINISH_LENGTH);
    CHECK_EQ_INT(r[0].final.error, DSI_ETIMEDOUT);
    CHECK_EQ_INT(r[0].n, 1);
    CHECK_EQ_INT(r[1].final.finish, DSI_FINISH_ERROR);
    CHECK_EQ_INT(r[1].final.error, DSI_ETIMEDOUT);
    CHECK_EQ_INT(r[1].n, 0);
    check_pool_empty(e, 64);
    dsi_engine_destroy(e);
    coll_free(&c);
    mock_free(&m);
}

TEST(engine_cancel_running_and_waiting) {
    struct mock m;
    mock_init(&m, 64, 4);
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 1;
    struct dsi_engine *e = start(&m, &o);
    struct coll c;
    coll_init(&c);
    struct rec r[2];
    int32_t prompt[3];
    make_prompt(prompt, 3, 8);
    struct dsi_request_params rp;
    greedy_params(&rp, prompt, 3, 200);
    mock_pause(&m, true);
    CHECK_EQ_INT(submit(e, &rp, &r[0], &c), 0);
    mock_wait_entered(&m, 1);
    CHECK_EQ_INT(submit(e, &rp, &r[1], &c), 0);
    CHECK_EQ_INT(dsi_engine_cancel(e, r[0].id), 0);
    CHECK_EQ_INT(dsi_engine_cancel(e, r[1].id), 0);
    CHECK_EQ_INT(dsi_engine_cancel(e, 999999), DSI_ENOENT);
    mock_pause(&m, false);
    coll_wait(&c, 2);
    CHECK_EQ_INT(r[0].final.finish, DSI_FINISH_CANCELLED);
    CHECK(r[0].n <= 1); /* at most the token of the step already in flight */
    CHECK_EQ_INT(r[1].final.finish, DSI_FINISH_CANCELLED);
    CHECK_EQ_INT(r[1].n, 0);
    CHECK_EQ_INT(dsi_engine_cancel(e, r[0].id), DSI_ENOENT);
    check_pool_empty(e, 64);
    dsi_engine_destroy(e);
    coll_free(&c);
    mock_free(&m);
}

TEST(engine_drain_finishes_queued_and_refuses_new) {
    struct mock m;
    mock_init(&m, 64, 4);
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 1;
    struct dsi_engine *e = start(&m, &o);
    struct coll c;
    coll_init(&c);
    struct rec r[3];
    int32_t prompt[3];
    make_prompt(prompt, 3, 9);
    struct dsi_request_params rp;
    greedy_params(&rp, prompt, 3, 10);
    mock_pause(&m, true);
    CHECK_EQ_INT(submit(e, &rp, &r[0], &c), 0);
    mock_wait_entered(&m, 1);
    CHECK_EQ_INT(submit(e, &rp, &r[1], &c), 0);
    dsi_engine_drain(e);
    CHECK_EQ_INT(submit(e, &rp, &r[2], &c), DSI_ESTATE);
    mock_pause(&m, false);
    coll_wait(&c, 2);
    CHECK_EQ_INT(r[0].final.finish, DSI_FINISH_LENGTH);
    CHECK_EQ_INT(r[1].final.finish, DSI_FINISH_LENGTH);
    CHECK_EQ_INT(r[1].n, 10);
    CHECK_EQ_INT(r[2].n_finals, 0);
    dsi_engine_destroy(e);
    coll_free(&c);
    mock_free(&m);
}

static void *unpause_later(void *arg) {
    sleep_ms(20);
    mock_pause(arg, false);
    return NULL;
}

TEST(engine_destroy_cancels_everything_once) {
    struct mock m;
    mock_init(&m, 64, 4);
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 2;
    struct dsi_engine *e = start(&m, &o);
    struct coll c;
    coll_init(&c);
    struct rec r[5];
    int32_t prompt[3];
    make_prompt(prompt, 3, 11);
    struct dsi_request_params rp;
    greedy_params(&rp, prompt, 3, 200);
    mock_pause(&m, true);
    for (int i = 0; i < 5; i++)
        CHECK_EQ_INT(submit(e, &rp, &r[i], &c), 0);
    mock_wait_entered(&m, 1);
    /* Destroy while a step is in flight: a helper lets the step go on once
     * destroy has asked the scheduler to stop, so nothing can finish first. */
    pthread_t t;
    CHECK_EQ_INT(pthread_create(&t, NULL, unpause_later, &m), 0);
    dsi_engine_destroy(e);
    pthread_join(t, NULL);
    CHECK_EQ_INT(c.finals, 5);
    for (int i = 0; i < 5; i++) {
        CHECK_EQ_INT(r[i].n_finals, 1);
        CHECK_EQ_INT(r[i].after_final, 0);
        CHECK_EQ_INT(r[i].final.finish, DSI_FINISH_CANCELLED);
    }
    coll_free(&c);
    mock_free(&m);
}

TEST(engine_backend_failure_fails_the_batch) {
    struct mock m;
    mock_init(&m, 64, 4);
    struct dsi_engine *e = start(&m, NULL);
    struct coll c;
    coll_init(&c);
    struct rec r[2];
    int32_t prompt[3];
    make_prompt(prompt, 3, 12);
    struct dsi_request_params rp;
    greedy_params(&rp, prompt, 3, 50);
    mock_pause(&m, true);
    m.fail_rc = DSI_ECUDA;
    CHECK_EQ_INT(submit(e, &rp, &r[0], &c), 0);
    mock_pause(&m, false);
    coll_wait(&c, 1);
    CHECK_EQ_INT(r[0].final.finish, DSI_FINISH_ERROR);
    CHECK_EQ_INT(r[0].final.error, DSI_ECUDA);
    check_pool_empty(e, 64);
    /* The engine keeps serving after a failed step. */
    CHECK_EQ_INT(submit(e, &rp, &r[1], &c), 0);
    coll_wait(&c, 2);
    CHECK_EQ_INT(r[1].final.finish, DSI_FINISH_LENGTH);
    dsi_engine_destroy(e);
    coll_free(&c);
    mock_free(&m);
}

TEST(engine_runs_256_sequences_in_one_batch) {
    enum { N = 256 };
    struct mock m;
    mock_init(&m, N * 4, 4);
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = N;
    o.max_queued = N;
    o.max_batch_tokens = 4 * N;
    struct dsi_engine *e = start(&m, &o);
    struct coll c;
    coll_init(&c);
    struct rec *r = calloc(N, sizeof(struct rec));
    int32_t prompt[4];
    make_prompt(prompt, 4, 13);
    struct dsi_request_params rp;
    greedy_params(&rp, prompt, 4, 8);
    mock_pause(&m, true);
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(submit(e, &rp, &r[i], &c), 0);
    mock_pause(&m, false);
    coll_wait(&c, N);
    CHECK_EQ_INT(m.max_seqs, N);
    int32_t want[8];
    ref_tokens(prompt, 4, 8, NULL, 0, want);
    int bad = 0;
    for (int i = 0; i < N; i++)
        bad += r[i].n != 8 || memcmp(r[i].tokens, want, sizeof(want)) != 0;
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(m.errors, 0);
    check_pool_empty(e, N * 4);
    dsi_engine_destroy(e);
    free(r);
    coll_free(&c);
    mock_free(&m);
}

/* Thousands of random submits and cancels on a small pool with preemption:
 * every accepted request gets exactly one final event, finished ones carry the
 * reference tokens, and every block comes back. */
TEST(engine_stress_random_admit_cancel_finish) {
    enum { N = 3000, NB = 48 };
    struct mock m;
    mock_init(&m, NB, 4);
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 16;
    o.max_queued = 48;
    o.max_batch_tokens = 32;
    struct dsi_engine *e = start(&m, &o);
    struct coll c;
    coll_init(&c);
    struct rec *r = calloc(N, sizeof(struct rec));
    int32_t(*prompts)[24] = calloc(N, sizeof(*prompts));
    int *plen = calloc(N, sizeof(int)), *maxt = calloc(N, sizeof(int)), *accepted = calloc(N, sizeof(int));
    int n_acc = 0, n_full = 0;
    uint64_t rnd = 42;
    for (int i = 0; i < N; i++) {
        rnd = mix64(rnd);
        plen[i] = 1 + (int)(rnd % 24);
        maxt[i] = 1 + (int)((rnd >> 8) % 40);
        make_prompt(prompts[i], plen[i], 5000 + (unsigned)i);
        struct dsi_request_params rp;
        greedy_params(&rp, prompts[i], plen[i], maxt[i]);
        int rc = submit(e, &rp, &r[i], &c);
        if (rc == 0) {
            accepted[i] = 1;
            n_acc++;
        } else {
            CHECK_EQ_INT(rc, DSI_EFULL);
            n_full++;
            sleep_ms(1);
        }
        if ((rnd >> 20) % 3 == 0 && i > 0) {
            /* Mostly recent ones, which are likely still waiting or running. */
            int back = 1 + (int)((rnd >> 24) % 40);
            int j = i - back < 0 ? 0 : i - back;
            if (accepted[j]) {
                int crc = dsi_engine_cancel(e, r[j].id);
                CHECK(crc == 0 || crc == DSI_ENOENT);
            }
        }
    }
    coll_wait(&c, n_acc);
    struct dsi_engine_stats st;
    dsi_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.kv_blocks_used, 0);
    CHECK_EQ_INT(st.kv_blocks_free, NB);
    CHECK_EQ_INT(st.running + st.waiting, 0);
    int bad = 0, finished = 0, cancelled = 0;
    for (int i = 0; i < N; i++) {
        if (!accepted[i]) continue;
        if (r[i].n_finals != 1 || r[i].after_final || r[i].wrong_id) bad++;
        if (r[i].final.finish == DSI_FINISH_CANCELLED) {
            cancelled++;
            continue;
        }
        if (r[i].final.finish != DSI_FINISH_LENGTH) {
            bad++;
            continue;
        }
        finished++;
        int32_t want[40];
        ref_tokens(prompts[i], plen[i], maxt[i], NULL, 0, want);
        if (r[i].n != maxt[i] || memcmp(r[i].tokens, want, (size_t)maxt[i] * sizeof(int32_t)) != 0) bad++;
    }
    fprintf(stderr, "  stress: %d accepted (%d finished, %d cancelled), %d queue-full, %llu preemptions\n",
            n_acc, finished, cancelled, n_full, (unsigned long long)st.preempted_total);
    CHECK_EQ_INT(bad, 0);
    CHECK(finished > 0 && cancelled > 0);
    CHECK_EQ_INT(m.errors, 0);
    dsi_engine_destroy(e);
    free(r);
    free(prompts);
    free(plen);
    free(maxt);
    free(accepted);
    coll_free(&c);
    mock_free(&m);
}

int main(void) {
    dsi_log_set_level(DSI_LOG_WARN);
    RUN(engine_create_rejects_bad_opts);
    RUN(engine_submit_rejects_bad_requests);
    RUN(engine_single_request_matches_reference);
    RUN(engine_stop_id_ends_without_text);
    RUN(engine_chunked_prefill_mixes_with_decode);
    RUN(engine_preemption_recompute_gives_same_tokens);
    RUN(engine_seeded_sampling_reproducible_under_pressure);
    RUN(engine_queue_full);
    RUN(engine_queue_timeout_gives_etimedout);
    RUN(engine_deadline_cuts_running_and_waiting);
    RUN(engine_cancel_running_and_waiting);
    RUN(engine_drain_finishes_queued_and_refuses_new);
    RUN(engine_destroy_cancels_everything_once);
    RUN(engine_backend_failure_fails_the_batch);
    RUN(engine_runs_256_sequences_in_one_batch);
    RUN(engine_stress_random_admit_cancel_finish);
    return test_summary();
}
