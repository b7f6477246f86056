/*
 * wenc.c: the encrypted-file format of include/dsinfer/wenc.h: key files,
 * header, and chunked AES-256-GCM seal/open over OpenSSL EVP.
 *
 * Invariants: a chunk's plaintext is written only into the caller's buffer and
 * is worthless until the whole file checked (the caller wipes it on error);
 * the key and the per-file key never leave this file except in the caller's
 * struct dsi_wenc_key, and every local copy is wiped (OPENSSL_cleanse) before
 * return; EVP_CIPHER_CTX_free cleanses the key schedule. Decryption of one
 * file runs on up to n threads, each taking chunk indices from an atomic
 * counter and opening its own cipher context (contexts are not shared).
 */
#include "dsinfer/wenc.h"

#include "dsinfer/crypto.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC "DSINFENC"
#define VERSION 1
#define ALG_AES256GCM_HKDF 1
#define CHUNK_MIN ((uint32_t)4 << 10)
#define CHUNK_MAX ((uint32_t)64 << 20)
#define PLAIN_MAX ((uint64_t)1 << 50)
#define AAD_LEN (DSI_WENC_HEADER_LEN + 8 + 1)
#define MAX_THREADS 256

static const char hkdf_info[] = "dsinfer weights v1";
static const char keyid_label[] = "dsinfer key id v1";

/* Per-file state shared by the chunk workers (read-only while they run). */
struct file_ctx {
    uint8_t hdr[DSI_WENC_HEADER_LEN]; /* the header bytes as stored (AAD) */
    struct dsi_wenc_header h;
    uint8_t subkey[DSI_WENC_KEY_LEN];
    uint64_t n_chunks;
};

