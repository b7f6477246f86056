/*
 * test_config.c: the config table: defaults, JSON loading, command-line
 * overrides, error messages that quote key and value, cross-field rules, and
 * config/dsinfer.json being exactly what the table generates.
 *
 * `test_config --print-example` prints the example; regenerate the committed file
 * with: build/tests/test_config --print-example > config/dsinfer.json
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dsinfer/config.h"
#include "dsinfer/err.h"
#include "test.h"

static int load(struct dsi_config *c, const char *json, char **err) {
    return dsi_config_load_json(c, json, strlen(json), err);
}

/* A config that passes validate: the defaults plus a model directory. */
static void init_valid(struct dsi_config *c) {
    CHECK_EQ_INT(dsi_config_init(c), 0);
    CHECK_EQ_INT(dsi_config_set(c, "model_dir", "/models/m", NULL), 0);
}

TEST(config_defaults_match_the_documented_values) {
    struct dsi_config c;
    CHECK_EQ_INT(dsi_config_init(&c), 0);
    CHECK_EQ_STR(c.listen, "127.0.0.1:8443");
    CHECK(!c.plain_http);
    CHECK_EQ_STR(c.backend, "cpu");
    CHECK_EQ_STR(c.dtype, "bf16");
    CHECK_EQ_INT(c.kv_block_size, 16);
    CHECK_EQ_INT(c.kv_cache_mib, 256);
    CHECK_EQ_STR(c.kv_dtype, "auto");
    CHECK_EQ_INT(c.max_running, 64);
    CHECK_EQ_INT(c.max_queued, 256);
    CHECK_EQ_INT(c.prefill_chunk, 256);
    CHECK_EQ_INT(c.max_batch_tokens, 2048);
    CHECK_EQ_INT(c.queue_timeout_ms, 30000);
    CHECK_EQ_INT(c.request_timeout_ms, 300000);
    CHECK_EQ_INT(c.default_max_tokens, 256);
    CHECK_EQ_INT(c.max_body_bytes, 1048576);
    CHECK_EQ_INT(c.stream_buffer_bytes, 1048576);
    CHECK_EQ_INT(c.max_messages, 256);
    CHECK_EQ_INT(c.max_n, 16);
    CHECK_EQ_INT(c.client_timeout_s, 60);
    CHECK_EQ_INT(c.max_connections_per_ip, 64);
    CHECK_EQ_INT(c.request_read_timeout_s, 30);
    CHECK_EQ_INT(c.http_threads, 0);
    CHECK_EQ_INT(c.drain_timeout_s, 30);
    CHECK_EQ_INT(c.drain_grace_ms, 0); /* SIGTERM drains at once unless a balancer needs the grace */
    CHECK_EQ_STR(c.state_dir, "/var/lib/dsinfer");
    CHECK(c.open_health);
    CHECK_EQ_STR(c.log_level, "info");
    CHECK_NEAR(c.kv_gpu_fraction, 0.9, 1e-12);
    CHECK_EQ_INT(c.tensor_parallel, 1);
    CHECK_EQ_STR(c.tls_cert, "");
    CHECK_EQ_STR(c.roles, "");
    dsi_config_free(&c);
    CHECK(c.listen == NULL);
    dsi_config_free(&c); /* twice is harmless */
}

TEST(config_defaults_fail_validate_only_for_missing_model_dir) {
    struct dsi_config c;
    char *err = NULL;
    CHECK_EQ_INT(dsi_config_init(&c), 0);
    CHECK_EQ_INT(dsi_config_validate(&c, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "model_dir"));
    free(err);
    err = NULL;
    CHECK_EQ_INT(dsi_config_set(&c, "model_dir", "/m", &err), 0);
    CHECK_EQ_INT(dsi_config_validate(&c, &err), 0);
    CHECK(err == NULL);
    dsi_config_free(&c);
}

