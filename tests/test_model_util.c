/*
 * test_model_util.c: helpers shared by the model tests (linked into each
 * test_model* binary, and test_cuda_backend): temp folders, raw safetensors
 * images, a tiny model, a copy of a golden fixture, a flipped byte.
 * Prototypes are repeated in each test file under "helpers from test_model_util.c".
 */
#define _XOPEN_SOURCE 700
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_util.h"

char *tm_mkdtemp(void);
int tm_rm_rf(const char *dir);
int tm_write_file(const char *path, const void *p, size_t n);
int tm_write_st(const char *path, const char *header, const void *data, size_t data_len);
char *tm_path(const char *dir, const char *name);
int tm_make_model(const char *dir);
char *tm_copy_fixture(const char *name);
int tm_flip_byte(const char *dir, const char *name, off_t at);

char *tm_mkdtemp(void) {
    const char *base = getenv("TMPDIR");
    char tmpl[4096];
    snprintf(tmpl, sizeof tmpl, "%s/dsi_model_test_XXXXXX", base && *base ? base : "/tmp");
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *f) {
    (void)sb, (void)flag, (void)f;
    return remove(p);
}

int tm_rm_rf(const char *dir) {
    if (!dir) return 0;
    return nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int tm_write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = n ? fwrite(p, 1, n, f) : 0;
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

/* u64 LE header length, the header bytes as given, then data_len bytes of
 * data (zeros when data is NULL). */
int tm_write_st(const char *path, const char *header, const void *data, size_t data_len) {
    size_t hl = strlen(header);
    size_t total = 8 + hl + data_len;
    uint8_t *buf = calloc(1, total ? total : 1);
    if (!buf) return -1;
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (data) memcpy(buf + 8 + hl, data, data_len);
    int rc = tm_write_file(path, buf, total);
    free(buf);
    return rc;
}

char *tm_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* A tiny Qwen2 model: config.json, model.safetensors (embed 16x8 F32, norm 8
 * BF16), tokenizer.json. Enough for manifest, open and inspect. */
int tm_make_model(const char *dir) {
    static const char cfg[] =
        "{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":8,\"intermediate_size\":16,"
        "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"num_key_value_heads\":1,"
        "\"vocab_size\":16,\"max_position_embeddings\":64,\"torch_dtype\":\"float32\","
        "\"eos_token_id\":1,\"bos_token_id\":0}";
    static const char hdr[] =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"model.embed_tokens.weight\":{\"dtype\":\"F32\",\"shape\":[16,8],\"data_offsets\":[0,512]},"
        "\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[8],\"data_offsets\":[512,528]}}";
    uint8_t data[528];
    for (int i = 0; i < 128; i++) {
        float v = (float)i * 0.5f;
        memcpy(data + 4 * i, &v, 4);
    }
    for (int i = 0; i < 8; i++)
        data[512 + 2 * i] = 0, data[512 + 2 * i + 1] = 0x3f; /* 0.5 */
    char *p1 = tm_path(dir, "config.json"), *p2 = tm_path(dir, "model.safetensors"),
         *p3 = tm_path(dir, "tokenizer.json");
    int rc = (p1 && p2 && p3 && tm_write_file(p1, cfg, sizeof cfg - 1) == 0 &&
              tm_write_st(p2, hdr, data, sizeof data) == 0 && tm_write_file(p3, "{\"model\":{}}", 12) == 0)
                 ? 0
                 : -1;
    free(p1), free(p2), free(p3);
    return rc;
}

/* A new temp folder holding the files of the golden fixture
 * tests/golden/models/NAME that exist (config, generation config, weights,
 * SHA256SUMS); NULL if the folder or a copy cannot be made. */
char *tm_copy_fixture(const char *name) {
    static const char *files[] = {"config.json", "generation_config.json", "model.safetensors", "SHA256SUMS"};
    char *d = tm_mkdtemp();
    for (size_t i = 0; d && i < sizeof files / sizeof files[0]; i++) {
        char src[256];
        snprintf(src, sizeof src, "tests/golden/models/%s/%s", name, files[i]);
        size_t n = 0;
        char *buf = test_read_file(src, &n);
        if (!buf) continue; /* not every fixture has every file */
        char *dst = tm_path(d, files[i]);
        int rc = dst ? tm_write_file(dst, buf, n) : -1;
        free(dst), free(buf);
        if (rc) {
            tm_rm_rf(d);
            free(d);
            d = NULL;
        }
    }
    return d;
}

/* XORs bit 0 of byte `at` of dir/name (twice restores it); 0 or -1. */
int tm_flip_byte(const char *dir, const char *name, off_t at) {
    char *p = tm_path(dir, name);
    int fd = p ? open(p, O_RDWR) : -1;
    free(p);
    if (fd < 0) return -1;
    unsigned char b = 0;
    int rc = pread(fd, &b, 1, at) == 1 ? 0 : -1;
    b ^= 0x01;
    if (!rc && pwrite(fd, &b, 1, at) != 1) rc = -1;
    close(fd);
    return rc;
}