static void put_le(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void put_be64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

void dsi_wenc_key_set(struct dsi_wenc_key *k, const uint8_t key[DSI_WENC_KEY_LEN]) {
    uint8_t buf[sizeof keyid_label - 1 + DSI_WENC_KEY_LEN], d[DSI_SHA256_LEN];
    memcpy(k->key, key, DSI_WENC_KEY_LEN);
    memcpy(buf, keyid_label, sizeof keyid_label - 1);
    memcpy(buf + sizeof keyid_label - 1, key, DSI_WENC_KEY_LEN);
    if (dsi_sha256(buf, sizeof buf, d) != 0) memset(d, 0, sizeof d);
    memcpy(k->id, d, DSI_WENC_KEY_ID_LEN);
    dsi_secure_wipe(buf, sizeof buf);
}

void dsi_wenc_key_wipe(struct dsi_wenc_key *k) {
    if (k) dsi_secure_wipe(k, sizeof *k);
}

int dsi_wenc_key_load(const char *path, struct dsi_wenc_key *k, char **err) {
    if (!path || !path[0] || !k) return dsi_seterr(err, DSI_EINVAL, "no model key file given");
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return dsi_seterr(err, errno == ENOENT ? DSI_ENOENT : DSI_EIO, "model key file %s: cannot open: %s", path,
                          strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return dsi_seterr(err, DSI_EIO, "model key file %s: not a regular file", path);
    }
    if (sb.st_mode & 077) {
        close(fd);
        return dsi_seterr(err, DSI_EPERM,
                          "model key file %s: mode %04o lets group or others read it; chmod 600 (or 400) it",
                          path, (unsigned)(sb.st_mode & 07777));
    }
    uint8_t buf[80], key[DSI_WENC_KEY_LEN];
    ssize_t n;
    do
        n = read(fd, buf, sizeof buf);
    while (n < 0 && errno == EINTR);
    close(fd);
    int rc = 0;
    size_t len = n > 0 ? (size_t)n : 0;
    if (n < 0)
        rc = dsi_seterr(err, DSI_EIO, "model key file %s: read failed: %s", path, strerror(errno));
    else if (len == DSI_WENC_KEY_LEN && sb.st_size == DSI_WENC_KEY_LEN)
        memcpy(key, buf, DSI_WENC_KEY_LEN);
    else {
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
            len--;
        if (len != 2 * DSI_WENC_KEY_LEN || sb.st_size > 2 * DSI_WENC_KEY_LEN + 2 ||
            dsi_hex_decode((const char *)buf, len, key, sizeof key) != 0)
            rc = dsi_seterr(err, DSI_EFORMAT,
                            "model key file %s: not 32 raw bytes or 64 hex digits (%lld bytes)", path,
                            (long long)sb.st_size);
    }
    if (!rc) dsi_wenc_key_set(k, key);
    dsi_secure_wipe(buf, sizeof buf);
    dsi_secure_wipe(key, sizeof key);
    return rc;
}

int dsi_wenc_key_generate(const char *path, char **err) {
    uint8_t key[DSI_WENC_KEY_LEN];
    char hex[2 * DSI_WENC_KEY_LEN + 2];
    if (!path) return DSI_EINVAL;
    if (dsi_random_bytes(key, sizeof key) != 0) return dsi_seterr(err, DSI_EINTERNAL, "no random bytes");
    dsi_hex_encode(key, sizeof key, hex);
    hex[2 * DSI_WENC_KEY_LEN] = '\n';
    int rc = 0, fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        rc = dsi_seterr(err, DSI_EIO, "%s: cannot create: %s", path, strerror(errno));
    else if (write(fd, hex, 2 * DSI_WENC_KEY_LEN + 1) != 2 * DSI_WENC_KEY_LEN + 1 || fsync(fd) != 0)
        rc = dsi_seterr(err, DSI_EIO, "%s: write failed: %s", path, strerror(errno));
    if (fd >= 0 && close(fd) != 0 && !rc) rc = dsi_seterr(err, DSI_EIO, "%s: close failed", path);
    if (rc && fd >= 0) unlink(path);
    dsi_secure_wipe(key, sizeof key);
    dsi_secure_wipe(hex, sizeof hex);
    return rc;
}

bool dsi_wenc_is_encrypted(const void *buf, size_t len) {
    return buf && len >= 8 && memcmp(buf, MAGIC, 8) == 0;
}

int dsi_wenc_sealed_size(uint64_t plain_bytes, uint32_t chunk_bytes, uint64_t *out) {
    if (!chunk_bytes || plain_bytes > PLAIN_MAX) return DSI_EOVERFLOW;
    uint64_t n = plain_bytes ? (plain_bytes - 1) / chunk_bytes + 1 : 1;
    *out = DSI_WENC_HEADER_LEN + plain_bytes + n * DSI_WENC_TAG_LEN; /* < 2^51: no overflow */
    return 0;
}

int dsi_wenc_header_parse(const void *buf, size_t len, uint64_t file_bytes, const char *name,
                          struct dsi_wenc_header *h, char **err) {
    const uint8_t *p = buf;
    if (!name) name = "(memory)";
    if (!p || len < DSI_WENC_HEADER_LEN || !h)
        return dsi_seterr(err, DSI_EFORMAT, "%s: %zu bytes is too short for an encrypted-file header", name,
                          len);
    if (!dsi_wenc_is_encrypted(p, len))
        return dsi_seterr(err, DSI_EFORMAT, "%s: not encrypted (no DSINFENC header)", name);
    memset(h, 0, sizeof *h);
    h->version = (uint16_t)get_le(p + 8, 2);
    h->algorithm = (uint16_t)get_le(p + 10, 2);
    h->chunk_bytes = (uint32_t)get_le(p + 12, 4);
    memcpy(h->key_id, p + 16, sizeof h->key_id);
    memcpy(h->file_id, p + 32, sizeof h->file_id);
    h->plain_bytes = get_le(p + 48, 8);
    if (h->version != VERSION)
        return dsi_seterr(err, DSI_EFORMAT, "%s: encrypted-file version %u; this build reads version %d", name,
                          h->version, VERSION);
    if (h->algorithm != ALG_AES256GCM_HKDF)
        return dsi_seterr(err, DSI_EFORMAT, "%s: unknown encryption algorithm %u", name, h->algorithm);
    if (h->chunk_bytes < CHUNK_MIN || h->chunk_bytes > CHUNK_MAX || (h->chunk_bytes & (h->chunk_bytes - 1)))
        return dsi_seterr(err, DSI_EFORMAT, "%s: chunk size %u is not a power of two in [4 KiB, 64 MiB]", name,
                          h->chunk_bytes);
    if (get_le(p + 56, 8) != 0) return dsi_seterr(err, DSI_EFORMAT, "%s: reserved header bytes are not zero", name);
    uint64_t want;
    if (dsi_wenc_sealed_size(h->plain_bytes, h->chunk_bytes, &want) != 0)
        return dsi_seterr(err, DSI_EFORMAT, "%s: plaintext length %llu is out of range", name,
                          (unsigned long long)h->plain_bytes);
    if (file_bytes && file_bytes != want)
        return dsi_seterr(err, DSI_EINTEGRITY, "%s: %llu bytes, but its header implies %llu (truncated or extended)",
                          name, (unsigned long long)file_bytes, (unsigned long long)want);
    return 0;
}

/* The per-file key: HKDF-SHA256(key, salt = file id, info). */
static int derive(const struct dsi_wenc_key *k, const uint8_t file_id[16], uint8_t out[DSI_WENC_KEY_LEN]) {
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    size_t n = DSI_WENC_KEY_LEN;
    int ok = pc && EVP_PKEY_derive_init(pc) == 1 && EVP_PKEY_CTX_set_hkdf_md(pc, EVP_sha256()) == 1 &&
             EVP_PKEY_CTX_set1_hkdf_salt(pc, file_id, 16) == 1 &&
             EVP_PKEY_CTX_set1_hkdf_key(pc, k->key, DSI_WENC_KEY_LEN) == 1 &&
             EVP_PKEY_CTX_add1_hkdf_info(pc, (const unsigned char *)hkdf_info, sizeof hkdf_info - 1) == 1 &&
             EVP_PKEY_derive(pc, out, &n) == 1 && n == DSI_WENC_KEY_LEN;
    EVP_PKEY_CTX_free(pc);
    return ok ? 0 : DSI_EINTERNAL;
}

static EVP_CIPHER_CTX *cipher_new(const uint8_t subkey[DSI_WENC_KEY_LEN], bool enc) {
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (c && EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, subkey, NULL, enc ? 1 : 0) != 1) {
        EVP_CIPHER_CTX_free(c);
        c = NULL;
    }
    return c;
}