TEST(config_load_json_sets_every_type) {
    struct dsi_config c;
    init_valid(&c);
    char *err = NULL;
    int rc = load(&c,
                  "{\"listen\":\"[::1]:9000\",\"plain_http\":true,\"max_running\":8,"
                  "\"max_body_bytes\":\"2M\",\"kv_cache_mib\":1024,\"kv_gpu_fraction\":0.5,"
                  "\"dtype\":\"int8\",\"int8_group_size\":128,\"backend\":\"cuda\","
                  "\"roles\":{\"ops\":[\"metrics\",\"admin\"]},\"log_level\":\"debug\"}",
                  &err);
    CHECK_EQ_INT(rc, 0);
    if (err) fprintf(stderr, "  %s\n", err);
    CHECK_EQ_STR(c.listen, "[::1]:9000");
    CHECK(c.plain_http);
    CHECK_EQ_INT(c.max_running, 8);
    CHECK_EQ_INT(c.max_body_bytes, 2 * 1024 * 1024);
    CHECK_EQ_INT(c.kv_cache_mib, 1024);
    CHECK_NEAR(c.kv_gpu_fraction, 0.5, 0);
    CHECK_EQ_STR(c.dtype, "int8");
    CHECK_EQ_INT(c.int8_group_size, 128);
    CHECK_EQ_STR(c.backend, "cuda");
    CHECK_EQ_STR(c.roles, "{\"ops\":[\"metrics\",\"admin\"]}");
    CHECK_EQ_STR(c.log_level, "debug");
    CHECK_EQ_STR(c.model_dir, "/models/m"); /* untouched keys keep their value */
    CHECK_EQ_INT(dsi_config_validate(&c, &err), 0);
    free(err);
    dsi_config_free(&c);
}

TEST(config_empty_roles_object_means_defaults) {
    struct dsi_config c;
    init_valid(&c);
    CHECK_EQ_INT(load(&c, "{\"roles\":{\"x\":[]}}", NULL), 0);
    CHECK_EQ_STR(c.roles, "{\"x\":[]}");
    CHECK_EQ_INT(load(&c, "{\"roles\":{}}", NULL), 0);
    CHECK_EQ_STR(c.roles, "");
    dsi_config_free(&c);
}

/* Runs one bad document and checks the error code and that the message quotes `want`. */
static void expect_load_error(const char *json, const char *want) {
    struct dsi_config c;
    init_valid(&c);
    char *err = NULL;
    int rc = load(&c, json, &err);
    CHECK_EQ_INT(rc, DSI_EINVAL);
    CHECK(err != NULL);
    if (err && !strstr(err, want)) {
        fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", err, want);
        CHECK(0);
    }
    /* all or nothing: the config keeps its earlier values */
    CHECK_EQ_INT(c.max_running, 64);
    CHECK_EQ_STR(c.listen, "127.0.0.1:8443");
    free(err);
    dsi_config_free(&c);
}

TEST(config_out_of_range_names_key_value_and_range) {
    expect_load_error("{\"max_running\":0}", "config: max_running = 0 is out of range [1, 4096]");
    expect_load_error("{\"max_running\":5000}", "max_running = 5000 is out of range [1, 4096]");
    expect_load_error("{\"kv_gpu_fraction\":1.5}", "kv_gpu_fraction = 1.5 is out of range [0.05, 0.99]");
    expect_load_error("{\"max_body_bytes\":\"4G\"}", "max_body_bytes = 4G is out of range");
    expect_load_error("{\"max_running\":1e300}", "max_running = 1e+300 is out of range");
}

