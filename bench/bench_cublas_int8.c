/*
 * bench_cublas_int8.c: the library baselines for issue 19's INT8 GEMMs.
 *
 * Times Y = X · W^T on the 7B shape's four weights (q|k|v, o, gate|up, down) at
 * m = 1 .. 4096 rows with
 *   - cuBLASLt int8 x int8 -> int32 (CUBLAS_COMPUTE_32I, the "TN" layout the
 *     integer tensor cores need: W row-major (n, k), X row-major (m, k)), and
 *   - cuBLAS bf16 x bf16 -> bf16 with fp32 accumulation (cublasGemmEx; bf16 held as
 *     uint16_t bits on the host side of this C file),
 * on the same shapes in the same process, and prints per case the time, the
 * achieved TOPS (2mnk / t) and TB/s (bytes of W + X + Y / t), so our own
 * kernels can be placed between the two and against the roofline (4.25 TB/s,
 * 1,979 dense INT8 TOPS on an H200 by its data sheet; an H100 SXM's data sheet
 * says 3.35 TB/s and 1,979 as well).
 *
 * and, third, dsinfer's whole W8A8 matmul (int8_mode w8a8): the per-token
 * activation quantization (bf16 -> int8 + scales), the same cuBLASLt int8
 * product and the epilogue (int32 -> fp32 with per-token x per-channel scales
 * and a bias; kernels/w8a8.cu), with the three parts timed apart.
 *
 * Inputs are random bytes (int8) or small random bf16 values: speed does not
 * depend on them. Each case: 5 warm-up calls, then the mean of 50 timed with
 * CUDA events. Usage: bench_cublas_int8 [--iters N]
 */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));     \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)
#define CB(x)                                                                                      \
    do {                                                                                           \
        cublasStatus_t s_ = (x);                                                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            fprintf(stderr, "%s:%d %s: cublas status %d\n", __FILE__, __LINE__, #x, (int)s_);     \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

struct shape {
    const char *name;
    int n, k; /* W is (n, k) */
};

/* The 7B bench shape (DESIGN.md): hidden 3584, 28/4 heads of 128, intermediate 18944. */
static const struct shape SHAPES[] = {
    {"qkv", 3584 + 2 * 512, 3584}, {"o", 3584, 3584}, {"gate|up", 2 * 18944, 3584}, {"down", 3584, 18944}};
static const int MS[] = {1, 16, 64, 256, 2048};

/* A cuBLASLt int8 x int8 -> int32 product of m rows, the "TN" layout the
 * integer tensor cores need, with the algorithm cuBLASLt's heuristic picks. */
struct lt_plan {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulHeuristicResult_t h;
};

static int lt_plan_int8(cublasLtHandle_t lt, int m, int n, int k, size_t ws_bytes, struct lt_plan *p) {
    CB(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32I, CUDA_R_32I));
    cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
    CB(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
    CB(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof nn));
    /* column-major view: C (n, m) = W^T' (n, k) . X' (k, m) */
    CB(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_8I, k, n, k));
    CB(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_8I, k, m, k));
    CB(cublasLtMatrixLayoutCreate(&p->lc, CUDA_R_32I, n, m, n));
    CB(cublasLtMatmulPreferenceCreate(&p->pref));
    CB(cublasLtMatmulPreferenceSetAttribute(p->pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                            sizeof ws_bytes));
    int found = 0;
    CB(cublasLtMatmulAlgoGetHeuristic(lt, p->op, p->la, p->lb, p->lc, p->lc, p->pref, 1, &p->h, &found));
    if (!found) {
        fprintf(stderr, "no int8 algorithm for m=%d n=%d k=%d\n", m, n, k);
        return 1;
    }
    return 0;
}

static void lt_plan_free(struct lt_plan *p) {
    cublasLtMatmulPreferenceDestroy(p->pref);
    cublasLtMatrixLayoutDestroy(p->la);
    cublasLtMatrixLayoutDestroy(p->lb);
    cublasLtMatrixLayoutDestroy(p->lc);
    cublasLtMatmulDescDestroy(p->op);
}

/* y = x . w^T with plan p (int32 out). */
static int run_int8(cublasLtHandle_t lt, const struct lt_plan *p, const int8_t *w, const int8_t *x, int32_t *y,
                    void *ws, size_t ws_bytes) {
    int32_t one = 1, zero = 0;
    CB(cublasLtMatmul(lt, p->op, &one, w, p->la, x, p->lb, &zero, y, p->lc, y, p->lc, &p->h.algo, ws, ws_bytes,
                      0));
    return 0;
}

