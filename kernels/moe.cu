/*
 * moe.cu: the DeepSeek-V2/V3 mixture-of-experts pieces around the expert
 * matmuls (the matmuls themselves are the backend's INT8 / bf16 kernels, one
 * call per expert that received tokens):
 *  - moe_route: one block per token: RMSNorm of the residual row in fp32 (the
 *    router sees the fp32 normed row the CPU reference sees, not the bf16
 *    matmul input: routing is a discrete choice and must not flip on bf16
 *    rounding), router logits (fp32 weights, a warp per expert), then the
 *    selection exactly as dsi_moe_route (scores, groups, correction bias,
 *    top-k best first with ties to the lower id, renormalisation, scaling)
 *    by one warp, each pick a warp-wide argmax (one thread took ~60 us per
 *    token and layer for 64 experts on an H100);
 *  - moe_combine: out[t] = (accumulate ? out[t] : 0) + sum_k w[t][k] * y[slot[t][k]]
 *    in selection order (the CPU's order), the weighted un-permute;
 *  - moe_group + moe_gemv (decode-sized steps, no host round trip, so the step
 *    can be a CUDA graph): the (token, k) rows grouped by expert on the device,
 *    then one launch per matrix kind over (row tile, expert) blocks, each
 *    reading its expert's INT8 tiles once per GM rows of its run (CUDA cores,
 *    fp32 sums like gemv_int8_dec.cu).
 * CPU twins: dsi_moe_route (cpu_deepseek.h) and the sum of dsi__cpu_moe.
 */
#include <math.h>

#include "bf16_util.cuh"
#include "int8_tile.cuh"
#include "kernels.h"

#define ROUTE_THREADS 256

/* Warp-wide (value, index) maximum: the larger value wins, equal values go to the
 * lower index, index -1 (nothing) loses to anything: dsi_moe_route's tie rule. */
static __device__ __forceinline__ void warp_argmax(float &v, int &i) {
    for (int o = 16; o > 0; o >>= 1) {
        const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
        const int i2 = __shfl_xor_sync(0xffffffffu, i, o);
        if (i2 >= 0 && (i < 0 || v2 > v || (v2 == v && i2 < i))) {
            v = v2;
            i = i2;
        }
    }
}

static __device__ __forceinline__ float warp_reduce(float v, bool is_max) {
    for (int o = 16; o > 0; o >>= 1) {
        const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, v2) : v + v2;
    }
    return v;
}

/* dsi_moe_route's selection on the logits in score[], by one warp (warp 0):
 * the experts strided over the lanes, each pick a warp argmax. */
