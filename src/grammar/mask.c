/*
 * mask.c: the token trie, the per-sequence matcher, and vocabulary masks.
 *
 * The trie holds every ordinary token's bytes (but those with a 0xFF byte) and
 * every added token's reference (grammar.h), laid out in depth-first preorder:
 * node i has a byte, a depth (1-based), the index just past its subtree, and the
 * tokens whose bytes end there (usually one). A mask is one linear pass: the state
 * after node i's bytes is the state at its parent's depth stepped by its byte; a
 * node whose state dies skips its whole subtree. So the cost is the number of trie
 * nodes whose prefix is still viable, which is large only inside strings; there the
 * state usually repeats (an unbounded string has one state whatever it holds), and
 * the matcher's cache, keyed by the exact serialised state, answers.
 *
 * Memory: the matcher allocates its walk buffers on its first mask (one state per
 * trie depth) and cache masks as they fill; nothing is allocated per token after.
 */
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "grammar_internal.h"

/* Tokens laid out as a preorder trie. */
struct trie_nodes {
    uint32_t n_nodes;
    uint8_t *byte;       /* (n_nodes) */
    uint16_t *depth;     /* (n_nodes) 1-based */
    uint32_t *end;       /* (n_nodes) first index after the subtree */
    uint32_t *tok_first; /* (n_nodes) this node's tokens are ids[tok_first, +tok_n) */
    uint16_t *tok_n;     /* (n_nodes) */
    int32_t *ids;        /* token ids sorted by their bytes */
    int max_depth;
};

#define PLAIN_K 16 /* plain_le[] covers strings with fewer than this many code points left */

struct dsi_token_trie {
    const struct dsi_tokenizer *tok; /* borrowed */
    int n_vocab;            /* tokenizer ids covered */
    struct trie_nodes all;  /* every non-added token */
    /* Inside a string (no escape or UTF-8 sequence pending) a "plain" token (whole
     * UTF-8 characters, none of them '"', '\\' or a control character) is allowed
     * exactly when its code points fit what the string has left, whatever else the
     * state holds. So there the mask is the plain set, cut by length, plus a walk of
     * the other tokens only (a few percent of the vocabulary). */
    struct trie_nodes other;            /* non-plain tokens */
    uint32_t *plain;                    /* (words) bitset of plain tokens */
    uint32_t *plain_le[PLAIN_K];        /* (words) plain tokens of <= k code points, k < PLAIN_K */
    int32_t *long_plain;                /* plain tokens of >= PLAIN_K code points */
    uint8_t *long_cps;                  /* their code points, saturated at 255 */
    size_t n_long;
};

struct cache_entry {
    uint64_t hash;
    size_t key_len;     /* 0: empty */
    unsigned char *key; /* sizeof(struct dsi__gstate) bytes */
    uint32_t *mask;     /* words */
    int words, count;
};

struct dsi_grammar_matcher {
    const struct dsi_grammar *g;
    struct dsi__gstate st, s1, s2; /* state; scratch for all-or-nothing accept and check */
    struct dsi__gstate *levels;    /* (n_levels) walk states by trie depth */
    int n_levels;
    unsigned char *keybuf;         /* sizeof(struct dsi__gstate) */
    struct cache_entry *cache;
    int n_cache, victim;
};

struct tok_ref {
    const char *s;
    size_t len;
    int32_t id;
};

