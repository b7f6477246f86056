/*
 * test_engine_prefix.c: the engine's prefix cache against the mock backend of
 * test_engine_util.h, whose store notices a block written for another history.
 *
 * It proves that a repeated prompt maps its whole blocks from the cache and
 * computes only the rest (the mock sees no prefill from position 0, fewer
 * tokens fed), with tokens equal to the reference and to a run with the cache
 * off; that a follow-up turn reuses the generated tokens' blocks too; that
 * another namespace never hits; that the counters (hit, miss, cached blocks,
 * evictions) and the events' n_cached_tokens say so; and that under KV
 * pressure with preemption and cancels the block manager's invariants hold
 * after every step (check_kv) and the pool comes back whole. And n > 1: the
 * sequences compute the prompt once, get their own index and id, sample with
 * seed + index, and a bad n is refused without queueing anything.
 */
#include "test_engine_util.h"

static void prefix_opts(struct dsi_engine_opts *o, bool on) {
    small_opts(o);
    o->prefix_cache = on;
    o->check_kv = true;
}

/* Runs one greedy request to its end and checks its tokens against the reference. */
static struct dsi_token_event run_one(struct dsi_engine *e, struct coll *c, const int32_t *prompt, int n, int max,
                                      const uint64_t ns[2], int32_t *out) {
    struct rec r;
    struct dsi_request_params rp;
    greedy_params(&rp, prompt, n, max);
    rp.cache_ns[0] = ns[0];
    rp.cache_ns[1] = ns[1];
    int before = c->finals;
    CHECK_EQ_INT(submit(e, &rp, &r, c), 0);
    coll_wait(c, before + 1);
    int32_t want[64];
    ref_tokens(prompt, n, max, NULL, 0, want);
    CHECK_EQ_INT(r.n, max);
    CHECK(memcmp(r.tokens, want, (size_t)max * sizeof(int32_t)) == 0);
    if (out) memcpy(out, r.tokens, (size_t)max * sizeof(int32_t));
    return r.final;
}

TEST(engine_prefix_repeat_maps_blocks_and_computes_the_rest) {
    struct dsi_engine_opts o;
    prefix_opts(&o, true);
    struct mock m;
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, 64, &o);
    int32_t prompt[48], gen[8];
    uint64_t ns[2] = {5, 6}, other[2] = {5, 7};
    make_prompt(prompt, 30, 11);
    struct dsi_token_event f = run_one(e, &c, prompt, 30, 8, ns, gen);
    CHECK_EQ_INT(f.n_cached_tokens, 0);
    struct dsi_engine_stats st;
    dsi_engine_get_stats(e, &st);
    uint64_t fed = st.tokens_total;
    CHECK_EQ_INT(st.kv_blocks_cached, 9); /* 37 computed positions: 9 whole blocks of 4 */

    /* the same prompt: 28 tokens (7 blocks, one token kept back) from the cache */
    f = run_one(e, &c, prompt, 30, 8, ns, NULL);
    CHECK_EQ_INT(f.n_cached_tokens, 28);
    CHECK_EQ_INT(f.n_prompt_tokens, 30);
    CHECK_EQ_INT(m.started[2], 0); /* never prefilled from position 0 */
    dsi_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.tokens_total - fed, 2 + 7); /* prompt tokens 28, 29 + 7 decode inputs */
    CHECK_EQ_INT(st.prefix_hit_tokens, 28);
    CHECK_EQ_INT(st.prefix_miss_tokens, 30 + 2);

    /* the next turn: prompt + answer + 3 new tokens; the answer's blocks hit too */
    memcpy(prompt + 30, gen, sizeof gen);
    make_prompt(prompt + 38, 3, 12);
    f = run_one(e, &c, prompt, 41, 4, ns, NULL);
    CHECK_EQ_INT(f.n_cached_tokens, 36);

    /* another namespace (cache group, salt) shares nothing */
    f = run_one(e, &c, prompt, 30, 8, other, NULL);
    CHECK_EQ_INT(f.n_cached_tokens, 0);
    CHECK(m.started[4] == 1);
    dsi_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.kv_check_failures, 0);
    CHECK_EQ_INT(st.kv_evictions_total, 0);
    CHECK_EQ_INT(m.errors, 0);
    check_pool_empty(e, 64); /* idle cached blocks count as free */
    mock_engine_stop(e, &c, &m);

    /* off: the same tokens, nothing cached */
    prefix_opts(&o, false);
    e = mock_engine_start(&m, &c, 64, &o);
    run_one(e, &c, prompt, 30, 8, ns, NULL);
    f = run_one(e, &c, prompt, 30, 8, ns, NULL);
    CHECK_EQ_INT(f.n_cached_tokens, 0);
    CHECK_EQ_INT(m.started[2], 1);
    dsi_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.kv_blocks_cached, 0);
    CHECK_EQ_INT(st.prefix_hit_tokens, 0);
    CHECK_EQ_INT(m.errors, 0);
    mock_engine_stop(e, &c, &m);
}

