/*
 * test_auth.c: access checks of src/auth: every key state, the Authorization
 * header parser, role x permission matrix, model allow-lists, rpm/tpm limits
 * under a burst (with an injected clock, so nothing depends on timing),
 * thread safety, reload (broken file keeps the old state; limits survive),
 * mTLS client mapping and the chargeback metrics.
 */
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/auth/auth_internal.h"
#include "dsinfer/auth.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "test.h"

/* Four fixed keys: their digests go into the keys files below. */
#define K_ALICE                                                                                              \
    "dsi-"                                                                                                   \
    "0000000000000000000000000000000000000000000000000000000000000001"
#define K_BOB                                                                                                \
    "dsi-"                                                                                                   \
    "0000000000000000000000000000000000000000000000000000000000000002"
#define K_MON                                                                                                \
    "dsi-"                                                                                                   \
    "0000000000000000000000000000000000000000000000000000000000000003"
#define K_ROOT                                                                                               \
    "dsi-"                                                                                                   \
    "0000000000000000000000000000000000000000000000000000000000000004"
#define K_OLD                                                                                                \
    "dsi-"                                                                                                   \
    "0000000000000000000000000000000000000000000000000000000000000005"
#define K_OFF                                                                                                \
    "dsi-"                                                                                                   \
    "0000000000000000000000000000000000000000000000000000000000000006"
#define K_NONE                                                                                               \
    "dsi-"                                                                                                   \
    "00000000000000000000000000000000000000000000000000000000000000ff"

struct clock {
    int64_t now_ms;
};
static int64_t clock_now(void *ctx) {
    return ((struct clock *)ctx)->now_ms;
}

static char tmpdir[64];

