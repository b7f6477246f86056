/*
 * wenc.h: model weights encrypted at rest (AES-256-GCM, OpenSSL EVP).
 *
 * `dsinfer encrypt` turns every file of a model directory into the format
 * below; dsi_model_open() with model_key_file decrypts them into locked,
 * non-dumpable memory. The SHA256SUMS of an encrypted directory lists the
 * encrypted files, so `dsinfer verify` needs no key.
 *
 * One encrypted file = a 64-byte header, then the plaintext in chunks of
 * chunk_bytes (the last one shorter, an empty file one empty chunk), each
 * chunk's ciphertext followed by its 16-byte GCM tag. Header (little endian):
 *   0  magic "DSINFENC"      8  u16 version (1)   10 u16 algorithm (1)
 *   12 u32 chunk_bytes       16 key_id[16]        32 file_id[16] (random)
 *   48 u64 plaintext bytes   56 u64 reserved (0)
 * Chunk i is sealed under a per-file key HKDF-SHA256(key, salt = file_id,
 * info = "dsinfer weights v1") with the nonce file_id[0..4) || be64(i) and the
 * additional data header || be64(i) || u8(final), so the header (length,
 * chunk size, ids), the order of the chunks and where the file ends are all
 * authenticated: a flipped byte, a chunk moved or dropped, a file cut short
 * or a wrong key fail the tag. key_id = SHA-256("dsinfer key id v1" || key)
 * [0..16) names the key without revealing it.
 *
 * Owner: src/model (wenc.c, wenc_dir.c).
 */
#ifndef DSINFER_WENC_H
#define DSINFER_WENC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DSI_WENC_KEY_LEN 32
#define DSI_WENC_KEY_ID_LEN 16
#define DSI_WENC_HEADER_LEN 64
#define DSI_WENC_TAG_LEN 16
#define DSI_WENC_CHUNK_DEFAULT ((uint32_t)4 << 20) /* 4 MiB */

/* A loaded key. Lives on the caller's stack or heap for the time it takes to
 * open a model; wipe it with dsi_wenc_key_wipe as soon as it is not needed. */
struct dsi_wenc_key {
    uint8_t key[DSI_WENC_KEY_LEN];
    uint8_t id[DSI_WENC_KEY_ID_LEN];
};

struct dsi_wenc_header {
    uint16_t version, algorithm;
    uint32_t chunk_bytes;
    uint8_t key_id[DSI_WENC_KEY_ID_LEN];
    uint8_t file_id[16];
    uint64_t plain_bytes;
};

/* Reads a key file: 32 raw bytes, or 64 hex digits with an optional newline.
 * A key file readable or writable by group or others (mode & 077) is refused
 * (DSI_EPERM, "chmod 600"), as is anything but a regular file. The bytes read
 * are wiped; *k is filled (key and id). Errors never quote the key. */
int dsi_wenc_key_load(const char *path, struct dsi_wenc_key *k, char **err);
/* Fills k from 32 key bytes (computes the id). */
void dsi_wenc_key_set(struct dsi_wenc_key *k, const uint8_t key[DSI_WENC_KEY_LEN]);
void dsi_wenc_key_wipe(struct dsi_wenc_key *k);
/* Writes a new random key as 64 hex digits + newline to path, created with
 * mode 0600 (O_EXCL: an existing file is DSI_EIO, never overwritten). */
int dsi_wenc_key_generate(const char *path, char **err);

/* true if buf starts with the magic (at least 8 bytes). */
bool dsi_wenc_is_encrypted(const void *buf, size_t len);
/* Parses and checks a header from buf[0..len) (len >= 64): magic, version,
 * algorithm, chunk_bytes a power of two in [4 KiB, 64 MiB], reserved zero,
 * length within 2^50. With file_bytes != 0 (the encrypted file's size), that
 * size must be exactly what the header implies (truncation, appended bytes).
 * DSI_EFORMAT with *err naming `name` otherwise. The fuzz target's entry. */
int dsi_wenc_header_parse(const void *buf, size_t len, uint64_t file_bytes, const char *name,
                          struct dsi_wenc_header *h, char **err);
/* Encrypted size of plain_bytes in chunks of chunk_bytes; DSI_EOVERFLOW. */
int dsi_wenc_sealed_size(uint64_t plain_bytes, uint32_t chunk_bytes, uint64_t *out);

/* Decrypts a whole encrypted image enc[0..enc_len) into out (out_cap >= the
 * header's plain_bytes) on n_threads threads (0: 1). DSI_EINTEGRITY naming
 * `name` and the chunk on a wrong key (key id differs), a failed tag, or a
 * size that does not match the header. out's contents are undefined on error
 * (the caller wipes it). *plain_bytes gets the length. */
int dsi_wenc_decrypt_mem(const struct dsi_wenc_key *k, const void *enc, size_t enc_len, void *out,
                         size_t out_cap, size_t *plain_bytes, int n_threads, const char *name, char **err);
/* Encrypts plain[0..len) into out (out_cap >= dsi_wenc_sealed_size) with a
 * fresh random file id. *out_bytes gets the encrypted size. */
int dsi_wenc_encrypt_mem(const struct dsi_wenc_key *k, const void *plain, size_t len, uint32_t chunk_bytes,
                         void *out, size_t out_cap, size_t *out_bytes, char **err);

/* Streams file src into a new file dst (O_EXCL, mode 0644), chunk by chunk. */
int dsi_wenc_encrypt_file(const struct dsi_wenc_key *k, const char *src, const char *dst, uint32_t chunk_bytes,
                          char **err);

/* A decrypted file in anonymous memory: MADV_DONTDUMP, mlock'ed when the
 * RLIMIT_MEMLOCK allows (locked says whether it did). Free with
 * dsi_wenc_plain_free, which wipes the bytes before unmapping. */
struct dsi_wenc_plain {
    uint8_t *data;
    size_t len;
    size_t map_len; /* mapping size (>= 1 page) */
    bool locked;
};
/* Reads and decrypts the file at path into *p. */
int dsi_wenc_decrypt_file(const struct dsi_wenc_key *k, const char *path, struct dsi_wenc_plain *p,
                          int n_threads, char **err);
void dsi_wenc_plain_free(struct dsi_wenc_plain *p);

/* `dsinfer encrypt` / `decrypt`: every regular, non-hidden file of src (as
 * dsi_manifest_write lists them; src's own SHA256SUMS is verified first if
 * present, and not copied) is written to the same name under dst, which must
 * not exist or be empty; then dst/SHA256SUMS is written over the new files.
 * decrypt refuses a file that is not encrypted with this key. */
int dsi_wenc_encrypt_dir(const struct dsi_wenc_key *k, const char *src, const char *dst, int n_threads,
                         char **err);
int dsi_wenc_decrypt_dir(const struct dsi_wenc_key *k, const char *src, const char *dst, int n_threads,
                         char **err);

#endif
