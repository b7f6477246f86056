/*
 * cmd_model.c: `dsinfer verify|manifest|inspect DIR`, the model store commands.
 *
 * verify and manifest print one result line to stdout, errors to stderr;
 * exit 0 ok, 1 failure (integrity or i/o), 2 usage. inspect reads config.json
 * and the safetensors headers without hashing (run verify for that).
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "dsinfer/clock.h"
#include "dsinfer/config.h"
#include "dsinfer/crypto.h"
#include "dsinfer/err.h"
#include "dsinfer/model.h"

struct model_args {
    const char *dir;
    int n_threads;
    const char *pin;
    bool json;
};

static int parse_args(const char *cmd, int argc, char **argv, struct model_args *a, bool allow_pin,
                      bool allow_json) {
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            if (dsi__cli_parse_threads(cmd, argv[++i], &a->n_threads)) return -1;
        } else if (allow_pin && !strcmp(argv[i], "--expect-manifest-sha256") && i + 1 < argc) {
            a->pin = argv[++i];
        } else if (allow_json && !strcmp(argv[i], "--json")) {
            a->json = true;
        } else if (argv[i][0] == '-' || a->dir) {
            fprintf(stderr, "dsinfer %s: unexpected argument '%s'\n", cmd, argv[i]);
            return -1;
        } else {
            a->dir = argv[i];
        }
    }
    if (!a->dir) {
        fprintf(stderr, "usage: dsinfer %s DIR%s%s%s\n", cmd, " [--threads N]",
                allow_pin ? " [--expect-manifest-sha256 HEX]" : "", allow_json ? " [--json]" : "");
        return -1;
    }
    return 0;
}

static int fail(const char *cmd, int rc, char *err) {
    fprintf(stderr, "dsinfer %s: %s\n", cmd, err ? err : dsi_strerror(rc));
    free(err);
    return DSI_EXIT_FAIL;
}

int dsi_cmd_verify(int argc, char **argv) {
    struct model_args a;
    if (parse_args("verify", argc, argv, &a, true, false)) return DSI_EXIT_USAGE;
    struct dsi_manifest_opts o = {
        .n_threads = a.n_threads, .progress = true, .expect_manifest_sha256 = a.pin};
    char *err = NULL;
    size_t bytes = 0;
    double t0 = dsi_now_s();
    int rc = dsi_manifest_verify(a.dir, &o, &bytes, &err);
    double dt = dsi_now_s() - t0;
    if (rc) return fail("verify", rc, err);
    printf("OK %s: every file matches SHA256SUMS (%.3f GB in %.2f s, %.2f GB/s)\n", a.dir,
           (double)bytes / 1e9, dt, dt > 0 ? (double)bytes / 1e9 / dt : 0.0);
    return DSI_EXIT_OK;
}

int dsi_cmd_manifest(int argc, char **argv) {
    struct model_args a;
    if (parse_args("manifest", argc, argv, &a, false, false)) return DSI_EXIT_USAGE;
    struct dsi_manifest_opts o = {.n_threads = a.n_threads, .progress = true};
    char *err = NULL;
    int rc = dsi_manifest_write(a.dir, &o, &err);
    if (rc) return fail("manifest", rc, err);
    size_t n = strlen(a.dir);
    char *path = malloc(n + sizeof "/SHA256SUMS");
    if (!path) return fail("manifest", DSI_ENOMEM, NULL);
    snprintf(path, n + sizeof "/SHA256SUMS", "%s/SHA256SUMS", a.dir);
    uint8_t d[DSI_SHA256_LEN];
    char hex[DSI_SHA256_HEX_LEN + 1];
    rc = dsi_sha256_file(path, 0, d, NULL, &err);
    if (rc) {
        free(path);
        return fail("manifest", rc, err);
    }
    dsi_hex_encode(d, sizeof d, hex);
    printf("wrote %s\nSHA-256 of SHA256SUMS (pin it with --expect-manifest-sha256): %s\n", path, hex);
    free(path);
    return DSI_EXIT_OK;
}

/* Weight-memory estimate for one dtype plan, from the tensors actually present. */
struct mem_plan {
    double params;                  /* excluding FP8 block scales */
    double f32, bf16, int8;         /* bytes */
    size_t dt_count[DSI_DT__COUNT]; /* tensors per stored dtype */
    double dt_bytes[DSI_DT__COUNT];
};

