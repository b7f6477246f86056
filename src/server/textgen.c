/*
 * textgen.c: turns the detokenized text of a generation into what the client
 * sees: DeepSeek reasoning ("...</think>" goes to reasoning_content) and stop
 * strings matched across token boundaries.
 *
 * Invariant: hold[] holds the shortest tail of the text that could still turn
 * into "</think>" (while reasoning) or a stop string (in content); everything
 * before it has been emitted. Since the tags and stop strings are valid UTF-8 and
 * start with a lead byte, cutting before a held tail never splits a character.
 * Only the content right after "</think>" loses its leading blank lines; any
 * other text goes out exactly as decoded.
 */
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "internal.h"

static const char THINK_END[] = "</think>";
static const char THINK_START[] = "<think>";

void dsi__textgen_init(struct dsi__textgen *t, const char *const *stops, int n_stops, bool reasoning) {
    memset(t, 0, sizeof *t);
    t->stops = stops;
    t->n_stops = n_stops;
    t->in_reasoning = reasoning;
    t->at_start = true;
}

void dsi__textgen_free(struct dsi__textgen *t) {
    if (!t) return;
    free(t->hold);
    t->hold = NULL;
    t->hold_len = t->hold_cap = 0;
}

/* Length of the longest suffix of s[0..n) that is a proper prefix of pat. */
static size_t partial_suffix(const char *s, size_t n, const char *pat) {
    size_t pl = strlen(pat);
    size_t max = n < pl - 1 ? n : pl - 1;
    for (size_t k = max; k > 0; k--)
        if (!memcmp(s + n - k, pat, k)) return k;
    return 0;
}

static const char *find(const char *s, size_t n, const char *pat) {
    size_t pl = strlen(pat);
    if (pl == 0 || pl > n) return NULL;
    for (size_t i = 0; i + pl <= n; i++)
        if (s[i] == pat[0] && !memcmp(s + i, pat, pl)) return s + i;
    return NULL;
}

static int emit_text(struct dsi__textgen *t, enum dsi__channel ch, const char *s, size_t n, dsi__emit_fn emit,
                     void *user) {
    /* Content after </think> starts with the blank lines the model writes after
     * the tag; DeepSeek's API drops them, and so do we. Anywhere else the text
     * is exactly the decoded tokens (a completion's leading space included). */
    if (t->at_start && t->after_think && ch == DSI__CH_CONTENT)
        while (n > 0 && (*s == '\n' || *s == '\r' || *s == ' ')) s++, n--;
    if (n == 0) return 0;
    t->at_start = false;
    return emit(user, ch, s, n);
}

static void drop_front(struct dsi__textgen *t, size_t k) {
    memmove(t->hold, t->hold + k, t->hold_len - k);
    t->hold_len -= k;
}

int dsi__textgen_push(struct dsi__textgen *t, const char *s, size_t n, dsi__emit_fn emit, void *user) {
    if (t->stopped) return 1;
    if (n > SIZE_MAX - t->hold_len - 1) return DSI_EOVERFLOW;
    if (t->hold_len + n + 1 > t->hold_cap) {
        size_t cap = (t->hold_len + n + 1) * 2;
        char *p = realloc(t->hold, cap);
        if (!p) return DSI_ENOMEM;
        t->hold = p;
        t->hold_cap = cap;
    }
    memcpy(t->hold + t->hold_len, s, n);
    t->hold_len += n;
    int rc;
    if (t->in_reasoning) {
        /* Some templates leave "<think>" for the model to write itself. */
        if (t->at_start && t->hold_len >= sizeof THINK_START - 1 &&
            !memcmp(t->hold, THINK_START, sizeof THINK_START - 1))
            drop_front(t, sizeof THINK_START - 1);
        if (t->at_start && t->hold_len < sizeof THINK_START - 1 &&
            !memcmp(t->hold, THINK_START, t->hold_len))
            return 0; /* could still be "<think>" */
        const char *end = find(t->hold, t->hold_len, THINK_END);
        if (!end) {
            size_t keep = partial_suffix(t->hold, t->hold_len, THINK_END);
            size_t out = t->hold_len - keep;
            if (out && (rc = emit_text(t, DSI__CH_REASONING, t->hold, out, emit, user))) return rc;
            drop_front(t, out);
            return 0;
        }
        size_t pre = (size_t)(end - t->hold);
        if (pre && (rc = emit_text(t, DSI__CH_REASONING, t->hold, pre, emit, user))) return rc;
        drop_front(t, pre + sizeof THINK_END - 1);
        t->in_reasoning = false;
        t->at_start = true;
        t->after_think = true;
        /* fall through: the rest is content */
    }
    /* Earliest stop string wins. */
    const char *first = NULL;
    for (int i = 0; i < t->n_stops; i++) {
        const char *p = find(t->hold, t->hold_len, t->stops[i]);
        if (p && (!first || p < first)) first = p;
    }
    if (first) {
        size_t pre = (size_t)(first - t->hold);
        if (pre && (rc = emit_text(t, DSI__CH_CONTENT, t->hold, pre, emit, user))) return rc;
        t->hold_len = 0;
        t->stopped = true;
        return 1;
    }
    size_t keep = 0;
    for (int i = 0; i < t->n_stops; i++) {
        size_t k = partial_suffix(t->hold, t->hold_len, t->stops[i]);
        if (k > keep) keep = k;
    }
    size_t out = t->hold_len - keep;
    if (out && (rc = emit_text(t, DSI__CH_CONTENT, t->hold, out, emit, user))) return rc;
    /* Leading blank lines dropped by emit_text are gone either way. */
    drop_front(t, out);
    return 0;
}

int dsi__textgen_finish(struct dsi__textgen *t, dsi__emit_fn emit, void *user) {
    if (t->stopped || t->hold_len == 0) return 0;
    int rc = emit_text(t, t->in_reasoning ? DSI__CH_REASONING : DSI__CH_CONTENT, t->hold, t->hold_len, emit, user);
    t->hold_len = 0;
    return rc;
}
