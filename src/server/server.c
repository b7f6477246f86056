/*
 * server.c: the daemon's lifecycle: listen first (health answers while the model
 * loads: /health/ready is 503), then model + tokenizer + backend + engine (one
 * dsi_runtime_open: src/runtime owns that assembly), then READY. dsi_server_run waits on a signalfd (no polling, no CPU while idle):
 * SIGHUP reloads keys, roles, audit log and log level; SIGTERM/SIGINT drain
 * (ready -> 503; requests still served for drain_grace_ms; then no new requests,
 * running ones finish up to drain_timeout_s).
 *
 * SIGHUP also re-reads the TLS certificate and key: new handshakes use them,
 * connections already open keep theirs (tlslive.c). The client CA for mTLS is
 * read once at start.
 */
#include <errno.h>
#include <libgen.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "dsinfer/clock.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "dsinfer/sdnotify.h"
#include "dsinfer/server.h"
#include "dsinfer/grammar.h"
#include "srv.h"

static int load_model(struct dsi_server *s, char **err);

int dsi_server_args_to_config(int argc, char **argv, struct dsi_config *c, const char **config_path, char **err) {
    /* --config first, so that the other flags override the file. */
    if (config_path) *config_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) return dsi_seterr(err, DSI_EINVAL, "--config needs a file");
            int rc = dsi_config_load_file(c, argv[i + 1], err);
            if (rc) return rc;
            if (config_path) *config_path = argv[i + 1];
            i++;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) || !a[2]) return dsi_seterr(err, DSI_EINVAL, "unexpected argument '%s'", a);
        if (!strcmp(a, "--config")) {
            i++;
            continue;
        }
        char name[128];
        const char *val = NULL;
        const char *eq = strchr(a + 2, '=');
        size_t nl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (nl >= sizeof name) return dsi_seterr(err, DSI_EINVAL, "unknown option '%s'", a);
        memcpy(name, a + 2, nl);
        name[nl] = 0;
        if (eq) val = eq + 1;
        else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2)) val = argv[++i];
        else val = "true"; /* a bare flag: boolean on */
        /* Short spellings from the command-line synopsis. */
        const char *key = !strcmp(name, "model") ? "model_dir" : !strcmp(name, "keys") ? "keys_file" : name;
        int rc = dsi_config_set(c, key, val, err);
        if (rc) return rc;
    }
    return 0;
}

static void block_signals(sigset_t *set) {
    sigemptyset(set);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    /* Threads created from here on (MHD, engine, backend) inherit the mask, so
     * only the signalfd sees these signals. */
    pthread_sigmask(SIG_BLOCK, set, NULL);
}

int dsi_server_create(const struct dsi_config *c, struct dsi_server **out, char **err) {
    *out = NULL;
    char *e2 = NULL;
    int rc = dsi_config_validate(c, err);
    if (rc) return rc;
    struct dsi_server *s = calloc(1, sizeof *s);
    if (!s) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    s->cfg = c;
    s->sigfd = -1;
    atomic_store(&s->state, DSI__ST_LOADING);
    atomic_store(&s->next_id, 1);
    s->created = (long)time(NULL);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->slots_mu, NULL);
    pthread_rwlock_init(&s->eng_lock, NULL);
    pthread_mutex_init(&s->tls_mu, NULL);
    sigset_t set;
    block_signals(&set);
    s->sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (s->sigfd < 0) {
        rc = dsi_seterr(err, DSI_EIO, "signalfd: %s", strerror(errno));
        goto fail;
    }
    if (dsi__smetrics_create(&s->metrics)) {
        rc = dsi_seterr(err, DSI_ENOMEM, "out of memory");
        goto fail;
    }
    const char *name = c->model_name && c->model_name[0] ? c->model_name : NULL;
    if (!name && c->model_dir && c->model_dir[0]) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s", c->model_dir);
        size_t l = strlen(tmp);
        while (l > 1 && tmp[l - 1] == '/') tmp[--l] = 0;
        snprintf(s->model_name, sizeof s->model_name, "%s", basename(tmp));
    } else {
        snprintf(s->model_name, sizeof s->model_name, "%s", name ? name : "model");
    }
    if ((rc = dsi__srv_set_names(s, c, err))) goto fail;

    struct dsi_auth_opts ao = {.keys_file = c->keys_file && c->keys_file[0] ? c->keys_file : NULL,
                               .roles_json = c->roles && c->roles[0] ? c->roles : NULL,
                               .open_health = c->open_health};
    if ((rc = dsi_auth_create(&ao, &s->auth, err))) goto fail;
    if (!ao.keys_file) dsi_log(DSI_LOG_WARN, "auth", "no keys_file: every route except health answers 401");
    if (c->audit_log && c->audit_log[0] && (rc = dsi_audit_open(c->audit_log, &s->audit, err))) goto fail;

    if (!c->plain_http) {
        if ((rc = dsi__tls_material(c->tls_cert, c->tls_key, c->state_dir, &s->cert_pem, &s->key_pem, s->fingerprint,
                                    err)))
            goto fail;
        if ((rc = dsi__tls_creds_load(s->cert_pem, s->key_pem, &s->creds, err))) goto fail;
        if (c->tls_client_ca && c->tls_client_ca[0] &&
            (rc = dsi_read_file(c->tls_client_ca, 1u << 20, &s->ca_pem, NULL, err)))
            goto fail;
    }
    if ((rc = dsi__http_start(s, err))) goto fail;
    dsi_sd_notifyf("STATUS=loading model %s", s->model_name);
    if ((rc = load_model(s, err))) goto fail;
    atomic_store(&s->state, DSI__ST_READY);
    dsi_sd_notifyf("READY=1\nSTATUS=serving %s on port %d", s->model_name, s->port);
    dsi_log(DSI_LOG_INFO, "server", "ready: serving '%s' on port %d", s->model_name, s->port);
    *out = s;
    return 0;
