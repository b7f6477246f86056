/*
 * test_sampler.c: dsi_sample on small distributions whose outcome can be worked
 * out by hand: greedy ties, penalties (HF repetition, OpenAI presence/frequency),
 * top-k / top-p / min-p support, empirical frequencies of seeded draws, logprobs,
 * and per-sequence reproducibility.
 */
#include <stdint.h>

#include "dsinfer/engine.h"
#include "test.h"

static struct dsi_sampling greedy(void) {
    struct dsi_sampling s;
    dsi_sampling_defaults(&s);
    s.temperature = 0.0f;
    return s;
}

TEST(defaults_are_neutral) {
    struct dsi_sampling s;
    memset(&s, 0x5a, sizeof s);
    dsi_sampling_defaults(&s);
    CHECK(s.temperature == 1.0f && s.top_p == 1.0f && s.top_k == 0 && s.min_p == 0.0f);
    CHECK(s.repetition_penalty == 1.0f && s.presence_penalty == 0.0f && s.frequency_penalty == 0.0f);
    CHECK(!s.logprobs && s.top_logprobs == 0);
}

TEST(greedy_picks_argmax_lowest_id_on_tie) {
    struct dsi_sampling s = greedy();
    struct dsi_sampler_state st;
    dsi_sampler_seed(&st, 1);
    float l[4] = {0.5f, 2.0f, 2.0f, -1.0f};
    CHECK_EQ_INT(dsi_sample(l, 4, &s, &st, NULL, 0, 0, NULL), 1);
    float n[3] = {NAN, -1.0f, NAN};
    CHECK_EQ_INT(dsi_sample(n, 3, &s, &st, NULL, 0, 0, NULL), 1);
}

TEST(bad_arguments_return_minus_one) {
    struct dsi_sampling s = greedy();
    struct dsi_sampler_state st;
    dsi_sampler_seed(&st, 1);
    float l[2] = {0, 1};
    CHECK_EQ_INT(dsi_sample(l, 0, &s, &st, NULL, 0, 0, NULL), -1);
    CHECK_EQ_INT(dsi_sample(NULL, 2, &s, &st, NULL, 0, 0, NULL), -1);
    /* n_prompt > n_history is clamped, out-of-vocab history ids are ignored */
    int32_t h[2] = {7, -3};
    s.repetition_penalty = 2.0f;
    CHECK_EQ_INT(dsi_sample(l, 2, &s, &st, h, 2, 5, NULL), 1);
}

TEST(repetition_penalty_hf_semantics) {
    struct dsi_sampling s = greedy();
    s.repetition_penalty = 2.0f;
    struct dsi_sampler_state st;
    dsi_sampler_seed(&st, 1);
    float l[3] = {2.0f, -2.0f, 1.5f};
    int32_t hist[3] = {0, 1, 0}; /* token 0 twice: penalised once, as HF does */
    CHECK_EQ_INT(dsi_sample(l, 3, &s, &st, hist, 3, 2, NULL), 2);
    CHECK(l[0] == 1.0f);
    CHECK(l[1] == -4.0f);
    CHECK(l[2] == 1.5f);
}

TEST(presence_frequency_penalties_openai_semantics_output_only) {
    struct dsi_sampling s = greedy();
    s.presence_penalty = 0.5f;
    s.frequency_penalty = 0.25f;
    struct dsi_sampler_state st;
    dsi_sampler_seed(&st, 1);
    float l[4] = {1, 1, 1, 1};
    int32_t hist[4] = {3, 0, 0, 1}; /* prompt {3}, output {0,0,1} */
    CHECK_EQ_INT(dsi_sample(l, 4, &s, &st, hist, 4, 1, NULL), 2);
    CHECK_NEAR(l[0], 0.0, 1e-6);
    CHECK_NEAR(l[1], 0.25, 1e-6);
    CHECK(l[2] == 1.0f && l[3] == 1.0f);
}

