/*
 * cmd_run.c: `dsinfer generate`, `dsinfer logits`, `dsinfer quant-report`: run a
 * model directly on a backend (no engine, no HTTP), for tests, debugging and
 * quick checks.
 *
 *   logits   one decode step per prompt position, so every row is the logits of
 *            that position; prints {"logits": [[...], ...]} (%.9g: exact floats)
 *   generate prefill in chunks of up to 512 tokens, then one token per step,
 *            sampled with dsi_sample; prints text (streamed), or with --json
 *            {"ids": [...], "text": ..., "finish_reason", "prompt_tokens",
 *            "completion_tokens"}; a timing line goes to stderr
 *   quant-report  per-tensor INT8 error of the loaded model
 * Exit status: 0 ok, 1 failure (one line on stderr), 2 usage.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "dsinfer/backend.h"
#include "dsinfer/engine.h"
#include "dsinfer/err.h"
#include "dsinfer/model.h"
#include "dsinfer/tok.h"

#define PREFILL_CHUNK 512

struct run_args {
    const char *dir, *prompt, *backend;
    int32_t *ids;
    int n_ids;
    int max_tokens;
    enum dsi_weight_dtype dtype;
    bool dtype_set;
    enum dsi_kv_dtype kv_dtype;
    int group_size, n_threads;
    bool no_verify, json, ignore_eos, bos;
    struct dsi_sampling s;
};

static int parse_long(const char *cmd, const char *opt, const char *v, long lo, long hi, long *out);
static int parse_float(const char *cmd, const char *opt, const char *v, float lo, float hi, float *out);
static int parse_ids(const char *cmd, const char *v, struct run_args *a);
static int parse_args(const char *cmd, int argc, char **argv, struct run_args *a);
static int open_backend(const char *cmd, const struct run_args *a, int n_ctx, struct dsi_model *m,
                        struct dsi_backend **be);
static int fail(const char *cmd, int rc, char *err);
static double now_s(void);

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(const char *cmd, int rc, char *err) {
    fprintf(stderr, "dsinfer %s: %s\n", cmd, err ? err : dsi_strerror(rc));
    free(err);
    return DSI_EXIT_FAIL;
}

static int parse_long(const char *cmd, const char *opt, const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "dsinfer %s: %s wants an integer in %ld..%ld, got '%s'\n", cmd, opt, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_float(const char *cmd, const char *opt, const char *v, float lo, float hi, float *out) {
    char *end;
    errno = 0;
    float x = strtof(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi)) {
        fprintf(stderr, "dsinfer %s: %s wants a number in %g..%g, got '%s'\n", cmd, opt, (double)lo,
                (double)hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

/* "1,2,3", "[1, 2, 3]" or "1 2 3". Range against the vocabulary is the backend's check. */
static int parse_ids(const char *cmd, const char *v, struct run_args *a) {
    size_t cap = 16, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return -1;
    const char *p = v;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '[' || *p == ']' || *p == '\n' || *p == '\t')
            p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < INT32_MIN || x > INT32_MAX) {
            fprintf(stderr, "dsinfer %s: --ids wants comma-separated integers, got '%s'\n", cmd, v);
            free(ids);
            return -1;
        }
        if (n == cap) {
            int32_t *g = cap < (size_t)INT_MAX / 2 ? realloc(ids, cap * 2 * sizeof *ids) : NULL;
            if (!g) {
                free(ids);
                return -1;
            }
            ids = g;
            cap *= 2;
        }
        ids[n++] = (int32_t)x;
        p = end;
    }
    if (n == 0) {
        fprintf(stderr, "dsinfer %s: --ids is empty\n", cmd);
        free(ids);
        return -1;
    }
    free(a->ids);
    a->ids = ids;
    a->n_ids = (int)n;
    return 0;
}

