/*
 * engine.h: requests, continuous batching scheduler, sampling.
 *
 * One scheduler thread owns the running batch. Requests enter a bounded queue,
 * join the batch at the next step (prefill chunked and mixed with decode), and
 * leave when finished or cancelled. Tokens are delivered through a callback that
 * runs on the scheduler thread and must not block (copy the event and signal).
 * See docs/engine.md for the step loop, preemption policy and limits.
 *
 * Event rules:
 * - One event per generated token, in order; the last one has finished set, and
 *   no event follows it. Every accepted request gets exactly one final event.
 * - STOP: the sampled token was one of stop_ids; the final event has token -1 (the
 *   stop token is not text) and n_completion_tokens counts it. With a grammar, STOP
 *   also follows the token that closed the value (no stop token then).
 * - LENGTH: max_tokens reached; the final event carries the last token. LENGTH with
 *   error DSI_ETIMEDOUT: the deadline passed after tokens were delivered.
 * - ERROR: error says why: DSI_ETIMEDOUT (waited longer than queue_timeout_ms, or
 *   the deadline passed before any token), or the backend's code on a failed step:
 *   every request with tokens in that step ends so (its K/V is suspect), the
 *   others go on; when the backend then says it is dead (its ops->dead), every
 *   live request ends with that code and the engine refuses new ones.
 * - CANCELLED: dsi_engine_cancel or dsi_engine_destroy.
 * - Scoring (dsi_request_params.score): one event per position p of the prompt
 *   but the last, in order, with token = prompt[p + 1] and logprob its
 *   log-probability given prompt[0..p]; the last one has finished set and
 *   finish LENGTH. Nothing is sampled.
 *
 * Owner: src/engine.
 */
#ifndef DSINFER_ENGINE_H
#define DSINFER_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "dsinfer/backend.h"

struct dsi_grammar;
struct dsi_token_trie;

#define DSI_MAX_TOP_LOGPROBS 20
#define DSI_MAX_STOP_IDS 16
#define DSI_MAX_N 16 /* sequences one request may sample (dsi_request_params.n) */

struct dsi_sampling {
    float temperature;        /* 0: greedy */
    float top_p;              /* 1: off */
    int top_k;                /* 0: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off (HF semantics, over prompt + output) */
    float presence_penalty;   /* 0: off (OpenAI semantics, over output) */
    float frequency_penalty;  /* 0: off */
    uint64_t seed;            /* same seed -> same tokens, whatever the batch */
    int top_logprobs;         /* 0..DSI_MAX_TOP_LOGPROBS */
    bool logprobs;
};
void dsi_sampling_defaults(struct dsi_sampling *s);
/* The one range check of sampling settings, shared by the engine (submit), the
 * server (request bodies) and the CLI: temperature [0, 2], top_p (0, 1],
 * top_k >= 0, min_p [0, 1], repetition_penalty (0, 10], presence_penalty and
 * frequency_penalty [-2, 2], top_logprobs 0..DSI_MAX_TOP_LOGPROBS (docs/api.md).
 * Checks the float values the sampler will use, so a double that rounds to 0 is
 * refused. Returns 0, or DSI_EINVAL with *param the field's API name (static) and
 * one message per cause, e.g. "top_p must be > 0 and <= 1, got 0". param may be NULL. */
int dsi_sampling_check(const struct dsi_sampling *s, const char **param, char **err);

enum dsi_finish { DSI_FINISH_NONE, DSI_FINISH_STOP, DSI_FINISH_LENGTH, DSI_FINISH_CANCELLED, DSI_FINISH_ERROR };

