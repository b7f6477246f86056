/*
 * test_cuda_plan.c: the CUDA backend's matmul plan (src/backend/cuda/cuda_plan.c),
 * host only (no GPU needed: it runs wherever CUDA is compiled).
 *
 * The plan replaced a per-call decision (cuda_forward.c before issue 18) whose
 * kernel choices must not change. old_choice() below is that decision as it
 * was, including its "DSI_EINVAL: try the next kernel" fallback of the
 * one-row GEMV, and every test compares the plan with it for every row count
 * of several real shapes, device sizes and A/B switch settings. One thing
 * changed on purpose: the GEMV's "row tiles per SM" used 132 SMs (H100/H200
 * SXM) whatever the device; the reference here takes the device's count, as
 * the plan does, so on 132-SM devices both are the old behaviour.
 */
#include <stdlib.h>
#include <string.h>

#include "../src/backend/cuda/cuda_internal.h"
#include "test.h"

/* The GEMV launcher's old acceptance at one row (gemv_int8_dec.cu): path 1
 * always (k even), path 2 where x fits, path 0 always (it picked the kernel). */
static bool old_gemv_takes(int n, int k, int path, int n_sm) {
    if (k & 1) return false;
    if (path == 2) return dsi_cuda_gemv_int8_tc_takes(n, k, 2, n_sm);
    return true;
}

/* The old per-call choice: kernel and flags for m rows (the flags of the GEMV:
 * the path the launcher resolved 0 to). */
static enum dsi__cu_kernel old_choice(const struct dsi__cuda *c, const struct dsi__cu_matrix *w,
                                      bool allow_deq, int m, int *flags) {
    const struct dsi__cuda_switches *sw = &c->sw;
    *flags = 0;
    if (w->group > 0) return DSI__CU_GROUP;
    if (c->int8 && sw->gemv != DSI__CU_GEMV_OFF && m <= 1 && old_gemv_takes(w->n, w->k, sw->gemv, c->n_sm)) {
        *flags = sw->gemv ? sw->gemv : dsi_cuda_gemv_int8_tc_takes(w->n, w->k, 0, c->n_sm) ? 2 : 1;
        return DSI__CU_GEMV;
    }
    const bool wide = w->n >= sw->tiled_min_n, big = (size_t)w->n * (size_t)w->k * 2 > c->l2_bytes;
    if (c->int8 && sw->tiled_min > 0 && m >= sw->tiled_min &&
        ((wide && (m <= sw->tiled_max || !allow_deq || !c->deq)) ||
         (big && m >= DSI__CUDA_TILED_BIG_MIN && m <= DSI__CUDA_TILED_BIG_MAX))) {
        *flags = m <= 32 ? 0 : wide ? 4 : 6;
        return DSI__CU_TILED;
    }
    if (c->int8 && (!allow_deq || !c->deq || m <= DSI__CUDA_MMA_MAX_ROWS)) {
        *flags = sw->q8_variant;
        return DSI__CU_MMA;
    }
    return c->int8 ? DSI__CU_DEQ : DSI__CU_CUBLAS;
}

/* The plan's kernel for m rows, as cuda_forward.c looks it up. */
static const struct dsi__cu_range *lookup(const struct dsi__cu_plan *p, int m) {
    for (int i = 0; i < p->n; i++)
        if (m <= p->r[i].max_m) return &p->r[i];
    return NULL;
}

