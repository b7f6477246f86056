/*
 * model.h: model directories in HF layout.
 *
 * - safetensors: mmap'd files, hostile-header parsing, sharded index
 * - HF config.json -> struct dsi_model_config (Qwen2, Llama, DeepSeek-V2/V3)
 * - SHA256SUMS manifest create/verify (coreutils format)
 * - dsi_model_open(): verify (fail closed) + config + safetensors, the one way
 *   every backend gets its weights.
 *
 * Owner: src/model. Fields marked (shape) give tensor shapes in HF order.
 */
#ifndef DSINFER_MODEL_H
#define DSINFER_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum dsi_dtype {
    DSI_DT_F32,
    DSI_DT_F16,
    DSI_DT_BF16,
    DSI_DT_I8,
    DSI_DT_U8,
    DSI_DT_F8_E4M3,
    DSI_DT_I32,
    DSI_DT_I64,
    DSI_DT__COUNT
};
/* "F32", "BF16", ... (safetensors spelling); NULL for out of range. */
const char *dsi_dtype_name(enum dsi_dtype dt);
size_t dsi_dtype_size(enum dsi_dtype dt);

#define DSI_MAX_DIMS 8

struct dsi_tensor {
    char *name; /* owned by the safetensors handle; valid UTF-8, no control chars */
    enum dsi_dtype dtype;
    int n_dims;
    int64_t shape[DSI_MAX_DIMS];
    size_t n_elems;
    const void *data; /* into the read-only mmap; valid until close. Only 1-byte
                         aligned in general: read with memcpy or dsi_tensor_to_f32 */
    size_t size_bytes;
    int file_index; /* which shard */
};

struct dsi_safetensors {
    struct dsi_tensor *tensors; /* sorted by name */
    size_t n_tensors;
    /* private: mapped files */
    void *priv;
};

/* Opens DIR/model.safetensors or, if present, every shard named by
 * DIR/model.safetensors.index.json. Returns 0 or DSI_E*, with *err naming the file
 * and tensor on malformed input. Close with dsi_st_close (accepts a zeroed struct). */
int dsi_st_open_dir(struct dsi_safetensors *st, const char *dir, char **err);
int dsi_st_open_file(struct dsi_safetensors *st, const char *path, char **err);
/* Parses a safetensors image already in memory (the fuzz target's entry). `name`
 * is used in error messages. Tensors point into buf, which the caller owns and
 * keeps alive until dsi_st_close. Same checks as dsi_st_open_file. */
int dsi_st_open_mem(struct dsi_safetensors *st, const void *buf, size_t len, const char *name, char **err);
void dsi_st_close(struct dsi_safetensors *st);
const struct dsi_tensor *dsi_st_find(const struct dsi_safetensors *st, const char *name);

enum dsi_arch { DSI_ARCH_QWEN2, DSI_ARCH_LLAMA, DSI_ARCH_DEEPSEEK_V2, DSI_ARCH_DEEPSEEK_V3 };
enum dsi_rope_type { DSI_ROPE_DEFAULT, DSI_ROPE_LINEAR, DSI_ROPE_LLAMA3, DSI_ROPE_YARN, DSI_ROPE_DYNAMIC };

struct dsi_rope_scaling {
    enum dsi_rope_type type;
    float factor;
    float low_freq_factor, high_freq_factor;            /* llama3 */
    int original_max_position_embeddings;               /* llama3, yarn */
    float beta_fast, beta_slow, mscale, mscale_all_dim; /* yarn */
};

#define DSI_MAX_EOS 8

/* DeepSeek MoE router (config.json topk_method / scoring_func). */
enum dsi_topk_method {
    DSI_TOPK_GREEDY,               /* top-k of all experts' scores */
    DSI_TOPK_GROUP_LIMITED_GREEDY, /* groups ranked by their best score, top-k inside topk_group groups */
    DSI_TOPK_NOAUX_TC              /* scores + e_score_correction_bias; groups ranked by their top-2 sum */
};
enum dsi_scoring_func { DSI_SCORE_SOFTMAX, DSI_SCORE_SIGMOID };

