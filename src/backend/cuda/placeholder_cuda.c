/* placeholder until the CUDA backend lands */
#include "dsinfer/backend.h"
#include "dsinfer/err.h"

int dsi_cuda_backend_create(const struct dsi_model *m, const struct dsi_backend_opts *o,
                            struct dsi_backend **out, char **err) {
    (void)m;
    (void)o;
    *out = NULL;
    return dsi_seterr(err, DSI_EUNSUPPORTED, "the CUDA backend is not built yet");
}
