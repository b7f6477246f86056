/*
 * schema.c: JSON Schema (OpenAI strict-mode subset) -> grammar nodes.
 *
 * Supported: type (a name or a list), properties, required, additionalProperties
 * (accepted whatever its value: only declared properties are ever generated, which
 * every value of it allows), enum, const, anyOf, $ref to "#", "#/$defs/NAME" or
 * "#/definitions/NAME", $defs/definitions, items, minItems, maxItems, minLength,
 * maxLength, and the annotations (title, description, ...), which are ignored.
 * Every other keyword is an error that names it and where it is, because
 * silently ignoring a constraint would let output through that the client's
 * validator rejects.
 *
 * Nodes are allocated before their children are compiled and memoised by schema
 * object, so recursive $refs resolve to the node being built. After the walk,
 * need[] is computed by fixpoint (see grammar_internal.h), and anyOf chains are
 * checked for cycles and bounded in length (the matcher expands them recursively).
 *
 * Raw text (dsi_grammar_compile_prefixed / _repeated) becomes one-literal LIT nodes;
 * its 0xFF bytes must each begin a whole token reference (grammar.h).
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/alloc.h"
#include "dsinfer/err.h"
#include "grammar_internal.h"

#define MAX_SCHEMA_NESTING 64
#define MAX_ANYOF_CHAIN 32
#define MAX_ALTS 64
#define MAX_COUNT (1u << 20) /* minItems, maxItems, minLength, maxLength */
#define PATH_MAX_LEN 200

struct memo {
    const cJSON *s;
    int32_t node;
};

struct cctx {
    struct dsi_grammar *g;
    const cJSON *root;
    struct memo *memo;
    size_t n_memo, cap_memo;
    int32_t any; /* the shared "any JSON value" node, -1 until needed */
    int nesting;
    char **err;
};

static int compile_node(struct cctx *c, const cJSON *s, const char *path, int32_t *out);
static int compile_typed(struct cctx *c, const cJSON *s, const char *type, const char *path, bool memoise,
                         int32_t *out);
static int check_keywords(struct cctx *c, const cJSON *s, const char *path);
static int finish(struct cctx *c);

static const char *const annotations[] = {"$schema", "$id",         "$comment", "title",     "description",
                                          "examples", "default",   "deprecated", "readOnly", "writeOnly",
                                          "$defs",    "definitions", NULL};
static const char *const keywords[] = {"type",     "properties", "required",  "additionalProperties",
                                       "enum",     "const",      "anyOf",     "$ref",
                                       "items",    "minItems",   "maxItems",  "minLength",
                                       "maxLength", NULL};

static bool in_list(const char *const *list, const char *k) {
    for (; *list; list++)
        if (!strcmp(*list, k)) return true;
    return false;
}

static int grow(void **p, uint32_t *cap, uint32_t need, size_t elt) {
    if (need <= *cap) return 0;
    uint32_t nc = *cap ? *cap : 16;
    while (nc < need) {
        if (nc > UINT32_MAX / 2) return DSI_ENOMEM;
        nc *= 2;
    }
    if ((size_t)nc > SIZE_MAX / elt) return DSI_ENOMEM;
    void *q = realloc(*p, (size_t)nc * elt);
    if (!q) return DSI_ENOMEM;
    *p = q;
    *cap = nc;
    return 0;
}

static int new_node(struct cctx *c, enum dsi__gnode_kind kind, int32_t *out) {
    struct dsi_grammar *g = c->g;
    if (g->n_nodes >= DSI_GRAMMAR_MAX_NODES)
        return dsi_seterr(c->err, DSI_ERANGE, "schema has more than %d nodes", DSI_GRAMMAR_MAX_NODES);
    if (grow((void **)&g->nodes, &g->cap_nodes, g->n_nodes + 1, sizeof *g->nodes)) return DSI_ENOMEM;
    struct dsi__gnode *n = &g->nodes[g->n_nodes];
    memset(n, 0, sizeof *n);
    n->kind = (uint8_t)kind;
    n->need = DSI__G_NEED_INF;
    n->item = -1;
    n->max = DSI__G_UNBOUNDED;
    *out = (int32_t)g->n_nodes++;
    return 0;
}

static int memoise(struct cctx *c, const cJSON *s, int32_t node) {
    struct memo *m = dsi_grow(c->memo, c->n_memo, &c->cap_memo, sizeof *m, 32);
    if (!m) return DSI_ENOMEM;
    c->memo = m;
    c->memo[c->n_memo++] = (struct memo){s, node};
    return 0;
}

