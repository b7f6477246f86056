/*
 * cmd_bench_internal.h: what the two halves of `dsinfer bench` share: cmd_bench.c
 * (options, peak bandwidth choice, table and JSON report) and cmd_bench_measure.c
 * (the memcpy probe and the decode, prefill and engine runs). Private to src/cli/.
 */
#ifndef DSI_CLI_CMD_BENCH_INTERNAL_H
#define DSI_CLI_CMD_BENCH_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "dsinfer/backend.h"
#include "dsinfer/model.h"
#include "dsinfer/runtime.h"

#define MAX_LIST 16

struct bench_args {
    const char *dir, *backend, *key_file;
    enum dsi_weight_dtype dtypes[3];
    int n_dtypes;
    int batch[MAX_LIST], n_batch, context[MAX_LIST], n_context;
    int prefill, steps, warmup, engine_prompt, n_threads, repeat;
    bool fill, no_verify, json;
    const char *kv_dtype; /* NULL: auto (the backend's) */
    double peak_gbs;
};

struct decode_res {
    int batch, context, steps;
    double tok_s, ms_step, ms_forward, ms_sample, bytes_step, gbs, roofline;
};

struct engine_res {
    int streams, tokens, errors;
    double wall_s, tok_s, ttft_ms;
};

struct dtype_res {
    enum dsi_weight_dtype dtype;
    size_t weight_bytes, kv_bytes_per_token;
    int n_kv_blocks;
    double fill_s;
    bool device_sample; /* the backend has forward_sample: decode and engine sample there */
    struct decode_res dec[MAX_LIST * MAX_LIST];
    int n_dec;
    bool have_prefill;
    double pre_tok_s, pre_ms, ttft_ms;
    struct engine_res eng[MAX_LIST];
    int n_eng;
};

/* Best of 5 multi-threaded memcpys: host GB/s, read + write bytes; 0 when memory is short. */
double dsi__bench_measure_peak_gbs(int n_threads);

/* One weight dtype: its runtime opened by dsi_runtime_open (sizes planned for
 * max_pos_hint positions, INT_MAX when unknown, then for the model's own),
 * decode grid, prefill, engine; runtime closed. *cfg: the model's config, for
 * the report. DSI_ERANGE when no --context fits the model. */
int dsi__bench_run_dtype(const struct bench_args *a, enum dsi_weight_dtype dt, int max_pos_hint, double peak_gbs,
                         struct dtype_res *r, struct dsi_model_config *cfg, char **err);

#endif
