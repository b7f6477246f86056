/*
 * test_cuda_deepseek.c: the DeepSeek-V2/V3 kernels (kernels/mla.cu, moe.cu)
 * against their CPU twins (cpu_deepseek.h, cpu_ops.h) on fresh random inputs:
 *  - mla_kv_rope: latent RMSNorm + RoPE (interleaved and rotate-half, YaRN
 *    factor) + bf16 cache store, and q_pe rotated in place;
 *  - mla_attn: with W_UK / W_UV applied on the host around it, equals
 *    dsi_mla_head for every (row, head) of two sequences (one prefill chunk
 *    after earlier context, one decode row) on out-of-order blocks, whole
 *    and with the context split over 3 blocks (partials + combine), by the
 *    shared-latent kernel (all heads of a row per block) and the per-head one;
 *  - moe_route: the same experts and weights as dsi_rmsnorm + router logits +
 *    dsi_moe_route for greedy/softmax, group-limited and noaux_tc/sigmoid;
 *  - moe_combine: the weighted un-permute;
 *  - moe_group + moe_gemv_int8: the device grouping is a partition whose runs
 *    hold each expert's choices, and every row equals the INT8 matmul
 *    (dsi_matmul's q * scale weights) of its expert, for x per token and per
 *    position, sizes off the 16 x 32 tiles.
 * Without a GPU every test reports SKIP.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../src/backend/cpu/cpu_deepseek.h"
#include "kernels.h"
#include "test_cuda_util.h"

static void *dev_up(const void *h, size_t bytes) {
    void *d = NULL;
    if (cudaMalloc(&d, bytes ? bytes : 1) != cudaSuccess) return NULL;
    if (bytes) cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
    return d;
}

static void dev_down(void *h, const void *d, size_t bytes) {
    cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost);
}

static void check_kv_rope(int interleave) {
    enum { T = 3, NH = 4, NOPE = 16, ROPE = 16, R = 40, W = R + ROPE, BS = 4, NB = 4 };
    const int qs = NH * (NOPE + ROPE);
    float q[T * NH * (NOPE + ROPE)], kva[T * W], nw[R], inv[ROPE / 2];
    int32_t pos[T] = {0, 5, 13}, table[NB] = {2, 0, 3, 1}, slots[T];
    for (int i = 0; i < T * qs; i++)
        q[i] = frand();
    for (int i = 0; i < T * W; i++)
        kva[i] = 3.f * frand();
    for (int i = 0; i < R; i++)
        nw[i] = 1.f + 0.5f * frand();
    for (int i = 0; i < ROPE / 2; i++)
        inv[i] = powf(10000.f, -2.f * i / ROPE);
    for (int t = 0; t < T; t++)
        slots[t] = table[pos[t] / BS] * BS + pos[t] % BS;
    const float attn_factor = 1.2f;
    float *q_d = dev_up(q, sizeof q), *kva_d = dev_up(kva, sizeof kva), *nw_d = dev_up(nw, sizeof nw),
          *inv_d = dev_up(inv, sizeof inv);
    int32_t *pos_d = dev_up(pos, sizeof pos), *slot_d = dev_up(slots, sizeof slots);
    uint16_t *cache_d = NULL;
    cudaMalloc((void **)&cache_d, (size_t)NB * BS * W * 2);
    cudaMemset(cache_d, 0, (size_t)NB * BS * W * 2);
    struct dsi_cuda_mla_rope_args a = {.q = q_d,
                                       .q_stride = qs,
                                       .n_heads = NH,
                                       .nope = NOPE,
                                       .kva = kva_d,
                                       .kv_lora_rank = R,
                                       .rope_dim = ROPE,
                                       .norm_w = nw_d,
                                       .eps = 1e-6f,
                                       .pos = pos_d,
                                       .slots = slot_d,
                                       .inv_freq = inv_d,
                                       .attn_factor = attn_factor,
                                       .interleave = interleave,
                                       .cache = cache_d};
    CHECK_EQ_INT(dsi_cuda_mla_kv_rope(&a, T, 0), 0);
    CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
    static uint16_t got[NB * BS * W], want[NB * BS * W];
    float gq[T * NH * (NOPE + ROPE)];
    dev_down(got, cache_d, sizeof got);
    dev_down(gq, q_d, sizeof gq);
    memset(want, 0, sizeof want);
    double qerr = 0;
    for (int t = 0; t < T; t++) {
        float kv[W], *qt = q + (size_t)t * qs;
        memcpy(kv, kva + (size_t)t * W, sizeof kv);
        dsi_rmsnorm(kv, kv, nw, R, 1e-6f);
        if (interleave) {
            dsi_rope_interleaved(kv + R, 1, ROPE, ROPE, pos[t], inv, attn_factor);
            dsi_rope_interleaved(qt + NOPE, NH, NOPE + ROPE, ROPE, pos[t], inv, attn_factor);
        } else {
            dsi_rope_neox(kv + R, 1, ROPE, ROPE, pos[t], inv, attn_factor);
            dsi_rope_neox(qt + NOPE, NH, NOPE + ROPE, ROPE, pos[t], inv, attn_factor);
        }
        dsi_mla_store(want, DSI_KV_BF16, BS, R, ROPE, table, pos[t], kv, kv + R);
        for (int i = 0; i < qs; i++)
            qerr = fmax(qerr, fabs(gq[t * qs + i] - qt[i]));
    }
    int off_by_more = 0;
    for (int i = 0; i < NB * BS * W; i++) /* one bf16 ulp: sincosf / sqrtf round apart */
        if (abs((int)got[i] - (int)want[i]) > 1) off_by_more++;
    fprintf(stderr, "  kv_rope interleave=%d: q max err %.2g, cache values off by > 1 ulp: %d\n", interleave,
            qerr, off_by_more);
    CHECK(qerr < 1e-5);
    CHECK_EQ_INT(off_by_more, 0);
    cudaFree(q_d), cudaFree(kva_d), cudaFree(nw_d), cudaFree(inv_d), cudaFree(pos_d), cudaFree(slot_d);
    cudaFree(cache_d);
}

