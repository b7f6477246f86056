/* test_model_config.c: HF config.json parsing for every family in tests/golden/configs. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/model.h"
#include "test.h"

static int load_golden(const char *name, struct dsi_model_config *c, char **err) {
    char path[256];
    snprintf(path, sizeof path, "tests/golden/configs/%s", name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "  cannot open %s (tests run from the source root)\n", path);
        return -1;
    }
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return dsi_model_config_parse(buf, n, c, err);
}

static int parse(const char *json, struct dsi_model_config *c, char **err) {
    return dsi_model_config_parse(json, strlen(json), c, err);
}

TEST(config_r1_distill_qwen_1_5b) {
    struct dsi_model_config c;
    char *err = NULL;
    CHECK_EQ_INT(load_golden("r1-distill-qwen-1.5b.json", &c, &err), 0);
    CHECK(c.arch == DSI_ARCH_QWEN2);
    CHECK_EQ_STR(c.architecture, "Qwen2ForCausalLM");
    CHECK_EQ_INT(c.hidden_size, 1536);
    CHECK_EQ_INT(c.intermediate_size, 8960);
    CHECK_EQ_INT(c.n_layers, 28);
    CHECK_EQ_INT(c.n_heads, 12);
    CHECK_EQ_INT(c.n_kv_heads, 2);
    CHECK_EQ_INT(c.head_dim, 128);
    CHECK_EQ_INT(c.vocab_size, 151936);
    CHECK_EQ_INT(c.max_position_embeddings, 131072);
    CHECK(c.attention_bias); /* Qwen2 q/k/v carry a bias without saying so */
    CHECK(!c.tie_word_embeddings);
    CHECK(c.dtype == DSI_DT_BF16);
    CHECK_NEAR(c.rope_theta, 10000.0, 1e-3);
    CHECK(c.rope.type == DSI_ROPE_DEFAULT);
    CHECK_NEAR(c.rms_norm_eps, 1e-6, 1e-12);
    CHECK_EQ_INT(c.bos_token_id, 151643);
    CHECK_EQ_INT(c.n_eos, 1);
    CHECK_EQ_INT(c.eos_token_ids[0], 151643);
    CHECK_EQ_INT(dsi_model_config_runnable(&c, &err), 0);
    CHECK(err == NULL);
}

TEST(config_r1_distill_qwen_7b_both_spellings_agree) {
    struct dsi_model_config a, b;
    char *err = NULL;
    CHECK_EQ_INT(load_golden("r1-distill-qwen-7b.json", &a, &err), 0);
    CHECK_EQ_INT(load_golden("r1-distill-qwen-7b-tf5.json", &b, &err), 0);
    CHECK_EQ_INT(a.hidden_size, 3584);
    CHECK_EQ_INT(a.n_heads, 28);
    CHECK_EQ_INT(a.n_kv_heads, 4);
    CHECK_EQ_INT(a.intermediate_size, 18944);
    CHECK_EQ_INT(a.vocab_size, 152064);
    CHECK(b.dtype == DSI_DT_BF16);           /* from "dtype" */
    CHECK_NEAR(b.rope_theta, 10000.0, 1e-3); /* from rope_parameters.rope_theta */
    CHECK(memcmp(&a, &b, sizeof a) == 0);
}

TEST(config_deepseek_llm_7b_llama_defaults) {
    struct dsi_model_config c;
    char *err = NULL;
    CHECK_EQ_INT(load_golden("deepseek-llm-7b.json", &c, &err), 0);
    CHECK(c.arch == DSI_ARCH_LLAMA);
    CHECK_EQ_INT(c.n_layers, 30);
    CHECK_EQ_INT(c.n_kv_heads, 32);
    CHECK_EQ_INT(c.head_dim, 128);
    CHECK_EQ_INT(c.vocab_size, 102400);
    CHECK(!c.attention_bias);
    CHECK(c.rope.type == DSI_ROPE_DEFAULT); /* rope_scaling: null */
    CHECK_EQ_INT(c.eos_token_ids[0], 100001);
    CHECK_EQ_INT(dsi_model_config_runnable(&c, &err), 0);
}

