/*
 * test_cpu_ops.c: unit tests of the CPU reference kernels (cpu_ops.h) on inputs
 * whose results can be checked by hand or against a double-precision loop.
 */
#include <stdint.h>

#include "../src/backend/cpu/cpu_ops.h"
#include "dsinfer/err.h"
#include "dsinfer/rope.h"
#include "test.h"

static float frand(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

TEST(bf16_round_to_nearest_even) {
    CHECK_EQ_INT(dsi_f32_to_bf16(1.0f), 0x3f80);
    float f;
    uint32_t u = 0x3f808000u; /* exactly halfway, even below */
    memcpy(&f, &u, 4);
    CHECK_EQ_INT(dsi_f32_to_bf16(f), 0x3f80);
    u = 0x3f818000u; /* halfway, odd below: rounds up */
    memcpy(&f, &u, 4);
    CHECK_EQ_INT(dsi_f32_to_bf16(f), 0x3f82);
    CHECK(isnan(dsi_bf16_to_f32(dsi_f32_to_bf16(NAN))));
    CHECK(dsi_bf16_to_f32(0xc040) == -3.0f);
}

TEST(dots_match_double_reference_all_lengths) {
    uint32_t s = 1;
    float x[131], w[131];
    uint16_t wb[131];
    int8_t wq[131];
    for (int i = 0; i < 131; i++) {
        x[i] = frand(&s);
        w[i] = frand(&s);
        wb[i] = dsi_f32_to_bf16(w[i]);
        wq[i] = (int8_t)(frand(&s) * 127.0f);
    }
    for (int n = 0; n <= 131; n++) {
        double r1 = 0, r2 = 0, r3 = 0, mag = 1e-3;
        for (int i = 0; i < n; i++) {
            r1 += (double)w[i] * x[i];
            r2 += (double)dsi_bf16_to_f32(wb[i]) * x[i];
            r3 += (double)wq[i] * x[i];
            mag += fabs(x[i]);
        }
        CHECK_NEAR(dsi_dot_f32(w, x, n), r1, 1e-6 * mag);
        CHECK_NEAR(dsi_dot_bf16(wb, x, n), r2, 1e-6 * mag);
        CHECK_NEAR(dsi_dot_i8(wq, x, n), r3, 1e-4 * mag);
    }
}

TEST(quantize_int8_hand_values) {
    float w[8] = {1.0f, -2.0f, 0.5f, 0.0f, /* row 1: */ 0.0f, 0.0f, 0.0f, 0.0f};
    int8_t q[8];
    float sc[2];
    CHECK_EQ_INT(dsi_quantize_int8(w, 2, 4, 0, q, sc), 0);
    CHECK_NEAR(sc[0], 2.0f / 127.0f, 1e-9);
    CHECK_EQ_INT(q[1], -127);
    CHECK_EQ_INT(q[0], 64); /* 63.5 rounds half away from zero */
    CHECK_EQ_INT(q[2], 32); /* 31.75 */
    CHECK_EQ_INT(q[3], 0);
    CHECK(sc[1] == 0.0f); /* all-zero row: scale 0, q 0 */
    CHECK_EQ_INT(q[4], 0);
    float sg[4];
    CHECK_EQ_INT(dsi_quantize_int8(w, 2, 4, 2, q, sg), 0);
    CHECK_NEAR(sg[0], 2.0f / 127.0f, 1e-9); /* group {1,-2} */
    CHECK_NEAR(sg[1], 0.5f / 127.0f, 1e-9); /* group {0.5,0} */
    CHECK_EQ_INT(q[2], 127);
    CHECK_EQ_INT(dsi_quantize_int8(w, 2, 4, 3, q, sg), DSI_EINVAL);
    CHECK_EQ_INT(dsi_quantize_int8(w, 0, 4, 0, q, sg), DSI_EINVAL);
}

TEST(quantize_int8_nan_and_inf_stay_defined) {
    float w[4] = {NAN, 1.0f, INFINITY, -1.0f};
    int8_t q[4];
    float sc[1];
    CHECK_EQ_INT(dsi_quantize_int8(w, 1, 4, 0, q, sc), 0);
    CHECK_EQ_INT(q[0], 0);
    CHECK(q[2] >= -127 && q[2] <= 127);
}

static void fill_weights(int dtype, int rows, int cols, int gs, float *f, uint16_t *b, int8_t *q, float *sc,
                         struct dsi_qweight *w) {
    w->dtype = (enum dsi_weight_dtype)dtype;
    w->rows = rows;
    w->cols = cols;
    w->group_size = gs;
    w->scales = NULL;
    if (dtype == DSI_W_F32) w->data = f;
    if (dtype == DSI_W_BF16) {
        for (int i = 0; i < rows * cols; i++)
            b[i] = dsi_f32_to_bf16(f[i]);
        w->data = b;
    }
    if (dtype == DSI_W_INT8) {
        dsi_quantize_int8(f, rows, cols, gs, q, sc);
        w->data = q;
        w->scales = sc;
    }
}

TEST(matvec_equals_matmul_bitwise_and_dequant_reference) {
    enum { R = 37, C = 96, N = 5 };
    static float f[R * C], x[N * C], y1[N * R], y2[N * R], bias[R], row[C];
    static uint16_t b[R * C];
    static int8_t q[R * C];
    static float sc[R * 3];
    uint32_t s = 7;
    for (int i = 0; i < R * C; i++)
        f[i] = frand(&s);
    for (int i = 0; i < N * C; i++)
        x[i] = frand(&s);
    for (int i = 0; i < R; i++)
        bias[i] = frand(&s);
    int cases[4][2] = {{DSI_W_F32, 0}, {DSI_W_BF16, 0}, {DSI_W_INT8, 0}, {DSI_W_INT8, 32}};
    for (int k = 0; k < 4; k++) {
        struct dsi_qweight w;
        fill_weights(cases[k][0], R, C, cases[k][1], f, b, q, sc, &w);
        dsi_matmul(&w, x, N, bias, y1, R, 0, R);
        int same = 1;
        for (int t = 0; t < N; t++) {
            dsi_matvec(&w, x + t * C, bias, y2 + t * R, 0, R);
            same &= !memcmp(y1 + t * R, y2 + t * R, R * sizeof(float));
        }
        CHECK(same);
        /* against the dequantized weights in double */
        double maxd = 0;
        for (int r = 0; r < R; r++) {
            dsi_qweight_row_f32(&w, r, row);
            double ref = bias[r];
            for (int c = 0; c < C; c++)
                ref += (double)row[c] * x[c];
            double d = fabs(ref - y1[r]);
            if (d > maxd) maxd = d;
        }
        CHECK(maxd < 1e-4);
        /* int8 against the original fp32: quantization error is small but present */
        if (cases[k][0] == DSI_W_INT8) {
            double e = 0, n = 0;
            for (int r = 0; r < R; r++) {
                double ref = bias[r];
                for (int c = 0; c < C; c++)
                    ref += (double)f[r * C + c] * x[c];
                e += (ref - y1[r]) * (ref - y1[r]);
                n += ref * ref;
            }
            CHECK(sqrt(e / n) < 0.02);
            CHECK(sqrt(e / n) > 0.0);
        }
    }
}

TEST(rmsnorm_swiglu_softmax_hand_values) {
    float x[2] = {3, 4}, w[2] = {1, 2}, o[2];
    dsi_rmsnorm(o, x, w, 2, 0.0f);
    float inv = 1.0f / sqrtf(12.5f);
    CHECK_NEAR(o[0], 3 * inv, 1e-6);
    CHECK_NEAR(o[1], 8 * inv, 1e-6);
    dsi_rmsnorm(x, x, w, 2, 0.0f); /* aliasing allowed */
    CHECK_NEAR(x[1], 8 * inv, 1e-6);
    float g[3] = {0, 1, -1}, u[3] = {5, 2, 2}, s[3];
    dsi_swiglu(s, g, u, 3);
    CHECK(s[0] == 0.0f);
    CHECK_NEAR(s[1], 2.0 / (1 + exp(-1.0)), 1e-6);
    CHECK_NEAR(s[2], -2.0 / (1 + exp(1.0)), 1e-6);
    float p[3] = {0, logf(3.0f), -INFINITY};
    dsi_softmax(p, 3);
    CHECK_NEAR(p[0], 0.25, 1e-6);
    CHECK_NEAR(p[1], 0.75, 1e-6);
    CHECK(p[2] == 0.0f);
}

TEST(rope_default_and_rotation_pairs) {
    float inv[2], af;
    struct dsi_rope_scaling sc = {.type = DSI_ROPE_DEFAULT};
    CHECK_EQ_INT(dsi_rope_inv_freq(&sc, 10000.0f, 4, 2048, 0, inv, &af), 0);
    CHECK(inv[0] == 1.0f);
    CHECK_NEAR(inv[1], 0.01, 1e-8);
    CHECK(af == 1.0f);
    float x[4] = {1, 0, 0, 0};
    dsi_rope_neox(x, 1, 4, 4, 1, inv, 1.0f); /* pairs (0,2) (1,3) */
    CHECK_NEAR(x[0], cos(1.0), 1e-6);
    CHECK_NEAR(x[2], sin(1.0), 1e-6);
    CHECK(x[1] == 0.0f && x[3] == 0.0f);
    float y[4] = {1, 0, 0, 0};
    dsi_rope_interleaved(y, 1, 4, 4, 1, inv, 1.0f); /* pairs (0,1) (2,3) */
    CHECK_NEAR(y[0], cos(1.0), 1e-6);
    CHECK_NEAR(y[1], sin(1.0), 1e-6);
    sc.type = DSI_ROPE_LINEAR;
    sc.factor = 4.0f;
    CHECK_EQ_INT(dsi_rope_inv_freq(&sc, 10000.0f, 4, 2048, 0, inv, &af), 0);
    CHECK(inv[0] == 0.25f);
    sc.factor = 0.0f;
    CHECK_EQ_INT(dsi_rope_inv_freq(&sc, 10000.0f, 4, 2048, 0, inv, &af), DSI_EINVAL);
    CHECK_EQ_INT(dsi_rope_inv_freq(NULL, 10000.0f, 3, 2048, 0, inv, &af), DSI_EINVAL);
}

TEST(rope_llama3_bands) {
    /* dim 64, theta 500000, factor 8, orig 8192 (Llama 3.1): highest frequency unscaled,
     * lowest divided by factor */
    float inv[32], def[32], af;
    struct dsi_rope_scaling sc = {.type = DSI_ROPE_LLAMA3,
                                  .factor = 8,
                                  .low_freq_factor = 1,
                                  .high_freq_factor = 4,
                                  .original_max_position_embeddings = 8192};
    CHECK_EQ_INT(dsi_rope_inv_freq(&sc, 500000.0f, 64, 131072, 0, inv, &af), 0);
    dsi_rope_inv_freq_default(500000.0f, 64, def);
    CHECK(inv[0] == def[0]);
    CHECK_NEAR(inv[31], def[31] / 8, 1e-12);
    for (int i = 1; i < 32; i++)
        CHECK(inv[i] <= def[i] && inv[i] >= def[i] / 8 * 0.999f);
}

TEST(rope_yarn_deepseek_v2_shape) {
    float inv[32], def[32], af;
    struct dsi_rope_scaling sc = {.type = DSI_ROPE_YARN,
                                  .factor = 40,
                                  .original_max_position_embeddings = 4096,
                                  .beta_fast = 32,
                                  .beta_slow = 1,
                                  .mscale = 0.707f,
                                  .mscale_all_dim = 0.707f};
    CHECK_EQ_INT(dsi_rope_inv_freq(&sc, 10000.0f, 64, 163840, 0, inv, &af), 0);
    dsi_rope_inv_freq_default(10000.0f, 64, def);
    CHECK_NEAR(af, 1.0, 1e-6); /* mscale == mscale_all_dim */
    CHECK_NEAR(inv[0], def[0], 1e-7);
    CHECK_NEAR(inv[31], def[31] / 40, 1e-12);
    CHECK_NEAR(dsi_yarn_get_mscale(40.0f, 1.0f), 0.1 * log(40.0) + 1, 1e-6);
    CHECK(dsi_yarn_get_mscale(1.0f, 1.0f) == 1.0f);
    sc.mscale = 0;
    sc.mscale_all_dim = 0;
    CHECK_EQ_INT(dsi_rope_inv_freq(&sc, 10000.0f, 64, 163840, 0, inv, &af), 0);
    CHECK_NEAR(af, 0.1 * log(40.0) + 1, 1e-6);
}

TEST(rope_dynamic_grows_base_past_original) {
    float a[8], b[8], af;
    struct dsi_rope_scaling sc = {.type = DSI_ROPE_DYNAMIC, .factor = 2};
    CHECK_EQ_INT(dsi_rope_inv_freq(&sc, 10000.0f, 16, 100, 50, a, &af), 0);
    dsi_rope_inv_freq_default(10000.0f, 16, b);
    CHECK(!memcmp(a, b, sizeof a));
    CHECK_EQ_INT(dsi_rope_inv_freq(&sc, 10000.0f, 16, 100, 400, a, &af), 0);
    CHECK(a[7] < b[7]);
}

/* x rounded the way the int8 cache stores it: int8 values times the f16 scale. */
static void int8_round(float *x, int n) {
    uint8_t buf[64];
    dsi_kv_quant_int8(buf, x, n);
    float s = dsi_kv_int8_scale(buf, n);
    for (int i = 0; i < n; i++)
        x[i] = (float)(int8_t)buf[i] * s;
}

static void attn_reference(int dtype_kv) {
    /* 4 heads, 2 kv heads, head_dim 8, block 2, context 3 in blocks 5 then 2 */
    enum { NH = 4, NKV = 2, HD = 8, BS = 2, NB = 6 };
    static float kf[NB * BS * NKV * HD], vf[NB * BS * NKV * HD];
    static uint16_t kb[NB * BS * NKV * HD], vb[NB * BS * NKV * HD];
    static uint8_t k8[NB * BS * NKV * (HD + 2)], v8[NB * BS * NKV * (HD + 2)];
    float K[3][NKV * HD], Vv[3][NKV * HD], q[NH * HD], out[HD], sc[3];
    int32_t table[2] = {5, 2};
    uint32_t s = 3;
    for (int p = 0; p < 3; p++) {
        for (int i = 0; i < NKV * HD; i++) {
            K[p][i] = frand(&s);
            Vv[p][i] = frand(&s);
            if (dtype_kv == DSI_KV_BF16) {
                K[p][i] = dsi_bf16_to_f32(dsi_f32_to_bf16(K[p][i]));
                Vv[p][i] = dsi_bf16_to_f32(dsi_f32_to_bf16(Vv[p][i]));
            }
        }
        if (dtype_kv == DSI_KV_F32)
            dsi_kv_store(kf, vf, DSI_KV_F32, BS, NKV, HD, table, p, K[p], Vv[p]);
        else if (dtype_kv == DSI_KV_BF16)
            dsi_kv_store(kb, vb, DSI_KV_BF16, BS, NKV, HD, table, p, K[p], Vv[p]);
        else
            dsi_kv_store(k8, v8, DSI_KV_INT8, BS, NKV, HD, table, p, K[p], Vv[p]);
        for (int h = 0; dtype_kv == DSI_KV_INT8 && h < NKV; h++) { /* the reference sees the rounded cache */
            int8_round(K[p] + h * HD, HD);
            int8_round(Vv[p] + h * HD, HD);
        }
    }
    for (int i = 0; i < NH * HD; i++)
        q[i] = frand(&s);
    /* position 2 lives in block 2 slot 0 */
    if (dtype_kv == DSI_KV_F32) CHECK(kf[(2 * BS + 0) * NKV * HD] == K[2][0]);
    /* int8: kv head 1 of position 2 is vector (2*BS + 0)*NKV + 1, HD values then the scale */
    if (dtype_kv == DSI_KV_INT8)
        CHECK_NEAR((int8_t)k8[((2 * BS + 0) * NKV + 1) * (HD + 2)] *
                       dsi_kv_int8_scale(k8 + ((2 * BS + 0) * NKV + 1) * (HD + 2), HD),
                   K[2][HD], 1e-7);
    struct dsi_attn_args a = {.n_heads = NH,
                              .n_kv_heads = NKV,
                              .head_dim = HD,
                              .scale = 0.35f,
                              .block_size = BS,
                              .kv_dtype = (enum dsi_kv_dtype)dtype_kv,
                              .k = dtype_kv == DSI_KV_F32 ? (void *)kf : dtype_kv == DSI_KV_BF16 ? (void *)kb : (void *)k8,
                              .v = dtype_kv == DSI_KV_F32 ? (void *)vf : dtype_kv == DSI_KV_BF16 ? (void *)vb : (void *)v8,
                              .block_table = table,
                              .n_ctx = 3};
    for (int h = 0; h < NH; h++) {
        int kvh = h / 2;
        double w[3], m = -1e30, z = 0;
        for (int p = 0; p < 3; p++) {
            double d = 0;
            for (int i = 0; i < HD; i++)
                d += (double)q[h * HD + i] * K[p][kvh * HD + i];
            w[p] = d * 0.35;
            if (w[p] > m) m = w[p];
        }
        for (int p = 0; p < 3; p++)
            z += (w[p] = exp(w[p] - m));
        dsi_attn_head(&a, h, q + h * HD, out, sc);
        for (int i = 0; i < HD; i++) {
            double r = 0;
            for (int p = 0; p < 3; p++)
                r += w[p] / z * Vv[p][kvh * HD + i];
            CHECK_NEAR(out[i], r, 1e-5);
        }
    }
}

TEST(attention_paged_f32_matches_direct) {
    attn_reference(DSI_KV_F32);
}
TEST(attention_paged_bf16_matches_direct) {
    attn_reference(DSI_KV_BF16);
}

/* The int8 cache's attention reads the int8 values and scales directly; it must
 * equal exact attention over the values they stand for. */
TEST(attention_paged_int8_matches_direct_over_dequantized) {
    attn_reference(DSI_KV_INT8);
}

/* One vector: scale = absmax / 127 rounded up to an f16, values within half a
 * step, never past +-127; an all-zero vector has scale 0; NaN stores 0. */
TEST(kv_int8_quantize_hand_values) {
    float x[4] = {1.0f, -2.0f, 0.25f, 127.0f};
    uint8_t b[6];
    dsi_kv_quant_int8(b, x, 4);
    CHECK(dsi_kv_int8_scale(b, 4) == 1.0f);
    CHECK((int8_t)b[0] == 1 && (int8_t)b[1] == -2 && (int8_t)b[2] == 0 && (int8_t)b[3] == 127);
    float z[4] = {0};
    dsi_kv_quant_int8(b, z, 4);
    CHECK(dsi_kv_int8_scale(b, 4) == 0.0f && b[0] == 0 && b[3] == 0);
    float n[4] = {NAN, 1.0f, -1.0f, 0.5f};
    dsi_kv_quant_int8(b, n, 4);
    CHECK((int8_t)b[0] == 0 && (int8_t)b[1] == 127 && (int8_t)b[2] == -127);
    uint32_t s = 9;
    for (int t = 0; t < 200; t++) {
        float v[32], amax = 0.0f, mag = ldexpf(1.0f, t % 40 - 20); /* 2^-20 .. 2^19 */
        for (int i = 0; i < 32; i++) {
            v[i] = frand(&s) * mag;
            if (fabsf(v[i]) > amax) amax = fabsf(v[i]);
        }
        uint8_t q[34];
        dsi_kv_quant_int8(q, v, 32);
        float sc = dsi_kv_int8_scale(q, 32);
        CHECK(sc >= amax / 127.0f && sc <= amax / 127.0f * 1.002f + 6e-8f); /* f16: 2^-10 steps, subnormals */
        for (int i = 0; i < 32; i++)
            CHECK(fabsf((float)(int8_t)q[i] * sc - v[i]) <= 0.5f * sc + 1e-12f);
        double want = 0.0, w2 = 0.0; /* the dot reads the int8 values with the scale applied once */
        for (int i = 0; i < 32; i++)
            want += (double)(int8_t)q[i] * sc * v[i], w2 += fabs((double)(int8_t)q[i] * sc * v[i]);
        CHECK_NEAR(dsi_kv_dot(DSI_KV_INT8, q, v, 32), want, 1e-5 * w2 + 1e-30);
    }
}

int main(void) {
    RUN(bf16_round_to_nearest_even);
    RUN(dots_match_double_reference_all_lengths);
    RUN(quantize_int8_hand_values);
    RUN(quantize_int8_nan_and_inf_stay_defined);
    RUN(matvec_equals_matmul_bitwise_and_dequant_reference);
    RUN(rmsnorm_swiglu_softmax_hand_values);
    RUN(rope_default_and_rotation_pairs);
    RUN(rope_llama3_bands);
    RUN(rope_yarn_deepseek_v2_shape);
    RUN(rope_dynamic_grows_base_past_original);
    RUN(attention_paged_f32_matches_direct);
    RUN(attention_paged_int8_matches_direct_over_dequantized);
    RUN(kv_int8_quantize_hand_values);
    RUN(attention_paged_bf16_matches_direct);
    return test_summary();
}