static void plan_memory(const struct dsi_safetensors *st, struct mem_plan *p) {
    memset(p, 0, sizeof *p);
    for (size_t i = 0; i < st->n_tensors; i++) {
        const struct dsi_tensor *t = &st->tensors[i];
        p->dt_count[t->dtype]++;
        p->dt_bytes[t->dtype] += (double)t->size_bytes;
        size_t nl = strlen(t->name);
        if (nl > 10 && !strcmp(t->name + nl - 10, "_scale_inv")) continue;
        double n = (double)t->n_elems;
        p->params += n;
        p->f32 += 4 * n;
        p->bf16 += 2 * n;
        /* INT8 per output channel: 1 byte per weight + one f32 scale per row;
         * 1-D tensors (norms, biases) stay f32. */
        p->int8 += t->n_dims == 2 ? n + 4.0 * (double)t->shape[0] : 4 * n;
    }
}

/* What the KV cache takes per token in each kv_dtype (MLA: the compressed latent
 * + the rope key), and the tokens a pool of the default kv_cache_mib holds in
 * blocks of 16 (the CPU backend's sizing: whole blocks of whole tokens). */
struct kv_plan {
    size_t bytes_per_token[3];  /* f32, bf16, int8 */
    size_t capacity_tokens[3];
    size_t pool_mib;
};

static void plan_kv(const struct dsi_model_config *c, struct kv_plan *k) {
    const enum dsi_kv_dtype dts[3] = {DSI_KV_F32, DSI_KV_BF16, DSI_KV_INT8};
    struct dsi_config cfg;
    k->pool_mib = dsi_config_init(&cfg) == 0 ? cfg.kv_cache_mib : 256;
    dsi_config_free(&cfg);
    for (int i = 0; i < 3; i++) {
        size_t per = dsi_model_kv_bytes_per_token(c, dts[i]);
        k->bytes_per_token[i] = per;
        k->capacity_tokens[i] = ((k->pool_mib << 20) / (16 * per)) * 16;
    }
}

static void print_text(const char *dir, const struct dsi_model_config *c, bool runnable, const char *why,
                       const struct dsi_safetensors *st, const struct mem_plan *p) {
    printf("model:         %s\n", dir);
    printf("architecture:  %s (%s)\n", c->architecture, runnable ? "runnable" : why);
    printf("layers %d, hidden %d, intermediate %d, heads %d, kv heads %d, head_dim %d\n", c->n_layers,
           c->hidden_size, c->intermediate_size, c->n_heads, c->n_kv_heads, c->head_dim);
    printf("vocab:         %d\ncontext:       %d\n", c->vocab_size, c->max_position_embeddings);
    printf("rope:          theta %g, scaling %s", (double)c->rope_theta, dsi_rope_type_name(c->rope.type));
    if (c->rope.type != DSI_ROPE_DEFAULT) printf(" factor %g", (double)c->rope.factor);
    if (c->rope.original_max_position_embeddings)
        printf(" original_max_position_embeddings %d", c->rope.original_max_position_embeddings);
    printf("\n");
    if (c->kv_lora_rank)
        printf("mla/moe:       q_lora %d, kv_lora %d, experts %d routed + %d shared, %d per token\n",
               c->q_lora_rank, c->kv_lora_rank, c->n_routed_experts, c->n_shared_experts,
               c->num_experts_per_tok);
    printf("config dtype:  %s%s\n", dsi_dtype_name(c->dtype), c->quant_fp8 ? " (FP8 block-quantized)" : "");
    printf("tensors:       %zu\n", st->n_tensors);
    printf("parameters:    %.0f (%.3f B)\n", p->params, p->params / 1e9);
    printf("dtypes:       ");
    for (int d = 0; d < DSI_DT__COUNT; d++)
        if (p->dt_count[d])
            printf(" %s (%zu tensors, %.3f GB)", dsi_dtype_name((enum dsi_dtype)d), p->dt_count[d],
                   p->dt_bytes[d] / 1e9);
    printf("\nweights need:  f32 %.3f GB, bf16 %.3f GB, int8 %.3f GB (per-row f32 scales)\n", p->f32 / 1e9,
           p->bf16 / 1e9, p->int8 / 1e9);
    struct kv_plan k;
    plan_kv(c, &k);
    printf("kv cache:      %zu bytes per token (bf16), %zu (f32), %zu (int8: an f16 scale per token and head)\n",
           k.bytes_per_token[1], k.bytes_per_token[0], k.bytes_per_token[2]);
    printf("kv capacity:   %zu MiB hold %zu tokens (bf16), %zu (f32), %zu (int8: %.2fx bf16)\n", k.pool_mib,
           k.capacity_tokens[1], k.capacity_tokens[0], k.capacity_tokens[2],
           k.capacity_tokens[1] ? (double)k.capacity_tokens[2] / (double)k.capacity_tokens[1] : 0.0);
}

