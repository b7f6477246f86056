/*
 * tok_stream.c: incremental detokenizer for streaming responses.
 *
 * Tokens are pushed one at a time; their decoded bytes are appended to a pending
 * buffer and everything up to the last complete character is handed out. Invalid
 * bytes become U+FFFD exactly as the full decode would replace them, and an
 * incomplete but still valid sequence at the end (at most 3 bytes) is held back
 * until the next token completes it or flush() gives up on it. So the chunks
 * concatenated equal dsi_tok_decode() of the same ids, and no chunk ever ends or
 * starts inside a character.
 */
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "tok_internal.h"

struct dsi_tok_stream {
    const struct dsi_tokenizer *t;
    bool skip_special;
    char *pend; /* pending bytes, at most 3 between calls */
    size_t n_pend, cap;
};

int dsi_tok_stream_create(const struct dsi_tokenizer *t, bool skip_special, struct dsi_tok_stream **out) {
    if (!t || !out) return DSI_EINVAL;
    struct dsi_tok_stream *s = calloc(1, sizeof *s);
    if (!s) return DSI_ENOMEM;
    s->t = t;
    s->skip_special = skip_special;
    *out = s;
    return 0;
}

/* Converts pend[0..upto) to lossy UTF-8 in a new buffer and keeps the rest. */
static int take(struct dsi_tok_stream *s, size_t upto, char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    if (upto == 0) return 0;
    char *o = NULL;
    size_t ol = 0, oc = 0;
    int rc = dsi__utf8_lossy_append(s->pend, upto, &o, &ol, &oc);
    if (rc) {
        free(o);
        return rc;
    }
    o[ol] = 0;
    memmove(s->pend, s->pend + upto, s->n_pend - upto);
    s->n_pend -= upto;
    *out = o;
    *out_len = ol;
    return 0;
}

int dsi_tok_stream_push(struct dsi_tok_stream *s, int32_t id, char **out, size_t *out_len) {
    if (!s || !out || !out_len) return DSI_EINVAL;
    *out = NULL;
    *out_len = 0;
    const struct dsi_tokenizer *t = s->t;
    if (id < 0) return DSI_ERANGE;
    /* A checkpoint's padding rows past the tokenizer's last id (and holes in its id
     * space) have no text: they decode to nothing, the stream goes on. */
    if (id >= t->n_ids || !(t->flags[id] & DSI__TOK_PRESENT)) return 0;
    if (s->skip_special && (t->flags[id] & DSI__TOK_SPECIAL)) return 0;
    size_t n = t->dec_len[id];
    if (s->n_pend + n > s->cap) {
        size_t nc = (s->n_pend + n) * 2 + 16;
        char *p = realloc(s->pend, nc);
        if (!p) return DSI_ENOMEM;
        s->pend = p;
        s->cap = nc;
    }
    memcpy(s->pend + s->n_pend, t->dec_bytes + t->dec_off[id], n);
    s->n_pend += n;
    return take(s, s->n_pend - dsi__utf8_incomplete_tail(s->pend, s->n_pend), out, out_len);
}

int dsi_tok_stream_flush(struct dsi_tok_stream *s, char **out, size_t *out_len) {
    if (!s || !out || !out_len) return DSI_EINVAL;
    return take(s, s->n_pend, out, out_len);
}

void dsi_tok_stream_destroy(struct dsi_tok_stream *s) {
    if (!s) return;
    free(s->pend);
    free(s);
}
