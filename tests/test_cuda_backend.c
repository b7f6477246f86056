/*
 * test_cuda_backend.c: the CUDA backend on the tiny HF fixtures
 * (tests/golden/models/NAME) against the CPU backend, the numerical reference.
 *
 * For every fixture and prompt: prefill, then 12 greedy decode steps, each
 * backend feeding back its own choice. Checks:
 * - logits of every step within tolerance of the CPU backend's: max |diff|
 *   <= TOL * max(1, max |cpu logit|), TOL 0.03 for bf16 weights against CPU f32
 *   (bf16 activations at matmul inputs and in the KV cache: ~2^-8 relative per
 *   op over a few layers; measured worst 0.023), 0.04 for int8 against CPU int8
 *   (same int8 weights, scales and int8 embedding table; the CPU multiplies
 *   them with fp32 activations, the GPU with bf16 ones; measured worst 0.031);
 *   the same 0.04 for group-wise int8 (G = 32 and 16, bit-identical bytes and
 *   scales on both backends; the GPU dequantizes to bf16 for cuBLAS);
 * - greedy tokens equal to the CPU's, except after a step where the CPU's top-2
 *   margin is below the tolerance (a legitimate near-tie; reported, then that
 *   prompt stops comparing tokens);
 * - the three prompts batched in one step (shuffled block tables) give the same
 *   logits as one at a time, and GPU sampling (greedy) equals the argmax.
 * Without a GPU every test reports SKIP.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "dsinfer/backend.h"
#include "cuda_backend.h"
#include "dsinfer/model.h"
#include "test.h"
#include "test_cuda_model_util.h"
#include "test_cuda_util.h"

/* helpers from test_model_util.c */
char *tm_copy_fixture(const char *name);
int tm_rm_rf(const char *dir);

#define TOL_BF16 0.03
#define TOL_INT8 0.04

static const char *fixtures[] = {"qwen2-gqa-tied", "qwen2-untied", "llama-mha", "llama-headdim",
                                 "llama-linear",   "llama-llama3", "tiny-chat"};

