/*
 * test_grammar.c: the JSON grammar (src/grammar): schema compile errors, accepted
 * and rejected byte strings, vocabulary masks against a brute-force check at the
 * 152k Qwen2 vocabulary, and random walks through masks that must end in JSON the
 * schema accepts (checked by an independent validator below).
 */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/grammar.h"
#include "dsinfer/tok.h"
#include "test.h"
#include "test_json_schema.h"

#define QWEN_DIR "tests/data/tokenizers/qwen2"
#define V3_DIR "tests/data/tokenizers/deepseek-v3"

static struct dsi_grammar *compile(const char *schema) {
    struct dsi_grammar *g = NULL;
    char *err = NULL;
    int rc = dsi_grammar_compile(schema, strlen(schema), &g, &err);
    if (rc) fprintf(stderr, "  compile failed: %s\n", err ? err : "?");
    free(err);
    return g;
}

/* 1 accepted and complete, 0 accepted but incomplete, -1 rejected. */
static int run(const struct dsi_grammar *g, const char *text) {
    struct dsi_grammar_matcher *m = NULL;
    if (dsi_grammar_matcher_create(g, 0, &m)) return -2;
    int rc = dsi_grammar_matcher_accept(m, text, strlen(text));
    int out = rc ? -1 : dsi_grammar_matcher_complete(m) ? 1 : 0;
    dsi_grammar_matcher_destroy(m);
    return out;
}

/* Byte at a time must agree with all at once (the matcher is a pure automaton). */
static int run_bytewise(const struct dsi_grammar *g, const char *text) {
    struct dsi_grammar_matcher *m = NULL;
    if (dsi_grammar_matcher_create(g, 0, &m)) return -2;
    int out = 0;
    for (size_t i = 0; text[i]; i++)
        if (dsi_grammar_matcher_accept(m, text + i, 1)) {
            out = -1;
            break;
        }
    if (out == 0) out = dsi_grammar_matcher_complete(m) ? 1 : 0;
    dsi_grammar_matcher_destroy(m);
    return out;
}

static char *compile_err(const char *schema, int *rc) {
    struct dsi_grammar *g = NULL;
    char *err = NULL;
    *rc = dsi_grammar_compile(schema, strlen(schema), &g, &err);
    dsi_grammar_destroy(g);
    return err;
}

TEST(json_object_accepts_compact_objects_only) {
    struct dsi_grammar *g = NULL;
    CHECK_EQ_INT(dsi_grammar_json_object(&g, NULL), 0);
    static const char *ok[] = {"{}", "{\"a\":1}", "{\"a\":[1,2.5,-0.1e+3,true,false,null,\"x\"]}",
                               "{\"\":{\"b\":{}}}", "{\"k\":\"\\u00e9\\n\\\"\"}", "{\"\xc3\xa9\":\"\xe2\x82\xac\"}",
                               "{\"a\":[],\"a\":[[]]}", "{\"n\":0}", "{\"n\":-0.0E-7}"};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        CHECK_EQ_INT(run(g, ok[i]), 1);
        CHECK_EQ_INT(run_bytewise(g, ok[i]), 1);
    }
    static const char *bad[] = {"[]", "1", "\"s\"", "{ }", "{\"a\": 1}", "{\"a\":1} ", "{}{}", "{\"a\":01}",
                                "{\"a\":1.}", "{\"a\":.5}", "{\"a\":+1}", "{\"a\":tru}", "{\"a\":\"\\x\"}",
                                "{\"a\":\"\x01\"}", "{\"a\":\"\xc3\"}", "{\"a\":\"\xed\xa0\x80\"}",
                                "{\"a\":\"\\ud800\"}", "{a:1}", "{\"a\":1,}", "{,}", "{\"a\"}",
                                "{\"a\":12345678901234567}", "{\"a\":1e1234}", "\n{}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int r = run(g, bad[i]);
        if (r == 1) fprintf(stderr, "  wrongly complete: %s\n", bad[i]);
        CHECK(r != 1);
    }
    CHECK_EQ_INT(run(g, "{\"a\":[1,"), 0); /* a prefix: accepted, not complete */
    CHECK_EQ_INT(run(g, "{\"a\":1} "), -1);
    dsi_grammar_destroy(g);
}

TEST(json_object_nesting_is_bounded_without_dead_ends) {
    struct dsi_grammar *g = NULL;
    CHECK_EQ_INT(dsi_grammar_json_object(&g, NULL), 0);
    char buf[256];
    size_t n = 0;
    buf[n++] = '{';
    int opened = 1;
    /* open {"a": as deep as allowed; then only scalars may come, and it can close */
    while (n + 6 < sizeof buf) {
        memcpy(buf + n, "\"a\":{", 5);
        buf[n + 5] = 0;
        if (run(g, buf) == -1) break;
        n += 5;
        opened++;
    }
    CHECK(opened >= DSI_GRAMMAR_MAX_DEPTH - 1);
    CHECK(opened <= DSI_GRAMMAR_MAX_DEPTH + 1);
    buf[n] = 0;
    char deeper[300];
    snprintf(deeper, sizeof deeper, "%s\"a\":1", buf);
    CHECK_EQ_INT(run(g, deeper), -1); /* the deepest object may only be empty ... */
    for (int i = 0; i < opened; i++) /* ... and everything still closes */
        strcat(buf, "}");
    CHECK_EQ_INT(run(g, buf), 1);
    dsi_grammar_destroy(g);
}

