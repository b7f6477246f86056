/*
 * test_server.c: unit tests of the pure parts of src/server: request parsing
 * and validation, OpenAI error bodies, reasoning/stop-string post-processing,
 * UTF-8 checks, JSON escaping and the Prometheus rendering.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "../src/server/internal.h"
#include "dsinfer/grammar.h"
#include "test.h"

static const struct dsi__req_limits LIM = {.max_body_bytes = 4096, .max_messages = 4, .max_prompt_ids = 64};

static int parse(enum dsi__req_kind k, const char *body, struct dsi__req *r, struct dsi__api_error *e) {
    return dsi__srv_req_parse(k, body, strlen(body), &LIM, r, e);
}

/* Expects status and param for body; frees. */
static void expect_err(enum dsi__req_kind k, const char *body, int status, const char *param) {
    struct dsi__req r;
    struct dsi__api_error e;
    int rc = parse(k, body, &r, &e);
    if (rc != status) fprintf(stderr, "  body %s -> %d (%s)\n", body, rc, e.message);
    CHECK_EQ_INT(rc, status);
    CHECK_EQ_INT(e.status, status);
    if (param) CHECK_EQ_STR(e.param, param);
    CHECK(e.message[0] != 0);
    dsi__srv_req_free(&r);
}

TEST(parse_chat_full) {
    struct dsi__req r;
    struct dsi__api_error e;
    const char *b = "{\"model\":\"tiny\",\"messages\":[{\"role\":\"system\",\"content\":\"S\"},"
                    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]}],"
                    "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"max_tokens\":7,"
                    "\"temperature\":0,\"top_p\":0.5,\"top_k\":3,\"min_p\":0.1,\"frequency_penalty\":-2,"
                    "\"presence_penalty\":2,\"repetition_penalty\":1.1,\"stop\":[\"x\",\"yz\"],\"seed\":42,"
                    "\"n\":1,\"logprobs\":true,\"top_logprobs\":20,\"user\":\"u1\",\"unknown_field\":{\"a\":[1]}}";
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 0);
    CHECK_EQ_STR(r.model, "tiny");
    CHECK_EQ_INT(r.n_msgs, 2);
    CHECK_EQ_STR(r.msgs[0].role, "system");
    CHECK_EQ_STR(r.msgs[1].content, "ab");
    CHECK(r.stream && r.include_usage);
    CHECK_EQ_INT(r.max_tokens, 7);
    CHECK_NEAR(r.sampling.temperature, 0, 0);
    CHECK_NEAR(r.sampling.top_p, 0.5, 1e-6);
    CHECK_EQ_INT(r.sampling.top_k, 3);
    CHECK_NEAR(r.sampling.min_p, 0.1, 1e-6);
    CHECK_NEAR(r.sampling.frequency_penalty, -2, 0);
    CHECK_NEAR(r.sampling.presence_penalty, 2, 0);
    CHECK_NEAR(r.sampling.repetition_penalty, 1.1, 1e-6);
    CHECK_EQ_INT(r.n_stops, 2);
    CHECK_EQ_STR(r.stops[1], "yz");
    CHECK(r.seed_set && r.sampling.seed == 42);
    CHECK(r.sampling.logprobs);
    CHECK_EQ_INT(r.sampling.top_logprobs, 20);
    CHECK_EQ_STR(r.user, "u1");
    dsi__srv_req_free(&r);
}

TEST(parse_chat_defaults) {
    struct dsi__req r;
    struct dsi__api_error e;
    /* content "" (null is refused since issue 22: parse_rejects_trailing_bytes_and_missing_content) */
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"developer\",\"content\":\"\"}],\"stop\":\"END\","
                                      "\"max_completion_tokens\":3}", &r, &e), 0);
    CHECK(r.model == NULL);
    CHECK_EQ_STR(r.msgs[0].role, "system");
    CHECK_EQ_STR(r.msgs[0].content, "");
    CHECK_EQ_INT(r.max_tokens, 3);
    CHECK_NEAR(r.sampling.temperature, 1, 0);
    CHECK_NEAR(r.sampling.top_p, 1, 0);
    CHECK(!r.stream && !r.seed_set);
    CHECK_EQ_INT(r.n_stops, 1);
    CHECK_EQ_STR(r.stops[0], "END");
    dsi__srv_req_free(&r);
}

TEST(parse_chat_errors) {
    expect_err(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}", 400, NULL); /* truncated */
    expect_err(DSI__REQ_CHAT, "[1,2]", 400, NULL);
    expect_err(DSI__REQ_CHAT, "", 400, NULL);
    expect_err(DSI__REQ_CHAT, "{}", 400, "messages");
    expect_err(DSI__REQ_CHAT, "{\"messages\":\"hi\"}", 400, "messages");
    expect_err(DSI__REQ_CHAT, "{\"messages\":[]}", 400, "messages");
    /* role tool is accepted since issue 22, with the call it answers */
    expect_err(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", 400,
               "messages[0].tool_call_id");
    expect_err(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", 400, "messages[0].role");
    expect_err(DSI__REQ_CHAT, "{\"messages\":[{\"content\":\"x\"}]}", 400, "messages[0].role");
    expect_err(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400, "messages[0].content");
    expect_err(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", 400,
               "messages[0].content");
    expect_err(DSI__REQ_CHAT,
               "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"a\"},"
               "{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"a\"}]}",
               400, "messages");
    const char *m = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],";
    char b[512];
    static const struct {
        const char *field, *param;
    } bad[] = {
        {"\"temperature\":2.5", "temperature"}, {"\"temperature\":-0.1", "temperature"},
        {"\"temperature\":\"1\"", "temperature"}, {"\"top_p\":0", "top_p"}, {"\"top_p\":1.01", "top_p"},
        {"\"top_k\":1.5", "top_k"}, {"\"min_p\":2", "min_p"}, {"\"frequency_penalty\":2.1", "frequency_penalty"},
        {"\"presence_penalty\":-3", "presence_penalty"}, {"\"repetition_penalty\":0", "repetition_penalty"},
        {"\"max_tokens\":0", "max_tokens"}, {"\"max_tokens\":\"5\"", "max_tokens"},
        {"\"max_completion_tokens\":-1", "max_completion_tokens"}, {"\"stream\":1", "stream"},
        {"\"stream_options\":1", "stream_options"}, {"\"stream_options\":{\"include_usage\":\"y\"}", "include_usage"},
        {"\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]", "stop"}, {"\"stop\":[1]", "stop"}, {"\"stop\":3", "stop"},
        {"\"seed\":1.5", "seed"}, {"\"n\":17", "n"}, {"\"n\":0", "n"}, {"\"logprobs\":1", "logprobs"},
        {"\"logprobs\":true,\"top_logprobs\":21", "top_logprobs"}, {"\"top_logprobs\":3", "top_logprobs"},
        {"\"model\":7", "model"}, {"\"user\":[]", "user"}, {"\"cache_salt\":3", "cache_salt"},
        {"\"cache_salt\":\"\"", "cache_salt"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(b, sizeof b, "%s%s}", m, bad[i].field);
        expect_err(DSI__REQ_CHAT, b, 400, bad[i].param);
    }
    /* cache_salt: 1..256 bytes, kept as given */
    char salt[300];
    memset(salt, 's', 257);
    salt[257] = 0;
    snprintf(b, sizeof b, "%s\"cache_salt\":\"%s\"}", m, salt);
    expect_err(DSI__REQ_CHAT, b, 400, "cache_salt");
    struct dsi__req r;
    struct dsi__api_error e;
    snprintf(b, sizeof b, "%s\"cache_salt\":\"tenant-7\"}", m);
    CHECK_EQ_INT(dsi__srv_req_parse(DSI__REQ_CHAT, b, strlen(b), &LIM, &r, &e), 0);
    CHECK(r.cache_salt && !strcmp(r.cache_salt, "tenant-7"));
    dsi__srv_req_free(&r);
}

/* Issue 22: bodies the parser used to accept. */
TEST(parse_rejects_trailing_bytes_and_missing_content) {
    expect_err(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}}}", 400, "body");
    expect_err(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]} x", 400, "body");
    expect_err(DSI__REQ_COMPLETION, "{\"prompt\":\"x\"}{}", 400, "body");
    expect_err(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"user\"}]}", 400, "messages[0].content");
    expect_err(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\"}]}", 400,
               "messages[1].content");
    expect_err(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":null}]}", 400, "messages[0].content");
    struct dsi__req r;
    struct dsi__api_error e;
    /* trailing blanks are fine; an assistant message with tool_calls needs no content */
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]} \r\n", &r, &e), 0);
    dsi__srv_req_free(&r);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT,
                       "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"tool_calls\":"
                       "[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}]}",
                       &r, &e),
                 0);
    dsi__srv_req_free(&r);
}

