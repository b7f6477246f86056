/*
 * test_tok_hostile.c: malformed and hostile tokenizer files get a clear error (the
 * right code and a message naming the problem), never a crash or a hang; plus the
 * small-tokenizer behaviours (Split behaviours, merge forms, lstrip) that the real
 * files do not exercise.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dsinfer/err.h"
#include "dsinfer/tok.h"
#include "test.h"

/* A tiny valid byte-level tokenizer; %s slots: vocab, merges, added, pre-tokenizer
 * steps before ByteLevel, decoder, extra top-level fields. */
#define PRETOK_WS "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s+|[a-z]+\"},\"behavior\":\"Isolated\",\"invert\":false},"
#define VOCAB "{\"a\":0,\"b\":1,\"ab\":2,\"\\u0120\":3,\"c\":5}"
#define MERGES "[\"a b\"]"
#define ADDED "[{\"id\":4,\"content\":\"<s>\",\"special\":true}]"
#define DECODER "{\"type\":\"ByteLevel\"}"

static char *make(const char *vocab, const char *merges, const char *added, const char *pretok, const char *decoder,
                  const char *extra) {
    static const char fmt[] =
        "{%s\"model\":{\"type\":\"BPE\",\"vocab\":%s,\"merges\":%s},\"added_tokens\":%s,"
        "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[%s"
        "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]},\"decoder\":%s}";
    size_t n = strlen(fmt) + strlen(vocab) + strlen(merges) + strlen(added) + strlen(pretok) + strlen(decoder) +
               strlen(extra) + 1;
    char *s = malloc(n);
    snprintf(s, n, fmt, extra, vocab, merges, added, pretok, decoder);
    return s;
}

/* Loads json; returns the code and checks that the error mentions `want`. */
static int load_expect(const char *json, const char *config, int want_rc, const char *want) {
    struct dsi_tokenizer *t = NULL;
    char *err = NULL;
    int rc = dsi_tok_load_mem(json, strlen(json), config, config ? strlen(config) : 0, &t, &err);
    if (rc != want_rc || (want && (!err || !strstr(err, want)))) {
        fprintf(stderr, "  got %s \"%s\", want %s \"%s\"\n", dsi_err_name(rc), err ? err : "", dsi_err_name(want_rc),
                want ? want : "");
        test__failed_checks++;
    }
    if (rc == 0) CHECK(t != NULL);
    if (rc != 0) CHECK(t == NULL);
    dsi_tok_free(t);
    free(err);
    return rc;
}

static void expect(const char *vocab, const char *merges, const char *added, const char *pretok, const char *decoder,
                   int want_rc, const char *want) {
    char *s = make(vocab, merges, added, pretok, decoder, "");
    load_expect(s, NULL, want_rc, want);
    free(s);
}

static int32_t *enc(const struct dsi_tokenizer *t, const char *s, size_t *n) {
    int32_t *ids = NULL;
    *n = 0;
    CHECK_EQ_INT(dsi_tok_encode(t, s, strlen(s), true, &ids, n, NULL), 0);
    return ids;
}

TEST(tiny_tokenizer_loads_and_encodes) {
    char *s = make(VOCAB, MERGES, ADDED, PRETOK_WS, DECODER, "");
    struct dsi_tokenizer *t = NULL;
    CHECK_EQ_INT(dsi_tok_load_mem(s, strlen(s), NULL, 0, &t, NULL), 0);
    free(s);
    if (!t) return;
    size_t n;
    int32_t *ids = enc(t, "ab ab<s>abc", &n);
    /* "ab" " " "ab" <s> "abc": c is id 5; the byte 'd' would be dropped. */
    CHECK(n == 6 && ids[0] == 2 && ids[1] == 3 && ids[2] == 2 && ids[3] == 4 && ids[4] == 2 && ids[5] == 5);
    free(ids);
    ids = enc(t, "add", &n); /* no token for 'd': HF drops it without an unk token */
    CHECK(n == 1 && ids[0] == 0);
    free(ids);
    CHECK_EQ_INT(dsi_tok_vocab_size(t), 6);
    CHECK_EQ_INT(dsi_tok_bos(t), -1);
    dsi_tok_free(t);
}

