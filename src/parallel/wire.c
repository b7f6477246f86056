/*
 * wire.c: the control messages rank 0 sends to the tensor-parallel workers,
 * encoded as flat int32 words (no pointers, no padding, same on every host of a
 * homogeneous cluster), and their validation.
 *
 * A worker treats every message as outside input: a corrupted or mismatched
 * message must end in a clear error, never in an out-of-range read, a KV write
 * outside the pool or a collective that the other ranks do not enter.
 *
 * forward payload: n_seqs, then per sequence
 *   seq_id_lo, seq_id_hi, n_tokens, pos, n_blocks, want_logits, tokens[n_tokens], blocks[n_blocks]
 * create payload: 16 words of options and config fingerprint, then the model dir
 *   bytes packed 4 per word (dir_len in word 15).
 */
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "dsinfer/parallel.h"
#include "dsinfer/err.h"

#define SEQ_WORDS 6

void dsi_tp_hdr_make(uint32_t hdr[DSI_TP_HDR_WORDS], enum dsi_tp_msg type, uint32_t payload_words,
                     uint32_t step) {
    memset(hdr, 0, DSI_TP_HDR_WORDS * sizeof hdr[0]);
    hdr[0] = DSI_TP_MAGIC;
    hdr[1] = DSI_TP_VERSION;
    hdr[2] = (uint32_t)type;
    hdr[3] = payload_words;
    hdr[4] = step;
}

int dsi_tp_hdr_check(const uint32_t hdr[DSI_TP_HDR_WORDS], uint32_t max_payload_words, char **err) {
    if (hdr[0] != DSI_TP_MAGIC)
        return dsi_seterr(err, DSI_EFORMAT, "control message has bad magic 0x%08x", (unsigned)hdr[0]);
    if (hdr[1] != DSI_TP_VERSION)
        return dsi_seterr(
            err, DSI_EFORMAT,
            "control message version %u, this binary speaks %u: run the same dsinfer on every rank",
            (unsigned)hdr[1], (unsigned)DSI_TP_VERSION);
    if (hdr[2] < DSI_TP_MSG_CREATE || hdr[2] > DSI_TP_MSG_SHUTDOWN)
        return dsi_seterr(err, DSI_EFORMAT, "control message has unknown type %u", (unsigned)hdr[2]);
    if (hdr[3] > max_payload_words)
        return dsi_seterr(err, DSI_EFORMAT, "control message payload of %u words exceeds the agreed %u",
                          (unsigned)hdr[3], (unsigned)max_payload_words);
    for (int i = 5; i < DSI_TP_HDR_WORDS; i++)
        if (hdr[i]) return dsi_seterr(err, DSI_EFORMAT, "control message reserved word %d is not zero", i);
    return 0;
}

int dsi_tp_batch_max_words(const struct dsi_tp_limits *lim, size_t *out) {
    if (lim->max_tokens <= 0 || lim->max_seqs <= 0 || lim->max_ctx <= 0 || lim->block_size <= 0)
        return DSI_EINVAL;
    size_t max_blocks = ((size_t)lim->max_ctx + (size_t)lim->block_size - 1) / (size_t)lim->block_size;
    size_t seqs = (size_t)lim->max_seqs;
    if (max_blocks > (SIZE_MAX / 4) / seqs) return DSI_EOVERFLOW;
    size_t n = 1 + seqs * SEQ_WORDS + (size_t)lim->max_tokens + seqs * max_blocks;
    if (n > UINT32_MAX) return DSI_EOVERFLOW;
    *out = n;
    return 0;
}

