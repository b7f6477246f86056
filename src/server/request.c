/*
 * request.c: OpenAI/DeepSeek request bodies -> struct dsi__req.
 *
 * A pure function of the body bytes (no server state), which makes it the fuzz
 * target. Checks follow OpenAI: wrong types and out-of-range values are 400 with
 * the offending field in "param"; unknown fields are ignored; the body must be
 * valid UTF-8 and at most max_body_bytes (413). Strings in the result are heap
 * copies owned by the struct (dsi__srv_req_free).
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/grammar.h"
#include "internal.h"

static int parse_messages(const cJSON *a, const struct dsi__req_limits *lim, struct dsi__req *r,
                          struct dsi__api_error *e);
static int parse_prompt(const cJSON *p, const struct dsi__req_limits *lim, struct dsi__req *r,
                        struct dsi__api_error *e);
static int parse_ids(const cJSON *a, const char *param, const struct dsi__req_limits *lim, struct dsi__req *r,
                     struct dsi__api_error *e);
static int parse_sampling(const cJSON *root, struct dsi__req *r, struct dsi__api_error *e);
static int parse_stop(const cJSON *s, struct dsi__req *r, struct dsi__api_error *e);
static int check_sampling(const struct dsi_sampling *s, struct dsi__api_error *e);
static int parse_root(const char *body, size_t len, const struct dsi__req_limits *lim, cJSON **root,
                      struct dsi__api_error *e);
static int parse_tokenize(const cJSON *root, const struct dsi__req_limits *lim, struct dsi__req *r,
                          struct dsi__api_error *e);
static int parse_input(const cJSON *root, const struct dsi__req_limits *lim, struct dsi__req *r,
                       struct dsi__api_error *e);
static int parse_delivery(const cJSON *root, struct dsi__req *r, struct dsi__api_error *e);
static int parse_decoding(const cJSON *root, const struct dsi__req_limits *lim, struct dsi__req *r,
                          struct dsi__api_error *e);

size_t dsi__srv_utf8_complete_prefix(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    /* Walk back over at most 3 continuation bytes to the last lead byte. */
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && (s[i - 1] & 0xC0) == 0x80) i--, back++;
    if (i == 0) return n;
    unsigned c = s[i - 1];
    size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    if (c < 0x80) return n;                  /* ends with ASCII (+ stray continuations) */
    return back + 1 >= need ? n : i - 1;     /* hold the incomplete sequence */
}

static char *dup_str(const char *s) {
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p) memcpy(p, s, n + 1);
    return p;
}

static int oom(struct dsi__api_error *e) {
    return dsi__api_error_set(e, 500, NULL, "internal_error", "out of memory");
}

/* Reads an optional integer field; 0 when absent, 400 when not an integer in [lo, hi]. */
static int get_int(const cJSON *root, const char *name, long long lo, long long hi, bool *present,
                   long long *out, struct dsi__api_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    *present = false;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble != floor(v->valuedouble))
        return dsi__api_error_set(e, 400, name, "invalid_type", "'%s' must be an integer", name);
    double d = v->valuedouble;
    if (d < (double)lo || d > (double)hi)
        return dsi__api_error_set(e, 400, name, "invalid_value", "'%s' must be between %lld and %lld", name,
                                  lo, hi);
    *present = true;
    *out = (long long)d;
    return 0;
}

/* A number field as the float the sampler uses; its range is dsi_sampling_check's. */
static int get_float(const cJSON *root, const char *name, float *out, struct dsi__api_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return dsi__api_error_set(e, 400, name, "invalid_type", "'%s' must be a number", name);
    *out = (float)v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *root, const char *name, bool *out, struct dsi__api_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsBool(v)) return dsi__api_error_set(e, 400, name, "invalid_type", "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(v);
    return 0;
}

static int get_str(const cJSON *root, const char *name, char **out, struct dsi__api_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v)) return dsi__api_error_set(e, 400, name, "invalid_type", "'%s' must be a string", name);
    *out = dup_str(v->valuestring);
    return *out ? 0 : oom(e);
}

