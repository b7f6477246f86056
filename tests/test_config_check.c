/*
 * test_config_check.c: dsi_model_config_check (src/model/config_check.c), the
 * one config check every backend runs: one error code per cause whatever the
 * backend, per-backend limits, and the tensor-parallel split (whole heads and
 * kv heads per rank, int8 groups never straddling two ranks).
 */
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/model.h"
#include "test.h"

/* The CPU and CUDA backends' limits as cpu_backend.c and cuda_backend.c declare them. */
static const struct dsi_backend_limits cpu = {.backend = "cpu", .head_dim_multiple = 2};
static const struct dsi_backend_limits cuda = {.backend = "cuda",
                                               .max_gqa_group = 8,
                                               .head_dim_multiple = 16,
                                               .head_dim_divides = 256,
                                               .split_inter_evenly = true};

static struct dsi_model_config small(void) {
    struct dsi_model_config c = {.arch = DSI_ARCH_QWEN2,
                                 .vocab_size = 384,
                                 .hidden_size = 96,
                                 .intermediate_size = 160,
                                 .n_layers = 2,
                                 .n_heads = 6,
                                 .n_kv_heads = 1,
                                 .head_dim = 16,
                                 .max_position_embeddings = 128,
                                 .rms_norm_eps = 1e-6f,
                                 .rope_theta = 10000.0f};
    strcpy(c.architecture, "Qwen2ForCausalLM");
    return c;
}

/* rc from the check, and err contains want (NULL: no message wanted). */
static void expect(const struct dsi_model_config *c, const struct dsi_backend_limits *lim, int n, int gs,
                   int want_rc, const char *want) {
    char *err = NULL;
    int rc = dsi_model_config_check(c, lim, n, gs, &err);
    CHECK_EQ_INT(rc, want_rc);
    if (want) CHECK(err && strstr(err, want));
    if (rc != want_rc || (want && (!err || !strstr(err, want))))
        fprintf(stderr, "  got %d: %s\n", rc, err ? err : "(no message)");
    free(err);
}

TEST(check_small_model_runs_whole_on_both_backends) {
    struct dsi_model_config c = small();
    expect(&c, &cpu, 1, 0, 0, NULL);
    expect(&c, &cuda, 1, 0, 0, NULL);
}

TEST(check_one_code_per_cause) {
    struct dsi_model_config c = small();
    c.arch = DSI_ARCH_DEEPSEEK_V2; /* MLA + MoE: only a backend whose limits say mla_moe runs it */
    expect(&c, &cpu, 1, 0, DSI_EUNSUPPORTED, "(MLA attention + MoE) is not supported");
    expect(&c, &cuda, 1, 0, DSI_EUNSUPPORTED, "(MLA attention + MoE) is not supported");
    c = small();
    c.n_kv_heads = 4; /* 6 heads over 4 kv heads: config.json contradicts itself */
    expect(&c, &cpu, 1, 0, DSI_EFORMAT, "not a multiple of 4 kv heads");
    expect(&c, &cuda, 1, 0, DSI_EFORMAT, "not a multiple of 4 kv heads");
    c = small();
    c.hidden_size = 0;
    expect(&c, &cpu, 1, 0, DSI_EFORMAT, "non-positive size");
    expect(&c, &cuda, 1, 0, DSI_EFORMAT, "non-positive size");
    c = small();
    c.head_dim = 15;
    expect(&c, &cpu, 1, 0, DSI_EFORMAT, "head_dim 15 is odd");
    c = small();
    c.vocab_size = 1 << 30;
    expect(&c, &cpu, 1, 0, DSI_EOVERFLOW, "too large");
    expect(&c, &cuda, 1, 0, DSI_EOVERFLOW, "too large");
    c = small();
    c.rms_norm_eps = -1.0f;
    expect(&c, &cuda, 1, 0, DSI_EFORMAT, "rms_norm_eps");
}

TEST(check_backend_limits_name_the_backend) {
    struct dsi_model_config c = small();
    c.n_heads = 12; /* 12 heads over 1 kv head: the CPU runs it, CUDA's kernels hold 8 per group */
    expect(&c, &cpu, 1, 0, 0, NULL);
    expect(&c, &cuda, 1, 0, DSI_EUNSUPPORTED, "cuda backend: 12 attention heads per kv head");
    c = small();
    c.head_dim = 24; /* even (CPU), not a divisor of 256 (CUDA) */
    expect(&c, &cpu, 1, 0, 0, NULL);
    expect(&c, &cuda, 1, 0, DSI_EUNSUPPORTED, "cuda backend: head_dim 24 is not supported");
}

