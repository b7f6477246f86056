/*
 * cli_config.c: what the one-sequence CLI commands (generate, logits,
 * quant-report, perplexity) and the model-file commands (verify, manifest,
 * encrypt, decrypt) share: the config a CLI run starts from, and the --threads
 * flag. Policy beyond that (verification, backend, stop ids) is the runtime's.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dsinfer/config.h"
#include "dsinfer/err.h"

static int set_str(char **field, const char *v) {
    char *d = strdup(v);
    if (!d) return DSI_ENOMEM;
    free(*field);
    *field = d;
    return 0;
}

int dsi__cli_config_init(struct dsi_config *c, const struct dsi_cli_model *m, char **err) {
    if (dsi_config_init(c)) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    /* backend: not checked here; dsi_backend_create names an unknown one */
    int rc = set_str(&c->model_dir, m->dir);
    if (!rc && m->key_file) rc = set_str(&c->model_key_file, m->key_file); /* encrypted at rest */
    if (!rc) rc = set_str(&c->backend, m->backend ? m->backend : "cpu");
    if (!rc) rc = set_str(&c->dtype, m->dtype ? m->dtype : "bf16");
    if (!rc && m->int8_mode) rc = set_str(&c->int8_mode, m->int8_mode);
    if (!rc && m->kv_dtype) rc = set_str(&c->kv_dtype, m->kv_dtype);
    if (rc) {
        dsi_config_free(c);
        return dsi_seterr(err, rc, "out of memory");
    }
    c->int8_group_size = m->group_size;
    c->threads = m->n_threads;
    c->skip_verify = m->no_verify;
    c->kv_block_size = 16;
    c->max_running = 1;
    return 0;
}

int dsi__cli_parse_threads(const char *cmd, const char *v, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < 1 || x > 256) {
        fprintf(stderr, "dsinfer %s: --threads wants 1..256, got '%s'\n", cmd, v);
        return -1;
    }
    *out = (int)x;
    return 0;
}
