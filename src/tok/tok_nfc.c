/*
 * tok_nfc.c: Unicode NFC normalization for tokenizers whose normalizer is NFC (Qwen2).
 *
 * The standard algorithm (UAX #15): full canonical decomposition (tables + Hangul
 * arithmetic), canonical ordering of combining marks (stable sort by combining
 * class), then canonical composition with the primary composites. Tables come from
 * tok_nfc_data.c, generated from Python's unicodedata.
 *
 * Most text is already NFC: a quick scan first looks for any code point that NFC
 * could touch (a combining mark, a decomposable character, one that can combine with
 * its predecessor, a Hangul jamo) and returns "unchanged" when there is none, so
 * ASCII, CJK and most other text pay one pass over the bytes.
 */
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "tok_internal.h"

extern const uint32_t dsi__nfc_ccc[][2];
extern const size_t dsi__nfc_n_ccc;
extern const uint32_t dsi__nfc_decomp_cp[][3];
extern const size_t dsi__nfc_n_decomp;
extern const uint32_t dsi__nfc_decomp_seq[];
extern const uint32_t dsi__nfc_pairs[][3];
extern const size_t dsi__nfc_n_pairs;
extern const uint32_t dsi__nfc_seconds[];
extern const size_t dsi__nfc_n_seconds;

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7, LCOUNT = 19, VCOUNT = 21, TCOUNT = 28,
       NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

/* Index of cp in a sorted table whose rows start with the code point, or -1. */
static long find_row(const uint32_t *rows, size_t stride, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint32_t v = rows[mid * stride];
        if (v == cp) return (long)mid;
        if (v < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

static int ccc(uint32_t cp) {
    if (cp < 0x300) return 0;
    long i = find_row(&dsi__nfc_ccc[0][0], 2, dsi__nfc_n_ccc, cp);
    return i < 0 ? 0 : (int)dsi__nfc_ccc[i][1];
}

static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    size_t lo = 0, hi = dsi__nfc_n_pairs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const uint32_t *p = dsi__nfc_pairs[mid];
        if (p[0] == a && p[1] == b) return p[2];
        if (p[0] < a || (p[0] == a && p[1] < b))
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

/* Could NFC change anything around cp? */
static bool may_change(uint32_t cp) {
    if (cp < 0x300) return false;
    if (cp >= 0x1100 && cp <= 0x11FF) return true; /* Hangul jamo */
    if (cp >= SBASE && cp < SBASE + SCOUNT) return false;
    if (cp >= 0x4E00 && cp <= 0x9FFF) return false; /* CJK ideographs: stable, no marks */
    if (ccc(cp)) return true;
    if (find_row(&dsi__nfc_decomp_cp[0][0], 3, dsi__nfc_n_decomp, cp) >= 0) return true;
    return find_row(dsi__nfc_seconds, 1, dsi__nfc_n_seconds, cp) >= 0;
}

int dsi__nfc(const char *s, size_t n, char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    bool need = false;
    for (size_t i = 0; i < n && !need;) {
        if ((unsigned char)s[i] < 0xCC) { /* below U+0300 */
            i++;
            continue;
        }
        uint32_t cp;
        i += dsi__utf8_decode(s + i, &cp);
        need = may_change(cp);
    }
    if (!need) return 0;
    /* Decompose into code points; canonical decompositions are at most 4 long and
     * Hangul at most 3, so 4 per input byte is a safe bound. */
    if (n > SIZE_MAX / 16) return DSI_EOVERFLOW;
    uint32_t *cps = malloc(n * 4 * sizeof *cps);
    if (!cps) return DSI_ENOMEM;
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += dsi__utf8_decode(s + i, &cp);
        long r;
        if (cp >= SBASE && cp < SBASE + SCOUNT) {
            uint32_t si = cp - SBASE;
            cps[m++] = LBASE + si / NCOUNT;
            cps[m++] = VBASE + (si % NCOUNT) / TCOUNT;
            if (si % TCOUNT) cps[m++] = TBASE + si % TCOUNT;
        } else if (cp >= 0xC0 && (r = find_row(&dsi__nfc_decomp_cp[0][0], 3, dsi__nfc_n_decomp, cp)) >= 0) {
            const uint32_t *d = dsi__nfc_decomp_seq + dsi__nfc_decomp_cp[r][1];
            for (uint32_t k = 0; k < dsi__nfc_decomp_cp[r][2] && k < 4; k++) cps[m++] = d[k];
        } else {
            cps[m++] = cp;
        }
    }
    /* Canonical ordering: stable insertion sort of each run of non-starters. */
    for (size_t i = 1; i < m; i++) {
        int c = ccc(cps[i]);
        if (c == 0) continue;
        size_t j = i;
        uint32_t v = cps[i];
        while (j > 0 && ccc(cps[j - 1]) > c) {
            cps[j] = cps[j - 1];
            j--;
        }
        cps[j] = v;
    }
    /* Canonical composition. */
    size_t w = m ? 1 : 0, starter = 0;
    int last = m ? ccc(cps[0]) : 0;
    bool have_starter = m && last == 0;
    if (last) last = 256; /* text starting with a non-starter: nothing to compose onto */
    for (size_t i = 1; i < m; i++) {
        uint32_t ch = cps[i];
        int c = ccc(ch);
        uint32_t comp = have_starter ? compose(cps[starter], ch) : 0;
        if (comp && (last < c || last == 0)) {
            cps[starter] = comp;
            continue;
        }
        if (c == 0) {
            starter = w;
            have_starter = true;
        }
        last = c;
        cps[w++] = ch;
    }
    char *o = malloc(w * 4 + 1);
    if (!o) {
        free(cps);
        return DSI_ENOMEM;
    }
    size_t ol = 0;
    for (size_t i = 0; i < w; i++) ol += dsi__utf8_encode(cps[i], o + ol);
    o[ol] = 0;
    free(cps);
    *out = o;
    *out_len = ol;
    return 0;
}
