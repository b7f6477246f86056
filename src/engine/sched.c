/*
 * sched.c: the scheduler thread: one continuous-batching step at a time.
 *
 * A step (see docs/engine.md):
 *   1. under the lock: retire cancelled, timed-out and deadline-passed requests;
 *      give every running sequence the blocks its next token needs, preempting
 *      the newest running sequence when the pool runs dry; admit waiting requests
 *      while max_running and the pool allow; plan the batch (decode tokens first,
 *      then prefill chunks, within max_batch_tokens);
 *   2. without the lock: deliver the retired requests' final events, call
 *      forward(), sample every sequence that wanted logits and deliver its token
 *      (or, when the backend has forward_sample and every sampled sequence of the
 *      step needs only temperature/top-k/top-p, let the backend sample: see
 *      device_sampling below);
 *   3. under the lock: release the blocks of finished sequences.
 *
 * A failed forward() ends the sequences of that step with an ERROR event (their
 * new K/V may be half written, so it is neither committed nor reused); the
 * others keep running and the next step goes on, since most failures pass (a
 * workspace that could not grow while another process held GPU memory). Only
 * when the backend says it is dead (ops->dead: a poisoned CUDA context) does
 * the engine fail every live request and refuse new ones (dsi_engine_dead);
 * retrying on a dead backend would fail every step anyway.
 *
 * A sequence is its token list (prompt then generated) plus n_computed, the
 * number of positions whose K/V is in its blocks. Each step feeds tokens
 * [n_computed, n_computed + step_n); when that reaches n_tokens the logits of the
 * last one give the next token. Prefill, decode and recompute after preemption
 * are all this one rule, which is why a recomputed sequence resumes exactly
 * where it stopped and never re-delivers a token. A scoring request follows it
 * too, with its end moved: it needs the logits of position n_scored, so its
 * rows end at n_scored + 1 (one position per step; a recompute prefills the
 * positions already scored in chunks, without logits).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dsinfer/clock.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "dsinfer/grammar.h"
#include "engine_internal.h"

static void retire(struct dsi__req **done, struct dsi__req *r, enum dsi_finish finish, int error);
static void deliver_done(struct dsi__req *done);
static void collect_expired(struct dsi_engine *e, int64_t now, struct dsi__req **done);
static void running_remove_at(struct dsi_engine *e, int i);
static void preempt_newest(struct dsi_engine *e);
static void grow_running(struct dsi_engine *e);
static void admit(struct dsi_engine *e);
static int plan_batch(struct dsi_engine *e);
static void run_batch(struct dsi_engine *e, int n_b, struct dsi__req **done);
static void stop_all(struct dsi_engine *e);
static void retire_all(struct dsi_engine *e, enum dsi_finish finish, int error, struct dsi__req **done);
static void check_kv(struct dsi_engine *e);
static bool waits_for_leader(const struct dsi_engine *e, const struct dsi__req *r);

/* Positions r's next logits row needs computed: all its tokens, or for a
 * scoring request those up to the next position to score. */
static int row_end(const struct dsi__req *r) { return r->score ? r->n_scored + 1 : r->n_tokens; }

/* Whether r delivered an event already (a timeout then ends it as LENGTH). */
static bool delivered(const struct dsi__req *r) { return r->score ? r->n_scored > 0 : r->n_tokens > r->n_prompt; }

/* Builds r's final event and pushes r on the done list. r must already be out of
 * the waiting queue and the running set, with its blocks released (caller holds mu). */
static void retire(struct dsi__req **done, struct dsi__req *r, enum dsi_finish finish, int error) {
    struct dsi_token_event *ev = &r->final_ev;
    memset(ev, 0, sizeof(*ev));
    ev->request_id = r->id;
    ev->token = -1;
    ev->finished = true;
    ev->finish = finish;
    ev->error = error;
    ev->n_prompt_tokens = r->n_prompt;
    ev->n_completion_tokens = r->n_tokens - r->n_prompt;
    ev->n_cached_tokens = r->n_cached;
    ev->index = r->index;
    r->done_next = *done;
    *done = r;
}

/* Delivers the final events of the done list and frees its requests. Called
 * without the lock: the requests are already out of every shared list. */
