/*
 * tp_internal.h: state shared by the tensor-parallel files of src/dist
 * (dist.c bootstrap + worker loop, tp_cpu.c backend, tp_load.c shard loader,
 * tp_forward.c sharded forward). Not a public header. Built only with MPI.
 *
 * Shard of rank r of N (every rank holds the same layout for its own slice):
 *   heads [r*nh/N, (r+1)*nh/N), kv heads [r*nkv/N, (r+1)*nkv/N)  (N divides both)
 *   wq/wk/wv/bq/bk/bv: those heads' rows (column parallel)
 *   wo: all hidden rows, those heads' columns (row parallel, partial sums)
 *   gate/up: rows [i0, i1) of intermediate; down: columns [i0, i1)
 *   lm_head: vocab rows [v0, v1) (vocab parallel, gathered on rank 0)
 *   embed, norms: replicated.  KV pool: only this rank's kv heads.
 */
#ifndef DSINFER_TP_INTERNAL_H
#define DSINFER_TP_INTERNAL_H

#include <mpi.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dsinfer/backend.h"
#include "dsinfer/cpu_ops.h"
#include "dsinfer/dist.h"

struct dsi__tp_layer {
    struct dsi_qweight wq;       /* (nh_l*head_dim, hidden) */
    struct dsi_qweight wk, wv;   /* (nkv_l*head_dim, hidden) */
    struct dsi_qweight wo;       /* (hidden, nh_l*head_dim) */
    struct dsi_qweight w_gate;   /* (i1-i0, hidden) */
    struct dsi_qweight w_up;     /* (i1-i0, hidden) */
    struct dsi_qweight w_down;   /* (hidden, i1-i0) */
    float *bq, *bk, *bv;         /* shards of the biases, or NULL */
    float *attn_norm, *ffn_norm; /* (hidden), replicated */
};

struct dsi__tp {
    struct dsi_backend be; /* first member; be.impl points back here */
    const struct dsi_model *m;
    const struct dsi_model_config *cfg;
    struct dsi_backend_opts opts;
    MPI_Comm comm;
    int rank, size, n_threads;
    int nh_l, nkv_l, q_l, kv_l; /* local heads, kv heads, q dim, kv dim */
    int i0, i1, v0, v1;         /* intermediate and vocab ranges of this rank */
    int *v_counts, *v_displs;   /* vocab rows and first row of each rank */
    int *g_counts, *g_displs;   /* rank 0: Gatherv layout of one step's logits (scratch) */
    struct dsi_tp_limits lim;
    bool dead; /* an MPI error happened: every later forward fails */
    uint32_t step;

    struct dsi_qweight embed;   /* (vocab, hidden), replicated */
    struct dsi_qweight lm_head; /* (v1-v0, hidden) */
    float *final_norm;
    struct dsi__tp_layer *layers;
    float *inv_freq;
    float attn_factor;

    void **allocs;
    size_t n_allocs, cap_allocs;

    void *kv; /* layer l: K then V, kv_layer_elems each */
    size_t kv_layer_elems, kv_elt;
    int max_ctx, max_tokens;

    float *x, *xn, *q, *k, *v, *att, *gate, *up, *scores, *lg_local, *lg_all;
    int32_t *tok_seq, *tok_pos;
    int32_t *msg; /* forward payload buffer (max words) */
    size_t msg_cap;
    struct dsi_batch_seq *seqs; /* worker: decoded sequences (max_tokens) */

    /* CUDA tensor parallel (tp_cuda.c): this rank's CUDA shard runs every step
     * (NCCL inside); the CPU fields above stay unused. NULL: the CPU shard. */
    struct dsi_backend *gpu;
};

/* The communicator of the TP world (a duplicate of MPI_COMM_WORLD with
 * MPI_ERRORS_RETURN); MPI_COMM_NULL when MPI is not up. */
MPI_Comm dsi__dist_comm(void);
/* DSI_EDIST with MPI's message for code mrc, naming what failed. */
int dsi__dist_mpierr(int mrc, const char *what, char **err);
/* Rank 0: broadcast a header (+ payload). Every rank: receive a header (workers poll). */
int dsi__dist_send(enum dsi_tp_msg type, const int32_t *payload, uint32_t n_words, uint32_t step, char **err);
int dsi__dist_recv_hdr(uint32_t hdr[DSI_TP_HDR_WORDS], char **err);
/* This rank's index and the rank count on its host (split once at start-up). */
int dsi__dist_local_rank(void);
int dsi__dist_local_size(void);
/* Logs why, then MPI_Abort: every rank ends (systemd restarts the job). For a
 * failure that leaves other ranks inside a collective that cannot complete. */
void dsi__dist_fatal(const char *why);
/* Rank 0 records whether a TP backend is alive (only one at a time). */
void dsi__dist_set_backend(bool alive);
bool dsi__dist_has_backend(void);

/* Builds this rank's shard of m (config checked, split checked); every rank calls it. */
int dsi__tp_create_shard(const struct dsi_model *m, const struct dsi_backend_opts *o, struct dsi__tp **out,
                         char **err);
void dsi__tp_free_shard(struct dsi__tp *t);
/* The same for a CUDA shard on this rank's GPU (tp_cuda.c); collective over the
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
int dsi__tp_load(struct dsi__tp *t, char **err);
int dsi__tp_own(struct dsi__tp *t, void *p);
/* [*lo, *hi) of rank r of n over total in whole units (tp_proto.c). */
void dsi__tp_range(int total, int n, int r, int unit, int *lo, int *hi);
/* Runs the shard's forward; collectives on t->comm; rank 0 gets logits (rows, vocab). */
int dsi__tp_forward_local(struct dsi__tp *t, const struct dsi_batch *b, float *logits, char **err);
/* Worker side of the protocol; returns 0 after "shutdown". */
int dsi__tp_worker_loop(char **err);

#endif
