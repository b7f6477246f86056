/*
 * apierr.c: OpenAI error bodies {"error":{"message","type","param","code"}}.
 *
 * The "type" follows the HTTP status the way OpenAI's API spells it, so SDKs map
 * it to their exception classes (openai-node: BadRequestError for 400, ...).
 * A stream that fails after its status line gets the same object as an SSE event
 * followed by [DONE] (dsi__api_error_sse), built in a caller's fixed buffer.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static const char *type_for_status(int status) {
    switch (status) {
    case 400: case 404: case 405: case 413: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable";
    default: return "server_error";
    }
}

int dsi__api_error_set(struct dsi__api_error *e, int status, const char *param, const char *code,
                       const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    e->status = status;
    e->type = type_for_status(status);
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    e->code = code;
    return status;
}

char *dsi__api_error_json(const struct dsi__api_error *e) {
    struct dsi__sbuf b = {0};
    int rc = dsi__sbuf_printf(&b, "{\"error\":{\"message\":");
    if (!rc) rc = dsi__sbuf_json_str(&b, e->message, strlen(e->message));
    if (!rc) rc = dsi__sbuf_printf(&b, ",\"type\":\"%s\",\"param\":", e->type ? e->type : type_for_status(e->status));
    if (!rc) rc = e->param[0] ? dsi__sbuf_json_str(&b, e->param, strlen(e->param)) : dsi__sbuf_printf(&b, "null");
    if (!rc) rc = dsi__sbuf_printf(&b, ",\"code\":");
    if (!rc) rc = e->code ? dsi__sbuf_json_str(&b, e->code, strlen(e->code)) : dsi__sbuf_printf(&b, "null");
    if (!rc) rc = dsi__sbuf_printf(&b, "}}\n");
    if (rc) {
        dsi__sbuf_free(&b);
        return NULL;
    }
    return b.p;
}

size_t dsi__api_error_sse(const struct dsi__api_error *e, char *buf, size_t cap) {
    /* message, param and code are each escaped at most 6x: 255 + 63 + 63 bytes */
    char tmp[6 * (sizeof e->message + sizeof e->param + 64) + 256];
    size_t n = 0;
    n += (size_t)snprintf(tmp + n, sizeof tmp - n, "data: {\"error\":{\"message\":\"");
    n += dsi__json_escape_into(tmp + n, e->message, strnlen(e->message, sizeof e->message), "?");
    n += (size_t)snprintf(tmp + n, sizeof tmp - n, "\",\"type\":\"%s\",\"param\":",
                          e->type ? e->type : type_for_status(e->status));
    if (e->param[0]) {
        tmp[n++] = '"';
        n += dsi__json_escape_into(tmp + n, e->param, strnlen(e->param, sizeof e->param), "?");
        tmp[n++] = '"';
    } else {
        n += (size_t)snprintf(tmp + n, sizeof tmp - n, "null");
    }
    n += (size_t)snprintf(tmp + n, sizeof tmp - n, ",\"code\":");
    if (e->code) {
        tmp[n++] = '"';
        n += dsi__json_escape_into(tmp + n, e->code, strnlen(e->code, 63), "?");
        tmp[n++] = '"';
    } else {
        n += (size_t)snprintf(tmp + n, sizeof tmp - n, "null");
    }
    n += (size_t)snprintf(tmp + n, sizeof tmp - n, "}}\n\ndata: [DONE]\n\n");
    if (n >= cap) {
        /* a caller with a small buffer still gets a well-formed ending */
        static const char SHORT[] = "data: {\"error\":{\"message\":\"generation failed\",\"type\":\"server_error\","
                                    "\"param\":null,\"code\":null}}\n\ndata: [DONE]\n\n";
        n = sizeof SHORT - 1 < cap ? sizeof SHORT - 1 : 0;
        memcpy(buf, SHORT, n);
        if (n) buf[n] = 0;
        return n;
    }
    memcpy(buf, tmp, n);
    buf[n] = 0;
    return n;
}
