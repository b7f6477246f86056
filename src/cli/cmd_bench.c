/*
 * cmd_bench.c: `dsinfer bench`: engine-level throughput of a backend, no HTTP.
 *
 *   dsinfer bench --model DIR [--backend cpu|cuda] [--dtype f32,bf16,int8] [--batch 1,4,16,64]
 *                 [--context 128,2048] [--prefill 512] [--steps 32] [--warmup 2]
 *                 [--engine-prompt 32] [--repeat 1] [--fill prefill|none] [--peak-gbs X]
 *                 [--kv-dtype f32|bf16] [--threads N] [--no-verify] [--json]
 *
 * For each weight dtype it loads the backend once and measures three things:
 *   decode   B sequences whose KV already holds C tokens; after --warmup untimed
 *            steps, N timed steps of forward (one token per sequence) plus greedy
 *            sampling of every row, as the engine does it: through the backend's
 *            forward_sample when it has one (only ids cross to the host; then
 *            "fwd ms" is forward + sample together, "sample ms" 0, and the report
 *            says sample path "device"), else forward + dsi_sample on the host
 *            (path "host"). tok/s = B*N / time. Roofline share
 *            = bytes moved per step (weight_bytes + B * mean context * kv_bytes_per_token)
 *            / step time / peak bandwidth.
 *   prefill  one P-token prompt (chunks of max_batch_tokens) then one sample: prefill
 *            tok/s and time to first token (best of 1 + R runs; the extra one warms up).
 *   engine   B requests submitted at once to dsi_engine (continuous batching,
 *            greedy, prompt --engine-prompt tokens, N new tokens each): aggregate
 *            tok/s from first submit to last token, and mean time to first token.
 * --repeat R runs every decode and engine measurement R times and keeps the fastest:
 * on a shared machine other work only ever slows a run down.
 *
 * KV layout: sequence i owns blocks [i*nb, (i+1)*nb). With --fill prefill (default) the
 * first max(B) sequences are prefilled once per dtype to max(C) tokens of random ids
 * (untimed) and every (B, C) run reuses them, so attention reads real model K/V. With
 * --fill none the pool is read as it is (zeros on the CPU): same bytes, no setup time.
 * Peak bandwidth: --peak-gbs, else 4250 GB/s for cuda (H200 copy), else a memcpy
 * measured at start (all threads, counted as read + write bytes, best of 5).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "dsinfer/backend.h"
#include "dsinfer/engine.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "dsinfer/model.h"

#define MAX_LIST 16
#define CUDA_PEAK_GBS 4250.0 /* DESIGN.md: H200 device copy, measured on the GPU machine */
#define PEAK_BUF_BYTES ((size_t)64 << 20)

struct bench_args {
    const char *dir, *backend;
    enum dsi_weight_dtype dtypes[3];
    int n_dtypes;
    int batch[MAX_LIST], n_batch, context[MAX_LIST], n_context;
    int prefill, steps, warmup, engine_prompt, n_threads, repeat;
    bool kv_set, fill, no_verify, json;
    enum dsi_kv_dtype kv_dtype;
    double peak_gbs;
};

struct decode_res {
    int batch, context, steps;
    double tok_s, ms_step, ms_forward, ms_sample, bytes_step, gbs, roofline;
};

struct engine_res {
    int streams, tokens, errors;
    double wall_s, tok_s, ttft_ms;
};

struct dtype_res {
    enum dsi_weight_dtype dtype;
    size_t weight_bytes, kv_bytes_per_token;
    int n_kv_blocks;
    double fill_s;
    bool device_sample; /* the backend has forward_sample: decode and engine sample there */
    struct decode_res dec[MAX_LIST * MAX_LIST];
    int n_dec;
    bool have_prefill;
    double pre_tok_s, pre_ms, ttft_ms;
    struct engine_res eng[MAX_LIST];
    int n_eng;
};

/* The engine run's shared state: events arrive on the scheduler thread. */
struct eng_req {
    struct eng_wait *w;
    double t_submit, t_first;
    int n_tokens, error;
    bool done;
};
struct eng_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n_done;
};

static double now_s(void);
static int parse_list(const char *opt, const char *v, int lo, int hi, int *out, int *n);
static int parse_int(const char *opt, const char *v, long lo, long hi, int *out);
static int parse_args(int argc, char **argv, struct bench_args *a);
static double measure_peak_gbs(int n_threads);
static int run_dtype(const struct bench_args *a, const struct dsi_model *m, enum dsi_weight_dtype dt,
                     double peak_gbs, struct dtype_res *r, char **err);
static void print_table(const struct bench_args *a, const struct dsi_model *m, double peak,
                        const char *peak_src, const struct dtype_res *r, int n);
static int print_json(const struct bench_args *a, const struct dsi_model *m, double peak,
                      const char *peak_src, const struct dtype_res *r, int n);
