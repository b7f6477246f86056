/*
 * test_auth_files.c: the file-facing parts of src/auth: the strict keys file
 * parser (one test per kind of defect, each checking the message names the
 * entry and field), RFC 3339 parsing, the keys admin API behind `dsinfer keys`
 * (0600, atomic rewrite, list without hashes, revoke) and the audit log
 * (valid JSON lines, escaping, no secrets, reopen after rotation).
 */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/auth/auth_internal.h"
#include "dsinfer/auth.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "test.h"

#define HASH_A "00000000000000000000000000000000000000000000000000000000000000aa"
#define HASH_B "00000000000000000000000000000000000000000000000000000000000000bb"

static char tmpdir[64];

/* Parses text with default roles; returns the code and leaves the message in *err. */
static int parse(const char *text, char **err) {
    struct dsi__roles r;
    dsi__roles_default(&r);
    struct dsi__keyset *ks = NULL;
    *err = NULL;
    int rc = dsi__keyset_parse(text, strlen(text), &r, &ks, err);
    dsi__keyset_free(ks);
    return rc;
}

static void expect_error(const char *text, const char *want1, const char *want2) {
    char *err = NULL;
    int rc = parse(text, &err);
    CHECK_EQ_INT(rc, DSI_EINVAL);
    if (!err || !strstr(err, want1) || (want2 && !strstr(err, want2)))
        fprintf(stderr, "  for %s\n  got: %s\n  want: %s %s\n", text, err ? err : "(none)", want1,
                want2 ? want2 : "");
    CHECK(err && strstr(err, want1));
    if (want2) CHECK(err && strstr(err, want2));
    free(err);
}

#define KEY(id, extra)                                                                                       \
    "{\"id\":\"" id "\",\"name\":\"n\",\"role\":\"user\",\"sha256\":\"" HASH_A "\"" extra "}"

TEST(keys_parse_valid_full) {
    const char *t = "{\"version\":1,\"keys\":[{\"id\":\"k_0123abcd\",\"name\":\"alice\",\"role\":\"user\","
                    "\"sha256\":\"" HASH_A "\",\"models\":[\"a\",\"b\"],\"rpm\":60,\"tpm\":1000,"
                    "\"max_tokens\":256,\"expires\":\"2027-01-31T00:00:00+01:00\",\"disabled\":false,"
                    "\"created\":\"2026-11-28T15:00:00.123Z\"}],\"clients\":[]}\n";
    struct dsi__roles r;
    dsi__roles_default(&r);
    struct dsi__keyset *ks = NULL;
    char *err = NULL;
    CHECK_EQ_INT(dsi__keyset_parse(t, strlen(t), &r, &ks, &err), 0);
    CHECK(ks && ks->n_keys == 1);
    if (ks && ks->n_keys == 1) {
        struct dsi__entry *e = &ks->keys[0];
        CHECK_EQ_STR(e->id, "k_0123abcd");
        CHECK_EQ_INT(e->n_models, 2);
        CHECK_EQ_INT(e->rpm, 60);
        CHECK_EQ_INT(e->tpm, 1000);
        CHECK_EQ_INT(e->max_tokens, 256);
        CHECK_EQ_INT(e->expires_ms, 1801350000000LL); /* 2027-01-30T23:00:00Z */
        CHECK_EQ_INT(e->sha[31], 0xaa);
    }
    dsi__keyset_free(ks);
    free(err);
}

