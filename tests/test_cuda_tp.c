/*
 * test_cuda_tp.c: tensor parallel on CUDA + NCCL end to end: `mpirun -np 2
 * $DSI_BIN ... --backend cuda` (one GPU per rank) against one process on one
 * GPU (`$DSI_BIN ... --backend cuda`), on the fixtures test_parallel_mpi.c uses for
 * the CPU path:
 *  - `dsinfer logits`: every row within TOL_TP_BF16 / TOL_TP_INT8 of the row's
 *    largest |logit|, in bf16 and in int8 (per channel, and grouped on
 *    models/demo), for GQA + QKV bias (qwen2-gqa-tied), MHA (llama-mha), an
 *    untied lm_head (llama-llama3) and models/demo;
 *  - `dsinfer generate --temperature 0`: the same ids, token for token, with a
 *    prompt that crosses a KV block (a multi-token prefill, then decode steps);
 *    a mismatch prints the first diverging position;
 *  - errors end the whole job with a clear line and no hang (every run is under
 *    `timeout`): 2 ranks on a model with 6 heads / 1 kv head, an int8 group size
 *    that would straddle the ranks, a token id out of range, a weight file with
 *    one flipped byte (refused by rank 0 before any worker opens the model).
 * Every mpirun gets NCCL_NVLS_ENABLE=0 (no NVLink multicast on the test hosts).
 * Skipped (77) without mpirun, with fewer than 2 GPUs (nvidia-smi -L, and
 * CUDA_VISIBLE_DEVICES when set), or when the first 2-rank run says this dsinfer
 * has no tensor parallel on CUDA ("without NCCL" / "not built").
 * ctest labels "cuda;mpi"; built only with the CUDA backend.
 */
#include <stdio.h>
#include <sys/types.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "test_tp_util.h"

#define GOLD "tests/golden/models/"
#define MPIRUN_BASE                                                                                          \
    "mpirun --allow-run-as-root --oversubscribe --bind-to none "                                             \
    "-x ASAN_OPTIONS -x OMP_WAIT_POLICY -x DSI_LOG_LEVEL -x NCCL_NVLS_ENABLE "
/* -x of an unset variable makes Open MPI warn on every run: pass it only when set */
#define MPIRUN MPIRUN_BASE "-np 2 "
#define MPIRUN_LD MPIRUN_BASE "-x LD_LIBRARY_PATH -np 2 "
/* The CUDA backend keeps its KV cache in bf16; asking for it avoids a warning per run. */
#define CUDA "--backend cuda --kv-dtype bf16"

/* Tolerances, relative to the row's max |logit|. Both sides use the same bf16
 * (or int8: a shard's o/down columns keep their whole rows' scales) weights,
 * so the difference is only the order of the partial sums: the fp32
 * all-reduce of the o and down outputs adds two halves where one GEMM
 * accumulated all of them, and a ~1e-7 change before an activation is
 * rounded to bf16 (matmul inputs, KV cache) can flip one bf16 ulp (2^-8 =
 * 3.9e-3 relative) that the following layers carry. Measured on two H200s
 * (2026-11-28): 0 to 2e-5 on the tiny fixtures, 2.2e-3 (bf16), 1.3e-3 (int8)
 * and 2.2e-3 (int8 group 32) on models/demo, whose 8 layers have more flip
 * points; one GPU against the CPU reference differs by 1.5e-2..3e-2 on the
 * same fixtures (test_cuda_backend). So: about one bf16 ulp. */
#define TOL_TP_BF16 5e-3
#define TOL_TP_INT8 5e-3
/* Generated tokens per greedy run, after a 20-token prompt (crosses a 16-token KV block). */
#define GEN_TOKENS 16
#define GEN_PROMPT "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20"

static struct tp_env env;

static const char *const fixtures[] = {GOLD "qwen2-gqa-tied", GOLD "llama-mha", GOLD "llama-llama3",
                                       "models/demo"};

