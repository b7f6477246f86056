/*
 * test_cuda_fused.c: decode-path kernels that replace a sequence of others,
 * against that sequence (each kernel of which test_cuda_kernels.c checks
 * against the CPU reference), on fresh random inputs:
 * - dsi_cuda_rope_kv_store == dsi_cuda_rope then dsi_cuda_kv_store, bit for bit
 *   (q, k and v rows, and the K/V cache slots);
 * - dsi_cuda_attn_decode_rope == dsi_cuda_rope_kv_store then dsi_cuda_attn_decode,
 *   bit for bit (output rows and both caches), at 1, 4 and 64 splits;
 * - dsi_cuda_gemv_int8_swiglu == dsi_cuda_gemv_int8_path then dsi_cuda_swiglu
 *   (gate|up interleaved by 8), bit for bit, in both block shapes of the
 *   tensor-core kernel, with and without bias; DSI_EINVAL and nothing launched
 *   where the tensor-core kernel would not run.
 * Without a GPU every test reports SKIP (exit 77).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "../src/backend/cpu/cpu_ops.h"
#include "kernels.h"
#include "test.h"
#define TEST_CUDA_SEED 0xD1B54A32D192ED03ull
#include "test_cuda_util.h"

static void rope_kv_case(int n_tok, int nh, int nkv, int hd) {
    const int stride = (nh + 2 * nkv) * hd, kv_dim = nkv * hd, n_slots = 4 * n_tok + 8;
    size_t rows = (size_t)n_tok * stride, cache = (size_t)n_slots * kv_dim;
    float *h_qkv = malloc(rows * 4), *a = malloc(rows * 4), *b = malloc(rows * 4);
    int32_t *pos = malloc((size_t)n_tok * 4), *slot = malloc((size_t)n_tok * 4);
    uint16_t *ka = malloc(cache * 2), *kb = malloc(cache * 2), *va = malloc(cache * 2),
             *vb = malloc(cache * 2);
    float inv_freq[128];
    for (size_t i = 0; i < rows; i++)
        h_qkv[i] = 3.f * frand();
    for (int t = 0; t < n_tok; t++) {
        pos[t] = (int)(fabsf(frand()) * 60000.f);
        slot[t] = 4 * t + (t & 3); /* distinct, scattered */
    }
    for (int i = 0; i < hd / 2; i++)
        inv_freq[i] = powf(10000.f, -2.f * (float)i / (float)hd);
    float *d_a = dmalloc(rows * 4), *d_b = dmalloc(rows * 4), *d_if = dmalloc(sizeof inv_freq);
    int32_t *d_pos = dmalloc((size_t)n_tok * 4), *d_slot = dmalloc((size_t)n_tok * 4);
    uint16_t *d_ka = dmalloc(cache * 2), *d_kb = dmalloc(cache * 2), *d_va = dmalloc(cache * 2),
             *d_vb = dmalloc(cache * 2);
    cudaMemcpy(d_a, h_qkv, rows * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_b, h_qkv, rows * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_if, inv_freq, sizeof inv_freq, cudaMemcpyHostToDevice);
    cudaMemcpy(d_pos, pos, (size_t)n_tok * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_slot, slot, (size_t)n_tok * 4, cudaMemcpyHostToDevice);

    CHECK_EQ_INT(dsi_cuda_rope(d_a, stride, n_tok, nh + nkv, hd, d_pos, d_if, 0), 0);
    CHECK_EQ_INT(
        dsi_cuda_kv_store(d_ka, d_va, d_a, stride, nh * hd, (nh + nkv) * hd, d_slot, n_tok, kv_dim, 0), 0);
    CHECK_EQ_INT(dsi_cuda_rope_kv_store(d_b, stride, n_tok, nh, nkv, hd, d_pos, d_if, d_kb, d_vb, d_slot, 0),
                 0);
    CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
    cudaMemcpy(a, d_a, rows * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(b, d_b, rows * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(ka, d_ka, cache * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(kb, d_kb, cache * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(va, d_va, cache * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(vb, d_vb, cache * 2, cudaMemcpyDeviceToHost);
    CHECK(memcmp(a, b, rows * 4) == 0);
    CHECK(memcmp(ka, kb, cache * 2) == 0);
    CHECK(memcmp(va, vb, cache * 2) == 0);
    /* the rotation really happened and reached the cache */
    CHECK(memcmp(a, h_qkv, rows * 4) != 0);
    int nonzero = 0; /* the written slots only: the others stay zero */
    for (int t = 0; t < n_tok; t++)
        for (int i = 0; i < kv_dim; i++)
            nonzero += kb[(size_t)slot[t] * kv_dim + i] != 0;
    CHECK(nonzero > n_tok * kv_dim / 2);
    CHECK_EQ_INT(
        dsi_cuda_rope_kv_store(d_b, stride - 1, n_tok, nh, nkv, hd, d_pos, d_if, d_kb, d_vb, d_slot, 0),
        DSI_EINVAL);

    cudaFree(d_a), cudaFree(d_b), cudaFree(d_if), cudaFree(d_pos), cudaFree(d_slot);
    cudaFree(d_ka), cudaFree(d_kb), cudaFree(d_va), cudaFree(d_vb);
    free(h_qkv), free(a), free(b), free(pos), free(slot), free(ka), free(kb), free(va), free(vb);
}

TEST(cuda_rope_kv_store_equals_rope_then_store) {
    NEED_GPU();
    rope_kv_case(1, 28, 4, 128); /* 7B decode */
    rope_kv_case(37, 14, 2, 64);
    rope_kv_case(5, 8, 8, 256);
}

/* Decode attention with RoPE and the KV store inside against rope_kv_store then
 * the plain decode kernel: n_seqs sequences with the contexts in ctx, the
 * older K/V random in the cache, blocks scattered; out and both caches must be
 * bit-identical, for every split count. */
static void attn_rope_case(int nh, int nkv, int hd, const int *ctx, int n_seqs) {
    const int bs = 16, stride = (nh + 2 * nkv) * hd, kv_dim = nkv * hd;
    int total_blocks = 0;
    for (int i = 0; i < n_seqs; i++)
        total_blocks += (ctx[i] + bs - 1) / bs;
    const size_t slots = (size_t)total_blocks * bs, cache = slots * kv_dim, rows = (size_t)n_seqs * stride;
    uint16_t *kc0 = malloc(cache * 2), *vc0 = malloc(cache * 2), *ka = malloc(cache * 2),
             *kb = malloc(cache * 2), *va = malloc(cache * 2), *vb = malloc(cache * 2);
    uint16_t *oa = malloc((size_t)n_seqs * nh * hd * 2), *ob = malloc((size_t)n_seqs * nh * hd * 2);
    float *qkv = malloc(rows * 4), inv_freq[128];
    int32_t *bt = malloc((size_t)total_blocks * 4), pos[8], slot[8];
    struct dsi_cuda_attn_seq seqs[8];
    for (size_t i = 0; i < cache; i++) {
        kc0[i] = dsi_f32_to_bf16(frand());
        vc0[i] = dsi_f32_to_bf16(frand());
    }
    for (size_t i = 0; i < rows; i++)
        qkv[i] = 2.f * frand();
    for (int i = 0; i < hd / 2; i++)
        inv_freq[i] = powf(10000.f, -2.f * (float)i / (float)hd);
    for (int i = 0; i < total_blocks; i++) /* a permutation: blocks scattered */
        bt[i] = (int32_t)((i * 7 + 3) % total_blocks);
    int off = 0;
    for (int i = 0; i < n_seqs; i++) {
        seqs[i] = (struct dsi_cuda_attn_seq){.q_row = i, .n_q = 1, .pos = ctx[i] - 1, .bt_off = off};
        pos[i] = ctx[i] - 1;
        slot[i] = bt[off + pos[i] / bs] * bs + pos[i] % bs;
        off += (ctx[i] + bs - 1) / bs;
    }
    float *d_qa = dmalloc(rows * 4), *d_qb = dmalloc(rows * 4), *d_if = dmalloc(sizeof inv_freq);
    uint16_t *d_ka = dmalloc(cache * 2), *d_kb = dmalloc(cache * 2), *d_va = dmalloc(cache * 2),
             *d_vb = dmalloc(cache * 2), *d_oa = dmalloc((size_t)n_seqs * nh * hd * 2),
             *d_ob = dmalloc((size_t)n_seqs * nh * hd * 2);
    int32_t *d_bt = dmalloc((size_t)total_blocks * 4), *d_pos = dmalloc(sizeof pos),
            *d_slot = dmalloc(sizeof slot);
    struct dsi_cuda_attn_seq *d_seqs = dmalloc(sizeof seqs);
    cudaMemcpy(d_if, inv_freq, sizeof inv_freq, cudaMemcpyHostToDevice);
    cudaMemcpy(d_bt, bt, (size_t)total_blocks * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_pos, pos, sizeof pos, cudaMemcpyHostToDevice);
    cudaMemcpy(d_slot, slot, sizeof slot, cudaMemcpyHostToDevice);
    cudaMemcpy(d_seqs, seqs, sizeof seqs, cudaMemcpyHostToDevice);
    int max_ctx = 0;
    for (int i = 0; i < n_seqs; i++)
        if (ctx[i] > max_ctx) max_ctx = ctx[i];
    const int splits[] = {1, 4, 64};
    for (int si = 0; si < 3; si++) {
        size_t wb = dsi_cuda_attn_work_bytes(n_seqs, nh, hd, splits[si]);
        float *d_work = dmalloc(wb);
        cudaMemcpy(d_qa, qkv, rows * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(d_qb, qkv, rows * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(d_ka, kc0, cache * 2, cudaMemcpyHostToDevice);
        cudaMemcpy(d_kb, kc0, cache * 2, cudaMemcpyHostToDevice);
        cudaMemcpy(d_va, vc0, cache * 2, cudaMemcpyHostToDevice);
        cudaMemcpy(d_vb, vc0, cache * 2, cudaMemcpyHostToDevice);
        struct dsi_cuda_attn_args a = {.q = d_qa,
                                       .q_stride = stride,
                                       .k_cache = d_ka,
                                       .v_cache = d_va,
                                       .out = d_oa,
                                       .seqs = d_seqs,
                                       .n_seqs = n_seqs,
                                       .block_tables = d_bt,
                                       .block_size = bs,
                                       .n_heads = nh,
                                       .n_kv_heads = nkv,
                                       .head_dim = hd,
                                       .scale = 1.f / sqrtf((float)hd),
                                       .max_ctx = max_ctx,
                                       .max_n_q = 1,
                                       .n_splits = splits[si],
                                       .work = d_work,
                                       .work_bytes = wb};
        CHECK_EQ_INT(
            dsi_cuda_rope_kv_store(d_qa, stride, n_seqs, nh, nkv, hd, d_pos, d_if, d_ka, d_va, d_slot, 0), 0);
        CHECK_EQ_INT(dsi_cuda_attn_decode(&a, 0), 0);
        struct dsi_cuda_attn_args b = a;
        b.q = d_qb, b.k_cache = d_kb, b.v_cache = d_vb, b.out = d_ob;
        CHECK_EQ_INT(dsi_cuda_attn_decode_rope(&b, d_if, 0), 0);
        CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
        cudaMemcpy(oa, d_oa, (size_t)n_seqs * nh * hd * 2, cudaMemcpyDeviceToHost);
        cudaMemcpy(ob, d_ob, (size_t)n_seqs * nh * hd * 2, cudaMemcpyDeviceToHost);
        cudaMemcpy(ka, d_ka, cache * 2, cudaMemcpyDeviceToHost);
        cudaMemcpy(kb, d_kb, cache * 2, cudaMemcpyDeviceToHost);
        cudaMemcpy(va, d_va, cache * 2, cudaMemcpyDeviceToHost);
        cudaMemcpy(vb, d_vb, cache * 2, cudaMemcpyDeviceToHost);
        CHECK(memcmp(oa, ob, (size_t)n_seqs * nh * hd * 2) == 0);
        CHECK(memcmp(ka, kb, cache * 2) == 0);
        CHECK(memcmp(va, vb, cache * 2) == 0);
        CHECK(memcmp(ka, kc0, cache * 2) != 0); /* the new K did land in the cache */
        int nonzero = 0;
        for (int i = 0; i < n_seqs * nh * hd; i++)
            nonzero += oa[i] != 0;
        CHECK(nonzero > n_seqs * nh * hd / 2);
        cudaFree(d_work);
    }
    struct dsi_cuda_attn_args bad = {
        .q_stride = stride - 1, .n_heads = nh, .n_kv_heads = nkv, .head_dim = hd};
    CHECK_EQ_INT(dsi_cuda_attn_decode_rope(&bad, d_if, 0), DSI_EINVAL);
    cudaFree(d_qa), cudaFree(d_qb), cudaFree(d_if), cudaFree(d_ka), cudaFree(d_kb), cudaFree(d_va);
    cudaFree(d_vb), cudaFree(d_oa), cudaFree(d_ob), cudaFree(d_bt), cudaFree(d_pos), cudaFree(d_slot);
    cudaFree(d_seqs);
    free(kc0), free(vc0), free(ka), free(kb), free(va), free(vb), free(oa), free(ob), free(qkv), free(bt);
}

TEST(cuda_attn_decode_rope_equals_rope_then_attn) {
    NEED_GPU();
    static const int c3[] = {1, 37, 300}, c1[] = {2048}, c2[] = {17, 129};
    attn_rope_case(28, 4, 128, c3, 3); /* 7B: GQA 7 */
    attn_rope_case(28, 4, 128, c1, 1); /* batch 1 at 2k */
    attn_rope_case(8, 8, 64, c2, 2);   /* MHA, head_dim 64 */
}

/* A random (n, k) gate|up matrix (rows interleaved by 8: the order does not
 * matter to the kernels), quantized on the GPU; one row of x. */
static void gemv_swiglu_case(int n, int k, int with_bias, int path) {
    size_t nk = (size_t)n * k;
    uint16_t *w = malloc(nk * 2), *x = malloc((size_t)k * 2), *a = malloc((size_t)n / 2 * 2),
             *b = malloc((size_t)n / 2 * 2);
    float *bias = malloc((size_t)n * 4);
    for (size_t i = 0; i < nk; i++)
        w[i] = dsi_f32_to_bf16(frand() * 0.05f);
    for (int i = 0; i < k; i++)
        x[i] = dsi_f32_to_bf16(2.f * frand());
    for (int i = 0; i < n; i++)
        bias[i] = frand();
    uint16_t *dw = dmalloc(nk * 2), *dx = dmalloc((size_t)k * 2), *da = dmalloc((size_t)n),
             *db = dmalloc((size_t)n);
    int8_t *dq = dmalloc(dsi_cuda_q8_bytes(n, k));
    float *dsc = dmalloc((size_t)n * 4), *dbias = dmalloc((size_t)n * 4), *dy = dmalloc((size_t)n * 4);
    up(dw, w, nk * 2), up(dx, x, (size_t)k * 2), up(dbias, bias, (size_t)n * 4);
    CHECK_EQ_INT(dsi_cuda_quantize_int8(dq, dsc, dw, n, k, 0), 0);
    const float *bp = with_bias ? dbias : NULL;
    CHECK_EQ_INT(dsi_cuda_gemv_int8_path(dy, dx, dq, dsc, bp, 1, n, k, path, 0), 0);
    CHECK_EQ_INT(dsi_cuda_swiglu(da, dy, 1, n / 2, DSI_GLU_IL8, NULL, NULL, 0), 0);
    CHECK_EQ_INT(dsi_cuda_gemv_int8_swiglu(db, dx, dq, dsc, bp, n, k, path, 0), 0);
    CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
    down(a, da, (size_t)n), down(b, db, (size_t)n);
    int diff = 0;
    for (int i = 0; i < n / 2; i++)
        diff += a[i] != b[i];
    CHECK_EQ_INT(diff, 0);
    cudaFree(dw), cudaFree(dx), cudaFree(da), cudaFree(db), cudaFree(dq), cudaFree(dsc), cudaFree(dbias),
        cudaFree(dy);
    free(w), free(x), free(a), free(b), free(bias);
}

TEST(cuda_gemv_swiglu_equals_gemv_then_swiglu) {
    NEED_GPU();
    gemv_swiglu_case(2000, 1000, 0, 2);  /* 125 row tiles: 8 warps x 16 tiles */
    gemv_swiglu_case(2000, 3584, 1, 2);  /* with bias */
    gemv_swiglu_case(37888, 3584, 0, 0); /* the 7B shape: 8 warps x 4 tiles, default path */
    int8_t *dq = dmalloc(dsi_cuda_q8_bytes(2000, 1000));
    uint16_t *dx = dmalloc(2000), *da = dmalloc(2000);
    float *dsc = dmalloc(2000 * 4);
    CHECK_EQ_INT(dsi_cuda_gemv_int8_swiglu(da, dx, dq, dsc, NULL, 2000, 1000, 0, 0),
                 DSI_EINVAL); /* few tiles */
    CHECK_EQ_INT(dsi_cuda_gemv_int8_swiglu(da, dx, dq, dsc, NULL, 2000, 1000, 1, 0),
                 DSI_EINVAL); /* CUDA cores */
    CHECK_EQ_INT(dsi_cuda_gemv_int8_swiglu(da, dx, dq, dsc, NULL, 1992, 1000, 2, 0), DSI_EINVAL); /* n % 16 */
    CHECK_EQ_INT(dsi_cuda_gemv_int8_swiglu(da, dx, dq, dsc, NULL, 2000, 1001, 2, 0), DSI_EINVAL); /* odd k */
    CHECK_EQ_INT(cudaGetLastError(), 0); /* nothing was launched */
    cudaFree(dq), cudaFree(dx), cudaFree(da), cudaFree(dsc);
}

int main(void) {
    RUN(cuda_rope_kv_store_equals_rope_then_store);
    RUN(cuda_attn_decode_rope_equals_rope_then_attn);
    RUN(cuda_gemv_swiglu_equals_gemv_then_swiglu);
    return test_summary();
}
