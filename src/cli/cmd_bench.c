/*
 * cmd_bench.c: `dsinfer bench`: engine-level throughput of a backend, no HTTP.
 *
 *   dsinfer bench --model DIR [--backend cpu|cuda] [--dtype f32,bf16,int8] [--batch 1,4,16,64]
 *                 [--context 128,2048] [--prefill 512] [--steps 32] [--warmup 2]
 *                 [--engine-prompt 32] [--repeat 1] [--fill prefill|none] [--peak-gbs X]
 *                 [--kv-dtype auto|f32|bf16|int8] [--threads N] [--no-verify] [--json] [--key-file K]
 *
 * For each weight dtype it opens the model through dsi_runtime_open (src/runtime:
 * the same verification, backend and engine set-up as serve and generate) and
 * measures three things:
 *   decode   B sequences whose KV already holds C tokens; after --warmup untimed
 *            steps, N timed steps of forward (one token per sequence) plus greedy
 *            sampling of every row, as the engine does it: through the backend's
 *            forward_sample when it has one (only ids cross to the host; then
 *            "fwd ms" is forward + sample together, "sample ms" 0, and the report
 *            says sample path "device"), else forward + dsi_sample on the host
 *            (path "host"). tok/s = B*N / time. Roofline share
 *            = bytes moved per step (weight_bytes + B * mean context * kv_bytes_per_token)
 *            / step time / peak bandwidth.
 *   prefill  one P-token prompt (chunks of max_batch_tokens) then one sample: prefill
 *            tok/s and time to first token (best of 1 + R runs; the extra one warms up).
 *   engine   B requests submitted at once to dsi_engine (continuous batching,
 *            greedy, prompt --engine-prompt tokens, N new tokens each): aggregate
 *            tok/s from first submit to last token, and mean time to first token.
 * --repeat R runs every decode and engine measurement R times and keeps the fastest:
 * on a shared machine other work only ever slows a run down.
 *
 * KV layout: sequence i owns blocks [i*nb, (i+1)*nb). With --fill prefill (default) the
 * first max(B) sequences are prefilled once per dtype to max(C) tokens of random ids
 * (untimed) and every (B, C) run reuses them, so attention reads real model K/V. With
 * --fill none the pool is read as it is (zeros on the CPU): same bytes, no setup time.
 * Peak bandwidth: --peak-gbs, else 4250 GB/s for cuda (H200 copy), else a memcpy
 * measured at start (all threads, counted as read + write bytes, best of 5).
 *
 * This file holds the options, the peak bandwidth choice and the table / JSON report;
 * cmd_bench_measure.c the measuring itself (the memcpy probe and every timed run).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "cmd_bench_internal.h"
#include "dsinfer/backend.h"
#include "dsinfer/err.h"
#include "dsinfer/model.h"

#define CUDA_PEAK_GBS 4250.0 /* DESIGN.md: H200 device copy, measured on the GPU machine */

static int parse_list(const char *opt, const char *v, int lo, int hi, int *out, int *n);
static int parse_int(const char *opt, const char *v, long lo, long hi, int *out);
static int parse_args(int argc, char **argv, struct bench_args *a);
static void print_table(const struct bench_args *a, const struct dsi_model_config *c, double peak,
                        const char *peak_src, const struct dtype_res *r, int n);
static int print_json(const struct bench_args *a, const struct dsi_model_config *c, double peak,
                      const char *peak_src, const struct dtype_res *r, int n);


static int parse_int(const char *opt, const char *v, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "dsinfer bench: %s wants an integer in %ld..%ld, got '%s'\n", opt, lo, hi, v);
        return -1;
    }
    *out = (int)x;
    return 0;
}

