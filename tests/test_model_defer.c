/*
 * test_model_defer.c: dsi_model_open with defer_weight_hash (the single pass of
 * the CUDA loader), on the CPU only. Non-weight files are still verified at
 * open; weight tensors are withheld (data NULL, dsi_tensor_to_f32 refuses)
 * until a matching digest is reported; a wrong digest never releases them; the
 * CPU backend given a deferred model fails closed at load.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dsinfer/backend.h"
#include "dsinfer/crypto.h"
#include "dsinfer/err.h"
#include "dsinfer/model.h"
#include "test.h"

/* helpers from test_model_util.c */
char *tm_mkdtemp(void);
int tm_rm_rf(const char *dir);
int tm_write_file(const char *path, const void *p, size_t n);
char *tm_path(const char *dir, const char *name);
int tm_make_model(const char *dir);
char *tm_copy_fixture(const char *name);
int tm_flip_byte(const char *dir, const char *name, off_t at);

static const struct dsi_manifest_opts opts2 = {.n_threads = 2};

static char *fresh_model(void) {
    char *d = tm_mkdtemp();
    CHECK(d && tm_make_model(d) == 0);
    char *err = NULL;
    CHECK_EQ_INT(dsi_manifest_write(d, &opts2, &err), 0);
    free(err);
    return d;
}

static const struct dsi_model_open_opts defer2 = {.n_threads = 2, .defer_weight_hash = true};

TEST(defer_withholds_weights_until_digest_matches) {
    char *d = fresh_model();
    struct dsi_model m, ref;
    char *err = NULL;
    CHECK_EQ_INT(dsi_model_open(&m, d, &defer2, &err), 0);
    if (err) fprintf(stderr, "  %s\n", err), free(err), err = NULL;
    CHECK(m.cfg.hidden_size == 8); /* config verified and parsed as always */
    CHECK(m.n_pending == 1 && m.pending && !strcmp(m.pending[0].name, "model.safetensors"));
    CHECK_EQ_INT((int)dsi_model_unverified(&m), 1);
    const struct dsi_tensor *t = dsi_st_find(&m.st, "model.embed_tokens.weight");
    CHECK(t && t->n_elems == 128 && t->data == NULL); /* headers parsed, data withheld */
    float buf[128];
    CHECK_EQ_INT(dsi_tensor_to_f32(t, buf, &err), DSI_EINTEGRITY);
    CHECK(err && strstr(err, "SHA-256"));
    free(err), err = NULL;
    /* location works while withheld: offset of the data inside the file */
    size_t pi = 0;
    uint64_t off = 0;
    CHECK_EQ_INT(dsi_model_tensor_location(&m, t, &pi, &off), 0);
    CHECK(pi == 0 && off > 8);
    /* a wrong digest is refused and releases nothing */
    uint8_t bad[32] = {0};
    CHECK_EQ_INT(dsi_model_mark_verified(&m, 0, bad, &err), DSI_EINTEGRITY);
    CHECK(err && strstr(err, "model.safetensors") && strstr(err, "mismatch"));
    free(err), err = NULL;
    CHECK(t->data == NULL && dsi_model_unverified(&m) == 1);
    CHECK_EQ_INT(dsi_model_mark_verified(&m, 1, bad, &err), DSI_EINVAL); /* no such file */
    free(err), err = NULL;
    /* the right digest (the backend hashed the file itself) releases the data */
    uint8_t got[32];
    size_t bytes = 0;
    CHECK_EQ_INT(dsi_sha256_file(m.pending[0].path, 4096, got, &bytes, &err), 0);
    CHECK(bytes == m.pending[0].size);
    CHECK_EQ_INT(dsi_model_mark_verified(&m, 0, got, &err), 0);
    CHECK(t->data != NULL && dsi_model_unverified(&m) == 0);
    CHECK_EQ_INT(dsi_tensor_to_f32(t, buf, &err), 0);
    CHECK(buf[9] == 4.5f);
    CHECK_EQ_INT(dsi_model_tensor_location(&m, t, &pi, &off), 0);
    /* the same data and offset as a model opened the ordinary way */
    struct dsi_model_open_opts o = {.n_threads = 2};
    CHECK_EQ_INT(dsi_model_open(&ref, d, &o, &err), 0);
    const struct dsi_tensor *rt = dsi_st_find(&ref.st, "model.embed_tokens.weight");
    CHECK(rt && rt->data && !memcmp(rt->data, t->data, t->size_bytes));
    size_t rpi = 0;
    uint64_t roff = 1;
    CHECK_EQ_INT(dsi_model_tensor_location(&ref, rt, &rpi, &roff), 0);
    CHECK(rpi == SIZE_MAX && roff == off && ref.n_pending == 0);
    CHECK_EQ_INT(dsi_model_tensor_location(&ref, t, &rpi, &roff), DSI_EINVAL); /* not ref's tensor */
    dsi_model_close(&ref);
    dsi_model_close(&m);
    free(err);
    tm_rm_rf(d);
    free(d);
}