TEST(merges_as_pairs_and_lowest_rank_first) {
    /* "abc" with merges [b c] (rank 0) then [a b]: b+c wins, so a | bc. */
    char *s = make("{\"a\":0,\"b\":1,\"c\":2,\"ab\":3,\"bc\":4}", "[[\"b\",\"c\"],[\"a\",\"b\"]]", "[]", "", DECODER, "");
    struct dsi_tokenizer *t = NULL;
    CHECK_EQ_INT(dsi_tok_load_mem(s, strlen(s), NULL, 0, &t, NULL), 0);
    free(s);
    if (!t) return;
    size_t n;
    int32_t *ids = enc(t, "abc", &n);
    CHECK(n == 2 && ids[0] == 0 && ids[1] == 4);
    free(ids);
    /* A long word takes the heap path: same rule, leftmost first for equal ranks. */
    char word[301];
    memset(word, 'a', 300);
    word[299] = 'b';
    word[300] = 0;
    ids = enc(t, word, &n);
    CHECK(n == 299 && ids[298] == 3);
    free(ids);
    dsi_tok_free(t);
}

TEST(split_behaviors) {
    /* Removed drops the matches (digits here); invert keeps only the digits. */
    char *s = make("{\"a\":0,\"1\":1,\"aa\":2,\"11\":3}", "[\"a a\",\"1 1\"]", "[]",
                   "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[0-9]\"},\"behavior\":\"Removed\",\"invert\":false},",
                   DECODER, "");
    struct dsi_tokenizer *t = NULL;
    CHECK_EQ_INT(dsi_tok_load_mem(s, strlen(s), NULL, 0, &t, NULL), 0);
    free(s);
    size_t n;
    int32_t *ids = t ? enc(t, "aa1aa", &n) : NULL;
    CHECK(ids && n == 2 && ids[0] == 2 && ids[1] == 2);
    free(ids);
    dsi_tok_free(t);
    t = NULL;
    s = make("{\"a\":0,\"1\":1,\"aa\":2,\"11\":3}", "[\"a a\",\"1 1\"]", "[]",
             "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[0-9]\"},\"behavior\":\"Removed\",\"invert\":true},", DECODER,
             "");
    CHECK_EQ_INT(dsi_tok_load_mem(s, strlen(s), NULL, 0, &t, NULL), 0);
    free(s);
    ids = t ? enc(t, "aa11aa", &n) : NULL;
    /* Inverted: the letters are the "matches" and get removed; each digit is its own piece. */
    CHECK(ids && n == 2 && ids[0] == 1 && ids[1] == 1);
    free(ids);
    dsi_tok_free(t);
    t = NULL;
    /* Contiguous + a literal String pattern: consecutive "1"s form one piece. */
    s = make("{\"a\":0,\"1\":1,\"aa\":2,\"11\":3}", "[\"a a\",\"1 1\"]", "[]",
             "{\"type\":\"Split\",\"pattern\":{\"String\":\"1\"},\"behavior\":\"Contiguous\",\"invert\":false},", DECODER,
             "");
    CHECK_EQ_INT(dsi_tok_load_mem(s, strlen(s), NULL, 0, &t, NULL), 0);
    free(s);
    ids = t ? enc(t, "a11a", &n) : NULL;
    CHECK(ids && n == 3 && ids[0] == 0 && ids[1] == 3 && ids[2] == 0);
    free(ids);
    dsi_tok_free(t);
}