/* "1,4,16": up to MAX_LIST integers in lo..hi. */
static int parse_list(const char *opt, const char *v, int lo, int hi, int *out, int *n) {
    *n = 0;
    const char *p = v;
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < lo || x > hi || (*end && *end != ',') || *n == MAX_LIST) {
            fprintf(stderr, "dsinfer bench: %s wants up to %d comma-separated integers in %d..%d, got '%s'\n",
                    opt, MAX_LIST, lo, hi, v);
            return -1;
        }
        out[(*n)++] = (int)x;
        p = *end ? end + 1 : end;
    }
    if (*n == 0) {
        fprintf(stderr, "dsinfer bench: %s is empty\n", opt);
        return -1;
    }
    return 0;
}

static int parse_args(int argc, char **argv, struct bench_args *a) {
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--json")) {
            a->json = true;
            continue;
        }
        if (!strcmp(o, "--no-verify")) {
            a->no_verify = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "dsinfer bench: unexpected argument '%s' (or missing value)\n", o);
            return -1;
        }
        i++;
        if (!strcmp(o, "--model"))
            a->dir = v;
        else if (!strcmp(o, "--key-file"))
            a->key_file = v;
        else if (!strcmp(o, "--backend")) {
            if (strcmp(v, "cpu") && strcmp(v, "cuda")) {
                fprintf(stderr, "dsinfer bench: --backend wants cpu or cuda, got '%s'\n", v);
                return -1;
            }
            a->backend = v;
        } else if (!strcmp(o, "--dtype")) {
            a->n_dtypes = 0;
            char buf[64];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                enum dsi_weight_dtype d;
                if (dsi_runtime_parse_dtype(t, &d)) {
                    fprintf(stderr,
                            "dsinfer bench: --dtype wants f32, bf16 or int8 (comma-separated), got '%s'\n",
                            v);
                    return -1;
                }
                if (a->n_dtypes == 3) {
                    fprintf(stderr, "dsinfer bench: --dtype lists at most 3 dtypes\n");
                    return -1;
                }
                a->dtypes[a->n_dtypes++] = d;
            }
            if (!a->n_dtypes) {
                fprintf(stderr, "dsinfer bench: --dtype is empty\n");
                return -1;
            }
        } else if (!strcmp(o, "--kv-dtype")) {
            enum dsi_kv_dtype d;
            if (dsi_runtime_parse_kv_dtype(v, NULL, &d)) {
                fprintf(stderr, "dsinfer bench: --kv-dtype wants auto, f32, bf16 or int8, got '%s'\n", v);
                return -1;
            }
            a->kv_dtype = v;
        } else if (!strcmp(o, "--fill")) {
            if (strcmp(v, "prefill") && strcmp(v, "none")) {
                fprintf(stderr, "dsinfer bench: --fill wants prefill or none, got '%s'\n", v);
                return -1;
            }
            a->fill = !strcmp(v, "prefill");
        } else if (!strcmp(o, "--batch")) {
            if (parse_list(o, v, 1, 4096, a->batch, &a->n_batch)) return -1;
        } else if (!strcmp(o, "--context")) {
            if (parse_list(o, v, 0, 1 << 20, a->context, &a->n_context)) return -1;
        } else if (!strcmp(o, "--prefill")) {
            if (parse_int(o, v, 0, 1 << 20, &a->prefill)) return -1;
        } else if (!strcmp(o, "--steps")) {
            if (parse_int(o, v, 1, 1 << 20, &a->steps)) return -1;
        } else if (!strcmp(o, "--warmup")) {
            if (parse_int(o, v, 0, 1024, &a->warmup)) return -1;
        } else if (!strcmp(o, "--engine-prompt")) {
            if (parse_int(o, v, 0, 1 << 20, &a->engine_prompt)) return -1;
        } else if (!strcmp(o, "--repeat")) {
            if (parse_int(o, v, 1, 100, &a->repeat)) return -1;
        } else if (!strcmp(o, "--threads")) {
            if (parse_int(o, v, 1, 1024, &a->n_threads)) return -1;
        } else if (!strcmp(o, "--peak-gbs")) {
            char *end;
            errno = 0;
            a->peak_gbs = strtod(v, &end);
            if (errno || end == v || *end || !(a->peak_gbs > 0 && a->peak_gbs < 1e6)) {
                fprintf(stderr, "dsinfer bench: --peak-gbs wants a positive number of GB/s, got '%s'\n", v);
                return -1;
            }
        } else {
            fprintf(stderr, "dsinfer bench: unexpected argument '%s'\n", o);
            return -1;
        }
    }
    if (!a->dir) {
        fprintf(stderr,
                "usage: dsinfer bench --model DIR [--backend cpu|cuda] [--dtype f32,bf16,int8] "
                "[--batch 1,4,16,64] [--context 128,2048] [--prefill 512] [--steps N] [--warmup N] "
                "[--engine-prompt N] [--repeat R] [--fill prefill|none] [--peak-gbs X] [--kv-dtype auto|f32|bf16|int8] "
                "[--threads N] [--no-verify] [--json] [--key-file K (encrypted model)]\n");
        return -1;
    }
    return 0;
}

