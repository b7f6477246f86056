/*
 * answer.c: the JSON a generation answers with, one choice at a time: streamed
 * chunks (chat deltas or completions text, each naming its choice's index),
 * logprobs, tool calls, usage, and the non-streaming response object.
 *
 * Everything here runs under the gen's mutex (gen.c holds it) and only appends
 * to the gen's or the choice's buffers; 0 or DSI_ENOMEM. A choice's pending
 * logprob entries go out with its next chunk, so a chunk never mixes choices.
 * Each choice has its own tool scanner (tool_choice auto): its calls stream as
 * they close, with ids unique across the choices.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dsinfer/err.h"
#include "srv.h"

static int obj_head(struct dsi__gen *g, struct dsi__sbuf *b, bool chunk);
static int append_logprobs_field(struct dsi__choice *c, struct dsi__sbuf *b);
static int final_choice(struct dsi__choice *c, struct dsi__sbuf *b);

static const char *finish_name(const struct dsi__choice *c) {
    if (c->n_calls > 0 && (c->stop_hit || c->finish == DSI_FINISH_STOP)) return "tool_calls";
    if (c->stop_hit) return "stop";
    switch (c->finish) {
    case DSI_FINISH_LENGTH: return "length";
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

int dsi__answer_chunk_begin(struct dsi__gen *g, struct dsi__sbuf *b) {
    int rc = dsi__sbuf_printf(b, "data: ");
    if (!rc) rc = obj_head(g, b, true);
    return rc;
}

int dsi__answer_chunk_end(struct dsi__gen *g, struct dsi__sbuf *b) {
    return dsi__sbuf_printf(b, "]%s}\n\n", g->include_usage ? ",\"usage\":null" : "");
}

int dsi__answer_role_chunk(struct dsi__choice *c) {
    struct dsi__gen *g = c->g;
    int rc = dsi__answer_chunk_begin(g, &g->out);
    if (!rc && g->chat)
        rc = dsi__sbuf_printf(&g->out,
                              "{\"index\":%d,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                              "\"logprobs\":null,\"finish_reason\":null}",
                              c->index);
    if (!rc && !g->chat)
        rc = dsi__sbuf_printf(&g->out, "{\"index\":%d,\"text\":\"\",\"logprobs\":null,\"finish_reason\":null}", c->index);
    if (!rc) rc = dsi__answer_chunk_end(g, &g->out);
    return rc;
}

static int append_logprobs_field(struct dsi__choice *c, struct dsi__sbuf *b) {
    if (!c->g->logprobs || c->n_lp == 0) return dsi__sbuf_printf(b, "\"logprobs\":null");
    int rc;
    if (c->g->chat) {
        rc = dsi__sbuf_printf(b, "\"logprobs\":{\"content\":[");
        if (!rc) rc = dsi__sbuf_append(b, c->lp.p, c->lp.len);
        if (!rc) rc = dsi__sbuf_printf(b, "]}");
    } else {
        rc = dsi__sbuf_printf(b, "\"logprobs\":{\"tokens\":[");
        if (!rc) rc = dsi__sbuf_append(b, c->lp_tokens.p, c->lp_tokens.len);
        if (!rc) rc = dsi__sbuf_printf(b, "],\"token_logprobs\":[");
        if (!rc) rc = dsi__sbuf_append(b, c->lp_values.p, c->lp_values.len);
        if (!rc) rc = dsi__sbuf_printf(b, "],\"top_logprobs\":[");
        if (!rc) rc = dsi__sbuf_append(b, c->lp_tops.p, c->lp_tops.len);
        if (!rc) rc = dsi__sbuf_printf(b, "]}");
    }
    c->lp.len = c->lp_tokens.len = c->lp_values.len = c->lp_tops.len = 0;
    c->n_lp = 0;
    return rc;
}

int dsi__answer_delta(struct dsi__choice *c, enum dsi__channel ch, const char *s, size_t n, bool final) {
    struct dsi__gen *g = c->g;
    struct dsi__sbuf *b = &g->out;
    int rc = dsi__answer_chunk_begin(g, b);
    if (!rc && g->chat) {
        rc = dsi__sbuf_printf(b, "{\"index\":%d,\"delta\":{", c->index);
        if (!rc && s) {
            rc = dsi__sbuf_printf(b, "\"%s\":", ch == DSI__CH_REASONING ? "reasoning_content" : "content");
            if (!rc) rc = dsi__sbuf_json_str(b, s, n);
        }
        if (!rc) rc = dsi__sbuf_printf(b, "},");
    } else if (!rc) {
        rc = dsi__sbuf_printf(b, "{\"index\":%d,\"text\":", c->index);
        if (!rc) rc = dsi__sbuf_json_str(b, s ? s : "", s ? n : 0);
        if (!rc) rc = dsi__sbuf_printf(b, ",");
    }
    if (!rc) rc = append_logprobs_field(c, b);
    if (!rc)
        rc = final ? dsi__sbuf_printf(b, ",\"finish_reason\":\"%s\"}", finish_name(c))
                   : dsi__sbuf_printf(b, ",\"finish_reason\":null}");
    if (!rc) rc = dsi__answer_chunk_end(g, b);
    return rc;
}

/* Call ids stay unique across the choices of one answer: choice 0's calls are
 * call_<id>_<i>, choice k's call_<id>_<k>_<i>. */
