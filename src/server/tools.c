/*
 * tools.c: function calling (OpenAI "tools"): the request fields, the prompt of
 * tools and of earlier calls and results, and the model's calls parsed back.
 * Part of the pure request/response code (fuzzed: tests/fuzz/fuzz_tool_calls.c).
 *
 * Formats with a native tool syntax (DeepSeek-V3, ChatML) get tools, calls and
 * results rendered by src/tok as their HF templates do; the V3 template has no
 * tool list, so here it goes into the system message as JSON. The other formats
 * get the prompt form: the tool list in the system message with the instruction
 * to answer a call as
 *     <tool_call>{"name": NAME, "arguments": {...}}</tool_call>
 * an assistant message's tool_calls written back in that form after its content,
 * and a role "tool" message as a user turn
 *     <tool_result id="ID">CONTENT</tool_result>
 *
 * tool_choice "required" or a named function constrains the output with a grammar
 * (grammar.h): one call object, or with parallel_tool_calls an array of 1 to
 * DSI__MAX_PARALLEL_CALLS of them, each {"name": one of the tools, "arguments":
 * that tool's parameters schema}. In a native syntax (dsi__srv_tools_native) the
 * prompt ends with the first call's opening instead and the grammar writes the
 * calls in that syntax up to the end of the run (V3: name line, fence, arguments,
 * <｜tool▁call▁end｜>, then the next call's opening or <｜tool▁calls▁end｜>; ChatML:
 * the call object, then </tool_call> and the next <tool_call> or the end), with the
 * markers as the model's own tokens (dsi_grammar_compile_repeated); as many calls
 * as in the prompt form. "auto" leaves the model free and finds the calls of the
 * format's syntax in its answer (toolscan.c); "none" keeps the tools out of the
 * prompt.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/grammar.h"
#include "internal.h"

#define MAX_TOOLS 64
#define DSI__MAX_PARALLEL_CALLS 8

static const char TOOL_OPEN[] = "<tool_call>", TOOL_CLOSE[] = "</tool_call>"; /* the prompt form */

static char *concat3(const char *a, const char *b, const char *c) {
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char *s = malloc(la + lb + lc + 1);
    if (!s) return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb);
    memcpy(s + la + lb, c, lc + 1);
    return s;
}

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
    if (!st && !(r->tools_raw = cJSON_PrintUnformatted(tools))) st = oom(e);
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
    if (named && !(r->tool_named = strdup(named))) return oom(e);
    return forced_grammar(tools, named, named ? false : r->parallel_tool_calls, r, e);
}

/* A forced run of calls in a native syntax: what each call starts with (after the
 * prefilled opening or a separator: name_pre, the name, name_post), what comes
 * between calls and after the last one, as template text (its special tokens are
 * the model's added tokens). */
struct native_syntax {
    const char *name_pre, *name_post, *sep, *end;
};
static const struct native_syntax NATIVE_DEEPSEEK = {
    "", "\n```json\n", "\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>",
    "\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"};
static const struct native_syntax NATIVE_TAGS = {"{\"name\":\"", "\",\"arguments\":", "}\n</tool_call>\n<tool_call>\n",
                                                 "}\n</tool_call>"};

/* Template text -> grammar raw text: the tokenizer's added tokens as references
 * (grammar.h), so the model writes them as the tokens they are; without a
 * tokenizer the text as it is. NULL when out of memory or not encodable. */
static char *raw_text(const struct dsi_tokenizer *tok, const char *text) {
    char *out = NULL;
    if (!tok) return strdup(text);
    return dsi_grammar_raw_text(tok, text, &out, NULL) ? NULL : out;
}

/* The forced grammar of a native syntax: 1 to max_calls calls, each to one of the
 * tools (or only), its arguments that tool's parameters. */