/* Plans (n, k) for 1..max_m rows and compares every row count with old_choice. */
static void check_shape(struct dsi__cuda *c, int n, int k, bool allow_deq, int max_m, const char *what) {
    static int8_t q_dummy[16];
    static float f_dummy[16];
    struct dsi__cu_matrix w = {.n = n, .k = k, .q = q_dummy, .scale = f_dummy};
    char *err = NULL;
    CHECK_EQ_INT(dsi__cuda_plan_matrix(c, &w, allow_deq, max_m, what, &err), 0);
    if (err) fprintf(stderr, "  %s\n", err);
    free(err);
    CHECK(w.plan.n >= 1 && w.plan.n <= DSI__CU_PLAN_MAX);
    CHECK(w.plan.n == 0 || w.plan.r[w.plan.n - 1].max_m == max_m);
    int bad = 0;
    for (int m = 1; m <= max_m; m++) {
        int flags = 0;
        enum dsi__cu_kernel want = old_choice(c, &w, allow_deq, m, &flags);
        const struct dsi__cu_range *r = lookup(&w.plan, m);
        if (!r || r->kernel != want || r->flags != flags) {
            if (bad++ < 3)
                fprintf(stderr, "  %s (%d x %d) m=%d: plan %s/%d, before %s/%d\n", what, n, k, m,
                        r ? dsi__cuda_kernel_name((enum dsi__cu_kernel)r->kernel) : "none", r ? r->flags : -1,
                        dsi__cuda_kernel_name(want), flags);
        }
    }
    CHECK_EQ_INT(bad, 0);
}

/* An INT8 backend state as create leaves it before planning: device sizes,
 * switches at their defaults, a dequantize scratch when steps exceed 16 rows. */
static void int8_backend(struct dsi__cuda *c, int n_sm, size_t l2, int max_tokens) {
    static uint16_t deq_dummy[16];
    memset(c, 0, sizeof *c);
    c->int8 = true;
    c->n_sm = n_sm;
    c->l2_bytes = l2;
    c->max_tokens = max_tokens;
    c->max_seqs = max_tokens < 256 ? max_tokens : 256;
    c->deq = max_tokens > DSI__CUDA_MMA_MAX_ROWS ? deq_dummy : NULL;
    c->sw = (struct dsi__cuda_switches){.graphs = true,
                                        .gemv = 0,
                                        .fuse_rope = true,
                                        .fuse_swiglu = true,
                                        .long_prefill = -1,
                                        .q8_variant = DSI_Q8_DEFAULT_VARIANT,
                                        .tiled_min = DSI__CUDA_TILED_MIN,
                                        .tiled_max = DSI__CUDA_TILED_MAX,
                                        .tiled_min_n = DSI__CUDA_TILED_MIN_N};
}

/* The 7B shape (Qwen2-7B: hidden 3584, 28/4 heads of 128, intermediate 18944,
 * vocab 152064), whole and as a tensor-parallel half. */
static void check_7b(struct dsi__cuda *c, int tp) {
    const int H = 3584, hd = 128, nq = 28 / tp * hd, nkv = 4 / tp * hd, I = 18944 / tp, V = 152064;
    const int T = c->max_tokens, S = c->max_seqs;
    check_shape(c, nq + 2 * nkv, H, true, T, "q|k|v");
    check_shape(c, H, nq, true, T, "o");
    check_shape(c, 2 * I, H, true, T, "gate|up");
    check_shape(c, H, I, true, T, "down");
    check_shape(c, (V + tp - 1) / tp, H, false, S, "lm_head");
}

TEST(cuda_plan_matches_old_choice_h200_h100_a100) {
    struct dsi__cuda c;
    const int sms[3] = {132, 132, 108};
    const size_t l2[3] = {60u << 20, 50u << 20, 40u << 20};
    for (int d = 0; d < 3; d++)
        for (int tp = 1; tp <= 2; tp++) {
            int8_backend(&c, sms[d], l2[d], 4096);
            check_7b(&c, tp);
        }
}

TEST(cuda_plan_matches_old_choice_small_steps_and_demo) {
    struct dsi__cuda c;
    int8_backend(&c, 132, 60u << 20, 16); /* no dequantize scratch */
    check_7b(&c, 1);
    int8_backend(&c, 132, 60u << 20, 512);
    check_shape(&c, 64 + 2 * 32, 64, true, 512, "demo q|k|v"); /* tiny demo-like shapes */
    check_shape(&c, 2 * 176, 64, true, 512, "demo gate|up");
    check_shape(&c, 64, 176, true, 512, "demo down");
    check_shape(&c, 1000, 64, false, 256, "demo lm_head");
}