static void call_prefix(const struct dsi__choice *c, char *out, size_t size) {
    if (c->index) snprintf(out, size, "%s_%d", c->g->id, c->index);
    else snprintf(out, size, "%s", c->g->id);
}

/* Text the tool scanner decided is content. */
static int scan_content(void *user, const char *s, size_t n) {
    struct dsi__choice *c = user;
    if (c->g->stream) return dsi__answer_delta(c, DSI__CH_CONTENT, s, n, false);
    return dsi__sbuf_append(&c->content, s, n);
}

/* A call the scanner found: streamed at once as OpenAI does (a chunk with the id,
 * type and name, then one with the arguments), or added to the answer's list. */
static int scan_call(void *user, const char *name, const char *arguments) {
    struct dsi__choice *c = user;
    struct dsi__gen *g = c->g;
    char prefix[64];
    call_prefix(c, prefix, sizeof prefix);
    int i = c->n_calls, rc;
    if (!g->stream) {
        rc = i ? 0 : dsi__sbuf_printf(&c->calls, "[");
        if (!rc) rc = dsi__srv_tool_call_json(&c->calls, prefix, i, i > 0, false, name, arguments);
        if (!rc) c->n_calls++;
        return rc;
    }
    struct dsi__sbuf *b = &g->out;
    rc = dsi__answer_chunk_begin(g, b);
    if (!rc) rc = dsi__sbuf_printf(b, "{\"index\":%d,\"delta\":{\"tool_calls\":[", c->index);
    /* each chunk's tool_calls array holds this one call, whatever its index */
    if (!rc) rc = dsi__srv_tool_call_json(b, prefix, i, false, true, name, "");
    if (!rc) rc = dsi__sbuf_printf(b, "]},\"logprobs\":null,\"finish_reason\":null}");
    if (!rc) rc = dsi__answer_chunk_end(g, b);
    if (!rc) rc = dsi__answer_chunk_begin(g, b);
    if (!rc)
        rc = dsi__sbuf_printf(b, "{\"index\":%d,\"delta\":{\"tool_calls\":[{\"index\":%d,\"function\":{\"arguments\":",
                              c->index, i);
    if (!rc) rc = dsi__sbuf_json_str(b, arguments, strlen(arguments));
    if (!rc) rc = dsi__sbuf_printf(b, "}}]},\"logprobs\":null,\"finish_reason\":null}");
    if (!rc) rc = dsi__answer_chunk_end(g, b);
    if (!rc) c->n_calls++;
    return rc;
}

int dsi__answer_emit(void *user, enum dsi__channel ch, const char *s, size_t n) {
    struct dsi__choice *c = user;
    struct dsi__gen *g = c->g;
    if (g->tool_mode == 1 && ch == DSI__CH_CONTENT) { /* auto: held only where a call may begin */
        struct dsi__toolscan_cb cb = {scan_content, scan_call, c};
        int rc = dsi__toolscan_push(&c->scan, s, n, &cb);
        return rc == -1 ? DSI_ENOMEM : rc;
    }
    /* forced calls: the answer is held until its JSON is whole */
    if (g->stream && g->tool_mode != 2) return dsi__answer_delta(c, ch, s, n, false);
    return dsi__sbuf_append(ch == DSI__CH_REASONING ? &c->reasoning : &c->content, s, n);
}

/* Forced calls: choice c's held answer (after the prefilled opening in a native
 * syntax) -> c->calls. 0 or -1 (memory). */