static int add_alts(struct cctx *c, int32_t node, const int32_t *alts, uint32_t n) {
    struct dsi_grammar *g = c->g;
    if (grow((void **)&g->alts, &g->cap_alts, g->n_alts + n, sizeof *g->alts)) return DSI_ENOMEM;
    memcpy(g->alts + g->n_alts, alts, n * sizeof *alts);
    g->nodes[node].first = g->n_alts;
    g->nodes[node].n = n;
    g->n_alts += n;
    return 0;
}

static int add_lit(struct cctx *c, const cJSON *v) {
    struct dsi_grammar *g = c->g;
    if (grow((void **)&g->lits, &g->cap_lits, g->n_lits + 1, sizeof *g->lits)) return DSI_ENOMEM;
    char *s = cJSON_PrintUnformatted(v);
    if (!s) return DSI_ENOMEM;
    size_t len = strlen(s);
    if (len == 0 || len > UINT32_MAX) {
        free(s);
        return dsi_seterr(c->err, DSI_EINVAL, "enum value too long");
    }
    g->lits[g->n_lits++] = (struct dsi__glit){s, (uint32_t)len};
    return 0;
}

/* The "any JSON value" node (built once per grammar): anyOf an any-keys object, an
 * array of any, a string, a number, and the literals false/null/true. */
static int any_node(struct cctx *c, int32_t *out) {
    if (c->any >= 0) {
        *out = c->any;
        return 0;
    }
    int32_t any = -1, obj = -1, arr = -1, str = -1, num = -1, lit = -1; /* set by new_node; gcc -O2 cannot see it */
    int rc;
    if ((rc = new_node(c, DSI__GN_ANYOF, &any))) return rc;
    c->any = any;
    if ((rc = new_node(c, DSI__GN_OBJECT, &obj)) || (rc = new_node(c, DSI__GN_ARRAY, &arr)) ||
        (rc = new_node(c, DSI__GN_STRING, &str)) || (rc = new_node(c, DSI__GN_NUMBER, &num)) ||
        (rc = new_node(c, DSI__GN_LIT, &lit)))
        return rc;
    struct dsi_grammar *g = c->g;
    g->nodes[obj].any_keys = true;
    g->nodes[obj].item = any;
    g->any_str = str;
    g->nodes[arr].item = any;
    g->nodes[lit].first = g->n_lits;
    const char *names[] = {"false", "null", "true"};
    for (int i = 0; i < 3; i++) {
        cJSON *v = cJSON_Parse(names[i]);
        if (!v) return DSI_ENOMEM;
        rc = add_lit(c, v);
        cJSON_Delete(v);
        if (rc) return rc;
    }
    g->nodes[lit].n = 3;
    int32_t alts[] = {obj, arr, str, num, lit};
    if ((rc = add_alts(c, any, alts, 5))) return rc;
    *out = any;
    return 0;
}

static int cmp_lit(const void *a, const void *b) {
    const struct dsi__glit *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int r = memcmp(x->s, y->s, n);
    if (r) return r;
    return (x->len > y->len) - (x->len < y->len);
}

static bool value_has_type(const cJSON *v, const char *t) {
    if (!strcmp(t, "string")) return cJSON_IsString(v);
    if (!strcmp(t, "number")) return cJSON_IsNumber(v);
    if (!strcmp(t, "integer")) return cJSON_IsNumber(v) && v->valuedouble == (double)(long long)v->valuedouble;
    if (!strcmp(t, "boolean")) return cJSON_IsBool(v);
    if (!strcmp(t, "null")) return cJSON_IsNull(v);
    if (!strcmp(t, "object")) return cJSON_IsObject(v);
    if (!strcmp(t, "array")) return cJSON_IsArray(v);
    return false;
}

static bool value_matches(const cJSON *v, const cJSON *type) {
    if (!type) return true;
    if (cJSON_IsString(type)) return value_has_type(v, type->valuestring);
    const cJSON *t;
    cJSON_ArrayForEach(t, type) if (cJSON_IsString(t) && value_has_type(v, t->valuestring)) return true;
    return false;
}

