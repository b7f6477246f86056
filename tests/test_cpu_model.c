/*
 * test_cpu_model.c: the CPU backend against HF transformers on the tiny models in
 * tests/golden/models (made by scripts/gen_hf_fixtures.py with transformers 5.17):
 *   - fp32 logits of every prompt position, relative error max|a-b| / max|b| per
 *     row <= 1e-3 (f32 and bf16 weights: the files hold bf16 values, so both are
 *     exact weights; the bound is the one the issue sets), int8 looser (below)
 *   - rope inv_freq equal to HF's table
 *   - 16-token greedy continuations token for token (HF's top1-top2 margins are all
 *     >= 2e-3, far above fp32 noise)
 *   - a sequence's logits are bit-identical alone, in a mixed batch, prefilled in
 *     one chunk or decoded token by token, and with 1 or 2 threads
 *   - bad inputs: token id out of range, prompt longer than the context, bad block
 *     ids, a config.json whose shapes disagree with the tensors, bad options.
 */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dsinfer/backend.h"
#include "../src/backend/cpu/cpu_ops.h"
#include "dsinfer/err.h"
#include "dsinfer/rope.h"
#include "dsinfer/model.h"
#include "test.h"
#include "test_util.h"

#define GOLD "tests/golden/models/"
/* int8 on these random models (weights drawn wider than HF's init, so activations
 * and attention are peaky and amplify the ~0.7% per-tensor quantization noise):
 * observed max row error 0.045-0.12 (per channel and group 32). The bound leaves
 * room without letting a broken kernel (errors ~1) through; the kernel itself is
 * checked exactly against dequantized weights in test_cpu_ops. */
#define TOL_F32 1e-3
#define TOL_INT8 0.2
#define TOL_BF16_KV 2e-2
#define TOL_FP8_AS_BF16 2e-2
#define TOL_INT8_MOE_MEDIAN 0.12 /* the dense families' worst max-row error (llama-headdim) */

static const char *const MODELS[] = {"qwen2-gqa-tied", "qwen2-untied",  "llama-mha", "llama-linear",
                                     "llama-llama3",   "llama-headdim", "tiny-chat", "dsv2-lite",
                                     "dsv3-tiny",      "dsv3-fp8"};
#define N_MODELS (int)(sizeof MODELS / sizeof MODELS[0])
#define N_DENSE 7 /* MODELS[N_DENSE..] are DeepSeek MLA + MoE */

struct ref {
    int n; /* prompts */
    int32_t *prompt[4];
    int plen[4];
    int32_t greedy[4][16];
    float *logits[4]; /* (plen, vocab) */
    int vocab;
    float inv_freq[512];
    int n_inv;
    float attn_scaling;
};

static int ref_load(const char *name, struct ref *r) {
    memset(r, 0, sizeof *r);
    char path[256];
    snprintf(path, sizeof path, GOLD "%s.ref.json", name);
    char *js = test_read_file(path, NULL);
    if (!js) return -1;
    cJSON *root = cJSON_Parse(js);
    free(js);
    if (!root) return -1;
    cJSON *pr = cJSON_GetObjectItem(root, "prompts"), *gr = cJSON_GetObjectItem(root, "greedy");
    r->n = cJSON_GetArraySize(pr);
    if (r->n > 4) r->n = 4;
    for (int i = 0; i < r->n; i++) {
        cJSON *p = cJSON_GetArrayItem(pr, i), *g = cJSON_GetArrayItem(gr, i);
        r->plen[i] = cJSON_GetArraySize(p);
        r->prompt[i] = calloc((size_t)r->plen[i], sizeof(int32_t));
        for (int j = 0; j < r->plen[i]; j++)
            r->prompt[i][j] = cJSON_GetArrayItem(p, j)->valueint;
        for (int j = 0; j < 16 && j < cJSON_GetArraySize(g); j++)
            r->greedy[i][j] = cJSON_GetArrayItem(g, j)->valueint;
    }
    cJSON *rope = cJSON_GetObjectItem(root, "rope");
    cJSON *inv = cJSON_GetObjectItem(rope, "inv_freq");
    r->n_inv = cJSON_GetArraySize(inv);
    for (int i = 0; i < r->n_inv && i < 512; i++)
        r->inv_freq[i] = (float)cJSON_GetArrayItem(inv, i)->valuedouble;
    r->attn_scaling = (float)cJSON_GetObjectItem(rope, "attention_scaling")->valuedouble;
    cJSON_Delete(root);

    snprintf(path, sizeof path, GOLD "%s.ref.bin", name);
    size_t len;
    char *bin = test_read_file(path, &len);
    if (!bin || len < 12 || memcmp(bin, "DSIHFLG1", 8)) {
        free(bin);
        return -1;
    }
    size_t off = 12;
    for (int i = 0; i < r->n; i++) {
        uint32_t rows, vocab;
        memcpy(&rows, bin + off, 4);
        memcpy(&vocab, bin + off + 4, 4);
        off += 8;
        size_t n = (size_t)rows * vocab;
        if ((int)rows != r->plen[i] || off + n * 4 > len) {
            free(bin);
            return -1;
        }
        r->logits[i] = malloc(n * 4);
        memcpy(r->logits[i], bin + off, n * 4);
        off += n * 4;
        r->vocab = (int)vocab;
    }
    free(bin);
    return 0;
}