static void deliver_done(struct dsi__req *done) {
    while (done) {
        struct dsi__req *next = done->done_next;
        done->cb(done->user, &done->final_ev);
        dsi__engine_req_free(done);
        done = next;
    }
}

static void running_remove_at(struct dsi_engine *e, int i) {
    memmove(&e->running[i], &e->running[i + 1], (size_t)(e->n_running - i - 1) * sizeof(*e->running));
    e->n_running--;
}

/* Retires cancelled and timed-out requests, waiting and running (caller holds mu). */
static void collect_expired(struct dsi_engine *e, int64_t now, struct dsi__req **done) {
    for (struct dsi__req *r = e->wait_head, *next; r; r = next) {
        next = r->wnext;
        int finish = DSI_FINISH_NONE, error = 0;
        if (r->cancel_requested) {
            finish = DSI_FINISH_CANCELLED;
        } else if (!r->started && e->o.queue_timeout_ms > 0 && now - r->submit_ms >= e->o.queue_timeout_ms) {
            finish = DSI_FINISH_ERROR;
            error = DSI_ETIMEDOUT;
            dsi_log(DSI_LOG_WARN, "engine",
                    "request %llu waited %lld ms in the queue, over queue_timeout_ms %d",
                    (unsigned long long)r->id, (long long)(now - r->submit_ms), e->o.queue_timeout_ms);
        } else if (r->deadline_ms && now >= r->deadline_ms) {
            /* A preempted request may already have delivered tokens. */
            finish = delivered(r) ? DSI_FINISH_LENGTH : DSI_FINISH_ERROR;
            error = DSI_ETIMEDOUT;
        }
        if (finish == DSI_FINISH_NONE) continue;
        dsi__engine_wait_remove(e, r);
        dsi__engine_live_remove(e, r);
        dsi_kv_seq_release(&e->kv, &r->kv);
        retire(done, r, finish, error);
    }
    for (int i = 0; i < e->n_running;) {
        struct dsi__req *r = e->running[i];
        int finish = DSI_FINISH_NONE, error = 0;
        if (r->cancel_requested) {
            finish = DSI_FINISH_CANCELLED;
        } else if (r->deadline_ms && now >= r->deadline_ms) {
            finish = delivered(r) ? DSI_FINISH_LENGTH : DSI_FINISH_ERROR;
            error = DSI_ETIMEDOUT;
            dsi_log(DSI_LOG_INFO, "engine", "request %llu passed its deadline after %d tokens",
                    (unsigned long long)r->id, r->n_tokens - r->n_prompt);
        }
        if (finish == DSI_FINISH_NONE) {
            i++;
            continue;
        }
        running_remove_at(e, i);
        dsi__engine_live_remove(e, r);
        dsi_kv_seq_release(&e->kv, &r->kv);
        retire(done, r, finish, error);
    }
}

/* Preempts the newest running sequence: its blocks go back to the pool and it
 * waits at the front of the queue to be recomputed from prompt + generated
 * tokens. Newest first because it has the least work to redo and the oldest
 * requests, closest to done, keep streaming (caller holds mu). */
static void preempt_newest(struct dsi_engine *e) {
    struct dsi__req *v = e->running[e->n_running - 1];
    e->n_running--;
    dsi_kv_seq_release(&e->kv, &v->kv);
    v->n_computed = 0;
    dsi__engine_wait_push_front(e, v);
    e->st.preempted_total++;
    dsi_log(DSI_LOG_DEBUG, "engine", "preempted request %llu at %d tokens", (unsigned long long)v->id,
            v->n_tokens);
}

/* Gives every running sequence blocks for all its tokens, oldest first,
 * preempting the newest while the pool is short (caller holds mu). */
static void grow_running(struct dsi_engine *e) {
    for (int i = 0; i < e->n_running; i++) {
        struct dsi__req *r = e->running[i];
        for (;;) {
            int rc = dsi_kv_seq_reserve(&e->kv, &r->kv, r->n_tokens);
            if (rc == 0) break;
            /* Only DSI_EFULL can happen: submit checked that n_tokens fits the table. */
            preempt_newest(e);
            if (i >= e->n_running) break; /* r itself was the newest */
        }
    }
}

