/* fuzz_wenc.c: libFuzzer target for the encrypted-file header and chunk
 * walk (include/dsinfer/wenc.h), from memory with a fixed key. Inputs are
 * parsed as a header against their own size, then decrypted: every path must
 * end in 0 or a clean error, never touch bytes past the input or the output. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/wenc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct dsi_wenc_header h;
    char *err = NULL;
    (void)dsi_wenc_header_parse(data, size, 0, "fuzz", &h, &err);
    free(err), err = NULL;
    if (dsi_wenc_header_parse(data, size, size, "fuzz", &h, &err) == 0 && h.plain_bytes <= (1u << 20)) {
        struct dsi_wenc_key k;
        uint8_t raw[DSI_WENC_KEY_LEN];
        memset(raw, 0x42, sizeof raw); /* the seed corpus is encrypted under this key */
        dsi_wenc_key_set(&k, raw);
        uint8_t *out = malloc(h.plain_bytes ? h.plain_bytes : 1);
        size_t got = 0;
        if (out) (void)dsi_wenc_decrypt_mem(&k, data, size, out, h.plain_bytes, &got, 1, "fuzz", NULL);
        free(out);
    }
    free(err);
    return 0;
}
