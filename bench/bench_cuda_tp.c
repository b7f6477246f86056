/*
 * bench_cuda_tp.c: decode speed of the CUDA backend under tensor parallel
 * (issue 12): the same binary and the same code path at TP=1 and TP=N, so the
 * two tables compare only the split, not two different programs.
 *
 *   mpirun -np N bench_cuda_tp [--shape 7b|67b] [--dtype int8|bf16] [--steps S]
 *                              [--cases batch1|default|all] [--json]
 *
 * One rank per GPU (the rank within its host picks the device). Every rank
 * first runs dsi_cuda_shard_check and the ranks agree on the outcome (NCCL's
 * set-up is collective: no rank may enter it alone), then each rank builds its
 * shard of a random-weight model of the chosen shape with
 * dsi_cuda_backend_create_shard (shard size 1 under -np 1: the TP=1 baseline,
 * no NCCL). Shapes: 7b = Qwen2-7B (as bench_cuda_decode), 67b = DeepSeek LLM
 * 67B (Llama architecture, hidden 8192, 95 layers, 64/8 heads).
 *
 * Every timed step does what the service does per step (src/parallel): rank 0
 * encodes the batch with dsi_tp_batch_encode and broadcasts a control header
 * and the payload over MPI; the workers check and decode it (dsi_tp_hdr_check,
 * dsi_tp_batch_decode) and run the decoded batch. Then rank 0 runs forward +
 * GPU sampling (ids only cross to the host) and the workers run forward with
 * no host logits (theirs stay on the GPU). So the step time includes the
 * control message, the two all-reduces per layer and the lm_head all-gather.
 *
 * Decode steps run at a fixed context: each sequence's KV cache is taken as
 * already filled up to pos (its contents do not change the work), as in
 * bench_cuda_decode. Cases: batch 1 at ctx 128 and 2048 and 64 streams at ctx
 * 1024 (default); batch1 = the two batch-1 cases; all = default + 16 and 256
 * streams at ctx 1024. A case whose KV does not fit the smallest rank's pool is
 * skipped on every rank (the pool size is agreed with MPI_Allreduce MIN, so all
 * ranks take the same decision and stay in lockstep).
 *
 * Reported per case (rank 0): step ms (rank 0's wall clock, CLOCK_MONOTONIC,
 * mean of S steps after 2 warm-up steps and a barrier), tok/s = streams / step,
 * GB streamed per GPU per step = (all weight matrices + K/V read by attention)
 * / N (each rank holds 1/N of every matrix and of the KV heads; the replicated
 * embedding row and norms are noise), per-GPU roofline share = that / step /
 * 4.25 TB/s (H200 HBM3e), and ctl us = rank 0's encode + broadcast time per
 * step (it includes waiting for a worker that is still busy). --json adds one
 * JSON line per case (lines starting with '{'; grep them for RESULTS.md).
 *
 * NVLink multicast (NVLS) can take the shared GPU host out of service, so
 * NCCL_NVLS_ENABLE=0 is forced before the first NCCL call (see
 * bench_nccl_allreduce.c). Every failure prints the rank and the reason, then
 * MPI_Abort takes all ranks down (no rank left waiting in a collective). Exit 77
 * (skipped) when any rank has no GPU or the build has no NCCL (DSI_ENODEV).
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dsinfer/backend.h"
#include "dsinfer/clock.h"
#include "dsinfer/parallel.h"
#include "dsinfer/err.h"
#include "bench_shapes.h"
#include "cuda_backend.h"
#include "dsinfer/model.h"

#define PEAK 4.25e12    /* H200 HBM bandwidth, bytes/s */
#define MAX_SEQS 256    /* largest case; also the backend's max_seqs */
#define MAX_TOKENS 2048 /* backend max_batch_tokens, as the service's default */
#define MAX_CTX 2048    /* largest context of any case */
#define WARMUP 2

/* Agreed outcome of a step every rank takes (device check, create): the worst wins. */
enum { ST_OK = 0, ST_NODEV = 1, ST_FAIL = 2 };

