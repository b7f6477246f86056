/*
 * tok_load.c: builds a struct dsi_tokenizer from HF tokenizer.json (+ the optional
 * tokenizer_config.json).
 *
 * Supported, because DeepSeek and Qwen files use exactly this: model.type "BPE" with
 * vocab + merges (merges as "a b" strings or ["a", "b"] pairs), added_tokens,
 * normalizer null / NFC / Sequence of those, pre_tokenizer Split (regex or literal,
 * any behavior, invert) and ByteLevel (use_regex adds the GPT-2 split), in a Sequence
 * or alone, and the ByteLevel decoder. Everything else is refused with an error that
 * names the field, never guessed: a tokenizer that silently differs from HF would
 * feed the model a different prompt.
 *
 * The input is untrusted (fuzzed): every field's type and range is checked, ids must
 * lie in [0, DSI__TOK_MAX_IDS) and be dense enough to index arrays by id.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "dsinfer/err.h"
#include "dsinfer/fileio.h"
#include "dsinfer/log.h"
#include "tok_internal.h"

/* tokenizer.json of the largest models is ~10 MB; this bound only stops a
 * mistaken path from being read whole. */
#define TOK_MAX_FILE_BYTES ((size_t)1 << 30)

/* GPT-2's pre-tokenizer regex, used by ByteLevel when use_regex is true. */
static const char GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Temporary map from HF token strings to ids, used while loading only. */
struct hf_map {
    uint32_t *slot; /* id + 1 */
    size_t mask;
    const char **str; /* (n_ids) HF string of each vocabulary id, NULL = none */
};

struct loader {
    struct dsi_tokenizer *t;
    int16_t byte_of_cp[324];
    struct hf_map hf;
    char **err;
};

static int load_model(struct loader *L, const cJSON *model, const cJSON *added);
static int load_vocab(struct loader *L, const cJSON *vocab, const cJSON *added);
static int load_merges(struct loader *L, const cJSON *merges);
static int load_added(struct loader *L, const cJSON *added);
static int load_normalizer(struct loader *L, const cJSON *n, int depth);
static int load_pretok(struct loader *L, const cJSON *p, int depth, bool *byte_level);
static int load_decoder(struct loader *L, const cJSON *d, int depth);
static int add_split(struct loader *L, const char *pattern, size_t len, bool literal, const char *behavior,
                     bool invert);
static int load_config(struct loader *L, const char *json, size_t len);
static int get_id(struct loader *L, const cJSON *v, const char *what, int32_t *out);
static int hf_decode(const int16_t *byte_of_cp, const char *s, char *out, size_t *out_len, bool *in_alphabet);
static int32_t hf_get(const struct hf_map *m, const char *s, size_t n);
static int read_file(const char *path, char **buf, size_t *len, bool optional, char **err);

/* Byte-level alphabet: GPT-2 maps each byte to a printable code point. byte_of_cp
 * inverts it for code points < 324 (-1 = not in the alphabet). */
static void byte_alphabet(int16_t byte_of_cp[324]) {
    for (int i = 0; i < 324; i++) byte_of_cp[i] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        int cp = printable ? b : 256 + extra++;
        byte_of_cp[cp] = (int16_t)b;
    }
}

/* Decodes an HF token string through the ByteLevel alphabet (what HF's ByteLevel
 * decoder does: alphabet chars become their byte, other chars stay UTF-8). out must
 * hold strlen(s) bytes. */
static int hf_decode(const int16_t *byte_of_cp, const char *s, char *out, size_t *out_len, bool *in_alphabet) {
    size_t n = strlen(s), o = 0;
    if (dsi__utf8_valid_prefix(s, n) != n) return DSI_EFORMAT;
    *in_alphabet = true;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = dsi__utf8_decode(s + i, &cp);
        if (cp < 324 && byte_of_cp[cp] >= 0) {
            out[o++] = (char)byte_of_cp[cp];
        } else {
            memcpy(out + o, s + i, k);
            o += k;
            *in_alphabet = false;
        }
        i += k;
    }
    *out_len = o;
    return 0;
}