TEST(schema_object_properties_in_order_with_required) {
    struct dsi_grammar *g = compile("{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
                                    "\"age\":{\"type\":\"integer\"},\"tags\":{\"type\":\"array\",\"items\":"
                                    "{\"type\":\"string\"}}},\"required\":[\"name\",\"tags\"],"
                                    "\"additionalProperties\":false}");
    CHECK(g != NULL);
    if (!g) return;
    CHECK_EQ_INT(run(g, "{\"name\":\"Al\",\"age\":3,\"tags\":[]}"), 1);
    CHECK_EQ_INT(run(g, "{\"name\":\"Al\",\"tags\":[\"x\",\"y\"]}"), 1); /* age optional */
    CHECK_EQ_INT(run(g, "{\"name\":\"Al\",\"age\":3"), 0);              /* a prefix */
    CHECK_EQ_INT(run(g, "{\"name\":\"Al\",\"age\":3}"), -1);            /* tags is required */
    CHECK_EQ_INT(run(g, "{\"age\":3,\"name\":\"Al\",\"tags\":[]}"), -1); /* schema order */
    CHECK_EQ_INT(run(g, "{\"name\":\"Al\",\"age\":3.5,\"tags\":[]}"), -1); /* integer */
    CHECK_EQ_INT(run(g, "{\"name\":\"Al\",\"other\":1,\"tags\":[]}"), -1);
    CHECK_EQ_INT(run(g, "{\"name\":1,\"tags\":[]}"), -1);
    CHECK_EQ_INT(run(g, "{}"), -1);
    CHECK_EQ_INT(run(g, "{\"nam\":\"Al\"}"), -1);
    dsi_grammar_destroy(g);
}

TEST(schema_enum_const_anyof_and_refs) {
    struct dsi_grammar *g = compile(
        "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"enum\":[\"red\",\"re\",1,null,"
        "{\"x\":[1]}]},\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"},\"maxItems\":2}},"
        "\"required\":[\"v\"]}},\"type\":\"object\",\"properties\":{\"root\":{\"$ref\":\"#/$defs/node\"},"
        "\"c\":{\"const\":\"k\"},\"u\":{\"anyOf\":[{\"type\":\"string\",\"maxLength\":2},{\"type\":\"null\"},"
        "{\"type\":\"object\",\"properties\":{\"p\":{\"type\":\"boolean\"}},\"required\":[\"p\"]},"
        "{\"type\":\"object\",\"properties\":{\"q\":{\"type\":\"number\"}},\"required\":[\"q\"]}]}},"
        "\"required\":[\"root\",\"c\",\"u\"]}");
    CHECK(g != NULL);
    if (!g) return;
    CHECK_EQ_INT(run(g, "{\"root\":{\"v\":\"red\"},\"c\":\"k\",\"u\":null}"), 1);
    CHECK_EQ_INT(run(g, "{\"root\":{\"v\":\"re\",\"kids\":[{\"v\":1},{\"v\":{\"x\":[1]}}]},\"c\":\"k\",\"u\":\"ab\"}"),
                 1);
    CHECK_EQ_INT(run(g, "{\"root\":{\"v\":null},\"c\":\"k\",\"u\":{\"p\":true}}"), 1);
    CHECK_EQ_INT(run(g, "{\"root\":{\"v\":null},\"c\":\"k\",\"u\":{\"q\":-2.5}}"), 1);
    CHECK_EQ_INT(run_bytewise(g, "{\"root\":{\"v\":null},\"c\":\"k\",\"u\":{\"q\":-2.5}}"), 1);
    CHECK_EQ_INT(run(g, "{\"root\":{\"v\":\"r\"},\"c\":\"k\",\"u\":null}"), -1);
    CHECK_EQ_INT(run(g, "{\"root\":{\"v\":2},\"c\":\"k\",\"u\":null}"), -1);
    CHECK_EQ_INT(run(g, "{\"root\":{\"v\":1},\"c\":\"j\",\"u\":null}"), -1);
    CHECK_EQ_INT(run(g, "{\"root\":{\"v\":1},\"c\":\"k\",\"u\":\"abc\"}"), -1); /* maxLength */
    CHECK_EQ_INT(run(g, "{\"root\":{\"v\":1},\"c\":\"k\",\"u\":{\"p\":1}}"), -1);
    CHECK_EQ_INT(run(g, "{\"root\":{\"v\":1,\"kids\":[{\"v\":1},{\"v\":1},{\"v\":1}]},\"c\":\"k\",\"u\":null}"),
                 -1); /* maxItems */
    dsi_grammar_destroy(g);
}

