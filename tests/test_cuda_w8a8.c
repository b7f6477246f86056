/*
 * test_cuda_w8a8.c: the kernels of the W8A8 matmul (kernels/w8a8.cu) against
 * their CPU twins (cpu_w8a8.c) on fresh random inputs, bit for bit:
 * - per-token activation quantization: the same int8 bytes and scales for
 *   bf16 inputs (the CPU gets the same values as floats), on the vector path
 *   (k % 8 == 0) and the scalar one, with a zero row, an outlier row and a
 *   NaN;
 * - the epilogue: ((float)acc * x_scale) * w_scale (+ bias), no FMA, equal
 *   bits, with and without bias, on the float4 path and the scalar one;
 * - the load-time int8 copy of integer-valued bf16: exact.
 * The cuBLASLt product between them is checked end to end in
 * test_cuda_backend.c (W8A8 logits against the CPU backend's W8A8).
 * Without a GPU every test reports SKIP (exit 77).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "../src/backend/cpu/cpu_ops.h"
#include "kernels.h"
#include "test.h"
#define TEST_CUDA_SEED 0x7A3C55E1D00DF00Dull
#include "test_cuda_util.h"

static void quant_case(int m, int k) {
    size_t n = (size_t)m * k;
    uint16_t *xb = malloc(n * 2);
    float *xf = malloc(n * 4), *sc = malloc((size_t)m * 4), *ref_s = malloc((size_t)m * 4);
    int8_t *q = malloc(n), *ref = malloc(n);
    for (size_t i = 0; i < n; i++) {
        float v = frand() * 3.f;
        if (i % 97 == 5) v *= 40.f; /* outliers: the scale follows them */
        xb[i] = dsi_f32_to_bf16(v);
    }
    if (m > 1)
        for (int i = 0; i < k; i++)
            xb[(size_t)k + i] = 0; /* row 1 zero: scale 0, q 0 */
    if (m > 2) xb[2 * (size_t)k + 3] = 0x7fc0; /* a NaN: quantized to 0, never the max */
    for (size_t i = 0; i < n; i++)
        xf[i] = bf(xb[i]);
    for (int r = 0; r < m; r++)
        dsi_quantize_act_int8(xf + (size_t)r * k, k, ref + (size_t)r * k, &ref_s[r]);
    uint16_t *dx = dmalloc(n * 2);
    int8_t *dq = dmalloc(n);
    float *ds = dmalloc((size_t)m * 4);
    cudaMemset(dq, 0x55, n); /* poison: every byte must be written */
    up(dx, xb, n * 2);
    CHECK_EQ_INT(dsi_cuda_quant_act_int8(dq, ds, dx, m, k, 0), 0);
    down(q, dq, n), down(sc, ds, (size_t)m * 4);
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += q[i] != ref[i];
    CHECK_EQ_INT(bad, 0);
    for (int r = 0; r < m; r++)
        CHECK(memcmp(&sc[r], &ref_s[r], 4) == 0);
    if (m > 1) CHECK(sc[1] == 0.f);
    cudaFree(dx), cudaFree(dq), cudaFree(ds);
    free(xb), free(xf), free(sc), free(ref_s), free(q), free(ref);
}

TEST(cuda_w8a8_quant_act_matches_cpu) {
    NEED_GPU();
    quant_case(1, 64);
    quant_case(5, 3584);    /* 7B hidden: vector path */
    quant_case(3, 18944);   /* 7B intermediate */
    quant_case(4, 100);     /* k % 8 != 0: scalar path */
    quant_case(300, 512);   /* many rows */
}

