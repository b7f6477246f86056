/*
 * test_model_wenc.c: weights encrypted at rest (include/dsinfer/wenc.h).
 *
 * The chunk format round-trips at every size around the chunk boundary; a
 * wrong key, a flipped byte (header, ciphertext, tag), a truncated file, a
 * truncation re-labelled in the header and two swapped chunks all fail with
 * DSI_EINTEGRITY; key files are refused unless 0600-or-stricter and well
 * formed; an encrypted model directory opens with the key (same tensors as the
 * plain one, tokenizer from memory, plaintext mapped MADV_DONTDUMP), and fails
 * closed without it, with another key, or with a byte flipped behind a
 * rewritten SHA256SUMS.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dsinfer/crypto.h"
#include "dsinfer/err.h"
#include "dsinfer/model.h"
#include "dsinfer/tok.h"
#include "dsinfer/wenc.h"
#include "test.h"

/* helpers from test_model_util.c */
char *tm_mkdtemp(void);
int tm_rm_rf(const char *dir);
int tm_write_file(const char *path, const void *p, size_t n);
char *tm_path(const char *dir, const char *name);
int tm_make_model(const char *dir);
int tm_flip_byte(const char *dir, const char *name, off_t at);

#define CH 4096u

static void key_of(struct dsi_wenc_key *k, uint8_t fill) {
    uint8_t raw[DSI_WENC_KEY_LEN];
    memset(raw, fill, sizeof raw);
    dsi_wenc_key_set(k, raw);
}

/* Encrypts n pattern bytes; *enc (caller frees) of *enc_len bytes. */
static uint8_t *seal(const struct dsi_wenc_key *k, size_t n, size_t *enc_len, uint8_t **plain) {
    uint64_t cap = 0;
    uint8_t *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 31 + 7);
    if (dsi_wenc_sealed_size(n, CH, &cap)) return NULL;
    uint8_t *e = malloc(cap);
    char *err = NULL;
    int rc = dsi_wenc_encrypt_mem(k, p, n, CH, e, cap, enc_len, &err);
    free(err);
    if (rc || *enc_len != cap) {
        free(e), free(p);
        return NULL;
    }
    *plain = p;
    return e;
}

static int open_mem(const struct dsi_wenc_key *k, const uint8_t *e, size_t len, char **msg) {
    uint8_t *out = malloc(len + 1);
    size_t got = 0;
    int rc = dsi_wenc_decrypt_mem(k, e, len, out, len + 1, &got, 2, "t", msg);
    free(out);
    return rc;
}

TEST(roundtrip_sizes) {
    struct dsi_wenc_key k;
    key_of(&k, 0x11);
    const size_t sizes[] = {0, 1, CH - 1, CH, CH + 1, 3 * CH + 5};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t el = 0;
        uint8_t *p = NULL, *e = seal(&k, sizes[s], &el, &p);
        CHECK(e != NULL);
        if (!e) continue;
        CHECK(dsi_wenc_is_encrypted(e, el));
        uint8_t *out = malloc(sizes[s] + 1);
        size_t got = 99;
        CHECK_EQ_INT(dsi_wenc_decrypt_mem(&k, e, el, out, sizes[s] + 1, &got, 3, "t", NULL), 0);
        CHECK(got == sizes[s]);
        CHECK(sizes[s] == 0 || memcmp(out, p, sizes[s]) == 0);
        /* the ciphertext is not the plaintext */
        CHECK(sizes[s] < 16 || memcmp(e + DSI_WENC_HEADER_LEN, p, 16) != 0);
        free(out), free(e), free(p);
    }
}

TEST(two_encryptions_differ) {
    struct dsi_wenc_key k;
    key_of(&k, 0x22);
    size_t a_len, b_len;
    uint8_t *pa, *pb, *a = seal(&k, 100, &a_len, &pa), *b = seal(&k, 100, &b_len, &pb);
    CHECK(a && b && a_len == b_len);
    /* fresh file id -> different per-file key and nonce */
    CHECK(a && b && memcmp(a + 32, b + 32, 16) != 0);
    CHECK(a && b && memcmp(a + DSI_WENC_HEADER_LEN, b + DSI_WENC_HEADER_LEN, 100) != 0);
    free(a), free(b), free(pa), free(pb);
}

