/*
 * test_answer.c: the JSON of an answer with several choices (src/server/answer.c),
 * driven without an engine: a hand-built generation whose choices get their text
 * the way gen.c hands it over (dsi__answer_emit per decoded piece, then
 * dsi__answer_tools and the final chunk). The pieces of the choices interleave
 * byte by byte, as the engine's events of n sequences do, so a tool-call scanner,
 * held text or call list shared between choices would mix them up.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/server/srv.h"
#include "test.h"

#define N_CH 3

/* What a client rebuilds from a stream, per choice. */
struct seen {
    char content[512];
    char names[4][32], args[4][128], ids[4][64];
    int n_calls;
    char finish[32];
    int n_finish, n_role;
};

static struct dsi_server *srv;
static struct dsi__gen *gen;

/* A generation of n choices in tool mode mode (0 none, 1 auto, 2 forced). */
static void gen_setup(int n, bool stream, int mode, const char *prefill) {
    srv = calloc(1, sizeof *srv);
    snprintf(srv->model_name, sizeof srv->model_name, "tiny-chat");
    gen = calloc(1, sizeof *gen);
    gen->s = srv;
    gen->chat = true;
    gen->stream = stream;
    gen->tool_mode = mode;
    gen->tool_syn = DSI__TOOLS_TAGS;
    gen->prefill = prefill ? strdup(prefill) : NULL;
    snprintf(gen->id, sizeof gen->id, "chatcmpl-t");
    gen->ch = calloc((size_t)n, sizeof *gen->ch);
    gen->n_choices = n;
    for (int i = 0; i < n; i++) {
        gen->ch[i].g = gen;
        gen->ch[i].index = i;
        dsi__toolscan_init(&gen->ch[i].scan, gen->tool_syn);
    }
}

static void gen_teardown(void) {
    for (int i = 0; i < gen->n_choices; i++) {
        struct dsi__choice *c = &gen->ch[i];
        dsi__toolscan_free(&c->scan);
        dsi__sbuf_free(&c->calls);
        dsi__sbuf_free(&c->content);
        dsi__sbuf_free(&c->reasoning);
        dsi__sbuf_free(&c->lp);
    }
    dsi__sbuf_free(&gen->out);
    free(gen->prefill);
    free(gen->ch);
    free(gen);
    free(srv);
}

/* Feeds every choice its text, one byte of each in turn, then ends them all
 * (tools, and in a stream the final chunk) as gen.c's finish_choice does. */
static void feed_interleaved(const char *const *texts, enum dsi_finish finish) {
    size_t pos = 0;
    bool more = true;
    while (more) {
        more = false;
        for (int i = 0; i < gen->n_choices; i++) {
            if (pos >= strlen(texts[i])) continue;
            CHECK_EQ_INT(dsi__answer_emit(&gen->ch[i], DSI__CH_CONTENT, texts[i] + pos, 1), 0);
            more = true;
        }
        pos++;
    }
    for (int i = 0; i < gen->n_choices; i++) {
        struct dsi__choice *c = &gen->ch[i];
        c->finished = true;
        if (c->finish == DSI_FINISH_NONE) c->finish = finish; /* else preset by the test */
        if (gen->tool_mode) CHECK_EQ_INT(dsi__answer_tools(c), 0);
        if (gen->stream) CHECK_EQ_INT(dsi__answer_delta(c, DSI__CH_CONTENT, NULL, 0, true), 0);
    }
}

static void copy_str(char *dst, size_t size, const cJSON *v) {
    if (cJSON_IsString(v)) snprintf(dst + strlen(dst), size - strlen(dst), "%s", v->valuestring);
}

/* Rebuilds each choice from gen->out as an OpenAI client does; every chunk must
 * hold exactly one choice. */
