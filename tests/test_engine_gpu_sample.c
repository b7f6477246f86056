/*
 * test_engine_gpu_sample.c: the engine's forward_sample path (backend.h) against a
 * mock backend that has both forward() and forward_sample().
 *
 * The mock keeps each sequence's tokens in a paged store (as test_engine_util.h's) and
 * derives the logits from the history read back through the block table. Its
 * forward_sample picks greedy by argmax (lowest id on ties) and otherwise by
 * inverse CDF in id order over softmax(l / T) with the engine's u, the way the
 * CUDA kernel does; it also checks every u it gets (greedy: 0; else [0, 1)).
 * Counting the calls of each op shows which path each step took.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dsinfer/engine.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "test.h"

#define VOCAB 64
#define MAX_REC 128
#define WAIT_LIMIT_S 60

struct slot {
    uint64_t seq;
    int32_t pos, tok;
};

struct mock {
    struct dsi_backend be;
    struct slot *slots;
    pthread_mutex_t mu;
    int n_forward, n_sample; /* calls of each op (mu) */
    int errors;              /* (mu) */
    int fail_rc;             /* next call fails with this (mu) */
    int sample_vocab;        /* run_all's engine option; forward_sample must get it as n_ids */
};

static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Distinct values, so argmax has no ties; spread of ~16 so temperature 1 draws vary. */
static void ref_logits(const int32_t *toks, int n, float *out) {
    uint64_t h = 0x1234;
    for (int i = 0; i < n; i++)
        h = mix64(h ^ (uint64_t)toks[i] ^ ((uint64_t)i << 32));
    for (int v = 0; v < VOCAB; v++)
        out[v] = (float)((double)(mix64(h + (uint64_t)v) % 1024) + v / 2048.0) / 64.0f;
}

/* Stores the step's tokens and fills one logits row per want_logits entry. */
static void mock_step(struct mock *m, const struct dsi_batch *b, float *logits) {
    int bs = m->be.kv_block_size, row = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        const struct dsi_batch_seq *s = &b->seqs[i];
        if (s->n_tokens < 1 || s->pos < 0 || s->n_blocks * bs < s->pos + s->n_tokens) {
            m->errors++;
            continue;
        }
        for (int t = 0; t < s->n_tokens; t++) {
            int p = s->pos + t;
            struct slot *sl = &m->slots[(size_t)s->block_table[p / bs] * bs + p % bs];
            *sl = (struct slot){s->seq_id, p, s->tokens[t]};
        }
        if (!s->want_logits) continue;
        int n = s->pos + s->n_tokens;
        int32_t *hist = malloc((size_t)n * sizeof *hist);
        for (int p = 0; p < n; p++) {
            const struct slot *sl = &m->slots[(size_t)s->block_table[p / bs] * bs + p % bs];
            if (sl->seq != s->seq_id || sl->pos != p) m->errors++;
            hist[p] = sl->tok;
        }
        ref_logits(hist, n, logits + (size_t)row++ * VOCAB);
        free(hist);
    }
}

static int mock_forward(struct dsi_backend *be, const struct dsi_batch *b, float *logits, char **err) {
    struct mock *m = be->impl;
    pthread_mutex_lock(&m->mu);
    m->n_forward++;
    mock_step(m, b, logits);
    int fail = m->fail_rc;
    m->fail_rc = 0;
    pthread_mutex_unlock(&m->mu);
    if (fail && err) *err = dsi_errf("mock: injected failure");
    return fail;
}

static int32_t argmax_n(const float *l, int n) {
    int32_t best = 0;
    for (int v = 1; v < n; v++)
        if (l[v] > l[best]) best = v;
    return best;
}

/* What the CUDA kernel does for top_k 0 / top_p 1: inverse CDF in id order,
 * over the ids below n_ids where that is set. */
static int32_t pick(const float *l, const struct dsi_sample_params *p) {
    int n = p->n_ids > 0 && p->n_ids < VOCAB ? p->n_ids : VOCAB;
    if (!(p->temperature > 0.0f)) return argmax_n(l, n);
    float mx = l[argmax_n(l, n)];
    double w[VOCAB], z = 0.0;
    for (int v = 0; v < n; v++)
        z += w[v] = exp((double)(l[v] - mx) / p->temperature);
    double acc = 0.0, target = (double)p->u * z;
    for (int v = 0; v < n; v++) {
        acc += w[v];
        if (target < acc) return v;
    }
    return n - 1;
}

