/*
 * framing.c: strict HTTP/1.1 request framing checks (RFC 9112), run on every
 * request before routing, so that no request a proxy in front of us could parse
 * differently is ever served: request smuggling needs exactly such a difference.
 *
 * libmicrohttpd 0.9.75 (Debian 12) is lenient: it takes bare LF as a line end,
 * keeps the first of two Content-Length headers, reads a body of unknown coding
 * until the connection closes, accepts header names with spaces and duplicate
 * Host headers, and unescapes %00 in the path. Its strict mode
 * (MHD_OPTION_STRICT_FOR_CLIENT 1) only adds the missing-Host check; the
 * CLIENT_DISCIPLINE levels of 0.9.77+ do not exist there. So we check here what
 * the handler can see: the raw request target (URI log callback), each header
 * name and value, and the counts of the framing headers.
 *
 * Line endings: 0.9.75 parses the header block in place in its read buffer. A
 * CRLF line end becomes two NUL bytes, a bare LF one, and the next line follows
 * directly; header keys and values (and the version string of the request line)
 * point into that buffer. So a value followed by NUL and then a non-NUL byte
 * ended in a bare LF (or held a NUL byte); one followed by NUL NUL and then a
 * space or tab was folded (obs-fold, which 0.9.75 mishandles). These reads stay
 * inside the header block, which ends with the empty line that MHD has already
 * seen. The check is tied to that layout: it runs only when the library linked
 * at run time is 0.9.75 (newer ones get MHD_OPTION_CLIENT_DISCIPLINE_LVL in
 * http.c instead), and tests/hostile/hostile.py fails if the layout changes.
 */
#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

#include "srv.h"

struct scan {
    bool raw_lines;              /* check line ends in the read buffer (0.9.75 layout) */
    int n_host, n_cl, n_te, n;
    const char *te;
    const char *last_value;      /* value of the last header (for the end of the block) */
    size_t last_len;
    const char *bad;             /* first problem found, or NULL */
};

/* RFC 9110 token characters (header names). */
static bool is_tchar(unsigned char ch) {
    if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) return true;
    return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* The bytes after a line that ended at p[len]: NUL NUL means CRLF. */
static const char *line_end_error(const char *p, size_t len) {
    if (p[len] != 0 || p[len + 1] != 0) return "bare LF or NUL in a header line";
    if (p[len + 2] == ' ' || p[len + 2] == '\t') return "folded header line (obs-fold)";
    return NULL;
}

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                                   const char *value, size_t value_size) {
    struct scan *sc = cls;
    (void)kind;
    sc->n++;
    if (key_size == 0) sc->bad = "empty header name";
    for (size_t i = 0; !sc->bad && i < key_size; i++)
        if (!is_tchar((unsigned char)key[i])) sc->bad = "invalid character (space?) in a header name";
    for (size_t i = 0; !sc->bad && value && i < value_size; i++) {
        unsigned char ch = (unsigned char)value[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) sc->bad = "control character (bare CR?) in a header value";
    }
    if (!sc->bad && sc->raw_lines && value) sc->bad = line_end_error(value, value_size);
    if (sc->bad) return MHD_NO;
    if (!strcasecmp(key, MHD_HTTP_HEADER_HOST)) sc->n_host++;
    else if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) sc->n_cl++;
    else if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) sc->n_te++, sc->te = value;
    sc->last_value = value;
    sc->last_len = value_size;
    return MHD_YES;
}

bool dsi__framing_raw_lines_checkable(void) {
    const char *v = MHD_get_version();
    return v && !strcmp(v, "0.9.75");
}

const char *dsi__framing_error(struct MHD_Connection *c, const char *version, bool raw_lines, int *status) {
    struct scan sc = {.raw_lines = raw_lines};
    *status = 400;
    bool v11 = version && !strcmp(version, MHD_HTTP_VERSION_1_1);
    if (!v11 && !(version && !strcmp(version, MHD_HTTP_VERSION_1_0))) return "HTTP version is not 1.1 or 1.0";
    MHD_get_connection_values_n(c, MHD_HEADER_KIND, scan_header, &sc);
    if (sc.bad) return sc.bad;
    /* The request line: with headers after it, its end must be CRLF too. */
    if (raw_lines && sc.n > 0 && line_end_error(version, strlen(version))) return "bare LF after the request line";
    /* The last header line and the empty line: CRLF CRLF leaves four NULs. */
    if (raw_lines && sc.n > 0 && sc.last_value && (sc.last_value[sc.last_len + 2] || sc.last_value[sc.last_len + 3]))
        return "bare LF at the end of the header block";
    if (v11 ? sc.n_host != 1 : sc.n_host > 1) return sc.n_host ? "more than one Host header" : "no Host header";
    if (sc.n_cl > 1) return "more than one Content-Length header";
    if (sc.n_te > 1) return "more than one Transfer-Encoding header";
    if (sc.n_te && sc.n_cl) return "both Content-Length and Transfer-Encoding";
    if (sc.n_te && !v11) return "Transfer-Encoding in an HTTP/1.0 request";
    if (sc.n_te && strcasecmp(sc.te, "chunked")) {
        *status = 501; /* RFC 9112 6.1: a coding we do not implement */
        return "unsupported Transfer-Encoding (only chunked)";
    }
    return NULL;
}

const char *dsi__uri_error(const char *uri) {
    if (!uri || uri[0] != '/') return "the request target is not an absolute path";
    for (const unsigned char *p = (const unsigned char *)uri; *p; p++) {
        if (*p <= 0x20 || *p >= 0x7f) return "control, space or non-ASCII byte in the request target";
        if (*p != '%') continue;
        /* Escapes of control characters (%00 truncates the path we route on). */
        if (!p[1] || !p[2]) return "truncated %-escape in the request target";
        if (p[1] == '0' || p[1] == '1' || ((p[1] == '7') && (p[2] == 'f' || p[2] == 'F')))
            return "escaped control character in the request target";
    }
    return NULL;
}
