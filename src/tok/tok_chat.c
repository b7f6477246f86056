/*
 * tok_chat.c: chat prompt formats rendered natively (no Jinja engine).
 *
 * Each format reproduces, byte for byte, what HF transformers' apply_chat_template
 * makes from the model's own template for system/user/assistant messages, and for
 * the formats with a native tool syntax (DeepSeek-V3, ChatML as Qwen writes it)
 * also for tools, assistant tool calls and "tool" results; the other formats refuse
 * those (the server rewrites them into text first). tests/golden/tok/chat_*.json
 * and chat_tools_*.json hold the renderings the tests compare against. The
 * DeepSeek-V3 template's own quirks are kept (they are what the model saw): a turn
 * with a single call gets no <｜tool▁calls▁end｜>, and after the first tool-call
 * turn or result, later ones start with "\n" instead of the opening markers.
 * The format is picked from
 * tokenizer_config.json's chat_template by distinctive substrings:
 *   "<｜User｜>" + "<｜Assistant｜>"  DeepSeek-V3 family; with "</think>" in the template
 *                                  earlier assistant turns drop their reasoning (R1), and
 *                                  with "<｜Assistant｜><think>" generation opens <think>
 *                                  (R1 and R1-Distill: a reasoning model);
 *   "### Instruction:"             DeepSeek-Coder instruct;
 *   "'User: '"                     DeepSeek LLM chat;
 *   "<|im_start|>"                 ChatML; with "reasoning_content" Qwen3's rules for
 *                                  <think> in assistant turns.
 *
 * Invariant: every byte of a message's content goes through put_content, so
 * dsi_chat_encode can encode it as plain text: special tokens (and DeepSeek's
 * turn markers) come only from the template, never from a client's message
 * (issue 27, finding 7). Content bytes are encoded in one pass with the
 * template text around them, so a chat without such text gets exactly the
 * ids of render + encode(allow_special), as HF's apply_chat_template does.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "tok_internal.h"

static const char CODER_SYSTEM[] =
    "You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek Company, and you "
    "only answer questions related to computer science. For politically sensitive questions, security and privacy "
    "issues, and other non-computer science questions, you will refuse to answer\n";

/* The rendered text, and where in it message content lies (spans sorted,
 * disjoint: dsi_chat_encode keeps special tokens out of them). */
struct buf {
    char *p;
    size_t n, cap;
    int rc;
    struct dsi__span *sp;
    size_t n_sp, cap_sp;
};

static void put_n(struct buf *b, const char *s, size_t n) {
    if (b->rc || n == 0) return;
    if (n > SIZE_MAX - b->n - 1) {
        b->rc = DSI_EOVERFLOW;
        return;
    }
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n + 1) c = c > SIZE_MAX / 2 ? b->n + n + 1 : c * 2;
        char *p = realloc(b->p, c);
        if (!p) {
            b->rc = DSI_ENOMEM;
            return;
        }
        b->p = p;
        b->cap = c;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void put(struct buf *b, const char *s) { put_n(b, s, strlen(s)); }

/* Message content: text from the client, never the template's structure. */
static void put_content_n(struct buf *b, const char *s, size_t n) {
    if (b->rc || n == 0) return;
    size_t at = b->n;
    put_n(b, s, n);
    if (b->rc) return;
    if (b->n_sp && b->sp[b->n_sp - 1].end == at) {
        b->sp[b->n_sp - 1].end = b->n;
        return;
    }
    if (b->n_sp == b->cap_sp) {
        size_t c = b->cap_sp ? b->cap_sp * 2 : 16;
        struct dsi__span *p = c <= SIZE_MAX / sizeof *p ? realloc(b->sp, c * sizeof *p) : NULL;
        if (!p) {
            b->rc = DSI_ENOMEM;
            return;
        }
        b->sp = p;
        b->cap_sp = c;
    }
    b->sp[b->n_sp++] = (struct dsi__span){at, b->n};
}

static void put_content(struct buf *b, const char *s) { put_content_n(b, s, strlen(s)); }

