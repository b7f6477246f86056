/*
 * metrics.c: Prometheus counters and histograms of the HTTP front end.
 *
 * Requests by route and status, prompt/generated tokens, time-to-first-token and
 * inter-token latency histograms; the engine gauges and counters (running/waiting
 * sequences, KV blocks, prefix cache hits, misses and evictions) are read at
 * render time; stream output buffered for clients (a gauge) and streams ended
 * for backpressure come from gen.c. Per-principal token counters (chargeback)
 * come from the auth module (dsi_auth_metrics), appended by the /metrics route.
 * One mutex guards everything: updates are a few adds per request or token.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define N_STATUS 16

static const double TTFT_BUCKETS[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double ITL_BUCKETS[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
#define N_TTFT (sizeof TTFT_BUCKETS / sizeof TTFT_BUCKETS[0])
#define N_ITL (sizeof ITL_BUCKETS / sizeof ITL_BUCKETS[0])

struct hist {
    uint64_t counts[16]; /* cumulative at render time; per-bucket here (last = +Inf) */
    uint64_t n;
    double sum;
};

struct dsi__smetrics {
    pthread_mutex_t mu;
    int statuses[N_STATUS];                  /* distinct statuses seen, in order */
    int n_statuses;
    uint64_t requests[DSI__R__COUNT][N_STATUS];
    uint64_t prompt_tokens, completion_tokens;
    struct hist ttft, itl;
    int64_t stream_buffered;      /* bytes held for stream clients now */
    uint64_t stream_backpressure; /* streams ended because their client did not read */
    uint64_t gen_failed[2];       /* generations ended by gen_fail: [0] ours (500), [1] unavailable (503) */
};

static const char *ROUTE_NAMES[DSI__R__COUNT] = {
    "/v1/chat/completions", "/chat/completions", "/v1/completions", "/v1/models", "/v1/tokenize",
    "/v1/detokenize", "/health/live", "/health/ready", "/metrics", "other"};

const char *dsi__route_name(enum dsi__route r) { return (unsigned)r < DSI__R__COUNT ? ROUTE_NAMES[r] : "other"; }

int dsi__smetrics_create(struct dsi__smetrics **out) {
    struct dsi__smetrics *m = calloc(1, sizeof *m);
    if (!m) return -1;
    if (pthread_mutex_init(&m->mu, NULL)) {
        free(m);
        return -1;
    }
    *out = m;
    return 0;
}

void dsi__smetrics_destroy(struct dsi__smetrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void dsi__smetrics_request(struct dsi__smetrics *m, enum dsi__route r, int status) {
    if ((unsigned)r >= DSI__R__COUNT) r = DSI__R_OTHER;
    pthread_mutex_lock(&m->mu);
    int i = 0;
    while (i < m->n_statuses && m->statuses[i] != status) i++;
    if (i == m->n_statuses && i < N_STATUS) m->statuses[m->n_statuses++] = status;
    if (i < N_STATUS) m->requests[r][i]++;
    pthread_mutex_unlock(&m->mu);
}

void dsi__smetrics_tokens(struct dsi__smetrics *m, int prompt, int completion) {
    if (prompt < 0) prompt = 0;
    if (completion < 0) completion = 0;
    pthread_mutex_lock(&m->mu);
    m->prompt_tokens += (uint64_t)prompt;
    m->completion_tokens += (uint64_t)completion;
    pthread_mutex_unlock(&m->mu);
}

static void hist_add(struct hist *h, const double *b, size_t nb, double v) {
    size_t i = 0;
    while (i < nb && v > b[i]) i++;
    h->counts[i]++;
    h->n++;
    h->sum += v;
}

void dsi__smetrics_ttft(struct dsi__smetrics *m, double s) {
    pthread_mutex_lock(&m->mu);
    hist_add(&m->ttft, TTFT_BUCKETS, N_TTFT, s);
    pthread_mutex_unlock(&m->mu);
}

void dsi__smetrics_itl(struct dsi__smetrics *m, double s) {
    pthread_mutex_lock(&m->mu);
    hist_add(&m->itl, ITL_BUCKETS, N_ITL, s);
    pthread_mutex_unlock(&m->mu);
}

void dsi__smetrics_stream_buffered(struct dsi__smetrics *m, int64_t delta) {
    pthread_mutex_lock(&m->mu);
    m->stream_buffered += delta;
    pthread_mutex_unlock(&m->mu);
}

void dsi__smetrics_stream_backpressure(struct dsi__smetrics *m) {
    pthread_mutex_lock(&m->mu);
    m->stream_backpressure++;
    pthread_mutex_unlock(&m->mu);
}

void dsi__smetrics_gen_failed(struct dsi__smetrics *m, int status) {
    pthread_mutex_lock(&m->mu);
    m->gen_failed[status == 503]++;
    pthread_mutex_unlock(&m->mu);
}

static int hist_render(struct dsi__sbuf *b, const char *name, const char *help, const struct hist *h,
                       const double *bk, size_t nb) {
    int rc = dsi__sbuf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (size_t i = 0; !rc && i < nb; i++) {
        cum += h->counts[i];
        rc = dsi__sbuf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, bk[i], (unsigned long long)cum);
    }
    if (!rc)
        rc = dsi__sbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
                             (unsigned long long)h->n, name, h->sum, name, (unsigned long long)h->n);
    return rc;
}

