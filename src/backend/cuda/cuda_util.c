/*
 * cuda_util.c: the checked-call helpers behind DSI_CUDA_CHECK / DSI_CUBLAS_CHECK
 * (with, in test builds, the kernel-launch fault hook of cuda_backend.h),
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

#ifdef DSI_TEST_HOOKS
#include <stdatomic.h>
#include <string.h>
/* Test builds only: the launch fault of cuda_backend.h. The launch checks have
 * no backend at hand, so this is process state: the one mutable global of the
 * backend, and it does not exist in a release build. */
static _Atomic long fault_left;   /* launch checks until the injected failure; 0: off */
static _Atomic int fault_sticky;  /* the failure poisons: every later check fails */
static _Atomic int fault_poisoned;

void dsi_cuda_fault_arm_launch(long n, bool sticky) {
    atomic_store(&fault_poisoned, 0);
    atomic_store(&fault_sticky, sticky ? 1 : 0);
    atomic_store(&fault_left, n > 0 ? n : 0);
}

/* The code the checked call gets instead of its own (test hook). */
static int fault_code(int code, const char *stmt) {
    if (atomic_load(&fault_poisoned)) return code ? code : (int)cudaErrorLaunchFailure;
    if (code || strcmp(stmt, "cudaGetLastError()") != 0) return code;
    long left = atomic_load(&fault_left);
    while (left > 0 && !atomic_compare_exchange_weak(&fault_left, &left, left - 1))
        ;
    if (left != 1) return code;
    if (!atomic_load(&fault_sticky)) return (int)cudaErrorMemoryAllocation;
    atomic_store(&fault_poisoned, 1);
    return (int)cudaErrorLaunchFailure;
}
#endif

int dsi__cuda_check(int code, const char *stmt, const char *func, const char *file, int line) {
#ifdef DSI_TEST_HOOKS
    code = fault_code(code, stmt);
#endif
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