/* The body as a JSON object in *root (the caller deletes it): size, UTF-8,
 * JSON syntax, nothing after the value, an object. 0 or the status set in e. */
static int parse_root(const char *body, size_t len, const struct dsi__req_limits *lim, cJSON **root,
                      struct dsi__api_error *e) {
    *root = NULL;
    if (len > lim->max_body_bytes)
        return dsi__api_error_set(e, 413, NULL, "request_too_large", "request body is %zu bytes; the limit is %zu",
                                  len, lim->max_body_bytes);
    if (len == 0) return dsi__api_error_set(e, 400, NULL, "invalid_json", "request body is empty; send a JSON object");
    if (!dsi_utf8_valid(body, len))
        return dsi__api_error_set(e, 400, NULL, "invalid_utf8", "request body is not valid UTF-8");
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (!j) {
        size_t off = end && end >= body && end <= body + len ? (size_t)(end - body) : 0;
        return dsi__api_error_set(e, 400, NULL, "invalid_json",
                                  "request body is not valid JSON (near byte %zu)", off);
    }
    int rc = 0;
    /* cJSON stops at the end of the first value: what follows must be blanks */
    for (const char *p = end; p && p < body + len && !rc; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            rc = dsi__api_error_set(e, 400, "body", "invalid_json",
                                    "unexpected bytes after the JSON body (at byte %zu)", (size_t)(p - body));
    if (!rc && !cJSON_IsObject(j))
        rc = dsi__api_error_set(e, 400, NULL, "invalid_json", "request body must be a JSON object");
    if (rc)
        cJSON_Delete(j);
    else
        *root = j;
    return rc;
}

/* /tokenize: messages (rendered as chat), or a prompt (or text) string. */
static int parse_tokenize(const cJSON *root, const struct dsi__req_limits *lim, struct dsi__req *r,
                          struct dsi__api_error *e) {
    int rc;
    if ((rc = get_bool(root, "add_special_tokens", &r->add_special, e))) return rc;
    if ((rc = get_bool(root, "add_generation_prompt", &r->add_generation_prompt, e))) return rc;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (m) return parse_messages(m, lim, r, e); /* tools: rendered per format (http.c) */
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!p) p = cJSON_GetObjectItemCaseSensitive(root, "text");
    if (!p || !cJSON_IsString(p))
        return dsi__api_error_set(e, 400, "prompt", p ? "invalid_type" : "missing_field",
                                  "'prompt' (a string) or 'messages' is required");
    r->prompt = dup_str(p->valuestring);
    return r->prompt ? 0 : oom(e);
}

/* What a generation reads: the chat messages, or the completion's prompt. */
static int parse_input(const cJSON *root, const struct dsi__req_limits *lim, struct dsi__req *r,
                       struct dsi__api_error *e) {
    int rc;
    if (r->kind == DSI__REQ_CHAT) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "messages");
        if (!m) return dsi__api_error_set(e, 400, "messages", "missing_field", "'messages' is required");
        return parse_messages(m, lim, r, e);
    }
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!p) return dsi__api_error_set(e, 400, "prompt", "missing_field", "'prompt' is required");
    if ((rc = parse_prompt(p, lim, r, e))) return rc;
    if ((rc = get_bool(root, "echo", &r->echo, e))) return rc;
    if (r->echo) return dsi__api_error_set(e, 400, "echo", "unsupported_value", "'echo' is not supported");
    return 0;
}