/* enum / const: a literal node over the values that also match "type". */
static int compile_enum(struct cctx *c, const cJSON *s, const char *path, int32_t *out) {
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    const cJSON *cn = cJSON_GetObjectItemCaseSensitive(s, "const");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    const cJSON *k;
    cJSON_ArrayForEach(k, s) {
        if (!in_list(annotations, k->string) && strcmp(k->string, "type") && strcmp(k->string, "enum") &&
            strcmp(k->string, "const"))
            return dsi_seterr(c->err, DSI_EINVAL, "%s: keyword '%s' next to '%s' is not supported", path, k->string,
                              en ? "enum" : "const");
    }
    if (en && !cJSON_IsArray(en)) return dsi_seterr(c->err, DSI_EINVAL, "%s: 'enum' must be an array", path);
    if (en && cJSON_GetArraySize(en) > DSI_GRAMMAR_MAX_ENUM)
        return dsi_seterr(c->err, DSI_ERANGE, "%s: 'enum' has more than %d values", path, DSI_GRAMMAR_MAX_ENUM);
    int32_t node;
    int rc;
    if ((rc = new_node(c, DSI__GN_LIT, &node))) return rc;
    if ((rc = memoise(c, s, node))) return rc;
    struct dsi_grammar *g = c->g;
    uint32_t first = g->n_lits;
    if (cn) { /* const wins; next to an enum it must be one of its values */
        bool listed = !en;
        const cJSON *v;
        cJSON_ArrayForEach(v, en) listed |= cJSON_Compare(v, cn, true);
        if (listed && value_matches(cn, type) && (rc = add_lit(c, cn))) return rc;
    } else {
        const cJSON *v;
        cJSON_ArrayForEach(v, en) if (value_matches(v, type) && (rc = add_lit(c, v))) return rc;
    }
    uint32_t n = g->n_lits - first;
    if (n == 0) return dsi_seterr(c->err, DSI_EINVAL, "%s: no value of 'enum'/'const' fits 'type'", path);
    qsort(g->lits + first, n, sizeof *g->lits, cmp_lit);
    uint32_t m = 1; /* drop duplicates: they would make no new choice */
    for (uint32_t i = 1; i < n; i++) {
        if (!cmp_lit(&g->lits[first + i], &g->lits[first + m - 1])) {
            free(g->lits[first + i].s);
            continue;
        }
        g->lits[first + m++] = g->lits[first + i];
    }
    g->n_lits = first + m;
    g->nodes[node].first = first;
    g->nodes[node].n = m;
    *out = node;
    return 0;
}

/* "#", "#/$defs/NAME", "#/definitions/NAME" (NAME with JSON Pointer escapes). */
static const cJSON *resolve_ref(struct cctx *c, const char *ref) {
    if (!strcmp(ref, "#")) return c->root;
    const char *name = NULL;
    const char *defs = NULL;
    if (!strncmp(ref, "#/$defs/", 8)) name = ref + 8, defs = "$defs";
    else if (!strncmp(ref, "#/definitions/", 14)) name = ref + 14, defs = "definitions";
    if (!name || !*name || strchr(name, '/')) return NULL;
    char buf[256];
    size_t j = 0;
    for (const char *p = name; *p; p++) {
        if (j + 1 >= sizeof buf) return NULL;
        if (p[0] == '~' && p[1] == '1') buf[j++] = '/', p++;
        else if (p[0] == '~' && p[1] == '0') buf[j++] = '~', p++;
        else buf[j++] = *p;
    }
    buf[j] = 0;
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(c->root, defs);
    return cJSON_IsObject(d) ? cJSON_GetObjectItemCaseSensitive(d, buf) : NULL;
}

/* $ref and anyOf: an anyOf node; nothing but annotations may sit next to them. */
static int compile_alts(struct cctx *c, const cJSON *s, const char *path, int32_t *out) {
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(s, "$ref");
    const char *what = ref ? "$ref" : "anyOf";
    const cJSON *k;
    cJSON_ArrayForEach(k, s) if (!in_list(annotations, k->string) && strcmp(k->string, what)) return dsi_seterr(
        c->err, DSI_EINVAL, "%s: keyword '%s' next to '%s' is not supported", path, k->string, what);
    int32_t node, tmp[MAX_ALTS];
    uint32_t n = 0;
    int rc;
    if ((rc = new_node(c, DSI__GN_ANYOF, &node))) return rc;
    if ((rc = memoise(c, s, node))) return rc;
    char sub[PATH_MAX_LEN + 32];
    if (ref) {
        const cJSON *t = cJSON_IsString(ref) ? resolve_ref(c, ref->valuestring) : NULL;
        if (!t)
            return dsi_seterr(c->err, DSI_EINVAL,
                              "%s: '$ref' must name '#', '#/$defs/NAME' or '#/definitions/NAME' of this schema", path);
        snprintf(sub, sizeof sub, "%.*s", PATH_MAX_LEN, ref->valuestring);
        if ((rc = compile_node(c, t, sub, &tmp[n++]))) return rc;
    } else {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(s, "anyOf");
        int na = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : 0;
        if (na < 1 || na > MAX_ALTS)
            return dsi_seterr(c->err, DSI_EINVAL, "%s: 'anyOf' must be an array of 1 to %d schemas", path, MAX_ALTS);
        const cJSON *v;
        cJSON_ArrayForEach(v, a) {
            snprintf(sub, sizeof sub, "%.*s.anyOf[%u]", PATH_MAX_LEN, path, n);
            if ((rc = compile_node(c, v, sub, &tmp[n++]))) return rc;
        }
    }
    if ((rc = add_alts(c, node, tmp, n))) return rc;
    *out = node;
    return 0;
}