fail:
    free(e2);
    atomic_store(&s->state, DSI__ST_FAILED);
    dsi_server_destroy(s);
    return rc;
}

/* Model, tokenizer, backend and engine come from the runtime (src/runtime owns
 * the policy: verification, fallback, sizing, chat format, stop ids); the server
 * keeps borrowed views of what its handlers read. */
static int load_model(struct dsi_server *s, char **err) {
    const struct dsi_config *c = s->cfg;
    int rc = dsi_runtime_open(c, NULL, &s->rt, err);
    if (rc) return rc;
    struct dsi_runtime *rt = s->rt;
    s->tok = rt->tok;
    pthread_rwlock_wrlock(&s->eng_lock);
    s->eng = rt->eng;
    pthread_rwlock_unlock(&s->eng_lock);
    s->chat_format = rt->chat_format;
    s->reasoning = rt->reasoning;
    memcpy(s->stop_ids, rt->stop_ids, sizeof s->stop_ids);
    s->n_stop_ids = rt->n_stop_ids;
    s->context_tokens = rt->context_tokens;
    s->max_prompt_tokens = rt->max_prompt_tokens;
    s->default_max_tokens = c->default_max_tokens;

    const struct dsi_backend *be = rt->be;
    size_t kv_tokens = (size_t)be->n_kv_blocks * (size_t)be->kv_block_size;
    dsi_log(DSI_LOG_INFO, "server",
            "dsinfer %s: model '%s' (%s, %d layers), dtype %s, backend %s, chat format %s%s, context %d tokens, "
            "KV capacity %zu tokens (%d blocks of %d), verify %.2f s, open %.2f s, backend load %.2f s, total %.2f s",
            DSI_VERSION, s->model_name, rt->model.cfg.architecture, rt->model.cfg.n_layers, c->dtype, be->ops->name,
            dsi_chat_format_name(s->chat_format), s->reasoning ? " (reasoning)" : "", s->context_tokens, kv_tokens,
            be->n_kv_blocks, be->kv_block_size, rt->model.verify_s, rt->model.open_s, rt->backend_s, rt->total_s);
    return 0;
}

void dsi_server_set_reload_source(struct dsi_server *s, const char *config_path, int argc, char **argv) {
    s->config_path = config_path ? strdup(config_path) : NULL;
    s->args = calloc((size_t)(argc > 0 ? argc : 1), sizeof *s->args);
    if (!s->args) return;
    for (int i = 0; i < argc; i++)
        if ((s->args[i] = strdup(argv[i]))) s->n_args = i + 1;
        else break;
}

