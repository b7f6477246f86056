/*
 * util.c: small helpers of the auth module: RFC 3339 time parsing and
 * formatting (strict, no locale or TZ dependence), the wall clock and the
 * Authorization header parser. Hex and SHA-256 come from core/crypto.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "auth_internal.h"
#include "dsinfer/err.h"

static int64_t days_from_civil(int64_t y, int m, int d);
static int digits(const char *s, int n, int *out);

/* Howard Hinnant's days_from_civil: proleptic Gregorian date -> days since
 * 1970-01-01, exact for every year we accept (0..9999). */
static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int digits(const char *s, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int dsi__rfc3339_parse(const char *s, int64_t *out_ms) {
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int Y, M, D, h, m, sec;
    if (!s || strlen(s) < 20 || strlen(s) > 40) return DSI_EINVAL;
    if (digits(s, 4, &Y) || s[4] != '-' || digits(s + 5, 2, &M) || s[7] != '-' || digits(s + 8, 2, &D) ||
        (s[10] != 'T' && s[10] != 't') || digits(s + 11, 2, &h) || s[13] != ':' || digits(s + 14, 2, &m) ||
        s[16] != ':' || digits(s + 17, 2, &sec))
        return DSI_EINVAL;
    if (M < 1 || M > 12 || D < 1 || h > 23 || m > 59 || sec > 60) return DSI_EINVAL;
    bool leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
    int dim = mdays[M - 1] + (M == 2 && leap);
    if (D > dim) return DSI_EINVAL;
    if (sec == 60) sec = 59; /* leap second: the instant before is close enough */
    const char *p = s + 19;
    int64_t frac_ms = 0;
    if (*p == '.') {
        p++;
        int nd = 0;
        int64_t scale = 100;
        while (*p >= '0' && *p <= '9') {
            if (nd < 3) frac_ms += (*p - '0') * scale;
            scale /= 10;
            nd++;
            p++;
        }
        if (nd == 0 || nd > 9) return DSI_EINVAL;
    }
    int64_t off_min = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (digits(p + 1, 2, &oh) || p[3] != ':' || digits(p + 4, 2, &om) || oh > 23 || om > 59)
            return DSI_EINVAL;
        off_min = (oh * 60 + om) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return DSI_EINVAL;
    }
    if (*p) return DSI_EINVAL;
    int64_t days = days_from_civil(Y, M, D);
    int64_t secs = days * 86400 + h * 3600 + m * 60 + sec - off_min * 60;
    *out_ms = secs * 1000 + frac_ms;
    return 0;
}

void dsi__rfc3339_format(int64_t ms, bool with_ms, char buf[32]) {
    int64_t secs = ms >= 0 ? ms / 1000 : (ms - 999) / 1000;
    int milli = (int)(ms - secs * 1000);
    time_t t = (time_t)secs;
    struct tm tm;
    if (!gmtime_r(&t, &tm)) {
        strcpy(buf, "1970-01-01T00:00:00Z");
        return;
    }
    size_t n = strftime(buf, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    if (with_ms)
        snprintf(buf + n, 32 - n, ".%03dZ", milli);
    else
        snprintf(buf + n, 32 - n, "Z");
}

int64_t dsi__realtime_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Accepts `Bearer <key>` with a case-insensitive scheme, one or more spaces or
 * tabs after it and optional surrounding whitespace (RFC 9110 OWS). The key
 * must be "dsi-" + 64 lowercase hex: anything else cannot match a stored
 * digest, and rejecting it early keeps odd bytes out of every later path. */
enum dsi_auth_status dsi__auth_parse_bearer(const char *h, size_t len, char key_out[DSI_KEY_STRLEN + 1]) {
    key_out[0] = 0;
    if (!h) return DSI_AUTH_MISSING;
    if (len > DSI__AUTH_HEADER_MAX) return DSI_AUTH_INVALID;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)h[i];
        if (c != '\t' && (c < 0x20 || c > 0x7e)) return DSI_AUTH_INVALID; /* NUL, CTL, non-ASCII */
    }
    size_t b = 0, e = len;
    while (b < e && (h[b] == ' ' || h[b] == '\t'))
        b++;
    while (e > b && (h[e - 1] == ' ' || h[e - 1] == '\t'))
        e--;
    if (b == e) return DSI_AUTH_MISSING;
    if (e - b < 7 || strncasecmp(h + b, "bearer", 6) != 0 || (h[b + 6] != ' ' && h[b + 6] != '\t'))
        return DSI_AUTH_INVALID;
    b += 6;
    while (b < e && (h[b] == ' ' || h[b] == '\t'))
        b++;
    if (e - b != DSI_KEY_STRLEN || memcmp(h + b, DSI_KEY_PREFIX, 4) != 0) return DSI_AUTH_INVALID;
    for (size_t i = 4; i < DSI_KEY_STRLEN; i++) {
        char c = h[b + i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return DSI_AUTH_INVALID;
    }
    memcpy(key_out, h + b, DSI_KEY_STRLEN);
    key_out[DSI_KEY_STRLEN] = 0;
    return DSI_AUTH_OK;
}
