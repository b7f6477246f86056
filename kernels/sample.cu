/*
 * sample.cu: token choice on the GPU, one block per logits row, so that only ids
 * cross to the host (4 bytes per sequence instead of 600 KB of logits).
 *
 * Greedy: argmax, ties to the lowest id (as the CPU sampler and torch.argmax).
 * Otherwise (HF order: temperature, then top-k, then top-p): values v = logit/T;
 * the k-th largest value is found exactly by a 4-pass 8-bit radix select over
 * order-preserving integer keys (kth_key, no sort); the top-p cut is the largest key
 * whose kept mass is >= top_p of the top-k mass (again 32 block-wide passes);
 * ties at a threshold are kept, so a set may hold more than k tokens. The token
 * is drawn by inverse CDF with the host-provided uniform u (the host RNG of
 * each sequence stays the one source of randomness): a block-wide scan over
 * contiguous id ranges finds the id whose cumulative mass passes u * Z.
 * Cost: ~40 passes over the row, which stays in L2 (608 KB for vocab 152k);
 * with a 32-step top-k select (~70 passes) it took 0.3-0.7 ms at batch 1 on
 * the H200, a quarter of a 7B decode step.
 *
 * A row is vocab floats apart; only its first n_ids (where set) are candidates:
 * a checkpoint's head pads past the tokenizer's last id, and a padding id has
 * no text (issue 26), so those rows are never drawn, whatever their logits.
 *
 * Fast path (the same sets and the same draw rule, fewer passes): the k-th
 * largest key by a 4-pass 8-bit radix select (integer histograms in shared
 * memory: exact and order-free), then the candidates (the top-k, or the top
 * 1024 when top-p alone is asked and they hold the mass it needs) compacted
 * to shared memory and sorted (bitonic, by key then id: deterministic); the
 * top-p cut and the draw are prefix sums over that list, in key order and
 * then in id order. About 7 passes over the row. Taken when the candidates
 * fit FAST_MAX (ties can make more) and, for top-p alone, when the top 1024
 * carry top_p of the mass; otherwise the full scan above.
 */
#include <math.h>

#include "kernels.h"

#define ST 1024

