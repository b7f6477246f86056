/*
 * bench_nccl_allreduce.c: what NCCL all-reduce costs per decode step of tensor
 * parallel (issue 12). A TP decode step adds two all-reduces per layer (after
 * attention and after the MLP) of batch x hidden values each; at batch 1 they
 * are tiny, so their latency, not NVLink bandwidth, decides whether TP=2 can
 * beat TP=1. This measures that latency on one rank per GPU:
 *
 *   mpirun -np 2 bench_nccl_allreduce [--iters N] [--json]
 *
 * For hidden 3584 (7B shape, 28 layers) and 8192 (67B shape, 95 layers), batch
 * 1/16/64/256, fp32 and bf16, ncclSum in place on one stream:
 *  (a) plain: N back-to-back ncclAllReduce launches timed with cudaEvents;
 *  (b) graph: 2*L all-reduces captured in one CUDA graph (one decode step's
 *      worth), the graph launched N times: us per all-reduce and ms per step.
 * Each time is the slowest rank's. Algorithm bandwidth = bytes / time (for an
 * all-reduce the bus bandwidth is algbw * 2(n-1)/n, equal for n = 2).
 * A correctness check follows the timing: rank r's buffer holds r+1, one
 * all-reduce (plain, then replayed from a graph) must give n(n+1)/2 (3 for 2
 * ranks) everywhere; otherwise FAIL and exit 1.
 *
 * NVLink multicast (NVLS) can take the shared GPU host out of service, so this
 * program forces NCCL_NVLS_ENABLE=0 before its first NCCL call whatever the
 * environment says. Any failed CUDA/NCCL/MPI call prints what failed and calls
 * MPI_Abort, so no rank is left waiting in a collective.
 */
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BATCH 256
#define MAX_HIDDEN 8192
#define MAX_CASES 32