/* Last occurrence of needle in hay, or NULL. */
static const char *find_last(const char *hay, const char *needle) {
    const char *last = NULL, *p = hay;
    while ((p = strstr(p, needle)) != NULL) last = p++;
    return last;
}

void dsi__chat_detect(struct dsi_tokenizer *t) {
    const char *ct = t->chat_template;
    t->chat_r1_strip_think = t->chat_gen_think = t->chat_qwen3_think = false;
    if (ct && strstr(ct, "<｜User｜>") && strstr(ct, "<｜Assistant｜>")) {
        t->chat_format = DSI_CHAT_DEEPSEEK_V3;
        t->chat_r1_strip_think = strstr(ct, "</think>") != NULL;
        t->chat_gen_think = strstr(ct, "<｜Assistant｜><think>") != NULL;
    } else if (ct && strstr(ct, "### Instruction:")) {
        t->chat_format = DSI_CHAT_DEEPSEEK_CODER;
    } else if (ct && strstr(ct, "'User: '")) {
        t->chat_format = DSI_CHAT_DEEPSEEK_LLM;
    } else if (ct && strstr(ct, "<|im_start|>")) {
        t->chat_format = DSI_CHAT_CHATML;
        t->chat_qwen3_think = strstr(ct, "reasoning_content") != NULL;
    } else {
        /* No or unknown template: go by the special tokens the vocabulary has. */
        if (dsi_tok_lookup(t, "<|im_start|>") >= 0)
            t->chat_format = DSI_CHAT_CHATML;
        else if (dsi_tok_lookup(t, "<｜User｜>") >= 0)
            t->chat_format = DSI_CHAT_DEEPSEEK_V3;
        else
            t->chat_format = DSI_CHAT_DEEPSEEK_LLM;
        if (ct)
            dsi_log(DSI_LOG_WARN, "tok", "unknown chat_template; using the %s format (override with chat_format)",
                    dsi_chat_format_name(t->chat_format));
    }
}

static const struct {
    const char *name;
    enum dsi_chat_format f;
} FORMATS[] = {
    {"auto", DSI_CHAT_AUTO},
    {"deepseek-v3", DSI_CHAT_DEEPSEEK_V3},
    {"deepseek-r1", DSI_CHAT_DEEPSEEK_V3}, /* same format; R1 rules come from the template */
    {"deepseek-llm", DSI_CHAT_DEEPSEEK_LLM},
    {"deepseek-coder", DSI_CHAT_DEEPSEEK_CODER},
    {"chatml", DSI_CHAT_CHATML},
};

int dsi_chat_format_parse(const char *name, enum dsi_chat_format *out) {
    if (!name || !out) return DSI_EINVAL;
    for (size_t i = 0; i < sizeof FORMATS / sizeof FORMATS[0]; i++)
        if (strcmp(FORMATS[i].name, name) == 0) {
            *out = FORMATS[i].f;
            return 0;
        }
    return DSI_EINVAL;
}

const char *dsi_chat_format_name(enum dsi_chat_format f) {
    for (size_t i = 0; i < sizeof FORMATS / sizeof FORMATS[0]; i++)
        if (FORMATS[i].f == f) return FORMATS[i].name;
    return "unknown";
}

enum dsi_chat_format dsi_tok_chat_format(const struct dsi_tokenizer *t) {
    return t ? t->chat_format : DSI_CHAT_DEEPSEEK_V3;
}

static enum dsi_chat_format resolve(const struct dsi_tokenizer *t, enum dsi_chat_format f) {
    return f == DSI_CHAT_AUTO ? t->chat_format : f;
}

static int add_stop(int32_t *out, int n, int cap, int32_t id) {
    if (id < 0 || n >= cap) return n;
    for (int i = 0; i < n; i++)
        if (out[i] == id) return n;
    out[n] = id;
    return n + 1;
}

