/*
 * test_cuda_tp_kernels.c: the kernels tensor parallel on CUDA adds, on fresh
 * random inputs:
 * - dsi_cuda_tp_logits_unpack, which turns the all-gathered lm_head slices of
 *   a step into (rows, vocab) logits, against the layout written out on the
 *   host: rank r's (rows, n_r) slice at chunk r of rows * pad floats, n_r =
 *   min(vocab, (r+1) pad) - r pad; even splits and a short last slice, 1 to 64
 *   rows;
 * - dsi_cuda_int8_row_scales and dsi_cuda_quantize_int8_scaled: the scales
 *   are dsi_cuda_quantize_int8's, bit for bit, and a column slice quantized
 *   with its whole rows' scales holds exactly the whole matrix's values in
 *   those columns (what makes a TP shard of o/down equal to one GPU's);
 * - dsi_cuda_ar_add_rmsnorm (the fused one-shot all-reduce) on two GPUs of
 *   this process, 18 calls of 1 to 4 rows of 200, 3584 and 8192 values
 *   queued back to back before one synchronization: x exactly x + (d0 + d1), the
 *   output within bf16 rounding of RMSNorm in double, both GPUs bit-identical
 *   (skipped with fewer than two GPUs).
 * Without a GPU: SKIP (exit 77).
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "kernels.h"
#include "test.h"
#define TEST_CUDA_SEED 0x2545F4914F6CDD1Dull
#include "test_cuda_util.h"

static void unpack_case(int ranks, int rows, int vocab) {
    int pad = (vocab + ranks - 1) / ranks;
    size_t n_all = (size_t)ranks * rows * pad, n_out = (size_t)rows * vocab;
    float *all = malloc(n_all * 4), *want = malloc(n_out * 4), *got = malloc(n_out * 4);
    float *d_all = dmalloc(n_all * 4), *d_out = dmalloc(n_out * 4);
    CHECK(all && want && got && d_all && d_out);
    if (!all || !want || !got || !d_all || !d_out) goto out;
    for (size_t i = 0; i < n_all; i++)
        all[i] = frand();
    /* what each rank computed: logits[row][r*pad + j] = its slice (row, j) */
    for (int r = 0; r < ranks; r++) {
        int v0 = r * pad, n_r = (v0 + pad < vocab ? v0 + pad : vocab) - v0;
        for (int row = 0; row < rows; row++)
            for (int j = 0; j < n_r; j++)
                want[(size_t)row * vocab + v0 + j] = all[(size_t)r * rows * pad + (size_t)row * n_r + j];
    }
    CHECK_EQ_INT(cudaMemcpy(d_all, all, n_all * 4, cudaMemcpyHostToDevice), cudaSuccess);
    CHECK_EQ_INT(cudaMemset(d_out, 0xff, n_out * 4), cudaSuccess); /* NaNs where nothing is written */
    CHECK_EQ_INT(dsi_cuda_tp_logits_unpack(d_out, d_all, rows, vocab, pad, 0), 0);
    CHECK_EQ_INT(cudaMemcpy(got, d_out, n_out * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    size_t bad = 0;
    for (size_t i = 0; i < n_out; i++)
        bad += memcmp(&got[i], &want[i], 4) != 0;
    if (bad)
        fprintf(stderr, "  ranks %d rows %d vocab %d: %zu of %zu values differ\n", ranks, rows, vocab, bad,
                n_out);
    CHECK_EQ_INT(bad, 0);
out:
    free(all);
    free(want);
    free(got);
    cudaFree(d_all);
    cudaFree(d_out);
}

TEST(cuda_tp_logits_unpack_matches_layout) {
    NEED_GPU();
    unpack_case(2, 1, 152064);  /* Qwen2-7B vocab, batch 1 */
    unpack_case(2, 7, 1000);    /* even split, several rows */
    unpack_case(4, 3, 1001);    /* last rank short: pad 251, n_3 = 248 */
    unpack_case(3, 5, 10);      /* pad 4: 4, 4, 2 */
    unpack_case(8, 64, 102400); /* 67B vocab over 8 ranks, 64 streams */
    unpack_case(1, 2, 77);      /* one rank: a plain copy */
}

TEST(cuda_tp_logits_unpack_rejects_bad_args) {
    NEED_GPU();
    float *d = dmalloc(64);
    CHECK(d != NULL);
    CHECK_EQ_INT(dsi_cuda_tp_logits_unpack(NULL, d, 1, 4, 2, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_tp_logits_unpack(d, NULL, 1, 4, 2, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_tp_logits_unpack(d, d, -1, 4, 2, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_tp_logits_unpack(d, d, 1, 0, 2, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_tp_logits_unpack(d, d, 1, 4, 0, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_tp_logits_unpack(d, d, 0, 4, 2, 0), 0); /* nothing to do */
    cudaFree(d);
}

static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* The integer values of a tiled int8 matrix, row-major (n, k), via the dequant kernel without scales. */
static void int_values(float *out, const int8_t *d_q, int n, int k) {
    uint16_t *d = dmalloc((size_t)n * k * 2), *h = malloc((size_t)n * k * 2);
    CHECK(d && h);
    if (d && h) {
        CHECK_EQ_INT(dsi_cuda_dequant_int8(d, d_q, NULL, n, k, 0), 0);
        CHECK_EQ_INT(cudaMemcpy(h, d, (size_t)n * k * 2, cudaMemcpyDeviceToHost), cudaSuccess);
        for (size_t i = 0; i < (size_t)n * k; i++) {
            uint32_t u = (uint32_t)h[i] << 16;
            memcpy(&out[i], &u, 4);
        }
    }
    cudaFree(d);
    free(h);
}

static void scaled_case(int n, int k, int c0, int kc) {
    size_t nk = (size_t)n * k, nc = (size_t)n * kc;
    uint16_t *w = malloc(nk * 2), *ws = malloc(nc * 2);
    float *s_full = malloc((size_t)n * 4), *s_only = malloc((size_t)n * 4);
    float *v_full = malloc(nk * 4), *v_slice = malloc(nk * 4); /* whole matrix, then the slice */
    uint16_t *d_w = dmalloc(nk * 2), *d_ws = dmalloc(nc * 2);
    float *d_s = dmalloc((size_t)n * 4), *d_s2 = dmalloc((size_t)n * 4);
    int8_t *d_q = dmalloc(dsi_cuda_q8_bytes(n, k)), *d_q2 = dmalloc(dsi_cuda_q8_bytes(n, k)),
           *d_qs = dmalloc(dsi_cuda_q8_bytes(n, kc));
    CHECK(w && ws && s_full && s_only && v_full && v_slice && d_w && d_ws && d_s && d_s2 && d_q && d_q2 &&
          d_qs);
    if (!w || !ws || !s_full || !s_only || !v_full || !v_slice || !d_w || !d_ws || !d_s || !d_s2 || !d_q ||
        !d_q2 || !d_qs)
        goto out;
    for (int r = 0; r < n; r++) /* rows of different magnitudes, the row maximum often outside the slice */
        for (int j = 0; j < k; j++)
            w[(size_t)r * k + j] = to_bf16(frand() * (float)(1 + r % 7) * (j % 97 == 5 ? 4.f : 1.f));
    for (int r = 0; r < n; r++)
        memcpy(ws + (size_t)r * kc, w + (size_t)r * k + c0, (size_t)kc * 2);
    CHECK_EQ_INT(cudaMemcpy(d_w, w, nk * 2, cudaMemcpyHostToDevice), cudaSuccess);
    CHECK_EQ_INT(cudaMemcpy(d_ws, ws, nc * 2, cudaMemcpyHostToDevice), cudaSuccess);
    CHECK_EQ_INT(dsi_cuda_quantize_int8(d_q, d_s, d_w, n, k, 0), 0);
    CHECK_EQ_INT(dsi_cuda_int8_row_scales(d_s2, d_w, n, k, 0), 0);
    CHECK_EQ_INT(cudaMemcpy(s_full, d_s, (size_t)n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    CHECK_EQ_INT(cudaMemcpy(s_only, d_s2, (size_t)n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    CHECK(memcmp(s_full, s_only, (size_t)n * 4) == 0);
    /* the whole matrix with given scales: the same bytes as computing them */
    CHECK_EQ_INT(dsi_cuda_quantize_int8_scaled(d_q2, d_s, d_w, n, k, 0), 0);
    int_values(v_full, d_q, n, k);
    int_values(v_slice, d_q2, n, k);
    CHECK(memcmp(v_full, v_slice, nk * 4) == 0);
    /* the column slice with the whole rows' scales: the whole matrix's values in those columns */
    CHECK_EQ_INT(dsi_cuda_quantize_int8_scaled(d_qs, d_s, d_ws, n, kc, 0), 0);
    int_values(v_slice, d_qs, n, kc);
    size_t bad = 0;
    for (int r = 0; r < n; r++)
        for (int j = 0; j < kc; j++)
            bad += v_slice[(size_t)r * kc + j] != v_full[(size_t)r * k + c0 + j];
    if (bad) fprintf(stderr, "  n %d k %d slice %d+%d: %zu values differ\n", n, k, c0, kc, bad);
    CHECK_EQ_INT(bad, 0);
out:
    free(w);
    free(ws);
    free(s_full);
    free(s_only);
    free(v_full);
    free(v_slice);
    cudaFree(d_w);
    cudaFree(d_ws);
    cudaFree(d_s);
    cudaFree(d_s2);
    cudaFree(d_q);
    cudaFree(d_q2);
    cudaFree(d_qs);
}

TEST(cuda_int8_slice_with_row_scales_matches_whole) {
    NEED_GPU();
    scaled_case(40, 300, 96, 128);  /* o of a 2-way split, odd sizes: padding tiles */
    scaled_case(64, 512, 256, 256); /* the second half */
    scaled_case(17, 1000, 0, 250);  /* first of 4 */
    CHECK_EQ_INT(dsi_cuda_int8_row_scales(NULL, NULL, 1, 1, 0), DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_quantize_int8_scaled(NULL, NULL, NULL, 1, 1, 0), DSI_EINVAL);
}

/* Both GPUs' regions mapped into this process with peer access stand in for
 * the ranks' IPC mappings; the two launches wait for each other like ranks. */
static float bf2f_host(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

TEST(cuda_ar_add_rmsnorm_two_gpus_match_reference) {
    NEED_GPU();
    int n_dev = 0, can01 = 0, can10 = 0;
    cudaGetDeviceCount(&n_dev);
    if (n_dev < 2) SKIP("needs two GPUs");
    cudaDeviceCanAccessPeer(&can01, 0, 1);
    cudaDeviceCanAccessPeer(&can10, 1, 0);
    if (!can01 || !can10) SKIP("the two GPUs have no peer access");
    /* 18 calls of varying rows and widths (200: a short last chunk), all queued
     * on both GPUs before one synchronization, as a CUDA graph replays them:
     * the epochs, both parities and the reuse of the slots are exercised */
    enum { NCALL = 18 };
    const int rows_seq[] = {1, 3, 1, 4, 2, 1, 1, 4}, dims[] = {3584, 8192, 200};
    size_t off[NCALL + 1] = {0};
    for (int k = 0; k < NCALL; k++)
        off[k + 1] = off[k] + (size_t)rows_seq[k % 8] * dims[k % 3];
    const size_t tot = off[NCALL];
    void *region[2], *local[2];
    float *x[2], *delta[2], *w[2];
    uint16_t *out[2];
    cudaStream_t st[2];
    for (int d = 0; d < 2; d++) {
        cudaSetDevice(d);
        cudaError_t e = cudaDeviceEnablePeerAccess(1 - d, 0);
        if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();
        region[d] = dmalloc(dsi_cuda_ar_region_bytes());
        local[d] = dmalloc(dsi_cuda_ar_local_bytes());
        x[d] = dmalloc(tot * 4);
        delta[d] = dmalloc(tot * 4);
        w[d] = dmalloc((size_t)NCALL * 8192 * 4);
        out[d] = dmalloc(tot * 2);
        CHECK(region[d] && local[d] && x[d] && delta[d] && w[d] && out[d]);
        CHECK_EQ_INT(cudaStreamCreate(&st[d]), cudaSuccess);
    }
    float *hx = malloc(tot * 4), *hd0 = malloc(tot * 4), *hd1 = malloc(tot * 4);
    float *hw = malloc((size_t)NCALL * 8192 * 4), *gx[2] = {malloc(tot * 4), malloc(tot * 4)};
    uint16_t *go[2] = {malloc(tot * 2), malloc(tot * 2)};
    bool ok = hx && hd0 && hd1 && hw && gx[0] && gx[1] && go[0] && go[1];
    CHECK(ok);
    for (size_t i = 0; ok && i < tot; i++) {
        hx[i] = 4.f * frand();
        hd0[i] = frand();
        hd1[i] = frand();
    }
    for (size_t i = 0; ok && i < (size_t)NCALL * 8192; i++)
        hw[i] = 1.f + 0.5f * frand();
    for (int d = 0; ok && d < 2; d++) {
        cudaSetDevice(d);
        cudaMemcpy(x[d], hx, tot * 4, cudaMemcpyHostToDevice); /* replicated residual */
        cudaMemcpy(delta[d], d ? hd1 : hd0, tot * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(w[d], hw, (size_t)NCALL * 8192 * 4, cudaMemcpyHostToDevice);
    }
    for (int k = 0; ok && k < NCALL; k++)
        for (int d = 0; d < 2; d++) {
            struct dsi_cuda_ar ar = {.peer = {region[0], region[1]}, .local = local[d], .rank = d, .size = 2};
            cudaSetDevice(d);
            CHECK_EQ_INT(dsi_cuda_ar_add_rmsnorm(&ar, x[d] + off[k], delta[d] + off[k],
                                                 w[d] + (size_t)k * 8192, out[d] + off[k], rows_seq[k % 8],
                                                 dims[k % 3], 1e-6f, st[d]),
                         0);
        }
    for (int d = 0; ok && d < 2; d++) {
        cudaSetDevice(d);
        CHECK_EQ_INT(cudaStreamSynchronize(st[d]), cudaSuccess);
        cudaMemcpy(gx[d], x[d], tot * 4, cudaMemcpyDeviceToHost);
        cudaMemcpy(go[d], out[d], tot * 2, cudaMemcpyDeviceToHost);
    }
    size_t x_bad = 0, o_bad = 0, rank_diff = 0;
    for (int k = 0; ok && k < NCALL; k++) {
        int rows = rows_seq[k % 8], dim = dims[k % 3];
        size_t o0 = off[k], ne = (size_t)rows * dim;
        const float *wk = hw + (size_t)k * 8192;
        rank_diff +=
            memcmp(gx[0] + o0, gx[1] + o0, ne * 4) != 0 || memcmp(go[0] + o0, go[1] + o0, ne * 2) != 0;
        for (int r = 0; r < rows; r++) {
            double ss = 0;
            for (int i = 0; i < dim; i++) {
                size_t j = o0 + (size_t)r * dim + i;
                float v = hx[j] + ((0.f + hd0[j]) + hd1[j]); /* rank order, fp32: exact */
                x_bad += memcmp(&v, &gx[0][j], 4) != 0;
                ss += (double)v * v;
            }
            double inv = 1.0 / sqrt(ss / dim + 1e-6);
            for (int i = 0; i < dim; i++) {
                size_t j = o0 + (size_t)r * dim + i;
                double ref = (double)gx[0][j] * inv * wk[i], got = bf2f_host(go[0][j]);
                o_bad += fabs(got - ref) > 1e-2 * fabs(ref) + 1e-6; /* bf16 rounding: 2^-8 */
            }
        }
    }
    if (x_bad || o_bad || rank_diff)
        fprintf(stderr, "  x differs %zu, out differs %zu, ranks disagree in %zu calls\n", x_bad, o_bad,
                rank_diff);
    CHECK_EQ_INT(x_bad, 0);
    CHECK_EQ_INT(o_bad, 0);
    CHECK_EQ_INT(rank_diff, 0);
    /* arguments the kernel cannot take */
    struct dsi_cuda_ar ar = {.peer = {region[0], region[1]}, .local = local[0], .rank = 0, .size = 2};
    cudaSetDevice(0);
    CHECK_EQ_INT(dsi_cuda_ar_add_rmsnorm(&ar, x[0], delta[0], w[0], out[0], 0, 64, 1e-6f, 0), DSI_EINVAL);
    CHECK_EQ_INT(
        dsi_cuda_ar_add_rmsnorm(&ar, x[0], delta[0], w[0], out[0], DSI_CUDA_AR_MAX_ROWS + 1, 64, 1e-6f, 0),
        DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_ar_add_rmsnorm(&ar, x[0], delta[0], w[0], out[0], 1, 64 * 256 + 4, 1e-6f, 0),
                 DSI_EINVAL);
    CHECK_EQ_INT(dsi_cuda_ar_add_rmsnorm(&ar, x[0], delta[0], w[0], out[0], 8, 8192, 1e-6f, 0), DSI_EINVAL);
    ar.peer[1] = NULL;
    CHECK_EQ_INT(dsi_cuda_ar_add_rmsnorm(&ar, x[0], delta[0], w[0], out[0], 1, 64, 1e-6f, 0), DSI_EINVAL);
    CHECK(!dsi_cuda_ar_fits(5, 8192) && dsi_cuda_ar_fits(4, 8192) && dsi_cuda_ar_fits(9, 3584) &&
          dsi_cuda_ar_fits(16, 66));
    free(hx);
    free(hd0);
    free(hd1);
    free(hw);
    for (int d = 0; d < 2; d++) {
        free(gx[d]);
        free(go[d]);
        cudaSetDevice(d);
        cudaFree(region[d]);
        cudaFree(local[d]);
        cudaFree(x[d]);
        cudaFree(delta[d]);
        cudaFree(w[d]);
        cudaFree(out[d]);
        cudaStreamDestroy(st[d]);
    }
    cudaSetDevice(0);
}

int main(void) {
    RUN(cuda_tp_logits_unpack_matches_layout);
    RUN(cuda_tp_logits_unpack_rejects_bad_args);
    RUN(cuda_int8_slice_with_row_scales_matches_whole);
    RUN(cuda_ar_add_rmsnorm_two_gpus_match_reference);
    return test_summary();
}
