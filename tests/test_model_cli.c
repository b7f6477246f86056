/*
 * test_model_cli.c: `dsinfer manifest|verify|inspect` end to end through the
 * binary ($DSI_BIN), cross-checked with coreutils `sha256sum -c`.
 */
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

/* helpers from test_model_util.c */
char *tm_mkdtemp(void);
int tm_rm_rf(const char *dir);
char *tm_path(const char *dir, const char *name);
int tm_make_model(const char *dir);

static const char *bin;
static char *dir, *out_dir;
static char out_text[1 << 16], err_text[1 << 16];

static void slurp(const char *name, char *buf, size_t cap) {
    char *p = tm_path(out_dir, name);
    FILE *f = p ? fopen(p, "rb") : NULL;
    size_t n = f ? fread(buf, 1, cap - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = 0;
    free(p);
}

/* Runs a shell command line with stdout/stderr captured; returns the exit status. */
static int sh(const char *fmt, const char *a, const char *b) {
    char cmd[8192], full[9000];
    /* fmt is always a literal of this file with two %s (the checks read as shell lines) */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(cmd, sizeof cmd, fmt, a, b);
#pragma GCC diagnostic pop
    snprintf(full, sizeof full, "(%s) >'%s/out' 2>'%s/err'", cmd, out_dir, out_dir);
    int st = system(full);
    slurp("out", out_text, sizeof out_text);
    slurp("err", err_text, sizeof err_text);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void flip(const char *name, off_t at) {
    char *p = tm_path(dir, name);
    int fd = open(p, O_RDWR);
    unsigned char c = 0;
    CHECK(fd >= 0 && pread(fd, &c, 1, at) == 1);
    c ^= 0x80;
    CHECK(pwrite(fd, &c, 1, at) == 1);
    close(fd);
    free(p);
}

TEST(cli_manifest_is_accepted_by_sha256sum) {
    CHECK_EQ_INT(sh("'%s' manifest '%s'", bin, dir), 0);
    CHECK(strstr(out_text, "SHA256SUMS"));
    CHECK_EQ_INT(sh("cd '%s' && sha256sum --strict -c SHA256SUMS%s", dir, ""), 0);
    CHECK(strstr(out_text, "model.safetensors: OK") && strstr(out_text, "config.json: OK"));
    CHECK_EQ_INT(sh("'%s' verify '%s'", bin, dir), 0);
    CHECK(strstr(out_text, "OK"));
}

TEST(cli_verify_names_the_tampered_file) {
    flip("model.safetensors", 200);
    CHECK_EQ_INT(sh("'%s' verify '%s'", bin, dir), 1);
    CHECK(strstr(err_text, "model.safetensors: SHA-256 mismatch"));
    CHECK(sh("cd '%s' && sha256sum -c SHA256SUMS%s", dir, "") != 0); /* coreutils agrees */
    flip("model.safetensors", 200);
    CHECK_EQ_INT(sh("'%s' verify '%s'", bin, dir), 0);
}

TEST(cli_verify_pin) {
    CHECK_EQ_INT(sh("cd '%s' && sha256sum SHA256SUMS | cut -c1-64%s", dir, ""), 0);
    char pin[65] = {0};
    memcpy(pin, out_text, 64);
    char args[300];
    snprintf(args, sizeof args, "%s --expect-manifest-sha256 %s", dir, pin);
    CHECK_EQ_INT(sh("'%s' verify %s", bin, args), 0);
    pin[5] = pin[5] == 'a' ? 'b' : 'a';
    snprintf(args, sizeof args, "%s --expect-manifest-sha256 %s", dir, pin);
    CHECK_EQ_INT(sh("'%s' verify %s", bin, args), 1);
    CHECK(strstr(err_text, "pinned"));
}

TEST(cli_usage_and_missing_folder) {
    CHECK_EQ_INT(sh("'%s' verify%s", bin, ""), 2);
    CHECK_EQ_INT(sh("'%s' verify /nonexistent/dsi-model --bogus%s", bin, ""), 2);
    CHECK_EQ_INT(sh("'%s' verify /nonexistent/dsi-model%s", bin, ""), 1);
    CHECK(strstr(err_text, "/nonexistent/dsi-model"));
    CHECK_EQ_INT(sh("'%s' inspect /nonexistent/dsi-model%s", bin, ""), 1);
}

TEST(cli_inspect_text_and_json) {
    CHECK_EQ_INT(sh("'%s' inspect '%s'", bin, dir), 0);
    CHECK(strstr(out_text, "Qwen2ForCausalLM (runnable)"));
    CHECK(strstr(out_text, "parameters:    136 "));
    CHECK(strstr(out_text, "F32 (1 tensors") && strstr(out_text, "BF16 (1 tensors"));
    CHECK_EQ_INT(sh("'%s' inspect '%s' --json", bin, dir), 0);
    cJSON *j = cJSON_Parse(out_text);
    CHECK(j != NULL);
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "parameters")) == 136);
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "kv_heads")) == 1);
    const cJSON *w = cJSON_GetObjectItem(j, "weight_bytes");
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(w, "bf16")) == 272);
    /* int8: 16x8 matrix -> 128 B + 16 row scales x 4 B; the 8-vector stays f32 (32 B). */
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(w, "int8")) == 128 + 64 + 32);
    /* 2 (k,v) x 1 layer x 1 kv head x head_dim 4 x 2 bytes */
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "kv_bytes_per_token_bf16")) == 16);
    /* int8: 2 vectors of 4 int8 values + a 2-byte f16 scale each; f32: 32 */
    const cJSON *kb = cJSON_GetObjectItem(j, "kv_bytes_per_token"), *kc = cJSON_GetObjectItem(j, "kv_capacity_tokens");
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(kb, "int8")) == 12);
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(kb, "f32")) == 32);
    /* the default 256 MiB pool in blocks of 16 tokens */
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(kc, "bf16")) == (256.0 * 1048576 / (16 * 16)) * 16);
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(kc, "int8")) == (double)((256u << 20) / (16 * 12)) * 16);
    cJSON_Delete(j);
}

int main(void) {
    bin = getenv("DSI_BIN");
    if (!bin || access(bin, X_OK) != 0) {
        fprintf(stderr, "DSI_BIN not set or not executable: skipping\n");
        return 77;
    }
    dir = tm_mkdtemp();
    out_dir = tm_mkdtemp();
    if (!dir || !out_dir || tm_make_model(dir) != 0) return 1;
    RUN(cli_manifest_is_accepted_by_sha256sum);
    RUN(cli_verify_names_the_tampered_file);
    RUN(cli_verify_pin);
    RUN(cli_usage_and_missing_folder);
    RUN(cli_inspect_text_and_json);
    tm_rm_rf(dir);
    tm_rm_rf(out_dir);
    free(dir);
    free(out_dir);
    return test_summary();
}
