/*
 * backend.h: the ops table every compute backend implements (cpu, cuda, tp).
 *
 * A backend owns the weights in its own format (f32/bf16/int8) and the storage of
 * the paged KV cache: n_kv_blocks blocks of kv_block_size token slots per layer.
 * Which block holds which tokens is decided by the engine (kvcache.h); the backend
 * only reads and writes the blocks named in each sequence's block table.
 *
 * One forward() call runs one scheduler step over a batch: for every sequence it
 * appends K/V for the new tokens at positions pos..pos+n_tokens-1 and, when
 * want_logits is set, produces the logits of its last new token.
 */
#ifndef DSINFER_BACKEND_H
#define DSINFER_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dsinfer/model.h"

enum dsi_weight_dtype { DSI_W_F32, DSI_W_BF16, DSI_W_INT8 };
/* INT8 weights: activations stay bf16/fp32 (W8A16, the default) or are
 * quantized per token too for int8 x int8 products (W8A8, per-channel weights
 * only; the lm_head stays W8A16). */
enum dsi_int8_mode { DSI_INT8_W8A16, DSI_INT8_W8A8 };

struct dsi_backend_opts {
    enum dsi_weight_dtype weight_dtype;
    int int8_group_size;       /* 0: per output channel; else group-wise along input */
    enum dsi_int8_mode int8_mode; /* int8 only; zero: W8A16 */
    enum dsi_kv_dtype kv_dtype;
    int kv_block_size;         /* tokens per block, e.g. 16 */
    size_t kv_bytes;           /* CPU: KV pool size in bytes */
    float kv_gpu_fraction;     /* CUDA: share of free memory after weights for the KV pool */
    int max_batch_tokens;      /* upper bound on sum(n_tokens) of one step */
    int max_seqs;              /* upper bound on n_seqs of one step */
    int n_threads;             /* CPU: 0 = all cores */
    int device;                /* CUDA device ordinal */
    int ep_size;               /* MoE models over MPI: ranks per expert-parallel group
                                * (a divisor of the ranks); 0: all ranks (include/dsinfer/ep.h) */
};

struct dsi_batch_seq {
    uint64_t seq_id;
    const int32_t *tokens;     /* (n_tokens) new tokens of this step */
    int n_tokens;
    int pos;                   /* position of tokens[0]; K/V for 0..pos-1 already in blocks */
    const int32_t *block_table;/* (n_blocks) block ids covering positions 0..pos+n_tokens-1 */
    int n_blocks;
    bool want_logits;          /* produce the logits of tokens[n_tokens-1] */
};

struct dsi_batch {
    const struct dsi_batch_seq *seqs;
    int n_seqs;
};

struct dsi_backend;

/* Per-row sampling settings of forward_sample (one per want_logits row). */
struct dsi_sample_params {
    float temperature; /* <= 0: greedy argmax (lowest id on ties) */
    int top_k;         /* 0: off */
    float top_p;       /* >= 1: off */
    float u;           /* uniform [0,1) draw from the sequence's own RNG: picks from the filtered distribution */
    int n_ids;         /* only ids < n_ids are drawn (the head's rows past the tokenizer's last id
                        * never are); 0 or >= vocab_size: every row */
};

struct dsi_backend_ops {
    const char *name;
    /* Runs one step. logits: host buffer of (rows, vocab) floats, one row per seq with
     * want_logits, in batch order. Returns 0 or DSI_E*. */
    int (*forward)(struct dsi_backend *be, const struct dsi_batch *b, float *logits, char **err);
    /* Optional: one step plus sampling inside the backend, so only token ids cross
     * to the host. p and ids: one per want_logits row, in batch order. NULL: the
     * engine calls forward() and samples on the host. Returns 0 or DSI_E*. */
    int (*forward_sample)(struct dsi_backend *be, const struct dsi_batch *b, const struct dsi_sample_params *p,
                          int32_t *ids, char **err);
    /* Optional: true once the backend cannot run another step (a sticky CUDA
     * error poisoned its context; a shard lost its peers). The engine asks after
     * a failed step and, on true, fails every live request and refuses new ones
     * (dsi_engine_dead). NULL: every failure is transient, the next step may
     * succeed (a workspace that could not grow, memory another process held). */
    bool (*dead)(struct dsi_backend *be);
    /* Per-layer debug view of quantization error: fills text report; may be NULL. */
    int (*quant_report)(struct dsi_backend *be, char **report, char **err);
    void (*destroy)(struct dsi_backend *be);
};