int dsi_tok_stop_ids(const struct dsi_tokenizer *t, const int32_t *model_eos, int n_model_eos, int32_t *out,
                     int cap) {
    /* End-of-turn tokens of the formats above, plus the Llama-3 ones that
     * R1-Distill-Llama inherits in its vocabulary. */
    static const char *const END_TOKENS[] = {"<|im_end|>", u8"<｜end▁of▁sentence｜>", "<|EOT|>",
                                             "<|end_of_text|>", "<|eot_id|>"};
    int n = 0;
    if (t) n = add_stop(out, n, cap, dsi_tok_eos(t));
    for (int i = 0; model_eos && i < n_model_eos; i++) n = add_stop(out, n, cap, model_eos[i]);
    for (size_t i = 0; t && i < sizeof END_TOKENS / sizeof END_TOKENS[0]; i++)
        n = add_stop(out, n, cap, dsi_tok_lookup(t, END_TOKENS[i]));
    return n;
}

bool dsi_chat_is_reasoning(const struct dsi_tokenizer *t, enum dsi_chat_format f) {
    if (!t) return false;
    return resolve(t, f) == DSI_CHAT_DEEPSEEK_V3 && t->chat_format == DSI_CHAT_DEEPSEEK_V3 && t->chat_gen_think;
}

/* OpenAI's newer SDKs send "developer" where older ones send "system"; the models
 * only know the system role, so the two are the same here. */
static bool is_role(const struct dsi_chat_msg *m, const char *r) {
    if (strcmp(r, "system") == 0 && strcmp(m->role, "developer") == 0) return true;
    return strcmp(m->role, r) == 0;
}

/* The DeepSeek-V3 template's text of one tool call. */
static void v3_call(struct buf *b, const struct dsi_chat_tool_call *c) {
    put(b, "<｜tool▁call▁begin｜>function<｜tool▁sep｜>");
    put_content(b, c->name);
    put(b, "\n```json\n");
    put_content(b, c->arguments);
    put(b, "\n```<｜tool▁call▁end｜>");
}

static void render_v3(const struct dsi_tokenizer *t, const struct dsi_chat_msg *m, size_t n, bool gen, struct buf *b) {
    /* R1 rules only when the model's own template is a V3-family one that has them. */
    bool v3 = t->chat_format == DSI_CHAT_DEEPSEEK_V3;
    bool strip = v3 && t->chat_r1_strip_think, think = v3 && t->chat_gen_think;
    /* The template's namespace flags; is_first and is_output_first are never reset
     * there, so they are not here either. */
    bool is_first = false, is_tool = false, is_output_first = true;
    put(b, t->bos_text ? t->bos_text : "");
    bool first_sys = true;
    for (size_t i = 0; i < n; i++)
        if (is_role(&m[i], "system")) {
            if (!first_sys) put(b, "\n\n");
            put_content(b, m[i].content);
            first_sys = false;
        }
    for (size_t i = 0; i < n; i++) {
        if (is_role(&m[i], "user")) {
            is_tool = false;
            put(b, "<｜User｜>");
            put_content(b, m[i].content);
        } else if (is_role(&m[i], "assistant") && !m[i].content) {
            is_tool = false;
            for (size_t k = 0; k < m[i].n_tool_calls; k++) {
                if (!is_first) {
                    put(b, "<｜Assistant｜><｜tool▁calls▁begin｜>");
                    v3_call(b, &m[i].tool_calls[k]);
                    is_first = true;
                } else {
                    put(b, "\n");
                    v3_call(b, &m[i].tool_calls[k]);
                    put(b, "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>");
                }
            }
        } else if (is_role(&m[i], "assistant")) {
            const char *c = m[i].content, *e = strip ? find_last(c, "</think>") : NULL;
            if (e) c = e + strlen("</think>");
            put(b, is_tool ? "<｜tool▁outputs▁end｜>" : "<｜Assistant｜>");
            put_content(b, c);
            put(b, "<｜end▁of▁sentence｜>");
            is_tool = false;
        } else if (is_role(&m[i], "tool")) {
            is_tool = true;
            put(b, is_output_first ? "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>" : "\n<｜tool▁output▁begin｜>");
            put_content(b, m[i].content);
            put(b, "<｜tool▁output▁end｜>");
            is_output_first = false;
        }
    }
    if (is_tool) put(b, "<｜tool▁outputs▁end｜>");
    if (gen && !is_tool) put(b, think ? "<｜Assistant｜><think>\n" : "<｜Assistant｜>");
}

