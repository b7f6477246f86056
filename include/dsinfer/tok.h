/*
 * tok.h: byte-level BPE tokenizer from HF tokenizer.json, streaming decoder and
 * native DeepSeek chat formats.
 *
 * Owner: src/tok.
 */
#ifndef DSINFER_TOK_H
#define DSINFER_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dsi_tokenizer;

/* Loads DIR/tokenizer.json and DIR/tokenizer_config.json. */
int dsi_tok_load(const char *dir, struct dsi_tokenizer **out, char **err);
/* From memory (fuzzing, tests); config_json may be NULL. */
int dsi_tok_load_mem(const char *tokenizer_json, size_t len, const char *config_json, size_t config_len,
                     struct dsi_tokenizer **out, char **err);
/* The tokenizer of an open model: from its decrypted files when it is
 * encrypted at rest, else as dsi_tok_load(m->dir). */
struct dsi_model;
int dsi_tok_load_model(const struct dsi_model *m, struct dsi_tokenizer **out, char **err);
void dsi_tok_free(struct dsi_tokenizer *t);

int dsi_tok_vocab_size(const struct dsi_tokenizer *t);
int32_t dsi_tok_bos(const struct dsi_tokenizer *t); /* -1 if none */
int32_t dsi_tok_eos(const struct dsi_tokenizer *t); /* -1 if none */
/* Token id of an exact token string (special or not), or -1. */
int32_t dsi_tok_lookup(const struct dsi_tokenizer *t, const char *token);
/* The bytes token id decodes to (*bytes borrowed from t, not NUL-terminated) and
 * whether it is an added token (special or not). Returns 0, or DSI_ERANGE when id
 * is outside the vocabulary or has no token. */
int dsi_tok_token_bytes(const struct dsi_tokenizer *t, int32_t id, const char **bytes, size_t *len,
                        bool *is_added);

/* Encodes UTF-8 text (invalid UTF-8 is DSI_EINVAL) exactly as HF tokenizers'
 * encode(text, add_special_tokens=False): no BOS is added. Added tokens written in the
 * text are matched as whole tokens first (longest match). With allow_special false,
 * tokens flagged "special" (BOS/EOS, <|im_start|>) stay plain text, as HF's
 * split_special_tokens does; added tokens that are not special (DeepSeek's
 * <｜User｜>, Qwen's <think>) are still matched, as in HF. *ids is malloc'd (NULL
 * when empty or on error); the caller frees it. Thread-safe on one tokenizer. */
int dsi_tok_encode(const struct dsi_tokenizer *t, const char *text, size_t len, bool allow_special,
                   int32_t **ids, size_t *n_ids, char **err);
/* A plain-text prompt (a completion, `generate --prompt`): encoded with special
 * tokens as text (allow_special false), and the tokenizer's BOS in front when
 * add_bos is set and the tokenizer has one. The one place BOS is added to text. */
int dsi_tok_encode_prompt(const struct dsi_tokenizer *t, const char *text, size_t len, bool add_bos, int32_t **ids,
                          size_t *n_ids, char **err);
/* Decodes ids to text (malloc'd, NUL-terminated) as HF decode does: bytes of all
 * tokens joined, invalid UTF-8 replaced by U+FFFD. skip_special drops special tokens.
 * An id outside the vocabulary is DSI_ERANGE. */
int dsi_tok_decode(const struct dsi_tokenizer *t, const int32_t *ids, size_t n_ids, bool skip_special,
                   char **text, size_t *len, char **err);

/* Streaming decoder: push ids one at a time, get back only complete UTF-8. */
struct dsi_tok_stream;
int dsi_tok_stream_create(const struct dsi_tokenizer *t, bool skip_special, struct dsi_tok_stream **out);
/* Appends the text that became complete with `id` to *out (malloc'd or NULL when none).
 * An id the tokenizer lacks (a head's padding rows) adds nothing; a negative one is DSI_ERANGE. */
int dsi_tok_stream_push(struct dsi_tok_stream *s, int32_t id, char **out, size_t *out_len);
/* Flushes what is left (incomplete UTF-8 becomes U+FFFD). */
int dsi_tok_stream_flush(struct dsi_tok_stream *s, char **out, size_t *out_len);
void dsi_tok_stream_destroy(struct dsi_tok_stream *s);

