/*
 * cpu_deepseek.c: DeepSeek-V2/V3 ops of the CPU reference (cpu_deepseek.h): MLA
 * attention over the compressed latent cache with W_UK absorbed into the query
 * and W_UV into the output, the MoE router (greedy, group_limited_greedy,
 * noaux_tc over softmax or sigmoid scores), and FP8 block scales.
 *
 * Invariants: every output element is one fixed-order sum; ties between equal
 * scores go to the lower expert / group id, so routing is deterministic.
 */
#include "cpu_deepseek.h"

#include <math.h>
#include <string.h>

/* Byte offset of position pos's entry: the latent vector, then the rope key
 * vector (two vectors: in int8 each has its own scale, their ranges differ). */
static inline size_t mla_offset(int block_size, size_t entry_bytes, const int32_t *table, int pos) {
    return ((size_t)table[pos / block_size] * (size_t)block_size + (size_t)(pos % block_size)) * entry_bytes;
}

size_t dsi_mla_scratch_floats(const struct dsi_mla_args *a) {
    return 3 * (size_t)a->kv_lora_rank + (size_t)(a->n_ctx > 0 ? a->n_ctx : 1);
}

void dsi_mla_store(void *pool, enum dsi_kv_dtype dt, int block_size, int kv_lora_rank, int rope_dim,
                   const int32_t *block_table, int pos, const float *c_kv, const float *k_pe) {
    size_t lat = dsi_kv_vector_bytes(dt, (size_t)kv_lora_rank);
    size_t entry = lat + dsi_kv_vector_bytes(dt, (size_t)rope_dim);
    char *p = (char *)pool + mla_offset(block_size, entry, block_table, pos);
    dsi_kv_put(dt, p, c_kv, kv_lora_rank);
    dsi_kv_put(dt, p + lat, k_pe, rope_dim);
}

void dsi_mla_head(const struct dsi_mla_args *a, int h, const float *q, float *out, float *scratch) {
    int R = a->kv_lora_rank, nope = a->qk_nope_head_dim, rope = a->qk_rope_head_dim, vd = a->v_head_dim;
    float *q_lat = scratch, *o_lat = scratch + R, *row = scratch + 2 * (size_t)R,
          *scores = scratch + 3 * (size_t)R;
    size_t base = (size_t)h * (size_t)(nope + vd);
    /* q_lat = W_UK^T q_nope: rows d of W_UK weighted by q_nope[d], d ascending */
    for (int c = 0; c < R; c++)
        q_lat[c] = 0.0f;
    for (int d = 0; d < nope; d++) {
        dsi_qweight_row_f32(a->wkv_b, (int)(base + (size_t)d), row);
        float qd = q[d];
        for (int c = 0; c < R; c++)
            q_lat[c] += qd * row[c];
    }
    const float *q_pe = q + nope;
    size_t lat = dsi_kv_vector_bytes(a->kv_dtype, (size_t)R);
    size_t entry = lat + dsi_kv_vector_bytes(a->kv_dtype, (size_t)rope);
    for (int p = 0; p < a->n_ctx; p++) {
        const char *e = (const char *)a->cache + mla_offset(a->block_size, entry, a->block_table, p);
        float s = dsi_kv_dot(a->kv_dtype, e, q_lat, R) + dsi_kv_dot(a->kv_dtype, e + lat, q_pe, rope);
        scores[p] = s * a->scale;
    }
    dsi_softmax(scores, a->n_ctx);
    for (int c = 0; c < R; c++)
        o_lat[c] = 0.0f;
    for (int p = 0; p < a->n_ctx; p++) {
        const char *e = (const char *)a->cache + mla_offset(a->block_size, entry, a->block_table, p);
        dsi_kv_axpy(a->kv_dtype, o_lat, scores[p], e, R);
    }
    /* out = W_UV o_lat */
    for (int e = 0; e < vd; e++) {
        dsi_qweight_row_f32(a->wkv_b, (int)(base + (size_t)nope + (size_t)e), row);
        out[e] = dsi_dot_f32(row, o_lat, R);
    }
}

