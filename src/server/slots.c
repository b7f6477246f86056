/*
 * slots.c: per-key concurrency (keys file max_concurrent): how many generations
 * of each key are in the engine now, running or queued.
 *
 * A slot is one engine sequence: a request with n choices takes n at once or
 * none. A generation takes its key's slots before anything is reserved for it and gives
 * them back when its gen is freed (the engine's final event and the connection
 * both done), so a client that leaves does not free the slot before the engine
 * has dropped the sequence. Keys without a limit are not counted. One mutex; the
 * table holds only keys with a generation in flight (a few dozen).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "srv.h"

struct dsi__slot {
    char key_id[32];
    int n;
};

int dsi__slots_acquire(struct dsi_server *s, const char *key_id, int limit, int n) {
    pthread_mutex_lock(&s->slots_mu);
    int i = 0;
    while (i < s->n_slots && strcmp(s->slots[i].key_id, key_id)) i++;
    int rc = 0;
    if (i == s->n_slots) {
        if (s->n_slots == s->cap_slots) {
            int cap = s->cap_slots ? s->cap_slots * 2 : 16;
            struct dsi__slot *p = realloc(s->slots, (size_t)cap * sizeof *p);
            if (!p) rc = DSI_ENOMEM;
            else s->slots = p, s->cap_slots = cap;
        }
        if (!rc) {
            memset(&s->slots[i], 0, sizeof s->slots[i]);
            snprintf(s->slots[i].key_id, sizeof s->slots[i].key_id, "%s", key_id);
            s->n_slots++;
        }
    }
    if (!rc && s->slots[i].n > limit - n) rc = DSI_EFULL;
    if (!rc) s->slots[i].n += n;
    /* a refused first request leaves no empty entry behind */
    if (i < s->n_slots && s->slots[i].n == 0) s->slots[i] = s->slots[--s->n_slots];
    pthread_mutex_unlock(&s->slots_mu);
    return rc;
}

void dsi__slots_release(struct dsi_server *s, const char *key_id, int n) {
    pthread_mutex_lock(&s->slots_mu);
    for (int i = 0; i < s->n_slots; i++) {
        if (strcmp(s->slots[i].key_id, key_id)) continue;
        if ((s->slots[i].n -= n) <= 0) s->slots[i] = s->slots[--s->n_slots];
        break;
    }
    pthread_mutex_unlock(&s->slots_mu);
}
