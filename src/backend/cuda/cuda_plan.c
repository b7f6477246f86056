/*
 * cuda_plan.c: which kernel runs each matmul of the CUDA backend, decided once
 * at create, and the A/B switches (the one place that reads DSI_CUDA_*).
 *
 * A plan (struct dsi__cu_plan) belongs to one weight matrix: a few ranges of
 * row counts m, each with a kernel (enum dsi__cu_kernel) and its variant
 * flags. dsi__cuda_plan_matrix makes it from the matrix shape, the device (SM
 * count, L2 size), the buffers create allocated (the bf16 dequantize scratch)
 * and the switches, by asking choose() for every m from 1 to the step limit
 * and merging equal neighbours. choose() keeps a kernel only where its
 * supports() predicate holds for the shape, so a kernel that refuses a planned
 * product (DSI_EINVAL) is a bug, and cuda_forward.c reports it as one.
 *
 * The decisions and their measurements (H200, 7B shape, bench/RESULTS.md):
 * - one row: the decode GEMV (gemv_int8_dec.cu), on the tensor cores for
 *   matrices of >= 4 row tiles per SM (gate|up, lm_head), else the CUDA cores;
 *   it beats the tensor-core mma kernel only at one row (qkv 10.9 vs 15.5 us,
 *   o 9.3 vs 13.4 us; at eight rows gate_up 161 vs 60 us: "Final GPU run");
 * - the tiled INT8 GEMM for DSI__CUDA_TILED_MIN..MAX rows of the wide
 *   matrices (and all rows of those that may not dequantize: the lm_head),
 *   and for BIG_MIN..BIG_MAX rows of those whose bf16 copy overflows L2
 *   (cuda_internal.h gives the numbers); above 32 rows it stages its weights
 *   in shared memory (DSI_Q8T_SMEM_W, plus DSI_Q8T_BM32 for the narrow ones);
 * - the mma.sync INT8 kernel up to DSI__CUDA_MMA_MAX_ROWS rows (and all rows
 *   where no dequantize scratch exists or the matrix may not dequantize);
 * - above: dequantize to bf16 + cuBLAS, the per-channel scale and bias left
 *   to the consumer (an epilogue) where it takes one;
 * - bf16 weights: cuBLAS; group-wise INT8: dequantize in two parts + cuBLAS;
 * - int8_mode w8a8: the layers' matrices (those with a row-major int8 copy)
 *   take W8A8 through cuBLASLt at every row count (cuda_w8a8.c). Chosen per
 *   weight at load, never by the step's size: W8A8 and W8A16 give different
 *   bits, and a per-step switch would make a row depend on its batch. The
 *   crossover measured on an H100 (bench/RESULTS.md: cuBLASLt int8 ahead at
 *   m = 2048, behind at m <= 64 on q|k|v and o) is what a per-step `auto`
 *   under batch_invariant false would use; not built.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"

/* True when $name is exactly value. */
static bool env_is(const char *name, const char *value) {
    const char *v = getenv(name);
    return v && !strcmp(v, value);
}

void dsi__cuda_switches_read(struct dsi__cuda_switches *sw) {
    *sw = (struct dsi__cuda_switches){
        .graphs = !env_is("DSI_CUDA_GRAPHS", "0"),
        .gemv = env_is("DSI_CUDA_GEMV", "old")    ? DSI__CU_GEMV_OFF
                : env_is("DSI_CUDA_GEMV", "fp32") ? DSI_GEMV_FP32
                : env_is("DSI_CUDA_GEMV", "tc")   ? DSI_GEMV_TC
                                                  : 0,
        .fuse_rope = !env_is("DSI_CUDA_FUSE_ROPE", "0"),
        .fuse_swiglu = !env_is("DSI_CUDA_FUSE_SWIGLU", "0"),
        .long_prefill = env_is("DSI_CUDA_LONG_PREFILL", "0") ? 0
                        : getenv("DSI_CUDA_LONG_PREFILL")    ? 1
                                                             : -1,
        .q8_variant = DSI_Q8_DEFAULT_VARIANT,
        .tiled_min = DSI__CUDA_TILED_MIN,
        .tiled_max = DSI__CUDA_TILED_MAX,
        .tiled_min_n = DSI__CUDA_TILED_MIN_N,
        .load = env_is("DSI_CUDA_LOAD", "two-pass")      ? DSI__CU_LOAD_TWO_PASS
                : env_is("DSI_CUDA_LOAD", "single-pass") ? DSI__CU_LOAD_SINGLE_PASS
                                                         : DSI__CU_LOAD_AUTO,
        .tp_nccl = env_is("DSI_CUDA_TP_ALLREDUCE", "nccl"),
    };
    const char *v = getenv("DSI_CUDA_Q8_VARIANT");
    if (v && v[0] >= '0' && v[0] <= '7' && !v[1]) sw->q8_variant = v[0] - '0';
    const char *t = getenv("DSI_CUDA_TILED"); /* "MIN[,MAX[,MIN_N]]"; "0": off */
    if (t) {
        sw->tiled_min_n = 0;
        int got = sscanf(t, "%d,%d,%d", &sw->tiled_min, &sw->tiled_max, &sw->tiled_min_n);
        if (got < 1 || sw->tiled_min < 0) sw->tiled_min = 0;
        if (got == 1) sw->tiled_max = 1 << 30;
    }
}

