/*
 * gen.c: one generation request between a connection and the engine.
 *
 * The engine callback (scheduler thread, must not block) decodes each token
 * incrementally, runs the reasoning/stop-string filter and appends either SSE
 * chunks (stream) or answer text (non-stream) under the gen's mutex, then
 * resumes the suspended connection. The connection side (MHD thread) sends what
 * is buffered and suspends again when nothing is: an idle stream costs no CPU.
 *
 * Failures once the engine has the request (out of memory, a decoder error, an
 * engine error, a client that does not read: more than stream_buffer_bytes
 * unsent) all go through gen_fail: the sequence is cancelled, a stream ends with
 * an OpenAI error event and [DONE] (its status line is gone), a non-streaming
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
static int emit(void *user, enum dsi__channel ch, const char *s, size_t n);
static int chunk_begin(struct dsi__gen *g, struct dsi__sbuf *b);
static int append_usage(struct dsi__gen *g, struct dsi__sbuf *b);

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
    if (g->slot_key[0]) dsi__slots_release(s, g->slot_key);
    dsi_tok_stream_destroy(g->ts);
    dsi__textgen_free(&g->tg);
    dsi__toolscan_free(&g->scan);
    free(g->prefill);
    for (int i = 0; i < g->n_stops; i++) free(g->stops[i]);
    dsi_grammar_destroy(g->grammar);
    dsi__sbuf_free(&g->calls);
    dsi__sbuf_free(&g->out);
    dsi__sbuf_free(&g->content);
    dsi__sbuf_free(&g->reasoning);
    dsi__sbuf_free(&g->lp);
    dsi__sbuf_free(&g->lp_tokens);
    dsi__sbuf_free(&g->lp_values);
    dsi__sbuf_free(&g->lp_tops);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

static const char *finish_name(const struct dsi__gen *g) {
    if (g->n_calls > 0 && (g->stop_hit || g->finish == DSI_FINISH_STOP)) return "tool_calls";
    if (g->stop_hit) return "stop";
    switch (g->finish) {
    case DSI_FINISH_LENGTH: return "length";
    case DSI_FINISH_STOP: return "stop";
    case DSI_FINISH_CANCELLED: return "stop";
    default: return "stop";
    }
}

/* The prefix of every chunk/response object up to and including "choices":[ */
static int obj_head(struct dsi__gen *g, struct dsi__sbuf *b, bool chunk) {
    const char *obj = g->chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
    int rc = dsi__sbuf_printf(b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":", g->id, obj,
                             (long)time(NULL));
    if (!rc) rc = dsi__sbuf_json_str(b, g->s->model_name, strlen(g->s->model_name));
    if (!rc) rc = dsi__sbuf_printf(b, ",\"system_fingerprint\":\"dsinfer-" DSI_VERSION "\",\"choices\":[");
    return rc;
}

static int chunk_begin(struct dsi__gen *g, struct dsi__sbuf *b) {
    int rc = dsi__sbuf_printf(b, "data: ");
    if (!rc) rc = obj_head(g, b, true);
    return rc;
}

/* Closes a chunk: ],"usage":null when include_usage (OpenAI sends it on every chunk). */
static int chunk_end(struct dsi__gen *g, struct dsi__sbuf *b) {
    return dsi__sbuf_printf(b, "]%s}\n\n", g->include_usage ? ",\"usage\":null" : "");
}