/* The token ids that end a generation, the one stop set `serve` and `generate`
 * share: the tokenizer's EOS, the model's own EOS ids (`model_eos`, from
 * config.json; may be NULL), and the end-of-turn token of every chat format this
 * module renders (<|im_end|>, <｜end▁of▁sentence｜>, <|EOT|>, ...) that the
 * vocabulary has. t may be NULL (ids-only runs: model_eos alone). Writes at most
 * cap distinct ids, negative ids skipped, in that order; returns how many. */
int dsi_tok_stop_ids(const struct dsi_tokenizer *t, const int32_t *model_eos, int n_model_eos, int32_t *out,
                     int cap);

/* Chat formats. */
enum dsi_chat_format {
    DSI_CHAT_AUTO,        /* pick from tokenizer_config.json chat_template */
    DSI_CHAT_DEEPSEEK_V3, /* DeepSeek-V3/R1 and R1-Distill */
    DSI_CHAT_DEEPSEEK_LLM,
    DSI_CHAT_DEEPSEEK_CODER,
    DSI_CHAT_CHATML,      /* Qwen2 family and demo model */
};
/* One call of an assistant turn (OpenAI tool_calls[i]). */
struct dsi_chat_tool_call {
    const char *id;        /* may be NULL; no format renders it */
    const char *name;
    const char *arguments; /* JSON text exactly as the client sent it */
};
struct dsi_chat_msg {
    const char *role;     /* "system" | "developer" | "user" | "assistant" | "tool" */
    const char *content;  /* NULL only for an assistant turn with tool calls (content null) */
    const struct dsi_chat_tool_call *tool_calls; /* assistant: n_tool_calls calls */
    size_t n_tool_calls;
    const char *tool_call_id; /* role "tool": the call answered (no format renders it) */
};
int dsi_chat_format_parse(const char *name, enum dsi_chat_format *out);
const char *dsi_chat_format_name(enum dsi_chat_format f);
/* The format tokenizer_config.json implies (DSI_CHAT_AUTO resolved). */
enum dsi_chat_format dsi_tok_chat_format(const struct dsi_tokenizer *t);
/* True when the format starts assistant turns inside <think> (R1 reasoning models). */
bool dsi_chat_is_reasoning(const struct dsi_tokenizer *t, enum dsi_chat_format f);
/* Renders messages to prompt text (BOS included as text when the format has one).
 * tools_json: NULL, or the request's tools array as JSON text ([{"type":"function",
 * "function":{...}}], as OpenAI's API and HF's apply_chat_template take it); the
 * formats with a native tool syntax render it, calls and results as their HF
 * template does (DeepSeek-V3: <｜tool▁calls▁begin｜>...; its template has no place
 * for the tool list. ChatML: Qwen's <tools>, <tool_call>, <tool_response>). The
 * DeepSeek LLM and Coder formats have none: there "tool" messages and tool calls
 * are DSI_EINVAL (the server rewrites them into text first, docs/api.md).
 * *text is malloc'd. For display and tests only: to get ids, use dsi_chat_encode
 * (encoding this text with allow_special would let content inject special tokens). */
int dsi_chat_render(const struct dsi_tokenizer *t, enum dsi_chat_format f, const struct dsi_chat_msg *msgs,
                    size_t n_msgs, const char *tools_json, bool add_generation_prompt, char **text, char **err);
/* True when format f (resolved for t) has a native tool-call syntax. */
bool dsi_chat_has_tool_syntax(const struct dsi_tokenizer *t, enum dsi_chat_format f);
/* Renders and encodes messages: the template's own text with its special tokens,
 * each message's content (and tool names, arguments and the tools list) as plain
 * text (special tokens, DeepSeek's turn markers and the tool-call markers of
 * both native syntaxes written in it stay text, as HF's split_special_tokens=True
 * does for specials). Without such text in the content the ids equal those of
 * dsi_chat_render + dsi_tok_encode(allow_special). *ids is malloc'd. */
int dsi_chat_encode(const struct dsi_tokenizer *t, enum dsi_chat_format f, const struct dsi_chat_msg *msgs,
                    size_t n_msgs, const char *tools_json, bool add_generation_prompt, int32_t **ids,
                    size_t *n_ids, char **err);

#endif