TEST(parse_response_format) {
    struct dsi__req r;
    struct dsi__api_error e;
    const char *m = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":";
    char b[1024];
    snprintf(b, sizeof b, "%s{\"type\":\"json_object\"}}", m);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 0);
    CHECK(r.grammar != NULL);
    dsi__srv_req_free(&r);
    snprintf(b, sizeof b, "%s{\"type\":\"text\"}}", m);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 0);
    CHECK(r.grammar == NULL);
    dsi__srv_req_free(&r);
    snprintf(b, sizeof b,
             "%s{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"person\",\"strict\":true,\"schema\":"
             "{\"type\":\"object\",\"properties\":{\"age\":{\"type\":\"integer\"}},\"required\":[\"age\"],"
             "\"additionalProperties\":false}}}}",
             m);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 0);
    CHECK(r.grammar != NULL);
    struct dsi_grammar_matcher *gm = NULL;
    if (r.grammar && !dsi_grammar_matcher_create(r.grammar, 0, &gm)) {
        CHECK_EQ_INT(dsi_grammar_matcher_accept(gm, "{\"age\":41}", 10), 0);
        CHECK(dsi_grammar_matcher_complete(gm));
        CHECK(dsi_grammar_matcher_accept(gm, "x", 1) != 0);
    }
    dsi_grammar_matcher_destroy(gm);
    dsi__srv_req_free(&r);
    snprintf(b, sizeof b, "{\"prompt\":\"x\",\"response_format\":{\"type\":\"json_object\"}}");
    CHECK_EQ_INT(parse(DSI__REQ_COMPLETION, b, &r, &e), 0);
    CHECK(r.grammar != NULL);
    dsi__srv_req_free(&r);

    static const struct {
        const char *rf, *param, *needle;
    } bad[] = {
        {"\"json\"", "response_format", "object"},
        {"{}", "response_format.type", "type"},
        {"{\"type\":\"xml\"}", "response_format.type", "json_schema"},
        {"{\"type\":\"json_schema\"}", "response_format.json_schema", "name"},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{}}}", "response_format.json_schema.name", "name"},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"a b\",\"schema\":{}}}",
         "response_format.json_schema.name", "name"},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\",\"strict\":1,\"schema\":{}}}",
         "response_format.json_schema.strict", "boolean"},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\",\"schema\":[]}}",
         "response_format.json_schema.schema", "object"},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\",\"schema\":{\"type\":\"object\",\"properties\":"
         "{\"age\":{\"type\":\"integer\",\"minimum\":0}}}}}",
         "response_format.json_schema.schema", "'minimum'"},
        {"{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\",\"schema\":{\"type\":\"string\",\"pattern\":"
         "\"^a\"}}}",
         "response_format.json_schema.schema", "'pattern'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(b, sizeof b, "%s%s}", m, bad[i].rf);
        expect_err(DSI__REQ_CHAT, b, 400, bad[i].param);
        CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 400);
        if (!strstr(e.message, bad[i].needle)) fprintf(stderr, "  case %zu: %s\n", i, e.message);
        CHECK(strstr(e.message, bad[i].needle) != NULL);
        dsi__srv_req_free(&r);
    }
}

#define TOOLS_W                                                                                                   \
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"Weather\","        \
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"],"   \
    "\"additionalProperties\":false}}},{\"type\":\"function\",\"function\":{\"name\":\"noop\"}}]"

static bool grammar_accepts(const struct dsi__req *r, const char *text) {
    struct dsi_grammar_matcher *m = NULL;
    if (!r->grammar || dsi_grammar_matcher_create(r->grammar, 0, &m)) return false;
    bool ok = !dsi_grammar_matcher_accept(m, text, strlen(text)) && dsi_grammar_matcher_complete(m);
    dsi_grammar_matcher_destroy(m);
    return ok;
}

