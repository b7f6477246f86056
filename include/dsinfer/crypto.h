/*
 * crypto.h: SHA-256, hex and constant-time helpers over OpenSSL EVP.
 *
 * Used by the model store (SHA256SUMS), auth (API keys stored as SHA-256,
 * compared in constant time) and anything else that hashes. All functions
 * return 0 or a negative DSI_E* code. Owner: src/core (crypto.c).
 */
#ifndef DSINFER_CRYPTO_H
#define DSINFER_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DSI_SHA256_LEN 32     /* digest bytes */
#define DSI_SHA256_HEX_LEN 64 /* lowercase hex digits, without the NUL */

/* Streaming SHA-256. init allocates the EVP context; final writes the digest;
 * free releases the context and accepts a zeroed or already freed struct. */
struct dsi_sha256 {
    void *ctx; /* EVP_MD_CTX*, owned */
};
int dsi_sha256_init(struct dsi_sha256 *h);
int dsi_sha256_update(struct dsi_sha256 *h, const void *data, size_t n);
int dsi_sha256_final(struct dsi_sha256 *h, uint8_t out[DSI_SHA256_LEN]);
void dsi_sha256_free(struct dsi_sha256 *h);

/* One-shot digest of a buffer. */
int dsi_sha256(const void *data, size_t n, uint8_t out[DSI_SHA256_LEN]);

/* Digest of a file read with pread in `buf_bytes` chunks (0: 1 MiB). bytes_out
 * (optional) gets the file size. DSI_ENOENT/DSI_EIO with *err naming the path. */
int dsi_sha256_file(const char *path, size_t buf_bytes, uint8_t out[DSI_SHA256_LEN], size_t *bytes_out,
                    char **err);

/* Lowercase hex of n bytes into out (2n+1 bytes incl. NUL). */
void dsi_hex_encode(const uint8_t *in, size_t n, char *out);
/* Decodes exactly 2*out_len hex digits (either case) from hex[0..hex_len).
 * DSI_EFORMAT on a wrong length or a non-hex character; out is untouched then. */
int dsi_hex_decode(const char *hex, size_t hex_len, uint8_t *out, size_t out_len);

/* true if a[0..n) == b[0..n); time depends only on n (CRYPTO_memcmp). */
bool dsi_ct_equal(const void *a, const void *b, size_t n);

/* Cryptographically secure random bytes (RAND_bytes); DSI_EINTERNAL on failure. */
int dsi_random_bytes(void *buf, size_t n);
/* Wipes secrets in a way the compiler may not elide (OPENSSL_cleanse). */
void dsi_secure_wipe(void *p, size_t n);

#endif
