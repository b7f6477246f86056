/*
 * test_memplan.c: the GPU memory plan and its out-of-memory message
 * (include/dsinfer/memplan.h) with numbers: a plan that fits gets the KV pool
 * the CUDA backend allocates (kv_gpu_fraction of what weights and workspace
 * leave), and each way of not fitting gets a message that says how much was
 * needed, what was free, and the option to change for that case, and no other.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/memplan.h"
#include "test.h"

#define GiB ((size_t)1 << 30)
#define MiB ((size_t)1 << 20)

/* A 7B-like plan on an 80 GiB card: 14 GiB bf16 weights, 2 GiB workspace,
 * 1 MiB per KV block, 64 running sequences, the default fraction. */
static struct dsi_mem_plan plan_7b(void) {
    return (struct dsi_mem_plan){.device = 0,
                                 .free_bytes = 79 * GiB,
                                 .total_bytes = 80 * GiB,
                                 .weight_bytes = 14 * GiB,
                                 .workspace_bytes = 2 * GiB,
                                 .kv_block_bytes = MiB,
                                 .kv_min_blocks = 64,
                                 .kv_gpu_fraction = 0.9f};
}

static bool has(const char *s, const char *sub) { return s && strstr(s, sub); }

TEST(memplan_fits_gives_the_fraction_of_what_is_left) {
    struct dsi_mem_plan p = plan_7b();
    int blocks = -1;
    char *err = NULL;
    CHECK_EQ_INT(dsi_mem_plan_fit(&p, &blocks, &err), 0);
    /* (79 - 14 - 2) GiB x 0.9 in 1 MiB blocks */
    CHECK_EQ_INT(blocks, (int)((double)(63 * 1024) * 0.9f));
    CHECK(err == NULL);
}

TEST(memplan_weights_alone_too_big_says_int8) {
    struct dsi_mem_plan p = plan_7b();
    p.free_bytes = 12 * GiB; /* another process holds the rest */
    int blocks = -1;
    char *err = NULL;
    CHECK_EQ_INT(dsi_mem_plan_fit(&p, &blocks, &err), DSI_ENOMEM);
    CHECK_EQ_INT(blocks, 0);
    CHECK(has(err, "GPU 0 out of memory: the model needs 16.1 GiB (weights 14.0, workspace 2.0, KV cache at least "
                   "0.1 for 64 blocks) but 12.0 GiB of 80.0 GiB is free"));
    CHECK(has(err, "the weights alone do not fit: use --dtype int8"));
    CHECK(has(err, "nvidia-smi"));
    CHECK(!has(err, "max_batch_tokens"));
    free(err);
    p.int8 = true; /* int8 already: no dtype advice */
    err = NULL;
    CHECK_EQ_INT(dsi_mem_plan_fit(&p, &blocks, &err), DSI_ENOMEM);
    CHECK(has(err, "even as int8"));
    CHECK(!has(err, "--dtype int8"));
    free(err);
}

/* The check before the upload knows only the estimated weights: no workspace
 * in the message, the weights advice all the same. */
TEST(memplan_before_upload_leaves_the_workspace_out) {
    struct dsi_mem_plan p = plan_7b();
    p.workspace_bytes = 0;
    p.kv_min_blocks = 1;
    p.free_bytes = 10 * GiB;
    int blocks = -1;
    char *err = NULL;
    CHECK_EQ_INT(dsi_mem_plan_fit(&p, &blocks, &err), DSI_ENOMEM);
    CHECK(has(err, "needs 14.0 GiB (weights 14.0, KV cache at least 0.0 for 1 blocks) but 10.0 GiB"));
    CHECK(!has(err, "workspace"));
    CHECK(has(err, "use --dtype int8"));
    free(err);
    p.free_bytes = 15 * GiB;
    err = NULL;
    CHECK_EQ_INT(dsi_mem_plan_fit(&p, &blocks, &err), 0);
    CHECK(blocks > 0);
}

TEST(memplan_workspace_too_big_says_max_batch_tokens) {
    struct dsi_mem_plan p = plan_7b();
    p.free_bytes = 15 * GiB; /* the weights fit, the workspace not */
    int blocks = -1;
    char *err = NULL;
    CHECK_EQ_INT(dsi_mem_plan_fit(&p, &blocks, &err), DSI_ENOMEM);
    CHECK(has(err, "needs 16.1 GiB"));
    CHECK(has(err, "but 15.0 GiB of 80.0 GiB is free"));
    CHECK(has(err, "lower max_batch_tokens (the workspace grows with it) or max_running, or use --dtype int8"));
    CHECK(!has(err, "weights alone"));
    CHECK(!has(err, "kv_gpu_fraction"));
    free(err);
}

