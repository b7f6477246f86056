/*
 * cuda_tp.c: the NCCL side of a tensor-parallel CUDA shard (issue 12).
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
    return 0;
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

void dsi__cuda_tp_destroy(struct dsi__cuda *c) {
    (void)c;
}

#endif