TEST(mla_kv_rope_matches_cpu) {
    NEED_GPU();
    check_kv_rope(1);
    check_kv_rope(0);
}

/* Two sequences: A brings 5 new rows at positions 7..11 (context 12), B one
 * row at position 20; blocks out of order. The host does W_UK / W_UV. */
TEST(mla_attn_matches_cpu_head) {
    NEED_GPU();
    enum { NH = 3, NOPE = 16, ROPE = 8, R = 136, VD = 24, BS = 4, NB = 12, T = 6 };
    const int W = R + ROPE, qs = NH * (NOPE + ROPE), rows = NH * (NOPE + VD);
    const int32_t bt[] = {5, 0, 9, 2, /* A: 3 blocks + 1 spare */ 11, 7, 1, 3, 8, 6, 10, 4};
    const struct dsi_cuda_attn_seq seqs[2] = {{0, 5, 7, 0}, {5, 1, 20, 4}};
    const int row_pos[T] = {7, 8, 9, 10, 11, 20}, row_bt[T] = {0, 0, 0, 0, 0, 4};
    float *wkvb = malloc(sizeof(float) * rows * R), *q = malloc(sizeof(float) * T * qs);
    float *q_lat = malloc(sizeof(float) * T * NH * R), *o_lat = malloc(sizeof(float) * T * NH * R);
    uint16_t *cache = calloc((size_t)NB * BS * W, 2);
    for (int i = 0; i < rows * R; i++)
        wkvb[i] = 0.3f * frand();
    for (int i = 0; i < T * qs; i++)
        q[i] = frand();
    for (int i = 0; i < NB * BS * W; i++)
        cache[i] = dsi_f32_to_bf16(2.f * frand());
    for (int t = 0; t < T; t++) /* q_lat = W_UK^T q_nope, on the host */
        for (int h = 0; h < NH; h++)
            for (int c = 0; c < R; c++) {
                float s = 0;
                for (int d = 0; d < NOPE; d++)
                    s += q[t * qs + h * (NOPE + ROPE) + d] * wkvb[(size_t)(h * (NOPE + VD) + d) * R + c];
                q_lat[((size_t)t * NH + h) * R + c] = s;
            }
    float *ql_d = dev_up(q_lat, sizeof(float) * T * NH * R), *q_d = dev_up(q, sizeof(float) * T * qs);
    float *ol_d = NULL;
    cudaMalloc((void **)&ol_d, sizeof(float) * T * NH * R);
    uint16_t *c_d = dev_up(cache, (size_t)NB * BS * W * 2);
    int32_t *bt_d = dev_up(bt, sizeof bt);
    struct dsi_cuda_attn_seq *s_d = dev_up(seqs, sizeof seqs);
    const float scale = 1.f / sqrtf((float)(NOPE + ROPE));
    struct dsi_cuda_mla_attn_args a = {.o_lat = ol_d,
                                       .q_lat = ql_d,
                                       .q = q_d,
                                       .q_stride = qs,
                                       .n_heads = NH,
                                       .nope = NOPE,
                                       .kv_lora_rank = R,
                                       .rope_dim = ROPE,
                                       .cache = c_d,
                                       .seqs = s_d,
                                       .n_seqs = 2,
                                       .block_tables = bt_d,
                                       .block_size = BS,
                                       .scale = scale};
    float *work_d = NULL;
    a.work_bytes = dsi_cuda_mla_work_bytes(T, NH, R, 3);
    cudaMalloc((void **)&work_d, a.work_bytes);
    a.work = work_d;
    for (int run = 0; run < 4; run++) { /* both kernels, the context split over 3 blocks, then whole */
        const int split = run & 1 ? 1 : 3;
        a.n_splits = split;
        a.variant = 1 - (run >> 1);
        CHECK_EQ_INT(dsi_cuda_mla_attn(&a, T, 0), 0);
        CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
        dev_down(o_lat, ol_d, sizeof(float) * T * NH * R);
        struct dsi_qweight qw = {.dtype = DSI_W_F32, .rows = rows, .cols = R, .data = wkvb};
        struct dsi_mla_args ma = {.kv_lora_rank = R,
                                  .qk_nope_head_dim = NOPE,
                                  .qk_rope_head_dim = ROPE,
                                  .v_head_dim = VD,
                                  .scale = scale,
                                  .block_size = BS,
                                  .kv_dtype = DSI_KV_BF16,
                                  .cache = cache,
                                  .wkv_b = &qw};
        float *scratch = malloc(sizeof(float) * (3 * R + 64)), out[VD];
        double worst = 0, ref_max = 0;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++) {
                ma.block_table = bt + row_bt[t];
                ma.n_ctx = row_pos[t] + 1;
                dsi_mla_head(&ma, h, q + t * qs + h * (NOPE + ROPE), out, scratch);
                for (int e = 0; e < VD; e++) { /* out = W_UV o_lat, on the host */
                    float s = 0;
                    for (int c = 0; c < R; c++)
                        s += wkvb[(size_t)(h * (NOPE + VD) + NOPE + e) * R + c] *
                             o_lat[((size_t)t * NH + h) * R + c];
                    worst = fmax(worst, fabs(s - out[e]));
                    ref_max = fmax(ref_max, fabs(out[e]));
                }
            }
        fprintf(stderr, "  mla_attn %s, %d split(s): max |gpu - cpu| %.3g (max |cpu| %.3g)\n",
                a.variant ? "per head" : "16 heads per block", split, worst, ref_max);
        CHECK(ref_max > 0.01);
        CHECK(worst <= 1e-4 * fmax(1.0, ref_max));
        free(scratch);
    }
    cudaFree(work_d);
    free(wkvb), free(q), free(q_lat), free(o_lat), free(cache);
    cudaFree(ql_d), cudaFree(q_d), cudaFree(ol_d), cudaFree(c_d), cudaFree(bt_d), cudaFree(s_d);
}

