/* test_model_manifest.c: SHA256SUMS write/verify, tamper detection, dsi_model_open. */
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "dsinfer/crypto.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "dsinfer/model.h"
#include "test.h"

/* helpers from test_model_util.c */
char *tm_mkdtemp(void);
int tm_rm_rf(const char *dir);
int tm_write_file(const char *path, const void *p, size_t n);
char *tm_path(const char *dir, const char *name);
int tm_make_model(const char *dir);
int tm_flip_byte(const char *dir, const char *name, off_t at);

static const struct dsi_manifest_opts opts2 = {.n_threads = 2};

/* This binary's fsync() takes the place of libc's for the static libraries linked
 * into it: it records the last folder synced, and whether the file being watched
 * existed at that moment (i.e. the sync came after the rename). */
static struct {
    const char *watch;
    int dir_syncs;
    char last_dir[PATH_MAX];
    bool watch_existed;
} fsync_log;

int fsync(int fd) {
    struct stat sb;
    if (fstat(fd, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, fsync_log.last_dir, sizeof fsync_log.last_dir - 1);
        fsync_log.last_dir[n > 0 ? n : 0] = 0;
        fsync_log.dir_syncs++;
        fsync_log.watch_existed = fsync_log.watch && access(fsync_log.watch, F_OK) == 0;
    }
    return (int)syscall(SYS_fsync, fd);
}

static char *read_all(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return buf;
}

static void write_in(const char *dir, const char *name, const char *text) {
    char *p = tm_path(dir, name);
    CHECK(p && tm_write_file(p, text, strlen(text)) == 0);
    free(p);
}

/* A fresh model folder with a manifest; the caller removes it. */
static char *fresh_model(void) {
    char *d = tm_mkdtemp();
    CHECK(d && tm_make_model(d) == 0);
    char *err = NULL;
    CHECK_EQ_INT(dsi_manifest_write(d, &opts2, &err), 0);
    if (err) fprintf(stderr, "  %s\n", err), free(err);
    return d;
}

static int verify(const char *d, char **err) {
    return dsi_manifest_verify(d, &opts2, NULL, err);
}

TEST(manifest_round_trip_is_sorted_coreutils_format) {
    char *d = tm_mkdtemp();
    CHECK(tm_make_model(d) == 0);
    char *sub = tm_path(d, "sub"), *hid = tm_path(d, ".cache");
    CHECK(mkdir(sub, 0700) == 0 && mkdir(hid, 0700) == 0);
    write_in(d, "sub/vocab.txt", "abc");
    write_in(d, ".cache/ignored.json", "{}");
    write_in(d, ".hidden", "x");
    char *err = NULL;
    CHECK_EQ_INT(dsi_manifest_write(d, &opts2, &err), 0);
    char *m = tm_path(d, "SHA256SUMS");
    const char *text = read_all(m);
    CHECK(text != NULL);
    /* sha256("abc") is the FIPS vector; names sorted by strcmp; two spaces. */
    const char *want_sub =
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  sub/vocab.txt\n";
    CHECK(text && strstr(text, want_sub));
    const char *c = text ? strstr(text, "  config.json\n") : NULL;
    const char *s = text ? strstr(text, "  model.safetensors\n") : NULL;
    const char *t = text ? strstr(text, "  tokenizer.json\n") : NULL;
    CHECK(c && s && t && c < s && s < strstr(text, "  sub/") && strstr(text, "  sub/") < t);
    CHECK(text && !strstr(text, ".cache") && !strstr(text, ".hidden") && !strstr(text, "SHA256SUMS"));
    size_t bytes = 0;
    CHECK_EQ_INT(dsi_manifest_verify(d, &opts2, &bytes, &err), 0);
    CHECK(bytes > 500);
    CHECK(err == NULL);
    /* Rewriting gives the same file. */
    char before[4096];
    snprintf(before, sizeof before, "%s", text ? text : "");
    CHECK_EQ_INT(dsi_manifest_write(d, NULL, &err), 0);
    CHECK_EQ_STR(read_all(m), before);
    free(m), free(sub), free(hid);
    tm_rm_rf(d);
    free(d);
}