TEST(wrong_key) {
    struct dsi_wenc_key k, other;
    key_of(&k, 0x33);
    key_of(&other, 0x34);
    size_t el;
    uint8_t *p, *e = seal(&k, 2 * CH, &el, &p);
    char *msg = NULL;
    CHECK_EQ_INT(open_mem(&other, e, el, &msg), DSI_EINTEGRITY);
    CHECK(msg && strstr(msg, "wrong key"));
    free(msg);
    /* same key id forged into the header: the tag still fails */
    memcpy(e + 16, other.id, 16);
    msg = NULL;
    CHECK_EQ_INT(open_mem(&other, e, el, &msg), DSI_EINTEGRITY);
    CHECK(msg && strstr(msg, "failed authentication"));
    free(msg), free(e), free(p);
}

TEST(flipped_bytes) {
    struct dsi_wenc_key k;
    key_of(&k, 0x44);
    size_t el;
    uint8_t *p, *e = seal(&k, 2 * CH + 10, &el, &p);
    /* file id, length, ciphertext of chunks 0 and 2, tag of chunk 1 */
    const size_t at[] = {40, 48, DSI_WENC_HEADER_LEN + 3, el - 20, DSI_WENC_HEADER_LEN + 2 * CH + 16 + 2};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        e[at[i]] ^= 0x80;
        char *msg = NULL;
        int rc = open_mem(&k, e, el, &msg);
        CHECK(rc == DSI_EINTEGRITY || rc == DSI_EFORMAT);
        CHECK(msg != NULL);
        free(msg);
        e[at[i]] ^= 0x80;
    }
    CHECK_EQ_INT(open_mem(&k, e, el, NULL), 0);
    free(e), free(p);
}

TEST(truncated_and_reordered) {
    struct dsi_wenc_key k;
    key_of(&k, 0x55);
    size_t el;
    uint8_t *p, *e = seal(&k, 3 * CH, &el, &p);
    char *msg = NULL;
    /* cut at a chunk boundary: the size no longer matches the header */
    CHECK_EQ_INT(open_mem(&k, e, el - (CH + 16), &msg), DSI_EINTEGRITY);
    CHECK(msg && strstr(msg, "truncated"));
    free(msg);
    /* cut and the header's length rewritten to match: the header is AAD and
     * chunk 1 is not marked final, so the tags fail */
    uint8_t *t = malloc(el);
    memcpy(t, e, el);
    uint64_t shorter = 2 * CH;
    for (int i = 0; i < 8; i++)
        t[48 + i] = (uint8_t)(shorter >> (8 * i));
    CHECK_EQ_INT(open_mem(&k, t, el - (CH + 16), NULL), DSI_EINTEGRITY);
    /* chunks 0 and 1 swapped */
    memcpy(t, e, el);
    size_t st = CH + 16;
    memcpy(t + DSI_WENC_HEADER_LEN, e + DSI_WENC_HEADER_LEN + st, st);
    memcpy(t + DSI_WENC_HEADER_LEN + st, e + DSI_WENC_HEADER_LEN, st);
    msg = NULL;
    CHECK_EQ_INT(open_mem(&k, t, el, &msg), DSI_EINTEGRITY);
    CHECK(msg && strstr(msg, "chunk 0"));
    free(msg), free(t), free(e), free(p);
}