/* Seals (enc) or opens chunk i: in[0..n) -> out[0..n), tag written or checked.
 * Returns 0, DSI_EINTEGRITY (tag mismatch) or DSI_EINTERNAL. */
static int chunk_crypt(EVP_CIPHER_CTX *c, const struct file_ctx *f, uint64_t i, bool enc, const uint8_t *in,
                       size_t n, uint8_t *out, uint8_t tag[DSI_WENC_TAG_LEN]) {
    uint8_t iv[12], aad[AAD_LEN];
    int l = 0;
    memcpy(iv, f->h.file_id, 4);
    put_be64(iv + 4, i);
    memcpy(aad, f->hdr, DSI_WENC_HEADER_LEN);
    put_be64(aad + DSI_WENC_HEADER_LEN, i);
    aad[AAD_LEN - 1] = i + 1 == f->n_chunks;
    if (EVP_CipherInit_ex(c, NULL, NULL, NULL, iv, enc ? 1 : 0) != 1 ||
        EVP_CipherUpdate(c, NULL, &l, aad, (int)sizeof aad) != 1)
        return DSI_EINTERNAL;
    if (n && EVP_CipherUpdate(c, out, &l, in, (int)n) != 1) return DSI_EINTERNAL;
    if (!enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, DSI_WENC_TAG_LEN, tag) != 1) return DSI_EINTERNAL;
    uint8_t end[16];
    if (EVP_CipherFinal_ex(c, end, &l) != 1) return enc ? DSI_EINTERNAL : DSI_EINTEGRITY;
    if (enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, DSI_WENC_TAG_LEN, tag) != 1) return DSI_EINTERNAL;
    return 0;
}

/* Header bytes + per-file key for encryption (fresh file id) or decryption. */
static int file_begin(struct file_ctx *f, const struct dsi_wenc_key *k, const uint8_t *stored, uint64_t plain,
                      uint32_t chunk, const char *name, uint64_t file_bytes, char **err) {
    memset(f, 0, sizeof *f);
    int rc;
    if (stored) {
        if ((rc = dsi_wenc_header_parse(stored, DSI_WENC_HEADER_LEN, file_bytes, name, &f->h, err))) return rc;
        if (!dsi_ct_equal(f->h.key_id, k->id, DSI_WENC_KEY_ID_LEN)) {
            char a[33], b[33];
            dsi_hex_encode(f->h.key_id, 16, a);
            dsi_hex_encode(k->id, 16, b);
            return dsi_seterr(err, DSI_EINTEGRITY, "%s: encrypted with key id %s, but the key file's id is %s (wrong key)",
                              name, a, b);
        }
        memcpy(f->hdr, stored, DSI_WENC_HEADER_LEN);
    } else {
        if (chunk < CHUNK_MIN || chunk > CHUNK_MAX || (chunk & (chunk - 1)) || plain > PLAIN_MAX)
            return dsi_seterr(err, DSI_EINVAL, "%s: bad chunk size or length", name);
        memcpy(f->hdr, MAGIC, 8);
        put_le(f->hdr + 8, VERSION, 2);
        put_le(f->hdr + 10, ALG_AES256GCM_HKDF, 2);
        put_le(f->hdr + 12, chunk, 4);
        memcpy(f->hdr + 16, k->id, DSI_WENC_KEY_ID_LEN);
        if (dsi_random_bytes(f->hdr + 32, 16) != 0) return dsi_seterr(err, DSI_EINTERNAL, "no random bytes");
        put_le(f->hdr + 48, plain, 8);
        if ((rc = dsi_wenc_header_parse(f->hdr, DSI_WENC_HEADER_LEN, 0, name, &f->h, err))) return rc;
    }
    f->n_chunks = f->h.plain_bytes ? (f->h.plain_bytes - 1) / f->h.chunk_bytes + 1 : 1;
    if ((rc = derive(k, f->h.file_id, f->subkey))) return dsi_seterr(err, rc, "%s: key derivation failed", name);
    return 0;
}

