/*
 * cmd_bench_measure.c: the measuring half of `dsinfer bench` (the command, its options,
 * the method and the report are in cmd_bench.c): the host memcpy probe that gives the
 * CPU peak bandwidth, and per weight dtype the backend bring-up, the untimed KV fill,
 * the timed decode grid, the prefill / time-to-first-token run and the engine run.
 */
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd_bench_internal.h"
#include "dsinfer/backend.h"
#include "dsinfer/engine.h"
#include "dsinfer/err.h"
#include "dsinfer/model.h"

#define PEAK_BUF_BYTES ((size_t)64 << 20)

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

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
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
double dsi__bench_measure_peak_gbs(int n_threads) {
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
int dsi__bench_run_dtype(const struct bench_args *a, const struct dsi_model *m, enum dsi_weight_dtype dt,
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
                fprintf(stderr, "bench: %s batch %d context %d: %.1f tok/s\n", dsi__bench_dtype_name(dt), B,
                        C, d->tok_s);
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
                fprintf(stderr, "bench: %s engine %d streams: %.1f tok/s\n", dsi__bench_dtype_name(dt),
                        a->batch[bi], r->eng[r->n_eng].tok_s);
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