TEST(header_checks) {
    uint8_t h[DSI_WENC_HEADER_LEN] = "DSINFENC";
    struct dsi_wenc_header hd;
    h[8] = 1, h[10] = 1, h[13] = 0x10; /* chunk 4096 */
    CHECK_EQ_INT(dsi_wenc_header_parse(h, sizeof h, 0, "h", &hd, NULL), 0);
    CHECK_EQ_INT(dsi_wenc_header_parse(h, sizeof h - 1, 0, "h", &hd, NULL), DSI_EFORMAT);
    h[8] = 2;
    CHECK_EQ_INT(dsi_wenc_header_parse(h, sizeof h, 0, "h", &hd, NULL), DSI_EFORMAT);
    h[8] = 1, h[12] = 1; /* not a power of two */
    CHECK_EQ_INT(dsi_wenc_header_parse(h, sizeof h, 0, "h", &hd, NULL), DSI_EFORMAT);
    h[12] = 0, h[60] = 1; /* reserved */
    CHECK_EQ_INT(dsi_wenc_header_parse(h, sizeof h, 0, "h", &hd, NULL), DSI_EFORMAT);
    h[60] = 0, h[55] = 0x40; /* length 2^62 */
    CHECK_EQ_INT(dsi_wenc_header_parse(h, sizeof h, 0, "h", &hd, NULL), DSI_EFORMAT);
    h[55] = 0, h[0] = 'X';
    CHECK_EQ_INT(dsi_wenc_header_parse(h, sizeof h, 0, "h", &hd, NULL), DSI_EFORMAT);
}

TEST(key_files) {
    char *d = tm_mkdtemp(), *p = tm_path(d, "k");
    struct dsi_wenc_key k, k2;
    char *msg = NULL;
    CHECK_EQ_INT(dsi_wenc_key_generate(p, NULL), 0);
    CHECK(dsi_wenc_key_generate(p, NULL) != 0); /* never overwritten */
    struct stat sb;
    CHECK(stat(p, &sb) == 0 && (sb.st_mode & 0777) == 0600);
    CHECK_EQ_INT(dsi_wenc_key_load(p, &k, NULL), 0);
    chmod(p, 0640);
    CHECK_EQ_INT(dsi_wenc_key_load(p, &k2, &msg), DSI_EPERM);
    CHECK(msg && strstr(msg, "chmod 600"));
    free(msg);
    chmod(p, 0400);
    CHECK_EQ_INT(dsi_wenc_key_load(p, &k2, NULL), 0);
    CHECK(memcmp(k.key, k2.key, 32) == 0 && memcmp(k.id, k2.id, 16) == 0);
    unlink(p);
    uint8_t raw[32];
    memset(raw, 0x5a, 32);
    tm_write_file(p, raw, 32);
    chmod(p, 0600);
    CHECK_EQ_INT(dsi_wenc_key_load(p, &k, NULL), 0);
    key_of(&k2, 0x5a);
    CHECK(memcmp(k.key, k2.key, 32) == 0 && memcmp(k.id, k2.id, 16) == 0);
    unlink(p);
    tm_write_file(p, "abcd\n", 5);
    chmod(p, 0600);
    msg = NULL;
    CHECK_EQ_INT(dsi_wenc_key_load(p, &k, &msg), DSI_EFORMAT);
    CHECK(msg && !strstr(msg, "abcd")); /* never quotes the key file's bytes */
    free(msg);
    CHECK_EQ_INT(dsi_wenc_key_load("/nonexistent/k", &k, NULL), DSI_ENOENT);
    tm_rm_rf(d);
    free(d), free(p);
}

/* A plain tiny model with SHA256SUMS, its encryption, and a key file. */
struct fx {
    char *root, *plain, *enc, *key;
};

static int fx_make(struct fx *f) {
    memset(f, 0, sizeof *f);
    f->root = tm_mkdtemp();
    f->plain = tm_path(f->root, "plain");
    f->enc = tm_path(f->root, "enc");
    f->key = tm_path(f->root, "k");
    struct dsi_wenc_key k;
    if (!f->root || mkdir(f->plain, 0755) || tm_make_model(f->plain)) return -1;
    char *tc = tm_path(f->plain, "tokenizer_config.json");
    tm_write_file(tc, "{}", 2);
    free(tc);
    if (dsi_manifest_write(f->plain, NULL, NULL) || dsi_wenc_key_generate(f->key, NULL) ||
        dsi_wenc_key_load(f->key, &k, NULL))
        return -1;
    int rc = dsi_wenc_encrypt_dir(&k, f->plain, f->enc, 2, NULL);
    dsi_wenc_key_wipe(&k);
    return rc;
}

