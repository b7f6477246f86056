/*
 * fault.c: the test-only fault-injection backend (include/dsinfer/fault.h).
 * Built only with DSI_TEST_HOOKS (src/backend/CMakeLists.txt).
 *
 * The step counter and the dead flag are touched by the scheduler thread only
 * (one step at a time), but dead may be asked from elsewhere, so both are
 * atomics; the wrapper holds no lock and allocates nothing per step.
 */
#include "dsinfer/fault.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/log.h"

struct fault_be {
    struct dsi_backend base;     /* what the engine sees; base.impl points here */
    struct dsi_backend_ops ops;  /* inner's ops with ours in between */
    struct dsi_backend *inner;   /* owned */
    struct dsi_fault_spec spec;
    _Atomic long steps;          /* steps begun */
    _Atomic bool dead;
};

int dsi_fault_parse(const char *s, struct dsi_fault_spec *out, char **err) {
    memset(out, 0, sizeof *out);
    const char *p = s ? s : "";
    for (;;) {
        char *end = NULL;
        errno = 0;
        long n = strtol(p, &end, 10);
        if (errno || end == p || n < 1 || out->n_steps == DSI_FAULT_MAX_STEPS) break;
        out->steps[out->n_steps++] = n;
        p = end;
        if (*p != ',') break;
        p++;
    }
    if (out->n_steps > 0 && (!*p || !strcmp(p, ":oom"))) out->kind = DSI_FAULT_OOM;
    else if (out->n_steps > 0 && !strcmp(p, ":dead")) out->kind = DSI_FAULT_DEAD;
    else
        return dsi_seterr(err, DSI_EINVAL, "fault: '%s' is not N[,N...][:oom|:dead] with each N >= 1 (at most %d)",
                          s ? s : "", DSI_FAULT_MAX_STEPS);
    return 0;
}

/* 0 when the step may run; else the injected failure (with *err set). */
static int inject(struct fault_be *f, char **err) {
    long n = atomic_fetch_add(&f->steps, 1) + 1;
    if (atomic_load(&f->dead)) return dsi_seterr(err, DSI_ECUDA, "fault hook: backend dead (step %ld)", n);
    bool hit = false;
    for (int i = 0; i < f->spec.n_steps && !hit; i++) hit = f->spec.steps[i] == n;
    if (!hit) return 0;
    if (f->spec.kind == DSI_FAULT_DEAD) {
        atomic_store(&f->dead, true);
        return dsi_seterr(err, DSI_ECUDA, "fault hook: step %ld fails as a sticky CUDA error would", n);
    }
    return dsi_seterr(err, DSI_ENOMEM, "fault hook: step %ld fails as a GPU out of memory would", n);
}

static int fault_forward(struct dsi_backend *be, const struct dsi_batch *b, float *logits, char **err) {
    struct fault_be *f = be->impl;
    int rc = inject(f, err);
    return rc ? rc : f->inner->ops->forward(f->inner, b, logits, err);
}

static int fault_forward_sample(struct dsi_backend *be, const struct dsi_batch *b, const struct dsi_sample_params *p,
                                int32_t *ids, char **err) {
    struct fault_be *f = be->impl;
    int rc = inject(f, err);
    return rc ? rc : f->inner->ops->forward_sample(f->inner, b, p, ids, err);
}

static bool fault_dead(struct dsi_backend *be) {
    struct fault_be *f = be->impl;
    if (atomic_load(&f->dead)) return true;
    return f->inner->ops->dead && f->inner->ops->dead(f->inner);
}

static int fault_quant_report(struct dsi_backend *be, char **report, char **err) {
    struct fault_be *f = be->impl;
    return f->inner->ops->quant_report(f->inner, report, err);
}

static void fault_destroy(struct dsi_backend *be) {
    struct fault_be *f = be->impl;
    dsi_backend_destroy(f->inner);
    free(f);
}

int dsi_fault_backend_wrap(struct dsi_backend *inner, const struct dsi_fault_spec *spec, struct dsi_backend **out,
                           char **err) {
    *out = NULL;
    struct fault_be *f = calloc(1, sizeof *f);
    if (!f) {
        dsi_backend_destroy(inner);
        return dsi_seterr(err, DSI_ENOMEM, "fault: out of memory");
    }
    f->inner = inner;
    f->spec = *spec;
    f->base = *inner;
    f->ops = (struct dsi_backend_ops){
        .name = inner->ops->name, /* the name operators and logs see stays the real one */
        .forward = fault_forward,
        .forward_sample = inner->ops->forward_sample ? fault_forward_sample : NULL,
        .dead = fault_dead,
        .quant_report = inner->ops->quant_report ? fault_quant_report : NULL,
        .destroy = fault_destroy,
    };
    f->base.ops = &f->ops;
    f->base.impl = f;
    dsi_log(DSI_LOG_WARN, "fault", "test hook: %d listed steps of the %s backend fail (%s), the first %ld",
            spec->n_steps, inner->ops->name,
            spec->kind == DSI_FAULT_DEAD ? "dead: a sticky CUDA error" : "out of memory, recoverable", spec->steps[0]);
    *out = &f->base;
    return 0;
}