static int cmp_tok(const void *a, const void *b) {
    const struct tok_ref *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int r = memcmp(x->s, y->s, n);
    if (r) return r;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static void nodes_free(struct trie_nodes *t) {
    free(t->byte);
    free(t->depth);
    free(t->end);
    free(t->tok_first);
    free(t->tok_n);
    free(t->ids);
}

void dsi_token_trie_destroy(struct dsi_token_trie *tr) {
    if (!tr) return;
    nodes_free(&tr->all);
    nodes_free(&tr->other);
    free(tr->plain);
    for (int k = 0; k < PLAIN_K; k++)
        free(tr->plain_le[k]);
    free(tr->long_plain);
    free(tr->long_cps);
    free(tr);
}

/* Lays the sorted tokens out as a preorder trie: a token adds the nodes past its
 * longest common prefix with the one before it, and every open node deeper than
 * that prefix is closed (its subtree ends where the new nodes begin). */
static void build_nodes(struct trie_nodes *tr, const struct tok_ref *refs, size_t n, uint32_t *open) {
    const struct tok_ref *prev = NULL;
    size_t cur = 0;
    for (size_t k = 0; k < n; k++) {
        const struct tok_ref *t = &refs[k];
        size_t lcp = 0;
        if (prev)
            while (lcp < prev->len && lcp < t->len && prev->s[lcp] == t->s[lcp])
                lcp++;
        for (size_t d = lcp + 1; d <= cur; d++)
            tr->end[open[d]] = tr->n_nodes;
        for (size_t d = lcp + 1; d <= t->len; d++) {
            uint32_t i = tr->n_nodes++;
            tr->byte[i] = (uint8_t)t->s[d - 1];
            tr->depth[i] = (uint16_t)d;
            tr->tok_n[i] = 0;
            tr->tok_first[i] = 0;
            open[d] = i;
        }
        cur = t->len;
        uint32_t leaf = open[t->len];
        if (tr->tok_n[leaf] == 0) tr->tok_first[leaf] = (uint32_t)k;
        if (tr->tok_n[leaf] < UINT16_MAX) tr->tok_n[leaf]++;
        tr->ids[k] = t->id;
        if ((int)t->len > tr->max_depth) tr->max_depth = (int)t->len;
        prev = t;
    }
    for (size_t d = 1; d <= cur; d++)
        tr->end[open[d]] = tr->n_nodes;
}

/* refs sorted; total: the sum of their lengths (bounds the node count). */
static int nodes_build(struct trie_nodes *tr, const struct tok_ref *refs, size_t n, size_t total, uint32_t *open) {
    size_t cap = total ? total : 1;
    tr->byte = malloc(cap);
    tr->depth = malloc(cap * sizeof *tr->depth);
    tr->end = malloc(cap * sizeof *tr->end);
    tr->tok_first = malloc(cap * sizeof *tr->tok_first);
    tr->tok_n = malloc(cap * sizeof *tr->tok_n);
    tr->ids = malloc((n ? n : 1) * sizeof *tr->ids);
    if (!tr->byte || !tr->depth || !tr->end || !tr->tok_first || !tr->tok_n || !tr->ids) return DSI_ENOMEM;
    build_nodes(tr, refs, n, open);
    return 0;
}

/* Code points of s when it is plain string content (see struct dsi_token_trie), else -1. */
static int plain_cps(const uint8_t *s, size_t n) {
    int cps = 0;
    for (size_t i = 0; i < n; cps++) {
        uint8_t c = s[i];
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c < 0x20 || c == '"' || c == '\\') return -1;
        if (c < 0x80) need = 0;
        else if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) need = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        else if (c >= 0xF0 && c <= 0xF4) need = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        else return -1;
        if (i + 1 + need > n) return -1;
        for (size_t k = 1; k <= need; k++) {
            if (s[i + k] < lo || s[i + k] > hi) return -1;
            lo = 0x80, hi = 0xBF;
        }
        i += 1 + need;
    }
    return cps;
}

static int plain_sets(struct dsi_token_trie *tr, const struct tok_ref *refs, size_t n, struct tok_ref *other,
                      size_t *n_other, size_t *total_other) {
    size_t words = ((size_t)tr->n_vocab + 31) / 32;
    tr->plain = calloc(words ? words : 1, sizeof *tr->plain);
    tr->long_plain = malloc((n ? n : 1) * sizeof *tr->long_plain);
    tr->long_cps = malloc(n ? n : 1);
    if (!tr->plain || !tr->long_plain || !tr->long_cps) return DSI_ENOMEM;
    for (int k = 0; k < PLAIN_K; k++)
        if (!(tr->plain_le[k] = calloc(words ? words : 1, sizeof *tr->plain_le[k]))) return DSI_ENOMEM;
    *n_other = *total_other = 0;
    for (size_t i = 0; i < n; i++) {
        int cps = plain_cps((const uint8_t *)refs[i].s, refs[i].len);
        int32_t id = refs[i].id;
        if (cps < 0) {
            other[(*n_other)++] = refs[i];
            *total_other += refs[i].len;
            continue;
        }
        tr->plain[id >> 5] |= 1u << (id & 31);
        for (int k = cps; k < PLAIN_K; k++)
            tr->plain_le[k][id >> 5] |= 1u << (id & 31);
        if (cps >= PLAIN_K) {
            tr->long_plain[tr->n_long] = id;
            tr->long_cps[tr->n_long++] = (uint8_t)(cps > 255 ? 255 : cps);
        }
    }
    return 0;
}

