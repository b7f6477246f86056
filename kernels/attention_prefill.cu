/*
 * attention_prefill.cu: causal attention of prompts (several queries per
 * sequence) over the paged KV cache; the cache layout is attention.cu's.
 *
 * For head_dim <= 128, flash-attention 2 on the tensor cores: grid
 * (64-query tiles, heads, seqs), 4 warps of 16 query rows, 64-key K/V tiles by
 * cp.async, S = Q K^T and O += P V by mma.sync with q and P as bf16 hi + lo
 * pairs, the online softmax and P in registers. Larger heads: the CUDA-core
 * kernel (tiles of 16 queries x 32 keys staged as fp32, online softmax per
 * row), or the cuBLAS path of the backend for long prompts.
 */
#include <cuda_bf16.h>
#include <math.h>

#include "attention_util.cuh"
#include "bf16_util.cuh"
#include "kernels.h"

/* ---- long prefill through cuBLAS: gather, pack, causal softmax ---- */

/* K and V of one sequence, positions 0..ctx-1, to contiguous (n_kv, ctx, hd) bf16. */
static __global__ void kv_gather_kernel(uint16_t *kc, uint16_t *vc, const uint16_t *k_cache,
                                        const uint16_t *v_cache, const int32_t *bt, int block_size, int ctx,
                                        int n_kv, int hd) {
    const int t = blockIdx.x, kv_dim = n_kv * hd;
    const size_t slot = (size_t)bt[t / block_size] * block_size + t % block_size;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        int h = i / hd, d = i % hd;
        size_t o = ((size_t)h * ctx + t) * hd + d;
        kc[o] = k_cache[slot * kv_dim + i];
        vc[o] = v_cache[slot * kv_dim + i];
    }
}

extern "C" int dsi_cuda_kv_gather(uint16_t *kc, uint16_t *vc, const uint16_t *k_cache,
                                  const uint16_t *v_cache, const int32_t *bt, int block_size, int ctx,
                                  int n_kv, int hd, cudaStream_t s) {
    if (ctx <= 0 || n_kv <= 0 || hd <= 0 || block_size <= 0) return DSI_EINVAL;
    kv_gather_kernel<<<ctx, 256, 0, s>>>(kc, vc, k_cache, v_cache, bt, block_size, ctx, n_kv, hd);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

/* q rows (fp32, RoPE applied) -> (n_heads, n_q, hd) bf16, times the softmax scale. */
static __global__ void q_pack_kernel(uint16_t *qb, const float *q, int q_stride, int n_q, int n_heads, int hd,
                                     float scale) {
    const int r = blockIdx.x;
    for (int i = threadIdx.x; i < n_heads * hd; i += blockDim.x) {
        int h = i / hd, d = i % hd;
        qb[((size_t)h * n_q + r) * hd + d] = f2bf(q[(size_t)r * q_stride + i] * scale);
    }
}

extern "C" int dsi_cuda_q_pack(uint16_t *qb, const float *q, int q_stride, int n_q, int n_heads, int hd,
                               float scale, cudaStream_t s) {
    if (n_q <= 0 || n_heads <= 0 || hd <= 0 || q_stride < n_heads * hd) return DSI_EINVAL;
    q_pack_kernel<<<n_q, 256, 0, s>>>(qb, q, q_stride, n_q, n_heads, hd, scale);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

/* Row (h, i) of scores (n_heads, n_q, ctx) fp32 -> probabilities bf16, causal:
 * query i sits at position pos + i and sees keys 0..pos+i. */
static __global__ void causal_softmax_kernel(uint16_t *p, const float *sc, int n_q, int ctx, int pos) {
    __shared__ float red[32];
    const int i = blockIdx.x, h = blockIdx.y, lim = pos + i + 1;
    const float *row = sc + ((size_t)h * n_q + i) * ctx;
    uint16_t *out = p + ((size_t)h * n_q + i) * ctx;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < lim; j += blockDim.x)
        m = fmaxf(m, row[j]);
    for (int o = 16; o > 0; o >>= 1)
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) red[warp] = m;
    __syncthreads();
    m = red[0];
    for (int w = 1; w < nw; w++)
        m = fmaxf(m, red[w]);
    __syncthreads();
    float sum = 0.f;
    for (int j = threadIdx.x; j < lim; j += blockDim.x)
        sum += expf(row[j] - m);
    for (int o = 16; o > 0; o >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) red[warp] = sum;
    __syncthreads();
    sum = 0.f;
    for (int w = 0; w < nw; w++)
        sum += red[w];
    const float inv = 1.f / sum;
    for (int j = threadIdx.x; j < ctx; j += blockDim.x)
        out[j] = j < lim ? f2bf(expf(row[j] - m) * inv) : (uint16_t)0;
}