TEST(added_token_lstrip_rstrip) {
    char *s = make(VOCAB, MERGES, "[{\"id\":4,\"content\":\"<s>\",\"special\":false,\"lstrip\":true,\"rstrip\":true}]",
                   PRETOK_WS, DECODER, "");
    struct dsi_tokenizer *t = NULL;
    CHECK_EQ_INT(dsi_tok_load_mem(s, strlen(s), NULL, 0, &t, NULL), 0);
    free(s);
    size_t n;
    int32_t *ids = t ? enc(t, "ab  <s>  ab", &n) : NULL;
    CHECK(ids && n == 3 && ids[0] == 2 && ids[1] == 4 && ids[2] == 2);
    free(ids);
    dsi_tok_free(t);
}

TEST(hostile_json_truncated_at_every_length) {
    char *s = make(VOCAB, MERGES, ADDED, PRETOK_WS, DECODER, "");
    size_t len = strlen(s);
    size_t failures = 0;
    for (size_t cut = 0; cut < len; cut++) {
        struct dsi_tokenizer *t = NULL;
        char *err = NULL;
        int rc = dsi_tok_load_mem(s, cut, NULL, 0, &t, &err);
        if (rc == 0 || t != NULL || !err) failures++;
        dsi_tok_free(t);
        free(err);
    }
    CHECK_EQ_INT(failures, 0);
    load_expect("{\"model\": {\"vocab\": {\"a\": 0", NULL, DSI_EFORMAT, "not valid JSON");
    free(s);
}

TEST(hostile_wrong_shapes) {
    load_expect("[]", NULL, DSI_EFORMAT, "not a JSON object");
    load_expect("{\"decoder\":{\"type\":\"ByteLevel\"}}", NULL, DSI_EFORMAT, "no \"model\"");
    char *s = make(VOCAB, MERGES, ADDED, PRETOK_WS, DECODER, "");
    char *p = strstr(s, "\"BPE\"");
    memcpy(p, "\"WPE\"", 5);
    load_expect(s, NULL, DSI_EUNSUPPORTED, "model.type");
    free(s);
    expect("[1,2]", MERGES, ADDED, PRETOK_WS, DECODER, DSI_EFORMAT, "model.vocab is not an object");
    expect("{\"a\":\"0\"}", "[]", "[]", "", DECODER, DSI_EFORMAT, "not a number");
    expect("{}", "[]", "[]", "", DECODER, DSI_EFORMAT, "empty");
    expect(VOCAB, "{}", ADDED, PRETOK_WS, DECODER, DSI_EFORMAT, "merges is not an array");
    expect(VOCAB, "[[\"a\",\"b\",\"c\"]]", ADDED, PRETOK_WS, DECODER, DSI_EFORMAT, "merge 0");
    expect(VOCAB, "[7]", ADDED, PRETOK_WS, DECODER, DSI_EFORMAT, "merge 0");
    expect(VOCAB, MERGES, "{}", PRETOK_WS, DECODER, DSI_EFORMAT, "added_tokens is not an array");
    expect(VOCAB, MERGES, "[{\"id\":4}]", PRETOK_WS, DECODER, DSI_EFORMAT, "no content");
    expect(VOCAB, MERGES, "[{\"id\":4,\"content\":\"<s>\",\"special\":\"yes\"}]", PRETOK_WS, DECODER, DSI_EFORMAT,
           "non-boolean");
    expect(VOCAB, MERGES, "[{\"id\":4,\"content\":\"<s>\",\"single_word\":true}]", PRETOK_WS, DECODER,
           DSI_EUNSUPPORTED, "single_word");
}

TEST(hostile_ids) {
    expect("{\"a\":-1}", "[]", "[]", "", DECODER, DSI_ERANGE, "-1");
    expect("{\"a\":1e300}", "[]", "[]", "", DECODER, DSI_ERANGE, "want an integer");
    expect("{\"a\":2.5}", "[]", "[]", "", DECODER, DSI_ERANGE, "want an integer");
    expect("{\"a\":0,\"b\":10000000}", "[]", "[]", "", DECODER, DSI_ERANGE, "sparse");
    expect("{\"a\":0,\"b\":0}", "[]", "[]", "", DECODER, DSI_EFORMAT, "id 0 twice");
    expect("{\"a\":0,\"a\":1}", "[]", "[]", "", DECODER, DSI_EFORMAT, "token \"a\" twice");
    expect(VOCAB, MERGES, "[{\"id\":99999999999,\"content\":\"x\"}]", PRETOK_WS, DECODER, DSI_ERANGE, "added_tokens id");
    expect(VOCAB, MERGES, "[{\"id\":4,\"content\":\"x\"},{\"id\":4,\"content\":\"y\"}]", PRETOK_WS, DECODER,
           DSI_EFORMAT, "id 4 twice");
}

