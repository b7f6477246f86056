/*
 * http.c: libmicrohttpd daemon (GnuTLS, TLS 1.3 only), routing, auth, the
 * non-generating routes, and per-request accounting (metrics, audit, charge).
 *
 * A pool of http_threads epoll workers serves the connections (each connection
 * stays on one worker), so a slow TLS handshake or request on one worker does
 * not stall the others; handlers run concurrently and touch only per-request
 * state or shared state that is atomic, locked or read-only (srv.h). Generating
 * routes submit to the engine and suspend the connection until the engine
 * callback resumes it (gen.c); nothing here blocks. Requests with a body are
 * authenticated on their headers, before any of the body is read or "100
 * Continue" is sent. Every request ends in on_completed, the single
 * place that writes the audit record, counts metrics and charges tokens.
 */
#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dsinfer/clock.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "srv.h"

struct conn_ctx {
    struct dsi_server *s;          /* borrowed: the server outlives its connections */
    bool started;                  /* the handler has seen this request */
    const char *bad_uri;           /* static reason the raw target is refused, or NULL */
    enum dsi__route route;
    struct dsi__sbuf body;
    bool too_big, responded;
    struct dsi__gen *g;
    double t0;
    char req_id[64];
    struct dsi_principal pr;
    bool have_pr;
    const char *denial;
    int status;
    char model[256 + 8];
    char remote[64];
};

#define DSI__HEADER_BUF_BYTES (32u * 1024) /* MHD's per-connection buffer (its default) */

static const struct {
    const char *path;
    enum dsi__route route;
    const char *method;
    uint32_t perm;
} ROUTES[] = {
    {"/v1/chat/completions", DSI__R_CHAT, "POST", DSI_PERM_CHAT},
    {"/chat/completions", DSI__R_CHAT_DS, "POST", DSI_PERM_CHAT},
    {"/v1/completions", DSI__R_COMPLETIONS, "POST", DSI_PERM_COMPLETIONS},
    {"/v1/models", DSI__R_MODELS, "GET", DSI_PERM_MODELS},
    {"/v1/tokenize", DSI__R_TOKENIZE, "POST", DSI_PERM_TOKENIZE},
    {"/v1/detokenize", DSI__R_DETOKENIZE, "POST", DSI_PERM_TOKENIZE},
    {"/health/live", DSI__R_LIVE, "GET", 0},
    {"/health/ready", DSI__R_READY, "GET", 0},
    {"/metrics", DSI__R_METRICS, "GET", DSI_PERM_METRICS},
};
#define N_ROUTES (sizeof ROUTES / sizeof ROUTES[0])

static int route_index(enum dsi__route r) {
    for (size_t i = 0; i < N_ROUTES; i++)
        if (ROUTES[i].route == r) return (int)i;
    return -1;
}

/* While the server is LEAVING (SIGTERM, drain_grace_ms running), every answer
 * closes its connection: the client's next request opens a new one, which goes
 * wherever the balancer or the floating IP points by then, instead of a pooled
 * connection to this node that the new VIP holder would reset. */
static void close_if_leaving(const struct conn_ctx *x, struct MHD_Response *r) {
    if (atomic_load(&x->s->state) == DSI__ST_LEAVING)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
}

/* Queues body (malloc'd, taken over) with status; never fails silently. */
static enum MHD_Result respond(struct MHD_Connection *c, struct conn_ctx *x, int status, const char *ctype,
                               char *body, const char *extra_hdr, const char *extra_val) {
    if (!body) {
        status = 500;
        body = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n");
        ctype = "application/json";
        if (!body) return MHD_NO;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(r, "X-Request-Id", x->req_id);
    if (extra_hdr) MHD_add_response_header(r, extra_hdr, extra_val);
    close_if_leaving(x, r);
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    dsi__guard_mark(c, DSI__CONN_RECEIVED); /* answered: the read deadline no longer applies */
    x->status = status;
    x->responded = true;
    return ok;
}

static enum MHD_Result respond_error(struct MHD_Connection *c, struct conn_ctx *x, const struct dsi__api_error *e) {
    if (e->status >= 500) dsi_log(DSI_LOG_WARN, "http", "%s %s: %d %s", x->req_id, dsi__route_name(x->route), e->status, e->message);
    else dsi_log(DSI_LOG_INFO, "http", "%s %s: %d %s", x->req_id, dsi__route_name(x->route), e->status, e->message);
    /* 503 (loading, draining, queue full) comes at once and says when to come back */
    bool busy = e->status == 503;
    return respond(c, x, e->status, "application/json", dsi__api_error_json(e),
                   busy ? MHD_HTTP_HEADER_RETRY_AFTER : NULL, busy ? "1" : NULL);
}

static enum MHD_Result respond_errf(struct MHD_Connection *c, struct conn_ctx *x, int status, const char *code,
                                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static enum MHD_Result respond_errf(struct MHD_Connection *c, struct conn_ctx *x, int status, const char *code,
                                    const char *fmt, ...) {
    struct dsi__api_error e;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dsi__api_error_set(&e, status, NULL, code, "%s", msg);
    return respond_error(c, x, &e);
}

/* ---- authentication ------------------------------------------------------ */

/* Subject CN of a verified client certificate, or false. */
static bool client_cert_cn(struct MHD_Connection *c, char *cn, size_t cap) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (!ci || !ci->tls_session) return false;
    gnutls_session_t ss = (gnutls_session_t)ci->tls_session;
    unsigned status = 0;
    /* The chain must also allow client authentication: a certificate issued for a
     * server (EKU serverAuth only) is not a client identity. GnuTLS applies the
     * purpose to every certificate of the chain that has an EKU extension; one
     * without the extension is unrestricted (RFC 5280 4.2.1.12). */
    gnutls_typed_vdata_st purpose = {GNUTLS_DT_KEY_PURPOSE_OID, (unsigned char *)GNUTLS_KP_TLS_WWW_CLIENT, 0};
    if (gnutls_certificate_verify_peers(ss, &purpose, 1, &status) < 0 || status != 0) return false;
    unsigned n = 0;
    const gnutls_datum_t *certs = gnutls_certificate_get_peers(ss, &n);
    if (!certs || n == 0) return false;
    gnutls_x509_crt_t crt;
    if (gnutls_x509_crt_init(&crt) < 0) return false;
    size_t len = cap;
    bool ok = gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) >= 0 &&
              gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, cn, &len) >= 0;
    gnutls_x509_crt_deinit(crt);
    return ok;
}

