/*
 * fuzz_kvcache.c: libFuzzer target for the KV block manager with prefix
 * caching (src/engine/kvcache.c): random admit / compute / grow / release
 * sequences against the model in tests/kv_model.h, with the cache on and off.
 * Any disagreement (a wrong prefix hit, a write to a shared block, a count
 * that does not add up) aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../kv_model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (int prefix = 0; prefix < 2; prefix++) {
        int line = kv_model_run(data, size, prefix);
        if (line) {
            fprintf(stderr, "kv_model.h:%d: model and block manager disagree (prefix %d)\n", line, prefix);
            abort();
        }
    }
    return 0;
}
