/*
 * test_engine_schemas.c: 500 random schemas (tests/test_schema_gen.h, seeded)
 * through the engine on the CPU backend with the tiny demo model (models/demo),
 * whose unconstrained output is noise (test_engine_grammar.c shows it). Each
 * schema must compile, and the demo model's output under it must end with finish
 * STOP and parse and validate against the schema with tests/test_json_schema.h,
 * a validator that shares no code with the schema compiler.
 *
 * max_tokens is the generator's bound on the value's bytes (+ 1 for the end
 * token), so a cut value would be a grammar bug, not bad luck; schemas whose
 * bound exceeds MAX_BOUND are skipped (and counted) to keep the run short.
 * Requests are sampled (temperature 1, a seed each) in waves of WAVE, batched.
 * Time (printed at the end): 11 s of CPU in Release, 39 s wall on the shared
 * 2-core machine while a full ctest ran beside it; labelled slow for the ASan
 * stage.
 */
#ifndef WAIT_LIMIT_S
#define WAIT_LIMIT_S 300
#endif
#include "test_engine_util.h"

#include <cjson/cJSON.h>

#include "dsinfer/backend.h"
#include "dsinfer/clock.h"
#include "dsinfer/grammar.h"
#include "dsinfer/model.h"
#include "dsinfer/tok.h"
#include "test_engine_rig.h"
#include "test_json_schema.h"
#include "test_schema_gen.h"

#define DEMO "models/demo"
#define N_SCHEMAS 500
#define MAX_BOUND 400
#define WAVE 50
#define SEED 0x5eed2026u

struct job {
    char *schema;          /* JSON text */
    struct dsi_grammar *gr;
    size_t bound;
};

TEST(demo_model_output_validates_against_500_random_schemas) {
    struct rig g;
    memset(&g, 0, sizeof g);
    if (rig_open(&g, DEMO, 64, 32, 512, 1024)) {
        CHECK(0);
        rig_close(&g);
        return;
    }
    double t0 = dsi_now_s();
    struct dsi_chat_msg msg = {.role = "user", .content = "Reply with JSON only."};
    int32_t *prompt = NULL;
    size_t n_prompt = 0;
    CHECK_EQ_INT(dsi_chat_encode(g.tok, DSI_CHAT_AUTO, &msg, 1, NULL, true, &prompt, &n_prompt, NULL), 0);
    int32_t im_end = dsi_tok_lookup(g.tok, "<|im_end|>");
    struct sgen gen = {.s = SEED};
    static struct job jobs[N_SCHEMAS];
    static struct rec recs[WAVE];
    int skipped = 0, valid_n = 0, stop_n = 0;
    size_t max_bound = 0, out_bytes = 0;
    for (int i = 0; i < N_SCHEMAS; i++) {
        for (;;) { /* a schema small enough to always fit max_tokens */
            cJSON *s = gen_schema(&gen, &jobs[i].bound);
            jobs[i].schema = jobs[i].bound <= MAX_BOUND ? cJSON_PrintUnformatted(s) : NULL;
            cJSON_Delete(s);
            if (jobs[i].schema) break;
            skipped++;
        }
        if (jobs[i].bound > max_bound) max_bound = jobs[i].bound;
        char *err = NULL;
        int rc = dsi_grammar_compile(jobs[i].schema, strlen(jobs[i].schema), &jobs[i].gr, &err);
        if (rc) fprintf(stderr, "  schema %d does not compile (%s): %s\n", i, err ? err : "?", jobs[i].schema);
        CHECK_EQ_INT(rc, 0);
        free(err);
    }
    for (int w = 0; w < N_SCHEMAS; w += WAVE) {
        struct coll c;
        coll_init(&c);
        int submitted = 0;
        for (int i = w; i < w + WAVE && i < N_SCHEMAS; i++) {
            if (!jobs[i].gr) continue;
            struct dsi_request_params rp;
            memset(&rp, 0, sizeof rp);
            rp.prompt = prompt;
            rp.n_prompt = (int)n_prompt;
            rp.max_tokens = (int)jobs[i].bound + 1;
            dsi_sampling_defaults(&rp.sampling);
            rp.sampling.temperature = 1.0f;
            rp.sampling.seed = SEED + (uint64_t)i;
            rp.stop_ids[rp.n_stop_ids++] = dsi_tok_eos(g.tok);
            if (im_end >= 0) rp.stop_ids[rp.n_stop_ids++] = im_end;
            rp.grammar = jobs[i].gr;
            rp.grammar_trie = g.trie;
            memset(&recs[i - w], 0, sizeof recs[i - w]);
            CHECK_EQ_INT(submit(g.e, &rp, &recs[i - w], &c), 0);
            submitted++;
        }
        coll_wait(&c, submitted);
        for (int i = w; i < w + WAVE && i < N_SCHEMAS; i++) {
            if (!jobs[i].gr) continue;
            struct rec *r = &recs[i - w];
            char *text = NULL;
            size_t len = 0;
            dsi_tok_decode(g.tok, r->tokens, (size_t)r->n, false, &text, &len, NULL);
            cJSON *sch = cJSON_Parse(jobs[i].schema), *v = text ? cJSON_Parse(text) : NULL;
            bool ok = v && valid(v, sch, sch);
            stop_n += r->final.finish == DSI_FINISH_STOP;
            if (!ok || r->final.finish != DSI_FINISH_STOP)
                fprintf(stderr, "  schema %d (finish %d): %s\n    output: %s\n", i, (int)r->final.finish,
                        jobs[i].schema, text ? text : "(null)");
            valid_n += ok;
            out_bytes += len;
            cJSON_Delete(v);
            cJSON_Delete(sch);
            free(text);
        }
        coll_free(&c);
    }
    CHECK_EQ_INT(valid_n, N_SCHEMAS);
    CHECK_EQ_INT(stop_n, N_SCHEMAS);
    /* the generator covered the whole subset, not one corner of it */
    for (int f = 0; f < 10; f++) CHECK(gen.used[f] >= 20);
    fprintf(stderr, "  %d schemas valid (%d skipped over %d bytes, largest bound %zu), %zu output bytes, %.1f s\n",
            valid_n, skipped, MAX_BOUND, max_bound, out_bytes, dsi_now_s() - t0);
    for (int i = 0; i < N_SCHEMAS; i++) {
        dsi_grammar_destroy(jobs[i].gr);
        free(jobs[i].schema);
    }
    free(prompt);
    rig_close(&g);
}

int main(void) {
    RUN(demo_model_output_validates_against_500_random_schemas);
    return test_summary();
}
