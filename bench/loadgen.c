/*
 * loadgen.c: drives /v1/chat/completions the way a fleet of apps would, and reports
 * what they would see.
 *
 *   loadgen --url https://127.0.0.1:8443 [--key-file F | --key K] [--cacert F | --insecure]
 *           [--concurrency N] [--duration S | --requests N] [--prompt-words A:B]
 *           [--max-tokens A:B] [--shared-prefix-words N] [--model NAME] [--seed S] [--timeout S]
 *           [--cut-fraction F] [--metrics-key-file F] [--connect-backoff-ms MS] [--log-errors]
 *           [--json]
 *
 * N clients run at once over libcurl's multi interface (one thread, keep-alive
 * connections reused from curl's pool). Each client sends a streaming request,
 * takes the time of the first content chunk (TTFT) and of every later chunk
 * (inter-token latency: the server sends one chunk per token), then starts its
 * next request at once. Output tokens come from the usage chunk
 * (stream_options.include_usage); ignore_eos makes every answer as long as drawn.
 * Prompt and output lengths are drawn uniformly
 * from the given ranges with a seeded generator, so runs are repeatable.
 *
 * --shared-prefix-words N puts one system message of N words, the same in every
 * request, before each request's own words: the traffic the server's prefix cache
 * is for. The report then gives the first request's TTFT apart from the later
 * ones', and the prompt tokens the server reports as cached (usage
 * prompt_tokens_details.cached_tokens).
 *
 * --cut-fraction F makes the client hang up on that share of the streams (drawn
 * with its own seeded generator) after a random number of tokens, as users closing
 * a tab do; those count as cut, not as errors. At the end loadgen reads the
 * server's /metrics (with --metrics-key-file's key, else the load key; it needs the
 * metrics permission) and prints its error counters and the sequences and KV
 * blocks still in use, so a soak can check that nothing leaked.
 *
 * The key is read from --key-file (preferred: it keeps the key out of `ps`) or --key,
 * and never printed.
 *
 * Errors are counted per request, by what the client saw. A request that was
 * never sent (no connection, or a TLS handshake that failed) is not lost: every
 * HTTP client may resend it, and loadgen does, after --connect-backoff-ms
 * (default 100; each such attempt is counted in connect_retries), until it is
 * sent, the run is over or --timeout passes; only then is it an error
 * ("connect"). A request whose connection broke after it was sent is lost
 * ("transport"); an HTTP error status is counted under that status. Without the
 * backoff a closed port would be counted thousands of times a second, which
 * measures the client's loop, not the outage. --log-errors prints one line per
 * failed transfer (when, which request, curl's error, bytes of the request sent).
 */
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "dsinfer/clock.h"

#define MAX_STATUS 600

struct opts {
    const char *url, *model, *cacert;
    char key[256];
    int insecure, concurrency, requests, json, timeout_s;
    int connect_backoff_ms; /* wait before resending a request that was never sent; 0: count it lost at once */
    int log_errors;         /* one stderr line per failed transfer */
    double duration_s;
    int pw_lo, pw_hi, mt_lo, mt_hi;
    int shared_words; /* words of the system message every request shares; 0: none */
    double cut_fraction; /* share of the streams the client hangs up on mid-way */
    char metrics_key[256];
    uint64_t seed;
};

struct samples {
    double *v;
    size_t n, cap;
};

struct client {
    CURL *h;
    struct curl_slist *hdrs;
    char *body;
    char line[8192];
    size_t line_len;
    double t_start, t_last;
    int got_first, chunks, usage_tokens;
    int prompt_tokens, cached_tokens; /* from the usage chunk */
    long index;                       /* 0: the run's first request */
    int done_marker;
    int cut_after; /* hang up after this many content chunks; 0: read to the end */
    int cut;       /* hung up on purpose */
    double resend_at; /* dsi_now_s() time to resend the unsent request; 0: none due */
};

