/*
 * model.c: dsi_model_open(), the one way a backend gets weights.
 *
 * Order: verify SHA256SUMS (fail closed; skip_verify is a logged development
 * opt-out), then parse config.json, then map the safetensors. Verification
 * reads the files by path before they are mapped, so the model folder must be
 * read-only to the service user (DESIGN.md: weights live in a read-only
 * directory); otherwise a file swapped between the two steps would go unseen.
 */
#include "model_internal.h"

#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "dsinfer/model.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int dsi_model_open(struct dsi_model *m, const char *dir, const struct dsi_model_open_opts *o, char **err) {
    if (!m || !dir) return DSI_EINVAL;
    memset(m, 0, sizeof *m);
    struct dsi_model_open_opts def = {0};
    if (!o) o = &def;
    int rc = 0;
    if (!(m->dir = strdup(dir))) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    double t0 = now_s();
    if (o->skip_verify) {
        dsi_log(DSI_LOG_WARN, "model",
                "%s: SHA-256 verification SKIPPED (skip_verify; development only, never in "
                "production)",
                dir);
    } else {
        struct dsi_manifest_opts mo = {.n_threads = o->n_threads,
                                       .expect_manifest_sha256 = o->expect_manifest_sha256};
        size_t bytes = 0;
        if ((rc = dsi_manifest_verify(dir, &mo, &bytes, err))) goto fail;
        m->verify_s = now_s() - t0;
        dsi_log(DSI_LOG_INFO, "model", "%s: verified %.2f GB in %.2f s (%.2f GB/s)", dir, (double)bytes / 1e9,
                m->verify_s, m->verify_s > 0 ? (double)bytes / 1e9 / m->verify_s : 0.0);
    }
    double t1 = now_s();
    if ((rc = dsi_model_config_load(dir, &m->cfg, err))) goto fail;
    if ((rc = dsi_st_open_dir(&m->st, dir, err))) goto fail;
    m->open_s = now_s() - t1;
    return 0;
fail:
    dsi_model_close(m);
    return rc;
}

void dsi_model_close(struct dsi_model *m) {
    if (!m) return;
    dsi_st_close(&m->st);
    free(m->dir);
    memset(m, 0, sizeof *m);
}
