/* test_model_st.c: safetensors reader (hostile headers, shards) and dtype conversion. */
#include <fcntl.h>
#include <stdint.h>
#include <unistd.h>

#include "dsinfer/err.h"
#include "dsinfer/model.h"
#include "test.h"

/* helpers from test_model_util.c */
char *tm_mkdtemp(void);
int tm_rm_rf(const char *dir);
int tm_write_file(const char *path, const void *p, size_t n);
int tm_write_st(const char *path, const char *header, const void *data, size_t data_len);
char *tm_path(const char *dir, const char *name);

static char *tmp_dir;

/* Writes `header` + data_len zero bytes to TMP/bad.safetensors, opens it and
 * returns the code; *err_out gets the message (caller frees). */
static int open_bad(const char *header, size_t data_len, char **err_out) {
    char *p = tm_path(tmp_dir, "bad.safetensors");
    if (!p || tm_write_st(p, header, NULL, data_len) != 0) {
        free(p);
        return 1;
    }
    struct dsi_safetensors st;
    char *err = NULL;
    int rc = dsi_st_open_file(&st, p, &err);
    if (rc == 0) dsi_st_close(&st);
    free(p);
    *err_out = err;
    return rc;
}

/* The error must be DSI_EFORMAT and name both the file and (if given) the tensor. */
static void expect_bad(const char *header, size_t data_len, const char *tensor, const char *what) {
    char *err = NULL;
    int rc = open_bad(header, data_len, &err);
    CHECK_EQ_INT(rc, DSI_EFORMAT);
    CHECK(err && strstr(err, "bad.safetensors"));
    if (tensor) CHECK(err && strstr(err, tensor));
    if (what) CHECK(err && strstr(err, what));
    if (err && rc != DSI_EFORMAT) fprintf(stderr, "  got: %s\n", err);
    free(err);
}

TEST(st_open_valid_file_reads_tensors) {
    static const char h[] = "{\"__metadata__\":{\"format\":\"pt\"},"
                            "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]},"
                            "\"a\":{\"dtype\":\"F32\",\"shape\":[2,1],\"data_offsets\":[0,8]},"
                            "\"e\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[12,12]}}    ";
    uint8_t data[12];
    float a[2] = {1.5f, -3.0f};
    memcpy(data, a, 8);
    data[8] = 0x80, data[9] = 0x3f, data[10] = 0x00, data[11] = 0xc0; /* bf16 1.0, -2.0 */
    char *p = tm_path(tmp_dir, "ok.safetensors");
    CHECK(tm_write_st(p, h, data, sizeof data) == 0);
    struct dsi_safetensors st;
    char *err = NULL;
    CHECK_EQ_INT(dsi_st_open_file(&st, p, &err), 0);
    CHECK_EQ_INT(st.n_tensors, 3);
    CHECK_EQ_STR(st.tensors[0].name, "a"); /* sorted by name */
    const struct dsi_tensor *t = dsi_st_find(&st, "a");
    CHECK(t && t->dtype == DSI_DT_F32 && t->n_dims == 2 && t->shape[0] == 2 && t->n_elems == 2);
    float out[2] = {0};
    CHECK(t && dsi_tensor_to_f32(t, out, &err) == 0 && out[0] == 1.5f && out[1] == -3.0f);
    t = dsi_st_find(&st, "b");
    CHECK(t && t->dtype == DSI_DT_BF16 && t->size_bytes == 4);
    CHECK(t && dsi_tensor_to_f32(t, out, &err) == 0 && out[0] == 1.0f && out[1] == -2.0f);
    t = dsi_st_find(&st, "e");
    CHECK(t && t->n_elems == 0 && t->size_bytes == 0);
    CHECK(dsi_st_find(&st, "missing") == NULL);
    CHECK(dsi_st_find(&st, "__metadata__") == NULL);
    dsi_st_close(&st);
    dsi_st_close(&st); /* idempotent on a closed handle */
    CHECK(err == NULL);
    free(p);
}