/* One decryption: the source is enc (memory) or fd (pread per chunk). */
struct dec_job {
    const struct file_ctx *f;
    const uint8_t *enc;
    int fd;
    uint8_t *out;
    _Atomic uint64_t next;
    pthread_mutex_t mu;
    int rc;
    uint64_t bad_chunk;
};

static void *dec_worker(void *arg) {
    struct dec_job *j = arg;
    const struct file_ctx *f = j->f;
    const uint64_t cb = f->h.chunk_bytes, stride = cb + DSI_WENC_TAG_LEN;
    EVP_CIPHER_CTX *c = cipher_new(f->subkey, false);
    uint8_t *buf = j->enc ? NULL : malloc(stride);
    int rc = c && (j->enc || buf) ? 0 : DSI_ENOMEM;
    uint64_t i = 0;
    while (!rc && (i = atomic_fetch_add(&j->next, 1)) < f->n_chunks) {
        uint64_t off = i * cb, n = f->h.plain_bytes - off < cb ? f->h.plain_bytes - off : cb;
        uint64_t at = DSI_WENC_HEADER_LEN + i * stride;
        const uint8_t *src = j->enc ? j->enc + at : buf;
        if (!j->enc) {
            size_t got = 0;
            while (got < n + DSI_WENC_TAG_LEN) {
                ssize_t r = pread(j->fd, buf + got, n + DSI_WENC_TAG_LEN - got, (off_t)(at + got));
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) break;
                got += (size_t)r;
            }
            if (got != n + DSI_WENC_TAG_LEN) rc = DSI_EIO;
        }
        if (!rc) rc = chunk_crypt(c, f, i, false, src, n, j->out + off, (uint8_t *)src + n);
    }
    if (rc) {
        pthread_mutex_lock(&j->mu);
        if (!j->rc || i < j->bad_chunk) j->rc = rc, j->bad_chunk = i;
        pthread_mutex_unlock(&j->mu);
        atomic_store(&j->next, f->n_chunks); /* stop the others early */
    }
    EVP_CIPHER_CTX_free(c);
    free(buf);
    return NULL;
}

