/*
 * fuzz_keys.c: libFuzzer target for the keys file parser (strict JSON schema,
 * hex digests, RFC 3339 dates, duplicate detection), with the default roles
 * and with roles unknown (the `keys list` mode), plus the RFC 3339 parser.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/auth/auth_internal.h"
#include "dsinfer/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dsi_log_set_level(DSI_LOG_ERROR);
    struct dsi__roles roles;
    dsi__roles_default(&roles);
    for (int mode = 0; mode < 2; mode++) {
        struct dsi__keyset *ks = NULL;
        char *err = NULL;
        int rc = dsi__keyset_parse((const char *)data, size, mode ? NULL : &roles, &ks, &err);
        if (rc == 0) {
            /* every accepted entry must be internally consistent */
            for (size_t i = 0; i < ks->n_keys; i++)
                if (!ks->keys[i].id[0] || !ks->keys[i].name[0] || !ks->keys[i].role[0]) abort();
            for (size_t i = 0; i < ks->n_clients; i++)
                if (strncmp(ks->clients[i].id, "mtls-", 5) != 0 || !ks->clients[i].cn[0]) abort();
        } else if (!err) {
            abort(); /* every rejection explains itself */
        }
        free(err);
        dsi__keyset_free(ks);
    }
    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = 0;
    int64_t ms;
    if (dsi__rfc3339_parse(s, &ms) == 0) {
        char buf[32];
        dsi__rfc3339_format(ms, true, buf);
    }
    free(s);
    return 0;
}