TEST(config_deepseek_coder_linear_rope) {
    struct dsi_model_config c;
    char *err = NULL;
    CHECK_EQ_INT(load_golden("deepseek-coder-6.7b.json", &c, &err), 0);
    CHECK(c.rope.type == DSI_ROPE_LINEAR);
    CHECK_NEAR(c.rope.factor, 4.0, 1e-6);
    CHECK_NEAR(c.rope_theta, 100000.0, 1e-2);
    CHECK_EQ_INT(c.vocab_size, 32256);
    CHECK_EQ_INT(c.max_position_embeddings, 16384);
    CHECK_EQ_INT(dsi_model_config_runnable(&c, &err), 0);
}

TEST(config_r1_distill_llama_llama3_rope_both_spellings) {
    struct dsi_model_config a, b;
    char *err = NULL;
    CHECK_EQ_INT(load_golden("r1-distill-llama-8b.json", &a, &err), 0);
    CHECK_EQ_INT(load_golden("r1-distill-llama-8b-tf5.json", &b, &err), 0);
    CHECK(a.rope.type == DSI_ROPE_LLAMA3);
    CHECK_NEAR(a.rope.factor, 8.0, 1e-6);
    CHECK_NEAR(a.rope.low_freq_factor, 1.0, 1e-6);
    CHECK_NEAR(a.rope.high_freq_factor, 4.0, 1e-6);
    CHECK_EQ_INT(a.rope.original_max_position_embeddings, 8192);
    CHECK_NEAR(a.rope_theta, 500000.0, 1e-1);
    CHECK_NEAR(a.rms_norm_eps, 1e-5, 1e-12);
    CHECK_EQ_INT(a.n_kv_heads, 8);
    CHECK_EQ_INT(a.vocab_size, 128256);
    CHECK(b.rope.type == DSI_ROPE_LLAMA3);
    CHECK_NEAR(b.rope_theta, 500000.0, 1e-1);
    CHECK_EQ_INT(b.head_dim, 128);
    CHECK_EQ_INT(b.n_eos, 3); /* eos_token_id as a list */
    CHECK_EQ_INT(b.eos_token_ids[2], 128009);
    CHECK(b.dtype == DSI_DT_BF16);
    CHECK_EQ_INT(dsi_model_config_runnable(&a, &err), 0);
}

TEST(config_deepseek_v2_lite_parses_and_is_runnable) {
    struct dsi_model_config c;
    char *err = NULL;
    CHECK_EQ_INT(load_golden("deepseek-v2-lite.json", &c, &err), 0);
    CHECK(c.arch == DSI_ARCH_DEEPSEEK_V2);
    CHECK_EQ_INT(c.q_lora_rank, 0); /* null in the config: no q compression */
    CHECK_EQ_INT(c.kv_lora_rank, 512);
    CHECK_EQ_INT(c.qk_nope_head_dim, 128);
    CHECK_EQ_INT(c.qk_rope_head_dim, 64);
    CHECK_EQ_INT(c.v_head_dim, 128);
    CHECK_EQ_INT(c.head_dim, 64);
    CHECK_EQ_INT(c.n_routed_experts, 64);
    CHECK_EQ_INT(c.n_shared_experts, 2);
    CHECK_EQ_INT(c.num_experts_per_tok, 6);
    CHECK_EQ_INT(c.moe_intermediate_size, 1408);
    CHECK_EQ_INT(c.first_k_dense_replace, 1);
    CHECK(c.rope.type == DSI_ROPE_YARN);
    CHECK_NEAR(c.rope.factor, 40.0, 1e-6);
    CHECK_NEAR(c.rope.mscale_all_dim, 0.707, 1e-6);
    CHECK_EQ_INT(c.rope.original_max_position_embeddings, 4096);
    CHECK(!c.quant_fp8);
    CHECK_EQ_INT(dsi_model_config_runnable(&c, &err), 0); /* MLA + MoE + YaRN run on the CPU */
    c.rope.type = DSI_ROPE_DYNAMIC;
    CHECK_EQ_INT(dsi_model_config_runnable(&c, &err), DSI_EUNSUPPORTED);
    CHECK(err && strstr(err, "DeepseekV2ForCausalLM") && strstr(err, "dynamic"));
    free(err);
}