static void render_llm(const struct dsi_tokenizer *t, const struct dsi_chat_msg *m, size_t n, bool gen, struct buf *b) {
    put(b, t->bos_text ? t->bos_text : "");
    for (size_t i = 0; i < n; i++) {
        if (is_role(&m[i], "user")) {
            put(b, "User: ");
            put_content(b, m[i].content);
            put(b, "\n\n");
        } else if (is_role(&m[i], "assistant")) {
            put(b, "Assistant: ");
            put_content(b, m[i].content);
            put(b, t->eos_text ? t->eos_text : "");
        } else {
            put_content(b, m[i].content);
            put(b, "\n\n");
        }
    }
    if (gen) put(b, "Assistant:");
}

static void render_coder(const struct dsi_tokenizer *t, const struct dsi_chat_msg *m, size_t n, bool gen,
                         struct buf *b) {
    bool has_sys = false;
    for (size_t i = 0; i < n; i++) has_sys |= is_role(&m[i], "system");
    put(b, t->bos_text ? t->bos_text : "");
    if (!has_sys) put(b, CODER_SYSTEM);
    for (size_t i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) {
            put_content(b, m[i].content); /* the template adds no newline after it */
        } else if (is_role(&m[i], "user")) {
            put(b, "### Instruction:\n");
            put_content(b, m[i].content);
            put(b, "\n");
        } else {
            put(b, "### Response:\n");
            put_content(b, m[i].content);
            put(b, "\n<|EOT|>\n");
        }
    }
    if (gen) put(b, "### Response:\n");
}

/* Python's str.strip('\n') family on [*s, *e). */
static void strip_nl(const char **s, const char **e, bool left, bool right) {
    while (left && *s < *e && **s == '\n') (*s)++;
    while (right && *e > *s && (*e)[-1] == '\n') (*e)--;
}

/* Qwen3's assistant turn after its "<|im_start|>assistant\n": reasoning and answer
 * split at </think>. Returns where the answer starts in c (the template's
 * `content`, which decides the newline before tool calls). */
static const char *qwen3_assistant(const char *c, bool with_think, struct buf *b) {
    const char *close = strstr(c, "</think>");
    const char *ans = c, *ans_end = c + strlen(c);
    const char *rs = c, *re = c; /* reasoning, empty by default */
    if (close) {
        ans = find_last(c, "</think>") + strlen("</think>");
        strip_nl(&ans, &ans_end, true, false);
        rs = c;
        re = close;
        strip_nl(&rs, &re, false, true);
        /* .split('<think>')[-1]: after the last <think> before the first </think> */
        for (const char *p = rs; p + 7 <= re; p++)
            if (memcmp(p, "<think>", 7) == 0) rs = p + 7;
        strip_nl(&rs, &re, true, false);
    }
    const char *content = ans;
    if (with_think) {
        strip_nl(&rs, &re, true, true);
        put(b, "<think>\n");
        put_content_n(b, rs, (size_t)(re - rs));
        put(b, "\n</think>\n\n");
        strip_nl(&ans, &ans_end, true, false);
    }
    put_content_n(b, ans, (size_t)(ans_end - ans));
    return content;
}

static bool qwen3_has_reasoning(const char *c) {
    const char *close = strstr(c, "</think>");
    if (!close) return false;
    const char *rs = c, *re = close;
    strip_nl(&rs, &re, false, true);
    for (const char *p = rs; p + 7 <= re; p++)
        if (memcmp(p, "<think>", 7) == 0) rs = p + 7;
    strip_nl(&rs, &re, true, false);
    return re > rs;
}

/* Qwen3 does not count tool results passed as user turns as the last query. */
static bool is_tool_response(const char *c) {
    size_t n = strlen(c), a = strlen("<tool_response>"), z = strlen("</tool_response>");
    return n >= a + z && memcmp(c, "<tool_response>", a) == 0 && memcmp(c + n - z, "</tool_response>", z) == 0;
}