static int native_grammar(const cJSON *tools, const char *only, const struct native_syntax *ns, int max_calls,
                          const struct dsi_tokenizer *tok, struct dsi__req *r, struct dsi__api_error *e) {
    struct dsi_grammar_alt alts[MAX_TOOLS] = {{0}};
    char *texts[2 * MAX_TOOLS];
    size_t n = 0, n_texts = 0;
    int st = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        const char *name = cJSON_GetObjectItemCaseSensitive(fn, "name")->valuestring;
        const cJSON *pa = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
        if ((only && strcmp(name, only)) || n == MAX_TOOLS) continue;
        char *head = concat3(ns->name_pre, name, ns->name_post); /* names need no escaping (fn_name_ok) */
        char *prefix = head ? raw_text(tok, head) : NULL;
        free(head);
        char *schema = pa ? cJSON_PrintUnformatted(pa) : strdup("{\"type\":\"object\",\"properties\":{}}");
        if (prefix) texts[n_texts++] = prefix;
        if (schema) texts[n_texts++] = schema;
        if (!prefix || !schema) {
            st = oom(e);
            break;
        }
        alts[n++] = (struct dsi_grammar_alt){prefix, schema};
    }
    char *sep = st ? NULL : raw_text(tok, ns->sep), *end = st ? NULL : raw_text(tok, ns->end), *err = NULL;
    if (!st && (!sep || !end)) st = oom(e);
    int rc = st ? 0 : dsi_grammar_compile_repeated(alts, n, sep, end, max_calls, &r->grammar, &err);
    if (rc) /* each schema compiled alone at parse: only memory can fail here */
        st = dsi__api_error_set(e, rc == DSI_ENOMEM ? 500 : 400, "tools", NULL, "%s", err ? err : "cannot compile");
    free(err);
    free(sep);
    free(end);
    while (n_texts) free(texts[--n_texts]);
    return st;
}

int dsi__srv_tools_native(struct dsi__req *r, enum dsi__tool_syntax syn, const struct dsi_tokenizer *tok,
                          struct dsi__api_error *e) {
    if (r->tool_choice != DSI__TOOL_CHOICE_REQUIRED && r->tool_choice != DSI__TOOL_CHOICE_NAMED) return 0;
    cJSON *tools = r->tools_raw ? cJSON_Parse(r->tools_raw) : NULL;
    if (!tools) return oom(e);
    dsi_grammar_destroy(r->grammar);
    r->grammar = NULL;
    /* a named function is called once, as in the formats without a native syntax */
    int max_calls = r->tool_named || !r->parallel_tool_calls ? 1 : DSI__MAX_PARALLEL_CALLS;
    int st = native_grammar(tools, r->tool_named, syn == DSI__TOOLS_DEEPSEEK ? &NATIVE_DEEPSEEK : &NATIVE_TAGS,
                            max_calls, tok, r, e);
    cJSON_Delete(tools);
    if (st) return st;
    const char *open = syn == DSI__TOOLS_DEEPSEEK ? "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
                                                  : "<tool_call>\n";
    return (r->prefill = strdup(open)) ? 0 : oom(e);
}

/* An assistant message's tool_calls -> out->calls (arguments kept as the client's
 * string: the native renderings print it unchanged). Role "tool" needs tool_call_id. */
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
    int n = cJSON_IsArray(calls) ? cJSON_GetArraySize(calls) : -1;
    if (n < 0 || n > MAX_TOOLS)
        return dsi__api_error_set(e, 400, param, "invalid_type", "'%s' must be an array of at most %d calls", param,
                                  MAX_TOOLS);
    if (n == 0) return 0;
    if (!(out->calls = calloc((size_t)n, sizeof *out->calls))) return oom(e);
    const cJSON *c;
    cJSON_ArrayForEach(c, calls) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(fn, "name");
        const cJSON *ar = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(c, "id");
        if (!cJSON_IsString(nm) || !cJSON_IsString(ar) || (id && !cJSON_IsString(id)))
            return dsi__api_error_set(e, 400, param, "invalid_value",
                                      "'%s' entries must be {\"id\", \"type\":\"function\", \"function\":{\"name\", "
                                      "\"arguments\": a JSON string}}", param);
        struct dsi__call *k = &out->calls[out->n_calls++];
        k->name = strdup(nm->valuestring);
        k->arguments = strdup(ar->valuestring);
        k->id = id ? strdup(id->valuestring) : NULL;
        if (!k->name || !k->arguments || (id && !k->id)) return oom(e);
    }
    return 0;
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
    } else if (m->n_calls) {
        s = strdup(m->content);
        for (size_t i = 0; i < m->n_calls; i++) {
            cJSON *o = cJSON_CreateObject(), *args = cJSON_Parse(m->calls[i].arguments);
            cJSON_AddStringToObject(o, "name", m->calls[i].name);
            cJSON_AddItemToObject(o, "arguments", args ? args : cJSON_CreateString(m->calls[i].arguments));
            char *j = cJSON_PrintUnformatted(o);
            cJSON_Delete(o);
            char *block = j ? concat3(TOOL_OPEN, j, TOOL_CLOSE) : NULL;
            char *t = s && block ? concat3(s, *s ? "\n" : "", block) : NULL;
            free(j);
            free(block);
            free(s);
            s = t;
        }
        if (!s) return -1;
    } else {
        return 0;
    }
    free(m->content);
    m->content = s;
    return 0;
}