static int compile_node(struct cctx *c, const cJSON *s, const char *path, int32_t *out) {
    for (size_t i = 0; i < c->n_memo; i++)
        if (c->memo[i].s == s) {
            *out = c->memo[i].node;
            return 0;
        }
    if (cJSON_IsBool(s)) {
        if (cJSON_IsTrue(s)) return any_node(c, out);
        return dsi_seterr(c->err, DSI_EINVAL, "%s: schema 'false' can never be satisfied", path);
    }
    if (!cJSON_IsObject(s)) return dsi_seterr(c->err, DSI_EINVAL, "%s: a schema must be an object", path);
    if (c->nesting >= MAX_SCHEMA_NESTING)
        return dsi_seterr(c->err, DSI_ERANGE, "%s: schema nested deeper than %d", path, MAX_SCHEMA_NESTING);
    int rc = check_keywords(c, s, path);
    if (rc) return rc;
    c->nesting++;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    if (cJSON_GetObjectItemCaseSensitive(s, "$ref") || cJSON_GetObjectItemCaseSensitive(s, "anyOf")) {
        rc = compile_alts(c, s, path, out);
    } else if (cJSON_GetObjectItemCaseSensitive(s, "enum") || cJSON_GetObjectItemCaseSensitive(s, "const")) {
        rc = compile_enum(c, s, path, out);
    } else if (cJSON_IsString(type)) {
        rc = compile_typed(c, s, type->valuestring, path, true, out);
    } else if (cJSON_IsArray(type)) {
        int nt = cJSON_GetArraySize(type);
        int32_t node, tmp[8];
        uint32_t n = 0;
        if (nt < 1 || nt > 7) {
            rc = dsi_seterr(c->err, DSI_EINVAL, "%s: 'type' must list 1 to 7 type names", path);
        } else if (!(rc = new_node(c, DSI__GN_ANYOF, &node)) && !(rc = memoise(c, s, node))) {
            const cJSON *t;
            cJSON_ArrayForEach(t, type) {
                if (!cJSON_IsString(t)) {
                    rc = dsi_seterr(c->err, DSI_EINVAL, "%s: 'type' must list type names", path);
                    break;
                }
                if ((rc = compile_typed(c, s, t->valuestring, path, false, &tmp[n++]))) break;
            }
            if (!rc) rc = add_alts(c, node, tmp, n);
            *out = node;
        }
    } else if (type) {
        rc = dsi_seterr(c->err, DSI_EINVAL, "%s: 'type' must be a string or an array of strings", path);
    } else if (cJSON_GetObjectItemCaseSensitive(s, "properties")) {
        rc = compile_typed(c, s, "object", path, true, out);
    } else if (cJSON_GetObjectItemCaseSensitive(s, "items")) {
        rc = compile_typed(c, s, "array", path, true, out);
    } else {
        rc = any_node(c, out);
        if (!rc) rc = memoise(c, s, *out);
    }
    c->nesting--;
    return rc;
}

static int check_keywords(struct cctx *c, const cJSON *s, const char *path) {
    const cJSON *k;
    cJSON_ArrayForEach(k, s) {
        if (in_list(annotations, k->string) || in_list(keywords, k->string)) continue;
        return dsi_seterr(c->err, DSI_EINVAL, "%s: keyword '%.64s' is not supported", path, k->string);
    }
    return 0;
}

/* A non-negative integer keyword (absent: def). */
static int get_count(struct cctx *c, const cJSON *s, const char *key, const char *path, uint32_t def,
                     uint32_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, key);
    *out = def;
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > MAX_COUNT ||
        v->valuedouble != (double)(uint32_t)v->valuedouble)
        return dsi_seterr(c->err, DSI_EINVAL, "%s: '%s' must be an integer in [0, %u]", path, key, MAX_COUNT);
    *out = (uint32_t)v->valuedouble;
    return 0;
}