static const char *dtype_name(enum dsi_weight_dtype d);

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *dtype_name(enum dsi_weight_dtype d) {
    return d == DSI_W_F32 ? "f32" : d == DSI_W_BF16 ? "bf16" : "int8";
}

static int parse_int(const char *opt, const char *v, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "dsinfer bench: %s wants an integer in %ld..%ld, got '%s'\n", opt, lo, hi, v);
        return -1;
    }
    *out = (int)x;
    return 0;
}

/* "1,4,16": up to MAX_LIST integers in lo..hi. */
static int parse_list(const char *opt, const char *v, int lo, int hi, int *out, int *n) {
    *n = 0;
    const char *p = v;
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < lo || x > hi || (*end && *end != ',') || *n == MAX_LIST) {
            fprintf(stderr, "dsinfer bench: %s wants up to %d comma-separated integers in %d..%d, got '%s'\n",
                    opt, MAX_LIST, lo, hi, v);
            return -1;
        }
        out[(*n)++] = (int)x;
        p = *end ? end + 1 : end;
    }
    if (*n == 0) {
        fprintf(stderr, "dsinfer bench: %s is empty\n", opt);
        return -1;
    }
    return 0;
}

static int parse_args(int argc, char **argv, struct bench_args *a) {
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--json")) {
            a->json = true;
            continue;
        }
        if (!strcmp(o, "--no-verify")) {
            a->no_verify = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "dsinfer bench: unexpected argument '%s' (or missing value)\n", o);
            return -1;
        }
        i++;
        if (!strcmp(o, "--model"))
            a->dir = v;
        else if (!strcmp(o, "--backend")) {
            if (strcmp(v, "cpu") && strcmp(v, "cuda")) {
                fprintf(stderr, "dsinfer bench: --backend wants cpu or cuda, got '%s'\n", v);
                return -1;
            }
            a->backend = v;
        } else if (!strcmp(o, "--dtype")) {
            a->n_dtypes = 0;
            char buf[64];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                enum dsi_weight_dtype d;
                if (!strcmp(t, "f32"))
                    d = DSI_W_F32;
                else if (!strcmp(t, "bf16"))
                    d = DSI_W_BF16;
                else if (!strcmp(t, "int8"))
                    d = DSI_W_INT8;
                else {
                    fprintf(stderr,
                            "dsinfer bench: --dtype wants f32, bf16 or int8 (comma-separated), got '%s'\n",
                            v);
                    return -1;
                }
                if (a->n_dtypes == 3) {
                    fprintf(stderr, "dsinfer bench: --dtype lists at most 3 dtypes\n");
                    return -1;
                }
                a->dtypes[a->n_dtypes++] = d;
            }
            if (!a->n_dtypes) {
                fprintf(stderr, "dsinfer bench: --dtype is empty\n");
                return -1;
            }
        } else if (!strcmp(o, "--kv-dtype")) {
            if (strcmp(v, "f32") && strcmp(v, "bf16")) {
                fprintf(stderr, "dsinfer bench: --kv-dtype wants f32 or bf16, got '%s'\n", v);
                return -1;
            }
            a->kv_dtype = strcmp(v, "f32") ? DSI_KV_BF16 : DSI_KV_F32;
            a->kv_set = true;
        } else if (!strcmp(o, "--fill")) {
            if (strcmp(v, "prefill") && strcmp(v, "none")) {
                fprintf(stderr, "dsinfer bench: --fill wants prefill or none, got '%s'\n", v);
                return -1;
            }
            a->fill = !strcmp(v, "prefill");
        } else if (!strcmp(o, "--batch")) {
            if (parse_list(o, v, 1, 4096, a->batch, &a->n_batch)) return -1;
        } else if (!strcmp(o, "--context")) {
            if (parse_list(o, v, 0, 1 << 20, a->context, &a->n_context)) return -1;
        } else if (!strcmp(o, "--prefill")) {
            if (parse_int(o, v, 0, 1 << 20, &a->prefill)) return -1;
        } else if (!strcmp(o, "--steps")) {
            if (parse_int(o, v, 1, 1 << 20, &a->steps)) return -1;
        } else if (!strcmp(o, "--warmup")) {
            if (parse_int(o, v, 0, 1024, &a->warmup)) return -1;
        } else if (!strcmp(o, "--engine-prompt")) {
            if (parse_int(o, v, 0, 1 << 20, &a->engine_prompt)) return -1;
        } else if (!strcmp(o, "--repeat")) {
            if (parse_int(o, v, 1, 100, &a->repeat)) return -1;
        } else if (!strcmp(o, "--threads")) {
            if (parse_int(o, v, 1, 1024, &a->n_threads)) return -1;
        } else if (!strcmp(o, "--peak-gbs")) {
            char *end;
            errno = 0;
            a->peak_gbs = strtod(v, &end);
            if (errno || end == v || *end || !(a->peak_gbs > 0 && a->peak_gbs < 1e6)) {
                fprintf(stderr, "dsinfer bench: --peak-gbs wants a positive number of GB/s, got '%s'\n", v);
                return -1;
            }
        } else {
            fprintf(stderr, "dsinfer bench: unexpected argument '%s'\n", o);
            return -1;
        }
    }
    if (!a->dir) {
        fprintf(stderr,
                "usage: dsinfer bench --model DIR [--backend cpu|cuda] [--dtype f32,bf16,int8] "
                "[--batch 1,4,16,64] [--context 128,2048] [--prefill 512] [--steps N] [--warmup N] "
                "[--engine-prompt N] [--repeat R] [--fill prefill|none] [--peak-gbs X] [--kv-dtype f32|bf16] "
                "[--threads N] [--no-verify] [--json]\n");
        return -1;
    }
    return 0;
}

