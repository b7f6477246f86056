/*
 * cuda_internal.h: state of the CUDA backend shared by its host files
 * (cuda_backend.c: create/destroy/memory, cuda_weights.c: weight upload and
 * quantization, cuda_forward.c: one scheduler step).
 *
 * Memory is planned once at create time: weights, then activation buffers for
 * max_batch_tokens rows, then the KV pool from a fraction of what is free.
 * Nothing is allocated per step.
 */
#ifndef DSI_CUDA_INTERNAL_H
#define DSI_CUDA_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "dsinfer/backend.h"
#include "cuda_backend.h"

/* Rows above which an INT8 matmul dequantizes to bf16 and calls cuBLAS. */
#define DSI__CUDA_MMA_MAX_ROWS 16
#define DSI__CUDA_MAX_SPLITS 64
/* Steps that may fail in a row on a device that still works before the backend
 * gives up (marks itself dead, so the service restarts and the load's memory
 * plan says what no longer fits): a failure that persists is not transient. */
#define DSI__CUDA_MAX_FAILED_STEPS 3
/* INT8 matmuls of MIN..MAX rows with at least MIN_N outputs take the tiled GEMM
 * (kernels/gemm_int8_tiled.cu). Measured on the H200, 7B shape (bench/RESULTS.md,
 * "Tiled INT8 GEMM"): gate_up at 16/64/128 rows 58/107/174 us against 111 us
 * (mma kernel) and 193/206 us (dequantize + cuBLAS); at 256 rows cuBLAS wins
 * (251 vs 292 us), and for the small matrices (qkv, o, down: few 128-row
 * blocks) the mma kernel and cuBLAS stay ahead. */
#define DSI__CUDA_TILED_MIN 2
#define DSI__CUDA_TILED_MAX 128
#define DSI__CUDA_TILED_MIN_N 8192
/* Narrower matrices whose bf16 copy would not stay in L2 (down: 136 MB) take the
 * tiled GEMM at BIG_MIN..BIG_MAX rows too: dequantize + cuBLAS moves 5 bytes per
 * weight through DRAM there (down at 16/32/64 rows: 99/97/100 us, tiled
 * 48-52/78/82 us), while for qkv and o the bf16 scratch is read back from L2
 * (24-28 us at 64 rows, tiled 37-48). Above 32 rows the tiled kernel stages
 * its weights in shared memory (variant 4; 6 with at most 32 x rows per block
 * where few 128-row blocks exist): gate_up at 64/128 rows 108/179 -> 98/148
 * us, lm_head 322/600 -> 274/514 us, down at 64 rows 140 -> 82 us. */
#define DSI__CUDA_TILED_BIG_MIN 9
#define DSI__CUDA_TILED_BIG_MAX 64

/* One-row INT8 matmuls take the decode GEMV: on the H200 it beats the
 * tensor-core kernel only at one row (bench/RESULTS.md, "Final GPU run"). */
#define DSI__CUDA_GEMV_MAX_ROWS 1

/* The kernels a matmul can take (cuda_plan.c says when each is chosen). */
enum dsi__cu_kernel {
    DSI__CU_CUBLAS, /* bf16 weights: cuBLAS, fp32 accumulate */
    DSI__CU_GROUP,  /* group-wise INT8: dequantize in two parts + cuBLAS */
    DSI__CU_GEMV,   /* decode GEMV (gemv_int8_dec.cu); flags: DSI_GEMV_FP32 or DSI_GEMV_TC */
    DSI__CU_TILED,  /* tiled INT8 GEMM (gemm_int8_tiled.cu); flags: DSI_Q8T_* */
    DSI__CU_MMA,    /* mma.sync INT8 kernel (gemv_int8.cu); flags: DSI_Q8_* */
    DSI__CU_DEQ,    /* per-channel INT8: dequantize to bf16 + cuBLAS, scale after */
    DSI__CU_W8A8,   /* int8_mode w8a8: per-token int8 activations, cuBLASLt int8 (cuda_w8a8.c) */
};

/* A matmul plan: rows 1..r[0].max_m take r[0]'s kernel, then r[1]'s up to
 * its max_m, and so on up to the step limit. */
