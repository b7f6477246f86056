/*
 * kvcache.c: paged KV block manager with automatic prefix caching (see
 * include/dsinfer/kvcache.h for the model and its invariants).
 *
 * Layout: never-published free ids live in free_stack[0..n_free); taking pops
 * from the top and releasing pushes back, so both are O(1) per block. ref[]
 * counts the sequence tables that list an id, which catches a double release
 * (an assert in debug builds, dsi_kv_check in tests and the fuzzer).
 *
 * Prefix cache: published ids sit in a chained hash table (bucket[], hnext[])
 * keyed by hash[]; idle ones (ref 0) also sit on a doubly linked LRU list.
 * Reserving prefers the free stack and evicts the oldest idle block only when
 * that is empty, so a cached prefix survives as long as the pool allows.
 * Eviction bumps the block's generation: a child published under the old
 * content names its parent by (id, generation), so it can never be matched
 * under the new content; it ages out of the LRU like any idle block.
 */
#include "dsinfer/kvcache.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"

static uint64_t mix(uint64_t h, uint64_t x);
static uint64_t block_hash(const struct dsi_kv_cache *kv, uint64_t parent, const int32_t *toks);
static int32_t find(const struct dsi_kv_cache *kv, uint64_t h, const uint64_t link[2], bool first,
                    const int32_t *toks);
static void unpublish(struct dsi_kv_cache *kv, int32_t id);
static void lru_remove(struct dsi_kv_cache *kv, int32_t id);
static void lru_push(struct dsi_kv_cache *kv, int32_t id);
static int32_t take(struct dsi_kv_cache *kv);
static void seq_keys(const struct dsi_kv_seq *s, uint64_t link[2], bool *first);

