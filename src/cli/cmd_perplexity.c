/*
 * cmd_perplexity.c: `dsinfer perplexity --model DIR --text FILE [--dtype f32|bf16|int8]
 *                    [--group-size N] [--int8-mode w8a16|w8a8] [--backend cpu|cuda]
 *                    [--kv-dtype auto|f32|bf16|int8] [--ctx N] [--max-tokens N] [--parallel N] [--json]`
 * (--kv-dtype: the config's kv_dtype, default auto: the backend's own, cpu f32,
 * cuda bf16; --kv-dtype bf16 makes the CPU's numbers comparable to the CUDA
 * backend's, --kv-dtype int8 measures the 8-bit cache)
 *
 * Protocol (the same as scripts/demo/train_demo.py uses for HF transformers, so the
 * numbers compare): the text is encoded without BOS and cut into non-overlapping
 * windows of ctx tokens; each window starts from an empty KV cache and predicts its
 * tokens 1..n-1 from its own prefix; a last window of fewer than 2 tokens is dropped.
 * perplexity = exp(total NLL / tokens predicted), NLL from an fp32 log-softmax.
 *
 * The model is assembled by dsi_runtime_open (src/runtime) and every window is a
 * scoring request on its dsi_engine (dsi_request_params.score: teacher-forced,
 * one event per position with the log-probability of the text's next token), so
 * perplexity runs the steps any request runs. --parallel windows are scored at
 * once (a batch of that many sequences); the per-position values are summed in
 * text order whatever order they arrive in. --max-tokens bounds the work for
 * quick checks (tests).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dsinfer/config.h"
#include "dsinfer/engine.h"
#include "dsinfer/err.h"
#include "dsinfer/fileio.h"
#include "dsinfer/model.h"
#include "dsinfer/runtime.h"
#include "dsinfer/tok.h"

/* Held-out texts are megabytes; the bound keeps a wrong path from being read whole. */
#define MAX_TEXT_BYTES ((size_t)1 << 30)

struct ppl_args {
    const char *model, *text, *backend, *dtype, *int8_mode, *kv_dtype;
    int group_size, ctx, max_tokens, parallel, json, no_verify;
};

/* What the engine's callbacks hand to the main thread (they must not block). */
struct ppl_sink {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    float *lp;     /* (n_ids) lp[i]: log p(ids[i + 1]) within i's window */
    int in_flight; /* windows submitted whose final event has not come */
    int error;     /* the first failed window's DSI_E*; 0: none */
};

struct ppl_window {
    struct ppl_sink *k;
    size_t start; /* text position of the window's first token */
    size_t next;  /* positions of it scored so far */
};

static int parse_args(int argc, char **argv, struct ppl_args *a);
static int open_runtime(const struct ppl_args *a, struct dsi_runtime **rt, char **err);
static int score_text(struct dsi_runtime *rt, const int32_t *ids, size_t n_ids, const struct ppl_args *a,
                      double *nll, size_t *predicted, char **err);

static void usage(FILE *f) {
    fprintf(f, "usage: dsinfer perplexity --model DIR --text FILE [--dtype f32|bf16|int8] [--group-size N]\n"
               "                          [--int8-mode w8a16|w8a8] [--backend cpu|cuda] [--kv-dtype auto|f32|bf16|int8]\n"
               "                          [--ctx N] [--max-tokens N] [--parallel N] [--json] [--no-verify]\n");
}