struct dsi_request_params {
    const int32_t *prompt;    /* copied by submit */
    int n_prompt;
    int max_tokens;           /* 0: as many as max_total_tokens and the KV pool allow */
    struct dsi_sampling sampling;
    int32_t stop_ids[DSI_MAX_STOP_IDS]; /* end the sequence (token not emitted as text) */
    int n_stop_ids;
    int64_t deadline_ms;      /* absolute CLOCK_MONOTONIC ms; 0: engine default */
    /* Constrained decoding (grammar.h); NULL: none. Both are borrowed and must
     * outlive the request's final event; the trie must be the model tokenizer's.
     * Each step only tokens the grammar allows are sampled, and stop_ids only once
     * the value is complete; a closed value ends the sequence with STOP. Requests
     * with a grammar are sampled on the host (a step holding one skips
     * forward_sample). */
    const struct dsi_grammar *grammar;
    const struct dsi_token_trie *grammar_trie;
    /* Prefix cache namespace: K/V blocks are shared only between requests with
     * the same value (the server derives it from the cache group and cache_salt;
     * all zero is one namespace like any other). */
    uint64_t cache_ns[2];
    /* Sequences sampled from the prompt (0 or 1: one; at most DSI_MAX_N). They
     * get consecutive request ids from the one submit returns, and index
     * 0..n-1 in their events; sequence i samples with seed + i. With the prefix
     * cache on, sequences 1..n-1 wait until sequence 0 has computed the prompt
     * and then map its whole blocks: the prompt is computed once. Each sequence
     * is a request of its own for events, cancel and limits. */
    int n;
    /* Fair sharing: requests of one tenant (the server: one API key; 0 is a
     * tenant like any other) share the batch with the others in proportion to
     * their weight (0: 1; at most 100). Admission picks the waiting request of
     * the tenant with the fewest running sequences per unit of weight, and a
     * tenant below its share may take a slot from the one furthest above it
     * (preempting that one's newest sequence), so a tenant with hundreds of
     * requests cannot starve another. */
    uint64_t tenant;
    int weight;
    /* Teacher-forced scoring (perplexity): feed the prompt through the same
     * steps as any request and, instead of generating, report for every
     * position the log-probability of the next prompt token (fp32 logits, a
     * log-softmax over the whole vocabulary in double; the head's padding rows
     * included, as HF's does). Needs n_prompt >= 2 and max_tokens 0; sampling,
     * stop ids, a grammar and n > 1 do not apply. One position per step: a backend's
     * forward gives the logits of a sequence's last new token only. */
    bool score;
};

struct dsi_token_event {
    uint64_t request_id;
    int32_t token;            /* -1 on the final event when no token comes with it */
    float logprob;
    int n_top;
    int32_t top_ids[DSI_MAX_TOP_LOGPROBS];
    float top_logprobs[DSI_MAX_TOP_LOGPROBS];
    bool finished;
    enum dsi_finish finish;
    int error;                /* DSI_E* when finish == DSI_FINISH_ERROR */
    int n_prompt_tokens, n_completion_tokens;
    int n_cached_tokens;      /* prompt tokens whose K/V came from the prefix cache (0 before admission) */
    int index;                /* which of the request's n sequences (0..n-1) */
};

/* Runs on the scheduler thread, with no engine lock held; must not block: copy
 * the event, signal the consumer, return. It may call dsi_engine_cancel,
 * dsi_engine_submit and dsi_engine_get_stats, never dsi_engine_destroy. After an
 * event with finished set no further event comes for that request. */
typedef void (*dsi_token_cb)(void *user, const struct dsi_token_event *ev);

struct dsi_engine_opts {
    int max_running;          /* sequences in the batch (default 64, 1..4096) */
    int max_queued;           /* waiting requests before submit returns DSI_EFULL (default 1024) */
    int prefill_chunk;        /* tokens of prefill per sequence per step (default 512) */
    int max_batch_tokens;     /* tokens per step, all sequences (default 2048, >= max_running) */
    int max_prompt_tokens;    /* default 4096 */
    int max_total_tokens;     /* prompt + completion per sequence (<= context; default 8192) */
    int queue_timeout_ms;     /* waiting longer -> DSI_ETIMEDOUT (default 30000; 0: none) */
    int request_timeout_ms;   /* default deadline from submit (default 600000; 0: none) */
    int sample_vocab;         /* ids >= this are never sampled (host path, and forward_sample
                               * through dsi_sample_params.n_ids): the rows a
                               * checkpoint pads its head with past the tokenizer's last id
                               * (0: the backend's vocab_size) */
    bool prefix_cache;        /* share the K/V of equal prompt prefixes (default on) */
    bool check_kv;            /* tests: verify the block manager's invariants after every step
                               * (dsi_engine_stats.kv_check_failures counts violations) */
};
void dsi_engine_opts_defaults(struct dsi_engine_opts *o);