static int forced_calls(struct dsi__choice *c, const char *prefix, size_t *content_len) {
    struct dsi__gen *g = c->g;
    if (!g->prefill)
        return dsi__srv_tool_calls_extract(c->content.p ? c->content.p : "", c->content.len, true, g->tool_syn, prefix,
                                           g->stream, &c->calls, &c->n_calls, content_len);
    /* native: the prefilled opening, then the answer up to the end of its calls */
    struct dsi__sbuf t = {0};
    int rc = dsi__sbuf_printf(&t, "%s", g->prefill);
    if (!rc && c->content.len) rc = dsi__sbuf_append(&t, c->content.p, c->content.len);
    if (!rc && c->finish != DSI_FINISH_LENGTH) /* cut off before the end: all text */
        rc = dsi__srv_tool_calls_extract(t.p, t.len, false, g->tool_syn, prefix, g->stream, &c->calls, &c->n_calls,
                                         content_len);
    dsi__sbuf_free(&t);
    *content_len = c->n_calls ? 0 : c->content.len; /* not a call (cut off): the answer is text */
    return rc ? -1 : 0;
}

int dsi__answer_tools(struct dsi__choice *c) {
    struct dsi__gen *g = c->g;
    int rc;
    if (g->tool_mode == 1) { /* auto: what the scanner held goes out */
        struct dsi__toolscan_cb cb = {scan_content, scan_call, c};
        rc = dsi__toolscan_finish(&c->scan, &cb);
        if (!rc && c->n_calls && !g->stream) rc = dsi__sbuf_printf(&c->calls, "]");
        return rc == -1 ? DSI_ENOMEM : rc;
    }
    /* forced: the held answer becomes tool_calls or stays text; a stream gets it now */
    char prefix[64];
    call_prefix(c, prefix, sizeof prefix);
    size_t content_len = c->content.len;
    if (forced_calls(c, prefix, &content_len)) return DSI_ENOMEM;
    if (c->n_calls) c->content.len = content_len;
    if (!g->stream) return 0;
    if (c->reasoning.len && (rc = dsi__answer_delta(c, DSI__CH_REASONING, c->reasoning.p, c->reasoning.len, false)))
        return rc;
    if (c->content.len && (rc = dsi__answer_delta(c, DSI__CH_CONTENT, c->content.p, c->content.len, false))) return rc;
    if (!c->n_calls) return 0;
    struct dsi__sbuf *b = &g->out;
    rc = dsi__answer_chunk_begin(g, b);
    if (!rc) rc = dsi__sbuf_printf(b, "{\"index\":%d,\"delta\":{\"tool_calls\":", c->index);
    if (!rc) rc = dsi__sbuf_append(b, c->calls.p, c->calls.len);
    if (!rc) rc = dsi__sbuf_printf(b, "},\"logprobs\":null,\"finish_reason\":null}");
    if (!rc) rc = dsi__answer_chunk_end(g, b);
    return rc;
}

int dsi__answer_usage(struct dsi__gen *g, struct dsi__sbuf *b) {
    int hit = g->n_cached < g->n_prompt ? g->n_cached : g->n_prompt;
    return dsi__sbuf_printf(b,
                            "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d,"
                            "\"prompt_tokens_details\":{\"cached_tokens\":%d},\"prompt_cache_hit_tokens\":%d,"
                            "\"prompt_cache_miss_tokens\":%d}",
                            g->n_prompt, g->n_completion, g->n_prompt + g->n_completion, hit, hit,
                            g->n_prompt - hit);
}

int dsi__answer_usage_chunk(struct dsi__gen *g) {
    int rc = dsi__answer_chunk_begin(g, &g->out);
    if (!rc) rc = dsi__sbuf_printf(&g->out, "],");
    if (!rc) rc = dsi__answer_usage(g, &g->out);
    if (!rc) rc = dsi__sbuf_printf(&g->out, "}\n\n");
    return rc;
}