TEST(config_deepseek_v3_yarn_and_fp8) {
    struct dsi_model_config c;
    char *err = NULL;
    CHECK_EQ_INT(load_golden("deepseek-v3.json", &c, &err), 0);
    CHECK(c.arch == DSI_ARCH_DEEPSEEK_V3);
    CHECK_EQ_INT(c.n_layers, 61);
    CHECK_EQ_INT(c.hidden_size, 7168);
    CHECK_EQ_INT(c.q_lora_rank, 1536);
    CHECK_EQ_INT(c.n_routed_experts, 256);
    CHECK_EQ_INT(c.n_group, 8);
    CHECK_EQ_INT(c.topk_group, 4);
    CHECK_NEAR(c.routed_scaling_factor, 2.5, 1e-6);
    CHECK(c.rope.type == DSI_ROPE_YARN);
    CHECK_NEAR(c.rope.beta_fast, 32.0, 1e-6);
    CHECK(c.quant_fp8);
    CHECK(c.quant_block[0] == 128 && c.quant_block[1] == 128);
    CHECK_EQ_INT(c.bos_token_id, 0);
    CHECK_EQ_INT(dsi_model_config_runnable(&c, &err), 0);
    free(err);
}

TEST(config_unknown_architecture_is_named) {
    struct dsi_model_config c;
    char *err = NULL;
    CHECK_EQ_INT(parse("{\"architectures\":[\"MistralForCausalLM\"],\"hidden_size\":8}", &c, &err),
                 DSI_EUNSUPPORTED);
    CHECK(err && strstr(err, "architecture MistralForCausalLM is not supported (supported: "));
    CHECK(err && strstr(err, "Qwen2ForCausalLM"));
    free(err), err = NULL;
    CHECK_EQ_INT(parse("{\"hidden_size\":8}", &c, &err), DSI_EUNSUPPORTED);
    free(err);
}

TEST(config_model_type_fallback_and_defaults) {
    struct dsi_model_config c;
    char *err = NULL;
    CHECK_EQ_INT(parse("{\"model_type\":\"llama\",\"vocab_size\":100,\"hidden_size\":64,"
                       "\"intermediate_size\":128,\"num_hidden_layers\":2,"
                       "\"num_attention_heads\":4}",
                       &c, &err),
                 0);
    CHECK(c.arch == DSI_ARCH_LLAMA);
    CHECK_EQ_INT(c.n_kv_heads, 4);
    CHECK_EQ_INT(c.head_dim, 16);
    CHECK(!c.attention_bias && !c.tie_word_embeddings);
    CHECK(c.dtype == DSI_DT_F32);
    CHECK_EQ_INT(c.bos_token_id, -1);
    CHECK_EQ_INT(c.n_eos, 0);
    CHECK_NEAR(c.rope_theta, 10000.0, 1e-3);
    CHECK_EQ_INT(parse("{\"model_type\":\"llama\",\"vocab_size\":100,\"hidden_size\":64,"
                       "\"intermediate_size\":128,\"num_hidden_layers\":2,"
                       "\"num_attention_heads\":4,\"attention_bias\":true,"
                       "\"tie_word_embeddings\":true,\"torch_dtype\":\"float16\"}",
                       &c, &err),
                 0);
    CHECK(c.attention_bias && c.tie_word_embeddings && c.dtype == DSI_DT_F16);
    CHECK(err == NULL);
}

