/*
 * tools.c: function calling (OpenAI "tools"): the request fields, the prompt form
 * of tools and of earlier calls and results, and the model's calls parsed back.
 * Part of the pure request/response code (fuzzed: tests/fuzz/fuzz_tool_calls.c).
 *
 * Prompt form (every chat format for now; the native DeepSeek-V3 tool tokens and
 * the HF templates' exact wording are a known gap, docs/api.md): the tool list
 * goes into the system message as JSON, with the instruction to answer a call as
 *     <tool_call>{"name": NAME, "arguments": {...}}</tool_call>
 * An assistant message's tool_calls are written back in that form after its
 * content, and a role "tool" message becomes a user turn
 *     <tool_result id="ID">CONTENT</tool_result>
 *
 * tool_choice "required" or a named function constrains the output with a grammar
 * (grammar.h): one call object, or with parallel_tool_calls an array of 1 to
 * DSI__MAX_PARALLEL_CALLS of them, each {"name": one of the tools, "arguments":
 * that tool's parameters schema}. "auto" leaves the model free and parses
 * <tool_call> blocks out of its answer; "none" keeps the tools out of the prompt.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/grammar.h"
#include "internal.h"

#define MAX_TOOLS 64
#define DSI__MAX_PARALLEL_CALLS 8

static const char TOOL_OPEN[] = "<tool_call>", TOOL_CLOSE[] = "</tool_call>";

static int oom(struct dsi__api_error *e) { return dsi__api_error_set(e, 500, NULL, "internal_error", "out of memory"); }

static bool fn_name_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 64) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* {"name": {"const": NAME}, "arguments": PARAMS} as a schema object (cJSON, owned). */
static cJSON *call_schema(const cJSON *fn) {
    cJSON *s = cJSON_CreateObject(), *props = cJSON_AddObjectToObject(s, "properties");
    cJSON *name = cJSON_AddObjectToObject(props, "name");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
    cJSON_AddStringToObject(s, "type", "object");
    cJSON_AddStringToObject(name, "const", cJSON_GetObjectItemCaseSensitive(fn, "name")->valuestring);
    cJSON *args = params ? cJSON_Duplicate(params, true) : cJSON_Parse("{\"type\":\"object\",\"properties\":{}}");
    cJSON_AddItemToObject(props, "arguments", args);
    cJSON *req = cJSON_AddArrayToObject(s, "required");
    cJSON_AddItemToArray(req, cJSON_CreateString("name"));
    cJSON_AddItemToArray(req, cJSON_CreateString("arguments"));
    cJSON_AddFalseToObject(s, "additionalProperties");
    return s;
}

/* The grammar of a forced call: the named tool, or any tool (anyOf). */
static int forced_grammar(const cJSON *tools, const char *only, bool parallel, struct dsi__req *r,
                          struct dsi__api_error *e) {
    cJSON *one = NULL, *any = cJSON_CreateArray();
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        if (only && strcmp(cJSON_GetObjectItemCaseSensitive(fn, "name")->valuestring, only)) continue;
        cJSON_AddItemToArray(any, call_schema(fn));
    }
    if (cJSON_GetArraySize(any) == 1) {
        one = cJSON_DetachItemFromArray(any, 0);
        cJSON_Delete(any);
    } else {
        one = cJSON_CreateObject();
        cJSON_AddItemToObject(one, "anyOf", any);
    }
    cJSON *root = one;
    if (parallel) {
        root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "type", "array");
        cJSON_AddItemToObject(root, "items", one);
        cJSON_AddNumberToObject(root, "minItems", 1);
        cJSON_AddNumberToObject(root, "maxItems", DSI__MAX_PARALLEL_CALLS);
    }
    int st = dsi__srv_compile_schema(root, "tools", &r->grammar, e);
    cJSON_Delete(root);
    return st;
}

