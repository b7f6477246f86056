/*
 * toolscan.c: the model's tool calls found in its streamed answer (tool_choice
 * auto), in the chat format's native syntax:
 *   tags      <tool_call>{"name": NAME, "arguments": {...}}</tool_call>, one block
 *             per call (ChatML as Qwen writes it, and dsinfer's prompt form);
 *   deepseek  <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
 *             ```json {...} ```<｜tool▁call▁end｜> ... <｜tool▁calls▁end｜>
 *             (DeepSeek-V3/R1; the markers are tokens the decoder keeps).
 * Part of the pure request/response code (fuzzed: tests/fuzz/fuzz_tool_calls.c).
 *
 * Text is pushed as it is decoded. Before the first call opens, it goes out as
 * content at once, except a tail that may still become an opening marker and the
 * blanks before it (held: the answer's text before its calls loses its trailing
 * blanks). Once a call opens, each call is handed over as soon as its closing
 * marker arrives. A block that does not hold a call (bad JSON, no name, arguments
 * not an object), text between or after calls and a call cut off at the end go
 * out as content, so nothing the model wrote is lost; blanks and the deepseek
 * section markers between calls are dropped, and so are the blanks that open the
 * text after a call.
 *
 * Invariant: hold never holds a complete opening marker while !in_calls, and
 * while in_calls it starts at a call's opening marker or holds less than one.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const char TAG_OPEN[] = "<tool_call>", TAG_CLOSE[] = "</tool_call>";
static const char DS_SECTION[] = "<｜tool▁calls▁begin｜>", DS_SECTION_END[] = "<｜tool▁calls▁end｜>";
static const char DS_OPEN[] = "<｜tool▁call▁begin｜>", DS_CLOSE[] = "<｜tool▁call▁end｜>";
static const char DS_SEP[] = "<｜tool▁sep｜>";

#define LIT(s) (s), (sizeof(s) - 1)

void dsi__toolscan_init(struct dsi__toolscan *ts, enum dsi__tool_syntax syn) {
    memset(ts, 0, sizeof *ts);
    ts->syn = syn;
}

void dsi__toolscan_free(struct dsi__toolscan *ts) { dsi__sbuf_free(&ts->hold); }

static bool is_blank(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

static const char *find(const char *p, size_t n, const char *m, size_t mn) { return n ? memmem(p, n, m, mn) : NULL; }

/* The first opening marker in p[0..n): where, and its length (0: none). */
static const char *first_open(const struct dsi__toolscan *ts, const char *p, size_t n, size_t *len) {
    if (ts->syn == DSI__TOOLS_TAGS) {
        *len = sizeof TAG_OPEN - 1;
        return find(p, n, LIT(TAG_OPEN));
    }
    const char *a = find(p, n, LIT(DS_SECTION)), *b = find(p, n, LIT(DS_OPEN));
    if (a && (!b || a < b)) {
        *len = sizeof DS_SECTION - 1;
        return a;
    }
    *len = sizeof DS_OPEN - 1;
    return b;
}

/* Length of the longest tail of p[0..n) that is a proper prefix of marker m. */
static size_t prefix_tail(const char *p, size_t n, const char *m, size_t mn) {
    for (size_t k = mn - 1 < n ? mn - 1 : n; k > 0; k--)
        if (!memcmp(p + n - k, m, k)) return k;
    return 0;
}

static size_t open_tail(const struct dsi__toolscan *ts, const char *p, size_t n) {
    if (ts->syn == DSI__TOOLS_TAGS) return prefix_tail(p, n, LIT(TAG_OPEN));
    size_t a = prefix_tail(p, n, LIT(DS_SECTION)), b = prefix_tail(p, n, LIT(DS_OPEN));
    return a > b ? a : b;
}

static void drop(struct dsi__sbuf *b, size_t k) {
    if (k == 0) return;
    memmove(b->p, b->p + k, b->len - k);
    b->len -= k;
}

/* A block's call: {"name": NAME, "arguments": {...}} (tags) or
 * TYPE<｜tool▁sep｜>NAME\n```json\n{...}\n``` (deepseek). Returns 0 with the
 * call handed to cb, 1 when the body holds no call, or cb's error. */
