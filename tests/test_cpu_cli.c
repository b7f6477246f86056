/*
 * test_cpu_cli.c: `dsinfer logits|generate|quant-report` ($DSI_BIN) against the HF
 * references in tests/golden/models: logits rows at relative error <= 1e-3 (f32),
 * greedy continuations token for token, seeded sampling reproducible, and bad
 * inputs (ids out of range, prompt longer than the context, bad options, missing
 * model) answered with exit status 1 or 2 and one clear line, never a crash.
 */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"
#include "test_util.h"

#define GOLD "tests/golden/models/"

static const char *bin;
static char errpath[64];

static struct test_out run(const char *args) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "OMP_WAIT_POLICY=passive DSI_LOG_LEVEL=warn %s %s 2>%s", bin, args, errpath);
    return test_run_shell(cmd, errpath);
}

static char *ids_arg(const cJSON *arr) {
    static char buf[8192];
    size_t n = 0;
    buf[0] = 0;
    for (int i = 0; i < cJSON_GetArraySize(arr) && n < sizeof buf - 16; i++)
        n +=
            (size_t)snprintf(buf + n, sizeof buf - n, i ? ",%d" : "%d", cJSON_GetArrayItem(arr, i)->valueint);
    return buf;
}

static cJSON *load_ref(const char *name, float **rows, int *vocab, int which) {
    char path[256];
    snprintf(path, sizeof path, GOLD "%s.ref.json", name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *js = test_slurp_stream(f);
    fclose(f);
    cJSON *root = js ? cJSON_Parse(js) : NULL;
    free(js);
    snprintf(path, sizeof path, GOLD "%s.ref.bin", name);
    f = fopen(path, "rb");
    if (!f || !root) {
        if (f) fclose(f);
        cJSON_Delete(root);
        return NULL;
    }
    char magic[12];
    *rows = NULL;
    if (fread(magic, 1, 12, f) == 12) {
        for (int i = 0; i <= which; i++) {
            uint32_t hdr[2];
            if (fread(hdr, 4, 2, f) != 2) break;
            size_t n = (size_t)hdr[0] * hdr[1];
            float *buf = malloc(n * 4);
            if (!buf || fread(buf, 4, n, f) != n) {
                free(buf);
                break;
            }
            *vocab = (int)hdr[1];
            if (i == which)
                *rows = buf;
            else
                free(buf);
        }
    }
    fclose(f);
    return root;
}

static const char *const MODELS[] = {"qwen2-gqa-tied", "qwen2-untied",  "llama-mha", "llama-linear",
                                     "llama-llama3",   "llama-headdim", "tiny-chat", "dsv2-lite",
                                     "dsv3-tiny",      "dsv3-fp8"};

/* max over rows of max|a-b| / max|b|, or 1e9 when the output does not parse */
static double logits_err(const char *name, const char *extra, int which) {
    float *ref = NULL;
    int vocab = 0;
    cJSON *r = load_ref(name, &ref, &vocab, which);
    if (!r || !ref) {
        cJSON_Delete(r);
        free(ref);
        return 1e9;
    }
    cJSON *prompt = cJSON_GetArrayItem(cJSON_GetObjectItem(r, "prompts"), which);
    char args[9000];
    snprintf(args, sizeof args, "logits --model " GOLD "%s --ids %s %s", name, ids_arg(prompt), extra);
    struct test_out o = run(args);
    double worst = 1e9;
    cJSON *js = o.status == 0 && o.text ? cJSON_Parse(o.text) : NULL;
    cJSON *lg = cJSON_GetObjectItem(js, "logits");
    if (lg && cJSON_GetArraySize(lg) == cJSON_GetArraySize(prompt)) {
        worst = 0;
        for (int i = 0; i < cJSON_GetArraySize(lg); i++) {
            cJSON *row = cJSON_GetArrayItem(lg, i);
            if (cJSON_GetArraySize(row) != vocab) {
                worst = 1e9;
                break;
            }
            double md = 0, mb = 0;
            for (int v = 0; v < vocab; v++) {
                double a = cJSON_GetArrayItem(row, v)->valuedouble, b = ref[(size_t)i * vocab + v];
                if (fabs(a - b) > md) md = fabs(a - b);
                if (fabs(b) > mb) mb = fabs(b);
            }
            if (md / mb > worst) worst = md / mb;
        }
    } else {
        fprintf(stderr, "  %s: status %d, stderr: %s\n", name, o.status, o.err ? o.err : "");
    }
    cJSON_Delete(js);
    cJSON_Delete(r);
    free(ref);
    test_out_free(&o);
    return worst;
}

TEST(cli_logits_f32_match_hf) {
    for (size_t i = 0; i < sizeof MODELS / sizeof MODELS[0]; i++) {
        double e = logits_err(MODELS[i], "--dtype f32", 1);
        fprintf(stderr, "  %-16s max row rel err %.3g\n", MODELS[i], e);
        CHECK(e <= 1e-3);
    }
}

TEST(cli_logits_bf16_and_int8) {
    CHECK(logits_err("qwen2-gqa-tied", "--dtype bf16", 0) <= 1e-3);
    double e = logits_err("llama-llama3", "--dtype int8 --group-size 32", 2);
    CHECK(e <= 0.2 && e > 0);
}

TEST(cli_greedy_generate_matches_hf) {
    for (size_t i = 0; i < sizeof MODELS / sizeof MODELS[0]; i++) {
        float *ref = NULL;
        int vocab;
        cJSON *r = load_ref(MODELS[i], &ref, &vocab, 0);
        free(ref);
        if (!r) {
            CHECK(0);
            continue;
        }
        for (int p = 0; p < 3; p++) {
            char args[9000];
            snprintf(args, sizeof args,
                     "generate --model " GOLD
                     "%s --ids %s --max-tokens 16 --temperature 0 --ignore-eos --json "
                     "--dtype f32",
                     MODELS[i], ids_arg(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "prompts"), p)));
            struct test_out o = run(args);
            CHECK_EQ_INT(o.status, 0);
            cJSON *js = o.text ? cJSON_Parse(o.text) : NULL;
            char want[512];
            snprintf(want, sizeof want, "%s",
                     ids_arg(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "greedy"), p)));
            const char *got = ids_arg(cJSON_GetObjectItem(js, "ids"));
            if (strcmp(got, want))
                fprintf(stderr, "  %s prompt %d: got %s want %s\n", MODELS[i], p, got, want);
            CHECK_EQ_STR(got, want);
            cJSON_Delete(js);
            test_out_free(&o);
        }
        cJSON_Delete(r);
    }
}

