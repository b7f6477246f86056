/*
 * test_dist_mpi.c: tensor parallel end to end under `mpirun -np 2` ($DSI_BIN),
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
#include <cjson/cJSON.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"
#include "test_util.h"

#define GOLD "tests/golden/models/"
/* Open MPI leaks at exit by design, which LeakSanitizer would turn into exit 1. */
#define MPIRUN                                                                                               \
    "mpirun --allow-run-as-root --oversubscribe --bind-to none "                                             \
    "-x ASAN_OPTIONS -x OMP_WAIT_POLICY -x DSI_LOG_LEVEL -np 2 "

static const char *bin;
static char errpath[] = "/tmp/dsi_test_dist_XXXXXX";

/* Runs `[mpirun ...] $DSI_BIN args`; timeout keeps a hang from stalling CI. */
static struct test_out run(bool mpi, const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%sOMP_WAIT_POLICY=passive DSI_LOG_LEVEL=warn timeout 240 %s%s %s 2>%s",
             mpi ? "ASAN_OPTIONS=detect_leaks=0 " : "", mpi ? MPIRUN : "", bin, args, errpath);
    return test_run_shell(cmd, errpath);
}

/* Max over rows of max|a-b| / max|a|; -1 if the shapes differ or JSON is bad. */
static double logits_diff(const char *ja, const char *jb, int *rows) {
    cJSON *a = cJSON_Parse(ja ? ja : ""), *b = cJSON_Parse(jb ? jb : "");
    double worst = -1;
    cJSON *la = cJSON_GetObjectItem(a, "logits"), *lb = cJSON_GetObjectItem(b, "logits");
    *rows = 0;
    if (cJSON_IsArray(la) && cJSON_IsArray(lb) && cJSON_GetArraySize(la) == cJSON_GetArraySize(lb)) {
        worst = 0;
        for (int r = 0; r < cJSON_GetArraySize(la); r++) {
            cJSON *ra = cJSON_GetArrayItem(la, r), *rb = cJSON_GetArrayItem(lb, r);
            int n = cJSON_GetArraySize(ra);
            if (n == 0 || n != cJSON_GetArraySize(rb)) {
                worst = -1;
                break;
            }
            double amax = 0, dmax = 0;
            for (int i = 0; i < n; i++) {
                double x = cJSON_GetArrayItem(ra, i)->valuedouble, y = cJSON_GetArrayItem(rb, i)->valuedouble;
                if (fabs(x) > amax) amax = fabs(x);
                if (fabs(x - y) > dmax) dmax = fabs(x - y);
            }
            double rel = amax > 0 ? dmax / amax : dmax;
            if (rel > worst) worst = rel;
            (*rows)++;
        }
    }
    cJSON_Delete(a);
    cJSON_Delete(b);
    return worst;
}

static void check_logits(const char *model, const char *opts, double tol) {
    char args[1024];
    snprintf(args, sizeof args,
             "logits --model %s --ids 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17 --threads 1 %s", model, opts);
    struct test_out one = run(false, args), two = run(true, args);
    CHECK_EQ_INT(one.status, 0);
    CHECK_EQ_INT(two.status, 0);
    int rows = 0;
    double d = logits_diff(one.text, two.text, &rows);
    fprintf(stderr, "  %s %s: %d rows, max rel diff %.3g\n", model, opts, rows, d);
    CHECK_EQ_INT(rows, 17); /* crosses a 16-token KV block */
    CHECK(d >= 0 && d <= tol);
    if (two.status) fprintf(stderr, "%s\n", two.err ? two.err : "");
    test_out_free(&one);
    test_out_free(&two);
}

static void check_generate(const char *model, const char *opts) {
    char args[1024];
    snprintf(
        args, sizeof args,
        "generate --model %s --ids 1,2,3 --max-tokens 12 --temperature 0 --ignore-eos --json --threads 1 %s",
        model, opts);
    struct test_out one = run(false, args), two = run(true, args);
    CHECK_EQ_INT(one.status, 0);
    CHECK_EQ_INT(two.status, 0);
    cJSON *a = cJSON_Parse(one.text ? one.text : ""), *b = cJSON_Parse(two.text ? two.text : "");
    cJSON *ia = cJSON_GetObjectItem(a, "ids"), *ib = cJSON_GetObjectItem(b, "ids");
    CHECK(cJSON_IsArray(ia) && cJSON_IsArray(ib));
    CHECK_EQ_INT(cJSON_GetArraySize(ia), 12);
    char *sa = cJSON_PrintUnformatted(ia), *sb = cJSON_PrintUnformatted(ib);
    CHECK_EQ_STR(sa, sb);
    fprintf(stderr, "  %s %s: 1 rank %s, 2 ranks %s\n", model, opts, sa ? sa : "-", sb ? sb : "-");
    free(sa);
    free(sb);
    cJSON_Delete(a);
    cJSON_Delete(b);
    test_out_free(&one);
    test_out_free(&two);
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
    bin = getenv("DSI_BIN");
    if (!bin) {
        fprintf(stderr, "DSI_BIN is not set\n");
        return 1;
    }
    if (system("command -v mpirun >/dev/null 2>&1") != 0) {
        fprintf(stderr, "mpirun not installed (Debian: openmpi-bin): skipped\n");
        return 77;
    }
    int fd = mkstemp(errpath);
    if (fd < 0) return 1;
    close(fd);
    RUN(tp_logits_gqa_bias);
    RUN(tp_logits_mha);
    RUN(tp_logits_untied_lm_head);
    RUN(tp_logits_demo_int8);
    RUN(tp_generate_greedy_same_ids);
    RUN(tp_heads_not_divisible_is_clear_error);
    RUN(tp_flag_mismatch_and_without_mpirun);
    RUN(tp_bad_token_fails_on_rank0_without_hang);
    unlink(errpath);
    return test_summary();
}