/* Runs the auth check for the route; on denial queues 401/403/429 and returns
 * false. Bodies never say whether a key exists. */
static bool authorize(struct dsi_server *s, struct MHD_Connection *c, struct conn_ctx *x, const char *model,
                      enum MHD_Result *res) {
    int ri = route_index(x->route);
    uint32_t perm = ri >= 0 ? ROUTES[ri].perm : 0;
    if (perm == 0 && dsi_auth_health_open(s->auth)) return true;
    if (perm == 0) perm = DSI_PERM_METRICS; /* closed health routes: monitor permission */
    const char *hdr = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    int retry = 0;
    enum dsi_auth_status st;
    char cn[256];
    bool have_cn = s->ca_pem && client_cert_cn(c, cn, sizeof cn);
    if (s->cfg->tls_require_client_cert && s->ca_pem && !have_cn) {
        x->denial = "client_cert_required";
        *res = respond_errf(c, x, 401, "client_certificate_required", "a valid client certificate is required");
        return false;
    }
    if (!hdr && have_cn) st = dsi_auth_check_client_cert(s->auth, cn, perm, model, &x->pr, &retry);
    else st = dsi_auth_check(s->auth, hdr, perm, model, &x->pr, &retry);
    if (st == DSI_AUTH_OK) {
        x->have_pr = true;
        return true;
    }
    /* auth fills the principal for every known key, disabled and expired ones too,
     * so the audit line names the key; the client still gets the same 401. */
    x->have_pr = x->pr.key_id[0] != 0;
    x->denial = dsi_auth_status_reason(st);
    int http = dsi_auth_http_status(st);
    struct dsi__api_error e;
    switch (st) {
    case DSI_AUTH_MISSING:
        dsi__api_error_set(&e, 401, NULL, "invalid_api_key", "missing API key: send 'Authorization: Bearer <key>'");
        break;
    case DSI_AUTH_INVALID:
        dsi__api_error_set(&e, 401, NULL, "invalid_api_key", "invalid API key");
        break;
    case DSI_AUTH_FORBIDDEN:
        dsi__api_error_set(&e, 403, NULL, "permission_denied", "this key may not use %s", dsi__route_name(x->route));
        break;
    case DSI_AUTH_MODEL_FORBIDDEN:
        dsi__api_error_set(&e, 403, "model", "model_not_allowed", "this key may not use this model");
        break;
    default:
        dsi__api_error_set(&e, http == 429 ? 429 : http, NULL, "rate_limit_exceeded",
                           "rate limit reached; retry after %d s", retry > 0 ? retry : 1);
        break;
    }
    if (e.status == 429) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", retry > 0 ? retry : 1);
        dsi_log(DSI_LOG_INFO, "http", "%s %s: 429 %s", x->req_id, dsi__route_name(x->route), x->denial);
        *res = respond(c, x, 429, "application/json", dsi__api_error_json(&e), MHD_HTTP_HEADER_RETRY_AFTER, ra);
    } else {
        *res = respond_error(c, x, &e);
    }
    return false;
}

/* ---- routes ----------------------------------------------------------------- */

static char *json_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *json_printf(const char *fmt, ...) {
    char *p = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&p, fmt, ap);
    va_end(ap);
    return n < 0 ? NULL : p;
}

static enum MHD_Result route_models(struct dsi_server *s, struct MHD_Connection *c, struct conn_ctx *x) {
    struct dsi__sbuf b = {0};
    int rc = dsi__sbuf_printf(&b, "{\"object\":\"list\",\"data\":[");
    for (int i = 0; !rc && i < s->n_model_names; i++) { /* aliases, the primary first */
        rc = dsi__sbuf_printf(&b, "%s{\"id\":", i ? "," : "");
        if (!rc) rc = dsi__sbuf_json_str(&b, s->model_names[i], strlen(s->model_names[i]));
        if (!rc)
            rc = dsi__sbuf_printf(&b, ",\"object\":\"model\",\"created\":%ld,\"owned_by\":\"dsinfer\",\"max_model_len\":%d}",
                                 s->created, s->context_tokens);
    }
    if (!rc) rc = dsi__sbuf_printf(&b, "]}\n");
    if (rc) dsi__sbuf_free(&b);
    return respond(c, x, 200, "application/json", b.p, NULL, NULL);
}