TEST(config_runnable_refuses_sliding_window_and_mlp_bias) {
    struct dsi_model_config c;
    char *err = NULL;
    CHECK_EQ_INT(parse("{\"architectures\":[\"Qwen2ForCausalLM\"],\"vocab_size\":100,"
                       "\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                       "\"num_attention_heads\":4,\"use_sliding_window\":true,"
                       "\"sliding_window\":512}",
                       &c, &err),
                 0);
    CHECK_EQ_INT(c.sliding_window, 512);
    CHECK_EQ_INT(dsi_model_config_runnable(&c, &err), DSI_EUNSUPPORTED);
    CHECK(err && strstr(err, "use_sliding_window"));
    free(err), err = NULL;
    CHECK_EQ_INT(parse("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,"
                       "\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                       "\"num_attention_heads\":4,\"mlp_bias\":true}",
                       &c, &err),
                 0);
    CHECK(c.mlp_bias);
    CHECK_EQ_INT(dsi_model_config_runnable(&c, &err), DSI_EUNSUPPORTED);
    CHECK(err && strstr(err, "mlp_bias"));
    free(err);
}

#define BASE                                                                                                 \
    "\"architectures\":[\"Qwen2ForCausalLM\"],\"vocab_size\":100,\"intermediate_size\":128,\"num_hidden_"    \
    "layers\":2"

TEST(config_rejects_bad_values) {
    static const struct {
        const char *json, *needle;
        int code;
    } cases[] = {
        {"{" BASE ",\"num_attention_heads\":4}", "hidden_size", DSI_EFORMAT},
        {"{" BASE ",\"hidden_size\":64,\"num_attention_heads\":4,\"num_key_value_heads\":3}", "multiple",
         DSI_EFORMAT},
        {"{" BASE ",\"hidden_size\":66,\"num_attention_heads\":4}", "head_dim", DSI_EFORMAT},
        {"{" BASE ",\"hidden_size\":66,\"num_attention_heads\":4,\"head_dim\":null}", "head_dim",
         DSI_EFORMAT},
        {"{" BASE ",\"hidden_size\":64,\"num_attention_heads\":4,\"head_dim\":15}", "even", DSI_EFORMAT},
        {"{" BASE ",\"hidden_size\":-64,\"num_attention_heads\":4}", "hidden_size", DSI_EFORMAT},
        {"{" BASE ",\"hidden_size\":64.5,\"num_attention_heads\":4}", "hidden_size", DSI_EFORMAT},
        {"{" BASE ",\"hidden_size\":\"64\",\"num_attention_heads\":4}", "hidden_size", DSI_EFORMAT},
        {"{" BASE ",\"hidden_size\":1e300,\"num_attention_heads\":4}", "hidden_size", DSI_EFORMAT},
        {"{" BASE ",\"hidden_size\":64,\"num_attention_heads\":4,\"eos_token_id\":[1,2,3,4,5,6,7,8,9]}",
         "eos_token_id", DSI_EFORMAT},
        {"{" BASE ",\"hidden_size\":64,\"num_attention_heads\":4,\"eos_token_id\":100}", "vocab_size",
         DSI_EFORMAT},
        {"{" BASE ",\"hidden_size\":64,\"num_attention_heads\":4,\"eos_token_id\":\"x\"}", "eos_token_id",
         DSI_EFORMAT},
        {"{" BASE ",\"hidden_size\":64,\"num_attention_heads\":4,\"rope_scaling\":{\"type\":\"su\"}}",
         "\"su\"", DSI_EUNSUPPORTED},
        {"{" BASE ",\"hidden_size\":64,\"num_attention_heads\":4,\"rope_scaling\":[1]}", "rope_scaling",
         DSI_EFORMAT},
        {"{" BASE ",\"hidden_size\":64,\"num_attention_heads\":4,\"rope_scaling\":{\"rope_type\":"
         "\"llama3\",\"factor\":8}}",
         "llama3", DSI_EFORMAT},
        {"{" BASE ",\"hidden_size\":64,\"num_attention_heads\":4,\"torch_dtype\":\"int4\"}", "int4",
         DSI_EUNSUPPORTED},
        {"{" BASE ",\"hidden_size\":64,\"num_attention_heads\":4,\"tie_word_embeddings\":1}",
         "tie_word_embeddings", DSI_EFORMAT},
        {"{" BASE ",\"hidden_size\":64,\"num_attention_heads\":4,\"rope_theta\":0}", "rope_theta",
         DSI_EFORMAT},
        {"[1,2]", "not a JSON object", DSI_EFORMAT},
        {"{\"architectures\":[", "not a JSON object", DSI_EFORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct dsi_model_config c;
        char *err = NULL;
        int rc = parse(cases[i].json, &c, &err);
        CHECK_EQ_INT(rc, cases[i].code);
        if (!err || !strstr(err, cases[i].needle))
            fprintf(stderr, "  case %zu: message \"%s\" lacks \"%s\"\n", i, err ? err : "(null)",
                    cases[i].needle);
        CHECK(err && strstr(err, cases[i].needle));
        free(err);
    }
}

TEST(config_rejects_bad_moe) {
    struct dsi_model_config c;
    char *err = NULL;
    CHECK_EQ_INT(parse("{\"architectures\":[\"DeepseekV3ForCausalLM\"],\"vocab_size\":100,"
                       "\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                       "\"num_attention_heads\":4,\"kv_lora_rank\":16,\"qk_nope_head_dim\":8,"
                       "\"qk_rope_head_dim\":8,\"v_head_dim\":8,\"n_routed_experts\":4,"
                       "\"num_experts_per_tok\":8}",
                       &c, &err),
                 DSI_EFORMAT);
    CHECK(err && strstr(err, "expert"));
    free(err), err = NULL;
    CHECK_EQ_INT(parse("{\"architectures\":[\"DeepseekV3ForCausalLM\"],\"vocab_size\":100,"
                       "\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                       "\"num_attention_heads\":4}",
                       &c, &err),
                 DSI_EFORMAT);
    CHECK(err && strstr(err, "kv_lora_rank"));
    free(err);
}

static int load_file(const char *path, struct dsi_model_config *c, char **err) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return dsi_model_config_parse(buf, n, c, err);
}

