/*
 * kv_model.h: drives the KV block manager (src/engine/kvcache.c) with an
 * operation sequence read from bytes, the way the scheduler does (match then
 * reserve at admission, compute + commit per step, grow for decode, release
 * on finish, cancel or preemption), and checks it against a simple model:
 *
 * - content oracle: every slot remembers the hash of the history (namespace
 *   and tokens 0..p) that wrote it. A mapped prefix must consist of slots
 *   written for exactly the sequence's own history (a wrong hit is a bug), and
 *   a block being written must be held by that sequence alone (writing a
 *   shared block would corrupt another sequence's K/V).
 * - counts: dsi_kv_check after every operation (ref counts equal the tables
 *   that list each id; free + idle + held == pool; LRU and hash table sound).
 * - retention: after a sequence is released, matching its tokens again with
 *   no eviction since its admission maps every block it had published.
 *
 * Used by tests/fuzz/fuzz_kvcache.c (libFuzzer) and test_kvcache.c (a fixed
 * pseudo-random stream, so plain ctest runs it too). Returns 0, or a line
 * number in this file where the model and the manager disagree.
 */
#ifndef DSI_TEST_KV_MODEL_H
#define DSI_TEST_KV_MODEL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/kvcache.h"

enum { KVM_BLOCKS = 12, KVM_BS = 2, KVM_SEQS = 5, KVM_MAXTOK = 16 };

struct kvm_seq {
    struct dsi_kv_seq kv;
    bool live;
    uint64_t ns[2];
    int32_t tok[KVM_MAXTOK];
    int n_tok;      /* tokens it has (prompt, then "generated") */
    int n_computed; /* positions written */
    uint64_t ev_at_admit; /* pool evictions when it was admitted */
};

static inline uint64_t kvm_mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Hash of s's history 0..p. */
static inline uint64_t kvm_chain(const struct kvm_seq *s, int p) {
    uint64_t h = kvm_mix(s->ns[0] * 31 + s->ns[1]);
    for (int i = 0; i <= p; i++) h = kvm_mix(h ^ (uint64_t)(uint32_t)s->tok[i]);
    return h;
}

#define KVM_FAIL()                                                                                  \
    do {                                                                                            \
        bad = __LINE__;                                                                             \
        goto out;                                                                                   \
    } while (0)