#define DSI__CU_PLAN_MAX 12
struct dsi__cu_range {
    int max_m;
    uint8_t kernel; /* enum dsi__cu_kernel */
    uint8_t flags;  /* the kernel's variant */
};
struct dsi__cu_plan {
    struct dsi__cu_range r[DSI__CU_PLAN_MAX];
    int n;
    bool swiglu1; /* gate|up: one row takes dsi_cuda_gemv_int8_swiglu (SwiGLU in the epilogue) */
};

/* The A/B switches (docs/cuda-backend.md, "Switches"), read once at create by
 * dsi__cuda_switches_read, the only reader of DSI_CUDA_* variables. */
#define DSI__CU_GEMV_OFF (-1)
enum { DSI__CU_LOAD_AUTO, DSI__CU_LOAD_TWO_PASS, DSI__CU_LOAD_SINGLE_PASS };
struct dsi__cuda_switches {
    bool graphs;      /* DSI_CUDA_GRAPHS=0: false */
    int gemv;         /* DSI_CUDA_GEMV: 0 per matrix, DSI_GEMV_FP32 / DSI_GEMV_TC, DSI__CU_GEMV_OFF (old) */
    bool fuse_rope;   /* DSI_CUDA_FUSE_ROPE=0: false */
    bool fuse_swiglu; /* DSI_CUDA_FUSE_SWIGLU=0: false */
    int long_prefill; /* DSI_CUDA_LONG_PREFILL: -1 unset (head_dim > 128), 0 never, 1 always */
    int q8_variant;   /* DSI_CUDA_Q8_VARIANT: DSI_Q8_* flags of the mma kernel */
    /* DSI_CUDA_TILED=MIN[,MAX[,MIN_N]]: INT8 matmuls of tiled_min..tiled_max
     * rows (and all rows >= tiled_min that may not dequantize: the lm_head)
     * and >= tiled_min_n outputs take the tiled GEMM; tiled_min 0: never */
    int tiled_min, tiled_max, tiled_min_n;
    int load;     /* DSI_CUDA_LOAD: DSI__CU_LOAD_* */
    bool tp_nccl; /* DSI_CUDA_TP_ALLREDUCE=nccl */
};

struct dsi__cu_matrix {
    int n, k;                 /* out, in features */
    int8_t *q;                /* int8: tiled (kernels.h), dsi_cuda_q8_bytes(n, k) */
    float *scale;             /* int8 per channel: (n); NULL when group-wise */
    int group;                /* int8 group-wise: inputs per scale (divides k); 0: per channel */
    float *gscale;            /* int8 group-wise: (n, k / group) */
    uint16_t *w;              /* bf16: (n, k) row-major */
    float *bias;              /* (n) or NULL */
    int8_t *q8r;              /* int8_mode w8a8: (n, k) row-major int8 (then q is NULL), else NULL */
    struct dsi__cu_plan plan; /* its kernel per row count (cuda_plan.c) */
};

/* DeepSeek-V2/V3 (MLA + MoE) parts of a layer (cuda_deepseek*.c); o, the
 * norms and a dense layer's gate_up/down stay in struct dsi__cu_layer. */
struct dsi__cu_mla {
    struct dsi__cu_matrix wq;    /* (nh*(nope+rope), hidden) when q_lora_rank == 0 */
    struct dsi__cu_matrix wq_a;  /* (q_lora, hidden) */
    struct dsi__cu_matrix wq_b;  /* (nh*(nope+rope), q_lora) */
    struct dsi__cu_matrix wkv_a; /* (kv_lora + rope, hidden) */
    float *q_a_norm, *kv_a_norm; /* (q_lora) (kv_lora) */
    /* kv_b_proj (nh*(nope+vd), kv_lora) fp32 as the weights in use (int8:
     * q * scale): W_UK and W_UV of the absorbed products (cuBLAS SGEMM) */
    float *wkv_b;
    bool moe;
    float *router, *router_bias;            /* (E, hidden) fp32; (E) or NULL (noaux_tc) */
    struct dsi__cu_matrix *ex_gu, *ex_down; /* host arrays (E): (2 I, hidden) gate|up, (hidden, I) */
    struct dsi__cu_matrix sh_gu, sh_down;   /* shared experts; n == 0: none */
    struct dsi_cuda_moe_w *gu_w, *down_w;   /* device (E): the experts' int8 tiles and scales */
};