static __device__ void select_experts(const struct dsi_cuda_router *r, float *score, float *choice,
                                      float *allowed, float *gscore, int32_t *idx, float *w) {
    const int E = r->n_experts, G = r->n_group > 0 ? r->n_group : 1, per = E / G, lane = threadIdx.x;
    if (r->scoring == DSI_CUDA_SCORE_SOFTMAX) {
        float mx = -INFINITY, sum = 0.f;
        for (int e = lane; e < E; e += 32)
            mx = fmaxf(mx, score[e]);
        mx = warp_reduce(mx, true);
        for (int e = lane; e < E; e += 32) {
            score[e] = expf(score[e] - mx);
            sum += score[e];
        }
        const float inv = 1.0f / warp_reduce(sum, false);
        for (int e = lane; e < E; e += 32)
            score[e] *= inv;
    } else {
        for (int e = lane; e < E; e += 32)
            score[e] = 1.0f / (1.0f + expf(-score[e]));
    }
    for (int e = lane; e < E; e += 32) {
        choice[e] = score[e] + (r->method == DSI_CUDA_TOPK_NOAUX_TC && r->bias ? r->bias[e] : 0.0f);
        allowed[e] = 1.0f;
    }
    __syncwarp();
    if (r->method != DSI_CUDA_TOPK_GREEDY && G > 1) {
        for (int g = lane; g < G; g += 32) {
            const float *c = choice + g * per;
            if (r->method == DSI_CUDA_TOPK_GROUP_LIMITED) {
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
                gscore[g] = c[b0] + (b1 >= 0 ? c[b1] : 0.0f);
            }
        }
        for (int e = lane; e < E; e += 32)
            allowed[e] = 0.0f;
        __syncwarp();
        for (int k = 0; k < r->topk_group && k < G; k++) {
            float v = -INFINITY;
            int best = -1;
            for (int g = lane; g < G; g += 32)
                if (allowed[g * per] == 0.0f && (best < 0 || gscore[g] > v)) v = gscore[g], best = g;
            warp_argmax(v, best);
            if (best < 0) break;
            for (int i = lane; i < per; i += 32)
                allowed[best * per + i] = 1.0f;
            __syncwarp();
        }
    }
    float sum = 0.0f;
    for (int k = 0; k < r->top_k; k++) {
        float v = -INFINITY;
        int e = -1;
        for (int j = lane; j < E; j += 32)
            if (allowed[j] != 0.0f && (e < 0 || choice[j] > v)) v = choice[j], e = j;
        warp_argmax(v, e);
        if (lane == 0) {
            if (e < 0) { /* fewer allowed experts than top_k: the config check rules this out */
                idx[k] = 0;
                w[k] = 0.0f;
            } else {
                allowed[e] = 0.0f;
                idx[k] = e;
                w[k] = score[e];
                sum += w[k];
            }
        }
        __syncwarp();
    }
    if (lane == 0)
        for (int k = 0; k < r->top_k; k++)
            w[k] = r->norm_topk_prob ? w[k] / (sum + 1e-20f) * r->routed_scaling_factor
                                     : w[k] * r->routed_scaling_factor;
}

static __global__ void __launch_bounds__(ROUTE_THREADS)
    moe_route_kernel(int32_t *idx, float *wout, const float *x, const float *norm_w, int H, float eps,
                     const float *router, struct dsi_cuda_router r) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    const int t = blockIdx.x, E = r.n_experts, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float *xn = sm, *score = xn + H, *choice = score + E, *allowed = choice + E, *gscore = allowed + E;
    const float *xr = x + (size_t)t * H;
    float ss = 0.f;
    for (int i = threadIdx.x; i < H; i += ROUTE_THREADS)
        ss += xr[i] * xr[i];
    ss = block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)H + eps);
    for (int i = threadIdx.x; i < H; i += ROUTE_THREADS)
        xn[i] = norm_w[i] * (xr[i] * inv);
    __syncthreads();
    for (int e = warp; e < E; e += ROUTE_THREADS / 32) {
        const float *wr = router + (size_t)e * H;
        float d = 0.f;
        for (int i = lane; i < H; i += 32)
            d += wr[i] * xn[i];
        for (int o = 16; o > 0; o >>= 1)
            d += __shfl_xor_sync(0xffffffffu, d, o);
        if (lane == 0) score[e] = d;
    }
    __syncthreads();
    if (threadIdx.x < 32)
        select_experts(&r, score, choice, allowed, gscore, idx + (size_t)t * r.top_k,
                       wout + (size_t)t * r.top_k);
}

extern "C" size_t dsi_cuda_moe_route_smem(int hidden, int n_experts, int n_group) {
    return ((size_t)hidden + 3 * (size_t)n_experts + (size_t)(n_group > 0 ? n_group : 1)) * sizeof(float);
}

extern "C" int dsi_cuda_moe_route(int32_t *idx, float *w, const float *x, const float *norm_w, int n_tok,
                                  int hidden, float eps, const float *router, const struct dsi_cuda_router *r,
                                  cudaStream_t s) {
    if (n_tok < 0 || hidden <= 0 || r->n_experts <= 0 || r->top_k <= 0 || r->top_k > r->n_experts ||
        (r->n_group > 0 && r->n_experts % r->n_group) || !(eps >= 0.f))
        return DSI_EINVAL;
    if (n_tok == 0) return 0;
    size_t smem = dsi_cuda_moe_route_smem(hidden, r->n_experts, r->n_group);
    if (smem > 48 * 1024) {
        if (smem > 227 * 1024 ||
            DSI_CUDA_CHECK(cudaFuncSetAttribute(moe_route_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                (int)smem)))
            return DSI_EINVAL;
    }
    moe_route_kernel<<<n_tok, ROUTE_THREADS, smem, s>>>(idx, w, x, norm_w, hidden, eps, router, *r);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

static __global__ void moe_combine_kernel(float *out, int accumulate, const float *y, const int32_t *slot,
                                          const float *w, int K, int H) {
    const int t = blockIdx.x;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        float o = accumulate ? out[(size_t)t * H + i] : 0.f;
        for (int k = 0; k < K; k++)
            o += w[(size_t)t * K + k] * y[(size_t)slot[(size_t)t * K + k] * H + i];
        out[(size_t)t * H + i] = o;
    }
}

