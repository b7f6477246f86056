/*
 * sampler.c: token selection from one row of logits (engine.h: dsi_sample).
 *
 * Order of processing (HF's logits-processor order):
 *   1. logprobs / top_logprobs from the raw logits (the model's distribution,
 *      before penalties and temperature; vLLM's default "raw" logprobs)
 *   2. repetition penalty (HF): every distinct token of prompt + output:
 *      l > 0 ? l / p : l * p
 *   3. presence / frequency penalties (OpenAI): over output tokens only:
 *      l -= count * frequency + (count > 0) * presence
 *   4. temperature 0 -> argmax (lowest id on ties); else l / T, then top-k,
 *      top-p (smallest prefix of the sorted distribution whose mass reaches p),
 *      min-p (drop p_i < min_p * p_max), and a draw from what is left.
 * Randomness: xoroshiro128++ per sequence, seeded through splitmix64, one draw
 * per sampled token, so a sequence's tokens depend only on its seed, its logits
 * and its history, never on the batch it ran in.
 *
 * Scratch: one malloc per call when penalties, filters or top_logprobs need it
 * (greedy without penalties allocates nothing). If that allocation fails the
 * sampler degrades to greedy over the (penalised) logits rather than failing.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/engine.h"
#include "dsinfer/err.h"

/* One row per ranged field: lo_open means lo itself is refused. */
struct range {
    const char *name;
    size_t off;
    float lo, hi;
    bool lo_open;
};

int dsi_sampling_check(const struct dsi_sampling *s, const char **param, char **err) {
    static const struct range R[] = {
        {"temperature", offsetof(struct dsi_sampling, temperature), 0.0f, 2.0f, false},
        {"top_p", offsetof(struct dsi_sampling, top_p), 0.0f, 1.0f, true},
        {"min_p", offsetof(struct dsi_sampling, min_p), 0.0f, 1.0f, false},
        {"repetition_penalty", offsetof(struct dsi_sampling, repetition_penalty), 0.0f, 10.0f, true},
        {"presence_penalty", offsetof(struct dsi_sampling, presence_penalty), -2.0f, 2.0f, false},
        {"frequency_penalty", offsetof(struct dsi_sampling, frequency_penalty), -2.0f, 2.0f, false},
    };
    if (param) *param = NULL;
    for (size_t i = 0; i < sizeof R / sizeof R[0]; i++) {
        float v;
        memcpy(&v, (const char *)s + R[i].off, sizeof v);
        /* Written as !(v >= lo) so NaN fails too. */
        bool ok = R[i].lo_open ? v > R[i].lo : v >= R[i].lo;
        if (!ok || !(v <= R[i].hi)) {
            if (param) *param = R[i].name;
            return dsi_seterr(err, DSI_EINVAL, "%s must be %s %g and <= %g, got %g", R[i].name,
                              R[i].lo_open ? ">" : ">=", (double)R[i].lo, (double)R[i].hi, (double)v);
        }
    }
    if (s->top_k < 0) {
        if (param) *param = "top_k";
        return dsi_seterr(err, DSI_EINVAL, "top_k must be >= 0, got %d", s->top_k);
    }
    if (s->top_logprobs < 0 || s->top_logprobs > DSI_MAX_TOP_LOGPROBS) {
        if (param) *param = "top_logprobs";
        return dsi_seterr(err, DSI_EINVAL, "top_logprobs must be in 0..%d, got %d", DSI_MAX_TOP_LOGPROBS,
                          s->top_logprobs);
    }
    return 0;
}

static uint64_t splitmix64(uint64_t *x);
static uint64_t xoro_next(struct dsi_sampler_state *st);
static int cmp_i32(const void *a, const void *b);
static int32_t argmax(const float *l, int n);
static void apply_penalties(float *logits, int vocab, const struct dsi_sampling *s, const int32_t *history,
                            int n_history, int n_prompt, int32_t *scratch);
static void fill_logprobs(const float *l, int vocab, int n_top, struct dsi_token_event *ev);