static void sha_hex(const char *key, char out[65]) {
    unsigned char d[32];
    unsigned int n = 0;
    EVP_Digest(key, strlen(key), d, &n, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void write_file(const char *path, const char *text, mode_t mode) {
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
}

/* A keys file entry for key k with extra JSON fields. */
static void entry(char *buf, size_t cap, const char *id, const char *name, const char *role, const char *key,
                  const char *extra) {
    char h[65];
    sha_hex(key, h);
    snprintf(buf, cap, "{\"id\":\"%s\",\"name\":\"%s\",\"role\":\"%s\",\"sha256\":\"%s\"%s%s}", id, name,
             role, h, extra[0] ? "," : "", extra);
}

/* The standard keys file: alice (user, models tiny-chat only, rpm 3),
 * bob (user, tpm 100), mon (monitor), root (admin), old (expired at t=1000 s),
 * off (disabled); one mTLS client. */
static void std_keys(const char *path, int alice_rpm) {
    char e[6][512], text[4096], extra[128];
    snprintf(extra, sizeof extra, "\"models\":[\"tiny-chat\"],\"rpm\":%d", alice_rpm);
    entry(e[0], 512, "k_alice", "alice", "user", K_ALICE, extra);
    entry(e[1], 512, "k_bob", "bob \\\"the builder\\\"", "user", K_BOB,
          "\"tpm\":100,\"max_tokens\":64,\"cache_group\":\"team-b\"");
    entry(e[2], 512, "k_mon", "prom", "monitor", K_MON,
          "\"expires\":null,\"created\":\"2026-01-01T00:00:00Z\"");
    entry(e[3], 512, "k_root", "ops", "admin", K_ROOT, "\"disabled\":false");
    entry(e[4], 512, "k_old", "old", "user", K_OLD, "\"expires\":\"1970-01-01T00:16:40Z\"");
    entry(e[5], 512, "k_off", "off", "user", K_OFF, "\"disabled\":true");
    snprintf(text, sizeof text,
             "{\"version\":1,\"keys\":[%s,%s,%s,%s,%s,%s],\"clients\":[{\"cn\":\"billing-svc\","
             "\"name\":\"billing\",\"role\":\"user\",\"models\":[\"tiny-chat\"]},{\"cn\":\"gone\","
             "\"name\":\"gone\",\"role\":\"user\",\"disabled\":true}]}",
             e[0], e[1], e[2], e[3], e[4], e[5]);
    write_file(path, text, 0600);
}

static struct dsi_auth *make(const char *keys, const char *roles, struct clock *c) {
    struct dsi_auth_opts o = {.keys_file = keys, .roles_json = roles, .open_health = true};
    struct dsi_auth *a = NULL;
    char *err = NULL;
    int rc = dsi_auth_create(&o, &a, &err);
    if (rc) fprintf(stderr, "  create failed: %s\n", err ? err : "?");
    free(err);
    if (a && c) dsi_auth_set_clock(a, clock_now, c);
    return a;
}

static enum dsi_auth_status chk(struct dsi_auth *a, const char *hdr, uint32_t perm, const char *model) {
    struct dsi_principal p;
    int ra;
    return dsi_auth_check(a, hdr, perm, model, &p, &ra);
}

static char keys_path[128];

TEST(auth_key_states) {
    struct clock c = {2000000}; /* 2000 s after the epoch: k_old expired at 1000 s */
    struct dsi_auth *a = make(keys_path, NULL, &c);
    CHECK(a != NULL);
    if (!a) return;
    struct dsi_principal p;
    int ra = -1;
    CHECK_EQ_INT(dsi_auth_check(a, "Bearer " K_ALICE, DSI_PERM_CHAT, "tiny-chat", &p, &ra), DSI_AUTH_OK);
    CHECK_EQ_STR(p.key_id, "k_alice");
    CHECK_EQ_STR(p.name, "alice");
    CHECK_EQ_STR(p.role, "user");
    CHECK_EQ_INT(ra, 0);
    CHECK_EQ_INT(chk(a, "Bearer " K_NONE, DSI_PERM_CHAT, NULL), DSI_AUTH_INVALID); /* unknown */
    CHECK_EQ_INT(chk(a, "Bearer " K_OFF, DSI_PERM_CHAT, NULL), DSI_AUTH_INVALID);  /* disabled */
    /* a disabled key is named for the audit log; an unknown one is not */
    CHECK_EQ_INT(dsi_auth_check(a, "Bearer " K_OFF, DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_INVALID);
    CHECK_EQ_STR(p.key_id, "k_off");
    CHECK_EQ_INT(dsi_auth_check(a, "Bearer " K_NONE, DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_INVALID);
    CHECK_EQ_STR(p.key_id, "");
    CHECK_EQ_INT(chk(a, "Bearer " K_OLD, DSI_PERM_CHAT, NULL), DSI_AUTH_INVALID); /* expired */
    c.now_ms = 999999; /* one ms before expiry it was still valid */
    CHECK_EQ_INT(chk(a, "Bearer " K_OLD, DSI_PERM_CHAT, NULL), DSI_AUTH_OK);
    c.now_ms = 1000000; /* expiry instant itself is expired */
    CHECK_EQ_INT(chk(a, "Bearer " K_OLD, DSI_PERM_CHAT, NULL), DSI_AUTH_INVALID);
    CHECK_EQ_INT(chk(a, NULL, DSI_PERM_CHAT, NULL), DSI_AUTH_MISSING);
    CHECK_EQ_INT(chk(a, "", DSI_PERM_CHAT, NULL), DSI_AUTH_MISSING);
    CHECK_EQ_INT(chk(a, "  \t ", DSI_PERM_CHAT, NULL), DSI_AUTH_MISSING);
    /* 401 for every one of them, one reason per class */
    CHECK_EQ_INT(dsi_auth_http_status(DSI_AUTH_INVALID), 401);
    CHECK_EQ_INT(dsi_auth_http_status(DSI_AUTH_MISSING), 401);
    CHECK_EQ_INT(dsi_auth_http_status(DSI_AUTH_FORBIDDEN), 403);
    CHECK_EQ_INT(dsi_auth_http_status(DSI_AUTH_MODEL_FORBIDDEN), 403);
    CHECK_EQ_INT(dsi_auth_http_status(DSI_AUTH_RATE_LIMITED), 429);
    CHECK_EQ_STR(dsi_auth_status_reason(DSI_AUTH_INVALID), "invalid_credentials");
    dsi_auth_destroy(a);
}

TEST(auth_header_malformed) {
    struct dsi_auth *a = make(keys_path, NULL, NULL);
    if (!a) return;
    const char *bad[] = {
        "Basic " K_ALICE,
        "Bearer",
        "Bearer ",
        "Bearer" K_ALICE,
        K_ALICE,
        "Bearer sk-0000000000000000000000000000000000000000000000000000000000000001",  /* prefix */
        "Bearer dsi-000000000000000000000000000000000000000000000000000000000000001",  /* short */
        "Bearer " K_ALICE "0",                                                         /* long */
        "Bearer DSI-0000000000000000000000000000000000000000000000000000000000000001", /* prefix case */
        "Bearer dsi-000000000000000000000000000000000000000000000000000000000000000A", /* upper hex */
        "Bearer dsi-000000000000000000000000000000000000000000000000000000000000000g", /* not hex */
        "Bearer " K_ALICE " extra",
        "Bearer \x01" K_ALICE,
        "Bearer " K_ALICE "\xc3\xa9",
        "Bearer\r\n" K_ALICE,
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        enum dsi_auth_status s = chk(a, bad[i], DSI_PERM_CHAT, NULL);
        if (s != DSI_AUTH_INVALID) fprintf(stderr, "  bad[%zu] gave %d\n", i, (int)s);
        CHECK_EQ_INT(s, DSI_AUTH_INVALID);
    }
    /* tolerated spellings */
    CHECK_EQ_INT(chk(a, "bearer " K_ALICE, DSI_PERM_CHAT, NULL), DSI_AUTH_OK);
    CHECK_EQ_INT(chk(a, "BEARER  " K_ALICE, DSI_PERM_CHAT, NULL), DSI_AUTH_OK);
    CHECK_EQ_INT(chk(a, " Bearer\t" K_ALICE " ", DSI_PERM_CHAT, NULL), DSI_AUTH_OK);
    /* overlong header */
    char *big = malloc(5000);
    memset(big, 'a', 4999);
    big[4999] = 0;
    memcpy(big, "Bearer ", 7);
    CHECK_EQ_INT(chk(a, big, DSI_PERM_CHAT, NULL), DSI_AUTH_INVALID);
    free(big);
    /* an embedded NUL (explicit length, as a raw header might carry) */
    char key[DSI_KEY_STRLEN + 1];
    const char withnul[] = "Bearer dsi-00000000000000000000000000000000\0"
                           "00000000000000000000000000000001";
    CHECK_EQ_INT(dsi__auth_parse_bearer(withnul, sizeof withnul - 1, key), DSI_AUTH_INVALID);
    CHECK_EQ_INT(dsi__auth_parse_bearer("Bearer " K_BOB, strlen("Bearer " K_BOB), key), DSI_AUTH_OK);
    CHECK_EQ_STR(key, K_BOB);
    dsi_auth_destroy(a);
}

TEST(auth_role_permission_matrix) {
    struct dsi_auth *a = make(keys_path, NULL, NULL);
    if (!a) return;
    const char *keys[] = {K_ROOT, K_BOB, K_MON};
    const uint32_t perms[] = {DSI_PERM_CHAT,     DSI_PERM_COMPLETIONS, DSI_PERM_MODELS,
                              DSI_PERM_TOKENIZE, DSI_PERM_METRICS,     DSI_PERM_ADMIN};
    /* rows: admin, user, monitor; columns: perms above */
    const int ok[3][6] = {{1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 0, 0}, {0, 0, 0, 0, 1, 0}};
    for (int r = 0; r < 3; r++)
        for (int p = 0; p < 6; p++) {
            char hdr[128];
            snprintf(hdr, sizeof hdr, "Bearer %s", keys[r]);
            enum dsi_auth_status s = chk(a, hdr, perms[p], NULL);
            CHECK_EQ_INT(s, ok[r][p] ? DSI_AUTH_OK : DSI_AUTH_FORBIDDEN);
        }
    /* perm 0 = "any valid key" */
    CHECK_EQ_INT(chk(a, "Bearer " K_MON, 0, NULL), DSI_AUTH_OK);
    dsi_auth_destroy(a);
}

TEST(auth_custom_roles) {
    /* a config that drops "monitor" and defines "reader" */
    const char *roles = "{\"admin\":[\"*\"],\"user\":[\"chat\"],\"reader\":[\"models\",\"metrics\"]}";
    char path[160], e[512], text[1024];
    snprintf(path, sizeof path, "%s/roles_keys.json", tmpdir);
    entry(e, sizeof e, "k_r", "r", "reader", K_ALICE, "");
    snprintf(text, sizeof text, "{\"version\":1,\"keys\":[%s]}", e);
    write_file(path, text, 0600);
    struct dsi_auth *a = make(path, roles, NULL);
    CHECK(a != NULL);
    if (a) {
        CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_MODELS, NULL), DSI_AUTH_OK);
        CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_METRICS, NULL), DSI_AUTH_OK);
        CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, NULL), DSI_AUTH_FORBIDDEN);
        dsi_auth_destroy(a);
    }
    /* the std keys file uses "monitor", unknown under these roles: refused */
    struct dsi_auth_opts o = {.keys_file = keys_path, .roles_json = roles};
    char *err = NULL;
    a = NULL;
    CHECK(dsi_auth_create(&o, &a, &err) == DSI_EINVAL);
    CHECK(a == NULL);
    CHECK(err && strstr(err, "k_mon") && strstr(err, "monitor"));
    free(err);
    /* bad roles texts */
    const char *bad[] = {"[1]",
                         "{\"user\":[\"chat\",\"fly\"]}",
                         "{\"user\":\"chat\"}",
                         "{\"a b\":[]}",
                         "{\"user\":[1]}",
                         "{\"u\":[],\"u\":[]}",
                         "not json"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct dsi__roles r;
        err = NULL;
        CHECK_EQ_INT(dsi__roles_parse(bad[i], &r, &err), DSI_EINVAL);
        CHECK(err != NULL);
        free(err);
    }
    struct dsi__roles r;
    err = NULL;
    CHECK_EQ_INT(dsi__roles_parse("{\"user\":[\"chat\",\"fly\"]}", &r, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "fly"));
    free(err);
    /* "{}" and "" are the defaults (as the config documents) */
    err = NULL;
    CHECK_EQ_INT(dsi__roles_parse("{}", &r, &err), 0);
    CHECK(r.n == 3 && dsi__roles_find(&r, "monitor") &&
          dsi__roles_find(&r, "monitor")->perms == DSI_PERM_METRICS);
    free(err);
    uint32_t bit = 0;
    CHECK_EQ_INT(dsi_perm_parse("tokenize", &bit), 0);
    CHECK_EQ_INT(bit, DSI_PERM_TOKENIZE);
    CHECK_EQ_INT(dsi_perm_parse("root", &bit), DSI_EINVAL);
    CHECK_EQ_STR(dsi_perm_name(DSI_PERM_METRICS), "metrics");
    CHECK(dsi_perm_name(3) == NULL);
}