struct copy_job {
    char *dst;
    const char *src;
    size_t n;
};

static void *copy_main(void *p) {
    struct copy_job *j = p;
    memcpy(j->dst, j->src, j->n);
    return NULL;
}

/* Best of 5 copies of PEAK_BUF_BYTES split over n_threads threads; GB/s counting
 * read + write bytes (STREAM "copy" convention). 0 when memory is short. */
static double measure_peak_gbs(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 64) n_threads = 64;
    char *src = malloc(PEAK_BUF_BYTES), *dst = malloc(PEAK_BUF_BYTES);
    double best = 0;
    if (!src || !dst) goto out;
    memset(src, 1, PEAK_BUF_BYTES);
    memset(dst, 2, PEAK_BUF_BYTES); /* fault the pages in before timing */
    pthread_t th[64];
    bool started[64];
    struct copy_job jobs[64];
    size_t part = PEAK_BUF_BYTES / (size_t)n_threads;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_s();
        for (int i = n_threads - 1; i >= 0; i--) {
            jobs[i] = (struct copy_job){dst + (size_t)i * part, src + (size_t)i * part,
                                        i == n_threads - 1 ? PEAK_BUF_BYTES - (size_t)i * part : part};
            /* slice 0 runs on this thread; a thread that cannot start copies inline */
            started[i] = i > 0 && pthread_create(&th[i], NULL, copy_main, &jobs[i]) == 0;
            if (!started[i]) copy_main(&jobs[i]);
        }
        for (int i = 1; i < n_threads; i++)
            if (started[i]) pthread_join(th[i], NULL);
        double dt = now_s() - t0;
        double gbs = dt > 0 ? 2.0 * (double)PEAK_BUF_BYTES / dt / 1e9 : 0;
        if (gbs > best) best = gbs;
    }
out:
    free(src);
    free(dst);
    return best;
}

/* Random token ids in 0..vocab-1 from a fixed seed (splitmix64): repeatable prompts. */
static int32_t rand_id(uint64_t *s, int vocab) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (int32_t)((z ^ (z >> 31)) % (uint64_t)vocab);
}

/* Feeds n tokens of sequence `seq` from position pos in chunks of at most chunk
 * tokens; logits (one row) of the last token when want_last. */
static int feed_seq(struct dsi_backend *be, uint64_t seq, const int32_t *ids, int n, int pos, int chunk,
                    const int32_t *table, int nb, bool want_last, float *logits, char **err) {
    for (int done = 0; done < n;) {
        int k = n - done < chunk ? n - done : chunk;
        struct dsi_batch_seq s = {.seq_id = seq,
                                  .tokens = ids + done,
                                  .n_tokens = k,
                                  .pos = pos + done,
                                  .block_table = table,
                                  .n_blocks = nb,
                                  .want_logits = want_last && done + k == n};
        struct dsi_batch b = {&s, 1};
        int rc = be->ops->forward(be, &b, logits, err);
        if (rc) return rc;
        done += k;
    }
    return 0;
}

static void eng_cb(void *user, const struct dsi_token_event *ev) {
    struct eng_req *q = user;
    double t = now_s();
    pthread_mutex_lock(&q->w->mu);
    if (ev->token >= 0) { /* a STOP final event carries no token (engine.h) */
        q->n_tokens++;
        if (q->t_first == 0) q->t_first = t;
    }
    if (ev->finished) {
        q->done = true;
        if (ev->finish == DSI_FINISH_ERROR || ev->finish == DSI_FINISH_CANCELLED)
            q->error = ev->error ? ev->error : -1;
        q->w->n_done++;
        pthread_cond_signal(&q->w->cv);
    }
    pthread_mutex_unlock(&q->w->mu);
}