static int32_t hf_get(const struct hf_map *m, const char *s, size_t n) {
    size_t i = dsi__hash_bytes(s, n) & m->mask;
    for (;;) {
        uint32_t v = m->slot[i];
        if (!v) return -1;
        const char *k = m->str[v - 1];
        if (strlen(k) == n && memcmp(k, s, n) == 0) return (int32_t)(v - 1);
        i = (i + 1) & m->mask;
    }
}

int32_t dsi__str_map_get(const struct dsi_tokenizer *t, const char *s, size_t n) {
    if (!t->vocab_map.slot) return -1;
    size_t i = dsi__hash_bytes(s, n) & t->vocab_map.mask;
    for (;;) {
        uint32_t v = t->vocab_map.slot[i];
        if (!v) return -1;
        uint32_t id = v - 1;
        if (t->dec_len[id] == n && memcmp(t->dec_bytes + t->dec_off[id], s, n) == 0) return (int32_t)id;
        i = (i + 1) & t->vocab_map.mask;
    }
}

static int get_id(struct loader *L, const cJSON *v, const char *what, int32_t *out) {
    if (!cJSON_IsNumber(v)) return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: %s is not a number", what);
    double d = v->valuedouble;
    if (!(d >= 0 && d < DSI__TOK_MAX_IDS) || d != (double)(int32_t)d)
        return dsi_seterr(L->err, DSI_ERANGE, "tokenizer.json: %s is %g, want an integer in [0, %d)", what, d,
                          DSI__TOK_MAX_IDS);
    *out = (int32_t)d;
    return 0;
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

/* Sizes the id space, fills decoded bytes, flags and both string maps. */
static int load_vocab(struct loader *L, const cJSON *vocab, const cJSON *added) {
    struct dsi_tokenizer *t = L->t;
    int rc;
    int32_t id = -1, max_id = -1; /* id: set by get_id before each use (gcc -O3 cannot tell) */
    size_t count = 0, bytes = 0;
    if (!cJSON_IsObject(vocab)) return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: model.vocab is not an object");
    for (const cJSON *c = vocab->child; c; c = c->next) {
        if ((rc = get_id(L, c, "a model.vocab id", &id))) return rc;
        if (id > max_id) max_id = id;
        bytes += strlen(c->string);
        count++;
    }
    if (cJSON_IsArray(added)) {
        for (const cJSON *a = added->child; a; a = a->next) {
            const cJSON *content = cJSON_GetObjectItemCaseSensitive(a, "content");
            if ((rc = get_id(L, cJSON_GetObjectItemCaseSensitive(a, "id"), "an added_tokens id", &id))) return rc;
            if (id > max_id) max_id = id;
            if (cJSON_IsString(content)) bytes += strlen(content->valuestring);
            count++;
        }
    }
    if (max_id < 0) return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: the vocabulary is empty");
    /* Arrays are indexed by id: refuse files whose ids are mostly holes. */
    if ((size_t)max_id >= 2 * count + 1024)
        return dsi_seterr(L->err, DSI_ERANGE, "tokenizer.json: largest id %d but only %zu tokens (ids too sparse)",
                          max_id, count);
    if (bytes > UINT32_MAX / 2) return dsi_seterr(L->err, DSI_EOVERFLOW, "tokenizer.json: vocabulary too large");
    t->n_ids = max_id + 1;
    size_t n = (size_t)t->n_ids;
    t->flags = calloc(n, 1);
    t->dec_off = calloc(n, sizeof *t->dec_off);
    t->dec_len = calloc(n, sizeof *t->dec_len);
    t->dec_bytes = malloc(bytes + 1);
    L->hf.str = calloc(n, sizeof *L->hf.str);
    size_t hcap = pow2_at_least(n * 2);
    L->hf.slot = calloc(hcap, sizeof *L->hf.slot);
    L->hf.mask = hcap - 1;
    t->vocab_map.slot = calloc(hcap, sizeof *t->vocab_map.slot);
    t->vocab_map.mask = hcap - 1;
    if (!t->flags || !t->dec_off || !t->dec_len || !t->dec_bytes || !L->hf.str || !L->hf.slot || !t->vocab_map.slot)
        return dsi_seterr(L->err, DSI_ENOMEM, "tokenizer: out of memory for %zu ids", n);
    size_t used = 0;
    for (const cJSON *c = vocab->child; c; c = c->next) {
        id = (int32_t)c->valuedouble;
        const char *s = c->string;
        size_t sl = strlen(s), dl;
        bool alpha;
        if (t->flags[id] & DSI__TOK_PRESENT)
            return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: model.vocab has id %d twice", id);
        if (hf_get(&L->hf, s, sl) >= 0)
            return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: model.vocab has token \"%.40s\" twice", s);
        if (hf_decode(L->byte_of_cp, s, t->dec_bytes + used, &dl, &alpha))
            return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: vocab token %d is not valid UTF-8", id);
        t->flags[id] = DSI__TOK_PRESENT;
        t->dec_off[id] = (uint32_t)used;
        t->dec_len[id] = (uint32_t)dl;
        used += dl;
        L->hf.str[id] = s;
        size_t i = dsi__hash_bytes(s, sl) & L->hf.mask;
        while (L->hf.slot[i]) i = (i + 1) & L->hf.mask;
        L->hf.slot[i] = (uint32_t)id + 1;
        if (alpha) {
            /* Only alphabet tokens can come out of byte-level BPE, and only for them
             * is "decoded bytes" a one-to-one key. */
            const char *b = t->dec_bytes + t->dec_off[id];
            if (dsi__str_map_get(t, b, dl) < 0) {
                size_t j = dsi__hash_bytes(b, dl) & t->vocab_map.mask;
                while (t->vocab_map.slot[j]) j = (j + 1) & t->vocab_map.mask;
                t->vocab_map.slot[j] = (uint32_t)id + 1;
            }
        }
    }
    if (cJSON_IsArray(added)) {
        for (const cJSON *a = added->child; a; a = a->next) {
            const cJSON *content = cJSON_GetObjectItemCaseSensitive(a, "content");
            id = (int32_t)cJSON_GetObjectItemCaseSensitive(a, "id")->valuedouble;
            if (!cJSON_IsString(content) || !content->valuestring[0])
                return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: added token %d has no content string", id);
            if (t->flags[id] & DSI__TOK_ADDED)
                return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: added_tokens has id %d twice", id);
            size_t dl;
            bool alpha;
            if (hf_decode(L->byte_of_cp, content->valuestring, t->dec_bytes + used, &dl, &alpha))
                return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: added token %d is not valid UTF-8", id);
            /* HF's id_to_token looks at added tokens first, so they win over vocab. */
            t->flags[id] |= DSI__TOK_PRESENT | DSI__TOK_ADDED;
            t->dec_off[id] = (uint32_t)used;
            t->dec_len[id] = (uint32_t)dl;
            used += dl;
        }
    }
    return 0;
}