/* A power loss after `model manifest` returned must not bring back the old
 * SHA256SUMS (or none): the folder is synced after the rename. */
TEST(manifest_write_syncs_the_folder_after_the_rename) {
    char *d = tm_mkdtemp();
    CHECK(d && tm_make_model(d) == 0);
    char *m = tm_path(d, "SHA256SUMS"), real[PATH_MAX];
    CHECK(realpath(d, real) != NULL);
    memset(&fsync_log, 0, sizeof fsync_log);
    fsync_log.watch = m;
    char *err = NULL;
    CHECK_EQ_INT(dsi_manifest_write(d, &opts2, &err), 0);
    CHECK(fsync_log.dir_syncs >= 1);
    CHECK_EQ_STR(fsync_log.last_dir, real);
    CHECK(fsync_log.watch_existed);
    fsync_log.watch = NULL;
    free(err);
    free(m);
    tm_rm_rf(d);
    free(d);
}

TEST(manifest_flipped_byte_is_named) {
    char *d = fresh_model();
    CHECK(tm_flip_byte(d, "model.safetensors", 300) == 0);
    char *err = NULL;
    CHECK_EQ_INT(verify(d, &err), DSI_EINTEGRITY);
    CHECK(err && strstr(err, "model.safetensors: SHA-256 mismatch"));
    free(err), err = NULL;
    CHECK(tm_flip_byte(d, "model.safetensors", 300) == 0);
    CHECK_EQ_INT(verify(d, &err), 0);
    tm_rm_rf(d);
    free(d);
}

TEST(manifest_missing_file_is_named) {
    char *d = fresh_model();
    char *p = tm_path(d, "tokenizer.json");
    CHECK(unlink(p) == 0);
    char *err = NULL;
    CHECK_EQ_INT(verify(d, &err), DSI_EINTEGRITY);
    CHECK(err && strstr(err, "tokenizer.json: listed in SHA256SUMS but missing"));
    free(err);
    free(p);
    tm_rm_rf(d);
    free(d);
}

TEST(manifest_unlisted_weight_file_fails_other_files_warn) {
    char *d = fresh_model();
    char *err = NULL;
    write_in(d, "README.md", "hello"); /* not a weight/config/tokenizer: a warning only */
    CHECK_EQ_INT(verify(d, &err), 0);
    write_in(d, "extra.safetensors", "junk");
    CHECK_EQ_INT(verify(d, &err), DSI_EINTEGRITY);
    CHECK(err && strstr(err, "extra.safetensors: present but not listed"));
    free(err), err = NULL;
    char *p = tm_path(d, "extra.safetensors");
    unlink(p);
    free(p);
    char *sub = tm_path(d, "sub");
    CHECK(mkdir(sub, 0700) == 0);
    free(sub);
    write_in(d, "sub/tokenizer_config.json", "{}");
    CHECK_EQ_INT(verify(d, &err), DSI_EINTEGRITY);
    CHECK(err && strstr(err, "sub/tokenizer_config.json"));
    free(err), err = NULL;
    /* Two problems: the first is named and the count of the rest is given. */
    write_in(d, "modeling_evil.py", "import os");
    CHECK_EQ_INT(verify(d, &err), DSI_EINTEGRITY);
    CHECK(err && strstr(err, "1 more problem"));
    free(err);
    tm_rm_rf(d);
    free(d);
}

TEST(manifest_must_list_rules) {
    CHECK(dsi_manifest_must_list("model-00001-of-00002.safetensors"));
    CHECK(dsi_manifest_must_list("config.json"));
    CHECK(dsi_manifest_must_list("tokenizer.model"));
    CHECK(dsi_manifest_must_list("merges.txt"));
    CHECK(dsi_manifest_must_list("original/consolidated.00.pth"));
    CHECK(dsi_manifest_must_list("pytorch_model.BIN"));
    CHECK(dsi_manifest_must_list("modeling_deepseek.py"));
    CHECK(!dsi_manifest_must_list("README.md"));
    CHECK(!dsi_manifest_must_list("LICENSE"));
    CHECK(!dsi_manifest_must_list("figures/benchmark.png"));
}

