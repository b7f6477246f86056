/*
 * test_engine_score.c: teacher-forced scoring requests (dsi_request_params.score)
 * against the mock backend of test_engine_util.h: one event per position with the
 * log-probability of the next given token, computed from the logits the mock
 * returns for exactly that prefix; the same numbers beside generating requests,
 * and after preemption (nothing scored twice, nothing skipped).
 */
#include <math.h>
#include <stdio.h>

#include "test_engine_util.h"

struct scored {
    int32_t tok[MAX_REC_TOKENS];
    float lp[MAX_REC_TOKENS];
    int n, n_finals, after_final;
    struct dsi_token_event final;
    struct coll *c;
};

static void on_score(void *user, const struct dsi_token_event *ev) {
    struct scored *s = user;
    pthread_mutex_lock(&s->c->mu);
    if (s->n_finals > 0) {
        s->after_final++;
    } else {
        if (s->n < MAX_REC_TOKENS) {
            s->tok[s->n] = ev->token;
            s->lp[s->n++] = ev->logprob;
        }
        if (ev->finished) {
            s->n_finals++;
            s->final = *ev;
            s->c->finals++;
            pthread_cond_broadcast(&s->c->cv);
        }
    }
    pthread_mutex_unlock(&s->c->mu);
}

static int submit_score(struct dsi_engine *e, const int32_t *prompt, int n, struct scored *s, struct coll *c) {
    memset(s, 0, sizeof *s);
    s->c = c;
    struct dsi_request_params rp;
    greedy_params(&rp, prompt, n, 0);
    rp.score = true;
    char *err = NULL;
    int rc = dsi_engine_submit(e, &rp, on_score, s, NULL, &err);
    if (rc) fprintf(stderr, "  submit: %s\n", err ? err : "?");
    free(err);
    return rc;
}

/* log softmax(ref_logits(prompt[0..p]))[prompt[p+1]], independently of the engine. */
static double want_lp(const int32_t *prompt, int p) {
    float lg[VOCAB];
    ref_logits(prompt, p + 1, lg);
    double mx = lg[0], sum = 0;
    for (int v = 1; v < VOCAB; v++)
        if (lg[v] > mx) mx = lg[v];
    for (int v = 0; v < VOCAB; v++) sum += exp((double)lg[v] - mx);
    return (double)lg[prompt[p + 1]] - mx - log(sum);
}

/* Every position of prompt scored once, in order, with the reference's value. */
static void check_scored(const struct scored *s, const int32_t *prompt, int n) {
    CHECK_EQ_INT(s->n, n - 1);
    CHECK_EQ_INT(s->n_finals, 1);
    CHECK_EQ_INT(s->after_final, 0);
    CHECK_EQ_INT(s->final.finish, DSI_FINISH_LENGTH);
    CHECK_EQ_INT(s->final.n_prompt_tokens, n);
    int bad = 0;
    for (int p = 0; p + 1 < n && p < s->n; p++) {
        if (s->tok[p] != prompt[p + 1]) bad++;
        if (fabs((double)s->lp[p] - want_lp(prompt, p)) > 1e-6 || !(s->lp[p] <= 0.0f)) bad++;
    }
    CHECK_EQ_INT(bad, 0);
}

TEST(engine_score_rejects_what_it_cannot_score) {
    struct dsi_engine_opts o;
    small_opts(&o);
    struct mock m;
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, 64, &o);
    int32_t prompt[8];
    make_prompt(prompt, 8, 3);
    struct dsi_request_params rp;
    char *err = NULL;
    struct rec r;
    memset(&r, 0, sizeof r);
    r.c = &c;
    greedy_params(&rp, prompt, 1, 0); /* one token: no next token to score */
    rp.score = true;
    CHECK_EQ_INT(dsi_engine_submit(e, &rp, on_event, &r, NULL, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "at least 2"));
    free(err);
    err = NULL;
    greedy_params(&rp, prompt, 8, 4); /* scoring generates nothing */
    rp.score = true;
    CHECK_EQ_INT(dsi_engine_submit(e, &rp, on_event, &r, NULL, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "max_tokens"));
    free(err);
    mock_engine_stop(e, &c, &m);
}

