/* test_crypto.c: SHA-256 (FIPS 180-2 vectors), hex, constant-time compare. */
#include <unistd.h>

#include "dsinfer/crypto.h"
#include "dsinfer/err.h"
#include "test.h"

static void hex_of(const uint8_t d[DSI_SHA256_LEN], char out[DSI_SHA256_HEX_LEN + 1]) {
    dsi_hex_encode(d, DSI_SHA256_LEN, out);
}

TEST(sha256_known_vectors) {
    uint8_t d[DSI_SHA256_LEN];
    char hex[DSI_SHA256_HEX_LEN + 1];
    CHECK_EQ_INT(dsi_sha256("abc", 3, d), 0);
    hex_of(d, hex);
    CHECK_EQ_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK_EQ_INT(dsi_sha256("", 0, d), 0);
    hex_of(d, hex);
    CHECK_EQ_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(sha256_streaming_equals_one_shot) {
    static const char msg[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    struct dsi_sha256 h = {0};
    uint8_t d[DSI_SHA256_LEN];
    char hex[DSI_SHA256_HEX_LEN + 1];
    CHECK_EQ_INT(dsi_sha256_init(&h), 0);
    for (size_t i = 0; i < sizeof msg - 1; i += 5)
        CHECK_EQ_INT(dsi_sha256_update(&h, msg + i, (sizeof msg - 1 - i) < 5 ? sizeof msg - 1 - i : 5), 0);
    CHECK_EQ_INT(dsi_sha256_final(&h, d), 0);
    dsi_sha256_free(&h);
    dsi_sha256_free(&h); /* second free is a no-op */
    hex_of(d, hex);
    CHECK_EQ_STR(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    CHECK_EQ_INT(dsi_sha256_update(&h, "x", 1), DSI_EINVAL); /* after free */
}

TEST(sha256_file_matches_buffer_and_reports_missing) {
    char path[] = "/tmp/dsi_crypto_test_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    char buf[10000];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (char)(i * 7);
    CHECK(write(fd, buf, sizeof buf) == (ssize_t)sizeof buf);
    close(fd);
    uint8_t a[DSI_SHA256_LEN], b[DSI_SHA256_LEN];
    size_t n = 0;
    char *err = NULL;
    CHECK_EQ_INT(dsi_sha256_file(path, 333, a, &n, &err), 0); /* odd chunk size on purpose */
    CHECK_EQ_INT(n, sizeof buf);
    CHECK_EQ_INT(dsi_sha256(buf, sizeof buf, b), 0);
    CHECK(dsi_ct_equal(a, b, sizeof a));
    unlink(path);
    CHECK_EQ_INT(dsi_sha256_file(path, 0, a, NULL, &err), DSI_ENOENT);
    CHECK(err && strstr(err, path));
    free(err);
}

TEST(hex_decode_rejects_bad_input) {
    uint8_t out[2] = {0xaa, 0xbb};
    CHECK_EQ_INT(dsi_hex_decode("0aFf", 4, out, 2), 0);
    CHECK(out[0] == 0x0a && out[1] == 0xff);
    out[0] = 0x11;
    CHECK_EQ_INT(dsi_hex_decode("0g00", 4, out, 2), DSI_EFORMAT);
    CHECK(out[0] == 0x11); /* untouched on error */
    CHECK_EQ_INT(dsi_hex_decode("000", 3, out, 2), DSI_EFORMAT);
    CHECK_EQ_INT(dsi_hex_decode("000000", 6, out, 2), DSI_EFORMAT);
    CHECK_EQ_INT(dsi_hex_decode(" 000", 4, out, 2), DSI_EFORMAT);
    char s[5];
    uint8_t in[2] = {0x01, 0xab};
    dsi_hex_encode(in, 2, s);
    CHECK_EQ_STR(s, "01ab");
}

TEST(ct_equal_compares_all_bytes) {
    uint8_t a[32] = {0}, b[32] = {0};
    CHECK(dsi_ct_equal(a, b, 32));
    b[31] = 1;
    CHECK(!dsi_ct_equal(a, b, 32));
    CHECK(dsi_ct_equal(a, b, 31));
    b[0] = 1;
    CHECK(!dsi_ct_equal(a, b, 1));
    CHECK(dsi_ct_equal(a, b, 0));
}

TEST(random_bytes_fill_buffer) {
    uint8_t a[32] = {0}, b[32] = {0}, z[32] = {0};
    CHECK_EQ_INT(dsi_random_bytes(a, sizeof a), 0);
    CHECK_EQ_INT(dsi_random_bytes(b, sizeof b), 0);
    CHECK(!dsi_ct_equal(a, b, 32)); /* 2^-256 chance of a false failure */
    CHECK(!dsi_ct_equal(a, z, 32));
    dsi_secure_wipe(a, sizeof a);
    CHECK(dsi_ct_equal(a, z, 32));
}

int main(void) {
    RUN(sha256_known_vectors);
    RUN(sha256_streaming_equals_one_shot);
    RUN(sha256_file_matches_buffer_and_reports_missing);
    RUN(hex_decode_rejects_bad_input);
    RUN(ct_equal_compares_all_bytes);
    RUN(random_bytes_fill_buffer);
    return test_summary();
}
