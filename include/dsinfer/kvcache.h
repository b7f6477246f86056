/*
 * kvcache.h: the paged KV block manager of the engine, with automatic prefix
 * caching.
 *
 * The backend owns the storage of n_blocks blocks of block_size token slots
 * (struct dsi_backend: n_kv_blocks, kv_block_size); this module only decides
 * which block ids belong to which sequence. Nothing is allocated per token: a
 * sequence's block table (struct dsi_kv_seq) is allocated once, at admission,
 * sized for the most tokens that sequence may ever hold.
 *
 * Prefix cache (dsi_kv_prefix_enable): a block whose block_size positions are
 * all computed can be published (dsi_kv_seq_commit). It is then keyed by its
 * tokens and its parent: the block before it, or for a sequence's first block
 * the 128-bit namespace the caller chose (model, cache group, salt). A later
 * sequence with the same namespace and the same leading tokens maps those
 * blocks by reference (dsi_kv_seq_match) and computes only the rest. Only full
 * blocks are ever shared, and a full block is never written again, so there is
 * no copy-on-write: a sequence whose prompt ends inside a block recomputes that
 * partial block into a private one. Lookups compare the stored tokens and the
 * parent's (id, generation), never the hash alone, so a hash collision cannot
 * map the wrong K/V. A published block with no holder stays in the cache on an
 * LRU list and is reused (evicted, its generation bumped) only when the pool
 * has no never-published block left.
 *
 * Invariants (dsi_kv_check verifies them): every id is in exactly one of
 * three states: free (ref 0, unpublished, on the free stack), idle (ref 0,
 * published, on the LRU list) or held (ref >= 1: the number of sequence tables
 * that list it). n_free + n_idle + held == n_blocks. Not thread-safe: the
 * engine's scheduler thread is the only user.
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
    int32_t *ref;        /* (n_blocks) sequence tables holding the id */
    /* Prefix cache; all NULL/0 while disabled. */
    bool prefix;         /* dsi_kv_prefix_enable succeeded */
    uint64_t hash_key;   /* mixes every hash: bucket spread is not predictable from outside */
    uint64_t format;     /* what besides the tokens decides a block's K/V (the backend's
                          * kv dtype and layout): in every block's key */
    int n_idle;          /* published blocks with ref 0, on the LRU list */
    int n_published;     /* blocks in the hash table (held or idle) */
    uint64_t evictions;  /* idle blocks taken back for new content */
    uint64_t *hash;      /* (n_blocks) chain hash of a published block */
    uint64_t *link;      /* (n_blocks, 2) parent (id, gen) or, for a first block, the namespace */
    uint32_t *gen;       /* (n_blocks) bumped whenever a published block is evicted */
    uint8_t *pub;        /* (n_blocks) 1: published (in the hash table); 2: and a first block */
    int32_t *toks;       /* (n_blocks, block_size) tokens of a published block */
    int32_t *bucket;     /* (n_buckets) first id of each hash chain, -1: empty */
    int32_t *hnext;      /* (n_blocks) next id in the same bucket */
    uint32_t n_buckets;  /* power of two */
    int32_t *lru_prev, *lru_next; /* (n_blocks) idle list, oldest at lru_head */
    int32_t lru_head, lru_tail;
};

struct dsi_kv_seq {
    int32_t *blocks; /* (cap_blocks) ids covering positions 0..n_blocks*block_size-1 */
    int n_blocks;    /* ids held */
    int cap_blocks;  /* table capacity, fixed at init */
    /* Prefix cache state of this sequence (set by dsi_kv_seq_match). */
    uint64_t ns[2];  /* namespace of its first block */
    int n_keyed;     /* leading blocks whose published twin is known (prev_*) */
    uint64_t prev_hash;           /* hash of block n_keyed-1's twin */
    int32_t prev_id;              /* id of that twin, -1 when n_keyed == 0 */
    uint32_t prev_gen;            /* its generation when it was keyed */
};