static void freq(const float *logits, int vocab, const struct dsi_sampling *s, uint64_t seed, int n,
                 int *counts) {
    struct dsi_sampler_state st;
    dsi_sampler_seed(&st, seed);
    float l[8];
    memset(counts, 0, sizeof(int) * (size_t)vocab);
    for (int i = 0; i < n; i++) {
        memcpy(l, logits, sizeof(float) * (size_t)vocab);
        int32_t t = dsi_sample(l, vocab, s, &st, NULL, 0, 0, NULL);
        if (t >= 0 && t < vocab) counts[t]++;
    }
}

TEST(temperature_one_follows_softmax) {
    struct dsi_sampling s;
    dsi_sampling_defaults(&s);
    float l[2] = {0.0f, logf(3.0f)}; /* p = 0.25, 0.75 */
    int c[2];
    freq(l, 2, &s, 42, 20000, c);
    CHECK_NEAR(c[1] / 20000.0, 0.75, 0.015);
    /* temperature 2 flattens: p1 = sqrt3 / (1 + sqrt3) = 0.634 */
    s.temperature = 2.0f;
    freq(l, 2, &s, 43, 20000, c);
    CHECK_NEAR(c[1] / 20000.0, sqrt(3.0) / (1 + sqrt(3.0)), 0.015);
}