/* Print what failed on which rank, then take every rank down. */
static void fail(int line, const char *what, const char *why) {
    int init = 0, rank = -1;
    MPI_Initialized(&init);
    if (init) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    fprintf(stderr, "bench_nccl_allreduce: rank %d: line %d: %s failed: %s\n", rank, line, what, why);
    fflush(stderr);
    if (init) MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

/* NCCL's result code is generic ("unhandled system error"); its last-error text says which. */
static void fail_nccl(int line, const char *what, ncclResult_t r) {
    char why[512];
    const char *last = ncclGetLastError(NULL);
    snprintf(why, sizeof why, "%s%s%s", ncclGetErrorString(r), last && *last ? ": " : "", last ? last : "");
    fail(line, what, why);
}

#define CK_CUDA(call)                                                                                        \
    do {                                                                                                     \
        cudaError_t e_ = (call);                                                                             \
        if (e_ != cudaSuccess) fail(__LINE__, #call, cudaGetErrorString(e_));                                \
    } while (0)
#define CK_NCCL(call)                                                                                        \
    do {                                                                                                     \
        ncclResult_t r_ = (call);                                                                            \
        if (r_ != ncclSuccess) fail_nccl(__LINE__, #call, r_);                                               \
    } while (0)
#define CK_MPI(call)                                                                                         \
    do {                                                                                                     \
        int m_ = (call);                                                                                     \
        if (m_ != MPI_SUCCESS) {                                                                             \
            char s_[MPI_MAX_ERROR_STRING];                                                                   \
            int n_ = 0;                                                                                      \
            if (MPI_Error_string(m_, s_, &n_) != MPI_SUCCESS) strcpy(s_, "?");                               \
            fail(__LINE__, #call, s_);                                                                       \
        }                                                                                                    \
    } while (0)

struct result {
    int hidden, batch, layers, bf16;
    size_t bytes;
    double us_plain, us_graph, ms_step_graph;
};

struct ctx {
    ncclComm_t comm;
    cudaStream_t st;
    cudaEvent_t e0, e1;
    void *buf;
    int rank, size;
};

/* Elapsed ms between the two events, the maximum over ranks. */
static double elapsed_max_ms(struct ctx *c) {
    float ms = 0;
    CK_CUDA(cudaEventSynchronize(c->e1));
    CK_CUDA(cudaEventElapsedTime(&ms, c->e0, c->e1));
    double local = ms, worst = 0;
    CK_MPI(MPI_Allreduce(&local, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    return worst;
}

/* Both ranks idle and lined up before the first timed event, so the first
 * all-reduce does not time the other rank's set-up. */
static void line_up(struct ctx *c) {
    CK_CUDA(cudaStreamSynchronize(c->st));
    CK_MPI(MPI_Barrier(MPI_COMM_WORLD));
}

/* (a) mean us per all-reduce of n back-to-back launches. */
static double time_plain(struct ctx *c, size_t count, ncclDataType_t dt, int iters) {
    for (int i = 0; i < 10; i++) /* warm-up: connections, lazy kernel loading */
        CK_NCCL(ncclAllReduce(c->buf, c->buf, count, dt, ncclSum, c->comm, c->st));
    line_up(c);
    CK_CUDA(cudaEventRecord(c->e0, c->st));
    for (int i = 0; i < iters; i++)
        CK_NCCL(ncclAllReduce(c->buf, c->buf, count, dt, ncclSum, c->comm, c->st));
    CK_CUDA(cudaEventRecord(c->e1, c->st));
    return elapsed_max_ms(c) * 1e3 / iters;
}

/* One CUDA graph holding n in-place all-reduces of count values. Thread-local
 * capture mode: NCCL's proxy thread may make CUDA calls while we capture. */
static cudaGraphExec_t capture(struct ctx *c, size_t count, ncclDataType_t dt, int n) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK_CUDA(cudaStreamBeginCapture(c->st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < n; i++)
        CK_NCCL(ncclAllReduce(c->buf, c->buf, count, dt, ncclSum, c->comm, c->st));
    CK_CUDA(cudaStreamEndCapture(c->st, &g));
    CK_CUDA(cudaGraphInstantiateWithFlags(&ge, g, 0));
    CK_CUDA(cudaGraphDestroy(g));
    return ge;
}

/* (b) ms per graph launch of 2*layers all-reduces (one decode step). */
static double time_graph(struct ctx *c, size_t count, ncclDataType_t dt, int layers, int iters) {
    cudaGraphExec_t ge = capture(c, count, dt, 2 * layers);
    for (int i = 0; i < 2; i++)
        CK_CUDA(cudaGraphLaunch(ge, c->st));
    line_up(c);
    CK_CUDA(cudaEventRecord(c->e0, c->st));
    for (int i = 0; i < iters; i++)
        CK_CUDA(cudaGraphLaunch(ge, c->st));
    CK_CUDA(cudaEventRecord(c->e1, c->st));
    double ms = elapsed_max_ms(c) / iters;
    CK_CUDA(cudaGraphExecDestroy(ge));
    return ms;
}

static uint16_t f32_to_bf16(float f) { /* exact for the small integers used here */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Fill with rank+1, one all-reduce (plain or replayed graph), compare with
 * n(n+1)/2 everywhere. Returns the number of wrong values, summed over ranks. */
static long check(struct ctx *c, void *host, size_t count, int bf16, int graph) {
    size_t esz = bf16 ? 2 : 4;
    float v = (float)(c->rank + 1), want = (float)c->size * (c->size + 1) / 2;
    for (size_t i = 0; i < count; i++) {
        if (bf16)
            ((uint16_t *)host)[i] = f32_to_bf16(v);
        else
            ((float *)host)[i] = v;
    }
    ncclDataType_t dt = bf16 ? ncclBfloat16 : ncclFloat32;
    cudaGraphExec_t ge = NULL;
    if (graph) ge = capture(c, count, dt, 1); /* captured before the fill: replay must see new data */
    CK_CUDA(cudaMemcpy(c->buf, host, count * esz, cudaMemcpyHostToDevice));
    line_up(c);
    if (graph)
        CK_CUDA(cudaGraphLaunch(ge, c->st));
    else
        CK_NCCL(ncclAllReduce(c->buf, c->buf, count, dt, ncclSum, c->comm, c->st));
    CK_CUDA(cudaStreamSynchronize(c->st));
    if (ge) CK_CUDA(cudaGraphExecDestroy(ge));
    memset(host, 0, count * esz);
    CK_CUDA(cudaMemcpy(host, c->buf, count * esz, cudaMemcpyDeviceToHost));
    long bad = 0, all = 0;
    for (size_t i = 0; i < count; i++) {
        float got = bf16 ? bf16_to_f32(((uint16_t *)host)[i]) : ((float *)host)[i];
        if (got != want) {
            if (!bad)
                fprintf(stderr, "FAIL: rank %d %s %s all-reduce: [%zu] = %g, want %g\n", c->rank,
                        bf16 ? "bf16" : "fp32", graph ? "graph" : "plain", i, got, want);
            bad++;
        }
    }
    CK_MPI(MPI_Allreduce(&bad, &all, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD));
    return all;
}

static void json_str(const char *s) {
    if (!s) {
        printf("null");
        return;
    }
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

int main(int argc, char **argv) {
    CK_MPI(MPI_Init(&argc, &argv));
    CK_MPI(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    struct ctx c = {0};
    CK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &c.rank));
    CK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &c.size));
    int iters = 100, json = 0;
    for (int i = 1; i < argc; i++) {
        char *end = NULL;
        if (!strcmp(argv[i], "--iters") && i + 1 < argc) {
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 1000000)
                iters = -1;
            else
                iters = (int)v;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else {
            iters = -1;
        }
        if (iters < 0) {
            if (c.rank == 0)
                fprintf(stderr, "usage: mpirun -np 2 bench_nccl_allreduce [--iters 1..1000000] [--json]\n");
            MPI_Finalize();
            return 2;
        }
    }
    /* Before any NCCL call: NCCL reads its environment once, at its first call. */
    const char *nvls = getenv("NCCL_NVLS_ENABLE");
    if ((!nvls || strcmp(nvls, "0")) && c.rank == 0)
        fprintf(stderr, "bench_nccl_allreduce: NCCL_NVLS_ENABLE=%s, forcing 0 (no NVLink multicast)\n",
                nvls ? nvls : "(unset)");
    if (setenv("NCCL_NVLS_ENABLE", "0", 1)) fail(__LINE__, "setenv(NCCL_NVLS_ENABLE)", "out of memory");

    /* One rank per GPU: the rank within this host picks the device. */
    MPI_Comm local;
    int lrank = 0, lsize = 1, ndev = 0;
    CK_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, c.rank, MPI_INFO_NULL, &local));
    CK_MPI(MPI_Comm_rank(local, &lrank));
    CK_MPI(MPI_Comm_size(local, &lsize));
    CK_MPI(MPI_Comm_free(&local));
    CK_CUDA(cudaGetDeviceCount(&ndev));
    if (ndev < 1) fail(__LINE__, "cudaGetDeviceCount", "no CUDA device");
    if (lsize > ndev) { /* NCCL refuses two ranks on one GPU; say why first */
        char why[128];
        snprintf(why, sizeof why, "%d ranks on this host but %d GPUs (one rank per GPU)", lsize, ndev);
        fail(__LINE__, "device placement", why);
    }
    int dev = lrank % ndev;
    CK_CUDA(cudaSetDevice(dev));
    struct cudaDeviceProp prop;
    CK_CUDA(cudaGetDeviceProperties(&prop, dev));

    ncclUniqueId id;
    if (c.rank == 0) CK_NCCL(ncclGetUniqueId(&id));
    CK_MPI(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD));
    CK_NCCL(ncclCommInitRank(&c.comm, c.size, id, c.rank));
    int nccl_ver = 0;
    CK_NCCL(ncclGetVersion(&nccl_ver));
    CK_CUDA(cudaStreamCreateWithFlags(&c.st, cudaStreamNonBlocking));
    CK_CUDA(cudaEventCreate(&c.e0));
    CK_CUDA(cudaEventCreate(&c.e1));
    size_t max_count = (size_t)MAX_BATCH * MAX_HIDDEN;
    CK_CUDA(cudaMalloc(&c.buf, max_count * 4));
    CK_CUDA(cudaMemset(c.buf, 0, max_count * 4)); /* zeros stay zeros: no inf/NaN after many sums */

    static const int hiddens[] = {3584, 8192}, layers[] = {28, 95}, batches[] = {1, 16, 64, 256};
    struct result res[MAX_CASES];
    int nres = 0;
    for (int h = 0; h < 2; h++)
        for (int b = 0; b < 4; b++)
            for (int bf16 = 0; bf16 < 2; bf16++) {
                struct result *r = &res[nres++];
                size_t count = (size_t)batches[b] * hiddens[h];
                ncclDataType_t dt = bf16 ? ncclBfloat16 : ncclFloat32;
                *r = (struct result){.hidden = hiddens[h],
                                     .batch = batches[b],
                                     .layers = layers[h],
                                     .bf16 = bf16,
                                     .bytes = count * (bf16 ? 2 : 4)};
                r->us_plain = time_plain(&c, count, dt, iters);
                r->ms_step_graph = time_graph(&c, count, dt, layers[h], iters);
                r->us_graph = r->ms_step_graph * 1e3 / (2.0 * layers[h]);
            }

    void *host = malloc(max_count * 4);
    if (!host) fail(__LINE__, "malloc", "out of memory");
    long bad = 0;
    for (int bf16 = 0; bf16 < 2; bf16++)
        for (int graph = 0; graph < 2; graph++)
            bad += check(&c, host, max_count, bf16, graph);
    free(host);

    const char *proto = getenv("NCCL_PROTO"), *algo = getenv("NCCL_ALGO");
    if (c.rank == 0 && json) {
        printf("{\"bench\":\"nccl_allreduce\",\"nccl_version\":%d,\"ranks\":%d,\"device\":", nccl_ver,
               c.size);
        json_str(prop.name);
        printf(",\"iters\":%d,\"nccl_proto\":", iters);
        json_str(proto);
        printf(",\"nccl_algo\":");
        json_str(algo);
        printf(",\"check\":\"%s\",\"results\":[", bad ? "FAIL" : "ok");
        for (int i = 0; i < nres; i++) {
            const struct result *r = &res[i];
            printf("%s{\"hidden\":%d,\"batch\":%d,\"layers\":%d,\"dtype\":\"%s\",\"bytes\":%zu,"
                   "\"us_allreduce_plain\":%.3f,\"us_allreduce_graph\":%.3f,\"ms_step_plain\":%.4f,"
                   "\"ms_step_graph\":%.4f,\"algbw_plain_gbs\":%.3f,\"algbw_graph_gbs\":%.3f}",
                   i ? "," : "", r->hidden, r->batch, r->layers, r->bf16 ? "bf16" : "fp32", r->bytes,
                   r->us_plain, r->us_graph, r->us_plain * 2 * r->layers / 1e3, r->ms_step_graph,
                   r->bytes / (r->us_plain * 1e3), r->bytes / (r->us_graph * 1e3));
        }
        printf("]}\n");
    } else if (c.rank == 0) {
        printf("NCCL %d, %d ranks on %s, %d iterations; NCCL_PROTO=%s NCCL_ALGO=%s NCCL_NVLS_ENABLE=0\n",
               nccl_ver, c.size, prop.name, iters, proto ? proto : "(default)", algo ? algo : "(default)");
        printf("per step = 2*L all-reduces (L = 28 for hidden 3584, 95 for 8192) in one CUDA graph;\n"
               "times are the slowest rank's; algbw = bytes / time\n\n");
        printf("%6s %5s %5s %9s %12s %12s %11s %11s %11s\n", "hidden", "batch", "dtype", "bytes",
               "us/ar plain", "us/ar graph", "ms/step gr", "GB/s plain", "GB/s graph");
        for (int i = 0; i < nres; i++) {
            const struct result *r = &res[i];
            printf("%6d %5d %5s %9zu %12.2f %12.2f %11.3f %11.2f %11.2f\n", r->hidden, r->batch,
                   r->bf16 ? "bf16" : "fp32", r->bytes, r->us_plain, r->us_graph, r->ms_step_graph,
                   r->bytes / (r->us_plain * 1e3), r->bytes / (r->us_graph * 1e3));
        }
        printf("\ncheck (rank r holds r+1, sum = %d; fp32/bf16, plain/graph): %s\n",
               c.size * (c.size + 1) / 2, bad ? "FAIL" : "ok");
    }
    fflush(stdout);
    CK_CUDA(cudaFree(c.buf));
    CK_CUDA(cudaEventDestroy(c.e0));
    CK_CUDA(cudaEventDestroy(c.e1));
    CK_CUDA(cudaStreamDestroy(c.st));
    CK_NCCL(ncclCommDestroy(c.comm));
    CK_MPI(MPI_Finalize());
    return bad ? 1 : 0;
}