static int print_json(const char *dir, const struct dsi_model_config *c, bool runnable, const char *why,
                      const struct dsi_safetensors *st, const struct mem_plan *p) {
    cJSON *o = cJSON_CreateObject(), *dts = cJSON_CreateObject(), *mem = cJSON_CreateObject();
    cJSON *rope = cJSON_CreateObject();
    if (!o || !dts || !mem || !rope) {
        cJSON_Delete(o), cJSON_Delete(dts), cJSON_Delete(mem), cJSON_Delete(rope);
        return DSI_ENOMEM;
    }
    cJSON_AddStringToObject(o, "model", dir);
    cJSON_AddStringToObject(o, "architecture", c->architecture);
    cJSON_AddBoolToObject(o, "runnable", runnable);
    if (!runnable) cJSON_AddStringToObject(o, "not_runnable_reason", why);
    cJSON_AddNumberToObject(o, "layers", c->n_layers);
    cJSON_AddNumberToObject(o, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(o, "intermediate_size", c->intermediate_size);
    cJSON_AddNumberToObject(o, "heads", c->n_heads);
    cJSON_AddNumberToObject(o, "kv_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "context", c->max_position_embeddings);
    cJSON_AddNumberToObject(rope, "theta", c->rope_theta);
    cJSON_AddStringToObject(rope, "scaling", dsi_rope_type_name(c->rope.type));
    cJSON_AddNumberToObject(rope, "factor", c->rope.factor);
    cJSON_AddItemToObject(o, "rope", rope);
    cJSON_AddStringToObject(o, "config_dtype", dsi_dtype_name(c->dtype));
    cJSON_AddNumberToObject(o, "tensors", (double)st->n_tensors);
    cJSON_AddNumberToObject(o, "parameters", p->params);
    for (int d = 0; d < DSI_DT__COUNT; d++)
        if (p->dt_count[d]) cJSON_AddNumberToObject(dts, dsi_dtype_name((enum dsi_dtype)d), p->dt_bytes[d]);
    cJSON_AddItemToObject(o, "dtype_bytes", dts);
    cJSON_AddNumberToObject(mem, "f32", p->f32);
    cJSON_AddNumberToObject(mem, "bf16", p->bf16);
    cJSON_AddNumberToObject(mem, "int8", p->int8);
    cJSON_AddItemToObject(o, "weight_bytes", mem);
    struct kv_plan k;
    plan_kv(c, &k);
    cJSON_AddNumberToObject(o, "kv_bytes_per_token_bf16", (double)k.bytes_per_token[1]);
    cJSON *kb = cJSON_AddObjectToObject(o, "kv_bytes_per_token"), *kc = cJSON_AddObjectToObject(o, "kv_capacity_tokens");
    const char *names[3] = {"f32", "bf16", "int8"};
    for (int i = 0; kb && kc && i < 3; i++) {
        cJSON_AddNumberToObject(kb, names[i], (double)k.bytes_per_token[i]);
        cJSON_AddNumberToObject(kc, names[i], (double)k.capacity_tokens[i]);
    }
    cJSON_AddNumberToObject(o, "kv_capacity_pool_mib", (double)k.pool_mib);
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    if (!s) return DSI_ENOMEM;
    printf("%s\n", s);
    free(s);
    return 0;
}

int dsi_cmd_inspect(int argc, char **argv) {
    struct model_args a;
    if (parse_args("inspect", argc, argv, &a, false, true)) return DSI_EXIT_USAGE;
    struct dsi_model_config cfg;
    struct dsi_safetensors st = {0};
    char *err = NULL, *why = NULL;
    int rc = dsi_model_config_load(a.dir, &cfg, &err);
    if (rc) return fail("inspect", rc, err);
    if ((rc = dsi_st_open_dir(&st, a.dir, &err))) return fail("inspect", rc, err);
    bool runnable = dsi_model_config_runnable(&cfg, &why) == 0;
    struct mem_plan p;
    plan_memory(&st, &p);
    if (a.json)
        rc = print_json(a.dir, &cfg, runnable, why ? why : "", &st, &p);
    else
        print_text(a.dir, &cfg, runnable, why ? why : "", &st, &p);
    free(why);
    dsi_st_close(&st);
    return rc ? fail("inspect", rc, NULL) : DSI_EXIT_OK;
}