/* A generation's delivery options: stream, stream_options, cache_salt, ignore_eos. */
static int parse_delivery(const cJSON *root, struct dsi__req *r, struct dsi__api_error *e) {
    int rc;
    if ((rc = get_bool(root, "stream", &r->stream, e))) return rc;
    if ((rc = get_str(root, "cache_salt", &r->cache_salt, e))) return rc;
    if (r->cache_salt && (!r->cache_salt[0] || strlen(r->cache_salt) > DSI__MAX_CACHE_SALT_BYTES))
        return dsi__api_error_set(e, 400, "cache_salt", "invalid_value", "'cache_salt' must be 1 to %d bytes",
                                  DSI__MAX_CACHE_SALT_BYTES);
    /* vLLM's extension: generate max_tokens tokens even past end-of-sequence (benchmarks) */
    if ((rc = get_bool(root, "ignore_eos", &r->ignore_eos, e))) return rc;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so))
            return dsi__api_error_set(e, 400, "stream_options", "invalid_type",
                                      "'stream_options' must be an object");
        if ((rc = get_bool(so, "include_usage", &r->include_usage, e))) return rc;
    }
    return 0;
}

/* A generation's limits and decoding: max_tokens, n, sampling, stop, response_format, tools. */
static int parse_decoding(const cJSON *root, const struct dsi__req_limits *lim, struct dsi__req *r,
                          struct dsi__api_error *e) {
    int rc;
    bool has;
    long long v;
    if ((rc = get_int(root, "max_tokens", 1, 1 << 30, &has, &v, e))) return rc;
    if (has) r->max_tokens = (int)v;
    if ((rc = get_int(root, "max_completion_tokens", 1, 1 << 30, &has, &v, e))) return rc;
    if (has) r->max_tokens = (int)v;
    int max_n = lim->max_n > 0 && lim->max_n < DSI_MAX_N ? lim->max_n : DSI_MAX_N;
    if ((rc = get_int(root, "n", 1, max_n, &has, &v, e))) return rc;
    if (has) r->n = (int)v;
    if ((rc = parse_sampling(root, r, e))) return rc;
    if ((rc = check_sampling(&r->sampling, e))) return rc;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (st && !cJSON_IsNull(st) && (rc = parse_stop(st, r, e))) return rc;
    if ((rc = dsi__srv_parse_response_format(root, r, e))) return rc;
    return r->kind == DSI__REQ_CHAT ? dsi__srv_parse_tools(root, r, e) : 0;
}

int dsi__srv_req_parse(enum dsi__req_kind kind, const char *body, size_t len,
                       const struct dsi__req_limits *lim, struct dsi__req *r, struct dsi__api_error *e) {
    memset(r, 0, sizeof *r);
    memset(e, 0, sizeof *e);
    r->kind = kind;
    r->max_tokens = -1;
    r->n = 1;
    r->add_special = true;
    r->add_generation_prompt = true;
    r->sampling.temperature = 1.0f;
    r->sampling.top_p = 1.0f;
    r->sampling.repetition_penalty = 1.0f;
    cJSON *root = NULL;
    int rc = parse_root(body, len, lim, &root, e);
    if (rc) return rc;
    if ((rc = get_str(root, "model", &r->model, e))) goto out;
    if ((rc = get_str(root, "user", &r->user, e))) goto out;
    if (kind == DSI__REQ_DETOKENIZE) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "tokens");
        rc = t ? parse_ids(t, "tokens", lim, r, e)
               : dsi__api_error_set(e, 400, "tokens", "missing_field",
                                    "'tokens' is required (an array of ids)");
    } else if (kind == DSI__REQ_TOKENIZE) {
        rc = parse_tokenize(root, lim, r, e);
    } else if (!(rc = parse_input(root, lim, r, e)) && !(rc = parse_delivery(root, r, e))) {
        rc = parse_decoding(root, lim, r, e);
    }
out:
    cJSON_Delete(root);
    return rc;
}

