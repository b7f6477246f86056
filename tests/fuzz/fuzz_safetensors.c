/* fuzz_safetensors.c: libFuzzer target for the safetensors header parser (from memory). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void run_image(const uint8_t *data, size_t size);

/* Each input is parsed twice: as a raw file image, and as a header JSON
 * wrapped with a correct length prefix and a 256-byte data region, so the
 * fuzzer reaches the per-tensor checks without guessing the prefix. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    run_image(data, size);
    if (size > (1u << 20)) return 0;
    uint8_t *img = malloc(8 + size + 256);
    if (!img) return 0;
    for (int i = 0; i < 8; i++)
        img[i] = (uint8_t)((uint64_t)size >> (8 * i));
    if (size) memcpy(img + 8, data, size);
    memset(img + 8 + size, 0x3c, 256);
    run_image(img, 8 + size + 256);
    free(img);
    return 0;
}

static void run_image(const uint8_t *data, size_t size) {
    struct dsi_safetensors st;
    char *err = NULL;
    if (dsi_st_open_mem(&st, data, size, "fuzz", &err) == 0) {
        /* Touch every tensor's bytes so a bad bounds check shows up in ASan. */
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < st.n_tensors; i++) {
            const struct dsi_tensor *t = &st.tensors[i];
            if (t->size_bytes)
                sink ^= ((const uint8_t *)t->data)[0] ^ ((const uint8_t *)t->data)[t->size_bytes - 1];
            if (dsi_st_find(&st, t->name) != t) abort();
            if (t->n_elems <= 4096) {
                float *f = malloc(t->n_elems * sizeof *f + 1);
                if (f) {
                    char *e2 = NULL;
                    dsi_tensor_to_f32(t, f, &e2);
                    free(e2);
                    free(f);
                }
            }
        }
        (void)sink;
        dsi_st_close(&st);
    }
    free(err);
}