int dsi_grammar_token_ref(int32_t id, char *out) {
    if (id < 0 || id > DSI_GRAMMAR_MAX_REF_ID) return DSI_ERANGE;
    out[0] = (char)0xFF;
    for (int k = 0; k < 3; k++)
        out[1 + k] = (char)(0x80 | (id >> (6 * (2 - k)) & 0x3F));
    return 0;
}

/* The bytes the grammar sees for token id: an added token's reference (in ref),
 * an ordinary token's bytes; false for tokens never in the trie. */
static bool grammar_bytes(const struct dsi_tokenizer *t, int32_t id, char *ref, const char **b, size_t *len) {
    bool added;
    if (dsi_tok_token_bytes(t, id, b, len, &added) || *len == 0 || *len > UINT16_MAX) return false;
    if (added) {
        *b = ref;
        *len = DSI_GRAMMAR_TOKEN_REF_LEN;
        return dsi_grammar_token_ref(id, ref) == 0;
    }
    return memchr(*b, 0xFF, *len) == NULL;
}

int dsi_token_trie_create(const struct dsi_tokenizer *t, struct dsi_token_trie **out, char **err) {
    *out = NULL;
    int nv = dsi_tok_vocab_size(t);
    struct dsi_token_trie *tr = calloc(1, sizeof *tr);
    struct tok_ref *refs = nv > 0 ? malloc((size_t)nv * 2 * sizeof *refs) : NULL;
    char *keys = NULL; /* the added tokens' references, DSI_GRAMMAR_TOKEN_REF_LEN bytes each */
    uint32_t *open = malloc((UINT16_MAX + 1) * sizeof *open);
    if (!tr || (nv > 0 && !refs) || !open) goto oom;
    tr->n_vocab = nv;
    tr->tok = t;
    size_t n = 0, total = 0, n_other = 0, total_other = 0, n_keys = 0;
    for (int32_t id = 0; id < nv; id++) {
        const char *b;
        size_t len;
        bool added;
        if (!dsi_tok_token_bytes(t, id, &b, &len, &added) && added) n_keys++;
    }
    if (n_keys && !(keys = malloc(n_keys * DSI_GRAMMAR_TOKEN_REF_LEN))) goto oom;
    n_keys = 0;
    for (int32_t id = 0; id < nv; id++) {
        const char *b;
        size_t len;
        char *key = keys ? keys + n_keys * DSI_GRAMMAR_TOKEN_REF_LEN : NULL;
        char spare[DSI_GRAMMAR_TOKEN_REF_LEN];
        if (!grammar_bytes(t, id, key ? key : spare, &b, &len)) continue;
        if (b == key) n_keys++;
        refs[n++] = (struct tok_ref){b, len, id};
        total += len; /* node count bound; sum of lengths of at most 2^24 ids of <= 64 KiB fits */
    }
    qsort(refs, n, sizeof *refs, cmp_tok);
    if (nodes_build(&tr->all, refs, n, total, open)) goto oom;
    /* the second half of refs receives the non-plain tokens, still sorted */
    if (plain_sets(tr, refs, n, refs + (nv > 0 ? nv : 0), &n_other, &total_other)) goto oom;
    if (nodes_build(&tr->other, refs + (nv > 0 ? nv : 0), n_other, total_other, open)) goto oom;
    free(open);
    free(refs);
    free(keys);
    *out = tr;
    return 0;
oom:
    free(open);
    free(refs);
    free(keys);
    dsi_token_trie_destroy(tr);
    return dsi_seterr(err, DSI_ENOMEM, "out of memory building the token trie");
}

