/*
 * cuda_backend.c: the CUDA backend's constructor, memory plan and ops table.
 *
 * create: find a device (no driver or no GPU -> DSI_ENODEV with CUDA's reason,
 * so the same binary runs without a GPU), check the memory plan against the
 * free memory (dsinfer/memplan.h: estimated weights, before a long upload),
 * upload/quantize the weights (cuda_weights.c), allocate the activation
 * buffers for max_batch_tokens rows, then give the KV pool kv_gpu_fraction of
 * the memory still free (the plan again, with the measured sizes). Every
 * allocation failure is DSI_ENOMEM naming what did not fit and what to change.
 *
 * A failed step on one GPU whose context still works fails only that step
 * (cuda_forward.c); a sticky CUDA error (an illegal address poisons the
 * context), a failed shard or repeated failures mark the backend dead: later
 * steps fail at once with DSI_ECUDA, the dead op says so, and the engine fails
 * every request and refuses new ones until the service restarts.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "dsinfer/alloc.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "dsinfer/memplan.h"
#include "dsinfer/rope.h"

static int cuda_forward(struct dsi_backend *be, const struct dsi_batch *b, float *logits, char **err);
static int cuda_forward_sample(struct dsi_backend *be, const struct dsi_batch *b,
                               const struct dsi_sample_params *p, int32_t *ids, char **err);
static void cuda_destroy(struct dsi_backend *be);
static bool cuda_dead(struct dsi_backend *be);
static int create(const struct dsi_model *m, const struct dsi_backend_opts *o, bool random, uint64_t seed,
                  const struct dsi_cuda_shard *sh, struct dsi_backend **out, char **err);

static const struct dsi_backend_ops cuda_ops = {
    .name = "cuda",
    .forward = cuda_forward,
    .forward_sample = cuda_forward_sample,
    .dead = cuda_dead,
    .quant_report = NULL,
    .destroy = cuda_destroy,
};

int dsi__cuda_alloc(struct dsi__cuda *c, void **p, size_t bytes, const char *what, char **err) {
    *p = NULL;
    if (bytes == 0) bytes = 1;
    void **a = dsi_grow(c->allocs, c->n_allocs, &c->cap_allocs, sizeof *a, 64);
    if (!a) return dsi_seterr(err, DSI_ENOMEM, "cuda: out of host memory");
    c->allocs = a;
    cudaError_t e;
#ifdef DSI_TEST_HOOKS
    if (c->fault_alloc_at > 0 && ++c->n_alloc_calls == c->fault_alloc_at)
        e = cudaErrorMemoryAllocation; /* the test hook: as cudaMalloc's out of memory, nothing allocated */
    else
#endif
        e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        cudaGetLastError(); /* clear the (non-sticky) allocation error */
        cudaMemGetInfo(&free_b, &total_b);
        *p = NULL;
        return dsi_seterr(err, DSI_ENOMEM,
                          "GPU %d out of memory: %s needs %.1f MiB, %.1f MiB free of %.1f MiB; lower "
                          "max_batch_tokens or max_running, use --dtype int8, or free the GPU (nvidia-smi)",
                          c->device, what, bytes / 1048576.0, free_b / 1048576.0, total_b / 1048576.0);
    }
    c->allocs[c->n_allocs++] = *p;
    return 0;
}

void dsi__cuda_free(struct dsi__cuda *c, void *p) {
    if (!p) return;
    for (size_t i = 0; i < c->n_allocs; i++)
        if (c->allocs[i] == p) {
            cudaFree(p);
            c->allocs[i] = c->allocs[--c->n_allocs];
            return;
        }
}

/* What the CUDA kernels run beyond dsi_model_config_runnable: GQA groups of at
 * most 8 (attention kernels keep a group's heads in one block), head_dim 16 to
 * 256 dividing 256, and a shard holds exactly intermediate/n rows. */
static const struct dsi_backend_limits cuda_limits = {.backend = "cuda",
                                                      .max_gqa_group = 8,
                                                      .head_dim_multiple = 16,
                                                      .head_dim_divides = 256,
                                                      .split_inter_evenly = true,
                                                      .mla_moe = true};

static int check_config(const struct dsi_model_config *cfg, const struct dsi_backend_opts *o, int n_ranks,
                        char **err) {
    int gs = o->weight_dtype == DSI_W_INT8 ? o->int8_group_size : 0;
    int rc = dsi_model_config_check(cfg, &cuda_limits, n_ranks, gs, err);
    return rc ? rc : dsi__cuda_mla_check(cfg, err);
}

