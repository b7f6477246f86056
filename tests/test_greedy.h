/* test_greedy.h: the greedy-path helpers of the lossy-format tests (W8A8 weights,
 * int8 KV cache), which compare a format's greedy ids with a reference path's. */
#ifndef DSI_TEST_GREEDY_H
#define DSI_TEST_GREEDY_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "dsinfer/backend.h"

/* Argmax of l[0..V) (lowest id on ties), with the top-2 margin and the largest
 * |logit| (at least 1), so a caller can tell a near-tie from a real choice. */
static inline int greedy_of(const float *l, int V, float *margin, float *scale) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (l[i] > l[best]) best = i;
    float second = -INFINITY, mx = 1.0f;
    for (int i = 0; i < V; i++) {
        if (i != best && l[i] > second) second = l[i];
        if (fabsf(l[i]) > mx) mx = fabsf(l[i]);
    }
    *margin = l[best] - second;
    *scale = mx;
    return best;
}

/* One forward of sequence 1 over blocks 0..3: n tokens from pos, logits to out. */
static inline int step1(struct dsi_backend *be, const int32_t *toks, int n, int pos, float *out) {
    int32_t bt[4] = {0, 1, 2, 3};
    struct dsi_batch_seq sq = {
        .seq_id = 1, .tokens = toks, .n_tokens = n, .pos = pos, .block_table = bt, .n_blocks = 4, .want_logits = true};
    struct dsi_batch b = {.seqs = &sq, .n_seqs = 1};
    char *err = NULL;
    int rc = be->ops->forward(be, &b, out, &err);
    free(err);
    return rc;
}

#endif