void dsi_sampling_defaults(struct dsi_sampling *s) {
    memset(s, 0, sizeof *s);
    s->temperature = 1.0f;
    s->top_p = 1.0f;
    s->top_k = 0;
    s->min_p = 0.0f;
    s->repetition_penalty = 1.0f;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void dsi_sampler_seed(struct dsi_sampler_state *st, uint64_t seed) {
    uint64_t x = seed;
    st->rng[0] = splitmix64(&x);
    st->rng[1] = splitmix64(&x);
    if (!st->rng[0] && !st->rng[1]) st->rng[1] = 1; /* xoroshiro's one forbidden state */
}

static inline uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoro_next(struct dsi_sampler_state *st) {
    uint64_t s0 = st->rng[0], s1 = st->rng[1];
    uint64_t r = rotl(s0 + s1, 17) + s0;
    s1 ^= s0;
    st->rng[0] = rotl(s0, 49) ^ s1 ^ (s1 << 21);
    st->rng[1] = rotl(s1, 28);
    return r;
}

uint64_t dsi_sampler_next(struct dsi_sampler_state *st) { return xoro_next(st); }

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* NaN never wins; all-NaN gives 0. */
static int32_t argmax(const float *l, int n) {
    int32_t best = 0;
    float bv = -INFINITY;
    for (int i = 0; i < n; i++)
        if (l[i] > bv) {
            bv = l[i];
            best = i;
        }
    return best;
}

/* scratch: n_history int32s. */
static void apply_penalties(float *logits, int vocab, const struct dsi_sampling *s, const int32_t *history,
                            int n_history, int n_prompt, int32_t *scratch) {
    if (s->repetition_penalty != 1.0f && s->repetition_penalty > 0.0f && n_history > 0) {
        memcpy(scratch, history, (size_t)n_history * sizeof *scratch);
        qsort(scratch, (size_t)n_history, sizeof *scratch, cmp_i32);
        for (int i = 0; i < n_history; i++) {
            int32_t t = scratch[i];
            if ((i > 0 && scratch[i - 1] == t) || t < 0 || t >= vocab) continue;
            float l = logits[t];
            logits[t] = l > 0.0f ? l / s->repetition_penalty : l * s->repetition_penalty;
        }
    }
    int n_out = n_history - n_prompt;
    if ((s->presence_penalty != 0.0f || s->frequency_penalty != 0.0f) && n_out > 0) {
        memcpy(scratch, history + n_prompt, (size_t)n_out * sizeof *scratch);
        qsort(scratch, (size_t)n_out, sizeof *scratch, cmp_i32);
        for (int i = 0; i < n_out;) {
            int j = i;
            while (j < n_out && scratch[j] == scratch[i])
                j++;
            int32_t t = scratch[i];
            if (t >= 0 && t < vocab) logits[t] -= (float)(j - i) * s->frequency_penalty + s->presence_penalty;
            i = j;
        }
    }
}

/* log-softmax of the chosen token is filled by the caller; this fills the top list. */
static void fill_logprobs(const float *l, int vocab, int n_top, struct dsi_token_event *ev) {
    float mx = l[argmax(l, vocab)];
    double sum = 0.0;
    for (int i = 0; i < vocab; i++)
        if (l[i] == l[i]) sum += exp((double)l[i] - (double)mx);
    float lse = mx + (float)log(sum);
    /* insertion into a descending list of at most n_top; ties keep the lower id first */
    int n = 0;
    for (int i = 0; i < vocab && n_top > 0; i++) {
        float v = l[i];
        if (!(v == v)) continue;
        if (n == n_top && !(v > ev->top_logprobs[n - 1])) continue;
        int j = n < n_top ? n++ : n - 1;
        while (j > 0 && v > ev->top_logprobs[j - 1]) {
            ev->top_logprobs[j] = ev->top_logprobs[j - 1];
            ev->top_ids[j] = ev->top_ids[j - 1];
            j--;
        }
        ev->top_logprobs[j] = v;
        ev->top_ids[j] = i;
    }
    for (int k = 0; k < n; k++)
        ev->top_logprobs[k] -= lse;
    ev->n_top = n;
    ev->logprob = lse; /* temporarily: the caller turns it into l[token] - lse */
}

struct cand {
    float p; /* exp((l - l_max) / T): unnormalised probability, 1 for the top token */
    int32_t id;
};

static int cmp_cand(const void *a, const void *b) {
    const struct cand *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1; /* descending probability */
    return (x->id > y->id) - (x->id < y->id);      /* then ascending id: deterministic */
}

/* Keeps the candidates with p >= thr, in their order; returns how many (>= 1: the
 * top token has p = 1 >= any threshold used here). */
static int compact_ge(struct cand *cand, int n, double thr) {
    int m = 0;
    for (int i = 0; i < n; i++)
        if ((double)cand[i].p >= thr) cand[m++] = cand[i];
    return m > 0 ? m : 1;
}

/* Sorted insertion of c into the descending prefix cand[0..*m) capped at k entries.
 * Safe in place while scanning cand: the prefix never grows past the scan index. */
static void keep_top(struct cand *cand, int *m, int k, struct cand c) {
    if (*m == k && cmp_cand(&c, &cand[k - 1]) >= 0) return;
    int j = *m < k ? (*m)++ : k - 1;
    while (j > 0 && cmp_cand(&c, &cand[j - 1]) < 0) {
        cand[j] = cand[j - 1];
        j--;
    }
    cand[j] = c;
}

/* Temperature, top-k, top-p, min-p, then one draw. cand: vocab entries of scratch.
 * Filters work on a pre-cut candidate set so a 150k vocabulary is not sorted whole:
 *  - top-k keeps a sorted prefix by insertion;
 *  - top-p: tokens with p < (1 - top_p) * total / n hold less than (1 - top_p) of the
 *    mass together, so the nucleus never reaches them and they are dropped unsorted;
 *    then a bisection raises the threshold while the kept mass still reaches
 *    top_p * total (the nucleus is a prefix of the sorted order, so it stays inside);
 *  - min-p: p < min_p * p_max is dropped outright; alone it needs no sort at all. */
static int32_t sample_filtered(const float *logits, int vocab, const struct dsi_sampling *s,
                               struct dsi_sampler_state *st, struct cand *cand) {
    float inv_t = 1.0f / s->temperature;
    float mx = logits[argmax(logits, vocab)];
    int n = 0;
    double total = 0.0;
    for (int i = 0; i < vocab; i++) {
        if (logits[i] == -INFINITY) continue;
        cand[n].p = expf((logits[i] - mx) * inv_t); /* shifted: never overflows */
        cand[n].id = i;
        total += cand[n].p;
        n++;
    }
    if (n == 0) return 0;
    bool top_p = s->top_p<1.0f, min_p = s->min_p> 0.0f, filtered = false;
    if (s->top_k > 0 && s->top_k < n) {
        int m = 0;
        for (int i = 0; i < n; i++)
            keep_top(cand, &m, s->top_k, cand[i]);
        n = m;
        total = 0.0;
        for (int i = 0; i < n; i++)
            total += cand[i].p;
        filtered = true;
    }
    if (top_p && !filtered) {
        /* pre-cut, then narrow by bisection on the probability threshold while the
         * kept mass still reaches the nucleus target, then sort what is left */
        double target = (double)s->top_p * total, lo = (1.0 - (double)s->top_p) * total / n;
        if (min_p && (double)s->min_p > lo) lo = s->min_p; /* p_max is 1 */
        double hi = 1.0;
        n = compact_ge(cand, n, lo);
        for (int it = 0; it < 30 && n > 1024; it++) {
            double mid = 0.5 * (lo + hi), mass = 0.0;
            for (int i = 0; i < n; i++)
                if ((double)cand[i].p >= mid) mass += cand[i].p;
            if (mass >= target) {
                lo = mid;
                n = compact_ge(cand, n, lo);
            } else {
                hi = mid;
            }
        }
        qsort(cand, (size_t)n, sizeof *cand, cmp_cand);
        filtered = true;
    } else if (min_p && !filtered) {
        n = compact_ge(cand, n, s->min_p); /* no order needed: drawn in id order */
        min_p = false;
        filtered = true;
    }
    if (top_p) { /* sorted here: keep while the mass before the token is below top_p */
        double cum = 0.0, target = (double)s->top_p * total;
        int keep = 0;
        while (keep < n && (keep == 0 || cum < target))
            cum += cand[keep++].p;
        n = keep;
    }
    if (min_p) { /* sorted here (top-k or top-p ran) */
        int keep = 1;
        while (keep < n && (double)cand[keep].p >= (double)s->min_p * cand[0].p)
            keep++;
        n = keep;
    }
    double sum = total;
    if (filtered) {
        sum = 0.0;
        for (int i = 0; i < n; i++)
            sum += cand[i].p;
    }
    double u = (double)(xoro_next(st) >> 11) * (1.0 / 9007199254740992.0) * sum;
    double acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += cand[i].p;
        if (u < acc) return cand[i].id;
    }
    return cand[n - 1].id;
}

