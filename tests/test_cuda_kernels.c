/*
 * test_cuda_kernels.c: every CUDA kernel against the CPU reference ops
 * (cpu_ops.h) on fresh random inputs, with a per-op tolerance.
 *
 * Tolerances, and where they come from:
 * - embed, kv_store, gather: exact (bit copies / same rounding rule).
 * - rmsnorm, swiglu: output is bf16, so 1 bf16 ulp (2^-8 relative) + 1e-6.
 * - rope: fp32 sincosf vs libm sinf/cosf at positions < 70000: 2e-4 abs.
 * - attention: bf16 K/V in both; output rounded to bf16: 1e-2 abs on O(1) values.
 * The INT8 matmuls (GEMM, GEMV, tiled, group-wise quantization) are in
 * test_cuda_matmul.c.
 * - sampling: greedy = argmax exactly; top-k=1 = argmax; draws stay inside top-k
 *   and below n_ids (a head's padding rows).
 * Without a GPU every test reports SKIP (exit 77), the host-only argument
 * checks too, so ctest never counts a GPU-less run as passed.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "../src/backend/cpu/cpu_ops.h"
#include "cuda_backend.h"
#include "dsinfer/rope.h"
#include "test.h"
#include "test_cuda_util.h"

TEST(cuda_embed_matches_table) {
    NEED_GPU();
    int V = 100, D = 72, n = 5;
    uint16_t *tab = malloc((size_t)V * D * 2);
    for (int i = 0; i < V * D; i++)
        tab[i] = dsi_f32_to_bf16(frand());
    int32_t ids[5] = {0, 99, 42, -1, 100};
    uint16_t *dt = dmalloc((size_t)V * D * 2);
    int32_t *di = dmalloc(sizeof ids);
    float *dout = dmalloc((size_t)n * D * 4), *out = malloc((size_t)n * D * 4);
    up(dt, tab, (size_t)V * D * 2);
    up(di, ids, sizeof ids);
    CHECK_EQ_INT(dsi_cuda_embed(dout, dt, di, n, D, V, 0), 0);
    down(out, dout, (size_t)n * D * 4);
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < D; i++)
            CHECK(out[t * D + i] == bf(tab[ids[t] * D + i]));
    for (int i = 0; i < D; i++)
        CHECK(out[3 * D + i] == 0.f && out[4 * D + i] == 0.f); /* out of range ids */
    CHECK_EQ_INT(dsi_cuda_embed(dout, dt, di, -1, D, V, 0), DSI_EINVAL);
    cudaFree(dt), cudaFree(di), cudaFree(dout);
    free(tab), free(out);
}

/* rows x D through dsi_cuda_add_rmsnorm (with or without the residual add)
 * against x += delta then the CPU rmsnorm; x must come back exact. */
static void norm_case(int rows, int D, int with_delta) {
    size_t n = (size_t)rows * D;
    float *x = malloc(n * 4), *dl = malloc(n * 4), *w = malloc(D * 4), *ref = malloc(n * 4),
          *xo = malloc(n * 4);
    uint16_t *o = malloc(n * 2);
    for (size_t i = 0; i < n; i++)
        x[i] = 3.f * frand(), dl[i] = frand();
    for (int i = 0; i < D; i++)
        w[i] = 1.f + 0.5f * frand();
    float *dx = dmalloc(n * 4), *dd = dmalloc(n * 4), *dw = dmalloc(D * 4);
    uint16_t *dout = dmalloc(n * 2);
    up(dx, x, n * 4), up(dd, dl, n * 4), up(dw, w, D * 4);
    CHECK_EQ_INT(dsi_cuda_add_rmsnorm(dx, with_delta ? dd : NULL, dw, dout, rows, D, 1e-6f, 0), 0);
    down(o, dout, n * 2), down(xo, dx, n * 4);
    double worst = 0;
    for (int r = 0; r < rows; r++) {
        if (with_delta)
            for (int i = 0; i < D; i++)
                x[r * D + i] += dl[r * D + i];
        dsi_rmsnorm(ref + r * D, x + r * D, w, D, 1e-6f);
    }
    int x_exact = 1;
    for (size_t i = 0; i < n; i++) {
        x_exact &= xo[i] == x[i];
        double e = fabs(bf(o[i]) - ref[i]) / (fabs(ref[i]) * 0.0079 + 1e-6);
        if (e > worst) worst = e;
    }
    CHECK(x_exact);
    CHECK(worst <= 1.0);
    if (!x_exact || worst > 1.0)
        fprintf(stderr, "  norm rows %d dim %d delta %d: worst %.3f\n", rows, D, with_delta, worst);
    cudaFree(dx), cudaFree(dd), cudaFree(dw), cudaFree(dout);
    free(x), free(dl), free(w), free(ref), free(xo), free(o);
}