TEST(schema_scalars_at_the_top_and_length_bounds) {
    struct dsi_grammar *g = compile("{\"type\":\"integer\"}");
    CHECK_EQ_INT(run(g, "12"), 1);
    CHECK_EQ_INT(run(g, "-"), 0);
    CHECK_EQ_INT(run(g, "1.5"), -1);
    CHECK_EQ_INT(run(g, "1}"), -1);
    dsi_grammar_destroy(g);
    g = compile("{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}");
    CHECK_EQ_INT(run(g, "\"a\""), -1);
    CHECK_EQ_INT(run(g, "\"ab\""), 1);
    CHECK_EQ_INT(run(g, "\"\xe2\x82\xac\\n\xc3\xa9\""), 1); /* code points, an escape is one */
    CHECK_EQ_INT(run(g, "\"abcd\""), -1);
    dsi_grammar_destroy(g);
    g = compile("{\"type\":\"array\",\"items\":{\"type\":[\"boolean\",\"null\"]},\"minItems\":1,\"maxItems\":2}");
    CHECK_EQ_INT(run(g, "[]"), -1);
    CHECK_EQ_INT(run(g, "[true]"), 1);
    CHECK_EQ_INT(run(g, "[null,false]"), 1);
    CHECK_EQ_INT(run(g, "[null,false,true]"), -1);
    dsi_grammar_destroy(g);
    g = compile("{\"type\":\"object\"}"); /* no properties, additionalProperties not false: any object */
    CHECK_EQ_INT(run(g, "{\"z\":[1]}"), 1);
    dsi_grammar_destroy(g);
}

TEST(schema_compile_errors_name_the_problem) {
    static const struct {
        const char *schema, *needle;
        int rc;
    } cases[] = {
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"number\",\"minimum\":1}}}", "'minimum'", DSI_EINVAL},
        {"{\"type\":\"string\",\"pattern\":\"^a$\"}", "'pattern'", DSI_EINVAL},
        {"{\"type\":\"string\",\"format\":\"email\"}", "'format'", DSI_EINVAL},
        {"{\"oneOf\":[{\"type\":\"string\"}]}", "'oneOf'", DSI_EINVAL},
        {"{\"type\":\"object\",\"properties\":{},\"required\":[\"x\"]}", "'x'", DSI_EINVAL},
        {"{\"type\":\"array\",\"minItems\":3,\"maxItems\":2}", "minItems", DSI_EINVAL},
        {"{\"type\":\"object\",\"properties\":{\"a\":false},\"required\":[\"a\"]}", "false", DSI_EINVAL},
        {"{\"$ref\":\"#\"}", "cyclic", DSI_EINVAL},
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#\"}},\"required\":[\"a\"]}", "satisfied",
         DSI_EINVAL},
        {"{\"$ref\":\"#/$defs/missing\"}", "$ref", DSI_EINVAL},
        {"{\"type\":\"widget\"}", "widget", DSI_EINVAL},
        {"{\"type\":\"string\",\"enum\":[1,2]}", "enum", DSI_EINVAL},
        {"{\"type\":", "JSON", DSI_EINVAL},
        {"[1]", "object", DSI_EINVAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int rc = 0;
        char *err = compile_err(cases[i].schema, &rc);
        CHECK_EQ_INT(rc, cases[i].rc);
        CHECK(err && strstr(err, cases[i].needle));
        if (!err || !strstr(err, cases[i].needle)) fprintf(stderr, "  case %zu: %s\n", i, err ? err : "(null)");
        free(err);
    }
    /* optional recursion is fine: the matcher just stops offering it when deep */
    struct dsi_grammar *g = compile("{\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#\"}}}");
    CHECK(g != NULL);
    CHECK_EQ_INT(run(g, "{\"a\":{\"a\":{}}}"), 1);
    dsi_grammar_destroy(g);
}

/* ---- masks at the Qwen2 vocabulary ---- */

static struct dsi_tokenizer *qwen(void) {
    struct dsi_tokenizer *t = NULL;
    char *err = NULL;
    if (dsi_tok_load(QWEN_DIR, &t, &err)) fprintf(stderr, "  %s\n", err ? err : "?");
    free(err);
    return t;
}

static struct dsi_tokenizer *v3(void) {
    struct dsi_tokenizer *t = NULL;
    char *err = NULL;
    if (dsi_tok_load(V3_DIR, &t, &err)) fprintf(stderr, "  %s\n", err ? err : "?");
    free(err);
    return t;
}

/* The mask must hold exactly the tokens whose bytes the matcher accepts: an added
 * token's reference, an ordinary token's bytes unless they hold a 0xFF byte. */
static void check_mask_exact(struct dsi_grammar_matcher *m, const struct dsi_tokenizer *t,
                             const struct dsi_token_trie *tr, int *n_allowed) {
    int nv = dsi_tok_vocab_size(t);
    uint32_t *mask = calloc((size_t)(nv + 31) / 32, sizeof *mask);
    int count = dsi_grammar_mask(m, tr, mask, nv);
    int wrong = 0, allowed = 0;
    for (int32_t id = 0; id < nv; id++) {
        const char *b;
        size_t len;
        bool added;
        bool want = false;
        char ref[DSI_GRAMMAR_TOKEN_REF_LEN];
        if (!dsi_tok_token_bytes(t, id, &b, &len, &added) && added && !dsi_grammar_token_ref(id, ref))
            want = dsi_grammar_matcher_check(m, ref, sizeof ref);
        else if (!added && len > 0 && !memchr(b, 0xFF, len))
            want = dsi_grammar_matcher_check(m, b, len);
        bool got = mask[id >> 5] >> (id & 31) & 1;
        allowed += got;
        if (want != got && wrong++ < 5) fprintf(stderr, "  token %d: mask %d, check %d\n", id, got, want);
    }
    CHECK_EQ_INT(wrong, 0);
    CHECK_EQ_INT(count, allowed);
    /* the cache answers the same */
    uint32_t *again = calloc((size_t)(nv + 31) / 32, sizeof *again);
    CHECK_EQ_INT(dsi_grammar_mask(m, tr, again, nv), count);
    CHECK(memcmp(mask, again, (size_t)(nv + 31) / 32 * sizeof *mask) == 0);
    *n_allowed = allowed;
    free(again);
    free(mask);
}