struct run {
    struct opts o;
    struct samples ttft, itl, e2e;
    struct samples ttft_later; /* TTFT of every request but the first */
    double ttft_first;         /* TTFT of the first request; NAN until known */
    char *shared;              /* the shared system message (JSON-safe words); NULL: none */
    long status_count[MAX_STATUS];
    long transport_errors, completed, started, output_tokens, bad_streams;
    long connect_errors, connect_retries; /* requests never sent (given up); attempts resent */
    long prompt_tokens, cached_tokens, cut_streams;
    uint64_t rng, cut_rng;
    char *metrics; /* the server's /metrics after the run; NULL if not readable */
    long metrics_status;
    double t0;
};

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int rng_range(uint64_t *s, int lo, int hi) {
    return lo + (int)(rng_next(s) % (uint64_t)(hi - lo + 1));
}

static int samples_add(struct samples *s, double x) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        double *v = realloc(s->v, cap * sizeof *v);
        if (!v) return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = x;
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(struct samples *s, double p) {
    if (!s->n) return NAN;
    size_t i = (size_t)ceil(p / 100.0 * (double)s->n);
    if (i > 0) i--;
    if (i >= s->n) i = s->n - 1;
    return s->v[i];
}

static const char *WORDS[] = {"the", "light", "of", "morning", "river", "and", "king", "spoke", "unto",
                              "people", "city", "gate", "bread", "water", "land", "great", "house", "went",
                              "said", "day", "night", "field", "stone", "word", "heart", "hand", "sea"};

/* n words drawn from WORDS with *rng, space-separated; NULL when out of memory. */
static char *make_words(uint64_t *rng, int n_words) {
    size_t cap = (size_t)n_words * 10 + 1, n = 0;
    char *b = malloc(cap);
    if (!b) return NULL;
    b[0] = 0;
    for (int i = 0; i < n_words; i++) {
        const char *w = WORDS[rng_next(rng) % (sizeof WORDS / sizeof WORDS[0])];
        n += (size_t)snprintf(b + n, cap - n, "%s%s", i ? " " : "", w);
    }
    return b;
}

/* The request body: the shared system message if any, then one user message of
 * n words, max_tokens m, streaming with usage. */
static char *make_body(struct run *r, int n_words, int max_tokens) {
    size_t shared = r->shared ? strlen(r->shared) : 0;
    size_t cap = (size_t)n_words * 10 + shared + 512;
    char *b = malloc(cap);
    if (!b) return NULL;
    size_t n = (size_t)snprintf(b, cap,
                                "{\"model\":\"%s\",\"stream\":true,\"stream_options\":{\"include_usage\":true},\"ignore_eos\":true,"
                                "\"max_tokens\":%d,\"temperature\":0,\"messages\":[",
                                r->o.model, max_tokens);
    if (r->shared) n += (size_t)snprintf(b + n, cap - n, "{\"role\":\"system\",\"content\":\"%s\"},", r->shared);
    n += (size_t)snprintf(b + n, cap - n, "{\"role\":\"user\",\"content\":\"");
    for (int i = 0; i < n_words; i++) {
        const char *w = WORDS[rng_next(&r->rng) % (sizeof WORDS / sizeof WORDS[0])];
        n += (size_t)snprintf(b + n, cap - n, "%s%s", i ? " " : "", w);
    }
    snprintf(b + n, cap - n, "\"}]}");
    return b;
}

/* One SSE line: "data: {...}" chunk, "data: [DONE]", or something else. */
static void on_line(struct run *r, struct client *c, const char *line) {
    if (strncmp(line, "data:", 5) != 0) return;
    const char *p = line + 5;
    while (*p == ' ') p++;
    if (!strcmp(p, "[DONE]")) {
        c->done_marker = 1;
        return;
    }
    const char *u = strstr(p, "\"completion_tokens\":");
    if (u) c->usage_tokens = atoi(u + 20);
    if (u && (u = strstr(p, "\"prompt_tokens\":"))) c->prompt_tokens = atoi(u + 16);
    if (u && (u = strstr(p, "\"cached_tokens\":"))) c->cached_tokens = atoi(u + 16);
    /* a token chunk carries non-empty content or reasoning_content */
    int has_text = (strstr(p, "\"content\":\"") && !strstr(p, "\"content\":\"\"")) ||
                   (strstr(p, "\"reasoning_content\":\"") && !strstr(p, "\"reasoning_content\":\"\""));
    if (!has_text) return;
    double t = dsi_now_s();
    if (!c->got_first) {
        c->got_first = 1;
        samples_add(&r->ttft, t - c->t_start);
        if (c->index == 0) r->ttft_first = t - c->t_start;
        else samples_add(&r->ttft_later, t - c->t_start);
    } else {
        samples_add(&r->itl, t - c->t_last);
    }
    c->t_last = t;
    c->chunks++;
    if (c->cut_after && c->chunks >= c->cut_after) c->cut = 1;
}

