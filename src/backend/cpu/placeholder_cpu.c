/* placeholder until the CPU backend lands */
#include "dsinfer/backend.h"
#include "dsinfer/err.h"

int dsi_cpu_backend_create(const struct dsi_model *m, const struct dsi_backend_opts *o,
                           struct dsi_backend **out, char **err) {
    (void)m;
    (void)o;
    *out = NULL;
    return dsi_seterr(err, DSI_EUNSUPPORTED, "the CPU backend is not built yet");
}