static void check_route(enum dsi_topk_method method, enum dsi_scoring_func scoring, int E, int K, int G,
                        int TG, bool norm, bool bias) {
    enum { T = 9, H = 96 };
    float *x = malloc(sizeof(float) * T * H), nw[H], *router = malloc(sizeof(float) * E * H);
    float *b = malloc(sizeof(float) * E);
    for (int i = 0; i < T * H; i++)
        x[i] = 2.f * frand();
    for (int i = 0; i < H; i++)
        nw[i] = 1.f + 0.3f * frand();
    for (int i = 0; i < E * H; i++)
        router[i] = frand() / sqrtf((float)H);
    for (int e = 0; e < E; e++)
        b[e] = 0.1f * frand();
    struct dsi_router r = {.n_experts = E,
                           .top_k = K,
                           .n_group = G,
                           .topk_group = TG,
                           .method = method,
                           .scoring = scoring,
                           .norm_topk_prob = norm,
                           .routed_scaling_factor = 2.5f,
                           .bias = bias ? b : NULL};
    float *x_d = dev_up(x, sizeof(float) * T * H), *nw_d = dev_up(nw, sizeof nw);
    float *r_d = dev_up(router, sizeof(float) * E * H), *b_d = dev_up(b, sizeof(float) * E), *w_d = NULL;
    int32_t *i_d = NULL;
    cudaMalloc((void **)&w_d, sizeof(float) * T * K);
    cudaMalloc((void **)&i_d, sizeof(int32_t) * T * K);
    struct dsi_cuda_router cr = {
        .n_experts = E,
        .top_k = K,
        .n_group = G,
        .topk_group = TG,
        .method = method == DSI_TOPK_NOAUX_TC               ? DSI_CUDA_TOPK_NOAUX_TC
                  : method == DSI_TOPK_GROUP_LIMITED_GREEDY ? DSI_CUDA_TOPK_GROUP_LIMITED
                                                            : DSI_CUDA_TOPK_GREEDY,
        .scoring = scoring == DSI_SCORE_SIGMOID ? DSI_CUDA_SCORE_SIGMOID : DSI_CUDA_SCORE_SOFTMAX,
        .norm_topk_prob = norm,
        .routed_scaling_factor = 2.5f,
        .bias = bias ? b_d : NULL};
    CHECK_EQ_INT(dsi_cuda_moe_route(i_d, w_d, x_d, nw_d, T, H, 1e-6f, r_d, &cr, 0), 0);
    CHECK_EQ_INT(cudaDeviceSynchronize(), 0);
    int32_t gi[T * 16];
    float gw[T * 16], *scratch = malloc(sizeof(float) * dsi_moe_route_scratch(&r)), xn[H], lg[256];
    dev_down(gi, i_d, sizeof(int32_t) * T * K);
    dev_down(gw, w_d, sizeof(float) * T * K);
    int idx_diff = 0;
    double werr = 0;
    for (int t = 0; t < T; t++) {
        int32_t ci[16];
        float cw[16];
        dsi_rmsnorm(xn, x + t * H, nw, H, 1e-6f);
        for (int e = 0; e < E; e++)
            lg[e] = dsi_dot_f32(router + (size_t)e * H, xn, H);
        dsi_moe_route(&r, lg, ci, cw, scratch);
        for (int k = 0; k < K; k++) {
            idx_diff += ci[k] != gi[t * K + k];
            werr = fmax(werr, fabs(cw[k] - gw[t * K + k]));
        }
    }
    fprintf(stderr, "  route method %d scoring %d E %d K %d groups %d/%d: %d ids differ, weight err %.2g\n",
            (int)method, (int)scoring, E, K, G, TG, idx_diff, werr);
    CHECK_EQ_INT(idx_diff, 0);
    CHECK(werr <= 1e-5);
    free(x), free(router), free(b), free(scratch);
    cudaFree(x_d), cudaFree(nw_d), cudaFree(r_d), cudaFree(b_d), cudaFree(w_d), cudaFree(i_d);
}