static int parse_args(const char *cmd, int argc, char **argv, struct run_args *a) {
    long l;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool has = v != NULL;
#define NEXT() (i++, v)
        if (!strcmp(o, "--model") && has)
            a->dir = NEXT();
        else if (!strcmp(o, "--ids") && has) {
            if (parse_ids(cmd, NEXT(), a)) return -1;
        } else if (!strcmp(o, "--prompt") && has)
            a->prompt = NEXT();
        else if (!strcmp(o, "--backend") && has)
            a->backend = NEXT();
        else if (!strcmp(o, "--dtype") && has) {
            i++;
            a->dtype_set = true;
            if (!strcmp(v, "f32"))
                a->dtype = DSI_W_F32;
            else if (!strcmp(v, "bf16"))
                a->dtype = DSI_W_BF16;
            else if (!strcmp(v, "int8"))
                a->dtype = DSI_W_INT8;
            else {
                fprintf(stderr, "dsinfer %s: --dtype wants f32, bf16 or int8, got '%s'\n", cmd, v);
                return -1;
            }
        } else if (!strcmp(o, "--kv-dtype") && has) {
            i++;
            if (!strcmp(v, "f32"))
                a->kv_dtype = DSI_KV_F32;
            else if (!strcmp(v, "bf16"))
                a->kv_dtype = DSI_KV_BF16;
            else {
                fprintf(stderr, "dsinfer %s: --kv-dtype wants f32 or bf16, got '%s'\n", cmd, v);
                return -1;
            }
        } else if (!strcmp(o, "--group-size") && has) {
            if (parse_long(cmd, o, NEXT(), 0, 1 << 20, &l)) return -1;
            a->group_size = (int)l;
        } else if (!strcmp(o, "--threads") && has) {
            if (parse_long(cmd, o, NEXT(), 1, 1024, &l)) return -1;
            a->n_threads = (int)l;
        } else if (!strcmp(o, "--max-tokens") && has) {
            if (parse_long(cmd, o, NEXT(), 0, 1 << 24, &l)) return -1;
            a->max_tokens = (int)l;
        } else if (!strcmp(o, "--temperature") && has) {
            if (parse_float(cmd, o, NEXT(), 0.0f, 100.0f, &a->s.temperature)) return -1;
        } else if (!strcmp(o, "--top-p") && has) {
            if (parse_float(cmd, o, NEXT(), 0.0f, 1.0f, &a->s.top_p)) return -1;
        } else if (!strcmp(o, "--top-k") && has) {
            if (parse_long(cmd, o, NEXT(), 0, INT_MAX, &l)) return -1;
            a->s.top_k = (int)l;
        } else if (!strcmp(o, "--min-p") && has) {
            if (parse_float(cmd, o, NEXT(), 0.0f, 1.0f, &a->s.min_p)) return -1;
        } else if (!strcmp(o, "--repetition-penalty") && has) {
            if (parse_float(cmd, o, NEXT(), 0.01f, 100.0f, &a->s.repetition_penalty)) return -1;
        } else if (!strcmp(o, "--presence-penalty") && has) {
            if (parse_float(cmd, o, NEXT(), -2.0f, 2.0f, &a->s.presence_penalty)) return -1;
        } else if (!strcmp(o, "--frequency-penalty") && has) {
            if (parse_float(cmd, o, NEXT(), -2.0f, 2.0f, &a->s.frequency_penalty)) return -1;
        } else if (!strcmp(o, "--seed") && has) {
            char *end;
            i++;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-') {
                fprintf(stderr, "dsinfer %s: --seed wants a non-negative integer, got '%s'\n", cmd, v);
                return -1;
            }
            a->s.seed = (uint64_t)s;
        } else if (!strcmp(o, "--no-verify"))
            a->no_verify = true;
        else if (!strcmp(o, "--json"))
            a->json = true;
        else if (!strcmp(o, "--ignore-eos"))
            a->ignore_eos = true;
        else if (!strcmp(o, "--bos"))
            a->bos = true;
        else {
            fprintf(stderr, "dsinfer %s: unexpected argument '%s'%s\n", cmd, o,
                    has ? "" : " (or missing value)");
            return -1;
        }
#undef NEXT
    }
    if (!a->dir) {
        fprintf(stderr, "dsinfer %s: --model DIR is required\n", cmd);
        return -1;
    }
    return 0;
}

