/*
 * test_cpu_deepseek.c: the DeepSeek ops of the CPU reference (cpu_deepseek.h)
 * against straightforward formulations written out here:
 *   - MLA with W_UK/W_UV absorbed == attention over keys and values expanded from
 *     the latent (f32 and bf16 cache, f32 and int8 kv_b_proj, paged blocks out of
 *     order)
 *   - the router: greedy/group-limited/noaux_tc picks and weights on hand-made
 *     logits whose answers are worked out in the comments; ties go to lower ids
 *   - FP8 block scales land on the right 128x128 blocks (partial edge blocks).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/backend/cpu/cpu_deepseek.h"
#include "../src/backend/cpu/cpu_ops.h"
#include "test.h"

static float frand(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return ((float)((*s >> 8) & 0xffff) / 65535.0f - 0.5f) * 2.0f;
}

static double dot(const float *a, const float *b, int n) {
    double s = 0;
    for (int c = 0; c < n; c++)
        s += (double)a[c] * b[c];
    return s;
}

/* Expanded reference: k_nope_j = W_UK c_j, v_j = W_UV c_j, plain softmax attention. */
static void mla_expanded(const float *wkvb, int h, int R, int nope, int rope, int vd, const float *lat,
                         const float *kpe, int n_ctx, const float *q, float scale, float *out) {
    double s[64], mx = -1e30, sum = 0;
    const float *wk = wkvb + (size_t)h * (nope + vd) * R, *wv = wk + (size_t)nope * R;
    for (int j = 0; j < n_ctx; j++) {
        double d = 0;
        for (int i = 0; i < nope; i++)
            d += q[i] * dot(wk + (size_t)i * R, lat + (size_t)j * R, R);
        for (int i = 0; i < rope; i++)
            d += (double)q[nope + i] * kpe[(size_t)j * rope + i];
        s[j] = d * scale;
        if (s[j] > mx) mx = s[j];
    }
    for (int j = 0; j < n_ctx; j++)
        sum += (s[j] = exp(s[j] - mx));
    for (int e = 0; e < vd; e++) {
        double o = 0;
        for (int j = 0; j < n_ctx; j++)
            o += s[j] / sum * dot(wv + (size_t)e * R, lat + (size_t)j * R, R);
        out[e] = (float)o;
    }
}

/* x rounded the way the int8 cache stores it: int8 values times the f16 scale. */
static void int8_round(float *x, int n) {
    uint8_t buf[64];
    dsi_kv_quant_int8(buf, x, n);
    float s = dsi_kv_int8_scale(buf, n);
    for (int i = 0; i < n; i++)
        x[i] = (float)(int8_t)buf[i] * s;
}