/* Parses the body for kind; on failure answers. Returns false when answered.
 * Callers without a key never get here, so they learn nothing about the API. */
static bool parse_body(struct dsi_server *s, struct MHD_Connection *c, struct conn_ctx *x, enum dsi__req_kind kind,
                       struct dsi__req *r, enum MHD_Result *res) {
    const struct dsi_config *cfg = s->cfg;
    struct dsi__req_limits lim = {.max_body_bytes = cfg->max_body_bytes, .max_messages = cfg->max_messages,
                                  .max_prompt_ids = s->context_tokens > 0 ? s->context_tokens : 1 << 20,
                                  .max_n = cfg->max_n};
    struct dsi__api_error e;
    int st = x->too_big ? dsi__api_error_set(&e, 413, NULL, "request_too_large", "request body exceeds %zu bytes",
                                             cfg->max_body_bytes)
                        : dsi__srv_req_parse(kind, x->body.p ? x->body.p : "", x->body.len, &lim, r, &e);
    const char *model = st == 0 && r->model ? r->model : s->model_name;
    snprintf(x->model, sizeof x->model, "%.255s", model);
    /* The key was checked on the headers (on_request), before the body was read. */
    if (st) {
        *res = respond_error(c, x, &e);
        return false;
    }
    if (r->model && !dsi__srv_model_known(s, r->model)) {
        dsi__api_error_set(&e, 404, "model", "model_not_found", "the model '%.100s' does not exist; this server serves '%.100s'",
                           r->model, s->model_name);
        *res = respond_error(c, x, &e);
        return false;
    }
    int state = dsi__srv_state(s);
    if (state != DSI__ST_READY && state != DSI__ST_LEAVING) { /* LEAVING still serves: drain_grace_ms */
        *res = respond_errf(c, x, 503,
                            state == DSI__ST_LOADING  ? "loading"
                            : state == DSI__ST_FAILED ? "backend_failed"
                                                      : "draining",
                            state == DSI__ST_LOADING  ? "the model is still loading; retry later"
                            : state == DSI__ST_FAILED ? "the model backend failed on this server; retry on another one"
                                                      : "the server is shutting down");
        return false;
    }
    return true;
}

/* The chat messages of r as the tokenizer takes them (m and calls: n_msgs and
 * one entry per call of r, caller-allocated; pointers borrowed from r). */
static void chat_msgs(const struct dsi__req *r, struct dsi_chat_msg *m, struct dsi_chat_tool_call *calls) {
    for (size_t i = 0; i < r->n_msgs; i++) {
        const struct dsi__msg *x = &r->msgs[i];
        /* Calls with an empty content render as the calls (V3's template would
         * print the empty text and drop them, docs/api.md). */
        bool no_text = x->n_calls && (x->content_null || !x->content[0]);
        m[i] = (struct dsi_chat_msg){.role = x->role, .content = no_text ? NULL : x->content,
                                     .tool_calls = calls, .n_tool_calls = x->n_calls,
                                     .tool_call_id = x->tool_call_id};
        for (size_t k = 0; k < x->n_calls; k++)
            *calls++ = (struct dsi_chat_tool_call){x->calls[k].id, x->calls[k].name, x->calls[k].arguments};
    }
}

/* Appends the ids of prefill (our template text: its special tokens count) to *ids. */
static int append_prefill(struct dsi_server *s, const char *prefill, int32_t **ids, size_t *n, char **err) {
    int32_t *p = NULL;
    size_t np = 0;
    int rc = dsi_tok_encode(s->tok, prefill, strlen(prefill), true, &p, &np, err);
    int32_t *all = rc ? NULL : realloc(*ids, (*n + np + 1) * sizeof *all);
    if (!rc && !all) rc = DSI_ENOMEM;
    if (!rc) {
        memcpy(all + *n, p, np * sizeof *p);
        *ids = all;
        *n += np;
    }
    free(p);
    return rc;
}

/* Prompt ids of a chat / completion / tokenize request (malloc'd). Tools, calls
 * and results go through the format's native syntax where it has one, else they
 * are rewritten into the prompt form first (tools.c). */
