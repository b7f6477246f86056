/*
 * fuzz_tool_calls.c: libFuzzer target for the tool-call parsers of model output
 * (src/server/tools.c, src/server/toolscan.c). The first byte picks forced (the
 * answer is the constrained JSON) or auto, the syntax (<tool_call> tags or
 * DeepSeek-V3's tokens), index or not, and how the answer is split for the
 * streaming scanner; the rest is the answer. Whatever comes back must be a JSON
 * array of calls whose arguments are strings holding JSON objects, the text
 * before the calls a prefix of the answer, and the streamed scan must agree with
 * the whole-answer one: the same calls, and content that is the answer's bytes
 * in order (nothing invented).
 */
#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/server/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct seen {
    struct dsi__sbuf content, calls;
    int n_calls;
    bool with_index;
};

static int on_content(void *user, const char *s, size_t n) {
    struct seen *x = user;
    return dsi__sbuf_append(&x->content, s, n) ? -1 : 0;
}

static int on_call(void *user, const char *name, const char *args) {
    struct seen *x = user;
    cJSON *a = cJSON_Parse(args);
    if (!cJSON_IsObject(a) || !*name) abort();
    cJSON_Delete(a);
    int i = x->n_calls++;
    return dsi__srv_tool_call_json(&x->calls, "x", i, i > 0, x->with_index, name, args);
}

/* True when every byte of sub appears in s in order (content only drops bytes). */
static bool subsequence(const char *sub, size_t n, const char *s, size_t m) {
    size_t j = 0;
    for (size_t i = 0; i < m && j < n; i++)
        if (s[i] == sub[j]) j++;
    return j == n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    struct dsi__sbuf calls = {0};
    int n_calls = -1;
    size_t content_len = 0, n = size - 1;
    const char *text = (const char *)data + 1;
    bool forced = data[0] & 1, with_index = data[0] & 2;
    enum dsi__tool_syntax syn = data[0] & 4 ? DSI__TOOLS_DEEPSEEK : DSI__TOOLS_TAGS;
    int rc = dsi__srv_tool_calls_extract(text, n, forced, syn, "x", with_index, &calls, &n_calls, &content_len);
    if (rc == 0) {
        if (n_calls < 0 || content_len > n) abort();
        if (n_calls > 0) {
            cJSON *j = cJSON_ParseWithLength(calls.p, calls.len);
            if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) != n_calls) abort();
            const cJSON *c;
            cJSON_ArrayForEach(c, j) {
                const cJSON *args = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c, "function"),
                                                                     "arguments");
                cJSON *a = cJSON_IsString(args) ? cJSON_Parse(args->valuestring) : NULL;
                if (!cJSON_IsObject(a)) abort();
                cJSON_Delete(a);
            }
            cJSON_Delete(j);
        }
    }
    if (!forced && rc == 0) {
        /* the same answer streamed in pieces of 1..8 bytes */
        struct seen x = {.with_index = with_index};
        struct dsi__toolscan ts;
        struct dsi__toolscan_cb cb = {on_content, on_call, &x};
        dsi__toolscan_init(&ts, syn);
        size_t step = 1 + (data[0] >> 5), off = 0;
        int src = 0;
        while (!src && off < n) {
            size_t k = n - off < step ? n - off : step;
            src = dsi__toolscan_push(&ts, text + off, k, &cb);
            off += k;
        }
        if (!src) src = dsi__toolscan_finish(&ts, &cb);
        dsi__toolscan_free(&ts);
        if (!src) {
            if (x.n_calls != n_calls) abort();
            if (n_calls && (x.calls.len != calls.len - 2 || memcmp(x.calls.p, calls.p + 1, x.calls.len))) abort();
            if (!subsequence(x.content.p, x.content.len, text, n)) abort();
        }
        dsi__sbuf_free(&x.content);
        dsi__sbuf_free(&x.calls);
    }
    dsi__sbuf_free(&calls);
    return 0;
}