int dsi_tp_batch_check(const struct dsi_batch *b, const struct dsi_tp_limits *lim, char **err) {
    if (!b || b->n_seqs < 0 || (b->n_seqs > 0 && !b->seqs))
        return dsi_seterr(err, DSI_EINVAL, "tensor parallel: malformed batch");
    if (b->n_seqs > lim->max_seqs)
        return dsi_seterr(err, DSI_ERANGE, "batch has %d sequences; at most %d per step", b->n_seqs,
                          lim->max_seqs);
    long long total = 0;
    long long max_blocks = ((long long)lim->max_ctx + lim->block_size - 1) / lim->block_size;
    for (int i = 0; i < b->n_seqs; i++) {
        const struct dsi_batch_seq *s = &b->seqs[i];
        if (s->n_tokens <= 0 || !s->tokens)
            return dsi_seterr(err, DSI_EINVAL, "sequence %d has no new tokens", i);
        if (s->pos < 0) return dsi_seterr(err, DSI_EINVAL, "sequence %d has negative position %d", i, s->pos);
        long long end = (long long)s->pos + s->n_tokens;
        if (end > lim->max_ctx)
            return dsi_seterr(err, DSI_ERANGE, "sequence %d needs %lld positions but the context holds %d", i,
                              end, lim->max_ctx);
        long long need = (end + lim->block_size - 1) / lim->block_size;
        if (!s->block_table || s->n_blocks < need || need > max_blocks)
            return dsi_seterr(err, DSI_EINVAL, "sequence %d: %d KV blocks given, %lld needed", i, s->n_blocks,
                              need);
        for (long long k = 0; k < need; k++)
            if (s->block_table[k] < 0 || s->block_table[k] >= lim->n_kv_blocks)
                return dsi_seterr(err, DSI_EINVAL, "sequence %d: KV block id %d out of range [0, %d)", i,
                                  s->block_table[k], lim->n_kv_blocks);
        for (int t = 0; t < s->n_tokens; t++)
            if (s->tokens[t] < 0 || s->tokens[t] >= lim->vocab_size)
                return dsi_seterr(err, DSI_ERANGE,
                                  "token id %d is out of range: the vocabulary has %d tokens", s->tokens[t],
                                  lim->vocab_size);
        total += s->n_tokens;
        if (total > lim->max_tokens)
            return dsi_seterr(err, DSI_ERANGE, "batch has more than %d tokens per step", lim->max_tokens);
    }
    return 0;
}

int dsi_tp_batch_encode(const struct dsi_batch *b, int block_size, int32_t *words, size_t cap,
                        size_t *n_words, char **err) {
    size_t n = 0;
    if (cap < 1) return dsi_seterr(err, DSI_ENOBUFS, "tensor parallel: message buffer too small");
    words[n++] = b->n_seqs;
    for (int i = 0; i < b->n_seqs; i++) {
        const struct dsi_batch_seq *s = &b->seqs[i];
        /* only the blocks this step touches travel: 0..pos+n_tokens-1 */
        int bs = block_size > 0 ? block_size : 1;
        long long nb = ((long long)s->pos + s->n_tokens + bs - 1) / bs;
        if (s->n_tokens < 0 || s->pos < 0 || nb > s->n_blocks) nb = s->n_blocks;
        size_t need = SEQ_WORDS + (size_t)s->n_tokens + (size_t)nb;
        if (s->n_tokens < 0 || nb < 0 || need > cap - n)
            return dsi_seterr(err, DSI_ENOBUFS, "tensor parallel: message buffer too small");
        words[n++] = (int32_t)(uint32_t)(s->seq_id & 0xffffffffu);
        words[n++] = (int32_t)(uint32_t)(s->seq_id >> 32);
        words[n++] = s->n_tokens;
        words[n++] = s->pos;
        words[n++] = (int32_t)nb;
        words[n++] = s->want_logits ? 1 : 0;
        memcpy(words + n, s->tokens, (size_t)s->n_tokens * sizeof *words);
        n += (size_t)s->n_tokens;
        if (nb) memcpy(words + n, s->block_table, (size_t)nb * sizeof *words);
        n += (size_t)nb;
    }
    *n_words = n;
    return 0;
}