static int parse_sampling(const cJSON *root, struct dsi__req *r, struct dsi__api_error *e) {
    struct dsi_sampling *s = &r->sampling;
    bool has;
    long long v;
    int rc;
    if ((rc = get_float(root, "temperature", &s->temperature, e))) return rc;
    if ((rc = get_float(root, "top_p", &s->top_p, e))) return rc;
    if ((rc = get_int(root, "top_k", -1, 1 << 30, &has, &v, e))) return rc;
    if (has) s->top_k = v < 0 ? 0 : (int)v; /* -1 means off (vLLM spelling) */
    if ((rc = get_float(root, "min_p", &s->min_p, e))) return rc;
    if ((rc = get_float(root, "frequency_penalty", &s->frequency_penalty, e))) return rc;
    if ((rc = get_float(root, "presence_penalty", &s->presence_penalty, e))) return rc;
    if ((rc = get_float(root, "repetition_penalty", &s->repetition_penalty, e))) return rc;
    /* OpenAI seeds are 64-bit; JSON numbers are doubles, so accept what is exact. */
    if ((rc = get_int(root, "seed", -9007199254740991LL, 9007199254740991LL, &has, &v, e))) return rc;
    if (has) {
        s->seed = (uint64_t)v;
        r->seed_set = true;
    }
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(root, "logprobs");
    if (r->kind == DSI__REQ_COMPLETION) {
        /* Legacy completions: logprobs is an integer count (0..5 in OpenAI; we allow 20). */
        if ((rc = get_int(root, "logprobs", 0, DSI_MAX_TOP_LOGPROBS, &has, &v, e))) return rc;
        if (has) {
            s->logprobs = true;
            s->top_logprobs = (int)v;
        }
        return 0;
    }
    if (lp && !cJSON_IsNull(lp)) {
        if (!cJSON_IsBool(lp))
            return dsi__api_error_set(e, 400, "logprobs", "invalid_type", "'logprobs' must be a boolean");
        s->logprobs = cJSON_IsTrue(lp);
    }
    if ((rc = get_int(root, "top_logprobs", 0, DSI_MAX_TOP_LOGPROBS, &has, &v, e))) return rc;
    if (has) {
        if (!s->logprobs && v > 0)
            return dsi__api_error_set(e, 400, "top_logprobs", "invalid_value",
                                      "'top_logprobs' requires 'logprobs': true");
        s->top_logprobs = (int)v;
    }
    return 0;
}

/* The engine's one range check (docs/api.md), reported as OpenAI does: 400,
 * param = the field, code invalid_value. */
static int check_sampling(const struct dsi_sampling *s, struct dsi__api_error *e) {
    const char *param = NULL;
    char *msg = NULL;
    if (dsi_sampling_check(s, &param, &msg) == 0) return 0;
    int st = dsi__api_error_set(e, 400, param, "invalid_value", "%s", msg ? msg : "invalid sampling setting");
    free(msg);
    return st;
}

static int parse_stop(const cJSON *st, struct dsi__req *r, struct dsi__api_error *e) {
    const cJSON *one = st;
    if (cJSON_IsArray(st)) {
        int n = cJSON_GetArraySize(st);
        if (n > DSI__MAX_STOPS)
            return dsi__api_error_set(e, 400, "stop", "invalid_value", "'stop' has %d entries; at most %d", n,
                                      DSI__MAX_STOPS);
        cJSON_ArrayForEach(one, st) {
            if (!cJSON_IsString(one))
                return dsi__api_error_set(e, 400, "stop", "invalid_type", "'stop' entries must be strings");
            size_t l = strlen(one->valuestring);
            if (l == 0) continue; /* an empty stop string would stop at once; ignore it */
            if (l > DSI__MAX_STOP_BYTES)
                return dsi__api_error_set(e, 400, "stop", "invalid_value", "stop strings are limited to %d bytes",
                                          DSI__MAX_STOP_BYTES);
            if (!(r->stops[r->n_stops] = dup_str(one->valuestring))) return oom(e);
            r->n_stops++;
        }
        return 0;
    }
    if (!cJSON_IsString(st))
        return dsi__api_error_set(e, 400, "stop", "invalid_type", "'stop' must be a string or an array of strings");
    size_t l = strlen(st->valuestring);
    if (l > DSI__MAX_STOP_BYTES)
        return dsi__api_error_set(e, 400, "stop", "invalid_value", "stop strings are limited to %d bytes",
                                  DSI__MAX_STOP_BYTES);
    if (l == 0) return 0;
    if (!(r->stops[0] = dup_str(st->valuestring))) return oom(e);
    r->n_stops = 1;
    return 0;
}

