/*
 * match.c: the byte-level pushdown automaton over a compiled grammar.
 *
 * A state is a set of at most DSI__G_MAX_ALT stacks; each stack is one way of
 * reading the bytes so far. Only anyOf forks (when a value of an anyOf node
 * starts, every alternative whose depth need fits gets its own stack); stacks that
 * reject a byte die, equal stacks are merged. Dropping forks past the cap only
 * narrows the language, and every surviving stack can still complete (the need[]
 * check before every push, see grammar_internal.h), so no state is a dead end.
 *
 * Frames and their phases:
 *   ROOT  VALUE -> DONE once the top value started (DONE + no other frame: complete)
 *   OBJ   OPEN '{' | COMMA ',' | KEY (inside a declared key: candidate bitset in b,
 *         byte position in a >> 16) | COLON | VALUE | AFTER (a value ended).
 *         Declared properties come in schema order: the keys allowed next are those
 *         from the next property up to and including the next required one.
 *         Any-keys objects push a STR frame for the key instead.
 *   ARR   OPEN | COMMA | AFTER, items so far in a
 *   STR   CHAR | ESC | HEX1..HEX4; code points in a (counted only when the node has
 *         a length bound, so unbounded strings keep one state and hit the mask cache);
 *         UTF-8 continuation in b. \u escapes of surrogates (D800-DFFF) are refused:
 *         a lone one is invalid Unicode and pairs need not be produced this way.
 *   NUM   JSON number lexer, digits of the current part bounded (grammar.h)
 *   LIT   a range of the node's sorted literals sharing the first b bytes
 *   SEQ   the parts of a sequence node begun so far in a; the next byte after a
 *         part begins the next part, and pops the frame after the last one
 *   REP   ITEM (the next byte begins a value) | AFTER (a value ended: the next byte
 *         begins the end, and while fewer than max values were begun also the
 *         separator: two stacks) | END (the end begun; nothing follows it); values
 *         begun in a. The separator leaves the frame in ITEM.
 * NUM and LIT end when a byte does not extend them: the frame pops and the byte is
 * fed to the frame below.
 */
#include <string.h>

#include "grammar_internal.h"

enum { ROOT_VALUE, ROOT_DONE };
enum { OBJ_OPEN, OBJ_COMMA, OBJ_KEY, OBJ_COLON, OBJ_VALUE, OBJ_AFTER };
enum { ARR_OPEN, ARR_COMMA, ARR_AFTER };
enum { STR_CHAR, STR_ESC, STR_HEX1, STR_HEX2, STR_HEX3, STR_HEX4 };
enum { REP_ITEM, REP_AFTER, REP_END };
enum { NUM_START, NUM_MINUS, NUM_ZERO, NUM_INT, NUM_DOT, NUM_FRAC, NUM_E, NUM_ESIGN, NUM_EXP };

/* What a frame did with a byte. */
enum res { R_REJECT, R_ACCEPT, R_HANDLED /* committed (or not) by a value start */, R_POP_REFEED };

static void begin_value(const struct dsi_grammar *g, struct dsi__gstate *out, struct dsi__gstack *st,
                        int32_t node, uint8_t c);

static void stack_copy(struct dsi__gstack *dst, const struct dsi__gstack *src) {
    dst->depth = src->depth;
    memcpy(dst->f, src->f, src->depth * sizeof src->f[0]);
}

static bool stack_eq(const struct dsi__gstack *x, const struct dsi__gstack *y) {
    return x->depth == y->depth && !memcmp(x->f, y->f, x->depth * sizeof x->f[0]);
}

/* st is out->s[out->n]: keep it unless an equal stack is already there. */
static void commit(struct dsi__gstate *out, const struct dsi__gstack *st) {
    for (uint32_t i = 0; i < out->n; i++)
        if (stack_eq(&out->s[i], st)) return;
    out->n++;
}

static void push(struct dsi__gstack *st, int32_t node, uint8_t kind, uint8_t phase, uint32_t a, uint64_t b) {
    st->f[st->depth++] = (struct dsi__gframe){(uint16_t)node, kind, phase, a, b};
}

