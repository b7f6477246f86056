/*
 * bench_cuda_gemv.c: kernel microbenchmarks of the CUDA backend on 7B-shape
 * tensors, printed as time, bytes moved and GB/s next to the H200's measured
 * 4.25 TB/s copy rate.
 *
 * INT8 matmul: each matrix shape of one Qwen2-7B layer (qkv, o, gate|up, down)
 * and the lm_head, at 1..256 rows of x; every call reads a different copy of
 * the matrix (>= 1 GiB in rotation) so L2 (50 MB) never serves the weights, as
 * in a real step. Also: bf16 cuBLAS at the same shapes, decode attention over
 * the paged cache, add+RMSNorm. Times come from CUDA events over 50 calls.
 *
 * The CUDA-core decode GEMV (dsi_cuda_gemv_int8, m <= 8) prints as "gemv-new"
 * next to the tensor-core "int8vN" lines; VARIANT 8 in --one selects it.
 * The tiled batched-decode GEMM (dsi_cuda_gemm_int8_tiled) prints as
 * "int8tiledV" (V: its code variant) at m = 16..256 beside "int8v1" and
 * "deq+cublas" (the backend's path above 16 rows); VARIANT 10 + V in --one
 * selects tiled variant V alone.
 *
 *   bench_cuda_gemv [--quick | --attn | --one NAME M VARIANT]
 *   (--attn: attention, the INT8 -> bf16 dequantization and the norm only)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "kernels.h"

#define PEAK_GBS 4250.0
#define ITERS 50

struct mat {
    const char *name;
    int n, k;
};

static const struct mat mats[] = {
    {"qkv", 4608, 3584},   {"o", 3584, 3584},         {"gate_up", 37888, 3584},
    {"down", 3584, 18944}, {"lm_head", 152064, 3584},
};

static int ck(cudaError_t e, const char *what) {
    if (e != cudaSuccess) {
        fprintf(stderr, "bench: %s: %s\n", what, cudaGetErrorString(e));
        return 1;
    }
    return 0;
}

static double time_ms(cudaEvent_t a, cudaEvent_t b) {
    float ms = 0;
    cudaEventSynchronize(b);
    cudaEventElapsedTime(&ms, a, b);
    return ms;
}

static int bench_int8(const struct mat *mt, const int *ms, int n_ms, cublasHandle_t blas, cudaEvent_t e0,
                      cudaEvent_t e1, const struct dsi_cuda_gemm_ws *ws, int only_var) {
    size_t qb = dsi_cuda_q8_bytes(mt->n, mt->k), wb = (size_t)mt->n * mt->k * 2;
    int copies = (int)((1ull << 30) / qb) + 1;
    if (copies > 64) copies = 64;
    int8_t **q = calloc((size_t)copies, sizeof *q);
    float *sc, *y;
    uint16_t *w, *x;
    int maxm = ms[n_ms - 1];
    if (ck(cudaMalloc((void **)&w, wb), "w") || ck(cudaMalloc((void **)&sc, (size_t)mt->n * 4), "scale") ||
        ck(cudaMalloc((void **)&x, (size_t)maxm * mt->k * 2), "x") ||
        ck(cudaMalloc((void **)&y, (size_t)maxm * mt->n * 4), "y"))
        return 1;
    dsi_cuda_fill_random_bf16(w, (size_t)mt->n * mt->k, 1, 0.05f, 0);
    dsi_cuda_fill_random_bf16(x, (size_t)maxm * mt->k, 2, 1.f, 0);
    for (int c = 0; c < copies; c++) {
        if (ck(cudaMalloc((void **)&q[c], qb), "q")) return 1;
        dsi_cuda_quantize_int8(q[c], sc, w, mt->n, mt->k, 0);
    }
    cudaDeviceSynchronize();
    for (int i = 0; i < n_ms * 8; i++) {
        int m = ms[i / 8], var = i % 8;
        if (var != DSI_Q8_DEFAULT_VARIANT && m > 8) continue; /* variants compared at decode sizes */
        if (only_var >= 0 && var != only_var) continue;       /* only_var 8: the decode GEMV only */
        dsi_cuda_gemm_int8_variant(y, x, q[0], sc, NULL, m, mt->n, mt->k, ws, var, 0); /* warm-up */
        cudaEventRecord(e0, 0);
        for (int it = 0; it < ITERS; it++)
            dsi_cuda_gemm_int8_variant(y, x, q[it % copies], sc, NULL, m, mt->n, mt->k, ws, var, 0);
        cudaEventRecord(e1, 0);
        double us = time_ms(e0, e1) * 1000.0 / ITERS;
        double passes = (m + 63) / 64;
        double bytes = passes * ((double)qb + mt->n * 4.0) + (double)m * mt->k * 2 + (double)m * mt->n * 4;
        double gbs = bytes / us / 1e3;
        printf("int8v%d %-8s n=%6d k=%5d m=%3d  %8.2f us  %7.1f MB  %7.1f GB/s  %5.1f%% of 4.25 TB/s  %6.1f "
               "TFLOP/s\n",
               var, mt->name, mt->n, mt->k, m, us, bytes / 1e6, gbs, 100.0 * gbs / PEAK_GBS,
               2.0 * m * mt->n * mt->k / us / 1e6);
    }
    /* the CUDA-core decode GEMV (variant "8" for --one) next to the default
     * tensor-core variant, same bytes counted */
    for (int i = 0; i < n_ms && (only_var < 0 || only_var == 8); i++) {
        int m = ms[i];
        if (m > DSI_Q8_GEMV_MAX_ROWS) continue;
        if (dsi_cuda_gemv_int8(y, x, q[0], sc, NULL, m, mt->n, mt->k, 0)) { /* warm-up */
            fprintf(stderr, "bench: gemv %s m=%d rejected\n", mt->name, m);
            continue;
        }
        cudaEventRecord(e0, 0);
        for (int it = 0; it < ITERS; it++)
            dsi_cuda_gemv_int8(y, x, q[it % copies], sc, NULL, m, mt->n, mt->k, 0);
        cudaEventRecord(e1, 0);
        double us = time_ms(e0, e1) * 1000.0 / ITERS;
        double bytes = ((double)qb + mt->n * 4.0) + (double)m * mt->k * 2 + (double)m * mt->n * 4;
        double gbs = bytes / us / 1e3;
        printf("gemv-new %-8s n=%6d k=%5d m=%3d  %8.2f us  %7.1f MB  %7.1f GB/s  %5.1f%% of 4.25 TB/s  (old: "
               "int8v%d line above)\n",
               mt->name, mt->n, mt->k, m, us, bytes / 1e6, gbs, 100.0 * gbs / PEAK_GBS,
               DSI_Q8_DEFAULT_VARIANT);
    }
    /* bf16 cuBLAS at the same shape (one copy: >= 25 MB, so mostly out of L2 except o) */
    const float one = 1.f, zero = 0.f;
    for (int i = 0; i < n_ms && only_var < 0; i++) {
        int m = ms[i];
        cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, mt->n, m, mt->k, &one, w, CUDA_R_16BF, mt->k, x,
                     CUDA_R_16BF, mt->k, &zero, y, CUDA_R_32F, mt->n, CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT); /* warm-up */
        cudaEventRecord(e0, 0);
        for (int it = 0; it < ITERS; it++)
            cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, mt->n, m, mt->k, &one, w, CUDA_R_16BF, mt->k, x,
                         CUDA_R_16BF, mt->k, &zero, y, CUDA_R_32F, mt->n, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT);
        cudaEventRecord(e1, 0);
        double us = time_ms(e0, e1) * 1000.0 / ITERS;
        double bytes = (double)wb + (double)m * mt->k * 2 + (double)m * mt->n * 4;
        printf("bf16 %-8s n=%6d k=%5d m=%3d  %8.2f us  %7.1f MB  %7.1f GB/s  %5.1f%% of 4.25 TB/s (cuBLAS)\n",
               mt->name, mt->n, mt->k, m, us, bytes / 1e6, bytes / us / 1e3,
               100.0 * bytes / us / 1e3 / PEAK_GBS);
    }
    for (int c = 0; c < copies; c++)
        cudaFree(q[c]);
    free(q);
    cudaFree(w), cudaFree(sc), cudaFree(x), cudaFree(y);
    return ck(cudaGetLastError(), "int8 bench");
}

