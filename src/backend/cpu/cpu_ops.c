/*
 * cpu_ops.c: dot products, matvec/matmul over f32/bf16/int8 weights, int8
 * quantization, RMSNorm, SwiGLU, softmax, paged attention (see cpu_ops.h).
 *
 * Determinism: every output element is one dot product whose summation order is
 * fixed by the code below (AVX2: 4 accumulators of 8 lanes over blocks of 32, then a
 * fixed tree; tail scalar), so it never depends on batch composition or threads.
 * The portable path (no AVX2/FMA at compile time) has its own fixed order.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu_ops.h"
#include "dsinfer/err.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define DSI_CPU_AVX2 1
#endif

#ifdef DSI_CPU_AVX2
static inline float hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}
static inline __m256 load_bf16x8(const uint16_t *p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
static inline __m256 load_i8x8(const int8_t *p) {
    __m128i b = _mm_loadl_epi64((const __m128i *)p);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}
#define DOT_AVX2(LOADW)                                                                                      \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                              \
    int i = 0;                                                                                               \
    for (; i + 32 <= n; i += 32) {                                                                           \
        a0 = _mm256_fmadd_ps(LOADW(w + i), _mm256_loadu_ps(x + i), a0);                                      \
        a1 = _mm256_fmadd_ps(LOADW(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);                              \
        a2 = _mm256_fmadd_ps(LOADW(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);                            \
        a3 = _mm256_fmadd_ps(LOADW(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);                            \
    }                                                                                                        \
    for (; i + 8 <= n; i += 8)                                                                               \
        a0 = _mm256_fmadd_ps(LOADW(w + i), _mm256_loadu_ps(x + i), a0);                                      \
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#define LOAD_F32(p) _mm256_loadu_ps(p)
#endif

/* The body of a dot product of n weights w with x: ELEM(w[i]) is one weight as
 * a float, LOADW(p) eight of them in a register (AVX2 only). Under AVX2 four
 * accumulators of 8 lanes, without it 8 scalar ones; each path sums in a fixed
 * order, so a dot product gives the same bits wherever it is called from. */
#ifdef DSI_CPU_AVX2
#define DOT_BODY(ELEM, LOADW)                                                                                \
    DOT_AVX2(LOADW)                                                                                          \
    for (; i < n; i++)                                                                                       \
        s += ELEM(w[i]) * x[i];                                                                              \
    return s;
#else
#define DOT_BODY(ELEM, LOADW)                                                                                \
    float acc[8] = {0};                                                                                      \
    int i = 0;                                                                                               \
    for (; i + 8 <= n; i += 8)                                                                               \
        for (int j = 0; j < 8; j++)                                                                          \
            acc[j] += ELEM(w[i + j]) * x[i + j];                                                             \
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));            \
    for (; i < n; i++)                                                                                       \
        s += ELEM(w[i]) * x[i];                                                                              \
    return s;
#endif
#define ELEM_F32(v) (v)
#define ELEM_I8(v) ((float)(v))

float dsi_dot_f32(const float *w, const float *x, int n) {
    DOT_BODY(ELEM_F32, LOAD_F32)
}

float dsi_dot_bf16(const uint16_t *w, const float *x, int n) {
    DOT_BODY(dsi_bf16_to_f32, load_bf16x8)
}

float dsi_dot_i8(const int8_t *w, const float *x, int n) {
    DOT_BODY(ELEM_I8, load_i8x8)
}

/* One output element: row r of W dotted with x. Shared by matvec and matmul so both
 * give the same bits. */
static inline float row_dot(const struct dsi_qweight *w, int r, const float *x) {
    size_t off = (size_t)r * (size_t)w->cols;
    switch (w->dtype) {
    case DSI_W_F32:
        return dsi_dot_f32((const float *)w->data + off, x, w->cols);
    case DSI_W_BF16:
        return dsi_dot_bf16((const uint16_t *)w->data + off, x, w->cols);
    case DSI_W_INT8: {
        const int8_t *q = (const int8_t *)w->data + off;
        if (w->group_size <= 0) return dsi_dot_i8(q, x, w->cols) * w->scales[r];
        int ng = w->cols / w->group_size;
        const float *sc = w->scales + (size_t)r * (size_t)ng;
        float s = 0.0f;
        for (int g = 0; g < ng; g++)
            s += dsi_dot_i8(q + (size_t)g * w->group_size, x + (size_t)g * w->group_size, w->group_size) *
                 sc[g];
        return s;
    }
    }
    return 0.0f;
}

