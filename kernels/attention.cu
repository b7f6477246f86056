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
 * Prefill is in attention_prefill.cu, shared helpers in attention_util.cuh.
 */
#include <cuda_bf16.h>
#include <math.h>

#include "attention_util.cuh"
#include "bf16_util.cuh"
#include "kernels.h"
#include "rope.cuh"

#define DEC_THREADS 128 /* 4 warps: one 16-key m-tile each in QK^T, a quarter of the dims in PV */
#define DEC_TK 64
#define DSI__MAX_SPLITS_COMBINE 1024

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
        bool in = t < c1;
        if (ROPE && in && t == ctx - 1) continue; /* rows past c1 are zero-filled, this one included */
        size_t off = in ? (size_t)slot_of(bt, a.block_size, t) * kv_dim + (size_t)kvh * hd + c * 8 : 0;
        attn_cp_async16(ks + j * kst + c * 8, a.k_cache + off, in ? 16 : 0);
        attn_cp_async16(vs + j * kst + c * 8, a.v_cache + off, in ? 16 : 0);
    }
}

/* The decode block's shared buffers (dsm carved up, see dec_smem). */
struct dec_bufs {
    uint16_t *ks, *vs; /* K and V tiles: (TK, hd + 8) each */
    uint16_t *qh, *ql; /* q hi/lo: (8, hd + 8) */
    float *ps;         /* scores (TK, 8) */
    uint16_t *ph, *pl; /* probabilities hi/lo: (8, TK + 8) */
    int kst, pst;      /* row strides (bf16 elements) */
};

/* The q rows of the group as bf16 hi/lo pairs (times the scale), zero rows
 * past the group (q and probabilities). ROPE: q and the new token's k are
 * rotated here (the same angles, rotation and bf16 rounding as
 * rope_kv_store), knew/vnew get its K/V and the first split writes them to the
 * cache for later steps. */
template <bool ROPE>
static __device__ __forceinline__ void
dec_prologue(const struct dsi_cuda_attn_args &a, const struct dec_bufs &b, const float *qrow,
             const int32_t *bt, int pos, int kvh, int split, const float *inv_freq, float *cs_s, float *sn_s,
             uint16_t *knew, uint16_t *vnew) {
    const int hd = a.head_dim, g = a.n_heads / a.n_kv_heads, kst = b.kst, pst = b.pst, tid = threadIdx.x;
    for (int i = tid; i < MAX_GROUP * hd; i += DEC_THREADS) {
        int h = i / hd, d = i % hd;
        if (h >= g) b.qh[h * kst + d] = b.ql[h * kst + d] = 0;
    }
    for (int i = tid; i < MAX_GROUP * DEC_TK; i += DEC_THREADS) {
        int h = i / DEC_TK, j = i % DEC_TK;
        if (h >= g) b.ph[h * pst + j] = b.pl[h * pst + j] = 0;
    }
    if (!ROPE) {
        for (int i = tid; i < g * hd; i += DEC_THREADS) {
            int h = i / hd, d = i % hd;
            split_bf16(qrow[(size_t)(kvh * g + h) * hd + d] * a.scale, &b.qh[h * kst + d],
                       &b.ql[h * kst + d]);
        }
        return;
    }
    const int half = hd / 2, kv_dim = a.n_kv_heads * hd;
    rope_table(cs_s, sn_s, (float)pos, inv_freq, half); /* ends with __syncthreads */
    for (int i = tid; i < g * hd; i += DEC_THREADS) {
        int h = i / hd, d = i % hd, j = d < half ? d : d - half;
        const float *qv = qrow + (size_t)(kvh * g + h) * hd;
        float x = qv[j], y = qv[j + half];
        rotate(&x, &y, cs_s[j], sn_s[j]);
        split_bf16((d < half ? x : y) * a.scale, &b.qh[h * kst + d], &b.ql[h * kst + d]);
    }
    const float *kh = qrow + (size_t)(a.n_heads + kvh) * hd;
    const float *vh = qrow + (size_t)(a.n_heads + a.n_kv_heads + kvh) * hd;
    const size_t off = (size_t)slot_of(bt, a.block_size, pos) * kv_dim + (size_t)kvh * hd;
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
}

