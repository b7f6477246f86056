/*
 * kvcache.c: paged KV block manager (see include/dsinfer/kvcache.h).
 *
 * Layout: free ids live in free_stack[0..n_free); taking pops from the top and
 * releasing pushes back, so both are O(1) per block. in_use[] mirrors ownership
 * so a bug that releases a block twice is caught by an assert in debug builds
 * instead of silently handing one block to two sequences.
 */
#include "dsinfer/kvcache.h"

#include <assert.h>
#include <stdlib.h>

#include "dsinfer/err.h"

int dsi_kv_cache_init(struct dsi_kv_cache *kv, int n_blocks, int block_size, char **err) {
    kv->free_stack = NULL;
    kv->in_use = NULL;
    kv->n_blocks = kv->n_free = 0;
    kv->block_size = 0;
    if (n_blocks < 1 || block_size < 1)
        return dsi_seterr(err, DSI_EINVAL, "kv cache: need n_blocks >= 1 and block_size >= 1 (got %d, %d)",
                          n_blocks, block_size);
    kv->free_stack = malloc((size_t)n_blocks * sizeof(int32_t));
    kv->in_use = calloc((size_t)n_blocks, 1);
    if (!kv->free_stack || !kv->in_use) {
        dsi_kv_cache_free(kv);
        return dsi_seterr(err, DSI_ENOMEM, "kv cache: no memory for %d block ids", n_blocks);
    }
    /* Highest id at the bottom so the first blocks handed out are 0, 1, 2... */
    for (int i = 0; i < n_blocks; i++)
        kv->free_stack[i] = n_blocks - 1 - i;
    kv->n_blocks = kv->n_free = n_blocks;
    kv->block_size = block_size;
    return 0;
}

void dsi_kv_cache_free(struct dsi_kv_cache *kv) {
    if (!kv) return;
    free(kv->free_stack);
    free(kv->in_use);
    kv->free_stack = NULL;
    kv->in_use = NULL;
    kv->n_blocks = kv->n_free = 0;
}

int dsi_kv_blocks_for(const struct dsi_kv_cache *kv, int n_tokens) {
    if (n_tokens < 0) return -1;
    /* n_tokens + block_size - 1 could overflow near INT_MAX; divide first. */
    return n_tokens / kv->block_size + (n_tokens % kv->block_size != 0);
}

int dsi_kv_used(const struct dsi_kv_cache *kv) {
    return kv->n_blocks - kv->n_free;
}
int dsi_kv_free_count(const struct dsi_kv_cache *kv) {
    return kv->n_free;
}

int dsi_kv_seq_init(struct dsi_kv_seq *s, const struct dsi_kv_cache *kv, int max_tokens, char **err) {
    s->blocks = NULL;
    s->n_blocks = s->cap_blocks = 0;
    int need = dsi_kv_blocks_for(kv, max_tokens);
    if (need < 0 || need > kv->n_blocks)
        return dsi_seterr(err, DSI_ERANGE, "kv cache: %d tokens need %d blocks of %d tokens, pool has %d",
                          max_tokens, need, kv->block_size, kv->n_blocks);
    if (need == 0) need = 1; /* keep blocks non-NULL so callers need no special case */
    s->blocks = malloc((size_t)need * sizeof(int32_t));
    if (!s->blocks) return dsi_seterr(err, DSI_ENOMEM, "kv cache: no memory for a block table");
    s->cap_blocks = need;
    return 0;
}

void dsi_kv_seq_free(struct dsi_kv_seq *s) {
    if (!s) return;
    assert(s->n_blocks == 0);
    free(s->blocks);
    s->blocks = NULL;
    s->n_blocks = s->cap_blocks = 0;
}

int dsi_kv_seq_reserve(struct dsi_kv_cache *kv, struct dsi_kv_seq *s, int n_tokens) {
    int need = dsi_kv_blocks_for(kv, n_tokens);
    if (need < 0 || need > s->cap_blocks) return DSI_ERANGE;
    int add = need - s->n_blocks;
    if (add <= 0) return 0;
    if (add > kv->n_free) return DSI_EFULL;
    for (int i = 0; i < add; i++) {
        int32_t id = kv->free_stack[--kv->n_free];
        assert(!kv->in_use[id]);
        kv->in_use[id] = 1;
        s->blocks[s->n_blocks++] = id;
    }
    return 0;
}

void dsi_kv_seq_release(struct dsi_kv_cache *kv, struct dsi_kv_seq *s) {
    /* Push in reverse so the ids come back out in the order this sequence had them. */
    for (int i = s->n_blocks - 1; i >= 0; i--) {
        int32_t id = s->blocks[i];
        assert(id >= 0 && id < kv->n_blocks && kv->in_use[id]);
        assert(kv->n_free < kv->n_blocks);
        kv->in_use[id] = 0;
        kv->free_stack[kv->n_free++] = id;
    }
    s->n_blocks = 0;
}
