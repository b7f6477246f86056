/*
 * test_cuda_fault.c: the CUDA backend under injected faults (issue 26 item 2),
 * with the test build's hooks (cuda_backend.h: DSI_TEST_FAIL_CUDA_MALLOC and
 * dsi_cuda_fault_arm_launch) on the tiny-chat fixture, through the engine.
 *
 * - an allocation that fails at load is DSI_ENOMEM with a message naming the
 *   options to change, and the failed load gives its GPU memory back;
 * - a kernel launch that fails with out of memory (not sticky) fails the
 *   requests of that step only: the backend is not dead and the next request
 *   gets the same greedy tokens as before the fault;
 * - a sticky launch failure (as an illegal address) kills the backend: the
 *   engine fails the request, says dead and refuses new ones, and destroying
 *   engine and backend gives the GPU memory back.
 * Without a GPU, or in a build without test hooks, every test reports SKIP.
 * Written without device time: compiled, not yet run on a GPU.
 */
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "cuda_backend.h"
#include "dsinfer/backend.h"
#include "dsinfer/engine.h"
#include "dsinfer/model.h"
#include "test_engine_util.h"

#define FIXTURE "tests/golden/models/tiny-chat"
#define N_GEN 12
#define SLACK_BYTES ((size_t)16 << 20) /* cuBLAS and the allocator's own rounding */

static int have_gpu(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n > 0;
}

#ifdef DSI_TEST_HOOKS
static void backend_opts(struct dsi_backend_opts *o) {
    memset(o, 0, sizeof *o);
    o->weight_dtype = DSI_W_BF16;
    o->kv_block_size = 16;
    o->kv_gpu_fraction = 0.05f;
    o->max_batch_tokens = 64;
    o->max_seqs = 4;
}

static void engine_opts(struct dsi_engine_opts *o) {
    dsi_engine_opts_defaults(o);
    o->max_running = 4;
    o->max_batch_tokens = 64;
    o->max_prompt_tokens = 32;
    o->max_total_tokens = 64;
}

static size_t gpu_free(void) {
    size_t f = 0, t = 0;
    cudaMemGetInfo(&f, &t);
    return f;
}

static int open_model(struct dsi_model *m) {
    memset(m, 0, sizeof *m);
    struct dsi_model_open_opts mo = {.n_threads = 2};
    char *err = NULL;
    int rc = dsi_model_open(m, FIXTURE, &mo, &err);
    if (rc) fprintf(stderr, "  %s: %s\n", FIXTURE, err ? err : "?");
    free(err);
    return rc;
}

/* One greedy request of N_GEN tokens through e; its final event in r. */
static void run_one(struct dsi_engine *e, struct coll *c, struct rec *r, int *finals) {
    int32_t prompt[6] = {1, 2, 3, 4, 5, 6};
    struct dsi_request_params rp;
    greedy_params(&rp, prompt, 6, N_GEN);
    CHECK_EQ_INT(submit(e, &rp, r, c), 0);
    coll_wait(c, ++*finals);
}

TEST(cuda_fault_alloc_at_load_is_a_clear_oom) {
    if (!have_gpu()) SKIP("no CUDA device");
    struct dsi_model m;
    if (open_model(&m)) {
        CHECK(0);
        return;
    }
    struct dsi_backend_opts o;
    backend_opts(&o);
    size_t before = gpu_free();
    const char *nth[] = {"1", "3", "12"}; /* cuBLAS workspace, activations, weights */
    for (int i = 0; i < 3; i++) {
        setenv("DSI_TEST_FAIL_CUDA_MALLOC", nth[i], 1);
        struct dsi_backend *be = NULL;
        char *err = NULL;
        int rc = dsi_cuda_backend_create(&m, &o, &be, &err);
        unsetenv("DSI_TEST_FAIL_CUDA_MALLOC");
        fprintf(stderr, "  allocation %s fails: %s\n", nth[i], err ? err : "(no message)");
        CHECK_EQ_INT(rc, DSI_ENOMEM);
        CHECK(be == NULL);
        CHECK(err && strstr(err, "out of memory") && strstr(err, "max_batch_tokens"));
        free(err);
        CHECK(gpu_free() + SLACK_BYTES >= before);
    }
    struct dsi_backend *be = NULL;
    char *err = NULL;
    CHECK_EQ_INT(dsi_cuda_backend_create(&m, &o, &be, &err), 0); /* control: without the hook it loads */
    free(err);
    dsi_backend_destroy(be);
    dsi_model_close(&m);
}

