/*
 * test_cpu_w8a8.c: the CPU W8A8 ops (cpu_w8a8.c), the reference of the CUDA
 * W8A8 path, on hand values and against an int64 loop, and the CPU backend
 * under int8_mode w8a8 on a tiny HF fixture: it runs, its logits differ from
 * W8A16's (the path is taken) but stay close to them, a row's logits are the
 * same bits alone and in a batch, and the combinations it cannot honour are
 * refused at create.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/backend.h"
#include "../src/backend/cpu/cpu_ops.h"
#include "dsinfer/err.h"
#include "dsinfer/model.h"
#include "test.h"
#include "test_greedy.h"

static float frand(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

TEST(w8a8_quantize_hand_values) {
    float x[6] = {127.0f, -63.5f, 0.5f, 0.0f, 1.5f, -2.5f}; /* amax 127: scale exactly 1 */
    int8_t q[6];
    float s;
    dsi_quantize_act_int8(x, 6, q, &s);
    CHECK(s == 1.0f);
    CHECK_EQ_INT(q[0], 127);
    CHECK_EQ_INT(q[1], -64); /* halves round away from zero */
    CHECK_EQ_INT(q[2], 1);
    CHECK_EQ_INT(q[3], 0);
    CHECK_EQ_INT(q[4], 2);
    CHECK_EQ_INT(q[5], -3);
    float z[3] = {0, 0, 0}, n[3] = {NAN, 254.0f, -63.5f};
    dsi_quantize_act_int8(z, 3, q, &s);
    CHECK(s == 0.0f && q[0] == 0 && q[1] == 0 && q[2] == 0);
    dsi_quantize_act_int8(n, 3, q, &s); /* NaN: never the max, quantized to 0 */
    CHECK(s == 2.0f && q[0] == 0 && q[1] == 127 && q[2] == -32);
}

TEST(w8a8_matmul_matches_int64_reference) {
    uint32_t seed = 7;
    const int rows = 37, cols = 3584 + 8, T = 5;
    float *w = malloc((size_t)rows * cols * 4), *x = malloc((size_t)T * cols * 4), *y = malloc((size_t)T * rows * 4);
    int8_t *wq = malloc((size_t)rows * cols), *xq = malloc((size_t)T * cols);
    float *ws = malloc((size_t)rows * 4), xs[5], bias[37];
    for (int i = 0; i < rows * cols; i++)
        w[i] = frand(&seed) * 0.1f;
    for (int i = 0; i < T * cols; i++)
        x[i] = frand(&seed) * 4.0f;
    for (int r = 0; r < rows; r++)
        bias[r] = frand(&seed);
    CHECK_EQ_INT(dsi_quantize_int8(w, rows, cols, 0, wq, ws), 0);
    for (int t = 0; t < T; t++)
        dsi_quantize_act_int8(x + (size_t)t * cols, cols, xq + (size_t)t * cols, &xs[t]);
    struct dsi_qweight qw = {.dtype = DSI_W_INT8, .rows = rows, .cols = cols, .data = wq, .scales = ws};
    dsi_matmul_w8a8(&qw, xq, xs, T, bias, y, rows, 0, rows);
    int exact = 0;
    double d2 = 0, r2 = 0;
    for (int t = 0; t < T; t++)
        for (int r = 0; r < rows; r++) {
            int64_t acc = 0;
            double ref = 0;
            for (int c = 0; c < cols; c++) {
                acc += (int64_t)wq[(size_t)r * cols + c] * xq[(size_t)t * cols + c];
                ref += (double)w[(size_t)r * cols + c] * x[(size_t)t * cols + c];
            }
            float want = (float)((double)(float)acc * xs[t] * ws[r] + bias[r]);
            float got = y[(size_t)t * rows + r];
            exact += fabsf(got - want) <= 1e-5f * fabsf(want) + 1e-6f;
            CHECK_EQ_INT(dsi_dot_i8i8(wq + (size_t)r * cols, xq + (size_t)t * cols, cols), (int32_t)acc);
            d2 += ((double)got - (ref + bias[r])) * ((double)got - (ref + bias[r]));
            r2 += (ref + bias[r]) * (ref + bias[r]);
        }
    CHECK_EQ_INT(exact, T * rows);
    /* against the unquantized fp64 product: int8 x int8 rounding error, ~1% L2 */
    fprintf(stderr, "  w8a8 vs fp64: %.4f L2 relative\n", sqrt(d2 / r2));
    CHECK(sqrt(d2 / r2) < 0.02);
    free(w), free(x), free(y), free(wq), free(xq), free(ws);
}