TEST(memplan_no_room_for_kv_says_max_running) {
    struct dsi_mem_plan p = plan_7b();
    p.free_bytes = 16 * GiB + 10 * MiB; /* weights + workspace fit, 64 blocks do not */
    int blocks = -1;
    char *err = NULL;
    CHECK_EQ_INT(dsi_mem_plan_fit(&p, &blocks, &err), DSI_ENOMEM);
    CHECK(has(err, "KV cache at least 0.1 for 64 blocks"));
    CHECK(has(err, "lower max_running (each running sequence needs a KV block)"));
    CHECK(!has(err, "max_batch_tokens"));
    free(err);
}

TEST(memplan_fraction_too_small_says_raise_it) {
    struct dsi_mem_plan p = plan_7b();
    p.free_bytes = 16 * GiB + 100 * MiB; /* 100 blocks left, 10% of it is 10 < 64 */
    p.kv_gpu_fraction = 0.1f;
    int blocks = -1;
    char *err = NULL;
    CHECK_EQ_INT(dsi_mem_plan_fit(&p, &blocks, &err), DSI_ENOMEM);
    CHECK(has(err, "kv_gpu_fraction 0.10"));
    CHECK(has(err, "10 blocks, fewer than the 64 it needs"));
    CHECK(has(err, "raise kv_gpu_fraction or lower max_running"));
    free(err);
    p.kv_gpu_fraction = 0.9f; /* the same memory with the default fraction fits */
    err = NULL;
    CHECK_EQ_INT(dsi_mem_plan_fit(&p, &blocks, &err), 0);
    CHECK_EQ_INT(blocks, (int)(100.0 * (double)0.9f)); /* 0.9f is a hair under 0.9: 89 */
}

TEST(memplan_absurd_sizes_do_not_wrap) {
    struct dsi_mem_plan p = plan_7b();
    p.weight_bytes = SIZE_MAX - GiB;
    p.workspace_bytes = 4 * GiB; /* the sum overflows: must not fit */
    int blocks = -1;
    char *err = NULL;
    CHECK_EQ_INT(dsi_mem_plan_fit(&p, &blocks, &err), DSI_ENOMEM);
    free(err);
    p = plan_7b();
    p.kv_min_blocks = INT32_MAX;
    p.kv_block_bytes = SIZE_MAX / 2;
    err = NULL;
    CHECK_EQ_INT(dsi_mem_plan_fit(&p, &blocks, &err), DSI_ENOMEM);
    free(err);
}

TEST(memplan_bad_plan_is_einval) {
    struct dsi_mem_plan p = plan_7b();
    int blocks = -1;
    char *err = NULL;
    p.kv_gpu_fraction = 0.0f;
    CHECK_EQ_INT(dsi_mem_plan_fit(&p, &blocks, &err), DSI_EINVAL);
    free(err);
    err = NULL;
    p = plan_7b();
    p.kv_block_bytes = 0;
    CHECK_EQ_INT(dsi_mem_plan_fit(&p, &blocks, &err), DSI_EINVAL);
    free(err);
}

TEST(memplan_weight_bytes_bf16_and_int8) {
    /* a 4096 x 1024 matrix and a 1024 vector */
    struct dsi_tensor t[2] = {{.n_dims = 2, .shape = {4096, 1024}, .n_elems = 4096 * 1024},
                              {.n_dims = 1, .shape = {1024}, .n_elems = 1024}};
    struct dsi_safetensors st = {.tensors = t, .n_tensors = 2};
    CHECK(dsi_mem_plan_weight_bytes(&st, false, 0) == (4096 * 1024 + 1024) * 2);
    /* int8 per channel: 1 byte each plus a f32 scale per row; the vector stays bf16 */
    CHECK(dsi_mem_plan_weight_bytes(&st, true, 0) == 4096 * 1024 + 4096 * 4 + 1024 * 2);
    /* int8 in groups of 128 inputs: one scale per group */
    CHECK(dsi_mem_plan_weight_bytes(&st, true, 128) == 4096 * 1024 + 4096 * 8 * 4 + 1024 * 2);
}

int main(void) {
    RUN(memplan_fits_gives_the_fraction_of_what_is_left);
    RUN(memplan_weights_alone_too_big_says_int8);
    RUN(memplan_before_upload_leaves_the_workspace_out);
    RUN(memplan_workspace_too_big_says_max_batch_tokens);
    RUN(memplan_no_room_for_kv_says_max_running);
    RUN(memplan_fraction_too_small_says_raise_it);
    RUN(memplan_absurd_sizes_do_not_wrap);
    RUN(memplan_bad_plan_is_einval);
    RUN(memplan_weight_bytes_bf16_and_int8);
    return test_summary();
}
