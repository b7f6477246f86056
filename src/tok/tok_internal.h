/*
 * tok_internal.h: the tokenizer's data layout, shared by the files of src/tok.
 *
 * Everything works on raw bytes: at load time every vocabulary string is mapped back
 * through the ByteLevel alphabet (U+0100 'Ā' -> byte 0x00, 'Ġ' -> ' ', ...), so the
 * encoder never builds the GPT-2 "unicode bytes" string and the decoder is a table
 * lookup. BPE runs on token ids: a word starts as one id per byte (byte_id[]) and
 * merges are a hash table from the pair (left id, right id) to (rank, merged id).
 *
 * Invariants after a successful load:
 *   - every id in [0, n_ids) with DSI__TOK_PRESENT has its decoded bytes at
 *     dec_bytes[dec_off[id] .. dec_off[id] + dec_len[id]);
 *   - every merge's ids are present vocabulary ids;
 *   - added tokens are sorted by content length, longest first (for longest match).
 * The struct is read-only after load, so one tokenizer serves many threads; the only
 * shared mutable part is the word cache, which has its own locks.
 */
#ifndef DSI_TOK_INTERNAL_H
#define DSI_TOK_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "dsinfer/tok.h"

#define DSI__TOK_MAX_IDS (1 << 24)      /* refuse vocabularies with ids beyond this */
#define DSI__TOK_MAX_SPLITS 16          /* pre-tokenizer steps */

enum {
    DSI__TOK_PRESENT = 1, /* the id has a token */
    DSI__TOK_ADDED = 2,   /* it is an added token */
    DSI__TOK_SPECIAL = 4, /* an added token marked special (skip_special drops it) */
};

enum dsi__split_behavior {
    DSI__SPLIT_ISOLATED,
    DSI__SPLIT_REMOVED,
    DSI__SPLIT_MERGED_PREV,
    DSI__SPLIT_MERGED_NEXT,
    DSI__SPLIT_CONTIGUOUS,
};

struct dsi__tok_split {
    pcre2_code *re;                    /* UTF + UCP, JIT-compiled when available */
    enum dsi__split_behavior behavior;
    bool invert;                       /* the pieces between matches are the "matches" */
};

/* A byte range [start, end) of a text. */
struct dsi__span {
    size_t start, end;
};

/* dsi_tok_encode with allow_special, except inside the `plain` spans (sorted,
 * disjoint): a special token is matched only when it lies wholly outside them,
 * and inside them the added tokens in `deny` are not matched either (they stay
 * text). dsi_tok_encode is this with no span, or one span over all the text. */
int dsi__tok_encode_spans(const struct dsi_tokenizer *t, const char *text, size_t len, const struct dsi__span *plain,
                          size_t n_plain, const int32_t *deny, size_t n_deny, int32_t **ids, size_t *n_ids,
                          char **err);

struct dsi__tok_added {
    char *content;                     /* malloc'd; raw UTF-8 as in the file */
    size_t len;
    int32_t id;
    bool special, lstrip, rstrip;
};

/* Open-addressing table: merge pair -> rank and merged id. One 16-byte slot holds
 * key and value, so a lookup costs one cache miss. */
struct dsi__merge_slot {
    uint64_t key;                      /* (left << 32 | right) + 1; 0 = empty slot */
    int32_t rank;
    int32_t merged;
};
struct dsi__merge_map {
    struct dsi__merge_slot *slots;
    size_t mask;                       /* capacity - 1, capacity a power of two */
};

/* Open-addressing table: byte string -> id (keys are the tokens' decoded bytes). */
struct dsi__str_map {
    uint32_t *slot;                    /* id + 1 per slot, 0 = empty */
    size_t mask;
};

/* Word cache: direct-mapped, sharded locks; maps a pre-token's bytes to its ids. */
#define DSI__CACHE_SHARDS 64
#define DSI__CACHE_WORD 24             /* longest cached word, bytes */
#define DSI__CACHE_IDS 8               /* most ids of a cached word */
struct dsi__cache_entry {
    uint8_t len, n_ids;
    char word[DSI__CACHE_WORD];
    int32_t ids[DSI__CACHE_IDS];
} __attribute__((aligned(64)));
struct dsi__word_cache {
    pthread_mutex_t lock[DSI__CACHE_SHARDS];
    struct dsi__cache_entry *entries;  /* n_entries, a power of two */
    size_t mask;
};

