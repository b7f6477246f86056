/*
 * cuda_backend.h: the CUDA backend's entry points beyond the ops table of
 * backend.h (random weights for benchmarks, sampling on the GPU, tensor-
 * parallel shards driven by src/parallel), for the CLI, src/parallel, tests and
 * benchmarks. Kernel launchers: kernels/kernels.h.
 */
#ifndef DSI_CUDA_BACKEND_H
#define DSI_CUDA_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "dsinfer/backend.h"
#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Host: inv_freq[i], i < head_dim/2, for the config's rope variant (default,
 * linear, llama3). DSI_EUNSUPPORTED for yarn/dynamic. */
int dsi_cuda_rope_inv_freq(const struct dsi_model_config *cfg, float *inv_freq, char **err);

/* Same as dsi_cuda_backend_create but with pseudo-random weights of m->cfg's
 * shape made on the GPU (m->st may be empty): speed benchmarks of real shapes. */
int dsi_cuda_backend_create_random(const struct dsi_model *m, const struct dsi_backend_opts *o, uint64_t seed,
                                   struct dsi_backend **out, char **err);
/* forward() + sampling on the GPU: only ids (one per want_logits row, batch
 * order) cross to the host. params: host array, one per want_logits row.
 * Proposed as an optional `sample` op of backend.h. */
int dsi_cuda_backend_forward_sample(struct dsi_backend *be, const struct dsi_batch *b,
                                    const struct dsi_cuda_sample_params *params, int32_t *ids, char **err);
/* Synchronizes the backend's stream (benchmarks). */
int dsi_cuda_backend_sync(struct dsi_backend *be);

/* ---- tensor parallel over NCCL (issue 12; src/parallel drives it under mpirun) ----
 * Rank r of N holds q heads [r*nh/N, (r+1)*nh/N) and the matching KV heads
 * (column-parallel q|k|v rows + bias), the same columns of o (row parallel),
 * rows [r*I/N, (r+1)*I/N) of gate and up and those columns of down, and
 * vocab rows [r*P, min(V, (r+1)*P)) of the lm_head with P = ceil(V/N); the
 * embedding and norms are replicated. One ncclAllReduce (sum, fp32) follows
 * the o and the down matmul; the lm_head slices are all-gathered so every rank
 * ends the step with the whole (rows, vocab) logits on its GPU. N must divide
 * the heads, the KV heads and the intermediate size (in whole int8 groups). */
#define DSI_CUDA_NCCL_ID_BYTES 128
struct dsi_cuda_shard {
    int rank, size; /* this rank of size (size 1: no NCCL) */
    unsigned char
        nccl_id[DSI_CUDA_NCCL_ID_BYTES]; /* rank 0's dsi_cuda_tp_unique_id, the same on every rank */
    bool one_host; /* every rank on this host: the fused NVLink all-reduce may be tried */
    /* Called by every rank right before the collective NCCL set-up, ok = 1 when
     * this rank's GPU is ready (context, stream, buffers); must return 1 only
     * when every rank's ok is 1 (an MPI_Allreduce MIN), so that no rank enters
     * ncclCommInitRank alone. NULL: the caller guarantees it. */
    int (*agree)(void *ctx, int ok);
    void *agree_ctx;
};
/* A fresh NCCL unique id (rank 0 makes it, the caller broadcasts it).
 * DSI_ENODEV when built without NCCL. */
int dsi_cuda_tp_unique_id(unsigned char id[DSI_CUDA_NCCL_ID_BYTES], char **err);
/* What can be checked before the collective set-up: the model and options fit
 * a shard of size ranks, and device o->device exists and is sm_80+. Each rank
 * runs it, and src/parallel lets no rank into dsi_cuda_backend_create_shard unless
 * every rank passed (a lone rank would wait in NCCL's set-up forever). */
int dsi_cuda_shard_check(const struct dsi_model_config *cfg, const struct dsi_backend_opts *o, int size,
                         char **err);
/* The CUDA backend for shard sh of m (device o->device; one GPU per rank):
 * ncclCommInitRank is collective, so every rank of sh must call this at the
 * same time. random: weights made on the GPU as dsi_cuda_backend_create_random.
 * Every later forward is collective too: all ranks run the same batches in the
 * same order. be->vocab_size and the logits stay the whole vocabulary. */
int dsi_cuda_backend_create_shard(const struct dsi_model *m, const struct dsi_backend_opts *o,
                                  const struct dsi_cuda_shard *sh, bool random, uint64_t seed,
                                  struct dsi_backend **out, char **err);
/* ---- fault injection (test builds only: DSI_TEST_HOOKS) ----
 * The nth checked kernel launch from now (a launcher's DSI_CUDA_CHECK of
 * cudaGetLastError, counted over the process) fails: sticky, as an illegal
 * address would (cudaErrorLaunchFailure, and every checked CUDA call after it
 * fails too, as in a poisoned context), or not (cudaErrorMemoryAllocation,
 * once). n 0 disarms and clears the poison. Load-time allocations fail with
 * DSI_TEST_FAIL_CUDA_MALLOC=N in the environment at create: the backend's Nth
 * dsi__cuda_alloc fails as cudaMalloc's out of memory would. Not declared in
 * release builds, so nothing there can call them. */
#ifdef DSI_TEST_HOOKS
void dsi_cuda_fault_arm_launch(long n, bool sticky);
#endif

/* The step limits a CUDA backend was created with (max_batch_tokens and
 * max_seqs after its defaults and caps), so tensor parallel can agree on them. */
void dsi_cuda_backend_limits(const struct dsi_backend *be, int *max_tokens, int *max_seqs);
#ifdef __cplusplus
}
#endif

#endif