static void check_mla(enum dsi_weight_dtype wdt, enum dsi_kv_dtype kdt, double tol) {
    enum { NH = 3, R = 24, NOPE = 8, ROPE = 6, VD = 10, NCTX = 11, BS = 4 };
    unsigned seed = 7u + (unsigned)wdt * 3u + (unsigned)kdt;
    int rows = NH * (NOPE + VD);
    float *w = malloc(sizeof(float) * rows * R), *lat = malloc(sizeof(float) * NCTX * R);
    float kpe[NCTX * ROPE], q[NOPE + ROPE], out[VD], ref[VD];
    for (int i = 0; i < rows * R; i++)
        w[i] = frand(&seed) * 0.5f;
    for (int i = 0; i < NCTX * R; i++)
        lat[i] = frand(&seed);
    for (int i = 0; i < NCTX * ROPE; i++)
        kpe[i] = frand(&seed);
    struct dsi_qweight qw = {.dtype = DSI_W_F32, .rows = rows, .cols = R, .data = w};
    int8_t *q8 = malloc((size_t)rows * R);
    float *sc = malloc(sizeof(float) * rows * 3);
    float *deq = malloc(sizeof(float) * rows * R);
    if (wdt == DSI_W_INT8) {
        CHECK_EQ_INT(dsi_quantize_int8(w, rows, R, 8, q8, sc), 0);
        qw = (struct dsi_qweight){
            .dtype = DSI_W_INT8, .rows = rows, .cols = R, .group_size = 8, .data = q8, .scales = sc};
    }
    for (int r = 0; r < rows; r++) /* the reference sees exactly the weights in use */
        dsi_qweight_row_f32(&qw, r, deq + (size_t)r * R);
    /* pool of 4 blocks; this sequence uses blocks 2, 0, 3 (out of order) */
    size_t entry = dsi_kv_vector_bytes(kdt, R) + dsi_kv_vector_bytes(kdt, ROPE);
    void *pool = calloc((size_t)4 * BS, entry);
    int32_t table[3] = {2, 0, 3};
    for (int j = 0; j < NCTX; j++) {
        dsi_mla_store(pool, kdt, BS, R, ROPE, table, j, lat + (size_t)j * R, kpe + (size_t)j * ROPE);
        if (kdt == DSI_KV_BF16) { /* the reference sees the rounded cache */
            for (int c = 0; c < R; c++)
                lat[(size_t)j * R + c] = dsi_bf16_to_f32(dsi_f32_to_bf16(lat[(size_t)j * R + c]));
            for (int c = 0; c < ROPE; c++)
                kpe[(size_t)j * ROPE + c] = dsi_bf16_to_f32(dsi_f32_to_bf16(kpe[(size_t)j * ROPE + c]));
        }
        if (kdt == DSI_KV_INT8) { /* int8: each vector with its own scale */
            int8_round(lat + (size_t)j * R, R);
            int8_round(kpe + (size_t)j * ROPE, ROPE);
        }
    }
    struct dsi_mla_args a = {.kv_lora_rank = R,
                             .qk_nope_head_dim = NOPE,
                             .qk_rope_head_dim = ROPE,
                             .v_head_dim = VD,
                             .scale = 0.3f,
                             .block_size = BS,
                             .kv_dtype = kdt,
                             .cache = pool,
                             .block_table = table,
                             .n_ctx = NCTX,
                             .wkv_b = &qw};
    float *scratch = malloc(sizeof(float) * dsi_mla_scratch_floats(&a));
    double worst = 0;
    for (int h = 0; h < NH; h++)
        for (int n = 1; n <= NCTX; n += 5) {
            for (int i = 0; i < NOPE + ROPE; i++)
                q[i] = frand(&seed);
            a.n_ctx = n;
            dsi_mla_head(&a, h, q, out, scratch);
            mla_expanded(deq, h, R, NOPE, ROPE, VD, lat, kpe, n, q, 0.3f, ref);
            double mref = 0;
            for (int e = 0; e < VD; e++)
                mref = fmax(mref, fabs(ref[e]));
            for (int e = 0; e < VD; e++)
                worst = fmax(worst, fabs(out[e] - ref[e]) / mref);
        }
    fprintf(stderr, "  mla weights %d cache %d: max rel err %.3g\n", (int)wdt, (int)kdt, worst);
    CHECK(worst < tol);
    free(w), free(lat), free(q8), free(sc), free(deq), free(pool), free(scratch);
}

TEST(mla_absorbed_equals_expanded_attention) {
    check_mla(DSI_W_F32, DSI_KV_F32, 1e-5);
    check_mla(DSI_W_F32, DSI_KV_BF16, 1e-5);
    check_mla(DSI_W_INT8, DSI_KV_F32, 1e-5);
    check_mla(DSI_W_F32, DSI_KV_INT8, 1e-5); /* the int8 latent cache, read directly */
}

/* int8: the latent's R values and scale, then the rope key's values and scale;
 * the rope key keeps its own scale (a latent 100x larger leaves it intact). */