TEST(parse_tools_and_tool_choice) {
    struct dsi__req r;
    struct dsi__api_error e;
    const char *m = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],";
    char b[2048];
    snprintf(b, sizeof b, "%s" TOOLS_W "}", m);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 0);
    CHECK_EQ_INT(r.tool_choice, DSI__TOOL_CHOICE_AUTO);
    CHECK(r.grammar == NULL);
    CHECK(r.tools_json && strstr(r.tools_json, "get_weather"));
    CHECK(r.tools_raw && strstr(r.tools_raw, "{\"type\":\"function\",\"function\":{\"name\":\"get_weather\""));
    CHECK_EQ_INT(r.n_msgs, 1); /* the prompt is the format's business (http.c) */
    CHECK_EQ_INT(dsi__srv_tools_prompt(&r, DSI__TP_NATIVE, &e), 0);
    CHECK_EQ_INT(r.n_msgs, 1); /* ChatML: the renderer lists the tools */
    CHECK_EQ_INT(dsi__srv_tools_prompt(&r, DSI__TP_TEXT, &e), 0);
    CHECK_EQ_INT(r.n_msgs, 2); /* a system message with the tools was put first */
    CHECK_EQ_STR(r.msgs[0].role, "system");
    CHECK(strstr(r.msgs[0].content, "\"get_weather\"") && strstr(r.msgs[0].content, "<tool_call>"));
    dsi__srv_req_free(&r);

    snprintf(b, sizeof b, "%s" TOOLS_W ",\"tool_choice\":\"required\"}", m);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 0);
    CHECK(grammar_accepts(&r, "[{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}},{\"name\":\"noop\","
                              "\"arguments\":{}}]"));
    CHECK(!grammar_accepts(&r, "[{\"name\":\"get_weather\",\"arguments\":{}}]")); /* city is required */
    CHECK(!grammar_accepts(&r, "[{\"name\":\"other\",\"arguments\":{}}]"));
    dsi__srv_req_free(&r);
    snprintf(b, sizeof b, "%s" TOOLS_W ",\"tool_choice\":\"required\",\"parallel_tool_calls\":false}", m);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 0);
    CHECK(grammar_accepts(&r, "{\"name\":\"noop\",\"arguments\":{}}"));
    CHECK(!grammar_accepts(&r, "[{\"name\":\"noop\",\"arguments\":{}}]"));
    dsi__srv_req_free(&r);
    snprintf(b, sizeof b, "%s" TOOLS_W ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}}",
             m);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 0);
    CHECK_EQ_INT(r.tool_choice, DSI__TOOL_CHOICE_NAMED);
    CHECK(grammar_accepts(&r, "{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}"));
    CHECK(!grammar_accepts(&r, "{\"name\":\"noop\",\"arguments\":{}}"));
    dsi__srv_req_free(&r);
    snprintf(b, sizeof b, "%s" TOOLS_W ",\"tool_choice\":\"none\"}", m);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 0);
    CHECK_EQ_INT(dsi__srv_tools_prompt(&r, DSI__TP_TEXT, &e), 0);
    CHECK_EQ_INT(r.n_msgs, 1); /* none: the tools stay out of the prompt */
    dsi__srv_req_free(&r);

    static const struct {
        const char *field, *param;
    } bad[] = {
        {"\"tools\":{}", "tools"},
        {"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a b\"}}]", "tools[0].function"},
        {"\"tools\":[{\"type\":\"code\",\"function\":{\"name\":\"a\"}}]", "tools[0].function"},
        {"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\"}},{\"type\":\"function\",\"function\":"
         "{\"name\":\"a\"}}]", "tools[1].function"},
        {"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\",\"parameters\":{\"type\":\"string\","
         "\"format\":\"uri\"}}}]", "tools[0].function"},
        {"\"tool_choice\":\"required\"", "tool_choice"},
        {TOOLS_W ",\"tool_choice\":\"always\"", "tool_choice"},
        {TOOLS_W ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"nope\"}}", "tool_choice"},
        {TOOLS_W ",\"tool_choice\":\"required\",\"response_format\":{\"type\":\"json_object\"}", "tool_choice"},
        {TOOLS_W ",\"parallel_tool_calls\":1", "parallel_tool_calls"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(b, sizeof b, "%s%s}", m, bad[i].field);
        expect_err(DSI__REQ_CHAT, b, 400, bad[i].param);
    }
}

TEST(parse_tool_messages_render_in_prompt_form) {
    struct dsi__req r;
    struct dsi__api_error e;
    const char *body =
        "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Weather?\"},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",\"function\":"
        "{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Oslo\\\"}\"}}]},{\"role\":\"tool\","
        "\"tool_call_id\":\"c1\",\"content\":\"-3 C\"}]," TOOLS_W "}";
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, body, &r, &e), 0);
    CHECK_EQ_INT(r.n_msgs, 4);
    if (r.n_msgs == 4) { /* the call as sent, for the native renderings */
        CHECK(r.msgs[2].content_null && r.msgs[2].n_calls == 1 && !strcmp(r.msgs[2].calls[0].id, "c1"));
        CHECK(r.msgs[2].n_calls == 1 && !strcmp(r.msgs[2].calls[0].arguments, "{\"city\":\"Oslo\"}"));
        CHECK_EQ_STR(r.msgs[3].tool_call_id, "c1");
    }
    /* the V3 format: calls and results stay structured, the tool list joins the system message */
    CHECK_EQ_INT(dsi__srv_tools_prompt(&r, DSI__TP_NATIVE_LIST, &e), 0);
    CHECK(r.n_msgs == 4 && !strcmp(r.msgs[3].role, "tool") && strstr(r.msgs[0].content, "\"get_weather\"") &&
          !strstr(r.msgs[0].content, "<tool_call>"));
    dsi__srv_req_free(&r);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, body, &r, &e), 0);
    CHECK_EQ_INT(dsi__srv_tools_prompt(&r, DSI__TP_TEXT, &e), 0);
    CHECK_EQ_INT(r.n_msgs, 4);
    if (r.n_msgs == 4) {
        CHECK(strstr(r.msgs[0].content, "Be brief.\n\n") == r.msgs[0].content);
        CHECK_EQ_STR(r.msgs[2].content,
                     "<tool_call>{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}</tool_call>");
        CHECK_EQ_STR(r.msgs[3].role, "user");
        CHECK_EQ_STR(r.msgs[3].content, "<tool_result id=\"c1\">-3 C</tool_result>");
    }
    dsi__srv_req_free(&r);
    expect_err(DSI__REQ_CHAT,
               "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":{}}}]}]}",
               400, "messages[0].tool_calls");
}

TEST(tool_calls_extract_from_answers) {
    struct dsi__sbuf calls = {0};
    int n = -1;
    size_t cl = 0;
    const char *a = "Let me check.\n<tool_call>{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}</tool_call>"
                    "\n<tool_call>{\"name\":\"noop\",\"arguments\":{}}</tool_call>";
    CHECK_EQ_INT(dsi__srv_tool_calls_extract(a, strlen(a), false, DSI__TOOLS_TAGS, "x", false, &calls, &n, &cl), 0);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(cl, 13); /* "Let me check." */
    calls.p[calls.len] = 0;
    CHECK_EQ_STR(calls.p, "[{\"id\":\"call_x_0\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
                          "\"arguments\":\"{\\\"city\\\":\\\"Oslo\\\"}\"}},{\"id\":\"call_x_1\",\"type\":\"function\","
                          "\"function\":{\"name\":\"noop\",\"arguments\":\"{}\"}}]");
    const char *bad = "<tool_call>{\"name\":1}</tool_call>";
    CHECK_EQ_INT(dsi__srv_tool_calls_extract(bad, strlen(bad), false, DSI__TOOLS_TAGS, "x", false, &calls, &n, &cl), 0);
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(cl, strlen(bad));
    const char *cut = "<tool_call>{\"name\":\"f\",\"argu";
    CHECK_EQ_INT(dsi__srv_tool_calls_extract(cut, strlen(cut), false, DSI__TOOLS_TAGS, "x", false, &calls, &n, &cl), 0);
    CHECK_EQ_INT(n, 0);
    const char *forced = "{\"name\":\"f\",\"arguments\":{\"a\":1}}";
    CHECK_EQ_INT(dsi__srv_tool_calls_extract(forced, strlen(forced), true, DSI__TOOLS_TAGS, "y", true, &calls, &n, &cl), 0);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(cl, 0); /* no text besides the calls */
    calls.p[calls.len] = 0;
    CHECK(strstr(calls.p, "\"index\":0,\"id\":\"call_y_0\"") != NULL);
    const char *arr = "[{\"name\":\"f\",\"arguments\":{}},{\"name\":\"g\",\"arguments\":{}}]";
    CHECK_EQ_INT(dsi__srv_tool_calls_extract(arr, strlen(arr), true, DSI__TOOLS_TAGS, "y", false, &calls, &n, &cl), 0);
    CHECK_EQ_INT(n, 2);
    dsi__sbuf_free(&calls);
}

