/*
 * parallel_internal.h: state shared by the files of src/parallel (bootstrap.c
 * MPI set-up and messaging, wire.c the control messages, rank0.c rank 0's
 * backend, worker.c the worker loop, shard.c and shard_cuda.c building a
 * rank's CPU or CUDA shard). Not a public header. Built only with MPI.
 *
 * Every rank holds a shard: a CPU backend (dsi_cpu_backend_create_shard, its
 * all-reduce and logits gather done here over MPI) or a CUDA backend
 * (dsi_cuda_backend_create_shard, NCCL inside). What this module adds around
 * it is the control protocol: the agreed limits every forward message is
 * checked against, the message buffer and the decoded sequences.
 */
#ifndef DSINFER_PARALLEL_INTERNAL_H
#define DSINFER_PARALLEL_INTERNAL_H

#include <mpi.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dsinfer/backend.h"
#include "dsinfer/parallel.h"

struct dsi__tp {
    struct dsi_backend be; /* rank 0's backend; be.impl points back here */
    MPI_Comm comm;
    int rank, size;
    struct dsi_tp_limits lim;
    bool dead; /* an MPI error happened: every later forward fails */
    bool cuda; /* the shard is a CUDA backend (NCCL inside) */
    uint32_t step;
    struct dsi_backend *shard; /* this rank's part of the model */

    /* CPU shard: vocab-parallel logits gathered on rank 0 */
    int vocab_size;
    int *v_counts, *v_displs;       /* vocab rows and first row of each rank */
    int *g_counts, *g_displs;       /* rank 0: Gatherv layout of one step's logits (scratch) */
    float *lg_all;                  /* rank 0: (max_seqs, vocab) rank-major blocks */
    int *x_sc, *x_sd, *x_rc, *x_rd; /* expert parallel: (size) element counts and offsets of one exchange */

    int32_t *msg; /* forward payload buffer (msg_cap words) */
    size_t msg_cap;
    struct dsi_batch_seq *seqs; /* worker: decoded sequences (lim.max_seqs) */
};

/* The communicator of the TP world (a duplicate of MPI_COMM_WORLD with
 * MPI_ERRORS_RETURN); MPI_COMM_NULL when MPI is not up. */
MPI_Comm dsi__parallel_comm(void);
/* DSI_EDIST with MPI's message for code mrc, naming what failed. */
int dsi__parallel_mpierr(int mrc, const char *what, char **err);
/* Rank 0: broadcast a header (+ payload). Every rank: receive a header (workers poll). */
int dsi__parallel_send(enum dsi_tp_msg type, const int32_t *payload, uint32_t n_words, uint32_t step,
                       char **err);
int dsi__parallel_recv_hdr(uint32_t hdr[DSI_TP_HDR_WORDS], char **err);
/* This rank's index and the rank count on its host (split once at start-up). */
int dsi__parallel_local_rank(void);
int dsi__parallel_local_size(void);
/* Logs why, then MPI_Abort: every rank ends (systemd restarts the job). For a
 * failure that leaves other ranks inside a collective that cannot complete. */
void dsi__parallel_fatal(const char *why);
/* --expert-parallel N of this run (0: not given; ranks per expert group = all). */
int dsi__parallel_ep_flag(void);
/* Rank 0 records whether a TP backend is alive (only one at a time). */
void dsi__parallel_set_backend(bool alive);
bool dsi__parallel_has_backend(void);

/* Builds this rank's CPU shard of m (config and split checked); every rank calls it. */
int dsi__tp_create_shard(const struct dsi_model *m, const struct dsi_backend_opts *o, struct dsi__tp **out,
                         char **err);
/* A new struct dsi__tp on the TP communicator (rank, size set; no shard yet). */
int dsi__tp_new(struct dsi__tp **out, char **err);
/* After t->shard is built: rank 0's backend fields and t->lim from the shard
 * (kv_bytes_per_token: what the whole job stores per token), and the message
 * buffers (dsi__tp_alloc_msg). */
int dsi__tp_adopt(struct dsi__tp *t, const struct dsi_model *m, size_t kv_bytes_per_token, int max_tokens,
                  int max_seqs, int max_ctx, char **err);
/* Every rank after "create" (pre: 0 or this rank's error): one MPI_Allreduce
 * says whether every rank can build; only then is the shard built. */
int dsi__tp_agree_and_build(enum dsi_tp_backend kind, const struct dsi_model *m,
                            const struct dsi_backend_opts *o, const unsigned char *nccl_id, int pre,
                            struct dsi__tp **t, char **err);
/* Frees t and its shard; NULL is fine. */
void dsi__tp_free_shard(struct dsi__tp *t);
/* Sizes the forward message buffer and the decoded sequences from t->lim. */
int dsi__tp_alloc_msg(struct dsi__tp *t, char **err);
/* The same for a CUDA shard on this rank's GPU (shard_cuda.c); collective over the
 * ranks (NCCL set-up): call it only after every rank passed dsi__tp_cuda_check.
 * Without CUDA in the build: DSI_ENODEV. */
int dsi__tp_create_cuda_shard(const struct dsi_model *m, const struct dsi_backend_opts *o,
                              const unsigned char nccl_id[DSI_TP_NCCL_ID_BYTES], struct dsi__tp **out,
                              char **err);
/* What can fail on one rank alone before the CUDA shard's collective set-up
 * (config, split, GPU present); *o gets this rank's device. */
int dsi__tp_cuda_check(const struct dsi_model_config *cfg, struct dsi_backend_opts *o, char **err);
/* Rank 0: a fresh NCCL id for "create". */
int dsi__tp_cuda_id(unsigned char id[DSI_TP_NCCL_ID_BYTES], char **err);
/* Rank 0's forward with sampling on the GPU (cuda-tp backend). */
int dsi__tp_forward_sample(struct dsi_backend *be, const struct dsi_batch *b,
                           const struct dsi_sample_params *p, int32_t *ids, char **err);
/* Worker side of the protocol; returns 0 after "shutdown". */
int dsi__tp_worker_loop(char **err);

#endif