static void check_logits_all(const char *dtype_opts, double tol) {
    char opts[256];
    snprintf(opts, sizeof opts, "%s %s", CUDA, dtype_opts);
    for (size_t i = 0; i < sizeof fixtures / sizeof *fixtures; i++) {
        if (!tp_model_splits(fixtures[i], 2)) {
            fprintf(stderr, "  %s: heads or kv heads not divisible by 2, not compared\n", fixtures[i]);
            continue;
        }
        tp_check_logits(&env, fixtures[i], opts, tol);
    }
}

TEST(cuda_tp_logits_bf16) {
    check_logits_all("--dtype bf16", TOL_TP_BF16);
}

TEST(cuda_tp_logits_int8) {
    check_logits_all("--dtype int8", TOL_TP_INT8);
}

TEST(cuda_tp_logits_int8_grouped) {
    /* demo: 4 heads x 32 columns and 384 intermediate rows per rank, so G = 32 fits */
    tp_check_logits(&env, "models/demo", CUDA " --dtype int8 --group-size 32", TOL_TP_INT8);
}

TEST(cuda_tp_generate_greedy_same_ids) {
    tp_check_generate(&env, GOLD "qwen2-gqa-tied", GEN_PROMPT, GEN_TOKENS, CUDA " --dtype bf16");
    tp_check_generate(&env, GOLD "llama-mha", GEN_PROMPT, GEN_TOKENS, CUDA " --dtype int8");
    tp_check_generate(&env, "models/demo", GEN_PROMPT, GEN_TOKENS, CUDA " --dtype int8");
}

/* A failed 2-rank job: exit status 1 (not 124, a hang cut by timeout), both
 * parts of a clear message on stderr; at_create: it failed before any logits. */
static void check_fails(const char *args, const char *msg1, const char *msg2, bool at_create) {
    struct test_out o = tp_run(&env, true, args);
    bool clear = o.err && strstr(o.err, msg1) && strstr(o.err, msg2);
    CHECK(o.status != 124);
    CHECK_EQ_INT(o.status, 1);
    CHECK(clear);
    if (at_create) CHECK(o.text == NULL || strstr(o.text, "logits") == NULL);
    if (o.status != 1 || !clear)
        fprintf(stderr, "  status %d, stderr:\n%s\n", o.status, o.err ? o.err : "(none)");
    test_out_free(&o);
}

TEST(cuda_tp_heads_not_divisible_is_clear_error) {
    /* qwen2-untied has 6 heads and 1 kv head */
    check_fails("logits --model " GOLD "qwen2-untied --ids 1,2 --threads 1 " CUDA " --dtype bf16",
                "tensor parallel 2 does not divide", "6 attention heads", true);
}

TEST(cuda_tp_int8_group_straddling_ranks_is_clear_error) {
    /* demo: G = 256 divides every width of one process (256, 768) but not the
     * 128 attention columns of a rank; a group cannot straddle two GPUs */
    check_fails("logits --model models/demo --ids 1,2 --threads 1 " CUDA " --dtype int8 --group-size 256",
                "group size 256", "does not divide", true);
}

/* helpers from test_model_util.c */
char *tm_copy_fixture(const char *name);
int tm_flip_byte(const char *dir, const char *name, off_t at);
int tm_rm_rf(const char *dir);

/* --backend cuda opens the model for the single verify + upload pass, but under
 * tensor parallel rank 0 verifies every file on the host before "create": a
 * flipped byte fails the job and no worker ever opens the model (each one
 * that did would warn "verification SKIPPED"). */
