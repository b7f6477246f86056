/*
 * elementwise.cu: the small memory-bound kernels of one transformer layer:
 * embedding gather, fused residual-add + RMSNorm, rotate-half RoPE, KV-cache
 * store, SwiGLU, scale/bias epilogue, row gather, fills and conversions.
 *
 * Layouts are those of kernels.h: fp32 residual stream (rows, dim), bf16 matmul
 * inputs, bf16 KV slots. Each kernel reads and writes its tensors once, so its
 * bandwidth target is the copy rate (4.25 TB/s on the H200); at decode sizes
 * (a few KB per launch) they are launch-latency bound, which CUDA graphs remove.
 */
#include <cuda_bf16.h>
#include <math.h>

#include "bf16_util.cuh"
#include "kernels.h"
#include "rope.cuh"

static __global__ void embed_kernel(float *out, const uint16_t *table, const int32_t *ids, int dim,
                                    int vocab) {
    int t = blockIdx.x;
    int id = ids[t];
    float *o = out + (size_t)t * dim;
    if (id < 0 || id >= vocab) {
        for (int i = threadIdx.x; i < dim; i += blockDim.x)
            o[i] = 0.f;
        return;
    }
    const uint16_t *row = table + (size_t)id * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        o[i] = bf2f(row[i]);
}

extern "C" int dsi_cuda_embed(float *out, const uint16_t *table, const int32_t *ids, int n_tok, int dim,
                              int vocab, cudaStream_t s) {
    if (n_tok < 0 || dim <= 0 || vocab <= 0) return DSI_EINVAL;
    if (n_tok == 0) return 0;
    embed_kernel<<<n_tok, 256, 0, s>>>(out, table, ids, dim, vocab);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

/* One block per row; the row is read once into registers/L1 and written twice
 * (x and the normalized bf16 copy). The general case; see the float4 kernel.
 * ds, db: delta's per-column scale and bias (NULL: none), as scale_bias_kernel. */
static __global__ void add_rmsnorm_kernel(float *x, const float *delta, const float *ds, const float *db,
                                          const float *w, uint16_t *out, int dim, float eps) {
    __shared__ float red[32];
    size_t base = (size_t)blockIdx.x * dim;
    float ss = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = x[base + i];
        if (delta) {
            float d = delta[base + i];
            if (ds) d = __fmul_rn(d, ds[i]);
            if (db) d = __fadd_rn(d, db[i]);
            v += d;
            x[base + i] = v;
        }
        ss += v * v;
    }
    ss = block_sum(ss, red);
    float r = rsqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        out[base + i] = f2bf(x[base + i] * r * w[i]);
}

/* The decode shape (dim % 4 == 0, dim <= 4 * NORM_V * 1024, 16-byte aligned
 * rows): every thread issues all its loads (x, delta and the norm weights, NORM_V
 * float4 each) before it uses any, keeps the row in registers, and writes x and
 * four bf16 at a time. The loop above leaves its loads in a chain (the store
 * to x may alias the next delta), which at one row made the node 3.7 us
 * against a 1.5 us floor. */
#define NORM_V 4
template <bool DELTA>
static __global__ void __launch_bounds__(1024)
    add_rmsnorm_vec_kernel(float *__restrict__ x, const float *__restrict__ delta,
                           const float *__restrict__ ds, const float *__restrict__ db,
                           const float *__restrict__ w, uint16_t *__restrict__ out, int dim, float eps) {
    __shared__ float red[32];
    const int n4 = dim >> 2;
    float4 *x4 = reinterpret_cast<float4 *>(x + (size_t)blockIdx.x * dim);
    const float4 *d4 = reinterpret_cast<const float4 *>(DELTA ? delta + (size_t)blockIdx.x * dim : x);
    const float4 *w4 = reinterpret_cast<const float4 *>(w);
    float4 v[NORM_V], dv[NORM_V], wv[NORM_V];
#pragma unroll
    for (int u = 0; u < NORM_V; u++) {
        int i = threadIdx.x + u * blockDim.x;
        v[u] = dv[u] = wv[u] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i < n4) {
            v[u] = x4[i];
            if (DELTA) dv[u] = d4[i];
            wv[u] = __ldg(w4 + i);
        }
    }
    if (DELTA && (ds || db)) { /* delta's epilogue, as scale_bias_kernel: * scale, then + bias */
#pragma unroll
        for (int u = 0; u < NORM_V; u++) {
            int i = threadIdx.x + u * blockDim.x;
            if (i >= n4) continue;
            if (ds) {
                float4 s4 = __ldg(reinterpret_cast<const float4 *>(ds) + i);
                dv[u].x = __fmul_rn(dv[u].x, s4.x), dv[u].y = __fmul_rn(dv[u].y, s4.y);
                dv[u].z = __fmul_rn(dv[u].z, s4.z), dv[u].w = __fmul_rn(dv[u].w, s4.w);
            }
            if (db) {
                float4 b4 = __ldg(reinterpret_cast<const float4 *>(db) + i);
                dv[u].x = __fadd_rn(dv[u].x, b4.x), dv[u].y = __fadd_rn(dv[u].y, b4.y);
                dv[u].z = __fadd_rn(dv[u].z, b4.z), dv[u].w = __fadd_rn(dv[u].w, b4.w);
            }
        }
    }
    float ss = 0.f;
