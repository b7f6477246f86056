/*
 * test_engine_life.c: how requests leave the engine other than by running to
 * their length, against the mock backend of test_engine_util.h.
 *
 * It proves that a full queue refuses with DSI_EFULL, that the queue timeout
 * and a request's deadline end it with DSI_ETIMEDOUT (running or waiting),
 * that cancel ends running and waiting requests, that drain finishes what is
 * queued and refuses new work, that destroy cancels everything with exactly
 * one final event each, and that a failed backend step fails its batch while
 * the engine keeps serving, unless the backend says it is dead: then every
 * live request fails and new ones are refused. A random stress of admits and cancels checks that
 * every accepted request gets one final event and every KV block comes back.
 * Most tests hold the mock inside forward() to pin the engine's state while
 * they act; none asserts on timing. What the scheduler computes is in
 * test_engine_sched.c.
 */
#include "test_engine_util.h"
#include "dsinfer/clock.h"

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- tests ---- */

TEST(engine_queue_full) {
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 1;
    o.max_queued = 2;
    struct mock m;
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, 64, &o);
    struct rec r[4];
    int32_t prompt[4];
    struct dsi_request_params rp;
    greedy_request(&rp, prompt, 4, 5, 5);
    submit_running_and_waiting(e, &m, &rp, r, &c);
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
    mock_engine_stop(e, &c, &m);
}

TEST(engine_queue_timeout_gives_etimedout) {
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 1;
    o.queue_timeout_ms = 300;
    struct mock m;
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, 64, &o);
    struct rec r[2];
    int32_t prompt[4];
    struct dsi_request_params rp;
    greedy_request(&rp, prompt, 4, 6, 5);
    submit_running_and_waiting(e, &m, &rp, r, &c);
    sleep_ms(400); /* past the queue timeout while the first one holds the only slot */
    mock_pause(&m, false);
    coll_wait(&c, 2);
    CHECK_EQ_INT(r[0].final.finish, DSI_FINISH_LENGTH);
    CHECK_EQ_INT(r[1].final.finish, DSI_FINISH_ERROR);
    CHECK_EQ_INT(r[1].final.error, DSI_ETIMEDOUT);
    CHECK_EQ_INT(r[1].n, 0);
    check_pool_empty(e, 64);
    mock_engine_stop(e, &c, &m);
}

TEST(engine_deadline_cuts_running_and_waiting) {
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 1;
    o.queue_timeout_ms = 0;
    struct mock m;
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, 64, &o);
    struct rec r[2];
    int32_t prompt[3];
    struct dsi_request_params rp;
    greedy_request(&rp, prompt, 3, 7, 200);
    rp.deadline_ms = dsi_now_ms() + 300;
    submit_running_and_waiting(e, &m, &rp, r, &c);
    while (dsi_now_ms() <= rp.deadline_ms)
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
    mock_engine_stop(e, &c, &m);
}

TEST(engine_cancel_running_and_waiting) {
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 1;
    struct mock m;
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, 64, &o);
    struct rec r[2];
    int32_t prompt[3];
    struct dsi_request_params rp;
    greedy_request(&rp, prompt, 3, 8, 200);
    submit_running_and_waiting(e, &m, &rp, r, &c);
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
    mock_engine_stop(e, &c, &m);
}

TEST(engine_drain_finishes_queued_and_refuses_new) {
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 1;
    struct mock m;
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, 64, &o);
    struct rec r[3];
    int32_t prompt[3];
    struct dsi_request_params rp;
    greedy_request(&rp, prompt, 3, 9, 10);
    submit_running_and_waiting(e, &m, &rp, r, &c);
    dsi_engine_drain(e);
    CHECK_EQ_INT(submit(e, &rp, &r[2], &c), DSI_ESTATE);
    mock_pause(&m, false);
    coll_wait(&c, 2);
    CHECK_EQ_INT(r[0].final.finish, DSI_FINISH_LENGTH);
    CHECK_EQ_INT(r[1].final.finish, DSI_FINISH_LENGTH);
    CHECK_EQ_INT(r[1].n, 10);
    CHECK_EQ_INT(r[2].n_finals, 0);
    mock_engine_stop(e, &c, &m);
}

static void *unpause_later(void *arg) {
    sleep_ms(20);
    mock_pause(arg, false);
    return NULL;
}

TEST(engine_destroy_cancels_everything_once) {
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 2;
    struct mock m;
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, 64, &o);
    struct rec r[5];
    int32_t prompt[3];
    struct dsi_request_params rp;
    greedy_request(&rp, prompt, 3, 11, 200);
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
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, 64, NULL);
    struct rec r[2];
    int32_t prompt[3];
    struct dsi_request_params rp;
    greedy_request(&rp, prompt, 3, 12, 50);
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
    mock_engine_stop(e, &c, &m);
}

/* A failure the backend survives (a workspace that could not grow): only the
 * sequences of the failed step end, with the backend's code; the one waiting
 * behind them runs to the reference tokens afterwards, and nothing leaks. */