static void reload(struct dsi_server *s) {
    dsi_sd_notify("RELOADING=1");
    dsi_log(DSI_LOG_INFO, "server", "SIGHUP: reloading keys, roles, TLS certificate, audit log and log level");
    char *err = NULL;
    struct dsi_config fresh;
    bool have_fresh = false;
    if (s->config_path || s->n_args) {
        if (dsi_config_init(&fresh) == 0) {
            have_fresh = true;
            if (dsi_server_args_to_config(s->n_args, s->args, &fresh, NULL, &err) ||
                dsi_config_validate(&fresh, &err)) {
                dsi_log(DSI_LOG_ERROR, "server", "reload: config rejected, keeping the running one: %s", err ? err : "?");
                free(err);
                err = NULL;
                dsi_config_free(&fresh);
                have_fresh = false;
            }
        }
    }
    int rc;
    if (have_fresh) {
        char *restart = NULL;
        if (dsi_config_reload_changes(s->cfg, &fresh, &restart) > 0)
            dsi_log(DSI_LOG_WARN, "server", "reload: changed options that need a restart: %s", restart);
        free(restart);
        struct dsi_auth_opts ao = {.keys_file = fresh.keys_file[0] ? fresh.keys_file : NULL,
                                   .roles_json = fresh.roles[0] ? fresh.roles : NULL, .open_health = fresh.open_health};
        rc = dsi_auth_reload_opts(s->auth, &ao, &err);
        enum dsi_log_level lvl;
        if (fresh.log_level && dsi_log_parse_level(fresh.log_level, &lvl) == 0) dsi_log_set_level(lvl);
    } else {
        rc = dsi_auth_reload(s->auth, &err);
    }
    if (rc) dsi_log(DSI_LOG_ERROR, "server", "reload: keys kept as they were: %s", err ? err : dsi_strerror(rc));
    free(err);
    err = NULL;
    if (s->audit && dsi_audit_reopen(s->audit, &err)) dsi_log(DSI_LOG_ERROR, "server", "reload: audit log: %s", err ? err : "?");
    free(err);
    err = NULL;
    if (s->tls) {
        const struct dsi_config *tc = have_fresh ? &fresh : s->cfg;
        if (dsi__tls_reload(s, tc->tls_cert, tc->tls_key, tc->state_dir, &err))
            dsi_log(DSI_LOG_ERROR, "server", "reload: TLS certificate kept as it was: %s", err ? err : "?");
        free(err);
    }
    if (have_fresh) dsi_config_free(&fresh);
    dsi_log(DSI_LOG_INFO, "server", "reload done");
    dsi_sd_notify("READY=1");
}

int dsi__srv_state(struct dsi_server *s) {
    int st = atomic_load(&s->state);
    if (st != DSI__ST_READY && st != DSI__ST_LEAVING) return st;
    pthread_rwlock_rdlock(&s->eng_lock);
    bool dead = s->eng && dsi_engine_dead(s->eng);
    pthread_rwlock_unlock(&s->eng_lock);
    if (!dead) return st;
    if (atomic_compare_exchange_strong(&s->state, &st, DSI__ST_FAILED))
        dsi_log(DSI_LOG_ERROR, "server",
                "the backend failed and cannot run steps: /health/ready and /health/live answer 503, requests get "
                "503, watchdog pings stop; restart the service (systemd does so by itself)");
    return DSI__ST_FAILED;
}

/* The drain proper: new requests get 503 from now on, running ones may finish
 * until the deadline dsi_server_run returns. */
static int64_t begin_drain(struct dsi_server *s) {
    dsi_log(DSI_LOG_INFO, "server", "draining: new requests get 503, running ones have up to %d s",
            s->cfg->drain_timeout_s);
    atomic_store(&s->state, DSI__ST_DRAINING);
    pthread_rwlock_rdlock(&s->eng_lock);
    if (s->eng) dsi_engine_drain(s->eng);
    pthread_rwlock_unlock(&s->eng_lock);
    return dsi_now_ms() + (int64_t)s->cfg->drain_timeout_s * 1000;
}

/* True once nothing runs, waits or streams any more, or the deadline passed. */
static bool drain_done(struct dsi_server *s, int64_t deadline_ms) {
    struct dsi_engine_stats st = {0};
    pthread_rwlock_rdlock(&s->eng_lock);
    if (s->eng) dsi_engine_get_stats(s->eng, &st);
    pthread_rwlock_unlock(&s->eng_lock);
    pthread_mutex_lock(&s->mu);
    bool gens_left = s->gens != NULL;
    pthread_mutex_unlock(&s->mu);
    bool late = dsi_now_ms() >= deadline_ms;
    if (!late && (st.running || st.waiting || gens_left)) return false;
    if (late && (st.running || st.waiting))
        dsi_log(DSI_LOG_WARN, "server", "drain timeout: cancelling %d running, %d waiting", st.running, st.waiting);
    else dsi_log(DSI_LOG_INFO, "server", "drained");
    return true;
}

/* SIGTERM/SIGINT: readiness turns 503 at once (systemd hears STOPPING=1). With
 * drain_grace_ms, requests are still served for that long (state LEAVING), so that
 * a balancer or keepalived's track script sees the 503 and moves traffic before
 * any request is refused; then the drain. A second stop signal stops at once. */
