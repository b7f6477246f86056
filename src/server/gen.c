/*
 * gen.c: one generation request between a connection and the engine.
 *
 * The engine callback (scheduler thread, must not block) decodes each token
 * incrementally, runs the reasoning/stop-string filter and appends either SSE
 * chunks (stream) or answer text (non-stream) under the gen's mutex, then
 * resumes the suspended connection. The connection side (MHD thread) sends what
 * is buffered and suspends again when nothing is: an idle stream costs no CPU.
 * A request with n > 1 is n engine sequences (consecutive ids; an event's index
 * is its choice), each choice with its own decoder, filter and buffers (struct
 * dsi__choice; answer.c writes their JSON); the answer is done when all are.
 *
 * Failures once the engine has the request (out of memory, a decoder error, an
 * engine error, a client that does not read: more than stream_buffer_bytes
 * unsent) all go through gen_fail, which fails the whole answer (n choices are
 * what was asked, not some of them): every sequence is cancelled, a stream ends
 * with one OpenAI error event and [DONE] (its status line is gone), a non-streaming
 * answer becomes an error body. Output held for stream clients is counted in the
 * dsinfer_stream_buffered_bytes gauge (account()).
 *
 * Lock order: gen->mu is never held while calling into the engine
 * (dsi_engine_cancel), since the engine may hold its own lock while calling us.
 * MHD_resume_connection is called without gen->mu too; a connection cannot
 * complete while suspended, so g->conn stays valid until that resume.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dsinfer/clock.h"
#include "dsinfer/crypto.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "dsinfer/grammar.h"
#include "srv.h"

static void engine_cb(void *user, const struct dsi_token_event *ev);
static void choice_free(struct dsi__choice *c);
static int choices_init(struct dsi__gen *g, struct dsi__req *r);
static int cancel_ids(struct dsi__gen *g, bool all, uint64_t ids[DSI_MAX_N]);

int dsi__gen_create(struct dsi_server *s, struct MHD_Connection *c, struct dsi__gen **out) {
    struct dsi__gen *g = calloc(1, sizeof *g);
    if (!g) return DSI_ENOMEM;
    if (pthread_mutex_init(&g->mu, NULL)) {
        free(g);
        return DSI_ENOMEM;
    }
    g->refs = 1;
    g->s = s;
    g->conn = c;
    g->t_start = dsi_now_s();
    pthread_mutex_lock(&s->mu);
    g->next = s->gens;
    if (s->gens) s->gens->prev = g;
    s->gens = g;
    pthread_mutex_unlock(&s->mu);
    *out = g;
    return 0;
}

void dsi__gen_release(struct dsi__gen *g) {
    if (!g) return;
    pthread_mutex_lock(&g->mu);
    int left = --g->refs;
    pthread_mutex_unlock(&g->mu);
    if (left > 0) return;
    struct dsi_server *s = g->s;
    pthread_mutex_lock(&s->mu);
    if (g->prev) g->prev->next = g->next;
    else s->gens = g->next;
    if (g->next) g->next->prev = g->prev;
    pthread_mutex_unlock(&s->mu);
    if (g->accounted) dsi__smetrics_stream_buffered(s->metrics, -(int64_t)g->accounted);
    if (g->slot_key[0]) dsi__slots_release(s, g->slot_key, g->n_slots);
    for (int i = 0; i < g->n_choices; i++) choice_free(&g->ch[i]);
    free(g->ch);
    free(g->prefill);
    for (int i = 0; i < g->n_stops; i++) free(g->stops[i]);
    dsi_grammar_destroy(g->grammar);
    dsi__sbuf_free(&g->out);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

static void choice_free(struct dsi__choice *c) {
    dsi_tok_stream_destroy(c->ts);
    dsi__textgen_free(&c->tg);
    dsi__toolscan_free(&c->scan);
    dsi__sbuf_free(&c->calls);
    dsi__sbuf_free(&c->content);
    dsi__sbuf_free(&c->reasoning);
    dsi__sbuf_free(&c->lp);
    dsi__sbuf_free(&c->lp_tokens);
    dsi__sbuf_free(&c->lp_values);
    dsi__sbuf_free(&c->lp_tops);
}

void dsi__gen_cache_ns(struct dsi__gen *g, const struct dsi_principal *pr, const char *salt) {
    /* SHA-256 over length-prefixed parts, so no two (group, salt) pairs give
     * the same input; 128 bits of it name the namespace. The engine compares
     * them exactly, so only a SHA-256 collision could merge two groups. */
    char group[96];
    const char *scope = g->s->cfg && g->s->cfg->prefix_cache_scope ? g->s->cfg->prefix_cache_scope : "key";
    if (!strcmp(scope, "global")) snprintf(group, sizeof group, "global");
    else if (pr && pr->cache_group[0]) snprintf(group, sizeof group, "group:%s", pr->cache_group);
    else if (pr && pr->key_id[0]) snprintf(group, sizeof group, "key:%s", pr->key_id);
    else snprintf(group, sizeof group, "anonymous");
    const char *parts[3] = {"dsinfer prefix cache v1", group, salt ? salt : ""};
    struct dsi_sha256 h;
    uint8_t d[DSI_SHA256_LEN] = {0};
    bool ok = dsi_sha256_init(&h) == 0;
    for (int i = 0; ok && i < 3; i++) {
        uint32_t n = (uint32_t)strlen(parts[i]);
        ok = dsi_sha256_update(&h, &n, sizeof n) == 0 && dsi_sha256_update(&h, parts[i], n) == 0;
    }
    if (ok) ok = dsi_sha256_final(&h, d) == 0;
    dsi_sha256_free(&h);
    if (!ok) {
        /* No digest: a namespace of its own (random-ish, never shared) rather
         * than a shared one; the request only loses reuse. */
        uint64_t x = (uint64_t)(uintptr_t)g ^ (uint64_t)(g->t_start * 1e9);
        memcpy(d, &x, sizeof x);
        d[15] = 0xff;
    }
    memcpy(g->cache_ns, d, sizeof g->cache_ns);
}

