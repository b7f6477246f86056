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

/* The files dsi_manifest_write would list (regular, non-hidden, recursing,
 * without SHA256SUMS), sorted; *names (n strings) is the caller's to free. */
int dsi__manifest_list(const char *dir, char ***names, size_t *n, char **err);

/* A source of safetensors file images other than mmap (decrypted files): get
 * returns the image of the file at path (owned by the source, valid until the
 * handle is closed) or DSI_ENOENT. */
struct dsi__st_source {
    int (*get)(void *ctx, const char *path, const uint8_t **base, size_t *len, char **err);
    void *ctx;
};
/* dsi_st_open_dir reading every file (index and shards) through src. */
int dsi__st_open_dir_src(struct dsi_safetensors *st, const char *dir, const struct dsi__st_source *src,
                         char **err);

/* Encrypted models (wenc_dir.c). open_encrypted fills m->cfg, m->st, m->enc
 * and m->encrypted (m->dir set); on error the caller closes m. */
int dsi__model_open_encrypted(struct dsi_model *m, const char *dir, const char *key_file, int n_threads,
                              char **err);
/* *yes: dir/config.json starts with the encrypted-file magic. */
int dsi__model_is_encrypted(const char *dir, bool *yes, char **err);
void dsi__model_enc_free(void *enc);

#endif