/* Caller-owned struct; allocates the free stack (all ids free). Returns 0,
 * DSI_EINVAL (n_blocks or block_size < 1) or DSI_ENOMEM. */
int dsi_kv_cache_init(struct dsi_kv_cache *kv, int n_blocks, int block_size, char **err);
/* Turns prefix caching on (right after init, before any block is taken).
 * hash_key seeds the bucket hash; format names the blocks' K/V format (kv dtype,
 * bytes per token), so the same tokens in another format never share a key.
 * Returns 0, DSI_ESTATE or DSI_ENOMEM. */
int dsi_kv_prefix_enable(struct dsi_kv_cache *kv, uint64_t hash_key, uint64_t format, char **err);
/* Frees everything; accepts a zeroed or already freed struct. */
void dsi_kv_cache_free(struct dsi_kv_cache *kv);

/* Blocks needed for n_tokens positions (ceil); -1 if n_tokens < 0. */
int dsi_kv_blocks_for(const struct dsi_kv_cache *kv, int n_tokens);
/* Blocks held by some sequence. */
int dsi_kv_used(const struct dsi_kv_cache *kv);
/* Blocks a reserve can take: free plus idle (cached, evictable). */
int dsi_kv_free_count(const struct dsi_kv_cache *kv);
/* Published blocks (held or idle). */
int dsi_kv_cached_count(const struct dsi_kv_cache *kv);

/* Allocates a table able to hold max_tokens positions (no blocks taken yet).
 * Returns 0, DSI_ERANGE (needs more blocks than the pool) or DSI_ENOMEM. */
int dsi_kv_seq_init(struct dsi_kv_seq *s, const struct dsi_kv_cache *kv, int max_tokens, char **err);
/* Frees the table; the blocks must have been released first. Accepts NULL tables. */
void dsi_kv_seq_free(struct dsi_kv_seq *s);

/* Sets s's namespace and maps into s (which must hold no block) the longest
 * run of published blocks equal to tokens[0, n_tokens), whole blocks only.
 * Returns the tokens mapped (a multiple of block_size; 0 when prefix caching
 * is off). The caller passes n_tokens one short of what it will compute when
 * it needs the logits of the last token. */
int dsi_kv_seq_match(struct dsi_kv_cache *kv, struct dsi_kv_seq *s, const uint64_t ns[2], const int32_t *tokens,
                     int n_tokens);
/* Publishes s's blocks that positions [0, n_computed) fill completely and
 * that are not keyed yet; tokens are s's tokens. A block whose content is
 * already published under another id stays private, and later blocks chain
 * to that twin. No-op when prefix caching is off. */
void dsi_kv_seq_commit(struct dsi_kv_cache *kv, struct dsi_kv_seq *s, const int32_t *tokens, int n_computed);

/* Grows s so its blocks cover positions 0..n_tokens-1, evicting idle cached
 * blocks (oldest first) when the free stack runs out. All or nothing: returns
 * 0, DSI_EFULL when the pool has too few free or idle blocks (s unchanged), or
 * DSI_ERANGE when n_tokens is beyond the table's capacity. */
int dsi_kv_seq_reserve(struct dsi_kv_cache *kv, struct dsi_kv_seq *s, int n_tokens);
/* Drops s's hold on every block (s->n_blocks becomes 0): published ones stay
 * cached as idle, the last block first in eviction order; others go back to
 * the free stack. */
void dsi_kv_seq_release(struct dsi_kv_cache *kv, struct dsi_kv_seq *s);

/* Checks the invariants above against the given sequence tables (all the
 * tables holding blocks). Returns 0 or DSI_EINTERNAL naming the first broken
 * one. O(n_blocks + held ids); for tests and the fuzzer. */
int dsi_kv_check(const struct dsi_kv_cache *kv, const struct dsi_kv_seq *const *seqs, int n_seqs, char **err);

#endif