struct write_ctx {
    struct run *r;
    struct client *c;
};

static size_t on_data(char *data, size_t size, size_t nmemb, void *user) {
    struct write_ctx *w = user;
    struct client *c = w->c;
    size_t n = size * nmemb;
    for (size_t i = 0; i < n; i++) {
        char ch = data[i];
        if (ch == '\n') {
            c->line[c->line_len] = 0;
            if (c->line_len && c->line[c->line_len - 1] == '\r') c->line[c->line_len - 1] = 0;
            on_line(w->r, c, c->line);
            c->line_len = 0;
            if (c->cut) return 0; /* curl aborts the transfer and closes the connection */
        } else if (c->line_len + 1 < sizeof c->line) {
            c->line[c->line_len++] = ch;
        } /* an overlong line is cut; it only ever holds a chunk we skip */
    }
    return n;
}

static int start_request(struct run *r, struct client *c, struct write_ctx *w, CURLM *multi) {
    int n_words = rng_range(&r->rng, r->o.pw_lo, r->o.pw_hi);
    int max_tokens = rng_range(&r->rng, r->o.mt_lo, r->o.mt_hi);
    free(c->body);
    c->body = make_body(r, n_words, max_tokens);
    if (!c->body) return -1;
    c->line_len = 0;
    c->got_first = c->chunks = c->usage_tokens = c->done_marker = 0;
    c->prompt_tokens = c->cached_tokens = 0;
    c->cut = c->cut_after = 0;
    if (r->o.cut_fraction > 0 && (double)(rng_next(&r->cut_rng) >> 11) * 0x1p-53 < r->o.cut_fraction)
        c->cut_after = rng_range(&r->cut_rng, 1, max_tokens > 1 ? max_tokens - 1 : 1);
    c->index = r->started;
    c->t_start = dsi_now_s();
    curl_easy_setopt(c->h, CURLOPT_POSTFIELDS, c->body);
    curl_easy_setopt(c->h, CURLOPT_WRITEDATA, w);
    r->started++;
    return curl_multi_add_handle(multi, c->h) == CURLM_OK ? 0 : -1;
}

/* Sends c's request again, unchanged (its clock keeps running from the first try). */
static int resend_request(struct client *c, CURLM *multi) {
    c->resend_at = 0;
    c->line_len = 0;
    c->got_first = c->chunks = c->usage_tokens = c->done_marker = c->cut = 0;
    return curl_multi_add_handle(multi, c->h) == CURLM_OK ? 0 : -1;
}

/* True when the failed transfer never sent the request: no connection, or no TLS
 * session, or not one byte of the request written. */
static int never_sent(CURL *h, CURLcode res) {
    if (res == CURLE_COULDNT_CONNECT || res == CURLE_COULDNT_RESOLVE_HOST || res == CURLE_SSL_CONNECT_ERROR)
        return 1;
    long sent = 0;
    return curl_easy_getinfo(h, CURLINFO_REQUEST_SIZE, &sent) == CURLE_OK && sent == 0;
}

enum next_step { NEXT_REQUEST, RESEND, CLIENT_DONE };

/* Books a finished transfer and says what the client does next: its next
 * request; RESEND the same one (never sent; c->resend_at set); or nothing more
 * (CLIENT_DONE: never sent, and the run ends before a backoff would). */