TEST(st_file_shorter_than_header_length_field) {
    char *p = tm_path(tmp_dir, "bad.safetensors");
    CHECK(tm_write_file(p, "\x05\0\0", 3) == 0);
    struct dsi_safetensors st;
    char *err = NULL;
    CHECK_EQ_INT(dsi_st_open_file(&st, p, &err), DSI_EFORMAT);
    CHECK(err && strstr(err, "bad.safetensors") && strstr(err, "too short"));
    free(err);
    free(p);
}

TEST(st_header_length_past_eof) {
    char *p = tm_path(tmp_dir, "bad.safetensors");
    uint8_t b[16] = {0xff, 0xff, 0, 0, 0, 0, 0, 0, '{', '}'};
    CHECK(tm_write_file(p, b, sizeof b) == 0);
    struct dsi_safetensors st;
    char *err = NULL;
    CHECK_EQ_INT(dsi_st_open_file(&st, p, &err), DSI_EFORMAT);
    CHECK(err && strstr(err, "bad.safetensors") && strstr(err, "past the end"));
    free(err);
    /* 2^64-1 must not wrap around in the bounds arithmetic. */
    memset(b, 0xff, 8);
    CHECK(tm_write_file(p, b, sizeof b) == 0);
    err = NULL;
    CHECK_EQ_INT(dsi_st_open_file(&st, p, &err), DSI_EFORMAT);
    free(err);
    free(p);
}

TEST(st_header_length_absurd_in_big_sparse_file) {
    char *p = tm_path(tmp_dir, "bad.safetensors");
    int fd = open(p, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    CHECK(fd >= 0);
    uint64_t hl = (uint64_t)150 << 20; /* fits the 200 MB file but is over the limit */
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(hl >> (8 * i));
    CHECK(write(fd, b, 8) == 8);
    CHECK(ftruncate(fd, (off_t)200 << 20) == 0);
    close(fd);
    struct dsi_safetensors st;
    char *err = NULL;
    CHECK_EQ_INT(dsi_st_open_file(&st, p, &err), DSI_EFORMAT);
    CHECK(err && strstr(err, "bad.safetensors") && strstr(err, "limit"));
    free(err);
    unlink(p);
    free(p);
}

TEST(st_offsets_out_of_range) {
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "w",
               "past the data region");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[1e30,1e30]}}", 8, "w", NULL);
}

TEST(st_offsets_begin_after_end) {
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 16, "w",
               "begin 8 > end 4");
}

TEST(st_overlapping_tensors) {
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               16, "overlaps", NULL);
    char *err = NULL;
    CHECK_EQ_INT(open_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                          "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                          16, &err),
                 DSI_EFORMAT);
    CHECK(err && strstr(err, "tensor y") && strstr(err, "tensor x"));
    free(err);
    /* Same range twice is an overlap too. */
    expect_bad("{\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
               "\"y\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
               4, "overlaps", NULL);
}

TEST(st_shape_does_not_match_byte_size) {
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "w", "needs 12 bytes");
    expect_bad("{\"w\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,4]}}", 8, "w", NULL);
}

TEST(st_shape_product_overflow) {
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
               "\"data_offsets\":[0,0]}}",
               8, "w", "overflow");
    /* Fits in 64 bits as elements but not as bytes. */
    expect_bad("{\"w\":{\"dtype\":\"I64\",\"shape\":[2305843009213693952,2],"
               "\"data_offsets\":[0,0]}}",
               8, "w", NULL);
    /* Negative, fractional and too many dims. */
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 8, "w", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,0]}}", 8, "w", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 8, "w",
               "dimensions");
}

TEST(st_duplicate_names) {
    expect_bad("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
               "\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
               2, "w", "twice");
}