/* dsi_cuda_add_rmsnorm_epi (delta's scale and bias applied inside) against
 * dsi_cuda_scale_bias on delta then dsi_cuda_add_rmsnorm: x and the output
 * bit for bit. */
static void norm_epi_case(int rows, int D) {
    size_t n = (size_t)rows * D;
    float *x = malloc(n * 4), *dl = malloc(n * 4), *w = malloc(D * 4), *sc = malloc(D * 4),
          *bi = malloc(D * 4);
    float *xa = malloc(n * 4), *xb = malloc(n * 4);
    uint16_t *oa = malloc(n * 2), *ob = malloc(n * 2);
    for (size_t i = 0; i < n; i++)
        x[i] = 3.f * frand(), dl[i] = 40.f * frand();
    for (int i = 0; i < D; i++)
        w[i] = 1.f + 0.5f * frand(), sc[i] = 0.02f * fabsf(frand()) + 1e-3f, bi[i] = 0.1f * frand();
    float *dx = dmalloc(n * 4), *dd = dmalloc(n * 4), *dw = dmalloc(D * 4), *dsc = dmalloc(D * 4),
          *dbi = dmalloc(D * 4);
    uint16_t *dout = dmalloc(n * 2);
    up(dx, x, n * 4), up(dd, dl, n * 4), up(dw, w, D * 4), up(dsc, sc, D * 4), up(dbi, bi, D * 4);
    CHECK_EQ_INT(dsi_cuda_add_rmsnorm_epi(dx, dd, dsc, dbi, dw, dout, rows, D, 1e-6f, 0), 0);
    down(oa, dout, n * 2), down(xa, dx, n * 4);
    up(dx, x, n * 4);
    CHECK_EQ_INT(dsi_cuda_scale_bias(dd, dsc, dbi, rows, D, 0), 0);
    CHECK_EQ_INT(dsi_cuda_add_rmsnorm(dx, dd, dw, dout, rows, D, 1e-6f, 0), 0);
    down(ob, dout, n * 2), down(xb, dx, n * 4);
    CHECK(memcmp(xa, xb, n * 4) == 0);
    CHECK(memcmp(oa, ob, n * 2) == 0);
    cudaFree(dx), cudaFree(dd), cudaFree(dw), cudaFree(dsc), cudaFree(dbi), cudaFree(dout);
    free(x), free(dl), free(w), free(sc), free(bi), free(xa), free(xb), free(oa), free(ob);
}

/* 3584: the 7B decode shape (float4 kernel, 224 threads); 8192 and 16384 its
 * largest block; 4: one thread; 1002 (not a multiple of 4) and 16388 (over
 * 1024 threads): the general loop. */
TEST(cuda_add_rmsnorm_matches_cpu) {
    NEED_GPU();
    const int dims[] = {3584, 8192, 16384, 4, 1000, 1002, 16388};
    for (int i = 0; i < (int)(sizeof dims / sizeof dims[0]); i++) {
        norm_case(3, dims[i], 1);
        norm_case(2, dims[i], 0);
    }
    norm_epi_case(3, 3584); /* float4 kernel */
    norm_epi_case(2, 1002); /* general loop */
    float *d = dmalloc(64);
    CHECK_EQ_INT(dsi_cuda_add_rmsnorm(d, NULL, d, (uint16_t *)d, 3, 0, 1e-6f, 0), DSI_EINVAL);
    cudaFree(d);
}

/* rows x inter through dsi_cuda_swiglu with gate|up stacked (il8 0) or
 * interleaved by 8 (DSI_GLU_IL8) against the CPU swiglu of the same values;
 * with_epi: per-column scale and bias applied inside, which must give the
 * bits of dsi_cuda_scale_bias followed by the plain swiglu. */
