/*
 * srv.h: the server's private state, shared by server.c (lifecycle, signals),
 * http.c (libmicrohttpd handlers, routing, auth) and gen.c (generation requests:
 * engine callback, streaming, response JSON).
 *
 * Threads: a pool of MHD worker threads (http_threads) runs handlers and stream
 * readers, each worker its own connections, so handlers run concurrently and
 * everything they share is atomic, locked or read-only after start; the engine's
 * scheduler thread runs gen callbacks; the guard thread (guard.c) closes stalled
 * connections; the main thread runs dsi_server_run.
 * A struct dsi__gen is shared by its connection and the engine and freed when both
 * have let go (refs); its mutex guards everything below it.
 */
#ifndef DSI_SERVER_SRV_H
#define DSI_SERVER_SRV_H

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>

#include "dsinfer/auth.h"
#include "dsinfer/backend.h"
#include "dsinfer/config.h"
#include "dsinfer/engine.h"
#include "dsinfer/model.h"
#include "dsinfer/runtime.h"
#include "dsinfer/tok.h"
#include "internal.h"

/* LEAVING: SIGTERM came and drain_grace_ms runs: /health/ready is 503 so balancers
 * and keepalived move traffic away, but requests are still served (each answer
 * closes its connection). DRAINING: new requests get 503, running ones finish.
 * FAILED: the load failed, or the backend died at run time (dsi_engine_dead):
 * every probe and request gets 503 and the watchdog pings stop, so that the
 * supervisor restarts the process. */
enum dsi__state { DSI__ST_LOADING, DSI__ST_READY, DSI__ST_LEAVING, DSI__ST_DRAINING, DSI__ST_FAILED };

struct dsi_server {
    const struct dsi_config *cfg; /* borrowed: outlives the server */
    _Atomic int state;            /* enum dsi__state */
    struct dsi_runtime *rt;        /* model, tokenizer, backend, engine (owned) */
    struct dsi_tokenizer *tok;     /* rt's */
    struct dsi_token_trie *trie;   /* grammar masks; built at the first grammar request, under mu */
    struct dsi_engine *eng;        /* rt's; NULL once stopped; read under eng_lock */
    pthread_rwlock_t eng_lock;     /* handlers read-lock around engine calls */
    struct dsi_auth *auth;
    struct dsi_audit *audit;
    struct dsi__smetrics *metrics;
    struct MHD_Daemon *d;
    struct dsi__guard *guard;      /* slowloris guard (guard.c); NULL before http start */
    char *cert_pem, *key_pem, *ca_pem;
    pthread_mutex_t tls_mu;        /* guards creds */
    struct dsi__tls_creds *creds;  /* current certificate + key (tlslive.c) */
    char fingerprint[97];
    int port;                      /* bound port */
    bool tls;
    bool raw_lines;                /* framing.c may check line ends (MHD 0.9.75) */
    char model_name[256];          /* the primary name: model_names[0] */
    char model_names[DSI_MAX_MODEL_NAMES][256]; /* every name the model answers to (names.c) */
    int n_model_names;
    char model_names_nl[DSI_MAX_MODEL_NAMES * 256]; /* the same joined by '\n' (auth's model list) */
    enum dsi_chat_format chat_format;
    bool reasoning;
    int32_t stop_ids[DSI_MAX_STOP_IDS];
    int n_stop_ids;
    int context_tokens;            /* prompt + completion per sequence */
    int max_prompt_tokens;
    int default_max_tokens;
    long created;                  /* model "created" (start time) */
    _Atomic uint64_t next_id;
    _Atomic int active;            /* connections with a context */
    pthread_mutex_t mu;            /* guards gens */
    struct dsi__gen *gens;         /* live generations (for shutdown) */
    pthread_mutex_t slots_mu;      /* guards slots (slots.c) */
    struct dsi__slot *slots;       /* keys with generations in flight and how many */
    int n_slots, cap_slots;
    int sigfd;
    char *config_path;             /* for SIGHUP; NULL: reload keys from the same paths */
    int n_args;
    char **args;                   /* command-line overrides re-applied on SIGHUP */
};

/* One of a generation's n choices (engine sequence engine_id + index). Guarded
 * by its gen's mu. */
struct dsi__choice {
    struct dsi__gen *g;
    int index;
    bool finished, need_cancel, cancel_sent, stop_hit, got_token;
    enum dsi_finish finish;
    int error;
    int n_completion;               /* this choice's tokens so far */
    struct dsi_tok_stream *ts;
    struct dsi__textgen tg;
    struct dsi__sbuf content, reasoning; /* non-streaming answer (and with tools: the held one) */
    struct dsi__toolscan scan;      /* tool_mode 1: finds this choice's calls as it streams */
    struct dsi__sbuf calls;         /* tool_calls JSON array (non-streaming; forced: the stream's too) */
    int n_calls;
    struct dsi__sbuf lp;            /* logprob entries (JSON, comma-separated) not yet sent */
    struct dsi__sbuf lp_tokens, lp_values, lp_tops; /* legacy completions logprobs */
    int n_lp;
    double t_last;
};