/* Runs a reference request, then one with the nth launch from then failing
 * (sticky or not), then, for a transient fault, another reference request. */
static void launch_fault(bool sticky) {
    struct dsi_model m;
    if (open_model(&m)) {
        CHECK(0);
        return;
    }
    size_t before = gpu_free();
    struct dsi_backend_opts bo;
    backend_opts(&bo);
    struct dsi_backend *be = NULL;
    char *err = NULL;
    int rc = dsi_cuda_backend_create(&m, &bo, &be, &err);
    CHECK_EQ_INT(rc, 0);
    free(err);
    if (rc) {
        dsi_model_close(&m);
        return;
    }
    struct dsi_engine_opts eo;
    engine_opts(&eo);
    struct dsi_engine *e = NULL;
    err = NULL;
    CHECK_EQ_INT(dsi_engine_create(be, &eo, &e, &err), 0);
    free(err);
    struct coll c;
    coll_init(&c);
    struct rec ref, bad, again, refused;
    int finals = 0;
    run_one(e, &c, &ref, &finals);
    CHECK_EQ_INT(ref.final.finish, DSI_FINISH_LENGTH);
    CHECK_EQ_INT(ref.n, N_GEN);

    dsi_cuda_fault_arm_launch(3, sticky); /* the third launch: inside the prefill step */
    run_one(e, &c, &bad, &finals);
    CHECK_EQ_INT(bad.final.finish, DSI_FINISH_ERROR);
    CHECK_EQ_INT(bad.final.error, DSI_ECUDA);
    CHECK(dsi_engine_dead(e) == sticky);
    if (!sticky) {
        run_one(e, &c, &again, &finals);
        CHECK_EQ_INT(again.final.finish, DSI_FINISH_LENGTH);
        CHECK_EQ_INT(again.n, N_GEN);
        CHECK(memcmp(again.tokens, ref.tokens, sizeof(int32_t) * N_GEN) == 0);
    } else {
        int32_t prompt[2] = {1, 2};
        struct dsi_request_params rp;
        greedy_params(&rp, prompt, 2, 4);
        CHECK_EQ_INT(submit(e, &rp, &refused, &c), DSI_ESTATE);
    }
    struct dsi_engine_stats st;
    dsi_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.kv_blocks_used, 0);
    CHECK_EQ_INT(st.running + st.waiting, 0);
    CHECK_EQ_INT((int)st.step_failures_total, 1);
    dsi_engine_destroy(e);
    coll_free(&c);
    dsi_backend_destroy(be);
    dsi_cuda_fault_arm_launch(0, false); /* the poison was simulated: the real context is fine */
    CHECK(gpu_free() + SLACK_BYTES >= before);
    dsi_model_close(&m);
}

TEST(cuda_fault_launch_oom_fails_one_step_then_recovers) {
    if (!have_gpu()) SKIP("no CUDA device");
    launch_fault(false);
}

TEST(cuda_fault_sticky_launch_kills_the_backend) {
    if (!have_gpu()) SKIP("no CUDA device");
    launch_fault(true);
}
#else
/* A build without test hooks has no fault to inject. */
TEST(cuda_fault_needs_test_hooks) {
    if (!have_gpu()) SKIP("no CUDA device");
    SKIP("built without DSI_TEST_HOOKS");
}
#endif

int main(void) {
    dsi_log_set_level(DSI_LOG_WARN);
#ifdef DSI_TEST_HOOKS
    RUN(cuda_fault_alloc_at_load_is_a_clear_oom);
    RUN(cuda_fault_launch_oom_fails_one_step_then_recovers);
    RUN(cuda_fault_sticky_launch_kills_the_backend);
#else
    RUN(cuda_fault_needs_test_hooks);
#endif
    return test_summary();
}
