/*
 * plan.c: expert-parallel exchange planning (include/dsinfer/ep.h has the
 * layout, the step and the order guarantees). Pure bookkeeping over int32
 * counts: no transport, no floats, no allocation after dsi_ep_plan_init, so
 * the CPU backend's MPI path and a future NCCL path share it.
 *
 * Invariants after dsi_ep_plan_send: send rows 0..n_send-1 are ordered by
 * (expert, token, k); send_displs[r] + send_rows[r] == send_displs[r + 1].
 * After dsi_ep_plan_recv: only counts of own experts from ranks of the own group
 * are non-zero, n_recv <= max_rows, and grp_row is a permutation of
 * 0..n_recv-1.
 */
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/ep.h"
#include "dsinfer/err.h"

int dsi_ep_check(int n_experts, int world, int ep, char **err) {
    if (world < 1 || ep < 1 || n_experts < 1)
        return dsi_seterr(err, DSI_EINVAL, "expert parallel: %d experts over %d ranks in groups of %d",
                          n_experts, world, ep);
    if (world % ep)
        return dsi_seterr(err, DSI_EINVAL,
                          "expert parallel %d does not divide the %d ranks; use a divisor of the number of "
                          "ranks (or leave it out: all ranks)",
                          ep, world);
    if (n_experts % ep)
        return dsi_seterr(err, DSI_EINVAL,
                          "expert parallel %d does not divide this model's %d routed experts; use a number "
                          "of ranks (or --expert-parallel) that divides %d",
                          ep, n_experts, n_experts);
    return 0;
}

void dsi_ep_experts(int n_experts, int ep, int rank, int *e0, int *n) {
    *n = n_experts / ep;
    *e0 = (rank % ep) * *n;
}

int dsi_ep_owner(const struct dsi_ep_plan *p, int src, int e) {
    return src / p->ep * p->ep + e / (p->n_experts / p->ep);
}

void dsi_ep_token_range(int n_tokens, int world, int rank, int *lo, int *hi) {
    *lo = (int)((long long)n_tokens * rank / world);
    *hi = (int)((long long)n_tokens * (rank + 1) / world);
}

int dsi_ep_plan_init(struct dsi_ep_plan *p, int world, int rank, int ep, int n_experts, int top_k,
                     int max_tokens, char **err) {
    memset(p, 0, sizeof *p);
    int rc = dsi_ep_check(n_experts, world, ep, err);
    if (rc) return rc;
    if (rank < 0 || rank >= world || top_k < 1 || top_k > n_experts || max_tokens < 1)
        return dsi_seterr(err, DSI_EINVAL, "expert parallel: rank %d of %d, top_k %d, %d tokens", rank, world,
                          top_k, max_tokens);
    if ((long long)max_tokens * top_k > INT_MAX / 2 || (long long)world * n_experts > INT_MAX / 2)
        return dsi_seterr(err, DSI_EOVERFLOW,
                          "expert parallel: %d tokens x %d experts per token are too many", max_tokens,
                          top_k);
    p->world = world;
    p->rank = rank;
    p->ep = ep;
    p->n_experts = n_experts;
    p->top_k = top_k;
    p->max_rows = max_tokens * top_k;
    dsi_ep_experts(n_experts, ep, rank, &p->e0, &p->n_local);
    size_t we = (size_t)world * (size_t)n_experts, w = (size_t)world, mr = (size_t)p->max_rows;
    p->send_count = calloc(we, sizeof(int32_t));
    p->recv_count = calloc(we, sizeof(int32_t));
    p->cursor = calloc(we, sizeof(int32_t));
    p->send_rows = calloc(w, sizeof(int32_t));
    p->send_displs = calloc(w, sizeof(int32_t));
    p->recv_rows = calloc(w, sizeof(int32_t));
    p->recv_displs = calloc(w, sizeof(int32_t));
    p->pos_of = calloc(mr, sizeof(int32_t));
    p->send_tok = calloc(mr, sizeof(int32_t));
    p->grp_row = calloc(mr, sizeof(int32_t));
    p->grp_start = calloc((size_t)p->n_local + 1, sizeof(int32_t));
    if (!p->send_count || !p->recv_count || !p->cursor || !p->send_rows || !p->send_displs || !p->recv_rows ||
        !p->recv_displs || !p->pos_of || !p->send_tok || !p->grp_row || !p->grp_start)
        return dsi_seterr(err, DSI_ENOMEM, "out of memory for the expert-parallel plan");
    return 0;
}

