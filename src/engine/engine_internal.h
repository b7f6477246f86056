/*
 * engine_internal.h: the engine's private structs, shared by engine.c (public API,
 * request queue) and sched.c (the scheduler thread).
 *
 * Locking: e->mu guards the fields marked (mu); the scheduler thread also takes
 * it for every change to the running set and the KV cache, so dsi_engine_get_stats
 * sees a consistent picture. Fields marked (sched) are touched only by the
 * scheduler thread. forward() and the event callbacks run without the lock.
 */
#ifndef DSI_ENGINE_INTERNAL_H
#define DSI_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "dsinfer/engine.h"
#include "dsinfer/kvcache.h"

struct dsi__req {
    uint64_t id;
    dsi_token_cb cb;
    void *user;
    struct dsi_sampling sampling;
    int32_t stop_ids[DSI_MAX_STOP_IDS];
    int n_stop_ids;
    int max_tokens;  /* resolved: >= 1; 0 for a scoring request */
    bool score;      /* teacher-forced scoring (dsi_request_params.score) */
    int n_scored;    /* (sched) scoring: positions whose event went out */
    int32_t *tokens; /* (n_prompt + max_tokens) prompt, then generated */
    int n_prompt;
    int n_tokens;                 /* (sched) prompt + generated so far */
    int n_computed;               /* (sched) positions whose K/V sits in the blocks */
    int n_cached;                 /* (mu) prompt tokens mapped from the prefix cache at first admission */
    uint64_t cache_ns[2];         /* prefix cache namespace (dsi_request_params) */
    int index;                    /* sequence index within its request (n > 1) */
    uint64_t leader_id;           /* index > 0: the id of sequence 0, whose prompt blocks it waits for */
    uint64_t tenant;              /* fair sharing (dsi_request_params) */
    int weight;                   /* 1..100 */
    int step_n;                   /* (sched) tokens scheduled in the current step; 0: not in it */
    enum dsi_finish fin;          /* (sched) set when this step's token ends the sequence */
    struct dsi_kv_seq kv;         /* (mu) block table */
    struct dsi_sampler_state rng; /* (sched) survives preemption: recompute resamples nothing */
    int64_t submit_ms;
    int64_t deadline_ms;             /* absolute CLOCK_MONOTONIC ms; 0: none */
    bool cancel_requested;           /* (mu) */
    bool started;                    /* (mu) admitted once: the queue timeout no longer applies */
    struct dsi__req *wprev, *wnext;  /* (mu) waiting queue */
    struct dsi__req *lprev, *lnext;  /* (mu) live list: every request without a final event */
    struct dsi__req *done_next;      /* (sched) finishing list of one step */
    struct dsi_token_event final_ev; /* (sched) the final event, built before delivery */
    struct dsi_grammar_matcher *gm;  /* (sched) constrained decoding; NULL: none */
    const struct dsi_token_trie *gtrie; /* borrowed from the submitter */
    uint32_t *gmask;                 /* (sched) ((vocab + 31) / 32) words */
};

struct dsi_engine {
    struct dsi_backend *be; /* borrowed */
    struct dsi_engine_opts o;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* work arrived, a cancel, or stop */
    pthread_t thread;
    bool stopping, draining;                /* (mu) */
    bool dead;                              /* (mu) the backend cannot run steps any more */
    struct dsi__req *wait_head, *wait_tail; /* (mu) FIFO; preempted ones go to the front */
    int n_waiting;                          /* (mu) */
    struct dsi__req *live_head;             /* (mu) */
    uint64_t next_id;                       /* (mu) */
    struct dsi_kv_cache kv;                 /* (mu) */
    struct dsi__req **running;              /* (mu) (max_running) sorted by id: the newest last */
    int n_running;                          /* (mu) */
    struct dsi_engine_stats st;             /* (mu) counters; gauges are filled by get_stats */
    /* (sched) per-step buffers, sized at create so a step allocates nothing */
    struct dsi_batch_seq *bseqs;       /* (max_running) */
    struct dsi__req **breqs;           /* (max_running) request of each batch entry */
    float *logits;                     /* (max_running, vocab) */
    struct dsi_sample_params *sparams; /* (max_running) forward_sample's per-row settings */
    int32_t *sids;                     /* (max_running) forward_sample's ids */
};

/* Scheduler thread body; arg is the engine. */
void *dsi__engine_sched_main(void *arg);
/* Waiting queue operations (caller holds mu). */
void dsi__engine_wait_push_back(struct dsi_engine *e, struct dsi__req *r);
void dsi__engine_wait_push_front(struct dsi_engine *e, struct dsi__req *r);
void dsi__engine_wait_remove(struct dsi_engine *e, struct dsi__req *r);
/* Removes r from the live list (caller holds mu). */
void dsi__engine_live_remove(struct dsi_engine *e, struct dsi__req *r);
/* Frees r and its buffers; its blocks must be released. */
void dsi__engine_req_free(struct dsi__req *r);

/* constrain.c: grammar-constrained sampling (dsi_request_params.grammar). */
/* Sets r's matcher and mask buffer up; 0 or DSI_ENOMEM. */
int dsi__engine_grammar_init(struct dsi__req *r, const struct dsi_request_params *p, int vocab);
void dsi__engine_grammar_free(struct dsi__req *r);
/* Sets the logits of tokens r's grammar does not allow now to -INFINITY (its stop
 * ids stay only when the value is complete). Returns how many tokens remain. */
int dsi__engine_grammar_mask(struct dsi__req *r, float *logits, int vocab);
/* Advances r's grammar over the sampled tok (not a stop id). 0 or DSI_EINVAL. */
int dsi__engine_grammar_advance(struct dsi__req *r, int32_t tok);

#endif
