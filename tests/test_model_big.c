/* test_model_big.c: one flipped byte in the middle of a 2 GiB file is caught (label "slow"). */
#include <fcntl.h>
#include <unistd.h>

#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "dsinfer/model.h"
#include "test.h"

/* helpers from test_model_util.c */
char *tm_mkdtemp(void);
int tm_rm_rf(const char *dir);
char *tm_path(const char *dir, const char *name);
int tm_make_model(const char *dir);

#define BIG ((off_t)2 << 30)

TEST(manifest_catches_one_flipped_byte_in_2gib_file) {
    char *d = tm_mkdtemp();
    CHECK(d && tm_make_model(d) == 0);
    char *p = tm_path(d, "model-big.safetensors");
    int fd = open(p, O_CREAT | O_TRUNC | O_RDWR, 0600);
    CHECK(fd >= 0);
    /* Sparse: ftruncate makes the 2 GiB, a few written blocks make it non-trivial. */
    CHECK(ftruncate(fd, BIG) == 0);
    char block[4096];
    for (size_t i = 0; i < sizeof block; i++)
        block[i] = (char)(i * 31 + 7);
    const off_t at[] = {0, BIG / 3, BIG / 2 - 4096, BIG - 4096};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++)
        CHECK(pwrite(fd, block, sizeof block, at[i]) == (ssize_t)sizeof block);
    struct dsi_manifest_opts o = {.n_threads = 2};
    char *err = NULL;
    CHECK_EQ_INT(dsi_manifest_write(d, &o, &err), 0);
    size_t bytes = 0;
    CHECK_EQ_INT(dsi_manifest_verify(d, &o, &bytes, &err), 0);
    CHECK(bytes > (size_t)BIG); /* the big file plus the small ones */
    /* Flip one bit of one byte in the middle. */
    off_t mid = BIG / 2 - 100;
    unsigned char b;
    CHECK(pread(fd, &b, 1, mid) == 1);
    b ^= 0x10;
    CHECK(pwrite(fd, &b, 1, mid) == 1);
    CHECK_EQ_INT(dsi_manifest_verify(d, &o, NULL, &err), DSI_EINTEGRITY);
    CHECK(err && strstr(err, "model-big.safetensors: SHA-256 mismatch"));
    free(err), err = NULL;
    /* Restored, it verifies again: the failure was that byte and nothing else. */
    b ^= 0x10;
    CHECK(pwrite(fd, &b, 1, mid) == 1);
    CHECK_EQ_INT(dsi_manifest_verify(d, &o, NULL, &err), 0);
    close(fd);
    free(p);
    CHECK(tm_rm_rf(d) == 0);
    free(d);
}

int main(void) {
    dsi_log_set_level(DSI_LOG_ERROR);
    RUN(manifest_catches_one_flipped_byte_in_2gib_file);
    return test_summary();
}