static int append_logprobs_field(struct dsi__gen *g, struct dsi__sbuf *b) {
    if (!g->logprobs || g->n_lp == 0) return dsi__sbuf_printf(b, "\"logprobs\":null");
    int rc;
    if (g->chat) {
        rc = dsi__sbuf_printf(b, "\"logprobs\":{\"content\":[");
        if (!rc) rc = dsi__sbuf_append(b, g->lp.p, g->lp.len);
        if (!rc) rc = dsi__sbuf_printf(b, "]}");
    } else {
        rc = dsi__sbuf_printf(b, "\"logprobs\":{\"tokens\":[");
        if (!rc) rc = dsi__sbuf_append(b, g->lp_tokens.p, g->lp_tokens.len);
        if (!rc) rc = dsi__sbuf_printf(b, "],\"token_logprobs\":[");
        if (!rc) rc = dsi__sbuf_append(b, g->lp_values.p, g->lp_values.len);
        if (!rc) rc = dsi__sbuf_printf(b, "],\"top_logprobs\":[");
        if (!rc) rc = dsi__sbuf_append(b, g->lp_tops.p, g->lp_tops.len);
        if (!rc) rc = dsi__sbuf_printf(b, "]}");
    }
    g->lp.len = g->lp_tokens.len = g->lp_values.len = g->lp_tops.len = 0;
    g->n_lp = 0;
    return rc;
}

/* One streamed delta: chat {"delta":{"content"|"reasoning_content":...}} or
 * completions {"text":...}. */
static int stream_delta(struct dsi__gen *g, enum dsi__channel ch, const char *s, size_t n, const char *finish) {
    struct dsi__sbuf *b = &g->out;
    int rc = chunk_begin(g, b);
    if (!rc && g->chat) {
        rc = dsi__sbuf_printf(b, "{\"index\":0,\"delta\":{");
        if (!rc && s) {
            rc = dsi__sbuf_printf(b, "\"%s\":", ch == DSI__CH_REASONING ? "reasoning_content" : "content");
            if (!rc) rc = dsi__sbuf_json_str(b, s, n);
        }
        if (!rc) rc = dsi__sbuf_printf(b, "},");
    } else if (!rc) {
        rc = dsi__sbuf_printf(b, "{\"index\":0,\"text\":");
        if (!rc) rc = dsi__sbuf_json_str(b, s ? s : "", s ? n : 0);
        if (!rc) rc = dsi__sbuf_printf(b, ",");
    }
    if (!rc) rc = append_logprobs_field(g, b);
    if (!rc) rc = finish ? dsi__sbuf_printf(b, ",\"finish_reason\":\"%s\"}", finish) : dsi__sbuf_printf(b, ",\"finish_reason\":null}");
    if (!rc) rc = chunk_end(g, b);
    return rc;
}

/* Text the tool scanner decided is content. */
static int scan_content(void *user, const char *s, size_t n) {
    struct dsi__gen *g = user;
    if (g->stream) return stream_delta(g, DSI__CH_CONTENT, s, n, NULL);
    return dsi__sbuf_append(&g->content, s, n);
}

/* A call the scanner found: streamed at once as OpenAI does (a chunk with the id,
 * type and name, then one with the arguments), or added to the answer's list. */
static int scan_call(void *user, const char *name, const char *arguments) {
    struct dsi__gen *g = user;
    int i = g->n_calls, rc;
    if (!g->stream) {
        rc = i ? 0 : dsi__sbuf_printf(&g->calls, "[");
        if (!rc) rc = dsi__srv_tool_call_json(&g->calls, g->id, i, false, name, arguments);
        if (!rc) g->n_calls++;
        return rc;
    }
    struct dsi__sbuf *b = &g->out;
    rc = chunk_begin(g, b);
    if (!rc) rc = dsi__sbuf_printf(b, "{\"index\":0,\"delta\":{\"tool_calls\":[");
    if (!rc) rc = dsi__srv_tool_call_json(b, g->id, i, true, name, "");
    if (!rc) rc = dsi__sbuf_printf(b, "]},\"logprobs\":null,\"finish_reason\":null}");
    if (!rc) rc = chunk_end(g, b);
    if (!rc) rc = chunk_begin(g, b);
    if (!rc) rc = dsi__sbuf_printf(b, "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":%d,\"function\":{\"arguments\":", i);
    if (!rc) rc = dsi__sbuf_json_str(b, arguments, strlen(arguments));
    if (!rc) rc = dsi__sbuf_printf(b, "}}]},\"logprobs\":null,\"finish_reason\":null}");
    if (!rc) rc = chunk_end(g, b);
    if (!rc) g->n_calls++;
    return rc;
}