static int load_merges(struct loader *L, const cJSON *merges) {
    struct dsi_tokenizer *t = L->t;
    int rc;
    if (!cJSON_IsArray(merges)) return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: model.merges is not an array");
    size_t n = (size_t)cJSON_GetArraySize(merges);
    if (n >= INT32_MAX) return dsi_seterr(L->err, DSI_ERANGE, "tokenizer.json: too many merges");
    if ((rc = dsi__merge_map_init(&t->merges, n)))
        return dsi_seterr(L->err, rc, "tokenizer: out of memory for %zu merges", n);
    char *buf = NULL;
    size_t cap = 0;
    int32_t rank = 0;
    for (const cJSON *m = merges->child; m; m = m->next, rank++) {
        const char *a, *b;
        size_t al, bl;
        if (cJSON_IsString(m)) {
            /* "a b": exactly one space, as HF requires. */
            const char *s = m->valuestring, *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                free(buf);
                return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: merge %d \"%.40s\" is not \"a b\"", rank, s);
            }
            a = s;
            al = (size_t)(sp - s);
            b = sp + 1;
            bl = strlen(b);
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
                   cJSON_IsString(m->child->next)) {
            a = m->child->valuestring;
            al = strlen(a);
            b = m->child->next->valuestring;
            bl = strlen(b);
        } else {
            free(buf);
            return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: merge %d is neither \"a b\" nor [\"a\", \"b\"]",
                              rank);
        }
        if (al + bl + 1 > cap) {
            cap = (al + bl + 1) * 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                return dsi_seterr(L->err, DSI_ENOMEM, "tokenizer: out of memory");
            }
            buf = nb;
        }
        memcpy(buf, a, al);
        memcpy(buf + al, b, bl);
        int32_t ia = hf_get(&L->hf, a, al), ib = hf_get(&L->hf, b, bl), im = hf_get(&L->hf, buf, al + bl);
        if (ia < 0 || ib < 0 || im < 0) {
            buf[al + bl] = 0;
            rc = dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: merge %d names a token not in model.vocab (\"%.40s\")",
                            rank, ia < 0 ? a : ib < 0 ? b : buf);
            free(buf);
            return rc;
        }
        dsi__merge_map_put(&t->merges, ia, ib, rank, im);
    }
    free(buf);
    return 0;
}