/* x as Python's json.dumps(x, ensure_ascii=False) writes it (HF's tojson filter):
 * ", " and ": " separators, only '"', '\\' and control bytes escaped. Numbers
 * lose their spelling in cJSON: an integral value is written as an integer (a
 * client's 1.0 becomes 1, where Python keeps 1.0), others in the shortest form
 * that reads back the same. Returns false when x holds a raw or invalid item. */
static bool put_pyjson(struct buf *b, const cJSON *x, int depth) {
    char tmp[40];
    if (depth > 256) return false; /* deeper than any schema the grammar takes (64 levels) */
    if (cJSON_IsNull(x)) put_content(b, "null");
    else if (cJSON_IsTrue(x)) put_content(b, "true");
    else if (cJSON_IsFalse(x)) put_content(b, "false");
    else if (cJSON_IsNumber(x)) {
        double v = x->valuedouble;
        if (v == floor(v) && fabs(v) < 1e17) snprintf(tmp, sizeof tmp, "%.0f", v);
        else
            for (int p = 1; p <= 17; p++) {
                snprintf(tmp, sizeof tmp, "%.*g", p, v);
                if (strtod(tmp, NULL) == v) break;
            }
        put_content(b, tmp);
    } else if (cJSON_IsString(x)) {
        put_content(b, "\"");
        for (const unsigned char *p = (const unsigned char *)x->valuestring; *p; p++) {
            const char *esc = *p == '"' ? "\\\"" : *p == '\\' ? "\\\\" : *p == '\n' ? "\\n" : *p == '\r' ? "\\r"
                              : *p == '\t' ? "\\t" : *p == '\b' ? "\\b" : *p == '\f' ? "\\f" : NULL;
            if (esc) put_content(b, esc);
            else if (*p < 0x20) {
                snprintf(tmp, sizeof tmp, "\\u%04x", *p);
                put_content(b, tmp);
            } else put_content_n(b, (const char *)p, 1);
        }
        put_content(b, "\"");
    } else if (cJSON_IsArray(x) || cJSON_IsObject(x)) {
        bool obj = cJSON_IsObject(x);
        put_content(b, obj ? "{" : "[");
        for (const cJSON *c = x->child; c; c = c->next) {
            if (c != x->child) put_content(b, ", ");
            if (obj) {
                cJSON k = {.type = cJSON_String, .valuestring = c->string};
                if (!c->string || !put_pyjson(b, &k, depth + 1)) return false;
                put_content(b, ": ");
            }
            if (!put_pyjson(b, c, depth + 1)) return false;
        }
        put_content(b, obj ? "}" : "]");
    } else {
        return false;
    }
    return true;
}

/* Qwen's system turn listing the tools (tools: a non-empty array). */
static int chatml_tools(const cJSON *tools, const struct dsi_chat_msg *sys, struct buf *b) {
    put(b, "<|im_start|>system\n");
    if (sys) {
        put_content(b, sys->content);
        put(b, "\n\n");
    }
    put(b, "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
           "function signatures within <tools></tools> XML tags:\n<tools>");
    for (const cJSON *x = tools->child; x; x = x->next) {
        put(b, "\n");
        if (!put_pyjson(b, x, 0)) return DSI_EINVAL;
    }
    put(b, "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
           "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
           "<args-json-object>}\n</tool_call><|im_end|>\n");
    return 0;
}

/* An assistant turn's calls in Qwen's form; content: the text rendered before them. */
static void chatml_calls(const struct dsi_chat_msg *m, const char *content, struct buf *b) {
    for (size_t k = 0; k < m->n_tool_calls; k++) {
        if (k > 0 || *content) put(b, "\n");
        put(b, "<tool_call>\n{\"name\": \"");
        put_content(b, m->tool_calls[k].name);
        put(b, "\", \"arguments\": ");
        put_content(b, m->tool_calls[k].arguments);
        put(b, "}\n</tool_call>");
    }
}

