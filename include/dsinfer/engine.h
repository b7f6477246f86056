/*
 * engine.h: requests, continuous batching scheduler, sampling.
 *
 * One scheduler thread owns the running batch. Requests enter a bounded queue,
 * join the batch at the next step (prefill chunked and mixed with decode), and
 * leave when finished or cancelled. Tokens are delivered through a callback that
 * runs on the scheduler thread and must not block (copy the event and signal).
 *
 * Owner: src/engine.
 */
#ifndef DSINFER_ENGINE_H
#define DSINFER_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "dsinfer/backend.h"

#define DSI_MAX_TOP_LOGPROBS 20
#define DSI_MAX_STOP_IDS 16

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

enum dsi_finish { DSI_FINISH_NONE, DSI_FINISH_STOP, DSI_FINISH_LENGTH, DSI_FINISH_CANCELLED, DSI_FINISH_ERROR };

struct dsi_request_params {
    const int32_t *prompt;    /* copied by submit */
    int n_prompt;
    int max_tokens;
    struct dsi_sampling sampling;
    int32_t stop_ids[DSI_MAX_STOP_IDS]; /* end the sequence (token not emitted as text) */
    int n_stop_ids;
    int64_t deadline_ms;      /* absolute CLOCK_MONOTONIC ms; 0: engine default */
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
};

/* Runs on the scheduler thread; must not block. After an event with finished set
 * no further event comes for that request. */
typedef void (*dsi_token_cb)(void *user, const struct dsi_token_event *ev);

struct dsi_engine_opts {
    int max_running;          /* sequences in the batch (default 64) */
    int max_queued;           /* waiting requests before submit returns DSI_EFULL */
    int prefill_chunk;        /* tokens of prefill per sequence per step */
    int max_batch_tokens;     /* tokens per step, all sequences */
    int max_prompt_tokens;
    int max_total_tokens;     /* prompt + completion per sequence (<= context) */
    int queue_timeout_ms;     /* waiting longer -> DSI_ETIMEDOUT */
    int request_timeout_ms;   /* default deadline */
};
void dsi_engine_opts_defaults(struct dsi_engine_opts *o);

struct dsi_engine_stats {
    int running, waiting;
    uint64_t preempted_total, steps_total, tokens_total;
    int kv_blocks_used, kv_blocks_free;
    int last_step_tokens;
};

struct dsi_engine;

int dsi_engine_create(struct dsi_backend *be, const struct dsi_engine_opts *o, struct dsi_engine **out,
                      char **err);
/* Queues a request. Errors at once (DSI_EINVAL, DSI_ERANGE if it can never fit,
 * DSI_EFULL if the queue is full, DSI_ESTATE if draining) without calling cb. */
int dsi_engine_submit(struct dsi_engine *e, const struct dsi_request_params *p, dsi_token_cb cb,
                      void *user, uint64_t *request_id, char **err);
/* The request leaves the batch at the next step; its final event has finish CANCELLED. */
int dsi_engine_cancel(struct dsi_engine *e, uint64_t request_id);
void dsi_engine_get_stats(struct dsi_engine *e, struct dsi_engine_stats *st);
/* Stops admitting; running requests go on. */
void dsi_engine_drain(struct dsi_engine *e);
/* Cancels everything, joins the thread, frees. Accepts NULL. */
void dsi_engine_destroy(struct dsi_engine *e);

/* Sampler, usable without the engine (CLI, tests). rng_state is per sequence. */
struct dsi_sampler_state {
    uint64_t rng[2];
};
void dsi_sampler_seed(struct dsi_sampler_state *st, uint64_t seed);
/* Picks a token from logits (vocab floats, modified in place). history: tokens the
 * penalties look at (prompt then output); n_prompt of them are prompt. */
int32_t dsi_sample(float *logits, int vocab, const struct dsi_sampling *s, struct dsi_sampler_state *st,
                   const int32_t *history, int n_history, int n_prompt, struct dsi_token_event *ev);

#endif