/* Scores of the tile's keys 16 warp .. + 15 for the 8 head columns into ps
 * (keys at or past c1: -inf). */
static __device__ __forceinline__ void dec_scores(const struct dec_bufs &b, int hd, int t0, int c1) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, lg = lane >> 2, lt = lane & 3, kst = b.kst;
    float sc[4] = {0.f, 0.f, 0.f, 0.f};
    const uint16_t *ka = b.ks + (warp * 16 + (lane & 15)) * kst + (lane >> 4) * 8;
    for (int kk = 0; kk < hd; kk += 16) {
        uint32_t af[4];
        attn_ldmatrix_x4(af, ka + kk);
        const uint32_t *bh = reinterpret_cast<const uint32_t *>(b.qh + lg * kst + kk + 2 * lt);
        const uint32_t *bl = reinterpret_cast<const uint32_t *>(b.ql + lg * kst + kk + 2 * lt);
        mma_bf16_16816(sc, af[0], af[1], af[2], af[3], bh[0], bh[4]);
        mma_bf16_16816(sc, af[0], af[1], af[2], af[3], bl[0], bl[4]);
    }
    /* c0, c1: key 16w + lg, heads 2lt, 2lt + 1; c2, c3: key + 8 */
    int j0 = warp * 16 + lg, j1 = j0 + 8;
    bool v0 = t0 + j0 < c1, v1 = t0 + j1 < c1;
    *reinterpret_cast<float2 *>(b.ps + j0 * MAX_GROUP + 2 * lt) =
        make_float2(v0 ? sc[0] : -INFINITY, v0 ? sc[1] : -INFINITY);
    *reinterpret_cast<float2 *>(b.ps + j1 * MAX_GROUP + 2 * lt) =
        make_float2(v1 ? sc[2] : -INFINITY, v1 ? sc[3] : -INFINITY);
}

/* Online softmax over the tile's scores, a warp per head (w and w + 4):
 * probabilities as bf16 hi/lo into ph/pl, running max and sum in m_s/l_s,
 * the accumulator's correction in corr_s. */
static __device__ __forceinline__ void dec_softmax(const struct dec_bufs &b, int g, float *m_s, float *l_s,
                                                   float *corr_s) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, pst = b.pst;
    for (int h = warp; h < g; h += DEC_THREADS / 32) {
        float v0 = b.ps[lane * MAX_GROUP + h], v1 = b.ps[(lane + 32) * MAX_GROUP + h];
        float mt = fmaxf(v0, v1);
        for (int o = 16; o > 0; o >>= 1)
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
        float m_old = m_s[h], m_new = fmaxf(m_old, mt); /* finite: every tile has a valid key */
        float p0 = expf(v0 - m_new), p1 = expf(v1 - m_new);
        split_bf16(p0, &b.ph[h * pst + lane], &b.pl[h * pst + lane]);
        split_bf16(p1, &b.ph[h * pst + lane + 32], &b.pl[h * pst + lane + 32]);
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
}

/* acc = acc * corr + P V for this warp's 16-dim pairs (w, w + 4, ...); the
 * accumulator rows are head lg (rows 8..15: zero heads). */