struct dsi__gen {
    pthread_mutex_t mu;
    int refs;                      /* connection + engine */
    struct dsi_server *s;
    struct dsi__gen *next, *prev;  /* in s->gens, under s->mu */
    struct MHD_Connection *conn;   /* valid while !conn_gone */
    bool suspended, conn_gone, submitted;
    bool finished;                 /* every choice's final event came (or shutdown ended it) */
    bool engine_ref;               /* the engine still holds a ref (not every final event yet) */
    uint64_t engine_id;            /* choice 0's; choice i is engine_id + i */
    /* what the client asked */
    bool chat, stream, include_usage, logprobs;
    int top_logprobs;
    char *stops[DSI__MAX_STOPS];
    int n_stops;
    struct dsi_grammar *grammar;    /* owned (taken from the request); the engine borrows it */
    int tool_mode;                  /* 0: no tools; 1: auto (calls in the format's syntax); 2: forced (the JSON is the calls) */
    enum dsi__tool_syntax tool_syn; /* the syntax the prompt showed (each choice's scanner) */
    char *prefill;                  /* tool_mode 2 in a native syntax: the call's prefilled opening */
    char id[48];
    char principal[64];
    uint64_t cache_ns[2];           /* prefix cache namespace (dsi__gen_cache_ns) */
    uint64_t tenant;                /* the key, for the engine's fair sharing (0: no key) */
    int weight;                     /* the key's priority */
    char slot_key[32];              /* holds n_slots slots of this key (slots.c); "": none */
    int n_slots;
    /* state */
    struct dsi__choice *ch;         /* (n_choices) */
    int n_choices, n_finished;
    struct dsi__sbuf out;           /* SSE bytes not yet sent (all choices, in event order) */
    size_t out_off;
    int n_prompt;                   /* the prompt, once */
    int n_completion;               /* every choice's tokens */
    int n_cached;                   /* prompt tokens served from the prefix cache (choice 0's) */
    double t_start;
    bool got_token;                 /* any choice: time to first token recorded */
    size_t accounted;               /* bytes of this stream counted in the buffered-bytes gauge */
    /* A failure after the engine took the request (gen.c gen_fail): the answer
     * stops, every choice is cancelled, the stream's last bytes are tail (one
     * error event + [DONE]), a non-streaming answer is fail's error body. */
    bool failed;
    struct dsi__api_error fail;
    char tail[1024];
    size_t tail_len, tail_off;
    int n_tokens_seen;              /* tokens delivered, all choices (the test fault hook counts them) */
    int fail_token;                 /* test builds: fail the answer at this token (0: never) */
};

/* gen.c */
/* Creates a generation (refs = 1: the connection's) for connection c. */
int dsi__gen_create(struct dsi_server *s, struct MHD_Connection *c, struct dsi__gen **out);
void dsi__gen_release(struct dsi__gen *g);
/* names.c: fills the model names from c (after model_name is set). 0 or DSI_EINVAL. */
int dsi__srv_set_names(struct dsi_server *s, const struct dsi_config *c, char **err);
/* True when name is one of the served model's names. */
bool dsi__srv_model_known(const struct dsi_server *s, const char *name);

/* Sets g's prefix cache namespace: the cache group (prefix_cache_scope global:
 * everyone; else pr's keys-file cache_group, or pr's key id when it has none;
 * no principal: one anonymous group), narrowed by salt (NULL: none). */
void dsi__gen_cache_ns(struct dsi__gen *g, const struct dsi_principal *pr, const char *salt);
/* Submits prompt ids; on success refs += 1 (the engine's) and, for streams, the
 * first chunk is queued. Takes r->grammar (left NULL) when there is one. Returns
 * 0 or the HTTP status with e filled. */
int dsi__gen_submit(struct dsi__gen *g, struct dsi__req *r, const int32_t *ids, int n_ids, int max_tokens,
                    struct dsi__api_error *e);
/* MHD content reader of a stream (cls = gen). */
ssize_t dsi__gen_stream_reader(void *cls, uint64_t pos, char *buf, size_t max);
/* Non-streaming: JSON body of the finished generation (malloc'd) and its status. */
char *dsi__gen_final_json(struct dsi__gen *g, int *status);
/* Connection gone (completed or closed): cancels the engine request if running. */
void dsi__gen_conn_done(struct dsi__gen *g);
/* Cancels what a stop string ended (outside the gen lock: see gen.c). */
void dsi__gen_cancel_if_needed(struct dsi__gen *g);
/* Shutdown: marks every live generation finished and resumes its connection. */
void dsi__gen_abort_all(struct dsi_server *s);
/* dsi_engine_cancel under the engine read lock (no-op once the engine is gone). */
void dsi__eng_cancel(struct dsi_server *s, uint64_t id);