/* A served model's aliases come joined by '\n' (server names.c, issue 22): a key
 * whose list holds any of them may use the model under every name. */
TEST(auth_model_aliases_share_the_allow_list) {
    struct dsi_auth *a = make(keys_path, NULL, NULL);
    if (!a) return;
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, "deepseek-chat\nbig-chat"), DSI_AUTH_MODEL_FORBIDDEN);
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, "tiny-chat2\ntiny"), DSI_AUTH_MODEL_FORBIDDEN);
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, "deepseek-chat\ntiny-chat"), DSI_AUTH_OK);
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, "tiny-chat\ndeepseek-chat"), DSI_AUTH_OK);
    dsi_auth_destroy(a);
}

TEST(auth_model_allow_list) {
    struct dsi_auth *a = make(keys_path, NULL, NULL);
    if (!a) return;
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, "tiny-chat"), DSI_AUTH_OK);
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, "big-chat"), DSI_AUTH_MODEL_FORBIDDEN);
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, "tiny-cha"), DSI_AUTH_MODEL_FORBIDDEN);
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_MODELS, NULL), DSI_AUTH_OK);   /* no model on route */
    CHECK_EQ_INT(chk(a, "Bearer " K_BOB, DSI_PERM_CHAT, "big-chat"), DSI_AUTH_OK); /* empty list = all */
    /* permission is checked before the model */
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_ADMIN, "big-chat"), DSI_AUTH_FORBIDDEN);
    struct dsi_principal p;
    int ra;
    CHECK_EQ_INT(dsi_auth_check(a, "Bearer " K_BOB, DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_OK);
    CHECK_EQ_INT(p.max_tokens_cap, 64);
    CHECK_EQ_STR(p.cache_group, "team-b");
    CHECK_EQ_INT(dsi_auth_check(a, "Bearer " K_ALICE, DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_OK);
    CHECK_EQ_STR(p.cache_group, ""); /* none: the server uses the key id */
    dsi_auth_destroy(a);
}

TEST(auth_rpm_burst) {
    struct clock c = {5000000};
    struct dsi_auth *a = make(keys_path, NULL, &c);
    if (!a) return;
    struct dsi_principal p;
    int ra = 0;
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(dsi_auth_check(a, "Bearer " K_ALICE, DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_OK);
    CHECK_EQ_INT(dsi_auth_check(a, "Bearer " K_ALICE, DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_RATE_LIMITED);
    CHECK_EQ_INT(ra, 20);              /* 3 per minute: one token every 20 s */
    CHECK_EQ_STR(p.key_id, "k_alice"); /* principal known for the audit line */
    /* denied requests (wrong permission) do not consume budget; other keys unaffected */
    CHECK_EQ_INT(chk(a, "Bearer " K_BOB, DSI_PERM_CHAT, NULL), DSI_AUTH_OK);
    c.now_ms += 19999;
    CHECK_EQ_INT(dsi_auth_check(a, "Bearer " K_ALICE, DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_RATE_LIMITED);
    CHECK_EQ_INT(ra, 1);
    c.now_ms += 1;
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, NULL), DSI_AUTH_OK);
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, NULL), DSI_AUTH_RATE_LIMITED);
    /* a long idle period refills to the full minute budget, not more */
    c.now_ms += 3600 * 1000;
    int okc = 0;
    for (int i = 0; i < 10; i++)
        okc += chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, NULL) == DSI_AUTH_OK;
    CHECK_EQ_INT(okc, 3);
    /* clock stepping back neither refills nor crashes */
    c.now_ms -= 100000;
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, NULL), DSI_AUTH_RATE_LIMITED);
    dsi_auth_destroy(a);
}

