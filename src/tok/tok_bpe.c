/*
 * tok_bpe.c: the BPE merge loop, its pair -> (rank, merged id) hash table, and the
 * shared word cache.
 *
 * A word (one pre-token, raw bytes) starts as one symbol per byte. The merge with the
 * lowest rank is applied first; among equal ranks the leftmost pair wins. That is
 * exactly the order of HF tokenizers' binary heap keyed by (rank, position), so the
 * ids agree. Short words (the vast majority) use a linear scan over a small array,
 * which beats a heap below ~64 symbols; long words use a binary heap with lazy
 * deletion (stale entries are skipped when popped), O(n log n).
 */
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "tok_internal.h"

#define SCAN_MAX 64 /* words up to this many bytes use the linear scan */

struct heap_item {
    int32_t rank;
    int32_t pos;
};

struct sym {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    int32_t len;        /* bytes; 0 once merged into its left neighbour */
};

static bool heap_less(struct heap_item a, struct heap_item b);
static void heap_push(struct heap_item *h, size_t *n, struct heap_item it);
static struct heap_item heap_pop(struct heap_item *h, size_t *n);
static int bpe_heap(const struct dsi_tokenizer *t, struct sym *s, int32_t n);
static void bpe_scan(const struct dsi_tokenizer *t, struct sym *s, int32_t n);

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

uint64_t dsi__hash_bytes(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, b, 8);
        h = mix64(h ^ w) + 0x9E3779B97F4A7C15ull;
        b += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, b, n);
    return mix64(h ^ w ^ ((uint64_t)n << 56));
}

int dsi__merge_map_init(struct dsi__merge_map *m, size_t n) {
    size_t cap = 16;
    while (cap < n * 2) {
        if (cap > SIZE_MAX / 4) return DSI_EOVERFLOW;
        cap *= 2;
    }
    m->slots = calloc(cap, sizeof *m->slots);
    if (!m->slots) return DSI_ENOMEM;
    m->mask = cap - 1;
    return 0;
}

void dsi__merge_map_free(struct dsi__merge_map *m) {
    free(m->slots);
    m->slots = NULL;
    m->mask = 0;
}

static inline uint64_t pair_key(int32_t left, int32_t right) {
    return (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1;
}

void dsi__merge_map_put(struct dsi__merge_map *m, int32_t left, int32_t right, int32_t rank, int32_t merged) {
    uint64_t k = pair_key(left, right);
    size_t i = mix64(k) & m->mask;
    while (m->slots[i].key && m->slots[i].key != k) i = (i + 1) & m->mask;
    m->slots[i] = (struct dsi__merge_slot){k, rank, merged};
}

bool dsi__merge_map_get(const struct dsi__merge_map *m, int32_t left, int32_t right, int32_t *rank,
                        int32_t *merged) {
    uint64_t k = pair_key(left, right);
    size_t i = mix64(k) & m->mask;
    for (;;) {
        uint64_t v = m->slots[i].key;
        if (v == k) {
            *rank = m->slots[i].rank;
            *merged = m->slots[i].merged;
            return true;
        }
        if (!v) return false;
        i = (i + 1) & m->mask;
    }
}

int dsi__ids_reserve(int32_t **ids, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        if (c > SIZE_MAX / 2 / sizeof(int32_t)) return DSI_EOVERFLOW;
        c *= 2;
    }
    int32_t *p = realloc(*ids, c * sizeof *p);
    if (!p) return DSI_ENOMEM;
    *ids = p;
    *cap = c;
    return 0;
}