static int prompt_ids(struct dsi_server *s, struct dsi__req *r, bool gen_prompt, int32_t **ids, size_t *n,
                      struct dsi__api_error *e) {
    char *err = NULL;
    int rc;
    if (r->n_msgs) {
        enum dsi_chat_format f = s->chat_format == DSI_CHAT_AUTO ? dsi_tok_chat_format(s->tok) : s->chat_format;
        enum dsi__tools_prompt how = !dsi_chat_has_tool_syntax(s->tok, f) ? DSI__TP_TEXT
                                     : f == DSI_CHAT_DEEPSEEK_V3        ? DSI__TP_NATIVE_LIST
                                                                        : DSI__TP_NATIVE;
        int st = dsi__srv_tools_prompt(r, how, e);
        /* a forced call is written in the native syntax, its opening prefilled */
        if (!st && how != DSI__TP_TEXT)
            st = dsi__srv_tools_native(r, how == DSI__TP_NATIVE_LIST ? DSI__TOOLS_DEEPSEEK : DSI__TOOLS_TAGS, s->tok,
                                       e);
        if (st) return st;
        size_t n_calls = 0;
        for (size_t i = 0; i < r->n_msgs; i++) n_calls += r->msgs[i].n_calls;
        struct dsi_chat_msg *m = calloc(r->n_msgs, sizeof *m);
        struct dsi_chat_tool_call *calls = calloc(n_calls + 1, sizeof *calls);
        if (!m || !calls) {
            free(m);
            free(calls);
            return dsi__api_error_set(e, 500, NULL, NULL, "out of memory");
        }
        chat_msgs(r, m, calls);
        /* the tool list renders in ChatML only; tool_choice none keeps it out */
        const char *tools = how == DSI__TP_NATIVE && r->tool_choice != DSI__TOOL_CHOICE_NONE ? r->tools_raw : NULL;
        /* Content is encoded as plain text: special tokens only from the template. */
        rc = dsi_chat_encode(s->tok, f, m, r->n_msgs, tools, gen_prompt, ids, n, &err);
        free(calls);
        free(m);
        if (!rc && r->prefill) rc = append_prefill(s, r->prefill, ids, n, &err);
    } else if (r->prompt) {
        int32_t *t = NULL;
        size_t nt = 0;
        rc = dsi_tok_encode_prompt(s->tok, r->prompt, strlen(r->prompt), r->add_special, &t, &nt, &err);
        if (rc) free(t);
        else *ids = t, *n = nt;
    } else {
        int vocab = dsi_tok_vocab_size(s->tok);
        for (size_t i = 0; i < r->n_ids; i++)
            if (r->ids[i] >= vocab)
                return dsi__api_error_set(e, 400, "prompt", "invalid_value", "token id %d is outside the vocabulary (%d)",
                                          (int)r->ids[i], vocab);
        *ids = malloc((r->n_ids ? r->n_ids : 1) * sizeof **ids);
        if (!*ids) return dsi__api_error_set(e, 500, NULL, NULL, "out of memory");
        memcpy(*ids, r->ids, r->n_ids * sizeof **ids);
        *n = r->n_ids;
        rc = 0;
    }
    if (rc) {
        int st = rc == DSI_ENOMEM ? 500 : 400;
        dsi__api_error_set(e, st, NULL, st == 400 ? "invalid_value" : NULL, "cannot build the prompt: %s",
                           err ? err : dsi_strerror(rc));
        free(err);
        return st;
    }
    return 0;
}

static enum MHD_Result route_tokenize(struct dsi_server *s, struct MHD_Connection *c, struct conn_ctx *x,
                                      struct dsi__req *r) {
    struct dsi__api_error e;
    int32_t *ids = NULL;
    size_t n = 0;
    if (prompt_ids(s, r, r->add_generation_prompt, &ids, &n, &e)) return respond_error(c, x, &e);
    struct dsi__sbuf b = {0};
    int rc = dsi__sbuf_printf(&b, "{\"count\":%zu,\"max_model_len\":%d,\"tokens\":[", n, s->context_tokens);
    for (size_t i = 0; !rc && i < n; i++) rc = dsi__sbuf_printf(&b, "%s%d", i ? "," : "", (int)ids[i]);
    if (!rc) rc = dsi__sbuf_printf(&b, "]}\n");
    free(ids);
    if (rc) dsi__sbuf_free(&b);
    return respond(c, x, 200, "application/json", b.p, NULL, NULL);
}

static enum MHD_Result route_detokenize(struct dsi_server *s, struct MHD_Connection *c, struct conn_ctx *x,
                                        const struct dsi__req *r) {
    int vocab = dsi_tok_vocab_size(s->tok);
    for (size_t i = 0; i < r->n_ids; i++)
        if (r->ids[i] >= vocab)
            return respond_errf(c, x, 400, "invalid_value", "token id %d is outside the vocabulary (%d)", (int)r->ids[i],
                                vocab);
    char *text = NULL, *err = NULL;
    size_t len = 0;
    int rc = dsi_tok_decode(s->tok, r->ids, r->n_ids, false, &text, &len, &err);
    if (rc) {
        enum MHD_Result res = respond_errf(c, x, 400, "invalid_value", "cannot decode: %s", err ? err : dsi_strerror(rc));
        free(err);
        return res;
    }
    struct dsi__sbuf b = {0};
    rc = dsi__sbuf_printf(&b, "{\"prompt\":");
    if (!rc) rc = dsi__sbuf_json_str(&b, text, len);
    if (!rc) rc = dsi__sbuf_printf(&b, "}\n");
    free(text);
    if (rc) dsi__sbuf_free(&b);
    return respond(c, x, 200, "application/json", b.p, NULL, NULL);
}

