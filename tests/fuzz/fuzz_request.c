/*
 * fuzz_request.c: libFuzzer target for the HTTP request body parser. The first
 * byte picks the route kind; the rest is the body. Every parse result must be
 * freeable, and a successful chat parse must hold consistent fields.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/server/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int sink(void *user, enum dsi__channel ch, const char *s, size_t n) {
    struct dsi__sbuf *b = user;
    (void)ch;
    return dsi__sbuf_append(b, s, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const struct dsi__req_limits lim = {.max_body_bytes = 1 << 16, .max_messages = 64, .max_prompt_ids = 4096};
    enum dsi__req_kind kind = (enum dsi__req_kind)(data[0] % 4);
    struct dsi__req r;
    struct dsi__api_error e;
    int rc = dsi__srv_req_parse(kind, (const char *)data + 1, size - 1, &lim, &r, &e);
    if (rc == 0) {
        if (kind == DSI__REQ_CHAT && (r.n_msgs == 0 || !r.msgs)) abort();
        if (r.n_stops > DSI__MAX_STOPS) abort();
        for (size_t i = 0; i < r.n_msgs; i++)
            if (!r.msgs[i].role || !r.msgs[i].content) abort();
        if (r.sampling.top_logprobs > DSI_MAX_TOP_LOGPROBS || r.sampling.top_logprobs < 0) abort();
        /* Text post-processing over the parsed stops and a message body. */
        struct dsi__textgen t;
        dsi__textgen_init(&t, (const char *const *)r.stops, r.n_stops, data[0] & 4);
        struct dsi__sbuf b = {0};
        if (r.n_msgs) {
            const char *c = r.msgs[0].content;
            size_t n = strlen(c), half = n / 2;
            dsi__textgen_push(&t, c, half, sink, &b);
            dsi__textgen_push(&t, c + half, n - half, sink, &b);
            dsi__textgen_finish(&t, sink, &b);
        }
        dsi__textgen_free(&t);
        dsi__sbuf_free(&b);
    } else {
        if (rc < 400 || rc > 599 || e.status != rc || !e.message[0]) abort();
        char *j = dsi__api_error_json(&e);
        free(j);
    }
    dsi__srv_req_free(&r);
    return 0;
}
