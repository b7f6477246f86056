/*
 * cuda_w8a8.c: the W8A8 matmul of the CUDA backend (int8_mode w8a8, issue 19):
 * y = x W^T with x quantized per token to int8 (kernels/w8a8.cu), the int8 x
 * int8 -> int32 product through cuBLASLt (CUBLAS_COMPUTE_32I, the TN layout
 * the integer tensor cores take), and an epilogue applying the per-token x
 * per-channel scales and the bias into fp32 y.
 *
 * Which matrices: the layers' q|k|v, o, gate|up and down, at every row count
 * (the plan picks it per weight at load, never per step). The sums are exact
 * integers, so whichever algorithm cuBLASLt picks for m rows, a row's result
 * is the same bits alone or in any batch (issue 26's batch invariance holds
 * for these matmuls by construction). The lm_head stays W8A16.
 *
 * Memory: each such matrix keeps a row-major int8 copy (q8r) made at load from
 * its tiled bytes, and the tiled copy is freed (no kernel reads it then), so
 * the weights take what W8A16 takes. Per step: xq (T, widest input) int8, xs
 * (T) fp32, acc (T, widest output) int32, the cuBLASLt workspace.
 *
 * cuBLASLt's heuristic is asked once per (n, k, m) and kept in a small table
 * (host time: a 2k prefill makes 112 such calls).
 */
#include <string.h>

#include "cuda_internal.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"

#define LT_WS_BYTES ((size_t)32 << 20)

/* The layer matrices W8A8 takes. */
static struct dsi__cu_matrix *layer_matrix(struct dsi__cuda *c, int il, int j) {
    struct dsi__cu_layer *ly = &c->layers[il];
    struct dsi__cu_matrix *const ms[4] = {&ly->qkv, &ly->o, &ly->gate_up, &ly->down};
    return ms[j];
}

/* q8r of w from its tiled bytes through the bf16 scratch (integers, exact). */
static int make_rows(struct dsi__cuda *c, struct dsi__cu_matrix *w, uint16_t *scratch, char **err) {
    size_t elems = (size_t)w->n * (size_t)w->k;
    int rc = dsi__cuda_alloc(c, (void **)&w->q8r, elems, "w8a8 weights", err);
    if (rc) return rc;
    if (dsi_cuda_dequant_int8(scratch, w->q, NULL, w->n, w->k, c->stream) ||
        dsi_cuda_int8_from_bf16(w->q8r, scratch, elems, c->stream) ||
        DSI_CUDA_CHECK(cudaStreamSynchronize(c->stream)))
        return dsi_seterr(err, DSI_ECUDA, "cuda: w8a8 weight layout failed");
    dsi__cuda_free(c, w->q);
    w->q = NULL;
    return 0;
}

int dsi__cuda_w8a8_prepare(struct dsi__cuda *c, char **err) {
    if (!c->w8a8) return 0;
    size_t big = 0, kmax = 0, nmax = 0;
    for (int il = 0; il < c->cfg.n_layers; il++)
        for (int j = 0; j < 4; j++) {
            const struct dsi__cu_matrix *w = layer_matrix(c, il, j);
            if (w->group || !w->scale || w->k % 4)
                return dsi_seterr(err, DSI_EINVAL,
                                  "cuda: int8_mode w8a8 needs per-channel int8 weights with inputs a multiple of 4");
            size_t e = (size_t)w->n * (size_t)w->k;
            if (e > big) big = e;
            if ((size_t)w->k > kmax) kmax = (size_t)w->k;
            if ((size_t)w->n > nmax) nmax = (size_t)w->n;
        }
    const size_t T = (size_t)c->max_tokens;
    uint16_t *scratch = NULL;
    int rc = dsi__cuda_alloc(c, (void **)&scratch, big * 2, "w8a8 layout scratch", err);
    for (int il = 0; il < c->cfg.n_layers && !rc; il++)
        for (int j = 0; j < 4 && !rc; j++)
            rc = make_rows(c, layer_matrix(c, il, j), scratch, err);
    dsi__cuda_free(c, scratch);
    if (rc) return rc;
    if ((rc = dsi__cuda_alloc(c, (void **)&c->w8a8_xq, T * kmax, "w8a8 activations", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&c->w8a8_xs, T * sizeof(float), "w8a8 token scales", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&c->w8a8_acc, T * nmax * 4, "w8a8 int32 sums", err)) ||
        (rc = dsi__cuda_alloc(c, &c->lt_ws, LT_WS_BYTES, "cuBLASLt workspace", err)))
        return rc;
    if (DSI_CUBLAS_CHECK(cublasLtCreate(&c->lt)))
        return dsi_seterr(err, DSI_ECUDA, "cuda: cuBLASLt setup failed");
    return 0;
}