int dsi_tp_batch_decode(const int32_t *words, size_t n_words, const struct dsi_tp_limits *lim,
                        struct dsi_batch_seq *seqs, struct dsi_batch *out, char **err) {
    memset(out, 0, sizeof *out);
    if (n_words < 1) return dsi_seterr(err, DSI_EFORMAT, "forward message is empty");
    int n_seqs = words[0];
    if (n_seqs < 0 || n_seqs > lim->max_seqs)
        return dsi_seterr(err, DSI_EFORMAT, "forward message has %d sequences (0..%d allowed)", n_seqs,
                          lim->max_seqs);
    size_t p = 1;
    for (int i = 0; i < n_seqs; i++) {
        if (n_words - p < SEQ_WORDS)
            return dsi_seterr(err, DSI_EFORMAT, "forward message truncated in sequence %d", i);
        struct dsi_batch_seq *s = &seqs[i];
        s->seq_id = (uint64_t)(uint32_t)words[p] | ((uint64_t)(uint32_t)words[p + 1] << 32);
        s->n_tokens = words[p + 2];
        s->pos = words[p + 3];
        s->n_blocks = words[p + 4];
        int want = words[p + 5];
        p += SEQ_WORDS;
        if (want != 0 && want != 1)
            return dsi_seterr(err, DSI_EFORMAT, "forward message: sequence %d want_logits is %d", i, want);
        s->want_logits = want == 1;
        if (s->n_tokens <= 0 || s->n_tokens > lim->max_tokens || s->n_blocks < 0)
            return dsi_seterr(err, DSI_EFORMAT, "forward message: sequence %d has %d tokens and %d blocks", i,
                              s->n_tokens, s->n_blocks);
        if ((size_t)s->n_tokens + (size_t)s->n_blocks > n_words - p)
            return dsi_seterr(err, DSI_EFORMAT, "forward message truncated in sequence %d", i);
        s->tokens = words + p;
        p += (size_t)s->n_tokens;
        s->block_table = words + p;
        p += (size_t)s->n_blocks;
    }
    if (p != n_words)
        return dsi_seterr(err, DSI_EFORMAT, "forward message has %zu trailing words", n_words - p);
    out->seqs = seqs;
    out->n_seqs = n_seqs;
    int rc = dsi_tp_batch_check(out, lim, err);
    if (rc) {
        memset(out, 0, sizeof *out);
        return DSI_EFORMAT;
    }
    return 0;
}

int dsi_tp_create_encode(const struct dsi_tp_create *c, int32_t *words, size_t *n_words, char **err) {
    size_t len = strnlen(c->dir, sizeof c->dir);
    if (len == 0 || len > DSI_TP_MAX_DIR)
        return dsi_seterr(err, DSI_EINVAL, "tensor parallel: model dir must be 1..%d bytes", DSI_TP_MAX_DIR);
    const struct dsi_backend_opts *o = &c->opts;
    memset(words, 0, DSI_TP_CREATE_WORDS * sizeof *words);
    int32_t head[16] = {(int32_t)o->weight_dtype,
                        o->int8_group_size,
                        (int32_t)o->kv_dtype,
                        o->kv_block_size,
                        (int32_t)(uint32_t)((uint64_t)o->kv_bytes & 0xffffffffu),
                        (int32_t)(uint32_t)((uint64_t)o->kv_bytes >> 32),
                        o->max_batch_tokens,
                        o->n_threads,
                        c->vocab_size,
                        c->hidden_size,
                        c->intermediate_size,
                        c->n_layers,
                        c->n_heads,
                        c->n_kv_heads,
                        c->head_dim,
                        (int32_t)len};
    memcpy(words, head, sizeof head);
    memcpy(words + 16, c->dir, len);
    int32_t *ext = words + 16 + (len + 3) / 4;
    uint32_t frac;
    memcpy(&frac, &o->kv_gpu_fraction, sizeof frac);
    ext[0] = (int32_t)c->backend;
    ext[1] = o->max_seqs;
    ext[2] = (int32_t)frac;
    ext[3] = o->ep_size;
    memcpy(ext + 4, c->nccl_id, DSI_TP_NCCL_ID_BYTES);
    *n_words = 16 + (len + 3) / 4 + DSI_TP_CREATE_EXT;
    return 0;
}