/* y = x . w^T in bf16 with fp32 accumulation (bf16 held as uint16_t bits). */
static int run_bf16(cublasHandle_t hb, const uint16_t *w, const uint16_t *x, uint16_t *y, int m, int n, int k) {
    float one = 1.0f, zero = 0.0f;
    CB(cublasGemmEx(hb, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, w, CUDA_R_16BF, k, x, CUDA_R_16BF, k, &zero, y,
                    CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* The mean time in ms of one product of m rows: int8 with plan p (w, x int8,
 * y int32), or bf16 through hb when p is NULL. 5 warm-up calls, then iters
 * calls back to back between two events (no sync in between, as in a model's
 * forward pass). */
static int time_gemm(cublasLtHandle_t lt, const struct lt_plan *p, cublasHandle_t hb, const void *w,
                     const void *x, void *y, int m, int n, int k, void *ws, size_t ws_bytes, int iters,
                     float *ms_out) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < 5 + iters; i++) {
        if (i == 5) CK(cudaEventRecord(e0, 0));
        if (p ? run_int8(lt, p, w, x, y, ws, ws_bytes) : run_bf16(hb, w, x, y, m, n, k)) return 1;
    }
    CK(cudaEventRecord(e1, 0));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    *ms_out = ms / (float)iters;
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return 0;
}

static int time_int8(cublasLtHandle_t lt, const int8_t *w, const int8_t *x, int32_t *y, int m, int n, int k,
                     void *ws, size_t ws_bytes, int iters, float *ms_out) {
    struct lt_plan p;
    if (lt_plan_int8(lt, m, n, k, ws_bytes, &p)) return 1;
    int rc = time_gemm(lt, &p, NULL, w, x, y, m, n, k, ws, ws_bytes, iters, ms_out);
    lt_plan_free(&p);
    return rc;
}

/* dsinfer's W8A8 matmul of m rows: quantize x (bf16) -> xq + xs, the int8
 * product into acc, the epilogue into y (fp32); ms_out[0..3]: whole, quantize,
 * product, epilogue (means over iters). Unlike time_gemm, each part gets its
 * own events and each call is synced, so that the three parts can be told apart. */
static int time_w8a8(cublasLtHandle_t lt, const int8_t *w, const uint16_t *x, int8_t *xq, float *xs, int32_t *acc,
                     float *y, const float *ws_scale, const float *bias, int m, int n, int k, void *ws,
                     size_t ws_bytes, int iters, float ms_out[4]) {
    struct lt_plan p;
    if (lt_plan_int8(lt, m, n, k, ws_bytes, &p)) return 1;
    cudaEvent_t e[4];
    for (int i = 0; i < 4; i++)
        CK(cudaEventCreate(&e[i]));
    float sum[3] = {0, 0, 0};
    for (int i = 0; i < 5 + iters; i++) {
        CK(cudaEventRecord(e[0], 0));
        if (dsi_cuda_quant_act_int8(xq, xs, x, m, k, 0)) return 1;
        CK(cudaEventRecord(e[1], 0));
        if (run_int8(lt, &p, w, xq, acc, ws, ws_bytes)) return 1;
        CK(cudaEventRecord(e[2], 0));
        if (dsi_cuda_w8a8_epilogue(y, acc, xs, ws_scale, bias, m, n, 0)) return 1;
        CK(cudaEventRecord(e[3], 0));
        CK(cudaEventSynchronize(e[3]));
        if (i < 5) continue;
        for (int j = 0; j < 3; j++) {
            float ms;
            CK(cudaEventElapsedTime(&ms, e[j], e[j + 1]));
            sum[j] += ms;
        }
    }
    for (int j = 0; j < 3; j++)
        ms_out[j + 1] = sum[j] / (float)iters;
    ms_out[0] = ms_out[1] + ms_out[2] + ms_out[3];
    for (int i = 0; i < 4; i++)
        cudaEventDestroy(e[i]);
    lt_plan_free(&p);
    return 0;
}

static void fill_bytes(void *p, size_t n, uint64_t seed) {
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        b[i] = (unsigned char)(seed >> 56);
    }
}

