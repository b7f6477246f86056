/*
 * cmd_run.c: `dsinfer generate`, `dsinfer logits`, `dsinfer quant-report`: run a
 * model without HTTP, for tests, debugging and quick checks. The model is
 * assembled by dsi_runtime_open (src/runtime), as `serve` does.
 *
 *   logits   one backend step per prompt position, so every row is the logits of
 *            that position; prints {"logits": [[...], ...]} (%.9g: exact floats)
 *   generate one request on a dsi_engine (a batch of one), so it samples and
 *            stops exactly as `serve` does (same stop ids, same sampler, prefill
 *            chunks of up to 512 tokens); prints text (streamed), or with --json
 *            {"ids": [...], "text": ..., "finish_reason", "prompt_tokens",
 *            "completion_tokens"}; a timing line goes to stderr
 *   quant-report  per-tensor INT8 error of the loaded model
 * Exit status: 0 ok, 1 failure (one line on stderr), 2 usage.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dsinfer/clock.h"
#include "dsinfer/config.h"
#include "dsinfer/backend.h"
#include "dsinfer/engine.h"
#include "dsinfer/err.h"
#include "dsinfer/model.h"
#include "dsinfer/runtime.h"
#include "dsinfer/tok.h"

#define PREFILL_CHUNK 512

struct run_args {
    const char *dir, *key_file, *prompt, *backend;
    int32_t *ids;
    int n_ids;
    int max_tokens;
    const char *dtype, *kv_dtype; /* checked by dsi_runtime_parse_(kv_)dtype */
    int group_size, n_threads;
    bool no_verify, json, ignore_eos, bos;
    struct dsi_sampling s;
};

static int parse_long(const char *cmd, const char *opt, const char *v, long lo, long hi, long *out);
static int parse_float(const char *cmd, const char *opt, const char *v, float *out);
static int parse_ids(const char *cmd, const char *v, struct run_args *a);
static int parse_args(const char *cmd, int argc, char **argv, struct run_args *a);
static int open_runtime(const char *cmd, const struct run_args *a, int n_ctx, bool engine,
                        struct dsi_runtime **rt);
static int fail(const char *cmd, int rc, char *err);

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

/* A number; its range is dsi_sampling_check's, the one the server applies too. */
static int parse_float(const char *cmd, const char *opt, const char *v, float *out) {
    char *end;
    errno = 0;
    float x = strtof(v, &end);
    if (errno || end == v || *end) {
        fprintf(stderr, "dsinfer %s: %s wants a number, got '%s'\n", cmd, opt, v);
        return -1;
    }
    *out = x;
    return 0;
}