static int cmp_added(const void *pa, const void *pb) {
    const struct dsi__tok_added *a = pa, *b = pb;
    uint32_t ka = dsi__added_key(a->content, a->len), kb = dsi__added_key(b->content, b->len);
    if (ka != kb) return ka < kb ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1; /* longest first */
    return a->id < b->id ? -1 : a->id > b->id;
}

static int load_added(struct loader *L, const cJSON *added) {
    struct dsi_tokenizer *t = L->t;
    if (!added || cJSON_IsNull(added)) return 0;
    if (!cJSON_IsArray(added)) return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: added_tokens is not an array");
    size_t n = (size_t)cJSON_GetArraySize(added);
    t->added = calloc(n ? n : 1, sizeof *t->added);
    t->added_key = calloc(n ? n : 1, sizeof *t->added_key);
    if (!t->added || !t->added_key) return dsi_seterr(L->err, DSI_ENOMEM, "tokenizer: out of memory");
    for (const cJSON *a = added->child; a; a = a->next) {
        struct dsi__tok_added *x = &t->added[t->n_added];
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(a, "special");
        const cJSON *ls = cJSON_GetObjectItemCaseSensitive(a, "lstrip");
        const cJSON *rs = cJSON_GetObjectItemCaseSensitive(a, "rstrip");
        const cJSON *sw = cJSON_GetObjectItemCaseSensitive(a, "single_word");
        const char *c = cJSON_GetObjectItemCaseSensitive(a, "content")->valuestring; /* checked in load_vocab */
        if ((sp && !cJSON_IsBool(sp)) || (ls && !cJSON_IsBool(ls)) || (rs && !cJSON_IsBool(rs)) ||
            (sw && !cJSON_IsBool(sw)))
            return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: added token \"%.40s\" has a non-boolean flag", c);
        if (cJSON_IsTrue(sw))
            return dsi_seterr(L->err, DSI_EUNSUPPORTED,
                              "tokenizer.json: added token \"%.40s\": single_word is not supported", c);
        x->id = (int32_t)cJSON_GetObjectItemCaseSensitive(a, "id")->valuedouble;
        x->len = strlen(c);
        x->content = strdup(c);
        if (!x->content) return dsi_seterr(L->err, DSI_ENOMEM, "tokenizer: out of memory");
        x->special = cJSON_IsTrue(sp);
        x->lstrip = cJSON_IsTrue(ls);
        x->rstrip = cJSON_IsTrue(rs);
        if (x->special) t->flags[x->id] |= DSI__TOK_SPECIAL;
        t->added_first[(unsigned char)c[0]] = 1;
        t->n_added++;
    }
    qsort(t->added, t->n_added, sizeof *t->added, cmp_added);
    for (size_t i = 0; i < t->n_added; i++) t->added_key[i] = dsi__added_key(t->added[i].content, t->added[i].len);
    return 0;
}