static __device__ __forceinline__ uint32_t fkey(float f) {
    uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

template <typename T, typename Op> static __device__ __forceinline__ T block_reduce(T v, T *red, Op op) {
    for (int o = 16; o > 0; o >>= 1)
        v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = red[lane < (int)(blockDim.x >> 5) ? lane : 0];
    for (int o = 16; o > 0; o >>= 1)
        v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

struct op_add_f {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct op_max_f {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
/* (value, id) packed so that the max picks the larger value, then the lower id */
struct op_max_ull {
    __device__ unsigned long long operator()(unsigned long long a, unsigned long long b) const {
        return a > b ? a : b;
    }
};

struct sample_smem {
    float redf[32];
    unsigned long long redl[32];
    float scan[ST];
};

static __device__ uint32_t kth_key(const float *row, int vocab, float inv_t, unsigned k, unsigned *hist,
                                   uint32_t *bcast);

/* The full-scan sampler (greedy included) for one row; ids[blockIdx.x].
 * hist (256) and bcast (2): kth_key's shared scratch. */
static __device__ void sample_full(int32_t *ids, const float *row, const struct dsi_cuda_sample_params &p,
                                   int vocab, struct sample_smem &sm, unsigned *hist, uint32_t *bcast) {
    float *redf = sm.redf, *scan = sm.scan;
    unsigned long long *redl = sm.redl;
    const int tid = threadIdx.x;

    if (!(p.temperature > 0.f)) {
        unsigned long long best = 0;
        for (int i = tid; i < vocab; i += ST) {
            unsigned long long c = ((unsigned long long)fkey(row[i]) << 32) | (uint32_t)(0x7fffffff - i);
            best = c > best ? c : best;
        }
        best = block_reduce(best, redl, op_max_ull());
        if (tid == 0) ids[blockIdx.x] = 0x7fffffff - (int32_t)(best & 0xffffffffu);
        return;
    }
    const float inv_t = 1.f / p.temperature;
    float mx = -INFINITY;
    for (int i = tid; i < vocab; i += ST)
        mx = fmaxf(mx, row[i] * inv_t);
    mx = block_reduce(mx, redf, op_max_f());

    /* the k-th largest key, exactly (the fast path's radix select) */
    uint32_t thr =
        p.top_k > 0 && p.top_k < vocab ? kth_key(row, vocab, inv_t, (unsigned)p.top_k, hist, bcast) : 0u;
    float z = 0.f;
    for (int i = tid; i < vocab; i += ST) {
        float v = row[i] * inv_t;
        if (fkey(v) >= thr) z += expf(v - mx);
    }
    z = block_reduce(z, redf, op_add_f());
    if (p.top_p < 1.f && p.top_p > 0.f) {
        float need = p.top_p * z;
        uint32_t prefix = 0;
        for (int bit = 31; bit >= 0; bit--) {
            uint32_t cand = prefix | (1u << bit);
            uint32_t c = cand > thr ? cand : thr;
            float mass = 0.f;
            for (int i = tid; i < vocab; i += ST) {
                float v = row[i] * inv_t;
                if (fkey(v) >= c) mass += expf(v - mx);
            }
            mass = block_reduce(mass, redf, op_add_f());
            if (mass >= need) prefix = cand;
        }
        if (prefix > thr) thr = prefix;
        z = 0.f;
        for (int i = tid; i < vocab; i += ST) {
            float v = row[i] * inv_t;
            if (fkey(v) >= thr) z += expf(v - mx);
        }
        z = block_reduce(z, redf, op_add_f());
    }
    /* inverse CDF over contiguous id ranges */
    const int seg = (vocab + ST - 1) / ST, lo = tid * seg, hi = min(vocab, lo + seg);
    float mine = 0.f;
    int last_kept = -1;
    for (int i = lo; i < hi; i++) {
        float v = row[i] * inv_t;
        if (fkey(v) >= thr) {
            mine += expf(v - mx);
            last_kept = i;
        }
    }
    scan[tid] = mine;
    __syncthreads();
    for (int off = 1; off < ST; off <<= 1) { /* Hillis-Steele inclusive scan */
        float add = tid >= off ? scan[tid - off] : 0.f;
        __syncthreads();
        scan[tid] += add;
        __syncthreads();
    }
    const float target = p.u * z;
    const float excl = scan[tid] - mine;
    unsigned long long pick = 0; /* (found?, id) via max: highest kept id as fallback */
    if (last_kept >= 0) pick = (unsigned long long)last_kept;
    if (mine > 0.f && target >= excl && target < scan[tid]) {
        float c = excl;
        int id = last_kept;
        for (int i = lo; i < hi; i++) {
            float v = row[i] * inv_t;
            if (fkey(v) >= thr) {
                c += expf(v - mx);
                if (target < c) {
                    id = i;
                    break;
                }
            }
        }
        pick = (1ull << 40) | (unsigned long long)id;
    }
    pick = block_reduce(pick, redl, op_max_ull());
    if (tid == 0) ids[blockIdx.x] = (int32_t)(pick & 0xffffffffu);
}

#define FAST_MAX 2048  /* candidates the fast path sorts in shared memory */
#define FAST_TOPP 1024 /* top-p alone: the candidates are the top FAST_TOPP */

/* The k-th largest key of the row (v = logit * inv_t), k >= 1: 4 passes of
 * 8-bit digits, most significant first; block-uniform result. */
static __device__ uint32_t kth_key(const float *row, int vocab, float inv_t, unsigned k, unsigned *hist,
                                   uint32_t *bcast) {
    const int tid = threadIdx.x, lane = tid & 31;
    uint32_t prefix = 0, mask = 0;
    unsigned remaining = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += ST)
            hist[i] = 0;
        __syncthreads();
        for (int i = tid; i < vocab; i += ST) {
            uint32_t key = fkey(row[i] * inv_t);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid < 32) { /* lane l: bins 255 - 8l .. 248 - 8l, counted from the top */
            unsigned c[8], sum = 0;
#pragma unroll
            for (int b = 0; b < 8; b++)
                sum += c[b] = hist[255 - 8 * lane - b];
            unsigned incl = sum;
            for (int o = 1; o < 32; o <<= 1) {
                unsigned t = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += t;
            }
            unsigned before = incl - sum;
            if (before < remaining && remaining <= incl) {
                unsigned acc = before;
                for (int b = 0; b < 8; b++) {
                    if (acc + c[b] >= remaining) {
                        bcast[0] = 255u - 8u * lane - b;
                        bcast[1] = remaining - acc;
                        break;
                    }
                    acc += c[b];
                }
            }
        }
        __syncthreads();
        prefix |= bcast[0] << shift;
        mask |= 255u << shift;
        remaining = bcast[1];
        __syncthreads();
    }
    return prefix;
}

/* Descending bitonic sort of key[0..n) (n a power of two <= FAST_MAX) with val. */
static __device__ void bitonic_desc(unsigned long long *key, float *val, int n) {
    for (int k = 2; k <= n; k <<= 1)
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < n; i += ST) {
                int l = i ^ j;
                if (l > i) {
                    bool desc = (i & k) == 0;
                    unsigned long long a = key[i], b = key[l];
                    if (desc ? a < b : a > b) {
                        key[i] = b, key[l] = a;
                        float t = val[i];
                        val[i] = val[l], val[l] = t;
                    }
                }
            }
            __syncthreads();
        }
}