static int alloc_buffers(struct dsi__cuda *c, char **err) {
    const struct dsi_model_config *cfg = &c->cfg;
    size_t T = (size_t)c->max_tokens, S = (size_t)c->max_seqs, H = (size_t)cfg->hidden_size;
    size_t I = (size_t)cfg->intermediate_size, hd = (size_t)cfg->head_dim, V = (size_t)cfg->vocab_size;
    size_t nq = (size_t)cfg->n_heads * hd, nqkv = nq + 2 * (size_t)cfg->n_kv_heads * hd;
    int rc;
    if ((rc = dsi__cuda_alloc(c, (void **)&c->x, T * H * 4, "residual stream", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&c->delta, T * H * 4, "residual delta", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&c->qkv, T * nqkv * 4, "qkv activations", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&c->gu, T * 2 * I * 4, "mlp activations", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&c->logits, S * V * 4, "logits", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&c->xn, T * H * 2, "normed activations", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&c->attn, T * nq * 2, "attention output", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&c->act, T * I * 2, "mlp output", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&c->xsel, S * H * 2, "logit rows", err)))
        return rc;
    if (c->tp_size > 1) { /* vocab-parallel logits: own slice, then every rank's */
        size_t pad = (size_t)c->vocab_pad, n = (size_t)c->tp_size;
        if ((rc = dsi__cuda_alloc(c, (void **)&c->lg_local, S * pad * 4, "logits slice", err)) ||
            (rc = dsi__cuda_alloc(c, (void **)&c->lg_all, n * S * pad * 4, "gathered logits", err)))
            return rc;
    }
    /* long prefill: scores materialized for cuBLAS, only where the tensor-core
     * prefill kernel does not take the head size (it beat this path on the 7B
     * shape: 2k prompt 64.3-64.6 vs 66.2-66.8 ms, and needs none of its ~1.4 GB);
     * DSI_CUDA_LONG_PREFILL=1 / =0 forces it on / off (A/B timing) */
    bool long_pf = c->sw.long_prefill >= 0 ? c->sw.long_prefill : cfg->head_dim > DSI_CUDA_ATTN_FA_MAX_HD;
    if (c->max_tokens >= 16 && long_pf) {
        size_t lctx = 4096, nkv = (size_t)cfg->n_kv_heads, nh = (size_t)cfg->n_heads;
        size_t rows = T < lctx ? T : lctx;
        if ((rc = dsi__cuda_alloc(c, (void **)&c->lp_q, nh * T * hd * 2, "prefill q", err)) ||
            (rc = dsi__cuda_alloc(c, (void **)&c->lp_k, nkv * lctx * hd * 2, "prefill k", err)) ||
            (rc = dsi__cuda_alloc(c, (void **)&c->lp_v, nkv * lctx * hd * 2, "prefill v", err)) ||
            (rc = dsi__cuda_alloc(c, (void **)&c->lp_s, nh * rows * lctx * 4, "prefill scores", err)) ||
            (rc = dsi__cuda_alloc(c, (void **)&c->lp_p, nh * rows * lctx * 2, "prefill probabilities", err)))
            return rc;
        c->long_q = 16;
        c->long_ctx = (int)lctx;
    }
    c->attn_work_bytes =
        dsi_cuda_attn_work_bytes(c->max_seqs, cfg->n_heads, cfg->head_dim, DSI__CUDA_MAX_SPLITS);
    if ((rc = dsi__cuda_alloc(c, (void **)&c->attn_work, c->attn_work_bytes, "attention partials", err)))
        return rc;
    if (c->int8) { /* split-K runs only for matrices of < 4 row tiles per SM */
        c->gemm_ws.n_sm = c->n_sm;
        c->gemm_ws.n_counters = (int)((V + 15) / 16);
        if (c->gemm_ws.n_counters < (int)((2 * I + 15) / 16))
            c->gemm_ws.n_counters = (int)((2 * I + 15) / 16);
        if (c->mla && c->gemm_ws.n_counters < (dsi__cuda_mla_max_n(cfg) + 15) / 16)
            c->gemm_ws.n_counters = (dsi__cuda_mla_max_n(cfg) + 15) / 16;
        c->gemm_ws.partial_bytes = dsi_cuda_gemm_ws_bytes(16 * 4 * c->n_sm);
        if ((rc = dsi__cuda_alloc(c, (void **)&c->gemm_ws.partial, c->gemm_ws.partial_bytes,
                                  "matmul partials", err)) ||
            (rc = dsi__cuda_alloc(c, (void **)&c->gemm_ws.counters, (size_t)c->gemm_ws.n_counters * 4,
                                  "matmul counters", err)))
            return rc;
        if (DSI_CUDA_CHECK(cudaMemset(c->gemm_ws.counters, 0, (size_t)c->gemm_ws.n_counters * 4)))
            return dsi_seterr(err, DSI_ECUDA, "cuda: clearing matmul counters failed");
    }
    /* group-wise matrices always take dequant + cuBLAS, any batch, lm_head
     * included (vocab x hidden: the largest); per-channel ones above 16 rows */
    if (c->int8 && (c->group > 0 || c->max_tokens > DSI__CUDA_MMA_MAX_ROWS)) {
        size_t big = nqkv * H;
        if (2 * I * H > big) big = 2 * I * H;
        if (H * nq > big) big = H * nq;
        if (c->group > 0 && V * H > big) big = V * H;
        if (c->mla && dsi__cuda_mla_max_elems(cfg) > big) big = dsi__cuda_mla_max_elems(cfg);
        if ((rc = dsi__cuda_alloc(c, (void **)&c->deq, big * 2, "int8 dequant scratch", err))) return rc;
    }
    /* metadata: tokens, pos, slots (T each), seqs (4 S), logit rows (S), block tables */
    c->meta_ints = 3 * T + 5 * S + (size_t)c->bt_cap;
    if ((rc = dsi__cuda_alloc(c, (void **)&c->meta_d, c->meta_ints * 4, "step metadata", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&c->sp_d, S * sizeof *c->sp_d, "sampling params", err)) ||
        (rc = dsi__cuda_alloc(c, (void **)&c->ids_d, S * 4, "sampled ids", err)))
        return rc;
    if (DSI_CUDA_CHECK(cudaMallocHost((void **)&c->meta_h, c->meta_ints * 4)) ||
        DSI_CUDA_CHECK(cudaMallocHost((void **)&c->sp_h, S * sizeof *c->sp_h)) ||
        DSI_CUDA_CHECK(cudaMallocHost((void **)&c->ids_h, S * 4)))
        return dsi_seterr(err, DSI_ENOMEM, "cuda: pinned host memory for step metadata failed");
    return 0;
}

