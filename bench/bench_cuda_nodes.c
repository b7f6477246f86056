/*
 * bench_cuda_nodes.c: what each small kernel of a batch-1 decode layer costs as
 * a node of a CUDA graph, the way the backend replays decode steps: the same
 * launcher captured REP times back to back (each node depends on the previous
 * one), the graph replayed, time per node. At batch 1 these kernels move a few
 * KB; their cost is launch, dependency and latency, which is what a step of
 * ~290 nodes pays on top of the matmuls (bench/RESULTS.md).
 *
 *   bench_cuda_nodes        (7B shape: hidden 3584, 28/4 heads of 128, inter 18944)
 *
 * Inputs are zeros: the work does not depend on the values.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "dsinfer/kernels.h"

#define REP 200
#define H 3584
#define NH 28
#define NKV 4
#define HD 128
#define INTER 18944
#define BS 16
#define NBLK 4096

enum node { N_NORM, N_ROPE_KV, N_SWIGLU, N_ATTN, N_TINY };

struct bufs {
    float *x, *delta, *w, *qkv, *gu, *inv_freq, *work;
    uint16_t *xn, *act, *kc, *vc, *attn;
    int32_t *pos, *slot, *bt;
    struct dsi_cuda_attn_seq *seqs;
    struct dsi_cuda_attn_args a;
};

static int launch(enum node n, struct bufs *b, cudaStream_t s) {
    const int stride = (NH + 2 * NKV) * HD;
    switch (n) {
    case N_NORM:
        return dsi_cuda_add_rmsnorm(b->x, b->delta, b->w, b->xn, 1, H, 1e-6f, s);
    case N_ROPE_KV:
        return dsi_cuda_rope_kv_store(b->qkv, stride, 1, NH, NKV, HD, b->pos, b->inv_freq, b->kc, b->vc,
                                      b->slot, s);
    case N_SWIGLU:
        return dsi_cuda_swiglu(b->act, b->gu, 1, INTER, DSI_GLU_IL8, s);
    case N_ATTN:
        return dsi_cuda_attn_decode(&b->a, s);
    default:
        return dsi_cuda_add_rmsnorm(b->x, b->delta, b->w, b->xn, 1, 32, 1e-6f, s);
    }
}

/* us per node of a graph of REP launches of n; < 0 on error */
static double node_us(enum node n, struct bufs *b, cudaStream_t s) {
    cudaGraph_t g = NULL;
    cudaGraphExec_t ge = NULL;
    double us = -1;
    if (cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) != cudaSuccess) return -1;
    int rc = 0;
    for (int i = 0; i < REP && !rc; i++)
        rc = launch(n, b, s);
    if (cudaStreamEndCapture(s, &g) != cudaSuccess || rc) goto out;
    if (cudaGraphInstantiate(&ge, g, 0) != cudaSuccess) goto out;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaGraphLaunch(ge, s); /* warm-up */
    cudaEventRecord(e0, s);
    for (int r = 0; r < 5; r++)
        cudaGraphLaunch(ge, s);
    cudaEventRecord(e1, s);
    if (cudaEventSynchronize(e1) == cudaSuccess) {
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        us = ms * 1000.0 / (5.0 * REP);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
out:
    if (ge) cudaGraphExecDestroy(ge);
    if (g) cudaGraphDestroy(g);
    return us;
}

static void *zalloc(size_t n) {
    void *p = NULL;
    if (cudaMalloc(&p, n) != cudaSuccess) {
        fprintf(stderr, "bench_cuda_nodes: cudaMalloc of %zu bytes failed\n", n);
        exit(1);
    }
    cudaMemset(p, 0, n);
    return p;
}

int main(void) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        fprintf(stderr, "bench_cuda_nodes: no CUDA device\n");
        return 1;
    }
    cudaStream_t s;
    cudaStreamCreate(&s);
    const int stride = (NH + 2 * NKV) * HD;
    const size_t slots = (size_t)NBLK * BS, kv = slots * NKV * HD * 2;
    struct bufs b;
    memset(&b, 0, sizeof b);
    b.x = zalloc(H * 4), b.delta = zalloc(H * 4), b.w = zalloc(H * 4), b.qkv = zalloc(stride * 4);
    b.gu = zalloc(2 * INTER * 4), b.inv_freq = zalloc(HD / 2 * 4), b.xn = zalloc(H * 2),
    b.act = zalloc(INTER * 2);
    b.kc = zalloc(kv), b.vc = zalloc(kv), b.attn = zalloc(NH * HD * 2);
    b.pos = zalloc(4), b.slot = zalloc(4), b.bt = zalloc(NBLK * 4), b.seqs = zalloc(sizeof *b.seqs);
    int32_t *bt = malloc(NBLK * 4);
    for (int i = 0; i < NBLK; i++)
        bt[i] = i;
    cudaMemcpy(b.bt, bt, NBLK * 4, cudaMemcpyHostToDevice);
    free(bt);

    printf("one node of a CUDA graph, batch 1, 7B shape (%d launches per graph)\n", REP);
    printf("%-46s %10s\n", "kernel", "us/node");
    const char *names[] = {"add_rmsnorm, 1 x 3584", "rope_kv_store, 1 token, 28 + 4 heads",
                           "swiglu, 1 x 18944"};
    for (int n = N_NORM; n <= N_SWIGLU; n++)
        printf("%-46s %10.2f\n", names[n], node_us((enum node)n, &b, s));
    const int ctxs[] = {128, 2048}, splits[] = {4, 16, 32, 64};
    for (int ci = 0; ci < 2; ci++) {
        struct dsi_cuda_attn_seq sq = {0, 1, ctxs[ci] - 1, 0};
        cudaMemcpy(b.seqs, &sq, sizeof sq, cudaMemcpyHostToDevice);
        for (int si = 0; si < 4; si++) {
            size_t wb = dsi_cuda_attn_work_bytes(1, NH, HD, splits[si]);
            b.work = zalloc(wb);
            b.a = (struct dsi_cuda_attn_args){.q = b.qkv,
                                              .q_stride = stride,
                                              .k_cache = b.kc,
                                              .v_cache = b.vc,
                                              .out = b.attn,
                                              .seqs = b.seqs,
                                              .n_seqs = 1,
                                              .block_tables = b.bt,
                                              .block_size = BS,
                                              .n_heads = NH,
                                              .n_kv_heads = NKV,
                                              .head_dim = HD,
                                              .scale = 0.0884f,
                                              .max_ctx = ctxs[ci],
                                              .max_n_q = 1,
                                              .n_splits = splits[si],
                                              .work = b.work,
                                              .work_bytes = wb};
            char label[80];
            snprintf(label, sizeof label, "attn decode + combine, ctx %d, %d splits", ctxs[ci], splits[si]);
            printf("%-46s %10.2f\n", label, node_us(N_ATTN, &b, s));
            cudaFree(b.work);
        }
    }
    printf("%-46s %10.2f\n", "floor: add_rmsnorm of 32 values", node_us(N_TINY, &b, s));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        fprintf(stderr, "bench_cuda_nodes: %s\n", cudaGetErrorString(e));
        return 1;
    }
    return 0;
}
