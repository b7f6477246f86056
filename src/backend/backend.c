/*
 * backend.c: dsi_backend_create() picks the backend named in the config.
 *
 * A build without CUDA still accepts "cuda" and answers DSI_ENODEV with a reason,
 * so the same config gives a clear error instead of an unknown-name error.
 *
 * Under mpirun with more than one rank (dsi_parallel_size() > 1, see parallel.h), "cpu"
 * and "cuda" are the tensor-parallel backends: rank 0 gets one and the workers
 * follow.
 */
#include <string.h>

#include "dsinfer/backend.h"
#include "dsinfer/parallel.h"
#include "dsinfer/err.h"

int dsi_backend_create(const char *name, const struct dsi_model *m, const struct dsi_backend_opts *o,
                       struct dsi_backend **out, char **err) {
    *out = NULL;
    if (!name || !strcmp(name, "cpu")) {
        if (dsi_parallel_size() > 1) return dsi_tp_backend_create(DSI_TP_BACKEND_CPU, m, o, out, err);
        return dsi_cpu_backend_create(m, o, out, err);
    }
    if (!strcmp(name, "cuda")) {
        if (dsi_parallel_size() > 1) return dsi_tp_backend_create(DSI_TP_BACKEND_CUDA, m, o, out, err);
#ifdef DSI_HAVE_CUDA
        return dsi_cuda_backend_create(m, o, out, err);
#else
        return dsi_seterr(err, DSI_ENODEV, "this dsinfer was built without CUDA; use --backend cpu");
#endif
    }
    return dsi_seterr(err, DSI_EINVAL, "unknown backend '%s' (expected cpu or cuda)", name);
}

void dsi_backend_destroy(struct dsi_backend *be) {
    if (be && be->ops && be->ops->destroy) be->ops->destroy(be);
}