/* MoE steps of at most this many (token, expert) rows group and multiply on the
 * device (dsi_cuda_moe_group + dsi_cuda_moe_gemv_int8: no host round trip, so a
 * decode step is one CUDA graph); larger ones (prefill) group on the host and
 * give each expert its planned matmuls. INT8 per channel only. */
#define DSI__CUDA_MOE_DEV_ROWS 512
/* Split decode attention: at most this many (row, head, split) partials. */
/* Prefill chunks of at least this many tokens of one sequence take cuBLAS. */
#define DSI__CUDA_MLA_LONG_Q 64
#define DSI__CUDA_MLA_LONG_CTX 4096
#define DSI__CUDA_MLA_PARTIALS 8192

/* Step buffers of the DeepSeek forward (max_tokens rows T, top_k K). */
struct dsi__cu_ds {
    float *q, *kva, *qa;     /* (T, nh*(nope+rope)) (T, R+rope) (T, q_lora) */
    uint16_t *qa_n, *att;    /* (T, q_lora) (T, nh*vd) bf16 */
    float *q_lat, *o_lat;    /* (T, nh, R) */
    float *att32;            /* (T, nh*vd) */
    int32_t *idx_d, *perm_d; /* (T*K) choices; (2 T*K): tok_of | slot_of */
    float *rw_d;             /* (T*K) routing weights */
    int32_t *idx_h, *perm_h; /* pinned twins */
    int32_t *count;          /* host (E + 1) */
    int32_t *off_d;          /* device (2 E + 2): runs and used experts of the device grouping */
    float *mla_work;         /* split decode attention partials, mla_work_bytes */
    size_t mla_work_bytes;
    /* long prefill through cuBLAS (sequences of >= long_q new tokens and a
     * context of <= long_ctx; 0: off): the latent rows, the packed queries,
     * the scores and probabilities */
    int long_q, long_ctx;
    uint16_t *lp_lat, *lp_q, *lp_p; /* (long_ctx, R+rope) (nh, T, R+rope) (nh, rows, long_ctx) */
    float *lp_s;                    /* (nh, rows, long_ctx) */
    uint16_t *xg, *eact;            /* (T*K, hidden) gathered rows; (T*max(K I, IS)) bf16 */
    float *egu, *yo;                /* (T*max(2 K I, 2 IS)); (T*K, hidden) expert outputs */
};

struct dsi__cu_layer {
    struct dsi__cu_mla *mla;       /* DeepSeek layers only, else NULL */
    float *ln1, *ln2;              /* (hidden) */
    struct dsi__cu_matrix qkv;     /* ((nh + 2 nkv) hd, hidden), rows q | k | v */
    struct dsi__cu_matrix o;       /* (hidden, nh hd) */
    struct dsi__cu_matrix gate_up; /* (2 inter, hidden), rows gate | up, or interleaved (gate_up_il8) */
    struct dsi__cu_matrix down;    /* (hidden, inter) */
};

/* A cuBLASLt algorithm kept for one W8A8 product shape (cuda_w8a8.c). */
#define DSI__CU_LT_ALGOS 64
struct dsi__cu_lt_algo {
    int n, k, m;
    cublasLtMatmulAlgo_t algo;
};

/* A captured decode step (every sequence brings one token) for one batch shape. */
#define DSI__CUDA_MAX_GRAPHS 32
struct dsi__cu_graph {
    int n_seqs, n_rows, n_splits;
    cudaGraphExec_t exec;
};

struct dsi__cuda {
    struct dsi_backend base;
    struct dsi_model_config cfg;
    int device, n_sm;
    size_t l2_bytes; /* the device's L2 (picks the INT8 path of the batched matmuls) */
    bool int8, dead;
    int failed_steps; /* steps failed in a row on a healthy device (dsi__cuda_step) */
#ifdef DSI_TEST_HOOKS
    long fault_alloc_at, n_alloc_calls; /* DSI_TEST_FAIL_CUDA_MALLOC: that dsi__cuda_alloc fails; 0: off */
#endif
    int group; /* int8 group size of every matrix (embedding and lm_head too), 0: per channel */
    cudaStream_t stream;
    cublasHandle_t blas;