const char *dsi__cuda_kernel_name(enum dsi__cu_kernel k) {
    static const char *const names[] = {
        [DSI__CU_CUBLAS] = "cublas-bf16", [DSI__CU_GROUP] = "group-dequant+cublas",
        [DSI__CU_GEMV] = "gemv-int8",     [DSI__CU_TILED] = "gemm-int8-tiled",
        [DSI__CU_MMA] = "gemm-int8-mma",  [DSI__CU_DEQ] = "dequant+cublas",
        [DSI__CU_W8A8] = "w8a8-cublaslt",
    };
    return (unsigned)k < sizeof names / sizeof names[0] ? names[k] : "?";
}

/* Whether kernel kn with flags takes m rows of w on this backend: the
 * launchers' own argument checks (kernels.h), so a planned launch is never
 * refused. Pointers: every weight and activation buffer is a cudaMalloc
 * base (256-byte aligned). */
static bool supports(const struct dsi__cuda *c, const struct dsi__cu_matrix *w, enum dsi__cu_kernel kn,
                     int flags, int m) {
    const int n = w->n, k = w->k;
    if (n <= 0 || k <= 0 || m <= 0) return false;
    switch (kn) {
    case DSI__CU_CUBLAS:
        return !c->int8 && w->w;
    case DSI__CU_GROUP:
        return c->int8 && w->group > 0 && k % w->group == 0 && c->deq && w->gscale;
    case DSI__CU_GEMV:
        if (!c->int8 || w->group || m > DSI_Q8_GEMV_MAX_ROWS || (k & 1)) return false;
        return flags == DSI_GEMV_FP32 ||
               (flags == DSI_GEMV_TC && m == 1 && dsi_cuda_gemv_int8_tc_takes(n, k, DSI_GEMV_TC, c->n_sm));
    case DSI__CU_TILED:
        return c->int8 && !w->group && flags >= 0 && flags <= 7 && (n + 127) / 128 <= 65535;
    case DSI__CU_MMA:
        return c->int8 && !w->group && flags >= 0 && flags <= 7 && (m + 63) / 64 <= 65535;
    case DSI__CU_DEQ:
        return c->int8 && !w->group && c->deq && (n + 15) / 16 <= 65535;
    case DSI__CU_W8A8:
        return c->w8a8 && w->q8r && w->scale && k % 4 == 0 && m <= c->max_tokens;
    }
    return false;
}

/* The kernel for m rows of w (see the file comment); flags its variant. */
static enum dsi__cu_kernel choose(const struct dsi__cuda *c, const struct dsi__cu_matrix *w, bool allow_deq,
                                  int m, int *flags) {
    const struct dsi__cuda_switches *sw = &c->sw;
    *flags = 0;
    if (!c->int8) return DSI__CU_CUBLAS;
    if (w->group > 0) return DSI__CU_GROUP;
    if (w->q8r) return DSI__CU_W8A8; /* every row count: exact int32 sums, batch invariant */
    if (sw->gemv != DSI__CU_GEMV_OFF && m <= DSI__CUDA_GEMV_MAX_ROWS) {
        /* path 0: the tensor cores where the matrix has >= 4 row tiles per SM */
        int path = sw->gemv                                              ? sw->gemv
                   : dsi_cuda_gemv_int8_tc_takes(w->n, w->k, 0, c->n_sm) ? DSI_GEMV_TC
                                                                         : DSI_GEMV_FP32;
        if (supports(c, w, DSI__CU_GEMV, path, m)) {
            *flags = path;
            return DSI__CU_GEMV;
        }
    }
    const bool deq = allow_deq && c->deq;
    const bool wide = w->n >= sw->tiled_min_n, big = (size_t)w->n * (size_t)w->k * 2 > c->l2_bytes;
    if (sw->tiled_min > 0 && m >= sw->tiled_min &&
        ((wide && (m <= sw->tiled_max || !deq)) ||
         (big && m >= DSI__CUDA_TILED_BIG_MIN && m <= DSI__CUDA_TILED_BIG_MAX))) {
        *flags = m <= 32 ? 0 : wide ? DSI_Q8T_SMEM_W : DSI_Q8T_SMEM_W | DSI_Q8T_BM32;
        return DSI__CU_TILED;
    }
    if (!deq || m <= DSI__CUDA_MMA_MAX_ROWS) {
        *flags = sw->q8_variant;
        return DSI__CU_MMA;
    }
    return DSI__CU_DEQ;
}