/* Content: a string, or an array of {"type":"text","text":...} parts (joined). */
static int parse_content(const cJSON *c, size_t idx, char **out, struct dsi__api_error *e) {
    char param[64];
    snprintf(param, sizeof param, "messages[%zu].content", idx);
    if (!c || cJSON_IsNull(c)) {
        *out = dup_str("");
        return *out ? 0 : oom(e);
    }
    if (cJSON_IsString(c)) {
        *out = dup_str(c->valuestring);
        return *out ? 0 : oom(e);
    }
    if (!cJSON_IsArray(c))
        return dsi__api_error_set(e, 400, param, "invalid_type", "'%s' must be a string or an array of parts", param);
    size_t total = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, c) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(p, "type");
        const cJSON *tx = cJSON_GetObjectItemCaseSensitive(p, "text");
        if (!cJSON_IsObject(p) || !cJSON_IsString(ty) || !cJSON_IsString(tx) || strcmp(ty->valuestring, "text"))
            return dsi__api_error_set(e, 400, param, "invalid_value",
                                      "'%s' parts must be {\"type\":\"text\",\"text\":...}; only text is supported",
                                      param);
        size_t l = strlen(tx->valuestring);
        if (total > SIZE_MAX - l - 1) return oom(e);
        total += l;
    }
    char *s = malloc(total + 1);
    if (!s) return oom(e);
    size_t off = 0;
    cJSON_ArrayForEach(p, c) {
        const char *t = cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring;
        size_t l = strlen(t);
        memcpy(s + off, t, l);
        off += l;
    }
    s[off] = 0;
    *out = s;
    return 0;
}

static const char *param_content(char *buf, size_t n, size_t i) {
    snprintf(buf, n, "messages[%zu].content", i);
    return buf;
}

static int parse_messages(const cJSON *a, const struct dsi__req_limits *lim, struct dsi__req *r,
                          struct dsi__api_error *e) {
    if (!cJSON_IsArray(a))
        return dsi__api_error_set(e, 400, "messages", "invalid_type", "'messages' must be an array");
    int n = cJSON_GetArraySize(a);
    if (n == 0) return dsi__api_error_set(e, 400, "messages", "invalid_value", "'messages' must not be empty");
    if (n > lim->max_messages)
        return dsi__api_error_set(e, 400, "messages", "too_many_messages", "'messages' has %d entries; the limit is %d",
                                  n, lim->max_messages);
    r->msgs = calloc((size_t)n + 1, sizeof *r->msgs); /* + 1: a system message for tools */
    if (!r->msgs) return oom(e);
    const cJSON *m;
    cJSON_ArrayForEach(m, a) {
        size_t i = r->n_msgs;
        char param[64];
        snprintf(param, sizeof param, "messages[%zu].role", i);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role))
            return dsi__api_error_set(e, 400, param, "invalid_type", "'messages[%zu]' must be an object with a 'role'", i);
        const char *rs = role->valuestring;
        if (!strcmp(rs, "developer")) rs = "system";
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant") && strcmp(rs, "tool"))
            return dsi__api_error_set(e, 400, param, "invalid_value",
                                      "'%s' must be system, developer, user, assistant or tool", param);
        if (!(r->msgs[i].role = dup_str(rs))) return oom(e);
        r->n_msgs++;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        const cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        bool has_calls = !strcmp(rs, "assistant") && cJSON_IsArray(calls) && cJSON_GetArraySize(calls) > 0;
        if ((!content || cJSON_IsNull(content)) && !has_calls)
            return dsi__api_error_set(e, 400, param_content(param, sizeof param, i), "missing_field",
                                      "'messages[%zu].content' is required (only an assistant message with "
                                      "'tool_calls' may leave it out)", i);
        r->msgs[i].content_null = !content || cJSON_IsNull(content);
        int rc = parse_content(content, i, &r->msgs[i].content, e);
        if (!rc) rc = dsi__srv_parse_msg_tools(m, i, &r->msgs[i], e);
        if (rc) return rc;
    }
    return 0;
}