static int parse_call(const struct dsi__toolscan *ts, const char *body, size_t n, const struct dsi__toolscan_cb *cb) {
    cJSON *j = NULL, *args = NULL;
    char *name = NULL;
    if (ts->syn == DSI__TOOLS_TAGS) {
        j = cJSON_ParseWithLength(body, n);
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(j, "name");
        args = cJSON_GetObjectItemCaseSensitive(j, "arguments");
        if (cJSON_IsString(nm)) name = strdup(nm->valuestring);
        args = cJSON_IsObject(args) ? cJSON_Duplicate(args, true) : NULL;
    } else {
        const char *sep = find(body, n, LIT(DS_SEP));
        const char *nm = sep ? sep + sizeof DS_SEP - 1 : NULL, *end = body + n;
        const char *nl = nm ? memchr(nm, '\n', (size_t)(end - nm)) : NULL;
        if (nl) {
            const char *a = nl + 1, *z = end;
            while (a < z && is_blank(*a)) a++;
            if ((size_t)(z - a) >= 7 && !memcmp(a, "```json", 7)) a += 7;
            else if ((size_t)(z - a) >= 3 && !memcmp(a, "```", 3)) a += 3;
            while (z > a && is_blank(z[-1])) z--;
            if ((size_t)(z - a) >= 3 && !memcmp(z - 3, "```", 3)) z -= 3;
            const char *ne = nl;
            while (ne > nm && is_blank(ne[-1])) ne--;
            while (nm < ne && is_blank(*nm)) nm++;
            if ((name = malloc((size_t)(ne - nm) + 1))) {
                memcpy(name, nm, (size_t)(ne - nm));
                name[ne - nm] = 0;
            }
            args = cJSON_ParseWithLength(a, (size_t)(z - a));
            if (!cJSON_IsObject(args)) {
                cJSON_Delete(args);
                args = NULL;
            }
        }
    }
    cJSON_Delete(j);
    int rc = 1;
    char *a = args ? cJSON_PrintUnformatted(args) : NULL;
    if (name && *name && strlen(name) <= 64 && a) rc = cb->call(cb->user, name, a);
    else if (args && name && !a) rc = -1; /* out of memory printing */
    free(a);
    free(name);
    cJSON_Delete(args);
    return rc;
}

/* Before the first call: content out, up to what may still open one. */
static int scan_text(struct dsi__toolscan *ts, const struct dsi__toolscan_cb *cb) {
    struct dsi__sbuf *h = &ts->hold;
    size_t mlen = 0;
    const char *o = first_open(ts, h->p, h->len, &mlen);
    size_t end = o ? (size_t)(o - h->p) : h->len - open_tail(ts, h->p, h->len);
    size_t out = end;
    while (out > 0 && is_blank(h->p[out - 1])) out--;
    int rc = out ? cb->content(cb->user, h->p, out) : 0;
    if (rc) return rc;
    if (!o) {
        drop(h, out);
        return 0;
    }
    /* a deepseek section marker goes; a call's opening marker stays for scan_calls */
    bool section = ts->syn == DSI__TOOLS_DEEPSEEK && mlen == sizeof DS_SECTION - 1;
    drop(h, end + (section ? mlen : 0));
    ts->in_calls = ts->after_call = true;
    return 0;
}

/* Length of the deepseek section markers (and blanks) at p, 0: none. */
static size_t section_marks(const char *p, size_t n) {
    size_t k = 0, last = 0;
    for (;;) {
        while (k < n && is_blank(p[k])) k++;
        if (n - k >= sizeof DS_SECTION - 1 && !memcmp(p + k, LIT(DS_SECTION))) k += sizeof DS_SECTION - 1;
        else if (n - k >= sizeof DS_SECTION_END - 1 && !memcmp(p + k, LIT(DS_SECTION_END))) k += sizeof DS_SECTION_END - 1;
        else return last;
        last = k;
    }
}