struct dsi_model_config {
    enum dsi_arch arch;
    char architecture[64]; /* as in config.json, e.g. "Qwen2ForCausalLM" */
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim; /* hidden_size / n_heads unless config says otherwise */
    int max_position_embeddings;
    float rms_norm_eps;
    float rope_theta;
    struct dsi_rope_scaling rope;
    bool tie_word_embeddings;
    bool attention_bias;  /* q/k/v projections carry a bias (Qwen2: true) */
    enum dsi_dtype dtype; /* torch_dtype / dtype */
    int bos_token_id;     /* -1 if none */
    int eos_token_ids[DSI_MAX_EOS];
    int n_eos;
    /* DeepSeek-V2/V3 (MLA + MoE); zero for dense families. q_lora_rank 0: no q
     * compression (V2-Lite's null). A layer l < n_layers is MoE when
     * dsi_model_layer_is_moe() says so; n_mtp_layers (num_nextn_predict_layers)
     * are V3's multi-token-prediction layers stored past n_layers, never run. */
    int q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
    int n_routed_experts, n_shared_experts, num_experts_per_tok, moe_intermediate_size;
    int first_k_dense_replace, moe_layer_freq, n_group, topk_group;
    float routed_scaling_factor;
    enum dsi_topk_method topk_method;
    enum dsi_scoring_func scoring_func;
    bool norm_topk_prob;  /* renormalise the top-k weights to sum 1 */
    bool rope_interleave; /* MLA rope pairs (2i, 2i+1) (V2 always; V3 default) */
    int n_mtp_layers;
    /* quantization_config: V3 ships FP8 e4m3 weights with one f32 scale
     * (`*_scale_inv`) per weight block of quant_block[0] x quant_block[1]. */
    bool quant_fp8;
    int quant_block[2];
    /* Dense-family switches the forward pass must honour (runnable refuses them). */
    bool mlp_bias;      /* Llama mlp_bias: gate/up/down carry a bias */
    int sliding_window; /* Qwen2 use_sliding_window: window in tokens; 0 = off */
};
/* true for DeepseekV2/V3 (MLA attention). */
bool dsi_model_is_mla(const struct dsi_model_config *cfg);
/* true when layer l's MLP is the routed MoE (DeepSeek: experts present,
 * l >= first_k_dense_replace and l % moe_layer_freq == 0), false for a dense MLP. */
bool dsi_model_layer_is_moe(const struct dsi_model_config *cfg, int l);
/* MLA softmax scale: (qk_nope + qk_rope)^-0.5, times mscale(factor,
 * mscale_all_dim)^2 under YaRN with mscale_all_dim set (DeepSeek's and HF's rule). */
float dsi_mla_softmax_scale(const struct dsi_model_config *cfg);
/* Values one token takes in the KV cache per layer: 2 * n_kv_heads * head_dim
 * (K and V), or kv_lora_rank + qk_rope_head_dim for MLA (the compressed latent
 * and the shared rope key). Times n_layers and the element size: bytes per token. */
size_t dsi_model_kv_values_per_token_layer(const struct dsi_model_config *cfg);

/* The KV cache's element format. INT8: each cached vector (one token's K or V
 * of one kv head; MLA: its latent, and its rope key) is n int8 values followed
 * by one f16 scale, value = int8 * scale, scale = absmax / 127 rounded up. */
enum dsi_kv_dtype { DSI_KV_F32, DSI_KV_BF16, DSI_KV_INT8 };
#define DSI_KV_INT8_SCALE_BYTES 2 /* the f16 scale after each int8 vector */
/* "f32", "bf16", "int8". */
const char *dsi_kv_dtype_name(enum dsi_kv_dtype dt);
/* Bytes of one cached vector of n values in format dt. */
size_t dsi_kv_vector_bytes(enum dsi_kv_dtype dt, size_t n);
/* Cache bytes of one token over all layers in format dt: what a KV budget
 * is divided by (the CPU pool's and the engine's capacity). */
size_t dsi_model_kv_bytes_per_token(const struct dsi_model_config *cfg, enum dsi_kv_dtype dt);
/* "Qwen2ForCausalLM", ... for an arch value. */
const char *dsi_arch_name(enum dsi_arch a);
const char *dsi_rope_type_name(enum dsi_rope_type t);

/* Parses config.json text. An architecture we cannot parse is DSI_EUNSUPPORTED
 * with a message naming it. Defaults follow HF transformers: n_kv_heads = n_heads,
 * head_dim = hidden/heads (V2/V3: qk_rope_head_dim, as transformers does),
 * rope_theta 10000, Qwen2 attention_bias true, others false, tie false,
 * dtype F32 when neither torch_dtype nor dtype is given. */
