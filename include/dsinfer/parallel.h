/*
 * parallel.h: tensor parallelism over MPI (src/parallel).
 *
 * One process per rank, started by mpirun. Rank 0 runs the command (serve,
 * generate, logits ...) as usual; ranks > 0 are workers that never parse HTTP,
 * auth or the scheduler and never open a socket: they wait for control messages
 * from rank 0 and run their shard of every forward pass.
 *
 *   main.c:  int rc; if (dsi_parallel_main_hook(&argc, argv, &rc)) { if (rc) dsi_parallel_abort(rc); exit(rc); }
 *
 * The MPI world is process-wide state by nature (MPI_Init once per process), so
 * it lives in one struct in bootstrap.c behind the accessors below: the one exception
 * to "no mutable globals".
 *
 * Control protocol (rank 0 -> all, MPI_Ibcast/MPI_Bcast on a private duplicate of
 * MPI_COMM_WORLD with MPI_ERRORS_RETURN): a fixed header of DSI_TP_HDR_WORDS
 * uint32 words {magic, version, type, payload_words, step}, then, when
 * payload_words > 0, a payload of that many int32 words. Workers validate both
 * like outside input (dsi_tp_hdr_check, dsi_tp_create_decode, dsi_tp_batch_decode).
 * Details: docs/tensor-parallel.md.
 */
#ifndef DSINFER_PARALLEL_H
#define DSINFER_PARALLEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dsinfer/backend.h"
#include "dsinfer/model.h"

/* ---- MPI bootstrap ------------------------------------------------------------ */

/* Called by main() before command dispatch. Detects an MPI launch (Open MPI's
 * OMPI_COMM_WORLD_SIZE, PMIx's PMIX_RANK or PMI_RANK in the environment) and then
 * initialises MPI (MPI_THREAD_SERIALIZED: rank 0 calls forward from the
 * scheduler thread). Removes `--tensor-parallel N` / `--tensor-parallel=N` from
 * argv (adjusting *argc) so commands never see it; N must equal the MPI world size.
 * Likewise `--expert-parallel N` (MoE models: ranks per expert-parallel group,
 * include/dsinfer/ep.h), which must divide the world size; rank 0's backend
 * passes it to every shard in "create".
 * Returns false when the command should run normally (no MPI, or rank 0); true
 * when the process is done and main should exit(*rc): worker ranks after their
 * loop ends (*rc 0 after rank 0's shutdown, 1 on an error, already logged), or
 * any rank on a bad --tensor-parallel (*rc 2). On *rc != 0 under MPI, main calls
 * dsi_parallel_abort so no rank waits forever. Registers an atexit handler that, on
 * rank 0, tells the workers to shut down, then calls MPI_Finalize. */
bool dsi_parallel_main_hook(int *argc, char **argv, int *rc);
/* MPI_Abort(rc) when MPI is up (takes every rank down), else nothing. Only main.c calls it. */
void dsi_parallel_abort(int rc);

/* 0 and 1 when not running under MPI. */
int dsi_parallel_rank(void);
int dsi_parallel_size(void);

/* ---- tensor-parallel backends ------------------------------------------------- */

enum dsi_tp_backend { DSI_TP_BACKEND_CPU = 0, DSI_TP_BACKEND_CUDA = 1 };

/* Rank 0 only, called by dsi_backend_create("cpu" / "cuda") when
 * dsi_parallel_size() > 1. Sends "create" to the workers, which open m->dir
 * themselves (skip_verify: the caller verified the manifest over whole files
 * once), load only their slices and ack. Every rank first says whether it can
 * build its shard (one MPI_Allreduce) so that no rank enters NCCL's collective
 * set-up alone. Fails (on every rank, each logging why) when the world size
 * does not divide the heads and kv heads, or int8 groups straddle a shard
 * boundary. CUDA: the rank with local index i on its host uses GPU i. */
int dsi_tp_backend_create(enum dsi_tp_backend kind, const struct dsi_model *m,
                          const struct dsi_backend_opts *o, struct dsi_backend **out, char **err);


/* ---- control messages (validated like outside input) -------------------------- */