TEST(engine_score_gives_each_positions_logprob) {
    struct dsi_engine_opts o;
    small_opts(&o);
    struct mock m;
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, 64, &o);
    int32_t prompt[12];
    make_prompt(prompt, 12, 7);
    struct scored s;
    CHECK_EQ_INT(submit_score(e, prompt, 12, &s, &c), 0);
    coll_wait(&c, 1);
    check_scored(&s, prompt, 12);
    CHECK_EQ_INT(s.final.token, prompt[11]);
    CHECK_EQ_INT(m.errors, 0);
    check_pool_empty(e, 64);
    struct dsi_engine_stats st;
    dsi_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.generated_total, 0);
    CHECK_EQ_INT(st.tokens_total, 11); /* the last given token is never fed */
    CHECK_EQ_INT(st.steps_total, 11);  /* one logits row per position */
    mock_engine_stop(e, &c, &m);
}

/* The same text scored twice: the second finds its prefix cached (prefix_cache
 * is on by default) and must still compute and score every position. */
TEST(engine_score_ignores_cached_prefix_it_did_not_score) {
    struct dsi_engine_opts o;
    small_opts(&o);
    struct mock m;
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, 64, &o);
    int32_t prompt[18];
    make_prompt(prompt, 18, 11);
    struct scored s[2];
    for (int k = 0; k < 2; k++) {
        CHECK_EQ_INT(submit_score(e, prompt, 18, &s[k], &c), 0);
        coll_wait(&c, k + 1);
        check_scored(&s[k], prompt, 18);
    }
    struct dsi_engine_stats st;
    dsi_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.prefix_hit_tokens, 0);
    CHECK_EQ_INT(st.tokens_total, 2 * 17);
    CHECK_EQ_INT(m.errors, 0);
    mock_engine_stop(e, &c, &m);
}

/* Scoring requests beside generating ones, in a pool that forces preemption:
 * every score as the reference, every generated token too. */
TEST(engine_score_survives_preemption_beside_generation) {
    enum { N = 6 };
    for (int tight = 0; tight < 2; tight++) {
        struct dsi_engine_opts o;
        small_opts(&o);
        struct mock m;
        struct coll c;
        int n_blocks = tight ? 20 : 256;
        struct dsi_engine *e = mock_engine_start(&m, &c, n_blocks, &o);
        mock_pause(&m, true); /* all queued before the first step */
        struct scored *s = calloc(N, sizeof *s);
        struct rec *r = calloc(N, sizeof *r);
        int32_t sp[N][40], gp[N][8];
        struct dsi_request_params rp[N];
        for (int i = 0; i < N; i++) {
            make_prompt(sp[i], 20 + 3 * i, 50 + (unsigned)i);
            CHECK_EQ_INT(submit_score(e, sp[i], 20 + 3 * i, &s[i], &c), 0);
            greedy_request(&rp[i], gp[i], 5, 80 + (unsigned)i, 24);
            CHECK_EQ_INT(submit(e, &rp[i], &r[i], &c), 0);
        }
        mock_pause(&m, false);
        coll_wait(&c, 2 * N);
        struct dsi_engine_stats st;
        dsi_engine_get_stats(e, &st);
        if (tight) CHECK(st.preempted_total > 0);
        else CHECK_EQ_INT(st.preempted_total, 0);
        for (int i = 0; i < N; i++) {
            check_scored(&s[i], sp[i], 20 + 3 * i);
            int32_t want[24];
            ref_tokens(gp[i], 5, 24, NULL, 0, want);
            CHECK_EQ_INT(r[i].n, 24);
            CHECK(memcmp(r[i].tokens, want, sizeof want) == 0);
        }
        CHECK_EQ_INT(m.errors, 0);
        check_pool_empty(e, n_blocks);
        mock_engine_stop(e, &c, &m);
        free(s);
        free(r);
    }
}

int main(void) {
    dsi_log_set_level(DSI_LOG_WARN);
    RUN(engine_score_rejects_what_it_cannot_score);
    RUN(engine_score_gives_each_positions_logprob);
    RUN(engine_score_ignores_cached_prefix_it_did_not_score);
    RUN(engine_score_survives_preemption_beside_generation);
    return test_summary();
}