static void fx_free(struct fx *f) {
    if (f->root) tm_rm_rf(f->root);
    free(f->root), free(f->plain), free(f->enc), free(f->key);
}

/* true if the mapping holding p carries the "dd" (MADV_DONTDUMP) VmFlag. */
static bool dontdump(const void *p) {
    FILE *s = fopen("/proc/self/smaps", "r");
    char line[512];
    bool in = false, dd = false;
    unsigned long a = (unsigned long)p;
    while (s && fgets(line, sizeof line, s)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
            in = a >= lo && a < hi;
        else if (in && !strncmp(line, "VmFlags:", 8))
            dd = strstr(line, " dd") != NULL;
    }
    if (s) fclose(s);
    return dd;
}

TEST(model_open_encrypted) {
    struct fx f;
    if (fx_make(&f)) {
        CHECK(0);
        fx_free(&f);
        return;
    }
    struct dsi_model a, b;
    char *msg = NULL;
    CHECK_EQ_INT(dsi_model_open(&a, f.plain, NULL, NULL), 0);
    struct dsi_model_open_opts o = {.key_file = f.key, .defer_weight_hash = true};
    CHECK_EQ_INT(dsi_model_open(&b, f.enc, &o, &msg), 0);
    if (msg) fprintf(stderr, "  %s\n", msg);
    CHECK(b.encrypted && b.n_pending == 0 && dsi_model_unverified(&b) == 0);
    CHECK(a.cfg.hidden_size == b.cfg.hidden_size && a.st.n_tensors == b.st.n_tensors);
    for (size_t i = 0; i < a.st.n_tensors && i < b.st.n_tensors; i++) {
        CHECK_EQ_STR(a.st.tensors[i].name, b.st.tensors[i].name);
        CHECK(b.st.tensors[i].data && a.st.tensors[i].size_bytes == b.st.tensors[i].size_bytes &&
              !memcmp(a.st.tensors[i].data, b.st.tensors[i].data, a.st.tensors[i].size_bytes));
    }
    if (b.st.n_tensors) CHECK(dontdump(b.st.tensors[0].data));
    const void *tj;
    size_t tl;
    CHECK_EQ_INT(dsi_model_file(&b, "tokenizer.json", &tj, &tl), 0);
    CHECK(tl == 12 && !memcmp(tj, "{\"model\":{}}", 12));
    CHECK_EQ_INT(dsi_model_file(&a, "tokenizer.json", &tj, &tl), DSI_ENOENT);
    dsi_model_close(&a);
    dsi_model_close(&b);
    free(msg);
    fx_free(&f);
}