/* Inserts r into the running set, keeping it sorted by id (caller holds mu). */
static void running_insert(struct dsi_engine *e, struct dsi__req *r) {
    int i = e->n_running;
    while (i > 0 && e->running[i - 1]->id > r->id) {
        e->running[i] = e->running[i - 1];
        i--;
    }
    e->running[i] = r;
    e->n_running++;
}

/* Running sequences of r's tenant (caller holds mu). */
static int tenant_running(const struct dsi_engine *e, uint64_t tenant) {
    int n = 0;
    for (int i = 0; i < e->n_running; i++) n += e->running[i]->tenant == tenant;
    return n;
}

/* a's share is below b's: a has fewer running sequences per unit of weight
 * (cross-multiplied, so no division). */
static bool share_below(int na, int wa, int nb, int wb) {
    return (int64_t)na * wb < (int64_t)nb * wa;
}

/* The waiting request to admit next: the oldest of the tenant with the fewest
 * running sequences per unit of weight (ties: queue order, so one tenant alone is
 * plain FIFO and preempted sequences, at the front, go first). Caller holds mu. */
static struct dsi__req *pick_waiting(const struct dsi_engine *e, int *n_best) {
    struct dsi__req *best = NULL;
    int best_n = 0;
    uint64_t seen[64];
    int n_seen = 0;
    for (struct dsi__req *r = e->wait_head; r; r = r->wnext) {
        if (waits_for_leader(e, r)) continue; /* a sibling waiting for its prompt's blocks */
        bool dup = false;
        for (int i = 0; i < n_seen && !dup; i++) dup = seen[i] == r->tenant;
        if (dup) continue; /* an older request of this tenant was already weighed */
        if (n_seen < 64) seen[n_seen++] = r->tenant;
        int n = tenant_running(e, r->tenant);
        if (!best || share_below(n, r->weight, best_n, best->weight)) best = r, best_n = n;
        if (n == 0 && best == r && e->wait_head == r) break; /* nobody can be below the head */
    }
    *n_best = best_n;
    return best;
}

/* A full batch: the running sequence to preempt so that candidate c (whose
 * tenant runs n_c) gets a slot, or -1. Only the newest sequence of the tenant
 * furthest above its share, and only if after the swap c's tenant would still
 * not be above it (no ping-pong between two tenants at their share). */
static int pick_victim(const struct dsi_engine *e, const struct dsi__req *c, int n_c) {
    int victim = -1, n_v = 0;
    for (int i = e->n_running - 1; i >= 0; i--) {
        const struct dsi__req *r = e->running[i];
        if (r->tenant == c->tenant) continue;
        int n = tenant_running(e, r->tenant);
        if (victim < 0 || share_below(n_v, e->running[victim]->weight, n, r->weight)) victim = i, n_v = n;
    }
    if (victim < 0) return -1;
    /* after the swap c's tenant runs n_c + 1 and the victim's n_v - 1 */
    return share_below(n_v - 1, e->running[victim]->weight, n_c + 1, c->weight) ? -1 : victim;
}

/* Preempts running[i] like preempt_newest (caller holds mu). */
static void preempt_at(struct dsi_engine *e, int i) {
    struct dsi__req *v = e->running[i];
    running_remove_at(e, i);
    dsi_kv_seq_release(&e->kv, &v->kv);
    v->n_computed = 0;
    dsi__engine_wait_push_front(e, v);
    e->st.preempted_total++;
    dsi_log(DSI_LOG_DEBUG, "engine", "request %llu yields its slot to another tenant at %d tokens",
            (unsigned long long)v->id, v->n_tokens);
}

/* Admits waiting requests while max_running and the pool allow, tenant by
 * tenant (pick_waiting). A request takes blocks for all its tokens at once, and
 * leaves one free block per running sequence as headroom, so that admission
 * does not force the next steps' decode growth into preemptions. Stops at the
 * first pick that does not fit, so a big request is not starved by small ones
 * behind it; only a sibling that waits for its prompt (waits_for_leader) is
 * stepped over. With the batch full, a tenant below its share takes the slot of
 * the one furthest above it, at most one swap per step (caller holds mu). */