static enum MHD_Result route_generate(struct dsi_server *s, struct MHD_Connection *c, struct conn_ctx *x,
                                      struct dsi__req *r) {
    struct dsi__api_error e;
    int32_t *ids = NULL;
    size_t n = 0;
    if (prompt_ids(s, r, true, &ids, &n, &e)) return respond_error(c, x, &e);
    if (n == 0) {
        free(ids);
        return respond_errf(c, x, 400, "invalid_value", "the prompt is empty");
    }
    if ((long long)n >= s->context_tokens || (long long)n > s->max_prompt_tokens) {
        free(ids);
        dsi__api_error_set(&e, 400, r->kind == DSI__REQ_CHAT ? "messages" : "prompt", "context_length_exceeded",
                           "the prompt has %zu tokens; this server accepts at most %d (context %d tokens)", n,
                           s->max_prompt_tokens < s->context_tokens - 1 ? s->max_prompt_tokens : s->context_tokens - 1,
                           s->context_tokens);
        return respond_error(c, x, &e);
    }
    int room = s->context_tokens - (int)n;
    int max_tokens = r->max_tokens > 0 ? r->max_tokens : s->default_max_tokens > 0 ? s->default_max_tokens : room;
    if (max_tokens > room) max_tokens = room; /* documented: clamped to what fits in the context */
    if (x->have_pr && x->pr.max_tokens_cap > 0 && max_tokens > x->pr.max_tokens_cap) max_tokens = x->pr.max_tokens_cap;
    /* The key's concurrency limit first, so that a refused request reserves
     * nothing; the slots (one per choice: each is an engine sequence) go with
     * the gen (freed with it) from here on. */
    bool slot = false;
    int n_seq = r->n > 1 ? r->n : 1;
    if (x->have_pr && x->pr.max_concurrent > 0 && n_seq > x->pr.max_concurrent) {
        free(ids);
        dsi__api_error_set(&e, 400, "n", "invalid_value", "n is %d; this key may run at most %d sequences at once",
                           n_seq, x->pr.max_concurrent);
        return respond_error(c, x, &e);
    }
    if (x->have_pr && x->pr.max_concurrent > 0) {
        int rc = dsi__slots_acquire(s, x->pr.key_id, x->pr.max_concurrent, n_seq);
        if (rc) free(ids);
        if (rc == DSI_EFULL) {
            x->denial = "concurrency_limit";
            dsi__api_error_set(&e, 429, NULL, "concurrency_limit_exceeded",
                               "this key has %d sequences in flight at most (max_concurrent), fewer than %d free; "
                               "retry when one ends", x->pr.max_concurrent, n_seq);
            dsi_log(DSI_LOG_INFO, "http", "%s %s: 429 %s", x->req_id, dsi__route_name(x->route), x->denial);
            return respond(c, x, 429, "application/json", dsi__api_error_json(&e), MHD_HTTP_HEADER_RETRY_AFTER, "1");
        }
        if (rc) return respond_errf(c, x, 500, NULL, "out of memory");
        slot = true;
    }
    /* The worst case is reserved now, so concurrent requests cannot overspend
     * the key's tpm; on_completed's charge settles it, on every way out. */
    int retry = 0;
    int64_t worst = (int64_t)n + (int64_t)n_seq * max_tokens; /* the prompt once, n completions */
    if (x->have_pr && s->auth && dsi_auth_reserve(s->auth, &x->pr, worst, &retry) != DSI_AUTH_OK) {
        free(ids);
        if (slot) dsi__slots_release(s, x->pr.key_id, n_seq);
        char ra[16];
        snprintf(ra, sizeof ra, "%d", retry > 0 ? retry : 1);
        x->denial = dsi_auth_status_reason(DSI_AUTH_RATE_LIMITED);
        dsi__api_error_set(&e, 429, NULL, "rate_limit_exceeded",
                           "this request may use %lld tokens (prompt + n x max_tokens), more than the key has "
                           "left this minute; retry after %s s",
                           (long long)worst, ra);
        dsi_log(DSI_LOG_INFO, "http", "%s %s: 429 %s", x->req_id, dsi__route_name(x->route), x->denial);
        return respond(c, x, 429, "application/json", dsi__api_error_json(&e), MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    if (dsi__gen_create(s, c, &x->g)) {
        free(ids);
        if (slot) dsi__slots_release(s, x->pr.key_id, n_seq);
        return respond_errf(c, x, 500, NULL, "out of memory");
    }
    snprintf(x->g->principal, sizeof x->g->principal, "%s", x->have_pr ? x->pr.name : "");
    if (slot) {
        snprintf(x->g->slot_key, sizeof x->g->slot_key, "%s", x->pr.key_id);
        x->g->n_slots = n_seq;
    }
    if (x->have_pr) {
        /* the engine shares the batch between keys (FNV-1a of the key id names the tenant) */
        uint64_t h = 14695981039346656037ull;
        for (const char *p = x->pr.key_id; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
        x->g->tenant = h;
        x->g->weight = x->pr.priority;
    }
    dsi__gen_cache_ns(x->g, x->have_pr ? &x->pr : NULL, r->cache_salt);
    int st = dsi__gen_submit(x->g, r, ids, (int)n, max_tokens, &e);
    free(ids);
    if (st) return respond_error(c, x, &e);
    snprintf(x->req_id, sizeof x->req_id, "%s", x->g->id);
    if (r->stream) {
        struct MHD_Response *resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, dsi__gen_stream_reader, x->g, NULL);
        if (!resp) return MHD_NO;
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(resp, "X-Request-Id", x->req_id);
        close_if_leaving(x, resp);
        enum MHD_Result ok = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        x->status = 200;
        x->responded = true;
        return ok;
    }
    /* Non-streaming: park until the engine's final event resumes us. */
    pthread_mutex_lock(&x->g->mu);
    if (!x->g->finished) {
        x->g->suspended = true;
        MHD_suspend_connection(c);
    }
    pthread_mutex_unlock(&x->g->mu);
    return MHD_YES;
}

/* A resumed non-streaming generation: answer if finished, else park again. */
static enum MHD_Result gen_resumed(struct MHD_Connection *c, struct conn_ctx *x) {
    struct dsi__gen *g = x->g;
    dsi__gen_cancel_if_needed(g);
    pthread_mutex_lock(&g->mu);
    bool fin = g->finished;
    if (!fin) {
        g->suspended = true;
        MHD_suspend_connection(c);
    }
    pthread_mutex_unlock(&g->mu);
    if (!fin) return MHD_YES;
    int status = 500;
    char *body = dsi__gen_final_json(g, &status);
    return respond(c, x, status, "application/json", body, NULL, NULL);
}

static enum MHD_Result dispatch(struct dsi_server *s, struct MHD_Connection *c, struct conn_ctx *x) {
    enum MHD_Result res = MHD_YES;
    dsi__guard_mark(c, DSI__CONN_RECEIVED);
    switch (x->route) {
    case DSI__R_LIVE:
        if (!authorize(s, c, x, NULL, &res)) return res;
        /* a dead backend needs a restart: liveness fails too (Kubernetes restarts the pod) */
        if (dsi__srv_state(s) == DSI__ST_FAILED)
            return respond(c, x, 503, "application/json", strdup("{\"status\":\"failed\"}\n"), NULL, NULL);
        return respond(c, x, 200, "application/json", strdup("{\"status\":\"ok\"}\n"), NULL, NULL);
    case DSI__R_READY: {
        if (!authorize(s, c, x, NULL, &res)) return res;
        int st = dsi__srv_state(s);
        const char *name = st == DSI__ST_READY ? "ready" : st == DSI__ST_LOADING ? "loading"
                         : st == DSI__ST_LEAVING || st == DSI__ST_DRAINING ? "draining" : "failed";
        return respond(c, x, st == DSI__ST_READY ? 200 : 503, "application/json",
                       json_printf("{\"status\":\"%s\"}\n", name), NULL, NULL);
    }
    case DSI__R_METRICS: {
        if (!authorize(s, c, x, NULL, &res)) return res;
        struct dsi_engine_stats st = {0};
        pthread_rwlock_rdlock(&s->eng_lock);
        if (s->eng) dsi_engine_get_stats(s->eng, &st);
        pthread_rwlock_unlock(&s->eng_lock);
        char *m = dsi__smetrics_render(s->metrics, &st, dsi__srv_state(s) == DSI__ST_READY);
        char *a = NULL;
        if (m && s->auth && dsi_auth_metrics(s->auth, &a) == 0 && a) {
            char *both = json_printf("%s%s", m, a);
            free(m);
            m = both;
        }
        free(a);
        return respond(c, x, 200, "text/plain; version=0.0.4; charset=utf-8", m, NULL, NULL);
    }
    case DSI__R_MODELS:
        if (!authorize(s, c, x, s->model_names_nl, &res)) return res;
        snprintf(x->model, sizeof x->model, "%s", s->model_name);
        return route_models(s, c, x);
    default:
        break;
    }
    enum dsi__req_kind kind = x->route == DSI__R_COMPLETIONS ? DSI__REQ_COMPLETION
                            : x->route == DSI__R_TOKENIZE    ? DSI__REQ_TOKENIZE
                            : x->route == DSI__R_DETOKENIZE  ? DSI__REQ_DETOKENIZE
                                                             : DSI__REQ_CHAT;
    struct dsi__req r;
    memset(&r, 0, sizeof r);
    if (parse_body(s, c, x, kind, &r, &res)) {
        if (kind == DSI__REQ_TOKENIZE) res = route_tokenize(s, c, x, &r);
        else if (kind == DSI__REQ_DETOKENIZE) res = route_detokenize(s, c, x, &r);
        else res = route_generate(s, c, x, &r);
    }
    dsi__srv_req_free(&r);
    return res;
}

/* A request's context: made by the URI log callback (the first thing MHD tells us
 * about a request, with the target before unescaping), or by the handler if that
 * allocation failed. Freed in on_completed. */
static struct conn_ctx *ctx_new(struct dsi_server *s, struct MHD_Connection *c) {
    struct conn_ctx *x = calloc(1, sizeof *x);
    if (!x) return NULL;
    atomic_fetch_add(&s->active, 1);
    x->s = s;
    x->t0 = dsi_now_s();
    x->route = DSI__R_OTHER;
    snprintf(x->req_id, sizeof x->req_id, "req-%016" PRIx64, atomic_fetch_add(&s->next_id, 1));
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, x->remote, sizeof x->remote);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, x->remote, sizeof x->remote);
    }
    return x;
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c) {
    struct conn_ctx *x = ctx_new(cls, c);
    if (x) x->bad_uri = dsi__uri_error(uri);
    return x;
}

