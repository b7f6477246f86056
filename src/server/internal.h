/*
 * internal.h: declarations shared by the files of src/server (never included
 * outside it). Pure pieces (request parser, text post-processing, JSON output,
 * metrics) have no libmicrohttpd or engine dependency so that unit tests and the
 * fuzz target link them alone.
 */
#ifndef DSI_SERVER_INTERNAL_H
#define DSI_SERVER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dsinfer/fileio.h"
#include "dsinfer/utf8.h"
#include "dsinfer/engine.h"

/* ---- API errors (apierr.c) -------------------------------------------- */

/* One OpenAI error: {"error":{"message","type","param","code"}} + HTTP status. */
struct dsi__api_error {
    int status;
    char message[256];
    const char *type;  /* static: "invalid_request_error", ... */
    char param[64];    /* "" -> null */
    const char *code;  /* static or NULL -> null */
};

/* Fills e; the type follows from the status. Returns status. */
int dsi__api_error_set(struct dsi__api_error *e, int status, const char *param, const char *code,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The JSON body of e (malloc'd, NUL-terminated), NULL when out of memory. */
char *dsi__api_error_json(const struct dsi__api_error *e);
/* The end of a stream that failed after its status line: the SSE event
 * `data: {"error":{...}}` then `data: [DONE]`, written into buf without
 * allocating (so it works out of memory too). Returns its length; when the
 * escaped text does not fit in cap, a generic error event is written instead
 * (ours always fit in 1024 bytes: messages are at most 255, mostly ASCII). */
size_t dsi__api_error_sse(const struct dsi__api_error *e, char *buf, size_t cap);

/* ---- request parsing (request.c) ----------------------------------------- */

enum dsi__req_kind { DSI__REQ_CHAT, DSI__REQ_COMPLETION, DSI__REQ_TOKENIZE, DSI__REQ_DETOKENIZE };

#define DSI__MAX_STOPS 4
#define DSI__MAX_STOP_BYTES 256
#define DSI__MAX_CACHE_SALT_BYTES 256

/* One call of an assistant message, as the client sent it (tools.c). */
struct dsi__call {
    char *id;        /* NULL when absent */
    char *name;
    char *arguments; /* the client's JSON string, unchanged */
};

struct dsi__msg {
    char *role;    /* "system" | "user" | "assistant" | "tool" ("developer" becomes "system") */
    char *content; /* text parts joined ("" when null) */
    bool content_null;      /* content was null or absent (an assistant message with calls) */
    struct dsi__call *calls; /* assistant: its tool_calls; NULL: none */
    size_t n_calls;
    char *tool_call_id; /* role "tool": the call it answers */
};

enum dsi__tool_choice { DSI__TOOL_CHOICE_NONE, DSI__TOOL_CHOICE_AUTO, DSI__TOOL_CHOICE_REQUIRED, DSI__TOOL_CHOICE_NAMED };

struct dsi__req_limits {
    size_t max_body_bytes;
    int max_messages;
    int max_prompt_ids;  /* ids accepted in prompt / detokenize arrays */
    int max_n;           /* choices (n) at most; 0: DSI_MAX_N */
};

struct dsi__req {
    enum dsi__req_kind kind;
    char *model;                /* NULL when absent */
    struct dsi__msg *msgs;      /* chat (and tokenize with messages) */
    size_t n_msgs;
    char *prompt;               /* completion / tokenize text; NULL when ids were given */
    int32_t *ids;               /* completion prompt ids, detokenize tokens */
    size_t n_ids;
    bool stream, include_usage;
    int max_tokens;             /* -1: not given */
    struct dsi_sampling sampling; /* defaults: temperature 1, top_p 1 (OpenAI's) */
    bool seed_set;
    bool ignore_eos;            /* vLLM extension: no stop ids (benchmarks, tests) */
    char *stops[DSI__MAX_STOPS];
    int n_stops;
    int n;
    char *user;
    char *cache_salt;           /* vLLM's field: narrows prefix cache sharing to equal salts; NULL: none */
    bool add_special;           /* tokenize: add BOS (default true) */
    bool add_generation_prompt; /* tokenize with messages (default true) */
    bool echo;                  /* completions echo: refused */
    struct dsi_grammar *grammar; /* response_format json_object/json_schema, or forced tool calls */
    char *tools_json;           /* tools as JSON [{"name","description","parameters"}]; NULL: none */
    char *tools_raw;            /* the request's tools array as sent (native renderings); NULL: none */
    enum dsi__tool_choice tool_choice;
    bool parallel_tool_calls;   /* default true */
    char *tool_named;           /* tool_choice naming a function: its name; NULL: none */
    char *prefill;              /* text the answer starts with, put after the prompt (template
                                   text, special tokens allowed): a forced call's native opening */
};

/* Parses and validates a request body of the given kind into out (zeroed first).
 * Returns 0, or an HTTP status (400/413) with e filled. Never crashes on any
 * input; free out with dsi__srv_req_free whatever the result. */
int dsi__srv_req_parse(enum dsi__req_kind kind, const char *body, size_t len,
                   const struct dsi__req_limits *lim, struct dsi__req *out, struct dsi__api_error *e);
void dsi__srv_req_free(struct dsi__req *r);

/* reqfmt.c: structured output. cJSON objects of the parsed body. */
struct cJSON;
struct dsi_grammar;
/* response_format of root -> r->grammar (left NULL for "text" or none). 0 or a status. */
int dsi__srv_parse_response_format(const struct cJSON *root, struct dsi__req *r, struct dsi__api_error *e);
/* tools.c: function calling. tools, tool_choice, parallel_tool_calls of root
 * (chat), after response_format. 0 or a status. */
int dsi__srv_parse_tools(const struct cJSON *root, struct dsi__req *r, struct dsi__api_error *e);
/* A message's tool_calls (assistant) or tool_call_id (role tool). */
int dsi__srv_parse_msg_tools(const struct cJSON *m, size_t i, struct dsi__msg *out, struct dsi__api_error *e);
/* The native syntax of tool calls in a model's answer (toolscan.c). */
enum dsi__tool_syntax {
    DSI__TOOLS_TAGS,     /* <tool_call>{"name","arguments"}</tool_call> (ChatML, prompt form) */
    DSI__TOOLS_DEEPSEEK, /* DeepSeek-V3's <｜tool▁call▁begin｜>...<｜tool▁call▁end｜> */
};

/* How the chat format takes tools (http.c picks it from the format). */
enum dsi__tools_prompt {
    DSI__TP_TEXT,        /* no native syntax: everything rewritten into text (prompt form) */
    DSI__TP_NATIVE,      /* the renderer writes tools, calls and results (ChatML) */
    DSI__TP_NATIVE_LIST, /* native calls and results, but the template has no tool list:
                            it goes into the system message (DeepSeek-V3) */
};
/* Prepares r->msgs for the format (r->msgs must have room for one more
 * message): DSI__TP_TEXT rewrites calls and results into the prompt form and
 * adds the tool list; DSI__TP_NATIVE_LIST adds the tool list only. 0 or a status. */
int dsi__srv_tools_prompt(struct dsi__req *r, enum dsi__tools_prompt how, struct dsi__api_error *e);
/* tool_choice required or named in a format with a native syntax: replaces the
 * bare-JSON grammar of dsi__srv_parse_tools by calls in that syntax and sets
 * r->prefill to the first call's opening (<tool_call>\n, or V3's call tokens up to
 * the name). The grammar writes the rest up to the end of the run of calls: 1 to
 * DSI__MAX_PARALLEL_CALLS calls with parallel_tool_calls, else (and for a named
 * function) one. tok: the model's tokenizer, whose added tokens the markers are
 * (NULL: the markers as text). No-op for other tool choices. 0 or a status. */
struct dsi_tokenizer;
int dsi__srv_tools_native(struct dsi__req *r, enum dsi__tool_syntax syn, const struct dsi_tokenizer *tok,
                          struct dsi__api_error *e);
/* The model's whole answer -> OpenAI tool_calls JSON array in calls (reset
 * first): forced: the answer is the constrained JSON (a call or an array of
 * calls); else the calls of syntax syn are looked for (toolscan.c). *n_calls 0:
 * no call (the answer is text); *content_len: the length of the text before the
 * first call. Ids are call_<id_prefix>_<i>; with_index adds "index" (stream
 * deltas). 0 or -1 (memory). */
struct dsi__sbuf;
int dsi__srv_tool_calls_extract(const char *text, size_t n, bool forced, enum dsi__tool_syntax syn,
                                const char *id_prefix, bool with_index, struct dsi__sbuf *calls, int *n_calls,
                                size_t *content_len);
/* Appends one OpenAI tool_calls entry for call i ("," first when comma: it follows
 * another entry of the same array). 0 or -1. */
int dsi__srv_tool_call_json(struct dsi__sbuf *b, const char *id_prefix, int i, bool comma, bool with_index,
                            const char *name, const char *arguments);
/* Compiles a JSON Schema object; a 400 on param names what it cannot enforce. */
int dsi__srv_compile_schema(const struct cJSON *schema, const char *param, struct dsi_grammar **out,
                            struct dsi__api_error *e);
/* True if s[0..n) is well-formed UTF-8 (no overlongs, surrogates, > U+10FFFF). */
/* Length of the longest prefix of s[0..n) that does not end inside a UTF-8
 * sequence (text held back so that SSE chunks stay valid UTF-8). */
size_t dsi__srv_utf8_complete_prefix(const char *s, size_t n);

/* ---- text post-processing: reasoning split + stop strings (textgen.c) ---- */

enum dsi__channel { DSI__CH_CONTENT, DSI__CH_REASONING };

typedef int (*dsi__emit_fn)(void *user, enum dsi__channel ch, const char *s, size_t n);

struct dsi__textgen {
    const char *const *stops; /* borrowed */
    int n_stops;
    bool in_reasoning;        /* text goes to reasoning until </think> */
    bool at_start;            /* nothing emitted on the current channel yet */
    bool after_think;         /* content follows a </think>: its leading blank lines go */
    bool stopped;             /* a stop string matched; later text is dropped */
    char *hold;               /* text held back: maybe a stop or tag prefix */
    size_t hold_len, hold_cap;
};

void dsi__textgen_init(struct dsi__textgen *t, const char *const *stops, int n_stops, bool reasoning);
/* Feeds decoded text. Emits what can no longer become part of a stop string or
 * the </think> tag. Returns 1 when a stop string matched (t->stopped), 0, or a
 * negative DSI_E* (out of memory or an emit error). */
int dsi__textgen_push(struct dsi__textgen *t, const char *s, size_t n, dsi__emit_fn emit, void *user);
/* End of generation: emits what is held back (unless stopped). */
int dsi__textgen_finish(struct dsi__textgen *t, dsi__emit_fn emit, void *user);
void dsi__textgen_free(struct dsi__textgen *t);

/* ---- growable byte buffer (buf.c) ---------------------------------------- */

struct dsi__sbuf {
    char *p;
    size_t len, cap;
};
int dsi__sbuf_append(struct dsi__sbuf *b, const void *s, size_t n);
int dsi__sbuf_printf(struct dsi__sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal with quotes (escapes per RFC 8259); a
 * broken UTF-8 sequence becomes U+FFFD. */
int dsi__sbuf_json_str(struct dsi__sbuf *b, const char *s, size_t n);
/* Writes s[0..n) as JSON string content (no quotes) at o, escaped as
 * dsi__sbuf_json_str does except that a byte that starts no valid UTF-8
 * sequence becomes `bad` (at most 6 bytes). The caller provides room for 6
 * bytes per input byte. Returns the bytes written; no NUL is added. */
size_t dsi__json_escape_into(char *o, const char *s, size_t n, const char *bad);
void dsi__sbuf_free(struct dsi__sbuf *b);

/* ---- tool calls in a streamed answer, tool_choice auto (toolscan.c) ---- */
struct dsi__toolscan {
    enum dsi__tool_syntax syn;
    bool in_calls;         /* a call opened: no more text before the calls */
    bool after_call;       /* nothing emitted since the last call (its blanks go) */
    struct dsi__sbuf hold; /* text not handed over yet */
};
/* Where scanned text goes: content (text of the answer) or a call (name and
 * arguments as compact JSON, NUL-terminated, borrowed). Nonzero stops the scan. */
struct dsi__toolscan_cb {
    int (*content)(void *user, const char *s, size_t n);
    int (*call)(void *user, const char *name, const char *arguments);
    void *user;
};
void dsi__toolscan_init(struct dsi__toolscan *ts, enum dsi__tool_syntax syn);
/* Feeds decoded text; hands over what is decided. 0, -1 (memory) or cb's error. */
int dsi__toolscan_push(struct dsi__toolscan *ts, const char *s, size_t n, const struct dsi__toolscan_cb *cb);
/* End of the answer: what is held goes out (a cut-off call as text). */
int dsi__toolscan_finish(struct dsi__toolscan *ts, const struct dsi__toolscan_cb *cb);
void dsi__toolscan_free(struct dsi__toolscan *ts);

/* ---- metrics (metrics.c) --------------------------------------------------- */

enum dsi__route {
    DSI__R_CHAT, DSI__R_CHAT_DS, DSI__R_COMPLETIONS, DSI__R_MODELS, DSI__R_TOKENIZE, DSI__R_DETOKENIZE,
    DSI__R_LIVE, DSI__R_READY, DSI__R_METRICS, DSI__R_OTHER, DSI__R__COUNT
};
const char *dsi__route_name(enum dsi__route r);

struct dsi__smetrics;
int dsi__smetrics_create(struct dsi__smetrics **out);
void dsi__smetrics_destroy(struct dsi__smetrics *m);
void dsi__smetrics_request(struct dsi__smetrics *m, enum dsi__route r, int status);
void dsi__smetrics_tokens(struct dsi__smetrics *m, int prompt, int completion);
void dsi__smetrics_ttft(struct dsi__smetrics *m, double seconds);
void dsi__smetrics_itl(struct dsi__smetrics *m, double seconds);
/* Stream output held for clients: delta bytes added (negative: sent or freed). */
void dsi__smetrics_stream_buffered(struct dsi__smetrics *m, int64_t delta);
/* A stream ended because its client did not read (stream_buffer_bytes). */
void dsi__smetrics_stream_backpressure(struct dsi__smetrics *m);
/* A generation ended by gen_fail with this status (500, or 503 for timeout/shutdown). */
void dsi__smetrics_gen_failed(struct dsi__smetrics *m, int status);
/* Prometheus text (malloc'd) including the engine gauges given. */
char *dsi__smetrics_render(struct dsi__smetrics *m, const struct dsi_engine_stats *st, int state_ready);

/* ---- TLS material (tls.c) -------------------------------------------------- */

/* Reads cert/key PEM files, or (both empty) loads or creates state_dir/tls-cert.pem
 * + tls-key.pem (ECDSA P-256, CN=localhost, SAN localhost + 127.0.0.1, key 0600).
 * *cert_pem, *key_pem are malloc'd; fingerprint gets "AA:BB:..." (SHA-256). */
int dsi__tls_material(const char *cert_file, const char *key_file, const char *state_dir, char **cert_pem,
                      char **key_pem, char fingerprint[96 + 1], char **err);
/* Reads a whole file (NUL-terminated, malloc'd). */

/* ---- misc ------------------------------------------------------------------ */

/* True for 127.0.0.0/8, ::1 and "localhost". host is the part before the port. */
bool dsi__host_is_loopback(const char *host);
/* Splits "ADDR:PORT" / "[v6]:PORT" into host (no brackets) and port. */
int dsi__split_listen(const char *listen, char *host, size_t host_cap, int *port);

#endif