static void ref_free(struct ref *r) {
    for (int i = 0; i < r->n; i++) {
        free(r->prompt[i]);
        free(r->logits[i]);
    }
}

static double row_rel_err(const float *a, const float *b, int n) {
    double md = 0, mb = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) md = d; /* NaN propagates as a failure */
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    return mb > 0 ? md / mb : md;
}

static int open_be(const char *name, enum dsi_weight_dtype wd, int gs, enum dsi_kv_dtype kd, int threads,
                   struct dsi_model *m, struct dsi_backend **be) {
    char dir[256], *err = NULL;
    snprintf(dir, sizeof dir, GOLD "%s", name);
    struct dsi_model_open_opts mo = {0};
    int rc = dsi_model_open(m, dir, &mo, &err);
    if (rc) {
        fprintf(stderr, "  open %s: %s\n", name, err ? err : "?");
        free(err);
        return rc;
    }
    struct dsi_backend_opts o = {.weight_dtype = wd,
                                 .int8_group_size = gs,
                                 .kv_dtype = kd,
                                 .kv_block_size = 4,
                                 .kv_bytes = 4 << 20,
                                 .max_batch_tokens = 128,
                                 .n_threads = threads};
    rc = dsi_backend_create("cpu", m, &o, be, &err);
    if (rc) {
        fprintf(stderr, "  backend %s: %s\n", name, err ? err : "?");
        free(err);
        dsi_model_close(m);
    }
    return rc;
}