static void admit(struct dsi_engine *e) {
    bool swapped = false;
    while (e->wait_head) {
        int n_c = 0;
        struct dsi__req *r = pick_waiting(e, &n_c);
        if (!r) break;
        if (e->n_running >= e->o.max_running) {
            int v = swapped ? -1 : pick_victim(e, r, n_c);
            if (v < 0) break;
            preempt_at(e, v);
            swapped = true;
            /* the victim is waiting again, at the front: r is still the pick */
        }
        /* Map the longest cached prefix first (it may take idle blocks off the
         * free count); one token is always left to compute, for the logits. A
         * scoring request needs the logits of every position it has not scored
         * yet, so only those it has scored may come from the cache. */
        int reuse = r->score ? r->n_scored : r->n_tokens - 1;
        int hit = dsi_kv_seq_match(&e->kv, &r->kv, r->cache_ns, r->tokens, reuse);
        int need = dsi_kv_blocks_for(&e->kv, r->n_tokens) - r->kv.n_blocks;
        if (need + e->n_running > dsi_kv_free_count(&e->kv) ||
            dsi_kv_seq_reserve(&e->kv, &r->kv, r->n_tokens) != 0) {
            dsi_kv_seq_release(&e->kv, &r->kv);
            break;
        }
        r->n_computed = hit;
        dsi__engine_wait_remove(e, r);
        if (!r->started) {
            /* Usage counts the first admission only; a recompute after preemption
             * is the server's cost, not the client's. */
            r->n_cached = hit < r->n_prompt ? hit : r->n_prompt;
            e->st.prefix_hit_tokens += (uint64_t)r->n_cached;
            e->st.prefix_miss_tokens += (uint64_t)(r->n_prompt - r->n_cached);
        }
        r->started = true;
        running_insert(e, r);
    }
}

/* True while r (sequence i > 0 of an n > 1 request) should wait: its sequence 0
 * is running and has not computed the prompt yet. Admitted after that, r maps
 * the prompt's whole blocks from the prefix cache and computes only the last
 * partial block; without the cache there is nothing to wait for. If sequence 0
 * ended or was preempted, r goes on its own (caller holds mu). */
static bool waits_for_leader(const struct dsi_engine *e, const struct dsi__req *r) {
    if (!r->leader_id || !e->kv.prefix || r->started) return false;
    for (int i = 0; i < e->n_running; i++) {
        const struct dsi__req *l = e->running[i];
        if (l->id == r->leader_id) return l->n_computed < l->n_prompt - 1;
    }
    return false;
}

/* check_kv: verifies the block manager against the running tables (waiting
 * requests hold no blocks: preemption releases them). Caller holds mu. */
static void check_kv(struct dsi_engine *e) {
    const struct dsi_kv_seq *tabs[4096];
    for (int i = 0; i < e->n_running; i++) tabs[i] = &e->running[i]->kv;
    for (struct dsi__req *r = e->wait_head; r; r = r->wnext)
        if (r->kv.n_blocks != 0) {
            dsi_log(DSI_LOG_ERROR, "engine", "kv check: waiting request %llu holds %d blocks",
                    (unsigned long long)r->id, r->kv.n_blocks);
            e->st.kv_check_failures++;
            return;
        }
    char *err = NULL;
    if (dsi_kv_check(&e->kv, tabs, e->n_running, &err) != 0) {
        dsi_log(DSI_LOG_ERROR, "engine", "%s", err ? err : "kv check failed");
        e->st.kv_check_failures++;
    }
    free(err);
}

/* Chooses each running sequence's tokens for this step and fills e->bseqs in
 * running order. Decode tokens come first so streams keep flowing; the rest
 * of max_batch_tokens goes to prefill chunks, oldest first. Returns the number
 * of batch entries (caller holds mu). */