/* Eight requests share a 12-token prefix in a pool too small for all of them:
 * preemption, recompute from the cache, eviction, and two cancels mid-run. */
TEST(engine_prefix_counts_exact_under_preempt_and_cancel) {
    enum { N = 8, NB = 28 };
    struct dsi_engine_opts o;
    prefix_opts(&o, true);
    struct mock m;
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, NB, &o);
    struct rec *r = calloc(N, sizeof(struct rec));
    int32_t prompt[N][24];
    mock_pause(&m, true);
    for (int i = 0; i < N; i++) {
        make_prompt(prompt[i], 12, 77); /* shared */
        make_prompt(prompt[i] + 12, 2 + i, 200 + (unsigned)i);
        struct dsi_request_params rp;
        greedy_params(&rp, prompt[i], 14 + i, 30);
        CHECK_EQ_INT(submit(e, &rp, &r[i], &c), 0);
    }
    mock_pause(&m, false);
    mock_wait_entered(&m, 12);
    dsi_engine_cancel(e, r[3].id);
    dsi_engine_cancel(e, r[6].id);
    coll_wait(&c, N);
    struct dsi_engine_stats st;
    dsi_engine_get_stats(e, &st);
    CHECK(st.preempted_total > 0);
    CHECK(st.prefix_hit_tokens > 0);
    CHECK(st.kv_evictions_total > 0);
    CHECK_EQ_INT(st.kv_check_failures, 0);
    CHECK_EQ_INT(m.errors, 0);
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(r[i].n_finals, 1);
        CHECK_EQ_INT(r[i].after_final + r[i].wrong_id, 0);
        if (r[i].final.finish == DSI_FINISH_CANCELLED) continue;
        int32_t want[30];
        ref_tokens(prompt[i], 14 + i, 30, NULL, 0, want);
        CHECK_EQ_INT(r[i].n, 30);
        CHECK(memcmp(r[i].tokens, want, sizeof want) == 0);
    }
    check_pool_empty(e, NB);
    CHECK_EQ_INT(st.running + st.waiting, 0);
    free(r);
    mock_engine_stop(e, &c, &m);
}


/* n > 1: events go to rs[ev->index]. */
static void on_event_n(void *user, const struct dsi_token_event *ev) {
    struct rec *rs = user;
    if (ev->index < 0 || ev->index >= DSI_MAX_N) {
        rs[0].wrong_id++;
        return;
    }
    on_event(&rs[ev->index], ev);
}

static int submit_n(struct dsi_engine *e, const struct dsi_request_params *rp, struct rec *rs, struct coll *c) {
    memset(rs, 0, (size_t)DSI_MAX_N * sizeof *rs);
    for (int i = 0; i < DSI_MAX_N; i++) rs[i].c = c;
    uint64_t id = 0;
    /* Events may arrive before submit returns: hold the collector lock until the ids are set. */
    pthread_mutex_lock(&c->mu);
    int rc = dsi_engine_submit(e, rp, on_event_n, rs, &id, NULL);
    for (int i = 0; i < DSI_MAX_N; i++) rs[i].id = rc ? 0 : id + (uint64_t)i;
    pthread_mutex_unlock(&c->mu);
    return rc;
}