static void swiglu_case(int rows, int I, int il8, int with_epi) {
    size_t n = (size_t)rows * 2 * I;
    float *gu = malloc(n * 4), *g = malloc((size_t)I * 4), *u = malloc((size_t)I * 4),
          *ref = malloc((size_t)I * 4), *sc = malloc((size_t)2 * I * 4), *bi = malloc((size_t)2 * I * 4);
    uint16_t *o = malloc((size_t)rows * I * 2), *o2 = malloc((size_t)rows * I * 2);
    for (size_t i = 0; i < n; i++)
        gu[i] = 6.f * frand();
    for (int i = 0; i < 2 * I; i++)
        sc[i] = 0.01f + 0.05f * fabsf(frand()), bi[i] = 0.5f * frand();
    float *dgu = dmalloc(n * 4), *dsc = dmalloc((size_t)2 * I * 4), *dbi = dmalloc((size_t)2 * I * 4);
    uint16_t *dout = dmalloc((size_t)rows * I * 2);
    up(dgu, gu, n * 4), up(dsc, sc, (size_t)2 * I * 4), up(dbi, bi, (size_t)2 * I * 4);
    CHECK_EQ_INT(dsi_cuda_swiglu(dout, dgu, rows, I, il8, with_epi ? dsc : NULL, with_epi ? dbi : NULL, 0),
                 0);
    down(o, dout, (size_t)rows * I * 2);
    if (with_epi) { /* the same as the separate epilogue pass, bit for bit */
        CHECK_EQ_INT(dsi_cuda_scale_bias(dgu, dsc, dbi, rows, 2 * I, 0), 0);
        CHECK_EQ_INT(dsi_cuda_swiglu(dout, dgu, rows, I, il8, NULL, NULL, 0), 0);
        down(o2, dout, (size_t)rows * I * 2);
        CHECK(memcmp(o, o2, (size_t)rows * I * 2) == 0);
    }
    int bad = 0;
    for (int r = 0; r < rows; r++) {
        float *row = gu + (size_t)r * 2 * I;
        if (with_epi)
            for (int i = 0; i < 2 * I; i++)
                row[i] = row[i] * sc[i] + bi[i];
        for (int i = 0; i < I; i++) {
            g[i] = il8 ? row[i / 8 * 16 + i % 8] : row[i];
            u[i] = il8 ? row[i / 8 * 16 + 8 + i % 8] : row[I + i];
        }
        dsi_swiglu(ref, g, u, I);
        for (int i = 0; i < I; i++)
            bad += !(fabsf(bf(o[r * I + i]) - ref[i]) <= fabsf(ref[i]) * 0.0079f + 1e-6f);
    }
    CHECK_EQ_INT(bad, 0);
    cudaFree(dgu), cudaFree(dsc), cudaFree(dbi), cudaFree(dout);
    free(gu), free(g), free(u), free(ref), free(sc), free(bi), free(o), free(o2);
}

TEST(cuda_swiglu_matches_cpu) {
    NEED_GPU();
    swiglu_case(2, 1000, 0, 0);
    swiglu_case(3, 1000, DSI_GLU_IL8, 0);
    swiglu_case(1, 18944, DSI_GLU_IL8, 0);
    swiglu_case(3, 1000, DSI_GLU_IL8, 1);
    swiglu_case(2, 1000, 0, 1);
    uint16_t *d = dmalloc(64);
    CHECK_EQ_INT(dsi_cuda_swiglu(d, (float *)d, 1, 1004, DSI_GLU_IL8, NULL, NULL, 0),
                 DSI_EINVAL); /* 1004 % 8 */
    CHECK_EQ_INT(dsi_cuda_swiglu(d, (float *)d, 1, 1000, 3, NULL, NULL, 0), DSI_EINVAL);
    cudaFree(d);
}

static void rope_case(enum dsi_rope_type type, int hd) {
    struct dsi_model_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.head_dim = hd;
    cfg.rope_theta = 1000000.f;
    cfg.rope.type = type;
    cfg.rope.factor = 8.f;
    cfg.rope.low_freq_factor = 1.f;
    cfg.rope.high_freq_factor = 4.f;
    cfg.rope.original_max_position_embeddings = 8192;
    float inv[128], inv_ref[128], attn = 1.f;
    CHECK_EQ_INT(dsi_cuda_rope_inv_freq(&cfg, inv, NULL), 0);
    CHECK_EQ_INT(dsi_rope_inv_freq(&cfg.rope, cfg.rope_theta, hd, 131072, 0, inv_ref, &attn), 0);
    for (int i = 0; i < hd / 2; i++)
        CHECK_NEAR(inv[i], inv_ref[i], fabsf(inv_ref[i]) * 1e-6);
    int nh = 6, T = 4, stride = nh * hd + 8;
    int32_t pos[4] = {0, 1, 4097, 65000};
    float *x = malloc((size_t)T * stride * 4), *o = malloc((size_t)T * stride * 4);
    for (int i = 0; i < T * stride; i++)
        x[i] = frand();
    float *dx = dmalloc((size_t)T * stride * 4), *dinv = dmalloc(hd / 2 * 4);
    int32_t *dpos = dmalloc(sizeof pos);
    up(dx, x, (size_t)T * stride * 4), up(dinv, inv, hd / 2 * 4), up(dpos, pos, sizeof pos);
    CHECK_EQ_INT(dsi_cuda_rope(dx, stride, T, nh, hd, dpos, dinv, 0), 0);
    down(o, dx, (size_t)T * stride * 4);
    for (int t = 0; t < T; t++) {
        dsi_rope_neox(x + t * stride, nh, hd, hd, pos[t], inv_ref, attn);
        for (int i = 0; i < stride; i++)
            CHECK_NEAR(o[t * stride + i], x[t * stride + i], 2e-4);
    }
    cudaFree(dx), cudaFree(dinv), cudaFree(dpos);
    free(x), free(o);
}