#pragma unroll
    for (int u = 0; u < NORM_V; u++) {
        int i = threadIdx.x + u * blockDim.x;
        if (DELTA) {
            v[u].x += dv[u].x, v[u].y += dv[u].y, v[u].z += dv[u].z, v[u].w += dv[u].w;
            if (i < n4) x4[i] = v[u];
        }
        ss += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;
    }
    ss = block_sum(ss, red);
    const float r = rsqrtf(ss / (float)dim + eps);
    uint2 *o2 = reinterpret_cast<uint2 *>(out + (size_t)blockIdx.x * dim);
#pragma unroll
    for (int u = 0; u < NORM_V; u++) {
        int i = threadIdx.x + u * blockDim.x;
        if (i < n4) {
            uint32_t lo = f2bf(v[u].x * r * wv[u].x) | (uint32_t)f2bf(v[u].y * r * wv[u].y) << 16;
            uint32_t hi = f2bf(v[u].z * r * wv[u].z) | (uint32_t)f2bf(v[u].w * r * wv[u].w) << 16;
            o2[i] = make_uint2(lo, hi);
        }
    }
}

extern "C" int dsi_cuda_add_rmsnorm_epi(float *x, const float *delta, const float *dscale, const float *dbias,
                                        const float *w, uint16_t *out, int rows, int dim, float eps,
                                        cudaStream_t s) {
    if (rows < 0 || dim <= 0 || !(eps >= 0.f)) return DSI_EINVAL;
    if (rows == 0) return 0;
    const int n4 = dim / 4, threads = ((n4 + NORM_V - 1) / NORM_V + 31) / 32 * 32;
    const uintptr_t a16 =
        (uintptr_t)x | (uintptr_t)delta | (uintptr_t)w | (uintptr_t)dscale | (uintptr_t)dbias;
    const bool vec = dim % 4 == 0 && threads <= 1024 && !(a16 & 15) && !((uintptr_t)out & 7);
    if (vec && delta)
        add_rmsnorm_vec_kernel<true><<<rows, threads, 0, s>>>(x, delta, dscale, dbias, w, out, dim, eps);
    else if (vec)
        add_rmsnorm_vec_kernel<false><<<rows, threads, 0, s>>>(x, NULL, NULL, NULL, w, out, dim, eps);
    else
        add_rmsnorm_kernel<<<rows, 512, 0, s>>>(x, delta, dscale, dbias, w, out, dim, eps);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

extern "C" int dsi_cuda_add_rmsnorm(float *x, const float *delta, const float *w, uint16_t *out, int rows,
                                    int dim, float eps, cudaStream_t s) {
    return dsi_cuda_add_rmsnorm_epi(x, delta, NULL, NULL, w, out, rows, dim, eps, s);
}

/* Grid (n_tok), block covers (n_rot_heads * hd/2) pairs. sincosf (not the fast
 * intrinsic): angles reach 1e5 rad at long context and the fast path drifts. */
static __global__ void rope_kernel(float *qk, int stride, int n_rot_heads, int head_dim, const int32_t *pos,
                                   const float *inv_freq) {
    int t = blockIdx.x;
    int half = head_dim / 2;
    float p = (float)pos[t];
    float *row = qk + (size_t)t * stride;
    __shared__ float cs_s[ROPE_TAB], sn_s[ROPE_TAB];
    rope_table(cs_s, sn_s, p, inv_freq, half);
    for (int j = threadIdx.x; j < n_rot_heads * half; j += blockDim.x) {
        int h = j / half, i = j % half;
        float sn, cs;
        rope_angle(cs_s, sn_s, p, inv_freq, half, i, &cs, &sn);
        float *hp = row + (size_t)h * head_dim;
        rotate(hp + i, hp + i + half, cs, sn);
    }
}

extern "C" int dsi_cuda_rope(float *qk, int stride, int n_tok, int n_rot_heads, int head_dim,
                             const int32_t *pos, const float *inv_freq, cudaStream_t s) {
    if (n_tok < 0 || n_rot_heads <= 0 || head_dim <= 0 || head_dim % 2 ||
        (long long)n_rot_heads * head_dim > stride)
        return DSI_EINVAL;
    if (n_tok == 0) return 0;
    rope_kernel<<<n_tok, 256, 0, s>>>(qk, stride, n_rot_heads, head_dim, pos, inv_freq);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

static __global__ void kv_store_kernel(uint16_t *kc, uint16_t *vc, const float *src, int stride, int k_off,
                                       int v_off, const int32_t *slots, int kv_dim) {
    int t = blockIdx.x;
    size_t slot = (size_t)slots[t];
    const float *row = src + (size_t)t * stride;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kc[slot * kv_dim + i] = f2bf(row[k_off + i]);
        vc[slot * kv_dim + i] = f2bf(row[v_off + i]);
    }
}

extern "C" int dsi_cuda_kv_store(uint16_t *k_cache, uint16_t *v_cache, const float *src, int stride,
                                 int k_off, int v_off, const int32_t *slots, int n_tok, int kv_dim,
                                 cudaStream_t s) {
    if (n_tok < 0 || kv_dim <= 0 || k_off < 0 || v_off < 0 || k_off + kv_dim > stride ||
        v_off + kv_dim > stride)
        return DSI_EINVAL;
    if (n_tok == 0) return 0;
    kv_store_kernel<<<n_tok, 256, 0, s>>>(k_cache, v_cache, src, stride, k_off, v_off, slots, kv_dim);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

/* rope over q|k, then K and V of the token into its cache slot: one launch
 * per layer instead of two. The k pairs are rotated in place and stored from
 * the same values, so no barrier sits between the two halves. */
static __global__ void rope_kv_store_kernel(float *qkv, int stride, int n_heads, int n_kv, int head_dim,
                                            const int32_t *pos, const float *inv_freq, uint16_t *kc,
                                            uint16_t *vc, const int32_t *slots) {
    __shared__ float cs_s[ROPE_TAB], sn_s[ROPE_TAB];
    const int t = blockIdx.x, half = head_dim / 2, kv_dim = n_kv * head_dim;
    const float p = (float)pos[t];
    float *row = qkv + (size_t)t * stride;
    const size_t slot = (size_t)slots[t];
    rope_table(cs_s, sn_s, p, inv_freq, half);
    for (int j = threadIdx.x; j < (n_heads + n_kv) * half; j += blockDim.x) {
        int h = j / half, i = j % half;
        float sn, cs;
        rope_angle(cs_s, sn_s, p, inv_freq, half, i, &cs, &sn);
        float *hp = row + (size_t)h * head_dim;
        rotate(hp + i, hp + i + half, cs, sn);
        if (h >= n_heads) {
            uint16_t *kp = kc + slot * kv_dim + (size_t)(h - n_heads) * head_dim;
            kp[i] = f2bf(hp[i]);
            kp[i + half] = f2bf(hp[i + half]);
        }
    }
    const float *v = row + (size_t)(n_heads + n_kv) * head_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x)
        vc[slot * kv_dim + i] = f2bf(v[i]);
}

extern "C" int dsi_cuda_rope_kv_store(float *qkv, int stride, int n_tok, int n_heads, int n_kv_heads,
                                      int head_dim, const int32_t *pos, const float *inv_freq,
                                      uint16_t *k_cache, uint16_t *v_cache, const int32_t *slots,
                                      cudaStream_t s) {
    if (n_tok < 0 || n_heads <= 0 || n_kv_heads <= 0 || head_dim <= 0 || head_dim % 2 ||
        ((long long)n_heads + 2LL * n_kv_heads) * head_dim > stride)
        return DSI_EINVAL;
    if (n_tok == 0) return 0;
    rope_kv_store_kernel<<<n_tok, 256, 0, s>>>(qkv, stride, n_heads, n_kv_heads, head_dim, pos, inv_freq,
                                               k_cache, v_cache, slots);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

/* scale, bias (NULL: none): per gu column, applied first as scale_bias_kernel
 * does (v * scale, then + bias), so the result equals scale_bias then swiglu. */
static __global__ void swiglu_kernel(uint16_t *out, const float *gu, int inter, int il8, const float *scale,
                                     const float *bias) {
    int r = blockIdx.y;
    const float *row = gu + (size_t)r * 2 * inter;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < inter; i += gridDim.x * blockDim.x) {
        size_t gi = il8 ? (size_t)(i >> 3) * 16 + (i & 7) : (size_t)i, ui = il8 ? gi + 8 : gi + inter;
        float a = row[gi], u = row[ui];
        if (scale) a = __fmul_rn(a, scale[gi]), u = __fmul_rn(u, scale[ui]);
        if (bias) a = __fadd_rn(a, bias[gi]), u = __fadd_rn(u, bias[ui]);
        out[(size_t)r * inter + i] = f2bf(a / (1.f + expf(-a)) * u);
    }
}

extern "C" int dsi_cuda_swiglu(uint16_t *out, const float *gu, int rows, int inter, int il8,
                               const float *scale, const float *bias, cudaStream_t s) {
    if (rows < 0 || rows > 65535 || inter <= 0 || (il8 && (il8 != DSI_GLU_IL8 || inter % 8)))
        return DSI_EINVAL;
    if (rows == 0) return 0;
    dim3 grid((inter + 1023) / 1024, rows);
    swiglu_kernel<<<grid, 1024, 0, s>>>(out, gu, inter, il8 != 0, scale, bias);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

static __global__ void scale_bias_kernel(float *y, const float *scale, const float *bias, size_t total,
                                         int n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(i % n);
        float v = y[i];
        if (scale) v = __fmul_rn(v, scale[c]); /* no fma contraction: the kernels that */
        if (bias) v = __fadd_rn(v, bias[c]);   /* take this epilogue over round alike */
        y[i] = v;
    }
}

extern "C" int dsi_cuda_scale_bias(float *y, const float *scale, const float *bias, int rows, int n,
                                   cudaStream_t s) {
    if (rows < 0 || n <= 0) return DSI_EINVAL;
    if (rows == 0 || (!scale && !bias)) return 0;
    size_t total = (size_t)rows * n;
    size_t blocks = (total + 255) / 256;
    if (blocks > 65536) blocks = 65536;
    scale_bias_kernel<<<(unsigned)blocks, 256, 0, s>>>(y, scale, bias, total, n);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

static __global__ void gather_rows_kernel(uint16_t *dst, const uint16_t *src, const int32_t *rows, int dim) {
    const uint16_t *s = src + (size_t)rows[blockIdx.x] * dim;
    uint16_t *d = dst + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        d[i] = s[i];
}

extern "C" int dsi_cuda_gather_rows(uint16_t *dst, const uint16_t *src, const int32_t *rows, int n_rows,
                                    int dim, cudaStream_t s) {
    if (n_rows < 0 || dim <= 0) return DSI_EINVAL;
    if (n_rows == 0) return 0;
    gather_rows_kernel<<<n_rows, 256, 0, s>>>(dst, src, rows, dim);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

/* splitmix64 of (seed, index): the same tensor for the same seed on any grid. */
/* out (rows, vocab) from the all-gathered lm_head slices (kernels.h): column v
 * comes from rank r = v / pad, which wrote its (rows, n_r) slice at chunk r. */
static __global__ void tp_logits_unpack_kernel(float *out, const float *all, int rows, int vocab, int pad) {
    const int row = blockIdx.y;
    for (int v = blockIdx.x * blockDim.x + threadIdx.x; v < vocab; v += gridDim.x * blockDim.x) {
        int r = v / pad, j = v - r * pad, n_r = min(vocab, (r + 1) * pad) - r * pad;
        out[(size_t)row * vocab + v] = all[(size_t)r * rows * pad + (size_t)row * n_r + j];
    }
}

extern "C" int dsi_cuda_tp_logits_unpack(float *out, const float *all, int rows, int vocab, int pad,
                                         cudaStream_t s) {
    if (!out || !all || rows < 0 || rows > 65535 || vocab <= 0 || pad <= 0 ||
        (long long)pad * rows > INT32_MAX)
        return DSI_EINVAL;
    if (rows == 0) return 0;
    int blocks = (vocab + 255) / 256;
    if (blocks > 512) blocks = 512;
    tp_logits_unpack_kernel<<<dim3(blocks, rows), 256, 0, s>>>(out, all, rows, vocab, pad);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

static __global__ void fill_random_kernel(uint16_t *dst, size_t n, uint64_t seed, float scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        float u = (float)(z >> 40) * (1.f / 16777216.f); /* [0,1) */
        dst[i] = f2bf((2.f * u - 1.f) * scale);
    }
}

extern "C" int dsi_cuda_fill_random_bf16(uint16_t *dst, size_t n, uint64_t seed, float scale,
                                         cudaStream_t s) {
    if (n == 0) return 0;
    fill_random_kernel<<<4096, 256, 0, s>>>(dst, n, seed, scale);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

static __global__ void f32_to_bf16_kernel(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = f2bf(src[i]);
}

extern "C" int dsi_cuda_f32_to_bf16(uint16_t *dst, const float *src, size_t n, cudaStream_t s) {
    if (n == 0) return 0;
    f32_to_bf16_kernel<<<4096, 256, 0, s>>>(dst, src, n);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

extern "C" int dsi_cuda_kernel_image(int *binary_version) {
    cudaFuncAttributes fa;
    cudaError_t e = cudaFuncGetAttributes(&fa, embed_kernel);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not sticky: no image for this device */
        return DSI_EUNSUPPORTED;
    }
    *binary_version = fa.binaryVersion;
    return 0;
}