TEST(check_split_heads_must_divide) {
    struct dsi_model_config c = small();
    expect(&c, &cpu, 2, 0, DSI_EINVAL,
           "tensor parallel 2 does not divide this model's 6 attention heads and 1 kv heads");
    expect(&c, &cuda, 2, 0, DSI_EINVAL, "does not divide");
    expect(&c, &cpu, 1, 0, 0, NULL);
    c.n_kv_heads = 2;
    expect(&c, &cpu, 2, 0, 0, NULL);
    expect(&c, &cpu, 4, 0, DSI_EINVAL, "6 attention heads"); /* 6 heads */
    expect(&c, &cpu, 0, 0, DSI_EINVAL, "0 ranks");
}

TEST(check_split_int8_groups_must_not_straddle) {
    /* 8 heads of 32 over 2 ranks: 128 attention columns per rank */
    struct dsi_model_config c = small();
    c.vocab_size = 4096;
    c.hidden_size = 256;
    c.intermediate_size = 768;
    c.n_heads = 8;
    c.n_kv_heads = 4;
    c.head_dim = 32;
    expect(&c, &cpu, 2, 128, 0, NULL);
    expect(&c, &cpu, 2, 256, DSI_EINVAL, "straddle");
    expect(&c, &cpu, 1, 256, 0, NULL); /* one rank: nothing to straddle (the loader checks each matrix) */
    c.intermediate_size = 700;         /* not a multiple of 64 */
    expect(&c, &cpu, 2, 64, DSI_EINVAL, "straddle");
    expect(&c, &cpu, 2, -1, DSI_EINVAL, "negative");
}

TEST(check_split_cuda_needs_even_intermediate) {
    struct dsi_model_config c = small();
    c.n_kv_heads = 2;
    c.intermediate_size = 161; /* the CPU cuts 80 + 81 rows, CUDA's shards are all one size */
    expect(&c, &cpu, 2, 0, 0, NULL);
    expect(&c, &cuda, 2, 0, DSI_EINVAL, "intermediate size 161");
    c.n_heads = 8;             /* 64 attention columns per rank */
    c.intermediate_size = 192; /* CUDA: 96 rows per rank, not whole groups of 64; CPU: 64 + 128 */
    expect(&c, &cpu, 2, 64, 0, NULL);
    expect(&c, &cuda, 2, 64, DSI_EINVAL, "straddle");
    expect(&c, &cuda, 2, 32, 0, NULL);
}

TEST(check_split_needs_a_slice_for_every_rank) {
    struct dsi_model_config c = small();
    c.n_heads = 4;
    c.n_kv_heads = 4;
    c.intermediate_size = 2;
    expect(&c, &cpu, 4, 0, DSI_EINVAL, "too small");
}

/* MLA + MoE across ranks: heads stay whole (replicated attention), so only a
 * backend that says mla_moe_ranks takes it, and any rank count with a vocab
 * slice each passes here (the expert split is the backend's check). */
TEST(check_split_mla_needs_ranks_support) {
    const struct dsi_backend_limits mla_one = {.backend = "cuda", .head_dim_multiple = 2, .mla_moe = true};
    const struct dsi_backend_limits mla_ranks = {
        .backend = "cpu", .head_dim_multiple = 2, .mla_moe = true, .mla_moe_ranks = true};
    struct dsi_model_config c = small();
    c.arch = DSI_ARCH_DEEPSEEK_V2;
    c.n_kv_heads = c.n_heads;
    expect(&c, &mla_one, 1, 0, 0, NULL);
    expect(&c, &mla_one, 2, 0, DSI_EUNSUPPORTED, "(MLA attention + MoE) is not implemented across ranks");
    expect(&c, &mla_ranks, 3, 0, 0, NULL); /* 6 heads over 3 ranks would split; 4 would not, and need not */
    expect(&c, &mla_ranks, 4, 0, 0, NULL);
    c.vocab_size = 3;
    expect(&c, &mla_ranks, 4, 0, DSI_EINVAL, "vocabulary of 3 is too small");
}

int main(void) {
    RUN(check_small_model_runs_whole_on_both_backends);
    RUN(check_one_code_per_cause);
    RUN(check_backend_limits_name_the_backend);
    RUN(check_split_heads_must_divide);
    RUN(check_split_int8_groups_must_not_straddle);
    RUN(check_split_cuda_needs_even_intermediate);
    RUN(check_split_needs_a_slice_for_every_rank);
    RUN(check_split_mla_needs_ranks_support);
    return test_summary();
}
