/*
 * utf8.h: strict UTF-8 validation shared by every parser of outside input
 * (safetensors names, HTTP bodies, ...).
 */
#ifndef DSINFER_UTF8_H
#define DSINFER_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* True when s[0..n) is well-formed UTF-8 (RFC 3629): no overlong forms, no
 * surrogates, nothing above U+10FFFF, no truncated sequence. NUL bytes pass. */
bool dsi_utf8_valid(const char *s, size_t n);

#endif
