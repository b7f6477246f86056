/*
 * fuzz_config.c: the config loader on arbitrary bytes. Every input must either
 * load or fail with DSI_EINVAL and a message, never crash or leak; a loaded
 * config must print and load back to the same values.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/config.h"
#include "dsinfer/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct dsi_config c;
    if (dsi_config_init(&c) < 0) return 0;
    char *err = NULL;
    int rc = dsi_config_load_json(&c, (const char *)data, size, &err);
    if (rc < 0 && (!err || rc != DSI_EINVAL)) abort(); /* every rejection says why */
    free(err);
    err = NULL;
    if (rc == 0) {
        (void)dsi_config_validate(&c, &err);
        free(err);
        err = NULL;
        char *out = NULL;
        size_t len = 0;
        FILE *m = open_memstream(&out, &len);
        if (m) {
            dsi_config_print_json(m, &c);
            fclose(m);
            struct dsi_config back;
            if (dsi_config_init(&back) == 0) {
                if (dsi_config_load_json(&back, out, len, &err) != 0) abort();
                if (dsi_config_reload_changes(&c, &back, NULL) != 0) abort();
                free(err);
                dsi_config_free(&back);
            }
            free(out);
        }
    }
    dsi_config_free(&c);
    return 0;
}
