/*
 * test_util.h: helpers several tests share: read a whole file or stream, and run a
 * shell command capturing its stdout, stderr and exit status.
 */
#ifndef DSI_TEST_UTIL_H
#define DSI_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

/* Everything left in f, NUL-terminated (malloc'd; NULL when out of memory). */
static inline char *test_slurp_stream(FILE *f) {
    size_t cap = 1 << 16, n = 0, r;
    char *b = malloc(cap);
    while (b && (r = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (n + 1 == cap) {
            char *g = realloc(b, cap * 2);
            if (!g) {
                free(b); /* a truncated capture would make a test pass or fail for the wrong reason */
                return NULL;
            }
            b = g;
            cap *= 2;
        }
    }
    if (b) b[n] = 0;
    return b;
}

/* The whole file at path, NUL-terminated (malloc'd), its length in *len if len;
 * NULL if it cannot be read. */
static inline char *test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (!b) return NULL;
    b[n] = 0;
    if (len) *len = (size_t)n;
    return b;
}

struct test_out {
    char *text; /* stdout */
    char *err;  /* stderr */
    int status; /* exit status, -signal, or -1000 if the command could not start */
};

/* Runs cmd through the shell; cmd must send its stderr to errpath ("... 2>errpath"). */
static inline struct test_out test_run_shell(const char *cmd, const char *errpath) {
    struct test_out o = {0};
    FILE *p = popen(cmd, "r");
    if (!p) {
        o.status = -1000;
        return o;
    }
    o.text = test_slurp_stream(p);
    int st = pclose(p);
    o.status = WIFEXITED(st) ? WEXITSTATUS(st) : -(WIFSIGNALED(st) ? WTERMSIG(st) : 999);
    FILE *e = fopen(errpath, "r");
    o.err = e ? test_slurp_stream(e) : NULL;
    if (e) fclose(e);
    return o;
}

static inline void test_out_free(struct test_out *o) {
    free(o->text);
    free(o->err);
}

#endif