static int plan_batch(struct dsi_engine *e) {
    int budget = e->o.max_batch_tokens;
    for (int i = 0; i < e->n_running; i++) {
        struct dsi__req *r = e->running[i];
        r->step_n = 0;
        r->fin = DSI_FINISH_NONE;
        if (row_end(r) - r->n_computed == 1 && budget > 0) {
            r->step_n = 1;
            budget--;
        }
    }
    for (int i = 0; i < e->n_running && budget > 0; i++) {
        struct dsi__req *r = e->running[i];
        int left = row_end(r) - r->n_computed;
        if (left <= 1) continue;
        int n = left < e->o.prefill_chunk ? left : e->o.prefill_chunk;
        if (n > budget) n = budget;
        r->step_n = n;
        budget -= n;
    }
    int n_b = 0;
    for (int i = 0; i < e->n_running; i++) {
        struct dsi__req *r = e->running[i];
        if (r->step_n == 0) continue;
        struct dsi_batch_seq *s = &e->bseqs[n_b];
        s->seq_id = r->id;
        s->tokens = r->tokens + r->n_computed;
        s->n_tokens = r->step_n;
        s->pos = r->n_computed;
        s->block_table = r->kv.blocks;
        s->n_blocks = dsi_kv_blocks_for(&e->kv, r->n_computed + r->step_n);
        s->want_logits = r->n_computed + r->step_n == row_end(r);
        e->breqs[n_b++] = r;
    }
    e->st.last_step_tokens = e->o.max_batch_tokens - budget;
    return n_b;
}

/* True when the backend can pick this sequence's token itself: forward_sample
 * knows temperature, top-k and top-p only, and returns no logprobs. Mirrors what
 * dsi_sample treats as active (sampler.c). */
static bool device_sampleable(const struct dsi_sampling *s) {
    bool rep = s->repetition_penalty != 1.0f && s->repetition_penalty > 0.0f;
    return !(s->min_p > 0.0f) && !rep && s->presence_penalty == 0.0f && s->frequency_penalty == 0.0f &&
           !s->logprobs && s->top_logprobs <= 0;
}

/* One draw from the sequence's own generator (the same one dsi_sample uses), so
 * its RNG advances by exactly one step per sampled token on either path. 24
 * random bits as a float in [0, 1): exact, so it never rounds up to 1. */
static float rng_uniform(struct dsi_sampler_state *st) {
    return (float)(dsi_sampler_next(st) >> 40) * (1.0f / 16777216.0f);
}

/* Decides the step's sampling path: true (and e->sparams filled, one per
 * want_logits entry in batch order) when the backend has forward_sample and
 * every sequence that gets a token this step can use it; the step is then
 * all-or-nothing so one forward call serves the batch. Draws u from each
 * sequence's own RNG only for temperature > 0, as dsi_sample does, so seeded
 * sequences consume one draw per sampled token whichever path a step takes. */
static bool device_sampling(struct dsi_engine *e, int n_b) {
    if (!e->be->ops->forward_sample) return false;
    for (int k = 0; k < n_b; k++)
        if (e->bseqs[k].want_logits &&
            (e->breqs[k]->gm || e->breqs[k]->score || !device_sampleable(&e->breqs[k]->sampling)))
            return false;
    int row = 0;
    for (int k = 0; k < n_b; k++) {
        if (!e->bseqs[k].want_logits) continue;
        struct dsi__req *r = e->breqs[k];
        const struct dsi_sampling *s = &r->sampling;
        struct dsi_sample_params *p = &e->sparams[row++];
        bool greedy = !(s->temperature > 0.0f);
        p->temperature = greedy ? 0.0f : s->temperature;
        p->top_k = s->top_k > 0 ? s->top_k : 0;
        p->top_p = s->top_p < 1.0f ? s->top_p : 1.0f;
        p->u = greedy ? 0.0f : rng_uniform(&r->rng);
        p->n_ids = e->o.sample_vocab; /* the padding rows stay undrawn on the device too */
    }
    return true;
}

static bool is_stop(const struct dsi__req *r, int32_t tok) {
    for (int i = 0; i < r->n_stop_ids; i++)
        if (r->stop_ids[i] == tok) return true;
    return false;
}

/* Ids past the tokenizer's last one (a checkpoint's padding rows) have no text:
 * they must never be drawn, whatever the weights put there. */
static void mask_padding(float *lg, int sample_vocab, int vocab) {
    for (int i = sample_vocab > 0 ? sample_vocab : vocab; i < vocab; i++) lg[i] = -INFINITY;
}

/* log p(target) under softmax(logits), in double for a stable sum. */
static double log_softmax_at(const float *logits, int vocab, int target) {
    double mx = logits[0];
    for (int i = 1; i < vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int i = 0; i < vocab; i++) sum += exp((double)logits[i] - mx);
    return (double)logits[target] - mx - log(sum);
}

