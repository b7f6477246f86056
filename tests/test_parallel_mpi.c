/*
 * test_parallel_mpi.c: tensor parallel end to end under `mpirun -np 2` ($DSI_BIN),
 * compared with the single-process CPU backend on the same machine:
 *  - `dsinfer logits`: every row within 1e-5 of the row's largest |logit|
 *    (the O and down projections are summed in a different order across ranks;
 *    measured ~6e-7 on these fixtures), for GQA + QKV bias (qwen2-gqa-tied),
 *    MHA (llama-mha), an untied lm_head (llama-llama3) and models/demo in int8
 *    (per channel and grouped); 1e-3 with a bf16 KV cache (see TOL_BF16_KV);
 *  - `dsinfer generate --temperature 0`: the same ids, token for token;
 *  - errors end the whole job with a clear line and no hang: 2 ranks on a
 *    model with 1 kv head, --tensor-parallel disagreeing with mpirun, the flag
 *    without mpirun, a token id out of range.
 * Skipped (77) where mpirun is not installed. ctest label "mpi".
 */
#include <stdio.h>
#include <string.h>

#include "test.h"
#include "test_tp_util.h"

#define GOLD "tests/golden/models/"
#define MPIRUN                                                                                               \
    "mpirun --allow-run-as-root --oversubscribe --bind-to none "                                             \
    "-x ASAN_OPTIONS -x OMP_WAIT_POLICY -x DSI_LOG_LEVEL -np 2 "

static struct tp_env env;

static struct test_out run(bool mpi, const char *args) {
    return tp_run(&env, mpi, args);
}

static void check_logits(const char *model, const char *opts, double tol) {
    tp_check_logits(&env, model, opts, tol);
}

static void check_generate(const char *model, const char *opts) {
    tp_check_generate(&env, model, "1,2,3", 12, opts);
}

#define TOL 1e-5
/* bf16 KV: a ~1e-7 difference before rounding to bf16 can flip one bf16 ulp
 * (2^-8 relative) of a cached K/V element; measured 7.4e-5 on models/demo. */
#define TOL_BF16_KV 1e-3

TEST(tp_logits_gqa_bias) {
    check_logits(GOLD "qwen2-gqa-tied", "", TOL);
}
TEST(tp_logits_mha) {
    check_logits(GOLD "llama-mha", "", TOL);
}
TEST(tp_logits_untied_lm_head) {
    check_logits(GOLD "llama-llama3", "", TOL);
}
TEST(tp_logits_demo_int8) {
    check_logits("models/demo", "--dtype int8", TOL);
    check_logits("models/demo", "--dtype int8 --group-size 32", TOL);
    check_logits("models/demo", "--dtype int8 --kv-dtype bf16", TOL_BF16_KV);
}
TEST(tp_generate_greedy_same_ids) {
    check_generate(GOLD "qwen2-gqa-tied", "");
    check_generate(GOLD "llama-mha", "--dtype int8");
    check_generate("models/demo", "--dtype int8");
}

TEST(tp_heads_not_divisible_is_clear_error) {
    /* qwen2-untied has 6 heads and 1 kv head */
    struct test_out o = run(true, "logits --model " GOLD "qwen2-untied --ids 1,2 --threads 1");
    CHECK_EQ_INT(o.status, 1);
    CHECK(o.err &&
          strstr(o.err,
                 "rank 0: tensor parallel 2 does not divide this model's 6 attention heads and 1 kv heads"));
    CHECK(o.err && strstr(o.err, "rank 1 cannot build its shard: tensor parallel 2 does not divide"));
    CHECK(o.text == NULL || strstr(o.text, "logits") == NULL);
    test_out_free(&o);
}

TEST(tp_flag_mismatch_and_without_mpirun) {
    struct test_out o = run(true, "logits --model models/demo --ids 1 --tensor-parallel 3");
    CHECK_EQ_INT(o.status, 2);
    CHECK(o.err && strstr(o.err, "rank 0: --tensor-parallel 3 but mpirun started 2 ranks"));
    CHECK(o.err && strstr(o.err, "rank 1: --tensor-parallel 3 but mpirun started 2 ranks"));
    test_out_free(&o);
    o = run(false, "logits --model models/demo --ids 1 --tensor-parallel 2");
    CHECK_EQ_INT(o.status, 2);
    CHECK(o.err && strstr(o.err, "mpirun -np 2"));
    test_out_free(&o);
    o = run(false, "logits --model models/demo --ids 1 --tensor-parallel x");
    CHECK_EQ_INT(o.status, 2);
    test_out_free(&o);
    /* --tensor-parallel 2 under mpirun -np 2 is accepted and stripped before the command */
    o = run(true, "logits --model " GOLD "llama-mha --ids 1 --threads 1 --tensor-parallel=2");
    CHECK_EQ_INT(o.status, 0);
    CHECK(o.text && strstr(o.text, "\"logits\""));
    test_out_free(&o);
}

TEST(tp_bad_token_fails_on_rank0_without_hang) {
    struct test_out o = run(true, "logits --model " GOLD "llama-mha --ids 1,99999 --threads 1");
    CHECK_EQ_INT(o.status, 1);
    CHECK(o.err && strstr(o.err, "token id 99999 is out of range"));
    test_out_free(&o);
}

int main(void) {
    int rc = tp_env_init(&env, MPIRUN);
    if (rc) return rc;
    RUN(tp_logits_gqa_bias);
    RUN(tp_logits_mha);
    RUN(tp_logits_untied_lm_head);
    RUN(tp_logits_demo_int8);
    RUN(tp_generate_greedy_same_ids);
    RUN(tp_heads_not_divisible_is_clear_error);
    RUN(tp_flag_mismatch_and_without_mpirun);
    RUN(tp_bad_token_fails_on_rank0_without_hang);
    tp_env_done(&env);
    return test_summary();
}