extern "C" int dsi_cuda_moe_combine(float *out, int accumulate, const float *y, const int32_t *slot,
                                    const float *w, int n_tok, int top_k, int hidden, cudaStream_t s) {
    if (n_tok < 0 || top_k <= 0 || hidden <= 0) return DSI_EINVAL;
    if (n_tok == 0) return 0;
    moe_combine_kernel<<<n_tok, 256, 0, s>>>(out, accumulate, y, slot, w, top_k, hidden);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

/* One block: ranks by atomics (the position of a row inside its expert's run
 * only decides which block row computes it, never its value), then the runs. */
static __global__ void moe_group_kernel(int32_t *off, int32_t *asg, int32_t *slot, const int32_t *idx, int n,
                                        int E) {
    extern __shared__ int cnt[]; /* E + 1 */
    for (int e = threadIdx.x; e <= E; e += blockDim.x)
        cnt[e] = 0;
    __syncthreads();
    for (int a = threadIdx.x; a < n; a += blockDim.x) {
        int e = idx[a];
        e = e < 0 || e >= E ? 0 : e; /* the router writes valid ids; keep memory safe */
        slot[a] = atomicAdd(&cnt[e + 1], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) { /* runs, and the experts that have one, ascending */
        int n_act = 0;
        for (int e = 0; e < E; e++) {
            if (cnt[e + 1] > 0) off[E + 1 + n_act++] = e;
            cnt[e + 1] += cnt[e];
        }
        off[2 * E + 1] = n_act;
    }
    __syncthreads();
    for (int e = threadIdx.x; e <= E; e += blockDim.x)
        off[e] = cnt[e];
    for (int a = threadIdx.x; a < n; a += blockDim.x) {
        int e = idx[a];
        e = e < 0 || e >= E ? 0 : e;
        int p = cnt[e] + slot[a];
        slot[a] = p;
        asg[p] = a;
    }
}

extern "C" int dsi_cuda_moe_group(int32_t *off, int32_t *asg, int32_t *slot, const int32_t *idx, int n, int E,
                                  cudaStream_t s) {
    if (n < 0 || E <= 0 || E > 4096) return DSI_EINVAL;
    moe_group_kernel<<<1, 1024, (size_t)(E + 1) * sizeof(int), s>>>(off, asg, slot, idx, n, E);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

/* Grouped INT8 GEMV over the tiled layout (int8_tile.cuh): block (row tile rt,
 * expert e) computes rows [16 rt, 16 rt + 16) of expert e for the rows of its
 * run, GM at a time, 8 warps over interleaved column tiles, fp32 sums of
 * exactly converted weights, the warps met in shared memory in a fixed order. */
#define GM 8
static __global__ void __launch_bounds__(256)
    moe_gemv_kernel(float *__restrict__ y, const uint16_t *__restrict__ x, const struct dsi_cuda_moe_w *w,
                    const int32_t *__restrict__ off, const int32_t *__restrict__ asg, int x_div,
                    int n_experts, int N, int K, int k32) {
    __shared__ float red[8][GM][16];
    const int rt = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int t = lane & 3, g = lane >> 2;
    if ((int)blockIdx.y >= off[2 * n_experts + 1]) return; /* fewer experts in use than blocks */
    const int e = off[n_experts + 1 + blockIdx.y], p0 = off[e], cnt = off[e + 1] - p0;
    if (cnt <= 0) return;
    const uint4 *q = reinterpret_cast<const uint4 *>(w[e].q) + (size_t)rt * k32 * Q8_TILE_U4 + lane;
    const float *scale = w[e].scale;
    for (int c0 = 0; c0 < cnt; c0 += GM) {
        const int m = min(GM, cnt - c0);
        const uint16_t *xr[GM];
#pragma unroll
        for (int i = 0; i < GM; i++) {
            int p = p0 + c0 + (i < m ? i : 0);
            xr[i] = x + (size_t)(x_div > 0 ? asg[p] / x_div : p) * K;
        }
        float acc[GM][2];
#pragma unroll
        for (int i = 0; i < GM; i++)
            acc[i][0] = acc[i][1] = 0.f;
        for (int kt = warp; kt < k32; kt += 8) {
            const uint4 v = q8_ld_weights(q + (size_t)kt * Q8_TILE_U4);
            const uint32_t wd[4] = {v.x ^ 0x80808080u, v.y ^ 0x80808080u, v.z ^ 0x80808080u,
                                    v.w ^ 0x80808080u};
#pragma unroll
            for (int j = 0; j < 4; j++) { /* word j = 2s + hi: columns c, c + 1 */
                const int c = kt * 32 + (j >> 1) * 16 + (j & 1) * 8 + 2 * t;
                if (c >= K) continue; /* the zero padding of the last tile: x ends at K */
                const float w0 = q8_byte_f32(wd[j], 0), w1 = q8_byte_f32(wd[j], 1);
                const float w2 = q8_byte_f32(wd[j], 2), w3 = q8_byte_f32(wd[j], 3);
#pragma unroll
                for (int i = 0; i < GM; i++) {
                    if (i >= m) break;
                    const uint32_t xx = *reinterpret_cast<const uint32_t *>(xr[i] + c);
                    const float x0 = __uint_as_float(xx << 16), x1 = __uint_as_float(xx & 0xffff0000u);
                    acc[i][0] += w0 * x0 + w1 * x1;
                    acc[i][1] += w2 * x0 + w3 * x1;
                }
            }
        }
#pragma unroll
        for (int i = 0; i < GM; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                float v = acc[i][h];
                v += __shfl_xor_sync(0xffffffffu, v, 1);
                v += __shfl_xor_sync(0xffffffffu, v, 2);
                acc[i][h] = v;
            }
        if (t == 0)
#pragma unroll
            for (int i = 0; i < GM; i++) {
                red[warp][i][g] = acc[i][0];
                red[warp][i][g + 8] = acc[i][1];
            }
        __syncthreads();
        if (threadIdx.x < GM * 16) {
            const int i = threadIdx.x >> 4, rr = threadIdx.x & 15, r = rt * 16 + rr;
            if (i < m && r < N) {
                float s = 0.f;
                for (int wp = 0; wp < 8; wp++)
                    s += red[wp][i][rr];
                y[(size_t)(p0 + c0 + i) * N + r] = s * scale[r];
            }
        }
        __syncthreads();
    }
}

extern "C" int dsi_cuda_moe_gemv_int8(float *y, const uint16_t *x, const struct dsi_cuda_moe_w *w,
                                      const int32_t *off, const int32_t *asg, int x_div, int n_experts,
                                      int n_rows, int n, int k, cudaStream_t s) {
    if (n_experts <= 0 || n_rows <= 0 || n <= 0 || k <= 0 || (k & 1) || x_div < 0 || ((uintptr_t)x & 3))
        return DSI_EINVAL;
    const int k32 = (k + 31) / 32;
    /* at most min(E, rows) experts are in use: one block row each */
    const int by = n_experts < n_rows ? n_experts : n_rows;
    if (by > 65535) return DSI_EINVAL;
    moe_gemv_kernel<<<dim3((unsigned)((n + 15) / 16), (unsigned)by), 256, 0, s>>>(y, x, w, off, asg, x_div,
                                                                                  n_experts, n, k, k32);
    return DSI_CUDA_CHECK(cudaGetLastError());
}