static bool fits(const struct dsi_grammar *g, const struct dsi__gstack *st, int32_t node) {
    return st->depth + g->nodes[node].need <= DSI__G_STACK_CAP;
}

/* Keys that may come next in a declared object: from property `next` up to the
 * next required one, those whose value still fits in the stack. */
static uint64_t key_candidates(const struct dsi_grammar *g, const struct dsi__gstack *st,
                               const struct dsi__gnode *n, uint32_t next) {
    uint64_t b = 0;
    for (uint32_t i = next; i < n->n; i++) {
        const struct dsi__gprop *p = &g->props[n->first + i];
        if (fits(g, st, p->node)) b |= 1ull << i;
        if (p->required) break;
    }
    return b;
}

static bool required_left(const struct dsi_grammar *g, const struct dsi__gnode *n, uint32_t next) {
    for (uint32_t i = next; i < n->n; i++)
        if (g->props[n->first + i].required) return true;
    return false;
}

static enum res obj_feed(const struct dsi_grammar *g, struct dsi__gstate *out, struct dsi__gstack *st,
                         struct dsi__gframe *f, uint8_t c) {
    const struct dsi__gnode *n = &g->nodes[f->node];
    uint32_t next = f->a & 0xffff;
    switch (f->phase) {
    case OBJ_OPEN:
    case OBJ_COMMA:
        if (c == '}' && f->phase == OBJ_OPEN && (n->any_keys || !required_left(g, n, next))) {
            st->depth--;
            return R_ACCEPT;
        }
        if (c != '"') return R_REJECT;
        if (n->any_keys) {
            if (st->depth + 1 > DSI__G_STACK_CAP || g->any_str < 0) return R_REJECT;
            f->phase = OBJ_COLON;
            push(st, g->any_str, DSI__FR_STR, STR_CHAR, 0, 0);
            return R_ACCEPT;
        }
        f->b = key_candidates(g, st, n, next);
        if (!f->b) return R_REJECT;
        f->phase = OBJ_KEY;
        f->a = next;
        return R_ACCEPT;
    case OBJ_KEY: {
        uint32_t pos = f->a >> 16;
        uint64_t nb = 0;
        for (uint32_t i = next; i < n->n; i++) {
            if (!(f->b >> i & 1)) continue;
            const struct dsi__gprop *p = &g->props[n->first + i];
            if (c == '"' && p->key_len == pos) {
                f->phase = OBJ_COLON;
                f->a = i + 1;
                f->b = i;
                return R_ACCEPT;
            }
            if (p->key_len > pos && (uint8_t)p->key[pos] == c) nb |= 1ull << i;
        }
        if (!nb) return R_REJECT;
        f->b = nb;
        f->a = next | (pos + 1) << 16;
        return R_ACCEPT;
    }
    case OBJ_COLON:
        if (c != ':') return R_REJECT;
        f->phase = OBJ_VALUE;
        return R_ACCEPT;
    case OBJ_VALUE:
        f->phase = OBJ_AFTER;
        begin_value(g, out, st, n->any_keys ? n->item : g->props[n->first + f->b].node, c);
        return R_HANDLED;
    case OBJ_AFTER:
        if (c == '}' && (n->any_keys || !required_left(g, n, next))) {
            st->depth--;
            return R_ACCEPT;
        }
        if (c != ',') return R_REJECT;
        if (n->any_keys ? st->depth + 1 > DSI__G_STACK_CAP : !key_candidates(g, st, n, next)) return R_REJECT;
        f->phase = OBJ_COMMA;
        return R_ACCEPT;
    }
    return R_REJECT;
}