/* Logits of every position, one decode step per token, blocks base..; out (n, vocab). */
static int run_positions(struct dsi_backend *be, const int32_t *ids, int n, int32_t base, float *out) {
    int32_t table[64];
    for (int i = 0; i < 64; i++)
        table[i] = base + i;
    for (int i = 0; i < n; i++) {
        struct dsi_batch_seq s = {.seq_id = 1,
                                  .tokens = ids + i,
                                  .n_tokens = 1,
                                  .pos = i,
                                  .block_table = table,
                                  .n_blocks = 64,
                                  .want_logits = true};
        struct dsi_batch b = {&s, 1};
        char *err = NULL;
        int rc = be->ops->forward(be, &b, out + (size_t)i * be->vocab_size, &err);
        if (rc) {
            fprintf(stderr, "  forward: %s\n", err ? err : "?");
            free(err);
            return rc;
        }
    }
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Every row's error of every prompt, sorted ascending, into errs (cap entries);
 * returns the count (-1 on failure). */
static int model_row_errs(const char *name, enum dsi_weight_dtype wd, int gs, enum dsi_kv_dtype kd, double *errs,
                          int cap) {
    struct ref r;
    struct dsi_model m;
    struct dsi_backend *be = NULL;
    if (ref_load(name, &r)) return -1;
    if (open_be(name, wd, gs, kd, 0, &m, &be)) {
        ref_free(&r);
        return -1;
    }
    int n = 0;
    for (int p = 0; p < r.n && n >= 0; p++) {
        float *out = malloc((size_t)r.plen[p] * r.vocab * sizeof(float));
        if (run_positions(be, r.prompt[p], r.plen[p], 0, out)) n = -1;
        for (int i = 0; i < r.plen[p] && n >= 0 && n < cap; i++)
            errs[n++] = row_rel_err(out + (size_t)i * r.vocab, r.logits[p] + (size_t)i * r.vocab, r.vocab);
        free(out);
    }
    dsi_backend_destroy(be);
    dsi_model_close(&m);
    ref_free(&r);
    if (n > 0) qsort(errs, (size_t)n, sizeof *errs, cmp_double);
    return n;
}

static double model_max_err(const char *name, enum dsi_weight_dtype wd, int gs, enum dsi_kv_dtype kd) {
    struct ref r;
    struct dsi_model m;
    struct dsi_backend *be = NULL;
    if (ref_load(name, &r)) return 1e9;
    if (open_be(name, wd, gs, kd, 0, &m, &be)) {
        ref_free(&r);
        return 1e9;
    }
    double worst = 0;
    CHECK_EQ_INT(be->vocab_size, r.vocab);
    for (int p = 0; p < r.n; p++) {
        float *out = malloc((size_t)r.plen[p] * r.vocab * sizeof(float));
        if (run_positions(be, r.prompt[p], r.plen[p], 0, out)) worst = 1e9;
        for (int i = 0; i < r.plen[p] && worst < 1e9; i++) {
            double e = row_rel_err(out + (size_t)i * r.vocab, r.logits[p] + (size_t)i * r.vocab, r.vocab);
            if (!(e <= worst)) worst = e;
        }
        free(out);
    }
    dsi_backend_destroy(be);
    dsi_model_close(&m);
    ref_free(&r);
    return worst;
}

TEST(logits_f32_match_hf_all_models) {
    for (int i = 0; i < N_MODELS; i++) {
        double e = model_max_err(MODELS[i], DSI_W_F32, 0, DSI_KV_F32);
        fprintf(stderr, "  %-16s f32  max row rel err %.3g\n", MODELS[i], e);
        CHECK(e <= TOL_F32);
    }
}

/* Lossy modes on the MoE models: row errors sorted; the typical row and three
 * rows in four must be within the bounds (see logits_int8_moe_models for why the
 * max row is not). Returns the median. */
static double moe_lossy(const char *name, enum dsi_weight_dtype wd, int gs, enum dsi_kv_dtype kd, double median_tol,
                        double p75_tol, const char *what) {
    double errs[128];
    int n = model_row_errs(name, wd, gs, kd, errs, 128);
    CHECK(n > 0);
    if (n <= 0) return 1e9;
    fprintf(stderr, "  %-10s %-22s %d rows, median %.3g, p75 %.3g, p90 %.3g, max %.3g\n", name, what, n,
            errs[n / 2], errs[n * 3 / 4], errs[n * 9 / 10], errs[n - 1]);
    CHECK(errs[0] > 0); /* the lossy format really is in use */
    CHECK(errs[n / 2] <= median_tol);
    CHECK(errs[n * 3 / 4] <= p75_tol);
    return errs[n / 2];
}

TEST(logits_bf16_weights_match_hf) {
    for (int i = 0; i < N_MODELS; i++) {
        if (!strcmp(MODELS[i], "dsv3-fp8")) { /* e4m3 x f32 block scale: bf16 rounds these weights */
            moe_lossy(MODELS[i], DSI_W_BF16, 0, DSI_KV_F32, TOL_BF16_KV, TOL_BF16_KV, "bf16 from fp8");
            continue;
        }
        double e = model_max_err(MODELS[i], DSI_W_BF16, 0, DSI_KV_F32);
        CHECK(e <= TOL_F32);
    }
    double e = model_max_err("qwen2-gqa-tied", DSI_W_BF16, 0, DSI_KV_BF16);
    fprintf(stderr, "  qwen2-gqa-tied bf16 weights + bf16 KV: %.3g\n", e);
    CHECK(e <= TOL_BF16_KV);
    for (int i = N_DENSE; i < N_MODELS; i++) /* the MLA latent cache in bf16 */
        moe_lossy(MODELS[i], DSI_W_F32, 0, DSI_KV_BF16, TOL_BF16_KV, TOL_BF16_KV, "bf16 latent cache");
}

TEST(logits_int8_within_quantization_tolerance) {
    for (int i = 0; i < N_DENSE; i++) {
        double e = model_max_err(MODELS[i], DSI_W_INT8, 0, DSI_KV_F32);
        double eg = i % 3 == 0 ? model_max_err(MODELS[i], DSI_W_INT8, 32, DSI_KV_F32) : 0.0;
        fprintf(stderr, "  %-16s int8 per-channel %.3g, group 32 %.3g\n", MODELS[i], e, eg);
        CHECK(e <= TOL_INT8);
        CHECK(eg <= TOL_INT8);
        CHECK(e > 0); /* int8 really is in use */
    }
}

/* The int8 KV cache (f32 weights) within the int8 bounds: the dense fixtures'
 * max row error as for int8 weights, the MLA latent cache as for int8 weights on
 * the MoE models (median / p75: routing near-ties, see below). */
TEST(logits_int8_kv_cache_within_int8_tolerance) {
    for (int i = 0; i < N_DENSE; i++) {
        double e = model_max_err(MODELS[i], DSI_W_F32, 0, DSI_KV_INT8);
        fprintf(stderr, "  %-16s f32 weights + int8 KV: %.3g\n", MODELS[i], e);
        CHECK(e <= TOL_INT8);
        CHECK(e > 0); /* the int8 cache really is in use */
    }
    for (int i = N_DENSE; i < N_MODELS; i++)
        moe_lossy(MODELS[i], DSI_W_F32, 0, DSI_KV_INT8, TOL_INT8_MOE_MEDIAN, TOL_INT8, "int8 latent cache");
}

/* INT8 on the MoE models. Routing is a discrete choice: int8 noise that moves a
 * token's hidden state across a near-tie between two experts (or two groups under
 * noaux_tc) swaps an expert and changes that token's output by O(1), and the
 * changed latent then reaches every later position through attention. So the
 * max-row bound of the dense families does not hold row for row; what holds
 * (observed, transformers 5.17 fixtures, per channel / group 8):
 *   dsv2-lite median .052/.031, p75 < .12, max .23/.19
 *   dsv3-tiny median .093/.048, p75 < .2,  max .58/.47 (16 experts in 4 groups: most ties)
 *   dsv3-fp8  median .047/.031, p75 < .1,  max 1.02/.093
 * The typical row must be within the dense families' bound, three rows in four
 * within TOL_INT8, and group-wise int8 must beat per channel. The router itself is
 * f32 (cpu_deepseek_load.c) and every matrix is exact against dequantized weights
 * in test_cpu_ops / test_cpu_deepseek. */
TEST(logits_int8_moe_models) {
    for (int i = N_DENSE; i < N_MODELS; i++) {
        double pc = moe_lossy(MODELS[i], DSI_W_INT8, 0, DSI_KV_F32, TOL_INT8_MOE_MEDIAN, TOL_INT8, "int8 per channel");
        double g8 = moe_lossy(MODELS[i], DSI_W_INT8, 8, DSI_KV_F32, TOL_INT8_MOE_MEDIAN, TOL_INT8, "int8 group 8");
        CHECK(g8 < pc); /* finer groups, less error: the noise is quantization's */
    }
}

TEST(rope_inv_freq_equals_hf_table) {
    for (int i = 0; i < N_MODELS; i++) {
        struct ref r;
        char dir[256], *err = NULL;
        struct dsi_model_config cfg;
        if (ref_load(MODELS[i], &r)) {
            CHECK(0);
            continue;
        }
        snprintf(dir, sizeof dir, GOLD "%s", MODELS[i]);
        CHECK_EQ_INT(dsi_model_config_load(dir, &cfg, &err), 0);
        free(err);
        float inv[512], af;
        CHECK_EQ_INT(dsi_rope_inv_freq(&cfg.rope, cfg.rope_theta, cfg.head_dim, cfg.max_position_embeddings,
                                       0, inv, &af),
                     0);
        CHECK_EQ_INT(r.n_inv, cfg.head_dim / 2);
        for (int k = 0; k < r.n_inv; k++)
            CHECK_NEAR(inv[k], r.inv_freq[k], 2e-7 * fabs(r.inv_freq[k]) + 1e-12);
        CHECK_NEAR(af, r.attn_scaling, 1e-7);
        ref_free(&r);
    }
}

/* Greedy: prefill the prompt in one chunk, then one token per step. */
static int greedy_run(struct dsi_backend *be, const int32_t *prompt, int n, int steps, int32_t *out) {
    int32_t table[64];
    for (int i = 0; i < 64; i++)
        table[i] = i;
    float *lg = malloc((size_t)be->vocab_size * sizeof(float));
    struct dsi_batch_seq s = {.seq_id = 1,
                              .tokens = prompt,
                              .n_tokens = n,
                              .pos = 0,
                              .block_table = table,
                              .n_blocks = 64,
                              .want_logits = true};
    struct dsi_batch b = {&s, 1};
    int rc = 0;
    for (int k = 0; k < steps && !rc; k++) {
        char *err = NULL;
        rc = be->ops->forward(be, &b, lg, &err);
        free(err);
        out[k] = 0;
        for (int v = 1; v < be->vocab_size; v++)
            if (lg[v] > lg[out[k]]) out[k] = v;
        s.pos += s.n_tokens;
        s.tokens = &out[k];
        s.n_tokens = 1;
    }
    free(lg);
    return rc;
}

TEST(greedy_continuations_match_hf_token_for_token) {
    for (int i = 0; i < N_MODELS; i++) {
        struct ref r;
        struct dsi_model m;
        struct dsi_backend *be;
        if (ref_load(MODELS[i], &r) || open_be(MODELS[i], DSI_W_F32, 0, DSI_KV_F32, 0, &m, &be)) {
            CHECK(0);
            continue;
        }
        for (int p = 0; p < r.n; p++) {
            int32_t got[16];
            CHECK_EQ_INT(greedy_run(be, r.prompt[p], r.plen[p], 16, got), 0);
            int same = !memcmp(got, r.greedy[p], sizeof got);
            if (!same) fprintf(stderr, "  %s prompt %d: greedy differs\n", MODELS[i], p);
            CHECK(same);
        }
        dsi_backend_destroy(be);
        dsi_model_close(&m);
        ref_free(&r);
    }
}

/* Seq A alone (prefill 7 + 3 decodes) vs. A mixed with B and C in every step,
 * vs. A decoded one token at a time with 1 thread: same bits. */
static void bit_identical(const char *name) {
    struct dsi_model m1, m2;
    struct dsi_backend *be, *be1;
    if (open_be(name, DSI_W_INT8, 0, DSI_KV_BF16, 2, &m1, &be) ||
        open_be(name, DSI_W_INT8, 0, DSI_KV_BF16, 1, &m2, &be1)) {
        CHECK(0);
        return;
    }
    int V = be->vocab_size;
    int32_t a[10] = {5, 17, 99, 3, 250, 8, 64, 11, 12, 13};
    int32_t bt[9] = {7, 7, 7, 1, 2, 3, 4, 5, 6};
    float *alone = malloc(sizeof(float) * V * 4), *mixed = malloc(sizeof(float) * V * 4 * 3);
    float *single = malloc(sizeof(float) * V * 10);
    int32_t ta[8] = {0, 1, 2, 3, 4, 5, 6, 7}, tb[8] = {10, 11, 12, 13, 14, 15, 16, 17},
            tc[8] = {20, 21, 22, 23, 24, 25, 26, 27};
    char *err = NULL;
    /* alone */
    struct dsi_batch_seq s = {.seq_id = 1,
                              .tokens = a,
                              .n_tokens = 7,
                              .pos = 0,
                              .block_table = ta,
                              .n_blocks = 8,
                              .want_logits = true};
    struct dsi_batch b = {&s, 1};
    CHECK_EQ_INT(be->ops->forward(be, &b, alone, &err), 0);
    for (int k = 0; k < 3; k++) {
        s.tokens = a + 7 + k;
        s.pos = 7 + k;
        s.n_tokens = 1;
        CHECK_EQ_INT(be->ops->forward(be, &b, alone + (size_t)(k + 1) * V, &err), 0);
    }
    /* mixed: B prefills before A in the batch, C decodes after, A's rows at index 1 */
    struct dsi_batch_seq ms[3] = {
        {.seq_id = 2,
         .tokens = bt,
         .n_tokens = 9,
         .pos = 0,
         .block_table = tb,
         .n_blocks = 8,
         .want_logits = true},
        {.seq_id = 1,
         .tokens = a,
         .n_tokens = 7,
         .pos = 0,
         .block_table = tc,
         .n_blocks = 8,
         .want_logits = true},
        {.seq_id = 3,
         .tokens = bt,
         .n_tokens = 2,
         .pos = 0,
         .block_table = ta,
         .n_blocks = 8,
         .want_logits = false},
    };
    struct dsi_batch mb = {ms, 3};
    CHECK_EQ_INT(be->ops->forward(be, &mb, mixed, &err), 0);
    CHECK(!memcmp(mixed + V, alone, sizeof(float) * V));
    for (int k = 0; k < 3; k++) {
        ms[0].tokens = a + k;
        ms[0].pos = 9 + k;
        ms[0].n_tokens = 1;
        ms[1].tokens = a + 7 + k;
        ms[1].pos = 7 + k;
        ms[1].n_tokens = 1;
        ms[2].tokens = bt;
        ms[2].pos = 2 + k;
        ms[2].n_tokens = 1;
        ms[2].want_logits = true;
        CHECK_EQ_INT(be->ops->forward(be, &mb, mixed, &err), 0);
        CHECK(!memcmp(mixed + V, alone + (size_t)(k + 1) * V, sizeof(float) * V));
    }
    /* one thread, token by token */
    CHECK_EQ_INT(run_positions(be1, a, 10, 20, single), 0);
    CHECK(!memcmp(single + (size_t)6 * V, alone, sizeof(float) * V));
    CHECK(!memcmp(single + (size_t)9 * V, alone + (size_t)3 * V, sizeof(float) * V));
    free(err);
    free(alone);
    free(mixed);
    free(single);
    dsi_backend_destroy(be);
    dsi_backend_destroy(be1);
    dsi_model_close(&m1);
    dsi_model_close(&m2);
}

/* MoE models too: tokens grouped by expert across sequences, and the MLA latent
 * cache, must not make a sequence's bits depend on its neighbours. */
TEST(sequence_logits_bit_identical_across_batches_and_threads) {
    bit_identical("qwen2-untied");
    bit_identical("dsv2-lite");
    bit_identical("dsv3-tiny");
}

/* All prompts of a model decoded together, each at its own length (prefills of 5,
 * 17 and 40 tokens in one step, then one token each per step): HF's greedy ids. */
TEST(batched_greedy_of_mixed_lengths_matches_hf) {
    const char *names[] = {"dsv2-lite", "dsv3-tiny", "dsv3-fp8", "llama-mha"};
    for (int mi = 0; mi < 4; mi++) {
        struct ref r;
        struct dsi_model m;
        struct dsi_backend *be;
        if (ref_load(names[mi], &r) || open_be(names[mi], DSI_W_F32, 0, DSI_KV_F32, 0, &m, &be)) {
            CHECK(0);
            continue;
        }
        int V = be->vocab_size, n = r.n;
        int32_t tables[4][32], got[4][16], last[4];
        struct dsi_batch_seq seqs[4];
        for (int p = 0; p < n; p++) {
            for (int k = 0; k < 32; k++)
                tables[p][k] = p * 32 + k;
            seqs[p] = (struct dsi_batch_seq){.seq_id = (uint64_t)p + 1,
                                             .tokens = r.prompt[p],
                                             .n_tokens = r.plen[p],
                                             .pos = 0,
                                             .block_table = tables[p],
                                             .n_blocks = 32,
                                             .want_logits = true};
        }
        float *lg = malloc(sizeof(float) * (size_t)V * (size_t)n);
        struct dsi_batch b = {seqs, n};
        for (int step = 0; step < 16; step++) {
            char *err = NULL;
            CHECK_EQ_INT(be->ops->forward(be, &b, lg, &err), 0);
            free(err);
            for (int p = 0; p < n; p++) {
                const float *row = lg + (size_t)p * V;
                int best = 0;
                for (int v = 1; v < V; v++)
                    if (row[v] > row[best]) best = v;
                got[p][step] = last[p] = best;
                seqs[p].pos += seqs[p].n_tokens;
                seqs[p].tokens = &last[p];
                seqs[p].n_tokens = 1;
            }
        }
        for (int p = 0; p < n; p++) {
            int same = !memcmp(got[p], r.greedy[p], sizeof got[p]);
            if (!same) fprintf(stderr, "  %s prompt %d: batched greedy differs\n", names[mi], p);
            CHECK(same);
        }
        free(lg);
        dsi_backend_destroy(be);
        dsi_model_close(&m);
        ref_free(&r);
    }
}

TEST(bad_batches_are_rejected_with_messages) {
    struct dsi_model m;
    struct dsi_backend *be;
    if (open_be("llama-mha", DSI_W_F32, 0, DSI_KV_F32, 0, &m, &be)) {
        CHECK(0);
        return;
    }
    float *lg = malloc(sizeof(float) * be->vocab_size);
    int32_t table[4] = {0, 1, 2, 3}, ids[3] = {1, 256, 2};
    struct dsi_batch_seq s = {.seq_id = 1,
                              .tokens = ids,
                              .n_tokens = 3,
                              .pos = 0,
                              .block_table = table,
                              .n_blocks = 4,
                              .want_logits = true};
    struct dsi_batch b = {&s, 1};
    char *err = NULL;
    CHECK_EQ_INT(be->ops->forward(be, &b, lg, &err), DSI_ERANGE); /* id 256 == vocab */
    CHECK(err && strstr(err, "256"));
    free(err);
    err = NULL;
    ids[1] = -1;
    CHECK_EQ_INT(be->ops->forward(be, &b, lg, &err), DSI_ERANGE);
    free(err);
    err = NULL;
    ids[1] = 5;
    s.pos = m.cfg.max_position_embeddings - 1; /* longer than the context */
    CHECK_EQ_INT(be->ops->forward(be, &b, lg, &err), DSI_ERANGE);
    CHECK(err && strstr(err, "context"));
    free(err);
    err = NULL;
    s.pos = 0;
    table[0] = be->n_kv_blocks; /* block id out of the pool */
    CHECK_EQ_INT(be->ops->forward(be, &b, lg, &err), DSI_EINVAL);
    free(err);
    err = NULL;
    table[0] = 0;
    s.n_blocks = 0; /* too few blocks for the positions */
    CHECK_EQ_INT(be->ops->forward(be, &b, lg, &err), DSI_EINVAL);
    free(err);
    err = NULL;
    s.n_blocks = 4;
    s.n_tokens = 0;
    CHECK_EQ_INT(be->ops->forward(be, &b, lg, &err), DSI_EINVAL);
    free(err);
    err = NULL;
    s.n_tokens = 200; /* more than max_batch_tokens (128) */
    int32_t many[200] = {0};
    int32_t big[64];
    for (int i = 0; i < 64; i++)
        big[i] = i;
    s.tokens = many;
    s.block_table = big;
    s.n_blocks = 64;
    CHECK_EQ_INT(be->ops->forward(be, &b, lg, &err), DSI_ERANGE);
    free(err);
    free(lg);
    dsi_backend_destroy(be);
    dsi_model_close(&m);
}

static int copy_file(const char *src, const char *dst) {
    size_t n;
    char *b = test_read_file(src, &n);
    if (!b) return -1;
    FILE *f = fopen(dst, "wb");
    int ok = f && fwrite(b, 1, n, f) == n;
    if (f) fclose(f);
    free(b);
    return ok ? 0 : -1;
}

/* A copy of llama-mha whose config says intermediate_size 100 (tensors: 160). */
TEST(config_disagreeing_with_tensors_fails_cleanly) {
    char tmpl[] = "/tmp/dsi_cpu_badcfg_XXXXXX";
    char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL);
    if (!dir) return;
    char p[512];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    CHECK_EQ_INT(copy_file(GOLD "llama-mha/model.safetensors", p), 0);
    char *cfg = test_read_file(GOLD "llama-mha/config.json", NULL);
    CHECK(cfg && strstr(cfg, "\"intermediate_size\": 160"));
    if (cfg) {
        char *at = strstr(cfg, "\"intermediate_size\": 160");
        if (at) memcpy(at, "\"intermediate_size\": 100", 24);
        snprintf(p, sizeof p, "%s/config.json", dir);
        FILE *f = fopen(p, "wb");
        if (f) {
            fputs(cfg, f);
            fclose(f);
        }
        free(cfg);
    }
    struct dsi_model m;
    struct dsi_model_open_opts mo = {.skip_verify = true};
    char *err = NULL;
    CHECK_EQ_INT(dsi_model_open(&m, dir, &mo, &err), 0);
    free(err);
    err = NULL;
    struct dsi_backend_opts o = {.weight_dtype = DSI_W_F32};
    struct dsi_backend *be = NULL;
    CHECK_EQ_INT(dsi_backend_create("cpu", &m, &o, &be, &err), DSI_EFORMAT);
    CHECK(be == NULL);
    CHECK(err && strstr(err, "mlp.gate_proj.weight") && strstr(err, "[160, 64]") && strstr(err, "[100, 64]"));
    if (err) fprintf(stderr, "  message: %s\n", err);
    free(err);
    dsi_model_close(&m);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    rmdir(dir);
}