static bool heap_less(struct heap_item a, struct heap_item b) {
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(struct heap_item *h, size_t *n, struct heap_item it) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(it, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = it;
}

static struct heap_item heap_pop(struct heap_item *h, size_t *n) {
    struct heap_item top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(h[c + 1], h[c])) c++;
        if (!heap_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

/* Linear scan: repeatedly merge the lowest-ranked, leftmost pair. */
static void bpe_scan(const struct dsi_tokenizer *t, struct sym *s, int32_t n) {
    int32_t rank_of[SCAN_MAX], merged_of[SCAN_MAX];
    /* rank_of[i]: rank of the pair (s[i], next(i)), INT32_MAX when none. */
    for (int32_t i = 0; i < n; i++) {
        rank_of[i] = INT32_MAX;
        if (s[i].next >= 0 && !dsi__merge_map_get(&t->merges, s[i].id, s[s[i].next].id, &rank_of[i], &merged_of[i]))
            rank_of[i] = INT32_MAX;
    }
    for (;;) {
        int32_t best = -1, best_rank = INT32_MAX;
        for (int32_t i = 0; i >= 0; i = s[i].next)
            if (rank_of[i] < best_rank) {
                best_rank = rank_of[i];
                best = i;
            }
        if (best < 0) return;
        int32_t r = s[best].next;
        s[best].id = merged_of[best];
        s[best].len += s[r].len;
        s[r].len = 0;
        s[best].next = s[r].next;
        if (s[r].next >= 0) s[s[r].next].prev = best;
        rank_of[best] = INT32_MAX;
        if (s[best].next >= 0 &&
            !dsi__merge_map_get(&t->merges, s[best].id, s[s[best].next].id, &rank_of[best], &merged_of[best]))
            rank_of[best] = INT32_MAX;
        int32_t p = s[best].prev;
        if (p >= 0 && !dsi__merge_map_get(&t->merges, s[p].id, s[best].id, &rank_of[p], &merged_of[p]))
            rank_of[p] = INT32_MAX;
    }
}

/* Heap version for long words; same order as bpe_scan. */
static int bpe_heap(const struct dsi_tokenizer *t, struct sym *s, int32_t n) {
    /* Each merge pushes at most 2 entries; n - 1 initial ones. */
    size_t cap = (size_t)n * 3 + 4, hn = 0;
    struct heap_item *h = malloc(cap * sizeof *h);
    if (!h) return DSI_ENOMEM;
    int32_t rank, merged;
    for (int32_t i = 0; i + 1 < n; i++)
        if (dsi__merge_map_get(&t->merges, s[i].id, s[i + 1].id, &rank, &merged))
            heap_push(h, &hn, (struct heap_item){rank, i});
    while (hn) {
        struct heap_item top = heap_pop(h, &hn);
        int32_t i = top.pos;
        if (s[i].len == 0 || s[i].next < 0) continue;
        int32_t r = s[i].next;
        if (!dsi__merge_map_get(&t->merges, s[i].id, s[r].id, &rank, &merged) || rank != top.rank) continue;
        s[i].id = merged;
        s[i].len += s[r].len;
        s[r].len = 0;
        s[i].next = s[r].next;
        if (s[r].next >= 0) s[s[r].next].prev = i;
        if (s[i].prev >= 0 && dsi__merge_map_get(&t->merges, s[s[i].prev].id, s[i].id, &rank, &merged) &&
            hn < cap)
            heap_push(h, &hn, (struct heap_item){rank, s[i].prev});
        if (s[i].next >= 0 && dsi__merge_map_get(&t->merges, s[i].id, s[s[i].next].id, &rank, &merged) &&
            hn < cap)
            heap_push(h, &hn, (struct heap_item){rank, i});
    }
    free(h);
    return 0;
}

static bool cache_get(struct dsi__word_cache *c, const char *w, size_t n, uint64_t h, int32_t *ids,
                      size_t *n_ids) {
    size_t slot = h & c->mask;
    pthread_mutex_t *lk = &c->lock[slot % DSI__CACHE_SHARDS]; /* the lock follows the slot */
    bool hit = false;
    pthread_mutex_lock(lk);
    struct dsi__cache_entry *e = &c->entries[slot];
    if (e->len == n && e->n_ids && memcmp(e->word, w, n) == 0) {
        memcpy(ids, e->ids, e->n_ids * sizeof *ids);
        *n_ids = e->n_ids;
        hit = true;
    }
    pthread_mutex_unlock(lk);
    return hit;
}

static void cache_put(struct dsi__word_cache *c, const char *w, size_t n, uint64_t h, const int32_t *ids,
                      size_t n_ids) {
    size_t slot = h & c->mask;
    pthread_mutex_t *lk = &c->lock[slot % DSI__CACHE_SHARDS]; /* the lock follows the slot */
    pthread_mutex_lock(lk);
    struct dsi__cache_entry *e = &c->entries[slot];
    e->len = (uint8_t)n;
    e->n_ids = (uint8_t)n_ids;
    memcpy(e->word, w, n);
    memcpy(e->ids, ids, n_ids * sizeof *ids);
    pthread_mutex_unlock(lk);
}

int dsi__cache_create(struct dsi__word_cache **out, size_t n_entries) {
    struct dsi__word_cache *c = calloc(1, sizeof *c);
    if (!c) return DSI_ENOMEM;
    /* One cache line per entry, so a lookup touches one line. */
    c->entries = aligned_alloc(64, n_entries * sizeof *c->entries);
    if (c->entries) memset(c->entries, 0, n_entries * sizeof *c->entries);
    if (!c->entries) {
        free(c);
        return DSI_ENOMEM;
    }
    c->mask = n_entries - 1;
    for (size_t i = 0; i < DSI__CACHE_SHARDS; i++) pthread_mutex_init(&c->lock[i], NULL);
    *out = c;
    return 0;
}

void dsi__cache_destroy(struct dsi__word_cache *c) {
    if (!c) return;
    for (size_t i = 0; i < DSI__CACHE_SHARDS; i++) pthread_mutex_destroy(&c->lock[i]);
    free(c->entries);
    free(c);
}

int dsi__bpe_word(const struct dsi_tokenizer *t, const char *w, size_t n, int32_t **ids, size_t *n_ids,
                  size_t *cap) {
    if (n == 0) return 0;
    if (n > INT32_MAX / 4) return DSI_EOVERFLOW;
    int rc;
    uint64_t h = 0;
    bool cacheable = t->cache && n <= DSI__CACHE_WORD;
    if (cacheable) {
        int32_t tmp[DSI__CACHE_IDS];
        size_t k;
        h = dsi__hash_bytes(w, n);
        if (cache_get(t->cache, w, n, h, tmp, &k)) {
            if ((rc = dsi__ids_reserve(ids, cap, *n_ids + k))) return rc;
            memcpy(*ids + *n_ids, tmp, k * sizeof *tmp);
            *n_ids += k;
            return 0;
        }
    }
    if (t->ignore_merges) {
        /* Llama-3 style: a word that is itself a token is taken whole. */
        int32_t id = dsi__str_map_get(t, w, n);
        if (id >= 0) {
            if ((rc = dsi__ids_reserve(ids, cap, *n_ids + 1))) return rc;
            (*ids)[(*n_ids)++] = id;
            return 0;
        }
    }
    struct sym stack_syms[SCAN_MAX];
    struct sym *s = n <= SCAN_MAX ? stack_syms : malloc(n * sizeof *s);
    if (!s) return DSI_ENOMEM;
    int32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[(unsigned char)w[i]];
        if (id < 0) {
            /* No token for this byte: HF drops it, or emits unk (fused when asked). */
            if (t->unk_id < 0) continue;
            if (t->fuse_unk && m > 0 && s[m - 1].id == t->unk_id) {
                s[m - 1].len++;
                continue;
            }
            id = t->unk_id;
        }
        s[m] = (struct sym){id, m - 1, m + 1, 1};
        m++;
    }
    if (m == 0) goto done;
    s[m - 1].next = -1;
    if (m <= SCAN_MAX) {
        bpe_scan(t, s, m);
    } else if ((rc = bpe_heap(t, s, m))) {
        if (s != stack_syms) free(s);
        return rc;
    }
    size_t start = *n_ids;
    for (int32_t i = 0; i >= 0; i = s[i].next) {
        if ((rc = dsi__ids_reserve(ids, cap, *n_ids + 1))) {
            if (s != stack_syms) free(s);
            return rc;
        }
        (*ids)[(*n_ids)++] = s[i].id;
    }
    if (cacheable && *n_ids - start <= DSI__CACHE_IDS)
        cache_put(t->cache, w, n, h, *ids + start, *n_ids - start);
done:
    if (s != stack_syms) free(s);
    return 0;
}