static enum res arr_feed(const struct dsi_grammar *g, struct dsi__gstate *out, struct dsi__gstack *st,
                         struct dsi__gframe *f, uint8_t c) {
    const struct dsi__gnode *n = &g->nodes[f->node];
    switch (f->phase) {
    case ARR_OPEN:
        if (c == ']' && n->min == 0) {
            st->depth--;
            return R_ACCEPT;
        }
        /* otherwise the byte starts the first item */
        if (f->a >= n->max || !fits(g, st, n->item)) return R_REJECT;
        /* fall through */
    case ARR_COMMA:
        f->a++;
        f->phase = ARR_AFTER;
        begin_value(g, out, st, n->item, c);
        return R_HANDLED;
    case ARR_AFTER:
        if (c == ']' && f->a >= n->min) {
            st->depth--;
            return R_ACCEPT;
        }
        if (c != ',' || f->a >= n->max || !fits(g, st, n->item)) return R_REJECT;
        f->phase = ARR_COMMA;
        return R_ACCEPT;
    }
    return R_REJECT;
}

static bool is_hex(uint8_t c) { return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f'); }

static enum res str_feed(const struct dsi_grammar *g, struct dsi__gstack *st, struct dsi__gframe *f, uint8_t c) {
    const struct dsi__gnode *n = &g->nodes[f->node];
    uint32_t need = f->b & 0xff, lo = f->b >> 8 & 0xff, hi = f->b >> 16 & 0xff;
    if (need) {
        if (c < lo || c > hi) return R_REJECT;
        f->b = need > 1 ? (uint64_t)(need - 1) | 0x80u << 8 | 0xBFu << 16 : 0;
        return R_ACCEPT;
    }
    switch (f->phase) {
    case STR_ESC:
        if (c == 'u') f->phase = STR_HEX1;
        else if (strchr("\"\\/bfnrt", c) && c) f->phase = STR_CHAR;
        else return R_REJECT;
        return R_ACCEPT;
    case STR_HEX1:
    case STR_HEX2:
    case STR_HEX3:
    case STR_HEX4:
        if (!is_hex(c) || (f->phase == STR_HEX1 && (c | 0x20) == 'd')) return R_REJECT;
        f->phase = f->phase == STR_HEX4 ? STR_CHAR : f->phase + 1;
        return R_ACCEPT;
    }
    if (c == '"') {
        if (f->a < n->min) return R_REJECT;
        st->depth--;
        return R_ACCEPT;
    }
    bool counted = n->min > 0 || n->max != DSI__G_UNBOUNDED;
    if (counted && f->a >= n->max) return R_REJECT;
    uint32_t nneed = 0, nlo = 0x80, nhi = 0xBF;
    if (c == '\\') f->phase = STR_ESC;
    else if (c < 0x20) return R_REJECT;
    else if (c < 0x80) nneed = 0;
    else if (c >= 0xC2 && c <= 0xDF) nneed = 1;
    else if (c >= 0xE0 && c <= 0xEF) nneed = 2, nlo = c == 0xE0 ? 0xA0 : 0x80, nhi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4) nneed = 3, nlo = c == 0xF0 ? 0x90 : 0x80, nhi = c == 0xF4 ? 0x8F : 0xBF;
    else return R_REJECT;
    f->b = nneed ? (uint64_t)nneed | (uint64_t)nlo << 8 | (uint64_t)nhi << 16 : 0;
    if (counted) f->a++;
    return R_ACCEPT;
}

static bool num_complete(const struct dsi__gframe *f) {
    return f->phase == NUM_ZERO || f->phase == NUM_INT || f->phase == NUM_FRAC || f->phase == NUM_EXP;
}

