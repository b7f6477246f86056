/*
 * test_schema_gen.h: a seeded generator of random JSON Schemas within the subset
 * the grammar compiles (objects with properties/required/additionalProperties
 * false, arrays with items and min/maxItems, strings with min/maxLength, numbers,
 * integers, booleans, null, enum, const, anyOf, $ref to $defs, nested), for the
 * 500-schema test (tests/test_engine_schemas.c). Same seed, same schemas.
 *
 * Every schema is satisfiable (minItems <= maxItems, non-empty enums, refs only
 * to earlier definitions, so no recursion), and gen_schema reports an
 * upper bound of the bytes of any compact JSON value the grammar can produce for
 * it (strings at 6 bytes a code point, the \uXXXX worst case; numbers at the
 * grammar's digit bounds), so a test can give max_tokens that can never cut the
 * value (a token is at least one byte).
 */
#ifndef DSI_TEST_SCHEMA_GEN_H
#define DSI_TEST_SCHEMA_GEN_H

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "dsinfer/grammar.h"

struct sgen {
    uint64_t s;       /* xorshift64 state */
    int n_defs;       /* $defs of the schema being built */
    size_t def_bound[4];
    int used[10];     /* how often each feature appeared (enum sgen_feature) */
};

enum sgen_feature { SG_OBJECT, SG_ARRAY, SG_STRING, SG_NUMBER, SG_INTEGER, SG_BOOL_NULL, SG_ENUM, SG_CONST, SG_ANYOF, SG_REF };

static inline uint32_t sg_rand(struct sgen *g, uint32_t n) {
    g->s ^= g->s << 13;
    g->s ^= g->s >> 7;
    g->s ^= g->s << 17;
    return n ? (uint32_t)(g->s % n) : 0;
}

/* A literal value (enum member / const): string, integer, bool or null. */
static inline cJSON *sg_literal(struct sgen *g, int i, size_t *bound) {
    static const char *const words[] = {"red", "green", "blue", "a b", "x\"y", "caf\xc3\xa9", "", "42"};
    char buf[32];
    switch (sg_rand(g, 4)) {
    case 0: {
        const char *w = words[(sg_rand(g, 8) + (uint32_t)i) % 8];
        *bound = 2 + 2 * strlen(w); /* escaped at most twice as long */
        return cJSON_CreateString(w);
    }
    case 1: {
        int v = (int)sg_rand(g, 2001) - 1000 + i * 3001;
        *bound = (size_t)snprintf(buf, sizeof buf, "%d", v);
        return cJSON_CreateNumber(v);
    }
    case 2: *bound = 5; return cJSON_CreateBool(sg_rand(g, 2));
    default: *bound = 4; return cJSON_CreateNull();
    }
}

static inline cJSON *sg_node(struct sgen *g, int depth, size_t *bound);

static inline cJSON *sg_object(struct sgen *g, int depth, size_t *bound) {
    static const char *const keys[] = {"id", "name", "tags", "score", "ok", "kind", "items", "note"};
    cJSON *o = cJSON_CreateObject(), *props = cJSON_AddObjectToObject(o, "properties");
    cJSON *req = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "type", "object");
    uint32_t n = sg_rand(g, depth >= 2 ? 3 : 5), first = sg_rand(g, 8);
    *bound = 2;
    for (uint32_t i = 0; i < n; i++) {
        const char *k = keys[(first + i) % 8];
        size_t b = 0;
        cJSON_AddItemToObject(props, k, sg_node(g, depth + 1, &b));
        *bound += strlen(k) + 3 + b + 1;
        if (sg_rand(g, 3)) cJSON_AddItemToArray(req, cJSON_CreateString(k));
    }
    if (cJSON_GetArraySize(req)) cJSON_AddItemToObject(o, "required", req);
    else cJSON_Delete(req);
    cJSON_AddFalseToObject(o, "additionalProperties");
    g->used[SG_OBJECT]++;
    return o;
}