void dsi__cuda_w8a8_destroy(struct dsi__cuda *c) {
    if (c->lt) cublasLtDestroy(c->lt);
    c->lt = NULL;
}

/* The cuBLASLt descriptors of one (n, k, m) product; 0 or DSI_ECUDA. */
struct lt_desc {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
};

static void desc_free(struct lt_desc *d) {
    if (d->op) cublasLtMatmulDescDestroy(d->op);
    if (d->a) cublasLtMatrixLayoutDestroy(d->a);
    if (d->b) cublasLtMatrixLayoutDestroy(d->b);
    if (d->d) cublasLtMatrixLayoutDestroy(d->d);
}

/* Column-major view: D (n, m) = W' (k, n)^T . X' (k, m), W and X row-major
 * (n, k) and (m, k) with leading dimension k, D row-major (m, n). */
static int desc_make(struct lt_desc *d, int n, int k, int m) {
    memset(d, 0, sizeof *d);
    const cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
    if (DSI_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d->op, CUBLAS_COMPUTE_32I, CUDA_R_32I)) ||
        DSI_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t)) ||
        DSI_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof nn)) ||
        DSI_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d->a, CUDA_R_8I, (uint64_t)k, (uint64_t)n, k)) ||
        DSI_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d->b, CUDA_R_8I, (uint64_t)k, (uint64_t)m, k)) ||
        DSI_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d->d, CUDA_R_32I, (uint64_t)n, (uint64_t)m, n))) {
        desc_free(d);
        return DSI_ECUDA;
    }
    return 0;
}

/* The algorithm for (n, k, m): from the table, else cuBLASLt's first
 * heuristic answer (then kept, replacing round robin). */
static int algo_for(struct dsi__cuda *c, const struct lt_desc *d, int n, int k, int m,
                    cublasLtMatmulAlgo_t *algo) {
    for (int i = 0; i < c->n_lt_algos; i++) {
        const struct dsi__cu_lt_algo *e = &c->lt_algos[i];
        if (e->n == n && e->k == k && e->m == m) {
            *algo = e->algo;
            return 0;
        }
    }
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t h;
    int found = 0;
    size_t ws = LT_WS_BYTES;
    int rc = DSI_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    if (!rc)
        rc = DSI_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                                  &ws, sizeof ws));
    if (!rc)
        rc = DSI_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(c->lt, d->op, d->a, d->b, d->d,
                                                             d->d, pref, 1, &h, &found));
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (rc) return rc;
    if (!found) {
        dsi_log(DSI_LOG_ERROR, "cuda", "cuBLASLt has no int8 algorithm for %d x %d x %d", m, n, k);
        return DSI_ECUDA;
    }
    *algo = h.algo;
    int slot = c->n_lt_algos < DSI__CU_LT_ALGOS ? c->n_lt_algos++ : (c->lt_next++ % DSI__CU_LT_ALGOS);
    struct dsi__cu_lt_algo *e = &c->lt_algos[slot];
    e->n = n, e->k = k, e->m = m;
    e->algo = h.algo;
    return 0;
}

int dsi__cuda_w8a8_matmul(struct dsi__cuda *c, const struct dsi__cu_matrix *w, const uint16_t *x, float *y,
                          int m) {
    if (!c->lt || !w->q8r || m > c->max_tokens) return DSI_EINVAL;
    struct lt_desc d;
    cublasLtMatmulAlgo_t algo;
    const int32_t one = 1, zero = 0;
    int rc = dsi_cuda_quant_act_int8(c->w8a8_xq, c->w8a8_xs, x, m, w->k, c->stream);
    if (rc || (rc = desc_make(&d, w->n, w->k, m))) return rc;
    rc = algo_for(c, &d, w->n, w->k, m, &algo);
    if (!rc)
        rc = DSI_CUBLAS_CHECK(cublasLtMatmul(c->lt, d.op, &one, w->q8r, d.a, c->w8a8_xq, d.b,
                                             &zero, c->w8a8_acc, d.d, c->w8a8_acc, d.d, &algo, c->lt_ws,
                                             LT_WS_BYTES, c->stream));
    desc_free(&d);
    if (!rc) rc = dsi_cuda_w8a8_epilogue(y, c->w8a8_acc, c->w8a8_xs, w->scale, w->bias, m, w->n, c->stream);
    return rc;
}
