/*
 * utf8.h: strict UTF-8 validation shared by every parser of outside input
 * (safetensors names, HTTP bodies, ...), and the test for text that may go
 * into a log line, an audit record or a metric label.
 */
#ifndef DSINFER_UTF8_H
#define DSINFER_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* True when s[0..n) is well-formed UTF-8 (RFC 3629): no overlong forms, no
 * surrogates, nothing above U+10FFFF, no truncated sequence. NUL bytes pass. */
bool dsi_utf8_valid(const char *s, size_t n);

/* Length (1-4) of the well-formed UTF-8 sequence that starts s[0..n), or 0 when
 * it is malformed, truncated or n == 0. */
size_t dsi_utf8_seq_len(const char *s, size_t n);

/* True when s[0..n) is well-formed UTF-8 without control characters: no C0
 * (U+0000-U+001F, tab and NUL included), DEL (U+007F) or C1 (U+0080-U+009F).
 * Terminals act on them (ESC and CSI sequences), and names checked with this
 * end up in logs, keys.json and Prometheus labels, which must stay valid UTF-8. */
bool dsi_utf8_printable(const char *s, size_t n);

#endif
