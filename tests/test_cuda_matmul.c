/*
 * test_cuda_matmul.c: the INT8 matmul kernels against the CPU reference ops
 * (cpu_ops.h) on fresh random inputs: the mma.sync GEMM, group-wise
 * quantization, the one-row decode GEMVs and the tiled GEMM of batched decode.
 * (Split out of test_cuda_kernels.c, which keeps the other kernels.)
 *
 * Tolerances, and where they come from:
 * - quantize: exact (same rounding rule as the CPU).
 * - int8 gemm: bf16 activations vs the fp32 reference: |err| <= 1e-2 * sqrt(k) * scale-weighted.
 * - int8 decode GEMV (both one-row kernels: fp32 CUDA cores, f16 tensor cores):
 *   same int8 values, exact products, fp32 sums: 2e-3 x (scale of x) abs vs the
 *   CPU and vs the tensor-core kernel (as the gemm test).
 * - tiled int8 gemm (batched decode): the same 2e-3 abs vs the CPU; split-K runs
 *   bit-identical twice.
 * Without a GPU every test reports SKIP (exit 77), the host-only argument
 * checks too, so ctest never counts a GPU-less run as passed.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "../src/backend/cpu/cpu_ops.h"
#include "kernels.h"
#include "test.h"
#define TEST_CUDA_SEED 0x2545F4914F6CDD1Dull
#include "test_cuda_util.h"

static void gemm_case(int m, int n, int k, int with_bias) {
    size_t nk = (size_t)n * k;
    float *wf = malloc(nk * 4), *x = malloc((size_t)m * k * 4), *bias = malloc((size_t)n * 4);
    uint16_t *wb = malloc(nk * 2), *xb = malloc((size_t)m * k * 2);
    for (size_t i = 0; i < nk; i++) {
        wb[i] = dsi_f32_to_bf16(frand() * 0.05f);
        wf[i] = bf(wb[i]);
    }
    for (int i = 0; i < m * k; i++) {
        xb[i] = dsi_f32_to_bf16(frand());
        x[i] = bf(xb[i]);
    }
    for (int i = 0; i < n; i++)
        bias[i] = frand();
    int8_t *q = malloc(nk);
    float *sc = malloc((size_t)n * 4), *ref = malloc((size_t)m * n * 4), *y = malloc((size_t)m * n * 4);
    CHECK_EQ_INT(dsi_quantize_int8(wf, n, k, 0, q, sc), 0);
    struct dsi_qweight qw = {
        .dtype = DSI_W_INT8, .rows = n, .cols = k, .group_size = 0, .data = q, .scales = sc};
    dsi_matmul(&qw, x, m, with_bias ? bias : NULL, ref, n, 0, n);

    uint16_t *dw = dmalloc(nk * 2), *dx = dmalloc((size_t)m * k * 2);
    int8_t *dq = dmalloc(dsi_cuda_q8_bytes(n, k));
    float *dsc = dmalloc((size_t)n * 4), *dy = dmalloc((size_t)m * n * 4), *db = dmalloc((size_t)n * 4);
    up(dw, wb, nk * 2), up(dx, xb, (size_t)m * k * 2), up(db, bias, (size_t)n * 4);
    CHECK_EQ_INT(dsi_cuda_quantize_int8(dq, dsc, dw, n, k, 0), 0);
    /* with the split-K workspace (small n) and without */
    struct dsi_cuda_gemm_ws ws = {
        .partial_bytes = dsi_cuda_gemm_ws_bytes(n), .n_counters = (n + 15) / 16, .n_sm = 132};
    ws.partial = dmalloc(ws.partial_bytes);
    ws.counters = dmalloc((size_t)ws.n_counters * 4);
    cudaMemset(ws.counters, 0, (size_t)ws.n_counters * 4);
    float *y2 = malloc((size_t)m * n * 4);
    CHECK_EQ_INT(dsi_cuda_gemm_int8(dy, dx, dq, dsc, with_bias ? db : NULL, m, n, k, NULL, 0), 0);
    CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
    down(y2, dy, (size_t)m * n * 4);
    for (int rep = 0; rep < 2; rep++) /* twice: the counters must come back to zero */
        CHECK_EQ_INT(dsi_cuda_gemm_int8(dy, dx, dq, dsc, with_bias ? db : NULL, m, n, k, &ws, 0), 0);
    CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
    down(y, dy, (size_t)m * n * 4);
    unsigned *cnt = malloc((size_t)ws.n_counters * 4);
    down(cnt, ws.counters, (size_t)ws.n_counters * 4);
    int cnt_bad = 0;
    for (int i = 0; i < ws.n_counters; i++)
        cnt_bad += cnt[i] != 0;
    CHECK_EQ_INT(cnt_bad, 0);
    free(cnt);
    /* every code variant gives the same numbers */
    for (int var = 0; var < 8; var++) {
        CHECK_EQ_INT(dsi_cuda_gemm_int8_variant(dy, dx, dq, dsc, with_bias ? db : NULL, m, n, k, &ws, var, 0),
                     0);
        float *yv = malloc((size_t)m * n * 4);
        down(yv, dy, (size_t)m * n * 4);
        double wv = 0;
        for (int i = 0; i < m * n; i++)
            if (fabs(yv[i] - y[i]) > wv) wv = fabs(yv[i] - y[i]);
        if (wv > 1e-5) fprintf(stderr, "  variant %d differs by %g\n", var, wv);
        CHECK(wv <= 1e-5); /* split-K or not: fp32 summation order only */
        free(yv);
    }
    cudaFree(ws.partial), cudaFree(ws.counters);
    double worst2 = 0;
    for (int i = 0; i < m * n; i++)
        if (fabs(y2[i] - ref[i]) > worst2) worst2 = fabs(y2[i] - ref[i]);
    CHECK(worst2 <= 2e-3);
    free(y2);
    float *gsc = malloc((size_t)n * 4);
    down(gsc, dsc, (size_t)n * 4);
    int sc_bad = 0;
    for (int i = 0; i < n; i++)
        sc_bad += fabsf(gsc[i] - sc[i]) > 1e-7f * fabsf(sc[i]);
    CHECK_EQ_INT(sc_bad, 0);
    double worst = 0;
    for (int i = 0; i < m * n; i++) {
        double e = fabs(y[i] - ref[i]);
        if (e > worst) worst = e;
    }
    /* same int8 values, fp32 accumulation in a different order: ~1e-6 relative of sum|w x| */
    if (worst > 2e-3) fprintf(stderr, "  gemm m=%d n=%d k=%d worst abs error %g\n", m, n, k, worst);
    CHECK(worst <= 2e-3);
    /* dequant path: integer values back */
    uint16_t *dd = dmalloc(nk * 2), *deq = malloc(nk * 2);
    CHECK_EQ_INT(dsi_cuda_dequant_int8(dd, dq, NULL, n, k, 0), 0);
    down(deq, dd, nk * 2);
    int bad = 0;
    for (size_t i = 0; i < nk; i++)
        bad += bf(deq[i]) != (float)q[i];
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(dsi_cuda_dequant_int8(dd, dq, dsc, n, k, 0), 0); /* scaled: the int8 embedding table */
    down(deq, dd, nk * 2);
    bad = 0;
    for (size_t i = 0; i < nk; i++)
        bad += deq[i] != dsi_f32_to_bf16((float)q[i] * sc[i / k]);
    CHECK_EQ_INT(bad, 0);
    cudaFree(dw), cudaFree(dx), cudaFree(dq), cudaFree(dsc), cudaFree(dy), cudaFree(db), cudaFree(dd);
    free(wf), free(x), free(bias), free(wb), free(xb), free(q), free(sc), free(ref), free(y), free(gsc),
        free(deq);
}