TEST(defer_still_verifies_config_and_completeness) {
    char *d = fresh_model();
    struct dsi_model m;
    char *err = NULL;
    CHECK(tm_flip_byte(d, "config.json", 2) == 0);
    CHECK_EQ_INT(dsi_model_open(&m, d, &defer2, &err), DSI_EINTEGRITY);
    CHECK(err && strstr(err, "config.json"));
    CHECK(m.dir == NULL && m.n_pending == 0);
    free(err), err = NULL;
    CHECK(tm_flip_byte(d, "config.json", 2) == 0);
    /* an unlisted weight file still fails at open */
    char *extra = tm_path(d, "extra.safetensors");
    CHECK(extra && tm_write_file(extra, "x", 1) == 0);
    CHECK_EQ_INT(dsi_model_open(&m, d, &defer2, &err), DSI_EINTEGRITY);
    CHECK(err && strstr(err, "extra.safetensors") && strstr(err, "not listed"));
    free(err), err = NULL;
    unlink(extra);
    free(extra);
    /* a pin of SHA256SUMS still applies */
    struct dsi_model_open_opts pin = defer2;
    pin.expect_manifest_sha256 = "0000000000000000000000000000000000000000000000000000000000000000";
    CHECK_EQ_INT(dsi_model_open(&m, d, &pin, &err), DSI_EINTEGRITY);
    free(err), err = NULL;
    /* skip_verify wins: nothing deferred, nothing withheld */
    struct dsi_model_open_opts skip = defer2;
    skip.skip_verify = true;
    CHECK_EQ_INT(dsi_model_open(&m, d, &skip, &err), 0);
    CHECK(m.n_pending == 0 && dsi_st_find(&m.st, "model.norm.weight")->data != NULL);
    dsi_model_close(&m);
    free(err);
    tm_rm_rf(d);
    free(d);
}

TEST(defer_tampered_weights_fail_the_host_pass) {
    char *d = fresh_model();
    struct dsi_model m;
    char *err = NULL;
    CHECK(tm_flip_byte(d, "model.safetensors", 400) == 0); /* inside the embedding data */
    CHECK_EQ_INT(dsi_model_open(&m, d, &defer2, &err), 0); /* not hashed yet */
    free(err), err = NULL;
    CHECK_EQ_INT(dsi_model_verify_pending(&m, 2, &err), DSI_EINTEGRITY);
    CHECK(err && strstr(err, "model.safetensors") && strstr(err, "mismatch"));
    free(err), err = NULL;
    CHECK(dsi_model_unverified(&m) == 1 && dsi_st_find(&m.st, "model.embed_tokens.weight")->data == NULL);
    dsi_model_close(&m);
    CHECK(tm_flip_byte(d, "model.safetensors", 400) == 0);
    CHECK_EQ_INT(dsi_model_open(&m, d, &defer2, &err), 0);
    CHECK_EQ_INT(dsi_model_verify_pending(&m, 2, &err), 0);
    CHECK(dsi_model_unverified(&m) == 0 && dsi_st_find(&m.st, "model.embed_tokens.weight")->data != NULL);
    CHECK_EQ_INT(dsi_model_verify_pending(&m, 2, &err), 0); /* idempotent */
    dsi_model_close(&m);
    free(err);
    tm_rm_rf(d);
    free(d);
}

TEST(defer_model_refused_by_cpu_backend) {
    char *d = tm_copy_fixture("qwen2-gqa-tied");
    CHECK(d != NULL);
    if (!d) return;
    struct dsi_model m;
    char *err = NULL;
    CHECK_EQ_INT(dsi_model_open(&m, d, &defer2, &err), 0);
    if (err) fprintf(stderr, "  %s\n", err), free(err), err = NULL;
    struct dsi_backend_opts o = {.weight_dtype = DSI_W_F32, .kv_dtype = DSI_KV_F32, .n_threads = 1};
    struct dsi_backend *be = NULL;
    CHECK_EQ_INT(dsi_backend_create("cpu", &m, &o, &be, &err), DSI_EINTEGRITY);
    CHECK(be == NULL && err && strstr(err, "SHA-256"));
    free(err), err = NULL;
    /* after the host pass the same model loads */
    CHECK_EQ_INT(dsi_model_verify_pending(&m, 2, &err), 0);
    CHECK_EQ_INT(dsi_backend_create("cpu", &m, &o, &be, &err), 0);
    if (err) fprintf(stderr, "  %s\n", err);
    dsi_backend_destroy(be);
    dsi_model_close(&m);
    free(err);
    tm_rm_rf(d);
    free(d);
}

int main(void) {
    RUN(defer_withholds_weights_until_digest_matches);
    RUN(defer_still_verifies_config_and_completeness);
    RUN(defer_tampered_weights_fail_the_host_pass);
    RUN(defer_model_refused_by_cpu_backend);
    return test_summary();
}