static enum next_step finish_request(struct run *r, struct client *c, CURLcode res) {
    long status = 0;
    curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &status);
    if (c->cut && res == CURLE_WRITE_ERROR) {
        r->cut_streams++;
        return NEXT_REQUEST;
    }
    if (res != CURLE_OK) {
        if (r->o.log_errors) {
            long sent = 0;
            double tconn = 0;
            curl_easy_getinfo(c->h, CURLINFO_REQUEST_SIZE, &sent);
            curl_easy_getinfo(c->h, CURLINFO_CONNECT_TIME, &tconn);
            fprintf(stderr, "loadgen: %.3f s: request %ld (started %.3f s): %s, %ld request bytes sent, connected after %.3f s\n",
                    dsi_now_s() - r->t0, c->index, c->t_start - r->t0, curl_easy_strerror(res), sent, tconn);
        }
        if (!never_sent(c->h, res)) {
            r->transport_errors++;
            return NEXT_REQUEST;
        }
        double now = dsi_now_s(), backoff = r->o.connect_backoff_ms / 1e3;
        int run_over = r->o.requests ? 0 : now + backoff - r->t0 >= r->o.duration_s;
        if (!backoff || run_over || now + backoff - c->t_start >= r->o.timeout_s) {
            r->connect_errors++;
            return backoff && run_over ? CLIENT_DONE : NEXT_REQUEST;
        }
        r->connect_retries++;
        c->resend_at = now + backoff;
        return RESEND;
    }
    if (status > 0 && status < MAX_STATUS) r->status_count[status]++;
    if (status != 200) return NEXT_REQUEST;
    if (!c->done_marker) {
        r->bad_streams++; /* 200 but the stream ended without [DONE] */
        return NEXT_REQUEST;
    }
    r->completed++;
    r->output_tokens += c->usage_tokens ? c->usage_tokens : c->chunks;
    r->prompt_tokens += c->prompt_tokens;
    r->cached_tokens += c->cached_tokens;
    samples_add(&r->e2e, dsi_now_s() - c->t_start);
    return NEXT_REQUEST;
}

static void set_tls(const struct opts *o, CURL *h) {
    curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_3);
    if (o->cacert) curl_easy_setopt(h, CURLOPT_CAINFO, o->cacert);
    if (o->insecure) {
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
    }
}

static int setup_client(struct run *r, struct client *c, char *auth) {
    c->h = curl_easy_init();
    if (!c->h) return -1;
    char url[1024];
    snprintf(url, sizeof url, "%s/v1/chat/completions", r->o.url);
    c->hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    if (auth[0]) c->hdrs = curl_slist_append(c->hdrs, auth);
    curl_easy_setopt(c->h, CURLOPT_URL, url);
    curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, c->hdrs);
    curl_easy_setopt(c->h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c->h, CURLOPT_TIMEOUT, (long)r->o.timeout_s);
    curl_easy_setopt(c->h, CURLOPT_TCP_KEEPALIVE, 1L);
    set_tls(&r->o, c->h);
    curl_easy_setopt(c->h, CURLOPT_PRIVATE, c);
    return 0;
}

struct body {
    char *p;
    size_t n;
};

static size_t on_body(char *data, size_t size, size_t nmemb, void *user) {
    struct body *b = user;
    size_t n = size * nmemb;
    if (b->n + n + 1 > (8u << 20)) return 0; /* /metrics is kilobytes; more is not ours */
    char *p = realloc(b->p, b->n + n + 1);
    if (!p) return 0;
    memcpy(p + b->n, data, n);
    b->p = p;
    b->n += n;
    b->p[b->n] = 0;
    return n;
}