/* answer.c: a generation's JSON (under g->mu; 0 or DSI_ENOMEM). */
int dsi__answer_chunk_begin(struct dsi__gen *g, struct dsi__sbuf *b); /* "data: {...,"choices":[" */
int dsi__answer_chunk_end(struct dsi__gen *g, struct dsi__sbuf *b);   /* "]...}\n\n" (usage null when asked) */
int dsi__answer_role_chunk(struct dsi__choice *c); /* a stream's first chunk of choice c */
/* One streamed chunk of choice c: text s on channel ch (s NULL: none), with its
 * pending logprobs; final: with its finish_reason. */
int dsi__answer_delta(struct dsi__choice *c, enum dsi__channel ch, const char *s, size_t n, bool final);
int dsi__answer_emit(void *choice, enum dsi__channel ch, const char *s, size_t n); /* textgen's emit */
/* Tools: the held answer of c becomes tool_calls (and text) or stays text;
 * a stream gets it now. */
int dsi__answer_tools(struct dsi__choice *c);
int dsi__answer_logprobs(struct dsi__choice *c, const struct dsi_token_event *ev); /* one token's */
/* usage: prompt once, every choice's completion tokens, prefix cache hits. */
int dsi__answer_usage(struct dsi__gen *g, struct dsi__sbuf *b);
int dsi__answer_usage_chunk(struct dsi__gen *g); /* a stream's usage chunk, into g->out */
int dsi__answer_final(struct dsi__gen *g, struct dsi__sbuf *b); /* non-streaming response object */

/* slots.c: per-key concurrency, counted in engine sequences (a request with n
 * choices takes n). acquire: 0, DSI_EFULL (fewer than n left; nothing taken)
 * or DSI_ENOMEM; every 0 is matched by one release of the same n. */
int dsi__slots_acquire(struct dsi_server *s, const char *key_id, int limit, int n);
void dsi__slots_release(struct dsi_server *s, const char *key_id, int n);

/* tlslive.c */
struct dsi__tls_creds;
/* Parses the chain and key and checks that the key belongs to the leaf certificate
 * (test signature); DSI_ETLS with *err saying why otherwise. */
int dsi__tls_creds_load(const char *cert_pem, const char *key_pem, struct dsi__tls_creds **out, char **err);
void dsi__tls_creds_free(struct dsi__tls_creds *c); /* and every older generation */
int dsi__tls_retrieve(gnutls_session_t ss, const gnutls_datum_t *req_ca_dn, int nreqs,
                      const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length, gnutls_pcert_st **pcert,
                      unsigned int *pcert_length, gnutls_privkey_t *privkey);
/* GnuTLS priority string of the listener: TLS 1.3, ECDHE groups only (static). */
const char *dsi__tls_priorities(void);
/* Re-reads the certificate (files, or state_dir's self-signed one) for new handshakes. */
int dsi__tls_reload(struct dsi_server *s, const char *cert_file, const char *key_file, const char *state_dir,
                    char **err);

/* guard.c */
/* One per TCP connection: MHD's socket context (also read by the TLS callback). */
struct dsi__conn {
    struct dsi_server *s;          /* set once */
    int fd;                        /* set once; -1: unknown (never shut down) */
    struct dsi__conn *prev, *next; /* fields below under the guard's lock */
    double t_wait;                 /* when it began waiting for its current request */
    bool reading;                  /* current request not fully received */
    bool have_headers;             /* current request's header block received */
    bool closing;                  /* shut down by the guard */
};
enum dsi__conn_phase {
    DSI__CONN_HEADERS,  /* header block in */
    DSI__CONN_RECEIVED, /* whole request in (or answered early): no deadline */
    DSI__CONN_NEXT,     /* response done: waiting for the next request */
};
/* Starts the guard thread (s->guard). */
int dsi__guard_start(struct dsi_server *s, int deadline_s, int max_conns, char **err);
/* Stops and frees it; call after MHD_stop_daemon. Accepts a server without one. */
void dsi__guard_stop(struct dsi_server *s);
/* MHD_CONNECTION_NOTIFY_STARTED / _CLOSED. open returns NULL when out of memory. */
struct dsi__conn *dsi__guard_open(struct dsi_server *s, struct MHD_Connection *c);
void dsi__guard_close(struct dsi__conn *k);
/* Records a request's progress on connection c. */
void dsi__guard_mark(struct MHD_Connection *c, enum dsi__conn_phase phase);

/* framing.c */
/* Whether the linked libmicrohttpd parses headers in place the way 0.9.75 does, so
 * that line ends can be checked in its read buffer. */
bool dsi__framing_raw_lines_checkable(void);
/* Why the request's framing is unsafe (RFC 9112), or NULL; *status is 400 or 501.
 * version is the handler's version argument. Call before reading any body. */
const char *dsi__framing_error(struct MHD_Connection *c, const char *version, bool raw_lines, int *status);
/* Why a raw request target (before unescaping) is refused, or NULL. */
const char *dsi__uri_error(const char *uri);

/* http.c */
/* The server's state (enum dsi__state) as handlers and probes must see it: a
 * READY or LEAVING server whose engine says its backend is dead turns FAILED
 * here, once and for good (logged once). */
int dsi__srv_state(struct dsi_server *s);
int dsi__http_start(struct dsi_server *s, char **err);
void dsi__http_stop(struct dsi_server *s);

#endif