TEST(config_wrong_types_name_key_and_value) {
    expect_load_error("{\"max_running\":\"8\"}", "max_running = \"8\" is not an integer");
    expect_load_error("{\"max_running\":2.5}", "max_running = 2.5 is not an integer");
    expect_load_error("{\"plain_http\":1}", "plain_http = 1 is not a boolean");
    expect_load_error("{\"listen\":8443}", "listen = 8443 is not a string");
    expect_load_error("{\"kv_gpu_fraction\":\"0.5\"}", "kv_gpu_fraction = \"0.5\" is not a number");
    expect_load_error("{\"roles\":[\"admin\"]}", "roles = [\"admin\"] is not a JSON object");
    expect_load_error("{\"roles\":{\"ops\":\"admin\"}}", "roles.ops is not an array");
    expect_load_error("{\"roles\":{\"ops\":[1]}}", "roles.ops has a permission that is not a string");
    expect_load_error("{\"max_running\":null}", "max_running = null is not an integer");
}

TEST(config_bad_values_name_key_and_value) {
    expect_load_error("{\"dtype\":\"fp16\"}", "dtype = \"fp16\" is not one of f32|bf16|int8");
    expect_load_error("{\"listen\":\"localhost\"}", "listen = \"localhost\" is not host:port");
    expect_load_error("{\"listen\":\"0.0.0.0:70000\"}", "listen = \"0.0.0.0:70000\" is not host:port");
    expect_load_error("{\"listen\":\"::1:8443\"}", "is not host:port");
    expect_load_error("{\"kv_block_size\":24}", "kv_block_size = 24 is not a power of two");
    expect_load_error("{\"kv_dtype\":\"fp8\"}", "kv_dtype = \"fp8\" is not one of auto|f32|bf16|int8");
    expect_load_error("{\"manifest_sha256\":\"abc\"}", "manifest_sha256 = \"abc\" is not 64 hex digits");
    expect_load_error("{\"max_body_bytes\":\"1X\"}", "max_body_bytes = \"1X\" is not an integer");
    /* issue 22: model aliases */
    expect_load_error("{\"served_model_names\":\"deepseek-chat\"}", "served_model_names");
    expect_load_error("{\"served_model_names\":[]}", "array of 1 to 16 names");
    expect_load_error("{\"served_model_names\":[\"a\",\"b\",\"a\"]}", "lists 'a' twice");
    expect_load_error("{\"served_model_names\":[\"a\\nb\"]}", "without control characters");
    expect_load_error("{\"served_model_names\":[\"\"]}", "1 to 255 bytes");
    expect_load_error("{\"served_model_names\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\","
                      "\"10\",\"11\",\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"]}", "array of 1 to 16 names");
    struct dsi_config c;
    char *err = NULL;
    CHECK_EQ_INT(dsi_config_init(&c), 0);
    const char *names = "{\"served_model_names\":[\"deepseek-chat\",\"deepseek-reasoner\"]}";
    CHECK_EQ_INT(dsi_config_load_json(&c, names, strlen(names), &err), 0);
    CHECK(c.served_model_names && strstr(c.served_model_names, "deepseek-reasoner"));
    free(err);
    dsi_config_free(&c);
}

TEST(config_unknown_and_duplicate_keys_are_errors) {
    expect_load_error("{\"max_runing\":8}", "unknown key \"max_runing\" (= 8)");
    expect_load_error("{\"max_running\":8,\"max_running\":9}", "key \"max_running\" appears twice");
}

TEST(config_malformed_json_is_an_error) {
    expect_load_error("{\"max_running\":", "malformed JSON");
    expect_load_error("[1,2]", "top level must be a JSON object");
    expect_load_error("", "malformed JSON");
    expect_load_error("{} trailing", "malformed JSON");
    struct dsi_config c;
    init_valid(&c);
    char *err = NULL;
    /* a NUL byte inside the given length is not whitespace */
    CHECK_EQ_INT(dsi_config_load_json(&c, "{}\0{}", 5, &err), DSI_EINVAL);
    free(err);
    CHECK_EQ_INT(dsi_config_load_json(&c, "{\"max_running\": 3}\n\t ", 21, NULL), 0);
    CHECK_EQ_INT(c.max_running, 3);
    CHECK_EQ_INT(dsi_config_load_json(&c, NULL, 0, NULL), DSI_EINVAL);
    dsi_config_free(&c);
}