/* tool_choice: "none" | "auto" | "required" | {"type":"function","function":{"name"}}. */
static int parse_choice(const cJSON *tc, const cJSON *tools, struct dsi__req *r, const char **named,
                        struct dsi__api_error *e) {
    *named = NULL;
    r->tool_choice = tools ? DSI__TOOL_CHOICE_AUTO : DSI__TOOL_CHOICE_NONE;
    if (!tc || cJSON_IsNull(tc)) return 0;
    if (cJSON_IsString(tc)) {
        if (!strcmp(tc->valuestring, "none")) r->tool_choice = DSI__TOOL_CHOICE_NONE;
        else if (!strcmp(tc->valuestring, "auto")) r->tool_choice = DSI__TOOL_CHOICE_AUTO;
        else if (!strcmp(tc->valuestring, "required")) r->tool_choice = DSI__TOOL_CHOICE_REQUIRED;
        else
            return dsi__api_error_set(e, 400, "tool_choice", "invalid_value",
                                      "'tool_choice' must be \"none\", \"auto\", \"required\" or a function");
    } else {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(fn, "name");
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(tc, "type");
        if (!cJSON_IsObject(tc) || !cJSON_IsString(ty) || strcmp(ty->valuestring, "function") || !cJSON_IsString(nm))
            return dsi__api_error_set(e, 400, "tool_choice", "invalid_value",
                                      "'tool_choice' must be \"none\", \"auto\", \"required\" or "
                                      "{\"type\":\"function\",\"function\":{\"name\":...}}");
        r->tool_choice = DSI__TOOL_CHOICE_NAMED;
        *named = nm->valuestring;
    }
    if (r->tool_choice != DSI__TOOL_CHOICE_NONE && !tools)
        return dsi__api_error_set(e, 400, "tool_choice", "invalid_value", "'tool_choice' needs 'tools'");
    if (*named) {
        const cJSON *t;
        bool found = false;
        cJSON_ArrayForEach(t, tools) found |=
            !strcmp(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(t, "function"), "name")->valuestring,
                    *named);
        if (!found)
            return dsi__api_error_set(e, 400, "tool_choice", "invalid_value",
                                      "'tool_choice' names '%.64s', which is not in 'tools'", *named);
    }
    return 0;
}

/* Checks tools[] and keeps [{"name","description","parameters"}] for the prompt. */
static int parse_tool_list(const cJSON *tools, struct dsi__req *r, struct dsi__api_error *e) {
    int n = cJSON_IsArray(tools) ? cJSON_GetArraySize(tools) : -1;
    if (n < 1 || n > MAX_TOOLS)
        return dsi__api_error_set(e, 400, "tools", "invalid_value", "'tools' must be an array of 1 to %d tools",
                                  MAX_TOOLS);
    cJSON *list = cJSON_CreateArray();
    if (!list) return oom(e);
    const cJSON *t;
    int i = 0, st = 0;
    cJSON_ArrayForEach(t, tools) {
        char param[64];
        snprintf(param, sizeof param, "tools[%d].function", i++);
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(t, "type");
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(fn, "name");
        const cJSON *ds = cJSON_GetObjectItemCaseSensitive(fn, "description");
        const cJSON *pa = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
        if (!cJSON_IsObject(t) || !cJSON_IsString(ty) || strcmp(ty->valuestring, "function") || !cJSON_IsObject(fn) ||
            !cJSON_IsString(nm) || !fn_name_ok(nm->valuestring) || (ds && !cJSON_IsString(ds)) ||
            (pa && !cJSON_IsObject(pa))) {
            st = dsi__api_error_set(e, 400, param, "invalid_value",
                                    "'%s' must be {\"name\": 1 to 64 of a-z A-Z 0-9 _ -, \"description\": string, "
                                    "\"parameters\": JSON Schema}", param);
            break;
        }
        const cJSON *u;
        cJSON_ArrayForEach(u, list) if (!strcmp(cJSON_GetObjectItemCaseSensitive(u, "name")->valuestring,
                                                nm->valuestring)) st = dsi__api_error_set(
            e, 400, param, "invalid_value", "function '%.64s' is listed twice", nm->valuestring);
        if (st) break;
        struct dsi_grammar *g = NULL; /* a schema the grammar cannot enforce is refused up front */
        if (pa && (st = dsi__srv_compile_schema(pa, param, &g, e))) break;
        dsi_grammar_destroy(g);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(list, o);
        cJSON_AddStringToObject(o, "name", nm->valuestring);
        if (ds) cJSON_AddStringToObject(o, "description", ds->valuestring);
        if (pa) cJSON_AddItemToObject(o, "parameters", cJSON_Duplicate(pa, true));
    }
    if (!st && !(r->tools_json = cJSON_PrintUnformatted(list))) st = oom(e);
    cJSON_Delete(list);
    return st;
}

int dsi__srv_parse_tools(const struct cJSON *root, struct dsi__req *r, struct dsi__api_error *e) {
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "tool_choice");
    const cJSON *par = cJSON_GetObjectItemCaseSensitive(root, "parallel_tool_calls");
    if (tools && cJSON_IsNull(tools)) tools = NULL;
    r->parallel_tool_calls = true; /* OpenAI's default */
    if (par && !cJSON_IsNull(par)) {
        if (!cJSON_IsBool(par))
            return dsi__api_error_set(e, 400, "parallel_tool_calls", "invalid_type",
                                      "'parallel_tool_calls' must be a boolean");
        r->parallel_tool_calls = cJSON_IsTrue(par);
    }
    int st;
    if (tools && (st = parse_tool_list(tools, r, e))) return st;
    const char *named = NULL;
    if ((st = parse_choice(tc, tools, r, &named, e))) return st;
    if (r->tool_choice != DSI__TOOL_CHOICE_REQUIRED && r->tool_choice != DSI__TOOL_CHOICE_NAMED) return 0;
    if (r->grammar)
        return dsi__api_error_set(e, 400, "tool_choice", "invalid_value",
                                  "'tool_choice' \"required\" or a named function cannot be combined with "
                                  "'response_format'");
    return forced_grammar(tools, named, named ? false : r->parallel_tool_calls, r, e);
}

