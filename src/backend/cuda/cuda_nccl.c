/*
 * cuda_nccl.c: the NCCL side of a tensor-parallel CUDA shard (issue 12).
 *
 * A shard is the ordinary CUDA backend with fewer heads, KV heads, MLP rows and
 * lm_head rows (cuda_backend.c sets them, cuda_weights.c loads the slices);
 * what this file adds is the communication: one in-place fp32 all-reduce after
 * the o and the down matmul of every layer, and one all-gather of the lm_head
 * slices, all on the backend's stream so they are captured in its decode
 * graphs like any kernel. Measured on two H200s over NVLink: ~6.5 us per small
 * all-reduce inside a graph (bench/RESULTS.md).
 *
 * NCCL exists only where the CUDA toolkit ships it (not on Debian's CI): the
 * build defines DSI_HAVE_NCCL when it found it, and otherwise every entry
 * point says "built without NCCL".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"

#ifdef DSI_HAVE_NCCL
#include <nccl.h>

/* NCCL's result codes are generic; its last-error text says which call and why. */
static int nccl_check(ncclResult_t r, const char *what, const char *file, int line) {
    if (r == ncclSuccess) return 0;
    const char *last = ncclGetLastError(NULL);
    dsi_log(DSI_LOG_ERROR, "cuda", "%s:%d: %s failed: %s%s%s", file, line, what, ncclGetErrorString(r),
            last && *last ? ": " : "", last ? last : "");
    return DSI_ECUDA;
}
#define NCCL_CHECK(call) nccl_check((call), #call, __FILE__, __LINE__)

static int fast_init(struct dsi__cuda *c, const struct dsi_cuda_shard *sh, char **err);

/* Unmaps the other ranks' exchange regions (this rank's own is in c->allocs). */
static void close_peers(struct dsi__cuda *c) {
    for (int q = 0; q < c->ar.size && q < DSI_CUDA_AR_MAX_RANKS; q++)
        if (q != c->ar.rank && c->ar.peer[q]) {
            cudaIpcCloseMemHandle(c->ar.peer[q]);
            c->ar.peer[q] = NULL;
        }
    c->ar_fast = false;
}

int dsi_cuda_tp_unique_id(unsigned char id[DSI_CUDA_NCCL_ID_BYTES], char **err) {
    _Static_assert(sizeof(ncclUniqueId) == DSI_CUDA_NCCL_ID_BYTES, "NCCL unique id size");
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess)
        return dsi_seterr(err, DSI_ECUDA, "NCCL: ncclGetUniqueId failed: %s", ncclGetErrorString(r));
    memcpy(id, &u, sizeof u);
    return 0;
}

int dsi__cuda_tp_init(struct dsi__cuda *c, const struct dsi_cuda_shard *sh, char **err) {
    ncclUniqueId u;
    memcpy(&u, sh->nccl_id, sizeof u);
    ncclComm_t comm = NULL;
    ncclResult_t r = ncclCommInitRank(&comm, sh->size, u, sh->rank);
    if (r != ncclSuccess) {
        const char *last = ncclGetLastError(NULL);
        return dsi_seterr(err, DSI_ECUDA, "NCCL: rank %d of %d could not join the communicator: %s%s%s",
                          sh->rank, sh->size, ncclGetErrorString(r), last && *last ? ": " : "",
                          last ? last : "");
    }
    c->nccl = comm;
    return fast_init(c, sh, err);
}