TEST(cuda_rope_default_matches_cpu) {
    NEED_GPU();
    rope_case(DSI_ROPE_DEFAULT, 128);
}
TEST(cuda_rope_linear_matches_cpu) {
    NEED_GPU();
    rope_case(DSI_ROPE_LINEAR, 64);
}
TEST(cuda_rope_llama3_matches_cpu) {
    NEED_GPU();
    rope_case(DSI_ROPE_LLAMA3, 128);
}

TEST(cuda_rope_rejects_yarn) {
    NEED_GPU();
    struct dsi_model_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.head_dim = 64;
    cfg.rope_theta = 10000.f;
    cfg.rope.type = DSI_ROPE_YARN;
    float inv[32];
    char *err = NULL;
    CHECK_EQ_INT(dsi_cuda_rope_inv_freq(&cfg, inv, &err), DSI_EUNSUPPORTED);
    CHECK(err != NULL);
    free(err);
}

/* Paged attention: several sequences with shuffled blocks, decode and prefill. */
static void attn_case(int nh, int nkv, int hd, int bs, const int *ctx_len, const int *n_q, int n_seqs,
                      int decode) {
    int kv_dim = nkv * hd, max_blocks = 0, total_q = 0, max_ctx = 0, max_nq = 0;
    for (int s = 0; s < n_seqs; s++) {
        max_blocks += (ctx_len[s] + bs - 1) / bs;
        total_q += n_q[s];
        if (ctx_len[s] > max_ctx) max_ctx = ctx_len[s];
        if (n_q[s] > max_nq) max_nq = n_q[s];
    }
    int n_blocks = max_blocks + 3;
    size_t slots = (size_t)n_blocks * bs;
    uint16_t *kc = calloc(slots * kv_dim, 2), *vc = calloc(slots * kv_dim, 2);
    for (size_t i = 0; i < slots * kv_dim; i++)
        kc[i] = dsi_f32_to_bf16(frand()), vc[i] = dsi_f32_to_bf16(frand());
    int32_t *bt = malloc((size_t)max_blocks * 4);
    for (int i = 0; i < max_blocks; i++)
        bt[i] = (i * 7 + 3) % n_blocks; /* shuffled; may repeat */
    struct dsi_cuda_attn_seq *sq = malloc((size_t)n_seqs * sizeof *sq);
    int row = 0, off = 0;
    for (int s = 0; s < n_seqs; s++) {
        sq[s].q_row = row;
        sq[s].n_q = n_q[s];
        sq[s].pos = ctx_len[s] - n_q[s];
        sq[s].bt_off = off;
        row += n_q[s];
        off += (ctx_len[s] + bs - 1) / bs;
    }
    int qstride = (nh + 2 * nkv) * hd;
    float *q = malloc((size_t)total_q * qstride * 4);
    for (int i = 0; i < total_q * qstride; i++)
        q[i] = 2.f * frand();
    uint16_t *dk = dmalloc(slots * kv_dim * 2), *dv = dmalloc(slots * kv_dim * 2),
             *dout = dmalloc((size_t)total_q * nh * hd * 2);
    int32_t *dbt = dmalloc((size_t)max_blocks * 4);
    struct dsi_cuda_attn_seq *dsq = dmalloc((size_t)n_seqs * sizeof *dsq);
    float *dq = dmalloc((size_t)total_q * qstride * 4);
    up(dk, kc, slots * kv_dim * 2), up(dv, vc, slots * kv_dim * 2), up(dbt, bt, (size_t)max_blocks * 4);
    up(dsq, sq, (size_t)n_seqs * sizeof *sq), up(dq, q, (size_t)total_q * qstride * 4);
    struct dsi_cuda_attn_args a = {.q = dq,
                                   .q_stride = qstride,
                                   .k_cache = dk,
                                   .v_cache = dv,
                                   .out = dout,
                                   .seqs = dsq,
                                   .n_seqs = n_seqs,
                                   .block_tables = dbt,
                                   .block_size = bs,
                                   .n_heads = nh,
                                   .n_kv_heads = nkv,
                                   .head_dim = hd,
                                   .scale = 1.f / sqrtf((float)hd),
                                   .max_ctx = max_ctx,
                                   .max_n_q = max_nq};
    a.n_splits = dsi_cuda_attn_decode_splits(n_seqs, nkv, max_ctx, 132);
    a.work_bytes = dsi_cuda_attn_work_bytes(n_seqs, nh, hd, a.n_splits);
    a.work = dmalloc(a.work_bytes);
    CHECK_EQ_INT(decode ? dsi_cuda_attn_decode(&a, 0) : dsi_cuda_attn_prefill(&a, 0), 0);
    CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
    uint16_t *out = malloc((size_t)total_q * nh * hd * 2);
    down(out, dout, (size_t)total_q * nh * hd * 2);
    float *scores = malloc((size_t)max_ctx * 4), *ref = malloc((size_t)hd * 4);
    double worst = 0;
    for (int s = 0; s < n_seqs; s++) {
        struct dsi_attn_args ra = {.n_heads = nh,
                                   .n_kv_heads = nkv,
                                   .head_dim = hd,
                                   .scale = 1.f / sqrtf((float)hd),
                                   .block_size = bs,
                                   .kv_dtype = DSI_KV_BF16,
                                   .k = kc,
                                   .v = vc,
                                   .block_table = bt + sq[s].bt_off};
        for (int i = 0; i < n_q[s]; i++) {
            ra.n_ctx = sq[s].pos + i + 1;
            for (int h = 0; h < nh; h++) {
                dsi_attn_head(&ra, h, q + (size_t)(sq[s].q_row + i) * qstride + h * hd, ref, scores);
                for (int d = 0; d < hd; d++) {
                    double e = fabs(bf(out[(size_t)(sq[s].q_row + i) * nh * hd + h * hd + d]) - ref[d]);
                    if (e > worst) worst = e;
                }
            }
        }
    }
    if (worst > 1e-2) fprintf(stderr, "  attention worst abs error %g\n", worst);
    CHECK(worst <= 1e-2);
    cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dbt), cudaFree(dsq), cudaFree(dq), cudaFree(a.work);
    free(kc), free(vc), free(bt), free(sq), free(q), free(out), free(scores), free(ref);
}