/* GET /metrics after the run; the body (malloc'd) or NULL, and the HTTP status. */
static char *fetch_metrics(const struct opts *o, long *status) {
    *status = 0;
    CURL *h = curl_easy_init();
    if (!h) return NULL;
    char url[1024], auth[300];
    snprintf(url, sizeof url, "%s/metrics", o->url);
    const char *key = o->metrics_key[0] ? o->metrics_key : o->key;
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
    struct curl_slist *hdrs = key[0] ? curl_slist_append(NULL, auth) : NULL;
    struct body b = {0};
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 10L);
    set_tls(o, h);
    if (curl_easy_perform(h) == CURLE_OK) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    curl_easy_cleanup(h);
    curl_slist_free_all(hdrs);
    if (*status != 200) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* The series a load test reads at the end: the server's error counters, and the
 * gauges that must fall back to zero once the load is gone. */
static int wanted_series(const char *line) {
    static const char *prefixes[] = {"dsinfer_generation_failures_total{", "dsinfer_streams_backpressure_total ",
                                     "dsinfer_preempted_total ", "dsinfer_running_sequences ",
                                     "dsinfer_waiting_sequences ", "dsinfer_kv_blocks_used "};
    if (!strncmp(line, "dsinfer_requests_total{", 23)) {
        const char *st = strstr(line, "status=\"");
        return st && atoi(st + 8) >= 400;
    }
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++)
        if (!strncmp(line, prefixes[i], strlen(prefixes[i]))) return 1;
    return 0;
}