static void expect_bad_manifest(const char *dir, const char *text, const char *needle) {
    write_in(dir, "SHA256SUMS", text);
    char *err = NULL;
    int rc = verify(dir, &err);
    CHECK_EQ_INT(rc, DSI_EFORMAT);
    if (!err || !strstr(err, needle)) fprintf(stderr, "  got \"%s\" for %s", err ? err : "(null)", text);
    CHECK(err && strstr(err, needle));
    free(err);
}

#define H64 "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

TEST(manifest_hostile_lines_rejected) {
    char *d = fresh_model();
    expect_bad_manifest(d, H64 "  ../outside.json\n", "line 1");
    expect_bad_manifest(d, H64 "  /etc/passwd\n", "relative");
    expect_bad_manifest(d, H64 "  a/../../b\n", "relative");
    expect_bad_manifest(d, H64 "  ./config.json\n", "relative");
    expect_bad_manifest(d, H64 "  a//b\n", "relative");
    expect_bad_manifest(d, H64 "  SHA256SUMS\n", "relative");
    expect_bad_manifest(d, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015aZ  x\n",
                        "malformed hex");
    expect_bad_manifest(d, "ba7816bf  config.json\n", "expected");
    expect_bad_manifest(d, H64 " config.json\n", "expected");
    expect_bad_manifest(d, H64 "  config.json", "no newline");
    expect_bad_manifest(d, H64 "  config.json\n\n", "line 2");
    expect_bad_manifest(d, "\\" H64 "  con\\\\fig.json\n", "line 1");
    expect_bad_manifest(d, H64 "  config.json\r\n", "line 1");
    expect_bad_manifest(d, H64 "  config.json\n" H64 " *config.json\n", "twice");
    expect_bad_manifest(d, "", "lists no files");
    tm_rm_rf(d);
    free(d);
}

TEST(manifest_absent_is_an_integrity_error) {
    char *d = tm_mkdtemp();
    CHECK(tm_make_model(d) == 0);
    char *err = NULL;
    CHECK_EQ_INT(verify(d, &err), DSI_EINTEGRITY);
    CHECK(err && strstr(err, "no SHA256SUMS"));
    free(err);
    tm_rm_rf(d);
    free(d);
}

TEST(manifest_pin_of_its_own_hash) {
    char *d = fresh_model();
    char *m = tm_path(d, "SHA256SUMS");
    uint8_t h[DSI_SHA256_LEN];
    char hex[DSI_SHA256_HEX_LEN + 1];
    CHECK_EQ_INT(dsi_sha256_file(m, 0, h, NULL, NULL), 0);
    dsi_hex_encode(h, sizeof h, hex);
    struct dsi_manifest_opts o = {.n_threads = 1, .expect_manifest_sha256 = hex};
    char *err = NULL;
    CHECK_EQ_INT(dsi_manifest_verify(d, &o, NULL, &err), 0);
    hex[0] = hex[0] == '0' ? '1' : '0';
    CHECK_EQ_INT(dsi_manifest_verify(d, &o, NULL, &err), DSI_EINTEGRITY);
    CHECK(err && strstr(err, "pinned"));
    free(err), err = NULL;
    o.expect_manifest_sha256 = "xyz";
    CHECK_EQ_INT(dsi_manifest_verify(d, &o, NULL, &err), DSI_EINVAL);
    free(err);
    free(m);
    tm_rm_rf(d);
    free(d);
}

TEST(manifest_write_refuses_odd_names) {
    char *d = tm_mkdtemp();
    write_in(d, "a\nb.json", "x");
    char *err = NULL;
    CHECK_EQ_INT(dsi_manifest_write(d, NULL, &err), DSI_EUNSUPPORTED);
    CHECK(err && strstr(err, "a\\x0ab.json"));
    free(err), err = NULL;
    tm_rm_rf(d);
    CHECK(mkdir(d, 0700) == 0);
    CHECK_EQ_INT(dsi_manifest_write(d, NULL, &err), DSI_ENOENT); /* empty folder */
    free(err), err = NULL;
    CHECK(dsi_manifest_write("/nonexistent/dsi", NULL, &err) < 0);
    free(err);
    tm_rm_rf(d);
    free(d);
}