/* A chat format's call syntax around the arguments: raw prefix bytes, then the
 * schema's value; the matcher is finished (nothing may follow) once it closes. */
TEST(prefixed_alternatives_raw_text_then_schema) {
    const struct dsi_grammar_alt alts[] = {
        {"get_weather\n```json\n", "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},"
                                    "\"required\":[\"city\"]}"},
        {"get_time\n```json\n", "{\"type\":\"object\",\"properties\":{}}"},
        {"get_tide\n```json\n", "{\"$defs\":{\"p\":{\"enum\":[1,2]}},\"type\":\"object\",\"properties\":"
                                 "{\"port\":{\"$ref\":\"#/$defs/p\"}},\"required\":[\"port\"]}"},
    };
    struct dsi_grammar *g = NULL;
    char *err = NULL;
    CHECK_EQ_INT(dsi_grammar_compile_prefixed(alts, 3, &g, &err), 0);
    free(err);
    if (!g) return;
    CHECK_EQ_INT(run(g, "get_weather\n```json\n{\"city\":\"Oslo\"}"), 1);
    CHECK_EQ_INT(run_bytewise(g, "get_time\n```json\n{}"), 1);
    CHECK_EQ_INT(run(g, "get_tide\n```json\n{\"port\":2}"), 1); /* $ref resolved in its own schema */
    CHECK_EQ_INT(run(g, "get_tide\n```json\n{\"port\":3}"), -1);
    CHECK_EQ_INT(run(g, "get_t"), 0);
    CHECK_EQ_INT(run(g, "get_weather\n```json\n{}"), -1);        /* city is required */
    CHECK_EQ_INT(run(g, "get_weather\n```json\n{\"city\":\"Oslo\"}x"), -1); /* nothing after */
    CHECK_EQ_INT(run(g, "get_weather {\"city\":\"Oslo\"}"), -1);
    CHECK_EQ_INT(run(g, "{}"), -1);
    struct dsi_grammar_matcher *m = NULL;
    CHECK_EQ_INT(dsi_grammar_matcher_create(g, 0, &m), 0);
    const char *t = "get_time\n```json\n{";
    CHECK_EQ_INT(dsi_grammar_matcher_accept(m, t, strlen(t)), 0);
    CHECK(!dsi_grammar_matcher_finished(m) && !dsi_grammar_matcher_complete(m));
    CHECK_EQ_INT(dsi_grammar_matcher_accept(m, "}", 1), 0);
    CHECK(dsi_grammar_matcher_finished(m) && dsi_grammar_matcher_complete(m));
    dsi_grammar_matcher_destroy(m);
    dsi_grammar_destroy(g);
    /* no prefix: the schema alone; bad input is refused with the alternative named */
    const struct dsi_grammar_alt bare[] = {{NULL, "{\"type\":\"integer\"}"}};
    CHECK_EQ_INT(dsi_grammar_compile_prefixed(bare, 1, &g, NULL), 0);
    CHECK_EQ_INT(run(g, "42"), 1);
    dsi_grammar_destroy(g);
    const struct dsi_grammar_alt bad[] = {{"f\n", "{\"type\":\"object\"}"}, {"g\n", "{\"minimum\":1}"}};
    err = NULL;
    CHECK_EQ_INT(dsi_grammar_compile_prefixed(bad, 2, &g, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "alternative 1") && strstr(err, "minimum"));
    free(err);
    CHECK_EQ_INT(dsi_grammar_compile_prefixed(bad, 0, &g, NULL), DSI_EINVAL);
}

