/*
 * test_json_schema.h: an independent validator for the JSON Schema subset the
 * grammar compiles (type, properties, required, additionalProperties false, enum,
 * const, anyOf, local $ref, items, min/maxItems, min/maxLength), so the tests
 * check generated JSON against the schema without trusting the grammar's own
 * reading of it. String lengths are in code points.
 */
#ifndef DSI_TEST_JSON_SCHEMA_H
#define DSI_TEST_JSON_SCHEMA_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <string.h>

static inline bool valid(const cJSON *v, const cJSON *s, const cJSON *root);

static inline const cJSON *deref(const cJSON *s, const cJSON *root) {
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(s, "$ref");
    if (!cJSON_IsString(r)) return s;
    if (!strcmp(r->valuestring, "#")) return root;
    return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "$defs"), r->valuestring + 8);
}

static inline bool valid_type(const cJSON *v, const char *t, const cJSON *s, const cJSON *root) {
    if (!strcmp(t, "null")) return cJSON_IsNull(v);
    if (!strcmp(t, "boolean")) return cJSON_IsBool(v);
    if (!strcmp(t, "number")) return cJSON_IsNumber(v);
    if (!strcmp(t, "integer")) return cJSON_IsNumber(v) && v->valuedouble == (double)(long long)v->valuedouble;
    if (!strcmp(t, "string")) {
        if (!cJSON_IsString(v)) return false;
        size_t cps = 0;
        for (const unsigned char *p = (const unsigned char *)v->valuestring; *p; p++)
            cps += (*p & 0xC0) != 0x80;
        const cJSON *mx = cJSON_GetObjectItemCaseSensitive(s, "maxLength");
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(s, "minLength");
        return (!mx || cps <= (size_t)mx->valuedouble) && (!mn || cps >= (size_t)mn->valuedouble);
    }
    if (!strcmp(t, "array")) {
        if (!cJSON_IsArray(v)) return false;
        int n = cJSON_GetArraySize(v);
        const cJSON *mx = cJSON_GetObjectItemCaseSensitive(s, "maxItems");
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(s, "minItems");
        if ((mx && n > mx->valuedouble) || (mn && n < mn->valuedouble)) return false;
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(s, "items"), *e;
        cJSON_ArrayForEach(e, v) if (it && !valid(e, it, root)) return false;
        return true;
    }
    if (!cJSON_IsObject(v)) return false;
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required"), *e;
    cJSON_ArrayForEach(e, req) if (!cJSON_GetObjectItemCaseSensitive(v, e->valuestring)) return false;
    cJSON_ArrayForEach(e, v) {
        const cJSON *ps = cJSON_GetObjectItemCaseSensitive(props, e->string);
        if (!ps && cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(s, "additionalProperties"))) return false;
        if (ps && !valid(e, ps, root)) return false;
    }
    return true;
}

static inline bool valid(const cJSON *v, const cJSON *s, const cJSON *root) {
    s = deref(s, root);
    if (!s) return false;
    const cJSON *any = cJSON_GetObjectItemCaseSensitive(s, "anyOf"), *e;
    if (any) {
        cJSON_ArrayForEach(e, any) if (valid(v, e, root)) return true;
        return false;
    }
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    if (en) {
        cJSON_ArrayForEach(e, en) if (cJSON_Compare(v, e, true)) return true;
        return false;
    }
    const cJSON *cn = cJSON_GetObjectItemCaseSensitive(s, "const");
    if (cn) return cJSON_Compare(v, cn, true);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    if (cJSON_IsString(type)) return valid_type(v, type->valuestring, s, root);
    if (cJSON_IsArray(type)) {
        cJSON_ArrayForEach(e, type) if (valid_type(v, e->valuestring, s, root)) return true;
        return false;
    }
    return true;
}

#endif