int main(int argc, char **argv) {
    int iters = 50;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_cublas_int8 [--iters N]\n");
            return 2;
        }
    }
    if (iters < 1) iters = 1;
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("# %s, %d SMs; cuBLASLt %zu\n", prop.name, prop.multiProcessorCount, cublasLtGetVersion());
    size_t max_w = 0, max_x = 0, max_y = 0;
    for (size_t s = 0; s < sizeof SHAPES / sizeof SHAPES[0]; s++) {
        size_t w = (size_t)SHAPES[s].n * SHAPES[s].k, x = (size_t)2048 * SHAPES[s].k, y = (size_t)2048 * SHAPES[s].n;
        if (w > max_w) max_w = w;
        if (x > max_x) max_x = x;
        if (y > max_y) max_y = y;
    }
    /* one buffer per role, sized for bf16 (2 bytes) / int32 (4 bytes) */
    void *w, *x, *y, *ws, *xq, *xs, *yf, *sc;
    size_t ws_bytes = 64u << 20;
    CK(cudaMalloc(&w, max_w * 2));
    CK(cudaMalloc(&x, max_x * 2));
    CK(cudaMalloc(&y, max_y * 4));
    CK(cudaMalloc(&ws, ws_bytes));
    CK(cudaMalloc(&xq, max_x));
    CK(cudaMalloc(&xs, 2048 * 4));
    CK(cudaMalloc(&yf, max_y * 4));
    CK(cudaMalloc(&sc, 2 * 18944 * 4));
    void *h = malloc(max_w * 2);
    if (!h) return 1;
    fill_bytes(h, max_w * 2, 1);
    /* bf16 values from random bytes: clear exponent bits so they stay small and finite */
    uint16_t *hb = h;
    for (size_t i = 0; i < max_w; i++) hb[i] = (uint16_t)((hb[i] & 0x807f) | 0x3c00);
    CK(cudaMemcpy(w, h, max_w * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(x, h, max_x * 2 < max_w * 2 ? max_x * 2 : max_w * 2, cudaMemcpyHostToDevice));
    /* per-channel scales and bias of the W8A8 epilogue: small positive floats */
    float *hs = h;
    for (int i = 0; i < 2 * 18944; i++)
        hs[i] = 1e-3f * (1.0f + (float)(i % 7));
    CK(cudaMemcpy(sc, hs, 2 * 18944 * 4, cudaMemcpyHostToDevice));
    free(h);
    cublasLtHandle_t lt;
    cublasHandle_t hbl;
    CB(cublasLtCreate(&lt));
    CB(cublasCreate(&hbl));
    CB(cublasSetWorkspace(hbl, ws, ws_bytes));
    printf("%-8s %5s %6s %6s | %9s %8s %7s | %9s %8s %7s | %s | %9s %8s %s\n", "weight", "m", "n", "k", "int8 us",
           "TOPS", "TB/s", "bf16 us", "TFLOP/s", "TB/s", "int8/bf16 speed", "w8a8 us", "TOPS",
           "(quant + int8 gemm + epilogue us) w8a8/bf16");
    for (size_t s = 0; s < sizeof SHAPES / sizeof SHAPES[0]; s++) {
        for (size_t mi = 0; mi < sizeof MS / sizeof MS[0]; mi++) {
            int m = MS[mi], n = SHAPES[s].n, k = SHAPES[s].k;
            float t8, t16, tw[4];
            if (time_int8(lt, w, x, y, m, n, k, ws, ws_bytes, iters, &t8)) return 1;
            if (time_gemm(lt, NULL, hbl, w, x, y, m, n, k, ws, ws_bytes, iters, &t16)) return 1;
            if (time_w8a8(lt, w, x, xq, xs, y, yf, sc, sc, m, n, k, ws, ws_bytes, iters, tw)) return 1;
            double flop = 2.0 * m * n * (double)k;
            double b8 = (double)n * k + (double)m * k + 4.0 * m * n;
            double b16 = 2.0 * ((double)n * k + (double)m * k + (double)m * n);
            printf("%-8s %5d %6d %6d | %9.1f %8.1f %7.2f | %9.1f %8.1f %7.2f | %.2fx | %9.1f %8.1f (%.1f + %.1f + "
                   "%.1f) %.2fx\n",
                   SHAPES[s].name, m, n, k, t8 * 1e3, flop / (t8 * 1e-3) / 1e12, b8 / (t8 * 1e-3) / 1e12,
                   t16 * 1e3, flop / (t16 * 1e-3) / 1e12, b16 / (t16 * 1e-3) / 1e12, t16 / t8, tw[0] * 1e3,
                   flop / (tw[0] * 1e-3) / 1e12, tw[1] * 1e3, tw[2] * 1e3, tw[3] * 1e3, t16 / tw[0]);
        }
    }
    cublasDestroy(hbl);
    cublasLtDestroy(lt);
    cudaFree(w);
    cudaFree(x);
    cudaFree(y);
    cudaFree(ws);
    cudaFree(xq);
    cudaFree(xs);
    cudaFree(yf);
    cudaFree(sc);
    return 0;
}