/* Sampling flags in range, reported by flag name (--top-p for top_p). */
static int check_sampling(const char *cmd, const struct dsi_sampling *s) {
    const char *param = NULL;
    char *msg = NULL;
    if (dsi_sampling_check(s, &param, &msg) == 0) return 0;
    char flag[64];
    snprintf(flag, sizeof flag, "%s", param ? param : "sampling");
    for (char *c = flag; *c; c++)
        if (*c == '_') *c = '-';
    fprintf(stderr, "dsinfer %s: --%s: %s\n", cmd, flag, msg ? msg : "out of range");
    free(msg);
    return -1;
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
        if (!strcmp(o, "--key-file") && has)
            a->key_file = NEXT();
        else if (!strcmp(o, "--model") && has)
            a->dir = NEXT();
        else if (!strcmp(o, "--ids") && has) {
            if (parse_ids(cmd, NEXT(), a)) return -1;
        } else if (!strcmp(o, "--prompt") && has)
            a->prompt = NEXT();
        else if (!strcmp(o, "--backend") && has)
            a->backend = NEXT();
        else if (!strcmp(o, "--dtype") && has) {
            enum dsi_weight_dtype d;
            if (dsi_runtime_parse_dtype(NEXT(), &d) || !v[0]) {
                fprintf(stderr, "dsinfer %s: --dtype wants f32, bf16 or int8, got '%s'\n", cmd, v);
                return -1;
            }
            a->dtype = v;
        } else if (!strcmp(o, "--kv-dtype") && has) {
            enum dsi_kv_dtype d;
            if (dsi_runtime_parse_kv_dtype(NEXT(), NULL, &d)) {
                fprintf(stderr, "dsinfer %s: --kv-dtype wants auto, f32, bf16 or int8, got '%s'\n", cmd, v);
                return -1;
            }
            a->kv_dtype = v;
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
            if (parse_float(cmd, o, NEXT(), &a->s.temperature)) return -1;
        } else if (!strcmp(o, "--top-p") && has) {
            if (parse_float(cmd, o, NEXT(), &a->s.top_p)) return -1;
        } else if (!strcmp(o, "--top-k") && has) {
            if (parse_long(cmd, o, NEXT(), 0, INT_MAX, &l)) return -1;
            a->s.top_k = (int)l;
        } else if (!strcmp(o, "--min-p") && has) {
            if (parse_float(cmd, o, NEXT(), &a->s.min_p)) return -1;
        } else if (!strcmp(o, "--repetition-penalty") && has) {
            if (parse_float(cmd, o, NEXT(), &a->s.repetition_penalty)) return -1;
        } else if (!strcmp(o, "--presence-penalty") && has) {
            if (parse_float(cmd, o, NEXT(), &a->s.presence_penalty)) return -1;
        } else if (!strcmp(o, "--frequency-penalty") && has) {
            if (parse_float(cmd, o, NEXT(), &a->s.frequency_penalty)) return -1;
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
    return check_sampling(cmd, &a->s);
}

/* The CLI's config: one sequence, prefill chunks of PREFILL_CHUNK, a KV pool of
 * n_ctx tokens; everything else (verification, backend, stop ids) is the
 * runtime's policy, the same as `serve`'s. A missing backend is an error here:
 * the CLI never falls back. */
static int open_runtime(const char *cmd, const struct run_args *a, int n_ctx, bool engine,
                        struct dsi_runtime **rt) {
    struct dsi_config c;
    char *err = NULL;
    const struct dsi_cli_model m = {.dir = a->dir, .backend = a->backend, .dtype = a->dtype,
                                    .group_size = a->group_size, .n_threads = a->n_threads,
                                    .no_verify = a->no_verify, .key_file = a->key_file,
                                    .kv_dtype = a->kv_dtype};
    int rc = dsi__cli_config_init(&c, &m, &err);
    if (rc) return fail(cmd, rc, err);
    c.kv_gpu_fraction = 0.5;
    c.max_queued = 1;
    c.prefill_chunk = PREFILL_CHUNK;
    c.max_batch_tokens = PREFILL_CHUNK;
    c.max_total_tokens = n_ctx;
    struct dsi_runtime_opts o = {.no_engine = !engine,
                                 .tokenizer_optional = !a->prompt,
                                 .kv_tokens = n_ctx,
                                 .no_timeouts = true};
    rc = dsi_runtime_open(&c, &o, rt, &err);
    dsi_config_free(&c);
    if (rc) return fail(cmd, rc, err);
    int max_pos = (*rt)->model.cfg.max_position_embeddings;
    if (!engine && n_ctx > max_pos) {
        fprintf(stderr, "dsinfer %s: %d tokens do not fit the model's context of %d (max_position_embeddings)\n",
                cmd, n_ctx, max_pos);
        dsi_runtime_close(*rt);
        *rt = NULL;
        return DSI_EXIT_FAIL;
    }
    return 0;
}

/* logits keeps a direct backend path: it needs the logits row of every prompt
 * position, and the engine hands out sampled tokens, not rows. */
int dsi_cmd_logits(int argc, char **argv) {
    struct run_args a = {.dtype = "f32"};
    dsi_sampling_defaults(&a.s);
    if (parse_args("logits", argc, argv, &a) || !a.ids) {
        if (!a.ids && a.dir)
            fprintf(stderr,
                    "usage: dsinfer logits --model DIR --ids 1,2,3 [--dtype f32|bf16|int8] [--group-size N] "
                    "[--kv-dtype auto|f32|bf16|int8] [--backend cpu|cuda] [--threads N] [--no-verify]\n");
        free(a.ids);
        return DSI_EXIT_USAGE;
    }
    struct dsi_runtime *rt = NULL;
    int rc = open_runtime("logits", &a, a.n_ids, false, &rt);
    if (rc) {
        free(a.ids);
        return rc;
    }
    struct dsi_backend *be = rt->be;
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
    dsi_runtime_close(rt);
    return status;
}

/* ---- generate: one request on the engine ---- */

/* What the engine's callback hands to the main thread (it must not block). */
struct gen_sink {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t *toks; /* text tokens, in order (the stop token is not one) */
    int n, cap;
    bool done;
    enum dsi_finish finish;
    int error;
    double t_first; /* when the first event came: the end of prefill */
};

static void gen_cb(void *user, const struct dsi_token_event *ev) {
    struct gen_sink *k = user;
    pthread_mutex_lock(&k->mu);
    if (k->t_first == 0) k->t_first = dsi_now_s();
    if (ev->token >= 0 && k->n < k->cap) k->toks[k->n++] = ev->token;
    if (ev->finished) {
        k->done = true;
        k->finish = ev->finish;
        k->error = ev->error;
    }
    pthread_cond_signal(&k->cv);
    pthread_mutex_unlock(&k->mu);
}

/* The prompt's ids: --ids as given, or --prompt encoded; --bos puts the BOS first. */
static int gen_prompt(struct run_args *a, const struct dsi_tokenizer *tok, char **err) {
    if (a->prompt) {
        int32_t *ids = NULL;
        size_t n = 0;
        int rc = dsi_tok_encode_prompt(tok, a->prompt, strlen(a->prompt), a->bos, &ids, &n, err);
        if (rc) return rc;
        free(a->ids);
        a->ids = ids;
        a->n_ids = (int)n;
    } else if (a->bos && tok && dsi_tok_bos(tok) >= 0) {
        int32_t *g = malloc(((size_t)a->n_ids + 1) * sizeof *g);
        if (!g) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
        g[0] = dsi_tok_bos(tok);
        memcpy(g + 1, a->ids, (size_t)a->n_ids * sizeof *g);
        free(a->ids);
        a->ids = g;
        a->n_ids++;
    }
    if (a->n_ids == 0) return dsi_seterr(err, DSI_EINVAL, "the prompt encodes to no tokens");
    return 0;
}

/* Submits the request and streams text as tokens arrive (unless --json). */
static int gen_run(const struct run_args *a, struct dsi_runtime *rt, int max_new, struct gen_sink *k,
                   char **err) {
    struct dsi_request_params p = {.prompt = a->ids, .n_prompt = a->n_ids, .max_tokens = max_new,
                                   .sampling = a->s};
    memcpy(p.stop_ids, rt->stop_ids, sizeof p.stop_ids);
    p.n_stop_ids = a->ignore_eos ? 0 : rt->n_stop_ids;
    struct dsi_tok_stream *ts = NULL;
    if (rt->tok && !a->json && dsi_tok_stream_create(rt->tok, true, &ts))
        return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    uint64_t id;
    int rc = dsi_engine_submit(rt->eng, &p, gen_cb, k, &id, err);
    for (int shown = 0; !rc;) {
        pthread_mutex_lock(&k->mu);
        while (!k->done && k->n == shown) pthread_cond_wait(&k->cv, &k->mu);
        int n = k->n;
        bool done = k->done;
        pthread_mutex_unlock(&k->mu);
        for (; ts && shown < n; shown++) { /* k->toks[0..n) no longer change */
            char *piece = NULL;
            size_t plen = 0;
            if (dsi_tok_stream_push(ts, k->toks[shown], &piece, &plen) == 0 && piece) {
                fwrite(piece, 1, plen, stdout);
                fflush(stdout);
            }
            free(piece);
        }
        shown = n;
        if (done) break;
    }
    if (!rc && k->finish == DSI_FINISH_ERROR)
        rc = dsi_seterr(err, k->error ? k->error : DSI_EINTERNAL, "generation failed: %s", dsi_strerror(k->error));
    if (ts) {
        char *piece = NULL;
        size_t plen = 0;
        if (!rc && dsi_tok_stream_flush(ts, &piece, &plen) == 0 && piece) fwrite(piece, 1, plen, stdout);
        free(piece);
        if (!rc) fputc('\n', stdout);
        dsi_tok_stream_destroy(ts);
    }
    return rc;
}

static void gen_print(const struct run_args *a, const struct dsi_tokenizer *tok, const struct gen_sink *k) {
    const char *finish = k->finish == DSI_FINISH_STOP ? "stop" : "length";
    if (a->json) {
        cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "ids");
        for (int i = 0; i < k->n; i++)
            cJSON_AddItemToArray(arr, cJSON_CreateNumber(k->toks[i]));
        char *text = NULL;
        size_t tlen = 0;
        if (tok && dsi_tok_decode(tok, k->toks, (size_t)k->n, true, &text, &tlen, NULL) == 0 && text)
            cJSON_AddStringToObject(o, "text", text);
        else
            cJSON_AddNullToObject(o, "text");
        free(text);
        cJSON_AddStringToObject(o, "finish_reason", finish);
        cJSON_AddNumberToObject(o, "prompt_tokens", a->n_ids);
        cJSON_AddNumberToObject(o, "completion_tokens", k->n);
        char *js = cJSON_PrintUnformatted(o);
        if (js) puts(js);
        free(js);
        cJSON_Delete(o);
    } else if (!tok) {
        for (int i = 0; i < k->n; i++)
            printf(i ? ",%d" : "%d", k->toks[i]);
        putchar('\n');
    }
}