int dsi_kv_cache_init(struct dsi_kv_cache *kv, int n_blocks, int block_size, char **err) {
    memset(kv, 0, sizeof *kv);
    kv->lru_head = kv->lru_tail = -1;
    if (n_blocks < 1 || block_size < 1)
        return dsi_seterr(err, DSI_EINVAL, "kv cache: need n_blocks >= 1 and block_size >= 1 (got %d, %d)",
                          n_blocks, block_size);
    kv->free_stack = malloc((size_t)n_blocks * sizeof(int32_t));
    kv->ref = calloc((size_t)n_blocks, sizeof(int32_t));
    if (!kv->free_stack || !kv->ref) {
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

int dsi_kv_prefix_enable(struct dsi_kv_cache *kv, uint64_t hash_key, uint64_t format, char **err) {
    if (kv->prefix || kv->n_free != kv->n_blocks || kv->n_blocks < 1)
        return dsi_seterr(err, DSI_ESTATE, "kv cache: prefix caching must be enabled on a fresh pool");
    size_t n = (size_t)kv->n_blocks, bs = (size_t)kv->block_size;
    if (bs > SIZE_MAX / sizeof(int32_t) / n)
        return dsi_seterr(err, DSI_EOVERFLOW, "kv cache: %zu x %zu token slots overflow", n, bs);
    uint32_t nb = 1;
    while (nb < n && nb < (1u << 30)) nb <<= 1;
    kv->n_buckets = nb;
    kv->hash = calloc(n, sizeof(uint64_t));
    kv->link = calloc(n * 2, sizeof(uint64_t));
    kv->gen = calloc(n, sizeof(uint32_t));
    kv->pub = calloc(n, 1);
    kv->toks = malloc(n * bs * sizeof(int32_t));
    kv->bucket = malloc((size_t)nb * sizeof(int32_t));
    kv->hnext = malloc(n * sizeof(int32_t));
    kv->lru_prev = malloc(n * sizeof(int32_t));
    kv->lru_next = malloc(n * sizeof(int32_t));
    if (!kv->hash || !kv->link || !kv->gen || !kv->pub || !kv->toks || !kv->bucket || !kv->hnext ||
        !kv->lru_prev || !kv->lru_next) {
        dsi_kv_cache_free(kv);
        return dsi_seterr(err, DSI_ENOMEM, "kv cache: no memory for the prefix cache of %zu blocks", n);
    }
    for (uint32_t i = 0; i < nb; i++) kv->bucket[i] = -1;
    kv->hash_key = hash_key;
    kv->format = format;
    kv->prefix = true;
    return 0;
}

void dsi_kv_cache_free(struct dsi_kv_cache *kv) {
    if (!kv) return;
    free(kv->free_stack);
    free(kv->ref);
    free(kv->hash);
    free(kv->link);
    free(kv->gen);
    free(kv->pub);
    free(kv->toks);
    free(kv->bucket);
    free(kv->hnext);
    free(kv->lru_prev);
    free(kv->lru_next);
    memset(kv, 0, sizeof *kv);
    kv->lru_head = kv->lru_tail = -1;
}

int dsi_kv_blocks_for(const struct dsi_kv_cache *kv, int n_tokens) {
    if (n_tokens < 0) return -1;
    /* n_tokens + block_size - 1 could overflow near INT_MAX; divide first. */
    return n_tokens / kv->block_size + (n_tokens % kv->block_size != 0);
}

int dsi_kv_used(const struct dsi_kv_cache *kv) {
    return kv->n_blocks - kv->n_free - kv->n_idle;
}
int dsi_kv_free_count(const struct dsi_kv_cache *kv) {
    return kv->n_free + kv->n_idle;
}
int dsi_kv_cached_count(const struct dsi_kv_cache *kv) {
    return kv->n_published;
}

int dsi_kv_seq_init(struct dsi_kv_seq *s, const struct dsi_kv_cache *kv, int max_tokens, char **err) {
    memset(s, 0, sizeof *s);
    s->prev_id = -1;
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

/* One round of a multiply-xorshift mix (the constants are splitmix64's); the
 * engine-wide random key makes bucket choice unpredictable to clients. Not a
 * cryptographic hash and not relied on for correctness: find() compares the
 * content itself. */
static uint64_t mix(uint64_t h, uint64_t x) {
    h ^= x + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    h ^= h >> 30;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 27;
    h *= 0x94D049BB133111EBull;
    return h ^ (h >> 31);
}

static uint64_t block_hash(const struct dsi_kv_cache *kv, uint64_t parent, const int32_t *toks) {
    uint64_t h = mix(mix(kv->hash_key, kv->format), parent);
    for (int i = 0; i < kv->block_size; i++) h = mix(h, (uint32_t)toks[i]);
    return h;
}

/* The link of s's next block: its parent twin (id, gen), or s's namespace. */
static void seq_keys(const struct dsi_kv_seq *s, uint64_t link[2], bool *first) {
    *first = s->n_keyed == 0;
    if (*first) {
        link[0] = s->ns[0];
        link[1] = s->ns[1];
    } else {
        link[0] = (uint64_t)(uint32_t)s->prev_id;
        link[1] = s->prev_gen;
    }
}

/* The published id with exactly this parent link and these tokens, or -1. */
static int32_t find(const struct dsi_kv_cache *kv, uint64_t h, const uint64_t link[2], bool first,
                    const int32_t *toks) {
    size_t bs = (size_t)kv->block_size;
    for (int32_t id = kv->bucket[h & (kv->n_buckets - 1)]; id >= 0; id = kv->hnext[id]) {
        if (kv->hash[id] != h || kv->pub[id] != (first ? 2 : 1)) continue;
        if (kv->link[2 * id] != link[0] || kv->link[2 * id + 1] != link[1]) continue;
        if (memcmp(kv->toks + (size_t)id * bs, toks, bs * sizeof(int32_t)) == 0) return id;
    }
    return -1;
}

static void lru_remove(struct dsi_kv_cache *kv, int32_t id) {
    int32_t p = kv->lru_prev[id], n = kv->lru_next[id];
    if (p >= 0) kv->lru_next[p] = n;
    else kv->lru_head = n;
    if (n >= 0) kv->lru_prev[n] = p;
    else kv->lru_tail = p;
    kv->n_idle--;
}

static void lru_push(struct dsi_kv_cache *kv, int32_t id) {
    kv->lru_prev[id] = kv->lru_tail;
    kv->lru_next[id] = -1;
    if (kv->lru_tail >= 0) kv->lru_next[kv->lru_tail] = id;
    else kv->lru_head = id;
    kv->lru_tail = id;
    kv->n_idle++;
}

/* Takes id out of the hash table; a new generation orphans its children. */
static void unpublish(struct dsi_kv_cache *kv, int32_t id) {
    int32_t *pp = &kv->bucket[kv->hash[id] & (kv->n_buckets - 1)];
    while (*pp != id) {
        assert(*pp >= 0);
        pp = &kv->hnext[*pp];
    }
    *pp = kv->hnext[id];
    kv->pub[id] = 0;
    kv->gen[id]++;
    kv->n_published--;
}

/* One block for new content: a never-published one if any, else the oldest
 * idle one. The caller checked that one exists. */
static int32_t take(struct dsi_kv_cache *kv) {
    int32_t id;
    if (kv->n_free > 0) {
        id = kv->free_stack[--kv->n_free];
    } else {
        id = kv->lru_head;
        assert(id >= 0);
        lru_remove(kv, id);
        unpublish(kv, id);
        kv->evictions++;
    }
    assert(kv->ref[id] == 0);
    kv->ref[id] = 1;
    return id;
}

int dsi_kv_seq_match(struct dsi_kv_cache *kv, struct dsi_kv_seq *s, const uint64_t ns[2], const int32_t *tokens,
                     int n_tokens) {
    assert(s->n_blocks == 0);
    s->ns[0] = ns[0];
    s->ns[1] = ns[1];
    s->n_keyed = 0;
    s->prev_id = -1;
    s->prev_gen = 0;
    s->prev_hash = 0;
    if (!kv->prefix) return 0;
    int full = n_tokens / kv->block_size;
    if (full > s->cap_blocks) full = s->cap_blocks;
    for (int i = 0; i < full; i++) {
        const int32_t *t = tokens + (size_t)i * (size_t)kv->block_size;
        uint64_t link[2];
        bool first;
        seq_keys(s, link, &first);
        uint64_t h = block_hash(kv, first ? mix(ns[0], ns[1]) : s->prev_hash, t);
        int32_t id = find(kv, h, link, first, t);
        if (id < 0) break;
        if (kv->ref[id]++ == 0) lru_remove(kv, id);
        s->blocks[s->n_blocks++] = id;
        s->n_keyed++;
        s->prev_id = id;
        s->prev_gen = kv->gen[id];
        s->prev_hash = h;
    }
    return s->n_blocks * kv->block_size;
}

void dsi_kv_seq_commit(struct dsi_kv_cache *kv, struct dsi_kv_seq *s, const int32_t *tokens, int n_computed) {
    if (!kv->prefix) return;
    int full = n_computed / kv->block_size;
    if (full > s->n_blocks) full = s->n_blocks;
    size_t bs = (size_t)kv->block_size;
    while (s->n_keyed < full) {
        int i = s->n_keyed;
        const int32_t *t = tokens + (size_t)i * bs;
        uint64_t link[2];
        bool first;
        seq_keys(s, link, &first);
        uint64_t h = block_hash(kv, first ? mix(s->ns[0], s->ns[1]) : s->prev_hash, t);
        int32_t id = find(kv, h, link, first, t);
        if (id < 0) {
            /* Publish this sequence's own block. It is held (ref >= 1), so it is
             * neither free nor idle, and nothing else lists it yet. */
            id = s->blocks[i];
            assert(kv->ref[id] >= 1);
            if (kv->pub[id]) break; /* already published under other content: cannot be */
            kv->hash[id] = h;
            kv->link[2 * id] = link[0];
            kv->link[2 * id + 1] = link[1];
            kv->pub[id] = first ? 2 : 1;
            memcpy(kv->toks + (size_t)id * bs, t, bs * sizeof(int32_t));
            uint32_t b = (uint32_t)(h & (kv->n_buckets - 1));
            kv->hnext[id] = kv->bucket[b];
            kv->bucket[b] = id;
            kv->n_published++;
        }
        s->n_keyed++;
        s->prev_id = id;
        s->prev_gen = kv->gen[id];
        s->prev_hash = h;
    }
}

int dsi_kv_seq_reserve(struct dsi_kv_cache *kv, struct dsi_kv_seq *s, int n_tokens) {
    int need = dsi_kv_blocks_for(kv, n_tokens);
    if (need < 0 || need > s->cap_blocks) return DSI_ERANGE;
    int add = need - s->n_blocks;
    if (add <= 0) return 0;
    if (add > kv->n_free + kv->n_idle) return DSI_EFULL;
    for (int i = 0; i < add; i++) s->blocks[s->n_blocks++] = take(kv);
    return 0;
}

void dsi_kv_seq_release(struct dsi_kv_cache *kv, struct dsi_kv_seq *s) {
    /* Last block first: it joins the idle list first, so it is evicted before
     * the prefix blocks other sequences are more likely to share; free ids come
     * back out in the order this sequence had them. */
    for (int i = s->n_blocks - 1; i >= 0; i--) {
        int32_t id = s->blocks[i];
        assert(id >= 0 && id < kv->n_blocks && kv->ref[id] > 0);
        if (--kv->ref[id] > 0) continue;
        if (kv->prefix && kv->pub[id]) {
            lru_push(kv, id);
        } else {
            assert(kv->n_free < kv->n_blocks);
            kv->free_stack[kv->n_free++] = id;
        }
    }
    s->n_blocks = 0;
    s->n_keyed = 0;
    s->prev_id = -1;
}

int dsi_kv_check(const struct dsi_kv_cache *kv, const struct dsi_kv_seq *const *seqs, int n_seqs, char **err) {
    int n = kv->n_blocks;
    int32_t *cnt = calloc((size_t)n, sizeof(int32_t));
    uint8_t *seen = calloc((size_t)n, 1);
    int rc = DSI_ENOMEM;
    if (!cnt || !seen) {
        dsi_seterr(err, rc, "kv check: out of memory");
        goto out;
    }
    rc = DSI_EINTERNAL;
    for (int k = 0; k < n_seqs; k++)
        for (int i = 0; i < seqs[k]->n_blocks; i++) {
            int32_t id = seqs[k]->blocks[i];
            if (id < 0 || id >= n) {
                dsi_seterr(err, rc, "kv check: seq %d lists id %d outside the pool", k, id);
                goto out;
            }
            cnt[id]++;
        }
    for (int i = 0; i < kv->n_free; i++) {
        int32_t id = kv->free_stack[i];
        if (id < 0 || id >= n || seen[id] || cnt[id] || kv->ref[id] || (kv->pub && kv->pub[id])) {
            dsi_seterr(err, rc, "kv check: free id %d is also elsewhere", id);
            goto out;
        }
        seen[id] = 1;
    }
    int idle = 0, published = 0;
    for (int32_t id = kv->prefix ? kv->lru_head : -1, prev = -1; id >= 0; prev = id, id = kv->lru_next[id]) {
        if (seen[id] || cnt[id] || kv->ref[id] || !kv->pub[id] || kv->lru_prev[id] != prev || idle >= n) {
            dsi_seterr(err, rc, "kv check: idle id %d is also elsewhere or the list is broken", id);
            goto out;
        }
        seen[id] = 2;
        idle++;
    }
    for (int id = 0; id < n; id++) {
        if (kv->ref[id] != cnt[id]) {
            dsi_seterr(err, rc, "kv check: id %d has ref %d but %d tables list it", id, kv->ref[id], cnt[id]);
            goto out;
        }
        if (!seen[id] && cnt[id] == 0) {
            dsi_seterr(err, rc, "kv check: id %d is lost (not free, idle or held)", id);
            goto out;
        }
        if (kv->prefix && kv->pub[id]) {
            published++;
            const int32_t *t = kv->toks + (size_t)id * (size_t)kv->block_size;
            if (find(kv, kv->hash[id], &kv->link[2 * id], kv->pub[id] == 2, t) != id) {
                dsi_seterr(err, rc, "kv check: published id %d is not the one lookups find", id);
                goto out;
            }
        }
    }
    if (idle != kv->n_idle || published != kv->n_published) {
        dsi_seterr(err, rc, "kv check: counts idle %d/%d published %d/%d", idle, kv->n_idle, published,
                   kv->n_published);
        goto out;
    }
    rc = 0;
out:
    free(cnt);
    free(seen);
    return rc;
}