static int load_model(struct loader *L, const cJSON *model, const cJSON *added) {
    struct dsi_tokenizer *t = L->t;
    int rc;
    if (!cJSON_IsObject(model)) return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: no \"model\" object");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (type && !(cJSON_IsString(type) && strcmp(type->valuestring, "BPE") == 0))
        return dsi_seterr(L->err, DSI_EUNSUPPORTED, "tokenizer.json: model.type %s is not supported (only BPE)",
                          cJSON_IsString(type) ? type->valuestring : "(not a string)");
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout))
        return dsi_seterr(L->err, DSI_EUNSUPPORTED, "tokenizer.json: BPE dropout is not supported");
    static const char *const empty_only[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, empty_only[i]);
        if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && !v->valuestring[0]))
            return dsi_seterr(L->err, DSI_EUNSUPPORTED, "tokenizer.json: model.%s is not supported", empty_only[i]);
    }
    static const char *const bools[] = {"fuse_unk", "byte_fallback", "ignore_merges"};
    for (size_t i = 0; i < 3; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, bools[i]);
        if (v && !cJSON_IsBool(v) && !cJSON_IsNull(v))
            return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: model.%s is not a boolean", bools[i]);
    }
    t->fuse_unk = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "fuse_unk"));
    t->ignore_merges = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added))
        return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: added_tokens is not an array");
    if ((rc = load_vocab(L, cJSON_GetObjectItemCaseSensitive(model, "vocab"), added))) return rc;
    if ((rc = load_merges(L, cJSON_GetObjectItemCaseSensitive(model, "merges")))) return rc;
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    t->unk_id = -1;
    if (unk && !cJSON_IsNull(unk)) {
        if (!cJSON_IsString(unk)) return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: model.unk_token is not a string");
        t->unk_id = hf_get(&L->hf, unk->valuestring, strlen(unk->valuestring));
        if (t->unk_id < 0)
            return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: model.unk_token \"%.40s\" is not in the vocabulary",
                              unk->valuestring);
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = dsi__str_map_get(t, &c, 1);
    }
    return 0;
}

static int load_normalizer(struct loader *L, const cJSON *n, int depth) {
    if (!n || cJSON_IsNull(n)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(n, "type");
    if (!cJSON_IsObject(n) || !cJSON_IsString(type) || depth > 4)
        return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: normalizer has no type");
    if (strcmp(type->valuestring, "NFC") == 0) {
        L->t->nfc = true;
        return 0;
    }
    if (strcmp(type->valuestring, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (!cJSON_IsArray(list))
            return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: normalizer Sequence has no normalizers array");
        for (const cJSON *c = list->child; c; c = c->next) {
            int rc = load_normalizer(L, c, depth + 1);
            if (rc) return rc;
        }
        return 0;
    }
    return dsi_seterr(L->err, DSI_EUNSUPPORTED, "tokenizer.json: normalizer %.40s is not supported", type->valuestring);
}

static int add_split(struct loader *L, const char *pattern, size_t len, bool literal, const char *behavior,
                     bool invert) {
    struct dsi_tokenizer *t = L->t;
    static const struct {
        const char *name;
        enum dsi__split_behavior b;
    } names[] = {{"Isolated", DSI__SPLIT_ISOLATED},
                 {"Removed", DSI__SPLIT_REMOVED},
                 {"MergedWithPrevious", DSI__SPLIT_MERGED_PREV},
                 {"MergedWithNext", DSI__SPLIT_MERGED_NEXT},
                 {"Contiguous", DSI__SPLIT_CONTIGUOUS}};
    size_t k = 0;
    while (k < 5 && strcmp(names[k].name, behavior) != 0) k++;
    if (k == 5) return dsi_seterr(L->err, DSI_EUNSUPPORTED, "tokenizer.json: Split behavior %.40s is unknown", behavior);
    if (t->n_splits >= DSI__TOK_MAX_SPLITS)
        return dsi_seterr(L->err, DSI_EUNSUPPORTED, "tokenizer.json: more than %d pre-tokenizer splits",
                          DSI__TOK_MAX_SPLITS);
    int ec;
    PCRE2_SIZE off;
    /* PCRE2_LITERAL refuses PCRE2_UCP (meaningless for a literal anyway). */
    uint32_t opts = PCRE2_UTF | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    if (dsi__utf8_valid_prefix(pattern, len) != len)
        return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: Split pattern is not valid UTF-8");
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &ec, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: Split regex does not compile at offset %zu: %s",
                          (size_t)off, (char *)msg);
    }
    /* JIT is a speed-up only: pcre2_match falls back to the interpreter without it. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    t->splits[t->n_splits++] = (struct dsi__tok_split){re, names[k].b, invert};
    return 0;
}

static int load_pretok(struct loader *L, const cJSON *p, int depth, bool *byte_level) {
    if (!p || cJSON_IsNull(p)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
    if (!cJSON_IsObject(p) || !cJSON_IsString(type) || depth > 4)
        return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: pre_tokenizer has no type");
    const char *ty = type->valuestring;
    if (strcmp(ty, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list))
            return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: pre_tokenizer Sequence has no pretokenizers array");
        for (const cJSON *c = list->child; c; c = c->next) {
            int rc = load_pretok(L, c, depth + 1, byte_level);
            if (rc) return rc;
        }
        return 0;
    }
    if (strcmp(ty, "Split") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        const cJSON *inv = cJSON_GetObjectItemCaseSensitive(p, "invert");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
        const cJSON *s = cJSON_IsString(re) ? re : lit;
        if (!cJSON_IsObject(pat) || !cJSON_IsString(s))
            return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: Split pattern is not {\"Regex\"|\"String\": text}");
        if (!cJSON_IsString(beh)) return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: Split behavior is not a string");
        if (inv && !cJSON_IsBool(inv)) return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer.json: Split invert is not a boolean");
        if (*byte_level)
            return dsi_seterr(L->err, DSI_EUNSUPPORTED, "tokenizer.json: a Split after ByteLevel is not supported");
        return add_split(L, s->valuestring, strlen(s->valuestring), s == lit, beh->valuestring, cJSON_IsTrue(inv));
    }
    if (strcmp(ty, "ByteLevel") == 0) {
        const cJSON *aps = cJSON_GetObjectItemCaseSensitive(p, "add_prefix_space");
        const cJSON *ur = cJSON_GetObjectItemCaseSensitive(p, "use_regex");
        if (cJSON_IsTrue(aps))
            return dsi_seterr(L->err, DSI_EUNSUPPORTED, "tokenizer.json: ByteLevel add_prefix_space is not supported");
        if (*byte_level) return dsi_seterr(L->err, DSI_EUNSUPPORTED, "tokenizer.json: ByteLevel appears twice");
        *byte_level = true;
        /* use_regex defaults to true in HF. */
        if (!ur || cJSON_IsTrue(ur)) return add_split(L, GPT2_REGEX, sizeof GPT2_REGEX - 1, false, "Isolated", false);
        return 0;
    }
    return dsi_seterr(L->err, DSI_EUNSUPPORTED, "tokenizer.json: pre_tokenizer %.40s is not supported", ty);
}