int dsi__cuda_tp_prepare(struct dsi__cuda *c, char **err) {
    int n = c->tp_size, rc;
    if ((rc = dsi__cuda_alloc(c, &c->ar_region, dsi_cuda_ar_region_bytes(), "all-reduce region", err)) ||
        (rc = dsi__cuda_alloc(c, &c->ar.local, dsi_cuda_ar_local_bytes(), "all-reduce scratch", err)) ||
        (rc = dsi__cuda_alloc(c, &c->ar_handles, (size_t)n * sizeof(cudaIpcMemHandle_t), "IPC handles",
                              err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&c->ar_ok, sizeof(int), "all-reduce agreement", err)))
        return rc;
    if (DSI_CUDA_CHECK(cudaMemset(c->ar_region, 0, dsi_cuda_ar_region_bytes())) ||
        DSI_CUDA_CHECK(cudaMemset(c->ar.local, 0, dsi_cuda_ar_local_bytes())) ||
        DSI_CUDA_CHECK(cudaDeviceSynchronize()))
        return dsi_seterr(err, DSI_ECUDA, "cuda: clearing the all-reduce region failed");
    return 0;
}

/* Maps every rank's exchange region into this process (CUDA IPC; handles
 * all-gathered over NCCL) for the fused one-shot all-reduce. Every rank must
 * succeed, so the outcome is agreed with one more all-reduce; ranks on
 * several hosts (sh->one_host false), more ranks than the kernel takes, or
 * GPUs without peer access keep NCCL. DSI_CUDA_TP_ALLREDUCE=nccl skips it
 * (A/B timing). Nothing that can fail on one rank alone stands between the
 * two collectives: a local failure only turns this rank's vote to 0. */
static int fast_init(struct dsi__cuda *c, const struct dsi_cuda_shard *sh, char **err) {
    int n = c->tp_size, me = c->tp_rank, ok = 0;
    cudaIpcMemHandle_t *h = NULL;
    char *d_h = c->ar_handles;
    /* the same on every rank: then no rank takes part in the collectives below */
    if (n > DSI_CUDA_AR_MAX_RANKS || !sh->one_host || c->sw.tp_nccl) goto report;
    h = calloc((size_t)n, sizeof *h);
    ok = h && cudaIpcGetMemHandle(&h[me], c->ar_region) == cudaSuccess;
    cudaGetLastError();
    /* every rank takes part in both collectives whatever happened here; the
     * copies run on the backend's stream, ordered with the NCCL calls */
    if ((h && DSI_CUDA_CHECK(cudaMemcpyAsync(d_h + (size_t)me * sizeof *h, &h[me], sizeof *h,
                                             cudaMemcpyHostToDevice, c->stream))) ||
        NCCL_CHECK(ncclAllGather(d_h + (size_t)me * sizeof *h, d_h, sizeof *h, ncclChar, (ncclComm_t)c->nccl,
                                 c->stream)) ||
        (h &&
         DSI_CUDA_CHECK(cudaMemcpyAsync(h, d_h, (size_t)n * sizeof *h, cudaMemcpyDeviceToHost, c->stream))) ||
        DSI_CUDA_CHECK(cudaStreamSynchronize(c->stream))) {
        free(h);
        return dsi_seterr(err, DSI_ECUDA, "cuda: exchanging all-reduce regions failed");
    }
    c->ar.rank = me;
    c->ar.size = n;
    c->ar.peer[me] = c->ar_region;
    for (int q = 0; q < n && ok; q++) {
        if (q == me) continue;
        if (cudaIpcOpenMemHandle(&c->ar.peer[q], h[q], cudaIpcMemLazyEnablePeerAccess) != cudaSuccess) {
            cudaGetLastError();
            c->ar.peer[q] = NULL;
            ok = 0;
        }
    }
    free(h);
    if (DSI_CUDA_CHECK(cudaMemcpyAsync(c->ar_ok, &ok, sizeof ok, cudaMemcpyHostToDevice, c->stream)) ||
        NCCL_CHECK(
            ncclAllReduce(c->ar_ok, c->ar_ok, 1, ncclInt32, ncclMin, (ncclComm_t)c->nccl, c->stream)) ||
        DSI_CUDA_CHECK(cudaMemcpyAsync(&ok, c->ar_ok, sizeof ok, cudaMemcpyDeviceToHost, c->stream)) ||
        DSI_CUDA_CHECK(cudaStreamSynchronize(c->stream)))
        return dsi_seterr(err, DSI_ECUDA, "cuda: agreeing on the all-reduce path failed");
report:
    c->ar_fast = ok != 0;
    if (!c->ar_fast) close_peers(c);
    dsi_log(DSI_LOG_INFO, "cuda", "rank %d: all-reduces %s", me,
            c->ar_fast ? "fused with add+RMSNorm over NVLink (one-shot) for small steps, NCCL above"
                       : "by NCCL (ranks on several hosts or without peer access to each other's memory, "
                         "more than 8 ranks, or DSI_CUDA_TP_ALLREDUCE=nccl)");
    return 0;
}