void dsi_matvec(const struct dsi_qweight *w, const float *x, const float *bias, float *y, int r0, int r1) {
    for (int r = r0; r < r1; r++) {
        float v = row_dot(w, r, x);
        y[r] = bias ? v + bias[r] : v;
    }
}

void dsi_matmul(const struct dsi_qweight *w, const float *x, int n_tokens, const float *bias, float *y,
                int ldy, int r0, int r1) {
    for (int r = r0; r < r1; r++) {
        for (int t = 0; t < n_tokens; t++) {
            float v = row_dot(w, r, x + (size_t)t * (size_t)w->cols);
            y[(size_t)t * (size_t)ldy + (size_t)r] = bias ? v + bias[r] : v;
        }
    }
}

void dsi_qweight_row_f32(const struct dsi_qweight *w, int r, float *out) {
    size_t off = (size_t)r * (size_t)w->cols;
    switch (w->dtype) {
    case DSI_W_F32:
        memcpy(out, (const float *)w->data + off, (size_t)w->cols * sizeof(float));
        return;
    case DSI_W_BF16:
        for (int c = 0; c < w->cols; c++)
            out[c] = dsi_bf16_to_f32(((const uint16_t *)w->data)[off + (size_t)c]);
        return;
    case DSI_W_INT8: {
        int gs = w->group_size > 0 ? w->group_size : w->cols;
        const float *sc = w->scales + (size_t)r * (size_t)(w->cols / gs);
        for (int c = 0; c < w->cols; c++)
            out[c] = (float)((const int8_t *)w->data)[off + (size_t)c] * sc[c / gs];
        return;
    }
    }
}

int dsi_quantize_int8(const float *src, int rows, int cols, int group_size, int8_t *q, float *scales) {
    if (rows <= 0 || cols <= 0 || group_size < 0) return DSI_EINVAL;
    int gs = group_size > 0 ? group_size : cols;
    if (cols % gs != 0) return DSI_EINVAL;
    int ng = cols / gs;
    for (int r = 0; r < rows; r++) {
        for (int g = 0; g < ng; g++) {
            size_t base = (size_t)r * (size_t)cols + (size_t)g * (size_t)gs;
            float amax = 0.0f;
            for (int c = 0; c < gs; c++) {
                float a = fabsf(src[base + (size_t)c]);
                if (a > amax) amax = a; /* NaN never wins, so a NaN weight quantizes to 0 */
            }
            float scale = amax / 127.0f;
            scales[(size_t)r * (size_t)ng + (size_t)g] = scale;
            for (int c = 0; c < gs; c++) {
                float v = scale > 0.0f ? roundf(src[base + (size_t)c] / scale) : 0.0f;
                if (isnan(v)) v = 0.0f;
                if (v > 127.0f) v = 127.0f; /* inf weights make amax inf; keep the cast defined */
                if (v < -127.0f) v = -127.0f;
                q[base + (size_t)c] = (int8_t)v;
            }
        }
    }
    return 0;
}

void dsi_rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * (double)x[i];
    float inv = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    for (int i = 0; i < n; i++)
        out[i] = w[i] * (x[i] * inv);
}

void dsi_swiglu(float *out, const float *gate, const float *up, int n) {
    for (int i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void dsi_softmax(float *x, int n) {
    if (n <= 0) return;
    float mx = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > mx) mx = x[i];
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = 1.0f / sum;
    for (int i = 0; i < n; i++)
        x[i] *= inv;
}

/* Byte offset of kv head h's vector at position pos (every vector of a pool
 * has the same size, dsi_kv_vector_bytes). */
static inline size_t kv_offset(const int32_t *table, int block_size, int n_kv_heads, size_t vec_bytes, int pos,
                               int h) {
    size_t slot = (size_t)table[pos / block_size] * (size_t)block_size + (size_t)(pos % block_size);
    return (slot * (size_t)n_kv_heads + (size_t)h) * vec_bytes;
}

/* The smallest f16 >= x for a finite x > 0, saturating at 65504 (the int8 KV
 * scale: rounding up keeps every |value / scale| <= 127, so no value clips). */
static uint16_t f16_at_least(float x) {
    if (!(x > 0.0f)) return 0;
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    int exp = (int)((u >> 23) & 0xff) - 127 + 15;
    uint32_t mant = u & 0x7fffffu;
    uint16_t h;
    if (exp >= 31) return 0x7bff;
    if (exp <= 0) h = exp < -10 ? 0 : (uint16_t)((mant | 0x800000u) >> (14 - exp)); /* subnormal, truncated */
    else h = (uint16_t)((uint32_t)exp << 10 | mant >> 13);                          /* truncated */
    if (dsi_f16_to_f32(h) < x) h++; /* a positive f16's next bit pattern is the next value up */
    return h > 0x7bff ? 0x7bff : h;
}

void dsi_kv_quant_int8(uint8_t *dst, const float *x, int n) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++)
        amax = fmaxf(amax, fabsf(x[i]));
    uint16_t hs = f16_at_least(amax / 127.0f);
    float s = dsi_f16_to_f32(hs), inv = s > 0.0f ? 1.0f / s : 0.0f;
    int8_t *q = (int8_t *)dst;
    for (int i = 0; i < n; i++) {
        float v = rintf(x[i] * inv);
        q[i] = v > 127.0f ? 127 : v < -127.0f ? -127 : v == v ? (int8_t)v : 0; /* NaN: 0 */
    }
    memcpy(dst + n, &hs, sizeof hs);
}