TEST(keys_parse_errors_name_entry_and_field) {
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"disable\":true") "]}", "k_1",
                 "unknown field 'disable'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"rpm\":\"60\"") "]}", "k_1", "'rpm'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"rpm\":-1") "]}", "k_1", "'rpm'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"tpm\":1.5") "]}", "k_1", "'tpm'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"max_tokens\":1e12") "]}", "k_1", "'max_tokens'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"disabled\":1") "]}", "k_1", "'disabled'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"models\":\"a\"") "]}", "k_1", "'models'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"models\":[\"a,b\"]") "]}", "k_1", "'models'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"models\":[\"\"]") "]}", "k_1", "'models'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"expires\":\"2027-02-30T00:00:00Z\"") "]}", "k_1",
                 "'expires'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"expires\":\"2027-01-31\"") "]}", "k_1",
                 "'expires'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"created\":12") "]}", "k_1", "'created'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"cache_group\":\"team a\"") "]}", "k_1",
                 "'cache_group'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"cache_group\":\"\"") "]}", "k_1", "'cache_group'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"rpm\":1,\"rpm\":2") "]}", "k_1",
                 "'rpm' appears twice");
    expect_error(
        "{\"version\":1,\"keys\":[{\"id\":\"k_1\",\"name\":\"n\",\"role\":\"root\",\"sha256\":\"" HASH_A
        "\"}]}",
        "k_1", "unknown role 'root'");
    expect_error(
        "{\"version\":1,\"keys\":[{\"id\":\"k_1\",\"name\":\"n\",\"role\":\"user\",\"sha256\":\"" HASH_A
        "0\"}]}",
        "k_1", "'sha256'");
    expect_error("{\"version\":1,\"keys\":[{\"id\":\"k_1\",\"name\":\"n\",\"role\":\"user\",\"sha256\":"
                 "\"x0000000000000000000000000000000000000000000000000000000000000aa\"}]}",
                 "k_1", "'sha256'");
    expect_error("{\"version\":1,\"keys\":[{\"id\":\"k_1\",\"name\":\"n\",\"role\":\"user\"}]}", "k_1",
                 "missing field 'sha256'");
    expect_error("{\"version\":1,\"keys\":[{\"name\":\"n\",\"role\":\"user\",\"sha256\":\"" HASH_A "\"}]}",
                 "keys[0]", "'id'");
    expect_error(
        "{\"version\":1,\"keys\":[{\"id\":\"k 1\",\"name\":\"n\",\"role\":\"user\",\"sha256\":\"" HASH_A
        "\"}]}",
        "keys[0]", "'id'");
    expect_error(
        "{\"version\":1,\"keys\":[{\"id\":\"k_1\",\"name\":\"a\\nb\",\"role\":\"user\",\"sha256\":\"" HASH_A
        "\"}]}",
        "k_1", "'name'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", "") "," KEY("k_1", "") "]}", "keys[1]",
                 "id already used");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", "") "," KEY("k_2", "") "]}", "k_2", "same sha256");
    /* the first repeat in file order is reported, with the entry it repeats */
    expect_error(
        "{\"version\":1,\"keys\":[{\"id\":\"k_2\",\"name\":\"n\",\"role\":\"user\",\"sha256\":\"" HASH_B
        "\"}," KEY("k_1", "") "," KEY("k_2", "") "," KEY("k_1", "") "]}",
        "keys[2] (id \"k_2\"): id already used by keys[0]", NULL);
    expect_error("{\"version\":1,\"keys\":[1]}", "keys[0]", "object");
    expect_error("{\"version\":2,\"keys\":[]}", "version", NULL);
    expect_error("{\"keys\":[]}", "version", NULL);
    expect_error("{\"version\":1}", "\"keys\"", NULL);
    expect_error("{\"version\":1,\"keys\":{}}", "\"keys\"", NULL);
    expect_error("{\"version\":1,\"keys\":[],\"extra\":1}", "unknown top-level field 'extra'", NULL);
    expect_error("{\"version\":1,\"keys\":[],\"keys\":[]}", "appears twice", NULL);
    expect_error("{\"version\":1,\"keys\":[]} []", "text after", NULL);
    expect_error("[]", "top level", NULL);
    expect_error("{\"version\":1,\"keys\":[", "not valid JSON", NULL);
    expect_error("", "not valid JSON", NULL);
    expect_error("{\"version\":1,\"keys\":[],\"clients\":[{\"cn\":\"a\",\"name\":\"n\",\"role\":\"user\","
                 "\"sha256\":\"" HASH_A "\"}]}",
                 "clients[0]", "unknown field 'sha256'");
    expect_error("{\"version\":1,\"keys\":[],\"clients\":[{\"cn\":\"a\",\"name\":\"n\",\"role\":\"user\"},"
                 "{\"cn\":\"a\",\"name\":\"m\",\"role\":\"user\"}]}",
                 "clients[1]", "cn already used");
    expect_error("{\"version\":1,\"keys\":[],\"clients\":[{\"name\":\"n\",\"role\":\"user\"}]}", "clients[0]",
                 "'cn'");
    /* hex in either case is accepted; different case of the same digest is a duplicate */
    char *err = NULL;
    CHECK_EQ_INT(parse("{\"version\":1,\"keys\":[{\"id\":\"k_1\",\"name\":\"n\",\"role\":\"user\",\"sha256\":"
                       "\"00000000000000000000000000000000000000000000000000000000000000AA\"}]}",
                       &err),
                 0);
    free(err);
}