TEST(hostile_merges) {
    expect(VOCAB, "[\"a zz\"]", ADDED, PRETOK_WS, DECODER, DSI_EFORMAT, "not in model.vocab (\"zz\")");
    expect(VOCAB, "[\"ab\"]", ADDED, PRETOK_WS, DECODER, DSI_EFORMAT, "is not \"a b\"");
    expect(VOCAB, "[\"a b c\"]", ADDED, PRETOK_WS, DECODER, DSI_EFORMAT, "is not \"a b\"");
    /* The merged token must exist too. */
    expect("{\"a\":0,\"b\":1}", "[\"a b\"]", "[]", "", DECODER, DSI_EFORMAT, "(\"ab\")");
}

TEST(hostile_pipeline) {
    expect(VOCAB, MERGES, ADDED,
           "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(unclosed\"},\"behavior\":\"Isolated\",\"invert\":false},",
           DECODER, DSI_EFORMAT, "does not compile");
    expect(VOCAB, MERGES, ADDED,
           "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Sideways\",\"invert\":false},", DECODER,
           DSI_EUNSUPPORTED, "Sideways");
    expect(VOCAB, MERGES, ADDED, "{\"type\":\"Whitespace\"},", DECODER, DSI_EUNSUPPORTED, "Whitespace");
    expect(VOCAB, MERGES, ADDED, "{\"type\":\"Split\",\"pattern\":7,\"behavior\":\"Isolated\"},", DECODER,
           DSI_EFORMAT, "Split pattern");
    expect(VOCAB, MERGES, ADDED, PRETOK_WS, "{\"type\":\"WordPiece\"}", DSI_EUNSUPPORTED, "WordPiece");
    expect(VOCAB, MERGES, ADDED, PRETOK_WS, "null", DSI_EUNSUPPORTED, "decoder");
    /* No ByteLevel step at all. */
    load_expect("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Split\","
                "\"pattern\":{\"Regex\":\"x\"},\"behavior\":\"Isolated\"},\"decoder\":{\"type\":\"ByteLevel\"}}",
                NULL, DSI_EUNSUPPORTED, "ByteLevel");
    char *s;
    s = make(VOCAB, MERGES, ADDED, PRETOK_WS, DECODER, "\"normalizer\":{\"type\":\"NFKC\"},");
    load_expect(s, NULL, DSI_EUNSUPPORTED, "NFKC");
    free(s);
    load_expect("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[],\"unk_token\":\"<unk>\"},\"pre_tokenizer\":"
                "{\"type\":\"ByteLevel\",\"use_regex\":false},\"decoder\":{\"type\":\"ByteLevel\"}}",
                NULL, DSI_EFORMAT, "unk_token");
}