static int open_backend(const char *cmd, const struct run_args *a, int n_ctx, struct dsi_model *m,
                        struct dsi_backend **be) {
    char *err = NULL;
    /* --backend cuda hashes the weight files while uploading them (one pass) */
    struct dsi_model_open_opts mo = {.skip_verify = a->no_verify,
                                     .n_threads = a->n_threads,
                                     .defer_weight_hash = a->backend && !strcmp(a->backend, "cuda")};
    int rc = dsi_model_open(m, a->dir, &mo, &err);
    if (rc) return fail(cmd, rc, err);
    if ((rc = dsi_model_config_runnable(&m->cfg, &err))) {
        dsi_model_close(m);
        return fail(cmd, rc, err);
    }
    const struct dsi_model_config *c = &m->cfg;
    if (n_ctx > c->max_position_embeddings) {
        fprintf(stderr,
                "dsinfer %s: %d tokens do not fit the model's context of %d (max_position_embeddings)\n", cmd,
                n_ctx, c->max_position_embeddings);
        dsi_model_close(m);
        return DSI_EXIT_FAIL;
    }
    size_t per_tok = (size_t)(c->n_layers > 0 ? c->n_layers : 1) * 2 *
                     (size_t)(c->n_kv_heads > 0 ? c->n_kv_heads : 1) *
                     (size_t)(c->head_dim > 0 ? c->head_dim : 1) * (a->kv_dtype == DSI_KV_F32 ? 4 : 2);
    size_t blocks = (size_t)n_ctx / 16 + 2;
    struct dsi_backend_opts o = {.weight_dtype = a->dtype,
                                 .int8_group_size = a->group_size,
                                 .kv_dtype = a->kv_dtype,
                                 .kv_block_size = 16,
                                 .kv_bytes = blocks * 16 * per_tok,
                                 .kv_gpu_fraction = 0.5f,
                                 .max_batch_tokens = PREFILL_CHUNK,
                                 .max_seqs = 1,
                                 .n_threads = a->n_threads};
    rc = dsi_backend_create(a->backend ? a->backend : "cpu", m, &o, be, &err);
    if (rc) {
        dsi_model_close(m);
        return fail(cmd, rc, err);
    }
    return 0;
}

int dsi_cmd_logits(int argc, char **argv) {
    struct run_args a = {.dtype = DSI_W_F32, .kv_dtype = DSI_KV_F32};
    dsi_sampling_defaults(&a.s);
    if (parse_args("logits", argc, argv, &a) || !a.ids) {
        if (!a.ids && a.dir)
            fprintf(stderr,
                    "usage: dsinfer logits --model DIR --ids 1,2,3 [--dtype f32|bf16|int8] [--group-size N] "
                    "[--kv-dtype f32|bf16] [--backend cpu|cuda] [--threads N] [--no-verify]\n");
        free(a.ids);
        return DSI_EXIT_USAGE;
    }
    struct dsi_model m;
    struct dsi_backend *be = NULL;
    int rc = open_backend("logits", &a, a.n_ids, &m, &be);
    if (rc) {
        free(a.ids);
        return rc;
    }
    int V = be->vocab_size, nb = (a.n_ids + be->kv_block_size - 1) / be->kv_block_size;
    int32_t *table = malloc((size_t)nb * sizeof *table);
    float *lg = malloc((size_t)V * sizeof *lg);
    char *err = NULL;
    int status = DSI_EXIT_OK;
    if (!table || !lg || nb > be->n_kv_blocks) {
        status = fail("logits", DSI_ENOMEM, NULL);
        goto out;
    }
    for (int i = 0; i < nb; i++)
        table[i] = i;
    fputs("{\"logits\": [", stdout);
    for (int i = 0; i < a.n_ids; i++) {
        struct dsi_batch_seq s = {.seq_id = 1,
                                  .tokens = a.ids + i,
                                  .n_tokens = 1,
                                  .pos = i,
                                  .block_table = table,
                                  .n_blocks = nb,
                                  .want_logits = true};
        struct dsi_batch b = {&s, 1};
        if ((rc = be->ops->forward(be, &b, lg, &err))) {
            fputs("]}\n", stdout);
            status = fail("logits", rc, err);
            goto out;
        }
        fputs(i ? ",\n[" : "\n[", stdout);
        for (int v = 0; v < V; v++)
            printf(v ? ", %.9g" : "%.9g", (double)lg[v]);
        fputs("]", stdout);
    }
    fputs("\n]}\n", stdout);
out:
    free(table);
    free(lg);
    free(a.ids);
    dsi_backend_destroy(be);
    dsi_model_close(&m);
    return status;
}

static bool is_eos(const struct dsi_model_config *c, const struct dsi_tokenizer *tok, int32_t t) {
    for (int i = 0; i < c->n_eos && i < DSI_MAX_EOS; i++)
        if (c->eos_token_ids[i] == t) return true;
    return tok && dsi_tok_eos(tok) >= 0 && dsi_tok_eos(tok) == t;
}

