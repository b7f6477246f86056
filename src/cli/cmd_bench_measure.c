/*
 * cmd_bench_measure.c: the measuring half of `dsinfer bench` (the command, its options,
 * the method and the report are in cmd_bench.c): the host memcpy probe that gives the
 * CPU peak bandwidth, and per weight dtype the runtime bring-up (dsi_runtime_open, as
 * serve and generate: verification, backend, engine), the untimed KV fill, the timed
 * decode grid, the prefill / time-to-first-token run and the engine run. The decode
 * and prefill rows step the runtime's backend directly (they measure the backend);
 * the engine rows submit to its engine, idle until then.
 */
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmd_bench_internal.h"
#include "dsinfer/backend.h"
#include "dsinfer/clock.h"
#include "dsinfer/config.h"
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
        double t0 = dsi_now_s();
        for (int i = n_threads - 1; i >= 0; i--) {
            jobs[i] = (struct copy_job){dst + (size_t)i * part, src + (size_t)i * part,
                                        i == n_threads - 1 ? PEAK_BUF_BYTES - (size_t)i * part : part};
            /* slice 0 runs on this thread; a thread that cannot start copies inline */
            started[i] = i > 0 && pthread_create(&th[i], NULL, copy_main, &jobs[i]) == 0;
            if (!started[i]) copy_main(&jobs[i]);
        }
        for (int i = 1; i < n_threads; i++)
            if (started[i]) pthread_join(th[i], NULL);
        double dt = dsi_now_s() - t0;
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
    double t = dsi_now_s();
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
    double t0 = dsi_now_s();
    for (int i = 0; i < B; i++) {
        for (int k = 0; k < n_prompt; k++)
            prompt[k] = rand_id(&rng, vocab);
        struct dsi_request_params p = {.prompt = prompt, .n_prompt = n_prompt, .max_tokens = n_new};
        dsi_sampling_defaults(&p.sampling);
        p.sampling.temperature = 0;
        q[i].w = &w;
        q[i].t_submit = dsi_now_s();
        uint64_t id;
        if ((rc = dsi_engine_submit(e, &p, eng_cb, &q[i], &id, err))) break;
        submitted++;
    }
    pthread_mutex_lock(&w.mu);
    while (w.n_done < submitted)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    double wall = dsi_now_s() - t0, ttft = 0;
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
            double t0 = dsi_now_s();
            int rc = be->ops->forward_sample(be, &b, sp, sid, err);
            if (rc) return rc;
            double t1 = dsi_now_s();
            for (int s = 0; s < B; s++)
                cur[s] = sid[s] >= 0 && sid[s] < V ? sid[s] : 0;
            if (step >= W) *t_fwd += t1 - t0;
            continue;
        }
        double t0 = dsi_now_s();
        int rc = be->ops->forward(be, &b, logits, err);
        if (rc) return rc;
        double t1 = dsi_now_s();
        for (int s = 0; s < B; s++) {
            int32_t t = dsi_sample(logits + (size_t)s * V, V, greedy, &st[s], NULL, 0, 0, NULL);
            cur[s] = t >= 0 && t < V ? t : 0;
        }
        double t2 = dsi_now_s();
        if (step >= W) *t_fwd += t1 - t0, *t_smp += t2 - t1;
    }
    return 0;
}

/* One dtype's run: the sizes every step shares, the runtime and its buffers. */
struct run {
    const struct bench_args *a;
    enum dsi_weight_dtype dt;
    int maxB, maxC, N, W, bs, max_pos, P, Ep, need, nb, T;
    struct dsi_runtime *rt;
    struct dsi_backend *be; /* rt's */
    int32_t *table, *ids, *cur, *sid;
    float *logits;
    struct dsi_batch_seq *seqs;
    struct dsi_sampler_state *st;
    struct dsi_sample_params *sp;
    struct dsi_sampling greedy;
    uint64_t rng;
};