struct dsi_tokenizer {
    int32_t n_ids;                     /* max id + 1 */
    uint8_t *flags;                    /* (n_ids) DSI__TOK_* */
    char *dec_bytes;                   /* decoded bytes of all tokens, concatenated */
    uint32_t *dec_off;                 /* (n_ids) offsets into dec_bytes */
    uint32_t *dec_len;                 /* (n_ids) byte lengths */
    struct dsi__str_map vocab_map;     /* decoded bytes -> id, for vocabulary tokens written
                                          entirely in the ByteLevel alphabet */
    struct dsi__merge_map merges;
    int32_t byte_id[256];              /* id of the single-byte token, -1 = none */
    int32_t unk_id;                    /* -1 = none: unknown bytes are dropped, as HF does */
    bool fuse_unk;
    bool ignore_merges;                /* whole-word vocabulary hit wins before merges */

    struct dsi__tok_added *added;      /* sorted longest content first */
    size_t n_added;
    uint8_t added_first[256];          /* 1 if some added token starts with this byte */
    uint32_t *added_key;               /* (n_added) bucket key, see dsi__added_key() */

    struct dsi__tok_split splits[DSI__TOK_MAX_SPLITS];
    size_t n_splits;
    pcre2_match_context *mctx;         /* bounded match limits; read-only, shared */
    bool nfc;                          /* normalizer: NFC */

    int32_t bos_id, eos_id;
    char *bos_text, *eos_text;         /* token strings from tokenizer_config.json, or NULL */
    char *chat_template;               /* as in tokenizer_config.json, or NULL */
    enum dsi_chat_format chat_format;  /* resolved from chat_template */
    bool chat_r1_strip_think;          /* earlier assistant turns lose <think>..</think> */
    bool chat_gen_think;               /* the generation prompt opens <think>\n */
    bool chat_qwen3_think;             /* ChatML with Qwen3's reasoning_content rules */

    struct dsi__word_cache *cache;     /* NULL when disabled */
};

/* tok_bpe.c */
int dsi__merge_map_init(struct dsi__merge_map *m, size_t n);
void dsi__merge_map_free(struct dsi__merge_map *m);
/* Inserts or overwrites (a later duplicate wins, as in HF). */
void dsi__merge_map_put(struct dsi__merge_map *m, int32_t left, int32_t right, int32_t rank, int32_t merged);
bool dsi__merge_map_get(const struct dsi__merge_map *m, int32_t left, int32_t right, int32_t *rank,
                        int32_t *merged);
uint64_t dsi__hash_bytes(const void *p, size_t n);
/* Appends the ids of one pre-token (bytes) to *ids (grown as needed). */
int dsi__bpe_word(const struct dsi_tokenizer *t, const char *w, size_t n, int32_t **ids, size_t *n_ids,
                  size_t *cap);
int dsi__cache_create(struct dsi__word_cache **out, size_t n_entries);
void dsi__cache_destroy(struct dsi__word_cache *c);
/* Grows *ids so that it holds at least need entries. */
int dsi__ids_reserve(int32_t **ids, size_t *cap, size_t need);

/* tok_load.c */
/* Vocabulary id whose decoded bytes are exactly s[0..n), or -1. */
int32_t dsi__str_map_get(const struct dsi_tokenizer *t, const char *s, size_t n);

/* tok_utf8.c */
/* Length of the valid UTF-8 prefix of s (== n when all valid). */
size_t dsi__utf8_valid_prefix(const char *s, size_t n);
/* Decodes one code point at s (valid UTF-8 assumed); returns its byte length. */
size_t dsi__utf8_decode(const char *s, uint32_t *cp);
size_t dsi__utf8_encode(uint32_t cp, char *out);
/* Rust's String::from_utf8_lossy: each maximal invalid subpart -> U+FFFD. Appends to
 * a malloc'd buffer (*out, *len, *cap). */
int dsi__utf8_lossy_append(const char *s, size_t n, char **out, size_t *len, size_t *cap);
/* Bytes at the end of s that form an incomplete but so far valid UTF-8 sequence (0-3). */
size_t dsi__utf8_incomplete_tail(const char *s, size_t n);
bool dsi__is_unicode_space(uint32_t cp);

/* tok_nfc.c */
/* NFC of valid UTF-8 s; *out is NULL when s already is NFC (the common case), else a
 * malloc'd string of *out_len bytes. */
int dsi__nfc(const char *s, size_t n, char **out, size_t *out_len);

/* tok_encode.c */
/* Bucket key of an added token starting with bytes s[0..n): first byte and second
 * byte (or 256 when the token is one byte long). */
uint32_t dsi__added_key(const char *s, size_t n);

/* tok_chat.c */
void dsi__chat_detect(struct dsi_tokenizer *t);

#endif