int dsi_grammar_matcher_create(const struct dsi_grammar *g, int mask_cache_entries,
                               struct dsi_grammar_matcher **out) {
    *out = NULL;
    if (!g || mask_cache_entries < 0 || mask_cache_entries > 4096) return DSI_EINVAL;
    struct dsi_grammar_matcher *m = calloc(1, sizeof *m);
    if (!m) return DSI_ENOMEM;
    m->g = g;
    m->n_cache = mask_cache_entries;
    m->keybuf = malloc(sizeof(struct dsi__gstate));
    m->cache = mask_cache_entries ? calloc((size_t)mask_cache_entries, sizeof *m->cache) : NULL;
    if (!m->keybuf || (mask_cache_entries && !m->cache)) {
        dsi_grammar_matcher_destroy(m);
        return DSI_ENOMEM;
    }
    dsi__gstate_init(g, &m->st);
    *out = m;
    return 0;
}

void dsi_grammar_matcher_destroy(struct dsi_grammar_matcher *m) {
    if (!m) return;
    for (int i = 0; i < m->n_cache; i++) {
        free(m->cache[i].key);
        free(m->cache[i].mask);
    }
    free(m->cache);
    free(m->levels);
    free(m->keybuf);
    free(m);
}

/* Steps m->st over bytes into the scratch states; returns the final one or NULL. */
static const struct dsi__gstate *run_bytes(struct dsi_grammar_matcher *m, const char *bytes, size_t n) {
    const struct dsi__gstate *cur = &m->st;
    struct dsi__gstate *next = &m->s1, *spare = &m->s2;
    for (size_t i = 0; i < n; i++) {
        dsi__gstate_step(m->g, cur, (uint8_t)bytes[i], next);
        if (next->n == 0) return NULL;
        cur = next;
        next = spare;
        spare = (struct dsi__gstate *)cur;
    }
    return cur;
}

int dsi_grammar_matcher_accept(struct dsi_grammar_matcher *m, const char *bytes, size_t n) {
    if (n == 0) return 0;
    const struct dsi__gstate *end = run_bytes(m, bytes, n);
    if (!end) return DSI_EINVAL;
    dsi__gstate_copy(&m->st, end);
    return 0;
}

int dsi_grammar_matcher_accept_token(struct dsi_grammar_matcher *m, const struct dsi_token_trie *tr, int32_t id) {
    const char *b;
    size_t len;
    bool added;
    char ref[DSI_GRAMMAR_TOKEN_REF_LEN];
    if (!m || !tr || dsi_tok_token_bytes(tr->tok, id, &b, &len, &added)) return DSI_ERANGE;
    if (!grammar_bytes(tr->tok, id, ref, &b, &len)) return DSI_EINVAL; /* never in a mask */
    return dsi_grammar_matcher_accept(m, b, len);
}

int dsi_grammar_raw_text(const struct dsi_tokenizer *t, const char *text, char **out, char **err) {
    *out = NULL;
    int32_t *ids = NULL;
    size_t n = 0, len = strlen(text);
    int rc = dsi_tok_encode(t, text, len, true, &ids, &n, err);
    if (rc) return rc;
    /* room: a reference may be longer than its token's text; a normalizer may grow text */
    size_t cap = len + n * DSI_GRAMMAR_TOKEN_REF_LEN, o = 0;
    char *s = malloc(cap + 1);
    for (size_t i = 0; s && !rc && i < n; i++) {
        const char *b;
        size_t bl;
        bool added;
        if ((rc = dsi_tok_token_bytes(t, ids[i], &b, &bl, &added))) break;
        if (o + (added ? DSI_GRAMMAR_TOKEN_REF_LEN : bl) > cap) {
            rc = DSI_ERANGE;
        } else if (added) {
            rc = dsi_grammar_token_ref(ids[i], s + o);
            o += DSI_GRAMMAR_TOKEN_REF_LEN;
        } else {
            memcpy(s + o, b, bl);
            o += bl;
        }
    }
    free(ids);
    if (!s) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    if (rc) {
        free(s);
        return dsi_seterr(err, rc, "cannot write the template text for the grammar");
    }
    s[o] = 0;
    *out = s;
    return 0;
}

bool dsi_grammar_matcher_check(struct dsi_grammar_matcher *m, const char *bytes, size_t n) {
    return n == 0 || run_bytes(m, bytes, n) != NULL;
}

bool dsi_grammar_matcher_complete(const struct dsi_grammar_matcher *m) {
    return dsi__gstate_complete(m->g, &m->st);
}

bool dsi_grammar_matcher_finished(const struct dsi_grammar_matcher *m) { return dsi__gstate_finished(m->g, &m->st); }