/* Bytes of one KV block over all layers: K and V pools of n_kv_heads *
 * head_dim each, or MLA's single latent pool of kv_lora + rope, in bf16. */
static size_t kv_block_bytes(const struct dsi__cuda *c) {
    size_t per_layer = dsi_model_kv_values_per_token_layer(&c->cfg);
    return (size_t)c->cfg.n_layers * (size_t)c->base.kv_block_size * per_layer * 2;
}

/* The KV pool of n_blocks blocks (the memory plan's count). */
static int alloc_kv(struct dsi__cuda *c, size_t n_blocks, char **err) {
    const struct dsi_model_config *cfg = &c->cfg;
    size_t per_layer = dsi_model_kv_values_per_token_layer(cfg), bs = (size_t)c->base.kv_block_size;
    size_t kv_dim = c->mla ? per_layer : per_layer / 2;
    size_t per_block = kv_block_bytes(c);
    if (n_blocks > (size_t)INT32_MAX / bs) n_blocks = (size_t)INT32_MAX / bs;
    int rc = dsi__cuda_alloc(c, (void **)&c->kv, n_blocks * per_block, "KV cache", err);
    if (rc) return rc;
    c->base.n_kv_blocks = (int)n_blocks;
    c->kv_layer_elems = n_blocks * bs * kv_dim;
    c->base.kv_bytes_per_token = (size_t)cfg->n_layers * per_layer * 2;
    c->base.kv_dtype = DSI_KV_BF16;
    return 0;
}

/* The shard's part of the model (cuda_backend.h): cfg becomes the rank's heads, KV
 * heads and intermediate size; the vocab stays whole (the lm_head rows are cut
 * in cuda_weights.c). Every rank gets the same sizes, as NCCL wants. */
static int shard_config(struct dsi__cuda *c, const struct dsi_cuda_shard *sh, char **err) {
    struct dsi_model_config *cfg = &c->cfg;
    int n = sh->size, r = sh->rank;
    if (n < 1 || r < 0 || r >= n) return dsi_seterr(err, DSI_EINVAL, "cuda: shard %d of %d is invalid", r, n);
    if (cfg->n_heads % n || cfg->n_kv_heads % n || cfg->intermediate_size % n)
        return dsi_seterr(err, DSI_EINVAL,
                          "tensor parallel %d does not divide this model's %d attention heads, %d kv heads "
                          "and %d intermediate rows",
                          n, cfg->n_heads, cfg->n_kv_heads, cfg->intermediate_size);
    int pad = (cfg->vocab_size + n - 1) / n;
    if ((long long)pad * (n - 1) >= cfg->vocab_size)
        return dsi_seterr(err, DSI_EINVAL,
                          "tensor parallel %d leaves a rank without vocabulary rows (vocab %d)", n,
                          cfg->vocab_size);
    c->tp_rank = r;
    c->tp_size = n;
    cfg->n_heads /= n;
    cfg->n_kv_heads /= n;
    cfg->intermediate_size /= n;
    c->head0 = r * cfg->n_heads;
    c->kv_head0 = r * cfg->n_kv_heads;
    c->inter0 = r * cfg->intermediate_size;
    c->vocab_pad = pad;
    c->vocab0 = r * pad;
    return 0;
}