static int mock_forward_sample(struct dsi_backend *be, const struct dsi_batch *b,
                               const struct dsi_sample_params *p, int32_t *ids, char **err) {
    struct mock *m = be->impl;
    float logits[64 * VOCAB];
    pthread_mutex_lock(&m->mu);
    m->n_sample++;
    int rows = 0;
    for (int i = 0; i < b->n_seqs; i++)
        rows += b->seqs[i].want_logits;
    if (rows > 64) m->errors++;
    mock_step(m, b, logits);
    for (int r = 0; r < rows && r < 64; r++) {
        bool greedy = !(p[r].temperature > 0.0f);
        if (greedy ? p[r].u != 0.0f : !(p[r].u >= 0.0f && p[r].u < 1.0f)) m->errors++;
        if (p[r].top_k != 0 || p[r].top_p != 1.0f) m->errors++; /* these tests use neither */
        if (p[r].n_ids != m->sample_vocab) m->errors++;
        ids[r] = pick(logits + (size_t)r * VOCAB, &p[r]);
    }
    int fail = m->fail_rc;
    m->fail_rc = 0;
    pthread_mutex_unlock(&m->mu);
    if (fail && err) *err = dsi_errf("mock: injected failure");
    return fail;
}

static const struct dsi_backend_ops ops_both = {
    .name = "mock-sample", .forward = mock_forward, .forward_sample = mock_forward_sample};
static const struct dsi_backend_ops ops_host = {.name = "mock", .forward = mock_forward};

static void mock_init(struct mock *m, const struct dsi_backend_ops *ops) {
    memset(m, 0, sizeof *m);
    m->be.ops = ops;
    m->be.vocab_size = VOCAB;
    m->be.kv_block_size = 4;
    m->be.n_kv_blocks = 256;
    m->be.impl = m;
    m->slots = calloc((size_t)256 * 4, sizeof *m->slots);
    pthread_mutex_init(&m->mu, NULL);
}

static void mock_free(struct mock *m) {
    free(m->slots);
    pthread_mutex_destroy(&m->mu);
}

/* ---- events ---- */

struct rec {
    int32_t tokens[MAX_REC];
    float logprobs[MAX_REC];
    int n_top[MAX_REC];
    int n, n_finals, bad_counts;
    struct dsi_token_event final;
};

struct coll {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int finals;
};

struct sub {
    struct rec *r;
    struct coll *c;
};

static void on_event(void *user, const struct dsi_token_event *ev) {
    struct sub *s = user;
    pthread_mutex_lock(&s->c->mu);
    struct rec *r = s->r;
    if (ev->token >= 0 && r->n < MAX_REC) {
        r->logprobs[r->n] = ev->logprob;
        r->n_top[r->n] = ev->n_top;
        r->tokens[r->n++] = ev->token;
        if (ev->n_completion_tokens != r->n) r->bad_counts++;
    }
    if (ev->finished) {
        r->n_finals++;
        r->final = *ev;
        s->c->finals++;
        pthread_cond_broadcast(&s->c->cv);
    }
    pthread_mutex_unlock(&s->c->mu);
}

struct req {
    int32_t prompt[16];
    int n_prompt, max_tokens;
    struct dsi_sampling sampling;
    int32_t stop;
};

static void req_greedy(struct req *q, unsigned seed, int n_prompt, int max_tokens) {
    memset(q, 0, sizeof *q);
    for (int i = 0; i < n_prompt; i++)
        q->prompt[i] = (int32_t)(mix64(seed * 7919u + (unsigned)i) % VOCAB);
    q->n_prompt = n_prompt;
    q->max_tokens = max_tokens;
    dsi_sampling_defaults(&q->sampling);
    q->sampling.temperature = 0.0f;
    q->stop = -1;
}

/* Runs n requests at once on mock m (all submitted before the first step can
 * start picking them, as far as the queue allows) and waits for every final event. */