/* Sizes for a model of max_pos positions: the longest context that fits, the
 * prefill and engine prompts, the blocks per sequence and the tokens per step.
 * Every size only shrinks as max_pos does. */
static int run_plan(struct run *x, const struct bench_args *a, int max_pos, char **err) {
    x->a = a;
    x->maxB = max_of(a->batch, a->n_batch), x->maxC = 0, x->N = a->steps, x->W = a->warmup, x->bs = 16;
    x->max_pos = max_pos;
    for (int i = 0; i < a->n_context; i++)
        if (a->context[i] + x->W + x->N <= x->max_pos && a->context[i] > x->maxC) x->maxC = a->context[i];
    x->P = a->prefill <= x->max_pos ? a->prefill : 0, x->Ep = a->engine_prompt;
    if (x->Ep + x->N > x->max_pos) x->Ep = 0;
    x->need = x->maxC + x->W + x->N;
    if (x->P > x->need) x->need = x->P;
    if (x->Ep + x->N > x->need) x->need = x->Ep + x->N;
    x->nb = (x->need + x->bs - 1) / x->bs; /* blocks per sequence */
    if ((size_t)x->maxB * (size_t)x->nb > (size_t)INT_MAX / 2)
        return dsi_seterr(err, DSI_EOVERFLOW, "bench: %d sequences x %d blocks is too many", x->maxB, x->nb);
    x->T = x->maxB > 512 ? x->maxB : 512; /* tokens per step: the prefill chunk, and every decode row */
    if (x->P > x->T) x->T = x->P > 2048 ? 2048 : x->P;
    return 0;
}

/* The runtime of this dtype, opened as serve and generate open theirs and
 * sized for maxB sequences of `need` tokens, maxB streams on its engine and
 * steps of T tokens. The model's positions are known only once it is open (an
 * encrypted config.json included): the sizes were planned for max_pos_hint
 * and are planned again for the model's own, which only shrinks them. */
static int run_open(struct run *x, int max_pos_hint, char **err) {
    const struct bench_args *a = x->a;
    struct dsi_config c;
    const struct dsi_cli_model cm = {.dir = a->dir, .backend = a->backend, .dtype = dsi_runtime_dtype_name(x->dt),
                                     .key_file = a->key_file, .n_threads = a->n_threads, .no_verify = a->no_verify,
                                     .kv_dtype = a->kv_dtype};
    int rc = run_plan(x, a, max_pos_hint, err);
    if (!rc) rc = dsi__cli_config_init(&c, &cm, err);
    if (rc) return rc;
    c.kv_block_size = x->bs;
    c.kv_gpu_fraction = 0.9;
    c.max_running = c.max_queued = x->maxB;
    c.max_batch_tokens = x->T;
    c.prefill_chunk = x->T < 512 ? x->T : 512;
    c.max_prompt_tokens = x->Ep;
    c.max_total_tokens = x->Ep > 0 ? x->Ep + x->N + 1 : 0;
    c.prefix_cache = false; /* the engine repeats feed the same prompts: measure computing them */
    struct dsi_runtime_opts o = {.tokenizer_optional = true, .kv_tokens = x->need, .no_timeouts = true};
    rc = dsi_runtime_open(&c, &o, &x->rt, err);
    dsi_config_free(&c);
    if (rc) return rc;
    x->be = x->rt->be;
    int max_pos = x->rt->model.cfg.max_position_embeddings;
    return max_pos < max_pos_hint ? run_plan(x, a, max_pos, err) : 0;
}