int dsi_cmd_perplexity(int argc, char **argv) {
    struct ppl_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc != 0) return rc;

    char *err = NULL, *text = NULL;
    size_t text_len = 0, n_ids = 0, predicted = 0;
    int32_t *ids = NULL;
    struct dsi_runtime *rt = NULL;
    int status = DSI_EXIT_FAIL;
    double nll = 0;

    if (dsi_read_file(a.text, MAX_TEXT_BYTES, &text, &text_len, &err) != 0) goto fail;
    if (open_runtime(&a, &rt, &err) != 0) goto fail;
    if (dsi_tok_encode(rt->tok, text, text_len, false, &ids, &n_ids, &err) != 0) goto fail;
    if (a.max_tokens > 0 && n_ids > (size_t)a.max_tokens) n_ids = (size_t)a.max_tokens;
    if (a.ctx > rt->context_tokens) a.ctx = rt->context_tokens; /* the model's max_position_embeddings */
    if (score_text(rt, ids, n_ids, &a, &nll, &predicted, &err) != 0) goto fail;
    if (predicted == 0) {
        err = dsi_errf("the text encodes to fewer than 2 tokens; nothing to predict");
        goto fail;
    }
    double ppl = exp(nll / (double)predicted);
    if (a.json)
        printf("{\"perplexity\": %.6f, \"tokens\": %zu, \"dtype\": \"%s\", \"group_size\": %d, "
               "\"int8_mode\": \"%s\", \"backend\": \"%s\", \"ctx\": %d}\n",
               ppl, predicted, a.dtype, a.group_size, a.int8_mode, a.backend, a.ctx);
    else
        printf("perplexity %.4f over %zu tokens (%s, %s, ctx %d)\n", ppl, predicted, a.dtype, a.backend, a.ctx);
    status = DSI_EXIT_OK;
    goto done;

fail:
    fprintf(stderr, "dsinfer perplexity: %s\n", err ? err : "failed");
done:
    free(err);
    free(ids);
    free(text);
    dsi_runtime_close(rt);
    return status;
}

/* --parallel sequences of up to ctx tokens, no timeouts: a CLI run. */
static int open_runtime(const struct ppl_args *a, struct dsi_runtime **rt, char **err) {
    struct dsi_config c;
    const struct dsi_cli_model m = {.dir = a->model, .backend = a->backend, .dtype = a->dtype,
                                    .group_size = a->group_size, .no_verify = a->no_verify,
                                    .int8_mode = a->int8_mode, .kv_dtype = a->kv_dtype};
    int rc = dsi__cli_config_init(&c, &m, err);
    if (rc) return rc;
    c.kv_gpu_fraction = 0.1;
    c.max_running = a->parallel;
    c.max_queued = a->parallel;
    c.max_batch_tokens = a->parallel; /* a scoring step feeds one token per window */
    c.max_prompt_tokens = a->ctx;
    c.max_total_tokens = a->ctx;
    struct dsi_runtime_opts o = {.kv_tokens = a->ctx, .no_timeouts = true};
    rc = dsi_runtime_open(&c, &o, rt, err);
    dsi_config_free(&c);
    return rc;
}

static void ppl_cb(void *user, const struct dsi_token_event *ev) {
    struct ppl_window *w = user;
    struct ppl_sink *k = w->k;
    pthread_mutex_lock(&k->mu);
    if (ev->token >= 0) k->lp[w->start + w->next++] = ev->logprob;
    if (ev->finished) {
        if (ev->finish != DSI_FINISH_LENGTH && !k->error) k->error = ev->error ? ev->error : DSI_EINTERNAL;
        k->in_flight--;
        pthread_cond_signal(&k->cv);
    }
    pthread_mutex_unlock(&k->mu);
}

/* Waits until at most max_in_flight windows are out (caller holds k->mu). */
static void wait_in_flight(struct ppl_sink *k, int max_in_flight) {
    while (k->in_flight > max_in_flight) pthread_cond_wait(&k->cv, &k->mu);
}

/* Scores every window of ids on rt's engine, --parallel at a time, and sums the
 * NLL in text order (the order of the old one-window-at-a-time loop). */