TEST(mask_at_152k_vocab_allows_exactly_the_viable_tokens) {
    struct dsi_tokenizer *t = qwen();
    CHECK(t != NULL);
    if (!t) return;
    CHECK(dsi_tok_vocab_size(t) > 150000);
    struct dsi_token_trie *tr = NULL;
    CHECK_EQ_INT(dsi_token_trie_create(t, &tr, NULL), 0);
    struct dsi_grammar *g = compile("{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\","
                                    "\"maxLength\":5},\"kind\":{\"enum\":[\"cat\",\"car\",\"dog\"]},\"n\":"
                                    "{\"type\":\"number\"},\"free\":{}},\"required\":[\"name\",\"kind\",\"n\","
                                    "\"free\"]}");
    struct dsi_grammar *jo = NULL;
    CHECK_EQ_INT(dsi_grammar_json_object(&jo, NULL), 0);
    static const char *prefixes[] = {"", "{\"", "{\"na", "{\"name\":\"ab", "{\"name\":\"abcde",
                                     "{\"name\":\"\xe2\x82", "{\"name\":\"a\",\"kind\":\"ca",
                                     "{\"name\":\"a\",\"kind\":\"dog\",\"n\":1", "{\"name\":\"a\",\"kind\":\"dog\",\"n\":-1.5e", "{\"name\":\"a\",\"kind\":\"dog\",\"n\":2,\"free\":"};
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
        struct dsi_grammar_matcher *m = NULL;
        CHECK_EQ_INT(dsi_grammar_matcher_create(g, 4, &m), 0);
        CHECK_EQ_INT(dsi_grammar_matcher_accept(m, prefixes[i], strlen(prefixes[i])), 0);
        int allowed = 0;
        check_mask_exact(m, t, tr, &allowed);
        CHECK(allowed > 0); /* never a dead end */
        dsi_grammar_matcher_destroy(m);
    }
    static const char *jprefixes[] = {"", "{", "{\"k\":\"text", "{\"k\":[1,{\"a\":tr"};
    for (size_t i = 0; i < sizeof jprefixes / sizeof *jprefixes; i++) {
        struct dsi_grammar_matcher *m = NULL;
        CHECK_EQ_INT(dsi_grammar_matcher_create(jo, 4, &m), 0);
        CHECK_EQ_INT(dsi_grammar_matcher_accept(m, jprefixes[i], strlen(jprefixes[i])), 0);
        int allowed = 0;
        check_mask_exact(m, t, tr, &allowed);
        if (i == 2) CHECK(allowed > 100000); /* inside a string nearly everything goes */
        dsi_grammar_matcher_destroy(m);
    }
    /* raw prefix text: the mask follows it byte for byte, then the schema */
    const struct dsi_grammar_alt alts[] = {{"get_weather\n```json\n", "{\"type\":\"object\",\"properties\":"
                                                                      "{\"city\":{\"type\":\"string\"}}}"},
                                           {"get_time\n```json\n", "{\"type\":\"object\",\"properties\":{}}"}};
    struct dsi_grammar *pg = NULL;
    CHECK_EQ_INT(dsi_grammar_compile_prefixed(alts, 2, &pg, NULL), 0);
    static const char *pprefixes[] = {"", "get_", "get_weather\n``", "get_time\n```json\n"};
    for (size_t i = 0; pg && i < sizeof pprefixes / sizeof *pprefixes; i++) {
        struct dsi_grammar_matcher *m = NULL;
        CHECK_EQ_INT(dsi_grammar_matcher_create(pg, 4, &m), 0);
        CHECK_EQ_INT(dsi_grammar_matcher_accept(m, pprefixes[i], strlen(pprefixes[i])), 0);
        int allowed = 0;
        check_mask_exact(m, t, tr, &allowed);
        CHECK(allowed > 0);
        dsi_grammar_matcher_destroy(m);
    }
    dsi_grammar_destroy(pg);
    dsi_grammar_destroy(g);
    dsi_grammar_destroy(jo);
    dsi_token_trie_destroy(tr);
    dsi_tok_free(t);
}

/* ---- random walks: whatever token is picked, the result is schema-valid ---- */

