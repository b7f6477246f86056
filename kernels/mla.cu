/*
 * mla.cu: DeepSeek-V2/V3 multi-head latent attention (MLA) over the compressed
 * KV cache, the layout of src/backend/cpu/cpu_deepseek.h: per token and layer
 * kv_lora_rank bf16 values of the normalised latent c_kv, then qk_rope_head_dim
 * of the rotated shared rope key k_pe, slot = block_id * block_size + pos % block_size.
 *
 * Two kernels; the W_UK / W_UV products around them are cuBLAS batched GEMMs
 * in the backend (src/backend/cuda/cuda_deepseek.c):
 *  - mla_kv_rope: per new token, RMSNorm of the latent (fp32), RoPE of k_pe and
 *    of every head's q_pe (in place, fp32), and the bf16 store of (c_kv, k_pe);
 *  - mla_attn: per (token, head) the absorbed attention
 *        s_j = scale * (q_lat . c_kv_j + q_pe . k_pe_j),  o_lat = softmax(s) . c_kv
 *    over the token's causal context (pos + 1 entries), online softmax in fp32
 *    over chunks of positions; decode steps split the context over n_splits
 *    blocks (partial sums, maxima and normalisers in work, then mla_combine
 *    rescales them to the largest maximum). One block of MLA_THREADS threads: a warp per
 *    position for the scores, a thread per latent column for o_lat (so R <=
 *    MLA_THREADS * MLA_COLS). Correct for any mix of prefill and decode rows;
 *    every head re-reads the token's context (from L2 after the first), which
 *    is the price of the simple form (bench/RESULTS.md has the timings).
 * CPU twin: dsi_mla_store / dsi_mla_head (cpu_deepseek.h).
 */
#include <math.h>

#include "bf16_util.cuh"
#include "kernels.h"
#include "rope.cuh"

#define MLA_THREADS 128
#define MLA_COLS 8 /* latent columns per thread: R <= 1024 */
#define MLA_CHUNK 32

static __global__ void mla_kv_rope_kernel(struct dsi_cuda_mla_rope_args a) {
    __shared__ float red[32], cs[ROPE_TAB], sn[ROPE_TAB];
    const int t = blockIdx.x, R = a.kv_lora_rank, rope = a.rope_dim, half = rope / 2;
    const int width = R + rope;
    const float *kv = a.kva + (size_t)t * width;
    float ss = 0.f;
    for (int i = threadIdx.x; i < R; i += blockDim.x)
        ss += kv[i] * kv[i];
    ss = block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)R + a.eps);
    uint16_t *dst = a.cache + (size_t)a.slots[t] * width;
    for (int i = threadIdx.x; i < R; i += blockDim.x)
        dst[i] = f2bf(a.norm_w[i] * (kv[i] * inv));
    const float p = (float)a.pos[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float s, c;
        sincosf(p * a.inv_freq[i], &s, &c);
        cs[i] = c * a.attn_factor;
        sn[i] = s * a.attn_factor;
    }
    __syncthreads();
    /* pair i: (2i, 2i+1) interleaved, (i, i + half) rotate-half; head -1 is k_pe */
    for (int j = threadIdx.x; j < (a.n_heads + 1) * half; j += blockDim.x) {
        int h = j / half - 1, i = j % half;
        int ia = a.interleave ? 2 * i : i, ib = a.interleave ? 2 * i + 1 : i + half;
        if (h < 0) {
            float x = kv[R + ia], y = kv[R + ib];
            rotate(&x, &y, cs[i], sn[i]);
            dst[R + ia] = f2bf(x);
            dst[R + ib] = f2bf(y);
        } else {
            float *v = a.q + (size_t)t * a.q_stride + (size_t)h * (a.nope + rope) + a.nope;
            rotate(&v[ia], &v[ib], cs[i], sn[i]);
        }
    }
}