static void print_table(const struct bench_args *a, const struct dsi_model_config *c, double peak,
                        const char *peak_src, const struct dtype_res *r, int n) {
    printf("dsinfer bench: %s (%s, hidden %d, %d layers, %d/%d heads, vocab %d), backend %s\n", a->dir,
           c->architecture, c->hidden_size, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size,
           a->backend);
    printf(
        "peak bandwidth %.1f GB/s (%s); roofline = (weights + B x context x KV/token) / step time / peak\n",
        peak, peak_src);
    for (int i = 0; i < n; i++) {
        const struct dtype_res *d = &r[i];
        printf("\n== %s weights: %.1f MB, KV %zu B/token, %d KV blocks; setup prefill %.2f s\n",
               dsi_runtime_dtype_name(d->dtype), d->weight_bytes / 1e6, d->kv_bytes_per_token, d->n_kv_blocks,
               d->fill_s);
        if (d->n_dec) {
            printf("decode (%d timed steps after %d warm-up, fastest of %d; %s)\n", a->steps, a->warmup,
                   a->repeat,
                   d->device_sample ? "sample path device: forward_sample, greedy in the backend, fwd ms "
                                      "includes it"
                                    : "sample path host: forward + greedy dsi_sample on the host");
            printf("%6s %8s %11s %9s %10s %10s %10s %8s %9s\n", "batch", "context", "tok/s", "ms/step",
                   "fwd ms", "sample ms", "MB/step", "GB/s", "roofline");
            for (int k = 0; k < d->n_dec; k++) {
                const struct decode_res *x = &d->dec[k];
                printf("%6d %8d %11.1f %9.3f %10.3f %10.3f %10.2f %8.2f %8.1f%%\n", x->batch, x->context,
                       x->tok_s, x->ms_step, x->ms_forward, x->ms_sample, x->bytes_step / 1e6, x->gbs,
                       x->roofline * 100);
            }
        }
        if (d->have_prefill)
            printf("prefill %d tokens: %.1f tok/s (%.2f ms); time to first token %.2f ms\n", a->prefill,
                   d->pre_tok_s, d->pre_ms, d->ttft_ms);
        if (d->n_eng) {
            printf("engine (continuous batching; prompt %d, %d new tokens each, greedy)\n", a->engine_prompt,
                   a->steps);
            printf("%8s %8s %9s %11s %13s %9s\n", "streams", "tokens", "wall s", "tok/s", "mean TTFT ms",
                   "x vs 1st");
            for (int k = 0; k < d->n_eng; k++) {
                const struct engine_res *x = &d->eng[k];
                printf("%8d %8d %9.3f %11.1f %13.2f %9.2f\n", x->streams, x->tokens, x->wall_s, x->tok_s,
                       x->ttft_ms, d->eng[0].tok_s > 0 ? x->tok_s / d->eng[0].tok_s : 0);
            }
        }
    }
}