TEST(config_load_is_all_or_nothing) {
    struct dsi_config c;
    init_valid(&c);
    char *err = NULL;
    /* the first key is valid, the second is not: neither applies */
    CHECK_EQ_INT(load(&c, "{\"max_running\":8,\"max_queued\":-1}", &err), DSI_EINVAL);
    CHECK_EQ_INT(c.max_running, 64);
    CHECK_EQ_INT(c.max_queued, 256);
    free(err);
    dsi_config_free(&c);
}

TEST(config_set_takes_dashed_names_and_text_values) {
    struct dsi_config c;
    init_valid(&c);
    char *err = NULL;
    CHECK_EQ_INT(dsi_config_set(&c, "max-running", "32", &err), 0);
    CHECK_EQ_INT(c.max_running, 32);
    CHECK_EQ_INT(dsi_config_set(&c, "plain-http", "yes", &err), 0);
    CHECK(c.plain_http);
    CHECK_EQ_INT(dsi_config_set(&c, "plain_http", "off", &err), 0);
    CHECK(!c.plain_http);
    CHECK_EQ_INT(dsi_config_set(&c, "max-body-bytes", "64K", &err), 0);
    CHECK_EQ_INT(c.max_body_bytes, 65536);
    CHECK_EQ_INT(dsi_config_set(&c, "kv-gpu-fraction", "0.75", &err), 0);
    CHECK_NEAR(c.kv_gpu_fraction, 0.75, 0);
    CHECK_EQ_INT(dsi_config_set(&c, "roles", "{\"a\":[\"chat\"]}", &err), 0);
    CHECK_EQ_STR(c.roles, "{\"a\":[\"chat\"]}");
    CHECK(err == NULL);
    dsi_config_free(&c);
}

TEST(config_set_rejects_bad_values_and_keeps_the_old_one) {
    struct dsi_config c;
    init_valid(&c);
    char *err = NULL;
    CHECK_EQ_INT(dsi_config_set(&c, "max-running", "0", &err), DSI_EINVAL);
    CHECK_EQ_STR(err, "config: max_running = 0 is out of range [1, 4096]");
    CHECK_EQ_INT(c.max_running, 64);
    free(err);
    err = NULL;
    CHECK_EQ_INT(dsi_config_set(&c, "max-running", "12abc", &err), DSI_EINVAL);
    CHECK(err && strstr(err, "max_running = \"12abc\" is not an integer"));
    free(err);
    err = NULL;
    CHECK_EQ_INT(dsi_config_set(&c, "max-running", " 12", &err), DSI_EINVAL);
    free(err);
    err = NULL;
    CHECK_EQ_INT(dsi_config_set(&c, "kv-gpu-fraction", "nan", &err), DSI_EINVAL);
    free(err);
    err = NULL;
    CHECK_EQ_INT(dsi_config_set(&c, "no-such-option", "1", &err), DSI_EINVAL);
    CHECK(err && strstr(err, "unknown option \"no-such-option\""));
    free(err);
    err = NULL;
    CHECK_EQ_INT(dsi_config_set(&c, "listen", NULL, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "listen needs a value"));
    free(err);
    err = NULL;
    CHECK_EQ_INT(dsi_config_set(&c, "roles", "{bad", &err), DSI_EINVAL);
    CHECK(err && strstr(err, "roles = {bad is not valid JSON"));
    free(err);
    CHECK_EQ_STR(c.roles, "");
    dsi_config_free(&c);
}

/* Checks that validate fails for c with a message containing `want`. */
static void expect_invalid(struct dsi_config *c, const char *want) {
    char *err = NULL;
    CHECK_EQ_INT(dsi_config_validate(c, &err), DSI_EINVAL);
    if (!err || !strstr(err, want)) {
        fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", err ? err : "(null)", want);
        CHECK(0);
    }
    free(err);
}