static int load_decoder(struct loader *L, const cJSON *d, int depth) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(d, "type");
    if (!cJSON_IsObject(d) || !cJSON_IsString(type) || depth > 4)
        return dsi_seterr(L->err, DSI_EUNSUPPORTED, "tokenizer.json: decoder must be ByteLevel");
    if (strcmp(type->valuestring, "ByteLevel") == 0) return 0;
    if (strcmp(type->valuestring, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders");
        if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) != 1)
            return dsi_seterr(L->err, DSI_EUNSUPPORTED, "tokenizer.json: decoder must be ByteLevel");
        return load_decoder(L, list->child, depth + 1);
    }
    return dsi_seterr(L->err, DSI_EUNSUPPORTED, "tokenizer.json: decoder %.40s is not supported (only ByteLevel)",
                      type->valuestring);
}

/* bos_token / eos_token: a string, an AddedToken object {"content": ...}, or null. */
static int config_token(struct loader *L, const cJSON *cfg, const char *key, char **text, int32_t *id) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    *id = -1;
    if (!v || cJSON_IsNull(v)) return 0;
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (!cJSON_IsString(v))
        return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer_config.json: %s is not a string or token object", key);
    *text = strdup(v->valuestring);
    if (!*text) return dsi_seterr(L->err, DSI_ENOMEM, "tokenizer: out of memory");
    *id = dsi_tok_lookup(L->t, *text);
    if (*id < 0) dsi_log(DSI_LOG_WARN, "tok", "tokenizer_config.json: %s \"%.40s\" is not a token", key, *text);
    return 0;
}