/* Print what failed on which rank, then take every rank down (never returns). */
static void fail(int rank, const char *what, const char *why) {
    fprintf(stderr, "bench_cuda_tp: rank %d: %s failed: %s\n", rank, what, why && *why ? why : "?");
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1); /* MPI_Abort does not return; this keeps the compiler and a broken MPI honest */
}

static void fail_mpi(int rank, const char *what, int mrc) {
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(mrc, s, &n) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error %d", mrc);
    fail(rank, what, s);
}

#define CK_MPI(rank, call)                                                                                   \
    do {                                                                                                     \
        int m_ = (call);                                                                                     \
        if (m_ != MPI_SUCCESS) fail_mpi(rank, #call, m_);                                                    \
    } while (0)

/* The worst of every rank's status (MPI_Allreduce MAX). */
static int agree(int rank, int st) {
    int all = ST_FAIL;
    CK_MPI(rank, MPI_Allreduce(&st, &all, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
    return all;
}

/* Every rank got ST_NODEV or better: say why once, leave cleanly with 77. */
static int skip_77(int rank, const char *why) {
    if (rank == 0) printf("bench_cuda_tp: skipped: %s\n", why);
    fflush(stdout);
    MPI_Finalize();
    return 77;
}

/* bf16 K and V of every layer for one token of the whole model (all KV heads). */
static double kv_bytes_per_token(const struct dsi_model_config *c) {
    return (double)c->n_layers * 2 * c->n_kv_heads * c->head_dim * 2;
}

struct run {
    struct dsi_backend *be;
    int rank, size;
    struct dsi_tp_limits lim; /* what workers check each message against */
    int32_t *tokens, *bt, *ids;
    struct dsi_batch_seq *seqs;  /* rank 0's batch */
    struct dsi_batch_seq *wseqs; /* a worker's decoded batch */
    struct dsi_cuda_sample_params *sp;
    int32_t *msg; /* control payload: rank 0 encodes into it, workers receive into it */
    size_t msg_cap;
    uint32_t step;
    double ctl_s; /* rank 0: time spent encoding and broadcasting */
};

/* One service step. Rank 0: check and encode b, broadcast header + payload, forward with
 * GPU sampling. Workers: receive, validate and decode the message like outside
 * input, forward the decoded batch without host logits. Any error aborts. */
static void step(struct run *r, const struct dsi_batch *b) {
    char *err = NULL;
    uint32_t hdr[DSI_TP_HDR_WORDS];
    int rc;
    r->step++;
    if (r->rank == 0) {
        double t0 = dsi_now_s();
        size_t n_words = 0;
        if ((rc =
                 dsi_tp_batch_check(b, &r->lim, &err))) /* as the service: a bad batch fails before sending */
            fail(r->rank, "dsi_tp_batch_check", err ? err : dsi_strerror(rc));
        if ((rc = dsi_tp_batch_encode(b, r->be->kv_block_size, r->msg, r->msg_cap, &n_words, &err)))
            fail(r->rank, "dsi_tp_batch_encode", err ? err : dsi_strerror(rc));
        dsi_tp_hdr_make(hdr, DSI_TP_MSG_FORWARD, (uint32_t)n_words, r->step);
        CK_MPI(r->rank, MPI_Bcast(hdr, DSI_TP_HDR_WORDS, MPI_UINT32_T, 0, MPI_COMM_WORLD));
        CK_MPI(r->rank, MPI_Bcast(r->msg, (int)n_words, MPI_INT32_T, 0, MPI_COMM_WORLD));
        r->ctl_s += dsi_now_s() - t0;
        if ((rc = dsi_cuda_backend_forward_sample(r->be, b, r->sp, r->ids, &err)))
            fail(r->rank, "dsi_cuda_backend_forward_sample", err ? err : dsi_strerror(rc));
        return;
    }
    CK_MPI(r->rank, MPI_Bcast(hdr, DSI_TP_HDR_WORDS, MPI_UINT32_T, 0, MPI_COMM_WORLD));
    if ((rc = dsi_tp_hdr_check(hdr, (uint32_t)r->msg_cap, &err)))
        fail(r->rank, "dsi_tp_hdr_check", err ? err : dsi_strerror(rc));
    if (hdr[2] != DSI_TP_MSG_FORWARD || hdr[4] != r->step)
        fail(r->rank, "control header", "not the forward message of this step");
    CK_MPI(r->rank, MPI_Bcast(r->msg, (int)hdr[3], MPI_INT32_T, 0, MPI_COMM_WORLD));
    struct dsi_batch wb;
    if ((rc = dsi_tp_batch_decode(r->msg, hdr[3], &r->lim, r->wseqs, &wb, &err)))
        fail(r->rank, "dsi_tp_batch_decode", err ? err : dsi_strerror(rc));
    if ((rc = r->be->ops->forward(r->be, &wb, NULL, &err)))
        fail(r->rank, "forward", err ? err : dsi_strerror(rc));
}

/* n_seqs sequences at context ctx (one new token each) in lockstep on every
 * rank; returns rank 0's seconds per step (0 on workers), -1 if the KV does
 * not fit the agreed pool (the same answer on every rank). */
static double time_decode(struct run *r, int n_seqs, int ctx, int steps) {
    int bs = r->be->kv_block_size, bps = (ctx + bs) / bs;
    if ((long long)n_seqs * bps > r->lim.n_kv_blocks) return -1;
    bench_decode_batch(n_seqs, ctx, bs, r->be->vocab_size, r->bt, r->tokens, r->seqs, r->sp);
    struct dsi_batch b = {.seqs = r->seqs, .n_seqs = n_seqs};
    for (int it = 0; it < WARMUP; it++) /* cuBLAS heuristics, lazy module loading, NCCL connections */
        step(r, &b);
    CK_MPI(r->rank, MPI_Barrier(MPI_COMM_WORLD));
    r->ctl_s = 0;
    double t0 = dsi_now_s();
    for (int it = 0; it < steps; it++)
        step(r, &b);
    return r->rank == 0 ? (dsi_now_s() - t0) / steps : 0;
}

static void usage(int rank) {
    if (rank == 0)
        fprintf(stderr, "usage: mpirun -np N bench_cuda_tp [--shape 7b|67b] [--dtype int8|bf16] "
                        "[--steps 1..10000] [--cases batch1|default|all] [--json]\n");
}

/* The shard's vote before NCCL's collective set-up (cuda_backend.h): 1 only when
 * every rank's GPU is ready. */
static int agree_ok(void *ctx, int ok) {
    (void)ctx;
    int all = 0;
    if (MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD) != MPI_SUCCESS) return 0;
    return all;
}

int main(int argc, char **argv) {
    int rank = 0, size = 1;
    CK_MPI(0, MPI_Init(&argc, &argv));
    CK_MPI(0, MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    CK_MPI(0, MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    CK_MPI(rank, MPI_Comm_size(MPI_COMM_WORLD, &size));

    /* Every rank parses the same argv, so all of them agree on a bad one. */
    const char *shape = "7b", *dtype = "int8", *cases_arg = "default";
    int steps = 20, json = 0, bad = 0;
    for (int i = 1; i < argc && !bad; i++) {
        if (!strcmp(argv[i], "--shape") && i + 1 < argc) {
            shape = argv[++i];
            bad = strcmp(shape, "7b") && strcmp(shape, "67b");
        } else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
            dtype = argv[++i];
            bad = strcmp(dtype, "int8") && strcmp(dtype, "bf16");
        } else if (!strcmp(argv[i], "--steps") && i + 1 < argc) {
            char *end = NULL;
            long v = strtol(argv[++i], &end, 10);
            bad = *end || v < 1 || v > 10000;
            if (!bad) steps = (int)v;
        } else if (!strcmp(argv[i], "--cases") && i + 1 < argc) {
            cases_arg = argv[++i];
            bad = strcmp(cases_arg, "batch1") && strcmp(cases_arg, "default") && strcmp(cases_arg, "all");
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else {
            bad = 1;
        }
    }
    if (bad) {
        usage(rank);
        MPI_Finalize();
        return 2;
    }
    int int8 = !strcmp(dtype, "int8");

    /* Before any NCCL call: NCCL reads its environment once, at its first call. */
    const char *nvls = getenv("NCCL_NVLS_ENABLE");
    if ((!nvls || strcmp(nvls, "0")) && rank == 0 && size > 1)
        fprintf(stderr, "bench_cuda_tp: NCCL_NVLS_ENABLE=%s, forcing 0 (no NVLink multicast)\n",
                nvls ? nvls : "(unset)");
    if (setenv("NCCL_NVLS_ENABLE", "0", 1)) fail(rank, "setenv(NCCL_NVLS_ENABLE)", "out of memory");

    /* One rank per GPU: the rank within this host picks the device. */
    MPI_Comm local;
    int lrank = 0, lsize = 1, ndev = 0;
    CK_MPI(rank, MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local));
    CK_MPI(rank, MPI_Comm_rank(local, &lrank));
    CK_MPI(rank, MPI_Comm_size(local, &lsize));
    CK_MPI(rank, MPI_Comm_free(&local));
    int st = ST_OK;
    cudaError_t ce = cudaGetDeviceCount(&ndev);
    if (ce != cudaSuccess || ndev < 1) {
        fprintf(stderr, "bench_cuda_tp: rank %d: no CUDA device (%s)\n", rank,
                ce != cudaSuccess ? cudaGetErrorString(ce) : "0 devices");
        st = ST_NODEV;
    } else if (lsize > ndev) { /* NCCL refuses two ranks on one GPU; say why first */
        fprintf(stderr, "bench_cuda_tp: rank %d: %d ranks on this host but %d GPUs (one rank per GPU)\n",
                rank, lsize, ndev);
        st = ST_FAIL;
    }
    if ((st = agree(rank, st)) == ST_NODEV) return skip_77(rank, "no CUDA device on some rank");
    if (st != ST_OK) fail(rank, "device placement", "see the message of the rank that failed");

    struct dsi_model m;
    memset(&m, 0, sizeof m);
    int is67 = !strcmp(shape, "67b");
    if (is67)
        deepseek_67b(&m.cfg);
    else
        qwen2_7b(&m.cfg);
    const struct dsi_model_config *c = &m.cfg;
    struct dsi_backend_opts o = {.weight_dtype = int8 ? DSI_W_INT8 : DSI_W_BF16,
                                 .kv_dtype = DSI_KV_BF16,
                                 .kv_block_size = 16,
                                 .kv_gpu_fraction = 0.8f,
                                 .max_batch_tokens = MAX_TOKENS,
                                 .max_seqs = MAX_SEQS,
                                 .device = lrank};

    /* What can fail on one rank alone (split, device) is checked and agreed
     * before the collective set-up: a rank that stayed out of ncclCommInitRank
     * would leave the others waiting there forever. */
    char *err = NULL;
    int rc = dsi_cuda_shard_check(c, &o, size, &err);
    st = rc == 0 ? ST_OK : rc == DSI_ENODEV ? ST_NODEV : ST_FAIL;
    if (rc)
        fprintf(stderr, "bench_cuda_tp: rank %d: dsi_cuda_shard_check (%s %s, %d ranks, device %d): %s\n",
                rank, shape, dtype, size, lrank, err ? err : dsi_strerror(rc));
    free(err), err = NULL;
    if ((st = agree(rank, st)) == ST_NODEV) return skip_77(rank, "no usable GPU on some rank (DSI_ENODEV)");
    if (st != ST_OK) fail(rank, "shard check", "see the message of the rank that failed");

    /* The NCCL id: rank 0 makes it, MPI carries it. Shard size 1 opens no NCCL
     * (cuda_backend.h), so the TP=1 baseline does not need one. */
    struct dsi_cuda_shard sh;
    memset(&sh, 0, sizeof sh);
    sh.rank = rank;
    sh.size = size;
    sh.one_host = lsize == size; /* the fused NVLink all-reduce needs every rank on this host */
    sh.agree = agree_ok;         /* every rank votes before NCCL's set-up */
    if (size > 1) {
        if (rank == 0) {
            rc = dsi_cuda_tp_unique_id(sh.nccl_id, &err);
            st = rc == 0 ? ST_OK : rc == DSI_ENODEV ? ST_NODEV : ST_FAIL;
            if (rc)
                fprintf(stderr, "bench_cuda_tp: rank 0: dsi_cuda_tp_unique_id: %s\n",
                        err ? err : dsi_strerror(rc));
            free(err), err = NULL;
        }
        CK_MPI(rank, MPI_Bcast(&st, 1, MPI_INT, 0, MPI_COMM_WORLD));
        if (st == ST_NODEV) return skip_77(rank, "this build has no NCCL");
        if (st != ST_OK) fail(rank, "NCCL unique id", "see rank 0's message");
        CK_MPI(rank, MPI_Bcast(sh.nccl_id, DSI_CUDA_NCCL_ID_BYTES, MPI_BYTE, 0, MPI_COMM_WORLD));
    }

    struct dsi_backend *be = NULL;
    double t0 = dsi_now_s();
    rc = dsi_cuda_backend_create_shard(&m, &o, &sh, true, 42, &be, &err);
    double create_s = dsi_now_s() - t0, create_max = 0;
    st = rc == 0 ? ST_OK : rc == DSI_ENODEV ? ST_NODEV : ST_FAIL;
    if (rc)
        fprintf(stderr, "bench_cuda_tp: rank %d: dsi_cuda_backend_create_shard (%s %s, shard %d of %d): %s\n",
                rank, shape, dtype, rank, size, err ? err : dsi_strerror(rc));
    free(err), err = NULL;
    /* A rank with a backend holds GPU memory and an NCCL communicator; the
     * process exit below releases both, so no destroy on these paths. */
    if ((st = agree(rank, st)) == ST_NODEV)
        return skip_77(rank, "no GPU or no NCCL (DSI_ENODEV) on some rank");
    if (st != ST_OK) fail(rank, "backend create", "see the message of the rank that failed");
    CK_MPI(rank, MPI_Reduce(&create_s, &create_max, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD));

    /* The pool the engine would use: the smallest rank's, so every rank accepts every block id. */
    struct run r = {.be = be, .rank = rank, .size = size};
    int n_blocks = 0;
    CK_MPI(rank, MPI_Allreduce(&be->n_kv_blocks, &n_blocks, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
    r.lim = (struct dsi_tp_limits){.max_tokens = MAX_TOKENS,
                                   .max_ctx = MAX_CTX,
                                   .block_size = be->kv_block_size,
                                   .n_kv_blocks = n_blocks,
                                   .vocab_size = be->vocab_size,
                                   .max_seqs = MAX_SEQS};
    if ((rc = dsi_tp_batch_max_words(&r.lim, &r.msg_cap)))
        fail(rank, "dsi_tp_batch_max_words", dsi_strerror(rc));
    size_t bps_max = ((size_t)MAX_CTX + (size_t)be->kv_block_size) / (size_t)be->kv_block_size;
    r.tokens = calloc(MAX_SEQS, sizeof *r.tokens);
    r.bt = calloc(MAX_SEQS * bps_max, sizeof *r.bt);
    r.ids = calloc(MAX_SEQS, sizeof *r.ids);
    r.seqs = calloc(MAX_SEQS, sizeof *r.seqs);
    r.wseqs = calloc(MAX_SEQS, sizeof *r.wseqs);
    r.sp = calloc(MAX_SEQS, sizeof *r.sp);
    r.msg = calloc(r.msg_cap, sizeof *r.msg);
    if (!r.tokens || !r.bt || !r.ids || !r.seqs || !r.wseqs || !r.sp || !r.msg)
        fail(rank, "calloc", "out of memory");

    char devname[256] = "?";
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, lrank) == cudaSuccess)
        snprintf(devname, sizeof devname, "%s", prop.name);
    for (char *p = devname; *p; p++) /* it goes into JSON strings unescaped */
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = '_';
    double wbytes = weight_stream_bytes(c, int8), kv_tok = kv_bytes_per_token(c);
    if (rank == 0) {
        printf("shape %s (%s): hidden %d, layers %d, heads %d/%d, head_dim %d, inter %d, vocab %d\n", shape,
               is67 ? "DeepSeek LLM 67B" : "Qwen2-7B", c->hidden_size, c->n_layers, c->n_heads, c->n_kv_heads,
               c->head_dim, c->intermediate_size, c->vocab_size);
        printf("TP=%d on %s; weights %s, random: %.2f GB streamed per step in all, %.2f GB per GPU\n", size,
               devname, dtype, wbytes / 1e9, wbytes / size / 1e9);
        printf("create %.2f s (slowest rank); KV pool %d blocks of %d tokens (smallest rank), %.0f KB KV per "
               "token per GPU (backend: %.0f KB)\n",
               create_max, n_blocks, be->kv_block_size, kv_tok / size / 1024,
               be->kv_bytes_per_token / 1024.0);
        printf("step: rank 0 encodes + broadcasts the batch, forward + GPU sampling; %d steps after %d "
               "warm-up\n\n",
               steps, WARMUP);
        printf("%-5s %-5s %3s %8s %6s %10s %11s %9s %9s %8s\n", "shape", "dtype", "N", "streams", "ctx",
               "step ms", "tok/s", "GB/GPU", "roofline", "ctl us");
        fflush(stdout);
    }

    struct {
        int n_seqs, ctx;
        const char *set; /* smallest --cases set that includes it */
    } cases[] = {{1, 128, "batch1"},
                 {1, 2048, "batch1"},
                 {16, 1024, "all"},
                 {64, 1024, "default"},
                 {256, 1024, "all"}};
    int level = !strcmp(cases_arg, "batch1") ? 0 : !strcmp(cases_arg, "default") ? 1 : 2;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int need = !strcmp(cases[i].set, "batch1") ? 0 : !strcmp(cases[i].set, "default") ? 1 : 2;
        if (need > level) continue;
        int n = cases[i].n_seqs, ctx = cases[i].ctx;
        double dt = time_decode(&r, n, ctx, steps);
        if (rank != 0) continue;
        if (dt < 0) {
            printf("%-5s %-5s %3d %8d %6d   skipped: %d x %d tokens do not fit the KV pool\n", shape, dtype,
                   size, n, ctx, n, ctx);
            if (json)
                printf("{\"bench\":\"cuda_tp\",\"shape\":\"%s\",\"dtype\":\"%s\",\"tp\":%d,\"streams\":%d,"
                       "\"ctx\":%d,\"skipped\":\"kv pool\"}\n",
                       shape, dtype, size, n, ctx);
            fflush(stdout);
            continue;
        }
        double gb = (wbytes + kv_tok * n * ctx) / size / 1e9, share = gb * 1e9 / dt / PEAK;
        double ctl_us = r.ctl_s / steps * 1e6;
        printf("%-5s %-5s %3d %8d %6d %10.3f %11.1f %9.2f %8.1f%% %8.1f\n", shape, dtype, size, n, ctx,
               dt * 1e3, n / dt, gb, 100.0 * share, ctl_us);
        if (json)
            printf("{\"bench\":\"cuda_tp\",\"shape\":\"%s\",\"dtype\":\"%s\",\"tp\":%d,\"device\":\"%s\","
                   "\"streams\":%d,\"ctx\":%d,\"steps\":%d,\"step_ms\":%.4f,\"tok_s\":%.2f,"
                   "\"gb_per_gpu_step\":%.4f,\"roofline_per_gpu\":%.4f,\"ctl_us\":%.2f,\"create_s\":%.2f}\n",
                   shape, dtype, size, devname, n, ctx, steps, dt * 1e3, n / dt, gb, share, ctl_us,
                   create_max);
        fflush(stdout);
    }

    /* Lined up before teardown: the communicator goes away on every rank together. */
    CK_MPI(rank, MPI_Barrier(MPI_COMM_WORLD));
    dsi_backend_destroy(be);
    free(r.tokens), free(r.bt), free(r.ids), free(r.seqs), free(r.wseqs), free(r.sp), free(r.msg);
    MPI_Finalize();
    return 0;
}