/* Names, CNs and model names go into keys.json, logs and metric labels: bytes
 * that are not UTF-8 (the file stops being JSON, the labels stop being valid
 * exposition text) and C1 controls (CSI for a terminal) are refused too. */
TEST(keys_parse_refuses_text_that_is_not_printable_utf8) {
    expect_error("{\"version\":1,\"keys\":[{\"id\":\"k_1\",\"name\":\"a\xff\",\"role\":\"user\",\"sha256\":\"" HASH_A
                 "\"}]}",
                 "k_1", "'name'");
    expect_error("{\"version\":1,\"keys\":[{\"id\":\"k_1\",\"name\":\"a\xc3\",\"role\":\"user\",\"sha256\":\"" HASH_A
                 "\"}]}",
                 "k_1", "'name'");
    expect_error("{\"version\":1,\"keys\":[{\"id\":\"k_1\",\"name\":\"a\\u009b31m\",\"role\":\"user\","
                 "\"sha256\":\"" HASH_A "\"}]}",
                 "k_1", "'name'");
    expect_error("{\"version\":1,\"keys\":[" KEY("k_1", ",\"models\":[\"m\xe2\x82\"]") "]}", "k_1", "'models'");
    expect_error("{\"version\":1,\"keys\":[],\"clients\":[{\"cn\":\"svc\xc0\xaf\",\"name\":\"n\",\"role\":\"user\"}]}",
                 "clients[0]", "'cn'");
    /* printable UTF-8 beyond ASCII stays accepted */
    char *err = NULL;
    CHECK_EQ_INT(parse("{\"version\":1,\"keys\":[{\"id\":\"k_1\",\"name\":\"Ren\xc3\xa9" "e \xe2\x82\xac\",\"role\":"
                       "\"user\",\"sha256\":\"" HASH_A "\",\"models\":[\"\xe6\xa8\xa1\xe5\x9e\x8b\"]}]}",
                       &err),
                 0);
    free(err);
}

TEST(keys_admin_add_refuses_name_not_printable_utf8) {
    char path[160];
    snprintf(path, sizeof path, "%s/admin_utf8.json", tmpdir);
    char key[DSI_KEY_STRLEN + 1], id[32];
    const char *bad[] = {"al\xffice", "trunc\xe2\x82", "csi\xc2\x9b\x33\x31m", "esc\x1b[31m"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct dsi_key_spec s = {.name = bad[i], .role = "user"};
        char *err = NULL;
        CHECK_EQ_INT(dsi_keys_add(path, &s, key, id, &err), DSI_EINVAL);
        CHECK(err && strstr(err, "--name"));
        free(err);
    }
    struct stat st;
    CHECK(stat(path, &st) != 0); /* nothing written */
    struct dsi_key_spec s = {.name = "Ren\xc3\xa9" "e", .role = "user"};
    CHECK_EQ_INT(dsi_keys_add(path, &s, key, id, NULL), 0);
    /* --cache-group takes the id alphabet */
    struct dsi_key_spec g = {.name = "g", .role = "user", .cache_group = "team a"};
    char *err = NULL;
    CHECK_EQ_INT(dsi_keys_add(path, &g, key, id, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "--cache-group"));
    free(err);
    g.cache_group = "team-a";
    CHECK_EQ_INT(dsi_keys_add(path, &g, key, id, NULL), 0);
    char *text = NULL;
    FILE *f = fopen(path, "r");
    if (f) {
        text = calloc(1, 65536);
        if (text) fread(text, 1, 65535, f);
        fclose(f);
    }
    CHECK(text && strstr(text, "\"cache_group\"") && strstr(text, "\"team-a\""));
    free(text);
    unlink(path);
}

