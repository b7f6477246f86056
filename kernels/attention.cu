/*
 * attention.cu: causal attention over the paged KV cache, GQA aware.
 *
 * Cache (one layer): K and V pools of (slots, n_kv*hd) bf16; token t of a
 * sequence sits in slot block_tables[bt_off + t/bs]*bs + t%bs. Queries are fp32
 * rows (RoPE applied), outputs bf16 rows (rows, n_heads*hd) for the o-projection.
 *
 * Decode (one query per sequence), flash-decoding: grid (splits, kv heads, seqs).
 * Each block (4 warps) takes one KV head, all the query heads of its GQA group
 * (g <= 8), and one slice of the context, in tiles of 64 keys: K and V of a
 * tile are staged in shared memory with 16-byte cp.async (rows padded by 16
 * bytes so ldmatrix hits 32 banks; the first tile goes out before the q/RoPE
 * prologue), the scores K q^T and then P V run on the tensor cores
 * (mma.sync bf16, fp32 accumulate) with q and P split into bf16 hi + lo pairs
 * (two products each: as exact as fp32 q and P against the bf16 K/V), and a
 * warp per head runs the online softmax in between. Partials (m, l, acc) go
 * to `work`; a combine kernel merges the splits. The split count is free
 * (every sequence's context is cut into that many slices), so a CUDA graph
 * can fix it. Bytes: each K/V element of the context is read once per step.
 *
 * Prefill: for head_dim <= 128, flash-attention 2 on the tensor cores: grid
 * (64-query tiles, heads, seqs), 4 warps of 16 query rows, 64-key K/V tiles by
 * cp.async, S = Q K^T and O += P V by mma.sync with q and P as bf16 hi + lo
 * pairs, the online softmax and P in registers. Larger heads: the CUDA-core
 * kernel (tiles of 16 queries x 32 keys staged as fp32, online softmax per
 * row), or the cuBLAS path of the backend for long prompts.
 */
#include <cuda_bf16.h>
#include <math.h>

#include "bf16_util.cuh"
#include "dsinfer/kernels.h"
#include "rope.cuh"

#define DEC_THREADS 128 /* 4 warps: one 16-key m-tile each in QK^T, a quarter of the dims in PV */
#define DEC_TK 64
#define DSI__MAX_SPLITS_COMBINE 1024
#define MAX_GROUP 8
#define MAX_HD 256

static __device__ __forceinline__ int slot_of(const int32_t *bt, int bs, int t) {
    return bt[t / bs] * bs + t % bs;
}

static __device__ __forceinline__ void dec_cp_async16(void *dst, const void *src, int bytes) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(src), "r"(bytes));
}

static __device__ __forceinline__ void dec_ldmatrix_x4(uint32_t *r, const uint16_t *p) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

static __device__ __forceinline__ void dec_ldmatrix_x4_trans(uint32_t *r, const uint16_t *p) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