/* B requests at once through the engine; waits for every final event. */
static int engine_run(struct dsi_engine *e, int B, int n_prompt, int n_new, int vocab, struct engine_res *r,
                      char **err) {
    struct eng_wait w = {.n_done = 0};
    struct eng_req *q = calloc((size_t)B, sizeof *q);
    int32_t *prompt = malloc((size_t)n_prompt * sizeof *prompt);
    if (!q || !prompt) {
        free(q);
        free(prompt);
        return dsi_seterr(err, DSI_ENOMEM, "bench: out of memory");
    }
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    uint64_t rng = 7;
    int rc = 0, submitted = 0;
    double t0 = now_s();
    for (int i = 0; i < B; i++) {
        for (int k = 0; k < n_prompt; k++)
            prompt[k] = rand_id(&rng, vocab);
        struct dsi_request_params p = {.prompt = prompt, .n_prompt = n_prompt, .max_tokens = n_new};
        dsi_sampling_defaults(&p.sampling);
        p.sampling.temperature = 0;
        q[i].w = &w;
        q[i].t_submit = now_s();
        uint64_t id;
        if ((rc = dsi_engine_submit(e, &p, eng_cb, &q[i], &id, err))) break;
        submitted++;
    }
    pthread_mutex_lock(&w.mu);
    while (w.n_done < submitted)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    double wall = now_s() - t0, ttft = 0;
    *r = (struct engine_res){.streams = B, .wall_s = wall};
    for (int i = 0; i < submitted; i++) {
        r->tokens += q[i].n_tokens;
        if (q[i].error) r->errors++;
        ttft += q[i].t_first > 0 ? q[i].t_first - q[i].t_submit : 0;
    }
    r->tok_s = wall > 0 ? r->tokens / wall : 0;
    r->ttft_ms = submitted ? ttft / submitted * 1e3 : 0;
    if (!rc && r->errors)
        rc = dsi_seterr(err, DSI_EINTERNAL, "bench: %d of %d engine requests failed", r->errors, B);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    free(q);
    free(prompt);
    return rc;
}

static int max_of(const int *v, int n) {
    int m = v[0];
    for (int i = 1; i < n; i++)
        if (v[i] > m) m = v[i];
    return m;
}

/* W untimed then N timed decode steps of B sequences at context C: forward of one
 * token per sequence, then greedy sampling of every row, as the engine does: in the
 * backend when it has forward_sample (sp, sid: B entries), else on the host. Adds
 * the timed forward and sampling seconds to *t_fwd and *t_smp (forward_sample: all
 * of it to *t_fwd, the two are one call). */
static int decode_steps(struct dsi_backend *be, int B, int C, int W, int N, const int32_t *table, int nb,
                        struct dsi_batch_seq *seqs, int32_t *cur, struct dsi_sampler_state *st, float *logits,
                        const struct dsi_sampling *greedy, struct dsi_sample_params *sp, int32_t *sid,
                        double *t_fwd, double *t_smp, char **err) {
    int V = be->vocab_size;
    for (int step = 0; step < W + N; step++) {
        for (int s = 0; s < B; s++)
            seqs[s] = (struct dsi_batch_seq){.seq_id = (uint64_t)s + 1,
                                             .tokens = &cur[s],
                                             .n_tokens = 1,
                                             .pos = C + step,
                                             .block_table = table + (size_t)s * nb,
                                             .n_blocks = nb,
                                             .want_logits = true};
        struct dsi_batch b = {seqs, B};
        if (be->ops->forward_sample) {
            for (int s = 0; s < B; s++)
                sp[s] = (struct dsi_sample_params){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .u = 0.0f};
            double t0 = now_s();
            int rc = be->ops->forward_sample(be, &b, sp, sid, err);
            if (rc) return rc;
            double t1 = now_s();
            for (int s = 0; s < B; s++)
                cur[s] = sid[s] >= 0 && sid[s] < V ? sid[s] : 0;
            if (step >= W) *t_fwd += t1 - t0;
            continue;
        }
        double t0 = now_s();
        int rc = be->ops->forward(be, &b, logits, err);
        if (rc) return rc;
        double t1 = now_s();
        for (int s = 0; s < B; s++) {
            int32_t t = dsi_sample(logits + (size_t)s * V, V, greedy, &st[s], NULL, 0, 0, NULL);
            cur[s] = t >= 0 && t < V ? t : 0;
        }
        double t2 = now_s();
        if (step >= W) *t_fwd += t1 - t0, *t_smp += t2 - t1;
    }
    return 0;
}