static uint64_t fnv1a(const unsigned char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static int popcount_words(const uint32_t *w, int n) {
    int c = 0;
    for (int i = 0; i < n; i++)
        c += __builtin_popcount(w[i]);
    return c;
}

/* The walk itself: sets the bit of every token of tr whose bytes the state accepts. */
static void walk(struct dsi_grammar_matcher *m, const struct trie_nodes *tr, uint32_t *mask, int n_vocab) {
    struct dsi__gstate *lv = m->levels;
    dsi__gstate_copy(&lv[0], &m->st);
    uint32_t i = 0;
    while (i < tr->n_nodes) {
        int d = tr->depth[i];
        dsi__gstate_step(m->g, &lv[d - 1], tr->byte[i], &lv[d]);
        if (lv[d].n == 0) {
            i = tr->end[i];
            continue;
        }
        for (uint32_t k = 0; k < tr->tok_n[i]; k++) {
            int32_t id = tr->ids[tr->tok_first[i] + k];
            if (id < n_vocab) mask[id >> 5] |= 1u << (id & 31);
        }
        i++;
    }
}

/* Inside a string: the plain tokens that fit what is left, then a walk of the rest. */
static void string_mask(struct dsi_grammar_matcher *m, const struct dsi_token_trie *tr, uint32_t left,
                        uint32_t *mask, int n_vocab) {
    int words = (n_vocab + 31) / 32, tw = (tr->n_vocab + 31) / 32;
    int w = words < tw ? words : tw;
    const uint32_t *src = left < PLAIN_K ? tr->plain_le[left] : tr->plain;
    memcpy(mask, src, (size_t)w * sizeof *mask);
    if (left >= PLAIN_K)
        for (size_t i = 0; i < tr->n_long; i++)
            if (tr->long_cps[i] > left && tr->long_plain[i] < n_vocab)
                mask[tr->long_plain[i] >> 5] &= ~(1u << (tr->long_plain[i] & 31));
    if (n_vocab % 32 && n_vocab < tr->n_vocab) mask[words - 1] &= (1u << (n_vocab % 32)) - 1;
    walk(m, &tr->other, mask, n_vocab);
}

int dsi_grammar_mask(struct dsi_grammar_matcher *m, const struct dsi_token_trie *tr, uint32_t *mask, int n_vocab) {
    if (!m || !tr || !mask || n_vocab <= 0) return 0;
    int words = (n_vocab + 31) / 32;
    size_t key_len = dsi__gstate_key(&m->st, m->keybuf);
    uint64_t h = fnv1a(m->keybuf, key_len);
    for (int i = 0; i < m->n_cache; i++) {
        struct cache_entry *e = &m->cache[i];
        if (e->key_len == key_len && e->hash == h && e->words == words && !memcmp(e->key, m->keybuf, key_len)) {
            memcpy(mask, e->mask, (size_t)words * sizeof *mask);
            return e->count;
        }
    }
    memset(mask, 0, (size_t)words * sizeof *mask);
    if (m->n_levels < tr->all.max_depth + 1) {
        struct dsi__gstate *lv = realloc(m->levels, (size_t)(tr->all.max_depth + 1) * sizeof *lv);
        if (!lv) return 0; /* nothing allowed: the caller ends the sequence */
        m->levels = lv;
        m->n_levels = tr->all.max_depth + 1;
    }
    uint32_t left;
    if (dsi__gstate_in_string(m->g, &m->st, &left)) string_mask(m, tr, left, mask, n_vocab);
    else walk(m, &tr->all, mask, n_vocab);
    int count = popcount_words(mask, words);
    if (m->n_cache) {
        struct cache_entry *e = &m->cache[m->victim];
        if (!e->key) e->key = malloc(sizeof(struct dsi__gstate));
        if (e->words != words) {
            free(e->mask);
            e->mask = malloc((size_t)words * sizeof *e->mask);
            e->words = e->mask ? words : 0;
        }
        if (e->key && e->mask) {
            memcpy(e->key, m->keybuf, key_len);
            memcpy(e->mask, mask, (size_t)words * sizeof *mask);
            e->key_len = key_len;
            e->hash = h;
            e->count = count;
            m->victim = (m->victim + 1) % m->n_cache;
        } else {
            e->key_len = 0;
        }
    }
    return count;
}
