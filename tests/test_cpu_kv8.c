/*
 * test_cpu_kv8.c: the 8-bit KV cache (kv_dtype int8) of the CPU backend on the
 * trained demo models: the pool holds as many more tokens as the format's bytes
 * say, and greedy decoding follows the f32 cache's path. (The op-level checks,
 * quantization and attention over the int8 pool, are in test_cpu_ops.c and
 * test_cpu_deepseek.c; fixture logits in test_cpu_model.c.)
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/backend.h"
#include "dsinfer/err.h"
#include "dsinfer/model.h"
#include "test.h"
#include "test_greedy.h"

static struct dsi_backend *make(const struct dsi_model *m, enum dsi_kv_dtype kv, size_t kv_bytes) {
    struct dsi_backend_opts o;
    memset(&o, 0, sizeof o);
    o.weight_dtype = DSI_W_BF16;
    o.kv_dtype = kv;
    o.kv_block_size = 16;
    o.kv_bytes = kv_bytes;
    o.max_batch_tokens = 256;
    o.max_seqs = 4;
    o.n_threads = 2;
    struct dsi_backend *be = NULL;
    char *err = NULL;
    int rc = dsi_backend_create("cpu", m, &o, &be, &err);
    if (rc) fprintf(stderr, "  backend: %s\n", err ? err : dsi_strerror(rc));
    free(err);
    return be;
}

static int open_model(struct dsi_model *m, const char *dir) {
    memset(m, 0, sizeof *m);
    struct dsi_model_open_opts mo = {.n_threads = 2};
    char *err = NULL;
    int rc = dsi_model_open(m, dir, &mo, &err);
    if (rc) fprintf(stderr, "  open %s: %s\n", dir, err ? err : dsi_strerror(rc));
    free(err);
    return rc;
}

/* Same memory, more tokens: the pool's blocks scale with the bytes per token,
 * and int8 takes (head_dim + 2) / (2 * head_dim) of bf16's (demo: head_dim 32,
 * 2176 bytes a token against 4096; demo-v3's MLA entry 64 + 16 values + two
 * scales against 160 bytes a layer). */
TEST(kv_int8_pool_holds_more_tokens_in_the_same_bytes) {
    const char *dirs[] = {"models/demo", "models/demo-v3"};
    for (int d = 0; d < 2; d++) {
        struct dsi_model m;
        if (open_model(&m, dirs[d])) {
            CHECK(0);
            continue;
        }
        size_t bytes = 16u << 20;
        struct dsi_backend *b16 = make(&m, DSI_KV_BF16, bytes), *b8 = make(&m, DSI_KV_INT8, bytes);
        CHECK(b16 && b8);
        if (b16 && b8) {
            size_t per16 = dsi_model_kv_bytes_per_token(&m.cfg, DSI_KV_BF16);
            size_t per8 = dsi_model_kv_bytes_per_token(&m.cfg, DSI_KV_INT8);
            CHECK_EQ_INT((long long)b16->kv_bytes_per_token, (long long)per16);
            CHECK_EQ_INT((long long)b8->kv_bytes_per_token, (long long)per8);
            CHECK_EQ_INT(b8->kv_dtype, DSI_KV_INT8);
            CHECK_EQ_INT(b8->n_kv_blocks, (int)(bytes / (16 * per8)));
            double ratio = (double)b8->n_kv_blocks / b16->n_kv_blocks;
            fprintf(stderr, "  %-15s %zu / %zu bytes a token: %d / %d blocks of 16 (%.2fx)\n", dirs[d], per8, per16,
                    b8->n_kv_blocks, b16->n_kv_blocks, ratio);
            CHECK(ratio > 1.85);
            if (d == 0) CHECK_EQ_INT((long long)per8, 8 * 2 * 4 * (32 + 2));
        }
        dsi_backend_destroy(b16);
        dsi_backend_destroy(b8);
        dsi_model_close(&m);
    }
}

/* Greedy ids with the int8 cache equal the f32 cache's for the first 16 tokens
 * of each prompt, except after a step where the f32 path's top-2 margin is
 * under 2% of its largest logit (a near-tie: that prompt stops comparing,
 * reported); at least 3/4 of the tokens must get compared. */
TEST(kv_int8_greedy_ids_follow_the_f32_cache) {
    const char *dirs[] = {"models/demo", "models/demo-v3"};
    enum { N_PROMPTS = 6, N_GEN = 16 };
    for (int d = 0; d < 2; d++) {
        struct dsi_model m;
        if (open_model(&m, dirs[d])) {
            CHECK(0);
            continue;
        }
        struct dsi_backend *a = make(&m, DSI_KV_INT8, 8u << 20), *b = make(&m, DSI_KV_F32, 8u << 20);
        CHECK(a && b);
        int V = m.cfg.vocab_size, compared = 0, ties = 0;
        float *la = malloc((size_t)V * 4), *lb = malloc((size_t)V * 4);
        for (int p = 0; a && b && p < N_PROMPTS; p++) {
            int32_t prompt[24];
            for (int i = 0; i < 24; i++)
                prompt[i] = (int32_t)((i * 131 + p * 977 + 7) % V);
            int n = 5 + 3 * p;
            if (step1(a, prompt, n, 0, la) || step1(b, prompt, n, 0, lb)) {
                CHECK(0);
                break;
            }
            for (int g = 0; g < N_GEN; g++) {
                float margin, scale, ma, sa;
                int tb = greedy_of(lb, V, &margin, &scale), ta = greedy_of(la, V, &ma, &sa);
                if (ta != tb) {
                    bool tie = margin < 0.02f * scale;
                    fprintf(stderr, "  %s prompt %d token %d: int8 %d, f32 %d (margin %.4f of %.2f)%s\n", dirs[d],
                            p, g, ta, tb, margin, scale, tie ? ": near-tie" : "");
                    ties += tie;
                    CHECK(tie);
                    break;
                }
                compared++;
                int32_t t = tb;
                if (g < N_GEN - 1 && (step1(a, &t, 1, n + g, la) || step1(b, &t, 1, n + g, lb))) {
                    CHECK(0);
                    break;
                }
            }
        }
        fprintf(stderr, "  %s: %d greedy tokens equal, %d near-tie stops (of %d prompts x %d)\n", dirs[d], compared,
                ties, N_PROMPTS, N_GEN);
        CHECK(compared >= N_PROMPTS * N_GEN * 3 / 4);
        free(la), free(lb);
        dsi_backend_destroy(a);
        dsi_backend_destroy(b);
        dsi_model_close(&m);
    }
}

int main(void) {
    RUN(kv_int8_pool_holds_more_tokens_in_the_same_bytes);
    RUN(kv_int8_greedy_ids_follow_the_f32_cache);
    return test_summary();
}