TEST(keys_parse_rfc3339) {
    int64_t ms = 0;
    CHECK_EQ_INT(dsi__rfc3339_parse("1970-01-01T00:00:00Z", &ms), 0);
    CHECK_EQ_INT(ms, 0);
    CHECK_EQ_INT(dsi__rfc3339_parse("2000-02-29T12:34:56.789Z", &ms), 0);
    CHECK_EQ_INT(ms, 951827696789LL);
    CHECK_EQ_INT(dsi__rfc3339_parse("2000-02-29T14:34:56.789+02:00", &ms), 0);
    CHECK_EQ_INT(ms, 951827696789LL);
    CHECK_EQ_INT(dsi__rfc3339_parse("2000-02-29t12:34:56.789123456z", &ms), 0);
    const char *bad[] = {"2001-02-29T00:00:00Z",     "2000-13-01T00:00:00Z",
                         "2000-01-01T24:00:00Z",     "2000-01-01T00:00:00",
                         "2000-01-01 00:00:00Z",     "2000-01-01T00:00:00.Z",
                         "2000-01-01T00:00:00+0200", "2000-01-01T00:00:00Zjunk",
                         "2000-1-01T00:00:00Z",      ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_EQ_INT(dsi__rfc3339_parse(bad[i], &ms), DSI_EINVAL);
    char buf[32];
    dsi__rfc3339_format(951827696789LL, true, buf);
    CHECK_EQ_STR(buf, "2000-02-29T12:34:56.789Z");
    dsi__rfc3339_format(951827696789LL, false, buf);
    CHECK_EQ_STR(buf, "2000-02-29T12:34:56Z");
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *b = calloc(1, 1 << 20);
    size_t n = fread(b, 1, (1 << 20) - 1, f);
    b[n] = 0;
    fclose(f);
    return b;
}

static int count_tmp_files(void) {
    DIR *d = opendir(tmpdir);
    int n = 0;
    for (struct dirent *de; d && (de = readdir(d));)
        n += strstr(de->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    return n;
}

TEST(keys_admin_add_list_revoke) {
    char path[160];
    snprintf(path, sizeof path, "%s/admin.json", tmpdir);
    struct dsi_key_spec s = {.name = "alice",
                             .role = "user",
                             .models = "tiny-chat,other",
                             .rpm = 60,
                             .tpm = 1000,
                             .max_tokens = 128,
                             .expires = "2099-01-31"};
    char key[DSI_KEY_STRLEN + 1], id[32], key2[DSI_KEY_STRLEN + 1], id2[32];
    char *err = NULL;
    CHECK_EQ_INT(dsi_keys_add(path, &s, key, id, &err), 0);
    free(err);
    CHECK_EQ_INT(strlen(key), DSI_KEY_STRLEN);
    CHECK(strncmp(key, "dsi-", 4) == 0);
    CHECK(strncmp(id, "k_", 2) == 0 && strlen(id) == 10);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    char *text = slurp(path);
    CHECK(text && !strstr(text, key) && !strstr(text, key + 4));           /* the key is not stored */
    CHECK(text && strstr(text, "\"expires\":\t\"2099-02-01T00:00:00Z\"")); /* through the 31st */
    free(text);
    struct dsi_key_spec s2 = {.name = "prom", .role = "monitor"};
    CHECK_EQ_INT(dsi_keys_add(path, &s2, key2, id2, NULL), 0);
    CHECK(strcmp(key, key2) != 0 && strcmp(id, id2) != 0);
    CHECK_EQ_INT(count_tmp_files(), 0);

    /* the server accepts what the tool wrote */
    struct dsi_auth_opts o = {.keys_file = path};
    struct dsi_auth *a = NULL;
    CHECK_EQ_INT(dsi_auth_create(&o, &a, NULL), 0);
    char hdr[96];
    snprintf(hdr, sizeof hdr, "Bearer %s", key);
    struct dsi_principal p;
    int ra;
    CHECK_EQ_INT(dsi_auth_check(a, hdr, DSI_PERM_CHAT, "tiny-chat", &p, &ra), DSI_AUTH_OK);
    CHECK_EQ_STR(p.key_id, id);
    CHECK_EQ_INT(p.max_tokens_cap, 128);

    /* list: one line per key, starting with its id, no hashes */
    FILE *f = tmpfile();
    CHECK_EQ_INT(dsi_keys_list(path, NULL, f, NULL), 0);
    rewind(f);
    char line[512], want[128];
    int lines = 0;
    bool saw_alice = false;
    while (fgets(line, sizeof line, f)) {
        lines++;
        CHECK(strncmp(line, "k_", 2) == 0);
        CHECK(strlen(line) < 200); /* no 64-hex digest in it */
        snprintf(want, sizeof want, "%s\talice\tuser\tactive\t", id);
        if (!strncmp(line, want, strlen(want))) saw_alice = true;
    }
    fclose(f);
    CHECK_EQ_INT(lines, 2);
    CHECK(saw_alice);

    /* revoke, then reload: the key is invalid, the other still valid */
    CHECK_EQ_INT(dsi_keys_revoke(path, id, NULL, NULL), 0);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    CHECK_EQ_INT(dsi_auth_reload(a, NULL), 0);
    CHECK_EQ_INT(dsi_auth_check(a, hdr, DSI_PERM_CHAT, "tiny-chat", &p, &ra), DSI_AUTH_INVALID);
    snprintf(hdr, sizeof hdr, "Bearer %s", key2);
    CHECK_EQ_INT(dsi_auth_check(a, hdr, DSI_PERM_METRICS, NULL, &p, &ra), DSI_AUTH_OK);
    dsi_auth_destroy(a);
    f = tmpfile();
    CHECK_EQ_INT(dsi_keys_list(path, NULL, f, NULL), 0);
    rewind(f);
    snprintf(want, sizeof want, "%s\talice\tuser\tdisabled\t", id);
    bool saw_disabled = false;
    while (fgets(line, sizeof line, f))
        saw_disabled |= !strncmp(line, want, strlen(want));
    fclose(f);
    CHECK(saw_disabled);
    err = NULL;
    CHECK_EQ_INT(dsi_keys_revoke(path, "k_nope", NULL, &err), DSI_ENOENT);
    CHECK(err && strstr(err, "k_nope"));
    free(err);
    CHECK_EQ_INT(count_tmp_files(), 0);
    OPENSSL_cleanse(key, sizeof key);
}

TEST(keys_admin_errors) {
    char path[160];
    snprintf(path, sizeof path, "%s/admin_err.json", tmpdir);
    char key[DSI_KEY_STRLEN + 1], id[32];
    char *err = NULL;
    struct dsi_key_spec s = {.name = "x", .role = "root"};
    CHECK_EQ_INT(dsi_keys_add(path, &s, key, id, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "root") && strstr(err, "admin, user, monitor"));
    free(err);
    struct stat st;
    CHECK(stat(path, &st) != 0); /* nothing created */
    s = (struct dsi_key_spec){.name = "x", .role = "user", .expires = "2001-01-01"};
    err = NULL;
    CHECK_EQ_INT(dsi_keys_add(path, &s, key, id, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "past"));
    free(err);
    s = (struct dsi_key_spec){.name = "x", .role = "user", .expires = "tomorrow"};
    CHECK_EQ_INT(dsi_keys_add(path, &s, key, id, NULL), DSI_EINVAL);
    s = (struct dsi_key_spec){.name = "", .role = "user"};
    CHECK_EQ_INT(dsi_keys_add(path, &s, key, id, NULL), DSI_EINVAL);
    s = (struct dsi_key_spec){.name = "x", .role = "user", .rpm = -1};
    CHECK_EQ_INT(dsi_keys_add(path, &s, key, id, NULL), DSI_EINVAL);
    /* custom roles: a role only the config knows */
    s = (struct dsi_key_spec){.name = "x", .role = "reader", .roles_json = "{\"reader\":[\"models\"]}"};
    CHECK_EQ_INT(dsi_keys_add(path, &s, key, id, NULL), 0);
    /* list/revoke without the roles still work (roles are not needed to list) */
    FILE *f = tmpfile();
    CHECK_EQ_INT(dsi_keys_list(path, NULL, f, NULL), 0);
    fclose(f);
    /* a broken file is never overwritten */
    FILE *w = fopen(path, "w");
    fputs("{\"version\":1,\"keys\":[{]}", w);
    fclose(w);
    chmod(path, 0600);
    s = (struct dsi_key_spec){.name = "x", .role = "user"};
    err = NULL;
    CHECK_EQ_INT(dsi_keys_add(path, &s, key, id, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "by hand"));
    free(err);
    char *text = slurp(path);
    CHECK(text && !strcmp(text, "{\"version\":1,\"keys\":[{]}"));
    free(text);
    /* unsafe mode refused for reading */
    chmod(path, 0666);
    err = NULL;
    CHECK_EQ_INT(dsi_keys_list(path, NULL, stdout, &err), DSI_EPERM);
    CHECK(err && strstr(err, "chmod 600"));
    free(err);
    CHECK_EQ_INT(dsi_keys_list("/nonexistent/k.json", NULL, stdout, NULL), DSI_ENOENT);
}

/* Audit lines must be one valid JSON object each, with hostile strings escaped. */
TEST(audit_lines_valid_json) {
    char path[160];
    snprintf(path, sizeof path, "%s/audit.log", tmpdir);
    struct dsi_audit *au = NULL;
    CHECK_EQ_INT(dsi_audit_open(path, &au, NULL), 0);
    if (!au) return;
    struct dsi_audit_record r = {.request_id = "req-1",
                                 .key_id = "k_0123abcd",
                                 .principal = "al\"ice\n\\",
                                 .role = "user",
                                 .remote_addr = "10.0.0.7",
                                 .route = "/v1/chat/completions",
                                 .model = "tiny\x01\xff\xc3(",
                                 .status = 200,
                                 .prompt_tokens = 12,
                                 .completion_tokens = 30,
                                 .latency_ms = 41.25,
                                 .denial = NULL};
    dsi_audit_write(au, &r);
    struct dsi_audit_record d = {
        .route = "/v1/models", .status = 401, .denial = "invalid_credentials", .latency_ms = 1.0 / 0.0};
    dsi_audit_write(au, &d);
    /* rotation: rename, reopen, the next line goes to the new file */
    char rotated[192];
    snprintf(rotated, sizeof rotated, "%s.1", path);
    CHECK(rename(path, rotated) == 0);
    CHECK_EQ_INT(dsi_audit_reopen(au, NULL), 0);
    dsi_audit_write(au, &r);
    dsi_audit_close(au);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0037) == 0); /* group read at most */
    char *old = slurp(rotated), *cur = slurp(path);
    CHECK(old && cur);
    if (!old || !cur) return;
    int n = 0;
    for (char *save = NULL, *ln = strtok_r(old, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save), n++) {
        cJSON *j = cJSON_Parse(ln);
        CHECK(cJSON_IsObject(j));
        const char *fields[] = {
            "time",  "request_id", "key_id",        "principal",         "role",       "remote_addr", "route",
            "model", "status",     "prompt_tokens", "completion_tokens", "latency_ms", "denial"};
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
            CHECK(cJSON_GetObjectItemCaseSensitive(j, fields[i]) != NULL);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "time");
        int64_t ms;
        CHECK(cJSON_IsString(t) && strlen(t->valuestring) == 24 &&
              dsi__rfc3339_parse(t->valuestring, &ms) == 0);
        if (n == 0) {
            CHECK_EQ_STR(cJSON_GetObjectItemCaseSensitive(j, "principal")->valuestring, "al\"ice\n\\");
            CHECK_EQ_STR(cJSON_GetObjectItemCaseSensitive(j, "model")->valuestring,
                         "tiny\x01\xef\xbf\xbd\xef\xbf\xbd(");
            CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "denial")));
            CHECK_EQ_INT(cJSON_GetObjectItemCaseSensitive(j, "completion_tokens")->valueint, 30);
        } else {
            CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "key_id")));
            CHECK_EQ_STR(cJSON_GetObjectItemCaseSensitive(j, "denial")->valuestring, "invalid_credentials");
            CHECK_EQ_INT(cJSON_GetObjectItemCaseSensitive(j, "status")->valueint, 401);
        }
        cJSON_Delete(j);
    }
    CHECK_EQ_INT(n, 2);
    CHECK(strchr(cur, '\n') == cur + strlen(cur) - 1); /* exactly one line after reopen */
    free(old);
    free(cur);
    CHECK(dsi_audit_open("/nonexistent/dir/audit.log", &au, NULL) == DSI_EIO);
}