static int compile_object(struct cctx *c, const cJSON *s, int32_t node, const char *path) {
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
    struct dsi_grammar *g = c->g;
    int rc;
    if (props && !cJSON_IsObject(props))
        return dsi_seterr(c->err, DSI_EINVAL, "%s: 'properties' must be an object", path);
    if (req && !cJSON_IsArray(req))
        return dsi_seterr(c->err, DSI_EINVAL, "%s: 'required' must be an array of names", path);
    if (addl && !cJSON_IsBool(addl) && !cJSON_IsObject(addl))
        return dsi_seterr(c->err, DSI_EINVAL, "%s: 'additionalProperties' must be a boolean or a schema", path);
    int np = props ? cJSON_GetArraySize(props) : 0;
    if (np == 0 && !cJSON_IsFalse(addl) && !req) { /* open object: any keys */
        int32_t any;
        if ((rc = any_node(c, &any))) return rc;
        g->nodes[node].any_keys = true;
        g->nodes[node].item = any;
        return 0;
    }
    if (np > DSI_GRAMMAR_MAX_PROPS)
        return dsi_seterr(c->err, DSI_ERANGE, "%s: more than %d properties", path, DSI_GRAMMAR_MAX_PROPS);
    const cJSON *r;
    cJSON_ArrayForEach(r, req) {
        if (!cJSON_IsString(r) || !cJSON_GetObjectItemCaseSensitive(props, r->valuestring))
            return dsi_seterr(c->err, DSI_EINVAL, "%s: 'required' names '%.64s', which is not in 'properties'",
                              path, cJSON_IsString(r) ? r->valuestring : "?");
    }
    int32_t kids[DSI_GRAMMAR_MAX_PROPS];
    char sub[PATH_MAX_LEN + 96];
    int i = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, props) {
        if (strlen(p->string) > 1024)
            return dsi_seterr(c->err, DSI_ERANGE, "%s: a property name is longer than 1024 bytes", path);
        snprintf(sub, sizeof sub, "%.*s.properties.%.64s", PATH_MAX_LEN, path, p->string);
        if ((rc = compile_node(c, p, sub, &kids[i++]))) return rc;
    }
    if (grow((void **)&g->props, &g->cap_props, g->n_props + (uint32_t)np, sizeof *g->props)) return DSI_ENOMEM;
    g->nodes[node].first = g->n_props;
    i = 0;
    cJSON_ArrayForEach(p, props) {
        cJSON *ks = cJSON_CreateString(p->string);
        char *esc = ks ? cJSON_PrintUnformatted(ks) : NULL;
        cJSON_Delete(ks);
        if (!esc) return DSI_ENOMEM;
        size_t l = strlen(esc); /* "key" with quotes: strip them */
        memmove(esc, esc + 1, l - 2);
        esc[l - 2] = 0;
        bool required = false;
        cJSON_ArrayForEach(r, req) required |= !strcmp(r->valuestring, p->string);
        g->props[g->n_props++] = (struct dsi__gprop){esc, (uint32_t)(l - 2), kids[i++], required};
        g->nodes[node].n++;
    }
    return 0;
}

static int compile_typed(struct cctx *c, const cJSON *s, const char *type, const char *path, bool memo,
                         int32_t *out) {
    static const struct {
        const char *name;
        enum dsi__gnode_kind kind;
    } kinds[] = {{"object", DSI__GN_OBJECT}, {"array", DSI__GN_ARRAY},     {"string", DSI__GN_STRING},
                 {"number", DSI__GN_NUMBER}, {"integer", DSI__GN_INTEGER}, {"boolean", DSI__GN_LIT},
                 {"null", DSI__GN_LIT}};
    int k = -1;
    for (int i = 0; i < 7; i++)
        if (!strcmp(type, kinds[i].name)) k = i;
    if (k < 0) return dsi_seterr(c->err, DSI_EINVAL, "%s: unknown type '%.32s'", path, type);
    int32_t node;
    int rc;
    if ((rc = new_node(c, kinds[k].kind, &node))) return rc;
    if (memo && (rc = memoise(c, s, node))) return rc;
    *out = node;
    struct dsi_grammar *g = c->g;
    if (kinds[k].kind == DSI__GN_LIT) {
        bool is_bool = !strcmp(type, "boolean");
        g->nodes[node].first = g->n_lits;
        for (int i = 0; i < (is_bool ? 2 : 1); i++) {
            cJSON *v = is_bool ? cJSON_CreateBool(i) : cJSON_CreateNull();
            if (!v) return DSI_ENOMEM;
            rc = add_lit(c, v);
            cJSON_Delete(v);
            if (rc) return rc;
        }
        g->nodes[node].n = is_bool ? 2 : 1;
        return 0;
    }
    if (kinds[k].kind == DSI__GN_OBJECT) return compile_object(c, s, node, path);
    if (kinds[k].kind == DSI__GN_STRING || kinds[k].kind == DSI__GN_ARRAY) {
        bool str = kinds[k].kind == DSI__GN_STRING;
        uint32_t lo, hi;
        if ((rc = get_count(c, s, str ? "minLength" : "minItems", path, 0, &lo)) ||
            (rc = get_count(c, s, str ? "maxLength" : "maxItems", path, DSI__G_UNBOUNDED, &hi)))
            return rc;
        if (lo > hi)
            return dsi_seterr(c->err, DSI_EINVAL, "%s: '%s' is above '%s'", path, str ? "minLength" : "minItems",
                              str ? "maxLength" : "maxItems");
        g->nodes[node].min = lo;
        g->nodes[node].max = hi;
        if (str) return 0;
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
        int32_t it;
        char sub[PATH_MAX_LEN + 16];
        snprintf(sub, sizeof sub, "%.*s.items", PATH_MAX_LEN, path);
        if ((rc = items ? compile_node(c, items, sub, &it) : any_node(c, &it))) return rc;
        g->nodes[node].item = it;
    }
    return 0;
}

