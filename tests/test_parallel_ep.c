/*
 * test_parallel_ep.c: DeepSeek-V2/V3 (MLA + MoE) over MPI on the CPU backend
 * (replicated attention, expert-parallel routed experts: include/dsinfer/ep.h)
 * under `mpirun -np 2` and `-np 4` ($DSI_BIN), compared with one process,
 * whose logits test_cpu_model checks against HF transformers:
 *  - `dsinfer logits` over 17 ids (uneven token slices: 17 over 4 ranks): every
 *    row within 1e-4 of the row's largest |logit| (f32). The exchange changes no
 *    summation order, so the runs measured 0 difference; the tolerance leaves
 *    room for a compiler that contracts the combine differently;
 *    dsv3-tiny (noaux_tc groups, 16 experts), dsv2-lite (greedy, 2 shared
 *    experts, 8 experts), demo-v3 in int8, and 4 ranks in two groups of 2;
 *  - `dsinfer generate --temperature 0` on demo-v3: the same ids, token for
 *    token (decode steps of one token: all but one rank route nothing);
 *  - bad layouts end the job with a clear line: 16 experts over 3 ranks,
 *    --expert-parallel not dividing the ranks, --expert-parallel on a dense
 *    model, and without mpirun.
 * Skipped (77) where mpirun is not installed. ctest label "mpi".
 */
#include <stdio.h>
#include <string.h>

#include "test.h"
#include "test_tp_util.h"

#define GOLD "tests/golden/models/"
#define MPIRUN_N(n)                                                                                          \
    "mpirun --allow-run-as-root --oversubscribe --bind-to none "                                             \
    "-x ASAN_OPTIONS -x OMP_WAIT_POLICY -x DSI_LOG_LEVEL -np " #n " "

static struct tp_env env2, env3, env4;

#define TOL 1e-4

TEST(ep_logits_two_and_four_ranks_match_one_process) {
    tp_check_logits(&env2, GOLD "dsv3-tiny", "", TOL);
    tp_check_logits(&env4, GOLD "dsv3-tiny", "", TOL);
    tp_check_logits(&env2, GOLD "dsv2-lite", "", TOL);
    tp_check_logits(&env4, "models/demo-v3", "--dtype int8", TOL);
}

/* tp_check_logits with a flag only the mpirun job gets (one process refuses it). */
static void check_logits_mpi_flag(const struct tp_env *e, const char *model, const char *flag, double tol) {
    char args[512], args_mpi[600];
    snprintf(args, sizeof args,
             "logits --model %s --ids 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17 --threads 1", model);
    snprintf(args_mpi, sizeof args_mpi, "%s %s", args, flag);
    struct test_out one = tp_run(e, false, args), many = tp_run(e, true, args_mpi);
    CHECK_EQ_INT(one.status, 0);
    CHECK_EQ_INT(many.status, 0);
    int rows = 0;
    double d = tp_logits_diff(one.text, many.text, &rows);
    fprintf(stderr, "  %s %s: %d rows, max rel diff %.3g\n", model, flag, rows, d);
    CHECK_EQ_INT(rows, 17);
    CHECK(d >= 0 && d <= tol);
    test_out_free(&one);
    test_out_free(&many);
}

TEST(ep_logits_two_groups_of_two_match_one_process) {
    check_logits_mpi_flag(&env4, GOLD "dsv3-tiny", "--expert-parallel 2", TOL);
}

TEST(ep_generate_greedy_same_ids) {
    tp_check_generate(&env2, "models/demo-v3", "1,2,3", 12, "");
    tp_check_generate(&env4, "models/demo-v3", "1,2,3", 12, "");
}

TEST(ep_experts_not_divisible_is_clear_error) {
    /* dsv3-tiny has 16 routed experts */
    struct test_out o = tp_run(&env3, true, "logits --model " GOLD "dsv3-tiny --ids 1,2 --threads 1");
    CHECK_EQ_INT(o.status, 1);
    CHECK(o.err && strstr(o.err, "rank 0: expert parallel 3 does not divide this model's 16 routed experts"));
    CHECK(o.text == NULL || strstr(o.text, "logits") == NULL);
    test_out_free(&o);
}

TEST(ep_flag_errors_are_clear) {
    struct test_out o =
        tp_run(&env2, true, "logits --model " GOLD "dsv3-tiny --ids 1 --threads 1 --expert-parallel 3");
    CHECK_EQ_INT(o.status, 2);
    CHECK(o.err && strstr(o.err, "rank 0: --expert-parallel 3 does not divide the 2 ranks"));
    CHECK(o.err && strstr(o.err, "rank 1: --expert-parallel 3 does not divide the 2 ranks"));
    test_out_free(&o);
    o = tp_run(&env2, true, "logits --model models/demo --ids 1 --threads 1 --expert-parallel=2");
    CHECK_EQ_INT(o.status, 1);
    CHECK(o.err && strstr(o.err, "expert parallel 2 needs a DeepSeek-V2/V3 MoE model"));
    test_out_free(&o);
    o = tp_run(&env2, false, "logits --model models/demo-v3 --ids 1 --expert-parallel 2");
    CHECK_EQ_INT(o.status, 2);
    CHECK(o.err && strstr(o.err, "--expert-parallel 2 needs one process per rank"));
    test_out_free(&o);
    o = tp_run(&env2, false, "logits --model models/demo-v3 --ids 1 --expert-parallel 0");
    CHECK_EQ_INT(o.status, 2);
    test_out_free(&o);
}

int main(void) {
    int rc = tp_env_init(&env2, MPIRUN_N(2));
    if (rc) return rc;
    if ((rc = tp_env_init(&env3, MPIRUN_N(3))) || (rc = tp_env_init(&env4, MPIRUN_N(4)))) return rc;
    RUN(ep_logits_two_and_four_ranks_match_one_process);
    RUN(ep_logits_two_groups_of_two_match_one_process);
    RUN(ep_generate_greedy_same_ids);
    RUN(ep_experts_not_divisible_is_clear_error);
    RUN(ep_flag_errors_are_clear);
    tp_env_done(&env2);
    tp_env_done(&env3);
    tp_env_done(&env4);
    return test_summary();
}