static int print_json(const struct bench_args *a, const struct dsi_model_config *c, double peak,
                      const char *peak_src, const struct dtype_res *r, int n) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return DSI_ENOMEM;
    cJSON_AddStringToObject(o, "model", a->dir);
    cJSON_AddStringToObject(o, "architecture", c->architecture);
    cJSON_AddStringToObject(o, "backend", a->backend);
    cJSON_AddNumberToObject(o, "peak_gbs", peak);
    cJSON_AddStringToObject(o, "peak_source", peak_src);
    cJSON_AddNumberToObject(o, "steps", a->steps);
    cJSON_AddNumberToObject(o, "warmup", a->warmup);
    cJSON_AddNumberToObject(o, "repeat", a->repeat);
    cJSON_AddNumberToObject(o, "prefill_tokens", a->prefill);
    cJSON_AddNumberToObject(o, "engine_prompt_tokens", a->engine_prompt);
    cJSON *sk = cJSON_AddArrayToObject(o, "skipped_contexts");
    for (int i = 0; i < a->n_context; i++)
        if (a->context[i] + a->warmup + a->steps > c->max_position_embeddings)
            cJSON_AddItemToArray(sk, cJSON_CreateNumber(a->context[i]));
    cJSON *runs = cJSON_AddArrayToObject(o, "runs");
    for (int i = 0; i < n; i++) {
        const struct dtype_res *d = &r[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddItemToArray(runs, x);
        cJSON_AddStringToObject(x, "dtype", dsi_runtime_dtype_name(d->dtype));
        cJSON_AddNumberToObject(x, "weight_bytes", (double)d->weight_bytes);
        cJSON_AddNumberToObject(x, "kv_bytes_per_token", (double)d->kv_bytes_per_token);
        cJSON_AddNumberToObject(x, "setup_prefill_s", d->fill_s);
        /* "device": decode and engine sampled in the backend (ms_forward = forward + sample) */
        cJSON_AddStringToObject(x, "sample_path", d->device_sample ? "device" : "host");
        cJSON *dec = cJSON_AddArrayToObject(x, "decode");
        for (int k = 0; k < d->n_dec; k++) {
            const struct decode_res *y = &d->dec[k];
            cJSON *e = cJSON_CreateObject();
            cJSON_AddItemToArray(dec, e);
            cJSON_AddNumberToObject(e, "batch", y->batch);
            cJSON_AddNumberToObject(e, "context", y->context);
            cJSON_AddNumberToObject(e, "tok_s", y->tok_s);
            cJSON_AddNumberToObject(e, "ms_per_step", y->ms_step);
            cJSON_AddNumberToObject(e, "ms_forward", y->ms_forward);
            cJSON_AddNumberToObject(e, "ms_sample", y->ms_sample);
            cJSON_AddNumberToObject(e, "bytes_per_step", y->bytes_step);
            cJSON_AddNumberToObject(e, "gbs", y->gbs);
            cJSON_AddNumberToObject(e, "roofline", y->roofline);
        }
        if (d->have_prefill) {
            cJSON *p = cJSON_AddObjectToObject(x, "prefill");
            cJSON_AddNumberToObject(p, "tokens", a->prefill);
            cJSON_AddNumberToObject(p, "tok_s", d->pre_tok_s);
            cJSON_AddNumberToObject(p, "ms", d->pre_ms);
            cJSON_AddNumberToObject(p, "ttft_ms", d->ttft_ms);
        } else {
            cJSON_AddNullToObject(x, "prefill");
        }
        cJSON *eng = cJSON_AddArrayToObject(x, "engine");
        for (int k = 0; k < d->n_eng; k++) {
            const struct engine_res *y = &d->eng[k];
            cJSON *e = cJSON_CreateObject();
            cJSON_AddItemToArray(eng, e);
            cJSON_AddNumberToObject(e, "streams", y->streams);
            cJSON_AddNumberToObject(e, "tokens", y->tokens);
            cJSON_AddNumberToObject(e, "wall_s", y->wall_s);
            cJSON_AddNumberToObject(e, "tok_s", y->tok_s);
            cJSON_AddNumberToObject(e, "ttft_ms_mean", y->ttft_ms);
        }
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) return DSI_ENOMEM;
    puts(s);
    free(s);
    return 0;
}