int32_t dsi_sample(float *logits, int vocab, const struct dsi_sampling *s, struct dsi_sampler_state *st,
                   const int32_t *history, int n_history, int n_prompt, struct dsi_token_event *ev) {
    if (!logits || vocab <= 0 || !s) return -1;
    if (!history || n_history < 0) n_history = 0;
    if (n_prompt < 0) n_prompt = 0;
    if (n_prompt > n_history) n_prompt = n_history;
    for (int i = 0; i < vocab; i++)
        if (isnan(logits[i])) logits[i] = -INFINITY;

    bool want_lp = ev && (s->logprobs || s->top_logprobs > 0);
    int n_top = s->top_logprobs < 0                      ? 0
                : s->top_logprobs > DSI_MAX_TOP_LOGPROBS ? DSI_MAX_TOP_LOGPROBS
                                                         : s->top_logprobs;
    bool penal = n_history > 0 && ((s->repetition_penalty != 1.0f && s->repetition_penalty > 0.0f) ||
                                   s->presence_penalty != 0.0f || s->frequency_penalty != 0.0f);
    bool greedy = !(s->temperature > 0.0f);

    /* one scratch block: raw copy (logprobs), history ints (penalties), candidates */
    size_t raw_n = want_lp ? (size_t)vocab : 0, hist_n = penal ? (size_t)n_history : 0;
    size_t cand_n = greedy ? 0 : (size_t)vocab;
    size_t bytes = raw_n * sizeof(float) + hist_n * sizeof(int32_t) + cand_n * sizeof(struct cand);
    char *mem = bytes ? malloc(bytes + 16) : NULL;
    float *raw = NULL;
    int32_t *hist = NULL;
    struct cand *cand = NULL;
    if (mem) {
        char *p = mem;
        cand = cand_n ? (struct cand *)p : NULL;
        p += cand_n * sizeof(struct cand);
        raw = raw_n ? (float *)p : NULL;
        p += raw_n * sizeof(float);
        hist = hist_n ? (int32_t *)p : NULL;
    } else if (bytes) {
        greedy = true; /* documented degradation: no memory for filters */
        want_lp = false;
        penal = false;
    }

    if (ev) {
        ev->logprob = 0.0f;
        ev->n_top = 0;
    }
    if (want_lp) {
        memcpy(raw, logits, (size_t)vocab * sizeof(float));
        fill_logprobs(raw, vocab, n_top, ev);
    }
    if (penal) apply_penalties(logits, vocab, s, history, n_history, n_prompt, hist);

    int32_t tok;
    if (greedy) {
        tok = argmax(logits, vocab);
    } else {
        tok = sample_filtered(logits, vocab, s, st, cand);
    }
    if (ev) {
        ev->token = tok;
        if (want_lp) ev->logprob = raw[tok] - ev->logprob; /* ev->logprob held the log-sum-exp */
    }
    free(mem);
    return tok;
}