static int load_config(struct loader *L, const char *json, size_t len) {
    struct dsi_tokenizer *t = L->t;
    int rc;
    if (!json) return 0;
    const char *end = NULL;
    cJSON *cfg = cJSON_ParseWithLengthOpts(json, len, &end, false);
    if (!cfg)
        return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer_config.json: not valid JSON (near byte %zu)",
                          end && end >= json ? (size_t)(end - json) : (size_t)0);
    if (!cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer_config.json: not a JSON object");
    }
    if ((rc = config_token(L, cfg, "bos_token", &t->bos_text, &t->bos_id)) ||
        (rc = config_token(L, cfg, "eos_token", &t->eos_text, &t->eos_id))) {
        cJSON_Delete(cfg);
        return rc;
    }
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    if (cJSON_IsArray(ct)) {
        /* Newer files list named templates; "default" is the chat one. */
        const cJSON *pick = NULL;
        for (const cJSON *c = ct->child; c; c = c->next) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(c, "name");
            if (cJSON_IsString(name) && strcmp(name->valuestring, "default") == 0)
                pick = cJSON_GetObjectItemCaseSensitive(c, "template");
        }
        ct = pick;
    }
    if (ct && !cJSON_IsNull(ct)) {
        if (!cJSON_IsString(ct)) {
            cJSON_Delete(cfg);
            return dsi_seterr(L->err, DSI_EFORMAT, "tokenizer_config.json: chat_template is not a string");
        }
        t->chat_template = strdup(ct->valuestring);
        if (!t->chat_template) {
            cJSON_Delete(cfg);
            return dsi_seterr(L->err, DSI_ENOMEM, "tokenizer: out of memory");
        }
    }
    cJSON_Delete(cfg);
    return 0;
}

int dsi_tok_load_mem(const char *tokenizer_json, size_t len, const char *config_json, size_t config_len,
                     struct dsi_tokenizer **out, char **err) {
    int rc;
    if (!tokenizer_json || !out) return dsi_seterr(err, DSI_EINVAL, "tokenizer: no input");
    *out = NULL;
    struct dsi_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return dsi_seterr(err, DSI_ENOMEM, "tokenizer: out of memory");
    t->bos_id = t->eos_id = t->unk_id = -1;
    struct loader L = {.t = t, .err = err};
    byte_alphabet(L.byte_of_cp);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(tokenizer_json, len, &end, false);
    if (!root) {
        rc = dsi_seterr(err, DSI_EFORMAT, "tokenizer.json: not valid JSON (near byte %zu of %zu; truncated?)",
                        end && end >= tokenizer_json ? (size_t)(end - tokenizer_json) : (size_t)0, len);
        goto fail;
    }
    if (!cJSON_IsObject(root)) {
        rc = dsi_seterr(err, DSI_EFORMAT, "tokenizer.json: not a JSON object");
        goto fail;
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    bool byte_level = false;
    if ((rc = load_model(&L, cJSON_GetObjectItemCaseSensitive(root, "model"), added))) goto fail;
    if ((rc = load_added(&L, added))) goto fail;
    if ((rc = load_normalizer(&L, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), 0))) goto fail;
    if ((rc = load_pretok(&L, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), 0, &byte_level))) goto fail;
    if (!byte_level) {
        rc = dsi_seterr(err, DSI_EUNSUPPORTED, "tokenizer.json: no ByteLevel pre-tokenizer (only byte-level BPE is supported)");
        goto fail;
    }
    if ((rc = load_decoder(&L, cJSON_GetObjectItemCaseSensitive(root, "decoder"), 0))) goto fail;
    t->mctx = pcre2_match_context_create(NULL);
    if (!t->mctx) {
        rc = dsi_seterr(err, DSI_ENOMEM, "tokenizer: out of memory");
        goto fail;
    }
    /* Bound backtracking so that a hostile regex fails instead of hanging. */
    pcre2_set_match_limit(t->mctx, 10 * 1000 * 1000);
    pcre2_set_depth_limit(t->mctx, 100 * 1000);
    if ((rc = load_config(&L, config_json, config_len))) goto fail;
    dsi__chat_detect(t);
    if ((rc = dsi__cache_create(&t->cache, 1 << 13))) {
        rc = dsi_seterr(err, rc, "tokenizer: out of memory");
        goto fail;
    }
    cJSON_Delete(root);
    free(L.hf.slot);
    free(L.hf.str);
    *out = t;
    return 0;
