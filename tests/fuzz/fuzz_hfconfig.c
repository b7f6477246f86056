/* fuzz_hfconfig.c: libFuzzer target for the HF config.json parser. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "dsinfer/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct dsi_model_config c;
    char *err = NULL;
    if (dsi_model_config_parse((const char *)data, size, &c, &err) == 0) {
        /* Invariants later size arithmetic relies on. */
        if (c.n_heads <= 0 || c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads || c.head_dim <= 0 ||
            c.n_eos > DSI_MAX_EOS || c.vocab_size <= 0)
            abort();
        char *e2 = NULL;
        dsi_model_config_runnable(&c, &e2);
        free(e2);
    }
    free(err);
    return 0;
}