static int score_text(struct dsi_runtime *rt, const int32_t *ids, size_t n_ids, const struct ppl_args *a,
                      double *nll, size_t *predicted, char **err) {
    size_t ctx = (size_t)a->ctx, i = 0;
    struct ppl_sink k = {.lp = calloc(n_ids ? n_ids : 1, sizeof(float))};
    struct ppl_window *win = calloc(n_ids / ctx + 1, sizeof *win); /* every window, for its callback */
    int rc = k.lp && win ? 0 : dsi_seterr(err, DSI_ENOMEM, "out of memory");
    pthread_mutex_init(&k.mu, NULL);
    pthread_cond_init(&k.cv, NULL);
    for (size_t s = 0; s + 1 < n_ids && !rc; s += ctx, i++) {
        size_t w = n_ids - s < ctx ? n_ids - s : ctx;
        if (w < 2) break;
        win[i] = (struct ppl_window){.k = &k, .start = s};
        struct dsi_request_params p = {.prompt = ids + s, .n_prompt = (int)w, .score = true};
        dsi_sampling_defaults(&p.sampling);
        pthread_mutex_lock(&k.mu);
        wait_in_flight(&k, a->parallel - 1);
        bool failed = k.error != 0; /* reported below */
        if (!failed && !(rc = dsi_engine_submit(rt->eng, &p, ppl_cb, &win[i], NULL, err))) k.in_flight++;
        pthread_mutex_unlock(&k.mu);
        if (failed) break;
        if (!rc) *predicted += w - 1;
    }
    pthread_mutex_lock(&k.mu);
    wait_in_flight(&k, 0);
    if (!rc && k.error) rc = dsi_seterr(err, k.error, "scoring failed: %s", dsi_strerror(k.error));
    pthread_mutex_unlock(&k.mu);
    for (size_t j = 0; j < i && !rc; j++)
        for (size_t q = 0; q < win[j].next; q++) *nll -= (double)k.lp[win[j].start + q];
    pthread_cond_destroy(&k.cv);
    pthread_mutex_destroy(&k.mu);
    free(win);
    free(k.lp);
    return rc;
}

static int parse_int(const char *flag, const char *v, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || errno || *end || x < lo || x > hi) {
        fprintf(stderr, "dsinfer perplexity: %s needs an integer in [%d, %d]\n", flag, lo, hi);
        return DSI_EXIT_USAGE;
    }
    *out = (int)x;
    return 0;
}

static int parse_args(int argc, char **argv, struct ppl_args *a) {
    memset(a, 0, sizeof *a);
    a->backend = "cpu";
    a->dtype = "f32";
    a->int8_mode = "w8a16";
    a->ctx = 256;
    a->parallel = 1;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage(stdout);
            return DSI_EXIT_USAGE;
        } else if (!strcmp(f, "--json")) {
            a->json = 1;
            continue;
        } else if (!strcmp(f, "--no-verify")) {
            a->no_verify = 1;
            continue;
        } else if (!v) {
            fprintf(stderr, "dsinfer perplexity: %s needs a value\n", f);
            return DSI_EXIT_USAGE;
        } else if (!strcmp(f, "--model")) {
            a->model = v;
        } else if (!strcmp(f, "--text")) {
            a->text = v;
        } else if (!strcmp(f, "--backend")) {
            a->backend = v;
        } else if (!strcmp(f, "--dtype")) {
            enum dsi_weight_dtype d;
            if (dsi_runtime_parse_dtype(v, &d) || !v[0]) {
                fprintf(stderr, "dsinfer perplexity: --dtype must be f32, bf16 or int8\n");
                return DSI_EXIT_USAGE;
            }
            a->dtype = v;
        } else if (!strcmp(f, "--kv-dtype")) {
            enum dsi_kv_dtype k;
            if (dsi_runtime_parse_kv_dtype(v, NULL, &k)) {
                fprintf(stderr, "dsinfer perplexity: --kv-dtype must be auto, f32, bf16 or int8\n");
                return DSI_EXIT_USAGE;
            }
            a->kv_dtype = v;
        } else if (!strcmp(f, "--group-size")) {
            rc = parse_int(f, v, 0, 1 << 20, &a->group_size);
        } else if (!strcmp(f, "--int8-mode")) {
            if (strcmp(v, "w8a16") != 0 && strcmp(v, "w8a8") != 0) {
                fprintf(stderr, "dsinfer perplexity: --int8-mode must be w8a16 or w8a8\n");
                return DSI_EXIT_USAGE;
            }
            a->int8_mode = v;
        } else if (!strcmp(f, "--ctx")) {
            rc = parse_int(f, v, 2, 1 << 20, &a->ctx);
        } else if (!strcmp(f, "--max-tokens")) {
            rc = parse_int(f, v, 2, 1 << 30, &a->max_tokens);
        } else if (!strcmp(f, "--parallel")) {
            rc = parse_int(f, v, 1, 64, &a->parallel);
        } else {
            fprintf(stderr, "dsinfer perplexity: unknown option %s\n", f);
            usage(stderr);
            return DSI_EXIT_USAGE;
        }
        if (rc) return rc;
        i++;
    }
    if (!a->model || !a->text) {
        usage(stderr);
        return DSI_EXIT_USAGE;
    }
    return 0;
}
