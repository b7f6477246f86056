/*
 * buf.c: a growable byte buffer for building JSON and SSE output. Always keeps
 * a NUL after the data so that the text can be used as a C string.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "internal.h"

static int reserve(struct dsi__sbuf *b, size_t extra) {
    if (extra > SIZE_MAX - b->len - 1) return DSI_EOVERFLOW;
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) return DSI_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int dsi__sbuf_append(struct dsi__sbuf *b, const void *s, size_t n) {
    int rc = reserve(b, n);
    if (rc) return rc;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

int dsi__sbuf_printf(struct dsi__sbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return DSI_EINVAL;
    if ((size_t)n < sizeof tmp) return dsi__sbuf_append(b, tmp, (size_t)n);
    int rc = reserve(b, (size_t)n);
    if (rc) return rc;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

size_t dsi__json_escape_into(char *o, const char *s, size_t n, const char *bad) {
    static const char hex[] = "0123456789abcdef";
    size_t bad_len = strlen(bad);
    char *start = o;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': *o++ = '\\'; *o++ = '"'; break;
        case '\\': *o++ = '\\'; *o++ = '\\'; break;
        case '\n': *o++ = '\\'; *o++ = 'n'; break;
        case '\r': *o++ = '\\'; *o++ = 'r'; break;
        case '\t': *o++ = '\\'; *o++ = 't'; break;
        default:
            if (c < 0x20 || c == 0x7f) {
                *o++ = '\\'; *o++ = 'u'; *o++ = '0'; *o++ = '0';
                *o++ = hex[c >> 4]; *o++ = hex[c & 15];
            } else if (c < 0x80) {
                *o++ = (char)c;
            } else {
                /* Valid UTF-8 is copied; a broken sequence (a token holding half a
                 * character) becomes `bad` so that the JSON stays valid. */
                size_t len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
                if (len && len <= n - i && dsi_utf8_valid(s + i, len)) {
                    memcpy(o, s + i, len);
                    o += len;
                    i += len - 1;
                } else {
                    memcpy(o, bad, bad_len);
                    o += bad_len;
                }
            }
        }
    }
    return (size_t)(o - start);
}

int dsi__sbuf_json_str(struct dsi__sbuf *b, const char *s, size_t n) {
    /* Worst case every byte becomes \u00XX (6 bytes). */
    if (n > (SIZE_MAX - 2) / 6) return DSI_EOVERFLOW;
    int rc = reserve(b, n * 6 + 2);
    if (rc) return rc;
    char *o = b->p + b->len;
    *o++ = '"';
    o += dsi__json_escape_into(o, s, n, "\xef\xbf\xbd");
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    b->p[b->len] = 0;
    return 0;
}

void dsi__sbuf_free(struct dsi__sbuf *b) {
    if (!b) return;
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}