int dsi__cuda_tp_reduce_norm(struct dsi__cuda *c, const float *w, int rows) {
    const int H = c->cfg.hidden_size;
    if (c->ar_fast && dsi_cuda_ar_fits(rows, H))
        return dsi_cuda_ar_add_rmsnorm(&c->ar, c->x, c->delta, w, c->xn, rows, H, c->cfg.rms_norm_eps,
                                       c->stream);
    int rc = dsi__cuda_tp_allreduce(c, c->delta, (size_t)rows * H);
    return rc ? rc : dsi_cuda_add_rmsnorm(c->x, c->delta, w, c->xn, rows, H, c->cfg.rms_norm_eps, c->stream);
}

int dsi__cuda_tp_allreduce(struct dsi__cuda *c, float *buf, size_t n) {
    return NCCL_CHECK(ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, (ncclComm_t)c->nccl, c->stream));
}

int dsi__cuda_tp_logits(struct dsi__cuda *c, int rows) {
    size_t chunk = (size_t)rows * (size_t)c->vocab_pad;
    int rc =
        NCCL_CHECK(ncclAllGather(c->lg_local, c->lg_all, chunk, ncclFloat32, (ncclComm_t)c->nccl, c->stream));
    if (rc) return rc;
    return dsi_cuda_tp_logits_unpack(c->logits, c->lg_all, rows, c->cfg.vocab_size, c->vocab_pad, c->stream);
}

void dsi__cuda_tp_destroy(struct dsi__cuda *c) {
    close_peers(c);
    if (!c->nccl) return;
    /* after an error a peer may be gone: destroy would wait for it, abort does not */
    if (c->dead)
        ncclCommAbort((ncclComm_t)c->nccl);
    else
        ncclCommDestroy((ncclComm_t)c->nccl);
    c->nccl = NULL;
}

#else /* !DSI_HAVE_NCCL */

int dsi_cuda_tp_unique_id(unsigned char id[DSI_CUDA_NCCL_ID_BYTES], char **err) {
    memset(id, 0, DSI_CUDA_NCCL_ID_BYTES);
    return dsi_seterr(err, DSI_ENODEV,
                      "tensor parallel on CUDA needs NCCL, and this dsinfer was built without NCCL");
}

int dsi__cuda_tp_init(struct dsi__cuda *c, const struct dsi_cuda_shard *sh, char **err) {
    (void)c;
    (void)sh;
    return dsi_seterr(err, DSI_ENODEV,
                      "tensor parallel on CUDA needs NCCL, and this dsinfer was built without NCCL");
}

int dsi__cuda_tp_prepare(struct dsi__cuda *c, char **err) {
    (void)c;
    return dsi_seterr(err, DSI_ENODEV,
                      "tensor parallel on CUDA needs NCCL, and this dsinfer was built without NCCL");
}

int dsi__cuda_tp_allreduce(struct dsi__cuda *c, float *buf, size_t n) {
    (void)c;
    (void)buf;
    (void)n;
    return DSI_ENODEV;
}

int dsi__cuda_tp_logits(struct dsi__cuda *c, int rows) {
    (void)c;
    (void)rows;
    return DSI_ENODEV;
}

int dsi__cuda_tp_reduce_norm(struct dsi__cuda *c, const float *w, int rows) {
    (void)c;
    (void)w;
    (void)rows;
    return DSI_ENODEV;
}

void dsi__cuda_tp_destroy(struct dsi__cuda *c) {
    (void)c;
}

#endif