TEST(config_plain_http_only_on_loopback) {
    struct dsi_config c;
    init_valid(&c);
    CHECK_EQ_INT(dsi_config_set(&c, "plain_http", "true", NULL), 0);
    CHECK_EQ_INT(dsi_config_validate(&c, NULL), 0);
    CHECK_EQ_INT(dsi_config_set(&c, "listen", "[::1]:80", NULL), 0);
    CHECK_EQ_INT(dsi_config_validate(&c, NULL), 0);
    CHECK_EQ_INT(dsi_config_set(&c, "listen", "127.9.8.7:80", NULL), 0);
    CHECK_EQ_INT(dsi_config_validate(&c, NULL), 0);
    CHECK_EQ_INT(dsi_config_set(&c, "listen", "0.0.0.0:8080", NULL), 0);
    expect_invalid(&c, "plain_http = true needs a loopback listen address");
    CHECK_EQ_INT(dsi_config_set(&c, "listen", "127.0.0.1.evil.com:80", NULL), 0);
    expect_invalid(&c, "loopback");
    CHECK_EQ_INT(dsi_config_set(&c, "listen", "128.0.0.1:80", NULL), 0);
    expect_invalid(&c, "loopback");
    dsi_config_free(&c);
}

TEST(config_cross_field_rules) {
    struct dsi_config c;
    init_valid(&c);
    CHECK_EQ_INT(dsi_config_set(&c, "tls_key", "/k.pem", NULL), 0);
    expect_invalid(&c, "tls_key = \"/k.pem\" is set but tls_cert is not");
    CHECK_EQ_INT(dsi_config_set(&c, "tls_cert", "/c.pem", NULL), 0);
    CHECK_EQ_INT(dsi_config_validate(&c, NULL), 0);
    CHECK_EQ_INT(dsi_config_set(&c, "tls_key", "", NULL), 0);
    expect_invalid(&c, "tls_cert = \"/c.pem\" is set but tls_key is not");
    dsi_config_free(&c);

    init_valid(&c);
    CHECK_EQ_INT(dsi_config_set(&c, "tls_require_client_cert", "true", NULL), 0);
    expect_invalid(&c, "tls_require_client_cert = true needs tls_client_ca");
    CHECK_EQ_INT(dsi_config_set(&c, "tls_client_ca", "/ca.pem", NULL), 0);
    CHECK_EQ_INT(dsi_config_validate(&c, NULL), 0);
    CHECK_EQ_INT(dsi_config_set(&c, "plain_http", "true", NULL), 0);
    expect_invalid(&c, "plain_http = true cannot check client certificates");
    dsi_config_free(&c);

    init_valid(&c);
    CHECK_EQ_INT(dsi_config_set(&c, "tensor_parallel", "2", NULL), 0);
    expect_invalid(&c, "tensor_parallel = 2 needs backend = \"cuda\"");
    CHECK_EQ_INT(dsi_config_set(&c, "backend", "cuda", NULL), 0);
    CHECK_EQ_INT(dsi_config_validate(&c, NULL), 0);
    CHECK_EQ_INT(dsi_config_set(&c, "int8_group_size", "64", NULL), 0);
    expect_invalid(&c, "int8_group_size = 64 needs dtype = \"int8\", not \"bf16\"");
    dsi_config_free(&c);

    init_valid(&c);
    CHECK_EQ_INT(dsi_config_set(&c, "prefill_chunk", "4096", NULL), 0);
    expect_invalid(&c, "prefill_chunk = 4096 is larger than max_batch_tokens = 2048");
    dsi_config_free(&c);

    init_valid(&c);
    CHECK_EQ_INT(dsi_config_set(&c, "max_batch_tokens", "32", NULL), 0);
    CHECK_EQ_INT(dsi_config_set(&c, "prefill_chunk", "32", NULL), 0);
    expect_invalid(&c, "max_running = 64 is larger than max_batch_tokens = 32");
    dsi_config_free(&c);

    init_valid(&c);
    CHECK_EQ_INT(dsi_config_set(&c, "max_total_tokens", "100", NULL), 0);
    expect_invalid(&c, "default_max_tokens = 256 is larger than max_total_tokens = 100");
    CHECK_EQ_INT(dsi_config_set(&c, "default_max_tokens", "50", NULL), 0);
    CHECK_EQ_INT(dsi_config_set(&c, "max_prompt_tokens", "101", NULL), 0);
    expect_invalid(&c, "max_prompt_tokens = 101 is larger than max_total_tokens = 100");
    dsi_config_free(&c);

    init_valid(&c);
    CHECK_EQ_INT(dsi_config_set(&c, "queue_timeout_ms", "400000", NULL), 0);
    expect_invalid(&c, "queue_timeout_ms = 400000 is larger than request_timeout_ms = 300000");
    dsi_config_free(&c);
}