TEST(cuda_attn_decode_matches_cpu) {
    NEED_GPU();
    int ctx[3] = {1, 300, 2100}, nq[3] = {1, 1, 1};
    attn_case(28, 4, 128, 16, ctx, nq, 3, 1);
    int ctx2[2] = {33, 70}, nq2[2] = {1, 1};
    attn_case(4, 2, 16, 16, ctx2, nq2, 2, 1); /* tiny-fixture shape: head_dim 16 */
    attn_case(8, 8, 64, 32, ctx2, nq2, 2, 1); /* MHA */
}

TEST(cuda_attn_prefill_matches_cpu) {
    NEED_GPU();
    int ctx[3] = {40, 130, 17}, nq[3] = {40, 50, 1}; /* fresh prompt, chunked prefill, one decode */
    attn_case(28, 4, 128, 16, ctx, nq, 3, 0);
    int ctx3[2] = {333, 200}, nq3[2] = {200, 200}; /* several 64-query and 64-key tiles, pos 133 and 0 */
    attn_case(28, 4, 128, 16, ctx3, nq3, 2, 0);
    attn_case(8, 8, 64, 32, ctx3, nq3, 2, 0);
    attn_case(4, 2, 16, 16, ctx, nq, 3, 0);
    attn_case(4, 4, 256, 16, ctx, nq, 3, 0);
}

TEST(cuda_attn_rejects_bad_shapes) {
    NEED_GPU();
    struct dsi_cuda_attn_args a = {.n_heads = 28,
                                   .n_kv_heads = 3,
                                   .head_dim = 128,
                                   .block_size = 16,
                                   .q_stride = 28 * 128,
                                   .n_seqs = 1,
                                   .max_n_q = 1,
                                   .n_splits = 1};
    CHECK_EQ_INT(dsi_cuda_attn_decode(&a, 0), DSI_EINVAL); /* 28 % 3 */
    a.n_kv_heads = 2;
    CHECK_EQ_INT(dsi_cuda_attn_decode(&a, 0), DSI_EINVAL); /* group 14 > 8 */
    a.n_kv_heads = 4;
    a.head_dim = 40;
    CHECK_EQ_INT(dsi_cuda_attn_prefill(&a, 0), DSI_EINVAL);
}