/* Tiled INT8 GEMM (dsi_cuda_gemm_int8_tiled_variant) for batched decode, beside
 * the default tensor-core variant and the dequantize + cuBLAS path the backend
 * takes above 16 rows today, on rotated weight copies. Tiled variants: 0 (the
 * default), 4 (weights via shared memory), 2 and 6 (32-row blocks, m > 32
 * only), 1 (no split-K, matrices of <= 4608 rows only). Bytes: the tiled kernel
 * is counted with W read once (its m chunks share W through L2), the others as
 * they move data. TFLOP/s = 2 m n k / time. only: -1 all, else that tiled
 * variant alone. */
static int bench_tiled(const struct mat *mt, const int *ms, int n_ms, cublasHandle_t blas, cudaEvent_t e0,
                       cudaEvent_t e1, const struct dsi_cuda_gemm_ws *ws, int only) {
    size_t qb = dsi_cuda_q8_bytes(mt->n, mt->k), wb = (size_t)mt->n * mt->k * 2;
    int copies = (int)((1ull << 30) / qb) + 1;
    if (copies > 64) copies = 64;
    int8_t **q = calloc((size_t)copies, sizeof *q);
    float *sc, *y;
    uint16_t *w, *x;
    int maxm = ms[n_ms - 1];
    if (!q) return 1;
    if (ck(cudaMalloc((void **)&w, wb), "w") || ck(cudaMalloc((void **)&sc, (size_t)mt->n * 4), "scale") ||
        ck(cudaMalloc((void **)&x, (size_t)maxm * mt->k * 2), "x") ||
        ck(cudaMalloc((void **)&y, (size_t)maxm * mt->n * 4), "y"))
        return 1;
    dsi_cuda_fill_random_bf16(w, (size_t)mt->n * mt->k, 1, 0.05f, 0);
    dsi_cuda_fill_random_bf16(x, (size_t)maxm * mt->k, 2, 1.f, 0);
    for (int c = 0; c < copies; c++) {
        if (ck(cudaMalloc((void **)&q[c], qb), "q")) return 1;
        dsi_cuda_quantize_int8(q[c], sc, w, mt->n, mt->k, 0);
    }
    cudaDeviceSynchronize();
    const float one = 1.f, zero = 0.f;
    for (int i = 0; i < n_ms; i++) {
        int m = ms[i];
        double flop = 2.0 * m * mt->n * mt->k, io = (double)m * mt->k * 2 + (double)m * mt->n * 4;
        /* kind: tiled variant 0 4 2 6 1, then the default int8 variant, dequant + cuBLAS */
        static const int tv[7] = {0, 4, 2, 6, 1, -1, -2};
        for (int kind = 0; kind < 7; kind++) {
            int var = tv[kind];
            if (only >= 0 && var != only) continue;
            if ((var == 2 || var == 6) && m <= 32) continue;
            if (var == 1 && mt->n > 4608) continue;
            int rc = 0;
            for (int it = -1; it < ITERS && !rc; it++) { /* it -1: warm-up */
                if (it == 0) cudaEventRecord(e0, 0);
                const int8_t *qc = q[it < 0 ? 0 : it % copies];
                if (var >= 0) {
                    rc = dsi_cuda_gemm_int8_tiled_variant(y, x, qc, sc, NULL, m, mt->n, mt->k, ws, var, 0);
                } else if (var == -1) {
                    rc = dsi_cuda_gemm_int8_variant(y, x, qc, sc, NULL, m, mt->n, mt->k, ws,
                                                    DSI_Q8_DEFAULT_VARIANT, 0);
                } else {
                    rc = dsi_cuda_dequant_int8(w, qc, NULL, mt->n, mt->k, 0);
                    if (!rc)
                        rc = cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, mt->n, m, mt->k, &one, w,
                                          CUDA_R_16BF, mt->k, x, CUDA_R_16BF, mt->k, &zero, y, CUDA_R_32F,
                                          mt->n, CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS;
                    if (!rc) rc = dsi_cuda_scale_bias(y, sc, NULL, m, mt->n, 0);
                }
            }
            cudaEventRecord(e1, 0);
            if (rc) {
                fprintf(stderr, "bench: %s m=%d kind %d failed (%d)\n", mt->name, m, var, rc);
                return 1;
            }
            double us = time_ms(e0, e1) * 1000.0 / ITERS;
            double bytes = var >= 0    ? (double)qb + mt->n * 4.0 + io
                           : var == -1 ? (double)((m + 63) / 64) * ((double)qb + mt->n * 4.0) + io
                                       : (double)qb + 2.0 * wb + mt->n * 4.0 + io + 2.0 * m * mt->n * 4;
            double gbs = bytes / us / 1e3;
            char label[24];
            if (var >= 0)
                snprintf(label, sizeof label, "int8tiled%d", var);
            else
                snprintf(label, sizeof label, "%s", var == -1 ? "int8v1    " : "deq+cublas");
            printf("%s %-8s n=%6d k=%5d m=%3d  %8.2f us  %7.1f MB  %7.1f GB/s  %5.1f%% of 4.25 TB/s  %6.1f "
                   "TFLOP/s\n",
                   label, mt->name, mt->n, mt->k, m, us, bytes / 1e6, gbs, 100.0 * gbs / PEAK_GBS,
                   flop / us / 1e6);
        }
    }
    for (int c = 0; c < copies; c++)
        cudaFree(q[c]);
    free(q);
    cudaFree(w), cudaFree(sc), cudaFree(x), cudaFree(y);
    return ck(cudaGetLastError(), "tiled bench");
}