static int run_decrypt(const struct file_ctx *f, const uint8_t *enc, int fd, uint8_t *out, int n_threads,
                       const char *name, char **err) {
    struct dec_job j = {.f = f, .enc = enc, .fd = fd, .out = out};
    pthread_mutex_init(&j.mu, NULL);
    uint64_t nt = n_threads > 0 ? (uint64_t)n_threads : 1;
    if (nt > MAX_THREADS) nt = MAX_THREADS;
    if (nt > f->n_chunks) nt = f->n_chunks;
    pthread_t th[MAX_THREADS];
    uint64_t started = 0;
    for (; nt > 1 && started < nt; started++)
        if (pthread_create(&th[started], NULL, dec_worker, &j) != 0) break;
    if (started == 0) dec_worker(&j);
    for (uint64_t t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    pthread_mutex_destroy(&j.mu);
    if (j.rc == DSI_EINTEGRITY)
        return dsi_seterr(err, DSI_EINTEGRITY,
                          "%s: chunk %llu of %llu failed authentication (wrong key, modified, reordered or "
                          "truncated)",
                          name, (unsigned long long)j.bad_chunk, (unsigned long long)f->n_chunks);
    if (j.rc == DSI_EIO) return dsi_seterr(err, DSI_EIO, "%s: read failed at chunk %llu", name, (unsigned long long)j.bad_chunk);
    if (j.rc) return dsi_seterr(err, j.rc, "%s: decryption failed: %s", name, dsi_strerror(j.rc));
    return 0;
}

int dsi_wenc_decrypt_mem(const struct dsi_wenc_key *k, const void *enc, size_t enc_len, void *out,
                         size_t out_cap, size_t *plain_bytes, int n_threads, const char *name, char **err) {
    if (!k || (!enc && enc_len) || (!out && out_cap)) return DSI_EINVAL;
    if (!name) name = "(memory)";
    struct file_ctx f;
    int rc = enc_len >= DSI_WENC_HEADER_LEN
                 ? file_begin(&f, k, enc, 0, 0, name, enc_len, err)
                 : dsi_wenc_header_parse(enc, enc_len, enc_len, name, &f.h, err);
    if (!rc && f.h.plain_bytes > out_cap) rc = dsi_seterr(err, DSI_ENOBUFS, "%s: output buffer too small", name);
    if (!rc) rc = run_decrypt(&f, enc, -1, out, n_threads, name, err);
    if (!rc && plain_bytes) *plain_bytes = (size_t)f.h.plain_bytes;
    dsi_secure_wipe(f.subkey, sizeof f.subkey);
    return rc;
}

int dsi_wenc_encrypt_mem(const struct dsi_wenc_key *k, const void *plain, size_t len, uint32_t chunk_bytes,
                         void *out, size_t out_cap, size_t *out_bytes, char **err) {
    if (!k || (!plain && len) || !out) return DSI_EINVAL;
    struct file_ctx f;
    uint64_t need = 0;
    int rc = file_begin(&f, k, NULL, len, chunk_bytes, "(memory)", 0, err);
    if (!rc && (dsi_wenc_sealed_size(len, chunk_bytes, &need) || need > out_cap))
        rc = dsi_seterr(err, DSI_ENOBUFS, "encrypt: output buffer too small");
    EVP_CIPHER_CTX *c = rc ? NULL : cipher_new(f.subkey, true);
    if (!rc && !c) rc = dsi_seterr(err, DSI_EINTERNAL, "encrypt: no cipher context");
    uint8_t *o = out;
    if (!rc) memcpy(o, f.hdr, DSI_WENC_HEADER_LEN);
    for (uint64_t i = 0; !rc && i < f.n_chunks; i++) {
        uint64_t off = i * chunk_bytes, n = len - off < chunk_bytes ? len - off : chunk_bytes;
        uint8_t *dst = o + DSI_WENC_HEADER_LEN + i * ((uint64_t)chunk_bytes + DSI_WENC_TAG_LEN);
        rc = chunk_crypt(c, &f, i, true, (const uint8_t *)plain + off, n, dst, dst + n);
        if (rc) dsi_seterr(err, rc, "encrypt: chunk %llu failed", (unsigned long long)i);
    }
    if (!rc && out_bytes) *out_bytes = (size_t)need;
    EVP_CIPHER_CTX_free(c);
    dsi_secure_wipe(f.subkey, sizeof f.subkey);
    return rc;
}

static int write_all(int fd, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return DSI_EIO;
        b += w, n -= (size_t)w;
    }
    return 0;
}