TEST(cuda_kv_store_writes_slots) {
    NEED_GPU();
    int T = 3, kv = 64, stride = 3 * kv, slots = 10;
    float *src = malloc((size_t)T * stride * 4);
    for (int i = 0; i < T * stride; i++)
        src[i] = frand();
    int32_t sl[3] = {7, 0, 9};
    float *ds = dmalloc((size_t)T * stride * 4);
    uint16_t *dk = dmalloc((size_t)slots * kv * 2), *dv = dmalloc((size_t)slots * kv * 2);
    int32_t *dsl = dmalloc(sizeof sl);
    up(ds, src, (size_t)T * stride * 4), up(dsl, sl, sizeof sl);
    cudaMemset(dk, 0, (size_t)slots * kv * 2);
    CHECK_EQ_INT(dsi_cuda_kv_store(dk, dv, ds, stride, kv, 2 * kv, dsl, T, kv, 0), 0);
    uint16_t *k = malloc((size_t)slots * kv * 2), *v = malloc((size_t)slots * kv * 2);
    down(k, dk, (size_t)slots * kv * 2), down(v, dv, (size_t)slots * kv * 2);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < kv; i++) {
            CHECK(k[sl[t] * kv + i] == dsi_f32_to_bf16(src[t * stride + kv + i]));
            CHECK(v[sl[t] * kv + i] == dsi_f32_to_bf16(src[t * stride + 2 * kv + i]));
        }
    CHECK(k[kv * 1] == 0); /* slot 1 untouched */
    CHECK_EQ_INT(dsi_cuda_kv_store(dk, dv, ds, stride, 2 * kv + 1, 0, dsl, T, kv, 0), DSI_EINVAL);
    cudaFree(ds), cudaFree(dk), cudaFree(dv), cudaFree(dsl);
    free(src), free(k), free(v);
}

/* INT8 quantize + tensor-core gemm vs dsi_quantize_int8 + dsi_matmul on the
 * same bf16-rounded activations. */
TEST(cuda_sample_greedy_and_topk) {
    NEED_GPU();
    int rows = 4, V = 152064;
    float *lg = malloc((size_t)rows * V * 4);
    for (int i = 0; i < rows * V; i++)
        lg[i] = 4.f * frand();
    lg[0 * V + 151000] = 50.f;
    lg[1 * V + 7] = 50.f, lg[1 * V + 9] = 50.f; /* tie: lowest id */
    lg[2 * V + 123] = 30.f;
    struct dsi_cuda_sample_params p[4] = {
        {0.f, 0, 1.f, 0.5f, 0}, {0.f, 0, 1.f, 0.5f, 0}, {1.f, 1, 1.f, 0.99f, 0}, {0.7f, 5, 0.9f, 0.3f, 0}};
    float *dl = dmalloc((size_t)rows * V * 4);
    struct dsi_cuda_sample_params *dp = dmalloc(sizeof p);
    int32_t *di = dmalloc(rows * 4), ids[4];
    up(dl, lg, (size_t)rows * V * 4), up(dp, p, sizeof p);
    CHECK_EQ_INT(dsi_cuda_sample(di, dl, dp, rows, V, 0), 0);
    down(ids, di, sizeof ids);
    CHECK_EQ_INT(ids[0], 151000);
    CHECK_EQ_INT(ids[1], 7);
    CHECK_EQ_INT(ids[2], 123);
    /* row 3: the pick must be one of the 5 largest */
    int above = 0;
    for (int i = 0; i < V; i++)
        above += lg[3 * V + i] > lg[3 * V + ids[3]];
    CHECK(ids[3] >= 0 && ids[3] < V && above < 5);
    /* distribution: two tokens with logits a, b; frequency of a follows softmax */
    int V2 = 64, n = 2000, hits = 0;
    float *l2 = malloc((size_t)V2 * 4);
    for (int i = 0; i < V2; i++)
        l2[i] = -30.f;
    l2[10] = 1.f, l2[20] = 0.f;
    struct dsi_cuda_sample_params *pp = malloc((size_t)n * sizeof *pp);
    float *big = malloc((size_t)n * V2 * 4);
    for (int r = 0; r < n; r++) {
        memcpy(big + (size_t)r * V2, l2, (size_t)V2 * 4);
        pp[r] = (struct dsi_cuda_sample_params){1.f, 0, 1.f, (r + 0.5f) / n, 0};
    }
    float *dbig = dmalloc((size_t)n * V2 * 4);
    struct dsi_cuda_sample_params *dpp = dmalloc((size_t)n * sizeof *pp);
    int32_t *dids = dmalloc((size_t)n * 4), *hid = malloc((size_t)n * 4);
    up(dbig, big, (size_t)n * V2 * 4), up(dpp, pp, (size_t)n * sizeof *pp);
    CHECK_EQ_INT(dsi_cuda_sample(dids, dbig, dpp, n, V2, 0), 0);
    down(hid, dids, (size_t)n * 4);
    for (int r = 0; r < n; r++)
        hits += hid[r] == 10;
    double expect = 1.0 / (1.0 + exp(-1.0)); /* 0.731 */
    CHECK_NEAR((double)hits / n, expect, 0.01);
    /* top_p 0.5 keeps only token 10 */
    for (int r = 0; r < n; r++)
        pp[r].top_p = 0.5f;
    up(dpp, pp, (size_t)n * sizeof *pp);
    CHECK_EQ_INT(dsi_cuda_sample(dids, dbig, dpp, n, V2, 0), 0);
    down(hid, dids, (size_t)n * 4);
    hits = 0;
    for (int r = 0; r < n; r++)
        hits += hid[r] == 10;
    CHECK_EQ_INT(hits, n);
    cudaFree(dl), cudaFree(dp), cudaFree(di), cudaFree(dbig), cudaFree(dpp), cudaFree(dids);
    free(lg), free(l2), free(pp), free(big), free(hid);
}