TEST(manifest_follows_symlinked_files_skips_symlinked_folders) {
    char *d = tm_mkdtemp(), *blobs = tm_mkdtemp();
    CHECK(d && blobs && tm_make_model(d) == 0);
    write_in(blobs, "blob1", "abc");
    char *target = tm_path(blobs, "blob1"), *link = tm_path(d, "merges.txt");
    char *loop = tm_path(d, "loop");
    CHECK(symlink(target, link) == 0); /* the HF hub cache layout */
    CHECK(symlink(d, loop) == 0);      /* a folder loop must not recurse */
    char *err = NULL;
    CHECK_EQ_INT(dsi_manifest_write(d, &opts2, &err), 0);
    char *m = tm_path(d, "SHA256SUMS");
    const char *text = read_all(m);
    CHECK(text && strstr(text, H64 "  merges.txt\n") && !strstr(text, "loop/"));
    CHECK_EQ_INT(verify(d, &err), 0);
    write_in(blobs, "blob1", "abd"); /* the blob behind the link changes */
    CHECK_EQ_INT(verify(d, &err), DSI_EINTEGRITY);
    CHECK(err && strstr(err, "merges.txt"));
    free(err);
    free(m), free(target), free(link), free(loop);
    tm_rm_rf(d), tm_rm_rf(blobs);
    free(d), free(blobs);
}

TEST(model_open_verifies_and_fails_closed) {
    char *d = fresh_model();
    struct dsi_model m;
    char *err = NULL;
    struct dsi_model_open_opts o = {.n_threads = 2};
    CHECK_EQ_INT(dsi_model_open(&m, d, &o, &err), 0);
    if (err) fprintf(stderr, "  %s\n", err);
    CHECK(m.cfg.arch == DSI_ARCH_QWEN2 && m.cfg.hidden_size == 8);
    const struct dsi_tensor *t = dsi_st_find(&m.st, "model.embed_tokens.weight");
    float row[8] = {0};
    CHECK(t && t->n_elems == 128);
    float *all = t ? malloc(t->n_elems * sizeof *all) : NULL;
    CHECK(all && dsi_tensor_to_f32(t, all, &err) == 0);
    if (all) memcpy(row, all + 8, sizeof row), free(all);
    CHECK(row[0] == 4.0f);
    dsi_model_close(&m);
    dsi_model_close(&m);
    CHECK(tm_flip_byte(d, "config.json", 2) == 0);
    CHECK_EQ_INT(dsi_model_open(&m, d, &o, &err), DSI_EINTEGRITY);
    CHECK(err && strstr(err, "config.json"));
    CHECK(m.dir == NULL && m.st.n_tensors == 0);
    free(err), err = NULL;
    /* The logged opt-out loads the (now tampered) model anyway, by request. */
    CHECK(tm_flip_byte(d, "config.json", 2) == 0); /* restore a parseable config */
    CHECK(tm_flip_byte(d, "model.safetensors", 400) == 0);
    o.skip_verify = true;
    CHECK_EQ_INT(dsi_model_open(&m, d, &o, &err), 0);
    dsi_model_close(&m);
    o.skip_verify = false;
    CHECK_EQ_INT(dsi_model_open(&m, d, &o, &err), DSI_EINTEGRITY);
    free(err);
    tm_rm_rf(d);
    free(d);
}

int main(void) {
    dsi_log_set_level(DSI_LOG_ERROR);
    RUN(manifest_round_trip_is_sorted_coreutils_format);
    RUN(manifest_write_syncs_the_folder_after_the_rename);
    RUN(manifest_flipped_byte_is_named);
    RUN(manifest_missing_file_is_named);
    RUN(manifest_unlisted_weight_file_fails_other_files_warn);
    RUN(manifest_must_list_rules);
    RUN(manifest_hostile_lines_rejected);
    RUN(manifest_absent_is_an_integrity_error);
    RUN(manifest_pin_of_its_own_hash);
    RUN(manifest_write_refuses_odd_names);
    RUN(manifest_follows_symlinked_files_skips_symlinked_folders);
    RUN(model_open_verifies_and_fails_closed);
    return test_summary();
}