static void parse_stream(struct seen out[N_CH]) {
    memset(out, 0, sizeof(struct seen) * N_CH);
    CHECK_EQ_INT(dsi__sbuf_append(&gen->out, "", 1), 0); /* NUL-terminate */
    char *p = gen->out.p;
    while (p && (p = strstr(p, "data: ")) != NULL) {
        p += 6;
        char *end = strstr(p, "\n\n");
        if (!end) break;
        *end = 0;
        cJSON *j = cJSON_Parse(p);
        CHECK(j != NULL);
        if (!j) {
            fprintf(stderr, "  not JSON: %s\n", p);
            break;
        }
        const cJSON *chs = cJSON_GetObjectItemCaseSensitive(j, "choices");
        CHECK_EQ_INT(cJSON_GetArraySize(chs), 1);
        const cJSON *c = cJSON_GetArrayItem(chs, 0);
        int idx = cJSON_GetObjectItemCaseSensitive(c, "index")->valueint;
        CHECK(idx >= 0 && idx < N_CH);
        if (idx < 0 || idx >= N_CH) idx = 0;
        struct seen *s = &out[idx];
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(c, "delta");
        if (cJSON_GetObjectItemCaseSensitive(d, "role")) s->n_role++;
        copy_str(s->content, sizeof s->content, cJSON_GetObjectItemCaseSensitive(d, "content"));
        const cJSON *tc;
        cJSON_ArrayForEach(tc, cJSON_GetObjectItemCaseSensitive(d, "tool_calls")) {
            int k = cJSON_GetObjectItemCaseSensitive(tc, "index")->valueint;
            CHECK(k >= 0 && k < 4);
            if (k < 0 || k >= 4) continue;
            if (k + 1 > s->n_calls) s->n_calls = k + 1;
            copy_str(s->ids[k], sizeof s->ids[k], cJSON_GetObjectItemCaseSensitive(tc, "id"));
            const cJSON *f = cJSON_GetObjectItemCaseSensitive(tc, "function");
            copy_str(s->names[k], sizeof s->names[k], cJSON_GetObjectItemCaseSensitive(f, "name"));
            copy_str(s->args[k], sizeof s->args[k], cJSON_GetObjectItemCaseSensitive(f, "arguments"));
        }
        const cJSON *fr = cJSON_GetObjectItemCaseSensitive(c, "finish_reason");
        if (cJSON_IsString(fr)) {
            s->n_finish++;
            copy_str(s->finish, sizeof s->finish, fr);
        }
        cJSON_Delete(j);
        p = end + 2;
    }
}

/* tool_choice auto, streamed: each choice's scanner holds only its own tail and
 * its calls go out with its index, numbered from 0, with ids unique in the answer. */
TEST(stream_auto_calls_per_choice) {
    gen_setup(N_CH, true, 1, NULL);
    for (int i = 0; i < N_CH; i++) CHECK_EQ_INT(dsi__answer_role_chunk(&gen->ch[i]), 0);
    const char *texts[N_CH] = {
        "Sure. <tool_call>{\"name\":\"f\",\"arguments\":{\"a\":1}}</tool_call>",
        ("<tool_call>{\"name\":\"g\",\"arguments\":{}}</tool_call>\n"
         "<tool_call>{\"name\":\"f\",\"arguments\":{\"a\":2}}</tool_call>"),
        "No call here, only a <tool_ mention.",
    };
    feed_interleaved(texts, DSI_FINISH_STOP);
    struct seen s[N_CH];
    parse_stream(s);
    for (int i = 0; i < N_CH; i++) CHECK_EQ_INT(s[i].n_role, 1);
    for (int i = 0; i < N_CH; i++) CHECK_EQ_INT(s[i].n_finish, 1);
    CHECK_EQ_STR(s[0].content, "Sure."); /* the blanks before a call go */
    CHECK_EQ_INT(s[0].n_calls, 1);
    CHECK_EQ_STR(s[0].names[0], "f");
    CHECK_EQ_STR(s[0].args[0], "{\"a\":1}");
    CHECK_EQ_STR(s[0].ids[0], "call_chatcmpl-t_0");
    CHECK_EQ_STR(s[0].finish, "tool_calls");
    CHECK_EQ_STR(s[1].content, "");
    CHECK_EQ_INT(s[1].n_calls, 2); /* a second call's chunk is valid JSON too */
    CHECK_EQ_STR(s[1].names[0], "g");
    CHECK_EQ_STR(s[1].args[0], "{}");
    CHECK_EQ_STR(s[1].names[1], "f");
    CHECK_EQ_STR(s[1].args[1], "{\"a\":2}");
    CHECK_EQ_STR(s[1].ids[0], "call_chatcmpl-t_1_0");
    CHECK_EQ_STR(s[1].ids[1], "call_chatcmpl-t_1_1");
    CHECK_EQ_STR(s[1].finish, "tool_calls");
    CHECK_EQ_STR(s[2].content, texts[2]);
    CHECK_EQ_INT(s[2].n_calls, 0);
    CHECK_EQ_STR(s[2].finish, "stop");
    gen_teardown();
}