    void **allocs; /* every cudaMalloc, freed by destroy */
    size_t n_allocs, cap_allocs;

    uint16_t *embed;               /* (vocab, hidden) bf16 */
    struct dsi__cu_layer *layers;  /* (n_layers), host array of device pointers */
    float *final_norm;             /* (hidden) */
    struct dsi__cu_matrix lm_head; /* (vocab, hidden) */
    float *inv_freq;               /* (head_dim / 2) */

    uint16_t *kv;          /* (n_layers, 2, slots, kv_dim) bf16 */
    size_t kv_layer_elems; /* slots * kv_dim */

    int max_tokens, max_seqs, bt_cap;
    float *x, *delta, *qkv, *gu, *logits; /* (T, hidden) (T, hidden) (T, qkv) (T, 2I) (S, vocab) */
    /* the per-column scale and bias the matmul that wrote delta left for the
     * next add + RMSNorm to apply (dequantize + cuBLAS products), or NULL */
    const float *delta_scale, *delta_bias;
    uint16_t *xn, *attn, *act, *xsel; /* (T, hidden) (T, nh hd) (T, I) (S, hidden) */
    uint16_t *deq;                    /* bf16 scratch for large-batch int8 matmuls, or NULL */
    struct dsi_cuda_gemm_ws gemm_ws;  /* split-K partials + counters of the INT8 matmul */
    /* long prefill through cuBLAS: sequences of >= long_q new tokens and a context
     * of <= long_ctx (0: path off) */
    int long_q, long_ctx;
    uint16_t *lp_q, *lp_k, *lp_v, *lp_p; /* (nh, T, hd) (nkv, ctx, hd) x2 (nh, n_q, ctx) bf16 */
    float *lp_s;                         /* (nh, n_q, ctx) scores */
    float *attn_work;
    size_t attn_work_bytes;
    int32_t *meta_d, *meta_h; /* step metadata (device, pinned host) */
    size_t meta_ints;
    struct dsi_cuda_sample_params *sp_d, *sp_h;
    int32_t *ids_d, *ids_h;

    /* DeepSeek-V2/V3 (cuda_deepseek*.c): mla set, the rest NULL/0 otherwise */
    bool mla;
    float attn_factor; /* YaRN cos/sin multiplier of the MLA rope */
    int ex_il, sh_il;  /* gate|up layout of the routed / shared experts (DSI_GLU_IL8 or 0) */
    struct dsi__cu_ds ds;

    /* int8_mode w8a8 (cuda_w8a8.c): the layers' matmuls int8 x int8 */
    bool w8a8;
    cublasLtHandle_t lt;
    void *lt_ws;       /* cuBLASLt workspace, given up front (graph captures never allocate) */
    int8_t *w8a8_xq;   /* (T, widest layer input) the quantized activations */
    float *w8a8_xs;    /* (T) their per-token scales */
    int32_t *w8a8_acc; /* (T, widest layer output) the int32 sums */
    struct dsi__cu_lt_algo lt_algos[DSI__CU_LT_ALGOS];
    int n_lt_algos, lt_next;

    struct dsi__cuda_switches sw;
    /* gate|up weights (and so the gu activations) interleaved in blocks of 8
     * rows (DSI_GLU_IL8) or stacked (0: intermediate size not a multiple of 8) */
    int gate_up_il8;
    struct dsi__cu_graph graphs[DSI__CUDA_MAX_GRAPHS]; /* least recently used first */
    int n_graphs;

    /* Tensor parallel (cuda_nccl.c; cuda_backend.h says what a shard holds). cfg then
     * has this rank's heads, KV heads and intermediate size; vocab_size stays
     * whole and the lm_head holds vocab rows [vocab0, vocab0 + lm_head.n). */
    int tp_rank, tp_size; /* 0, 1 when not sharded */
    int head0, kv_head0, inter0, vocab0, vocab_pad;
    void *nccl;               /* ncclComm_t */
    bool ar_fast;             /* the ranks mapped each other's exchange regions (NVLink, one host) */
    struct dsi_cuda_ar ar;    /* kernels/tp_allreduce.cu: peer regions, epochs */
    void *ar_region;          /* this rank's exchange region (own allocation) */
    void *ar_handles;         /* device: every rank's IPC handle (the exchange) */
    int *ar_ok;               /* device: the agreement on the fused path */
    float *lg_local, *lg_all; /* (S, vocab_pad) this rank's logits, (size, S, vocab_pad) gathered */
};