/* One weight dtype: backend up, decode grid, prefill, engine; backend down. */
static int run_dtype(const struct bench_args *a, const struct dsi_model *m, enum dsi_weight_dtype dt,
                     double peak_gbs, struct dtype_res *r, char **err) {
    const struct dsi_model_config *cfg = &m->cfg;
    int maxB = max_of(a->batch, a->n_batch), maxC = 0, N = a->steps, W = a->warmup, bs = 16;
    int max_pos = cfg->max_position_embeddings;
    for (int i = 0; i < a->n_context; i++)
        if (a->context[i] + W + N <= max_pos && a->context[i] > maxC) maxC = a->context[i];
    int P = a->prefill <= max_pos ? a->prefill : 0, Ep = a->engine_prompt;
    if (Ep + N > max_pos) Ep = 0;
    int need = maxC + W + N;
    if (P > need) need = P;
    if (Ep + N > need) need = Ep + N;
    int nb = (need + bs - 1) / bs; /* blocks per sequence */
    if ((size_t)maxB * (size_t)nb > (size_t)INT_MAX / 2)
        return dsi_seterr(err, DSI_EOVERFLOW, "bench: %d sequences x %d blocks is too many", maxB, nb);
    int T = maxB > 512 ? maxB : 512; /* tokens per step: the prefill chunk, and every decode row */
    if (P > T) T = P > 2048 ? 2048 : P;
    size_t kv_elt = (a->kv_set ? a->kv_dtype : DSI_KV_F32) == DSI_KV_F32 ? 4 : 2;
    size_t per_tok = (size_t)cfg->n_layers * 2 * (size_t)cfg->n_kv_heads * (size_t)cfg->head_dim * kv_elt;
    struct dsi_backend_opts o = {.weight_dtype = dt,
                                 .kv_dtype = a->kv_set ? a->kv_dtype : DSI_KV_F32,
                                 .kv_block_size = bs,
                                 .kv_bytes = (size_t)maxB * (size_t)nb * (size_t)bs * per_tok,
                                 .kv_gpu_fraction = 0.9f,
                                 .max_batch_tokens = T,
                                 .max_seqs = maxB,
                                 .n_threads = a->n_threads};
    if (!strcmp(a->backend, "cuda") && !a->kv_set) o.kv_dtype = DSI_KV_BF16; /* the CUDA KV is bf16 only */
    struct dsi_backend *be = NULL;
    int rc = dsi_backend_create(a->backend, m, &o, &be, err);
    if (rc) return rc;
    int V = be->vocab_size;
    int32_t *table = malloc((size_t)maxB * (size_t)nb * sizeof *table);
    int32_t *ids = malloc((size_t)(need > maxB ? need : maxB) * sizeof *ids);
    int32_t *cur = malloc((size_t)maxB * sizeof *cur);
    float *logits = malloc((size_t)maxB * (size_t)V * sizeof *logits);
    struct dsi_batch_seq *seqs = calloc((size_t)maxB, sizeof *seqs);
    struct dsi_sampler_state *st = calloc((size_t)maxB, sizeof *st);
    struct dsi_sample_params *sp = calloc((size_t)maxB, sizeof *sp);
    int32_t *sid = calloc((size_t)maxB, sizeof *sid);
    struct dsi_engine *eng = NULL;
    if (!table || !ids || !cur || !logits || !seqs || !st || !sp || !sid) {
        rc = dsi_seterr(err, DSI_ENOMEM, "bench: out of memory for %d sequences", maxB);
        goto out;
    }
    if (be->n_kv_blocks < maxB * nb) {
        rc = dsi_seterr(err, DSI_ENOMEM,
                        "bench: the KV pool has %d blocks, %d sequences x %d blocks are needed",
                        be->n_kv_blocks, maxB, nb);
        goto out;
    }
    r->dtype = dt;
    r->weight_bytes = be->weight_bytes;
    r->kv_bytes_per_token = be->kv_bytes_per_token;
    r->n_kv_blocks = be->n_kv_blocks;
    r->device_sample = be->ops->forward_sample != NULL;
    for (int i = 0; i < maxB * nb; i++)
        table[i] = i;
    struct dsi_sampling greedy;
    dsi_sampling_defaults(&greedy);
    greedy.temperature = 0;
    uint64_t rng = 1;
    double t_fill = now_s();
    if (a->fill && maxC > 0) { /* untimed: real K/V for every (B, C) run to read */
        for (int s = 0; s < maxB; s++) {
            for (int k = 0; k < maxC; k++)
                ids[k] = rand_id(&rng, V);
            if ((rc = feed_seq(be, (uint64_t)s + 1, ids, maxC, 0, T, table + (size_t)s * nb, nb, false,
                               logits, err)))
                goto out;
        }
    }
    r->fill_s = now_s() - t_fill;

    for (int ci = 0; ci < a->n_context; ci++) {
        int C = a->context[ci];
        if (C + W + N > max_pos) continue; /* reported as skipped by the caller */
        for (int bi = 0; bi < a->n_batch; bi++) {
            int B = a->batch[bi];
            for (int s = 0; s < B; s++) {
                cur[s] = rand_id(&rng, V);
                dsi_sampler_seed(&st[s], (uint64_t)s);
            }
            double t_fwd = 0, t_smp = 0;
            for (int k = 0; k < a->repeat; k++) { /* keep the fastest of R runs: noise only slows */
                double f = 0, sm = 0;
                if ((rc = decode_steps(be, B, C, W, N, table, nb, seqs, cur, st, logits, &greedy, sp, sid, &f,
                                       &sm, err)))
                    goto out;
                if (k == 0 || f + sm < t_fwd + t_smp) t_fwd = f, t_smp = sm;
            }
            struct decode_res *d = &r->dec[r->n_dec++];
            double t = t_fwd + t_smp, mean_ctx = C + W + (N + 1) / 2.0; /* step at pos p reads p+1 */
            d->batch = B, d->context = C, d->steps = N;
            d->tok_s = t > 0 ? (double)B * N / t : 0;
            d->ms_step = t / N * 1e3, d->ms_forward = t_fwd / N * 1e3, d->ms_sample = t_smp / N * 1e3;
            d->bytes_step = (double)be->weight_bytes + (double)B * mean_ctx * (double)be->kv_bytes_per_token;
            d->gbs = t > 0 ? d->bytes_step * N / t / 1e9 : 0;
            d->roofline = peak_gbs > 0 ? d->gbs / peak_gbs : 0;
            if (!a->json)
                fprintf(stderr, "bench: %s batch %d context %d: %.1f tok/s\n", dtype_name(dt), B, C,
                        d->tok_s);
        }
    }

    if (P > 0) { /* two runs over sequence 1's blocks; the first warms caches and graphs */
        for (int k = 0; k < P; k++)
            ids[k] = rand_id(&rng, V);
        for (int run = 0; run < 1 + a->repeat; run++) {
            double t0 = now_s();
            if ((rc = feed_seq(be, 1, ids, P, 0, T, table, nb, true, logits, err))) goto out;
            double t1 = now_s();
            (void)dsi_sample(logits, V, &greedy, &st[0], NULL, 0, 0, NULL);
            double t2 = now_s();
            if (run == 0 || t2 - t0 < r->ttft_ms / 1e3) {
                r->pre_ms = (t1 - t0) * 1e3;
                r->pre_tok_s = t1 > t0 ? P / (t1 - t0) : 0;
                r->ttft_ms = (t2 - t0) * 1e3;
            }
        }
        r->have_prefill = true;
    }

    if (Ep > 0) {
        struct dsi_engine_opts eo;
        dsi_engine_opts_defaults(&eo);
        eo.max_running = maxB;
        eo.max_batch_tokens = T;
        eo.prefill_chunk = T < 512 ? T : 512;
        eo.max_prompt_tokens = Ep;
        eo.max_total_tokens = Ep + N + 1;
        eo.queue_timeout_ms = 0;
        eo.request_timeout_ms = 0;
        if ((rc = dsi_engine_create(be, &eo, &eng, err))) goto out;
        for (int bi = 0; bi < a->n_batch; bi++) {
            for (int k = 0; k < a->repeat; k++) {
                struct engine_res x;
                if ((rc = engine_run(eng, a->batch[bi], Ep, N, V, &x, err))) goto out;
                if (k == 0 || x.tok_s > r->eng[r->n_eng].tok_s) r->eng[r->n_eng] = x;
            }
            if (!a->json)
                fprintf(stderr, "bench: %s engine %d streams: %.1f tok/s\n", dtype_name(dt), a->batch[bi],
                        r->eng[r->n_eng].tok_s);
            r->n_eng++;
        }
    }
out:
    dsi_engine_destroy(eng);
    free(table);
    free(ids);
    free(cur);
    free(logits);
    free(seqs);
    free(st);
    free(sp);
    free(sid);
    dsi_backend_destroy(be);
    return rc;
}