static __device__ __forceinline__ void dec_pv(const struct dec_bufs &b, int n_pairs, float corr,
                                              float (&acc)[MAX_HD / 64][2][4]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, lg = lane >> 2, lt = lane & 3;
    const int kst = b.kst, pst = b.pst;
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
        const uint16_t *vb = b.vs + (lane & 15) * kst + pr * 16 + (lane >> 4) * 8;
#pragma unroll
        for (int kk = 0; kk < DEC_TK; kk += 16) {
            uint32_t bf[4];
            attn_ldmatrix_x4_trans(bf, vb + kk * kst);
            const uint32_t *ah = reinterpret_cast<const uint32_t *>(b.ph + lg * pst + kk + 2 * lt);
            const uint32_t *al = reinterpret_cast<const uint32_t *>(b.pl + lg * pst + kk + 2 * lt);
            mma_bf16_16816(acc[i][0], ah[0], 0u, ah[4], 0u, bf[0], bf[1]);
            mma_bf16_16816(acc[i][0], al[0], 0u, al[4], 0u, bf[0], bf[1]);
            mma_bf16_16816(acc[i][1], ah[0], 0u, ah[4], 0u, bf[2], bf[3]);
            mma_bf16_16816(acc[i][1], al[0], 0u, al[4], 0u, bf[2], bf[3]);
        }
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
    const int hd = a.head_dim, g = a.n_heads / a.n_kv_heads, kst = hd + 8;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, lg = lane >> 2, lt = lane & 3;
    struct dec_bufs b;
    b.kst = kst;
    b.pst = DEC_TK + 8;
    b.ks = reinterpret_cast<uint16_t *>(dsm);
    b.vs = b.ks + DEC_TK * kst;
    b.qh = b.vs + DEC_TK * kst;
    b.ql = b.qh + MAX_GROUP * kst;
    b.ps = reinterpret_cast<float *>(b.ql + MAX_GROUP * kst);
    b.ph = reinterpret_cast<uint16_t *>(b.ps + DEC_TK * MAX_GROUP);
    b.pl = b.ph + MAX_GROUP * b.pst;
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
    if (c0 < c1) dec_load_tile<ROPE>(b.ks, b.vs, a, bt, kvh, c0, c1, ctx);
    asm volatile("cp.async.commit_group;\n" ::);
    dec_prologue<ROPE>(a, b, qrow, bt, sq.pos, kvh, split, inv_freq, cs_s, sn_s, knew, vnew);
    if (tid < MAX_GROUP) {
        m_s[tid] = -INFINITY;
        l_s[tid] = 0.f;
    }
    const int n_pairs = hd / 16;
    float acc[MAX_HD / 64][2][4];
#pragma unroll
    for (int i = 0; i < MAX_HD / 64; i++)
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                acc[i][n][e] = 0.f;

    for (int t0 = c0; t0 < c1; t0 += DEC_TK) {
        __syncthreads(); /* the previous tile is consumed: the stage may be refilled */
        if (t0 != c0) {
            dec_load_tile<ROPE>(b.ks, b.vs, a, bt, kvh, t0, c1, ctx);
            asm volatile("cp.async.commit_group;\n" ::);
        }
        asm volatile("cp.async.wait_group 0;\n" ::: "memory");
        if (ROPE && ctx - 1 >= t0 && ctx - 1 < t0 + DEC_TK && ctx - 1 < c1) { /* the new token's row */
            int j = ctx - 1 - t0;
            for (int c = tid; c < hd / 8; c += DEC_THREADS) {
                *reinterpret_cast<uint4 *>(b.ks + j * kst + c * 8) =
                    *reinterpret_cast<const uint4 *>(knew + c * 8);
                *reinterpret_cast<uint4 *>(b.vs + j * kst + c * 8) =
                    *reinterpret_cast<const uint4 *>(vnew + c * 8);
            }
        }
        __syncthreads();
        dec_scores(b, hd, t0, c1);
        __syncthreads();
        dec_softmax(b, g, m_s, l_s, corr_s);
        __syncthreads();
        dec_pv(b, n_pairs, lg < g ? corr_s[lg] : 0.f, acc);
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
        a->work_bytes < dsi_cuda_attn_work_bytes(a->n_seqs, a->n_heads, a->head_dim, a->n_splits) ||
        ((uintptr_t)a->work & 7)) /* partials go out as float2 */
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
