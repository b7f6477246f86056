/*
 * reqfmt.c: the structured-output part of a request body: response_format
 * ({"type": "text" | "json_object" | "json_schema", "json_schema": {"name",
 * "description", "schema", "strict"}}) compiled into the grammar the engine
 * constrains decoding with (grammar.h). Part of the request parser: a pure
 * function of the body, fuzzed with it (tests/fuzz/fuzz_request.c).
 *
 * OpenAI's rules kept: json_schema.name is required, at most 64 of [A-Za-z0-9_-].
 * "strict" is accepted either way: the grammar always enforces the schema, and a
 * schema it cannot enforce is a 400 naming the keyword rather than a silent
 * best effort. A missing "schema" allows any JSON value.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/grammar.h"
#include "internal.h"

static int name_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* A compile error becomes a 400 on param with the compiler's message. */
static int compile_status(int rc, char *err, const char *param, struct dsi__api_error *e) {
    int st;
    if (rc == DSI_ENOMEM) st = dsi__api_error_set(e, 500, NULL, "internal_error", "out of memory");
    else st = dsi__api_error_set(e, 400, param, "invalid_schema", "%s: %s", param, err ? err : "invalid schema");
    free(err);
    return st;
}

int dsi__srv_compile_schema(const struct cJSON *schema, const char *param, struct dsi_grammar **out,
                            struct dsi__api_error *e) {
    char *text = cJSON_PrintUnformatted(schema);
    if (!text) return dsi__api_error_set(e, 500, NULL, "internal_error", "out of memory");
    char *err = NULL;
    int rc = dsi_grammar_compile(text, strlen(text), out, &err);
    free(text);
    return rc ? compile_status(rc, err, param, e) : 0;
}

int dsi__srv_parse_response_format(const struct cJSON *root, struct dsi__req *r, struct dsi__api_error *e) {
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(root, "response_format");
    if (!rf || cJSON_IsNull(rf)) return 0;
    if (!cJSON_IsObject(rf))
        return dsi__api_error_set(e, 400, "response_format", "invalid_type", "'response_format' must be an object");
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(rf, "type");
    if (!cJSON_IsString(ty))
        return dsi__api_error_set(e, 400, "response_format.type", ty ? "invalid_type" : "missing_field",
                                  "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"");
    if (!strcmp(ty->valuestring, "text")) return 0;
    char *err = NULL;
    int rc;
    if (!strcmp(ty->valuestring, "json_object")) {
        rc = dsi_grammar_json_object(&r->grammar, &err);
        return rc ? compile_status(rc, err, "response_format", e) : 0;
    }
    if (strcmp(ty->valuestring, "json_schema"))
        return dsi__api_error_set(e, 400, "response_format.type", "invalid_value",
                                  "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(rf, "json_schema");
    if (!cJSON_IsObject(js))
        return dsi__api_error_set(e, 400, "response_format.json_schema", js ? "invalid_type" : "missing_field",
                                  "'response_format.json_schema' must be an object with 'name' and 'schema'");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(js, "name");
    if (!cJSON_IsString(name) || !name_ok(name->valuestring))
        return dsi__api_error_set(e, 400, "response_format.json_schema.name", name ? "invalid_value" : "missing_field",
                                  "'response_format.json_schema.name' must be 1 to 64 of a-z, A-Z, 0-9, _ and -");
    const cJSON *strict = cJSON_GetObjectItemCaseSensitive(js, "strict");
    if (strict && !cJSON_IsNull(strict) && !cJSON_IsBool(strict))
        return dsi__api_error_set(e, 400, "response_format.json_schema.strict", "invalid_type",
                                  "'response_format.json_schema.strict' must be a boolean");
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(js, "schema");
    if (!schema || cJSON_IsNull(schema)) {
        static const char any[] = "{}";
        rc = dsi_grammar_compile(any, sizeof any - 1, &r->grammar, &err);
        return rc ? compile_status(rc, err, "response_format.json_schema.schema", e) : 0;
    }
    if (!cJSON_IsObject(schema))
        return dsi__api_error_set(e, 400, "response_format.json_schema.schema", "invalid_type",
                                  "'response_format.json_schema.schema' must be an object");
    return dsi__srv_compile_schema(schema, "response_format.json_schema.schema", &r->grammar, e);
}
