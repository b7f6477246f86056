/*
 * test_tp_util.h: what the tensor-parallel end-to-end tests share
 * (test_parallel_mpi.c on the CPU backend, test_cuda_tp.c on CUDA + NCCL), so that
 * both compare a 2-rank run with a single process in exactly the same way:
 *  - tp_env_init / tp_run: run `$DSI_BIN args` alone or under an mpirun prefix,
 *    under `timeout` (a hung collective must fail the test, not stall CI),
 *    capturing stdout, stderr and the exit status;
 *  - tp_logits_diff: the worst row of two `dsinfer logits` JSON outputs, as
 *    max|a-b| / max|a| (the tolerance is relative to the row's scale because
 *    logits of different fixtures differ by orders of magnitude);
 *  - tp_check_logits / tp_check_generate: the two comparisons as CHECKs;
 *  - tp_model_splits: whether a fixture's heads and kv heads divide by N.
 */
#ifndef DSI_TEST_TP_UTIL_H
#define DSI_TEST_TP_UTIL_H

#include <cjson/cJSON.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test.h"
#include "test_util.h"

/* Seconds one command may take; a hang ends as exit status 124. */
#define TP_RUN_TIMEOUT_S 240

struct tp_env {
    const char *bin;    /* $DSI_BIN */
    const char *mpirun; /* "mpirun ... -np 2 " prefix of the multi-rank runs */
    char errpath[32];   /* stderr of the last command */
};

/* Reads $DSI_BIN, checks that mpirun exists and makes the stderr file.
 * Returns 0, 77 (skip: no mpirun) or 1 (setup failed), with the reason on stderr. */
static inline int tp_env_init(struct tp_env *e, const char *mpirun) {
    e->bin = getenv("DSI_BIN");
    e->mpirun = mpirun;
    snprintf(e->errpath, sizeof e->errpath, "%s", "/tmp/dsi_test_parallel_XXXXXX");
    if (!e->bin) {
        fprintf(stderr, "DSI_BIN is not set\n");
        return 1;
    }
    if (system("command -v mpirun >/dev/null 2>&1") != 0) {
        fprintf(stderr, "mpirun not installed (Debian: openmpi-bin): skipped\n");
        return 77;
    }
    int fd = mkstemp(e->errpath);
    if (fd < 0) return 1;
    close(fd);
    return 0;
}

static inline void tp_env_done(struct tp_env *e) {
    unlink(e->errpath);
}

/* Runs `[mpirun ...] $DSI_BIN args`. Open MPI leaks at exit by design, which
 * LeakSanitizer would turn into exit 1, so ranks run without leak checks. */
static inline struct test_out tp_run(const struct tp_env *e, bool mpi, const char *args) {
    char cmd[4096];
    int n = snprintf(cmd, sizeof cmd, "%sOMP_WAIT_POLICY=passive DSI_LOG_LEVEL=warn timeout %d %s%s %s 2>%s",
                     mpi ? "ASAN_OPTIONS=detect_leaks=0 " : "", TP_RUN_TIMEOUT_S, mpi ? e->mpirun : "",
                     e->bin, args, e->errpath);
    if (n < 0 || (size_t)n >= sizeof cmd) {
        struct test_out o = {.status = -1000}; /* a cut command line would run something else */
        return o;
    }
    return test_run_shell(cmd, e->errpath);
}