TEST(model_open_refusals) {
    struct fx f;
    if (fx_make(&f)) {
        CHECK(0);
        fx_free(&f);
        return;
    }
    struct dsi_model m;
    char *msg = NULL;
    /* encrypted, no key */
    CHECK_EQ_INT(dsi_model_open(&m, f.enc, NULL, &msg), DSI_EPERM);
    CHECK(msg && strstr(msg, "model_key_file"));
    free(msg), msg = NULL;
    /* key given, plain folder */
    struct dsi_model_open_opts o = {.key_file = f.key};
    CHECK_EQ_INT(dsi_model_open(&m, f.plain, &o, &msg), DSI_EINTEGRITY);
    CHECK(msg && strstr(msg, "not encrypted"));
    free(msg), msg = NULL;
    /* another key */
    char *k2 = tm_path(f.root, "k2");
    dsi_wenc_key_generate(k2, NULL);
    struct dsi_model_open_opts o2 = {.key_file = k2};
    CHECK_EQ_INT(dsi_model_open(&m, f.enc, &o2, &msg), DSI_EINTEGRITY);
    CHECK(msg && strstr(msg, "wrong key"));
    free(msg), msg = NULL;
    /* key readable by others */
    chmod(f.key, 0644);
    CHECK_EQ_INT(dsi_model_open(&m, f.enc, &o, &msg), DSI_EPERM);
    free(msg), msg = NULL;
    chmod(f.key, 0600);
    /* a flipped byte: the manifest catches it; with SHA256SUMS rewritten by the
     * attacker, the GCM tag still does */
    CHECK_EQ_INT(tm_flip_byte(f.enc, "model.safetensors", 200), 0);
    CHECK_EQ_INT(dsi_model_open(&m, f.enc, &o, &msg), DSI_EINTEGRITY);
    free(msg), msg = NULL;
    CHECK_EQ_INT(dsi_manifest_write(f.enc, NULL, NULL), 0);
    CHECK_EQ_INT(dsi_model_open(&m, f.enc, &o, &msg), DSI_EINTEGRITY);
    CHECK(msg && strstr(msg, "failed authentication"));
    free(msg), msg = NULL;
    CHECK_EQ_INT(tm_flip_byte(f.enc, "model.safetensors", 200), 0);
    CHECK_EQ_INT(dsi_manifest_write(f.enc, NULL, NULL), 0);
    CHECK_EQ_INT(dsi_model_open(&m, f.enc, &o, NULL), 0);
    dsi_model_close(&m);
    free(k2);
    fx_free(&f);
}

TEST(tokenizer_of_encrypted_model) {
    struct dsi_wenc_key k;
    char *d = tm_mkdtemp(), *enc = tm_path(d, "enc"), *kp = tm_path(d, "k");
    dsi_wenc_key_generate(kp, NULL);
    dsi_wenc_key_load(kp, &k, NULL);
    CHECK_EQ_INT(dsi_wenc_encrypt_dir(&k, "models/demo", enc, 2, NULL), 0);
    struct dsi_model m;
    struct dsi_tokenizer *t = NULL, *t0 = NULL;
    struct dsi_model_open_opts o = {.key_file = kp};
    CHECK_EQ_INT(dsi_model_open(&m, enc, &o, NULL), 0);
    CHECK_EQ_INT(dsi_tok_load_model(&m, &t, NULL), 0);
    CHECK_EQ_INT(dsi_tok_load("models/demo", &t0, NULL), 0);
    CHECK(t && t0 && dsi_tok_vocab_size(t) == dsi_tok_vocab_size(t0) && dsi_tok_eos(t) == dsi_tok_eos(t0));
    dsi_tok_free(t), dsi_tok_free(t0);
    dsi_model_close(&m);
    /* decrypt restores the exact bytes */
    char *dec = tm_path(d, "dec");
    CHECK_EQ_INT(dsi_wenc_decrypt_dir(&k, enc, dec, 2, NULL), 0);
    CHECK_EQ_INT(dsi_manifest_verify(dec, NULL, NULL, NULL), 0);
    uint8_t h1[32], h2[32];
    char *p1 = tm_path(dec, "model.safetensors");
    CHECK(dsi_sha256_file(p1, 0, h1, NULL, NULL) == 0 &&
          dsi_sha256_file("models/demo/model.safetensors", 0, h2, NULL, NULL) == 0 && !memcmp(h1, h2, 32));
    dsi_wenc_key_wipe(&k);
    tm_rm_rf(d);
    free(d), free(enc), free(kp), free(dec), free(p1);
}

int main(void) {
    RUN(roundtrip_sizes);
    RUN(two_encryptions_differ);
    RUN(wrong_key);
    RUN(flipped_bytes);
    RUN(truncated_and_reordered);
    RUN(header_checks);
    RUN(key_files);
    RUN(model_open_encrypted);
    RUN(model_open_refusals);
    RUN(tokenizer_of_encrypted_model);
    return test_summary();
}