/* 400 (or 501) for a request whose framing or target is unsafe; the connection
 * is closed after it, since the rest of its bytes cannot be trusted. */
static enum MHD_Result refuse_framing(struct MHD_Connection *c, struct conn_ctx *x, int status, const char *why) {
    struct dsi__api_error e;
    dsi__api_error_set(&e, status, NULL, "bad_request", "malformed request: %s", why);
    dsi_log(DSI_LOG_INFO, "http", "%s from %s: %d %s", x->req_id, x->remote, status, why);
    return respond(c, x, status, "application/json", dsi__api_error_json(&e), MHD_HTTP_HEADER_CONNECTION, "close");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    struct dsi_server *s = cls;
    struct conn_ctx *x = *con_cls;
    if (!x) {
        if (!(x = ctx_new(s, c))) return MHD_NO;
        *con_cls = x;
    }
    if (!x->started) {
        x->started = true;
        int fst = 400;
        const char *why = x->bad_uri ? x->bad_uri : dsi__framing_error(c, version, s->raw_lines, &fst);
        if (why) return refuse_framing(c, x, x->bad_uri ? 400 : fst, why);
        dsi__guard_mark(c, DSI__CONN_HEADERS);
        int ri = -1;
        for (size_t i = 0; i < N_ROUTES; i++)
            if (!strcmp(url, ROUTES[i].path)) ri = (int)i;
        if (ri < 0) return respond_errf(c, x, 404, "not_found", "no route %.100s %.200s", method, url);
        x->route = ROUTES[ri].route;
        if (strcmp(method, ROUTES[ri].method) && !(strcmp(method, "HEAD") == 0 && !strcmp(ROUTES[ri].method, "GET"))) {
            struct dsi__api_error e;
            dsi__api_error_set(&e, 405, NULL, "method_not_allowed", "%s needs %s, not %.20s", ROUTES[ri].path,
                               ROUTES[ri].method, method);
            return respond(c, x, 405, "application/json", dsi__api_error_json(&e), MHD_HTTP_HEADER_ALLOW, ROUTES[ri].method);
        }
        /* Routes with a body: the key is checked now, on the headers, so that a client
         * without one gets its 401 at once and never gets "100 Continue", and its body
         * is never read or buffered (the connection closes after the answer). Only
         * one model is served, so the key's model list is checked against it: any of
         * its names (aliases, names.c) will do. */
        if (!strcmp(ROUTES[ri].method, "POST")) {
            enum MHD_Result res = MHD_YES;
            if (!authorize(s, c, x, s->model_names_nl, &res)) return res;
        }
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        unsigned long long declared = cl ? strtoull(cl, NULL, 10) : 0;
        if (declared > s->cfg->max_body_bytes) {
            /* Answer at once when the client waits for "100 Continue" (it has sent no
             * body) or when the body is absurd. Otherwise read and discard the body
             * first: a client still sending when the server answers and closes sees a
             * broken pipe instead of the 413. */
            const char *expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
            if ((expect && !strcasecmp(expect, "100-continue")) || declared > 16ull * s->cfg->max_body_bytes)
                return respond_errf(c, x, 413, "request_too_large", "request body exceeds %zu bytes",
                                    s->cfg->max_body_bytes);
            x->too_big = true;
        }
        return MHD_YES;
    }
    if (x->responded) {
        *upload_size = 0; /* rest of a refused upload: discard */
        return MHD_YES;
    }
    if (x->g) return gen_resumed(c, x);
    if (*upload_size) {
        if (!x->too_big && x->body.len + *upload_size > s->cfg->max_body_bytes) {
            x->too_big = true;
            dsi__sbuf_free(&x->body);
        }
        if (!x->too_big && dsi__sbuf_append(&x->body, upload, *upload_size)) return MHD_NO;
        *upload_size = 0;
        return MHD_YES;
    }
    return dispatch(s, c, x);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    struct dsi_server *s = cls;
    struct conn_ctx *x = *con_cls;
    dsi__guard_mark(c, DSI__CONN_NEXT); /* keep-alive: the next request's deadline starts now */
    if (!x) return;
    *con_cls = NULL;
    int prompt = 0, completion = 0;
    if (x->g) {
        dsi__gen_conn_done(x->g);
        pthread_mutex_lock(&x->g->mu);
        prompt = x->g->n_prompt;
        completion = x->g->n_completion;
        pthread_mutex_unlock(&x->g->mu);
    }
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && x->status == 200 && x->g)
        dsi_log(DSI_LOG_INFO, "http", "%s: client left before the end (code %d)", x->req_id, (int)toe);
    int status = x->status ? x->status : 499; /* nginx's "client closed request" */
    dsi__smetrics_request(s->metrics, x->route, status);
    if (prompt || completion) dsi__smetrics_tokens(s->metrics, prompt, completion);
    /* Also with no tokens: settles (refunds) what route_generate reserved. */
    if ((prompt || completion || x->pr.tpm_reserved) && x->have_pr && s->auth)
        dsi_auth_charge(s->auth, &x->pr, prompt, completion);
    if (s->audit && x->route != DSI__R_LIVE && x->route != DSI__R_READY) {
        struct dsi_audit_record a = {
            .request_id = x->req_id,
            .key_id = x->have_pr ? x->pr.key_id : NULL,
            .principal = x->have_pr ? x->pr.name : NULL,
            .role = x->have_pr ? x->pr.role : NULL,
            .remote_addr = x->remote,
            .route = dsi__route_name(x->route),
            .model = x->model[0] ? x->model : NULL,
            .denial = x->denial,
            .status = status,
            .prompt_tokens = prompt,
            .completion_tokens = completion,
            .latency_ms = (dsi_now_s() - x->t0) * 1000.0,
        };
        dsi_audit_write(s->audit, &a);
    }
    dsi__gen_release(x->g);
    dsi__sbuf_free(&x->body);
    free(x);
    atomic_fetch_sub(&s->active, 1);
}

