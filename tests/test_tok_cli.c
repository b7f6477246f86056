/*
 * test_tok_cli.c: `dsinfer tokenize` / `dsinfer detokenize` end to end, through the
 * built binary ($DSI_BIN, set by ctest): output format, --bos, --json, the
 * round trip, and the exit status + message for each kind of bad input.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

#define DS "tests/data/tokenizers/deepseek-v3"

static const char *bin(void) {
    const char *b = getenv("DSI_BIN");
    return b && access(b, X_OK) == 0 ? b : NULL;
}

/* Runs `printf '%s' INPUT | dsinfer ARGS`, capturing stdout (and stderr into err).
 * Returns the exit status. */
static int run(const char *input, const char *args, char *out, size_t out_sz, char *err, size_t err_sz) {
    char in_path[] = "/tmp/dsi_tok_cli_inXXXXXX", err_path[] = "/tmp/dsi_tok_cli_errXXXXXX";
    int fd = mkstemp(in_path), fe = mkstemp(err_path);
    if (fd < 0 || fe < 0) return -1;
    if (write(fd, input, strlen(input)) != (ssize_t)strlen(input)) return -1;
    close(fd);
    close(fe);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' %s < %s 2> %s", bin(), args, in_path, err_path);
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, out_sz - 1, p) : 0;
    out[n] = 0;
    int st = p ? pclose(p) : -1;
    FILE *f = fopen(err_path, "r");
    n = f ? fread(err, 1, err_sz - 1, f) : 0;
    err[n] = 0;
    if (f) fclose(f);
    unlink(in_path);
    unlink(err_path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST(cli_tokenize_prints_json_array) {
    if (!bin()) SKIP("DSI_BIN not built");
    char out[4096], err[1024];
    CHECK_EQ_INT(run("Hello world", "tokenize --model " DS, out, sizeof out, err, sizeof err), 0);
    CHECK_EQ_STR(out, "[19923,2058]\n");
    CHECK_EQ_INT(run("Hello world", "tokenize --model " DS " --bos", out, sizeof out, err, sizeof err), 0);
    CHECK_EQ_STR(out, "[0,19923,2058]\n");
    CHECK_EQ_INT(run("Hi", "tokenize --model " DS " --json", out, sizeof out, err, sizeof err), 0);
    CHECK(strstr(out, "\"ids\": [23166]") && strstr(out, "\"count\": 1") && strstr(out, "\"tokens\": [\"Hi\"]"));
    CHECK_EQ_INT(run("", "tokenize --model " DS, out, sizeof out, err, sizeof err), 0);
    CHECK_EQ_STR(out, "[]\n");
}

TEST(cli_detokenize_round_trip) {
    if (!bin()) SKIP("DSI_BIN not built");
    char out[4096], err[1024];
    CHECK_EQ_INT(run("[19923, 2058]", "detokenize --model " DS, out, sizeof out, err, sizeof err), 0);
    CHECK_EQ_STR(out, "Hello world");
    CHECK_EQ_INT(run(" 0, 19923 2058\n", "detokenize --model " DS " --skip-special", out, sizeof out, err, sizeof err), 0);
    CHECK_EQ_STR(out, "Hello world");
    CHECK_EQ_INT(run("0,19923", "detokenize --model " DS, out, sizeof out, err, sizeof err), 0);
    CHECK_EQ_STR(out, "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>Hello");
}

TEST(cli_bad_input_exit_codes) {
    if (!bin()) SKIP("DSI_BIN not built");
    char out[4096], err[1024];
    CHECK_EQ_INT(run("x", "tokenize", out, sizeof out, err, sizeof err), 2);
    CHECK(strstr(err, "--model"));
    CHECK_EQ_INT(run("x", "tokenize --model " DS " --frobnicate", out, sizeof out, err, sizeof err), 2);
    CHECK(strstr(err, "--frobnicate"));
    CHECK_EQ_INT(run("1", "detokenize", out, sizeof out, err, sizeof err), 2);
    CHECK(strstr(err, "dsinfer detokenize: --model DIR is required"));
    CHECK_EQ_INT(run("1", "detokenize --model " DS " --frobnicate", out, sizeof out, err, sizeof err), 2);
    CHECK(strstr(err, "'--frobnicate'; usage: dsinfer detokenize --model DIR [--skip-special] < ids"));
    CHECK_EQ_INT(run("", "tokenize --help", out, sizeof out, err, sizeof err), 0);
    CHECK(strstr(out, "usage: dsinfer tokenize --model DIR [--json] [--bos] [--no-special] < text"));
    CHECK_EQ_INT(run("x", "tokenize --model tests/data/tokenizers/nope", out, sizeof out, err, sizeof err), 1);
    CHECK(strstr(err, "tokenizer.json"));
    CHECK_EQ_INT(run("a\xff", "tokenize --model " DS, out, sizeof out, err, sizeof err), 1);
    CHECK(strstr(err, "UTF-8"));
    CHECK_EQ_INT(run("[1, \"x\"]", "detokenize --model " DS, out, sizeof out, err, sizeof err), 1);
    CHECK(strstr(err, "element 1"));
    CHECK_EQ_INT(run("[1, 2", "detokenize --model " DS, out, sizeof out, err, sizeof err), 1);
    CHECK(strstr(err, "JSON array"));
    CHECK_EQ_INT(run("12 abc", "detokenize --model " DS, out, sizeof out, err, sizeof err), 1);
    CHECK(strstr(err, "'abc'"));
    CHECK_EQ_INT(run("99999999999", "detokenize --model " DS, out, sizeof out, err, sizeof err), 1);
    CHECK_EQ_INT(run("[999999]", "detokenize --model " DS, out, sizeof out, err, sizeof err), 1);
    CHECK(strstr(err, "999999"));
    CHECK_EQ_INT(run("[-5]", "detokenize --model " DS, out, sizeof out, err, sizeof err), 1);
    CHECK_EQ_STR(out, "");
}

int main(void) {
    RUN(cli_tokenize_prints_json_array);
    RUN(cli_detokenize_round_trip);
    RUN(cli_bad_input_exit_codes);
    return test_summary();
}