int dsi_tp_create_decode(const int32_t *words, size_t n_words, struct dsi_tp_create *c, char **err) {
    memset(c, 0, sizeof *c);
    if (n_words < 17 + DSI_TP_CREATE_EXT || n_words > DSI_TP_CREATE_WORDS)
        return dsi_seterr(err, DSI_EFORMAT, "create message has %zu words", n_words);
    int32_t len = words[15];
    if (len <= 0 || len > DSI_TP_MAX_DIR || n_words != 16 + ((size_t)len + 3) / 4 + DSI_TP_CREATE_EXT)
        return dsi_seterr(err, DSI_EFORMAT, "create message: model dir length %d does not match %zu words",
                          (int)len, n_words);
    memcpy(c->dir, words + 16, (size_t)len);
    c->dir[len] = 0;
    const unsigned char *dir_bytes = (const unsigned char *)(words + 16);
    for (size_t k = (size_t)len; k % 4; k++)
        if (dir_bytes[k])
            return dsi_seterr(err, DSI_EFORMAT, "create message: padding after the model dir is not zero");
    if (strlen(c->dir) != (size_t)len)
        return dsi_seterr(err, DSI_EFORMAT, "create message: model dir contains a NUL byte");
    struct dsi_backend_opts *o = &c->opts;
    if (words[0] < DSI_W_F32 || words[0] > DSI_W_INT8 || words[2] < DSI_KV_F32 || words[2] > DSI_KV_INT8)
        return dsi_seterr(err, DSI_EFORMAT, "create message: unknown weight dtype %d or kv dtype %d",
                          (int)words[0], (int)words[2]);
    o->weight_dtype = (enum dsi_weight_dtype)words[0];
    o->int8_group_size = words[1];
    o->kv_dtype = (enum dsi_kv_dtype)words[2];
    o->kv_block_size = words[3];
    uint64_t kvb = (uint64_t)(uint32_t)words[4] | ((uint64_t)(uint32_t)words[5] << 32);
    if (kvb > SIZE_MAX) return dsi_seterr(err, DSI_EFORMAT, "create message: kv_bytes too large");
    o->kv_bytes = (size_t)kvb;
    o->max_batch_tokens = words[6];
    o->n_threads = words[7];
    if (o->int8_group_size < 0 || o->kv_block_size < 0 || o->max_batch_tokens < 0 || o->n_threads < 0 ||
        o->kv_block_size > 65536 || o->max_batch_tokens > (1 << 24) || o->n_threads > 4096)
        return dsi_seterr(err, DSI_EFORMAT, "create message: option out of range");
    c->vocab_size = words[8];
    c->hidden_size = words[9];
    c->intermediate_size = words[10];
    c->n_layers = words[11];
    c->n_heads = words[12];
    c->n_kv_heads = words[13];
    c->head_dim = words[14];
    for (int i = 8; i <= 14; i++)
        if (words[i] <= 0)
            return dsi_seterr(err, DSI_EFORMAT, "create message: config size %d is not positive", i);
    const int32_t *ext = words + 16 + ((size_t)len + 3) / 4;
    float frac;
    uint32_t fbits = (uint32_t)ext[2];
    memcpy(&frac, &fbits, sizeof frac);
    if (ext[0] != DSI_TP_BACKEND_CPU && ext[0] != DSI_TP_BACKEND_CUDA)
        return dsi_seterr(err, DSI_EFORMAT, "create message: unknown backend %d", (int)ext[0]);
    if (ext[1] < 0 || ext[1] > (1 << 24) || !(frac >= 0.f && frac <= 1.f) || ext[3] < 0 || ext[3] > 4096)
        return dsi_seterr(err, DSI_EFORMAT,
                          "create message: max_seqs, kv_gpu_fraction or ep_size out of range");
    if (ext[0] == DSI_TP_BACKEND_CPU)
        for (int k = 0; k < DSI_TP_NCCL_ID_BYTES / 4; k++)
            if (ext[4 + k])
                return dsi_seterr(err, DSI_EFORMAT, "create message: an NCCL id for the CPU backend");
    c->backend = (enum dsi_tp_backend)ext[0];
    o->max_seqs = ext[1];
    o->kv_gpu_fraction = frac;
    o->ep_size = ext[3];
    memcpy(c->nccl_id, ext + 4, DSI_TP_NCCL_ID_BYTES);
    return 0;
}