int dsi_model_config_parse(const char *json, size_t len, struct dsi_model_config *cfg, char **err);
int dsi_model_config_load(const char *dir, struct dsi_model_config *cfg, char **err);
/* 0 if the forward pass of this build can run the config (Qwen2/Llama with rope
 * default/linear/llama3; DeepSeek-V2/V3 MLA + MoE with rope default/linear/yarn,
 * on the CPU backend); otherwise DSI_EUNSUPPORTED with a reason. */
int dsi_model_config_runnable(const struct dsi_model_config *cfg, char **err);

/* What one backend's forward pass can run beyond dsi_model_config_runnable. */
struct dsi_backend_limits {
    const char *backend;     /* "cpu", "cuda": named in messages */
    int max_gqa_group;       /* most attention heads per kv head; 0: any */
    int head_dim_multiple;   /* head_dim is a multiple of this (at least 2: rotary pairs) */
    int head_dim_divides;    /* and divides this; 0: no bound */
    bool split_inter_evenly; /* a shard holds exactly intermediate/n rows (else whole int8 groups) */
    bool mla_moe;            /* runs DeepSeek-V2/V3 MLA + MoE (unsharded) */
    bool mla_moe_ranks;      /* and across ranks: replicated attention, expert-parallel MoE
                              * (the expert split is the backend's check: it knows ep) */
};
/* The one check every backend runs before it loads a weight: the config is
 * runnable (dsi_model_config_runnable), its sizes are positive, consistent and
 * small enough for int indexing, it fits lim, and (n_ranks > 1) it splits over
 * n_ranks tensor-parallel shards with int8 groups of int8_group_size (0: per
 * channel) never straddling two ranks. Returns 0, or with a message saying
 * which value is wrong: DSI_EUNSUPPORTED (a feature or size this build or
 * backend does not run), DSI_EFORMAT (config.json contradicts itself),
 * DSI_EOVERFLOW (sizes too large), DSI_EINVAL (the split). */
int dsi_model_config_check(const struct dsi_model_config *cfg, const struct dsi_backend_limits *lim,
                           int n_ranks, int int8_group_size, char **err);

/* Manifest: DIR/SHA256SUMS in `sha256sum` format. */
struct dsi_manifest_opts {
    int n_threads;                      /* 0: number of CPUs */
    bool progress;                      /* progress line on stderr when it is a terminal */
    const char *expect_manifest_sha256; /* verify only: optional pin (hex) of SHA256SUMS */
};
/* Hashes every regular, non-hidden file under DIR (recursing into sub-folders,
 * names relative to DIR with '/'), except SHA256SUMS itself, and writes
 * DIR/SHA256SUMS atomically, sorted by name (strcmp). Names with a newline or
 * backslash are refused (coreutils would escape them). */
int dsi_manifest_write(const char *dir, const struct dsi_manifest_opts *o, char **err);
/* 0 only if every listed file matches and every weight/config/tokenizer file in
 * DIR is listed; otherwise DSI_EINTEGRITY with *err naming the first bad file
 * (every problem is also logged). A malformed SHA256SUMS (bad hex, "../" or
 * absolute names, duplicates) is DSI_EFORMAT. Files that must be listed:
 * dsi_manifest_must_list(). bytes_out (optional) gets the bytes hashed. */
int dsi_manifest_verify(const char *dir, const struct dsi_manifest_opts *o, size_t *bytes_out, char **err);
/* true for names verify insists on: weights (*.safetensors, *.bin, *.pt, *.pth,
 * *.gguf), *.json, *.py (remote code), tokenizer and vocab files (*.model,
 * *.tiktoken, *.txt, tokenizer*, vocab*, merges*), *.jinja. */
bool dsi_manifest_must_list(const char *name);

/* A weight file whose SHA-256 check was deferred at open (defer_weight_hash). */
struct dsi_model_pending {
    char *name;       /* as listed in SHA256SUMS (relative to dir) */
    char *path;       /* dir/name */
    uint8_t want[32]; /* the listed digest */
    uint64_t size;    /* bytes at open (stat) */
    bool verified;    /* set only by a matching digest (dsi_model_mark_verified) */
};