TEST(auth_tpm_charge) {
    struct clock c = {5000000};
    struct dsi_auth *a = make(keys_path, NULL, &c);
    if (!a) return;
    struct dsi_principal p;
    int ra = 0;
    CHECK_EQ_INT(dsi_auth_check(a, "Bearer " K_BOB, DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_OK);
    dsi_auth_charge(a, &p, 60, 39); /* 99 of 100: one token left */
    CHECK_EQ_INT(chk(a, "Bearer " K_BOB, DSI_PERM_CHAT, NULL), DSI_AUTH_OK);
    dsi_auth_charge(a, &p, 10, 41); /* now 50 in debt */
    CHECK_EQ_INT(dsi_auth_check(a, "Bearer " K_BOB, DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_RATE_LIMITED);
    CHECK_EQ_INT(ra, 31); /* 51 tokens at 100/min = 30.6 s */
    c.now_ms += 30600;
    CHECK_EQ_INT(chk(a, "Bearer " K_BOB, DSI_PERM_CHAT, NULL), DSI_AUTH_OK);
    /* negative counts are ignored, charging without a key id is a no-op */
    struct dsi_principal anon = {0};
    dsi_auth_charge(a, &anon, 100, 100);
    dsi_auth_charge(a, &p, -5, -5);
    CHECK_EQ_INT(chk(a, "Bearer " K_BOB, DSI_PERM_CHAT, NULL), DSI_AUTH_OK);
    dsi_auth_destroy(a);
}

/* Reservations (issue 27, finding 4): concurrent requests reserve their worst
 * case up front, so together they never take more than the bucket holds; the
 * unused part comes back when each ends. */
TEST(auth_tpm_reserve) {
    struct clock c = {5000000};
    struct dsi_auth *a = make(keys_path, NULL, &c); /* bob: tpm 100 */
    if (!a) return;
    struct dsi_principal p[4];
    int ra = 0;
    for (int i = 0; i < 4; i++) CHECK_EQ_INT(dsi_auth_check(a, "Bearer " K_BOB, DSI_PERM_CHAT, NULL, &p[i], &ra), DSI_AUTH_OK);
    CHECK_EQ_INT(dsi_auth_reserve(a, &p[0], 40, &ra), DSI_AUTH_OK);
    CHECK_EQ_INT(dsi_auth_reserve(a, &p[1], 40, &ra), DSI_AUTH_OK);
    CHECK_EQ_INT(dsi_auth_reserve(a, &p[2], 40, &ra), DSI_AUTH_RATE_LIMITED); /* 20 left */
    CHECK_EQ_INT(ra, 12); /* 20 more at 100/min */
    dsi_auth_charge(a, &p[0], 5, 5); /* used 10 of 40: 30 back, 50 left */
    CHECK_EQ_INT(dsi_auth_reserve(a, &p[2], 40, &ra), DSI_AUTH_OK);
    CHECK_EQ_INT(dsi_auth_reserve(a, &p[3], 40, &ra), DSI_AUTH_RATE_LIMITED);
    dsi_auth_charge(a, &p[1], 0, 0); /* failed before any token: all back */
    dsi_auth_charge(a, &p[2], 0, 0);
    /* a worst case above the capacity takes a full bucket, and only a full one */
    CHECK_EQ_INT(dsi_auth_reserve(a, &p[3], 500, &ra), DSI_AUTH_RATE_LIMITED);
    c.now_ms += 6000;
    CHECK_EQ_INT(dsi_auth_reserve(a, &p[3], 500, &ra), DSI_AUTH_OK);
    CHECK_EQ_INT((int)p[3].tpm_reserved, 100);
    dsi_auth_destroy(a);
}

struct burst {
    struct dsi_auth *a;
    int ok, limited;
};
static void *burst_thread(void *arg) {
    struct burst *b = arg;
    for (int i = 0; i < 250; i++) {
        enum dsi_auth_status s = chk(b->a, "Bearer " K_ALICE, DSI_PERM_CHAT, "tiny-chat");
        b->ok += s == DSI_AUTH_OK;
        b->limited += s == DSI_AUTH_RATE_LIMITED;
    }
    return NULL;
}

TEST(auth_rpm_burst_threads) {
    char path[160];
    snprintf(path, sizeof path, "%s/burst.json", tmpdir);
    std_keys(path, 1000);
    struct clock c = {7000000}; /* frozen: exactly the bucket's 1000 pass */
    struct dsi_auth *a = make(path, NULL, &c);
    if (!a) return;
    pthread_t t[8];
    struct burst b[8];
    for (int i = 0; i < 8; i++) {
        b[i] = (struct burst){a, 0, 0};
        pthread_create(&t[i], NULL, burst_thread, &b[i]);
    }
    int ok = 0, lim = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        ok += b[i].ok;
        lim += b[i].limited;
    }
    CHECK_EQ_INT(ok, 1000);
    CHECK_EQ_INT(lim, 1000);
    dsi_auth_destroy(a);
}

TEST(auth_reload_broken_keeps_old) {
    char path[160];
    snprintf(path, sizeof path, "%s/reload.json", tmpdir);
    std_keys(path, 3);
    struct clock c = {5000000};
    struct dsi_auth *a = make(path, NULL, &c);
    if (!a) return;
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, NULL), DSI_AUTH_OK);
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, NULL), DSI_AUTH_RATE_LIMITED);
    write_file(path, "{\"version\":1,\"keys\":[{\"id\":\"x\"", 0600); /* truncated */
    char *err = NULL;
    CHECK(dsi_auth_reload(a, &err) != 0);
    CHECK(err != NULL);
    free(err);
    CHECK_EQ_INT(chk(a, "Bearer " K_ROOT, DSI_PERM_ADMIN, NULL), DSI_AUTH_OK); /* old state serves */
    write_file(path, "{\"version\":1,\"keys\":[]}", 0644);                     /* valid but world-readable */
    err = NULL;
    CHECK_EQ_INT(dsi_auth_reload(a, &err), DSI_EPERM);
    free(err);
    CHECK_EQ_INT(chk(a, "Bearer " K_ROOT, DSI_PERM_ADMIN, NULL), DSI_AUTH_OK);
    unlink(path);
    err = NULL;
    CHECK_EQ_INT(dsi_auth_reload(a, &err), DSI_ENOENT);
    free(err);
    CHECK_EQ_INT(chk(a, "Bearer " K_ROOT, DSI_PERM_ADMIN, NULL), DSI_AUTH_OK);
    /* a good reload: same ids keep their buckets (alice still limited) */
    std_keys(path, 3);
    err = NULL;
    CHECK_EQ_INT(dsi_auth_reload(a, &err), 0);
    free(err);
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, NULL), DSI_AUTH_RATE_LIMITED);
    /* a changed rate restarts that bucket */
    std_keys(path, 5);
    CHECK_EQ_INT(dsi_auth_reload(a, NULL), 0);
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, NULL), DSI_AUTH_OK);
    /* a reload that removes a key makes it invalid at once */
    char e[512], text[1024];
    entry(e, sizeof e, "k_root", "ops", "admin", K_ROOT, "");
    snprintf(text, sizeof text, "{\"version\":1,\"keys\":[%s]}", e);
    write_file(path, text, 0600);
    CHECK_EQ_INT(dsi_auth_reload(a, NULL), 0);
    CHECK_EQ_INT(chk(a, "Bearer " K_ALICE, DSI_PERM_CHAT, NULL), DSI_AUTH_INVALID);
    /* reload_opts with bad roles keeps everything */
    struct dsi_auth_opts o = {
        .keys_file = path, .roles_json = "{\"admin\":[\"nope\"]}", .open_health = false};
    err = NULL;
    CHECK_EQ_INT(dsi_auth_reload_opts(a, &o, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "nope"));
    free(err);
    CHECK(dsi_auth_health_open(a));
    CHECK_EQ_INT(chk(a, "Bearer " K_ROOT, DSI_PERM_ADMIN, NULL), DSI_AUTH_OK);
    o.roles_json = "{\"admin\":[\"metrics\"]}";
    CHECK_EQ_INT(dsi_auth_reload_opts(a, &o, NULL), 0);
    CHECK(!dsi_auth_health_open(a));
    CHECK_EQ_INT(chk(a, "Bearer " K_ROOT, DSI_PERM_ADMIN, NULL), DSI_AUTH_FORBIDDEN);
    dsi_auth_destroy(a);
}