/* True when p[0..n) (n > 0) may still grow into a marker that continues the calls. */
static bool may_be_marker(const struct dsi__toolscan *ts, const char *p, size_t n) {
    bool tags = ts->syn == DSI__TOOLS_TAGS;
    const char *open = tags ? TAG_OPEN : DS_OPEN;
    if (n < strlen(open) && !memcmp(p, open, n)) return true;
    return !tags && ((n < sizeof DS_SECTION - 1 && !memcmp(p, DS_SECTION, n)) ||
                     (n < sizeof DS_SECTION_END - 1 && !memcmp(p, DS_SECTION_END, n)));
}

/* Inside the calls: hand over each complete block; other text is content.
 * Blanks and section markers are dropped only where a call follows them. */
static int scan_calls(struct dsi__toolscan *ts, const struct dsi__toolscan_cb *cb, bool at_end) {
    struct dsi__sbuf *h = &ts->hold;
    bool tags = ts->syn == DSI__TOOLS_TAGS;
    const char *open = tags ? TAG_OPEN : DS_OPEN, *close = tags ? TAG_CLOSE : DS_CLOSE;
    size_t on = strlen(open), cn = strlen(close);
    while (h->len) {
        size_t k = 0;
        while (k < h->len && is_blank(h->p[k])) k++;
        if (!tags && section_marks(h->p, h->len)) {
            drop(h, section_marks(h->p, h->len));
            continue;
        }
        const char *r = h->p + k;
        size_t rn = h->len - k;
        if (rn == 0 || (!at_end && may_be_marker(ts, r, rn))) break; /* blanks, or a marker begun */
        if (rn >= on && !memcmp(r, open, on)) {
            const char *c = find(r + on, rn - on, close, cn);
            if (!c) break; /* not closed yet */
            size_t body = (size_t)(c - r) - on, whole = on + body + cn;
            int rc = parse_call(ts, r + on, body, cb);
            if (rc == 1) rc = cb->content(cb->user, r, whole);
            if (rc) return rc;
            drop(h, k + whole);
            ts->after_call = true;
            continue;
        }
        /* text that is not a call: up to the blanks before the next opening marker
         * (or before what may become one) */
        size_t mlen = 0;
        const char *o = first_open(ts, h->p + k, h->len - k, &mlen);
        size_t end = o ? (size_t)(o - h->p) : h->len - open_tail(ts, h->p, h->len);
        if (!tags && !o) {
            size_t a = prefix_tail(h->p, h->len, LIT(DS_SECTION)), b = prefix_tail(h->p, h->len, LIT(DS_SECTION_END));
            size_t t = a > b ? a : b;
            if (h->len - t < end) end = h->len - t;
        }
        if (at_end && !o) end = h->len;
        while (end > k && is_blank(h->p[end - 1])) end--;
        if (end <= k) break;
        size_t from = ts->after_call ? k : 0; /* the blanks right after a call go */
        int rc = cb->content(cb->user, h->p + from, end - from);
        if (rc) return rc;
        drop(h, end);
        ts->after_call = false;
    }
    if (at_end && h->len) { /* cut off: what is left is text, unless only blanks */
        size_t k = 0;
        while (k < h->len && is_blank(h->p[k])) k++;
        size_t from = ts->after_call ? k : 0;
        int rc = k < h->len ? cb->content(cb->user, h->p + from, h->len - from) : 0;
        h->len = 0;
        return rc;
    }
    return 0;
}

int dsi__toolscan_push(struct dsi__toolscan *ts, const char *s, size_t n, const struct dsi__toolscan_cb *cb) {
    if (n && dsi__sbuf_append(&ts->hold, s, n)) return -1;
    int rc = 0;
    if (!ts->in_calls) rc = scan_text(ts, cb);
    if (!rc && ts->in_calls) rc = scan_calls(ts, cb, false);
    return rc;
}

int dsi__toolscan_finish(struct dsi__toolscan *ts, const struct dsi__toolscan_cb *cb) {
    int rc = dsi__toolscan_push(ts, NULL, 0, cb);
    if (rc) return rc;
    if (ts->in_calls) return scan_calls(ts, cb, true);
    rc = ts->hold.len ? cb->content(cb->user, ts->hold.p, ts->hold.len) : 0;
    ts->hold.len = 0;
    return rc;
}