TEST(cuda_gemm_int8_matches_cpu) {
    NEED_GPU();
    gemm_case(1, 512, 3584, 1);
    gemm_case(1, 3584, 18944, 0); /* the 7B down projection: split-K */
    gemm_case(5, 4608, 3584, 1);
    gemm_case(3, 4608, 256, 0);
    gemm_case(16, 200, 96, 1);  /* n not a multiple of 16 */
    gemm_case(40, 64, 72, 0);   /* k not a multiple of 32 */
    gemm_case(130, 96, 128, 1); /* > 64 rows: two passes */
}

/* Group-wise INT8 (kernels/quant_group.cu): bytes and scales bit-identical to the
 * CPU's dsi_quantize_int8 of the same bf16 values (read back through the tiled
 * layout with the per-channel dequant, whose layout the gemm test proves), G = k
 * identical to the per-channel kernel byte for byte, and the group dequant equal
 * to bf16(q * scale[row][col / G]). Special values: zero groups, NaN, inf. */
static void quant_group_case(int n, int k, int gs) {
    size_t nk = (size_t)n * k, ng = (size_t)(k / gs);
    float *wf = malloc(nk * 4), *sc = malloc((size_t)n * ng * 4), *gsc = malloc((size_t)n * ng * 4);
    uint16_t *wb = malloc(nk * 2), *deq = malloc(nk * 2);
    int8_t *q = malloc(nk);
    for (size_t i = 0; i < nk; i++) {
        float v = frand() * (i % 7 == 0 ? 3.f : 0.05f);
        if (i / (size_t)gs % 11 == 5) v = 0.f; /* whole zero groups: scale 0, q 0 */
        wb[i] = dsi_f32_to_bf16(v);
    }
    if (nk > 40) {
        wb[3] = 0x7fc0;  /* NaN: quantizes to 0, never the group's max */
        wb[40] = 0x7f80; /* +inf: scale inf, clamped */
    }
    for (size_t i = 0; i < nk; i++)
        wf[i] = bf(wb[i]);
    CHECK_EQ_INT(dsi_quantize_int8(wf, n, k, gs, q, sc), 0);
    size_t qb = dsi_cuda_q8_bytes(n, k);
    uint16_t *dw = dmalloc(nk * 2), *dd = dmalloc(nk * 2);
    int8_t *dq = dmalloc(qb), *dq1 = dmalloc(qb);
    float *dsc = dmalloc((size_t)n * ng * 4), *dsc1 = dmalloc((size_t)n * 4);
    up(dw, wb, nk * 2);
    CHECK_EQ_INT(dsi_cuda_quantize_int8_group(dq, dsc, dw, n, k, gs, 0), 0);
    CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
    down(gsc, dsc, (size_t)n * ng * 4);
    CHECK(memcmp(gsc, sc, (size_t)n * ng * 4) == 0); /* bit-identical scales */
    /* bytes: the per-channel dequant without scales returns the integers row-major */
    CHECK_EQ_INT(dsi_cuda_dequant_int8(dd, dq, NULL, n, k, 0), 0);
    down(deq, dd, nk * 2);
    int bad = 0;
    for (size_t i = 0; i < nk; i++)
        bad += bf(deq[i]) != (float)q[i];
    CHECK_EQ_INT(bad, 0);
    /* group dequant: bf16(q * group scale) */
    CHECK_EQ_INT(dsi_cuda_dequant_int8_group(dd, dq, dsc, n, k, gs, 0), 0);
    down(deq, dd, nk * 2);
    bad = 0;
    for (size_t i = 0; i < nk; i++) {
        size_t r = i / (size_t)k, c = i % (size_t)k;
        uint16_t want = dsi_f32_to_bf16((float)q[i] * sc[r * ng + c / (size_t)gs]);
        bad += deq[i] != want && !(isnan(bf(deq[i])) && isnan(bf(want)));
    }
    CHECK_EQ_INT(bad, 0);
    /* one group per row = the per-channel kernel, byte for byte (padding too) */
    int8_t *h1 = malloc(qb), *h2 = malloc(qb);
    CHECK_EQ_INT(dsi_cuda_quantize_int8_group(dq, dsc, dw, n, k, k, 0), 0);
    CHECK_EQ_INT(dsi_cuda_quantize_int8(dq1, dsc1, dw, n, k, 0), 0);
    CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
    down(h1, dq, qb), down(h2, dq1, qb);
    CHECK(memcmp(h1, h2, qb) == 0);
    cudaFree(dw), cudaFree(dd), cudaFree(dq), cudaFree(dq1), cudaFree(dsc), cudaFree(dsc1);
    free(wf), free(sc), free(gsc), free(wb), free(deq), free(q), free(h1), free(h2);
}