/* Forced calls in a native syntax: the first opening is prefilled, the grammar
 * gives the rest up to the end of the run (V3: the name line, the fence, the
 * arguments and the call tokens; ChatML: call objects in <tool_call> blocks), with
 * as many calls as parallel_tool_calls allows, and the prefill plus any accepted
 * answer parses back into that many calls. */
#define V3_OPEN "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
#define V3_SEP "\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>"
#define V3_END "\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
#define QW_SEP "}\n</tool_call>\n<tool_call>\n"
#define QW_END "}\n</tool_call>"

/* The calls the prefill + answer parse into (-1: the grammar refuses the answer). */
static int native_calls(const struct dsi__req *r, enum dsi__tool_syntax syn, const char *answer, char *names,
                        size_t cap) {
    if (!grammar_accepts(r, answer)) return -1;
    struct dsi__sbuf text = {0}, calls = {0};
    int n = 0;
    size_t cl = 0;
    dsi__sbuf_printf(&text, "%s%s", r->prefill, answer);
    dsi__srv_tool_calls_extract(text.p, text.len, false, syn, "x", false, &calls, &n, &cl);
    cJSON *j = n ? cJSON_ParseWithLength(calls.p, calls.len) : NULL, *c;
    names[0] = 0;
    cJSON_ArrayForEach(c, j) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(fn, "name");
        const cJSON *ar = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        cJSON *args = cJSON_IsString(ar) ? cJSON_Parse(ar->valuestring) : NULL;
        if (cJSON_IsString(nm) && cJSON_IsObject(args) && strlen(names) + strlen(nm->valuestring) + 2 < cap) {
            strcat(names, nm->valuestring);
            strcat(names, " ");
        }
        cJSON_Delete(args);
    }
    cJSON_Delete(j);
    dsi__sbuf_free(&text);
    dsi__sbuf_free(&calls);
    return n;
}

TEST(tools_native_forced_grammar_and_prefill) {
    struct dsi__req r;
    struct dsi__api_error e;
    char b[2048], names[256];
    const char *m = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],";
    const char *w = "get_weather\n```json\n{\"city\":\"Oslo\"}", *noop = "noop\n```json\n{}";
    char two[512], three[512], one[256];
    snprintf(one, sizeof one, "%s" V3_END, w);
    snprintf(two, sizeof two, "%s" V3_SEP "%s" V3_END, w, noop);
    snprintf(three, sizeof three, "%s" V3_SEP "%s" V3_SEP "%s" V3_END, w, noop, noop);
    /* required, parallel (the default): one or more calls, each validated */
    snprintf(b, sizeof b, "%s" TOOLS_W ",\"tool_choice\":\"required\"}", m);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 0);
    CHECK_EQ_INT(dsi__srv_tools_native(&r, DSI__TOOLS_DEEPSEEK, NULL, &e), 0);
    CHECK_EQ_STR(r.prefill ? r.prefill : "", V3_OPEN);
    CHECK_EQ_INT(native_calls(&r, DSI__TOOLS_DEEPSEEK, one, names, sizeof names), 1);
    CHECK_EQ_STR(names, "get_weather ");
    CHECK_EQ_INT(native_calls(&r, DSI__TOOLS_DEEPSEEK, two, names, sizeof names), 2);
    CHECK_EQ_STR(names, "get_weather noop ");
    CHECK_EQ_INT(native_calls(&r, DSI__TOOLS_DEEPSEEK, three, names, sizeof names), 3);
    CHECK(!grammar_accepts(&r, w));                             /* the end is written */
    CHECK(!grammar_accepts(&r, "get_weather\n```json\n{}" V3_END)); /* city is required */
    CHECK(!grammar_accepts(&r, "{\"name\":\"noop\",\"arguments\":{}}"));
    char many[4096] = "";
    for (int i = 0; i < 9; i++) strcat(many, i ? V3_SEP "noop\n```json\n{}" : "noop\n```json\n{}");
    strcat(many, V3_END);
    CHECK(!grammar_accepts(&r, many)); /* at most 8 calls */
    dsi__srv_req_free(&r);
    /* parallel_tool_calls false: exactly one */
    snprintf(b, sizeof b, "%s" TOOLS_W ",\"tool_choice\":\"required\",\"parallel_tool_calls\":false}", m);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 0);
    CHECK_EQ_INT(dsi__srv_tools_native(&r, DSI__TOOLS_DEEPSEEK, NULL, &e), 0);
    CHECK_EQ_INT(native_calls(&r, DSI__TOOLS_DEEPSEEK, one, names, sizeof names), 1);
    CHECK_EQ_INT(native_calls(&r, DSI__TOOLS_DEEPSEEK, two, names, sizeof names), -1);
    dsi__srv_req_free(&r);
    /* a named function: that function, once (parallel or not) */
    snprintf(b, sizeof b, "%s" TOOLS_W ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"noop\"}}}", m);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 0);
    CHECK_EQ_INT(dsi__srv_tools_native(&r, DSI__TOOLS_DEEPSEEK, NULL, &e), 0);
    CHECK_EQ_INT(native_calls(&r, DSI__TOOLS_DEEPSEEK, "noop\n```json\n{}" V3_END, names, sizeof names), 1);
    CHECK_EQ_INT(native_calls(&r, DSI__TOOLS_DEEPSEEK, one, names, sizeof names), -1);
    CHECK_EQ_INT(native_calls(&r, DSI__TOOLS_DEEPSEEK, "noop\n```json\n{}" V3_SEP "noop\n```json\n{}" V3_END, names,
                              sizeof names), -1);
    dsi__srv_req_free(&r);
    /* ChatML: call objects in <tool_call> blocks after the prefilled first opening */
    const char *qw = "{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}", *qn = "{\"name\":\"noop\",\"arguments\":{}";
    snprintf(one, sizeof one, "%s" QW_END, qw);
    snprintf(two, sizeof two, "%s" QW_SEP "%s" QW_END, qw, qn);
    snprintf(b, sizeof b, "%s" TOOLS_W ",\"tool_choice\":\"required\"}", m);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 0);
    CHECK_EQ_INT(dsi__srv_tools_native(&r, DSI__TOOLS_TAGS, NULL, &e), 0);
    CHECK_EQ_STR(r.prefill ? r.prefill : "", "<tool_call>\n");
    CHECK_EQ_INT(native_calls(&r, DSI__TOOLS_TAGS, one, names, sizeof names), 1);
    CHECK_EQ_INT(native_calls(&r, DSI__TOOLS_TAGS, two, names, sizeof names), 2);
    CHECK_EQ_STR(names, "get_weather noop ");
    CHECK(!grammar_accepts(&r, "[{\"name\":\"noop\",\"arguments\":{}}]"));
    CHECK(!grammar_accepts(&r, "{\"name\":\"noop\",\"arguments\":{}}")); /* the block is closed */
    dsi__srv_req_free(&r);
    snprintf(b, sizeof b, "%s" TOOLS_W ",\"tool_choice\":\"required\",\"parallel_tool_calls\":false}", m);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 0);
    CHECK_EQ_INT(dsi__srv_tools_native(&r, DSI__TOOLS_TAGS, NULL, &e), 0);
    CHECK_EQ_INT(native_calls(&r, DSI__TOOLS_TAGS, one, names, sizeof names), 1);
    CHECK_EQ_INT(native_calls(&r, DSI__TOOLS_TAGS, two, names, sizeof names), -1);
    dsi__srv_req_free(&r);
    /* auto: nothing to force */
    snprintf(b, sizeof b, "%s" TOOLS_W "}", m);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, b, &r, &e), 0);
    CHECK_EQ_INT(dsi__srv_tools_native(&r, DSI__TOOLS_DEEPSEEK, NULL, &e), 0);
    CHECK(r.prefill == NULL && r.grammar == NULL);
    dsi__srv_req_free(&r);
}

