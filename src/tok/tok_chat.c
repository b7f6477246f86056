/*
 * tok_chat.c: chat prompt formats rendered natively (no Jinja engine).
 *
 * Each format reproduces, byte for byte, what HF transformers' apply_chat_template
 * makes from the model's own template for system/user/assistant messages (tool calls
 * are not rendered; a "tool" role is refused). tests/golden/tok/chat_*.json hold the
 * HF renderings the tests compare against. The format is picked from
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

static void render_v3(const struct dsi_tokenizer *t, const struct dsi_chat_msg *m, size_t n, bool gen, struct buf *b) {
    /* R1 rules only when the model's own template is a V3-family one that has them. */
    bool v3 = t->chat_format == DSI_CHAT_DEEPSEEK_V3;
    bool strip = v3 && t->chat_r1_strip_think, think = v3 && t->chat_gen_think;
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
            put(b, "<｜User｜>");
            put_content(b, m[i].content);
        } else if (is_role(&m[i], "assistant")) {
            const char *c = m[i].content, *e = strip ? find_last(c, "</think>") : NULL;
            if (e) c = e + strlen("</think>");
            put(b, "<｜Assistant｜>");
            put_content(b, c);
            put(b, "<｜end▁of▁sentence｜>");
        }
    }
    if (gen) put(b, think ? "<｜Assistant｜><think>\n" : "<｜Assistant｜>");
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

/* Qwen3's assistant turn: reasoning and answer split at </think>. */
static void qwen3_assistant(const char *c, bool with_think, struct buf *b) {
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
    put(b, "<|im_start|>assistant\n");
    if (with_think) {
        strip_nl(&rs, &re, true, true);
        put(b, "<think>\n");
        put_content_n(b, rs, (size_t)(re - rs));
        put(b, "\n</think>\n\n");
        strip_nl(&ans, &ans_end, true, false);
    }
    put_content_n(b, ans, (size_t)(ans_end - ans));
    (void)close;
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

static void render_chatml(const struct dsi_tokenizer *t, const struct dsi_chat_msg *m, size_t n, bool gen,
                          struct buf *b) {
    bool q3 = t->chat_format == DSI_CHAT_CHATML && t->chat_qwen3_think;
    size_t last_query = n ? n - 1 : 0;
    if (q3)
        for (size_t i = n; i-- > 0;)
            if (is_role(&m[i], "user") && !is_tool_response(m[i].content)) {
                last_query = i;
                break;
            }
    for (size_t i = 0; i < n; i++) {
        if (q3 && is_role(&m[i], "assistant")) {
            bool after = i > last_query;
            bool with_think = after && (i == n - 1 || qwen3_has_reasoning(m[i].content));
            qwen3_assistant(m[i].content, with_think, b);
            put(b, "<|im_end|>\n");
            continue;
        }
        put(b, "<|im_start|>");
        put(b, is_role(&m[i], "system") ? "system" : m[i].role);
        put(b, "\n");
        put_content(b, m[i].content);
        put(b, "<|im_end|>\n");
    }
    if (gen) put(b, "<|im_start|>assistant\n");
}

/* Renders into b (spans included); b->rc or the return value says why not. */
static int render(const struct dsi_tokenizer *t, enum dsi_chat_format f, const struct dsi_chat_msg *msgs,
                  size_t n_msgs, bool add_generation_prompt, struct buf *b, char **err) {
    if (!t || (!msgs && n_msgs)) return dsi_seterr(err, DSI_EINVAL, "chat: bad arguments");
    for (size_t i = 0; i < n_msgs; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return dsi_seterr(err, DSI_EINVAL, "chat: message %zu has no role or content", i);
        if (!is_role(&msgs[i], "system") && !is_role(&msgs[i], "user") && !is_role(&msgs[i], "assistant"))
            return dsi_seterr(err, DSI_EINVAL, "chat: message %zu has role \"%.20s\" (want system, developer, user or assistant)",
                              i, msgs[i].role);
    }
    switch (resolve(t, f)) {
    case DSI_CHAT_DEEPSEEK_V3:
        render_v3(t, msgs, n_msgs, add_generation_prompt, b);
        break;
    case DSI_CHAT_DEEPSEEK_LLM:
        render_llm(t, msgs, n_msgs, add_generation_prompt, b);
        break;
    case DSI_CHAT_DEEPSEEK_CODER:
        render_coder(t, msgs, n_msgs, add_generation_prompt, b);
        break;
    case DSI_CHAT_CHATML:
        render_chatml(t, msgs, n_msgs, add_generation_prompt, b);
        break;
    default:
        return dsi_seterr(err, DSI_EINVAL, "chat: unknown format %d", (int)f);
    }
    if (!b->p && !b->rc) {
        b->p = calloc(1, 1); /* empty output still gets a buffer */
        if (!b->p) b->rc = DSI_ENOMEM;
    }
    if (b->rc) return dsi_seterr(err, b->rc, "chat: out of memory");
    return 0;
}

int dsi_chat_render(const struct dsi_tokenizer *t, enum dsi_chat_format f, const struct dsi_chat_msg *msgs,
                    size_t n_msgs, bool add_generation_prompt, char **text, char **err) {
    if (!text) return dsi_seterr(err, DSI_EINVAL, "chat: bad arguments");
    *text = NULL;
    struct buf b = {0};
    int rc = render(t, f, msgs, n_msgs, add_generation_prompt, &b, err);
    free(b.sp);
    if (rc) {
        free(b.p);
        return rc;
    }
    *text = b.p;
    return 0;
}

int dsi_chat_encode(const struct dsi_tokenizer *t, enum dsi_chat_format f, const struct dsi_chat_msg *msgs,
                    size_t n_msgs, bool add_generation_prompt, int32_t **ids, size_t *n_ids, char **err) {
    if (!ids || !n_ids) return dsi_seterr(err, DSI_EINVAL, "chat: bad arguments");
    *ids = NULL;
    *n_ids = 0;
    struct buf b = {0};
    int rc = render(t, f, msgs, n_msgs, add_generation_prompt, &b, err);
    if (!rc) {
        /* Turn markers that some vocabularies do not flag special (DeepSeek's
         * <｜User｜>, <｜Assistant｜>): in content they would still open a turn. */
        int32_t deny[2] = {dsi_tok_lookup(t, "<｜User｜>"), dsi_tok_lookup(t, "<｜Assistant｜>")};
        rc = dsi__tok_encode_spans(t, b.p, b.n, b.sp, b.n_sp, deny, 2, ids, n_ids, err);
    }
    free(b.sp);
    free(b.p);
    return rc;
}