static void print_table(const struct bench_args *a, const struct dsi_model *m, double peak,
                        const char *peak_src, const struct dtype_res *r, int n) {
    const struct dsi_model_config *c = &m->cfg;
    printf("dsinfer bench: %s (%s, hidden %d, %d layers, %d/%d heads, vocab %d), backend %s\n", a->dir,
           c->architecture, c->hidden_size, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size,
           a->backend);
    printf(
        "peak bandwidth %.1f GB/s (%s); roofline = (weights + B x context x KV/token) / step time / peak\n",
        peak, peak_src);
    for (int i = 0; i < n; i++) {
        const struct dtype_res *d = &r[i];
        printf("\n== %s weights: %.1f MB, KV %zu B/token, %d KV blocks; setup prefill %.2f s\n",
               dtype_name(d->dtype), d->weight_bytes / 1e6, d->kv_bytes_per_token, d->n_kv_blocks, d->fill_s);
        if (d->n_dec) {
            printf("decode (%d timed steps after %d warm-up, fastest of %d; %s)\n", a->steps, a->warmup,
                   a->repeat,
                   d->device_sample ? "sample path device: forward_sample, greedy in the backend, fwd ms "
                                      "includes it"
                                    : "sample path host: forward + greedy dsi_sample on the host");
            printf("%6s %8s %11s %9s %10s %10s %10s %8s %9s\n", "batch", "context", "tok/s", "ms/step",
                   "fwd ms", "sample ms", "MB/step", "GB/s", "roofline");
            for (int k = 0; k < d->n_dec; k++) {
                const struct decode_res *x = &d->dec[k];
                printf("%6d %8d %11.1f %9.3f %10.3f %10.3f %10.2f %8.2f %8.1f%%\n", x->batch, x->context,
                       x->tok_s, x->ms_step, x->ms_forward, x->ms_sample, x->bytes_step / 1e6, x->gbs,
                       x->roofline * 100);
            }
        }
        if (d->have_prefill)
            printf("prefill %d tokens: %.1f tok/s (%.2f ms); time to first token %.2f ms\n", a->prefill,
                   d->pre_tok_s, d->pre_ms, d->ttft_ms);
        if (d->n_eng) {
            printf("engine (continuous batching; prompt %d, %d new tokens each, greedy)\n", a->engine_prompt,
                   a->steps);
            printf("%8s %8s %9s %11s %13s %9s\n", "streams", "tokens", "wall s", "tok/s", "mean TTFT ms",
                   "x vs 1st");
            for (int k = 0; k < d->n_eng; k++) {
                const struct engine_res *x = &d->eng[k];
                printf("%8d %8d %9.3f %11.1f %13.2f %9.2f\n", x->streams, x->tokens, x->wall_s, x->tok_s,
                       x->ttft_ms, d->eng[0].tok_s > 0 ? x->tok_s / d->eng[0].tok_s : 0);
            }
        }
    }
}