TEST(engine_n_shares_the_prompt_and_seeds_each) {
    struct dsi_engine_opts o;
    prefix_opts(&o, true);
    struct mock m;
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, 128, &o);
    struct rec *rs = calloc(DSI_MAX_N, sizeof *rs), *one = calloc(DSI_MAX_N, sizeof *one);
    int32_t prompt[30], want[10];
    struct dsi_request_params rp;
    greedy_request(&rp, prompt, 30, 21, 10);
    rp.n = 4;
    CHECK_EQ_INT(submit_n(e, &rp, rs, &c), 0);
    coll_wait(&c, 4);
    ref_tokens(prompt, 30, 10, NULL, 0, want);
    struct dsi_engine_stats st;
    dsi_engine_get_stats(e, &st);
    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(rs[i].n_finals, 1);
        CHECK_EQ_INT(rs[i].after_final + rs[i].wrong_id, 0);
        CHECK_EQ_INT(rs[i].final.index, i);
        CHECK_EQ_INT(rs[i].n, 10);
        CHECK(memcmp(rs[i].tokens, want, sizeof want) == 0); /* greedy: all equal */
        CHECK_EQ_INT(m.started[rs[i].id], i == 0); /* only sequence 0 prefilled from 0 */
    }
    /* the prompt once (30) + each fork's tail after 7 whole blocks (2) + decode */
    CHECK_EQ_INT(st.tokens_total, 30 + 3 * 2 + 4 * 9);
    CHECK_EQ_INT(rs[1].final.n_cached_tokens, 28);

    /* seeded sampling: sequence i draws like a single request seeded seed + i */
    rp.sampling.temperature = 1.0f;
    rp.sampling.seed = 1000;
    rp.n = 3;
    CHECK_EQ_INT(submit_n(e, &rp, rs, &c), 0);
    coll_wait(&c, 7);
    int distinct = 0;
    for (int i = 0; i < 3; i++) {
        struct dsi_request_params one_p = rp;
        one_p.n = 1;
        one_p.sampling.seed = 1000 + (uint64_t)i;
        int before = c.finals;
        CHECK_EQ_INT(submit(e, &one_p, &one[i], &c), 0);
        coll_wait(&c, before + 1);
        CHECK_EQ_INT(rs[i].n, 10);
        CHECK(memcmp(rs[i].tokens, one[i].tokens, sizeof want) == 0);
        distinct += i > 0 && memcmp(rs[i].tokens, rs[0].tokens, sizeof want) != 0;
    }
    CHECK(distinct > 0); /* the seeds differ, so the samples do */

    /* n out of range, or more than the queue takes: refused, nothing queued */
    rp.n = DSI_MAX_N + 1;
    CHECK_EQ_INT(submit_n(e, &rp, rs, &c), DSI_EINVAL);
    rp.n = -1;
    CHECK_EQ_INT(submit_n(e, &rp, rs, &c), DSI_EINVAL);
    dsi_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.waiting + st.running, 0);
    CHECK_EQ_INT(st.kv_check_failures, 0);
    CHECK_EQ_INT(m.errors, 0);
    check_pool_empty(e, 128);
    mock_engine_stop(e, &c, &m);

    o.max_queued = 3;
    e = mock_engine_start(&m, &c, 128, &o);
    rp.n = 4;
    CHECK_EQ_INT(submit_n(e, &rp, rs, &c), DSI_EFULL);
    rp.n = 3;
    CHECK_EQ_INT(submit_n(e, &rp, rs, &c), 0);
    coll_wait(&c, 3);
    mock_engine_stop(e, &c, &m);
    free(rs);
    free(one);
}

int main(void) {
    RUN(engine_prefix_repeat_maps_blocks_and_computes_the_rest);
    RUN(engine_prefix_counts_exact_under_preempt_and_cancel);
    RUN(engine_n_shares_the_prompt_and_seeds_each);
    return test_summary();
}
