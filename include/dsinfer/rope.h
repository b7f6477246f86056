/*
 * rope.h: rotary position embedding frequencies, as HF transformers computes
 * them (src/model/rope.c). Model math that every backend needs: the CPU
 * backend rotates with these tables (cpu_ops.h dsi_rope_neox), the CUDA
 * backend uploads them; neither backend computes its own.
 *
 * Owner: src/model.
 */
#ifndef DSINFER_ROPE_H
#define DSINFER_ROPE_H

#include "dsinfer/model.h"

/* Fills inv_freq (rot_dim/2 floats) as HF's rope init functions do for the given
 * scaling, and *attn_factor (cos/sin multiplier: 1 except YaRN). theta: rope_theta.
 * DSI_ROPE_DYNAMIC uses seq_len (HF dynamic NTK: base grows once seq_len exceeds
 * original_max_position_embeddings); other types ignore it. max_pos: the config's
 * max_position_embeddings (fallback for original_max_position_embeddings).
 * Returns 0 or DSI_EINVAL for impossible parameters. */
int dsi_rope_inv_freq(const struct dsi_rope_scaling *sc, float theta, int rot_dim, int max_pos, int seq_len,
                      float *inv_freq, float *attn_factor);

/* The pieces of the above, exposed for DeepSeek-V2/V3 (YaRN) reuse and CUDA tests. */
void dsi_rope_inv_freq_default(float theta, int rot_dim, float *inv_freq);
void dsi_rope_inv_freq_llama3(float theta, int rot_dim, float factor, float low_freq_factor,
                              float high_freq_factor, int original_max_pos, float *inv_freq);
/* YaRN (HF _compute_yarn_parameters): blends interpolated and extrapolated
 * frequencies between beta_fast/beta_slow correction dims; *attn_factor =
 * get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) when those are
 * set (DeepSeek-V2/V3), else 0.1*ln(factor)+1. */
void dsi_rope_inv_freq_yarn(float theta, int rot_dim, float factor, int original_max_pos, float beta_fast,
                            float beta_slow, float mscale, float mscale_all_dim, float *inv_freq,
                            float *attn_factor);
/* YaRN softmax-scale multiplier DeepSeek-V2/V3 applies to q.k: mscale(factor, mscale_all_dim)^2. */
float dsi_yarn_get_mscale(float factor, float mscale);

#endif
