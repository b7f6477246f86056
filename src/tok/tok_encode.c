/*
 * tok_encode.c: text -> ids and ids -> text.
 *
 * Encoding follows HF tokenizers' pipeline step by step:
 *   1. added tokens written in the text are cut out first, leftmost-longest match
 *      (HF uses an Aho-Corasick automaton with LeftmostLongest); special ones only
 *      when allow_special, and never inside the "plain" spans of
 *      dsi__tok_encode_spans (a chat message's content: tok_chat.c);
 *   2. each stretch between them is normalized (NFC when the file asks for it),
 *   3. split by the pre-tokenizer regexes, one Split step after the other, each step
 *      working on the pieces of the previous one (a piece is the whole subject of the
 *      regex, so look-ahead never sees past its end, as in HF);
 *   4. each final piece is BPE-encoded (tok_bpe.c).
 * Pieces are ranges of one buffer; the Isolated behaviour (the one real files use)
 * streams pieces straight into the next step without building lists.
 *
 * Decoding concatenates the tokens' decoded bytes and converts them like Rust's
 * String::from_utf8_lossy, which is what HF's ByteLevel decoder ends with.
 */
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "tok_internal.h"

struct enc {
    const struct dsi_tokenizer *t;
    pcre2_match_data *md;
    int32_t *ids;
    size_t n_ids, cap;
    char **err;
};

struct piece {
    size_t start, end;
    bool match;
};

static int split_step(struct enc *e, size_t k, const char *s, size_t n);
static int encode_segment(struct enc *e, const char *s, size_t n);
static int find_added(const struct dsi_tokenizer *t, const char *s, size_t n, size_t i, bool allow_special,
                      const struct dsi__tok_added **hit);

uint32_t dsi__added_key(const char *s, size_t n) {
    return (uint32_t)(unsigned char)s[0] * 257u + (n >= 2 ? (unsigned char)s[1] : 256u);
}

/* Longest added token that starts at s[i], or NULL. */
static int find_added(const struct dsi_tokenizer *t, const char *s, size_t n, size_t i, bool allow_special,
                      const struct dsi__tok_added **hit) {
    *hit = NULL;
    /* Two buckets: tokens sharing the first two bytes, then one-byte tokens. */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 0 && i + 1 >= n) continue;
        uint32_t key = pass == 0 ? dsi__added_key(s + i, 2) : dsi__added_key(s + i, 1);
        size_t lo = 0, hi = t->n_added;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (t->added_key[mid] < key)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (size_t j = lo; j < t->n_added && t->added_key[j] == key; j++) {
            const struct dsi__tok_added *a = &t->added[j];
            if (a->special && !allow_special) continue;
            if (a->len <= n - i && memcmp(s + i, a->content, a->len) == 0) {
                *hit = a; /* sorted longest first within the bucket */
                return 0;
            }
        }
    }
    return 0;
}

static size_t utf8_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

/* Emits one piece to step k+1 (or to BPE after the last step). */
static inline int emit(struct enc *e, size_t k, const char *s, size_t n) {
    if (n == 0) return 0;
    if (k + 1 < e->t->n_splits) return split_step(e, k + 1, s, n);
    return dsi__bpe_word(e->t, s, n, &e->ids, &e->n_ids, &e->cap);
}

/* Applies split k to s[0..n): regex matches and the gaps between them become pieces
 * according to the step's behavior, as HF's NormalizedString::split does. */