/* dsv3-fp8 copied with its config.json edited (from -> to); the backend must
 * refuse it with a message holding `needle`. */
static void fp8_broken(const char *from, const char *to, int want_rc, const char *needle) {
    char tmpl[] = "/tmp/dsi_cpu_fp8_XXXXXX";
    char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL);
    if (!dir) return;
    char p[512];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    CHECK_EQ_INT(copy_file(GOLD "dsv3-fp8/model.safetensors", p), 0);
    char *cfg = test_read_file(GOLD "dsv3-fp8/config.json", NULL), *at = cfg ? strstr(cfg, from) : NULL;
    CHECK(at != NULL);
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "wb");
    if (f && at) {
        fwrite(cfg, 1, (size_t)(at - cfg), f);
        fputs(to, f);
        fputs(at + strlen(from), f);
    }
    if (f) fclose(f);
    free(cfg);
    struct dsi_model m;
    struct dsi_model_open_opts mo = {.skip_verify = true};
    char *err = NULL;
    CHECK_EQ_INT(dsi_model_open(&m, dir, &mo, &err), 0);
    free(err);
    err = NULL;
    struct dsi_backend_opts o = {.weight_dtype = DSI_W_F32};
    struct dsi_backend *be = NULL;
    CHECK_EQ_INT(dsi_backend_create("cpu", &m, &o, &be, &err), want_rc);
    CHECK(be == NULL);
    CHECK(err && strstr(err, needle));
    if (err) fprintf(stderr, "  message: %s\n", err);
    free(err);
    dsi_model_close(&m);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    rmdir(dir);
}