static uint8_t sat_add1(uint8_t x) { return x >= DSI__G_STACK_CAP ? DSI__G_NEED_INF : (uint8_t)(x + 1); }

/* need[] by fixpoint: values only fall from INF, so this ends within n_nodes rounds. */
static void compute_need(struct dsi_grammar *g) {
    bool changed = true;
    for (uint32_t round = 0; changed && round <= g->n_nodes; round++) {
        changed = false;
        for (uint32_t i = 0; i < g->n_nodes; i++) {
            struct dsi__gnode *n = &g->nodes[i];
            uint8_t v = 1;
            switch ((enum dsi__gnode_kind)n->kind) {
            case DSI__GN_OBJECT:
                if (!n->any_keys)
                    for (uint32_t p = n->first; p < n->first + n->n; p++)
                        if (g->props[p].required) {
                            uint8_t w = sat_add1(g->nodes[g->props[p].node].need);
                            if (w > v) v = w;
                        }
                break;
            case DSI__GN_ARRAY:
                if (n->min > 0) v = sat_add1(g->nodes[n->item].need);
                break;
            case DSI__GN_SEQ: /* its frame stays below each part */
                for (uint32_t a = n->first; a < n->first + n->n; a++) {
                    uint8_t w = sat_add1(g->nodes[g->alts[a]].need);
                    if (w > v) v = w;
                }
                break;
            case DSI__GN_REP: /* its frame stays below the items, separators and the end */
                for (uint32_t a = n->first; a < n->first + n->n; a++) {
                    uint8_t w = sat_add1(g->nodes[g->alts[a]].need);
                    if (w > v) v = w;
                }
                if (sat_add1(g->nodes[n->item].need) > v) v = sat_add1(g->nodes[n->item].need);
                break;
            case DSI__GN_ANYOF:
                v = DSI__G_NEED_INF;
                for (uint32_t a = n->first; a < n->first + n->n; a++)
                    if (g->nodes[g->alts[a]].need < v) v = g->nodes[g->alts[a]].need;
                break;
            default:
                break;
            }
            if (v != n->need) {
                n->need = v;
                changed = true;
            }
        }
    }
}

/* Longest anyOf chain from node i (color: 0 new, 1 on the path, 2 done). */
static int anyof_height(const struct dsi_grammar *g, int32_t i, uint8_t *color, uint8_t *height) {
    const struct dsi__gnode *n = &g->nodes[i];
    if (n->kind != DSI__GN_ANYOF) return 0;
    if (color[i] == 1) return -1;
    if (color[i] == 2) return height[i];
    color[i] = 1;
    int h = 0;
    for (uint32_t a = n->first; a < n->first + n->n; a++) {
        int x = anyof_height(g, g->alts[a], color, height);
        if (x < 0 || x >= MAX_ANYOF_CHAIN) return -1;
        if (x + 1 > h) h = x + 1;
    }
    color[i] = 2;
    height[i] = (uint8_t)h;
    return h;
}