/* int8 group-wise as the CPU backend: every matrix, so G must divide every
 * input width of mc (a shard: its own widths). 0: per channel. */
static int check_group(const struct dsi_model_config *mc, int gs, char **err) {
    if (gs < 0) return dsi_seterr(err, DSI_EINVAL, "cuda: int8 group size %d is negative", gs);
    if (gs == 0) return 0;
    const int ins[3] = {mc->hidden_size, mc->n_heads * mc->head_dim, mc->intermediate_size};
    const char *what[3] = {"hidden_size", "n_heads * head_dim", "intermediate_size"};
    for (int i = 0; i < 3; i++)
        if (ins[i] % gs)
            return dsi_seterr(
                err, DSI_EINVAL,
                "int8 group size %d does not divide the %d inputs (%s) of the model's matrices; use "
                "a divisor or 0 (per channel)",
                gs, ins[i], what[i]);
    return 0;
}

/* Device `device` exists (no driver or no GPU: DSI_ENODEV with CUDA's reason). */
static int find_device(int device, char **err) {
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return dsi_seterr(err, DSI_ENODEV, "cuda: no usable GPU (%s); use --backend cpu",
                          cudaGetErrorString(e));
    }
    if (device < 0 || device >= n_dev)
        return dsi_seterr(err, DSI_ENODEV, "cuda: device %d not present (%d CUDA devices on this host)",
                          device, n_dev);
    return 0;
}

#ifndef DSI_CUDA_ARCHS
#define DSI_CUDA_ARCHS "?"
#endif

/* The current device (cudaSetDevice done) can run this build's kernels: sm_80+
 * (bf16 mma.sync, cp.async) and an architecture the build compiled, else
 * DSI_EUNSUPPORTED; without the second check such a GPU would pass create
 * and fail at the first launch. */
static int check_device(const struct cudaDeviceProp *prop, char **err) {
    if (prop->major < 8)
        return dsi_seterr(err, DSI_EUNSUPPORTED, "cuda: %s (sm_%d%d) is too old; sm_80+ needed", prop->name,
                          prop->major, prop->minor);
    int bin = 0;
    if (dsi_cuda_kernel_image(&bin))
        return dsi_seterr(
            err, DSI_EUNSUPPORTED,
            "cuda: %s (sm_%d%d) is not among the architectures this dsinfer was built for (%s); "
            "rebuild with -DCMAKE_CUDA_ARCHITECTURES=%d%d",
            prop->name, prop->major, prop->minor, DSI_CUDA_ARCHS, prop->major, prop->minor);
    return 0;
}

int dsi_cuda_shard_check(const struct dsi_model_config *cfg, const struct dsi_backend_opts *o, int size,
                         char **err) {
    if (!cfg || !o || size < 1) return dsi_seterr(err, DSI_EINVAL, "cuda: shard check needs a config");
    int rc = check_config(cfg, o, size, err);
    if (rc) return rc;
    struct dsi__cuda probe = {.cfg = *cfg};
    struct dsi_cuda_shard sh = {.rank = 0, .size = size};
    if (size > 1 && (rc = shard_config(&probe, &sh, err))) return rc;
    if ((rc = check_group(&probe.cfg, o->weight_dtype == DSI_W_INT8 ? o->int8_group_size : 0, err)) ||
        (rc = find_device(o->device, err)))
        return rc;
    struct cudaDeviceProp prop;
    if (DSI_CUDA_CHECK(cudaSetDevice(o->device)) || DSI_CUDA_CHECK(cudaGetDeviceProperties(&prop, o->device)))
        return dsi_seterr(err, DSI_ENODEV, "cuda: cannot query device %d", o->device);
    return check_device(&prop, err);
}

/* Step limits and pool shape from the options (defaults and caps). */
static void set_limits(struct dsi__cuda *c, const struct dsi_backend_opts *o) {
    c->base.vocab_size = c->cfg.vocab_size;
    c->base.kv_block_size = o->kv_block_size > 0 ? o->kv_block_size : 16;
    c->max_tokens = o->max_batch_tokens > 0 ? o->max_batch_tokens : 4096;
    c->max_seqs = o->max_seqs > 0 ? o->max_seqs : 256;
    if (c->max_seqs > c->max_tokens) c->max_seqs = c->max_tokens;
    if (c->max_seqs > 65535) c->max_seqs = 65535;
    int max_pos = c->cfg.max_position_embeddings > 0 ? c->cfg.max_position_embeddings : 4096;
    c->bt_cap = c->max_seqs * ((max_pos + c->base.kv_block_size - 1) / c->base.kv_block_size + 1);
}