fail:
    cJSON_Delete(root);
    free(L.hf.slot);
    free(L.hf.str);
    dsi_tok_free(t);
    return rc;
}

/* Reads path whole through core/fileio; a missing optional file gives *buf NULL
 * and success. Any other failure (ENOMEM included) is an error: a tokenizer
 * parsed from part of its file would silently differ from HF's. */
static int read_file(const char *path, char **buf, size_t *len, bool optional, char **err) {
    *buf = NULL;
    *len = 0;
    char *rerr = NULL;
    int rc = dsi_read_file(path, TOK_MAX_FILE_BYTES, buf, len, &rerr);
    if (rc == DSI_ENOENT && optional)
        rc = 0;
    else if (rc)
        dsi_seterr(err, rc, "tokenizer: %s", rerr ? rerr : path);
    free(rerr);
    return rc;
}

int dsi_tok_load(const char *dir, struct dsi_tokenizer **out, char **err) {
    if (!dir || !out) return dsi_seterr(err, DSI_EINVAL, "tokenizer: no model directory");
    size_t dl = strlen(dir);
    char *p1 = malloc(dl + 32), *p2 = malloc(dl + 32);
    char *tj = NULL, *cj = NULL;
    size_t tl, cl;
    int rc = DSI_ENOMEM;
    if (!p1 || !p2) goto done;
    snprintf(p1, dl + 32, "%s/tokenizer.json", dir);
    snprintf(p2, dl + 32, "%s/tokenizer_config.json", dir);
    if ((rc = read_file(p1, &tj, &tl, false, err))) goto done;
    if ((rc = read_file(p2, &cj, &cl, true, err))) goto done;
    rc = dsi_tok_load_mem(tj, tl, cj, cl, out, err);
done:
    if (rc == DSI_ENOMEM) dsi_seterr(err, rc, "tokenizer: out of memory");
    free(tj);
    free(cj);
    free(p1);
    free(p2);
    return rc;
}

void dsi_tok_free(struct dsi_tokenizer *t) {
    if (!t) return;
    free(t->flags);
    free(t->dec_bytes);
    free(t->dec_off);
    free(t->dec_len);
    free(t->vocab_map.slot);
    dsi__merge_map_free(&t->merges);
    for (size_t i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    free(t->added_key);
    for (size_t i = 0; i < t->n_splits; i++) pcre2_code_free(t->splits[i].re);
    pcre2_match_context_free(t->mctx);
    free(t->bos_text);
    free(t->eos_text);
    free(t->chat_template);
    dsi__cache_destroy(t->cache);
    free(t);
}

int dsi_tok_vocab_size(const struct dsi_tokenizer *t) { return t ? t->n_ids : 0; }
int32_t dsi_tok_bos(const struct dsi_tokenizer *t) { return t ? t->bos_id : -1; }
int32_t dsi_tok_eos(const struct dsi_tokenizer *t) { return t ? t->eos_id : -1; }

int dsi_tok_token_bytes(const struct dsi_tokenizer *t, int32_t id, const char **bytes, size_t *len,
                        bool *is_added) {
    if (!t || id < 0 || id >= t->n_ids || !(t->flags[id] & DSI__TOK_PRESENT)) return DSI_ERANGE;
    *bytes = t->dec_bytes + t->dec_off[id];
    *len = t->dec_len[id];
    if (is_added) *is_added = (t->flags[id] & DSI__TOK_ADDED) != 0;
    return 0;
}

int32_t dsi_tok_lookup(const struct dsi_tokenizer *t, const char *token) {
    if (!t || !token) return -1;
    size_t n = strlen(token);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && memcmp(t->added[i].content, token, n) == 0) return t->added[i].id;
    /* Vocabulary tokens are looked up by their HF spelling ("Ġthe"). */
    char *raw = malloc(n + 1);
    size_t rl;
    bool alpha;
    int32_t id = -1;
    int16_t byte_of_cp[324];
    byte_alphabet(byte_of_cp);
    if (raw && hf_decode(byte_of_cp, token, raw, &rl, &alpha) == 0 && alpha) id = dsi__str_map_get(t, raw, rl);
    free(raw);
    return id;
}
