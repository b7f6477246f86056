/*
 * cuda_util.c: the checked-call helpers behind DSI_CUDA_CHECK / DSI_CUBLAS_CHECK,
 * and the RoPE frequency table of each rope variant (host side; the kernel only
 * multiplies positions by these frequencies, so one kernel serves all variants).
 */
#include <math.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "dsinfer/rope.h"
#include "dsinfer/err.h"
#include "cuda_backend.h"
#include "dsinfer/log.h"

int dsi__cuda_check(int code, const char *stmt, const char *func, const char *file, int line) {
    if (code == (int)cudaSuccess) return 0;
    dsi_log(DSI_LOG_ERROR, "cuda", "%s failed in %s (%s:%d): %s", stmt, func, file, line,
            cudaGetErrorString((cudaError_t)code));
    return DSI_ECUDA;
}

int dsi__cublas_check(int status, const char *stmt, const char *func, const char *file, int line) {
    if (status == (int)CUBLAS_STATUS_SUCCESS) return 0;
    dsi_log(DSI_LOG_ERROR, "cuda", "%s failed in %s (%s:%d): cuBLAS status %d (%s)", stmt, func, file, line,
            status, cublasGetStatusString((cublasStatus_t)status));
    return DSI_ECUDA;
}

/* The model module's table (dsinfer/rope.h; fp32 arithmetic, as torch forms
 * it): both backends then form the same angle (float)pos * inv_freq[i], which
 * matters at long context where one ulp of inv_freq moves the angle by ~1e-3 rad. YaRN and
 * dynamic NTK (attention factor or length-dependent base) are not wired here. */
int dsi_cuda_rope_inv_freq(const struct dsi_model_config *cfg, float *inv_freq, char **err) {
    int hd = cfg->head_dim;
    if (hd <= 0 || hd % 2)
        return dsi_seterr(err, DSI_EINVAL, "rope: head_dim %d must be even and positive", hd);
    if (cfg->rope.type != DSI_ROPE_DEFAULT && cfg->rope.type != DSI_ROPE_LINEAR &&
        cfg->rope.type != DSI_ROPE_LLAMA3)
        return dsi_seterr(err, DSI_EUNSUPPORTED, "rope: variant %d is not supported by the CUDA backend",
                          (int)cfg->rope.type);
    float attn = 1.f;
    int max_pos = cfg->max_position_embeddings > 0 ? cfg->max_position_embeddings : 4096;
    if (dsi_rope_inv_freq(&cfg->rope, cfg->rope_theta, hd, max_pos, 0, inv_freq, &attn) || attn != 1.f)
        return dsi_seterr(err, DSI_EINVAL, "rope: bad scaling parameters for the %d variant",
                          (int)cfg->rope.type);
    return 0;
}