TEST(st_unknown_dtype) {
    expect_bad("{\"w\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", 16, "w",
               "unknown dtype \"F128\"");
    expect_bad("{\"w\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "w", NULL);
}

TEST(st_non_utf8_name) {
    expect_bad("{\"w\xff\xfe\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "w\\xff\\xfe",
               "UTF-8");
    /* Overlong encoding of '/' and a UTF-16 surrogate are not UTF-8 either. */
    expect_bad("{\"\xc0\xaf\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, NULL, "UTF-8");
    expect_bad("{\"\xed\xa0\x80\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, NULL,
               "UTF-8");
    expect_bad("{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, NULL, "empty");
    expect_bad("{\"a\\nb\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, NULL, "control");
}

TEST(st_non_object_json_and_bad_json) {
    expect_bad("[1,2,3]", 0, NULL, "not a JSON object");
    expect_bad("\"w\"", 0, NULL, "not a JSON object");
    expect_bad("{\"w\":", 0, NULL, "not valid JSON");
    expect_bad("", 0, NULL, NULL);
    expect_bad("{} x", 0, NULL, "trailing");
    expect_bad("{\"w\":[1]}", 0, "w", "not an object");
}

TEST(st_missing_fields) {
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "w", "data_offsets");
    expect_bad("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "w", "dtype");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "w", "shape");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "w", NULL);
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}", 4, "w", NULL);
}

TEST(st_open_mem_matches_file_rules) {
    static const char h[] = "{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}";
    uint8_t buf[8 + sizeof h - 1 + 2];
    memset(buf, 0, sizeof buf);
    buf[0] = (uint8_t)(sizeof h - 1);
    memcpy(buf + 8, h, sizeof h - 1);
    buf[sizeof buf - 2] = 7, buf[sizeof buf - 1] = 9;
    struct dsi_safetensors st;
    char *err = NULL;
    CHECK_EQ_INT(dsi_st_open_mem(&st, buf, sizeof buf, "mem", &err), 0);
    const struct dsi_tensor *t = dsi_st_find(&st, "w");
    CHECK(t && ((const uint8_t *)t->data)[1] == 9);
    dsi_st_close(&st);
    CHECK_EQ_INT(dsi_st_open_mem(&st, buf, sizeof buf - 1, "mem", &err), DSI_EFORMAT);
    CHECK(err && strstr(err, "mem") && strstr(err, "w"));
    free(err);
}

static void write_shards(void) {
    char *a = tm_path(tmp_dir, "model-00001-of-00002.safetensors");
    char *b = tm_path(tmp_dir, "model-00002-of-00002.safetensors");
    float va[2] = {1, 2}, vb[3] = {3, 4, 5};
    CHECK(tm_write_st(a, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", va, 8) == 0);
    CHECK(tm_write_st(b,
                      "{\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                      "\"c\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[12,12]}}",
                      vb, 12) == 0);
    free(a);
    free(b);
}

static int write_index(const char *json) {
    char *p = tm_path(tmp_dir, "model.safetensors.index.json");
    int rc = tm_write_file(p, json, strlen(json));
    free(p);
    return rc;
}

TEST(st_sharded_round_trip) {
    write_shards();
    CHECK(write_index("{\"metadata\":{\"total_size\":20},\"weight_map\":{"
                      "\"a\":\"model-00001-of-00002.safetensors\","
                      "\"b\":\"model-00002-of-00002.safetensors\","
                      "\"c\":\"model-00002-of-00002.safetensors\"}}") == 0);
    struct dsi_safetensors st;
    char *err = NULL;
    CHECK_EQ_INT(dsi_st_open_dir(&st, tmp_dir, &err), 0);
    if (err) fprintf(stderr, "  %s\n", err);
    CHECK_EQ_INT(st.n_tensors, 3);
    const struct dsi_tensor *a = dsi_st_find(&st, "a"), *b = dsi_st_find(&st, "b");
    float out[3];
    CHECK(a && b && a->file_index != b->file_index);
    CHECK(b && dsi_tensor_to_f32(b, out, &err) == 0 && out[0] == 3 && out[2] == 5);
    CHECK(a && dsi_tensor_to_f32(a, out, &err) == 0 && out[1] == 2);
    dsi_st_close(&st);
}

TEST(st_sharded_tensor_missing_from_shard) {
    write_shards();
    CHECK(write_index("{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
                      "\"b\":\"model-00002-of-00002.safetensors\","
                      "\"zz\":\"model-00001-of-00002.safetensors\"}}") == 0);
    struct dsi_safetensors st;
    char *err = NULL;
    CHECK_EQ_INT(dsi_st_open_dir(&st, tmp_dir, &err), DSI_EFORMAT);
    CHECK(err && strstr(err, "zz") && strstr(err, "model-00001-of-00002.safetensors") &&
          strstr(err, "absent"));
    free(err);
    /* Index names the wrong shard for a tensor. */
    CHECK(write_index("{\"weight_map\":{\"a\":\"model-00002-of-00002.safetensors\","
                      "\"b\":\"model-00001-of-00002.safetensors\"}}") == 0);
    err = NULL;
    CHECK_EQ_INT(dsi_st_open_dir(&st, tmp_dir, &err), DSI_EFORMAT);
    CHECK(err && strstr(err, "index says"));
    free(err);
}

TEST(st_sharded_index_hostile) {
    write_shards();
    struct dsi_safetensors st;
    char *err = NULL;
    CHECK(write_index("{\"weight_map\":{\"a\":\"../etc/passwd\"}}") == 0);
    CHECK_EQ_INT(dsi_st_open_dir(&st, tmp_dir, &err), DSI_EFORMAT);
    CHECK(err && strstr(err, "plain file name"));
    free(err), err = NULL;
    CHECK(write_index("{\"weight_map\":{\"a\":\"/etc/passwd\"}}") == 0);
    CHECK_EQ_INT(dsi_st_open_dir(&st, tmp_dir, &err), DSI_EFORMAT);
    free(err), err = NULL;
    CHECK(write_index("{\"weight_map\":[]}") == 0);
    CHECK_EQ_INT(dsi_st_open_dir(&st, tmp_dir, &err), DSI_EFORMAT);
    free(err), err = NULL;
    CHECK(write_index("{\"weight_map\":{}}") == 0);
    CHECK_EQ_INT(dsi_st_open_dir(&st, tmp_dir, &err), DSI_EFORMAT);
    free(err), err = NULL;
    CHECK(write_index("{\"weight_map\":{\"a\":\"nothere.safetensors\"}}") == 0);
    CHECK_EQ_INT(dsi_st_open_dir(&st, tmp_dir, &err), DSI_ENOENT);
    CHECK(err && strstr(err, "nothere.safetensors"));
    free(err), err = NULL;
    /* The same tensor in two shards. */
    char *b = tm_path(tmp_dir, "model-00002-of-00002.safetensors");
    CHECK(tm_write_st(b, "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", NULL, 1) == 0);
    free(b);
    CHECK(write_index("{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
                      "\"x\":\"model-00002-of-00002.safetensors\"}}") == 0);
    CHECK_EQ_INT(dsi_st_open_dir(&st, tmp_dir, &err), DSI_EFORMAT);
    CHECK(err && strstr(err, "twice"));
    free(err);
}

TEST(st_open_dir_without_weights) {
    char *d = tm_mkdtemp();
    struct dsi_safetensors st;
    char *err = NULL;
    CHECK_EQ_INT(dsi_st_open_dir(&st, d, &err), DSI_ENOENT);
    CHECK(err && strstr(err, "model.safetensors"));
    free(err);
    tm_rm_rf(d);
    free(d);
}

static float conv1(enum dsi_dtype dt, const void *bytes, size_t n) {
    struct dsi_tensor t = {
        .name = "t", .dtype = dt, .n_dims = 1, .n_elems = 1, .data = bytes, .size_bytes = n};
    float f = -12345.0f;
    if (dsi_tensor_to_f32(&t, &f, NULL) != 0) return -99999.0f;
    return f;
}

TEST(dtype_conversions_are_exact) {
    uint16_t h;
    h = 0x3c00;
    CHECK(conv1(DSI_DT_F16, &h, 2) == 1.0f);
    h = 0xc000;
    CHECK(conv1(DSI_DT_F16, &h, 2) == -2.0f);
    h = 0x7bff;
    CHECK(conv1(DSI_DT_F16, &h, 2) == 65504.0f);
    h = 0x0001;
    CHECK(conv1(DSI_DT_F16, &h, 2) == ldexpf(1.0f, -24));
    h = 0x7c00;
    CHECK(isinf(conv1(DSI_DT_F16, &h, 2)));
    h = 0x7e00;
    CHECK(isnan(conv1(DSI_DT_F16, &h, 2)));
    h = 0x3f80;
    CHECK(conv1(DSI_DT_BF16, &h, 2) == 1.0f);
    uint8_t b;
    b = 0x38;
    CHECK(conv1(DSI_DT_F8_E4M3, &b, 1) == 1.0f);
    b = 0x7e;
    CHECK(conv1(DSI_DT_F8_E4M3, &b, 1) == 448.0f);
    b = 0xfe;
    CHECK(conv1(DSI_DT_F8_E4M3, &b, 1) == -448.0f);
    b = 0x01;
    CHECK(conv1(DSI_DT_F8_E4M3, &b, 1) == ldexpf(1.0f, -9));
    b = 0x7f;
    CHECK(isnan(conv1(DSI_DT_F8_E4M3, &b, 1)));
    b = 0xff;
    CHECK(conv1(DSI_DT_I8, &b, 1) == -1.0f);
    CHECK(conv1(DSI_DT_U8, &b, 1) == 255.0f);
    int64_t big = 5;
    CHECK(conv1(DSI_DT_I64, &big, 8) == -99999.0f); /* unsupported, not garbage */
    CHECK(conv1(DSI_DT_F32, &big, 8) == -99999.0f); /* size does not match the shape */
    CHECK_EQ_STR(dsi_dtype_name(DSI_DT_F8_E4M3), "F8_E4M3");
    CHECK(dsi_dtype_name(DSI_DT__COUNT) == NULL);
    CHECK_EQ_INT(dsi_dtype_size(DSI_DT_BF16), 2);
    CHECK_EQ_INT(dsi_dtype_size(DSI_DT__COUNT), 0);
}

TEST(f16_decodes_every_bit_pattern_exactly) {
    CHECK(dsi_f16_to_f32(0x3c00) == 1.0f);
    CHECK(dsi_f16_to_f32(0xc000) == -2.0f);
    CHECK(dsi_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    CHECK(dsi_f16_to_f32(0x0200) == ldexpf(1.0f, -15));
    CHECK(isinf(dsi_f16_to_f32(0x7c00)));
    CHECK(isnan(dsi_f16_to_f32(0x7e00)));
    CHECK(dsi_f16_to_f32(0x8000) == 0.0f && signbit(dsi_f16_to_f32(0x8000)));
    /* all 65536 halves against the format's definition, in double */
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000u; h++) {
        int s = (int)(h >> 15), e = (int)((h >> 10) & 0x1f), m = (int)(h & 0x3ff);
        float f = dsi_f16_to_f32((uint16_t)h);
        if (e == 31) {
            bad += m ? !isnan(f) : !(isinf(f) && (signbit(f) != 0) == s);
            continue;
        }
        double v = e ? ldexp(1.0 + m / 1024.0, e - 15) : ldexp((double)m, -24);
        bad += (double)f != (s ? -v : v) || (signbit(f) != 0) != s;
    }
    CHECK_EQ_INT(bad, 0);
}

int main(void) {
    tmp_dir = tm_mkdtemp();
    if (!tmp_dir) return 1;
    RUN(st_open_valid_file_reads_tensors);
    RUN(f16_decodes_every_bit_pattern_exactly);
    RUN(st_file_shorter_than_header_length_field);
    RUN(st_header_length_past_eof);
    RUN(st_header_length_absurd_in_big_sparse_file);
    RUN(st_offsets_out_of_range);
    RUN(st_offsets_begin_after_end);
    RUN(st_overlapping_tensors);
    RUN(st_shape_does_not_match_byte_size);
    RUN(st_shape_product_overflow);
    RUN(st_duplicate_names);
    RUN(st_unknown_dtype);
    RUN(st_non_utf8_name);
    RUN(st_non_object_json_and_bad_json);
    RUN(st_missing_fields);
    RUN(st_open_mem_matches_file_rules);
    RUN(st_sharded_round_trip);
    RUN(st_sharded_tensor_missing_from_shard);
    RUN(st_sharded_index_hostile);
    RUN(st_open_dir_without_weights);
    RUN(dtype_conversions_are_exact);
    tm_rm_rf(tmp_dir);
    free(tmp_dir);
    return test_summary();
}