/* An assistant message's tool_calls -> [{"id","name","arguments"}] (arguments as
 * parsed JSON when they parse, else the string). Role "tool" needs tool_call_id. */
int dsi__srv_parse_msg_tools(const struct cJSON *m, size_t i, struct dsi__msg *out, struct dsi__api_error *e) {
    char param[64];
    if (!strcmp(out->role, "tool")) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "tool_call_id");
        snprintf(param, sizeof param, "messages[%zu].tool_call_id", i);
        if (!cJSON_IsString(id))
            return dsi__api_error_set(e, 400, param, "missing_field", "'%s' (a string) is required", param);
        return (out->tool_call_id = strdup(id->valuestring)) ? 0 : oom(e);
    }
    const cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
    if (!calls || cJSON_IsNull(calls) || strcmp(out->role, "assistant")) return 0;
    snprintf(param, sizeof param, "messages[%zu].tool_calls", i);
    if (!cJSON_IsArray(calls) || cJSON_GetArraySize(calls) > MAX_TOOLS)
        return dsi__api_error_set(e, 400, param, "invalid_type", "'%s' must be an array of at most %d calls", param,
                                  MAX_TOOLS);
    cJSON *list = cJSON_CreateArray();
    const cJSON *c;
    cJSON_ArrayForEach(c, calls) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(fn, "name");
        const cJSON *ar = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(c, "id");
        if (!cJSON_IsString(nm) || !cJSON_IsString(ar) || (id && !cJSON_IsString(id))) {
            cJSON_Delete(list);
            return dsi__api_error_set(e, 400, param, "invalid_value",
                                      "'%s' entries must be {\"id\", \"type\":\"function\", \"function\":{\"name\", "
                                      "\"arguments\": a JSON string}}", param);
        }
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(list, o);
        if (id) cJSON_AddStringToObject(o, "id", id->valuestring);
        cJSON_AddStringToObject(o, "name", nm->valuestring);
        cJSON *args = cJSON_Parse(ar->valuestring);
        cJSON_AddItemToObject(o, "arguments", args ? args : cJSON_CreateString(ar->valuestring));
    }
    out->tool_calls = cJSON_PrintUnformatted(list);
    cJSON_Delete(list);
    return out->tool_calls ? 0 : oom(e);
}

static char *concat3(const char *a, const char *b, const char *c) {
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char *s = malloc(la + lb + lc + 1);
    if (!s) return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb);
    memcpy(s + la + lb, c, lc + 1);
    return s;
}

/* Rewrites one message into the prompt form (see the file comment). */
static int rewrite_msg(struct dsi__msg *m) {
    char *s = NULL;
    if (m->tool_call_id) { /* role tool */
        char *head = concat3("<tool_result id=\"", m->tool_call_id, "\">");
        s = head ? concat3(head, m->content, "</tool_result>") : NULL;
        free(head);
        char *role = strdup("user");
        if (!s || !role) {
            free(s);
            free(role);
            return -1;
        }
        free(m->role);
        m->role = role;
    } else if (m->tool_calls) {
        cJSON *list = cJSON_Parse(m->tool_calls), *c;
        s = strdup(m->content);
        cJSON_ArrayForEach(c, list) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddItemToObject(o, "name", cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(c, "name"), true));
            cJSON_AddItemToObject(o, "arguments",
                                  cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(c, "arguments"), true));
            char *j = cJSON_PrintUnformatted(o);
            cJSON_Delete(o);
            char *block = j ? concat3(TOOL_OPEN, j, TOOL_CLOSE) : NULL;
            char *t = s && block ? concat3(s, *s ? "\n" : "", block) : NULL;
            free(j);
            free(block);
            free(s);
            s = t;
        }
        cJSON_Delete(list);
        if (!s) return -1;
    } else {
        return 0;
    }
    free(m->content);
    m->content = s;
    return 0;
}