/* The step buffers of the backend rows. */
static int run_setup(struct run *x, struct dtype_res *r, char **err) {
    int V = x->be->vocab_size, maxB = x->maxB;
    x->table = malloc((size_t)maxB * (size_t)x->nb * sizeof *x->table);
    x->ids = malloc((size_t)(x->need > maxB ? x->need : maxB) * sizeof *x->ids);
    x->cur = malloc((size_t)maxB * sizeof *x->cur);
    x->logits = malloc((size_t)maxB * (size_t)V * sizeof *x->logits);
    x->seqs = calloc((size_t)maxB, sizeof *x->seqs);
    x->st = calloc((size_t)maxB, sizeof *x->st);
    x->sp = calloc((size_t)maxB, sizeof *x->sp);
    x->sid = calloc((size_t)maxB, sizeof *x->sid);
    if (!x->table || !x->ids || !x->cur || !x->logits || !x->seqs || !x->st || !x->sp || !x->sid)
        return dsi_seterr(err, DSI_ENOMEM, "bench: out of memory for %d sequences", maxB);
    if (x->be->n_kv_blocks < maxB * x->nb)
        return dsi_seterr(err, DSI_ENOMEM, "bench: the KV pool has %d blocks, %d sequences x %d blocks are needed",
                          x->be->n_kv_blocks, maxB, x->nb);
    r->dtype = x->dt;
    r->weight_bytes = x->be->weight_bytes;
    r->kv_bytes_per_token = x->be->kv_bytes_per_token;
    r->n_kv_blocks = x->be->n_kv_blocks;
    r->device_sample = x->be->ops->forward_sample != NULL;
    for (int i = 0; i < maxB * x->nb; i++)
        x->table[i] = i;
    dsi_sampling_defaults(&x->greedy);
    x->greedy.temperature = 0;
    x->rng = 1;
    return 0;
}

static void run_free(struct run *x) {
    free(x->table);
    free(x->ids);
    free(x->cur);
    free(x->logits);
    free(x->seqs);
    free(x->st);
    free(x->sp);
    free(x->sid);
    dsi_runtime_close(x->rt);
}

/* Untimed: real K/V for every (B, C) run to read. */
static int run_fill(struct run *x, struct dtype_res *r, char **err) {
    double t_fill = dsi_now_s();
    int V = x->be->vocab_size;
    if (x->a->fill && x->maxC > 0) {
        for (int s = 0; s < x->maxB; s++) {
            for (int k = 0; k < x->maxC; k++)
                x->ids[k] = rand_id(&x->rng, V);
            int rc = feed_seq(x->be, (uint64_t)s + 1, x->ids, x->maxC, 0, x->T, x->table + (size_t)s * x->nb, x->nb,
                              false, x->logits, err);
            if (rc) return rc;
        }
    }
    r->fill_s = dsi_now_s() - t_fill;
    return 0;
}

/* The decode grid: every batch x context, fastest of R runs (noise only slows). */
static int run_decode(struct run *x, double peak_gbs, struct dtype_res *r, char **err) {
    const struct bench_args *a = x->a;
    int V = x->be->vocab_size, N = x->N, W = x->W;
    for (int ci = 0; ci < a->n_context; ci++) {
        int C = a->context[ci];
        if (C + W + N > x->max_pos) continue; /* reported as skipped by the caller */
        for (int bi = 0; bi < a->n_batch; bi++) {
            int B = a->batch[bi];
            for (int s = 0; s < B; s++) {
                x->cur[s] = rand_id(&x->rng, V);
                dsi_sampler_seed(&x->st[s], (uint64_t)s);
            }
            double t_fwd = 0, t_smp = 0;
            for (int k = 0; k < a->repeat; k++) {
                double f = 0, sm = 0;
                int rc = decode_steps(x->be, B, C, W, N, x->table, x->nb, x->seqs, x->cur, x->st, x->logits,
                                      &x->greedy, x->sp, x->sid, &f, &sm, err);
                if (rc) return rc;
                if (k == 0 || f + sm < t_fwd + t_smp) t_fwd = f, t_smp = sm;
            }
            struct decode_res *d = &r->dec[r->n_dec++];
            double t = t_fwd + t_smp, mean_ctx = C + W + (N + 1) / 2.0; /* step at pos p reads p+1 */
            d->batch = B, d->context = C, d->steps = N;
            d->tok_s = t > 0 ? (double)B * N / t : 0;
            d->ms_step = t / N * 1e3, d->ms_forward = t_fwd / N * 1e3, d->ms_sample = t_smp / N * 1e3;
            d->bytes_step = (double)x->be->weight_bytes + (double)B * mean_ctx * (double)x->be->kv_bytes_per_token;
            d->gbs = t > 0 ? d->bytes_step * N / t / 1e9 : 0;
            d->roofline = peak_gbs > 0 ? d->gbs / peak_gbs : 0;
            if (!a->json)
                fprintf(stderr, "bench: %s batch %d context %d: %.1f tok/s\n", dsi_runtime_dtype_name(x->dt), B,
                        C, d->tok_s);
        }
    }
    return 0;
}

