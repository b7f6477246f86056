/*
 * tok_utf8.c: UTF-8 helpers for the tokenizer: validation, code point decode/encode,
 * lossy conversion exactly as Rust's String::from_utf8_lossy (what HF tokenizers'
 * decode does), and the "incomplete tail" test the streaming decoder relies on.
 *
 * The validity rules are the Unicode ones (no overlongs, no surrogates, nothing past
 * U+10FFFF); "maximal subpart" replacement follows Unicode 15 section 3.9, which is
 * what Rust implements: one U+FFFD per maximal invalid subpart.
 */
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "tok_internal.h"

static size_t seq_prefix(const unsigned char *s, size_t n, bool *complete);

/* Number of bytes at s (of n) that form a valid prefix of one UTF-8 sequence, and
 * whether that prefix is a whole character. 0 means s[0] cannot start a character. */
static size_t seq_prefix(const unsigned char *s, size_t n, bool *complete) {
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    *complete = false;
    if (c < 0x80) {
        *complete = true;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;   /* overlong */
        if (c == 0xED) hi = 0x9F;   /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;   /* overlong */
        if (c == 0xF4) hi = 0x8F;   /* > U+10FFFF */
    } else {
        return 0;
    }
    if (n < 2) return 1;
    if (s[1] < lo || s[1] > hi) return 1;
    for (size_t i = 2; i < need; i++) {
        if (i >= n) return i;
        if (s[i] < 0x80 || s[i] > 0xBF) return i;
    }
    *complete = true;
    return need;
}

size_t dsi__utf8_valid_prefix(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        /* ASCII runs dominate real text: skip 8 bytes at a time. */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, u + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= n) break;
        bool complete;
        size_t k = seq_prefix(u + i, n - i, &complete);
        if (!complete) return i;
        i += k;
    }
    return n;
}

size_t dsi__utf8_decode(const char *s, uint32_t *cp) {
    const unsigned char *u = (const unsigned char *)s;
    if (u[0] < 0x80) {
        *cp = u[0];
        return 1;
    }
    if (u[0] < 0xE0) {
        *cp = ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
        return 2;
    }
    if (u[0] < 0xF0) {
        *cp = ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) | ((uint32_t)(u[2] & 0x3F) << 6) |
          (u[3] & 0x3F);
    return 4;
}

size_t dsi__utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

static int grow(char **out, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        if (c > SIZE_MAX / 2) return DSI_EOVERFLOW;
        c *= 2;
    }
    char *p = realloc(*out, c);
    if (!p) return DSI_ENOMEM;
    *out = p;
    *cap = c;
    return 0;
}

int dsi__utf8_lossy_append(const char *s, size_t n, char **out, size_t *len, size_t *cap) {
    const unsigned char *u = (const unsigned char *)s;
    /* Worst case every byte becomes U+FFFD (3 bytes); +1 for a NUL the caller may add. */
    if (n > (SIZE_MAX - *len - 1) / 3) return DSI_EOVERFLOW;
    int rc = grow(out, cap, *len + 3 * n + 1);
    if (rc) return rc;
    size_t i = 0;
    while (i < n) {
        size_t v = dsi__utf8_valid_prefix(s + i, n - i);
        memcpy(*out + *len, s + i, v);
        *len += v;
        i += v;
        if (i >= n) break;
        bool complete;
        size_t k = seq_prefix(u + i, n - i, &complete);
        memcpy(*out + *len, "\xEF\xBF\xBD", 3);
        *len += 3;
        i += k ? k : 1;
    }
    return 0;
}

size_t dsi__utf8_incomplete_tail(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = u[n - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation: keep looking for the lead */
        bool complete;
        size_t k = seq_prefix(u + n - back, back, &complete);
        return (!complete && k == back) ? back : 0;
    }
    return 0;
}

bool dsi__is_unicode_space(uint32_t cp) {
    /* Rust's char::is_whitespace (White_Space property). */
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    if (cp < 0x85) return false;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}