/* A scoring request's row: the event of position n_scored (the logits row lg
 * is that position's), final at the prompt's last position. */
static void score_row(struct dsi__req *r, const float *lg, int vocab) {
    int p = r->n_scored++;
    struct dsi_token_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.request_id = r->id;
    ev.token = r->tokens[p + 1];
    ev.logprob = (float)log_softmax_at(lg, vocab, ev.token);
    ev.n_prompt_tokens = r->n_prompt;
    if (r->n_scored < r->n_prompt - 1) {
        r->cb(r->user, &ev);
        return;
    }
    ev.finished = true;
    ev.finish = DSI_FINISH_LENGTH;
    r->final_ev = ev;
    r->fin = DSI_FINISH_LENGTH;
}

/* Runs forward() over the planned batch, samples, delivers the token events and
 * retires finished sequences onto *done (takes the lock for that part only).
 * On the forward_sample path the event's logprob is 0 and n_top 0: requests
 * that ask for logprobs never take that path. */
static void run_batch(struct dsi_engine *e, int n_b, struct dsi__req **done) {
    struct dsi_batch b = {.seqs = e->bseqs, .n_seqs = n_b};
    char *err = NULL;
    bool dev = device_sampling(e, n_b);
    int rc = dev ? e->be->ops->forward_sample(e->be, &b, e->sparams, e->sids, &err)
                 : e->be->ops->forward(e->be, &b, e->logits, &err);
    int vocab = e->be->vocab_size;
    int row = 0, generated = 0;
    for (int k = 0; k < n_b && rc == 0; k++) {
        struct dsi__req *r = e->breqs[k];
        r->n_computed += r->step_n;
        if (!e->bseqs[k].want_logits) continue;
        struct dsi_token_event ev;
        memset(&ev, 0, sizeof(ev));
        int32_t tok;
        if (dev) {
            tok = e->sids[row++];
        } else {
            float *lg = e->logits + (size_t)row++ * (size_t)vocab;
            if (r->score) {
                score_row(r, lg, vocab);
                continue;
            }
            mask_padding(lg, e->o.sample_vocab, vocab);
            if (r->gm && dsi__engine_grammar_mask(r, lg, vocab) == 0) {
                /* only a vocabulary without some single-byte token gets here */
                dsi_log(DSI_LOG_WARN, "engine", "request %llu: its grammar allows no token; ending it",
                        (unsigned long long)r->id);
                r->fin = DSI_FINISH_STOP;
                continue;
            }
            tok = dsi_sample(lg, vocab, &r->sampling, &r->rng, r->tokens, r->n_tokens, r->n_prompt, &ev);
        }
        if (tok < 0 || tok >= vocab) {
            rc = DSI_EINTERNAL;
            err = dsi_errf("%s returned token %d, vocab %d", dev ? "forward_sample" : "sampler", tok, vocab);
            break;
        }
        r->tokens[r->n_tokens++] = tok;
        generated++;
        ev.request_id = r->id;
        ev.token = tok;
        ev.n_prompt_tokens = r->n_prompt;
        ev.n_completion_tokens = r->n_tokens - r->n_prompt;
        ev.n_cached_tokens = r->n_cached;
        ev.index = r->index;
        if (is_stop(r, tok)) {
            r->fin = DSI_FINISH_STOP; /* final event built when retired */
            continue;
        }
        bool closed = false; /* the grammar's value is closed: nothing but the end may follow */
        if (r->gm) {
            if (dsi__engine_grammar_advance(r, tok))
                dsi_log(DSI_LOG_ERROR, "engine", "request %llu: sampled token %d outside its grammar",
                        (unsigned long long)r->id, tok);
            closed = dsi_grammar_matcher_finished(r->gm);
        }
        if (r->n_tokens - r->n_prompt >= r->max_tokens && !closed) {
            ev.finished = true;
            ev.finish = DSI_FINISH_LENGTH;
            r->final_ev = ev;
            r->fin = DSI_FINISH_LENGTH;
            continue;
        }
        r->cb(r->user, &ev);
        if (closed) r->fin = DSI_FINISH_STOP; /* no step spent on a forced end token */
    }
    bool dead = false;
    if (rc != 0) {
        dead = e->be->ops->dead && e->be->ops->dead(e->be);
        dsi_log(DSI_LOG_ERROR, "engine", "step failed (%s): %s; failing %d sequences%s", dsi_err_name(rc),
                err ? err : dsi_strerror(rc), n_b,
                dead ? "; the backend is dead: failing every request and refusing new ones until a restart"
                     : "");
        free(err);
    }

    pthread_mutex_lock(&e->mu);
    e->st.steps_total++;
    if (rc != 0) e->st.step_failures_total++;
    e->st.tokens_total += (uint64_t)e->st.last_step_tokens;
    e->st.generated_total += (uint64_t)generated;
    /* Publish the blocks this step filled (finished sequences' too, before
     * their release below turns them idle). A failed step's K/V is suspect. */
    for (int k = 0; k < n_b && rc == 0; k++)
        dsi_kv_seq_commit(&e->kv, &e->breqs[k]->kv, e->breqs[k]->tokens, e->breqs[k]->n_computed);
    for (int i = 0; i < e->n_running;) {
        struct dsi__req *r = e->running[i];
        bool in_batch = r->step_n > 0;
        enum dsi_finish fin = r->fin;
        r->step_n = 0;
        if (!in_batch || (rc == 0 && fin == DSI_FINISH_NONE)) {
            i++;
            continue;
        }
        running_remove_at(e, i);
        dsi__engine_live_remove(e, r);
        dsi_kv_seq_release(&e->kv, &r->kv);
        if (rc != 0) {
            retire(done, r, DSI_FINISH_ERROR, rc);
        } else if (fin == DSI_FINISH_STOP) {
            retire(done, r, DSI_FINISH_STOP, 0);
        } else {
            /* LENGTH: keep the event with the last token built above. */
            r->done_next = *done;
            *done = r;
        }
    }
    if (dead) {
        e->dead = true;
        retire_all(e, DSI_FINISH_ERROR, rc, done);
    }
    pthread_mutex_unlock(&e->mu);
}