/* DeepSeek-V3's native call syntax, as the model writes it after <｜Assistant｜>. */
TEST(tool_calls_extract_deepseek_native) {
    struct dsi__sbuf calls = {0};
    int n = -1;
    size_t cl = 0;
    const char *a = "Checking.\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
                    "{\"city\": \"Oslo\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>noop\n"
                    "```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    CHECK_EQ_INT(dsi__srv_tool_calls_extract(a, strlen(a), false, DSI__TOOLS_DEEPSEEK, "x", false, &calls, &n, &cl), 0);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(cl, 9); /* "Checking." */
    calls.p[calls.len] = 0;
    CHECK_EQ_STR(calls.p, "[{\"id\":\"call_x_0\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
                          "\"arguments\":\"{\\\"city\\\":\\\"Oslo\\\"}\"}},{\"id\":\"call_x_1\",\"type\":\"function\","
                          "\"function\":{\"name\":\"noop\",\"arguments\":\"{}\"}}]");
    /* the tags syntax finds nothing there, and the V3 one no <tool_call> */
    CHECK_EQ_INT(dsi__srv_tool_calls_extract(a, strlen(a), false, DSI__TOOLS_TAGS, "x", false, &calls, &n, &cl), 0);
    CHECK_EQ_INT(n, 0);
    const char *t = "<tool_call>{\"name\":\"f\",\"arguments\":{}}</tool_call>";
    CHECK_EQ_INT(dsi__srv_tool_calls_extract(t, strlen(t), false, DSI__TOOLS_DEEPSEEK, "x", false, &calls, &n, &cl), 0);
    CHECK_EQ_INT(n, 0);
    /* arguments that are not an object: the block stays text */
    const char *bad = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n[1]\n```<｜tool▁call▁end｜>";
    CHECK_EQ_INT(dsi__srv_tool_calls_extract(bad, strlen(bad), false, DSI__TOOLS_DEEPSEEK, "x", false, &calls, &n, &cl), 0);
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(cl, strlen(bad));
    dsi__sbuf_free(&calls);
}

/* What a stream sees: each piece of text pushed separately (one byte at a time
 * here, the worst split), content out as soon as it cannot start a call. */
struct scan_log {
    char content[512];
    size_t n_content;
    int n_calls;
    char last_call[256];
    size_t content_at_first_call; /* content emitted before the first call */
};

static int log_content(void *user, const char *s, size_t n) {
    struct scan_log *l = user;
    if (l->n_content + n < sizeof l->content) memcpy(l->content + l->n_content, s, n), l->n_content += n;
    return 0;
}

static int log_call(void *user, const char *name, const char *args) {
    struct scan_log *l = user;
    if (!l->n_calls) l->content_at_first_call = l->n_content;
    l->n_calls++;
    snprintf(l->last_call, sizeof l->last_call, "%s %s", name, args);
    return 0;
}

static void scan_bytewise(enum dsi__tool_syntax syn, const char *text, struct scan_log *l, size_t *max_held) {
    struct dsi__toolscan ts;
    struct dsi__toolscan_cb cb = {log_content, log_call, l};
    memset(l, 0, sizeof *l);
    *max_held = 0;
    dsi__toolscan_init(&ts, syn);
    for (const char *p = text; *p; p++) {
        CHECK_EQ_INT(dsi__toolscan_push(&ts, p, 1, &cb), 0);
        if (!ts.in_calls && ts.hold.len > *max_held) *max_held = ts.hold.len;
    }
    CHECK_EQ_INT(dsi__toolscan_finish(&ts, &cb), 0);
    dsi__toolscan_free(&ts);
    l->content[l->n_content] = 0;
}

TEST(tool_scan_streams_content_and_holds_only_a_marker_prefix) {
    struct scan_log l;
    size_t held = 0;
    /* plain text: all of it comes out, nothing held longer than a marker prefix */
    scan_bytewise(DSI__TOOLS_TAGS, "The answer is <b>42</b> < 43.", &l, &held);
    CHECK_EQ_STR(l.content, "The answer is <b>42</b> < 43.");
    CHECK_EQ_INT(l.n_calls, 0);
    CHECK(held <= strlen("<tool_call") + 1);
    /* a call after text: the text goes out first, the call text never does */
    scan_bytewise(DSI__TOOLS_TAGS, "Sure.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>", &l,
                  &held);
    CHECK_EQ_STR(l.content, "Sure.");
    CHECK_EQ_INT(l.n_calls, 1);
    CHECK_EQ_INT((int)l.content_at_first_call, 5);
    CHECK_EQ_STR(l.last_call, "f {\"a\":1}");
    /* the same in V3's syntax, split byte by byte through the multi-byte markers */
    scan_bytewise(DSI__TOOLS_DEEPSEEK,
                  "Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{\"a\": 1}\n```"
                  "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
                  &l, &held);
    CHECK_EQ_STR(l.content, "Sure.");
    CHECK_EQ_INT(l.n_calls, 1);
    CHECK_EQ_STR(l.last_call, "f {\"a\":1}");
    CHECK(held <= strlen("<｜tool▁calls▁begin｜>"));
    /* a call cut off by max_tokens is text, not lost */
    scan_bytewise(DSI__TOOLS_TAGS, "x <tool_call>{\"name\": \"f\", \"argu", &l, &held);
    CHECK_EQ_STR(l.content, "x<tool_call>{\"name\": \"f\", \"argu");
    CHECK_EQ_INT(l.n_calls, 0);
    /* text after the calls still comes out */
    scan_bytewise(DSI__TOOLS_TAGS, "<tool_call>{\"name\":\"f\",\"arguments\":{}}</tool_call>\nDone. See you.", &l,
                  &held);
    CHECK_EQ_INT(l.n_calls, 1);
    CHECK_EQ_STR(l.content, "Done. See you."); /* inner blanks kept whatever the split */
    scan_bytewise(DSI__TOOLS_DEEPSEEK,
                  "<｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{}\n```<｜tool▁call▁end｜>\n\n"
                  "<｜tool▁calls▁end｜> ok then", &l, &held);
    CHECK_EQ_INT(l.n_calls, 1);
    CHECK_EQ_STR(l.content, "ok then");
}

