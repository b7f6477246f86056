/*
 * test_engine_grammar.c: constrained decoding through the engine (issue 22) on the
 * CPU backend with the tiny demo model (models/demo), whose output unconstrained
 * is noise. With a grammar every request must end with finish STOP and text that
 * parses as JSON and validates against its schema (tests/test_json_schema.h),
 * greedy and sampled, several at once in one batch.
 */
#ifndef WAIT_LIMIT_S
#define WAIT_LIMIT_S 120
#endif
#include "test_engine_util.h"

#include <cjson/cJSON.h>

#include "dsinfer/backend.h"
#include "dsinfer/grammar.h"
#include "dsinfer/model.h"
#include "dsinfer/tok.h"
#include "test_engine_rig.h"
#include "test_json_schema.h"

#define DEMO "models/demo"
#define MAX_GEN 160

static const char *schemas[] = {
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},\"age\":{\"type\":"
    "\"integer\"},\"ok\":{\"type\":\"boolean\"}},\"required\":[\"name\",\"age\",\"ok\"],"
    "\"additionalProperties\":false}",
    "{\"type\":\"object\",\"properties\":{\"priority\":{\"enum\":[\"low\",\"medium\",\"high\"]},\"tags\":"
    "{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":6},\"maxItems\":3},\"score\":{\"anyOf\":"
    "[{\"type\":\"number\"},{\"type\":\"null\"}]}},\"required\":[\"priority\",\"tags\",\"score\"],"
    "\"additionalProperties\":false}",
    "{\"$defs\":{\"item\":{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\"},\"label\":"
    "{\"type\":\"string\",\"maxLength\":5}},\"required\":[\"id\",\"label\"],\"additionalProperties\":false}},"
    "\"type\":\"object\",\"properties\":{\"items\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/item\"},"
    "\"minItems\":1,\"maxItems\":2},\"total\":{\"type\":\"number\"}},\"required\":[\"items\",\"total\"],"
    "\"additionalProperties\":false}",
    ("{\"type\":\"object\",\"properties\":{\"answer\":{\"const\":\"yes\"},\"why\":{\"type\":\"string\","
     "\"minLength\":1,\"maxLength\":8}},\"required\":[\"answer\",\"why\"],\"additionalProperties\":false}"),
};
#define N_SCHEMAS (int)(sizeof schemas / sizeof *schemas)

static int32_t *prompt_ids(const struct rig *g, size_t *n) {
    struct dsi_chat_msg msgs[] = {{.role = "user", .content = "Reply with JSON only."}};
    char *text = NULL;
    int32_t *ids = NULL;
    dsi_chat_render(g->tok, dsi_tok_chat_format(g->tok), msgs, 1, NULL, true, &text, NULL);
    if (text) dsi_tok_encode(g->tok, text, strlen(text), true, &ids, n, NULL);
    free(text);
    return ids;
}

/* Runs one batch: every schema, greedy and two seeds, all submitted at once. */
TEST(demo_model_outputs_schema_valid_json) {
    struct rig g;
    memset(&g, 0, sizeof g);
    if (rig_open(&g, DEMO, 16, 16, 256, 512)) {
        CHECK(0);
        rig_close(&g);
        return;
    }
    size_t n_prompt = 0;
    int32_t *prompt = prompt_ids(&g, &n_prompt);
    CHECK(prompt && n_prompt > 0);
    enum { PER = 2 }; /* greedy and one seed per schema */
    struct dsi_grammar *gr[N_SCHEMAS];
    static struct rec recs[N_SCHEMAS * PER];
    struct coll c;
    coll_init(&c);
    int submitted = 0;
    for (int s = 0; s < N_SCHEMAS; s++) {
        char *err = NULL;
        gr[s] = NULL;
        CHECK_EQ_INT(dsi_grammar_compile(schemas[s], strlen(schemas[s]), &gr[s], &err), 0);
        free(err);
        for (int k = 0; k < PER && gr[s]; k++) {
            struct dsi_request_params rp;
            memset(&rp, 0, sizeof rp);
            rp.prompt = prompt;
            rp.n_prompt = (int)n_prompt;
            rp.max_tokens = MAX_GEN;
            dsi_sampling_defaults(&rp.sampling);
            rp.sampling.temperature = k == 0 ? 0.0f : 1.0f;
            rp.sampling.seed = 1000u * (unsigned)s + (unsigned)k;
            rp.stop_ids[rp.n_stop_ids++] = dsi_tok_eos(g.tok);
            int32_t im_end = dsi_tok_lookup(g.tok, "<|im_end|>");
            if (im_end >= 0) rp.stop_ids[rp.n_stop_ids++] = im_end;
            rp.grammar = gr[s];
            rp.grammar_trie = g.trie;
            CHECK_EQ_INT(submit(g.e, &rp, &recs[s * PER + k], &c), 0);
            submitted++;
        }
    }
    coll_wait(&c, submitted);
    int valid_n = 0;
    for (int s = 0; s < N_SCHEMAS; s++) {
        cJSON *sch = cJSON_Parse(schemas[s]);
        for (int k = 0; k < PER; k++) {
            struct rec *r = &recs[s * PER + k];
            char *text = NULL;
            size_t len = 0;
            dsi_tok_decode(g.tok, r->tokens, (size_t)r->n, false, &text, &len, NULL);
            CHECK_EQ_INT(r->final.finish, DSI_FINISH_STOP);
            cJSON *v = text ? cJSON_Parse(text) : NULL;
            bool ok = v && valid(v, sch, sch);
            if (!ok) fprintf(stderr, "  schema %d run %d: not valid: %s\n", s, k, text ? text : "(null)");
            valid_n += ok;
            cJSON_Delete(v);
            free(text);
        }
        cJSON_Delete(sch);
    }
    CHECK_EQ_INT(valid_n, submitted);
    rig_close(&g);
    for (int s = 0; s < N_SCHEMAS; s++)
        dsi_grammar_destroy(gr[s]);
    coll_free(&c);
    free(prompt);
}

/* The same request without a grammar: the demo model does not write JSON by itself,
 * so the test above proves the constraint, not the model. */
TEST(demo_model_without_grammar_is_not_json) {
    struct rig g;
    memset(&g, 0, sizeof g);
    if (rig_open(&g, DEMO, 16, 16, 256, 512)) {
        CHECK(0);
        rig_close(&g);
        return;
    }
    size_t n_prompt = 0;
    int32_t *prompt = prompt_ids(&g, &n_prompt);
    struct coll c;
    coll_init(&c);
    static struct rec r;
    struct dsi_request_params rp;
    memset(&rp, 0, sizeof rp);
    rp.prompt = prompt;
    rp.n_prompt = (int)n_prompt;
    rp.max_tokens = 24;
    dsi_sampling_defaults(&rp.sampling);
    rp.sampling.temperature = 0.0f;
    CHECK_EQ_INT(submit(g.e, &rp, &r, &c), 0);
    coll_wait(&c, 1);
    char *text = NULL;
    size_t len = 0;
    dsi_tok_decode(g.tok, r.tokens, (size_t)r.n, false, &text, &len, NULL);
    cJSON *v = text ? cJSON_Parse(text) : NULL;
    CHECK(v == NULL || !cJSON_IsObject(v));
    cJSON_Delete(v);
    free(text);
    free(prompt);
    coll_free(&c);
    rig_close(&g);
}

int main(void) {
    RUN(demo_model_outputs_schema_valid_json);
    RUN(demo_model_without_grammar_is_not_json);
    return test_summary();
}