/* Everything that can fail on this rank alone: device, stream, cuBLAS and its
 * workspace (given up front so that graph captures never allocate), the
 * tensor-parallel exchange buffers. Under tensor parallel every rank then
 * votes (sh->agree), and only when all can do they enter NCCL's collective
 * set-up, so no rank waits there alone. */
static int setup_device(struct dsi__cuda *c, const struct dsi_cuda_shard *sh, struct cudaDeviceProp *prop,
                        char **err) {
    void *blas_ws = NULL;
    int pre = 0;
    if (DSI_CUDA_CHECK(cudaSetDevice(c->device)) || DSI_CUDA_CHECK(cudaGetDeviceProperties(prop, c->device)))
        pre = dsi_seterr(err, DSI_ENODEV, "cuda: cannot use device %d", c->device);
    else if ((pre = check_device(prop, err)))
        ;
    else if (DSI_CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) ||
             DSI_CUBLAS_CHECK(cublasCreate(&c->blas)) ||
             DSI_CUBLAS_CHECK(cublasSetStream(c->blas, c->stream)))
        pre = dsi_seterr(err, DSI_ECUDA, "cuda: stream or cuBLAS setup failed");
    else if ((pre = dsi__cuda_alloc(c, &blas_ws, (size_t)32 << 20, "cuBLAS workspace", err)))
        ;
    else if (DSI_CUBLAS_CHECK(cublasSetWorkspace(c->blas, blas_ws, (size_t)32 << 20)))
        pre = dsi_seterr(err, DSI_ECUDA, "cuda: cuBLAS workspace setup failed");
    else if (c->tp_size > 1)
        pre = dsi__cuda_tp_prepare(c, err);
    if (c->tp_size > 1 && sh->agree) {
        int all = sh->agree(sh->agree_ctx, pre == 0);
        if (!pre && !all)
            pre =
                dsi_seterr(err, DSI_EDIST, "cuda: another rank could not set up its GPU (its log says why)");
    }
    if (pre) return pre;
    c->n_sm = prop->multiProcessorCount;
    c->l2_bytes = (size_t)prop->l2CacheSize;
    return 0;
}

/* The RoPE frequency table (head_dim / 2 floats) on the device. */
static int upload_rope(struct dsi__cuda *c, const struct dsi_model_config *cfg, char **err) {
    const size_t bytes = (size_t)cfg->head_dim / 2 * sizeof(float);
    float *inv = malloc(bytes);
    if (!inv) return dsi_seterr(err, DSI_ENOMEM, "cuda: out of host memory");
    /* MLA: the CPU reference's table, YaRN and its cos/sin factor included */
    int rc = !c->mla ? dsi_cuda_rope_inv_freq(cfg, inv, err)
             : dsi_rope_inv_freq(&cfg->rope, cfg->rope_theta, cfg->head_dim, cfg->max_position_embeddings, 0,
                                 inv, &c->attn_factor)
                 ? dsi_seterr(err, DSI_EINVAL, "rope: bad scaling parameters")
                 : 0;
    if (!rc) rc = dsi__cuda_alloc(c, (void **)&c->inv_freq, bytes, "rope table", err);
    if (!rc && DSI_CUDA_CHECK(cudaMemcpy(c->inv_freq, inv, bytes, cudaMemcpyHostToDevice)))
        rc = dsi_seterr(err, DSI_ECUDA, "cuda: rope table upload failed");
    free(inv);
    return rc;
}

/* Weights, activation buffers, the matmul plan, then the KV pool from what is
 * left: the memory plan (dsinfer/memplan.h) first with the weights estimated
 * from the checkpoint (a load that cannot fit fails before the upload), then
 * with the sizes measured, which also sizes the pool. A shard holds its part of
 * the weights: the estimate is split evenly over the ranks. */
