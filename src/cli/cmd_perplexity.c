/*
 * cmd_perplexity.c: `dsinfer perplexity --model DIR --text FILE [--dtype f32|bf16|int8]
 *                    [--group-size N] [--backend cpu|cuda] [--ctx N] [--max-tokens N] [--json]`
 *
 * Protocol (the same as scripts/demo/train_demo.py uses for HF transformers, so the
 * numbers compare): the text is encoded without BOS and cut into non-overlapping
 * windows of ctx tokens; each window starts from an empty KV cache and predicts its
 * tokens 1..n-1 from its own prefix; a last window of fewer than 2 tokens is dropped.
 * perplexity = exp(total NLL / tokens predicted), NLL from an fp32 log-softmax.
 *
 * Each window is fed one token per step, so any backend that implements forward()
 * (logits of the last new token) can be measured; --max-tokens bounds the work for
 * quick checks (tests). The model is assembled by dsi_runtime_open (src/runtime).
 * The steps go to the backend directly, not through a dsi_engine: the NLL needs the
 * whole distribution at every position (the log-probability of the text's next
 * token, not of a sampled one), and the engine hands out sampled tokens only.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dsinfer/backend.h"
#include "dsinfer/config.h"
#include "dsinfer/err.h"
#include "dsinfer/fileio.h"
#include "dsinfer/model.h"
#include "dsinfer/runtime.h"
#include "dsinfer/tok.h"

/* Held-out texts are megabytes; the bound keeps a wrong path from being read whole. */
#define MAX_TEXT_BYTES ((size_t)1 << 30)

struct ppl_args {
    const char *model, *text, *backend, *dtype, *int8_mode;
    int group_size, ctx, max_tokens, json, no_verify;
};

static int parse_args(int argc, char **argv, struct ppl_args *a);
static int open_runtime(const struct ppl_args *a, struct dsi_runtime **rt, char **err);
static double log_softmax_at(const float *logits, int vocab, int target);

static void usage(FILE *f) {
    fprintf(f, "usage: dsinfer perplexity --model DIR --text FILE [--dtype f32|bf16|int8] [--group-size N]\n"
               "                          [--int8-mode w8a16|w8a8] [--backend cpu|cuda] [--ctx N]\n"
               "                          [--max-tokens N] [--json] [--no-verify]\n");
}

int dsi_cmd_perplexity(int argc, char **argv) {
    struct ppl_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc != 0) return rc;

    char *err = NULL, *text = NULL;
    size_t text_len = 0, n_ids = 0;
    int32_t *ids = NULL;
    float *logits = NULL;
    struct dsi_runtime *rt = NULL;
    int status = DSI_EXIT_FAIL;

    if (dsi_read_file(a.text, MAX_TEXT_BYTES, &text, &text_len, &err) != 0) goto fail;
    if (open_runtime(&a, &rt, &err) != 0) goto fail;
    struct dsi_backend *be = rt->be;
    if (dsi_tok_encode(rt->tok, text, text_len, false, &ids, &n_ids, &err) != 0) goto fail;
    if (a.max_tokens > 0 && n_ids > (size_t)a.max_tokens) n_ids = (size_t)a.max_tokens;
    if (a.ctx > rt->model.cfg.max_position_embeddings) a.ctx = rt->model.cfg.max_position_embeddings;
    int n_blocks = (a.ctx + be->kv_block_size - 1) / be->kv_block_size;
    if (n_blocks > be->n_kv_blocks) {
        err = dsi_errf("KV pool of %d blocks cannot hold a %d-token window", be->n_kv_blocks, a.ctx);
        goto fail;
    }
    int32_t *table = malloc(sizeof *table * (size_t)n_blocks);
    logits = malloc(sizeof *logits * (size_t)be->vocab_size);
    if (!table || !logits) {
        free(table);
        err = dsi_errf("out of memory");
        goto fail;
    }
    for (int i = 0; i < n_blocks; i++) table[i] = i;

    double nll = 0;
    size_t predicted = 0;
    for (size_t s = 0; s + 1 < n_ids; s += (size_t)a.ctx) {
        size_t w = n_ids - s < (size_t)a.ctx ? n_ids - s : (size_t)a.ctx;
        if (w < 2) break;
        for (size_t p = 0; p + 1 < w; p++) {
            struct dsi_batch_seq seq = {
                .seq_id = 1,
                .tokens = &ids[s + p],
                .n_tokens = 1,
                .pos = (int)p,
                .block_table = table,
                .n_blocks = (int)(p / (size_t)be->kv_block_size) + 1,
                .want_logits = true,
            };
            struct dsi_batch b = {.seqs = &seq, .n_seqs = 1};
            if (be->ops->forward(be, &b, logits, &err) != 0) {
                free(table);
                goto fail;
            }
            nll -= log_softmax_at(logits, be->vocab_size, ids[s + p + 1]);
            predicted++;
        }
    }
    free(table);
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
    free(logits);
    free(ids);
    free(text);
    dsi_runtime_close(rt);
    return status;
}

/* One sequence fed one token per step: a pool of ctx tokens, no engine. */
static int open_runtime(const struct ppl_args *a, struct dsi_runtime **rt, char **err) {
    struct dsi_config c;
    const struct dsi_cli_model m = {.dir = a->model, .backend = a->backend, .dtype = a->dtype,
                                    .group_size = a->group_size, .no_verify = a->no_verify,
                                    .int8_mode = a->int8_mode};
    int rc = dsi__cli_config_init(&c, &m, err);
    if (rc) return rc;
    c.kv_gpu_fraction = 0.1;
    c.max_batch_tokens = 1;
    struct dsi_runtime_opts o = {.no_engine = true, .kv_tokens = a->ctx};
    rc = dsi_runtime_open(&c, &o, rt, err);
    dsi_config_free(&c);
    return rc;
}

/* log p(target) under softmax(logits), in double for a stable sum. */
static double log_softmax_at(const float *logits, int vocab, int target) {
    double mx = logits[0];
    for (int i = 1; i < vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int i = 0; i < vocab; i++) sum += exp((double)logits[i] - mx);
    return (double)logits[target] - mx - log(sum);
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
