/*
 * shard.c: builds this rank's shard of the model and what the control
 * protocol keeps around it (parallel_internal.h struct dsi__tp). A CPU shard
 * is the CPU backend over its slices (dsi_cpu_backend_create_shard); the
 * all-reduce and the logits gather it calls back are MPI_Allreduce and
 * MPI_Gatherv here, and an MoE model's expert-parallel exchange (planned by
 * src/ep) is MPI_Alltoall for the counts, MPI_Alltoallv for the rows and
 * MPI_Allgatherv for the MoE outputs. The CUDA shard is shard_cuda.c's. Every rank first agrees
 * that all can build (dsi__tp_agree_and_build), so no rank enters a
 * collective set-up alone.
 */
#ifdef DSI_HAVE_MPI
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "parallel_internal.h"

static int mpi_all_reduce(void *ctx, float *buf, size_t n, char **err);
static int mpi_gather_logits(void *ctx, const float *local, int n_rows, float *logits, char **err);
static int alloc_gather(struct dsi__tp *t, int max_seqs, char **err);
static int mpi_a2a_counts(void *ctx, const int32_t *send, int32_t *recv, int n, char **err);
static int mpi_a2a_rows(void *ctx, const float *send, const int32_t *send_rows, const int32_t *send_displs,
                        float *recv, const int32_t *recv_rows, const int32_t *recv_displs, int row_len,
                        char **err);
static int mpi_gather_rows(void *ctx, const float *local, float *all, const int32_t *rows,
                           const int32_t *displs, int row_len, char **err);

/* The CPU shard's all-reduce (backend.h struct dsi_shard). */
static int mpi_all_reduce(void *ctx, float *buf, size_t n, char **err) {
    struct dsi__tp *t = ctx;
    if (n > (size_t)INT_MAX) return dsi_seterr(err, DSI_EOVERFLOW, "all-reduce of %zu floats", n);
    int mrc = MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, t->comm);
    return mrc == MPI_SUCCESS ? 0 : dsi__parallel_mpierr(mrc, "all-reduce of a layer's output", err);
}

/* The CPU shard's logits: rank r's local is (n_rows, v_counts[r]); rank 0
 * receives every rank's block into lg_all (rank-major) and scatters them into
 * logits (n_rows, vocab). */
static int mpi_gather_logits(void *ctx, const float *local, int n_rows, float *logits, char **err) {
    struct dsi__tp *t = ctx;
    int *counts = t->g_counts, *displs = t->g_displs;
    for (int r = 0; r < t->size; r++) {
        counts[r] = t->v_counts[r] * n_rows;
        displs[r] = t->v_displs[r] * n_rows;
    }
    int mrc = MPI_Gatherv(local, t->v_counts[t->rank] * n_rows, MPI_FLOAT, t->lg_all, counts, displs,
                          MPI_FLOAT, 0, t->comm);
    if (mrc != MPI_SUCCESS) return dsi__parallel_mpierr(mrc, "gather of logits", err);
    if (t->rank != 0) return 0;
    if (!logits) return dsi_seterr(err, DSI_EINVAL, "tensor parallel: logits wanted but no buffer");
    size_t V = (size_t)t->vocab_size;
    for (int r = 0; r < t->size; r++) {
        const float *blk = t->lg_all + displs[r];
        int w = t->v_counts[r], v0 = t->v_displs[r];
        for (int o = 0; o < n_rows; o++)
            memcpy(logits + (size_t)o * V + (size_t)v0, blk + (size_t)o * (size_t)w,
                   (size_t)w * sizeof(float));
    }
    return 0;
}

/* Expert parallel (backend.h struct dsi_shard): the plan's counts, E per rank. */
static int mpi_a2a_counts(void *ctx, const int32_t *send, int32_t *recv, int n, char **err) {
    struct dsi__tp *t = ctx;
    int mrc = MPI_Alltoall(send, n, MPI_INT32_T, recv, n, MPI_INT32_T, t->comm);
    return mrc == MPI_SUCCESS ? 0 : dsi__parallel_mpierr(mrc, "all-to-all of expert row counts", err);
}

/* rows/displs (in rows of row_len floats) -> element counts for MPI, checked
 * against int overflow. */