static enum res num_feed(const struct dsi_grammar *g, struct dsi__gframe *f, uint8_t c) {
    bool digit = c >= '0' && c <= '9', real = g->nodes[f->node].kind == DSI__GN_NUMBER;
    switch (f->phase) {
    case NUM_START:
        if (c == '-') {
            f->phase = NUM_MINUS;
            return R_ACCEPT;
        }
        /* fall through */
    case NUM_MINUS:
        if (!digit) return R_REJECT;
        f->phase = c == '0' ? NUM_ZERO : NUM_INT;
        f->a = 1;
        return R_ACCEPT;
    case NUM_INT:
        if (digit && f->a < DSI_GRAMMAR_MAX_INT_DIGITS) {
            f->a++;
            return R_ACCEPT;
        }
        /* fall through */
    case NUM_ZERO:
        if (real && c == '.') {
            f->phase = NUM_DOT;
            return R_ACCEPT;
        }
        if (real && (c == 'e' || c == 'E')) {
            f->phase = NUM_E;
            return R_ACCEPT;
        }
        return R_POP_REFEED;
    case NUM_DOT:
        if (!digit) return R_REJECT;
        f->phase = NUM_FRAC;
        f->a = 1;
        return R_ACCEPT;
    case NUM_FRAC:
        if (digit && f->a < DSI_GRAMMAR_MAX_FRAC_DIGITS) {
            f->a++;
            return R_ACCEPT;
        }
        if (c == 'e' || c == 'E') {
            f->phase = NUM_E;
            return R_ACCEPT;
        }
        return R_POP_REFEED;
    case NUM_E:
        if (c == '+' || c == '-') {
            f->phase = NUM_ESIGN;
            return R_ACCEPT;
        }
        /* fall through */
    case NUM_ESIGN:
        if (!digit) return R_REJECT;
        f->phase = NUM_EXP;
        f->a = 1;
        return R_ACCEPT;
    case NUM_EXP:
        if (digit && f->a < DSI_GRAMMAR_MAX_EXP_DIGITS) {
            f->a++;
            return R_ACCEPT;
        }
        return R_POP_REFEED;
    }
    return R_REJECT;
}

static bool lit_complete(const struct dsi_grammar *g, const struct dsi__gframe *f) {
    const struct dsi__gnode *n = &g->nodes[f->node];
    return g->lits[n->first + (f->a & 0xffff)].len == f->b;
}

static enum res lit_feed(const struct dsi_grammar *g, struct dsi__gframe *f, uint8_t c) {
    const struct dsi__gnode *n = &g->nodes[f->node];
    const struct dsi__glit *l = g->lits + n->first;
    uint32_t lo = f->a & 0xffff, hi = f->a >> 16, pos = (uint32_t)f->b, nlo = hi, nhi = hi;
    for (uint32_t i = lo; i < hi; i++) {
        if (l[i].len > pos && (uint8_t)l[i].s[pos] == c) {
            if (nlo == hi) nlo = i;
            nhi = i + 1;
        } else if (nlo != hi) {
            break; /* sorted: the matching ones are contiguous */
        }
    }
    if (nlo < nhi) {
        f->a = nlo | nhi << 16;
        f->b = pos + 1;
        return R_ACCEPT;
    }
    return l[lo].len == pos ? R_POP_REFEED : R_REJECT;
}

/* A REP frame (top of st, which lives at out->s[out->n]) takes c. */
static void rep_feed(const struct dsi_grammar *g, struct dsi__gstate *out, struct dsi__gstack *st, uint8_t c) {
    struct dsi__gframe *f = &st->f[st->depth - 1];
    const struct dsi__gnode *n = &g->nodes[f->node];
    switch (f->phase) {
    case REP_ITEM:
        f->a++;
        f->phase = REP_AFTER;
        begin_value(g, out, st, n->item, c);
        return;
    case REP_AFTER: {
        struct dsi__gstack base;
        stack_copy(&base, st);
        f->phase = REP_END;
        begin_value(g, out, st, g->alts[n->first + 1], c);
        if (base.f[base.depth - 1].a >= n->max || out->n >= DSI__G_MAX_ALT) return;
        struct dsi__gstack *t = &out->s[out->n];
        stack_copy(t, &base);
        t->f[t->depth - 1].phase = REP_ITEM;
        begin_value(g, out, t, g->alts[n->first], c);
        return;
    }
    }
    /* REP_END: the end literal took every byte it could; nothing follows */
}

