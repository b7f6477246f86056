/*
 * shard_cuda.c: a rank's CUDA shard for tensor parallel over NCCL (issue 12).
 *
 * The control protocol, the worker loop and rank 0's backend are the CPU
 * path's (rank0.c, worker.c, bootstrap.c); what differs is the shard: the CUDA backend built
 * for (rank, size) on the GPU of the rank's local index on its host, with its
 * own NCCL communicator (id from rank 0's "create"), two all-reduces per layer
 * and the lm_head slices all-gathered on the GPU, all captured in its decode
 * graphs (src/backend/cuda/cuda_nccl.c). The struct dsi__tp around it keeps the
 * agreed limits, the forward message buffer and the decoded sequences.
 *
 * ncclCommInitRank waits for every rank, so a rank must never enter it alone:
 * dsi__tp_cuda_check runs everything that can fail on one rank first, and
 * shard.c lets no rank build a shard until all ranks passed (MPI_Allreduce).
 */
#ifdef DSI_HAVE_MPI
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "parallel_internal.h"

#ifdef DSI_HAVE_CUDA
#include "cuda_backend.h"

int dsi__tp_cuda_check(const struct dsi_model_config *cfg, struct dsi_backend_opts *o, char **err) {
    MPI_Comm comm = dsi__parallel_comm();
    if (comm == MPI_COMM_NULL) return dsi_seterr(err, DSI_ESTATE, "tensor parallel: MPI is not initialised");
    int size = 1;
    MPI_Comm_size(comm, &size);
    o->device = dsi__parallel_local_rank();         /* no collective here: only some ranks get this far */
    return dsi_cuda_shard_check(cfg, o, size, err); /* dsi_model_config_check with the split */
}

int dsi__tp_cuda_id(unsigned char id[DSI_TP_NCCL_ID_BYTES], char **err) {
    _Static_assert(DSI_TP_NCCL_ID_BYTES == DSI_CUDA_NCCL_ID_BYTES, "NCCL id size");
    return dsi_cuda_tp_unique_id(id, err);
}

/* The CUDA shard's vote before NCCL's set-up (cuda_backend.h): 1 when every rank's
 * ok is 1. An MPI failure counts as "no" (the gather after it reports it). */
static int agree(void *ctx, int ok) {
    struct dsi__tp *t = ctx;
    int all = 0;
    if (MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, t->comm) != MPI_SUCCESS) return 0;
    return all;
}

int dsi__tp_create_cuda_shard(const struct dsi_model *m, const struct dsi_backend_opts *o,
                              const unsigned char nccl_id[DSI_TP_NCCL_ID_BYTES], struct dsi__tp **out,
                              char **err) {
    *out = NULL;
    struct dsi__tp *t = NULL;
    int rc = dsi__tp_new(&t, err);
    if (rc) return rc;
    t->cuda = true;
    struct dsi_cuda_shard sh = {.rank = t->rank,
                                .size = t->size,
                                .one_host = dsi__parallel_local_size() == t->size,
                                .agree = agree,
                                .agree_ctx = t};
    memcpy(sh.nccl_id, nccl_id, DSI_CUDA_NCCL_ID_BYTES);
    if ((rc = dsi_cuda_backend_create_shard(m, o, &sh, false, 0, &t->shard, err))) goto fail;
    struct dsi_backend *g = t->shard;
    int max_tokens = 0, max_seqs = 0;
    dsi_cuda_backend_limits(g, &max_tokens, &max_seqs);
    int max_ctx = m->cfg.max_position_embeddings > 0 ? m->cfg.max_position_embeddings : 4096;
    /* a CUDA shard reports its own KV bytes per token: the whole job stores size times that */
    if ((rc = dsi__tp_adopt(t, m, g->kv_bytes_per_token * (size_t)t->size, max_tokens, max_seqs, max_ctx,
                            err)))
        goto fail;
    dsi_log(DSI_LOG_INFO, "dist", "rank %d/%d: CUDA shard on device %d, %d KV blocks", t->rank, t->size,
            o->device, g->n_kv_blocks);
    *out = t;
    return 0;
fail:
    dsi__tp_free_shard(t);
    return rc;
}

#else /* MPI without CUDA */

int dsi__tp_cuda_check(const struct dsi_model_config *cfg, struct dsi_backend_opts *o, char **err) {
    (void)cfg;
    (void)o;
    return dsi_seterr(err, DSI_ENODEV, "this dsinfer was built without CUDA; use --backend cpu");
}

int dsi__tp_cuda_id(unsigned char id[DSI_TP_NCCL_ID_BYTES], char **err) {
    memset(id, 0, DSI_TP_NCCL_ID_BYTES);
    return dsi_seterr(err, DSI_ENODEV, "this dsinfer was built without CUDA; use --backend cpu");
}

int dsi__tp_create_cuda_shard(const struct dsi_model *m, const struct dsi_backend_opts *o,
                              const unsigned char nccl_id[DSI_TP_NCCL_ID_BYTES], struct dsi__tp **out,
                              char **err) {
    (void)m;
    (void)o;
    (void)nccl_id;
    *out = NULL;
    return dsi_seterr(err, DSI_ENODEV, "this dsinfer was built without CUDA; use --backend cpu");
}

#endif
#else
typedef int dsi__tp_cuda_needs_mpi;
#endif
