/*
 * fuzz_tool_calls.c: libFuzzer target for the tool-call parser of model output
 * (src/server/tools.c). The first byte picks forced (the answer is the
 * constrained JSON) or auto (<tool_call> blocks in text); the rest is the answer.
 * Whatever comes back must be a JSON array of calls whose arguments are strings
 * holding JSON objects, and the text before the calls a prefix of the answer.
 */
#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/server/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    struct dsi__sbuf calls = {0};
    int n_calls = -1;
    size_t content_len = 0;
    const char *text = (const char *)data + 1;
    int rc = dsi__srv_tool_calls_extract(text, size - 1, data[0] & 1, "x", data[0] & 2, &calls, &n_calls, &content_len);
    if (rc == 0) {
        if (n_calls < 0 || content_len > size - 1) abort();
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
    dsi__sbuf_free(&calls);
    return 0;
}