TEST(cuda_plan_matches_old_choice_under_ab_switches) {
    struct dsi__cuda c;
    const int gemv[4] = {DSI__CU_GEMV_OFF, DSI_GEMV_FP32, DSI_GEMV_TC, 0};
    for (int i = 0; i < 4; i++) {
        int8_backend(&c, 132, 60u << 20, 1024);
        c.sw.gemv = gemv[i];
        check_7b(&c, 1);
        check_shape(&c, 64, 24320, true, 64, "wide k"); /* x too large for the tensor-core GEMV */
    }
    int8_backend(&c, 132, 60u << 20, 1024);
    c.sw.tiled_min = 0; /* DSI_CUDA_TILED=0 */
    check_7b(&c, 1);
    int8_backend(&c, 132, 60u << 20, 1024);
    c.sw.tiled_min = 4, c.sw.tiled_max = 1 << 30, c.sw.tiled_min_n = 0; /* DSI_CUDA_TILED=4 */
    check_7b(&c, 1);
    int8_backend(&c, 132, 60u << 20, 1024);
    c.sw.q8_variant = DSI_Q8_PIPELINED | DSI_Q8_WAVE_SPLIT;
    check_7b(&c, 1);
}

TEST(cuda_plan_bf16_and_group_wise) {
    struct dsi__cuda c;
    static uint16_t w_dummy[16], deq_dummy[16];
    static float g_dummy[16];
    memset(&c, 0, sizeof c);
    c.n_sm = 132;
    c.max_tokens = 300;
    struct dsi__cu_matrix w = {.n = 4608, .k = 3584, .w = w_dummy};
    CHECK_EQ_INT(dsi__cuda_plan_matrix(&c, &w, true, 300, "bf16", NULL), 0);
    CHECK(w.plan.n == 1 && w.plan.r[0].kernel == DSI__CU_CUBLAS && w.plan.r[0].max_m == 300);
    c.int8 = true;
    c.deq = deq_dummy;
    struct dsi__cu_matrix g = {.n = 4608, .k = 3584, .q = (int8_t *)w_dummy, .group = 128, .gscale = g_dummy};
    CHECK_EQ_INT(dsi__cuda_plan_matrix(&c, &g, false, 300, "group", NULL), 0);
    CHECK(g.plan.n == 1 && g.plan.r[0].kernel == DSI__CU_GROUP);
    /* without the scratch no kernel takes group-wise weights: an error at load, not a step */
    c.deq = NULL;
    char *err = NULL;
    CHECK_EQ_INT(dsi__cuda_plan_matrix(&c, &g, false, 300, "group", &err), DSI_EINTERNAL);
    CHECK(err && strstr(err, "no kernel takes"));
    free(err);
}

TEST(cuda_plan_fuses_swiglu_where_the_one_row_kernel_is_the_tensor_core_gemv) {
    struct dsi__cuda c;
    int8_backend(&c, 132, 60u << 20, 64);
    c.cfg.n_layers = 1;
    struct dsi__cu_layer ly = {0};
    static int8_t q_dummy[16];
    static float f_dummy[16];
    const struct dsi__cu_matrix proto = {.q = q_dummy, .scale = f_dummy};
    ly.qkv = proto, ly.qkv.n = 4608, ly.qkv.k = 3584;
    ly.o = proto, ly.o.n = 3584, ly.o.k = 3584;
    ly.gate_up = proto, ly.gate_up.n = 37888, ly.gate_up.k = 3584;
    ly.down = proto, ly.down.n = 3584, ly.down.k = 18944;
    c.lm_head = proto, c.lm_head.n = 152064, c.lm_head.k = 3584;
    c.layers = &ly;
    c.gate_up_il8 = DSI_GLU_IL8;
    CHECK_EQ_INT(dsi__cuda_plan(&c, NULL), 0);
    CHECK(ly.gate_up.plan.swiglu1); /* 2368 row tiles >= 4 x 132 SMs */
    c.sw.fuse_swiglu = false;       /* DSI_CUDA_FUSE_SWIGLU=0 */
    CHECK_EQ_INT(dsi__cuda_plan(&c, NULL), 0);
    CHECK(!ly.gate_up.plan.swiglu1);
    c.sw.fuse_swiglu = true;
    c.n_sm = 1000; /* fewer than 4 row tiles per SM: the CUDA-core GEMV, no fused epilogue */
    CHECK_EQ_INT(dsi__cuda_plan(&c, NULL), 0);
    CHECK(!ly.gate_up.plan.swiglu1);
    CHECK(ly.gate_up.plan.r[0].kernel == DSI__CU_GEMV && ly.gate_up.plan.r[0].flags == DSI_GEMV_FP32);
    c.n_sm = 132;
    c.gate_up_il8 = 0; /* stacked gate | up */
    CHECK_EQ_INT(dsi__cuda_plan(&c, NULL), 0);
    CHECK(!ly.gate_up.plan.swiglu1);
}