static const cJSON *choice_at(const cJSON *root, int i) {
    return cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "choices"), i);
}

/* The non-streaming answer: n choices in index order, each with its own calls
 * (or text), and usage once for the whole answer. */
TEST(final_auto_calls_per_choice) {
    gen_setup(2, false, 1, NULL);
    gen->n_prompt = 11;
    gen->n_completion = 40;
    const char *texts[2] = {
        "<tool_call>{\"name\":\"f\",\"arguments\":{\"a\":1}}</tool_call>",
        "plain text <tool_call>{\"name\":\"g\",\"arguments\":{\"b\":[1,2]}}</tool_call>",
    };
    feed_interleaved(texts, DSI_FINISH_STOP);
    struct dsi__sbuf b = {0};
    CHECK_EQ_INT(dsi__answer_final(gen, &b), 0);
    CHECK_EQ_INT(dsi__sbuf_append(&b, "", 1), 0);
    cJSON *j = cJSON_Parse(b.p);
    CHECK(j != NULL);
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "choices")), 2);
    for (int i = 0; i < 2; i++) {
        const cJSON *c = choice_at(j, i);
        CHECK_EQ_INT(cJSON_GetObjectItemCaseSensitive(c, "index")->valueint, i);
        CHECK_EQ_STR(cJSON_GetObjectItemCaseSensitive(c, "finish_reason")->valuestring, "tool_calls");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(c, "message");
        const cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        CHECK_EQ_INT(cJSON_GetArraySize(calls), 1);
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(calls, 0), "function");
        CHECK_EQ_STR(cJSON_GetObjectItemCaseSensitive(f, "name")->valuestring, i ? "g" : "f");
        CHECK_EQ_STR(cJSON_GetObjectItemCaseSensitive(f, "arguments")->valuestring, i ? "{\"b\":[1,2]}" : "{\"a\":1}");
        CHECK_EQ_STR(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(calls, 0), "id")->valuestring,
                     i ? "call_chatcmpl-t_1_0" : "call_chatcmpl-t_0");
    }
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(choice_at(j, 0), "message"),
                                                        "content")));
    CHECK_EQ_STR(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(choice_at(j, 1), "message"), "content")
            ->valuestring,
        "plain text"); /* the blanks before a call go */
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
    CHECK_EQ_INT(cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens")->valueint, 11);
    CHECK_EQ_INT(cJSON_GetObjectItemCaseSensitive(u, "completion_tokens")->valueint, 40);
    CHECK_EQ_INT(cJSON_GetObjectItemCaseSensitive(u, "total_tokens")->valueint, 51);
    cJSON_Delete(j);
    dsi__sbuf_free(&b);
    gen_teardown();
}

/* Forced calls in ChatML's native syntax: every choice's answer follows the one
 * prefilled opening; each becomes its own call, and a choice cut off by
 * max_tokens stays text with finish_reason length while the others are calls. */