/* A model ready for a backend: verified (unless opted out), config parsed, weights mapped. */
struct dsi_model {
    char *dir;
    struct dsi_model_config cfg;
    struct dsi_safetensors st;
    double verify_s, open_s; /* timings for the startup log */
    /* deferred weight hashes (defer_weight_hash): n_pending files; use the
     * accessors below. held: private (tensor data pointers withheld) */
    struct dsi_model_pending *pending;
    size_t n_pending;
    void *held;
    /* encrypted at rest (model_key_file): every file the model was read from
     * was decrypted into locked memory; enc is private (the plaintexts) */
    bool encrypted;
    void *enc;
};

struct dsi_model_open_opts {
    bool skip_verify;                   /* development only; logged as a warning */
    const char *expect_manifest_sha256; /* optional pin of SHA256SUMS's own hash (hex) */
    int n_threads;
    /* Single pass: the *.safetensors files are NOT hashed at open; the backend
     * hashes them while it reads them anyway (the CUDA loader hashes and uploads
     * in one pass). Everything else is as without it: SHA256SUMS is read, pinned,
     * parsed and checked for completeness, every other listed file is hashed,
     * listed weight files must exist, config and safetensors headers are parsed.
     * Fail closed: until a file's digest matched (dsi_model_mark_verified or
     * dsi_model_verify_pending), every tensor of that file has data == NULL and
     * dsi_tensor_to_f32 refuses it (DSI_EINTEGRITY), so a backend that does not
     * take part (the CPU backend) fails at load instead of using unverified
     * bytes. Ignored with skip_verify. */
    bool defer_weight_hash;
    /* Key file of a directory written by `dsinfer encrypt` (include/dsinfer/wenc.h;
     * mode 0600 or stricter). SHA256SUMS (of the encrypted files) is verified as
     * usual, then config.json, the tokenizer files and the weights are decrypted
     * into locked, non-dumpable memory and the key is wiped. defer_weight_hash is
     * ignored (every file is hashed here: backends load from memory). NULL or "":
     * the directory must not be encrypted (an encrypted one is DSI_EPERM). */
    const char *key_file;
};
int dsi_model_open(struct dsi_model *m, const char *dir, const struct dsi_model_open_opts *o, char **err);
void dsi_model_close(struct dsi_model *m);
/* The decrypted bytes of file `name` (relative to the model directory) of an
 * encrypted model: config.json, tokenizer.json, tokenizer_config.json and
 * generation_config.json when present. Valid until dsi_model_close. DSI_ENOENT
 * for other names or a model that is not encrypted (read those from disk). */
int dsi_model_file(const struct dsi_model *m, const char *name, const void **data, size_t *len);

/* Deferred weight hashes. The state lives behind the model's pointers, so these
 * take the const model a backend is given. Calls for different files may run on
 * different threads; none may overlap a reader of that file's tensors. */
/* Files whose digest has not matched yet (0: every tensor's data is available). */
size_t dsi_model_unverified(const struct dsi_model *m);
/* Compares the digest a backend computed over m->pending[i]'s bytes with the
 * listed one (CRYPTO_memcmp); on a match marks the file verified and releases
 * the data pointers of its tensors. A mismatch is DSI_EINTEGRITY naming the
 * file, which stays withheld. */
int dsi_model_mark_verified(const struct dsi_model *m, size_t i, const uint8_t got[32], char **err);
/* The two-pass path: hashes every unverified file on the host (n_threads, 0:
 * CPUs) and marks the matching ones; DSI_EINTEGRITY naming the first bad file. */
int dsi_model_verify_pending(const struct dsi_model *m, int n_threads, char **err);
/* Where tensor t's bytes lie: *pending = the index in m->pending of its file
 * (SIZE_MAX if that file was not deferred) and *offset = their byte offset in
 * the file. Works while the data is withheld. DSI_EINVAL if t is not m's. */
int dsi_model_tensor_location(const struct dsi_model *m, const struct dsi_tensor *t, size_t *pending,
                              uint64_t *offset);

/* IEEE half -> float, exactly (subnormals, signed zero, inf and NaN kept). The
 * one copy both backends and dsi_tensor_to_f32 use. */
float dsi_f16_to_f32(uint16_t h);

/* Reads tensor t as fp32 into dst (n_elems floats), converting from F32, F16,
 * BF16, F8_E4M3 (and I8/U8/I32 as plain values); DSI_EUNSUPPORTED otherwise. */
int dsi_tensor_to_f32(const struct dsi_tensor *t, float *dst, char **err);

#endif