struct reloader {
    struct dsi_auth *a;
    atomic_int stop;
    int fails;
};
static void *reload_thread(void *arg) {
    struct reloader *r = arg;
    while (!atomic_load(&r->stop))
        if (dsi_auth_reload(r->a, NULL) != 0) r->fails++;
    return NULL;
}
static void *check_thread(void *arg) {
    struct burst *b = arg;
    for (int i = 0; i < 2000; i++)
        b->ok += chk(b->a, "Bearer " K_ROOT, DSI_PERM_CHAT, NULL) == DSI_AUTH_OK;
    return NULL;
}

/* Checks never fail because a reload is swapping the keyset under them. */
TEST(auth_reload_under_load) {
    char path[160];
    snprintf(path, sizeof path, "%s/load.json", tmpdir);
    std_keys(path, 0);
    struct dsi_auth *a = make(path, NULL, NULL);
    if (!a) return;
    struct reloader r = {a, 0, 0};
    pthread_t rt, ct[4];
    struct burst b[4];
    pthread_create(&rt, NULL, reload_thread, &r);
    for (int i = 0; i < 4; i++) {
        b[i] = (struct burst){a, 0, 0};
        pthread_create(&ct[i], NULL, check_thread, &b[i]);
    }
    int ok = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(ct[i], NULL);
        ok += b[i].ok;
    }
    atomic_store(&r.stop, 1);
    pthread_join(rt, NULL);
    CHECK_EQ_INT(ok, 8000);
    CHECK_EQ_INT(r.fails, 0);
    dsi_auth_destroy(a);
}