extern "C" int dsi_cuda_causal_softmax(uint16_t *p, const float *scores, int n_heads, int n_q, int ctx,
                                       int pos, cudaStream_t s) {
    if (n_heads <= 0 || n_heads > 65535 || n_q <= 0 || pos < 0 || ctx < pos + n_q) return DSI_EINVAL;
    causal_softmax_kernel<<<dim3(n_q, n_heads), 256, 0, s>>>(p, scores, n_q, ctx, pos);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

/* ---- prefill on the tensor cores (flash-attention 2 style) ----
 * Block: 64 queries of one head of one sequence, 4 warps of 16 query rows.
 * Per 64-key tile of K/V (cp.async from the paged cache, rows padded by 16
 * bytes): S = Q K^T with mma.sync (q as bf16 hi + lo, two products), the
 * causal mask, an online softmax per row in registers (a row's 64 scores sit
 * in the 4 lanes of a quad), then O += P V with P converted from the S
 * accumulators straight into A fragments (bf16 hi + lo, no shared memory) and
 * V through ldmatrix.trans. O in registers: head_dim <= 128 (hd / 8 n-tiles
 * of 4 floats per thread); larger heads take the CUDA-core kernel below. */
#define FA_QT 64
#define FA_KT 64
#define FA_THREADS 128
#define FA_MAX_HD DSI_CUDA_ATTN_FA_MAX_HD

static size_t fa_smem(int hd) {
    return (size_t)4 * FA_QT * (hd + 8) * 2; /* q hi, q lo, K, V: (64, hd + 8) bf16 each */
}

static __global__ void __launch_bounds__(FA_THREADS) attn_prefill_fa_kernel(struct dsi_cuda_attn_args a) {
    extern __shared__ __align__(16) unsigned char dsm[];
    const int hd = a.head_dim, kst = hd + 8, g = a.n_heads / a.n_kv_heads, kv_dim = a.n_kv_heads * hd;
    /* heads fastest and the last query tiles (most keys under the causal mask)
     * first: the longest blocks start in the first wave, the heads of one KV
     * head run side by side and meet in L2 on its tiles */
    const int h = blockIdx.x, kvh = h / g, si = blockIdx.z;
    const struct dsi_cuda_attn_seq sq = a.seqs[si];
    const int q0 = (gridDim.y - 1 - blockIdx.y) * FA_QT;
    if (q0 >= sq.n_q) return;
    if (dsi_cuda_attn_is_long(sq.n_q, sq.pos, a.long_q, a.long_ctx)) return; /* the cuBLAS path has it */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, lg = lane >> 2, lt = lane & 3;
    uint16_t *qh = reinterpret_cast<uint16_t *>(dsm), *ql = qh + FA_QT * kst, *ks = ql + FA_QT * kst,
             *vs = ks + FA_KT * kst;
    const int32_t *bt = a.block_tables + sq.bt_off;
    const int last_q = min(sq.n_q, q0 + FA_QT) - 1, n_keys = sq.pos + last_q + 1, cpr = hd / 8;

    for (int i = tid; i < FA_QT * hd; i += FA_THREADS) {
        int r = i / hd, d = i % hd;
        float v = q0 + r < sq.n_q
                      ? a.q[(size_t)(sq.q_row + q0 + r) * a.q_stride + (size_t)h * hd + d] * a.scale
                      : 0.f;
        split_bf16(v, &qh[r * kst + d], &ql[r * kst + d]);
    }
    /* rows lg and lg + 8 of this warp's 16: query positions */
    const int qr0 = q0 + warp * 16 + lg, p0 = sq.pos + qr0, p1 = p0 + 8;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
    float o[FA_MAX_HD / 8][4];
#pragma unroll
    for (int i = 0; i < FA_MAX_HD / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            o[i][e] = 0.f;
    const uint16_t *qa_h = qh + (warp * 16 + (lane & 15)) * kst + (lane >> 4) * 8;
    const uint16_t *qa_l = ql + (warp * 16 + (lane & 15)) * kst + (lane >> 4) * 8;
    /* ldmatrix (non-trans) of K rows for B: key row (lane & 7) + ((lane >> 4) << 3), column half (lane >> 3)
     * & 1 */
    const int kb_row = (lane & 7) + ((lane >> 4) << 3), kb_col = ((lane >> 3) & 1) * 8;

    /* one K/V stage: a second, loading the next tile during this one, measured
     * slower (2k prompt: 438 against 354 us per layer; fewer blocks per SM) */
    for (int k0 = 0; k0 < n_keys; k0 += FA_KT) {
        __syncthreads(); /* q written / the previous tile consumed */
        for (int i = tid; i < FA_KT * cpr; i += FA_THREADS) {
            int j = i / cpr, c = i % cpr, t = k0 + j;
            bool in = t < n_keys;
            size_t off = in ? (size_t)slot_of(bt, a.block_size, t) * kv_dim + (size_t)kvh * hd + c * 8 : 0;
            attn_cp_async16(ks + j * kst + c * 8, a.k_cache + off, in ? 16 : 0);
            attn_cp_async16(vs + j * kst + c * 8, a.v_cache + off, in ? 16 : 0);
        }
        asm volatile("cp.async.commit_group;\n" ::);
        asm volatile("cp.async.wait_group 0;\n" ::: "memory");
        __syncthreads();
        /* the warp's rows are all masked for this tile (its first key is past its last query) */
        const bool warp_live = k0 <= sq.pos + q0 + warp * 16 + 15 && q0 + warp * 16 < sq.n_q;
        if (warp_live) {
            float sc[FA_KT / 8][4];
#pragma unroll
            for (int nt = 0; nt < FA_KT / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    sc[nt][e] = 0.f;
            for (int kk = 0; kk < hd; kk += 16) {
                uint32_t ah[4], al[4];
                attn_ldmatrix_x4(ah, qa_h + kk);
                attn_ldmatrix_x4(al, qa_l + kk);
#pragma unroll
                for (int np = 0; np < FA_KT / 16; np++) {
                    uint32_t b[4];
                    attn_ldmatrix_x4(b, ks + (np * 16 + kb_row) * kst + kk + kb_col);
                    mma_bf16_16816(sc[2 * np], ah[0], ah[1], ah[2], ah[3], b[0], b[1]);
                    mma_bf16_16816(sc[2 * np], al[0], al[1], al[2], al[3], b[0], b[1]);
                    mma_bf16_16816(sc[2 * np + 1], ah[0], ah[1], ah[2], ah[3], b[2], b[3]);
                    mma_bf16_16816(sc[2 * np + 1], al[0], al[1], al[2], al[3], b[2], b[3]);
                }
            }
            /* mask (causal, past the context), row maxima over the quad */
            float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < FA_KT / 8; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int t = k0 + nt * 8 + 2 * lt + e;
                    if (t > p0 || t >= n_keys) sc[nt][e] = -INFINITY;
                    if (t > p1 || t >= n_keys) sc[nt][2 + e] = -INFINITY;
                    mx0 = fmaxf(mx0, sc[nt][e]);
                    mx1 = fmaxf(mx1, sc[nt][2 + e]);
                }
            for (int x = 1; x < 4; x <<= 1) {
                mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, x));
                mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, x));
            }
            const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
            /* a row with no key yet (-inf) keeps its state: exp of -inf - -inf is NaN */
            const float c0 = mn0 == -INFINITY ? 1.f : expf(m0 - mn0),
                        c1 = mn1 == -INFINITY ? 1.f : expf(m1 - mn1);
            float s0 = 0.f, s1 = 0.f;
#pragma unroll
            for (int nt = 0; nt < FA_KT / 8; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    sc[nt][e] = mn0 == -INFINITY ? 0.f : expf(sc[nt][e] - mn0);
                    sc[nt][2 + e] = mn1 == -INFINITY ? 0.f : expf(sc[nt][2 + e] - mn1);
                    s0 += sc[nt][e];
                    s1 += sc[nt][2 + e];
                }
            for (int x = 1; x < 4; x <<= 1) {
                s0 += __shfl_xor_sync(0xffffffffu, s0, x);
                s1 += __shfl_xor_sync(0xffffffffu, s1, x);
            }
            l0 = l0 * c0 + s0;
            l1 = l1 * c1 + s1;
            m0 = mn0;
            m1 = mn1;
#pragma unroll
            for (int i = 0; i < FA_MAX_HD / 8; i++) {
                o[i][0] *= c0, o[i][1] *= c0;
                o[i][2] *= c1, o[i][3] *= c1;
            }
            /* O += P V: keys 16 j .. 16 j + 15 are the n-tiles 2j, 2j + 1 of S */
#pragma unroll
            for (int j = 0; j < FA_KT / 16; j++) {
                uint32_t ph[4], pl[4];
                const float pv[8] = {sc[2 * j][0],     sc[2 * j][1],     sc[2 * j][2],     sc[2 * j][3],
                                     sc[2 * j + 1][0], sc[2 * j + 1][1], sc[2 * j + 1][2], sc[2 * j + 1][3]};
#pragma unroll
                for (int r = 0; r < 4; r++) { /* a0: row lg, a1: row lg + 8, a2/a3: keys + 8 */
                    uint16_t h0, l0b, h1, l1b;
                    split_bf16(pv[2 * r], &h0, &l0b);
                    split_bf16(pv[2 * r + 1], &h1, &l1b);
                    ph[r] = (uint32_t)h0 | (uint32_t)h1 << 16;
                    pl[r] = (uint32_t)l0b | (uint32_t)l1b << 16;
                }
                const uint16_t *vb = vs + (j * 16 + (lane & 15)) * kst + (lane >> 4) * 8;
#pragma unroll
                for (int dp = 0; dp < FA_MAX_HD / 16; dp++) {
                    if (dp * 16 >= hd) break;
                    uint32_t b[4];
                    attn_ldmatrix_x4_trans(b, vb + dp * 16);
                    mma_bf16_16816(o[2 * dp], ph[0], ph[1], ph[2], ph[3], b[0], b[1]);
                    mma_bf16_16816(o[2 * dp], pl[0], pl[1], pl[2], pl[3], b[0], b[1]);
                    mma_bf16_16816(o[2 * dp + 1], ph[0], ph[1], ph[2], ph[3], b[2], b[3]);
                    mma_bf16_16816(o[2 * dp + 1], pl[0], pl[1], pl[2], pl[3], b[2], b[3]);
                }
            }
        }
    }
    /* rows lg, lg + 8: dims n * 8 + 2 lt, + 1 */
    const float i0 = l0 > 0.f ? 1.f / l0 : 0.f, i1 = l1 > 0.f ? 1.f / l1 : 0.f;