static int split_step(struct enc *e, size_t k, const char *s, size_t n) {
    const struct dsi__tok_split *sp = &e->t->splits[k];
    struct piece *list = NULL;
    size_t nl = 0, capl = 0;
    size_t off = 0, prev = 0;
    int rc = 0;
    bool stream = sp->behavior == DSI__SPLIT_ISOLATED && !sp->invert;
    for (;;) {
        size_t ms, me;
        bool found = false;
        if (off <= n) {
            int r = pcre2_match(sp->re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, e->md, e->t->mctx);
            if (r >= 0) {
                PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
                ms = ov[0];
                me = ov[1];
                found = true;
            } else if (r != PCRE2_ERROR_NOMATCH) {
                PCRE2_UCHAR msg[120];
                pcre2_get_error_message(r, msg, sizeof msg);
                rc = dsi_seterr(e->err, DSI_EINVAL, "tokenizer: pre-tokenizer regex failed: %s", (char *)msg);
                goto out;
            }
        }
        struct piece add[2];
        size_t na = 0;
        if (!found) {
            if (prev < n) add[na++] = (struct piece){prev, n, false};
        } else {
            if (ms > prev) add[na++] = (struct piece){prev, ms, false};
            if (me > ms) add[na++] = (struct piece){ms, me, true};
            prev = me > prev ? me : prev;
            /* An empty match moves on by one character, like every regex iterator. */
            off = me > ms ? me : (me < n ? me + utf8_len((unsigned char)s[me]) : n + 1);
        }
        for (size_t i = 0; i < na; i++) {
            if (stream) {
                if ((rc = emit(e, k, s + add[i].start, add[i].end - add[i].start))) goto out;
                continue;
            }
            if (nl == capl) {
                size_t nc = capl ? capl * 2 : 16;
                struct piece *p = realloc(list, nc * sizeof *p);
                if (!p) {
                    rc = dsi_seterr(e->err, DSI_ENOMEM, "tokenizer: out of memory");
                    goto out;
                }
                list = p;
                capl = nc;
            }
            list[nl] = add[i];
            if (sp->invert) list[nl].match = !list[nl].match;
            nl++;
        }
        if (!found) break;
    }
    if (!stream) {
        /* Merge per behavior, then emit the non-empty, non-removed pieces. */
        size_t w = 0;
        for (size_t i = 0; i < nl; i++) {
            struct piece p = list[i];
            switch (sp->behavior) {
            case DSI__SPLIT_ISOLATED:
                p.match = false;
                list[w++] = p;
                break;
            case DSI__SPLIT_REMOVED:
                list[w++] = p;
                break;
            case DSI__SPLIT_CONTIGUOUS:
                if (p.match && w > 0 && list[w - 1].match)
                    list[w - 1].end = p.end;
                else
                    list[w++] = p;
                break;
            case DSI__SPLIT_MERGED_PREV:
                if (p.match && w > 0)
                    list[w - 1].end = p.end;
                else
                    list[w++] = (struct piece){p.start, p.end, false};
                break;
            case DSI__SPLIT_MERGED_NEXT:
                /* A match starts the piece that the following gap joins. */
                if (w > 0 && list[w - 1].match) {
                    list[w - 1].end = p.end;
                    list[w - 1].match = p.match;
                } else {
                    list[w++] = p;
                }
                break;
            }
        }
        for (size_t i = 0; i < w; i++) {
            if (sp->behavior == DSI__SPLIT_REMOVED && list[i].match) continue;
            if ((rc = emit(e, k, s + list[i].start, list[i].end - list[i].start))) goto out;
        }
    }
out:
    free(list);
    return rc;
}

static int encode_segment(struct enc *e, const char *s, size_t n) {
    if (n == 0) return 0;
    char *norm = NULL;
    size_t nn = 0;
    int rc;
    if (e->t->nfc) {
        if ((rc = dsi__nfc(s, n, &norm, &nn))) return dsi_seterr(e->err, rc, "tokenizer: NFC normalization failed");
        if (norm) {
            s = norm;
            n = nn;
        }
    }
    if (e->t->n_splits)
        rc = split_step(e, 0, s, n);
    else
        rc = dsi__bpe_word(e->t, s, n, &e->ids, &e->n_ids, &e->cap);
    if (rc && rc != DSI_EINVAL) rc = dsi_seterr(e->err, rc, "tokenizer: encode failed");
    free(norm);
    return rc;
}

int dsi_tok_encode(const struct dsi_tokenizer *t, const char *text, size_t len, bool allow_special,
                   int32_t **ids, size_t *n_ids, char **err) {
    struct dsi__span all = {0, len};
    return dsi__tok_encode_spans(t, text, len, allow_special ? NULL : &all, allow_special ? 0 : 1, NULL, 0, ids, n_ids,
                                 err);
}

/* Whether [i, j) touches plain span *k or a later one; *k skips spans that end
 * at or before i (i only grows during one encode). */
static bool in_plain(const struct dsi__span *sp, size_t n, size_t *k, size_t i, size_t j) {
    while (*k < n && sp[*k].end <= i) (*k)++;
    return *k < n && sp[*k].start < j;
}

/* The added token to cut out at text[i], if any, under the span rules. */
static const struct dsi__tok_added *added_at(const struct dsi_tokenizer *t, const char *text, size_t len, size_t i,
                                             const struct dsi__span *sp, size_t n_sp, size_t *k,
                                             const int32_t *deny, size_t n_deny) {
    const struct dsi__tok_added *a = NULL;
    bool plain = in_plain(sp, n_sp, k, i, i + 1);
    find_added(t, text, len, i, !plain, &a);
    /* A special token that starts in template text but runs into plain text is
     * not the template's: look again without specials. */
    if (a && a->special && in_plain(sp, n_sp, k, i, i + a->len)) {
        plain = true;
        find_added(t, text, len, i, false, &a);
    }
    for (size_t d = 0; a && plain && d < n_deny; d++)
        if (deny[d] == a->id) a = NULL;
    return a;
}