/* The few-pass sampler (variant 0) against the full scan (variant 1): the
 * same id for every row, over peaked, flat and tie-heavy rows of the 7B
 * vocabulary and the parameter mixes a chat API sends (top-k and top-p
 * together, top-p alone, top-k alone, k above the fast path's 1024, heavy
 * ties that overflow its candidate list). */
TEST(cuda_sample_fast_path_equals_full_scan) {
    NEED_GPU();
    const int V = 152064, kinds = 4;
    const struct dsi_cuda_sample_params ps[] = {
        {0.7f, 40, 0.9f, 0, 0}, {1.f, 0, 0.9f, 0, 0},     {0.8f, 50, 1.f, 0, 0},  {1.2f, 1000, 0.95f, 0, 0},
        {1.f, 0, 0.5f, 0, 0},   {0.5f, 2000, 0.8f, 0, 0}, {1.f, 3000, 1.f, 0, 0}, {1.f, 1, 0.9f, 0, 0}};
    const int n_ps = (int)(sizeof ps / sizeof ps[0]), us = 5, rows = kinds * n_ps * us;
    float *lg = malloc((size_t)rows * V * 4);
    struct dsi_cuda_sample_params *p = malloc((size_t)rows * sizeof *p);
    int r = 0;
    for (int kind = 0; kind < kinds; kind++)
        for (int pi = 0; pi < n_ps; pi++)
            for (int ui = 0; ui < us; ui++, r++) {
                float *row = lg + (size_t)r * V;
                for (int i = 0; i < V; i++) {
                    float x = frand();
                    row[i] = kind == 0   ? 4.f * x                /* peaked by a few spikes below */
                             : kind == 1 ? 0.05f * x              /* flat: top-p needs most of V */
                             : kind == 2 ? floorf(4.f * x) * 0.5f /* 8 distinct values: ties */
                                         : 10.f * x * x * x;      /* long tail */
                }
                if (kind == 0)
                    for (int j = 0; j < 20; j++)
                        row[(j * 7919 + r) % V] = 12.f + 0.3f * (float)j;
                p[r] = ps[pi];
                p[r].u = (float)ui / us + 0.37f / us;
            }
    float *dl = dmalloc((size_t)rows * V * 4);
    struct dsi_cuda_sample_params *dp = dmalloc((size_t)rows * sizeof *p);
    int32_t *da = dmalloc((size_t)rows * 4), *db = dmalloc((size_t)rows * 4);
    int32_t *a = malloc((size_t)rows * 4), *b = malloc((size_t)rows * 4);
    up(dl, lg, (size_t)rows * V * 4), up(dp, p, (size_t)rows * sizeof *p);
    CHECK_EQ_INT(dsi_cuda_sample_variant(da, dl, dp, rows, V, 0, 0), 0);
    CHECK_EQ_INT(dsi_cuda_sample_variant(db, dl, dp, rows, V, 1, 0), 0);
    down(a, da, (size_t)rows * 4), down(b, db, (size_t)rows * 4);
    int diff = 0;
    for (int i = 0; i < rows; i++)
        if (a[i] != b[i]) {
            if (diff++ < 5)
                fprintf(stderr, "  row %d (kind %d, params %d): fast %d, full %d\n", i, i / (n_ps * us),
                        i / us % n_ps, a[i], b[i]);
        }
    CHECK_EQ_INT(diff, 0);
    CHECK_EQ_INT(dsi_cuda_sample_variant(da, dl, dp, 1, V, 2, 0), DSI_EINVAL);
    cudaFree(dl), cudaFree(dp), cudaFree(da), cudaFree(db);
    free(lg), free(p), free(a), free(b);
}

/* A head padded past the tokenizer (152,064 rows, 151,665 ids) whose best
 * logits all sit on the padding rows: with n_ids set no draw reaches them,
 * greedy or sampled, on either path; n_ids 0 still reads the whole row (the
 * padding really holds the maximum), and the row stride stays the head's. */