static int render_chatml(const struct dsi_tokenizer *t, const struct dsi_chat_msg *m, size_t n, const cJSON *tools,
                         bool gen, struct buf *b) {
    bool q3 = t->chat_format == DSI_CHAT_CHATML && t->chat_qwen3_think;
    size_t last_query = n ? n - 1 : 0, i0 = 0;
    if (q3)
        for (size_t i = n; i-- > 0;)
            if (is_role(&m[i], "user") && !is_tool_response(m[i].content)) {
                last_query = i;
                break;
            }
    if (cJSON_GetArraySize(tools) > 0) {
        bool sys = n && is_role(&m[0], "system");
        int rc = chatml_tools(tools, sys ? &m[0] : NULL, b);
        if (rc) return rc;
        i0 = sys;
    }
    for (size_t i = i0; i < n; i++) {
        const char *c = m[i].content ? m[i].content : "";
        if (is_role(&m[i], "tool")) {
            if (i == 0 || !is_role(&m[i - 1], "tool")) put(b, "<|im_start|>user");
            put(b, "\n<tool_response>\n");
            put_content(b, c);
            put(b, "\n</tool_response>");
            if (i + 1 == n || !is_role(&m[i + 1], "tool")) put(b, "<|im_end|>\n");
            continue;
        }
        if (q3 && is_role(&m[i], "assistant")) {
            bool after = i > last_query;
            bool with_think = after && (i == n - 1 || qwen3_has_reasoning(c));
            put(b, "<|im_start|>assistant\n");
            const char *ans = qwen3_assistant(c, with_think, b);
            chatml_calls(&m[i], ans, b);
            put(b, "<|im_end|>\n");
            continue;
        }
        put(b, "<|im_start|>");
        put(b, is_role(&m[i], "system") ? "system" : m[i].role);
        put(b, "\n");
        put_content(b, c);
        if (is_role(&m[i], "assistant")) chatml_calls(&m[i], c, b);
        put(b, "<|im_end|>\n");
    }
    if (gen) put(b, "<|im_start|>assistant\n");
    return 0;
}

bool dsi_chat_has_tool_syntax(const struct dsi_tokenizer *t, enum dsi_chat_format f) {
    enum dsi_chat_format r = t ? resolve(t, f) : f;
    return r == DSI_CHAT_DEEPSEEK_V3 || r == DSI_CHAT_CHATML;
}

/* Checks the messages against what format r can render. */
static int check_msgs(enum dsi_chat_format r, const struct dsi_chat_msg *msgs, size_t n_msgs, char **err) {
    bool tools_ok = r == DSI_CHAT_DEEPSEEK_V3 || r == DSI_CHAT_CHATML;
    for (size_t i = 0; i < n_msgs; i++) {
        const struct dsi_chat_msg *m = &msgs[i];
        bool asst = m->role && is_role(m, "assistant");
        if (!m->role || (!m->content && !(asst && m->n_tool_calls)))
            return dsi_seterr(err, DSI_EINVAL, "chat: message %zu has no role or content", i);
        if (!is_role(m, "system") && !is_role(m, "user") && !asst && !(tools_ok && is_role(m, "tool")))
            return dsi_seterr(err, DSI_EINVAL, "chat: message %zu has role \"%.20s\" (want system, developer, user, "
                              "assistant%s)", i, m->role, tools_ok ? " or tool" : "");
        if (m->n_tool_calls && (!asst || !tools_ok || !m->tool_calls))
            return dsi_seterr(err, DSI_EINVAL, "chat: message %zu: tool calls need an assistant turn and a format "
                              "with a tool syntax", i);
        for (size_t k = 0; k < m->n_tool_calls; k++)
            if (!m->tool_calls[k].name || !m->tool_calls[k].arguments)
                return dsi_seterr(err, DSI_EINVAL, "chat: message %zu: call %zu has no name or arguments", i, k);
    }
    return 0;
}