int dsi_server_run(struct dsi_server *s) {
    uint64_t wd_usec = dsi_sd_watchdog_usec();
    int wd_ms = wd_usec ? (int)(wd_usec / 2000) : -1;
    if (wd_ms == 0) wd_ms = 1;
    int64_t grace_end = 0, drain_deadline = 0; /* dsi_now_ms() times; 0: not in that phase */
    bool pinging = wd_usec != 0;
    for (;;) {
        int timeout = wd_ms; /* idle: block until a signal or a watchdog ping */
        if (drain_deadline) timeout = 100;
        else if (grace_end) {
            int64_t left = grace_end - dsi_now_ms();
            timeout = left < 0 ? 0 : left > 100 ? 100 : (int)left;
        }
        struct pollfd p = {.fd = s->sigfd, .events = POLLIN};
        int n = poll(&p, 1, timeout);
        /* A dead backend is not alive: no more pings, so that systemd's
         * WatchdogSec kills and restarts the service (the logs keep why). */
        if (pinging && dsi__srv_state(s) == DSI__ST_FAILED) {
            pinging = false;
            dsi_sd_notify("STATUS=backend failed; watchdog pings stopped, waiting for a restart");
        }
        if (pinging) dsi_sd_notify("WATCHDOG=1");
        if (n < 0 && errno != EINTR) {
            dsi_log(DSI_LOG_ERROR, "server", "poll: %s", strerror(errno));
            return DSI_EIO;
        }
        struct signalfd_siginfo si;
        while (n > 0 && read(s->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
            if (si.ssi_signo == SIGHUP) {
                reload(s);
            } else if (grace_end || drain_deadline) {
                dsi_log(DSI_LOG_WARN, "server", "second stop signal: stopping now");
                return 0;
            } else {
                const char *sig = si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM";
                dsi_sd_notify("STOPPING=1");
                if (s->cfg->drain_grace_ms > 0) {
                    dsi_log(DSI_LOG_INFO, "server", "%s: not ready; serving %d ms more (drain_grace_ms), then draining",
                            sig, s->cfg->drain_grace_ms);
                    atomic_store(&s->state, DSI__ST_LEAVING);
                    grace_end = dsi_now_ms() + s->cfg->drain_grace_ms;
                } else {
                    dsi_log(DSI_LOG_INFO, "server", "%s: not ready", sig);
                    drain_deadline = begin_drain(s);
                }
            }
        }
        if (grace_end && !drain_deadline && dsi_now_ms() >= grace_end) drain_deadline = begin_drain(s);
        if (drain_deadline && drain_done(s, drain_deadline)) return 0;
    }
}

void dsi_server_destroy(struct dsi_server *s) {
    if (!s) return;
    if (s->d) MHD_quiesce_daemon(s->d); /* no new connections */
    atomic_store(&s->state, DSI__ST_DRAINING);
    pthread_rwlock_wrlock(&s->eng_lock);
    s->eng = NULL;
    pthread_rwlock_unlock(&s->eng_lock);
    /* The engine delivers a CANCELLED final event to every request it holds. */
    dsi_runtime_stop_engine(s->rt);
    dsi__gen_abort_all(s);
    /* MHD must not stop with suspended connections: let resumed ones finish. */
    for (int i = 0; i < 50; i++) {
        pthread_mutex_lock(&s->mu);
        bool parked = false;
        for (struct dsi__gen *g = s->gens; g; g = g->next) parked |= g->suspended;
        pthread_mutex_unlock(&s->mu);
        if (!parked && atomic_load(&s->active) == 0) break;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    dsi__http_stop(s);
    dsi_sd_notify("STATUS=stopped");
    dsi_runtime_close(s->rt);
    dsi_token_trie_destroy(s->trie); /* after the engine: its requests borrowed it */
    dsi_auth_destroy(s->auth);
    dsi_audit_close(s->audit);
    dsi__smetrics_destroy(s->metrics);
    if (s->key_pem) memset(s->key_pem, 0, strlen(s->key_pem));
    free(s->key_pem);
    free(s->cert_pem);
    free(s->ca_pem);
    dsi__tls_creds_free(s->creds);
    pthread_mutex_destroy(&s->tls_mu);
    if (s->sigfd >= 0) close(s->sigfd);
    for (int i = 0; i < s->n_args; i++) free(s->args[i]);
    free(s->args);
    free(s->config_path);
    pthread_rwlock_destroy(&s->eng_lock);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->slots_mu);
    free(s->slots);
    free(s);
}