TEST(moe_route_matches_cpu) {
    NEED_GPU();
    check_route(DSI_TOPK_GREEDY, DSI_SCORE_SOFTMAX, 64, 6, 1, 1, false, false);
    check_route(DSI_TOPK_GROUP_LIMITED_GREEDY, DSI_SCORE_SOFTMAX, 32, 4, 8, 3, true, false);
    check_route(DSI_TOPK_NOAUX_TC, DSI_SCORE_SIGMOID, 256, 8, 8, 4, true, true);
    check_route(DSI_TOPK_NOAUX_TC, DSI_SCORE_SIGMOID, 16, 4, 4, 2, true, true);
}

TEST(moe_combine_sums_in_order) {
    NEED_GPU();
    enum { T = 5, K = 3, H = 40 };
    float y[T * K * H], w[T * K], base[T * H], got[T * H];
    int32_t slot[T * K];
    for (int i = 0; i < T * K * H; i++)
        y[i] = frand();
    for (int i = 0; i < T * K; i++) {
        w[i] = frand();
        slot[i] = (i * 7 + 3) % (T * K); /* a permutation */
    }
    for (int i = 0; i < T * H; i++)
        base[i] = frand();
    for (int acc = 0; acc < 2; acc++) {
        float *o_d = dev_up(base, sizeof base), *y_d = dev_up(y, sizeof y), *w_d = dev_up(w, sizeof w);
        int32_t *s_d = dev_up(slot, sizeof slot);
        CHECK_EQ_INT(dsi_cuda_moe_combine(o_d, acc, y_d, s_d, w_d, T, K, H, 0), 0);
        dev_down(got, o_d, sizeof got);
        double worst = 0;
        for (int t = 0; t < T; t++)
            for (int i = 0; i < H; i++) {
                float o = acc ? base[t * H + i] : 0.f;
                for (int k = 0; k < K; k++)
                    o += w[t * K + k] * y[(size_t)slot[t * K + k] * H + i];
                worst = fmax(worst, fabs(o - got[t * H + i]));
            }
        CHECK(worst <= 1e-6);
        cudaFree(o_d), cudaFree(y_d), cudaFree(w_d), cudaFree(s_d);
    }
}