static int print_json(const struct bench_args *a, const struct dsi_model *m, double peak,
                      const char *peak_src, const struct dtype_res *r, int n) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return DSI_ENOMEM;
    cJSON_AddStringToObject(o, "model", a->dir);
    cJSON_AddStringToObject(o, "architecture", m->cfg.architecture);
    cJSON_AddStringToObject(o, "backend", a->backend);
    cJSON_AddNumberToObject(o, "peak_gbs", peak);
    cJSON_AddStringToObject(o, "peak_source", peak_src);
    cJSON_AddNumberToObject(o, "steps", a->steps);
    cJSON_AddNumberToObject(o, "warmup", a->warmup);
    cJSON_AddNumberToObject(o, "repeat", a->repeat);
    cJSON_AddNumberToObject(o, "prefill_tokens", a->prefill);
    cJSON_AddNumberToObject(o, "engine_prompt_tokens", a->engine_prompt);
    cJSON *sk = cJSON_AddArrayToObject(o, "skipped_contexts");
    for (int i = 0; i < a->n_context; i++)
        if (a->context[i] + a->warmup + a->steps > m->cfg.max_position_embeddings)
            cJSON_AddItemToArray(sk, cJSON_CreateNumber(a->context[i]));
    cJSON *runs = cJSON_AddArrayToObject(o, "runs");
    for (int i = 0; i < n; i++) {
        const struct dtype_res *d = &r[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddItemToArray(runs, x);
        cJSON_AddStringToObject(x, "dtype", dtype_name(d->dtype));
        cJSON_AddNumberToObject(x, "weight_bytes", (double)d->weight_bytes);
        cJSON_AddNumberToObject(x, "kv_bytes_per_token", (double)d->kv_bytes_per_token);
        cJSON_AddNumberToObject(x, "setup_prefill_s", d->fill_s);
        /* "device": decode and engine sampled in the backend (ms_forward = forward + sample) */
        cJSON_AddStringToObject(x, "sample_path", d->device_sample ? "device" : "host");
        cJSON *dec = cJSON_AddArrayToObject(x, "decode");
        for (int k = 0; k < d->n_dec; k++) {
            const struct decode_res *y = &d->dec[k];
            cJSON *e = cJSON_CreateObject();
            cJSON_AddItemToArray(dec, e);
            cJSON_AddNumberToObject(e, "batch", y->batch);
            cJSON_AddNumberToObject(e, "context", y->context);
            cJSON_AddNumberToObject(e, "tok_s", y->tok_s);
            cJSON_AddNumberToObject(e, "ms_per_step", y->ms_step);
            cJSON_AddNumberToObject(e, "ms_forward", y->ms_forward);
            cJSON_AddNumberToObject(e, "ms_sample", y->ms_sample);
            cJSON_AddNumberToObject(e, "bytes_per_step", y->bytes_step);
            cJSON_AddNumberToObject(e, "gbs", y->gbs);
            cJSON_AddNumberToObject(e, "roofline", y->roofline);
        }
        if (d->have_prefill) {
            cJSON *p = cJSON_AddObjectToObject(x, "prefill");
            cJSON_AddNumberToObject(p, "tokens", a->prefill);
            cJSON_AddNumberToObject(p, "tok_s", d->pre_tok_s);
            cJSON_AddNumberToObject(p, "ms", d->pre_ms);
            cJSON_AddNumberToObject(p, "ttft_ms", d->ttft_ms);
        } else {
            cJSON_AddNullToObject(x, "prefill");
        }
        cJSON *eng = cJSON_AddArrayToObject(x, "engine");
        for (int k = 0; k < d->n_eng; k++) {
            const struct engine_res *y = &d->eng[k];
            cJSON *e = cJSON_CreateObject();
            cJSON_AddItemToArray(eng, e);
            cJSON_AddNumberToObject(e, "streams", y->streams);
            cJSON_AddNumberToObject(e, "tokens", y->tokens);
            cJSON_AddNumberToObject(e, "wall_s", y->wall_s);
            cJSON_AddNumberToObject(e, "tok_s", y->tok_s);
            cJSON_AddNumberToObject(e, "ttft_ms_mean", y->ttft_ms);
        }
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) return DSI_ENOMEM;
    puts(s);
    free(s);
    return 0;
}