int dsi_cmd_generate(int argc, char **argv) {
    struct run_args a = {.dtype = DSI_W_BF16, .kv_dtype = DSI_KV_F32, .max_tokens = 64};
    dsi_sampling_defaults(&a.s);
    if (parse_args("generate", argc, argv, &a) || (!a.ids == !a.prompt)) {
        if (a.dir && !a.ids == !a.prompt)
            fprintf(stderr,
                    "usage: dsinfer generate --model DIR (--prompt TEXT | --ids 1,2,3) [--max-tokens N] "
                    "[--temperature T] [--top-p P] [--top-k K] [--min-p P] [--seed S] "
                    "[--repetition-penalty R] [--presence-penalty P] [--frequency-penalty F] "
                    "[--dtype f32|bf16|int8] [--group-size N] [--backend cpu|cuda] [--bos] [--ignore-eos] "
                    "[--json] [--no-verify]\n");
        free(a.ids);
        return DSI_EXIT_USAGE;
    }
    char *err = NULL;
    struct dsi_tokenizer *tok = NULL;
    int rc = dsi_tok_load(a.dir, &tok, &err);
    if (rc) {
        if (a.prompt) {
            free(a.ids);
            return fail("generate", rc, err);
        }
        free(err); /* --ids works without a tokenizer: ids only */
        err = NULL;
        tok = NULL;
    }
    int32_t *hist = NULL;
    size_t n_prompt = 0;
    if (a.prompt) {
        int32_t *ids = NULL;
        if ((rc = dsi_tok_encode(tok, a.prompt, strlen(a.prompt), true, &ids, &n_prompt, &err))) {
            dsi_tok_free(tok);
            return fail("generate", rc, err);
        }
        a.ids = ids;
        a.n_ids = (int)n_prompt;
    }
    if (a.bos && tok && dsi_tok_bos(tok) >= 0) {
        int32_t *g = realloc(a.ids, ((size_t)a.n_ids + 1) * sizeof *g);
        if (!g) {
            free(a.ids);
            if (tok) dsi_tok_free(tok);
            return fail("generate", DSI_ENOMEM, NULL);
        }
        memmove(g + 1, g, (size_t)a.n_ids * sizeof *g);
        g[0] = dsi_tok_bos(tok);
        a.ids = g;
        a.n_ids++;
    }
    n_prompt = (size_t)a.n_ids;
    if (n_prompt == 0) {
        free(a.ids);
        if (tok) dsi_tok_free(tok);
        fprintf(stderr, "dsinfer generate: the prompt encodes to no tokens\n");
        return DSI_EXIT_FAIL;
    }
    struct dsi_model m;
    struct dsi_backend *be = NULL;
    /* the context needed; max_tokens is clamped below to what the model allows */
    struct dsi_model_config probe;
    int n_ctx = a.n_ids + a.max_tokens;
    if (dsi_model_config_load(a.dir, &probe, NULL) == 0 && n_ctx > probe.max_position_embeddings &&
        a.n_ids <= probe.max_position_embeddings)
        n_ctx = probe.max_position_embeddings;
    if ((rc = open_backend("generate", &a, n_ctx, &m, &be))) {
        free(a.ids);
        if (tok) dsi_tok_free(tok);
        return rc;
    }
    int max_new = n_ctx - a.n_ids;
    int V = be->vocab_size, nb = (n_ctx + be->kv_block_size - 1) / be->kv_block_size;
    int32_t *table = malloc((size_t)(nb > 0 ? nb : 1) * sizeof *table);
    float *lg = malloc((size_t)V * sizeof *lg);
    hist = malloc(((size_t)n_ctx + 1) * sizeof *hist);
    struct dsi_tok_stream *ts = NULL;
    int status = DSI_EXIT_OK, n_out = 0;
    const char *finish = "length";
    if (!table || !lg || !hist || nb > be->n_kv_blocks ||
        (tok && !a.json && dsi_tok_stream_create(tok, true, &ts))) {
        status = fail("generate", DSI_ENOMEM, NULL);
        goto out;
    }
    for (int i = 0; i < nb; i++)
        table[i] = i;
    memcpy(hist, a.ids, n_prompt * sizeof *hist);
    struct dsi_sampler_state st;
    dsi_sampler_seed(&st, a.s.seed);
    double t0 = now_s(), t_first = t0;
    int pos = 0;
    while (pos < a.n_ids) { /* prefill in chunks; logits of the last chunk only */
        int n = a.n_ids - pos < PREFILL_CHUNK ? a.n_ids - pos : PREFILL_CHUNK;
        struct dsi_batch_seq s = {.seq_id = 1,
                                  .tokens = a.ids + pos,
                                  .n_tokens = n,
                                  .pos = pos,
                                  .block_table = table,
                                  .n_blocks = nb,
                                  .want_logits = pos + n == a.n_ids};
        struct dsi_batch b = {&s, 1};
        if ((rc = be->ops->forward(be, &b, lg, &err))) {
            status = fail("generate", rc, err);
            goto out;
        }
        pos += n;
    }
    t_first = now_s();
    for (int k = 0; k < max_new; k++) {
        int32_t t = dsi_sample(lg, V, &a.s, &st, hist, (int)n_prompt + n_out, (int)n_prompt, NULL);
        if (t < 0) {
            status = fail("generate", DSI_EINTERNAL, NULL);
            goto out;
        }
        if (!a.ignore_eos && is_eos(&m.cfg, tok, t)) {
            finish = "stop";
            break;
        }
        hist[n_prompt + (size_t)n_out++] = t;
        if (ts) {
            char *piece = NULL;
            size_t plen = 0;
            if (dsi_tok_stream_push(ts, t, &piece, &plen) == 0 && piece) {
                fwrite(piece, 1, plen, stdout);
                fflush(stdout);
            }
            free(piece);
        }
        if (k + 1 == max_new) break;
        struct dsi_batch_seq s = {.seq_id = 1,
                                  .tokens = &hist[n_prompt + (size_t)n_out - 1],
                                  .n_tokens = 1,
                                  .pos = pos,
                                  .block_table = table,
                                  .n_blocks = nb,
                                  .want_logits = true};
        struct dsi_batch b = {&s, 1};
        if ((rc = be->ops->forward(be, &b, lg, &err))) {
            status = fail("generate", rc, err);
            goto out;
        }
        pos++;
    }
    double t_end = now_s();
    if (ts) {
        char *piece = NULL;
        size_t plen = 0;
        if (dsi_tok_stream_flush(ts, &piece, &plen) == 0 && piece) fwrite(piece, 1, plen, stdout);
        free(piece);
        fputc('\n', stdout);
    } else if (a.json) {
        cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "ids");
        for (int i = 0; i < n_out; i++)
            cJSON_AddItemToArray(arr, cJSON_CreateNumber(hist[n_prompt + (size_t)i]));
        char *text = NULL;
        size_t tlen = 0;
        if (tok && dsi_tok_decode(tok, hist + n_prompt, (size_t)n_out, true, &text, &tlen, NULL) == 0 && text)
            cJSON_AddStringToObject(o, "text", text);
        else
            cJSON_AddNullToObject(o, "text");
        free(text);
        cJSON_AddStringToObject(o, "finish_reason", finish);
        cJSON_AddNumberToObject(o, "prompt_tokens", (double)n_prompt);
        cJSON_AddNumberToObject(o, "completion_tokens", n_out);
        char *js = cJSON_PrintUnformatted(o);
        if (js) puts(js);
        free(js);
        cJSON_Delete(o);
    } else {
        for (int i = 0; i < n_out; i++)
            printf(i ? ",%d" : "%d", hist[n_prompt + (size_t)i]);
        putchar('\n');
    }
    double pre = t_first - t0, dec = t_end - t_first;
    fprintf(
        stderr,
        "generate: prefill %zu tokens in %.1f ms (%.0f tok/s), %d tokens in %.1f ms (%.1f tok/s decode)\n",
        n_prompt, pre * 1e3, pre > 0 ? (double)n_prompt / pre : 0.0, n_out, dec * 1e3,
        dec > 0 ? (double)n_out / dec : 0.0);