TEST(top_k_top_p_min_p_cut_the_tail) {
    struct dsi_sampling s;
    dsi_sampling_defaults(&s);
    float l[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    int c[3];
    s.top_k = 1;
    freq(l, 3, &s, 1, 2000, c);
    CHECK_EQ_INT(c[0], 2000);
    s.top_k = 2;
    freq(l, 3, &s, 2, 20000, c);
    CHECK_EQ_INT(c[2], 0);
    CHECK_NEAR(c[0] / 20000.0, 0.5 / 0.8, 0.015);
    s.top_k = 0;
    s.top_p = 0.6f; /* 0.5 < 0.6 keeps token 1; 0.8 >= 0.6 drops token 2 */
    freq(l, 3, &s, 3, 20000, c);
    CHECK_EQ_INT(c[2], 0);
    CHECK_NEAR(c[0] / 20000.0, 0.625, 0.015);
    s.top_p = 0.45f; /* the first token alone reaches it */
    freq(l, 3, &s, 4, 2000, c);
    CHECK_EQ_INT(c[0], 2000);
    s.top_p = 1.0f;
    s.min_p = 0.5f; /* keep p >= 0.25 */
    freq(l, 3, &s, 5, 20000, c);
    CHECK_EQ_INT(c[2], 0);
    CHECK(c[1] > 0);
    s.min_p = 0.0f;
    freq(l, 3, &s, 6, 20000, c);
    CHECK_NEAR(c[2] / 20000.0, 0.2, 0.015);
}

TEST(logprobs_and_top_logprobs_are_raw_log_softmax) {
    struct dsi_sampling s = greedy();
    s.logprobs = true;
    s.top_logprobs = 3;
    s.repetition_penalty = 4.0f; /* changes the pick, not the reported logprobs */
    struct dsi_sampler_state st;
    dsi_sampler_seed(&st, 9);
    float l[2] = {1.0f, 1.0f + logf(3.0f)}; /* p = 0.25, 0.75 */
    int32_t hist[1] = {1};                  /* penalised: (1 + ln3) / 4 < 1 */
    struct dsi_token_event ev;
    memset(&ev, 0, sizeof ev);
    int32_t t = dsi_sample(l, 2, &s, &st, hist, 1, 1, &ev);
    CHECK_EQ_INT(t, 0);
    CHECK_EQ_INT(ev.token, t);
    CHECK_EQ_INT(ev.n_top, 2);
    CHECK_EQ_INT(ev.top_ids[0], 1);
    CHECK_EQ_INT(ev.top_ids[1], 0);
    CHECK_NEAR(ev.top_logprobs[0], log(0.75), 1e-5);
    CHECK_NEAR(ev.top_logprobs[1], log(0.25), 1e-5);
    CHECK_NEAR(ev.logprob, log(0.25), 1e-5);
}

TEST(same_seed_same_tokens_regardless_of_interleaving) {
    struct dsi_sampling s;
    dsi_sampling_defaults(&s);
    float base[8] = {0, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f}, l[8];
    struct dsi_sampler_state a, b, other;
    dsi_sampler_seed(&a, 1234);
    dsi_sampler_seed(&b, 1234);
    dsi_sampler_seed(&other, 99);
    int32_t ta[64], tb[64];
    for (int i = 0; i < 64; i++) {
        memcpy(l, base, sizeof l);
        ta[i] = dsi_sample(l, 8, &s, &a, NULL, 0, 0, NULL);
    }
    for (int i = 0; i < 64; i++) {
        memcpy(l, base, sizeof l);
        dsi_sample(l, 8, &s, &other, NULL, 0, 0, NULL); /* another sequence in the batch */
        memcpy(l, base, sizeof l);
        tb[i] = dsi_sample(l, 8, &s, &b, NULL, 0, 0, NULL);
    }
    CHECK(!memcmp(ta, tb, sizeof ta));
    struct dsi_sampler_state c;
    dsi_sampler_seed(&c, 1235);
    int diff = 0;
    for (int i = 0; i < 64; i++) {
        memcpy(l, base, sizeof l);
        diff += dsi_sample(l, 8, &s, &c, NULL, 0, 0, NULL) != ta[i];
    }
    CHECK(diff > 0);
}

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* 50k-token vocabulary: every draw lies in the nucleus / top-k set a full sort gives. */
TEST(large_vocab_filters_match_full_sort) {
    enum { V = 50000 };
    static float base[V], sorted[V], l[V];
    uint32_t r = 5;
    for (int i = 0; i < V; i++) {
        r = r * 1664525u + 1013904223u;
        base[i] = (float)(r >> 8) / (float)(1 << 24) * 12.0f; /* spread: a few hundred matter */
    }
    memcpy(sorted, base, sizeof sorted);
    qsort(sorted, V, sizeof(float), cmp_desc);
    /* nucleus of top_p 0.5 at temperature 1: smallest prefix whose mass reaches 0.5 */
    double total = 0, cum = 0;
    for (int i = 0; i < V; i++)
        total += exp((double)sorted[i] - sorted[0]);
    int keep = 0;
    while (cum < 0.5 * total)
        cum += exp((double)sorted[keep++] - sorted[0]);
    float p_cut = sorted[keep - 1], k_cut = sorted[49];
    struct dsi_sampling s;
    dsi_sampling_defaults(&s);
    struct dsi_sampler_state st;
    dsi_sampler_seed(&st, 11);
    int bad_p = 0, bad_k = 0, distinct_hits = 0;
    for (int it = 0; it < 300; it++) {
        s.top_p = 0.5f;
        s.top_k = 0;
        memcpy(l, base, sizeof l);
        int32_t t = dsi_sample(l, V, &s, &st, NULL, 0, 0, NULL);
        bad_p += !(t >= 0 && base[t] >= p_cut);
        distinct_hits += t >= 0 && base[t] < sorted[0];
        s.top_p = 1.0f;
        s.top_k = 50;
        memcpy(l, base, sizeof l);
        t = dsi_sample(l, V, &s, &st, NULL, 0, 0, NULL);
        bad_k += !(t >= 0 && base[t] >= k_cut);
    }
    CHECK_EQ_INT(bad_p, 0);
    CHECK_EQ_INT(bad_k, 0);
    CHECK(keep > 1 && distinct_hits > 0); /* not degenerate: more than the argmax is drawn */
}

int main(void) {
    RUN(defaults_are_neutral);
    RUN(greedy_picks_argmax_lowest_id_on_tie);
    RUN(bad_arguments_return_minus_one);
    RUN(repetition_penalty_hf_semantics);
    RUN(presence_frequency_penalties_openai_semantics_output_only);
    RUN(temperature_one_follows_softmax);
    RUN(top_k_top_p_min_p_cut_the_tail);
    RUN(logprobs_and_top_logprobs_are_raw_log_softmax);
    RUN(same_seed_same_tokens_regardless_of_interleaving);
    RUN(large_vocab_filters_match_full_sort);
    return test_summary();
}