/* n: 1..16 choices (issue 23); past the limit a 400 that names it. */
TEST(parse_n_limits) {
    struct dsi__req r;
    struct dsi__api_error e;
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":3}", &r, &e), 0);
    CHECK_EQ_INT(r.n, 3);
    dsi__srv_req_free(&r);
    CHECK_EQ_INT(parse(DSI__REQ_COMPLETION, "{\"prompt\":\"x\",\"n\":16}", &r, &e), 0);
    CHECK_EQ_INT(r.n, 16);
    dsi__srv_req_free(&r);
    CHECK_EQ_INT(parse(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":17}", &r, &e),
                 400);
    CHECK_EQ_STR(e.param, "n");
    CHECK(strstr(e.message, "between 1 and 16") != NULL);
    dsi__srv_req_free(&r);
    /* 0, negative, fractional and non-numbers are 400s naming n too */
    const char *bad[] = {"0", "-1", "1.5", "\"2\"", "true", "[2]", "1e9"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char b[128];
        snprintf(b, sizeof b, "{\"prompt\":\"x\",\"n\":%s}", bad[i]);
        CHECK_EQ_INT(parse(DSI__REQ_COMPLETION, b, &r, &e), 400);
        CHECK_EQ_STR(e.param, "n");
        dsi__srv_req_free(&r);
    }
    /* the max_n config lowers the cap */
    struct dsi__req_limits lim4 = LIM;
    lim4.max_n = 4;
    const char *b4 = "{\"prompt\":\"x\",\"n\":4}", *b5 = "{\"prompt\":\"x\",\"n\":5}";
    CHECK_EQ_INT(dsi__srv_req_parse(DSI__REQ_COMPLETION, b4, strlen(b4), &lim4, &r, &e), 0);
    CHECK_EQ_INT(r.n, 4);
    dsi__srv_req_free(&r);
    CHECK_EQ_INT(dsi__srv_req_parse(DSI__REQ_COMPLETION, b5, strlen(b5), &lim4, &r, &e), 400);
    CHECK_EQ_STR(e.param, "n");
    CHECK(strstr(e.message, "between 1 and 4") != NULL);
    dsi__srv_req_free(&r);
}

TEST(parse_body_limits) {
    char *big = malloc(5000);
    memset(big, ' ', 4999);
    big[0] = '{';
    big[4998] = '}';
    big[4999] = 0;
    expect_err(DSI__REQ_CHAT, big, 413, NULL);
    free(big);
    /* invalid UTF-8: a lone continuation byte, an overlong, a surrogate */
    expect_err(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\x80\"}]}", 400, NULL);
    expect_err(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xc0\xaf\"}]}", 400, NULL);
    expect_err(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xed\xa0\x80\"}]}", 400, NULL);
    struct dsi__req r;
    struct dsi__api_error e;
    CHECK_EQ_INT(dsi__srv_req_parse(DSI__REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\0b\"}]}", 44, &LIM,
                                &r, &e), 400);
    CHECK_EQ_STR(e.code, "invalid_json");
    dsi__srv_req_free(&r);
}

TEST(parse_completion_prompts) {
    struct dsi__req r;
    struct dsi__api_error e;
    CHECK_EQ_INT(parse(DSI__REQ_COMPLETION, "{\"prompt\":\"hello\",\"logprobs\":2}", &r, &e), 0);
    CHECK_EQ_STR(r.prompt, "hello");
    CHECK(r.sampling.logprobs);
    CHECK_EQ_INT(r.sampling.top_logprobs, 2);
    dsi__srv_req_free(&r);
    CHECK_EQ_INT(parse(DSI__REQ_COMPLETION, "{\"prompt\":[\"one\"]}", &r, &e), 0);
    CHECK_EQ_STR(r.prompt, "one");
    dsi__srv_req_free(&r);
    CHECK_EQ_INT(parse(DSI__REQ_COMPLETION, "{\"prompt\":[1,2,3]}", &r, &e), 0);
    CHECK(r.prompt == NULL);
    CHECK_EQ_INT(r.n_ids, 3);
    CHECK_EQ_INT(r.ids[2], 3);
    dsi__srv_req_free(&r);
    CHECK_EQ_INT(parse(DSI__REQ_COMPLETION, "{\"prompt\":[[5,6]]}", &r, &e), 0);
    CHECK_EQ_INT(r.n_ids, 2);
    dsi__srv_req_free(&r);
    expect_err(DSI__REQ_COMPLETION, "{\"prompt\":[\"a\",\"b\"]}", 400, "prompt");
    expect_err(DSI__REQ_COMPLETION, "{\"prompt\":[1,-2]}", 400, "prompt");
    expect_err(DSI__REQ_COMPLETION, "{\"prompt\":[1,\"x\"]}", 400, "prompt");
    expect_err(DSI__REQ_COMPLETION, "{\"prompt\":[]}", 400, "prompt");
    expect_err(DSI__REQ_COMPLETION, "{\"prompt\":{}}", 400, "prompt");
    expect_err(DSI__REQ_COMPLETION, "{}", 400, "prompt");
    expect_err(DSI__REQ_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":true}", 400, "logprobs");
    expect_err(DSI__REQ_COMPLETION, "{\"prompt\":\"x\",\"echo\":true}", 400, "echo");
}

TEST(parse_tokenize_detokenize) {
    struct dsi__req r;
    struct dsi__api_error e;
    CHECK_EQ_INT(parse(DSI__REQ_TOKENIZE, "{\"prompt\":\"hi\",\"add_special_tokens\":false}", &r, &e), 0);
    CHECK_EQ_STR(r.prompt, "hi");
    CHECK(!r.add_special);
    dsi__srv_req_free(&r);
    CHECK_EQ_INT(parse(DSI__REQ_TOKENIZE, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &r, &e), 0);
    CHECK_EQ_INT(r.n_msgs, 1);
    dsi__srv_req_free(&r);
    CHECK_EQ_INT(parse(DSI__REQ_DETOKENIZE, "{\"tokens\":[0,1,2]}", &r, &e), 0);
    CHECK_EQ_INT(r.n_ids, 3);
    dsi__srv_req_free(&r);
    expect_err(DSI__REQ_TOKENIZE, "{\"prompt\":3}", 400, "prompt");
    expect_err(DSI__REQ_DETOKENIZE, "{}", 400, "tokens");
    expect_err(DSI__REQ_DETOKENIZE, "{\"tokens\":[1.5]}", 400, "tokens");
    char b[1024] = "{\"tokens\":[0";
    for (int i = 0; i < 70; i++) strcat(b, ",1");
    strcat(b, "]}");
    expect_err(DSI__REQ_DETOKENIZE, b, 400, "tokens");
}

TEST(api_error_body) {
    struct dsi__api_error e = {0};
    dsi__api_error_set(&e, 400, "messages[0].role", "invalid_value", "bad \"role\"\n");
    char *j = dsi__api_error_json(&e);
    CHECK_EQ_STR(j, "{\"error\":{\"message\":\"bad \\\"role\\\"\\n\",\"type\":\"invalid_request_error\","
                    "\"param\":\"messages[0].role\",\"code\":\"invalid_value\"}}\n");
    free(j);
    dsi__api_error_set(&e, 401, NULL, NULL, "x");
    j = dsi__api_error_json(&e);
    CHECK_EQ_STR(j, "{\"error\":{\"message\":\"x\",\"type\":\"authentication_error\",\"param\":null,\"code\":null}}\n");
    free(j);
}

/* A stream that fails after its status line ends with one OpenAI error event and
 * [DONE], built without allocating; escaping matches the JSON body's. */