int dsi__answer_logprobs(struct dsi__choice *c, const struct dsi_token_event *ev) {
    struct dsi_tokenizer *t = c->g->s->tok;
    int top_logprobs = c->g->top_logprobs;
    char *txt = NULL;
    size_t len = 0;
    if (dsi_tok_decode(t, &ev->token, 1, false, &txt, &len, NULL)) return 0; /* no text: skip entry */
    int rc = 0;
    if (c->g->chat) {
        struct dsi__sbuf *b = &c->lp;
        if (c->n_lp) rc = dsi__sbuf_append(b, ",", 1);
        if (!rc) rc = dsi__sbuf_printf(b, "{\"token\":");
        if (!rc) rc = dsi__sbuf_json_str(b, txt, len);
        if (!rc) rc = dsi__sbuf_printf(b, ",\"logprob\":%.6g,\"bytes\":[", (double)ev->logprob);
        for (size_t i = 0; !rc && i < len; i++) rc = dsi__sbuf_printf(b, "%s%u", i ? "," : "", (unsigned char)txt[i]);
        if (!rc) rc = dsi__sbuf_printf(b, "],\"top_logprobs\":[");
        for (int k = 0; !rc && k < ev->n_top && k < top_logprobs; k++) {
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
        const char *sep = c->n_lp ? "," : "";
        rc = dsi__sbuf_printf(&c->lp_tokens, "%s", sep);
        if (!rc) rc = dsi__sbuf_json_str(&c->lp_tokens, txt, len);
        if (!rc) rc = dsi__sbuf_printf(&c->lp_values, "%s%.6g", sep, (double)ev->logprob);
        if (!rc) rc = dsi__sbuf_printf(&c->lp_tops, "%s{", sep);
        for (int k = 0; !rc && k < ev->n_top && k < top_logprobs; k++) {
            char *tt = NULL;
            size_t tl = 0;
            if (dsi_tok_decode(t, &ev->top_ids[k], 1, false, &tt, &tl, NULL)) continue;
            rc = dsi__sbuf_printf(&c->lp_tops, "%s", k ? "," : "");
            if (!rc) rc = dsi__sbuf_json_str(&c->lp_tops, tt, tl);
            if (!rc) rc = dsi__sbuf_printf(&c->lp_tops, ":%.6g", (double)ev->top_logprobs[k]);
            free(tt);
        }
        if (!rc) rc = dsi__sbuf_printf(&c->lp_tops, "}");
    }
    free(txt);
    if (!rc) c->n_lp++;
    return rc;
}

/* One choice of a non-streaming answer. */
static int final_choice(struct dsi__choice *c, struct dsi__sbuf *b) {
    struct dsi__gen *g = c->g;
    int rc;
    if (g->chat) {
        rc = dsi__sbuf_printf(b, "{\"index\":%d,\"message\":{\"role\":\"assistant\",\"content\":", c->index);
        if (!rc && c->n_calls && !c->content.len) rc = dsi__sbuf_printf(b, "null");
        else if (!rc) rc = dsi__sbuf_json_str(b, c->content.p ? c->content.p : "", c->content.len);
        if (!rc && c->n_calls) {
            rc = dsi__sbuf_printf(b, ",\"tool_calls\":");
            if (!rc) rc = dsi__sbuf_append(b, c->calls.p, c->calls.len);
        }
        if (!rc && g->s->reasoning) {
            rc = dsi__sbuf_printf(b, ",\"reasoning_content\":");
            if (!rc)
                rc = c->reasoning.len ? dsi__sbuf_json_str(b, c->reasoning.p, c->reasoning.len)
                                      : dsi__sbuf_printf(b, "null");
        }
        if (!rc) rc = dsi__sbuf_printf(b, "},");
    } else {
        rc = dsi__sbuf_printf(b, "{\"index\":%d,\"text\":", c->index);
        if (!rc) rc = dsi__sbuf_json_str(b, c->content.p ? c->content.p : "", c->content.len);
        if (!rc) rc = dsi__sbuf_printf(b, ",");
    }
    if (!rc) rc = append_logprobs_field(c, b);
    if (!rc) rc = dsi__sbuf_printf(b, ",\"finish_reason\":\"%s\"}", finish_name(c));
    return rc;
}

int dsi__answer_final(struct dsi__gen *g, struct dsi__sbuf *b) {
    int rc = obj_head(g, b, false);
    for (int i = 0; !rc && i < g->n_choices; i++) {
        if (i) rc = dsi__sbuf_printf(b, ",");
        if (!rc) rc = final_choice(&g->ch[i], b);
    }
    if (!rc) rc = dsi__sbuf_printf(b, "],");
    if (!rc) rc = dsi__answer_usage(g, b);
    if (!rc) rc = dsi__sbuf_printf(b, "}\n");
    return rc;
}