static int emit(void *user, enum dsi__channel ch, const char *s, size_t n) {
    struct dsi__gen *g = user;
    if (g->tool_mode == 1 && ch == DSI__CH_CONTENT) { /* auto: held only where a call may begin */
        struct dsi__toolscan_cb cb = {scan_content, scan_call, g};
        int rc = dsi__toolscan_push(&g->scan, s, n, &cb);
        return rc == -1 ? DSI_ENOMEM : rc;
    }
    /* forced calls: the answer is held until its JSON is whole */
    if (g->stream && g->tool_mode != 2) return stream_delta(g, ch, s, n, NULL);
    return dsi__sbuf_append(ch == DSI__CH_REASONING ? &g->reasoning : &g->content, s, n);
}

/* Tools at the end. auto: what the scanner held goes out. forced: the held
 * answer becomes tool_calls or stays text; a stream gets it now as deltas. */
static int finish_tools(struct dsi__gen *g) {
    if (g->tool_mode == 1) {
        struct dsi__toolscan_cb cb = {scan_content, scan_call, g};
        int rc = dsi__toolscan_finish(&g->scan, &cb);
        if (!rc && g->n_calls && !g->stream) rc = dsi__sbuf_printf(&g->calls, "]");
        return rc == -1 ? DSI_ENOMEM : rc;
    }
    size_t content_len = g->content.len;
    int rc;
    if (g->prefill) { /* native: the prefilled opening, the answer, the closing marker */
        struct dsi__sbuf t = {0};
        const char *close = g->scan.syn == DSI__TOOLS_DEEPSEEK ? "<｜tool▁call▁end｜>" : "\n</tool_call>";
        rc = dsi__sbuf_printf(&t, "%s", g->prefill);
        if (!rc && g->content.len) rc = dsi__sbuf_append(&t, g->content.p, g->content.len);
        if (!rc) rc = dsi__sbuf_printf(&t, "%s", close);
        if (!rc) rc = dsi__srv_tool_calls_extract(t.p, t.len, false, g->scan.syn, g->id, g->stream, &g->calls,
                                                  &g->n_calls, &content_len);
        dsi__sbuf_free(&t);
        content_len = g->n_calls ? 0 : g->content.len; /* not a call (cut off): the answer is text */
    } else {
        rc = dsi__srv_tool_calls_extract(g->content.p ? g->content.p : "", g->content.len, true, g->scan.syn, g->id,
                                         g->stream, &g->calls, &g->n_calls, &content_len);
    }
    if (rc) return DSI_ENOMEM;
    if (g->n_calls) g->content.len = content_len;
    if (!g->stream) return 0;
    if (g->reasoning.len && (rc = stream_delta(g, DSI__CH_REASONING, g->reasoning.p, g->reasoning.len, NULL)))
        return rc;
    if (g->content.len && (rc = stream_delta(g, DSI__CH_CONTENT, g->content.p, g->content.len, NULL))) return rc;
    if (!g->n_calls) return 0;
    struct dsi__sbuf *b = &g->out;
    rc = chunk_begin(g, b);
    if (!rc) rc = dsi__sbuf_printf(b, "{\"index\":0,\"delta\":{\"tool_calls\":");
    if (!rc) rc = dsi__sbuf_append(b, g->calls.p, g->calls.len);
    if (!rc) rc = dsi__sbuf_printf(b, "},\"logprobs\":null,\"finish_reason\":null}");
    if (!rc) rc = chunk_end(g, b);
    return rc;
}

/* OpenAI's usage, with its prompt_tokens_details.cached_tokens and DeepSeek's
 * prompt_cache_hit_tokens / prompt_cache_miss_tokens (hit + miss = prompt). */
