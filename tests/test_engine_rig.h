/* test_engine_rig.h: the demo model on the CPU backend with its tokenizer, a
 * token trie and an engine: what the grammar-constrained engine tests drive. */
#ifndef DSI_TEST_ENGINE_RIG_H
#define DSI_TEST_ENGINE_RIG_H

#include <stdio.h>
#include <stdlib.h>

#include "dsinfer/backend.h"
#include "dsinfer/engine.h"
#include "dsinfer/grammar.h"
#include "dsinfer/model.h"
#include "dsinfer/tok.h"

struct rig {
    struct dsi_model m;
    struct dsi_backend *be;
    struct dsi_tokenizer *tok;
    struct dsi_token_trie *trie;
    struct dsi_engine *e;
};

/* Opens dir with f32 weights and KV (kv_mib of cache, 16-token blocks, one
 * thread) and an engine of max_seqs sequences, max_batch_tokens a step and
 * max_total_tokens in flight. 0, or nonzero with the reason on stderr. */
static inline int rig_open(struct rig *g, const char *dir, int kv_mib, int max_seqs, int max_batch_tokens,
                           int max_total_tokens) {
    char *err = NULL;
    struct dsi_model_open_opts mo = {0};
    int rc = dsi_model_open(&g->m, dir, &mo, &err);
    if (!rc) {
        struct dsi_backend_opts o = {.weight_dtype = DSI_W_F32, .kv_dtype = DSI_KV_F32, .kv_block_size = 16,
                                     .kv_bytes = (size_t)kv_mib << 20, .max_batch_tokens = max_batch_tokens,
                                     .max_seqs = max_seqs, .n_threads = 1};
        rc = dsi_backend_create("cpu", &g->m, &o, &g->be, &err);
    }
    if (!rc) rc = dsi_tok_load(dir, &g->tok, &err);
    if (!rc) rc = dsi_token_trie_create(g->tok, &g->trie, &err);
    if (!rc) {
        struct dsi_engine_opts eo;
        dsi_engine_opts_defaults(&eo);
        eo.max_running = max_seqs;
        eo.max_batch_tokens = max_batch_tokens;
        eo.max_total_tokens = max_total_tokens;
        rc = dsi_engine_create(g->be, &eo, &g->e, &err);
    }
    if (rc) fprintf(stderr, "  rig: %s\n", err ? err : "?");
    free(err);
    return rc;
}

static inline void rig_close(struct rig *g) {
    dsi_engine_destroy(g->e);
    dsi_token_trie_destroy(g->trie);
    dsi_tok_free(g->tok);
    dsi_backend_destroy(g->be);
    dsi_model_close(&g->m);
}

#endif