int dsi_wenc_encrypt_file(const struct dsi_wenc_key *k, const char *src, const char *dst, uint32_t chunk_bytes,
                          char **err) {
    if (!k || !src || !dst) return DSI_EINVAL;
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, rc = 0;
    struct stat sb;
    struct file_ctx f = {0};
    uint8_t *buf = NULL;
    EVP_CIPHER_CTX *c = NULL;
    if (in < 0 || fstat(in, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        rc = dsi_seterr(err, DSI_EIO, "%s: cannot open as a regular file: %s", src, strerror(errno));
        goto out;
    }
    if ((rc = file_begin(&f, k, NULL, (uint64_t)sb.st_size, chunk_bytes, src, 0, err))) goto out;
    buf = malloc((size_t)chunk_bytes + DSI_WENC_TAG_LEN);
    c = cipher_new(f.subkey, true);
    if (!buf || !c) {
        rc = dsi_seterr(err, DSI_ENOMEM, "out of memory");
        goto out;
    }
    if ((out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0) {
        rc = dsi_seterr(err, DSI_EIO, "%s: cannot create: %s", dst, strerror(errno));
        goto out;
    }
    rc = write_all(out, f.hdr, DSI_WENC_HEADER_LEN);
    for (uint64_t i = 0; !rc && i < f.n_chunks; i++) {
        uint64_t off = i * chunk_bytes, n = f.h.plain_bytes - off < chunk_bytes ? f.h.plain_bytes - off : chunk_bytes;
        size_t got = 0;
        while (got < n) {
            ssize_t r = pread(in, buf + got, n - got, (off_t)(off + got));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            got += (size_t)r;
        }
        if (got != n) {
            rc = dsi_seterr(err, DSI_EIO, "%s: changed or unreadable while encrypting", src);
            break;
        }
        if ((rc = chunk_crypt(c, &f, i, true, buf, n, buf, buf + n)) ||
            (rc = write_all(out, buf, n + DSI_WENC_TAG_LEN)))
            dsi_seterr(err, rc, "%s: write failed: %s", dst, strerror(errno));
    }
    struct stat sa;
    if (!rc && (fstat(in, &sa) != 0 || sa.st_size != sb.st_size || sa.st_mtime != sb.st_mtime))
        rc = dsi_seterr(err, DSI_EIO, "%s: changed while encrypting", src);
    if (!rc && fsync(out) != 0) rc = dsi_seterr(err, DSI_EIO, "%s: fsync failed: %s", dst, strerror(errno));
out:
    if (out >= 0 && close(out) != 0 && !rc) rc = dsi_seterr(err, DSI_EIO, "%s: close failed", dst);
    if (rc && out >= 0) unlink(dst);
    if (in >= 0) close(in);
    if (buf) dsi_secure_wipe(buf, (size_t)chunk_bytes + DSI_WENC_TAG_LEN);
    free(buf);
    EVP_CIPHER_CTX_free(c);
    dsi_secure_wipe(f.subkey, sizeof f.subkey);
    return rc;
}

void dsi_wenc_plain_free(struct dsi_wenc_plain *p) {
    if (!p || !p->data) return;
    if (mprotect(p->data, p->map_len, PROT_READ | PROT_WRITE) == 0) dsi_secure_wipe(p->data, p->map_len);
    if (p->locked) munlock(p->data, p->map_len);
    munmap(p->data, p->map_len);
    memset(p, 0, sizeof *p);
}

int dsi_wenc_decrypt_file(const struct dsi_wenc_key *k, const char *path, struct dsi_wenc_plain *p,
                          int n_threads, char **err) {
    if (!k || !path || !p) return DSI_EINVAL;
    memset(p, 0, sizeof *p);
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc = 0;
    struct stat sb;
    uint8_t hdr[DSI_WENC_HEADER_LEN];
    struct file_ctx f = {0};
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        rc = dsi_seterr(err, fd < 0 && errno == ENOENT ? DSI_ENOENT : DSI_EIO, "%s: cannot open: %s", path,
                        strerror(errno));
        goto out;
    }
    if (sb.st_size < DSI_WENC_HEADER_LEN || pread(fd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr) {
        rc = dsi_seterr(err, DSI_EFORMAT, "%s: too short for an encrypted file (%lld bytes)", path,
                        (long long)sb.st_size);
        goto out;
    }
    if ((rc = file_begin(&f, k, hdr, 0, 0, path, (uint64_t)sb.st_size, err))) goto out;
    long pg = sysconf(_SC_PAGESIZE);
    size_t page = pg > 0 ? (size_t)pg : 4096;
    p->len = (size_t)f.h.plain_bytes;
    p->map_len = p->len ? (p->len + page - 1) / page * page : page;
    void *m = mmap(NULL, p->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        memset(p, 0, sizeof *p);
        rc = dsi_seterr(err, DSI_ENOMEM, "%s: cannot map %zu bytes for the plaintext", path, p->len);
        goto out;
    }
    p->data = m;
    /* the plaintext must not reach a core dump or swap: DONTDUMP always; mlock
     * when RLIMIT_MEMLOCK allows (LimitMEMLOCK= in the unit) */
    (void)madvise(m, p->map_len, MADV_DONTDUMP);
    p->locked = mlock(m, p->map_len) == 0;
    if ((rc = run_decrypt(&f, NULL, fd, p->data, n_threads, path, err))) goto out;
    (void)mprotect(m, p->map_len, PROT_READ);
out:
    if (rc) dsi_wenc_plain_free(p);
    if (fd >= 0) close(fd);
    dsi_secure_wipe(f.subkey, sizeof f.subkey);
    return rc;
}