void dsi_ep_plan_free(struct dsi_ep_plan *p) {
    if (!p) return;
    free(p->send_count);
    free(p->recv_count);
    free(p->cursor);
    free(p->send_rows);
    free(p->send_displs);
    free(p->recv_rows);
    free(p->recv_displs);
    free(p->pos_of);
    free(p->send_tok);
    free(p->grp_row);
    free(p->grp_start);
    memset(p, 0, sizeof *p);
}

int dsi_ep_plan_send(struct dsi_ep_plan *p, const int32_t *idx, int n_tok, char **err) {
    int E = p->n_experts, K = p->top_k, W = p->world;
    if (n_tok < 0 || (long long)n_tok * K > p->max_rows)
        return dsi_seterr(err, DSI_EINVAL, "expert parallel: %d tokens exceed the plan's %d rows", n_tok,
                          p->max_rows);
    int n = n_tok * K;
    memset(p->send_count, 0, (size_t)W * (size_t)E * sizeof(int32_t));
    for (int a = 0; a < n; a++) {
        if (idx[a] < 0 || idx[a] >= E)
            return dsi_seterr(err, DSI_EINVAL, "expert parallel: expert id %d out of range [0, %d)", idx[a],
                              E);
        p->send_count[(size_t)dsi_ep_owner(p, p->rank, idx[a]) * (size_t)E + (size_t)idx[a]]++;
    }
    /* first send row of every (rank, expert), rank-major: rows by expert, then token, then k */
    int32_t at = 0;
    for (int r = 0; r < W; r++) {
        p->send_displs[r] = at;
        for (int e = 0; e < E; e++) {
            p->cursor[(size_t)r * E + e] = at;
            at += p->send_count[(size_t)r * E + e];
        }
        p->send_rows[r] = at - p->send_displs[r];
    }
    for (int a = 0; a < n; a++) {
        size_t ce = (size_t)dsi_ep_owner(p, p->rank, idx[a]) * (size_t)E + (size_t)idx[a];
        int32_t pos = p->cursor[ce]++;
        p->pos_of[a] = pos;
        p->send_tok[pos] = a / K;
    }
    p->n_send = n;
    return 0;
}

int dsi_ep_plan_recv(struct dsi_ep_plan *p, char **err) {
    int E = p->n_experts, W = p->world, g0 = p->rank / p->ep * p->ep;
    long long total = 0;
    for (int s = 0; s < W; s++) {
        p->recv_displs[s] = (int32_t)total;
        long long from_s = 0;
        for (int e = 0; e < E; e++) {
            int32_t n = p->recv_count[(size_t)s * E + e];
            bool mine = e >= p->e0 && e < p->e0 + p->n_local && s >= g0 && s < g0 + p->ep;
            if (n < 0 || (n > 0 && !mine))
                return dsi_seterr(err, DSI_EFORMAT,
                                  "expert parallel: rank %d announced %d rows for expert %d, which rank %d "
                                  "does not run for it",
                                  s, (int)n, e, p->rank);
            from_s += n;
        }
        total += from_s;
        if (total > p->max_rows)
            return dsi_seterr(err, DSI_EFORMAT, "expert parallel: %lld rows announced, at most %d fit", total,
                              p->max_rows);
        p->recv_rows[s] = (int32_t)from_s;
    }
    p->n_recv = (int)total;
    /* grouped order: own expert j, then source s ascending, then arrival order */
    int g = 0;
    for (int j = 0; j < p->n_local; j++) {
        int e = p->e0 + j;
        p->grp_start[j] = g;
        for (int s = g0; s < g0 + p->ep; s++) {
            int32_t row = p->recv_displs[s];
            for (int f = p->e0; f < e; f++)
                row += p->recv_count[(size_t)s * E + f];
            for (int32_t i = 0; i < p->recv_count[(size_t)s * E + e]; i++)
                p->grp_row[g++] = row + i;
        }
    }
    p->grp_start[p->n_local] = g;
    return 0;
}