struct aw {
    struct dsi_audit *au;
    int id;
};
static void *audit_thread(void *arg) {
    struct aw *w = arg;
    char rid[32];
    snprintf(rid, sizeof rid, "t%d", w->id);
    char big[300];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0; /* longer than the per-field cap */
    struct dsi_audit_record r = {.request_id = rid, .route = big, .status = 200};
    for (int i = 0; i < 500; i++)
        dsi_audit_write(w->au, &r);
    return NULL;
}

TEST(audit_concurrent_lines_intact) {
    char path[160];
    snprintf(path, sizeof path, "%s/audit_mt.log", tmpdir);
    struct dsi_audit *au = NULL;
    CHECK_EQ_INT(dsi_audit_open(path, &au, NULL), 0);
    if (!au) return;
    pthread_t t[4];
    struct aw w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct aw){au, i};
        pthread_create(&t[i], NULL, audit_thread, &w[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    dsi_audit_close(au);
    char *text = slurp(path);
    int n = 0, bad = 0;
    for (char *save = NULL, *ln = strtok_r(text, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save), n++) {
        cJSON *j = cJSON_Parse(ln);
        const cJSON *route = cJSON_GetObjectItemCaseSensitive(j, "route");
        if (!cJSON_IsString(route) || strlen(route->valuestring) != 256) bad++;
        cJSON_Delete(j);
    }
    CHECK_EQ_INT(n, 2000);
    CHECK_EQ_INT(bad, 0);
    free(text);
}

int main(void) {
    dsi_log_set_level(DSI_LOG_ERROR);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dsi_test_authf_XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    RUN(keys_parse_valid_full);
    RUN(keys_parse_errors_name_entry_and_field);
    RUN(keys_parse_refuses_text_that_is_not_printable_utf8);
    RUN(keys_admin_add_refuses_name_not_printable_utf8);
    RUN(keys_parse_rfc3339);
    RUN(keys_admin_add_list_revoke);
    RUN(keys_admin_errors);
    RUN(audit_lines_valid_json);
    RUN(audit_concurrent_lines_intact);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}