TEST(auth_no_keys_file) {
    struct dsi_auth *a = make(NULL, NULL, NULL);
    CHECK(a != NULL);
    if (!a) return;
    CHECK_EQ_INT(chk(a, "Bearer " K_ROOT, DSI_PERM_CHAT, NULL), DSI_AUTH_INVALID);
    CHECK_EQ_INT(chk(a, NULL, DSI_PERM_CHAT, NULL), DSI_AUTH_MISSING);
    dsi_auth_destroy(a);
    struct dsi_auth_opts o = {.keys_file = "/nonexistent/keys.json"};
    char *err = NULL;
    a = NULL;
    CHECK_EQ_INT(dsi_auth_create(&o, &a, &err), DSI_ENOENT);
    CHECK(a == NULL && err && strstr(err, "/nonexistent/keys.json"));
    free(err);
}

/* Many keys: the matching one is found wherever it sits, through the
 * compare-everything path (timing is not asserted, by design). */
TEST(auth_constant_time_lookup) {
    char path[160];
    snprintf(path, sizeof path, "%s/many.json", tmpdir);
    size_t cap = 300 * 256;
    char *text = malloc(cap);
    size_t n = (size_t)snprintf(text, cap, "{\"version\":1,\"keys\":[");
    for (int i = 0; i < 200; i++) {
        char key[DSI_KEY_STRLEN + 1], e[512], id[16];
        snprintf(key, sizeof key, "dsi-%064x", i + 0x100);
        snprintf(id, sizeof id, "k_%d", i);
        entry(e, sizeof e, id, "n", "user", key, "");
        n += (size_t)snprintf(text + n, cap - n, "%s%s", i ? "," : "", e);
    }
    snprintf(text + n, cap - n, "]}");
    write_file(path, text, 0600);
    free(text);
    struct dsi_auth *a = make(path, NULL, NULL);
    if (!a) return;
    int idx[] = {0, 1, 99, 198, 199};
    for (size_t i = 0; i < 5; i++) {
        char hdr[96], want[16];
        struct dsi_principal p;
        int ra;
        snprintf(hdr, sizeof hdr, "Bearer dsi-%064x", idx[i] + 0x100);
        snprintf(want, sizeof want, "k_%d", idx[i]);
        CHECK_EQ_INT(dsi_auth_check(a, hdr, DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_OK);
        CHECK_EQ_STR(p.key_id, want);
    }
    CHECK_EQ_INT(chk(a,
                     "Bearer dsi-"
                     "00000000000000000000000000000000000000000000000000000000000000ff",
                     DSI_PERM_CHAT, NULL),
                 DSI_AUTH_INVALID);
    dsi_auth_destroy(a);
}

TEST(auth_client_cert) {
    struct dsi_auth *a = make(keys_path, NULL, NULL);
    if (!a) return;
    struct dsi_principal p;
    int ra;
    CHECK_EQ_INT(dsi_auth_check_client_cert(a, "billing-svc", DSI_PERM_CHAT, "tiny-chat", &p, &ra),
                 DSI_AUTH_OK);
    CHECK_EQ_STR(p.name, "billing");
    CHECK_EQ_STR(p.role, "user");
    CHECK(strncmp(p.key_id, "mtls-", 5) == 0 && strlen(p.key_id) == 21);
    CHECK_EQ_INT(dsi_auth_check_client_cert(a, "billing-svc", DSI_PERM_CHAT, "big", &p, &ra),
                 DSI_AUTH_MODEL_FORBIDDEN);
    CHECK_EQ_INT(dsi_auth_check_client_cert(a, "billing-svc", DSI_PERM_METRICS, NULL, &p, &ra),
                 DSI_AUTH_FORBIDDEN);
    CHECK_EQ_INT(dsi_auth_check_client_cert(a, "billing", DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_INVALID);
    CHECK_EQ_INT(dsi_auth_check_client_cert(a, "gone", DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_INVALID);
    CHECK_EQ_INT(dsi_auth_check_client_cert(a, NULL, DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_MISSING);
    CHECK_EQ_INT(dsi_auth_check_client_cert(a, "", DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_MISSING);
    dsi_auth_destroy(a);
}

TEST(auth_metrics_chargeback) {
    struct dsi_auth *a = make(keys_path, NULL, NULL);
    if (!a) return;
    struct dsi_principal p;
    int ra;
    CHECK_EQ_INT(dsi_auth_check(a, "Bearer " K_BOB, DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_OK);
    dsi_auth_charge(a, &p, 12, 30);
    dsi_auth_charge(a, &p, 1, 2);
    CHECK_EQ_INT(dsi_auth_check(a, "Bearer " K_ROOT, DSI_PERM_CHAT, NULL, &p, &ra), DSI_AUTH_OK);
    dsi_auth_charge(a, &p, 5, 0);
    chk(a, "Bearer " K_NONE, DSI_PERM_CHAT, NULL);
    chk(a, NULL, DSI_PERM_CHAT, NULL);
    char *t = NULL;
    CHECK_EQ_INT(dsi_auth_metrics(a, &t), 0);
    CHECK(t != NULL);
    if (t) {
        CHECK(strstr(t, "# TYPE dsinfer_principal_tokens_total counter\n"));
        /* the quote in bob's name is escaped */
        CHECK(strstr(
            t, "dsinfer_principal_tokens_total{principal=\"bob \\\"the builder\\\"\",kind=\"prompt\"} 13\n"));
        CHECK(strstr(t, "dsinfer_principal_tokens_total{principal=\"bob \\\"the "
                        "builder\\\"\",kind=\"completion\"} 32\n"));
        CHECK(strstr(t, "dsinfer_principal_tokens_total{principal=\"ops\",kind=\"prompt\"} 5\n"));
        CHECK(strstr(t, "dsinfer_principal_requests_total{principal=\"ops\"} 1\n"));
        CHECK(strstr(t, "dsinfer_auth_denials_total{reason=\"invalid_credentials\"} 1\n"));
        CHECK(strstr(t, "dsinfer_auth_denials_total{reason=\"missing_credentials\"} 1\n"));
        CHECK(!strstr(t, "dsi-"));
    }
    free(t);
    dsi_auth_destroy(a);
}

int main(void) {
    dsi_log_set_level(DSI_LOG_ERROR);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dsi_test_auth_XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    snprintf(keys_path, sizeof keys_path, "%s/keys.json", tmpdir);
    std_keys(keys_path, 3);
    RUN(auth_key_states);
    RUN(auth_header_malformed);
    RUN(auth_role_permission_matrix);
    RUN(auth_custom_roles);
    RUN(auth_model_allow_list);
    RUN(auth_model_aliases_share_the_allow_list);
    RUN(auth_rpm_burst);
    RUN(auth_tpm_charge);
    RUN(auth_tpm_reserve);
    RUN(auth_rpm_burst_threads);
    RUN(auth_reload_broken_keeps_old);
    RUN(auth_reload_under_load);
    RUN(auth_no_keys_file);
    RUN(auth_constant_time_lookup);
    RUN(auth_client_cert);
    RUN(auth_metrics_chargeback);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}
