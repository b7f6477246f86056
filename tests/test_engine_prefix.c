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
 * after every step (check_kv) and the pool comes back whole.
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

int main(void) {
    RUN(engine_prefix_repeat_maps_blocks_and_computes_the_rest);
    RUN(engine_prefix_counts_exact_under_preempt_and_cancel);
    return test_summary();
}