/* The HF fixtures' config.json (original spelling: rope_scaling with "type",
 * rope_theta on top, torch_dtype) and the same config as transformers 5 saves it
 * (rope_parameters, dtype, head_dim, qk_head_dim) give one struct. */
TEST(config_deepseek_fixtures_both_spellings_agree) {
    const char *names[] = {"dsv2-lite", "dsv3-tiny", "dsv3-fp8"};
    for (int i = 0; i < 3; i++) {
        char p1[256], p2[256];
        snprintf(p1, sizeof p1, "tests/golden/models/%s/config.json", names[i]);
        snprintf(p2, sizeof p2, "tests/golden/models/%s.config-hf5.json", names[i]);
        struct dsi_model_config a, b;
        char *err = NULL;
        CHECK_EQ_INT(load_file(p1, &a, &err), 0);
        CHECK_EQ_INT(load_file(p2, &b, &err), 0);
        free(err);
        const unsigned char *x = (const void *)&a, *y = (const void *)&b;
        for (size_t k = 0; k < sizeof a; k++)
            if (x[k] != y[k]) fprintf(stderr, "  %s: configs differ at byte %zu\n", names[i], k);
        CHECK(!memcmp(&a, &b, sizeof a));
        CHECK(dsi_model_is_mla(&a));
    }
    struct dsi_model_config c;
    char *err = NULL;
    CHECK_EQ_INT(load_file("tests/golden/models/dsv3-tiny/config.json", &c, &err), 0);
    CHECK(c.topk_method == DSI_TOPK_NOAUX_TC && c.scoring_func == DSI_SCORE_SIGMOID && c.norm_topk_prob);
    CHECK_EQ_INT(c.n_group, 4);
    CHECK_EQ_INT(c.topk_group, 2);
    CHECK_EQ_INT(c.n_mtp_layers, 1);
    CHECK(c.rope.type == DSI_ROPE_YARN && c.rope_interleave);
    CHECK_NEAR(c.rope.mscale_all_dim, 0.8, 1e-6);
    /* HF's DeepseekV3Attention.scaling for this config, recorded by the generator */
    CHECK_NEAR(dsi_mla_softmax_scale(&c), 0.21816130317415047, 1e-7);
    CHECK(!dsi_model_layer_is_moe(&c, 0) && dsi_model_layer_is_moe(&c, 1) && dsi_model_layer_is_moe(&c, 2));
    CHECK_EQ_INT(load_file("tests/golden/models/dsv2-lite/config.json", &c, &err), 0);
    CHECK(c.topk_method == DSI_TOPK_GREEDY && c.scoring_func == DSI_SCORE_SOFTMAX && !c.norm_topk_prob);
    CHECK_EQ_INT(c.q_lora_rank, 0);
    CHECK_NEAR(dsi_mla_softmax_scale(&c), 0.1767766952966369, 1e-7);
    CHECK_EQ_INT(load_file("tests/golden/models/dsv3-fp8/config.json", &c, &err), 0);
    CHECK(c.quant_fp8 && c.quant_block[0] == 128 && c.quant_block[1] == 128);
    CHECK_NEAR(dsi_mla_softmax_scale(&c), 0.18713033519502428, 1e-7);
    free(err);
}