TEST(config_path_options_expand_systemd_directories) {
    struct dsi_config c;
    init_valid(&c);
    char *err = NULL;
    setenv("CREDENTIALS_DIRECTORY", "/run/credentials/dsinfer.service", 1);
    CHECK_EQ_INT(load(&c, "{\"tls_key\":\"${CREDENTIALS_DIRECTORY}/tls.key\"}", &err), 0);
    CHECK_EQ_STR(c.tls_key, "/run/credentials/dsinfer.service/tls.key");
    unsetenv("CREDENTIALS_DIRECTORY");
    CHECK_EQ_INT(load(&c, "{\"tls_key\":\"${CREDENTIALS_DIRECTORY}/other.key\"}", &err), DSI_EINVAL);
    CHECK(err &&
          strstr(err, "tls_key = \"${CREDENTIALS_DIRECTORY}/other.key\": $CREDENTIALS_DIRECTORY is not set"));
    free(err);
    err = NULL;
    CHECK_EQ_STR(c.tls_key, "/run/credentials/dsinfer.service/tls.key"); /* unchanged */
    CHECK_EQ_INT(dsi_config_set(&c, "tls_key", "${HOME}/k", &err), DSI_EINVAL);
    CHECK(err && strstr(err, "only ${CREDENTIALS_DIRECTORY}"));
    free(err);
    err = NULL;
    CHECK_EQ_INT(dsi_config_set(&c, "tls_key", "${CREDENTIALS_DIRECTORY", &err), DSI_EINVAL);
    free(err);
    /* a '$' that is not ${...} stays as it is */
    CHECK_EQ_INT(dsi_config_set(&c, "tls_key", "/a$b/k", NULL), 0);
    CHECK_EQ_STR(c.tls_key, "/a$b/k");
    /* non-path strings are never expanded */
    CHECK_EQ_INT(dsi_config_set(&c, "model_name", "${STATE_DIRECTORY}", NULL), 0);
    CHECK_EQ_STR(c.model_name, "${STATE_DIRECTORY}");
    dsi_config_free(&c);
}

TEST(config_reload_changes_lists_restart_only_options) {
    struct dsi_config a, b;
    init_valid(&a);
    CHECK_EQ_INT(dsi_config_copy(&b, &a), 0);
    char *names = NULL;
    CHECK_EQ_INT(dsi_config_reload_changes(&a, &b, &names), 0);
    CHECK(names == NULL);
    CHECK_EQ_INT(dsi_config_set(&b, "log_level", "debug", NULL), 0);
    CHECK_EQ_INT(dsi_config_set(&b, "keys_file", "/k", NULL), 0);
    CHECK_EQ_INT(dsi_config_reload_changes(&a, &b, &names), 0);
    CHECK_EQ_INT(dsi_config_set(&b, "listen", "127.0.0.1:1", NULL), 0);
    CHECK_EQ_INT(dsi_config_set(&b, "max_running", "2", NULL), 0);
    CHECK_EQ_INT(dsi_config_reload_changes(&a, &b, &names), 2);
    CHECK_EQ_STR(names, "listen, max_running");
    free(names);
    CHECK(dsi_config_is_reloadable("keys_file"));
    CHECK(dsi_config_is_reloadable("roles"));
    CHECK(dsi_config_is_reloadable("log_level"));
    CHECK(!dsi_config_is_reloadable("tls_cert")); /* the listener keeps its credentials */
    CHECK(!dsi_config_is_reloadable("model_dir"));
    CHECK(!dsi_config_is_reloadable("nope"));
    dsi_config_free(&a);
    dsi_config_free(&b);
}