/* Prints the wanted series of a /metrics body, as text lines or as JSON members. */
static void print_series(char *metrics, int json) {
    const char *sep = "";
    char *save = NULL;
    for (char *line = strtok_r(metrics, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (!wanted_series(line)) continue;
        char *sp = strrchr(line, ' ');
        if (!sp) continue;
        *sp = 0;
        if (!json) {
            printf("    %s %s\n", line, sp + 1);
            continue;
        }
        printf("%s\"", sep);
        for (const char *q = line; *q; q++) printf(*q == '"' ? "\\\"" : "%c", *q);
        printf("\":%s", sp + 1);
        sep = ",";
    }
}

static void report(struct run *r, double elapsed) {
    struct samples *all[] = {&r->ttft, &r->itl, &r->e2e, &r->ttft_later};
    for (int k = 0; k < 4; k++) /* qsort's base may not be NULL, even for 0 items */
        if (all[k]->n) qsort(all[k]->v, all[k]->n, sizeof(double), cmp_double);
    double rps = (double)r->completed / elapsed, tps = (double)r->output_tokens / elapsed;
    long errors = r->transport_errors + r->bad_streams + r->connect_errors;
    for (int s = 0; s < MAX_STATUS; s++)
        if (s != 200) errors += r->status_count[s];
    if (r->o.json) {
        printf("{\"concurrency\":%d,\"elapsed_s\":%.3f,\"requests_completed\":%ld,\"requests_per_s\":%.3f,"
               "\"output_tokens\":%ld,\"output_tokens_per_s\":%.2f",
               r->o.concurrency, elapsed, r->completed, rps, r->output_tokens, tps);
        struct samples *sets[] = {&r->ttft, &r->itl, &r->e2e};
        const char *names[] = {"ttft_ms", "itl_ms", "latency_ms"};
        for (int k = 0; k < 3; k++) {
            printf(",\"%s\":", names[k]);
            if (!sets[k]->n) printf("null");
            else printf("{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f}", pct(sets[k], 50) * 1e3,
                        pct(sets[k], 90) * 1e3, pct(sets[k], 99) * 1e3);
        }
        printf(",\"errors\":%ld,\"errors_by_status\":{", errors);
        const char *sep = "";
        for (int s = 0; s < MAX_STATUS; s++)
            if (s != 200 && r->status_count[s]) {
                printf("%s\"%d\":%ld", sep, s, r->status_count[s]);
                sep = ",";
            }
        if (r->connect_errors) printf("%s\"connect\":%ld", sep, r->connect_errors), sep = ",";
        if (r->transport_errors) printf("%s\"transport\":%ld", sep, r->transport_errors), sep = ",";
        if (r->bad_streams) printf("%s\"truncated_stream\":%ld", sep, r->bad_streams);
        printf("},\"connect_retries\":%ld", r->connect_retries);
        printf(",\"cut_streams\":%ld,\"prompt_tokens\":%ld,\"cached_prompt_tokens\":%ld", r->cut_streams,
               r->prompt_tokens, r->cached_tokens);
        if (r->o.shared_words) {
            printf(",\"shared_prefix_words\":%d,\"ttft_first_ms\":", r->o.shared_words);
            if (isnan(r->ttft_first)) printf("null");
            else printf("%.3f", r->ttft_first * 1e3);
            printf(",\"ttft_later_ms\":");
            if (!r->ttft_later.n) printf("null");
            else printf("{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f}", pct(&r->ttft_later, 50) * 1e3,
                        pct(&r->ttft_later, 90) * 1e3, pct(&r->ttft_later, 99) * 1e3);
        }
        printf(",\"server_metrics_status\":%ld,\"server_metrics\":", r->metrics_status);
        if (r->metrics) {
            printf("{");
            print_series(r->metrics, 1);
            printf("}");
        } else {
            printf("null");
        }
        printf("}\n");
        return;
    }
    printf("concurrency %d, %.1f s: %ld requests (%.2f req/s), %ld output tokens (%.1f tok/s)\n",
           r->o.concurrency, elapsed, r->completed, rps, r->output_tokens, tps);
    printf("  TTFT ms         p50 %8.2f  p90 %8.2f  p99 %8.2f\n", pct(&r->ttft, 50) * 1e3, pct(&r->ttft, 90) * 1e3,
           pct(&r->ttft, 99) * 1e3);
    printf("  inter-token ms  p50 %8.3f  p90 %8.3f  p99 %8.3f\n", pct(&r->itl, 50) * 1e3, pct(&r->itl, 90) * 1e3,
           pct(&r->itl, 99) * 1e3);
    printf("  request ms      p50 %8.1f  p90 %8.1f  p99 %8.1f\n", pct(&r->e2e, 50) * 1e3, pct(&r->e2e, 90) * 1e3,
           pct(&r->e2e, 99) * 1e3);
    printf("  prompt tokens %ld, %ld of them cached (%.1f%%)\n", r->prompt_tokens, r->cached_tokens,
           r->prompt_tokens ? 100.0 * (double)r->cached_tokens / (double)r->prompt_tokens : 0.0);
    if (r->o.shared_words)
        printf("  shared prefix %d words: TTFT ms first %8.2f, later p50 %8.2f  p90 %8.2f (%.1f%% of the first)\n",
               r->o.shared_words, r->ttft_first * 1e3, pct(&r->ttft_later, 50) * 1e3, pct(&r->ttft_later, 90) * 1e3,
               100.0 * pct(&r->ttft_later, 50) / r->ttft_first);
    printf("  errors %ld", errors);
    for (int s = 0; s < MAX_STATUS; s++)
        if (s != 200 && r->status_count[s]) printf("  [%d]x%ld", s, r->status_count[s]);
    if (r->connect_errors) printf("  [connect]x%ld", r->connect_errors);
    if (r->transport_errors) printf("  [transport]x%ld", r->transport_errors);
    if (r->bad_streams) printf("  [truncated stream]x%ld", r->bad_streams);
    printf("\n");
    if (r->connect_retries) printf("  requests resent after a failed connection: %ld times\n", r->connect_retries);
    if (r->o.cut_fraction > 0) printf("  streams cut by the client on purpose: %ld\n", r->cut_streams);
    if (r->metrics) {
        printf("  server /metrics (errors, and what must return to 0):\n");
        print_series(r->metrics, 0);
    } else {
        printf("  server /metrics: not read (HTTP %ld%s)\n", r->metrics_status,
               r->metrics_status == 401 || r->metrics_status == 403 ? ": the key lacks the metrics permission" : "");
    }
}

static int parse_range(const char *s, int *lo, int *hi) {
    char *end;
    long a = strtol(s, &end, 10), b = a;
    if (*end == ':') b = strtol(end + 1, &end, 10);
    if (*end || a < 1 || b < a || b > 1000000) return -1;
    *lo = (int)a;
    *hi = (int)b;
    return 0;
}

static int read_key_file(const char *path, char *key, size_t cap) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    if (!fgets(key, (int)cap, f)) key[0] = 0;
    fclose(f);
    key[strcspn(key, "\r\n")] = 0;
    return key[0] ? 0 : -1;
}