static double norm_err(const float *a, const float *ref, int n) {
    double d = 0, r = 0;
    for (int i = 0; i < n; i++) {
        d += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
        r += (double)ref[i] * ref[i];
    }
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

static void compare_fixture_mode(const char *name, enum dsi_weight_dtype cuda_dt, enum dsi_weight_dtype cpu_dt,
                                 int group, enum dsi_int8_mode mode) {
    const double TOL = cuda_dt == DSI_W_INT8 ? TOL_INT8 : TOL_BF16;
    char dir[256];
    if (strchr(name, '/'))
        snprintf(dir, sizeof dir, "%s", name);
    else
        snprintf(dir, sizeof dir, "tests/golden/models/%s", name);
    struct dsi_model m;
    memset(&m, 0, sizeof m);
    struct dsi_model_open_opts mo = {.skip_verify = false, .n_threads = 2};
    char *err = NULL;
    int rc = dsi_model_open(&m, dir, &mo, &err);
    CHECK_EQ_INT(rc, 0);
    if (rc) {
        fprintf(stderr, "  %s: %s\n", dir, err ? err : "?");
        free(err);
        return;
    }
    struct dsi_backend_opts o;
    struct dsi_backend *gpu = NULL, *cpu = NULL;
    opts_for(&o, cuda_dt, group);
    o.int8_mode = mode;
    rc = dsi_backend_create("cuda", &m, &o, &gpu, &err);
    if (rc) fprintf(stderr, "  cuda create: %s\n", err ? err : "?");
    CHECK_EQ_INT(rc, 0);
    free(err), err = NULL;
    opts_for(&o, cpu_dt, group);
    o.int8_mode = mode;
    rc = dsi_backend_create("cpu", &m, &o, &cpu, &err);
    if (rc) fprintf(stderr, "  cpu create: %s\n", err ? err : "?");
    CHECK_EQ_INT(rc, 0);
    free(err), err = NULL;
    if (!gpu || !cpu) goto out;
    int V = m.cfg.vocab_size;
    float *lg = malloc((size_t)V * 4), *lc = malloc((size_t)V * 4);
    int32_t bt[7]; /* (64 + 12) / 16 + 1 blocks, a permutation of 0..6 */
    for (int i = 0; i < 7; i++)
        bt[i] = (i * 5 + 1) % 7;
    double worst = 0, worst_norm = 0;
    int diverged = 0;
    for (int p = 0; p < 3; p++) {
        int32_t prompt[MAX_PROMPT];
        int n = make_prompt(p, V, prompt);
        if (step(gpu, prompt, n, 0, bt, lg) || step(cpu, prompt, n, 0, bt, lc)) {
            CHECK(0);
            break;
        }
        int compare_tokens = 1;
        for (int g = 0; g <= GEN; g++) {
            double e = rel_err(lg, lc, V), en = norm_err(lg, lc, V);
            if (e > worst) worst = e;
            if (en > worst_norm) worst_norm = en;
            float margin, scale = 1.f;
            int tc = argmax(lc, V, &margin), tg = argmax(lg, V, NULL);
            for (int i = 0; i < V; i++)
                if (fabsf(lc[i]) > scale) scale = fabsf(lc[i]);
            if (compare_tokens && tg != tc) {
                if (margin < 2 * TOL * scale) { /* near-tie on the reference */
                    fprintf(stderr, "  %s prompt %d step %d: near-tie (margin %.4f), tokens %d vs %d\n", name,
                            p, g, margin, tg, tc);
                    diverged++;
                    compare_tokens = 0;
                } else {
                    fprintf(stderr, "  %s prompt %d step %d: cuda %d != cpu %d (margin %.4f)\n", name, p, g,
                            tg, tc, margin);
                    CHECK(tg == tc);
                    compare_tokens = 0;
                }
            }
            if (g == GEN || !compare_tokens) break;
            int32_t t = tc;
            if (step(gpu, &t, 1, n + g, bt, lg) || step(cpu, &t, 1, n + g, bt, lc)) {
                CHECK(0);
                break;
            }
        }
    }
    fprintf(stderr,
            "  %-15s %s g%d: worst logits error %.5f (relative to max(1,|logit|)), %.5f (L2 relative), "
            "near-tie stops %d\n",
            name, cuda_dt != DSI_W_INT8 ? "bf16" : mode == DSI_INT8_W8A8 ? "w8a8" : "int8", group, worst,
            worst_norm, diverged);
    CHECK(worst <= TOL);
    free(lg), free(lc);
out:
    dsi_backend_destroy(gpu);
    dsi_backend_destroy(cpu);
    dsi_model_close(&m);
}

static void compare_fixture(const char *name, enum dsi_weight_dtype cuda_dt, enum dsi_weight_dtype cpu_dt,
                            int group) {
    compare_fixture_mode(name, cuda_dt, cpu_dt, group, DSI_INT8_W8A16);
}

TEST(cuda_fixtures_bf16_match_cpu) {
    if (!have_gpu()) SKIP("no CUDA device");
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++)
        compare_fixture(fixtures[i], DSI_W_BF16, DSI_W_F32, 0);
}

TEST(cuda_fixtures_int8_match_cpu) {
    if (!have_gpu()) SKIP("no CUDA device");
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++)
        compare_fixture(fixtures[i], DSI_W_INT8, DSI_W_INT8, 0);
}

/* W8A8 (int8 activations per token, int32 sums; cuBLASLt on the GPU, the
 * CPU backend's twin): every step's logits within the int8 tolerance above of
 * the CPU's W8A8, greedy tokens equal up to near-ties. On the trained demo
 * model, not the random HF fixtures: there the GPU's bf16 activations alone
 * put the logits 1.4-2.4% (L2) from the CPU's f32 ones (the bf16 rows), and
 * quantizing two slightly different activation rows to int8 flips roundings
 * that those untrained weights amplify to 5-8%. On the demo model one H100
 * measured 2.9% (max norm) and 2.5% (L2): issue 19's 1e-2 is not met, and the
 * CPU twin would have to keep bf16 activations to get there. The three W8A8
 * kernels themselves are checked bit for bit in test_cuda_w8a8. */
TEST(cuda_demo_w8a8_matches_cpu) {
    if (!have_gpu()) SKIP("no CUDA device");
    compare_fixture_mode("models/demo", DSI_W_INT8, DSI_W_INT8, 0, DSI_INT8_W8A8);
}

/* Group-wise INT8 (every fixture's input widths are multiples of 32 and 16):
 * the same int8 bytes and group scales as the CPU (kernels/quant_group.cu), so
 * the int8 tolerance holds; prefill and decode both take dequant + cuBLAS. */
TEST(cuda_fixtures_int8_group_match_cpu) {
    if (!have_gpu()) SKIP("no CUDA device");
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) {
        compare_fixture(fixtures[i], DSI_W_INT8, DSI_W_INT8, 32);
        compare_fixture(fixtures[i], DSI_W_INT8, DSI_W_INT8, 16);
    }
}

/* Three prompts in one step (and then one decode step of all three) equal the
 * same prompts run alone; GPU greedy sampling equals the host argmax. */