static int to_elems(const struct dsi__tp *t, const int32_t *rows, const int32_t *displs, int row_len,
                    int *cnt, int *off, char **err) {
    for (int r = 0; r < t->size; r++) {
        long long c = (long long)rows[r] * row_len, o = (long long)displs[r] * row_len;
        if (rows[r] < 0 || displs[r] < 0 || c + o > INT_MAX)
            return dsi_seterr(err, DSI_EOVERFLOW,
                              "expert parallel: %d rows of %d floats at row %d overflow MPI", (int)rows[r],
                              row_len, (int)displs[r]);
        cnt[r] = (int)c;
        off[r] = (int)o;
    }
    return 0;
}

static int mpi_a2a_rows(void *ctx, const float *send, const int32_t *send_rows, const int32_t *send_displs,
                        float *recv, const int32_t *recv_rows, const int32_t *recv_displs, int row_len,
                        char **err) {
    struct dsi__tp *t = ctx;
    int rc = to_elems(t, send_rows, send_displs, row_len, t->x_sc, t->x_sd, err);
    if (!rc) rc = to_elems(t, recv_rows, recv_displs, row_len, t->x_rc, t->x_rd, err);
    if (rc) return rc;
    int mrc = MPI_Alltoallv(send, t->x_sc, t->x_sd, MPI_FLOAT, recv, t->x_rc, t->x_rd, MPI_FLOAT, t->comm);
    return mrc == MPI_SUCCESS ? 0 : dsi__parallel_mpierr(mrc, "all-to-all of expert rows", err);
}

static int mpi_gather_rows(void *ctx, const float *local, float *all, const int32_t *rows,
                           const int32_t *displs, int row_len, char **err) {
    struct dsi__tp *t = ctx;
    int rc = to_elems(t, rows, displs, row_len, t->x_rc, t->x_rd, err);
    if (rc) return rc;
    int mrc = MPI_Allgatherv(local, t->x_rc[t->rank], MPI_FLOAT, all, t->x_rc, t->x_rd, MPI_FLOAT, t->comm);
    return mrc == MPI_SUCCESS ? 0 : dsi__parallel_mpierr(mrc, "all-gather of MoE outputs", err);
}

int dsi__tp_alloc_msg(struct dsi__tp *t, char **err) {
    int rc = dsi_tp_batch_max_words(&t->lim, &t->msg_cap);
    if (rc) return dsi_seterr(err, rc, "tensor parallel: forward message size overflows");
    t->msg = calloc(t->msg_cap, sizeof(int32_t));
    t->seqs = calloc((size_t)t->lim.max_seqs, sizeof *t->seqs);
    if (!t->msg || !t->seqs) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    return 0;
}

/* The gather's layout: every rank's vocab rows (dsi_shard_range, as the shards
 * cut them) and, on rank 0, room for a step's logits. */
static int alloc_gather(struct dsi__tp *t, int max_seqs, char **err) {
    size_t n = (size_t)t->size;
    t->v_counts = calloc(n, sizeof(int));
    t->v_displs = calloc(n, sizeof(int));
    t->g_counts = calloc(n, sizeof(int));
    t->g_displs = calloc(n, sizeof(int));
    size_t lg = t->rank == 0 ? (size_t)max_seqs * (size_t)t->vocab_size : 1;
    if ((size_t)max_seqs * (size_t)t->vocab_size > (size_t)INT_MAX)
        return dsi_seterr(err, DSI_EOVERFLOW, "tensor parallel: %d rows of %d logits are too many to gather",
                          max_seqs, t->vocab_size);
    t->lg_all = calloc(lg, sizeof(float));
    t->x_sc = calloc(n, sizeof(int));
    t->x_sd = calloc(n, sizeof(int));
    t->x_rc = calloc(n, sizeof(int));
    t->x_rd = calloc(n, sizeof(int));
    if (!t->v_counts || !t->v_displs || !t->g_counts || !t->g_displs || !t->lg_all || !t->x_sc || !t->x_sd ||
        !t->x_rc || !t->x_rd)
        return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    for (int r = 0; r < t->size; r++) {
        int lo, hi;
        dsi_shard_range(t->vocab_size, t->size, r, 1, &lo, &hi);
        t->v_counts[r] = hi - lo;
        t->v_displs[r] = lo;
    }
    return 0;
}

int dsi__tp_new(struct dsi__tp **out, char **err) {
    *out = NULL;
    MPI_Comm comm = dsi__parallel_comm();
    if (comm == MPI_COMM_NULL) return dsi_seterr(err, DSI_ESTATE, "tensor parallel: MPI is not initialised");
    struct dsi__tp *t = calloc(1, sizeof *t);
    if (!t) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    t->comm = comm;
    MPI_Comm_rank(comm, &t->rank);
    MPI_Comm_size(comm, &t->size);
    *out = t;
    return 0;
}

