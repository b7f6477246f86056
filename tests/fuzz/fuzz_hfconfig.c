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
        /* MLA + MoE: what the router and the KV sizing rely on. */
        if (dsi_model_is_mla(&c)) {
            int per = c.n_group > 0 ? c.n_routed_experts / c.n_group : 0;
            if (c.kv_lora_rank <= 0 || c.qk_rope_head_dim <= 0 || c.qk_rope_head_dim % 2 || c.n_group <= 0 ||
                c.topk_group > c.n_group || (c.n_routed_experts && c.n_routed_experts % c.n_group) ||
                (c.n_routed_experts && (c.num_experts_per_tok < 1 || c.moe_intermediate_size < 1)) ||
                (c.n_routed_experts && c.topk_method != DSI_TOPK_GREEDY &&
                 c.num_experts_per_tok > c.topk_group * per) ||
                (c.n_routed_experts && c.topk_method == DSI_TOPK_NOAUX_TC && per < 2) ||
                c.moe_layer_freq < 1 || !(dsi_mla_softmax_scale(&c) > 0.0f) ||
                dsi_model_kv_values_per_token_layer(&c) == 0)
                abort();
            for (int l = 0; l < c.n_layers && l < 8; l++)
                (void)dsi_model_layer_is_moe(&c, l);
        }
        char *e2 = NULL;
        dsi_model_config_runnable(&c, &e2);
        free(e2);
    }
    free(err);
    return 0;
}
