/*
 * grammar.h: constrained decoding for JSON output (structured output, tool-call
 * arguments).
 *
 * A grammar is compiled once from a JSON Schema (the subset OpenAI's strict mode
 * accepts) or stands for "any JSON object". It is an immutable description that
 * many sequences share. A matcher is one sequence's position in it: a byte-level
 * pushdown automaton (a small set of stacks of schema frames plus lexer state), fed
 * the bytes of each sampled token. A token trie, built once per tokenizer, turns a
 * matcher's state into a mask over the vocabulary: the tokens whose bytes the
 * automaton accepts from that state.
 *
 * Output is compact JSON: no whitespace outside strings, object properties in the
 * schema's order, numbers of bounded length, strings bounded by maxLength when the
 * schema gives one. The compiler rejects schemas whose language is empty, so every
 * state a matcher reaches can still be completed (no dead ends).
 *
 * Owner: src/grammar.
 */
#ifndef DSINFER_GRAMMAR_H
#define DSINFER_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dsinfer/tok.h"

#define DSI_GRAMMAR_MAX_DEPTH 32     /* nesting of arrays/objects */
#define DSI_GRAMMAR_MAX_NODES 4096   /* schema nodes after $ref resolution */
#define DSI_GRAMMAR_MAX_PROPS 64     /* properties of one object */
#define DSI_GRAMMAR_MAX_ENUM 1024    /* values of one enum */
#define DSI_GRAMMAR_MAX_INT_DIGITS 16
#define DSI_GRAMMAR_MAX_FRAC_DIGITS 16
#define DSI_GRAMMAR_MAX_EXP_DIGITS 3
#define DSI_GRAMMAR_MAX_REPEAT 64    /* values of dsi_grammar_compile_repeated */

/* Raw text (the prefixes, separators and ends below) may name an added token
 * (a chat format's <｜tool▁call▁end｜>, which the model writes as one token): a
 * reference is DSI_GRAMMAR_TOKEN_REF_LEN bytes, 0xFF (never in UTF-8) then the id in
 * three 6-bit groups as bytes 0x80-0xBF, so it holds no NUL and no reference starts
 * inside another. The token trie keys each added token by its reference and leaves
 * out ordinary tokens holding a 0xFF byte (JSON values never take one), so exactly
 * that token matches a reference. */
#define DSI_GRAMMAR_TOKEN_REF_LEN 4
#define DSI_GRAMMAR_MAX_REF_ID ((1 << 18) - 1)

struct dsi_grammar;
struct dsi_grammar_matcher;
struct dsi_token_trie;

/* "Any JSON object" (response_format json_object). Returns 0 or DSI_ENOMEM. */
int dsi_grammar_json_object(struct dsi_grammar **out, char **err);
/* Compiles a JSON Schema given as JSON text. Returns 0; DSI_EINVAL with *err
 * naming the place and the problem ("properties.age: keyword 'minimum' is not
 * supported"), DSI_ERANGE when a limit above is exceeded, or DSI_ENOMEM. */
int dsi_grammar_compile(const char *schema_json, size_t len, struct dsi_grammar **out, char **err);
/* One alternative of dsi_grammar_compile_prefixed: raw bytes (not JSON; NULL or ""
 * for none), then a value of the schema (JSON text, NUL-terminated). */
struct dsi_grammar_alt {
    const char *prefix;
    const char *schema_json;
};
/* The union over alts (1 to 64) of prefix + value: a chat format's own tool-call
 * syntax around the arguments ("get_weather\n```json\n" then the parameters).
 * Values are compact JSON as above; only the first 8 alternatives that share a
 * prefix are followed at once (DSI__G_MAX_ALT, as for anyOf). Errors as
 * dsi_grammar_compile, the place named "alternative I". */