/* int8_mode w8a8: the layer matrices (those with a row-major int8 copy) take
 * W8A8 at every row count, one range from 1 to the step limit, so no step's
 * size switches a weight between W8A8 and W8A16 (issue 26 item 5); the
 * lm_head (no such copy) keeps its W8A16 plan, and no SwiGLU fusion is
 * planned for a gate|up that the one-row GEMV does not take. */
TEST(cuda_plan_w8a8_takes_every_row_count_of_the_layer_matrices) {
    struct dsi__cuda c;
    int8_backend(&c, 132, 60u << 20, 2048);
    c.w8a8 = true;
    c.cfg.n_layers = 1;
    static int8_t q8_dummy[16];
    static float f_dummy[16];
    const struct dsi__cu_matrix proto = {.q8r = q8_dummy, .scale = f_dummy};
    struct dsi__cu_layer ly = {0};
    ly.qkv = proto, ly.qkv.n = 4608, ly.qkv.k = 3584;
    ly.o = proto, ly.o.n = 3584, ly.o.k = 3584;
    ly.gate_up = proto, ly.gate_up.n = 37888, ly.gate_up.k = 3584;
    ly.down = proto, ly.down.n = 3584, ly.down.k = 18944;
    static int8_t q_dummy[16];
    c.lm_head = (struct dsi__cu_matrix){.n = 152064, .k = 3584, .q = q_dummy, .scale = f_dummy};
    c.layers = &ly;
    c.gate_up_il8 = DSI_GLU_IL8;
    CHECK_EQ_INT(dsi__cuda_plan(&c, NULL), 0);
    const struct dsi__cu_matrix *ms[4] = {&ly.qkv, &ly.o, &ly.gate_up, &ly.down};
    for (int i = 0; i < 4; i++)
        CHECK(ms[i]->plan.n == 1 && ms[i]->plan.r[0].kernel == DSI__CU_W8A8 && ms[i]->plan.r[0].max_m == 2048);
    CHECK(!ly.gate_up.plan.swiglu1);
    CHECK(c.lm_head.plan.n >= 1 && c.lm_head.plan.r[0].kernel == DSI__CU_GEMV);
    for (int i = 0; i < c.lm_head.plan.n; i++)
        CHECK(c.lm_head.plan.r[i].kernel != DSI__CU_W8A8);
    CHECK(!strcmp(dsi__cuda_kernel_name(DSI__CU_W8A8), "w8a8-cublaslt"));
    /* an input width cuBLASLt's int8 layout cannot take is a load error, not a step's */
    ly.o.k = 3582;
    char *err = NULL;
    CHECK_EQ_INT(dsi__cuda_plan(&c, &err), DSI_EINTERNAL);
    CHECK(err && strstr(err, "no kernel takes"));
    free(err);
}

int main(void) {
    RUN(cuda_plan_matches_old_choice_h200_h100_a100);
    RUN(cuda_plan_matches_old_choice_small_steps_and_demo);
    RUN(cuda_plan_matches_old_choice_under_ab_switches);
    RUN(cuda_plan_bf16_and_group_wise);
    RUN(cuda_plan_fuses_swiglu_where_the_one_row_kernel_is_the_tensor_core_gemv);
    RUN(cuda_plan_w8a8_takes_every_row_count_of_the_layer_matrices);
    return test_summary();
}