TEST(config_parse_listen_splits_host_and_port) {
    char host[64];
    int port = 0;
    CHECK_EQ_INT(dsi_config_parse_listen("0.0.0.0:8443", host, sizeof host, &port), 0);
    CHECK_EQ_STR(host, "0.0.0.0");
    CHECK_EQ_INT(port, 8443);
    CHECK_EQ_INT(dsi_config_parse_listen("[fe80::1]:1", host, sizeof host, &port), 0);
    CHECK_EQ_STR(host, "fe80::1");
    CHECK_EQ_INT(port, 1);
    CHECK_EQ_INT(dsi_config_parse_listen(":80", host, sizeof host, &port), DSI_EINVAL);
    CHECK_EQ_INT(dsi_config_parse_listen("h:0", host, sizeof host, &port), DSI_EINVAL);
    CHECK_EQ_INT(dsi_config_parse_listen("h:", host, sizeof host, &port), DSI_EINVAL);
    CHECK_EQ_INT(dsi_config_parse_listen("[::1]80", host, sizeof host, &port), DSI_EINVAL);
    CHECK_EQ_INT(dsi_config_parse_listen("a b:80", host, sizeof host, &port), DSI_EINVAL);
    CHECK_EQ_INT(dsi_config_parse_listen("averyveryverylonghostname:80", host, 8, &port), DSI_EINVAL);
    CHECK(dsi_config_is_loopback("localhost:1"));
    CHECK(!dsi_config_is_loopback("[::2]:1"));
}

/* Reads a whole file into a heap string (NULL when missing). */
static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(1 << 16);
    size_t n = buf ? fread(buf, 1, (1 << 16) - 1, f) : 0;
    fclose(f);
    if (buf) buf[n] = '\0';
    *len = n;
    return buf;
}

TEST(config_example_file_is_generated_from_the_table) {
    struct dsi_config c;
    CHECK_EQ_INT(dsi_config_init_example(&c), 0);
    char *gen = NULL;
    size_t gen_len = 0;
    FILE *m = open_memstream(&gen, &gen_len);
    dsi_config_print_json(m, &c);
    fclose(m);
    size_t len = 0;
    char *committed = slurp("config/dsinfer.json", &len);
    CHECK(committed != NULL);
    if (committed && strcmp(committed, gen) != 0) {
        fprintf(stderr, "  config/dsinfer.json is stale; regenerate it with\n"
                        "  build/tests/test_config --print-example > config/dsinfer.json\n");
        CHECK(0);
    }
    /* the example loads back into the same values and is valid as installed */
    struct dsi_config back;
    char *err = NULL;
    CHECK_EQ_INT(dsi_config_init(&back), 0);
    CHECK_EQ_INT(dsi_config_load_file(&back, "config/dsinfer.json", &err), 0);
    CHECK_EQ_INT(dsi_config_validate(&back, &err), 0);
    if (err) fprintf(stderr, "  %s\n", err);
    CHECK_EQ_STR(back.tls_key, c.tls_key);
    CHECK_EQ_STR(back.model_dir, c.model_dir);
    CHECK_NEAR(back.kv_gpu_fraction, c.kv_gpu_fraction, 0);
    free(err);
    free(committed);
    free(gen);
    dsi_config_free(&back);
    dsi_config_free(&c);
}

