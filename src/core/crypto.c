/*
 * crypto.c: SHA-256 (OpenSSL EVP), hex, constant-time compare, secure random.
 *
 * Thin wrappers so no other module includes OpenSSL headers for hashing, and
 * so every hash error becomes a DSI_E* code instead of an OpenSSL return value.
 */
#include "dsinfer/crypto.h"
#include "dsinfer/err.h"
#include "dsinfer/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int dsi_sha256_init(struct dsi_sha256 *h) {
    if (!h) return DSI_EINVAL;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (!c) return DSI_ENOMEM;
    if (EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(c);
        return DSI_EINTERNAL;
    }
    h->ctx = c;
    return 0;
}

int dsi_sha256_update(struct dsi_sha256 *h, const void *data, size_t n) {
    if (!h || !h->ctx || (!data && n)) return DSI_EINVAL;
    if (n == 0) return 0;
    return EVP_DigestUpdate((EVP_MD_CTX *)h->ctx, data, n) == 1 ? 0 : DSI_EINTERNAL;
}

int dsi_sha256_final(struct dsi_sha256 *h, uint8_t out[DSI_SHA256_LEN]) {
    if (!h || !h->ctx || !out) return DSI_EINVAL;
    unsigned int len = 0;
    if (EVP_DigestFinal_ex((EVP_MD_CTX *)h->ctx, out, &len) != 1 || len != DSI_SHA256_LEN)
        return DSI_EINTERNAL;
    return 0;
}

void dsi_sha256_free(struct dsi_sha256 *h) {
    if (!h) return;
    EVP_MD_CTX_free((EVP_MD_CTX *)h->ctx);
    h->ctx = NULL;
}

int dsi_sha256(const void *data, size_t n, uint8_t out[DSI_SHA256_LEN]) {
    struct dsi_sha256 h = {0};
    int rc = dsi_sha256_init(&h);
    if (rc == 0) rc = dsi_sha256_update(&h, data, n);
    if (rc == 0) rc = dsi_sha256_final(&h, out);
    dsi_sha256_free(&h);
    return rc;
}

int dsi_sha256_file(const char *path, size_t buf_bytes, uint8_t out[DSI_SHA256_LEN], size_t *bytes_out,
                    char **err) {
    if (!path || !out) return DSI_EINVAL;
    if (buf_bytes == 0) buf_bytes = (size_t)1 << 20; /* L2-sized: see manifest.c */
    int fd;
    uint64_t size;
    int orc = dsi_open_regular(path, &fd, &size, err);
    if (orc) return orc;
    /* The kernel reads ahead further when told the access is sequential. */
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    uint8_t *buf = malloc(buf_bytes);
    struct dsi_sha256 h = {0};
    int rc = buf ? dsi_sha256_init(&h) : DSI_ENOMEM;
    size_t total = 0;
    while (rc == 0) {
        ssize_t n = pread(fd, buf, buf_bytes, (off_t)total);
        if (n < 0) {
            if (errno == EINTR) continue;
            rc = dsi_seterr(err, DSI_EIO, "%s: read failed at byte %zu: %s", path, total, strerror(errno));
            break;
        }
        if (n == 0) break;
        rc = dsi_sha256_update(&h, buf, (size_t)n);
        total += (size_t)n;
    }
    if (rc == 0) rc = dsi_sha256_final(&h, out);
    if (rc == 0 && bytes_out) *bytes_out = total;
    dsi_sha256_free(&h);
    free(buf);
    close(fd);
    return rc;
}

void dsi_hex_encode(const uint8_t *in, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hex_val(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int dsi_hex_decode(const char *hex, size_t hex_len, uint8_t *out, size_t out_len) {
    if (!hex || !out) return DSI_EINVAL;
    if (out_len > SIZE_MAX / 2 || hex_len != 2 * out_len) return DSI_EFORMAT;
    for (size_t i = 0; i < hex_len; i++)
        if (hex_val(hex[i]) < 0) return DSI_EFORMAT;
    for (size_t i = 0; i < out_len; i++)
        out[i] = (uint8_t)(hex_val(hex[2 * i]) << 4 | hex_val(hex[2 * i + 1]));
    return 0;
}

bool dsi_ct_equal(const void *a, const void *b, size_t n) {
    if (n == 0) return true;
    return CRYPTO_memcmp(a, b, n) == 0;
}

int dsi_random_bytes(void *buf, size_t n) {
    if (!buf && n) return DSI_EINVAL;
    while (n > 0) {
        int chunk = n > (1u << 30) ? (1 << 30) : (int)n;
        if (RAND_bytes(buf, chunk) != 1) return DSI_EINTERNAL;
        buf = (uint8_t *)buf + chunk;
        n -= (size_t)chunk;
    }
    return 0;
}

void dsi_secure_wipe(void *p, size_t n) {
    if (p && n) OPENSSL_cleanse(p, n);
}
