/*
 * kvcache.h: the paged KV block manager of the engine.
 *
 * The backend owns the storage of n_blocks blocks of block_size token slots
 * (struct dsi_backend: n_kv_blocks, kv_block_size); this module only decides
 * which block ids belong to which sequence. Free ids sit on a stack, so taking
 * and returning a block is O(1) and nothing is allocated per token: a sequence's
 * block table (struct dsi_kv_seq) is allocated once, at admission, sized for the
 * most tokens that sequence may ever hold, and grows a block at a time inside it.
 *
 * Invariants: every id in [0, n_blocks) is either on the free stack or in exactly
 * one sequence's table; n_free + sum(seq n_blocks) == n_blocks. Not thread-safe:
 * the engine's scheduler thread is the only user.
 *
 * Owner: src/engine.
 */
#ifndef DSINFER_KVCACHE_H
#define DSINFER_KVCACHE_H

#include <stdbool.h>
#include <stdint.h>

struct dsi_kv_cache {
    int block_size;      /* tokens per block */
    int n_blocks;        /* size of the pool */
    int n_free;          /* ids on the free stack */
    int32_t *free_stack; /* (n_blocks) free ids in [0, n_free) */
    uint8_t *in_use;     /* (n_blocks) 1 while a sequence holds the id: catches double frees */
};

struct dsi_kv_seq {
    int32_t *blocks; /* (cap_blocks) ids covering positions 0..n_blocks*block_size-1 */
    int n_blocks;    /* ids held */
    int cap_blocks;  /* table capacity, fixed at init */
};

/* Caller-owned struct; allocates the free stack (all ids free). Returns 0,
 * DSI_EINVAL (n_blocks or block_size < 1) or DSI_ENOMEM. */
int dsi_kv_cache_init(struct dsi_kv_cache *kv, int n_blocks, int block_size, char **err);
/* Frees the stack; accepts a zeroed or already freed struct. */
void dsi_kv_cache_free(struct dsi_kv_cache *kv);

/* Blocks needed for n_tokens positions (ceil); -1 if n_tokens < 0. */
int dsi_kv_blocks_for(const struct dsi_kv_cache *kv, int n_tokens);
int dsi_kv_used(const struct dsi_kv_cache *kv);
int dsi_kv_free_count(const struct dsi_kv_cache *kv);

/* Allocates a table able to hold max_tokens positions (no blocks taken yet).
 * Returns 0, DSI_ERANGE (needs more blocks than the pool) or DSI_ENOMEM. */
int dsi_kv_seq_init(struct dsi_kv_seq *s, const struct dsi_kv_cache *kv, int max_tokens, char **err);
/* Frees the table; the blocks must have been released first. Accepts NULL tables. */
void dsi_kv_seq_free(struct dsi_kv_seq *s);

/* Grows s so its blocks cover positions 0..n_tokens-1. All or nothing: returns 0,
 * DSI_EFULL when the pool has too few free blocks (s unchanged), or DSI_ERANGE when
 * n_tokens is beyond the table's capacity. */
int dsi_kv_seq_reserve(struct dsi_kv_cache *kv, struct dsi_kv_seq *s, int n_tokens);
/* Returns every block of s to the pool (s->n_blocks becomes 0). */
void dsi_kv_seq_release(struct dsi_kv_cache *kv, struct dsi_kv_seq *s);

#endif
