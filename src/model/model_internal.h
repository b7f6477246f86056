/*
 * model_internal.h: helpers shared by the files of src/model (not a public API).
 */
#ifndef DSINFER_MODEL_INTERNAL_H
#define DSINFER_MODEL_INTERNAL_H

#include "dsinfer/fileio.h"
#include <stdbool.h>
#include <stddef.h>

/* Reads a whole regular file of at most max_bytes into a new NUL-terminated
 * heap buffer (*out, caller frees) of *len bytes (the NUL not counted). */
/* true if s[0..n) is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF). */
/* Copies s into out (cap bytes, NUL-terminated) with bytes outside printable
 * ASCII written as \xNN, truncated with "..." so error messages stay one line. */
void dsi__printable(const char *s, char *out, size_t cap);
/* Joins a directory and a relative name into a new heap string. */
char *dsi__path_join(const char *dir, const char *name);

#endif