extern "C" int dsi_cuda_mla_kv_rope(const struct dsi_cuda_mla_rope_args *a, int n_tok, cudaStream_t s) {
    if (n_tok < 0 || a->kv_lora_rank <= 0 || a->rope_dim <= 0 || a->rope_dim % 2 ||
        a->rope_dim / 2 > ROPE_TAB || a->n_heads <= 0 || a->nope < 0 || !(a->eps >= 0.f))
        return DSI_EINVAL;
    if (n_tok == 0) return 0;
    mla_kv_rope_kernel<<<n_tok, 128, 0, s>>>(*a);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __global__ void __launch_bounds__(MLA_THREADS) mla_attn_kernel(struct dsi_cuda_mla_attn_args a) {
    extern __shared__ float sm[];
    __shared__ int s_ctx, s_bt;
    const int t = blockIdx.x, h = blockIdx.y, nh = gridDim.y, R = a.kv_lora_rank, rope = a.rope_dim;
    const int W = R + rope, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = MLA_THREADS / 32;
    float *qs = sm, *qp = sm + R, *sc = qp + rope;
    if (threadIdx.x == 0) { /* the sequence of row t; -1: the cuBLAS path takes it */
        s_ctx = 0;
        s_bt = 0;
        for (int i = 0; i < a.n_seqs; i++) {
            const struct dsi_cuda_attn_seq q = a.seqs[i];
            if (t >= q.q_row && t < q.q_row + q.n_q) {
                s_ctx = dsi_cuda_attn_is_long(q.n_q, q.pos, a.long_q, a.long_ctx) ? -1
                                                                                  : q.pos + (t - q.q_row) + 1;
                s_bt = q.bt_off;
            }
        }
    }
    __syncthreads();
    if (s_ctx < 0) return;
    for (int i = threadIdx.x; i < R; i += MLA_THREADS)
        qs[i] = a.q_lat[((size_t)t * nh + h) * R + i];
    for (int i = threadIdx.x; i < rope; i += MLA_THREADS)
        qp[i] = a.q[(size_t)t * a.q_stride + (size_t)h * (a.nope + rope) + a.nope + i];
    __syncthreads();
    const int n_ctx = s_ctx, S = gridDim.z, z = blockIdx.z;
    const int32_t *bt = a.block_tables + s_bt;
    /* split z of S takes whole chunks [z*per, (z+1)*per) of the context */
    const int per = ((n_ctx + S - 1) / S + MLA_CHUNK - 1) / MLA_CHUNK * MLA_CHUNK;
    const int p_lo = min(n_ctx, z * per), p_hi = min(n_ctx, p_lo + per);
    float acc[MLA_COLS];
#pragma unroll
    for (int k = 0; k < MLA_COLS; k++)
        acc[k] = 0.f;
    float m = -INFINITY, l = 0.f;
    for (int p0 = p_lo; p0 < p_hi; p0 += MLA_CHUNK) {
        const int n = min(MLA_CHUNK, p_hi - p0);
        for (int j = warp; j < n; j += nw) {
            const int p = p0 + j;
            const uint16_t *e =
                a.cache + ((size_t)bt[p / a.block_size] * a.block_size + p % a.block_size) * W;
            float d = 0.f;
            for (int i = lane; i < R; i += 32)
                d += qs[i] * bf2f(e[i]);
            for (int i = lane; i < rope; i += 32)
                d += qp[i] * bf2f(e[R + i]);
            d = warp_sum(d);
            if (lane == 0) sc[j] = d * a.scale;
        }
        __syncthreads();
        float mc = m;
        for (int j = 0; j < n; j++)
            mc = fmaxf(mc, sc[j]);
        const float corr = expf(m - mc); /* 0 on the first chunk (m = -inf) */
        l *= corr;
#pragma unroll
        for (int k = 0; k < MLA_COLS; k++)
            acc[k] *= corr;
        for (int j = 0; j < n; j++) {
            const int p = p0 + j;
            const float pj = expf(sc[j] - mc);
            const uint16_t *e =
                a.cache + ((size_t)bt[p / a.block_size] * a.block_size + p % a.block_size) * W;
            l += pj;
#pragma unroll
            for (int k = 0; k < MLA_COLS; k++) {
                const int c = threadIdx.x + k * MLA_THREADS;
                if (c < R) acc[k] += pj * bf2f(e[c]);
            }
        }
        m = mc;
        __syncthreads(); /* sc is rewritten by the next chunk */
    }
    if (S > 1) { /* partial: unnormalised sums, running max and sum of this split */
        float *wp = a.work + (((size_t)t * nh + h) * S + z) * (R + 2);
#pragma unroll
        for (int k = 0; k < MLA_COLS; k++) {
            const int c = threadIdx.x + k * MLA_THREADS;
            if (c < R) wp[c] = acc[k];
        }
        if (threadIdx.x == 0) {
            wp[R] = m;
            wp[R + 1] = l;
        }
        return;
    }
    const float inv = l > 0.f ? 1.0f / l : 0.f;
    float *o = a.o_lat + ((size_t)t * nh + h) * R;
#pragma unroll
    for (int k = 0; k < MLA_COLS; k++) {
        const int c = threadIdx.x + k * MLA_THREADS;
        if (c < R) o[c] = acc[k] * inv;
    }
}

/* The same attention with MH_HEADS heads of a row per block: the latent rows of
 * a chunk are read from memory once into shared memory and shared by all the
 * heads (the per-head kernel reads them once per head). Scores: a warp per
 * (head, position) over shared memory; softmax: a warp per head; output: a
 * thread per latent column pair holds all heads' sums (R <= MH_THREADS *
 * MH_COLS). Same partials layout for the split combine. */
#define MH_HEADS 16
#define MH_THREADS 256
#define MH_COLS 2
static __global__ void __launch_bounds__(MH_THREADS) mla_attn_heads_kernel(struct dsi_cuda_mla_attn_args a) {
    extern __shared__ float sm[];
    __shared__ int s_ctx, s_bt;
    const int t = blockIdx.x, h0 = blockIdx.y * MH_HEADS, z = blockIdx.z, S = gridDim.z, nh = a.n_heads;
    const int nhb = min(MH_HEADS, nh - h0), R = a.kv_lora_rank, rope = a.rope_dim, W = R + rope;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = MH_THREADS / 32;
    float *qs = sm;                                                  /* (MH_HEADS, W) */
    uint16_t *lat = reinterpret_cast<uint16_t *>(qs + MH_HEADS * W); /* (MLA_CHUNK, W) */
    float *pr = reinterpret_cast<float *>(lat + MLA_CHUNK * W);      /* (MH_HEADS, MLA_CHUNK) */
    float *mrun = pr + MH_HEADS * MLA_CHUNK, *lrun = mrun + MH_HEADS, *corr = lrun + MH_HEADS;
    if (threadIdx.x == 0) {
        s_ctx = 0;
        s_bt = 0;
        for (int i = 0; i < a.n_seqs; i++) {
            const struct dsi_cuda_attn_seq q = a.seqs[i];
            if (t >= q.q_row && t < q.q_row + q.n_q) {
                s_ctx = dsi_cuda_attn_is_long(q.n_q, q.pos, a.long_q, a.long_ctx) ? -1
                                                                                  : q.pos + (t - q.q_row) + 1;
                s_bt = q.bt_off;
            }
        }
    }
    for (int i = threadIdx.x; i < nhb * W; i += MH_THREADS) {
        const int h = i / W, d = i % W;
        qs[i] = d < R ? a.q_lat[((size_t)t * nh + h0 + h) * R + d]
                      : a.q[(size_t)t * a.q_stride + (size_t)(h0 + h) * (a.nope + rope) + a.nope + (d - R)];
    }
    if (threadIdx.x < MH_HEADS) {
        mrun[threadIdx.x] = -INFINITY;
        lrun[threadIdx.x] = 0.f;
    }
    __syncthreads();
    if (s_ctx < 0) return;
    const int n_ctx = s_ctx;
    const int32_t *bt = a.block_tables + s_bt;
    const int per = ((n_ctx + S - 1) / S + MLA_CHUNK - 1) / MLA_CHUNK * MLA_CHUNK;
    const int p_lo = min(n_ctx, z * per), p_hi = min(n_ctx, p_lo + per), W2 = W / 2;
    float acc[MH_HEADS][MH_COLS];
#pragma unroll
    for (int h = 0; h < MH_HEADS; h++)
#pragma unroll
        for (int k = 0; k < MH_COLS; k++)
            acc[h][k] = 0.f;
    for (int p0 = p_lo; p0 < p_hi; p0 += MLA_CHUNK) {
        const int n = min(MLA_CHUNK, p_hi - p0);
        for (int i = threadIdx.x; i < n * W2; i += MH_THREADS) { /* the chunk's rows, 4 bytes at a time */
            const int j = i / W2, d2 = i % W2, p = p0 + j;
            const uint32_t *row = reinterpret_cast<const uint32_t *>(
                a.cache + ((size_t)bt[p / a.block_size] * a.block_size + p % a.block_size) * W);
            reinterpret_cast<uint32_t *>(lat)[i] = row[d2];
        }
        __syncthreads();
        for (int hj = warp; hj < nhb * n; hj += nw) {
            const int h = hj / n, j = hj % n;
            const float *qh = qs + h * W;
            const uint16_t *e = lat + j * W;
            float d = 0.f;
            for (int i = lane; i < W; i += 32)
                d += qh[i] * bf2f(e[i]);
            d = warp_sum(d);
            if (lane == 0) pr[h * MLA_CHUNK + j] = d * a.scale;
        }
        __syncthreads();
        for (int h = warp; h < nhb; h += nw) { /* online softmax, a warp per head */
            const float sv = lane < n ? pr[h * MLA_CHUNK + lane] : -INFINITY;
            float mc = sv;
            for (int o = 16; o > 0; o >>= 1)
                mc = fmaxf(mc, __shfl_xor_sync(0xffffffffu, mc, o));
            mc = fmaxf(mc, mrun[h]);
            const float pj = lane < n ? expf(sv - mc) : 0.f;
            const float ls = warp_sum(pj);
            if (lane < MLA_CHUNK) pr[h * MLA_CHUNK + lane] = pj;
            if (lane == 0) {
                corr[h] = expf(mrun[h] - mc); /* 0 on the first chunk (mrun = -inf) */
                lrun[h] = lrun[h] * corr[h] + ls;
                mrun[h] = mc;
            }
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < MH_COLS; k++) {
            const int c = threadIdx.x + k * MH_THREADS;
            if (c >= R) continue;
#pragma unroll
            for (int h = 0; h < MH_HEADS; h++)
                if (h < nhb) acc[h][k] *= corr[h];
            for (int j = 0; j < n; j++) {
                const float v = bf2f(lat[j * W + c]);
#pragma unroll
                for (int h = 0; h < MH_HEADS; h++)
                    if (h < nhb) acc[h][k] += pr[h * MLA_CHUNK + j] * v;
            }
        }
        __syncthreads(); /* lat and pr are rewritten by the next chunk */
    }
#pragma unroll
    for (int h = 0; h < MH_HEADS; h++) {
        if (h >= nhb) break;
        const size_t th = (size_t)t * nh + h0 + h;
        if (S > 1) {
            float *wp = a.work + (th * S + z) * (R + 2);
#pragma unroll
            for (int k = 0; k < MH_COLS; k++) {
                const int c = threadIdx.x + k * MH_THREADS;
                if (c < R) wp[c] = acc[h][k];
            }
            if (threadIdx.x == 0) {
                wp[R] = mrun[h];
                wp[R + 1] = lrun[h];
            }
        } else {
            const float inv = lrun[h] > 0.f ? 1.0f / lrun[h] : 0.f;
#pragma unroll
            for (int k = 0; k < MH_COLS; k++) {
                const int c = threadIdx.x + k * MH_THREADS;
                if (c < R) a.o_lat[th * R + c] = acc[h][k] * inv;
            }
        }
    }
}

static size_t heads_smem(int R, int rope) {
    const size_t W = (size_t)(R + rope);
    return MH_HEADS * W * 4 + MLA_CHUNK * W * 2 + (MH_HEADS * MLA_CHUNK + 3 * MH_HEADS) * 4;
}

extern "C" int dsi_cuda_mla_heads_kernel_takes(int kv_lora_rank, int rope_dim) {
    return kv_lora_rank <= MH_THREADS * MH_COLS && (kv_lora_rank + rope_dim) % 2 == 0 &&
           heads_smem(kv_lora_rank, rope_dim) <= 200 * 1024;
}

/* o_lat of (row t, head h) from its S partials: rescaled to the largest max. */
static __global__ void mla_combine_kernel(float *o_lat, const float *work, int R, int S) {
    const int t = blockIdx.x, h = blockIdx.y, nh = gridDim.y;
    const float *wp = work + ((size_t)t * nh + h) * S * (R + 2);
    float M = -INFINITY;
    for (int z = 0; z < S; z++)
        M = fmaxf(M, wp[(size_t)z * (R + 2) + R]);
    float L = 0.f;
    for (int z = 0; z < S; z++) {
        const float mz = wp[(size_t)z * (R + 2) + R];
        L += mz == -INFINITY ? 0.f : expf(mz - M) * wp[(size_t)z * (R + 2) + R + 1];
    }
    const float inv = L > 0.f ? 1.0f / L : 0.f;
    for (int c = threadIdx.x; c < R; c += blockDim.x) {
        float v = 0.f;
        for (int z = 0; z < S; z++) {
            const float mz = wp[(size_t)z * (R + 2) + R];
            if (mz != -INFINITY) v += expf(mz - M) * wp[(size_t)z * (R + 2) + c];
        }
        o_lat[((size_t)t * nh + h) * R + c] = v * inv;
    }
}

/* Row r of a long prefill: (n_heads, n_q, R + rope) bf16 = [q_lat_h | q_pe_h] * scale. */
static __global__ void mla_q_pack_kernel(uint16_t *qb, const float *q_lat, const float *q, int q_stride,
                                         int n_q, int n_heads, int nope, int R, int rope, float scale) {
    const int r = blockIdx.x, W = R + rope;
    for (int i = threadIdx.x; i < n_heads * W; i += blockDim.x) {
        const int h = i / W, d = i % W;
        const float v = d < R ? q_lat[((size_t)r * n_heads + h) * R + d]
                              : q[(size_t)r * q_stride + (size_t)h * (nope + rope) + nope + (d - R)];
        qb[((size_t)h * n_q + r) * W + d] = f2bf(v * scale);
    }
}

extern "C" int dsi_cuda_mla_q_pack(uint16_t *qb, const float *q_lat, const float *q, int q_stride, int n_q,
                                   int n_heads, int nope, int kv_lora_rank, int rope_dim, float scale,
                                   cudaStream_t s) {
    if (n_q <= 0 || n_heads <= 0 || nope < 0 || kv_lora_rank <= 0 || rope_dim <= 0) return DSI_EINVAL;
    mla_q_pack_kernel<<<n_q, 256, 0, s>>>(qb, q_lat, q, q_stride, n_q, n_heads, nope, kv_lora_rank, rope_dim,
                                          scale);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

extern "C" size_t dsi_cuda_mla_work_bytes(int n_tok, int n_heads, int kv_lora_rank, int n_splits) {
    return (size_t)n_tok * (size_t)n_heads * (size_t)n_splits * ((size_t)kv_lora_rank + 2) * sizeof(float);
}

extern "C" int dsi_cuda_mla_attn(const struct dsi_cuda_mla_attn_args *a, int n_tok, cudaStream_t s) {
    if (n_tok < 0 || a->n_heads <= 0 || a->n_heads > 65535 || a->kv_lora_rank <= 0 ||
        a->kv_lora_rank > MLA_THREADS * MLA_COLS || a->rope_dim <= 0 || a->nope < 0 || a->block_size <= 0 ||
        a->n_seqs <= 0)
        return DSI_EINVAL;
    if (n_tok == 0) return 0;
    size_t smem = (size_t)(a->kv_lora_rank + a->rope_dim + MLA_CHUNK) * sizeof(float);
    const int S = a->n_splits > 1 ? a->n_splits : 1;
    if (smem > 48 * 1024 || S > 65535 ||
        (S > 1 &&
         (!a->work || dsi_cuda_mla_work_bytes(n_tok, a->n_heads, a->kv_lora_rank, S) > a->work_bytes)))
        return DSI_EINVAL;
    if (a->variant == 1 && dsi_cuda_mla_heads_kernel_takes(a->kv_lora_rank, a->rope_dim)) {
        const size_t hs = heads_smem(a->kv_lora_rank, a->rope_dim);
        if (DSI_CUDA_CHECK(cudaFuncSetAttribute(mla_attn_heads_kernel,
                                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)hs)))
            return DSI_ECUDA;
        const unsigned hg = (unsigned)((a->n_heads + MH_HEADS - 1) / MH_HEADS);
        mla_attn_heads_kernel<<<dim3((unsigned)n_tok, hg, (unsigned)S), MH_THREADS, hs, s>>>(*a);
    } else {
        mla_attn_kernel<<<dim3((unsigned)n_tok, (unsigned)a->n_heads, (unsigned)S), MLA_THREADS, smem, s>>>(
            *a);
    }
    if (S > 1)
        mla_combine_kernel<<<dim3((unsigned)n_tok, (unsigned)a->n_heads), MLA_THREADS, 0, s>>>(
            a->o_lat, a->work, a->kv_lora_rank, S);
    return DSI_CUDA_CHECK(cudaGetLastError());
}