/* Decode attention, 7B shape (28 heads / 4 kv heads, hd 128), n_seqs x ctx. */
static int bench_attn(int n_seqs, int ctx, cudaEvent_t e0, cudaEvent_t e1) {
    const int nh = 28, nkv = 4, hd = 128, bs = 16, kv_dim = nkv * hd;
    int bps = (ctx + bs - 1) / bs, n_blocks = n_seqs * bps;
    size_t slots = (size_t)n_blocks * bs;
    uint16_t *k, *v, *out;
    float *q, *work;
    int32_t *bt, *hbt = malloc((size_t)n_blocks * 4);
    struct dsi_cuda_attn_seq *sq, *hsq = malloc((size_t)n_seqs * sizeof *hsq);
    for (int i = 0; i < n_blocks; i++)
        hbt[i] = (int32_t)(((long long)i * 7919) % n_blocks);
    for (int s = 0; s < n_seqs; s++)
        hsq[s] = (struct dsi_cuda_attn_seq){s, 1, ctx - 1, s * bps};
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    int splits = dsi_cuda_attn_decode_splits(n_seqs, nkv, ctx, prop.multiProcessorCount);
    size_t wbytes = dsi_cuda_attn_work_bytes(n_seqs, nh, hd, splits);
    if (ck(cudaMalloc((void **)&k, slots * kv_dim * 2), "k") ||
        ck(cudaMalloc((void **)&v, slots * kv_dim * 2), "v") ||
        ck(cudaMalloc((void **)&out, (size_t)n_seqs * nh * hd * 2), "out") ||
        ck(cudaMalloc((void **)&q, (size_t)n_seqs * (nh + 2 * nkv) * hd * 4), "q") ||
        ck(cudaMalloc((void **)&work, wbytes), "work") ||
        ck(cudaMalloc((void **)&bt, (size_t)n_blocks * 4), "bt") ||
        ck(cudaMalloc((void **)&sq, (size_t)n_seqs * sizeof *sq), "sq"))
        return 1;
    dsi_cuda_fill_random_bf16(k, slots * kv_dim, 3, 1.f, 0);
    dsi_cuda_fill_random_bf16(v, slots * kv_dim, 4, 1.f, 0);
    cudaMemset(q, 0, (size_t)n_seqs * (nh + 2 * nkv) * hd * 4);
    cudaMemcpy(bt, hbt, (size_t)n_blocks * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(sq, hsq, (size_t)n_seqs * sizeof *sq, cudaMemcpyHostToDevice);
    struct dsi_cuda_attn_args a = {.q = q,
                                   .q_stride = (nh + 2 * nkv) * hd,
                                   .k_cache = k,
                                   .v_cache = v,
                                   .out = out,
                                   .seqs = sq,
                                   .n_seqs = n_seqs,
                                   .block_tables = bt,
                                   .block_size = bs,
                                   .n_heads = nh,
                                   .n_kv_heads = nkv,
                                   .head_dim = hd,
                                   .scale = 0.088f,
                                   .max_ctx = ctx,
                                   .max_n_q = 1,
                                   .n_splits = splits,
                                   .work = work,
                                   .work_bytes = wbytes};
    dsi_cuda_attn_decode(&a, 0);
    cudaEventRecord(e0, 0);
    for (int it = 0; it < ITERS; it++)
        dsi_cuda_attn_decode(&a, 0);
    cudaEventRecord(e1, 0);
    double us = time_ms(e0, e1) * 1000.0 / ITERS;
    double bytes = (double)n_seqs * ctx * kv_dim * 2 * 2;
    printf("attn decode seqs=%3d ctx=%5d splits=%2d  %8.2f us  %7.1f MB  %7.1f GB/s  %5.1f%% of 4.25 TB/s\n",
           n_seqs, ctx, splits, us, bytes / 1e6, bytes / us / 1e3, 100.0 * bytes / us / 1e3 / PEAK_GBS);
    /* prefill of one 2k prompt (causal): FLOPs = 4 * nh * hd * T^2 / 2 */
    if (n_seqs == 1 && ctx == 2048) {
        hsq[0] = (struct dsi_cuda_attn_seq){0, ctx, 0, 0};
        float *q2;
        uint16_t *out2;
        if (ck(cudaMalloc((void **)&q2, (size_t)ctx * (nh + 2 * nkv) * hd * 4), "q2") ||
            ck(cudaMalloc((void **)&out2, (size_t)ctx * nh * hd * 2), "out2"))
            return 1;
        cudaMemset(q2, 0, (size_t)ctx * (nh + 2 * nkv) * hd * 4);
        cudaMemcpy(sq, hsq, sizeof *sq, cudaMemcpyHostToDevice);
        a.q = q2, a.out = out2, a.max_n_q = ctx;
        dsi_cuda_attn_prefill(&a, 0);
        cudaEventRecord(e0, 0);
        for (int it = 0; it < 5; it++)
            dsi_cuda_attn_prefill(&a, 0);
        cudaEventRecord(e1, 0);
        double us2 = time_ms(e0, e1) * 1000.0 / 5;
        double fl = 4.0 * nh * hd * (double)ctx * ctx / 2;
        printf("attn prefill T=%d  %8.2f us  %6.1f TFLOP/s (per layer; x28 = %.1f ms)\n", ctx, us2,
               fl / us2 / 1e6, us2 * 28 / 1000);
        cudaFree(q2), cudaFree(out2);
    }
    cudaFree(k), cudaFree(v), cudaFree(out), cudaFree(q), cudaFree(work), cudaFree(bt), cudaFree(sq);
    free(hbt), free(hsq);
    return ck(cudaGetLastError(), "attn bench");
}

static int bench_norm(int rows, cudaEvent_t e0, cudaEvent_t e1) {
    int H = 3584;
    float *x, *d, *w;
    uint16_t *o;
    size_t n = (size_t)rows * H;
    if (ck(cudaMalloc((void **)&x, n * 4), "x") || ck(cudaMalloc((void **)&d, n * 4), "d") ||
        ck(cudaMalloc((void **)&w, H * 4), "w") || ck(cudaMalloc((void **)&o, n * 2), "o"))
        return 1;
    cudaMemset(x, 0, n * 4), cudaMemset(d, 0, n * 4), cudaMemset(w, 0, H * 4);
    cudaEventRecord(e0, 0);
    for (int it = 0; it < ITERS; it++)
        dsi_cuda_add_rmsnorm(x, d, w, o, rows, H, 1e-6f, 0);
    cudaEventRecord(e1, 0);
    double us = time_ms(e0, e1) * 1000.0 / ITERS;
    double bytes = n * (4.0 + 4 + 4 + 2);
    printf("add_rmsnorm rows=%4d  %8.2f us  %7.2f MB  %7.1f GB/s\n", rows, us, bytes / 1e6, bytes / us / 1e3);
    cudaFree(x), cudaFree(d), cudaFree(w), cudaFree(o);
    return ck(cudaGetLastError(), "norm bench");
}

/* INT8 -> bf16 of a whole matrix (what a prefill step does to every INT8 matrix
 * before cuBLAS): reads 1 byte and writes 2 per weight; the source rotates over
 * copies, the destination is one scratch as in the backend. */
static int bench_dequant(const struct mat *mt, cudaEvent_t e0, cudaEvent_t e1) {
    size_t qb = dsi_cuda_q8_bytes(mt->n, mt->k), nk = (size_t)mt->n * mt->k;
    int copies = (int)((1ull << 30) / qb) + 1;
    if (copies > 64) copies = 64;
    int8_t **q = calloc((size_t)copies, sizeof *q);
    uint16_t *d = NULL;
    int rc = !q || ck(cudaMalloc((void **)&d, nk * 2), "deq dst");
    for (int c = 0; c < copies && !rc; c++)
        if (!(rc = ck(cudaMalloc((void **)&q[c], qb), "deq src"))) cudaMemset(q[c], 1, qb);
    if (!rc) {
        cudaEventRecord(e0, 0);
        for (int it = 0; it < ITERS; it++)
            dsi_cuda_dequant_int8(d, q[it % copies], NULL, mt->n, mt->k, 0);
        cudaEventRecord(e1, 0);
        double us = time_ms(e0, e1) * 1000.0 / ITERS, bytes = (double)qb + (double)nk * 2;
        printf("dequant %-8s n=%6d k=%5d  %8.2f us  %7.1f MB  %7.1f GB/s  %5.1f%% of 4.25 TB/s\n", mt->name,
               mt->n, mt->k, us, bytes / 1e6, bytes / us / 1e3, bytes / us / 1e3 / PEAK_GBS * 100);
        rc = ck(cudaGetLastError(), "dequant bench");
    }
    for (int c = 0; q && c < copies; c++)
        cudaFree(q[c]);
    free(q);
    cudaFree(d);
    return rc;
}

int main(int argc, char **argv) {
    /* --quick: m in {1, 8, 64}; --one NAME M VARIANT: one shape (for ncu) */
    int quick = argc > 1 && !strcmp(argv[1], "--quick");
    int one = argc > 4 && !strcmp(argv[1], "--one");
    int attn_only = argc > 1 && !strcmp(argv[1], "--attn");
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        fprintf(stderr, "bench_cuda_gemv: no CUDA device\n");
        return 77;
    }
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("device: %s, %d SMs, L2 %d MB; peak used for shares: 4.25 TB/s (measured copy)\n", prop.name,
           prop.multiProcessorCount, prop.l2CacheSize >> 20);
    cublasHandle_t blas;
    cublasCreate(&blas);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    int ms_full[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
    int ms_quick[] = {1, 8, 64};
    int rc = 0;
    struct dsi_cuda_gemm_ws ws = {.partial_bytes = dsi_cuda_gemm_ws_bytes(16 * 4 * prop.multiProcessorCount),
                                  .n_counters = 152064 / 16,
                                  .n_sm = prop.multiProcessorCount};
    if (ck(cudaMalloc((void **)&ws.partial, ws.partial_bytes), "ws") ||
        ck(cudaMalloc((void **)&ws.counters, (size_t)ws.n_counters * 4), "ws counters"))
        return 1;
    cudaMemset(ws.counters, 0, (size_t)ws.n_counters * 4);
    if (one) {
        int m1[1] = {atoi(argv[3])}, var = atoi(argv[4]);
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++)
            if (!strcmp(mats[i].name, argv[2]))
                rc = var >= 10 ? bench_tiled(&mats[i], m1, 1, blas, e0, e1, &ws, var - 10)
                               : bench_int8(&mats[i], m1, 1, blas, e0, e1, &ws, var);
        return rc;
    }
    int ms_tiled[] = {16, 32, 64, 128, 256};
    for (size_t i = 0; i < sizeof mats / sizeof mats[0] && !rc && !attn_only; i++) {
        rc = quick ? bench_int8(&mats[i], ms_quick, 3, blas, e0, e1, &ws, -1)
                   : bench_int8(&mats[i], ms_full, 9, blas, e0, e1, &ws, -1);
        if (!rc) rc = bench_tiled(&mats[i], ms_tiled, 5, blas, e0, e1, &ws, -1);
    }
    int seqs[] = {1, 1, 16, 64, 256}, ctxs[] = {128, 2048, 1024, 1024, 1024};
    for (int i = 0; i < 5 && !rc; i++)
        rc = bench_attn(seqs[i], ctxs[i], e0, e1);
    for (size_t i = 0; i < sizeof mats / sizeof mats[0] && !rc; i++)
        rc = bench_dequant(&mats[i], e0, e1);
    if (!rc) rc = bench_norm(1, e0, e1);
    if (!rc) rc = bench_norm(2048, e0, e1);
    cublasDestroy(blas);
    return rc;
}