char *dsi__smetrics_render(struct dsi__smetrics *m, const struct dsi_engine_stats *st, int ready) {
    struct dsi__sbuf b = {0};
    pthread_mutex_lock(&m->mu);
    int rc = dsi__sbuf_printf(&b, "# HELP dsinfer_requests_total HTTP requests by route and status.\n"
                                 "# TYPE dsinfer_requests_total counter\n");
    for (int r = 0; !rc && r < DSI__R__COUNT; r++)
        for (int i = 0; !rc && i < m->n_statuses; i++)
            if (m->requests[r][i])
                rc = dsi__sbuf_printf(&b, "dsinfer_requests_total{route=\"%s\",status=\"%d\"} %llu\n", ROUTE_NAMES[r],
                                     m->statuses[i], (unsigned long long)m->requests[r][i]);
    if (!rc)
        rc = dsi__sbuf_printf(&b,
                             "# HELP dsinfer_prompt_tokens_total Prompt tokens of finished requests.\n"
                             "# TYPE dsinfer_prompt_tokens_total counter\ndsinfer_prompt_tokens_total %llu\n"
                             "# HELP dsinfer_generation_tokens_total Generated tokens of finished requests.\n"
                             "# TYPE dsinfer_generation_tokens_total counter\ndsinfer_generation_tokens_total %llu\n",
                             (unsigned long long)m->prompt_tokens, (unsigned long long)m->completion_tokens);
    if (!rc)
        rc = dsi__sbuf_printf(&b,
                             "# HELP dsinfer_stream_buffered_bytes Stream output held in the server for clients "
                             "that have not read it yet.\n"
                             "# TYPE dsinfer_stream_buffered_bytes gauge\ndsinfer_stream_buffered_bytes %lld\n"
                             "# HELP dsinfer_streams_backpressure_total Streams ended because their client left more "
                             "than stream_buffer_bytes unread.\n"
                             "# TYPE dsinfer_streams_backpressure_total counter\ndsinfer_streams_backpressure_total %llu\n",
                             (long long)m->stream_buffered, (unsigned long long)m->stream_backpressure);
    if (!rc)
        rc = dsi__sbuf_printf(&b,
                             "# HELP dsinfer_generation_failures_total Generations the server ended with an error "
                             "(after or before the status line): 500 ours, 503 timeout or shutdown.\n"
                             "# TYPE dsinfer_generation_failures_total counter\n"
                             "dsinfer_generation_failures_total{status=\"500\"} %llu\n"
                             "dsinfer_generation_failures_total{status=\"503\"} %llu\n",
                             (unsigned long long)m->gen_failed[0], (unsigned long long)m->gen_failed[1]);
    if (!rc)
        rc = hist_render(&b, "dsinfer_time_to_first_token_seconds", "Time from request to first generated token.",
                         &m->ttft, TTFT_BUCKETS, N_TTFT);
    if (!rc)
        rc = hist_render(&b, "dsinfer_inter_token_latency_seconds", "Time between generated tokens of a sequence.",
                         &m->itl, ITL_BUCKETS, N_ITL);
    pthread_mutex_unlock(&m->mu);
    struct dsi_engine_stats z = {0};
    if (!st) st = &z;
    if (!rc)
        rc = dsi__sbuf_printf(&b,
                             "# HELP dsinfer_ready 1 when the model is loaded and the server is not draining.\n"
                             "# TYPE dsinfer_ready gauge\ndsinfer_ready %d\n"
                             "# HELP dsinfer_running_sequences Sequences in the running batch.\n"
                             "# TYPE dsinfer_running_sequences gauge\ndsinfer_running_sequences %d\n"
                             "# HELP dsinfer_waiting_sequences Requests waiting in the queue.\n"
                             "# TYPE dsinfer_waiting_sequences gauge\ndsinfer_waiting_sequences %d\n"
                             "# HELP dsinfer_kv_blocks_used KV cache blocks in use.\n"
                             "# TYPE dsinfer_kv_blocks_used gauge\ndsinfer_kv_blocks_used %d\n"
                             "# HELP dsinfer_kv_blocks_free KV cache blocks free.\n"
                             "# TYPE dsinfer_kv_blocks_free gauge\ndsinfer_kv_blocks_free %d\n"
                             "# HELP dsinfer_kv_block_tokens Token slots per KV cache block.\n"
                             "# TYPE dsinfer_kv_block_tokens gauge\ndsinfer_kv_block_tokens %d\n"
                             "# HELP dsinfer_kv_bytes_per_token KV cache bytes one token takes over all layers "
                             "(MLA models: the compressed latent).\n"
                             "# TYPE dsinfer_kv_bytes_per_token gauge\ndsinfer_kv_bytes_per_token %llu\n"
                             "# HELP dsinfer_kv_capacity_tokens Tokens the whole KV cache pool holds (blocks x "
                             "block tokens; kv_dtype int8 about doubles it).\n"
                             "# TYPE dsinfer_kv_capacity_tokens gauge\ndsinfer_kv_capacity_tokens %llu\n"
                             "# HELP dsinfer_kv_cache_info The KV cache's element format (kv_dtype).\n"
                             "# TYPE dsinfer_kv_cache_info gauge\ndsinfer_kv_cache_info{dtype=\"%s\"} 1\n"
                             "# HELP dsinfer_preempted_total Sequences preempted for KV space.\n"
                             "# TYPE dsinfer_preempted_total counter\ndsinfer_preempted_total %llu\n"
                             "# HELP dsinfer_engine_steps_total Scheduler steps.\n"
                             "# TYPE dsinfer_engine_steps_total counter\ndsinfer_engine_steps_total %llu\n",
                             ready, st->running, st->waiting, st->kv_blocks_used, st->kv_blocks_free,
                             st->kv_block_tokens, (unsigned long long)st->kv_bytes_per_token,
                             (unsigned long long)st->kv_capacity_tokens, dsi_kv_dtype_name(st->kv_dtype),
                             (unsigned long long)st->preempted_total, (unsigned long long)st->steps_total);
    if (!rc)
        rc = dsi__sbuf_printf(&b,
                             "# HELP dsinfer_engine_step_failures_total Scheduler steps the backend failed (their "
                             "requests ended with an error).\n"
                             "# TYPE dsinfer_engine_step_failures_total counter\n"
                             "dsinfer_engine_step_failures_total %llu\n"
                             "# HELP dsinfer_backend_dead 1 once the backend cannot run steps any more (the "
                             "service needs a restart).\n"
                             "# TYPE dsinfer_backend_dead gauge\ndsinfer_backend_dead %d\n",
                             (unsigned long long)st->step_failures_total, st->dead ? 1 : 0);
    if (!rc)
        rc = dsi__sbuf_printf(&b,
                             "# HELP dsinfer_prefix_cache_hit_tokens_total Prompt tokens whose KV came from the "
                             "prefix cache.\n"
                             "# TYPE dsinfer_prefix_cache_hit_tokens_total counter\n"
                             "dsinfer_prefix_cache_hit_tokens_total %llu\n"
                             "# HELP dsinfer_prefix_cache_miss_tokens_total Prompt tokens computed (not in the "
                             "prefix cache).\n"
                             "# TYPE dsinfer_prefix_cache_miss_tokens_total counter\n"
                             "dsinfer_prefix_cache_miss_tokens_total %llu\n"
                             "# HELP dsinfer_kv_blocks_cached KV cache blocks holding a reusable prefix (in use "
                             "or idle; idle ones also count as free).\n"
                             "# TYPE dsinfer_kv_blocks_cached gauge\ndsinfer_kv_blocks_cached %d\n"
                             "# HELP dsinfer_kv_evictions_total Idle cached KV blocks reused for new content.\n"
                             "# TYPE dsinfer_kv_evictions_total counter\ndsinfer_kv_evictions_total %llu\n",
                             (unsigned long long)st->prefix_hit_tokens, (unsigned long long)st->prefix_miss_tokens,
                             st->kv_blocks_cached, (unsigned long long)st->kv_evictions_total);
    if (rc) {
        dsi__sbuf_free(&b);
        return NULL;
    }
    return b.p;
}