/* temperature 2: the top of the one sampling range (docs/api.md), serve and CLI alike */
TEST(cli_seeded_sampling_reproducible) {
    const char *a =
        "generate --model " GOLD "llama-mha --ids 5,6,7 --max-tokens 16 --temperature 2 --seed 7 --json";
    struct test_out o1 = run(a), o2 = run(a);
    struct test_out o3 =
        run("generate --model " GOLD "llama-mha --ids 5,6,7 --max-tokens 16 --temperature 2 --seed 8 --json");
    CHECK_EQ_INT(o1.status, 0);
    CHECK(o1.text && o2.text && !strcmp(o1.text, o2.text));
    CHECK(o1.text && o3.text && strcmp(o1.text, o3.text) != 0);
    test_out_free(&o1);
    test_out_free(&o2);
    test_out_free(&o3);
}

TEST(cli_prompt_text_uses_the_tokenizer) {
    struct test_out o =
        run("generate --model " GOLD "tiny-chat --prompt 'Hello! What is the weather' --max-tokens 8 "
            "--temperature 0 --json");
    CHECK_EQ_INT(o.status, 0);
    CHECK(o.text && strstr(o.text, "\"text\":\""));
    CHECK(o.text && strstr(o.text, "\"prompt_tokens\":"));
    test_out_free(&o);
}

static void expect_fail(const char *args, int status, const char *msg) {
    struct test_out o = run(args);
    CHECK_EQ_INT(o.status, status);
    if (msg) {
        int has = o.err && strstr(o.err, msg) != NULL;
        if (!has) fprintf(stderr, "  stderr of '%s': %s\n", args, o.err ? o.err : "");
        CHECK(has);
    }
    test_out_free(&o);
}

TEST(cli_bad_inputs_fail_cleanly) {
    expect_fail("logits --model " GOLD "llama-mha --ids 1,256,3", 1, "out of range");
    expect_fail("generate --model " GOLD "llama-mha --ids -4 --max-tokens 2", 1, "out of range");
    /* 2049 ids: longer than max_position_embeddings 2048 */
    static char args[16000];
    size_t n = (size_t)snprintf(args, sizeof args, "logits --model " GOLD "llama-mha --ids 1");
    for (int i = 0; i < 2048; i++)
        n += (size_t)snprintf(args + n, sizeof args - n, ",1");
    expect_fail(args, 1, "context");
    expect_fail("logits --model " GOLD "llama-mha --ids 1,x", 2, "--ids");
    expect_fail("logits --model " GOLD "llama-mha --ids 1 --dtype f64", 2, "--dtype");
    expect_fail("logits --model " GOLD "llama-mha --ids 1 --dtype int8 --group-size 48", 1, "group size 48");
    expect_fail("logits --model tests/golden/models/does-not-exist --ids 1", 1, NULL);
    expect_fail("generate --model " GOLD "llama-mha", 2, NULL);
    expect_fail("generate --model " GOLD "llama-mha --ids 1 --temperature -1", 2, "--temperature");
    expect_fail("logits --model " GOLD "llama-mha --ids 1 --backend tpu", 1, "unknown backend");
}

TEST(cli_quant_report_prints_every_tensor) {
    struct test_out o = run("quant-report --model " GOLD "qwen2-gqa-tied --group-size 32");
    CHECK_EQ_INT(o.status, 0);
    CHECK(o.text && strstr(o.text, "model.layers.1.self_attn.q_proj.weight"));
    CHECK(o.text && strstr(o.text, "group-wise"));
    test_out_free(&o);
}

int main(void) {
    bin = getenv("DSI_BIN");
    if (!bin || access(bin, X_OK)) {
        fprintf(stderr, "DSI_BIN not set or not executable\n");
        return 77;
    }
    snprintf(errpath, sizeof errpath, "/tmp/dsi_cpu_cli_%d.err", (int)getpid());
    RUN(cli_logits_f32_match_hf);
    RUN(cli_logits_bf16_and_int8);
    RUN(cli_greedy_generate_matches_hf);
    RUN(cli_seeded_sampling_reproducible);
    RUN(cli_prompt_text_uses_the_tokenizer);
    RUN(cli_bad_inputs_fail_cleanly);
    RUN(cli_quant_report_prints_every_tensor);
    unlink(errpath);
    return test_summary();
}