/* FP8 checkpoints: block scales whose shape disagrees with weight_block_size, and
 * F8_E4M3 tensors in a model that does not declare quantization_config, fail at
 * load naming the tensor (the good checkpoint is checked against HF above, with
 * its SHA256SUMS verified like any model). */
TEST(fp8_checkpoint_mismatches_fail_cleanly) {
    fp8_broken("      128,\n      128", "      64,\n      64", DSI_EFORMAT, "weight_scale_inv must be float [");
    fp8_broken("\"quantization_config\"", "\"quantization_config_off\"", DSI_EUNSUPPORTED, "F8_E4M3");
}

TEST(bad_options_are_rejected) {
    struct dsi_model m;
    char *err = NULL;
    struct dsi_model_open_opts mo = {0};
    if (dsi_model_open(&m, GOLD "llama-mha", &mo, &err)) {
        free(err);
        CHECK(0);
        return;
    }
    struct dsi_backend *be = NULL;
    struct dsi_backend_opts o = {.weight_dtype = DSI_W_INT8, .int8_group_size = 48}; /* 64 % 48 != 0 */
    CHECK_EQ_INT(dsi_backend_create("cpu", &m, &o, &be, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "group size 48"));
    free(err);
    err = NULL;
    o.int8_group_size = 0;
    o.kv_bytes = 100; /* less than one block */
    CHECK_EQ_INT(dsi_backend_create("cpu", &m, &o, &be, &err), DSI_EINVAL);
    free(err);
    err = NULL;
    o.kv_bytes = 0;
    o.weight_dtype = (enum dsi_weight_dtype)7;
    CHECK_EQ_INT(dsi_backend_create("cpu", &m, &o, &be, &err), DSI_EINVAL);
    free(err);
    err = NULL;
    CHECK_EQ_INT(dsi_backend_create("tpu", &m, &o, &be, &err), DSI_EINVAL);
    free(err);
    dsi_model_close(&m);
}

