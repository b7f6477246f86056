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
 * Then the INT8 matmuls of the layer the same way (the one-row GEMV the backend
 * picks per matrix; gate|up with SwiGLU in its epilogue): weights rotated over
 * enough copies that L2 never holds them (as in a step, where each matrix is
 * read once), and once more with one copy replayed (L2 warm), which says
 * whether a node waits on DRAM or on its own latency.
 *
 * Inputs are zeros: the work does not depend on the values.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "kernels.h"

#define REP 200
#define H 3584
#define NH 28
#define NKV 4
#define HD 128
#define INTER 18944
#define BS 16
#define NBLK 4096

enum node { N_NORM, N_ROPE_KV, N_SWIGLU, N_ATTN, N_TINY, N_GEMV };

struct bufs {
    float *x, *delta, *w, *qkv, *gu, *inv_freq, *work;
    uint16_t *xn, *act, *kc, *vc, *attn;
    int32_t *pos, *slot, *bt;
    struct dsi_cuda_attn_seq *seqs;
    struct dsi_cuda_attn_args a;
    /* N_GEMV: copies of one (n, k) int8 matrix, the next launch takes the next */
    int gv_n, gv_k, gv_copies, gv_next, gv_glu, gv_path;
    int8_t **gv_q;
    float *gv_scale, *gv_bias, *gv_y;
    uint16_t *gv_x;
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
        return dsi_cuda_swiglu(b->act, b->gu, 1, INTER, DSI_GLU_IL8, NULL, NULL, s);
    case N_ATTN:
        return dsi_cuda_attn_decode(&b->a, s);
    case N_GEMV: {
        const int8_t *q = b->gv_q[b->gv_next++ % b->gv_copies];
        if (b->gv_glu)
            return dsi_cuda_gemv_int8_swiglu(b->act, b->gv_x, q, b->gv_scale, NULL, b->gv_n, b->gv_k,
                                             b->gv_path, s);
        return dsi_cuda_gemv_int8_path(b->gv_y, b->gv_x, q, b->gv_scale, b->gv_bias, 1, b->gv_n, b->gv_k,
                                       b->gv_path, s);
    }
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
    if (cudaGraphInstantiateWithFlags(&ge, g, 0) != cudaSuccess) goto out;
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

static void *zalloc(size_t n);

/* The one-row INT8 matmuls of a 7B layer and the lm_head as graph nodes. */
static void gemv_nodes(struct bufs *b, cudaStream_t s) {
    const struct {
        const char *name;
        int n, k, bias, glu;
    } m[] = {{"qkv 4608 x 3584 (+bias)", (NH + 2 * NKV) * HD, H, 1, 0},
             {"o 3584 x 3584", H, NH * HD, 0, 0},
             {"gate|up 37888 x 3584 + SwiGLU", 2 * INTER, H, 0, 1},
             {"down 3584 x 18944", H, INTER, 0, 0},
             {"lm_head 152064 x 3584", 152064, H, 0, 0}};
    printf("\n%-32s %10s %10s %8s %12s %12s\n", "one-row INT8 matmul", "MB", "us/node", "of 4.25",
           "L2 warm us", "other kernel");
    b->gv_x = zalloc(INTER * 2), b->gv_y = zalloc(152064 * 4);
    for (int i = 0; i < (int)(sizeof m / sizeof m[0]); i++) {
        size_t bytes = dsi_cuda_q8_bytes(m[i].n, m[i].k);
        int copies = (int)((1200u << 20) / bytes); /* >= 1.2 GB in all: far over L2 */
        if (copies < 2) copies = 2;
        b->gv_q = calloc((size_t)copies, sizeof *b->gv_q);
        for (int c = 0; c < copies; c++)
            b->gv_q[c] = zalloc(bytes);
        b->gv_scale = zalloc((size_t)m[i].n * 4), b->gv_bias = m[i].bias ? zalloc((size_t)m[i].n * 4) : NULL;
        b->gv_n = m[i].n, b->gv_k = m[i].k, b->gv_glu = m[i].glu, b->gv_copies = copies, b->gv_next = 0;
        b->gv_path = 0;
        double us = node_us(N_GEMV, b, s);
        /* the other one-row kernel: CUDA cores where the default takes the
         * tensor cores (>= 4 row tiles per SM), else the tensor cores */
        b->gv_path = (m[i].n + 15) / 16 >= 4 * 132 ? 1 : 2;
        double other = m[i].glu ? -1 : node_us(N_GEMV, b, s);
        b->gv_path = 0;
        b->gv_copies = 1;
        double warm = node_us(N_GEMV, b, s);
        printf("%-32s %10.1f %10.2f %7.1f%% %12.2f %12.2f\n", m[i].name, bytes / 1e6, us,
               bytes / (us * 1e-6) / 4.25e12 * 100, warm, other);
        for (int c = 0; c < copies; c++)
            cudaFree(b->gv_q[c]);
        free(b->gv_q);
        cudaFree(b->gv_scale), cudaFree(b->gv_bias);
    }
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
    const int ctxs[] = {128, 2048}, splits[] = {2, 4, 16, 32, 64};
    for (int ci = 0; ci < 2; ci++) {
        struct dsi_cuda_attn_seq sq = {0, 1, ctxs[ci] - 1, 0};
        cudaMemcpy(b.seqs, &sq, sizeof sq, cudaMemcpyHostToDevice);
        for (int si = 0; si < 5; si++) {
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
    gemv_nodes(&b, s);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        fprintf(stderr, "bench_cuda_nodes: %s\n", cudaGetErrorString(e));
        return 1;
    }
    return 0;
}