size_t dsi_moe_route_scratch(const struct dsi_router *r) {
    return 3 * (size_t)r->n_experts + (size_t)(r->n_group > 0 ? r->n_group : 1);
}

/* Index of the largest v[i] with allowed[i] != 0 (lowest index on ties), or -1. */
static int argmax_allowed(const float *v, const float *allowed, int n) {
    int best = -1;
    for (int i = 0; i < n; i++)
        if (allowed[i] != 0.0f && (best < 0 || v[i] > v[best])) best = i;
    return best;
}

void dsi_moe_route(const struct dsi_router *r, const float *logits, int32_t *idx, float *w, float *scratch) {
    int E = r->n_experts, G = r->n_group > 0 ? r->n_group : 1, per = E / G;
    float *score = scratch, *choice = scratch + E, *allowed = scratch + 2 * (size_t)E;
    float *gscore = scratch + 3 * (size_t)E;
    if (r->scoring == DSI_SCORE_SOFTMAX) {
        memcpy(score, logits, (size_t)E * sizeof(float));
        dsi_softmax(score, E);
    } else {
        for (int e = 0; e < E; e++)
            score[e] = 1.0f / (1.0f + expf(-logits[e]));
    }
    for (int e = 0; e < E; e++)
        choice[e] = score[e] + (r->method == DSI_TOPK_NOAUX_TC && r->bias ? r->bias[e] : 0.0f);
    for (int e = 0; e < E; e++)
        allowed[e] = 1.0f;
    if (r->method != DSI_TOPK_GREEDY && G > 1) {
        for (int g = 0; g < G; g++) {
            const float *c = choice + (size_t)g * (size_t)per;
            if (r->method == DSI_TOPK_GROUP_LIMITED_GREEDY) {
                float m = c[0];
                for (int i = 1; i < per; i++)
                    if (c[i] > m) m = c[i];
                gscore[g] = m;
            } else { /* sum of the two best */
                int b0 = 0;
                for (int i = 1; i < per; i++)
                    if (c[i] > c[b0]) b0 = i;
                int b1 = -1;
                for (int i = 0; i < per; i++)
                    if (i != b0 && (b1 < 0 || c[i] > c[b1])) b1 = i;
                gscore[g] = c[b0] + c[b1];
            }
        }
        for (int e = 0; e < E; e++)
            allowed[e] = 0.0f;
        for (int k = 0; k < r->topk_group && k < G; k++) {
            int best = -1;
            for (int g = 0; g < G; g++) {
                if (allowed[(size_t)g * (size_t)per] != 0.0f) continue; /* group already taken */
                if (best < 0 || gscore[g] > gscore[best]) best = g;
            }
            for (int i = 0; i < per; i++)
                allowed[(size_t)best * (size_t)per + (size_t)i] = 1.0f;
        }
    }
    float sum = 0.0f;
    for (int k = 0; k < r->top_k; k++) {
        int e = argmax_allowed(choice, allowed, E);
        if (e < 0) { /* fewer allowed experts than top_k: the config check rules this out */
            idx[k] = 0;
            w[k] = 0.0f;
            continue;
        }
        allowed[e] = 0.0f;
        idx[k] = e;
        w[k] = score[e];
        sum += w[k];
    }
    for (int k = 0; k < r->top_k; k++)
        w[k] = r->norm_topk_prob ? w[k] / (sum + 1e-20f) * r->routed_scaling_factor
                                 : w[k] * r->routed_scaling_factor;
}

void dsi_fp8_block_scale(float *w, const float *scale, int rows, int cols, int br, int bc) {
    int nbc = (cols + bc - 1) / bc;
    for (int r = 0; r < rows; r++) {
        const float *s = scale + (size_t)(r / br) * (size_t)nbc;
        float *row = w + (size_t)r * (size_t)cols;
        for (int c = 0; c < cols; c++)
            row[c] *= s[c / bc];
    }
}