/* Registers each connection with the guard (guard.c); its record, the socket
 * context, also makes the server reachable from the TLS certificate callback. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        *socket_context = dsi__guard_open(cls, c);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        dsi__guard_close(*socket_context);
        *socket_context = NULL;
    }
}

/* Worker threads: the configured count, or one per CPU between 2 and 8. */
static unsigned http_threads(const struct dsi_config *cfg) {
    if (cfg->http_threads > 0) return (unsigned)cfg->http_threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 2 ? 2u : n > 8 ? 8u : (unsigned)n;
}

/* The format attribute tells -Wformat-nonliteral (clang's -Wformat=2) that fmt is
 * libmicrohttpd's own printf format. */
__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap) {
    char msg[512];
    (void)cls;
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
    dsi_log(DSI_LOG_DEBUG, "mhd", "%s", msg);
}

int dsi__http_start(struct dsi_server *s, char **err) {
    const struct dsi_config *cfg = s->cfg;
    char host[256];
    int port;
    if (dsi__split_listen(cfg->listen, host, sizeof host, &port))
        return dsi_seterr(err, DSI_EINVAL, "listen '%s' is not ADDR:PORT (e.g. 127.0.0.1:8443 or [::1]:8443)",
                          cfg->listen ? cfg->listen : "");
    bool loop = dsi__host_is_loopback(host);
    if (cfg->plain_http && !loop)
        return dsi_seterr(err, DSI_EINVAL,
                          "plain_http is allowed only on a loopback address, not '%s'; use TLS or listen on 127.0.0.1",
                          host);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    bool v6 = false;
    if (!strcmp(host, "localhost")) snprintf(host, sizeof host, "127.0.0.1");
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        v6 = true;
    } else {
        return dsi_seterr(err, DSI_EINVAL, "listen address '%s' is not an IP address", host);
    }
    s->tls = !cfg->plain_http;
    s->raw_lines = dsi__framing_raw_lines_checkable();
    if (!s->raw_lines)
        dsi_log(DSI_LOG_WARN, "http", "libmicrohttpd %s: bare-LF line ends cannot be checked (needs 0.9.75's layout)",
                MHD_get_version());
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     (v6 ? MHD_USE_IPv6 : 0) | (s->tls ? MHD_USE_TLS : 0);
    struct MHD_OptionItem opts[24];
    int k = 0;
    opts[k++] = (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, &ss};
    opts[k++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT, cfg->client_timeout_s > 0 ? cfg->client_timeout_s : 0, NULL};
    if (cfg->max_connections > 0)
        opts[k++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT, cfg->max_connections, NULL};
    unsigned threads = http_threads(cfg);
    opts[k++] = (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE, threads, NULL};
    if (cfg->max_connections_per_ip > 0)
        opts[k++] = (struct MHD_OptionItem){MHD_OPTION_PER_IP_CONNECTION_LIMIT, cfg->max_connections_per_ip, NULL};
    /* What one connection may buffer before its request is authenticated: the
     * header block (bodies are read only after the key was checked). */
    opts[k++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_MEMORY_LIMIT, DSI__HEADER_BUF_BYTES, NULL};
    opts[k++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)on_connection, s};
    opts[k++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, s};
    opts[k++] = (struct MHD_OptionItem){MHD_OPTION_URI_LOG_CALLBACK, (intptr_t)on_uri, s};
    /* No MHD_OPTION_STRICT_FOR_CLIENT: in 0.9.75 it adds only a missing-Host check,
     * whose own 400 leaves the connection open for the next pipelined request;
     * framing.c checks Host itself and closes. */
    opts[k++] = (struct MHD_OptionItem){MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)mhd_log, s};
    if (s->tls) {
        /* The certificate comes from a callback so that SIGHUP can replace it (tlslive.c). */
        opts[k++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_CERT_CALLBACK, 0, (void *)dsi__tls_retrieve};
        opts[k++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)dsi__tls_priorities()};
        if (s->ca_pem) opts[k++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_TRUST, 0, s->ca_pem};
    }
    opts[k++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    int rc = dsi__guard_start(s, cfg->request_read_timeout_s, cfg->max_connections, err);
    if (rc) return rc;
    s->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, s, MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
    if (!s->d) {
        dsi__guard_stop(s);
        return dsi_seterr(err, DSI_EIO, "cannot listen on %s (address in use, bad TLS material, or no permission)",
                          cfg->listen);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : port;
    dsi_log(DSI_LOG_INFO, "http", "listening on %s%s%s:%d (%s, %u threads)", v6 ? "[" : "", host, v6 ? "]" : "", s->port,
            s->tls ? "HTTPS, TLS 1.3 only" : "plain HTTP, loopback only", threads);
    return 0;
}

void dsi__http_stop(struct dsi_server *s) {
    if (!s->d) return;
    MHD_stop_daemon(s->d);
    s->d = NULL;
    dsi__guard_stop(s);
}