TEST(config_print_json_round_trips_every_value) {
    struct dsi_config c, back;
    init_valid(&c);
    CHECK_EQ_INT(
        load(&c, "{\"roles\":{\"r\":[\"chat\"]},\"model_name\":\"a\\\"b\\\\c\\n\",\"kv_gpu_fraction\":0.3}",
             NULL),
        0);
    char *gen = NULL;
    size_t gen_len = 0;
    FILE *m = open_memstream(&gen, &gen_len);
    dsi_config_print_json(m, &c);
    fclose(m);
    CHECK_EQ_INT(dsi_config_init(&back), 0);
    char *err = NULL;
    CHECK_EQ_INT(dsi_config_load_json(&back, gen, gen_len, &err), 0);
    if (err) fprintf(stderr, "  %s\n", err);
    CHECK_EQ_STR(back.model_name, "a\"b\\c\n");
    CHECK_EQ_STR(back.roles, c.roles);
    CHECK_NEAR(back.kv_gpu_fraction, 0.3, 0);
    CHECK_EQ_INT(dsi_config_reload_changes(&c, &back, NULL), 0);
    free(err);
    free(gen);
    dsi_config_free(&back);
    dsi_config_free(&c);
}

TEST(config_help_lists_every_option_with_default) {
    char *txt = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&txt, &len);
    dsi_config_print_help(m);
    fclose(m);
    CHECK(strstr(txt, "--max-running N") != NULL);
    CHECK(strstr(txt, "[1..4096] (default: 64)") != NULL);
    CHECK(strstr(txt, "--dtype f32|bf16|int8") != NULL);
    CHECK(strstr(txt, "--keys-file PATH") != NULL);
    CHECK(strstr(txt, "[reloads on SIGHUP]") != NULL);
    CHECK(strstr(txt, "--drain-timeout-s N") != NULL);
    free(txt);
}

TEST(config_load_file_errors_name_the_file) {
    struct dsi_config c;
    init_valid(&c);
    char *err = NULL;
    CHECK_EQ_INT(dsi_config_load_file(&c, "tests/no/such/config.json", &err), DSI_ENOENT);
    CHECK(err && strstr(err, "tests/no/such/config.json"));
    free(err);
    err = NULL;
    char path[] = "/tmp/dsi_test_config_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) {
        const char bad[] = "{\"max_running\": 0}";
        CHECK(write(fd, bad, sizeof bad - 1) == (ssize_t)(sizeof bad - 1));
        close(fd);
        CHECK_EQ_INT(dsi_config_load_file(&c, path, &err), DSI_EINVAL);
        CHECK(err && strstr(err, path) && strstr(err, ": max_running = 0 is out of range [1, 4096]"));
        unlink(path);
    }
    free(err);
    dsi_config_free(&c);
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--print-example") == 0) {
        struct dsi_config c;
        if (dsi_config_init_example(&c) < 0) return 1;
        dsi_config_print_json(stdout, &c);
        dsi_config_free(&c);
        return 0;
    }
    RUN(config_defaults_match_the_documented_values);
    RUN(config_defaults_fail_validate_only_for_missing_model_dir);
    RUN(config_load_json_sets_every_type);
    RUN(config_empty_roles_object_means_defaults);
    RUN(config_out_of_range_names_key_value_and_range);
    RUN(config_wrong_types_name_key_and_value);
    RUN(config_bad_values_name_key_and_value);
    RUN(config_unknown_and_duplicate_keys_are_errors);
    RUN(config_malformed_json_is_an_error);
    RUN(config_load_is_all_or_nothing);
    RUN(config_set_takes_dashed_names_and_text_values);
    RUN(config_set_rejects_bad_values_and_keeps_the_old_one);
    RUN(config_plain_http_only_on_loopback);
    RUN(config_cross_field_rules);
    RUN(config_path_options_expand_systemd_directories);
    RUN(config_reload_changes_lists_restart_only_options);
    RUN(config_parse_listen_splits_host_and_port);
    RUN(config_example_file_is_generated_from_the_table);
    RUN(config_print_json_round_trips_every_value);
    RUN(config_help_lists_every_option_with_default);
    RUN(config_load_file_errors_name_the_file);
    return test_summary();
}