/* Two runs over sequence 1's blocks; the first warms caches and graphs. */
static int run_prefill(struct run *x, struct dtype_res *r, char **err) {
    int P = x->P, V = x->be->vocab_size;
    if (P <= 0) return 0;
    for (int k = 0; k < P; k++)
        x->ids[k] = rand_id(&x->rng, V);
    for (int run = 0; run < 1 + x->a->repeat; run++) {
        double t0 = dsi_now_s();
        int rc = feed_seq(x->be, 1, x->ids, P, 0, x->T, x->table, x->nb, true, x->logits, err);
        if (rc) return rc;
        double t1 = dsi_now_s();
        (void)dsi_sample(x->logits, V, &x->greedy, &x->st[0], NULL, 0, 0, NULL);
        double t2 = dsi_now_s();
        if (run == 0 || t2 - t0 < r->ttft_ms / 1e3) {
            r->pre_ms = (t1 - t0) * 1e3;
            r->pre_tok_s = t1 > t0 ? P / (t1 - t0) : 0;
            r->ttft_ms = (t2 - t0) * 1e3;
        }
    }
    r->have_prefill = true;
    return 0;
}

/* The engine rows: B streams of Ep prompt + N new tokens on the runtime's engine. */
static int run_engine(struct run *x, struct dtype_res *r, char **err) {
    const struct bench_args *a = x->a;
    if (x->Ep <= 0) return 0;
    struct dsi_engine *eng = x->rt->eng;
    int rc = 0;
    for (int bi = 0; !rc && bi < a->n_batch; bi++) {
        for (int k = 0; !rc && k < a->repeat; k++) {
            struct engine_res e;
            if (!(rc = engine_run(eng, a->batch[bi], x->Ep, x->N, x->be->vocab_size, &e, err)) &&
                (k == 0 || e.tok_s > r->eng[r->n_eng].tok_s))
                r->eng[r->n_eng] = e;
        }
        if (rc) break;
        if (!a->json)
            fprintf(stderr, "bench: %s engine %d streams: %.1f tok/s\n", dsi_runtime_dtype_name(x->dt),
                    a->batch[bi], r->eng[r->n_eng].tok_s);
        r->n_eng++;
    }
    return rc;
}

int dsi__bench_run_dtype(const struct bench_args *a, enum dsi_weight_dtype dt, int max_pos_hint, double peak_gbs,
                         struct dtype_res *r, struct dsi_model_config *cfg, char **err) {
    struct run x = {.a = a, .dt = dt};
    int rc = run_open(&x, max_pos_hint, err);
    if (!rc) {
        *cfg = x.rt->model.cfg;
        if (x.maxC == 0)
            rc = dsi_seterr(err, DSI_ERANGE, "no --context fits the model's %d positions",
                            cfg->max_position_embeddings);
    }
    if (!rc) rc = run_setup(&x, r, err);
    if (!rc) rc = run_fill(&x, r, err);
    if (!rc) rc = run_decode(&x, peak_gbs, r, err);
    if (!rc) rc = run_prefill(&x, r, err);
    if (!rc) rc = run_engine(&x, r, err);
    run_free(&x);
    return rc;
}