int dsi__srv_tools_prompt(struct dsi__req *r, enum dsi__tools_prompt how, struct dsi__api_error *e) {
    for (size_t i = 0; how == DSI__TP_TEXT && i < r->n_msgs; i++)
        if (rewrite_msg(&r->msgs[i])) return oom(e);
    if (how == DSI__TP_NATIVE || !r->tools_json || r->tool_choice == DSI__TOOL_CHOICE_NONE || r->n_msgs == 0)
        return 0;
    static const char head[] =
        "You can call these functions (JSON Schema parameters):\n";
    static const char tail_text[] =
        "\nTo call one, answer with <tool_call>{\"name\": NAME, \"arguments\": {...}}</tool_call>, one block per "
        "call; a function's result comes back as <tool_result id=\"...\">...</tool_result>.";
    static const char tail_native[] =
        "\nTo call functions, use your tool-call syntax: each call names the function and gives its arguments as a "
        "JSON object.";
    char *block = concat3(head, r->tools_json, how == DSI__TP_TEXT ? tail_text : tail_native);
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

int dsi__srv_tool_call_json(struct dsi__sbuf *b, const char *id_prefix, int i, bool comma, bool with_index,
                            const char *name, const char *arguments) {
    int rc = dsi__sbuf_printf(b, "%s{", comma ? "," : "");
    if (!rc && with_index) rc = dsi__sbuf_printf(b, "\"index\":%d,", i);
    if (!rc) rc = dsi__sbuf_printf(b, "\"id\":\"call_%s_%d\",\"type\":\"function\",\"function\":{\"name\":", id_prefix, i);
    if (!rc) rc = dsi__sbuf_json_str(b, name, strlen(name));
    if (!rc) rc = dsi__sbuf_printf(b, ",\"arguments\":");
    if (!rc) rc = dsi__sbuf_json_str(b, arguments, strlen(arguments));
    if (!rc) rc = dsi__sbuf_printf(b, "}}");
    return rc ? -1 : 0;
}

/* One call {"name","arguments"} of forced output -> an OpenAI tool_calls entry;
 * 1 when c is not such a call. */
static int add_call(struct dsi__sbuf *b, const cJSON *c, const char *id_prefix, int i, bool with_index) {
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(c, "name");
    const cJSON *ar = cJSON_GetObjectItemCaseSensitive(c, "arguments");
    if (!cJSON_IsObject(c) || !cJSON_IsString(nm) || !cJSON_IsObject(ar)) return 1;
    char *args = cJSON_PrintUnformatted(ar);
    if (!args) return -1;
    int rc = dsi__srv_tool_call_json(b, id_prefix, i, i > 0, with_index, nm->valuestring, args);
    free(args);
    return rc;
}

/* The whole-answer scan (non-forced extract): content kept only before the first call. */
struct extract {
    struct dsi__sbuf *calls;
    const char *id_prefix;
    bool with_index;
    int n_calls;
    size_t content_len; /* content handed over before the first call */
};

static int extract_content(void *user, const char *s, size_t n) {
    struct extract *x = user;
    (void)s;
    if (!x->n_calls) x->content_len += n;
    return 0;
}

static int extract_call(void *user, const char *name, const char *arguments) {
    struct extract *x = user;
    if (dsi__srv_tool_call_json(x->calls, x->id_prefix, x->n_calls, x->n_calls > 0, x->with_index, name, arguments)) return -1;
    x->n_calls++;
    return 0;
}

int dsi__srv_tool_calls_extract(const char *text, size_t n, bool forced, enum dsi__tool_syntax syn,
                                const char *id_prefix, bool with_index, struct dsi__sbuf *calls, int *n_calls,
                                size_t *content_len) {
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
        if (rc == 1) *n_calls = 0, rc = 0;
    } else {
        /* The content handed over before the first call is a prefix of text
         * (the scanner emits text in order, trimming blanks before a call). */
        struct extract x = {calls, id_prefix, with_index, 0, 0};
        struct dsi__toolscan ts;
        struct dsi__toolscan_cb cb = {extract_content, extract_call, &x};
        dsi__toolscan_init(&ts, syn);
        rc = dsi__toolscan_push(&ts, text, n, &cb);
        if (!rc) rc = dsi__toolscan_finish(&ts, &cb);
        dsi__toolscan_free(&ts);
        *n_calls = x.n_calls;
        if (x.n_calls) *content_len = x.content_len;
    }
    if (!rc && *n_calls == 0) {
        calls->len = 0;
        return 0;
    }
    return rc || dsi__sbuf_printf(calls, "]") ? -1 : 0;
}
