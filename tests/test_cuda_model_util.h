/*
 * test_cuda_model_util.h: what the model-level CUDA tests (test_cuda_backend,
 * test_cuda_deepseek_model) share: their prompts, the logits comparisons, the
 * backend options both backends are created with, and one forward step of one
 * sequence. Kernel-level helpers are in test_cuda_util.h.
 */
#ifndef DSI_TEST_CUDA_MODEL_UTIL_H
#define DSI_TEST_CUDA_MODEL_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/backend.h"

#define MAX_PROMPT 64 /* longest prompt make_prompt writes is 40 */
#define GEN 12        /* greedy steps compared after each prompt */
#define BS 16         /* KV block size of every backend created here */

/* Three short prompts of in-vocabulary ids, fixed per vocab size. */
static inline int make_prompt(int which, int vocab, int32_t *ids) {
    int n = which == 0 ? 5 : which == 1 ? 17 : 40;
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)((i * 37 + which * 101 + 7) % vocab);
    return n;
}

static inline int argmax(const float *x, int n, float *margin) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    float second = -INFINITY;
    for (int i = 0; i < n; i++)
        if (i != best && x[i] > second) second = x[i];
    if (margin) *margin = x[best] - second;
    return best;
}

/* max(1, max |x|): the scale the logits errors are relative to */
static inline double max_abs(const float *x, int n) {
    double m = 1;
    for (int i = 0; i < n; i++)
        m = fmax(m, fabs(x[i]));
    return m;
}

/* max |a - ref| relative to max(1, max |ref|) */
static inline double rel_err(const float *a, const float *ref, int n) {
    double worst = 0;
    for (int i = 0; i < n; i++)
        worst = fmax(worst, fabs(a[i] - ref[i]));
    return worst / max_abs(ref, n);
}

static inline void opts_for(struct dsi_backend_opts *o, enum dsi_weight_dtype dt, int group) {
    memset(o, 0, sizeof *o);
    o->weight_dtype = dt;
    o->int8_group_size = dt == DSI_W_INT8 ? group : 0;
    o->kv_dtype = DSI_KV_BF16;
    o->kv_block_size = BS;
    o->kv_bytes = 16u << 20;
    o->kv_gpu_fraction = 0.02f;
    o->max_batch_tokens = 256;
    o->max_seqs = 8;
    o->n_threads = 2;
}

/* Runs one step of one sequence whose blocks are bt[0..]. */
static inline int step(struct dsi_backend *be, const int32_t *toks, int n, int pos, const int32_t *bt,
                float *logits) {
    struct dsi_batch_seq s = {.seq_id = 1,
                              .tokens = toks,
                              .n_tokens = n,
                              .pos = pos,
                              .block_table = bt,
                              .n_blocks = (pos + n + BS - 1) / BS,
                              .want_logits = true};
    struct dsi_batch b = {.seqs = &s, .n_seqs = 1};
    char *err = NULL;
    int rc = be->ops->forward(be, &b, logits, &err);
    if (rc) fprintf(stderr, "  forward: %s\n", err ? err : "?");
    free(err);
    return rc;
}

/* Greedy run on both backends, logits compared at every step. */
/* ||a - ref||_2 / ||ref||_2 */

#endif