TEST(api_error_sse_event) {
    struct dsi__api_error e = {0};
    dsi__api_error_set(&e, 500, NULL, "stream_backpressure", "more than \"1\" byte\n\x01 caf\xc3\xa9 \xff");
    char buf[1024];
    size_t n = dsi__api_error_sse(&e, buf, sizeof buf);
    CHECK_EQ_INT((int)n, (int)strlen(buf));
    CHECK_EQ_STR(buf, "data: {\"error\":{\"message\":\"more than \\\"1\\\" byte\\n\\u0001 caf\xc3\xa9 ?\","
                      "\"type\":\"server_error\",\"param\":null,\"code\":\"stream_backpressure\"}}\n\n"
                      "data: [DONE]\n\n");
    /* the event's JSON is the body's JSON for the same error */
    dsi__api_error_set(&e, 503, "p", "timeout", "generation failed: timed out");
    n = dsi__api_error_sse(&e, buf, sizeof buf);
    char *j = dsi__api_error_json(&e);
    char want[1024];
    snprintf(want, sizeof want, "data: %.*s\n\ndata: [DONE]\n\n", (int)strlen(j) - 1, j);
    CHECK_EQ_STR(buf, want);
    free(j);
    /* a buffer too small for the text still gets a complete, generic ending */
    char small[200];
    n = dsi__api_error_sse(&e, small, sizeof small);
    CHECK(n > 0 && n < sizeof small);
    CHECK(strstr(small, "data: {\"error\":{") == small);
    CHECK(n >= 14 && !memcmp(small + n - 14, "data: [DONE]\n\n", 14));
    char tiny[8];
    CHECK_EQ_INT((int)dsi__api_error_sse(&e, tiny, sizeof tiny), 0);
}