static bool is_stop_id(const struct dsi_server *s, int32_t id) {
    for (int i = 0; i < s->n_stop_ids; i++)
        if (s->stop_ids[i] == id) return true;
    return false;
}

/* Bytes a stream holds for its client: SSE not yet sent, plus what waits for the
 * next chunk (logprob entries, an answer held until its tool calls are known). */
static size_t pending_bytes(const struct dsi__gen *g) {
    if (!g->stream) return 0;
    size_t n = g->out.len - g->out_off;
    for (int i = 0; i < g->n_choices; i++) {
        const struct dsi__choice *c = &g->ch[i];
        n += c->lp.len + c->lp_tokens.len + c->lp_values.len + c->lp_tops.len + c->content.len + c->reasoning.len +
             c->scan.hold.len;
    }
    return n;
}

/* Keeps the buffered-bytes gauge in step with this gen (under g->mu). */
static void account(struct dsi__gen *g) {
    size_t now = pending_bytes(g);
    if (now == g->accounted) return;
    dsi__smetrics_stream_buffered(g->s->metrics, (int64_t)now - (int64_t)g->accounted);
    g->accounted = now;
}

/* Drops the stream's unsent events, keeping the one partly sent (SSE framing
 * stays whole), and gives their memory back. */
static void drop_unsent(struct dsi__gen *g) {
    struct dsi__sbuf *b = &g->out;
    size_t keep = g->out_off;
    if (keep > 0 && keep < b->len && !(keep >= 2 && b->p[keep - 2] == '\n' && b->p[keep - 1] == '\n')) {
        const char *end = NULL;
        for (size_t i = keep; !end && i + 1 < b->len; i++)
            if (b->p[i] == '\n' && b->p[i + 1] == '\n') end = b->p + i + 2;
        keep = end ? (size_t)(end - b->p) : b->len;
    }
    struct dsi__sbuf small = {0};
    if (keep > g->out_off && dsi__sbuf_append(&small, b->p + g->out_off, keep - g->out_off)) {
        b->len = keep; /* out of memory: keep the big buffer, trimmed */
        return;
    }
    dsi__sbuf_free(b);
    *b = small;
    g->out_off = 0;
    for (int i = 0; i < g->n_choices; i++) {
        struct dsi__choice *c = &g->ch[i];
        dsi__sbuf_free(&c->lp);
        dsi__sbuf_free(&c->lp_tokens);
        dsi__sbuf_free(&c->lp_values);
        dsi__sbuf_free(&c->lp_tops);
        dsi__sbuf_free(&c->content);
        dsi__sbuf_free(&c->reasoning);
        c->n_lp = 0;
    }
}