static uint64_t rng_next(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Picks uniformly among allowed tokens, but prefers ending once complete half the
 * time, so walks terminate. Returns the text (malloc'd) or NULL if stuck. */
static char *random_walk(const struct dsi_grammar *g, const struct dsi_tokenizer *t, const struct dsi_token_trie *tr,
                         uint64_t seed, int max_steps) {
    int nv = dsi_tok_vocab_size(t);
    uint32_t *mask = calloc((size_t)(nv + 31) / 32, sizeof *mask);
    int32_t *ids = malloc((size_t)nv * sizeof *ids);
    char *text = calloc(1, 1);
    size_t len = 0;
    struct dsi_grammar_matcher *m = NULL;
    dsi_grammar_matcher_create(g, 8, &m);
    uint64_t x = seed * 2654435761u + 1;
    for (int step = 0; step < max_steps; step++) {
        if (dsi_grammar_matcher_complete(m) && (rng_next(&x) & 1 || step > max_steps / 2)) break;
        int n = dsi_grammar_mask(m, tr, mask, nv), k = 0;
        if (n == 0) break;
        /* short tokens get a boost so structure, not long strings, dominates */
        for (int32_t id = 0; id < nv; id++)
            if (mask[id >> 5] >> (id & 31) & 1) ids[k++] = id;
        int32_t pick = ids[rng_next(&x) % (uint64_t)k];
        if (rng_next(&x) % 4 == 0) { /* sometimes the shortest allowed token: closes structures */
            size_t best = SIZE_MAX;
            for (int i = 0; i < k; i++) {
                const char *b;
                size_t l;
                dsi_tok_token_bytes(t, ids[i], &b, &l, NULL);
                if (l < best && (rng_next(&x) & 3)) best = l, pick = ids[i];
            }
        }
        const char *b;
        size_t l;
        dsi_tok_token_bytes(t, pick, &b, &l, NULL);
        if (dsi_grammar_matcher_accept_token(m, tr, pick)) break; /* an added token: its reference */
        text = realloc(text, len + l + 1);
        memcpy(text + len, b, l);
        len += l;
        text[len] = 0;
    }
    bool done = dsi_grammar_matcher_complete(m);
    dsi_grammar_matcher_destroy(m);
    free(ids);
    free(mask);
    if (!done) {
        free(text);
        return NULL;
    }
    return text;
}

TEST(random_walks_through_masks_give_schema_valid_json) {
    struct dsi_tokenizer *t = qwen();
    if (!t) return;
    struct dsi_token_trie *tr = NULL;
    CHECK_EQ_INT(dsi_token_trie_create(t, &tr, NULL), 0);
    static const char *schemas[] = {
        "{\"type\":\"object\",\"properties\":{\"ok\":{\"type\":\"boolean\"},\"n\":{\"type\":\"integer\"}},"
        "\"required\":[\"ok\",\"n\"],\"additionalProperties\":false}",
        "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"array\",\"items\":{\"enum\":[\"x\",\"xy\",3]},"
        "\"maxItems\":3},\"s\":{\"type\":\"string\",\"maxLength\":4},\"u\":{\"anyOf\":[{\"type\":\"null\"},"
        "{\"type\":\"number\"}]}},\"required\":[\"a\",\"s\",\"u\"],\"additionalProperties\":false}",
        "{\"$defs\":{\"t\":{\"type\":\"object\",\"properties\":{\"k\":{\"type\":\"array\",\"items\":"
        "{\"$ref\":\"#/$defs/t\"},\"maxItems\":2}},\"required\":[\"k\"]}},\"$ref\":\"#/$defs/t\"}",
    };
    int walks = 0, ok = 0;
    for (size_t i = 0; i < sizeof schemas / sizeof *schemas; i++) {
        struct dsi_grammar *g = compile(schemas[i]);
        cJSON *sch = cJSON_Parse(schemas[i]);
        for (uint64_t seed = 1; seed <= 6; seed++) {
            char *text = random_walk(g, t, tr, seed + i * 100, 200);
            if (!text) continue; /* ran out of steps: not a verdict */
            walks++;
            cJSON *v = cJSON_Parse(text);
            bool good = v && valid(v, sch, sch);
            if (!good) fprintf(stderr, "  schema %zu: invalid output %s\n", i, text);
            ok += good;
            cJSON_Delete(v);
            free(text);
        }
        cJSON_Delete(sch);
        dsi_grammar_destroy(g);
    }
    CHECK(walks >= 9);
    CHECK_EQ_INT(ok, walks);
    dsi_token_trie_destroy(tr);
    dsi_tok_free(t);
}

/* ---- repeated values: a chat format's run of tool calls ---- */

#define V3_CALL_END 128809

/* s with each "@N@" replaced by token N's reference (static buffer per slot). */
static const char *refs(int slot, const char *s) {
    static char buf[4][512];
    char *o = buf[slot];
    while (*s) {
        if (*s == '@') {
            char *end = NULL;
            long id = strtol(s + 1, &end, 10);
            dsi_grammar_token_ref((int32_t)id, o);
            o += DSI_GRAMMAR_TOKEN_REF_LEN;
            s = end + 1;
        } else {
            *o++ = *s++;
        }
    }
    *o = 0;
    return buf[slot];
}

static const struct dsi_grammar_alt CALL_ALTS[] = {
    {"get_weather\n```json\n", "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},"
                               "\"required\":[\"city\"],\"additionalProperties\":false}"},
    {"get_time\n```json\n", "{\"type\":\"object\",\"properties\":{\"tz\":{\"enum\":[\"utc\",\"cet\"]}}}"},
};
#define SEP_V3 "\n```@128809@\n@128808@function@128814@"
#define END_V3 "\n```@128809@@128807@"

TEST(repeated_values_between_raw_separators_up_to_the_cap) {
    struct dsi_grammar *g = NULL;
    char *err = NULL;
    CHECK_EQ_INT(dsi_grammar_compile_repeated(CALL_ALTS, 2, refs(0, SEP_V3), refs(1, END_V3), 2, &g, &err), 0);
    free(err);
    if (!g) return;
    CHECK_EQ_INT(run(g, refs(2, "get_time\n```json\n{}" END_V3)), 1);
    CHECK_EQ_INT(run_bytewise(g, refs(2, "get_weather\n```json\n{\"city\":\"Oslo\"}" SEP_V3
                                       "get_time\n```json\n{\"tz\":\"cet\"}" END_V3)), 1);
    CHECK_EQ_INT(run(g, refs(2, "get_time\n```json\n{}")), 0);       /* the end is required */
    CHECK_EQ_INT(run(g, refs(2, "get_time\n```json\n{}\n```@128809@")), 0);
    CHECK_EQ_INT(run(g, refs(2, "get_time\n```json\n{}" END_V3 "x")), -1); /* nothing after the end */
    CHECK_EQ_INT(run(g, refs(2, "get_time\n```json\n{}" SEP_V3 "get_time\n```json\n{}" SEP_V3)), -1); /* cap 2 */
    CHECK_EQ_INT(run(g, refs(2, "get_time\n```json\n{}" SEP_V3 "get_weather\n```json\n{}")), -1); /* city */
    CHECK_EQ_INT(run(g, "get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"), -1); /* not as text */
    CHECK_EQ_INT(run(g, refs(2, SEP_V3)), -1);
    struct dsi_grammar_matcher *m = NULL;
    CHECK_EQ_INT(dsi_grammar_matcher_create(g, 0, &m), 0);
    const char *t = refs(2, "get_time\n```json\n{}" SEP_V3 "get_time\n```json\n{}\n```@128809@");
    CHECK_EQ_INT(dsi_grammar_matcher_accept(m, t, strlen(t)), 0);
    CHECK(!dsi_grammar_matcher_complete(m) && !dsi_grammar_matcher_finished(m));
    CHECK_EQ_INT(dsi_grammar_matcher_accept(m, refs(3, "@128807@"), DSI_GRAMMAR_TOKEN_REF_LEN), 0);
    CHECK(dsi_grammar_matcher_complete(m) && dsi_grammar_matcher_finished(m));
    dsi_grammar_matcher_destroy(m);
    dsi_grammar_destroy(g);
    /* one value at most: the separator is refused */
    CHECK_EQ_INT(dsi_grammar_compile_repeated(CALL_ALTS, 2, refs(0, SEP_V3), refs(1, END_V3), 1, &g, NULL), 0);
    CHECK_EQ_INT(run(g, refs(2, "get_time\n```json\n{}" END_V3)), 1);
    CHECK_EQ_INT(run(g, refs(2, "get_time\n```json\n{}" SEP_V3)), -1);
    dsi_grammar_destroy(g);
    /* an end that is a prefix of the separator (ChatML): complete after it, not
     * finished while another value may follow, finished at the cap */
    const struct dsi_grammar_alt obj[] = {{"{\"n\":", "{\"type\":\"integer\"}"}};
    CHECK_EQ_INT(dsi_grammar_compile_repeated(obj, 1, "}\n</c>\n<c>\n", "}\n</c>", 2, &g, NULL), 0);
    CHECK_EQ_INT(dsi_grammar_matcher_create(g, 0, &m), 0);
    const char *first = "{\"n\":1}\n</c>", *second = "\n<c>\n{\"n\":2}\n</c>";
    CHECK_EQ_INT(dsi_grammar_matcher_accept(m, first, strlen(first)), 0);
    CHECK(dsi_grammar_matcher_complete(m) && !dsi_grammar_matcher_finished(m));
    CHECK_EQ_INT(dsi_grammar_matcher_accept(m, second, strlen(second)), 0);
    CHECK(dsi_grammar_matcher_complete(m) && dsi_grammar_matcher_finished(m));
    CHECK_EQ_INT(dsi_grammar_matcher_accept(m, "\n", 1), DSI_EINVAL);
    dsi_grammar_matcher_destroy(m);
    dsi_grammar_destroy(g);
    /* bad input */
    err = NULL;
    CHECK_EQ_INT(dsi_grammar_compile_repeated(CALL_ALTS, 2, refs(0, SEP_V3), refs(1, END_V3), 0, &g, &err), DSI_EINVAL);
    free(err);
    err = NULL;
    CHECK_EQ_INT(dsi_grammar_compile_repeated(CALL_ALTS, 2, "\n\xff\x80", "\n", 2, &g, &err), DSI_EINVAL);
    CHECK(err && strstr(err, "token reference"));
    free(err);
    CHECK_EQ_INT(dsi_grammar_compile_repeated(CALL_ALTS, 2, NULL, "\n", 2, &g, NULL), DSI_EINVAL);
    char ref[DSI_GRAMMAR_TOKEN_REF_LEN];
    CHECK_EQ_INT(dsi_grammar_token_ref(DSI_GRAMMAR_MAX_REF_ID + 1, ref), DSI_ERANGE);
    CHECK_EQ_INT(dsi_grammar_token_ref(-1, ref), DSI_ERANGE);
}

/* Splits a V3 run of calls (text as decoded) into name + arguments pairs and
 * validates each against its tool's schema; returns the number of calls, -1 if any
 * is malformed or invalid. */
static int v3_calls_valid(const char *text) {
    static const char open[] = "<｜tool▁call▁begin｜>function<｜tool▁sep｜>", close[] = "\n```<｜tool▁call▁end｜>";
    int n = 0;
    const char *p = text;
    for (;;) {
        const char *nl = strchr(p, '\n'), *c = strstr(p, close);
        if (!nl || !c || strncmp(nl, "\n```json\n", 9)) return -1;
        const struct dsi_grammar_alt *alt = NULL;
        for (size_t i = 0; i < 2; i++)
            if (!strncmp(p, CALL_ALTS[i].prefix, strlen(CALL_ALTS[i].prefix))) alt = &CALL_ALTS[i];
        if (!alt) return -1;
        cJSON *v = cJSON_ParseWithLength(nl + 9, (size_t)(c - nl - 9)), *sch = cJSON_Parse(alt->schema_json);
        bool good = v && valid(v, sch, sch);
        cJSON_Delete(v);
        cJSON_Delete(sch);
        if (!good) return -1;
        n++;
        p = c + strlen(close);
        if (!strcmp(p, "<｜tool▁calls▁end｜>")) return n;
        if (*p++ != '\n' || strncmp(p, open, strlen(open))) return -1;
        p += strlen(open);
    }
}

/* At the V3 vocabulary the markers are the tool tokens themselves: the template's
 * two-call answer is taken token by token, a marker spelled in ordinary tokens is
 * not, the masks are exact around them, and random walks give valid calls. */
TEST(repeated_calls_at_the_v3_vocab_take_the_tool_tokens) {
    struct dsi_tokenizer *t = v3();
    CHECK(t != NULL);
    if (!t) return;
    struct dsi_token_trie *tr = NULL;
    CHECK_EQ_INT(dsi_token_trie_create(t, &tr, NULL), 0);
    char *sep = NULL, *end = NULL;
    CHECK_EQ_INT(dsi_grammar_raw_text(t, "\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>", &sep,
                                      NULL), 0);
    CHECK_EQ_INT(dsi_grammar_raw_text(t, "\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>", &end, NULL), 0);
    CHECK_EQ_STR(sep ? sep : "", refs(0, SEP_V3));
    CHECK_EQ_STR(end ? end : "", refs(1, END_V3));
    struct dsi_grammar *g = NULL;
    CHECK_EQ_INT(dsi_grammar_compile_repeated(CALL_ALTS, 2, sep, end, 8, &g, NULL), 0);
    if (!g) goto out;
    const char *answer = "get_weather\n```json\n{\"city\":\"Oslo\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>"
                         "function<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    int32_t *ids = NULL;
    size_t n_ids = 0, k = 0;
    CHECK_EQ_INT(dsi_tok_encode(t, answer, strlen(answer), true, &ids, &n_ids, NULL), 0);
    struct dsi_grammar_matcher *tm = NULL;
    CHECK_EQ_INT(dsi_grammar_matcher_create(g, 4, &tm), 0);
    while (k < n_ids && dsi_grammar_matcher_accept_token(tm, tr, ids[k]) == 0)
        k++;
    CHECK(k == n_ids && dsi_grammar_matcher_finished(tm));
    dsi_grammar_matcher_destroy(tm);
    free(ids);
    /* the marker spelled in ordinary tokens is refused ("<" is one) */
    tm = NULL;
    CHECK_EQ_INT(dsi_grammar_matcher_create(g, 4, &tm), 0);
    const char *open = "get_time\n```json\n{}\n```";
    CHECK_EQ_INT(dsi_grammar_matcher_accept(tm, open, strlen(open)), 0);
    int32_t lt = dsi_tok_lookup(t, "<");
    CHECK(lt >= 0 && dsi_grammar_matcher_accept_token(tm, tr, lt) == DSI_EINVAL);
    CHECK_EQ_INT(dsi_grammar_matcher_accept_token(tm, tr, V3_CALL_END), 0);
    dsi_grammar_matcher_destroy(tm);
    static const char *prefixes[] = {"get_weather\n```json\n{\"city\":\"O\"}", "get_time\n```json\n{}\n```",
                                     "get_time\n```json\n{}\n```@128809@", ("get_time\n```json\n{}" SEP_V3)};
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
        struct dsi_grammar_matcher *m = NULL;
        CHECK_EQ_INT(dsi_grammar_matcher_create(g, 4, &m), 0);
        const char *p = refs(2, prefixes[i]);
        CHECK_EQ_INT(dsi_grammar_matcher_accept(m, p, strlen(p)), 0);
        int allowed = 0;
        check_mask_exact(m, t, tr, &allowed);
        if (i == 1) CHECK_EQ_INT(allowed, 1); /* only <｜tool▁call▁end｜> */
        if (i == 2) CHECK(allowed >= 2);      /* \n... or <｜tool▁calls▁end｜> */
        dsi_grammar_matcher_destroy(m);
    }
    int walks = 0, ok = 0, multi = 0;
    for (uint64_t seed = 1; seed <= 8; seed++) {
        char *text = random_walk(g, t, tr, seed, 300);
        if (!text) continue;
        walks++;
        int n = v3_calls_valid(text);
        if (n < 1) fprintf(stderr, "  invalid calls: %s\n", text);
        ok += n >= 1;
        multi += n > 1;
        free(text);
    }
    CHECK(walks >= 4);
    CHECK_EQ_INT(ok, walks);
    CHECK(multi >= 1);
out:
    free(sep);
    free(end);
    dsi_grammar_destroy(g);
    dsi_token_trie_destroy(tr);
    dsi_tok_free(t);
}

int main(void) {
    RUN(json_object_accepts_compact_objects_only);
    RUN(json_object_nesting_is_bounded_without_dead_ends);
    RUN(schema_object_properties_in_order_with_required);
    RUN(schema_enum_const_anyof_and_refs);
    RUN(schema_scalars_at_the_top_and_length_bounds);
    RUN(schema_compile_errors_name_the_problem);
    RUN(prefixed_alternatives_raw_text_then_schema);
    RUN(mask_at_152k_vocab_allows_exactly_the_viable_tokens);
    RUN(random_walks_through_masks_give_schema_valid_json);
    RUN(repeated_values_between_raw_separators_up_to_the_cap);
    RUN(repeated_calls_at_the_v3_vocab_take_the_tool_tokens);
    return test_summary();
}