static __device__ __forceinline__ void dec_mma(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                               uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* x as a bf16 pair hi + lo with hi + lo = x to ~16 mantissa bits: the tensor
 * cores multiply bf16, and two products (hi, lo) keep q and the probabilities
 * as exact as the fp32 CPU reference's (the bf16 K/V are the only rounding). */
static __device__ __forceinline__ void split_bf16(float x, uint16_t *hi, uint16_t *lo) {
    *hi = f2bf(x);
    *lo = f2bf(x - bf2f(*hi));
}

/* Dynamic shared memory of the decode kernel for head dim hd: the K and V
 * tiles (rows padded by 16 bytes), q hi/lo (8 rows, padded), the scores
 * (TK, 8) fp32, the probabilities hi/lo (8 rows of TK, padded). One stage: a
 * second (the next tile loading while this one is used) measured slower, the
 * larger block leaving fewer blocks per SM (bench/RESULTS.md). */
static size_t dec_smem(int hd) {
    return (size_t)2 * DEC_TK * (hd + 8) * 2 + (size_t)2 * MAX_GROUP * (hd + 8) * 2 +
           (size_t)DEC_TK * MAX_GROUP * 4 + (size_t)2 * MAX_GROUP * (DEC_TK + 8) * 2;
}

/* Queues the K and V rows of keys t0 .. t0 + TK - 1 below c1 into one stage
 * with 16-byte cp.async, zero-filling the rest. With ROPE the new token (key
 * ctx - 1) is not in the cache yet: its row is left to the caller. */
template <bool ROPE>
static __device__ __forceinline__ void dec_load_tile(uint16_t *ks, uint16_t *vs,
                                                     const struct dsi_cuda_attn_args &a, const int32_t *bt,
                                                     int kvh, int t0, int c1, int ctx) {
    const int hd = a.head_dim, cpr = hd / 8, kst = hd + 8, kv_dim = a.n_kv_heads * hd;
    for (int i = threadIdx.x; i < DEC_TK * cpr; i += DEC_THREADS) {
        int j = i / cpr, c = i % cpr, t = t0 + j;
        if (ROPE && t == ctx - 1) continue;
        bool in = t < c1;
        size_t off = in ? (size_t)slot_of(bt, a.block_size, t) * kv_dim + (size_t)kvh * hd + c * 8 : 0;
        dec_cp_async16(ks + j * kst + c * 8, a.k_cache + off, in ? 16 : 0);
        dec_cp_async16(vs + j * kst + c * 8, a.v_cache + off, in ? 16 : 0);
    }
}

/* ROPE: q and k of the new token are not rotated yet and its K/V are not in the
 * cache (dsi_cuda_attn_decode_rope): the block rotates its q heads and the new
 * k itself, uses the new K/V from shared memory for the last position, and the
 * first split's block writes them to the cache for later steps.
 *
 * Tensor cores (mma.sync m16n8k16 bf16, fp32 accumulate): scores S^T = K Q^T
 * with the tile's keys as M (warp w: keys 16w..16w+15), the group's (<= 8)
 * heads as N, head dims as K; then P V with the heads as M (rows 8..15 zero),
 * the head dims as N (warp w: a quarter of the 16-dim pairs), the keys as K.
 * q and P go in as bf16 hi + lo pairs (two products each). */
template <bool ROPE>
static __global__ void __launch_bounds__(DEC_THREADS)
    attn_decode_kernel(struct dsi_cuda_attn_args a, const float *inv_freq) {
    extern __shared__ __align__(16) unsigned char dsm[];
    __shared__ float m_s[MAX_GROUP], l_s[MAX_GROUP], corr_s[MAX_GROUP];
    __shared__ float cs_s[ROPE ? ROPE_TAB : 1], sn_s[ROPE ? ROPE_TAB : 1];
    __shared__ __align__(16) uint16_t knew[ROPE ? MAX_HD : 8], vnew[ROPE ? MAX_HD : 8];

    const int split = blockIdx.x, kvh = blockIdx.y, si = blockIdx.z;
    const int hd = a.head_dim, g = a.n_heads / a.n_kv_heads, kv_dim = a.n_kv_heads * hd, kst = hd + 8;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, lg = lane >> 2, lt = lane & 3;
    const int pst = DEC_TK + 8;                          /* bf16 elements */
    uint16_t *tiles = reinterpret_cast<uint16_t *>(dsm); /* K tile, then V tile: (TK, hd + 8) each */
    uint16_t *qh = tiles + 2 * DEC_TK * kst, *ql = qh + MAX_GROUP * kst; /* (8, hd + 8) */
    float *ps = reinterpret_cast<float *>(ql + MAX_GROUP * kst);         /* (TK, 8) scores */
    uint16_t *ph = reinterpret_cast<uint16_t *>(ps + DEC_TK * MAX_GROUP), *pl = ph + MAX_GROUP * pst;
    const struct dsi_cuda_attn_seq sq = a.seqs[si];
    const int ctx = sq.pos + 1;
    int chunk = (ctx + a.n_splits - 1) / a.n_splits;
    chunk = (chunk + 31) & ~31;
    const int c0 = split * chunk, c1 = min(ctx, c0 + chunk);
    const size_t part = ((size_t)si * a.n_heads + (size_t)kvh * g) * a.n_splits + split;
    float *wo = a.work;
    float *wml = a.work + (size_t)a.n_seqs * a.n_heads * a.n_splits * hd;

    const float *qrow = a.q + (size_t)sq.q_row * a.q_stride;
    const int32_t *bt = a.block_tables + sq.bt_off;
    /* the first tile's loads go out before the q/RoPE prologue (no registers held) */
    if (c0 < c1) dec_load_tile<ROPE>(tiles, tiles + DEC_TK * kst, a, bt, kvh, c0, c1, ctx);
    asm volatile("cp.async.commit_group;\n" ::);
    /* q rows hi/lo, heads past the group zero; probability rows past it zero */
    for (int i = tid; i < MAX_GROUP * hd; i += DEC_THREADS) {
        int h = i / hd, d = i % hd;
        if (h >= g) qh[h * kst + d] = ql[h * kst + d] = 0;
    }
    for (int i = tid; i < MAX_GROUP * DEC_TK; i += DEC_THREADS) {
        int h = i / DEC_TK, j = i % DEC_TK;
        if (h >= g) ph[h * pst + j] = pl[h * pst + j] = 0;
    }
    if (ROPE) {
        /* the same angles, rotation and bf16 rounding as rope_kv_store */
        const int half = hd / 2;
        const float p = (float)sq.pos;
        rope_table(cs_s, sn_s, p, inv_freq, half); /* ends with __syncthreads */
        for (int i = tid; i < g * hd; i += DEC_THREADS) {
            int h = i / hd, d = i % hd, j = d < half ? d : d - half;
            const float *qv = qrow + (size_t)(kvh * g + h) * hd;
            float x = qv[j], y = qv[j + half];
            rotate(&x, &y, cs_s[j], sn_s[j]);
            split_bf16((d < half ? x : y) * a.scale, &qh[h * kst + d], &ql[h * kst + d]);
        }
        const float *kh = qrow + (size_t)(a.n_heads + kvh) * hd;
        const float *vh = qrow + (size_t)(a.n_heads + a.n_kv_heads + kvh) * hd;
        const size_t off = (size_t)slot_of(bt, a.block_size, sq.pos) * kv_dim + (size_t)kvh * hd;
        for (int d = tid; d < hd; d += DEC_THREADS) {
            int j = d < half ? d : d - half;
            float x = kh[j], y = kh[j + half];
            rotate(&x, &y, cs_s[j], sn_s[j]);
            knew[d] = f2bf(d < half ? x : y);
            vnew[d] = f2bf(vh[d]);
            if (split == 0) { /* for later steps; this step reads knew/vnew */
                const_cast<uint16_t *>(a.k_cache)[off + d] = knew[d];
                const_cast<uint16_t *>(a.v_cache)[off + d] = vnew[d];
            }
        }
    } else {
        for (int i = tid; i < g * hd; i += DEC_THREADS) {
            int h = i / hd, d = i % hd;
            split_bf16(qrow[(size_t)(kvh * g + h) * hd + d] * a.scale, &qh[h * kst + d], &ql[h * kst + d]);
        }
    }
    if (tid < MAX_GROUP) {
        m_s[tid] = -INFINITY;
        l_s[tid] = 0.f;
    }
    /* P V: warp w takes 16-dim pairs w, w + 4, ... (n-tiles 2 per pair) */
    const int n_pairs = hd / 16;
    float acc[MAX_HD / 64][2][4];
#pragma unroll
    for (int i = 0; i < MAX_HD / 64; i++)
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                acc[i][n][e] = 0.f;

    uint16_t *ks = tiles, *vs = tiles + DEC_TK * kst;
    for (int t0 = c0; t0 < c1; t0 += DEC_TK) {
        __syncthreads(); /* the previous tile is consumed: the stage may be refilled */
        if (t0 != c0) {
            dec_load_tile<ROPE>(ks, vs, a, bt, kvh, t0, c1, ctx);
            asm volatile("cp.async.commit_group;\n" ::);
        }
        asm volatile("cp.async.wait_group 0;\n" ::: "memory");
        if (ROPE && ctx - 1 >= t0 && ctx - 1 < t0 + DEC_TK) { /* the new token's row */
            int j = ctx - 1 - t0;
            for (int c = tid; c < hd / 8; c += DEC_THREADS) {
                *reinterpret_cast<uint4 *>(ks + j * kst + c * 8) =
                    *reinterpret_cast<const uint4 *>(knew + c * 8);
                *reinterpret_cast<uint4 *>(vs + j * kst + c * 8) =
                    *reinterpret_cast<const uint4 *>(vnew + c * 8);
            }
        }
        __syncthreads();
        /* scores of keys 16 warp .. + 15 for the 8 head columns */
        {
            float sc[4] = {0.f, 0.f, 0.f, 0.f};
            const uint16_t *ka = ks + (warp * 16 + (lane & 15)) * kst + (lane >> 4) * 8;
            for (int kk = 0; kk < hd; kk += 16) {
                uint32_t af[4];
                dec_ldmatrix_x4(af, ka + kk);
                const uint32_t *bh = reinterpret_cast<const uint32_t *>(qh + lg * kst + kk + 2 * lt);
                const uint32_t *bl = reinterpret_cast<const uint32_t *>(ql + lg * kst + kk + 2 * lt);
                dec_mma(sc, af[0], af[1], af[2], af[3], bh[0], bh[4]);
                dec_mma(sc, af[0], af[1], af[2], af[3], bl[0], bl[4]);
            }
            /* c0, c1: key 16w + lg, heads 2lt, 2lt + 1; c2, c3: key + 8 */
            int j0 = warp * 16 + lg, j1 = j0 + 8;
            bool v0 = t0 + j0 < c1, v1 = t0 + j1 < c1;
            *reinterpret_cast<float2 *>(ps + j0 * MAX_GROUP + 2 * lt) =
                make_float2(v0 ? sc[0] : -INFINITY, v0 ? sc[1] : -INFINITY);
            *reinterpret_cast<float2 *>(ps + j1 * MAX_GROUP + 2 * lt) =
                make_float2(v1 ? sc[2] : -INFINITY, v1 ? sc[3] : -INFINITY);
        }
        __syncthreads();
        /* online softmax: warp w owns heads w and w + 4 */
        for (int h = warp; h < g; h += DEC_THREADS / 32) {
            float v0 = ps[lane * MAX_GROUP + h], v1 = ps[(lane + 32) * MAX_GROUP + h];
            float mt = fmaxf(v0, v1);
            for (int o = 16; o > 0; o >>= 1)
                mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
            float m_old = m_s[h], m_new = fmaxf(m_old, mt); /* finite: every tile has a valid key */
            float p0 = expf(v0 - m_new), p1 = expf(v1 - m_new);
            split_bf16(p0, &ph[h * pst + lane], &pl[h * pst + lane]);
            split_bf16(p1, &ph[h * pst + lane + 32], &pl[h * pst + lane + 32]);
            float sum = p0 + p1;
            for (int o = 16; o > 0; o >>= 1)
                sum += __shfl_xor_sync(0xffffffffu, sum, o);
            if (lane == 0) {
                float corr = expf(m_old - m_new);
                corr_s[h] = corr;
                l_s[h] = l_s[h] * corr + sum;
                m_s[h] = m_new;
            }
        }
        __syncthreads();
        /* acc = acc * corr + P V; the accumulator rows are head lg (rows 8..15: zero heads) */
        const float corr = lg < g ? corr_s[lg] : 0.f;
#pragma unroll
        for (int i = 0; i < MAX_HD / 64; i++) {
            int pr = warp + 4 * i;
            if (pr >= n_pairs) break;
#pragma unroll
            for (int n = 0; n < 2; n++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    acc[i][n][e] *= corr;
            /* ldmatrix.trans of V rows kk + (lane & 15), dims pr * 16 + (lane >> 4) * 8 */
            const uint16_t *vb = vs + (lane & 15) * kst + pr * 16 + (lane >> 4) * 8;
#pragma unroll
            for (int kk = 0; kk < DEC_TK; kk += 16) {
                uint32_t bf[4];
                dec_ldmatrix_x4_trans(bf, vb + kk * kst);
                const uint32_t *ah = reinterpret_cast<const uint32_t *>(ph + lg * pst + kk + 2 * lt);
                const uint32_t *al = reinterpret_cast<const uint32_t *>(pl + lg * pst + kk + 2 * lt);
                dec_mma(acc[i][0], ah[0], 0u, ah[4], 0u, bf[0], bf[1]);
                dec_mma(acc[i][0], al[0], 0u, al[4], 0u, bf[0], bf[1]);
                dec_mma(acc[i][1], ah[0], 0u, ah[4], 0u, bf[2], bf[3]);
                dec_mma(acc[i][1], al[0], 0u, al[4], 0u, bf[2], bf[3]);
            }
        }
    }
    asm volatile("cp.async.wait_group 0;\n" ::: "memory"); /* an empty split queued its (empty) group too */
    /* partials: head lg, dims pr * 16 + n * 8 + 2 lt, + 1 */
    if (lg < g) {
#pragma unroll
        for (int i = 0; i < MAX_HD / 64; i++) {
            int pr = warp + 4 * i;
            if (pr >= n_pairs) break;
#pragma unroll
            for (int n = 0; n < 2; n++) {
                float *o = wo + (part + (size_t)lg * a.n_splits) * hd + pr * 16 + n * 8 + 2 * lt;
                *reinterpret_cast<float2 *>(o) = make_float2(acc[i][n][0], acc[i][n][1]);
            }
        }
    }
    __syncthreads(); /* m_s, l_s final */
    if (tid < g) {
        wml[(part + (size_t)tid * a.n_splits) * 2] = c0 < c1 ? m_s[tid] : -INFINITY;
        wml[(part + (size_t)tid * a.n_splits) * 2 + 1] = l_s[tid];
    }
}

/* One block per (head, seq): the split maxima and sums are read once into
 * shared memory (loads in parallel, not a serial chain), then COMBINE_GROUPS
 * groups of a thread per dimension each sum every COMBINE_GROUPS-th split
 * with loads in flight, and the groups' sums are added in group order. At
 * long contexts (64 splits) one thread per dimension walking all splits was a
 * chain of 8 rounds of dependent loads. */
#define COMBINE_GROUPS 4
static __global__ void attn_combine_kernel(struct dsi_cuda_attn_args a) {
    __shared__ float wgt[DSI__MAX_SPLITS_COMBINE];
    __shared__ float part[COMBINE_GROUPS - 1][MAX_HD];
    __shared__ float inv_l;
    const int h = blockIdx.x, si = blockIdx.y, hd = a.head_dim, ns = a.n_splits;
    const int d = threadIdx.x % hd, grp = threadIdx.x / hd;
    const size_t base = ((size_t)si * a.n_heads + h) * ns;
    const float *wo = a.work;
    const float *wml = a.work + (size_t)a.n_seqs * a.n_heads * ns * hd;
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        float m = -INFINITY;
        for (int i = lane; i < ns; i += 32)
            m = fmaxf(m, wml[(base + i) * 2]);
        for (int o = 16; o > 0; o >>= 1)
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        float l = 0.f;
        for (int i = lane; i < ns; i += 32) {
            float mi = wml[(base + i) * 2];
            float c = mi == -INFINITY ? 0.f : expf(mi - m);
            wgt[i] = c;
            l += c * wml[(base + i) * 2 + 1];
        }
        for (int o = 16; o > 0; o >>= 1)
            l += __shfl_xor_sync(0xffffffffu, l, o);
        if (lane == 0) inv_l = l > 0.f ? 1.f / l : 0.f;
    }
    __syncthreads();
    float o = 0.f;
#pragma unroll 4
    for (int i = grp; i < ns; i += COMBINE_GROUPS)
        o += wgt[i] * wo[(base + i) * hd + d];
    if (grp > 0) part[grp - 1][d] = o;
    __syncthreads();
    if (grp == 0) {
        for (int g = 0; g < COMBINE_GROUPS - 1; g++)
            o += part[g][d];
        const struct dsi_cuda_attn_seq sq = a.seqs[si];
        a.out[(size_t)sq.q_row * a.n_heads * hd + (size_t)h * hd + d] = f2bf(o * inv_l);
    }
}

static int check_args(const struct dsi_cuda_attn_args *a) {
    if (!a || a->n_seqs < 0 || a->n_heads <= 0 || a->n_kv_heads <= 0 || a->n_heads % a->n_kv_heads ||
        a->n_heads / a->n_kv_heads > MAX_GROUP || a->head_dim <= 0 || a->head_dim > MAX_HD ||
        a->head_dim % 16 || a->block_size <= 0 || a->q_stride < a->n_heads * a->head_dim)
        return DSI_EINVAL;
    return 0;
}

extern "C" int dsi_cuda_attn_decode_splits(int n_seqs, int n_kv_heads, int max_ctx, int n_sm) {
    if (n_seqs <= 0 || n_kv_heads <= 0) return 1;
    int blocks = n_seqs * n_kv_heads;
    int splits = (2 * n_sm + blocks - 1) / blocks;
    /* a full 64-key tile per split (batch 1, ctx 2048: 32 splits 9.6 us per
     * layer, 64 half-empty ones 10.4), but short contexts keep up to 4 splits
     * of >= 32 keys (ctx 128: 4 splits 8.4 us, 2 splits 8.7): an idle GPU gains
     * more from blocks than a half tile costs */
    int by_ctx = (max_ctx + DEC_TK - 1) / DEC_TK, short_ctx = (max_ctx + 31) / 32;
    if (by_ctx < 4) by_ctx = short_ctx < 4 ? short_ctx : 4;
    if (splits > by_ctx) splits = by_ctx;
    if (splits > 64) splits = 64;
    return splits < 1 ? 1 : splits;
}

extern "C" size_t dsi_cuda_attn_work_bytes(int n_seqs, int n_heads, int head_dim, int n_splits) {
    return (size_t)n_seqs * n_heads * n_splits * (head_dim + 2) * sizeof(float);
}

template <bool ROPE>
static int attn_decode_launch(const struct dsi_cuda_attn_args *a, const float *inv_freq, cudaStream_t s) {
    if (check_args(a)) return DSI_EINVAL;
    if (a->n_splits <= 0 || a->n_splits > DSI__MAX_SPLITS_COMBINE || a->n_kv_heads > 65535 ||
        a->n_seqs > 65535 ||
        a->work_bytes < dsi_cuda_attn_work_bytes(a->n_seqs, a->n_heads, a->head_dim, a->n_splits))
        return DSI_EINVAL;
    if (a->n_seqs == 0) return 0;
    size_t smem = dec_smem(a->head_dim);
    int rc = 0;
    if (smem > 40 * 1024) /* with the static arrays, above the 48 KB that need no opt-in */
        rc = DSI_CUDA_CHECK(cudaFuncSetAttribute(attn_decode_kernel<ROPE>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    if (rc) return rc;
    dim3 grid(a->n_splits, a->n_kv_heads, a->n_seqs);
    attn_decode_kernel<ROPE><<<grid, DEC_THREADS, smem, s>>>(*a, inv_freq);
    rc = DSI_CUDA_CHECK(cudaGetLastError());
    if (rc) return rc;
    attn_combine_kernel<<<dim3(a->n_heads, a->n_seqs), a->head_dim * COMBINE_GROUPS, 0, s>>>(*a);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

extern "C" int dsi_cuda_attn_decode(const struct dsi_cuda_attn_args *a, cudaStream_t s) {
    return attn_decode_launch<false>(a, NULL, s);
}

extern "C" int dsi_cuda_attn_decode_rope(const struct dsi_cuda_attn_args *a, const float *inv_freq,
                                         cudaStream_t s) {
    if (!a || !inv_freq || a->head_dim > 2 * ROPE_TAB ||
        (long long)a->q_stride < ((long long)a->n_heads + 2LL * a->n_kv_heads) * a->head_dim)
        return DSI_EINVAL;
    return attn_decode_launch<true>(a, inv_freq, s);
}

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
            dec_cp_async16(ks + j * kst + c * 8, a.k_cache + off, in ? 16 : 0);
            dec_cp_async16(vs + j * kst + c * 8, a.v_cache + off, in ? 16 : 0);
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
                dec_ldmatrix_x4(ah, qa_h + kk);
                dec_ldmatrix_x4(al, qa_l + kk);
#pragma unroll
                for (int np = 0; np < FA_KT / 16; np++) {
                    uint32_t b[4];
                    dec_ldmatrix_x4(b, ks + (np * 16 + kb_row) * kst + kk + kb_col);
                    dec_mma(sc[2 * np], ah[0], ah[1], ah[2], ah[3], b[0], b[1]);
                    dec_mma(sc[2 * np], al[0], al[1], al[2], al[3], b[0], b[1]);
                    dec_mma(sc[2 * np + 1], ah[0], ah[1], ah[2], ah[3], b[2], b[3]);
                    dec_mma(sc[2 * np + 1], al[0], al[1], al[2], al[3], b[2], b[3]);
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
                    dec_ldmatrix_x4_trans(b, vb + dp * 16);
                    dec_mma(o[2 * dp], ph[0], ph[1], ph[2], ph[3], b[0], b[1]);
                    dec_mma(o[2 * dp], pl[0], pl[1], pl[2], pl[3], b[0], b[1]);
                    dec_mma(o[2 * dp + 1], ph[0], ph[1], ph[2], ph[3], b[2], b[3]);
                    dec_mma(o[2 * dp + 1], pl[0], pl[1], pl[2], pl[3], b[2], b[3]);
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