/* Retires every running and waiting request with finish/error onto *done
 * (caller holds mu). */
static void retire_all(struct dsi_engine *e, enum dsi_finish finish, int error, struct dsi__req **done) {
    while (e->n_running > 0) {
        struct dsi__req *r = e->running[e->n_running - 1];
        e->n_running--;
        dsi__engine_live_remove(e, r);
        dsi_kv_seq_release(&e->kv, &r->kv);
        retire(done, r, finish, error);
    }
    while (e->wait_head) {
        struct dsi__req *r = e->wait_head;
        dsi__engine_wait_remove(e, r);
        dsi__engine_live_remove(e, r);
        dsi_kv_seq_release(&e->kv, &r->kv);
        retire(done, r, finish, error);
    }
}

/* Destroy: every request still known gets a CANCELLED final event. */
static void stop_all(struct dsi_engine *e) {
    struct dsi__req *done = NULL;
    pthread_mutex_lock(&e->mu);
    retire_all(e, DSI_FINISH_CANCELLED, 0, &done);
    pthread_mutex_unlock(&e->mu);
    deliver_done(done);
}

void *dsi__engine_sched_main(void *arg) {
    struct dsi_engine *e = arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        while (!e->stopping && e->n_running == 0 && e->n_waiting == 0)
            pthread_cond_wait(&e->cv, &e->mu);
        if (e->stopping) break;
        struct dsi__req *done = NULL;
        collect_expired(e, dsi_now_ms(), &done);
        grow_running(e);
        admit(e);
        int n_b = plan_batch(e);
        pthread_mutex_unlock(&e->mu);

        deliver_done(done);
        done = NULL;
        if (n_b > 0) {
            run_batch(e, n_b, &done);
            deliver_done(done);
        }

        pthread_mutex_lock(&e->mu);
        if (e->o.check_kv) check_kv(e);
        if (n_b == 0 && !e->stopping && e->n_waiting > 0) {
            /* Nothing could run (all waiting ones were retired or none fits yet):
             * sleep briefly instead of spinning; a submit or cancel wakes us. */
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_nsec += 5 * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&e->cv, &e->mu, &ts);
        }
    }
    pthread_mutex_unlock(&e->mu);
    stop_all(e);
    return NULL;
}
