/*
 * guard.c: per-connection bookkeeping that libmicrohttpd 0.9.75 lacks, against
 * slowloris-style clients.
 *
 * - A whole-request deadline: MHD's connection timeout is reset by every byte, so
 *   a client dripping one byte every few seconds held a connection for as long as
 *   it liked. Here each connection records when it started waiting for its current
 *   request (connection start, or the end of the previous response); until the
 *   request's headers and body are all in, it must finish within
 *   request_read_timeout_s.
 * - Room for new clients: when more than 3/4 of max_connections are open, connections
 *   that have not sent a complete header block for over a second (idle sockets,
 *   half-sent headers, idle keep-alive) are closed, so that sockets opened and
 *   left idle cannot starve new clients.
 *
 * A connection is closed by shutdown(2) on its socket from the guard thread; MHD
 * then sees end-of-file on its own thread and closes it the normal way (handlers,
 * completion callbacks, TLS teardown). The socket stays valid while we may touch
 * it: a struct dsi__conn is unlinked under mu by the CLOSED notification, which MHD
 * sends before it closes the descriptor.
 *
 * Threads: MHD workers call open/close/mark; the guard thread scans every 250 ms.
 * mu guards the list and every field of every struct dsi__conn except s and fd
 * (set once).
 */
#include <microhttpd.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "dsinfer/clock.h"
#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "srv.h"

#define SCAN_MS 250
#define PRESSURE_IDLE_S 1.0 /* under pressure, a connection may wait this long for headers */

struct dsi__guard {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    bool stop;
    struct dsi__conn *head;  /* open connections, under mu */
    int n;                   /* length of the list */
    int deadline_s;
    int max_conns;
};

/* Closes what is over its deadline, and under pressure what sits idle. Returns
 * how many connections were shut down. Caller holds g->mu. */
static int scan(struct dsi__guard *g, double now, int *n_deadline) {
    bool pressure = g->max_conns > 0 && (long long)g->n * 4 > (long long)g->max_conns * 3;
    int closed = 0;
    for (struct dsi__conn *k = g->head; k; k = k->next) {
        if (k->closing || !k->reading) continue;
        double waited = now - k->t_wait;
        bool late = waited > g->deadline_s;
        if (late || (pressure && !k->have_headers && waited > PRESSURE_IDLE_S)) {
            shutdown(k->fd, SHUT_RDWR); /* MHD's thread sees EOF and closes it */
            k->closing = true;
            closed++;
            if (late) (*n_deadline)++;
        }
    }
    return closed;
}

static void *guard_main(void *arg) {
    struct dsi__guard *g = arg;
    pthread_mutex_lock(&g->mu);
    while (!g->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += SCAN_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&g->cv, &g->mu, &ts);
        if (g->stop) break;
        int late = 0, open = g->n;
        int closed = scan(g, dsi_now_s(), &late);
        if (closed)
            dsi_log(DSI_LOG_INFO, "http", "closed %d connection(s): %d past request_read_timeout_s %d, %d idle with %d open",
                    closed, late, g->deadline_s, closed - late, open);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

int dsi__guard_start(struct dsi_server *s, int deadline_s, int max_conns, char **err) {
    struct dsi__guard *g = calloc(1, sizeof *g);
    if (!g) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    g->deadline_s = deadline_s;
    g->max_conns = max_conns;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int r = pthread_mutex_init(&g->mu, NULL);
    if (!r && (r = pthread_cond_init(&g->cv, &ca))) pthread_mutex_destroy(&g->mu);
    pthread_condattr_destroy(&ca);
    if (r) {
        free(g);
        return dsi_seterr(err, DSI_ENOMEM, "cannot create the connection guard's lock");
    }
    if (pthread_create(&g->th, NULL, guard_main, g)) {
        pthread_cond_destroy(&g->cv);
        pthread_mutex_destroy(&g->mu);
        free(g);
        return dsi_seterr(err, DSI_EIO, "cannot start the connection guard thread");
    }
    s->guard = g;
    return 0;
}

void dsi__guard_stop(struct dsi_server *s) {
    struct dsi__guard *g = s->guard;
    if (!g) return;
    pthread_mutex_lock(&g->mu);
    g->stop = true;
    pthread_cond_signal(&g->cv);
    pthread_mutex_unlock(&g->mu);
    pthread_join(g->th, NULL);
    /* MHD is stopped first, so every connection has been closed and unlinked. */
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g);
    s->guard = NULL;
}

struct dsi__conn *dsi__guard_open(struct dsi_server *s, struct MHD_Connection *c) {
    struct dsi__conn *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    k->s = s;
    k->fd = ci ? ci->connect_fd : -1;
    k->t_wait = dsi_now_s();
    k->reading = k->fd >= 0; /* without a descriptor the guard cannot close it: skip */
    struct dsi__guard *g = s->guard;
    if (g) {
        pthread_mutex_lock(&g->mu);
        k->next = g->head;
        if (g->head) g->head->prev = k;
        g->head = k;
        g->n++;
        pthread_mutex_unlock(&g->mu);
    }
    return k;
}

void dsi__guard_close(struct dsi__conn *k) {
    if (!k) return;
    struct dsi__guard *g = k->s->guard;
    if (g) {
        pthread_mutex_lock(&g->mu);
        if (k->prev) k->prev->next = k->next;
        else g->head = k->next;
        if (k->next) k->next->prev = k->prev;
        g->n--;
        pthread_mutex_unlock(&g->mu);
    }
    free(k);
}

void dsi__guard_mark(struct MHD_Connection *c, enum dsi__conn_phase phase) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct dsi__conn *k = ci ? ci->socket_context : NULL;
    if (!k || !k->s->guard) return;
    struct dsi__guard *g = k->s->guard;
    pthread_mutex_lock(&g->mu);
    switch (phase) {
    case DSI__CONN_HEADERS: k->have_headers = true; break;
    case DSI__CONN_RECEIVED: k->reading = false; break;
    case DSI__CONN_NEXT:
        k->reading = k->fd >= 0;
        k->have_headers = false;
        k->t_wait = dsi_now_s();
        break;
    }
    pthread_mutex_unlock(&g->mu);
}