int dsi__tp_adopt(struct dsi__tp *t, const struct dsi_model *m, size_t kv_bytes_per_token, int max_tokens,
                  int max_seqs, int max_ctx, char **err) {
    const struct dsi_backend *s = t->shard;
    t->be.model = m;
    t->be.impl = t;
    t->be.vocab_size = s->vocab_size;
    t->be.kv_block_size = s->kv_block_size;
    t->be.n_kv_blocks = s->n_kv_blocks; /* the engine sees the whole model's blocks */
    t->be.weight_bytes = s->weight_bytes;
    t->be.kv_bytes_per_token = kv_bytes_per_token;
    t->be.kv_dtype = s->kv_dtype;
    if ((long long)max_ctx > (long long)s->n_kv_blocks * s->kv_block_size)
        max_ctx = s->n_kv_blocks * s->kv_block_size;
    t->lim = (struct dsi_tp_limits){.max_tokens = max_tokens,
                                    .max_ctx = max_ctx,
                                    .block_size = s->kv_block_size,
                                    .n_kv_blocks = s->n_kv_blocks,
                                    .vocab_size = s->vocab_size,
                                    .max_seqs = max_seqs};
    return dsi__tp_alloc_msg(t, err);
}

int dsi__tp_create_shard(const struct dsi_model *m, const struct dsi_backend_opts *o, struct dsi__tp **out,
                         char **err) {
    struct dsi__tp *t = NULL;
    int rc = dsi__tp_new(&t, err);
    if (rc) return rc;
    struct dsi_shard sh = {.rank = t->rank,
                           .size = t->size,
                           .all_reduce = mpi_all_reduce,
                           .gather_logits = mpi_gather_logits,
                           .all_to_all_counts = mpi_a2a_counts,
                           .all_to_all_rows = mpi_a2a_rows,
                           .all_gather_rows = mpi_gather_rows,
                           .ctx = t};
    if ((rc = dsi_cpu_backend_create_shard(m, o, &sh, &t->shard, err))) goto fail;
    int max_tokens = 0, max_seqs = 0, max_ctx = 0;
    dsi_cpu_backend_limits(t->shard, &max_tokens, &max_seqs, &max_ctx);
    t->vocab_size = t->shard->vocab_size;
    /* a CPU shard reports the whole model's KV bytes per token already */
    if ((rc = alloc_gather(t, max_seqs, err)) ||
        (rc = dsi__tp_adopt(t, m, t->shard->kv_bytes_per_token, max_tokens, max_seqs, max_ctx, err)))
        goto fail;
    *out = t;
    return 0;
fail:
    dsi__tp_free_shard(t);
    return rc;
}

void dsi__tp_free_shard(struct dsi__tp *t) {
    if (!t) return;
    if (t->shard) t->shard->ops->destroy(t->shard);
    free(t->v_counts);
    free(t->v_displs);
    free(t->g_counts);
    free(t->g_displs);
    free(t->lg_all);
    free(t->x_sc);
    free(t->x_sd);
    free(t->x_rc);
    free(t->x_rd);
    free(t->msg);
    free(t->seqs);
    free(t);
}

/* Every rank after "create": pre is 0 when this rank can build its shard (else
 * the error, already in *err). One MPI_Allreduce tells every rank whether all
 * can; only then does any rank build (the CUDA shard's NCCL set-up waits for
 * all ranks, so a lone rank would hang there). Returns the status for the
 * gather: pre, the build's result, or 0 with no shard when another rank
 * could not (that rank reports why). */
int dsi__tp_agree_and_build(enum dsi_tp_backend kind, const struct dsi_model *m,
                            const struct dsi_backend_opts *o, const unsigned char *nccl_id, int pre,
                            struct dsi__tp **t, char **err) {
    int ok = pre == 0, all_ok = 0;
    *t = NULL;
    int mrc = MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, dsi__parallel_comm());
    if (mrc != MPI_SUCCESS) return dsi__parallel_mpierr(mrc, "agreement to build the shards", err);
    if (pre) return pre;
    if (!all_ok) return 0;
    return kind == DSI_TP_BACKEND_CUDA ? dsi__tp_create_cuda_shard(m, o, nccl_id, t, err)
                                       : dsi__tp_create_shard(m, o, t, err);
}
#else
typedef int dsi__tp_shard_needs_mpi;
#endif