static void epi_case(int m, int n, int with_bias) {
    size_t mn = (size_t)m * n;
    int32_t *acc = malloc(mn * 4);
    float *xs = malloc((size_t)m * 4), *ws = malloc((size_t)n * 4), *bias = malloc((size_t)n * 4);
    float *y = malloc(mn * 4);
    for (size_t i = 0; i < mn; i++)
        acc[i] = (int32_t)(frand() * 127.f * 127.f * 3584.f); /* the 7B hidden's range, past 2^24 */
    for (int r = 0; r < m; r++)
        xs[r] = (frand() + 1.1f) * 0.03f;
    for (int c = 0; c < n; c++) {
        ws[c] = (frand() + 1.1f) * 1e-3f;
        bias[c] = frand();
    }
    int32_t *dacc = dmalloc(mn * 4);
    float *dxs = dmalloc((size_t)m * 4), *dws = dmalloc((size_t)n * 4), *db = dmalloc((size_t)n * 4);
    float *dy = dmalloc(mn * 4);
    cudaMemset(dy, 0xff, mn * 4); /* NaN poison */
    up(dacc, acc, mn * 4), up(dxs, xs, (size_t)m * 4), up(dws, ws, (size_t)n * 4), up(db, bias, (size_t)n * 4);
    CHECK_EQ_INT(dsi_cuda_w8a8_epilogue(dy, dacc, dxs, dws, with_bias ? db : NULL, m, n, 0), 0);
    down(y, dy, mn * 4);
    int bad = 0;
    for (int r = 0; r < m; r++)
        for (int c = 0; c < n; c++) {
            float ref = dsi_w8a8_out(acc[(size_t)r * n + c], xs[r], ws[c], with_bias ? bias : NULL, c);
            bad += memcmp(&ref, &y[(size_t)r * n + c], 4) != 0;
        }
    CHECK_EQ_INT(bad, 0);
    cudaFree(dacc), cudaFree(dxs), cudaFree(dws), cudaFree(db), cudaFree(dy);
    free(acc), free(xs), free(ws), free(bias), free(y);
}

TEST(cuda_w8a8_epilogue_matches_cpu) {
    NEED_GPU();
    epi_case(3, 4608, 1); /* q|k|v with bias, float4 path */
    epi_case(17, 3584, 0);
    epi_case(5, 13, 1);   /* n % 4 != 0: scalar path */
    epi_case(1, 1, 0);
}

TEST(cuda_w8a8_int8_copy_exact) {
    NEED_GPU();
    const size_t n = 100003;
    uint16_t *src = malloc(n * 2);
    int8_t *out = malloc(n);
    for (size_t i = 0; i < n; i++)
        src[i] = dsi_f32_to_bf16((float)((int)(i * 2654435761u % 255u) - 127));
    uint16_t *ds = dmalloc(n * 2);
    int8_t *dd = dmalloc(n);
    up(ds, src, n * 2);
    CHECK_EQ_INT(dsi_cuda_int8_from_bf16(dd, ds, n, 0), 0);
    down(out, dd, n);
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += out[i] != (int8_t)(int)bf(src[i]);
    CHECK_EQ_INT(bad, 0);
    cudaFree(ds), cudaFree(dd);
    free(src), free(out);
}

TEST(cuda_w8a8_rejects_bad_args) {
    NEED_GPU();
    float one = 1.f;
    CHECK_EQ_INT(dsi_cuda_quant_act_int8(NULL, NULL, NULL, -1, 64, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_quant_act_int8(NULL, NULL, NULL, 1, 0, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_quant_act_int8(NULL, NULL, NULL, 0, 64, 0), 0); /* nothing to do */
    CHECK_EQ_INT(dsi_cuda_w8a8_epilogue(NULL, NULL, NULL, NULL, NULL, 1, 4, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_w8a8_epilogue(NULL, NULL, NULL, &one, NULL, 1, 0, 0), DSI_EINVAL);
}

int main(void) {
    RUN(cuda_w8a8_quant_act_matches_cpu);
    RUN(cuda_w8a8_epilogue_matches_cpu);
    RUN(cuda_w8a8_int8_copy_exact);
    RUN(cuda_w8a8_rejects_bad_args);
    return test_summary();
}