/* Feeds c to st, which lives at out->s[out->n]; commits what survives. */
static void feed(const struct dsi_grammar *g, struct dsi__gstate *out, struct dsi__gstack *st, uint8_t c) {
    for (;;) {
        struct dsi__gframe *f = &st->f[st->depth - 1];
        enum res r = R_REJECT;
        switch (f->kind) {
        case DSI__FR_ROOT:
            if (f->phase != ROOT_VALUE) return;
            f->phase = ROOT_DONE;
            begin_value(g, out, st, f->node, c);
            return;
        case DSI__FR_OBJ: r = obj_feed(g, out, st, f, c); break;
        case DSI__FR_ARR: r = arr_feed(g, out, st, f, c); break;
        case DSI__FR_STR: r = str_feed(g, st, f, c); break;
        case DSI__FR_NUM: r = num_feed(g, f, c); break;
        case DSI__FR_LIT: r = lit_feed(g, f, c); break;
        case DSI__FR_SEQ: {
            const struct dsi__gnode *n = &g->nodes[f->node];
            if (f->a < n->n) {
                int32_t part = g->alts[n->first + f->a++];
                begin_value(g, out, st, part, c);
                return;
            }
            r = R_POP_REFEED;
            break;
        }
        case DSI__FR_REP: rep_feed(g, out, st, c); return;
        }
        if (r == R_ACCEPT) commit(out, st);
        if (r != R_POP_REFEED) return;
        st->depth--;
    }
}

static void begin_value(const struct dsi_grammar *g, struct dsi__gstate *out, struct dsi__gstack *st,
                        int32_t node, uint8_t c) {
    const struct dsi__gnode *n = &g->nodes[node];
    if (!fits(g, st, node)) return;
    enum res r = R_REJECT;
    switch ((enum dsi__gnode_kind)n->kind) {
    case DSI__GN_ANYOF: {
        struct dsi__gstack base;
        stack_copy(&base, st);
        for (uint32_t i = 0; i < n->n && out->n < DSI__G_MAX_ALT; i++) {
            struct dsi__gstack *t = &out->s[out->n];
            stack_copy(t, &base);
            begin_value(g, out, t, g->alts[n->first + i], c);
        }
        return;
    }
    case DSI__GN_OBJECT:
        if (c != '{') return;
        push(st, node, DSI__FR_OBJ, OBJ_OPEN, 0, 0);
        r = R_ACCEPT;
        break;
    case DSI__GN_ARRAY:
        if (c != '[') return;
        push(st, node, DSI__FR_ARR, ARR_OPEN, 0, 0);
        r = R_ACCEPT;
        break;
    case DSI__GN_STRING:
        if (c != '"') return;
        push(st, node, DSI__FR_STR, STR_CHAR, 0, 0);
        r = R_ACCEPT;
        break;
    case DSI__GN_NUMBER:
    case DSI__GN_INTEGER:
        push(st, node, DSI__FR_NUM, NUM_START, 0, 0);
        r = num_feed(g, &st->f[st->depth - 1], c);
        break;
    case DSI__GN_LIT:
        push(st, node, DSI__FR_LIT, 0, n->n << 16, 0);
        r = lit_feed(g, &st->f[st->depth - 1], c);
        break;
    case DSI__GN_REP: /* the frame first, then the byte begins the first value */
        push(st, node, DSI__FR_REP, REP_ITEM, 0, 0);
        rep_feed(g, out, st, c);
        return;
    case DSI__GN_SEQ: /* the frame first, then the byte begins part 0 (which commits) */
        push(st, node, DSI__FR_SEQ, 0, 1, 0);
        begin_value(g, out, st, g->alts[n->first], c);
        return;
    }
    if (r == R_ACCEPT) commit(out, st);
}

void dsi__gstate_init(const struct dsi_grammar *g, struct dsi__gstate *st) {
    st->n = 1;
    st->s[0].depth = 0;
    push(&st->s[0], g->root, DSI__FR_ROOT, ROOT_VALUE, 0, 0);
}

