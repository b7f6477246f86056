/*
 * ep.h: expert-parallel exchange planning for the routed experts of DeepSeek
 * MoE layers (src/ep). It decides who sends which rows where, where each row
 * lands, and in which order results are combined; it moves no data itself, so
 * any transport can carry the plan out: MPI_Alltoall(v) on the CPU backend
 * (src/parallel/shard.c) today, NCCL grouped send/recv later.
 *
 * Layout. `world` ranks form world/ep groups of `ep` consecutive ranks; each
 * group holds every routed expert once: the rank at slot s = rank % ep of its
 * group owns experts [s*E/ep, (s+1)*E/ep) (ep divides world and E; checked by
 * dsi_ep_check). With ep == world (the default) every rank holds E/world experts.
 * A rank routes its own token rows (dsi_ep_token_range of the step's tokens)
 * and sends each (token, k) assignment to the owner of the chosen expert in its
 * own group.
 *
 * One MoE layer, on every rank (in this order):
 *   dsi_ep_plan_send(idx of this rank's n_tok tokens, top_k each):
 *       send_count (world, E): rows for (rank r, expert e); send_rows/displs per
 *       rank; pos_of[t*K + k]: the send row of assignment (t, k); send_tok[p]:
 *       the token of send row p. Send rows are ordered by expert, then token,
 *       then k (owners are monotonic in e inside a group, so this is also
 *       destination-major, as an all-to-all wants).
 *   transport: all-to-all of send_count, E words per rank -> recv_count (world, E)
 *   dsi_ep_plan_recv: recv_rows/displs per source rank (its rows arrive
 *       expert-major as it sent them); every count is checked like outside
 *       input; then the grouped order: for each own expert, sources ascending,
 *       rows in arrival order: grp_start[j]..grp_start[j+1] are own expert j's
 *       positions, grp_row[g] the receive row of position g.
 *   transport: rows out (send layout -> receive layout); the expert outputs go
 *       back the reverse way into the send layout.
 *   combine: token t's output = shared experts + sum over k = 0..K-1 (selection
 *       order) of w[t*K + k] * back[pos_of[t*K + k]].
 * Every order is fixed by the plan and the routing, never by arrival, so a
 * token's result is the same whatever the number of ranks: with row-independent
 * expert matmuls the combine adds exactly the terms of one process, in the same
 * order.
 */
#ifndef DSINFER_EP_H
#define DSINFER_EP_H

#include <stdint.h>

struct dsi_ep_plan {
    int world, rank, ep, n_experts, top_k;
    int e0, n_local;                  /* this rank's experts [e0, e0 + n_local) */
    int max_rows;                     /* rows one step may send, and receive */
    int32_t *send_count;              /* (world, n_experts) */
    int32_t *recv_count;              /* (world, n_experts): the transport fills it */
    int32_t *send_rows, *send_displs; /* (world) rows to each rank, first row of each */
    int32_t *recv_rows, *recv_displs; /* (world) rows from each rank, first row of each */
    int32_t *pos_of;                  /* (max_rows) send row of assignment t*top_k + k */
    int32_t *send_tok;                /* (max_rows) token of send row p */
    int32_t *grp_start;               /* (n_local + 1) grouped positions of each own expert */
    int32_t *grp_row;                 /* (max_rows) receive row of grouped position g */
    int32_t *cursor;                  /* (world, n_experts) scratch */
    int n_send, n_recv;               /* rows of the current step */
};

/* 0 when ep ranks per group split n_experts over world ranks (ep >= 1 divides
 * world and n_experts); else DSI_EINVAL with a message naming the numbers. */
int dsi_ep_check(int n_experts, int world, int ep, char **err);
/* The experts [*e0, *e0 + *n) that rank holds. Pre: dsi_ep_check passed. */
void dsi_ep_experts(int n_experts, int ep, int rank, int *e0, int *n);
/* The rank that runs expert e for the tokens of rank src (its group's owner). */
int dsi_ep_owner(const struct dsi_ep_plan *p, int src, int e);
/* Token rows [*lo, *hi) of n_tokens that rank routes (an even split; the last
 * ranks take the remainder, a rank may get none). */
void dsi_ep_token_range(int n_tokens, int world, int rank, int *lo, int *hi);

/* Sizes p for steps of at most max_tokens tokens (of the whole step; the most
 * rows one rank can receive is max_tokens * top_k). Returns 0, DSI_EINVAL (bad
 * layout, message says why), DSI_EOVERFLOW or DSI_ENOMEM. The caller owns p;
 * dsi_ep_plan_free releases its arrays (also after a failed init). */
int dsi_ep_plan_init(struct dsi_ep_plan *p, int world, int rank, int ep, int n_experts, int top_k,
                     int max_tokens, char **err);
void dsi_ep_plan_free(struct dsi_ep_plan *p);
/* Plans the send side from idx (n_tok * top_k expert ids, token-major).
 * DSI_EINVAL for an expert id out of range or too many rows. */
int dsi_ep_plan_send(struct dsi_ep_plan *p, const int32_t *idx, int n_tok, char **err);
/* Plans the receive side from recv_count. DSI_EFORMAT when a count is negative,
 * names an expert this rank does not hold, comes from outside its group or the
 * total passes max_rows (another rank's words: checked, never trusted). */
int dsi_ep_plan_recv(struct dsi_ep_plan *p, char **err);

#endif
