/*
 * rope.c: rotary position embedding frequency tables as HF transformers
 * computes them (modeling_rope_utils: default, linear, dynamic NTK, llama3,
 * YaRN). Model math, not backend math: every backend rotates with these
 * tables (the CPU backend in cpu_rope.c, the CUDA backend's rope kernel from
 * the table dsi_cuda_rope_inv_freq uploads), so both form the same angle.
 *
 * Tables are computed in fp32 arithmetic like torch does, so the angle
 * (float)pos * inv_freq[i] a backend forms is the same product HF forms.
 */
#include <math.h>

#include "dsinfer/err.h"
#include "dsinfer/rope.h"

#define DSI_PI 3.14159265358979323846

void dsi_rope_inv_freq_default(float theta, int rot_dim, float *inv_freq) {
    for (int i = 0; i < rot_dim / 2; i++) {
        float e = (float)(2 * i) / (float)rot_dim;
        inv_freq[i] = 1.0f / powf(theta, e);
    }
}

void dsi_rope_inv_freq_llama3(float theta, int rot_dim, float factor, float low_freq_factor,
                              float high_freq_factor, int original_max_pos, float *inv_freq) {
    dsi_rope_inv_freq_default(theta, rot_dim, inv_freq);
    float old_ctx = (float)original_max_pos;
    float low_wavelen = old_ctx / low_freq_factor, high_wavelen = old_ctx / high_freq_factor;
    for (int i = 0; i < rot_dim / 2; i++) {
        float f = inv_freq[i];
        float wavelen = (float)(2.0 * DSI_PI) / f;
        float scaled = wavelen > low_wavelen ? f / factor : f;
        if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
            /* medium band: interpolate between scaled and unscaled frequencies */
            float smooth = (old_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
            scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
        }
        inv_freq[i] = scaled;
    }
}

float dsi_yarn_get_mscale(float factor, float mscale) {
    if (factor <= 1.0f) return 1.0f;
    return 0.1f * mscale * logf(factor) + 1.0f;
}

static double yarn_correction_dim(double n_rot, int dim, double base, double max_pos) {
    return ((double)dim * log(max_pos / (n_rot * 2.0 * DSI_PI))) / (2.0 * log(base));
}

void dsi_rope_inv_freq_yarn(float theta, int rot_dim, float factor, int original_max_pos, float beta_fast,
                            float beta_slow, float mscale, float mscale_all_dim, float *inv_freq,
                            float *attn_factor) {
    if (beta_fast <= 0.0f) beta_fast = 32.0f;
    if (beta_slow <= 0.0f) beta_slow = 1.0f;
    if (mscale != 0.0f && mscale_all_dim != 0.0f)
        *attn_factor = dsi_yarn_get_mscale(factor, mscale) / dsi_yarn_get_mscale(factor, mscale_all_dim);
    else
        *attn_factor = dsi_yarn_get_mscale(factor, 1.0f);
    /* HF truncates the correction range to whole dims (truncate defaults to true). */
    double low = floor(yarn_correction_dim(beta_fast, rot_dim, theta, original_max_pos));
    double high = ceil(yarn_correction_dim(beta_slow, rot_dim, theta, original_max_pos));
    if (low < 0) low = 0;
    if (high > rot_dim - 1) high = rot_dim - 1;
    float lo = (float)low, hi = (float)high;
    if (lo == hi) hi += 0.001f; /* avoid a zero-width ramp, as HF does */
    for (int i = 0; i < rot_dim / 2; i++) {
        float pos_freq = powf(theta, (float)(2 * i) / (float)rot_dim);
        float extra = 1.0f / pos_freq, inter = 1.0f / (factor * pos_freq);
        float ramp = ((float)i - lo) / (hi - lo);
        if (ramp < 0.0f) ramp = 0.0f;
        if (ramp > 1.0f) ramp = 1.0f;
        float extra_factor = 1.0f - ramp;
        inv_freq[i] = inter * (1.0f - extra_factor) + extra * extra_factor;
    }
}

int dsi_rope_inv_freq(const struct dsi_rope_scaling *sc, float theta, int rot_dim, int max_pos, int seq_len,
                      float *inv_freq, float *attn_factor) {
    if (rot_dim <= 0 || rot_dim % 2 || !(theta > 1.0f)) return DSI_EINVAL;
    *attn_factor = 1.0f;
    enum dsi_rope_type type = sc ? sc->type : DSI_ROPE_DEFAULT;
    int orig =
        sc && sc->original_max_position_embeddings > 0 ? sc->original_max_position_embeddings : max_pos;
    switch (type) {
    case DSI_ROPE_DEFAULT:
        dsi_rope_inv_freq_default(theta, rot_dim, inv_freq);
        return 0;
    case DSI_ROPE_LINEAR:
        if (!(sc->factor > 0.0f)) return DSI_EINVAL;
        dsi_rope_inv_freq_default(theta, rot_dim, inv_freq);
        for (int i = 0; i < rot_dim / 2; i++)
            inv_freq[i] /= sc->factor;
        return 0;
    case DSI_ROPE_LLAMA3:
        if (!(sc->factor > 0.0f) || orig <= 0 || !(sc->high_freq_factor > sc->low_freq_factor) ||
            !(sc->low_freq_factor > 0.0f))
            return DSI_EINVAL;
        dsi_rope_inv_freq_llama3(theta, rot_dim, sc->factor, sc->low_freq_factor, sc->high_freq_factor, orig,
                                 inv_freq);
        return 0;
    case DSI_ROPE_YARN:
        if (!(sc->factor > 0.0f) || orig <= 0) return DSI_EINVAL;
        dsi_rope_inv_freq_yarn(theta, rot_dim, sc->factor, orig, sc->beta_fast, sc->beta_slow, sc->mscale,
                               sc->mscale_all_dim, inv_freq, attn_factor);
        return 0;
    case DSI_ROPE_DYNAMIC: {
        if (!(sc->factor > 0.0f) || orig <= 0) return DSI_EINVAL;
        double base = theta;
        if (seq_len > orig) {
            double f = sc->factor;
            base = base * pow(f * seq_len / orig - (f - 1.0), (double)rot_dim / (rot_dim - 2));
        }
        dsi_rope_inv_freq_default((float)base, rot_dim, inv_freq);
        return 0;
    }
    }
    return DSI_EINVAL;
}