TEST(cuda_sample_never_draws_padding_rows) {
    NEED_GPU();
    const int V = 152064, n_ids = 151665;
    const struct dsi_cuda_sample_params ps[] = {
        {0.f, 0, 1.f, 0, 0},    {1.f, 0, 1.f, 0, 0},     {2.f, 0, 1.f, 0, 0},   {0.7f, 40, 0.9f, 0, 0},
        {1.f, 0, 0.9f, 0, 0},   {1.f, 1, 1.f, 0, 0},     {1.f, 3000, 1.f, 0, 0}, {1.2f, 1000, 0.95f, 0, 0}};
    const int n_ps = (int)(sizeof ps / sizeof ps[0]), us = 6, rows = n_ps * us;
    float *lg = malloc((size_t)rows * V * 4);
    struct dsi_cuda_sample_params *p = malloc((size_t)rows * sizeof *p);
    for (int r = 0; r < rows; r++) {
        float *row = lg + (size_t)r * V;
        for (int i = 0; i < n_ids; i++)
            row[i] = 4.f * frand();
        for (int i = n_ids; i < V; i++) /* every padding row beats every real one */
            row[i] = 40.f + frand();
        p[r] = ps[r / us];
        p[r].u = (float)(r % us) / us + 0.37f / us;
        p[r].n_ids = n_ids;
    }
    float *dl = dmalloc((size_t)rows * V * 4);
    struct dsi_cuda_sample_params *dp = dmalloc((size_t)rows * sizeof *p);
    int32_t *da = dmalloc((size_t)rows * 4), *db = dmalloc((size_t)rows * 4);
    int32_t *a = malloc((size_t)rows * 4), *b = malloc((size_t)rows * 4);
    up(dl, lg, (size_t)rows * V * 4), up(dp, p, (size_t)rows * sizeof *p);
    CHECK_EQ_INT(dsi_cuda_sample_variant(da, dl, dp, rows, V, 0, 0), 0);
    CHECK_EQ_INT(dsi_cuda_sample_variant(db, dl, dp, rows, V, 1, 0), 0);
    down(a, da, (size_t)rows * 4), down(b, db, (size_t)rows * 4);
    int outside = 0, differ = 0;
    for (int r = 0; r < rows; r++) {
        outside += a[r] < 0 || a[r] >= n_ids || b[r] < 0 || b[r] >= n_ids;
        differ += a[r] != b[r];
    }
    CHECK_EQ_INT(outside, 0);
    CHECK_EQ_INT(differ, 0);
    for (int r = 0; r < us; r++) { /* greedy and top-k 1: the argmax over the real ids */
        const float *row = lg + (size_t)r * V;
        int best = 0;
        for (int i = 1; i < n_ids; i++)
            if (row[i] > row[best]) best = i;
        CHECK_EQ_INT(a[r], best);
        const float *row1 = lg + (size_t)(5 * us + r) * V;
        best = 0;
        for (int i = 1; i < n_ids; i++)
            if (row1[i] > row1[best]) best = i;
        CHECK_EQ_INT(a[5 * us + r], best);
    }
    for (int r = 0; r < rows; r++)
        p[r].n_ids = 0;
    up(dp, p, (size_t)rows * sizeof *p);
    CHECK_EQ_INT(dsi_cuda_sample(da, dl, dp, rows, V, 0), 0);
    down(a, da, (size_t)rows * 4);
    int inside = 0;
    for (int r = 0; r < rows; r++)
        inside += a[r] < n_ids;
    CHECK_EQ_INT(inside, 0); /* without the limit the padding wins every draw */
    cudaFree(dl), cudaFree(dp), cudaFree(da), cudaFree(db);
    free(lg), free(p), free(a), free(b);
}

/* The build holds code this GPU runs (the create-time check of
 * cuda_backend.c): SASS of the device's major architecture, at most its own. */
TEST(cuda_build_has_an_image_for_this_gpu) {
    NEED_GPU();
    struct cudaDeviceProp prop;
    CHECK(cudaSetDevice(0) == cudaSuccess && cudaGetDeviceProperties(&prop, 0) == cudaSuccess);
    int bin = 0;
    CHECK_EQ_INT(dsi_cuda_kernel_image(&bin), 0);
    CHECK(bin / 10 == prop.major && bin <= prop.major * 10 + prop.minor);
    fprintf(stderr, "  %s sm_%d%d runs the sm_%d image\n", prop.name, prop.major, prop.minor, bin);
}

int main(void) {
    RUN(cuda_build_has_an_image_for_this_gpu);
    RUN(cuda_embed_matches_table);
    RUN(cuda_add_rmsnorm_matches_cpu);
    RUN(cuda_swiglu_matches_cpu);
    RUN(cuda_rope_default_matches_cpu);
    RUN(cuda_rope_linear_matches_cpu);
    RUN(cuda_rope_llama3_matches_cpu);
    RUN(cuda_rope_rejects_yarn);
    RUN(cuda_attn_decode_matches_cpu);
    RUN(cuda_attn_prefill_matches_cpu);
    RUN(cuda_attn_rejects_bad_shapes);
    RUN(cuda_kv_store_writes_slots);
    RUN(cuda_sample_greedy_and_topk);
    RUN(cuda_sample_fast_path_equals_full_scan);
    RUN(cuda_sample_never_draws_padding_rows);
    return test_summary();
}
