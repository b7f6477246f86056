/*
 * err.c: names and messages for DSI_ERRNO_MAP, and heap-built error strings.
 */
#include "dsinfer/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *dsi_err_name(int code) {
    switch (code) {
    case DSI_OK: return "DSI_OK";
#define XX(c, m) \
    case DSI_##c: return "DSI_" #c;
        DSI_ERRNO_MAP(XX)
#undef XX
    default: return "DSI_UNKNOWN";
    }
}

const char *dsi_strerror(int code) {
    switch (code) {
    case DSI_OK: return "success";
#define XX(c, m) \
    case DSI_##c: return m;
        DSI_ERRNO_MAP(XX)
#undef XX
    default: return "unknown error";
    }
}

/* The format attribute lets -Wformat-nonliteral (clang: part of -Wformat=2) see
 * that fmt is checked at its callers, the printf-like public functions. */
__attribute__((format(printf, 1, 0))) static char *vformat(const char *fmt, va_list ap) {
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) n = 0;
    char *s = malloc((size_t)n + 1);
    if (!s) return strdup("out of memory while formatting an error");
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

char *dsi_errf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = vformat(fmt, ap);
    va_end(ap);
    return s;
}

int dsi_seterr(char **err, int code, const char *fmt, ...) {
    if (err && !*err) {
        va_list ap;
        va_start(ap, fmt);
        *err = vformat(fmt, ap);
        va_end(ap);
    }
    return code;
}
