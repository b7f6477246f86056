/*
 * constrain.c: grammar-constrained sampling for the engine (engine.h,
 * dsi_request_params.grammar).
 *
 * Each request with a grammar owns a matcher (its position in the grammar) and a
 * mask buffer, both allocated at submit. Before its token is sampled, the logits of
 * every token the grammar does not allow are set to -INFINITY, so every sampler
 * setting (greedy, top-k/p, min-p, penalties) picks among allowed tokens only;
 * the stop ids (end of sequence) keep their logits only once the JSON value is
 * complete. After sampling, the token's bytes advance the matcher. The matcher
 * state lives with the request, so preemption and recompute do not touch it (they
 * resample nothing).
 */
#include <math.h>
#include <stdlib.h>

#include "dsinfer/err.h"
#include "dsinfer/grammar.h"
#include "engine_internal.h"

#define MASK_CACHE_ENTRIES 16

int dsi__engine_grammar_init(struct dsi__req *r, const struct dsi_request_params *p, int vocab) {
    if (!p->grammar) return 0;
    if (!p->grammar_trie || vocab <= 0) return DSI_EINVAL;
    r->gmask = malloc(((size_t)vocab + 31) / 32 * sizeof *r->gmask);
    if (!r->gmask) return DSI_ENOMEM;
    int rc = dsi_grammar_matcher_create(p->grammar, MASK_CACHE_ENTRIES, &r->gm);
    if (rc) {
        free(r->gmask);
        r->gmask = NULL;
        return rc;
    }
    r->gtrie = p->grammar_trie;
    return 0;
}

void dsi__engine_grammar_free(struct dsi__req *r) {
    dsi_grammar_matcher_destroy(r->gm);
    r->gm = NULL;
    free(r->gmask);
    r->gmask = NULL;
}

int dsi__engine_grammar_mask(struct dsi__req *r, float *logits, int vocab) {
    float keep[DSI_MAX_STOP_IDS];
    bool complete = dsi_grammar_matcher_complete(r->gm);
    for (int i = 0; i < r->n_stop_ids; i++)
        keep[i] = r->stop_ids[i] >= 0 && r->stop_ids[i] < vocab ? logits[r->stop_ids[i]] : -INFINITY;
    int allowed = dsi_grammar_mask(r->gm, r->gtrie, r->gmask, vocab);
    for (int w = 0; w < (vocab + 31) / 32; w++) {
        uint32_t bits = r->gmask[w];
        if (bits == UINT32_MAX) continue;
        int end = w * 32 + 32 < vocab ? w * 32 + 32 : vocab;
        for (int i = w * 32; i < end; i++)
            if (!(bits >> (i - w * 32) & 1)) logits[i] = -INFINITY;
    }
    if (complete)
        for (int i = 0; i < r->n_stop_ids; i++)
            if (r->stop_ids[i] >= 0 && r->stop_ids[i] < vocab && keep[i] != -INFINITY) {
                logits[r->stop_ids[i]] = keep[i];
                allowed++;
            }
    return allowed;
}

int dsi__engine_grammar_advance(struct dsi__req *r, int32_t tok) {
    return dsi_grammar_matcher_accept_token(r->gm, r->gtrie, tok);
}