/* Max over rows of max|a-b| / max|a|; -1 if the shapes differ or JSON is bad. */
static inline double tp_logits_diff(const char *ja, const char *jb, int *rows) {
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

/* `dsinfer logits` over 17 ids (crossing a 16-token KV block) by one process and
 * by the mpirun job: both succeed, 17 rows, worst row within tol. */
static inline void tp_check_logits(const struct tp_env *e, const char *model, const char *opts, double tol) {
    char args[1024];
    snprintf(args, sizeof args,
             "logits --model %s --ids 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17 --threads 1 %s", model, opts);
    struct test_out one = tp_run(e, false, args), two = tp_run(e, true, args);
    CHECK_EQ_INT(one.status, 0);
    CHECK_EQ_INT(two.status, 0);
    int rows = 0;
    double d = tp_logits_diff(one.text, two.text, &rows);
    fprintf(stderr, "  %s %s: %d rows, max rel diff %.3g\n", model, opts, rows, d);
    CHECK_EQ_INT(rows, 17); /* crosses a 16-token KV block */
    CHECK(d >= 0 && d <= tol);
    if (one.status) fprintf(stderr, "%s\n", one.err ? one.err : "");
    if (two.status) fprintf(stderr, "%s\n", two.err ? two.err : "");
    test_out_free(&one);
    test_out_free(&two);
}

/* Index of the first differing element of two JSON arrays of numbers, the
 * shorter length if one is a prefix of the other, -1 if they are equal. */
static inline int tp_first_diff(const cJSON *a, const cJSON *b) {
    int na = cJSON_GetArraySize(a), nb = cJSON_GetArraySize(b), n = na < nb ? na : nb;
    for (int i = 0; i < n; i++)
        if (cJSON_GetArrayItem(a, i)->valuedouble != cJSON_GetArrayItem(b, i)->valuedouble) return i;
    return na == nb ? -1 : n;
}

/* `dsinfer generate --temperature 0` from the prompt ids (e.g. "1,2,3") for
 * n_new tokens by one process and by the mpirun job: the same ids, token for
 * token; on a mismatch it prints where the two runs part. */
static inline void tp_check_generate(const struct tp_env *e, const char *model, const char *ids, int n_new,
                                     const char *opts) {
    char args[1024];
    snprintf(
        args, sizeof args,
        "generate --model %s --ids %s --max-tokens %d --temperature 0 --ignore-eos --json --threads 1 %s",
        model, ids, n_new, opts);
    struct test_out one = tp_run(e, false, args), two = tp_run(e, true, args);
    CHECK_EQ_INT(one.status, 0);
    CHECK_EQ_INT(two.status, 0);
    cJSON *a = cJSON_Parse(one.text ? one.text : ""), *b = cJSON_Parse(two.text ? two.text : "");
    cJSON *ia = cJSON_GetObjectItem(a, "ids"), *ib = cJSON_GetObjectItem(b, "ids");
    CHECK(cJSON_IsArray(ia) && cJSON_IsArray(ib));
    CHECK_EQ_INT(cJSON_GetArraySize(ia), n_new);
    char *sa = cJSON_PrintUnformatted(ia), *sb = cJSON_PrintUnformatted(ib);
    CHECK_EQ_STR(sa, sb);
    fprintf(stderr, "  %s %s: 1 rank %s, 2 ranks %s\n", model, opts, sa ? sa : "-", sb ? sb : "-");
    int at = cJSON_IsArray(ia) && cJSON_IsArray(ib) ? tp_first_diff(ia, ib) : -1;
    if (at >= 0) fprintf(stderr, "  %s %s: the runs part at generated token %d (0-based)\n", model, opts, at);
    if (one.status) fprintf(stderr, "%s\n", one.err ? one.err : "");
    if (two.status) fprintf(stderr, "%s\n", two.err ? two.err : "");
    free(sa);
    free(sb);
    cJSON_Delete(a);
    cJSON_Delete(b);
    test_out_free(&one);
    test_out_free(&two);
}

/* Whether n divides the attention heads and the kv heads of model/config.json
 * (the rule every tensor-parallel backend enforces); false if unreadable. */
static inline bool tp_model_splits(const char *model, int n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", model);
    char *text = test_read_file(path, NULL);
    cJSON *c = cJSON_Parse(text ? text : "");
    free(text);
    cJSON *h = cJSON_GetObjectItem(c, "num_attention_heads"),
          *kv = cJSON_GetObjectItem(c, "num_key_value_heads");
    int nh = cJSON_IsNumber(h) ? h->valueint : 0;
    int nkv = cJSON_IsNumber(kv) ? kv->valueint : nh; /* HF: absent means MHA */
    cJSON_Delete(c);
    return n > 0 && nh > 0 && nkv > 0 && nh % n == 0 && nkv % n == 0;
}

#endif