int dsi_cmd_generate(int argc, char **argv) {
    struct run_args a = {.dtype = "bf16", .max_tokens = 64};
    dsi_sampling_defaults(&a.s);
    if (parse_args("generate", argc, argv, &a) || (!a.ids == !a.prompt)) {
        if (a.dir && !a.ids == !a.prompt)
            fprintf(stderr,
                    "usage: dsinfer generate --model DIR [--key-file K] (--prompt TEXT | --ids 1,2,3) [--max-tokens N] "
                    "[--temperature T] [--top-p P] [--top-k K] [--min-p P] [--seed S] "
                    "[--repetition-penalty R] [--presence-penalty P] [--frequency-penalty F] "
                    "[--dtype f32|bf16|int8] [--group-size N] [--backend cpu|cuda] [--bos] [--ignore-eos] "
                    "[--json] [--no-verify]\n");
        free(a.ids);
        return DSI_EXIT_USAGE;
    }
    /* Sized before the prompt is encoded: a byte-level BPE token covers at least
     * one byte of text, so bytes + BOS bound the prompt's tokens. */
    long bound = (a.prompt ? (long)strlen(a.prompt) + 1 : a.n_ids) + (long)a.max_tokens;
    struct dsi_model_config probe;
    if (dsi_model_config_load(a.dir, &probe, NULL) == 0 && bound > probe.max_position_embeddings)
        bound = probe.max_position_embeddings;
    struct dsi_runtime *rt = NULL;
    int rc = open_runtime("generate", &a, bound > 2 ? (int)bound : 2, true, &rt);
    if (rc) {
        free(a.ids);
        return rc;
    }
    char *err = NULL;
    struct gen_sink k = {.finish = DSI_FINISH_LENGTH};
    pthread_mutex_init(&k.mu, NULL);
    pthread_cond_init(&k.cv, NULL);
    int status = DSI_EXIT_OK;
    if ((rc = gen_prompt(&a, rt->tok, &err))) {
        status = fail("generate", rc, err);
        goto out;
    }
    /* max_tokens is clamped to what the context leaves */
    int room = rt->context_tokens - a.n_ids;
    int max_new = a.max_tokens < room ? a.max_tokens : room;
    if (room < 0) {
        fprintf(stderr, "dsinfer generate: %d tokens do not fit the model's context of %d\n", a.n_ids,
                rt->context_tokens);
        status = DSI_EXIT_FAIL;
        goto out;
    }
    k.cap = max_new > 0 ? max_new : 1;
    if (!(k.toks = malloc((size_t)k.cap * sizeof *k.toks))) {
        status = fail("generate", DSI_ENOMEM, NULL);
        goto out;
    }
    double t0 = dsi_now_s();
    if (max_new > 0 && (rc = gen_run(&a, rt, max_new, &k, &err))) {
        status = fail("generate", rc, err);
        goto out;
    }
    double t_end = dsi_now_s(), t_first = k.t_first > 0 ? k.t_first : t_end;
    if (max_new == 0 && !a.json && rt->tok) fputc('\n', stdout);
    gen_print(&a, rt->tok, &k);
    double pre = t_first - t0, dec = t_end - t_first;
    fprintf(stderr,
            "generate: prefill %d tokens in %.1f ms (%.0f tok/s), %d tokens in %.1f ms (%.1f tok/s decode)\n",
            a.n_ids, pre * 1e3, pre > 0 ? a.n_ids / pre : 0.0, k.n, dec * 1e3, dec > 0 ? k.n / dec : 0.0);
out:
    pthread_mutex_destroy(&k.mu);
    pthread_cond_destroy(&k.cv);
    free(k.toks);
    free(a.ids);
    dsi_runtime_close(rt);
    return status;
}

int dsi_cmd_quant_report(int argc, char **argv) {
    struct run_args a = {.dtype = "int8"};
    dsi_sampling_defaults(&a.s);
    if (parse_args("quant-report", argc, argv, &a)) {
        free(a.ids);
        return DSI_EXIT_USAGE;
    }
    a.dtype = "int8";
    struct dsi_runtime *rt = NULL;
    int rc = open_runtime("quant-report", &a, 16, false, &rt);
    free(a.ids);
    if (rc) return rc;
    struct dsi_backend *be = rt->be;
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
    dsi_runtime_close(rt);
    return status;
}
