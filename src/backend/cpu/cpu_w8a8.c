/*
 * cpu_w8a8.c: W8A8 matmuls on the CPU, the reference twin of the CUDA
 * backend's int8 x int8 path (issue 19): activations quantized per token
 * (dynamic, symmetric: scale = max|x| / 127, q = clamp(round_half_away(x /
 * scale), -127, 127), the rule dsi_quantize_int8 applies to weight rows),
 * weights per output channel, products accumulated in int32 (exact: any
 * order of the sums gives the same integer, so a row's result never depends
 * on the batch it runs in), and y = (acc * x_scale) * w_scale (+ bias).
 *
 * Invariant: |acc| <= 127 * 127 * k, which fits int32 for k < 133,000 (the
 * 7B shape's widest input is 18,944); callers check k.
 */
#include <math.h>
#include <stdint.h>

#include "cpu_ops.h"

void dsi_quantize_act_int8(const float *x, int n, int8_t *q, float *scale) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax) amax = a; /* NaN never wins */
    }
    float s = amax / 127.0f;
    *scale = s;
    for (int i = 0; i < n; i++) {
        float v = s > 0.0f ? roundf(x[i] / s) : 0.0f;
        if (isnan(v)) v = 0.0f;
        if (v > 127.0f) v = 127.0f; /* inf activations make amax inf */
        if (v < -127.0f) v = -127.0f;
        q[i] = (int8_t)v;
    }
}

int32_t dsi_dot_i8i8(const int8_t *a, const int8_t *b, int n) {
    int32_t s = 0; /* in order; the compiler vectorizes it (integer sums reassociate exactly) */
    for (int i = 0; i < n; i++)
        s += (int32_t)a[i] * (int32_t)b[i];
    return s;
}

float dsi_w8a8_out(int32_t acc, float x_scale, float w_scale, const float *bias, int r) {
    volatile float v = (float)acc * x_scale; /* volatile: no FMA contraction, as the GPU's __fmul_rn */
    volatile float y = v * w_scale;
    return bias ? y + bias[r] : y;
}

void dsi_matmul_w8a8(const struct dsi_qweight *w, const int8_t *xq, const float *xs, int n_tokens,
                     const float *bias, float *y, int ldy, int r0, int r1) {
    const int8_t *q = w->data;
    for (int r = r0; r < r1; r++) {
        const int8_t *row = q + (size_t)r * (size_t)w->cols;
        for (int t = 0; t < n_tokens; t++) {
            int32_t acc = dsi_dot_i8i8(row, xq + (size_t)t * (size_t)w->cols, w->cols);
            y[(size_t)t * (size_t)ldy + (size_t)r] = dsi_w8a8_out(acc, xs[t], w->scales[r], bias, r);
        }
    }
}