TEST(cuda_quant_group_matches_cpu) {
    NEED_GPU();
    quant_group_case(37, 5 * 32, 32);   /* odd n, 5 groups */
    quant_group_case(61, 7 * 128, 128); /* odd n, k not a multiple of 256 */
    quant_group_case(19, 3 * 48, 48);   /* groups not aligned to the 32-column tiles */
    quant_group_case(16, 64, 1);        /* degenerate group of one input */
    quant_group_case(3, 3584, 128);     /* the 7B hidden width */
}

TEST(cuda_quant_group_rejects_bad_args) {
    NEED_GPU();
    int8_t *dq = dmalloc(dsi_cuda_q8_bytes(16, 96));
    float *dsc = dmalloc(16 * 3 * 4);
    uint16_t *dw = dmalloc(16 * 96 * 2);
    CHECK_EQ_INT(dsi_cuda_quantize_int8_group(dq, dsc, dw, 16, 96, 64, 0), DSI_EINVAL); /* 64 !| 96 */
    CHECK_EQ_INT(dsi_cuda_quantize_int8_group(dq, dsc, dw, 16, 96, 0, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_quantize_int8_group(dq, dsc, dw, 0, 96, 32, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_dequant_int8_group(dw, dq, dsc, 16, 96, 36, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_dequant_int8_group(dw, dq, NULL, 16, 96, 32, 0), DSI_EINVAL);
    cudaFree(dq), cudaFree(dsc), cudaFree(dw);
}

TEST(cuda_gemm_int8_rejects_bad_shapes) {
    NEED_GPU();
    CHECK_EQ_INT(dsi_cuda_gemm_int8(NULL, NULL, NULL, NULL, NULL, 1, 0, 32, NULL, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_quantize_int8(NULL, NULL, NULL, 16, -1, 0), DSI_EINVAL);
    CHECK(dsi_cuda_q8_bytes(17, 33) == (size_t)2 * 2 * 512);
}

/* Decode GEMV vs dsi_quantize_int8 + dsi_matmul (CPU) and vs the mma kernel of
 * gemv_int8.cu, one weight matrix for every row count of ms; one row through
 * both of its kernels (path 1: CUDA cores, fp32; path 2: tensor cores, x as
 * f16; and path 0, the dispatch rule, which picks the tensor cores for the
 * 37888-row case). Same int8 values and exact products (f16 holds every bf16 x
 * in range): only the fp32 summation order differs. xmul scales x; at 1e5 the
 * f16 path must scale x down by a power of two instead of overflowing, at 1e-3
 * up instead of going subnormal. */
static void gemv_case_x(const int *ms, int n_ms, int n, int k, int with_bias, float xmul) {
    int maxm = 0;
    for (int i = 0; i < n_ms; i++)
        if (ms[i] > maxm) maxm = ms[i];
    size_t nk = (size_t)n * k;
    float *wf = malloc(nk * 4), *x = malloc((size_t)maxm * k * 4), *bias = malloc((size_t)n * 4);
    uint16_t *wb = malloc(nk * 2), *xb = malloc((size_t)maxm * k * 2);
    int8_t *q = malloc(nk);
    float *sc = malloc((size_t)n * 4), *ref = malloc((size_t)maxm * n * 4), *y = malloc((size_t)maxm * n * 4);
    float *yo = malloc((size_t)maxm * n * 4);
    CHECK(wf && x && bias && wb && xb && q && sc && ref && y && yo);
    if (!(wf && x && bias && wb && xb && q && sc && ref && y && yo)) goto out_host;
    for (size_t i = 0; i < nk; i++) {
        wb[i] = dsi_f32_to_bf16(frand() * 0.05f);
        wf[i] = bf(wb[i]);
    }
    for (int i = 0; i < maxm * k; i++) {
        xb[i] = dsi_f32_to_bf16(frand() * xmul);
        x[i] = bf(xb[i]);
    }
    for (int i = 0; i < n; i++)
        bias[i] = frand();
    CHECK_EQ_INT(dsi_quantize_int8(wf, n, k, 0, q, sc), 0);
    struct dsi_qweight qw = {
        .dtype = DSI_W_INT8, .rows = n, .cols = k, .group_size = 0, .data = q, .scales = sc};
    uint16_t *dw = dmalloc(nk * 2), *dx = dmalloc((size_t)maxm * k * 2);
    int8_t *dq = dmalloc(dsi_cuda_q8_bytes(n, k));
    float *dsc = dmalloc((size_t)n * 4), *dy = dmalloc((size_t)maxm * n * 4), *db = dmalloc((size_t)n * 4);
    CHECK(dw && dx && dq && dsc && dy && db);
    up(dw, wb, nk * 2), up(dx, xb, (size_t)maxm * k * 2), up(db, bias, (size_t)n * 4);
    CHECK_EQ_INT(dsi_cuda_quantize_int8(dq, dsc, dw, n, k, 0), 0);
    for (int i = 0; i < n_ms * 3; i++) {
        int m = ms[i / 3], path = i % 3;  /* 0: the dispatch rule, 1: CUDA cores, 2: tensor cores */
        if (m > 1 && path != 1) continue; /* rows 2..8: CUDA cores only */
        dsi_matmul(&qw, x, m, with_bias ? bias : NULL, ref, n, 0, n);
        cudaMemset(dy, 0xff, (size_t)maxm * n * 4); /* NaN: rows not written show up */
        CHECK_EQ_INT(dsi_cuda_gemv_int8_path(dy, dx, dq, dsc, with_bias ? db : NULL, m, n, k, path, 0), 0);
        CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
        down(y, dy, (size_t)m * n * 4);
        /* the tensor-core kernel as a second reference where the gemm test covers it (k % 32 == 0) */
        if (k % 32 == 0) {
            CHECK_EQ_INT(dsi_cuda_gemm_int8(dy, dx, dq, dsc, with_bias ? db : NULL, m, n, k, NULL, 0), 0);
            CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
            down(yo, dy, (size_t)m * n * 4);
        } else {
            memcpy(yo, y, (size_t)m * n * 4);
        }
        double worst = 0, worst_old = 0;
        int nan = 0;
        for (int j = 0; j < m * n; j++) {
            if (!(fabs(y[j]) < 1e30)) nan++;
            double e = fabs(y[j] - ref[j]), eo = fabs(y[j] - yo[j]);
            if (e > worst) worst = e;
            if (eo > worst_old) worst_old = eo;
        }
        const double tol = 2e-3 * xmul;
        if (worst > tol || worst_old > tol || nan)
            fprintf(stderr, "  gemv path %d m=%d n=%d k=%d: |new-cpu| %g |new-old| %g, %d not finite\n", path,
                    m, n, k, worst, worst_old, nan);
        CHECK_EQ_INT(nan, 0);
        CHECK(worst <= tol);
        CHECK(worst_old <= tol);
    }
    cudaFree(dw), cudaFree(dx), cudaFree(dq), cudaFree(dsc), cudaFree(dy), cudaFree(db);
out_host:
    free(wf), free(x), free(bias), free(wb), free(xb), free(q), free(sc), free(ref), free(y), free(yo);
}

static void gemv_case(const int *ms, int n_ms, int n, int k, int with_bias) {
    gemv_case_x(ms, n_ms, n, k, with_bias, 1.f);
}

TEST(cuda_gemv_int8_matches_cpu) {
    NEED_GPU();
    static const int m128[] = {1, 2, 8}, m_all[] = {1, 2, 3, 4, 5, 6, 7, 8}, m18[] = {1, 8};
    gemv_case(m_all, 8, 200, 48, 1);   /* k a multiple of 16, not of 32; n not of 16 */
    gemv_case(m128, 3, 96, 1040, 0);   /* k a multiple of 16, not of 512 */
    gemv_case(m128, 3, 33, 2, 1);      /* k smaller than one tile */
    gemv_case(m128, 3, 4608, 3584, 1); /* 7B qkv */
    gemv_case(m128, 3, 3584, 3584, 0); /* 7B o */
    gemv_case(m18, 2, 37888, 3584, 0); /* 7B gate|up */
    gemv_case(m18, 2, 3584, 18944, 0); /* 7B down */
    static const int m1[] = {1};
    gemv_case_x(m1, 1, 200, 96, 1, 1e5f); /* |x| past f16's 65504: scaled, not overflowed */
    gemv_case_x(m1, 1, 200, 96, 1, 1e-3f);
}

TEST(cuda_gemv_int8_rejects_bad_args) {
    NEED_GPU();
    int8_t *dq = dmalloc(dsi_cuda_q8_bytes(16, 64));
    uint16_t *dx = dmalloc(9 * 64 * 2 + 16);
    float *dsc = dmalloc(16 * 4), *dy = dmalloc(9 * 16 * 4);
    CHECK(dq && dx && dsc && dy);
    CHECK_EQ_INT(dsi_cuda_gemv_int8(dy, dx, dq, dsc, NULL, 0, 16, 64, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_gemv_int8(dy, dx, dq, dsc, NULL, 9, 16, 64, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_gemv_int8(dy, dx, dq, dsc, NULL, 1, 0, 64, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_gemv_int8(dy, dx, dq, dsc, NULL, 1, 16, 63, 0), DSI_EINVAL); /* k odd */
    CHECK_EQ_INT(dsi_cuda_gemv_int8(dy, dx + 1, dq, dsc, NULL, 1, 16, 64, 0),
                 DSI_EINVAL); /* x 2-byte aligned */
    CHECK_EQ_INT(dsi_cuda_gemv_int8(dy, dx, dq + 4, dsc, NULL, 1, 16, 64, 0), DSI_EINVAL); /* q unaligned */
    CHECK_EQ_INT(dsi_cuda_gemv_int8(dy, dx, NULL, dsc, NULL, 1, 16, 64, 0), DSI_EINVAL);
    /* the tensor-core kernel's x (2 k bytes) plus its static shared memory must fit
     * 48 KB: k = 24320 does not, so it refuses before launching (and path 0 would
     * take the CUDA cores) */
    CHECK_EQ_INT(dsi_cuda_gemv_int8_path(dy, dx, dq, dsc, NULL, 1, 16, 24320, 2, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_gemv_int8_path(dy, dx, dq, dsc, NULL, 1, 16, 64, 3, 0), DSI_EINVAL);
    CHECK_EQ_INT(cudaGetLastError(), 0); /* nothing was launched */
    cudaFree(dq), cudaFree(dx), cudaFree(dsc), cudaFree(dy);
}

/* Largest |y - ref| over n values; *nan counts the values of y that are not
 * finite (NaN-filled outputs left unwritten show up there). */
static double max_abs_err(const float *y, const float *ref, size_t n, int *nan) {
    double worst = 0;
    *nan = 0;
    for (size_t j = 0; j < n; j++) {
        if (!(fabs(y[j]) < 1e30)) ++*nan;
        double e = fabs(y[j] - ref[j]);
        if (e > worst) worst = e;
    }
    return worst;
}

/* Tiled INT8 GEMM (batched decode) vs dsi_quantize_int8 + dsi_matmul on the
 * same bf16 activations, one weight matrix for every row count of ms, with the
 * split-K workspace and without. Same int8 values, exact products, fp32 sums in
 * another order: 2e-3 abs, as the gemm test. y starts as NaN so rows or
 * columns the kernel forgets show up. */
static void tiled_case(const int *ms, int n_ms, int n, int k, int with_bias) {
    int maxm = 0;
    for (int i = 0; i < n_ms; i++)
        if (ms[i] > maxm) maxm = ms[i];
    size_t nk = (size_t)n * k, my = (size_t)maxm * n;
    float *wf = malloc(nk * 4), *x = malloc((size_t)maxm * k * 4), *bias = malloc((size_t)n * 4);
    uint16_t *wb = malloc(nk * 2), *xb = malloc((size_t)maxm * k * 2);
    int8_t *q = malloc(nk);
    float *sc = malloc((size_t)n * 4), *ref = malloc(my * 4), *y = malloc(my * 4);
    unsigned *cnt = NULL;
    struct dsi_cuda_gemm_ws ws = {
        .partial_bytes = dsi_cuda_gemm_ws_bytes(n), .n_counters = (n + 15) / 16, .n_sm = 132};
    CHECK(wf && x && bias && wb && xb && q && sc && ref && y);
    if (!(wf && x && bias && wb && xb && q && sc && ref && y)) goto out_host;
    cnt = malloc((size_t)ws.n_counters * 4);
    for (size_t i = 0; i < nk; i++) {
        wb[i] = dsi_f32_to_bf16(frand() * 0.05f);
        wf[i] = bf(wb[i]);
    }
    for (int i = 0; i < maxm * k; i++) {
        xb[i] = dsi_f32_to_bf16(frand());
        x[i] = bf(xb[i]);
    }
    for (int i = 0; i < n; i++)
        bias[i] = frand();
    CHECK_EQ_INT(dsi_quantize_int8(wf, n, k, 0, q, sc), 0);
    struct dsi_qweight qw = {
        .dtype = DSI_W_INT8, .rows = n, .cols = k, .group_size = 0, .data = q, .scales = sc};
    uint16_t *dw = dmalloc(nk * 2), *dx = dmalloc((size_t)maxm * k * 2);
    int8_t *dq = dmalloc(dsi_cuda_q8_bytes(n, k));
    float *dsc = dmalloc((size_t)n * 4), *dy = dmalloc(my * 4), *db = dmalloc((size_t)n * 4);
    ws.partial = dmalloc(ws.partial_bytes);
    ws.counters = dmalloc((size_t)ws.n_counters * 4);
    CHECK(dw && dx && dq && dsc && dy && db && ws.partial && ws.counters && cnt);
    up(dw, wb, nk * 2), up(dx, xb, (size_t)maxm * k * 2), up(db, bias, (size_t)n * 4);
    cudaMemset(ws.counters, 0, (size_t)ws.n_counters * 4);
    CHECK_EQ_INT(dsi_cuda_quantize_int8(dq, dsc, dw, n, k, 0), 0);
    for (int i = 0; i < n_ms; i++) {
        int m = ms[i];
        dsi_matmul(&qw, x, m, with_bias ? bias : NULL, ref, n, 0, n);
        for (int use_ws = 0; use_ws < 2; use_ws++) {
            cudaMemset(dy, 0xff, my * 4);
            for (int rep = 0; rep < 1 + use_ws; rep++) /* twice with ws: counters must return to zero */
                CHECK_EQ_INT(dsi_cuda_gemm_int8_tiled(dy, dx, dq, dsc, with_bias ? db : NULL, m, n, k,
                                                      use_ws ? &ws : NULL, 0),
                             0);
            CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
            down(y, dy, (size_t)m * n * 4);
            int nan = 0;
            double worst = max_abs_err(y, ref, (size_t)m * n, &nan);
            if (worst > 2e-3 || nan)
                fprintf(stderr, "  tiled m=%d n=%d k=%d ws=%d: worst abs error %g, %d not finite\n", m, n, k,
                        use_ws, worst, nan);
            CHECK_EQ_INT(nan, 0);
            CHECK(worst <= 2e-3);
        }
        /* every code variant (split-K off, 32-row blocks, weights via shared memory) */
        for (int var = 1; var < 8; var++) {
            cudaMemset(dy, 0xff, my * 4);
            CHECK_EQ_INT(dsi_cuda_gemm_int8_tiled_variant(dy, dx, dq, dsc, with_bias ? db : NULL, m, n, k,
                                                          &ws, var, 0),
                         0);
            CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
            down(y, dy, (size_t)m * n * 4);
            int nan = 0;
            double worst = max_abs_err(y, ref, (size_t)m * n, &nan);
            if (worst > 2e-3 || nan)
                fprintf(stderr, "  tiled variant %d m=%d n=%d k=%d: worst abs error %g, %d not finite\n", var,
                        m, n, k, worst, nan);
            CHECK_EQ_INT(nan, 0);
            CHECK(worst <= 2e-3);
        }
        down(cnt, ws.counters, (size_t)ws.n_counters * 4);
        int cnt_bad = 0;
        for (int j = 0; j < ws.n_counters; j++)
            cnt_bad += cnt[j] != 0;
        CHECK_EQ_INT(cnt_bad, 0);
    }
    cudaFree(dw), cudaFree(dx), cudaFree(dq), cudaFree(dsc), cudaFree(dy), cudaFree(db);
    cudaFree(ws.partial), cudaFree(ws.counters);
out_host:
    free(wf), free(x), free(bias), free(wb), free(xb), free(q), free(sc), free(ref), free(y), free(cnt);
}

TEST(cuda_gemm_int8_tiled_matches_cpu) {
    NEED_GPU();
    static const int m_all[] = {1, 17, 33, 64, 65, 130, 256}, m_mid[] = {17, 64, 130}, m_big[] = {1, 33, 256},
                     m_down[] = {17, 64}, m_odd[] = {1, 17, 65};
    tiled_case(m_all, 7, 200, 64, 1);      /* n not a multiple of 16 or 128; one partial chunk */
    tiled_case(m_all, 7, 200, 96, 0);      /* k32 = 3: a chunk ends inside K */
    tiled_case(m_mid, 3, 3584, 3584, 1);   /* 7B o: split-K (also over several m chunks) */
    tiled_case(m_big, 3, 4608, 3584, 0);   /* 7B qkv */
    tiled_case(m_down, 2, 3584, 18944, 0); /* 7B down: many splits */
    tiled_case(m_odd, 3, 72, 40, 1);       /* k a multiple of 8, not of 32 */
    tiled_case(m_odd, 3, 40, 37, 0);       /* k odd: x staged without cp.async */
}

/* With split-K, the sum of the partials runs in split order: two runs give the
 * same bits (and the counters, left zero, let the second run split the same way). */
TEST(cuda_gemm_int8_tiled_split_is_deterministic) {
    NEED_GPU();
    int n = 3584, k = 18944, ms[2] = {64, 20};
    size_t nk = (size_t)n * k;
    uint16_t *dw = dmalloc(nk * 2), *dx = dmalloc((size_t)64 * k * 2);
    int8_t *dq = dmalloc(dsi_cuda_q8_bytes(n, k));
    float *dsc = dmalloc((size_t)n * 4), *dy = dmalloc((size_t)64 * n * 4);
    float *y1 = malloc((size_t)64 * n * 4), *y2 = malloc((size_t)64 * n * 4);
    struct dsi_cuda_gemm_ws ws = {
        .partial_bytes = dsi_cuda_gemm_ws_bytes(n), .n_counters = (n + 15) / 16, .n_sm = 132};
    ws.partial = dmalloc(ws.partial_bytes);
    ws.counters = dmalloc((size_t)ws.n_counters * 4);
    CHECK(dw && dx && dq && dsc && dy && y1 && y2 && ws.partial && ws.counters);
    if (!(dw && dx && dq && dsc && dy && y1 && y2 && ws.partial && ws.counters)) goto out;
    cudaMemset(ws.counters, 0, (size_t)ws.n_counters * 4);
    CHECK_EQ_INT(dsi_cuda_fill_random_bf16(dw, nk, 11, 0.05f, 0), 0);
    CHECK_EQ_INT(dsi_cuda_fill_random_bf16(dx, (size_t)64 * k, 12, 1.f, 0), 0);
    CHECK_EQ_INT(dsi_cuda_quantize_int8(dq, dsc, dw, n, k, 0), 0);
    for (int i = 0; i < 4; i++) { /* the default, then the weights-via-shared-memory variant */
        int m = ms[i % 2], var = i < 2 ? 0 : 4;
        CHECK_EQ_INT(dsi_cuda_gemm_int8_tiled_variant(dy, dx, dq, dsc, NULL, m, n, k, &ws, var, 0), 0);
        CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
        down(y1, dy, (size_t)m * n * 4);
        cudaMemset(dy, 0, (size_t)64 * n * 4);
        CHECK_EQ_INT(dsi_cuda_gemm_int8_tiled_variant(dy, dx, dq, dsc, NULL, m, n, k, &ws, var, 0), 0);
        CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
        down(y2, dy, (size_t)m * n * 4);
        CHECK(memcmp(y1, y2, (size_t)m * n * 4) == 0);
    }
out:
    cudaFree(dw), cudaFree(dx), cudaFree(dq), cudaFree(dsc), cudaFree(dy), cudaFree(ws.partial),
        cudaFree(ws.counters);
    free(y1), free(y2);
}

TEST(cuda_gemm_int8_tiled_rejects_bad_args) {
    NEED_GPU();
    int8_t *dq = dmalloc(dsi_cuda_q8_bytes(16, 64) + 16);
    uint16_t *dx = dmalloc(17 * 64 * 2 + 16);
    float *dsc = dmalloc(16 * 4), *dy = dmalloc(17 * 16 * 4);
    CHECK(dq && dx && dsc && dy);
    CHECK_EQ_INT(dsi_cuda_gemm_int8_tiled(dy, dx, dq, dsc, NULL, -1, 16, 64, NULL, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_gemm_int8_tiled(dy, dx, dq, dsc, NULL, 17, 0, 64, NULL, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_gemm_int8_tiled(dy, dx, dq, dsc, NULL, 17, 16, 0, NULL, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_gemm_int8_tiled(dy, dx, dq + 4, dsc, NULL, 17, 16, 64, NULL, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_gemm_int8_tiled(dy, (const uint16_t *)((const char *)dx + 1), dq, dsc, NULL, 17, 16,
                                          64, NULL, 0),
                 DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_gemm_int8_tiled(dy, dx, NULL, dsc, NULL, 17, 16, 64, NULL, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_gemm_int8_tiled(dy, dx, dq, NULL, NULL, 17, 16, 64, NULL, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_gemm_int8_tiled(dy, dx, dq, dsc, NULL, 0, 16, 64, NULL, 0), 0); /* m = 0: nothing */
    CHECK_EQ_INT(dsi_cuda_gemm_int8_tiled_variant(dy, dx, dq, dsc, NULL, 17, 16, 64, NULL, 8, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_gemm_int8_tiled_variant(dy, dx, dq, dsc, NULL, 17, 16, 64, NULL, -1, 0),
                 DSI_EINVAL);
    CHECK_EQ_INT(cudaGetLastError(), 0); /* nothing was launched */
    cudaFree(dq), cudaFree(dx), cudaFree(dsc), cudaFree(dy);
}

int main(void) {
    RUN(cuda_gemm_int8_matches_cpu);
    RUN(cuda_gemm_int8_rejects_bad_shapes);
    RUN(cuda_quant_group_matches_cpu);
    RUN(cuda_quant_group_rejects_bad_args);
    RUN(cuda_gemv_int8_matches_cpu);
    RUN(cuda_gemv_int8_rejects_bad_args);
    RUN(cuda_gemm_int8_tiled_matches_cpu);
    RUN(cuda_gemm_int8_tiled_split_is_deterministic);
    RUN(cuda_gemm_int8_tiled_rejects_bad_args);
    return test_summary();
}