static void usage(FILE *f) {
    fprintf(f, "usage: loadgen --url https://HOST:PORT [--key-file F | --key K] [--cacert F | --insecure]\n"
               "               [--concurrency N] [--duration S | --requests N] [--prompt-words A:B]\n"
               "               [--max-tokens A:B] [--shared-prefix-words N] [--model NAME] [--seed S]\n"
               "               [--timeout S] [--cut-fraction F] [--metrics-key-file F]\n"
               "               [--connect-backoff-ms MS] [--log-errors] [--json]\n");
}

static int parse_args(int argc, char **argv, struct opts *o) {
    memset(o, 0, sizeof *o);
    o->model = "demo";
    o->concurrency = 1;
    o->duration_s = 10;
    o->pw_lo = 8, o->pw_hi = 64, o->mt_lo = 16, o->mt_hi = 64;
    o->seed = 1;
    o->timeout_s = 120;
    o->connect_backoff_ms = 100;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "--json")) { o->json = 1; continue; }
        if (!strcmp(f, "--insecure")) { o->insecure = 1; continue; }
        if (!strcmp(f, "--log-errors")) { o->log_errors = 1; continue; }
        if (!strcmp(f, "--help")) { usage(stdout); return 1; }
        if (!v) { fprintf(stderr, "loadgen: %s needs a value\n", f); return -1; }
        i++;
        if (!strcmp(f, "--url")) o->url = v;
        else if (!strcmp(f, "--model")) o->model = v;
        else if (!strcmp(f, "--cacert")) o->cacert = v;
        else if (!strcmp(f, "--key")) snprintf(o->key, sizeof o->key, "%s", v);
        else if (!strcmp(f, "--key-file")) {
            if (read_key_file(v, o->key, sizeof o->key)) { fprintf(stderr, "loadgen: cannot read a key from %s\n", v); return -1; }
        } else if (!strcmp(f, "--concurrency")) o->concurrency = atoi(v);
        else if (!strcmp(f, "--duration")) o->duration_s = atof(v), o->requests = 0;
        else if (!strcmp(f, "--requests")) o->requests = atoi(v);
        else if (!strcmp(f, "--seed")) o->seed = strtoull(v, NULL, 10);
        else if (!strcmp(f, "--timeout")) o->timeout_s = atoi(v);
        else if (!strcmp(f, "--connect-backoff-ms")) {
            char *end;
            long ms = strtol(v, &end, 10);
            if (*end || ms < 0 || ms > 60000) { fprintf(stderr, "loadgen: bad --connect-backoff-ms %s\n", v); return -1; }
            o->connect_backoff_ms = (int)ms;
        }
        else if (!strcmp(f, "--prompt-words")) { if (parse_range(v, &o->pw_lo, &o->pw_hi)) { fprintf(stderr, "loadgen: bad range %s\n", v); return -1; } }
        else if (!strcmp(f, "--shared-prefix-words")) {
            char *end;
            long w = strtol(v, &end, 10);
            if (*end || w < 0 || w > 1000000) { fprintf(stderr, "loadgen: bad --shared-prefix-words %s\n", v); return -1; }
            o->shared_words = (int)w;
        } else if (!strcmp(f, "--cut-fraction")) {
            char *end;
            o->cut_fraction = strtod(v, &end);
            if (*end || !(o->cut_fraction >= 0 && o->cut_fraction <= 1)) { fprintf(stderr, "loadgen: bad --cut-fraction %s (0..1)\n", v); return -1; }
        } else if (!strcmp(f, "--metrics-key-file")) {
            if (read_key_file(v, o->metrics_key, sizeof o->metrics_key)) { fprintf(stderr, "loadgen: cannot read a key from %s\n", v); return -1; }
        } else if (!strcmp(f, "--max-tokens")) { if (parse_range(v, &o->mt_lo, &o->mt_hi)) { fprintf(stderr, "loadgen: bad range %s\n", v); return -1; } }
        else { fprintf(stderr, "loadgen: unknown option %s\n", f); return -1; }
    }
    if (!o->url || o->concurrency < 1 || o->concurrency > 4096 || o->timeout_s < 1 ||
        (o->requests <= 0 && !(o->duration_s > 0))) {
        usage(stderr);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    struct run *r = calloc(1, sizeof *r);
    if (!r) return 1;
    int pa = parse_args(argc, argv, &r->o);
    if (pa) {
        free(r);
        return pa > 0 ? 0 : 2;
    }
    r->rng = r->o.seed;
    r->cut_rng = r->o.seed ^ 0xc07c07c07ull; /* its own stream: the request draws stay as without cuts */
    r->ttft_first = NAN;
    if (r->o.shared_words) {
        uint64_t srng = r->o.seed ^ 0x5eed5eed5eedull; /* its own stream: the per-request draws stay as before */
        if (!(r->shared = make_words(&srng, r->o.shared_words))) return 1;
    }
    char auth[300] = "";
    if (r->o.key[0]) snprintf(auth, sizeof auth, "Authorization: Bearer %s", r->o.key);
    if (curl_global_init(CURL_GLOBAL_DEFAULT)) return 1;
    CURLM *multi = curl_multi_init();
    int n = r->o.concurrency;
    struct client *cl = calloc((size_t)n, sizeof *cl);
    struct write_ctx *wc = calloc((size_t)n, sizeof *wc);
    if (!multi || !cl || !wc) return 1;
    curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)n);
    r->t0 = dsi_now_s();
    for (int i = 0; i < n; i++) {
        wc[i] = (struct write_ctx){r, &cl[i]};
        if (setup_client(r, &cl[i], auth)) return 1;
        if (r->o.requests && r->started >= r->o.requests) break;
        if (start_request(r, &cl[i], &wc[i], multi)) return 1;
    }
    int running = 1, waiting = 0; /* transfers in curl; clients waiting to resend */
    while (running || waiting) {
        curl_multi_perform(multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(multi, &left))) {
            if (m->msg != CURLMSG_DONE) continue;
            struct client *c;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&c);
            CURLcode res = m->data.result;
            curl_multi_remove_handle(multi, c->h);
            if (finish_request(r, c, res) != NEXT_REQUEST) continue; /* resent after its backoff, or done */
            int more = r->o.requests ? r->started < r->o.requests : dsi_now_s() - r->t0 < r->o.duration_s;
            if (more && start_request(r, c, &wc[c - cl], multi) == 0) running = 1;
        }
        double now = dsi_now_s(), next = now + 0.1;
        waiting = 0;
        for (int i = 0; i < n; i++) {
            if (!cl[i].resend_at) continue;
            if (cl[i].resend_at <= now) {
                if (resend_request(&cl[i], multi) == 0) running = 1;
            } else {
                waiting = 1;
                if (cl[i].resend_at < next) next = cl[i].resend_at;
            }
        }
        if (running || waiting) curl_multi_poll(multi, NULL, 0, (int)((next - now) * 1e3) + 1, NULL);
    }
    double elapsed = dsi_now_s() - r->t0;
    r->metrics = fetch_metrics(&r->o, &r->metrics_status);
    report(r, elapsed);
    for (int i = 0; i < n; i++) {
        curl_easy_cleanup(cl[i].h);
        curl_slist_free_all(cl[i].hdrs);
        free(cl[i].body);
    }
    curl_multi_cleanup(multi);
    curl_global_cleanup();
    long failed = r->transport_errors + r->bad_streams + r->connect_errors;
    for (int s = 0; s < MAX_STATUS; s++)
        if (s != 200) failed += r->status_count[s];
    free(cl);
    free(wc);
    free(r->ttft.v);
    free(r->itl.v);
    free(r->e2e.v);
    free(r->ttft_later.v);
    free(r->shared);
    free(r->metrics);
    int ok = r->completed > 0 && failed == 0;
    free(r);
    return ok ? 0 : 1;
}