static int finish(struct cctx *c) {
    struct dsi_grammar *g = c->g;
    uint8_t *mem = calloc(2, g->n_nodes);
    if (!mem) return DSI_ENOMEM;
    for (uint32_t i = 0; i < g->n_nodes; i++)
        if (anyof_height(g, (int32_t)i, mem, mem + g->n_nodes) < 0) {
            free(mem);
            return dsi_seterr(c->err, DSI_EINVAL, "anyOf/$ref chain is cyclic or longer than %d", MAX_ANYOF_CHAIN);
        }
    free(mem);
    compute_need(g);
    if (g->nodes[g->root].need > DSI__G_STACK_CAP - 1)
        return dsi_seterr(c->err, DSI_EINVAL,
                          "the schema can never be satisfied (or needs more than %d levels of nesting)",
                          DSI_GRAMMAR_MAX_DEPTH);
    return 0;
}

void dsi_grammar_destroy(struct dsi_grammar *g) {
    if (!g) return;
    for (uint32_t i = 0; i < g->n_props; i++)
        free(g->props[i].key);
    for (uint32_t i = 0; i < g->n_lits; i++)
        free(g->lits[i].s);
    free(g->props);
    free(g->lits);
    free(g->alts);
    free(g->nodes);
    free(g);
}

int dsi_grammar_json_object(struct dsi_grammar **out, char **err) {
    *out = NULL;
    struct dsi_grammar *g = calloc(1, sizeof *g);
    if (!g) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    g->any_str = -1;
    struct cctx c = {.g = g, .any = -1, .err = err};
    int32_t any;
    int rc = any_node(&c, &any);
    if (!rc) g->root = g->alts[g->nodes[any].first]; /* the any-keys object */
    if (!rc) rc = finish(&c);
    if (rc) {
        dsi_grammar_destroy(g);
        return rc == DSI_ENOMEM ? dsi_seterr(err, rc, "out of memory") : rc;
    }
    *out = g;
    return 0;
}

int dsi_grammar_compile(const char *schema_json, size_t len, struct dsi_grammar **out, char **err) {
    *out = NULL;
    cJSON *root = cJSON_ParseWithLength(schema_json, len);
    if (!root) return dsi_seterr(err, DSI_EINVAL, "schema is not valid JSON");
    struct dsi_grammar *g = calloc(1, sizeof *g);
    struct cctx c = {.g = g, .root = root, .any = -1, .err = err};
    int rc = g ? 0 : DSI_ENOMEM;
    if (g) g->any_str = -1;
    if (!rc && !cJSON_IsObject(root) && !cJSON_IsBool(root))
        rc = dsi_seterr(err, DSI_EINVAL, "schema must be a JSON object");
    if (!rc) rc = compile_node(&c, root, "schema", &g->root);
    if (!rc) rc = finish(&c);
    free(c.memo);
    cJSON_Delete(root);
    if (rc) {
        dsi_grammar_destroy(g);
        return rc == DSI_ENOMEM ? dsi_seterr(err, rc, "out of memory") : rc;
    }
    *out = g;
    return 0;
}

/* True when every 0xFF byte of p[0..len) begins a whole token reference (grammar.h),
 * so references never overlap and a token matches one exactly. */
static bool refs_well_formed(const char *p, size_t len) {
    for (size_t i = 0; i < len; i++) {
        if ((uint8_t)p[i] != 0xFF) continue;
        if (len - i < DSI_GRAMMAR_TOKEN_REF_LEN) return false;
        for (size_t k = 1; k < DSI_GRAMMAR_TOKEN_REF_LEN; k++)
            if (((uint8_t)p[i + k] & 0xC0) != 0x80) return false;
        i += DSI_GRAMMAR_TOKEN_REF_LEN - 1;
    }
    return true;
}

/* A node matching the raw bytes p[0..len) (not JSON: a LIT of one literal). */
static int raw_node(struct cctx *c, const char *p, size_t len, int32_t *out) {
    struct dsi_grammar *g = c->g;
    if (len == 0 || len > 1024) return dsi_seterr(c->err, DSI_EINVAL, "raw text must be 1 to 1024 bytes");
    if (!refs_well_formed(p, len))
        return dsi_seterr(c->err, DSI_EINVAL, "raw text: a 0xFF byte must begin a token reference");
    int rc = new_node(c, DSI__GN_LIT, out);
    if (!rc) rc = grow((void **)&g->lits, &g->cap_lits, g->n_lits + 1, sizeof *g->lits);
    char *s = rc ? NULL : malloc(len);
    if (!rc && !s) rc = DSI_ENOMEM;
    if (rc) return rc;
    memcpy(s, p, len);
    g->nodes[*out].first = g->n_lits;
    g->nodes[*out].n = 1;
    g->lits[g->n_lits++] = (struct dsi__glit){s, (uint32_t)len};
    return 0;
}