/* The one way a generation fails once the engine has accepted it (under g->mu):
 * later tokens are dropped, every unfinished choice's sequence is cancelled
 * (need_cancel; sent outside the lock), and the client is told once. A stream
 * keeps the events already built (unless drop: a client that does not read
 * them) and ends with an error event
 * and [DONE] from g->tail, which needs no allocation; a non-streaming answer
 * gets g->fail as its body (dsi__gen_final_json). status picks the error type:
 * 500 for our failures, 503 for timeouts and shutdown. */
static void gen_fail(struct dsi__gen *g, int status, const char *code, bool drop, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void gen_fail(struct dsi__gen *g, int status, const char *code, bool drop, const char *fmt, ...) {
    if (g->failed) return;
    g->failed = true;
    for (int i = 0; i < g->n_choices; i++) g->ch[i].need_cancel = !g->ch[i].finished;
    va_list ap;
    va_start(ap, fmt);
    char msg[sizeof g->fail.message];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dsi__api_error_set(&g->fail, status, NULL, code, "%s", msg);
    dsi__smetrics_gen_failed(g->s->metrics, status);
    dsi_log(status >= 500 && status != 503 ? DSI_LOG_ERROR : DSI_LOG_INFO, "server", "request %s: %s", g->id, msg);
    if (!g->stream) return;
    if (drop) drop_unsent(g);
    g->tail_len = dsi__api_error_sse(&g->fail, g->tail, sizeof g->tail);
    g->tail_off = 0;
    account(g);
}

/* Backpressure: a stream whose client left more than stream_buffer_bytes unsent
 * ends here, so that a client that stops reading costs a bounded amount of
 * memory and no more compute. */
static void check_backpressure(struct dsi__gen *g) {
    size_t limit = g->s->cfg->stream_buffer_bytes;
    if (!g->stream || g->failed || limit == 0 || pending_bytes(g) <= limit) return;
    dsi__smetrics_stream_backpressure(g->s->metrics);
    gen_fail(g, 500, "stream_backpressure", true,
             "the client did not read the stream: more than %zu bytes waiting (stream_buffer_bytes)", limit);
}

/* A token of choice c: its text and logprobs into the answer (under g->mu).
 * 0 or a DSI_E*. */
static int add_token(struct dsi__choice *c, const struct dsi_token_event *ev) {
    struct dsi__gen *g = c->g;
    int rc = g->logprobs ? dsi__answer_logprobs(c, ev) : 0;
    /* test builds: DSI_TEST_FAIL_TOKEN=N fails the Nth token as out of memory would */
    if (++g->n_tokens_seen == g->fail_token) rc = DSI_ENOMEM;
    char *txt = NULL;
    size_t len = 0;
    if (!rc) rc = dsi_tok_stream_push(c->ts, ev->token, &txt, &len);
    if (!rc && txt && len) {
        rc = dsi__textgen_push(&c->tg, txt, len, dsi__answer_emit, c);
        if (rc == 1) {
            c->stop_hit = true;
            if (!ev->finished) c->need_cancel = true;
            rc = 0;
        }
    }
    free(txt);
    return rc;
}

/* Choice c's final event: flush its held text, tool calls, its last chunk
 * (under g->mu). */
static int finish_choice(struct dsi__choice *c) {
    struct dsi__gen *g = c->g;
    int rc = 0;
    if (!c->stop_hit) {
        char *txt = NULL;
        size_t len = 0;
        if (dsi_tok_stream_flush(c->ts, &txt, &len) == 0 && txt && len)
            rc = dsi__textgen_push(&c->tg, txt, len, dsi__answer_emit, c);
        free(txt);
        if (rc == 1) c->stop_hit = true, rc = 0;
        if (!rc) rc = dsi__textgen_finish(&c->tg, dsi__answer_emit, c);
    }
    if (!rc && g->tool_mode) rc = dsi__answer_tools(c);
    if (g->stream && !rc) rc = dsi__answer_delta(c, DSI__CH_CONTENT, NULL, 0, true);
    return rc;
}

/* An engine error on the final event, or a cancel nobody here asked for (the
 * engine stopping at shutdown). A failed backend step (GPU out of memory, a
 * CUDA error) is 503 backend_error: the server's trouble, not a bug (500 stays
 * for DSI_EINTERNAL), and worth a retry, here or on another server. */
static void engine_failed(struct dsi__gen *g, int err) {
    const char *code = err == DSI_ETIMEDOUT   ? "timeout"
                       : err == DSI_ECANCELED ? "shutting_down"
                       : err == DSI_EINTERNAL ? NULL
                                              : "backend_error";
    gen_fail(g, code ? 503 : 500, code, false, "generation failed: %s%s", dsi_strerror(err),
             code && !strcmp(code, "backend_error") ? " in the model backend; retry later" : "");
}

/* One event of choice c (under g->mu): its token, and when final its end and,
 * after the last choice, the stream's usage chunk and [DONE]. 0 or a DSI_E*. */
static int choice_event(struct dsi__choice *c, const struct dsi_token_event *ev, double now) {
    struct dsi__gen *g = c->g;
    struct dsi_server *s = g->s;
    int rc = 0;
    if (!g->failed && ev->token >= 0 && !c->stop_hit && !(ev->finished && is_stop_id(s, ev->token))) {
        if (!g->got_token) dsi__smetrics_ttft(s->metrics, now - g->t_start);
        else if (c->got_token) dsi__smetrics_itl(s->metrics, now - c->t_last);
        g->got_token = c->got_token = true;
        c->t_last = now;
        rc = add_token(c, ev);
    }
    if (!ev->finished) return rc;
    c->finished = true;
    c->finish = ev->finish;
    c->error = ev->error;
    if (++g->n_finished == g->n_choices) g->finished = true;
    /* after a stop string the choice is whole, whatever ended the sequence */
    bool unasked_cancel = ev->finish == DSI_FINISH_CANCELLED && !c->cancel_sent && !g->conn_gone;
    if (g->failed || rc) return rc;
    if (!c->stop_hit && ev->finish == DSI_FINISH_ERROR) engine_failed(g, ev->error);
    else if (!c->stop_hit && unasked_cancel) engine_failed(g, DSI_ECANCELED);
    else rc = finish_choice(c);
    if (!rc && !g->failed && g->finished && g->stream) {
        if (g->include_usage) rc = dsi__answer_usage_chunk(g);
        if (!rc) rc = dsi__sbuf_printf(&g->out, "data: [DONE]\n\n");
    }
    return rc;
}

static void engine_cb(void *user, const struct dsi_token_event *ev) {
    struct dsi__gen *g = user;
    double now = dsi_now_s();
    pthread_mutex_lock(&g->mu);
    struct dsi__choice *c = ev->index >= 0 && ev->index < g->n_choices ? &g->ch[ev->index] : NULL;
    if (!c || c->finished) {
        /* the engine's contract rules this out; drop it rather than write past the choices */
        pthread_mutex_unlock(&g->mu);
        dsi_log(DSI_LOG_ERROR, "server", "request %s: event for choice %d of %d", g->id, ev->index, g->n_choices);
        return;
    }
    /* Counts ride on every event, so a client that leaves early is charged for
     * what was generated until then. The prompt counts once. */
    if (ev->index == 0) g->n_prompt = ev->n_prompt_tokens, g->n_cached = ev->n_cached_tokens;
    g->n_completion += ev->n_completion_tokens - c->n_completion;
    c->n_completion = ev->n_completion_tokens;
    int rc = choice_event(c, ev, now);
    if (rc) gen_fail(g, 500, NULL, false, "%s while building the answer", dsi_strerror(rc));
    check_backpressure(g);
    account(g);
    struct MHD_Connection *resume = NULL;
    if (g->suspended && !g->conn_gone) {
        g->suspended = false;
        resume = g->conn;
    }
    bool last = g->finished && g->engine_ref;
    if (g->finished) g->engine_ref = false;
    pthread_mutex_unlock(&g->mu);
    if (resume) MHD_resume_connection(resume);
    /* A stream whose client does not read never runs its reader: cancel from
     * here (a stop string, or a failure that ends the other choices too). */
    if (last) dsi__gen_release(g);
    else dsi__gen_cancel_if_needed(g);
}

/* The model tokenizer's token trie, built once (~50 ms at 152k tokens) by the first
 * request that needs it. NULL when out of memory. */
static const struct dsi_token_trie *server_trie(struct dsi_server *s) {
    pthread_mutex_lock(&s->mu);
    if (!s->trie) dsi_token_trie_create(s->tok, &s->trie, NULL);
    const struct dsi_token_trie *tr = s->trie;
    pthread_mutex_unlock(&s->mu);
    return tr;
}

/* The request's n choices (1 when n is absent), each with its own decoder,
 * stop-string filter and tool scanner, and the tool mode they share. 0 or
 * DSI_ENOMEM (what was made is freed with g). */
static int choices_init(struct dsi__gen *g, struct dsi__req *r) {
    struct dsi_server *s = g->s;
    g->tool_mode = r->tool_choice == DSI__TOOL_CHOICE_REQUIRED || r->tool_choice == DSI__TOOL_CHOICE_NAMED ? 2
                   : r->tools_json && r->tool_choice == DSI__TOOL_CHOICE_AUTO                            ? 1
                                                                                                         : 0;
    /* The calls come in the syntax the prompt showed: V3's tokens there, else
     * <tool_call> blocks (ChatML's native form and the prompt form alike). */
    enum dsi_chat_format f = s->chat_format == DSI_CHAT_AUTO ? dsi_tok_chat_format(s->tok) : s->chat_format;
    g->tool_syn = f == DSI_CHAT_DEEPSEEK_V3 ? DSI__TOOLS_DEEPSEEK : DSI__TOOLS_TAGS;
    g->prefill = r->prefill;
    r->prefill = NULL;
    int n_choices = r->n > 1 ? r->n : 1;
    if (!(g->ch = calloc((size_t)n_choices, sizeof *g->ch))) return DSI_ENOMEM;
    g->n_choices = n_choices;
    for (int i = 0; i < n_choices; i++) {
        struct dsi__choice *c = &g->ch[i];
        c->g = g;
        c->index = i;
        /* a grammar's JSON never closes </think>: with one, everything is the answer */
        dsi__textgen_init(&c->tg, (const char *const *)g->stops, g->n_stops, g->chat && s->reasoning && !r->grammar);
        dsi__toolscan_init(&c->scan, g->tool_syn);
        if (dsi_tok_stream_create(s->tok, true, &c->ts)) return DSI_ENOMEM;
    }
    return 0;
}

int dsi__gen_submit(struct dsi__gen *g, struct dsi__req *r, const int32_t *ids, int n_ids, int max_tokens,
                    struct dsi__api_error *e) {
    struct dsi_server *s = g->s;
    g->chat = r->kind == DSI__REQ_CHAT;
    g->stream = r->stream;
    g->include_usage = r->stream && r->include_usage;
    g->logprobs = r->sampling.logprobs;
    g->top_logprobs = r->sampling.top_logprobs;
    uint64_t n = atomic_fetch_add(&s->next_id, 1);
    snprintf(g->id, sizeof g->id, "%s%016" PRIx64 "%08x", g->chat ? "chatcmpl-" : "cmpl-", n,
             (unsigned)(s->created & 0xffffffff));
    for (int i = 0; i < r->n_stops; i++) {
        if (!(g->stops[i] = strdup(r->stops[i]))) return dsi__api_error_set(e, 500, NULL, NULL, "out of memory");
        g->n_stops++;
    }
    int rc = choices_init(g, r);
    if (rc) return dsi__api_error_set(e, 500, NULL, NULL, "out of memory");
    int n_choices = g->n_choices;
#ifdef DSI_TEST_HOOKS
    const char *hook = getenv("DSI_TEST_FAIL_TOKEN");
    g->fail_token = hook ? atoi(hook) : 0;
    if (g->fail_token > 0) dsi_log(DSI_LOG_WARN, "server", "test hook: %s fails at token %d", g->id, g->fail_token);
#endif

    struct dsi_request_params p = {0};
    p.prompt = ids;
    p.n_prompt = n_ids;
    p.max_tokens = max_tokens;
    p.sampling = r->sampling;
    p.n = n_choices; /* choice i samples with seed + i and maps choice 0's prompt blocks */
    memcpy(p.cache_ns, g->cache_ns, sizeof p.cache_ns);
    p.tenant = g->tenant;
    p.weight = g->weight;
    if (!r->seed_set) {
        /* Without a seed each request samples differently (OpenAI's behaviour). */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        p.sampling.seed = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ (n * 0x9E3779B97F4A7C15ull);
    }
    memcpy(p.stop_ids, s->stop_ids, sizeof p.stop_ids);
    p.n_stop_ids = r->ignore_eos ? 0 : s->n_stop_ids;
    if (r->grammar) {
        const struct dsi_token_trie *tr = server_trie(s);
        if (!tr) return dsi__api_error_set(e, 500, NULL, NULL, "out of memory");
        g->grammar = r->grammar;
        r->grammar = NULL;
        p.grammar = g->grammar;
        p.grammar_trie = tr;
    }
    if (s->cfg->request_timeout_ms > 0) {
        p.deadline_ms = dsi_now_ms() + s->cfg->request_timeout_ms;
    }
    /* The role chunks go out at once so the client sees headers and the id. */
    for (int i = 0; g->stream && i < n_choices; i++)
        if (dsi__answer_role_chunk(&g->ch[i])) return dsi__api_error_set(e, 500, NULL, NULL, "out of memory");
    pthread_mutex_lock(&g->mu);
    g->refs++; /* the engine's, released by its final event */
    g->engine_ref = true;
    pthread_mutex_unlock(&g->mu);
    char *err = NULL;
    uint64_t id = 0;
    pthread_rwlock_rdlock(&s->eng_lock);
    rc = s->eng ? dsi_engine_submit(s->eng, &p, engine_cb, g, &id, &err) : DSI_ESTATE;
    bool dead = rc == DSI_ESTATE && s->eng && dsi_engine_dead(s->eng);
    pthread_rwlock_unlock(&s->eng_lock);
    if (rc) {
        pthread_mutex_lock(&g->mu);
        g->refs--;
        g->engine_ref = false;
        pthread_mutex_unlock(&g->mu);
        int st = 500;
        const char *code = NULL;
        if (rc == DSI_EFULL) st = 503, code = "queue_full";
        else if (rc == DSI_ESTATE) st = 503, code = dead ? "backend_failed" : "draining";
        /* ERANGE is the only "does not fit" answer; an EINVAL names a bad value
         * (request.c checks sampling with the same function first). */
        else if (rc == DSI_ERANGE) st = 400, code = "context_length_exceeded";
        else if (rc == DSI_EINVAL) st = 400, code = "invalid_value";
        dsi__api_error_set(e, st, NULL, code, "%s", st == 503 && rc == DSI_EFULL ? "the server is busy; retry later"
                                                     : dead ? "the model backend failed on this server; retry on another one"
                                                     : st == 503 ? "the server is shutting down"
                                                     : err ? err : dsi_strerror(rc));
        free(err);
        return st;
    }
    pthread_mutex_lock(&g->mu);
    g->engine_id = id;
    g->submitted = true;
    pthread_mutex_unlock(&g->mu);
    return 0;
}

/* Collects into ids the engine ids of the choices to cancel now (all: every
 * unfinished one; else those that asked) and marks them sent. Caller holds
 * g->mu. Returns how many. */
static int cancel_ids(struct dsi__gen *g, bool all, uint64_t ids[DSI_MAX_N]) {
    int n = 0;
    for (int i = 0; g->submitted && i < g->n_choices && n < DSI_MAX_N; i++) {
        struct dsi__choice *c = &g->ch[i];
        if (c->finished || c->cancel_sent || !(all || c->need_cancel)) continue;
        c->cancel_sent = true;
        ids[n++] = g->engine_id + (uint64_t)i;
    }
    return n;
}

void dsi__gen_cancel_if_needed(struct dsi__gen *g) {
    uint64_t ids[DSI_MAX_N];
    pthread_mutex_lock(&g->mu);
    int n = cancel_ids(g, false, ids);
    pthread_mutex_unlock(&g->mu);
    for (int i = 0; i < n; i++) dsi__eng_cancel(g->s, ids[i]);
}

void dsi__eng_cancel(struct dsi_server *s, uint64_t id) {
    pthread_rwlock_rdlock(&s->eng_lock);
    if (s->eng) dsi_engine_cancel(s->eng, id);
    pthread_rwlock_unlock(&s->eng_lock);
}

ssize_t dsi__gen_stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    struct dsi__gen *g = cls;
    (void)pos;
    dsi__gen_cancel_if_needed(g);
    pthread_mutex_lock(&g->mu);
    size_t avail = g->out.len - g->out_off;
    if (avail) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, g->out.p + g->out_off, n);
        g->out_off += n;
        if (g->out_off == g->out.len) g->out.len = g->out_off = 0;
        account(g);
        pthread_mutex_unlock(&g->mu);
        return (ssize_t)n;
    }
    if (g->tail_off < g->tail_len) {
        size_t n = g->tail_len - g->tail_off < max ? g->tail_len - g->tail_off : max;
        memcpy(buf, g->tail + g->tail_off, n);
        g->tail_off += n;
        pthread_mutex_unlock(&g->mu);
        return (ssize_t)n;
    }
    if (g->finished || g->failed) {
        pthread_mutex_unlock(&g->mu);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    /* Nothing yet: park the connection; the engine callback resumes it. */
    g->suspended = true;
    MHD_suspend_connection(g->conn);
    pthread_mutex_unlock(&g->mu);
    return 0;
}