void dsi__gstate_step(const struct dsi_grammar *g, const struct dsi__gstate *in, uint8_t c,
                      struct dsi__gstate *out) {
    out->n = 0;
    for (uint32_t i = 0; i < in->n && out->n < DSI__G_MAX_ALT; i++) {
        struct dsi__gstack *st = &out->s[out->n];
        stack_copy(st, &in->s[i]);
        feed(g, out, st, c);
    }
}

void dsi__gstate_copy(struct dsi__gstate *dst, const struct dsi__gstate *src) {
    dst->n = src->n;
    for (uint32_t i = 0; i < src->n; i++)
        stack_copy(&dst->s[i], &src->s[i]);
}

/* True for a sequence frame whose last part has begun, or a repetition whose end has. */
static bool seq_last(const struct dsi_grammar *g, const struct dsi__gframe *f) {
    return (f->kind == DSI__FR_SEQ && f->a >= g->nodes[f->node].n) || (f->kind == DSI__FR_REP && f->phase == REP_END);
}

/* True for a LIT frame holding one literal, wholly matched: no byte can extend it. */
static bool lit_closed(const struct dsi_grammar *g, const struct dsi__gframe *f) {
    return f->kind == DSI__FR_LIT && (f->a >> 16) - (f->a & 0xffff) == 1 && lit_complete(g, f);
}

/* Complete: the top value started, every frame above the root a sequence in its
 * last part, and the top frame (if not one) a NUM or LIT that may end here. */
static bool stack_complete(const struct dsi_grammar *g, const struct dsi__gstack *st) {
    if (st->f[0].phase != ROOT_DONE) return false;
    for (uint32_t i = 1; i < st->depth; i++) {
        const struct dsi__gframe *f = &st->f[i];
        if (seq_last(g, f)) continue;
        if (i + 1 != st->depth) return false;
        if (f->kind == DSI__FR_NUM) return num_complete(f);
        if (f->kind == DSI__FR_LIT) return lit_complete(g, f);
        return false;
    }
    return true;
}

bool dsi__gstate_complete(const struct dsi_grammar *g, const struct dsi__gstate *st) {
    for (uint32_t i = 0; i < st->n; i++)
        if (stack_complete(g, &st->s[i])) return true;
    return false;
}

/* Finished: every stack's frames above the root are closed sequences, except that
 * the top one may be a closed LIT inside them (a repetition's end, or the last part
 * of a sequence that is raw text). */
bool dsi__gstate_finished(const struct dsi_grammar *g, const struct dsi__gstate *st) {
    for (uint32_t i = 0; i < st->n; i++) {
        const struct dsi__gstack *s = &st->s[i];
        if (s->f[0].phase != ROOT_DONE) return false;
        for (uint32_t k = 1; k < s->depth; k++)
            if (!seq_last(g, &s->f[k]) && !(k + 1 == s->depth && k > 1 && lit_closed(g, &s->f[k]))) return false;
    }
    return st->n > 0;
}

bool dsi__gstate_in_string(const struct dsi_grammar *g, const struct dsi__gstate *st, uint32_t *left) {
    if (st->n != 1) return false;
    const struct dsi__gframe *f = &st->s[0].f[st->s[0].depth - 1];
    if (f->kind != DSI__FR_STR || f->phase != STR_CHAR || f->b != 0) return false;
    const struct dsi__gnode *n = &g->nodes[f->node];
    bool counted = n->min > 0 || n->max != DSI__G_UNBOUNDED;
    *left = !counted || n->max == DSI__G_UNBOUNDED ? UINT32_MAX : n->max - f->a;
    return true;
}

size_t dsi__gstate_key(const struct dsi__gstate *st, unsigned char *buf) {
    size_t off = 0;
    memcpy(buf + off, &st->n, sizeof st->n);
    off += sizeof st->n;
    for (uint32_t i = 0; i < st->n; i++) {
        memcpy(buf + off, &st->s[i].depth, sizeof st->s[i].depth);
        off += sizeof st->s[i].depth;
        size_t fb = st->s[i].depth * sizeof st->s[i].f[0];
        memcpy(buf + off, st->s[i].f, fb);
        off += fb;
    }
    return off;
}