TEST(forced_prefill_calls_per_choice) {
    for (int stream = 0; stream < 2; stream++) {
        gen_setup(N_CH, stream, 2, "<tool_call>\n");
        const char *texts[N_CH] = {
            "{\"name\":\"f\",\"arguments\":{\"x\":1}}\n</tool_call>",
            "{\"name\":\"f\",\"arguments\":{\"x\":22}}\n</tool_call>",
            "{\"name\":\"f\",\"argu",
        };
        /* the grammar ends the first two with the closing marker (STOP); the third
         * ran out of tokens */
        gen->ch[2].finish = DSI_FINISH_LENGTH;
        feed_interleaved(texts, DSI_FINISH_STOP);
        struct seen s[N_CH];
        if (stream) {
            parse_stream(s);
            CHECK_EQ_INT(s[0].n_calls, 1);
            CHECK_EQ_STR(s[0].args[0], "{\"x\":1}");
            CHECK_EQ_INT(s[1].n_calls, 1);
            CHECK_EQ_STR(s[1].args[0], "{\"x\":22}");
            CHECK_EQ_STR(s[1].ids[0], "call_chatcmpl-t_1_0");
            CHECK_EQ_INT(s[2].n_calls, 0);
            CHECK_EQ_STR(s[2].content, texts[2]);
            for (int i = 0; i < 2; i++) CHECK_EQ_STR(s[i].finish, "tool_calls");
            CHECK_EQ_STR(s[2].finish, "length");
        } else {
            struct dsi__sbuf b = {0};
            CHECK_EQ_INT(dsi__answer_final(gen, &b), 0);
            CHECK_EQ_INT(dsi__sbuf_append(&b, "", 1), 0);
            cJSON *j = cJSON_Parse(b.p);
            CHECK(j != NULL);
            for (int i = 0; i < 2; i++) {
                const cJSON *m = cJSON_GetObjectItemCaseSensitive(choice_at(j, i), "message");
                const cJSON *f = cJSON_GetObjectItemCaseSensitive(
                    cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(m, "tool_calls"), 0), "function");
                CHECK_EQ_STR(cJSON_GetObjectItemCaseSensitive(f, "arguments")->valuestring,
                             i ? "{\"x\":22}" : "{\"x\":1}");
            }
            const cJSON *c2 = choice_at(j, 2);
            CHECK_EQ_STR(cJSON_GetObjectItemCaseSensitive(c2, "finish_reason")->valuestring, "length");
            const cJSON *m2 = cJSON_GetObjectItemCaseSensitive(c2, "message");
            CHECK(cJSON_GetObjectItemCaseSensitive(m2, "tool_calls") == NULL);
            CHECK_EQ_STR(cJSON_GetObjectItemCaseSensitive(m2, "content")->valuestring, texts[2]);
            cJSON_Delete(j);
            dsi__sbuf_free(&b);
        }
        gen_teardown();
    }
}

/* Without tools a stream's text goes out at once, each piece in a chunk of its
 * own choice. */
TEST(stream_text_chunks_name_their_choice) {
    gen_setup(2, true, 0, NULL);
    const char *texts[2] = {"abc", "xyz!"};
    feed_interleaved(texts, DSI_FINISH_LENGTH);
    struct seen s[N_CH];
    parse_stream(s);
    CHECK_EQ_STR(s[0].content, "abc");
    CHECK_EQ_STR(s[1].content, "xyz!");
    CHECK_EQ_STR(s[0].finish, "length");
    CHECK_EQ_STR(s[1].finish, "length");
    gen_teardown();
}

int main(void) {
    RUN(stream_auto_calls_per_choice);
    RUN(final_auto_calls_per_choice);
    RUN(forced_prefill_calls_per_choice);
    RUN(stream_text_chunks_name_their_choice);
    return test_summary();
}
