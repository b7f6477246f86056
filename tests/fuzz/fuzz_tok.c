/*
 * fuzz_tok.c: libFuzzer target over the tokenizer loader and encoder.
 *
 * Input: a tokenizer.json text, then optionally a NUL byte and a text fragment. When
 * the file loads, the fragment (if valid UTF-8) is encoded with and without special
 * tokens, decoded, and streamed; decode(encode(x)) must not crash and the stream must
 * agree with the full decode. Seeds: tests/fuzz/corpus/tok/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *d = (const char *)data;
    const char *nul = memchr(d, 0, size);
    size_t jl = nul ? (size_t)(nul - d) : size;
    const char *text = nul ? nul + 1 : "hello world 123 <s>";
    size_t tl = nul ? size - jl - 1 : strlen(text);
    struct dsi_tokenizer *t = NULL;
    char *err = NULL;
    if (dsi_tok_load_mem(d, jl, NULL, 0, &t, &err) != 0) {
        free(err);
        return 0;
    }
    for (int special = 0; special < 2; special++) {
        int32_t *ids = NULL;
        size_t n = 0;
        char *e2 = NULL;
        if (dsi_tok_encode(t, text, tl, special, &ids, &n, &e2) == 0) {
            char *dec = NULL;
            size_t dl = 0;
            if (dsi_tok_decode(t, ids, n, false, &dec, &dl, NULL) == 0) {
                struct dsi_tok_stream *s = NULL;
                size_t got = 0;
                if (dsi_tok_stream_create(t, false, &s) == 0) {
                    for (size_t i = 0; i <= n; i++) {
                        char *out = NULL;
                        size_t ol = 0;
                        int rc = i < n ? dsi_tok_stream_push(s, ids[i], &out, &ol) : dsi_tok_stream_flush(s, &out, &ol);
                        if (rc == 0 && out) {
                            if (got + ol > dl || memcmp(dec + got, out, ol) != 0) abort(); /* stream != decode */
                            got += ol;
                        }
                        free(out);
                    }
                    if (got != dl) abort();
                    dsi_tok_stream_destroy(s);
                }
                free(dec);
            }
            free(ids);
        }
        free(e2);
    }
    struct dsi_chat_msg m[2] = {{.role = "system", .content = "s"}, {.role = "user", .content = "u"}};
    char *chat = NULL;
    if (dsi_chat_render(t, DSI_CHAT_AUTO, m, 2, NULL, true, &chat, NULL) == 0) free(chat);
    (void)dsi_tok_lookup(t, "<s>");
    dsi_tok_free(t);
    return 0;
}
