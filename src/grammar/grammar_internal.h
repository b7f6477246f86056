/*
 * grammar_internal.h: the compiled grammar and the matcher state, shared by the
 * files of src/grammar (schema.c compiles, match.c steps, mask.c walks the trie).
 *
 * A grammar is an array of nodes. Each node is one kind of JSON value; objects
 * list their properties (keys pre-escaped as they appear in compact JSON, in
 * schema order), arrays name their item node, literal nodes (enum, const, true,
 * false, null) hold the compact serialisations of their values sorted bytewise,
 * so the values sharing a prefix are a contiguous range. anyOf nodes list their
 * alternatives; a $ref is an anyOf of one.
 *
 * Invariants after compile:
 *   - need[i] (frames a value of node i pushes at most on its shortest way to
 *     completion) is <= DSI__G_STACK_CAP - 1 for the root, and every node reachable
 *     through a required path is satisfiable: a matcher never reaches a state it
 *     cannot complete;
 *   - anyOf edges form no cycle, so expanding alternatives terminates;
 *   - frames are fully initialised (no padding), so states compare with memcmp.
 */
#ifndef DSI_GRAMMAR_INTERNAL_H
#define DSI_GRAMMAR_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dsinfer/grammar.h"

#define DSI__G_STACK_CAP (DSI_GRAMMAR_MAX_DEPTH + 2) /* root frame + containers + a leaf */
#define DSI__G_MAX_ALT 8                              /* stacks alive at once (anyOf) */
#define DSI__G_NEED_INF 255
#define DSI__G_UNBOUNDED UINT32_MAX

enum dsi__gnode_kind {
    DSI__GN_OBJECT,  /* props[first, first + n); any_keys: any keys, values of node item */
    DSI__GN_ARRAY,   /* items node item, min..max items */
    DSI__GN_STRING,  /* min..max code points */
    DSI__GN_NUMBER,
    DSI__GN_INTEGER,
    DSI__GN_LIT,     /* lits[first, first + n), sorted */
    DSI__GN_ANYOF,   /* alts[first, first + n) */
    DSI__GN_SEQ,     /* alts[first, first + n): parts matched one after the other (a raw
                        prefix LIT, then a value: dsi_grammar_compile_prefixed) */
    DSI__GN_REP,     /* min..max values of node item, each but the first after the raw LIT
                        alts[first], then the raw LIT alts[first + 1] (n = 2):
                        dsi_grammar_compile_repeated */
};

struct dsi__gnode {
    uint8_t kind;     /* enum dsi__gnode_kind */
    uint8_t need;     /* see the invariants; DSI__G_NEED_INF: unsatisfiable */
    bool any_keys;    /* object: keys are any strings (json_object) */
    uint32_t first, n;
    int32_t item;     /* array items / any-keys object values / repeated values */
    uint32_t min, max; /* array or repeated items, or string code points; max DSI__G_UNBOUNDED: none */
};

struct dsi__gprop {
    char *key;        /* escaped as in compact JSON, without the quotes; malloc'd */
    uint32_t key_len;
    int32_t node;
    bool required;
};

struct dsi__glit {
    char *s;          /* compact JSON of the value; malloc'd */
    uint32_t len;
};

struct dsi_grammar {
    struct dsi__gnode *nodes;
    uint32_t n_nodes, cap_nodes;
    struct dsi__gprop *props;
    uint32_t n_props, cap_props;
    struct dsi__glit *lits;
    uint32_t n_lits, cap_lits;
    int32_t *alts;
    uint32_t n_alts, cap_alts;
    int32_t root;
    int32_t any_str;  /* the unconstrained string node (keys of any-keys objects); -1: none */
};

/* Matcher frames. */
enum dsi__gframe_kind { DSI__FR_ROOT, DSI__FR_OBJ, DSI__FR_ARR, DSI__FR_STR, DSI__FR_NUM, DSI__FR_LIT, DSI__FR_SEQ, DSI__FR_REP };

struct dsi__gframe {
    uint16_t node;
    uint8_t kind;     /* enum dsi__gframe_kind */
    uint8_t phase;    /* per kind, see match.c */
    uint32_t a;       /* obj: next property | key pos << 16; arr: items so far; str: code points;
                         num: digits of the current part; lit: lo | hi << 16; seq: parts begun;
                         rep: values begun */
    uint64_t b;       /* obj: key candidates (bit per property from 0) or the property
                         whose value comes; str: UTF-8 continuation (need | lo << 8 | hi << 16);
                         lit: bytes matched */
};

struct dsi__gstack {
    uint32_t depth;
    struct dsi__gframe f[DSI__G_STACK_CAP];
};

struct dsi__gstate {
    uint32_t n;       /* live stacks; 0: rejected */
    struct dsi__gstack s[DSI__G_MAX_ALT];
};

/* match.c */
/* The state before any byte: one stack holding the root frame. */
void dsi__gstate_init(const struct dsi_grammar *g, struct dsi__gstate *st);
/* out = in after byte c (out->n == 0: rejected). in and out must differ. */
void dsi__gstate_step(const struct dsi_grammar *g, const struct dsi__gstate *in, uint8_t c,
                      struct dsi__gstate *out);
void dsi__gstate_copy(struct dsi__gstate *dst, const struct dsi__gstate *src);
bool dsi__gstate_complete(const struct dsi_grammar *g, const struct dsi__gstate *st);
bool dsi__gstate_finished(const struct dsi_grammar *g, const struct dsi__gstate *st);
/* True when st is one stack inside a string with no escape or UTF-8 sequence
 * pending; *left: code points the string may still take (UINT32_MAX: unbounded). */
bool dsi__gstate_in_string(const struct dsi_grammar *g, const struct dsi__gstate *st, uint32_t *left);
/* Serialises st into buf (at least sizeof(struct dsi__gstate) bytes); returns the length. */
size_t dsi__gstate_key(const struct dsi__gstate *st, unsigned char *buf);

#endif