char *dsi__gen_final_json(struct dsi__gen *g, int *status) {
    struct dsi__sbuf b = {0};
    pthread_mutex_lock(&g->mu);
    if (g->failed) {
        /* gen_fail's error: timeouts and shutdown are 503 like a full queue, ours 500 */
        struct dsi__api_error e = g->fail;
        pthread_mutex_unlock(&g->mu);
        *status = e.status;
        return dsi__api_error_json(&e);
    }
    int rc = dsi__answer_final(g, &b);
    pthread_mutex_unlock(&g->mu);
    if (rc) {
        dsi__sbuf_free(&b);
        *status = 500;
        return NULL;
    }
    *status = 200;
    return b.p;
}

void dsi__gen_conn_done(struct dsi__gen *g) {
    uint64_t ids[DSI_MAX_N];
    pthread_mutex_lock(&g->mu);
    g->conn_gone = true;
    g->conn = NULL;
    int n = cancel_ids(g, true, ids);
    pthread_mutex_unlock(&g->mu);
    if (n) dsi_log(DSI_LOG_INFO, "server", "request %s: client gone, cancelling", g->id);
    for (int i = 0; i < n; i++) dsi__eng_cancel(g->s, ids[i]);
}

void dsi__gen_abort_all(struct dsi_server *s) {
    /* Called after the engine is destroyed: no callback runs any more. Requests
     * it never finished are ended here and their engine refs dropped. */
    struct dsi__gen *orphans[256];
    int n_orphans;
    do {
        n_orphans = 0;
        pthread_mutex_lock(&s->mu);
        for (struct dsi__gen *g = s->gens; g; g = g->next) {
            pthread_mutex_lock(&g->mu);
            if (!g->finished && g->submitted) {
                g->finished = true;
                for (int i = 0; i < g->n_choices; i++) {
                    struct dsi__choice *c = &g->ch[i];
                    if (!c->finished) c->finished = true, c->finish = DSI_FINISH_ERROR, c->error = DSI_ECANCELED;
                }
                gen_fail(g, 503, "shutting_down", false, "generation failed: %s", dsi_strerror(DSI_ECANCELED));
            }
            struct MHD_Connection *c = g->suspended && !g->conn_gone ? g->conn : NULL;
            g->suspended = false;
            if (g->engine_ref && n_orphans < 256) {
                g->engine_ref = false;
                orphans[n_orphans++] = g;
            }
            pthread_mutex_unlock(&g->mu);
            if (c) MHD_resume_connection(c);
        }
        pthread_mutex_unlock(&s->mu);
        for (int i = 0; i < n_orphans; i++) dsi__gen_release(orphans[i]);
    } while (n_orphans == 256);
}