static inline int kv_model_run(const uint8_t *data, size_t size, int prefix) {
    struct dsi_kv_cache kv;
    struct kvm_seq sq[KVM_SEQS];
    uint64_t slot[KVM_BLOCKS * KVM_BS] = {0};
    const struct dsi_kv_seq *tabs[KVM_SEQS];
    /* retention record of the last release */
    struct kvm_seq last;
    int last_keyed = -1;
    uint64_t last_evictions = 0;
    int bad = 0;
    memset(sq, 0, sizeof sq);
    if (dsi_kv_cache_init(&kv, KVM_BLOCKS, KVM_BS, NULL)) return __LINE__;
    if (prefix && dsi_kv_prefix_enable(&kv, 42, 0, NULL)) {
        dsi_kv_cache_free(&kv);
        return __LINE__;
    }
    for (int k = 0; k < KVM_SEQS; k++)
        if (dsi_kv_seq_init(&sq[k].kv, &kv, KVM_MAXTOK, NULL)) {
            for (int j = 0; j < k; j++) dsi_kv_seq_free(&sq[j].kv);
            dsi_kv_cache_free(&kv);
            return __LINE__;
        }
    for (size_t i = 0; i + 1 < size; i += 2) {
        uint8_t op = data[i], arg = data[i + 1];
        struct kvm_seq *s = &sq[(op >> 3) % KVM_SEQS];
        switch (op & 7) {
        case 0:
        case 1: { /* admit: a prompt of arg-chosen length over a 2-token alphabet */
            if (s->live) break;
            s->ns[0] = (op >> 6) & 1;
            s->ns[1] = 0;
            s->n_tok = 2 + arg % (KVM_MAXTOK - 4);
            for (int t = 0; t < s->n_tok; t++) s->tok[t] = (int32_t)((arg >> (t % 8)) & 1) + (t >= 8);
            int hit = dsi_kv_seq_match(&kv, &s->kv, s->ns, s->tok, s->n_tok - 1);
            if (hit % KVM_BS || hit > s->n_tok - 1 || hit != s->kv.n_blocks * KVM_BS) KVM_FAIL();
            if (!prefix && hit) KVM_FAIL();
            for (int p = 0; p < hit; p++)
                if (slot[s->kv.blocks[p / KVM_BS] * KVM_BS + p % KVM_BS] != kvm_chain(s, p)) KVM_FAIL();
            if (last_keyed >= 0 && kv.evictions == last_evictions && s->ns[0] == last.ns[0] &&
                s->n_tok >= last.n_tok && !memcmp(s->tok, last.tok, (size_t)last.n_tok * sizeof(int32_t))) {
                int want = last_keyed * KVM_BS;
                if (want > (s->n_tok - 1) / KVM_BS * KVM_BS) want = (s->n_tok - 1) / KVM_BS * KVM_BS;
                if (hit < want) KVM_FAIL();
            }
            if (dsi_kv_seq_reserve(&kv, &s->kv, s->n_tok) != 0) {
                dsi_kv_seq_release(&kv, &s->kv); /* does not fit: the scheduler gives the hit back */
                break;
            }
            s->n_computed = hit;
            s->ev_at_admit = kv.evictions;
            s->live = true;
            break;
        }
        case 2:
        case 3: { /* compute up to arg % 4 + 1 positions, then publish */
            if (!s->live) break;
            int n = arg % 4 + 1;
            for (int c = 0; c < n && s->n_computed < s->n_tok; c++) {
                int p = s->n_computed++;
                int32_t id = s->kv.blocks[p / KVM_BS];
                if (kv.ref[id] != 1) KVM_FAIL(); /* writing a block someone else holds */
                slot[id * KVM_BS + p % KVM_BS] = kvm_chain(s, p);
            }
            dsi_kv_seq_commit(&kv, &s->kv, s->tok, s->n_computed);
            break;
        }
        case 4: { /* decode growth: one more token, all computed before it */
            if (!s->live || s->n_computed < s->n_tok || s->n_tok >= KVM_MAXTOK) break;
            s->tok[s->n_tok] = arg & 1;
            int rc = dsi_kv_seq_reserve(&kv, &s->kv, s->n_tok + 1);
            if (rc == DSI_EFULL) { /* preempted: everything back, recompute later */
                dsi_kv_seq_release(&kv, &s->kv);
                s->live = false;
            } else if (rc) {
                KVM_FAIL();
            } else {
                s->n_tok++;
            }
            break;
        }
        default: /* finish or cancel */
            if (!s->live) break;
            /* a block it keyed may have been evicted since its admission */
            last = *s;
            last_keyed = kv.evictions == s->ev_at_admit ? s->kv.n_keyed : -1;
            dsi_kv_seq_release(&kv, &s->kv);
            last_evictions = kv.evictions;
            s->live = false;
            break;
        }
        for (int k = 0; k < KVM_SEQS; k++) tabs[k] = &sq[k].kv;
        char *err = NULL;
        if (dsi_kv_check(&kv, tabs, KVM_SEQS, &err)) {
            fprintf(stderr, "kv_model: %s\n", err ? err : "?");
            free(err);
            KVM_FAIL();
        }
        if (dsi_kv_used(&kv) + dsi_kv_free_count(&kv) != KVM_BLOCKS) KVM_FAIL();
    }
out:
    for (int k = 0; k < KVM_SEQS; k++) {
        dsi_kv_seq_release(&kv, &sq[k].kv);
        dsi_kv_seq_free(&sq[k].kv);
    }
    if (!bad && dsi_kv_free_count(&kv) != KVM_BLOCKS) bad = __LINE__;
    dsi_kv_cache_free(&kv);
    return bad;
}

#endif