int dsi_cmd_bench(int argc, char **argv) {
    struct bench_args a = {.backend = "cpu",
                           .dtypes = {DSI_W_BF16},
                           .n_dtypes = 1,
                           .batch = {1, 4, 16, 64},
                           .n_batch = 4,
                           .context = {128, 2048},
                           .n_context = 2,
                           .prefill = 512,
                           .steps = 32,
                           .warmup = 2,
                           .engine_prompt = 32,
                           .repeat = 1,
                           .fill = true};
    if (parse_args(argc, argv, &a)) return DSI_EXIT_USAGE;
    char *err = NULL;
    struct dsi_model m;
    /* --backend cuda hashes the weight files while uploading them (one pass) */
    struct dsi_model_open_opts mo = {.skip_verify = a.no_verify,
                                     .n_threads = a.n_threads,
                                     .defer_weight_hash = a.backend && !strcmp(a.backend, "cuda")};
    int rc = dsi_model_open(&m, a.dir, &mo, &err);
    if (!rc) {
        rc = dsi_model_config_runnable(&m.cfg, &err);
        if (rc) dsi_model_close(&m);
    }
    if (rc) {
        fprintf(stderr, "dsinfer bench: %s\n", err ? err : dsi_strerror(rc));
        free(err);
        return DSI_EXIT_FAIL;
    }
    int fits = 0;
    for (int i = 0; i < a.n_context; i++) {
        if (a.context[i] + a.warmup + a.steps <= m.cfg.max_position_embeddings)
            fits++;
        else
            fprintf(stderr,
                    "dsinfer bench: skipping context %d: with %d steps it passes the model's %d positions\n",
                    a.context[i], a.warmup + a.steps, m.cfg.max_position_embeddings);
    }
    if (!fits) {
        fprintf(stderr, "dsinfer bench: no --context fits the model's %d positions\n",
                m.cfg.max_position_embeddings);
        dsi_model_close(&m);
        return DSI_EXIT_FAIL;
    }
    double peak = a.peak_gbs;
    const char *peak_src = "given with --peak-gbs";
    if (!(peak > 0) && !strcmp(a.backend, "cuda")) {
        peak = CUDA_PEAK_GBS;
        peak_src = "H200 device copy from DESIGN.md; --peak-gbs to change";
    } else if (!(peak > 0)) {
        long np = sysconf(_SC_NPROCESSORS_ONLN);
        int th = a.n_threads > 0 ? a.n_threads : np > 0 ? (int)np : 1;
        peak = measure_peak_gbs(th);
        peak_src = "memcpy measured at start, read + write bytes";
    }
    struct dtype_res *res = calloc((size_t)a.n_dtypes, sizeof *res);
    if (!res) {
        dsi_model_close(&m);
        fprintf(stderr, "dsinfer bench: out of memory\n");
        return DSI_EXIT_FAIL;
    }
    int n = 0, status = DSI_EXIT_OK;
    for (int i = 0; i < a.n_dtypes; i++) {
        if ((rc = run_dtype(&a, &m, a.dtypes[i], peak, &res[n], &err))) {
            fprintf(stderr, "dsinfer bench: %s: %s\n", dtype_name(a.dtypes[i]), err ? err : dsi_strerror(rc));
            free(err);
            err = NULL;
            status = DSI_EXIT_FAIL;
            break;
        }
        n++;
    }
    if (status == DSI_EXIT_OK) {
        if (a.json) {
            if (print_json(&a, &m, peak, peak_src, res, n)) {
                fprintf(stderr, "dsinfer bench: out of memory\n");
                status = DSI_EXIT_FAIL;
            }
        } else {
            print_table(&a, &m, peak, peak_src, res, n);
        }
    }
    free(res);
    dsi_model_close(&m);
    return status;
}