#pragma unroll
    for (int n = 0; n < FA_MAX_HD / 8; n++) {
        if (n * 8 >= hd) break;
        int d = n * 8 + 2 * lt;
        if (qr0 < sq.n_q) {
            uint16_t *out = a.out + (size_t)(sq.q_row + qr0) * a.n_heads * hd + (size_t)h * hd + d;
            *reinterpret_cast<uint32_t *>(out) = (uint32_t)f2bf(o[n][0] * i0) | (uint32_t)f2bf(o[n][1] * i0)
                                                                                    << 16;
        }
        if (qr0 + 8 < sq.n_q) {
            uint16_t *out = a.out + (size_t)(sq.q_row + qr0 + 8) * a.n_heads * hd + (size_t)h * hd + d;
            *reinterpret_cast<uint32_t *>(out) = (uint32_t)f2bf(o[n][2] * i1) | (uint32_t)f2bf(o[n][3] * i1)
                                                                                    << 16;
        }
    }
}

#define PF_ROWS_PER_WARP 4
#define PF_WARPS 4
#define PF_QT (PF_ROWS_PER_WARP * PF_WARPS)
#define PF_KT 32

static __global__ void __launch_bounds__(PF_WARPS * 32) attn_prefill_kernel(struct dsi_cuda_attn_args a) {
    extern __shared__ float smem[];
    const int hd = a.head_dim, hdp = hd + 1, g = a.n_heads / a.n_kv_heads, kv_dim = a.n_kv_heads * hd;
    const int h = blockIdx.y, kvh = h / g, si = blockIdx.z;
    const struct dsi_cuda_attn_seq sq = a.seqs[si];
    const int q0 = blockIdx.x * PF_QT;
    if (q0 >= sq.n_q) return;
    if (dsi_cuda_attn_is_long(sq.n_q, sq.pos, a.long_q, a.long_ctx)) return; /* the cuBLAS path has it */
    float *ks = smem, *vs = ks + PF_KT * hdp, *qsh = vs + PF_KT * hdp;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int32_t *bt = a.block_tables + sq.bt_off;

    for (int i = tid; i < PF_QT * hd; i += blockDim.x) {
        int r = i / hd, d = i % hd;
        qsh[r * hdp + d] = q0 + r < sq.n_q
                               ? a.q[(size_t)(sq.q_row + q0 + r) * a.q_stride + (size_t)h * hd + d] * a.scale
                               : 0.f;
    }
    float m[PF_ROWS_PER_WARP], l[PF_ROWS_PER_WARP], acc[PF_ROWS_PER_WARP][MAX_HD / 32];
#pragma unroll
    for (int r = 0; r < PF_ROWS_PER_WARP; r++) {
        m[r] = -INFINITY;
        l[r] = 0.f;
#pragma unroll
        for (int e = 0; e < MAX_HD / 32; e++)
            acc[r][e] = 0.f;
    }
    const int last_q = min(sq.n_q, q0 + PF_QT) - 1;
    const int n_keys = sq.pos + last_q + 1;
    for (int k0 = 0; k0 < n_keys; k0 += PF_KT) {
        __syncthreads();
        for (int i = tid; i < PF_KT * hd; i += blockDim.x) {
            int j = i / hd, d = i % hd, t = k0 + j;
            float kv = 0.f, vv = 0.f;
            if (t < n_keys) {
                size_t off = (size_t)slot_of(bt, a.block_size, t) * kv_dim + (size_t)kvh * hd + d;
                kv = bf2f(a.k_cache[off]);
                vv = bf2f(a.v_cache[off]);
            }
            ks[j * hdp + d] = kv;
            vs[j * hdp + d] = vv;
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < PF_ROWS_PER_WARP; r++) {
            int qi = q0 + warp * PF_ROWS_PER_WARP + r;
            if (qi >= sq.n_q) continue; /* warp-uniform */
            int p = sq.pos + qi, t = k0 + lane;
            const float *qr = qsh + (warp * PF_ROWS_PER_WARP + r) * hdp;
            float sc = -INFINITY;
            if (t <= p) {
                sc = 0.f;
                for (int d = 0; d < hd; d++)
                    sc += qr[d] * ks[lane * hdp + d];
            }
            float mt = sc;
            for (int o = 16; o > 0; o >>= 1)
                mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
            float m_new = fmaxf(m[r], mt);
            if (m_new == -INFINITY) continue; /* whole tile masked */
            float pr = t <= p ? expf(sc - m_new) : 0.f;
            float corr = expf(m[r] - m_new);
            float ps = pr;
            for (int o = 16; o > 0; o >>= 1)
                ps += __shfl_xor_sync(0xffffffffu, ps, o);
            l[r] = l[r] * corr + ps;
            m[r] = m_new;
#pragma unroll
            for (int e = 0; e < MAX_HD / 32; e++)
                acc[r][e] *= corr;
            for (int j = 0; j < PF_KT; j++) {
                float pj = __shfl_sync(0xffffffffu, pr, j);
#pragma unroll
                for (int e = 0; e < MAX_HD / 32; e++) {
                    int d = lane + 32 * e;
                    if (d < hd) acc[r][e] += pj * vs[j * hdp + d];
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < PF_ROWS_PER_WARP; r++) {
        int qi = q0 + warp * PF_ROWS_PER_WARP + r;
        if (qi >= sq.n_q) continue;
        uint16_t *o = a.out + (size_t)(sq.q_row + qi) * a.n_heads * hd + (size_t)h * hd;
#pragma unroll
        for (int e = 0; e < MAX_HD / 32; e++) {
            int d = lane + 32 * e;
            if (d < hd) o[d] = f2bf(l[r] > 0.f ? acc[r][e] / l[r] : 0.f);
        }
    }
}

extern "C" int dsi_cuda_attn_prefill(const struct dsi_cuda_attn_args *a, cudaStream_t s) {
    if (check_args(a) || a->max_n_q < 0 || a->n_heads > 65535 || a->n_seqs > 65535) return DSI_EINVAL;
    if (a->n_seqs == 0 || a->max_n_q == 0) return 0;
    if (a->head_dim <= FA_MAX_HD) {
        size_t smem = fa_smem(a->head_dim);
        if (smem > 48 * 1024) {
            int rc = DSI_CUDA_CHECK(cudaFuncSetAttribute(
                attn_prefill_fa_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            if (rc) return rc;
        }
        if ((a->max_n_q + FA_QT - 1) / FA_QT > 65535) return DSI_EINVAL;
        dim3 grid(a->n_heads, (a->max_n_q + FA_QT - 1) / FA_QT, a->n_seqs);
        attn_prefill_fa_kernel<<<grid, FA_THREADS, smem, s>>>(*a);
        return DSI_CUDA_CHECK(cudaGetLastError());
    }
    size_t smem = (size_t)(2 * PF_KT + PF_QT) * (a->head_dim + 1) * sizeof(float);
    if (smem > 48 * 1024) {
        int rc = DSI_CUDA_CHECK(cudaFuncSetAttribute(attn_prefill_kernel,
                                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        if (rc) return rc;
    }
    dim3 grid((a->max_n_q + PF_QT - 1) / PF_QT, a->n_heads, a->n_seqs);
    attn_prefill_kernel<<<grid, PF_WARPS * 32, smem, s>>>(*a);
    return DSI_CUDA_CHECK(cudaGetLastError());
}