int dsi_cmd_bench(int argc, char **argv) {
    struct bench_args a = {.backend = "cpu",
                           .dtypes = {DSI_W_BF16},
                           .n_dtypes = 1,
                           .batch = {1, 4, 16, 64},
                           .n_batch = 4,
                           .context = {128, 2048},
                           .n_context = 2,
                           .prefill = 512,
                           .steps = 32,
                           .warmup = 2,
                           .engine_prompt = 32,
                           .repeat = 1,
                           .fill = true};
    if (parse_args(argc, argv, &a)) return DSI_EXIT_USAGE;
    char *err = NULL;
    /* The sizes are planned for the positions config.json gives; an encrypted one
     * is read only when the runtime opens the model, which plans again. */
    struct dsi_model_config cfg;
    int max_pos_hint = dsi_model_config_load(a.dir, &cfg, NULL) == 0 ? cfg.max_position_embeddings : INT_MAX;
    int rc, fits = 0;
    for (int i = 0; i < a.n_context; i++) fits += a.context[i] + a.warmup + a.steps <= max_pos_hint;
    if (!fits) { /* known before anything is loaded (the runtime checks again) */
        fprintf(stderr, "dsinfer bench: no --context fits the model's %d positions\n", max_pos_hint);
        return DSI_EXIT_FAIL;
    }
    double peak = a.peak_gbs;
    const char *peak_src = "given with --peak-gbs";
    if (!(peak > 0) && !strcmp(a.backend, "cuda")) {
        peak = CUDA_PEAK_GBS;
        peak_src = "H200 device copy from DESIGN.md; --peak-gbs to change";
    } else if (!(peak > 0)) {
        long np = sysconf(_SC_NPROCESSORS_ONLN);
        int th = a.n_threads > 0 ? a.n_threads : np > 0 ? (int)np : 1;
        peak = dsi__bench_measure_peak_gbs(th);
        peak_src = "memcpy measured at start, read + write bytes";
    }
    struct dtype_res *res = calloc((size_t)a.n_dtypes, sizeof *res);
    if (!res) {
        fprintf(stderr, "dsinfer bench: out of memory\n");
        return DSI_EXIT_FAIL;
    }
    int n = 0, status = DSI_EXIT_OK;
    for (int i = 0; i < a.n_dtypes; i++) {
        if ((rc = dsi__bench_run_dtype(&a, a.dtypes[i], max_pos_hint, peak, &res[n], &cfg, &err))) {
            fprintf(stderr, "dsinfer bench: %s: %s\n", dsi_runtime_dtype_name(a.dtypes[i]),
                    err ? err : dsi_strerror(rc));
            free(err);
            err = NULL;
            status = DSI_EXIT_FAIL;
            break;
        }
        n++;
    }
    if (status == DSI_EXIT_OK) {
        for (int i = 0; i < a.n_context; i++)
            if (a.context[i] + a.warmup + a.steps > cfg.max_position_embeddings)
                fprintf(stderr, "dsinfer bench: skipped context %d: with %d steps it passes the model's %d positions\n",
                        a.context[i], a.warmup + a.steps, cfg.max_position_embeddings);
        if (a.json) {
            if (print_json(&a, &cfg, peak, peak_src, res, n)) {
                fprintf(stderr, "dsinfer bench: out of memory\n");
                status = DSI_EXIT_FAIL;
            }
        } else {
            print_table(&a, &cfg, peak, peak_src, res, n);
        }
    }
    free(res);
    return status;
}