int dsi__tok_encode_spans(const struct dsi_tokenizer *t, const char *text, size_t len, const struct dsi__span *plain,
                          size_t n_plain, const int32_t *deny, size_t n_deny, int32_t **ids, size_t *n_ids,
                          char **err) {
    if (!t || (!text && len) || !ids || !n_ids) return dsi_seterr(err, DSI_EINVAL, "tokenizer: bad arguments");
    *ids = NULL;
    *n_ids = 0;
    if (len == 0) return 0; /* text may be NULL then; no pointer arithmetic on it */
    size_t bad = dsi__utf8_valid_prefix(text, len);
    if (bad != len) return dsi_seterr(err, DSI_EINVAL, "text is not valid UTF-8 (at byte %zu)", bad);
    struct enc e = {.t = t, .err = err};
    int rc = 0;
    if (t->n_splits) {
        /* One ovector pair: only the whole match is needed. */
        e.md = pcre2_match_data_create(1, NULL);
        if (!e.md) return dsi_seterr(err, DSI_ENOMEM, "tokenizer: out of memory");
    }
    /* Room for a typical ~4 bytes per token up front. */
    if ((rc = dsi__ids_reserve(&e.ids, &e.cap, len / 3 + 16))) {
        rc = dsi_seterr(err, rc, "tokenizer: out of memory");
        goto fail;
    }
    size_t seg = 0, k = 0;
    for (size_t i = 0; i < len;) {
        const struct dsi__tok_added *a = NULL;
        if (t->added_first[(unsigned char)text[i]]) a = added_at(t, text, len, i, plain, n_plain, &k, deny, n_deny);
        if (!a) {
            i++;
            continue;
        }
        size_t s0 = i, s1 = i + a->len;
        uint32_t cp;
        if (a->lstrip) /* the token swallows the whitespace before it */
            while (s0 > seg) {
                size_t b = s0 - 1;
                while (b > seg && ((unsigned char)text[b] & 0xC0) == 0x80) b--;
                dsi__utf8_decode(text + b, &cp);
                if (!dsi__is_unicode_space(cp)) break;
                s0 = b;
            }
        if (a->rstrip)
            while (s1 < len) {
                size_t n = dsi__utf8_decode(text + s1, &cp);
                if (!dsi__is_unicode_space(cp)) break;
                s1 += n;
            }
        if ((rc = encode_segment(&e, text + seg, s0 - seg))) goto fail;
        if ((rc = dsi__ids_reserve(&e.ids, &e.cap, e.n_ids + 1))) {
            rc = dsi_seterr(err, rc, "tokenizer: out of memory");
            goto fail;
        }
        e.ids[e.n_ids++] = a->id;
        seg = i = s1;
    }
    if ((rc = encode_segment(&e, text + seg, len - seg))) goto fail;
    pcre2_match_data_free(e.md);
    *ids = e.ids;
    *n_ids = e.n_ids;
    return 0;
fail:
    pcre2_match_data_free(e.md);
    free(e.ids);
    return rc;
}

int dsi_tok_decode(const struct dsi_tokenizer *t, const int32_t *ids, size_t n_ids, bool skip_special,
                   char **text, size_t *len, char **err) {
    if (!t || (!ids && n_ids) || !text) return dsi_seterr(err, DSI_EINVAL, "tokenizer: bad arguments");
    *text = NULL;
    if (len) *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || !(t->flags[id] & DSI__TOK_PRESENT))
            return dsi_seterr(err, DSI_ERANGE, "token id %d is not in the vocabulary (size %d)", id, t->n_ids);
        if (skip_special && (t->flags[id] & DSI__TOK_SPECIAL)) continue;
        if (total > SIZE_MAX / 4 - t->dec_len[id]) return dsi_seterr(err, DSI_EOVERFLOW, "tokenizer: decode too large");
        total += t->dec_len[id];
    }
    char *raw = malloc(total + 1);
    if (!raw) return dsi_seterr(err, DSI_ENOMEM, "tokenizer: out of memory");
    size_t o = 0;
    for (size_t i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        if (skip_special && (t->flags[id] & DSI__TOK_SPECIAL)) continue;
        memcpy(raw + o, t->dec_bytes + t->dec_off[id], t->dec_len[id]);
        o += t->dec_len[id];
    }
    char *out = NULL;
    size_t ol = 0, oc = 0;
    int rc;
    if (dsi__utf8_valid_prefix(raw, o) == o) {
        /* The common case: already valid, hand the buffer over. */
        out = raw;
        ol = o;
        raw = NULL;
    } else if ((rc = dsi__utf8_lossy_append(raw, o, &out, &ol, &oc))) {
        free(raw);
        return dsi_seterr(err, rc, "tokenizer: out of memory");
    }
    free(raw);
    out[ol] = 0;
    *text = out;
    if (len) *len = ol;
    return 0;
}

int dsi_tok_encode_prompt(const struct dsi_tokenizer *t, const char *text, size_t len, bool add_bos, int32_t **ids,
                          size_t *n_ids, char **err) {
    int32_t *v = NULL;
    size_t n = 0;
    int rc = dsi_tok_encode(t, text, len, false, &v, &n, err);
    if (rc) return rc;
    int32_t bos = add_bos ? dsi_tok_bos(t) : -1;
    if (bos >= 0) {
        int32_t *u = n < SIZE_MAX / sizeof *u - 1 ? malloc((n + 1) * sizeof *u) : NULL;
        if (!u) {
            free(v);
            return dsi_seterr(err, DSI_ENOMEM, "out of memory");
        }
        u[0] = bos;
        if (n) memcpy(u + 1, v, n * sizeof *v);
        free(v);
        v = u;
        n++;
    }
    *ids = v;
    *n_ids = n;
    return 0;
}