/* One alternative: SEQ(raw prefix, schema value), or the value alone. */
static int compile_alt(struct cctx *c, const struct dsi_grammar_alt *a, size_t i, int32_t *out) {
    char path[32];
    snprintf(path, sizeof path, "alternative %zu", i);
    int32_t value, prefix, seq;
    int rc = compile_node(c, c->root, path, &value);
    if (rc || !a->prefix || !a->prefix[0]) {
        *out = value;
        return rc;
    }
    if ((rc = raw_node(c, a->prefix, strlen(a->prefix), &prefix))) return rc;
    if ((rc = new_node(c, DSI__GN_SEQ, &seq))) return rc;
    int32_t parts[2] = {prefix, value};
    if ((rc = add_alts(c, seq, parts, 2))) return rc;
    *out = seq;
    return 0;
}

/* The REP node around the union `items`: sep and end as raw nodes. */
static int repeat_node(struct cctx *c, int32_t items, const char *sep, const char *end, int max_items,
                       int32_t *out) {
    if (max_items < 1 || max_items > DSI_GRAMMAR_MAX_REPEAT || !sep || !end)
        return dsi_seterr(c->err, DSI_EINVAL, "1 to %d values, with a separator and an end", DSI_GRAMMAR_MAX_REPEAT);
    int32_t parts[2];
    int rc = raw_node(c, sep, strlen(sep), &parts[0]);
    if (!rc) rc = raw_node(c, end, strlen(end), &parts[1]);
    if (!rc) rc = new_node(c, DSI__GN_REP, out);
    if (!rc) rc = add_alts(c, *out, parts, 2);
    if (rc) return rc;
    c->g->nodes[*out].item = items;
    c->g->nodes[*out].min = 1;
    c->g->nodes[*out].max = (uint32_t)max_items;
    return 0;
}

/* dsi_grammar_compile_prefixed, and with sep/end (non-NULL) its repetition. */
static int compile_prefixed(const struct dsi_grammar_alt *alts, size_t n, const char *sep, const char *end,
                            int max_items, struct dsi_grammar **out, char **err) {
    *out = NULL;
    if (!alts || n == 0 || n > MAX_ALTS) return dsi_seterr(err, DSI_EINVAL, "1 to %d alternatives", MAX_ALTS);
    struct dsi_grammar *g = calloc(1, sizeof *g);
    cJSON **roots = calloc(n, sizeof *roots); /* kept until compiled: the memo points into them */
    struct cctx c = {.g = g, .any = -1, .err = err};
    int32_t tops[MAX_ALTS], items = -1;
    int rc = g && roots ? 0 : DSI_ENOMEM;
    if (g) g->any_str = -1;
    for (size_t i = 0; !rc && i < n; i++) {
        roots[i] = alts[i].schema_json ? cJSON_Parse(alts[i].schema_json) : NULL;
        if (!cJSON_IsObject(roots[i]) && !cJSON_IsBool(roots[i])) {
            rc = dsi_seterr(err, DSI_EINVAL, "alternative %zu: schema must be a JSON object", i);
            break;
        }
        c.root = roots[i];
        rc = compile_alt(&c, &alts[i], i, &tops[i]);
    }
    if (!rc && n == 1) items = tops[0];
    else if (!rc && !(rc = new_node(&c, DSI__GN_ANYOF, &items))) rc = add_alts(&c, items, tops, (uint32_t)n);
    if (!rc) g->root = items;
    if (!rc && (sep || end)) rc = repeat_node(&c, items, sep, end, max_items, &g->root);
    if (!rc) rc = finish(&c);
    for (size_t i = 0; roots && i < n; i++) cJSON_Delete(roots[i]);
    free(roots);
    free(c.memo);
    if (rc) {
        dsi_grammar_destroy(g);
        return rc == DSI_ENOMEM ? dsi_seterr(err, rc, "out of memory") : rc;
    }
    *out = g;
    return 0;
}

int dsi_grammar_compile_prefixed(const struct dsi_grammar_alt *alts, size_t n, struct dsi_grammar **out, char **err) {
    return compile_prefixed(alts, n, NULL, NULL, 1, out, err);
}

int dsi_grammar_compile_repeated(const struct dsi_grammar_alt *alts, size_t n, const char *sep, const char *end,
                                 int max_items, struct dsi_grammar **out, char **err) {
    if (!sep || !end) {
        *out = NULL;
        return dsi_seterr(err, DSI_EINVAL, "a separator and an end are needed");
    }
    return compile_prefixed(alts, n, sep, end, max_items, out, err);
}