static int append_usage(struct dsi__gen *g, struct dsi__sbuf *b) {
    int hit = g->n_cached < g->n_prompt ? g->n_cached : g->n_prompt;
    return dsi__sbuf_printf(b,
                            "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d,"
                            "\"prompt_tokens_details\":{\"cached_tokens\":%d},\"prompt_cache_hit_tokens\":%d,"
                            "\"prompt_cache_miss_tokens\":%d}",
                            g->n_prompt, g->n_completion, g->n_prompt + g->n_completion, hit, hit,
                            g->n_prompt - hit);
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

/* Records the logprobs of one token (chat: OpenAI "content" entries; legacy
 * completions: parallel arrays). */
static int add_logprobs(struct dsi__gen *g, const struct dsi_token_event *ev) {
    struct dsi_tokenizer *t = g->s->tok;
    char *txt = NULL;
    size_t len = 0;
    if (dsi_tok_decode(t, &ev->token, 1, false, &txt, &len, NULL)) return 0; /* no text: skip entry */
    int rc = 0;
    if (g->chat) {
        struct dsi__sbuf *b = &g->lp;
        if (g->n_lp) rc = dsi__sbuf_append(b, ",", 1);
        if (!rc) rc = dsi__sbuf_printf(b, "{\"token\":");
        if (!rc) rc = dsi__sbuf_json_str(b, txt, len);
        if (!rc) rc = dsi__sbuf_printf(b, ",\"logprob\":%.6g,\"bytes\":[", (double)ev->logprob);
        for (size_t i = 0; !rc && i < len; i++) rc = dsi__sbuf_printf(b, "%s%u", i ? "," : "", (unsigned char)txt[i]);
        if (!rc) rc = dsi__sbuf_printf(b, "],\"top_logprobs\":[");
        for (int k = 0; !rc && k < ev->n_top && k < g->top_logprobs; k++) {
            char *tt = NULL;
            size_t tl = 0;
            if (dsi_tok_decode(t, &ev->top_ids[k], 1, false, &tt, &tl, NULL)) continue;
            rc = dsi__sbuf_printf(b, "%s{\"token\":", k ? "," : "");
            if (!rc) rc = dsi__sbuf_json_str(b, tt, tl);
            if (!rc) rc = dsi__sbuf_printf(b, ",\"logprob\":%.6g,\"bytes\":[", (double)ev->top_logprobs[k]);
            for (size_t i = 0; !rc && i < tl; i++) rc = dsi__sbuf_printf(b, "%s%u", i ? "," : "", (unsigned char)tt[i]);
            if (!rc) rc = dsi__sbuf_printf(b, "]}");
            free(tt);
        }
        if (!rc) rc = dsi__sbuf_printf(b, "]}");
    } else {
        const char *sep = g->n_lp ? "," : "";
        rc = dsi__sbuf_printf(&g->lp_tokens, "%s", sep);
        if (!rc) rc = dsi__sbuf_json_str(&g->lp_tokens, txt, len);
        if (!rc) rc = dsi__sbuf_printf(&g->lp_values, "%s%.6g", sep, (double)ev->logprob);
        if (!rc) rc = dsi__sbuf_printf(&g->lp_tops, "%s{", sep);
        for (int k = 0; !rc && k < ev->n_top && k < g->top_logprobs; k++) {
            char *tt = NULL;
            size_t tl = 0;
            if (dsi_tok_decode(t, &ev->top_ids[k], 1, false, &tt, &tl, NULL)) continue;
            rc = dsi__sbuf_printf(&g->lp_tops, "%s", k ? "," : "");
            if (!rc) rc = dsi__sbuf_json_str(&g->lp_tops, tt, tl);
            if (!rc) rc = dsi__sbuf_printf(&g->lp_tops, ":%.6g", (double)ev->top_logprobs[k]);
            free(tt);
        }
        if (!rc) rc = dsi__sbuf_printf(&g->lp_tops, "}");
    }
    free(txt);
    if (!rc) g->n_lp++;
    return rc;
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
    return g->out.len - g->out_off + g->lp.len + g->lp_tokens.len + g->lp_values.len + g->lp_tops.len +
           g->content.len + g->reasoning.len + g->scan.hold.len;
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
    dsi__sbuf_free(&g->lp);
    dsi__sbuf_free(&g->lp_tokens);
    dsi__sbuf_free(&g->lp_values);
    dsi__sbuf_free(&g->lp_tops);
    dsi__sbuf_free(&g->content);
    dsi__sbuf_free(&g->reasoning);
    g->n_lp = 0;
}

/* The one way a generation fails once the engine has accepted it (under g->mu):
 * later tokens are dropped, the sequence is cancelled (need_cancel; sent outside
 * the lock), and the client is told. A stream keeps the events already built
 * (unless drop: a client that does not read them) and ends with an error event
 * and [DONE] from g->tail, which needs no allocation; a non-streaming answer
 * gets g->fail as its body (dsi__gen_final_json). status picks the error type:
 * 500 for our failures, 503 for timeouts and shutdown. */
static void gen_fail(struct dsi__gen *g, int status, const char *code, bool drop, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void gen_fail(struct dsi__gen *g, int status, const char *code, bool drop, const char *fmt, ...) {
    if (g->failed) return;
    g->failed = true;
    g->need_cancel = !g->finished;
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

/* A token's text and logprobs into the answer (under g->mu). 0 or a DSI_E*. */
static int add_token(struct dsi__gen *g, const struct dsi_token_event *ev) {
    int rc = g->logprobs ? add_logprobs(g, ev) : 0;
    /* test builds: DSI_TEST_FAIL_TOKEN=N fails the Nth token as out of memory would */
    if (++g->n_tokens_seen == g->fail_token) rc = DSI_ENOMEM;
    char *txt = NULL;
    size_t len = 0;
    if (!rc) rc = dsi_tok_stream_push(g->ts, ev->token, &txt, &len);
    if (!rc && txt && len) {
        rc = dsi__textgen_push(&g->tg, txt, len, emit, g);
        if (rc == 1) {
            g->stop_hit = true;
            if (!ev->finished) g->need_cancel = true;
            rc = 0;
        }
    }
    free(txt);
    return rc;
}

/* The final event: flush held text, tool calls, the last chunks (under g->mu). */
static int finish_answer(struct dsi__gen *g) {
    int rc = 0;
    if (!g->stop_hit) {
        char *txt = NULL;
        size_t len = 0;
        if (dsi_tok_stream_flush(g->ts, &txt, &len) == 0 && txt && len) rc = dsi__textgen_push(&g->tg, txt, len, emit, g);
        free(txt);
        if (rc == 1) g->stop_hit = true, rc = 0;
        if (!rc) rc = dsi__textgen_finish(&g->tg, emit, g);
    }
    if (!rc && g->tool_mode) rc = finish_tools(g);
    if (g->stream && !rc) {
        rc = stream_delta(g, DSI__CH_CONTENT, NULL, 0, finish_name(g));
        if (!rc && g->include_usage) {
            rc = chunk_begin(g, &g->out);
            if (!rc) rc = dsi__sbuf_printf(&g->out, "],");
            if (!rc) rc = append_usage(g, &g->out);
            if (!rc) rc = dsi__sbuf_printf(&g->out, "}\n\n");
        }
        if (!rc) rc = dsi__sbuf_printf(&g->out, "data: [DONE]\n\n");
    }
    return rc;
}

/* An engine error on the final event, or a cancel nobody here asked for (the
 * engine stopping at shutdown). */
static void engine_failed(struct dsi__gen *g, int err) {
    bool unavailable = err == DSI_ETIMEDOUT || err == DSI_ECANCELED;
    gen_fail(g, unavailable ? 503 : 500, err == DSI_ETIMEDOUT ? "timeout" : unavailable ? "shutting_down" : NULL,
             false, "generation failed: %s", dsi_strerror(err));
}

static void engine_cb(void *user, const struct dsi_token_event *ev) {
    struct dsi__gen *g = user;
    struct dsi_server *s = g->s;
    double now = dsi_now_s();
    pthread_mutex_lock(&g->mu);
    int rc = 0;
    /* Counts ride on every event, so a client that leaves early is charged for
     * what was generated until then. */
    g->n_prompt = ev->n_prompt_tokens;
    g->n_completion = ev->n_completion_tokens;
    g->n_cached = ev->n_cached_tokens;
    if (!g->failed && ev->token >= 0 && !g->stop_hit && !(ev->finished && is_stop_id(s, ev->token))) {
        if (!g->got_token) dsi__smetrics_ttft(s->metrics, now - g->t_start);
        else dsi__smetrics_itl(s->metrics, now - g->t_last);
        g->got_token = true;
        g->t_last = now;
        rc = add_token(g, ev);
    }
    if (ev->finished) {
        g->finished = true;
        g->finish = ev->finish;
        g->error = ev->error;
        /* after a stop string the answer is whole, whatever ended the sequence */
        bool unasked_cancel = ev->finish == DSI_FINISH_CANCELLED && !g->cancel_sent && !g->conn_gone;
        if (!g->failed && !rc && !g->stop_hit && ev->finish == DSI_FINISH_ERROR) engine_failed(g, ev->error);
        else if (!g->failed && !rc && !g->stop_hit && unasked_cancel) engine_failed(g, DSI_ECANCELED);
        else if (!g->failed && !rc) rc = finish_answer(g);
    }
    if (rc) gen_fail(g, 500, NULL, false, "%s while building the answer", dsi_strerror(rc));
    check_backpressure(g);
    account(g);
    struct MHD_Connection *resume = NULL;
    if (g->suspended && !g->conn_gone) {
        g->suspended = false;
        resume = g->conn;
    }
    bool last = ev->finished && g->engine_ref;
    if (ev->finished) g->engine_ref = false;
    pthread_mutex_unlock(&g->mu);
    if (resume) MHD_resume_connection(resume);
    /* A stream whose client does not read never runs its reader: cancel from here. */
    if (!ev->finished) dsi__gen_cancel_if_needed(g);
    if (last) dsi__gen_release(g);
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
    /* a grammar's JSON never closes </think>: with one, everything is the answer */
    dsi__textgen_init(&g->tg, (const char *const *)g->stops, g->n_stops, g->chat && s->reasoning && !r->grammar);
    if (dsi_tok_stream_create(s->tok, true, &g->ts)) return dsi__api_error_set(e, 500, NULL, NULL, "out of memory");
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
    g->tool_mode = r->tool_choice == DSI__TOOL_CHOICE_REQUIRED || r->tool_choice == DSI__TOOL_CHOICE_NAMED ? 2
                   : r->tools_json && r->tool_choice == DSI__TOOL_CHOICE_AUTO                            ? 1
                                                                                                         : 0;
    /* The calls come in the syntax the prompt showed: V3's tokens there, else
     * <tool_call> blocks (ChatML's native form and the prompt form alike). */
    enum dsi_chat_format f = s->chat_format == DSI_CHAT_AUTO ? dsi_tok_chat_format(s->tok) : s->chat_format;
    dsi__toolscan_init(&g->scan, f == DSI_CHAT_DEEPSEEK_V3 ? DSI__TOOLS_DEEPSEEK : DSI__TOOLS_TAGS);
    g->prefill = r->prefill;
    r->prefill = NULL;
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
    if (g->stream) {
        /* The role chunk goes out at once so the client sees headers and the id. */
        int rc = chunk_begin(g, &g->out);
        if (!rc && g->chat) rc = dsi__sbuf_printf(&g->out, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                                                          "\"logprobs\":null,\"finish_reason\":null}");
        if (!rc && !g->chat) rc = dsi__sbuf_printf(&g->out, "{\"index\":0,\"text\":\"\",\"logprobs\":null,\"finish_reason\":null}");
        if (!rc) rc = chunk_end(g, &g->out);
        if (rc) return dsi__api_error_set(e, 500, NULL, NULL, "out of memory");
    }
    pthread_mutex_lock(&g->mu);
    g->refs++; /* the engine's, released by its final event */
    g->engine_ref = true;
    pthread_mutex_unlock(&g->mu);
    char *err = NULL;
    uint64_t id = 0;
    pthread_rwlock_rdlock(&s->eng_lock);
    int rc = s->eng ? dsi_engine_submit(s->eng, &p, engine_cb, g, &id, &err) : DSI_ESTATE;
    pthread_rwlock_unlock(&s->eng_lock);
    if (rc) {
        pthread_mutex_lock(&g->mu);
        g->refs--;
        g->engine_ref = false;
        pthread_mutex_unlock(&g->mu);
        int st = 500;
        const char *code = NULL;
        if (rc == DSI_EFULL) st = 503, code = "queue_full";
        else if (rc == DSI_ESTATE) st = 503, code = "draining";
        /* ERANGE is the only "does not fit" answer; an EINVAL names a bad value
         * (request.c checks sampling with the same function first). */
        else if (rc == DSI_ERANGE) st = 400, code = "context_length_exceeded";
        else if (rc == DSI_EINVAL) st = 400, code = "invalid_value";
        dsi__api_error_set(e, st, NULL, code, "%s", st == 503 && rc == DSI_EFULL ? "the server is busy; retry later"
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

void dsi__gen_cancel_if_needed(struct dsi__gen *g) {
    pthread_mutex_lock(&g->mu);
    bool go = g->need_cancel && !g->cancel_sent && g->submitted && !g->finished;
    if (go) g->cancel_sent = true;
    uint64_t id = g->engine_id;
    pthread_mutex_unlock(&g->mu);
    if (go) dsi__eng_cancel(g->s, id);
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
    int rc = obj_head(g, &b, false);
    if (!rc && g->chat) {
        rc = dsi__sbuf_printf(&b, "{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
        if (!rc && g->n_calls && !g->content.len) rc = dsi__sbuf_printf(&b, "null");
        else if (!rc) rc = dsi__sbuf_json_str(&b, g->content.p ? g->content.p : "", g->content.len);
        if (!rc && g->n_calls) {
            rc = dsi__sbuf_printf(&b, ",\"tool_calls\":");
            if (!rc) rc = dsi__sbuf_append(&b, g->calls.p, g->calls.len);
        }
        if (!rc && g->s->reasoning) {
            rc = dsi__sbuf_printf(&b, ",\"reasoning_content\":");
            if (!rc) rc = g->reasoning.len ? dsi__sbuf_json_str(&b, g->reasoning.p, g->reasoning.len)
                                           : dsi__sbuf_printf(&b, "null");
        }
        if (!rc) rc = dsi__sbuf_printf(&b, "},");
    } else if (!rc) {
        rc = dsi__sbuf_printf(&b, "{\"index\":0,\"text\":");
        if (!rc) rc = dsi__sbuf_json_str(&b, g->content.p ? g->content.p : "", g->content.len);
        if (!rc) rc = dsi__sbuf_printf(&b, ",");
    }
    if (!rc) rc = append_logprobs_field(g, &b);
    if (!rc) rc = dsi__sbuf_printf(&b, ",\"finish_reason\":\"%s\"}],", finish_name(g));
    if (!rc) rc = append_usage(g, &b);
    if (!rc) rc = dsi__sbuf_printf(&b, "}\n");
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
    pthread_mutex_lock(&g->mu);
    g->conn_gone = true;
    g->conn = NULL;
    bool go = g->submitted && !g->finished && !g->cancel_sent;
    if (go) g->cancel_sent = true;
    uint64_t id = g->engine_id;
    pthread_mutex_unlock(&g->mu);
    if (go) {
        dsi_log(DSI_LOG_INFO, "server", "request %s: client gone, cancelling", g->id);
        dsi__eng_cancel(g->s, id);
    }
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
                g->finish = DSI_FINISH_ERROR;
                g->error = DSI_ECANCELED;
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