out:
    if (ts) dsi_tok_stream_destroy(ts);
    free(table);
    free(lg);
    free(hist);
    free(a.ids);
    dsi_backend_destroy(be);
    dsi_model_close(&m);
    if (tok) dsi_tok_free(tok);
    return status;
}

int dsi_cmd_quant_report(int argc, char **argv) {
    struct run_args a = {.dtype = DSI_W_INT8, .kv_dtype = DSI_KV_F32};
    dsi_sampling_defaults(&a.s);
    if (parse_args("quant-report", argc, argv, &a)) {
        free(a.ids);
        return DSI_EXIT_USAGE;
    }
    a.dtype = DSI_W_INT8;
    struct dsi_model m;
    struct dsi_backend *be = NULL;
    int rc = open_backend("quant-report", &a, 16, &m, &be);
    free(a.ids);
    if (rc) return rc;
    char *rep = NULL, *err = NULL;
    int status = DSI_EXIT_OK;
    if (!be->ops->quant_report) {
        status =
            fail("quant-report", DSI_EUNSUPPORTED, dsi_errf("backend %s has no quant report", be->ops->name));
    } else if ((rc = be->ops->quant_report(be, &rep, &err))) {
        status = fail("quant-report", rc, err);
    } else {
        fputs(rep, stdout);
    }
    free(rep);
    dsi_backend_destroy(be);
    dsi_model_close(&m);
    return status;
}
