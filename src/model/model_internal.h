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

#include "dsinfer/crypto.h"
#include "dsinfer/model.h"
#include <stdint.h>

/* dsi_manifest_verify, except that with deferred != NULL the listed
 * *.safetensors files are not hashed: they must exist as regular files, and
 * come back in *deferred (n_deferred entries; free with dsi__pending_free). */
int dsi__manifest_verify_deferred(const char *dir, const struct dsi_manifest_opts *o,
                                  struct dsi_model_pending **deferred, size_t *n_deferred, size_t *bytes_out,
                                  char **err);
void dsi__pending_free(struct dsi_model_pending *p, size_t n);
/* Hashes the n files on the manifest's worker pool: got[i] the digest, errs[i]
 * NULL or why file i could not be read (caller frees). */
int dsi__hash_pending(const struct dsi_model_pending *p, size_t n, int n_threads,
                      uint8_t (*got)[DSI_SHA256_LEN], char **errs);
/* File i of an open safetensors handle: path and mapped image (DSI_EINVAL past the end). */
size_t dsi__st_n_files(const struct dsi_safetensors *st);
int dsi__st_file(const struct dsi_safetensors *st, size_t i, const char **path, const uint8_t **base,
                 size_t *len);

#endif