static int load_and_plan(struct dsi__cuda *c, const struct dsi_model *m, bool random, uint64_t seed,
                         float fraction, char **err) {
    size_t free0 = 0, free1 = 0, free2 = 0, total = 0;
    if (DSI_CUDA_CHECK(cudaMemGetInfo(&free0, &total)))
        return dsi_seterr(err, DSI_ECUDA, "cuda: cudaMemGetInfo failed");
    struct dsi_mem_plan plan = {.device = c->device,
                                .free_bytes = free0,
                                .total_bytes = total,
                                .kv_block_bytes = kv_block_bytes(c),
                                .kv_min_blocks = c->max_seqs,
                                .kv_gpu_fraction = fraction,
                                .int8 = c->int8};
    int n_blocks = 0;
    if (!random) { /* the weights alone (an estimate: no workspace yet, one KV block) */
        struct dsi_mem_plan pre = plan;
        pre.weight_bytes = dsi_mem_plan_weight_bytes(&m->st, c->int8, c->group) / (size_t)c->tp_size;
        pre.kv_min_blocks = 1;
        int rc = dsi_mem_plan_fit(&pre, &n_blocks, err);
        if (rc) return rc;
    }
    /* gate|up rows interleaved by 8 where this shard's intermediate size allows */
    c->gate_up_il8 = c->cfg.intermediate_size % 8 == 0 ? DSI_GLU_IL8 : 0;
    int rc = dsi__cuda_load_weights(c, m, random, seed, err);
    if (rc) return rc;
    cudaMemGetInfo(&free1, &total);
    c->base.weight_bytes = free0 > free1 ? free0 - free1 : 0;
    if ((rc = alloc_buffers(c, err)) || (c->mla && (rc = dsi__cuda_mla_alloc(c, err))) ||
        (rc = dsi__cuda_w8a8_prepare(c, err)) || (rc = dsi__cuda_plan(c, err)))
        return rc;
    dsi__cuda_plan_log(c);
    if (DSI_CUDA_CHECK(cudaMemGetInfo(&free2, &total)))
        return dsi_seterr(err, DSI_ECUDA, "cuda: cudaMemGetInfo failed");
    plan.weight_bytes = c->base.weight_bytes;
    plan.workspace_bytes = free1 > free2 ? free1 - free2 : 0;
    if ((rc = dsi_mem_plan_fit(&plan, &n_blocks, err))) return rc;
    return alloc_kv(c, (size_t)n_blocks, err);
}

static void log_created(const struct dsi__cuda *c, const struct cudaDeviceProp *prop) {
    if (c->tp_size > 1)
        dsi_log(DSI_LOG_INFO, "cuda",
                "device %d holds shard %d of %d: heads %d..%d, kv heads %d..%d, intermediate %d..%d, vocab "
                "%d..%d",
                c->device, c->tp_rank, c->tp_size, c->head0, c->head0 + c->cfg.n_heads - 1, c->kv_head0,
                c->kv_head0 + c->cfg.n_kv_heads - 1, c->inter0, c->inter0 + c->cfg.intermediate_size - 1,
                c->vocab0, c->vocab0 + c->lm_head.n - 1);
    dsi_log(
        DSI_LOG_INFO, "cuda",
        "%s: %s weights %.2f GiB, KV pool %d blocks x %d tokens (%.2f GiB), max %d tokens / %d seqs per step",
        prop->name, c->int8 ? (c->group > 0 ? "int8 group-wise" : "int8") : "bf16",
        c->base.weight_bytes / 1073741824.0, c->base.n_kv_blocks, c->base.kv_block_size,
        (double)c->base.n_kv_blocks * c->base.kv_block_size * c->base.kv_bytes_per_token / 1073741824.0,
        c->max_tokens, c->max_seqs);
}