TEST(cuda_tp_tampered_weights_refused_before_any_rank_loads) {
    char *dir = tm_copy_fixture("llama-mha");
    CHECK(dir != NULL);
    if (!dir) return;
    CHECK_EQ_INT(tm_flip_byte(dir, "model.safetensors", 200000), 0); /* inside the tensor data */
    char args[1024];
    snprintf(args, sizeof args, "logits --model %s --ids 1,2 " CUDA " --dtype bf16", dir);
    struct test_out o = tp_run(&env, true, args);
    CHECK(o.status != 124);
    CHECK_EQ_INT(o.status, 1);
    CHECK(o.err && strstr(o.err, "SHA-256 mismatch"));
    CHECK(o.err && !strstr(o.err, "verification SKIPPED"));
    if (o.status != 1 || !o.err || !strstr(o.err, "SHA-256 mismatch"))
        fprintf(stderr, "  status %d, stderr:\n%s\n", o.status, o.err ? o.err : "(none)");
    test_out_free(&o);
    tm_rm_rf(dir);
    free(dir);
}

TEST(cuda_tp_bad_token_fails_without_hang) {
    check_fails("logits --model " GOLD "llama-mha --ids 1,99999 --threads 1 " CUDA " --dtype bf16",
                "token id 99999", "out of range", false);
}

/* GPUs this process may use: `nvidia-smi -L` lines ("GPU 0: ..."), capped by
 * the entries of CUDA_VISIBLE_DEVICES when it is set; 0 without nvidia-smi. */
static int visible_gpus(void) {
    FILE *p = popen("nvidia-smi -L 2>/dev/null", "r");
    if (!p) return 0;
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, p))
        if (!strncmp(line, "GPU ", 4)) n++;
    if (pclose(p) != 0) return 0;
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    if (vis) {
        int m = 0;
        for (const char *s = vis; *s;) {
            size_t len = strcspn(s, ",");
            if (len > 0) m++;
            s += len;
            if (*s == ',') s++;
        }
        if (m < n) n = m;
    }
    return n;
}

/* The first 2-rank run: 77 when this dsinfer has no tensor parallel on CUDA,
 * 0 otherwise (other failures are left to the tests, which print them). */
static int probe_tp_cuda(void) {
    struct test_out o =
        tp_run(&env, true, "logits --model " GOLD "llama-mha --ids 1 --threads 1 " CUDA " --dtype bf16");
    int rc = 0;
    if (o.status != 0 && o.err && (strstr(o.err, "without NCCL") || strstr(o.err, "not built"))) {
        fprintf(stderr, "this dsinfer has no tensor parallel on CUDA: skipped\n%s\n", o.err);
        rc = 77;
    } else if (o.status != 0) {
        fprintf(stderr, "first 2-rank CUDA run failed (status %d):\n%s\n", o.status, o.err ? o.err : "");
    }
    test_out_free(&o);
    return rc;
}

int main(void) {
    /* NVLink multicast (NVLS) is not available on every multi-GPU host and NCCL
     * fails its init there; every mpirun passes this on with -x */
    if (setenv("NCCL_NVLS_ENABLE", "0", 1)) return 1;
    int rc = tp_env_init(&env, getenv("LD_LIBRARY_PATH") ? MPIRUN_LD : MPIRUN);
    if (rc) return rc;
    int gpus = visible_gpus();
    if (gpus < 2) {
        fprintf(stderr, "%d CUDA GPU(s) visible (nvidia-smi -L), tensor parallel needs 2: skipped\n", gpus);
        tp_env_done(&env);
        return 77;
    }
    if ((rc = probe_tp_cuda())) {
        tp_env_done(&env);
        return rc;
    }
    RUN(cuda_tp_logits_bf16);
    RUN(cuda_tp_logits_int8);
    RUN(cuda_tp_logits_int8_grouped);
    RUN(cuda_tp_generate_greedy_same_ids);
    RUN(cuda_tp_heads_not_divisible_is_clear_error);
    RUN(cuda_tp_int8_group_straddling_ranks_is_clear_error);
    RUN(cuda_tp_bad_token_fails_without_hang);
    RUN(cuda_tp_tampered_weights_refused_before_any_rank_loads);
    tp_env_done(&env);
    return test_summary();
}