/* Inclusive prefix sums of v[0..n) in place (n <= FAST_MAX), in a fixed order. */
static __device__ void scan_inplace(float *v, int n, float *part) {
    const int tid = threadIdx.x, per = (n + ST - 1) / ST, lo = tid * per, hi = min(n, lo + per);
    float run = 0.f;
    for (int i = lo; i < hi; i++)
        v[i] = run += v[i];
    part[tid] = run;
    __syncthreads();
    for (int off = 1; off < ST; off <<= 1) {
        float add = tid >= off ? part[tid - off] : 0.f;
        __syncthreads();
        part[tid] += add;
        __syncthreads();
    }
    float base = tid > 0 ? part[tid - 1] : 0.f;
    for (int i = lo; i < hi; i++)
        v[i] += base;
    __syncthreads();
}

struct fast_smem {
    unsigned long long key[FAST_MAX];
    float val[FAST_MAX];
    unsigned hist[256];
    uint32_t bcast[4];
    unsigned count;
    int ok;
};

/* The fast path; returns false (block-uniform, nothing written) where it does
 * not apply, for sample_full to run. */
static __device__ bool sample_fast(int32_t *ids, const float *row, const struct dsi_cuda_sample_params &p,
                                   int vocab, struct sample_smem &sm, struct fast_smem &f) {
    const int tid = threadIdx.x;
    const bool topk = p.top_k > 0 && p.top_k < vocab, topp = p.top_p < 1.f && p.top_p > 0.f;
    if (!(p.temperature > 0.f) || (!topk && !topp)) return false;
    if (!topk && vocab <= FAST_TOPP) return false;
    if (topk && p.top_k > FAST_TOPP && !topp) return false; /* the kept set would not fit */
    const float inv_t = 1.f / p.temperature;
    float mx = -INFINITY;
    for (int i = tid; i < vocab; i += ST)
        mx = fmaxf(mx, row[i] * inv_t);
    mx = block_reduce(mx, sm.redf, op_max_f());
    if (!topk) {
        /* top-p alone: the top FAST_TOPP weigh at most FAST_TOPP (each
         * exp(v - mx) <= 1); a flat row whose top_p mass exceeds that leaves
         * here after two passes */
        float z = 0.f;
        for (int i = tid; i < vocab; i += ST)
            z += expf(row[i] * inv_t - mx);
        z = block_reduce(z, sm.redf, op_add_f());
        if ((float)FAST_TOPP < p.top_p * z) return false;
    }
    const unsigned want = topk && p.top_k <= FAST_TOPP ? (unsigned)p.top_k : FAST_TOPP;
    const uint32_t thr_c = kth_key(row, vocab, inv_t, want, f.hist, f.bcast);
    const uint32_t thr_k =
        topk ? (p.top_k <= FAST_TOPP ? thr_c : kth_key(row, vocab, inv_t, p.top_k, f.hist, f.bcast)) : 0u;
    /* the top-k mass, as sample_full adds it (the full scan's z) */
    float zk = 0.f;
    if (!(topk && p.top_k <= FAST_TOPP)) {
        /* and the candidates' mass: if it is short of top_p of zk the cut lies
         * below them, known before any compaction or sort (flat rows) */
        float mc = 0.f;
        for (int i = tid; i < vocab; i += ST) {
            float v = row[i] * inv_t;
            uint32_t key = fkey(v);
            float e = key >= thr_k ? expf(v - mx) : 0.f;
            zk += e;
            mc += key >= thr_c ? e : 0.f;
        }
        zk = block_reduce(zk, sm.redf, op_add_f());
        mc = block_reduce(mc, sm.redf, op_add_f());
        if (mc < p.top_p * zk) return false;
    }
    /* compact keys >= thr_c */
    if (tid == 0) f.count = 0;
    __syncthreads();
    for (int i = tid; i < vocab; i += ST) {
        float v = row[i] * inv_t;
        uint32_t key = fkey(v);
        if (key >= thr_c) {
            unsigned pos = atomicAdd(&f.count, 1u);
            if (pos < FAST_MAX) {
                f.key[pos] =
                    (unsigned long long)key << 32 | (uint32_t)(0x7fffffff - i); /* key desc, id asc */
                f.val[pos] = expf(v - mx);
            }
        }
    }
    __syncthreads();
    const unsigned n = f.count;
    if (n > FAST_MAX) return false; /* ties past the cap */
    int np2 = 1;
    while (np2 < (int)n)
        np2 <<= 1;
    for (int i = n + tid; i < np2; i += ST)
        f.key[i] = 0, f.val[i] = 0.f;
    __syncthreads();
    bitonic_desc(f.key, f.val, np2);
    /* cumulative mass in key order; the top-p cut is the first tie group whose
     * end reaches top_p of the top-k mass */
    uint32_t thr = thr_k > thr_c ? thr_k : thr_c;
    if (topp) {
        scan_inplace(f.val, n, sm.scan);
        if (topk && p.top_k <= FAST_TOPP) zk = f.val[n - 1];
        const float need = p.top_p * zk;
        if (tid == 0) f.ok = 0;
        __syncthreads();
        if (!(topk && p.top_k <= FAST_TOPP) && f.val[n - 1] < need) return false; /* the cut lies below */
        for (int i = tid; i < (int)n; i += ST) {
            uint32_t ki = (uint32_t)(f.key[i] >> 32);
            bool group_end = i == (int)n - 1 || (uint32_t)(f.key[i + 1] >> 32) != ki;
            float prev = 0.f; /* cumulative mass before this tie group */
            if (group_end && f.val[i] >= need) {
                int j = i;
                while (j > 0 && (uint32_t)(f.key[j - 1] >> 32) == ki)
                    j--;
                prev = j > 0 ? f.val[j - 1] : 0.f;
                if (prev < need) {
                    f.bcast[2] = ki;
                    f.ok = 1;
                }
            }
        }
        __syncthreads();
        if (!f.ok) return false;
        if (f.bcast[2] > thr) thr = f.bcast[2];
        __syncthreads();
        /* the scan replaced the masses: recompute them for the draw below */
        for (int i = tid; i < (int)n; i += ST) {
            int id = 0x7fffffff - (int)(uint32_t)(f.key[i] & 0xffffffffu);
            f.val[i] = expf(row[id] * inv_t - mx);
        }
        __syncthreads();
    }
    /* the kept set (keys >= thr) in id order, then the inverse CDF */
    for (int i = tid; i < np2; i += ST) {
        uint32_t ki = (uint32_t)(f.key[i] >> 32);
        int id = 0x7fffffff - (int)(uint32_t)(f.key[i] & 0xffffffffu);
        bool kept = i < (int)n && ki >= thr;
        f.key[i] = kept ? (unsigned long long)(0x7fffffffu - (uint32_t)id) : 0ull;
        if (!kept) f.val[i] = 0.f;
    }
    __syncthreads();
    bitonic_desc(f.key, f.val, np2);
    scan_inplace(f.val, n, sm.scan);
    const float z = f.val[n - 1], target = p.u * z;
    if (tid == 0) f.bcast[3] = 0xffffffffu;
    __syncthreads();
    for (int i = tid; i < (int)n; i += ST) {
        bool kept = f.key[i] != 0ull;
        float before = i > 0 ? f.val[i - 1] : 0.f;
        if (kept && target >= before && target < f.val[i]) atomicMin(&f.bcast[3], (unsigned)i);
    }
    __syncthreads();
    if (tid == 0) {
        unsigned at = f.bcast[3];
        if (at == 0xffffffffu) { /* rounding: the highest kept id, as the full scan */
            at = 0;
            for (unsigned i = 0; i < n; i++)
                if (f.key[i] != 0ull) at = i;
        }
        ids[blockIdx.x] = (int32_t)(0x7fffffffu - (uint32_t)f.key[at]);
    }
    return true;
}