TEST(hostile_config) {
    char *s = make(VOCAB, MERGES, ADDED, PRETOK_WS, DECODER, "");
    load_expect(s, "{\"bos_token\": ", DSI_EFORMAT, "tokenizer_config.json: not valid JSON");
    load_expect(s, "{\"chat_template\": 5}", DSI_EFORMAT, "chat_template");
    load_expect(s, "{\"bos_token\": [1]}", DSI_EFORMAT, "bos_token");
    /* A bos token that is not in the vocabulary is a warning, not an error. */
    load_expect(s, "{\"bos_token\": \"<nope>\", \"eos_token\": {\"content\": \"<s>\"}}", 0, NULL);
    struct dsi_tokenizer *t = NULL;
    CHECK_EQ_INT(dsi_tok_load_mem(s, strlen(s), "{\"eos_token\": {\"content\": \"<s>\"}}", 33, &t, NULL), 0);
    CHECK(t && dsi_tok_eos(t) == 4);
    dsi_tok_free(t);
    free(s);
    char *err = NULL;
    t = NULL;
    CHECK_EQ_INT(dsi_tok_load("tests/data/tokenizers/no-such-dir", &t, &err), DSI_ENOENT);
    CHECK(t == NULL && err && strstr(err, "no-such-dir/tokenizer.json"));
    free(err);
}

TEST(hostile_regex_backtracking_fails_fast) {
    /* Catastrophic backtracking: the match limit stops it with an error. */
    char *s = make(VOCAB, MERGES, ADDED,
                   "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a+)+$\"},\"behavior\":\"Isolated\",\"invert\":false},",
                   DECODER, "");
    struct dsi_tokenizer *t = NULL;
    CHECK_EQ_INT(dsi_tok_load_mem(s, strlen(s), NULL, 0, &t, NULL), 0);
    free(s);
    if (!t) return;
    char text[64];
    memset(text, 'a', 40);
    strcpy(text + 40, "b");
    int32_t *ids = NULL;
    size_t n;
    char *err = NULL;
    int rc = dsi_tok_encode(t, text, strlen(text), true, &ids, &n, &err);
    CHECK_EQ_INT(rc, DSI_EINVAL);
    CHECK(err && strstr(err, "regex"));
    CHECK(ids == NULL);
    free(err);
    dsi_tok_free(t);
}

#if defined(__SANITIZE_ADDRESS__)
#define TEST_HAVE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_HAVE_ASAN 1
#endif
#endif

#ifndef TEST_HAVE_ASAN
/* Bytes of address space in use now (the first field of /proc/self/statm). */
static size_t vm_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (!f) return 0;
    if (fscanf(f, "%lu", &pages) != 1) pages = 0;
    fclose(f);
    return (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
}
#endif

/* A tokenizer.json that cannot be held in memory is an out-of-memory error, never
 * a success or a parse of the part that fitted. The child process gets 24 MiB of
 * address space above what it uses, and the file (sparse) is 40 MiB. */
TEST(load_file_out_of_memory_is_enomem_not_truncated) {
#ifdef TEST_HAVE_ASAN
    SKIP("an address-space limit cannot coexist with ASan's shadow memory");
#else
    char dir[] = "/tmp/dsi_tok_oom.XXXXXX", path[64];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    CHECK(write(fd, "{", 1) == 1);
    CHECK(ftruncate(fd, 40 << 20) == 0);
    close(fd);
    size_t base = vm_bytes();
    CHECK(base > 0);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit rl = {.rlim_cur = base + (24 << 20), .rlim_max = base + (24 << 20)};
        if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(3);
        struct dsi_tokenizer *t = NULL;
        char *err = NULL;
        int rc = dsi_tok_load(dir, &t, &err);
        fprintf(stderr, "  child: %s \"%s\"\n", dsi_err_name(rc), err ? err : "");
        _exit(rc == DSI_ENOMEM && t == NULL ? 0 : 1);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    unlink(path);
    rmdir(dir);
#endif
}

int main(void) {
    RUN(tiny_tokenizer_loads_and_encodes);
    RUN(merges_as_pairs_and_lowest_rank_first);
    RUN(split_behaviors);
    RUN(added_token_lstrip_rstrip);
    RUN(hostile_json_truncated_at_every_length);
    RUN(hostile_wrong_shapes);
    RUN(hostile_ids);
    RUN(hostile_merges);
    RUN(hostile_pipeline);
    RUN(hostile_config);
    RUN(hostile_regex_backtracking_fails_fast);
    RUN(load_file_out_of_memory_is_enomem_not_truncated);
    return test_summary();
}