/* cudaMalloc that records the pointer and turns failure into DSI_ENOMEM with
 * what it was for and how much was free. */
int dsi__cuda_alloc(struct dsi__cuda *c, void **p, size_t bytes, const char *what, char **err);
/* Frees one pointer from dsi__cuda_alloc (NULL: nothing). */
void dsi__cuda_free(struct dsi__cuda *c, void *p);
/* Uploads (or makes, when random) every weight. */
int dsi__cuda_load_weights(struct dsi__cuda *c, const struct dsi_model *m, bool random, uint64_t seed,
                           char **err);
/* The single verify + upload pass over the model's deferred weight files
 * (cuda_hashload.c): on success *images (m->n_pending entries) holds a device
 * image of every file whose digest matched, or is NULL when the two-pass
 * fallback verified them on the host; on failure nothing is kept. */
int dsi__cuda_hash_upload(struct dsi__cuda *c, const struct dsi_model *m, uint8_t ***images, char **err);
void dsi__cuda_free_images(struct dsi__cuda *c, const struct dsi_model *m, uint8_t **images);
/* Tensor parallel (cuda_nccl.c). prepare: what can fail on this rank alone
 * (the exchange buffers), before the ranks agree; init: the NCCL communicator
 * of shard sh and the exchange of the all-reduce regions (collective over its
 * ranks); allreduce: in-place fp32 sum over the ranks on
 * c->stream; logits: all-gathers the (rows, lm_head.n) slices in c->lg_local
 * into the whole (rows, vocab) logits in c->logits; destroy: frees the
 * communicator (aborts it when the backend is dead). Without NCCL, init fails
 * with DSI_ENODEV and the others are never reached. */
int dsi__cuda_tp_prepare(struct dsi__cuda *c, char **err);
int dsi__cuda_tp_init(struct dsi__cuda *c, const struct dsi_cuda_shard *sh, char **err);
int dsi__cuda_tp_allreduce(struct dsi__cuda *c, float *buf, size_t n);
/* x += all-reduce(delta) over the ranks, xn = rmsnorm(x) * w (rows of hidden):
 * the fused NVLink kernel when the ranks mapped each other's regions and the
 * rows fit it, else NCCL's all-reduce and dsi_cuda_add_rmsnorm. */
int dsi__cuda_tp_reduce_norm(struct dsi__cuda *c, const float *w, int rows);
int dsi__cuda_tp_logits(struct dsi__cuda *c, int rows);
void dsi__cuda_tp_destroy(struct dsi__cuda *c);
/* Weight loading pieces (cuda_weights.c) for cuda_deepseek_load.c. The loader
 * holds the model, the random switch and the staging buffer. linear: one
 * (rows, cols) matrix kept bf16 or quantized as every matrix; glu: gate and up
 * (inter, cols) each, stacked or with il = DSI_GLU_IL8 interleaved by 8 rows;
 * vec: a float vector (random: fill); f32: a float (rows, cols) (cols 0: a
 * vector of rows) tensor kept fp32 (random: small pseudo-random values, or
 * zeros with fill 0). */
struct dsi__cu_loader;
int dsi__cuda_load_linear(struct dsi__cu_loader *L, struct dsi__cu_matrix *w, const char *name, int rows,
                          int cols, const char *what, char **err);
int dsi__cuda_load_glu(struct dsi__cu_loader *L, struct dsi__cu_matrix *w, const char *gate, const char *up,
                       int inter, int cols, int il, const char *what, char **err);
int dsi__cuda_load_vec(struct dsi__cu_loader *L, const char *name, int n, float **dst, char **err);
int dsi__cuda_load_f32(struct dsi__cu_loader *L, const char *name, int rows, int cols, bool random_values,
                       float **dst, char **err);
/* A matrix as linear loads it (bf16, or int8 quantized), kept as the fp32
 * weights its matmuls would use (int8: q * scale), the quantized copy freed. */