static int logits_of(struct dsi_backend *be, const int32_t *toks, int n, int seqs, float *out) {
    struct dsi_batch_seq s[4];
    int32_t bt[4][4];
    for (int i = 0; i < seqs; i++) {
        for (int j = 0; j < 4; j++)
            bt[i][j] = i * 4 + j;
        s[i] = (struct dsi_batch_seq){.seq_id = (uint64_t)i + 1,
                                      .tokens = toks + (size_t)i * n,
                                      .n_tokens = n,
                                      .block_table = bt[i],
                                      .n_blocks = 4,
                                      .want_logits = true};
    }
    struct dsi_batch b = {.seqs = s, .n_seqs = seqs};
    char *err = NULL;
    int rc = be->ops->forward(be, &b, out, &err);
    if (rc) fprintf(stderr, "  forward: %s\n", err ? err : "?");
    free(err);
    return rc;
}

static struct dsi_backend *make(const struct dsi_model *m, enum dsi_weight_dtype dt, int group,
                                enum dsi_int8_mode mode, int *rc, char **err) {
    struct dsi_backend_opts o;
    memset(&o, 0, sizeof o);
    o.weight_dtype = dt;
    o.int8_group_size = group;
    o.int8_mode = mode;
    o.kv_dtype = DSI_KV_F32;
    o.kv_block_size = 16;
    o.kv_bytes = 8u << 20;
    o.max_batch_tokens = 256;
    o.max_seqs = 4;
    o.n_threads = 2;
    struct dsi_backend *be = NULL;
    *rc = dsi_backend_create("cpu", m, &o, &be, err);
    return be;
}

TEST(w8a8_backend_runs_close_to_w8a16_and_batch_invariant) {
    struct dsi_model m;
    memset(&m, 0, sizeof m);
    struct dsi_model_open_opts mo = {.n_threads = 2};
    char *err = NULL;
    CHECK_EQ_INT(dsi_model_open(&m, "tests/golden/models/qwen2-untied", &mo, &err), 0);
    free(err), err = NULL;
    int rc;
    struct dsi_backend *a = make(&m, DSI_W_INT8, 0, DSI_INT8_W8A8, &rc, &err);
    CHECK_EQ_INT(rc, 0);
    free(err), err = NULL;
    struct dsi_backend *b = make(&m, DSI_W_INT8, 0, DSI_INT8_W8A16, &rc, &err);
    CHECK_EQ_INT(rc, 0);
    free(err), err = NULL;
    if (a && b) {
        int V = m.cfg.vocab_size, n = 9;
        int32_t toks[3 * 9];
        for (int i = 0; i < 3 * n; i++)
            toks[i] = (int32_t)((i * 7919 + 13) % V);
        float *la = malloc((size_t)3 * V * 4), *lb = malloc((size_t)V * 4), *l1 = malloc((size_t)V * 4);
        CHECK_EQ_INT(logits_of(a, toks, n, 3, la), 0); /* three sequences in one step */
        CHECK_EQ_INT(logits_of(a, toks + n, n, 1, l1), 0); /* the second alone */
        CHECK(memcmp(l1, la + V, (size_t)V * 4) == 0);
        CHECK_EQ_INT(logits_of(b, toks + n, n, 1, lb), 0);
        double d = 0, r = 0;
        int same = 1;
        for (int i = 0; i < V; i++) {
            d += ((double)l1[i] - lb[i]) * ((double)l1[i] - lb[i]);
            r += (double)lb[i] * lb[i];
            same &= l1[i] == lb[i];
        }
        fprintf(stderr, "  w8a8 vs w8a16 logits: %.4f L2 relative\n", sqrt(d / r));
        CHECK(!same);
        CHECK(sqrt(d / r) < 0.05);
        free(la), free(lb), free(l1);
    }
    dsi_backend_destroy(a);
    dsi_backend_destroy(b);
    /* what W8A8 cannot honour is refused, with the reason */
    const struct {
        enum dsi_weight_dtype dt;
        int group;
    } bad[] = {{DSI_W_BF16, 0}, {DSI_W_F32, 0}, {DSI_W_INT8, 16}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct dsi_backend *x = make(&m, bad[i].dt, bad[i].group, DSI_INT8_W8A8, &rc, &err);
        CHECK_EQ_INT(rc, DSI_EINVAL);
        CHECK(x == NULL && err && strstr(err, "w8a8"));
        free(err), err = NULL;
    }
    dsi_model_close(&m);
}