TEST(quant_report_lists_every_linear) {
    struct dsi_model m;
    struct dsi_backend *be;
    if (open_be("llama-mha", DSI_W_INT8, 0, DSI_KV_F32, 0, &m, &be)) {
        CHECK(0);
        return;
    }
    char *rep = NULL, *err = NULL;
    CHECK_EQ_INT(be->ops->quant_report(be, &rep, &err), 0);
    CHECK(rep && strstr(rep, "model.layers.1.mlp.down_proj.weight") && strstr(rep, "lm_head.weight"));
    int lines = 0;
    for (const char *q = rep; q && *q; q++)
        lines += *q == '\n';
    CHECK_EQ_INT(lines, 2 + 2 + 2 * 7 + 1); /* header 2, embed + lm_head, 7 per layer, summary */
    free(rep);
    dsi_backend_destroy(be);
    dsi_model_close(&m);
}

int main(void) {
    RUN(logits_f32_match_hf_all_models);
    RUN(logits_bf16_weights_match_hf);
    RUN(logits_int8_within_quantization_tolerance);
    RUN(logits_int8_kv_cache_within_int8_tolerance);
    RUN(logits_int8_moe_models);
    RUN(rope_inv_freq_equals_hf_table);
    RUN(greedy_continuations_match_hf_token_for_token);
    RUN(sequence_logits_bit_identical_across_batches_and_threads);
    RUN(batched_greedy_of_mixed_lengths_matches_hf);
    RUN(bad_batches_are_rejected_with_messages);
    RUN(config_disagreeing_with_tensors_fails_cleanly);
    RUN(fp8_checkpoint_mismatches_fail_cleanly);
    RUN(bad_options_are_rejected);
    RUN(quant_report_lists_every_linear);
    return test_summary();
}