static inline cJSON *sg_node(struct sgen *g, int depth, size_t *bound) {
    uint32_t pick = sg_rand(g, depth >= 3 ? 7 : 11);
    cJSON *s = NULL;
    char buf[16];
    switch (pick) {
    case 0: {
        uint32_t mx = sg_rand(g, 9), mn = mx ? sg_rand(g, mx + 1) : 0;
        s = cJSON_CreateObject();
        cJSON_AddStringToObject(s, "type", "string");
        cJSON_AddNumberToObject(s, "maxLength", mx);
        if (mn) cJSON_AddNumberToObject(s, "minLength", mn);
        *bound = 2 + 6 * (size_t)mx;
        g->used[SG_STRING]++;
        break;
    }
    case 1:
        s = cJSON_CreateObject();
        cJSON_AddStringToObject(s, "type", "integer");
        *bound = 1 + DSI_GRAMMAR_MAX_INT_DIGITS;
        g->used[SG_INTEGER]++;
        break;
    case 2:
        s = cJSON_CreateObject();
        cJSON_AddStringToObject(s, "type", "number");
        *bound = 1 + DSI_GRAMMAR_MAX_INT_DIGITS + 1 + DSI_GRAMMAR_MAX_FRAC_DIGITS + 2 + DSI_GRAMMAR_MAX_EXP_DIGITS;
        g->used[SG_NUMBER]++;
        break;
    case 3:
        s = cJSON_CreateObject();
        if (sg_rand(g, 2)) {
            cJSON_AddStringToObject(s, "type", "boolean");
            *bound = 5;
        } else {
            cJSON *t = cJSON_AddArrayToObject(s, "type");
            cJSON_AddItemToArray(t, cJSON_CreateString("boolean"));
            cJSON_AddItemToArray(t, cJSON_CreateString("null"));
            *bound = 5;
        }
        g->used[SG_BOOL_NULL]++;
        break;
    case 4: {
        s = cJSON_CreateObject();
        cJSON *e = cJSON_AddArrayToObject(s, "enum");
        uint32_t n = 1 + sg_rand(g, 4);
        *bound = 0;
        for (uint32_t i = 0; i < n; i++) {
            size_t b = 0;
            cJSON *v = sg_literal(g, (int)i, &b);
            bool dup = false;
            const cJSON *x;
            cJSON_ArrayForEach(x, e) dup |= cJSON_Compare(x, v, true);
            if (dup) {
                cJSON_Delete(v);
                continue;
            }
            cJSON_AddItemToArray(e, v);
            if (b > *bound) *bound = b;
        }
        g->used[SG_ENUM]++;
        break;
    }
    case 5: {
        s = cJSON_CreateObject();
        cJSON_AddItemToObject(s, "const", sg_literal(g, 0, bound));
        g->used[SG_CONST]++;
        break;
    }
    case 6:
        if (g->n_defs) {
            int d = (int)sg_rand(g, (uint32_t)g->n_defs);
            s = cJSON_CreateObject();
            snprintf(buf, sizeof buf, "#/$defs/d%d", d);
            cJSON_AddStringToObject(s, "$ref", buf);
            *bound = g->def_bound[d];
            g->used[SG_REF]++;
            break;
        }
        s = sg_object(g, depth, bound); /* no definitions to point at */
        break;
    case 7:
    case 8:
        s = sg_object(g, depth, bound);
        break;
    case 9: {
        size_t b = 0;
        uint32_t mx = 1 + sg_rand(g, depth >= 2 ? 2 : 3), mn = sg_rand(g, mx + 1);
        s = cJSON_CreateObject();
        cJSON_AddStringToObject(s, "type", "array");
        cJSON_AddItemToObject(s, "items", sg_node(g, depth + 1, &b));
        if (mn) cJSON_AddNumberToObject(s, "minItems", mn);
        cJSON_AddNumberToObject(s, "maxItems", mx);
        *bound = 2 + mx * (b + 1);
        g->used[SG_ARRAY]++;
        break;
    }
    default: {
        s = cJSON_CreateObject();
        cJSON *a = cJSON_AddArrayToObject(s, "anyOf");
        uint32_t n = 2 + sg_rand(g, 2);
        *bound = 0;
        for (uint32_t i = 0; i < n; i++) {
            size_t b = 0;
            cJSON_AddItemToArray(a, sg_node(g, depth + 1, &b));
            if (b > *bound) *bound = b;
        }
        g->used[SG_ANYOF]++;
        break;
    }
    }
    return s;
}

/* One schema (cJSON, caller frees): an object at the top (what structured output
 * asks for), sometimes with $defs. *bound: see the file comment. */
static inline cJSON *gen_schema(struct sgen *g, size_t *bound) {
    g->n_defs = 0;
    cJSON *defs = NULL;
    uint32_t nd = sg_rand(g, 3);
    if (nd) defs = cJSON_CreateObject();
    for (uint32_t i = 0; i < nd; i++) {
        char name[16];
        snprintf(name, sizeof name, "d%u", i);
        cJSON_AddItemToObject(defs, name, sg_node(g, 2, &g->def_bound[i])); /* before n_defs grows: no refs */
        g->n_defs++;
    }
    cJSON *root = sg_object(g, 0, bound);
    if (defs) cJSON_AddItemToObject(root, "$defs", defs);
    return root;
}

#endif