TEST(utf8_helpers) {
    CHECK(dsi_utf8_valid("a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 10));
    CHECK(!dsi_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    CHECK(!dsi_utf8_valid("\xe2\x82", 2));
    CHECK_EQ_INT(dsi__srv_utf8_complete_prefix("ab\xe2\x82", 4), 2);
    CHECK_EQ_INT(dsi__srv_utf8_complete_prefix("ab\xe2\x82\xac", 5), 5);
    CHECK_EQ_INT(dsi__srv_utf8_complete_prefix("\xf0\x9f\x98", 3), 0);
    CHECK_EQ_INT(dsi__srv_utf8_complete_prefix("abc", 3), 3);
}

struct sink {
    char content[256], reasoning[256];
    int n_emits;
};
static int sink_emit(void *user, enum dsi__channel ch, const char *s, size_t n) {
    struct sink *k = user;
    char *d = ch == DSI__CH_CONTENT ? k->content : k->reasoning;
    strncat(d, s, n);
    k->n_emits++;
    return 0;
}

TEST(textgen_stop_across_tokens) {
    const char *stops[] = {"END", "\n\n"};
    struct dsi__textgen t;
    struct sink k = {0};
    dsi__textgen_init(&t, stops, 2, false);
    CHECK_EQ_INT(dsi__textgen_push(&t, "Hello E", 7, sink_emit, &k), 0);
    CHECK_EQ_STR(k.content, "Hello "); /* "E" held: could start END */
    CHECK_EQ_INT(dsi__textgen_push(&t, "N", 1, sink_emit, &k), 0);
    CHECK_EQ_STR(k.content, "Hello ");
    CHECK_EQ_INT(dsi__textgen_push(&t, "Dx", 2, sink_emit, &k), 1);
    CHECK_EQ_STR(k.content, "Hello ");
    CHECK(t.stopped);
    CHECK_EQ_INT(dsi__textgen_push(&t, "more", 4, sink_emit, &k), 1);
    CHECK_EQ_INT(dsi__textgen_finish(&t, sink_emit, &k), 0);
    CHECK_EQ_STR(k.content, "Hello ");
    dsi__textgen_free(&t);
}

TEST(textgen_false_prefix_released) {
    const char *stops[] = {"END"};
    struct dsi__textgen t;
    struct sink k = {0};
    dsi__textgen_init(&t, stops, 1, false);
    CHECK_EQ_INT(dsi__textgen_push(&t, "EN", 2, sink_emit, &k), 0);
    CHECK_EQ_STR(k.content, "");
    CHECK_EQ_INT(dsi__textgen_push(&t, "d", 1, sink_emit, &k), 0);
    CHECK_EQ_STR(k.content, "ENd");
    CHECK_EQ_INT(dsi__textgen_push(&t, "E", 1, sink_emit, &k), 0);
    CHECK_EQ_INT(dsi__textgen_finish(&t, sink_emit, &k), 0);
    CHECK_EQ_STR(k.content, "ENdE"); /* held text comes out at the end */
    dsi__textgen_free(&t);
}

TEST(textgen_reasoning_split) {
    struct dsi__textgen t;
    struct sink k = {0};
    dsi__textgen_init(&t, NULL, 0, true);
    CHECK_EQ_INT(dsi__textgen_push(&t, "<thi", 4, sink_emit, &k), 0);
    CHECK_EQ_INT(dsi__textgen_push(&t, "nk>plan", 7, sink_emit, &k), 0);
    CHECK_EQ_INT(dsi__textgen_push(&t, " more</th", 9, sink_emit, &k), 0);
    CHECK_EQ_STR(k.reasoning, "plan more");
    CHECK_EQ_INT(dsi__textgen_push(&t, "ink>\n\nAnswer", 12, sink_emit, &k), 0);
    CHECK_EQ_INT(dsi__textgen_finish(&t, sink_emit, &k), 0);
    CHECK_EQ_STR(k.reasoning, "plan more");
    CHECK_EQ_STR(k.content, "Answer");
    dsi__textgen_free(&t);
}

TEST(textgen_reasoning_unterminated) {
    struct dsi__textgen t;
    struct sink k = {0};
    dsi__textgen_init(&t, NULL, 0, true);
    CHECK_EQ_INT(dsi__textgen_push(&t, "still thinking </", 17, sink_emit, &k), 0);
    CHECK_EQ_INT(dsi__textgen_finish(&t, sink_emit, &k), 0);
    CHECK_EQ_STR(k.reasoning, "still thinking </");
    CHECK_EQ_STR(k.content, "");
    dsi__textgen_free(&t);
}

/* A completion's text is exactly the decoded tokens: " Go up" keeps its space
 * (only content after </think> loses its leading blank lines). */
TEST(textgen_keeps_leading_space) {
    struct dsi__textgen t;
    struct sink k = {0};
    dsi__textgen_init(&t, NULL, 0, false);
    CHECK_EQ_INT(dsi__textgen_push(&t, " Go", 3, sink_emit, &k), 0);
    CHECK_EQ_INT(dsi__textgen_push(&t, " up", 3, sink_emit, &k), 0);
    CHECK_EQ_INT(dsi__textgen_finish(&t, sink_emit, &k), 0);
    CHECK_EQ_STR(k.content, " Go up");
    dsi__textgen_free(&t);
    struct sink k2 = {0};
    dsi__textgen_init(&t, NULL, 0, false);
    CHECK_EQ_INT(dsi__textgen_push(&t, "\n\nAnd", 5, sink_emit, &k2), 0);
    CHECK_EQ_INT(dsi__textgen_finish(&t, sink_emit, &k2), 0);
    CHECK_EQ_STR(k2.content, "\n\nAnd");
    dsi__textgen_free(&t);
}

/* One range check (dsi_sampling_check) on the float the sampler uses: a value
 * that rounds to 0 is refused as out of range, naming the field, with the range
 * docs/api.md gives; never as context_length_exceeded. */
TEST(sampling_tiny_values_invalid) {
    static const char *const fields[] = {"top_p", "repetition_penalty"};
    for (int i = 0; i < 2; i++) {
        char body[160];
        snprintf(body, sizeof body, "{\"prompt\":\"x\",\"%s\":1e-300}", fields[i]);
        struct dsi__req r;
        struct dsi__api_error e;
        CHECK_EQ_INT(parse(DSI__REQ_COMPLETION, body, &r, &e), 400);
        CHECK_EQ_STR(e.param, fields[i]);
        CHECK(e.code && !strcmp(e.code, "invalid_value"));
        CHECK(strstr(e.message, i == 0 ? "> 0 and <= 1" : "> 0 and <= 10") != NULL);
        dsi__srv_req_free(&r);
    }
    struct dsi__req r;
    struct dsi__api_error e;
    CHECK_EQ_INT(parse(DSI__REQ_COMPLETION, "{\"prompt\":\"x\",\"temperature\":2,\"top_p\":1e-30,"
                                            "\"repetition_penalty\":10}", &r, &e), 0);
    dsi__srv_req_free(&r);
}

TEST(json_string_escaping) {
    struct dsi__sbuf b = {0};
    CHECK_EQ_INT(dsi__sbuf_json_str(&b, "a\"\\\x01\x7f\xc3\xa9", 7), 0);
    CHECK_EQ_STR(b.p, "\"a\\\"\\\\\\u0001\\u007f\xc3\xa9\"");
    dsi__sbuf_free(&b);
    /* half a character: U+FFFD in a buffer, the caller's choice in place */
    struct dsi__sbuf h = {0};
    CHECK_EQ_INT(dsi__sbuf_json_str(&h, "x\xc3", 2), 0);
    CHECK_EQ_STR(h.p, "\"x\xef\xbf\xbd\"");
    dsi__sbuf_free(&h);
    char out[32] = {0};
    CHECK_EQ_INT((int)dsi__json_escape_into(out, "\xc3\n\"", 3, "?"), 5);
    CHECK_EQ_STR(out, "?\\n\\\"");
}

TEST(metrics_render_counts) {
    struct dsi__smetrics *m;
    CHECK_EQ_INT(dsi__smetrics_create(&m), 0);
    dsi__smetrics_request(m, DSI__R_CHAT, 200);
    dsi__smetrics_request(m, DSI__R_CHAT, 200);
    dsi__smetrics_request(m, DSI__R_MODELS, 401);
    dsi__smetrics_tokens(m, 10, 5);
    dsi__smetrics_ttft(m, 0.03);
    dsi__smetrics_itl(m, 0.002);
    struct dsi_engine_stats st = {.running = 2,
                                  .waiting = 1,
                                  .kv_blocks_used = 7,
                                  .kv_blocks_free = 9,
                                  .kv_block_tokens = 16,
                                  .kv_bytes_per_token = 70272,
                                  .kv_capacity_tokens = 256,
                                  .kv_dtype = DSI_KV_INT8,
                                  .kv_blocks_cached = 5,
                                  .prefix_hit_tokens = 96,
                                  .prefix_miss_tokens = 40,
                                  .kv_evictions_total = 3};
    char *t = dsi__smetrics_render(m, &st, 1);
    CHECK(t && strstr(t, "dsinfer_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 2\n"));
    CHECK(t && strstr(t, "dsinfer_requests_total{route=\"/v1/models\",status=\"401\"} 1\n"));
    CHECK(t && strstr(t, "dsinfer_prompt_tokens_total 10\n"));
    CHECK(t && strstr(t, "dsinfer_generation_tokens_total 5\n"));
    CHECK(t && strstr(t, "dsinfer_time_to_first_token_seconds_bucket{le=\"0.025\"} 0\n"));
    CHECK(t && strstr(t, "dsinfer_time_to_first_token_seconds_bucket{le=\"0.05\"} 1\n"));
    CHECK(t && strstr(t, "dsinfer_kv_blocks_free 9\n"));
    CHECK(t && strstr(t, "dsinfer_kv_block_tokens 16\n"));
    CHECK(t && strstr(t, "dsinfer_kv_bytes_per_token 70272\n"));
    CHECK(t && strstr(t, "dsinfer_kv_capacity_tokens 256\n"));
    CHECK(t && strstr(t, "dsinfer_kv_cache_info{dtype=\"int8\"} 1\n"));
    CHECK(t && strstr(t, "dsinfer_running_sequences 2\n"));
    CHECK(t && strstr(t, "dsinfer_prefix_cache_hit_tokens_total 96\n"));
    CHECK(t && strstr(t, "dsinfer_prefix_cache_miss_tokens_total 40\n"));
    CHECK(t && strstr(t, "dsinfer_kv_blocks_cached 5\n"));
    CHECK(t && strstr(t, "dsinfer_kv_evictions_total 3\n"));
    CHECK(t && strstr(t, "dsinfer_stream_buffered_bytes 0\n"));
    CHECK(t && strstr(t, "dsinfer_streams_backpressure_total 0\n"));
    CHECK(t && strstr(t, "dsinfer_generation_failures_total{status=\"500\"} 0\n"));
    free(t);
    dsi__smetrics_stream_buffered(m, 5000);
    dsi__smetrics_stream_buffered(m, -1000);
    dsi__smetrics_stream_backpressure(m);
    dsi__smetrics_gen_failed(m, 503);
    dsi__smetrics_gen_failed(m, 500);
    dsi__smetrics_gen_failed(m, 503);
    t = dsi__smetrics_render(m, &st, 1);
    CHECK(t && strstr(t, "dsinfer_stream_buffered_bytes 4000\n"));
    CHECK(t && strstr(t, "dsinfer_streams_backpressure_total 1\n"));
    CHECK(t && strstr(t, "dsinfer_generation_failures_total{status=\"500\"} 1\n"));
    CHECK(t && strstr(t, "dsinfer_generation_failures_total{status=\"503\"} 2\n"));
    free(t);
    dsi__smetrics_destroy(m);
}

int main(void) {
    RUN(parse_chat_full);
    RUN(parse_chat_defaults);
    RUN(parse_chat_errors);
    RUN(parse_n_limits);
    RUN(parse_body_limits);
    RUN(parse_completion_prompts);
    RUN(parse_tokenize_detokenize);
    RUN(api_error_body);
    RUN(api_error_sse_event);
    RUN(textgen_keeps_leading_space);
    RUN(sampling_tiny_values_invalid);
    RUN(utf8_helpers);
    RUN(textgen_stop_across_tokens);
    RUN(textgen_false_prefix_released);
    RUN(textgen_reasoning_split);
    RUN(textgen_reasoning_unterminated);
    RUN(json_string_escaping);
    RUN(metrics_render_counts);
    RUN(parse_rejects_trailing_bytes_and_missing_content);
    RUN(parse_response_format);
    RUN(parse_tools_and_tool_choice);
    RUN(parse_tool_messages_render_in_prompt_form);
    RUN(tool_calls_extract_from_answers);
    RUN(tools_native_forced_grammar_and_prefill);
    RUN(tool_calls_extract_deepseek_native);
    RUN(tool_scan_streams_content_and_holds_only_a_marker_prefix);
    return test_summary();
}