TEST(cuda_batch_equals_single) {
    if (!have_gpu()) SKIP("no CUDA device");
    struct dsi_model m;
    memset(&m, 0, sizeof m);
    struct dsi_model_open_opts mo = {.n_threads = 2};
    char *err = NULL;
    CHECK_EQ_INT(dsi_model_open(&m, "tests/golden/models/qwen2-untied", &mo, &err), 0);
    free(err), err = NULL;
    struct dsi_backend_opts o;
    opts_for(&o, DSI_W_INT8, 0);
    struct dsi_backend *gpu = NULL;
    CHECK_EQ_INT(dsi_backend_create("cuda", &m, &o, &gpu, &err), 0);
    free(err), err = NULL;
    if (!gpu) {
        dsi_model_close(&m);
        return;
    }
    int V = m.cfg.vocab_size;
    int32_t prompts[3][MAX_PROMPT];
    int n[3];
    int32_t bt[3][4] = {{9, 2, 5, 11}, {0, 7, 3, 10}, {4, 8, 1, 6}};
    float *single = malloc((size_t)3 * V * 4), *batched = malloc((size_t)3 * V * 4);
    for (int p = 0; p < 3; p++) {
        n[p] = make_prompt(p, V, prompts[p]);
        CHECK_EQ_INT(step(gpu, prompts[p], n[p], 0, bt[p], single + (size_t)p * V), 0);
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
    CHECK_EQ_INT(gpu->ops->forward(gpu, &b, batched, &err), 0);
    free(err), err = NULL;
    CHECK(rel_err(batched, single, 3 * V) <= 1e-4);
    /* one decode step of all three, sampled on the GPU (greedy) */
    int32_t next[3], ids[3];
    for (int p = 0; p < 3; p++) {
        next[p] = argmax(batched + (size_t)p * V, V, NULL);
        seqs[p].tokens = &next[p];
        seqs[p].n_tokens = 1;
        seqs[p].pos = n[p];
    }
    struct dsi_cuda_sample_params sp[3] = {{0.f, 0, 1.f, 0.5f, 0}, {0.f, 0, 1.f, 0.5f, 0}, {0.f, 0, 1.f, 0.5f, 0}};
    CHECK_EQ_INT(dsi_cuda_backend_forward_sample(gpu, &b, sp, ids, &err), 0);
    free(err), err = NULL;
    CHECK_EQ_INT(gpu->ops->forward(gpu, &b, batched, &err),
                 0); /* same step again: same K/V slots rewritten */
    free(err), err = NULL;
    for (int p = 0; p < 3; p++)
        CHECK_EQ_INT(ids[p], argmax(batched + (size_t)p * V, V, NULL));
    /* bad input is rejected, not run */
    int32_t bad = V;
    seqs[0].tokens = &bad;
    CHECK_EQ_INT(gpu->ops->forward(gpu, &b, batched, &err), DSI_EINVAL);
    CHECK(err != NULL);
    free(err), err = NULL;
    seqs[0].tokens = &next[0];
    int32_t bad_bt[4] = {1 << 30, 0, 0, 0};
    seqs[1].block_table = bad_bt;
    CHECK_EQ_INT(gpu->ops->forward(gpu, &b, batched, &err), DSI_EINVAL);
    free(err), err = NULL;
    free(single), free(batched);
    dsi_backend_destroy(gpu);
    dsi_model_close(&m);
}

/* The ops-table forward_sample on a real model whose best logit of each row is
 * made a padding row (n_ids = that row's argmax: the head has more rows than
 * the tokenizer has ids): greedy picks the argmax of the ids below n_ids, and
 * draws at temperature 2 never reach n_ids. */
TEST(cuda_forward_sample_skips_padding_rows) {
    if (!have_gpu()) SKIP("no CUDA device");
    struct dsi_model m;
    memset(&m, 0, sizeof m);
    struct dsi_model_open_opts mo = {.n_threads = 2};
    char *err = NULL;
    CHECK_EQ_INT(dsi_model_open(&m, "tests/golden/models/qwen2-untied", &mo, &err), 0);
    free(err), err = NULL;
    struct dsi_backend_opts o;
    opts_for(&o, DSI_W_BF16, 0);
    struct dsi_backend *gpu = NULL;
    CHECK_EQ_INT(dsi_backend_create("cuda", &m, &o, &gpu, &err), 0);
    free(err), err = NULL;
    if (!gpu) {
        dsi_model_close(&m);
        return;
    }
    int V = m.cfg.vocab_size;
    int32_t prompts[3][MAX_PROMPT], n[3], bt[3][4] = {{9, 2, 5, 11}, {0, 7, 3, 10}, {4, 8, 1, 6}};
    struct dsi_batch_seq seqs[3];
    for (int p = 0; p < 3; p++) {
        n[p] = make_prompt(p, V, prompts[p]);
        seqs[p] = (struct dsi_batch_seq){.seq_id = (uint64_t)p,
                                         .tokens = prompts[p],
                                         .n_tokens = n[p],
                                         .block_table = bt[p],
                                         .n_blocks = 4,
                                         .want_logits = true};
    }
    struct dsi_batch b = {.seqs = seqs, .n_seqs = 3};
    float *lg = malloc((size_t)3 * V * 4);
    CHECK_EQ_INT(gpu->ops->forward(gpu, &b, lg, &err), 0);
    free(err), err = NULL;
    struct dsi_sample_params sp[3];
    int32_t ids[3], want[3];
    for (int p = 0; p < 3; p++) {
        const float *row = lg + (size_t)p * V;
        int top = argmax(row, V, NULL);
        CHECK(top > 0); /* a padding row above id 0 holds the best logit */
        want[p] = argmax(row, top > 0 ? top : V, NULL);
        sp[p] = (struct dsi_sample_params){.temperature = 0.f, .top_p = 1.f, .n_ids = top};
    }
    CHECK_EQ_INT(gpu->ops->forward_sample(gpu, &b, sp, ids, &err), 0); /* same step: same K/V */
    free(err), err = NULL;
    for (int p = 0; p < 3; p++)
        CHECK_EQ_INT(ids[p], want[p]);
    int outside = 0;
    for (int k = 0; k < 16; k++) {
        for (int p = 0; p < 3; p++) {
            sp[p].temperature = 2.f;
            sp[p].u = (k + 0.5f) / 16.f;
        }
        CHECK_EQ_INT(gpu->ops->forward_sample(gpu, &b, sp, ids, &err), 0);
        free(err), err = NULL;
        for (int p = 0; p < 3; p++)
            outside += ids[p] < 0 || ids[p] >= sp[p].n_ids;
    }
    CHECK_EQ_INT(outside, 0);
    free(lg);
    dsi_backend_destroy(gpu);
    dsi_model_close(&m);
}

TEST(cuda_create_rejects_missing_device) {
    if (!have_gpu()) SKIP("no CUDA device");
    struct dsi_model m;
    memset(&m, 0, sizeof m);
    struct dsi_model_open_opts mo = {.n_threads = 2};
    char *err = NULL;
    CHECK_EQ_INT(dsi_model_open(&m, "tests/golden/models/llama-mha", &mo, &err), 0);
    free(err), err = NULL;
    struct dsi_backend_opts o;
    opts_for(&o, DSI_W_BF16, 0);
    o.device = 99;
    struct dsi_backend *gpu = NULL;
    CHECK_EQ_INT(dsi_backend_create("cuda", &m, &o, &gpu, &err), DSI_ENODEV);
    CHECK(gpu == NULL && err != NULL);
    free(err), err = NULL;
    o.device = 0;
    o.weight_dtype = DSI_W_INT8;
    o.int8_group_size = 48; /* does not divide hidden 64: refused before any upload */
    CHECK_EQ_INT(dsi_backend_create("cuda", &m, &o, &gpu, &err), DSI_EINVAL);
    CHECK(gpu == NULL && err != NULL && strstr(err, "does not divide") != NULL);
    free(err);
    dsi_model_close(&m);
}

/* ---- single pass: SHA-256 verify + upload (cuda_hashload.c) ---- */

/* Logits of one 17-token prompt, from a fresh CUDA backend on m (rc of create). */
static int load_and_run(const struct dsi_model *m, enum dsi_weight_dtype dt, float *logits, char **err) {
    struct dsi_backend_opts o;
    opts_for(&o, dt, 0);
    struct dsi_backend *be = NULL;
    int rc = dsi_backend_create("cuda", m, &o, &be, err);
    if (rc) return rc;
    int32_t prompt[MAX_PROMPT], bt[7];
    for (int i = 0; i < 7; i++)
        bt[i] = i;
    int n = make_prompt(1, m->cfg.vocab_size, prompt);
    rc = step(be, prompt, n, 0, bt, logits);
    dsi_backend_destroy(be);
    return rc;
}

TEST(cuda_single_pass_matches_two_pass) {
    if (!have_gpu()) SKIP("no CUDA device");
    char *dir = tm_copy_fixture("qwen2-untied");
    CHECK(dir != NULL);
    if (!dir) return;
    struct dsi_model_open_opts verified = {.n_threads = 2},
                               deferred = {.n_threads = 2, .defer_weight_hash = true};
    for (int dt = 0; dt < 2; dt++) {
        enum dsi_weight_dtype w = dt ? DSI_W_INT8 : DSI_W_BF16;
        struct dsi_model a, b, c;
        char *err = NULL;
        CHECK_EQ_INT(dsi_model_open(&a, dir, &verified, &err), 0);
        CHECK_EQ_INT(dsi_model_open(&b, dir, &deferred, &err), 0);
        CHECK(b.n_pending == 1 && dsi_model_unverified(&b) == 1);
        int V = a.cfg.vocab_size;
        float *la = malloc((size_t)V * 4), *lb = malloc((size_t)V * 4), *lc = malloc((size_t)V * 4);
        CHECK_EQ_INT(load_and_run(&a, w, la, &err), 0);
        setenv("DSI_CUDA_LOAD", "single-pass", 1); /* no silent fallback to two passes */
        CHECK_EQ_INT(load_and_run(&b, w, lb, &err), 0);
        unsetenv("DSI_CUDA_LOAD");
        if (err) fprintf(stderr, "  %s\n", err);
        CHECK(dsi_model_unverified(&b) == 0);
        /* the fallback (host verify, then upload) on a deferred model */
        setenv("DSI_CUDA_LOAD", "two-pass", 1);
        CHECK_EQ_INT(dsi_model_open(&c, dir, &deferred, &err), 0);
        CHECK_EQ_INT(load_and_run(&c, w, lc, &err), 0);
        unsetenv("DSI_CUDA_LOAD");
        /* same bytes on the device, same kernels: the same logits */
        double e1 = rel_err(lb, la, V), e2 = rel_err(lc, la, V);
        fprintf(stderr, "  %s: single pass vs verified open %.3g, two-pass fallback %.3g\n",
                dt ? "int8" : "bf16", e1, e2);
        CHECK(e1 <= 1e-6 && e2 <= 1e-6);
        free(la), free(lb), free(lc), free(err);
        dsi_model_close(&a), dsi_model_close(&b), dsi_model_close(&c);
    }
    tm_rm_rf(dir);
    free(dir);
}

TEST(cuda_single_pass_rejects_tampered_weights) {
    if (!have_gpu()) SKIP("no CUDA device");
    char *dir = tm_copy_fixture("qwen2-gqa-tied");
    CHECK(dir != NULL);
    if (!dir) return;
    char path[256];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "r+b"); /* flip one byte of tensor data near the end */
    CHECK(f != NULL);
    if (f) {
        fseek(f, -100, SEEK_END);
        int ch = fgetc(f);
        fseek(f, -100, SEEK_END);
        fputc(ch ^ 0x01, f);
        fclose(f);
    }
    struct dsi_model_open_opts deferred = {.n_threads = 2, .defer_weight_hash = true};
    for (int pass = 0; pass < 2; pass++) { /* single pass, then the two-pass fallback */
        if (pass) setenv("DSI_CUDA_LOAD", "two-pass", 1);
        struct dsi_model m;
        char *err = NULL;
        CHECK_EQ_INT(dsi_model_open(&m, dir, &deferred, &err), 0); /* weights not hashed yet */
        free(err), err = NULL;
        struct dsi_backend_opts o;
        opts_for(&o, DSI_W_INT8, 0);
        struct dsi_backend *be = NULL;
        CHECK_EQ_INT(dsi_backend_create("cuda", &m, &o, &be, &err), DSI_EINTEGRITY);
        CHECK(be == NULL && err && strstr(err, "model.safetensors") && strstr(err, "mismatch"));
        if (err) fprintf(stderr, "  %s: %s\n", pass ? "two-pass" : "single pass", err);
        CHECK(dsi_model_unverified(&m) == 1); /* nothing released */
        free(err);
        dsi_model_close(&m);
        unsetenv("DSI_CUDA_LOAD");
    }
    tm_rm_rf(dir);
    free(dir);
}

int main(void) {
    RUN(cuda_fixtures_bf16_match_cpu);
    RUN(cuda_fixtures_int8_match_cpu);
    RUN(cuda_fixtures_int8_group_match_cpu);
    RUN(cuda_demo_w8a8_matches_cpu);
    RUN(cuda_batch_equals_single);
    RUN(cuda_forward_sample_skips_padding_rows);
    RUN(cuda_create_rejects_missing_device);
    RUN(cuda_single_pass_matches_two_pass);
    RUN(cuda_single_pass_rejects_tampered_weights);
    return test_summary();
}