float dsi_kv_int8_scale(const uint8_t *v, int n) {
    uint16_t hs;
    memcpy(&hs, v + n, sizeof hs);
    return dsi_f16_to_f32(hs);
}

float dsi_kv_dot(enum dsi_kv_dtype dt, const void *v, const float *x, int n) {
    if (dt == DSI_KV_F32) return dsi_dot_f32((const float *)v, x, n);
    if (dt == DSI_KV_BF16) return dsi_dot_bf16((const uint16_t *)v, x, n);
    return dsi_dot_i8((const int8_t *)v, x, n) * dsi_kv_int8_scale((const uint8_t *)v, n);
}

void dsi_kv_axpy(enum dsi_kv_dtype dt, float *out, float w, const void *v, int n) {
    if (dt == DSI_KV_F32) {
        const float *p = (const float *)v;
        for (int d = 0; d < n; d++)
            out[d] += w * p[d];
    } else if (dt == DSI_KV_BF16) {
        const uint16_t *p = (const uint16_t *)v;
        for (int d = 0; d < n; d++)
            out[d] += w * dsi_bf16_to_f32(p[d]);
    } else {
        const int8_t *p = (const int8_t *)v;
        float ws = w * dsi_kv_int8_scale((const uint8_t *)v, n);
        for (int d = 0; d < n; d++)
            out[d] += ws * (float)p[d];
    }
}

void dsi_kv_put(enum dsi_kv_dtype dt, void *dst, const float *x, int n) {
    if (dt == DSI_KV_F32) {
        memcpy(dst, x, (size_t)n * sizeof(float));
    } else if (dt == DSI_KV_BF16) {
        uint16_t *p = (uint16_t *)dst;
        for (int i = 0; i < n; i++)
            p[i] = dsi_f32_to_bf16(x[i]);
    } else {
        dsi_kv_quant_int8((uint8_t *)dst, x, n);
    }
}

void dsi_attn_head(const struct dsi_attn_args *a, int h, const float *q, float *out, float *scores) {
    int group = a->n_heads / a->n_kv_heads;
    int kvh = h / group, hd = a->head_dim;
    size_t vb = dsi_kv_vector_bytes(a->kv_dtype, (size_t)hd);
    for (int p = 0; p < a->n_ctx; p++) {
        size_t off = kv_offset(a->block_table, a->block_size, a->n_kv_heads, vb, p, kvh);
        scores[p] = dsi_kv_dot(a->kv_dtype, (const char *)a->k + off, q, hd) * a->scale;
    }
    dsi_softmax(scores, a->n_ctx);
    for (int d = 0; d < hd; d++)
        out[d] = 0.0f;
    for (int p = 0; p < a->n_ctx; p++) {
        size_t off = kv_offset(a->block_table, a->block_size, a->n_kv_heads, vb, p, kvh);
        dsi_kv_axpy(a->kv_dtype, out, scores[p], (const char *)a->v + off, hd);
    }
}

void dsi_kv_store(void *k_pool, void *v_pool, enum dsi_kv_dtype dt, int block_size, int n_kv_heads,
                  int head_dim, const int32_t *block_table, int pos, const float *k, const float *v) {
    size_t vb = dsi_kv_vector_bytes(dt, (size_t)head_dim);
    for (int h = 0; h < n_kv_heads; h++) {
        size_t off = kv_offset(block_table, block_size, n_kv_heads, vb, pos, h);
        dsi_kv_put(dt, (char *)k_pool + off, k + (size_t)h * head_dim, head_dim);
        dsi_kv_put(dt, (char *)v_pool + off, v + (size_t)h * head_dim, head_dim);
    }
}