TEST(mla_store_int8_scales_latent_and_rope_separately) {
    enum { R = 3, ROPE = 2, ENTRY = R + 2 + ROPE + 2 };
    uint8_t pool[2 * 2 * ENTRY] = {0};
    float lat[R] = {100, -50, 25}, kpe[ROPE] = {0.5f, -1.0f};
    int32_t table[2] = {1, 0};
    dsi_mla_store(pool, DSI_KV_INT8, 2, R, ROPE, table, 3, lat, kpe); /* block 0, slot 1 */
    const uint8_t *e = pool + 1 * ENTRY;
    CHECK((int8_t)e[0] == 127);
    for (int i = 0; i < R; i++)
        CHECK_NEAR((int8_t)e[i] * dsi_kv_int8_scale(e, R), lat[i], 0.5 * dsi_kv_int8_scale(e, R));
    const uint8_t *r = e + R + 2;
    CHECK((int8_t)r[1] == -127);
    CHECK_NEAR((int8_t)r[0] * dsi_kv_int8_scale(r, ROPE), 0.5, 0.5 * dsi_kv_int8_scale(r, ROPE));
}

TEST(mla_store_layout_is_latent_then_rope) {
    float pool[2 * 2 * 5] = {0}, lat[3] = {1, 2, 3}, kpe[2] = {4, 5};
    int32_t table[2] = {1, 0};
    dsi_mla_store(pool, DSI_KV_F32, 2, 3, 2, table, 3, lat, kpe); /* pos 3: block table[1]=0, slot 1 */
    CHECK(pool[5] == 1 && pool[7] == 3 && pool[8] == 4 && pool[9] == 5);
    dsi_mla_store(pool, DSI_KV_F32, 2, 3, 2, table, 0, lat, kpe); /* pos 0: block 1, slot 0 */
    CHECK(pool[10] == 1 && pool[14] == 5);
}

/* The plain router: n experts, top k by softmax score, one group, factor 1.
 * Each test below changes only what it is about. */
static struct dsi_router greedy_router(int n_experts, int top_k) {
    return (struct dsi_router){.n_experts = n_experts,
                               .top_k = top_k,
                               .n_group = 1,
                               .topk_group = 1,
                               .method = DSI_TOPK_GREEDY,
                               .scoring = DSI_SCORE_SOFTMAX,
                               .routed_scaling_factor = 1.0f};
}

static void route(const struct dsi_router *r, const float *logits, int32_t *idx, float *w) {
    float scratch[256];
    CHECK(dsi_moe_route_scratch(r) <= 256);
    dsi_moe_route(r, logits, idx, w, scratch);
}

TEST(router_greedy_softmax) {
    /* softmax([1, 3, 2, 0]) = [.0871, .6439, .2369, .0321]: top 2 = experts 1, 2 */
    float lg[4] = {1, 3, 2, 0}, w[2];
    int32_t idx[2];
    struct dsi_router r = greedy_router(4, 2);
    route(&r, lg, idx, w);
    double z = exp(1) + exp(3) + exp(2) + exp(0);
    CHECK(idx[0] == 1 && idx[1] == 2);
    CHECK_NEAR(w[0], exp(3) / z, 1e-6);
    CHECK_NEAR(w[1], exp(2) / z, 1e-6);
    /* norm_topk_prob: the two weights sum to routed_scaling_factor */
    r.norm_topk_prob = true;
    r.routed_scaling_factor = 2.0f;
    route(&r, lg, idx, w);
    CHECK_NEAR(w[0], 2.0 * exp(3) / (exp(3) + exp(2)), 1e-6);
    CHECK_NEAR(w[0] + w[1], 2.0, 1e-6);
    /* equal logits: lower ids first */
    float tie[4] = {0.5f, 1.0f, 1.0f, 1.0f};
    route(&r, tie, idx, w);
    CHECK(idx[0] == 1 && idx[1] == 2);
}

TEST(router_group_limited_greedy) {
    /* groups {0,1} {2,3} {4,5}; logits make group maxima 2.0 (g0), 1.9 (g1), 1.8 (g2) while
     * group 1 has the two best non-max experts. topk_group 1: only group 0 -> experts 0, 1
     * even though expert 3 (1.7) beats expert 1 (0.1). */
    float lg[6] = {2.0f, 0.1f, 1.9f, 1.7f, 1.8f, -1.0f}, w[2];
    int32_t idx[2];
    struct dsi_router r = greedy_router(6, 2);
    r.n_group = 3;
    r.method = DSI_TOPK_GROUP_LIMITED_GREEDY;
    route(&r, lg, idx, w);
    CHECK(idx[0] == 0 && idx[1] == 1);
    r.topk_group = 2; /* groups 0 and 1 -> 0 (2.0), 2 (1.9) */
    route(&r, lg, idx, w);
    CHECK(idx[0] == 0 && idx[1] == 2);
    r.method = DSI_TOPK_GREEDY; /* groups ignored -> 0, 2 as well, then check top 2 differs with k=3 */
    r.top_k = 2;
    route(&r, lg, idx, w);
    CHECK(idx[0] == 0 && idx[1] == 2);
}