static void run_all(struct mock *m, const struct req *q, int n, struct rec *out) {
    struct dsi_engine_opts o;
    dsi_engine_opts_defaults(&o);
    o.max_running = 8;
    o.max_batch_tokens = 64;
    o.prefill_chunk = 8;
    o.max_total_tokens = 256;
    o.sample_vocab = m->sample_vocab;
    struct dsi_engine *e = NULL;
    char *err = NULL;
    CHECK_EQ_INT(dsi_engine_create(&m->be, &o, &e, &err), 0);
    free(err);
    if (!e) return;
    struct coll c;
    memset(&c, 0, sizeof c);
    pthread_mutex_init(&c.mu, NULL);
    pthread_cond_init(&c.cv, NULL);
    struct sub subs[16];
    memset(out, 0, (size_t)n * sizeof *out);
    int accepted = 0;
    for (int i = 0; i < n && i < 16; i++) {
        struct dsi_request_params rp;
        memset(&rp, 0, sizeof rp);
        rp.prompt = q[i].prompt;
        rp.n_prompt = q[i].n_prompt;
        rp.max_tokens = q[i].max_tokens;
        rp.sampling = q[i].sampling;
        if (q[i].stop >= 0) {
            rp.stop_ids[0] = q[i].stop;
            rp.n_stop_ids = 1;
        }
        subs[i] = (struct sub){&out[i], &c};
        int rc = dsi_engine_submit(e, &rp, on_event, &subs[i], NULL, &err);
        CHECK_EQ_INT(rc, 0);
        free(err);
        err = NULL;
        if (rc == 0) accepted++;
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += WAIT_LIMIT_S;
    int wrc = 0;
    pthread_mutex_lock(&c.mu);
    while (c.finals < accepted && wrc == 0)
        wrc = pthread_cond_timedwait(&c.cv, &c.mu, &until);
    CHECK(c.finals == accepted);
    pthread_mutex_unlock(&c.mu);
    dsi_engine_destroy(e);
    pthread_cond_destroy(&c.cv);
    pthread_mutex_destroy(&c.mu);
}

static void check_same(const struct rec *a, const struct rec *b) {
    CHECK_EQ_INT(a->n, b->n);
    for (int i = 0; i < a->n && i < b->n; i++)
        CHECK_EQ_INT(a->tokens[i], b->tokens[i]);
    CHECK_EQ_INT(a->final.finish, b->final.finish);
    CHECK_EQ_INT(a->final.n_completion_tokens, b->final.n_completion_tokens);
    CHECK_EQ_INT(a->final.n_prompt_tokens, b->final.n_prompt_tokens);
}

/* ---- tests ---- */

TEST(gpu_sample_greedy_equals_host_path) {
    struct req q[6];
    for (int i = 0; i < 6; i++)
        req_greedy(&q[i], 11u + (unsigned)i, 3 + i * 2, 10 + i * 3);
    /* one ends on a stop id: the reference's 4th greedy token of run one */
    struct rec host[6], dev[6];
    struct mock mh, md;
    mock_init(&mh, &ops_host);
    run_all(&mh, q, 6, host);
    CHECK(host[2].n >= 4);
    q[2].stop = host[2].tokens[3];
    run_all(&mh, q, 6, host);
    mock_init(&md, &ops_both);
    run_all(&md, q, 6, dev);
    for (int i = 0; i < 6; i++) {
        check_same(&host[i], &dev[i]);
        CHECK_EQ_INT(dev[i].n_finals, 1);
        CHECK_EQ_INT(dev[i].bad_counts, 0);
        CHECK(dev[i].n > 0 && dev[i].logprobs[0] == 0.0f && dev[i].n_top[0] == 0);
    }
    /* the stop token ends the sequence without text, on both paths */
    CHECK_EQ_INT(dev[2].final.finish, DSI_FINISH_STOP);
    CHECK(dev[2].n <= 4);
    CHECK_EQ_INT(dev[0].final.finish, DSI_FINISH_LENGTH);
    CHECK_EQ_INT(dev[0].n, 10);
    /* every step of the device run went through forward_sample */
    CHECK_EQ_INT(md.n_forward, 0);
    CHECK(md.n_sample > 0);
    CHECK_EQ_INT(md.errors, 0);
    CHECK_EQ_INT(mh.n_sample, 0);
    CHECK_EQ_INT(mh.errors, 0);
    mock_free(&mh);
    mock_free(&md);
}

TEST(gpu_sample_logprobs_or_penalties_take_host_path) {
    struct req q[2];
    struct rec r[2], ref[2];
    struct mock m;
    /* alone: a logprobs request never reaches forward_sample */
    req_greedy(&q[0], 5, 6, 8);
    q[0].sampling.logprobs = true;
    q[0].sampling.top_logprobs = 3;
    mock_init(&m, &ops_both);
    run_all(&m, q, 1, r);
    CHECK_EQ_INT(m.n_sample, 0);
    CHECK(m.n_forward > 0);
    CHECK_EQ_INT(r[0].n, 8);
    CHECK(r[0].logprobs[0] < 0.0f); /* a real log-probability from the host sampler */
    CHECK_EQ_INT(r[0].n_top[0], 3);
    mock_free(&m);

    /* a penalty request in the same batch as a plain greedy one: every step with a
     * token for the penalised one is on the host path, and the greedy one's tokens
     * are those of the host run */
    req_greedy(&q[0], 6, 6, 12);
    q[0].sampling.repetition_penalty = 1.3f;
    req_greedy(&q[1], 7, 6, 12);
    mock_init(&m, &ops_host);
    run_all(&m, q, 2, ref);
    mock_free(&m);
    mock_init(&m, &ops_both);
    run_all(&m, q, 2, r);
    CHECK(m.n_forward >= 12); /* one host step at least per penalised token */
    check_same(&ref[0], &r[0]);
    check_same(&ref[1], &r[1]);
    CHECK_EQ_INT(m.errors, 0);
    mock_free(&m);

    /* min_p and presence penalty also keep it on the host */
    req_greedy(&q[0], 8, 4, 5);
    q[0].sampling.temperature = 1.0f;
    q[0].sampling.min_p = 0.1f;
    q[0].sampling.seed = 3;
    req_greedy(&q[1], 9, 4, 5);
    q[1].sampling.presence_penalty = 0.5f;
    mock_init(&m, &ops_both);
    run_all(&m, q, 1, r);
    CHECK_EQ_INT(m.n_sample, 0);
    run_all(&m, q + 1, 1, r);
    CHECK_EQ_INT(m.n_sample, 0);
    CHECK(m.n_forward > 0);
    mock_free(&m);
}

TEST(gpu_sample_seeded_reproducible_and_batch_independent) {
    struct req q[5];
    for (int i = 0; i < 5; i++) {
        req_greedy(&q[i], 30u + (unsigned)i, 5, 24);
        q[i].sampling.temperature = 1.5f;
        q[i].sampling.seed = 100 + (uint64_t)i;
    }
    struct rec a[5], b[5], alone;
    struct mock m;
    mock_init(&m, &ops_both);
    run_all(&m, q, 5, a);
    run_all(&m, q, 5, b);
    for (int i = 0; i < 5; i++) {
        check_same(&a[i], &b[i]);
        CHECK_EQ_INT(a[i].n, 24);
    }
    /* the same request alone: same tokens as in the batch of five */
    run_all(&m, q + 3, 1, &alone);
    check_same(&a[3], &alone);
    CHECK_EQ_INT(m.n_forward, 0);
    CHECK_EQ_INT(m.errors, 0);
    /* sampling really happened: the draw moves it off the greedy continuation */
    struct req g = q[3];
    g.sampling.temperature = 0.0f;
    struct rec greedy;
    run_all(&m, &g, 1, &greedy);
    bool differs = false;
    for (int i = 0; i < greedy.n && i < alone.n; i++)
        differs |= greedy.tokens[i] != alone.tokens[i];
    CHECK(differs);
    /* another seed gives another sequence */
    struct req o = q[3];
    o.sampling.seed = 999;
    struct rec other;
    run_all(&m, &o, 1, &other);
    differs = false;
    for (int i = 0; i < other.n && i < alone.n; i++)
        differs |= other.tokens[i] != alone.tokens[i];
    CHECK(differs);
    mock_free(&m);
}

TEST(gpu_sample_failure_fails_the_request) {
    struct req q;
    req_greedy(&q, 40, 4, 6);
    struct rec r;
    struct mock m;
    mock_init(&m, &ops_both);
    m.fail_rc = DSI_ECUDA;
    run_all(&m, &q, 1, &r);
    CHECK_EQ_INT(m.n_sample, 1);
    CHECK_EQ_INT(m.n_forward, 0);
    CHECK_EQ_INT(r.n_finals, 1);
    CHECK_EQ_INT(r.final.finish, DSI_FINISH_ERROR);
    CHECK_EQ_INT(r.final.error, DSI_ECUDA);
    CHECK_EQ_INT(r.n, 0);
    mock_free(&m);
}

/* A head with padding rows (sample_vocab 40 of 64 ids): the engine hands the
 * limit to forward_sample as n_ids (the mock counts a row without it as an
 * error), no token at or past it comes back on either path, and greedy on the
 * device equals greedy on the host, which masks the same rows. */
TEST(gpu_sample_passes_the_padding_limit) {
    struct req q[4];
    for (int i = 0; i < 4; i++) {
        req_greedy(&q[i], 50u + (unsigned)i, 5, 20);
        if (i >= 2) {
            q[i].sampling.temperature = 2.0f;
            q[i].sampling.seed = 7 + (uint64_t)i;
        }
    }
    struct rec host[4], dev[4], open[4];
    struct mock mh, md;
    mock_init(&mh, &ops_host);
    mock_init(&md, &ops_both);
    mh.sample_vocab = md.sample_vocab = 40;
    run_all(&mh, q, 4, host);
    run_all(&md, q, 4, dev);
    int past = 0;
    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(dev[i].n, 20);
        for (int t = 0; t < dev[i].n; t++)
            past += dev[i].tokens[t] >= 40;
        for (int t = 0; t < host[i].n; t++)
            past += host[i].tokens[t] >= 40;
    }
    CHECK_EQ_INT(past, 0);
    check_same(&host[0], &dev[0]);
    check_same(&host[1], &dev[1]);
    CHECK_EQ_INT(md.n_forward, 0);
    CHECK_EQ_INT(md.errors, 0);
    /* the rows past 40 do win without the limit: the check above can fail */
    md.sample_vocab = 0;
    run_all(&md, q, 4, open);
    past = 0;
    for (int i = 0; i < 4; i++)
        for (int t = 0; t < open[i].n; t++)
            past += open[i].tokens[t] >= 40;
    CHECK(past > 0);
    CHECK_EQ_INT(md.errors, 0);
    mock_free(&mh);
    mock_free(&md);
}