TEST(engine_transient_failure_fails_only_its_step) {
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 1;
    struct mock m;
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, 64, &o);
    struct rec r[2];
    int32_t prompt[5];
    struct dsi_request_params rp;
    greedy_request(&rp, prompt, 5, 31, 12);
    submit_running_and_waiting(e, &m, &rp, r, &c);
    mock_fail_next(&m, DSI_ENOMEM, false);
    mock_pause(&m, false);
    coll_wait(&c, 2);
    CHECK_EQ_INT(r[0].final.finish, DSI_FINISH_ERROR);
    CHECK_EQ_INT(r[0].final.error, DSI_ENOMEM);
    CHECK_EQ_INT(r[0].n, 0);
    CHECK_EQ_INT(r[1].final.finish, DSI_FINISH_LENGTH);
    int32_t want[12];
    ref_tokens(prompt, 5, 12, NULL, 0, want);
    CHECK_EQ_INT(r[1].n, 12);
    CHECK(memcmp(r[1].tokens, want, sizeof want) == 0);
    CHECK(!dsi_engine_dead(e));
    struct dsi_engine_stats st;
    dsi_engine_get_stats(e, &st);
    CHECK_EQ_INT((int)st.step_failures_total, 1);
    CHECK(!st.dead);
    CHECK_EQ_INT(st.running + st.waiting, 0);
    check_pool_empty(e, 64);
    mock_engine_stop(e, &c, &m);
}

/* A failure that leaves the backend dead (a poisoned CUDA context): the step's
 * sequence and the one waiting both end with the backend's code at once (no
 * step is tried again), the engine says it is dead and refuses new requests
 * with DSI_ESTATE, and every block is back in the pool. */
TEST(engine_dead_backend_fails_everything_and_refuses_new) {
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 1;
    struct mock m;
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, 64, &o);
    struct rec r[3];
    int32_t prompt[5];
    struct dsi_request_params rp;
    greedy_request(&rp, prompt, 5, 32, 12);
    submit_running_and_waiting(e, &m, &rp, r, &c);
    CHECK(!dsi_engine_dead(e));
    mock_fail_next(&m, DSI_ECUDA, true);
    mock_pause(&m, false);
    coll_wait(&c, 2);
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_INT(r[i].n_finals, 1);
        CHECK_EQ_INT(r[i].final.finish, DSI_FINISH_ERROR);
        CHECK_EQ_INT(r[i].final.error, DSI_ECUDA);
    }
    CHECK(dsi_engine_dead(e));
    CHECK_EQ_INT(submit(e, &rp, &r[2], &c), DSI_ESTATE);
    struct dsi_engine_stats st;
    dsi_engine_get_stats(e, &st);
    CHECK(st.dead);
    CHECK_EQ_INT((int)st.step_failures_total, 1);
    CHECK_EQ_INT((int)st.steps_total, 1);
    CHECK_EQ_INT(st.running + st.waiting, 0);
    check_pool_empty(e, 64);
    pthread_mutex_lock(&m.mu);
    CHECK_EQ_INT(m.entered, 1);
    pthread_mutex_unlock(&m.mu);
    mock_engine_stop(e, &c, &m);
    CHECK_EQ_INT(r[2].n_finals, 0);
}

/* Thousands of random submits and cancels on a small pool with preemption:
 * every accepted request gets exactly one final event, finished ones carry the
 * reference tokens, and every block comes back. */
TEST(engine_stress_random_admit_cancel_finish) {
    enum { N = 3000, NB = 48 };
    struct dsi_engine_opts o;
    small_opts(&o);
    o.max_running = 16;
    o.max_queued = 48;
    o.max_batch_tokens = 32;
    struct mock m;
    struct coll c;
    struct dsi_engine *e = mock_engine_start(&m, &c, NB, &o);
    struct rec *r = calloc(N, sizeof(struct rec));
    int32_t(*prompts)[24] = calloc(N, sizeof(*prompts));
    int *plen = calloc(N, sizeof(int)), *maxt = calloc(N, sizeof(int)), *accepted = calloc(N, sizeof(int));
    int n_acc = 0, n_full = 0;
    uint64_t rnd = 42;
    for (int i = 0; i < N; i++) {
        rnd = mix64(rnd);
        plen[i] = 1 + (int)(rnd % 24);
        maxt[i] = 1 + (int)((rnd >> 8) % 40);
        struct dsi_request_params rp;
        greedy_request(&rp, prompts[i], plen[i], 5000 + (unsigned)i, maxt[i]);
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
    mock_engine_stop(e, &c, &m);
    free(r);
    free(prompts);
    free(plen);
    free(maxt);
    free(accepted);
}

int main(void) {
    dsi_log_set_level(DSI_LOG_WARN);
    RUN(engine_queue_full);
    RUN(engine_queue_timeout_gives_etimedout);
    RUN(engine_deadline_cuts_running_and_waiting);
    RUN(engine_cancel_running_and_waiting);
    RUN(engine_drain_finishes_queued_and_refuses_new);
    RUN(engine_destroy_cancels_everything_once);
    RUN(engine_backend_failure_fails_the_batch);
    RUN(engine_transient_failure_fails_only_its_step);
    RUN(engine_dead_backend_fails_everything_and_refuses_new);
    RUN(engine_stress_random_admit_cancel_finish);
    return test_summary();
}