int dsi__cuda_load_linear_f32(struct dsi__cu_loader *L, const char *name, int rows, int cols, float **dst,
                              char **err);
/* DeepSeek-V2/V3 (cuda_deepseek_load.c, cuda_deepseek.c). check: what the MLA
 * kernels need of the config; elems: the largest matrix (staging and
 * dequantize scratch) and max_n its most output rows; load_layer: layer il's
 * MLA and MoE weights; alloc: the step buffers and attn_factor; plan: every
 * DeepSeek matrix's plan; layer: one decoder layer of a step (the MoE
 * grouping reads the routing back to the host: no graph capture); free: the
 * host-side arrays. */
int dsi__cuda_mla_check(const struct dsi_model_config *cfg, char **err);
size_t dsi__cuda_mla_max_elems(const struct dsi_model_config *cfg);
int dsi__cuda_mla_max_n(const struct dsi_model_config *cfg);
int dsi__cuda_mla_load_layer(struct dsi__cuda *c, struct dsi__cu_loader *L, int il, char **err);
int dsi__cuda_mla_alloc(struct dsi__cuda *c, char **err);
int dsi__cuda_mla_plan(struct dsi__cuda *c, char **err);
int dsi__cuda_mla_layer(struct dsi__cuda *c, int il, int T, const struct dsi_cuda_attn_args *proto,
                        const int32_t *pos_d, const int32_t *slot_d);
void dsi__cuda_mla_free(struct dsi__cuda *c);
/* Whether a step of T rows runs without a host round trip (so as a graph), and
 * the attention split count of a decode step of n_seqs rows at context ctx. */
bool dsi__cuda_mla_graphable(const struct dsi__cuda *c, int T);
int dsi__cuda_mla_splits(const struct dsi__cuda *c, int n_seqs, int ctx);
/* The residual add + norm and the delta-producing matmul of cuda_forward.c,
 * shared with the DeepSeek layer. */
int dsi__cuda_add_norm(struct dsi__cuda *c, const float *delta, const float *w, int T);
int dsi__cuda_delta_matmul(struct dsi__cuda *c, const struct dsi__cu_matrix *w, const uint16_t *x, int T);

/* One step; logits of want_logits rows stay on the device in c->logits. */
int dsi__cuda_step(struct dsi__cuda *c, const struct dsi_batch *b, int *n_rows, char **err);
/* y (m, n) = x (m, k) W^T (+ bias), int8 or bf16, by w's plan. A kernel's
 * DSI_EINVAL is a planning bug: logged and returned as DSI_EINTERNAL. */
int dsi__cuda_matmul(struct dsi__cuda *c, const struct dsi__cu_matrix *w, const uint16_t *x, float *y, int m);
/* W8A8 (cuda_w8a8.c). prepare: after the weights and buffers, when c->w8a8:
 * the row-major int8 copies (tiled ones freed), the step buffers, cuBLASLt.
 * matmul: y (m, n) fp32 = W8A8 product (+ bias); DSI_EINVAL where w has no
 * such copy. destroy: the cuBLASLt handle. */
int dsi__cuda_w8a8_prepare(struct dsi__cuda *c, char **err);
int dsi__cuda_w8a8_matmul(struct dsi__cuda *c, const struct dsi__cu_matrix *w, const uint16_t *x, float *y,
                          int m);
void dsi__cuda_w8a8_destroy(struct dsi__cuda *c);
/* The matmul plan (cuda_plan.c). switches_read: the A/B switches from the
 * environment. plan: every matrix's plan, after the weights and buffers
 * exist (the dequantize scratch steers it); plan_matrix: one matrix for
 * 1..max_m rows, allow_deq false for matrices that must not use the
 * dequantize scratch. DSI_EINTERNAL when no kernel takes some row count. */
void dsi__cuda_switches_read(struct dsi__cuda_switches *sw);
int dsi__cuda_plan(struct dsi__cuda *c, char **err);
int dsi__cuda_plan_matrix(const struct dsi__cuda *c, struct dsi__cu_matrix *w, bool allow_deq, int max_m,
                          const char *what, char **err);
void dsi__cuda_plan_log(const struct dsi__cuda *c);
const char *dsi__cuda_kernel_name(enum dsi__cu_kernel k);

#endif