/* A backend that returns an id outside the vocabulary is an internal error, not a token. */
static int bad_forward_sample(struct dsi_backend *be, const struct dsi_batch *b,
                              const struct dsi_sample_params *p, int32_t *ids, char **err) {
    int rc = mock_forward_sample(be, b, p, ids, err);
    ids[0] = VOCAB;
    return rc;
}

TEST(gpu_sample_bad_id_is_an_error) {
    static const struct dsi_backend_ops ops_bad = {
        .name = "mock-bad", .forward = mock_forward, .forward_sample = bad_forward_sample};
    struct req q;
    req_greedy(&q, 41, 4, 6);
    struct rec r;
    struct mock m;
    mock_init(&m, &ops_bad);
    run_all(&m, &q, 1, &r);
    CHECK_EQ_INT(r.n_finals, 1);
    CHECK_EQ_INT(r.final.finish, DSI_FINISH_ERROR);
    CHECK_EQ_INT(r.final.error, DSI_EINTERNAL);
    CHECK_EQ_INT(r.n, 0);
    mock_free(&m);
}

int main(void) {
    dsi_log_set_level(DSI_LOG_ERROR);
    RUN(gpu_sample_greedy_equals_host_path);
    RUN(gpu_sample_logprobs_or_penalties_take_host_path);
    RUN(gpu_sample_seeded_reproducible_and_batch_independent);
    RUN(gpu_sample_failure_fails_the_request);
    RUN(gpu_sample_bad_id_is_an_error);
    RUN(gpu_sample_passes_the_padding_limit);
    return test_summary();
}