/* Issue 19's accuracy bar, on the trained demo model: greedy ids of W8A8
 * equal bf16's for the first 8 tokens of each prompt, except after a step
 * where bf16's top-2 margin is under 2% of its largest logit (a near-tie:
 * that prompt stops comparing, reported). Not on the random-weight HF
 * fixtures: there int8 W8A16 itself leaves bf16's greedy path at margins
 * of 5% (qwen2-gqa-tied, llama-llama3), and W8A8 once more at 10%
 * (llama-mha, hidden 64: a token's 64 activations share one scale). */
TEST(w8a8_greedy_ids_equal_bf16_first_8_tokens) {
    const char *fx[] = {"models/demo"};
    const int n_prompts = 6;
    int compared = 0, ties = 0;
    for (size_t f = 0; f < sizeof fx / sizeof fx[0]; f++) {
        char dir[128];
        snprintf(dir, sizeof dir, "%s", fx[f]);
        struct dsi_model m;
        memset(&m, 0, sizeof m);
        struct dsi_model_open_opts mo = {.n_threads = 2};
        char *err = NULL;
        int rc = dsi_model_open(&m, dir, &mo, &err);
        CHECK_EQ_INT(rc, 0);
        free(err), err = NULL;
        if (rc) continue;
        struct dsi_backend *a = make(&m, DSI_W_INT8, 0, DSI_INT8_W8A8, &rc, &err);
        free(err), err = NULL;
        struct dsi_backend *b = make(&m, DSI_W_BF16, 0, DSI_INT8_W8A16, &rc, &err);
        free(err), err = NULL;
        CHECK(a && b);
        int V = m.cfg.vocab_size;
        float *la = malloc((size_t)V * 4), *lb = malloc((size_t)V * 4);
        for (int p = 0; a && b && p < n_prompts; p++) {
            int32_t prompt[24];
            for (int i = 0; i < 24; i++)
                prompt[i] = (int32_t)((i * 131 + p * 977 + 7) % V);
            int n = 5 + 3 * p;
            if (step1(a, prompt, n, 0, la) || step1(b, prompt, n, 0, lb)) {
                CHECK(0);
                break;
            }
            for (int g = 0; g < 8; g++) {
                float margin, scale, ma, sa;
                int tb = greedy_of(lb, V, &margin, &scale), ta = greedy_of(la, V, &ma, &sa);
                if (ta != tb) {
                    if (margin < 0.02f * scale) {
                        fprintf(stderr, "  %s prompt %d token %d: near-tie (margin %.4f of %.2f)\n", fx[f], p, g,
                                margin, scale);
                        ties++;
                    } else {
                        fprintf(stderr, "  %s prompt %d token %d: w8a8 %d != bf16 %d (margin %.4f)\n", fx[f], p,
                                g, ta, tb, margin);
                        CHECK(ta == tb);
                    }
                    break;
                }
                compared++;
                int32_t t = tb;
                if (g < 7 && (step1(a, &t, 1, n + g, la) || step1(b, &t, 1, n + g, lb))) {
                    CHECK(0);
                    break;
                }
            }
        }
        free(la), free(lb);
        dsi_backend_destroy(a);
        dsi_backend_destroy(b);
        dsi_model_close(&m);
    }
    fprintf(stderr, "  %d greedy tokens equal, %d near-tie stops (of %d prompts x 8)\n", compared, ties,
            n_prompts);
    CHECK(compared >= n_prompts * 8 * 3 / 4); /* most prompts run all 8 tokens */
}

int main(void) {
    RUN(w8a8_quantize_hand_values);
    RUN(w8a8_matmul_matches_int64_reference);
    RUN(w8a8_backend_runs_close_to_w8a16_and_batch_invariant);
    RUN(w8a8_greedy_ids_equal_bf16_first_8_tokens);
    return test_summary();
}