int dsi__cuda_plan_matrix(const struct dsi__cuda *c, struct dsi__cu_matrix *w, bool allow_deq, int max_m,
                          const char *what, char **err) {
    struct dsi__cu_plan *p = &w->plan;
    memset(p, 0, sizeof *p);
    for (int m = 1; m <= max_m; m++) {
        int flags = 0;
        enum dsi__cu_kernel kn = choose(c, w, allow_deq, m, &flags);
        if (!supports(c, w, kn, flags, m))
            return dsi_seterr(err, DSI_EINTERNAL, "cuda: %s (%d x %d): no kernel takes %d rows (%s chosen)",
                              what, w->n, w->k, m, dsi__cuda_kernel_name(kn));
        struct dsi__cu_range *last = p->n ? &p->r[p->n - 1] : NULL;
        if (last && last->kernel == kn && last->flags == flags) {
            last->max_m = m;
            continue;
        }
        if (p->n == DSI__CU_PLAN_MAX)
            return dsi_seterr(err, DSI_EINTERNAL, "cuda: %s: more than %d kernel ranges", what,
                              DSI__CU_PLAN_MAX);
        p->r[p->n++] = (struct dsi__cu_range){.max_m = m, .kernel = (uint8_t)kn, .flags = (uint8_t)flags};
    }
    return 0;
}

/* gate|up of one row: SwiGLU in the tensor-core GEMV's epilogue where its
 * one-row plan is that kernel, the rows are interleaved by 8 and whole tiles
 * (dsi_cuda_gemv_int8_swiglu's conditions). */
static bool swiglu_fused(const struct dsi__cuda *c, const struct dsi__cu_matrix *gu) {
    const struct dsi__cu_range *r = gu->plan.n ? &gu->plan.r[0] : NULL;
    return c->sw.fuse_swiglu && c->gate_up_il8 && gu->n % 16 == 0 && r && r->kernel == DSI__CU_GEMV &&
           r->flags == DSI_GEMV_TC;
}

int dsi__cuda_plan(struct dsi__cuda *c, char **err) {
    int rc = 0;
    const int T = c->max_tokens;
    if (c->mla && (rc = dsi__cuda_mla_plan(c, err))) return rc;
    for (int il = 0; il < c->cfg.n_layers && !rc && !c->mla; il++) {
        struct dsi__cu_layer *ly = &c->layers[il];
        if ((rc = dsi__cuda_plan_matrix(c, &ly->qkv, true, T, "q|k|v", err)) ||
            (rc = dsi__cuda_plan_matrix(c, &ly->o, true, T, "o", err)) ||
            (rc = dsi__cuda_plan_matrix(c, &ly->gate_up, true, T, "gate|up", err)) ||
            (rc = dsi__cuda_plan_matrix(c, &ly->down, true, T, "down", err)))
            return rc;
        ly->gate_up.plan.swiglu1 = swiglu_fused(c, &ly->gate_up);
    }
    /* the lm_head never dequantizes (vocab x hidden bf16 would be the largest
     * scratch): its rows are the step's logit rows, at most max_seqs */
    if ((rc = dsi__cuda_plan_matrix(c, &c->lm_head, false, c->max_seqs, "lm_head", err))) return rc;
    return 0;
}

/* One line per matrix kind (every layer has the same shapes), e.g.
 * "gate|up 37888x3584: 1 gemv-int8/2, 2-32 gemm-int8-tiled/0, ...". */
static void log_plan(const char *what, const struct dsi__cu_matrix *w) {
    char line[512];
    int at = snprintf(line, sizeof line, "%s %dx%d:", what, w->n, w->k);
    for (int i = 0, lo = 1; i < w->plan.n && at > 0 && (size_t)at < sizeof line; i++) {
        const struct dsi__cu_range *r = &w->plan.r[i];
        const char *name = dsi__cuda_kernel_name((enum dsi__cu_kernel)r->kernel);
        if (lo == r->max_m)
            at += snprintf(line + at, sizeof line - (size_t)at, " %d %s/%d", lo, name, r->flags);
        else
            at += snprintf(line + at, sizeof line - (size_t)at, " %d-%d %s/%d", lo, r->max_m, name, r->flags);
        lo = r->max_m + 1;
    }
    dsi_log(DSI_LOG_DEBUG, "cuda", "matmul plan: %s%s", line, w->plan.swiglu1 ? " (+swiglu at 1 row)" : "");
}

void dsi__cuda_plan_log(const struct dsi__cuda *c) {
    if (c->cfg.n_layers <= 0) return;
    const struct dsi__cu_layer *ly = &c->layers[0];
    if (c->mla) { /* every DeepSeek matrix kind: o and the lm_head stand for them */
        log_plan("o", &ly->o);
        log_plan("lm_head", &c->lm_head);
        return;
    }
    log_plan("q|k|v", &ly->qkv);
    log_plan("o", &ly->o);
    log_plan("gate|up", &ly->gate_up);
    log_plan("down", &ly->down);
    log_plan("lm_head", &c->lm_head);
}
