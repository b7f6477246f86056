/*
 * fuzz_authz.c: libFuzzer target for the Authorization header parser and the
 * whole dsi_auth_check path (plus the roles parser and the mTLS CN lookup),
 * against a keys file written once at start-up. The first input byte picks
 * the mode; the rest is the header / roles text / CN.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../src/auth/auth_internal.h"
#include "dsinfer/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One auth object for the whole run: creating it per input would fuzz file I/O. */
static struct dsi_auth *auth_once(void) {
    static struct dsi_auth *a;
    if (a) return a;
    char path[] = "/tmp/fuzz_authz_keys_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) abort();
    /* sha256("dsi-" + 63 zeros + "1") */
    const char *text =
        "{\"version\":1,\"keys\":[{\"id\":\"k_1\",\"name\":\"a\",\"role\":\"user\",\"sha256\":"
        "\"7ca1e9e401fe3f3da96b606a563cf6af14a62f41518a3e6a3dd32cbf95e3690c\",\"models\":[\"m\"],"
        "\"rpm\":5,\"tpm\":50}],\"clients\":[{\"cn\":\"svc\",\"name\":\"s\",\"role\":\"monitor\"}]}";
    if (write(fd, text, strlen(text)) != (ssize_t)strlen(text)) abort();
    close(fd);
    struct dsi_auth_opts o = {.keys_file = path, .open_health = true};
    if (dsi_auth_create(&o, &a, NULL) != 0) abort();
    unlink(path);
    return a;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dsi_log_set_level(DSI_LOG_ERROR);
    if (size < 1) return 0;
    struct dsi_auth *a = auth_once();
    uint8_t mode = data[0] % 4;
    const char *body = (const char *)data + 1;
    size_t n = size - 1;
    char *s = malloc(n + 1);
    if (!s) return 0;
    memcpy(s, body, n);
    s[n] = 0;
    char key[DSI_KEY_STRLEN + 1];
    struct dsi_principal p;
    int ra = 0;
    switch (mode) {
    case 0: { /* raw header with explicit length (may hold NULs) */
        enum dsi_auth_status st = dsi__auth_parse_bearer(body, n, key);
        if (st == DSI_AUTH_OK && (strlen(key) != DSI_KEY_STRLEN || memcmp(key, "dsi-", 4) != 0)) abort();
        break;
    }
    case 1: { /* full check, as the server calls it */
        enum dsi_auth_status st = dsi_auth_check(a, s, DSI_PERM_CHAT, "m", &p, &ra);
        if (st == DSI_AUTH_RATE_LIMITED && ra < 1) abort();
        if (st == DSI_AUTH_OK) dsi_auth_charge(a, &p, 3, 4);
        break;
    }
    case 2: { /* roles text */
        struct dsi__roles r;
        char *err = NULL;
        if (dsi__roles_parse(s, &r, &err) != 0 && !err) abort();
        free(err);
        break;
    }
    case 3:
        dsi_auth_check_client_cert(a, s, DSI_PERM_METRICS, NULL, &p, &ra);
        break;
    }
    free(s);
    return 0;
}