TEST(router_noaux_tc_sigmoid_with_bias) {
    /* 8 experts in 4 groups of 2, top 2 groups, 3 experts. Logits 0 everywhere except as
     * set; sigmoid(0) = .5. The correction bias moves choices, never weights:
     *   choice = sigmoid(logit) + bias
     *   g0: e0 .5+.30=.80, e1 .5      -> 1.30
     *   g1: e2 sig(2)=.8808, e3 .5-.4=.10 -> .9808
     *   g2: e4 .5+.1=.6, e5 .5+.1=.6  -> 1.20
     *   g3: e6 .5, e7 .5              -> 1.00
     * top 2 groups: g0, g2. In them choices .80 (e0), .6 (e4), .6 (e5), .5 (e1): picks 0, 4, 5
     * (e2, the best raw score, is outside the chosen groups). Weights are the sigmoid
     * scores .5, .5, .5, normalised to 1/3 each, times 2.5. */
    float lg[8] = {0, 0, 2.0f, 0, 0, 0, 0, 0}, bias[8] = {0.3f, 0, 0, -0.4f, 0.1f, 0.1f, 0, 0}, w[3];
    int32_t idx[3];
    struct dsi_router r = greedy_router(8, 3);
    r.n_group = 4;
    r.topk_group = 2;
    r.method = DSI_TOPK_NOAUX_TC;
    r.scoring = DSI_SCORE_SIGMOID;
    r.norm_topk_prob = true;
    r.routed_scaling_factor = 2.5f;
    r.bias = bias;
    route(&r, lg, idx, w);
    CHECK(idx[0] == 0 && idx[1] == 4 && idx[2] == 5);
    for (int k = 0; k < 3; k++)
        CHECK_NEAR(w[k], 2.5 / 3.0, 1e-6);
    /* without normalisation the weights are the raw sigmoid scores times the factor */
    r.norm_topk_prob = false;
    route(&r, lg, idx, w);
    CHECK_NEAR(w[0], 1.25, 1e-6);
    /* greedy over the same scores ignores the bias and the groups: e2 first */
    r.method = DSI_TOPK_GREEDY;
    route(&r, lg, idx, w);
    CHECK(idx[0] == 2 && idx[1] == 0 && idx[2] == 1);
    CHECK_NEAR(w[0], 2.5 / (1.0 + exp(-2.0)), 1e-6);
}

TEST(fp8_block_scales_hit_their_blocks) {
    int rows = 130, cols = 200; /* 2 x 2 blocks of 128, the last ones partial */
    float *w = malloc(sizeof(float) * rows * cols), sc[4] = {2.0f, 3.0f, 5.0f, 7.0f};
    for (int i = 0; i < rows * cols; i++)
        w[i] = 1.0f;
    dsi_fp8_block_scale(w, sc, rows, cols, 128, 128);
    CHECK(w[0] == 2.0f && w[127] == 2.0f && w[128] == 3.0f && w[199] == 3.0f);
    CHECK(w[(size_t)127 * cols + 127] == 2.0f && w[(size_t)128 * cols] == 5.0f);
    CHECK(w[(size_t)129 * cols + 199] == 7.0f && w[(size_t)129 * cols + 127] == 5.0f);
    free(w);
}

int main(void) {
    RUN(mla_absorbed_equals_expanded_attention);
    RUN(mla_store_layout_is_latent_then_rope);
    RUN(mla_store_int8_scales_latent_and_rope_separately);
    RUN(router_greedy_softmax);
    RUN(router_group_limited_greedy);
    RUN(router_noaux_tc_sigmoid_with_bias);
    RUN(fp8_block_scales_hit_their_blocks);
    return test_summary();
}