int dsi__srv_tools_prompt(struct dsi__req *r, struct dsi__api_error *e) {
    for (size_t i = 0; i < r->n_msgs; i++)
        if (rewrite_msg(&r->msgs[i])) return oom(e);
    if (!r->tools_json || r->tool_choice == DSI__TOOL_CHOICE_NONE || r->n_msgs == 0) return 0;
    static const char head[] =
        "You can call these functions (JSON Schema parameters):\n";
    static const char tail[] =
        "\nTo call one, answer with <tool_call>{\"name\": NAME, \"arguments\": {...}}</tool_call>, one block per "
        "call; a function's result comes back as <tool_result id=\"...\">...</tool_result>.";
    char *block = concat3(head, r->tools_json, tail);
    if (!block) return oom(e);
    struct dsi__msg *sys = &r->msgs[0];
    if (!strcmp(sys->role, "system")) {
        char *t = concat3(sys->content, *sys->content ? "\n\n" : "", block);
        free(block);
        if (!t) return oom(e);
        free(sys->content);
        sys->content = t;
        return 0;
    }
    /* no system message: one is put first (msgs has room: the parser sized it +1) */
    char *role = strdup("system");
    if (!role) {
        free(block);
        return oom(e);
    }
    memmove(r->msgs + 1, r->msgs, r->n_msgs * sizeof *r->msgs);
    memset(&r->msgs[0], 0, sizeof r->msgs[0]);
    r->msgs[0].role = role;
    r->msgs[0].content = block;
    r->n_msgs++;
    return 0;
}

/* One call {"name","arguments"} -> an OpenAI tool_calls entry. */
static int add_call(struct dsi__sbuf *b, const cJSON *c, const char *id_prefix, int i, bool with_index) {
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(c, "name");
    const cJSON *ar = cJSON_GetObjectItemCaseSensitive(c, "arguments");
    if (!cJSON_IsObject(c) || !cJSON_IsString(nm) || !cJSON_IsObject(ar)) return 1;
    char *args = cJSON_PrintUnformatted(ar);
    if (!args) return -1;
    int rc = dsi__sbuf_printf(b, "%s{", i ? "," : "");
    if (!rc && with_index) rc = dsi__sbuf_printf(b, "\"index\":%d,", i);
    if (!rc) rc = dsi__sbuf_printf(b, "\"id\":\"call_%s_%d\",\"type\":\"function\",\"function\":{\"name\":", id_prefix, i);
    if (!rc) rc = dsi__sbuf_json_str(b, nm->valuestring, strlen(nm->valuestring));
    if (!rc) rc = dsi__sbuf_printf(b, ",\"arguments\":");
    if (!rc) rc = dsi__sbuf_json_str(b, args, strlen(args));
    if (!rc) rc = dsi__sbuf_printf(b, "}}");
    free(args);
    return rc ? -1 : 0;
}

int dsi__srv_tool_calls_extract(const char *text, size_t n, bool forced, const char *id_prefix, bool with_index,
                                struct dsi__sbuf *calls, int *n_calls, size_t *content_len) {
    *n_calls = 0;
    *content_len = n;
    calls->len = 0;
    int rc = dsi__sbuf_printf(calls, "[");
    if (rc) return -1;
    if (forced) {
        cJSON *j = cJSON_ParseWithLength(text, n);
        cJSON *one = cJSON_IsArray(j) ? j->child : j;
        for (cJSON *c = one; c && !rc; c = cJSON_IsArray(j) ? c->next : NULL)
            if (!(rc = add_call(calls, c, id_prefix, *n_calls, with_index))) ++*n_calls;
        cJSON_Delete(j);
        if (!rc && *n_calls) *content_len = 0; /* the whole answer is the calls */
    } else {
        const char *p = text, *end = text + n, *first = NULL;
        while (!rc) {
            const char *o = memmem(p, (size_t)(end - p), TOOL_OPEN, sizeof TOOL_OPEN - 1);
            if (!o) break;
            const char *body = o + sizeof TOOL_OPEN - 1;
            const char *c = memmem(body, (size_t)(end - body), TOOL_CLOSE, sizeof TOOL_CLOSE - 1);
            if (!c) break; /* cut off (length): the rest stays text */
            cJSON *j = cJSON_ParseWithLength(body, (size_t)(c - body));
            rc = j ? add_call(calls, j, id_prefix, *n_calls, with_index) : 1;
            cJSON_Delete(j);
            if (!rc) {
                ++*n_calls;
                if (!first) first = o;
            }
            p = c + sizeof TOOL_CLOSE - 1;
        }
        if (rc == 1) *n_calls = 0; /* a malformed block: the whole answer is text */
        if (*n_calls) {
            size_t cl = (size_t)(first - text);
            while (cl > 0 && (text[cl - 1] == ' ' || text[cl - 1] == '\n')) cl--;
            *content_len = cl;
        }
    }
    if (rc == 1) {
        *n_calls = 0;
        rc = 0;
    }
    if (!rc && *n_calls == 0) {
        calls->len = 0;
        return 0;
    }
    return rc || dsi__sbuf_printf(calls, "]") ? -1 : 0;
}