#define DSI_TP_MAGIC 0x50545344u /* "DSTP" little-endian */
#define DSI_TP_VERSION 3u
#define DSI_TP_HDR_WORDS 8
#define DSI_TP_MAX_DIR 4096

enum dsi_tp_msg { DSI_TP_MSG_CREATE = 1, DSI_TP_MSG_FORWARD, DSI_TP_MSG_DESTROY, DSI_TP_MSG_SHUTDOWN };

/* Agreed maxima, fixed at create; every forward message is checked against them. */
struct dsi_tp_limits {
    int max_tokens;  /* sum of n_tokens of one step */
    int max_ctx;     /* positions a sequence may reach */
    int block_size;  /* tokens per KV block */
    int n_kv_blocks; /* block ids are in [0, n_kv_blocks) */
    int vocab_size;  /* token ids are in [0, vocab_size) */
    int max_seqs;    /* sequences per step (<= max_tokens; also bounds logits rows) */
};

/* What "create" carries: backend options, the model dir and a config fingerprint
 * the workers compare with what they open (a different model on one host fails). */
#define DSI_TP_NCCL_ID_BYTES 128
struct dsi_tp_create {
    struct dsi_backend_opts opts; /* all but device (each rank picks its own GPU) */
    enum dsi_tp_backend backend;
    int vocab_size, hidden_size, intermediate_size, n_layers, n_heads, n_kv_heads, head_dim;
    unsigned char nccl_id[DSI_TP_NCCL_ID_BYTES]; /* CUDA: rank 0's ncclUniqueId; CPU: zeros */
    char dir[DSI_TP_MAX_DIR + 1];
};

/* Fills a header. */
void dsi_tp_hdr_make(uint32_t hdr[DSI_TP_HDR_WORDS], enum dsi_tp_msg type, uint32_t payload_words,
                     uint32_t step);
/* 0 if hdr is a well-formed header whose payload is at most max_payload_words;
 * DSI_EFORMAT otherwise (message says which field). */
int dsi_tp_hdr_check(const uint32_t hdr[DSI_TP_HDR_WORDS], uint32_t max_payload_words, char **err);

/* Payload words a forward message needs at most under lim (DSI_EOVERFLOW if huge). */
int dsi_tp_batch_max_words(const struct dsi_tp_limits *lim, size_t *out);
/* Encodes b (checked first with dsi_tp_batch_check) into words (cap words); only
 * the block ids covering 0..pos+n_tokens-1 travel. *n_words gets the length.
 * DSI_ENOBUFS if cap is short. */
int dsi_tp_batch_encode(const struct dsi_batch *b, int block_size, int32_t *words, size_t cap,
                        size_t *n_words, char **err);
/* Decodes and validates words[0..n_words) against lim into out, using seqs
 * (room for lim->max_seqs entries); out's pointers point into words. Every
 * count, id, position and block id is checked; trailing words are an error. */
int dsi_tp_batch_decode(const int32_t *words, size_t n_words, const struct dsi_tp_limits *lim,
                        struct dsi_batch_seq *seqs, struct dsi_batch *out, char **err);
/* Same checks on a batch rank 0 is about to send (so a bad batch fails before any rank sees it). */
int dsi_tp_batch_check(const struct dsi_batch *b, const struct dsi_tp_limits *lim, char **err);

/* 16 words of options and fingerprint, the dir, then DSI_TP_CREATE_EXT words:
 * backend, max_seqs, kv_gpu_fraction (float bits), ep_size (0..4096), the NCCL id */
#define DSI_TP_CREATE_EXT (4 + DSI_TP_NCCL_ID_BYTES / 4)
#define DSI_TP_CREATE_WORDS (16 + (DSI_TP_MAX_DIR + 3) / 4 + DSI_TP_CREATE_EXT)
/* Encodes c into words (DSI_TP_CREATE_WORDS); *n_words gets the length used. */
int dsi_tp_create_encode(const struct dsi_tp_create *c, int32_t *words, size_t *n_words, char **err);
int dsi_tp_create_decode(const int32_t *words, size_t n_words, struct dsi_tp_create *c, char **err);

#endif