TEST(moe_grouped_gemv_matches_cpu) {
    NEED_GPU();
    enum { E = 5, N = 40, KD = 72, T = 7, K = 3, NA = T * K };
    int8_t *q_d[E];
    float *s_d[E], *wf = malloc(sizeof(float) * E * N * KD);
    struct dsi_cuda_moe_w tab[E];
    uint16_t wb[N * KD], ints[N * KD];
    float sc[N];
    uint16_t *stage = NULL;
    cudaMalloc((void **)&stage, sizeof wb);
    for (int e = 0; e < E; e++) {
        for (int i = 0; i < N * KD; i++)
            wb[i] = dsi_f32_to_bf16(frand() * (1.f + (float)(i / KD) / 8.f));
        cudaMalloc((void **)&q_d[e], dsi_cuda_q8_bytes(N, KD));
        cudaMalloc((void **)&s_d[e], sizeof sc);
        cudaMemcpy(stage, wb, sizeof wb, cudaMemcpyHostToDevice);
        CHECK_EQ_INT(dsi_cuda_quantize_int8(q_d[e], s_d[e], stage, N, KD, 0), 0);
        CHECK_EQ_INT(dsi_cuda_dequant_int8(stage, q_d[e], NULL, N, KD, 0), 0);
        dev_down(ints, stage, sizeof ints);
        dev_down(sc, s_d[e], sizeof sc);
        for (int i = 0; i < N * KD; i++) /* the weights dsi_matmul uses: q * scale */
            wf[(size_t)e * N * KD + i] = dsi_bf16_to_f32(ints[i]) * sc[i / KD];
        tab[e] = (struct dsi_cuda_moe_w){q_d[e], s_d[e]};
    }
    int32_t idx[NA];
    for (int t = 0; t < T; t++) /* K distinct experts per token; expert 4 never chosen */
        for (int k = 0; k < K; k++)
            idx[t * K + k] = (t + k * (1 + t % 2)) % 4;
    uint16_t x[NA * KD];
    for (int i = 0; i < NA * KD; i++)
        x[i] = dsi_f32_to_bf16(frand());
    struct dsi_cuda_moe_w *tab_d = dev_up(tab, sizeof tab);
    int32_t *idx_d = dev_up(idx, sizeof idx), *off_d = NULL, *asg_d = NULL, *slot_d = NULL;
    uint16_t *x_d = dev_up(x, sizeof x);
    float *y_d = NULL;
    cudaMalloc((void **)&off_d, (2 * E + 2) * 4);
    cudaMalloc((void **)&asg_d, NA * 4);
    cudaMalloc((void **)&slot_d, NA * 4);
    cudaMalloc((void **)&y_d, sizeof(float) * NA * N);
    CHECK_EQ_INT(dsi_cuda_moe_group(off_d, asg_d, slot_d, idx_d, NA, E, 0), 0);
    int32_t off[2 * E + 2], asg[NA], slot[NA];
    dev_down(off, off_d, sizeof off);
    dev_down(asg, asg_d, sizeof asg);
    dev_down(slot, slot_d, sizeof slot);
    /* experts 0..3 in use (4 never chosen), listed ascending */
    int bad = off[0] != 0 || off[E] != NA || off[2 * E + 1] != 4;
    for (int j = 0; j < 4; j++)
        bad += off[E + 1 + j] != j;
    for (int a = 0; a < NA; a++) { /* choice a sits in its expert's run, and asg inverts slot */
        bad += slot[a] < off[idx[a]] || slot[a] >= off[idx[a] + 1] || asg[slot[a]] != a;
    }
    CHECK_EQ_INT(bad, 0);
    for (int mode = 0; mode < 2; mode++) { /* x per token (x_div K), then per position (x_div 0) */
        CHECK_EQ_INT(dsi_cuda_moe_gemv_int8(y_d, x_d, tab_d, off_d, asg_d, mode ? 0 : K, E, NA, N, KD, 0), 0);
        float y[NA * N];
        dev_down(y, y_d, sizeof y);
        double worst = 0, ref_max = 0;
        for (int a = 0; a < NA; a++) {
            int p = slot[a];
            const uint16_t *xr = x + (size_t)(mode ? p : a / K) * KD;
            for (int r = 0; r < N; r++) {
                double ref = 0;
                for (int c = 0; c < KD; c++)
                    ref += (double)wf[((size_t)idx[a] * N + r) * KD + c] * dsi_bf16_to_f32(xr[c]);
                worst = fmax(worst, fabs(ref - y[(size_t)p * N + r]));
                ref_max = fmax(ref_max, fabs(ref));
            }
        }
        fprintf(stderr, "  moe_gemv x_div %d: max |gpu - ref| %.3g (max |ref| %.3g)\n", mode ? 0 : K, worst,
                ref_max);
        CHECK(worst <= 1e-5 * fmax(1.0, ref_max));
    }
    for (int e = 0; e < E; e++)
        cudaFree(q_d[e]), cudaFree(s_d[e]);
    cudaFree(stage), cudaFree(tab_d), cudaFree(idx_d), cudaFree(off_d), cudaFree(asg_d), cudaFree(slot_d);
    cudaFree(x_d), cudaFree(y_d);
    free(wf);
}

int main(void) {
    RUN(mla_kv_rope_matches_cpu);
    RUN(mla_attn_matches_cpu_head);
    RUN(moe_route_matches_cpu);
    RUN(moe_combine_sums_in_order);
    RUN(moe_grouped_gemv_matches_cpu);
    return test_summary();
}