/* variant 0: the fast path where it applies, else the full scan; 1: the full
 * scan always (tests compare the two) */
static __global__ void __launch_bounds__(ST)
    sample_kernel(int32_t *ids, const float *logits, const struct dsi_cuda_sample_params *params, int vocab,
                  int variant) {
    __shared__ struct sample_smem sm;
    __shared__ struct fast_smem f;
    const float *row = logits + (size_t)blockIdx.x * vocab;
    const struct dsi_cuda_sample_params p = params[blockIdx.x];
    /* the row's stride stays vocab; the ids drawn from are its first n */
    const int n = p.n_ids > 0 && p.n_ids < vocab ? p.n_ids : vocab;
    if (variant == 0 && sample_fast(ids, row, p, n, sm, f)) return;
    __syncthreads();
    sample_full(ids, row, p, n, sm, f.hist, f.bcast);
}

extern "C" int dsi_cuda_sample_variant(int32_t *ids, const float *logits,
                                       const struct dsi_cuda_sample_params *p, int rows, int vocab,
                                       int variant, cudaStream_t s) {
    if (rows < 0 || vocab <= 0 || variant < 0 || variant > 1) return DSI_EINVAL;
    if (rows == 0) return 0;
    sample_kernel<<<rows, ST, 0, s>>>(ids, logits, p, vocab, variant);
    return DSI_CUDA_CHECK(cudaGetLastError());
}

extern "C" int dsi_cuda_sample(int32_t *ids, const float *logits, const struct dsi_cuda_sample_params *p,
                               int rows, int vocab, cudaStream_t s) {
    return dsi_cuda_sample_variant(ids, logits, p, rows, vocab, 0, s);
}