static int parse_ids(const cJSON *a, const char *param, const struct dsi__req_limits *lim, struct dsi__req *r,
                     struct dsi__api_error *e) {
    if (!cJSON_IsArray(a)) return dsi__api_error_set(e, 400, param, "invalid_type", "'%s' must be an array", param);
    int n = cJSON_GetArraySize(a);
    if (n > lim->max_prompt_ids)
        return dsi__api_error_set(e, 400, param, "invalid_value", "'%s' has %d ids; the limit is %d", param, n,
                                  lim->max_prompt_ids);
    r->ids = malloc(((size_t)n + 1) * sizeof *r->ids);
    if (!r->ids) return oom(e);
    const cJSON *v;
    cJSON_ArrayForEach(v, a) {
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble != floor(v->valuedouble) ||
            v->valuedouble < 0 || v->valuedouble > INT32_MAX)
            return dsi__api_error_set(e, 400, param, "invalid_type", "'%s' must hold non-negative integer ids", param);
        r->ids[r->n_ids++] = (int32_t)v->valuedouble;
    }
    return 0;
}

/* prompt: "text" | ["text"] | [ids...] | [[ids...]]; several prompts are refused
 * like n > 1. */
static int parse_prompt(const cJSON *p, const struct dsi__req_limits *lim, struct dsi__req *r,
                        struct dsi__api_error *e) {
    if (cJSON_IsString(p)) {
        r->prompt = dup_str(p->valuestring);
        return r->prompt ? 0 : oom(e);
    }
    if (!cJSON_IsArray(p))
        return dsi__api_error_set(e, 400, "prompt", "invalid_type",
                                  "'prompt' must be a string, an array of strings or an array of token ids");
    int n = cJSON_GetArraySize(p);
    if (n == 0) return dsi__api_error_set(e, 400, "prompt", "invalid_value", "'prompt' must not be empty");
    const cJSON *first = cJSON_GetArrayItem(p, 0);
    if (cJSON_IsNumber(first)) return parse_ids(p, "prompt", lim, r, e);
    if (n > 1)
        return dsi__api_error_set(e, 400, "prompt", "unsupported_value",
                                  "several prompts in one request are not supported; send one request per prompt");
    if (cJSON_IsString(first)) {
        r->prompt = dup_str(first->valuestring);
        return r->prompt ? 0 : oom(e);
    }
    if (cJSON_IsArray(first)) return parse_ids(first, "prompt", lim, r, e);
    return dsi__api_error_set(e, 400, "prompt", "invalid_type",
                              "'prompt' must be a string, an array of strings or an array of token ids");
}

void dsi__srv_req_free(struct dsi__req *r) {
    if (!r) return;
    free(r->model);
    for (size_t i = 0; i < r->n_msgs; i++) {
        free(r->msgs[i].role);
        free(r->msgs[i].content);
        for (size_t k = 0; k < r->msgs[i].n_calls; k++) {
            free(r->msgs[i].calls[k].id);
            free(r->msgs[i].calls[k].name);
            free(r->msgs[i].calls[k].arguments);
        }
        free(r->msgs[i].calls);
        free(r->msgs[i].tool_call_id);
    }
    free(r->msgs);
    free(r->prompt);
    free(r->ids);
    for (int i = 0; i < r->n_stops; i++) free(r->stops[i]);
    free(r->user);
    free(r->cache_salt);
    dsi_grammar_destroy(r->grammar);
    free(r->tools_json);
    free(r->tools_raw);
    free(r->tool_named);
    free(r->prefill);
    memset(r, 0, sizeof *r);
}