static int create(const struct dsi_model *m, const struct dsi_backend_opts *o, bool random, uint64_t seed,
                  const struct dsi_cuda_shard *sh, struct dsi_backend **out, char **err) {
    *out = NULL;
    if (!m || !o) return dsi_seterr(err, DSI_EINVAL, "cuda: model and options are required");
    int rc = find_device(o->device, err);
    if (rc || (rc = check_config(&m->cfg, o, sh ? sh->size : 1, err))) return rc;
    /* f32 requests (the CLI's reference default) run as bf16: said once, not refused */
    if (o->weight_dtype == DSI_W_F32)
        dsi_log(DSI_LOG_WARN, "cuda", "f32 weights requested: the CUDA backend keeps them in bf16");
    /* no CUDA kernel reads an int8 cache yet: refused rather than silently bf16,
     * since the operator sized the pool for int8's capacity */
    if (o->kv_dtype == DSI_KV_INT8)
        return dsi_seterr(err, DSI_EINVAL,
                          "cuda: kv_dtype int8 is implemented on the cpu backend only; use kv_dtype bf16 (or "
                          "auto) with the cuda backend");
    if (o->kv_dtype != DSI_KV_BF16)
        dsi_log(DSI_LOG_WARN, "cuda", "f32 KV cache requested: the CUDA backend keeps it in bf16");
    if (o->int8_mode != DSI_INT8_W8A16 &&
        (o->int8_mode != DSI_INT8_W8A8 || o->weight_dtype != DSI_W_INT8 || o->int8_group_size > 0 ||
         (sh && sh->size > 1)))
        return dsi_seterr(err, DSI_EINVAL,
                          "cuda: int8_mode w8a8 needs dtype int8 with per-channel scales (int8_group_size 0) "
                          "on one GPU");
    if (o->int8_mode == DSI_INT8_W8A8 && dsi_model_is_mla(&m->cfg))
        return dsi_seterr(err, DSI_EINVAL,
                          "cuda: int8_mode w8a8 is not implemented for MLA + MoE (DeepSeek-V2/V3) models: "
                          "use w8a16");

    struct dsi__cuda *c = calloc(1, sizeof *c);
    if (!c) return dsi_seterr(err, DSI_ENOMEM, "cuda: out of host memory");
    c->cfg = m->cfg;
    c->device = o->device;
    c->int8 = o->weight_dtype == DSI_W_INT8;
    c->group = c->int8 ? o->int8_group_size : 0;
    c->w8a8 = c->int8 && o->int8_mode == DSI_INT8_W8A8;
    c->base.ops = &cuda_ops;
    c->base.model = m;
    c->base.impl = c;
    c->tp_size = 1;
    c->mla = dsi_model_is_mla(&m->cfg); /* unsharded: the config check refuses MLA under TP */
    dsi__cuda_switches_read(&c->sw);
#ifdef DSI_TEST_HOOKS
    const char *fa = getenv("DSI_TEST_FAIL_CUDA_MALLOC"); /* test builds: the one place it is read */
    c->fault_alloc_at = fa ? atol(fa) : 0;
    if (c->fault_alloc_at > 0)
        dsi_log(DSI_LOG_WARN, "cuda", "test hook: allocation %ld fails as out of memory", c->fault_alloc_at);
#endif
    set_limits(c, o);
    float fraction = o->kv_gpu_fraction > 0.f && o->kv_gpu_fraction <= 0.98f ? o->kv_gpu_fraction : 0.9f;
    struct cudaDeviceProp prop;
    if ((sh && sh->size > 1 && (rc = shard_config(c, sh, err))) ||
        (rc = check_group(&c->cfg, c->group, err)) || (rc = setup_device(c, sh, &prop, err)))
        goto fail;
    if (c->tp_size > 1 && (rc = dsi__cuda_tp_init(c, sh, err))) goto fail; /* NCCL + NVLink regions */
    c->layers = calloc((size_t)m->cfg.n_layers, sizeof *c->layers);
    if (!c->layers) {
        rc = dsi_seterr(err, DSI_ENOMEM, "cuda: out of host memory");
        goto fail;
    }
    if ((rc = upload_rope(c, &m->cfg, err)) || (rc = load_and_plan(c, m, random, seed, fraction, err)))
        goto fail;
    log_created(c, &prop);
    *out = &c->base;
    return 0;
fail:
    c->dead = true; /* a peer may have failed too: abort the communicator, do not wait */
    cuda_destroy(&c->base);
    return rc;
}

int dsi_cuda_backend_create(const struct dsi_model *m, const struct dsi_backend_opts *o,
                            struct dsi_backend **out, char **err) {
    return create(m, o, false, 0, NULL, out, err);
}

int dsi_cuda_backend_create_random(const struct dsi_model *m, const struct dsi_backend_opts *o, uint64_t seed,
                                   struct dsi_backend **out, char **err) {
    return create(m, o, true, seed, NULL, out, err);
}

int dsi_cuda_backend_create_shard(const struct dsi_model *m, const struct dsi_backend_opts *o,
                                  const struct dsi_cuda_shard *sh, bool random, uint64_t seed,
                                  struct dsi_backend **out, char **err) {
    if (!sh || sh->size < 1 || sh->rank < 0 || sh->rank >= sh->size) {
        if (out) *out = NULL;
        return dsi_seterr(err, DSI_EINVAL, "cuda: a shard needs 0 <= rank < size");
    }
    return create(m, o, random, seed, sh, out, err);
}

static struct dsi__cuda *impl(struct dsi_backend *be) {
    return (struct dsi__cuda *)be->impl;
}

static int cuda_forward(struct dsi_backend *be, const struct dsi_batch *b, float *logits, char **err) {
    struct dsi__cuda *c = impl(be);
    int rows = 0;
    int rc = dsi__cuda_step(c, b, &rows, err);
    if (rc) return rc;
    if (rows > 0 && logits) {
        size_t bytes = (size_t)rows * c->cfg.vocab_size * sizeof(float);
        if (DSI_CUDA_CHECK(cudaMemcpyAsync(logits, c->logits, bytes, cudaMemcpyDeviceToHost, c->stream)) ||
            DSI_CUDA_CHECK(cudaStreamSynchronize(c->stream))) {
            c->dead = true;
            return dsi_seterr(err, DSI_ECUDA, "cuda: copying logits to the host failed");
        }
    }
    return 0;
}

/* Second half of forward_sample: c->sp_h holds the params of the rows of the step
 * just enqueued; samples them on the GPU and copies the ids back. */