int dsi_grammar_compile_prefixed(const struct dsi_grammar_alt *alts, size_t n, struct dsi_grammar **out, char **err);
/* 1 to max_items (<= DSI_GRAMMAR_MAX_REPEAT) values of the alternatives above, each
 * but the first after the raw text sep, then the raw text end: a chat format's run
 * of tool calls (V3: ...<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>... between calls,
 * <｜tool▁calls▁end｜> at the end). Once end is whole the matcher is complete, and
 * finished unless end is a prefix of sep (ChatML's </tool_call> then "\n<tool_call>"
 * for another call: the end-of-sequence token or the separator decides). Errors as
 * dsi_grammar_compile_prefixed. */
int dsi_grammar_compile_repeated(const struct dsi_grammar_alt *alts, size_t n, const char *sep, const char *end,
                                 int max_items, struct dsi_grammar **out, char **err);
/* Writes the reference of token id into out (DSI_GRAMMAR_TOKEN_REF_LEN bytes, no
 * NUL). Returns 0, or DSI_ERANGE for an id outside 0..DSI_GRAMMAR_MAX_REF_ID. */
int dsi_grammar_token_ref(int32_t id, char *out);
/* Template text (special tokens written as text, as in a chat template) -> raw
 * text for the functions above (malloc'd, NUL-terminated, in *out): each added
 * token of t the text holds becomes its reference, the rest stays as it is.
 * Returns 0, DSI_EINVAL (text not valid UTF-8), DSI_ERANGE or DSI_ENOMEM. */
int dsi_grammar_raw_text(const struct dsi_tokenizer *t, const char *text, char **out, char **err);
/* Accepts NULL. A grammar must outlive its matchers. */
void dsi_grammar_destroy(struct dsi_grammar *g);

/* A matcher at the start of g. mask_cache_entries: masks kept by state (0: none). */
int dsi_grammar_matcher_create(const struct dsi_grammar *g, int mask_cache_entries,
                               struct dsi_grammar_matcher **out);
void dsi_grammar_matcher_destroy(struct dsi_grammar_matcher *m);
/* Feeds bytes; all or nothing: returns 0, or DSI_EINVAL (state unchanged) when the
 * bytes leave the grammar's language. */
int dsi_grammar_matcher_accept(struct dsi_grammar_matcher *m, const char *bytes, size_t n);
/* True when the bytes would be accepted; the state does not change (m's scratch
 * space is used, hence not const). */
bool dsi_grammar_matcher_check(struct dsi_grammar_matcher *m, const char *bytes, size_t n);
/* True when what was fed is a complete value (end of sequence may follow). */
bool dsi_grammar_matcher_complete(const struct dsi_grammar_matcher *m);
/* True when no byte can follow (a closed object or array at the top). */
bool dsi_grammar_matcher_finished(const struct dsi_grammar_matcher *m);

/* The trie of a tokenizer's vocabulary: ordinary tokens by their bytes (those
 * holding a 0xFF byte left out), added tokens, special or not, by their reference
 * (the grammar produces them only where raw text names them). t is borrowed and
 * must outlive the trie. Returns 0 or DSI_ENOMEM. */
int dsi_token_trie_create(const struct dsi_tokenizer *t, struct dsi_token_trie **out, char **err);
void dsi_token_trie_destroy(struct dsi_token_trie *tr);
/* Feeds token id's bytes, an added token's reference (all or nothing). Returns 0,
 * DSI_EINVAL when the grammar rejects them, DSI_ERANGE for an id without bytes in
 * the trie's tokenizer. */
int dsi_grammar_matcher_accept_token(struct dsi_grammar_matcher *m, const struct dsi_token_trie *tr, int32_t id);
/* Fills mask (ceil(n_vocab / 32) words, bit i of word i/32: token i) with the
 * tokens whose bytes the matcher accepts now. Tokens >= the trie's vocabulary are
 * cleared. Does not add end-of-sequence tokens: the caller allows those when
 * dsi_grammar_matcher_complete says so. Served from the matcher's cache when the
 * state was seen before. Returns the number of allowed tokens. */
int dsi_grammar_mask(struct dsi_grammar_matcher *m, const struct dsi_token_trie *tr, uint32_t *mask, int n_vocab);

#endif
