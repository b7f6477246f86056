/*
 * test.h: the minimal test harness every tests/test_*.c uses.
 *
 *   TEST(name) { CHECK(x == 1); CHECK_EQ_INT(a, b); ... }
 *   int main(void) { RUN(name); ...; return test_summary(); }
 *
 * A failed CHECK prints file:line and the expression and marks the test failed;
 * the test goes on so one run shows every failure. test_summary() prints
 * "N passed, N failed" and returns the exit status ctest reads.
 */
#ifndef DSI_TEST_H
#define DSI_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test__failed_checks, test__passed, test__failed, test__skipped;
static int test__skip_current;

#define TEST(name) static void name(void)
#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);   \
            test__failed_checks++;                                                       \
        }                                                                                \
    } while (0)
#define CHECK_EQ_INT(a, b)                                                               \
    do {                                                                                 \
        long long a_ = (long long)(a), b_ = (long long)(b);                              \
        if (a_ != b_) {                                                                  \
            fprintf(stderr, "  %s:%d: %s == %s failed: %lld != %lld\n", __FILE__,       \
                    __LINE__, #a, #b, a_, b_);                                           \
            test__failed_checks++;                                                       \
        }                                                                                \
    } while (0)
#define CHECK_EQ_STR(a, b)                                                               \
    do {                                                                                 \
        const char *a_ = (a), *b_ = (b);                                                 \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                         \
            fprintf(stderr, "  %s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__,   \
                    __LINE__, #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");           \
            test__failed_checks++;                                                       \
        }                                                                                \
    } while (0)
#define CHECK_NEAR(a, b, tol)                                                            \
    do {                                                                                 \
        double a_ = (a), b_ = (b);                                                       \
        if (!(fabs(a_ - b_) <= (tol))) {                                                 \
            fprintf(stderr, "  %s:%d: |%s - %s| <= %g failed: %g vs %g\n", __FILE__,    \
                    __LINE__, #a, #b, (double)(tol), a_, b_);                            \
            test__failed_checks++;                                                       \
        }                                                                                \
    } while (0)
/* Marks the current test skipped (ctest sees the skip through the exit code 77
 * when every test skipped; see test_summary). */
#define SKIP(why)                                                                        \
    do {                                                                                 \
        fprintf(stderr, "  skipped: %s\n", why);                                         \
        test__skip_current = 1;                                                          \
        return;                                                                          \
    } while (0)

#define RUN(name)                                                                        \
    do {                                                                                 \
        int before_ = test__failed_checks;                                               \
        test__skip_current = 0;                                                          \
        name();                                                                          \
        if (test__skip_current) {                                                        \
            test__skipped++;                                                             \
            fprintf(stderr, "SKIP %s\n", #name);                                         \
        } else if (test__failed_checks == before_) {                                     \
            test__passed++;                                                              \
            fprintf(stderr, "ok   %s\n", #name);                                         \
        } else {                                                                         \
            test__failed++;                                                              \
            fprintf(stderr, "FAIL %s\n", #name);                                         \
        }                                                                                \
    } while (0)

/* Exit 77 = "skipped" when nothing ran but skips (set SKIP_RETURN_CODE 77 in cmake). */
static inline int test_summary(void) {
    fprintf(stderr, "%d passed, %d failed, %d skipped\n", test__passed, test__failed, test__skipped);
    if (test__failed) return 1;
    if (test__passed == 0 && test__skipped > 0) return 77;
    return 0;
}

#endif