struct dsi_engine_stats {
    int running, waiting;     /* sequences in the batch; queued (preempted ones included) */
    uint64_t preempted_total; /* preemptions since create */
    uint64_t steps_total;     /* forward() calls */
    uint64_t tokens_total;    /* tokens fed to forward(): prefill, recompute and decode */
    uint64_t generated_total; /* tokens sampled (what clients receive, stop tokens included) */
    int kv_blocks_used, kv_blocks_free;
    int kv_block_tokens;             /* token slots per block */
    uint64_t kv_bytes_per_token;     /* the backend's cache bytes per token (all layers; MLA: latent) */
    uint64_t kv_capacity_tokens;     /* token slots of the whole pool: blocks x block tokens */
    enum dsi_kv_dtype kv_dtype;      /* the cache's element format */
    int last_step_tokens;     /* tokens fed to the last forward() */
    int kv_blocks_cached;     /* published prefix blocks, held or idle (idle ones count as free) */
    uint64_t prefix_hit_tokens;   /* prompt tokens mapped from the cache at first admission */
    uint64_t prefix_miss_tokens;  /* prompt tokens computed at first admission */
    uint64_t kv_evictions_total;  /* idle cached blocks reused for new content */
    uint64_t kv_check_failures;   /* check_kv: steps that broke an invariant */
    uint64_t step_failures_total; /* forward() calls that failed */
    bool dead;                    /* dsi_engine_dead */
};

struct dsi_engine;

/* Creates the engine and starts its scheduler thread. be is borrowed and must
 * outlive the engine; its opts' max_batch_tokens/max_seqs must be >= o's
 * max_batch_tokens/max_running. o NULL: defaults. Returns 0, DSI_EINVAL with a
 * message naming the bad option, or DSI_ENOMEM. */
int dsi_engine_create(struct dsi_backend *be, const struct dsi_engine_opts *o, struct dsi_engine **out,
                      char **err);
/* Queues a request (n sequences: ids *request_id .. *request_id + n - 1). Errors
 * at once (DSI_EINVAL, DSI_ERANGE if it can never fit, DSI_EFULL if the queue is
 * full, DSI_ESTATE if draining) without calling cb, and then queues nothing.
 * On success every later outcome arrives as events through cb, one final event
 * per sequence. */
int dsi_engine_submit(struct dsi_engine *e, const struct dsi_request_params *p, dsi_token_cb cb,
                      void *user, uint64_t *request_id, char **err);
/* The request leaves the batch at the next step; its final event has finish CANCELLED
 * (or STOP/LENGTH if the step in flight finished it first).
 * Returns 0, or DSI_ENOENT when the id is unknown or its final event was already sent. */
int dsi_engine_cancel(struct dsi_engine *e, uint64_t request_id);
void dsi_engine_get_stats(struct dsi_engine *e, struct dsi_engine_stats *st);
/* True once a failed step left the backend unusable (its ops->dead said so):
 * every live request got an ERROR final event and submit refuses with
 * DSI_ESTATE. It never turns false again; only a new process (a restart) serves. */
bool dsi_engine_dead(struct dsi_engine *e);
/* Stops accepting submits (DSI_ESTATE); running and queued requests go on to finish. */
void dsi_engine_drain(struct dsi_engine *e);
/* Cancels everything, joins the thread, frees. Accepts NULL. */
void dsi_engine_destroy(struct dsi_engine *e);

/* Sampler, usable without the engine (CLI, tests). rng_state is per sequence. */
struct dsi_sampler_state {
    uint64_t rng[2];
};
void dsi_sampler_seed(struct dsi_sampler_state *st, uint64_t seed);
/* The sequence's next 64 random bits (xoroshiro128++): one call per sampled token,
 * whether the host or the backend turns the draw into a token. */
uint64_t dsi_sampler_next(struct dsi_sampler_state *st);
/* Picks a token from logits (vocab floats, modified in place). history: tokens the
 * penalties look at (prompt then output); n_prompt of them are prompt. */
int32_t dsi_sample(float *logits, int vocab, const struct dsi_sampling *s, struct dsi_sampler_state *st,
                   const int32_t *history, int n_history, int n_prompt, struct dsi_token_event *ev);

#endif
