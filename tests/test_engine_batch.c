/*
 * test_engine_batch.c: results do not depend on batch company (issue 5, item 5).
 *
 * On the CPU backend with the tiny fixture models in tests/golden/models, every
 * request's tokens are compared between a run alone and a run among 63 others of
 * different lengths (chunked prefill mixed with decode), and a run where a
 * small KV pool forces preemption and recompute. Greedy tokens must be equal;
 * seeded sampling must give the same tokens in every run, and differ by seed.
 */
/* The event collector (struct rec, struct coll, submit, coll_wait) is
 * test_engine_util.h's; its mock backend is not used here. A real model under
 * ASan is slow, so waits get longer than the mock tests'. */
#define WAIT_LIMIT_S 120
#include "test_engine_util.h"

#include "dsinfer/backend.h"
#include "dsinfer/model.h"

#define GOLD "tests/golden/models/"
#define N_REQ 64
#define MAX_GEN 16
#define MAX_PROMPT 40

/* The workload: request i has its own prompt length, content and max_tokens. */
struct work {
    int32_t prompt[N_REQ][MAX_PROMPT];
    int n_prompt[N_REQ], max_tokens[N_REQ];
    float temperature;
    uint64_t seed_base;
};

static void make_work(struct work *w, int vocab, float temperature, uint64_t seed_base) {
    uint64_t x = 99;
    for (int i = 0; i < N_REQ; i++) {
        w->n_prompt[i] = 1 + (i * 37) % MAX_PROMPT;
        w->max_tokens[i] = 4 + (i * 11) % (MAX_GEN - 3);
        for (int j = 0; j < w->n_prompt[i]; j++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            w->prompt[i][j] = (int32_t)((x >> 33) % (uint64_t)vocab);
        }
    }
    w->temperature = temperature;
    w->seed_base = seed_base;
}

static void params_for(const struct work *w, int i, struct dsi_request_params *rp) {
    memset(rp, 0, sizeof(*rp));
    rp->prompt = w->prompt[i];
    rp->n_prompt = w->n_prompt[i];
    rp->max_tokens = w->max_tokens[i];
    dsi_sampling_defaults(&rp->sampling);
    rp->sampling.temperature = w->temperature;
    rp->sampling.top_p = w->temperature > 0 ? 0.9f : 1.0f;
    rp->sampling.seed = w->seed_base + (uint64_t)i;
}

struct rig {
    struct dsi_model m;
    struct dsi_backend *be;
};

static int rig_open(struct rig *g, const char *name, size_t kv_bytes) {
    char dir[256], *err = NULL;
    snprintf(dir, sizeof dir, GOLD "%s", name);
    struct dsi_model_open_opts mo = {0};
    int rc = dsi_model_open(&g->m, dir, &mo, &err);
    if (rc) {
        fprintf(stderr, "  open %s: %s\n", name, err ? err : "?");
        free(err);
        return rc;
    }
    struct dsi_backend_opts o = {.weight_dtype = DSI_W_F32,
                                 .kv_dtype = DSI_KV_F32,
                                 .kv_block_size = 4,
                                 .kv_bytes = kv_bytes,
                                 .max_batch_tokens = 128,
                                 .max_seqs = N_REQ,
                                 .n_threads = 1};
    rc = dsi_backend_create("cpu", &g->m, &o, &g->be, &err);
    if (rc) {
        fprintf(stderr, "  backend %s: %s\n", name, err ? err : "?");
        free(err);
        dsi_model_close(&g->m);
    }
    return rc;
}

static void rig_close(struct rig *g) {
    dsi_backend_destroy(g->be);
    dsi_model_close(&g->m);
}

static struct dsi_engine *engine_for(struct dsi_backend *be) {
    struct dsi_engine_opts o;
    dsi_engine_opts_defaults(&o);
    o.max_running = N_REQ;
    o.max_queued = N_REQ;
    o.prefill_chunk = 8; /* long prompts span several steps next to decodes */
    o.max_batch_tokens = 128;
    o.max_total_tokens = MAX_PROMPT + MAX_GEN;
    o.max_prompt_tokens = MAX_PROMPT;
    struct dsi_engine *e = NULL;
    char *err = NULL;
    if (dsi_engine_create(be, &o, &e, &err)) fprintf(stderr, "  engine: %s\n", err ? err : "?");
    free(err);
    return e;
}

/* Requests also run alone (every ALONE_STRIDE-th, lengths 1..40): running all
 * 64 alone would cost a minute of the test's time for no extra coverage. */
#define ALONE_STRIDE 9
static bool runs_alone(int i) {
    return i % ALONE_STRIDE == 0;
}

/* Runs the workload: the runs_alone() subset one request at a time, or all 64
 * at once. Returns the preemptions counted. */