/* Renders into b (spans included); b->rc or the return value says why not. */
static int render(const struct dsi_tokenizer *t, enum dsi_chat_format f, const struct dsi_chat_msg *msgs,
                  size_t n_msgs, const char *tools_json, bool add_generation_prompt, struct buf *b, char **err) {
    if (!t || (!msgs && n_msgs)) return dsi_seterr(err, DSI_EINVAL, "chat: bad arguments");
    enum dsi_chat_format r = resolve(t, f);
    int rc = check_msgs(r, msgs, n_msgs, err);
    if (rc) return rc;
    cJSON *tools = tools_json ? cJSON_Parse(tools_json) : NULL;
    if (tools_json && !cJSON_IsArray(tools)) {
        cJSON_Delete(tools);
        return dsi_seterr(err, DSI_EINVAL, "chat: tools is not a JSON array");
    }
    switch (r) {
    case DSI_CHAT_DEEPSEEK_V3: /* the template has no place for the tool list */
        render_v3(t, msgs, n_msgs, add_generation_prompt, b);
        break;
    case DSI_CHAT_DEEPSEEK_LLM:
        render_llm(t, msgs, n_msgs, add_generation_prompt, b);
        break;
    case DSI_CHAT_DEEPSEEK_CODER:
        render_coder(t, msgs, n_msgs, add_generation_prompt, b);
        break;
    case DSI_CHAT_CHATML:
        rc = render_chatml(t, msgs, n_msgs, tools, add_generation_prompt, b);
        break;
    default:
        rc = DSI_EINVAL;
    }
    cJSON_Delete(tools);
    if (rc) return dsi_seterr(err, rc, "chat: cannot render format %d with these tools", (int)r);
    if (!b->p && !b->rc) {
        b->p = calloc(1, 1); /* empty output still gets a buffer */
        if (!b->p) b->rc = DSI_ENOMEM;
    }
    if (b->rc) return dsi_seterr(err, b->rc, "chat: out of memory");
    return 0;
}

int dsi_chat_render(const struct dsi_tokenizer *t, enum dsi_chat_format f, const struct dsi_chat_msg *msgs,
                    size_t n_msgs, const char *tools_json, bool add_generation_prompt, char **text, char **err) {
    if (!text) return dsi_seterr(err, DSI_EINVAL, "chat: bad arguments");
    *text = NULL;
    struct buf b = {0};
    int rc = render(t, f, msgs, n_msgs, tools_json, add_generation_prompt, &b, err);
    free(b.sp);
    if (rc) {
        free(b.p);
        return rc;
    }
    *text = b.p;
    return 0;
}

int dsi_chat_encode(const struct dsi_tokenizer *t, enum dsi_chat_format f, const struct dsi_chat_msg *msgs,
                    size_t n_msgs, const char *tools_json, bool add_generation_prompt, int32_t **ids,
                    size_t *n_ids, char **err) {
    if (!ids || !n_ids) return dsi_seterr(err, DSI_EINVAL, "chat: bad arguments");
    *ids = NULL;
    *n_ids = 0;
    struct buf b = {0};
    int rc = render(t, f, msgs, n_msgs, tools_json, add_generation_prompt, &b, err);
    if (!rc) {
        /* Turn and tool-call markers that the vocabularies do not flag special
         * (DeepSeek's <｜User｜>, <｜tool▁calls▁begin｜>, Qwen's <tool_call>): in
         * content they would still open a turn or a call. */
        static const char *const DENY[] = {
            "<｜User｜>", "<｜Assistant｜>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>",
            "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁outputs▁begin｜>",
            "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>",
            "<｜tool▁sep｜>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"};
        int32_t deny[sizeof DENY / sizeof DENY[0]];
        for (size_t i = 0; i < sizeof DENY / sizeof DENY[0]; i++) deny[i] = dsi_tok_lookup(t, DENY[i]);
        rc = dsi__tok_encode_spans(t, b.p, b.n, b.sp, b.n_sp, deny, sizeof deny / sizeof deny[0], ids, n_ids, err);
    }
    free(b.sp);
    free(b.p);
    return rc;
}