static int sample_rows(struct dsi__cuda *c, int rows, int32_t *ids, char **err) {
    if (DSI_CUDA_CHECK(cudaMemcpyAsync(c->sp_d, c->sp_h, (size_t)rows * sizeof *c->sp_h,
                                       cudaMemcpyHostToDevice, c->stream)) ||
        dsi_cuda_sample(c->ids_d, c->logits, c->sp_d, rows, c->cfg.vocab_size, c->stream) ||
        DSI_CUDA_CHECK(
            cudaMemcpyAsync(c->ids_h, c->ids_d, (size_t)rows * 4, cudaMemcpyDeviceToHost, c->stream)) ||
        DSI_CUDA_CHECK(cudaStreamSynchronize(c->stream))) {
        c->dead = true;
        return dsi_seterr(err, DSI_ECUDA, "cuda: sampling on the GPU failed");
    }
    memcpy(ids, c->ids_h, (size_t)rows * 4);
    return 0;
}

/* Fills c->sp_h[0..rows) from a caller's sampling params. */
typedef void (*fill_params_fn)(struct dsi__cuda *c, int rows, const void *params);

/* forward_sample's one path: the step, then the rows' params by fill, then the
 * GPU sampler. */
static int step_and_sample(struct dsi_backend *be, const struct dsi_batch *b, const void *params,
                           fill_params_fn fill, int32_t *ids, char **err) {
    if (!be || !b || !params || !ids)
        return dsi_seterr(err, DSI_EINVAL, "cuda: forward_sample needs all arguments");
    struct dsi__cuda *c = impl(be);
    int rows = 0;
    int rc = dsi__cuda_step(c, b, &rows, err);
    if (rc || rows == 0) return rc;
    fill(c, rows, params);
    return sample_rows(c, rows, ids, err);
}

static void copy_params(struct dsi__cuda *c, int rows, const void *params) {
    memcpy(c->sp_h, params, (size_t)rows * sizeof *c->sp_h);
}

/* The engine's params, field by field, so backend.h does not depend on
 * kernels.h's layout (the sampling params). */
static void convert_params(struct dsi__cuda *c, int rows, const void *params) {
    const struct dsi_sample_params *p = params;
    for (int r = 0; r < rows; r++) {
        float u = p[r].u;
        if (!(u >= 0.0f)) u = 0.0f; /* NaN or negative from a caller: the first token of the CDF */
        if (u >= 1.0f) u = 0x1.fffffep-1f;
        c->sp_h[r] = (struct dsi_cuda_sample_params){.temperature = p[r].temperature,
                                                     .top_k = p[r].top_k < 0 ? 0 : p[r].top_k,
                                                     .top_p = p[r].top_p,
                                                     .u = u,
                                                     .n_ids = p[r].n_ids < 0 ? 0 : p[r].n_ids};
    }
}

int dsi_cuda_backend_forward_sample(struct dsi_backend *be, const struct dsi_batch *b,
                                    const struct dsi_cuda_sample_params *params, int32_t *ids, char **err) {
    return step_and_sample(be, b, params, copy_params, ids, err);
}

/* The ops-table entry (backend.h): the same path with the engine's params. */
static int cuda_forward_sample(struct dsi_backend *be, const struct dsi_batch *b,
                               const struct dsi_sample_params *p, int32_t *ids, char **err) {
    return step_and_sample(be, b, p, convert_params, ids, err);
}

/* The ops-table entry (backend.h): a dead backend runs no more steps. */
static bool cuda_dead(struct dsi_backend *be) {
    return impl(be)->dead;
}

void dsi_cuda_backend_limits(const struct dsi_backend *be, int *max_tokens, int *max_seqs) {
    const struct dsi__cuda *c = be->impl;
    *max_tokens = c->max_tokens;
    *max_seqs = c->max_seqs;
}

int dsi_cuda_backend_sync(struct dsi_backend *be) {
    if (!be) return DSI_EINVAL;
    return DSI_CUDA_CHECK(cudaStreamSynchronize(impl(be)->stream));
}

static void cuda_destroy(struct dsi_backend *be) {
    if (!be) return;
    struct dsi__cuda *c = impl(be);
    if (c->stream) cudaStreamSynchronize(c->stream);
    for (int i = 0; i < c->n_graphs; i++)
        cudaGraphExecDestroy(c->graphs[i].exec);
    dsi__cuda_tp_destroy(c);
    for (size_t i = 0; i < c->n_allocs; i++)
        cudaFree(c->allocs[i]);
    free(c->allocs);
    if (c->meta_h) cudaFreeHost(c->meta_h);
    if (c->sp_h) cudaFreeHost(c->sp_h);
    if (c->ids_h) cudaFreeHost(c->ids_h);
    dsi__cuda_mla_free(c);
    if (c->blas) cublasDestroy(c->blas);
    dsi__cuda_w8a8_destroy(c);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c->layers);
    free(c);
}