static uint64_t run(struct dsi_backend *be, const struct work *w, bool alone, struct rec *out) {
    struct coll c;
    coll_init(&c);
    struct dsi_engine *e = engine_for(be);
    if (!e) return 0;
    int n = 0;
    for (int i = 0; i < N_REQ; i++) {
        memset(&out[i], 0, sizeof(out[i]));
        out[i].c = &c;
        if (alone && !runs_alone(i)) continue;
        struct dsi_request_params rp;
        params_for(w, i, &rp);
        CHECK_EQ_INT(submit(e, &rp, &out[i], &c), 0);
        n++;
        if (alone) coll_wait(&c, n);
    }
    coll_wait(&c, n);
    struct dsi_engine_stats st;
    dsi_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.kv_blocks_used, 0);
    dsi_engine_destroy(e);
    coll_free(&c);
    return st.preempted_total;
}

/* Requests whose tokens differ between a and b (only the alone subset if asked). */
static int count_diffs(const struct rec *a, const struct rec *b, bool subset) {
    int d = 0;
    for (int i = 0; i < N_REQ; i++) {
        if (subset && !runs_alone(i)) continue;
        /* An event after the final one counts as a difference: the collector
         * keeps such tokens out of tokens[], so they would not show below. */
        if (a[i].final.finish != DSI_FINISH_LENGTH || b[i].final.finish != DSI_FINISH_LENGTH ||
            a[i].after_final || b[i].after_final)
            d++;
        else if (a[i].n != b[i].n ||
                 memcmp(a[i].tokens, b[i].tokens, (size_t)a[i].n * sizeof(int32_t)) != 0) {
            if (d < 3) fprintf(stderr, "  request %d: tokens differ\n", i);
            d++;
        }
    }
    return d;
}

/* alone vs 64 together vs 64 together on a pool small enough to preempt. */
static void check_model(const char *name, float temperature) {
    struct rig big, small;
    if (rig_open(&big, name, (size_t)16 << 20)) {
        CHECK(!"fixture model opens");
        return;
    }
    /* Room for two full-length sequences: forces preemption among 64. */
    size_t small_kv = big.be->kv_bytes_per_token * 4 * 2 * ((MAX_PROMPT + MAX_GEN) / 4);
    if (rig_open(&small, name, small_kv)) {
        rig_close(&big);
        CHECK(!"fixture model opens with a small pool");
        return;
    }
    struct work *w = malloc(sizeof(*w));
    struct rec *alone = calloc(N_REQ, sizeof(struct rec)), *together = calloc(N_REQ, sizeof(struct rec)),
               *tight = calloc(N_REQ, sizeof(struct rec));
    make_work(w, big.be->vocab_size, temperature, 1000);
    CHECK_EQ_INT(run(big.be, w, true, alone), 0);
    CHECK_EQ_INT(run(big.be, w, false, together), 0);
    uint64_t pre = run(small.be, w, false, tight);
    fprintf(stderr, "  %s: pool %d blocks, %llu preemptions\n", name, small.be->n_kv_blocks,
            (unsigned long long)pre);
    CHECK(pre > 0);
    CHECK_EQ_INT(count_diffs(alone, together, true), 0);
    CHECK_EQ_INT(count_diffs(alone, tight, true), 0);
    CHECK_EQ_INT(count_diffs(together, tight, false), 0);
    int lengths_ok = 0;
    for (int i = 0; i < N_REQ; i++)
        lengths_ok += together[i].n == w->max_tokens[i];
    CHECK_EQ_INT(lengths_ok, N_REQ);
    if (temperature > 0) {
        /* Another seed gives other tokens: the seed really drives the draw. */
        make_work(w, big.be->vocab_size, temperature, 5000);
        run(big.be, w, false, together);
        CHECK(count_diffs(tight, together, false) > 0);
    }
    fprintf(stderr, "  %s T=%.1f: 64 requests equal alone, batched and with %llu preemptions\n", name,
            (double)temperature, (unsigned long long)pre);
    free(w);
    free(alone);
    free(together);
    free(tight);
    rig_close(&small);
    rig_close(&big);
}

TEST(batch_invariance_greedy_qwen2_tiny_chat) {
    check_model("tiny-chat", 0.0f);
}
TEST(batch_invariance_greedy_llama) {
    check_model("llama-mha", 0.0f);
}
TEST(batch_invariance_seeded_sampling_tiny_chat) {
    check_model("tiny-chat", 0.8f);
}
/* MLA latent cache + MoE (tokens of all running sequences grouped by expert). */
TEST(batch_invariance_greedy_deepseek_v3) {
    check_model("dsv3-tiny", 0.0f);
}

int main(void) {
    dsi_log_set_level(DSI_LOG_WARN);
    RUN(batch_invariance_greedy_qwen2_tiny_chat);
    RUN(batch_invariance_greedy_llama);
    RUN(batch_invariance_seeded_sampling_tiny_chat);
    RUN(batch_invariance_greedy_deepseek_v3);
    return test_summary();
}