/* Published configs: the router fields and the layers that are MoE. */
TEST(config_deepseek_router_fields) {
    struct dsi_model_config c;
    char *err = NULL;
    CHECK_EQ_INT(load_golden("deepseek-v3.json", &c, &err), 0);
    CHECK(c.topk_method == DSI_TOPK_NOAUX_TC && c.scoring_func == DSI_SCORE_SIGMOID && c.norm_topk_prob);
    CHECK_EQ_INT(c.n_mtp_layers, 1);
    CHECK_EQ_INT(c.moe_layer_freq, 1);
    CHECK(!dsi_model_layer_is_moe(&c, 2) && dsi_model_layer_is_moe(&c, 3) && dsi_model_layer_is_moe(&c, 60));
    float m = 0.1f * logf(40.0f) + 1.0f;
    CHECK_NEAR(dsi_mla_softmax_scale(&c), m * m / sqrtf(192.0f), 1e-7);
    CHECK_EQ_INT(load_golden("deepseek-v2-lite.json", &c, &err), 0);
    CHECK(c.topk_method == DSI_TOPK_GREEDY && c.scoring_func == DSI_SCORE_SOFTMAX && !c.norm_topk_prob);
    CHECK_EQ_INT(c.n_mtp_layers, 0);
    CHECK(c.rope_interleave);
    CHECK(!dsi_model_layer_is_moe(&c, 0) && dsi_model_layer_is_moe(&c, 1));
    free(err);
}

/* Keys a case puts first win: cJSON finds the first of duplicate keys. */
#define DSV3_BASE                                                                                            \
    "\"architectures\":[\"DeepseekV3ForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"                 \
    "\"intermediate_size\":128,\"num_hidden_layers\":4,\"num_attention_heads\":4,\"kv_lora_rank\":16,"       \
    "\"qk_nope_head_dim\":8,\"qk_rope_head_dim\":8,\"v_head_dim\":8,\"n_routed_experts\":8,"                 \
    "\"moe_intermediate_size\":16,\"num_experts_per_tok\":2,\"n_group\":4,\"topk_group\":2"