struct dsi_backend {
    const struct dsi_backend_ops *ops;
    const struct dsi_model *model;  /* borrowed; outlives the backend */
    int vocab_size;
    int kv_block_size;
    int n_kv_blocks;                /* size of the block pool the engine may hand out */
    size_t weight_bytes;            /* bytes of weights held (for roofline reports) */
    size_t kv_bytes_per_token;
    enum dsi_kv_dtype kv_dtype;     /* the format its KV cache holds (prefix cache blocks are keyed by it) */
    void *impl;
};

/* name: "cpu" or "cuda". Returns DSI_ENODEV (with a reason in *err) when the CUDA
 * backend is not built in or no GPU/driver is present. */
int dsi_backend_create(const char *name, const struct dsi_model *m, const struct dsi_backend_opts *o,
                       struct dsi_backend **out, char **err);
void dsi_backend_destroy(struct dsi_backend *be);

/* One rank's part of a tensor-parallel model (Megatron split; rank r of size):
 *   attention heads [r*nh/size, (r+1)*nh/size) and the matching kv heads
 *     (q/k/v rows and biases column parallel; o's columns row parallel),
 *   intermediate rows/columns of gate, up and down: an even split in whole
 *     int8 groups (dsi_shard_range), vocab rows of lm_head: an even split;
 *   embedding and norms replicated; the KV pool holds only the own kv heads.
 * The communication is the caller's (src/parallel: MPI), through callbacks every
 * rank calls in the same order: all_reduce (in-place fp32 sum over the ranks)
 * after attention's output projection and after the MLP's down projection of
 * every layer, and gather_logits once per step. size 1 and NULL callbacks: the
 * whole model in one process.
 * DeepSeek-V2/V3 (MLA + MoE) split differently: attention, dense MLPs, shared
 * experts and the latent KV cache are replicated (every rank computes every
 * token's attention, so no all-reduce), the routed experts are expert parallel
 * (include/dsinfer/ep.h: each rank routes a slice of the step's tokens and
 * exchanges rows with the experts' owners through all_to_all_counts and
 * all_to_all_rows, then all_gather_rows gives every rank every token's MoE
 * output); lm_head is vocab-split as above. */
struct dsi_shard {
    int rank, size;
    /* Sums buf[0..n) over every rank, in place; every rank gets the same bits. */
    int (*all_reduce)(void *ctx, float *buf, size_t n, char **err);
    /* local: this rank's (n_rows, v1-v0) logits of vocab rows [v0, v1); rank 0
     * gets every rank's slice into logits (n_rows, vocab); others pass NULL. */
    int (*gather_logits)(void *ctx, const float *local, int n_rows, float *logits, char **err);
    /* Expert parallel (MoE models only). recv[r*n + i] = rank r's send[me*n + i]. */
    int (*all_to_all_counts)(void *ctx, const int32_t *send, int32_t *recv, int n, char **err);
    /* Rows of row_len floats: send_rows[r] rows from send + send_displs[r] rows go
     * to rank r; recv_rows[r] rows from rank r land at recv + recv_displs[r] rows. */
    int (*all_to_all_rows)(void *ctx, const float *send, const int32_t *send_rows, const int32_t *send_displs,
                           float *recv, const int32_t *recv_rows, const int32_t *recv_displs, int row_len,
                           char **err);
    /* all (sum of rows[r], row_len) gets rank r's rows[r] rows of local at row displs[r]. */
    int (*all_gather_rows)(void *ctx, const float *local, float *all, const int32_t *rows,
                           const int32_t *displs, int row_len, char **err);
    void *ctx;
};
/* [*lo, *hi) of rank r of n over total elements in whole units of unit
 * (0 or 1: single elements); the last rank takes the remainder. */
void dsi_shard_range(int total, int n, int r, int unit, int *lo, int *hi);

/* Constructors of each backend, called by dsi_backend_create. */
int dsi_cpu_backend_create(const struct dsi_model *m, const struct dsi_backend_opts *o,
                           struct dsi_backend **out, char **err);
/* The CPU backend for shard sh of m (sh NULL: the whole model, as
 * dsi_cpu_backend_create). Every forward of a shard with size > 1 calls sh's
 * callbacks, so every rank must run the same batches in the same order; its
 * logits argument is used on rank 0 only. */
int dsi_cpu_backend_create_shard(const struct dsi_model *m, const struct dsi_backend_opts *o,
                                 const struct dsi_shard *sh, struct dsi_backend **out, char **err);
/* A CPU backend's limits, which every rank of a shard shares: tokens and
 * sequences (rows of logits) per step and positions a sequence may reach. */
void dsi_cpu_backend_limits(const struct dsi_backend *be, int *max_tokens, int *max_seqs, int *max_ctx);
int dsi_cuda_backend_create(const struct dsi_model *m, const struct dsi_backend_opts *o,
                            struct dsi_backend **out, char **err);

#endif
