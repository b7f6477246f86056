/*
 * cpu_rope.c: applies rotary position embeddings in the neox (rotate_half) and
 * interleaved pairings. The frequency tables are model math shared with the
 * CUDA backend: src/model/rope.c (dsinfer/rope.h). The angle is
 * (float)pos * inv_freq[i], the product HF forms; cos/sin come from libm.
 */
#include <math.h>

#include "cpu_ops.h"

void dsi_rope_neox(float *x, int n_heads, int head_dim, int rot_dim, int pos, const float *inv_freq,
                   float attn_factor) {
    int half = rot_dim / 2;
    for (int i = 0; i < half; i++) {
        float ang = (float)pos * inv_freq[i];
        float c = cosf(ang) * attn_factor, s = sinf(ang) * attn_factor;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)h * (size_t)head_dim;
            float a = v[i], b = v[i + half];
            v[i] = a * c - b * s;
            v[i + half] = b * c + a * s;
        }
    }
}

void dsi_rope_interleaved(float *x, int n_heads, int head_dim, int rot_dim, int pos, const float *inv_freq,
                          float attn_factor) {
    for (int i = 0; i < rot_dim / 2; i++) {
        float ang = (float)pos * inv_freq[i];
        float c = cosf(ang) * attn_factor, s = sinf(ang) * attn_factor;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)h * (size_t)head_dim;
            float a = v[2 * i], b = v[2 * i + 1];
            v[2 * i] = a * c - b * s;
            v[2 * i + 1] = b * c + a * s;
        }
    }
}