/* A value we do not implement is an error at load naming it, never a default. */
TEST(config_deepseek_unimplemented_values_are_errors) {
    static const struct {
        const char *extra, *needle;
        int rc;
    } cases[] = {
        {"\"topk_method\":\"random\",", "topk_method \"random\" is not implemented", DSI_EUNSUPPORTED},
        {"\"scoring_func\":\"tanh\",", "scoring_func \"tanh\" is not implemented", DSI_EUNSUPPORTED},
        {"\"scoring_func\":3,", "scoring_func", DSI_EUNSUPPORTED},
        {"\"hidden_act\":\"gelu\",", "hidden_act \"gelu\"", DSI_EUNSUPPORTED},
        {"\"attention_bias\":true,", "attention_bias", DSI_EUNSUPPORTED},
        {"\"quantization_config\":{\"quant_method\":\"fp8\",\"fmt\":\"e5m2\"},", "e4m3", DSI_EUNSUPPORTED},
        {"\"quantization_config\":{\"quant_method\":\"awq\"},", "quant_method", DSI_EUNSUPPORTED},
        {"\"n_group\":8,\"topk_group\":1,", "router cannot pick", DSI_EFORMAT}, /* 1 expert per group */
        {"\"topk_method\":\"group_limited_greedy\",\"topk_group\":1,\"num_experts_per_tok\":3,",
         "router cannot pick", DSI_EFORMAT},
        {"\"moe_layer_freq\":0,", "moe_layer_freq", DSI_EFORMAT},
        {"\"moe_intermediate_size\":0,", "moe_intermediate_size", DSI_EFORMAT},
        {"\"qk_rope_head_dim\":7,", "qk_rope_head_dim", DSI_EFORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char json[1024];
        snprintf(json, sizeof json, "{%s%s}", cases[i].extra, DSV3_BASE);
        struct dsi_model_config c;
        char *err = NULL;
        int rc = parse(json, &c, &err);
        if (rc != cases[i].rc || !err || !strstr(err, cases[i].needle))
            fprintf(stderr, "  case %zu: rc %d, message \"%s\"\n", i, rc, err ? err : "(null)");
        CHECK_EQ_INT(rc, cases[i].rc);
        CHECK(err && strstr(err, cases[i].needle));
        free(err);
    }
    /* the base itself parses, with V3's defaults; moe_layer_freq 2 skips odd layers */
    struct dsi_model_config c;
    char *err = NULL;
    CHECK_EQ_INT(parse("{\"moe_layer_freq\":2,\"first_k_dense_replace\":1," DSV3_BASE "}", &c, &err), 0);
    CHECK(c.topk_method == DSI_TOPK_NOAUX_TC && c.scoring_func == DSI_SCORE_SIGMOID);
    CHECK_NEAR(c.routed_scaling_factor, 2.5, 1e-6);
    CHECK(!dsi_model_layer_is_moe(&c, 0) && !dsi_model_layer_is_moe(&c, 1) && dsi_model_layer_is_moe(&c, 2) &&
          !dsi_model_layer_is_moe(&c, 3));
    CHECK_EQ_INT(parse("{\"rope_interleave\":false,\"scoring_func\":\"softmax\","
                             "\"topk_method\":\"group_limited_greedy\"," DSV3_BASE "}",
                       &c, &err),
                 0);
    CHECK(!c.rope_interleave && c.scoring_func == DSI_SCORE_SOFTMAX &&
          c.topk_method == DSI_TOPK_GROUP_LIMITED_GREEDY);
    free(err);
}

TEST(config_load_names_the_folder) {
    struct dsi_model_config c;
    char *err = NULL;
    CHECK_EQ_INT(dsi_model_config_load("tests/golden/no-such-model", &c, &err), DSI_ENOENT);
    CHECK(err && strstr(err, "no-such-model/config.json"));
    free(err);
    CHECK_EQ_STR(dsi_arch_name(DSI_ARCH_DEEPSEEK_V3), "DeepseekV3ForCausalLM");
    CHECK_EQ_STR(dsi_rope_type_name(DSI_ROPE_LLAMA3), "llama3");
}

int main(void) {
    RUN(config_r1_distill_qwen_1_5b);
    RUN(config_r1_distill_qwen_7b_both_spellings_agree);
    RUN(config_deepseek_llm_7b_llama_defaults);
    RUN(config_deepseek_coder_linear_rope);
    RUN(config_r1_distill_llama_llama3_rope_both_spellings);
    RUN(config_deepseek_v2_lite_parses_and_is_runnable);
    RUN(config_deepseek_v3_yarn_and_fp8);
    RUN(config_unknown_architecture_is_named);
    RUN(config_model_type_fallback_and_defaults);
    RUN(config_runnable_refuses_sliding_window_and_mlp_bias);
    RUN(config_rejects_bad_values);
    RUN(config_rejects_bad_moe);
    RUN(config_deepseek_fixtures_both_spellings_agree);
    RUN(config_deepseek_router_fields);
    RUN(config_deepseek_unimplemented_values_are_errors);
    RUN(config_load_names_the_folder);
    return test_summary();
}
